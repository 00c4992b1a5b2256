//! TWAMP-Test packet layouts: zero-copy views and `Repr`s.
//!
//! | Packet | Layout | Header | Where |
//! |--------|--------|-------:|-------|
//! | Session-Sender | unauthenticated / mixed | 14 | RFC 4656 §4.1.2, RFC 5357 §4.1.2 |
//! | Session-Sender | authenticated / encrypted | 48 | RFC 4656 §4.1.2, RFC 5357 §4.1.2 |
//! | Session-Reflector | unauthenticated / mixed | 41 (44 with RFC 7750) | RFC 5357 §4.2.1, RFC 7750 §3 |
//! | Session-Reflector | authenticated / encrypted | 112 | RFC 5357 §4.2.1 (figure), RFC 7750 §3 |
//!
//! The authenticated/encrypted reflector header is 112 octets although the
//! RFC 5357 text says 104: the RFC figure, perfSONAR and the wire all use 112
//! (twamp-test.md §3.2). Every layout here is the plaintext one; see the
//! module documentation of [`crate::twamp_test`] for what the caller encrypts
//! and authenticates.
//!
//! Timestamps are kept as their 8 raw octets and Error Estimates as raw `u16`,
//! because a reflector copies the sender's verbatim whatever they say; the
//! `*_decoded` / `error_estimate` accessors interpret them. MBZ octets are
//! ignored on parse (checkable with `mbz_is_zero`) and zeroed on emit.

use core::ops::Range;

use super::{decode_timestamp, get_8, get_u16, get_u32, put_8, put_u16, put_u32};
use crate::error::WireError;
use crate::time::{ErrorEstimate, Timestamp};

/// A range of octets within a packet.
pub type Field = Range<usize>;

/// Octet offsets of every layout, as named constants.
pub mod field {
    /// Session-Sender, unauthenticated and mixed modes (RFC 5357 §4.1.2).
    pub mod sender {
        use super::super::Field;
        /// Sequence Number.
        pub const SEQ: Field = 0..4;
        /// Timestamp (T1).
        pub const TIMESTAMP: Field = 4..12;
        /// Error Estimate.
        pub const ERROR_ESTIMATE: Field = 12..14;
        /// Header length; Packet Padding follows.
        pub const HEADER_LEN: usize = 14;
    }

    /// Session-Sender, authenticated and encrypted modes (RFC 5357 §4.1.2,
    /// RFC 4656 §4.1.2).
    pub mod auth_sender {
        use super::super::Field;
        /// Sequence Number.
        pub const SEQ: Field = 0..4;
        /// MBZ (first block).
        pub const MBZ_1: Field = 4..16;
        /// Timestamp (T1).
        pub const TIMESTAMP: Field = 16..24;
        /// Error Estimate.
        pub const ERROR_ESTIMATE: Field = 24..26;
        /// MBZ (second block).
        pub const MBZ_2: Field = 26..32;
        /// HMAC-SHA1-128, never encrypted.
        pub const HMAC: Field = 32..48;
        /// Octets the HMAC covers in authenticated mode (block 0, AES-ECB).
        pub const HMAC_COVERAGE_AUTHENTICATED: Field = 0..16;
        /// Octets the HMAC covers in encrypted mode (blocks 0–1, AES-CBC IV 0).
        pub const HMAC_COVERAGE_ENCRYPTED: Field = 0..32;
        /// Header length; Packet Padding follows.
        pub const HEADER_LEN: usize = 48;
    }

