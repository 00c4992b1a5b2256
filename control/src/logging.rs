//! Logging through `tracing`, filtered by a directive that SIGHUP can change.
//!
//! Rule for every call site in this crate: never log key material, tokens,
//! session keys or HMACs; identities (KeyIDs) and addresses may be logged.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Debug, Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

/// Install the global subscriber writing to stderr, filtered by `directive`
/// (`info`, `debug`, `ricochet_control=trace`, …).
pub fn init(directive: &str) -> Result<LogHandle, String> {
    let filter = parse(directive)?;
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogHandle(handle))
}

impl LogHandle {
    /// Replace the filter.
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let filter = parse(directive)?;
        self.0
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    }
}

fn parse(directive: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(directive).map_err(|e| {
        format!("log level {directive:?} is not a valid filter ({e}); use error, warn, info, debug or trace")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_checked() {
        assert!(parse("info").is_ok());
        assert!(parse("ricochet_control=debug,warn").is_ok());
        assert!(parse("ricochet_control=loud").is_err());
    }
}
