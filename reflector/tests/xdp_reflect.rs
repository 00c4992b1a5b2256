//! BPF_PROG_TEST_RUN tests of the XDP program: crafted frames in, exact
//! frames out. Expected replies are built independently from the layouts
//! of twamp-test.md §3.1 / stamp.md §2.3 with the builder and checksum in
//! `xdp_util`; only T2 and T3 are taken from the output (they depend on the
//! clock) and are checked for format and order instead.
//!
//! Needs root (CI runs as root).

mod xdp_util;

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use ricochet_reflector::bpf::{
    ClockState, Counter, EntryConfig, EntryFlags, Family, ListenerKey, Mode, SessionKey, XdpAction,
    XdpMeta,
};
use xdp_util::*;

const EE_CLOCK: u16 = 0x8a05; // S=1, Scale 10, Multiplier 5
const EE_SENDER: u16 = 0x0001;

fn key_v4() -> SessionKey {
    SessionKey::new(
        SocketAddr::new(IpAddr::V4(V4_US), PORT_US),
        SocketAddr::new(IpAddr::V4(V4_PEER), PORT_PEER),
    )
    .unwrap()
}

fn key_v6() -> SessionKey {
    SessionKey::new(
        SocketAddr::new(IpAddr::V6(V6_US), PORT_US),
        SocketAddr::new(IpAddr::V6(V6_PEER), PORT_PEER),
    )
    .unwrap()
}

fn write_clock(p: &TestProg, tai_offset: i32) {
    p.maps()
        .write_clock(&ClockState {
            tai_offset,
            error_estimate: EE_CLOCK,
            flags: 0,
            updated_ns: tai_ns(),
        })
        .unwrap();
}

/// A program with one IPv4 and one IPv6 session of `cfg`.
fn setup(cfg: EntryConfig) -> TestProg {
    let p = load();
    write_clock(&p, kernel_tai_offset());
    p.maps().insert_session(&key_v4(), &cfg).unwrap();
    p.maps().insert_session(&key_v6(), &cfg).unwrap();
    p
}

fn twamp(rate: u32) -> EntryConfig {
    EntryConfig::new(Mode::Twamp, rate)
}

/// What the reflector must send for a probe, per the layouts: the fixed
/// header with T3/T2 copied from `out_payload`, then `tail`.
#[allow(clippy::too_many_arguments)]
fn reflector_payload(
    out_payload: &[u8],
    seq: u32,
    ee: u16,
    mbz14: [u8; 2],
    sender: &[u8],
    ttl: u8,
    octets_41_43: Option<[u8; 3]>,
    tail: &[u8],
) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&seq.to_be_bytes()); // 0 Sequence Number
    p.extend_from_slice(&out_payload[4..12]); // 4 T3
    p.extend_from_slice(&ee.to_be_bytes()); // 12 Error Estimate
    p.extend_from_slice(&mbz14); // 14 MBZ / SSID
    p.extend_from_slice(&out_payload[16..24]); // 16 T2
    p.extend_from_slice(&sender[0..4]); // 24 Sender Sequence Number
    p.extend_from_slice(&sender[4..12]); // 28 Sender Timestamp
    p.extend_from_slice(&sender[12..14]); // 36 Sender Error Estimate
    p.extend_from_slice(&[0, 0]); // 38 MBZ
    p.push(ttl); // 40 Sender TTL
    if let Some(b) = octets_41_43 {
        p.extend_from_slice(&b); // 41 S-DSCP-ECN + MBZ (RFC 7750) / STAMP MBZ
    }
    p.extend_from_slice(tail);
    p
}

fn reply_v4(vlans: &[(u16, u16)], tos: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(MAC_PEER, MAC_US, vlans, 0x0800);
    f.extend_from_slice(&ipv4_udp(
        V4_US,
        V4_PEER,
        255,
        tos,
        &[],
        PORT_US,
        PORT_PEER,
        payload,
    ));
    f
}

fn reply_v6(vlans: &[(u16, u16)], tclass: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(MAC_PEER, MAC_US, vlans, 0x86dd);
    f.extend_from_slice(&ipv6_udp(
        V6_US,
        V6_PEER,
        255,
        tclass,
        &[],
        PORT_US,
        PORT_PEER,
        payload,
    ));
    f
}

fn probe_v4(vlans: &[(u16, u16)], ttl: u8, tos: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    frame_v4(
        vlans,
        ipv4_udp(
            V4_PEER, V4_US, ttl, tos, options, PORT_PEER, PORT_US, payload,
        ),
    )
}

fn probe_v6(ext: &[(u8, Vec<u8>)], hop: u8, tclass: u8, payload: &[u8]) -> Vec<u8> {
    frame_v6(
        &[],
        ipv6_udp(
            V6_PEER, V6_US, hop, tclass, ext, PORT_PEER, PORT_US, payload,
        ),
    )
}

fn out_payload(frame: &[u8]) -> &[u8] {
    &frame[layout(frame).payload..]
}

