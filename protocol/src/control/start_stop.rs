//! Start-Sessions, Start-Ack (RFC 4656 §3.7, RFC 5357 §3.7) and the TWAMP
//! form of Stop-Sessions (RFC 5357 §3.8): 32 octets each.
//!
//! ```text
//! Start-Sessions        Start-Ack            Stop-Sessions
//!  0      Command = 2    0      Accept        0      Command = 3
//!  1..16  MBZ            1..16  MBZ           1      Accept
//!                                             2..4   MBZ
//!                                             4..8   Number of Sessions
//!                                             8..16  MBZ
//! 16..32  HMAC          16..32  HMAC         16..32  HMAC
//! ```
//!
//! TWAMP's Stop-Sessions carries no session descriptions: it stops every
//! started session, and Number of Sessions must equal the number in progress
//! (a state check, not done here).

use crate::accept::Accept;
use crate::control::{array, be_u32, fixed_packet, fixed_repr_helpers, Command, Field, HMAC_LEN};
use crate::error::WireError;

/// Start-Sessions length.
pub const START_SESSIONS_LEN: usize = 32;
/// Start-Ack length.
pub const START_ACK_LEN: usize = 32;
/// Stop-Sessions length.
pub const STOP_SESSIONS_LEN: usize = 32;

/// Field offsets shared by the three messages.
pub mod field {
    use super::Field;
    /// Command (Start-Sessions, Stop-Sessions) or Accept (Start-Ack).
    pub const OCTET_0: usize = 0;
    /// Stop-Sessions Accept.
    pub const STOP_ACCEPT: usize = 1;
    /// Stop-Sessions Number of Sessions.
    pub const STOP_NUMBER_OF_SESSIONS: Field = 4..8;
    /// The first block, which the HMAC covers.
    pub const BODY: Field = 0..16;
    pub const HMAC: Field = 16..32;
}

fn check_command(what: &'static str, octet: u8, expected: Command) -> Result<(), WireError> {
    if octet == u8::from(expected) {
        Ok(())
    } else {
        Err(WireError::BadField {
            what,
            field: "Command",
            value: octet.into(),
        })
    }
}

