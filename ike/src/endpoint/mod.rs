//! The IKEv2 endpoint state machine (RFC 7296), sans-IO.
//!
//! The owner feeds every UDP datagram received on ports 500 and 4500 to
//! [`Endpoint::handle_datagram`] together with the current time and an
//! [`Rng`], calls [`Endpoint::handle_timeout`] when [`Endpoint::poll_timeout`]
//! is due, sends what [`Endpoint::poll_transmit`] yields (from the local
//! address it names: that picks the 500 or 4500 socket) and acts on what
//! [`Endpoint::poll_event`] yields. No sockets, clocks or randomness inside.
//!
//! Roles: initiator ([`Endpoint::initiate`]) and responder, with PSK (or any
//! [`Authenticator`]), childless (RFC 6023) or with one CHILD_SA; the window
//! size is 1 in both directions.
//!
//! DoS: the responder keeps at most `half_open_limit` half-open SAs, demands
//! a COOKIE once `cookie_threshold` of them exist (stateless until the cookie
//! checks out), refuses unacceptable proposals and wrong KE groups without
//! creating state, and drops anything that does not decrypt.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::auth::{AuthContext, Authenticator};
use crate::config::{Config, EspSuite, IkeSuite};
use crate::crypto::{self, DhGroup, KeyExchange, Prf, SkKeys};
use crate::info::{ChildMode, ChildSaKeys, DeleteReason, Event, IkeSaInfo};
use crate::rng::Rng;
use crate::wire::{
    self, exchange, notify, proto, ptype, spi32, Delete, Header, HeaderRepr, Identification,
    Notify, Payload, PayloadIter, TrafficSelector, FLAG_I, FLAG_R, HEADER_LEN,
};
use ricochet_protocol::crypto::ikev2::{self as kdf, SkLengths};

mod exchanges;
mod initiator;
mod responder;
mod support;

use support::*;

/// The 4-octet non-ESP marker before IKE messages on the NAT-T port (RFC 3948 §2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// Most CHILD_SAs one IKE SA may hold; further CREATE_CHILD_SA requests get
/// NO_ADDITIONAL_SAS (an authenticated peer still cannot grow our state
/// without bound).
pub const MAX_CHILDREN: usize = 16;

/// Largest IKE message we accept or build (RFC 7296 §2 asks for ≥ 1280;
/// without fragmentation anything larger cannot cross most paths anyway).
pub const MAX_MESSAGE: usize = 8192;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Send from this local address (port 500 or the NAT-T port).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The UDP payload (with the non-ESP marker on the NAT-T port).
    pub data: Vec<u8>,
}

/// What the caller asks for when initiating.
#[derive(Debug, Clone)]
pub struct InitiateParams {
    /// Our address (port 500).
    pub local: SocketAddr,
    /// The responder (port 500).
    pub peer: SocketAddr,
    /// The responder's expected identity (sent as IDr, and checked).
    pub peer_id: Option<Identification>,
    /// Negotiate a CHILD_SA in IKE_AUTH with these selectors (TSi, TSr);
    /// `None` for a childless IKE SA (RFC 6023).
    pub child: Option<ChildParams>,
}

/// A CHILD_SA request.
#[derive(Debug, Clone)]
pub struct ChildParams {
    pub ts_i: Vec<TrafficSelector>,
    pub ts_r: Vec<TrafficSelector>,
    pub mode: ChildMode,
}

/// A caller error (never a peer error: those become events or silence).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EndpointError {
    #[error("no such IKE SA")]
    NoSuchSa,
    #[error("the IKE SA is not established")]
    NotEstablished,
    #[error("an exchange is already in progress on this IKE SA; retry after it completes")]
    Busy,
    #[error("no such CHILD_SA")]
    NoSuchChild,
    #[error("the configuration has no IKE suite")]
    NoSuites,
}

/// Counters of what the endpoint dropped, by reason (for metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub malformed: u64,
    pub unknown_sa: u64,
    pub decrypt_failed: u64,
    pub bad_message_id: u64,
    pub retransmits_answered: u64,
    pub cookies_sent: u64,
    pub half_open_refused: u64,
    pub retransmissions: u64,
    /// Stateless error replies (COOKIE, INVALID_KE_PAYLOAD, …) not sent
    /// because they would have been larger than the unauthenticated
    /// request (no amplification towards a spoofed source).
    pub replies_suppressed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Responder: IKE_SA_INIT answered (half-open).
    HalfOpen,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    Established,
    /// Replaced by a rekeyed SA, waiting for the Delete exchange.
    Rekeyed,
    /// We sent Delete.
    Deleting,
}

struct SaKeys {
    sk_d: Zeroizing<Vec<u8>>,
    sk_pi: Zeroizing<Vec<u8>>,
    sk_pr: Zeroizing<Vec<u8>>,
    /// Protects what we send.
    out: SkKeys,
    /// Opens what we receive.
    inb: SkKeys,
}

enum Pending {
    Init,
    Auth,
    Informational {
        delete: bool,
    },
    RekeyIke {
        ke: KeyExchange,
        ni: Vec<u8>,
        new_spi_i: [u8; 8],
    },
    CreateChild {
        rekey_of: Option<u32>,
        ni: Vec<u8>,
        spi: u32,
        params: ChildParams,
        /// Our KE when the exchange has PFS.
        ke: Option<KeyExchange>,
    },
    DeleteChild {
        /// Our inbound SPIs of the CHILD_SAs being deleted.
        spis_in: Vec<u32>,
    },
}

struct Outstanding {
    msg_id: u32,
    bytes: Vec<u8>,
    tries: u32,
    next_at: Instant,
    kind: Pending,
}

