//! The typed STAMP TLVs against the layouts of `stamp.md` §4/§5 (RFC 8972,
//! RFC 9503, RFC 9534), octet for octet; round trips and arbitrary input
//! with proptest.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use ricochet_protocol::stamp::tlvs::{
    destination_node_address, fill_location, parse_location_subs, reflect_class_of_service,
    AccessReport, AccessReportRepr, ClassOfService, ClassOfServiceRepr, DirectMeasurement,
    DirectMeasurementRepr, FollowUpRepr, FollowUpTelemetry, LocationContext, LocationSub,
    MicroSessionId, ReturnPathRepr, StampTlv, SyncSource, TimestampInfo, TimestampInfoRepr,
    TimestampMethod, TlvValueError,
};
use ricochet_protocol::stamp::validate::{
    validate_pair, validate_reflector, validate_sender, Expectations, Observed, Profile,
};
use ricochet_protocol::stamp::{process_tlvs_in_place, FramingOnly, StampLayout};
use ricochet_protocol::time::TaiOffset;

#[test]
fn timestamp_information_layout() {
    // stamp.md §4 type 3: 0 Sync Src In, 1 Timestamp In, 2 Sync Src Out,
    // 3 Timestamp Out; sync 1 NTP, 2 PTP, 5 free-running; method 1 HW,
    // 2 SW local, 3 control plane.
    let mut v = [0u8; 4];
    let r = TimestampInfoRepr {
        sync_in: SyncSource::Ptp,
        method_in: TimestampMethod::HardwareAssist,
        sync_out: SyncSource::FreeRunning,
        method_out: TimestampMethod::ControlPlane,
    };
    r.emit(&mut TimestampInfo::new_checked(&mut v[..]).unwrap());
    assert_eq!(v, [2, 1, 5, 3]);
    assert_eq!(
        TimestampInfoRepr::parse(&TimestampInfo::new_checked(&v[..]).unwrap()),
        r
    );
    assert_eq!(SyncSource::from_u8(1), SyncSource::Ntp);
    assert_eq!(SyncSource::from_u8(3), SyncSource::SsuBits);
    assert_eq!(SyncSource::from_u8(4), SyncSource::Gnss);
    assert_eq!(TimestampMethod::from_u8(2), TimestampMethod::SoftwareLocal);
    assert!(TimestampInfo::new_checked(&v[..3]).is_err());
}

#[test]
fn class_of_service_layout_and_reflection() {
    // DSCP1(6) DSCP2(6) ECN(2) RP(2) Reserved(16); the reflector writes the
    // received DSCP into DSCP2 and the received ECN into ECN (EID 8199).
    let mut v = ClassOfServiceRepr {
        dscp1: 10,
        dscp2: 0,
        ecn: 0,
        rp: 0,
    }
    .to_bytes();
    assert_eq!(v, [0x28, 0, 0, 0]);
    // Received with EF (46) and ECT(0) (2): TOS 0xba.
    let d = reflect_class_of_service(
        &mut ClassOfService::new_checked(&mut v[..]).unwrap(),
        0xba,
        |_| true,
    );
    assert_eq!(d.reply_dscp, 10);
    assert!(d.honoured);
    // 001010 10 | 1110 10 00
    assert_eq!(v, [0b0010_1010, 0b1110_1000, 0, 0]);
    let c = ClassOfService::new_checked(&v[..]).unwrap();
    assert_eq!((c.dscp1(), c.dscp2(), c.ecn(), c.rp()), (10, 46, 2, 0));
    // Policy refuses DSCP1: keep the received DSCP, RP = 1.
    let d = reflect_class_of_service(
        &mut ClassOfService::new_checked(&mut v[..]).unwrap(),
        0xba,
        |_| false,
    );
    assert_eq!(d.reply_dscp, 46);
    assert_eq!(v[1] & 0x03, 1);
}

#[test]
fn direct_measurement_access_report_follow_up_micro_session() {
    let r = DirectMeasurementRepr {
        s_txc: 0x01020304,
        r_rxc: 5,
        r_txc: 0xa0b0c0d0,
    };
    assert_eq!(
        r.to_bytes(),
        [1, 2, 3, 4, 0, 0, 0, 5, 0xa0, 0xb0, 0xc0, 0xd0]
    );
    let mut b = r.to_bytes();
    DirectMeasurement::new_checked(&mut b[..])
        .unwrap()
        .set_reflector_counters(7, 6);
    assert_eq!(&b[..], &[1, 2, 3, 4, 0, 0, 0, 7, 0, 0, 0, 6]);

    let a = AccessReportRepr {
        id: 2,
        return_code: 1,
    };
    assert_eq!(a.to_bytes(), [0x20, 1, 0, 0]);
    let v = AccessReport::new_checked(&[0x10, 2, 0, 0][..]).unwrap();
    assert!(v.id_valid());
    assert_eq!((v.id(), v.return_code()), (1, 2));
    assert!(!AccessReport::new_checked(&[0x30, 2, 0, 0][..])
        .unwrap()
        .id_valid());
    // stamp-suite's Length 2 (D3) is not an Access Report.
    assert_eq!(
        StampTlv::parse(6, &[0x10, 1]),
        Err(TlvValueError::Length {
            tlv_type: 6,
            length: 2
        })
    );

    let f = FollowUpRepr {
        sequence_number: 9,
        timestamp: [1, 2, 3, 4, 5, 6, 7, 8],
        mode: TimestampMethod::SoftwareLocal,
    };
    assert_eq!(
        f.to_bytes(),
        [0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 2, 0, 0, 0]
    );
    let fb = f.to_bytes();
    assert_eq!(
        FollowUpRepr::parse(&FollowUpTelemetry::new_checked(&fb[..]).unwrap()),
        f
    );
    assert!(FollowUpTelemetry::new_checked(&fb[..12]).is_err());

    let mut m = [0, 5, 0, 0];
    MicroSessionId::new_checked(&mut m[..])
        .unwrap()
        .set_reflector_id(9);
    assert_eq!(m, [0, 5, 0, 9]);
}

