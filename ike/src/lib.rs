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

pub mod auth;
pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod info;
pub mod psk;
pub mod rng;
pub mod wire;

pub use auth::{Authenticator, PskAuthenticator};
pub use config::{Config, EspSuite, IkeSuite};
pub use crypto::{DhGroup, EncrAlg, IntegAlg, Prf};
pub use endpoint::{ChildParams, Endpoint, EndpointError, InitiateParams, Transmit};
pub use info::{ChildMode, ChildSaKeys, DeleteReason, Event, IkeSaInfo, PrfAlg};
pub use psk::{PskError, PskStore};
pub use rng::{OsRng, Rng, SeqRng};
pub use wire::{Identification, TrafficSelector};