struct IkeSa {
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    /// We are this SA's original initiator.
    initiator: bool,
    state: State,
    local: SocketAddr,
    peer: SocketAddr,
    suite: IkeSuite,
    keys: Option<SaKeys>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    ke: Option<KeyExchange>,
    /// Responder: the address the IKE_SA_INIT came from, i.e. the key of
    /// this SA's `init_index` entry (`peer` may float to NAT-T later).
    init_from: Option<SocketAddr>,
    /// The IKE_SA_INIT request and response as sent (signed octets).
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    cookie: Option<Vec<u8>>,
    invalid_ke_retries: u8,
    peer_id: Option<Identification>,
    want_peer_id: Option<Identification>,
    child_params: Option<ChildParams>,
    child_spi: u32,
    children: Vec<ChildSaKeys>,
    peer_childless: bool,
    next_msg_id: u32,
    outstanding: Option<Outstanding>,
    expected_in: u32,
    /// The last request answered (its octets) and our response, to replay
    /// for an identical retransmission (RFC 7296 §2.1).
    last_response: Option<(u32, Vec<u8>, Vec<u8>)>,
    /// The request being answered now.
    current_request: Vec<u8>,
    nat: bool,
    /// We are behind a NAT: send NAT-keepalives (RFC 3948 §4).
    nat_local: bool,
    /// When the last NAT-keepalive went out (or the SA came up).
    keepalive_at: Instant,
    created: Instant,
    last_heard: Instant,
    /// When the SA was replaced by a rekey (it then waits for the Delete).
    rekeyed_at: Option<Instant>,
    /// A simultaneous IKE SA rekey by the peer while ours is outstanding
    /// (RFC 7296 §2.8.2): the SA it created (our SPI) and the lower nonce
    /// of its exchange.
    collision: Option<([u8; 8], Vec<u8>)>,
    /// A redundant SA from a rekey collision: never announced, so its end
    /// is not announced either.
    silent: bool,
    /// When the SA was established (for the automatic rekey).
    established_at: Instant,
    /// When each CHILD_SA (by its `spi_i`) was installed; removed when the
    /// peer rekeys it (its replacement then has its own entry).
    child_since: HashMap<u32, Instant>,
    /// CHILD_SAs (our inbound SPI) the peer rekeyed while our own rekey of
    /// them was outstanding, with the lowest nonce of the peer's exchange.
    child_collisions: HashMap<u32, Vec<u8>>,
}

impl IkeSa {
    fn local_spi(&self) -> [u8; 8] {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    fn info(&self) -> Option<IkeSaInfo> {
        let keys = self.keys.as_ref()?;
        Some(IkeSaInfo {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            prf: self.suite.prf,
            sk_d: keys.sk_d.clone(),
            peer: self.peer,
            child: self.children.first().cloned(),
            we_initiated: self.initiator,
            peer_id: self.peer_id.clone(),
        })
    }
}

/// The IKEv2 endpoint: every IKE SA of this host.
pub struct Endpoint {
    config: Config,
    auth: Box<dyn Authenticator + Send>,
    /// By our own SPI.
    sas: HashMap<[u8; 8], IkeSa>,
    /// Responder: (peer, SPIi) → our SPI, to answer a retransmitted IKE_SA_INIT.
    init_index: HashMap<(SocketAddr, [u8; 8]), [u8; 8]>,
    /// The current cookie secret (version, secret, since when) and the
    /// previous one, still accepted (RFC 7296 §2.6: change it regularly).
    cookie_secret: (u8, Zeroizing<[u8; 32]>, Option<Instant>),
    cookie_secret_old: Option<(u8, Zeroizing<[u8; 32]>)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sas", &self.sas.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Endpoint {
    /// A new endpoint; `rng` draws the cookie secret.
    pub fn new(config: Config, auth: Box<dyn Authenticator + Send>, rng: &mut dyn Rng) -> Self {
        let mut cookie_secret = Zeroizing::new([0u8; 32]);
        rng.fill(&mut cookie_secret[..]);
        Endpoint {
            config,
            auth,
            sas: HashMap::new(),
            init_index: HashMap::new(),
            cookie_secret: (0, cookie_secret, None),
            cookie_secret_old: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Number of half-open responder SAs.
    pub fn half_open(&self) -> usize {
        self.sas
            .values()
            .filter(|s| s.state == State::HalfOpen)
            .count()
    }

    /// Every established IKE SA.
    pub fn established(&self) -> Vec<IkeSaInfo> {
        self.sas
            .values()
            .filter(|s| s.state == State::Established && !s.silent)
            .filter_map(IkeSa::info)
            .collect()
    }

    /// How many IKE SAs [`Endpoint::established`] would list, without
    /// copying any (cheap enough for a metrics gauge on every loop turn).
    pub fn established_count(&self) -> usize {
        self.sas
            .values()
            .filter(|s| s.state == State::Established && !s.silent && s.keys.is_some())
            .count()
    }

    /// The established IKE SA with these SPIs (RFC 7717 KeyID lookup).
    pub fn find(&self, spi_i: &[u8; 8], spi_r: &[u8; 8]) -> Option<IkeSaInfo> {
        self.sas
            .values()
            .find(|s| {
                &s.spi_i == spi_i && &s.spi_r == spi_r && s.state == State::Established && !s.silent
            })
            .and_then(IkeSa::info)
    }

    /// Every CHILD_SA of an established IKE SA (the data plane's view).
    pub fn children(&self, spi_i: &[u8; 8], spi_r: &[u8; 8]) -> Vec<ChildSaKeys> {
        self.sas
            .values()
            .find(|s| &s.spi_i == spi_i && &s.spi_r == spi_r && s.state == State::Established)
            .map(|s| s.children.clone())
            .unwrap_or_default()
    }

    /// The established IKE SA with a peer address (RFC 7717 §5.1 client lookup).
    pub fn find_by_peer(&self, peer: std::net::IpAddr) -> Option<IkeSaInfo> {
        self.sas
            .values()
            .find(|s| s.peer.ip() == peer && s.state == State::Established && !s.silent)
            .and_then(IkeSa::info)
    }

    /// When [`Endpoint::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas
            .values()
            .filter_map(|s| {
                let mut t = s.outstanding.as_ref().map(|o| o.next_at);
                if s.state == State::HalfOpen {
                    let e = s.created + self.config.half_open_timeout;
                    t = Some(t.map_or(e, |t| t.min(e)));
                }
                if let (State::Rekeyed, Some(r)) = (s.state, s.rekeyed_at) {
                    let e = r + self.config.half_open_timeout;
                    t = Some(t.map_or(e, |t| t.min(e)));
                }
                if let (Some(iv), State::Established, None) =
                    (self.config.liveness_interval, s.state, &s.outstanding)
                {
                    let e = s.last_heard + iv;
                    t = Some(t.map_or(e, |t| t.min(e)));
                }
                if let (Some(iv), true, State::Established) =
                    (self.config.natt_keepalive, s.nat_local, s.state)
                {
                    let e = s.keepalive_at + iv;
                    t = Some(t.map_or(e, |t| t.min(e)));
                }
                if let (State::Established, None, false) = (s.state, &s.outstanding, s.silent) {
                    if let Some(e) = self.rekey_due(s) {
                        t = Some(t.map_or(e, |t| t.min(e)));
                    }
                }
                t
            })
            .min()
    }

    /// Runs due retransmissions, expiries and liveness checks.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn Rng) {
        let keys: Vec<[u8; 8]> = self.sas.keys().copied().collect();
        for k in keys {
            let Some(mut sa) = self.sas.remove(&k) else {
                continue;
            };
            let mut keep = true;
            // NAT-keepalive (RFC 3948 §4): one 0xFF octet from the NAT-T
            // port keeps our mapping open.
            if let (Some(iv), true, State::Established) =
                (self.config.natt_keepalive, sa.nat_local, sa.state)
            {
                if now >= sa.keepalive_at + iv {
                    sa.keepalive_at = now;
                    let mut local = sa.local;
                    local.set_port(self.config.natt_port);
                    let mut remote = sa.peer;
                    if remote.port() == 500 {
                        remote.set_port(self.config.natt_port);
                    }
                    self.transmits.push_back(Transmit {
                        local,
                        remote,
                        data: vec![0xff],
                    });
                }
            }
            if sa.state == State::HalfOpen && now >= sa.created + self.config.half_open_timeout {
                self.forget_init(&sa);
                continue;
            }
            // A rekeyed SA whose Delete never came (a peer that rekeys and
            // never deletes must not pile up old SAs).
            if sa.state == State::Rekeyed
                && sa.outstanding.is_none()
                && sa
                    .rekeyed_at
                    .is_some_and(|t| now >= t + self.config.half_open_timeout)
            {
                self.events.push_back(Event::IkeSaDeleted {
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                    peer: sa.peer,
                    reason: DeleteReason::Rekeyed,
                });
                self.forget_init(&sa);
                continue;
            }
            if let Some(o) = sa.outstanding.as_mut() {
                if now >= o.next_at {
                    if o.tries >= self.config.retransmit_tries {
                        let deleting = matches!(o.kind, Pending::Informational { delete: true });
                        let reason = if sa.state == State::Rekeyed {
                            DeleteReason::Rekeyed
                        } else if deleting {
                            DeleteReason::Local
                        } else {
                            DeleteReason::Timeout
                        };
                        self.sa_gone(&sa, reason);
                        keep = false;
                    } else {
                        o.tries += 1;
                        o.next_at =
                            now + self.config.retransmit_timeout * (1u32 << (o.tries - 1).min(16));
                        let bytes = o.bytes.clone();
                        self.stats.retransmissions += 1;
                        self.send(&sa, bytes);
                    }
                }
            } else if sa.state == State::Established
                && !sa.silent
                && self.rekey_due(&sa).is_some_and(|t| now >= t)
            {
                // Automatic rekey: the IKE SA first, else the oldest due child.
                let ike_due = self
                    .config
                    .ike_rekey_after
                    .is_some_and(|l| now >= sa.established_at + jittered(l, &sa.local_spi()));
                if ike_due {
                    // Should this rekey fail, try again after a tenth of the
                    // lifetime (a successful one retires this SA).
                    if let Some(l) = self.config.ike_rekey_after {
                        sa.established_at = retry_base(now, l, &sa.local_spi());
                    }
                    let _ = self.start_ike_rekey(&mut sa, now, rng);
                } else if let Some(c) = self.child_due(&sa, now) {
                    sa.child_since.remove(&c);
                    let _ = self.start_child_rekey(&mut sa, now, rng, c);
                }
            } else if let (Some(iv), State::Established) = (self.config.liveness_interval, sa.state)
            {
                if now >= sa.last_heard + iv {
                    self.start_request(
                        &mut sa,
                        now,
                        rng,
                        exchange::INFORMATIONAL,
                        Vec::new(),
                        Pending::Informational { delete: false },
                    );
                }
            }
            if keep {
                self.sas.insert(k, sa);
            }
        }
    }

