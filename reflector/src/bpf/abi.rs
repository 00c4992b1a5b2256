//! Rust mirror of `ebpf/ricochet.h`: the map keys and values the XDP program
//! shares with user space, and their byte encodings.
//!
//! Every `#[repr(C)]` type here has the layout of the C struct of the same
//! name (`Raw*` ↔ `struct rc_*`); `tests::layout_matches_btf` checks each
//! size and field offset against the BTF of the compiled object. Encodings
//! are written field by field at `offset_of!` positions, so no `unsafe`
//! transmutes are needed.
//!
//! Conventions (as in the header): addresses and ports in network byte
//! order, everything else in host byte order.

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::BpfError;

/// Key family tag (the IP version number), `RC_FAMILY_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Family {
    /// IPv4 (`RC_FAMILY_IPV4`).
    V4 = 4,
    /// IPv6 (`RC_FAMILY_IPV6`).
    V6 = 6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

pub(crate) fn addr_bytes(addr: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

pub(crate) fn addr_from(family: Family, b: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*b)),
    }
}

/// `struct rc_session_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawSessionKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Network byte order.
    pub local_port: [u8; 2],
    /// Network byte order.
    pub remote_port: [u8; 2],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `struct rc_listener_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawListenerKey {
    pub local_addr: [u8; 16],
    /// Network byte order.
    pub local_port: [u8; 2],
    pub family: u8,
    pub _pad: u8,
}

/// `struct rc_entry_stats`: per-entry counters kept by the XDP program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryStats {
    /// Packets that matched the entry.
    pub rx_packets: u64,
    /// Packets reflected with XDP_TX.
    pub reflected: u64,
    /// Packets redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Packets dropped by the token bucket.
    pub rate_limited: u64,
    /// Packets dropped as too short for the mode.
    pub bad_length: u64,
    /// UDP payload octets that matched.
    pub rx_bytes: u64,
}

/// `struct rc_entry`: value of the `sessions` and `listeners` maps.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawEntry {
    /// `struct bpf_spin_lock`; the kernel ignores it on user-space writes.
    pub lock: u32,
    pub seq: u32,
    pub generation: u32,
    pub slot: u32,
    pub mode: u8,
    pub dscp: u8,
    pub flags: u16,
    pub reflect_octets: u16,
    pub sender_mbz: u8,
    pub _pad0: u8,
    pub ssid: u16,
    pub _pad1: u16,
    pub rate_pps: u32,
    pub burst: u32,
    pub tokens: u64,
    pub last_ns: u64,
    pub stats: EntryStats,
}

/// `struct rc_clock`: the single entry of the `clock` map.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockState {
    /// TAI − UTC in seconds, as adjtimex(2) reports it (`tai`). The XDP
    /// program computes UTC = CLOCK_TAI − tai_offset for NTP timestamps.
    pub tai_offset: i32,
    /// RFC 4656 §4.1.2 Error Estimate (S, Scale, Multiplier) for T2/T3;
    /// Z is set per session by the program, Multiplier 0 becomes 1.
    pub error_estimate: u16,
    /// [`ClockState::NIC_RX`] or 0.
    pub flags: u16,
    /// CLOCK_TAI nanoseconds of the last update.
    pub updated_ns: u64,
}

impl ClockState {
    /// `RC_CLOCK_NIC_RX`: use the NIC receive timestamp (device-bound
    /// program only; the PHC is assumed to run on TAI).
    pub const NIC_RX: u16 = 1 << 0;
}

/// `struct rc_xdp_meta`: written in front of frames redirected to AF_XDP.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpMeta {
    /// T2, TAI nanoseconds.
    pub rx_ts_ns: u64,
    /// The entry's slot id.
    pub slot: u32,
    /// The entry's generation.
    pub generation: u32,
    /// Offset of the UDP payload in the frame.
    pub payload_off: u16,
    /// [`TsSource`] as a number.
    pub ts_source: u8,
    /// [`Origin`] as a number.
    pub origin: u8,
    /// [`XdpMeta::MAGIC`].
    pub magic: u32,
}

/// Where a T2 timestamp came from (`enum rc_ts_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TsSource {
    /// `bpf_ktime_get_tai_ns()` at XDP entry.
    KernelTai = 1,
    /// The NIC (`bpf_xdp_metadata_rx_timestamp`).
    Nic = 2,
}

/// `RC_ORIGIN_F_REFUSED`: the flag bit of `rc_xdp_meta.origin`.
const ORIGIN_F_REFUSED: u8 = 0x80;

/// Which map an entry came from (`enum rc_origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Origin {
    /// `sessions` (stateful).
    Session = 1,
    /// `listeners` (stateless).
    Listener = 2,
    /// ESP of a known inbound SA (`esp_sas`): the slot is an `esp_keys`
    /// index and `payload_off` the offset of the ESP header.
    Esp = 3,
}

/// Why [`XdpMeta::parse`] rejected the octets in front of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Fewer than 24 octets of metadata.
    #[error("metadata truncated: {0} octets, need 24")]
    Truncated(usize),
    /// The magic (last 4 octets) is not `RCM1`.
    #[error("metadata magic {0:#010x} is not RC_META_MAGIC")]
    BadMagic(u32),
    /// Unknown timestamp source or origin.
    #[error("metadata field {field} has unknown value {value}")]
    BadField {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u8,
    },
}

impl XdpMeta {
    /// `RC_META_MAGIC` ("RCM1").
    pub const MAGIC: u32 = 0x5243_4d31;
    /// Size on the wire (in front of the frame).
    pub const LEN: usize = size_of::<XdpMeta>();

    /// Parses the metadata that ends exactly where the frame begins: `buf`
    /// holds (at least) the octets just before the frame; the last
    /// [`XdpMeta::LEN`] are used. Fields are in host byte order.
    pub fn parse(buf: &[u8]) -> Result<XdpMeta, MetaError> {
        let start = buf
            .len()
            .checked_sub(Self::LEN)
            .ok_or(MetaError::Truncated(buf.len()))?;
        let b = &buf[start..];
        let m = XdpMeta {
            rx_ts_ns: ne_u64(b, offset_of!(XdpMeta, rx_ts_ns)),
            slot: ne_u32(b, offset_of!(XdpMeta, slot)),
            generation: ne_u32(b, offset_of!(XdpMeta, generation)),
            payload_off: ne_u16(b, offset_of!(XdpMeta, payload_off)),
            ts_source: b[offset_of!(XdpMeta, ts_source)],
            origin: b[offset_of!(XdpMeta, origin)],
            magic: ne_u32(b, offset_of!(XdpMeta, magic)),
        };
        if m.magic != Self::MAGIC {
            return Err(MetaError::BadMagic(m.magic));
        }
        m.ts_source()?;
        m.origin()?;
        Ok(m)
    }

