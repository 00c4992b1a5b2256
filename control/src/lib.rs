//! `ricochet-control`: the TWAMP-Control daemon's operational parts.
//!
//! * [`config`]: the TOML configuration, defaults and validation.
//! * [`cli`]: the command line and its overrides.
//! * [`policy`]: admission (prefix lists, connection and session limits,
//!   modes per identity) and the Accept value of each refusal.
//! * [`ports`]: the reflector UDP port allocator.
//! * [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//! * [`keys`]: the key-source seam ([`keys::KeySource`]), the `.pfs` key
//!   file and configured secrets, the private-file checks.
//! * [`ikev2`]: RFC 7717 key sources (IKEv2 SA directories: the SA file,
//!   the SA socket, the in-process table) behind [`keys::KeySource`].
//! * [`ike_responder`]: the `ike` crate's IKEv2 responder on UDP 500/4500,
//!   a loop [`event_loop::Service`] publishing IKE SAs for RFC 7717.
//! * [`esp_link`]: binds the responder's CHILD_SAs to started TWAMP
//!   sessions and installs them in the ESP data plane (sans-IO decisions).
//! * [`twamp`]: the TWAMP-Control state machine per connection, its
//!   `ServerContext`, and the session life cycle (data plane, ports,
//!   REFWAIT, stop grace).
//! * [`event_loop`]: the mio loop (listeners, timers, backpressure, signals)
//!   and the [`event_loop::ConnectionHandler`] seam where the protocol
//!   crate's sans-IO TWAMP-Control server plugs in.
//! * [`logging`]: `tracing` set-up.
//! * [`app`]: everything wired together for `main`.
//!
//! The crate never reflects test packets; it programs the data plane through
//! the reflector crate's `SessionTable` API only.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod esp_link;
pub mod event_loop;
pub mod ike_responder;
pub mod ikev2;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod ports;
pub mod twamp;
