//! Admission policy: who may connect, how many connections and sessions each
//! client may hold, which modes each identity may select.
//!
//! Decisions and the RFC 4656 §3.3 Accept value each refusal answers with:
//!
//! | Check | When | Refusal |
//! |---|---|---|
//! | deny prefix / not in a non-empty allow list | TCP accept | connection closed before the Server Greeting (no Accept value exists yet) |
//! | global / per-client connection limit | TCP accept | connection closed, counted |
//! | identity may not use the selected Mode | Set-Up-Response | Server-Start Accept **3** (some aspect not supported) |
//! | global / per-client session limit | Request-TW-Session | Accept-Session Accept **5** (temporary resource limitation) |
//! | reflector ports exhausted | Request-TW-Session | Accept-Session Accept **5** |
//!
//! Why 5 and not 4 for limits: RFC 4656 §3.3 separates permanent (4) from
//! temporary (5) resource limitations. Every limit here counts sessions that
//! end (Stop-Sessions + Timeout, REFWAIT, connection loss), so the same request
//! can succeed later: temporary. Configuration refuses limits of 0, so no
//! request is refused permanently by a limit.
//!
//! Why 3 for a mode the identity may not use: the client selected a Mode the
//! server offered, but not one this server supports for that client; `modes.md`
//! §2 rule 4 allows 1 or 3, and 3 tells the client's operator the Mode is the
//! problem. Caveat: the protocol crate's server asks this before it checks
//! the token, so a client naming a restricted identity learns the
//! restriction without knowing the key (it learns nothing about the key).
//!
//! Per-client counting keys IPv4 clients by address and IPv6 clients by their
//! `ipv6_client_prefix` (default /64), after mapping IPv4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`, seen on dual-stack sockets) to plain IPv4.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};

use crate::config::Config;

/// Accept values (RFC 4656 §3.3, reused by RFC 5357). Plain `u8` codes until
/// the protocol crate's `Accept` type is wired in.
pub mod accept {
    /// OK.
    pub const OK: u8 = 0;
    /// Failure, reason unspecified (catch-all).
    pub const FAILURE: u8 = 1;
    /// Internal error.
    pub const INTERNAL_ERROR: u8 = 2;
    /// Some aspect of the request is not supported.
    pub const NOT_SUPPORTED: u8 = 3;
    /// Cannot perform the request due to permanent resource limitations.
    pub const PERMANENT_RESOURCE_LIMITATION: u8 = 4;
    /// Cannot perform the request due to temporary resource limitations.
    pub const TEMPORARY_RESOURCE_LIMITATION: u8 = 5;
}

/// Why the policy said no. Also the `reason` label of the refusal metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The client address matches a deny prefix.
    PrefixDenied,
    /// An allow list is configured and the client is not in it.
    NotAllowed,
    /// The client already holds its maximum of control connections.
    ClientConnectionLimit,
    /// The server already holds its maximum of control connections.
    GlobalConnectionLimit,
    /// The client already holds its maximum of test sessions.
    ClientSessionLimit,
    /// The server already holds its maximum of test sessions.
    GlobalSessionLimit,
    /// No reflector port is free.
    PortsExhausted,
    /// The identity may not use (some bit of) the selected Mode.
    ModeNotPermitted,
}

impl RefusalReason {
    /// The Accept value to answer with, where the refusal happens after the
    /// Server Greeting; connection-level refusals have none (the connection is
    /// closed before any message).
    pub fn accept_code(self) -> Option<u8> {
        match self {
            RefusalReason::PrefixDenied
            | RefusalReason::NotAllowed
            | RefusalReason::ClientConnectionLimit
            | RefusalReason::GlobalConnectionLimit => None,
            RefusalReason::ClientSessionLimit
            | RefusalReason::GlobalSessionLimit
            | RefusalReason::PortsExhausted => Some(accept::TEMPORARY_RESOURCE_LIMITATION),
            RefusalReason::ModeNotPermitted => Some(accept::NOT_SUPPORTED),
        }
    }

