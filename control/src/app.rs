//! The daemon: configuration, key sources, data plane, logging, metrics
//! endpoint and the control loop wired together (what `main` runs).
//!
//! Start-up order: configuration → key sources (the key file must be private,
//! see [`crate::keys`]) → `--check-config` stops here → logging → data plane
//! ([`data_plane`]) → listeners and metrics endpoint ([`Daemon::start`]) →
//! loop. Any failure before the loop exits with status 1 and a message that
//! says what to change.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ricochet_protocol::modes::Modes;
use ricochet_protocol::server::ServerConfig;
use ricochet_protocol::time::NtpTimestamp;
use ricochet_protocol::twamp_test::SessionFormat;
use ricochet_reflector::session_table::SessionTable;

use crate::cli::Cli;
use crate::config::{Config, DataPlaneKind};
use crate::event_loop::{
    ConnInfo, Context, HandlerFactory, LoopSettings, Reload, Server, StopHandle,
};
use crate::ike_responder::{IkeResponder, ResponderSettings};
use crate::ikev2::{Ikev2KeySource, Ikev2SaDirectory, SaFile, SaSocket, SharedSaTable};
use crate::keys::{Keys, StaticKeys};
use crate::logging::{self, LogHandle};
use crate::metrics::{Metrics, MetricsServer};
use crate::policy::{Policy, Rules};
use crate::ports::PortAllocator;
use crate::twamp::{self, ntp_now, DaemonState, SessionSettings, TwampHandler};

