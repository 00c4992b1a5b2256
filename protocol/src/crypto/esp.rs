//! ESP with AES-GCM-128 and a 16-octet ICV (RFC 4303 §2, RFC 4106), for
//! carrying test packets through an IPsec SA (RFC 7717 §5.4, RFC 8762 §4.5).
//!
//! Packet (offsets from the ESP header):
//!
//! | Off | Len | Field |
//! |---:|---:|---|
//! | 0 | 4 | SPI |
//! | 4 | 4 | Sequence Number (low 32 bits) |
//! | 8 | 8 | explicit IV |
//! | 16 | n | Payload (encrypted) |
//! | 16+n | p | Padding 1, 2, 3, … (encrypted) |
//! | … | 1 | Pad Length (encrypted) |
//! | … | 1 | Next Header (encrypted) |
//! | … | 16 | ICV (GCM tag) |
//!
//! Nonce = salt (4, from KEYMAT) ‖ IV (8); AAD = SPI ‖ Sequence Number (the
//! 32-bit-SN form; Extended Sequence Numbers are not supported here). The
//! padding makes (payload + padding + 2) a multiple of 4 (RFC 4303 §2.4).
//!
//! SA lookup by SPI and the anti-replay window (RFC 4303 §3.4.3) belong to the
//! caller: look the SA up before [`EspGcm128::open`], update the window only
//! after it succeeds.

use super::CryptoError;
use crate::error::WireError;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce, Tag};
use core::fmt;
use core::ops::Range;

/// SPI + Sequence Number.
pub const ESP_HEADER_LEN: usize = 8;
/// Explicit IV of AES-GCM in ESP (RFC 4106 §3.1).
pub const GCM_IV_LEN: usize = 8;
/// Offset of the payload (first encrypted octet).
pub const PAYLOAD_OFFSET: usize = ESP_HEADER_LEN + GCM_IV_LEN;
/// ICV length (the 16-octet GCM tag every implementation must support).
pub const ICV_LEN: usize = 16;
/// Salt length (RFC 4106 §4).
pub const SALT_LEN: usize = 4;
/// Pad Length + Next Header.
const TRAILER_LEN: usize = 2;
/// Next Header 59: a dummy packet (RFC 4303 §2.6) to drop after decryption.
pub const NEXT_HEADER_DUMMY: u8 = 59;

/// One direction of an ESP SA with AES-GCM-128 (ENCR_AES_GCM_16, key length
/// 128): the expanded key and the salt.
#[derive(Clone)]
pub struct EspGcm128 {
    aead: Aes128Gcm,
    salt: [u8; SALT_LEN],
}

/// The result of [`EspGcm128::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspOpened {
    /// SPI from the header.
    pub spi: u32,
    /// Sequence Number from the header (feed the anti-replay window with it).
    pub seq: u32,
    /// Where the decrypted payload is in the buffer.
    pub payload: Range<usize>,
    /// Next Header (17 = UDP; 59 = dummy packet, drop it).
    pub next_header: u8,
}

impl EspGcm128 {
    /// A cipher from its 16-octet key and 4-octet salt.
    pub fn new(key: &[u8; 16], salt: &[u8; SALT_LEN]) -> Self {
        EspGcm128 {
            aead: Aes128Gcm::new(key.into()),
            salt: *salt,
        }
    }

