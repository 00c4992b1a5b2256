//! `ricochet-ping --stamp` over loopback:
//!
//! * against the reflector crate's socket data plane (a `SocketSessionTable`
//!   listener, in process), unauthenticated and authenticated, with TLVs;
//! * against an in-test stateful reflector built from the protocol crate's
//!   `reflect_stamp` that fills Follow-Up Telemetry with a known offset,
//!   drops chosen packets in either direction, and sends bad replies (wrong
//!   HMAC, wrong SSID, truncated, unknown sequence, bad HMAC TLV, foreign
//!   source): every one counted by reason, none crashing the sender.
//!
//! The expected values come from what the test reflector was told to do,
//! and from the RFC 8762 / 8972 layouts (stamp.md), never from the client.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser;
use ricochet_bench::ping::cli::Args;
use ricochet_bench::ping::stamp::{run_stamp, stamp_config, StampReport};
use ricochet_protocol::crypto::StampHmac;
use ricochet_protocol::stamp::tlv::{tlv_type, FLAG_U};
use ricochet_protocol::stamp::{
    reflect_stamp, set_t3, ReflectorMode, StampFormat, StampLayout, TlvIter,
};
use ricochet_protocol::time::{ErrorEstimate, NtpTimestamp, TimeFormat};
use ricochet_protocol::twamp_test::{ReflectParams, RxMeta};
use ricochet_reflector::clock::now_utc_ns;
use ricochet_reflector::engine::DropReason;
use ricochet_reflector::session_table::{
    ListenerKind, ListenerSpec, SessionTable, StampSessionId, StampSessionSpec,
};
use ricochet_reflector::socket::{SocketSessionTable, TableConfig};
use ricochet_reflector::stamp_engine::CosPolicy;
use zeroize::Zeroizing;

const KEY: &[u8; 32] = b"stamp-golden-hmac-key-0123456789";
const KEY_HEX: &str = "7374616d702d676f6c64656e2d686d61632d6b65792d30313233343536373839";

