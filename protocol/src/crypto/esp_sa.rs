//! One direction of an ESP SA with any of the transforms the data plane
//! supports (RFC 4303 §2, §3.3, §3.4; spec `esp.md`):
//!
//! | transform | IKEv2 IDs | IV | ICV | alignment |
//! |---|---|---:|---:|---:|
//! | AES-GCM-16, 128 or 256-bit key (RFC 4106) | ENCR 20, key length 128/256 | 8 | 16 | 4 |
//! | AES-CBC 128/256 + HMAC-SHA-256-128 (RFC 3602, RFC 4868) | ENCR 12 + INTEG 12 | 16 | 16 | 16 |
//!
//! Sequence numbers are 64-bit here; with Extended Sequence Numbers
//! (RFC 4303 §2.2.1) the high half is authenticated but not sent: in the
//! AAD for AES-GCM (SPI ‖ ESN high ‖ ESN low, RFC 4106 §5), appended after
//! the Next Header for the HMAC (RFC 4303 §3.3.2.2). Without ESN the high
//! half must be 0.
//!
//! IVs never repeat under one key and need no randomness:
//! * AES-GCM: the explicit IV is the 64-bit sequence number (RFC 4106 §3.1
//!   allows a counter; each SA has its own counter);
//! * AES-CBC: the IV must be unpredictable (RFC 3602 §2.3); it is the
//!   sequence number encrypted under the SA's cipher key (NIST SP 800-38A
//!   Appendix C, first method: the forward cipher applied to a nonce under
//!   the same key).
//!
//! Per-packet functions do not allocate. The anti-replay window is
//! [`super::esp_replay`].

use super::{as_blocks, keyed_hmac, CryptoError, BLOCK_LEN, HMAC_LEN};
use crate::error::WireError;
use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit, Nonce, Tag};
use core::fmt;
use core::ops::Range;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SPI + Sequence Number.
pub const ESP_HEADER_LEN: usize = 8;
/// ICV length of every supported transform.
pub const ICV_LEN: usize = 16;
/// Pad Length + Next Header.
const TRAILER_LEN: usize = 2;
/// Next Header 59: a dummy packet (RFC 4303 §2.6), dropped after decryption.
pub const NEXT_HEADER_DUMMY: u8 = 59;

/// The transform of an SA and its key material (one direction). Zeroized
/// on drop; `Debug` never shows keys.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub enum EspKeys {
    /// AES-GCM with a 16-octet ICV (ENCR_AES_GCM_16): the key (16 or 32
    /// octets) and the 4-octet salt, i.e. the KEYMAT slice of one direction
    /// (RFC 4106 §8.1).
    AesGcm {
        /// AES key (16 or 32 octets).
        key: Vec<u8>,
        /// Salt (the last 4 KEYMAT octets of the direction).
        salt: [u8; 4],
    },
    /// AES-CBC (16 or 32-octet key) with HMAC-SHA-256-128 (32-octet key).
    AesCbcHmacSha256 {
        /// AES key (16 or 32 octets).
        enc_key: Vec<u8>,
        /// HMAC-SHA-256 key (32 octets, RFC 4868 §2.1.1).
        auth_key: Vec<u8>,
    },
}

impl fmt::Debug for EspKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EspKeys::AesGcm { key, .. } => write!(f, "AesGcm{}(<redacted>)", key.len() * 8),
            EspKeys::AesCbcHmacSha256 { enc_key, .. } => {
                write!(f, "AesCbc{}HmacSha256(<redacted>)", enc_key.len() * 8)
            }
        }
    }
}

impl EspKeys {
    /// AES-GCM keys from the 20 or 36 KEYMAT octets of one direction
    /// (key ‖ salt).
    pub fn gcm_from_keymat(keymat: &[u8]) -> Result<EspKeys, CryptoError> {
        let key_len = match keymat.len() {
            20 => 16,
            36 => 32,
            len => {
                return Err(WireError::BadLength {
                    what: "ESP AES-GCM KEYMAT",
                    len,
                    why: "need 20 (AES-128) or 36 (AES-256) octets: key then 4-octet salt",
                }
                .into())
            }
        };
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&keymat[key_len..]);
        Ok(EspKeys::AesGcm {
            key: keymat[..key_len].to_vec(),
            salt,
        })
    }

    /// The IKEv2 transform name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            EspKeys::AesGcm { key, .. } if key.len() == 16 => "aes128gcm16",
            EspKeys::AesGcm { .. } => "aes256gcm16",
            EspKeys::AesCbcHmacSha256 { enc_key, .. } if enc_key.len() == 16 => "aes128-sha256",
            EspKeys::AesCbcHmacSha256 { .. } => "aes256-sha256",
        }
    }
}

