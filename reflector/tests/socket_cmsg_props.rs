//! Properties of control-message parsing: what the kernel's layouts encode
//! parses back exactly; cut, corrupted or random control data never panics
//! and never yields a wrong value.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use ricochet_reflector::socket::cmsg::{
    cmsg_space, in6_pktinfo, in_pktinfo, Ancillary, CmsgWriter, CMSG_HDR_LEN, RX_CONTROL_LEN,
};

/// The fields one received datagram's control data may carry.
#[derive(Debug, Clone)]
struct Fields {
    ttl: Option<u8>,
    tos: Option<u8>,
    v6: bool,
    dst: Option<IpAddr>,
    ifindex: u32,
    sw: Option<u64>,
    hw: Option<u64>,
    ovfl: Option<u32>,
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        // Not v4-mapped: those parse as IPv4 by design.
        any::<[u8; 16]>()
            .prop_filter("not v4-mapped", |o| Ipv6Addr::from(*o)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

/// A non-zero stamp (all-zero means "none" on the wire).
fn stamp() -> impl Strategy<Value = u64> {
    1u64..=(i64::MAX as u64 / 1_000_000_000) * 1_000_000_000
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        any::<Option<u8>>(),
        any::<Option<u8>>(),
        proptest::option::of(ip()),
        any::<u32>(),
        proptest::option::of(stamp()),
        proptest::option::of(stamp()),
        any::<Option<u32>>(),
    )
        .prop_map(|(ttl, tos, dst, ifindex, sw, hw, ovfl)| Fields {
            ttl,
            tos,
            v6: matches!(dst, Some(IpAddr::V6(_))),
            dst,
            ifindex,
            sw,
            hw,
            ovfl,
        })
}

fn ts(ns: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&((ns / 1_000_000_000) as i64).to_ne_bytes());
    b[8..].copy_from_slice(&((ns % 1_000_000_000) as i64).to_ne_bytes());
    b
}

/// Encodes `f` as Linux would deliver it (timestamps first, then IP-level).
fn emit(f: &Fields) -> Vec<u8> {
    let mut buf = vec![0u8; RX_CONTROL_LEN];
    let mut w = CmsgWriter::new(&mut buf);
    if f.sw.is_some() || f.hw.is_some() {
        let mut d = [0u8; 48];
        d[..16].copy_from_slice(&ts(f.sw.unwrap_or(0)));
        d[32..].copy_from_slice(&ts(f.hw.unwrap_or(0)));
        w.push(libc::SOL_SOCKET, libc::SO_TIMESTAMPING, &d).unwrap();
    }
    if let Some(n) = f.ovfl {
        w.push(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &n.to_ne_bytes())
            .unwrap();
    }
    if f.v6 {
        if let Some(t) = f.ttl {
            let v = i32::from(t).to_ne_bytes();
            w.push(libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT, &v).unwrap();
        }
        if let Some(t) = f.tos {
            let v = i32::from(t).to_ne_bytes();
            w.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &v).unwrap();
        }
    } else {
        if let Some(t) = f.ttl {
            let v = i32::from(t).to_ne_bytes();
            w.push(libc::IPPROTO_IP, libc::IP_TTL, &v).unwrap();
        }
        if let Some(t) = f.tos {
            w.push(libc::IPPROTO_IP, libc::IP_TOS, &[t]).unwrap();
        }
    }
    match f.dst {
        Some(IpAddr::V4(a)) => {
            // in_pktinfo: ifindex, spec_dst, addr — the header destination last.
            let mut d = in_pktinfo(Ipv4Addr::UNSPECIFIED, f.ifindex);
            d[8..].copy_from_slice(&a.octets());
            w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &d).unwrap();
        }
        Some(IpAddr::V6(a)) => {
            w.push(
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                &in6_pktinfo(a, f.ifindex),
            )
            .unwrap();
        }
        None => {}
    }
    let n = w.len();
    buf.truncate(n);
    buf
}

/// Every field either absent or exactly the original.
fn consistent(a: &Ancillary, f: &Fields) -> bool {
    fn ok<T: PartialEq>(got: Option<T>, want: Option<T>) -> bool {
        got.is_none() || got == want
    }
    ok(a.ttl, f.ttl)
        && ok(a.tos, f.tos)
        && ok(a.dst, f.dst)
        && ok(a.ifindex, f.dst.map(|_| f.ifindex))
        && ok(a.sw_stamp_ns, f.sw)
        && ok(a.hw_stamp_ns, f.hw)
        && ok(a.rxq_dropped, f.ovfl)
}

