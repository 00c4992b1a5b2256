//! RFC 8972 §4 STAMP TLV framing: a zero-copy [`Tlv`] view, an iterator over
//! a TLV area, a writer, and the reflector-side framing pass
//! [`process_tlvs_in_place`].
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |U|M|I|Reserved |     Type      |            Length             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                     Value (Length octets)                     ~
//! ```
//!
//! The same framing is used by the sub-TLVs of Location, Timestamp
//! Information and Return Path ([`TlvIter::framing_only`]).
//!
//! Only the framing is handled here: unknown types get U = 1 and are copied
//! unchanged; a malformed TLV gets M = 1 and ends processing, the rest of the
//! area is copied unchanged (RFC 8972 §4). The semantics of known types are
//! plugged in through [`TlvHandler`]. Nothing here panics on any input or
//! changes the length of the area.

use thiserror::Error;

/// Header offsets.
pub mod field {
    use crate::twamp_test::packet::Field;
    /// STAMP TLV Flags.
    pub const FLAGS: usize = 0;
    /// Type.
    pub const TYPE: usize = 1;
    /// Length of the Value in octets.
    pub const LENGTH: Field = 2..4;
    /// Header length; the Value follows.
    pub const HEADER_LEN: usize = 4;
}

/// U (Unrecognized) flag: set by a reflector that does not understand the type.
pub const FLAG_U: u8 = 0x80;
/// M (Malformed) flag: set by a reflector on a TLV whose Length is invalid or
/// overruns the packet.
pub const FLAG_M: u8 = 0x40;
/// I (Integrity) flag: set by a reflector on every TLV when the HMAC TLV fails.
pub const FLAG_I: u8 = 0x20;
/// Reserved flag bits (MBZ).
pub const FLAGS_RESERVED: u8 = 0x1f;

/// STAMP TLV types (IANA "STAMP TLV Types"; RFC 8972 §5.1, RFC 9503 §7.1,
/// RFC 9534 §5).
pub mod tlv_type {
    /// Extra Padding (RFC 8972 §4.1).
    pub const EXTRA_PADDING: u8 = 1;
    /// Location (RFC 8972 §4.2).
    pub const LOCATION: u8 = 2;
    /// Timestamp Information (RFC 8972 §4.3).
    pub const TIMESTAMP_INFORMATION: u8 = 3;
    /// Class of Service (RFC 8972 §4.4).
    pub const CLASS_OF_SERVICE: u8 = 4;
    /// Direct Measurement (RFC 8972 §4.5).
    pub const DIRECT_MEASUREMENT: u8 = 5;
    /// Access Report (RFC 8972 §4.6).
    pub const ACCESS_REPORT: u8 = 6;
    /// Follow-Up Telemetry (RFC 8972 §4.7).
    pub const FOLLOW_UP_TELEMETRY: u8 = 7;
    /// HMAC (RFC 8972 §4.8).
    pub const HMAC: u8 = 8;
    /// Destination Node Address (RFC 9503 §3).
    pub const DESTINATION_NODE_ADDRESS: u8 = 9;
    /// Return Path (RFC 9503 §4).
    pub const RETURN_PATH: u8 = 10;
    /// Micro-session ID (RFC 9534 §3).
    pub const MICRO_SESSION_ID: u8 = 11;
    /// First private-use type (RFC 8972 §5.1: 252–254).
    pub const PRIVATE_USE_FIRST: u8 = 252;
    /// Last private-use type.
    pub const PRIVATE_USE_LAST: u8 = 254;
}

/// Whether `length` is a valid Value length for a registered `tlv_type`
/// (stamp.md §4 table). Unregistered types accept any length.
pub const fn length_valid(ty: u8, length: u16) -> bool {
    use self::tlv_type as t;
    match ty {
        t::CLASS_OF_SERVICE | t::ACCESS_REPORT | t::MICRO_SESSION_ID => length == 4,
        t::DIRECT_MEASUREMENT => length == 12,
        t::FOLLOW_UP_TELEMETRY | t::HMAC => length == 16,
        t::DESTINATION_NODE_ADDRESS => length == 4 || length == 16,
        // Fixed part of 4 octets, then optional sub-TLVs.
        t::LOCATION | t::TIMESTAMP_INFORMATION => length >= 4,
        // Value starts with the 4-octet Private Enterprise Number.
        t::PRIVATE_USE_FIRST..=t::PRIVATE_USE_LAST => length >= 4,
        _ => true,
    }
}

