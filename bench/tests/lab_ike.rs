//! RFC 7717 end to end in the namespace lab: the real `ricochet-control`
//! (socket data plane) in the reflector namespace, keyed from IKEv2 SA
//! records, and the real `ricochet-ping --ikev2-key-file` in the sender
//! namespace: IKEv2-derived authenticated, encrypted and mixed modes with
//! every packet reflected; an unknown SA refused with Accept 6 and a message
//! that says so; SAs fed through the root-only SA socket; and the draft-era
//! greeting probe, which ricochet-ping must ignore (RFC 4656 §3.1).
//!
//! The SA is strongSwan 5.9.8's golden scenario a
//! (`shared/interop/strongswan-5.9.8/README.md`): SPIs and prf(SK_d, "IPPM")
//! as charon derived them. Needs root (network namespaces); CI runs as root.

#[path = "support/lab_control.rs"]
mod lab_control;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use lab_control::{start_control_config, write_private, Daemon};
use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;

const SPI_I: &str = "30c8551b66ef2dcf";
const SPI_R: &str = "0a873f74e95d606b";
const IPPM: &str = "7ade39607d19e8cac7a1e1a356d7549c9364fae430c1c1de669aa0ffeef01b13";

fn golden_record() -> String {
    format!("{SPI_I} {SPI_R} prfsha256 {IPPM}\n")
}

/// Starts ricochet-control with `ikev2` as its `[ikev2]` table and waits
/// (bounded) until it accepts TWAMP-Control connections.
fn start_control(lab: &Lab, dir: &Path, ikev2: &str) -> Daemon {
    start_control_config(
        lab,
        dir,
        &format!(
            r#"listen = ["[::]:862", "0.0.0.0:862"]
test_ports = "18760-18999"
log_level = "warn"
data_plane = "socket"

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed"]

[metrics]
enabled = false

[ikev2]
{ikev2}
"#
        ),
    )
}

fn ping(lab: &Lab, args: &[&str]) -> (Output, Option<Value>) {
    ping_to(lab, "198.18.0.2", args)
}

fn ping_to(lab: &Lab, target: &str, args: &[&str]) -> (Output, Option<Value>) {
    let bin = workspace_bin("ricochet-ping");
    let mut all: Vec<&str> = vec!["--json", "--timeout", "1s", "-c", "50", "-i", "1ms"];
    all.extend_from_slice(args);
    all.push(target);
    let out = lab
        .command(Side::Sender, &bin)
        .args(&all)
        .output()
        .expect("ricochet-ping runs");
    let json = serde_json::from_slice(&out.stdout).ok();
    (out, json)
}

/// Every one of 50 packets reflected, in `mode`, with `selected` Modes bits.
fn check_all_reflected(what: &str, out: &Output, json: &Option<Value>, mode: &str, selected: u32) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json.as_ref().unwrap_or_else(|| panic!("{what}: no JSON"));
    assert_eq!(j["mode"].as_str(), Some(mode), "{what}");
    let sel = j["selected_modes"].as_str().unwrap();
    assert!(
        sel.starts_with(&format!("{selected:#x} ")),
        "{what}: selected {sel}"
    );
    let s = j["sessions"].as_array().unwrap();
    assert_eq!(s.len(), 1, "{what}");
    let sum = &s[0]["summary"];
    assert_eq!(sum["sent"].as_u64(), Some(50), "{what}");
    assert_eq!(sum["received"].as_u64(), Some(50), "{what}: {sum}");
    assert_eq!(sum["duplicates"].as_u64(), Some(0), "{what}");
}

