//! Ricochet's IKEv2 endpoint (RFC 7296), sans-IO: it yields IKE SAs whose
//! SK_d and PRF key RFC 7717 TWAMP sessions, and CHILD_SA keys for the ESP
//! data plane.
//!
//! | Module | What |
//! |---|---|
//! | [`wire`] | IKE header and payload views and Reprs |
//! | [`crypto`] | DH 14/19/31, SK payload protection (AES-GCM-16, AES-CBC + HMAC-SHA-256-128), NAT-D hash |
//! | [`config`] | suites, timers, DoS limits |
//! | [`auth`] | the [`Authenticator`] trait and PSK authentication |
//! | [`psk`] | the 0600 PSK file |
//! | [`info`] | [`IkeSaInfo`], [`ChildSaKeys`], [`Event`] |
//! | [`endpoint`] | the [`Endpoint`] state machine |
//! | [`rng`] | injected randomness |

//!
//! # Driving it
//!
//! The owner moves datagrams and time; here two endpoints in one process
//! (a real driver reads UDP sockets on ports 500 and 4500, see
//! `src/bin/ricochet-ike-peer.rs`):
//!
//! ```
//! use std::time::Instant;
//! use ricochet_ike::*;
//!
//! let store = |peer: &str| {
//!     let mut s = PskStore::new();
//!     s.insert(peer, b"lab-only-secret");
//!     Box::new(PskAuthenticator { store: s })
//! };
//! let mut rng = SeqRng::new(1); // production: OsRng
//! let now = Instant::now();
//! let mut a = Endpoint::new(Config::new(Identification::fqdn("a.test")), store("b.test"), &mut rng);
//! let mut b = Endpoint::new(Config::new(Identification::fqdn("b.test")), store("a.test"), &mut rng);
//! a.initiate(now, &mut rng, InitiateParams {
//!     local: "198.18.0.1:500".parse().unwrap(),
//!     peer: "198.18.0.2:500".parse().unwrap(),
//!     peer_id: Some(Identification::fqdn("b.test")),
//!     child: None, // childless (RFC 6023): enough for RFC 7717 keys
//! }).unwrap();
//! loop {
//!     let mut moved = false;
//!     while let Some(t) = a.poll_transmit() {
//!         b.handle_datagram(now, &mut rng, t.remote, t.local, &t.data);
//!         moved = true;
//!     }
//!     while let Some(t) = b.poll_transmit() {
//!         a.handle_datagram(now, &mut rng, t.remote, t.local, &t.data);
//!         moved = true;
//!     }
//!     if !moved { break }
//! }
//! let Some(Event::IkeSaEstablished(sa)) = b.poll_event() else { panic!() };
//! // The RFC 7717 key of the TWAMP session keyed by KeyID = SPIi | SPIr:
//! let key = b.find(&sa.spi_i, &sa.spi_r).unwrap().ippm_key();
//! assert_eq!(key.len(), 32); // HMAC-SHA-256
//! ```

pub mod auth;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod info;
pub mod psk;
pub mod rng;
pub mod wire;

pub use auth::{Authenticator, PskAuthenticator};
pub use config::{ChildPolicy, Config, EspSuite, IkeSuite};
pub use crypto::{DhGroup, EncrAlg, IntegAlg, Prf};
pub use endpoint::{ChildParams, Endpoint, EndpointError, InitiateParams, Transmit};
pub use info::{ChildMode, ChildSaKeys, DeleteReason, Event, IkeSaInfo, PrfAlg};
pub use psk::{PskError, PskStore};
pub use rng::{OsRng, Rng, SeqRng};
pub use wire::{Identification, TrafficSelector};