/// Run the program for `cli`; the exit code is 0 on a clean stop or a valid
/// `--check-config`, 1 on any configuration or start-up error.
pub fn main(cli: Cli) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("ricochet-control: {e}");
        ExitCode::from(1)
    };
    let config = match cli.effective_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let keys = match StaticKeys::load(&config, cli.config.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    // The STAMP key files are checked here too, so --check-config catches them.
    if let Err(e) = stamp_session_specs(&config) {
        return fail(&e);
    }
    let warnings = warnings(&config, &keys);
    if let Some(path) = &config.ikev2.sa_file {
        if let Err(e) = SaFile::load(path) {
            return fail(&e);
        }
    }
    if config.ikev2.responder.enabled() {
        if let Err(e) = load_psks(&config) {
            return fail(&e);
        }
    }
    if cli.check_config {
        print!("{}", config.to_toml());
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        eprintln!("ricochet-control: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let log = match logging::init(&config.log_level) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let table = match data_plane(&config) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let options = DaemonOptions {
        cli,
        config,
        keys,
        table,
        log: Some(log),
        timing: None,
    };
    let result = Daemon::start(options).and_then(|mut daemon| {
        daemon.handle_signals().map_err(|e| e.to_string())?;
        daemon.run().map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(&e)
        }
    }
}

/// The `[[stamp.session]]` entries as the data plane's specs (key files
/// read and checked).
pub fn stamp_session_specs(
    config: &Config,
) -> Result<Vec<ricochet_reflector::session_table::StampSessionSpec>, String> {
    use crate::config::StampTimestampFormat;
    use ricochet_protocol::time::TimeFormat;
    use ricochet_reflector::stamp_engine::CosPolicy;
    config
        .stamp
        .session
        .iter()
        .map(|s| {
            let key = match &s.key_file {
                Some(p) => Some(crate::keys::read_stamp_key(p)?),
                None => None,
            };
            Ok(ricochet_reflector::session_table::StampSessionSpec {
                sender: s.sender,
                local: s.local(),
                ssid: s.ssid,
                key,
                timestamp_format: match s.timestamp_format {
                    StampTimestampFormat::Ntp => TimeFormat::Ntp,
                    StampTimestampFormat::Ptp => TimeFormat::Ptp,
                },
                dscp: s.dscp,
                cos_policy: match &s.cos_allowed_dscp {
                    None => CosPolicy::ALLOW_ALL,
                    Some(list) => CosPolicy(
                        list.iter()
                            .filter(|d| **d < 64)
                            .fold(0, |acc, d| acc | (1u64 << d)),
                    ),
                },
                micro_session_id: s.micro_session_id,
                rate_limit_pps: config.rate_limit.pps,
                rate_burst: config.rate_limit.burst,
            })
        })
        .collect()
}

/// Installs every `[[stamp.session]]` in the data plane; returns how many.
fn install_stamp_sessions(config: &Config, table: &mut dyn SessionTable) -> Result<usize, String> {
    let specs = stamp_session_specs(config)?;
    for spec in &specs {
        let id = spec.id();
        table.add_stamp_session(spec.clone()).map_err(|e| {
            format!("cannot install {id}: {e}; check stamp.session and the data plane")
        })?;
    }
    Ok(specs.len())
}

/// The data plane selected by `data_plane` in the configuration.
///
/// The single place where a [`SessionTable`] implementation is chosen: the
/// socket reflector (`reflector::socket`) and the pinned BPF maps
/// (`reflector::bpf`) are wired here as they land.
pub fn data_plane(config: &Config) -> Result<Box<dyn SessionTable>, String> {
    match config.data_plane {
        DataPlaneKind::Socket => {
            let table = ricochet_reflector::socket::SocketSessionTable::spawn(
                &ricochet_reflector::socket::TableConfig::default(),
            )
            .map_err(|e| format!("cannot start the socket data plane: {e}"))?;
            Ok(Box::new(table))
        }
        DataPlaneKind::Bpf => {
            if let Some(dir) = config.bpf.registry.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let table = ricochet_reflector::bpf::BpfSessionTable::open(
                &config.bpf.pin_dir,
                &config.bpf.registry,
            )
            .map_err(|e| {
                format!(
                    "cannot open the BPF data plane at {}: {e}; start ricochet-reflector \
                     --pin-dir {} first",
                    config.bpf.pin_dir.display(),
                    config.bpf.pin_dir.display()
                )
            })?;
            Ok(Box::new(table))
        }
    }
}

/// The RFC 7717 key source of `config`: the in-process responder's SA
/// table (if it runs), its SA file read (it must be private and parse) and
/// its SA socket bound; `None` without any source.
pub fn ikev2_source(
    config: &Config,
    responder: Option<SharedSaTable>,
) -> Result<Option<Ikev2KeySource>, String> {
    let c = &config.ikev2;
    let mut directories: Vec<Box<dyn Ikev2SaDirectory>> = Vec::new();
    if let Some(table) = responder {
        directories.push(Box::new(table));
    }
    if let Some(path) = &c.sa_file {
        let file = SaFile::load(path)?;
        tracing::info!(path = %path.display(), sas = file.len(), "IKEv2 SA file read");
        directories.push(Box::new(file));
    }
    if let Some(path) = &c.sa_socket {
        directories.push(Box::new(SaSocket::bind(path, SharedSaTable::new())?));
    }
    Ok((!directories.is_empty()).then(|| Ikev2KeySource::new(directories, c.token_key.into())))
}

/// The in-process IKEv2 responder of `config` (sockets bound, PSKs read)
/// and the table it publishes its SAs into; `None` when not configured.
pub fn ike_responder(config: &Config) -> Result<Option<(IkeResponder, SharedSaTable)>, String> {
    let r = &config.ikev2.responder;
    if !r.enabled() {
        return Ok(None);
    }
    let psks = load_psks(config)?;
    let settings = ResponderSettings {
        addresses: r.listen.clone(),
        port: r.port,
        natt_port: r.natt_port,
        identity: r.identity.clone(),
        liveness: (r.liveness > 0).then(|| Duration::from_secs(r.liveness)),
        test_ports: (config.test_ports.first(), config.test_ports.last()),
    };
    let table = SharedSaTable::new();
    let responder = IkeResponder::bind(&settings, psks, table.clone())?;
    Ok(Some((responder, table)))
}

/// The responder's PSK file, checked like every secret file.
fn load_psks(config: &Config) -> Result<ricochet_ike::PskStore, String> {
    let Some(path) = &config.ikev2.responder.psk_file else {
        return Err("ikev2.responder.psk_file is not set".to_owned());
    };
    crate::keys::check_secret_file(path, "ikev2.responder.psk_file")?;
    ricochet_ike::PskStore::load(path).map_err(|e| format!("ikev2.responder.psk_file: {e}"))
}

/// Operator remarks on `config` and its keys (printed by `--check-config`,
/// logged at start).
pub fn warnings(config: &Config, keys: &StaticKeys) -> Vec<String> {
    let mut w = config.warnings();
    if config.security.needs_secret() && keys.is_empty() {
        w.push(
            "authenticated, encrypted or mixed mode is offered but no identity is configured: \
             every client choosing them will be refused"
                .to_owned(),
        );
    }
    for name in config.identities.keys() {
        if !keys.contains(name) {
            w.push(format!(
                "identities.{name:?} has no secret in security.key_file or [security.secrets]; \
                 it can never authenticate"
            ));
        }
    }
    w
}

/// Timers in finer units than the configuration's seconds (embedding and
/// tests); `None` in [`DaemonOptions`] takes them from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// SERVWAIT.
    pub servwait: Duration,
    /// REFWAIT.
    pub refwait: Duration,
    /// Stall timeout.
    pub stall: Duration,
    /// Cadence of the REFWAIT sweep (and of releasing stopped sessions).
    pub sweep_interval: Duration,
}

