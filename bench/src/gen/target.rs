//! The reflectors under test. Each is a [`Target`]: set up in the lab's
//! reflector namespace, measured, torn down (dropping or stopping the
//! [`Running`] handle). Ricochet's own paths are in [`super::ricochet`].
//!
//! | name | what | its ceiling |
//! |---|---|---|
//! | `ceiling` | minimal XDP: swap MACs, addresses, ports; XDP_TX | — |
//! | `xdp` | Ricochet's XDP path (unauthenticated TWAMP/STAMP) | `ceiling` |
//! | `afxdp-auth`, `afxdp-enc` | Ricochet's AF_XDP path, secured modes | `afxdp-echo` |
//! | `afxdp-esp` | Ricochet's AF_XDP path, TWAMP inside ESP-in-UDP (AES-GCM-128) | `afxdp-echo` |
//! | `afxdp-echo` | bare AF_XDP echo, same ring settings | — |
//! | `socket` | Ricochet's socket path | `socket-echo` |
//! | `socket-echo` | bare recvmmsg/sendmmsg echo | — |
//! | `external` | any reflector given as a command | — |

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use libbpf_rs::Link;
use thiserror::Error;

use super::bpf::{Programs, Role, PROG_CEILING, PROG_PASS};
use super::frame::{ProbeMode, ReplyKind, TestSession};
use super::netns;

/// The lab as targets see it.
#[derive(Debug, Clone)]
pub struct LabEnv {
    /// Name of the sender's namespace (`/run/netns/<name>`).
    pub sender_ns: String,
    /// Name of the reflector's namespace.
    pub reflector_ns: String,
    /// The sender's veth.
    pub sender_iface: String,
    /// The reflector's veth.
    pub reflector_iface: String,
    /// The sender's address.
    pub sender_addr: IpAddr,
    /// The reflector's address.
    pub reflector_addr: IpAddr,
    /// CPU for the reflector's work (threads and NAPI), if pinned.
    pub reflector_core: Option<usize>,
    /// UDP port targets listen on.
    pub port: u16,
    /// The generator's UDP source port (the session's Sender Port).
    pub sender_port: u16,
    /// Test mode for targets that reflect any packet (ceiling, echoes).
    pub mode: ProbeMode,
}

impl LabEnv {
    /// Path of the reflector's namespace.
    pub fn reflector_netns(&self) -> PathBuf {
        netns::path_of(&self.reflector_ns)
    }
}

/// Where and what to send to a started target.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The reflector's address and port.
    pub addr: SocketAddr,
    /// The session whose packets it expects.
    pub session: TestSession,
    /// What it sends back.
    pub reply: ReplyKind,
}

/// Why a target is not measured.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The target exists but is not connected to the harness yet.
    #[error("not wired yet: {0}")]
    NotWired(String),
    /// Not available here (no command given, missing tool).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Setting up or tearing down failed.
    #[error("failed: {0}")]
    Failed(String),
}

impl TargetError {
    /// Whether the report shows the target as skipped (rather than failed).
    pub fn is_skip(&self) -> bool {
        matches!(self, TargetError::NotWired(_) | TargetError::Unavailable(_))
    }
}

fn failed(what: &str) -> impl FnOnce(String) -> TargetError + '_ {
    move |e| TargetError::Failed(format!("{what}: {e}"))
}

/// A reflector the harness can measure.
pub trait Target {
    /// Short name (`--targets`).
    fn name(&self) -> &str;
    /// The target whose throughput is this one's 100 %, if any.
    fn ceiling(&self) -> Option<&str>;
    /// One line for the report.
    fn describe(&self) -> String;
    /// Sets the target up in the lab's reflector namespace.
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError>;
}

/// A started target; dropping it tears it down (errors then go to stderr).
pub trait Running {
    /// Where to send and what comes back.
    fn endpoint(&self) -> Endpoint;
    /// Tears down, reporting errors.
    fn stop(self: Box<Self>) -> Result<(), TargetError>;
}

