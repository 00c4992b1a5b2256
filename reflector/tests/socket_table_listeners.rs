//! Stateless listeners through `SocketSessionTable` on loopback, fed with
//! the requests of real senders (stamp-suite 0.8.0, twampy): lengths never
//! grow, fields at the RFC 8762 / RFC 5357 offsets, the received DSCP copied
//! or the configured one used, STAMP HMAC-SHA-256 both ways.

mod socket_table_support;

use std::net::{SocketAddr, UdpSocket};

use ricochet_protocol::crypto::StampHmac;
use ricochet_reflector::engine::DropReason;
use ricochet_reflector::session_table::{ListenerKind, ListenerSpec, SessionTable, TableError};
use ricochet_reflector::socket::SocketSessionTable;
use ricochet_testkit::{decoded_json, unhex};
use socket_table_support::*;
use zeroize::Zeroizing;

const PEER: &str = "stamp-suite-0.8.0";
const GOLDEN_KEY: &[u8; 32] = b"stamp-golden-hmac-key-0123456789";
const SEND_TTL: u8 = 33;

/// The sender→reflector payloads of a capture.
fn requests(file: &str) -> Vec<Vec<u8>> {
    let json = decoded_json(PEER, &format!("{file}.decoded.json"));
    json["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["direction"] == "sender->reflector")
        .map(|p| unhex(p["payload_hex"].as_str().unwrap()))
        .collect()
}

fn listener(
    table: &mut SocketSessionTable,
    local: &str,
    kind: ListenerKind,
    dscp: Option<u8>,
) -> SocketAddr {
    let before = table.listeners();
    table
        .add_listener(ListenerSpec {
            local: local.parse().unwrap(),
            kind,
            dscp,
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    let mut now = table.listeners();
    now.retain(|a| !before.contains(a));
    assert_eq!(now.len(), 1);
    now[0]
}

/// The unauthenticated STAMP reflector fields against the request.
fn check_open(req: &[u8], reply: &[u8]) {
    assert_eq!(reply.len(), req.len(), "never longer, symmetric");
    assert_eq!(&reply[0..4], &req[0..4], "stateless: sequence copied");
    assert_eq!(&reply[14..16], &req[14..16], "SSID copied");
    assert_eq!(&reply[24..38], &req[0..14], "sender fields copied");
    assert_eq!(reply[40], SEND_TTL, "Session-Sender TTL as sent");
    assert!(ntp_ns(&reply[16..24]) <= ntp_ns(&reply[4..12]), "T2 ≤ T3");
    assert_ne!(reply[13], 0, "Multiplier ≥ 1");
}

#[test]
fn unauthenticated_listener_copies_the_received_dscp() {
    let mut table = table();
    let local = listener(
        &mut table,
        "127.0.0.1:0",
        ListenerKind::Unauthenticated,
        None,
    );
    // DSCP 10, ECN ECT(1): the reply carries DSCP 10 with ECN Not-ECT.
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0x29);
    let reqs = requests("stamp-open-tlvs-extra-padding");
    for req in &reqs {
        peer.send(local, req);
        let r = peer.recv();
        assert_eq!(r.src, local);
        assert_eq!(r.tos, Some(0x28));
        assert_eq!(r.ttl, Some(255));
        check_open(req, &r.payload);
    }
    // A Class of Service TLV asks for DSCP1 (stamp-suite's octet 0xba
    // reads DSCP1 = 46 in the RFC 8972 layout): the reply carries it, and
    // DSCP2/ECN report what arrived (10, ECT(1)), RFC 8972 §4.4.
    let cos = requests("stamp-open-tlvs-rfc8972");
    for req in &cos {
        peer.send(local, req);
        let r = peer.recv();
        assert_eq!(r.tos, Some(46 << 2), "DSCP1 applied");
        assert_eq!(r.payload[48] >> 2, 46, "DSCP1 kept");
        assert_eq!(
            ((r.payload[48] & 3) << 4) | (r.payload[49] >> 4),
            10,
            "DSCP2"
        );
        assert_eq!((r.payload[49] >> 2) & 3, 1, "ECN");
        assert_eq!(r.payload.len(), req.len());
    }
    // A TWAMP Light probe: 41 → 41.
    for req in requests("stamp-xcheck-twampy-sender-to-stamp-suite-reflector") {
        peer.send(local, &req);
        let r = peer.recv();
        assert_eq!(r.payload.len(), 41);
        assert_eq!(&r.payload[0..4], &req[0..4]);
        assert_eq!(r.payload[40], SEND_TTL);
    }
    // 14 octets would need a 41-octet reply: not sent.
    peer.send(local, &[0u8; 14]);
    peer.expect_silence("amplifying reply");
    let c = table.listener_counters(local).unwrap();
    assert_eq!(c.dropped.get(DropReason::TooLong), 1);
    assert_eq!(c.reflected, (reqs.len() + cos.len()) as u64 + 10);
}

#[test]
fn configured_dscp_over_ipv6() {
    let mut table = table();
    let local = listener(
        &mut table,
        "[::1]:0",
        ListenerKind::Unauthenticated,
        Some(34),
    );
    let mut peer = Peer::bind("[::1]:0", SEND_TTL, 0x28);
    for req in requests("stamp-open-v6-location") {
        peer.send(local, &req);
        let r = peer.recv();
        assert_eq!(
            r.tos,
            Some(34 << 2),
            "configured DSCP, not the received one"
        );
        check_open(&req, &r.payload);
    }
}

#[test]
fn authenticated_stamp_listener() {
    let mut table = table();
    let local = listener(
        &mut table,
        "127.0.0.1:0",
        ListenerKind::StampAuthenticated {
            key: Zeroizing::new(*GOLDEN_KEY),
        },
        None,
    );
    let h = StampHmac::new(GOLDEN_KEY);
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let reqs = requests("stamp-auth-tlvs");
    for req in &reqs {
        peer.send(local, req);
        let r = peer.recv();
        let p = &r.payload;
        assert_eq!(p.len(), req.len());
        h.verify_packet(p).expect("base HMAC");
        h.verify(&[&p[0..4], &p[112..144]], &p[148..164])
            .expect("HMAC TLV");
        assert_eq!(&p[0..4], &req[0..4]);
        assert_eq!(&p[48..52], &req[0..4]);
        assert_eq!(p[80], SEND_TTL);
    }
    // A request whose base HMAC fails, and an unauthenticated one.
    let mut bad = reqs[0].clone();
    bad[20] ^= 1;
    peer.send(local, &bad);
    peer.send(local, &requests("stamp-open-ntp-stateless")[0]);
    peer.expect_silence("unauthenticated or forged");
    let c = table.listener_counters(local).unwrap();
    assert_eq!(c.dropped.get(DropReason::BadHmac), 1);
    assert_eq!(c.dropped.get(DropReason::TooShort), 1);
    assert_eq!(c.reflected, reqs.len() as u64);
}

#[test]
fn listener_add_and_remove() {
    let mut table = table();
    let local = listener(
        &mut table,
        "127.0.0.1:0",
        ListenerKind::Unauthenticated,
        None,
    );
    assert!(UdpSocket::bind(local).is_err());
    // Same port again: the bind fails.
    assert!(matches!(
        table.add_listener(ListenerSpec {
            local,
            kind: ListenerKind::Unauthenticated,
            dscp: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        }),
        Err(TableError::Address(a, _)) if a == local
    ));
    // A DSCP above 63 is refused.
    assert!(matches!(
        table.add_listener(ListenerSpec {
            local: "127.0.0.1:0".parse().unwrap(),
            kind: ListenerKind::Unauthenticated,
            dscp: Some(64),
            rate_limit_pps: 0,
            rate_burst: 0,
        }),
        Err(TableError::DataPlane(_))
    ));
    table.remove_listener(local).unwrap();
    assert!(table.listeners().is_empty());
    UdpSocket::bind(local).expect("port free after remove_listener");
    assert!(matches!(
        table.remove_listener(local),
        Err(TableError::Address(..))
    ));
    // Listeners and sessions live side by side: a session on its own port
    // is unaffected by a listener's removal (covered by the sessions tests).
    assert!(table.sessions().is_empty());
}

#[test]
fn listener_rate_limit() {
    let mut table = table();
    table
        .add_listener(ListenerSpec {
            local: "127.0.0.1:0".parse().unwrap(),
            kind: ListenerKind::Unauthenticated,
            dscp: None,
            rate_limit_pps: 1,
            rate_burst: 2,
        })
        .unwrap();
    let local = table.listeners()[0];
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let req = &requests("stamp-open-ntp-stateless")[0];
    let t0 = std::time::Instant::now();
    for _ in 0..6 {
        peer.send(local, req);
    }
    let mut n = 0;
    while peer.recv_within(QUIET).is_some() {
        n += 1;
    }
    let slack = t0.elapsed().as_secs() as usize;
    assert!((2..=2 + slack).contains(&n), "{n} replies");
    let c = table.listener_counters(local).unwrap();
    assert_eq!(c.dropped.get(DropReason::RateLimited), 6 - n as u64);
}

/// twampy's TWAMP-Light requests with 64 zero padding octets (78 octets):
/// the listener answers with the padding unchanged after the STAMP base —
/// zeros are padding, not Reserved-type TLVs (no U every 4 octets).
#[test]
fn twampy_padding_comes_back_unchanged() {
    let mut table = table();
    let local = listener(
        &mut table,
        "127.0.0.1:0",
        ListenerKind::Unauthenticated,
        None,
    );
    let mut peer = Peer::bind("127.0.0.1:0", SEND_TTL, 0);
    let json = decoded_json(
        "twampy-1.3.2",
        "twamp-light-v4-pad64-tos184-both.decoded.json",
    );
    let reqs: Vec<Vec<u8>> = json["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["direction"] == "sender->reflector")
        .map(|p| unhex(p["payload_hex"].as_str().unwrap()))
        .collect();
    assert_eq!(reqs.len(), 10);
    for req in &reqs {
        assert_eq!(req.len(), 78);
        peer.send(local, req);
        let r = peer.recv();
        assert_eq!(r.payload.len(), 78);
        assert_eq!(&r.payload[24..38], &req[0..14]);
        assert_eq!(r.payload[40], SEND_TTL);
        assert!(r.payload[44..].iter().all(|&b| b == 0), "padding unchanged");
    }
    table.shutdown().unwrap();
}