    /// Session-Reflector, unauthenticated and mixed modes (RFC 5357 §4.2.1,
    /// RFC 7750 §3 for the DSCP/ECN octet).
    pub mod reflector {
        use super::super::Field;
        /// Sequence Number (the reflector's own counter, or copied when stateless).
        pub const SEQ: Field = 0..4;
        /// Timestamp (T3, transmit time).
        pub const TIMESTAMP: Field = 4..12;
        /// Error Estimate covering T2 and T3.
        pub const ERROR_ESTIMATE: Field = 12..14;
        /// MBZ.
        pub const MBZ_1: Field = 14..16;
        /// Receive Timestamp (T2).
        pub const RECEIVE_TIMESTAMP: Field = 16..24;
        /// Sender Sequence Number (copied).
        pub const SENDER_SEQ: Field = 24..28;
        /// Sender Timestamp (copied).
        pub const SENDER_TIMESTAMP: Field = 28..36;
        /// Sender Error Estimate (copied).
        pub const SENDER_ERROR_ESTIMATE: Field = 36..38;
        /// MBZ.
        pub const MBZ_2: Field = 38..40;
        /// Sender TTL (IPv4 TTL / IPv6 Hop Limit of the received packet).
        pub const SENDER_TTL: usize = 40;
        /// Header length without RFC 7750; Packet Padding follows.
        pub const HEADER_LEN: usize = 41;
        /// S-DSCP-ECN (RFC 7750): received DSCP (6 bits) ‖ ECN (2 bits).
        pub const S_DSCP_ECN: usize = 41;
        /// MBZ after S-DSCP-ECN (RFC 7750).
        pub const MBZ_3: Field = 42..44;
        /// Header length with RFC 7750 DSCP and ECN Monitoring.
        pub const HEADER_LEN_DSCP_ECN: usize = 44;
    }

    /// Session-Reflector, authenticated and encrypted modes (RFC 5357 §4.2.1,
    /// RFC 7750 §3).
    pub mod auth_reflector {
        use super::super::Field;
        /// Sequence Number.
        pub const SEQ: Field = 0..4;
        /// MBZ.
        pub const MBZ_1: Field = 4..16;
        /// Timestamp (T3).
        pub const TIMESTAMP: Field = 16..24;
        /// Error Estimate covering T2 and T3.
        pub const ERROR_ESTIMATE: Field = 24..26;
        /// MBZ.
        pub const MBZ_2: Field = 26..32;
        /// Receive Timestamp (T2).
        pub const RECEIVE_TIMESTAMP: Field = 32..40;
        /// MBZ.
        pub const MBZ_3: Field = 40..48;
        /// Sender Sequence Number.
        pub const SENDER_SEQ: Field = 48..52;
        /// MBZ.
        pub const MBZ_4: Field = 52..64;
        /// Sender Timestamp.
        pub const SENDER_TIMESTAMP: Field = 64..72;
        /// Sender Error Estimate.
        pub const SENDER_ERROR_ESTIMATE: Field = 72..74;
        /// MBZ.
        pub const MBZ_5: Field = 74..80;
        /// Sender TTL.
        pub const SENDER_TTL: usize = 80;
        /// MBZ after the Sender TTL without RFC 7750.
        pub const MBZ_6: Field = 81..96;
        /// S-DSCP-ECN (RFC 7750).
        pub const S_DSCP_ECN: usize = 81;
        /// MBZ after S-DSCP-ECN (RFC 7750).
        pub const MBZ_6_DSCP_ECN: Field = 82..96;
        /// HMAC-SHA1-128, never encrypted.
        pub const HMAC: Field = 96..112;
        /// Octets the HMAC covers in authenticated mode (block 0, AES-ECB).
        pub const HMAC_COVERAGE_AUTHENTICATED: Field = 0..16;
        /// Octets the HMAC covers in encrypted mode (blocks 0–5, AES-CBC IV 0).
        pub const HMAC_COVERAGE_ENCRYPTED: Field = 0..96;
        /// Header length; Packet Padding follows.
        pub const HEADER_LEN: usize = 112;
    }
}

/// Which of the two TWAMP-Test layouts a session uses.
///
/// Unauthenticated covers modes 1 (open) and 8 (mixed, RFC 5618); Authenticated
/// covers the authenticated **and** the encrypted mode, which share one layout
/// and differ only in what the caller encrypts (RFC 4656 §4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TestLayout {
    /// 14-octet sender / 41-octet reflector header.
    #[default]
    Unauthenticated,
    /// 48-octet sender / 112-octet reflector header (authenticated or encrypted).
    Authenticated,
}

impl TestLayout {
    /// Length of the Session-Sender header (14 or 48).
    pub const fn sender_header_len(self) -> usize {
        self.sender().header_len
    }

    const fn sender(self) -> &'static SenderOffsets {
        match self {
            TestLayout::Unauthenticated => &UNAUTH_SENDER,
            TestLayout::Authenticated => &AUTH_SENDER,
        }
    }
}

