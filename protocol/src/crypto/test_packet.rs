//! TWAMP-Test packet protection in authenticated and encrypted modes
//! (RFC 4656 §4.1.2, RFC 5357 §4.1.2 and §4.2.1; spec `twamp-test.md` §1–3).
//!
//! | Role | Mode | Encrypted (AES-CBC, IV 0) | HMAC-SHA1-128 over plaintext | HMAC at |
//! |---|---|---|---|---:|
//! | Session-Sender | authenticated | octets 0–15 (= ECB of block 0) | 0–15 | 32 |
//! | Session-Sender | encrypted | octets 0–31 | 0–31 | 32 |
//! | Session-Reflector | authenticated | octets 0–15 | 0–15 | 96 |
//! | Session-Reflector | encrypted | octets 0–95 | 0–95 | 96 |
//!
//! Every packet is protected on its own (IV 0, no chaining across packets).
//! The HMAC field is never encrypted; padding after it is neither encrypted
//! nor authenticated. The reflector's 96-octet encrypted region is the RFC
//! 5357 §4.2.1 figure as perfSONAR implements it (spec pitfall 3); a
//! reflector *receiving* a sender packet decrypts 32 octets
//! (role [`PacketRole::Sender`]).
//!
//! In authenticated mode the octets after block 0 are not covered, so a sender
//! may call [`TestKeys::protect`] as soon as block 0 is final and write the
//! timestamp afterwards (RFC 4656 §4.1.2). In encrypted mode every field up to
//! the HMAC must be final before `protect`.

use super::{as_blocks, CryptoError, TestKeys, BLOCK_LEN, HMAC_LEN};
use crate::error::WireError;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use hmac::Mac;

/// Which party built the packet, which fixes its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketRole {
    /// A Session-Sender packet (48-octet protected header).
    Sender,
    /// A Session-Reflector packet (112-octet protected header).
    Reflector,
}

impl PacketRole {
    /// Offset of the HMAC field: 32 (sender) or 96 (reflector).
    pub const fn hmac_offset(self) -> usize {
        match self {
            PacketRole::Sender => 32,
            PacketRole::Reflector => 96,
        }
    }

    /// Smallest protected packet: the header up to and including the HMAC
    /// (48 or 112 octets); padding follows.
    pub const fn min_len(self) -> usize {
        self.hmac_offset() + HMAC_LEN
    }

    const fn what(self) -> &'static str {
        match self {
            PacketRole::Sender => "TWAMP-Test sender packet",
            PacketRole::Reflector => "TWAMP-Test reflector packet",
        }
    }
}

/// The TWAMP-Test protection level of a session (the mode's security bit).
/// Unauthenticated and mixed mode test packets carry no protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestProtection {
    /// Mode 2: block 0 encrypted, HMAC over block 0.
    Authenticated,
    /// Mode 4: everything before the HMAC encrypted and authenticated.
    Encrypted,
}

impl TestProtection {
    /// Number of leading octets encrypted and covered by the HMAC.
    pub const fn covered_len(self, role: PacketRole) -> usize {
        match self {
            TestProtection::Authenticated => BLOCK_LEN,
            TestProtection::Encrypted => role.hmac_offset(),
        }
    }
}

impl TestKeys {
    /// Protects a test packet in place: computes the HMAC over the plaintext
    /// of the covered region, encrypts that region (AES-CBC, IV 0) and writes
    /// the HMAC, unencrypted, at the role's HMAC offset. Octets after the HMAC
    /// field (padding) are not touched.
    ///
    /// Errors if `pkt` is shorter than [`PacketRole::min_len`].
    pub fn protect(
        &self,
        role: PacketRole,
        mode: TestProtection,
        pkt: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (covered, hmac_at) = check(role, mode, pkt)?;
        let mut mac = self.hmac.clone();
        mac.update(&pkt[..covered]);
        let tag = mac.finalize().into_bytes();
        let mut cbc = cbc::Encryptor::inner_iv_init(&self.aes, &[0u8; BLOCK_LEN].into());
        for block in as_blocks(&mut pkt[..covered]) {
            cbc.encrypt_block_mut(block);
        }
        pkt[hmac_at..hmac_at + HMAC_LEN].copy_from_slice(&tag[..HMAC_LEN]);
        Ok(())
    }

    /// Checks a received test packet in place: decrypts the covered region
    /// (AES-CBC, IV 0), then verifies the HMAC over the decrypted plaintext in
    /// constant time.
    ///
    /// On success the covered region holds the plaintext. On
    /// [`CryptoError::BadHmac`] the content of `pkt` is unspecified (it has
    /// been decrypted with the session's key); the packet must be discarded
    /// silently (RFC 4656 §4.2, RFC 5357 §4.2). Errors without touching `pkt`
    /// if it is shorter than [`PacketRole::min_len`].
    pub fn unprotect(
        &self,
        role: PacketRole,
        mode: TestProtection,
        pkt: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (covered, hmac_at) = check(role, mode, pkt)?;
        let mut cbc = cbc::Decryptor::inner_iv_init(&self.aes, &[0u8; BLOCK_LEN].into());
        for block in as_blocks(&mut pkt[..covered]) {
            cbc.decrypt_block_mut(block);
        }
        let mut mac = self.hmac.clone();
        mac.update(&pkt[..covered]);
        mac.verify_truncated_left(&pkt[hmac_at..hmac_at + HMAC_LEN])
            .map_err(|_| CryptoError::BadHmac { what: role.what() })
    }
}

/// Length check; returns (covered length, HMAC offset).
fn check(role: PacketRole, mode: TestProtection, pkt: &[u8]) -> Result<(usize, usize), WireError> {
    WireError::check_len(role.what(), pkt, role.min_len())?;
    Ok((mode.covered_len(role), role.hmac_offset()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SessionKeys;

    #[test]
    fn short_buffers_are_typed_errors_and_untouched() {
        let keys = TestKeys::new(&SessionKeys {
            aes: [1; 16],
            hmac: [2; 32],
        });
        for (role, need) in [(PacketRole::Sender, 48), (PacketRole::Reflector, 112)] {
            for mode in [TestProtection::Authenticated, TestProtection::Encrypted] {
                let mut pkt = vec![0x5a; need - 1];
                let err = keys.unprotect(role, mode, &mut pkt).unwrap_err();
                assert_eq!(
                    err,
                    CryptoError::Wire(WireError::Truncated {
                        what: role.what(),
                        need,
                        have: need - 1
                    })
                );
                assert!(keys.protect(role, mode, &mut pkt).is_err());
                assert!(pkt.iter().all(|&b| b == 0x5a));
            }
        }
    }
}
