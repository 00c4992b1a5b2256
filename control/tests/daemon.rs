//! The `ricochet-control` binary as an operator runs it: --help,
//! --check-config, the key-file checks at start, and the refusal to start
//! without a data plane.
//!
//! Serving, reload and stop are exercised in-process by `twamp.rs` (through
//! `StopHandle`, which raises the same flags as SIGHUP and SIGTERM): this
//! build has no data plane the binary could serve with. Once
//! `app::data_plane` returns one, a test here should send SIGHUP/SIGTERM to
//! a child process again.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ricochet-control");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ricochet-ctl-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A loopback port free at the time of the call.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_shows_examples() {
    let (status, stdout, _) = run(&["--help"]);
    assert!(status.success());
    for needle in [
        "--check-config",
        "--listen",
        "--port-range",
        "--metrics",
        "--log-level",
        "Examples:",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
}

#[test]
fn check_config_prints_the_effective_config() {
    let dir = temp_dir("check");
    let path = dir.join("control.toml");
    std::fs::write(
        &path,
        "test_ports = \"18760-18799\"\nlog_level = \"warn\"\n",
    )
    .expect("write");
    let p = path.to_str().expect("utf-8 path");
    let (status, stdout, stderr) = run(&["--check-config", "--config", p, "--log-level", "debug"]);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
    // The printed configuration is complete and parses back.
    let c = ricochet_control::config::Config::parse(&stdout).expect("printed TOML parses");
    assert_eq!(c.test_ports.to_string(), "18760-18799");
    assert_eq!(c.log_level, "debug", "command line overrides the file");

    std::fs::write(&path, "[timers]\nservwiat = 5\n").expect("write");
    let (status, _, stderr) = run(&["--check-config", "--config", p]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("servwiat") && stderr.contains(p),
        "{stderr}"
    );

    std::fs::write(&path, "[security]\nmodes = [\"encrypted\"]\n").expect("write");
    let (status, _, stderr) = run(&["--check-config", "--config", p]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("key_file"), "{stderr}");

    let (status, _, stderr) = run(&["--check-config", "--config", "/nonexistent/control.toml"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/control.toml"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A file with permission bits `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn key_config(key_file: &Path) -> String {
    format!(
        "listen = [\"127.0.0.1:{}\"]\n[metrics]\nenabled = false\n\
         [security]\nmodes = [\"unauthenticated\", \"encrypted\"]\nkey_file = \"{}\"\n",
        free_port(),
        key_file.display()
    )
}

#[test]
fn a_key_file_others_can_read_is_refused_at_start_with_the_chmod_hint() {
    let dir = temp_dir("keymode");
    let key_file = dir.join("twamp.pfs");
    write_mode(&key_file, "lab\t7477616d702d736563726574\n", 0o644);
    let config = dir.join("control.toml");
    std::fs::write(&config, key_config(&key_file)).expect("write config");
    let c = config.to_str().expect("utf-8");
    for args in [vec!["--config", c], vec!["--check-config", "--config", c]] {
        let (status, _, stderr) = run(&args);
        assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("chmod 600 {}", key_file.display())),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("7477616d"), "the secret is never printed");
    }

    // Bad lines are reported with their numbers, secrets are not echoed.
    write_mode(&key_file, "lab 00ff\nbroken s3cr3t\n", 0o600);
    let (status, _, stderr) = run(&["--check-config", "--config", c]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"), "{stderr}");

    // A private, well-formed file passes.
    write_mode(&key_file, "lab 00ff\n", 0o600);
    let (status, _, stderr) = run(&["--check-config", "--config", c]);
    assert!(status.success(), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn configured_secrets_need_a_private_configuration_file() {
    let dir = temp_dir("cfgsecrets");
    let config = dir.join("control.toml");
    let text = format!(
        "listen = [\"127.0.0.1:{}\"]\n[security]\nmodes = [\"authenticated\"]\n\
         [security.secrets]\nlab = \"7477616d702d736563726574\"\n",
        free_port()
    );
    write_mode(&config, &text, 0o644);
    let c = config.to_str().expect("utf-8");
    let (status, _, stderr) = run(&["--check-config", "--config", c]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains(&format!("chmod 600 {c}")), "{stderr}");
    write_mode(&config, &text, 0o600);
    let (status, stdout, stderr) = run(&["--check-config", "--config", c]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(!stdout.contains("7477616d") && !stderr.contains("7477616d"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn the_bpf_data_plane_without_a_reflector_says_what_to_start() {
    // No ricochet-reflector has pinned maps there: the daemon must say so
    // and what to run, rather than accept sessions nobody reflects.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_plane = \"bpf\"\n[bpf]\npin_dir = \"{0}/no-pins\"\nregistry = \"{0}/sessions\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (status, _, stderr) = run(&[
        "--config",
        cfg.to_str().expect("utf-8 path"),
        "--listen",
        &listen,
        "--metrics",
        "off",
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("start ricochet-reflector"), "{stderr}");
}

#[test]
fn serves_a_greeting_with_the_socket_data_plane_and_stops_on_sigterm() {
    use std::io::Read;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            &listen,
            "--metrics",
            "off",
            "--log-level",
            "warn",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    // Bounded wait for the listener: connect attempts for at most 10 s.
    let addr = listen.parse().expect("addr");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "daemon never listened: {e}"
                );
                assert!(
                    child.try_wait().expect("wait").is_none(),
                    "daemon exited early"
                );
                std::thread::yield_now();
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut greeting = [0u8; 64];
    conn.read_exact(&mut greeting).expect("Server Greeting");
    // Default modes: unauthenticated only (RFC 4656 §3.1 Modes field).
    assert_eq!(&greeting[12..16], &[0, 0, 0, 1]);
    // SIGTERM: graceful stop, exit status 0.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

/// `[[stamp.session]]` with a key file: a loose key file is refused with the
/// chmod hint (also by --check-config); a private one lets the daemon
/// reflect authenticated STAMP with its own Sequence Number from 0, the
/// SSID checked, both HMACs verifiable, and a packet of another SSID
/// discarded.
#[test]
fn a_configured_stamp_session_reflects_authenticated_stamp() {
    use ricochet_protocol::crypto::StampHmac;
    use std::net::UdpSocket;
    let dir = temp_dir("stamp");
    let key = [0x5au8; 32];
    let key_file = dir.join("stamp.key");
    write_mode(&key_file, &format!("{}\n", hex::encode(key)), 0o644);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("sender socket");
    sender
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let stamp_port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.join("control.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"{listen}\"]\ndata_plane = \"socket\"\n[metrics]\nenabled = false\n\
             [[stamp.session]]\nsender = \"{}\"\nlocal_port = {stamp_port}\n\
             local_address = \"127.0.0.1\"\nssid = 77\nkey_file = \"{}\"\n",
            sender.local_addr().unwrap(),
            key_file.display()
        ),
    )
    .expect("write config");
    let c = config.to_str().expect("utf-8");
    let (status, _, stderr) = run(&["--check-config", "--config", c]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", key_file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("5a5a5a5a"), "the key is never printed");
    write_mode(&key_file, &format!("{}\n", hex::encode(key)), 0o600);
    let (status, stdout, stderr) = run(&["--check-config", "--config", c]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("[[stamp.session]]"), "{stdout}");

    let mut child = Command::new(BIN)
        .args(["--config", c, "--log-level", "warn"])
        .spawn()
        .expect("spawn daemon");
    let h = StampHmac::new(&key);
    let packet = |seq: u32, ssid: u16| {
        let mut p = vec![0u8; 112];
        p[0..4].copy_from_slice(&seq.to_be_bytes());
        p[24..26].copy_from_slice(&[0, 1]);
        p[26..28].copy_from_slice(&ssid.to_be_bytes());
        h.seal_packet(&mut p).unwrap();
        p
    };
    let to = format!("127.0.0.1:{stamp_port}");
    // The daemon binds the port at start: poll for the first reply for at
    // most 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    let first = loop {
        sender.send_to(&packet(500, 77), &to).expect("send");
        if let Ok((n, _)) = sender.recv_from(&mut buf) {
            break buf[..n].to_vec();
        }
        assert!(std::time::Instant::now() < deadline, "no STAMP reply");
        assert!(child.try_wait().expect("wait").is_none(), "daemon exited");
    };
    assert_eq!(first.len(), 112);
    h.verify_packet(&first).expect("reply HMAC");
    assert_eq!(&first[26..28], &[0, 77], "SSID copied");
    assert_eq!(&first[48..52], &500u32.to_be_bytes());
    let first_seq = u32::from_be_bytes(first[0..4].try_into().unwrap());
    sender.send_to(&packet(501, 77), &to).expect("send");
    let (n, _) = sender.recv_from(&mut buf).expect("second reply");
    assert_eq!(
        u32::from_be_bytes(buf[0..4].try_into().unwrap()),
        first_seq + 1,
        "own counter"
    );
    assert_eq!(n, 112);
    // Another SSID: discarded.
    sender.send_to(&packet(502, 78), &to).expect("send");
    assert!(sender.recv_from(&mut buf).is_err(), "SSID 78 reflected");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