    /// The timestamp source.
    pub fn ts_source(&self) -> Result<TsSource, MetaError> {
        match self.ts_source {
            1 => Ok(TsSource::KernelTai),
            2 => Ok(TsSource::Nic),
            value => Err(MetaError::BadField {
                field: "ts_source",
                value,
            }),
        }
    }

    /// The map the entry came from.
    pub fn origin(&self) -> Result<Origin, MetaError> {
        match self.origin & !ORIGIN_F_REFUSED {
            1 => Ok(Origin::Session),
            2 => Ok(Origin::Listener),
            3 => Ok(Origin::Esp),
            value => Err(MetaError::BadField {
                field: "origin",
                value,
            }),
        }
    }

    /// The token bucket refused this packet: it is here to be counted
    /// only, never answered ([`EntryFlags::XSK_REFUSED`]).
    pub fn refused(&self) -> bool {
        self.origin & ORIGIN_F_REFUSED != 0
    }
}

/// Per-CPU counter indices (`enum rc_counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// Non-IP or non-UDP: passed untouched.
    PassNotUdp = 0,
    /// UDP matching no session or listener ("unknown session"): passed.
    PassNoMatch = 1,
    /// Truncated or invalid L2–L4, fragments, bad checksums: passed.
    PassMalformed = 2,
    /// Multicast/broadcast/unspecified address or zero source port: passed.
    PassNotUnicast = 3,
    /// Reflected (XDP_TX).
    Reflected = 4,
    /// Redirected to an AF_XDP socket.
    Redirected = 5,
    /// Secured packet without a socket on its queue: passed.
    RedirectNoXsk = 6,
    /// Known entry, payload too short for the mode: dropped.
    DropBadLength = 7,
    /// Token bucket empty: dropped.
    DropRateLimited = 8,
    /// STAMP SSID mismatch: dropped.
    DropSsid = 9,
    /// Helper failure (no tailroom, ...).
    Error = 10,
    /// ESP of a known inbound SA redirected to an AF_XDP socket.
    EspRedirected = 11,
    /// ESP (raw or in UDP 4500) with an unknown SPI: passed.
    EspUnknownSpi = 12,
    /// UDP 4500 carrying IKE (non-ESP marker) or a NAT keepalive: passed.
    EspIke = 13,
    /// Clear packet of an entry whose traffic must come in ESP: dropped.
    DropNotEsp = 14,
}

impl Counter {
    /// Number of counters (`RC_CNT_MAX`).
    pub const COUNT: usize = 15;
    /// All counters in index order.
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::PassNotUdp,
        Counter::PassNoMatch,
        Counter::PassMalformed,
        Counter::PassNotUnicast,
        Counter::Reflected,
        Counter::Redirected,
        Counter::RedirectNoXsk,
        Counter::DropBadLength,
        Counter::DropRateLimited,
        Counter::DropSsid,
        Counter::Error,
        Counter::EspRedirected,
        Counter::EspUnknownSpi,
        Counter::EspIke,
        Counter::DropNotEsp,
    ];

    /// A stable name for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Counter::PassNotUdp => "pass_not_udp",
            Counter::PassNoMatch => "pass_unknown_session",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassNotUnicast => "pass_not_unicast",
            Counter::Reflected => "reflected",
            Counter::Redirected => "redirected",
            Counter::RedirectNoXsk => "redirect_no_xsk",
            Counter::DropBadLength => "drop_bad_length",
            Counter::DropRateLimited => "drop_rate_limited",
            Counter::DropSsid => "drop_ssid",
            Counter::Error => "error",
            Counter::EspRedirected => "esp_redirected",
            Counter::EspUnknownSpi => "esp_pass_unknown_spi",
            Counter::EspIke => "esp_pass_ike",
            Counter::DropNotEsp => "drop_not_esp",
        }
    }
}

/// Capacity of the `sessions` map (`RC_MAX_SESSIONS`).
pub const MAX_SESSIONS: u32 = 65536;
/// Capacity of the `listeners` map (`RC_MAX_LISTENERS`).
pub const MAX_LISTENERS: u32 = 1024;
/// Capacity of the `xsks` map (`RC_MAX_QUEUES`).
pub const MAX_QUEUES: u32 = 256;

/// Number of slots (`RC_MAX_SLOTS`): capacity of the `keys` map and the
/// range of [`EntryConfig::slot`].
pub const MAX_SLOTS: u32 = MAX_SESSIONS + MAX_LISTENERS;

/// Octets of `rc_keys.key` (`RC_KEY_LEN`).
pub const KEY_LEN: usize = 48;

/// `struct rc_keys`: value of the `keys` array (per-slot secured-session
/// state for the AF_XDP pollers). Holds key material: build it only to
/// encode or decode, and let [`SlotKeys`] own the secret.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawKeys {
    pub generation: u32,
    pub instance: u32,
    pub mode: u8,
    pub dscp: u8,
    pub flags: u16,
    pub reflect_octets: u16,
    pub sender_mbz: u8,
    pub sender_family: u8,
    pub sender_addr: [u8; 16],
    /// Network byte order.
    pub sender_port: [u8; 2],
    /// RFC 8972 SSID of a STAMP session slot, host order.
    pub ssid: u16,
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for RawKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKeys")
            .field("generation", &self.generation)
            .field("mode", &self.mode)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// STAMP session slots: where the Class of Service policy and the
/// Micro-session ID sit in `rc_keys.key`, after the 32-octet HMAC key
/// (ricochet.h, `RC_KEY_LEN`).
const STAMP_COS_AT: usize = 32;
const STAMP_MICRO_AT: usize = 40;
const STAMP_MICRO_FLAG_AT: usize = 42;