    /// The earliest automatic rekey deadline of an SA (IKE SA or a child).
    fn rekey_due(&self, sa: &IkeSa) -> Option<Instant> {
        let j = sa.local_spi();
        let ike = self
            .config
            .ike_rekey_after
            .map(|l| sa.established_at + jittered(l, &j));
        let child = self.config.child_rekey_after.and_then(|l| {
            sa.children
                .iter()
                .filter_map(|c| sa.child_since.get(&c.spi_i))
                .map(|t| *t + jittered(l, &j))
                .min()
        });
        match (ike, child) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A CHILD_SA (its `spi_i`) whose automatic rekey is due.
    fn child_due(&self, sa: &IkeSa, now: Instant) -> Option<u32> {
        let l = self.config.child_rekey_after?;
        let j = sa.local_spi();
        sa.children
            .iter()
            .filter_map(|c| sa.child_since.get(&c.spi_i).map(|t| (c.spi_i, *t)))
            .filter(|(_, t)| now >= *t + jittered(l, &j))
            .min_by_key(|(_, t)| *t)
            .map(|(spi, _)| spi)
    }

    fn send(&mut self, sa: &IkeSa, ike: Vec<u8>) {
        self.transmits
            .push_back(wrap(sa.local, sa.peer, ike, self.config.natt_port));
    }

    /// Drops the responder's IKE_SA_INIT retransmission index entry of `sa`
    /// (keyed by where the IKE_SA_INIT came from, not by the current peer
    /// address: after a NAT-T float those differ and the entry would leak).
    fn forget_init(&mut self, sa: &IkeSa) {
        if let Some(from) = sa.init_from {
            if self.init_index.get(&(from, sa.spi_i)) == Some(&sa.spi_r) {
                self.init_index.remove(&(from, sa.spi_i));
            }
        }
    }

    fn sa_gone(&mut self, sa: &IkeSa, reason: DeleteReason) {
        self.forget_init(sa);
        if sa.silent {
            return;
        }
        for c in &sa.children {
            self.events.push_back(Event::ChildSaDeleted {
                ike_spi_i: sa.spi_i,
                ike_spi_r: sa.spi_r,
                spi_i: c.spi_i,
                spi_r: c.spi_r,
            });
        }
        self.events.push_back(Event::IkeSaDeleted {
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            peer: sa.peer,
            reason,
        });
    }

    /// Builds an encrypted message of `sa`.
    fn seal(
        &self,
        sa: &IkeSa,
        exch: u8,
        response: bool,
        msg_id: u32,
        payloads: &[Payload],
        rng: &mut dyn Rng,
    ) -> Vec<u8> {
        let mut inner = Vec::new();
        let first = wire::emit_chain(payloads, &mut inner);
        let mut h = HeaderRepr {
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            next_payload: 0,
            exchange_type: exch,
            flags: flags(sa.initiator, response),
            message_id: msg_id,
            length: 0,
        };
        match &sa.keys {
            Some(k) => k.out.seal(&mut h, first, &inner, rng),
            None => clear_message(h, payloads),
        }
    }

    fn start_request(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        rng: &mut dyn Rng,
        exch: u8,
        payloads: Vec<Payload>,
        kind: Pending,
    ) {
        let msg_id = sa.next_msg_id;
        sa.next_msg_id = sa.next_msg_id.wrapping_add(1);
        let bytes = self.seal(sa, exch, false, msg_id, &payloads, rng);
        sa.outstanding = Some(Outstanding {
            msg_id,
            bytes: bytes.clone(),
            tries: 1,
            next_at: now + self.config.retransmit_timeout,
            kind,
        });
        self.send(sa, bytes);
    }

    fn respond(
        &mut self,
        sa: &mut IkeSa,
        exch: u8,
        msg_id: u32,
        payloads: &[Payload],
        rng: &mut dyn Rng,
    ) {
        let bytes = self.seal(sa, exch, true, msg_id, payloads, rng);
        let req = std::mem::take(&mut sa.current_request);
        sa.last_response = Some((msg_id, req, bytes.clone()));
        sa.expected_in = msg_id.wrapping_add(1);
        self.send(sa, bytes);
    }

    /// Starts an IKE SA as initiator; returns its SPIi.
    pub fn initiate(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        params: InitiateParams,
    ) -> Result<[u8; 8], EndpointError> {
        let suite = *self
            .config
            .ike_suites
            .first()
            .ok_or(EndpointError::NoSuites)?;
        let mut spi_i = [0u8; 8];
        loop {
            rng.fill(&mut spi_i);
            if spi_i != [0; 8] && !self.sas.contains_key(&spi_i) {
                break;
            }
        }
        let mut ni = vec![0u8; 32];
        rng.fill(&mut ni);
        let ke = suite.dh.generate(rng);
        let mut sa = IkeSa {
            spi_i,
            spi_r: [0; 8],
            initiator: true,
            state: State::InitSent,
            local: params.local,
            peer: params.peer,
            suite,
            keys: None,
            ni,
            nr: Vec::new(),
            ke: Some(ke),
            init_from: None,
            init_req: Vec::new(),
            init_resp: Vec::new(),
            cookie: None,
            invalid_ke_retries: 0,
            peer_id: None,
            want_peer_id: params.peer_id,
            child_params: params.child,
            child_spi: 0,
            children: Vec::new(),
            peer_childless: false,
            next_msg_id: 0,
            outstanding: None,
            expected_in: 0,
            last_response: None,
            current_request: Vec::new(),
            nat: false,
            nat_local: false,
            keepalive_at: now,
            created: now,
            last_heard: now,
            rekeyed_at: None,
            collision: None,
            silent: false,
            established_at: now,
            child_since: HashMap::new(),
            child_collisions: HashMap::new(),
        };
        self.send_init(&mut sa, now);
        self.sas.insert(spi_i, sa);
        Ok(spi_i)
    }

    /// Rekeys an established IKE SA (CREATE_CHILD_SA, RFC 7296 §1.3.2).
    pub fn rekey_ike_sa(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        spi_i: [u8; 8],
        spi_r: [u8; 8],
    ) -> Result<(), EndpointError> {
        let k = self.key_of(&spi_i, &spi_r)?;
        let mut sa = self.sas.remove(&k).ok_or(EndpointError::NoSuchSa)?;
        let r = self.start_ike_rekey(&mut sa, now, rng);
        self.sas.insert(k, sa);
        r
    }

    /// Rekeys a CHILD_SA of an established IKE SA (`child_spi`: either of its
    /// SPIs).
    pub fn rekey_child_sa(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        spi_i: [u8; 8],
        spi_r: [u8; 8],
        child_spi: u32,
    ) -> Result<(), EndpointError> {
        let k = self.key_of(&spi_i, &spi_r)?;
        let mut sa = self.sas.remove(&k).ok_or(EndpointError::NoSuchSa)?;
        let r = self.start_child_rekey(&mut sa, now, rng, child_spi);
        self.sas.insert(k, sa);
        r
    }

    fn start_ike_rekey(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        rng: &mut dyn Rng,
    ) -> Result<(), EndpointError> {
        if sa.state != State::Established {
            return Err(EndpointError::NotEstablished);
        }
        if sa.outstanding.is_some() {
            return Err(EndpointError::Busy);
        }
        let new_spi_i = self.fresh_spi(rng);
        let mut ni = vec![0u8; 32];
        rng.fill(&mut ni);
        let ke = sa.suite.dh.generate(rng);
        let p = vec![
            Payload::Sa(vec![sa.suite.proposal(1, &new_spi_i)]),
            Payload::Nonce(ni.clone()),
            Payload::Ke {
                group: ke.group.id(),
                data: ke.public().to_vec(),
            },
        ];
        self.start_request(
            sa,
            now,
            rng,
            exchange::CREATE_CHILD_SA,
            p,
            Pending::RekeyIke { ke, ni, new_spi_i },
        );
        Ok(())
    }

    fn start_child_rekey(
        &mut self,
        sa: &mut IkeSa,
        now: Instant,
        rng: &mut dyn Rng,
        child_spi: u32,
    ) -> Result<(), EndpointError> {
        if sa.state != State::Established {
            return Err(EndpointError::NotEstablished);
        }
        if sa.outstanding.is_some() {
            return Err(EndpointError::Busy);
        }
        let c = sa
            .children
            .iter()
            .find(|c| c.spi_i == child_spi || c.spi_r == child_spi)
            .ok_or(EndpointError::NoSuchChild)?;
        let old_in = c.inbound().spi;
        let params = ChildParams {
            // The rekeying side is the new CHILD_SA's initiator.
            ts_i: if c.we_initiated {
                c.ts_i.clone()
            } else {
                c.ts_r.clone()
            },
            ts_r: if c.we_initiated {
                c.ts_r.clone()
            } else {
                c.ts_i.clone()
            },
            mode: c.mode,
        };
        let spi = fresh_esp_spi(rng);
        let mut ni = vec![0u8; 32];
        rng.fill(&mut ni);
        let mut p = vec![Payload::Notify(Notify {
            protocol: proto::ESP,
            spi: old_in.to_be_bytes().to_vec(),
            ntype: notify::REKEY_SA,
            data: Vec::new(),
        })];
        if params.mode == ChildMode::Transport {
            p.push(Payload::Notify(Notify::status(
                notify::USE_TRANSPORT_MODE,
                &[],
            )));
        }
        let ke = self.config.child_pfs.then(|| sa.suite.dh.generate(rng));
        let mut props = self.esp_proposals(spi);
        if let Some(k) = &ke {
            for pr in &mut props {
                pr.transforms
                    .push(wire::Transform::new(wire::ttype::DH, k.group.id()));
            }
        }
        p.push(Payload::Sa(props));
        p.push(Payload::Nonce(ni.clone()));
        if let Some(k) = &ke {
            p.push(Payload::Ke {
                group: k.group.id(),
                data: k.public().to_vec(),
            });
        }
        p.push(Payload::TsI(params.ts_i.clone()));
        p.push(Payload::TsR(params.ts_r.clone()));
        self.start_request(
            sa,
            now,
            rng,
            exchange::CREATE_CHILD_SA,
            p,
            Pending::CreateChild {
                rekey_of: Some(old_in),
                ni,
                spi,
                params,
                ke,
            },
        );
        Ok(())
    }

    /// Deletes an IKE SA (and its CHILD_SAs) with an INFORMATIONAL Delete.
    pub fn delete_ike_sa(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        spi_i: [u8; 8],
        spi_r: [u8; 8],
    ) -> Result<(), EndpointError> {
        let k = self.key_of(&spi_i, &spi_r)?;
        let mut sa = self.sas.remove(&k).ok_or(EndpointError::NoSuchSa)?;
        let unprotected = sa.keys.is_none()
            || matches!(
                sa.state,
                State::InitSent | State::AuthSent | State::HalfOpen
            );
        if unprotected {
            // Nothing to tell the peer in a protected way: just forget it.
            self.sa_gone(&sa, DeleteReason::Local);
            return Ok(());
        }
        if sa.outstanding.is_some() {
            self.sas.insert(k, sa);
            return Err(EndpointError::Busy);
        }
        self.start_delete(&mut sa, now, rng);
        self.sas.insert(k, sa);
        Ok(())
    }

    fn start_delete(&mut self, sa: &mut IkeSa, now: Instant, rng: &mut dyn Rng) {
        sa.state = State::Deleting;
        self.start_request(
            sa,
            now,
            rng,
            exchange::INFORMATIONAL,
            vec![Payload::Delete(Delete {
                protocol: proto::IKE,
                spis: Vec::new(),
            })],
            Pending::Informational { delete: true },
        );
    }

    /// Sends an empty INFORMATIONAL (liveness check, RFC 7296 §1.4); the
    /// answer yields [`Event::PeerAlive`], silence ends in `IkeSaDeleted`
    /// with [`DeleteReason::Timeout`].
    pub fn check_liveness(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        spi_i: [u8; 8],
        spi_r: [u8; 8],
    ) -> Result<(), EndpointError> {
        let k = self.key_of(&spi_i, &spi_r)?;
        let mut sa = self.sas.remove(&k).ok_or(EndpointError::NoSuchSa)?;
        let r = if sa.state != State::Established {
            Err(EndpointError::NotEstablished)
        } else if sa.outstanding.is_some() {
            Err(EndpointError::Busy)
        } else {
            self.start_request(
                &mut sa,
                now,
                rng,
                exchange::INFORMATIONAL,
                Vec::new(),
                Pending::Informational { delete: false },
            );
            Ok(())
        };
        self.sas.insert(k, sa);
        r
    }

    fn key_of(&self, spi_i: &[u8; 8], spi_r: &[u8; 8]) -> Result<[u8; 8], EndpointError> {
        self.sas
            .values()
            .find(|s| &s.spi_i == spi_i && (&s.spi_r == spi_r || s.state == State::InitSent))
            .map(IkeSa::local_spi)
            .ok_or(EndpointError::NoSuchSa)
    }

    fn fresh_spi(&self, rng: &mut dyn Rng) -> [u8; 8] {
        let mut s = [0u8; 8];
        loop {
            rng.fill(&mut s);
            if s != [0; 8] && !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    fn esp_proposals(&self, spi: u32) -> Vec<wire::Proposal> {
        self.config
            .esp_suites
            .iter()
            .enumerate()
            .map(|(i, s)| s.proposal(i as u8 + 1, spi))
            .collect()
    }

    /// Handles one received UDP datagram. `local` is the address it arrived
    /// at (its port says whether the non-ESP marker is expected), `remote`
    /// its source. ESP packets and NAT-keepalives on the NAT-T port are
    /// ignored (the data plane owns ESP).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        let ike = if local.port() == self.config.natt_port {
            if data.len() < 4 || data[..4] != NON_ESP_MARKER {
                return; // ESP or a NAT-keepalive (0xff)
            }
            &data[4..]
        } else {
            data
        };
        if ike.len() > MAX_MESSAGE {
            self.stats.malformed += 1;
            return;
        }
        let h = match Header::new_checked(ike) {
            Ok(h) => h,
            Err(wire::WireError::BadField {
                field: "major version",
                value,
                ..
            }) if value > 2 => {
                // A later major version opening an exchange: answer with ours
                // in the header (RFC 7296 §2.5), keep no state.
                let h = HeaderRepr::parse(&Header::new_unchecked(ike));
                if h.exchange_type == exchange::IKE_SA_INIT && !h.is_response() {
                    self.stateless_reply(
                        local,
                        remote,
                        &h,
                        ike.len(),
                        notify::INVALID_MAJOR_VERSION,
                        &[],
                    );
                }
                self.stats.malformed += 1;
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let hdr = HeaderRepr::parse(&h);
        if hdr.exchange_type == exchange::IKE_SA_INIT && !hdr.is_response() {
            // SPIi MUST NOT be zero (RFC 7296 §3.1): an SA keyed by it
            // would collide with the "unknown SPIr" of every other request.
            if hdr.spi_i != [0; 8]
                && hdr.spi_r == [0; 8]
                && hdr.message_id == 0
                && hdr.is_initiator()
            {
                self.responder_init(now, rng, local, remote, ike, &hdr);
            } else {
                self.stats.malformed += 1;
            }
            return;
        }
        // Our SPI: SPIr if the sender is the original initiator, else SPIi.
        let our = if hdr.is_initiator() {
            hdr.spi_r
        } else {
            hdr.spi_i
        };
        let Some(mut sa) = self.sas.remove(&our) else {
            self.stats.unknown_sa += 1;
            return;
        };
        // Both SPIs must match (SPIr is still unknown to an initiator in InitSent).
        let spis_ok =
            hdr.spi_i == sa.spi_i && (hdr.spi_r == sa.spi_r || sa.state == State::InitSent);
        // The I flag must name the peer's role.
        if !spis_ok || hdr.is_initiator() == sa.initiator {
            self.stats.unknown_sa += 1;
            self.sas.insert(our, sa);
            return;
        }
        let keep = if hdr.is_response() {
            self.on_response(now, rng, &mut sa, local, remote, ike, &hdr)
        } else {
            self.on_request(now, rng, &mut sa, local, remote, ike, &hdr)
        };
        if keep {
            self.sas.insert(sa.local_spi(), sa);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PskAuthenticator;
    use crate::psk::PskStore;
    use crate::rng::SeqRng;

    fn ep(me: &str, peer: &str, rng: &mut SeqRng) -> Endpoint {
        let mut s = PskStore::new();
        s.insert(peer, b"secret");
        // A's peer is known by its address (no peer identity configured).
        s.insert("198.18.0.2", b"secret");
        Endpoint::new(
            Config::new(Identification::fqdn(me)),
            Box::new(PskAuthenticator { store: s }),
            rng,
        )
    }

    fn pump(a: &mut Endpoint, b: &mut Endpoint, rng: &mut SeqRng, now: Instant) {
        loop {
            let mut moved = false;
            while let Some(t) = a.poll_transmit() {
                b.handle_datagram(now, rng, t.remote, t.local, &t.data);
                moved = true;
            }
            while let Some(t) = b.poll_transmit() {
                a.handle_datagram(now, rng, t.remote, t.local, &t.data);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// A ("a.test", 198.18.0.1) and B ("b.test", 198.18.0.2) with one
    /// childless IKE SA between them, A the initiator.
    fn established_pair(rng: &mut SeqRng, now: Instant) -> (Endpoint, Endpoint) {
        let mut a = ep("a.test", "b.test", rng);
        let mut b = ep("b.test", "a.test", rng);
        a.initiate(
            now,
            rng,
            InitiateParams {
                local: "198.18.0.1:500".parse().unwrap(),
                peer: "198.18.0.2:500".parse().unwrap(),
                peer_id: None,
                child: None,
            },
        )
        .unwrap();
        pump(&mut a, &mut b, rng, now);
        (a, b)
    }

    /// A peer whose IKE_AUTH arrives from another port than its IKE_SA_INIT
    /// (NAT-T float, or a NAT rebinding) and fails: the half-open SA goes,
    /// and so must its IKE_SA_INIT retransmission index entry (it used to be
    /// removed under the floated address and leaked, one entry per attempt,
    /// for any unauthenticated peer that can do the DH).
    #[test]
    fn failed_auth_after_a_port_change_leaves_no_init_index_entry() {
        let mut rng = SeqRng::new(5);
        let now = Instant::now();
        let mut wrong = PskStore::new();
        wrong.insert("b.test", b"not the secret");
        let mut a = Endpoint::new(
            Config::new(Identification::fqdn("a.test")),
            Box::new(PskAuthenticator { store: wrong }),
            &mut rng,
        );
        let mut b = ep("b.test", "a.test", &mut rng);
        let a_500: SocketAddr = "198.18.0.1:500".parse().unwrap();
        let a_float: SocketAddr = "198.18.0.1:4501".parse().unwrap();
        let b_500: SocketAddr = "198.18.0.2:500".parse().unwrap();
        for round in 0..3u8 {
            a.initiate(
                now,
                &mut rng,
                InitiateParams {
                    local: a_500,
                    peer: b_500,
                    peer_id: Some(Identification::fqdn("b.test")),
                    child: None,
                },
            )
            .unwrap();
            let init = a.poll_transmit().expect("IKE_SA_INIT");
            b.handle_datagram(now, &mut rng, b_500, a_500, &init.data);
            assert_eq!(b.init_index.len(), 1, "round {round}");
            let resp = b.poll_transmit().expect("IKE_SA_INIT response");
            a.handle_datagram(now, &mut rng, a_500, b_500, &resp.data);
            let auth = a.poll_transmit().expect("IKE_AUTH");
            // Same host, another source port.
            b.handle_datagram(now, &mut rng, b_500, a_float, &auth.data);
            let refusal = b.poll_transmit().expect("AUTHENTICATION_FAILED");
            assert_eq!(refusal.remote, a_float);
            assert!(b.sas.is_empty(), "round {round}");
            assert!(
                b.init_index.is_empty(),
                "round {round}: {} stale entries",
                b.init_index.len()
            );
            a.handle_datagram(now, &mut rng, a_500, b_500, &refusal.data);
            while a.poll_transmit().is_some() {}
        }
    }

    /// Stateless error replies to an unauthenticated IKE_SA_INIT are never
    /// larger than the request: a 28-octet header-only request (INVALID_SYNTAX
    /// would be 36) and a later-major-version header (INVALID_MAJOR_VERSION,
    /// 36) get silence; a real request with an unsupported KE group still
    /// gets its (smaller) INVALID_KE_PAYLOAD.
    #[test]
    fn stateless_replies_never_amplify() {
        let mut rng = SeqRng::new(9);
        let now = Instant::now();
        let mut b = ep("b.test", "a.test", &mut rng);
        let a_500: SocketAddr = "198.18.0.1:500".parse().unwrap();
        let b_500: SocketAddr = "198.18.0.2:500".parse().unwrap();
        for version in [0x20u8, 0x30] {
            let mut m = vec![0u8; HEADER_LEN];
            HeaderRepr {
                spi_i: [7; 8],
                spi_r: [0; 8],
                next_payload: 0,
                exchange_type: exchange::IKE_SA_INIT,
                flags: FLAG_I,
                message_id: 0,
                length: HEADER_LEN as u32,
            }
            .emit(&mut m);
            m[17] = version;
            b.handle_datagram(now, &mut rng, b_500, a_500, &m);
            assert_eq!(b.poll_transmit(), None, "version {version:#x}");
        }
        assert_eq!(b.stats().replies_suppressed, 2);
        // A genuine IKE_SA_INIT in group 31 to a responder that only takes 19.
        let mut cfg = Config::new(Identification::fqdn("b.test"));
        cfg.ike_suites.retain(|s| s.dh == DhGroup::Ecp256);
        let mut s = PskStore::new();
        s.insert("a.test", b"secret");
        let mut b19 = Endpoint::new(cfg, Box::new(PskAuthenticator { store: s }), &mut rng);
        let mut cfg = Config::new(Identification::fqdn("a.test"));
        cfg.ike_suites.retain(|s| s.dh == DhGroup::Curve25519);
        let mut s = PskStore::new();
        s.insert("b.test", b"secret");
        let mut a = Endpoint::new(cfg, Box::new(PskAuthenticator { store: s }), &mut rng);
        a.initiate(
            now,
            &mut rng,
            InitiateParams {
                local: a_500,
                peer: b_500,
                peer_id: None,
                child: None,
            },
        )
        .unwrap();
        let init = a.poll_transmit().unwrap();
        b19.handle_datagram(now, &mut rng, b_500, a_500, &init.data);
        let r = b19
            .poll_transmit()
            .expect("NO_PROPOSAL_CHOSEN or INVALID_KE");
        assert!(r.data.len() <= init.data.len());
        assert_eq!(b19.stats().replies_suppressed, 0);
    }

    /// An IKE_SA_INIT request whose SPIi is zero (RFC 7296 §3.1: MUST NOT
    /// be) creates nothing and gets no answer; the same request with its
    /// SPIi gets the normal response.
    #[test]
    fn ike_sa_init_with_a_zero_spi_i_is_dropped() {
        let mut rng = SeqRng::new(13);
        let now = Instant::now();
        let mut a = ep("a.test", "b.test", &mut rng);
        let mut b = ep("b.test", "a.test", &mut rng);
        let (a_500, b_500): (SocketAddr, SocketAddr) = (
            "198.18.0.1:500".parse().unwrap(),
            "198.18.0.2:500".parse().unwrap(),
        );
        a.initiate(
            now,
            &mut rng,
            InitiateParams {
                local: a_500,
                peer: b_500,
                peer_id: None,
                child: None,
            },
        )
        .unwrap();
        let init = a.poll_transmit().unwrap().data;
        let mut zero = init.clone();
        zero[..8].fill(0);
        b.handle_datagram(now, &mut rng, b_500, a_500, &zero);
        assert_eq!(b.poll_transmit(), None);
        assert!(b.sas.is_empty() && b.init_index.is_empty());
        b.handle_datagram(now, &mut rng, b_500, a_500, &init);
        assert!(b.poll_transmit().is_some());
        assert_eq!(b.half_open(), 1);
    }

    /// Our IKE SA rekey offers only the SA's own suite: an (authentic)
    /// answer choosing another configured suite, here GCM-256/SHA-384 with
    /// the same group instead of the SA's GCM-128/SHA-256, is not taken up;
    /// the old SA stays.
    #[test]
    fn an_ike_rekey_answer_with_a_suite_we_did_not_offer_is_ignored() {
        use crate::config::IkeSuite;
        let mut rng = SeqRng::new(17);
        let now = Instant::now();
        let (mut a, b) = established_pair(&mut rng, now);
        while a.poll_event().is_some() {}
        let info = a.established().pop().unwrap();
        assert_eq!(
            a.sas.values().next().unwrap().suite,
            IkeSuite::GCM128_SHA256_ECP256
        );
        a.rekey_ike_sa(now, &mut rng, info.spi_i, info.spi_r)
            .unwrap();
        let req = a.poll_transmit().expect("CREATE_CHILD_SA request");
        let req_hdr = HeaderRepr::parse(&Header::new_checked(&req.data[..]).unwrap());
        // B's answer, forged with B's keys, choosing a suite A never offered.
        let ke = DhGroup::Ecp256.generate(&mut rng);
        let payloads = vec![
            Payload::Sa(vec![IkeSuite::GCM256_SHA384_ECP256.proposal(1, &[9; 8])]),
            Payload::Nonce(vec![0x5a; 32]),
            Payload::Ke {
                group: 19,
                data: ke.public().to_vec(),
            },
        ];
        let mut inner = Vec::new();
        let first = wire::emit_chain(&payloads, &mut inner);
        let mut h = HeaderRepr {
            spi_i: info.spi_i,
            spi_r: info.spi_r,
            next_payload: 0,
            exchange_type: exchange::CREATE_CHILD_SA,
            flags: FLAG_R,
            message_id: req_hdr.message_id,
            length: 0,
        };
        let sa_b = b.sas.values().next().unwrap();
        let forged = sa_b
            .keys
            .as_ref()
            .unwrap()
            .out
            .seal(&mut h, first, &inner, &mut rng);
        a.handle_datagram(now, &mut rng, req.local, req.remote, &forged);
        let ev: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(
            !ev.iter().any(|e| matches!(e, Event::IkeSaRekeyed { .. })),
            "{ev:?}"
        );
        assert!(a.find(&info.spi_i, &info.spi_r).is_some(), "old SA kept");
        assert_eq!(a.sas.len(), 1);
    }

    /// RFC 7296 §2.10: with HMAC-SHA-384 (48-octet key) the initiator's
    /// nonce must be at least 24 octets. A 16-octet one is refused (no SA,
    /// the INVALID_SYNTAX reply no larger than the request); 24 is taken,
    /// and our nonce is then no longer than theirs.
    #[test]
    fn a_nonce_shorter_than_half_the_prf_key_is_refused() {
        use crate::config::IkeSuite;
        let mut rng = SeqRng::new(19);
        let now = Instant::now();
        let mut b = ep("b.test", "a.test", &mut rng);
        let (a_500, b_500): (SocketAddr, SocketAddr) = (
            "198.18.0.1:500".parse().unwrap(),
            "198.18.0.2:500".parse().unwrap(),
        );
        for (spi, n) in [(1u8, 16usize), (2, 24)] {
            let ke = DhGroup::Ecp256.generate(&mut rng);
            let h = HeaderRepr {
                spi_i: [spi; 8],
                spi_r: [0; 8],
                next_payload: 0,
                exchange_type: exchange::IKE_SA_INIT,
                flags: FLAG_I,
                message_id: 0,
                length: 0,
            };
            let req = clear_message(
                h,
                &[
                    Payload::Sa(vec![IkeSuite::GCM256_SHA384_ECP256.proposal(1, &[])]),
                    Payload::Ke {
                        group: 19,
                        data: ke.public().to_vec(),
                    },
                    Payload::Nonce(vec![0x33; n]),
                ],
            );
            b.handle_datagram(now, &mut rng, b_500, a_500, &req);
            let r = b.poll_transmit().expect("an answer");
            let hdr = HeaderRepr::parse(&Header::new_checked(&r.data[..]).unwrap());
            let pl = wire::parse_chain(hdr.next_payload, &r.data[HEADER_LEN..]).unwrap();
            if n == 16 {
                assert!(
                    matches!(&pl[..], [Payload::Notify(x)] if x.ntype == notify::INVALID_SYNTAX),
                    "{pl:?}"
                );
                assert_eq!(b.half_open(), 0);
            } else {
                let nr = pl.iter().find_map(|p| match p {
                    Payload::Nonce(v) => Some(v.len()),
                    _ => None,
                });
                assert_eq!(nr, Some(24));
                assert_eq!(b.half_open(), 1);
            }
        }
    }

    /// An IKE SA rekey adds an SA until the old one is deleted: with the SA
    /// table at `max_sas` the responder refuses it (NO_ADDITIONAL_SAS) and
    /// both sides keep the old SA; with room it goes through.
    #[test]
    fn ike_rekey_is_refused_when_the_sa_table_is_full() {
        let mut rng = SeqRng::new(11);
        let now = Instant::now();
        let (mut a, mut b) = established_pair(&mut rng, now);
        assert_eq!(a.established_count(), 1);
        assert_eq!(b.established_count(), b.established().len());
        let info = a.established().pop().unwrap();
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        b.config.max_sas = 1;
        a.rekey_ike_sa(now, &mut rng, info.spi_i, info.spi_r)
            .unwrap();
        pump(&mut a, &mut b, &mut rng, now);
        let rekeyed = |e: &Event| matches!(e, Event::IkeSaRekeyed { .. });
        let ev: Vec<Event> = std::iter::from_fn(|| a.poll_event())
            .chain(std::iter::from_fn(|| b.poll_event()))
            .collect();
        assert!(!ev.iter().any(rekeyed), "{ev:?}");
        assert_eq!(b.sas.len(), 1);
        assert!(a.find(&info.spi_i, &info.spi_r).is_some(), "old SA kept");
        assert!(b.find(&info.spi_i, &info.spi_r).is_some(), "old SA kept");
        // With room again, the same rekey succeeds.
        b.config.max_sas = 2;
        a.rekey_ike_sa(now, &mut rng, info.spi_i, info.spi_r)
            .unwrap();
        pump(&mut a, &mut b, &mut rng, now);
        assert!(std::iter::from_fn(|| b.poll_event()).any(|e| rekeyed(&e)));
        assert!(b.find(&info.spi_i, &info.spi_r).is_none(), "old SA gone");
        assert_eq!(b.established_count(), 1);
    }

    /// An authentic INFORMATIONAL request carrying an unknown payload with
    /// the critical bit: answered with UNSUPPORTED_CRITICAL_PAYLOAD naming
    /// its type (RFC 7296 §2.5); the same payload without the bit is
    /// skipped and the request answered normally.
    #[test]
    fn unknown_critical_payload_in_an_sk_request_is_refused_by_notify() {
        let mut rng = SeqRng::new(1);
        let now = Instant::now();
        let (a, mut b) = established_pair(&mut rng, now);
        let sa_a = a.sas.values().next().unwrap();
        let (spi_i, spi_r) = (sa_a.spi_i, sa_a.spi_r);
        for (critical, msg_id) in [(0x80u8, 2u32), (0, 3)] {
            // Unknown type 200 with the critical bit (or not), built and
            // sealed with A's outbound keys as A's next request.
            let inner = vec![0u8, critical, 0, 6, 0xab, 0xcd];
            let mut h = HeaderRepr {
                spi_i,
                spi_r,
                next_payload: 0,
                exchange_type: exchange::INFORMATIONAL,
                flags: FLAG_I,
                message_id: msg_id,
                length: 0,
            };
            let sa_a = a.sas.values().next().unwrap();
            let msg = sa_a
                .keys
                .as_ref()
                .unwrap()
                .out
                .seal(&mut h, 200, &inner, &mut rng);
            // B expects message ID 2 next (0 INIT, 1 AUTH).
            b.handle_datagram(
                now,
                &mut rng,
                "198.18.0.2:500".parse().unwrap(),
                "198.18.0.1:500".parse().unwrap(),
                &msg,
            );
            let r = b.poll_transmit().expect("an answer");
            let sa_b = b.sas.values().next().unwrap();
            let hdr = HeaderRepr::parse(&Header::new_checked(&r.data[..]).unwrap());
            assert!(hdr.is_response());
            assert_eq!(hdr.message_id, msg_id);
            let mut it = PayloadIter::new(hdr.next_payload, &r.data[HEADER_LEN..]);
            let _sk = it.next().unwrap().unwrap();
            let first = it.next_type();
            let sa_a = a.sas.values().next().unwrap();
            let plain = sa_a
                .keys
                .as_ref()
                .unwrap()
                .inb
                .open(&r.data, HEADER_LEN)
                .unwrap();
            let pl = wire::parse_chain(first, &plain).unwrap();
            if critical != 0 {
                assert!(
                    matches!(&pl[..], [Payload::Notify(n)]
                        if n.ntype == notify::UNSUPPORTED_CRITICAL_PAYLOAD && n.data == [200]),
                    "{pl:?}"
                );
            } else {
                assert!(pl.is_empty(), "{pl:?}");
            }
            assert_eq!(sa_b.state, State::Established);
        }
    }
}
