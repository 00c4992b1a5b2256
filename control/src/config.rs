//! The daemon's TOML configuration: loading, defaults, validation.
//!
//! Every table refuses unknown keys (`deny_unknown_fields`) so that a typo is
//! an error, not a silently ignored setting. [`Config::load`] parses and
//! validates; [`Config::validate`] returns every problem found at once, each
//! saying what to change.
//!
//! `control.example.toml` (beside `Cargo.toml`) documents every key with
//! its default; a unit test keeps it valid.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ports::PortRange;

/// Default TWAMP-Control listeners: IPv6 and IPv4 wildcard on TCP 862
/// (RFC 5357 §3.1, RFC 8545 §7).
pub const DEFAULT_LISTEN: [&str; 2] = ["[::]:862", "0.0.0.0:862"];

/// Default reflector test-port range, 18760–19960 (1201 ports).
///
/// Chosen to (a) stay below the Linux ephemeral range (32768–60999 by
/// default, `net.ipv4.ip_local_port_range`) so reflector ports never collide
/// with outgoing connections, (b) avoid the well-known ports, (c) mirror
/// perfSONAR's OWAMP convention (8760–9960) shifted by 10000 and contain the
/// 18760–18799 range the perfSONAR `twampd` used in the interop captures, so
/// firewall rules written for perfSONAR hosts fit.
pub const DEFAULT_TEST_PORTS: PortRange = match PortRange::checked(18760, 19960) {
    Some(r) => r,
    None => panic!("default test port range is valid"),
};

/// Default Prometheus endpoint: loopback only, so metrics are not exposed to
/// the networks the server measures.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9862";

/// Upper bound for the stall timer: RFC 4656 §3.1 ("Incomplete messages")
/// suggests dropping a connection whose message does not complete within
/// minutes, at most 30.
pub const MAX_STALL_SECS: u64 = 1800;

/// Lowest PBKDF2 count RFC 4656 §3.1 allows the server to offer.
pub const MIN_PBKDF2_COUNT: u32 = 1024;
/// Highest count we offer: RFC 5357 §6 tells clients to refuse counts above
/// their configured maximum, suggested default 32768.
pub const MAX_PBKDF2_COUNT: u32 = 32768;

/// Longest identity (KeyID) name: the KeyID field of Set-Up-Response is 80
/// octets of UTF-8 (RFC 4656 §3.1).
pub const MAX_IDENTITY_OCTETS: usize = 80;

/// One bit of the TWAMP-Modes registry (RFC 7717 §7 converted it to bit
/// positions; see `modes.md`), by the name used in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeName {
    /// Bit 0, value 1: unauthenticated (RFC 4656).
    Unauthenticated,
    /// Bit 1, value 2: authenticated (RFC 4656).
    Authenticated,
    /// Bit 2, value 4: encrypted (RFC 4656).
    Encrypted,
    /// Bit 3, value 8: unauthenticated test, encrypted control (RFC 5618).
    Mixed,
    /// Bit 4, value 16: Individual Session Control (RFC 5938).
    IndividualSessionControl,
    /// Bit 5, value 32: Reflect Octets (RFC 6038).
    ReflectOctets,
    /// Bit 6, value 64: Symmetrical Size sender packets (RFC 6038).
    SymmetricalSize,
    /// Bit 7, value 128: IKEv2-derived shared secret (RFC 7717).
    Ikev2Derived,
    /// Bit 8, value 256: DSCP and ECN monitoring (RFC 7750).
    DscpEcn,
    /// Bit 9, value 512: PTPv2 timestamps (RFC 8186).
    Ptpv2,
}

impl ModeName {
    /// Every mode name, in bit order.
    pub const ALL: [ModeName; 10] = [
        ModeName::Unauthenticated,
        ModeName::Authenticated,
        ModeName::Encrypted,
        ModeName::Mixed,
        ModeName::IndividualSessionControl,
        ModeName::ReflectOctets,
        ModeName::SymmetricalSize,
        ModeName::Ikev2Derived,
        ModeName::DscpEcn,
        ModeName::Ptpv2,
    ];

    /// The Modes-field value of this bit.
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Whether this is one of the four security modes (bits 0–3), of which a
    /// client selects exactly one (`modes.md` §2).
    pub const fn is_security(self) -> bool {
        (self as u32) < 4
    }

    /// The configuration spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModeName::Unauthenticated => "unauthenticated",
            ModeName::Authenticated => "authenticated",
            ModeName::Encrypted => "encrypted",
            ModeName::Mixed => "mixed",
            ModeName::IndividualSessionControl => "individual-session-control",
            ModeName::ReflectOctets => "reflect-octets",
            ModeName::SymmetricalSize => "symmetrical-size",
            ModeName::Ikev2Derived => "ikev2-derived",
            ModeName::DscpEcn => "dscp-ecn",
            ModeName::Ptpv2 => "ptpv2",
        }
    }
}

impl fmt::Display for ModeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OR of the bits of `modes`.
pub fn mode_bits<'a>(modes: impl IntoIterator<Item = &'a ModeName>) -> u32 {
    modes.into_iter().fold(0, |acc, m| acc | m.bit())
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP addresses the TWAMP-Control server listens on.
    pub listen: Vec<SocketAddr>,
    /// Set IPV6_V6ONLY on IPv6 listeners (default true), so `[::]:862` and
    /// `0.0.0.0:862` can both be bound. With false, an IPv6 wildcard also
    /// accepts IPv4 (as IPv4-mapped addresses) and must not be combined with
    /// an IPv4 listener on the same port.
    pub v6only: bool,
    /// Reflector UDP ports handed out in Accept-Session.
    pub test_ports: PortRange,
    /// `tracing` filter directive: `error`, `warn`, `info`, `debug`, `trace`
    /// or per-module directives such as `ricochet_control=debug`.
    pub log_level: String,
    /// Protocol timers.
    pub timers: Timers,
    /// Modes offered and key material.
    pub security: Security,
    /// Per-identity (KeyID) restrictions; see [`Identity`].
    pub identities: BTreeMap<String, Identity>,
    /// Admission policy: prefixes and limits.
    pub policy: PolicyConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Which data plane reflects the test packets (see [`DataPlaneKind`]).
    pub data_plane: DataPlaneKind,
    /// Per-session reflection ceiling handed to the data plane.
    pub rate_limit: RateLimit,
    /// Where the BPF data plane's pinned maps are (`data_plane = "bpf"`).
    pub bpf: BpfConfig,
    /// Stateful STAMP sessions provisioned out of band (RFC 8762 has no
    /// control protocol): `[[stamp.session]]`.
    pub stamp: StampConfig,
    /// RFC 7717 key sources and the draft-era greeting probe.
    pub ikev2: Ikev2Config,
}