/// The key material of a secured slot and the protection it selects
/// (`enum rc_key_mode` with `rc_keys.key`). Zeroized on drop; `Debug`
/// never shows it.
#[derive(Clone)]
pub enum KeyMaterial {
    /// TWAMP authenticated mode (RFC 5357 mode 2): the per-SID Test AES and
    /// HMAC keys (RFC 4656 §4.1.2), not their schedules.
    TwampAuthenticated(ricochet_protocol::crypto::SessionKeys),
    /// TWAMP encrypted mode (RFC 5357 mode 4): the per-SID test keys.
    TwampEncrypted(ricochet_protocol::crypto::SessionKeys),
    /// Authenticated STAMP (RFC 8762 §4.1.1): the HMAC-SHA-256 key.
    StampAuthenticated(zeroize::Zeroizing<[u8; 32]>),
    /// Unauthenticated TWAMP carried inside an ESP SA (the pollers reflect
    /// it after decryption; ESP protects it). No key.
    TwampOpen,
    /// A stateful STAMP session (RFC 8762 §4.3) reflected by the pollers:
    /// its SSID (RFC 8972 §3) and, authenticated, its HMAC-SHA-256 key (a
    /// shorter key zero-padded to 32 octets: the same HMAC, RFC 2104 §2).
    StampSession {
        /// The SSID.
        ssid: u16,
        /// The key; `None`: unauthenticated.
        key: Option<zeroize::Zeroizing<[u8; 32]>>,
        /// Class of Service policy (RFC 8972 §4.4): bit n set = DSCP n may
        /// be asked for (`key[32..40]`, native order).
        cos_allowed_dscp: u64,
        /// RFC 9534 Reflector Micro-session ID (`key[40..42]`, native
        /// order, present when bit 0 of `key[42]` is set); `None`: the TLV
        /// comes back with U = 1.
        micro_session_id: Option<u16>,
    },
    /// A stateless unauthenticated STAMP listener's TLV-bearing packets
    /// ([`EntryFlags::TLV_TO_XSK`]), or its packets carried inside an ESP
    /// SA: no key.
    StampOpen,
}

impl KeyMaterial {
    /// `RC_KEYS_TWAMP_AUTH`.
    pub const TWAMP_AUTH: u8 = 1;
    /// `RC_KEYS_TWAMP_ENC`.
    pub const TWAMP_ENC: u8 = 2;
    /// `RC_KEYS_STAMP_AUTH`.
    pub const STAMP_AUTH: u8 = 3;
    /// `RC_KEYS_STAMP_SESSION`.
    pub const STAMP_SESSION: u8 = 4;
    /// `RC_KEYS_STAMP_SESSION_AUTH`.
    pub const STAMP_SESSION_AUTH: u8 = 5;
    /// `RC_KEYS_STAMP_OPEN`.
    pub const STAMP_OPEN: u8 = 6;
    /// `RC_KEYS_TWAMP_OPEN`.
    pub const TWAMP_OPEN: u8 = 7;

    fn mode(&self) -> u8 {
        match self {
            KeyMaterial::TwampAuthenticated(_) => Self::TWAMP_AUTH,
            KeyMaterial::TwampEncrypted(_) => Self::TWAMP_ENC,
            KeyMaterial::StampAuthenticated(_) => Self::STAMP_AUTH,
            KeyMaterial::TwampOpen => Self::TWAMP_OPEN,
            KeyMaterial::StampSession { key: None, .. } => Self::STAMP_SESSION,
            KeyMaterial::StampSession { key: Some(_), .. } => Self::STAMP_SESSION_AUTH,
            KeyMaterial::StampOpen => Self::STAMP_OPEN,
        }
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::TwampAuthenticated(_) => "TwampAuthenticated(<redacted>)",
            KeyMaterial::TwampEncrypted(_) => "TwampEncrypted(<redacted>)",
            KeyMaterial::StampAuthenticated(_) => "StampAuthenticated(<redacted>)",
            KeyMaterial::TwampOpen => "TwampOpen",
            KeyMaterial::StampSession { key: None, .. } => "StampSession",
            KeyMaterial::StampSession { key: Some(_), .. } => "StampSession(<redacted>)",
            KeyMaterial::StampOpen => "StampOpen",
        })
    }
}

/// What the control plane writes into the `keys` map for one slot: the
/// state an AF_XDP poller needs to verify, decrypt, reflect and protect the
/// slot's packets (`struct rc_keys`).
#[derive(Clone, Debug)]
pub struct SlotKeys {
    /// The generation of the `sessions`/`listeners` entry this state
    /// belongs to ([`EntryConfig::generation`]).
    pub generation: u32,
    /// A new value for every new session in the slot. A new generation
    /// with the same instance and otherwise identical values keeps the
    /// pollers' session state (the reflector's own sequence counter,
    /// RFC 5357 §4.2.1); any other change rebuilds it from 0.
    pub instance: u32,
    /// Protection and keys.
    pub keys: KeyMaterial,
    /// Format options: [`EntryFlags::PTP`], [`EntryFlags::DSCP_ECN`],
    /// [`EntryFlags::SYMMETRICAL`], [`EntryFlags::REFLECT_OCTETS`],
    /// [`EntryFlags::SET_DSCP`].
    pub flags: EntryFlags,
    /// DSCP (0..=63) of the replies with [`EntryFlags::SET_DSCP`] (Type-P,
    /// RFC 5357 §3.5).
    pub dscp: u8,
    /// RFC 6038 Reflect Octets length with [`EntryFlags::REFLECT_OCTETS`].
    pub reflect_octets: u16,
    /// RFC 6038 Symmetrical Size sender MBZ octets with
    /// [`EntryFlags::SYMMETRICAL`]: 56 or 64 for authenticated/encrypted
    /// TWAMP (twamp-test.md §6.2).
    pub sender_mbz: u8,
    /// The Session-Sender's address and port; `None` for a listener (no
    /// source check).
    pub sender: Option<SocketAddr>,
}

