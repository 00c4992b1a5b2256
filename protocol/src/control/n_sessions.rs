//! RFC 5938 Individual Session Control messages: Start-N-Sessions (7),
//! Start-N-Ack (8), Stop-N-Sessions (9), Stop-N-Ack (10); `32 + 16·N` octets.
//!
//! ```text
//!  0              Command
//!  1              Accept (Start-N-Ack, Stop-N-Ack) / MBZ (Start-N, Stop-N)
//!  2..12          MBZ
//! 12..16          Number of Sessions N
//! 16..16+16N      SIDs
//! 16+16N..32+16N  HMAC over everything before it
//! ```
//!
//! Unlike the TWAMP Stop-Sessions, Stop-N-Sessions has **no** Accept octet
//! (RFC 5938 §3.4). All four share one view, [`SessionListPacket`].

use crate::accept::Accept;
use crate::control::sid::Sid;
use crate::control::{array, be_u32, check_exact, Command, Field, Refusal, BLOCK_LEN, HMAC_LEN};
use crate::error::WireError;

/// Length of the fixed part before the SIDs.
pub const HEADER_LEN: usize = 16;

/// Field offsets.
pub mod field {
    use super::Field;
    pub const COMMAND: usize = 0;
    /// Accept in the Acks, MBZ in the commands.
    pub const ACCEPT: usize = 1;
    pub const MBZ: Field = 2..12;
    pub const NUMBER_OF_SESSIONS: Field = 12..16;
    /// Where the SID list starts.
    pub const SIDS: usize = 16;
}

/// The length of a message carrying `n` SIDs, `32 + 16·n`; `None` if it
/// does not fit `usize`.
pub fn message_len(n: u32) -> Option<usize> {
    usize::try_from(n)
        .ok()?
        .checked_mul(Sid::LEN)?
        .checked_add(HEADER_LEN + HMAC_LEN)
}

fn what(command: u8) -> &'static str {
    match Command::from(command) {
        Command::StartNSessions => "Start-N-Sessions",
        Command::StartNAck => "Start-N-Ack",
        Command::StopNSessions => "Stop-N-Sessions",
        Command::StopNAck => "Stop-N-Ack",
        _ => "RFC 5938 session list",
    }
}

/// The length announced by a first block whose command octet must be
/// `command`, with N bounded by `max_sessions`.
pub(crate) fn header_len(
    command: Command,
    first_block: &[u8; BLOCK_LEN],
    max_sessions: u32,
) -> Result<usize, WireError> {
    let name = what(command.into());
    if first_block[field::COMMAND] != u8::from(command) {
        return Err(WireError::BadField {
            what: name,
            field: "Command",
            value: first_block[field::COMMAND].into(),
        });
    }
    let n = be_u32(&first_block[field::NUMBER_OF_SESSIONS]);
    let too_many = WireError::BadField {
        what: name,
        field: "Number of Sessions",
        value: n.into(),
    };
    if n > max_sessions {
        return Err(too_many);
    }
    message_len(n).ok_or(too_many)
}

