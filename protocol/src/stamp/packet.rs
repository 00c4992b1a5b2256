//! STAMP base packets (RFC 8762 §4.2–§4.3, with the RFC 8972 §3 SSID):
//! zero-copy views and `Repr`s.
//!
//! | Packet | Unauthenticated | Authenticated |
//! |--------|----------------:|--------------:|
//! | Session-Sender | 44 | 112 |
//! | Session-Reflector | 44 | 112 |
//!
//! RFC 8972 TLVs follow the base packet ([`super::tlv`]). Authenticated STAMP
//! is **not** encrypted: the HMAC-SHA-256-128 at octets 96–111 covers octets
//! 0–95 in clear (RFC 8762 §4.4); the caller computes it. The reflector field
//! offsets equal those of the TWAMP reflector layouts
//! ([`crate::twamp_test::packet::field`]), plus the SSID in the former MBZ.

use super::super::twamp_test::packet::{field as twamp, Field};
use super::super::twamp_test::{
    decode_timestamp, get_8, get_u16, get_u32, put_8, put_u16, put_u32,
};
use crate::error::WireError;
use crate::time::{ErrorEstimate, Timestamp};

/// Octet offsets of every STAMP base layout, as named constants.
pub mod field {
    use super::twamp;
    use super::Field;

    /// Session-Sender, unauthenticated (RFC 8762 §4.2.1, RFC 8972 §3).
    pub mod sender {
        use super::Field;
        /// Sequence Number.
        pub const SEQ: Field = 0..4;
        /// Timestamp.
        pub const TIMESTAMP: Field = 4..12;
        /// Error Estimate.
        pub const ERROR_ESTIMATE: Field = 12..14;
        /// SSID (RFC 8972; MBZ in plain RFC 8762).
        pub const SSID: Field = 14..16;
        /// MBZ.
        pub const MBZ: Field = 16..44;
        /// Base length; TLVs follow.
        pub const BASE_LEN: usize = 44;
    }

    /// Session-Sender, authenticated (RFC 8762 §4.2.2, RFC 8972 §3).
    pub mod auth_sender {
        use super::Field;
        /// Sequence Number.
        pub const SEQ: Field = 0..4;
        /// MBZ.
        pub const MBZ_1: Field = 4..16;
        /// Timestamp.
        pub const TIMESTAMP: Field = 16..24;
        /// Error Estimate.
        pub const ERROR_ESTIMATE: Field = 24..26;
        /// SSID (RFC 8972).
        pub const SSID: Field = 26..28;
        /// MBZ.
        pub const MBZ_2: Field = 28..96;
        /// HMAC-SHA-256 truncated to 128 bits.
        pub const HMAC: Field = 96..112;
        /// Octets the HMAC covers.
        pub const HMAC_COVERAGE: Field = 0..96;
        /// Base length; TLVs follow.
        pub const BASE_LEN: usize = 112;
    }

    /// Session-Reflector, unauthenticated (RFC 8762 §4.3.1, RFC 8972 §3).
    pub mod reflector {
        use super::{twamp, Field};
        /// Sequence Number (stateless: copied; stateful: own counter).
        pub const SEQ: Field = twamp::reflector::SEQ;
        /// Timestamp (T3).
        pub const TIMESTAMP: Field = twamp::reflector::TIMESTAMP;
        /// Error Estimate covering T2 and T3.
        pub const ERROR_ESTIMATE: Field = twamp::reflector::ERROR_ESTIMATE;
        /// SSID (copied from the sender).
        pub const SSID: Field = 14..16;
        /// Receive Timestamp (T2).
        pub const RECEIVE_TIMESTAMP: Field = twamp::reflector::RECEIVE_TIMESTAMP;
        /// Session-Sender Sequence Number.
        pub const SENDER_SEQ: Field = twamp::reflector::SENDER_SEQ;
        /// Session-Sender Timestamp.
        pub const SENDER_TIMESTAMP: Field = twamp::reflector::SENDER_TIMESTAMP;
        /// Session-Sender Error Estimate.
        pub const SENDER_ERROR_ESTIMATE: Field = twamp::reflector::SENDER_ERROR_ESTIMATE;
        /// MBZ.
        pub const MBZ_1: Field = twamp::reflector::MBZ_2;
        /// Session-Sender TTL.
        pub const SENDER_TTL: usize = twamp::reflector::SENDER_TTL;
        /// MBZ.
        pub const MBZ_2: Field = 41..44;
        /// Base length; TLVs follow.
        pub const BASE_LEN: usize = 44;
    }