impl SlotKeys {
    /// The value as map octets; zeroized when dropped.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut b = zeroize::Zeroizing::new(vec![0u8; size_of::<RawKeys>()]);
        put(
            &mut b,
            offset_of!(RawKeys, generation),
            &self.generation.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(RawKeys, instance),
            &self.instance.to_ne_bytes(),
        );
        b[offset_of!(RawKeys, mode)] = self.keys.mode();
        b[offset_of!(RawKeys, dscp)] = self.dscp & 0x3f;
        put(
            &mut b,
            offset_of!(RawKeys, flags),
            &self.flags.0.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(RawKeys, reflect_octets),
            &self.reflect_octets.to_ne_bytes(),
        );
        b[offset_of!(RawKeys, sender_mbz)] = self.sender_mbz;
        if let Some(s) = &self.sender {
            b[offset_of!(RawKeys, sender_family)] = Family::of(&s.ip()) as u8;
            put(
                &mut b,
                offset_of!(RawKeys, sender_addr),
                &addr_bytes(&s.ip()),
            );
            put(
                &mut b,
                offset_of!(RawKeys, sender_port),
                &s.port().to_be_bytes(),
            );
        }
        let k = offset_of!(RawKeys, key);
        match &self.keys {
            KeyMaterial::TwampAuthenticated(sk) | KeyMaterial::TwampEncrypted(sk) => {
                put(&mut b, k, &sk.aes);
                put(&mut b, k + 16, &sk.hmac);
            }
            KeyMaterial::StampAuthenticated(key) => put(&mut b, k, &key[..]),
            KeyMaterial::StampSession {
                ssid,
                key,
                cos_allowed_dscp,
                micro_session_id,
            } => {
                put(&mut b, offset_of!(RawKeys, ssid), &ssid.to_ne_bytes());
                if let Some(key) = key {
                    put(&mut b, k, &key[..]);
                }
                put(&mut b, k + STAMP_COS_AT, &cos_allowed_dscp.to_ne_bytes());
                if let Some(id) = micro_session_id {
                    put(&mut b, k + STAMP_MICRO_AT, &id.to_ne_bytes());
                    b[k + STAMP_MICRO_FLAG_AT] = 1;
                }
            }
            KeyMaterial::TwampOpen | KeyMaterial::StampOpen => {}
        }
        b
    }

    /// Parses map octets; `Ok(None)` for an unused slot (`RC_KEYS_NONE`).
    pub fn from_bytes(b: &[u8]) -> Result<Option<SlotKeys>, BpfError> {
        check_len("keys", b, size_of::<RawKeys>())?;
        let k = offset_of!(RawKeys, key);
        let twamp_keys = || {
            let mut octets = zeroize::Zeroizing::new([0u8; KEY_LEN]);
            octets.copy_from_slice(&b[k..k + KEY_LEN]);
            ricochet_protocol::crypto::SessionKeys::from_bytes(&octets)
        };
        let keys = match b[offset_of!(RawKeys, mode)] {
            0 => return Ok(None),
            KeyMaterial::TWAMP_AUTH => KeyMaterial::TwampAuthenticated(twamp_keys()),
            KeyMaterial::TWAMP_ENC => KeyMaterial::TwampEncrypted(twamp_keys()),
            KeyMaterial::STAMP_AUTH => {
                let mut key = zeroize::Zeroizing::new([0u8; 32]);
                key.copy_from_slice(&b[k..k + 32]);
                KeyMaterial::StampAuthenticated(key)
            }
            KeyMaterial::TWAMP_OPEN => KeyMaterial::TwampOpen,
            m @ (KeyMaterial::STAMP_SESSION | KeyMaterial::STAMP_SESSION_AUTH) => {
                let key = (m == KeyMaterial::STAMP_SESSION_AUTH).then(|| {
                    let mut key = zeroize::Zeroizing::new([0u8; 32]);
                    key.copy_from_slice(&b[k..k + 32]);
                    key
                });
                KeyMaterial::StampSession {
                    ssid: ne_u16(b, offset_of!(RawKeys, ssid)),
                    key,
                    cos_allowed_dscp: ne_u64(b, k + STAMP_COS_AT),
                    micro_session_id: (b[k + STAMP_MICRO_FLAG_AT] & 1 != 0)
                        .then(|| ne_u16(b, k + STAMP_MICRO_AT)),
                }
            }
            KeyMaterial::STAMP_OPEN => KeyMaterial::StampOpen,
            m => return Err(BpfError::BadMapData(format!("keys mode {m}"))),
        };
        let port = u16::from_be_bytes([
            b[offset_of!(RawKeys, sender_port)],
            b[offset_of!(RawKeys, sender_port) + 1],
        ]);
        let mut addr = [0u8; 16];
        let a = offset_of!(RawKeys, sender_addr);
        addr.copy_from_slice(&b[a..a + 16]);
        let sender = match b[offset_of!(RawKeys, sender_family)] {
            0 => None,
            4 => Some(SocketAddr::new(addr_from(Family::V4, &addr), port)),
            6 => Some(SocketAddr::new(addr_from(Family::V6, &addr), port)),
            f => return Err(BpfError::BadMapData(format!("keys sender family {f}"))),
        };
        Ok(Some(SlotKeys {
            generation: ne_u32(b, offset_of!(RawKeys, generation)),
            instance: ne_u32(b, offset_of!(RawKeys, instance)),
            keys,
            flags: EntryFlags(ne_u16(b, offset_of!(RawKeys, flags))),
            dscp: b[offset_of!(RawKeys, dscp)],
            reflect_octets: ne_u16(b, offset_of!(RawKeys, reflect_octets)),
            sender_mbz: b[offset_of!(RawKeys, sender_mbz)],
            sender,
        }))
    }
}

pub(crate) fn ne_u16(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
pub(crate) fn ne_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
pub(crate) fn ne_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}
pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// The (local, remote) endpoints of a provisioned session, as the
/// reflector sees them: `local` is the destination of the test packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The reflector's address and port.
    pub local: SocketAddr,
    /// The Session-Sender's address and port.
    pub remote: SocketAddr,
}