/// T2 and T3 in NTP format: near the host's UTC now, T2 <= T3, Z clear.
fn assert_ntp_times(payload: &[u8], before_utc: u64, after_utc: u64) {
    let t3 = ntp_to_ns(&payload[4..12]);
    let t2 = ntp_to_ns(&payload[16..24]);
    // the fraction truncates: allow one nanosecond of rounding
    assert!(
        t2 + 1 >= before_utc && t2 <= after_utc + 1,
        "T2 {t2} not within [{before_utc}, {after_utc}]"
    );
    assert!(t3 + 1 >= t2, "T3 {t3} before T2 {t2}");
    assert!(t3 <= after_utc + 1, "T3 {t3} after {after_utc}");
    assert_eq!(payload[12] & 0x40, 0, "Z bit clear for NTP");
}

fn run(p: &TestProg, frame: &[u8]) -> (XdpAction, Vec<u8>) {
    let r = p.test_run(frame).expect("test run");
    (r.action, r.data)
}

// ---- padding truncation, twamp-test.md §4 (perfSONAR: 14→41, 41→41, 214→214)

#[test]
fn twamp_v4_14_grows_to_41_with_own_sequence_numbers() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    for (i, sender_seq) in [7u32, 7, 9].into_iter().enumerate() {
        let sender = twamp_sender(sender_seq, T1, EE_SENDER, &[]);
        let probe = probe_v4(&[], 61, 0, &[], &sender);
        let before = realtime_ns();
        let (act, out) = run(&p, &probe);
        let after = realtime_ns();
        assert_eq!(act, XdpAction::Tx);
        assert_eq!(out.len(), 14 + 20 + 8 + 41);
        let pl = out_payload(&out);
        // reflector's own counter from 0, also for the duplicate (rule 9)
        let want = reflector_payload(pl, i as u32, EE_CLOCK, [0, 0], &sender, 61, None, &[]);
        assert_eq!(out, reply_v4(&[], 0, &want));
        assert_checksums(&out);
        assert_ntp_times(pl, before, after);
    }
    let c = p.maps().counters().unwrap();
    assert_eq!(c.get(Counter::Reflected), 3);
    let e = p.maps().session(&key_v4()).unwrap().unwrap();
    assert_eq!((e.seq, e.stats.reflected, e.stats.rx_packets), (3, 3, 3));
    assert_eq!(e.stats.rx_bytes, 3 * 14);
}

#[test]
fn twamp_v4_41_stays_41() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let sender = twamp_sender(1, T1, EE_SENDER, &pattern(27, 0x40));
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    let want = reflector_payload(
        out_payload(&out),
        0,
        EE_CLOCK,
        [0, 0],
        &sender,
        64,
        None,
        &[],
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
}

#[test]
fn twamp_v4_214_stays_214_keeping_the_padding_prefix() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let padding = pattern(200, 0x11);
    let sender = twamp_sender(3, T1, EE_SENDER, &padding);
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    assert_eq!(out_payload(&out).len(), 214);
    // RFC 5357 §4.2.1: the lowest-numbered 173 sender padding octets
    let want = reflector_payload(
        out_payload(&out),
        0,
        EE_CLOCK,
        [0, 0],
        &sender,
        64,
        None,
        &padding[..173],
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
}

#[test]
fn ethernet_trailer_is_trimmed() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let sender = twamp_sender(0, T1, EE_SENDER, &[]);
    let mut probe = probe_v4(&[], 64, 0, &[], &sender);
    probe.resize(60, 0xee); // minimum Ethernet frame: 4 octets of trailer
    let (act, out) = run(&p, &probe);
    assert_eq!(act, XdpAction::Tx);
    let want = reflector_payload(
        out_payload(&out),
        0,
        EE_CLOCK,
        [0, 0],
        &sender,
        64,
        None,
        &[],
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
}

// ---- timestamps (owamp-foundations.md §6, RFC 8186) ----------------------

#[test]
fn ptp_timestamps_are_tai_with_z_bit() {
    if skip() {
        return;
    }
    let mut cfg = twamp(0);
    cfg.flags = EntryFlags::PTP;
    let p = setup(cfg);
    let sender = twamp_sender(0, T1, EE_SENDER, &[]);
    let before = tai_ns();
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    let after = tai_ns();
    assert_eq!(act, XdpAction::Tx);
    let pl = out_payload(&out);
    let t2 = ptp_to_ns(&pl[16..24]);
    let t3 = ptp_to_ns(&pl[4..12]);
    assert!(
        before <= t2 && t2 <= t3 && t3 <= after,
        "{before} {t2} {t3} {after}"
    );
    let want = reflector_payload(pl, 0, EE_CLOCK | 0x4000, [0, 0], &sender, 64, None, &[]);
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
}

#[test]
fn ntp_timestamps_subtract_the_clock_map_tai_offset() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    // Pretend the kernel's CLOCK_TAI ran 37 s ahead of UTC: NTP = TAI - 37.
    let off = kernel_tai_offset() + 37;
    write_clock(&p, off);
    let sender = twamp_sender(0, T1, EE_SENDER, &[]);
    let before = tai_ns() - off as u64 * 1_000_000_000;
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    let after = tai_ns() - off as u64 * 1_000_000_000;
    assert_eq!(act, XdpAction::Tx);
    assert_ntp_times(out_payload(&out), before, after);
}

