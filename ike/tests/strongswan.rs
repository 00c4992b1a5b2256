//! Interop with strongSwan's charon (Debian 5.9.x) in a lab namespace pair:
//! charon in the sender namespace (198.18.0.1), `ricochet-ike-peer` (the
//! sans-IO endpoint on real sockets) in the reflector namespace
//! (198.18.0.2). Both roles, childless and with a CHILD_SA, DH 19 and 31,
//! IKE SA and CHILD_SA rekey, a wrong PSK both ways. The truth is charon:
//! its level-4 log prints SK_d and the CHILD_SA keys, `swanctl --list-sas`
//! its SPIs and states.
//!
//! Each charon gets its own mount namespace with a private /run, its own
//! strongswan.conf and vici socket under a temporary directory; it is killed
//! by PID when the test ends (also on failure), and the lab is deleted.
//! Needs root (skipped otherwise) and the strongSwan packages that
//! `scripts/setup.sh` installs.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use hmac::Mac;
use ricochet_testkit::charon::{self, ike_spis, text, Charon, Config};
use ricochet_testkit::lab::{available, Lab, Side};

const PSK: &str = "lab-only-psk-0123456789abcdef";

fn skip() -> bool {
    if !available() {
        eprintln!("skipped: needs root for network namespaces");
        return true;
    }
    charon::require();
    false
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "ricochet-ike-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("run")).unwrap();
        Tmp(d)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// charon with the level-4 IKE and CHILD_SA logs this file reads keys
/// from; with kernel-libipsec (inner address 198.19.0.1) when `libipsec`.
fn start_charon<'a>(lab: &'a Lab, dir: &Path, libipsec: bool, swanctl: &str) -> Charon<'a> {
    Charon::start(
        lab,
        dir,
        &Config {
            libipsec_inner: libipsec.then_some("198.19.0.1/32"),
            log_levels: &[("ike", 4), ("chd", 4), ("cfg", 1), ("knl", 1)],
            swanctl,
        },
    )
}

/// `ricochet-ike-peer` in the reflector namespace; killed on drop.
struct Peer {
    proc: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Peer {
    fn start(lab: &Lab, dir: &Path, secret: &str, args: &[&str]) -> Peer {
        let psk = dir.join("psk");
        std::fs::write(&psk, format!("s.ike.test {secret}\n")).unwrap();
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut proc = lab
            .command(Side::Reflector, env!("CARGO_BIN_EXE_ricochet-ike-peer"))
            .args(if args.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "198.18.0.2"][..]
            })
            .args(["--id", "r.ike.test", "--psk-file"])
            .arg(&psk)
            .args(["--insecure-print-keys", "--run-ms", "20000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nsenter runs");
        let (tx, rx) = channel();
        let out = proc.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Peer {
            proc,
            lines: rx,
            seen: Vec::new(),
        };
        p.expect("ready");
        p
    }

    /// Waits (bounded) for a line starting with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no `{prefix}` line from the peer; saw {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// `key=value` of an output line.
fn field<'l>(line: &'l str, key: &str) -> &'l str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn ippm(sk_d_hex: &str) -> String {
    let mut m =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(sk_d_hex).unwrap()).unwrap();
    m.update(b"IPPM");
    hex::encode(m.finalize().into_bytes())
}

fn swanctl_conf(proposal: &str, child: bool, charon_initiates: bool, secret: &str) -> String {
    swanctl_conf_esp(
        proposal,
        child.then_some("aes128gcm16"),
        charon_initiates,
        secret,
    )
}

fn swanctl_conf_esp(
    proposal: &str,
    esp: Option<&str>,
    charon_initiates: bool,
    secret: &str,
) -> String {
    let child = esp.is_some();
    let children = match esp {
        Some(esp) => format!("    children {{\n      t {{\n        local_ts = 198.19.0.1/32\n        remote_ts = 198.19.0.2/32\n        esp_proposals = {esp}\n        rekey_time = 0\n      }}\n    }}\n"),
        None => String::new(),
    };
    let childless = if !child && charon_initiates {
        "    childless = force\n"
    } else {
        ""
    };
    format!(
        "connections {{\n  c {{\n    version = 2\n    local_addrs = 198.18.0.1\n    remote_addrs = 198.18.0.2\n    proposals = {proposal}\n    rekey_time = 0\n    dpd_delay = 0\n    mobike = no\n{childless}    local {{\n      auth = psk\n      id = s.ike.test\n    }}\n    remote {{\n      auth = psk\n      id = r.ike.test\n    }}\n{children}  }}\n}}\nsecrets {{\n  ike-1 {{\n    id-1 = s.ike.test\n    id-2 = r.ike.test\n    secret = \"{secret}\"\n  }}\n}}\n"
    )
}

