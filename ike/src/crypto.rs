//! The cryptographic suites this endpoint negotiates, arranged from RustCrypto
//! primitives (no hand-rolled primitive):
//!
//! * Key exchange: group 19 ECP-256 (`p256`, RFC 5903: KE data x ‖ y, g^ir the
//!   x coordinate), group 31 Curve25519 (`x25519-dalek`, RFC 8031: all-zero
//!   results refused), group 14 MODP-2048 (RFC 3526, modular exponentiation
//!   from `crypto-bigint`'s constant-time Montgomery arithmetic).
//! * PRF: HMAC-SHA1/SHA2-256/384/512 from `ricochet-protocol`.
//! * Encryption of the SK payload (RFC 7296 §3.14): ENCR_AES_GCM_16 with a
//!   128- or 256-bit key (RFC 5282: 8-octet IV, 4-octet salt from the keymat,
//!   16-octet ICV, AAD = IKE header through the SK generic header), and
//!   ENCR_AES_CBC 128/256 with AUTH_HMAC_SHA2_256_128.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U2048};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

pub use ricochet_protocol::crypto::ikev2::Prf;

use crate::rng::Rng;

/// A cryptographic failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    #[error("key exchange data of group {group} has the wrong length {len}")]
    BadKeLength { group: u16, len: usize },
    #[error("key exchange data of group {group} is not a valid public value")]
    BadPublicValue { group: u16 },
    #[error("SK payload failed integrity verification")]
    Integrity,
    #[error("SK payload malformed: {0}")]
    Malformed(&'static str),
    #[error("prf+ output requested is too long")]
    PrfPlus,
}

/// Diffie-Hellman groups (IKEv2 Transform Type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 14: 2048-bit MODP (RFC 3526).
    Modp2048,
    /// 19: 256-bit random ECP group, NIST P-256 (RFC 5903).
    Ecp256,
    /// 31: Curve25519 (RFC 8031).
    Curve25519,
}

impl DhGroup {
    pub const fn id(self) -> u16 {
        match self {
            DhGroup::Modp2048 => 14,
            DhGroup::Ecp256 => 19,
            DhGroup::Curve25519 => 31,
        }
    }

    pub const fn from_id(id: u16) -> Option<Self> {
        match id {
            14 => Some(DhGroup::Modp2048),
            19 => Some(DhGroup::Ecp256),
            31 => Some(DhGroup::Curve25519),
            _ => None,
        }
    }

    /// Length of the KE payload's key exchange data.
    pub const fn public_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => 256,
            DhGroup::Ecp256 => 64,
            DhGroup::Curve25519 => 32,
        }
    }

    /// Draws a private value and computes the public one.
    pub fn generate(self, rng: &mut dyn Rng) -> KeyExchange {
        let private = match self {
            DhGroup::Ecp256 => loop {
                let mut b = Zeroizing::new([0u8; 32]);
                rng.fill(&mut b[..]);
                if let Ok(sk) = p256::SecretKey::from_slice(&b[..]) {
                    break Private::Ecp256(sk);
                }
            },
            DhGroup::Curve25519 => {
                let mut b = [0u8; 32];
                rng.fill(&mut b);
                let s = x25519_dalek::StaticSecret::from(b);
                b.zeroize();
                Private::X25519(s)
            }
            DhGroup::Modp2048 => {
                // A 256-bit exponent (RFC 3526 §8 estimates 110 bits of
                // strength for this group; 2 × 128 bits of exponent suffice).
                let mut b = Zeroizing::new([0u8; 256]);
                rng.fill(&mut b[224..]);
                b[224] |= 0x80;
                Private::Modp(Box::new(Zeroizing::new(U2048::from_be_slice(&b[..]))))
            }
        };
        let public = match &private {
            Private::Ecp256(sk) => {
                let pt = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &sk.public_key(),
                    false,
                );
                pt.as_bytes()[1..].to_vec()
            }
            Private::X25519(s) => x25519_dalek::PublicKey::from(s).as_bytes().to_vec(),
            Private::Modp(x) => {
                let params = modp_params();
                let g = DynResidue::new(&U2048::from_u8(2), params);
                g.pow_bounded_exp(x, 256).retrieve().to_be_bytes().to_vec()
            }
        };
        KeyExchange {
            group: self,
            private,
            public,
        }
    }
}