    /// Metric label value (`snake_case`).
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::PrefixDenied => "prefix_denied",
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::ClientConnectionLimit => "client_connection_limit",
            RefusalReason::GlobalConnectionLimit => "global_connection_limit",
            RefusalReason::ClientSessionLimit => "client_session_limit",
            RefusalReason::GlobalSessionLimit => "global_session_limit",
            RefusalReason::PortsExhausted => "ports_exhausted",
            RefusalReason::ModeNotPermitted => "mode_not_permitted",
        }
    }

    /// Human-readable reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::PrefixDenied => "client address is in a deny prefix",
            RefusalReason::NotAllowed => "client address is not in the allow list",
            RefusalReason::ClientConnectionLimit => "per-client connection limit reached",
            RefusalReason::GlobalConnectionLimit => "global connection limit reached",
            RefusalReason::ClientSessionLimit => "per-client session limit reached",
            RefusalReason::GlobalSessionLimit => "global session limit reached",
            RefusalReason::PortsExhausted => "no reflector port free",
            RefusalReason::ModeNotPermitted => "identity may not use the selected mode",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a client for per-client limits: an IPv4 address or an IPv6
/// prefix. Returned on admission; hand the same key back on release, so a
/// reload that changes the IPv6 prefix length cannot unbalance the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpNet);

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The configured rules (replaced as a whole on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Allowed prefixes; empty = all.
    pub allow: Vec<IpNet>,
    /// Denied prefixes; deny wins.
    pub deny: Vec<IpNet>,
    /// Global connection limit.
    pub max_connections: u32,
    /// Per-client connection limit.
    pub max_connections_per_client: u32,
    /// Global session limit.
    pub max_sessions: u32,
    /// Per-client session limit.
    pub max_sessions_per_client: u32,
    /// IPv6 aggregation prefix length for per-client limits.
    pub ipv6_client_prefix: u8,
    /// Identity name → Modes bits it may use. Unlisted identities may use
    /// every offered mode.
    pub identities: HashMap<String, u32>,
}

impl Rules {
    /// The rules of a (validated) configuration.
    pub fn from_config(config: &Config) -> Rules {
        let p = &config.policy;
        Rules {
            allow: p.allow.clone(),
            deny: p.deny.clone(),
            max_connections: p.max_connections,
            max_connections_per_client: p.max_connections_per_client,
            max_sessions: p.max_sessions,
            max_sessions_per_client: p.max_sessions_per_client,
            ipv6_client_prefix: p.ipv6_client_prefix.clamp(1, 128),
            identities: config
                .identities
                .iter()
                .map(|(name, id)| (name.clone(), crate::config::mode_bits(&id.modes)))
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_client: HashMap<ClientKey, u32>,
}

impl Counts {
    fn of(&self, key: &ClientKey) -> u32 {
        self.per_client.get(key).copied().unwrap_or(0)
    }

    fn add(&mut self, key: ClientKey) {
        self.total += 1;
        *self.per_client.entry(key).or_insert(0) += 1;
    }

    /// Returns false when nothing was held for `key` (a caller bug; counts
    /// stay consistent).
    fn remove(&mut self, key: &ClientKey) -> bool {
        match self.per_client.get_mut(key) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(key);
                }
                self.total -= 1;
                true
            }
            None => false,
        }
    }
}

/// The admission policy and the live counts it enforces.
#[derive(Debug)]
pub struct Policy {
    rules: Rules,
    connections: Counts,
    sessions: Counts,
}

impl Policy {
    /// A policy with no connections or sessions held.
    pub fn new(rules: Rules) -> Policy {
        Policy {
            rules,
            connections: Counts::default(),
            sessions: Counts::default(),
        }
    }

