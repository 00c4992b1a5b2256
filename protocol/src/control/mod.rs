//! TWAMP-Control wire formats (RFC 4656 §3, RFC 5357 §3, RFC 5938, RFC 6038).
//!
//! Every message has a zero-copy view `XxxPacket<T: AsRef<[u8]>>` (length
//! checked by `new_checked`, field accessors, setters for `T: AsMut<[u8]>`)
//! and a `XxxRepr` that parses and emits it. A view accepts a buffer of
//! exactly the message's length: control messages are read from a TCP stream
//! whose framing is known (fixed sizes, or `32 + 16·N` for the RFC 5938
//! messages), so a longer buffer is a framing bug and gets
//! [`WireError::BadLength`].
//!
//! Parsing checks *structure* only (length, command number). Semantic
//! problems that the protocol answers with a refusal (RFC 5357 §3.5: non-zero
//! Conf-Sender, IPVN not 4/6, …) are reported by the Repr's `check()` as a
//! [`Refusal`] carrying the [`Accept`] value to send, so a server can refuse
//! politely and keep the connection.
//!
//! HMAC fields are carried as plain octets ([`HMAC_LEN`]); computing and
//! verifying them, and the AES-CBC stream, belong to the crypto module. In
//! unauthenticated mode they are zero. MBZ fields are written as zero and
//! ignored on receive.
//!
//! After the Server-Start, the server reads one 16-octet block, decrypts it
//! and calls [`client_command`] to learn the command and the message length;
//! the client knows from its state which reply comes next and uses
//! [`server_reply_len`].

use core::fmt;
use core::ops::Range;

use thiserror::Error;

use crate::accept::Accept;
use crate::error::WireError;

pub mod accept_session;
pub mod greeting;
pub mod n_sessions;
pub mod request;
pub mod server_start;
pub mod setup;
pub mod sid;
pub mod start_stop;

pub use accept_session::{AcceptSessionPacket, AcceptSessionRepr};
pub use greeting::{ServerGreetingPacket, ServerGreetingRepr};
pub use n_sessions::{
    SessionListPacket, StartNAckRepr, StartNSessionsRepr, StopNAckRepr, StopNSessionsRepr,
};
pub use request::{RequestTwSessionPacket, RequestTwSessionRepr, TypeP};
pub use server_start::{ServerStartPacket, ServerStartRepr};
pub use setup::{SetUpResponsePacket, SetUpResponseRepr};
pub use sid::Sid;
pub use start_stop::{
    StartAckPacket, StartAckRepr, StartSessionsPacket, StartSessionsRepr, StopSessionsPacket,
    StopSessionsRepr,
};

/// The AES block; every control message is a whole number of blocks.
pub const BLOCK_LEN: usize = 16;
/// Length of every HMAC field (HMAC-SHA1 truncated to 128 bits, RFC 4656 §3.4).
pub const HMAC_LEN: usize = 16;

/// Octet range of a field.
pub type Field = Range<usize>;

/// A TWAMP-Control command number (IANA "TWAMP-Control Command Numbers",
/// octet 0 of a client command; RFC 5357 §3.5, RFC 5938 §3).
///
/// The conversion from `u8` is total; reserved and unassigned values (0, 1,
/// 4, 12–255) become [`Command::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// 2: Start-Sessions (RFC 4656 §3.7).
    StartSessions,
    /// 3: Stop-Sessions (RFC 4656 §3.8, TWAMP form RFC 5357 §3.8).
    StopSessions,
    /// 5: Request-TW-Session (RFC 5357 §3.5).
    RequestTwSession,
    /// 6: Experimentation (RFC 5357 §8.3, format undefined).
    Experimentation,
    /// 7: Start-N-Sessions (RFC 5938 §3.2).
    StartNSessions,
    /// 8: Start-N-Ack (RFC 5938 §3.3, server to client).
    StartNAck,
    /// 9: Stop-N-Sessions (RFC 5938 §3.4).
    StopNSessions,
    /// 10: Stop-N-Ack (RFC 5938 §3.5, server to client).
    StopNAck,
    /// 11: Request-TW-Micro-Sessions (RFC 9533, not implemented here).
    RequestTwMicroSessions,
    /// Any other value (0 reserved, 1 forbidden, 4 reserved, 12–255 unassigned).
    Unknown(u8),
}