enum Cipher {
    Gcm128(Aes128Gcm),
    Gcm256(Aes256Gcm),
    Cbc128(aes::Aes128, Hmac<Sha256>),
    Cbc256(aes::Aes256, Hmac<Sha256>),
}

/// One direction of an SA, keyed once (key schedules precomputed).
pub struct EspCipher {
    cipher: Cipher,
    salt: [u8; 4],
}

impl fmt::Debug for EspCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EspCipher(<redacted>)")
    }
}

/// The result of [`EspCipher::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspOpenedSa {
    /// SPI from the header.
    pub spi: u32,
    /// The 64-bit sequence number that authenticated (the high half is the
    /// caller's inference with ESN, 0 without).
    pub seq: u64,
    /// Where the decrypted payload is in the buffer.
    pub payload: Range<usize>,
    /// Next Header (17 UDP, 4 IPv4, 41 IPv6, 59 dummy).
    pub next_header: u8,
}

fn bad_key(what: &'static str, len: usize) -> CryptoError {
    WireError::BadLength {
        what,
        len,
        why: "AES keys are 16 or 32 octets here",
    }
    .into()
}

/// Encrypt-then-MAC (RFC 4303 §3.3.2): IV = E_K(0⁶⁴ ‖ seq), CBC over the
/// padded plaintext, HMAC-SHA-256-128 over SPI..ciphertext (‖ ESN high).
/// A macro because the AES-128 and AES-256 types share no handy trait
/// bound for `cbc`.
macro_rules! cbc_seal {
    ($aes:expr, $mac:expr, $seq:expr, $hi:expr, $po:expr, $icv_at:expr, $buf:expr) => {{
        let (aes, buf, po, icv_at) = ($aes, $buf, $po, $icv_at);
        let mut iv = aes::Block::default();
        iv[8..].copy_from_slice(&$seq.to_be_bytes());
        aes.encrypt_block(&mut iv);
        buf[8..8 + BLOCK_LEN].copy_from_slice(&iv);
        let mut enc = cbc::Encryptor::inner_iv_init(aes, &iv);
        for block in as_blocks(&mut buf[po..icv_at]) {
            enc.encrypt_block_mut(block);
        }
        let mut m = $mac.clone();
        m.update(&buf[..icv_at]);
        if let Some(hi) = $hi {
            m.update(&hi);
        }
        let tag = m.finalize().into_bytes();
        buf[icv_at..icv_at + HMAC_LEN].copy_from_slice(&tag[..HMAC_LEN]);
    }};
}

/// Verify (constant time, before decrypting: RFC 4303 §3.4.4.1), then
/// CBC-decrypt in place.
macro_rules! cbc_open {
    ($aes:expr, $mac:expr, $hi:expr, $po:expr, $icv_at:expr, $pkt:expr) => {{
        let (aes, pkt, po, icv_at) = ($aes, $pkt, $po, $icv_at);
        let mut m = $mac.clone();
        m.update(&pkt[..icv_at]);
        if let Some(hi) = $hi {
            m.update(&hi);
        }
        m.verify_truncated_left(&pkt[icv_at..icv_at + HMAC_LEN])
            .map_err(|_| CryptoError::BadIcv)?;
        if (icv_at - po) % BLOCK_LEN != 0 {
            return Err(CryptoError::BadEspTrailer {
                why: "ciphertext is not a whole number of AES blocks",
            });
        }
        let iv = aes::Block::clone_from_slice(&pkt[8..8 + BLOCK_LEN]); // public
        let mut dec = cbc::Decryptor::inner_iv_init(aes, &iv);
        for block in as_blocks(&mut pkt[po..icv_at]) {
            dec.decrypt_block_mut(block);
        }
    }};
}

