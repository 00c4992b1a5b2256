//! ESP SAs through `BpfSessionTable` (the control plane's interface), read
//! back from the pinned maps, and driven through the XDP program with
//! BPF_PROG_TEST_RUN: what `add_esp_sa` writes (keys slot of the inner
//! session, `esp_keys`, fresh `esp_state`, the `esp_sas` entry the program
//! matches), the rekey overlap (both inbound SPIs accepted, every SA sends
//! with the newest outbound half, and back when the newest goes), the
//! checks on a spec, and the socket table's Unsupported.

mod xdp_util;

use std::net::{IpAddr, SocketAddr};

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::EspKeys;
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::bpf::{
    BpfSessionTable, Counter, EspState, KeyMaterial, Origin, XdpAction, XdpMeta,
};
use ricochet_reflector::session_table::{
    EspInner, EspLifetime, EspMode, EspSaSpec, SessionSpec, SessionTable, TableError,
};
use ricochet_reflector::socket::{SocketSessionTable, TableConfig};
use xdp_util::*;

const SID: Sid = Sid([0x77; 16]);

fn session() -> SessionSpec {
    SessionSpec {
        sid: SID,
        sender: SocketAddr::new(IpAddr::V4(V4_PEER), PORT_PEER),
        reflector: SocketAddr::new(IpAddr::V4(V4_US), PORT_US),
        security: SecurityMode::Unauthenticated,
        format: SessionFormat::new(TestSecurity::Unauthenticated),
        dscp: 10,
        test_keys: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

fn sa(spi_in: u32, spi_out: u32, seed: u8) -> EspSaSpec {
    EspSaSpec {
        inbound_spi: spi_in,
        outbound_spi: spi_out,
        inbound_keys: EspKeys::gcm_from_keymat(&[seed; 20]).unwrap(),
        outbound_keys: EspKeys::gcm_from_keymat(&[seed + 1; 20]).unwrap(),
        esn: true,
        replay_window: 1024,
        lifetime: EspLifetime {
            packets: 1000,
            bytes: 0,
            time: None,
        },
        mode: EspMode::Tunnel,
        udp_encap: false,
        local: IpAddr::V4(V4_US),
        inner: EspInner::Session(SID),
    }
}

fn raw_esp(spi: u32) -> Vec<u8> {
    let mut e = spi.to_be_bytes().to_vec();
    e.extend_from_slice(&1u32.to_be_bytes());
    e.extend_from_slice(&pattern(8 + 48 + 16, 3));
    frame_v4(&[], ipv4(V4_PEER, V4_US, 64, 0, 50, &[], &e))
}

fn meta_of(p: &TestProg, spi: u32) -> Option<XdpMeta> {
    let r = p.test_run(&raw_esp(spi)).unwrap();
    assert_eq!(r.action, XdpAction::Pass);
    (r.data.len() > raw_esp(spi).len()).then(|| XdpMeta::parse(&r.data[..XdpMeta::LEN]).unwrap())
}

#[test]
fn esp_sa_lifecycle_through_the_table() {
    if skip() {
        return;
    }
    let p = load();
    let reg = std::env::temp_dir().join(format!(
        "{}.sessions",
        p.pin_dir().file_name().unwrap().to_string_lossy()
    ));
    let mut t = BpfSessionTable::open(p.pin_dir(), &reg).unwrap();

    // the inner session must exist and be started
    assert!(matches!(
        t.add_esp_sa(sa(0x1001, 0x2001, 1)),
        Err(TableError::NoSuchSession(_))
    ));
    t.add(session()).unwrap();
    assert!(matches!(
        t.add_esp_sa(sa(0x1001, 0x2001, 1)),
        Err(TableError::DataPlane(_))
    ));
    t.start(&SID).unwrap();
    // spec checks
    for (bad, why) in [
        (sa(0x00ff, 0x2001, 1), "reserved SPI"),
        (
            EspSaSpec {
                replay_window: 16,
                ..sa(0x1001, 0x2001, 1)
            },
            "window below 64",
        ),
        (
            EspSaSpec {
                outbound_keys: EspKeys::AesCbcHmacSha256 {
                    enc_key: vec![1; 16],
                    auth_key: vec![2; 32],
                },
                ..sa(0x1001, 0x2001, 1)
            },
            "transforms differ",
        ),
    ] {
        assert!(
            matches!(t.add_esp_sa(bad), Err(TableError::EspSa { .. })),
            "{why}"
        );
    }
    assert_eq!(
        meta_of(&p, 0x1001),
        None,
        "nothing installed by a refused spec"
    );

    // before the SA, the session's clear probes are reflected in XDP
    let clear = frame_v4(
        &[],
        ipv4_udp(
            V4_PEER,
            V4_US,
            64,
            0,
            &[],
            PORT_PEER,
            PORT_US,
            &twamp_sender(1, [0x11; 8], 1, &[]),
        ),
    );
    assert_eq!(p.test_run(&clear).unwrap().action, XdpAction::Tx);
    t.add_esp_sa(sa(0x1001, 0x2001, 1)).unwrap();
    // from now on they must come inside ESP (RFC 4301 PROTECT)
    assert_eq!(p.test_run(&clear).unwrap().action, XdpAction::Drop);
    assert_eq!(p.maps().counters().unwrap().get(Counter::DropNotEsp), 1);
    assert!(matches!(
        t.add_esp_sa(sa(0x1001, 0x2009, 5)),
        Err(TableError::EspSa { .. })
    ));
    // the unauthenticated inner session got a keys slot of its own
    let inner = p.maps().read_keys(0).unwrap().expect("inner slot 0");
    assert!(matches!(inner.keys, KeyMaterial::TwampOpen));
    assert_eq!(inner.sender, Some(session().sender));
    assert_eq!(inner.dscp, 10);
    // esp_keys of slot 0, and the program hands SPI 0x1001 off with it
    let k1 = p.maps().read_esp_keys(0).unwrap().expect("esp slot 0");
    assert_eq!((k1.spi_in, k1.spi_out, k1.tx_state), (0x1001, 0x2001, 0));
    assert_eq!((k1.inner_slot, k1.inner_generation), (0, inner.generation));
    assert!(k1.esn && k1.tunnel && !k1.udp);
    assert_eq!((k1.replay_window, k1.life_packets), (1024, 1000));
    assert_eq!(k1.selectors.local, session().reflector);
    assert_eq!(k1.selectors.remote, session().sender);
    assert_eq!(k1.key_in, EspKeys::gcm_from_keymat(&[1; 20]).unwrap());
    let m = meta_of(&p, 0x1001).expect("handed off");
    assert_eq!(m.origin().unwrap(), Origin::Esp);
    assert_eq!((m.slot, m.generation), (0, k1.generation));
    assert_eq!(meta_of(&p, 0x1002), None, "unknown SPI passed");

    assert_eq!(k1.tx_next, None, "nothing to switch to");

    // rekey: SA 2 added; both SPIs handed off. The outbound switch is
    // deferred (RFC 7296 §2.8): SA 1 still sends with its own half and
    // names SA 2 (slot 1) as the one to switch to (new generation, same SA)
    t.add_esp_sa(sa(0x1002, 0x2002, 3)).unwrap();
    let k2 = p.maps().read_esp_keys(1).unwrap().expect("esp slot 1");
    assert_eq!((k2.spi_in, k2.spi_out, k2.tx_state), (0x1002, 0x2002, 1));
    assert_eq!(k2.tx_next, None, "the newest sends with its own half");
    assert_eq!(k2.inner_slot, 0, "the same inner session");
    let k1b = p.maps().read_esp_keys(0).unwrap().unwrap();
    assert_eq!((k1b.spi_in, k1b.spi_out, k1b.tx_state), (0x1001, 0x2001, 0));
    assert_eq!(k1b.tx_next, Some(1), "switches once slot 1 authenticates");
    assert_eq!(k1b.key_out, k1.key_out, "still its own outbound keys");
    assert_eq!(k1b.key_in, k1.key_in, "SA 1 still opens with its own keys");
    assert_eq!(k1b.instance, k1.instance, "same SA: window kept by pollers");
    assert!(k1b.generation != k1.generation);
    assert_eq!(meta_of(&p, 0x1001).unwrap().generation, k1b.generation);
    assert_eq!(meta_of(&p, 0x1002).unwrap().slot, 1);

    // a packet authenticated on SA 2 (what a poller counts); a further
    // rekey (SA 3) then keeps SA 1 on SA 2's half, which the pollers had
    // switched it to, and names SA 3 for both older SAs
    let shared = p.maps().esp_state_shared().unwrap();
    shared.add(1, EspState::W_RX_PACKETS, 1);
    t.add_esp_sa(sa(0x1004, 0x2004, 11)).unwrap();
    let k1s = p.maps().read_esp_keys(0).unwrap().unwrap();
    assert_eq!(
        (k1s.spi_out, k1s.tx_state, k1s.tx_next),
        (0x2002, 1, Some(2))
    );
    assert_eq!(k1s.key_out, k2.key_out);
    let k2s = p.maps().read_esp_keys(1).unwrap().unwrap();
    assert_eq!(
        (k2s.spi_out, k2s.tx_state, k2s.tx_next),
        (0x2002, 1, Some(2))
    );
    // SA 3 abandoned (rollback): SA 2 is the newest again, on its own
    // half; SA 1 stays on SA 2's half
    t.remove_esp_sa(0x1004).unwrap();
    let k2r = p.maps().read_esp_keys(1).unwrap().unwrap();
    assert_eq!((k2r.spi_out, k2r.tx_state, k2r.tx_next), (0x2002, 1, None));
    let k1r = p.maps().read_esp_keys(0).unwrap().unwrap();
    assert_eq!(
        (k1r.spi_out, k1r.tx_state, k1r.tx_next),
        (0x2002, 1, Some(1))
    );

    // the newest goes (rekey abandoned): SA 1 back on its own half
    t.remove_esp_sa(0x1002).unwrap();
    assert_eq!(meta_of(&p, 0x1002), None);
    assert!(p.maps().read_esp_keys(1).unwrap().is_none(), "slot zeroed");
    let k1c = p.maps().read_esp_keys(0).unwrap().unwrap();
    assert_eq!((k1c.spi_out, k1c.tx_state, k1c.tx_next), (0x2001, 0, None));
    assert_eq!(k1c.key_out, k1.key_out);
    assert_eq!(meta_of(&p, 0x1001).unwrap().generation, k1c.generation);

    // counters: the program's hand-offs are visible, the pollers' are zero
    let a = t.esp_sa_activity(0x1001).unwrap();
    assert_eq!((a.rx_packets, a.tx_seq, a.rekey_needed), (0, 0, 0));
    assert_eq!(
        p.maps().counters().unwrap().get(Counter::RedirectNoXsk),
        4,
        "four hand-offs (no socket in a test run)"
    );
    assert!(t.esp_sa_activity(0x1002).is_none());
    assert!(matches!(
        t.remove_esp_sa(0x1002),
        Err(TableError::EspSa { .. })
    ));

    // a time lifetime: hard expiry, and the rekey signal at 90 %
    t.add_esp_sa(EspSaSpec {
        lifetime: EspLifetime {
            packets: 0,
            bytes: 0,
            time: Some(std::time::Duration::from_secs(100)),
        },
        ..sa(0x1003, 0x2003, 7)
    })
    .unwrap();
    let k3 = p.maps().read_esp_keys(1).unwrap().unwrap();
    let now = tai_ns();
    assert!(k3.expires_ns > now + 99_000_000_000 && k3.expires_ns <= now + 100_000_000_000);
    assert_eq!(k3.expires_ns - k3.rekey_ns, 10_000_000_000);
    t.remove_esp_sa(0x1003).unwrap();

    // a CHILD_SA removed and bound again (the next session) continues its
    // outbound sequence numbers: never reused under the same key
    shared.add(0, EspState::W_TX_SEQ, 5);
    t.remove_esp_sa(0x1001).unwrap();
    t.add_esp_sa(sa(0x1001, 0x2001, 1)).unwrap();
    let again = t.esp_sa_activity(0x1001).unwrap();
    assert_eq!((again.tx_seq, again.tx_packets), (5, 0));
    // other keys under the same SPI start from 1
    t.remove_esp_sa(0x1001).unwrap();
    t.add_esp_sa(sa(0x1001, 0x2001, 21)).unwrap();
    assert_eq!(t.esp_sa_activity(0x1001).unwrap().tx_seq, 0);

    // removing the session frees its inner slot
    t.remove_esp_sa(0x1001).unwrap();
    t.remove(&SID).unwrap();
    assert!(p.maps().read_keys(0).unwrap().is_none());
    let _ = std::fs::remove_file(&reg);
}

/// A restarted control plane (a new table on the same pins and registry)
/// takes the pinned SAs over: still served, found by SPI, their slots not
/// handed out again, and a rekey after the restart names the new SA to
/// switch to.
#[test]
fn a_restarted_table_takes_the_pinned_sas_over() {
    if skip() {
        return;
    }
    let p = load();
    let reg = std::env::temp_dir().join(format!(
        "{}.sessions",
        p.pin_dir().file_name().unwrap().to_string_lossy()
    ));
    let mut t = BpfSessionTable::open(p.pin_dir(), &reg).unwrap();
    t.add(session()).unwrap();
    t.start(&SID).unwrap();
    t.add_esp_sa(sa(0x1001, 0x2001, 1)).unwrap();
    drop(t);

    let mut t = BpfSessionTable::open(p.pin_dir(), &reg).unwrap();
    assert!(t.esp_sa_activity(0x1001).is_some(), "found by SPI");
    assert_eq!(meta_of(&p, 0x1001).unwrap().slot, 0, "still handed off");
    // rekey after the restart: new slots, and SA 1 waits for SA 2
    t.add_esp_sa(sa(0x1002, 0x2002, 3)).unwrap();
    let k2 = p
        .maps()
        .read_esp_keys(1)
        .unwrap()
        .expect("slot 1, not 0 again");
    assert_eq!(k2.spi_in, 0x1002);
    assert_eq!(k2.inner_slot, 0, "the same inner slot (from the registry)");
    let k1 = p.maps().read_esp_keys(0).unwrap().unwrap();
    assert_eq!(
        (k1.spi_in, k1.spi_out, k1.tx_state, k1.tx_next),
        (0x1001, 0x2001, 0, Some(1))
    );
    // a new session does not get the inner slot of the first one
    let mut other = session();
    other.sid = Sid([0x78; 16]);
    other.sender = SocketAddr::new(IpAddr::V4(V4_PEER), PORT_PEER + 1);
    other.security = SecurityMode::Authenticated;
    other.format = SessionFormat::new(TestSecurity::Authenticated);
    other.test_keys = Some(ricochet_protocol::crypto::SessionKeys {
        aes: [1; 16],
        hmac: [2; 32],
    });
    t.add(other).unwrap();
    t.start(&Sid([0x78; 16])).unwrap();
    assert!(matches!(
        p.maps().read_keys(0).unwrap().unwrap().keys,
        KeyMaterial::TwampOpen
    ));
    t.remove_esp_sa(0x1001).unwrap();
    t.remove_esp_sa(0x1002).unwrap();
    assert_eq!(meta_of(&p, 0x1001), None);
    let _ = std::fs::remove_file(&reg);
}

#[test]
fn the_socket_table_has_no_esp() {
    let mut t = SocketSessionTable::spawn(&TableConfig::default()).unwrap();
    match t.add_esp_sa(sa(0x1001, 0x2001, 1)) {
        Err(TableError::Unsupported(why)) => assert!(why.contains("no ESP"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(matches!(
        t.remove_esp_sa(0x1001),
        Err(TableError::Unsupported(_))
    ));
}
