//! Typed values of the registered STAMP TLVs (RFC 8972 §4, RFC 9503 §3–§4,
//! RFC 9534 §3): zero-copy views over a TLV's *Value* (the octets after the
//! 4-octet header, as handed to a [`super::TlvHandler`]) with checked
//! lengths, `Repr`s, and the reflector-side fill functions.
//!
//! | Type | Name | Value | here |
//! |----:|------|------|------|
//! | 1 | Extra Padding | N octets | nothing to parse |
//! | 2 | Location | Dst Port(2) Src Port(2) sub-TLVs | [`Location`], [`fill_location`] |
//! | 3 | Timestamp Information | SyncIn TsIn SyncOut TsOut (1 each) sub-TLVs | [`TimestampInfo`], [`TimestampInfoRepr`] |
//! | 4 | Class of Service | DSCP1(6) DSCP2(6) ECN(2) RP(2) Reserved(16) | [`ClassOfService`], [`reflect_class_of_service`] |
//! | 5 | Direct Measurement | S_TxC R_RxC R_TxC (u32) | [`DirectMeasurement`] |
//! | 6 | Access Report | ID(4) Resv(4) Return Code(8) Reserved(16) | [`AccessReport`] |
//! | 7 | Follow-Up Telemetry | Seq(4) Timestamp(8) Mode(1) Reserved(3) | [`FollowUpTelemetry`] |
//! | 8 | HMAC | 16 octets | [`super::super::crypto::StampHmac`] |
//! | 9 | Destination Node Address | IPv4 or IPv6 | [`destination_node_address`] |
//! | 10 | Return Path | sub-TLVs | [`ReturnPathRepr`] |
//! | 11 | Micro-session ID | Sender ID(2) Reflector ID(2) | [`MicroSessionId`] |
//!
//! Nothing here panics on any input: every view is built with `new_checked`
//! (or the caller checked [`super::tlv::length_valid`]) and every
//! sub-TLV walk goes through [`super::TlvIter::framing_only`].

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use super::tlv::{self, tlv_type, TlvError, TlvIter, FLAG_M, FLAG_U};

/// Why a TLV value cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum TlvValueError {
    /// The value length is wrong for the type.
    #[error("TLV type {tlv_type}: value of {length} octets is invalid for the type")]
    Length {
        /// TLV type.
        tlv_type: u8,
        /// Value length.
        length: usize,
    },
    /// A sub-TLV is malformed (offset relative to the sub-TLV area).
    #[error("TLV type {tlv_type}: sub-TLV: {error}")]
    SubTlv {
        /// The enclosing TLV type.
        tlv_type: u8,
        /// The framing error.
        error: TlvError,
    },
    /// A sub-TLV of a known type has the wrong Length.
    #[error("TLV type {tlv_type}: sub-TLV type {sub_type} with invalid Length {length}")]
    SubTlvLength {
        /// The enclosing TLV type.
        tlv_type: u8,
        /// The sub-TLV type.
        sub_type: u8,
        /// Its Length.
        length: u16,
    },
    /// RFC 9503 §4.1: a Return Path TLV breaks its sub-TLV combination rules
    /// (a type twice, or a Control Code together with another sub-TLV).
    #[error("Return Path: sub-TLV combination not allowed (type {sub_type})")]
    ReturnPathCombination {
        /// The offending sub-TLV type.
        sub_type: u8,
    },
}

fn check(tlv_type: u8, value: &[u8], ok: bool) -> Result<(), TlvValueError> {
    if ok {
        Ok(())
    } else {
        Err(TlvValueError::Length {
            tlv_type,
            length: value.len(),
        })
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---------------------------------------------------------------------------
// Registries (IANA "STAMP TLV" sub-registries, RFC 8972 §5.3, §5.4)

/// Synchronization Source (RFC 8972 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncSource {
    /// 1: NTP.
    Ntp,
    /// 2: PTP.
    Ptp,
    /// 3: SSU/BITS.
    SsuBits,
    /// 4: GPS/GLONASS/LORAN-C (GNSS).
    Gnss,
    /// 5: local free-running oscillator.
    FreeRunning,
    /// 0 (reserved) or an unassigned value, kept as received.
    Other(u8),
}

impl SyncSource {
    /// From the wire value.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => SyncSource::Ntp,
            2 => SyncSource::Ptp,
            3 => SyncSource::SsuBits,
            4 => SyncSource::Gnss,
            5 => SyncSource::FreeRunning,
            o => SyncSource::Other(o),
        }
    }

    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            SyncSource::Ntp => 1,
            SyncSource::Ptp => 2,
            SyncSource::SsuBits => 3,
            SyncSource::Gnss => 4,
            SyncSource::FreeRunning => 5,
            SyncSource::Other(o) => o,
        }
    }
}

/// Timestamping Method (RFC 8972 §5.4); also the Follow-Up Telemetry
/// Timestamp Mode (§4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampMethod {
    /// 1: hardware assist (the NIC stamped the packet).
    HardwareAssist,
    /// 2: software local (the kernel's software stamp).
    SoftwareLocal,
    /// 3: control plane (a user-space clock reading).
    ControlPlane,
    /// 0 (reserved, also "no stamp") or an unassigned value.
    Other(u8),
}

