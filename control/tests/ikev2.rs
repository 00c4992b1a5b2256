//! RFC 7717 in the daemon over loopback TCP: IKEv2-derived secrets from the
//! SA file, Accept 6 for an unknown SA, the derived key kept for a running
//! connection after its SA is deleted (RFC 7717 §5.1), the PBKDF2 knob, and
//! the draft-era greeting probe. The SA is strongSwan 5.9.8's golden
//! scenario a (`shared/interop/strongswan-5.9.8/README.md`): its SPIs and
//! its `prf(SK_d, "IPPM")` as charon derived them.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use ricochet_control::config::TokenKeyMode;
use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientError, ClientEvent, ClientRandom};
use ricochet_protocol::control::{greeting, ServerGreetingRepr};
use ricochet_protocol::crypto::test_keys::derive_test_keys;
use ricochet_protocol::crypto::{SessionKeys, SharedSecret, TokenKeyDerivation};
use ricochet_protocol::modes::Modes;
use ricochet_protocol::sa_records::SaId;
use support::*;

const SPI_I: &str = "30c8551b66ef2dcf";
const SPI_R: &str = "0a873f74e95d606b";
const IPPM: &str = "7ade39607d19e8cac7a1e1a356d7549c9364fae430c1c1de669aa0ffeef01b13";

fn golden_id() -> SaId {
    let mut id = SaId {
        spi_i: [0; 8],
        spi_r: [0; 8],
    };
    hex::decode_to_slice(SPI_I, &mut id.spi_i).expect("hex");
    hex::decode_to_slice(SPI_R, &mut id.spi_r).expect("hex");
    id
}

fn golden_record() -> String {
    format!("# fed by an IKE daemon\n{SPI_I} {SPI_R} prfsha256 {IPPM}\n")
}

/// The configuration of `support::config` plus `[ikev2] sa_file`.
fn ike_config(dir: &TempDir, token_key: TokenKeyMode) -> ricochet_control::config::Config {
    let mut c = config(dir, &ALL_SECURITY);
    c.ikev2.sa_file = Some(dir.file("ikev2.sas", &golden_record(), 0o600));
    c.ikev2.token_key = token_key;
    c
}

/// A client holding an RFC 7717 key: KeyID = SPIi ‖ SPIr, secret =
/// prf(SK_d, "IPPM").
fn ike_conn(
    addr: SocketAddr,
    allowed: Modes,
    sa: SaId,
    secret: &str,
    how: TokenKeyDerivation,
) -> TwampConn {
    let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut octets = [0u8; 64];
    getrandom::fill(&mut octets).expect("random");
    let keys = SessionKeys::from_bytes(octets[..48].try_into().expect("48"));
    let mut client = Client::new(
        ClientConfig {
            allowed,
            wanted: Modes::NONE,
            key_id: Some(sa.key_id()),
            secret: Some(SharedSecret::new(hex::decode(secret).expect("hex"))),
            max_count: 32768,
            max_sessions: 10,
        },
        ClientRandom {
            session_keys: keys.clone(),
            client_iv: octets[48..].try_into().expect("16"),
        },
    );
    client.use_ikev2_key(how);
    TwampConn {
        stream,
        client,
        keys,
    }
}

/// Replace the SA file the way an IKE daemon should: write aside, rename.
fn rewrite(path: &Path, text: &str, dir: &TempDir) {
    let tmp = dir.file("ikev2.sas.tmp", text, 0o600);
    std::fs::rename(tmp, path).expect("rename");
}