impl SessionKey {
    /// Builds a key; both endpoints must be of the same family. IPv4-mapped
    /// IPv6 addresses are not converted: use the family the packets use.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Result<SessionKey, BpfError> {
        if Family::of(&local.ip()) != Family::of(&remote.ip()) {
            return Err(BpfError::FamilyMismatch { local, remote });
        }
        Ok(SessionKey { local, remote })
    }

    /// The raw `struct rc_session_key`.
    pub fn raw(&self) -> RawSessionKey {
        RawSessionKey {
            local_addr: addr_bytes(&self.local.ip()),
            remote_addr: addr_bytes(&self.remote.ip()),
            local_port: self.local.port().to_be_bytes(),
            remote_port: self.remote.port().to_be_bytes(),
            family: Family::of(&self.local.ip()) as u8,
            _pad: [0; 3],
        }
    }

    /// The key as map octets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let r = self.raw();
        let mut b = vec![0u8; size_of::<RawSessionKey>()];
        put(&mut b, offset_of!(RawSessionKey, local_addr), &r.local_addr);
        put(
            &mut b,
            offset_of!(RawSessionKey, remote_addr),
            &r.remote_addr,
        );
        put(&mut b, offset_of!(RawSessionKey, local_port), &r.local_port);
        put(
            &mut b,
            offset_of!(RawSessionKey, remote_port),
            &r.remote_port,
        );
        b[offset_of!(RawSessionKey, family)] = r.family;
        b
    }

    /// Parses map octets (as returned by key iteration).
    pub fn from_bytes(b: &[u8]) -> Result<SessionKey, BpfError> {
        check_len("session key", b, size_of::<RawSessionKey>())?;
        let family = match b[offset_of!(RawSessionKey, family)] {
            4 => Family::V4,
            6 => Family::V6,
            f => return Err(BpfError::BadMapData(format!("session key family {f}"))),
        };
        let arr = |off: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[off..off + 16]);
            a
        };
        let port = |off: usize| u16::from_be_bytes([b[off], b[off + 1]]);
        Ok(SessionKey {
            local: SocketAddr::new(
                addr_from(family, &arr(offset_of!(RawSessionKey, local_addr))),
                port(offset_of!(RawSessionKey, local_port)),
            ),
            remote: SocketAddr::new(
                addr_from(family, &arr(offset_of!(RawSessionKey, remote_addr))),
                port(offset_of!(RawSessionKey, remote_port)),
            ),
        })
    }
}

/// A stateless listener: a local port on one address, or on every local
/// address of a family (`addr: None`). An exact address wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// The family of the packets.
    pub family: Family,
    /// The local address, or `None` for any.
    pub addr: Option<IpAddr>,
    /// The local UDP port.
    pub port: u16,
}

impl ListenerKey {
    /// A listener on every local address of `family`.
    pub fn any(family: Family, port: u16) -> ListenerKey {
        ListenerKey {
            family,
            addr: None,
            port,
        }
    }

    /// A listener on one local address.
    pub fn exact(local: SocketAddr) -> ListenerKey {
        ListenerKey {
            family: Family::of(&local.ip()),
            addr: Some(local.ip()),
            port: local.port(),
        }
    }

    /// The key as map octets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<RawListenerKey>()];
        if let Some(a) = &self.addr {
            put(
                &mut b,
                offset_of!(RawListenerKey, local_addr),
                &addr_bytes(a),
            );
        }
        put(
            &mut b,
            offset_of!(RawListenerKey, local_port),
            &self.port.to_be_bytes(),
        );
        b[offset_of!(RawListenerKey, family)] = self.family as u8;
        b
    }
}

/// How the XDP program handles an entry's packets (`enum rc_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Unauthenticated or mixed-mode TWAMP (RFC 5357 §4.2.1, RFC 5618):
    /// reflected in XDP.
    Twamp = 1,
    /// Unauthenticated STAMP (RFC 8762 §4.3): reflected in XDP.
    Stamp = 2,
    /// Authenticated/encrypted TWAMP or authenticated STAMP: redirected to
    /// the AF_XDP socket of the receiving queue.
    Secured = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Result<Mode, BpfError> {
        match v {
            1 => Ok(Mode::Twamp),
            2 => Ok(Mode::Stamp),
            3 => Ok(Mode::Secured),
            m => Err(BpfError::BadMapData(format!("entry mode {m}"))),
        }
    }
}

/// `enum rc_flags` as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EntryFlags(pub u16);

impl EntryFlags {
    /// RFC 8186: PTPv2 truncated timestamps (Z = 1).
    pub const PTP: EntryFlags = EntryFlags(1 << 0);
    /// RFC 7750 DSCP and ECN Monitoring (TWAMP): 44-octet reflector header.
    pub const DSCP_ECN: EntryFlags = EntryFlags(1 << 1);
    /// RFC 6038 Symmetrical Size (TWAMP): sender padding after `sender_mbz`.
    pub const SYMMETRICAL: EntryFlags = EntryFlags(1 << 2);
    /// RFC 6038 Reflect Octets: `reflect_octets` must fit the padding.
    pub const REFLECT_OCTETS: EntryFlags = EntryFlags(1 << 3);
    /// Send with the entry's DSCP instead of the received one.
    pub const SET_DSCP: EntryFlags = EntryFlags(1 << 4);
    /// STAMP: packets with TLVs (longer than 44 octets) go to AF_XDP.
    pub const TLV_TO_XSK: EntryFlags = EntryFlags(1 << 5);
    /// STAMP (RFC 8972 §3): drop packets whose SSID differs.
    pub const CHECK_SSID: EntryFlags = EntryFlags(1 << 6);
    /// The traffic is carried in an ESP SA: clear packets are dropped.
    pub const ESP_ONLY: EntryFlags = EntryFlags(1 << 7);
    /// Secured entries: a packet the token bucket refuses still goes to
    /// the poller, marked ([`XdpMeta::refused`]), to be counted only (STAMP
    /// Direct Measurement R_RxC, RFC 8972 §4.5); never answered.
    pub const XSK_REFUSED: EntryFlags = EntryFlags(1 << 8);

