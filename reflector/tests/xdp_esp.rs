//! The XDP program's ESP hand-off under BPF_PROG_TEST_RUN (the verifier
//! accepted the program when it loaded): ESP (IP protocol 50) and
//! ESP-in-UDP (RFC 3948, port 4500) of a known inbound SA go to the AF_XDP
//! socket of the queue with the SA's slot in `rc_xdp_meta` (no socket in a
//! test run: the fallback XDP_PASS with the metadata in front); IKE behind
//! the non-ESP marker, NAT keepalives, unknown SPIs and SAs that do not
//! accept the encapsulation pass untouched. Packets are built here, not by
//! the code under test.

mod xdp_util;

use std::net::IpAddr;

use ricochet_reflector::bpf::esp_abi::{sa_flags, RawEspSa};
use ricochet_reflector::bpf::{Counter, EspSaKey, Origin, XdpAction, XdpMeta};
use xdp_util::*;

const SPI: u32 = 0x4907_5e1d;

/// An ESP packet as a peer sends it: SPI, SN, 8-octet IV, 48 octets of
/// "ciphertext" and a 16-octet ICV (opaque to XDP).
fn esp(spi: u32, seq: u32) -> Vec<u8> {
    let mut e = spi.to_be_bytes().to_vec();
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(&pattern(8 + 48 + 16, 0x31));
    e
}

fn raw_v4(payload: &[u8]) -> Vec<u8> {
    frame_v4(&[], ipv4(V4_PEER, V4_US, 64, 0, 50, &[], payload))
}

fn udp_v4(dport: u16, payload: &[u8]) -> Vec<u8> {
    frame_v4(
        &[],
        ipv4_udp(V4_PEER, V4_US, 64, 0, &[], 4500, dport, payload),
    )
}

fn raw_v6(payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[50, 64]);
    h.extend_from_slice(&V6_PEER.octets());
    h.extend_from_slice(&V6_US.octets());
    h.extend_from_slice(payload);
    frame_v6(&[], h)
}

fn with_sa(local: IpAddr, flags: u16) -> TestProg {
    let p = load();
    p.maps()
        .write_esp_sa(
            &EspSaKey { spi: SPI, local },
            &RawEspSa {
                slot: 21,
                generation: 7,
                flags,
                ..RawEspSa::default()
            },
        )
        .unwrap();
    p
}

/// Redirected (fallback PASS) with metadata in front of the unchanged frame.
fn assert_handed_off(p: &TestProg, frame: &[u8], esp_off: usize) {
    let before = tai_ns();
    let r = p.test_run(frame).unwrap();
    let after = tai_ns();
    assert_eq!(r.action, XdpAction::Pass, "no socket: redirect fallback");
    assert_eq!(r.data.len(), XdpMeta::LEN + frame.len());
    assert_eq!(&r.data[XdpMeta::LEN..], frame, "frame untouched");
    let m = XdpMeta::parse(&r.data[..XdpMeta::LEN]).unwrap();
    assert_eq!(m.origin().unwrap(), Origin::Esp);
    assert_eq!((m.slot, m.generation), (21, 7));
    assert_eq!(usize::from(m.payload_off), esp_off);
    assert_eq!(&frame[esp_off..esp_off + 4], &SPI.to_be_bytes());
    assert!(
        before <= m.rx_ts_ns && m.rx_ts_ns <= after,
        "T2 at XDP entry"
    );
}

/// Passed to the stack exactly as received (no metadata).
fn assert_passed_untouched(p: &TestProg, frame: &[u8]) {
    let r = p.test_run(frame).unwrap();
    assert_eq!(r.action, XdpAction::Pass);
    assert_eq!(r.data, frame);
}

