//! [`BpfSessionTable`] against the real XDP program: sessions programmed
//! through the table, frames built from raw bytes (`xdp_util`, independent of
//! the code under test) run through BPF_PROG_TEST_RUN.
//!
//! Needs root (CI runs as root).

mod xdp_util;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::SessionKeys;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::bpf::{
    BpfSessionTable, ClockState, EntryConfig, EntryFlags, KeyMaterial, Mode, SessionKey, XdpAction,
};
use ricochet_reflector::session_table::{SessionSpec, SessionTable, TableError};
use xdp_util::*;

/// The SID and test keys of test-vectors.md (perfSONAR encrypted session).
const SID: [u8; 16] = [
    0x7f, 0x00, 0x00, 0x01, 0xee, 0xb3, 0x81, 0xc8, 0x39, 0x7c, 0xd4, 0x66, 0xd5, 0x66, 0xe8, 0x88,
];
const TEST_AES: [u8; 16] = [
    0x2c, 0x8c, 0x50, 0xe4, 0x55, 0xff, 0xbb, 0x00, 0xce, 0x98, 0x20, 0xf0, 0x68, 0x87, 0x06, 0x6d,
];
const TEST_HMAC: [u8; 32] = [
    0x10, 0xe4, 0xab, 0x92, 0xad, 0xce, 0xb4, 0xce, 0x84, 0x12, 0x34, 0x11, 0x15, 0x2d, 0xf1, 0x6f,
    0x44, 0x2b, 0xb1, 0x60, 0x4b, 0xb2, 0xb4, 0x29, 0xa6, 0x1b, 0x8a, 0x91, 0x1f, 0xb0, 0x99, 0xfd,
];

fn us() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(V4_US), PORT_US)
}
fn peer(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(V4_PEER), port)
}