    /// No flag.
    pub const fn empty() -> EntryFlags {
        EntryFlags(0)
    }
    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: EntryFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for EntryFlags {
    type Output = EntryFlags;
    fn bitor(self, rhs: EntryFlags) -> EntryFlags {
        EntryFlags(self.0 | rhs.0)
    }
}

/// What the control plane writes for a session or listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryConfig {
    /// How packets are handled.
    pub mode: Mode,
    /// Option flags.
    pub flags: EntryFlags,
    /// DSCP (0..=63) used with [`EntryFlags::SET_DSCP`].
    pub dscp: u8,
    /// RFC 6038 Reflect Octets length, with [`EntryFlags::REFLECT_OCTETS`].
    pub reflect_octets: u16,
    /// RFC 6038/7750 sender MBZ octets with [`EntryFlags::SYMMETRICAL`]:
    /// 27 (RFC 6038), 28 (RFC 7750 Fig. 4) or 30.
    pub sender_mbz: u8,
    /// RFC 8972 SSID with [`EntryFlags::CHECK_SSID`].
    pub ssid: u16,
    /// Bumped by the control plane on every change.
    pub generation: u32,
    /// Slot id for AF_XDP pollers.
    pub slot: u32,
    /// Token bucket rate, packets per second; 0 = unlimited.
    pub rate_pps: u32,
    /// Token bucket depth, packets (0 is taken as 1).
    pub burst: u32,
}

impl EntryConfig {
    /// A plain configuration for `mode`: no flags, received DSCP kept,
    /// rate limited to `rate_pps` with a burst of one second's worth.
    pub fn new(mode: Mode, rate_pps: u32) -> EntryConfig {
        EntryConfig {
            mode,
            flags: EntryFlags::empty(),
            dscp: 0,
            reflect_octets: 0,
            sender_mbz: 27,
            ssid: 0,
            generation: 0,
            slot: 0,
            rate_pps,
            burst: rate_pps.max(1),
        }
    }

    /// Refuses combinations the XDP program would not honour.
    /// [`EntryFlags::CHECK_SSID`] is checked only for [`Mode::Stamp`]
    /// entries, whose packets have the unauthenticated layout (SSID at
    /// octets 14–15, RFC 8972 §3): a secured entry may be authenticated
    /// STAMP (SSID at 26–27), unauthenticated STAMP or TWAMP, which the XDP
    /// program cannot tell apart (it never reads the keys), so there the
    /// pollers check the SSID (`StampSessionEngine::matches`) and the flag
    /// would be silently ignored: it is an error instead.
    pub fn check(&self) -> Result<(), BpfError> {
        if self.flags.contains(EntryFlags::CHECK_SSID) && self.mode != Mode::Stamp {
            return Err(BpfError::BadMapData(format!(
                "CHECK_SSID on a {:?} entry: the XDP program checks the SSID of \
                 unauthenticated STAMP entries only (the pollers check secured ones)",
                self.mode
            )));
        }
        Ok(())
    }
}

/// One map entry as read back: its configuration and the data plane's
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What the control plane wrote.
    pub config: EntryConfig,
    /// Next reflector sequence number (stateful sessions).
    pub seq: u32,
    /// Token bucket fill, nano-packets.
    pub tokens: u64,
    /// Last refill, CLOCK_TAI nanoseconds.
    pub last_ns: u64,
    /// Counters.
    pub stats: EntryStats,
}

impl RawEntry {
    /// A fresh entry for `config`: sequence 0, full bucket, zero counters.
    pub fn fresh(config: &EntryConfig) -> RawEntry {
        RawEntry {
            mode: config.mode as u8,
            dscp: config.dscp & 0x3f,
            flags: config.flags.0,
            reflect_octets: config.reflect_octets,
            sender_mbz: config.sender_mbz,
            ssid: config.ssid,
            generation: config.generation,
            slot: config.slot,
            rate_pps: config.rate_pps,
            burst: config.burst,
            tokens: u64::from(config.burst.max(1)) * 1_000_000_000,
            ..RawEntry::default()
        }
    }

    /// The value as map octets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<RawEntry>()];
        macro_rules! w {
            ($f:ident) => {
                put(&mut b, offset_of!(RawEntry, $f), &self.$f.to_ne_bytes())
            };
        }
        w!(seq);
        w!(generation);
        w!(slot);
        w!(mode);
        w!(dscp);
        w!(flags);
        w!(reflect_octets);
        w!(sender_mbz);
        w!(ssid);
        w!(rate_pps);
        w!(burst);
        w!(tokens);
        w!(last_ns);
        let s = offset_of!(RawEntry, stats);
        let st = &self.stats;
        for (off, v) in [
            (offset_of!(EntryStats, rx_packets), st.rx_packets),
            (offset_of!(EntryStats, reflected), st.reflected),
            (offset_of!(EntryStats, redirected), st.redirected),
            (offset_of!(EntryStats, rate_limited), st.rate_limited),
            (offset_of!(EntryStats, bad_length), st.bad_length),
            (offset_of!(EntryStats, rx_bytes), st.rx_bytes),
        ] {
            put(&mut b, s + off, &v.to_ne_bytes());
        }
        b
    }

    /// Parses map octets.
    pub fn from_bytes(b: &[u8]) -> Result<RawEntry, BpfError> {
        check_len("entry", b, size_of::<RawEntry>())?;
        let s = offset_of!(RawEntry, stats);
        Ok(RawEntry {
            lock: 0,
            seq: ne_u32(b, offset_of!(RawEntry, seq)),
            generation: ne_u32(b, offset_of!(RawEntry, generation)),
            slot: ne_u32(b, offset_of!(RawEntry, slot)),
            mode: b[offset_of!(RawEntry, mode)],
            dscp: b[offset_of!(RawEntry, dscp)],
            flags: ne_u16(b, offset_of!(RawEntry, flags)),
            reflect_octets: ne_u16(b, offset_of!(RawEntry, reflect_octets)),
            sender_mbz: b[offset_of!(RawEntry, sender_mbz)],
            _pad0: 0,
            ssid: ne_u16(b, offset_of!(RawEntry, ssid)),
            _pad1: 0,
            rate_pps: ne_u32(b, offset_of!(RawEntry, rate_pps)),
            burst: ne_u32(b, offset_of!(RawEntry, burst)),
            tokens: ne_u64(b, offset_of!(RawEntry, tokens)),
            last_ns: ne_u64(b, offset_of!(RawEntry, last_ns)),
            stats: EntryStats {
                rx_packets: ne_u64(b, s + offset_of!(EntryStats, rx_packets)),
                reflected: ne_u64(b, s + offset_of!(EntryStats, reflected)),
                redirected: ne_u64(b, s + offset_of!(EntryStats, redirected)),
                rate_limited: ne_u64(b, s + offset_of!(EntryStats, rate_limited)),
                bad_length: ne_u64(b, s + offset_of!(EntryStats, bad_length)),
                rx_bytes: ne_u64(b, s + offset_of!(EntryStats, rx_bytes)),
            },
        })
    }

    /// This entry with `config` applied and the data plane's state kept.
    pub fn reconfigured(&self, config: &EntryConfig) -> RawEntry {
        RawEntry {
            seq: self.seq,
            tokens: self.tokens,
            last_ns: self.last_ns,
            stats: self.stats,
            ..RawEntry::fresh(config)
        }
    }

    /// The typed view.
    pub fn entry(&self) -> Result<Entry, BpfError> {
        Ok(Entry {
            config: EntryConfig {
                mode: Mode::from_u8(self.mode)?,
                flags: EntryFlags(self.flags),
                dscp: self.dscp,
                reflect_octets: self.reflect_octets,
                sender_mbz: self.sender_mbz,
                ssid: self.ssid,
                generation: self.generation,
                slot: self.slot,
                rate_pps: self.rate_pps,
                burst: self.burst,
            },
            seq: self.seq,
            tokens: self.tokens,
            last_ns: self.last_ns,
            stats: self.stats,
        })
    }
}