impl From<u8> for Command {
    fn from(v: u8) -> Self {
        match v {
            2 => Command::StartSessions,
            3 => Command::StopSessions,
            5 => Command::RequestTwSession,
            6 => Command::Experimentation,
            7 => Command::StartNSessions,
            8 => Command::StartNAck,
            9 => Command::StopNSessions,
            10 => Command::StopNAck,
            11 => Command::RequestTwMicroSessions,
            other => Command::Unknown(other),
        }
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::StartSessions => 2,
            Command::StopSessions => 3,
            Command::RequestTwSession => 5,
            Command::Experimentation => 6,
            Command::StartNSessions => 7,
            Command::StartNAck => 8,
            Command::StopNSessions => 9,
            Command::StopNAck => 10,
            Command::RequestTwMicroSessions => 11,
            Command::Unknown(v) => v,
        }
    }
}

impl Command {
    /// True for the commands a Control-Client sends that this crate can
    /// frame: 2, 3, 5, 7 and 9.
    pub const fn is_client_command(self) -> bool {
        matches!(
            self,
            Command::StartSessions
                | Command::StopSessions
                | Command::RequestTwSession
                | Command::StartNSessions
                | Command::StopNSessions
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Command::StartSessions => "Start-Sessions",
            Command::StopSessions => "Stop-Sessions",
            Command::RequestTwSession => "Request-TW-Session",
            Command::Experimentation => "Experimentation",
            Command::StartNSessions => "Start-N-Sessions",
            Command::StartNAck => "Start-N-Ack",
            Command::StopNSessions => "Stop-N-Sessions",
            Command::StopNAck => "Stop-N-Ack",
            Command::RequestTwMicroSessions => "Request-TW-Micro-Sessions",
            Command::Unknown(_) => "unknown command",
        };
        write!(f, "{name} ({})", u8::from(*self))
    }
}

/// What the first block of a client command says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandHeader {
    /// The command number (octet 0).
    pub command: Command,
    /// The whole message's length in octets, including the first block and
    /// the HMAC; `None` when the format is unknown (commands 0, 1, 4, 6, 11,
    /// 12–255): RFC 5357 §3.5 answers those with an Accept-Session
    /// carrying Accept 3, but the stream cannot be re-synchronised.
    pub len: Option<usize>,
}

/// Reads the first (decrypted) block of a client command: the command
/// number and the total message length (RFC 5357 §3.5, RFC 5938 §3).
///
/// For Start-N/Stop-N (and the Ack numbers 8 and 10) the length is
/// `32 + 16·N` with N from octets 12–15. N above `max_sessions` gives
/// [`WireError::BadField`] (field "Number of Sessions") so a hostile N cannot
/// make a server read gigabytes; N = 0 is structurally fine (32 octets) and
/// refused by the Repr's `check()`.
pub fn client_command(
    first_block: &[u8; BLOCK_LEN],
    max_sessions: u32,
) -> Result<CommandHeader, WireError> {
    let command = Command::from(first_block[0]);
    let len = match command {
        Command::StartSessions => Some(start_stop::START_SESSIONS_LEN),
        Command::StopSessions => Some(start_stop::STOP_SESSIONS_LEN),
        Command::RequestTwSession => Some(request::LEN),
        Command::StartNSessions
        | Command::StopNSessions
        | Command::StartNAck
        | Command::StopNAck => Some(n_sessions::header_len(command, first_block, max_sessions)?),
        Command::Experimentation | Command::RequestTwMicroSessions | Command::Unknown(_) => None,
    };
    Ok(CommandHeader { command, len })
}

/// The server replies a client reads; they are identified by the client's
/// state, not by a command number (RFC 5357 §3.5, §3.7; RFC 5938 §3.3, §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerReply {
    /// Answer to Request-TW-Session (48 octets).
    AcceptSession,
    /// Answer to Start-Sessions (32 octets).
    StartAck,
    /// Answer to Start-N-Sessions (`32 + 16·N`, command octet 8).
    StartNAck,
    /// Answer to Stop-N-Sessions (`32 + 16·N`, command octet 10).
    StopNAck,
}

/// The length of the server reply the client expects, from its first
/// (decrypted) block. For the N-Acks the command octet must match the
/// expected reply and N must not exceed `max_sessions`.
pub fn server_reply_len(
    reply: ServerReply,
    first_block: &[u8; BLOCK_LEN],
    max_sessions: u32,
) -> Result<usize, WireError> {
    match reply {
        ServerReply::AcceptSession => Ok(accept_session::LEN),
        ServerReply::StartAck => Ok(start_stop::START_ACK_LEN),
        ServerReply::StartNAck => {
            n_sessions::header_len(Command::StartNAck, first_block, max_sessions)
        }
        ServerReply::StopNAck => {
            n_sessions::header_len(Command::StopNAck, first_block, max_sessions)
        }
    }
}