impl Timing {
    /// The timers of `config`.
    pub fn from_config(config: &Config) -> Timing {
        let loop_settings = LoopSettings::from_config(config);
        Timing {
            servwait: loop_settings.servwait,
            refwait: config.timers.refwait(),
            stall: loop_settings.stall,
            sweep_interval: loop_settings.sweep_interval,
        }
    }
}

/// Everything a [`Daemon`] is made of.
pub struct DaemonOptions {
    /// The command line (re-read with the file on reload).
    pub cli: Cli,
    /// The validated configuration.
    pub config: Config,
    /// Static key sources loaded from `config`.
    pub keys: StaticKeys,
    /// The data plane.
    pub table: Box<dyn SessionTable>,
    /// The reloadable log filter, if logging is set up.
    pub log: Option<LogHandle>,
    /// Timer override; `None` = from the configuration.
    pub timing: Option<Timing>,
}

/// A bound, ready-to-run daemon.
pub struct Daemon {
    server: Server<DaemonFactory>,
    metrics: Arc<Metrics>,
    metrics_server: Option<MetricsServer>,
}

impl Daemon {
    /// Bind the listeners and the metrics endpoint, and take over the
    /// sessions an earlier run left in the data plane (their control
    /// connections are gone): a data plane that outlives us (pinned maps)
    /// keeps reflecting them until REFWAIT passes without test packets; an
    /// in-process one cannot hold any, and anything it holds is removed.
    pub fn start(options: DaemonOptions) -> Result<Daemon, String> {
        let DaemonOptions {
            cli,
            config,
            keys,
            table,
            log,
            timing,
        } = options;
        let metrics = Arc::new(Metrics::new());
        let timing_override = timing;
        let timing = timing_override.unwrap_or_else(|| Timing::from_config(&config));
        let mut table = table;
        let stamp_sessions = install_stamp_sessions(&config, table.as_mut())?;
        if stamp_sessions > 0 {
            tracing::info!(
                sessions = stamp_sessions,
                "stateful STAMP sessions installed"
            );
        }
        let mut keys = Keys::new(keys);
        let responder = ike_responder(&config)?;
        let responder_table = responder.as_ref().map(|(_, t)| t.clone());
        if let Some(source) = ikev2_source(&config, responder_table)? {
            tracing::info!(source = ?source, "RFC 7717 key source ready; offering IKEv2-derived mode");
            keys.set_ikev2(Box::new(source));
        }
        let mut state = DaemonState::new(table, keys, session_settings(&config, timing));
        let stale = state.remove_stale_sessions(&metrics);
        if stale > 0 {
            tracing::warn!(
                sessions = stale,
                "removed data-plane sessions left by an earlier run"
            );
        }
        // A data plane that outlives us (pinned maps) still reflects the
        // sessions of an earlier run (zero loss across a restart): adopt
        // them; each ends after REFWAIT without test packets.
        let mut ports = PortAllocator::new(config.test_ports);
        let adopted = state.adopt_sessions(&mut ports, std::time::Instant::now());
        if adopted > 0 {
            tracing::warn!(
                sessions = adopted,
                refwait = ?timing.refwait,
                "adopted data-plane sessions left by an earlier run; each ends after \
                 REFWAIT without test packets"
            );
        }
        let start_time = ntp_now();
        let factory = DaemonFactory {
            server_config: server_config(&config, start_time),
            cli,
            config: config.clone(),
            log,
            timing_override,
            start_time,
        };
        let mut server = Server::bind(
            &config.listen,
            loop_settings(&config, timing),
            Policy::new(Rules::from_config(&config)),
            ports,
            metrics.clone(),
            state,
            factory,
        )
        .map_err(|e| e.to_string())?;
        if let Some((r, _)) = responder {
            server
                .add_service(Box::new(r))
                .map_err(|e| format!("ikev2.responder: cannot register its sockets: {e}"))?;
        }
        let metrics_server = if config.metrics.enabled {
            let server =
                MetricsServer::start(config.metrics.listen, metrics.clone()).map_err(|e| {
                    format!(
                        "cannot serve metrics on {}: {e}; choose another metrics.listen or use --metrics off",
                        config.metrics.listen
                    )
                })?;
            tracing::info!(addr = %server.local_addr(), "metrics at /metrics");
            Some(server)
        } else {
            None
        };
        Ok(Daemon {
            server,
            metrics,
            metrics_server,
        })
    }