fn key_file(name: &str, hex: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ricochet-stamp-lo-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn run(target: SocketAddr, extra: &[&str]) -> StampReport {
    let t = target.to_string();
    let mut argv = vec![
        "ricochet-ping",
        "--stamp",
        "-i",
        "1ms",
        "--timeout",
        "300ms",
        "-v",
    ];
    argv.extend_from_slice(extra);
    argv.push(&t);
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let (cfg, _) = stamp_config(&args).unwrap();
    run_stamp(&cfg, &AtomicBool::new(false)).unwrap()
}

fn listener(table: &mut SocketSessionTable, kind: ListenerKind) -> SocketAddr {
    let before = table.listeners();
    table
        .add_listener(ListenerSpec {
            local: "127.0.0.1:0".parse().unwrap(),
            kind,
            dscp: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    let mut now = table.listeners();
    now.retain(|a| !before.contains(a));
    now[0]
}

fn table() -> SocketSessionTable {
    SocketSessionTable::spawn(&TableConfig {
        housekeeping: Duration::from_millis(20),
        ..TableConfig::default()
    })
    .unwrap()
}

/// Causal order on one host clock, full round trip, symmetric sizes.
fn check_packets(r: &StampReport) {
    assert_eq!(
        r.packets.len() as u64,
        r.summary.received + r.summary.duplicates
    );
    for p in &r.packets {
        assert!(p.t1_ns <= p.t2_ns + 2, "{p:?}");
        assert!(p.t2_ns <= p.t3_ns + 2, "{p:?}");
        assert!(p.t3_ns <= p.t4_ns + 2, "{p:?}");
        assert_eq!(p.sender_ttl, 255, "we send with TTL 255");
        assert_eq!(p.reply_len, r.packet_len, "reply as long as the request");
    }
}

fn tlv<'a>(r: &'a StampReport, name: &str) -> &'a ricochet_bench::ping::stamp::TlvTypeReport {
    r.tlv_types
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", r.tlv_types))
}

#[test]
fn stateless_listener_unauthenticated_with_tlvs() {
    let mut t = table();
    let addr = listener(&mut t, ListenerKind::Unauthenticated);
    let r = run(
        addr,
        &[
            "-c",
            "20",
            "--ssid",
            "7",
            "--tlv",
            "extra-padding=16",
            "--tlv",
            "follow-up",
            "--tlv",
            "timestamp-info",
            "--tlv",
            "raw=200:0102",
        ],
    );
    // 44 + (4+16) + (4+16) + (4+4) + (4+2), stamp.md §2.1 / §4.
    assert_eq!(r.packet_len, 98);
    assert_eq!(r.mode, "unauthenticated");
    assert_eq!(
        (r.summary.sent, r.summary.received, r.summary.lost),
        (20, 20, 0)
    );
    assert_eq!(r.anomalies, Default::default(), "{:?}", r.anomalies);
    check_packets(&r);
    // Stateless: the reflector's numbers are ours, no loss split.
    assert!(r.packets.iter().all(|p| p.reflector_seq == p.sender_seq));
    assert!(r.reflector_mode.starts_with("stateless"));
    assert_eq!(r.summary.lost_forward, None);
    // Every TLV is accounted for in every reply.
    for ty in &r.tlv_types {
        assert_eq!(ty.recognized + ty.unrecognized, 20, "{ty:?}");
    }
    assert_eq!(tlv(&r, "extra-padding").recognized, 20);
    assert_eq!(tlv(&r, "other").unrecognized, 20, "type 200 is unassigned");
    assert!(r.packets.iter().all(|p| p.unrecognized_tlvs.contains(&200)));
    // RFC 8972 §4.7: a stateless reflector zeroes Follow-Up Telemetry.
    let f = r.follow_up.as_ref().unwrap();
    if tlv(&r, "follow-up").recognized > 0 {
        assert_eq!(f.zeroed, f.replies);
        assert_eq!(f.paired, 0);
    }
    assert_eq!(t.listener_counters(addr).unwrap().reflected, 20);
}

#[test]
fn stateless_listener_authenticated() {
    let mut t = table();
    let addr = listener(
        &mut t,
        ListenerKind::StampAuthenticated {
            key: Zeroizing::new(*KEY),
        },
    );
    let good = key_file("good.key", KEY_HEX);
    let r = run(
        addr,
        &[
            "-c",
            "10",
            "--ssid",
            "9",
            "--stamp-key-file",
            good.to_str().unwrap(),
            "--tlv",
            "direct-measurement",
            "--tlv",
            "extra-padding=8",
        ],
    );
    assert_eq!(r.mode, "authenticated");
    // 112 + Direct Measurement (16) + HMAC TLV (20, added: RFC 8972 §4.8) + padding (12).
    assert_eq!(r.packet_len, 112 + 16 + 20 + 12);
    assert_eq!(r.tlvs, vec!["direct-measurement", "hmac", "extra-padding"]);
    assert_eq!((r.summary.received, r.summary.lost), (10, 0));
    assert_eq!(r.anomalies, Default::default(), "{:?}", r.anomalies);
    check_packets(&r);
    // The HMAC TLV came back verified over the reflector's Sequence Number.
    assert_eq!(tlv(&r, "hmac").recognized, 10);

    // A wrong key: the reflector drops every request (RFC 8762 §4.4).
    let wrong = key_file("wrong.key", &"77".repeat(32));
    let r = run(
        addr,
        &["-c", "5", "--stamp-key-file", wrong.to_str().unwrap()],
    );
    assert_eq!(r.summary.received, 0);
    assert_eq!(r.exit_status(), 1);
    assert_eq!(
        t.listener_counters(addr)
            .unwrap()
            .dropped
            .get(DropReason::BadHmac),
        5
    );
}

/// What the test reflector does with a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Good,
    /// Never "arrives": the reflector's counter does not move.
    DropForward,
    /// Reflected (counted) but the reply is lost.
    DropBackward,
    BadHmac,
    WrongSsid,
    Truncate,
    UnknownSeq,
    BadTlvHmac,
    /// A datagram of random octets and random length from the reflector's
    /// address first, then the good reply.
    GarbageFirst,
}

/// Follow-Up Timestamp = previous T3 + this (ns).
const FOLLOW_UP_LATE_NS: u64 = 1234;

