//! The benchmark's BPF programs under BPF_PROG_TEST_RUN (no device): the
//! generator stamps distinct sequence numbers and T1 with a valid UDP
//! checksum in every mode, and the counter counts, measures and drops only
//! the flow's replies.
//!
//! Needs root (CI runs as root); `RICOCHET_SKIP_BPF_TESTS=1` skips.

use std::net::{IpAddr, SocketAddr};

use ricochet_bench::gen::abi::{bucket_of, NONE};
use ricochet_bench::gen::bpf::{
    Programs, Role, Sender, PROG_CEILING, PROG_COUNT, PROG_GEN, XDP_DROP, XDP_PASS, XDP_TX,
};
use ricochet_bench::gen::frame::{self, Flow, ProbeMode, ReplyKind, SessionKeys, TestSession};
use ricochet_protocol::crypto::{PacketRole, TestProtection};

fn skip() -> bool {
    if std::env::var_os("RICOCHET_SKIP_BPF_TESTS").is_some() {
        eprintln!("RICOCHET_SKIP_BPF_TESTS set: skipping BPF test");
        return true;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "BPF tests need root (RICOCHET_SKIP_BPF_TESTS=1 skips)"
    );
    false
}

fn flow(v6: bool) -> Flow {
    let (s, d): (IpAddr, IpAddr) = if v6 {
        ("2001:2::1".parse().unwrap(), "2001:2::2".parse().unwrap())
    } else {
        ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap())
    };
    Flow {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: SocketAddr::new(s, 40001),
        dst: SocketAddr::new(d, 862),
    }
}

/// Independent UDP checksum check with etherparse; returns the payload.
fn udp_payload_checked(f: &[u8]) -> Vec<u8> {
    let p = etherparse::SlicedPacket::from_ethernet(f).expect("frame parses");
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("UDP")
    };
    let payload = u.payload().to_vec();
    let want = match p.net.expect("IP") {
        etherparse::NetSlice::Ipv4(ip) => u
            .to_header()
            .calc_checksum_ipv4_raw(ip.header().source(), ip.header().destination(), &payload)
            .unwrap(),
        etherparse::NetSlice::Ipv6(ip) => u
            .to_header()
            .calc_checksum_ipv6_raw(ip.header().source(), ip.header().destination(), &payload)
            .unwrap(),
    };
    assert_eq!(u.checksum(), want, "UDP checksum after the generator");
    payload
}

fn tai_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_TAI, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn generator_stamps_sequence_and_t1_with_valid_checksums() {
    if skip() {
        return;
    }
    let s = Sender::load().expect("generator and counter pass the verifier");
    for v6 in [false, true] {
        for mode in [ProbeMode::Twamp, ProbeMode::Stamp] {
            let session = TestSession::open(mode);
            for ip_len in [frame::min_ip_len(mode, v6), 512, 1500] {
                let g = frame::build(&flow(v6), &session, ip_len).unwrap();
                s.configure_generator(&g).unwrap();
                let before = s.gen_stats().unwrap();
                let mut seqs = Vec::new();
                for _ in 0..3 {
                    let t0 = tai_now_ns();
                    let (act, out) = s.programs().run_once(PROG_GEN, &g.frame).unwrap();
                    assert_eq!(act, XDP_TX, "{mode:?} v6={v6} {ip_len}");
                    assert_eq!(out.len(), g.frame.len());
                    let p = udp_payload_checked(&out);
                    seqs.push(u32::from_be_bytes(p[0..4].try_into().unwrap()));
                    // T1: NTP, UTC = TAI − offset (RFC 5905 era 0).
                    let secs = u64::from(u32::from_be_bytes(p[4..8].try_into().unwrap()));
                    let frac = u64::from(u32::from_be_bytes(p[8..12].try_into().unwrap()));
                    let utc =
                        (secs - 2_208_988_800) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32);
                    let tai = utc as i64 + i64::from(frame::host_tai_offset().0) * 1_000_000_000;
                    let d = tai - t0 as i64;
                    assert!((-1_000..50_000_000).contains(&d), "T1 {d} ns from now");
                    // Headers are the template's.
                    assert_eq!(
                        &out[..g.gen.l4_off as usize],
                        &g.frame[..g.gen.l4_off as usize]
                    );
                }
                assert_eq!(seqs[1], seqs[0] + 1);
                assert_eq!(seqs[2], seqs[1] + 1);
                let after = s.gen_stats().unwrap();
                assert_eq!(after.frames - before.frames, 3);
                assert_eq!(after.errors, 0);
            }
        }
    }
}

