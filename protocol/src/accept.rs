//! The Accept field of OWAMP/TWAMP-Control replies (RFC 4656 §3.3).
//!
//! One octet, carried by Server-Start, Accept-Session, Start-Ack, Stop-Sessions
//! and the RFC 5938 Start-N-Ack / Stop-N-Ack. No IANA registry exists for it:
//! values 0–5 come from RFC 4656 §3.3, value 6 from RFC 7717 §5.
//!
//! RFC 4656 §3.3: "Implementations MUST treat any unrecognized non-zero value
//! as a failure, reason unspecified (equivalent to value 1)" — see
//! [`Accept::effective`]. perfSONAR 5.2.3 deviates: it treats any value above
//! 5 as a protocol error and drops the connection, so a server talking to it
//! should not send 6 or above.

use core::fmt;

/// An Accept value (RFC 4656 §3.3, RFC 7717 §5).
///
/// The conversion from `u8` is total: values without a meaning become
/// [`Accept::Other`]. `Other` is meant for values 7–255; `Other(n)` with a
/// known `n` encodes like the named variant but does not compare equal to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accept {
    /// 0: OK.
    Ok,
    /// 1: Failure, reason unspecified (catch-all).
    Failure,
    /// 2: Internal error.
    InternalError,
    /// 3: Some aspect of the request is not supported.
    NotSupported,
    /// 4: Cannot perform the request due to permanent resource limitations.
    PermanentResourceLimitation,
    /// 5: Cannot perform the request due to temporary resource limitations.
    TemporaryResourceLimitation,
    /// 6: The IKEv2 SA named by SPIi/SPIr in the KeyID cannot be found
    /// (RFC 7717 §5, Server-Start only).
    Ikev2SaNotFound,
    /// Any other value: a failure, reason unspecified (RFC 4656 §3.3).
    Other(u8),
}

impl Accept {
    /// True for 0 (OK) only: every non-zero value, known or not, is a failure.
    pub const fn is_ok(self) -> bool {
        matches!(self, Accept::Ok | Accept::Other(0))
    }

    /// True for every non-zero value.
    pub const fn is_failure(self) -> bool {
        !self.is_ok()
    }

    /// The value as the receiver must act on it: unknown non-zero values are
    /// treated as 1, "Failure, reason unspecified" (RFC 4656 §3.3).
    pub fn effective(self) -> Accept {
        match Accept::from(u8::from(self)) {
            Accept::Other(_) => Accept::Failure,
            known => known,
        }
    }

    /// The value's meaning, for logs.
    pub const fn description(self) -> &'static str {
        match self {
            Accept::Ok => "OK",
            Accept::Failure => "failure, reason unspecified",
            Accept::InternalError => "internal error",
            Accept::NotSupported => "some aspect of the request is not supported",
            Accept::PermanentResourceLimitation => "permanent resource limitation",
            Accept::TemporaryResourceLimitation => "temporary resource limitation",
            Accept::Ikev2SaNotFound => "IKEv2 SA not found",
            Accept::Other(_) => "unknown value (failure, reason unspecified)",
        }
    }
}

impl From<u8> for Accept {
    fn from(v: u8) -> Self {
        match v {
            0 => Accept::Ok,
            1 => Accept::Failure,
            2 => Accept::InternalError,
            3 => Accept::NotSupported,
            4 => Accept::PermanentResourceLimitation,
            5 => Accept::TemporaryResourceLimitation,
            6 => Accept::Ikev2SaNotFound,
            other => Accept::Other(other),
        }
    }
}

impl From<Accept> for u8 {
    fn from(a: Accept) -> u8 {
        match a {
            Accept::Ok => 0,
            Accept::Failure => 1,
            Accept::InternalError => 2,
            Accept::NotSupported => 3,
            Accept::PermanentResourceLimitation => 4,
            Accept::TemporaryResourceLimitation => 5,
            Accept::Ikev2SaNotFound => 6,
            Accept::Other(v) => v,
        }
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", u8::from(*self), self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_is_total_and_round_trips() {
        for v in 0..=255u8 {
            let a = Accept::from(v);
            assert_eq!(u8::from(a), v);
            assert_eq!(a.is_ok(), v == 0);
            assert_eq!(a.is_failure(), v != 0);
            assert_eq!(matches!(a, Accept::Other(_)), v > 6, "{v}");
        }
    }

    #[test]
    fn rfc4656_values() {
        assert_eq!(Accept::from(0), Accept::Ok);
        assert_eq!(Accept::from(1), Accept::Failure);
        assert_eq!(Accept::from(2), Accept::InternalError);
        assert_eq!(Accept::from(3), Accept::NotSupported);
        assert_eq!(Accept::from(4), Accept::PermanentResourceLimitation);
        assert_eq!(Accept::from(5), Accept::TemporaryResourceLimitation);
        assert_eq!(Accept::from(6), Accept::Ikev2SaNotFound);
    }

    #[test]
    fn unknown_non_zero_means_failure() {
        for v in 7..=255u8 {
            assert_eq!(Accept::from(v).effective(), Accept::Failure);
        }
        for v in 0..=6u8 {
            assert_eq!(Accept::from(v).effective(), Accept::from(v));
        }
        // A hand-built Other with a known value is normalised too.
        assert_eq!(Accept::Other(3).effective(), Accept::NotSupported);
        assert!(Accept::Other(0).effective().is_ok());
    }

    #[test]
    fn display_names_the_value() {
        assert_eq!(
            Accept::NotSupported.to_string(),
            "3 (some aspect of the request is not supported)"
        );
        assert!(Accept::from(200).to_string().starts_with("200 "));
    }
}