    /// A cipher from the 20 KEYMAT octets of one direction (key ‖ salt,
    /// RFC 4106 §8.1; see [`crate::crypto::ikev2::child_sa_keymat`]).
    pub fn from_keymat(keymat: &[u8]) -> Result<Self, CryptoError> {
        if keymat.len() != 16 + SALT_LEN {
            return Err(WireError::BadLength {
                what: "ESP AES-GCM-128 KEYMAT",
                len: keymat.len(),
                why: "need 20 octets (16-octet key and 4-octet salt)",
            }
            .into());
        }
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&keymat[..16]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&keymat[16..]);
        Ok(Self::new(&key, &salt))
    }

    /// Padding octets for a payload of `payload_len` octets: the fewest that
    /// make payload + padding + 2 a multiple of 4.
    pub const fn padding_len(payload_len: usize) -> usize {
        (4 - (payload_len % 4 + TRAILER_LEN) % 4) % 4
    }

    /// Total ESP packet length for a payload of `payload_len` octets
    /// (saturating: an absurd length yields `usize::MAX`, which no buffer has).
    pub const fn sealed_len(payload_len: usize) -> usize {
        payload_len
            .saturating_add(PAYLOAD_OFFSET + Self::padding_len(payload_len) + TRAILER_LEN + ICV_LEN)
    }

    fn nonce(&self, iv: &[u8]) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut nonce = Nonce::default();
        nonce[..SALT_LEN].copy_from_slice(&self.salt);
        nonce[SALT_LEN..].copy_from_slice(iv);
        nonce
    }

    /// Seals one ESP packet in place.
    ///
    /// The caller has written the payload (e.g. UDP header + test packet in
    /// transport mode) at `buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload_len]`;
    /// `buf` must hold at least [`sealed_len`](Self::sealed_len) octets. This
    /// writes the header (SPI, `seq`, `iv`), the trailer (padding 1, 2, 3, …,
    /// Pad Length, `next_header`), encrypts, appends the ICV and returns the
    /// packet length. The IV must never repeat under one key (RFC 4106 §3.1);
    /// the 64-bit sequence counter is a good choice.
    pub fn seal(
        &self,
        spi: u32,
        seq: u32,
        iv: &[u8; GCM_IV_LEN],
        next_header: u8,
        payload_len: usize,
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let pad = Self::padding_len(payload_len);
        let total = Self::sealed_len(payload_len);
        WireError::check_len("ESP packet buffer", buf, total)?;
        buf[0..4].copy_from_slice(&spi.to_be_bytes());
        buf[4..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..PAYLOAD_OFFSET].copy_from_slice(iv);
        let trailer = PAYLOAD_OFFSET + payload_len;
        for (i, octet) in buf[trailer..trailer + pad].iter_mut().enumerate() {
            *octet = (i + 1) as u8;
        }
        buf[trailer + pad] = pad as u8;
        buf[trailer + pad + 1] = next_header;
        let icv_at = total - ICV_LEN;
        let nonce = self.nonce(iv);
        let (head, rest) = buf.split_at_mut(PAYLOAD_OFFSET);
        let (plain, icv) = rest.split_at_mut(icv_at - PAYLOAD_OFFSET);
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce, &head[..ESP_HEADER_LEN], plain)
            .map_err(|_| WireError::BadLength {
                what: "ESP payload",
                len: payload_len,
                why: "too long for AES-GCM",
            })?;
        icv[..ICV_LEN].copy_from_slice(&tag);
        Ok(total)
    }

    /// Opens one ESP packet (`pkt` = the whole ESP packet, SPI to ICV) in
    /// place: verifies the ICV over SPI ‖ SN and the ciphertext, decrypts, and
    /// checks the trailer (padding must be 1, 2, 3, …).
    ///
    /// On error the content of `pkt` is unspecified; drop the packet.
    pub fn open(&self, pkt: &mut [u8]) -> Result<EspOpened, CryptoError> {
        WireError::check_len("ESP packet", pkt, PAYLOAD_OFFSET + TRAILER_LEN + ICV_LEN)?;
        let spi = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        let seq = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let nonce = self.nonce(&pkt[ESP_HEADER_LEN..PAYLOAD_OFFSET]);
        let icv_at = pkt.len() - ICV_LEN;
        let (head, rest) = pkt.split_at_mut(PAYLOAD_OFFSET);
        let (cipher, icv) = rest.split_at_mut(icv_at - PAYLOAD_OFFSET);
        let tag = Tag::clone_from_slice(icv);
        self.aead
            .decrypt_in_place_detached(&nonce, &head[..ESP_HEADER_LEN], cipher, &tag)
            .map_err(|_| CryptoError::BadIcv)?;
        let next_header = cipher[cipher.len() - 1];
        let pad = usize::from(cipher[cipher.len() - 2]);
        let payload_len =
            cipher
                .len()
                .checked_sub(TRAILER_LEN + pad)
                .ok_or(CryptoError::BadEspTrailer {
                    why: "Pad Length exceeds the payload",
                })?;
        let padding = &cipher[payload_len..payload_len + pad];
        if padding
            .iter()
            .enumerate()
            .any(|(i, &b)| usize::from(b) != i + 1)
        {
            return Err(CryptoError::BadEspTrailer {
                why: "padding is not 1, 2, 3, …",
            });
        }
        Ok(EspOpened {
            spi,
            seq,
            payload: PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload_len,
            next_header,
        })
    }
}