enum Private {
    Ecp256(p256::SecretKey),
    X25519(x25519_dalek::StaticSecret),
    Modp(Box<Zeroizing<U2048>>),
}

/// One side's ephemeral key exchange state. The private value zeroizes on drop.
pub struct KeyExchange {
    pub group: DhGroup,
    private: Private,
    public: Vec<u8>,
}

impl core::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyExchange({:?}, <private redacted>)", self.group)
    }
}

/// The RFC 3526 2048-bit MODP prime (group 14), generator 2.
const MODP2048_P: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

fn modp_prime() -> U2048 {
    U2048::from_be_hex(MODP2048_P)
}

fn modp_params() -> DynResidueParams<{ U2048::LIMBS }> {
    DynResidueParams::new(&modp_prime())
}

impl KeyExchange {
    /// The KE payload's key exchange data.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// g^ir from the peer's key exchange data (big-endian, padded to the
    /// group's length). Refuses invalid public values.
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let group = self.group.id();
        if peer.len() != self.group.public_len() {
            return Err(CryptoError::BadKeLength {
                group,
                len: peer.len(),
            });
        }
        match &self.private {
            Private::Ecp256(sk) => {
                let mut sec1 = [0u8; 65];
                sec1[0] = 4;
                sec1[1..].copy_from_slice(peer);
                let pk = p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| CryptoError::BadPublicValue { group })?;
                let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Private::X25519(s) => {
                let mut b = [0u8; 32];
                b.copy_from_slice(peer);
                let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(b));
                // RFC 8031 §2.3: an all-zero result MUST be refused.
                if !shared.was_contributory() {
                    return Err(CryptoError::BadPublicValue { group });
                }
                Ok(Zeroizing::new(shared.as_bytes().to_vec()))
            }
            Private::Modp(x) => {
                let p = modp_prime();
                let y = U2048::from_be_slice(peer);
                // 1 < y < p - 1 (RFC 6989 §2.1 for MODP groups).
                let pm1 = p.wrapping_sub(&U2048::ONE);
                if y <= U2048::ONE || y >= pm1 {
                    return Err(CryptoError::BadPublicValue { group });
                }
                let params = modp_params();
                // g^ir and its encoding are as secret as the private value.
                let s = Zeroizing::new(
                    DynResidue::new(&y, params)
                        .pow_bounded_exp(x, 256)
                        .retrieve(),
                );
                let be = Zeroizing::new(s.to_be_bytes());
                Ok(Zeroizing::new(be.to_vec()))
            }
        }
    }
}

/// Encryption algorithm of the IKE SA or a CHILD_SA (Transform Type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_AES_GCM_16 (20) with a 128- or 256-bit key.
    AesGcm16 { key_bits: u16 },
    /// ENCR_AES_CBC (12) with a 128- or 256-bit key.
    AesCbc { key_bits: u16 },
}

/// Transform ID of ENCR_AES_CBC.
pub const ENCR_AES_CBC: u16 = 12;
/// Transform ID of ENCR_AES_GCM_16.
pub const ENCR_AES_GCM_16: u16 = 20;
/// Transform ID of AUTH_HMAC_SHA2_256_128.
pub const AUTH_HMAC_SHA2_256_128: u16 = 12;

impl EncrAlg {
    pub fn from_transform(id: u16, key_bits: Option<u16>) -> Option<Self> {
        let bits = key_bits?;
        if bits != 128 && bits != 256 {
            return None;
        }
        match id {
            ENCR_AES_GCM_16 => Some(EncrAlg::AesGcm16 { key_bits: bits }),
            ENCR_AES_CBC => Some(EncrAlg::AesCbc { key_bits: bits }),
            _ => None,
        }
    }

    pub const fn transform_id(self) -> u16 {
        match self {
            EncrAlg::AesGcm16 { .. } => ENCR_AES_GCM_16,
            EncrAlg::AesCbc { .. } => ENCR_AES_CBC,
        }
    }

