//! Ricochet's protocol library: every TWAMP, OWAMP and STAMP wire format, the
//! key derivations and packet protection, and sans-IO control state machines.
//!
//! Rules of this crate (see README.md): no sockets, no clocks, no threads, no
//! randomness of its own. Time and random octets are passed in by the caller.
//! Nothing on an input path panics: parsers return [`error::WireError`] (or a
//! module's own typed error).
//!
//! Formats follow smoltcp's `wire` style: a zero-copy view `Packet<T: AsRef<[u8]>>`
//! with checked length and field accessors, and a `Repr` that parses and emits.

#![forbid(unsafe_code)]

pub mod error;
pub mod time;

pub mod modes;

pub mod accept;

pub mod control;

pub mod twamp_test;

pub mod stamp;

pub mod crypto;

pub mod client;
mod inbox;
pub mod keyfile;
pub mod sa_records;
pub mod server;

pub use error::WireError;