impl EspCipher {
    /// Keys the transform.
    pub fn new(keys: &EspKeys) -> Result<EspCipher, CryptoError> {
        Ok(match keys {
            EspKeys::AesGcm { key, salt } => EspCipher {
                cipher: match key.len() {
                    16 => Cipher::Gcm128(
                        Aes128Gcm::new_from_slice(key)
                            .map_err(|_| bad_key("ESP AES-GCM key", key.len()))?,
                    ),
                    32 => Cipher::Gcm256(
                        Aes256Gcm::new_from_slice(key)
                            .map_err(|_| bad_key("ESP AES-GCM key", key.len()))?,
                    ),
                    n => return Err(bad_key("ESP AES-GCM key", n)),
                },
                salt: *salt,
            },
            EspKeys::AesCbcHmacSha256 { enc_key, auth_key } => {
                if auth_key.len() != 32 {
                    return Err(WireError::BadLength {
                        what: "ESP HMAC-SHA-256-128 key",
                        len: auth_key.len(),
                        why: "need 32 octets (RFC 4868 §2.1.1)",
                    }
                    .into());
                }
                let mac = keyed_hmac::<Hmac<Sha256>>(auth_key);
                EspCipher {
                    cipher: match enc_key.len() {
                        16 => Cipher::Cbc128(
                            aes::Aes128::new_from_slice(enc_key)
                                .map_err(|_| bad_key("ESP AES-CBC key", 16))?,
                            mac,
                        ),
                        32 => Cipher::Cbc256(
                            aes::Aes256::new_from_slice(enc_key)
                                .map_err(|_| bad_key("ESP AES-CBC key", 32))?,
                            mac,
                        ),
                        n => return Err(bad_key("ESP AES-CBC key", n)),
                    },
                    salt: [0; 4],
                }
            }
        })
    }

    /// Octets of the explicit IV on the wire: 8 (GCM) or 16 (CBC).
    pub fn iv_len(&self) -> usize {
        match self.cipher {
            Cipher::Gcm128(_) | Cipher::Gcm256(_) => 8,
            Cipher::Cbc128(..) | Cipher::Cbc256(..) => BLOCK_LEN,
        }
    }

    /// Offset of the payload (first encrypted octet) from the SPI.
    pub fn payload_offset(&self) -> usize {
        ESP_HEADER_LEN + self.iv_len()
    }

    fn align(&self) -> usize {
        match self.cipher {
            Cipher::Gcm128(_) | Cipher::Gcm256(_) => 4,
            Cipher::Cbc128(..) | Cipher::Cbc256(..) => BLOCK_LEN,
        }
    }

    /// Padding octets for a payload of `payload_len`: the fewest that make
    /// payload + padding + 2 a multiple of the alignment (4, or the CBC
    /// block size).
    pub fn padding_len(&self, payload_len: usize) -> usize {
        let a = self.align();
        (a - (payload_len % a + TRAILER_LEN) % a) % a
    }

    /// The whole ESP packet length (SPI to ICV) for `payload_len`
    /// (saturating).
    pub fn sealed_len(&self, payload_len: usize) -> usize {
        payload_len.saturating_add(
            self.payload_offset() + self.padding_len(payload_len) + TRAILER_LEN + ICV_LEN,
        )
    }

    /// ESP overhead on top of the payload at most (header, IV, longest
    /// padding, trailer, ICV).
    pub fn max_overhead(&self) -> usize {
        self.payload_offset() + self.align() - 1 + TRAILER_LEN + ICV_LEN
    }