struct Fake {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ntp(ns: u64) -> [u8; 8] {
    NtpTimestamp::from_utc_ns(ns).to_bytes()
}

/// A stateful authenticated-or-not STAMP reflector whose replies follow
/// `act(sender_seq)`; it fills Follow-Up Telemetry (previous reflected
/// packet, T3 + [`FOLLOW_UP_LATE_NS`], mode 1) and Timestamp Information
/// (PTP / hardware assist in, NTP / software local out), clears U on them,
/// and recomputes the HMAC TLV over its own Sequence Number.
fn fake(layout: StampLayout, act: fn(u32) -> Act, foreign_at: u32) -> Fake {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let hmac = StampHmac::new(KEY);
        let fmt = StampFormat {
            layout,
            mode: ReflectorMode::Stateful,
            timestamp_format: TimeFormat::Ntp,
        };
        let base = layout.base_len();
        let mut rseq = 0u32;
        let mut prev: Option<(u32, u64)> = None;
        let mut buf = [0u8; 4096];
        let mut out = [0u8; 4096];
        while !s2.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let rx = &buf[..n];
            let sseq = u32::from_be_bytes(rx[0..4].try_into().unwrap());
            let a = act(sseq);
            if sseq == foreign_at {
                let other = UdpSocket::bind("127.0.0.1:0").unwrap();
                other.send_to(&[0u8; 60], from).unwrap();
            }
            if a == Act::DropForward {
                continue;
            }
            if a == Act::GarbageFirst {
                // Deterministic per sequence number (xorshift).
                let mut x = u64::from(sseq).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let len = (next() % 300) as usize;
                let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                sock.send_to(&junk, from).unwrap();
            }
            let params = ReflectParams {
                seq: rseq,
                t2: ntp(now_utc_ns()),
                error_estimate: ErrorEstimate::from_error_ns(false, TimeFormat::Ntp, 1000),
                max_len: 4096,
            };
            let len =
                // std sockets cannot read the TTL; loopback has no hop, so 255 as sent.
                reflect_stamp(&fmt, rx, &RxMeta { ttl: 255, tos: 0 }, &params, &mut out).unwrap();
            let t3 = now_utc_ns();
            let (head, area) = out[..len].split_at_mut(base);
            let mut pos = 0;
            let mut hmac_at = None;
            let mut spans = Vec::new();
            for t in TlvIter::new(area).map_while(Result::ok) {
                spans.push((pos, t.tlv_type(), t.total_len()));
                pos += t.total_len();
            }
            for (at, ty, _) in spans {
                let v = at + 4;
                match ty {
                    tlv_type::FOLLOW_UP_TELEMETRY => {
                        if let Some((ps, pt3)) = prev {
                            area[v..v + 4].copy_from_slice(&ps.to_be_bytes());
                            area[v + 4..v + 12].copy_from_slice(&ntp(pt3 + FOLLOW_UP_LATE_NS));
                            area[v + 12] = 1;
                        }
                    }
                    tlv_type::TIMESTAMP_INFORMATION => {
                        area[v..v + 4].copy_from_slice(&[2, 1, 1, 2]);
                    }
                    tlv_type::HMAC => hmac_at = Some(at),
                    _ => {}
                }
                area[at] &= !FLAG_U;
            }
            set_t3(head, &fmt, ntp(t3)).unwrap();
            if a == Act::WrongSsid {
                let s = fmt.layout.ssid_offset();
                head[s] ^= 0x40;
            }
            if a == Act::UnknownSeq {
                // Session-Sender Sequence Number: 24 (open) / 48 (auth).
                let at = if layout == StampLayout::Authenticated {
                    48
                } else {
                    24
                };
                head[at..at + 4].copy_from_slice(&1_000_000u32.to_be_bytes());
            }
            if let Some(at) = hmac_at {
                let tag = hmac.compute(&[&head[..4], &area[..at]]);
                area[at + 4..at + 20].copy_from_slice(&tag);
                if a == Act::BadTlvHmac {
                    area[at + 4] ^= 1;
                }
            }
            if layout == StampLayout::Authenticated {
                hmac.seal_packet(head).unwrap();
                if a == Act::BadHmac {
                    head[100] ^= 0x80;
                }
            }
            prev = Some((rseq, t3));
            rseq += 1;
            let send = match a {
                Act::DropBackward => continue,
                Act::Truncate => base - 1,
                _ => len,
            };
            sock.send_to(&out[..send], from).unwrap();
        }
    });
    Fake {
        addr,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn stateful_follow_up_pairs_and_loss_by_direction() {
    fn act(seq: u32) -> Act {
        match seq {
            5 | 17 => Act::DropForward,
            9 | 22 => Act::DropBackward,
            _ => Act::Good,
        }
    }
    let f = fake(StampLayout::Unauthenticated, act, u32::MAX);
    let r = run(
        f.addr,
        &[
            "-c",
            "30",
            "--ssid",
            "4660",
            "--tlv",
            "follow-up",
            "--tlv",
            "timestamp-info",
        ],
    );
    let s = &r.summary;
    assert_eq!((s.sent, s.received, s.lost), (30, 26, 4));
    assert_eq!(s.lost_forward, Some(2));
    assert_eq!(s.lost_backward, Some(2));
    assert_eq!(r.reflector_mode, "stateful");
    assert_eq!(r.anomalies, Default::default(), "{:?}", r.anomalies);
    let fu = r.follow_up.as_ref().unwrap();
    assert_eq!(fu.replies, 26);
    assert_eq!(fu.zeroed, 1, "the first reply has no previous packet");
    // The Follow-Ups after the two backward-lost replies speak of packets we
    // never received.
    assert_eq!(fu.paired, 23);
    assert_eq!(fu.unpaired, 2);
    assert_eq!(fu.not_previous, 0);
    assert_eq!(fu.modes, vec![(1, "hardware assist", 25)]);
    // NTP fractions round to ±1 ns each way.
    let d = &fu.followup_minus_t3;
    assert_eq!(d.count, 23);
    assert!((d.min_ns - FOLLOW_UP_LATE_NS as i64).abs() <= 2, "{d:?}");
    assert!((d.max_ns - FOLLOW_UP_LATE_NS as i64).abs() <= 2, "{d:?}");
    // Per packet: the T3 a later reply reported for this one.
    let paired: Vec<_> = r
        .packets
        .iter()
        .filter(|p| p.followup_t3_ns.is_some())
        .collect();
    assert_eq!(paired.len(), 23);
    for p in paired {
        let diff = p.followup_minus_t3_ns.unwrap();
        assert!((diff - FOLLOW_UP_LATE_NS as i64).abs() <= 2, "{p:?}");
        assert_eq!(p.followup_t3_ns.unwrap() as i64 - p.t3_ns as i64, diff);
    }
    // The last reflected reply (seq 29) has no successor.
    let last = r.packets.iter().find(|p| p.sender_seq == 29).unwrap();
    assert_eq!(last.followup_t3_ns, None);
    // Timestamp Information as filled.
    assert_eq!(r.timestamp_info.len(), 1);
    let ti = &r.timestamp_info[0];
    assert_eq!(
        (
            ti.sync_in,
            ti.method_in,
            ti.sync_out,
            ti.method_out,
            ti.replies
        ),
        (2, 1, 1, 2, 26)
    );
    assert_eq!(
        ti.meaning,
        "T2 PTP / hardware assist, T3 NTP / software local"
    );
    // Raw output: one line per reply and per lost packet, Follow-Up columns.
    let raw = ricochet_bench::ping::stamp::report::raw(&r);
    let lines: Vec<&str> = raw.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 30);
    let l3: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("3 "))
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(l3.len(), 17);
    assert!((l3[10].parse::<i64>().unwrap() - 1234).abs() <= 2, "{l3:?}");
    assert_eq!(
        &l3[11..15],
        ["PTP", "hardware_assist", "NTP", "software_local"]
    );
}