/// STAMP (RFC 8762 / RFC 8972) sessions reflected without TWAMP-Control.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StampConfig {
    /// One entry per stateful session.
    pub session: Vec<StampSessionConfig>,
}

/// The T2/T3 format of a STAMP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StampTimestampFormat {
    /// NTP 64-bit (the default every sender must support, RFC 8762 §4.2.1).
    #[default]
    Ntp,
    /// PTPv2 truncated: seconds since the PTP epoch in TAI, Z bit set.
    Ptp,
}

/// One stateful STAMP session (`[[stamp.session]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StampSessionConfig {
    /// The Session-Sender's address and port: only its packets are
    /// reflected, and only to it.
    pub sender: SocketAddr,
    /// Our UDP port (862 is the STAMP default). Several sessions may share
    /// a port; they are told apart by sender and SSID.
    pub local_port: u16,
    /// Our address to bind (default: the wildcard of the sender's family).
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// The session's SSID (RFC 8972 §3; non-zero). Packets with another
    /// SSID are discarded.
    pub ssid: u16,
    /// A file holding the HMAC-SHA-256 key in hex (one line; owner root or
    /// us, chmod 600): authenticated mode. Absent: unauthenticated.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `"ntp"` (default) or `"ptp"`.
    #[serde(default)]
    pub timestamp_format: StampTimestampFormat,
    /// DSCP of replies without a Class of Service TLV; absent: the
    /// received DSCP is copied.
    #[serde(default)]
    pub dscp: Option<u8>,
    /// DSCPs a Class of Service TLV may ask for (RFC 8972 §4.4 local
    /// policy); absent: every DSCP. A refused one: the reply keeps the
    /// received DSCP and says RP = 1.
    #[serde(default)]
    pub cos_allowed_dscp: Option<Vec<u8>>,
    /// RFC 9534 Reflector Micro-session ID (the member link); absent: the
    /// Micro-session ID TLV is returned unrecognized.
    #[serde(default)]
    pub micro_session_id: Option<u16>,
}

impl StampSessionConfig {
    /// The address to bind.
    pub fn local(&self) -> SocketAddr {
        let ip = self.local_address.unwrap_or(match self.sender {
            SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
            SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
        });
        SocketAddr::new(ip, self.local_port)
    }
}

/// Whether PBKDF2 runs on an IKEv2-derived secret (RFC 7717 is silent; spec
/// `rfc7717-ikev2-key.md` §2 A).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKeyMode {
    /// Reading A (default): the derived secret replaces the passphrase;
    /// K = PBKDF2-HMAC-SHA1(secret, Salt, Count, 16) as in RFC 4656 §3.1.
    #[default]
    Pbkdf2,
    /// Reading B: K = the first 16 octets of the derived secret.
    Direct,
}

impl From<TokenKeyMode> for ricochet_protocol::crypto::TokenKeyDerivation {
    fn from(m: TokenKeyMode) -> Self {
        match m {
            TokenKeyMode::Pbkdf2 => ricochet_protocol::crypto::TokenKeyDerivation::Pbkdf2,
            TokenKeyMode::Direct => ricochet_protocol::crypto::TokenKeyDerivation::Direct,
        }
    }
}

/// RFC 7717: where IKEv2-derived secrets come from, and how they are used.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ikev2Config {
    /// How the token key is derived from an IKEv2-derived secret.
    pub token_key: TokenKeyMode,
    /// A root-only (0600) file of `SPIi SPIr PRF KEY` records an IKE daemon
    /// keeps current; re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sa_file: Option<PathBuf>,
    /// A Unix stream socket (created mode 0600) an IKE daemon writes the
    /// same records (and `delete SPIi SPIr`) to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sa_socket: Option<PathBuf>,
    /// The draft-era greeting probe (off by default; never for production).
    pub greeting_probe: GreetingProbe,
    /// The in-process IKEv2 responder (off unless `listen` is given).
    pub responder: IkeResponderConfig,
}

impl Ikev2Config {
    /// Whether any IKEv2 SA source is configured (then the IKEv2-derived
    /// Mode bit is offered).
    pub fn has_source(&self) -> bool {
        self.sa_file.is_some() || self.sa_socket.is_some() || self.responder.enabled()
    }
}

/// Ricochet's own IKEv2 responder (the `ike` crate), whose IKE SAs key
/// RFC 7717 TWAMP sessions: PSK authentication, childless SAs or one
/// CHILD_SA, NAT-T.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IkeResponderConfig {
    /// Addresses to answer IKE on (each binds `port` and `natt_port`).
    /// Empty (default): no responder. Give real addresses, not wildcards:
    /// the NAT detection hashes need the address the peer reached.
    pub listen: Vec<IpAddr>,
    /// IKE port (default 500).
    pub port: u16,
    /// NAT-T port (default 4500).
    pub natt_port: u16,
    /// Our identity (IDr), an FQDN.
    pub identity: String,
    /// Pre-shared keys by peer identity (`IDENTITY SECRET` per line,
    /// `0x`-hex or literal; `*` for any peer); mode 0600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<PathBuf>,
    /// Seconds without a message from a peer before a liveness check (0:
    /// none). A dead peer's SA is deleted after the retransmissions.
    pub liveness: u64,
}

impl Default for IkeResponderConfig {
    fn default() -> Self {
        IkeResponderConfig {
            listen: Vec::new(),
            port: 500,
            natt_port: 4500,
            identity: String::new(),
            psk_file: None,
            liveness: 60,
        }
    }
}

