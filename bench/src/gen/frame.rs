//! Test frames for the generator: Ethernet + IPv4/IPv6 + UDP around a real
//! TWAMP-Test or STAMP Session-Sender packet of a session in any mode, built
//! with the protocol crate, plus the generator configuration that says which
//! octets the BPF program rewrites per frame and the counter configuration
//! that says where the reply carries what.
//!
//! | mode | sender header | per frame (BPF) | pool (pre-protected, per sequence number) |
//! |---|---:|---|---|
//! | TWAMP unauthenticated (RFC 5357 §4.1.2) | 14 | seq @0, T1 @4 | — |
//! | TWAMP authenticated | 48 | T1 @16 (clear) | octets 0–47: block 0 ECB, HMAC @32 |
//! | TWAMP encrypted | 48 | — | octets 0–47: CBC over 0–31, HMAC @32 |
//! | STAMP unauthenticated (RFC 8762 §4.2.1) | 44 | seq @0, T1 @4 | — |
//! | STAMP authenticated (RFC 8762 §4.2.2) | 112 | — | octets 0–111, HMAC-SHA-256 @96 |
//!
//! In the pool modes the sequence number is `i mod 65536` of pool entry
//! `i` (the generator cannot encrypt or MAC), and T1 is stamped only where
//! it lies outside the protected octets (TWAMP authenticated). Where T1 in
//! the packet is stale, the counter takes the send time from the generator's
//! per-sequence send-time table instead.

use std::net::{IpAddr, SocketAddr};

use ricochet_protocol::crypto::{
    EspCipher, EspKeys, PacketRole, StampHmac, TestKeys, TestProtection,
};
use ricochet_protocol::stamp::packet::{
    field as stamp_field, SenderPacket as StampSenderPacket, SenderRepr as StampSenderRepr,
    StampLayout,
};
use ricochet_protocol::time::{ErrorEstimate, TaiOffset, TimeFormat, Timestamp};
use ricochet_protocol::twamp_test::packet::field as twamp_field;
use ricochet_protocol::twamp_test::{SenderPacket, SenderRepr, TestLayout};
use thiserror::Error;

use super::abi::{CntCfg, GenCfg, FRAME_MAX, M_RESIDENCE, M_RTT, M_SEQ, NONE, POOL_MAX, SLOTS};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length (no options).
pub const IPV4_LEN: usize = 20;
/// IPv6 header length (no extension headers).
pub const IPV6_LEN: usize = 40;
/// UDP header length.
pub const UDP_LEN: usize = 8;
/// IP TTL / Hop Limit of test packets (RFC 4656 §4.1.2 asks senders for 255).
pub const TEST_TTL: u8 = 255;

/// The kind of test packets a session exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeMode {
    /// TWAMP-Test, unauthenticated (mode 1) or TWAMP Light.
    Twamp,
    /// TWAMP-Test, authenticated (mode 2).
    TwampAuth,
    /// TWAMP-Test, encrypted (mode 4).
    TwampEnc,
    /// STAMP, unauthenticated.
    Stamp,
    /// STAMP, authenticated (HMAC-SHA-256).
    StampAuth,
}

impl ProbeMode {
    /// Every mode.
    pub const ALL: [ProbeMode; 5] = [
        ProbeMode::Twamp,
        ProbeMode::TwampAuth,
        ProbeMode::TwampEnc,
        ProbeMode::Stamp,
        ProbeMode::StampAuth,
    ];

    /// Name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            ProbeMode::Twamp => "twamp",
            ProbeMode::TwampAuth => "twamp-auth",
            ProbeMode::TwampEnc => "twamp-enc",
            ProbeMode::Stamp => "stamp",
            ProbeMode::StampAuth => "stamp-auth",
        }
    }

    /// Parses [`ProbeMode::name`].
    pub fn parse(s: &str) -> Option<ProbeMode> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Session-Sender header length.
    pub const fn sender_header_len(self) -> usize {
        match self {
            ProbeMode::Twamp => TestLayout::Unauthenticated.sender_header_len(),
            ProbeMode::TwampAuth | ProbeMode::TwampEnc => {
                TestLayout::Authenticated.sender_header_len()
            }
            ProbeMode::Stamp => StampLayout::Unauthenticated.base_len(),
            ProbeMode::StampAuth => StampLayout::Authenticated.base_len(),
        }
    }

    /// Smallest symmetric test packet (UDP payload): the sender header plus
    /// the padding that lets the reflector answer with the same size, 27
    /// (unauthenticated) or 64 (authenticated/encrypted) octets for TWAMP
    /// (RFC 5357 §4.2.1 as perfSONAR and the RFC figures have it, spec
    /// pitfall 4); STAMP packets are symmetric by design (RFC 8762 §4.2).
    pub const fn min_payload(self) -> usize {
        match self {
            ProbeMode::Twamp => twamp_field::reflector::HEADER_LEN,
            ProbeMode::TwampAuth | ProbeMode::TwampEnc => twamp_field::auth_reflector::HEADER_LEN,
            ProbeMode::Stamp => StampLayout::Unauthenticated.base_len(),
            ProbeMode::StampAuth => StampLayout::Authenticated.base_len(),
        }
    }

    /// The TWAMP protection of the mode, if any.
    const fn twamp_protection(self) -> Option<TestProtection> {
        match self {
            ProbeMode::TwampAuth => Some(TestProtection::Authenticated),
            ProbeMode::TwampEnc => Some(TestProtection::Encrypted),
            _ => None,
        }
    }

    /// Octets of the pre-protected pool entry copied per frame (0: none).
    const fn pool_len(self) -> usize {
        match self {
            ProbeMode::Twamp | ProbeMode::Stamp => 0,
            ProbeMode::TwampAuth | ProbeMode::TwampEnc => twamp_field::auth_sender::HMAC.end,
            ProbeMode::StampAuth => stamp_field::auth_sender::HMAC.end,
        }
    }

    /// (sequence number, T1) offsets the generator writes per frame.
    const fn stamped(self) -> (Option<usize>, Option<usize>) {
        match self {
            ProbeMode::Twamp => (
                Some(twamp_field::sender::SEQ.start),
                Some(twamp_field::sender::TIMESTAMP.start),
            ),
            ProbeMode::Stamp => (
                Some(stamp_field::sender::SEQ.start),
                Some(stamp_field::sender::TIMESTAMP.start),
            ),
            ProbeMode::TwampAuth => (None, Some(twamp_field::auth_sender::TIMESTAMP.start)),
            ProbeMode::TwampEnc | ProbeMode::StampAuth => (None, None),
        }
    }
}