/// The unique id (`#N`) of the IKE SA with this SPIi in `swanctl --list-sas`.
fn charon_ike_id(list: &str, spi_i: &str) -> String {
    list.lines()
        .find(|l| l.contains("ESTABLISHED, IKEv2") && l.contains(spi_i))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|id| id.trim_start_matches('#').trim_end_matches(',').to_owned())
        .unwrap_or_else(|| panic!("no SA {spi_i} in {list}"))
}

#[test]
fn charon_initiates_childless_ecp256_then_rekeys_and_deletes() {
    if skip() {
        return;
    }
    let lab = Lab::up("k1");
    let tmp = Tmp::new("k1");
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-ecp256", false, true, PSK),
    );
    let mut peer = Peer::start(&lab, &tmp.0, PSK, &[]);
    let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let est = peer.expect("established");
    assert_eq!(field(&est, "child"), "false");
    let keys = peer.expect("keys");
    let sk_d = field(&keys, "sk_d");
    assert_eq!(charon.logged("Sk_d secret"), vec![sk_d.to_owned()]);
    assert_eq!(field(&keys, "ippm"), ippm(sk_d));
    assert_eq!(
        ike_spis(&charon.list_sas()),
        vec![(
            field(&est, "spi_i").to_owned(),
            field(&est, "spi_r").to_owned()
        )]
    );
    // Charon rekeys the IKE SA: new SPIs and SK_d on both sides.
    let out = charon.swanctl(&["--rekey", "--ike", "c"]);
    assert!(out.status.success(), "{}", text(&out));
    let rk = peer.expect("rekeyed");
    assert_eq!(field(&rk, "we_initiated"), "false");
    let keys2 = peer.expect("keys");
    let logged = charon.logged("Sk_d secret");
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[1], field(&keys2, "sk_d"));
    assert_ne!(logged[0], logged[1]);
    peer.expect("deleted");
    // The rekeyed SA is in use: charon's Delete on it is decrypted and answered.
    assert_eq!(
        ike_spis(&charon.list_sas()),
        vec![(
            field(&rk, "spi_i").to_owned(),
            field(&rk, "spi_r").to_owned()
        )]
    );
    let id = charon_ike_id(&charon.list_sas(), field(&rk, "spi_i"));
    let out = charon.swanctl(&["--terminate", "--ike-id", &id, "--timeout", "10"]);
    assert!(
        text(&out).contains("terminate completed successfully"),
        "{}",
        text(&out)
    );
    let del = peer.expect("deleted");
    assert_eq!(field(&del, "spi_i"), field(&rk, "spi_i"));
    assert_eq!(field(&del, "reason"), "Peer");
}

