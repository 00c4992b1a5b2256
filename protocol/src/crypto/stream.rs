//! TWAMP-Control (and OWAMP-Control) protection: one AES-128-CBC stream and
//! one running HMAC-SHA1 per direction (RFC 4656 §3.4, RFC 5357 §3.2).
//!
//! * **Encryption** (RFC 4656 §3.4): AES-128-CBC with the AES Session-Key.
//!   The IV is Client-IV (client → server) or Server-IV (server → client) for
//!   the *first* block only; every later block, across messages, chains from
//!   the previous ciphertext block of that direction. The server's stream
//!   starts with the Start-Time block of Server-Start (octets 32–47); the
//!   client's with its first command after Set-Up-Response.
//! * **HMAC**: HMAC-SHA1 keyed with the 32-octet HMAC Session-Key, truncated
//!   to 16 octets, computed over plaintext and then encrypted with the rest
//!   of the message. Each HMAC covers everything sent in its direction since
//!   the previous HMAC field, so the server's first HMAC (in the first
//!   Accept-Session) covers the Start-Time block followed by the
//!   Accept-Session's first 32 octets (spec pitfall 1).
//!
//! [`ControlTx`] protects what we send, [`ControlRx`] checks what we receive.
//! After any error the connection must be closed (RFC 4656 §3.4: a failed
//! HMAC check drops the connection); the stream state is then unspecified.

use super::{as_blocks, check_blocks, keyed_hmac, CryptoError, SessionKeys, BLOCK_LEN, HMAC_LEN};
use crate::error::WireError;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes::{Aes128Dec, Aes128Enc};
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// A running HMAC-SHA1-128 over the plaintext of one direction.
#[derive(Clone)]
struct RunningMac {
    /// The keyed initial state, cloned at every reset.
    keyed: HmacSha1,
    /// Everything absorbed since the last HMAC field.
    running: HmacSha1,
}

impl RunningMac {
    fn new(keys: &SessionKeys) -> Self {
        let keyed: HmacSha1 = keyed_hmac(&keys.hmac);
        RunningMac {
            running: keyed.clone(),
            keyed,
        }
    }

    fn absorb(&mut self, plain: &[u8]) {
        self.running.update(plain);
    }

    /// Takes the running state, leaving a fresh keyed one behind.
    fn take(&mut self) -> HmacSha1 {
        core::mem::replace(&mut self.running, self.keyed.clone())
    }
}

/// Checks that `msg` is whole blocks and holds an HMAC field at `hmac_at`.
fn check_msg(what: &'static str, msg: &[u8], hmac_at: usize) -> Result<(), WireError> {
    check_blocks(what, msg.len())?;
    WireError::check_len(what, msg, hmac_at.saturating_add(HMAC_LEN))
}

/// The sending half of a protected control connection.
pub struct ControlTx {
    cbc: cbc::Encryptor<Aes128Enc>,
    mac: RunningMac,
}

impl ControlTx {
    /// Starts the stream with our IV (Server-IV for a server, Client-IV for a
    /// client) and the session keys from the Token.
    pub fn new(keys: &SessionKeys, iv: &[u8; BLOCK_LEN]) -> Self {
        ControlTx {
            cbc: cbc::Encryptor::new(&keys.aes.into(), iv.into()),
            mac: RunningMac::new(keys),
        }
    }

    /// Feeds plaintext that carries no HMAC of its own into the running HMAC,
    /// so the next HMAC field covers it. Does not encrypt.
    pub fn absorb(&mut self, plain: &[u8]) {
        self.mac.absorb(plain);
    }

    /// Encrypts whole blocks in place, continuing the CBC chain. Does not
    /// touch the HMAC.
    pub fn encrypt(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        check_blocks("control stream", buf.len())?;
        for block in as_blocks(buf) {
            self.cbc.encrypt_block_mut(block);
        }
        Ok(())
    }

    /// Absorbs then encrypts plaintext that has no HMAC field of its own:
    /// the server's Start-Time block (Server-Start octets 32–47), which the
    /// first Accept-Session HMAC covers.
    pub fn seal_without_hmac(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        check_blocks("control stream", buf.len())?;
        self.absorb(buf);
        self.encrypt(buf)
    }

    /// Protects one whole message in place: feeds `msg[..hmac_at]` into the
    /// running HMAC, writes the truncated HMAC at `hmac_at`, restarts the HMAC
    /// (octets after the HMAC field, if any, start the next coverage), then
    /// encrypts the whole message, HMAC included.
    ///
    /// `msg` must be whole blocks with room for the 16-octet HMAC at `hmac_at`.
    pub fn seal(&mut self, msg: &mut [u8], hmac_at: usize) -> Result<(), CryptoError> {
        check_msg("control message", msg, hmac_at)?;
        self.mac.absorb(&msg[..hmac_at]);
        let tag = self.mac.take().finalize().into_bytes();
        msg[hmac_at..hmac_at + HMAC_LEN].copy_from_slice(&tag[..HMAC_LEN]);
        self.mac.absorb(&msg[hmac_at + HMAC_LEN..]);
        self.encrypt(msg)
    }
}

