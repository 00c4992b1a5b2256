//! The harnesses hold on real traffic: every seed built from the golden
//! captures (perfSONAR, twampy, stamp-suite) runs through its target's
//! harness without tripping an assertion, and every target gets seeds.
//! Run with `cargo test --features captures` in fuzz/.
#![cfg(feature = "captures")]

use std::collections::BTreeSet;

#[test]
fn every_capture_seed_passes_its_harness() {
    let seeds = ricochet_fuzz::seeds::capture_seeds();
    let mut seeded = BTreeSet::new();
    let mut any = BTreeSet::new();
    for (capture, (target, input)) in &seeds {
        let harness = ricochet_fuzz::harness(target)
            .unwrap_or_else(|| panic!("seed for unknown target {target}"));
        if let Err(e) = std::panic::catch_unwind(|| harness(input)) {
            panic!("{target} on a seed of {capture}: {e:?}");
        }
        any.insert(*target);
        if capture != "synthetic" {
            seeded.insert(*target);
        }
    }
    let all: BTreeSet<_> = ricochet_fuzz::HARNESSES.iter().map(|(n, _)| *n).collect();
    assert_eq!(any, all, "targets without seeds");
    let captured: BTreeSet<_> = all
        .iter()
        .copied()
        .filter(|t| !WITHOUT_CAPTURE.iter().any(|(n, _)| n == t))
        .collect();
    assert_eq!(seeded, captured, "targets without capture seeds");
}

/// The targets no golden capture can seed, and why. Everything else must get
/// capture seeds; an entry here must name a real target.
const WITHOUT_CAPTURE: &[(&str, &str)] = &[
    (
        "keyfile",
        "parses perfSONAR .pfs key files; no capture carries one (the interop README's line is a synthetic seed)",
    ),
    (
        "sa_records",
        "parses the operator's SA-record file; no capture carries one (strongSwan scenario a's values are a synthetic seed)",
    ),
];

#[test]
fn capture_less_targets_are_real_targets() {
    for (name, why) in WITHOUT_CAPTURE {
        assert!(ricochet_fuzz::harness(name).is_some(), "{name}: {why}");
    }
}

fn interop(peer: &str, file: &str) -> std::path::PathBuf {
    ricochet_testkit::shared_dir()
        .join("interop")
        .join(peer)
        .join(file)
}