impl TimestampMethod {
    /// From the wire value.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => TimestampMethod::HardwareAssist,
            2 => TimestampMethod::SoftwareLocal,
            3 => TimestampMethod::ControlPlane,
            o => TimestampMethod::Other(o),
        }
    }

    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            TimestampMethod::HardwareAssist => 1,
            TimestampMethod::SoftwareLocal => 2,
            TimestampMethod::ControlPlane => 3,
            TimestampMethod::Other(o) => o,
        }
    }
}

macro_rules! value_view {
    ($(#[$m:meta])* $name:ident, $ty:expr, $ok:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// The TLV type this view reads.
            pub const TLV_TYPE: u8 = $ty;

            /// Wraps a value without checking its length.
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            /// Wraps a value, checking its length for the type.
            pub fn new_checked(buffer: T) -> Result<Self, TlvValueError> {
                let len = buffer.as_ref().len();
                let ok: fn(usize) -> bool = $ok;
                check($ty, buffer.as_ref(), ok(len))?;
                Ok($name { buffer })
            }

            /// The underlying value.
            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Timestamp Information (RFC 8972 §4.3)

value_view!(
    /// Timestamp Information value: Sync Src In, Timestamp In, Sync Src
    /// Out, Timestamp Out (one octet each), then optional sub-TLVs.
    TimestampInfo,
    tlv_type::TIMESTAMP_INFORMATION,
    |l| l >= 4
);

impl<T: AsRef<[u8]>> TimestampInfo<T> {
    /// Synchronization source of the receive stamp (T2).
    pub fn sync_in(&self) -> SyncSource {
        SyncSource::from_u8(self.buffer.as_ref()[0])
    }
    /// Timestamping method of T2.
    pub fn method_in(&self) -> TimestampMethod {
        TimestampMethod::from_u8(self.buffer.as_ref()[1])
    }
    /// Synchronization source of the transmit stamp (T3).
    pub fn sync_out(&self) -> SyncSource {
        SyncSource::from_u8(self.buffer.as_ref()[2])
    }
    /// Timestamping method of T3.
    pub fn method_out(&self) -> TimestampMethod {
        TimestampMethod::from_u8(self.buffer.as_ref()[3])
    }
    /// The four information octets are zero (what a sender must send).
    pub fn info_is_zero(&self) -> bool {
        self.buffer.as_ref()[..4].iter().all(|&b| b == 0)
    }
    /// The optional sub-TLVs.
    pub fn sub_tlvs(&self) -> &[u8] {
        &self.buffer.as_ref()[4..]
    }
}

/// The information fields of a Timestamp Information TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimestampInfoRepr {
    /// Sync source of T2.
    pub sync_in: SyncSource,
    /// Method of T2.
    pub method_in: TimestampMethod,
    /// Sync source of T3.
    pub sync_out: SyncSource,
    /// Method of T3.
    pub method_out: TimestampMethod,
}

impl TimestampInfoRepr {
    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(v: &TimestampInfo<T>) -> Self {
        TimestampInfoRepr {
            sync_in: v.sync_in(),
            method_in: v.method_in(),
            sync_out: v.sync_out(),
            method_out: v.method_out(),
        }
    }

    /// Writes the four information octets; sub-TLVs are left as they are.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, v: &mut TimestampInfo<T>) {
        let b = v.buffer.as_mut();
        b[0] = self.sync_in.to_u8();
        b[1] = self.method_in.to_u8();
        b[2] = self.sync_out.to_u8();
        b[3] = self.method_out.to_u8();
    }
}

// ---------------------------------------------------------------------------
// Class of Service (RFC 8972 §4.4, erratum EID 8199)

value_view!(
    /// Class of Service value (Length 4): DSCP1(6) DSCP2(6) ECN(2) RP(2)
    /// Reserved(16), most significant bit first.
    ClassOfService,
    tlv_type::CLASS_OF_SERVICE,
    |l| l == 4
);

impl<T: AsRef<[u8]>> ClassOfService<T> {
    /// DSCP1: the DSCP the sender asks the reflector to use for the reply.
    pub fn dscp1(&self) -> u8 {
        self.buffer.as_ref()[0] >> 2
    }
    /// DSCP2: the DSCP the reflector received.
    pub fn dscp2(&self) -> u8 {
        let b = self.buffer.as_ref();
        ((b[0] & 0x03) << 4) | (b[1] >> 4)
    }
    /// ECN: the ECN the reflector received (erratum EID 8199).
    pub fn ecn(&self) -> u8 {
        (self.buffer.as_ref()[1] >> 2) & 0x03
    }
    /// RP (Reverse Path): 1 when the reflector could not use DSCP1.
    pub fn rp(&self) -> u8 {
        self.buffer.as_ref()[1] & 0x03
    }
    /// The Reserved field.
    pub fn reserved(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
}

/// The fields of a Class of Service TLV (Reserved written as zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassOfServiceRepr {
    /// Requested DSCP (6 bits).
    pub dscp1: u8,
    /// Received DSCP (6 bits).
    pub dscp2: u8,
    /// Received ECN (2 bits).
    pub ecn: u8,
    /// Reverse Path (2 bits).
    pub rp: u8,
}

impl ClassOfServiceRepr {
    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(v: &ClassOfService<T>) -> Self {
        ClassOfServiceRepr {
            dscp1: v.dscp1(),
            dscp2: v.dscp2(),
            ecn: v.ecn(),
            rp: v.rp(),
        }
    }

    /// The four value octets (excess bits of each field are dropped).
    pub fn to_bytes(&self) -> [u8; 4] {
        let (d1, d2) = (self.dscp1 & 0x3f, self.dscp2 & 0x3f);
        [
            (d1 << 2) | (d2 >> 4),
            ((d2 & 0x0f) << 4) | ((self.ecn & 0x03) << 2) | (self.rp & 0x03),
            0,
            0,
        ]
    }

    /// Writes the value.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, v: &mut ClassOfService<T>) {
        v.buffer.as_mut()[..4].copy_from_slice(&self.to_bytes());
    }
}