#[test]
fn charon_initiates_with_child_x25519_and_we_rekey_the_child() {
    if skip() {
        return;
    }
    let lab = Lab::up("k2");
    let tmp = Tmp::new("k2");
    let charon = start_charon(
        &lab,
        &tmp.0,
        true,
        &swanctl_conf("aes128gcm16-prfsha256-x25519", true, true, PSK),
    );
    let mut peer = Peer::start(&lab, &tmp.0, PSK, &["--rekey-child-ms", "300"]);
    let out = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let est = peer.expect("established");
    assert_eq!(field(&est, "child"), "true");
    let keys = peer.expect("keys");
    assert_eq!(
        charon.logged("Sk_d secret"),
        vec![field(&keys, "sk_d").to_owned()]
    );
    let child = peer.expect("child ");
    // libipsec fakes NAT: ESP and IKE run UDP-encapsulated on 4500.
    assert_eq!(field(&child, "udp_encap"), "true");
    assert!(field(&est, "peer").ends_with(":4500"));
    let ck = peer.expect("childkeys");
    assert_eq!(
        charon.logged("encryption initiator key")[0],
        field(&ck, "sk_ei")
    );
    assert_eq!(
        charon.logged("encryption responder key")[0],
        field(&ck, "sk_er")
    );
    let list = charon.list_sas();
    // Charon is the CHILD_SA initiator: its inbound SPI is spi_i.
    assert!(
        list.contains(&format!("in  {}", field(&child, "spi_i"))),
        "{list}"
    );
    assert!(
        list.contains(&format!("out {}", field(&child, "spi_r"))),
        "{list}"
    );
    // Our CHILD_SA rekey: new keys equal charon's, the old child is deleted.
    let child2 = peer.expect("child ");
    let ck2 = peer.expect("childkeys");
    let del = peer.expect("child_deleted");
    assert_eq!(field(&del, "spi_i"), field(&child, "spi_i"));
    // The rekeying side (we) is the new CHILD_SA's initiator (RFC 7296
    // §2.17): charon's "initiator key" is now our sk_ei.
    assert_eq!(
        charon.logged("encryption initiator key")[1],
        field(&ck2, "sk_ei")
    );
    assert_eq!(
        charon.logged("encryption responder key")[1],
        field(&ck2, "sk_er")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = charon.list_sas();
        if list.contains(&format!("in  {}", field(&child2, "spi_r")))
            && !list.contains(&format!("in  {}", field(&child, "spi_i")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "charon did not switch children: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn we_initiate_childless_ecp256_rekey_liveness_delete() {
    if skip() {
        return;
    }
    let lab = Lab::up("k3");
    let tmp = Tmp::new("k3");
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-ecp256", false, false, PSK),
    );
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &[
            "--initiate",
            "198.18.0.1",
            "--peer-id",
            "s.ike.test",
            "--dh",
            "19",
            "--rekey-ike-ms",
            "300",
            "--liveness-ms",
            "300",
            "--delete-ms",
            "300",
            "--exit-when-idle",
        ],
    );
    let est = peer.expect("established");
    let keys = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
    assert_eq!(field(&keys, "ippm"), ippm(field(&keys, "sk_d")));
    let rk = peer.expect("rekeyed");
    assert_eq!(field(&rk, "old_spi_i"), field(&est, "spi_i"));
    assert_eq!(field(&rk, "we_initiated"), "true");
    let keys2 = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[1], field(&keys2, "sk_d"));
    let gone = peer.expect("deleted");
    assert_eq!(field(&gone, "reason"), "Rekeyed");
    assert_eq!(field(&gone, "spi_i"), field(&est, "spi_i"));
    let alive = peer.expect("alive");
    assert_eq!(
        field(&alive, "spi_i"),
        field(&rk, "spi_i"),
        "{:#?}\n{}",
        peer.seen,
        charon
            .log()
            .lines()
            .filter(|l| l.contains("ENC]") || l.contains("collision") || l.contains("IKE] IKE_SA"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let del = peer.expect("deleted");
    assert_eq!(field(&del, "reason"), "Local");
    peer.expect("idle");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ike_spis(&charon.list_sas()).is_empty() {
        assert!(Instant::now() < deadline, "charon kept the SA");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = charon.log();
    assert!(log.contains("rekeyed between"), "charon saw the rekey");
    assert!(
        log.contains("parsed INFORMATIONAL request"),
        "liveness reached charon"
    );
}

#[test]
fn we_initiate_with_child_x25519() {
    if skip() {
        return;
    }
    let lab = Lab::up("k4");
    let tmp = Tmp::new("k4");
    let charon = start_charon(
        &lab,
        &tmp.0,
        true,
        &swanctl_conf("aes128gcm16-prfsha256-x25519", true, false, PSK),
    );
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &[
            "--initiate",
            "198.18.0.1",
            "--peer-id",
            "s.ike.test",
            "--dh",
            "31",
            "--child",
            "198.19.0.2,198.19.0.1",
            "--delete-ms",
            "3000",
            "--exit-when-idle",
        ],
    );
    let est = peer.expect("established");
    assert_eq!(field(&est, "child"), "true");
    // charon (libipsec) faked its NAT-D hash: we floated to 4500.
    assert!(field(&est, "peer").ends_with(":4500"), "{est}");
    let keys = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
    let child = peer.expect("child ");
    assert_eq!(field(&child, "udp_encap"), "true");
    let ck = peer.expect("childkeys");
    assert_eq!(
        charon.logged("encryption initiator key")[0],
        field(&ck, "sk_ei")
    );
    assert_eq!(
        charon.logged("encryption responder key")[0],
        field(&ck, "sk_er")
    );
    let list = charon.list_sas();
    assert!(list.contains("INSTALLED, TUNNEL-in-UDP"), "{list}");
    assert!(
        list.contains(&format!("in  {}", field(&child, "spi_r"))),
        "{list}"
    );
    // Real ESP from charon opens with our inbound keys: a ping into
    // libipsec's TUN device leaves as ESP-in-UDP under our SPI (spi_i: we
    // are the CHILD_SA initiator), carrying an inner IPv4 packet.
    let out = lab.run(
        Side::Sender,
        "ip",
        &[
            "route",
            "add",
            "198.19.0.2/32",
            "dev",
            "ipsec0",
            "src",
            "198.19.0.1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = lab.run(
        Side::Sender,
        "ping",
        &["-c1", "-W1", "-s", "16", "198.19.0.2"],
    );
    assert!(!out.status.success(), "nobody answers the inner ping");
    let esp = peer.expect("esp");
    assert_eq!(field(&esp, "spi"), field(&child, "spi_i"), "{esp}");
    assert_eq!(field(&esp, "seq"), "1");
    assert_eq!(field(&esp, "next_header"), "4");
    // 20 (IPv4) + 8 (ICMP) + 16 octets of data.
    assert_eq!(field(&esp, "payload_len"), "44");
    peer.expect("child_deleted");
    let del = peer.expect("deleted");
    assert_eq!(field(&del, "reason"), "Local");
}

#[test]
fn wrong_psk_fails_cleanly_in_both_directions() {
    if skip() {
        return;
    }
    let lab = Lab::up("k5");
    let tmp = Tmp::new("k5");
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-ecp256", false, true, PSK),
    );
    // Charon initiates, we hold another secret: we refuse its AUTH.
    {
        let mut peer = Peer::start(&lab, &tmp.0, "not-the-psk", &[]);
        let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
        assert!(!out.status.success(), "{}", text(&out));
        let del = peer.expect("deleted");
        assert_eq!(field(&del, "reason"), "AuthenticationFailed");
        assert!(charon
            .log()
            .contains("received AUTHENTICATION_FAILED notify error"));
        assert!(ike_spis(&charon.list_sas()).is_empty());
        assert!(!peer.seen.iter().any(|l| l.starts_with("established")));
    }
    // We initiate with the wrong secret: charon refuses ours.
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        "not-the-psk",
        &[
            "--initiate",
            "198.18.0.1",
            "--peer-id",
            "s.ike.test",
            "--exit-when-idle",
        ],
    );
    let del = peer.expect("deleted");
    assert_eq!(field(&del, "reason"), "AuthenticationFailed");
    peer.expect("idle");
    assert!(
        charon.log().contains("pre-shared key failed") || charon.log().contains("MAC mismatch")
    );
    assert!(ike_spis(&charon.list_sas()).is_empty());
}

#[test]
fn invalid_ke_payload_both_ways() {
    if skip() {
        return;
    }
    let lab = Lab::up("k6");
    let tmp = Tmp::new("k6");
    // Charon offers X25519 and ECP-256 and sends an X25519 KE; we only take
    // ECP-256: we answer INVALID_KE_PAYLOAD(19) and charon retries.
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-x25519-ecp256", false, true, PSK),
    );
    {
        let mut peer = Peer::start(&lab, &tmp.0, PSK, &["--dh", "19"]);
        let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        let keys = peer.expect("keys");
        assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
        let log = charon.log();
        assert!(
            log.contains("parsed IKE_SA_INIT response 0 [ N(INVAL_KE) ]"),
            "{log}"
        );
        assert!(
            log.contains("peer didn't accept DH group CURVE_25519, it requested ECP_256"),
            "{log}"
        );
        let out = charon.swanctl(&["--terminate", "--ike", "c", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        peer.expect("deleted");
    }
    // We send ECP-256 first (default order 19, 31, 14); a charon that only
    // takes X25519 asks for group 31 and we retry.
    let tmp2 = Tmp::new("k6b");
    drop(charon);
    let charon = start_charon(
        &lab,
        &tmp2.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-x25519", false, false, PSK),
    );
    let mut peer = Peer::start(
        &lab,
        &tmp2.0,
        PSK,
        &["--initiate", "198.18.0.1", "--peer-id", "s.ike.test"],
    );
    let keys = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
    let log = charon.log();
    assert!(log.contains("requesting CURVE_25519"), "{log}");
    assert!(charon.list_sas().contains("CURVE_25519"));
}

#[test]
fn modp2048_with_aes_cbc_hmac_sha256_both_roles() {
    if skip() {
        return;
    }
    let lab = Lab::up("k7");
    let tmp = Tmp::new("k7");
    let charon = start_charon(
        &lab,
        &tmp.0,
        true,
        &swanctl_conf_esp("aes256-sha256-modp2048", Some("aes128-sha256"), true, PSK),
    );
    {
        let mut peer = Peer::start(&lab, &tmp.0, PSK, &["--dh", "14"]);
        let out = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        let keys = peer.expect("keys");
        assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
        let ck = peer.expect("childkeys");
        assert_eq!(
            charon.logged("encryption initiator key")[0],
            field(&ck, "sk_ei")
        );
        assert_eq!(
            charon.logged("integrity initiator key")[0],
            field(&ck, "sk_ai")
        );
        assert_eq!(
            charon.logged("encryption responder key")[0],
            field(&ck, "sk_er")
        );
        assert_eq!(
            charon.logged("integrity responder key")[0],
            field(&ck, "sk_ar")
        );
        assert_eq!(field(&ck, "sk_ai").len(), 64);
        let list = charon.list_sas();
        assert!(
            list.contains("AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
            "{list}"
        );
        let out = charon.swanctl(&["--terminate", "--ike", "c", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        peer.expect("deleted");
    }
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &[
            "--initiate",
            "198.18.0.1",
            "--peer-id",
            "s.ike.test",
            "--dh",
            "14",
            "--rekey-ike-ms",
            "200",
            "--delete-ms",
            "200",
            "--exit-when-idle",
        ],
    );
    let keys = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[1], field(&keys, "sk_d"));
    peer.expect("rekeyed");
    let keys2 = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[2], field(&keys2, "sk_d"));
    // The old SA's Delete (after the rekey) and ours of the new one may
    // complete in either order.
    let mut reasons = vec![
        field(&peer.expect("deleted"), "reason").to_owned(),
        field(&peer.expect("deleted"), "reason").to_owned(),
    ];
    reasons.sort();
    assert_eq!(reasons, ["Local", "Rekeyed"]);
}

#[test]
fn child_sa_rekey_with_pfs_both_ways() {
    if skip() {
        return;
    }
    let lab = Lab::up("k8");
    let tmp = Tmp::new("k8");
    let charon = start_charon(
        &lab,
        &tmp.0,
        true,
        &swanctl_conf_esp(
            "aes128gcm16-prfsha256-x25519",
            Some("aes128gcm16-x25519"),
            true,
            PSK,
        ),
    );
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &["--dh", "31", "--child-pfs", "--rekey-child-ms", "300"],
    );
    let out = charon.swanctl(&["--initiate", "--child", "t", "--timeout", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    peer.expect("child ");
    // Our PFS rekey (we are its initiator).
    let c2 = peer.expect("child ");
    let k2 = peer.expect("childkeys");
    peer.expect("child_deleted");
    assert_eq!(
        charon.logged("encryption initiator key")[1],
        field(&k2, "sk_ei")
    );
    assert_eq!(
        charon.logged("encryption responder key")[1],
        field(&k2, "sk_er")
    );
    let log = charon.log();
    assert!(
        log.contains("parsed CREATE_CHILD_SA request 0 [ N(REKEY_SA) SA No KE TSi TSr ]"),
        "our rekey carried a KE"
    );
    // Charon's PFS rekey of the new child (charon initiates it).
    let out = charon.swanctl(&["--rekey", "--child", "t"]);
    assert!(out.status.success(), "{}", text(&out));
    let c3 = peer.expect("child ");
    let k3 = peer.expect("childkeys");
    assert_ne!(field(&c3, "spi_i"), field(&c2, "spi_i"));
    assert_eq!(
        charon.logged("encryption initiator key")[2],
        field(&k3, "sk_ei")
    );
    assert_eq!(
        charon.logged("encryption responder key")[2],
        field(&k3, "sk_er")
    );
    let del = peer.expect("child_deleted");
    assert_eq!(field(&del, "spi_i"), field(&c2, "spi_i"));
    let log = charon.log();
    assert!(
        log.contains("generating CREATE_CHILD_SA request 2 [ N(REKEY_SA) SA No KE TSi TSr ]"),
        "charon's rekey carried a KE: {}",
        log.lines()
            .filter(|l| l.contains("CREATE_CHILD_SA"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.contains("parsed CREATE_CHILD_SA response 2 [ SA No KE TSi TSr ]"),
        "and our answer too"
    );
}

#[test]
fn ipv6_both_roles_childless() {
    if skip() {
        return;
    }
    let lab = Lab::up("k9");
    let tmp = Tmp::new("k9");
    let conf = swanctl_conf("aes128gcm16-prfsha256-x25519", false, true, PSK)
        .replace("198.18.0.1", "2001:2::1")
        .replace("198.18.0.2", "2001:2::2");
    let charon = start_charon(&lab, &tmp.0, false, &conf);
    {
        let mut peer = Peer::start(&lab, &tmp.0, PSK, &["--listen", "2001:2::2"]);
        let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        let est = peer.expect("established");
        assert_eq!(field(&est, "peer"), "[2001:2::1]:500");
        let keys = peer.expect("keys");
        assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
        let out = charon.swanctl(&["--terminate", "--ike", "c", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        peer.expect("deleted");
    }
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &[
            "--listen",
            "2001:2::2",
            "--initiate",
            "2001:2::1",
            "--peer-id",
            "s.ike.test",
            "--dh",
            "31",
            "--delete-ms",
            "200",
            "--exit-when-idle",
        ],
    );
    let keys = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[1], field(&keys, "sk_d"));
    let del = peer.expect("deleted");
    assert_eq!(field(&del, "reason"), "Local");
}

#[test]
fn simultaneous_ike_sa_rekey_with_charon_converges() {
    if skip() {
        return;
    }
    let lab = Lab::up("ka");
    let tmp = Tmp::new("ka");
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-ecp256", false, true, PSK),
    );
    // Our datagrams leave 2.5 s late. Charon's rekey request (sent once its
    // SA is up, 2.5 s after ours) meets our rekey, started 1.5 s after ours
    // and still unanswered; ours reaches charon 2.5 s after that start,
    // while charon's own request waits for our (late) answer. The requests
    // cross as long as swanctl takes less than 1.5 s to send its request
    // (charon retransmits after 4 s, so nothing is resent meanwhile).
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &["--delay-ms", "2500", "--rekey-ike-ms", "1500"],
    );
    let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "20"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = charon.swanctl(&["--rekey", "--ike", "c"]);
    assert!(out.status.success(), "{}", text(&out));
    let rk = peer.expect("rekeyed");
    let keys = peer.expect("keys");
    let gone = peer.expect("deleted");
    assert_eq!(field(&gone, "reason"), "Rekeyed");
    let log = charon.log();
    assert!(log.contains("collision"), "charon saw the collision");
    // Charon keeps exactly the SA we kept, with the same SK_d.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sas = ike_spis(&charon.list_sas());
        if sas
            == vec![(
                field(&rk, "spi_i").to_owned(),
                field(&rk, "spi_r").to_owned(),
            )]
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "charon kept {sas:?}, we kept {rk}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(charon
        .logged("Sk_d secret")
        .contains(&field(&keys, "sk_d").to_owned()));
    // The survivor carries charon's Delete and our answer.
    // By unique id: the name also matches the SAs still being deleted.
    let id = charon_ike_id(&charon.list_sas(), field(&rk, "spi_i"));
    let out = charon.swanctl(&["--terminate", "--ike-id", &id, "--timeout", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let del = peer.expect("deleted");
    assert_eq!(
        field(&del, "spi_i"),
        field(&rk, "spi_i"),
        "{:#?}",
        peer.seen
    );
    assert_eq!(field(&del, "reason"), "Peer");
    assert_eq!(
        peer.seen
            .iter()
            .filter(|l| l.starts_with("rekeyed"))
            .count(),
        1,
        "{:#?}",
        peer.seen
    );
}

#[test]
fn prf_sha384_and_aes256_gcm_with_charon() {
    if skip() {
        return;
    }
    let lab = Lab::up("kb");
    let tmp = Tmp::new("kb");
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes256gcm16-prfsha384-ecp256", false, true, PSK),
    );
    let mut peer = Peer::start(&lab, &tmp.0, PSK, &[]);
    let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let est = peer.expect("established");
    assert_eq!(field(&est, "prf"), "HmacSha384");
    let keys = peer.expect("keys");
    let sk_d = field(&keys, "sk_d");
    assert_eq!(sk_d.len(), 96, "48-octet SK_d");
    assert_eq!(charon.logged("Sk_d secret"), vec![sk_d.to_owned()]);
    let mut m = hmac::Hmac::<sha2::Sha384>::new_from_slice(&hex::decode(sk_d).unwrap()).unwrap();
    m.update(b"IPPM");
    assert_eq!(field(&keys, "ippm"), hex::encode(m.finalize().into_bytes()));
    assert!(charon
        .list_sas()
        .contains("AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_256"));
}

/// Puts a port-translating NAT on one side of the lab: UDP from port 500 of
/// that side leaves from port 1500 (what a NAPT does), port 4500 untouched.
fn nat_source_port(lab: &Lab, side: Side, addr: &str) {
    let rules = format!(
        "table ip ikenat {{\n  chain post {{\n    type nat hook postrouting priority 100;\n    udp sport 500 snat to {addr}:1500\n  }}\n}}\n"
    );
    let mut child = lab
        .command(side, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft runs (scripts/setup.sh installs nftables)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft: {}", text(&out));
}

#[test]
fn real_nat_in_front_of_either_side_moves_ike_to_4500() {
    if skip() {
        return;
    }
    // Charon behind the NAT, charon initiates: we see its port 1500, our
    // NAT-D tells charon (a real NAT this time, not libipsec's fake), and
    // it floats to 4500.
    {
        let lab = Lab::up("kc");
        let tmp = Tmp::new("kc");
        nat_source_port(&lab, Side::Sender, "198.18.0.1");
        let charon = start_charon(
            &lab,
            &tmp.0,
            false,
            &swanctl_conf("aes128gcm16-prfsha256-x25519", false, true, PSK),
        );
        let mut peer = Peer::start(&lab, &tmp.0, PSK, &[]);
        let out = charon.swanctl(&["--initiate", "--ike", "c", "--timeout", "10"]);
        assert!(out.status.success(), "{}", text(&out));
        let est = peer.expect("established");
        assert_eq!(field(&est, "peer"), "198.18.0.1:4500");
        let keys = peer.expect("keys");
        assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
        let log = charon.log();
        assert!(
            log.contains("local host is behind NAT"),
            "charon saw it from our NAT-D"
        );
        assert!(!log.contains("faking NAT"));
    }
    // We are behind the NAT and initiate: charon's NAT-D tells us, we float.
    let lab = Lab::up("kd");
    let tmp = Tmp::new("kd");
    nat_source_port(&lab, Side::Reflector, "198.18.0.2");
    let charon = start_charon(
        &lab,
        &tmp.0,
        false,
        &swanctl_conf("aes128gcm16-prfsha256-x25519", false, false, PSK),
    );
    let mut peer = Peer::start(
        &lab,
        &tmp.0,
        PSK,
        &[
            "--initiate",
            "198.18.0.1",
            "--peer-id",
            "s.ike.test",
            "--liveness-ms",
            "200",
        ],
    );
    let est = peer.expect("established");
    assert_eq!(field(&est, "peer"), "198.18.0.1:4500");
    let keys = peer.expect("keys");
    assert_eq!(charon.logged("Sk_d secret")[0], field(&keys, "sk_d"));
    peer.expect("alive");
    let log = charon.log();
    assert!(
        log.contains("remote host is behind NAT"),
        "charon saw our NAT"
    );
    assert!(charon.list_sas().contains("198.18.0.2[4500]"));
}