/// An XDP program attached in the reflector namespace, with threaded NAPI
/// pinned to the reflector core.
pub(crate) struct Attached {
    _link: Link,
    _progs: Programs,
}

pub(crate) fn attach_in(
    env: &LabEnv,
    role: Role,
    prog: &'static str,
) -> Result<Attached, TargetError> {
    let iface = env.reflector_iface.clone();
    let (progs, link) = netns::run_in(&env.reflector_netns(), move || {
        let progs = Programs::load(role).map_err(|e| e.to_string())?;
        let idx = netns::ifindex(&iface).map_err(|e| e.to_string())?;
        let link = progs.attach(prog, idx).map_err(|e| e.to_string())?;
        Ok::<_, String>((progs, link))
    })
    .map_err(|e| TargetError::Failed(e.to_string()))?
    .map_err(failed("attach in the reflector namespace"))?;
    if let Some(core) = env.reflector_core {
        if let Err(e) = netns::thread_napi(
            &env.reflector_ns,
            &env.reflector_iface,
            core,
            Some(netns::prio::REFLECTOR_NAPI),
        ) {
            eprintln!("ricochet-bench: reflector NAPI not pinned: {e}");
        }
    }
    Ok(Attached {
        _link: link,
        _progs: progs,
    })
}

// ---- (a) the ceiling --------------------------------------------------------

/// The ceiling: `bench_ceiling` on the reflector's veth.
#[derive(Debug, Default)]
pub struct Ceiling;

struct CeilingRunning {
    _xdp: Attached,
    endpoint: Endpoint,
}

impl Running for CeilingRunning {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(self: Box<Self>) -> Result<(), TargetError> {
        Ok(()) // dropping the link detaches
    }
}

impl Target for Ceiling {
    fn name(&self) -> &str {
        "ceiling"
    }
    fn ceiling(&self) -> Option<&str> {
        None
    }
    fn describe(&self) -> String {
        "XDP program that swaps MACs, addresses and ports and returns XDP_TX".into()
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let xdp = attach_in(env, Role::Ceiling, PROG_CEILING)?;
        Ok(Box::new(CeilingRunning {
            _xdp: xdp,
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, env.port),
                session: TestSession::with_random_keys(env.mode),
                reply: ReplyKind::Echo,
            },
        }))
    }
}

// ---- (d0) bare recvmmsg/sendmmsg echo ---------------------------------------

/// A UDP echo on recvmmsg/sendmmsg: one thread in the reflector namespace,
/// pinned to the reflector core, batches of [`ECHO_BATCH`].
#[derive(Debug, Default)]
pub struct SocketEcho;

/// Datagrams per recvmmsg/sendmmsg call.
pub const ECHO_BATCH: usize = 64;
/// `SO_RCVBUF` asked for by the socket echo and Ricochet's socket path
/// alike (the kernel caps it at `net.core.rmem_max`).
pub const SOCKET_RCVBUF: usize = 4 << 20;
const ECHO_BUF: usize = 2048;

struct EchoRunning {
    _xdp: Attached,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
    endpoint: Endpoint,
}

impl EchoRunning {
    fn halt(&mut self) -> Result<(), TargetError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(TargetError::Failed(format!("echo thread: {e}"))),
            Some(Err(_)) => Err(TargetError::Failed("echo thread panicked".into())),
        }
    }
}

impl Drop for EchoRunning {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("ricochet-bench: {e}");
        }
    }
}

impl Running for EchoRunning {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(mut self: Box<Self>) -> Result<(), TargetError> {
        let r = self.halt();
        tracing_echoed(self.echoed.load(Ordering::Relaxed));
        r
    }
}

fn tracing_echoed(n: u64) {
    if std::env::var_os("RICOCHET_BENCH_DEBUG").is_some() {
        eprintln!("ricochet-bench: socket echo returned {n} datagrams");
    }
}

