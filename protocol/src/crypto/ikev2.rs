//! IKEv2 key derivation (RFC 7296 §2.13, §2.14, §2.17, §2.18) and the RFC 7717
//! shared secret `prf(SK_d, "IPPM")` (RFC 7717 §5.1).
//!
//! Only the HMAC-SHA1/-SHA2 PRFs (transform IDs 2, 5, 6, 7) are provided; the
//! AES-XCBC/CMAC PRFs (4, 8) and HMAC-MD5 (1) are not.
//!
//! RFC 7717 leaves open whether PBKDF2 still runs on the derived secret (spec
//! `rfc7717-ikev2-key.md` §2 A): [`rfc7717_shared_secret`] returns a
//! [`SharedSecret`]; reading A (the recommended default) feeds it to
//! [`crate::crypto::token_key`] like a passphrase, reading B uses its first 16
//! octets directly as the token key. That choice belongs to the caller.

use super::{keyed_hmac, CryptoError, SharedSecret, KEY_ID_LEN};
use core::fmt;
use core::ops::Deref;
use hmac::{Hmac, Mac};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Largest PRF output (HMAC-SHA-512).
const MAX_PRF_LEN: usize = 64;

/// An IKEv2 pseudorandom function (IKEv2 Transform Type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA1 (transform ID 2, RFC 2104).
    HmacSha1,
    /// PRF_HMAC_SHA2_256 (transform ID 5, RFC 4868).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (transform ID 6, RFC 4868).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (transform ID 7, RFC 4868).
    HmacSha512,
}

/// Runs `$body` with `$H` bound to the HMAC type of `$prf`.
macro_rules! with_hmac {
    ($prf:expr, $H:ident => $body:expr) => {
        match $prf {
            Prf::HmacSha1 => {
                type $H = Hmac<sha1::Sha1>;
                $body
            }
            Prf::HmacSha256 => {
                type $H = Hmac<sha2::Sha256>;
                $body
            }
            Prf::HmacSha384 => {
                type $H = Hmac<sha2::Sha384>;
                $body
            }
            Prf::HmacSha512 => {
                type $H = Hmac<sha2::Sha512>;
                $body
            }
        }
    };
}

impl Prf {
    /// The PRF of an IKEv2 Transform Type 2 ID, if supported.
    pub const fn from_transform_id(id: u16) -> Option<Prf> {
        match id {
            2 => Some(Prf::HmacSha1),
            5 => Some(Prf::HmacSha256),
            6 => Some(Prf::HmacSha384),
            7 => Some(Prf::HmacSha512),
            _ => None,
        }
    }

    /// The IKEv2 Transform Type 2 ID.
    pub const fn transform_id(self) -> u16 {
        match self {
            Prf::HmacSha1 => 2,
            Prf::HmacSha256 => 5,
            Prf::HmacSha384 => 6,
            Prf::HmacSha512 => 7,
        }
    }

    /// Output length in octets (20, 32, 48, 64).
    pub const fn output_len(self) -> usize {
        match self {
            Prf::HmacSha1 => 20,
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// The PRF's preferred key size, which is the length of SK_d, SK_pi and
    /// SK_pr (RFC 7296 §2.13; for HMAC PRFs the output length, RFC 4868 §2.1.2).
    pub const fn key_len(self) -> usize {
        self.output_len()
    }

    /// `prf(key, data)` (RFC 7296 §2.13).
    pub fn prf(self, key: &[u8], data: &[u8]) -> PrfOutput {
        self.prf_parts(key, &[data])
    }

    /// `prf(key, parts[0] | parts[1] | …)`, without concatenating.
    pub fn prf_parts(self, key: &[u8], parts: &[&[u8]]) -> PrfOutput {
        self.prf_iter(key, parts.iter().copied())
    }

    fn prf_iter<'a>(self, key: &[u8], parts: impl IntoIterator<Item = &'a [u8]>) -> PrfOutput {
        let mut out = PrfOutput {
            buf: [0; MAX_PRF_LEN],
            len: self.output_len(),
        };
        with_hmac!(self, H => {
            let mut mac: H = keyed_hmac(key);
            for part in parts {
                mac.update(part);
            }
            let mut tag = mac.finalize().into_bytes();
            out.buf[..tag.len()].copy_from_slice(&tag);
            tag.zeroize();
        });
        out
    }

    /// `prf+(key, seed)` truncated to `len` octets (RFC 7296 §2.13):
    /// T1 = prf(K, S | 0x01), Tn = prf(K, T(n-1) | S | n). At most 255 blocks.
    pub fn prf_plus(
        self,
        key: &[u8],
        seed: &[u8],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.prf_plus_parts(key, &[seed], len)
    }

    /// `prf+` with the seed given as parts to concatenate.
    fn prf_plus_parts(
        self,
        key: &[u8],
        seed: &[&[u8]],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let max = 255 * self.output_len();
        if len > max {
            return Err(CryptoError::PrfPlusTooLong {
                requested: len,
                max,
            });
        }
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        let mut prev: Option<PrfOutput> = None;
        let mut counter: u8 = 1;
        while out.len() < len {
            let n = [counter];
            let t = self.prf_iter(
                key,
                prev.iter()
                    .map(|t| &t[..])
                    .chain(seed.iter().copied())
                    .chain(core::iter::once(&n[..])),
            );
            let take = (len - out.len()).min(t.len());
            out.extend_from_slice(&t[..take]);
            prev = Some(t);
            // Cannot wrap: len ≤ 255 blocks was checked above.
            counter = counter.wrapping_add(1);
        }
        Ok(out)
    }
}

/// One PRF output (at most 64 octets), zeroized on drop; derefs to its octets.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrfOutput {
    buf: [u8; MAX_PRF_LEN],
    len: usize,
}