impl ClockState {
    /// The value as map octets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<ClockState>()];
        put(
            &mut b,
            offset_of!(ClockState, tai_offset),
            &self.tai_offset.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(ClockState, error_estimate),
            &self.error_estimate.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(ClockState, flags),
            &self.flags.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(ClockState, updated_ns),
            &self.updated_ns.to_ne_bytes(),
        );
        b
    }

    /// Parses map octets.
    pub fn from_bytes(b: &[u8]) -> Result<ClockState, BpfError> {
        check_len("clock", b, size_of::<ClockState>())?;
        Ok(ClockState {
            tai_offset: ne_u32(b, offset_of!(ClockState, tai_offset)) as i32,
            error_estimate: ne_u16(b, offset_of!(ClockState, error_estimate)),
            flags: ne_u16(b, offset_of!(ClockState, flags)),
            updated_ns: ne_u64(b, offset_of!(ClockState, updated_ns)),
        })
    }
}

pub(crate) fn check_len(what: &'static str, b: &[u8], want: usize) -> Result<(), BpfError> {
    if b.len() != want {
        return Err(BpfError::BadMapData(format!(
            "{what}: {} octets, expected {want}",
            b.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::btf::types::{MemberAttr, Struct};
    use libbpf_rs::btf::{Btf, HasSize};

    fn members(btf: &Btf<'_>, name: &str) -> (usize, Vec<(String, usize)>) {
        let s: Struct<'_> = btf
            .type_by_name(name)
            .unwrap_or_else(|| panic!("{name} not in BTF"));
        let fields = s
            .iter()
            .map(|m| {
                let off = match m.attr {
                    MemberAttr::Normal { offset } => offset,
                    MemberAttr::BitField { offset, .. } => offset,
                };
                (
                    m.name
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    off as usize / 8,
                )
            })
            .collect();
        (s.size(), fields)
    }

    /// Every mirror type has the size and field offsets of its C struct,
    /// read from the BTF of the compiled object (the header's truth).
    #[test]
    fn layout_matches_btf() {
        let btf = Btf::from_raw("ricochet", super::super::OBJECT)
            .expect("parse BTF")
            .expect("object has BTF");

        macro_rules! check {
            ($c:literal, $t:ty, [$($f:ident),* $(,)?]) => {{
                let (size, fields) = members(&btf, $c);
                assert_eq!(size, size_of::<$t>(), "size of {}", $c);
                let want: Vec<(String, usize)> =
                    vec![$((stringify!($f).to_owned(), offset_of!($t, $f))),*];
                assert_eq!(fields, want, "fields of {}", $c);
            }};
        }
        check!(
            "rc_session_key",
            RawSessionKey,
            [
                local_addr,
                remote_addr,
                local_port,
                remote_port,
                family,
                _pad
            ]
        );
        check!(
            "rc_listener_key",
            RawListenerKey,
            [local_addr, local_port, family, _pad]
        );
        check!(
            "rc_entry_stats",
            EntryStats,
            [
                rx_packets,
                reflected,
                redirected,
                rate_limited,
                bad_length,
                rx_bytes
            ]
        );
        check!(
            "rc_entry",
            RawEntry,
            [
                lock,
                seq,
                generation,
                slot,
                mode,
                dscp,
                flags,
                reflect_octets,
                sender_mbz,
                _pad0,
                ssid,
                _pad1,
                rate_pps,
                burst,
                tokens,
                last_ns,
                stats
            ]
        );
        check!(
            "rc_clock",
            ClockState,
            [tai_offset, error_estimate, flags, updated_ns]
        );
        check!(
            "rc_keys",
            RawKeys,
            [
                generation,
                instance,
                mode,
                dscp,
                flags,
                reflect_octets,
                sender_mbz,
                sender_family,
                sender_addr,
                sender_port,
                ssid,
                key
            ]
        );
        check!(
            "rc_esp_sa_key",
            super::super::esp_abi::RawEspSaKey,
            [spi, family, _pad, local_addr]
        );
        check!(
            "rc_esp_sa",
            super::super::esp_abi::RawEspSa,
            [slot, generation, flags, _pad0, _pad1, rx_packets, redirected]
        );
        check!(
            "rc_esp_keys",
            super::super::esp_abi::RawEspKeys,
            [
                generation,
                instance,
                spi_in,
                spi_out,
                alg,
                key_len,
                flags,
                _pad0,
                replay_window,
                inner_slot,
                inner_generation,
                tx_state,
                tx_next,
                life_packets,
                life_bytes,
                expires_ns,
                rekey_ns,
                sel_local,
                sel_remote,
                sel_local_port,
                sel_remote_port,
                sel_family,
                _pad2,
                key_in,
                key_out
            ]
        );
        check!(
            "rc_esp_state",
            super::super::esp_abi::EspState,
            [
                tx_seq,
                rx_packets,
                rx_bytes,
                tx_packets,
                tx_bytes,
                replay_drops,
                icv_failures,
                seq_exhausted,
                selector_drops,
                expired_drops,
                rekey_needed,
                _reserved
            ]
        );
        check!(
            "rc_xdp_meta",
            XdpMeta,
            [
                rx_ts_ns,
                slot,
                generation,
                payload_off,
                ts_source,
                origin,
                magic
            ]
        );
    }

    #[test]
    fn session_key_encoding_follows_the_header() {
        let k = SessionKey::new(
            "198.18.0.1:862".parse().unwrap(),
            "198.19.0.2:40000".parse().unwrap(),
        )
        .unwrap();
        let b = k.to_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[0..4], &[198, 18, 0, 1]);
        assert_eq!(&b[4..16], &[0; 12]);
        assert_eq!(&b[16..20], &[198, 19, 0, 2]);
        assert_eq!(&b[32..34], &862u16.to_be_bytes());
        assert_eq!(&b[34..36], &40000u16.to_be_bytes());
        assert_eq!(b[36], 4);
        assert_eq!(SessionKey::from_bytes(&b).unwrap(), k);
        assert!(SessionKey::new(
            "198.18.0.1:862".parse().unwrap(),
            "[2001:db8::1]:862".parse().unwrap()
        )
        .is_err());
    }

    #[test]
    fn listener_any_is_all_zero_address() {
        let b = ListenerKey::any(Family::V6, 862).to_bytes();
        assert_eq!(&b[..16], &[0; 16]);
        assert_eq!(&b[16..18], &[0x03, 0x5e]);
        assert_eq!(b[18], 6);
    }

    #[test]
    fn entry_roundtrip_and_reconfigure_keeps_state() {
        let mut cfg = EntryConfig::new(Mode::Stamp, 100);
        cfg.flags = EntryFlags::PTP | EntryFlags::CHECK_SSID;
        cfg.ssid = 0xbeef;
        cfg.generation = 7;
        let mut raw = RawEntry::fresh(&cfg);
        assert_eq!(raw.tokens, 100 * 1_000_000_000);
        raw.seq = 41;
        raw.stats.reflected = 3;
        let back = RawEntry::from_bytes(&raw.to_bytes()).unwrap();
        assert_eq!(back, raw);
        assert_eq!(back.entry().unwrap().config, cfg);
        cfg.generation = 8;
        let re = back.reconfigured(&cfg);
        assert_eq!((re.seq, re.stats.reflected, re.generation), (41, 3, 8));
        assert!(RawEntry::from_bytes(&[0; 10]).is_err());
    }

    #[test]
    fn keys_encoding_follows_the_header_and_roundtrips() {
        use ricochet_protocol::crypto::SessionKeys;
        let sk = SessionKeys {
            aes: [0x11; 16],
            hmac: [0x22; 32],
        };
        let k = SlotKeys {
            generation: 7,
            instance: 3,
            keys: KeyMaterial::TwampEncrypted(sk),
            flags: EntryFlags::PTP | EntryFlags::SET_DSCP,
            dscp: 46,
            reflect_octets: 0,
            sender_mbz: 64,
            sender: Some("[2001:2::1]:40000".parse().unwrap()),
        };
        let b = k.to_bytes();
        assert_eq!(b.len(), 84);
        assert_eq!(&b[0..4], &7u32.to_ne_bytes());
        assert_eq!(b[8], 2, "RC_KEYS_TWAMP_ENC");
        assert_eq!(b[9], 46);
        assert_eq!(b[15], 6, "sender family");
        assert_eq!(
            &b[16..32],
            &"2001:2::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&b[32..34], &40000u16.to_be_bytes());
        assert_eq!(&b[36..52], &[0x11; 16], "AES key first (Token order)");
        assert_eq!(&b[52..84], &[0x22; 32]);
        let back = SlotKeys::from_bytes(&b).unwrap().unwrap();
        assert_eq!(back.to_bytes(), b);
        assert!(format!("{back:?}").contains("redacted"));
        assert!(!format!("{back:?}").contains("17, 17"));

        let stamp = SlotKeys {
            keys: KeyMaterial::StampAuthenticated(zeroize::Zeroizing::new([0x33; 32])),
            sender: None,
            ..back
        };
        let b = stamp.to_bytes();
        assert_eq!((b[8], b[15]), (3, 0));
        assert_eq!(&b[36..68], &[0x33; 32]);
        assert_eq!(&b[68..84], &[0; 16]);
        let back = SlotKeys::from_bytes(&b).unwrap().unwrap();
        assert!(back.sender.is_none());
        assert!(matches!(back.keys, KeyMaterial::StampAuthenticated(_)));

        assert!(SlotKeys::from_bytes(&[0u8; 84]).unwrap().is_none());
        let mut bad = vec![0u8; 84];
        bad[8] = 9;
        assert!(SlotKeys::from_bytes(&bad).is_err());
        assert!(SlotKeys::from_bytes(&[0u8; 83]).is_err());
    }

    #[test]
    fn meta_parse_checks_magic_and_fields() {
        let mut b = vec![0xaa; 8]; // headroom before the metadata
        b.extend_from_slice(&123u64.to_ne_bytes());
        b.extend_from_slice(&5u32.to_ne_bytes());
        b.extend_from_slice(&9u32.to_ne_bytes());
        b.extend_from_slice(&42u16.to_ne_bytes());
        b.push(1);
        b.push(2);
        b.extend_from_slice(&XdpMeta::MAGIC.to_ne_bytes());
        let m = XdpMeta::parse(&b).unwrap();
        assert_eq!(
            (m.rx_ts_ns, m.slot, m.generation, m.payload_off),
            (123, 5, 9, 42)
        );
        assert_eq!(m.ts_source().unwrap(), TsSource::KernelTai);
        assert_eq!(m.origin().unwrap(), Origin::Listener);
        assert_eq!(XdpMeta::parse(&b[..20]), Err(MetaError::Truncated(20)));
        let n = b.len();
        b[n - 1] ^= 1;
        assert!(matches!(XdpMeta::parse(&b), Err(MetaError::BadMagic(_))));
    }
}