#[derive(Debug)]
struct SenderOffsets {
    what: &'static str,
    seq: usize,
    timestamp: usize,
    error_estimate: usize,
    hmac: Option<usize>,
    header_len: usize,
    mbz: &'static [Field],
}

const UNAUTH_SENDER: SenderOffsets = SenderOffsets {
    what: "TWAMP-Test sender packet (unauthenticated)",
    seq: field::sender::SEQ.start,
    timestamp: field::sender::TIMESTAMP.start,
    error_estimate: field::sender::ERROR_ESTIMATE.start,
    hmac: None,
    header_len: field::sender::HEADER_LEN,
    mbz: &[],
};

const AUTH_SENDER: SenderOffsets = SenderOffsets {
    what: "TWAMP-Test sender packet (authenticated/encrypted)",
    seq: field::auth_sender::SEQ.start,
    timestamp: field::auth_sender::TIMESTAMP.start,
    error_estimate: field::auth_sender::ERROR_ESTIMATE.start,
    hmac: Some(field::auth_sender::HMAC.start),
    header_len: field::auth_sender::HEADER_LEN,
    mbz: &[field::auth_sender::MBZ_1, field::auth_sender::MBZ_2],
};

const HMAC_LEN: usize = 16;

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

/// A Session-Sender packet (RFC 5357 §4.1.2) in one of the two layouts.
///
/// Build it with [`SenderPacket::new_checked`] on untrusted input: accessors
/// of a view built with `new_unchecked` on a short buffer panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderPacket<T: AsRef<[u8]>> {
    buffer: T,
    layout: TestLayout,
}

impl<T: AsRef<[u8]>> SenderPacket<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T, layout: TestLayout) -> Self {
        SenderPacket { buffer, layout }
    }

    /// Wraps a buffer, checking that it holds the whole header.
    pub fn new_checked(buffer: T, layout: TestLayout) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer, layout);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the whole header (14 or 48 octets).
    pub fn check_len(&self) -> Result<(), WireError> {
        let o = self.layout.sender();
        WireError::check_len(o.what, self.buffer.as_ref(), o.header_len)
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The layout this view reads.
    pub fn layout(&self) -> TestLayout {
        self.layout
    }

    /// Header length (14 or 48); padding starts here.
    pub fn header_len(&self) -> usize {
        self.layout.sender().header_len
    }

    /// Sequence Number.
    pub fn sequence_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), self.layout.sender().seq)
    }

    /// Timestamp (T1), 8 raw octets.
    pub fn timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.layout.sender().timestamp)
    }

    /// Timestamp decoded per the Z bit of this packet's Error Estimate.
    pub fn timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.timestamp(), self.error_estimate_raw())
    }

    /// Error Estimate, raw.
    pub fn error_estimate_raw(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.layout.sender().error_estimate)
    }

    /// Error Estimate, decoded; fails on Multiplier 0 (RFC 4656 §4.1.2).
    pub fn error_estimate(&self) -> Result<ErrorEstimate, WireError> {
        ErrorEstimate::from_bits(self.error_estimate_raw())
    }

    /// The HMAC field (authenticated/encrypted layout only).
    pub fn hmac(&self) -> Option<&[u8]> {
        let at = self.layout.sender().hmac?;
        Some(&self.buffer.as_ref()[at..at + HMAC_LEN])
    }

    /// Whether every MBZ octet is zero (RFC 4656 §4.1.2). Receivers do not
    /// reject packets on this; it is a diagnostic.
    pub fn mbz_is_zero(&self) -> bool {
        all_zero(self.buffer.as_ref(), self.layout.sender().mbz)
    }

    /// Packet Padding: every octet after the header (including, in RFC 6038
    /// sessions, the Symmetrical Size MBZ and the octets to be reflected).
    pub fn padding(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
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

    /// Zeroes every MBZ octet.
    pub fn clear_mbz(&mut self) {
        zero(self.buffer.as_mut(), self.layout.sender().mbz);
    }

    /// The HMAC field, writable (authenticated/encrypted layout only).
    pub fn hmac_mut(&mut self) -> Option<&mut [u8]> {
        let at = self.layout.sender().hmac?;
        Some(&mut self.buffer.as_mut()[at..at + HMAC_LEN])
    }

    /// Packet Padding, writable.
    pub fn padding_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

/// The fields of a Session-Sender packet (RFC 5357 §4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenderRepr {
    /// Sequence Number.
    pub sequence_number: u32,
    /// Timestamp (T1), raw.
    pub timestamp: [u8; 8],
    /// Error Estimate, raw.
    pub error_estimate: u16,
    /// Number of padding octets after the header.
    pub padding_len: usize,
}