    /// Session-Reflector, authenticated (RFC 8762 §4.3.2, RFC 8972 §3).
    pub mod auth_reflector {
        use super::{twamp, Field};
        /// Sequence Number.
        pub const SEQ: Field = twamp::auth_reflector::SEQ;
        /// MBZ.
        pub const MBZ_1: Field = twamp::auth_reflector::MBZ_1;
        /// Timestamp (T3).
        pub const TIMESTAMP: Field = twamp::auth_reflector::TIMESTAMP;
        /// Error Estimate covering T2 and T3.
        pub const ERROR_ESTIMATE: Field = twamp::auth_reflector::ERROR_ESTIMATE;
        /// SSID (copied from the sender).
        pub const SSID: Field = 26..28;
        /// MBZ.
        pub const MBZ_2: Field = 28..32;
        /// Receive Timestamp (T2).
        pub const RECEIVE_TIMESTAMP: Field = twamp::auth_reflector::RECEIVE_TIMESTAMP;
        /// MBZ.
        pub const MBZ_3: Field = twamp::auth_reflector::MBZ_3;
        /// Session-Sender Sequence Number.
        pub const SENDER_SEQ: Field = twamp::auth_reflector::SENDER_SEQ;
        /// MBZ.
        pub const MBZ_4: Field = twamp::auth_reflector::MBZ_4;
        /// Session-Sender Timestamp.
        pub const SENDER_TIMESTAMP: Field = twamp::auth_reflector::SENDER_TIMESTAMP;
        /// Session-Sender Error Estimate.
        pub const SENDER_ERROR_ESTIMATE: Field = twamp::auth_reflector::SENDER_ERROR_ESTIMATE;
        /// MBZ.
        pub const MBZ_5: Field = twamp::auth_reflector::MBZ_5;
        /// Session-Sender TTL.
        pub const SENDER_TTL: usize = twamp::auth_reflector::SENDER_TTL;
        /// MBZ.
        pub const MBZ_6: Field = twamp::auth_reflector::MBZ_6;
        /// HMAC-SHA-256 truncated to 128 bits.
        pub const HMAC: Field = twamp::auth_reflector::HMAC;
        /// Octets the HMAC covers.
        pub const HMAC_COVERAGE: Field = 0..96;
        /// Base length; TLVs follow.
        pub const BASE_LEN: usize = 112;
    }
}

/// Unauthenticated or authenticated STAMP (RFC 8762 §4.2, §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StampLayout {
    /// 44-octet base packets.
    #[default]
    Unauthenticated,
    /// 112-octet base packets with HMAC-SHA-256-128 over octets 0–95.
    Authenticated,
}

impl StampLayout {
    /// Base packet length (sender and reflector): 44 or 112. TLVs start here
    /// (RFC 8972 §4; stamp.md §3 rule 4).
    pub const fn base_len(self) -> usize {
        match self {
            StampLayout::Unauthenticated => field::sender::BASE_LEN,
            StampLayout::Authenticated => field::auth_sender::BASE_LEN,
        }
    }

    /// Offset of the SSID in sender and reflector packets: 14 or 26.
    pub const fn ssid_offset(self) -> usize {
        match self {
            StampLayout::Unauthenticated => field::sender::SSID.start,
            StampLayout::Authenticated => field::auth_sender::SSID.start,
        }
    }

    /// Offset of T3 in reflector packets: 4 or 16.
    pub const fn t3_offset(self) -> usize {
        self.reflector().timestamp
    }

    const fn sender(self) -> &'static SenderOffsets {
        match self {
            StampLayout::Unauthenticated => &UNAUTH_SENDER,
            StampLayout::Authenticated => &AUTH_SENDER,
        }
    }

    const fn reflector(self) -> &'static ReflectorOffsets {
        match self {
            StampLayout::Unauthenticated => &UNAUTH_REFLECTOR,
            StampLayout::Authenticated => &AUTH_REFLECTOR,
        }
    }
}

const HMAC_LEN: usize = 16;

#[derive(Debug)]
struct SenderOffsets {
    what: &'static str,
    seq: usize,
    timestamp: usize,
    error_estimate: usize,
    ssid: usize,
    hmac: Option<usize>,
    mbz: &'static [Field],
}