impl IkeResponderConfig {
    /// Whether the responder runs.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }
}

/// The greeting layout proposed in the IPPM working group on the way to
/// RFC 7717 (draft-ietf-ippm-ipsec, after IETF 87) and dropped from the RFC:
/// the 12 Unused octets of the Server Greeting carry a 4-octet protocol type
/// and then SPIi and SPIr. Only for testing what clients do with non-zero
/// Unused octets (RFC 4656 §3.1 says they are ignored); standard clients
/// are never meant to be offered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreetingProbe {
    /// Fill the Unused octets (default false: all zero, as RFC 7717 §5.2
    /// keeps them).
    pub enabled: bool,
    /// Octets 0–3: the protocol type (default 3, the IKEv2 Protocol ID of
    /// ESP, RFC 7296 §3.3.1).
    pub protocol: u32,
    /// Octets 4–7: SPIi (4 octets: the slides' 8 octets for both SPIs fit
    /// only 32-bit IPsec SPIs).
    pub spi_i: u32,
    /// Octets 8–11: SPIr.
    pub spi_r: u32,
}

impl Default for GreetingProbe {
    fn default() -> Self {
        GreetingProbe {
            enabled: false,
            protocol: 3,
            spi_i: 0x5249_4331,
            spi_r: 0x5249_4332,
        }
    }
}

impl GreetingProbe {
    /// The 12 Unused octets of the Server Greeting.
    pub fn unused_octets(&self) -> [u8; 12] {
        let mut u = [0u8; 12];
        if self.enabled {
            u[..4].copy_from_slice(&self.protocol.to_be_bytes());
            u[4..8].copy_from_slice(&self.spi_i.to_be_bytes());
            u[8..].copy_from_slice(&self.spi_r.to_be_bytes());
        }
        u
    }
}

/// The pinned maps `ricochet-reflector` created, and the session registry
/// the control plane keeps beside them (SIDs are not in the maps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BpfConfig {
    /// `ricochet-reflector --pin-dir` (bpffs).
    pub pin_dir: std::path::PathBuf,
    /// A regular file (not on bpffs) listing the started sessions, so a
    /// restarted control plane finds them again.
    pub registry: std::path::PathBuf,
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig {
            pin_dir: "/sys/fs/bpf/ricochet".into(),
            registry: "/var/lib/ricochet/sessions".into(),
        }
    }
}

/// The data plane the daemon programs (`data_plane = "socket" | "bpf"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPlaneKind {
    /// The portable in-process UDP socket reflector (default).
    #[default]
    Socket,
    /// The XDP / AF_XDP reflector behind pinned BPF maps.
    Bpf,
}

impl fmt::Display for DataPlaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataPlaneKind::Socket => "socket",
            DataPlaneKind::Bpf => "bpf",
        })
    }
}

/// The operator's ceiling on the reflections one session may cause.
///
/// TWAMP-Control declares no packet rate (Number of Packets and the schedule
/// MUST be 0, RFC 5357 §3.5), so a reflector cannot hold a client to a
/// declared rate; it can only bound what any one session costs. Each session
/// gets a token bucket of `pps` tokens per second holding at most `burst`;
/// packets beyond it are dropped, not reflected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Reflections per second per session; 0 = no limit. Default 100 000
    /// (about 1.2 Gbit/s of 1500-octet packets: far above any measurement
    /// stream, far below what a hostile sender could otherwise make us send).
    pub pps: u32,
    /// Packets a session may send back to back above the rate. Default 1000.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            pps: 100_000,
            burst: 1000,
        }
    }
}

/// Control-connection and session timers, in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// SERVWAIT (RFC 5357 §3.1): close a control connection with no complete
    /// message for this long, except while its sessions are running.
    pub servwait: u64,
    /// REFWAIT (RFC 5357 §3.1, RFC 5938 §4.2): end a started session that
    /// received no test packet for this long.
    pub refwait: u64,
    /// Close a connection whose started message (or pending output) makes no
    /// progress for this long (RFC 4656 §3.1 incomplete messages; ≤ 1800).
    pub stall: u64,
}

/// Security modes offered in the Server Greeting and their key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    /// Modes offered (the Server Greeting Modes field is their OR).
    pub modes: BTreeSet<ModeName>,
    /// PBKDF2 iteration count offered in the Server Greeting (RFC 4656 §3.1:
    /// power of two, at least 1024; we cap it at 32768, the client-side
    /// default maximum of RFC 5357 §6).
    pub pbkdf2_count: u32,
    /// Shared-secret file (perfSONAR `.pfs` format: identity, TAB, hex
    /// secret). It must be owned by root or the daemon's user and have mode
    /// 600 (or 400); the daemon refuses to start otherwise.
    pub key_file: Option<PathBuf>,
    /// Shared secrets given here instead of (or besides) the key file:
    /// identity = "hex secret", hex-encoded like a `.pfs` line. A
    /// configuration file holding secrets must be mode 600 like a key file.
    /// Secrets are never printed: `--check-config` shows `<redacted>`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, HexSecret>,
}

/// A hex-encoded shared secret from the configuration. Zeroized on drop;
/// `Debug` and serialization print `<redacted>`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct HexSecret(zeroize::Zeroizing<String>);

impl HexSecret {
    /// Text printed instead of the secret.
    pub const REDACTED: &'static str = "<redacted>";

    /// Wrap hex text.
    pub fn new(hex: impl Into<String>) -> HexSecret {
        HexSecret(zeroize::Zeroizing::new(hex.into()))
    }

    /// The hex text. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HexSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl Serialize for HexSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Self::REDACTED)
    }
}

impl<'de> Deserialize<'de> for HexSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(HexSecret::new)
    }
}

/// What one identity (the KeyID of Set-Up-Response) may do.
///
/// Identities present in the key file but not listed here may use every
/// offered mode: the key file already decides who can authenticate; this
/// table only narrows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Modes (security and feature bits) this identity may select. A
    /// selected Mode is allowed when every one of its bits is listed.
    pub modes: BTreeSet<ModeName>,
}