#[test]
fn bad_replies_are_counted_not_used() {
    fn act(seq: u32) -> Act {
        [
            Act::Good,
            Act::BadHmac,
            Act::WrongSsid,
            Act::Truncate,
            Act::UnknownSeq,
            Act::BadTlvHmac,
        ][(seq % 6) as usize]
    }
    let f = fake(StampLayout::Authenticated, act, 0);
    let k = key_file("fake.key", KEY_HEX);
    let r = run(
        f.addr,
        &[
            "-c",
            "24",
            "--ssid",
            "77",
            "--stamp-key-file",
            k.to_str().unwrap(),
            "--tlv",
            "timestamp-info",
            "--tlv",
            "hmac",
        ],
    );
    let a = &r.anomalies;
    assert_eq!(a.bad_hmac, 4);
    assert_eq!(a.wrong_ssid, 4);
    assert_eq!(a.truncated, 4);
    assert_eq!(a.unknown_sequence, 4);
    assert_eq!(a.bad_tlv_hmac, 4);
    assert_eq!(a.foreign, 1);
    // Good and bad-TLV-HMAC replies are used for timing; the latter's TLVs not.
    assert_eq!(r.summary.received, 8);
    assert_eq!(r.summary.lost, 16);
    assert_eq!(r.timestamp_info.iter().map(|t| t.replies).sum::<u64>(), 4);
    check_packets(&r);
}