/// What a target sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyKind {
    /// The sender's packet itself with addresses swapped (the ceiling,
    /// bare echoes).
    Echo,
    /// A Session-Reflector packet of the session's mode.
    Reflector,
}

/// Keys of a secured session. Both types zeroize their key material on drop
/// and never print it.
#[derive(Clone)]
pub enum SessionKeys {
    /// TWAMP authenticated/encrypted test keys (derived from the SID).
    Twamp(Box<TestKeys>),
    /// The STAMP session's HMAC key.
    Stamp(Box<StampHmac>),
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionKeys::Twamp(_) => f.write_str("SessionKeys::Twamp(<redacted>)"),
            SessionKeys::Stamp(_) => f.write_str("SessionKeys::Stamp(<redacted>)"),
        }
    }
}

/// The test session whose packets the generator sends: mode, timestamp
/// format and, for secured modes, the keys (as negotiated by TWAMP-Control,
/// or configured for STAMP).
#[derive(Debug, Clone)]
pub struct TestSession {
    pub mode: ProbeMode,
    /// Format of T1 (NTP unless the session negotiated PTP, RFC 8186).
    pub format: TimeFormat,
    pub keys: Option<SessionKeys>,
    /// STAMP Session-Sender Identifier (RFC 8972 §3); 0 otherwise.
    pub ssid: u16,
    /// The test packets travel inside this ESP SA (ESP-in-UDP, transport
    /// mode); `None`: in clear.
    pub esp: Option<EspSeal>,
}

/// The sending half of the ESP SA that carries a session's test packets
/// (RFC 4303 transport mode, ESP-in-UDP RFC 3948): the reflector's inbound
/// SPI and keys, and the inner UDP ports (the TWAMP session's). The keys
/// zeroize on drop and never print.
#[derive(Debug, Clone)]
pub struct EspSeal {
    pub spi: u32,
    pub keys: EspKeys,
    /// Inner UDP source port (the session's sender port).
    pub inner_src_port: u16,
    /// Inner UDP destination port (the session's reflector port).
    pub inner_dst_port: u16,
}

impl TestSession {
    /// An unauthenticated session of `mode` (TWAMP or STAMP), NTP timestamps.
    pub fn open(mode: ProbeMode) -> TestSession {
        TestSession {
            mode,
            format: TimeFormat::Ntp,
            keys: None,
            ssid: 0,
            esp: None,
        }
    }

    /// A session of any mode with freshly drawn random keys: for reflectors
    /// that do not check them (the ceiling, bare echoes).
    pub fn with_random_keys(mode: ProbeMode) -> TestSession {
        use rand::RngCore;
        let mut rng = rand::rng();
        let keys = match mode {
            ProbeMode::Twamp | ProbeMode::Stamp => None,
            ProbeMode::TwampAuth | ProbeMode::TwampEnc => {
                let mut k = ricochet_protocol::crypto::SessionKeys {
                    aes: [0; 16],
                    hmac: [0; 32],
                };
                rng.fill_bytes(&mut k.aes);
                rng.fill_bytes(&mut k.hmac);
                Some(SessionKeys::Twamp(Box::new(TestKeys::new(&k))))
            }
            ProbeMode::StampAuth => {
                let mut k = zeroize::Zeroizing::new([0u8; 32]);
                rng.fill_bytes(k.as_mut());
                Some(SessionKeys::Stamp(Box::new(StampHmac::new(k.as_ref()))))
            }
        };
        TestSession {
            mode,
            format: TimeFormat::Ntp,
            keys,
            ssid: 0,
            esp: None,
        }
    }
}

/// Why a frame could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The IP packet length cannot hold the mode's smallest test packet.
    #[error("IP length {ip_len} too small for {mode:?}: at least {min} octets")]
    TooSmall {
        mode: ProbeMode,
        ip_len: usize,
        min: usize,
    },
    /// The frame would exceed the generator's template buffer.
    #[error("frame of {0} octets exceeds the generator limit of {FRAME_MAX}")]
    TooLarge(usize),
    /// Source and destination are of different IP versions.
    #[error("address families of {0} and {1} differ")]
    Family(SocketAddr, SocketAddr),
    /// A secured mode without (matching) keys.
    #[error("{0:?} needs the session's keys")]
    NoKeys(ProbeMode),
    /// The protocol crate refused to build or protect the packet.
    #[error("building the test packet: {0}")]
    Protocol(String),
}