/// A zero-copy view of any of the four RFC 5938 messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionListPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SessionListPacket<T> {
    /// Wraps a buffer without checking it. Accessors panic if it is shorter
    /// than `32 + 16·N`; use [`Self::new_checked`] for received data.
    pub const fn new_unchecked(buffer: T) -> Self {
        SessionListPacket { buffer }
    }

    /// Wraps a buffer whose length is exactly `32 + 16·N`, N read from
    /// octets 12–15. (The command octet is checked by the Reprs.)
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let name = what(b.first().copied().unwrap_or(0));
        WireError::check_len(name, b, HEADER_LEN)?;
        let n = be_u32(&b[field::NUMBER_OF_SESSIONS]);
        let len = message_len(n).ok_or(WireError::BadField {
            what: name,
            field: "Number of Sessions",
            value: n.into(),
        })?;
        check_exact(name, b, len)?;
        Ok(SessionListPacket { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Octet 0.
    pub fn command(&self) -> u8 {
        self.b()[field::COMMAND]
    }
    /// Octet 1: Accept in the Acks (MBZ in the commands).
    pub fn accept(&self) -> Accept {
        Accept::from(self.b()[field::ACCEPT])
    }
    /// Number of Sessions N.
    pub fn number_of_sessions(&self) -> u32 {
        be_u32(&self.b()[field::NUMBER_OF_SESSIONS])
    }
    fn hmac_range(&self) -> Field {
        let start = field::SIDS + Sid::LEN * self.number_of_sessions() as usize;
        start..start + HMAC_LEN
    }
    /// The SIDs, in order.
    pub fn sids(&self) -> impl Iterator<Item = Sid> + '_ {
        self.b()[field::SIDS..self.hmac_range().start]
            .chunks_exact(Sid::LEN)
            .map(|c| Sid(array(c)))
    }
    /// The HMAC field.
    pub fn hmac(&self) -> [u8; HMAC_LEN] {
        array(&self.b()[self.hmac_range()])
    }
    /// The octets the HMAC covers (all before it).
    pub fn hmac_input(&self) -> &[u8] {
        &self.b()[..self.hmac_range().start]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SessionListPacket<T> {
    /// Writes octets 0–15: the command, octet 1 (Accept or 0), zeroed MBZ
    /// and N. Write this first: the SID and HMAC positions depend on N.
    pub fn set_header(&mut self, command: Command, octet_1: u8, n: u32) {
        let b = self.buffer.as_mut();
        b[field::COMMAND] = command.into();
        b[field::ACCEPT] = octet_1;
        b[field::MBZ].fill(0);
        b[field::NUMBER_OF_SESSIONS].copy_from_slice(&n.to_be_bytes());
    }
    /// Sets SID number `i` (from 0).
    pub fn set_sid(&mut self, i: usize, sid: Sid) {
        let at = field::SIDS + Sid::LEN * i;
        self.buffer.as_mut()[at..at + Sid::LEN].copy_from_slice(&sid.0);
    }
    /// Sets the HMAC field (after the N SIDs).
    pub fn set_hmac(&mut self, v: [u8; HMAC_LEN]) {
        let r = self.hmac_range();
        self.buffer.as_mut()[r].copy_from_slice(&v);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for SessionListPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// Parses the parts common to the four messages after checking the command.
fn parse_list<T: AsRef<[u8]>>(
    packet: &SessionListPacket<T>,
    command: Command,
) -> Result<(Accept, Vec<Sid>, [u8; HMAC_LEN]), WireError> {
    if packet.command() != u8::from(command) {
        return Err(WireError::BadField {
            what: what(command.into()),
            field: "Command",
            value: packet.command().into(),
        });
    }
    Ok((packet.accept(), packet.sids().collect(), packet.hmac()))
}

fn emit_list<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut SessionListPacket<T>,
    command: Command,
    octet_1: u8,
    sids: &[Sid],
    hmac: [u8; HMAC_LEN],
) {
    packet.set_header(
        command,
        octet_1,
        u32::try_from(sids.len()).unwrap_or(u32::MAX),
    );
    for (i, sid) in sids.iter().enumerate() {
        packet.set_sid(i, *sid);
    }
    packet.set_hmac(hmac);
}

/// `buffer_len`, `from_bytes` and `to_bytes` of a session-list Repr.
macro_rules! list_repr_helpers {
    ($repr:ident) => {
        impl $repr {
            /// The message length, `32 + 16·N`.
            pub fn buffer_len(&self) -> usize {
                HEADER_LEN + HMAC_LEN + Sid::LEN * self.sids.len()
            }

            /// Parses a buffer of exactly the message's length.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
                Self::parse(&SessionListPacket::new_checked(bytes)?)
            }

            /// Emits the message into a new vector.
            pub fn to_bytes(&self) -> Vec<u8> {
                let mut b = vec![0u8; self.buffer_len()];
                self.emit(&mut SessionListPacket::new_unchecked(&mut b[..]));
                b
            }
        }
    };
}

/// Checks N ≥ 1 (RFC 5938 §3.2, §3.4).
fn check_not_empty(command: Command, sids: &[Sid]) -> Result<(), Refusal> {
    if sids.is_empty() {
        Err(Refusal::not_supported(
            what(command.into()),
            "Number of Sessions",
            0,
        ))
    } else {
        Ok(())
    }
}

/// A parsed Start-N-Sessions (RFC 5938 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StartNSessionsRepr {
    /// The sessions to start.
    pub sids: Vec<Sid>,
    /// HMAC (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StartNSessionsRepr {
    /// Parses a (decrypted) Start-N-Sessions; fails if octet 0 is not 7.
    pub fn parse<T: AsRef<[u8]>>(packet: &SessionListPacket<T>) -> Result<Self, WireError> {
        let (_, sids, hmac) = parse_list(packet, Command::StartNSessions)?;
        Ok(StartNSessionsRepr { sids, hmac })
    }

    /// Writes the message; the buffer must hold [`Self::buffer_len`] octets.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut SessionListPacket<T>) {
        emit_list(packet, Command::StartNSessions, 0, &self.sids, self.hmac);
    }

    /// N = 0 is refused with Accept 3.
    pub fn check(&self) -> Result<(), Refusal> {
        check_not_empty(Command::StartNSessions, &self.sids)
    }
}
list_repr_helpers!(StartNSessionsRepr);

