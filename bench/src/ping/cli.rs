//! The `ricochet-ping` command line: clap arguments, value parsers (durations
//! with units, `HOST[:PORT]`, DSCP names, mode lists) and their translation
//! into a [`PingConfig`].

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use ricochet_protocol::crypto::TokenKeyDerivation;
use ricochet_protocol::modes::Modes;

use super::ike::IkeOptions;
use super::ikev2::load_ikev2_key;
use super::keys::{load_credentials, KeyWarning};
use super::{PingConfig, PingError};
use crate::pace::Schedule;

/// The IANA TWAMP-Control port (RFC 5357 §3.1, RFC 8545 §7).
pub const DEFAULT_PORT: u16 = 862;

/// Most packets per session: per-sequence-number state is kept for every
/// packet (T1, reply seen, RTT for IPDV, reflector numbers).
pub const MAX_COUNT: u32 = 100_000_000;

/// Examples and exit statuses, shown after the options by `--help`.
pub const AFTER_HELP: &str = "\
Examples:
  ricochet-ping 198.51.100.7
  ricochet-ping -c 1000 -i 1ms -s 64 -D EF '[2001:db8::7]:862'
  ricochet-ping -A enc -u alice -k /etc/twamp/alice.pfs 198.51.100.7
  ricochet-ping -A auth --ikev2-key-file /run/ricochet/ike.sas 198.51.100.7
  ricochet-ping -A enc --ike 198.51.100.7 --ike-id probe.example.net \
    --ike-peer-id twamp.example.net --ike-psk-file ike.psk 198.51.100.7
  ricochet-ping --sessions 4 --isc --exponential -i 10ms 198.51.100.7
  ricochet-ping -c 100000 -i 10us --json 198.51.100.7 > run.json
  ricochet-ping --raw -c 10 198.51.100.7 | awk '!/^#/ && $11 == \"ok\" {print $8}'

STAMP examples (RFC 8762/8972, no TWAMP-Control):
  ricochet-ping --stamp -c 100 -i 10ms 198.51.100.7
  ricochet-ping --stamp --ssid 7 --tlv follow-up --tlv timestamp-info 198.51.100.7:862
  ricochet-ping --stamp --stamp-key-file stamp.key --ssid 7 --tlv cos=EF --tlv hmac 198.51.100.7
  ricochet-ping --stamp --tlv extra-padding=64 --tlv location --raw -c 10 '[2001:db8::7]'

Exit status: 0 when every session got replies, 1 when a session got none or
was refused, 2 when the test could not run (usage, connection, set-up, key).
Ctrl-C stops sending and still prints the report.";

/// TWAMP control-client and session-sender (RFC 5357), in every mode, and a
/// STAMP session-sender (`--stamp`, RFC 8762/8972).
///
/// Connects to a TWAMP server, negotiates a mode, requests one or more test
/// sessions, sends paced test packets, and reports round-trip time, loss by
/// direction, duplicates, reordering, IPDV, reflector residence time and
/// one-way delays (with the clocks' error bounds).
#[derive(Parser, Debug, Clone)]
#[command(name = "ricochet-ping", version, after_help = AFTER_HELP)]
pub struct Args {
    /// The TWAMP server (or, with --stamp, the STAMP reflector): a host name,
    /// an IPv4 address or an IPv6 address in brackets, with an optional
    /// :PORT (default 862).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,

    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,

    /// Test packets to send per session (at most 100 million: about 20
    /// octets of bookkeeping each).
    #[arg(short = 'c', long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
    pub count: u32,

    /// Interval between test packets, with a unit: ns, us, ms, s (a bare
    /// number is seconds). The mean interval with --exponential.
    #[arg(short = 'i', long, default_value = "100ms", value_parser = parse_duration)]
    pub interval: Duration,

    /// Draw intervals from an exponential distribution (Poisson sampling,
    /// RFC 2330 §11.1.1) instead of sending at fixed intervals.
    #[arg(long)]
    pub exponential: bool,

    /// Seed of the exponential schedule (random when not given).
    #[arg(long, requires = "exponential")]
    pub seed: Option<u64>,

    /// Padding octets after the test-packet header (default: what makes the
    /// reply as long as the request: 27 open/mixed, 64 authenticated or
    /// encrypted, 30 with --dscp-ecn, plus the --reflect-octets length).
    #[arg(short = 's', long = "padding")]
    pub padding: Option<u32>,