#[test]
fn generator_copies_protected_pool_entries() {
    if skip() {
        return;
    }
    let s = Sender::load().unwrap();
    for mode in [
        ProbeMode::TwampAuth,
        ProbeMode::TwampEnc,
        ProbeMode::StampAuth,
    ] {
        let session = TestSession::with_random_keys(mode);
        let g = frame::build(&flow(false), &session, 512).unwrap();
        s.configure_generator(&g).unwrap();
        let mut last = None;
        for _ in 0..2 {
            let (act, out) = s.programs().run_once(PROG_GEN, &g.frame).unwrap();
            assert_eq!(act, XDP_TX);
            let mut p = udp_payload_checked(&out);
            match &session.keys {
                Some(SessionKeys::Twamp(k)) => {
                    let prot = if mode == ProbeMode::TwampAuth {
                        TestProtection::Authenticated
                    } else {
                        TestProtection::Encrypted
                    };
                    k.unprotect(PacketRole::Sender, prot, &mut p)
                        .expect("reflector-side check passes");
                    if mode == ProbeMode::TwampAuth {
                        assert_ne!(&p[16..24], &[0; 8], "T1 stamped in clear");
                    }
                }
                Some(SessionKeys::Stamp(h)) => h.verify_packet(&p).expect("STAMP HMAC verifies"),
                None => unreachable!(),
            }
            let seq = u32::from_be_bytes(p[0..4].try_into().unwrap());
            if let Some(l) = last {
                assert_eq!(seq, l + 1, "{mode:?}: consecutive pool entries");
            }
            last = Some(seq);
        }
    }
}

/// A reflector-style reply: a TWAMP unauthenticated reflector packet with
/// known T2/T3, sent from the reflector's port to the generator's.
fn reply_frame(flow: &Flow, t2: [u8; 8], t3: [u8; 8], sender_seq: u32) -> Vec<u8> {
    let mut payload = vec![0u8; 41];
    payload[4..12].copy_from_slice(&t3);
    payload[12..14].copy_from_slice(&0x8001u16.to_be_bytes()); // S=1, NTP, mult 1
    payload[16..24].copy_from_slice(&t2);
    payload[24..28].copy_from_slice(&sender_seq.to_be_bytes());
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (flow.dst.ip(), flow.src.ip()) else {
        unreachable!()
    };
    let b = etherparse::PacketBuilder::ethernet2(flow.dst_mac, flow.src_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(flow.dst.port(), flow.src.port());
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn ntp(secs: u32, frac: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&secs.to_be_bytes());
    b[4..].copy_from_slice(&frac.to_be_bytes());
    b
}

#[test]
fn counter_counts_measures_and_drops_only_the_flow() {
    if skip() {
        return;
    }
    let s = Sender::load().unwrap();
    let f = flow(false);
    let session = TestSession::open(ProbeMode::Twamp);
    let cfg = frame::counter_config(&f, &session, ReplyKind::Reflector);
    s.configure_counter(&cfg).unwrap();
    let (_, res0) = s.histograms().unwrap();
    // Residence 1/4 s + 0 = 250 ms: T2 = x.0, T3 = x.25 (frac 2^30).
    let r = reply_frame(&f, ntp(3_900_000_000, 0), ntp(3_900_000_000, 1 << 30), 7);
    let (act, _) = s.programs().run_once(PROG_COUNT, &r).unwrap();
    assert_eq!(act, XDP_DROP, "the flow's replies never reach the stack");
    let st = s.cnt_stats().unwrap();
    assert_eq!(st.packets, 1);
    assert_eq!(st.bytes, r.len() as u64);
    assert_eq!(st.res_samples, 1);
    let (_, res1) = s.histograms().unwrap();
    let b = bucket_of(250_000_000);
    assert_eq!(res1[b] - res0[b], 1, "residence 250 ms in its bucket");
    // T3 < T2 is counted, not recorded.
    let r = reply_frame(&f, ntp(3_900_000_001, 0), ntp(3_900_000_000, 0), 8);
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_DROP);
    assert_eq!(s.cnt_stats().unwrap().negative, 1);
    // Other ports: passed, not counted.
    let mut other = f;
    other.src.set_port(40002);
    let r = reply_frame(&other, ntp(1, 0), ntp(1, 0), 1);
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_PASS);
    let st = s.cnt_stats().unwrap();
    assert_eq!((st.packets, st.passed), (2, 1));
    // Not IP at all: passed.
    let mut arp = vec![0u8; 60];
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(s.programs().run_once(PROG_COUNT, &arp).unwrap().0, XDP_PASS);
    // The reflector's own sequence number (octet 0): the highest seen + 1;
    // both replies so far carried 0 and nonzero T2/T3.
    let st = s.cnt_stats().unwrap();
    assert_eq!((st.rseq_top, st.zero_ts), (1, 0));
    let mut r = reply_frame(&f, ntp(1, 0), ntp(1, 5), 9);
    r[42..46].copy_from_slice(&41u32.to_be_bytes()); // the counter ignores checksums
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_DROP);
    let r = reply_frame(&f, ntp(1, 0), ntp(1, 5), 10);
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_DROP);
    assert_eq!(s.cnt_stats().unwrap().rseq_top, 42, "highest, not latest");
    // A zero T2 or T3: a reflector that did not fill it in.
    let r = reply_frame(&f, [0; 8], ntp(1, 5), 11);
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_DROP);
    let r = reply_frame(&f, ntp(1, 0), [0; 8], 12);
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_DROP);
    assert_eq!(s.cnt_stats().unwrap().zero_ts, 2);
    // Configuring the counter starts the new flow's statistics from zero.
    s.configure_counter(&cfg).unwrap();
    assert_eq!(
        s.cnt_stats().unwrap(),
        ricochet_bench::gen::abi::CntStats::default()
    );
    // A reply too short for the configured fields is counted as short.
    let mut cfg2 = cfg;
    cfg2.t2_off = 600;
    cfg2.seq_off = NONE;
    s.configure_counter(&cfg2).unwrap();
    let r = reply_frame(&f, ntp(1, 0), ntp(1, 0), 1);
    assert_eq!(s.programs().run_once(PROG_COUNT, &r).unwrap().0, XDP_DROP);
    assert!(s.cnt_stats().unwrap().short_pkts >= 1);
}

