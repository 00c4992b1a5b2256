//! strongSwan's charon (Debian 5.9.x) as a test peer in a [`Lab`]'s sender
//! namespace: its own mount namespace with a private /run, its own
//! strongswan.conf, swanctl.conf and vici socket under a directory the test
//! owns; `swanctl` against that socket; the keys charon's level-4 log
//! prints (`%B` hex dumps); killed by PID on drop, also when the test fails.
//!
//! Needs root and the strongSwan packages `scripts/setup.sh` installs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Lab, Side};

/// The charon binary `strongswan-charon` installs.
pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// Panics with what to install when charon is missing.
pub fn require() {
    assert!(
        Path::new(CHARON).exists(),
        "{CHARON} missing: run scripts/setup.sh (installs strongswan-charon)"
    );
}

/// What a [`Charon`] runs with.
#[derive(Debug, Clone, Copy)]
pub struct Config<'c> {
    /// Load kernel-libipsec (this kernel has no ESP) and put this inner
    /// tunnel address (CIDR) on the sender's `lo`; `None`: IKE only.
    pub libipsec_inner: Option<&'c str>,
    /// Extra filelog levels besides `default = 1`, e.g. `[("ike", 4)]`
    /// (level 4 prints SK_d and the CHILD_SA keys).
    pub log_levels: &'c [(&'c str, u8)],
    /// The swanctl.conf loaded with `swanctl --load-all` (written 0600: it
    /// holds the PSK).
    pub swanctl: &'c str,
}

/// One charon daemon in the lab's sender namespace; killed on drop.
pub struct Charon<'a> {
    lab: &'a Lab,
    proc: Child,
    dir: PathBuf,
}

impl<'a> Charon<'a> {
    /// Writes the configuration into `dir`, starts charon, waits (bounded)
    /// for its vici socket and loads `config.swanctl`. Panics with charon's
    /// output when any step fails.
    pub fn start(lab: &'a Lab, dir: &Path, config: &Config) -> Charon<'a> {
        std::fs::create_dir_all(dir.join("run")).unwrap();
        // kernel-libipsec must come before kernel-netlink to own the IPsec
        // backend (this kernel has no ESP); routes are not needed.
        let plugins = format!(
            "random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf pem pkcs1 pubkey x509 {}kernel-netlink socket-default vici updown",
            if config.libipsec_inner.is_some() {
                "kernel-libipsec "
            } else {
                ""
            }
        );
        let libipsec_conf = if config.libipsec_inner.is_some() {
            "    kernel-libipsec { allow_peer_ts = yes }\n"
        } else {
            ""
        };
        let levels: String = config
            .log_levels
            .iter()
            .map(|(k, v)| format!("      {k} = {v}\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            "charon {{\n  load_modular = no\n  load = {plugins}\n  install_virtual_ip = no\n  install_routes = no\n  retransmit_tries = 3\n  plugins {{\n    vici {{ socket = unix://{d}/charon.vici }}\n{libipsec_conf}  }}\n  filelog {{\n    lab {{\n      path = {d}/charon.log\n      default = 1\n{levels}      flush_line = yes\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("strongswan.conf"), conf).unwrap();
        let swanctl_conf = dir.join("swanctl.conf");
        std::fs::write(&swanctl_conf, config.swanctl).unwrap();
        std::fs::set_permissions(&swanctl_conf, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(inner) = config.libipsec_inner {
            // The tunnel's inner address on charon's side.
            let out = lab.run(Side::Sender, "ip", &["addr", "add", inner, "dev", "lo"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        let log = std::fs::File::create(dir.join("charon.out")).unwrap();
        let proc = lab
            .command(Side::Sender, "unshare")
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
            .expect("nsenter runs");
        let mut c = Charon {
            lab,
            proc,
            dir: dir.to_owned(),
        };
        let sock = dir.join("charon.vici");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            let exited = c.proc.try_wait().ok().flatten().is_some();
            assert!(
                Instant::now() < deadline && !exited,
                "charon did not open its vici socket: {}",
                std::fs::read_to_string(dir.join("charon.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a file, not synchronising threads
        }
        let out = c.swanctl(&["--load-all", "--file", &format!("{d}/swanctl.conf")]);
        assert!(out.status.success(), "swanctl --load-all: {}", text(&out));
        c
    }

    /// `swanctl ARGS` against this charon's vici socket.
    pub fn swanctl(&self, args: &[&str]) -> Output {
        let uri = format!("unix://{}/charon.vici", self.dir.display());
        self.lab
            .command(Side::Sender, "swanctl")
            .args(args)
            .args(["--uri", &uri])
            .stdin(Stdio::null())
            .output()
            .expect("swanctl runs")
    }

    /// `swanctl --list-sas`, stdout and stderr.
    pub fn list_sas(&self) -> String {
        text(&self.swanctl(&["--list-sas"]))
    }

    /// charon's file log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    /// Every value charon logged under `label` (a `%B` hex dump), in order.
    pub fn logged(&self, label: &str) -> Vec<String> {
        logged(&self.log(), label)
    }
}

impl Drop for Charon<'_> {
    fn drop(&mut self) {
        // By PID: the spawned process is charon itself (nsenter, unshare and
        // sh all exec).
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// stdout then stderr of a finished command.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every value `log` holds under `label` (charon's `%B` hex dump: a
/// `label => N bytes @ ...` line, then lines of up to 16 hex octets after
/// `: `), lower-case hex, in order.
pub fn logged(log: &str, label: &str) -> Vec<String> {
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

/// (SPIi, SPIr) of each established IKE SA in `swanctl --list-sas` output.
pub fn ike_spis(list: &str) -> Vec<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    // Lines in the shape charon 5.9.x writes (`%B` of a 20-octet value).
    const LOG: &str = "Nov 27 10:00:00 05[IKE] <c|1> Sk_d secret => 20 bytes @ 0x7f00\n\
Nov 27 10:00:00 05[IKE] <c|1>    0: 0A 1B 2C 3D 4E 5F 60 71 82 93 A4 B5 C6 D7 E8 F9  ..,=N_`q........\n\
Nov 27 10:00:00 05[IKE] <c|1>   16: 01 02 03 04                                      ....\n\
Nov 27 10:00:01 05[IKE] <c|1> Sk_d secret => garbage\n";

    #[test]
    fn logged_reassembles_a_hex_dump_and_skips_malformed_headers() {
        assert_eq!(
            logged(LOG, "Sk_d secret"),
            vec!["0a1b2c3d4e5f60718293a4b5c6d7e8f901020304".to_owned()]
        );
        assert!(logged(LOG, "encryption initiator key").is_empty());
    }

    #[test]
    fn ike_spis_reads_the_sa_header_line() {
        let list = "c: #1, ESTABLISHED, IKEv2, 1a2b3c4d5e6f7081_i* 9f8e7d6c5b4a3921_r\n  local  's.ike.test' @ 198.18.0.1[500]\nd: #2, CONNECTING, IKEv2, 1111111111111111_i* 0000000000000000_r\n";
        assert_eq!(
            ike_spis(list),
            vec![("1a2b3c4d5e6f7081".to_owned(), "9f8e7d6c5b4a3921".to_owned())]
        );
    }
}