    /// Fill the padding with zeros instead of pseudo-random octets.
    #[arg(long)]
    pub zero_padding: bool,

    /// DSCP of test packets and of the reflections (Type-P Descriptor): a
    /// number 0–63 or a name (EF, AF11…AF43, CS0…CS7, VA, LE).
    #[arg(short = 'D', long, default_value = "0", value_parser = parse_dscp)]
    pub dscp: u8,

    /// Security modes allowed, comma-separated: open, auth, enc, mixed
    /// (default: all; the most secure one the server offers and we have a
    /// key for is used, otherwise open).
    #[arg(short = 'A', long = "mode", value_delimiter = ',', value_enum)]
    pub modes: Vec<ModeArg>,

    /// Key identity (KeyID) for authenticated, encrypted and mixed modes.
    #[arg(short = 'u', long = "key-id", requires = "key_file")]
    pub key_id: Option<String>,

    /// perfSONAR key file (.pfs: `identity<TAB>hex secret` per line); it
    /// must not be readable by group or others.
    #[arg(short = 'k', long = "key-file", requires = "key_id")]
    pub key_file: Option<PathBuf>,

    /// RFC 7717: take the shared secret from an IKEv2 SA record file
    /// (`SPIi SPIr PRF KEY` per line, KEY = prf(SK_d, "IPPM") in hex, as an
    /// IKE daemon writes it for ricochet-control). The IKEv2-derived mode
    /// (0x80) is then selected with the security mode and the KeyID is
    /// SPIi||SPIr.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_id", "key_file"])]
    pub ikev2_key_file: Option<PathBuf>,

    /// Which SA of --ikev2-key-file to use (SPIi_SPIr, 16 hex digits each);
    /// needed when the file lists several.
    #[arg(long, value_name = "SPIi_SPIr", requires = "ikev2_key_file",
          value_parser = super::ikev2::parse_sa_id)]
    pub ikev2_sa: Option<ricochet_protocol::sa_records::SaId>,

    /// How the token key comes from the IKEv2-derived secret (RFC 7717 does
    /// not say): pbkdf2 (as with a passphrase; the default) or direct (its
    /// first 16 octets). Must match the server's ikev2.token_key.
    #[arg(long, value_enum, default_value = "pbkdf2")]
    pub ikev2_token_key: TokenKeyArg,

    /// RFC 7717 with our own IKE SA: bring up a childless IKEv2 SA with the
    /// server's IKE responder at PEER[:PORT] (default port 500; PSK
    /// authentication), key the TWAMP connection from it, delete it at the
    /// end. Needs --ike-id, --ike-peer-id and --ike-psk-file.
    #[arg(long, value_name = "PEER[:PORT]",
          conflicts_with_all = ["key_id", "key_file", "ikev2_key_file"],
          requires_all = ["ike_id", "ike_peer_id", "ike_psk_file"])]
    pub ike: Option<String>,

    /// Our IKE identity (IDi), an FQDN.
    #[arg(long, value_name = "FQDN", requires = "ike")]
    pub ike_id: Option<String>,

    /// The IKE responder's identity (IDr): sent, checked, and the name its
    /// PSK is looked up by.
    #[arg(long, value_name = "FQDN", requires = "ike")]
    pub ike_peer_id: Option<String>,

    /// PSK file for --ike: `IDENTITY SECRET` per line (the responder's
    /// identity, or `*`; SECRET literal or 0x-hex), mode 0600.
    #[arg(long, value_name = "FILE", requires = "ike")]
    pub ike_psk_file: Option<PathBuf>,

    /// Test sessions to run concurrently on the one control connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sessions: u32,

    /// Send T1 in the PTPv2 truncated format (RFC 8186). The reflector's
    /// PTPv2 capability is selected whenever the server offers it, as
    /// RFC 8186 §2.2 requires.
    #[arg(long)]
    pub ptp: bool,

    /// Individual Session Control (RFC 5938): Start-N/Stop-N-Sessions.
    #[arg(long)]
    pub isc: bool,

    /// Reflect Octets (RFC 6038): the reflector returns this many leading
    /// padding octets; they are checked in every reply.
    #[arg(long, value_name = "LEN")]
    pub reflect_octets: Option<u16>,

    /// Symmetrical Size sender packets (RFC 6038).
    #[arg(long)]
    pub symmetrical: bool,

    /// DSCP and ECN Monitoring (RFC 7750): the reflector reports the DSCP
    /// and ECN our packets arrived with.
    #[arg(long)]
    pub dscp_ecn: bool,

    /// How long to wait for replies after the last packet; also the
    /// session Timeout sent to the server (RFC 5357 §3.5).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Local UDP port of the (first) session; further sessions use the
    /// following ports. Default: any free port.
    #[arg(long, default_value_t = 0)]
    pub sender_port: u16,

    /// Time allowed to connect and for each control-message answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// One line per packet after the summary (per-packet detail in --json).
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Print the report as JSON.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,

    /// Print one machine-readable line per packet (all four timestamps in
    /// ns) instead of the summary.
    #[arg(long)]
    pub raw: bool,

    /// STAMP (RFC 8762/8972) instead of TWAMP: `--stamp` and its options.
    #[command(flatten, next_help_heading = "STAMP (no TWAMP-Control)")]
    pub stamp: super::stamp::StampArgs,
}

