//! The receive side of one TWAMP-Control direction, shared by the client
//! and server state machines: octets are buffered as they arrive, the first
//! block of the next message is decrypted once (its octet 0 and, for the N
//! messages, its count tell the length), and a whole message is handed out
//! decrypted and with its HMAC verified (RFC 4656 §3.4 stream, continued).

use crate::control::{self, BLOCK_LEN};
use crate::crypto::{ControlRx, CryptoError};

#[derive(Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    /// The first block of `buf` is already decrypted.
    first_decrypted: bool,
}

impl Inbox {
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.first_decrypted = false;
    }

    /// Takes `n` cleartext octets (the set-up messages), once they are here.
    pub(crate) fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        (self.buf.len() >= n).then(|| self.buf.drain(..n).collect())
    }

    /// The first block of the next message, decrypted (once) when `rx` is
    /// given; `None` until 16 octets are here.
    pub(crate) fn first_block(
        &mut self,
        rx: Option<&mut ControlRx>,
    ) -> Result<Option<[u8; BLOCK_LEN]>, CryptoError> {
        if self.buf.len() < BLOCK_LEN {
            return Ok(None);
        }
        if !self.first_decrypted {
            if let Some(rx) = rx {
                rx.decrypt(&mut self.buf[..BLOCK_LEN])?;
            }
            self.first_decrypted = true;
        }
        let mut first = [0u8; BLOCK_LEN];
        first.copy_from_slice(&self.buf[..BLOCK_LEN]);
        Ok(Some(first))
    }

    /// The whole next message of `len` octets (its first block already read
    /// with [`Self::first_block`]), decrypted and HMAC-verified when `rx` is
    /// given; `None` until all of it is here.
    pub(crate) fn message(
        &mut self,
        len: usize,
        rx: Option<&mut ControlRx>,
    ) -> Result<Option<Vec<u8>>, CryptoError> {
        if self.buf.len() < len {
            return Ok(None);
        }
        if let Some(rx) = rx {
            rx.decrypt(&mut self.buf[BLOCK_LEN..len])?;
            rx.verify(&self.buf[..len], len - control::HMAC_LEN)?;
        }
        self.first_decrypted = false;
        Ok(Some(self.buf.drain(..len).collect()))
    }
}