#[test]
fn destination_node_address_and_return_path() {
    assert_eq!(
        destination_node_address(&[198, 18, 0, 2]).unwrap(),
        "198.18.0.2".parse::<IpAddr>().unwrap()
    );
    assert!(destination_node_address(&[0; 8]).is_err());
    // Control Code 1 (reply on the same link).
    let r = ReturnPathRepr::parse(&[0x80, 1, 0, 4, 0, 0, 0, 1]).unwrap();
    assert_eq!(r.control_code, Some(1));
    // Return Address + SR-MPLS labels (2 entries).
    let mut v = vec![0, 2, 0, 4, 198, 18, 0, 1, 0, 3, 0, 8];
    v.extend_from_slice(&[0; 8]);
    let r = ReturnPathRepr::parse(&v).unwrap();
    assert_eq!(r.return_address, Some("198.18.0.1".parse().unwrap()));
    assert_eq!(r.sr_mpls_labels, 2);
    // Control Code excludes the others; a type twice is refused.
    assert!(ReturnPathRepr::parse(&[0, 1, 0, 4, 0, 0, 0, 1, 0, 2, 0, 4, 1, 2, 3, 4]).is_err());
    assert!(ReturnPathRepr::parse(&[0, 1, 0, 4, 0, 0, 0, 1, 0, 1, 0, 4, 0, 0, 0, 1]).is_err());
    // SRv6 list must be a multiple of 16.
    assert!(ReturnPathRepr::parse(&[0, 4, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
}

#[test]
fn location_ipv6_and_unknown_sub_tlv() {
    let mut v = vec![0u8; 4 + 20 + 20 + 6];
    v[4..8].copy_from_slice(&[0x80, 7, 0, 16]);
    v[24..28].copy_from_slice(&[0x80, 4, 0, 16]);
    v[44..48].copy_from_slice(&[0x00, 200, 0, 2]);
    let ctx = LocationContext {
        source: "[2001:2::1]:40000".parse().unwrap(),
        destination: "[2001:2::2]:862".parse().unwrap(),
        source_mac: None,
    };
    fill_location(&mut v, &ctx).unwrap();
    assert_eq!(&v[0..4], &[0x03, 0x5e, 0x9c, 0x40]);
    assert_eq!(&v[4..8], &[0, 9, 0, 16]);
    assert_eq!(
        &v[8..24],
        &"2001:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(&v[24..28], &[0, 6, 0, 16]);
    // The unknown sub-TLV gets U and stays otherwise as received.
    assert_eq!(&v[44..50], &[0x80, 200, 0, 2, 0, 0]);
    let mut subs = [LocationSub::SourceMacRequest; 4];
    assert_eq!(parse_location_subs(&v, &mut subs).unwrap(), 3);
    assert_eq!(subs[0], LocationSub::SourceIp("2001:2::1".parse().unwrap()));
    // A malformed sub-TLV chain is an error and gets M.
    let mut bad = vec![0, 0, 0, 0, 0, 4, 0, 16, 1, 2];
    assert!(fill_location(&mut bad, &ctx).is_err());
    assert_eq!(bad[4] & 0x40, 0x40);
    // An IPv4-mapped source is reported as IPv4 (type 8).
    let mut v4 = vec![0u8; 4 + 20];
    v4[4..8].copy_from_slice(&[0x80, 7, 0, 16]);
    let ctx = LocationContext {
        source: "[::ffff:198.18.0.1]:1".parse().unwrap(),
        destination: "[::ffff:198.18.0.2]:862".parse().unwrap(),
        source_mac: None,
    };
    fill_location(&mut v4, &ctx).unwrap();
    assert_eq!(&v4[4..12], &[0, 8, 0, 16, 198, 18, 0, 1]);
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
    ]
}

proptest! {
    #[test]
    fn cos_round_trip(d1 in 0u8..64, d2 in 0u8..64, ecn in 0u8..4, rp in 0u8..4) {
        let r = ClassOfServiceRepr { dscp1: d1, dscp2: d2, ecn, rp };
        let b = r.to_bytes();
        prop_assert_eq!(ClassOfServiceRepr::parse(&ClassOfService::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn follow_up_round_trip(seq: u32, ts: [u8; 8], mode: u8) {
        let r = FollowUpRepr { sequence_number: seq, timestamp: ts, mode: TimestampMethod::from_u8(mode) };
        let b = r.to_bytes();
        prop_assert_eq!(FollowUpRepr::parse(&FollowUpTelemetry::new_checked(&b[..]).unwrap()), r);
    }

    #[test]
    fn typed_parse_never_panics(ty: u8, value in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = StampTlv::parse(ty, &value);
        let _ = ReturnPathRepr::parse(&value);
        let mut subs = [LocationSub::SourceMacRequest; 4];
        let _ = parse_location_subs(&value, &mut subs);
    }

    #[test]
    fn fill_location_keeps_length_and_never_panics(
        mut value in proptest::collection::vec(any::<u8>(), 0..120),
        src in addr(), dst in addr(), mac: Option<[u8; 6]>,
    ) {
        let len = value.len();
        let ctx = LocationContext { source: src, destination: dst, source_mac: mac };
        let r = fill_location(&mut value, &ctx);
        prop_assert_eq!(value.len(), len);
        if len >= 4 {
            prop_assert_eq!(&value[0..2], &dst.port().to_be_bytes());
            prop_assert_eq!(&value[2..4], &src.port().to_be_bytes());
        } else {
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn validator_never_panics(
        a in proptest::collection::vec(any::<u8>(), 0..200),
        b in proptest::collection::vec(any::<u8>(), 0..200),
        auth: bool, twamp: bool, tos: u8, ttl: u8, cap: Option<u64>,
    ) {
        let exp = Expectations {
            profile: if twamp { Profile::TwampLight } else { Profile::Stamp },
            layout: if auth { StampLayout::Authenticated } else { StampLayout::Unauthenticated },
            reflector_mode: None,
            tai_offset: TaiOffset(37),
            hmac: None,
        };
        let s: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let o = |p| Observed { payload: p, ttl, tos, src: s, dst: s, capture_utc_ns: cap };
        let _ = validate_sender(&o(&a), &exp);
        let _ = validate_reflector(&o(&b), &exp);
        let _ = validate_pair(&o(&a), &o(&b), &exp);
    }

    #[test]
    fn framing_pass_never_changes_length(mut area in proptest::collection::vec(any::<u8>(), 0..200)) {
        let len = area.len();
        let _ = process_tlvs_in_place(&mut area, &mut FramingOnly);
        prop_assert_eq!(area.len(), len);
    }
}

#[test]
fn hmac_tlv_position_and_verification() {
    use ricochet_protocol::crypto::StampHmac;
    use ricochet_protocol::stamp::tlvs::{
        hmac_tlv_position, seal_hmac_tlv, verify_hmac_tlv, HmacTlvError,
    };
    // stamp-suite's authenticated captures: every HMAC TLV verifies with
    // the golden key (their README), in both directions.
    let h = StampHmac::new(b"stamp-golden-hmac-key-0123456789");
    let json = ricochet_testkit::decoded_json("stamp-suite-0.8.0", "stamp-auth-tlvs.decoded.json");
    let mut n = 0;
    for p in json["packets"].as_array().unwrap() {
        let b = ricochet_testkit::unhex(p["payload_hex"].as_str().unwrap());
        assert_eq!(verify_hmac_tlv(&h, &b[0..4], &b[112..], true), Ok(Some(32)));
        let mut bad = b.clone();
        bad[117] ^= 1;
        assert_eq!(
            verify_hmac_tlv(&h, &bad[0..4], &bad[112..], true),
            Err(HmacTlvError::Mismatch)
        );
        n += 1;
    }
    assert_eq!(n, 20);
    // Built here: CoS then HMAC, sealed, verifies; padding after is fine.
    let mut area = vec![0x80, 4, 0, 4, 0x28, 0, 0, 0, 0x80, 8, 0, 16];
    area.extend_from_slice(&[0; 16]);
    area.extend_from_slice(&[0x80, 1, 0, 4, 0, 0, 0, 0]);
    seal_hmac_tlv(&h, &[0, 0, 0, 9], &mut area, 8).unwrap();
    assert_eq!(verify_hmac_tlv(&h, &[0, 0, 0, 9], &area, true), Ok(Some(8)));
    assert_eq!(
        verify_hmac_tlv(&h, &[0, 0, 0, 8], &area, true),
        Err(HmacTlvError::Mismatch),
        "covers the Sequence Number"
    );
    // HMAC first, CoS after: misplaced.
    let mut mis = area[8..28].to_vec();
    mis.extend_from_slice(&area[0..8]);
    assert_eq!(
        hmac_tlv_position(&mis, false),
        Err(HmacTlvError::Misplaced { at: 0 })
    );
    // Missing: an error only when required.
    assert_eq!(
        hmac_tlv_position(&area[..8], true),
        Err(HmacTlvError::Missing)
    );
    assert_eq!(hmac_tlv_position(&area[..8], false), Ok(None));
    // Extra Padding alone needs none.
    assert_eq!(hmac_tlv_position(&area[28..], true), Ok(None));
}
