//! Parsing a received Ethernet frame down to its UDP payload, and turning
//! it into the reply in place: the same rules as the XDP program's reflect
//! path (ebpf/README.md "Role" 4), for the frames it hands to user space.
//!
//! Accepted: Ethernet II with up to two VLAN tags (802.1ad, 802.1Q); IPv4
//! with options (header checksum not re-verified: XDP did), no fragments;
//! IPv6 with at most 4 hop-by-hop / routing (Segments Left 0) / destination
//! options headers; UDP whose length fits the IP payload. Trailing Ethernet
//! padding is ignored.
//!
//! The reply (RFC 5357 §4.2.1, RFC 8762 §4.3, twamp-test.md §5): MACs,
//! addresses and ports swapped; TTL / Hop Limit 255; DSCP as configured, ECN
//! Not-ECT (RFC 7750 §3); IPv4 options and IPv6 extension headers dropped
//! (they describe the forward path); lengths and checksums recomputed. The
//! UDP payload is not moved: the headers are rebuilt in front of it, so the
//! frame may start later than the received one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
const NH_HOPOPTS: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_DSTOPTS: u8 = 60;
const MAX_EXT_HDRS: usize = 4;

/// IPv4 header offsets.
mod v4 {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOT_LEN: usize = 2;
    pub const FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// IPv6 header offsets.
mod v6 {
    pub const PLEN: usize = 4;
    pub const NEXT: usize = 6;
    pub const HOP: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// UDP header offsets.
mod udp {
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const LEN: usize = 4;
    pub const CSUM: usize = 6;
}

/// Why a frame is not a UDP datagram this path can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the header being read.
    #[error("{what} truncated at offset {at}")]
    Truncated {
        /// Header.
        what: &'static str,
        /// Where it should have been.
        at: usize,
    },
    /// Not IPv4/IPv6 + UDP, or an IPv6 header this path does not walk.
    #[error("not a plain UDP datagram ({0})")]
    NotUdp(&'static str),
    /// A header field with an impossible value.
    #[error("bad {field}: {value}")]
    Bad {
        /// Field.
        field: &'static str,
        /// Value found.
        value: u32,
    },
    /// The reply does not fit the frame.
    #[error("reply of {need} octets does not fit the {room} octets left in the frame")]
    NoRoom {
        /// Octets needed.
        need: usize,
        /// Octets available.
        room: usize,
    },
}

/// What [`parse`] learnt about a received frame; offsets from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Start of the IP header (Ethernet + tags).
    pub l3_off: usize,
    /// Start of the UDP header.
    pub l4_off: usize,
    /// Start of the UDP payload.
    pub payload_off: usize,
    /// UDP payload length (from the UDP length field).
    pub payload_len: usize,
    /// IPv4 options or IPv6 extension headers (dropped in the reply).
    pub opt_len: usize,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TTL / Hop Limit as received.
    pub ttl: u8,
    /// TOS / Traffic Class as received (DSCP << 2 | ECN).
    pub tos: u8,
}

impl Parsed {
    /// IPv6 or IPv4.
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    fn ip_fixed_len(&self) -> usize {
        if self.is_v6() {
            IPV6_LEN
        } else {
            IPV4_LEN
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn need(b: &[u8], what: &'static str, at: usize, len: usize) -> Result<(), FrameError> {
    if at + len > b.len() {
        Err(FrameError::Truncated { what, at })
    } else {
        Ok(())
    }
}

/// Parses `frame` (the received octets) down to the UDP payload.
pub fn parse(frame: &[u8]) -> Result<Parsed, FrameError> {
    need(frame, "Ethernet header", 0, ETH_LEN)?;
    let mut et = be16(frame, 12);
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if et != ETH_P_8021Q && et != ETH_P_8021AD {
            break;
        }
        need(frame, "VLAN tag", l3, VLAN_LEN)?;
        et = be16(frame, l3 + 2);
        l3 += VLAN_LEN;
    }
    let (src, dst, ttl, tos, l4, opt_len, ip_payload_end) = match et {
        ETH_P_IPV4 => {
            need(frame, "IPv4 header", l3, IPV4_LEN)?;
            let h = &frame[l3..];
            let ver_ihl = h[v4::VER_IHL];
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            if ver_ihl >> 4 != 4 || ihl < IPV4_LEN {
                return Err(FrameError::Bad {
                    field: "IPv4 version/IHL",
                    value: u32::from(ver_ihl),
                });
            }
            need(frame, "IPv4 options", l3, ihl)?;
            let tot = usize::from(be16(h, v4::TOT_LEN));
            if tot < ihl || l3 + tot > frame.len() {
                return Err(FrameError::Bad {
                    field: "IPv4 total length",
                    value: tot as u32,
                });
            }
            if be16(h, v4::FRAG) & 0x3fff != 0 {
                return Err(FrameError::NotUdp("IPv4 fragment"));
            }
            if h[v4::PROTO] != IPPROTO_UDP {
                return Err(FrameError::NotUdp("IPv4 protocol"));
            }
            let a = |o: usize| IpAddr::V4(Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]));
            (
                a(v4::SRC),
                a(v4::DST),
                h[v4::TTL],
                h[v4::TOS],
                l3 + ihl,
                ihl - IPV4_LEN,
                l3 + tot,
            )
        }
        ETH_P_IPV6 => {
            need(frame, "IPv6 header", l3, IPV6_LEN)?;
            let h = &frame[l3..];
            if h[0] >> 4 != 6 {
                return Err(FrameError::Bad {
                    field: "IPv6 version",
                    value: u32::from(h[0] >> 4),
                });
            }
            let plen = usize::from(be16(h, v6::PLEN));
            let end = l3 + IPV6_LEN + plen;
            if plen == 0 || end > frame.len() {
                return Err(FrameError::Bad {
                    field: "IPv6 payload length",
                    value: plen as u32,
                });
            }
            let mut nh = h[v6::NEXT];
            let mut off = l3 + IPV6_LEN;
            for _ in 0..MAX_EXT_HDRS {
                if nh != NH_HOPOPTS && nh != NH_ROUTING && nh != NH_DSTOPTS {
                    break;
                }
                need(frame, "IPv6 extension header", off, 8)?;
                if nh == NH_ROUTING && frame[off + 3] != 0 {
                    return Err(FrameError::NotUdp("IPv6 routing header with segments left"));
                }
                nh = frame[off];
                off += (usize::from(frame[off + 1]) + 1) * 8;
            }
            if nh != IPPROTO_UDP {
                return Err(FrameError::NotUdp("IPv6 next header"));
            }
            if off > end {
                return Err(FrameError::Bad {
                    field: "IPv6 extension headers length",
                    value: (off - l3 - IPV6_LEN) as u32,
                });
            }
            let a = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let tc = (h[0] << 4) | (h[1] >> 4);
            (
                a(v6::SRC),
                a(v6::DST),
                h[v6::HOP],
                tc,
                off,
                off - l3 - IPV6_LEN,
                end,
            )
        }
        _ => return Err(FrameError::NotUdp("EtherType")),
    };
    need(frame, "UDP header", l4, UDP_LEN)?;
    let ulen = usize::from(be16(frame, l4 + udp::LEN));
    if ulen < UDP_LEN || l4 + ulen > ip_payload_end {
        return Err(FrameError::Bad {
            field: "UDP length",
            value: ulen as u32,
        });
    }
    Ok(Parsed {
        l3_off: l3,
        l4_off: l4,
        payload_off: l4 + UDP_LEN,
        payload_len: ulen - UDP_LEN,
        opt_len,
        src,
        dst,
        sport: be16(frame, l4 + udp::SPORT),
        dport: be16(frame, l4 + udp::DPORT),
        ttl,
        tos,
    })
}

/// One's-complement sum (RFC 1071) of `data` as big-endian 16-bit words
/// (odd octet padded with zero), added to `acc`, unfolded.
pub fn ones_sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four words at once; carries accumulate in the upper bits.
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds an unfolded sum to 16 bits.
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The UDP checksum of `datagram` (header with checksum field zero, and
/// payload) between `src` and `dst` (RFC 768, RFC 8200 §8.1); a computed 0
/// is sent as 0xffff.
pub fn udp_checksum(src: &IpAddr, dst: &IpAddr, datagram: &[u8]) -> u16 {
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ones_sum(&d.octets(), ones_sum(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => ones_sum(&d.octets(), ones_sum(&s.octets(), 0)),
        _ => 0,
    };
    acc += u64::from(IPPROTO_UDP) + datagram.len() as u64;
    let c = !fold(ones_sum(datagram, acc));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Turns the received frame at the start of `room` (parsed as `p`) into the
/// reply whose UDP payload of `reply_len` octets is already written at
/// `p.payload_off`. `room` runs from the received frame's first octet to
/// the end of its UMEM chunk. Returns `(start, len)`: where in `room` the
/// reply frame starts (after dropped IP options) and its length.
pub fn build_reply(
    room: &mut [u8],
    p: &Parsed,
    reply_len: usize,
    dscp: u8,
) -> Result<(usize, usize), FrameError> {
    let end = p.payload_off + reply_len;
    if end > room.len() {
        return Err(FrameError::NoRoom {
            need: end,
            room: room.len(),
        });
    }
    let ulen = UDP_LEN + reply_len;
    let ip_fixed = p.ip_fixed_len();
    if ulen > usize::from(u16::MAX) || (!p.is_v6() && ulen + IPV4_LEN > usize::from(u16::MAX)) {
        return Err(FrameError::NoRoom {
            need: ulen,
            room: usize::from(u16::MAX),
        });
    }
    // Drop options: slide Ethernet, tags and the fixed IP header forward
    // so that they end where the UDP header begins.
    let start = p.opt_len;
    if start > 0 {
        room.copy_within(0..p.l3_off + ip_fixed, start);
    }
    let f = &mut room[start..end];
    // Ethernet: swap MACs.
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    let l3 = p.l3_off;
    let l4 = l3 + ip_fixed;
    let tos = (dscp & 0x3f) << 2; // ECN Not-ECT (RFC 7750 §3)
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let h = &mut f[l3..l3 + IPV4_LEN];
            h[v4::VER_IHL] = 0x45;
            h[v4::TOS] = tos;
            h[v4::TOT_LEN..v4::TOT_LEN + 2]
                .copy_from_slice(&((IPV4_LEN + ulen) as u16).to_be_bytes());
            h[v4::TTL] = 255;
            h[v4::PROTO] = IPPROTO_UDP;
            h[v4::SRC..v4::SRC + 4].copy_from_slice(&d.octets());
            h[v4::DST..v4::DST + 4].copy_from_slice(&s.octets());
            h[v4::CSUM..v4::CSUM + 2].fill(0);
            let c = !fold(ones_sum(h, 0));
            h[v4::CSUM..v4::CSUM + 2].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = &mut f[l3..l3 + IPV6_LEN];
            // version 6 | traffic class | flow label (kept)
            h[0] = 0x60 | (tos >> 4);
            h[1] = ((tos & 0x0f) << 4) | (h[1] & 0x0f);
            h[v6::PLEN..v6::PLEN + 2].copy_from_slice(&(ulen as u16).to_be_bytes());
            h[v6::NEXT] = IPPROTO_UDP;
            h[v6::HOP] = 255;
            h[v6::SRC..v6::SRC + 16].copy_from_slice(&d.octets());
            h[v6::DST..v6::DST + 16].copy_from_slice(&s.octets());
        }
        _ => {
            return Err(FrameError::Bad {
                field: "address families",
                value: 0,
            })
        }
    }
    let u = &mut f[l4..];
    u[udp::SPORT..udp::SPORT + 2].copy_from_slice(&p.dport.to_be_bytes());
    u[udp::DPORT..udp::DPORT + 2].copy_from_slice(&p.sport.to_be_bytes());
    u[udp::LEN..udp::LEN + 2].copy_from_slice(&(ulen as u16).to_be_bytes());
    u[udp::CSUM..udp::CSUM + 2].fill(0);
    let c = udp_checksum(&p.dst, &p.src, &u[..ulen]);
    u[udp::CSUM..udp::CSUM + 2].copy_from_slice(&c.to_be_bytes());
    Ok((start, end - start))
}

/// The bare echo (the benchmark's ceiling): swaps MACs, addresses and ports
/// of a parsed frame in place and changes nothing else. The IPv4 header and
/// UDP checksums stay valid (a swap does not change a one's-complement sum).
pub fn echo_in_place(frame: &mut [u8], p: &Parsed) {
    for i in 0..6 {
        frame.swap(i, 6 + i);
    }
    let (s, d, n) = if p.is_v6() {
        (p.l3_off + v6::SRC, p.l3_off + v6::DST, 16)
    } else {
        (p.l3_off + v4::SRC, p.l3_off + v4::DST, 4)
    };
    for i in 0..n {
        frame.swap(s + i, d + i);
    }
    let l4 = p.l4_off;
    frame.swap(l4, l4 + 2);
    frame.swap(l4 + 1, l4 + 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent RFC 1071 sum: 16-bit words one at a time.
    fn naive_sum(b: &[u8]) -> u32 {
        let mut s = 0u32;
        for (i, x) in b.iter().enumerate() {
            s += if i % 2 == 0 {
                u32::from(*x) << 8
            } else {
                u32::from(*x)
            };
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }

    fn frame_v4(options: &[u8], vlans: usize, payload: &[u8], tos: u8, ttl: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        for _ in 0..vlans {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let ihl = 5 + options.len() / 4;
        let tot = ihl * 4 + 8 + payload.len();
        let mut ip = vec![0x40 | ihl as u8, tos];
        ip.extend_from_slice(&(tot as u16).to_be_bytes());
        ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, 17, 0, 0]);
        ip.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        ip.extend_from_slice(options);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&862u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn frame_v6(ext: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
        let ext_hdr: Vec<u8> = if ext {
            vec![17, 0, 1, 4, 0, 0, 0, 0] // destination options, PadN
        } else {
            vec![]
        };
        let plen = ext_hdr.len() + 8 + payload.len();
        f.extend_from_slice(&[0x6b, 0x81, 0x23, 0x45]); // TC 0xb8, flow 0x12345
        f.extend_from_slice(&(plen as u16).to_be_bytes());
        f.push(if ext { NH_DSTOPTS } else { 17 });
        f.push(7);
        let a1: Ipv6Addr = "2001:2::1".parse().unwrap();
        let a2: Ipv6Addr = "2001:2::2".parse().unwrap();
        f.extend_from_slice(&a1.octets());
        f.extend_from_slice(&a2.octets());
        f.extend_from_slice(&ext_hdr);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&862u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn check_udp(frame: &[u8], l3: usize, v6: bool) {
        let (src, dst, l4) = if v6 {
            (&frame[l3 + 8..l3 + 24], &frame[l3 + 24..l3 + 40], l3 + 40)
        } else {
            (&frame[l3 + 12..l3 + 16], &frame[l3 + 16..l3 + 20], l3 + 20)
        };
        let udp = &frame[l4..];
        let mut ph = src.to_vec();
        ph.extend_from_slice(dst);
        ph.extend_from_slice(&[0, 17]);
        ph.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        let mut all = ph;
        all.extend_from_slice(udp);
        assert_eq!(naive_sum(&all), 0xffff, "UDP checksum verifies");
    }

    #[test]
    fn parses_v4_with_vlans_and_options_and_ignores_eth_padding() {
        let mut f = frame_v4(&[1, 1, 1, 0], 2, &[9; 14], 0xb9, 61);
        f.extend_from_slice(&[0; 6]); // Ethernet padding
        let p = parse(&f).unwrap();
        assert_eq!((p.l3_off, p.l4_off, p.payload_off), (22, 46, 54));
        assert_eq!((p.payload_len, p.opt_len), (14, 4));
        assert_eq!((p.ttl, p.tos, p.sport, p.dport), (61, 0xb9, 40000, 862));
        assert_eq!(p.src, "198.18.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn reply_v4_drops_options_and_checksums_verify() {
        let payload: Vec<u8> = (0..48u8).collect();
        let f = frame_v4(&[1, 1, 1, 0], 1, &payload, 0xb9, 61);
        let p = parse(&f).unwrap();
        let mut room = f.clone();
        room.resize(f.len() + 200, 0xee);
        // the engine wrote a 112-octet reply payload in place
        for (i, b) in room[p.payload_off..p.payload_off + 112]
            .iter_mut()
            .enumerate()
        {
            *b = i as u8 ^ 0x5a;
        }
        let (start, len) = build_reply(&mut room, &p, 112, 46).unwrap();
        assert_eq!(start, 4);
        let r = &room[start..start + len];
        assert_eq!(len, 18 + 20 + 8 + 112);
        assert_eq!(&r[0..6], &f[6..12], "destination = received source MAC");
        assert_eq!(&r[6..12], &f[0..6]);
        assert_eq!(&r[12..18], &f[12..18], "VLAN tag kept");
        let ip = &r[18..38];
        assert_eq!(ip[0], 0x45);
        assert_eq!(ip[1], 46 << 2, "DSCP 46, Not-ECT");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 140);
        assert_eq!(ip[8], 255);
        assert_eq!(&ip[12..16], &[198, 18, 0, 2]);
        assert_eq!(&ip[16..20], &[198, 18, 0, 1]);
        assert_eq!(naive_sum(ip), 0xffff, "IPv4 header checksum");
        assert_eq!(&r[38..40], &862u16.to_be_bytes());
        assert_eq!(&r[40..42], &40000u16.to_be_bytes());
        assert_eq!(u16::from_be_bytes([r[42], r[43]]), 120);
        assert_eq!(r[46], 0x5a, "payload untouched");
        check_udp(r, 18, false);
        let again = parse(r).unwrap();
        assert_eq!(again.payload_len, 112);
    }

    #[test]
    fn reply_v6_drops_extension_headers() {
        let f = frame_v6(true, &[7; 48]);
        let p = parse(&f).unwrap();
        assert_eq!((p.opt_len, p.ttl, p.tos), (8, 7, 0xb8));
        let mut room = f.clone();
        room.resize(f.len() + 64, 0);
        let (start, len) = build_reply(&mut room, &p, 112, 0).unwrap();
        assert_eq!((start, len), (8, 14 + 40 + 8 + 112));
        let r = &room[start..start + len];
        assert_eq!(r[14] >> 4, 6);
        assert_eq!((r[14] & 0x0f, r[15] >> 4), (0, 0), "traffic class 0");
        assert_eq!(&r[15..18], &[0x01, 0x23, 0x45], "flow label kept");
        assert_eq!(r[14 + 6], 17);
        assert_eq!(r[14 + 7], 255);
        assert_eq!(r[14 + 8 + 15], 2, "source = our address");
        check_udp(r, 14, true);
    }

    #[test]
    fn no_room_and_bad_frames_are_errors() {
        let f = frame_v4(&[], 0, &[0; 48], 0, 64);
        let p = parse(&f).unwrap();
        let mut room = f.clone();
        assert!(matches!(
            build_reply(&mut room, &p, 112, 0),
            Err(FrameError::NoRoom { .. })
        ));
        for cut in 0..f.len() - 48 {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        let mut frag = f.clone();
        frag[14 + 6] = 0x20; // MF
        assert!(matches!(parse(&frag), Err(FrameError::NotUdp(_))));
        let mut tcp = f.clone();
        tcp[14 + 9] = 6;
        assert!(matches!(parse(&tcp), Err(FrameError::NotUdp(_))));
        let mut long = f.clone();
        long[14 + 20 + 5] = 200; // UDP length beyond the IP payload
        assert!(parse(&long).is_err());
        let mut arp = f;
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(parse(&arp).is_err());
    }

    #[test]
    fn echo_swaps_and_keeps_checksums() {
        let mut f = frame_v4(&[], 0, &[3; 20], 0, 64);
        let p = parse(&f).unwrap();
        let c = udp_checksum(&p.src, &p.dst, &f[p.l4_off..]);
        f[p.l4_off + 6..p.l4_off + 8].copy_from_slice(&c.to_be_bytes());
        let orig = f.clone();
        echo_in_place(&mut f, &p);
        let q = parse(&f).unwrap();
        assert_eq!(
            (q.src, q.dst, q.sport, q.dport),
            (p.dst, p.src, p.dport, p.sport)
        );
        assert_eq!(&f[0..6], &orig[6..12]);
        check_udp(&f, 14, false);
        assert_eq!(naive_sum(&f[14..34]), naive_sum(&orig[14..34]));
    }

    proptest::proptest! {
        /// Any parsable request (IPv4 with 0–40 octets of options and 0–2
        /// VLAN tags, or IPv6 with or without an extension header) becomes
        /// a reply that parses back with addresses and ports swapped, TTL
        /// 255, the requested DSCP and checksums that verify.
        #[test]
        fn any_reply_is_consistent(
            v6 in proptest::bool::ANY,
            opt_words in 0usize..=10,
            vlans in 0usize..=2,
            req_len in 0usize..300,
            reply_len in 0usize..400,
            dscp in 0u8..64,
        ) {
            let payload = vec![0x3c; req_len];
            let f = if v6 {
                frame_v6(opt_words % 2 == 1, &payload)
            } else {
                frame_v4(&vec![1u8; opt_words * 4], vlans, &payload, 0x03, 9)
            };
            let p = parse(&f).unwrap();
            let mut room = f.clone();
            room.resize(p.payload_off + reply_len.max(req_len) + 64, 0x77);
            let (start, len) = build_reply(&mut room, &p, reply_len, dscp).unwrap();
            let r = &room[start..start + len];
            let q = parse(r).unwrap();
            proptest::prop_assert_eq!(
                (q.src, q.dst, q.sport, q.dport),
                (p.dst, p.src, p.dport, p.sport)
            );
            proptest::prop_assert_eq!((q.ttl, q.tos, q.opt_len), (255, dscp << 2, 0));
            proptest::prop_assert_eq!(q.payload_len, reply_len);
            proptest::prop_assert_eq!(q.payload_off, p.payload_off - p.opt_len);
            check_udp(r, q.l3_off, v6);
            if !v6 {
                proptest::prop_assert_eq!(naive_sum(&r[q.l3_off..q.l4_off]), 0xffff);
            }
        }

        #[test]
        fn ones_sum_matches_naive(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            proptest::prop_assert_eq!(u32::from(fold(ones_sum(&data, 0))), naive_sum(&data));
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&data);
        }
    }
}
