//! STAMP HMAC-SHA-256 truncated to 128 bits (RFC 8762 §4.1.1/§4.2.1 and the
//! RFC 8972 §4.8 HMAC TLV).
//!
//! * Authenticated base packets (sender and reflector): the HMAC covers octets
//!   0–95 and sits at octets 96–111. Nothing is encrypted in STAMP.
//! * HMAC TLV: the HMAC covers the packet's Sequence Number (base octets 0–3)
//!   followed by every preceding TLV as sent (flags included); pass those as
//!   the parts of [`StampHmac::compute`].
//!
//! The key is configured per session out of band (RFC 8762 §4.1.1); the keyed
//! HMAC state is built once and cloned per packet (no allocation).

use super::{keyed_hmac, CryptoError, HMAC_LEN};
use crate::error::WireError;
use core::fmt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Offset of the HMAC field in an authenticated STAMP packet (sender and
/// reflector alike), which is also the number of octets it covers.
pub const STAMP_HMAC_OFFSET: usize = 96;

/// A keyed HMAC-SHA-256-128 for one STAMP session.
#[derive(Clone)]
pub struct StampHmac {
    keyed: Hmac<Sha256>,
}

impl StampHmac {
    /// Keys the HMAC (any key length; RFC 2104 hashes keys over 64 octets).
    pub fn new(key: &[u8]) -> Self {
        StampHmac {
            keyed: keyed_hmac(key),
        }
    }

    /// HMAC-SHA-256 over the concatenation of `parts`, truncated to 16 octets.
    pub fn compute(&self, parts: &[&[u8]]) -> [u8; HMAC_LEN] {
        let mut mac = self.keyed.clone();
        for part in parts {
            mac.update(part);
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; HMAC_LEN];
        tag.copy_from_slice(&full[..HMAC_LEN]);
        tag
    }

    /// Verifies, in constant time, that `tag` (exactly 16 octets) is the
    /// truncated HMAC of the concatenation of `parts`.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> Result<(), CryptoError> {
        let bad = CryptoError::BadHmac { what: "STAMP" };
        if tag.len() != HMAC_LEN {
            return Err(bad);
        }
        let mut mac = self.keyed.clone();
        for part in parts {
            mac.update(part);
        }
        mac.verify_truncated_left(tag).map_err(|_| bad)
    }

    /// Writes the HMAC of octets 0–95 at octets 96–111 of an authenticated
    /// STAMP packet (RFC 8762 §4.1.1 sender, §4.2.1 reflector).
    pub fn seal_packet(&self, pkt: &mut [u8]) -> Result<(), CryptoError> {
        check(pkt)?;
        let tag = self.compute(&[&pkt[..STAMP_HMAC_OFFSET]]);
        pkt[STAMP_HMAC_OFFSET..STAMP_HMAC_OFFSET + HMAC_LEN].copy_from_slice(&tag);
        Ok(())
    }

    /// Verifies the HMAC at octets 96–111 of an authenticated STAMP packet.
    pub fn verify_packet(&self, pkt: &[u8]) -> Result<(), CryptoError> {
        check(pkt)?;
        self.verify(
            &[&pkt[..STAMP_HMAC_OFFSET]],
            &pkt[STAMP_HMAC_OFFSET..STAMP_HMAC_OFFSET + HMAC_LEN],
        )
    }
}

fn check(pkt: &[u8]) -> Result<(), WireError> {
    WireError::check_len(
        "STAMP authenticated packet",
        pkt,
        STAMP_HMAC_OFFSET + HMAC_LEN,
    )
}

impl fmt::Debug for StampHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StampHmac(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_tag_length_and_short_packet() {
        let h = StampHmac::new(b"k");
        let tag = h.compute(&[b"abc"]);
        h.verify(&[b"a", b"bc"], &tag).unwrap();
        assert!(h.verify(&[b"abc"], &tag[..15]).is_err());
        assert!(h.verify(&[b"abc"], &[]).is_err());
        assert!(matches!(
            h.verify_packet(&[0; 111]),
            Err(CryptoError::Wire(WireError::Truncated { need: 112, .. }))
        ));
    }
}