    /// Replace the rules (SIGHUP). Held connections and sessions stay counted
    /// and are not re-judged; new limits apply to new admissions.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The per-client key of `ip`.
    pub fn client_key(&self, ip: IpAddr) -> ClientKey {
        let ip = ip.to_canonical();
        let net = match ip {
            IpAddr::V4(v4) => IpNet::from(ipnet::Ipv4Net::from(v4)),
            IpAddr::V6(v6) => {
                let len = self.rules.ipv6_client_prefix.clamp(1, 128);
                let net = Ipv6Net::new(v6, len).unwrap_or_else(|_| Ipv6Net::from(v6));
                IpNet::V6(net.trunc())
            }
        };
        ClientKey(net)
    }

    /// Prefix lists only: deny wins, an empty allow list allows everyone.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), RefusalReason> {
        let ip = ip.to_canonical();
        if self.rules.deny.iter().any(|n| n.contains(&ip)) {
            return Err(RefusalReason::PrefixDenied);
        }
        if !self.rules.allow.is_empty() && !self.rules.allow.iter().any(|n| n.contains(&ip)) {
            return Err(RefusalReason::NotAllowed);
        }
        Ok(())
    }

    /// Decide on a new control connection from `ip` (at TCP accept). On
    /// success the connection is counted until [`Policy::release_connection`].
    pub fn admit_connection(&mut self, ip: IpAddr) -> Result<ClientKey, RefusalReason> {
        self.check_address(ip)?;
        let key = self.client_key(ip);
        if self.connections.total >= self.rules.max_connections {
            return Err(RefusalReason::GlobalConnectionLimit);
        }
        if self.connections.of(&key) >= self.rules.max_connections_per_client {
            return Err(RefusalReason::ClientConnectionLimit);
        }
        self.connections.add(key);
        Ok(key)
    }

    /// A connection admitted under `key` closed.
    pub fn release_connection(&mut self, key: ClientKey) {
        if !self.connections.remove(&key) {
            tracing::error!(client = %key, "released a connection that was not held");
        }
    }

    /// Decide on a new test session for `key` (Request-TW-Session). On
    /// success the session is counted until [`Policy::release_session`].
    pub fn admit_session(&mut self, key: ClientKey) -> Result<(), RefusalReason> {
        if self.sessions.total >= self.rules.max_sessions {
            return Err(RefusalReason::GlobalSessionLimit);
        }
        if self.sessions.of(&key) >= self.rules.max_sessions_per_client {
            return Err(RefusalReason::ClientSessionLimit);
        }
        self.sessions.add(key);
        Ok(())
    }

    /// A session admitted for `key` ended.
    pub fn release_session(&mut self, key: ClientKey) {
        if !self.sessions.remove(&key) {
            tracing::error!(client = %key, "released a session that was not held");
        }
    }

    /// Whether `identity` may use `mode` (the Set-Up-Response Mode bits).
    /// Unauthenticated connections carry no identity (`None`) and are judged
    /// by the prefix lists only; identities absent from the rules may use
    /// every mode the server offers.
    pub fn check_mode(&self, identity: Option<&str>, mode: u32) -> Result<(), RefusalReason> {
        let Some(name) = identity else {
            return Ok(());
        };
        match self.rules.identities.get(name) {
            Some(allowed) if mode & !allowed != 0 => Err(RefusalReason::ModeNotPermitted),
            _ => Ok(()),
        }
    }

    /// Control connections held.
    pub fn connections(&self) -> u32 {
        self.connections.total
    }

    /// Test sessions held.
    pub fn sessions(&self) -> u32 {
        self.sessions.total
    }

    /// Connections held by the client of `ip`.
    pub fn client_connections(&self, ip: IpAddr) -> u32 {
        self.connections.of(&self.client_key(ip))
    }

    /// Sessions held by the client of `ip`.
    pub fn client_sessions(&self, ip: IpAddr) -> u32 {
        self.sessions.of(&self.client_key(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn rules() -> Rules {
        Rules {
            allow: vec![],
            deny: vec![],
            max_connections: 4,
            max_connections_per_client: 2,
            max_sessions: 3,
            max_sessions_per_client: 2,
            ipv6_client_prefix: 64,
            identities: HashMap::from([("probe".to_owned(), 0x04 | 0x10)]),
        }
    }

    #[test]
    fn empty_allow_list_allows_everyone() {
        let p = Policy::new(rules());
        assert_eq!(p.check_address(ip("198.51.100.7")), Ok(()));
        assert_eq!(p.check_address(ip("2001:db8::1")), Ok(()));
    }

    #[test]
    fn deny_wins_over_allow() {
        let mut r = rules();
        r.allow = vec![net("192.0.2.0/24"), net("2001:db8::/32")];
        r.deny = vec![net("192.0.2.66/32"), net("2001:db8:bad::/48")];
        let p = Policy::new(r);
        assert_eq!(p.check_address(ip("192.0.2.1")), Ok(()));
        assert_eq!(
            p.check_address(ip("192.0.2.66")),
            Err(RefusalReason::PrefixDenied)
        );
        assert_eq!(
            p.check_address(ip("198.51.100.1")),
            Err(RefusalReason::NotAllowed)
        );
        assert_eq!(p.check_address(ip("2001:db8:1::5")), Ok(()));
        assert_eq!(
            p.check_address(ip("2001:db8:bad::5")),
            Err(RefusalReason::PrefixDenied)
        );
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_prefixes() {
        let mut r = rules();
        r.allow = vec![net("192.0.2.0/24")];
        r.deny = vec![net("192.0.2.66/32")];
        let mut p = Policy::new(r);
        assert_eq!(p.check_address(ip("::ffff:192.0.2.9")), Ok(()));
        assert_eq!(
            p.check_address(ip("::ffff:192.0.2.66")),
            Err(RefusalReason::PrefixDenied)
        );
        // And count as the same client as the plain IPv4 address.
        p.admit_connection(ip("192.0.2.9")).expect("first");
        p.admit_connection(ip("::ffff:192.0.2.9")).expect("second");
        assert_eq!(
            p.admit_connection(ip("192.0.2.9")),
            Err(RefusalReason::ClientConnectionLimit)
        );
    }

    #[test]
    fn connection_limits_per_client_then_global() {
        let mut p = Policy::new(rules());
        let a = p.admit_connection(ip("10.0.0.1")).expect("a1");
        p.admit_connection(ip("10.0.0.1")).expect("a2");
        assert_eq!(
            p.admit_connection(ip("10.0.0.1")),
            Err(RefusalReason::ClientConnectionLimit)
        );
        p.admit_connection(ip("10.0.0.2")).expect("b1");
        p.admit_connection(ip("10.0.0.3")).expect("c1");
        assert_eq!(p.connections(), 4);
        assert_eq!(
            p.admit_connection(ip("10.0.0.4")),
            Err(RefusalReason::GlobalConnectionLimit)
        );
        p.release_connection(a);
        assert_eq!(p.client_connections(ip("10.0.0.1")), 1);
        p.admit_connection(ip("10.0.0.4")).expect("room again");
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let mut p = Policy::new(rules());
        p.admit_connection(ip("2001:db8:0:1::1")).expect("1");
        p.admit_connection(ip("2001:db8:0:1::2"))
            .expect("2, same /64");
        assert_eq!(
            p.admit_connection(ip("2001:db8:0:1:ffff::3")),
            Err(RefusalReason::ClientConnectionLimit)
        );
        p.admit_connection(ip("2001:db8:0:2::1"))
            .expect("other /64");
    }

    #[test]
    fn release_uses_the_admission_key_across_reloads() {
        let mut p = Policy::new(rules());
        let key = p.admit_connection(ip("2001:db8:0:1::1")).expect("admit");
        let mut r = rules();
        r.ipv6_client_prefix = 128;
        p.set_rules(r);
        p.release_connection(key);
        assert_eq!(p.connections(), 0);
    }

    #[test]
    fn session_limits_answer_accept_5() {
        let mut p = Policy::new(rules());
        let a = p.client_key(ip("10.0.0.1"));
        let b = p.client_key(ip("10.0.0.2"));
        p.admit_session(a).expect("a1");
        p.admit_session(a).expect("a2");
        let r = p.admit_session(a).expect_err("a3");
        assert_eq!(r, RefusalReason::ClientSessionLimit);
        assert_eq!(r.accept_code(), Some(accept::TEMPORARY_RESOURCE_LIMITATION));
        p.admit_session(b).expect("b1");
        let r = p.admit_session(b).expect_err("global");
        assert_eq!(r, RefusalReason::GlobalSessionLimit);
        assert_eq!(r.accept_code(), Some(5));
        p.release_session(a);
        p.admit_session(b).expect("room after release");
        assert_eq!(p.sessions(), 3);
    }

    #[test]
    fn identities_are_restricted_to_their_modes() {
        let p = Policy::new(rules());
        // probe may use encrypted (4) with ISC (16).
        assert_eq!(p.check_mode(Some("probe"), 0x04), Ok(()));
        assert_eq!(p.check_mode(Some("probe"), 0x14), Ok(()));
        let r = p
            .check_mode(Some("probe"), 0x02)
            .expect_err("authenticated");
        assert_eq!(r.accept_code(), Some(accept::NOT_SUPPORTED));
        assert_eq!(
            p.check_mode(Some("probe"), 0x24),
            Err(RefusalReason::ModeNotPermitted),
            "a feature bit not listed is refused"
        );
        // Unlisted identities and unauthenticated connections are not narrowed.
        assert_eq!(p.check_mode(Some("other"), 0x02), Ok(()));
        assert_eq!(p.check_mode(None, 0x01), Ok(()));
    }

    #[test]
    fn connection_refusals_have_no_accept_code() {
        for r in [
            RefusalReason::PrefixDenied,
            RefusalReason::NotAllowed,
            RefusalReason::ClientConnectionLimit,
            RefusalReason::GlobalConnectionLimit,
        ] {
            assert_eq!(r.accept_code(), None);
        }
        assert_eq!(RefusalReason::PortsExhausted.accept_code(), Some(5));
    }

    #[test]
    fn rules_from_config() {
        let c = Config::parse(
            "[security]\nmodes=[\"encrypted\",\"reflect-octets\"]\nkey_file=\"k\"\n[identities.x]\nmodes=[\"encrypted\",\"reflect-octets\"]\n[policy]\nallow=[\"10.0.0.0/8\"]",
        )
        .expect("parses");
        let r = Rules::from_config(&c);
        assert_eq!(r.identities["x"], 0x24);
        assert_eq!(r.allow, vec![net("10.0.0.0/8")]);
        assert_eq!(r.max_connections, 1000);
    }

    proptest! {
        #[test]
        fn counts_balance_under_any_sequence(ops in proptest::collection::vec((any::<bool>(), 0u8..6, any::<bool>()), 0..200)) {
            let mut p = Policy::new(rules());
            let mut held_conns: Vec<ClientKey> = Vec::new();
            let mut held_sessions: Vec<ClientKey> = Vec::new();
            for (admit, host, session) in ops {
                let addr = IpAddr::from([10, 0, 0, host]);
                let key = p.client_key(addr);
                match (admit, session) {
                    (true, false) => if let Ok(k) = p.admit_connection(addr) { held_conns.push(k) },
                    (true, true) => if p.admit_session(key).is_ok() { held_sessions.push(key) },
                    (false, false) => if let Some(k) = held_conns.pop() { p.release_connection(k) },
                    (false, true) => if let Some(k) = held_sessions.pop() { p.release_session(k) },
                }
                prop_assert_eq!(p.connections() as usize, held_conns.len());
                prop_assert_eq!(p.sessions() as usize, held_sessions.len());
                prop_assert!(p.connections() <= 4 && p.sessions() <= 3);
                for h in 0..6u8 {
                    let a = IpAddr::from([10, 0, 0, h]);
                    prop_assert!(p.client_connections(a) <= 2);
                    prop_assert!(p.client_sessions(a) <= 2);
                }
            }
        }
    }
}