#[test]
fn multiplier_zero_is_never_sent() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    p.maps()
        .write_clock(&ClockState {
            tai_offset: kernel_tai_offset(),
            error_estimate: 0x8000, // S=1, Multiplier 0: invalid
            flags: 0,
            updated_ns: 0,
        })
        .unwrap();
    let (act, out) = run(
        &p,
        &probe_v4(&[], 64, 0, &[], &twamp_sender(0, T1, EE_SENDER, &[])),
    );
    assert_eq!(act, XdpAction::Tx);
    assert_eq!(&out_payload(&out)[12..14], &[0x80, 0x01]);
}

// ---- STAMP (stamp.md §2–3) -----------------------------------------------

#[test]
fn stamp_44_stateful_session_copies_ssid() {
    if skip() {
        return;
    }
    let p = setup(EntryConfig::new(Mode::Stamp, 0));
    for i in 0..2u32 {
        let sender = stamp_sender(100 + i, T1, EE_SENDER, 0xbeef, &[]);
        let (act, out) = run(&p, &probe_v4(&[], 60, 0, &[], &sender));
        assert_eq!(act, XdpAction::Tx);
        assert_eq!(out_payload(&out).len(), 44);
        let want = reflector_payload(
            out_payload(&out),
            i,
            EE_CLOCK,
            [0xbe, 0xef],
            &sender,
            60,
            Some([0; 3]),
            &[],
        );
        assert_eq!(out, reply_v4(&[], 0, &want));
        assert_checksums(&out);
    }
}

#[test]
fn stamp_listener_is_stateless_and_copies_tlvs() {
    if skip() {
        return;
    }
    let p = load();
    write_clock(&p, kernel_tai_offset());
    p.maps()
        .insert_listener(
            &ListenerKey::any(Family::V4, PORT_US),
            &EntryConfig::new(Mode::Stamp, 0),
        )
        .unwrap();
    // an Extra Padding TLV (type 1, length 12) after the base packet
    let mut tlv = vec![0x80, 1, 0, 12];
    tlv.extend_from_slice(&pattern(12, 3));
    let sender = stamp_sender(4242, T1, EE_SENDER, 7, &tlv);
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    // stateless: the sender's sequence number is copied (RFC 8762 §4.3.1)
    let want = reflector_payload(
        out_payload(&out),
        4242,
        EE_CLOCK,
        [0, 7],
        &sender,
        64,
        Some([0; 3]),
        &tlv,
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
    let e = p
        .maps()
        .listener(&ListenerKey::any(Family::V4, PORT_US))
        .unwrap()
        .unwrap();
    assert_eq!((e.seq, e.stats.reflected), (0, 1));
}

#[test]
fn stamp_short_probe_gets_the_44_octet_base() {
    if skip() {
        return;
    }
    let p = setup(EntryConfig::new(Mode::Stamp, 0));
    let sender = twamp_sender(5, T1, EE_SENDER, &[]); // 14-octet TWAMP-Light probe
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    let want = reflector_payload(
        out_payload(&out),
        0,
        EE_CLOCK,
        [0, 0],
        &sender,
        64,
        Some([0; 3]),
        &[],
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
}

#[test]
fn stamp_ssid_mismatch_is_dropped() {
    if skip() {
        return;
    }
    let mut cfg = EntryConfig::new(Mode::Stamp, 0);
    cfg.flags = EntryFlags::CHECK_SSID;
    cfg.ssid = 0x1111;
    let p = setup(cfg);
    let good = stamp_sender(0, T1, EE_SENDER, 0x1111, &[]);
    let bad = stamp_sender(0, T1, EE_SENDER, 0x2222, &[]);
    assert_eq!(run(&p, &probe_v4(&[], 64, 0, &[], &good)).0, XdpAction::Tx);
    assert_eq!(run(&p, &probe_v4(&[], 64, 0, &[], &bad)).0, XdpAction::Drop);
    assert_eq!(p.maps().counters().unwrap().get(Counter::DropSsid), 1);
}

/// RC_F_CHECK_SSID reads the unauthenticated layout's SSID (octets 14–15,
/// RFC 8972 §3) and applies to RC_MODE_STAMP entries only, including the
/// TLV-bearing packets they hand to the pollers (checked before the
/// hand-off). An authenticated STAMP packet carries its SSID at 26–27
/// (stamp.md §2.2) and travels through a secured entry, which the program
/// cannot tell from TWAMP or unauthenticated STAMP: the flag is refused
/// there instead of being silently ignored (the pollers check the SSID).
#[test]
fn check_ssid_is_the_unauthenticated_layout_and_refused_on_secured_entries() {
    if skip() {
        return;
    }
    let mut cfg = EntryConfig::new(Mode::Stamp, 0);
    cfg.flags = EntryFlags::CHECK_SSID | EntryFlags::TLV_TO_XSK;
    cfg.ssid = 0x1111;
    let p = setup(cfg);
    let tlv = [0x80, 1, 0, 4, 0, 0, 0, 0];
    let good = stamp_sender(0, T1, EE_SENDER, 0x1111, &tlv);
    let bad = stamp_sender(0, T1, EE_SENDER, 0x2222, &tlv);
    // The right SSID goes on to the socket (no socket here: PASS with
    // metadata), a wrong one is dropped before the hand-off.
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &good));
    assert_eq!(act, XdpAction::Pass);
    assert!(XdpMeta::parse(&out[..XdpMeta::LEN]).is_ok());
    assert_eq!(run(&p, &probe_v4(&[], 64, 0, &[], &bad)).0, XdpAction::Drop);
    // 0x1111 at the authenticated offset only: not this entry's layout.
    let mut auth_layout = vec![0u8; 112];
    auth_layout[26..28].copy_from_slice(&0x1111u16.to_be_bytes());
    assert_eq!(
        run(&p, &probe_v4(&[], 64, 0, &[], &auth_layout)).0,
        XdpAction::Drop
    );
    assert_eq!(p.maps().counters().unwrap().get(Counter::DropSsid), 2);

    let mut secured = EntryConfig::new(Mode::Secured, 0);
    secured.flags = EntryFlags::CHECK_SSID;
    secured.ssid = 0x1111;
    let q = load();
    assert!(
        q.maps().insert_session(&key_v4(), &secured).is_err(),
        "CHECK_SSID on a secured entry would be ignored: refused"
    );
    secured.flags = EntryFlags::empty();
    q.maps().insert_session(&key_v4(), &secured).unwrap();
    secured.flags = EntryFlags::CHECK_SSID;
    assert!(q.maps().update_session(&key_v4(), &secured).is_err());
}

