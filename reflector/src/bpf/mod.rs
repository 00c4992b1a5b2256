//! The XDP fast path: the loader for `ebpf/ricochet.bpf.c`, its pinned maps
//! and typed wrappers over them.
//!
//! The XDP program reflects unauthenticated TWAMP (RFC 5357 §4.2.1) and
//! STAMP (RFC 8762 §4.3) test packets itself with XDP_TX, hands
//! authenticated/encrypted ones to AF_XDP sockets with [`abi::XdpMeta`] in
//! front of the frame, and passes everything else untouched. The pinned
//! maps (`sessions`, `listeners`, `clock`, `counters`, `xsks`, `keys`, and for
//! ESP `esp_sas`, `esp_keys`, `esp_state`) are the only
//! contract with the control plane: [`Maps::open_pinned`] gives a separate
//! process the same typed access as [`XdpProgram::maps`].
//!
//! ```no_run
//! use ricochet_reflector::bpf::*;
//! let prog = XdpProgram::load(&LoadOptions::default())?;
//! let _att = prog.attach(ifindex("eth0")?, AttachMode::Native)?;
//! prog.maps().insert_listener(&ListenerKey::any(Family::V4, 862),
//!                             &EntryConfig::new(Mode::Stamp, 10_000))?;
//! # Ok::<(), BpfError>(())
//! ```

pub mod abi;
pub mod esp_abi;
mod esp_shared;
mod loader;
mod maps;
pub mod table;

pub use abi::{
    ClockState, Counter, Entry, EntryConfig, EntryFlags, EntryStats, Family, KeyMaterial,
    ListenerKey, MetaError, Mode, Origin, SessionKey, SlotKeys, TsSource, XdpMeta, MAX_SLOTS,
};
pub use esp_abi::{EspSaKey, EspSelectors, EspSlotKeys, EspState, MAX_ESP_SAS};
pub use esp_shared::EspStateShared;
pub use loader::{
    ifindex, AttachMode, Attachment, LoadOptions, TestRun, XdpAction, XdpProgram, DEFAULT_PIN_DIR,
};
pub use maps::{Counters, EspKeysReader, KeysReader, Maps, PINNED_MAPS};
pub use table::BpfSessionTable;

/// The compiled XDP object (clang-19, BTF included), embedded at build time.
pub(crate) const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ricochet.bpf.o"));

/// Errors of the XDP loader and map wrappers.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A libbpf call failed.
    #[error("{what}: {source}")]
    Libbpf {
        /// What was being done.
        what: String,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A file-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A session key's endpoints are of different families.
    #[error("session endpoints of different families: local {local}, remote {remote}")]
    FamilyMismatch {
        /// Local endpoint.
        local: std::net::SocketAddr,
        /// Remote endpoint.
        remote: std::net::SocketAddr,
    },
    /// Map contents that do not follow `ebpf/ricochet.h`.
    #[error("unexpected map data: {0}")]
    BadMapData(String),
    /// An update of an entry that does not exist.
    #[error("no such entry in map {0}")]
    NotFound(String),
    /// Another XDP program holds the interface.
    #[error("{0}")]
    Busy(String),
    /// No interface of that name or index.
    #[error("no network interface {0:?}")]
    NoInterface(String),
}
