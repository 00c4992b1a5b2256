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
    cookie_secret: Zeroizing<[u8; 32]>,
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
            cookie_secret,
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
            if sa.state == State::HalfOpen && now >= sa.created + self.config.half_open_timeout {
                self.init_index.remove(&(sa.peer, sa.spi_i));
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
                self.init_index.remove(&(sa.peer, sa.spi_i));
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

    // ---------------------------------------------------------------- output

    fn send(&mut self, sa: &IkeSa, ike: Vec<u8>) {
        self.transmits
            .push_back(wrap(sa.local, sa.peer, ike, self.config.natt_port));
    }

    fn sa_gone(&mut self, sa: &IkeSa, reason: DeleteReason) {
        if !sa.initiator {
            self.init_index.remove(&(sa.peer, sa.spi_i));
        }
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
        if !sa.initiator {
            self.init_index.remove(&(sa.peer, sa.spi_i));
        }
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

    // ------------------------------------------------------------- initiator

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

    fn send_init(&mut self, sa: &mut IkeSa, now: Instant) {
        let mut p = Vec::new();
        if let Some(c) = &sa.cookie {
            p.push(Payload::Notify(Notify::status(notify::COOKIE, c)));
        }
        let props = self
            .config
            .ike_suites
            .iter()
            .enumerate()
            .map(|(i, s)| s.proposal(i as u8 + 1, &[]))
            .collect();
        p.push(Payload::Sa(props));
        let ke = sa.ke.as_ref().expect("initiator holds its KE");
        p.push(Payload::Ke {
            group: ke.group.id(),
            data: ke.public().to_vec(),
        });
        p.push(Payload::Nonce(sa.ni.clone()));
        p.push(Payload::Notify(Notify::status(
            notify::NAT_DETECTION_SOURCE_IP,
            &crypto::nat_hash(&sa.spi_i, &[0; 8], sa.local),
        )));
        p.push(Payload::Notify(Notify::status(
            notify::NAT_DETECTION_DESTINATION_IP,
            &crypto::nat_hash(&sa.spi_i, &[0; 8], sa.peer),
        )));
        let h = HeaderRepr {
            spi_i: sa.spi_i,
            spi_r: [0; 8],
            next_payload: 0,
            exchange_type: exchange::IKE_SA_INIT,
            flags: FLAG_I,
            message_id: 0,
            length: 0,
        };
        let bytes = clear_message(h, &p);
        sa.init_req = bytes.clone();
        sa.next_msg_id = 1;
        sa.outstanding = Some(Outstanding {
            msg_id: 0,
            bytes: bytes.clone(),
            tries: 1,
            next_at: now + self.config.retransmit_timeout,
            kind: Pending::Init,
        });
        self.send(sa, bytes);
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

    // ----------------------------------------------------------------- input

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
        let Ok(h) = Header::new_checked(ike) else {
            self.stats.malformed += 1;
            return;
        };
        let hdr = HeaderRepr::parse(&h);
        if hdr.exchange_type == exchange::IKE_SA_INIT && !hdr.is_response() {
            if hdr.spi_r == [0; 8] && hdr.message_id == 0 && hdr.is_initiator() {
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

    fn cookie_for(&self, ni: &[u8], remote: SocketAddr, spi_i: &[u8; 8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(ni);
        match remote.ip() {
            std::net::IpAddr::V4(a) => h.update(a.octets()),
            std::net::IpAddr::V6(a) => h.update(a.octets()),
        }
        h.update(spi_i);
        h.update(&self.cookie_secret[..]);
        let mut c = vec![0u8]; // secret version
        c.extend_from_slice(&h.finalize());
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn responder_init(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) {
        // A retransmitted request: replay our response.
        if let Some(k) = self.init_index.get(&(remote, hdr.spi_i)) {
            if let Some(sa) = self.sas.get(k) {
                if sa.init_req == msg {
                    let bytes = sa.init_resp.clone();
                    self.stats.retransmits_answered += 1;
                    let t = wrap(local, remote, bytes, self.config.natt_port);
                    self.transmits.push_back(t);
                }
                return;
            }
        }
        let payloads = match wire::parse_chain(hdr.next_payload, &msg[HEADER_LEN..]) {
            Ok(p) => p,
            Err(wire::WireError::UnsupportedCritical(t)) => {
                self.stateless_reply(
                    local,
                    remote,
                    hdr,
                    notify::UNSUPPORTED_CRITICAL_PAYLOAD,
                    &[t],
                );
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let mut sa_p = None;
        let mut ke_p = None;
        let mut nonce = None;
        let mut natd_src = Vec::new();
        let mut natd_dst = Vec::new();
        for p in &payloads {
            match p {
                Payload::Sa(props) => sa_p = Some(props),
                Payload::Ke { group, data } => ke_p = Some((*group, data)),
                Payload::Nonce(n) => nonce = Some(n),
                Payload::Notify(n) if n.ntype == notify::NAT_DETECTION_SOURCE_IP => {
                    natd_src.push(n.data.clone())
                }
                Payload::Notify(n) if n.ntype == notify::NAT_DETECTION_DESTINATION_IP => {
                    natd_dst.push(n.data.clone())
                }
                _ => {}
            }
        }
        let (Some(props), Some((group, kei)), Some(ni)) = (sa_p, ke_p, nonce) else {
            self.stateless_reply(local, remote, hdr, notify::INVALID_SYNTAX, &[]);
            return;
        };
        // DoS: bounded half-open table, cookies from the threshold on.
        let half_open = self.half_open();
        if half_open >= self.config.half_open_limit {
            self.stats.half_open_refused += 1;
            return;
        }
        if half_open >= self.config.cookie_threshold {
            let expect = self.cookie_for(ni, remote, &hdr.spi_i);
            let ok = matches!(payloads.first(), Some(Payload::Notify(n))
                if n.ntype == notify::COOKIE && n.data == expect);
            if !ok {
                self.stats.cookies_sent += 1;
                self.stateless_reply(local, remote, hdr, notify::COOKIE, &expect);
                return;
            }
        }
        // Proposal selection: the peer's order, our suites.
        let chosen = props.iter().find_map(|p| {
            self.config
                .ike_suites
                .iter()
                .find(|s| s.offered_in(p))
                .map(|s| (p.number, *s))
        });
        let Some((prop_no, suite)) = chosen else {
            self.stateless_reply(local, remote, hdr, notify::NO_PROPOSAL_CHOSEN, &[]);
            return;
        };
        if group != suite.dh.id() {
            // Does the peer also offer a group whose KE it sent? Prefer a
            // suite matching the KE it sent, else ask for ours.
            let alt = props.iter().find_map(|p| {
                self.config
                    .ike_suites
                    .iter()
                    .find(|s| s.dh.id() == group && s.offered_in(p))
                    .map(|s| (p.number, *s))
            });
            match alt {
                Some((n, s)) => {
                    return self.responder_init_accept(
                        now, rng, local, remote, msg, hdr, n, s, kei, ni, &natd_src, &natd_dst,
                    )
                }
                None => {
                    self.stateless_reply(
                        local,
                        remote,
                        hdr,
                        notify::INVALID_KE_PAYLOAD,
                        &suite.dh.id().to_be_bytes(),
                    );
                    return;
                }
            }
        }
        self.responder_init_accept(
            now, rng, local, remote, msg, hdr, prop_no, suite, kei, ni, &natd_src, &natd_dst,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn responder_init_accept(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
        prop_no: u8,
        suite: IkeSuite,
        kei: &[u8],
        ni: &[u8],
        natd_src: &[Vec<u8>],
        natd_dst: &[Vec<u8>],
    ) {
        let ke = suite.dh.generate(rng);
        let Ok(g_ir) = ke.shared_secret(kei) else {
            self.stats.malformed += 1;
            self.stateless_reply(local, remote, hdr, notify::INVALID_SYNTAX, &[]);
            return;
        };
        let spi_r = self.fresh_spi(rng);
        let mut nr = vec![0u8; 32];
        rng.fill(&mut nr);
        let mut resp_sa = suite.proposal(prop_no, &[]);
        resp_sa.number = prop_no;
        let p = vec![
            Payload::Sa(vec![resp_sa]),
            Payload::Ke {
                group: suite.dh.id(),
                data: ke.public().to_vec(),
            },
            Payload::Nonce(nr.clone()),
            Payload::Notify(Notify::status(
                notify::NAT_DETECTION_SOURCE_IP,
                &crypto::nat_hash(&hdr.spi_i, &spi_r, local),
            )),
            Payload::Notify(Notify::status(
                notify::NAT_DETECTION_DESTINATION_IP,
                &crypto::nat_hash(&hdr.spi_i, &spi_r, remote),
            )),
            Payload::Notify(Notify::status(notify::CHILDLESS_IKEV2_SUPPORTED, &[])),
        ];
        let h = HeaderRepr {
            spi_i: hdr.spi_i,
            spi_r,
            next_payload: 0,
            exchange_type: exchange::IKE_SA_INIT,
            flags: FLAG_R,
            message_id: 0,
            length: 0,
        };
        let resp = clear_message(h, &p);
        let nat = nat_detected(&hdr.spi_i, &[0; 8], remote, local, natd_src, natd_dst);
        let Some(keys) = derive_ike_keys(suite, ni, &nr, &g_ir, &hdr.spi_i, &spi_r, false) else {
            return;
        };
        let sa = IkeSa {
            spi_i: hdr.spi_i,
            spi_r,
            initiator: false,
            state: State::HalfOpen,
            local,
            peer: remote,
            suite,
            keys: Some(keys),
            ni: ni.to_vec(),
            nr,
            ke: None,
            init_req: msg.to_vec(),
            init_resp: resp.clone(),
            cookie: None,
            invalid_ke_retries: 0,
            peer_id: None,
            want_peer_id: None,
            child_params: None,
            child_spi: 0,
            children: Vec::new(),
            peer_childless: false,
            next_msg_id: 0,
            outstanding: None,
            expected_in: 1,
            last_response: None,
            current_request: Vec::new(),
            nat,
            created: now,
            last_heard: now,
            rekeyed_at: None,
            collision: None,
            silent: false,
            established_at: now,
            child_since: HashMap::new(),
            child_collisions: HashMap::new(),
        };
        self.transmits
            .push_back(wrap(local, remote, resp, self.config.natt_port));
        self.init_index.insert((remote, hdr.spi_i), spi_r);
        self.sas.insert(spi_r, sa);
    }

    /// An unencrypted IKE_SA_INIT response carrying one notify, keeping no
    /// state (errors, COOKIE, INVALID_KE_PAYLOAD).
    fn stateless_reply(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        hdr: &HeaderRepr,
        ntype: u16,
        data: &[u8],
    ) {
        let h = HeaderRepr {
            spi_i: hdr.spi_i,
            spi_r: [0; 8],
            next_payload: 0,
            exchange_type: exchange::IKE_SA_INIT,
            flags: FLAG_R,
            message_id: 0,
            length: 0,
        };
        let m = clear_message(h, &[Payload::Notify(Notify::status(ntype, data))]);
        self.transmits
            .push_back(wrap(local, remote, m, self.config.natt_port));
    }

    /// Decrypts an SK message of an SA with keys. `None`: drop.
    fn open(&mut self, sa: &IkeSa, msg: &[u8], hdr: &HeaderRepr) -> Option<Vec<Payload>> {
        let keys = sa.keys.as_ref()?;
        let mut it = PayloadIter::new(hdr.next_payload, &msg[HEADER_LEN..]);
        let mut sk_at = HEADER_LEN;
        let mut first_inner = None;
        while let Some(r) = it.next() {
            let Ok(raw) = r else {
                self.stats.malformed += 1;
                return None;
            };
            if raw.ptype == ptype::SK {
                first_inner = Some(it.next_type());
                break;
            }
            if raw.ptype == ptype::SKF {
                self.stats.malformed += 1;
                return None;
            }
            sk_at += wire::GENERIC_HEADER_LEN + raw.body.len();
        }
        let Some(first) = first_inner else {
            self.stats.malformed += 1;
            return None;
        };
        let Ok(inner) = keys.inb.open(msg, sk_at) else {
            self.stats.decrypt_failed += 1;
            return None;
        };
        match wire::parse_chain(first, &inner) {
            Ok(p) => Some(p),
            Err(_) => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> bool {
        if hdr.message_id != sa.expected_in {
            if let Some((id, req, bytes)) = &sa.last_response {
                // Only an octet-identical retransmission is answered: a forged
                // copy with the right Message ID gets nothing.
                if *id == hdr.message_id && req == msg {
                    // Retransmitted request: replay (RFC 7296 §2.1).
                    let b = bytes.clone();
                    self.stats.retransmits_answered += 1;
                    self.transmits
                        .push_back(wrap(local, remote, b, self.config.natt_port));
                    return true;
                }
            }
            self.stats.bad_message_id += 1;
            return true;
        }
        let Some(payloads) = self.open(sa, msg, hdr) else {
            return true;
        };
        sa.current_request = msg.to_vec();
        // Authenticated: follow the peer's address (NAT-T float, RFC 7296 §2.23).
        sa.local = local;
        sa.peer = remote;
        sa.last_heard = now;
        match (hdr.exchange_type, sa.state) {
            (exchange::IKE_AUTH, State::HalfOpen) => {
                self.responder_auth(now, rng, sa, hdr, &payloads)
            }
            (exchange::INFORMATIONAL, State::Established | State::Rekeyed | State::Deleting) => {
                self.on_informational(rng, sa, hdr, &payloads)
            }
            (exchange::CREATE_CHILD_SA, State::Established) => {
                self.on_create_child(now, rng, sa, hdr, &payloads);
                true
            }
            (exchange::CREATE_CHILD_SA, _) => {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::TEMPORARY_FAILURE,
                        &[],
                    ))],
                    rng,
                );
                true
            }
            _ => {
                self.stats.malformed += 1;
                true
            }
        }
    }

    fn responder_auth(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        hdr: &HeaderRepr,
        payloads: &[Payload],
    ) -> bool {
        let mut idi = None;
        let mut auth = None;
        let mut sa_p = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut transport = false;
        let mut initial_contact = false;
        for p in payloads {
            match p {
                Payload::Notify(n) if n.ntype == notify::INITIAL_CONTACT => initial_contact = true,
                Payload::IdI(i) => idi = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                Payload::Sa(s) => sa_p = Some(s.clone()),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                Payload::Notify(n) if n.ntype == notify::USE_TRANSPORT_MODE => transport = true,
                _ => {}
            }
        }
        let (Some(idi), Some((method, auth_data))) = (idi, auth) else {
            self.respond(
                sa,
                exchange::IKE_AUTH,
                hdr.message_id,
                &[Payload::Notify(Notify::status(notify::INVALID_SYNTAX, &[]))],
                rng,
            );
            self.sa_gone(sa, DeleteReason::PeerError(notify::INVALID_SYNTAX));
            return false;
        };
        let keys = sa.keys.as_ref().expect("half-open SA has keys");
        let prf = sa.suite.prf;
        let mut signed = sa.init_req.clone();
        signed.extend_from_slice(&sa.nr);
        signed.extend_from_slice(&prf.prf(&keys.sk_pi, &idi.body()));
        let local_id = self.config.local_id.clone();
        let ctx = AuthContext {
            prf,
            signed_octets: &signed,
            signer: &idi,
            other: &local_id,
        };
        if self.auth.verify(&ctx, method, &auth_data).is_err() {
            self.respond(
                sa,
                exchange::IKE_AUTH,
                hdr.message_id,
                &[Payload::Notify(Notify::status(
                    notify::AUTHENTICATION_FAILED,
                    &[],
                ))],
                rng,
            );
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        }
        let mut signed_r = sa.init_resp.clone();
        signed_r.extend_from_slice(&sa.ni);
        signed_r.extend_from_slice(&prf.prf(&keys.sk_pr, &local_id.body()));
        let ctx = AuthContext {
            prf,
            signed_octets: &signed_r,
            signer: &local_id,
            other: &idi,
        };
        let Ok((m, our_auth)) = self.auth.sign(&ctx) else {
            self.respond(
                sa,
                exchange::IKE_AUTH,
                hdr.message_id,
                &[Payload::Notify(Notify::status(
                    notify::AUTHENTICATION_FAILED,
                    &[],
                ))],
                rng,
            );
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        };
        let mut out = vec![
            Payload::IdR(local_id),
            Payload::Auth {
                method: m,
                data: our_auth,
            },
        ];
        if initial_contact {
            // RFC 7296 §2.4: the peer has no other SA with us (it restarted):
            // forget every other SA with the same authenticated identity.
            self.forget_peer(&idi);
        }
        sa.peer_id = Some(idi);
        let mut child = None;
        if let (Some(props), Some(tsi), Some(tsr)) = (sa_p, tsi, tsr) {
            let mode = if transport {
                ChildMode::Transport
            } else {
                ChildMode::Tunnel
            };
            match self.accept_child(
                rng,
                sa,
                &props,
                &tsi,
                &tsr,
                mode,
                None,
                &sa.ni.clone(),
                &sa.nr.clone(),
            ) {
                Ok((c, resp)) => {
                    if transport {
                        out.push(Payload::Notify(Notify::status(
                            notify::USE_TRANSPORT_MODE,
                            &[],
                        )));
                    }
                    out.extend(resp);
                    child = Some(c);
                }
                Err(n) => out.push(Payload::Notify(Notify::status(n, &[]))),
            }
        }
        self.respond(sa, exchange::IKE_AUTH, hdr.message_id, &out, rng);
        sa.state = State::Established;
        sa.established_at = now;
        if let Some(c) = child {
            sa.child_since.insert(c.spi_i, now);
            sa.children.push(c);
        }
        if let Some(info) = sa.info() {
            self.events.push_back(Event::IkeSaEstablished(info));
        }
        if let Some(c) = sa.children.first() {
            self.events.push_back(Event::ChildSaInstalled {
                ike_spi_i: sa.spi_i,
                ike_spi_r: sa.spi_r,
                child: c.clone(),
            });
        }
        true
    }

    /// Responder side of a CHILD_SA: picks an ESP proposal and answers
    /// with SA, TSi, TSr. Errors are notify types.
    #[allow(clippy::too_many_arguments)]
    fn accept_child(
        &mut self,
        rng: &mut dyn Rng,
        sa: &IkeSa,
        props: &[wire::Proposal],
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
        mode: ChildMode,
        pfs: Option<(u16, &[u8])>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<(ChildSaKeys, Vec<Payload>), u16> {
        let g_ir = pfs.map(|(_, g)| g);
        let chosen = props.iter().find_map(|p| {
            self.config
                .esp_suites
                .iter()
                .find(|s| s.offered_in(p))
                .map(|s| (p, *s))
        });
        let Some((p, suite)) = chosen else {
            return Err(notify::NO_PROPOSAL_CHOSEN);
        };
        // PFS: the KE's group must be one the chosen proposal offers.
        if let Some((group, _)) = pfs {
            let offered = p
                .transforms
                .iter()
                .any(|t| t.ttype == wire::ttype::DH && t.id == group);
            if !offered {
                return Err(notify::NO_PROPOSAL_CHOSEN);
            }
        }
        if tsi.is_empty() || tsr.is_empty() {
            return Err(notify::TS_UNACCEPTABLE);
        }
        let spi_i = spi32(&p.spi).ok_or(notify::INVALID_SYNTAX)?;
        let spi_r = fresh_esp_spi(rng);
        let keys = sa.keys.as_ref().ok_or(notify::TEMPORARY_FAILURE)?;
        let c = child_keys(
            sa.suite.prf,
            &keys.sk_d,
            suite,
            g_ir,
            ni,
            nr,
            spi_i,
            spi_r,
            false,
            tsi.to_vec(),
            tsr.to_vec(),
            mode,
            sa,
        )
        .ok_or(notify::TEMPORARY_FAILURE)?;
        let mut resp_p = suite.proposal(p.number, spi_r);
        resp_p.number = p.number;
        if let Some((group, _)) = pfs {
            resp_p
                .transforms
                .push(wire::Transform::new(wire::ttype::DH, group));
        }
        Ok((
            c,
            vec![
                Payload::Sa(vec![resp_p]),
                Payload::TsI(tsi.to_vec()),
                Payload::TsR(tsr.to_vec()),
            ],
        ))
    }

    fn on_informational(
        &mut self,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        hdr: &HeaderRepr,
        payloads: &[Payload],
    ) -> bool {
        let mut out = Vec::new();
        let mut delete_ike = false;
        for p in payloads {
            match p {
                Payload::Delete(d) if d.protocol == proto::IKE => delete_ike = true,
                Payload::Delete(d) if d.protocol == proto::ESP => {
                    let mut ours = Vec::new();
                    for s in &d.spis {
                        let Some(peer_in) = spi32(s) else { continue };
                        if let Some(pos) =
                            sa.children.iter().position(|c| c.outbound().spi == peer_in)
                        {
                            let c = sa.children.remove(pos);
                            ours.push(c.inbound().spi.to_be_bytes().to_vec());
                            self.events.push_back(Event::ChildSaDeleted {
                                ike_spi_i: sa.spi_i,
                                ike_spi_r: sa.spi_r,
                                spi_i: c.spi_i,
                                spi_r: c.spi_r,
                            });
                        }
                    }
                    if !ours.is_empty() {
                        out.push(Payload::Delete(Delete {
                            protocol: proto::ESP,
                            spis: ours,
                        }));
                    }
                }
                Payload::Notify(n) if n.ntype == notify::AUTHENTICATION_FAILED => {
                    delete_ike = true;
                }
                _ => {}
            }
        }
        if delete_ike {
            self.respond(sa, exchange::INFORMATIONAL, hdr.message_id, &[], rng);
            if let Some((peer_new, _)) = sa.collision.take() {
                // RFC 7296 §2.25.2: forget our own rekey; the peer's stands.
                sa.outstanding = None;
                self.adopt_peer_rekey(sa, peer_new);
            }
            let reason = if sa.state == State::Rekeyed {
                DeleteReason::Rekeyed
            } else {
                DeleteReason::Peer
            };
            if sa.state == State::Rekeyed {
                // Children moved to the new SA: nothing else to announce.
                self.events.push_back(Event::IkeSaDeleted {
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                    peer: sa.peer,
                    reason,
                });
                if !sa.initiator {
                    self.init_index.remove(&(sa.peer, sa.spi_i));
                }
            } else {
                self.sa_gone(sa, reason);
            }
            return false;
        }
        self.respond(sa, exchange::INFORMATIONAL, hdr.message_id, &out, rng);
        true
    }

    fn on_create_child(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        hdr: &HeaderRepr,
        payloads: &[Payload],
    ) {
        let mut props = None;
        let mut ni = None;
        let mut kei = None;
        let mut tsi = None;
        let mut tsr = None;
        let mut rekey_spi = None;
        let mut transport = false;
        for p in payloads {
            match p {
                Payload::Sa(s) => props = Some(s.clone()),
                Payload::Nonce(n) => ni = Some(n.clone()),
                Payload::Ke { group, data } => kei = Some((*group, data.clone())),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                Payload::Notify(n) if n.ntype == notify::REKEY_SA => rekey_spi = spi32(&n.spi),
                Payload::Notify(n) if n.ntype == notify::USE_TRANSPORT_MODE => transport = true,
                _ => {}
            }
        }
        let err = |n: u16| vec![Payload::Notify(Notify::status(n, &[]))];
        let (Some(props), Some(ni)) = (props, ni) else {
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &err(notify::INVALID_SYNTAX),
                rng,
            );
            return;
        };
        if props.iter().any(|p| p.protocol == proto::IKE) {
            // IKE SA rekey (RFC 7296 §1.3.2).
            let chosen = props.iter().find_map(|p| {
                self.config
                    .ike_suites
                    .iter()
                    .find(|s| s.offered_in(p) && p.spi.len() == 8)
                    .map(|s| (p, *s))
            });
            let Some((p, suite)) = chosen else {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::NO_PROPOSAL_CHOSEN),
                    rng,
                );
                return;
            };
            let Some((group, kei)) = kei else {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::INVALID_SYNTAX),
                    rng,
                );
                return;
            };
            if group != suite.dh.id() {
                let data = suite.dh.id().to_be_bytes();
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::INVALID_KE_PAYLOAD,
                        &data,
                    ))],
                    rng,
                );
                return;
            }
            let ke = suite.dh.generate(rng);
            let Ok(g_ir) = ke.shared_secret(&kei) else {
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::INVALID_SYNTAX),
                    rng,
                );
                return;
            };
            let mut new_spi_i = [0u8; 8];
            new_spi_i.copy_from_slice(&p.spi);
            let new_spi_r = self.fresh_spi(rng);
            let mut nr = vec![0u8; 32];
            rng.fill(&mut nr);
            let old_sk_d = sa.keys.as_ref().map(|k| k.sk_d.clone()).unwrap_or_default();
            let Some(new) = rekeyed_sa(
                sa, suite, &old_sk_d, &g_ir, &ni, &nr, new_spi_i, new_spi_r, false, now,
            ) else {
                return;
            };
            let mut rp = suite.proposal(p.number, &new_spi_r);
            rp.number = p.number;
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &[
                    Payload::Sa(vec![rp]),
                    Payload::Nonce(nr),
                    Payload::Ke {
                        group: suite.dh.id(),
                        data: ke.public().to_vec(),
                    },
                ],
                rng,
            );
            let ours_outstanding = matches!(
                sa.outstanding,
                Some(Outstanding {
                    kind: Pending::RekeyIke { .. },
                    ..
                })
            );
            if ours_outstanding {
                // Simultaneous rekey (RFC 7296 §2.8.2): keep the peer's new SA
                // aside until our own exchange ends, then keep one of the two.
                let lowest = ni.clone().min(new.nr.clone());
                sa.collision = Some((new.local_spi(), lowest));
                self.sas.insert(new.local_spi(), new);
            } else {
                self.finish_ike_rekey(sa, new);
            }
            return;
        }
        // CHILD_SA creation or rekey.
        if sa.children.len() >= MAX_CHILDREN {
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &err(notify::NO_ADDITIONAL_SAS),
                rng,
            );
            return;
        }
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
            self.respond(
                sa,
                hdr.exchange_type,
                hdr.message_id,
                &err(notify::INVALID_SYNTAX),
                rng,
            );
            return;
        };
        if let Some(old) = rekey_spi {
            // Our inbound SPI of the CHILD_SA the peer wants to rekey.
            let old_in = sa
                .children
                .iter()
                .find(|c| c.outbound().spi == old)
                .map(|c| c.inbound().spi);
            let closing = match (&sa.outstanding, old_in) {
                (
                    Some(Outstanding {
                        kind: Pending::DeleteChild { spis_in },
                        ..
                    }),
                    Some(i),
                ) => spis_in.contains(&i),
                _ => false,
            };
            if closing {
                // RFC 7296 §2.25.1: we are closing it.
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &err(notify::TEMPORARY_FAILURE),
                    rng,
                );
                return;
            }
            if old_in.is_none() {
                let n = Notify {
                    protocol: proto::ESP,
                    spi: old.to_be_bytes().to_vec(),
                    ntype: notify::CHILD_SA_NOT_FOUND,
                    data: Vec::new(),
                };
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(n)],
                    rng,
                );
                return;
            }
        }
        let mut nr = vec![0u8; 32];
        rng.fill(&mut nr);
        // PFS: answer a KE in the IKE SA's group.
        let mut ke_out = None;
        let mut g_ir = None;
        if let Some((group, data)) = &kei {
            let Some(g) = DhGroup::from_id(*group) else {
                let d = sa.suite.dh.id().to_be_bytes();
                self.respond(
                    sa,
                    hdr.exchange_type,
                    hdr.message_id,
                    &[Payload::Notify(Notify::status(
                        notify::INVALID_KE_PAYLOAD,
                        &d,
                    ))],
                    rng,
                );
                return;
            };
            let ke = g.generate(rng);
            match ke.shared_secret(data) {
                Ok(s) => g_ir = Some(s),
                Err(_) => {
                    self.respond(
                        sa,
                        hdr.exchange_type,
                        hdr.message_id,
                        &err(notify::INVALID_SYNTAX),
                        rng,
                    );
                    return;
                }
            }
            ke_out = Some(ke);
        }
        let mode = if transport {
            ChildMode::Transport
        } else {
            ChildMode::Tunnel
        };
        match self.accept_child(
            rng,
            sa,
            &props,
            &tsi,
            &tsr,
            mode,
            ke_out
                .as_ref()
                .zip(g_ir.as_deref())
                .map(|(k, g)| (k.group.id(), &g[..])),
            &ni,
            &nr,
        ) {
            Ok((c, resp)) => {
                let mut out = Vec::new();
                if transport {
                    out.push(Payload::Notify(Notify::status(
                        notify::USE_TRANSPORT_MODE,
                        &[],
                    )));
                }
                let mut resp = resp.into_iter();
                if let Some(sa_payload) = resp.next() {
                    out.push(sa_payload);
                }
                out.push(Payload::Nonce(nr.clone()));
                if let Some(ke) = &ke_out {
                    out.push(Payload::Ke {
                        group: ke.group.id(),
                        data: ke.public().to_vec(),
                    });
                }
                out.extend(resp);
                self.respond(sa, hdr.exchange_type, hdr.message_id, &out, rng);
                self.events.push_back(Event::ChildSaInstalled {
                    ike_spi_i: sa.spi_i,
                    ike_spi_r: sa.spi_r,
                    child: c.clone(),
                });
                if let Some(old) = rekey_spi {
                    // The peer replaces it: no automatic rekey of ours for it.
                    if let Some(o) = sa.children.iter().find(|c| c.outbound().spi == old) {
                        sa.child_since.remove(&o.spi_i);
                        let o_in = o.inbound().spi;
                        // Are we rekeying it too? Remember this exchange's
                        // lowest nonce for when ours completes.
                        let ours = matches!(
                            &sa.outstanding,
                            Some(Outstanding {
                                kind: Pending::CreateChild { rekey_of: Some(x), .. },
                                ..
                            }) if *x == o_in
                        );
                        if ours {
                            sa.child_collisions.insert(o_in, ni.clone().min(nr.clone()));
                        }
                    }
                }
                sa.child_since.insert(c.spi_i, now);
                sa.children.push(c);
            }
            Err(n) => {
                self.respond(sa, hdr.exchange_type, hdr.message_id, &err(n), rng);
            }
        }
    }

    /// Drops every SA (in the table) authenticated as `id`, announcing each.
    fn forget_peer(&mut self, id: &Identification) {
        let gone: Vec<[u8; 8]> = self
            .sas
            .iter()
            .filter(|(_, s)| s.peer_id.as_ref() == Some(id))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(old) = self.sas.remove(&k) {
                if old.state == State::Rekeyed {
                    self.events.push_back(Event::IkeSaDeleted {
                        spi_i: old.spi_i,
                        spi_r: old.spi_r,
                        peer: old.peer,
                        reason: DeleteReason::Rekeyed,
                    });
                } else {
                    self.sa_gone(&old, DeleteReason::Peer);
                }
            }
        }
    }

    /// Completes a collided rekey in favour of the SA the peer created.
    fn adopt_peer_rekey(&mut self, old: &mut IkeSa, peer_new: [u8; 8]) {
        if let Some(n) = self.sas.remove(&peer_new) {
            self.finish_ike_rekey(old, n);
        }
    }

    fn finish_ike_rekey(&mut self, old: &mut IkeSa, mut new: IkeSa) {
        new.children = std::mem::take(&mut old.children);
        new.child_since = std::mem::take(&mut old.child_since);
        old.state = State::Rekeyed;
        old.rekeyed_at = Some(new.created);
        if let Some(info) = new.info() {
            self.events.push_back(Event::IkeSaRekeyed {
                old_spi_i: old.spi_i,
                old_spi_r: old.spi_r,
                new: info,
            });
        }
        self.sas.insert(new.local_spi(), new);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_response(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> bool {
        let Some(o) = &sa.outstanding else {
            self.stats.bad_message_id += 1;
            return true;
        };
        if o.msg_id != hdr.message_id {
            self.stats.bad_message_id += 1;
            return true;
        }
        if hdr.exchange_type == exchange::IKE_SA_INIT {
            return self.initiator_init_response(now, rng, sa, local, remote, msg, hdr);
        }
        let Some(payloads) = self.open(sa, msg, hdr) else {
            return true;
        };
        let o = sa.outstanding.take().expect("checked above");
        sa.last_heard = now;
        match o.kind {
            Pending::Auth => self.initiator_auth_response(now, sa, &payloads),
            Pending::Informational { delete } => {
                if delete || sa.state == State::Deleting {
                    let reason = if sa.state == State::Rekeyed {
                        DeleteReason::Rekeyed
                    } else {
                        DeleteReason::Local
                    };
                    if sa.state == State::Rekeyed {
                        self.events.push_back(Event::IkeSaDeleted {
                            spi_i: sa.spi_i,
                            spi_r: sa.spi_r,
                            peer: sa.peer,
                            reason,
                        });
                    } else {
                        self.sa_gone(sa, reason);
                    }
                    return false;
                }
                self.events.push_back(Event::PeerAlive {
                    spi_i: sa.spi_i,
                    spi_r: sa.spi_r,
                });
                true
            }
            Pending::RekeyIke { ke, ni, new_spi_i } => {
                let mut nr = None;
                let mut ker = None;
                let mut spi_r = None;
                let mut suite = None;
                for p in &payloads {
                    match p {
                        Payload::Nonce(n) => nr = Some(n.clone()),
                        Payload::Ke { data, .. } => ker = Some(data.clone()),
                        Payload::Sa(props) => {
                            if let Some(p) = props.first() {
                                if p.spi.len() == 8 {
                                    let mut s = [0u8; 8];
                                    s.copy_from_slice(&p.spi);
                                    spi_r = Some(s);
                                }
                                suite = self
                                    .config
                                    .ike_suites
                                    .iter()
                                    .find(|s| s.offered_in(p))
                                    .copied();
                            }
                        }
                        _ => {}
                    }
                }
                let new = match (nr, ker, spi_r, suite) {
                    (Some(nr), Some(ker), Some(spi_r), Some(suite)) => {
                        let old_sk_d = sa.keys.as_ref().map(|k| k.sk_d.clone()).unwrap_or_default();
                        ke.shared_secret(&ker).ok().and_then(|g_ir| {
                            rekeyed_sa(
                                sa, suite, &old_sk_d, &g_ir, &ni, &nr, new_spi_i, spi_r, true, now,
                            )
                        })
                    }
                    // Refused (error notify) or malformed: keep the old SA.
                    _ => None,
                };
                let collision = sa.collision.take();
                let Some(mut new) = new else {
                    if let Some((peer_new, _)) = collision {
                        // Ours failed: the peer's rekey stands; it deletes the old SA.
                        self.adopt_peer_rekey(sa, peer_new);
                    }
                    return true;
                };
                if let Some((peer_new, peer_lowest)) = collision {
                    let our_lowest = ni.clone().min(new.nr.clone());
                    if our_lowest < peer_lowest {
                        // Ours is redundant: we close it; the peer's stands and
                        // the peer deletes the old SA (RFC 7296 §2.8.2).
                        new.silent = true;
                        self.start_delete(&mut new, now, rng);
                        self.sas.insert(new.local_spi(), new);
                        self.adopt_peer_rekey(sa, peer_new);
                        return true;
                    }
                    // Theirs is redundant: the peer closes it, silently for us.
                    if let Some(p) = self.sas.get_mut(&peer_new) {
                        p.silent = true;
                    }
                }
                self.finish_ike_rekey(sa, new);
                // The rekeying side (whose SA survived) deletes the old SA.
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
                true
            }
            Pending::CreateChild {
                rekey_of,
                ni,
                spi,
                params,
                ke,
            } => {
                let mut nr = None;
                let mut props = None;
                let mut tsi = None;
                let mut tsr = None;
                let mut ker = None;
                for p in &payloads {
                    match p {
                        Payload::Ke { group, data } => ker = Some((*group, data.clone())),
                        Payload::Nonce(n) => nr = Some(n.clone()),
                        Payload::Sa(s) => props = Some(s.clone()),
                        Payload::TsI(t) => tsi = Some(t.clone()),
                        Payload::TsR(t) => tsr = Some(t.clone()),
                        _ => {}
                    }
                }
                let (Some(nr), Some(props)) = (nr, props) else {
                    // Refused: an automatic rekey tries again later.
                    if let (Some(old_in), Some(l)) = (rekey_of, self.config.child_rekey_after) {
                        let j = sa.local_spi();
                        if let Some(c) = sa.children.iter().find(|c| c.inbound().spi == old_in) {
                            sa.child_since.insert(c.spi_i, retry_base(now, l, &j));
                        }
                    }
                    return true;
                };
                // With PFS the answer must carry a KE in our group.
                let g_ir = match (&ke, ker) {
                    (None, _) => None,
                    (Some(k), Some((g, data))) if g == k.group.id() => {
                        match k.shared_secret(&data) {
                            Ok(s) => Some(s),
                            Err(_) => return true,
                        }
                    }
                    (Some(_), _) => return true,
                };
                let Some(c) = self.initiator_child(
                    sa,
                    &props,
                    spi,
                    &params,
                    tsi,
                    tsr,
                    g_ir.as_deref().map(|g| &g[..]),
                    &ni,
                    &nr,
                ) else {
                    return true;
                };
                self.events.push_back(Event::ChildSaInstalled {
                    ike_spi_i: sa.spi_i,
                    ike_spi_r: sa.spi_r,
                    child: c.clone(),
                });
                let our_new_in = c.inbound().spi;
                let our_lowest = ni.clone().min(nr.clone());
                sa.child_since.insert(c.spi_i, now);
                sa.children.push(c);
                if let Some(old_in) = rekey_of {
                    let mut spis_in = vec![old_in];
                    // Did the peer rekey the same CHILD_SA meanwhile (RFC 7296
                    // §2.8.1)? The new SA of the exchange with the lowest nonce
                    // is closed by its creator: ours goes with the old one.
                    if let Some(peer_lowest) = sa.child_collisions.remove(&old_in) {
                        if our_lowest < peer_lowest {
                            spis_in.push(our_new_in);
                        }
                    }
                    let spis = spis_in.iter().map(|s| s.to_be_bytes().to_vec()).collect();
                    self.start_request(
                        sa,
                        now,
                        rng,
                        exchange::INFORMATIONAL,
                        vec![Payload::Delete(Delete {
                            protocol: proto::ESP,
                            spis,
                        })],
                        Pending::DeleteChild { spis_in },
                    );
                }
                true
            }
            Pending::DeleteChild { spis_in } => {
                for spi_in in spis_in {
                    if let Some(pos) = sa.children.iter().position(|c| c.inbound().spi == spi_in) {
                        let c = sa.children.remove(pos);
                        sa.child_since.remove(&c.spi_i);
                        self.events.push_back(Event::ChildSaDeleted {
                            ike_spi_i: sa.spi_i,
                            ike_spi_r: sa.spi_r,
                            spi_i: c.spi_i,
                            spi_r: c.spi_r,
                        });
                    }
                }
                true
            }
            Pending::Init => true,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn initiator_child(
        &self,
        sa: &IkeSa,
        props: &[wire::Proposal],
        our_spi: u32,
        params: &ChildParams,
        tsi: Option<Vec<TrafficSelector>>,
        tsr: Option<Vec<TrafficSelector>>,
        g_ir: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Option<ChildSaKeys> {
        let p = props.first()?;
        let suite = self.config.esp_suites.iter().find(|s| s.offered_in(p))?;
        let spi_r = spi32(&p.spi)?;
        let keys = sa.keys.as_ref()?;
        child_keys(
            sa.suite.prf,
            &keys.sk_d,
            *suite,
            g_ir,
            ni,
            nr,
            our_spi,
            spi_r,
            true,
            tsi.unwrap_or_else(|| params.ts_i.clone()),
            tsr.unwrap_or_else(|| params.ts_r.clone()),
            params.mode,
            sa,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn initiator_init_response(
        &mut self,
        now: Instant,
        rng: &mut dyn Rng,
        sa: &mut IkeSa,
        local: SocketAddr,
        remote: SocketAddr,
        msg: &[u8],
        hdr: &HeaderRepr,
    ) -> bool {
        if sa.state != State::InitSent {
            return true;
        }
        let Ok(payloads) = wire::parse_chain(hdr.next_payload, &msg[HEADER_LEN..]) else {
            self.stats.malformed += 1;
            return true;
        };
        // Error and control notifies first.
        for p in &payloads {
            if let Payload::Notify(n) = p {
                match n.ntype {
                    notify::COOKIE if n.data.len() <= 64 && !n.data.is_empty() => {
                        if sa.cookie.as_deref() == Some(&n.data[..]) {
                            return true; // same cookie again: ignore, wait for retransmit
                        }
                        sa.cookie = Some(n.data.clone());
                        self.send_init(sa, now);
                        return true;
                    }
                    notify::INVALID_KE_PAYLOAD if n.data.len() == 2 => {
                        let g = u16::from_be_bytes([n.data[0], n.data[1]]);
                        let ok = self.config.ike_suites.iter().any(|s| s.dh.id() == g);
                        if !ok
                            || sa.invalid_ke_retries >= 2
                            || sa.ke.as_ref().map(|k| k.group.id()) == Some(g)
                        {
                            self.sa_gone(sa, DeleteReason::PeerError(notify::INVALID_KE_PAYLOAD));
                            return false;
                        }
                        sa.invalid_ke_retries += 1;
                        let group = DhGroup::from_id(g).expect("configured group");
                        sa.ke = Some(group.generate(rng));
                        self.send_init(sa, now);
                        return true;
                    }
                    t if notify::is_error(t) => {
                        let reason = if t == notify::NO_PROPOSAL_CHOSEN {
                            DeleteReason::NoProposalChosen
                        } else {
                            DeleteReason::PeerError(t)
                        };
                        self.sa_gone(sa, reason);
                        return false;
                    }
                    _ => {}
                }
            }
        }
        let mut chosen = None;
        let mut ker = None;
        let mut nr = None;
        let mut natd_src = Vec::new();
        let mut natd_dst = Vec::new();
        for p in &payloads {
            match p {
                Payload::Sa(props) if props.len() == 1 => {
                    chosen = self
                        .config
                        .ike_suites
                        .iter()
                        .find(|s| s.offered_in(&props[0]))
                        .copied();
                }
                Payload::Ke { group, data } => ker = Some((*group, data.clone())),
                Payload::Nonce(n) => nr = Some(n.clone()),
                Payload::Notify(n) => match n.ntype {
                    notify::NAT_DETECTION_SOURCE_IP => natd_src.push(n.data.clone()),
                    notify::NAT_DETECTION_DESTINATION_IP => natd_dst.push(n.data.clone()),
                    notify::CHILDLESS_IKEV2_SUPPORTED => sa.peer_childless = true,
                    _ => {}
                },
                _ => {}
            }
        }
        let (Some(suite), Some((group, ker)), Some(nr)) = (chosen, ker, nr) else {
            self.stats.malformed += 1;
            return true;
        };
        let Some(ke) = sa.ke.take() else { return true };
        if group != ke.group.id() || suite.dh != ke.group {
            sa.ke = Some(ke);
            self.stats.malformed += 1;
            return true;
        }
        let Ok(g_ir) = ke.shared_secret(&ker) else {
            sa.ke = Some(ke);
            self.stats.malformed += 1;
            return true;
        };
        sa.spi_r = hdr.spi_r;
        sa.suite = suite;
        sa.nr = nr;
        sa.init_resp = msg.to_vec();
        sa.nat = nat_detected(&sa.spi_i, &sa.spi_r, remote, local, &natd_src, &natd_dst);
        let Some(keys) = derive_ike_keys(suite, &sa.ni, &sa.nr, &g_ir, &sa.spi_i, &sa.spi_r, true)
        else {
            return false;
        };
        sa.keys = Some(keys);
        sa.outstanding = None;
        if sa.child_params.is_none() && !sa.peer_childless {
            // RFC 6023 §3: no childless IKE_AUTH to a peer that did not offer it.
            self.sa_gone(
                sa,
                DeleteReason::PeerError(notify::CHILDLESS_IKEV2_SUPPORTED),
            );
            return false;
        }
        if sa.nat {
            // NAT-T: float to port 4500 (RFC 7296 §2.23).
            sa.local.set_port(self.config.natt_port);
            sa.peer.set_port(self.config.natt_port);
        }
        // IKE_AUTH.
        let keys = sa.keys.as_ref().expect("just set");
        let prf = suite.prf;
        let local_id = self.config.local_id.clone();
        let mut signed = sa.init_req.clone();
        signed.extend_from_slice(&sa.nr);
        signed.extend_from_slice(&prf.prf(&keys.sk_pi, &local_id.body()));
        let other = sa
            .want_peer_id
            .clone()
            .unwrap_or_else(|| Identification::fqdn(""));
        let ctx = AuthContext {
            prf,
            signed_octets: &signed,
            signer: &local_id,
            other: &other,
        };
        let Ok((m, auth)) = self.auth.sign(&ctx) else {
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        };
        let mut p = vec![Payload::IdI(local_id)];
        // INITIAL_CONTACT when this is our only SA with the peer (RFC 7296 §2.4).
        if !self.sas.values().any(|s| s.peer.ip() == sa.peer.ip()) {
            p.push(Payload::Notify(Notify::status(
                notify::INITIAL_CONTACT,
                &[],
            )));
        }
        if let Some(r) = &sa.want_peer_id {
            p.push(Payload::IdR(r.clone()));
        }
        p.push(Payload::Auth {
            method: m,
            data: auth,
        });
        if let Some(cp) = sa.child_params.clone() {
            let spi = fresh_esp_spi(rng);
            sa.child_spi = spi;
            if cp.mode == ChildMode::Transport {
                p.push(Payload::Notify(Notify::status(
                    notify::USE_TRANSPORT_MODE,
                    &[],
                )));
            }
            p.push(Payload::Sa(self.esp_proposals(spi)));
            p.push(Payload::TsI(cp.ts_i.clone()));
            p.push(Payload::TsR(cp.ts_r.clone()));
        }
        sa.state = State::AuthSent;
        self.start_request(sa, now, rng, exchange::IKE_AUTH, p, Pending::Auth);
        true
    }

    fn initiator_auth_response(
        &mut self,
        now: Instant,
        sa: &mut IkeSa,
        payloads: &[Payload],
    ) -> bool {
        let mut idr = None;
        let mut auth = None;
        let mut props = None;
        let mut tsi = None;
        let mut tsr = None;
        for p in payloads {
            match p {
                Payload::IdR(i) => idr = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                Payload::Sa(s) => props = Some(s.clone()),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                Payload::Notify(n) if n.ntype == notify::AUTHENTICATION_FAILED => {
                    self.sa_gone(sa, DeleteReason::AuthenticationFailed);
                    return false;
                }
                _ => {}
            }
        }
        let (Some(idr), Some((method, data))) = (idr, auth) else {
            let err = payloads.iter().find_map(|p| match p {
                Payload::Notify(n) if notify::is_error(n.ntype) => Some(n.ntype),
                _ => None,
            });
            self.sa_gone(
                sa,
                DeleteReason::PeerError(err.unwrap_or(notify::INVALID_SYNTAX)),
            );
            return false;
        };
        if let Some(want) = &sa.want_peer_id {
            if want != &idr {
                self.sa_gone(sa, DeleteReason::AuthenticationFailed);
                return false;
            }
        }
        let keys = sa.keys.as_ref().expect("keys after IKE_SA_INIT");
        let prf = sa.suite.prf;
        let mut signed = sa.init_resp.clone();
        signed.extend_from_slice(&sa.ni);
        signed.extend_from_slice(&prf.prf(&keys.sk_pr, &idr.body()));
        let local_id = self.config.local_id.clone();
        let ctx = AuthContext {
            prf,
            signed_octets: &signed,
            signer: &idr,
            other: &local_id,
        };
        if self.auth.verify(&ctx, method, &data).is_err() {
            self.sa_gone(sa, DeleteReason::AuthenticationFailed);
            return false;
        }
        sa.peer_id = Some(idr);
        sa.state = State::Established;
        sa.established_at = now;
        if let (Some(props), Some(cp)) = (props, sa.child_params.clone()) {
            let (ni, nr) = (sa.ni.clone(), sa.nr.clone());
            if let Some(c) =
                self.initiator_child(sa, &props, sa.child_spi, &cp, tsi, tsr, None, &ni, &nr)
            {
                sa.child_since.insert(c.spi_i, now);
                sa.children.push(c);
            }
        }
        if let Some(info) = sa.info() {
            self.events.push_back(Event::IkeSaEstablished(info));
        }
        if let Some(c) = sa.children.first() {
            self.events.push_back(Event::ChildSaInstalled {
                ike_spi_i: sa.spi_i,
                ike_spi_r: sa.spi_r,
                child: c.clone(),
            });
        }
        true
    }
}

// ------------------------------------------------------------------ helpers

/// A lifetime shortened by 0–9 % according to our own SPI, so two peers
/// with the same lifetime rarely start the same rekey at once.
fn jittered(life: std::time::Duration, our_spi: &[u8; 8]) -> std::time::Duration {
    life - life * u32::from(our_spi[7] % 10) / 100
}

/// The start time that makes an automatic rekey fall due again a tenth of
/// the lifetime from `now`.
fn retry_base(now: Instant, life: std::time::Duration, our_spi: &[u8; 8]) -> Instant {
    let j = jittered(life, our_spi);
    now.checked_sub(j - j / 10).unwrap_or(now)
}

fn flags(initiator: bool, response: bool) -> u8 {
    (if initiator { FLAG_I } else { 0 }) | (if response { FLAG_R } else { 0 })
}

fn clear_message(mut h: HeaderRepr, payloads: &[Payload]) -> Vec<u8> {
    let mut body = Vec::new();
    h.next_payload = wire::emit_chain(payloads, &mut body);
    h.length = (HEADER_LEN + body.len()) as u32;
    let mut m = vec![0u8; HEADER_LEN];
    h.emit(&mut m);
    m.extend_from_slice(&body);
    m
}

fn wrap(local: SocketAddr, remote: SocketAddr, ike: Vec<u8>, natt_port: u16) -> Transmit {
    let data = if local.port() == natt_port {
        let mut d = Vec::with_capacity(ike.len() + 4);
        d.extend_from_slice(&NON_ESP_MARKER);
        d.extend_from_slice(&ike);
        d
    } else {
        ike
    };
    Transmit {
        local,
        remote,
        data,
    }
}

fn fresh_esp_spi(rng: &mut dyn Rng) -> u32 {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b);
        let s = u32::from_be_bytes(b);
        // 0..=255 are reserved (RFC 4303 §2.1).
        if s > 255 {
            return s;
        }
    }
}

/// NAT detection (RFC 7296 §2.23): true when a received hash does not match
/// the address it should (the peer may fake its source hash to force UDP
/// encapsulation, as strongSwan's libipsec does; that counts as NAT too).
fn nat_detected(
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    remote: SocketAddr,
    local: SocketAddr,
    src: &[Vec<u8>],
    dst: &[Vec<u8>],
) -> bool {
    if src.is_empty() || dst.is_empty() {
        return false;
    }
    let s = crypto::nat_hash(spi_i, spi_r, remote);
    let d = crypto::nat_hash(spi_i, spi_r, local);
    let remote_ok = src.iter().any(|h| h[..] == s[..]);
    let local_ok = dst.iter().any(|h| h[..] == d[..]);
    !(remote_ok && local_ok)
}

/// SKEYSEED and the seven keys of a new IKE SA (RFC 7296 §2.14).
fn derive_ike_keys(
    suite: IkeSuite,
    ni: &[u8],
    nr: &[u8],
    g_ir: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    we_initiate: bool,
) -> Option<SaKeys> {
    let skeyseed = kdf::skeyseed(suite.prf, ni, nr, g_ir);
    split_keys(suite, &skeyseed, ni, nr, spi_i, spi_r, we_initiate)
}

fn split_keys(
    suite: IkeSuite,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    we_initiate: bool,
) -> Option<SaKeys> {
    let lens = SkLengths {
        prf_key: suite.prf.key_len(),
        integ_key: suite.integ.map_or(0, |i| i.key_len()),
        encr_key: suite.encr.keymat_len(),
    };
    let k = kdf::ike_sa_keys(suite.prf, skeyseed, ni, nr, spi_i, spi_r, lens).ok()?;
    let i2r = SkKeys::new(suite.encr, suite.integ, &k.sk_ei, &k.sk_ai);
    let r2i = SkKeys::new(suite.encr, suite.integ, &k.sk_er, &k.sk_ar);
    let (out, inb) = if we_initiate { (i2r, r2i) } else { (r2i, i2r) };
    Some(SaKeys {
        sk_d: k.sk_d.clone(),
        sk_pi: k.sk_pi.clone(),
        sk_pr: k.sk_pr.clone(),
        out,
        inb,
    })
}

/// The SA that replaces `old` after an IKE SA rekey (RFC 7296 §2.18).
#[allow(clippy::too_many_arguments)]
fn rekeyed_sa(
    old: &IkeSa,
    suite: IkeSuite,
    old_sk_d: &[u8],
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    we_initiate: bool,
    now: Instant,
) -> Option<IkeSa> {
    let skeyseed = kdf::rekey_skeyseed(old.suite.prf, old_sk_d, g_ir, ni, nr);
    let keys = split_keys(suite, &skeyseed, ni, nr, &spi_i, &spi_r, we_initiate)?;
    Some(IkeSa {
        spi_i,
        spi_r,
        initiator: we_initiate,
        state: State::Established,
        local: old.local,
        peer: old.peer,
        suite,
        keys: Some(keys),
        ni: ni.to_vec(),
        nr: nr.to_vec(),
        ke: None,
        init_req: Vec::new(),
        init_resp: Vec::new(),
        cookie: None,
        invalid_ke_retries: 0,
        peer_id: old.peer_id.clone(),
        want_peer_id: old.want_peer_id.clone(),
        child_params: None,
        child_spi: 0,
        children: Vec::new(),
        peer_childless: old.peer_childless,
        next_msg_id: 0,
        outstanding: None,
        expected_in: 0,
        last_response: None,
        current_request: Vec::new(),
        nat: old.nat,
        created: now,
        last_heard: now,
        rekeyed_at: None,
        collision: None,
        silent: false,
        established_at: now,
        child_since: HashMap::new(),
        child_collisions: HashMap::new(),
    })
}

/// KEYMAT for a CHILD_SA (RFC 7296 §2.17) split into the four keys.
#[allow(clippy::too_many_arguments)]
fn child_keys(
    prf: Prf,
    sk_d: &[u8],
    suite: EspSuite,
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    spi_i: u32,
    spi_r: u32,
    we_initiated: bool,
    ts_i: Vec<TrafficSelector>,
    ts_r: Vec<TrafficSelector>,
    mode: ChildMode,
    sa: &IkeSa,
) -> Option<ChildSaKeys> {
    let km = kdf::child_sa_keymat(prf, sk_d, g_ir, ni, nr, suite.keymat_len()).ok()?;
    let e = suite.encr.keymat_len();
    let a = suite.integ.map_or(0, |i| i.key_len());
    let part = |from: usize, len: usize| Zeroizing::new(km[from..from + len].to_vec());
    Some(ChildSaKeys {
        spi_i,
        spi_r,
        encr: suite.encr,
        integ: suite.integ,
        esn: false,
        mode,
        sk_ei: part(0, e),
        sk_ai: part(e, a),
        sk_er: part(e + a, e),
        sk_ar: part(2 * e + a, a),
        we_initiated,
        ts_i,
        ts_r,
        udp_encap: sa.nat,
        local: sa.local,
        peer: sa.peer,
    })
}
