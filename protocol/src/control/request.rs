//! Request-TW-Session (RFC 5357 §3.5, RFC 6038 §4.2): command 5, 112 octets,
//! client to server.
//!
//! ```text
//!   0       Command = 5
//!   1       MBZ (high 4 bits) | IPVN (low 4 bits)
//!   2       Conf-Sender (MUST be 0)
//!   3       Conf-Receiver (MUST be 0)
//!   4..8    Number of Schedule Slots (MUST be 0)
//!   8..12   Number of Packets (MUST be 0)
//!  12..14   Sender Port
//!  14..16   Receiver Port
//!  16..32   Sender Address (IPv4: first 4 octets, 12 MBZ)
//!  32..48   Receiver Address
//!  48..64   SID (sent as zero; the server assigns one)
//!  64..68   Padding Length
//!  68..76   Start Time
//!  76..84   Timeout
//!  84..88   Type-P Descriptor
//!  88..90   Octets to be reflected (RFC 6038; MBZ otherwise)
//!  90..92   Length of padding to reflect (RFC 6038; MBZ otherwise)
//!  92..96   MBZ
//!  96..112  HMAC over octets 0–95
//! ```

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::control::sid::Sid;
use crate::control::{array, be_u16, be_u32, fixed_packet, fixed_repr_helpers, Field, Refusal};
use crate::control::{Command, HMAC_LEN};
use crate::error::WireError;
use crate::time::NtpTimestamp;

/// Message length.
pub const LEN: usize = 112;
/// IPVN value of IPv4.
pub const IPVN_V4: u8 = 4;
/// IPVN value of IPv6.
pub const IPVN_V6: u8 = 6;

const WHAT: &str = "Request-TW-Session";

/// Field offsets.
pub mod field {
    use super::Field;
    pub const COMMAND: usize = 0;
    pub const IPVN: usize = 1;
    pub const CONF_SENDER: usize = 2;
    pub const CONF_RECEIVER: usize = 3;
    pub const SCHEDULE_SLOTS: Field = 4..8;
    pub const PACKETS: Field = 8..12;
    pub const SENDER_PORT: Field = 12..14;
    pub const RECEIVER_PORT: Field = 14..16;
    pub const SENDER_ADDRESS: Field = 16..32;
    pub const RECEIVER_ADDRESS: Field = 32..48;
    pub const SID: Field = 48..64;
    pub const PADDING_LENGTH: Field = 64..68;
    pub const START_TIME: Field = 68..76;
    pub const TIMEOUT: Field = 76..84;
    pub const TYPE_P: Field = 84..88;
    pub const OCTETS_TO_REFLECT: Field = 88..90;
    pub const PADDING_TO_REFLECT: Field = 90..92;
    pub const MBZ: Field = 92..96;
    pub const HMAC: Field = 96..112;
}

/// The Type-P Descriptor (RFC 4656 §3.5, RFC 5357 §3.5).
///
/// Only the DSCP form is meaningful to TWAMP: the two top bits 00, a 6-bit
/// DSCP, then 24 zero bits, i.e. `DSCP << 24`. The other form (top bits 01,
/// an RFC 2836 PHB ID) is kept as received; a server that cannot honour it
/// refuses the request (as perfSONAR does for every value outside
/// `0x3F000000`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TypeP(pub u32);

impl TypeP {
    /// The bits a DSCP-form descriptor may use.
    pub const DSCP_MASK: u32 = 0x3f00_0000;

    /// The descriptor for `dscp`, `None` if it does not fit 6 bits.
    pub const fn from_dscp(dscp: u8) -> Option<TypeP> {
        if dscp > 0x3f {
            None
        } else {
            Some(TypeP((dscp as u32) << 24))
        }
    }

    /// The DSCP if the value is in the DSCP form (only bits `0x3F000000`
    /// set), `None` otherwise.
    pub const fn dscp(self) -> Option<u8> {
        if self.0 & !Self::DSCP_MASK == 0 {
            Some((self.0 >> 24) as u8)
        } else {
            None
        }
    }

