//! perfSONAR `twampd` (owamp) as a target: a full TWAMP server, so the
//! test session is negotiated like any client would (RFC 5357 §3): the
//! harness starts `twampd` in the reflector namespace with a private
//! configuration (open mode only), connects from the sender namespace with
//! the bench's own control client, requests one unauthenticated session
//! whose Sender Address/Port are the generator's, starts it, and sends the
//! generator's packets to the port `twampd` accepted. Not a part of this
//! repository: point `--twampd` (or `RICOCHET_TWAMPD`) at a locally built
//! binary; without one the target is skipped.

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ricochet_protocol::client::ClientConfig;
use ricochet_protocol::control::request::{ipvn_of, TypeP};
use ricochet_protocol::control::{RequestTwSessionRepr, Sid};
use ricochet_protocol::modes::Modes;
use ricochet_protocol::time::NtpTimestamp;

use super::bpf::{Role, PROG_PASS};
use super::frame::{ProbeMode, ReplyKind, TestSession};
use super::netns;
use super::target::{attach_in, Attached, Endpoint, LabEnv, Running, Target, TargetError};
use crate::ping::control::{ControlConnection, SessionAnswer, MAX_PBKDF2_COUNT};

/// How long `twampd` may take to listen.
const STARTUP: Duration = Duration::from_secs(10);
/// Its test ports (RFC 5357 §3.5: the server picks one).
const TEST_PORTS: &str = "18760-18799";

/// perfSONAR `twampd` with one negotiated unauthenticated session.
#[derive(Debug, Clone)]
pub struct Twampd {
    /// The binary; `None`: skipped.
    pub path: Option<PathBuf>,
}

impl Twampd {
    /// `explicit`, else `RICOCHET_TWAMPD`, else `twampd` on `PATH`.
    pub fn locate(explicit: Option<PathBuf>) -> Twampd {
        let path = explicit
            .or_else(|| {
                std::env::var_os("RICOCHET_TWAMPD")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("twampd"))
                        .find(|f| f.is_file())
                })
            });
        Twampd { path }
    }
}

struct TwampdRunning {
    ctl: Option<ControlConnection>,
    child: Option<Child>,
    dir: PathBuf,
    _xdp: Attached,
    endpoint: Endpoint,
}

impl TwampdRunning {
    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("log")) {
            let _ = f.read_to_string(&mut s);
        }
        let tail: Vec<&str> = s.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    fn teardown(&mut self) -> Result<(), TargetError> {
        if let Some(mut c) = self.ctl.take() {
            let _ = c.stop();
            c.close();
        }
        let mut r = Ok(());
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        r = Err(TargetError::Failed(
                            "twampd ignored SIGTERM (killed)".into(),
                        ));
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        r
    }
}

impl Drop for TwampdRunning {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("ricochet-bench: {e}");
        }
    }
}

impl Running for TwampdRunning {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(mut self: Box<Self>) -> Result<(), TargetError> {
        self.teardown()
    }
}

fn failed(what: &str) -> impl FnOnce(String) -> TargetError + '_ {
    move |e| TargetError::Failed(format!("{what}: {e}"))
}