proptest! {
    #[test]
    fn parse_of_emit_is_identity(f in fields()) {
        let a = Ancillary::parse(&emit(&f));
        prop_assert_eq!(a.error, None);
        prop_assert_eq!(a.ttl, f.ttl);
        prop_assert_eq!(a.tos, f.tos);
        prop_assert_eq!(a.dst, f.dst);
        prop_assert_eq!(a.ifindex, f.dst.map(|_| f.ifindex));
        prop_assert_eq!(a.sw_stamp_ns, f.sw);
        prop_assert_eq!(a.hw_stamp_ns, f.hw);
        prop_assert_eq!(a.rxq_dropped, f.ovfl);
    }

    /// A control buffer cut anywhere (the caller passed a short
    /// msg_controllen) loses fields but never invents one.
    #[test]
    fn any_prefix_yields_a_subset(f in fields(), cut in 0usize..RX_CONTROL_LEN) {
        let buf = emit(&f);
        let cut = cut.min(buf.len());
        let a = Ancillary::parse(&buf[..cut]);
        prop_assert!(consistent(&a, &f), "{:?} from {:?}", a, f);
    }

    /// What the kernel does under MSG_CTRUNC: the last message that starts
    /// in the buffer keeps a header whose cmsg_len shrinks to the room left.
    #[test]
    fn kernel_style_truncation_is_reported(f in fields(), room in 0usize..RX_CONTROL_LEN) {
        let mut buf = emit(&f);
        if room >= buf.len() {
            return Ok(());
        }
        // Find the message the cut falls in.
        let mut off = 0;
        while off < buf.len() {
            let len = usize::from_ne_bytes(buf[off..off + size_of::<usize>()].try_into().unwrap());
            let space = cmsg_space(len - CMSG_HDR_LEN);
            if off + space > room {
                break;
            }
            off += space;
        }
        if room >= off + CMSG_HDR_LEN {
            buf[off..off + size_of::<usize>()].copy_from_slice(&(room - off).to_ne_bytes());
        }
        buf.truncate(room);
        let a = Ancillary::parse(&buf);
        prop_assert!(consistent(&a, &f), "{:?} from {:?}", a, f);
    }

    #[test]
    fn random_control_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Ancillary::parse(&data);
    }

    /// Random bytes behind well-formed headers: a field is only ever set
    /// from a message of its kind whose data holds that value.
    #[test]
    fn random_payloads_behind_valid_headers(
        msgs in proptest::collection::vec(
            (prop_oneof![Just(libc::SOL_SOCKET), Just(libc::IPPROTO_IP), Just(libc::IPPROTO_IPV6)],
             0i32..80,
             proptest::collection::vec(any::<u8>(), 0..60)),
            0..8)
    ) {
        let mut buf = vec![0u8; 2048];
        let mut w = CmsgWriter::new(&mut buf);
        for (level, ty, data) in &msgs {
            w.push(*level, *ty, data).unwrap();
        }
        let n = w.len();
        let a = Ancillary::parse(&buf[..n]);
        let int_of = |d: &[u8]| d.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
        if let Some(t) = a.ttl {
            let found = msgs.iter().any(|(l, ty, d)| {
                matches!((*l, *ty), (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT))
                    && int_of(d) == Some(i32::from(t))
            });
            prop_assert!(found, "{:?} from {:?}", a, msgs);
        }
        if let Some(t) = a.tos {
            let found = msgs.iter().any(|(l, ty, d)| {
                ((*l, *ty) == (libc::IPPROTO_IP, libc::IP_TOS) && d.first() == Some(&t))
                    || ((*l, *ty) == (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) && int_of(d) == Some(i32::from(t)))
            });
            prop_assert!(found, "{:?} from {:?}", a, msgs);
        }
        if a.sw_stamp_ns.is_some() || a.hw_stamp_ns.is_some() {
            let found = msgs.iter().any(|(l, ty, d)| {
                *l == libc::SOL_SOCKET && [35, 37, 64, 65].contains(ty) && d.len() >= 16
            });
            prop_assert!(found, "{:?} from {:?}", a, msgs);
        }
        if a.dst.is_some() {
            let found = msgs.iter().any(|(l, ty, d)| {
                matches!((*l, *ty), (libc::IPPROTO_IP, libc::IP_PKTINFO) | (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO))
                    && d.len() >= 12
            });
            prop_assert!(found, "{:?} from {:?}", a, msgs);
        }
    }
}
