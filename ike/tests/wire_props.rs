//! Property tests of the wire module: every payload Repr survives
//! emit → parse unchanged, and no input makes a parser panic.

use proptest::prelude::*;
use ricochet_ike::wire::{
    self, Attribute, Delete, Header, HeaderRepr, Identification, Notify, Payload, Proposal,
    TrafficSelector, Transform, HEADER_LEN,
};
use std::net::IpAddr;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn attribute() -> impl Strategy<Value = Attribute> {
    prop_oneof![
        (0u16..0x8000, any::<u16>()).prop_map(|(atype, value)| Attribute::Tv { atype, value }),
        (0u16..0x8000, bytes(8)).prop_map(|(atype, value)| Attribute::Tlv { atype, value }),
    ]
}

fn transform() -> impl Strategy<Value = Transform> {
    (
        1u8..6,
        any::<u16>(),
        prop::collection::vec(attribute(), 0..3),
    )
        .prop_map(|(ttype, id, attributes)| Transform {
            ttype,
            id,
            attributes,
        })
}

fn proposal() -> impl Strategy<Value = Proposal> {
    (
        1u8..10,
        1u8..4,
        prop_oneof![Just(0usize), Just(4), Just(8)],
        prop::collection::vec(transform(), 0..6),
        any::<u64>(),
    )
        .prop_map(|(number, protocol, spi_len, transforms, spi)| Proposal {
            number,
            protocol,
            spi: spi.to_be_bytes()[..spi_len].to_vec(),
            transforms,
        })
}

fn ts() -> impl Strategy<Value = TrafficSelector> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
    )
        .prop_map(|(v6, ip_proto, a, b, s, e)| {
            let (start_addr, end_addr) = if v6 {
                (IpAddr::from(s), IpAddr::from(e))
            } else {
                let s4: [u8; 4] = s[..4].try_into().unwrap();
                let e4: [u8; 4] = e[..4].try_into().unwrap();
                (IpAddr::from(s4), IpAddr::from(e4))
            };
            TrafficSelector {
                ip_proto,
                start_port: a,
                end_port: b,
                start_addr,
                end_addr,
            }
        })
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        prop::collection::vec(proposal(), 1..4).prop_map(Payload::Sa),
        (any::<u16>(), bytes(300)).prop_map(|(group, data)| Payload::Ke { group, data }),
        (any::<u8>(), bytes(40))
            .prop_map(|(id_type, data)| Payload::IdI(Identification { id_type, data })),
        (any::<u8>(), bytes(40))
            .prop_map(|(id_type, data)| Payload::IdR(Identification { id_type, data })),
        (any::<u8>(), bytes(64)).prop_map(|(method, data)| Payload::Auth { method, data }),
        prop::collection::vec(any::<u8>(), 16..257).prop_map(Payload::Nonce),
        (
            any::<u8>(),
            prop_oneof![Just(0usize), Just(4), Just(8)],
            any::<u16>(),
            bytes(40)
        )
            .prop_map(|(protocol, spi_len, ntype, data)| Payload::Notify(Notify {
                protocol,
                spi: vec![0xab; spi_len],
                ntype,
                data
            })),
        (any::<u8>(), 1usize..4).prop_flat_map(|(protocol, n)| {
            prop::collection::vec(prop::collection::vec(any::<u8>(), 4..=4), n)
                .prop_map(move |spis| Payload::Delete(Delete { protocol, spis }))
        }),
        Just(Payload::Delete(Delete {
            protocol: 1,
            spis: vec![]
        })),
        bytes(40).prop_map(Payload::VendorId),
        prop::collection::vec(ts(), 0..4).prop_map(Payload::TsI),
        prop::collection::vec(ts(), 0..4).prop_map(Payload::TsR),
    ]
}

proptest! {
    #[test]
    fn payload_chains_round_trip(chain in prop::collection::vec(payload(), 0..6)) {
        let mut out = Vec::new();
        let first = wire::emit_chain(&chain, &mut out);
        let back = wire::parse_chain(first, &out).unwrap();
        prop_assert_eq!(back, chain);
    }

    #[test]
    fn header_round_trips(spi_i in any::<[u8; 8]>(), spi_r in any::<[u8; 8]>(), np in any::<u8>(),
                          ex in any::<u8>(), flags in any::<u8>(), id in any::<u32>(), extra in bytes(64)) {
        let r = HeaderRepr { spi_i, spi_r, next_payload: np, exchange_type: ex, flags, message_id: id,
                             length: (HEADER_LEN + extra.len()) as u32 };
        let mut buf = vec![0u8; HEADER_LEN];
        r.emit(&mut buf);
        buf.extend_from_slice(&extra);
        let h = Header::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(HeaderRepr::parse(&h), r);
        // A Length that disagrees with the datagram is refused.
        buf.push(0);
        prop_assert!(Header::new_checked(&buf[..]).is_err());
    }

    #[test]
    fn ts_intersection_lies_in_both(a in ts(), b in ts()) {
        match a.intersect(&b) {
            Some(x) => {
                prop_assert!(a.contains(&x) && b.contains(&x));
                prop_assert_eq!(b.intersect(&a), Some(x));
            }
            None => {
                // Then no single address/port/protocol lies in both: the
                // start corner of one is outside the other when they share
                // a family and overlap on every axis.
                let same_family = a.start_addr.is_ipv4() == b.start_addr.is_ipv4();
                let ports = a.start_port.max(b.start_port) <= a.end_port.min(b.end_port);
                let protos = a.ip_proto == 0 || b.ip_proto == 0 || a.ip_proto == b.ip_proto;
                let addrs = a.start_addr.max(b.start_addr) <= a.end_addr.min(b.end_addr);
                prop_assert!(!(same_family && ports && protos && addrs));
            }
        }
    }

    #[test]
    fn arbitrary_octets_never_panic(first in any::<u8>(), data in bytes(400)) {
        let _ = wire::parse_chain(first, &data);
        let _ = Header::new_checked(&data[..]);
    }
}

#[test]
fn unknown_payloads_are_kept_unless_critical_and_fragments_refused() {
    // Nonce (40) followed by an unknown type 200 with 3 body octets.
    let chain = |critical: u8| {
        let mut c = vec![200, 0, 0, 20];
        c.extend_from_slice(&[7; 16]);
        c.extend_from_slice(&[0, critical, 0, 7, 1, 2, 3]);
        c
    };
    let ok = wire::parse_chain(40, &chain(0)).unwrap();
    assert_eq!(
        ok[1],
        Payload::Other {
            ptype: 200,
            body: vec![1, 2, 3]
        }
    );
    assert_eq!(
        wire::parse_chain(40, &chain(0x80)),
        Err(wire::WireError::UnsupportedCritical(200))
    );
    // An Encrypted Fragment payload (RFC 7383) is refused as such.
    let skf = [0u8, 0, 0, 8, 0, 1, 0, 1];
    assert_eq!(
        wire::parse_chain(wire::ptype::SKF, &skf),
        Err(wire::WireError::Fragmented)
    );
}