#[test]
fn round_trip_from_the_send_table() {
    if skip() {
        return;
    }
    // The generator records the send time of seq n; a reply naming n
    // (here: the echoed sender packet itself) yields an RTT sample.
    let s = Sender::load().unwrap();
    let f = flow(false);
    let session = TestSession::open(ProbeMode::Twamp);
    let g = frame::build(&f, &session, 100).unwrap();
    s.configure_generator(&g).unwrap();
    s.configure_counter(&frame::counter_config(&f, &session, ReplyKind::Echo))
        .unwrap();
    let (_, out) = s.programs().run_once(PROG_GEN, &g.frame).unwrap();
    // Turn it into its echo: the ceiling program does exactly that.
    let ceiling = Programs::load(Role::Ceiling).expect("ceiling passes the verifier");
    let (act, echo) = ceiling.run_once(PROG_CEILING, &out).unwrap();
    assert_eq!(act, XDP_TX);
    assert_eq!(&echo[0..6], &out[6..12], "MACs swapped");
    assert_eq!(&echo[6..12], &out[0..6]);
    assert_eq!(&echo[26..30], &out[30..34], "addresses swapped");
    assert_eq!(&echo[30..34], &out[26..30]);
    assert_eq!(&echo[34..36], &out[36..38], "ports swapped");
    assert_eq!(&echo[36..38], &out[34..36]);
    assert_eq!(&echo[38..], &out[38..], "nothing else changed");
    let (rtt0, _) = s.histograms().unwrap();
    assert_eq!(
        s.programs().run_once(PROG_COUNT, &echo).unwrap().0,
        XDP_DROP
    );
    let st = s.cnt_stats().unwrap();
    assert_eq!((st.packets, st.rtt_samples), (1, 1));
    let (rtt1, _) = s.histograms().unwrap();
    let n: u64 = rtt1.iter().zip(&rtt0).map(|(a, b)| a - b).sum();
    assert_eq!(n, 1);
    // Not faster than zero, not slower than a second.
    let b = rtt1.iter().zip(&rtt0).position(|(a, b)| a > b).unwrap();
    assert!(b < bucket_of(1_000_000_000));
    // The pass program loads too.
    Programs::load(Role::Pass).expect("pass stub loads");
}

#[test]
fn generator_keeps_its_schedule_and_stop_time() {
    if skip() {
        return;
    }
    use ricochet_bench::gen::abi::GenCfg;
    let s = Sender::load().unwrap();
    let g = frame::build(&flow(false), &TestSession::open(ProbeMode::Twamp), 100).unwrap();
    s.configure_generator(&g).unwrap();
    // One frame per second: the first iteration sends, the next ones are
    // before the schedule's next slot and are dropped.
    let paced = GenCfg {
        interval_fp: GenCfg::interval_for(1.0),
        max_burst: 1,
        epoch: 1,
        ..g.gen
    };
    assert_eq!(GenCfg::interval_for(1.0), 1_000_000_000 << 16);
    s.write_gen_cfg(&paced).unwrap();
    let run = || s.programs().run_once(PROG_GEN, &g.frame).unwrap().0;
    assert_eq!(run(), XDP_TX);
    assert_eq!(run(), ricochet_bench::gen::bpf::XDP_DROP);
    assert_eq!(run(), ricochet_bench::gen::bpf::XDP_DROP);
    let st = s.gen_stats().unwrap();
    assert_eq!((st.frames, st.idle), (1, 2));
    // A new epoch restarts the schedule at once.
    s.write_gen_cfg(&GenCfg { epoch: 2, ..paced }).unwrap();
    assert_eq!(run(), XDP_TX);
    // After the stop time nothing is sent.
    s.write_gen_cfg(&GenCfg {
        epoch: 3,
        stop_ns: 1,
        ..paced
    })
    .unwrap();
    assert_eq!(run(), ricochet_bench::gen::bpf::XDP_DROP);
    assert_eq!(s.gen_stats().unwrap().frames, 2);
}