/// A bound UDP socket with a receive timeout (so the loop sees `stop`).
fn echo_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let sock = std::net::UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let fd = sock.as_raw_fd();
    let size = SOCKET_RCVBUF as libc::c_int;
    // SAFETY: setsockopt on a valid socket with a pointer to a c_int that
    // lives for the call; failure only leaves the default buffer size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(std::os::fd::OwnedFd::from(sock))
}

/// The echo loop: receive up to a batch, send each datagram back to its
/// source, until `stop`.
fn echo_loop(fd: OwnedFd, stop: &AtomicBool, echoed: &AtomicU64) -> io::Result<()> {
    let mut bufs = vec![[0u8; ECHO_BUF]; ECHO_BATCH];
    // SAFETY: sockaddr_storage, iovec and mmsghdr are plain old data for
    // which all-zero is a valid value.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; ECHO_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: ECHO_BUF,
        })
        .collect();
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; ECHO_BATCH];
    while !stop.load(Ordering::Relaxed) {
        for i in 0..ECHO_BATCH {
            iovs[i].iov_len = ECHO_BUF;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            msgs[i].msg_len = 0;
        }
        // SAFETY: `msgs` holds ECHO_BATCH headers whose name, iovec and
        // buffer pointers point into `addrs`, `iovs` and `bufs`, which
        // outlive the call and are not otherwise accessed during it.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                ECHO_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        let n = n as usize;
        for i in 0..n {
            iovs[i].iov_len = msgs[i].msg_len as usize;
            msgs[i].msg_len = 0;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: the first `n` headers were filled by recvmmsg and
            // still point into live buffers; sendmmsg only reads them.
            let m = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs.as_mut_ptr().add(done),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if m <= 0 {
                // A full queue drops the rest, as a reflector would.
                break;
            }
            done += m as usize;
        }
        echoed.fetch_add(done as u64, Ordering::Relaxed);
    }
    Ok(())
}

impl Target for SocketEcho {
    fn name(&self) -> &str {
        "socket-echo"
    }
    fn ceiling(&self) -> Option<&str> {
        None
    }
    fn describe(&self) -> String {
        format!("bare UDP echo, recvmmsg/sendmmsg batches of {ECHO_BATCH}, one thread")
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        // A veth delivers the generator's redirected frames only to a peer
        // whose NAPI runs: an XDP program (XDP_PASS) guarantees that.
        let xdp = attach_in(env, Role::Pass, PROG_PASS)?;
        let addr = SocketAddr::new(env.reflector_addr, env.port);
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, core) = (env.reflector_netns(), env.reflector_core);
        let (s2, e2) = (stop.clone(), echoed.clone());
        let thread = std::thread::spawn(move || -> io::Result<()> {
            let setup = (|| {
                netns::enter(&ns)?;
                if let Some(c) = core {
                    netns::pin(0, c)?;
                    netns::set_fifo(0, netns::prio::REFLECTOR_THREAD)?;
                }
                echo_socket(addr)
            })();
            match setup {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    echo_loop(fd, &s2, &e2)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    Ok(())
                }
            }
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| TargetError::Failed("echo thread did not start".into()))?;
        let running = EchoRunning {
            _xdp: xdp,
            stop,
            echoed,
            thread: Some(thread),
            endpoint: Endpoint {
                addr,
                session: TestSession::with_random_keys(env.mode),
                reply: ReplyKind::Echo,
            },
        };
        ready.map_err(failed("echo socket"))?;
        Ok(Box::new(running))
    }
}

// ---- (e) an external reflector ----------------------------------------------

/// Any reflector started as a shell command in the reflector namespace. It
/// must answer TWAMP Light / STAMP (stateless, `mode`) on `port`.
#[derive(Debug, Clone)]
pub struct External {
    /// The command (`sh -c`); `None`: skipped.
    pub command: Option<String>,
    /// Its UDP port.
    pub port: u16,
    /// Its test mode (unauthenticated TWAMP Light or STAMP).
    pub mode: ProbeMode,
    /// Time to let it bind before the first trial.
    pub startup: Duration,
}