/// A free UDP port on 127.0.0.1 (bound and released; the tests that use it
/// bind it again right away).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stamp_session(
    table: &mut SocketSessionTable,
    sender_port: u16,
    ssid: u16,
    key: Option<&[u8]>,
) -> SocketAddr {
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    table
        .add_stamp_session(StampSessionSpec {
            sender: format!("127.0.0.1:{sender_port}").parse().unwrap(),
            local,
            ssid,
            key: key.map(|k| Zeroizing::new(k.to_vec())),
            timestamp_format: TimeFormat::Ntp,
            dscp: None,
            cos_policy: CosPolicy::ALLOW_ALL,
            micro_session_id: Some(9),
            rate_limit_pps: 0,
            rate_burst: 0,
        })
        .unwrap();
    local
}

#[test]
fn stateful_socket_session_with_every_tlv() {
    let mut t = table();
    let sport = free_port();
    let addr = stamp_session(&mut t, sport, 0x1234, None);
    let sp = sport.to_string();
    let r = run(
        addr,
        &[
            "-c",
            "20",
            "--sender-port",
            &sp,
            "--ssid",
            "4660",
            "--tlv",
            "follow-up",
            "--tlv",
            "timestamp-info",
            "--tlv",
            "cos=AF11",
            "--tlv",
            "direct-measurement",
            "--tlv",
            "location",
            "--tlv",
            "micro-session=5",
            "--tlv",
            "extra-padding=8",
        ],
    );
    assert_eq!((r.summary.received, r.summary.lost), (20, 0));
    assert_eq!(r.anomalies, Default::default(), "{:?}", r.anomalies);
    check_packets(&r);
    assert_eq!(
        r.reflector_mode, "stateful",
        "Follow-Up names earlier packets"
    );
    assert_eq!(r.summary.lost_forward, Some(0));
    for ty in &r.tlv_types {
        assert_eq!((ty.recognized, ty.unrecognized), (20, 0), "{ty:?}");
    }
    // Follow-Up: the first reply has no predecessor (zero); every later one
    // names the previous reply, with its SO_TIMESTAMPING transmit stamp when
    // the kernel delivered it in time (else Timestamp 0). A stamp is never
    // earlier than the T3 written into that reply.
    let f = r.follow_up.as_ref().unwrap();
    assert_eq!(f.replies, 20);
    assert!(f.zeroed >= 1, "{f:?}");
    assert_eq!(f.zeroed + f.unstamped + f.paired + f.unpaired, 20, "{f:?}");
    assert_eq!((f.not_previous, f.unpaired), (0, 0), "{f:?}");
    if f.paired > 0 {
        assert!(f.followup_minus_t3.min_ns >= 0, "{f:?}");
    }
    // Timestamp Information: one source for In and Out, from the registries.
    assert_eq!(r.timestamp_info.len(), 1, "{:?}", r.timestamp_info);
    let ti = &r.timestamp_info[0];
    assert_eq!(ti.sync_in, ti.sync_out);
    assert!(
        (1..=5).contains(&ti.sync_in) && (1..=3).contains(&ti.method_in),
        "{ti:?}"
    );
    assert!((1..=3).contains(&ti.method_out), "{ti:?}");
    if !t.clock().synchronized {
        assert_eq!(ti.sync_in, 5, "an unsynchronized clock is free-running");
    }
    // CoS: DSCP1 = AF11 (10) applied to the replies; we sent DSCP 0 ECN 0.
    let c = r.cos.as_ref().unwrap();
    assert_eq!((c.replies, c.rp_set, c.dscp1_not_applied), (20, 0, 0));
    assert_eq!((c.last_dscp2, c.last_ecn), (Some(0), Some(0)));
    assert_eq!(r.backward_tos, vec![(10 << 2, 20)]);
    // Direct Measurement: S_TxC echoed; R_RxC counts this request. RFC 8972
    // §4.5 does not say whether R_TxC counts the reply that carries it:
    // 19 (replies before it) or 20 are both readings of the text.
    let d = r.direct_measurement.as_ref().unwrap();
    assert_eq!((d.s_txc_mismatch, d.last_s_txc, d.last_r_rxc), (0, 20, 20));
    assert!((19..=20).contains(&d.last_r_txc), "{d:?}");
    // Location: our packet's ports and addresses as the reflector saw them.
    let l = r.location.as_ref().unwrap();
    assert_eq!((l.dst_port, l.src_port), (addr.port(), sport));
    assert_eq!(l.dst_ip, Some(addr.ip()));
    assert_eq!(l.src_ip, Some(addr.ip()));
    assert_eq!(r.location_mismatch, 0);
    assert_eq!(r.micro_session, Some((5, 9)));
    let id = StampSessionId {
        local_port: addr.port(),
        sender: format!("127.0.0.1:{sport}").parse().unwrap(),
        ssid: 0x1234,
    };
    let reflected = t.stamp_session(&id, |e| e.activity(std::time::Instant::now()).reflected);
    assert_eq!(reflected, Some(20));
    assert_eq!(t.stamp_activity(&id).map(|a| a.reflected), Some(20));

    // Another SSID from the same sender: discarded (RFC 8972 §3).
    let r = run(addr, &["-c", "5", "--sender-port", &sp, "--ssid", "4661"]);
    assert_eq!(r.summary.received, 0);
    assert_eq!(t.stamp_unmatched(addr.port()), Some(5));
}