/// Writes `twampd`'s configuration directory (it reads
/// `twamp-server.conf` and `twamp-server.limits` there, and drops to
/// nobody/nogroup, which must be able to write its var directory).
fn write_config(dir: &std::path::Path, control: SocketAddr) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(
        dir.join("twamp-server.conf"),
        format!(
            "srcnode {control}\ntestports {TEST_PORTS}\nvardir {d}\ndatadir {d}/data\n",
            d = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("twamp-server.limits"),
        "limit root with disk=0, bandwidth=0, allow_open_mode=on\nassign default root\n",
    )?;
    // twampd drops to nobody/nogroup and writes its pid file and data there.
    let nobody = nobody_ids()?;
    for p in [dir.to_path_buf(), dir.join("data")] {
        std::os::unix::fs::chown(&p, Some(nobody.0), Some(nobody.1))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The uid of `nobody` and the gid of `nogroup`.
fn nobody_ids() -> std::io::Result<(u32, u32)> {
    // SAFETY: getpwnam/getgrnam with NUL-terminated literals; the returned
    // records are read at once, before any other call that could reuse them.
    unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        let gr = libc::getgrnam(c"nogroup".as_ptr());
        if pw.is_null() || gr.is_null() {
            return Err(std::io::Error::other("no user nobody / group nogroup"));
        }
        Ok(((*pw).pw_uid, (*gr).gr_gid))
    }
}

impl Target for Twampd {
    fn name(&self) -> &str {
        "twampd"
    }
    fn ceiling(&self) -> Option<&str> {
        None
    }
    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!(
                "perfSONAR twampd ({}), one unauthenticated session negotiated over TWAMP-Control",
                p.display()
            ),
            None => "perfSONAR twampd (not found)".into(),
        }
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let Some(bin) = self.path.clone().filter(|p| p.is_file()) else {
            return Err(TargetError::Unavailable(
                "no twampd (--twampd PATH or RICOCHET_TWAMPD; a perfSONAR owamp build)".into(),
            ));
        };
        let xdp = attach_in(env, Role::Pass, PROG_PASS)?;
        let control = SocketAddr::new(env.reflector_addr, env.port);
        let dir = std::env::temp_dir().join(format!(
            "ricochet-bench-twampd-{}-{}",
            std::process::id(),
            env.reflector_ns
        ));
        let _ = std::fs::remove_dir_all(&dir);
        write_config(&dir, control).map_err(|e| failed("twampd configuration")(e.to_string()))?;
        let log = std::fs::File::create(dir.join("log"))
            .map_err(|e| failed("twampd log")(e.to_string()))?;
        let netns = std::fs::File::open(env.reflector_netns())
            .map_err(|e| failed("open the reflector namespace")(e.to_string()))?;
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(&bin);
        cmd.arg("-Z")
            .arg("-c")
            .arg(&dir)
            .args(["-U", "nobody", "-G", "nogroup"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: setns is async-signal-safe; `netns` stays open until
        // after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| TargetError::Unavailable(format!("start {}: {e}", bin.display())))?;
        drop(netns);
        let mut running = TwampdRunning {
            ctl: None,
            child: Some(child),
            dir,
            _xdp: xdp,
            endpoint: Endpoint {
                addr: control,
                session: TestSession::open(ProbeMode::Twamp),
                reply: ReplyKind::Reflector,
            },
        };
        // Negotiate from the sender namespace (the TCP socket lives where it
        // was created), retrying until twampd listens.
        let sender = SocketAddr::new(env.sender_addr, env.sender_port);
        let padding = u32::try_from(ProbeMode::Twamp.min_payload() - 14).unwrap_or(27);
        let deadline = Instant::now() + STARTUP;
        let ctl = loop {
            let r = netns::run_in(&netns::path_of(&env.sender_ns), move || {
                negotiate(control, sender, padding)
            })
            .map_err(|e| failed("control thread")(e.to_string()))?;
            match r {
                Ok((ctl, port)) => {
                    running.endpoint.addr = SocketAddr::new(env.reflector_addr, port);
                    break ctl;
                }
                Err(e) => {
                    if let Some(Ok(Some(st))) = running.child.as_mut().map(Child::try_wait) {
                        running.child = None;
                        return Err(TargetError::Failed(format!(
                            "twampd exited ({st}): {}",
                            running.log()
                        )));
                    }
                    if Instant::now() > deadline {
                        return Err(TargetError::Failed(format!(
                            "TWAMP-Control with twampd: {e} ({})",
                            running.log()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        running.ctl = Some(ctl);
        Ok(Box::new(running))
    }
}

/// Set-up in open mode, Request-TW-Session for the generator's address and
/// port, Start-Sessions; the connection (kept open while measuring) and
/// the accepted port.
fn negotiate(
    control: SocketAddr,
    sender: SocketAddr,
    padding: u32,
) -> Result<(ControlConnection, u16), String> {
    let cfg = ClientConfig {
        allowed: Modes::UNAUTHENTICATED,
        wanted: Modes::NONE,
        key_id: None,
        secret: None,
        max_count: MAX_PBKDF2_COUNT,
        max_sessions: 1,
    };
    let mut ctl = ControlConnection::connect(control, cfg, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    ctl.handshake().map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let req = RequestTwSessionRepr {
        ipvn: ipvn_of(sender.ip()),
        conf_sender: 0,
        conf_receiver: 0,
        schedule_slots: 0,
        packets: 0,
        sender_port: sender.port(),
        receiver_port: sender.port(),
        sender_address: sender.ip(),
        receiver_address: control.ip(),
        sid: Sid([0; 16]),
        padding_length: padding,
        start_time: NtpTimestamp::from_utc_ns(now),
        timeout: NtpTimestamp::from_interval_ns(2_000_000_000),
        type_p: TypeP::from_dscp(0).ok_or("DSCP 0")?,
        octets_to_reflect: [0; 2],
        padding_to_reflect: 0,
        hmac: [0; 16],
    };
    let port = match ctl.request(&req).map_err(|e| e.to_string())? {
        SessionAnswer::Accepted { port, .. } => port,
        SessionAnswer::Refused(a) => return Err(format!("session refused: {a:?}")),
    };
    ctl.start(1).map_err(|e| e.to_string())?;
    Ok((ctl, port))
}