// ---- IPv6, VLANs, IPv4 options -------------------------------------------

#[test]
fn ipv6_twamp_with_extension_headers_stripped() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let sender = twamp_sender(9, T1, EE_SENDER, &pattern(50, 1));
    for ext in [
        vec![],
        vec![(0u8, vec![1, 4, 0, 0, 0, 0])], // hop-by-hop, PadN
        vec![
            (0u8, vec![1, 4, 0, 0, 0, 0]),
            (60u8, vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ], // + dest opts
        vec![(43u8, vec![0, 0, 0, 0, 0, 0])], // routing, Segments Left 0
    ] {
        let probe = probe_v6(&ext, 57, 0x2e << 2, &sender);
        let (act, out) = run(&p, &probe);
        assert_eq!(act, XdpAction::Tx, "ext {ext:?}");
        let pl = out_payload(&out);
        let seq = u32::from_be_bytes([pl[0], pl[1], pl[2], pl[3]]);
        let want = reflector_payload(
            pl,
            seq,
            EE_CLOCK,
            [0, 0],
            &sender,
            57,
            None,
            &pattern(50, 1)[..23],
        );
        // DSCP EF kept (no DSCP configured), ECN Not-ECT
        assert_eq!(out, reply_v6(&[], 0x2e << 2, &want));
        assert_checksums(&out);
    }
}

#[test]
fn ipv6_routing_header_with_segments_left_passes() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let probe = probe_v6(
        &[(43u8, vec![0, 1, 0, 0, 0, 0])],
        64,
        0,
        &twamp_sender(0, T1, 1, &[]),
    );
    let (act, out) = run(&p, &probe);
    assert_eq!(act, XdpAction::Pass);
    assert_eq!(out, probe);
}

#[test]
fn vlan_tags_one_and_two_are_kept() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let sender = twamp_sender(1, T1, EE_SENDER, &[]);
    for vlans in [
        vec![(0x8100u16, 0x2064u16)],
        vec![(0x88a8, 0x00c8), (0x8100, 0x6065)],
    ] {
        let (act, out) = run(&p, &probe_v4(&vlans, 64, 0, &[], &sender));
        assert_eq!(act, XdpAction::Tx);
        let pl = out_payload(&out);
        let seq = u32::from_be_bytes([pl[0], pl[1], pl[2], pl[3]]);
        let want = reflector_payload(pl, seq, EE_CLOCK, [0, 0], &sender, 64, None, &[]);
        assert_eq!(out, reply_v4(&vlans, 0, &want));
        assert_checksums(&out);
    }
}

#[test]
fn ipv4_options_are_not_echoed() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let sender = twamp_sender(1, T1, EE_SENDER, &pattern(30, 9));
    // Router Alert (RFC 2113), and 8 octets of NOPs + EOL
    for opts in [vec![0x94, 0x04, 0x00, 0x00], vec![1, 1, 1, 1, 1, 1, 1, 0]] {
        for vlans in [vec![], vec![(0x8100u16, 5u16)]] {
            let (act, out) = run(&p, &probe_v4(&vlans, 64, 0, &opts, &sender));
            assert_eq!(act, XdpAction::Tx);
            let pl = out_payload(&out);
            let seq = u32::from_be_bytes([pl[0], pl[1], pl[2], pl[3]]);
            let want = reflector_payload(
                pl,
                seq,
                EE_CLOCK,
                [0, 0],
                &sender,
                64,
                None,
                &pattern(30, 9)[..3],
            );
            assert_eq!(out, reply_v4(&vlans, 0, &want));
            assert_checksums(&out);
        }
    }
}

// ---- DSCP/ECN (RFC 5357 Type-P, RFC 7750) and RFC 6038 -------------------

