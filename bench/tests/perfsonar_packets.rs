//! ricochet-ping's session-sender against real perfSONAR 5.2.3 traffic
//! (shared/interop/perfsonar-5.2.3), with the per-session test keys from the
//! independent `*.decoded.json`:
//!
//! 1. every sender packet `twping` sent is rebuilt octet for octet (header,
//!    encryption and HMAC) by [`SenderPackets::build`] from its sequence
//!    number, timestamp and Error Estimate;
//! 2. every reflection `twampd` sent is opened (decrypted, HMAC verified) and
//!    decoded by [`SenderPackets::open_reply`], and the forward delay T2−T1
//!    and reflector processing time T3−T2 computed through `stats::Reply`
//!    equal what `twping -v` printed for the same packets;
//! 3. a flipped bit in a protected reflection is refused.

use std::collections::HashMap;

use ricochet_bench::ping::session::{PaddingFill, ReplyError, SenderPackets};
use ricochet_bench::stats::Reply;
use ricochet_protocol::crypto::{PacketRole, SessionKeys, TestKeys, TestProtection};
use ricochet_protocol::time::TaiOffset;
use ricochet_protocol::twamp_test::{decode_timestamp, SenderPacket, SessionFormat, TestSecurity};
use ricochet_testkit::{decoded_json, interop_file, read_pcap, unhex};

const PEER: &str = "perfsonar-5.2.3";

const SESSIONS: [&str; 8] = [
    "twamp-open-v4",
    "twamp-auth-v4",
    "twamp-enc-v4",
    "twamp-mixed-v4",
    "twamp-open-v6-port8620",
    "twamp-enc-v6-port8620",
    "twamp-open-v4-pad200-dscpEF",
    "twamp-open-v4-reqport18790",
];

fn security(mode: &str) -> TestSecurity {
    match mode {
        "authenticated" => TestSecurity::Authenticated,
        "encrypted" => TestSecurity::Encrypted,
        "open" | "mixed" => TestSecurity::Unauthenticated,
        other => panic!("mode {other}"),
    }
}

fn keys(json: &serde_json::Value) -> Option<TestKeys> {
    let tk = json.get("test_keys")?.get(0)?;
    let mut k = SessionKeys::from_bytes(&[0; 48]);
    k.aes
        .copy_from_slice(&unhex(tk["test_aes_key"].as_str().unwrap()));
    k.hmac
        .copy_from_slice(&unhex(tk["test_hmac_key"].as_str().unwrap()));
    Some(TestKeys::new(&k))
}

/// `seq_no=N fwd_delay=X ms … proc_delay=W ms` lines of `twping -v`, in ms.
fn twping_delays(name: &str) -> HashMap<u32, (f64, f64)> {
    let text = std::fs::read_to_string(interop_file(PEER, &format!("{name}.twping.txt"))).unwrap();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("seq_no=")) {
        let field = |key: &str| -> f64 {
            let at = line.find(key).unwrap() + key.len();
            line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let seq = field("seq_no=") as u32;
        out.insert(seq, (field("fwd_delay="), field("proc_delay=")));
    }
    out
}

/// Equal within what twping prints: 3 significant digits, of a difference
/// twping computes between two NTP timestamps converted to `double`
/// seconds since 1900 (about 4.0e9 s, whose double spacing is 2^-21 s =
/// 0.477 µs), so up to one such step off the exact difference we compute.
fn same_ms(ours_ns: i64, theirs_ms: f64) -> bool {
    const DOUBLE_STEP_MS: f64 = 1e3 / (1u64 << 21) as f64;
    let ours = ours_ns as f64 / 1e6;
    let unit = 10f64.powf(theirs_ms.abs().log10().floor() - 2.0);
    (ours - theirs_ms).abs() <= 0.5 * unit + DOUBLE_STEP_MS
}

