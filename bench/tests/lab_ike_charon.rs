//! strongSwan's charon against `ricochet-control`'s IKEv2 responder, and
//! TWAMP keyed from the SA they make: charon (Debian 5.9.x, sender
//! namespace 198.18.0.1) initiates a childless IKE SA to the real
//! `ricochet-control` (reflector namespace 198.18.0.2). The client's copy
//! of the RFC 7717 key is derived the way `control/README.md` describes for
//! a strongSwan lab: SK_d from charon's level-4 log, SPIs from
//! `swanctl --list-sas`, `HMAC-SHA-256(SK_d, "IPPM")` computed here. Then
//! `ricochet-ping --ikev2-key-file` runs in IKEv2-derived encrypted mode
//! with every packet reflected; after `swanctl --terminate` (charon sends
//! Delete) the server refuses the SA with Accept 6.
//!
//! charon gets its own mount namespace with a private /run, its own
//! strongswan.conf and vici socket under a temporary directory; it is killed
//! by PID when the test ends (also on failure). Needs root and the
//! strongSwan packages `scripts/setup.sh` installs.

#[path = "support/lab_control.rs"]
mod lab_control;

use std::path::Path;
use std::process::Output;

use hmac::Mac;
use lab_control::{start_control_config, write_private, Daemon};
use ricochet_testkit::charon::{self, ike_spis, text, Charon, Config};
use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;

const PSK: &str = "lab-only-psk-ricochet-charon";

/// ricochet-control with the IKEv2 responder on 198.18.0.2, listening for
/// TWAMP-Control (bounded wait).
fn start_control(lab: &Lab, dir: &Path) -> Daemon {
    let psks = write_private(&dir.join("ike.psk"), &format!("a.ike.test {PSK}\n"));
    start_control_config(
        lab,
        dir,
        &format!(
            r#"listen = ["0.0.0.0:862"]
test_ports = "18760-18999"
log_level = "info"
data_plane = "socket"

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed"]

[metrics]
enabled = false

[ikev2.responder]
listen = ["198.18.0.2"]
identity = "b.ike.test"
psk_file = "{}"
"#,
            psks.display()
        ),
    )
}

/// charon in the sender namespace with connection `c` to 198.18.0.2
/// (childless, ECP-256, PSK); waits (bounded) for its vici socket.
fn start_charon<'a>(lab: &'a Lab, dir: &Path) -> Charon<'a> {
    let swanctl = format!(
        "connections {{\n  c {{\n    version = 2\n    local_addrs = 198.18.0.1\n    remote_addrs = 198.18.0.2\n    proposals = aes128gcm16-prfsha256-ecp256\n    rekey_time = 0\n    dpd_delay = 0\n    mobike = no\n    childless = force\n    local {{\n      auth = psk\n      id = a.ike.test\n    }}\n    remote {{\n      auth = psk\n      id = b.ike.test\n    }}\n  }}\n}}\nsecrets {{\n  ike-1 {{\n    id-1 = a.ike.test\n    id-2 = b.ike.test\n    secret = \"{PSK}\"\n  }}\n}}\n"
    );
    Charon::start(
        lab,
        dir,
        &Config {
            libipsec_inner: None,
            log_levels: &[("ike", 4)],
            swanctl: &swanctl,
        },
    )
}

fn ping(lab: &Lab, keys: &Path) -> (Output, Option<Value>) {
    let out = lab
        .command(Side::Sender, workspace_bin("ricochet-ping"))
        .args([
            "--json",
            "--timeout",
            "1s",
            "-c",
            "50",
            "-i",
            "1ms",
            "-A",
            "enc",
            "--ikev2-key-file",
            keys.to_str().unwrap(),
            "198.18.0.2",
        ])
        .output()
        .expect("ricochet-ping runs");
    let json = serde_json::from_slice(&out.stdout).ok();
    (out, json)
}

#[test]
fn charon_keys_twamp_through_ricochet_controls_ike_responder() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    charon::require();
    let lab = Lab::up("ikc");
    let dir = tempfile::tempdir().unwrap();
    let _control = start_control(&lab, dir.path());
    let charon = start_charon(&lab, dir.path());

    let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
    assert!(
        out.status.success(),
        "charon → ricochet-control: {}",
        text(&out)
    );
    let list = charon.list_sas();
    let spis = ike_spis(&list);
    assert_eq!(spis.len(), 1, "{list}");
    let (spi_i, spi_r) = &spis[0];
    let sk_d = charon.logged("Sk_d secret");
    assert_eq!(sk_d.len(), 1, "one SK_d logged");
    assert_eq!(sk_d[0].len(), 64, "PRF-HMAC-SHA2-256: 32-octet SK_d");
    let mut m =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(&sk_d[0]).unwrap()).unwrap();
    m.update(b"IPPM");
    let ippm = hex::encode(m.finalize().into_bytes());
    let keys = write_private(
        &dir.path().join("client.sas"),
        &format!("{spi_i} {spi_r} prfsha256 {ippm}\n"),
    );

    let (out, json) = ping(&lab, &keys);
    assert!(out.status.success(), "{}", text(&out));
    let j = json.expect("JSON report");
    assert!(
        j["selected_modes"].as_str().unwrap().starts_with("0x84 "),
        "{j}"
    );
    let sum = &j["sessions"][0]["summary"];
    assert_eq!(sum["sent"].as_u64(), Some(50), "{sum}");
    assert_eq!(sum["received"].as_u64(), Some(50), "{sum}");

    // charon deletes the SA: the server withdraws it (Accept 6 from now on).
    let out = charon.swanctl(&["--terminate", "--ike", "c", "--timeout", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let (out, _) = ping(&lab, &keys);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Accept 6"), "{err}");
}