/// A TLV framing error; `offset` is relative to the start of the TLV area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum TlvError {
    /// Fewer than 4 octets left where a TLV header should start.
    #[error("TLV at offset {offset}: truncated header, {have} octets left of 4")]
    TruncatedHeader {
        /// Offset of the would-be TLV.
        offset: usize,
        /// Octets left.
        have: usize,
    },
    /// The Length runs past the end of the area.
    #[error("TLV type {tlv_type} at offset {offset}: Length {length} overruns the packet ({available} octets of value left)")]
    Overrun {
        /// Offset of the TLV.
        offset: usize,
        /// Its Type.
        tlv_type: u8,
        /// Its Length.
        length: u16,
        /// Octets available after its header.
        available: usize,
    },
    /// The Length is invalid for the (registered) type.
    #[error("TLV type {tlv_type} at offset {offset}: Length {length} is invalid for the type")]
    BadLength {
        /// Offset of the TLV.
        offset: usize,
        /// Its Type.
        tlv_type: u8,
        /// Its Length.
        length: u16,
    },
    /// A writer ran out of room.
    #[error("TLV at offset {offset}: needs {need} octets, {have} left")]
    NoSpace {
        /// Offset the TLV would start at.
        offset: usize,
        /// Octets the TLV needs (header + value).
        need: usize,
        /// Octets left.
        have: usize,
    },
    /// A value longer than a Length field can express.
    #[error("TLV value of {len} octets exceeds the 65535-octet maximum")]
    ValueTooLong {
        /// Value length.
        len: usize,
    },
}

impl TlvError {
    /// Offset in the area where the error was found.
    pub fn offset(&self) -> Option<usize> {
        match *self {
            TlvError::TruncatedHeader { offset, .. }
            | TlvError::Overrun { offset, .. }
            | TlvError::BadLength { offset, .. }
            | TlvError::NoSpace { offset, .. } => Some(offset),
            TlvError::ValueTooLong { .. } => None,
        }
    }
}

/// A zero-copy view of one TLV (header and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tlv<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Tlv { buffer }
    }

    /// Wraps a buffer, checking that it holds the header and the whole value
    /// (not the registry length rules; see [`length_valid`]).
    pub fn new_checked(buffer: T) -> Result<Self, TlvError> {
        let t = Self::new_unchecked(buffer);
        t.check_len()?;
        Ok(t)
    }

    /// Checks that the buffer holds the header and `Length` value octets.
    pub fn check_len(&self) -> Result<(), TlvError> {
        header_at(self.buffer.as_ref(), 0, false).map(|_| ())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// STAMP TLV Flags octet.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// U flag.
    pub fn unrecognized(&self) -> bool {
        self.flags() & FLAG_U != 0
    }

    /// M flag.
    pub fn malformed(&self) -> bool {
        self.flags() & FLAG_M != 0
    }

    /// I flag.
    pub fn integrity_failed(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// Type.
    pub fn tlv_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Length of the value.
    pub fn length(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::LENGTH.start], b[field::LENGTH.start + 1]])
    }

    /// Header plus value length.
    pub fn total_len(&self) -> usize {
        field::HEADER_LEN + usize::from(self.length())
    }

    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tlv<T> {
    /// Sets the Flags octet.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        let f = self.flags();
        self.set_flags(if on { f | flag } else { f & !flag });
    }

    /// Sets or clears U.
    pub fn set_unrecognized(&mut self, on: bool) {
        self.set_flag(FLAG_U, on);
    }

    /// Sets or clears M.
    pub fn set_malformed(&mut self, on: bool) {
        self.set_flag(FLAG_M, on);
    }

    /// Sets or clears I.
    pub fn set_integrity_failed(&mut self, on: bool) {
        self.set_flag(FLAG_I, on);
    }

    /// Sets the Type.
    pub fn set_tlv_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    /// Sets the Length.
    pub fn set_length(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// The value, writable.
    pub fn value_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[field::HEADER_LEN..end]
    }
}

/// The header fields of a TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlvRepr {
    /// Flags octet.
    pub flags: u8,
    /// Type.
    pub tlv_type: u8,
    /// Length of the value.
    pub length: u16,
}

impl TlvRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(tlv: &Tlv<T>) -> Result<Self, TlvError> {
        tlv.check_len()?;
        Ok(TlvRepr {
            flags: tlv.flags(),
            tlv_type: tlv.tlv_type(),
            length: tlv.length(),
        })
    }

    /// Header plus value length.
    pub fn buffer_len(&self) -> usize {
        field::HEADER_LEN + usize::from(self.length)
    }

    /// Writes the header; the value is the caller's.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, tlv: &mut Tlv<T>) -> Result<(), TlvError> {
        let have = tlv.buffer.as_ref().len();
        if have < self.buffer_len() {
            return Err(TlvError::NoSpace {
                offset: 0,
                need: self.buffer_len(),
                have,
            });
        }
        tlv.set_flags(self.flags);
        tlv.set_tlv_type(self.tlv_type);
        tlv.set_length(self.length);
        Ok(())
    }
}