    pub const fn key_bits(self) -> u16 {
        match self {
            EncrAlg::AesGcm16 { key_bits } | EncrAlg::AesCbc { key_bits } => key_bits,
        }
    }

    pub const fn is_aead(self) -> bool {
        matches!(self, EncrAlg::AesGcm16 { .. })
    }

    /// Keying material octets: the key, plus the 4-octet salt for GCM.
    pub const fn keymat_len(self) -> usize {
        match self {
            EncrAlg::AesGcm16 { key_bits } => key_bits as usize / 8 + 4,
            EncrAlg::AesCbc { key_bits } => key_bits as usize / 8,
        }
    }

    const fn iv_len(self) -> usize {
        match self {
            EncrAlg::AesGcm16 { .. } => 8,
            EncrAlg::AesCbc { .. } => 16,
        }
    }
}

/// Integrity algorithm (Transform Type 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    /// AUTH_HMAC_SHA2_256_128 (12).
    HmacSha256_128,
}

impl IntegAlg {
    pub const fn from_id(id: u16) -> Option<Self> {
        match id {
            AUTH_HMAC_SHA2_256_128 => Some(IntegAlg::HmacSha256_128),
            _ => None,
        }
    }
    pub const fn transform_id(self) -> u16 {
        AUTH_HMAC_SHA2_256_128
    }
    pub const fn key_len(self) -> usize {
        32
    }
    pub const fn icv_len(self) -> usize {
        16
    }
}

/// The protection of one direction of an IKE SA's SK payloads.
pub struct SkKeys {
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    sk_e: Zeroizing<Vec<u8>>,
    sk_a: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for SkKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SkKeys({:?}, {:?}, <redacted>)", self.encr, self.integ)
    }
}

impl SkKeys {
    /// Keys of one direction: `sk_e` (key ‖ salt for GCM) and `sk_a` (empty
    /// for AEAD).
    pub fn new(encr: EncrAlg, integ: Option<IntegAlg>, sk_e: &[u8], sk_a: &[u8]) -> Self {
        SkKeys {
            encr,
            integ,
            sk_e: Zeroizing::new(sk_e.to_vec()),
            sk_a: Zeroizing::new(sk_a.to_vec()),
        }
    }

    fn icv_len(&self) -> usize {
        match self.encr {
            EncrAlg::AesGcm16 { .. } => 16,
            EncrAlg::AesCbc { .. } => self.integ.map_or(0, IntegAlg::icv_len),
        }
    }