impl Deref for PrfOutput {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for PrfOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrfOutput(<redacted>)")
    }
}

/// `SKEYSEED = prf(Ni | Nr, g^ir)` for a new IKE SA (RFC 7296 §2.14).
///
/// `g_ir` is the (EC)DH shared secret, big-endian, zero-padded to the modulus
/// length. (The AES-XCBC/CMAC rule of keying with 64 bits of each nonce does
/// not apply to the HMAC PRFs supported here.)
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> PrfOutput {
    let mut key = Zeroizing::new(Vec::with_capacity(ni.len() + nr.len()));
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    prf.prf(&key, g_ir)
}

/// `SKEYSEED = prf(SK_d(old), g^ir(new) | Ni | Nr)` when an IKE SA is rekeyed
/// with CREATE_CHILD_SA (RFC 7296 §2.18); `prf` is the *old* SA's PRF.
pub fn rekey_skeyseed(
    prf: Prf,
    sk_d_old: &[u8],
    g_ir_new: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> PrfOutput {
    prf.prf_parts(sk_d_old, &[g_ir_new, ni, nr])
}

/// Key lengths for splitting the IKE SA keying material (RFC 7296 §2.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkLengths {
    /// SK_d, SK_pi, SK_pr: the PRF's preferred key size.
    pub prf_key: usize,
    /// SK_ai, SK_ar: the integrity key size (0 with an AEAD cipher).
    pub integ_key: usize,
    /// SK_ei, SK_er: the encryption key size (plus the salt for AEAD, e.g.
    /// 16 + 4 for AES-GCM-128).
    pub encr_key: usize,
}

impl SkLengths {
    /// Total octets of prf+ output consumed.
    pub const fn total(&self) -> usize {
        3 * self.prf_key + 2 * self.integ_key + 2 * self.encr_key
    }
}

/// The seven keys of an IKE SA, in extraction order (RFC 7296 §2.14).
/// Debug output is redacted; all are zeroized on drop.
pub struct IkeSaKeys {
    /// Used to derive Child SA keys and the RFC 7717 secret.
    pub sk_d: Zeroizing<Vec<u8>>,
    /// Integrity key, initiator → responder.
    pub sk_ai: Zeroizing<Vec<u8>>,
    /// Integrity key, responder → initiator.
    pub sk_ar: Zeroizing<Vec<u8>>,
    /// Encryption key, initiator → responder.
    pub sk_ei: Zeroizing<Vec<u8>>,
    /// Encryption key, responder → initiator.
    pub sk_er: Zeroizing<Vec<u8>>,
    /// AUTH payload key of the initiator.
    pub sk_pi: Zeroizing<Vec<u8>>,
    /// AUTH payload key of the responder.
    pub sk_pr: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IkeSaKeys(<redacted>)")
    }
}

/// `{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
/// prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)` (RFC 7296 §2.14).
pub fn ike_sa_keys(
    prf: Prf,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    lens: SkLengths,
) -> Result<IkeSaKeys, CryptoError> {
    let stream = prf.prf_plus_parts(skeyseed, &[ni, nr, spi_i, spi_r], lens.total())?;
    let mut rest: &[u8] = &stream;
    let mut next = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Zeroizing::new(head.to_vec())
    };
    Ok(IkeSaKeys {
        sk_d: next(lens.prf_key),
        sk_ai: next(lens.integ_key),
        sk_ar: next(lens.integ_key),
        sk_ei: next(lens.encr_key),
        sk_er: next(lens.encr_key),
        sk_pi: next(lens.prf_key),
        sk_pr: next(lens.prf_key),
    })
}