struct ExternalRunning {
    _xdp: Attached,
    child: Option<Child>,
    endpoint: Endpoint,
}

impl ExternalRunning {
    fn kill(&mut self) -> Result<(), TargetError> {
        if let Some(mut c) = self.child.take() {
            // The command runs in its own process group (ours to end).
            let pgid = c.id() as libc::pid_t;
            // SAFETY: kill(2) on the process group of a child we started.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            for _ in 0..50 {
                if c.try_wait().ok().flatten().is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            c.wait()
                .map_err(|e| TargetError::Failed(format!("external reflector: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for ExternalRunning {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

impl Running for ExternalRunning {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(mut self: Box<Self>) -> Result<(), TargetError> {
        self.kill()
    }
}

impl Target for External {
    fn name(&self) -> &str {
        "external"
    }
    fn ceiling(&self) -> Option<&str> {
        None
    }
    fn describe(&self) -> String {
        match &self.command {
            Some(c) => format!("external reflector `{c}` on port {}", self.port),
            None => "external reflector (none given)".into(),
        }
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let Some(cmd) = &self.command else {
            return Err(TargetError::Unavailable(
                "no external reflector given (--external CMD)".into(),
            ));
        };
        if matches!(
            self.mode,
            ProbeMode::TwampAuth | ProbeMode::TwampEnc | ProbeMode::StampAuth
        ) {
            return Err(TargetError::Unavailable(
                "external reflectors are measured with unauthenticated TWAMP Light or STAMP".into(),
            ));
        }
        let xdp = attach_in(env, Role::Pass, PROG_PASS)?;
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("nsenter")
                .arg(format!("--net={}", env.reflector_netns().display()))
                .args(["--", "sh", "-c", cmd])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .process_group(0)
                .spawn()
                .map_err(|e| TargetError::Unavailable(format!("cannot start `{cmd}`: {e}")))?
        };
        let mut running = ExternalRunning {
            _xdp: xdp,
            child: Some(child),
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, self.port),
                session: TestSession::open(self.mode),
                reply: ReplyKind::Reflector,
            },
        };
        std::thread::sleep(self.startup);
        if let Some(c) = running.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                running.child = None;
                return Err(TargetError::Unavailable(format!(
                    "`{cmd}` exited at once ({status})"
                )));
            }
        }
        Ok(Box::new(running))
    }
}

/// Every target name `--targets` accepts, in the standard order.
pub const TARGET_NAMES: [&str; 10] = [
    "ceiling",
    "xdp",
    "afxdp-auth",
    "afxdp-enc",
    "afxdp-esp",
    "afxdp-echo",
    "socket",
    "socket-echo",
    "twampd",
    "external",
];

/// The target called `name` (see [`TARGET_NAMES`]).
pub fn by_name(name: &str, external: &External) -> Option<Box<dyn Target>> {
    use super::ricochet::{
        AfxdpEcho, RicochetAfxdp, RicochetAfxdpEsp, RicochetSocket, RicochetXdp,
    };
    match name {
        "ceiling" => Some(Box::new(Ceiling)),
        "socket-echo" => Some(Box::new(SocketEcho)),
        "external" => Some(Box::new(external.clone())),
        "xdp" => Some(Box::new(RicochetXdp)),
        "afxdp-auth" => Some(Box::new(RicochetAfxdp {
            mode: ProbeMode::TwampAuth,
        })),
        "afxdp-enc" => Some(Box::new(RicochetAfxdp {
            mode: ProbeMode::TwampEnc,
        })),
        "afxdp-esp" => Some(Box::new(RicochetAfxdpEsp)),
        "afxdp-echo" => Some(Box::new(AfxdpEcho)),
        "socket" => Some(Box::new(RicochetSocket)),
        "twampd" => Some(Box::new(super::twampd::Twampd::locate(None))),
        _ => None,
    }
}