/// Reads the TLV header at `pos`: its type and total length, or why the
/// framing is broken there.
fn header_at(area: &[u8], pos: usize, registry: bool) -> Result<(u8, usize), TlvError> {
    let rest = area.get(pos..).unwrap_or(&[]);
    if rest.len() < field::HEADER_LEN {
        return Err(TlvError::TruncatedHeader {
            offset: pos,
            have: rest.len(),
        });
    }
    let tlv_type = rest[field::TYPE];
    let length = u16::from_be_bytes([rest[field::LENGTH.start], rest[field::LENGTH.start + 1]]);
    let available = rest.len() - field::HEADER_LEN;
    if usize::from(length) > available {
        return Err(TlvError::Overrun {
            offset: pos,
            tlv_type,
            length,
            available,
        });
    }
    if registry && !length_valid(tlv_type, length) {
        return Err(TlvError::BadLength {
            offset: pos,
            tlv_type,
            length,
        });
    }
    Ok((tlv_type, field::HEADER_LEN + usize::from(length)))
}

/// Iterates over the TLVs of an area; yields an error for the first
/// malformed entry and then stops.
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    area: &'a [u8],
    pos: usize,
    registry: bool,
    done: bool,
}

impl<'a> TlvIter<'a> {
    /// Iterates over the TLVs after a STAMP base packet, checking Lengths of
    /// registered types against [`length_valid`].
    pub fn new(area: &'a [u8]) -> Self {
        TlvIter {
            area,
            pos: 0,
            registry: true,
            done: false,
        }
    }

    /// Iterates checking only the framing (for sub-TLVs, whose types are a
    /// different registry).
    pub fn framing_only(area: &'a [u8]) -> Self {
        TlvIter {
            registry: false,
            ..Self::new(area)
        }
    }

    /// Offset of the next TLV in the area.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<&'a [u8]>, TlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.area.len() {
            return None;
        }
        match header_at(self.area, self.pos, self.registry) {
            Ok((_, total)) => {
                let start = self.pos;
                self.pos += total;
                Some(Ok(Tlv::new_unchecked(&self.area[start..self.pos])))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl core::iter::FusedIterator for TlvIter<'_> {}

/// Writes TLVs one after the other into a buffer.
#[derive(Debug)]
pub struct TlvWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> TlvWriter<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        TlvWriter { buf, pos: 0 }
    }

    /// Octets written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Octets left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends a header and a zeroed value of `length` octets; returns the
    /// value to fill in.
    pub fn reserve(&mut self, flags: u8, tlv_type: u8, length: u16) -> Result<&mut [u8], TlvError> {
        let need = field::HEADER_LEN + usize::from(length);
        if need > self.remaining() {
            return Err(TlvError::NoSpace {
                offset: self.pos,
                need,
                have: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += need;
        let mut tlv = Tlv::new_unchecked(&mut self.buf[start..start + need]);
        tlv.set_flags(flags);
        tlv.set_tlv_type(tlv_type);
        tlv.set_length(length);
        let value = &mut self.buf[start + field::HEADER_LEN..start + need];
        value.fill(0);
        Ok(value)
    }

    /// Appends a TLV with `value`.
    pub fn push(&mut self, flags: u8, tlv_type: u8, value: &[u8]) -> Result<(), TlvError> {
        let length =
            u16::try_from(value.len()).map_err(|_| TlvError::ValueTooLong { len: value.len() })?;
        self.reserve(flags, tlv_type, length)?
            .copy_from_slice(value);
        Ok(())
    }

    /// Octets written.
    pub fn finish(self) -> usize {
        self.pos
    }
}

/// Where a TLV handed to a [`TlvHandler`] sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlvEntry {
    /// Offset of its header in the area.
    pub offset: usize,
    /// Its Flags octet as received.
    pub flags: u8,
    /// Its Type.
    pub tlv_type: u8,
}

/// What a handler did with a recognised TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlvVerdict {
    /// Processed: U is cleared.
    Processed,
    /// The handler cannot act on it after all (e.g. RFC 9503 Destination
    /// Node Address not ours): U is set. The handler must have left the
    /// value unchanged.
    Unrecognized,
    /// The value is malformed for its type: M is set and processing stops.
    Malformed,
}

/// The per-type semantics plugged into [`process_tlvs_in_place`].
pub trait TlvHandler {
    /// Whether this reflector implements `tlv_type`. Types it does not are
    /// flagged U = 1 and copied unchanged; [`TlvHandler::process`] is not
    /// called for them.
    fn recognises(&self, tlv_type: u8) -> bool;

    /// Processes one recognised, well-framed TLV in place. `value` has the
    /// TLV's Length, which cannot change (the reply never grows).
    fn process(&mut self, entry: &TlvEntry, value: &mut [u8]) -> TlvVerdict;
}

/// A handler for a reflector that implements the framing only: Extra
/// Padding is recognised (it needs no processing, RFC 8972 §4.1), every
/// other type is unrecognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FramingOnly;

impl TlvHandler for FramingOnly {
    fn recognises(&self, tlv_type: u8) -> bool {
        tlv_type == tlv_type::EXTRA_PADDING
    }

    fn process(&mut self, _entry: &TlvEntry, _value: &mut [u8]) -> TlvVerdict {
        TlvVerdict::Processed
    }
}

/// What [`process_tlvs_in_place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TlvSummary {
    /// TLVs processed (U cleared).
    pub processed: usize,
    /// TLVs flagged U = 1.
    pub unrecognized: usize,
    /// Offset of the TLV flagged M = 1, where processing stopped.
    pub malformed_at: Option<usize>,
}