/// A parsed Stop-N-Sessions (RFC 5938 §3.4); it has no Accept octet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StopNSessionsRepr {
    /// The sessions to stop.
    pub sids: Vec<Sid>,
    /// HMAC (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StopNSessionsRepr {
    /// Parses a (decrypted) Stop-N-Sessions; fails if octet 0 is not 9.
    pub fn parse<T: AsRef<[u8]>>(packet: &SessionListPacket<T>) -> Result<Self, WireError> {
        let (_, sids, hmac) = parse_list(packet, Command::StopNSessions)?;
        Ok(StopNSessionsRepr { sids, hmac })
    }

    /// Writes the message; the buffer must hold [`Self::buffer_len`] octets.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut SessionListPacket<T>) {
        emit_list(packet, Command::StopNSessions, 0, &self.sids, self.hmac);
    }

    /// N = 0 is refused with Accept 3.
    pub fn check(&self) -> Result<(), Refusal> {
        check_not_empty(Command::StopNSessions, &self.sids)
    }
}
list_repr_helpers!(StopNSessionsRepr);

/// A parsed Start-N-Ack (RFC 5938 §3.3): one Accept value for a group of SIDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StartNAckRepr {
    /// The answer for every SID listed.
    pub accept: Accept,
    /// The SIDs this answer applies to.
    pub sids: Vec<Sid>,
    /// HMAC (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StartNAckRepr {
    /// Parses a (decrypted) Start-N-Ack; fails if octet 0 is not 8.
    pub fn parse<T: AsRef<[u8]>>(packet: &SessionListPacket<T>) -> Result<Self, WireError> {
        let (accept, sids, hmac) = parse_list(packet, Command::StartNAck)?;
        Ok(StartNAckRepr { accept, sids, hmac })
    }

    /// Writes the message; the buffer must hold [`Self::buffer_len`] octets.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut SessionListPacket<T>) {
        emit_list(
            packet,
            Command::StartNAck,
            self.accept.into(),
            &self.sids,
            self.hmac,
        );
    }
}
list_repr_helpers!(StartNAckRepr);

/// A parsed Stop-N-Ack (RFC 5938 §3.5): one Accept value for a group of SIDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StopNAckRepr {
    /// The answer for every SID listed.
    pub accept: Accept,
    /// The SIDs this answer applies to.
    pub sids: Vec<Sid>,
    /// HMAC (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl StopNAckRepr {
    /// Parses a (decrypted) Stop-N-Ack; fails if octet 0 is not 10.
    pub fn parse<T: AsRef<[u8]>>(packet: &SessionListPacket<T>) -> Result<Self, WireError> {
        let (accept, sids, hmac) = parse_list(packet, Command::StopNAck)?;
        Ok(StopNAckRepr { accept, sids, hmac })
    }

    /// Writes the message; the buffer must hold [`Self::buffer_len`] octets.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut SessionListPacket<T>) {
        emit_list(
            packet,
            Command::StopNAck,
            self.accept.into(),
            &self.sids,
            self.hmac,
        );
    }
}
list_repr_helpers!(StopNAckRepr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(message_len(0), Some(32));
        assert_eq!(message_len(1), Some(48));
        assert_eq!(message_len(3), Some(80));
    }

    #[test]
    fn stop_n_has_no_accept_octet() {
        let r = StopNSessionsRepr {
            sids: vec![Sid([7; 16])],
            hmac: [9; 16],
        };
        let b = r.to_bytes();
        assert_eq!(b.len(), 48);
        assert_eq!(b[0], 9);
        assert_eq!(&b[1..12], &[0; 11]);
        assert_eq!(&b[12..16], &[0, 0, 0, 1]);
        assert_eq!(&b[16..32], &[7; 16]);
        assert_eq!(&b[32..48], &[9; 16]);
        // A Go-style Stop-Sessions layout (count at 4) does not parse as N = 1.
        let mut wrong = [0u8; 48];
        wrong[0] = 9;
        wrong[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(
            StopNSessionsRepr::from_bytes(&wrong),
            Err(WireError::BadLength { len: 48, .. })
        ));
    }

    #[test]
    fn ack_layout() {
        let r = StartNAckRepr {
            accept: Accept::TemporaryResourceLimitation,
            sids: vec![Sid([1; 16]), Sid([2; 16])],
            hmac: [3; 16],
        };
        let b = r.to_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[..2], &[8, 5]);
        assert_eq!(&b[2..12], &[0; 10]);
        assert_eq!(&b[12..16], &[0, 0, 0, 2]);
        let p = SessionListPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.hmac_input(), &b[..48]);
        assert_eq!(StartNAckRepr::parse(&p), Ok(r));
    }

    #[test]
    fn empty_list_is_refused_politely() {
        let r = StartNSessionsRepr {
            sids: vec![],
            hmac: [0; 16],
        };
        assert_eq!(
            StartNSessionsRepr::from_bytes(&r.to_bytes()).as_ref(),
            Ok(&r)
        );
        assert_eq!(r.check().unwrap_err().accept, Accept::NotSupported);
        assert!(StartNSessionsRepr {
            sids: vec![Sid([1; 16])],
            hmac: [0; 16]
        }
        .check()
        .is_ok());
    }
}
