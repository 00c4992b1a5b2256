//! The portable socket data path: per-session UDP sockets driven by mio,
//! batched with `recvmmsg` / `sendmmsg`, for hosts without XDP (and the
//! baseline the fast paths are measured against).
//!
//! * [`BatchSocket`] — a UDP socket that reports receive timestamps, TTL /
//!   Hop Limit, TOS / Traffic Class and the destination address of every
//!   datagram, and sends with the session's DSCP and TTL 255.
//! * [`RxBatch`] / [`TxBatch`] — pre-allocated buffers for one system call
//!   per batch; [`RxPacket`] is one received datagram with its metadata.
//! * [`SocketReflector`] — the mio loop over many sockets that calls a
//!   [`Reflect`] handler per packet; [`ReflectorHandle`] adds and removes
//!   sockets while it runs.
//! * [`cmsg`] — control-message parsing and encoding.
//! * [`SocketSessionTable`] — the control plane's [`crate::session_table::SessionTable`]
//!   over this path: one socket per session or listener, the
//!   [`crate::engine`] per packet.
//!
//! TWAMP rules this layer serves (RFC 5357 §4.2, `twamp-test.md` §5): T2 as
//! early as possible (kernel or NIC stamp), Sender TTL from the received
//! header, reply with TTL 255 and the negotiated DSCP, from the address the
//! test packet was sent to.
//!
//! ```no_run
//! use ricochet_reflector::socket::{
//!     tos_from_dscp, BatchSocket, ReflectorConfig, ReplyTos, RxPacket, SocketKey,
//!     SocketOptions, SocketReflector,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut reflector = SocketReflector::new(&ReflectorConfig::default())?;
//! let handle = reflector.handle();
//! let data_plane = std::thread::spawn(move || {
//!     // An echo handler; a TWAMP one would build the reflector packet here
//!     // from rx.payload, rx.rx_stamp (T2), rx.ttl and a late T3.
//!     let mut echo = |_key: SocketKey, rx: &RxPacket<'_>, tx: &mut [u8]| {
//!         tx[..rx.payload.len()].copy_from_slice(rx.payload);
//!         Some(rx.payload.len())
//!     };
//!     reflector.run(&mut echo)
//! });
//! // The control plane binds a session socket (port 0: any free port) with
//! // the session's DSCP and hands it over.
//! let opts = SocketOptions { tos: tos_from_dscp(46, 0), ..SocketOptions::default() };
//! let socket = BatchSocket::bind("[::]:0".parse()?, &opts)?;
//! let port = socket.local_addr().port();
//! handle.add(1, socket, ReplyTos::Socket)?.recv()??;
//! # let _ = port;
//! // ... session runs ...
//! let stats = handle.remove(1)?.recv()?;
//! handle.shutdown()?;
//! data_plane.join().expect("data plane thread")?;
//! # let _ = stats;
//! # Ok(())
//! # }
//! ```

pub mod batch;
pub mod cmsg;
pub mod reflector;
pub mod table;
pub mod udp;

pub use batch::{
    BatchConfig, RxBatch, RxError, RxPacket, SendReport, TxBatch, TxError, TxMeta, MAX_BATCH,
    MAX_DATAGRAM,
};
pub use reflector::{
    LoopGone, Reflect, ReflectorConfig, ReflectorHandle, ReplyTos, SocketKey, SocketReflector,
    Stats,
};
pub use table::{SocketSessionTable, TableConfig, TableDriver};
pub use udp::{
    enable_nic_rx_timestamps, tos_from_dscp, BatchSocket, RxTimestamping, SocketOptions,
    TimestampingMode,
};
