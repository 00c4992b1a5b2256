//! Stateful STAMP sessions through `SocketSessionTable` on loopback: two
//! sessions on one port told apart by SSID (RFC 8972 §3), own Sequence
//! Numbers from 0, a packet of no session discarded, the Class of Service
//! TLV's DSCP1 on the reply's IP header (RFC 8972 §4.4), Location filled
//! from the real addresses, Follow-Up Telemetry carrying the kernel's
//! software transmit stamp of the previous reply (SO_TIMESTAMPING on the
//! error queue; loopback delivers them), and removal.

mod socket_table_support;

use std::net::{SocketAddr, UdpSocket};

use ricochet_protocol::time::TimeFormat;
use ricochet_reflector::session_table::{SessionTable, StampSessionSpec};
use ricochet_reflector::stamp_engine::CosPolicy;
use socket_table_support::*;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spec(sender: SocketAddr, port: u16, ssid: u16) -> StampSessionSpec {
    StampSessionSpec {
        sender,
        local: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        ssid,
        key: None,
        timestamp_format: TimeFormat::Ntp,
        dscp: None,
        cos_policy: CosPolicy::ALLOW_ALL,
        micro_session_id: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

fn tlv(flags: u8, ty: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, ty];
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn request(seq: u32, ssid: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 44];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[4..12].copy_from_slice(&ntp_now());
    p[12..14].copy_from_slice(&[0, 1]);
    p[14..16].copy_from_slice(&ssid.to_be_bytes());
    p.extend_from_slice(tlvs);
    p
}

#[test]
fn stateful_sessions_on_one_port() {
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", 64, 0);
    let port = free_port();
    table.add_stamp_session(spec(peer.addr(), port, 7)).unwrap();
    table.add_stamp_session(spec(peer.addr(), port, 8)).unwrap();
    assert!(
        table.add_stamp_session(spec(peer.addr(), port, 7)).is_err(),
        "the same SSID and sender twice"
    );
    let to = table.stamp_local_addr(port).unwrap();

    let mut loc = vec![0, 0, 0, 0];
    loc.extend(tlv(0x80, 4, &[0; 16]));
    let mut area = tlv(0x80, 4, &[46 << 2, 0, 0, 0]); // CoS: DSCP1 EF
    area.extend(tlv(0x80, 2, &loc)); // Location
    area.extend(tlv(0x80, 7, &[0; 16])); // Follow-Up Telemetry
                                         // Per SSID: (in-packet T3, time the reply was received) of the last reply.
    let mut last: [Option<(u64, u64)>; 2] = [None, None];
    let mut diffs = Vec::new();
    for i in 0..3u32 {
        for (j, ssid) in [7u16, 8].into_iter().enumerate() {
            let req = request(1000 + i, ssid, &area);
            peer.send(to, &req);
            let r = peer.recv();
            let received = ricochet_reflector::clock::now_utc_ns();
            assert_eq!(r.payload.len(), req.len());
            assert_eq!(be32(&r.payload, 0), i, "SSID {ssid}: own counter from 0");
            assert_eq!(be32(&r.payload, 24), 1000 + i);
            assert_eq!(be16(&r.payload, 14), ssid);
            // DSCP1 applied to the reply (ECN Not-ECT).
            assert_eq!(r.tos, Some(46 << 2), "reply TOS");
            // CoS: DSCP2 = received 0, RP 0.
            assert_eq!(r.payload[48..52], [46 << 2, 0, 0, 0]);
            // Location: our port, the sender's port, destination 127.0.0.1.
            assert_eq!(be16(&r.payload, 56), port);
            assert_eq!(be16(&r.payload, 58), peer.addr().port());
            assert_eq!(r.payload[60..68], [0, 5, 0, 16, 127, 0, 0, 1]);
            // Follow-Up: the previous reply's Sequence Number and the
            // kernel's software transmit stamp of it (mode 2), which lies
            // between its in-packet T3 and its arrival here.
            let fu = &r.payload[84..100];
            match last[j] {
                None => assert!(fu.iter().all(|&b| b == 0), "first reply"),
                Some((t3, got)) => {
                    assert_eq!(fu[0..4], (i - 1).to_be_bytes());
                    assert_eq!(fu[12], 2, "software local");
                    let tx = ntp_ns(&fu[4..12]);
                    assert!(
                        t3 <= tx && tx <= got,
                        "T3 {t3} <= TX {tx} <= received {got}"
                    );
                    diffs.push(tx - t3);
                }
            }
            last[j] = Some((ntp_ns(&r.payload[4..12]), received));
        }
    }
    eprintln!("socket path, loopback: Follow-Up T3 - in-packet T3 (ns): {diffs:?}");
    // No session with SSID 9: discarded and counted.
    peer.send(to, &request(0, 9, &[]));
    peer.expect_silence("SSID of no session");
    assert_eq!(table.stamp_unmatched(port), Some(1));
    let id = spec(peer.addr(), port, 7).id();
    let c = table.stamp_session(&id, |e| e.stamp_counters()).unwrap();
    assert_eq!((c.follow_up_unstamped, c.follow_up_stamped), (0, 2));
    assert_eq!(table.stamp_activity(&id).unwrap().reflected, 3);
    // Removing one keeps the other.
    table.remove_stamp_session(&id).unwrap();
    peer.send(to, &request(5, 7, &[]));
    peer.expect_silence("removed session");
    peer.send(to, &request(5, 8, &[]));
    assert_eq!(be32(&peer.recv().payload, 0), 3);
    table
        .remove_stamp_session(&spec(peer.addr(), port, 8).id())
        .unwrap();
    assert!(table.stamp_local_addr(port).is_none());
    table.shutdown().unwrap();
}

/// On the socket path: a Return Path "No Reply Requested" (RFC 9503
/// §4.1.1) gets no datagram back and is counted; Direct Measurement's
/// R_RxC (RFC 8972 §4.5) counts it and the packets the rate limit refused,
/// R_TxC only the replies sent.
#[test]
fn no_reply_and_refused_packets_in_direct_measurement() {
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", 64, 0);
    let port = free_port();
    let mut s = spec(peer.addr(), port, 21);
    // One reply per second, burst 1: the request sent right after the
    // first reply is refused.
    s.rate_limit_pps = 1;
    s.rate_burst = 1;
    table.add_stamp_session(s.clone()).unwrap();
    let to = table.stamp_local_addr(port).unwrap();
    let dm = tlv(0x80, 5, &[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
    let no_reply = tlv(0x80, 10, &tlv(0, 1, &[0, 0, 0, 0]));

    // No reply requested: silence (the bucket is full, so the silence is
    // the Return Path's doing), counted.
    let mut area = dm.clone();
    area.extend_from_slice(&no_reply);
    peer.send(to, &request(0, 21, &area));
    peer.expect_silence("no reply requested");
    let id = s.id();
    eventually("no-reply counted", || {
        table.stamp_activity(&id).unwrap().drops.no_reply == 1
    });
    // Reflected: R_RxC 2 (the no-reply packet counted), R_TxC 1; own
    // Sequence Number 0 (the no-reply packet was not reflected).
    peer.send(to, &request(1, 21, &dm));
    let r = peer.recv();
    assert_eq!(be32(&r.payload, 0), 0);
    assert_eq!(r.payload[48..60], [0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 1]);
    // Right after: refused by the bucket, still received.
    peer.send(to, &request(2, 21, &dm));
    peer.expect_silence("rate limited");
    eventually("rate limit counted", || {
        table.stamp_activity(&id).unwrap().drops.rate_limited == 1
    });
    let a = table.stamp_activity(&id).unwrap();
    assert_eq!((a.reflected, a.drops.no_reply), (1, 1));
    assert_eq!(table.stamp_session(&id, |e| e.received()), Some(3));
    table.shutdown().unwrap();
}

/// Back-to-back requests of one session (bursts of 4, sent without
/// waiting, so that several land in one receive batch): every reply's
/// Follow-Up Telemetry carries the previous reply's Sequence Number and
/// the kernel's software transmit stamp of it — a packet whose session was
/// answered earlier in the same batch waits for a later pass over the
/// batch (at most 4), after that reply was sent and its stamp read (issue
/// 8 gap 6; loopback delivers software TX stamps before sendmmsg returns).
#[test]
fn back_to_back_requests_get_stamped_follow_ups() {
    let mut table = table();
    let mut peer = Peer::bind("127.0.0.1:0", 64, 0);
    let port = free_port();
    let s = spec(peer.addr(), port, 33);
    table.add_stamp_session(s.clone()).unwrap();
    let to = table.stamp_local_addr(port).unwrap();
    let fut = tlv(0x80, 7, &[0; 16]);
    let mut seq = 0u32;
    let mut last_t3: Option<u64> = None;
    for _round in 0..10 {
        for k in 0..4 {
            peer.send(to, &request(seq + k, 33, &fut));
        }
        for _ in 0..4 {
            let r = peer.recv();
            assert_eq!(be32(&r.payload, 0), seq, "replies in order");
            let fu = &r.payload[48..64];
            match last_t3 {
                None => assert!(fu.iter().all(|&b| b == 0)),
                Some(t3) => {
                    assert_eq!(fu[0..4], (seq - 1).to_be_bytes(), "previous reply");
                    assert_eq!(fu[12], 2, "software local stamp, reply {seq}");
                    let tx = ntp_ns(&fu[4..12]);
                    assert!(t3 <= tx, "T3 {t3} <= TX {tx}");
                }
            }
            last_t3 = Some(ntp_ns(&r.payload[4..12]));
            seq += 1;
        }
    }
    let id = s.id();
    let c = table.stamp_session(&id, |e| e.stamp_counters()).unwrap();
    assert_eq!((c.follow_up_stamped, c.follow_up_unstamped), (39, 0));
    eprintln!(
        "socket path: {} deferrals to a later pass over 40 back-to-back requests",
        table.loop_stats().deferred
    );
    table.shutdown().unwrap();
}
