//! Ricochet's own data paths as benchmark targets, each programmed through
//! the same `SessionTable` interface `ricochet-control` uses, so that the
//! generator's packets are real test packets of a real session:
//!
//! | target | what runs in the reflector namespace | session |
//! |---|---|---|
//! | `xdp` | `ricochet-reflector --path xdp --no-pollers` (the binary), own pin dir | [`BpfSessionTable`]: unauthenticated TWAMP (RFC 4656 SID) on the port, a STAMP listener on port + 1 |
//! | `afxdp-auth`, `afxdp-enc` | `ricochet-reflector --path afxdp --cores C` | [`BpfSessionTable`]: authenticated / encrypted TWAMP with random test keys the generator's pool uses too |
//! | `afxdp-esp` | `ricochet-reflector --path afxdp --cores C` | [`BpfSessionTable`]: unauthenticated TWAMP session inside an ESP SA (`add_esp_sa`: AES-GCM-128, transport, ESP-in-UDP 4500, anti-replay off) whose inbound keys seal the generator's pool |
//! | `afxdp-echo` | Ricochet's XDP program and one [`Poller`] in [`PollerMode::Echo`], in-process, same ring settings as the daemon's | an authenticated session (random keys) so that the program redirects to the socket |
//! | `socket` | [`SocketSessionTable`] with its loop on a pinned thread | unauthenticated TWAMP, or a STAMP listener with `--mode stamp` |
//!
//! The echo poller exists only for this bench: the daemon never starts one.

use std::io::{self, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{EspKeys, SessionKeys as RawKeys, TestKeys};
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::time::{NtpTimestamp, TimeFormat};
use ricochet_protocol::twamp_test::{SessionFormat, TestSecurity};
use ricochet_reflector::afxdp::{Poller, PollerConfig, PollerMode, PollerShared, WaitMode};
use ricochet_reflector::bpf::{AttachMode, BpfSessionTable, LoadOptions, XdpProgram, PINNED_MAPS};
use ricochet_reflector::clock::ClockCell;
use ricochet_reflector::session_table::{
    EspInner, EspLifetime, EspMode, EspSaSpec, ListenerKind, ListenerSpec, SessionSpec,
    SessionTable,
};
use ricochet_reflector::socket::{SocketOptions, SocketSessionTable, TableConfig};

use super::bpf::{Role, PROG_PASS};
use super::frame::{EspSeal, ProbeMode, ReplyKind, SessionKeys, TestSession};
use super::netns;
use super::target::{
    attach_in, Attached, Endpoint, LabEnv, Running, Target, TargetError, SOCKET_RCVBUF,
};

/// Whether the AF_XDP pollers (Ricochet's and the bare echo) spin instead of
/// sleeping in `poll(2)`. The same for both, so that the echo is the
/// ceiling of the same ring settings.
pub const AFXDP_BUSY_POLL: bool = false;

/// How long a daemon may take to load, attach and pin.
const DAEMON_STARTUP: Duration = Duration::from_secs(20);

fn failed(what: &str) -> impl FnOnce(String) -> TargetError + '_ {
    move |e| TargetError::Failed(format!("{what}: {e}"))
}

/// A fresh SID as RFC 4656 §3.5 composes it: the reflector's address, the
/// time, and random octets.
pub fn fresh_sid(reflector: IpAddr) -> Sid {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut random = [0u8; 4];
    rand::rng().fill_bytes(&mut random);
    Sid::compose(reflector, NtpTimestamp::from_utc_ns(now), random)
}

/// Random test keys of a secured TWAMP session (what TWAMP-Control would
/// derive from the SID and the connection's keys, RFC 4656 §4.1.2).
fn random_keys() -> RawKeys {
    let mut k = RawKeys {
        aes: [0; 16],
        hmac: [0; 32],
    };
    let mut rng = rand::rng();
    rng.fill_bytes(&mut k.aes);
    rng.fill_bytes(&mut k.hmac);
    k
}

