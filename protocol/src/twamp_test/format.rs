//! The per-session negotiated TWAMP-Test format.
//!
//! Everything TWAMP-Control negotiated that changes test-packet octets:
//! the security mode (RFC 4656, RFC 5618), Reflect Octets and Symmetrical
//! Size (RFC 6038), DSCP and ECN Monitoring (RFC 7750) and the reflector's
//! timestamp format (RFC 8186). Feature bits apply to every session of a
//! control connection (RFC 6038 §4.1; modes.md §2 rule 3).
//!
//! Two RFC inconsistencies are configurable here (twamp-test.md §6.2, §7):
//! the number of MBZ octets a Symmetrical Size sender inserts after its header
//! (unauthenticated: 27 by RFC 6038, 28 by RFC 7750 Fig. 4 with DSCP/ECN
//! Monitoring, 30 to match the 44-octet RFC 7750 reflector header;
//! authenticated/encrypted: 56 by the RFC 6038 text, 64 to match the 112-octet
//! reflector header). They only decide where the octets to be reflected start
//! in the received packet.

use super::packet::{ReflectorLayout, TestLayout};
use crate::time::{TaiOffset, TimeFormat, Timestamp};

/// The security of the test packets of a session (twamp-test.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TestSecurity {
    /// Modes 1 (unauthenticated) and 8 (mixed, RFC 5618): no test-packet crypto.
    #[default]
    Unauthenticated,
    /// Mode 2: block 0 AES-ECB, HMAC-SHA1-128 over block 0; T2/T3 and the
    /// copied sender fields stay in clear.
    Authenticated,
    /// Mode 4: AES-CBC (IV 0) over 32 (sender) / 96 (reflector) octets and
    /// HMAC-SHA1-128 over the same plaintext.
    Encrypted,
}

impl TestSecurity {
    /// The packet layout this security uses.
    pub const fn layout(self) -> TestLayout {
        match self {
            TestSecurity::Unauthenticated => TestLayout::Unauthenticated,
            TestSecurity::Authenticated | TestSecurity::Encrypted => TestLayout::Authenticated,
        }
    }
}

/// RFC 6038 Reflect Octets (mode bit 5) as agreed for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReflectOctets {
    /// Length of padding to reflect (Request-TW-Session octets 90–91): the
    /// reflector returns this many leading octets of the sender's padding at
    /// the start of its own padding.
    pub length: u16,
    /// Server Octets returned in Accept-Session (octets 22–23). The sender
    /// puts them first in the region to be reflected; the reflector returns
    /// that region unchanged, so this value is informational here.
    pub server_octets: u16,
}

/// MBZ octets an unauthenticated Symmetrical Size sender inserts after its
/// 14-octet header (RFC 6038 §4.2, RFC 7750 §3; twamp-test.md §6.2, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UnauthSymmetricalMbz {
    /// The spec's recommendation: 27 (RFC 6038), or 28 when DSCP and ECN
    /// Monitoring is also selected (RFC 7750 Fig. 4, the only figure given
    /// and what the one public sender implementation uses).
    #[default]
    Recommended,
    /// 27 octets (RFC 6038) whatever else is selected.
    Octets27,
    /// 28 octets (RFC 7750 Fig. 4) whatever else is selected.
    Octets28,
    /// 30 octets, byte-consistent with the 44-octet RFC 7750 reflector header.
    Octets30,
}

/// MBZ octets an authenticated/encrypted Symmetrical Size sender inserts after
/// its 48-octet header (RFC 6038 §4.2; twamp-test.md §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthSymmetricalMbz {
    /// 64 octets: byte-consistent with the 112-octet reflector header that the
    /// RFC 5357 figure, perfSONAR and the wire use (the spec's recommendation).
    #[default]
    Octets64,
    /// 56 octets, as the RFC 6038 text says (it assumes a 104-octet reflector).
    Octets56,
}

/// The negotiated test format of one session.
///
/// `Default` is an unauthenticated session without RFC 6038/7750 features and
/// with NTP timestamps, i.e. TWAMP Light.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SessionFormat {
    /// Test-packet security.
    pub security: TestSecurity,
    /// RFC 6038 Reflect Octets (mode bit 5), if selected.
    pub reflect_octets: Option<ReflectOctets>,
    /// RFC 6038 Symmetrical Size sender format (mode bit 6).
    pub symmetrical_size: bool,
    /// RFC 7750 DSCP and ECN Monitoring (mode bit 8).
    pub dscp_ecn_monitoring: bool,
    /// Format of the reflector's own timestamps T2 and T3: PTPv2 when mode
    /// bit 9 was selected (RFC 8186 §2.2), NTP otherwise.
    pub timestamp_format: TimeFormat,
    /// Symmetrical Size MBZ length for unauthenticated sessions.
    pub unauth_symmetrical_mbz: UnauthSymmetricalMbz,
    /// Symmetrical Size MBZ length for authenticated/encrypted sessions.
    pub auth_symmetrical_mbz: AuthSymmetricalMbz,
}

impl SessionFormat {
    /// A session with `security` and no optional feature.
    pub const fn new(security: TestSecurity) -> Self {
        SessionFormat {
            security,
            reflect_octets: None,
            symmetrical_size: false,
            dscp_ecn_monitoring: false,
            timestamp_format: TimeFormat::Ntp,
            unauth_symmetrical_mbz: UnauthSymmetricalMbz::Recommended,
            auth_symmetrical_mbz: AuthSymmetricalMbz::Octets64,
        }
    }

