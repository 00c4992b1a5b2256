//! The TWAMP Modes field and its negotiation.
//!
//! The 32-bit Modes field is what a server offers in the Server Greeting
//! (RFC 4656 §3.1, octets 12–15) and what the client chooses in the
//! Set-Up-Response (octets 0–3). Since RFC 7717 §7 the IANA "TWAMP-Modes"
//! registry lists *bit positions*; bit 0 is the least-significant bit.
//!
//! A valid choice is exactly one *security* bit (0–3) plus any number of
//! *feature* bits (4–9), every one of them offered by the server
//! (RFC 5618 §3, RFC 5938 §2, RFC 6038 §4.1). Beware: the OWAMP-Modes
//! registry is different (IKEv2-derived is bit 4 there, bit 7 here).

use core::fmt;

use crate::twamp_test::TestSecurity;
use core::ops::{BitAnd, BitOr, BitOrAssign, Not};

use thiserror::Error;

/// A set of TWAMP-Modes bits (IANA "TWAMP-Modes" registry).
///
/// Bits 10–31 are unassigned; they are kept as received (see [`Modes::known`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Modes(pub u32);

impl Modes {
    /// No mode: in a greeting "the server refuses", in a Set-Up-Response
    /// "the client quits" (RFC 4656 §3.1).
    pub const NONE: Modes = Modes(0);
    /// Bit 0: unauthenticated (RFC 4656).
    pub const UNAUTHENTICATED: Modes = Modes(1 << 0);
    /// Bit 1: authenticated (RFC 4656).
    pub const AUTHENTICATED: Modes = Modes(1 << 1);
    /// Bit 2: encrypted (RFC 4656).
    pub const ENCRYPTED: Modes = Modes(1 << 2);
    /// Bit 3: unauthenticated TEST, encrypted CONTROL, "mixed" (RFC 5618).
    pub const MIXED: Modes = Modes(1 << 3);
    /// Bit 4: Individual Session Control (RFC 5938).
    pub const INDIVIDUAL_SESSION_CONTROL: Modes = Modes(1 << 4);
    /// Bit 5: Reflect Octets Capability (RFC 6038).
    pub const REFLECT_OCTETS: Modes = Modes(1 << 5);
    /// Bit 6: Symmetrical Size Sender Test Packet Format (RFC 6038).
    pub const SYMMETRICAL_SIZE: Modes = Modes(1 << 6);
    /// Bit 7: IKEv2Derived Mode Capability (RFC 7717).
    pub const IKEV2_DERIVED: Modes = Modes(1 << 7);
    /// Bit 8: DSCP and ECN Monitoring Capability (RFC 7750).
    pub const DSCP_ECN: Modes = Modes(1 << 8);
    /// Bit 9: PTPv2 Timestamp Capability (RFC 8186).
    pub const PTP_TIMESTAMPS: Modes = Modes(1 << 9);

    /// The four security bits (0–3); a choice holds exactly one.
    pub const SECURITY: Modes = Modes(0x00f);
    /// The feature bits (4–9) that combine with a security bit.
    pub const FEATURES: Modes = Modes(0x3f0);
    /// Every assigned bit (0–9).
    pub const KNOWN: Modes = Modes(0x3ff);