#[test]
fn dscp_is_set_or_kept_and_ecn_cleared() {
    if skip() {
        return;
    }
    let sender = twamp_sender(0, T1, EE_SENDER, &[]);
    let received_tos = (10 << 2) | 0b11; // AF11, CE
                                         // kept
    let p = setup(twamp(0));
    let (_, out) = run(&p, &probe_v4(&[], 64, received_tos, &[], &sender));
    assert_eq!(out[15], 10 << 2);
    assert_checksums(&out);
    // set to the session's DSCP (EF)
    let mut cfg = twamp(0);
    cfg.flags = EntryFlags::SET_DSCP;
    cfg.dscp = 46;
    let p = setup(cfg);
    let (_, out) = run(&p, &probe_v4(&[], 64, received_tos, &[], &sender));
    assert_eq!(out[15], 46 << 2);
    assert_checksums(&out);
    let (_, out) = run(&p, &probe_v6(&[], 64, received_tos, &sender));
    let tclass = (out[14] << 4) | (out[15] >> 4);
    assert_eq!(tclass, 46 << 2);
    assert_eq!(
        (out[15] & 0x0f, out[16], out[17]),
        (0, 0x12, 0x34),
        "flow label kept"
    );
    assert_checksums(&out);
}

#[test]
fn rfc7750_dscp_ecn_monitoring_reports_the_received_byte() {
    if skip() {
        return;
    }
    let mut cfg = twamp(0);
    cfg.flags = EntryFlags::DSCP_ECN;
    let p = setup(cfg);
    let tos = (34 << 2) | 0b01; // AF41, ECT(1)
    for pad in [0usize, 30, 100] {
        let padding = pattern(pad, 0x70);
        let sender = twamp_sender(0, T1, EE_SENDER, &padding);
        let (act, out) = run(&p, &probe_v4(&[], 64, tos, &[], &sender));
        assert_eq!(act, XdpAction::Tx);
        let pl = out_payload(&out);
        assert_eq!(pl.len(), (14 + pad).max(44));
        let seq = u32::from_be_bytes([pl[0], pl[1], pl[2], pl[3]]);
        let tail = &padding[..pad.saturating_sub(30)];
        let want = reflector_payload(
            pl,
            seq,
            EE_CLOCK,
            [0, 0],
            &sender,
            64,
            Some([tos, 0, 0]),
            tail,
        );
        assert_eq!(out, reply_v4(&[], 34 << 2, &want));
        assert_checksums(&out);
    }
}

