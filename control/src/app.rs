//! The daemon: configuration, logging, metrics endpoint and the control loop
//! wired together (what `main` runs).

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::Cli;
use crate::config::Config;
use crate::event_loop::{
    Action, Activity, ConnInfo, ConnectionHandler, Context, HandlerFactory, LoopSettings, Reload,
    Server,
};
use crate::logging::{self, LogHandle};
use crate::metrics::{Metrics, MetricsServer};
use crate::policy::{Policy, Rules};
use crate::ports::PortAllocator;

/// Length of the Server Greeting (RFC 4656 §3.1).
pub const GREETING_LEN: usize = 64;
const GREETING_MODES: usize = 12;
const GREETING_COUNT: usize = 48;

/// Run the program for `cli`; the exit code is 0 on a clean stop or a valid
/// `--check-config`, 1 on any configuration or start-up error.
pub fn main(cli: Cli) -> ExitCode {
    let config = match cli.effective_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ricochet-control: {e}");
            return ExitCode::from(1);
        }
    };
    let mut warnings = config.warnings();
    match check_key_file(&config) {
        Ok(w) => warnings.extend(w),
        Err(e) => {
            eprintln!("ricochet-control: {e}");
            return ExitCode::from(1);
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
        Err(e) => {
            eprintln!("ricochet-control: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match serve(cli, config, Some(log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ricochet-control: {e}");
            ExitCode::from(1)
        }
    }
}

/// Serve `config` until SIGTERM/SIGINT.
pub fn serve(cli: Cli, config: Config, log: Option<LogHandle>) -> io::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let metrics_server = if config.metrics.enabled {
        let server = MetricsServer::start(config.metrics.listen, metrics.clone()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot serve metrics on {}: {e}; choose another metrics.listen or use --metrics off",
                    config.metrics.listen
                ),
            )
        })?;
        tracing::info!(addr = %server.local_addr(), "metrics at /metrics");
        Some(server)
    } else {
        None
    };
    let mut server = Server::bind(
        &config.listen,
        LoopSettings::from_config(&config),
        Policy::new(Rules::from_config(&config)),
        PortAllocator::new(config.test_ports),
        metrics,
        (),
        DaemonFactory {
            cli,
            config: config.clone(),
            log,
        },
    )?;
    server.handle_signals()?;
    tracing::warn!(
        "the TWAMP-Control state machine is not integrated yet: clients receive a Server Greeting \
         with Modes = 0 (RFC 4656 §3.1, \"not willing to serve\") and are disconnected"
    );
    let result = server.run();
    if let Some(m) = metrics_server {
        m.shutdown();
    }
    result
}

/// Check that the key file named by `config` can be read; returns warnings
/// (e.g. permissive permissions). Parsing the file is the key source's job.
pub fn check_key_file(config: &Config) -> Result<Vec<String>, String> {
    let Some(path) = &config.security.key_file else {
        return Ok(Vec::new());
    };
    check_secret_file(path)
}

fn check_secret_file(path: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "security.key_file {}: {e}; create it (identity<TAB>hex secret per line) or fix the path",
            path.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "security.key_file {} is not a regular file",
            path.display()
        ));
    }
    std::fs::File::open(path).map_err(|e| {
        format!(
            "security.key_file {} cannot be opened: {e}; let the daemon's user read it",
            path.display()
        )
    })?;
    let mut warnings = Vec::new();
    if meta.permissions().mode() & 0o077 != 0 {
        warnings.push(format!(
            "security.key_file {} is accessible by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(warnings)
}

/// Makes the per-connection handlers of the daemon and reloads its
/// configuration on SIGHUP.
#[derive(Debug)]
pub struct DaemonFactory {
    cli: Cli,
    config: Config,
    log: Option<LogHandle>,
}

impl HandlerFactory for DaemonFactory {
    type Handler = Unavailable;

    fn create(&mut self, _info: &ConnInfo) -> Unavailable {
        Unavailable {
            count: self.config.security.pbkdf2_count,
        }
    }

    fn reload(&mut self, _state: &mut ()) -> Result<Reload, String> {
        let new = self.cli.effective_config().map_err(|e| e.to_string())?;
        for w in check_key_file(&new)?.into_iter().chain(new.warnings()) {
            tracing::warn!("{w}");
        }
        let old = &self.config;
        for (changed, what) in [
            (old.listen != new.listen, "listen"),
            (old.test_ports != new.test_ports, "test_ports"),
            (old.metrics != new.metrics, "metrics"),
        ] {
            if changed {
                tracing::warn!("{what} changed; it takes effect at the next restart");
            }
        }
        if let Some(log) = &self.log {
            log.set(&new.log_level)?;
        }
        let reload = Reload {
            rules: Some(Rules::from_config(&new)),
            settings: Some(LoopSettings::from_config(&new)),
        };
        self.config = new;
        Ok(reload)
    }
}

/// Placeholder handler until the protocol crate's TWAMP-Control server
/// state machine is wired in: sends a Server Greeting with Modes = 0, which
/// RFC 4656 §3.1 defines as "the server is not willing to communicate", and
/// closes. Clients therefore fail fast and cleanly instead of hanging.
#[derive(Debug)]
pub struct Unavailable {
    count: u32,
}

impl ConnectionHandler for Unavailable {
    type State = ();

    fn on_open(&mut self, _ctx: &mut Context<'_, ()>) -> Action {
        Action::write_and_close(go_away_greeting(self.count))
    }

    fn on_bytes(&mut self, _ctx: &mut Context<'_, ()>, _data: &[u8]) -> Action {
        Action::none()
    }

    fn on_close(&mut self, _ctx: &mut Context<'_, ()>, _reason: crate::event_loop::CloseReason) {}

    fn activity(&self) -> Activity {
        Activity::Idle
    }
}

/// A Server Greeting offering no mode (RFC 4656 §3.1): Unused and Modes
/// zero, Challenge and Salt zero (never used, since no mode can be chosen),
/// Count as configured, MBZ zero.
pub fn go_away_greeting(count: u32) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[GREETING_MODES..GREETING_MODES + 4].copy_from_slice(&0u32.to_be_bytes());
    g[GREETING_COUNT..GREETING_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn go_away_greeting_layout() {
        // owamp-foundations.md §2: Modes at 12..16, Count at 48..52.
        let g = go_away_greeting(2048);
        assert_eq!(g.len(), 64);
        assert_eq!(&g[12..16], &[0, 0, 0, 0]);
        assert_eq!(&g[48..52], &[0, 0, 0x08, 0x00]);
        assert!(g[..12].iter().chain(&g[52..]).all(|b| *b == 0));
    }

    #[test]
    fn key_file_checks() {
        let dir = std::env::temp_dir().join(format!("ricochet-ctl-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("twamp.pfs");
        std::fs::write(&path, "interop\t7477616d702d676f6c64656e2d736563726574\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut c = Config::default();
        c.security.key_file = Some(path.clone());
        assert_eq!(check_key_file(&c), Ok(vec![]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let w = check_key_file(&c).expect("readable");
        assert!(w[0].contains("chmod 600"), "{w:?}");
        c.security.key_file = Some(dir.join("missing.pfs"));
        let e = check_key_file(&c).expect_err("missing");
        assert!(e.contains("missing.pfs"), "{e}");
        c.security.key_file = Some(dir.clone());
        assert!(check_key_file(&c)
            .expect_err("dir")
            .contains("not a regular file"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