/// Admission policy (see `policy.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Client prefixes allowed to connect; empty = every address.
    pub allow: Vec<IpNet>,
    /// Client prefixes refused; deny wins over allow.
    pub deny: Vec<IpNet>,
    /// Control connections open at once, all clients together.
    pub max_connections: u32,
    /// Control connections open at once from one client.
    pub max_connections_per_client: u32,
    /// Test sessions (accepted, not yet ended) at once, all clients together.
    pub max_sessions: u32,
    /// Test sessions at once for one client.
    pub max_sessions_per_client: u32,
    /// IPv6 clients are counted per prefix of this length for the per-client
    /// limits (a host usually owns a whole /64).
    pub ipv6_client_prefix: u8,
}

/// Prometheus endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP endpoint.
    pub listen: SocketAddr,
    /// Serve metrics at all.
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            v6only: true,
            test_ports: DEFAULT_TEST_PORTS,
            log_level: "info".to_owned(),
            timers: Timers::default(),
            security: Security::default(),
            identities: BTreeMap::new(),
            policy: PolicyConfig::default(),
            metrics: MetricsConfig::default(),
            data_plane: DataPlaneKind::default(),
            rate_limit: RateLimit::default(),
            bpf: BpfConfig::default(),
            stamp: StampConfig::default(),
            ikev2: Ikev2Config::default(),
        }
    }
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            servwait: 900,
            refwait: 900,
            stall: 60,
        }
    }
}

impl Default for Security {
    /// Offers only unauthenticated mode: the authenticated modes need a key
    /// file, which has no sensible default.
    fn default() -> Self {
        Security {
            modes: BTreeSet::from([ModeName::Unauthenticated]),
            pbkdf2_count: 2048,
            key_file: None,
            secrets: BTreeMap::new(),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections: 1000,
            max_connections_per_client: 32,
            max_sessions: 1000,
            max_sessions_per_client: 100,
            ipv6_client_prefix: 64,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9862)),
            enabled: true,
        }
    }
}

impl Timers {
    /// SERVWAIT as a duration.
    pub fn servwait(&self) -> Duration {
        Duration::from_secs(self.servwait)
    }
    /// REFWAIT as a duration.
    pub fn refwait(&self) -> Duration {
        Duration::from_secs(self.refwait)
    }
    /// Stall timeout as a duration.
    pub fn stall(&self) -> Duration {
        Duration::from_secs(self.stall)
    }
}

impl Security {
    /// The Modes field of the Server Greeting.
    pub fn offered_bits(&self) -> u32 {
        mode_bits(&self.modes)
    }

    /// Whether any mode that needs a shared secret is offered.
    ///
    /// (The Modes of the Server Greeting are [`Config::offered_modes`]: these
    /// bits plus IKEv2Derived when an IKEv2 SA source is configured.)
    pub fn needs_secret(&self) -> bool {
        self.modes
            .iter()
            .any(|m| m.is_security() && *m != ModeName::Unauthenticated)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}; check the path given to --config and its permissions")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped keys.
    #[error("configuration file {path} is not valid: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// Values parse but cannot work together.
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Read and parse a configuration file without validating the values
    /// (command-line overrides may still change them).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parse TOML text without validating the values.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The Modes field of the Server Greeting: `security.modes`, plus the
    /// IKEv2-derived bit (RFC 7717, 0x80) when an IKEv2 SA source is
    /// configured and a protected mode is offered.
    pub fn offered_modes(&self) -> u32 {
        let mut bits = self.security.offered_bits();
        if self.ikev2.has_source() && self.security.needs_secret() {
            bits |= ModeName::Ikev2Derived.bit();
        }
        bits
    }