/// `--ikev2-token-key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenKeyArg {
    /// K = PBKDF2-HMAC-SHA1(secret, Salt, Count) (RFC 4656 §3.1).
    Pbkdf2,
    /// K = the first 16 octets of the secret.
    Direct,
}

impl From<TokenKeyArg> for TokenKeyDerivation {
    fn from(a: TokenKeyArg) -> Self {
        match a {
            TokenKeyArg::Pbkdf2 => TokenKeyDerivation::Pbkdf2,
            TokenKeyArg::Direct => TokenKeyDerivation::Direct,
        }
    }
}

/// A security mode named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Unauthenticated (mode 1).
    #[value(alias = "o", alias = "unauthenticated")]
    Open,
    /// Authenticated (mode 2).
    #[value(alias = "a", alias = "authenticated")]
    Auth,
    /// Encrypted (mode 4).
    #[value(alias = "e", alias = "encrypted")]
    Enc,
    /// Mixed: encrypted control, unauthenticated test packets (mode 8, RFC 5618).
    #[value(alias = "m")]
    Mixed,
}

impl ModeArg {
    /// The mode's bit (RFC 4656 §3.1, RFC 5618 §3).
    pub fn bit(self) -> Modes {
        match self {
            ModeArg::Open => Modes::UNAUTHENTICATED,
            ModeArg::Auth => Modes::AUTHENTICATED,
            ModeArg::Enc => Modes::ENCRYPTED,
            ModeArg::Mixed => Modes::MIXED,
        }
    }
}

/// Parses a duration with a unit: `250ns`, `10us` (or `µs`), `1.5ms`, `2s`,
/// `1m`; a bare number is seconds (twping's `-i 0.1`). Zero is allowed
/// (back-to-back sending); negative, non-finite and absurd values are not.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // The unit is the trailing run of letters ("ms", "µs"); the rest is the number.
    let split = t
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphabetic())
        .last()
        .map_or(t.len(), |(i, _)| i);
    let (num, unit) = t.split_at(split);
    let num = num.trim();
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 10us, 1ms, 0.5s)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1e9,
        "ms" => 1e6,
        "us" | "µs" | "μs" => 1e3,
        "ns" => 1.0,
        "m" | "min" => 60e9,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use ns, us, ms, s)"
            ))
        }
    };
    let ns = v * scale;
    if !ns.is_finite() || ns < 0.0 {
        return Err(format!("'{s}' is not a non-negative duration"));
    }
    if ns > 86_400e9 {
        return Err(format!("'{s}' is longer than a day"));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Parses a DSCP: 0–63 (decimal, or hex with 0x) or a standard name
/// (RFC 2474 CS0–CS7, RFC 2597 AF11–AF43, RFC 3246 EF, RFC 5865 VA,
/// RFC 8622 LE).
pub fn parse_dscp(s: &str) -> Result<u8, String> {
    let t = s.trim().to_ascii_uppercase();
    let v = if let Some(hex) = t.strip_prefix("0X") {
        u8::from_str_radix(hex, 16).ok()
    } else if let Ok(n) = t.parse::<u8>() {
        Some(n)
    } else {
        match t.as_str() {
            "EF" => Some(46),
            "VA" | "VOICE-ADMIT" => Some(44),
            "LE" => Some(1),
            "BE" | "DF" | "DEFAULT" => Some(0),
            _ => {
                if let Some(c) = t.strip_prefix("CS") {
                    c.parse::<u8>().ok().filter(|&c| c <= 7).map(|c| c << 3)
                } else if let Some(af) = t.strip_prefix("AF") {
                    let b = af.as_bytes();
                    if b.len() == 2
                        && (b'1'..=b'4').contains(&b[0])
                        && (b'1'..=b'3').contains(&b[1])
                    {
                        Some(((b[0] - b'0') << 3) | ((b[1] - b'0') << 1))
                    } else {
                        None
                    }
                } else {
                    None
                }
            }
        }
    };
    match v {
        Some(d) if d <= 63 => Ok(d),
        _ => Err(format!(
            "'{s}' is not a DSCP (0-63, EF, AF11-AF43, CS0-CS7, VA, LE)"
        )),
    }
}

/// A `HOST[:PORT]` argument split into host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address literal (IPv6 without its brackets).
    pub host: String,
    /// The port, [`DEFAULT_PORT`] when none was given.
    pub port: u16,
}