#[test]
fn ikev2_derived_modes_run_end_to_end_and_unknown_sas_get_accept_6() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("ik");
    let dir = tempfile::tempdir().unwrap();
    let sas = write_private(&dir.path().join("server.sas"), &golden_record());
    let _control = start_control(
        &lab,
        dir.path(),
        &format!("sa_file = \"{}\"", sas.display()),
    );
    // The client's copy of the same SA record.
    let mine = write_private(&dir.path().join("client.sas"), &golden_record());
    let mine = mine.to_str().unwrap();
    for (arg, mode, bits) in [
        ("auth", "authenticated", 0x82),
        ("enc", "encrypted", 0x84),
        ("mixed", "mixed", 0x88),
    ] {
        let (out, json) = ping(&lab, &["-A", arg, "--ikev2-key-file", mine]);
        check_all_reflected(&format!("IKEv2 {arg}"), &out, &json, mode, bits);
    }

    // An SA the server does not know: Accept 6 and a message that says so.
    let other = write_private(
        &dir.path().join("other.sas"),
        &format!("{SPI_R} {SPI_I} prfsha256 {IPPM}\n"),
    );
    let (out, _) = ping(
        &lab,
        &["-A", "enc", "--ikev2-key-file", other.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Accept 6") && err.contains("no IKEv2 SA with our SPIs"),
        "{err}"
    );

    // The wrong token-key reading on one side: the token does not open.
    let (out, _) = ping(
        &lab,
        &[
            "-A",
            "auth",
            "--ikev2-key-file",
            mine,
            "--ikev2-token-key",
            "direct",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Accept 1"), "{err}");
}

#[test]
fn sas_fed_through_the_socket_key_sessions_until_deleted() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("iks");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ikev2.sock");
    let _control = start_control(
        &lab,
        dir.path(),
        &format!("sa_socket = \"{}\"\ntoken_key = \"direct\"", sock.display()),
    );
    let mine = write_private(&dir.path().join("client.sas"), &golden_record());
    let mine = mine.to_str().unwrap();
    let direct = ["--ikev2-token-key", "direct"];
    // Before the IKE daemon fed it: unknown.
    let (out, _) = ping(
        &lab,
        &[&["-A", "enc", "--ikev2-key-file", mine][..], &direct].concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Accept 6"));

    // Path-named Unix sockets are not per network namespace: feed it from here.
    let feeder = UnixStream::connect(&sock).expect("connect to the SA socket");
    feeder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut w = feeder.try_clone().unwrap();
    let mut r = BufReader::new(feeder);
    let mut say = |line: &str| {
        w.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        r.read_line(&mut answer).unwrap();
        answer
    };
    assert_eq!(say(&golden_record()), "ok\n");
    let (out, json) = ping(
        &lab,
        &[&["-A", "enc", "--ikev2-key-file", mine][..], &direct].concat(),
    );
    check_all_reflected(
        "socket-fed SA, direct token key",
        &out,
        &json,
        "encrypted",
        0x84,
    );

    assert_eq!(say(&format!("delete {SPI_I} {SPI_R}\n")), "ok\n");
    let (out, _) = ping(
        &lab,
        &[&["-A", "auth", "--ikev2-key-file", mine][..], &direct].concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Accept 6"));
}

#[test]
fn ricochet_ping_ignores_the_draft_era_greeting_probe() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("ikp");
    let dir = tempfile::tempdir().unwrap();
    let sas = write_private(&dir.path().join("server.sas"), &golden_record());
    let _control = start_control(
        &lab,
        dir.path(),
        &format!(
            "sa_file = \"{}\"\n[ikev2.greeting_probe]\nenabled = true",
            sas.display()
        ),
    );
    // The greeting really carries the probe: read it raw from the sender side.
    let raw = lab.run(
        Side::Sender,
        "bash",
        &[
            "-c",
            "exec 3<>/dev/tcp/198.18.0.2/862; head -c 12 <&3 | od -An -tx1 | tr -d ' \\n'",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&raw.stdout),
        "000000035249433152494332",
        "Unused octets: protocol 3, SPIi, SPIr"
    );
    let mine = write_private(&dir.path().join("client.sas"), &golden_record());
    let (out, json) = ping(&lab, &["-A", "open"]);
    check_all_reflected("open, probe on", &out, &json, "unauthenticated", 0x01);
    let (out, json) = ping(
        &lab,
        &["-A", "enc", "--ikev2-key-file", mine.to_str().unwrap()],
    );
    check_all_reflected("IKEv2 enc, probe on", &out, &json, "encrypted", 0x84);
}

#[test]
fn ricochet_ping_brings_up_its_own_ike_sa_with_the_control_responder() {
    if !lab::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::up("iki");
    let dir = tempfile::tempdir().unwrap();
    let psk = "0x6c61622d6f6e6c792d696b652d70736b2d3031";
    let server_psks = write_private(
        &dir.path().join("server.psk"),
        &format!("probe.lab {psk}\n"),
    );
    let _control = start_control(
        &lab,
        dir.path(),
        &format!(
            "[ikev2.responder]\nlisten = [\"198.18.0.2\", \"2001:2::2\"]\nidentity = \"twamp.lab\"\npsk_file = \"{}\"",
            server_psks.display()
        ),
    );
    let client_psks = write_private(
        &dir.path().join("client.psk"),
        &format!("twamp.lab {psk}\n"),
    );
    let ike = |mode: &'static str, psks: &Path| -> (Output, Option<Value>) {
        ping(
            &lab,
            &[
                "-A",
                mode,
                "--ike",
                "198.18.0.2",
                "--ike-id",
                "probe.lab",
                "--ike-peer-id",
                "twamp.lab",
                "--ike-psk-file",
                psks.to_str().unwrap(),
            ],
        )
    };
    for (arg, mode, bits) in [("auth", "authenticated", 0x82), ("enc", "encrypted", 0x84)] {
        let (out, json) = ike(arg, &client_psks);
        check_all_reflected(&format!("--ike {arg}"), &out, &json, mode, bits);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("IKE SA") && err.contains("established"),
            "{err}"
        );
    }
    // IKE and TWAMP over IPv6.
    let (out, json) = ping_to(
        &lab,
        "[2001:2::2]",
        &[
            "-A",
            "enc",
            "--ike",
            "[2001:2::2]",
            "--ike-id",
            "probe.lab",
            "--ike-peer-id",
            "twamp.lab",
            "--ike-psk-file",
            client_psks.to_str().unwrap(),
        ],
    );
    check_all_reflected("--ike over IPv6", &out, &json, "encrypted", 0x84);

    // A wrong PSK: the IKE SA fails, nothing is keyed, a clear message.
    let wrong = write_private(
        &dir.path().join("wrong.psk"),
        "twamp.lab 0x0000000000000000000000000000000000000000\n",
    );
    let (out, _) = ike("auth", &wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("IKEv2:") && err.contains("not established"),
        "{err}"
    );
}