    /// The effective configuration as TOML (what `--check-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"))
    }

    /// Check that the values can work together; every problem is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.validate_listen(&mut problems);
        self.validate_timers(&mut problems);
        self.validate_security(&mut problems);
        self.validate_identities(&mut problems);
        self.validate_policy(&mut problems);
        self.validate_stamp(&mut problems);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.push(format!(
                "log_level {:?} is not a valid filter ({e}); use error, warn, info, debug or trace",
                self.log_level
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Non-fatal remarks worth showing an operator (printed by
    /// `--check-config` and logged at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let ports = self.test_ports.len();
        if (self.policy.max_sessions as usize) > ports {
            w.push(format!(
                "policy.max_sessions = {} exceeds the {} ports of test_ports {}; at most {} sessions can run",
                self.policy.max_sessions, ports, self.test_ports, ports
            ));
        }
        if self.policy.max_connections_per_client > self.policy.max_connections {
            w.push(format!(
                "policy.max_connections_per_client = {} exceeds policy.max_connections = {}",
                self.policy.max_connections_per_client, self.policy.max_connections
            ));
        }
        if self.policy.max_sessions_per_client > self.policy.max_sessions {
            w.push(format!(
                "policy.max_sessions_per_client = {} exceeds policy.max_sessions = {}",
                self.policy.max_sessions_per_client, self.policy.max_sessions
            ));
        }
        for directive in self.log_level.split(',').map(str::trim) {
            let is_level = ["error", "warn", "info", "debug", "trace", "off"]
                .iter()
                .any(|l| directive.eq_ignore_ascii_case(l));
            if !directive.is_empty() && !directive.contains('=') && !is_level {
                w.push(format!(
                    "log_level directive {directive:?} is read as a module name (all its events, nothing else); \
                     did you mean error, warn, info, debug or trace?"
                ));
            }
        }
        if self.security.modes.contains(&ModeName::Ikev2Derived) && !self.ikev2.has_source() {
            w.push(
                "security.modes offers ikev2-derived but no IKEv2 SA source is configured \
                 (ikev2.sa_file or ikev2.sa_socket): clients selecting it are refused with \
                 Accept 6 (RFC 7717 §5.3)"
                    .to_owned(),
            );
        }
        if self.ikev2.greeting_probe.enabled {
            w.push(
                "ikev2.greeting_probe is enabled: the Server Greeting's Unused octets are not \
                 zero (draft-era RFC 7717 layout, for client testing only)"
                    .to_owned(),
            );
        }
        if self.metrics.enabled && !self.metrics.listen.ip().is_loopback() {
            w.push(format!(
                "metrics.listen = {} is not a loopback address; the endpoint has no authentication",
                self.metrics.listen
            ));
        }
        w
    }

    fn validate_listen(&self, problems: &mut Vec<String>) {
        if self.listen.is_empty() {
            problems.push(format!(
                "listen is empty; give at least one address, for example {DEFAULT_LISTEN:?}"
            ));
        }
        let mut seen = BTreeSet::new();
        for addr in &self.listen {
            if !seen.insert(addr) {
                problems.push(format!(
                    "listen contains {addr} twice; remove the duplicate"
                ));
            }
            if addr.port() == 0 {
                problems.push(format!(
                    "listen address {addr} has port 0; TWAMP-Control uses 862"
                ));
            }
            if self.metrics.enabled && overlaps(*addr, self.metrics.listen, self.v6only) {
                problems.push(format!(
                    "listen address {addr} collides with metrics.listen {}; give the metrics endpoint another port",
                    self.metrics.listen
                ));
            }
        }
        if !self.v6only {
            for v6 in self.listen.iter().filter(|a| a.is_ipv6()) {
                if let Some(v4) = self
                    .listen
                    .iter()
                    .find(|a| a.is_ipv4() && a.port() == v6.port() && v6.ip().is_unspecified())
                {
                    problems.push(format!(
                        "with v6only = false, {v6} also accepts IPv4 and cannot be bound together with {v4}; \
                         remove {v4} or set v6only = true"
                    ));
                }
            }
        }
    }

    fn validate_timers(&self, problems: &mut Vec<String>) {
        let t = &self.timers;
        for (name, value) in [
            ("servwait", t.servwait),
            ("refwait", t.refwait),
            ("stall", t.stall),
        ] {
            if value == 0 {
                problems.push(format!(
                    "timers.{name} is 0; give a number of seconds (default {})",
                    match name {
                        "stall" => 60,
                        _ => 900,
                    }
                ));
            }
        }
        if t.stall > MAX_STALL_SECS {
            problems.push(format!(
                "timers.stall = {} exceeds {MAX_STALL_SECS} s (RFC 4656 §3.1: incomplete messages are dropped within 30 minutes)",
                t.stall
            ));
        }
    }

    fn validate_security(&self, problems: &mut Vec<String>) {
        let s = &self.security;
        if !s.modes.iter().any(|m| m.is_security()) {
            problems.push(
                "security.modes offers no security mode; include at least one of \
                 unauthenticated, authenticated, encrypted, mixed"
                    .to_owned(),
            );
        }
        let ikev2 = s.modes.contains(&ModeName::Ikev2Derived) || self.ikev2.has_source();
        if s.needs_secret() && s.key_file.is_none() && s.secrets.is_empty() && !ikev2 {
            problems.push(
                "security.modes offers authenticated, encrypted or mixed mode but neither security.key_file \
                 nor [security.secrets] is set; set one or offer only unauthenticated"
                    .to_owned(),
            );
        }
        for name in s.secrets.keys() {
            if let Some(why) = identity_problem(name) {
                problems.push(format!("security.secrets.{name:?}: {why}"));
            }
        }
        let r = &self.ikev2.responder;
        if r.enabled() {
            if r.psk_file.is_none() {
                problems.push(
                    "ikev2.responder.listen is set but ikev2.responder.psk_file is not; give the PSK file"
                        .to_owned(),
                );
            }
            if r.identity.is_empty() {
                problems.push(
                    "ikev2.responder.identity is empty; give our IKE identity (an FQDN, e.g. twamp.example.net)"
                        .to_owned(),
                );
            }
            if r.port == r.natt_port {
                problems.push(format!(
                    "ikev2.responder.port and natt_port are both {}; NAT-T needs its own port (4500)",
                    r.port
                ));
            }
            if r.listen.iter().any(IpAddr::is_unspecified) {
                problems.push(
                    "ikev2.responder.listen has a wildcard address; list the addresses peers reach \
                     (IKE's NAT detection hashes them)"
                        .to_owned(),
                );
            }
        }
        if self.ikev2.sa_file.is_some() && self.ikev2.sa_file == self.ikev2.sa_socket {
            problems.push(
                "ikev2.sa_file and ikev2.sa_socket are the same path; give the socket its own"
                    .to_owned(),
            );
        }
        if ikev2 && !s.needs_secret() {
            problems.push(
                "ikev2-derived (RFC 7717) needs authenticated, encrypted or mixed mode; add one to security.modes"
                    .to_owned(),
            );
        }
        if self.rate_limit.pps > 0 && self.rate_limit.burst == 0 {
            problems.push(
                "rate_limit.burst is 0, which drops every packet; give at least 1 (default 1000) \
                 or set rate_limit.pps = 0 for no limit"
                    .to_owned(),
            );
        }
        if !s.pbkdf2_count.is_power_of_two()
            || !(MIN_PBKDF2_COUNT..=MAX_PBKDF2_COUNT).contains(&s.pbkdf2_count)
        {
            problems.push(format!(
                "security.pbkdf2_count = {} must be a power of two from {MIN_PBKDF2_COUNT} to {MAX_PBKDF2_COUNT} \
                 (RFC 4656 §3.1, RFC 5357 §6); 2048 is what perfSONAR offers",
                s.pbkdf2_count
            ));
        }
    }

    fn validate_identities(&self, problems: &mut Vec<String>) {
        let offered = &self.security.modes;
        for (name, identity) in &self.identities {
            if let Some(why) = identity_problem(name) {
                problems.push(format!("identity {name:?}: {why}"));
            }
            if identity.modes.contains(&ModeName::Unauthenticated) {
                problems.push(format!(
                    "identities.{name:?}: unauthenticated mode carries no identity; remove it from this list"
                ));
            }
            let not_offered: Vec<&str> = identity
                .modes
                .iter()
                .filter(|m| !offered.contains(m))
                .map(|m| m.as_str())
                .collect();
            if !not_offered.is_empty() {
                problems.push(format!(
                    "identities.{name:?} allows {} which security.modes does not offer; offer it or remove it",
                    not_offered.join(", ")
                ));
            }
            if !identity.modes.iter().any(|m| m.is_security()) {
                problems.push(format!(
                    "identities.{name:?} allows no security mode, so it could never connect; \
                     list authenticated, encrypted or mixed (or delete the identity)"
                ));
            }
        }
    }

    fn validate_policy(&self, problems: &mut Vec<String>) {
        let p = &self.policy;
        for (what, list) in [("allow", &p.allow), ("deny", &p.deny)] {
            for net in list {
                if let IpNet::V6(v6) = net {
                    if v6.network().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 {
                        problems.push(format!(
                            "policy.{what} entry {net} is an IPv4-mapped IPv6 prefix; write it as an IPv4 prefix \
                             (clients are matched by their plain IPv4 address)"
                        ));
                    }
                }
                if net.trunc() != *net {
                    problems.push(format!(
                        "policy.{what} entry {net} has host bits set; did you mean {}?",
                        net.trunc()
                    ));
                }
            }
        }
        for (name, value) in [
            ("max_connections", p.max_connections),
            ("max_connections_per_client", p.max_connections_per_client),
            ("max_sessions", p.max_sessions),
            ("max_sessions_per_client", p.max_sessions_per_client),
        ] {
            if value == 0 {
                problems.push(format!(
                    "policy.{name} is 0, which would refuse every client; give a positive limit"
                ));
            }
        }
        if !(1..=128).contains(&p.ipv6_client_prefix) {
            problems.push(format!(
                "policy.ipv6_client_prefix = {} must be 1 to 128 (default 64)",
                p.ipv6_client_prefix
            ));
        }
    }
}

/// Why `name` cannot be an identity (a KeyID, RFC 4656 §3.1), if it cannot.
fn identity_problem(name: &str) -> Option<String> {
    (name.is_empty() || name.len() > MAX_IDENTITY_OCTETS || name.contains('\0')).then(|| {
        format!(
            "an identity must be 1 to {MAX_IDENTITY_OCTETS} octets of UTF-8 without NUL \
             (the KeyID field, RFC 4656 §3.1)"
        )
    })
}

/// Whether two TCP listen addresses would collide on bind.
impl Config {
    fn validate_stamp(&self, problems: &mut Vec<String>) {
        let mut seen = BTreeSet::new();
        for (i, s) in self.stamp.session.iter().enumerate() {
            let at = format!("stamp.session[{i}] (sender {}, SSID {})", s.sender, s.ssid);
            if s.ssid == 0 {
                problems.push(format!(
                    "{at}: SSID 0 is reserved (RFC 8972 §3); give a non-zero ssid"
                ));
            }
            if s.local_port == 0 {
                problems.push(format!("{at}: local_port 0; STAMP uses 862"));
            }
            if s.sender.port() == 0 || s.sender.ip().is_unspecified() {
                problems.push(format!(
                    "{at}: sender must be one address and port, not a wildcard"
                ));
            }
            if self.test_ports.contains(s.local_port) {
                problems.push(format!(
                    "{at}: local_port {} lies in test_ports {}; choose a port outside it",
                    s.local_port, self.test_ports
                ));
            }
            if let Some(a) = s.local_address {
                if a.is_ipv4() != s.sender.is_ipv4() {
                    problems.push(format!(
                        "{at}: local_address {a} and the sender are of different families"
                    ));
                }
            }
            for d in s.dscp.iter().chain(s.cos_allowed_dscp.iter().flatten()) {
                if *d > 63 {
                    problems.push(format!("{at}: DSCP {d} is out of range 0..=63"));
                }
            }
            if !seen.insert((s.local_port, s.sender, s.ssid)) {
                problems.push(format!(
                    "{at}: another session has the same local_port, sender and SSID"
                ));
            }
        }
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr, v6only: bool) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let family_match = a.is_ipv4() == b.is_ipv4();
    let (ia, ib) = (a.ip(), b.ip());
    if family_match {
        return ia == ib || ia.is_unspecified() || ib.is_unspecified();
    }
    // Across families only a dual-stack IPv6 wildcard collides.
    !v6only
        && [ia, ib]
            .iter()
            .any(|ip| matches!(ip, IpAddr::V6(v6) if v6.is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
listen = ["[::1]:8620", "127.0.0.1:8620"]
v6only = true
test_ports = "18760-18799"
log_level = "debug"

[timers]
servwait = 600
refwait = 300
stall = 30

[security]
modes = ["unauthenticated", "authenticated", "encrypted", "mixed", "individual-session-control"]
pbkdf2_count = 2048
key_file = "/etc/ricochet/twamp.pfs"

[identities.interop]
modes = ["authenticated", "encrypted", "individual-session-control"]

[policy]
allow = ["192.0.2.0/24", "2001:db8::/32"]
deny = ["192.0.2.66/32"]
max_connections = 10
max_connections_per_client = 2
max_sessions = 20
max_sessions_per_client = 4
ipv6_client_prefix = 56

[metrics]
listen = "127.0.0.1:19862"
"#;

    #[test]
    fn full_file_parses_and_validates() {
        let c = Config::parse(FULL).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.test_ports, PortRange::new(18760, 18799).expect("range"));
        assert_eq!(c.timers.servwait(), Duration::from_secs(600));
        // 1 | 2 | 4 | 8 | 16: perfSONAR's 0x0f plus Individual Session Control.
        assert_eq!(c.security.offered_bits(), 0x1f);
        assert_eq!(
            mode_bits(&c.identities["interop"].modes),
            0x02 | 0x04 | 0x10
        );
        assert_eq!(c.policy.deny[0].to_string(), "192.0.2.66/32");
        assert_eq!(c.policy.ipv6_client_prefix, 56);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn mode_bits_follow_the_registry() {
        // modes.md §1: bit n has value 1 << n, in registry order.
        let expect = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
        for (m, v) in ModeName::ALL.iter().zip(expect) {
            assert_eq!(m.bit(), v, "{m}");
        }
        assert!(ModeName::Mixed.is_security());
        assert!(!ModeName::IndividualSessionControl.is_security());
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("").expect("parses");
        c.validate().expect("defaults are valid");
        assert_eq!(
            c.listen,
            vec![
                "[::]:862".parse::<SocketAddr>().expect("addr"),
                "0.0.0.0:862".parse().expect("addr")
            ]
        );
        assert!(c.v6only);
        assert_eq!(c.test_ports.to_string(), "18760-19960");
        assert_eq!(
            c.timers,
            Timers {
                servwait: 900,
                refwait: 900,
                stall: 60
            }
        );
        assert_eq!(c.security.pbkdf2_count, 2048);
        assert_eq!(c.security.offered_bits(), 1);
        assert_eq!(c.metrics.listen.to_string(), DEFAULT_METRICS_LISTEN);
    }

    #[test]
    fn data_plane_rate_limit_and_secrets() {
        let d = Config::default();
        assert_eq!(d.data_plane, DataPlaneKind::Socket);
        assert_eq!(
            d.rate_limit,
            RateLimit {
                pps: 100_000,
                burst: 1000
            }
        );
        let c = Config::parse(
            "data_plane = \"bpf\"\n[rate_limit]\npps = 5000\nburst = 10\n\
             [security]\nmodes = [\"authenticated\"]\n[security.secrets]\nlab = \"6869\"\n",
        )
        .expect("parses");
        c.validate().expect("secrets stand in for a key file");
        assert_eq!(c.data_plane, DataPlaneKind::Bpf);
        assert_eq!(
            c.rate_limit,
            RateLimit {
                pps: 5000,
                burst: 10
            }
        );
        assert_eq!(c.security.secrets["lab"].expose(), "6869");
        let shown = format!("{} {c:?}", c.to_toml());
        assert!(!shown.contains("6869"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(Config::parse("data_plane = \"dpdk\"").is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        for (text, key) in [
            ("listne = []", "listne"),
            ("[timers]\nservwiat = 5", "servwiat"),
            ("[policy]\nalow = []", "alow"),
            ("[identities.x]\nmodes = []\nextra = 1", "extra"),
            ("[metrics]\nport = 1", "port"),
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused_at_parse() {
        for text in [
            "test_ports = \"20000-10000\"",
            "listen = [\"nonsense\"]",
            "[security]\nmodes = [\"super-secure\"]",
            "[policy]\nallow = [\"10.0.0.0/33\"]",
        ] {
            assert!(Config::parse(text).is_err(), "{text} should not parse");
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text).expect("parses").validate() {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected Invalid for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn validation_explains_each_problem() {
        let cases: &[(&str, &str)] = &[
            ("listen = []", "listen is empty"),
            (
                "[security]\nmodes = [\"authenticated\"]",
                "nor [security.secrets]",
            ),
            (
                "[security]\nmodes = [\"reflect-octets\"]",
                "no security mode",
            ),
            ("[security]\npbkdf2_count = 1000", "power of two"),
            ("[rate_limit]\nburst = 0", "rate_limit.burst is 0"),
            (
                "[security]\nmodes = [\"mixed\"]\n[security.secrets]\n\"\" = \"00\"",
                "security.secrets.\"\"",
            ),
            ("[security]\npbkdf2_count = 65536", "power of two"),
            (
                "[security]\nmodes = [\"unauthenticated\", \"ikev2-derived\"]",
                "ikev2-derived",
            ),
            ("[timers]\nstall = 0", "timers.stall is 0"),
            ("[timers]\nstall = 3600", "exceeds 1800"),
            ("[policy]\nmax_sessions = 0", "max_sessions is 0"),
            (
                "[policy]\nallow = [\"10.0.0.1/8\"]",
                "did you mean 10.0.0.0/8",
            ),
            ("[policy]\ndeny = [\"::ffff:10.0.0.0/104\"]", "IPv4-mapped"),
            (
                "[identities.bob]\nmodes = [\"encrypted\"]",
                "does not offer",
            ),
            (
                "[identities.bob]\nmodes = [\"unauthenticated\"]",
                "carries no identity",
            ),
            ("log_level = \"ricochet_control=loud\"", "log_level"),
            (
                "v6only = false\nlisten = [\"[::]:862\", \"0.0.0.0:862\"]",
                "v6only = false",
            ),
            (
                "listen = [\"127.0.0.1:9862\"]\n[metrics]\nlisten = \"127.0.0.1:9862\"",
                "collides with metrics.listen",
            ),
        ];
        for (text, needle) in cases {
            let p = problems(text);
            assert!(
                p.iter().any(|m| m.contains(needle)),
                "{text:?}: {p:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let p = problems("listen = []\n[policy]\nmax_connections = 0\n[timers]\nservwait = 0");
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn stamp_sessions_parse_and_are_validated() {
        let c = Config::parse(
            r#"
[[stamp.session]]
sender = "198.18.0.1:50862"
local_port = 862
ssid = 4660
timestamp_format = "ptp"
cos_allowed_dscp = [0, 46]
micro_session_id = 9

[[stamp.session]]
sender = "[2001:2::1]:50862"
local_port = 862
ssid = 7
key_file = "/etc/ricochet/stamp.key"
"#,
        )
        .expect("parses");
        c.validate().expect("valid");
        let s = &c.stamp.session;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].timestamp_format, StampTimestampFormat::Ptp);
        assert_eq!(s[0].local(), "0.0.0.0:862".parse().unwrap());
        assert_eq!(s[1].local(), "[::]:862".parse().unwrap());
        assert_eq!(s[1].timestamp_format, StampTimestampFormat::Ntp);
        // The effective configuration round-trips.
        assert_eq!(Config::parse(&c.to_toml()).expect("reparses"), c);

        let bad = Config::parse(
            r#"
test_ports = "18760-18799"
[[stamp.session]]
sender = "198.18.0.1:1"
local_port = 18770
ssid = 0
dscp = 64
[[stamp.session]]
sender = "198.18.0.1:1"
local_port = 18770
ssid = 0
local_address = "2001:2::2"
"#,
        )
        .expect("parses");
        let Err(ConfigError::Invalid(p)) = bad.validate() else {
            panic!("invalid STAMP sessions accepted");
        };
        let text = p.join("\n");
        for needle in [
            "SSID 0 is reserved",
            "lies in test_ports",
            "DSCP 64 is out of range",
            "same local_port, sender and SSID",
            "different families",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(Config::parse(
            "[[stamp.session]]\nsender = \"198.18.0.1:1\"\nlocal_port = 1\nssid = 1\ntypo = 1\n"
        )
        .is_err());
    }

    #[test]
    fn warnings_point_at_suspicious_limits() {
        let c = Config::parse(
            "test_ports = \"5000-5009\"\n[policy]\nmax_sessions = 50\n[metrics]\nlisten = \"0.0.0.0:9862\"",
        )
        .expect("parses");
        c.validate().expect("valid");
        let w = c.warnings();
        assert!(w.iter().any(|m| m.contains("at most 10 sessions")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("not a loopback")), "{w:?}");
        let c = Config::parse("log_level = \"inof\"").expect("parses");
        assert!(c.warnings().iter().any(|m| m.contains("\"inof\"")));
        let c = Config::parse("log_level = \"warn,ricochet_control=debug\"").expect("parses");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn rendered_config_parses_back_identically() {
        let c = Config::parse(FULL).expect("parses");
        let again = Config::parse(&c.to_toml()).expect("rendered TOML parses");
        assert_eq!(c, again);
        let d = Config::default();
        assert_eq!(Config::parse(&d.to_toml()).expect("parses"), d);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            if let Ok(c) = Config::parse(&text) {
                let _ = c.validate();
                let _ = c.warnings();
            }
        }

        #[test]
        fn tomlish_text_never_panics(
            key in "(listen|test_ports|v6only|log_level|timers|policy|security|metrics)",
            value in "(\\[|\\]|\"|[0-9a-z:.,/= -]){0,40}",
        ) {
            let text = format!("{key} = {value}\n[policy]\nallow = [{value}]");
            let _ = Config::parse(&text).map(|c| c.validate());
        }

        #[test]
        fn rendered_values_parse_back(
            first in 1u16..=65535,
            span in 0u16..2000,
            servwait in 1u64..100_000,
            stall in 1u64..=MAX_STALL_SECS,
            limits in proptest::array::uniform4(1u32..1_000_000),
            v4 in proptest::array::uniform4(proptest::num::u8::ANY),
            len in 0u8..=32,
        ) {
            let mut c = Config {
                test_ports: PortRange::new(first, first.saturating_add(span)).expect("range"),
                ..Config::default()
            };
            c.timers.servwait = servwait;
            c.timers.stall = stall;
            c.policy.max_connections = limits[0];
            c.policy.max_connections_per_client = limits[1];
            c.policy.max_sessions = limits[2];
            c.policy.max_sessions_per_client = limits[3];
            let net = ipnet::Ipv4Net::new(v4.into(), len).expect("prefix").trunc();
            c.policy.deny = vec![IpNet::V4(net)];
            proptest::prop_assert!(c.validate().is_ok());
            proptest::prop_assert_eq!(Config::parse(&c.to_toml()).expect("parses"), c);
        }
    }

    #[test]
    fn example_file_is_valid() {
        let c = Config::parse(include_str!("../control.example.toml")).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.security.offered_bits(), 0x0f);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let mut defaults = c.clone();
        defaults.security = Security::default();
        defaults.identities.clear();
        // The example STAMP session, with every default spelled out.
        assert_eq!(c.stamp.session.len(), 1);
        assert_eq!(c.stamp.session[0].ssid, 4660);
        assert_eq!(c.stamp.session[0].local(), "0.0.0.0:862".parse().unwrap());
        defaults.stamp = StampConfig::default();
        assert_eq!(
            defaults,
            Config::default(),
            "the example documents the defaults"
        );
    }

    #[test]
    fn load_reports_missing_file_and_path() {
        let err = Config::load(Path::new("/nonexistent/ricochet.toml")).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/ricochet.toml") && msg.contains("--config"),
            "{msg}"
        );
    }

    #[test]
    fn an_ikev2_source_offers_0x80_and_is_checked() {
        let c = Config::parse(
            "[security]\nmodes = [\"unauthenticated\", \"encrypted\"]\nkey_file = \"/k\"\n\
             [ikev2]\nsa_file = \"/run/sas\"\ntoken_key = \"direct\"",
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.offered_modes(), 0x85);
        assert_eq!(c.security.offered_bits(), 0x05);
        assert_eq!(c.ikev2.token_key, TokenKeyMode::Direct);
        assert!(
            !c.warnings().iter().any(|w| w.contains("ikev2")),
            "{:?}",
            c.warnings()
        );

        // Without a source: not offered; listing it only warns (Accept 6).
        let c = Config::parse(
            "[security]\nmodes = [\"encrypted\", \"ikev2-derived\"]\nkey_file = \"/k\"",
        )
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.offered_modes(), 0x84);
        assert!(c
            .warnings()
            .iter()
            .any(|w| w.contains("no IKEv2 SA source")));

        // A source with only unauthenticated mode, one path for both.
        let c = Config::parse("[ikev2]\nsa_file = \"/x\"\nsa_socket = \"/x\"").expect("parses");
        let e = c.validate().expect_err("invalid").to_string();
        assert!(
            e.contains("needs authenticated") && e.contains("same path"),
            "{e}"
        );
        assert!(Config::parse("[ikev2]\ntoken_key = \"raw\"").is_err());
    }

    #[test]
    fn greeting_probe_octets() {
        let mut p = GreetingProbe::default();
        assert_eq!(p.unused_octets(), [0; 12], "off by default");
        p.enabled = true;
        assert_eq!(
            p.unused_octets(),
            [0, 0, 0, 3, 0x52, 0x49, 0x43, 0x31, 0x52, 0x49, 0x43, 0x32]
        );
        let c =
            Config::parse("[ikev2.greeting_probe]\nenabled = true\nprotocol = 1").expect("parses");
        assert_eq!(&c.ikev2.greeting_probe.unused_octets()[..4], &[0, 0, 0, 1]);
        assert!(c.warnings().iter().any(|w| w.contains("greeting_probe")));
    }
}
