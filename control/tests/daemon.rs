//! The `ricochet-control` binary as an operator runs it: --help,
//! --check-config, serving, SIGHUP reload and SIGTERM stop (signals sent to
//! a child process).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{read_to_close, WAIT};

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

struct Daemon {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Daemon {
    fn spawn(config: &Path) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["--config", config.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child: Some(child),
            lines,
        }
    }

    /// Wait (bounded) for a log line containing `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) takes plain integers and touches no memory of
        // ours; the pid is our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn wait_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(WAIT)
            .expect("daemon exits in time")
            .expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("metrics connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

#[test]
fn daemon_serves_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = temp_dir("daemon");
    let path = dir.join("control.toml");
    let control: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let base = format!(
        "listen = [\"{control}\"]\nlog_level = \"info\"\n[metrics]\nlisten = \"{metrics}\"\n"
    );
    std::fs::write(&path, &base).expect("write config");
    let daemon = Daemon::spawn(&path);
    daemon.wait_for("TWAMP-Control listening");

    // Until the protocol state machine is integrated, a client gets a
    // greeting with Modes = 0 (RFC 4656 §3.1) and the connection closes.
    let mut c = TcpStream::connect_timeout(&control, WAIT).expect("connect");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    let (greeting, _) = read_to_close(&mut c);
    assert_eq!(greeting.len(), 64);
    assert_eq!(&greeting[12..16], &[0, 0, 0, 0], "Modes = 0");
    assert_eq!(&greeting[48..52], &2048u32.to_be_bytes(), "Count");

    let text = scrape(metrics);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("ricochet_control_connections_accepted_total 1"),
        "{text}"
    );

    // SIGHUP: deny loopback, existing process keeps running, new clients
    // are refused before any greeting.
    std::fs::write(&path, format!("{base}[policy]\ndeny = [\"127.0.0.0/8\"]\n"))
        .expect("rewrite config");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("configuration reloaded");
    let mut c = TcpStream::connect_timeout(&control, WAIT).expect("connect");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    assert!(
        read_to_close(&mut c).0.is_empty(),
        "refused without greeting"
    );
    assert!(scrape(metrics)
        .contains("ricochet_control_connections_refused_total{reason=\"prefix_denied\"} 1"));

    // A broken file on SIGHUP is reported and the old configuration stays.
    std::fs::write(&path, "listen = 5\n").expect("break config");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for("reload failed");

    daemon.signal(libc::SIGTERM);
    daemon.wait_for("stopped");
    let status = daemon.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(TcpStream::connect_timeout(&control, Duration::from_secs(2)).is_err());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn daemon_refuses_to_start_on_a_busy_port() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let (status, _, stderr) = run(&["--listen", &addr, "--metrics", "off"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&addr) && stderr.contains("another process"),
        "{stderr}"
    );
}