/// A registry file path unique to this test, removed on drop.
struct Registry(PathBuf);
impl Registry {
    fn new(p: &TestProg) -> Registry {
        let name = p
            .pin_dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Registry(std::env::temp_dir().join(format!("{name}.sessions")))
    }
}
impl Drop for Registry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spec(sid: [u8; 16], sender_port: u16, security: SecurityMode) -> SessionSpec {
    let (ts, keys) = match security {
        SecurityMode::Authenticated => (TestSecurity::Authenticated, true),
        SecurityMode::Encrypted => (TestSecurity::Encrypted, true),
        _ => (TestSecurity::Unauthenticated, false),
    };
    SessionSpec {
        sid: Sid(sid),
        sender: peer(sender_port),
        reflector: us(),
        security,
        format: SessionFormat::new(ts),
        dscp: 46,
        test_keys: keys.then(|| SessionKeys {
            aes: TEST_AES,
            hmac: TEST_HMAC,
        }),
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

fn setup() -> (TestProg, Registry, BpfSessionTable) {
    let p = load();
    p.maps()
        .write_clock(&ClockState {
            tai_offset: kernel_tai_offset(),
            error_estimate: 0x8a05,
            flags: 0,
            updated_ns: tai_ns(),
        })
        .unwrap();
    let r = Registry::new(&p);
    let t = BpfSessionTable::open(p.pin_dir(), &r.0).unwrap();
    (p, r, t)
}

/// An unauthenticated TWAMP probe (41 octets + 0 padding) from `sport`.
fn probe(sport: u16) -> Vec<u8> {
    let payload = twamp_sender(7, [0x11; 8], 0x0001, &[]);
    frame_v4(
        &[],
        ipv4_udp(V4_PEER, V4_US, 255, 0, &[], sport, PORT_US, &payload),
    )
}

#[test]
fn reflected_only_between_start_and_remove() {
    if skip() {
        return;
    }
    let (p, _r, mut t) = setup();
    t.add(spec(SID, PORT_PEER, SecurityMode::Unauthenticated))
        .unwrap();
    assert_eq!(
        p.test_run(&probe(PORT_PEER)).unwrap().action,
        XdpAction::Pass
    );
    assert_eq!(t.sessions(), vec![Sid(SID)]);

    t.start(&Sid(SID)).unwrap();
    let out = p.test_run(&probe(PORT_PEER)).unwrap();
    assert_eq!(out.action, XdpAction::Tx);
    let l = layout(&out.data);
    // DSCP 46 from the spec (Type-P), in the reply's TOS.
    assert_eq!(out.data[l.l3 + 1] >> 2, 46);
    // A different source port is not this session.
    assert_eq!(
        p.test_run(&probe(PORT_PEER + 1)).unwrap().action,
        XdpAction::Pass
    );

    let a = t.activity(&Sid(SID)).unwrap();
    assert_eq!(a.reflected, 1);
    assert_eq!(a.dropped, 0);
    assert!(a.idle.is_some());

    let e = t
        .maps()
        .session(&SessionKey::new(us(), peer(PORT_PEER)).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(e.config.mode, Mode::Twamp);
    assert!(e.config.flags.contains(EntryFlags::SET_DSCP));
    assert!(!e.config.flags.contains(EntryFlags::PTP));

    t.remove(&Sid(SID)).unwrap();
    assert_eq!(
        p.test_run(&probe(PORT_PEER)).unwrap().action,
        XdpAction::Pass
    );
    assert!(t.sessions().is_empty());
    assert!(t.activity(&Sid(SID)).is_none());
    assert_eq!(
        t.remove(&Sid(SID)),
        Err(TableError::NoSuchSession(Sid(SID)))
    );
}

#[test]
fn duplicate_sid_and_tuple_are_refused() {
    if skip() {
        return;
    }
    let (_p, _r, mut t) = setup();
    t.add(spec(SID, PORT_PEER, SecurityMode::Unauthenticated))
        .unwrap();
    assert_eq!(
        t.add(spec(SID, PORT_PEER + 1, SecurityMode::Unauthenticated)),
        Err(TableError::Exists(Sid(SID)))
    );
    let mut other = SID;
    other[15] ^= 1;
    assert!(matches!(
        t.add(spec(other, PORT_PEER, SecurityMode::Unauthenticated)),
        Err(TableError::Address(..))
    ));
    // Authenticated without keys.
    let mut s = spec(other, PORT_PEER + 2, SecurityMode::Authenticated);
    s.test_keys = None;
    assert!(matches!(t.add(s), Err(TableError::DataPlane(_))));
}

#[test]
fn secured_session_keys_land_in_the_keys_map_and_are_cleared() {
    if skip() {
        return;
    }
    let (p, _r, mut t) = setup();
    for (i, mode) in [SecurityMode::Authenticated, SecurityMode::Encrypted]
        .into_iter()
        .enumerate()
    {
        let mut sid = SID;
        sid[0] = i as u8;
        let port = PORT_PEER + i as u16;
        t.add(spec(sid, port, mode)).unwrap();
        t.start(&Sid(sid)).unwrap();
        let e = p
            .maps()
            .session(&SessionKey::new(us(), peer(port)).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(e.config.mode, Mode::Secured);
        assert_eq!(e.config.slot, i as u32, "lowest free slot");
        let k = p.maps().read_keys(e.config.slot).unwrap().expect("keys");
        assert_eq!(k.generation, e.config.generation);
        assert_eq!(k.sender, Some(peer(port)));
        assert_eq!(k.dscp, 46);
        let keys = match (&k.keys, mode) {
            (KeyMaterial::TwampAuthenticated(k), SecurityMode::Authenticated) => k,
            (KeyMaterial::TwampEncrypted(k), SecurityMode::Encrypted) => k,
            (other, _) => panic!("wrong key material {other:?} for {mode:?}"),
        };
        assert_eq!(keys.aes, TEST_AES);
        assert_eq!(keys.hmac, TEST_HMAC);
    }
    let mut sid0 = SID;
    sid0[0] = 0;
    t.remove(&Sid(sid0)).unwrap();
    assert!(p.maps().read_keys(0).unwrap().is_none(), "slot 0 zeroed");
    assert!(p.maps().read_keys(1).unwrap().is_some(), "slot 1 untouched");
    // The freed slot is reused.
    let mut sid2 = SID;
    sid2[0] = 2;
    t.add(spec(sid2, PORT_PEER + 5, SecurityMode::Authenticated))
        .unwrap();
    t.start(&Sid(sid2)).unwrap();
    assert!(p.maps().read_keys(0).unwrap().is_some());
}

#[test]
fn stop_keeps_reflecting_until_the_grace_is_over() {
    if skip() {
        return;
    }
    let (p, _r, mut t) = setup();
    t.add(spec(SID, PORT_PEER, SecurityMode::Unauthenticated))
        .unwrap();
    t.start(&Sid(SID)).unwrap();
    t.stop(&Sid(SID), Duration::from_millis(300)).unwrap();
    assert_eq!(t.sweep(), 0);
    assert_eq!(p.test_run(&probe(PORT_PEER)).unwrap().action, XdpAction::Tx);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(t.sweep(), 1);
    assert_eq!(
        p.test_run(&probe(PORT_PEER)).unwrap().action,
        XdpAction::Pass
    );
    assert!(t.sessions().is_empty());

    // Stopping a session that never started removes it at once.
    t.add(spec(SID, PORT_PEER, SecurityMode::Unauthenticated))
        .unwrap();
    t.stop(&Sid(SID), Duration::from_secs(60)).unwrap();
    assert!(t.sessions().is_empty());
}

/// A session stopped by the previous control plane is over for the next
/// one once its grace has passed (no activity), even before a sweep.
#[test]
fn a_stopped_session_has_no_activity_after_its_grace() {
    if skip() {
        return;
    }
    let (p, r, mut t) = setup();
    t.add(spec(SID, PORT_PEER, SecurityMode::Unauthenticated))
        .unwrap();
    t.start(&Sid(SID)).unwrap();
    t.stop(&Sid(SID), Duration::from_secs(2)).unwrap();
    drop(t);
    let t2 = BpfSessionTable::open(p.pin_dir(), &r.0).unwrap();
    assert!(t2.activity(&Sid(SID)).is_some(), "within its grace");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t2.activity(&Sid(SID)).is_some() {
        assert!(std::time::Instant::now() < deadline, "grace never ended");
        std::thread::sleep(Duration::from_millis(20)); // polling a deadline, bounded
    }
    assert_eq!(t2.sessions(), vec![Sid(SID)], "not swept yet");
}

#[test]
fn a_restarted_control_plane_lists_and_removes_pinned_sessions() {
    if skip() {
        return;
    }
    let (p, r, mut t) = setup();
    let mut sid_b = SID;
    sid_b[15] = 0;
    t.add(spec(SID, PORT_PEER, SecurityMode::Unauthenticated))
        .unwrap();
    t.start(&Sid(SID)).unwrap();
    t.add(spec(sid_b, PORT_PEER + 1, SecurityMode::Encrypted))
        .unwrap();
    t.start(&Sid(sid_b)).unwrap();
    t.stop(&Sid(sid_b), Duration::from_secs(3600)).unwrap();
    drop(t);

    let mut t2 = BpfSessionTable::open(p.pin_dir(), &r.0).unwrap();
    let mut want = vec![Sid(SID), Sid(sid_b)];
    want.sort_by_key(|s| s.0);
    assert_eq!(t2.sessions(), want);
    // What a restarted control plane needs to adopt them.
    assert!(t2.outlives_process());
    assert_eq!(t2.reflector_addr(&Sid(SID)), Some(us()));
    assert_eq!(t2.reflector_addr(&Sid([9; 16])), None);
    assert!(t2.orphans().unwrap().is_empty());
    assert_eq!(t2.activity(&Sid(SID)).unwrap().reflected, 0);

    // Removing through the new table deletes the entry and zeroes the slot.
    t2.remove(&Sid(sid_b)).unwrap();
    assert!(p.maps().read_keys(0).unwrap().is_none());
    assert!(p
        .maps()
        .session(&SessionKey::new(us(), peer(PORT_PEER + 1)).unwrap())
        .unwrap()
        .is_none());

    // An entry written behind the table's back is an orphan.
    let stray = SessionKey::new(us(), peer(PORT_PEER + 9)).unwrap();
    p.maps()
        .insert_session(&stray, &EntryConfig::new(Mode::Twamp, 0))
        .unwrap();
    assert_eq!(t2.orphans().unwrap(), vec![stray]);

    // A third table still sees only what is left.
    drop(t2);
    let t3 = BpfSessionTable::open(p.pin_dir(), &r.0).unwrap();
    assert_eq!(t3.sessions(), vec![Sid(SID)]);
}

#[test]
fn listeners_reflect_until_removed_and_secured_ones_get_a_slot() {
    if skip() {
        return;
    }
    use ricochet_reflector::session_table::{ListenerKind, ListenerSpec};
    let (p, _r, mut t) = setup();
    let stamp = |sport: u16| {
        let payload = stamp_sender(3, [0x22; 8], 0x0001, 0, &[]);
        frame_v4(
            &[],
            ipv4_udp(V4_PEER, V4_US, 255, 0, &[], sport, PORT_US, &payload),
        )
    };
    let local = SocketAddr::new(IpAddr::V4(V4_US), PORT_US);
    assert_eq!(
        p.test_run(&stamp(PORT_PEER)).unwrap().action,
        XdpAction::Pass
    );
    t.add_listener(ListenerSpec {
        local,
        kind: ListenerKind::Unauthenticated,
        dscp: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    })
    .unwrap();
    // Any sender port: a listener has no source check.
    assert_eq!(p.test_run(&stamp(PORT_PEER)).unwrap().action, XdpAction::Tx);
    assert_eq!(
        p.test_run(&stamp(PORT_PEER + 7)).unwrap().action,
        XdpAction::Tx
    );
    assert!(matches!(
        t.add_listener(ListenerSpec {
            local,
            kind: ListenerKind::Unauthenticated,
            dscp: None,
            rate_limit_pps: 0,
            rate_burst: 0,
        }),
        Err(TableError::Address(..))
    ));
    t.remove_listener(local).unwrap();
    assert_eq!(
        p.test_run(&stamp(PORT_PEER)).unwrap().action,
        XdpAction::Pass
    );
    assert!(t.remove_listener(local).is_err());

    // Authenticated STAMP on every IPv4 address: a slot with the key.
    let any = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8620);
    t.add_listener(ListenerSpec {
        local: any,
        kind: ListenerKind::StampAuthenticated {
            key: zeroize::Zeroizing::new([0x5a; 32]),
        },
        dscp: Some(10),
        rate_limit_pps: 0,
        rate_burst: 0,
    })
    .unwrap();
    let k = p.maps().read_keys(0).unwrap().expect("keys of slot 0");
    match &k.keys {
        KeyMaterial::StampAuthenticated(key) => assert_eq!(**key, [0x5a; 32]),
        other => panic!("wrong key material {other:?}"),
    }
    assert_eq!(k.sender, None);
    assert_eq!(k.dscp, 10);
    t.remove_listener(any).unwrap();
    assert!(p.maps().read_keys(0).unwrap().is_none());
}

/// A stateful STAMP session: a secured `sessions` entry for the 4-tuple
/// whose keys slot names a STAMP session with its SSID, PTP flag, DSCP and
/// (zero-padded) HMAC key; the XDP program redirects its packets instead of
/// reflecting them; removal clears entry and slot; a key longer than the
/// slot and a second session on the same 4-tuple are refused.
#[test]
fn stamp_sessions_become_secured_entries_with_stamp_keys() {
    use ricochet_protocol::time::TimeFormat;
    use ricochet_reflector::session_table::StampSessionSpec;
    use ricochet_reflector::stamp_engine::CosPolicy;
    if skip() {
        return;
    }
    let (p, r, mut t) = setup();
    let stamp = |ssid: u16, key: Option<Vec<u8>>| StampSessionSpec {
        sender: peer(PORT_PEER),
        local: us(),
        ssid,
        key: key.map(zeroize::Zeroizing::new),
        timestamp_format: TimeFormat::Ptp,
        dscp: Some(10),
        // DSCP 10 and 46 (EF) only, and member link 9: the pollers must
        // get both (issue 8: the AF_XDP path ignored them).
        cos_policy: CosPolicy((1 << 10) | (1 << 46)),
        micro_session_id: Some(9),
        rate_limit_pps: 0,
        rate_burst: 0,
    };
    let s = stamp(0x1234, Some(vec![0xab; 20]));
    t.add_stamp_session(s.clone()).unwrap();
    let e = p
        .maps()
        .session(&SessionKey::new(us(), peer(PORT_PEER)).unwrap())
        .unwrap()
        .expect("sessions entry");
    assert_eq!(e.config.mode, Mode::Secured);
    assert!(
        e.config.flags.contains(EntryFlags::XSK_REFUSED),
        "refused packets reach the poller to be counted (R_RxC)"
    );
    let k = p.maps().read_keys(e.config.slot).unwrap().expect("keys");
    assert_eq!(k.sender, Some(peer(PORT_PEER)));
    assert!(k.flags.contains(EntryFlags::PTP));
    assert!(k.flags.contains(EntryFlags::SET_DSCP));
    assert_eq!(k.dscp, 10);
    match &k.keys {
        KeyMaterial::StampSession {
            ssid: 0x1234,
            key: Some(key),
            cos_allowed_dscp,
            micro_session_id,
        } => {
            assert_eq!(&key[..20], &[0xab; 20]);
            assert_eq!(&key[20..], &[0; 12], "zero-padded: the same HMAC");
            assert_eq!(*cos_allowed_dscp, (1 << 10) | (1 << 46));
            assert_eq!(*micro_session_id, Some(9));
        }
        other => panic!("wrong key material {other:?}"),
    }
    assert_eq!(t.stamp_activity(&s.id()).unwrap().reflected, 0);
    // Same 4-tuple, other SSID: the map holds one entry per 4-tuple.
    assert!(t.add_stamp_session(stamp(7, None)).is_err());
    assert!(t.add_stamp_session(s.clone()).is_err(), "twice");
    let mut long = stamp(9, Some(vec![1; 33]));
    long.sender = peer(PORT_PEER + 1);
    assert!(matches!(
        t.add_stamp_session(long),
        Err(TableError::DataPlane(_))
    ));
    t.remove_stamp_session(&s.id()).unwrap();
    assert!(p
        .maps()
        .session(&SessionKey::new(us(), peer(PORT_PEER)).unwrap())
        .unwrap()
        .is_none());
    assert!(p.maps().read_keys(e.config.slot).unwrap().is_none());
    assert!(t.remove_stamp_session(&s.id()).is_err());

    // A restarted control plane installs its configured session again over
    // what the earlier run left in the maps.
    t.add_stamp_session(s.clone()).unwrap();
    drop(t);
    let mut t2 = BpfSessionTable::open(p.pin_dir(), &r.0).unwrap();
    t2.add_stamp_session(s.clone()).unwrap();
    let e2 = p
        .maps()
        .session(&SessionKey::new(us(), peer(PORT_PEER)).unwrap())
        .unwrap()
        .expect("replaced entry");
    let k2 = p.maps().read_keys(e2.config.slot).unwrap().expect("keys");
    assert!(matches!(
        k2.keys,
        KeyMaterial::StampSession { ssid: 0x1234, .. }
    ));
    assert_eq!(k2.generation, e2.config.generation);
}