impl SenderRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(packet: &SenderPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(SenderRepr {
            sequence_number: packet.sequence_number(),
            timestamp: packet.timestamp(),
            error_estimate: packet.error_estimate_raw(),
            padding_len: packet.padding().len(),
        })
    }

    /// Total packet length in `layout`.
    pub fn buffer_len(&self, layout: TestLayout) -> usize {
        layout.sender_header_len().saturating_add(self.padding_len)
    }

    /// Writes the header, zeroing MBZ and the HMAC field (the caller computes
    /// the HMAC afterwards). The padding octets are left as they are.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut SenderPacket<T>,
    ) -> Result<(), WireError> {
        let o = packet.layout.sender();
        WireError::check_len(
            o.what,
            packet.buffer.as_ref(),
            self.buffer_len(packet.layout),
        )?;
        packet.set_sequence_number(self.sequence_number);
        packet.set_timestamp(self.timestamp);
        packet.set_error_estimate_raw(self.error_estimate);
        packet.clear_mbz();
        if let Some(h) = packet.hmac_mut() {
            h.fill(0);
        }
        Ok(())
    }
}

/// Which reflector layout a session uses: the test layout plus whether
/// RFC 7750 DSCP and ECN Monitoring (mode bit 8) added the S-DSCP-ECN octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReflectorLayout {
    /// Unauthenticated or authenticated/encrypted.
    pub test: TestLayout,
    /// RFC 7750 DSCP and ECN Monitoring.
    pub dscp_ecn: bool,
}

impl ReflectorLayout {
    /// Unauthenticated / mixed, 41-octet header.
    pub const UNAUTHENTICATED: Self = ReflectorLayout {
        test: TestLayout::Unauthenticated,
        dscp_ecn: false,
    };
    /// Unauthenticated / mixed with RFC 7750, 44-octet header.
    pub const UNAUTHENTICATED_DSCP_ECN: Self = ReflectorLayout {
        test: TestLayout::Unauthenticated,
        dscp_ecn: true,
    };
    /// Authenticated / encrypted, 112-octet header.
    pub const AUTHENTICATED: Self = ReflectorLayout {
        test: TestLayout::Authenticated,
        dscp_ecn: false,
    };
    /// Authenticated / encrypted with RFC 7750, 112-octet header.
    pub const AUTHENTICATED_DSCP_ECN: Self = ReflectorLayout {
        test: TestLayout::Authenticated,
        dscp_ecn: true,
    };

    /// Header length: 41, 44 (unauthenticated with RFC 7750) or 112.
    pub const fn header_len(self) -> usize {
        self.offsets().header_len
    }

    /// Offset of the Timestamp (T3) field: 4 or 16.
    pub const fn t3_offset(self) -> usize {
        self.offsets().timestamp
    }

    const fn offsets(self) -> &'static ReflectorOffsets {
        match (self.test, self.dscp_ecn) {
            (TestLayout::Unauthenticated, false) => &UNAUTH_REFLECTOR,
            (TestLayout::Unauthenticated, true) => &UNAUTH_REFLECTOR_DSCP_ECN,
            (TestLayout::Authenticated, false) => &AUTH_REFLECTOR,
            (TestLayout::Authenticated, true) => &AUTH_REFLECTOR_DSCP_ECN,
        }
    }
}

#[derive(Debug)]
struct ReflectorOffsets {
    what: &'static str,
    seq: usize,
    timestamp: usize,
    error_estimate: usize,
    receive_timestamp: usize,
    sender_seq: usize,
    sender_timestamp: usize,
    sender_error_estimate: usize,
    sender_ttl: usize,
    s_dscp_ecn: Option<usize>,
    hmac: Option<usize>,
    header_len: usize,
    mbz: &'static [Field],
}