    /// The sender and reflector packet layout.
    pub const fn layout(&self) -> TestLayout {
        self.security.layout()
    }

    /// The reflector packet layout (with the RFC 7750 octet if selected).
    pub const fn reflector_layout(&self) -> ReflectorLayout {
        ReflectorLayout {
            test: self.layout(),
            dscp_ecn: self.dscp_ecn_monitoring,
        }
    }

    /// Session-Sender header length: 14 or 48.
    pub const fn sender_header_len(&self) -> usize {
        self.layout().sender_header_len()
    }

    /// Session-Reflector header length: 41, 44 (RFC 7750) or 112.
    pub const fn reflector_header_len(&self) -> usize {
        self.reflector_layout().header_len()
    }

    /// Symmetrical Size MBZ octets after the sender header (0 without
    /// Symmetrical Size).
    pub const fn sender_mbz_len(&self) -> usize {
        if !self.symmetrical_size {
            return 0;
        }
        match self.security.layout() {
            TestLayout::Unauthenticated => match self.unauth_symmetrical_mbz {
                UnauthSymmetricalMbz::Recommended if self.dscp_ecn_monitoring => 28,
                UnauthSymmetricalMbz::Recommended | UnauthSymmetricalMbz::Octets27 => 27,
                UnauthSymmetricalMbz::Octets28 => 28,
                UnauthSymmetricalMbz::Octets30 => 30,
            },
            TestLayout::Authenticated => match self.auth_symmetrical_mbz {
                AuthSymmetricalMbz::Octets64 => 64,
                AuthSymmetricalMbz::Octets56 => 56,
            },
        }
    }

    /// Offset in the sender packet where the padding the reflector may return
    /// starts: the "Packet Padding (to be reflected)" of RFC 6038 — right after
    /// the header, or after the Symmetrical Size MBZ.
    pub const fn sender_padding_offset(&self) -> usize {
        self.sender_header_len() + self.sender_mbz_len()
    }

    /// Number of leading sender padding octets the reflector must return
    /// (RFC 6038 Reflect Octets; 0 without it).
    pub const fn reflect_len(&self) -> usize {
        match self.reflect_octets {
            Some(r) => r.length as usize,
            None => 0,
        }
    }

    /// Offset of T3 in the reflector packet (4 or 16).
    pub const fn t3_offset(&self) -> usize {
        self.reflector_layout().t3_offset()
    }

    /// Length of the reflection of a `rx_len`-octet sender packet:
    /// `max(rx_len, reflector header + octets to reflect)`, where the octets
    /// to reflect are those of the Reflect Octets region actually present.
    ///
    /// This is RFC 5357 §4.2.1's "truncate 27 (unauthenticated) / 64
    /// (authenticated) octets of the sender padding when there are enough,
    /// else send the minimum" (perfSONAR: `max(rx_len, 41 | 112)`), and it
    /// keeps reflected length == received length for Symmetrical Size
    /// senders (RFC 6038 §4.2). The caller checks it against the sender
    /// header length first.
    pub const fn reply_len(&self, rx_len: usize) -> usize {
        let present = rx_len.saturating_sub(self.sender_padding_offset());
        let reflect = if self.reflect_len() < present {
            self.reflect_len()
        } else {
            present
        };
        let min = self.reflector_header_len() + reflect;
        if rx_len > min {
            rx_len
        } else {
            min
        }
    }

    /// Encodes a TAI time for T2/T3 in the session's timestamp format.
    pub fn encode_timestamp(&self, tai_ns: u64, offset: TaiOffset) -> [u8; 8] {
        Timestamp::from_tai_ns(tai_ns, offset, self.timestamp_format).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_padding_offsets_per_rfc() {
        let open = SessionFormat::new(TestSecurity::Unauthenticated);
        assert_eq!(
            (open.sender_header_len(), open.reflector_header_len()),
            (14, 41)
        );
        assert_eq!((open.sender_padding_offset(), open.t3_offset()), (14, 4));
        for s in [TestSecurity::Authenticated, TestSecurity::Encrypted] {
            let f = SessionFormat::new(s);
            assert_eq!((f.sender_header_len(), f.reflector_header_len()), (48, 112));
            assert_eq!(f.t3_offset(), 16);
        }
        let monitored = SessionFormat {
            dscp_ecn_monitoring: true,
            ..open
        };
        assert_eq!(monitored.reflector_header_len(), 44);
        // Symmetrical Size MBZ: 27, or 28 with RFC 7750; 64 authenticated.
        let sym = SessionFormat {
            symmetrical_size: true,
            ..open
        };
        assert_eq!(sym.sender_mbz_len(), 27);
        assert_eq!(
            SessionFormat {
                dscp_ecn_monitoring: true,
                ..sym
            }
            .sender_mbz_len(),
            28
        );
        assert_eq!(
            SessionFormat {
                symmetrical_size: true,
                ..SessionFormat::new(TestSecurity::Encrypted)
            }
            .sender_mbz_len(),
            64
        );
    }

    #[test]
    fn reply_len_truncates_27_and_64() {
        let open = SessionFormat::default();
        assert_eq!(open.reply_len(14), 41);
        assert_eq!(open.reply_len(41), 41);
        assert_eq!(open.reply_len(214), 214);
        let auth = SessionFormat::new(TestSecurity::Authenticated);
        assert_eq!(auth.reply_len(48), 112);
        assert_eq!(auth.reply_len(112), 112);
        assert_eq!(auth.reply_len(usize::MAX), usize::MAX);
    }
}