/// The addresses of the generator's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The generator's address and source port.
    pub src: SocketAddr,
    /// The reflector's address and port.
    pub dst: SocketAddr,
}

/// A template frame and everything the BPF programs need to use it.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The frame (Ethernet header onwards); zeros wherever the generator
    /// writes, with the UDP checksum of exactly this content.
    pub frame: Vec<u8>,
    /// Generator configuration.
    pub gen: GenCfg,
    /// Pool entries (`SLOTS` of them, `gen.pool_len` octets used) or empty.
    pub pool: Vec<[u8; POOL_MAX]>,
    /// IP packet length.
    pub ip_len: usize,
    /// Test packet (UDP payload) length.
    pub payload_len: usize,
}

/// One's-complement sum of big-endian 16-bit words (RFC 1071), odd octet
/// padded with zero; not folded.
fn ones_sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(data, 0))
}

/// UDP checksum with the pseudo header (RFC 768, RFC 8200 §8.1); a
/// computed 0 is sent as 0xffff.
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut acc = 0u64;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = ones_sum(&s.octets(), acc);
            acc = ones_sum(&d.octets(), acc);
            acc += 17 + udp.len() as u64;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = ones_sum(&s.octets(), acc);
            acc = ones_sum(&d.octets(), acc);
            acc += 17 + udp.len() as u64;
        }
        _ => {}
    }
    let c = !fold(ones_sum(udp, acc));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// The TAI − UTC offset of this host's clocks (CLOCK_TAI − CLOCK_REALTIME,
/// rounded to whole seconds; 0 where the kernel was never told).
pub fn host_tai_offset() -> TaiOffset {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; clock_gettime only
        // writes it and cannot fail for these clock ids.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    let d = now(libc::CLOCK_TAI) - now(libc::CLOCK_REALTIME);
    TaiOffset(((d + 500_000_000).div_euclid(1_000_000_000)) as i32)
}