#[test]
fn rfc6038_symmetrical_size_and_reflect_octets() {
    if skip() {
        return;
    }
    let mut cfg = twamp(0);
    cfg.flags = EntryFlags::SYMMETRICAL | EntryFlags::REFLECT_OCTETS;
    cfg.sender_mbz = 27;
    cfg.reflect_octets = 4;
    let p = setup(cfg);
    // 14 + 27 MBZ + 4 octets to reflect + 6 more
    let padding = pattern(10, 0xa0);
    let mut body = vec![0u8; 27];
    body.extend_from_slice(&padding);
    let sender = twamp_sender(0, T1, EE_SENDER, &body);
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    assert_eq!(out_payload(&out).len(), 51, "equal size");
    let want = reflector_payload(
        out_payload(&out),
        0,
        EE_CLOCK,
        [0, 0],
        &sender,
        64,
        None,
        &padding,
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
    // 2 octets of padding cannot carry L = 4: dropped, counted
    let short = twamp_sender(1, T1, EE_SENDER, &[0u8; 29]);
    assert_eq!(
        run(&p, &probe_v4(&[], 64, 0, &[], &short)).0,
        XdpAction::Drop
    );
    assert_eq!(p.maps().counters().unwrap().get(Counter::DropBadLength), 1);
    let e = p.maps().session(&key_v4()).unwrap().unwrap();
    assert_eq!(e.stats.bad_length, 1);
}

#[test]
fn rfc7750_symmetrical_sender_with_28_mbz() {
    if skip() {
        return;
    }
    let mut cfg = twamp(0);
    cfg.flags = EntryFlags::SYMMETRICAL | EntryFlags::DSCP_ECN | EntryFlags::REFLECT_OCTETS;
    cfg.sender_mbz = 28;
    cfg.reflect_octets = 6;
    let p = setup(cfg);
    // RFC 7750 Fig. 4: padding at 42; reply header 44, so 2 octets truncated
    let padding = pattern(12, 0x30);
    let mut body = vec![0u8; 28];
    body.extend_from_slice(&padding);
    let sender = twamp_sender(0, T1, EE_SENDER, &body);
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    let want = reflector_payload(
        out_payload(&out),
        0,
        EE_CLOCK,
        [0, 0],
        &sender,
        64,
        Some([0, 0, 0]),
        &padding[..10],
    );
    assert_eq!(out, reply_v4(&[], 0, &want));
    assert_checksums(&out);
}

// ---- what must not be reflected -------------------------------------------

/// Runs `frame` and asserts XDP_PASS with the frame untouched.
fn assert_passes(p: &TestProg, frame: &[u8], why: &str) {
    let (act, out) = run(p, frame);
    assert_eq!(act, XdpAction::Pass, "{why}");
    assert_eq!(out, frame, "{why}: frame modified");
}

#[test]
fn foreign_and_malformed_traffic_passes_untouched() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let sender = twamp_sender(0, T1, EE_SENDER, &pattern(20, 0));
    let good = probe_v4(&[], 64, 0, &[], &sender);
    let before = p.maps().counters().unwrap();

    // not UDP: ARP, TCP to port 862, ICMP echo
    let mut arp_bcast = eth([0xff; 6], MAC_PEER, &[], 0x0806);
    arp_bcast.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp_bcast.extend_from_slice(&[0; 20]);
    let mut arp_unicast = arp_bcast.clone();
    arp_unicast[..6].copy_from_slice(&MAC_US);
    assert_passes(&p, &arp_unicast, "ARP");
    let mut tcp = vec![0x9c, 0x40, 0x03, 0x5e];
    tcp.extend_from_slice(&[0; 16]);
    assert_passes(
        &p,
        &frame_v4(&[], ipv4(V4_PEER, V4_US, 64, 0, 6, &[], &tcp)),
        "TCP",
    );
    let icmp = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
    assert_passes(
        &p,
        &frame_v4(&[], ipv4(V4_PEER, V4_US, 64, 0, 1, &[], &icmp)),
        "ICMP",
    );
    let non_udp = p
        .maps()
        .counters()
        .unwrap()
        .since(&before)
        .get(Counter::PassNotUdp);
    assert_eq!(non_udp, 3);

    // unknown session: wrong remote port, wrong local port, wrong peer
    let c0 = p.maps().counters().unwrap();
    assert_passes(
        &p,
        &frame_v4(
            &[],
            ipv4_udp(V4_PEER, V4_US, 64, 0, &[], 40001, PORT_US, &sender),
        ),
        "remote port",
    );
    assert_passes(
        &p,
        &frame_v4(
            &[],
            ipv4_udp(V4_PEER, V4_US, 64, 0, &[], PORT_PEER, 863, &sender),
        ),
        "local port",
    );
    let other = std::net::Ipv4Addr::new(198, 19, 0, 3);
    assert_passes(
        &p,
        &frame_v4(
            &[],
            ipv4_udp(other, V4_US, 64, 0, &[], PORT_PEER, PORT_US, &sender),
        ),
        "peer",
    );
    assert_eq!(
        p.maps()
            .counters()
            .unwrap()
            .since(&c0)
            .get(Counter::PassNoMatch),
        3
    );

    // malformed / truncated
    let c0 = p.maps().counters().unwrap();
    // (BPF_PROG_TEST_RUN itself refuses frames shorter than 14 octets)
    for cut in [14usize, 20, 14 + 19, 14 + 20 + 7] {
        assert_passes(&p, &good[..cut], &format!("truncated to {cut}"));
    }
    let mut bad_ipck = good.clone();
    bad_ipck[14 + 10] ^= 0xff;
    assert_passes(&p, &bad_ipck, "IPv4 header checksum");
    let mut bad_udpck = good.clone();
    let n = bad_udpck.len();
    bad_udpck[n - 1] ^= 0x01; // payload changed, checksum not
    assert_passes(&p, &bad_udpck, "UDP checksum");
    let mut long_udp = good.clone();
    long_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
    assert_passes(&p, &long_udp, "UDP length beyond the datagram");
    let mut frag = good.clone();
    frag[14 + 6] |= 0x20; // MF
    let c = checksum(&{
        let mut h = frag[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    frag[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    assert_passes(&p, &frag, "fragment");
    let mut v6_nock = probe_v6(&[], 64, 0, &sender);
    let l = layout(&v6_nock);
    v6_nock[l.l4 + 6] = 0;
    v6_nock[l.l4 + 7] = 0;
    assert_passes(&p, &v6_nock, "IPv6 UDP checksum 0");
    assert_passes(
        &p,
        &probe_v6(&[(44u8, vec![0, 0, 0, 0, 0, 1])], 64, 0, &sender),
        "IPv6 fragment header",
    );
    let d = p.maps().counters().unwrap().since(&c0);
    assert_eq!(d.get(Counter::PassMalformed), 9);
    assert_eq!(d.get(Counter::PassNotUdp), 1); // the fragment header

    // group addresses are never answered
    let c0 = p.maps().counters().unwrap();
    let mut mcast = good.clone();
    mcast[0] = 0x01;
    assert_passes(&p, &mcast, "multicast MAC");
    assert_passes(&p, &arp_bcast, "broadcast ARP");
    let group = std::net::Ipv4Addr::new(224, 0, 0, 1);
    assert_passes(
        &p,
        &frame_v4(
            &[],
            ipv4_udp(V4_PEER, group, 64, 0, &[], PORT_PEER, PORT_US, &sender),
        ),
        "multicast IP",
    );
    assert_eq!(
        p.maps()
            .counters()
            .unwrap()
            .since(&c0)
            .get(Counter::PassNotUnicast),
        3
    );

    // nothing above was reflected
    let all = p.maps().counters().unwrap().since(&before);
    assert_eq!(all.get(Counter::Reflected), 0);
    assert_eq!(all.get(Counter::Error), 0);
}

#[test]
fn stamp_listener_answers_41_to_43_octet_twamp_light_probes_in_kind() {
    if skip() {
        return;
    }
    let p = load();
    write_clock(&p, kernel_tai_offset());
    p.maps()
        .insert_listener(
            &ListenerKey::any(Family::V4, PORT_US),
            &EntryConfig::new(Mode::Stamp, 0),
        )
        .unwrap();
    // twampy's default probe: 14 octets + 27 of padding. Shorter than the
    // STAMP base, so it is TWAMP-Light: a 41-octet reply, same size.
    for pad in [27usize, 28, 29] {
        let sender = twamp_sender(9, T1, EE_SENDER, &vec![0xa5; pad]);
        let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
        assert_eq!(act, XdpAction::Tx, "padding {pad}");
        let reply = out_payload(&out);
        assert_eq!(reply.len(), sender.len(), "never longer than the probe");
        assert_eq!(&reply[0..4], &9u32.to_be_bytes(), "stateless: copied");
        assert_eq!(&reply[14..16], &[0, 0], "TWAMP MBZ, not a copied SSID");
        assert_eq!(&reply[16..24].len(), &8, "T2 present");
        assert_eq!(&reply[24..28], &9u32.to_be_bytes(), "sender sequence");
        assert_eq!(&reply[28..36], &T1, "sender timestamp");
        assert_eq!(reply[40], 64, "sender TTL");
        assert_checksums(&out);
    }
    // Still nothing for a probe shorter than the 41-octet reply.
    let short = twamp_sender(10, T1, EE_SENDER, &[0; 26]);
    assert_eq!(
        run(&p, &probe_v4(&[], 64, 0, &[], &short)).0,
        XdpAction::Drop
    );
}

#[test]
fn a_wildcard_listener_answers_only_its_port_and_family() {
    if skip() {
        return;
    }
    let p = load();
    write_clock(&p, kernel_tai_offset());
    p.maps()
        .insert_listener(&ListenerKey::any(Family::V4, PORT_US), &twamp(0))
        .unwrap();
    // A listener admits nobody, so its reply is never larger than the
    // request: a 14-octet probe (41-octet reply) gets nothing.
    let short = twamp_sender(76, T1, EE_SENDER, &[]);
    let c0 = p.maps().counters().unwrap();
    assert_eq!(
        run(&p, &probe_v4(&[], 64, 0, &[], &short)).0,
        XdpAction::Drop
    );
    let c = p.maps().counters().unwrap().since(&c0);
    assert_eq!(
        (c.get(Counter::DropBadLength), c.get(Counter::Reflected)),
        (1, 0)
    );
    let sender = twamp_sender(77, T1, EE_SENDER, &[0; 27]);
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &sender));
    assert_eq!(act, XdpAction::Tx);
    assert_eq!(out_payload(&out).len(), 41, "same size as the request");
    assert_eq!(
        &out_payload(&out)[0..4],
        &77u32.to_be_bytes(),
        "stateless: copied"
    );
    assert_passes(&p, &probe_v6(&[], 64, 0, &sender), "IPv6 has no listener");
    let exact = ListenerKey::exact(SocketAddr::new(IpAddr::V4(V4_US), 5000));
    p.maps().insert_listener(&exact, &twamp(0)).unwrap();
    let f = frame_v4(
        &[],
        ipv4_udp(V4_PEER, V4_US, 64, 0, &[], PORT_PEER, 5000, &sender),
    );
    assert_eq!(run(&p, &f).0, XdpAction::Tx);
    assert!(p.maps().remove_listener(&exact).unwrap());
    assert!(!p.maps().remove_listener(&exact).unwrap());
    assert_passes(&p, &f, "removed listener");
}

#[test]
fn short_payload_of_a_known_session_is_dropped() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    for len in [0usize, 1, 13] {
        let (act, _) = run(&p, &probe_v4(&[], 64, 0, &[], &pattern(len, 0)));
        assert_eq!(act, XdpAction::Drop, "payload of {len}");
    }
    let c = p.maps().counters().unwrap();
    assert_eq!(c.get(Counter::DropBadLength), 3);
    assert_eq!(c.get(Counter::Reflected), 0);
}

#[test]
fn removed_session_is_no_longer_reflected() {
    if skip() {
        return;
    }
    let p = setup(twamp(0));
    let probe = probe_v4(&[], 64, 0, &[], &twamp_sender(0, T1, EE_SENDER, &[]));
    assert_eq!(run(&p, &probe).0, XdpAction::Tx);
    assert!(p.maps().remove_session(&key_v4()).unwrap());
    assert_passes(&p, &probe, "removed session");
}

// ---- token bucket ---------------------------------------------------------

#[test]
fn token_bucket_limits_reflection() {
    if skip() {
        return;
    }
    let mut cfg = twamp(1); // 1 packet/s
    cfg.burst = 3;
    let p = setup(cfg);
    let probe = probe_v4(&[], 64, 0, &[], &twamp_sender(0, T1, EE_SENDER, &[]));
    let acts: Vec<_> = (0..6).map(|_| run(&p, &probe).0).collect();
    // a full bucket of 3, then (well within a second) nothing
    assert_eq!(&acts[..3], &[XdpAction::Tx; 3]);
    assert_eq!(&acts[3..], &[XdpAction::Drop; 3]);
    let c = p.maps().counters().unwrap();
    assert_eq!(
        (c.get(Counter::Reflected), c.get(Counter::DropRateLimited)),
        (3, 3)
    );
    let e = p.maps().session(&key_v4()).unwrap().unwrap();
    assert_eq!((e.stats.rate_limited, e.seq), (3, 3));
    // updating the configuration keeps the state (sequence, counters)
    let mut cfg2 = cfg;
    cfg2.rate_pps = 0;
    cfg2.generation = 2;
    p.maps().update_session(&key_v4(), &cfg2).unwrap();
    assert_eq!(run(&p, &probe).0, XdpAction::Tx);
    let e = p.maps().session(&key_v4()).unwrap().unwrap();
    assert_eq!((e.seq, e.stats.reflected, e.config.generation), (4, 4, 2));
}

// ---- secured sessions: AF_XDP hand-off ------------------------------------

#[test]
fn secured_session_without_socket_falls_back_to_pass_with_metadata() {
    if skip() {
        return;
    }
    let mut cfg = EntryConfig::new(Mode::Secured, 0);
    cfg.slot = 17;
    cfg.generation = 3;
    let p = setup(cfg);
    let sender = pattern(112, 0x55); // authenticated-mode packet, opaque here
    let probe = probe_v4(&[], 64, 0, &[], &sender);
    let before = tai_ns();
    let (act, out) = run(&p, &probe);
    let after = tai_ns();
    // bpf_redirect_map's fallback (no socket on queue 0) is XDP_PASS
    assert_eq!(act, XdpAction::Pass);
    // The kernel returns the frame from data_meta: metadata, then the
    // unmodified frame.
    assert_eq!(out.len(), XdpMeta::LEN + probe.len());
    assert_eq!(&out[XdpMeta::LEN..], &probe[..]);
    let m = XdpMeta::parse(&out[..XdpMeta::LEN]).unwrap();
    assert_eq!((m.slot, m.generation), (17, 3));
    assert_eq!(usize::from(m.payload_off), 14 + 20 + 8);
    assert!(before <= m.rx_ts_ns && m.rx_ts_ns <= after);
    assert_eq!(
        m.ts_source().unwrap(),
        ricochet_reflector::bpf::TsSource::KernelTai
    );
    assert_eq!(
        m.origin().unwrap(),
        ricochet_reflector::bpf::Origin::Session
    );
    let c = p.maps().counters().unwrap();
    assert_eq!(
        (c.get(Counter::RedirectNoXsk), c.get(Counter::Redirected)),
        (1, 0)
    );
}

#[test]
fn stamp_tlvs_go_to_the_socket_when_configured() {
    if skip() {
        return;
    }
    let mut cfg = EntryConfig::new(Mode::Stamp, 0);
    cfg.flags = EntryFlags::TLV_TO_XSK;
    let p = setup(cfg);
    let base = stamp_sender(0, T1, EE_SENDER, 0, &[]);
    assert_eq!(run(&p, &probe_v4(&[], 64, 0, &[], &base)).0, XdpAction::Tx);
    let with_tlv = stamp_sender(0, T1, EE_SENDER, 0, &[0x80, 1, 0, 4, 0, 0, 0, 0]);
    let (act, out) = run(&p, &probe_v4(&[], 64, 0, &[], &with_tlv));
    assert_eq!(act, XdpAction::Pass);
    assert!(XdpMeta::parse(&out[..XdpMeta::LEN]).is_ok());
    assert_eq!(p.maps().counters().unwrap().get(Counter::RedirectNoXsk), 1);
}

// ---- properties -----------------------------------------------------------

thread_local! {
    /// One program for all cases of a property (loading verifies it anew).
    static PROP_PROG: TestProg = {
        let p = setup(twamp(0));
        p.maps().insert_listener(&ListenerKey::any(Family::V4, PORT_US), &twamp(0)).unwrap();
        p
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any payload of a known TWAMP session: reflected iff >= 14 octets,
    /// reply length max(len, 41), checksums valid, sender fields copied.
    #[test]
    fn any_session_payload_is_reflected_correctly(payload in proptest::collection::vec(any::<u8>(), 0..400), v6 in any::<bool>()) {
        if skip() {
            return Ok(());
        }
        let probe = if v6 { probe_v6(&[], 64, 0, &payload) } else { probe_v4(&[], 64, 0, &[], &payload) };
        let (act, out) = PROP_PROG.with(|p| run(p, &probe));
        if payload.len() < 14 {
            prop_assert_eq!(act, XdpAction::Drop);
        } else {
            prop_assert_eq!(act, XdpAction::Tx);
            let pl = out_payload(&out);
            prop_assert_eq!(pl.len(), payload.len().max(41));
            prop_assert_eq!(&pl[24..38], &payload[..14]);
            let keep = payload.len().saturating_sub(41);
            prop_assert_eq!(&pl[41..], &payload[14..14 + keep]);
            assert_checksums(&out);
        }
    }

    /// Random frames never get XDP_TX (only known sessions are answered),
    /// and whatever is passed is passed unmodified.
    #[test]
    fn random_frames_are_never_reflected(frame in proptest::collection::vec(any::<u8>(), 0..200), ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x0806])) {
        if skip() {
            return Ok(());
        }
        let mut f = frame;
        if f.len() >= 14 {
            f[..6].copy_from_slice(&MAC_US);
            f[6..12].copy_from_slice(&MAC_PEER);
            f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
        match PROP_PROG.with(|p| p.test_run(&f)) {
            Ok(r) => {
                prop_assert_ne!(r.action, XdpAction::Tx);
                if r.action == XdpAction::Pass {
                    prop_assert_eq!(r.data, f);
                }
            }
            // the kernel refuses frames shorter than an Ethernet header
            Err(_) => prop_assert!(f.len() < 14),
        }
    }
}
