//! Set-Up-Response (RFC 4656 §3.1, used by RFC 5357 §3.1): 164 octets,
//! client to server, in clear.
//!
//! ```text
//!   0..4    Mode (chosen modes; 0 = the client quits)
//!   4..84   KeyID (UTF-8, NUL-padded; RFC 7717: SPIi ‖ SPIr ‖ zeros)
//!  84..148  Token (AES-CBC of Challenge ‖ AES key ‖ HMAC key)
//! 148..164  Client-IV
//! ```
//!
//! In unauthenticated mode KeyID, Token and Client-IV are unused (perfSONAR
//! sends zeros). RFC 7717 §5 draws a 16-octet Token and 12-octet Client-IV in
//! its figure; that figure is wrong and the 164-octet layout is kept.

use crate::control::{array, be_u32, fixed_packet, fixed_repr_helpers, Field};
use crate::error::WireError;
use crate::modes::Modes;

/// Message length.
pub const LEN: usize = 164;
/// Length of the KeyID field.
pub const KEY_ID_LEN: usize = 80;
/// Length of the Token field.
pub const TOKEN_LEN: usize = 64;

/// Field offsets.
pub mod field {
    use super::Field;
    pub const MODE: Field = 0..4;
    pub const KEY_ID: Field = 4..84;
    pub const TOKEN: Field = 84..148;
    pub const CLIENT_IV: Field = 148..164;
}

fixed_packet!(
    /// A zero-copy view of a Set-Up-Response.
    SetUpResponsePacket,
    "Set-Up-Response",
    LEN
);

impl<T: AsRef<[u8]>> SetUpResponsePacket<T> {
    /// The chosen mode.
    pub fn mode(&self) -> Modes {
        Modes(be_u32(&self.b()[field::MODE]))
    }
    /// The KeyID field.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        array(&self.b()[field::KEY_ID])
    }
    /// The encrypted token.
    pub fn token(&self) -> [u8; TOKEN_LEN] {
        array(&self.b()[field::TOKEN])
    }
    /// The IV of the client-to-server AES-CBC stream.
    pub fn client_iv(&self) -> [u8; 16] {
        array(&self.b()[field::CLIENT_IV])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SetUpResponsePacket<T> {
    /// Sets mode.
    pub fn set_mode(&mut self, v: Modes) {
        self.b_mut()[field::MODE].copy_from_slice(&v.0.to_be_bytes());
    }
    /// Sets key id.
    pub fn set_key_id(&mut self, v: &[u8; KEY_ID_LEN]) {
        self.b_mut()[field::KEY_ID].copy_from_slice(v);
    }
    /// Sets token.
    pub fn set_token(&mut self, v: &[u8; TOKEN_LEN]) {
        self.b_mut()[field::TOKEN].copy_from_slice(v);
    }
    /// Sets client iv.
    pub fn set_client_iv(&mut self, v: [u8; 16]) {
        self.b_mut()[field::CLIENT_IV].copy_from_slice(&v);
    }
}

/// A parsed Set-Up-Response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetUpResponseRepr {
    /// The chosen mode (checked against the offer by [`crate::modes::select`]).
    pub mode: Modes,
    /// The KeyID, as on the wire.
    pub key_id: [u8; KEY_ID_LEN],
    /// The token ciphertext (public: it is sent in clear).
    pub token: [u8; TOKEN_LEN],
    /// The client-to-server IV.
    pub client_iv: [u8; 16],
}

impl SetUpResponseRepr {
    /// Parses a Set-Up-Response. Any Mode value parses; judge it with
    /// [`crate::modes::select`].
    pub fn parse<T: AsRef<[u8]>>(packet: &SetUpResponsePacket<T>) -> Result<Self, WireError> {
        Ok(SetUpResponseRepr {
            mode: packet.mode(),
            key_id: packet.key_id(),
            token: packet.token(),
            client_iv: packet.client_iv(),
        })
    }

    /// Writes the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut SetUpResponsePacket<T>) {
        packet.set_mode(self.mode);
        packet.set_key_id(&self.key_id);
        packet.set_token(&self.token);
        packet.set_client_iv(self.client_iv);
    }

    /// A KeyID field holding `name` padded with NULs (RFC 4656 §3.1: "UTF-8
    /// string, up to 80 octets"). Names longer than 80 octets or containing
    /// NUL cannot be represented.
    pub fn key_id_from_name(name: &[u8]) -> Result<[u8; KEY_ID_LEN], WireError> {
        if name.len() > KEY_ID_LEN {
            return Err(WireError::BadLength {
                what: "Set-Up-Response",
                len: name.len(),
                why: "KeyID is longer than 80 octets",
            });
        }
        if name.contains(&0) {
            return Err(WireError::BadField {
                what: "Set-Up-Response",
                field: "KeyID",
                value: 0,
            });
        }
        let mut k = [0u8; KEY_ID_LEN];
        k[..name.len()].copy_from_slice(name);
        Ok(k)
    }

    /// The KeyID as a name: the octets before the first NUL. (For RFC 7717
    /// the KeyID is binary SPIi ‖ SPIr: read [`Self::key_id`] directly.)
    pub fn key_id_name(&self) -> &[u8] {
        let end = self
            .key_id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(KEY_ID_LEN);
        &self.key_id[..end]
    }
}

fixed_repr_helpers!(SetUpResponseRepr, SetUpResponsePacket, LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_names() {
        let k = SetUpResponseRepr::key_id_from_name(b"interop").unwrap();
        assert_eq!(&k[..7], b"interop");
        assert!(k[7..].iter().all(|&b| b == 0));
        let r = SetUpResponseRepr {
            mode: Modes::AUTHENTICATED,
            key_id: k,
            token: [0; 64],
            client_iv: [0; 16],
        };
        assert_eq!(r.key_id_name(), b"interop");
        assert!(SetUpResponseRepr::key_id_from_name(&[b'a'; 81]).is_err());
        assert!(SetUpResponseRepr::key_id_from_name(b"a\0b").is_err());
        let full = SetUpResponseRepr::key_id_from_name(&[b'a'; 80]).unwrap();
        assert_eq!(
            SetUpResponseRepr { key_id: full, ..r }.key_id_name(),
            &[b'a'; 80]
        );
    }
}