    const NAMES: [(Modes, &'static str); 10] = [
        (Modes::UNAUTHENTICATED, "UNAUTHENTICATED"),
        (Modes::AUTHENTICATED, "AUTHENTICATED"),
        (Modes::ENCRYPTED, "ENCRYPTED"),
        (Modes::MIXED, "MIXED"),
        (
            Modes::INDIVIDUAL_SESSION_CONTROL,
            "INDIVIDUAL_SESSION_CONTROL",
        ),
        (Modes::REFLECT_OCTETS, "REFLECT_OCTETS"),
        (Modes::SYMMETRICAL_SIZE, "SYMMETRICAL_SIZE"),
        (Modes::IKEV2_DERIVED, "IKEV2_DERIVED"),
        (Modes::DSCP_ECN, "DSCP_ECN"),
        (Modes::PTP_TIMESTAMPS, "PTP_TIMESTAMPS"),
    ];

    /// The raw 32-bit value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Modes) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if `self` and `other` share a bit.
    pub const fn intersects(self, other: Modes) -> bool {
        self.0 & other.0 != 0
    }

    /// The bits set in `self` but not in `other`.
    pub const fn difference(self, other: Modes) -> Modes {
        Modes(self.0 & !other.0)
    }

    /// Only the assigned bits (0–9). A client ignores the others in a
    /// greeting (RFC 4656 §3.1: unknown modes are ignored).
    pub const fn known(self) -> Modes {
        Modes(self.0 & Modes::KNOWN.0)
    }

    /// Only the unassigned bits (10–31).
    pub const fn unknown(self) -> Modes {
        Modes(self.0 & !Modes::KNOWN.0)
    }

    /// Only the security bits (0–3).
    pub const fn security(self) -> Modes {
        Modes(self.0 & Modes::SECURITY.0)
    }

    /// Only the feature bits (4–9).
    pub const fn features(self) -> Modes {
        Modes(self.0 & Modes::FEATURES.0)
    }
}

impl BitOr for Modes {
    type Output = Modes;
    fn bitor(self, rhs: Modes) -> Modes {
        Modes(self.0 | rhs.0)
    }
}

impl BitOrAssign for Modes {
    fn bitor_assign(&mut self, rhs: Modes) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for Modes {
    type Output = Modes;
    fn bitand(self, rhs: Modes) -> Modes {
        Modes(self.0 & rhs.0)
    }
}

impl Not for Modes {
    type Output = Modes;
    fn not(self) -> Modes {
        Modes(!self.0)
    }
}

impl From<u32> for Modes {
    fn from(v: u32) -> Self {
        Modes(v)
    }
}

impl From<Modes> for u32 {
    fn from(m: Modes) -> u32 {
        m.0
    }
}

impl fmt::Display for Modes {
    /// `0x82 (AUTHENTICATED|IKEV2_DERIVED)`; unassigned bits show as `0x...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} (", self.0)?;
        let mut sep = "";
        for (bit, name) in Modes::NAMES {
            if self.contains(bit) {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        if !self.unknown().is_empty() {
            write!(f, "{sep}{:#x}", self.unknown().0)?;
        } else if sep.is_empty() {
            f.write_str("NONE")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modes({self})")
    }
}

/// The security mode: the one security bit of a choice (RFC 4656 §3.1,
/// RFC 5618 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityMode {
    /// Bit 0: no control or test protection.
    Unauthenticated,
    /// Bit 1: protected control; test packets authenticated.
    Authenticated,
    /// Bit 2: protected control; test packets encrypted.
    Encrypted,
    /// Bit 3 (RFC 5618): protected control; unauthenticated test packets.
    Mixed,
}

impl SecurityMode {
    /// All four, in bit order.
    pub const ALL: [SecurityMode; 4] = [
        SecurityMode::Unauthenticated,
        SecurityMode::Authenticated,
        SecurityMode::Encrypted,
        SecurityMode::Mixed,
    ];

    /// perfSONAR `twping`'s order of preference: Encrypted > Authenticated >
    /// Mixed > Unauthenticated.
    pub const PERFSONAR_PREFERENCE: [SecurityMode; 4] = [
        SecurityMode::Encrypted,
        SecurityMode::Authenticated,
        SecurityMode::Mixed,
        SecurityMode::Unauthenticated,
    ];

    /// The mode's bit.
    pub const fn bit(self) -> Modes {
        match self {
            SecurityMode::Unauthenticated => Modes::UNAUTHENTICATED,
            SecurityMode::Authenticated => Modes::AUTHENTICATED,
            SecurityMode::Encrypted => Modes::ENCRYPTED,
            SecurityMode::Mixed => Modes::MIXED,
        }
    }

    /// The security mode of `modes` if it holds exactly one security bit
    /// (feature bits are ignored).
    pub fn from_modes(modes: Modes) -> Option<SecurityMode> {
        SecurityMode::ALL
            .into_iter()
            .find(|m| modes.security() == m.bit())
    }

    /// True if TWAMP-Control is encrypted and authenticated (AES-CBC stream
    /// and HMAC-SHA1, RFC 4656 §3.4): every mode but unauthenticated. These
    /// modes need a shared secret (or an RFC 7717 IKEv2 SA).
    pub const fn protects_control(self) -> bool {
        !matches!(self, SecurityMode::Unauthenticated)
    }

    /// Which TWAMP-Test protection this mode uses.
    pub const fn test_security(self) -> TestSecurity {
        match self {
            SecurityMode::Unauthenticated | SecurityMode::Mixed => TestSecurity::Unauthenticated,
            SecurityMode::Authenticated => TestSecurity::Authenticated,
            SecurityMode::Encrypted => TestSecurity::Encrypted,
        }
    }
}

impl fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecurityMode::Unauthenticated => "unauthenticated",
            SecurityMode::Authenticated => "authenticated",
            SecurityMode::Encrypted => "encrypted",
            SecurityMode::Mixed => "mixed",
        })
    }
}

/// A valid mode choice: one security mode and the feature bits (4–9) that
/// apply to every session of the connection (RFC 6038 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selection {
    /// The security mode.
    pub security: SecurityMode,
    /// The selected feature bits; only bits 4–9 are ever set.
    pub features: Modes,
}

impl Selection {
    /// The Mode value for the Set-Up-Response.
    pub fn modes(self) -> Modes {
        self.security.bit() | self.features
    }

    /// True if the feature bit(s) `feature` were selected.
    pub const fn has(self, feature: Modes) -> bool {
        self.features.contains(feature)
    }
}