/// What the reflector does with the IP header of a reply that carried a
/// Class of Service TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CosDecision {
    /// The DSCP to send the reply with.
    pub reply_dscp: u8,
    /// Whether DSCP1 was honoured (RP = 0) or refused (RP = 1).
    pub honoured: bool,
}

/// The reflector's Class of Service processing (RFC 8972 §4.4, erratum EID
/// 8199): DSCP2 ← the received DSCP, ECN ← the received ECN; if `permit`
/// (local policy) allows DSCP1 the reply uses it and RP = 0, otherwise the
/// reply keeps the received DSCP and RP = 1. `rx_tos` is the received IPv4
/// TOS / IPv6 Traffic Class. DSCP1 and Reserved are left as received.
pub fn reflect_class_of_service<T: AsRef<[u8]> + AsMut<[u8]>>(
    v: &mut ClassOfService<T>,
    rx_tos: u8,
    permit: impl FnOnce(u8) -> bool,
) -> CosDecision {
    let rx_dscp = rx_tos >> 2;
    let dscp1 = v.dscp1();
    let honoured = permit(dscp1);
    let b = v.buffer.as_mut();
    let repr = ClassOfServiceRepr {
        dscp1,
        dscp2: rx_dscp,
        ecn: rx_tos & 0x03,
        rp: u8::from(!honoured),
    };
    let bytes = repr.to_bytes();
    b[..2].copy_from_slice(&bytes[..2]);
    CosDecision {
        reply_dscp: if honoured { dscp1 } else { rx_dscp },
        honoured,
    }
}

// ---------------------------------------------------------------------------
// Direct Measurement (RFC 8972 §4.5)

value_view!(
    /// Direct Measurement value (Length 12): S_TxC, R_RxC, R_TxC.
    DirectMeasurement,
    tlv_type::DIRECT_MEASUREMENT,
    |l| l == 12
);

impl<T: AsRef<[u8]>> DirectMeasurement<T> {
    /// Session-Sender transmit counter.
    pub fn s_txc(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }
    /// Session-Reflector receive counter.
    pub fn r_rxc(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }
    /// Session-Reflector transmit counter.
    pub fn r_txc(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DirectMeasurement<T> {
    /// Fills the reflector's counters (S_TxC stays as received).
    pub fn set_reflector_counters(&mut self, r_rxc: u32, r_txc: u32) {
        let b = self.buffer.as_mut();
        b[4..8].copy_from_slice(&r_rxc.to_be_bytes());
        b[8..12].copy_from_slice(&r_txc.to_be_bytes());
    }
}

/// The fields of a Direct Measurement TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirectMeasurementRepr {
    /// S_TxC.
    pub s_txc: u32,
    /// R_RxC.
    pub r_rxc: u32,
    /// R_TxC.
    pub r_txc: u32,
}

impl DirectMeasurementRepr {
    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(v: &DirectMeasurement<T>) -> Self {
        DirectMeasurementRepr {
            s_txc: v.s_txc(),
            r_rxc: v.r_rxc(),
            r_txc: v.r_txc(),
        }
    }
    /// The 12 value octets.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.s_txc.to_be_bytes());
        b[4..8].copy_from_slice(&self.r_rxc.to_be_bytes());
        b[8..12].copy_from_slice(&self.r_txc.to_be_bytes());
        b
    }
}

// ---------------------------------------------------------------------------
// Access Report (RFC 8972 §4.6)

value_view!(
    /// Access Report value (Length 4): ID (high 4 bits) ‖ Resv (4), Return
    /// Code, 2 reserved octets.
    AccessReport,
    tlv_type::ACCESS_REPORT,
    |l| l == 4
);

/// Access ID: 3GPP access.
pub const ACCESS_ID_3GPP: u8 = 1;
/// Access ID: non-3GPP access.
pub const ACCESS_ID_NON_3GPP: u8 = 2;
/// Return Code: network available.
pub const ACCESS_NETWORK_AVAILABLE: u8 = 1;
/// Return Code: network unavailable.
pub const ACCESS_NETWORK_UNAVAILABLE: u8 = 2;

