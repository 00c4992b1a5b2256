//! Accept-Session (RFC 5357 §3.5, RFC 6038 §4.2): 48 octets, server to
//! client, the answer to every Request-TW-Session.
//!
//! ```text
//!  0       Accept
//!  1       MBZ
//!  2..4    Port (reflector UDP port; 0 when Accept ≠ 0)
//!  4..20   SID
//! 20..22   Reflected octets (RFC 6038; MBZ otherwise)
//! 22..24   Server octets (RFC 6038; MBZ otherwise)
//! 24..32   MBZ
//! 32..48   HMAC (the first one of the connection also covers the
//!          Server-Start Start-Time block)
//! ```

use crate::accept::Accept;
use crate::control::sid::Sid;
use crate::control::{array, be_u16, fixed_packet, fixed_repr_helpers, Field, HMAC_LEN};
use crate::error::WireError;

/// Message length.
pub const LEN: usize = 48;

/// Field offsets.
pub mod field {
    use super::Field;
    pub const ACCEPT: usize = 0;
    pub const MBZ_0: usize = 1;
    pub const PORT: Field = 2..4;
    pub const SID: Field = 4..20;
    pub const REFLECTED_OCTETS: Field = 20..22;
    pub const SERVER_OCTETS: Field = 22..24;
    pub const MBZ_1: Field = 24..32;
    pub const HMAC: Field = 32..48;
}

fixed_packet!(
    /// A zero-copy view of an Accept-Session.
    AcceptSessionPacket,
    "Accept-Session",
    LEN
);

impl<T: AsRef<[u8]>> AcceptSessionPacket<T> {
    /// The Accept value.
    pub fn accept(&self) -> Accept {
        Accept::from(self.b()[field::ACCEPT])
    }
    /// The reflector port.
    pub fn port(&self) -> u16 {
        be_u16(&self.b()[field::PORT])
    }
    /// The SID.
    pub fn sid(&self) -> Sid {
        Sid(array(&self.b()[field::SID]))
    }
    /// RFC 6038 Reflected octets.
    pub fn reflected_octets(&self) -> [u8; 2] {
        array(&self.b()[field::REFLECTED_OCTETS])
    }
    /// RFC 6038 Server octets.
    pub fn server_octets(&self) -> [u8; 2] {
        array(&self.b()[field::SERVER_OCTETS])
    }
    /// The HMAC field.
    pub fn hmac(&self) -> [u8; HMAC_LEN] {
        array(&self.b()[field::HMAC])
    }
    /// The octets of this message the HMAC covers (0–31).
    pub fn hmac_input(&self) -> &[u8] {
        &self.b()[..field::HMAC.start]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> AcceptSessionPacket<T> {
    /// Sets the Accept value.
    pub fn set_accept(&mut self, v: Accept) {
        self.b_mut()[field::ACCEPT] = v.into();
    }
    /// Sets the reflector port.
    pub fn set_port(&mut self, v: u16) {
        self.b_mut()[field::PORT].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the SID.
    pub fn set_sid(&mut self, v: Sid) {
        self.b_mut()[field::SID].copy_from_slice(&v.0);
    }
    /// Sets RFC 6038 Reflected octets.
    pub fn set_reflected_octets(&mut self, v: [u8; 2]) {
        self.b_mut()[field::REFLECTED_OCTETS].copy_from_slice(&v);
    }
    /// Sets RFC 6038 Server octets.
    pub fn set_server_octets(&mut self, v: [u8; 2]) {
        self.b_mut()[field::SERVER_OCTETS].copy_from_slice(&v);
    }
    /// Sets the HMAC field.
    pub fn set_hmac(&mut self, v: [u8; HMAC_LEN]) {
        self.b_mut()[field::HMAC].copy_from_slice(&v);
    }
    /// Zeroes the MBZ octets.
    pub fn clear_mbz(&mut self) {
        self.b_mut()[field::MBZ_0] = 0;
        self.b_mut()[field::MBZ_1].fill(0);
    }
}

/// A parsed Accept-Session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AcceptSessionRepr {
    /// 0 if the session is accepted.
    pub accept: Accept,
    /// Reflector UDP port actually used (may differ from the requested one);
    /// 0 when Accept ≠ 0 (RFC 5357 erratum 1587).
    pub port: u16,
    /// The session identifier assigned by the server.
    pub sid: Sid,
    /// RFC 6038: copy of the request's Octets to be reflected.
    pub reflected_octets: [u8; 2],
    /// RFC 6038: 0, or octets the sender puts first in the padding to reflect.
    pub server_octets: [u8; 2],
    /// HMAC (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl AcceptSessionRepr {
    /// Parses a (decrypted) Accept-Session.
    pub fn parse<T: AsRef<[u8]>>(packet: &AcceptSessionPacket<T>) -> Result<Self, WireError> {
        Ok(AcceptSessionRepr {
            accept: packet.accept(),
            port: packet.port(),
            sid: packet.sid(),
            reflected_octets: packet.reflected_octets(),
            server_octets: packet.server_octets(),
            hmac: packet.hmac(),
        })
    }

    /// Writes the message, MBZ octets zeroed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut AcceptSessionPacket<T>) {
        packet.clear_mbz();
        packet.set_accept(self.accept);
        packet.set_port(self.port);
        packet.set_sid(self.sid);
        packet.set_reflected_octets(self.reflected_octets);
        packet.set_server_octets(self.server_octets);
        packet.set_hmac(self.hmac);
    }

    /// A refusal: the given Accept value, Port 0 and zero SID (RFC 5357
    /// §3.5 with erratum 1587).
    pub fn refusal(accept: Accept) -> Self {
        AcceptSessionRepr {
            accept,
            port: 0,
            sid: Sid::ZERO,
            reflected_octets: [0; 2],
            server_octets: [0; 2],
            hmac: [0; HMAC_LEN],
        }
    }
}

fixed_repr_helpers!(AcceptSessionRepr, AcceptSessionPacket, LEN);