fn tai_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `host_tai_offset`.
    unsafe { libc::clock_gettime(libc::CLOCK_TAI, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The smallest IP packet length that carries `mode`'s smallest symmetric
/// test packet.
pub fn min_ip_len(mode: ProbeMode, v6: bool) -> usize {
    (if v6 { IPV6_LEN } else { IPV4_LEN }) + UDP_LEN + mode.min_payload()
}

/// Builds the sender packet of sequence number `seq` with timestamp `t1`
/// (header only, `pool_len` octets) and protects it.
fn protected_header(
    session: &TestSession,
    seq: u32,
    t1: [u8; 8],
    error_estimate: u16,
    out: &mut [u8],
) -> Result<(), FrameError> {
    let proto = |e: &dyn std::fmt::Display| FrameError::Protocol(e.to_string());
    match session.mode {
        ProbeMode::Twamp | ProbeMode::TwampAuth | ProbeMode::TwampEnc => {
            let layout = if session.mode == ProbeMode::Twamp {
                TestLayout::Unauthenticated
            } else {
                TestLayout::Authenticated
            };
            let mut pkt = SenderPacket::new_checked(&mut *out, layout).map_err(|e| proto(&e))?;
            SenderRepr {
                sequence_number: seq,
                timestamp: t1,
                error_estimate,
                padding_len: 0,
            }
            .emit(&mut pkt)
            .map_err(|e| proto(&e))?;
            if let Some(p) = session.mode.twamp_protection() {
                let Some(SessionKeys::Twamp(keys)) = &session.keys else {
                    return Err(FrameError::NoKeys(session.mode));
                };
                keys.protect(PacketRole::Sender, p, out)
                    .map_err(|e| proto(&e))?;
            }
        }
        ProbeMode::Stamp | ProbeMode::StampAuth => {
            let layout = if session.mode == ProbeMode::Stamp {
                StampLayout::Unauthenticated
            } else {
                StampLayout::Authenticated
            };
            let mut pkt =
                StampSenderPacket::new_checked(&mut *out, layout).map_err(|e| proto(&e))?;
            StampSenderRepr {
                sequence_number: seq,
                timestamp: t1,
                error_estimate,
                ssid: session.ssid,
                tlv_len: 0,
            }
            .emit(&mut pkt)
            .map_err(|e| proto(&e))?;
            if session.mode == ProbeMode::StampAuth {
                let Some(SessionKeys::Stamp(h)) = &session.keys else {
                    return Err(FrameError::NoKeys(session.mode));
                };
                h.seal_packet(out).map_err(|e| proto(&e))?;
            }
        }
    }
    Ok(())
}

/// The smallest IP packet length that carries `session`'s smallest
/// symmetric test packet, inside ESP-in-UDP where the session has an SA.
pub fn session_min_ip_len(session: &TestSession, v6: bool) -> usize {
    let Some(esp) = &session.esp else {
        return min_ip_len(session.mode, v6);
    };
    let Ok(cipher) = EspCipher::new(&esp.keys) else {
        return min_ip_len(session.mode, v6);
    };
    (if v6 { IPV6_LEN } else { IPV4_LEN })
        + UDP_LEN
        + cipher.sealed_len(UDP_LEN + session.mode.min_payload())
}

/// The ESP packet (SPI to ICV) of inner sequence number `inner_seq` sealed
/// with ESP sequence number `esp_seq`: inner UDP (ports of `esp`, checksum
/// with the outer addresses, RFC 4303 transport mode) around the session's
/// sender packet of `inner_len - 8` octets, zero padding after the header.
#[allow(clippy::too_many_arguments)]
fn sealed_probe(
    cipher: &EspCipher,
    esp: &EspSeal,
    session: &TestSession,
    flow: &Flow,
    inner_len: usize,
    inner_seq: u32,
    esp_seq: u64,
    t1: [u8; 8],
    ee: u16,
) -> Result<Vec<u8>, FrameError> {
    let po = cipher.payload_offset();
    let mut b = vec![0u8; cipher.sealed_len(inner_len)];
    {
        let udp = &mut b[po..po + inner_len];
        udp[0..2].copy_from_slice(&esp.inner_src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&esp.inner_dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&(inner_len as u16).to_be_bytes());
        let hl = session.mode.sender_header_len();
        protected_header(session, inner_seq, t1, ee, &mut udp[UDP_LEN..UDP_LEN + hl])?;
        let c = udp_checksum(flow.src.ip(), flow.dst.ip(), udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    let n = cipher
        .seal(esp.spi, esp_seq, false, 17, inner_len, &mut b)
        .map_err(|e| FrameError::Protocol(format!("ESP seal: {e}")))?;
    b.truncate(n);
    Ok(b)
}

/// [`build`] for a session inside ESP-in-UDP. The generator cannot seal,
/// so every ESP packet is precomputed: where the whole ESP packet fits a
/// pool entry ([`POOL_MAX`] octets, the smallest sizes), pool entry `i` is
/// the packet of inner sequence number `i` sealed with ESP sequence number
/// `i + 1` (65536 distinct packets, sent cyclically); larger ESP packets
/// do not fit and the template carries one sealed packet (ESP sequence
/// number 1) sent every time. Either way the reflector sees the same ESP
/// packets again, which only an SA with anti-replay off accepts (the
/// target configures that, RFC 4303 §3.4.3); each is still fully
/// decrypted and ICV-verified.
fn build_esp(
    flow: &Flow,
    session: &TestSession,
    esp: &EspSeal,
    ip_len: usize,
) -> Result<Generated, FrameError> {
    let v6 = flow.dst.is_ipv6();
    let min = session_min_ip_len(session, v6);
    if ip_len < min {
        return Err(FrameError::TooSmall {
            mode: session.mode,
            ip_len,
            min,
        });
    }
    if !matches!(session.mode, ProbeMode::Twamp | ProbeMode::Stamp) {
        return Err(FrameError::Protocol(
            "ESP carries unauthenticated TWAMP or STAMP here".into(),
        ));
    }
    let cipher =
        EspCipher::new(&esp.keys).map_err(|e| FrameError::Protocol(format!("ESP keys: {e}")))?;
    let ip_hdr = if v6 { IPV6_LEN } else { IPV4_LEN };
    let esp_len = ip_len - ip_hdr - UDP_LEN;
    // The longest inner packet whose sealed length is exactly `esp_len`
    // (GCM pads to 4 octets, so only every fourth length is reachable).
    let Some(inner_len) = (UDP_LEN + session.mode.min_payload()..=esp_len)
        .rev()
        .find(|&n| cipher.sealed_len(n) == esp_len)
    else {
        return Err(FrameError::Protocol(format!(
            "no ESP packet fills IP length {ip_len} exactly (the padding aligns to 4 \
             octets): try {} or {}",
            ip_len - ip_len % 4,
            ip_len - ip_len % 4 + 4
        )));
    };
    // Ethernet, IP and outer UDP as for a clear packet of that length.
    let mut g = build(flow, &TestSession::open(ProbeMode::Twamp), ip_len)?;
    let l4 = usize::from(g.gen.l4_off);
    let payload_at = l4 + UDP_LEN;
    let tai = host_tai_offset();
    let ee = ErrorEstimate::from_error_ns(false, session.format, 1_000_000).to_bits();
    let t1 = Timestamp::from_tai_ns(tai_now_ns(), tai, session.format).to_bytes();
    let clear = TestSession {
        esp: None,
        ..session.clone()
    };
    g.frame[payload_at..].fill(0);
    g.pool.clear();
    let pool_len = if esp_len <= POOL_MAX && esp_len % 4 == 0 {
        g.pool.reserve_exact(SLOTS);
        for i in 0..SLOTS {
            let p = sealed_probe(
                &cipher,
                esp,
                &clear,
                flow,
                inner_len,
                i as u32,
                i as u64 + 1,
                t1,
                ee,
            )?;
            let mut e = [0u8; POOL_MAX];
            e[..esp_len].copy_from_slice(&p);
            g.pool.push(e);
        }
        esp_len
    } else {
        let p = sealed_probe(&cipher, esp, &clear, flow, inner_len, 0, 1, t1, ee)?;
        g.frame[payload_at..].copy_from_slice(&p);
        0
    };
    g.frame[l4 + 6..l4 + 8].fill(0);
    let c = udp_checksum(flow.src.ip(), flow.dst.ip(), &g.frame[l4..]);
    g.frame[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    g.gen.seq_off = NONE;
    g.gen.t1_off = NONE;
    g.gen.pool_len = pool_len as u16;
    g.gen.t1_ptp = 0;
    Ok(g)
}

/// Builds the generator's template frame of `ip_len` octets (IP header
/// onwards) for `session` on `flow`.
pub fn build(flow: &Flow, session: &TestSession, ip_len: usize) -> Result<Generated, FrameError> {
    if let Some(esp) = &session.esp {
        return build_esp(flow, session, esp, ip_len);
    }
    let v6 = match (flow.src.ip(), flow.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return Err(FrameError::Family(flow.src, flow.dst)),
    };
    let mode = session.mode;
    let min = min_ip_len(mode, v6);
    if ip_len < min {
        return Err(FrameError::TooSmall { mode, ip_len, min });
    }
    let frame_len = ETH_LEN + ip_len;
    if frame_len > FRAME_MAX {
        return Err(FrameError::TooLarge(frame_len));
    }
    let ip_hdr = if v6 { IPV6_LEN } else { IPV4_LEN };
    let l4 = ETH_LEN + ip_hdr;
    let payload_at = l4 + UDP_LEN;
    let payload_len = ip_len - ip_hdr - UDP_LEN;
    let tai = host_tai_offset();
    // The sender's clock is not disciplined as far as the generator knows:
    // S = 0, and a conservative 1 ms bound (Multiplier ≥ 1, spec pitfall 8).
    let ee = ErrorEstimate::from_error_ns(false, session.format, 1_000_000).to_bits();

    let mut f = vec![0u8; frame_len];
    f[0..6].copy_from_slice(&flow.dst_mac);
    f[6..12].copy_from_slice(&flow.src_mac);
    match (flow.src.ip(), flow.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut f[ETH_LEN..ETH_LEN + IPV4_LEN];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            ip[6] = 0x40; // DF: test packets are never fragmented
            ip[8] = TEST_TTL;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = internet_checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut f[ETH_LEN..ETH_LEN + IPV6_LEN];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((ip_len - IPV6_LEN) as u16).to_be_bytes());
            ip[6] = 17;
            ip[7] = TEST_TTL;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
        }
        _ => unreachable!("families checked above"),
    }
    {
        let udp = &mut f[l4..l4 + UDP_LEN];
        udp[0..2].copy_from_slice(&flow.src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&flow.dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&((UDP_LEN + payload_len) as u16).to_be_bytes());
    }

    let (seq_off, t1_off) = mode.stamped();
    let pool_len = mode.pool_len();
    let mut pool = Vec::new();
    if pool_len == 0 {
        // Unauthenticated: the header with seq and T1 zero; the generator
        // writes both per frame.
        protected_header(
            session,
            0,
            [0; 8],
            ee,
            &mut f[payload_at..payload_at + mode.sender_header_len()],
        )?;
    } else {
        // Pool: entry i is the protected header of sequence number i. Where
        // the generator stamps T1 itself (outside the protected octets), the
        // entry holds zeros there; elsewhere T1 is the build time.
        let t1 = Timestamp::from_tai_ns(tai_now_ns(), tai, session.format).to_bytes();
        pool.reserve_exact(SLOTS);
        let mut hdr = vec![0u8; mode.sender_header_len()];
        for i in 0..SLOTS {
            hdr.fill(0);
            let stamp = if t1_off.is_some() { [0; 8] } else { t1 };
            protected_header(session, i as u32, stamp, ee, &mut hdr)?;
            let mut e = [0u8; POOL_MAX];
            e[..pool_len].copy_from_slice(&hdr[..pool_len]);
            if let Some(t) = t1_off {
                e[t..t + 8].fill(0);
            }
            pool.push(e);
        }
    }
    let c = udp_checksum(flow.src.ip(), flow.dst.ip(), &f[l4..]);
    f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());

    let off = |o: Option<usize>| o.map_or(NONE, |o| o as u16);
    Ok(Generated {
        gen: GenCfg {
            frame_len: frame_len as u16,
            l4_off: l4 as u16,
            seq_off: off(seq_off),
            t1_off: off(t1_off),
            pool_len: pool_len as u16,
            t1_ptp: u8::from(session.format == TimeFormat::Ptp),
            pad: 0,
            slots: 1,
            tai_offset: tai.0,
            ..GenCfg::default()
        },
        frame: f,
        pool,
        ip_len,
        payload_len,
    })
}

/// The counter configuration for replies of `kind` to `session`'s packets
/// on `flow`: where the sender sequence number, T1, T2, T3 and the Error
/// Estimate covering T2/T3 are readable in clear.
pub fn counter_config(flow: &Flow, session: &TestSession, kind: ReplyKind) -> CntCfg {
    use twamp_field::{auth_reflector as ar, auth_sender as asn, reflector as r, sender as s};
    let mode = session.mode;
    let o = |v: usize| v as u16;
    // (seq, t1, t2, t3, ee)
    let (seq, t1, t2, t3, ee) = match (kind, mode) {
        // Inside ESP every octet of the test packet is ciphertext: the
        // replies can only be counted.
        _ if session.esp.is_some() => (NONE, NONE, NONE, NONE, NONE),
        (ReplyKind::Echo, ProbeMode::Twamp | ProbeMode::Stamp) => {
            (o(s::SEQ.start), o(s::TIMESTAMP.start), NONE, NONE, NONE)
        }
        (ReplyKind::Echo, ProbeMode::TwampAuth) => {
            (NONE, o(asn::TIMESTAMP.start), NONE, NONE, NONE)
        }
        (ReplyKind::Echo, ProbeMode::TwampEnc) => (NONE, NONE, NONE, NONE, NONE),
        // STAMP is never encrypted: the sequence number is in clear.
        (ReplyKind::Echo, ProbeMode::StampAuth) => (
            o(stamp_field::auth_sender::SEQ.start),
            NONE,
            NONE,
            NONE,
            NONE,
        ),
        (ReplyKind::Reflector, ProbeMode::Twamp | ProbeMode::Stamp) => (
            o(r::SENDER_SEQ.start),
            o(r::SENDER_TIMESTAMP.start),
            o(r::RECEIVE_TIMESTAMP.start),
            o(r::TIMESTAMP.start),
            o(r::ERROR_ESTIMATE.start),
        ),
        // Authenticated TWAMP encrypts only block 0; STAMP authenticated
        // encrypts nothing (RFC 8762 §4.4): same offsets.
        (ReplyKind::Reflector, ProbeMode::TwampAuth | ProbeMode::StampAuth) => (
            o(ar::SENDER_SEQ.start),
            if mode == ProbeMode::TwampAuth {
                o(ar::SENDER_TIMESTAMP.start)
            } else {
                NONE
            },
            o(ar::RECEIVE_TIMESTAMP.start),
            o(ar::TIMESTAMP.start),
            o(ar::ERROR_ESTIMATE.start),
        ),
        // Encrypted TWAMP: octets 0–95 of the reply are ciphertext.
        (ReplyKind::Reflector, ProbeMode::TwampEnc) => (NONE, NONE, NONE, NONE, NONE),
    };
    // The reflector's own sequence number, where it is in clear: octet 0
    // of unauthenticated TWAMP and of STAMP (RFC 8762 §4.3: nothing is
    // encrypted); in authenticated/encrypted TWAMP it is in the encrypted
    // block 0.
    let rseq = match (kind, mode) {
        _ if session.esp.is_some() => NONE,
        (ReplyKind::Reflector, ProbeMode::Twamp | ProbeMode::Stamp) => o(r::SEQ.start),
        (ReplyKind::Reflector, ProbeMode::StampAuth) => o(ar::SEQ.start),
        _ => NONE,
    };
    let mut measure = 0;
    if seq != NONE || t1 != NONE {
        measure |= M_RTT;
    }
    if seq != NONE {
        measure |= M_SEQ;
    }
    if t2 != NONE && t3 != NONE {
        measure |= M_RESIDENCE;
    }
    CntCfg {
        local_port: flow.src.port(),
        remote_port: flow.dst.port(),
        seq_off: seq,
        t1_off: t1,
        t2_off: t2,
        t3_off: t3,
        ee_off: ee,
        measure,
        t1_ptp: u8::from(session.format == TimeFormat::Ptp),
        tai_offset: host_tai_offset().0,
        rseq_off: rseq,
        pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn flow(v6: bool) -> Flow {
        let (s, d): (IpAddr, IpAddr) = if v6 {
            (
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1).into(),
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2).into(),
            )
        } else {
            (
                Ipv4Addr::new(198, 18, 0, 1).into(),
                Ipv4Addr::new(198, 18, 0, 2).into(),
            )
        };
        Flow {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: SocketAddr::new(s, 40000),
            dst: SocketAddr::new(d, 862),
        }
    }

    /// Parses the frame with etherparse (independent of this module) and
    /// returns the UDP payload after checking both checksums.
    fn check_frame(frame: &[u8], v6: bool) -> Vec<u8> {
        let p = etherparse::SlicedPacket::from_ethernet(frame).expect("parses");
        let (src, dst): (IpAddr, IpAddr) = match p.net.expect("ip") {
            etherparse::NetSlice::Ipv4(ip) => {
                assert!(!v6);
                let h = ip.header();
                assert_eq!(
                    h.to_header().calc_header_checksum(),
                    h.header_checksum(),
                    "IPv4 header checksum"
                );
                assert_eq!(h.ttl(), 255);
                assert!(h.dont_fragment());
                (h.source_addr().into(), h.destination_addr().into())
            }
            etherparse::NetSlice::Ipv6(ip) => {
                assert!(v6);
                let h = ip.header();
                assert_eq!(h.hop_limit(), 255);
                (h.source_addr().into(), h.destination_addr().into())
            }
        };
        let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
            panic!("not UDP")
        };
        let payload = u.payload().to_vec();
        let want = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => u
                .to_header()
                .calc_checksum_ipv4_raw(s.octets(), d.octets(), &payload)
                .unwrap(),
            (IpAddr::V6(s), IpAddr::V6(d)) => u
                .to_header()
                .calc_checksum_ipv6_raw(s.octets(), d.octets(), &payload)
                .unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(u.checksum(), want, "UDP checksum");
        payload
    }

    #[test]
    fn unauthenticated_templates_are_valid_and_zero_where_stamped() {
        for v6 in [false, true] {
            for mode in [ProbeMode::Twamp, ProbeMode::Stamp] {
                let s = TestSession::open(mode);
                let ip_len = min_ip_len(mode, v6);
                let g = build(&flow(v6), &s, ip_len).unwrap();
                assert_eq!(g.frame.len(), ETH_LEN + ip_len);
                let p = check_frame(&g.frame, v6);
                assert_eq!(p.len(), mode.min_payload());
                assert_eq!(g.gen.seq_off, 0);
                assert_eq!(g.gen.t1_off, 4);
                assert_eq!(&p[0..12], &[0; 12], "seq and T1 left for the generator");
                // Error Estimate: S = 0, Multiplier ≥ 1 (spec pitfall 8).
                let ee = u16::from_be_bytes([p[12], p[13]]);
                assert_ne!(ee & 0xff, 0);
                assert!(g.pool.is_empty());
            }
        }
    }

    #[test]
    fn sizes_below_the_mode_minimum_are_refused() {
        let s = TestSession::open(ProbeMode::Twamp);
        assert_eq!(min_ip_len(ProbeMode::Twamp, false), 20 + 8 + 41);
        assert_eq!(min_ip_len(ProbeMode::TwampAuth, false), 20 + 8 + 112);
        assert_eq!(min_ip_len(ProbeMode::Stamp, true), 40 + 8 + 44);
        assert!(matches!(
            build(&flow(false), &s, 68),
            Err(FrameError::TooSmall { min: 69, .. })
        ));
        assert!(matches!(
            build(&flow(false), &s, 1600),
            Err(FrameError::TooLarge(1614))
        ));
        let mut f = flow(false);
        f.dst = "[2001:2::2]:862".parse().unwrap();
        assert!(matches!(build(&f, &s, 100), Err(FrameError::Family(..))));
        let secured = TestSession::open(ProbeMode::TwampEnc);
        assert_eq!(
            build(&flow(false), &secured, 200).unwrap_err(),
            FrameError::NoKeys(ProbeMode::TwampEnc)
        );
    }

    /// Pool entries are real protected packets: they verify with the
    /// protocol crate's receive-side functions and carry sequence number i.
    #[test]
    fn pool_entries_verify_with_the_session_keys() {
        for mode in [
            ProbeMode::TwampAuth,
            ProbeMode::TwampEnc,
            ProbeMode::StampAuth,
        ] {
            let s = TestSession::with_random_keys(mode);
            let g = build(&flow(false), &s, 512).unwrap();
            let p = check_frame(&g.frame, false);
            assert_eq!(p.len(), 512 - 28);
            assert_eq!(g.pool.len(), SLOTS);
            let plen = usize::from(g.gen.pool_len);
            assert_eq!(
                &p[..plen],
                &vec![0u8; plen][..],
                "template zero under the pool"
            );
            for i in [0usize, 1, 4242, SLOTS - 1] {
                let mut pkt = p.clone();
                pkt[..plen].copy_from_slice(&g.pool[i][..plen]);
                if g.gen.t1_off != NONE {
                    let t = usize::from(g.gen.t1_off);
                    pkt[t..t + 8].copy_from_slice(&[0xab; 8]); // any T1: not covered
                }
                match (&s.keys, mode) {
                    (Some(SessionKeys::Twamp(k)), _) => {
                        let prot = mode.twamp_protection().unwrap();
                        k.unprotect(PacketRole::Sender, prot, &mut pkt)
                            .expect("HMAC verifies");
                    }
                    (Some(SessionKeys::Stamp(h)), _) => {
                        h.verify_packet(&pkt).expect("HMAC verifies")
                    }
                    (None, _) => unreachable!("secured modes have keys"),
                }
                assert_eq!(u32::from_be_bytes(pkt[0..4].try_into().unwrap()), i as u32);
            }
        }
        // Only TWAMP authenticated can stamp T1 itself (octets 16–23 clear).
        let g = build(
            &flow(false),
            &TestSession::with_random_keys(ProbeMode::TwampAuth),
            140,
        )
        .unwrap();
        assert_eq!(
            (g.gen.seq_off, g.gen.t1_off, g.gen.pool_len),
            (NONE, 16, 48)
        );
        let g = build(
            &flow(false),
            &TestSession::with_random_keys(ProbeMode::TwampEnc),
            140,
        )
        .unwrap();
        assert_eq!(
            (g.gen.seq_off, g.gen.t1_off, g.gen.pool_len),
            (NONE, NONE, 48)
        );
        let g = build(
            &flow(true),
            &TestSession::with_random_keys(ProbeMode::StampAuth),
            160,
        )
        .unwrap();
        assert_eq!(
            (g.gen.seq_off, g.gen.t1_off, g.gen.pool_len),
            (NONE, NONE, 112)
        );
    }

    #[test]
    fn counter_offsets_follow_the_reflector_layouts() {
        let f = flow(false);
        // TWAMP unauthenticated reflector (RFC 5357 §4.2.1): T3 @4, EE @12,
        // T2 @16, sender seq @24, T1 @28.
        let c = counter_config(
            &f,
            &TestSession::open(ProbeMode::Twamp),
            ReplyKind::Reflector,
        );
        assert_eq!(
            (c.seq_off, c.t1_off, c.t2_off, c.t3_off, c.ee_off),
            (24, 28, 16, 4, 12)
        );
        assert_eq!(c.measure, M_RTT | M_SEQ | M_RESIDENCE);
        assert_eq!(c.rseq_off, 0, "reflector Sequence Number @0");
        assert_eq!((c.local_port, c.remote_port), (40000, 862));
        // Authenticated (112-octet layout): T3 @16, EE @24, T2 @32, seq @48, T1 @64.
        let c = counter_config(
            &f,
            &TestSession::open(ProbeMode::TwampAuth),
            ReplyKind::Reflector,
        );
        assert_eq!(
            (c.seq_off, c.t1_off, c.t2_off, c.t3_off, c.ee_off),
            (48, 64, 32, 16, 24)
        );
        let c = counter_config(
            &f,
            &TestSession::open(ProbeMode::StampAuth),
            ReplyKind::Reflector,
        );
        assert_eq!(
            (c.seq_off, c.t1_off, c.t2_off, c.t3_off),
            (48, NONE, 32, 16)
        );
        let c = counter_config(
            &f,
            &TestSession::open(ProbeMode::TwampEnc),
            ReplyKind::Reflector,
        );
        assert_eq!(c.measure, 0, "encrypted replies can only be counted");
        assert_eq!(c.rseq_off, NONE, "block 0 is encrypted");
        let c = counter_config(&f, &TestSession::open(ProbeMode::Twamp), ReplyKind::Echo);
        assert_eq!((c.seq_off, c.t1_off, c.t2_off), (0, 4, NONE));
        assert_eq!(c.measure, M_RTT | M_SEQ);
        assert_eq!(c.rseq_off, NONE, "an echo has no reflector sequence number");
    }

    fn esp_session() -> TestSession {
        let mut s = TestSession::open(ProbeMode::Twamp);
        s.esp = Some(EspSeal {
            spi: 0x0000_1001,
            keys: EspKeys::gcm_from_keymat(&[0x31; 20]).unwrap(),
            inner_src_port: 40000,
            inner_dst_port: 862,
        });
        s
    }

    /// Opens the ESP packet in `payload` with the SA's keys (the protocol
    /// crate's receive side) and checks what it carries: SPI, ESP sequence
    /// number, inner UDP ports, length and checksum (etherparse), and the
    /// TWAMP sender sequence number.
    fn open_esp(payload: &[u8], flow: &Flow, esp_seq: u64, inner_seq: u32) -> usize {
        let s = esp_session();
        let esp = s.esp.as_ref().unwrap();
        let cipher = EspCipher::new(&esp.keys).unwrap();
        let mut pkt = payload.to_vec();
        let o = cipher.open(&mut pkt, None).expect("ICV verifies");
        assert_eq!((o.spi, o.seq, o.next_header), (0x1001, esp_seq, 17));
        let inner = &pkt[o.payload.clone()];
        let (udp, rest) = etherparse::UdpHeader::from_slice(inner).unwrap();
        assert_eq!((udp.source_port, udp.destination_port), (40000, 862));
        assert_eq!(usize::from(udp.length), inner.len());
        let (IpAddr::V4(a), IpAddr::V4(b)) = (flow.src.ip(), flow.dst.ip()) else {
            unreachable!()
        };
        assert_eq!(
            udp.checksum,
            udp.calc_checksum_ipv4_raw(a.octets(), b.octets(), rest)
                .unwrap(),
            "inner UDP checksum (transport mode: outer addresses)"
        );
        assert!(rest.len() >= ProbeMode::Twamp.min_payload());
        assert_eq!(
            u32::from_be_bytes(rest[0..4].try_into().unwrap()),
            inner_seq
        );
        inner.len()
    }

    /// ESP-in-UDP frames: the smallest fits the pool, one distinct sealed
    /// packet per entry; 512 carries one sealed packet in the template.
    #[test]
    fn esp_frames_open_with_the_inbound_sa() {
        let mut f = flow(false);
        f.dst.set_port(4500);
        let s = esp_session();
        // 20 + 8 + (8 SPI/SN + 8 IV + 49 inner + 1 pad + 2 trailer + 16 ICV);
        // the longest inner packet of that length needs no padding: 50.
        assert_eq!(session_min_ip_len(&s, false), 20 + 8 + 84);
        let g = build(&f, &s, session_min_ip_len(&s, false)).unwrap();
        assert_eq!(g.frame.len(), ETH_LEN + 112);
        let p = check_frame(&g.frame, false);
        assert_eq!(p, vec![0u8; 84], "template zero under the pool");
        assert_eq!(g.gen.pool_len, 84);
        assert_eq!((g.gen.seq_off, g.gen.t1_off), (NONE, NONE));
        assert_eq!(g.pool.len(), SLOTS);
        for i in [0usize, 1, 777, SLOTS - 1] {
            let mut fr = g.frame.clone();
            let at = ETH_LEN + IPV4_LEN + UDP_LEN;
            fr[at..at + 84].copy_from_slice(&g.pool[i][..84]);
            // As the generator does: the template checksum plus the sum
            // of the octets written (RFC 1624).
            let l4 = ETH_LEN + IPV4_LEN;
            let ck = u16::from_be_bytes([fr[l4 + 6], fr[l4 + 7]]);
            let c = fold(u64::from(!ck) + ones_sum(&g.pool[i][..84], 0));
            let c = !c;
            fr[l4 + 6..l4 + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            let p = check_frame(&fr, false);
            assert_eq!(open_esp(&p, &f, i as u64 + 1, i as u32), 50);
        }
        assert_ne!(g.pool[0][..84], g.pool[1][..84]);
        let g = build(&f, &s, 512).unwrap();
        assert_eq!((g.gen.pool_len, g.pool.len()), (0, 0));
        let p = check_frame(&g.frame, false);
        assert_eq!(p.len(), 484);
        assert_eq!(open_esp(&p, &f, 1, 0), 484 - 8 - 8 - 2 - 16);
        assert!(matches!(
            build(&f, &s, 111),
            Err(FrameError::TooSmall { min: 112, .. })
        ));
        assert!(build(&f, &s, 513).is_err(), "ESP lengths step by 4");
        // The counter can only count.
        let c = counter_config(&f, &s, ReplyKind::Reflector);
        assert_eq!(
            (c.seq_off, c.t1_off, c.t2_off, c.rseq_off),
            (NONE, NONE, NONE, NONE)
        );
        assert_eq!(c.measure, 0);
        assert_eq!((c.local_port, c.remote_port), (40000, 4500));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&d), !0xddf2);
    }
}