    /// The bound TWAMP-Control addresses.
    pub fn control_addrs(&self) -> Vec<SocketAddr> {
        self.server.local_addrs()
    }

    /// The bound metrics endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(MetricsServer::local_addr)
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// A handle to stop or reload from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.server.stop_handle()
    }

    /// React to SIGTERM/SIGINT (stop) and SIGHUP (reload).
    pub fn handle_signals(&mut self) -> io::Result<()> {
        self.server.handle_signals()
    }

    /// Serve until stopped.
    pub fn run(mut self) -> io::Result<()> {
        let result = self.server.run();
        if let Some(m) = self.metrics_server.take() {
            m.shutdown();
        }
        result
    }
}

/// The per-connection server settings of a configuration (RFC 4656 §3.1:
/// the Start-Time is the same for every connection of this instance).
pub fn server_config(config: &Config, start_time: NtpTimestamp) -> ServerConfig {
    ServerConfig {
        modes: Modes(config.offered_modes()),
        count: config.security.pbkdf2_count,
        start_time,
        // A connection cannot hold more sessions than its client may.
        max_sessions: config.policy.max_sessions_per_client,
        greeting_unused: config.ikev2.greeting_probe.unused_octets(),
        test_format: SessionFormat::default(),
    }
}

fn session_settings(config: &Config, timing: Timing) -> SessionSettings {
    SessionSettings {
        refwait: timing.refwait,
        rate_limit: config.rate_limit,
    }
}

fn loop_settings(config: &Config, timing: Timing) -> LoopSettings {
    LoopSettings {
        servwait: timing.servwait,
        stall: timing.stall,
        sweep_interval: timing.sweep_interval,
        ..LoopSettings::from_config(config)
    }
}

/// Makes the per-connection handlers of the daemon and reloads its
/// configuration and keys on SIGHUP.
pub struct DaemonFactory {
    cli: Cli,
    config: Config,
    log: Option<LogHandle>,
    timing_override: Option<Timing>,
    start_time: NtpTimestamp,
    server_config: ServerConfig,
}

impl HandlerFactory for DaemonFactory {
    type Handler = TwampHandler;

    fn create(&mut self, info: &ConnInfo) -> TwampHandler {
        TwampHandler::new(info, &self.server_config)
    }

    /// Re-read the configuration and the keys. Any error (including a key
    /// file with a bad line or loose permissions) keeps the running
    /// configuration and keys.
    fn reload(&mut self, state: &mut DaemonState) -> Result<Reload, String> {
        let mut new = self.cli.effective_config().map_err(|e| e.to_string())?;
        let keys = StaticKeys::load(&new, self.cli.config.as_deref())?;
        for w in warnings(&new, &keys) {
            tracing::warn!("{w}");
        }
        let old = &self.config;
        for (changed, what) in [
            (old.listen != new.listen, "listen"),
            (old.test_ports != new.test_ports, "test_ports"),
            (old.metrics != new.metrics, "metrics"),
            (old.data_plane != new.data_plane, "data_plane"),
            (old.stamp != new.stamp, "stamp"),
            (old.ikev2.sa_file != new.ikev2.sa_file, "ikev2.sa_file"),
            (
                old.ikev2.sa_socket != new.ikev2.sa_socket,
                "ikev2.sa_socket",
            ),
            (
                old.ikev2.token_key != new.ikev2.token_key,
                "ikev2.token_key",
            ),
        ] {
            if changed {
                tracing::warn!("{what} changed; it takes effect at the next restart");
            }
        }
        // The IKEv2 sources stay as started (the socket is bound once), so
        // the greeting keeps offering what they can answer.
        new.ikev2.sa_file.clone_from(&old.ikev2.sa_file);
        new.ikev2.sa_socket.clone_from(&old.ikev2.sa_socket);
        new.ikev2.token_key = old.ikev2.token_key;
        if let Some(log) = &self.log {
            log.set(&new.log_level)?;
        }
        let timing = self
            .timing_override
            .unwrap_or_else(|| Timing::from_config(&new));
        tracing::info!(identities = keys.len(), "keys loaded");
        state.keys_mut().set_static(keys);
        state.keys_mut().refresh(true);
        state.set_settings(session_settings(&new, timing));
        self.server_config = server_config(&new, self.start_time);
        let reload = Reload {
            rules: Some(Rules::from_config(&new)),
            settings: Some(loop_settings(&new, timing)),
        };
        self.config = new;
        Ok(reload)
    }

    fn sweep(&mut self, ctx: &mut Context<'_, DaemonState>) {
        // An SA file an IKE daemon rewrote is picked up here.
        ctx.state.keys_mut().refresh(false);
        twamp::sweep(ctx);
    }
}