/// Why a Set-Up-Response Mode is refused.
///
/// No Accept value is mandated for these; a server answers with a
/// Server-Start carrying a non-zero Accept and closes (RFC 4656 §3.1).
/// [`ModeError::ClientQuit`] is not a protocol error: the client declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ModeError {
    /// Mode 0: the client does not want any offered mode and closes.
    #[error("client chose mode 0: it quits")]
    ClientQuit,
    /// No security bit (0–3) is set.
    #[error("mode {chosen} has no security bit")]
    NoSecurityMode { chosen: Modes },
    /// More than one security bit is set.
    #[error("mode {chosen} has more than one security bit")]
    SeveralSecurityModes { chosen: Modes },
    /// IKEv2Derived (bit 7) with unauthenticated security: RFC 7717 derives
    /// the shared secret of modes 2, 4 and 8 only.
    #[error("mode {chosen}: IKEv2-derived keys need authenticated, encrypted or mixed mode")]
    Ikev2WithoutProtection { chosen: Modes },
    /// Bits the server did not offer (including every unassigned bit).
    #[error("mode {chosen}: bits {unoffered} were not offered")]
    NotOffered { chosen: Modes, unoffered: Modes },
}

/// Server side: checks a Set-Up-Response Mode against what the greeting
/// offered (RFC 4656 §3.1, RFC 5618 §3, RFC 5938 §2, RFC 6038 §4.1,
/// RFC 7717 §5).
///
/// Rules: 0 means the client quits; exactly one security bit; IKEv2Derived
/// only with authenticated, encrypted or mixed; every chosen bit offered.
/// Unassigned bits (10–31) are always refused: a server cannot have offered
/// what it does not know, and RFC 4656 says they MUST be zero when sent.
pub fn select(offered: Modes, chosen: Modes) -> Result<Selection, ModeError> {
    if chosen.is_empty() {
        return Err(ModeError::ClientQuit);
    }
    let security = SecurityMode::from_modes(chosen).ok_or(if chosen.security().is_empty() {
        ModeError::NoSecurityMode { chosen }
    } else {
        ModeError::SeveralSecurityModes { chosen }
    })?;
    let unoffered = chosen.difference(offered.known());
    if !unoffered.is_empty() {
        return Err(ModeError::NotOffered { chosen, unoffered });
    }
    if chosen.contains(Modes::IKEV2_DERIVED) && !security.protects_control() {
        return Err(ModeError::Ikev2WithoutProtection { chosen });
    }
    Ok(Selection {
        security,
        features: chosen.features(),
    })
}

/// Client side: picks a mode from a greeting's offer.
///
/// `allowed` holds the security bits the client may use (a client without a
/// shared secret allows only [`Modes::UNAUTHENTICATED`]); `wanted` the
/// feature bits it would like. The security mode is the most preferred one
/// both offered and allowed, in perfSONAR's order
/// ([`SecurityMode::PERFSONAR_PREFERENCE`]); the features are those wanted
/// and offered (IKEv2Derived is dropped with unauthenticated security).
/// Unassigned offered bits are ignored (RFC 4656 §3.1).
///
/// `None` means nothing acceptable is offered (or the offer is 0): the client
/// sends Mode 0 and closes.
pub fn choose(offered: Modes, allowed: Modes, wanted: Modes) -> Option<Selection> {
    let usable = offered.known() & allowed;
    let security = SecurityMode::PERFSONAR_PREFERENCE
        .into_iter()
        .find(|m| usable.contains(m.bit()))?;
    let mut features = wanted.features() & offered.features();
    if !security.protects_control() {
        features = features.difference(Modes::IKEV2_DERIVED);
    }
    Some(Selection { security, features })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_values() {
        let expected = [1u32, 2, 4, 8, 16, 32, 64, 128, 256, 512];
        for (i, (bit, _)) in Modes::NAMES.iter().enumerate() {
            assert_eq!(bit.bits(), expected[i]);
            assert_eq!(bit.bits(), 1 << i);
        }
        assert_eq!(Modes::SECURITY.bits() | Modes::FEATURES.bits(), 0x3ff);
        assert_eq!(Modes::SECURITY.bits() & Modes::FEATURES.bits(), 0);
    }

    #[test]
    fn display() {
        assert_eq!(
            Modes(0x82).to_string(),
            "0x82 (AUTHENTICATED|IKEV2_DERIVED)"
        );
        assert_eq!(Modes(0).to_string(), "0x0 (NONE)");
        assert_eq!(Modes(0x401).to_string(), "0x401 (UNAUTHENTICATED|0x400)");
        assert_eq!(format!("{:?}", Modes(4)), "Modes(0x4 (ENCRYPTED))");
    }

    #[test]
    fn security_helpers() {
        use SecurityMode::*;
        assert!(!Unauthenticated.protects_control());
        assert!(Authenticated.protects_control());
        assert!(Encrypted.protects_control());
        assert!(Mixed.protects_control());
        assert_eq!(
            Unauthenticated.test_security(),
            TestSecurity::Unauthenticated
        );
        assert_eq!(Mixed.test_security(), TestSecurity::Unauthenticated);
        assert_eq!(Authenticated.test_security(), TestSecurity::Authenticated);
        assert_eq!(Encrypted.test_security(), TestSecurity::Encrypted);
        assert_eq!(SecurityMode::from_modes(Modes(0x82)), Some(Authenticated));
        assert_eq!(SecurityMode::from_modes(Modes(0x03)), None);
        assert_eq!(SecurityMode::from_modes(Modes(0x80)), None);
    }
}
