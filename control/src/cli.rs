//! Command line of `ricochet-control` and how it overrides the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use crate::config::{Config, ConfigError};
use crate::ports::PortRange;

const EXAMPLES: &str = "\
Examples:
  Serve with a configuration file:
    ricochet-control --config /etc/ricochet/control.toml

  Validate a file and print the effective configuration (exit 0 when valid):
    ricochet-control --check-config --config /etc/ricochet/control.toml

  Try it on loopback without a file, with a small test-port range:
    ricochet-control --listen 127.0.0.1:8620 --port-range 18760-18799 --log-level debug

  Disable the Prometheus endpoint:
    ricochet-control --config control.toml --metrics off

Signals: SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the configuration and
key file (listen addresses and the test-port range need a restart).";

/// TWAMP-Control server (RFC 5357, RFC 4656 security modes, TWAMP extensions).
///
/// Listens on TCP 862 (IPv6 and IPv4), admits clients by policy, hands out
/// reflector ports and programs the data plane. Command-line values override
/// the configuration file.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "ricochet-control", version, after_help = EXAMPLES)]
pub struct Cli {
    /// TOML configuration file. Without it the built-in defaults apply
    /// (print them with --check-config).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// TWAMP-Control listen address; repeat for several. Replaces `listen`
    /// from the file. IPv6 addresses go in brackets, with the port after them.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Reflector UDP port range handed out in Accept-Session, FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST")]
    pub port_range: Option<PortRange>,

    /// Prometheus endpoint address, or "off" to disable it.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub metrics: Option<MetricsArg>,

    /// Log filter: error, warn, info, debug, trace, or directives such as
    /// ricochet_control=debug.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Validate the configuration, print the effective values and exit
    /// (0 = valid, 1 = invalid).
    #[arg(long)]
    pub check_config: bool,
}

/// `--metrics` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsArg {
    /// Do not serve metrics.
    Off,
    /// Serve on this address.
    At(SocketAddr),
}

impl FromStr for MetricsArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(MetricsArg::Off);
        }
        s.parse()
            .map(MetricsArg::At)
            .map_err(|_| format!("{s:?} is neither ADDR:PORT (e.g. 127.0.0.1:9862) nor \"off\""))
    }
}

impl fmt::Display for MetricsArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsArg::Off => f.write_str("off"),
            MetricsArg::At(a) => write!(f, "{a}"),
        }
    }
}

impl Cli {
    /// Apply the command-line overrides to `config`.
    pub fn apply(&self, config: &mut Config) {
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        if let Some(range) = self.port_range {
            config.test_ports = range;
        }
        match self.metrics {
            Some(MetricsArg::Off) => config.metrics.enabled = false,
            Some(MetricsArg::At(addr)) => {
                config.metrics.enabled = true;
                config.metrics.listen = addr;
            }
            None => {}
        }
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
    }

    /// The file (or defaults) with the overrides applied, validated.
    pub fn effective_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::read(path)?,
            None => Config::default(),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn overrides_replace_file_values() {
        let cli = Cli::try_parse_from([
            "ricochet-control",
            "--listen",
            "127.0.0.1:8620",
            "--listen",
            "[::1]:8620",
            "--port-range",
            "20000-20010",
            "--metrics",
            "127.0.0.1:19000",
            "--log-level",
            "debug",
        ])
        .expect("parses");
        let mut c = Config::parse("listen = [\"0.0.0.0:862\"]\n[metrics]\nenabled = false")
            .expect("parses");
        cli.apply(&mut c);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[1].to_string(), "[::1]:8620");
        assert_eq!(c.test_ports.to_string(), "20000-20010");
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:19000");
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn no_overrides_keep_file_values() {
        let cli = Cli::try_parse_from(["ricochet-control"]).expect("parses");
        let mut c = Config::parse("test_ports = \"5000-5100\"").expect("parses");
        let before = c.clone();
        cli.apply(&mut c);
        assert_eq!(c, before);
        assert_eq!(cli.effective_config().expect("defaults"), Config::default());
    }

    #[test]
    fn metrics_off_and_bad_values() {
        let cli = Cli::try_parse_from(["x", "--metrics", "off"]).expect("parses");
        let mut c = Config::default();
        cli.apply(&mut c);
        assert!(!c.metrics.enabled);
        assert!(Cli::try_parse_from(["x", "--metrics", "somewhere"]).is_err());
        assert!(Cli::try_parse_from(["x", "--port-range", "9-1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--listen", "862"]).is_err());
    }

    #[test]
    fn override_is_validated() {
        let cli =
            Cli::try_parse_from(["x", "--log-level", "ricochet_control=loud"]).expect("parses");
        let err = cli.effective_config().expect_err("invalid");
        assert!(err.to_string().contains("log_level"), "{err}");
    }

    #[test]
    fn help_has_examples() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--check-config --config"), "{help}");
        assert!(help.contains("SIGHUP"));
    }
}