#[test]
fn ikev2_derived_authenticated_encrypted_and_mixed_modes_run() {
    let dir = TempDir::new("ike-modes");
    let d = TestDaemon::start(ike_config(&dir, TokenKeyMode::Pbkdf2), timing());
    for (i, mode) in [Modes::AUTHENTICATED, Modes::ENCRYPTED, Modes::MIXED]
        .into_iter()
        .enumerate()
    {
        let mut conn = ike_conn(d.v4(), mode, golden_id(), IPPM, TokenKeyDerivation::Pbkdf2);
        match conn.event() {
            ClientEvent::SetupSent { selection, offered } => {
                // A configured source makes the daemon offer 0x80 with the
                // security modes (RFC 7717 §5.2).
                assert_eq!(offered.bits(), 0x8f, "{offered}");
                assert_eq!(selection.modes().bits(), mode.bits() | 0x80);
            }
            other => panic!("{other:?}"),
        }
        conn.setup().expect("the golden SA's key is accepted");
        let (_, sid) = conn
            .request(&request(d.v4().ip(), 41000 + i as u16, 0))
            .expect("session accepted");
        let spec = d.recording.session(&sid).spec;
        if mode == Modes::MIXED {
            assert!(spec.test_keys.is_none());
        } else {
            // Test keys come from the token's session keys (RFC 4656 §4.1.2).
            let expected = derive_test_keys(&conn.keys, &sid.0);
            let got = spec.test_keys.expect("test keys");
            assert_eq!((got.aes, got.hmac), (expected.aes, expected.hmac));
        }
        assert_eq!(conn.start(1), Accept::Ok);
        conn.stop();
    }
}

#[test]
fn an_unknown_sa_is_refused_with_accept_6() {
    let dir = TempDir::new("ike-unknown");
    let d = TestDaemon::start(ike_config(&dir, TokenKeyMode::Pbkdf2), timing());
    // The same secret under reversed SPIs: another (unknown) SA.
    let reversed = SaId {
        spi_i: golden_id().spi_r,
        spi_r: golden_id().spi_i,
    };
    let mut conn = ike_conn(
        d.v4(),
        Modes::ENCRYPTED,
        reversed,
        IPPM,
        TokenKeyDerivation::Pbkdf2,
    );
    assert_eq!(conn.setup(), Err(Accept::Ikev2SaNotFound));
    assert!(conn.read_to_close().is_empty(), "closed after Server-Start");
    // A known SA with the wrong secret is a plain failure (Accept 1).
    let wrong = "00".repeat(32);
    let mut conn = ike_conn(
        d.v4(),
        Modes::AUTHENTICATED,
        golden_id(),
        &wrong,
        TokenKeyDerivation::Pbkdf2,
    );
    assert_eq!(conn.setup(), Err(Accept::Failure));
}

#[test]
fn the_derived_key_outlives_its_sa_for_the_running_connection() {
    let dir = TempDir::new("ike-rekey");
    let c = ike_config(&dir, TokenKeyMode::Pbkdf2);
    let path = c.ikev2.sa_file.clone().expect("file");
    let d = TestDaemon::start(c, timing());
    let mut old = ike_conn(
        d.v4(),
        Modes::ENCRYPTED,
        golden_id(),
        IPPM,
        TokenKeyDerivation::Pbkdf2,
    );
    old.setup().expect("set up under the old SA");

    // The IKE SA is rekeyed: the daemon's file now lists only the new SA.
    let new_secret = "5a".repeat(32);
    rewrite(
        &path,
        &format!("1111111111111111 2222222222222222 prfsha256 {new_secret}\n"),
        &dir,
    );
    // Poll until the sweep has re-read the file: a new connection naming the
    // old SA is refused with Accept 6 (RFC 7717 §5.3).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut probe = ike_conn(
            d.v4(),
            Modes::ENCRYPTED,
            golden_id(),
            IPPM,
            TokenKeyDerivation::Pbkdf2,
        );
        match probe.setup() {
            Err(Accept::Ikev2SaNotFound) => break,
            Ok(()) => assert!(std::time::Instant::now() < deadline, "file never re-read"),
            Err(other) => panic!("{other:?}"),
        }
    }
    // New connections use the new SA.
    let new_id = SaId {
        spi_i: [0x11; 8],
        spi_r: [0x22; 8],
    };
    let mut fresh = ike_conn(
        d.v4(),
        Modes::AUTHENTICATED,
        new_id,
        &new_secret,
        TokenKeyDerivation::Pbkdf2,
    );
    fresh.setup().expect("the new SA works");

    // The old connection keeps its key (RFC 7717 §5.1): requests, start,
    // stop all still pass their HMACs.
    let (_, sid) = old
        .request(&request(d.v4().ip(), 41010, 0))
        .expect("still accepted");
    assert!(d.recording.session(&sid).spec.test_keys.is_some());
    assert_eq!(old.start(1), Accept::Ok);
    old.stop();
}

