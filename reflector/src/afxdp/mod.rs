//! AF_XDP: the sockets and pinned-core pollers that serve secured sessions.
//!
//! The XDP program (`ebpf/ricochet.bpf.c`) redirects authenticated and
//! encrypted TWAMP and authenticated STAMP test packets to the AF_XDP
//! socket of the receiving queue, with `struct rc_xdp_meta` (slot,
//! generation, T2 and its source) in front of the frame. One [`Poller`]
//! per queue, pinned to a core, answers them:
//!
//! * [`umem`]: the UMEM and [`Frame`] ownership tokens;
//! * [`ring`]: fill / completion / RX / TX rings (index arithmetic unit-tested);
//! * [`socket`]: [`XskSocket`], bound copy or zero-copy with need_wakeup,
//!   TX metadata (`XDP_UMEM_TX_METADATA_LEN`) when the kernel has it;
//! * [`frame`]: Ethernet/VLAN/IPv4/IPv6/UDP parsing and the in-place reply;
//! * [`poller`]: the thread, batches, key cache, TX timestamps, echo mode;
//! * `esp`: ESP SAs (decrypt, anti-replay, reflect the inner packet, seal
//!   with the outbound SA, outer headers) for frames of known inbound SPIs;
//! * [`stats`]: per-poller counters, latency histograms, and the per-slot
//!   last-TX-timestamp table shared by the pollers.
//!
//! The TWAMP/STAMP work itself (verify, decrypt, reflect, T3, protect) is
//! the shared [`crate::engine`], one engine per slot and poller.
//!
//! Key material comes from the pinned `keys` map ([`crate::bpf::SlotKeys`]),
//! cached per poller and re-read only when a generation changes.
//!
//! Built on `libc` directly: the AF_XDP crates available either pin
//! conflicting libbpf-sys versions, lack TX metadata, or are copyleft.

mod cache;
mod esp;
pub mod frame;
pub mod poller;
pub mod ring;
mod secured;
pub mod socket;
pub mod stats;
pub mod umem;

pub use poller::{parse_core_list, Poller, PollerConfig, PollerMode, PollerShared, WaitMode};
pub use socket::{
    BindMode, BusyPoll, TxMetadataSupport, XdpStatistics, XskConfig, XskSocket, TX_METADATA_LEN,
};
pub use stats::{
    DropReason, LastTx, LatencySummary, PollerStats, StatsSnapshot, TxStampTable, TxTimestamping,
};
pub use umem::{Frame, Umem, UmemConfig};

use crate::bpf::BpfError;

/// Errors of the AF_XDP layer.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration the kernel or this module cannot use.
    #[error("AF_XDP configuration: {0}")]
    Config(String),
    /// A map operation failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The poller thread panicked.
    #[error("AF_XDP poller thread panicked")]
    Panicked,
}