/// The unauthenticated TWAMP session the generator's flow belongs to.
fn unauth_spec(env: &LabEnv) -> SessionSpec {
    SessionSpec {
        sid: fresh_sid(env.reflector_addr),
        sender: SocketAddr::new(env.sender_addr, env.sender_port),
        reflector: SocketAddr::new(env.reflector_addr, env.port),
        security: SecurityMode::Unauthenticated,
        format: SessionFormat::new(TestSecurity::Unauthenticated),
        dscp: 0,
        test_keys: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

/// A secured TWAMP session with `keys`.
fn secured_spec(env: &LabEnv, mode: ProbeMode, keys: &RawKeys) -> SessionSpec {
    let (security, ts) = match mode {
        ProbeMode::TwampEnc => (SecurityMode::Encrypted, TestSecurity::Encrypted),
        _ => (SecurityMode::Authenticated, TestSecurity::Authenticated),
    };
    SessionSpec {
        sid: fresh_sid(env.reflector_addr),
        sender: SocketAddr::new(env.sender_addr, env.sender_port),
        reflector: SocketAddr::new(env.reflector_addr, env.port),
        security,
        format: SessionFormat::new(ts),
        dscp: 0,
        test_keys: Some(keys.clone()),
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

/// The generator's view of a secured session with `keys`.
fn secured_session(mode: ProbeMode, keys: &RawKeys) -> TestSession {
    TestSession {
        mode,
        format: TimeFormat::Ntp,
        keys: Some(SessionKeys::Twamp(Box::new(TestKeys::new(keys)))),
        ssid: 0,
        esp: None,
    }
}

fn stamp_listener(local: SocketAddr) -> ListenerSpec {
    ListenerSpec {
        local,
        kind: ListenerKind::Unauthenticated,
        dscp: None,
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

/// Whether `mode` asks for STAMP (the listener) rather than TWAMP.
fn wants_stamp(mode: ProbeMode) -> bool {
    matches!(mode, ProbeMode::Stamp | ProbeMode::StampAuth)
}

// ---- pins and registry ------------------------------------------------------

/// A private bpffs pin directory and SID registry, removed on drop.
struct Pins {
    dir: PathBuf,
    registry: PathBuf,
}

impl Pins {
    fn new(tag: &str) -> Pins {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("ricochet-bench-{}-{tag}-{n}", std::process::id());
        let pins = Pins {
            dir: Path::new("/sys/fs/bpf").join(&id),
            registry: std::env::temp_dir().join(format!("{id}.sessions")),
        };
        pins.clean();
        pins
    }

    fn clean(&self) {
        for m in PINNED_MAPS {
            let _ = std::fs::remove_file(self.dir.join(m));
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_file(&self.registry);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        self.clean();
    }
}

// ---- the daemon ---------------------------------------------------------------

/// Where the `ricochet-reflector` binary is: `RICOCHET_REFLECTOR_BIN`, or
/// next to this executable (`target/<profile>/`, also from `deps/`).
pub fn reflector_bin() -> Result<PathBuf, TargetError> {
    if let Some(p) = std::env::var_os("RICOCHET_REFLECTOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| TargetError::Unavailable(format!("own executable path: {e}")))?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            let p = d.join("ricochet-reflector");
            if p.is_file() {
                return Ok(p);
            }
            dir = d.parent();
        }
    }
    Err(TargetError::Unavailable(
        "ricochet-reflector not built next to ricochet-bench (cargo build --release \
         -p ricochet-reflector, or set RICOCHET_REFLECTOR_BIN)"
            .into(),
    ))
}

/// `ricochet-reflector` running in the reflector namespace; SIGTERM on drop.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `args` and waits (bounded) until it says it
    /// is attached. Its stderr goes to a log file quoted on failure.
    fn spawn(env: &LabEnv, args: &[&str], pins: &Pins) -> Result<Daemon, TargetError> {
        let bin = reflector_bin()?;
        let log = pins.registry.with_extension("log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| failed("daemon log")(e.to_string()))?;
        let netns = std::fs::File::open(env.reflector_netns())
            .map_err(|e| failed("open the reflector namespace")(e.to_string()))?;
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .arg("--pin-dir")
            .arg(&pins.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // Not `ip netns exec` / `nsenter` through a shell: setns(2) alone,
        // so that bpffs stays visible and the pid is the daemon's.
        // SAFETY: setns is async-signal-safe; `netns` keeps the descriptor
        // open until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| failed("start ricochet-reflector")(format!("{}: {e}", bin.display())))?;
        drop(netns);
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + DAEMON_STARTUP;
        loop {
            let text = d.log_text();
            if text.contains("ricochet-reflector: attached to") {
                return Ok(d);
            }
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    d.child = None;
                    return Err(TargetError::Failed(format!(
                        "ricochet-reflector exited ({st}): {}",
                        text.trim()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(TargetError::Failed(format!(
                    "ricochet-reflector did not attach within {DAEMON_STARTUP:?}: {}",
                    text.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGTERM, then a bounded wait (SIGKILL after 5 s). Whether it exited
    /// cleanly.
    fn stop(&mut self) -> Result<(), TargetError> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    return Err(TargetError::Failed(format!(
                        "ricochet-reflector exit: {st}: {}",
                        self.log_text().trim()
                    )))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err(TargetError::Failed(
                        "ricochet-reflector ignored SIGTERM (killed)".into(),
                    ));
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("ricochet-bench: {e}");
        }
        if std::env::var_os("RICOCHET_BENCH_DEBUG").is_some() {
            eprintln!(
                "ricochet-bench: ricochet-reflector said:\n{}",
                self.log_text()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn pin_reflector_napi(env: &LabEnv) {
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
}

/// Gives the AF_XDP poller threads of process `pid` (`ricochet-xsk-q*`)
/// the reflector threads' real-time priority, as the socket targets' loops
/// have: the comparison is between paths, not between schedulers. Returns
/// how many were found.
fn poller_priority(pid: u32) -> usize {
    let mut n = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if comm.starts_with("ricochet-xsk-q") {
            match netns::set_fifo(tid, netns::prio::REFLECTOR_THREAD) {
                Ok(()) => n += 1,
                Err(e) => eprintln!("ricochet-bench: poller priority: {e}"),
            }
        }
    }
    n
}

/// A daemon with its sessions; teardown removes the sessions, stops the
/// daemon (which detaches) and removes the pins. Field order is drop order.
struct DaemonRunning {
    table: Option<BpfSessionTable>,
    /// Inbound SPIs of the ESP SAs installed (removed first).
    esp_spis: Vec<u32>,
    sids: Vec<Sid>,
    listeners: Vec<SocketAddr>,
    daemon: Daemon,
    _pins: Pins,
    endpoint: Endpoint,
}

impl DaemonRunning {
    fn teardown(&mut self) -> Result<(), TargetError> {
        let mut first = Ok(());
        if let Some(mut t) = self.table.take() {
            for spi in self.esp_spis.drain(..) {
                if std::env::var_os("RICOCHET_BENCH_DEBUG").is_some() {
                    eprintln!(
                        "ricochet-bench: ESP SA {spi:08x}: {:?}",
                        t.esp_sa_activity(spi)
                    );
                }
                if let Err(e) = t.remove_esp_sa(spi) {
                    first = first.and(Err(TargetError::Failed(format!("remove ESP SA: {e}"))));
                }
            }
            for sid in self.sids.drain(..) {
                if let Err(e) = t.remove(&sid) {
                    first = first.and(Err(TargetError::Failed(format!("remove session: {e}"))));
                }
            }
            for l in self.listeners.drain(..) {
                if let Err(e) = t.remove_listener(l) {
                    first = first.and(Err(TargetError::Failed(format!("remove listener: {e}"))));
                }
            }
        }
        let r = self.daemon.stop();
        first.and(r)
    }
}

impl Drop for DaemonRunning {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("ricochet-bench: {e}");
        }
    }
}

impl Running for DaemonRunning {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(mut self: Box<Self>) -> Result<(), TargetError> {
        self.teardown()
    }
}

// ---- (b) the XDP path --------------------------------------------------------

/// Ricochet's XDP path: the daemon with `--path xdp --no-pollers`, an
/// unauthenticated TWAMP session on the port and a STAMP listener on the
/// port + 1; `--mode stamp` measures the listener, any other mode the
/// session.
#[derive(Debug, Default)]
pub struct RicochetXdp;

impl Target for RicochetXdp {
    fn name(&self) -> &str {
        "xdp"
    }
    fn ceiling(&self) -> Option<&str> {
        Some("ceiling")
    }
    fn describe(&self) -> String {
        "Ricochet's XDP path (ricochet-reflector --path xdp): unauthenticated TWAMP session, \
         or STAMP listener with --mode stamp"
            .into()
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let pins = Pins::new("xdp");
        let daemon = Daemon::spawn(
            env,
            &[
                "--path",
                "xdp",
                "--no-pollers",
                "--iface",
                &env.reflector_iface,
            ],
            &pins,
        )?;
        pin_reflector_napi(env);
        let mut table = BpfSessionTable::open(&pins.dir, &pins.registry)
            .map_err(|e| failed("open the daemon's pins")(e.to_string()))?;
        let spec = unauth_spec(env);
        let sid = spec.sid;
        table
            .add(spec)
            .map_err(|e| failed("add session")(e.to_string()))?;
        let stamp_at = SocketAddr::new(env.reflector_addr, env.port.wrapping_add(1));
        let mut running = DaemonRunning {
            table: None,
            esp_spis: vec![],
            sids: vec![sid],
            listeners: vec![],
            daemon,
            _pins: pins,
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, env.port),
                session: TestSession::open(ProbeMode::Twamp),
                reply: ReplyKind::Reflector,
            },
        };
        table
            .start(&sid)
            .map_err(|e| failed("start session")(e.to_string()))?;
        table
            .add_listener(stamp_listener(stamp_at))
            .map_err(|e| failed("add STAMP listener")(e.to_string()))?;
        running.listeners.push(stamp_at);
        running.table = Some(table);
        if wants_stamp(env.mode) {
            running.endpoint.addr = stamp_at;
            running.endpoint.session = TestSession::open(ProbeMode::Stamp);
        }
        Ok(Box::new(running))
    }
}

/// `ricochet-reflector --path afxdp` with one queue, its poller on the
/// reflector core at the reflector threads' priority.
fn afxdp_daemon(env: &LabEnv, pins: &Pins) -> Result<Daemon, TargetError> {
    let core = env.reflector_core.map(|c| c.to_string());
    let mut args = vec!["--path", "afxdp", "--iface", &env.reflector_iface];
    if let Some(c) = &core {
        args.extend(["--cores", c.as_str()]);
    }
    if AFXDP_BUSY_POLL {
        args.push("--busy-poll");
    }
    let daemon = Daemon::spawn(env, &args, pins)?;
    pin_reflector_napi(env);
    if env.reflector_core.is_some() {
        if let Some(pid) = daemon.child.as_ref().map(Child::id) {
            if poller_priority(pid) == 0 {
                eprintln!("ricochet-bench: no AF_XDP poller thread found in the daemon");
            }
        }
    }
    Ok(daemon)
}

// ---- (c) the AF_XDP path, secured -------------------------------------------

/// Ricochet's AF_XDP path in a secured TWAMP mode: the daemon with
/// `--path afxdp` (one queue, the poller pinned to the reflector core) and a
/// session with random test keys, which the generator's pool uses too.
#[derive(Debug)]
pub struct RicochetAfxdp {
    /// [`ProbeMode::TwampAuth`] or [`ProbeMode::TwampEnc`].
    pub mode: ProbeMode,
}

impl Target for RicochetAfxdp {
    fn name(&self) -> &str {
        match self.mode {
            ProbeMode::TwampEnc => "afxdp-enc",
            _ => "afxdp-auth",
        }
    }
    fn ceiling(&self) -> Option<&str> {
        Some("afxdp-echo")
    }
    fn describe(&self) -> String {
        format!(
            "Ricochet's AF_XDP path (ricochet-reflector --path afxdp), {} TWAMP",
            match self.mode {
                ProbeMode::TwampEnc => "encrypted",
                _ => "authenticated",
            }
        )
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let pins = Pins::new(if self.mode == ProbeMode::TwampEnc {
            "enc"
        } else {
            "auth"
        });
        let daemon = afxdp_daemon(env, &pins)?;
        let mut table = BpfSessionTable::open(&pins.dir, &pins.registry)
            .map_err(|e| failed("open the daemon's pins")(e.to_string()))?;
        let keys = random_keys();
        let spec = secured_spec(env, self.mode, &keys);
        let sid = spec.sid;
        table
            .add(spec)
            .map_err(|e| failed("add session")(e.to_string()))?;
        table
            .start(&sid)
            .map_err(|e| failed("start session")(e.to_string()))?;
        Ok(Box::new(DaemonRunning {
            table: Some(table),
            esp_spis: vec![],
            sids: vec![sid],
            listeners: vec![],
            daemon,
            _pins: pins,
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, env.port),
                session: secured_session(self.mode, &keys),
                reply: ReplyKind::Reflector,
            },
        }))
    }
}

// ---- (c') the AF_XDP path with ESP -------------------------------------------

/// The UDP port of ESP-in-UDP (RFC 3948).
pub const ESP_UDP_PORT: u16 = 4500;

/// Ricochet's AF_XDP path with the test packets inside ESP (issue 7): the
/// daemon as for `afxdp-auth`, an unauthenticated TWAMP session as the inner
/// session and an ESP SA for it (AES-GCM-128, transport mode, ESP-in-UDP on
/// port 4500, random keys) installed with `add_esp_sa`. The SA's anti-replay
/// window is off: the generator replays precomputed ESP packets (see
/// [`super::frame`]), which a window would rightly drop; every packet is
/// still decrypted and ICV-verified, and every reply sealed with the
/// outbound SA. What this leaves out is the window's bitmap check.
#[derive(Debug, Default)]
pub struct RicochetAfxdpEsp;

/// Random AES-GCM-128 keys (16-octet key + 4-octet salt, RFC 4106 §8.1).
fn random_gcm_keys() -> Result<EspKeys, TargetError> {
    let mut km = zeroize::Zeroizing::new([0u8; 20]);
    rand::rng().fill_bytes(km.as_mut());
    EspKeys::gcm_from_keymat(km.as_ref()).map_err(|e| failed("ESP keys")(e.to_string()))
}

/// A random SPI outside the reserved 0..=255 (RFC 4303 §2.1).
fn random_spi() -> u32 {
    loop {
        let spi = rand::rng().next_u32();
        if spi > 255 {
            return spi;
        }
    }
}

impl Target for RicochetAfxdpEsp {
    fn name(&self) -> &str {
        "afxdp-esp"
    }
    fn ceiling(&self) -> Option<&str> {
        Some("afxdp-echo")
    }
    fn describe(&self) -> String {
        "Ricochet's AF_XDP path (ricochet-reflector --path afxdp), unauthenticated TWAMP inside \
         ESP-in-UDP (AES-GCM-128, anti-replay off: the pool is replayed)"
            .into()
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let pins = Pins::new("esp");
        let daemon = afxdp_daemon(env, &pins)?;
        let mut table = BpfSessionTable::open(&pins.dir, &pins.registry)
            .map_err(|e| failed("open the daemon's pins")(e.to_string()))?;
        let spec = unauth_spec(env);
        let sid = spec.sid;
        table
            .add(spec)
            .map_err(|e| failed("add session")(e.to_string()))?;
        let mut running = DaemonRunning {
            table: None,
            esp_spis: vec![],
            sids: vec![sid],
            listeners: vec![],
            daemon,
            _pins: pins,
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, ESP_UDP_PORT),
                session: TestSession::open(ProbeMode::Twamp),
                reply: ReplyKind::Reflector,
            },
        };
        table
            .start(&sid)
            .map_err(|e| failed("start session")(e.to_string()))?;
        let inbound_keys = random_gcm_keys()?;
        let inbound_spi = random_spi();
        let mut outbound_spi = random_spi();
        while outbound_spi == inbound_spi {
            outbound_spi = random_spi();
        }
        let r = table.add_esp_sa(EspSaSpec {
            inbound_spi,
            outbound_spi,
            inbound_keys: inbound_keys.clone(),
            outbound_keys: random_gcm_keys()?,
            esn: false,
            replay_window: 0,
            lifetime: EspLifetime::default(),
            mode: EspMode::Transport,
            udp_encap: true,
            local: env.reflector_addr,
            inner: EspInner::Session(sid),
        });
        running.table = Some(table);
        r.map_err(|e| failed("add ESP SA")(e.to_string()))?;
        running.esp_spis.push(inbound_spi);
        running.endpoint.session.esp = Some(EspSeal {
            spi: inbound_spi,
            keys: inbound_keys,
            inner_src_port: env.sender_port,
            inner_dst_port: env.port,
        });
        Ok(Box::new(running))
    }
}

// ---- (c0) bare AF_XDP echo ---------------------------------------------------

/// The ceiling of the AF_XDP path: Ricochet's XDP program redirecting an
/// authenticated session's packets to one AF_XDP socket whose poller (same
/// configuration as the daemon's) only swaps addresses and sends the frame
/// back. Runs in this process: the daemon has no echo mode.
#[derive(Debug, Default)]
pub struct AfxdpEcho;

struct EchoOwner {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
    endpoint: Endpoint,
}

impl EchoOwner {
    fn halt(&mut self) -> Result<(), TargetError> {
        drop(self.stop.take());
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(TargetError::Failed(format!("AF_XDP echo: {e}"))),
            Some(Err(_)) => Err(TargetError::Failed("AF_XDP echo thread panicked".into())),
        }
    }
}

impl Drop for EchoOwner {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("ricochet-bench: {e}");
        }
    }
}

impl Running for EchoOwner {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(mut self: Box<Self>) -> Result<(), TargetError> {
        self.halt()
    }
}

/// The echo's owner thread, in the reflector namespace: load, attach,
/// program, spawn the poller, report ready, wait for the stop, tear down.
fn echo_owner(
    env: LabEnv,
    keys: RawKeys,
    ready: mpsc::Sender<Result<(), String>>,
    stop: mpsc::Receiver<()>,
) -> Result<(), String> {
    let pins = Pins::new("echo");
    let setup = || -> Result<_, String> {
        netns::enter(&env.reflector_netns()).map_err(|e| e.to_string())?;
        let prog = XdpProgram::load(&LoadOptions {
            pin_dir: pins.dir.clone(),
            bind_ifindex: None,
        })
        .map_err(|e| format!("load Ricochet's XDP program: {e}"))?;
        let idx = netns::ifindex(&env.reflector_iface).map_err(|e| e.to_string())?;
        let att = prog
            .attach(idx, AttachMode::Native)
            .map_err(|e| format!("attach: {e}"))?;
        let mut table = BpfSessionTable::open(&pins.dir, &pins.registry)
            .map_err(|e| format!("open pins: {e}"))?;
        let spec = secured_spec(&env, ProbeMode::TwampAuth, &keys);
        let sid = spec.sid;
        table.add(spec).map_err(|e| format!("add session: {e}"))?;
        table
            .start(&sid)
            .map_err(|e| format!("start session: {e}"))?;
        // As the daemon configures its pollers (daemon::run).
        let mut cfg = PollerConfig::new(idx, 0);
        cfg.core = env.reflector_core;
        if AFXDP_BUSY_POLL {
            cfg.wait = WaitMode::BusyPoll;
        }
        cfg.mode = PollerMode::Echo;
        let shared = PollerShared::new(Arc::new(ClockCell::default()));
        let poller =
            Poller::spawn(cfg, prog.maps(), &shared).map_err(|e| format!("echo poller: {e}"))?;
        Ok((prog, att, table, sid, poller))
    };
    let (prog, att, mut table, sid, poller) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    pin_reflector_napi(&env);
    if env.reflector_core.is_some() {
        poller_priority(std::process::id());
    }
    let _ = ready.send(Ok(()));
    // Blocks until the handle drops its sender.
    let _ = stop.recv();
    let s = poller.stop().map_err(|e| e.to_string());
    if std::env::var_os("RICOCHET_BENCH_DEBUG").is_some() {
        eprintln!("ricochet-bench: AF_XDP echo: {s:?}");
    }
    let r = table.remove(&sid).map_err(|e| e.to_string());
    let d = att.detach().map_err(|e| e.to_string());
    let _ = prog.unpin_maps();
    drop(prog);
    drop(pins);
    s.map(|_| ()).and(r).and(d)
}

impl Target for AfxdpEcho {
    fn name(&self) -> &str {
        "afxdp-echo"
    }
    fn ceiling(&self) -> Option<&str> {
        None
    }
    fn describe(&self) -> String {
        "bare AF_XDP echo: Ricochet's XDP program redirects, one poller (the daemon's ring \
         settings) swaps addresses and returns the frame"
            .into()
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        let keys = random_keys();
        let session = secured_session(ProbeMode::TwampAuth, &keys);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel();
        let env2 = env.clone();
        let thread = std::thread::Builder::new()
            .name("bench-xsk-echo".into())
            .spawn(move || echo_owner(env2, keys, ready_tx, stop_rx))
            .map_err(|e| failed("spawn")(e.to_string()))?;
        let owner = EchoOwner {
            stop: Some(stop_tx),
            thread: Some(thread),
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, env.port),
                session,
                reply: ReplyKind::Echo,
            },
        };
        match ready_rx.recv_timeout(DAEMON_STARTUP) {
            Ok(Ok(())) => Ok(Box::new(owner)),
            Ok(Err(e)) => Err(TargetError::Failed(e)),
            Err(_) => Err(TargetError::Failed("AF_XDP echo did not start".into())),
        }
    }
}

// ---- (d) the socket path -----------------------------------------------------

/// Ricochet's socket path: a [`SocketSessionTable`] (what
/// `ricochet-control` runs with `data_plane = "socket"`) whose loop runs on
/// a thread pinned to the reflector core, with one unauthenticated TWAMP
/// session (or, with `--mode stamp`, a STAMP listener).
#[derive(Debug, Default)]
pub struct RicochetSocket;

struct SocketRunning {
    _xdp: Attached,
    table: Option<SocketSessionTable>,
    driver: Option<JoinHandle<io::Result<()>>>,
    endpoint: Endpoint,
}

impl SocketRunning {
    fn halt(&mut self) -> Result<(), TargetError> {
        let r = match self.table.take() {
            Some(t) => t.shutdown().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        let j = match self.driver.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.to_string()),
            Some(Err(_)) => Err("socket loop panicked".into()),
        };
        r.and(j)
            .map_err(|e| TargetError::Failed(format!("socket path: {e}")))
    }
}

impl Drop for SocketRunning {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("ricochet-bench: {e}");
        }
    }
}