const UNAUTH_SENDER: SenderOffsets = {
    use field::sender as f;
    SenderOffsets {
        what: "STAMP sender packet (unauthenticated)",
        seq: f::SEQ.start,
        timestamp: f::TIMESTAMP.start,
        error_estimate: f::ERROR_ESTIMATE.start,
        ssid: f::SSID.start,
        hmac: None,
        mbz: &[f::MBZ],
    }
};

const AUTH_SENDER: SenderOffsets = {
    use field::auth_sender as f;
    SenderOffsets {
        what: "STAMP sender packet (authenticated)",
        seq: f::SEQ.start,
        timestamp: f::TIMESTAMP.start,
        error_estimate: f::ERROR_ESTIMATE.start,
        ssid: f::SSID.start,
        hmac: Some(f::HMAC.start),
        mbz: &[f::MBZ_1, f::MBZ_2],
    }
};

#[derive(Debug)]
struct ReflectorOffsets {
    what: &'static str,
    seq: usize,
    timestamp: usize,
    error_estimate: usize,
    ssid: usize,
    receive_timestamp: usize,
    sender_seq: usize,
    sender_timestamp: usize,
    sender_error_estimate: usize,
    sender_ttl: usize,
    hmac: Option<usize>,
    mbz: &'static [Field],
}

const UNAUTH_REFLECTOR: ReflectorOffsets = {
    use field::reflector as f;
    ReflectorOffsets {
        what: "STAMP reflector packet (unauthenticated)",
        seq: f::SEQ.start,
        timestamp: f::TIMESTAMP.start,
        error_estimate: f::ERROR_ESTIMATE.start,
        ssid: f::SSID.start,
        receive_timestamp: f::RECEIVE_TIMESTAMP.start,
        sender_seq: f::SENDER_SEQ.start,
        sender_timestamp: f::SENDER_TIMESTAMP.start,
        sender_error_estimate: f::SENDER_ERROR_ESTIMATE.start,
        sender_ttl: f::SENDER_TTL,
        hmac: None,
        mbz: &[f::MBZ_1, f::MBZ_2],
    }
};

const AUTH_REFLECTOR: ReflectorOffsets = {
    use field::auth_reflector as f;
    ReflectorOffsets {
        what: "STAMP reflector packet (authenticated)",
        seq: f::SEQ.start,
        timestamp: f::TIMESTAMP.start,
        error_estimate: f::ERROR_ESTIMATE.start,
        ssid: f::SSID.start,
        receive_timestamp: f::RECEIVE_TIMESTAMP.start,
        sender_seq: f::SENDER_SEQ.start,
        sender_timestamp: f::SENDER_TIMESTAMP.start,
        sender_error_estimate: f::SENDER_ERROR_ESTIMATE.start,
        sender_ttl: f::SENDER_TTL,
        hmac: Some(f::HMAC.start),
        mbz: &[f::MBZ_1, f::MBZ_2, f::MBZ_3, f::MBZ_4, f::MBZ_5, f::MBZ_6],
    }
};

fn all_zero(buf: &[u8], ranges: &[Field]) -> bool {
    ranges
        .iter()
        .all(|r| buf[r.clone()].iter().all(|&b| b == 0))
}

fn zero(buf: &mut [u8], ranges: &[Field]) {
    for r in ranges {
        buf[r.clone()].fill(0);
    }
}

/// A STAMP Session-Sender packet (RFC 8762 §4.2, RFC 8972 §3).
///
/// Build it with [`SenderPacket::new_checked`] on untrusted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderPacket<T: AsRef<[u8]>> {
    buffer: T,
    layout: StampLayout,
}