/// Child SA keying material (RFC 7296 §2.17):
/// `KEYMAT = prf+(SK_d, Ni | Nr)`, or `prf+(SK_d, g^ir(new) | Ni | Nr)` for a
/// CREATE_CHILD_SA exchange with a KE payload (PFS).
///
/// Extraction order: initiator → responder SA first, then responder →
/// initiator; within one SA the encryption key (key ‖ salt for AES-GCM) first,
/// then the integrity key.
pub fn child_sa_keymat(
    prf: Prf,
    sk_d: &[u8],
    g_ir_new: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    match g_ir_new {
        Some(g) => prf.prf_plus_parts(sk_d, &[g, ni, nr], len),
        None => prf.prf_plus_parts(sk_d, &[ni, nr], len),
    }
}

/// The label RFC 7717 §5.1 feeds to the PRF: ASCII "IPPM", no terminator.
pub const RFC7717_LABEL: &[u8; 4] = b"IPPM";

/// The RFC 7717 shared secret `prf(SK_d, "IPPM")` of an IKE SA (RFC 7717
/// §5.1), untruncated (the PRF's full output length). `prf` is the PRF
/// negotiated for that IKE SA.
pub fn rfc7717_shared_secret(prf: Prf, sk_d: &[u8]) -> SharedSecret {
    SharedSecret::from_slice(&prf.prf(sk_d, RFC7717_LABEL))
}

/// The Set-Up-Response KeyID of RFC 7717 §5.3: SPIi ‖ SPIr of the IKE SA,
/// then 64 zero octets.
pub fn rfc7717_key_id(spi_i: &[u8; 8], spi_r: &[u8; 8]) -> [u8; KEY_ID_LEN] {
    let mut id = [0u8; KEY_ID_LEN];
    id[..8].copy_from_slice(spi_i);
    id[8..16].copy_from_slice(spi_r);
    id
}

/// The IKE SA SPIs (SPIi, SPIr) named by an RFC 7717 KeyID (its first 16
/// octets; the server ignores the rest, RFC 7717 §5.3).
pub fn rfc7717_spis(key_id: &[u8; KEY_ID_LEN]) -> ([u8; 8], [u8; 8]) {
    let mut spi_i = [0u8; 8];
    let mut spi_r = [0u8; 8];
    spi_i.copy_from_slice(&key_id[..8]);
    spi_r.copy_from_slice(&key_id[8..16]);
    (spi_i, spi_r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_ids_round_trip() {
        for prf in [
            Prf::HmacSha1,
            Prf::HmacSha256,
            Prf::HmacSha384,
            Prf::HmacSha512,
        ] {
            assert_eq!(Prf::from_transform_id(prf.transform_id()), Some(prf));
            assert_eq!(prf.prf(b"k", b"d").len(), prf.output_len());
        }
        for unsupported in [0, 1, 3, 4, 8, 9] {
            assert_eq!(Prf::from_transform_id(unsupported), None);
        }
    }

    #[test]
    fn prf_plus_limits_and_prefix_property() {
        let p = Prf::HmacSha1;
        assert_eq!(
            p.prf_plus(b"k", b"s", 255 * 20 + 1).unwrap_err(),
            CryptoError::PrfPlusTooLong {
                requested: 5101,
                max: 5100
            }
        );
        let full = p.prf_plus(b"k", b"s", 255 * 20).unwrap();
        assert_eq!(full.len(), 5100);
        // Output is consumed without regard to block boundaries.
        let short = p.prf_plus(b"k", b"s", 33).unwrap();
        assert_eq!(&full[..33], &short[..]);
        assert!(p.prf_plus(b"k", b"s", 0).unwrap().is_empty());
        // T1 = prf(K, S | 0x01)
        assert_eq!(&full[..20], &p.prf(b"k", b"s\x01")[..]);
    }

    #[test]
    fn key_id_layout() {
        let id = rfc7717_key_id(&[1; 8], &[2; 8]);
        assert_eq!(rfc7717_spis(&id), ([1; 8], [2; 8]));
        assert!(id[16..].iter().all(|&b| b == 0));
    }
}