/// Splits `HOST[:PORT]`: `host`, `host:port`, `192.0.2.1:862`, `[2001:db8::1]`,
/// `[2001:db8::1]:862`; an unbracketed IPv6 literal (`2001:db8::1`) is taken
/// whole, without a port.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty server address".into());
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{p}' is not a port (1-65535)"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{s}': missing ']' after the IPv6 address"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() && !host.contains('%') {
            return Err(format!("'{host}' is not an IPv6 address"));
        }
        let port = match after {
            "" => DEFAULT_PORT,
            p => port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("'{s}': expected ':PORT' after ']'"))?,
            )?,
        };
        return Ok(Target {
            host: host.to_owned(),
            port,
        });
    }
    match s.matches(':').count() {
        0 => Ok(Target {
            host: s.to_owned(),
            port: DEFAULT_PORT,
        }),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            if h.is_empty() {
                return Err(format!("'{s}': missing host"));
            }
            Ok(Target {
                host: h.to_owned(),
                port: port(p)?,
            })
        }
        _ => {
            if s.parse::<std::net::Ipv6Addr>().is_ok() {
                Ok(Target {
                    host: s.to_owned(),
                    port: DEFAULT_PORT,
                })
            } else {
                Err(format!(
                    "'{s}' is not an address; write IPv6 with a port as [ADDRESS]:PORT"
                ))
            }
        }
    }
}

/// Which address family the user allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// Resolves the target to the first address of the allowed family.
pub fn resolve(target: &Target, family: Family) -> Result<SocketAddr, PingError> {
    let addrs: Vec<SocketAddr> = if let Ok(ip) = target.host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, target.port)]
    } else {
        (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| PingError::Resolve {
                host: target.host.clone(),
                why: e.to_string(),
            })?
            .collect()
    };
    addrs
        .into_iter()
        .find(|a| match family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        })
        .ok_or_else(|| PingError::Resolve {
            host: target.host.clone(),
            why: match family {
                Family::V4 => "no IPv4 address".into(),
                Family::V6 => "no IPv6 address".into(),
                Family::Any => "no address".into(),
            },
        })
}