const UNAUTH_REFLECTOR: ReflectorOffsets = {
    use field::reflector as f;
    ReflectorOffsets {
        what: "TWAMP-Test reflector packet (unauthenticated)",
        seq: f::SEQ.start,
        timestamp: f::TIMESTAMP.start,
        error_estimate: f::ERROR_ESTIMATE.start,
        receive_timestamp: f::RECEIVE_TIMESTAMP.start,
        sender_seq: f::SENDER_SEQ.start,
        sender_timestamp: f::SENDER_TIMESTAMP.start,
        sender_error_estimate: f::SENDER_ERROR_ESTIMATE.start,
        sender_ttl: f::SENDER_TTL,
        s_dscp_ecn: None,
        hmac: None,
        header_len: f::HEADER_LEN,
        mbz: &[f::MBZ_1, f::MBZ_2],
    }
};

const UNAUTH_REFLECTOR_DSCP_ECN: ReflectorOffsets = {
    use field::reflector as f;
    ReflectorOffsets {
        what: "TWAMP-Test reflector packet (unauthenticated, RFC 7750)",
        s_dscp_ecn: Some(f::S_DSCP_ECN),
        header_len: f::HEADER_LEN_DSCP_ECN,
        mbz: &[f::MBZ_1, f::MBZ_2, f::MBZ_3],
        ..UNAUTH_REFLECTOR
    }
};

const AUTH_REFLECTOR: ReflectorOffsets = {
    use field::auth_reflector as f;
    ReflectorOffsets {
        what: "TWAMP-Test reflector packet (authenticated/encrypted)",
        seq: f::SEQ.start,
        timestamp: f::TIMESTAMP.start,
        error_estimate: f::ERROR_ESTIMATE.start,
        receive_timestamp: f::RECEIVE_TIMESTAMP.start,
        sender_seq: f::SENDER_SEQ.start,
        sender_timestamp: f::SENDER_TIMESTAMP.start,
        sender_error_estimate: f::SENDER_ERROR_ESTIMATE.start,
        sender_ttl: f::SENDER_TTL,
        s_dscp_ecn: None,
        hmac: Some(f::HMAC.start),
        header_len: f::HEADER_LEN,
        mbz: &[f::MBZ_1, f::MBZ_2, f::MBZ_3, f::MBZ_4, f::MBZ_5, f::MBZ_6],
    }
};

const AUTH_REFLECTOR_DSCP_ECN: ReflectorOffsets = {
    use field::auth_reflector as f;
    ReflectorOffsets {
        what: "TWAMP-Test reflector packet (authenticated/encrypted, RFC 7750)",
        s_dscp_ecn: Some(f::S_DSCP_ECN),
        mbz: &[
            f::MBZ_1,
            f::MBZ_2,
            f::MBZ_3,
            f::MBZ_4,
            f::MBZ_5,
            f::MBZ_6_DSCP_ECN,
        ],
        ..AUTH_REFLECTOR
    }
};

/// A Session-Reflector packet (RFC 5357 §4.2.1, RFC 7750 §3).
///
/// Build it with [`ReflectorPacket::new_checked`] on untrusted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectorPacket<T: AsRef<[u8]>> {
    buffer: T,
    layout: ReflectorLayout,
}