impl Running for SocketRunning {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn stop(mut self: Box<Self>) -> Result<(), TargetError> {
        self.halt()
    }
}

impl Target for RicochetSocket {
    fn name(&self) -> &str {
        "socket"
    }
    fn ceiling(&self) -> Option<&str> {
        Some("socket-echo")
    }
    fn describe(&self) -> String {
        "Ricochet's socket path (SocketSessionTable, the engine per packet), one pinned loop".into()
    }
    fn start(&mut self, env: &LabEnv) -> Result<Box<dyn Running>, TargetError> {
        // As for the socket echo: the veth peer's NAPI must run.
        let xdp = attach_in(env, Role::Pass, PROG_PASS)?;
        let stamp = wants_stamp(env.mode);
        let env2 = env.clone();
        let (table, driver) = netns::run_in(&env.reflector_netns(), move || {
            // The echo's receive buffer, for a like-for-like comparison.
            let cfg = TableConfig {
                socket: SocketOptions {
                    recv_buffer: Some(SOCKET_RCVBUF),
                    ..SocketOptions::default()
                },
                ..TableConfig::default()
            };
            let (mut table, driver) = SocketSessionTable::new(&cfg).map_err(|e| e.to_string())?;
            // The loop first: adding a socket waits for the loop to take it.
            // Spawned from inside the namespace (threads inherit it).
            let core = env2.reflector_core;
            let h = std::thread::Builder::new()
                .name("bench-sockets".into())
                .spawn(move || {
                    if let Some(c) = core {
                        netns::pin(0, c)?;
                        netns::set_fifo(0, netns::prio::REFLECTOR_THREAD)?;
                    }
                    driver.run()
                })
                .map_err(|e| e.to_string())?;
            let programmed = if stamp {
                table
                    .add_listener(stamp_listener(SocketAddr::new(
                        env2.reflector_addr,
                        env2.port,
                    )))
                    .map_err(|e| format!("add listener: {e}"))
            } else {
                let spec = unauth_spec(&env2);
                let sid = spec.sid;
                table
                    .add(spec)
                    .and_then(|()| table.start(&sid))
                    .map_err(|e| format!("add and start session: {e}"))
            };
            if let Err(e) = programmed {
                let _ = table.shutdown();
                let _ = h.join();
                return Err(e);
            }
            Ok::<_, String>((table, h))
        })
        .map_err(|e| TargetError::Failed(e.to_string()))?
        .map_err(failed("socket path"))?;
        let session = TestSession::open(if stamp {
            ProbeMode::Stamp
        } else {
            ProbeMode::Twamp
        });
        Ok(Box::new(SocketRunning {
            _xdp: xdp,
            table: Some(table),
            driver: Some(driver),
            endpoint: Endpoint {
                addr: SocketAddr::new(env.reflector_addr, env.port),
                session,
                reply: ReplyKind::Reflector,
            },
        }))
    }
}