/// The reflector's RFC 8972 §4 framing pass over the TLV area of a reply
/// (the octets after the base packet, already copied from the request).
///
/// For each TLV in order:
/// * framing broken (fewer than 4 octets left, Length past the end, or a
///   Length invalid for a registered type, [`length_valid`]) → M = 1 on it
///   and stop; the rest of the area stays as received;
/// * type not [recognised](TlvHandler::recognises) → U = 1, value unchanged;
/// * otherwise [`TlvHandler::process`] decides: U cleared, U set, or M set
///   and stop.
///
/// Never panics and never changes the length of `area`.
pub fn process_tlvs_in_place<H: TlvHandler + ?Sized>(
    area: &mut [u8],
    handler: &mut H,
) -> TlvSummary {
    let mut summary = TlvSummary::default();
    let mut pos = 0;
    while pos < area.len() {
        let (tlv_type, total) = match header_at(area, pos, true) {
            Ok(h) => h,
            Err(_) => {
                area[pos] |= FLAG_M;
                summary.malformed_at = Some(pos);
                break;
            }
        };
        let entry = TlvEntry {
            offset: pos,
            flags: area[pos],
            tlv_type,
        };
        let verdict = if handler.recognises(tlv_type) {
            handler.process(&entry, &mut area[pos + field::HEADER_LEN..pos + total])
        } else {
            TlvVerdict::Unrecognized
        };
        match verdict {
            TlvVerdict::Processed => {
                area[pos] &= !FLAG_U;
                summary.processed += 1;
            }
            TlvVerdict::Unrecognized => {
                area[pos] |= FLAG_U;
                summary.unrecognized += 1;
            }
            TlvVerdict::Malformed => {
                area[pos] |= FLAG_M;
                summary.malformed_at = Some(pos);
                break;
            }
        }
        pos += total;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lengths() {
        assert!(length_valid(tlv_type::CLASS_OF_SERVICE, 4));
        assert!(!length_valid(tlv_type::ACCESS_REPORT, 2));
        assert!(length_valid(tlv_type::DIRECT_MEASUREMENT, 12));
        assert!(!length_valid(tlv_type::HMAC, 32));
        assert!(length_valid(tlv_type::DESTINATION_NODE_ADDRESS, 16));
        assert!(!length_valid(tlv_type::DESTINATION_NODE_ADDRESS, 8));
        assert!(!length_valid(tlv_type::LOCATION, 3));
        assert!(length_valid(tlv_type::EXTRA_PADDING, 0));
        assert!(!length_valid(253, 3));
        assert!(length_valid(240, 2));
    }

    #[test]
    fn view_setters() {
        let mut b = [0u8; 6];
        let mut t = Tlv::new_unchecked(&mut b[..]);
        t.set_tlv_type(tlv_type::EXTRA_PADDING);
        t.set_length(2);
        t.set_unrecognized(true);
        t.set_integrity_failed(true);
        t.value_mut().copy_from_slice(&[7, 8]);
        t.set_integrity_failed(false);
        assert_eq!(b, [FLAG_U, 1, 0, 2, 7, 8]);
        let t = Tlv::new_checked(&b[..]).unwrap();
        assert!(t.unrecognized() && !t.malformed() && !t.integrity_failed());
        assert_eq!(t.value(), &[7, 8]);
    }
}