impl<T: AsRef<[u8]>> SenderPacket<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T, layout: StampLayout) -> Self {
        SenderPacket { buffer, layout }
    }

    /// Wraps a buffer, checking that it holds the base packet (44 or 112).
    pub fn new_checked(buffer: T, layout: StampLayout) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer, layout);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the base packet.
    pub fn check_len(&self) -> Result<(), WireError> {
        WireError::check_len(
            self.layout.sender().what,
            self.buffer.as_ref(),
            self.layout.base_len(),
        )
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The layout this view reads.
    pub fn layout(&self) -> StampLayout {
        self.layout
    }

    /// Sequence Number.
    pub fn sequence_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), self.layout.sender().seq)
    }

    /// Timestamp, raw.
    pub fn timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.layout.sender().timestamp)
    }

    /// Timestamp decoded per the Z bit of the Error Estimate.
    pub fn timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.timestamp(), self.error_estimate_raw())
    }

    /// Error Estimate, raw.
    pub fn error_estimate_raw(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.layout.sender().error_estimate)
    }

    /// Error Estimate, decoded; fails on Multiplier 0.
    pub fn error_estimate(&self) -> Result<ErrorEstimate, WireError> {
        ErrorEstimate::from_bits(self.error_estimate_raw())
    }

    /// SSID (RFC 8972 §3; 0 when unused).
    pub fn ssid(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.layout.sender().ssid)
    }

    /// The HMAC field (authenticated only).
    pub fn hmac(&self) -> Option<&[u8]> {
        let at = self.layout.sender().hmac?;
        Some(&self.buffer.as_ref()[at..at + HMAC_LEN])
    }

    /// Whether every MBZ octet is zero (a diagnostic).
    pub fn mbz_is_zero(&self) -> bool {
        all_zero(self.buffer.as_ref(), self.layout.sender().mbz)
    }

    /// The octets after the base packet: RFC 8972 TLVs (or, for an RFC 8762
    /// peer, padding).
    pub fn tlvs(&self) -> &[u8] {
        &self.buffer.as_ref()[self.layout.base_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SenderPacket<T> {
    /// Sets the Sequence Number.
    pub fn set_sequence_number(&mut self, v: u32) {
        let at = self.layout.sender().seq;
        put_u32(self.buffer.as_mut(), at, v);
    }

    /// Sets the Timestamp.
    pub fn set_timestamp(&mut self, v: [u8; 8]) {
        let at = self.layout.sender().timestamp;
        put_8(self.buffer.as_mut(), at, v);
    }

    /// Sets the Error Estimate.
    pub fn set_error_estimate_raw(&mut self, v: u16) {
        let at = self.layout.sender().error_estimate;
        put_u16(self.buffer.as_mut(), at, v);
    }

    /// Sets the SSID.
    pub fn set_ssid(&mut self, v: u16) {
        let at = self.layout.sender().ssid;
        put_u16(self.buffer.as_mut(), at, v);
    }

    /// Zeroes every MBZ octet.
    pub fn clear_mbz(&mut self) {
        let mbz = self.layout.sender().mbz;
        zero(self.buffer.as_mut(), mbz);
    }

    /// The HMAC field, writable (authenticated only).
    pub fn hmac_mut(&mut self) -> Option<&mut [u8]> {
        let at = self.layout.sender().hmac?;
        Some(&mut self.buffer.as_mut()[at..at + HMAC_LEN])
    }

    /// The TLV area, writable.
    pub fn tlvs_mut(&mut self) -> &mut [u8] {
        let at = self.layout.base_len();
        &mut self.buffer.as_mut()[at..]
    }
}

/// The fields of a STAMP Session-Sender packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenderRepr {
    /// Sequence Number.
    pub sequence_number: u32,
    /// Timestamp, raw.
    pub timestamp: [u8; 8],
    /// Error Estimate, raw.
    pub error_estimate: u16,
    /// SSID (0 when unused).
    pub ssid: u16,
    /// Length of the TLV area after the base packet.
    pub tlv_len: usize,
}

impl SenderRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(packet: &SenderPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(SenderRepr {
            sequence_number: packet.sequence_number(),
            timestamp: packet.timestamp(),
            error_estimate: packet.error_estimate_raw(),
            ssid: packet.ssid(),
            tlv_len: packet.tlvs().len(),
        })
    }

    /// Total packet length in `layout`.
    pub fn buffer_len(&self, layout: StampLayout) -> usize {
        layout.base_len().saturating_add(self.tlv_len)
    }

    /// Writes the base packet, zeroing MBZ and the HMAC field (computed by
    /// the caller afterwards); the TLV area is left as it is.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut SenderPacket<T>,
    ) -> Result<(), WireError> {
        WireError::check_len(
            packet.layout.sender().what,
            packet.buffer.as_ref(),
            self.buffer_len(packet.layout),
        )?;
        packet.set_sequence_number(self.sequence_number);
        packet.set_timestamp(self.timestamp);
        packet.set_error_estimate_raw(self.error_estimate);
        packet.set_ssid(self.ssid);
        packet.clear_mbz();
        if let Some(h) = packet.hmac_mut() {
            h.fill(0);
        }
        Ok(())
    }
}