/// A well-formed command the server refuses, and the Accept value to answer
/// with (RFC 5357 §3.5: "some aspect of the request is not supported" = 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{what}: {field} = {value:#x} refused with Accept {accept}")]
pub struct Refusal {
    /// The Accept value to send.
    pub accept: Accept,
    /// The message.
    pub what: &'static str,
    /// The offending field.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
}

impl Refusal {
    /// A refusal with Accept 3 (not supported).
    pub(crate) const fn not_supported(what: &'static str, field: &'static str, value: u64) -> Self {
        Refusal {
            accept: Accept::NotSupported,
            what,
            field,
            value,
        }
    }
}

/// Checks that `buf` is exactly `len` octets long.
pub(crate) fn check_exact(what: &'static str, buf: &[u8], len: usize) -> Result<(), WireError> {
    WireError::check_len(what, buf, len)?;
    if buf.len() > len {
        return Err(WireError::BadLength {
            what,
            len: buf.len(),
            why: "longer than the message",
        });
    }
    Ok(())
}

/// The first `N` octets of `b` (which the caller guarantees exist).
pub(crate) fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

pub(crate) fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes(array(b))
}

pub(crate) fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(array(b))
}

/// Generates the length-checked view boilerplate of a fixed-size message.
macro_rules! fixed_packet {
    ($(#[$doc:meta])* $name:ident, $what:expr, $len:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// The message name used in errors.
            pub const WHAT: &'static str = $what;
            /// The message length in octets.
            pub const LEN: usize = $len;

            /// Wraps a buffer without checking its length. Accessors panic if
            /// it is shorter than [`Self::LEN`]; use [`Self::new_checked`] for
            /// received data.
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a buffer of exactly [`Self::LEN`] octets.
            pub fn new_checked(buffer: T) -> Result<Self, $crate::error::WireError> {
                $crate::control::check_exact($what, buffer.as_ref(), $len)?;
                Ok(Self { buffer })
            }

            /// The underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            fn b(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            fn b_mut(&mut self) -> &mut [u8] {
                self.buffer.as_mut()
            }
        }

        impl<T: AsRef<[u8]>> AsRef<[u8]> for $name<T> {
            fn as_ref(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}
pub(crate) use fixed_packet;

/// Generates `buffer_len`, `from_bytes` and `to_bytes` for the Repr of a
/// fixed-size message.
macro_rules! fixed_repr_helpers {
    ($repr:ident, $packet:ident, $len:expr) => {
        impl $repr {
            /// The message length in octets.
            pub const fn buffer_len(&self) -> usize {
                $len
            }

            /// Parses a buffer of exactly the message's length.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, $crate::error::WireError> {
                Self::parse(&$packet::new_checked(bytes)?)
            }

            /// Emits the message into a new array.
            pub fn to_bytes(&self) -> [u8; $len] {
                let mut b = [0u8; $len];
                self.emit(&mut $packet::new_unchecked(&mut b[..]));
                b
            }
        }
    };
}
pub(crate) use fixed_repr_helpers;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_numbers_follow_the_iana_registry() {
        let expected = [
            (2, Command::StartSessions),
            (3, Command::StopSessions),
            (5, Command::RequestTwSession),
            (6, Command::Experimentation),
            (7, Command::StartNSessions),
            (8, Command::StartNAck),
            (9, Command::StopNSessions),
            (10, Command::StopNAck),
            (11, Command::RequestTwMicroSessions),
        ];
        for v in 0..=255u8 {
            let c = Command::from(v);
            assert_eq!(u8::from(c), v);
            match expected.iter().find(|(n, _)| *n == v) {
                Some((_, known)) => assert_eq!(c, *known),
                None => assert_eq!(c, Command::Unknown(v)),
            }
        }
    }

    #[test]
    fn check_exact_distinguishes_short_and_long() {
        assert!(check_exact("x", &[0; 4], 4).is_ok());
        assert_eq!(
            check_exact("x", &[0; 3], 4),
            Err(WireError::Truncated {
                what: "x",
                need: 4,
                have: 3
            })
        );
        assert!(matches!(
            check_exact("x", &[0; 5], 4),
            Err(WireError::BadLength { len: 5, .. })
        ));
    }
}