#[test]
fn raw_esp_of_a_known_sa_goes_to_the_socket_with_its_slot() {
    if skip() {
        return;
    }
    let p = with_sa(IpAddr::V4(V4_US), sa_flags::RAW | sa_flags::UDP);
    assert_handed_off(&p, &raw_v4(&esp(SPI, 1)), 14 + 20);
    let c = p.maps().counters().unwrap();
    assert_eq!(c.get(Counter::RedirectNoXsk), 1);
    assert_eq!(c.get(Counter::EspUnknownSpi), 0);
    let sa = p
        .maps()
        .esp_sa(&EspSaKey {
            spi: SPI,
            local: IpAddr::V4(V4_US),
        })
        .unwrap()
        .unwrap();
    assert_eq!((sa.rx_packets, sa.redirected), (1, 0));
}

#[test]
fn esp_in_udp_4500_goes_to_the_socket_and_ike_stays_with_the_stack() {
    if skip() {
        return;
    }
    let p = with_sa(IpAddr::V4(V4_US), sa_flags::UDP);
    assert_handed_off(&p, &udp_v4(4500, &esp(SPI, 2)), 14 + 20 + 8);
    // IKE: the 4-octet zero non-ESP marker, then an IKE header
    let mut ike = vec![0u8; 4];
    ike.extend_from_slice(&pattern(28, 0x77));
    assert_passed_untouched(&p, &udp_v4(4500, &ike));
    // NAT keepalive (RFC 3948 §2.3): one 0xff octet
    assert_passed_untouched(&p, &udp_v4(4500, &[0xff]));
    let c = p.maps().counters().unwrap();
    assert_eq!(c.get(Counter::EspIke), 2);
    // this SA accepts only UDP encapsulation: raw ESP with its SPI passes
    assert_passed_untouched(&p, &raw_v4(&esp(SPI, 3)));
    // ESP-in-UDP to another port is not ESP (a plain UDP datagram)
    assert_passed_untouched(&p, &udp_v4(4501, &esp(SPI, 4)));
    let c = p.maps().counters().unwrap();
    assert_eq!(c.get(Counter::EspUnknownSpi), 1);
    assert_eq!(c.get(Counter::PassNoMatch), 1);
    assert_eq!(c.get(Counter::RedirectNoXsk), 1);
}

#[test]
fn unknown_spi_other_address_and_runts_pass_untouched() {
    if skip() {
        return;
    }
    let p = with_sa(IpAddr::V4(V4_US), sa_flags::RAW | sa_flags::UDP);
    assert_passed_untouched(&p, &raw_v4(&esp(SPI + 1, 1)));
    assert_passed_untouched(&p, &udp_v4(4500, &esp(0x0100_0000, 1)));
    // the SA is keyed by (SPI, our address): the same SPI to another
    // address of ours is another SA
    let other = frame_v4(
        &[],
        ipv4(
            V4_PEER,
            std::net::Ipv4Addr::new(198, 18, 0, 9),
            64,
            0,
            50,
            &[],
            &esp(SPI, 1),
        ),
    );
    assert_passed_untouched(&p, &other);
    // shorter than SPI + SN + IV + trailer + ICV
    assert_passed_untouched(&p, &raw_v4(&esp(SPI, 1)[..30]));
    let c = p.maps().counters().unwrap();
    assert_eq!(c.get(Counter::EspUnknownSpi), 4);
    assert_eq!(c.get(Counter::RedirectNoXsk), 0);
    // a truncated IP header is malformed, never redirected
    let mut t = raw_v4(&esp(SPI, 1));
    t.truncate(30);
    assert_passed_untouched(&p, &t);
    assert_eq!(p.maps().counters().unwrap().get(Counter::PassMalformed), 1);
}

#[test]
fn raw_esp_over_ipv6() {
    if skip() {
        return;
    }
    let p = with_sa(IpAddr::V6(V6_US), sa_flags::RAW);
    assert_handed_off(&p, &raw_v6(&esp(SPI, 1)), 14 + 40);
    // the IPv4 SA table entry does not match IPv6 packets and vice versa
    assert_passed_untouched(&p, &raw_v4(&esp(SPI, 1)));
}