/// A STAMP Session-Reflector packet (RFC 8762 §4.3, RFC 8972 §3).
///
/// Build it with [`ReflectorPacket::new_checked`] on untrusted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectorPacket<T: AsRef<[u8]>> {
    buffer: T,
    layout: StampLayout,
}

impl<T: AsRef<[u8]>> ReflectorPacket<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T, layout: StampLayout) -> Self {
        ReflectorPacket { buffer, layout }
    }

    /// Wraps a buffer, checking that it holds the base packet (44 or 112).
    pub fn new_checked(buffer: T, layout: StampLayout) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer, layout);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the base packet.
    pub fn check_len(&self) -> Result<(), WireError> {
        WireError::check_len(
            self.layout.reflector().what,
            self.buffer.as_ref(),
            self.layout.base_len(),
        )
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The layout this view reads.
    pub fn layout(&self) -> StampLayout {
        self.layout
    }

    fn o(&self) -> &'static ReflectorOffsets {
        self.layout.reflector()
    }

    /// Sequence Number (the reflector's).
    pub fn sequence_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), self.o().seq)
    }

    /// Timestamp (T3), raw.
    pub fn timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.o().timestamp)
    }

    /// T3 decoded per the Z bit of the reflector's Error Estimate.
    pub fn timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.timestamp(), self.error_estimate_raw())
    }

    /// Error Estimate covering T2 and T3, raw.
    pub fn error_estimate_raw(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.o().error_estimate)
    }

    /// Error Estimate covering T2 and T3, decoded.
    pub fn error_estimate(&self) -> Result<ErrorEstimate, WireError> {
        ErrorEstimate::from_bits(self.error_estimate_raw())
    }

    /// SSID.
    pub fn ssid(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.o().ssid)
    }

    /// Receive Timestamp (T2), raw.
    pub fn receive_timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.o().receive_timestamp)
    }

    /// T2 decoded per the Z bit of the reflector's Error Estimate.
    pub fn receive_timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.receive_timestamp(), self.error_estimate_raw())
    }

    /// Session-Sender Sequence Number.
    pub fn sender_sequence_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), self.o().sender_seq)
    }

    /// Session-Sender Timestamp, raw.
    pub fn sender_timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.o().sender_timestamp)
    }

    /// Session-Sender Timestamp decoded per the Z bit of the Session-Sender
    /// Error Estimate.
    pub fn sender_timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.sender_timestamp(), self.sender_error_estimate_raw())
    }

    /// Session-Sender Error Estimate, raw.
    pub fn sender_error_estimate_raw(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.o().sender_error_estimate)
    }

    /// Session-Sender TTL.
    pub fn sender_ttl(&self) -> u8 {
        self.buffer.as_ref()[self.o().sender_ttl]
    }

    /// The HMAC field (authenticated only).
    pub fn hmac(&self) -> Option<&[u8]> {
        let at = self.o().hmac?;
        Some(&self.buffer.as_ref()[at..at + HMAC_LEN])
    }

    /// Whether every MBZ octet is zero (a diagnostic).
    pub fn mbz_is_zero(&self) -> bool {
        all_zero(self.buffer.as_ref(), self.o().mbz)
    }

    /// The TLV area after the base packet.
    pub fn tlvs(&self) -> &[u8] {
        &self.buffer.as_ref()[self.layout.base_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ReflectorPacket<T> {
    /// Sets the Sequence Number.
    pub fn set_sequence_number(&mut self, v: u32) {
        let at = self.o().seq;
        put_u32(self.buffer.as_mut(), at, v);
    }

    /// Sets the Timestamp (T3).
    pub fn set_timestamp(&mut self, v: [u8; 8]) {
        let at = self.o().timestamp;
        put_8(self.buffer.as_mut(), at, v);
    }

    /// Sets the Error Estimate.
    pub fn set_error_estimate_raw(&mut self, v: u16) {
        let at = self.o().error_estimate;
        put_u16(self.buffer.as_mut(), at, v);
    }

    /// Sets the SSID.
    pub fn set_ssid(&mut self, v: u16) {
        let at = self.o().ssid;
        put_u16(self.buffer.as_mut(), at, v);
    }

    /// Sets the Receive Timestamp (T2).
    pub fn set_receive_timestamp(&mut self, v: [u8; 8]) {
        let at = self.o().receive_timestamp;
        put_8(self.buffer.as_mut(), at, v);
    }

    /// Sets the Session-Sender Sequence Number.
    pub fn set_sender_sequence_number(&mut self, v: u32) {
        let at = self.o().sender_seq;
        put_u32(self.buffer.as_mut(), at, v);
    }

    /// Sets the Session-Sender Timestamp.
    pub fn set_sender_timestamp(&mut self, v: [u8; 8]) {
        let at = self.o().sender_timestamp;
        put_8(self.buffer.as_mut(), at, v);
    }

    /// Sets the Session-Sender Error Estimate.
    pub fn set_sender_error_estimate_raw(&mut self, v: u16) {
        let at = self.o().sender_error_estimate;
        put_u16(self.buffer.as_mut(), at, v);
    }

    /// Sets the Session-Sender TTL.
    pub fn set_sender_ttl(&mut self, v: u8) {
        let at = self.o().sender_ttl;
        self.buffer.as_mut()[at] = v;
    }

    /// Zeroes every MBZ octet.
    pub fn clear_mbz(&mut self) {
        let mbz = self.o().mbz;
        zero(self.buffer.as_mut(), mbz);
    }

    /// The HMAC field, writable (authenticated only).
    pub fn hmac_mut(&mut self) -> Option<&mut [u8]> {
        let at = self.o().hmac?;
        Some(&mut self.buffer.as_mut()[at..at + HMAC_LEN])
    }

    /// The TLV area, writable.
    pub fn tlvs_mut(&mut self) -> &mut [u8] {
        let at = self.layout.base_len();
        &mut self.buffer.as_mut()[at..]
    }
}

/// The fields of a STAMP Session-Reflector packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReflectorRepr {
    /// Sequence Number (the reflector's).
    pub sequence_number: u32,
    /// Timestamp (T3), raw.
    pub timestamp: [u8; 8],
    /// Error Estimate covering T2 and T3, raw.
    pub error_estimate: u16,
    /// SSID.
    pub ssid: u16,
    /// Receive Timestamp (T2), raw.
    pub receive_timestamp: [u8; 8],
    /// Session-Sender Sequence Number.
    pub sender_sequence_number: u32,
    /// Session-Sender Timestamp, raw.
    pub sender_timestamp: [u8; 8],
    /// Session-Sender Error Estimate, raw.
    pub sender_error_estimate: u16,
    /// Session-Sender TTL.
    pub sender_ttl: u8,
    /// Length of the TLV area after the base packet.
    pub tlv_len: usize,
}

impl ReflectorRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(packet: &ReflectorPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(ReflectorRepr {
            sequence_number: packet.sequence_number(),
            timestamp: packet.timestamp(),
            error_estimate: packet.error_estimate_raw(),
            ssid: packet.ssid(),
            receive_timestamp: packet.receive_timestamp(),
            sender_sequence_number: packet.sender_sequence_number(),
            sender_timestamp: packet.sender_timestamp(),
            sender_error_estimate: packet.sender_error_estimate_raw(),
            sender_ttl: packet.sender_ttl(),
            tlv_len: packet.tlvs().len(),
        })
    }

    /// Total packet length in `layout`.
    pub fn buffer_len(&self, layout: StampLayout) -> usize {
        layout.base_len().saturating_add(self.tlv_len)
    }

    /// Writes the base packet, zeroing MBZ and the HMAC field; the TLV area is
    /// left as it is.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut ReflectorPacket<T>,
    ) -> Result<(), WireError> {
        WireError::check_len(
            packet.o().what,
            packet.buffer.as_ref(),
            self.buffer_len(packet.layout),
        )?;
        packet.set_sequence_number(self.sequence_number);
        packet.set_timestamp(self.timestamp);
        packet.set_error_estimate_raw(self.error_estimate);
        packet.set_ssid(self.ssid);
        packet.set_receive_timestamp(self.receive_timestamp);
        packet.set_sender_sequence_number(self.sender_sequence_number);
        packet.set_sender_timestamp(self.sender_timestamp);
        packet.set_sender_error_estimate_raw(self.sender_error_estimate);
        packet.set_sender_ttl(self.sender_ttl);
        packet.clear_mbz();
        if let Some(h) = packet.hmac_mut() {
            h.fill(0);
        }
        Ok(())
    }
}