    /// True if the top two bits are 01 (PHB ID form).
    pub const fn is_phb_id_form(self) -> bool {
        self.0 >> 30 == 0b01
    }
}

impl fmt::Debug for TypeP {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dscp() {
            Some(d) => write!(f, "TypeP(DSCP {d})"),
            None => write!(f, "TypeP({:#010x})", self.0),
        }
    }
}

fixed_packet!(
    /// A zero-copy view of a Request-TW-Session.
    RequestTwSessionPacket,
    WHAT,
    LEN
);

impl<T: AsRef<[u8]>> RequestTwSessionPacket<T> {
    /// Octet 0, 5 in a valid message.
    pub fn command(&self) -> u8 {
        self.b()[field::COMMAND]
    }
    /// The low 4 bits of octet 1 (the high 4 bits are MBZ).
    pub fn ipvn(&self) -> u8 {
        self.b()[field::IPVN] & 0x0f
    }
    /// Conf-Sender.
    pub fn conf_sender(&self) -> u8 {
        self.b()[field::CONF_SENDER]
    }
    /// Conf-Receiver.
    pub fn conf_receiver(&self) -> u8 {
        self.b()[field::CONF_RECEIVER]
    }
    /// Number of Schedule Slots.
    pub fn schedule_slots(&self) -> u32 {
        be_u32(&self.b()[field::SCHEDULE_SLOTS])
    }
    /// Number of Packets.
    pub fn packets(&self) -> u32 {
        be_u32(&self.b()[field::PACKETS])
    }
    /// Sender Port.
    pub fn sender_port(&self) -> u16 {
        be_u16(&self.b()[field::SENDER_PORT])
    }
    /// Receiver Port.
    pub fn receiver_port(&self) -> u16 {
        be_u16(&self.b()[field::RECEIVER_PORT])
    }
    /// The 16 octets of the Sender Address field.
    pub fn sender_address_octets(&self) -> [u8; 16] {
        array(&self.b()[field::SENDER_ADDRESS])
    }
    /// The 16 octets of the Receiver Address field.
    pub fn receiver_address_octets(&self) -> [u8; 16] {
        array(&self.b()[field::RECEIVER_ADDRESS])
    }
    /// Sender Address decoded according to IPVN (see [`decode_address`]).
    pub fn sender_address(&self) -> IpAddr {
        decode_address(self.ipvn(), self.sender_address_octets())
    }
    /// Receiver Address decoded according to IPVN.
    pub fn receiver_address(&self) -> IpAddr {
        decode_address(self.ipvn(), self.receiver_address_octets())
    }
    /// The SID field.
    pub fn sid(&self) -> Sid {
        Sid(array(&self.b()[field::SID]))
    }
    /// Padding Length.
    pub fn padding_length(&self) -> u32 {
        be_u32(&self.b()[field::PADDING_LENGTH])
    }
    /// Start Time.
    pub fn start_time(&self) -> NtpTimestamp {
        NtpTimestamp::from_bytes(array(&self.b()[field::START_TIME]))
    }
    /// Timeout (an interval in timestamp format).
    pub fn timeout(&self) -> NtpTimestamp {
        NtpTimestamp::from_bytes(array(&self.b()[field::TIMEOUT]))
    }
    /// Type-P Descriptor.
    pub fn type_p(&self) -> TypeP {
        TypeP(be_u32(&self.b()[field::TYPE_P]))
    }
    /// RFC 6038 Octets to be reflected.
    pub fn octets_to_reflect(&self) -> [u8; 2] {
        array(&self.b()[field::OCTETS_TO_REFLECT])
    }
    /// RFC 6038 Length of padding to reflect.
    pub fn padding_to_reflect(&self) -> u16 {
        be_u16(&self.b()[field::PADDING_TO_REFLECT])
    }
    /// The HMAC field.
    pub fn hmac(&self) -> [u8; HMAC_LEN] {
        array(&self.b()[field::HMAC])
    }
    /// The octets the HMAC covers (0–95).
    pub fn hmac_input(&self) -> &[u8] {
        &self.b()[..field::HMAC.start]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RequestTwSessionPacket<T> {
    /// Sets octet 0.
    pub fn set_command(&mut self, v: u8) {
        self.b_mut()[field::COMMAND] = v;
    }
    /// Sets octet 1 to IPVN (its high 4 bits, MBZ, become 0).
    pub fn set_ipvn(&mut self, v: u8) {
        self.b_mut()[field::IPVN] = v & 0x0f;
    }
    /// Sets Conf-Sender.
    pub fn set_conf_sender(&mut self, v: u8) {
        self.b_mut()[field::CONF_SENDER] = v;
    }
    /// Sets Conf-Receiver.
    pub fn set_conf_receiver(&mut self, v: u8) {
        self.b_mut()[field::CONF_RECEIVER] = v;
    }
    /// Sets Number of Schedule Slots.
    pub fn set_schedule_slots(&mut self, v: u32) {
        self.b_mut()[field::SCHEDULE_SLOTS].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets Number of Packets.
    pub fn set_packets(&mut self, v: u32) {
        self.b_mut()[field::PACKETS].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets Sender Port.
    pub fn set_sender_port(&mut self, v: u16) {
        self.b_mut()[field::SENDER_PORT].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets Receiver Port.
    pub fn set_receiver_port(&mut self, v: u16) {
        self.b_mut()[field::RECEIVER_PORT].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets Sender Address (IPv4: 4 octets then 12 zeros).
    pub fn set_sender_address(&mut self, v: IpAddr) {
        self.b_mut()[field::SENDER_ADDRESS].copy_from_slice(&encode_address(v));
    }
    /// Sets Receiver Address (IPv4: 4 octets then 12 zeros).
    pub fn set_receiver_address(&mut self, v: IpAddr) {
        self.b_mut()[field::RECEIVER_ADDRESS].copy_from_slice(&encode_address(v));
    }
    /// Sets the SID field.
    pub fn set_sid(&mut self, v: Sid) {
        self.b_mut()[field::SID].copy_from_slice(&v.0);
    }
    /// Sets Padding Length.
    pub fn set_padding_length(&mut self, v: u32) {
        self.b_mut()[field::PADDING_LENGTH].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets Start Time.
    pub fn set_start_time(&mut self, v: NtpTimestamp) {
        self.b_mut()[field::START_TIME].copy_from_slice(&v.to_bytes());
    }
    /// Sets Timeout.
    pub fn set_timeout(&mut self, v: NtpTimestamp) {
        self.b_mut()[field::TIMEOUT].copy_from_slice(&v.to_bytes());
    }
    /// Sets the Type-P Descriptor.
    pub fn set_type_p(&mut self, v: TypeP) {
        self.b_mut()[field::TYPE_P].copy_from_slice(&v.0.to_be_bytes());
    }
    /// Sets RFC 6038 Octets to be reflected.
    pub fn set_octets_to_reflect(&mut self, v: [u8; 2]) {
        self.b_mut()[field::OCTETS_TO_REFLECT].copy_from_slice(&v);
    }
    /// Sets RFC 6038 Length of padding to reflect.
    pub fn set_padding_to_reflect(&mut self, v: u16) {
        self.b_mut()[field::PADDING_TO_REFLECT].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the HMAC field.
    pub fn set_hmac(&mut self, v: [u8; HMAC_LEN]) {
        self.b_mut()[field::HMAC].copy_from_slice(&v);
    }
    /// Zeroes the MBZ octets (octets 92–95).
    pub fn clear_mbz(&mut self) {
        self.b_mut()[field::MBZ].fill(0);
    }
}

/// Decodes an address field: for IPVN 4 the first 4 octets (the other 12 are
/// MBZ), otherwise all 16 octets as IPv6. (An IPVN other than 4 or 6 keeps
/// its 16 octets as an IPv6 address so nothing is lost; such a request is
/// refused by [`RequestTwSessionRepr::check`].)
pub fn decode_address(ipvn: u8, octets: [u8; 16]) -> IpAddr {
    if ipvn == IPVN_V4 {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// Encodes an address field: IPv4 as 4 octets and 12 zeros, IPv6 as 16.
pub fn encode_address(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            o
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The IPVN value for an address family.
pub const fn ipvn_of(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => IPVN_V4,
        IpAddr::V6(_) => IPVN_V6,
    }
}

/// A parsed Request-TW-Session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestTwSessionRepr {
    /// IP version of the test addresses, 4 or 6 (others are refused by
    /// [`Self::check`]).
    pub ipvn: u8,
    /// Conf-Sender (MUST be 0 in TWAMP).
    pub conf_sender: u8,
    /// Conf-Receiver (MUST be 0 in TWAMP).
    pub conf_receiver: u8,
    /// Number of Schedule Slots (MUST be 0 in TWAMP).
    pub schedule_slots: u32,
    /// Number of Packets (MUST be 0 in TWAMP).
    pub packets: u32,
    /// UDP port the Session-Sender sends from and receives on.
    pub sender_port: u16,
    /// Requested reflector UDP port (perfSONAR puts its own sender port here).
    pub receiver_port: u16,
    /// Session-Sender address; unspecified (all zero) means "the control
    /// connection's client address", see [`Self::resolved_sender`].
    pub sender_address: IpAddr,
    /// Session-Reflector address; unspecified means "the control
    /// connection's server address", see [`Self::resolved_receiver`].
    pub receiver_address: IpAddr,
    /// The SID field (sent as zero; the server assigns the SID).
    pub sid: Sid,
    /// Padding octets the sender appends to each test packet.
    pub padding_length: u32,
    /// Earliest start of the session.
    pub start_time: NtpTimestamp,
    /// How long the reflector keeps reflecting after Stop-Sessions.
    pub timeout: NtpTimestamp,
    /// Type-P Descriptor.
    pub type_p: TypeP,
    /// RFC 6038: octets the server echoes in Accept-Session (MBZ without
    /// Reflect Octets mode).
    pub octets_to_reflect: [u8; 2],
    /// RFC 6038: leading padding octets the reflector returns (MBZ without
    /// Reflect Octets mode).
    pub padding_to_reflect: u16,
    /// HMAC over octets 0–95 (zero in unauthenticated mode).
    pub hmac: [u8; HMAC_LEN],
}

impl RequestTwSessionRepr {
    /// Parses a (decrypted) Request-TW-Session. Fails only if octet 0 is not 5;
    /// field values TWAMP refuses are reported by [`Self::check`].
    pub fn parse<T: AsRef<[u8]>>(packet: &RequestTwSessionPacket<T>) -> Result<Self, WireError> {
        if packet.command() != u8::from(Command::RequestTwSession) {
            return Err(WireError::BadField {
                what: WHAT,
                field: "Command",
                value: packet.command().into(),
            });
        }
        Ok(RequestTwSessionRepr {
            ipvn: packet.ipvn(),
            conf_sender: packet.conf_sender(),
            conf_receiver: packet.conf_receiver(),
            schedule_slots: packet.schedule_slots(),
            packets: packet.packets(),
            sender_port: packet.sender_port(),
            receiver_port: packet.receiver_port(),
            sender_address: packet.sender_address(),
            receiver_address: packet.receiver_address(),
            sid: packet.sid(),
            padding_length: packet.padding_length(),
            start_time: packet.start_time(),
            timeout: packet.timeout(),
            type_p: packet.type_p(),
            octets_to_reflect: packet.octets_to_reflect(),
            padding_to_reflect: packet.padding_to_reflect(),
            hmac: packet.hmac(),
        })
    }

    /// Writes the message (command 5, MBZ zeroed). Each address is written
    /// in its own family's encoding and IPVN from [`Self::ipvn`]; build
    /// consistent values (see [`ipvn_of`]), which [`Self::check`] verifies.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut RequestTwSessionPacket<T>) {
        packet.set_command(Command::RequestTwSession.into());
        packet.set_ipvn(self.ipvn);
        packet.set_conf_sender(self.conf_sender);
        packet.set_conf_receiver(self.conf_receiver);
        packet.set_schedule_slots(self.schedule_slots);
        packet.set_packets(self.packets);
        packet.set_sender_port(self.sender_port);
        packet.set_receiver_port(self.receiver_port);
        packet.set_sender_address(self.sender_address);
        packet.set_receiver_address(self.receiver_address);
        packet.set_sid(self.sid);
        packet.set_padding_length(self.padding_length);
        packet.set_start_time(self.start_time);
        packet.set_timeout(self.timeout);
        packet.set_type_p(self.type_p);
        packet.set_octets_to_reflect(self.octets_to_reflect);
        packet.set_padding_to_reflect(self.padding_to_reflect);
        packet.clear_mbz();
        packet.set_hmac(self.hmac);
    }

    /// The mode-independent TWAMP rules of RFC 5357 §3.5; a violation is
    /// answered with Accept-Session carrying Accept 3 (not supported):
    /// Conf-Sender and Conf-Receiver 0, no schedule slots, Number of Packets
    /// 0, IPVN 4 or 6 (matching both addresses' family), Type-P in the DSCP
    /// form. The SID field is not checked (it is only "sent as zero").
    ///
    /// Rules that depend on the negotiated modes (RFC 6038 padding
    /// arithmetic) or on server policy (ports, link-local scope) are the
    /// caller's.
    pub fn check(&self) -> Result<(), Refusal> {
        let refuse = |field, value: u64| Err(Refusal::not_supported(WHAT, field, value));
        if self.conf_sender != 0 {
            return refuse("Conf-Sender", self.conf_sender.into());
        }
        if self.conf_receiver != 0 {
            return refuse("Conf-Receiver", self.conf_receiver.into());
        }
        if self.schedule_slots != 0 {
            return refuse("Number of Schedule Slots", self.schedule_slots.into());
        }
        if self.packets != 0 {
            return refuse("Number of Packets", self.packets.into());
        }
        if self.ipvn != IPVN_V4 && self.ipvn != IPVN_V6 {
            return refuse("IPVN", self.ipvn.into());
        }
        if ipvn_of(self.sender_address) != self.ipvn {
            return refuse("Sender Address", ipvn_of(self.sender_address).into());
        }
        if ipvn_of(self.receiver_address) != self.ipvn {
            return refuse("Receiver Address", ipvn_of(self.receiver_address).into());
        }
        if self.type_p.dscp().is_none() {
            return refuse("Type-P Descriptor", self.type_p.0.into());
        }
        Ok(())
    }

    /// The Session-Sender address: the Sender Address, or `client` (the
    /// control connection's peer) when it is all zero (RFC 5357 §3.5).
    /// IPv4-mapped IPv6 addresses are returned as IPv4.
    pub fn resolved_sender(&self, client: IpAddr) -> IpAddr {
        resolve(self.sender_address, client)
    }

    /// The Session-Reflector address: the Receiver Address, or `server` (the
    /// control connection's local address) when it is all zero.
    /// IPv4-mapped IPv6 addresses are returned as IPv4.
    pub fn resolved_receiver(&self, server: IpAddr) -> IpAddr {
        resolve(self.receiver_address, server)
    }
}

fn resolve(field: IpAddr, connection: IpAddr) -> IpAddr {
    if field.is_unspecified() {
        connection.to_canonical()
    } else {
        field.to_canonical()
    }
}

fixed_repr_helpers!(RequestTwSessionRepr, RequestTwSessionPacket, LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestTwSessionRepr {
        RequestTwSessionRepr {
            ipvn: 4,
            conf_sender: 0,
            conf_receiver: 0,
            schedule_slots: 0,
            packets: 0,
            sender_port: 40000,
            receiver_port: 862,
            sender_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            receiver_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            sid: Sid::ZERO,
            padding_length: 64,
            start_time: NtpTimestamp::default(),
            timeout: NtpTimestamp::from_bits(2 << 32),
            type_p: TypeP(0),
            octets_to_reflect: [0; 2],
            padding_to_reflect: 0,
            hmac: [0; 16],
        }
    }

    #[test]
    fn type_p_dscp_form() {
        assert_eq!(TypeP(0x2e00_0000).dscp(), Some(46));
        assert_eq!(TypeP::from_dscp(46), Some(TypeP(0x2e00_0000)));
        assert_eq!(TypeP(0).dscp(), Some(0));
        assert_eq!(TypeP(0x3f00_0000).dscp(), Some(63));
        assert_eq!(TypeP::from_dscp(64), None);
        assert_eq!(TypeP(0x4000_0000).dscp(), None);
        assert!(TypeP(0x4000_0000).is_phb_id_form());
        assert_eq!(TypeP(0x2e00_0001).dscp(), None);
        assert_eq!(TypeP(0x8000_0000).dscp(), None);
        assert_eq!(format!("{:?}", TypeP(0x2e00_0000)), "TypeP(DSCP 46)");
    }

    #[test]
    fn resolution_of_zero_addresses() {
        let r = request();
        let client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
        let server = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(r.resolved_sender(client), client);
        assert_eq!(r.resolved_receiver(server), r.receiver_address);
        // A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6.
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 9).to_ipv6_mapped());
        assert_eq!(r.resolved_sender(mapped), client);
        let v6 = RequestTwSessionRepr {
            ipvn: 6,
            sender_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            receiver_address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ..r
        };
        assert_eq!(
            v6.resolved_receiver(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn check_refuses_with_accept_3() {
        assert_eq!(request().check(), Ok(()));
        let cases = [
            (
                RequestTwSessionRepr {
                    conf_sender: 1,
                    ..request()
                },
                "Conf-Sender",
            ),
            (
                RequestTwSessionRepr {
                    conf_receiver: 1,
                    ..request()
                },
                "Conf-Receiver",
            ),
            (
                RequestTwSessionRepr {
                    schedule_slots: 1,
                    ..request()
                },
                "Number of Schedule Slots",
            ),
            (
                RequestTwSessionRepr {
                    packets: 10,
                    ..request()
                },
                "Number of Packets",
            ),
            (
                RequestTwSessionRepr {
                    ipvn: 5,
                    ..request()
                },
                "IPVN",
            ),
            (
                RequestTwSessionRepr {
                    ipvn: 6,
                    ..request()
                },
                "Sender Address",
            ),
            (
                RequestTwSessionRepr {
                    type_p: TypeP(0x4000_0000),
                    ..request()
                },
                "Type-P Descriptor",
            ),
        ];
        for (r, field) in cases {
            let refusal = r.check().unwrap_err();
            assert_eq!(refusal.accept, crate::accept::Accept::NotSupported);
            assert_eq!(refusal.field, field);
        }
    }

    #[test]
    fn ipv4_address_octets_beyond_four_are_mbz() {
        let mut b = request().to_bytes();
        b[field::RECEIVER_ADDRESS][4..].fill(0xaa);
        b[1] |= 0xf0;
        b[field::MBZ].fill(0xff);
        assert_eq!(RequestTwSessionRepr::from_bytes(&b), Ok(request()));
    }

    #[test]
    fn wrong_command_is_a_structural_error() {
        let mut b = request().to_bytes();
        b[0] = 2;
        assert_eq!(
            RequestTwSessionRepr::from_bytes(&b),
            Err(WireError::BadField {
                what: WHAT,
                field: "Command",
                value: 2
            })
        );
    }
}