impl fmt::Debug for EspGcm128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EspGcm128(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rule() {
        for n in 0..64 {
            let p = EspGcm128::padding_len(n);
            assert!(p < 4);
            assert_eq!((n + p + 2) % 4, 0);
        }
        // header + IV, payload, no padding, trailer, ICV
        assert_eq!(EspGcm128::sealed_len(22), 16 + 22 + 2 + 16);
    }

    #[test]
    fn seal_open_with_padding_and_tamper() {
        let esp = EspGcm128::new(&[7; 16], &[1, 2, 3, 4]);
        for len in 0..9 {
            let mut buf = vec![0u8; EspGcm128::sealed_len(len) + 5];
            for (i, b) in buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len]
                .iter_mut()
                .enumerate()
            {
                *b = 0xa0 + i as u8;
            }
            let total = esp
                .seal(0x1234, 9, &[0, 0, 0, 0, 0, 0, 0, 9], 17, len, &mut buf)
                .unwrap();
            let pkt = &mut buf[..total];
            let mut copy = pkt.to_vec();
            let opened = esp.open(pkt).unwrap();
            assert_eq!(
                (opened.spi, opened.seq, opened.next_header),
                (0x1234, 9, 17)
            );
            assert_eq!(opened.payload, PAYLOAD_OFFSET..PAYLOAD_OFFSET + len);
            assert!(pkt[opened.payload]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == 0xa0 + i as u8));
            copy[5] ^= 1; // sequence number is in the AAD
            assert_eq!(esp.open(&mut copy).unwrap_err(), CryptoError::BadIcv);
        }
        let mut short = [0u8; 33];
        assert!(matches!(
            esp.open(&mut short),
            Err(CryptoError::Wire(WireError::Truncated { need: 34, .. }))
        ));
        assert!(esp.seal(1, 1, &[0; 8], 17, 10, &mut [0u8; 43]).is_err());
        assert!(esp
            .seal(1, 1, &[0; 8], 17, usize::MAX, &mut [0u8; 64])
            .is_err());
    }

    #[test]
    fn bad_padding_is_refused_after_a_valid_icv() {
        let esp = EspGcm128::new(&[7; 16], &[1, 2, 3, 4]);
        // Trailers no honest sender builds, but with a valid ICV.
        let mut pkt = [0u8; 16 + 6 + 16];
        // plaintext: payload ee, padding 09 02 03, pad length 3, next header 17
        pkt[16..22].copy_from_slice(&[0xee, 0x09, 0x02, 0x03, 0x03, 0x11]);
        esp_seal_raw(&esp, &mut pkt);
        assert_eq!(
            esp.open(&mut pkt).unwrap_err(),
            CryptoError::BadEspTrailer {
                why: "padding is not 1, 2, 3, …"
            }
        );
        let mut pkt = [0u8; 16 + 2 + 16];
        pkt[16..18].copy_from_slice(&[0x05, 0x11]); // Pad Length 5 > 0 octets available
        esp_seal_raw(&esp, &mut pkt);
        assert_eq!(
            esp.open(&mut pkt).unwrap_err(),
            CryptoError::BadEspTrailer {
                why: "Pad Length exceeds the payload"
            }
        );
    }

    /// Encrypts pkt[16..len-16] as-is (no trailer added) with SPI 1, SN 1, IV 0.
    fn esp_seal_raw(esp: &EspGcm128, pkt: &mut [u8]) {
        pkt[..16].copy_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let icv_at = pkt.len() - ICV_LEN;
        let nonce = esp.nonce(&[0; 8]);
        let (head, rest) = pkt.split_at_mut(PAYLOAD_OFFSET);
        let (plain, icv) = rest.split_at_mut(icv_at - PAYLOAD_OFFSET);
        let tag = esp
            .aead
            .encrypt_in_place_detached(&nonce, &head[..8], plain)
            .unwrap();
        icv.copy_from_slice(&tag);
    }
}
