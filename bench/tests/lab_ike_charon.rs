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

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use hmac::Mac;
use ricochet_testkit::lab::{self, workspace_bin, Lab, Side};
use serde_json::Value;

const CHARON: &str = "/usr/lib/ipsec/charon";
const PSK: &str = "lab-only-psk-ricochet-charon";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_private(path: &Path, text: &str) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// ricochet-control with the IKEv2 responder on 198.18.0.2, listening for
/// TWAMP-Control (bounded wait).
fn start_control(lab: &Lab, dir: &Path) -> Killed {
    let psks = write_private(&dir.join("ike.psk"), &format!("a.ike.test {PSK}\n"));
    let cfg = write_private(
        &dir.join("control.toml"),
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
    );
    let bin = workspace_bin("ricochet-control");
    let mut d = Killed(lab.spawn(Side::Reflector, &bin, &["--config", cfg.to_str().unwrap()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = lab.run(
            Side::Sender,
            "bash",
            &["-c", "exec 3<>/dev/tcp/198.18.0.2/862"],
        );
        if probe.status.success() {
            return d;
        }
        if let Some(status) = d.0.try_wait().unwrap() {
            let mut err = String::new();
            d.0.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("ricochet-control exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "ricochet-control never listened");
        std::thread::sleep(Duration::from_millis(50)); // polling a port, not synchronising threads
    }
}

/// charon in the sender namespace with connection `c` to 198.18.0.2
/// (childless, ECP-256, PSK); waits (bounded) for its vici socket.
fn start_charon(lab: &Lab, dir: &Path) -> Killed {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let conf = format!(
        "charon {{\n  load_modular = no\n  load = random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf pem pkcs1 pubkey x509 kernel-netlink socket-default vici updown\n  install_virtual_ip = no\n  install_routes = no\n  retransmit_tries = 3\n  plugins {{\n    vici {{ socket = unix://{d}/charon.vici }}\n  }}\n  filelog {{\n    lab {{\n      path = {d}/charon.log\n      default = 1\n      ike = 4\n      flush_line = yes\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("strongswan.conf"), conf).unwrap();
    write_private(
        &dir.join("swanctl.conf"),
        &format!(
            "connections {{\n  c {{\n    version = 2\n    local_addrs = 198.18.0.1\n    remote_addrs = 198.18.0.2\n    proposals = aes128gcm16-prfsha256-ecp256\n    rekey_time = 0\n    dpd_delay = 0\n    mobike = no\n    childless = force\n    local {{\n      auth = psk\n      id = a.ike.test\n    }}\n    remote {{\n      auth = psk\n      id = b.ike.test\n    }}\n  }}\n}}\nsecrets {{\n  ike-1 {{\n    id-1 = a.ike.test\n    id-2 = b.ike.test\n    secret = \"{PSK}\"\n  }}\n}}\n"
        ),
    );
    let log = std::fs::File::create(dir.join("charon.out")).unwrap();
    let mut c = Killed(
        lab.command(Side::Sender, "unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &format!("mount --bind {d}/run /run && exec {CHARON}"),
            ])
            .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("charon starts"),
    );
    let sock = dir.join("charon.vici");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        let exited = c.0.try_wait().ok().flatten().is_some();
        assert!(
            Instant::now() < deadline && !exited,
            "charon did not open its vici socket: {}",
            std::fs::read_to_string(dir.join("charon.out")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20)); // polling a file, not synchronising threads
    }
    let out = swanctl(
        lab,
        dir,
        &["--load-all", "--file", &format!("{d}/swanctl.conf")],
    );
    assert!(out.status.success(), "swanctl --load-all: {}", text(&out));
    c
}

fn swanctl(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    let uri = format!("unix://{}/charon.vici", dir.display());
    lab.command(Side::Sender, "swanctl")
        .args(args)
        .args(["--uri", &uri])
        .stdin(Stdio::null())
        .output()
        .expect("swanctl runs")
}

/// (SPIi, SPIr) of charon's established IKE SAs (`--list-sas`).
fn charon_spis(list: &str) -> Vec<(String, String)> {
    list.lines()
        .filter(|l| l.contains("ESTABLISHED, IKEv2"))
        .filter_map(|l| {
            let mut it = l.split_whitespace().skip(4);
            let i = it.next()?.trim_end_matches("_i*").trim_end_matches("_i");
            let r = it.next()?.trim_end_matches("_r*").trim_end_matches("_r");
            Some((i.to_owned(), r.to_owned()))
        })
        .collect()
}

/// Every value charon logged under `label` (a `%B` hex dump), in order.
fn logged(log: &str, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = log.lines();
    while let Some(l) = lines.next() {
        let Some((_, rest)) = l.split_once(&format!("{label} => ")) else {
            continue;
        };
        let Some(n) = rest.split(' ').next().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let mut hex = String::new();
        while hex.len() < 2 * n {
            let Some(d) = lines.next() else { break };
            let Some((_, dump)) = d.split_once(": ") else {
                break;
            };
            for tok in dump.split(' ').filter(|t| !t.is_empty()).take(16) {
                if hex.len() < 2 * n {
                    hex.push_str(&tok.to_ascii_lowercase());
                }
            }
        }
        out.push(hex);
    }
    out
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
    assert!(
        Path::new(CHARON).exists(),
        "{CHARON} missing: run scripts/setup.sh (installs strongswan-charon)"
    );
    let lab = Lab::up("ikc");
    let dir = tempfile::tempdir().unwrap();
    let _control = start_control(&lab, dir.path());
    let _charon = start_charon(&lab, dir.path());

    let out = swanctl(
        &lab,
        dir.path(),
        &["--initiate", "--ike", "c", "--timeout", "10"],
    );
    assert!(
        out.status.success(),
        "charon → ricochet-control: {}",
        text(&out)
    );
    let list = text(&swanctl(&lab, dir.path(), &["--list-sas"]));
    let spis = charon_spis(&list);
    assert_eq!(spis.len(), 1, "{list}");
    let (spi_i, spi_r) = &spis[0];
    let log = std::fs::read_to_string(dir.path().join("charon.log")).unwrap();
    let sk_d = logged(&log, "Sk_d secret");
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
    let out = swanctl(
        &lab,
        dir.path(),
        &["--terminate", "--ike", "c", "--timeout", "10"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let (out, _) = ping(&lab, &keys);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Accept 6"), "{err}");
}
