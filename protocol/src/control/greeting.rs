//! Server Greeting (RFC 4656 §3.1, used by RFC 5357 §3.1): 64 octets,
//! server to client, always in clear.
//!
//! ```text
//!  0..12  Unused (sent as zero; kept: a draft-era RFC 7717 probe fills it)
//! 12..16  Modes
//! 16..32  Challenge
//! 32..48  Salt
//! 48..52  Count
//! 52..64  MBZ
//! ```

use crate::control::{array, be_u32, fixed_packet, fixed_repr_helpers, Field};
use crate::error::WireError;
use crate::modes::Modes;

/// Message length.
pub const LEN: usize = 64;
/// Smallest PBKDF2 iteration count a server may send (RFC 4656 §3.1).
pub const MIN_COUNT: u32 = 1024;
/// Default largest Count a client accepts (RFC 5357 §3.1 / §6: 32768).
pub const DEFAULT_MAX_COUNT: u32 = 32768;

/// Field offsets.
pub mod field {
    use super::Field;
    pub const UNUSED: Field = 0..12;
    pub const MODES: Field = 12..16;
    pub const CHALLENGE: Field = 16..32;
    pub const SALT: Field = 32..48;
    pub const COUNT: Field = 48..52;
    pub const MBZ: Field = 52..64;
}

fixed_packet!(
    /// A zero-copy view of a Server Greeting.
    ServerGreetingPacket,
    "Server-Greeting",
    LEN
);

impl<T: AsRef<[u8]>> ServerGreetingPacket<T> {
    /// The 12 Unused octets.
    pub fn unused(&self) -> [u8; 12] {
        array(&self.b()[field::UNUSED])
    }
    /// The offered modes.
    pub fn modes(&self) -> Modes {
        Modes(be_u32(&self.b()[field::MODES]))
    }
    /// The challenge.
    pub fn challenge(&self) -> [u8; 16] {
        array(&self.b()[field::CHALLENGE])
    }
    /// The PBKDF2 salt.
    pub fn salt(&self) -> [u8; 16] {
        array(&self.b()[field::SALT])
    }
    /// The PBKDF2 iteration count.
    pub fn count(&self) -> u32 {
        be_u32(&self.b()[field::COUNT])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ServerGreetingPacket<T> {
    /// Sets unused.
    pub fn set_unused(&mut self, v: [u8; 12]) {
        self.b_mut()[field::UNUSED].copy_from_slice(&v);
    }
    /// Sets modes.
    pub fn set_modes(&mut self, v: Modes) {
        self.b_mut()[field::MODES].copy_from_slice(&v.0.to_be_bytes());
    }
    /// Sets challenge.
    pub fn set_challenge(&mut self, v: [u8; 16]) {
        self.b_mut()[field::CHALLENGE].copy_from_slice(&v);
    }
    /// Sets salt.
    pub fn set_salt(&mut self, v: [u8; 16]) {
        self.b_mut()[field::SALT].copy_from_slice(&v);
    }
    /// Sets count.
    pub fn set_count(&mut self, v: u32) {
        self.b_mut()[field::COUNT].copy_from_slice(&v.to_be_bytes());
    }
    /// Zeroes the MBZ octets.
    pub fn clear_mbz(&mut self) {
        self.b_mut()[field::MBZ].fill(0);
    }
}

/// A parsed Server Greeting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerGreetingRepr {
    /// Octets 0–11, zero from an RFC 4656/5357 server. Kept as received.
    pub unused: [u8; 12],
    /// The modes the server offers; 0 means the server refuses service.
    pub modes: Modes,
    /// Random challenge, echoed in the token.
    pub challenge: [u8; 16],
    /// PBKDF2 salt.
    pub salt: [u8; 16],
    /// PBKDF2 iteration count.
    pub count: u32,
}

impl ServerGreetingRepr {
    /// Parses a greeting (any field values: a Modes of 0 or an odd Count are
    /// for the client to judge, see [`Self::check_count`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &ServerGreetingPacket<T>) -> Result<Self, WireError> {
        Ok(ServerGreetingRepr {
            unused: packet.unused(),
            modes: packet.modes(),
            challenge: packet.challenge(),
            salt: packet.salt(),
            count: packet.count(),
        })
    }

    /// Writes the greeting, MBZ octets zeroed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ServerGreetingPacket<T>) {
        packet.set_unused(self.unused);
        packet.set_modes(self.modes);
        packet.set_challenge(self.challenge);
        packet.set_salt(self.salt);
        packet.set_count(self.count);
        packet.clear_mbz();
    }

    /// Client-side check of Count: a power of 2, at least 1024 (RFC 4656
    /// §3.1) and at most `max_count` (RFC 5357 §3.1: a client SHOULD close
    /// when Count exceeds its configured maximum, default
    /// [`DEFAULT_MAX_COUNT`]; this bounds the PBKDF2 work a server can ask for).
    pub fn check_count(&self, max_count: u32) -> Result<(), WireError> {
        if self.count < MIN_COUNT || !self.count.is_power_of_two() || self.count > max_count {
            return Err(WireError::BadField {
                what: "Server-Greeting",
                field: "Count",
                value: self.count.into(),
            });
        }
        Ok(())
    }
}

fixed_repr_helpers!(ServerGreetingRepr, ServerGreetingPacket, LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(count: u32) -> ServerGreetingRepr {
        ServerGreetingRepr {
            unused: [0; 12],
            modes: Modes(0xf),
            challenge: [1; 16],
            salt: [2; 16],
            count,
        }
    }

    #[test]
    fn count_bounds() {
        assert!(greeting(1024).check_count(DEFAULT_MAX_COUNT).is_ok());
        assert!(greeting(2048).check_count(DEFAULT_MAX_COUNT).is_ok());
        assert!(greeting(32768).check_count(DEFAULT_MAX_COUNT).is_ok());
        assert!(greeting(65536).check_count(DEFAULT_MAX_COUNT).is_err());
        assert!(greeting(512).check_count(DEFAULT_MAX_COUNT).is_err());
        assert!(greeting(3000).check_count(DEFAULT_MAX_COUNT).is_err());
        assert!(greeting(0).check_count(DEFAULT_MAX_COUNT).is_err());
    }

    #[test]
    fn mbz_ignored_on_receive_zeroed_on_emit() {
        let mut b = greeting(2048).to_bytes();
        assert_eq!(&b[52..], &[0; 12]);
        b[52..].fill(0xff);
        assert_eq!(ServerGreetingRepr::from_bytes(&b), Ok(greeting(2048)));
    }
}
