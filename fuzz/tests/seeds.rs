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
    // Only the key-file and SA-record parsers have no capture to start from.
    let captured: BTreeSet<_> = all
        .iter()
        .copied()
        .filter(|t| !["keyfile", "sa_records"].contains(t))
        .collect();
    assert_eq!(seeded, captured, "targets without capture seeds");
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