/// The receiving half of a protected control connection.
///
/// A receiver learns a message's length from its first block, so decryption
/// works block by block: call [`decrypt`](Self::decrypt) on the first block,
/// then on the rest, then [`verify`](Self::verify) on the whole plaintext.
pub struct ControlRx {
    cbc: cbc::Decryptor<Aes128Dec>,
    mac: RunningMac,
}

impl ControlRx {
    /// Starts the stream with the peer's IV (Client-IV on a server, Server-IV
    /// on a client) and the session keys from the Token.
    pub fn new(keys: &SessionKeys, iv: &[u8; BLOCK_LEN]) -> Self {
        ControlRx {
            cbc: cbc::Decryptor::new(&keys.aes.into(), iv.into()),
            mac: RunningMac::new(keys),
        }
    }

    /// Decrypts whole blocks in place, continuing the CBC chain. Does not
    /// touch the HMAC.
    pub fn decrypt(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        check_blocks("control stream", buf.len())?;
        for block in as_blocks(buf) {
            self.cbc.decrypt_block_mut(block);
        }
        Ok(())
    }

    /// Feeds received plaintext that carries no HMAC of its own into the
    /// running HMAC (a client does this with the decrypted Start-Time block).
    pub fn absorb(&mut self, plain: &[u8]) {
        self.mac.absorb(plain);
    }

    /// Decrypts then absorbs plaintext that has no HMAC field of its own
    /// (the Start-Time block of Server-Start, on the client).
    pub fn open_without_hmac(&mut self, buf: &mut [u8]) -> Result<(), CryptoError> {
        self.decrypt(buf)?;
        self.absorb(buf);
        Ok(())
    }

    /// Checks the HMAC of one decrypted message: feeds `msg[..hmac_at]` into
    /// the running HMAC and compares, in constant time, the result with the
    /// 16 octets at `hmac_at`; then restarts the HMAC (octets after the field
    /// start the next coverage).
    pub fn verify(&mut self, msg: &[u8], hmac_at: usize) -> Result<(), CryptoError> {
        WireError::check_len("control message", msg, hmac_at.saturating_add(HMAC_LEN))?;
        self.mac.absorb(&msg[..hmac_at]);
        let result = self
            .mac
            .take()
            .verify_truncated_left(&msg[hmac_at..hmac_at + HMAC_LEN])
            .map_err(|_| CryptoError::BadHmac {
                what: "control message",
            });
        self.mac.absorb(&msg[hmac_at + HMAC_LEN..]);
        result
    }

    /// Decrypts one whole message in place and verifies its HMAC at `hmac_at`
    /// (for callers that already hold the whole message).
    pub fn open(&mut self, msg: &mut [u8], hmac_at: usize) -> Result<(), CryptoError> {
        check_msg("control message", msg, hmac_at)?;
        self.decrypt(msg)?;
        self.verify(msg, hmac_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            aes: [3; 16],
            hmac: [4; 32],
        }
    }

    #[test]
    fn shape_errors() {
        let mut tx = ControlTx::new(&keys(), &[0; 16]);
        assert!(matches!(
            tx.encrypt(&mut [0; 15]),
            Err(CryptoError::Wire(WireError::BadLength { len: 15, .. }))
        ));
        assert!(matches!(
            tx.seal(&mut [0; 32], 17),
            Err(CryptoError::Wire(WireError::Truncated {
                need: 33,
                have: 32,
                ..
            }))
        ));
        assert!(matches!(
            tx.seal(&mut [0; 32], usize::MAX),
            Err(CryptoError::Wire(WireError::Truncated { .. }))
        ));
        let mut rx = ControlRx::new(&keys(), &[0; 16]);
        assert!(matches!(
            rx.verify(&[0; 20], 8),
            Err(CryptoError::Wire(WireError::Truncated { need: 24, .. }))
        ));
    }

    #[test]
    fn stream_round_trip_block_by_block_and_tamper() {
        let iv = [9; 16];
        let mut tx = ControlTx::new(&keys(), &iv);
        let mut rx = ControlRx::new(&keys(), &iv);
        let mut first = [0x11u8; 16];
        tx.seal_without_hmac(&mut first).unwrap();
        let mut m1 = [0x22u8; 48];
        tx.seal(&mut m1, 32).unwrap();
        let mut m2 = [0x33u8; 32];
        tx.seal(&mut m2, 16).unwrap();

        rx.open_without_hmac(&mut first).unwrap();
        assert_eq!(first, [0x11; 16]);
        // First block alone, then the rest, as a real receiver does.
        let (head, rest) = m1.split_at_mut(16);
        rx.decrypt(head).unwrap();
        rx.decrypt(rest).unwrap();
        assert_eq!(&m1[..32], &[0x22; 32]);
        rx.verify(&m1, 32).unwrap();
        let mut bad = m2;
        rx.decrypt(&mut bad).unwrap();
        bad[3] ^= 0x80;
        assert_eq!(
            rx.verify(&bad, 16).unwrap_err(),
            CryptoError::BadHmac {
                what: "control message"
            }
        );
    }
}
