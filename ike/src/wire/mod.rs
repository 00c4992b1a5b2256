//! IKEv2 wire formats (RFC 7296 §3), smoltcp style: a zero-copy [`Header`]
//! view with checked length, a [`PayloadIter`] walking the generic payload
//! chain without copying, and owned `Repr`s that parse and emit each payload.
//!
//! Every parser returns a typed [`WireError`]; none panics on peer input.
//! RFC 7383 fragments (payload type 53) are recognised and refused.

mod header;
mod payload;

pub use header::{Header, HeaderRepr, FLAG_I, FLAG_R, FLAG_V, HEADER_LEN, IKE_VERSION};
pub use payload::*;

use thiserror::Error;

/// A parse or validation failure of an IKEv2 message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer is shorter than the structure needs.
    #[error("{what}: truncated: need {need} octets, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A length field disagrees with the buffer or the format.
    #[error("{what}: bad length {len} ({why})")]
    BadLength {
        what: &'static str,
        len: usize,
        why: &'static str,
    },
    /// A field carries a value the format does not allow.
    #[error("{what}: field {field} has invalid value {value:#x}")]
    BadField {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
    /// A payload with the critical bit set that we do not understand
    /// (answered with UNSUPPORTED_CRITICAL_PAYLOAD, RFC 7296 §2.5).
    #[error("unsupported critical payload type {0}")]
    UnsupportedCritical(u8),
    /// An RFC 7383 Encrypted Fragment payload: not supported (we never
    /// announce IKEV2_FRAGMENTATION_SUPPORTED, so a peer must not send one).
    #[error("IKEv2 fragmentation (RFC 7383) is not supported")]
    Fragmented,
}

pub(crate) fn check_len(what: &'static str, buf: &[u8], need: usize) -> Result<(), WireError> {
    if buf.len() < need {
        Err(WireError::Truncated {
            what,
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Exchange types (RFC 7296 §3.1).
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Notify message types (RFC 7296 §3.10.1 and the IANA registry).
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const MOBIKE_SUPPORTED: u16 = 16396;
    pub const CHILDLESS_IKEV2_SUPPORTED: u16 = 16418;
    pub const IKEV2_FRAGMENTATION_SUPPORTED: u16 = 16430;

    /// Error types are below 16384 (RFC 7296 §3.10.1).
    pub const fn is_error(t: u16) -> bool {
        t < 16384
    }
}