/// The re-protected perfSONAR test packets verify under the keys the
/// `crypto_test_packet` harness derives from their key octet, one per test
/// packet of every authenticated or encrypted capture (the JSON's `test`
/// list), with the role the JSON's direction gives; and the session keys
/// really are needed: the same seeds fail under another key octet.
#[test]
fn test_packet_seeds_verify_under_the_harness_keys() {
    use ricochet_fuzz::seeds::{
        test_packet_harness_keys, test_packet_selector, TEST_PACKET_KEY_SEED,
    };
    use ricochet_protocol::crypto::{PacketRole, TestProtection};

    let seeds = ricochet_fuzz::seeds::capture_seeds();
    let mut total = 0;
    for (name, mode) in [
        ("twamp-auth-v4", TestProtection::Authenticated),
        ("twamp-enc-v4", TestProtection::Encrypted),
        ("twamp-enc-v6-port8620", TestProtection::Encrypted),
    ] {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(interop("perfsonar-5.2.3", &format!("{name}.decoded.json")))
                .unwrap(),
        )
        .unwrap();
        let expected: Vec<(u8, usize)> = json["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let role = match t["dir"].as_str().unwrap() {
                    "S->R" => PacketRole::Sender,
                    "R->S" => PacketRole::Reflector,
                    d => panic!("{name}: direction {d}"),
                };
                (
                    test_packet_selector(role, mode),
                    t["len"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(expected.len(), 20, "{name}: 10 packets each way");
        let reprotected: Vec<&Vec<u8>> = seeds
            .iter()
            .filter(|(c, (t, s))| {
                c == name && *t == "crypto_test_packet" && s[0] == TEST_PACKET_KEY_SEED
            })
            .map(|(_, (_, s))| s)
            .collect();
        let got: Vec<(u8, usize)> = reprotected.iter().map(|s| (s[1], s.len() - 2)).collect();
        assert_eq!(
            got, expected,
            "{name}: one re-protected seed per test packet"
        );
        let harness = test_packet_harness_keys(TEST_PACKET_KEY_SEED);
        let other = test_packet_harness_keys(0);
        for s in &reprotected {
            let role = if s[1] & 1 == 0 {
                PacketRole::Sender
            } else {
                PacketRole::Reflector
            };
            let mut p = s[2..].to_vec();
            harness
                .unprotect(role, mode, &mut p)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut p = s[2..].to_vec();
            assert!(other.unprotect(role, mode, &mut p).is_err(), "{name}");
        }
        total += reprotected.len();
    }
    assert_eq!(total, 60);
}

/// The re-sealed strongSwan ESP packets open under the `esp_open` and
/// `esp_sa` harnesses' SAs to exactly the inner packets the JSON decoded (strongSwan's own
/// plaintext), in capture order, with the SPI, sequence number and Next
/// Header of the frame; the packets as captured do not open under it.
#[test]
fn esp_seeds_open_under_the_harness_sas_to_strongswans_plaintext() {
    use ricochet_fuzz::crypto::{ESP_OPEN_KEY, ESP_OPEN_SALT};
    use ricochet_protocol::crypto::{EspCipher, EspGcm128, EspKeys};

    let name = "ikev2-b-child-esp-aesgcm128-x25519";
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(interop("strongswan-5.9.8", &format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    let expected: Vec<(u32, u32, u8, Vec<u8>)> = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "ESP")
        .map(|f| {
            let spi = ricochet_testkit::unhex(f["esp_spi"].as_str().unwrap());
            (
                u32::from_be_bytes(spi.try_into().unwrap()),
                f["esp_seq"].as_u64().unwrap() as u32,
                f["esp_next_header"].as_u64().unwrap() as u8,
                ricochet_testkit::unhex(f["inner_packet"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(expected.len(), 6, "three pings and their replies");
    let sa = EspGcm128::new(&ESP_OPEN_KEY, &ESP_OPEN_SALT);
    let mut opened = Vec::new();
    let mut refused = 0;
    for (capture, (target, input)) in ricochet_fuzz::seeds::capture_seeds() {
        if capture != name || target != "esp_open" {
            continue;
        }
        let mut p = input.clone();
        match sa.open(&mut p) {
            Ok(o) => opened.push((o.spi, o.seq, o.next_header, p[o.payload].to_vec())),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(opened, expected);
    assert_eq!(refused, 6, "the wire packets, under the wrong SA");

    // esp_sa: transform octet, window (2), four sequence numbers (16), packet.
    let mut opened = Vec::new();
    let mut refused = 0;
    for (capture, (target, input)) in ricochet_fuzz::seeds::capture_seeds() {
        if capture != name || target != "esp_sa" {
            continue;
        }
        let sel = input[0];
        assert_eq!(sel & 0x83, 0, "AES-GCM-128 without ESN, as the capture");
        let c = EspCipher::new(&EspKeys::gcm_from_keymat(&[sel; 20]).unwrap()).unwrap();
        let mut p = input[19..].to_vec();
        match c.open(&mut p, None) {
            Ok(o) => {
                assert_eq!(&input[3..7], &(o.seq as u32).to_be_bytes(), "window seeded");
                opened.push((o.spi, o.seq as u32, o.next_header, p[o.payload].to_vec()))
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(opened, expected);
    assert_eq!(refused, 6, "the wire packets, under the wrong SA");
}

/// The control client's seeds replay the server side of every perfSONAR
/// connection with the security mode its client chose: open mode for the
/// open captures, so that the harness follows them to Start-Ack; for the
/// protected modes also with the greeting's PBKDF2 count lowered to the
/// harness's limit, and nothing else changed.
#[test]
fn control_client_seeds_follow_the_captured_mode() {
    use ricochet_fuzz::client::MAX_COUNT;
    let seeds = ricochet_fuzz::seeds::capture_seeds();
    for (name, allowed) in [
        ("twamp-open-v4", 1u8),
        ("twamp-auth-v4", 2),
        ("twamp-enc-v4", 4),
        ("twamp-mixed-v4", 8),
    ] {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(interop("perfsonar-5.2.3", &format!("{name}.decoded.json")))
                .unwrap(),
        )
        .unwrap();
        let greeting_len = json["control"][0]["len"].as_u64().unwrap() as usize;
        let client: Vec<&Vec<u8>> = seeds
            .iter()
            .filter(|(c, (t, _))| c == name && *t == "control_client")
            .map(|(_, (_, s))| s)
            .collect();
        let count = json["control"][0]["count"].as_u64().unwrap() as u32;
        assert!(count > MAX_COUNT, "{name}: perfSONAR's count is refused");
        let streams = if allowed == 1 { 1 } else { 2 };
        assert_eq!(
            client.len(),
            2 * streams,
            "{name}: in 1- and 16-octet chunks (and whole)"
        );
        let captured = &client[0][4..];
        for (i, s) in client.iter().enumerate() {
            let stream = &s[4..];
            assert_eq!(stream.len(), captured.len(), "{name}");
            let seed_count = u32::from_be_bytes(stream[48..52].try_into().unwrap());
            if i < 2 {
                assert_eq!(stream, captured, "{name}: the captured stream");
                assert_eq!(seed_count, count, "{name}: the JSON's greeting");
            } else {
                assert_eq!(seed_count, MAX_COUNT, "{name}");
                assert_eq!(&stream[..48], &captured[..48], "{name}");
                assert_eq!(&stream[52..], &captured[52..], "{name}");
            }
        }
        for s in client {
            assert_eq!(s[0], allowed, "{name}: the mode twping chose");
            // The server's stream starts with the 64-octet Server-Greeting
            // whose Modes field (octets 12..16) offered the chosen mode.
            assert_eq!(greeting_len, 64);
            let offered = u32::from_be_bytes(s[4 + 12..4 + 16].try_into().unwrap());
            assert_ne!(offered & u32::from(allowed), 0, "{name}");
        }
    }
}

#[test]
fn captures_are_classified_by_peer_convention() {
    use ricochet_fuzz::seeds::CaptureKind;
    use ricochet_protocol::stamp::{ReflectorMode, StampLayout};
    use ricochet_protocol::time::TimeFormat;
    use ricochet_protocol::twamp_test::TestSecurity;

    assert_eq!(
        CaptureKind::from_file_name("twamp-enc-v6-port8620"),
        Some(CaptureKind::Twamp(TestSecurity::Encrypted))
    );
    assert_eq!(
        CaptureKind::from_file_name("twamp-mixed-v4"),
        Some(CaptureKind::Twamp(TestSecurity::Unauthenticated))
    );
    assert_eq!(
        CaptureKind::from_file_name("twamp-light-v6-default"),
        Some(CaptureKind::TwampLight)
    );
    let Some(CaptureKind::Stamp(f)) = CaptureKind::from_file_name("stamp-open-stateful-fut") else {
        panic!("stamp capture");
    };
    assert_eq!(
        (f.layout, f.mode, f.timestamp_format),
        (
            StampLayout::Unauthenticated,
            ReflectorMode::Stateful,
            TimeFormat::Ntp
        )
    );
    let Some(CaptureKind::Stamp(f)) =
        CaptureKind::from_file_name("stamp-open-sender-ntp-reflector-ptp")
    else {
        panic!("stamp capture");
    };
    assert_eq!(f.timestamp_format, TimeFormat::Ptp);
    let Some(CaptureKind::Stamp(f)) = CaptureKind::from_file_name("stamp-auth-tlvs") else {
        panic!("stamp capture");
    };
    assert_eq!(f.layout, StampLayout::Authenticated);
    assert_eq!(
        CaptureKind::from_file_name("ikev2-a-childless-psk"),
        Some(CaptureKind::Ike)
    );
}