impl<T: AsRef<[u8]>> ReflectorPacket<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T, layout: ReflectorLayout) -> Self {
        ReflectorPacket { buffer, layout }
    }

    /// Wraps a buffer, checking that it holds the whole header.
    pub fn new_checked(buffer: T, layout: ReflectorLayout) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer, layout);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the whole header (41, 44 or 112 octets).
    pub fn check_len(&self) -> Result<(), WireError> {
        let o = self.layout.offsets();
        WireError::check_len(o.what, self.buffer.as_ref(), o.header_len)
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The layout this view reads.
    pub fn layout(&self) -> ReflectorLayout {
        self.layout
    }

    /// Header length; padding starts here.
    pub fn header_len(&self) -> usize {
        self.layout.header_len()
    }

    fn o(&self) -> &'static ReflectorOffsets {
        self.layout.offsets()
    }

    /// Sequence Number (the reflector's).
    pub fn sequence_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), self.o().seq)
    }

    /// Timestamp (T3), raw.
    pub fn timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.o().timestamp)
    }

    /// Error Estimate covering T2 and T3, raw.
    pub fn error_estimate_raw(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.o().error_estimate)
    }

    /// Error Estimate covering T2 and T3, decoded.
    pub fn error_estimate(&self) -> Result<ErrorEstimate, WireError> {
        ErrorEstimate::from_bits(self.error_estimate_raw())
    }

    /// Receive Timestamp (T2), raw.
    pub fn receive_timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.o().receive_timestamp)
    }

    /// T3 decoded per the Z bit of the reflector's Error Estimate.
    pub fn timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.timestamp(), self.error_estimate_raw())
    }

    /// T2 decoded per the Z bit of the reflector's Error Estimate.
    pub fn receive_timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.receive_timestamp(), self.error_estimate_raw())
    }

    /// Sender Sequence Number.
    pub fn sender_sequence_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), self.o().sender_seq)
    }

    /// Sender Timestamp (T1), raw.
    pub fn sender_timestamp(&self) -> [u8; 8] {
        get_8(self.buffer.as_ref(), self.o().sender_timestamp)
    }

    /// Sender Error Estimate, raw.
    pub fn sender_error_estimate_raw(&self) -> u16 {
        get_u16(self.buffer.as_ref(), self.o().sender_error_estimate)
    }

    /// Sender Error Estimate, decoded.
    pub fn sender_error_estimate(&self) -> Result<ErrorEstimate, WireError> {
        ErrorEstimate::from_bits(self.sender_error_estimate_raw())
    }

    /// Sender Timestamp decoded per the Z bit of the Sender Error Estimate.
    pub fn sender_timestamp_decoded(&self) -> Timestamp {
        decode_timestamp(self.sender_timestamp(), self.sender_error_estimate_raw())
    }

    /// Sender TTL.
    pub fn sender_ttl(&self) -> u8 {
        self.buffer.as_ref()[self.o().sender_ttl]
    }

    /// S-DSCP-ECN (RFC 7750 layouts only).
    pub fn s_dscp_ecn(&self) -> Option<u8> {
        self.o().s_dscp_ecn.map(|at| self.buffer.as_ref()[at])
    }

    /// The HMAC field (authenticated/encrypted layout only).
    pub fn hmac(&self) -> Option<&[u8]> {
        let at = self.o().hmac?;
        Some(&self.buffer.as_ref()[at..at + HMAC_LEN])
    }

    /// Whether every MBZ octet is zero (a diagnostic; receivers ignore MBZ).
    pub fn mbz_is_zero(&self) -> bool {
        all_zero(self.buffer.as_ref(), self.o().mbz)
    }

    /// Packet Padding after the header.
    pub fn padding(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
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

    /// Sets the Receive Timestamp (T2).
    pub fn set_receive_timestamp(&mut self, v: [u8; 8]) {
        let at = self.o().receive_timestamp;
        put_8(self.buffer.as_mut(), at, v);
    }

    /// Sets the Sender Sequence Number.
    pub fn set_sender_sequence_number(&mut self, v: u32) {
        let at = self.o().sender_seq;
        put_u32(self.buffer.as_mut(), at, v);
    }

    /// Sets the Sender Timestamp.
    pub fn set_sender_timestamp(&mut self, v: [u8; 8]) {
        let at = self.o().sender_timestamp;
        put_8(self.buffer.as_mut(), at, v);
    }

    /// Sets the Sender Error Estimate.
    pub fn set_sender_error_estimate_raw(&mut self, v: u16) {
        let at = self.o().sender_error_estimate;
        put_u16(self.buffer.as_mut(), at, v);
    }

    /// Sets the Sender TTL.
    pub fn set_sender_ttl(&mut self, v: u8) {
        let at = self.o().sender_ttl;
        self.buffer.as_mut()[at] = v;
    }

    /// Sets S-DSCP-ECN; does nothing in a layout without it.
    pub fn set_s_dscp_ecn(&mut self, v: u8) {
        if let Some(at) = self.o().s_dscp_ecn {
            self.buffer.as_mut()[at] = v;
        }
    }

    /// Zeroes every MBZ octet.
    pub fn clear_mbz(&mut self) {
        let mbz = self.o().mbz;
        zero(self.buffer.as_mut(), mbz);
    }

    /// The HMAC field, writable (authenticated/encrypted layout only).
    pub fn hmac_mut(&mut self) -> Option<&mut [u8]> {
        let at = self.o().hmac?;
        Some(&mut self.buffer.as_mut()[at..at + HMAC_LEN])
    }

    /// Packet Padding, writable.
    pub fn padding_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

/// The fields of a Session-Reflector packet (RFC 5357 §4.2.1, RFC 7750 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReflectorRepr {
    /// Sequence Number (the reflector's).
    pub sequence_number: u32,
    /// Timestamp (T3), raw.
    pub timestamp: [u8; 8],
    /// Error Estimate covering T2 and T3, raw.
    pub error_estimate: u16,
    /// Receive Timestamp (T2), raw.
    pub receive_timestamp: [u8; 8],
    /// Sender Sequence Number.
    pub sender_sequence_number: u32,
    /// Sender Timestamp, raw.
    pub sender_timestamp: [u8; 8],
    /// Sender Error Estimate, raw.
    pub sender_error_estimate: u16,
    /// Sender TTL.
    pub sender_ttl: u8,
    /// S-DSCP-ECN; `Some` exactly in the RFC 7750 layouts.
    pub s_dscp_ecn: Option<u8>,
    /// Number of padding octets after the header.
    pub padding_len: usize,
}