#[test]
fn the_token_key_knob_must_match_on_both_sides() {
    let dir = TempDir::new("ike-direct");
    let d = TestDaemon::start(ike_config(&dir, TokenKeyMode::Direct), timing());
    let mut conn = ike_conn(
        d.v4(),
        Modes::AUTHENTICATED,
        golden_id(),
        IPPM,
        TokenKeyDerivation::Direct,
    );
    conn.setup().expect("direct on both sides");
    // A client running PBKDF2 against a direct server opens a different
    // token: the challenge does not match (Accept 1).
    let mut conn = ike_conn(
        d.v4(),
        Modes::AUTHENTICATED,
        golden_id(),
        IPPM,
        TokenKeyDerivation::Pbkdf2,
    );
    assert_eq!(conn.setup(), Err(Accept::Failure));
}

#[test]
fn without_a_source_ikev2_is_not_offered_and_the_client_says_so() {
    let dir = TempDir::new("ike-none");
    let d = TestDaemon::start(config(&dir, &ALL_SECURITY), timing());
    let mut conn = ike_conn(
        d.v4(),
        Modes::AUTHENTICATED,
        golden_id(),
        IPPM,
        TokenKeyDerivation::Pbkdf2,
    );
    match conn.next() {
        Err(End::Client(ClientError::Ikev2NotOffered { offered })) => {
            assert_eq!(offered.bits(), 0x0f)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_greeting_probe_fills_the_unused_octets_and_clients_ignore_them() {
    let dir = TempDir::new("ike-probe");
    let mut c = config(&dir, &ALL_SECURITY);
    c.ikev2.greeting_probe.enabled = true;
    let d = TestDaemon::start(c, timing());
    let mut s = TcpStream::connect_timeout(&d.v4(), WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut g = [0u8; greeting::LEN];
    s.read_exact(&mut g).expect("greeting");
    // Protocol type 3 (ESP), SPIi, SPIr: the draft-era layout.
    assert_eq!(
        hex::encode(&g[..12]),
        "000000035249433152494332",
        "Unused octets"
    );
    let parsed = ServerGreetingRepr::from_bytes(&g).expect("still a greeting");
    assert_eq!(parsed.modes.bits(), 0x0f);
    drop(s);
    // The protocol crate's client (ricochet-ping's) ignores them (RFC 4656
    // §3.1): set-up and a session in an authenticated mode succeed.
    let mut conn = TwampConn::connect(d.v4(), Peer::lab(Modes::ENCRYPTED));
    conn.setup().expect("set-up despite non-zero Unused octets");
    conn.request(&request(d.v4().ip(), 41020, 0))
        .expect("session");
}

/// `ricochet-control --check-config` checks the SA file and the responder's
/// PSK file like the key file: a broken one is exit 1 with the line, a
/// private good one passes and the effective configuration shows [ikev2].
#[test]
fn check_config_reads_the_sa_file_and_the_psk_file() {
    let bin = env!("CARGO_BIN_EXE_ricochet-control");
    let dir = TempDir::new("ike-check");
    let check = |toml: &str| {
        let cfg = dir.file("control.toml", toml, 0o600);
        let out = std::process::Command::new(bin)
            .args(["--check-config", "--config", cfg.to_str().expect("utf-8")])
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let modes = "[security]\nmodes = [\"unauthenticated\", \"encrypted\"]\n";
    let good = dir.file("good.sas", &golden_record(), 0o600);
    let (code, out, err) = check(&format!("{modes}[ikev2]\nsa_file = {:?}\n", good));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("[ikev2]") && out.contains("sa_file"), "{out}");
    assert!(!out.contains(IPPM) && !err.contains(IPPM));

    let bad = dir.file("bad.sas", &format!("{}oops\n", golden_record()), 0o600);
    let (code, _, err) = check(&format!("{modes}[ikev2]\nsa_file = {:?}\n", bad));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("line 3") && err.contains("SPIi SPIr PRF KEY"),
        "{err}"
    );

    let open = dir.file("open.sas", &golden_record(), 0o644);
    let (code, _, err) = check(&format!("{modes}[ikev2]\nsa_file = {:?}\n", open));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    let psk = dir.file("ike.psk", "probe.test secret\n", 0o644);
    let (code, _, err) = check(&format!(
        "{modes}[ikev2.responder]\nlisten = [\"127.0.0.1\"]\nidentity = \"t.test\"\npsk_file = {:?}\n",
        psk
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("chmod 600") && !err.contains("secret\n"),
        "{err}"
    );
}