impl<T: AsRef<[u8]>> AccessReport<T> {
    /// Access ID (4 bits).
    pub fn id(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }
    /// The 4 reserved bits after the ID.
    pub fn resv(&self) -> u8 {
        self.buffer.as_ref()[0] & 0x0f
    }
    /// Return Code.
    pub fn return_code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// The reserved octets 2–3.
    pub fn reserved(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    /// Whether the ID is one of the registered values (RFC 8972 §4.6: a TLV
    /// with another ID is discarded).
    pub fn id_valid(&self) -> bool {
        matches!(self.id(), ACCESS_ID_3GPP | ACCESS_ID_NON_3GPP)
    }
}

/// The fields of an Access Report TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessReportRepr {
    /// Access ID (1 3GPP, 2 non-3GPP).
    pub id: u8,
    /// Return Code (1 available, 2 unavailable).
    pub return_code: u8,
}

impl AccessReportRepr {
    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(v: &AccessReport<T>) -> Self {
        AccessReportRepr {
            id: v.id(),
            return_code: v.return_code(),
        }
    }
    /// The 4 value octets.
    pub fn to_bytes(&self) -> [u8; 4] {
        [(self.id & 0x0f) << 4, self.return_code, 0, 0]
    }
}

// ---------------------------------------------------------------------------
// Follow-Up Telemetry (RFC 8972 §4.7, erratum EID 8339)

value_view!(
    /// Follow-Up Telemetry value (Length 16): Sequence Number (4),
    /// Follow-Up Timestamp (8), Timestamp Mode (1), Reserved (3).
    FollowUpTelemetry,
    tlv_type::FOLLOW_UP_TELEMETRY,
    |l| l == 16
);

impl<T: AsRef<[u8]>> FollowUpTelemetry<T> {
    /// The reflector Sequence Number of the previous reflected packet.
    pub fn sequence_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }
    /// Its transmit timestamp (format per the reply's Z bit).
    pub fn timestamp(&self) -> [u8; 8] {
        let mut t = [0u8; 8];
        t.copy_from_slice(&self.buffer.as_ref()[4..12]);
        t
    }
    /// How that timestamp was taken.
    pub fn mode(&self) -> TimestampMethod {
        TimestampMethod::from_u8(self.buffer.as_ref()[12])
    }
    /// The Reserved octets 13–15 are zero.
    pub fn reserved_is_zero(&self) -> bool {
        self.buffer.as_ref()[13..16].iter().all(|&b| b == 0)
    }
}

/// The fields of a Follow-Up Telemetry TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FollowUpRepr {
    /// Reflector Sequence Number of the previous reflected packet.
    pub sequence_number: u32,
    /// Its transmit timestamp (zero when none is known).
    pub timestamp: [u8; 8],
    /// How it was taken (`Other(0)` when none is known).
    pub mode: TimestampMethod,
}

impl FollowUpRepr {
    /// What a stateless reflector (or one with nothing to report) sends:
    /// Sequence Number and Timestamp zero (RFC 8972 §4.7), mode 0.
    pub const ZERO: FollowUpRepr = FollowUpRepr {
        sequence_number: 0,
        timestamp: [0; 8],
        mode: TimestampMethod::Other(0),
    };

    /// Reads a checked view.
    pub fn parse<T: AsRef<[u8]>>(v: &FollowUpTelemetry<T>) -> Self {
        FollowUpRepr {
            sequence_number: v.sequence_number(),
            timestamp: v.timestamp(),
            mode: v.mode(),
        }
    }

    /// The 16 value octets (Reserved zero).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.sequence_number.to_be_bytes());
        b[4..12].copy_from_slice(&self.timestamp);
        b[12] = self.mode.to_u8();
        b
    }

    /// Writes the value.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, v: &mut FollowUpTelemetry<T>) {
        v.buffer.as_mut()[..16].copy_from_slice(&self.to_bytes());
    }
}

// ---------------------------------------------------------------------------
// Micro-session ID (RFC 9534 §3)

value_view!(
    /// Micro-session ID value (Length 4): Sender Micro-session ID (2) ‖
    /// Reflector Micro-session ID (2).
    MicroSessionId,
    tlv_type::MICRO_SESSION_ID,
    |l| l == 4
);

