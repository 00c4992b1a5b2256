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
//!
//! TWAMP rules this layer serves (RFC 5357 §4.2, `twamp-test.md` §5): T2 as
//! early as possible (kernel or NIC stamp), Sender TTL from the received
//! header, reply with TTL 255 and the negotiated DSCP, from the address the
//! test packet was sent to.

pub mod batch;
pub mod cmsg;
pub mod reflector;
pub mod udp;

pub use batch::{
    BatchConfig, RxBatch, RxError, RxPacket, SendReport, TxBatch, TxError, TxMeta, MAX_BATCH,
    MAX_DATAGRAM,
};
pub use reflector::{
    LoopGone, Reflect, ReflectorConfig, ReflectorHandle, ReplyTos, SocketKey, SocketReflector,
    Stats,
};
pub use udp::{
    enable_nic_rx_timestamps, tos_from_dscp, BatchSocket, RxTimestamping, SocketOptions,
    TimestampingMode,
};