#[test]
fn stateful_socket_session_authenticated() {
    let mut t = table();
    let sport = free_port();
    let addr = stamp_session(&mut t, sport, 7, Some(KEY));
    let sp = sport.to_string();
    let k = key_file("stateful.key", KEY_HEX);
    let r = run(
        addr,
        &[
            "-c",
            "10",
            "--sender-port",
            &sp,
            "--ssid",
            "7",
            "--stamp-key-file",
            k.to_str().unwrap(),
            "--tlv",
            "follow-up",
            "--tlv",
            "timestamp-info",
        ],
    );
    assert_eq!(r.mode, "authenticated");
    assert_eq!((r.summary.received, r.summary.lost), (10, 0));
    assert_eq!(r.anomalies, Default::default(), "{:?}", r.anomalies);
    assert_eq!(
        tlv(&r, "hmac").recognized,
        10,
        "fresh HMAC TLV over the reply"
    );
    let f = r.follow_up.as_ref().unwrap();
    assert_eq!(f.replies, 10);
    assert_eq!(f.not_previous, 0);
}

#[test]
fn random_datagrams_from_the_reflector_never_hurt() {
    fn act(seq: u32) -> Act {
        if seq % 2 == 0 {
            Act::GarbageFirst
        } else {
            Act::Good
        }
    }
    let f = fake(StampLayout::Unauthenticated, act, u32::MAX);
    let r = run(
        f.addr,
        &[
            "-c",
            "40",
            "--ssid",
            "99",
            "--tlv",
            "follow-up",
            "--tlv",
            "timestamp-info",
        ],
    );
    // Every request got its good reply; each of the 20 random datagrams was
    // refused for one reason (too short, wrong SSID, unknown sequence).
    assert_eq!((r.summary.received, r.summary.lost), (40, 0));
    let a = &r.anomalies;
    assert_eq!(a.truncated + a.wrong_ssid + a.unknown_sequence, 20, "{a:?}");
    assert_eq!(a.bad_hmac + a.foreign + a.length_mismatch, 0, "{a:?}");
    assert_eq!(r.follow_up.as_ref().unwrap().paired, 39);
}

#[test]
fn ipv6_stateful_session_with_location() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("::1 unavailable: skipped");
        return;
    }
    let mut t = table();
    let sport = UdpSocket::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let local: SocketAddr = format!(
        "[::1]:{}",
        UdpSocket::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    )
    .parse()
    .unwrap();
    t.add_stamp_session(StampSessionSpec {
        sender: format!("[::1]:{sport}").parse().unwrap(),
        local,
        ssid: 0x66,
        key: None,
        timestamp_format: TimeFormat::Ptp,
        dscp: None,
        cos_policy: CosPolicy::ALLOW_ALL,
        micro_session_id: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    })
    .unwrap();
    let sp = sport.to_string();
    let r = run(
        local,
        &[
            "-c",
            "10",
            "--sender-port",
            &sp,
            "--ssid",
            "102",
            "--ptp",
            "--tlv",
            "location",
        ],
    );
    assert_eq!((r.summary.received, r.summary.lost), (10, 0));
    assert_eq!(r.anomalies, Default::default(), "{:?}", r.anomalies);
    check_packets(&r);
    // The session's T2/T3 are PTPv2 (Z = 1), ours too.
    assert_eq!(r.reflector_ptp_replies, 10);
    assert_eq!(r.clock.t1_format, "PTPv2");
    // Location: the IPv6 variants (types 6 and 9) with our addresses/ports.
    let l = r.location.as_ref().unwrap();
    assert_eq!((l.dst_port, l.src_port), (local.port(), sport));
    assert_eq!(l.dst_ip, Some(local.ip()));
    assert_eq!(l.src_ip, Some(local.ip()));
}