impl ReflectorRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(packet: &ReflectorPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(ReflectorRepr {
            sequence_number: packet.sequence_number(),
            timestamp: packet.timestamp(),
            error_estimate: packet.error_estimate_raw(),
            receive_timestamp: packet.receive_timestamp(),
            sender_sequence_number: packet.sender_sequence_number(),
            sender_timestamp: packet.sender_timestamp(),
            sender_error_estimate: packet.sender_error_estimate_raw(),
            sender_ttl: packet.sender_ttl(),
            s_dscp_ecn: packet.s_dscp_ecn(),
            padding_len: packet.padding().len(),
        })
    }

    /// The layout this repr emits in, given the test layout.
    pub fn layout(&self, test: TestLayout) -> ReflectorLayout {
        ReflectorLayout {
            test,
            dscp_ecn: self.s_dscp_ecn.is_some(),
        }
    }

    /// Total packet length in `test`'s layout.
    pub fn buffer_len(&self, test: TestLayout) -> usize {
        self.layout(test)
            .header_len()
            .saturating_add(self.padding_len)
    }

    /// Writes the header, zeroing MBZ and the HMAC field; padding is left as
    /// it is. Fails if the buffer is too short or the view's layout disagrees
    /// with `s_dscp_ecn` (RFC 7750 layout without a value, or the reverse).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut ReflectorPacket<T>,
    ) -> Result<(), WireError> {
        let o = packet.o();
        if packet.layout.dscp_ecn != self.s_dscp_ecn.is_some() {
            return Err(WireError::BadField {
                what: o.what,
                field: "S-DSCP-ECN",
                value: self.s_dscp_ecn.map_or(0, u64::from),
            });
        }
        WireError::check_len(
            o.what,
            packet.buffer.as_ref(),
            self.buffer_len(packet.layout.test),
        )?;
        packet.set_sequence_number(self.sequence_number);
        packet.set_timestamp(self.timestamp);
        packet.set_error_estimate_raw(self.error_estimate);
        packet.set_receive_timestamp(self.receive_timestamp);
        packet.set_sender_sequence_number(self.sender_sequence_number);
        packet.set_sender_timestamp(self.sender_timestamp);
        packet.set_sender_error_estimate_raw(self.sender_error_estimate);
        packet.set_sender_ttl(self.sender_ttl);
        if let Some(v) = self.s_dscp_ecn {
            packet.set_s_dscp_ecn(v);
        }
        packet.clear_mbz();
        if let Some(h) = packet.hmac_mut() {
            h.fill(0);
        }
        Ok(())
    }
}