    /// Builds a whole encrypted message: `header` (28 octets, Length and
    /// Next Payload filled here) ‖ SK payload carrying `inner` (the emitted
    /// inner chain) whose first type is `first_inner`.
    pub fn seal(
        &self,
        header: &mut crate::wire::HeaderRepr,
        first_inner: u8,
        inner: &[u8],
        rng: &mut dyn Rng,
    ) -> Vec<u8> {
        use crate::wire::{ptype, HEADER_LEN};
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        // Padding: GCM needs none (strongSwan sends none); CBC pads the
        // plaintext (inner ‖ padding ‖ pad length) to the block size.
        let pad = match self.encr {
            EncrAlg::AesGcm16 { .. } => 0,
            EncrAlg::AesCbc { .. } => (16 - (inner.len() + 1) % 16) % 16,
        };
        let ct_len = inner.len() + pad + 1;
        let sk_len = 4 + iv_len + ct_len + icv_len;
        header.next_payload = ptype::SK;
        header.length = (HEADER_LEN + sk_len) as u32;
        let mut msg = vec![0u8; HEADER_LEN + sk_len];
        header.emit(&mut msg);
        msg[HEADER_LEN] = first_inner;
        msg[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&(sk_len as u16).to_be_bytes());
        let iv_at = HEADER_LEN + 4;
        rng.fill(&mut msg[iv_at..iv_at + iv_len]);
        let ct_at = iv_at + iv_len;
        msg[ct_at..ct_at + inner.len()].copy_from_slice(inner);
        msg[ct_at + inner.len() + pad] = pad as u8;
        let (head, rest) = msg.split_at_mut(ct_at);
        let (ct, icv) = rest.split_at_mut(ct_len);
        match self.encr {
            EncrAlg::AesGcm16 { key_bits } => {
                let klen = key_bits as usize / 8;
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&self.sk_e[klen..klen + 4]);
                nonce[4..].copy_from_slice(&head[iv_at..iv_at + 8]);
                let aad = &head[..iv_at];
                let tag = gcm_seal(&self.sk_e[..klen], &nonce, aad, ct);
                icv.copy_from_slice(&tag);
            }
            EncrAlg::AesCbc { key_bits } => {
                let klen = key_bits as usize / 8;
                let iv: [u8; 16] = head[iv_at..iv_at + 16].try_into().unwrap_or([0; 16]);
                cbc_encrypt(&self.sk_e[..klen], &iv, ct);
                let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.sk_a)
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
                mac.update(head);
                mac.update(ct);
                icv.copy_from_slice(&mac.finalize().into_bytes()[..16]);
            }
        }
        msg
    }

    /// Verifies and decrypts the SK payload of `msg` (the whole message,
    /// header first; the SK payload starts at `sk_at` and runs to the end).
    /// Returns the inner payload chain (padding removed).
    pub fn open(&self, msg: &[u8], sk_at: usize) -> Result<Vec<u8>, CryptoError> {
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        let body_at = sk_at + 4;
        if msg.len() < body_at + iv_len + icv_len + 1 {
            return Err(CryptoError::Malformed("SK payload too short"));
        }
        let ct_at = body_at + iv_len;
        let icv_at = msg.len() - icv_len;
        let mut pt = msg[ct_at..icv_at].to_vec();
        match self.encr {
            EncrAlg::AesGcm16 { key_bits } => {
                let klen = key_bits as usize / 8;
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&self.sk_e[klen..klen + 4]);
                nonce[4..].copy_from_slice(&msg[body_at..ct_at]);
                gcm_open(
                    &self.sk_e[..klen],
                    &nonce,
                    &msg[..body_at],
                    &mut pt,
                    &msg[icv_at..],
                )?;
            }
            EncrAlg::AesCbc { key_bits } => {
                let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.sk_a)
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
                mac.update(&msg[..icv_at]);
                let tag = mac.finalize().into_bytes();
                if !bool::from(tag[..16].ct_eq(&msg[icv_at..])) {
                    return Err(CryptoError::Integrity);
                }
                if pt.len() % 16 != 0 {
                    return Err(CryptoError::Malformed("CBC ciphertext not whole blocks"));
                }
                let klen = key_bits as usize / 8;
                let iv: [u8; 16] = msg[body_at..ct_at].try_into().unwrap_or([0; 16]);
                cbc_decrypt(&self.sk_e[..klen], &iv, &mut pt);
            }
        }
        let pad = *pt.last().ok_or(CryptoError::Malformed("empty plaintext"))? as usize;
        if pad + 1 > pt.len() {
            return Err(CryptoError::Malformed("Pad Length beyond the plaintext"));
        }
        pt.truncate(pt.len() - pad - 1);
        Ok(pt)
    }
}

fn gcm_seal(key: &[u8], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
    let n = Nonce::from_slice(nonce);
    let tag: Tag = if key.len() == 16 {
        Aes128Gcm::new(key.into())
            .encrypt_in_place_detached(n, aad, buf)
            .unwrap_or_else(|_| unreachable!("IKE messages are far below the GCM limit"))
    } else {
        Aes256Gcm::new(key.into())
            .encrypt_in_place_detached(n, aad, buf)
            .unwrap_or_else(|_| unreachable!("IKE messages are far below the GCM limit"))
    };
    tag.into()
}

fn gcm_open(
    key: &[u8],
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), CryptoError> {
    let n = Nonce::from_slice(nonce);
    let t = Tag::from_slice(tag);
    let r = if key.len() == 16 {
        Aes128Gcm::new(key.into()).decrypt_in_place_detached(n, aad, buf, t)
    } else {
        Aes256Gcm::new(key.into()).decrypt_in_place_detached(n, aad, buf, t)
    };
    r.map_err(|_| CryptoError::Integrity)
}

