//! Server-Start (RFC 4656 §3.1, used by RFC 5357 §3.1): 48 octets, server
//! to client.
//!
//! ```text
//!  0..15  MBZ
//! 15      Accept
//! 16..32  Server-IV
//! 32..40  Start-Time (NTP timestamp)
//! 40..48  MBZ
//! ```
//!
//! Octets 32–47 (the Start-Time block) are the first block of the
//! server-to-client AES-CBC stream in protected modes and the first input of
//! the server's first HMAC (the one in the first Accept-Session); this message
//! has no HMAC of its own. With Accept ≠ 0 the block is sent in clear.

use crate::accept::Accept;
use crate::control::{array, fixed_packet, fixed_repr_helpers, Field};
use crate::error::WireError;
use crate::time::NtpTimestamp;

/// Message length.
pub const LEN: usize = 48;

/// Field offsets.
pub mod field {
    use super::Field;
    pub const MBZ_0: Field = 0..15;
    pub const ACCEPT: usize = 15;
    pub const SERVER_IV: Field = 16..32;
    pub const START_TIME: Field = 32..40;
    pub const MBZ_1: Field = 40..48;
    /// The block that starts the server's cipher stream and HMAC coverage.
    pub const START_TIME_BLOCK: Field = 32..48;
}

fixed_packet!(
    /// A zero-copy view of a Server-Start.
    ServerStartPacket,
    "Server-Start",
    LEN
);

impl<T: AsRef<[u8]>> ServerStartPacket<T> {
    /// The Accept value.
    pub fn accept(&self) -> Accept {
        Accept::from(self.b()[field::ACCEPT])
    }
    /// The IV of the server-to-client stream.
    pub fn server_iv(&self) -> [u8; 16] {
        array(&self.b()[field::SERVER_IV])
    }
    /// When the server instance started.
    pub fn start_time(&self) -> NtpTimestamp {
        NtpTimestamp::from_bytes(array(&self.b()[field::START_TIME]))
    }
    /// Octets 32–47: Start-Time ‖ 8 MBZ.
    pub fn start_time_block(&self) -> &[u8] {
        &self.b()[field::START_TIME_BLOCK]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ServerStartPacket<T> {
    /// Sets accept.
    pub fn set_accept(&mut self, v: Accept) {
        self.b_mut()[field::ACCEPT] = v.into();
    }
    /// Sets server iv.
    pub fn set_server_iv(&mut self, v: [u8; 16]) {
        self.b_mut()[field::SERVER_IV].copy_from_slice(&v);
    }
    /// Sets start time.
    pub fn set_start_time(&mut self, v: NtpTimestamp) {
        self.b_mut()[field::START_TIME].copy_from_slice(&v.to_bytes());
    }
    /// Zeroes the MBZ octets.
    pub fn clear_mbz(&mut self) {
        self.b_mut()[field::MBZ_0].fill(0);
        self.b_mut()[field::MBZ_1].fill(0);
    }
}

/// A parsed Server-Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerStartRepr {
    /// 0 if the server accepts the Set-Up-Response.
    pub accept: Accept,
    /// The server-to-client IV (perfSONAR sends zeros in unauthenticated mode).
    pub server_iv: [u8; 16],
    /// Server instance start time (SHOULD be zero when Accept ≠ 0).
    pub start_time: NtpTimestamp,
}

impl ServerStartRepr {
    /// Parses a Server-Start (already decrypted, for the Start-Time block).
    pub fn parse<T: AsRef<[u8]>>(packet: &ServerStartPacket<T>) -> Result<Self, WireError> {
        Ok(ServerStartRepr {
            accept: packet.accept(),
            server_iv: packet.server_iv(),
            start_time: packet.start_time(),
        })
    }

    /// Writes the message, MBZ octets zeroed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ServerStartPacket<T>) {
        packet.clear_mbz();
        packet.set_accept(self.accept);
        packet.set_server_iv(self.server_iv);
        packet.set_start_time(self.start_time);
    }
}

fixed_repr_helpers!(ServerStartRepr, ServerStartPacket, LEN);