    fn gcm_nonce(&self, iv: &[u8]) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut nonce = Nonce::default();
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(iv);
        nonce
    }

    /// Seals one ESP packet in place. The caller wrote the payload at
    /// `buf[payload_offset()..][..payload_len]`; `buf` holds at least
    /// [`sealed_len`](Self::sealed_len) octets. Writes SPI, the low 32 bits
    /// of `seq`, the IV derived from `seq`, the RFC 4303 trailer (padding
    /// 1, 2, 3, …), encrypts and appends the ICV; returns the length.
    ///
    /// `seq` must be unique per SA (the caller's counter, from 1); with
    /// `esn` its high half is authenticated, without it must be < 2^32.
    pub fn seal(
        &self,
        spi: u32,
        seq: u64,
        esn: bool,
        next_header: u8,
        payload_len: usize,
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        if !esn && seq > u64::from(u32::MAX) {
            return Err(CryptoError::EspSequenceExhausted);
        }
        let pad = self.padding_len(payload_len);
        let total = self.sealed_len(payload_len);
        WireError::check_len("ESP packet buffer", buf, total)?;
        let po = self.payload_offset();
        buf[0..4].copy_from_slice(&spi.to_be_bytes());
        buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        let trailer = po + payload_len;
        for (i, octet) in buf[trailer..trailer + pad].iter_mut().enumerate() {
            *octet = (i + 1) as u8;
        }
        buf[trailer + pad] = pad as u8;
        buf[trailer + pad + 1] = next_header;
        let icv_at = total - ICV_LEN;
        let seq_hi = ((seq >> 32) as u32).to_be_bytes();
        match &self.cipher {
            Cipher::Gcm128(_) | Cipher::Gcm256(_) => {
                buf[8..16].copy_from_slice(&seq.to_be_bytes());
                let nonce = self.gcm_nonce(&buf[8..16]);
                let mut aad = [0u8; 12];
                let aad = gcm_aad(&mut aad, &buf[..8], esn.then_some(seq_hi));
                let (head, rest) = buf.split_at_mut(po);
                let _ = head;
                let (plain, icv) = rest.split_at_mut(icv_at - po);
                let tag = match &self.cipher {
                    Cipher::Gcm128(c) => c.encrypt_in_place_detached(&nonce, aad, plain),
                    Cipher::Gcm256(c) => c.encrypt_in_place_detached(&nonce, aad, plain),
                    _ => unreachable!("matched GCM above"),
                }
                .map_err(|_| WireError::BadLength {
                    what: "ESP payload",
                    len: payload_len,
                    why: "too long for AES-GCM",
                })?;
                icv[..ICV_LEN].copy_from_slice(&tag);
            }
            Cipher::Cbc128(aes, mac) => {
                cbc_seal!(aes, mac, seq, esn.then_some(seq_hi), po, icv_at, &mut *buf)
            }
            Cipher::Cbc256(aes, mac) => {
                cbc_seal!(aes, mac, seq, esn.then_some(seq_hi), po, icv_at, &mut *buf)
            }
        }
        Ok(total)
    }

    /// Opens one ESP packet (`pkt` = SPI to ICV) in place: verifies the ICV
    /// (over SPI ‖ SN ‖ IV ‖ ciphertext, with `seq_high` as the inferred
    /// ESN high half when ESN is on), decrypts and checks the trailer
    /// (padding 1, 2, 3, …). On error the content of `pkt` is unspecified.
    pub fn open(&self, pkt: &mut [u8], seq_high: Option<u32>) -> Result<EspOpenedSa, CryptoError> {
        let po = self.payload_offset();
        WireError::check_len("ESP packet", pkt, po + TRAILER_LEN + ICV_LEN)?;
        let spi = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        let seq_low = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let seq = (u64::from(seq_high.unwrap_or(0)) << 32) | u64::from(seq_low);
        let hi = seq_high.map(u32::to_be_bytes);
        let icv_at = pkt.len() - ICV_LEN;
        match &self.cipher {
            Cipher::Gcm128(_) | Cipher::Gcm256(_) => {
                let nonce = self.gcm_nonce(&pkt[8..16]);
                let mut aad = [0u8; 12];
                let aad = gcm_aad(&mut aad, &pkt[..8], hi);
                let (_, rest) = pkt.split_at_mut(po);
                let (cipher, icv) = rest.split_at_mut(icv_at - po);
                let tag = Tag::clone_from_slice(icv);
                match &self.cipher {
                    Cipher::Gcm128(c) => c.decrypt_in_place_detached(&nonce, aad, cipher, &tag),
                    Cipher::Gcm256(c) => c.decrypt_in_place_detached(&nonce, aad, cipher, &tag),
                    _ => unreachable!("matched GCM above"),
                }
                .map_err(|_| CryptoError::BadIcv)?;
            }
            Cipher::Cbc128(aes, mac) => cbc_open!(aes, mac, hi, po, icv_at, &mut *pkt),
            Cipher::Cbc256(aes, mac) => cbc_open!(aes, mac, hi, po, icv_at, &mut *pkt),
        }
        let plain = &pkt[po..icv_at];
        let next_header = plain[plain.len() - 1];
        let pad = usize::from(plain[plain.len() - 2]);
        let payload_len =
            plain
                .len()
                .checked_sub(TRAILER_LEN + pad)
                .ok_or(CryptoError::BadEspTrailer {
                    why: "Pad Length exceeds the payload",
                })?;
        if plain[payload_len..payload_len + pad]
            .iter()
            .enumerate()
            .any(|(i, &b)| usize::from(b) != i + 1)
        {
            return Err(CryptoError::BadEspTrailer {
                why: "padding is not 1, 2, 3, …",
            });
        }
        Ok(EspOpenedSa {
            spi,
            seq,
            payload: po..po + payload_len,
            next_header,
        })
    }
}

/// SPI ‖ SN (8 octets) or SPI ‖ ESN high ‖ ESN low (12 octets), RFC 4106 §5.
fn gcm_aad<'a>(aad: &'a mut [u8; 12], head: &[u8], hi: Option<[u8; 4]>) -> &'a [u8] {
    aad[..4].copy_from_slice(&head[..4]);
    match hi {
        None => {
            aad[4..8].copy_from_slice(&head[4..8]);
            &aad[..8]
        }
        Some(hi) => {
            aad[4..8].copy_from_slice(&hi);
            aad[8..12].copy_from_slice(&head[4..8]);
            &aad[..12]
        }
    }
}