impl Args {
    /// The configuration for [`super::run`], after resolving the server and
    /// loading the key. Warnings (key file readable by others) are returned
    /// for the caller to print.
    pub fn to_config(&self) -> Result<(PingConfig, Vec<KeyWarning>), PingError> {
        let target = parse_target(&self.target).map_err(PingError::Usage)?;
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => Family::V4,
            (_, true) => Family::V6,
            _ => Family::Any,
        };
        let server = resolve(&target, family)?;
        let allowed = if self.modes.is_empty() {
            Modes::SECURITY
        } else {
            self.modes.iter().fold(Modes::NONE, |m, a| m | a.bit())
        };
        let (credentials, mut warnings) = match (&self.key_id, &self.key_file) {
            (Some(id), Some(path)) => {
                let (c, w) = load_credentials(path, id)?;
                (Some(c), w)
            }
            _ => (None, Vec::new()),
        };
        let ikev2 = match &self.ikev2_key_file {
            Some(path) => {
                let (k, w) = load_ikev2_key(path, self.ikev2_sa, self.ikev2_token_key.into())?;
                warnings.extend(w);
                Some(k)
            }
            None => None,
        };
        let ike = match &self.ike {
            Some(peer) => {
                let t = parse_target(peer).map_err(PingError::Usage)?;
                // parse_target defaults to the TWAMP port; IKE's is 500.
                let explicit =
                    peer.contains("]:") || (!peer.contains('[') && peer.matches(':').count() == 1);
                let t = Target {
                    port: if explicit { t.port } else { 500 },
                    ..t
                };
                Some(IkeOptions {
                    peer: resolve(&t, family)?,
                    local_id: self.ike_id.clone().unwrap_or_default(),
                    peer_id: self.ike_peer_id.clone(),
                    psk_file: self.ike_psk_file.clone().unwrap_or_default(),
                    timeout: self.connect_timeout,
                    token_key: self.ikev2_token_key.into(),
                })
            }
            None => None,
        };
        if (ikev2.is_some() || ike.is_some()) && allowed == Modes::UNAUTHENTICATED {
            return Err(PingError::Usage(
                "an IKEv2-derived key (RFC 7717) needs -A auth, enc or mixed".into(),
            ));
        }
        if credentials.is_none()
            && ikev2.is_none()
            && ike.is_none()
            && !allowed.contains(Modes::UNAUTHENTICATED)
        {
            return Err(PingError::KeyMissing { allowed });
        }
        let schedule = if self.exponential {
            Schedule::Exponential {
                mean: self.interval,
                seed: self.seed.unwrap_or_else(rand::random),
            }
        } else {
            Schedule::Fixed(self.interval)
        };
        Ok((
            PingConfig {
                server,
                allowed,
                credentials,
                ikev2,
                ike,
                count: self.count,
                schedule,
                padding: self.padding,
                zero_padding: self.zero_padding,
                dscp: self.dscp,
                sessions: self.sessions,
                ptp: self.ptp,
                isc: self.isc,
                reflect_octets: self.reflect_octets,
                symmetrical: self.symmetrical,
                dscp_ecn: self.dscp_ecn,
                timeout: self.timeout,
                sender_port: self.sender_port,
                io_timeout: self.connect_timeout,
                record_packets: self.verbose > 0 || self.raw,
            },
            warnings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_with_units() {
        let ok = [
            ("10us", 10_000),
            ("10µs", 10_000),
            ("1ms", 1_000_000),
            ("1.5ms", 1_500_000),
            ("1s", 1_000_000_000),
            ("0.1", 100_000_000),
            ("250ns", 250),
            ("2 s", 2_000_000_000),
            ("1e-3", 1_000_000),
            ("0", 0),
            ("1m", 60_000_000_000),
        ];
        for (s, ns) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_nanos(ns)), "{s}");
        }
        for bad in [
            "",
            "ms",
            "-1s",
            "10 parsecs",
            "1.2.3s",
            "nan",
            "inf",
            "2d",
            "1e30s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dscp_names_match_their_rfcs() {
        // RFC 3246 EF = 46, RFC 2597 AF41 = 34 / AF11 = 10, RFC 2474 CS6 = 48,
        // RFC 5865 VA = 44, RFC 8622 LE = 1.
        for (s, v) in [
            ("EF", 46),
            ("ef", 46),
            ("AF41", 34),
            ("AF11", 10),
            ("AF23", 22),
            ("CS6", 48),
            ("CS0", 0),
            ("VA", 44),
            ("LE", 1),
            ("63", 63),
            ("0x2e", 46),
        ] {
            assert_eq!(parse_dscp(s), Ok(v), "{s}");
        }
        for bad in ["64", "AF44", "AF51", "CS8", "x", "-1", "0x40"] {
            assert!(parse_dscp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets() {
        let t = |h: &str, p| Target {
            host: h.into(),
            port: p,
        };
        assert_eq!(parse_target("192.0.2.1"), Ok(t("192.0.2.1", 862)));
        assert_eq!(parse_target("192.0.2.1:8620"), Ok(t("192.0.2.1", 8620)));
        assert_eq!(parse_target("twamp.example"), Ok(t("twamp.example", 862)));
        assert_eq!(parse_target("h:1"), Ok(t("h", 1)));
        assert_eq!(parse_target("[2001:db8::1]"), Ok(t("2001:db8::1", 862)));
        assert_eq!(parse_target("[::1]:8620"), Ok(t("::1", 8620)));
        assert_eq!(parse_target("2001:db8::1"), Ok(t("2001:db8::1", 862)));
        for bad in [
            "",
            "[::1",
            "[::1]x",
            "[::1]:0",
            "[::1]:70000",
            "h:",
            ":862",
            "[nothost]:1",
            "2001:db8::g:1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_respects_family() {
        let v4 = parse_target("127.0.0.1:9").unwrap();
        assert_eq!(
            resolve(&v4, Family::Any).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(resolve(&v4, Family::V6).is_err());
        let v6 = parse_target("[::1]:9").unwrap();
        assert_eq!(
            resolve(&v6, Family::V6).unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert!(resolve(&v6, Family::V4).is_err());
    }

    #[test]
    fn cli_defaults_and_mode_lists() {
        let a = Args::try_parse_from(["ricochet-ping", "127.0.0.1"]).unwrap();
        assert_eq!(a.count, 100);
        assert_eq!(a.interval, Duration::from_millis(100));
        assert_eq!(a.timeout, Duration::from_secs(2));
        let (c, w) = a.to_config().unwrap();
        assert!(w.is_empty());
        assert_eq!(c.allowed, Modes::SECURITY);
        assert_eq!(c.server, "127.0.0.1:862".parse().unwrap());
        assert_eq!(c.schedule, Schedule::Fixed(Duration::from_millis(100)));

        let a =
            Args::try_parse_from(["ricochet-ping", "-A", "open,mixed", "-D", "EF", "::1"]).unwrap();
        assert_eq!(a.modes, vec![ModeArg::Open, ModeArg::Mixed]);
        assert_eq!(a.dscp, 46);
        let (c, _) = a.to_config().unwrap();
        assert_eq!(c.allowed, Modes::UNAUTHENTICATED | Modes::MIXED);

        // Protected modes only, and no key: refused before connecting.
        let a = Args::try_parse_from(["ricochet-ping", "-A", "enc", "127.0.0.1"]).unwrap();
        assert!(matches!(a.to_config(), Err(PingError::KeyMissing { .. })));

        // -u needs -k and vice versa; -4 and -6 exclude each other; count ≥ 1.
        for bad in [
            vec!["ricochet-ping", "-u", "alice", "h"],
            vec!["ricochet-ping", "-k", "f.pfs", "h"],
            vec!["ricochet-ping", "-4", "-6", "h"],
            vec!["ricochet-ping", "-c", "0", "h"],
            vec!["ricochet-ping", "-c", "100000001", "h"],
            vec!["ricochet-ping", "-A", "bogus", "h"],
            vec!["ricochet-ping", "--json", "--raw", "h"],
            vec!["ricochet-ping", "-i", "fast", "h"],
            vec!["ricochet-ping", "--seed", "1", "h"],
            vec!["ricochet-ping"],
        ] {
            assert!(Args::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let a = Args::try_parse_from([
            "ricochet-ping",
            "--exponential",
            "--seed",
            "7",
            "-i",
            "10us",
            "h",
        ])
        .unwrap();
        assert!(a.exponential);
        assert_eq!(a.seed, Some(7));
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in ".{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn target_parser_never_panics(s in ".{0,48}") {
            let _ = parse_target(&s);
        }

        #[test]
        fn whole_microseconds_round_trip(us in 0u64..10_000_000) {
            prop_assert_eq!(parse_duration(&format!("{us}us")), Ok(Duration::from_micros(us)));
        }

        #[test]
        fn socket_addrs_round_trip(ip in any::<std::net::IpAddr>(), port in 1u16..) {
            let sa = SocketAddr::new(ip, port);
            let t = parse_target(&sa.to_string()).unwrap();
            prop_assert_eq!(t.host.parse::<IpAddr>().unwrap(), ip);
            prop_assert_eq!(t.port, port);
        }
    }
}