impl<T: AsRef<[u8]>> MicroSessionId<T> {
    /// Sender Micro-session ID.
    pub fn sender_id(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    /// Reflector Micro-session ID.
    pub fn reflector_id(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> MicroSessionId<T> {
    /// Sets the Reflector Micro-session ID (the member link's identifier).
    pub fn set_reflector_id(&mut self, id: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&id.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// Destination Node Address (RFC 9503 §3)

/// The address in a Destination Node Address value (Length 4 or 16).
pub fn destination_node_address(value: &[u8]) -> Result<IpAddr, TlvValueError> {
    ip_from(value).ok_or(TlvValueError::Length {
        tlv_type: tlv_type::DESTINATION_NODE_ADDRESS,
        length: value.len(),
    })
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Return Path (RFC 9503 §4)

/// Return Path sub-TLV types (RFC 9503 §4.1).
pub mod return_path_sub {
    /// Control Code (Length 4).
    pub const CONTROL_CODE: u8 = 1;
    /// Return Address (Length 4 or 16).
    pub const RETURN_ADDRESS: u8 = 2;
    /// SR-MPLS Label Stack (Length 4·n).
    pub const SR_MPLS_LABEL_STACK: u8 = 3;
    /// SRv6 Segment List (Length 16·n).
    pub const SRV6_SEGMENT_LIST: u8 = 4;
    /// Control Code bit: reply on the same incoming link (0 = no reply).
    pub const CC_REPLY_SAME_LINK: u32 = 1;
}

/// A parsed Return Path TLV value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReturnPathRepr {
    /// Control Code flags, if present.
    pub control_code: Option<u32>,
    /// Return Address, if present.
    pub return_address: Option<IpAddr>,
    /// Number of SR-MPLS label stack entries (0 if absent).
    pub sr_mpls_labels: usize,
    /// Number of SRv6 segments (0 if absent).
    pub srv6_segments: usize,
    /// Sub-TLVs of unregistered types.
    pub unknown_sub_tlvs: usize,
}

impl ReturnPathRepr {
    /// Parses the sub-TLVs of a Return Path value and checks the RFC 9503
    /// §4.1 rules: at most one of each type; a Control Code excludes the
    /// others; lengths per type.
    pub fn parse(value: &[u8]) -> Result<Self, TlvValueError> {
        use return_path_sub as s;
        let ty = tlv_type::RETURN_PATH;
        let mut r = ReturnPathRepr::default();
        let mut seen = [false; 5];
        for sub in TlvIter::framing_only(value) {
            let sub = sub.map_err(|error| TlvValueError::SubTlv {
                tlv_type: ty,
                error,
            })?;
            let (st, len, v) = (sub.tlv_type(), sub.length(), sub.value());
            let bad_len = || TlvValueError::SubTlvLength {
                tlv_type: ty,
                sub_type: st,
                length: len,
            };
            if (1..=4).contains(&st) {
                if seen[usize::from(st)] {
                    return Err(TlvValueError::ReturnPathCombination { sub_type: st });
                }
                seen[usize::from(st)] = true;
            }
            match st {
                s::CONTROL_CODE => {
                    if len != 4 {
                        return Err(bad_len());
                    }
                    r.control_code = Some(be32(v, 0));
                }
                s::RETURN_ADDRESS => r.return_address = Some(ip_from(v).ok_or_else(bad_len)?),
                s::SR_MPLS_LABEL_STACK => {
                    if len == 0 || len % 4 != 0 {
                        return Err(bad_len());
                    }
                    r.sr_mpls_labels = usize::from(len / 4);
                }
                s::SRV6_SEGMENT_LIST => {
                    if len == 0 || len % 16 != 0 {
                        return Err(bad_len());
                    }
                    r.srv6_segments = usize::from(len / 16);
                }
                _ => r.unknown_sub_tlvs += 1,
            }
        }
        if r.control_code.is_some() && (seen[2] || seen[3] || seen[4]) {
            return Err(TlvValueError::ReturnPathCombination {
                sub_type: s::CONTROL_CODE,
            });
        }
        if seen[3] && seen[4] {
            return Err(TlvValueError::ReturnPathCombination {
                sub_type: s::SRV6_SEGMENT_LIST,
            });
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------------------
// Location (RFC 8972 §4.2)

value_view!(
    /// Location value: Destination Port (2), Source Port (2), then sub-TLVs.
    Location,
    tlv_type::LOCATION,
    |l| l >= 4
);

/// Location sub-TLV types (RFC 8972 §4.2, IANA).
pub mod location_sub {
    /// Source MAC Address (request), Length 8.
    pub const SOURCE_MAC_REQUEST: u8 = 1;
    /// Source EUI-48 Address, Length 8.
    pub const SOURCE_EUI48: u8 = 2;
    /// Source EUI-64 Address, Length 8.
    pub const SOURCE_EUI64: u8 = 3;
    /// Destination IP Address (request), Length 16.
    pub const DESTINATION_IP_REQUEST: u8 = 4;
    /// Destination IPv4 Address, Length 16.
    pub const DESTINATION_IPV4: u8 = 5;
    /// Destination IPv6 Address, Length 16.
    pub const DESTINATION_IPV6: u8 = 6;
    /// Source IP Address (request), Length 16.
    pub const SOURCE_IP_REQUEST: u8 = 7;
    /// Source IPv4 Address, Length 16.
    pub const SOURCE_IPV4: u8 = 8;
    /// Source IPv6 Address, Length 16.
    pub const SOURCE_IPV6: u8 = 9;

    /// The Length a registered sub-TLV type must have.
    pub const fn length(ty: u8) -> Option<u16> {
        match ty {
            1..=3 => Some(8),
            4..=9 => Some(16),
            _ => None,
        }
    }
}

impl<T: AsRef<[u8]>> Location<T> {
    /// Destination Port (of the received packet, filled by the reflector).
    pub fn destination_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    /// Source Port.
    pub fn source_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    /// The sub-TLV area.
    pub fn sub_tlvs(&self) -> &[u8] {
        &self.buffer.as_ref()[4..]
    }
}

/// One Location sub-TLV, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocationSub {
    /// Type 1: the sender asks for the source MAC.
    SourceMacRequest,
    /// Type 2.
    SourceEui48([u8; 6]),
    /// Type 3.
    SourceEui64([u8; 8]),
    /// Type 4: the sender asks for the destination address.
    DestinationIpRequest,
    /// Types 5/6.
    DestinationIp(IpAddr),
    /// Type 7: the sender asks for the source address.
    SourceIpRequest,
    /// Types 8/9.
    SourceIp(IpAddr),
    /// Another type: (type, flags).
    Unknown(u8, u8),
}

/// Parses the sub-TLVs of a Location value into `out` (at most its length;
/// returns how many were written).
pub fn parse_location_subs(value: &[u8], out: &mut [LocationSub]) -> Result<usize, TlvValueError> {
    use location_sub as s;
    let ty = tlv_type::LOCATION;
    let area = value.get(4..).ok_or(TlvValueError::Length {
        tlv_type: ty,
        length: value.len(),
    })?;
    let mut n = 0;
    for sub in TlvIter::framing_only(area) {
        let sub = sub.map_err(|error| TlvValueError::SubTlv {
            tlv_type: ty,
            error,
        })?;
        let (st, len, v) = (sub.tlv_type(), sub.length(), sub.value());
        if let Some(want) = s::length(st) {
            if len != want {
                return Err(TlvValueError::SubTlvLength {
                    tlv_type: ty,
                    sub_type: st,
                    length: len,
                });
            }
        }
        let ip4 = || IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        let ip6 = || ip_from(v).unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let d = match st {
            s::SOURCE_MAC_REQUEST => LocationSub::SourceMacRequest,
            s::SOURCE_EUI48 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(&v[..6]);
                LocationSub::SourceEui48(m)
            }
            s::SOURCE_EUI64 => {
                let mut m = [0u8; 8];
                m.copy_from_slice(v);
                LocationSub::SourceEui64(m)
            }
            s::DESTINATION_IP_REQUEST => LocationSub::DestinationIpRequest,
            s::DESTINATION_IPV4 => LocationSub::DestinationIp(ip4()),
            s::DESTINATION_IPV6 => LocationSub::DestinationIp(ip6()),
            s::SOURCE_IP_REQUEST => LocationSub::SourceIpRequest,
            s::SOURCE_IPV4 => LocationSub::SourceIp(ip4()),
            s::SOURCE_IPV6 => LocationSub::SourceIp(ip6()),
            other => LocationSub::Unknown(other, sub.flags()),
        };
        if let Some(slot) = out.get_mut(n) {
            *slot = d;
            n += 1;
        }
    }
    Ok(n)
}

/// What the reflector knows about the received packet for a Location TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocationContext {
    /// Source address and port of the received packet (the sender).
    pub source: SocketAddr,
    /// Destination address and port of the received packet (us).
    pub destination: SocketAddr,
    /// Source MAC address of the received frame, when the path sees it.
    pub source_mac: Option<[u8; 6]>,
}

/// The reflector's Location processing (RFC 8972 §4.2), in place, same
/// Length as received: ports ← the received packet's; each request sub-TLV
/// replaced by the specific one for the observed packet (1 → 2 with the
/// MAC, or 3 with zero when the MAC is unknown; 4 → 5/6; 7 → 8/9; a
/// specific sub-TLV sent by the sender is refilled the same way); sub-TLVs
/// of other types get U = 1 and stay as received. Addresses are written in
/// network order; an IPv4-mapped IPv6 address is reported as IPv4.
///
/// # Errors
/// A malformed sub-TLV chain or a wrong sub-TLV Length: the caller flags
/// the Location TLV M = 1; the offending sub-TLV gets M = 1 here. Octets
/// before it have been filled.
pub fn fill_location(value: &mut [u8], ctx: &LocationContext) -> Result<(), TlvValueError> {
    use location_sub as s;
    let ty = tlv_type::LOCATION;
    if value.len() < 4 {
        return Err(TlvValueError::Length {
            tlv_type: ty,
            length: value.len(),
        });
    }
    value[0..2].copy_from_slice(&ctx.destination.port().to_be_bytes());
    value[2..4].copy_from_slice(&ctx.source.port().to_be_bytes());
    let area = &mut value[4..];
    let mut pos = 0;
    while pos < area.len() {
        let (st, len) = match TlvIter::framing_only(&area[pos..]).next() {
            Some(Ok(sub)) => (sub.tlv_type(), sub.length()),
            Some(Err(error)) => {
                area[pos] |= FLAG_M;
                return Err(TlvValueError::SubTlv {
                    tlv_type: ty,
                    error: shift(error, pos),
                });
            }
            None => break,
        };
        let total = tlv::field::HEADER_LEN + usize::from(len);
        if let Some(want) = s::length(st) {
            if len != want {
                area[pos] |= FLAG_M;
                return Err(TlvValueError::SubTlvLength {
                    tlv_type: ty,
                    sub_type: st,
                    length: len,
                });
            }
        }
        let (head, v) = area[pos..pos + total].split_at_mut(tlv::field::HEADER_LEN);
        let ip_sub = |v: &mut [u8], ip: IpAddr, v4: u8, v6: u8| -> u8 {
            v.fill(0);
            match ip.to_canonical() {
                IpAddr::V4(a) => {
                    v[..4].copy_from_slice(&a.octets());
                    v4
                }
                IpAddr::V6(a) => {
                    v.copy_from_slice(&a.octets());
                    v6
                }
            }
        };
        let new_type = match st {
            s::SOURCE_MAC_REQUEST | s::SOURCE_EUI48 | s::SOURCE_EUI64 => {
                v.fill(0);
                match ctx.source_mac {
                    Some(mac) => {
                        v[..6].copy_from_slice(&mac);
                        Some(s::SOURCE_EUI48)
                    }
                    None => Some(s::SOURCE_EUI64),
                }
            }
            s::DESTINATION_IP_REQUEST | s::DESTINATION_IPV4 | s::DESTINATION_IPV6 => Some(ip_sub(
                v,
                ctx.destination.ip(),
                s::DESTINATION_IPV4,
                s::DESTINATION_IPV6,
            )),
            s::SOURCE_IP_REQUEST | s::SOURCE_IPV4 | s::SOURCE_IPV6 => {
                Some(ip_sub(v, ctx.source.ip(), s::SOURCE_IPV4, s::SOURCE_IPV6))
            }
            _ => None,
        };
        match new_type {
            Some(t) => {
                head[tlv::field::FLAGS] &= !(FLAG_U | FLAG_M | tlv::FLAG_I);
                head[tlv::field::TYPE] = t;
            }
            None => head[tlv::field::FLAGS] |= FLAG_U,
        }
        pos += total;
    }
    Ok(())
}

fn shift(e: TlvError, by: usize) -> TlvError {
    match e {
        TlvError::TruncatedHeader { offset, have } => TlvError::TruncatedHeader {
            offset: offset + by,
            have,
        },
        TlvError::Overrun {
            offset,
            tlv_type,
            length,
            available,
        } => TlvError::Overrun {
            offset: offset + by,
            tlv_type,
            length,
            available,
        },
        other => other,
    }
}

// ---------------------------------------------------------------------------
// HMAC TLV (RFC 8972 §4.8)

/// Why the HMAC TLV of a TLV area cannot be trusted (RFC 8972 §4.8: the
/// reflector then sets I on every TLV; a sender discards the TLVs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum HmacTlvError {
    /// A TLV other than Extra Padding follows the HMAC TLV.
    #[error("the HMAC TLV at offset {at} is followed by a protected TLV")]
    Misplaced {
        /// Offset of the HMAC TLV in the area.
        at: usize,
    },
    /// Authenticated mode, TLVs other than Extra Padding, no HMAC TLV.
    #[error("TLVs other than Extra Padding without an HMAC TLV")]
    Missing,
    /// The HMAC does not verify.
    #[error("the HMAC TLV does not verify")]
    Mismatch,
}

/// Where the HMAC TLV of `area` is, checking the position rule: it must
/// follow every TLV it protects (only Extra Padding may come after it).
/// `required`: authenticated mode, where any TLV other than Extra Padding
/// needs it. A broken chain ends the walk (the framing pass flags M).
/// `Ok(None)`: no HMAC TLV and none needed.
pub fn hmac_tlv_position(area: &[u8], required: bool) -> Result<Option<usize>, HmacTlvError> {
    let mut it = TlvIter::new(area);
    let mut at = None;
    let mut protected = false;
    loop {
        let pos = it.position();
        let Some(Ok(t)) = it.next() else { break };
        match t.tlv_type() {
            tlv_type::EXTRA_PADDING => {}
            tlv_type::HMAC if at.is_none() => at = Some(pos),
            _ => {
                protected = true;
                if let Some(at) = at {
                    return Err(HmacTlvError::Misplaced { at });
                }
            }
        }
    }
    match at {
        None if protected && required => Err(HmacTlvError::Missing),
        other => Ok(other),
    }
}

/// Checks the HMAC TLV of `area` (the TLVs after a base packet whose
/// Sequence Number octets are `seq`): position ([`hmac_tlv_position`]) and
/// HMAC-SHA-256-128 over `seq` ‖ the preceding TLVs as on the wire, flags
/// included (RFC 8972 §4.8). Returns its offset (`None`: no HMAC TLV, none
/// needed).
pub fn verify_hmac_tlv(
    hmac: &crate::crypto::StampHmac,
    seq: &[u8],
    area: &[u8],
    required: bool,
) -> Result<Option<usize>, HmacTlvError> {
    let Some(at) = hmac_tlv_position(area, required)? else {
        return Ok(None);
    };
    let v = at + tlv::field::HEADER_LEN;
    match area.get(v..v + crate::crypto::HMAC_LEN) {
        Some(tag) if hmac.verify(&[seq, &area[..at]], tag).is_ok() => Ok(Some(at)),
        _ => Err(HmacTlvError::Mismatch),
    }
}

/// Writes a fresh HMAC TLV value at `at` of `area`: HMAC-SHA-256-128 over
/// `seq` ‖ the TLVs before it (a reflector that rewrote TLVs, or a sender).
pub fn seal_hmac_tlv(
    hmac: &crate::crypto::StampHmac,
    seq: &[u8],
    area: &mut [u8],
    at: usize,
) -> Result<(), HmacTlvError> {
    let v = at + tlv::field::HEADER_LEN;
    let tag = hmac.compute(&[seq, area.get(..at).ok_or(HmacTlvError::Mismatch)?]);
    area.get_mut(v..v + crate::crypto::HMAC_LEN)
        .ok_or(HmacTlvError::Mismatch)?
        .copy_from_slice(&tag);
    Ok(())
}

// ---------------------------------------------------------------------------
// Any registered TLV

/// One STAMP TLV, decoded by type (values borrowed from the packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampTlv<'a> {
    /// Type 1.
    ExtraPadding(&'a [u8]),
    /// Type 2: ports and the raw sub-TLV area ([`parse_location_subs`]).
    Location {
        /// Destination Port.
        destination_port: u16,
        /// Source Port.
        source_port: u16,
        /// Sub-TLVs.
        sub_tlvs: &'a [u8],
    },
    /// Type 3.
    TimestampInformation(TimestampInfoRepr),
    /// Type 4.
    ClassOfService(ClassOfServiceRepr),
    /// Type 5.
    DirectMeasurement(DirectMeasurementRepr),
    /// Type 6.
    AccessReport(AccessReportRepr),
    /// Type 7.
    FollowUpTelemetry(FollowUpRepr),
    /// Type 8.
    Hmac(&'a [u8]),
    /// Type 9.
    DestinationNodeAddress(IpAddr),
    /// Type 10.
    ReturnPath(ReturnPathRepr),
    /// Type 11.
    MicroSessionId {
        /// Sender Micro-session ID.
        sender: u16,
        /// Reflector Micro-session ID.
        reflector: u16,
    },
    /// Any other type (private use, experimental, unassigned).
    Other {
        /// Type.
        tlv_type: u8,
        /// Value.
        value: &'a [u8],
    },
}

impl<'a> StampTlv<'a> {
    /// Decodes the value of a TLV of type `ty`.
    pub fn parse(ty: u8, value: &'a [u8]) -> Result<StampTlv<'a>, TlvValueError> {
        use tlv_type as t;
        let len_ok = u16::try_from(value.len())
            .map(|l| tlv::length_valid(ty, l))
            .unwrap_or(false);
        check(ty, value, len_ok)?;
        Ok(match ty {
            t::EXTRA_PADDING => StampTlv::ExtraPadding(value),
            t::LOCATION => StampTlv::Location {
                destination_port: be16(value, 0),
                source_port: be16(value, 2),
                sub_tlvs: &value[4..],
            },
            t::TIMESTAMP_INFORMATION => StampTlv::TimestampInformation(TimestampInfoRepr::parse(
                &TimestampInfo::new_checked(value)?,
            )),
            t::CLASS_OF_SERVICE => StampTlv::ClassOfService(ClassOfServiceRepr::parse(
                &ClassOfService::new_checked(value)?,
            )),
            t::DIRECT_MEASUREMENT => StampTlv::DirectMeasurement(DirectMeasurementRepr::parse(
                &DirectMeasurement::new_checked(value)?,
            )),
            t::ACCESS_REPORT => {
                StampTlv::AccessReport(AccessReportRepr::parse(&AccessReport::new_checked(value)?))
            }
            t::FOLLOW_UP_TELEMETRY => StampTlv::FollowUpTelemetry(FollowUpRepr::parse(
                &FollowUpTelemetry::new_checked(value)?,
            )),
            t::HMAC => StampTlv::Hmac(value),
            t::DESTINATION_NODE_ADDRESS => {
                StampTlv::DestinationNodeAddress(destination_node_address(value)?)
            }
            t::RETURN_PATH => StampTlv::ReturnPath(ReturnPathRepr::parse(value)?),
            t::MICRO_SESSION_ID => {
                let m = MicroSessionId::new_checked(value)?;
                StampTlv::MicroSessionId {
                    sender: m.sender_id(),
                    reflector: m.reflector_id(),
                }
            }
            other => StampTlv::Other {
                tlv_type: other,
                value,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cos_bit_positions() {
        // DSCP1 46 (101110), DSCP2 10 (001010), ECN 2, RP 1:
        // 101110 00 | 1010 10 01 | 0 | 0
        let r = ClassOfServiceRepr {
            dscp1: 46,
            dscp2: 10,
            ecn: 2,
            rp: 1,
        };
        assert_eq!(r.to_bytes(), [0b1011_1000, 0b1010_1001, 0, 0]);
        let bytes = r.to_bytes();
        let v = ClassOfService::new_checked(&bytes[..]).unwrap();
        assert_eq!(ClassOfServiceRepr::parse(&v), r);
    }

    #[test]
    fn location_fill_replaces_requests() {
        let mut v = vec![0u8; 4 + 12 + 20 + 20];
        v[4..8].copy_from_slice(&[0x80, 1, 0, 8]);
        v[16..20].copy_from_slice(&[0x80, 4, 0, 16]);
        v[36..40].copy_from_slice(&[0x80, 7, 0, 16]);
        let ctx = LocationContext {
            source: "198.18.0.1:5000".parse().unwrap(),
            destination: "198.18.0.2:862".parse().unwrap(),
            source_mac: Some([2, 0, 0, 0, 0, 1]),
        };
        fill_location(&mut v, &ctx).unwrap();
        assert_eq!(&v[0..4], &[3, 0x5e, 0x13, 0x88]);
        assert_eq!(&v[4..16], &[0, 2, 0, 8, 2, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&v[16..24], &[0, 5, 0, 16, 198, 18, 0, 2]);
        assert!(v[24..36].iter().all(|&b| b == 0));
        assert_eq!(&v[36..44], &[0, 8, 0, 16, 198, 18, 0, 1]);
    }
}
