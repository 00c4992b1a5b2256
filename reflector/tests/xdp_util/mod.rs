//! Shared helpers for the XDP tests: an independent packet builder and
//! checksum (RFC 1071 one's-complement sum written here, not taken from the
//! code under test), a per-test program with its own pin directory, and
//! clock readings.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use ricochet_reflector::bpf::{LoadOptions, XdpProgram};

pub const MAC_PEER: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const MAC_US: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const V4_US: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const V4_PEER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
pub const V6_US: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const V6_PEER: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const PORT_US: u16 = 862;
pub const PORT_PEER: u16 = 40000;
pub const IP_ID: u16 = 0x1234;
pub const IP_DF: u16 = 0x4000;
pub const NTP_UNIX: u64 = 2_208_988_800;

/// Skips (returns true) only when explicitly asked; otherwise the tests
/// need root (CI runs as root) and fail loudly without it.
pub fn skip() -> bool {
    if std::env::var_os("RICOCHET_SKIP_BPF_TESTS").is_some() {
        eprintln!("RICOCHET_SKIP_BPF_TESTS set: skipping BPF test");
        return true;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "BPF tests need root (set RICOCHET_SKIP_BPF_TESTS=1 to skip)"
    );
    false
}

/// A loaded program with a unique pin directory, removed on drop.
pub struct TestProg {
    pub prog: XdpProgram,
    dir: PathBuf,
}

impl std::ops::Deref for TestProg {
    type Target = XdpProgram;
    fn deref(&self) -> &XdpProgram {
        &self.prog
    }
}

impl Drop for TestProg {
    fn drop(&mut self) {
        let _ = self.prog.unpin_maps();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique pin directory under /sys/fs/bpf.
pub fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/ricochet-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn load() -> TestProg {
    let dir = pin_dir();
    match XdpProgram::load(&LoadOptions {
        pin_dir: dir.clone(),
        bind_ifindex: None,
    }) {
        Ok(prog) => TestProg { prog, dir },
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            panic!("load XDP program: {e}");
        }
    }
}

// ---- checksums (RFC 1071) ------------------------------------------------

/// One's-complement sum of 16-bit big-endian words, odd octet padded.
pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !(ones_sum(data, 0) as u16)
}

/// UDP checksum with the pseudo header of `src`/`dst` (4 or 16 octets).
pub fn udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut ph = Vec::new();
    ph.extend_from_slice(src);
    ph.extend_from_slice(dst);
    if src.len() == 4 {
        ph.extend_from_slice(&[0, 17]);
        ph.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    } else {
        ph.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, 17]);
    }
    let s = ones_sum(udp, ones_sum(&ph, 0));
    let c = !(s as u16);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

// ---- frame builder -------------------------------------------------------

pub fn eth(dst: [u8; 6], src: [u8; 6], vlans: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// IPv4 header (+ options) and the L4 bytes; header checksum filled.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    tos: u8,
    proto: u8,
    options: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let mut h = vec![(0x40 | ihl) as u8, tos];
    h.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&IP_ID.to_be_bytes());
    h.extend_from_slice(&IP_DF.to_be_bytes());
    h.extend_from_slice(&[ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// A UDP datagram over IPv4 with both checksums correct.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    tos: u8,
    options: &[u8],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = udp(sport, dport, payload);
    let c = udp_checksum(&src.octets(), &dst.octets(), &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, ttl, tos, 17, options, &u)
}

/// IPv6 header, extension headers (type, body without the 2-octet
/// next/length prefix, padded to 8n by the caller) and a UDP datagram.
#[allow(clippy::too_many_arguments)]
pub fn ipv6_udp(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    tclass: u8,
    ext: &[(u8, Vec<u8>)],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = udp(sport, dport, payload);
    let c = udp_checksum(&src.octets(), &dst.octets(), &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    let mut exts = Vec::new();
    for (i, (_, body)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map(|e| e.0).unwrap_or(17);
        assert_eq!((body.len() + 2) % 8, 0);
        exts.push(next);
        exts.push(((body.len() + 2) / 8 - 1) as u8);
        exts.extend_from_slice(body);
    }
    let first = ext.first().map(|e| e.0).unwrap_or(17);
    let mut h = vec![0x60 | (tclass >> 4), (tclass << 4), 0x12, 0x34];
    h.extend_from_slice(&((exts.len() + u.len()) as u16).to_be_bytes());
    h.push(first);
    h.push(hop);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&exts);
    h.extend_from_slice(&u);
    h
}

pub fn frame_v4(vlans: &[(u16, u16)], ip: Vec<u8>) -> Vec<u8> {
    let mut f = eth(MAC_US, MAC_PEER, vlans, 0x0800);
    f.extend_from_slice(&ip);
    f
}

pub fn frame_v6(vlans: &[(u16, u16)], ip: Vec<u8>) -> Vec<u8> {
    let mut f = eth(MAC_US, MAC_PEER, vlans, 0x86dd);
    f.extend_from_slice(&ip);
    f
}

// ---- test packets (twamp-test.md §2.1, stamp.md §2.1) --------------------

/// An unauthenticated TWAMP sender packet: seq, T1, Error Estimate,
/// then `padding`.
pub fn twamp_sender(seq: u32, t1: [u8; 8], ee: u16, padding: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&t1);
    p.extend_from_slice(&ee.to_be_bytes());
    p.extend_from_slice(padding);
    p
}