fn cbc_encrypt(key: &[u8], iv: &[u8; 16], buf: &mut [u8]) {
    use cbc::cipher::block_padding::NoPadding;
    let len = buf.len();
    if key.len() == 16 {
        let _ = cbc::Encryptor::<aes::Aes128>::new(key.into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(buf, len);
    } else {
        let _ = cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(buf, len);
    }
}

fn cbc_decrypt(key: &[u8], iv: &[u8; 16], buf: &mut [u8]) {
    use cbc::cipher::block_padding::NoPadding;
    if key.len() == 16 {
        let _ = cbc::Decryptor::<aes::Aes128>::new(key.into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(buf);
    } else {
        let _ = cbc::Decryptor::<aes::Aes256>::new(key.into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(buf);
    }
}

/// `prf+` through the protocol crate.
pub fn prf_plus(
    prf: Prf,
    key: &[u8],
    seed: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    prf.prf_plus(key, seed, len)
        .map_err(|_| CryptoError::PrfPlus)
}

/// The NAT_DETECTION_*_IP hash: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 §2.23).
pub fn nat_hash(spi_i: &[u8; 8], spi_r: &[u8; 8], addr: std::net::SocketAddr) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(spi_i);
    h.update(spi_r);
    match addr.ip() {
        std::net::IpAddr::V4(a) => h.update(a.octets()),
        std::net::IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(addr.port().to_be_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeqRng;

    #[test]
    fn every_group_agrees_with_itself() {
        for g in [DhGroup::Ecp256, DhGroup::Curve25519, DhGroup::Modp2048] {
            let mut r = SeqRng::new(7);
            let a = g.generate(&mut r);
            let b = g.generate(&mut r);
            assert_eq!(a.public().len(), g.public_len());
            let s1 = a.shared_secret(b.public()).unwrap();
            let s2 = b.shared_secret(a.public()).unwrap();
            assert_eq!(*s1, *s2, "{g:?}");
            assert!(a.shared_secret(&b.public()[1..]).is_err());
        }
    }

    #[test]
    fn bad_public_values_are_refused() {
        let mut r = SeqRng::new(1);
        let m = DhGroup::Modp2048.generate(&mut r);
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert!(m.shared_secret(&one).is_err());
        assert!(m.shared_secret(&[0xff; 256]).is_err());
        let x = DhGroup::Curve25519.generate(&mut r);
        assert!(x.shared_secret(&[0; 32]).is_err());
        let e = DhGroup::Ecp256.generate(&mut r);
        assert!(e.shared_secret(&[0x11; 64]).is_err());
    }

    #[test]
    fn sk_round_trips_and_detects_tampering() {
        use crate::wire::{HeaderRepr, HEADER_LEN};
        for (encr, integ) in [
            (EncrAlg::AesGcm16 { key_bits: 128 }, None),
            (EncrAlg::AesGcm16 { key_bits: 256 }, None),
            (
                EncrAlg::AesCbc { key_bits: 128 },
                Some(IntegAlg::HmacSha256_128),
            ),
            (
                EncrAlg::AesCbc { key_bits: 256 },
                Some(IntegAlg::HmacSha256_128),
            ),
        ] {
            let ke = vec![0x42u8; encr.keymat_len()];
            let ka = vec![0x17u8; integ.map_or(0, IntegAlg::key_len)];
            let k = SkKeys::new(encr, integ, &ke, &ka);
            let mut h = HeaderRepr {
                spi_i: [1; 8],
                spi_r: [2; 8],
                next_payload: 0,
                exchange_type: 37,
                flags: 8,
                message_id: 5,
                length: 0,
            };
            let inner = b"\x00\x00\x00\x08abcd";
            let msg = k.seal(&mut h, 41, inner, &mut SeqRng::new(3));
            assert_eq!(k.open(&msg, HEADER_LEN).unwrap(), inner);
            for i in [0, 20, HEADER_LEN + 5, msg.len() - 1] {
                let mut bad = msg.clone();
                bad[i] ^= 1;
                assert_eq!(
                    k.open(&bad, HEADER_LEN),
                    Err(CryptoError::Integrity),
                    "{encr:?} octet {i}"
                );
            }
        }
    }
}