/// Accessors shared by the three views.
macro_rules! common_accessors {
    ($name:ident) => {
        impl<T: AsRef<[u8]>> $name<T> {
            /// The HMAC field.
            pub fn hmac(&self) -> [u8; HMAC_LEN] {
                array(&self.b()[field::HMAC])
            }
            /// The octets the HMAC covers (0–15).
            pub fn hmac_input(&self) -> &[u8] {
                &self.b()[field::BODY]
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Sets the HMAC field.
            pub fn set_hmac(&mut self, v: [u8; HMAC_LEN]) {
                self.b_mut()[field::HMAC].copy_from_slice(&v);
            }
        }
    };
}

fixed_packet!(
    /// A zero-copy view of a Start-Sessions (command 2).
    StartSessionsPacket,
    "Start-Sessions",
    START_SESSIONS_LEN
);
common_accessors!(StartSessionsPacket);

impl<T: AsRef<[u8]>> StartSessionsPacket<T> {
    /// Octet 0, 2 in a valid message.
    pub fn command(&self) -> u8 {
        self.b()[field::OCTET_0]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> StartSessionsPacket<T> {
    /// Writes command 2 and zeroes octets 1–15.
    pub fn set_header(&mut self) {
        let b = self.b_mut();
        b[field::BODY].fill(0);
        b[field::OCTET_0] = Command::StartSessions.into();
    }
}

/// A parsed Start-Sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartSessionsRepr {
    /// HMAC over octets 0–15 (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StartSessionsRepr {
    /// Parses a (decrypted) Start-Sessions; fails if octet 0 is not 2.
    pub fn parse<T: AsRef<[u8]>>(packet: &StartSessionsPacket<T>) -> Result<Self, WireError> {
        check_command(
            StartSessionsPacket::<T>::WHAT,
            packet.command(),
            Command::StartSessions,
        )?;
        Ok(StartSessionsRepr {
            hmac: packet.hmac(),
        })
    }

    /// Writes the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut StartSessionsPacket<T>) {
        packet.set_header();
        packet.set_hmac(self.hmac);
    }
}

fixed_repr_helpers!(StartSessionsRepr, StartSessionsPacket, START_SESSIONS_LEN);

fixed_packet!(
    /// A zero-copy view of a Start-Ack.
    StartAckPacket,
    "Start-Ack",
    START_ACK_LEN
);
common_accessors!(StartAckPacket);

impl<T: AsRef<[u8]>> StartAckPacket<T> {
    /// The Accept value.
    pub fn accept(&self) -> Accept {
        Accept::from(self.b()[field::OCTET_0])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> StartAckPacket<T> {
    /// Writes the Accept value and zeroes octets 1–15.
    pub fn set_header(&mut self, accept: Accept) {
        let b = self.b_mut();
        b[field::BODY].fill(0);
        b[field::OCTET_0] = accept.into();
    }
}

/// A parsed Start-Ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartAckRepr {
    /// 0 if the sessions start.
    pub accept: Accept,
    /// HMAC over octets 0–15 (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StartAckRepr {
    /// Parses a (decrypted) Start-Ack.
    pub fn parse<T: AsRef<[u8]>>(packet: &StartAckPacket<T>) -> Result<Self, WireError> {
        Ok(StartAckRepr {
            accept: packet.accept(),
            hmac: packet.hmac(),
        })
    }

    /// Writes the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut StartAckPacket<T>) {
        packet.set_header(self.accept);
        packet.set_hmac(self.hmac);
    }
}

fixed_repr_helpers!(StartAckRepr, StartAckPacket, START_ACK_LEN);

fixed_packet!(
    /// A zero-copy view of a TWAMP Stop-Sessions (command 3).
    StopSessionsPacket,
    "Stop-Sessions",
    STOP_SESSIONS_LEN
);
common_accessors!(StopSessionsPacket);

impl<T: AsRef<[u8]>> StopSessionsPacket<T> {
    /// Octet 0, 3 in a valid message.
    pub fn command(&self) -> u8 {
        self.b()[field::OCTET_0]
    }
    /// The Accept value (non-zero: the client considers the results invalid).
    pub fn accept(&self) -> Accept {
        Accept::from(self.b()[field::STOP_ACCEPT])
    }
    /// Number of Sessions.
    pub fn number_of_sessions(&self) -> u32 {
        be_u32(&self.b()[field::STOP_NUMBER_OF_SESSIONS])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> StopSessionsPacket<T> {
    /// Writes command 3, the Accept value and Number of Sessions; zeroes
    /// the MBZ octets.
    pub fn set_header(&mut self, accept: Accept, number_of_sessions: u32) {
        let b = self.b_mut();
        b[field::BODY].fill(0);
        b[field::OCTET_0] = Command::StopSessions.into();
        b[field::STOP_ACCEPT] = accept.into();
        b[field::STOP_NUMBER_OF_SESSIONS].copy_from_slice(&number_of_sessions.to_be_bytes());
    }
}

/// A parsed Stop-Sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StopSessionsRepr {
    /// 0 for a normal (possibly early) end; non-zero: results invalid.
    pub accept: Accept,
    /// Must equal the number of sessions in progress.
    pub number_of_sessions: u32,
    /// HMAC over octets 0–15 (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StopSessionsRepr {
    /// Parses a (decrypted) Stop-Sessions; fails if octet 0 is not 3.
    pub fn parse<T: AsRef<[u8]>>(packet: &StopSessionsPacket<T>) -> Result<Self, WireError> {
        check_command(
            StopSessionsPacket::<T>::WHAT,
            packet.command(),
            Command::StopSessions,
        )?;
        Ok(StopSessionsRepr {
            accept: packet.accept(),
            number_of_sessions: packet.number_of_sessions(),
            hmac: packet.hmac(),
        })
    }

    /// Writes the message.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut StopSessionsPacket<T>) {
        packet.set_header(self.accept, self.number_of_sessions);
        packet.set_hmac(self.hmac);
    }
}

fixed_repr_helpers!(StopSessionsRepr, StopSessionsPacket, STOP_SESSIONS_LEN);