#[test]
fn sender_packets_rebuilt_and_reflections_decoded_as_twping_did() {
    for name in SESSIONS {
        let json = decoded_json(PEER, &format!("{name}.decoded.json"));
        let cap = read_pcap(&interop_file(PEER, &format!("{name}.pcap")));
        let sec = security(json["mode"].as_str().unwrap());
        let format = SessionFormat::new(sec);
        // Direction from the decoded JSON (in capture order): in one capture
        // both ends use port 18790, so addresses cannot tell.
        let tests = json["test"].as_array().unwrap();
        assert_eq!(tests.len(), cap.udp.len(), "{name}");
        let is_sender = |i: usize| tests[i]["dir"] == "S->R";
        let sender_len = cap.udp[(0..tests.len()).find(|&i| is_sender(i)).unwrap()]
            .payload
            .len();
        let padding = sender_len - format.sender_header_len();
        let packets = SenderPackets::new(format, padding, PaddingFill::Zero, [0; 2], keys(&json))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mode = match sec {
            TestSecurity::Unauthenticated => None,
            TestSecurity::Authenticated => Some(TestProtection::Authenticated),
            TestSecurity::Encrypted => Some(TestProtection::Encrypted),
        };
        let delays = twping_delays(name);
        assert_eq!(delays.len(), 10, "{name}");
        let (mut rebuilt, mut opened) = (0, 0);
        for (i, d) in cap.udp.iter().enumerate() {
            if is_sender(i) {
                // Recover seq, T1 and Error Estimate from twping's packet...
                let mut plain = d.payload.clone();
                if let (Some(k), Some(m)) = (keys(&json), mode) {
                    k.unprotect(PacketRole::Sender, m, &mut plain).unwrap();
                }
                let view = SenderPacket::new_checked(&plain[..], format.layout()).unwrap();
                // ...and build it again: header, encryption and HMAC must be
                // twping's octets exactly (padding is never covered).
                let mut out = vec![0u8; sender_len];
                let n = packets
                    .build(
                        view.sequence_number(),
                        view.error_estimate_raw(),
                        &mut out,
                        || view.timestamp(),
                    )
                    .unwrap();
                assert_eq!(n, sender_len);
                let h = format.sender_header_len();
                assert_eq!(
                    hex(&out[..h]),
                    hex(&d.payload[..h]),
                    "{name} seq {}",
                    view.sequence_number()
                );
                rebuilt += 1;
            } else {
                let mut p = d.payload.clone();
                let (repr, reflected) = packets
                    .open_reply(&mut p)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(reflected, None);
                let off = TaiOffset(0);
                let t1 = decode_timestamp(repr.sender_timestamp, repr.sender_error_estimate);
                let r = Reply {
                    sender_seq: repr.sender_sequence_number,
                    reflector_seq: repr.sequence_number,
                    t1_ns: t1.to_utc_ns(off),
                    t2_ns: decode_timestamp(repr.receive_timestamp, repr.error_estimate)
                        .to_utc_ns(off),
                    t3_ns: decode_timestamp(repr.timestamp, repr.error_estimate).to_utc_ns(off),
                    t4_ns: d.ts_ns,
                    sender_error_ns: 0,
                    reflector_error_ns: 0,
                    reflector_synchronized: false,
                    sender_ttl: repr.sender_ttl,
                    reply_ttl: Some(d.ttl),
                };
                let (fwd, proc_) = delays[&r.sender_seq];
                assert!(
                    same_ms(r.forward_ns(), fwd),
                    "{name} seq {}: forward {} ns, twping {fwd} ms",
                    r.sender_seq,
                    r.forward_ns()
                );
                assert!(
                    same_ms(r.residence_ns(), proc_),
                    "{name} seq {}: residence {} ns, twping {proc_} ms",
                    r.sender_seq,
                    r.residence_ns()
                );
                // The reflector numbers its own packets from 0, in step here.
                assert_eq!(r.reflector_seq, r.sender_seq);
                assert_eq!(r.sender_ttl, 255);
                assert!(r.rtt_ns() > 0);
                opened += 1;

                // A flipped bit in the protected region is refused.
                if mode.is_some() {
                    let mut bad = d.payload.clone();
                    bad[1] ^= 0x40;
                    assert_eq!(packets.open_reply(&mut bad), Err(ReplyError::BadHmac));
                }
            }
        }
        assert_eq!((rebuilt, opened), (10, 10), "{name}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