/// An unauthenticated STAMP sender packet (44 octets) with SSID, plus
/// `tail` (TLVs).
pub fn stamp_sender(seq: u32, t1: [u8; 8], ee: u16, ssid: u16, tail: &[u8]) -> Vec<u8> {
    let mut p = twamp_sender(seq, t1, ee, &ssid.to_be_bytes());
    p.extend_from_slice(&[0u8; 28]);
    p.extend_from_slice(tail);
    p
}

pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

pub const T1: [u8; 8] = [0xe9, 0x1a, 0x2b, 0x3c, 0x80, 0x00, 0x00, 0x01];

// ---- output parsing ------------------------------------------------------

/// Offsets in a frame built by this module.
pub struct Layout {
    pub l3: usize,
    pub l4: usize,
    pub payload: usize,
}

pub fn layout(frame: &[u8]) -> Layout {
    let mut off = 12;
    let mut et = u16::from_be_bytes([frame[off], frame[off + 1]]);
    while et == 0x8100 || et == 0x88a8 {
        off += 4;
        et = u16::from_be_bytes([frame[off], frame[off + 1]]);
    }
    let l3 = off + 2;
    let l4 = if et == 0x0800 {
        l3 + usize::from(frame[l3] & 0x0f) * 4
    } else {
        assert_eq!(et, 0x86dd);
        let mut nh = frame[l3 + 6];
        let mut o = l3 + 40;
        while nh != 17 {
            nh = frame[o];
            o += (usize::from(frame[o + 1]) + 1) * 8;
        }
        o
    };
    Layout {
        l3,
        l4,
        payload: l4 + 8,
    }
}

/// Checks, with the independent implementation above, the IPv4 header
/// checksum (if IPv4) and the UDP checksum of a frame.
pub fn assert_checksums(frame: &[u8]) {
    let l = layout(frame);
    let udp = &frame[l.l4..];
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    assert_eq!(ulen, udp.len(), "UDP length covers the frame");
    let (src, dst) = if frame[l.l3] >> 4 == 4 {
        let h = &frame[l.l3..l.l4];
        assert_eq!(ones_sum(h, 0), 0xffff, "IPv4 header checksum");
        let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
        assert_eq!(tot, frame.len() - l.l3, "IPv4 total length");
        (h[12..16].to_vec(), h[16..20].to_vec())
    } else {
        let h = &frame[l.l3..l.l3 + 40];
        let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
        assert_eq!(plen, frame.len() - l.l3 - 40, "IPv6 payload length");
        (h[8..24].to_vec(), h[24..40].to_vec())
    };
    let got = u16::from_be_bytes([udp[6], udp[7]]);
    assert_ne!(got, 0, "UDP checksum present");
    let mut z = udp.to_vec();
    z[6] = 0;
    z[7] = 0;
    assert_eq!(got, udp_checksum(&src, &dst, &z), "UDP checksum");
}

// ---- clocks --------------------------------------------------------------

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let r = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn tai_ns() -> u64 {
    clock_ns(libc::CLOCK_TAI)
}

pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// The kernel's TAI − UTC offset (what adjtimex reports), in seconds.
pub fn kernel_tai_offset() -> i32 {
    let d = tai_ns() as i128 - realtime_ns() as i128;
    ((d + 500_000_000).div_euclid(1_000_000_000)) as i32
}

/// An NTP timestamp as UTC nanoseconds.
pub fn ntp_to_ns(b: &[u8]) -> u64 {
    let secs = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let frac = u64::from(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
    (secs - NTP_UNIX) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)
}

/// A PTP truncated timestamp as TAI nanoseconds (checks ns < 1e9).
pub fn ptp_to_ns(b: &[u8]) -> u64 {
    let secs = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let ns = u64::from(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
    assert!(
        ns < 1_000_000_000,
        "PTP nanoseconds field {ns} out of range"
    );
    secs * 1_000_000_000 + ns
}
