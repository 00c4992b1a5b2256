//! The sans-IO TWAMP-Control machines ([`Server`], [`Client`]) driven against
//! each other and against hand-built peers, in memory.
//!
//! * [`Pair`] connects a `Client` and a `Server`: it pumps each side's
//!   `pending_output` into the other's `receive` (optionally cut into chunks)
//!   and keeps the octets of both directions, which [`Transcript`] decrypts
//!   and HMAC-checks independently of either machine.
//! * [`Ctx`] is a `ServerContext` that records every call and can be told to
//!   refuse a key, a mode, an allocation, an installation or a start.
//! * [`RawClient`] is a hand-built client (library crypto primitives only) for
//!   what `Client` never sends: unknown commands, wrong counts, oversized N,
//!   flipped bits.
//!
//! Expected Accept values and layouts come from the RFCs as digested in
//! `shared/spec/` (twamp-control.md, modes.md, owamp-foundations.md,
//! rfc7717-ikev2-key.md), written here as literal numbers rather than taken
//! from the code under test.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};

use proptest::prelude::*;
use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientError, ClientEvent, ClientRandom};
use ricochet_protocol::control::{
    self, AcceptSessionRepr, Command, RequestTwSessionRepr, ServerGreetingRepr, ServerStartRepr,
    SetUpResponseRepr, Sid, StartAckRepr, StartNAckRepr, StartNSessionsRepr, StartSessionsRepr,
    StopNAckRepr, StopNSessionsRepr, StopSessionsRepr, TypeP,
};
use ricochet_protocol::crypto::{
    self, ikev2, test_keys::derive_test_keys, ControlRx, ControlTx, CryptoError, SessionKeys,
    SharedSecret,
};
use ricochet_protocol::error::WireError;
use ricochet_protocol::modes::{ModeError, Modes, SecurityMode, Selection};
use ricochet_protocol::server::{
    AcceptedSession, KeyId, Server, ServerConfig, ServerContext, ServerError, ServerEvent,
    ServerRandom, SessionGrant, SessionRequest, SetupRefusal,
};
use ricochet_protocol::time::{NtpTimestamp, TimeFormat};
use ricochet_protocol::twamp_test::{
    AuthSymmetricalMbz, ReflectOctets, SessionFormat, TestSecurity, UnauthSymmetricalMbz,
};

// ---------------------------------------------------------------------------
// Fixed inputs
// ---------------------------------------------------------------------------

const IDENTITY: &[u8] = b"alice";
const SECRET: &[u8] = b"alice's shared passphrase";
const COUNT: u32 = 1024;
const MAX_SESSIONS: u32 = 8;
/// RFC 7717 IKE SA: initiator and responder SPIs, SK_d.
const SPI_I: [u8; 8] = [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];
const SPI_R: [u8; 8] = [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28];
const SK_D: [u8; 32] = [0x5d; 32];
const START_TIME: NtpTimestamp = NtpTimestamp::from_bits(0xeeb3_81c8_8000_0000);
const CHALLENGE: [u8; 16] = [0xc1; 16];
const SALT: [u8; 16] = [0x5a; 16];
const SERVER_IV: [u8; 16] = [0x5e; 16];
const CLIENT_IV: [u8; 16] = [0xc7; 16];
/// Server octets the context hands out (RFC 6038; echoed only in Reflect
/// Octets mode).
const SERVER_OCTETS: [u8; 2] = [0x12, 0x34];
const FIRST_PORT: u16 = 40_000;

/// Literal TWAMP-Modes values (IANA registry, modes.md §1).
const ISC: Modes = Modes(16);
const REFLECT: Modes = Modes(32);
const SYMMETRICAL: Modes = Modes(64);
const IKEV2: Modes = Modes(128);
const DSCP_ECN: Modes = Modes(256);
const PTP: Modes = Modes(512);
const ALL_FEATURES: Modes = Modes(16 | 32 | 64 | 128 | 256 | 512);
const EVERYTHING: Modes = Modes(0x3ff);

fn mode_value(security: SecurityMode) -> u32 {
    match security {
        SecurityMode::Unauthenticated => 1,
        SecurityMode::Authenticated => 2,
        SecurityMode::Encrypted => 4,
        SecurityMode::Mixed => 8,
    }
}

/// RFC 4656 §4 / RFC 5618: which modes protect test packets, and how.
fn test_security_of(security: SecurityMode) -> TestSecurity {
    match security {
        SecurityMode::Authenticated => TestSecurity::Authenticated,
        SecurityMode::Encrypted => TestSecurity::Encrypted,
        SecurityMode::Unauthenticated | SecurityMode::Mixed => TestSecurity::Unauthenticated,
    }
}

fn protected(security: SecurityMode) -> bool {
    security != SecurityMode::Unauthenticated
}

fn client_keys() -> SessionKeys {
    SessionKeys::from_bytes(&core::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ 0xa5))
}

fn alice_key_id() -> KeyId {
    SetUpResponseRepr::key_id_from_name(IDENTITY).expect("short identity")
}

fn ike_key_id() -> KeyId {
    ikev2::rfc7717_key_id(&SPI_I, &SPI_R)
}

fn ike_secret() -> SharedSecret {
    ikev2::rfc7717_shared_secret(crypto::Prf::HmacSha256, &SK_D)
}

/// The server's base test format: the non-default resolutions of the
/// RFC 6038/7750 ambiguities must survive into every session.
fn base_format() -> SessionFormat {
    SessionFormat {
        unauth_symmetrical_mbz: UnauthSymmetricalMbz::Octets30,
        auth_symmetrical_mbz: AuthSymmetricalMbz::Octets56,
        ..SessionFormat::default()
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn v6(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(s.parse::<Ipv6Addr>().expect("address")), port)
}

// ---------------------------------------------------------------------------
// The recording server context
// ---------------------------------------------------------------------------

/// One call into the context, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    SharedSecret {
        key_id: Vec<u8>,
        ikev2: bool,
    },
    AdmitMode {
        identity: Option<Vec<u8>>,
        selection: Selection,
    },
    Allocate {
        sender: SocketAddr,
        reflector: SocketAddr,
    },
    Install(Sid),
    Start(Sid),
    Stop(Sid, NtpTimestamp),
}

/// What `install_session` was handed (AcceptedSession without Debug/Clone).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    sid: Sid,
    sender: SocketAddr,
    reflector: SocketAddr,
    security: SecurityMode,
    format: SessionFormat,
    dscp: u8,
    padding_length: u32,
    start_time: NtpTimestamp,
    timeout: NtpTimestamp,
    test_keys: Option<([u8; 16], [u8; 32])>,
}

struct Ctx {
    /// Key ID name → secret.
    users: Vec<(Vec<u8>, SharedSecret)>,
    /// RFC 7717: SPIi‖SPIr → prf(SK_d, "IPPM").
    ike_sas: Vec<([u8; 16], SharedSecret)>,
    refuse_mode: Option<Accept>,
    /// Answers for the next `allocate_session` calls (`None` = grant).
    refuse_allocation: Vec<Option<Accept>>,
    refuse_install: Vec<Option<Accept>>,
    refuse_start: Vec<(Sid, Accept)>,
    granted: u8,
    calls: Vec<Call>,
    requests: Vec<SessionRequest>,
    installed: Vec<Installed>,
}

impl Default for Ctx {
    fn default() -> Self {
        let mut ike = [0u8; 16];
        ike[..8].copy_from_slice(&SPI_I);
        ike[8..].copy_from_slice(&SPI_R);
        Ctx {
            users: vec![(IDENTITY.to_vec(), SharedSecret::from_slice(SECRET))],
            ike_sas: vec![(ike, ike_secret())],
            refuse_mode: None,
            refuse_allocation: vec![],
            refuse_install: vec![],
            refuse_start: vec![],
            granted: 0,
            calls: vec![],
            requests: vec![],
            installed: vec![],
        }
    }
}

/// The SID the context grants its `n`th session (RFC 4656 §3.5 layout).
fn granted_sid(reflector: IpAddr, n: u8) -> Sid {
    Sid::compose(
        reflector,
        NtpTimestamp::from_bits(0xeeb3_0000_0000_0000 | u64::from(n) << 8),
        [0xa5, 0x5a, 0x3c, n],
    )
}

fn name_of(key_id: &KeyId) -> Vec<u8> {
    let end = key_id.iter().position(|&b| b == 0).unwrap_or(key_id.len());
    key_id[..end].to_vec()
}

impl Ctx {
    fn started(&self) -> Vec<Sid> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Start(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn stopped(&self) -> Vec<(Sid, NtpTimestamp)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Stop(s, t) => Some((*s, *t)),
                _ => None,
            })
            .collect()
    }

    fn allocations(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c, Call::Allocate { .. }))
            .count()
    }
}

impl ServerContext for Ctx {
    fn shared_secret(
        &mut self,
        key_id: &KeyId,
        selection: &Selection,
    ) -> Result<SharedSecret, Accept> {
        let ikev2 = selection.has(IKEV2);
        self.calls.push(Call::SharedSecret {
            key_id: key_id.to_vec(),
            ikev2,
        });
        if ikev2 {
            // RFC 7717 §5.3: the server reads only SPIi‖SPIr.
            self.ike_sas
                .iter()
                .find(|(spis, _)| spis[..] == key_id[..16])
                .map(|(_, s)| s.clone())
                .ok_or(Accept::Ikev2SaNotFound)
        } else {
            let name = name_of(key_id);
            self.users
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.clone())
                .ok_or(Accept::Failure)
        }
    }

    fn admit_mode(&mut self, identity: Option<&[u8]>, selection: &Selection) -> Result<(), Accept> {
        self.calls.push(Call::AdmitMode {
            identity: identity.map(<[u8]>::to_vec),
            selection: *selection,
        });
        self.refuse_mode.map_or(Ok(()), Err)
    }

    fn allocate_session(&mut self, request: &SessionRequest) -> Result<SessionGrant, Accept> {
        self.calls.push(Call::Allocate {
            sender: request.sender,
            reflector: request.reflector,
        });
        self.requests.push(request.clone());
        if !self.refuse_allocation.is_empty() {
            if let Some(a) = self.refuse_allocation.remove(0) {
                return Err(a);
            }
        }
        self.granted = self.granted.wrapping_add(1);
        let n = self.granted;
        Ok(SessionGrant {
            port: FIRST_PORT + u16::from(n),
            sid: granted_sid(request.reflector.ip(), n),
            server_octets: SERVER_OCTETS,
        })
    }

    fn install_session(&mut self, s: AcceptedSession) -> Result<(), Accept> {
        self.calls.push(Call::Install(s.sid));
        self.installed.push(Installed {
            sid: s.sid,
            sender: s.sender,
            reflector: s.reflector,
            security: s.security,
            format: s.format,
            dscp: s.dscp,
            padding_length: s.padding_length,
            start_time: s.start_time,
            timeout: s.timeout,
            test_keys: s.test_keys.as_ref().map(|k| (k.aes, k.hmac)),
        });
        if !self.refuse_install.is_empty() {
            if let Some(a) = self.refuse_install.remove(0) {
                self.installed.pop();
                return Err(a);
            }
        }
        Ok(())
    }

    fn start_session(&mut self, sid: Sid) -> Accept {
        if let Some((_, a)) = self.refuse_start.iter().find(|(s, _)| *s == sid) {
            return *a;
        }
        self.calls.push(Call::Start(sid));
        Accept::Ok
    }

    fn stop_session(&mut self, sid: Sid, timeout: NtpTimestamp) {
        self.calls.push(Call::Stop(sid, timeout));
    }
}

// ---------------------------------------------------------------------------
// Connection set-up
// ---------------------------------------------------------------------------

/// One connection's parameters.
#[derive(Clone, Debug)]
struct Spec {
    /// Modes the server offers.
    offered: Modes,
    /// The only security mode the client allows.
    security: SecurityMode,
    /// Feature bits the client wants.
    wanted: Modes,
    /// The client's Key ID and secret (`None`: unauthenticated only).
    key: Option<(KeyId, Vec<u8>)>,
    client: SocketAddr,
    server: SocketAddr,
    max_sessions: u32,
    count: u32,
    max_count: u32,
}

impl Spec {
    fn new(security: SecurityMode, wanted: Modes) -> Spec {
        let key = if wanted.contains(IKEV2) && protected(security) {
            Some((ike_key_id(), ike_secret().expose().to_vec()))
        } else {
            Some((alice_key_id(), SECRET.to_vec()))
        };
        Spec {
            offered: EVERYTHING,
            security,
            wanted,
            key,
            client: v4([192, 0, 2, 1], 50_000),
            server: v4([192, 0, 2, 2], 862),
            max_sessions: MAX_SESSIONS,
            count: COUNT,
            max_count: 32_768,
        }
    }

    /// The selection both sides must agree on.
    fn selection(&self) -> Selection {
        let mut features = self.wanted & self.offered;
        if !protected(self.security) {
            features = Modes(features.0 & !IKEV2.0);
        }
        Selection {
            security: self.security,
            features,
        }
    }

    fn server(&self) -> Server {
        let config = ServerConfig {
            modes: self.offered,
            count: self.count,
            start_time: START_TIME,
            max_sessions: self.max_sessions,
            greeting_unused: [0; 12],
            test_format: base_format(),
        };
        let random = ServerRandom {
            challenge: CHALLENGE,
            salt: SALT,
            server_iv: SERVER_IV,
        };
        Server::new(config, random, self.client, self.server)
    }

    fn client(&self) -> Client {
        let config = ClientConfig {
            allowed: self.security.bit(),
            wanted: self.wanted,
            key_id: self.key.as_ref().map(|k| k.0),
            secret: self.key.as_ref().map(|k| SharedSecret::from_slice(&k.1)),
            max_count: self.max_count,
            max_sessions: self.max_sessions,
        };
        Client::new(
            config,
            ClientRandom {
                session_keys: client_keys(),
                client_iv: CLIENT_IV,
            },
        )
    }
}

/// Chunk sizes for delivering octets (cycled); `None` delivers each flight whole.
type Chunker = Box<dyn FnMut() -> usize>;

fn cycling(sizes: Vec<usize>) -> Chunker {
    let mut i = 0;
    Box::new(move || {
        let s = sizes[i % sizes.len()].max(1);
        i += 1;
        s
    })
}

fn split<'a>(data: &'a [u8], chunker: &mut Option<Chunker>) -> Vec<&'a [u8]> {
    match chunker {
        None => vec![data],
        Some(next) => {
            let mut out = vec![];
            let mut rest = data;
            while !rest.is_empty() {
                let n = next().min(rest.len());
                out.push(&rest[..n]);
                rest = &rest[n..];
            }
            out
        }
    }
}

/// A client and a server connected in memory.
struct Pair {
    spec: Spec,
    server: Server,
    client: Client,
    ctx: Ctx,
    /// Every octet each side sent, in order.
    s2c: Vec<u8>,
    c2s: Vec<u8>,
    /// Events not yet taken by the test.
    server_events: Vec<ServerEvent>,
    client_events: Vec<ClientEvent>,
    /// Every event, in order.
    server_log: Vec<ServerEvent>,
    client_log: Vec<ClientEvent>,
    server_error: Option<ServerError>,
    client_error: Option<ClientError>,
    chunker: Option<Chunker>,
}

impl Pair {
    fn new(spec: Spec, ctx: Ctx) -> Pair {
        Pair {
            server: spec.server(),
            client: spec.client(),
            spec,
            ctx,
            s2c: vec![],
            c2s: vec![],
            server_events: vec![],
            client_events: vec![],
            server_log: vec![],
            client_log: vec![],
            server_error: None,
            client_error: None,
            chunker: None,
        }
    }

    /// Connects, runs the set-up and checks that both sides are ready.
    fn established(spec: Spec) -> Pair {
        Self::established_with(spec, Ctx::default(), None)
    }

    fn established_with(spec: Spec, ctx: Ctx, chunker: Option<Chunker>) -> Pair {
        let mut p = Pair::new(spec, ctx);
        p.chunker = chunker;
        p.pump();
        assert!(
            p.client.is_ready(),
            "{:?}: client not ready: {:?} {:?}",
            p.spec,
            p.client_error,
            p.server_error
        );
        p.assert_healthy();
        // The set-up events stay in the logs.
        p.client_events.clear();
        p.server_events.clear();
        p
    }

    /// Moves octets both ways until neither side has anything to send. A
    /// side that has closed receives nothing more (its TCP socket is gone),
    /// but what it queued before closing is still delivered.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let out = self.server.pending_output().to_vec();
            if !out.is_empty() {
                moved = true;
                self.server.consume_output(out.len());
                self.s2c.extend_from_slice(&out);
                for chunk in split(&out, &mut self.chunker) {
                    if self.client.wants_close() {
                        break;
                    }
                    if let Err(e) = self.client.receive(chunk) {
                        assert!(self.client_error.is_none(), "second client error {e}");
                        assert!(self.client.wants_close(), "client error without close");
                        self.client_error = Some(e);
                    }
                }
            }
            let out = self.client.pending_output().to_vec();
            if !out.is_empty() {
                moved = true;
                self.client.consume_output(out.len());
                self.c2s.extend_from_slice(&out);
                for chunk in split(&out, &mut self.chunker) {
                    if self.server.wants_close() {
                        break;
                    }
                    if let Err(e) = self.server.receive(chunk, &mut self.ctx) {
                        assert!(self.server_error.is_none(), "second server error {e}");
                        assert!(self.server.wants_close(), "server error without close");
                        self.server_error = Some(e);
                    }
                }
            }
            while let Some(e) = self.server.poll_event() {
                self.server_log.push(e.clone());
                self.server_events.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                self.client_log.push(e.clone());
                self.client_events.push(e);
            }
            if !moved {
                return;
            }
        }
    }

    fn assert_healthy(&self) {
        assert_eq!(self.server_error, None, "{:?}", self.spec);
        assert_eq!(self.client_error, None, "{:?}", self.spec);
        assert!(!self.server.wants_close() && !self.client.wants_close());
    }

    fn client_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events)
    }

    fn server_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.server_events)
    }

    /// Sends a request and returns the client's answer event.
    fn request(&mut self, r: &RequestTwSessionRepr) -> ClientEvent {
        let tag = self.client.request_session(r).expect("client ready");
        self.pump();
        let events = self.client_events();
        assert_eq!(events.len(), 1, "{events:?}");
        match &events[0] {
            ClientEvent::SessionAccepted { tag: t, .. }
            | ClientEvent::SessionRefused { tag: t, .. } => {
                assert_eq!(*t, tag)
            }
            other => panic!("unexpected {other:?}"),
        }
        events[0].clone()
    }

    /// Sends a request that must be accepted; returns (SID, port).
    fn accepted(&mut self, r: &RequestTwSessionRepr) -> (Sid, u16) {
        match self.request(r) {
            ClientEvent::SessionAccepted { sid, port, .. } => (sid, port),
            other => panic!("{:?}: refused: {other:?}", self.spec),
        }
    }

    fn refused(&mut self, r: &RequestTwSessionRepr) -> Accept {
        match self.request(r) {
            ClientEvent::SessionRefused { accept, .. } => accept,
            other => panic!("accepted: {other:?}"),
        }
    }

    /// Both directions decrypted, every HMAC checked.
    fn transcript(&self) -> Transcript {
        Transcript::open(&self.spec, &self.c2s, &self.s2c)
    }
}

// ---------------------------------------------------------------------------
// Independent decoding of what went over the wire
// ---------------------------------------------------------------------------

/// Both directions of a connection as plaintext messages, decrypted and
/// HMAC-verified with the library's stream primitives (not the machines).
#[derive(Debug)]
struct Transcript {
    setup: SetUpResponseRepr,
    /// Client commands after the Set-Up-Response, framed by command number.
    commands: Vec<Vec<u8>>,
    server_start: Option<ServerStartRepr>,
    /// Server messages after the Server-Start, framed by [`Self::reply_lens`].
    replies: Vec<Vec<u8>>,
}

impl Transcript {
    fn open(spec: &Spec, c2s: &[u8], s2c: &[u8]) -> Transcript {
        Self::open_framed(spec, c2s, s2c, None)
    }

    /// `lens`: the server messages' lengths after the Server-Start; `None`
    /// derives them from the commands (one answer per Request and Start,
    /// N-Acks until every SID of a Start-N/Stop-N is answered).
    fn open_framed(spec: &Spec, c2s: &[u8], s2c: &[u8], lens: Option<&[usize]>) -> Transcript {
        assert!(s2c.len() >= 64 && c2s.len() >= 164);
        let greeting = ServerGreetingRepr::from_bytes(&s2c[..64]).unwrap();
        assert_eq!(greeting.challenge, CHALLENGE);
        assert_eq!(greeting.modes, spec.offered);
        let setup = SetUpResponseRepr::from_bytes(&c2s[..164]).unwrap();
        let keyed = protected(spec.security);
        let mut commands = vec![];
        let mut rest = c2s[164..].to_vec();
        let mut crx = keyed.then(|| ControlRx::new(&client_keys(), &setup.client_iv));
        while !rest.is_empty() {
            let mut first = [0u8; 16];
            first.copy_from_slice(&rest[..16]);
            if let Some(rx) = &mut crx {
                rx.decrypt(&mut first).unwrap();
            }
            let len = control::client_command(&first, u32::MAX)
                .unwrap()
                .len
                .expect("a framed command");
            let mut msg = rest.drain(..len).collect::<Vec<u8>>();
            msg[..16].copy_from_slice(&first);
            match &mut crx {
                Some(rx) => {
                    rx.decrypt(&mut msg[16..]).unwrap();
                    rx.verify(&msg, len - 16).expect("client HMAC");
                }
                None => assert_eq!(&msg[len - 16..], &[0; 16], "HMAC field zero when open"),
            }
            commands.push(msg);
        }
        let mut t = Transcript {
            setup,
            commands,
            server_start: None,
            replies: vec![],
        };
        if s2c.len() < 112 {
            assert_eq!(s2c.len(), 64, "a partial Server-Start");
            return t;
        }
        let mut start = s2c[64..112].to_vec();
        let mut srx = None;
        if keyed && start[15] == 0 {
            let mut rx = ControlRx::new(&client_keys(), &SERVER_IV);
            rx.open_without_hmac(&mut start[32..48]).unwrap();
            srx = Some(rx);
        }
        t.server_start = Some(ServerStartRepr::from_bytes(&start).unwrap());
        let mut replies = s2c[112..].to_vec();
        if let Some(rx) = &mut srx {
            rx.decrypt(&mut replies).unwrap();
        }
        let lens = match lens {
            Some(l) => l.to_vec(),
            None => Self::reply_lens(&t.commands, &replies),
        };
        assert_eq!(lens.iter().sum::<usize>(), replies.len(), "reply framing");
        let mut at = 0;
        for len in lens {
            let msg = replies[at..at + len].to_vec();
            match &mut srx {
                Some(rx) => rx.verify(&msg, len - 16).expect("server HMAC"),
                None => assert_eq!(&msg[len - 16..], &[0; 16], "HMAC field zero when open"),
            }
            t.replies.push(msg);
            at += len;
        }
        t
    }

    fn reply_lens(commands: &[Vec<u8>], replies: &[u8]) -> Vec<usize> {
        let mut lens = vec![];
        for c in commands {
            match c[0] {
                5 => lens.push(48),
                2 => lens.push(32),
                7 | 9 => {
                    let mut remaining = be32(&c[12..16]);
                    while remaining > 0 {
                        let m = &replies[sum(&lens)..];
                        assert_eq!(m[0], c[0] + 1, "N-Ack command number");
                        let n = be32(&m[12..16]);
                        assert!((1..=remaining).contains(&n), "N-Ack N {n}");
                        lens.push(32 + 16 * n as usize);
                        remaining -= n;
                    }
                }
                _ => {}
            }
        }
        lens
    }

    fn accept_session(&self, i: usize) -> AcceptSessionRepr {
        AcceptSessionRepr::from_bytes(&self.replies[i]).unwrap()
    }
}

fn sum(v: &[usize]) -> usize {
    v.iter().sum()
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 octets"))
}

// ---------------------------------------------------------------------------
// Hand-built client
// ---------------------------------------------------------------------------

/// The Set-Up-Response for `mode`, with a token sealed under `secret`
/// (memoised: PBKDF2 is the slow part of the bit-flip tests).
fn setup_for(mode: Modes, greeting: &ServerGreetingRepr, key_id: KeyId, secret: &[u8]) -> Vec<u8> {
    type Memo = Mutex<HashMap<(u32, Vec<u8>, Vec<u8>, Vec<u8>), Vec<u8>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let key = (
        mode.0,
        key_id.to_vec(),
        secret.to_vec(),
        greeting.to_bytes().to_vec(),
    );
    let memo = MEMO.get_or_init(Default::default);
    if let Some(b) = memo.lock().unwrap().get(&key) {
        return b.clone();
    }
    let b = make_setup(mode, greeting, key_id, secret);
    memo.lock().unwrap().insert(key, b.clone());
    b
}

fn make_setup(mode: Modes, greeting: &ServerGreetingRepr, key_id: KeyId, secret: &[u8]) -> Vec<u8> {
    let repr = if mode.security() == Modes(1) || mode.security().is_empty() {
        SetUpResponseRepr {
            mode,
            key_id: [0; 80],
            token: [0; 64],
            client_iv: [0; 16],
        }
    } else {
        let tk = crypto::token_key(
            &SharedSecret::from_slice(secret),
            &greeting.salt,
            greeting.count,
        )
        .unwrap();
        SetUpResponseRepr {
            mode,
            key_id,
            token: crypto::seal_token(&tk, &greeting.challenge, &client_keys()),
            client_iv: CLIENT_IV,
        }
    };
    repr.to_bytes().to_vec()
}

/// A Control-Client made by hand from the library's wire and crypto
/// primitives, for the messages `Client` never sends.
struct RawClient {
    server: Server,
    ctx: Ctx,
    tx: Option<ControlTx>,
    rx: Option<ControlRx>,
}

impl RawClient {
    fn connect(security: SecurityMode, features: Modes) -> RawClient {
        Self::connect_with(&Spec::new(security, features), Ctx::default())
    }

    fn connect_with(spec: &Spec, mut ctx: Ctx) -> RawClient {
        let mut server = spec.server();
        let greeting = ServerGreetingRepr::from_bytes(&server.pending_output()[..64]).unwrap();
        server.consume_output(64);
        let (key_id, secret) = spec.key.clone().expect("a key");
        let mode = spec.selection().modes();
        let setup = setup_for(mode, &greeting, key_id, &secret);
        server.receive(&setup, &mut ctx).expect("set-up accepted");
        let mut start = server.pending_output().to_vec();
        assert_eq!(start.len(), 48);
        server.consume_output(48);
        assert_eq!(start[15], 0, "Server-Start Accept");
        let (mut tx, mut rx) = (None, None);
        if protected(spec.security) {
            let mut r = ControlRx::new(&client_keys(), &SERVER_IV);
            r.open_without_hmac(&mut start[32..48]).unwrap();
            rx = Some(r);
            tx = Some(ControlTx::new(&client_keys(), &CLIENT_IV));
        }
        while server.poll_event().is_some() {}
        RawClient {
            server,
            ctx,
            tx,
            rx,
        }
    }

    /// Seals a plaintext command (HMAC in its last 16 octets) as the client
    /// stream would carry it.
    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut m = plain.to_vec();
        if let Some(tx) = &mut self.tx {
            let at = m.len() - 16;
            tx.seal(&mut m, at).unwrap();
        }
        m
    }

    fn send(&mut self, plain: &[u8]) -> Result<(), ServerError> {
        let m = self.seal(plain);
        self.server.receive(&m, &mut self.ctx)
    }

    /// Takes one server message of `len` octets, decrypted and verified.
    fn read(&mut self, len: usize) -> Vec<u8> {
        let out = self.server.pending_output();
        assert!(out.len() >= len, "want {len} octets, have {}", out.len());
        let mut m = out[..len].to_vec();
        self.server.consume_output(len);
        match &mut self.rx {
            Some(rx) => rx.open(&mut m, len - 16).expect("server HMAC"),
            None => assert_eq!(&m[len - 16..], &[0; 16]),
        }
        m
    }

    fn read_accept(&mut self) -> AcceptSessionRepr {
        AcceptSessionRepr::from_bytes(&self.read(48)).unwrap()
    }

    /// Reads the N-Acks answering `n` SIDs: (command, Accept, SIDs) each.
    fn read_n_acks(&mut self, mut n: usize) -> Vec<(u8, Accept, Vec<Sid>)> {
        let mut acks = vec![];
        while n > 0 {
            let ack = self.read_list();
            assert!(
                (1..=n).contains(&ack.2.len()),
                "N-Ack with {} SIDs",
                ack.2.len()
            );
            n -= ack.2.len();
            acks.push(ack);
        }
        acks
    }

    /// Reads one N-Ack (length from its decrypted first block).
    fn read_list(&mut self) -> (u8, Accept, Vec<Sid>) {
        let out = self.server.pending_output();
        assert!(out.len() >= 32);
        let mut first = [0u8; 16];
        first.copy_from_slice(&out[..16]);
        if let Some(rx) = &mut self.rx {
            rx.decrypt(&mut first).unwrap();
        }
        let len = 32 + 16 * be32(&first[12..16]) as usize;
        let mut m = self.server.pending_output()[..len].to_vec();
        self.server.consume_output(len);
        m[..16].copy_from_slice(&first);
        match &mut self.rx {
            Some(rx) => {
                rx.decrypt(&mut m[16..]).unwrap();
                rx.verify(&m, len - 16).expect("N-Ack HMAC");
            }
            None => assert_eq!(&m[len - 16..], &[0; 16]),
        }
        let sids = m[16..m.len() - 16]
            .chunks(16)
            .map(|c| Sid(c.try_into().unwrap()))
            .collect();
        (m[0], Accept::from(m[1]), sids)
    }
}

// ---------------------------------------------------------------------------
// Message builders (plaintext, HMAC field zero)
// ---------------------------------------------------------------------------

fn request_for(client: SocketAddr) -> RequestTwSessionRepr {
    let any: IpAddr = match client.ip() {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    RequestTwSessionRepr {
        ipvn: if any.is_ipv4() { 4 } else { 6 },
        conf_sender: 0,
        conf_receiver: 0,
        schedule_slots: 0,
        packets: 0,
        sender_port: 6000,
        receiver_port: 862,
        sender_address: any,
        receiver_address: any,
        sid: Sid::ZERO,
        padding_length: 64,
        start_time: NtpTimestamp::from_bits(0xeeb3_81d0_0000_0000),
        timeout: NtpTimestamp::from_interval_ns(2_000_000_000),
        type_p: TypeP(0),
        octets_to_reflect: [0; 2],
        padding_to_reflect: 0,
        hmac: [0; 16],
    }
}

fn request() -> RequestTwSessionRepr {
    request_for(v4([192, 0, 2, 1], 1))
}

/// Three requests that differ in every per-session field.
fn requests(spec: &Spec) -> Vec<RequestTwSessionRepr> {
    let base = request_for(spec.client);
    let explicit: IpAddr = match spec.client.ip() {
        IpAddr::V4(_) => Ipv4Addr::new(198, 51, 100, 10).into(),
        IpAddr::V6(_) => "2001:db8::10".parse::<Ipv6Addr>().unwrap().into(),
    };
    vec![
        RequestTwSessionRepr {
            octets_to_reflect: [0xab, 0xcd],
            padding_to_reflect: 16,
            ..base
        },
        RequestTwSessionRepr {
            sender_address: explicit,
            sender_port: 6001,
            padding_length: 200,
            type_p: TypeP(46 << 24),
            timeout: NtpTimestamp::from_interval_ns(5_000_000_000),
            ..base
        },
        RequestTwSessionRepr {
            sender_port: 6002,
            padding_length: 27,
            type_p: TypeP(10 << 24),
            start_time: NtpTimestamp::from_bits(0xeeb3_81e0_0000_0000),
            timeout: NtpTimestamp::from_interval_ns(1_000_000),
            ..base
        },
    ]
}

fn start_sessions_msg() -> Vec<u8> {
    StartSessionsRepr { hmac: [0; 16] }.to_bytes().to_vec()
}

fn stop_sessions_msg(n: u32) -> Vec<u8> {
    StopSessionsRepr {
        accept: Accept::Ok,
        number_of_sessions: n,
        hmac: [0; 16],
    }
    .to_bytes()
    .to_vec()
}

fn start_n_msg(sids: &[Sid]) -> Vec<u8> {
    StartNSessionsRepr {
        sids: sids.to_vec(),
        hmac: [0; 16],
    }
    .to_bytes()
}

fn stop_n_msg(sids: &[Sid]) -> Vec<u8> {
    StopNSessionsRepr {
        sids: sids.to_vec(),
        hmac: [0; 16],
    }
    .to_bytes()
}

/// An Accept-Session refusal as RFC 5357 §3.5 (erratum 1587) lays it out:
/// Accept, then Port 0 and an all-zero SID and MBZ.
fn assert_refusal_octets(msg: &[u8], accept: u8) {
    assert_eq!(msg.len(), 48);
    assert_eq!(msg[0], accept, "Accept");
    assert_eq!(
        &msg[1..32],
        &[0; 31],
        "MBZ, Port 0, SID 0, reflected/server octets 0"
    );
}

/// What the data plane must be handed for request `r` granted `sid`/`port`.
fn expected_session(spec: &Spec, r: &RequestTwSessionRepr, sid: Sid, port: u16) -> Installed {
    let sel = spec.selection();
    let pick = |field: IpAddr, conn: IpAddr| {
        if field.is_unspecified() {
            conn.to_canonical()
        } else {
            field.to_canonical()
        }
    };
    let mut format = base_format();
    format.security = test_security_of(spec.security);
    format.reflect_octets = sel.has(REFLECT).then_some(ReflectOctets {
        length: r.padding_to_reflect,
        server_octets: 0x1234,
    });
    format.symmetrical_size = sel.has(SYMMETRICAL);
    format.dscp_ecn_monitoring = sel.has(DSCP_ECN);
    format.timestamp_format = if sel.has(PTP) {
        TimeFormat::Ptp
    } else {
        TimeFormat::Ntp
    };
    let keyed = matches!(
        spec.security,
        SecurityMode::Authenticated | SecurityMode::Encrypted
    );
    Installed {
        sid,
        sender: SocketAddr::new(pick(r.sender_address, spec.client.ip()), r.sender_port),
        reflector: SocketAddr::new(pick(r.receiver_address, spec.server.ip()), port),
        security: spec.security,
        format,
        dscp: (r.type_p.0 >> 24) as u8,
        padding_length: r.padding_length,
        start_time: r.start_time,
        timeout: r.timeout,
        test_keys: keyed.then(|| {
            let k = derive_test_keys(&client_keys(), &sid.0);
            (k.aes, k.hmac)
        }),
    }
}

/// The identity the server reports for a set-up.
/// The connection's identity as the server reports it: the KeyID's name,
/// or `ikev2:SPIi_SPIr` under RFC 7717 (the KeyID is no name then).
fn identity_of(spec: &Spec) -> Option<Vec<u8>> {
    let key_id = &spec.key.as_ref()?.0;
    protected(spec.security).then(|| {
        if spec.selection().has(Modes::IKEV2_DERIVED) {
            format!(
                "ikev2:{}",
                ricochet_protocol::sa_records::SaId::from_key_id(key_id)
            )
            .into_bytes()
        } else {
            name_of(key_id)
        }
    })
}

// ---------------------------------------------------------------------------
// 1. Every mode, every feature: the life of a connection
// ---------------------------------------------------------------------------

/// Set-up, three sessions, start, stop, then one more session on the same
/// connection.
fn life(spec: Spec, chunker: Option<Chunker>) -> Pair {
    let mut p = Pair::established_with(spec.clone(), Ctx::default(), chunker);
    let reqs = requests(&spec);
    let sids: Vec<Sid> = reqs.iter().map(|r| p.accepted(r).0).collect();
    let n_ack = |command, sids: &[Sid]| ClientEvent::NAck {
        command,
        accept: Accept::Ok,
        sids: sids.to_vec(),
    };
    if spec.selection().has(ISC) {
        p.client.start_n(&sids).unwrap();
        p.pump();
        assert_eq!(p.client_events(), [n_ack(Command::StartNSessions, &sids)]);
        assert!(p.server.sessions_in_progress());
        p.client.stop_n(&sids).unwrap();
        p.pump();
        assert_eq!(p.client_events(), [n_ack(Command::StopNSessions, &sids)]);
    } else {
        p.client.start_sessions(3).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [ClientEvent::StartAck { accept: Accept::Ok }]
        );
        assert!(p.server.sessions_in_progress());
        p.client.stop_sessions(Accept::Ok).unwrap();
        p.pump();
        assert_eq!(p.client_events(), []);
    }
    assert!(!p.client.awaiting_reply());
    assert!(!p.server.sessions_in_progress());
    assert_eq!(p.server.sids().count(), 0);
    p.accepted(&reqs[0]);
    p.assert_healthy();
    p
}

const FEATURE_SETS: [Modes; 8] = [
    Modes::NONE,
    ISC,
    REFLECT,
    SYMMETRICAL,
    IKEV2,
    DSCP_ECN,
    PTP,
    ALL_FEATURES,
];

#[test]
fn every_mode_and_feature_sets_up_runs_several_sessions_and_stops() {
    for security in SecurityMode::ALL {
        for wanted in FEATURE_SETS {
            let spec = Spec::new(security, wanted);
            let sel = spec.selection();
            let p = life(spec.clone(), None);
            let what = format!("{security:?} + {wanted}");

            // The Set-Up-Response carries exactly one security bit plus the
            // wanted features (IKEv2 dropped with open, RFC 7717 §5).
            let mut bits = mode_value(security) | wanted.0;
            if !protected(security) {
                bits &= !128;
            }
            let t = p.transcript();
            assert_eq!(t.setup.mode, Modes(bits), "{what}");
            if protected(security) {
                assert_eq!(t.setup.client_iv, CLIENT_IV);
                assert_eq!(t.setup.key_id, spec.key.as_ref().unwrap().0);
            } else {
                // RFC 4656 §3.1: unused in open mode (perfSONAR sends zeros).
                assert_eq!((t.setup.key_id, t.setup.token), ([0; 80], [0; 64]));
            }
            let identity = identity_of(&spec);
            assert_eq!(
                p.client_log[..2],
                [
                    ClientEvent::SetupSent {
                        selection: sel,
                        offered: EVERYTHING
                    },
                    ClientEvent::Ready {
                        server_start_time: START_TIME
                    }
                ],
                "{what}"
            );

            let ss = t.server_start.unwrap();
            assert_eq!(ss.accept, Accept::Ok);
            assert_eq!(ss.start_time, START_TIME, "{what}: Start-Time");
            // 3 requests, start, stop, 1 request.
            let cmds: Vec<u8> = t.commands.iter().map(|c| c[0]).collect();
            let isc = sel.has(ISC);
            assert_eq!(
                cmds,
                if isc {
                    vec![5, 5, 5, 7, 9, 5]
                } else {
                    vec![5, 5, 5, 2, 3, 5]
                },
                "{what}"
            );

            // Every Accept-Session on the wire is what the client reported.
            let reqs = requests(&spec);
            let mut sids = vec![];
            let accepts = [0, 1, 2, if isc { 5 } else { 4 }];
            for (i, &at) in accepts.iter().enumerate() {
                let a = t.accept_session(at);
                let r = &reqs[i % 3];
                assert_eq!(a.accept, Accept::Ok);
                assert_eq!(a.port, FIRST_PORT + 1 + i as u16, "{what}");
                let reflect = sel.has(REFLECT);
                assert_eq!(
                    a.reflected_octets,
                    if reflect { r.octets_to_reflect } else { [0; 2] },
                    "{what}: RFC 6038 Reflected octets"
                );
                assert_eq!(
                    a.server_octets,
                    if reflect { SERVER_OCTETS } else { [0; 2] },
                    "{what}: RFC 6038 Server octets are MBZ without Reflect Octets"
                );
                assert!(p.client_log.contains(&ClientEvent::SessionAccepted {
                    tag: i as u32,
                    port: a.port,
                    sid: a.sid,
                    reflected_octets: a.reflected_octets,
                    server_octets: a.server_octets,
                }));
                sids.push(a.sid);
                // The data plane got the session as requested.
                assert_eq!(
                    p.ctx.installed[i],
                    expected_session(&spec, r, a.sid, a.port),
                    "{what}: session {i}"
                );
                // The client derives the same test keys (auth/enc only).
                assert_eq!(
                    p.client.test_keys(&a.sid).is_some(),
                    p.ctx.installed[i].test_keys.is_some(),
                    "{what}"
                );
                let req = &p.ctx.requests[i];
                assert_eq!(req.security, security);
                assert_eq!(req.features, sel.features);
                assert_eq!(req.identity, identity);
                assert_eq!(req.dscp, (r.type_p.0 >> 24) as u8);
            }
            let three = sids[..3].to_vec();
            if isc {
                let ack = StartNAckRepr::from_bytes(&t.replies[3]).unwrap();
                assert_eq!((ack.accept, &ack.sids), (Accept::Ok, &three));
                let ack = StopNAckRepr::from_bytes(&t.replies[4]).unwrap();
                assert_eq!((ack.accept, &ack.sids), (Accept::Ok, &three));
            } else {
                let ack = StartAckRepr::from_bytes(&t.replies[3]).unwrap();
                assert_eq!(ack.accept, Accept::Ok);
                let stop = StopSessionsRepr::from_bytes(&t.commands[4]).unwrap();
                assert_eq!(stop.number_of_sessions, 3, "{what}");
            }

            // The context was asked the right things, in order.
            let mut calls = vec![];
            if protected(security) {
                calls.push(Call::SharedSecret {
                    key_id: spec.key.as_ref().unwrap().0.to_vec(),
                    ikev2: sel.has(IKEV2),
                });
            }
            calls.push(Call::AdmitMode {
                identity: identity.clone(),
                selection: sel,
            });
            for (i, sid) in three.iter().enumerate() {
                calls.push(Call::Allocate {
                    sender: p.ctx.installed[i].sender,
                    reflector: SocketAddr::new(p.ctx.installed[i].reflector.ip(), 862),
                });
                calls.push(Call::Install(*sid));
            }
            calls.extend(three.iter().map(|s| Call::Start(*s)));
            calls.extend(
                three
                    .iter()
                    .zip(&reqs)
                    .map(|(s, r)| Call::Stop(*s, r.timeout)),
            );
            calls.push(Call::Allocate {
                sender: p.ctx.installed[3].sender,
                reflector: SocketAddr::new(p.ctx.installed[3].reflector.ip(), 862),
            });
            calls.push(Call::Install(sids[3]));
            assert_eq!(p.ctx.calls, calls, "{what}");

            // Server events.
            let mut events = vec![ServerEvent::Established {
                selection: sel,
                identity,
            }];
            for (i, s) in three.iter().enumerate() {
                events.push(ServerEvent::SessionAccepted {
                    sid: *s,
                    port: FIRST_PORT + 1 + i as u16,
                });
            }
            if isc {
                events.push(ServerEvent::NAck {
                    command: Command::StartNSessions,
                    accept: Accept::Ok,
                    sessions: 3,
                });
                events.push(ServerEvent::NAck {
                    command: Command::StopNSessions,
                    accept: Accept::Ok,
                    sessions: 3,
                });
            } else {
                events.push(ServerEvent::Started { sessions: 3 });
                events.push(ServerEvent::Stopped { sessions: 3 });
            }
            events.push(ServerEvent::SessionAccepted {
                sid: sids[3],
                port: FIRST_PORT + 4,
            });
            assert_eq!(p.server_log, events, "{what}");
        }
    }
}

#[test]
fn zero_addresses_resolve_to_the_control_connection() {
    let cases = [
        // (client, server, expected sender IP, expected reflector IP)
        (
            v4([192, 0, 2, 1], 50_000),
            v4([192, 0, 2, 2], 862),
            "192.0.2.1",
            "192.0.2.2",
        ),
        (
            v6("2001:db8::1", 50_000),
            v6("2001:db8::2", 862),
            "2001:db8::1",
            "2001:db8::2",
        ),
        // A dual-stack listener sees IPv4 peers as v4-mapped IPv6: the test
        // packets are plain IPv4.
        (
            v6("::ffff:192.0.2.1", 50_000),
            v6("::ffff:192.0.2.2", 862),
            "192.0.2.1",
            "192.0.2.2",
        ),
    ];
    for security in [SecurityMode::Unauthenticated, SecurityMode::Encrypted] {
        for (client, server, sender, reflector) in cases {
            let mut spec = Spec::new(security, Modes::NONE);
            spec.client = client;
            spec.server = server;
            let mut p = Pair::established(spec.clone());
            let mut r = request_for(client);
            if client.ip().to_canonical().is_ipv4() {
                r = request_for(v4([0; 4], 0));
            }
            let (sid, port) = p.accepted(&r);
            let s = &p.ctx.installed[0];
            assert_eq!(s.sid, sid);
            assert_eq!(s.sender, SocketAddr::new(sender.parse().unwrap(), 6000));
            assert_eq!(
                s.reflector,
                SocketAddr::new(reflector.parse().unwrap(), port)
            );
            let q = &p.ctx.requests[0];
            assert_eq!(q.sender, s.sender);
            assert_eq!(q.reflector, SocketAddr::new(s.reflector.ip(), 862));
            assert_eq!(q.padding_length, 64);
            assert_eq!(q.timeout, r.timeout);
            assert_eq!(q.start_time, r.start_time);
        }
    }
    // Explicit addresses are used as given (v4-mapped ones as IPv4).
    let mut spec = Spec::new(SecurityMode::Unauthenticated, Modes::NONE);
    spec.client = v6("2001:db8::1", 50_000);
    spec.server = v6("2001:db8::2", 862);
    let mut p = Pair::established(spec.clone());
    let r = RequestTwSessionRepr {
        sender_address: "2001:db8::99".parse::<Ipv6Addr>().unwrap().into(),
        receiver_address: "2001:db8::98".parse::<Ipv6Addr>().unwrap().into(),
        ..request_for(spec.client)
    };
    let (_, port) = p.accepted(&r);
    assert_eq!(p.ctx.installed[0].sender, v6("2001:db8::99", 6000));
    assert_eq!(p.ctx.installed[0].reflector, v6("2001:db8::98", port));
    let r = RequestTwSessionRepr {
        sender_address: "::ffff:198.51.100.7".parse::<Ipv6Addr>().unwrap().into(),
        ..request_for(spec.client)
    };
    let (_, port) = p.accepted(&r);
    assert_eq!(p.ctx.installed[1].sender, v4([198, 51, 100, 7], 6000));
    assert_eq!(p.ctx.installed[1].reflector, v6("2001:db8::2", port));
}

// ---------------------------------------------------------------------------
// 2. Individual Session Control (RFC 5938)
// ---------------------------------------------------------------------------

fn n_ack(command: Command, accept: Accept, sids: &[Sid]) -> ClientEvent {
    ClientEvent::NAck {
        command,
        accept,
        sids: sids.to_vec(),
    }
}

fn n_ack_event(command: Command, accept: Accept, sessions: usize) -> ServerEvent {
    ServerEvent::NAck {
        command,
        accept,
        sessions,
    }
}

#[test]
fn isc_starts_and_stops_subsets_and_groups_answers_by_accept() {
    use Command::{StartNSessions as Start, StopNSessions as Stop};
    for security in SecurityMode::ALL {
        let spec = Spec::new(security, ISC);
        let mut p = Pair::established(spec.clone());
        let reqs = requests(&spec);
        let s: Vec<Sid> = reqs.iter().map(|r| p.accepted(r).0).collect();
        let unknown = Sid([0xee; 16]);
        let mut expect_events = vec![];

        // A subset starts; the others stay idle.
        p.client.start_n(&[s[0], s[2]]).unwrap();
        p.pump();
        assert_eq!(p.client_events(), [n_ack(Start, Accept::Ok, &[s[0], s[2]])]);
        assert_eq!(p.ctx.started(), [s[0], s[2]]);
        assert!(p.server.sessions_in_progress());
        expect_events.push(n_ack_event(Start, Accept::Ok, 2));

        // A request after Start-N (a diagnostic session during a test).
        let (s3, _) = p.accepted(&reqs[1]);

        // An unknown SID is answered in its own N-Ack, with Accept ≠ 0; the
        // group order follows the first SID of each Accept value.
        p.client.start_n(&[unknown, s[1], s3]).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [
                n_ack(Start, Accept::Failure, &[unknown]),
                n_ack(Start, Accept::Ok, &[s[1], s3]),
            ]
        );
        assert!(!p.client.awaiting_reply());
        expect_events.push(n_ack_event(Start, Accept::Failure, 1));
        expect_events.push(n_ack_event(Start, Accept::Ok, 2));

        // Starting a started session again is answered 0 without a second
        // start in the data plane.
        p.client.start_n(&[s[0]]).unwrap();
        p.pump();
        assert_eq!(p.client_events(), [n_ack(Start, Accept::Ok, &[s[0]])]);
        assert_eq!(p.ctx.started(), [s[0], s[2], s[1], s3]);
        expect_events.push(n_ack_event(Start, Accept::Ok, 1));

        // Stop a subset plus an unknown SID.
        p.client.stop_n(&[s[0], unknown]).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [
                n_ack(Stop, Accept::Ok, &[s[0]]),
                n_ack(Stop, Accept::Failure, &[unknown]),
            ]
        );
        assert_eq!(p.ctx.stopped(), [(s[0], reqs[0].timeout)]);
        expect_events.push(n_ack_event(Stop, Accept::Ok, 1));
        expect_events.push(n_ack_event(Stop, Accept::Failure, 1));

        // A stopped session is gone.
        p.client.stop_n(&[s[0]]).unwrap();
        p.pump();
        assert_eq!(p.client_events(), [n_ack(Stop, Accept::Failure, &[s[0]])]);
        expect_events.push(n_ack_event(Stop, Accept::Failure, 1));
        assert!(p.server.sessions_in_progress());

        p.client.stop_n(&[s[1], s[2], s3]).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [n_ack(Stop, Accept::Ok, &[s[1], s[2], s3])]
        );
        expect_events.push(n_ack_event(Stop, Accept::Ok, 3));
        assert!(!p.server.sessions_in_progress());
        assert_eq!(p.server.sids().count(), 0);
        assert_eq!(
            p.ctx.stopped(),
            [
                (s[0], reqs[0].timeout),
                (s[1], reqs[1].timeout),
                (s[2], reqs[2].timeout),
                (s3, reqs[1].timeout),
            ]
        );
        p.assert_healthy();

        let events: Vec<ServerEvent> = p
            .server_log
            .iter()
            .filter(|e| matches!(e, ServerEvent::NAck { .. }))
            .cloned()
            .collect();
        assert_eq!(events, expect_events, "{security:?}");
        // Every N-Ack is its own message on the wire, HMAC and all.
        let t = p.transcript();
        let acks = t.replies.iter().filter(|m| m[0] == 8 || m[0] == 10).count();
        assert_eq!(acks, expect_events.len());
    }
}

#[test]
fn isc_groups_a_start_the_data_plane_refuses() {
    let spec = Spec::new(SecurityMode::Authenticated, ISC);
    let mut p = Pair::established(spec.clone());
    let reqs = requests(&spec);
    let s: Vec<Sid> = reqs.iter().map(|r| p.accepted(r).0).collect();
    p.ctx.refuse_start = vec![(s[1], Accept::TemporaryResourceLimitation)];
    p.client.start_n(&s).unwrap();
    p.pump();
    assert_eq!(
        p.client_events(),
        [
            n_ack(Command::StartNSessions, Accept::Ok, &[s[0], s[2]]),
            n_ack(
                Command::StartNSessions,
                Accept::TemporaryResourceLimitation,
                &[s[1]]
            ),
        ]
    );
    assert_eq!(p.ctx.started(), [s[0], s[2]]);
    // Once the data plane has room, the refused session starts.
    p.ctx.refuse_start.clear();
    p.client.start_n(&[s[1]]).unwrap();
    p.pump();
    assert_eq!(
        p.client_events(),
        [n_ack(Command::StartNSessions, Accept::Ok, &[s[1]])]
    );
    assert_eq!(p.ctx.started(), [s[0], s[2], s[1]]);
    p.assert_healthy();
}

/// A command the state does not allow: answered with Accept-Session(3)
/// (RFC 5357 §3.5), then the connection closes. (`Client` refuses to send
/// these, see `client_only_sends_what_the_mode_and_state_allow`.)
#[test]
fn commands_out_of_place_get_accept_session_3_and_close() {
    #[derive(Clone, Copy, Debug)]
    enum Case {
        StartSessionsInIsc,
        StopSessionsInIsc,
        StartNOutsideIsc,
        StopNOutsideIsc,
        RequestWhileActive,
        StopSessionsBeforeStart,
        StartSessionsTwice,
    }
    use Case::*;
    let outside = "outside Individual Session Control mode";
    let isc_state = "in Individual Session Control mode";
    let active = "while sessions are active";
    let cases = [
        (StartSessionsInIsc, Command::StartSessions, isc_state),
        (StopSessionsInIsc, Command::StopSessions, isc_state),
        (StartNOutsideIsc, Command::StartNSessions, outside),
        (StopNOutsideIsc, Command::StopNSessions, outside),
        (RequestWhileActive, Command::RequestTwSession, active),
        (StopSessionsBeforeStart, Command::StopSessions, outside),
        (StartSessionsTwice, Command::StartSessions, active),
    ];
    for security in SecurityMode::ALL {
        for (case, command, state) in cases {
            let isc = matches!(case, StartSessionsInIsc | StopSessionsInIsc);
            let mut c = RawClient::connect(security, if isc { ISC } else { Modes::NONE });
            c.send(&request().to_bytes()).unwrap();
            let sid = c.read_accept().sid;
            let start = |c: &mut RawClient| {
                c.send(&start_sessions_msg()).unwrap();
                assert_eq!(
                    StartAckRepr::from_bytes(&c.read(32)).unwrap().accept,
                    Accept::Ok
                );
            };
            let msg = match case {
                StartSessionsInIsc => start_sessions_msg(),
                StopSessionsInIsc => {
                    c.send(&start_n_msg(&[sid])).unwrap();
                    assert_eq!(c.read_n_acks(1), [(8, Accept::Ok, vec![sid])]);
                    stop_sessions_msg(1)
                }
                StartNOutsideIsc => start_n_msg(&[sid]),
                StopNOutsideIsc => stop_n_msg(&[sid]),
                RequestWhileActive => {
                    start(&mut c);
                    request().to_bytes().to_vec()
                }
                StopSessionsBeforeStart => stop_sessions_msg(0),
                StartSessionsTwice => {
                    start(&mut c);
                    start_sessions_msg()
                }
            };
            let what = format!("{security:?} {case:?}");
            let calls_before = c.ctx.calls.len();
            assert_eq!(
                c.send(&msg),
                Err(ServerError::UnexpectedCommand { command, state }),
                "{what}"
            );
            assert_refusal_octets(&c.read(48), 3);
            assert!(c.server.pending_output().is_empty(), "{what}");
            assert!(c.server.wants_close(), "{what}");
            assert_eq!(c.ctx.calls.len(), calls_before, "{what}: nothing acted on");
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Refusals: what keeps and what closes the connection
// ---------------------------------------------------------------------------

/// A Server-Start refusing the set-up: Accept ≠ 0, Server-IV and Start-Time
/// zero, nothing encrypted (RFC 4656 §3.1).
fn refusing_server_start(accept: u8) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[15] = accept;
    b
}

#[test]
fn set_up_refusals_send_a_clear_server_start_and_close() {
    struct Case {
        name: &'static str,
        wanted: Modes,
        key: (KeyId, Vec<u8>),
        refuse_mode: Option<Accept>,
        accept: Accept,
        reason: SetupRefusal,
        /// Whether policy is consulted (only after the token verified).
        asks_policy: bool,
    }
    let alice = || alice_key_id();
    let cases = [
        Case {
            name: "wrong secret",
            wanted: Modes::NONE,
            key: (alice(), b"not alice's passphrase".to_vec()),
            refuse_mode: None,
            accept: Accept::Failure,
            reason: SetupRefusal::BadToken,
            asks_policy: false,
        },
        Case {
            // Policy would refuse too, but the client has not proven its
            // identity: it must not learn the policy's answer.
            name: "wrong secret, policy would refuse",
            wanted: Modes::NONE,
            key: (alice(), b"not alice's passphrase".to_vec()),
            refuse_mode: Some(Accept::NotSupported),
            accept: Accept::Failure,
            reason: SetupRefusal::BadToken,
            asks_policy: false,
        },
        Case {
            name: "unknown Key ID",
            wanted: Modes::NONE,
            key: (
                SetUpResponseRepr::key_id_from_name(b"mallory").unwrap(),
                SECRET.to_vec(),
            ),
            refuse_mode: None,
            accept: Accept::Failure,
            reason: SetupRefusal::UnknownKey,
            asks_policy: false,
        },
        Case {
            name: "RFC 7717: no such IKEv2 SA",
            wanted: IKEV2,
            key: (
                ikev2::rfc7717_key_id(&[9; 8], &[8; 8]),
                ike_secret().expose().to_vec(),
            ),
            refuse_mode: None,
            accept: Accept::Ikev2SaNotFound,
            reason: SetupRefusal::UnknownKey,
            asks_policy: false,
        },
        Case {
            name: "RFC 7717: SA known, client keyed otherwise",
            wanted: IKEV2,
            key: (ike_key_id(), b"a different prf output".to_vec()),
            refuse_mode: None,
            accept: Accept::Failure,
            reason: SetupRefusal::BadToken,
            asks_policy: false,
        },
        Case {
            name: "policy refuses the mode",
            wanted: REFLECT,
            key: (alice(), SECRET.to_vec()),
            refuse_mode: Some(Accept::NotSupported),
            accept: Accept::NotSupported,
            reason: SetupRefusal::Policy,
            asks_policy: true,
        },
    ];
    for security in [
        SecurityMode::Authenticated,
        SecurityMode::Encrypted,
        SecurityMode::Mixed,
    ] {
        for c in &cases {
            let what = format!("{security:?}: {}", c.name);
            let mut spec = Spec::new(security, c.wanted);
            spec.key = Some(c.key.clone());
            let ctx = Ctx {
                refuse_mode: c.refuse_mode,
                ..Ctx::default()
            };
            let mut p = Pair::new(spec.clone(), ctx);
            p.pump();
            assert_eq!(
                &p.s2c[64..],
                refusing_server_start(c.accept.into()),
                "{what}"
            );
            assert_eq!(p.server_error, Some(ServerError::SetupRefused(c.accept)));
            assert!(p.server.wants_close());
            assert_eq!(
                p.server_log,
                [ServerEvent::SetupRefused {
                    accept: c.accept,
                    reason: c.reason
                }],
                "{what}"
            );
            assert_eq!(
                p.client_log,
                [
                    ClientEvent::SetupSent {
                        selection: spec.selection(),
                        offered: EVERYTHING
                    },
                    ClientEvent::Refused { accept: c.accept }
                ],
                "{what}"
            );
            assert_eq!(p.client_error, Some(ClientError::Refused(c.accept)));
            assert!(p.client.wants_close());
            let mut calls = vec![Call::SharedSecret {
                key_id: c.key.0.to_vec(),
                ikev2: c.wanted.contains(IKEV2),
            }];
            if c.asks_policy {
                calls.push(Call::AdmitMode {
                    identity: Some(IDENTITY.to_vec()),
                    selection: spec.selection(),
                });
            }
            assert_eq!(p.ctx.calls, calls, "{what}");
        }
    }
    // Unauthenticated: policy is the only refusal.
    let spec = Spec::new(SecurityMode::Unauthenticated, Modes::NONE);
    let ctx = Ctx {
        refuse_mode: Some(Accept::PermanentResourceLimitation),
        ..Ctx::default()
    };
    let mut p = Pair::new(spec.clone(), ctx);
    p.pump();
    assert_eq!(&p.s2c[64..], refusing_server_start(4));
    assert_eq!(
        p.ctx.calls,
        [Call::AdmitMode {
            identity: None,
            selection: spec.selection()
        }]
    );
    assert_eq!(
        p.client_error,
        Some(ClientError::Refused(Accept::PermanentResourceLimitation))
    );
}

#[test]
fn modes_the_server_cannot_accept_get_server_start_accept_3() {
    let cases = [
        (
            Modes(0x0f),
            Modes(0x11),
            ModeError::NotOffered {
                chosen: Modes(0x11),
                unoffered: Modes(0x10),
            },
        ),
        (
            Modes(0x01),
            Modes(0x04),
            ModeError::NotOffered {
                chosen: Modes(0x04),
                unoffered: Modes(0x04),
            },
        ),
        (
            EVERYTHING,
            Modes(0x03),
            ModeError::SeveralSecurityModes {
                chosen: Modes(0x03),
            },
        ),
        (
            EVERYTHING,
            Modes(0x10),
            ModeError::NoSecurityMode {
                chosen: Modes(0x10),
            },
        ),
        (
            EVERYTHING,
            Modes(0x81),
            ModeError::Ikev2WithoutProtection {
                chosen: Modes(0x81),
            },
        ),
        (
            EVERYTHING,
            Modes(0x401),
            ModeError::NotOffered {
                chosen: Modes(0x401),
                unoffered: Modes(0x400),
            },
        ),
    ];
    for (offered, chosen, error) in cases {
        let mut spec = Spec::new(SecurityMode::Authenticated, Modes::NONE);
        spec.offered = offered;
        let mut server = spec.server();
        let mut ctx = Ctx::default();
        let greeting = ServerGreetingRepr::from_bytes(&server.pending_output()[..64]).unwrap();
        assert_eq!(greeting.modes, offered);
        server.consume_output(64);
        let setup = setup_for(chosen, &greeting, alice_key_id(), SECRET);
        assert_eq!(
            server.receive(&setup, &mut ctx),
            Err(ServerError::SetupRefused(Accept::NotSupported)),
            "{chosen}"
        );
        assert_eq!(
            server.pending_output(),
            refusing_server_start(3),
            "{chosen}"
        );
        assert!(server.wants_close());
        assert_eq!(
            std::iter::from_fn(|| server.poll_event()).collect::<Vec<_>>(),
            [ServerEvent::SetupRefused {
                accept: Accept::NotSupported,
                reason: SetupRefusal::Mode(error)
            }]
        );
        assert_eq!(ctx.calls, [], "{chosen}: no key lookup, no policy");
    }
    // Mode 0: the client quits; nothing is answered (RFC 4656 §3.1).
    let spec = Spec::new(SecurityMode::Unauthenticated, Modes::NONE);
    let mut server = spec.server();
    server.consume_output(64);
    let mut ctx = Ctx::default();
    assert_eq!(
        server.receive(&[0; 164], &mut ctx),
        Err(ServerError::ClientQuit)
    );
    assert!(server.wants_close() && server.pending_output().is_empty());
    assert_eq!(server.poll_event(), None);
    assert_eq!(server.receive(&[0; 16], &mut ctx), Err(ServerError::Closed));
}

#[test]
fn refused_sessions_answer_port_0_and_the_connection_continues() {
    /// (what, how to spoil a request, the field the refusal names)
    type Spoil = (&'static str, fn(&mut RequestTwSessionRepr), &'static str);
    let refusals: [Spoil; 9] = [
        ("Conf-Sender", |r| r.conf_sender = 1, "Conf-Sender"),
        ("Conf-Receiver", |r| r.conf_receiver = 1, "Conf-Receiver"),
        (
            "slots",
            |r| r.schedule_slots = 1,
            "Number of Schedule Slots",
        ),
        ("packets", |r| r.packets = 10, "Number of Packets"),
        ("IPVN 5", |r| r.ipvn = 5, "IPVN"),
        ("IPVN 0", |r| r.ipvn = 0, "IPVN"),
        (
            "Type-P in PHB-ID form",
            |r| r.type_p = TypeP(0x4000_0000 | 0x2e << 16),
            "Type-P Descriptor",
        ),
        (
            "Type-P with bits outside the DSCP",
            |r| r.type_p = TypeP(0x2e00_0001),
            "Type-P Descriptor",
        ),
        (
            "Type-P with the top bits set",
            |r| r.type_p = TypeP(0xc000_0000),
            "Type-P Descriptor",
        ),
    ];
    for security in SecurityMode::ALL {
        let spec = Spec::new(security, Modes::NONE);
        let ctx = Ctx {
            refuse_allocation: vec![Some(Accept::PermanentResourceLimitation)],
            refuse_install: vec![Some(Accept::TemporaryResourceLimitation)],
            ..Ctx::default()
        };
        let mut p = Pair::established_with(spec.clone(), ctx, None);
        let mut expected = vec![];
        // The context refuses the allocation, then the installation.
        assert_eq!(p.refused(&request()), Accept::PermanentResourceLimitation);
        expected.push((4, "admission"));
        assert_eq!(p.refused(&request()), Accept::TemporaryResourceLimitation);
        expected.push((5, "data plane"));
        assert_eq!(p.server.sids().count(), 0);
        // Malformed requests (RFC 5357 §3.5): Accept 3, the context is not asked.
        let allocations = p.ctx.allocations();
        for (name, mutate, field) in refusals {
            let mut r = request();
            mutate(&mut r);
            assert_eq!(p.refused(&r), Accept::NotSupported, "{security:?} {name}");
            expected.push((3, field));
        }
        assert_eq!(p.ctx.allocations(), allocations);
        // And the connection still works.
        let (sid, _) = p.accepted(&request());
        assert_eq!(p.server.sids().collect::<Vec<_>>(), [sid]);
        p.assert_healthy();

        let t = p.transcript();
        for (i, (accept, _)) in expected.iter().enumerate() {
            assert_refusal_octets(&t.replies[i], *accept);
        }
        let refused: Vec<(u8, &str)> = p
            .server_log
            .iter()
            .filter_map(|e| match e {
                ServerEvent::SessionRefused { accept, reason } => Some(((*accept).into(), *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(refused, expected, "{security:?}");
    }
}

#[test]
fn padding_to_reflect_must_fit_the_padding_in_reflect_octets_mode() {
    for security in SecurityMode::ALL {
        // RFC 6038 §4.2: Length of padding to reflect ≤ Padding Length.
        let spec = Spec::new(security, REFLECT);
        let mut p = Pair::established(spec.clone());
        let too_long = RequestTwSessionRepr {
            padding_length: 16,
            padding_to_reflect: 17,
            octets_to_reflect: [1, 2],
            ..request()
        };
        assert_eq!(p.refused(&too_long), Accept::NotSupported);
        assert_eq!(p.ctx.allocations(), 0);
        let fits = RequestTwSessionRepr {
            padding_to_reflect: 16,
            ..too_long
        };
        match p.request(&fits) {
            ClientEvent::SessionAccepted {
                reflected_octets,
                server_octets,
                ..
            } => {
                assert_eq!(reflected_octets, [1, 2]);
                assert_eq!(server_octets, SERVER_OCTETS);
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(
            p.ctx.installed[0].format.reflect_octets,
            Some(ReflectOctets {
                length: 16,
                server_octets: 0x1234
            })
        );
        p.assert_healthy();

        // Without the mode the fields are MBZ and ignored.
        let spec = Spec::new(security, Modes::NONE);
        let mut p = Pair::established(spec);
        match p.request(&too_long) {
            ClientEvent::SessionAccepted {
                reflected_octets,
                server_octets,
                ..
            } => assert_eq!((reflected_octets, server_octets), ([0; 2], [0; 2])),
            e => panic!("{e:?}"),
        }
        assert_eq!(p.ctx.installed[0].format.reflect_octets, None);
    }
}

#[test]
fn sessions_per_connection_are_limited() {
    for (security, wanted) in [
        (SecurityMode::Unauthenticated, Modes::NONE),
        (SecurityMode::Encrypted, ISC),
    ] {
        let mut spec = Spec::new(security, wanted);
        spec.max_sessions = 2;
        let mut p = Pair::established(spec.clone());
        let a = p.accepted(&request()).0;
        let b = p.accepted(&request()).0;
        assert_eq!(p.refused(&request()), Accept::TemporaryResourceLimitation);
        assert_eq!(p.ctx.allocations(), 2, "refused before asking the context");
        assert_eq!(
            p.server_events().last(),
            Some(&ServerEvent::SessionRefused {
                accept: Accept::TemporaryResourceLimitation,
                reason: "sessions per connection"
            })
        );
        // Ending sessions makes room again.
        if wanted.contains(ISC) {
            p.client.start_n(&[a, b]).unwrap();
            p.pump();
            p.client.stop_n(&[a]).unwrap();
            p.pump();
        } else {
            p.client.start_sessions(2).unwrap();
            p.pump();
            p.client.stop_sessions(Accept::Ok).unwrap();
            p.pump();
        }
        p.client_events();
        p.accepted(&request());
        p.assert_healthy();
    }
}

// ---------------------------------------------------------------------------
// 4. Integrity and framing
// ---------------------------------------------------------------------------

/// Flips one bit in every octet of `target` (sent after `prefix`; bit
/// `i % 8` of octet `i`) on a fresh connection each time: the server must
/// never act on the message, and must close with a typed error.
///
/// A flip after the first block leaves the command readable but breaks its
/// HMAC (RFC 4656 §3.4: close at once, `BadHmac`). A flip in the first
/// block garbles the whole decrypted block (CBC), so the server sees a
/// random command number: unknown (answered with Accept 3 and closed), an
/// oversized N (closed), or a longer command whose remaining octets it
/// waits for; once they come, the HMAC fails.
fn flip_every_octet(spec: &Spec, prefix: &[Vec<u8>], target: &[u8], acted: impl Fn(&Ctx) -> bool) {
    let mut template = RawClient::connect_with(spec, Ctx::default());
    let mut stream = vec![];
    for m in prefix {
        stream.extend(template.seal(m));
    }
    let at = stream.len();
    stream.extend(template.seal(target));
    let baseline_prefix = {
        let mut c = RawClient::connect_with(spec, Ctx::default());
        c.server.receive(&stream[..at], &mut c.ctx).unwrap();
        c.server.pending_output().len()
    };
    for octet in 0..target.len() {
        let mut c = RawClient::connect_with(spec, Ctx::default());
        let mut bytes = stream.clone();
        bytes[at + octet] ^= 0x80 >> (octet % 8);
        let what = format!(
            "{:?} octet {octet} of a {}-octet message",
            spec.security,
            target.len()
        );
        let err = match c.server.receive(&bytes, &mut c.ctx) {
            Err(e) => e,
            Ok(()) => {
                assert!(
                    octet < 16,
                    "{what}: waits after a flip past the first block"
                );
                assert!(c.server.mid_message(), "{what}");
                assert!(!acted(&c.ctx), "{what}: acted on a forged command");
                // The rest of the garbled command never verifies.
                c.server.receive(&[0; 512], &mut c.ctx).unwrap_err()
            }
        };
        if octet >= 16 {
            assert!(
                matches!(err, ServerError::Crypto(CryptoError::BadHmac { .. })),
                "{what}: {err:?}"
            );
            assert_eq!(c.server.pending_output().len(), baseline_prefix, "{what}");
        }
        assert!(!acted(&c.ctx), "{what}: acted on a forged command");
        assert!(c.server.wants_close(), "{what}");
        assert_eq!(
            c.server.receive(&[0; 16], &mut c.ctx),
            Err(ServerError::Closed)
        );
    }
}

#[test]
fn a_flipped_bit_in_a_protected_command_closes_the_connection() {
    let installed = |c: &Ctx| !c.installed.is_empty();
    let started = |c: &Ctx| !c.started().is_empty();
    let stopped = |c: &Ctx| !c.stopped().is_empty();
    for security in [
        SecurityMode::Authenticated,
        SecurityMode::Encrypted,
        SecurityMode::Mixed,
    ] {
        let spec = Spec::new(security, Modes::NONE);
        let req = request().to_bytes().to_vec();
        flip_every_octet(&spec, &[], &req, installed);
        flip_every_octet(
            &spec,
            std::slice::from_ref(&req),
            &start_sessions_msg(),
            started,
        );
        flip_every_octet(
            &spec,
            &[req.clone(), start_sessions_msg()],
            &stop_sessions_msg(1),
            stopped,
        );
        // ISC: the SID list of a Start-N is covered by its HMAC.
        let spec = Spec::new(security, ISC);
        let mut c = RawClient::connect_with(&spec, Ctx::default());
        c.send(&req).unwrap();
        let sid = c.read_accept().sid;
        flip_every_octet(
            &spec,
            std::slice::from_ref(&req),
            &start_n_msg(&[sid]),
            started,
        );
        flip_every_octet(
            &spec,
            &[req.clone(), start_n_msg(&[sid])],
            &stop_n_msg(&[sid]),
            stopped,
        );
    }
}

#[test]
fn unknown_commands_get_accept_session_3_then_close() {
    for security in SecurityMode::ALL {
        // 0, 1, 4 reserved/forbidden; 6 Experimentation and 11 (RFC 9533)
        // have no format here; 12–255 unassigned.
        for command in [0u8, 1, 4, 6, 11, 12, 0x80, 0xff] {
            let mut c = RawClient::connect(security, Modes::NONE);
            c.send(&request().to_bytes()).unwrap();
            assert_eq!(c.read_accept().accept, Accept::Ok);
            let mut m = vec![0u8; 32];
            m[0] = command;
            let sealed = c.seal(&m);
            // The first block is enough to decide.
            let err = c.server.receive(&sealed[..16], &mut c.ctx).unwrap_err();
            assert_eq!(
                err,
                ServerError::UnexpectedCommand {
                    command: Command::from(command),
                    state: "(unknown command)"
                },
                "{security:?} {command}"
            );
            // RFC 5357 §3.5: Accept-Session with Accept 3, HMAC and all.
            assert_refusal_octets(&c.read(48), 3);
            assert!(c.server.pending_output().is_empty());
            assert!(c.server.wants_close() && !c.server.mid_message());
            assert_eq!(
                c.server.receive(&sealed[16..], &mut c.ctx),
                Err(ServerError::Closed)
            );
        }
        // The server's own message numbers (8, 10) are not commands.
        for command in [8u8, 10] {
            let mut c = RawClient::connect(security, Modes::NONE);
            let mut m = StartNAckRepr {
                accept: Accept::Ok,
                sids: vec![Sid([1; 16])],
                hmac: [0; 16],
            }
            .to_bytes();
            m[0] = command;
            assert_eq!(
                c.send(&m),
                Err(ServerError::UnexpectedCommand {
                    command: Command::from(command),
                    state: "outside Individual Session Control mode"
                })
            );
            assert_refusal_octets(&c.read(48), 3);
        }
    }
}

#[test]
fn stop_sessions_must_count_the_sessions_in_progress() {
    for security in SecurityMode::ALL {
        for count in [0u32, 1, 3, u32::MAX] {
            let mut c = RawClient::connect(security, Modes::NONE);
            for _ in 0..2 {
                c.send(&request().to_bytes()).unwrap();
                assert_eq!(c.read_accept().accept, Accept::Ok);
            }
            c.send(&start_sessions_msg()).unwrap();
            assert_eq!(
                StartAckRepr::from_bytes(&c.read(32)).unwrap().accept,
                Accept::Ok
            );
            // RFC 5357 §3.8: the message is invalid; close, discard results.
            assert_eq!(
                c.send(&stop_sessions_msg(count)),
                Err(ServerError::StopCountMismatch {
                    got: count,
                    expected: 2
                })
            );
            assert!(c.server.wants_close());
            assert!(c.server.pending_output().is_empty(), "no answer");
            assert_eq!(c.ctx.stopped(), []);
            // The sessions stay listed so the caller can tear them down.
            assert_eq!(c.server.sids().count(), 2);
        }
    }
    // The same through the client: it counts what the caller says started.
    let spec = Spec::new(SecurityMode::Encrypted, Modes::NONE);
    let mut p = Pair::established(spec);
    for _ in 0..3 {
        p.accepted(&request());
    }
    p.client.start_sessions(2).unwrap();
    p.pump();
    p.client.stop_sessions(Accept::Ok).unwrap();
    p.pump();
    assert_eq!(
        p.server_error,
        Some(ServerError::StopCountMismatch {
            got: 2,
            expected: 3
        })
    );
}

#[test]
fn start_n_and_stop_n_are_bounded_before_reading_their_sids() {
    for security in SecurityMode::ALL {
        let spec = Spec::new(security, ISC);
        for (n, build) in [
            (MAX_SESSIONS + 1, start_n_msg as fn(&[Sid]) -> Vec<u8>),
            (MAX_SESSIONS + 1, stop_n_msg),
        ] {
            let mut c = RawClient::connect_with(&spec, Ctx::default());
            let sids = vec![Sid([3; 16]); n as usize];
            let sealed = c.seal(&build(&sids));
            let what = if sealed.len() > 16 && build(&sids)[0] == 7 {
                "Start-N-Sessions"
            } else {
                "Stop-N-Sessions"
            };
            // Decided on the first block: nothing more is buffered.
            assert_eq!(
                c.server.receive(&sealed[..16], &mut c.ctx),
                Err(ServerError::Wire(WireError::BadField {
                    what,
                    field: "Number of Sessions",
                    value: n.into()
                }))
            );
            assert!(!c.server.mid_message() && c.server.wants_close());
        }
        // N = 2^32 − 1 in a bare block.
        let mut c = RawClient::connect_with(&spec, Ctx::default());
        let mut block = vec![0u8; 32];
        block[0] = 7;
        block[12..16].copy_from_slice(&[0xff; 4]);
        let sealed = c.seal(&block);
        assert!(matches!(
            c.server.receive(&sealed[..16], &mut c.ctx),
            Err(ServerError::Wire(WireError::BadField {
                value: 0xffff_ffff,
                ..
            }))
        ));
        // N = 0 is refused (RFC 5938: N ≥ 1).
        let mut c = RawClient::connect_with(&spec, Ctx::default());
        assert_eq!(
            c.send(&start_n_msg(&[])),
            Err(ServerError::Wire(WireError::BadField {
                what: "Start-N-Sessions",
                field: "Number of Sessions",
                value: 0
            }))
        );
        // N = max_sessions is read octet by octet and answered.
        let mut c = RawClient::connect_with(&spec, Ctx::default());
        let sids: Vec<Sid> = (0..MAX_SESSIONS as u8).map(|i| Sid([i; 16])).collect();
        let sealed = c.seal(&start_n_msg(&sids));
        for (i, octet) in sealed.iter().enumerate() {
            assert!(c.server.pending_output().is_empty());
            c.server.receive(&[*octet], &mut c.ctx).unwrap();
            assert_eq!(c.server.mid_message(), i + 1 < sealed.len());
        }
        // None of them exists: one N-Ack with Accept 1 for all.
        assert_eq!(
            c.read_n_acks(sids.len()),
            [(8, Accept::Failure, sids.clone())]
        );
    }
}

#[test]
fn garbage_is_never_buffered_without_bound() {
    let spec = Spec::new(SecurityMode::Unauthenticated, Modes::NONE);
    // A megabyte at once: the first 164 octets decide.
    for (fill, err) in [
        (0x00u8, ServerError::ClientQuit),
        (0xff, ServerError::SetupRefused(Accept::NotSupported)),
    ] {
        let mut server = spec.server();
        let mut ctx = Ctx::default();
        assert_eq!(server.receive(&vec![fill; 1 << 20], &mut ctx), Err(err));
        assert!(server.wants_close() && !server.mid_message());
    }
    // Established, unauthenticated: a flood of valid requests is answered
    // one by one; past the session limit each is refused with Accept 5.
    let mut c = RawClient::connect(SecurityMode::Unauthenticated, Modes::NONE);
    let flood: Vec<u8> = std::iter::repeat_n(request().to_bytes(), 100)
        .flatten()
        .collect();
    c.server.receive(&flood, &mut c.ctx).unwrap();
    assert!(!c.server.mid_message());
    for i in 0..100 {
        let a = c.read_accept();
        let want = if i < MAX_SESSIONS as usize {
            Accept::Ok
        } else {
            Accept::TemporaryResourceLimitation
        };
        assert_eq!(a.accept, want, "request {i}");
    }
}

/// What a server did with a client's octet stream.
#[derive(Debug, PartialEq)]
struct Replayed {
    s2c: Vec<u8>,
    events: Vec<ServerEvent>,
    calls: Vec<Call>,
    error: Option<ServerError>,
}

/// Feeds a recorded client stream to a fresh server in the given chunks.
/// With `boundaries`, checks after every chunk that the server holds a
/// partial message exactly when the octets so far end inside one, and
/// that it answers only when a chunk completes a message.
fn replay(
    spec: &Spec,
    c2s: &[u8],
    chunker: Option<Chunker>,
    boundaries: Option<&[usize]>,
) -> Replayed {
    let mut server = spec.server();
    let mut ctx = Ctx::default();
    let mut s2c = server.pending_output().to_vec();
    server.consume_output(s2c.len());
    let mut chunker = chunker;
    let mut error = None;
    let mut fed = 0;
    for chunk in split(c2s, &mut chunker) {
        if let Err(e) = server.receive(chunk, &mut ctx) {
            // What was queued before the error (a refusal) is still sent.
            s2c.extend_from_slice(server.pending_output());
            error = Some(e);
            break;
        }
        fed += chunk.len();
        if let Some(b) = boundaries {
            let at_boundary = b.contains(&fed);
            assert_eq!(server.mid_message(), !at_boundary, "after {fed} octets");
        }
        let out = server.pending_output().to_vec();
        if let Some(b) = boundaries {
            let completed = b.iter().any(|&x| fed - chunk.len() < x && x <= fed);
            assert!(out.is_empty() || completed, "answered mid-message at {fed}");
        }
        server.consume_output(out.len());
        s2c.extend(out);
    }
    Replayed {
        s2c,
        events: std::iter::from_fn(|| server.poll_event()).collect(),
        calls: ctx.calls,
        error,
    }
}

/// Message boundaries of a client stream (after the Set-Up-Response).
fn boundaries(spec: &Spec, p: &Pair) -> Vec<usize> {
    let t = Transcript::open(spec, &p.c2s, &p.s2c);
    let mut at = 164;
    let mut b = vec![at];
    for c in &t.commands {
        at += c.len();
        b.push(at);
    }
    b
}

/// Security × feature combinations the framing tests cover.
fn combos() -> Vec<(SecurityMode, Modes)> {
    let mut v = vec![];
    for security in SecurityMode::ALL {
        for wanted in [
            Modes::NONE,
            ISC,
            REFLECT | SYMMETRICAL | DSCP_ECN | PTP,
            IKEV2,
        ] {
            v.push((security, wanted));
        }
    }
    v
}

#[test]
fn octet_at_a_time_equals_all_at_once_in_every_mode() {
    for (security, wanted) in combos() {
        let spec = Spec::new(security, wanted);
        let p = life(spec.clone(), None);
        let expected = Replayed {
            s2c: p.s2c.clone(),
            events: p.server_log.clone(),
            calls: p.ctx.calls.clone(),
            error: None,
        };
        // Pipelined: every command at once, before any answer was read.
        assert_eq!(replay(&spec, &p.c2s, None, None), expected, "{spec:?}");
        let b = boundaries(&spec, &p);
        assert_eq!(
            replay(&spec, &p.c2s, Some(cycling(vec![1])), Some(&b)),
            expected,
            "{spec:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Client side
// ---------------------------------------------------------------------------

/// The Set-Up-Response of a client that quits: Mode 0 (RFC 4656 §3.1).
const QUIT: [u8; 164] = [0; 164];

#[test]
fn client_refuses_a_pbkdf2_count_above_its_limit() {
    // RFC 5357 §6: a client bounds the Count it will spend PBKDF2 on.
    let mut spec = Spec::new(SecurityMode::Encrypted, Modes::NONE);
    spec.count = 65_536;
    spec.max_count = 32_768;
    let mut p = Pair::new(spec.clone(), Ctx::default());
    p.pump();
    assert_eq!(
        p.client_error,
        Some(ClientError::CountTooHigh {
            count: 65_536,
            max: 32_768
        })
    );
    assert_eq!(p.c2s, QUIT, "the client says it quits");
    assert_eq!(p.server_error, Some(ServerError::ClientQuit));
    assert_eq!(p.s2c.len(), 64, "nothing after the greeting");
    assert_eq!(p.ctx.calls, []);
    // Without a protected mode no PBKDF2 runs, so the Count does not matter.
    spec.security = SecurityMode::Unauthenticated;
    Pair::established(spec);
}

#[test]
fn client_without_a_common_mode_sends_mode_0_and_closes() {
    let cases = [
        // (offered, allowed, key) — a keyless client can only do mode 1.
        (Modes(4), SecurityMode::Encrypted, false),
        (Modes(0), SecurityMode::Unauthenticated, true),
        (Modes(1 | 4), SecurityMode::Authenticated, true),
        (Modes(0x3f0), SecurityMode::Unauthenticated, true),
    ];
    for (offered, security, keyed) in cases {
        let mut spec = Spec::new(security, Modes::NONE);
        spec.offered = offered;
        if !keyed {
            spec.key = None;
        }
        let mut p = Pair::new(spec, Ctx::default());
        p.pump();
        assert_eq!(
            p.client_error,
            Some(ClientError::NoCommonMode { offered }),
            "{offered}"
        );
        assert!(p.client.wants_close());
        assert_eq!(p.client_log, []);
        assert_eq!(p.c2s, QUIT);
        assert_eq!(p.server_error, Some(ServerError::ClientQuit));
        assert_eq!(p.client.receive(&[0]), Err(ClientError::Closed));
    }
}

/// A client that has sent its Set-Up-Response to a hand-driven server
/// greeting and read a Server-Start Accept 0 (unauthenticated, so the
/// server octets can be written by hand).
fn ready_open_client(wanted: Modes) -> Client {
    let mut spec = Spec::new(SecurityMode::Unauthenticated, wanted);
    spec.key = None;
    let mut client = spec.client();
    let greeting = ServerGreetingRepr {
        unused: [0; 12],
        modes: EVERYTHING,
        challenge: CHALLENGE,
        salt: SALT,
        count: COUNT,
    };
    client.receive(&greeting.to_bytes()).unwrap();
    let n = client.pending_output().len();
    client.consume_output(n);
    let start = ServerStartRepr {
        accept: Accept::Ok,
        server_iv: [0; 16],
        start_time: START_TIME,
    };
    client.receive(&start.to_bytes()).unwrap();
    assert!(client.is_ready());
    while client.poll_event().is_some() {}
    client
}

fn drop_output(c: &mut Client) {
    let n = c.pending_output().len();
    c.consume_output(n);
}

#[test]
fn client_rejects_what_the_server_was_not_asked() {
    // Before any request.
    let mut c = ready_open_client(Modes::NONE);
    assert_eq!(c.receive(&[0]), Err(ClientError::Unsolicited));
    assert!(c.wants_close());
    assert_eq!(c.receive(&[0]), Err(ClientError::Closed));

    // After the one expected answer, in the same read.
    let mut c = ready_open_client(Modes::NONE);
    c.request_session(&request()).unwrap();
    drop_output(&mut c);
    let mut data = AcceptSessionRepr::refusal(Accept::NotSupported)
        .to_bytes()
        .to_vec();
    data.extend([0; 16]);
    assert_eq!(c.receive(&data), Err(ClientError::Unsolicited));
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::SessionRefused {
            tag: 0,
            accept: Accept::NotSupported
        })
    );

    // Protected: stray octets after the set-up.
    let mut p = Pair::established(Spec::new(SecurityMode::Encrypted, Modes::NONE));
    assert_eq!(p.client.receive(&[0; 48]), Err(ClientError::Unsolicited));

    // Protected: a tampered answer fails its HMAC.
    let mut p = Pair::established(Spec::new(SecurityMode::Authenticated, Modes::NONE));
    p.client.request_session(&request()).unwrap();
    let n = p.client.pending_output().len();
    let req = p.client.pending_output().to_vec();
    p.client.consume_output(n);
    p.server.receive(&req, &mut p.ctx).unwrap();
    let mut answer = p.server.pending_output().to_vec();
    answer[40] ^= 1;
    assert!(matches!(
        p.client.receive(&answer),
        Err(ClientError::Crypto(CryptoError::BadHmac { .. }))
    ));
}

#[test]
fn client_reassembles_n_acks_split_by_accept() {
    let (a, b, c3) = (Sid([0xa; 16]), Sid([0xb; 16]), Sid([0xc; 16]));
    let ack = |accept, sids: &[Sid]| {
        StartNAckRepr {
            accept,
            sids: sids.to_vec(),
            hmac: [0; 16],
        }
        .to_bytes()
    };
    let mut c = ready_open_client(ISC);
    c.start_n(&[a, b, c3]).unwrap();
    drop_output(&mut c);
    c.receive(&ack(Accept::Ok, &[b])).unwrap();
    assert!(c.awaiting_reply(), "two SIDs still unanswered");
    // The second group, cut in two reads.
    let second = ack(Accept::TemporaryResourceLimitation, &[a, c3]);
    c.receive(&second[..20]).unwrap();
    c.receive(&second[20..]).unwrap();
    assert!(!c.awaiting_reply());
    assert_eq!(
        std::iter::from_fn(|| c.poll_event()).collect::<Vec<_>>(),
        [
            n_ack(Command::StartNSessions, Accept::Ok, &[b]),
            n_ack(
                Command::StartNSessions,
                Accept::TemporaryResourceLimitation,
                &[a, c3]
            ),
        ]
    );

    // More SIDs than asked about.
    c.start_n(&[a]).unwrap();
    drop_output(&mut c);
    assert_eq!(
        c.receive(&ack(Accept::Ok, &[a, b])),
        Err(ClientError::Unsolicited)
    );

    // A Stop-N-Ack where a Start-N-Ack is due.
    let mut c = ready_open_client(ISC);
    c.start_n(&[a]).unwrap();
    drop_output(&mut c);
    let wrong = StopNAckRepr {
        accept: Accept::Ok,
        sids: vec![a],
        hmac: [0; 16],
    }
    .to_bytes();
    assert_eq!(
        c.receive(&wrong),
        Err(ClientError::Wire(WireError::BadField {
            what: "Start-N-Ack",
            field: "Command",
            value: 10
        }))
    );

    // An N above the client's bound is refused before reading the SIDs.
    let mut c = ready_open_client(ISC);
    c.start_n(&[a]).unwrap();
    drop_output(&mut c);
    let mut head = vec![0u8; 16];
    head[0] = 8;
    head[12..16].copy_from_slice(&(MAX_SESSIONS + 1).to_be_bytes());
    assert!(matches!(
        c.receive(&head),
        Err(ClientError::Wire(WireError::BadField {
            field: "Number of Sessions",
            ..
        }))
    ));
}

#[test]
fn client_commands_wait_for_the_server_start() {
    let spec = Spec::new(SecurityMode::Unauthenticated, Modes::NONE);
    let mut c = spec.client();
    assert_eq!(
        c.request_session(&request()),
        Err(ClientError::NotNow("Request-TW-Session"))
    );
    assert_eq!(
        c.start_sessions(0),
        Err(ClientError::NotNow("Start-Sessions"))
    );
    assert_eq!(c.pending_output(), &[] as &[u8]);
}

// ---------------------------------------------------------------------------
// 6. Property tests
// ---------------------------------------------------------------------------

/// Feeds `data` in chunks and checks the contract of `Server::receive`:
/// never a panic; `Ok` means waiting or answered (connection open); `Err`
/// is typed, closes the connection and drops the partial input; output is
/// always whole AES blocks; the data plane holds exactly what was accepted.
fn feed_server(
    server: &mut Server,
    ctx: &mut Ctx,
    data: &[u8],
    sizes: Vec<usize>,
) -> Result<Option<ServerError>, TestCaseError> {
    let mut chunker = Some(cycling(sizes));
    let mut error = None;
    for chunk in split(data, &mut chunker) {
        match server.receive(chunk, ctx) {
            Ok(()) => prop_assert!(!server.wants_close()),
            Err(e) => {
                prop_assert!(server.wants_close(), "{}", e);
                prop_assert_ne!(&e, &ServerError::Closed);
                prop_assert!(!server.mid_message());
                prop_assert_eq!(server.receive(chunk, ctx), Err(ServerError::Closed));
                error = Some(e);
                break;
            }
        }
        prop_assert_eq!(server.pending_output().len() % 16, 0);
    }
    let events: Vec<ServerEvent> = std::iter::from_fn(|| server.poll_event()).collect();
    let accepted = events
        .iter()
        .filter(|e| matches!(e, ServerEvent::SessionAccepted { .. }))
        .count();
    prop_assert_eq!(accepted, ctx.installed.len());
    prop_assert!(server.sids().count() <= MAX_SESSIONS as usize);
    Ok(error)
}

/// Feeds `data` in chunks to a client and checks the same contract.
fn feed_client(client: &mut Client, data: &[u8], sizes: Vec<usize>) -> Result<(), TestCaseError> {
    let mut chunker = Some(cycling(sizes));
    for chunk in split(data, &mut chunker) {
        match client.receive(chunk) {
            Ok(()) => prop_assert!(!client.wants_close()),
            Err(e) => {
                prop_assert!(client.wants_close(), "{}", e);
                prop_assert_ne!(&e, &ClientError::Closed);
                prop_assert_eq!(client.receive(chunk), Err(ClientError::Closed));
                break;
            }
        }
        prop_assert_eq!(client.pending_output().len() % 4, 0);
    }
    while client.poll_event().is_some() {}
    Ok(())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..200, 1..6)
}

fn any_combo() -> impl Strategy<Value = (SecurityMode, Modes)> {
    prop::sample::select(combos())
}

/// A SID the server granted, or any other.
fn any_sid() -> impl Strategy<Value = Sid> {
    prop_oneof![
        (1u8..=MAX_SESSIONS as u8).prop_map(|n| granted_sid(Ipv4Addr::new(192, 0, 2, 2).into(), n)),
        any::<[u8; 16]>().prop_map(Sid),
    ]
}

/// Plaintext client commands, mostly well-formed, some not.
fn any_command() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec((1usize..96, any::<u8>()), 0..3).prop_map(|edits| {
            let mut m = request().to_bytes().to_vec();
            for (i, v) in edits {
                m[i] = v;
            }
            m
        }),
        1 => Just(start_sessions_msg()),
        1 => prop_oneof![0u32..4, any::<u32>()].prop_map(stop_sessions_msg),
        2 => prop::collection::vec(any_sid(), 0..4).prop_map(|s| start_n_msg(&s)),
        2 => prop::collection::vec(any_sid(), 0..4).prop_map(|s| stop_n_msg(&s)),
        1 => prop::collection::vec(any::<u8>(), 16..64).prop_map(|mut m| {
            m.truncate(m.len() / 16 * 16);
            m
        }),
    ]
}

/// An unauthenticated set-up with `features`, then `commands`.
fn open_stream(features: Modes, commands: &[Vec<u8>]) -> Vec<u8> {
    let mut s = SetUpResponseRepr {
        mode: Modes(1) | features,
        key_id: [0; 80],
        token: [0; 64],
        client_iv: [0; 16],
    }
    .to_bytes()
    .to_vec();
    for c in commands {
        s.extend(c);
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any octets, in any chunking, into a server that has just greeted.
    #[test]
    fn random_octets_into_a_fresh_server(
        mode in prop_oneof![any::<u32>(), (0u32..0x400)],
        rest in prop::collection::vec(any::<u8>(), 0..600),
        sizes in chunk_sizes(),
    ) {
        let spec = Spec::new(SecurityMode::Unauthenticated, Modes::NONE);
        let mut server = spec.server();
        let mut ctx = Ctx::default();
        let mut data = mode.to_be_bytes().to_vec();
        data.extend(rest);
        feed_server(&mut server, &mut ctx, &data, sizes)?;
    }

    /// Any octets into a server that is set up, in every mode.
    #[test]
    fn random_octets_into_an_established_server(
        (security, wanted) in any_combo(),
        data in prop::collection::vec(any::<u8>(), 0..600),
        sizes in chunk_sizes(),
    ) {
        let mut c = RawClient::connect(security, wanted);
        feed_server(&mut c.server, &mut c.ctx, &data, sizes)?;
    }

    /// Streams of plausible commands (open mode, so no HMAC stops them early)
    /// in any chunking: the contract holds, and the server does exactly what
    /// it does when the whole stream arrives at once.
    #[test]
    fn random_commands_in_any_chunking(
        features in prop::sample::select(vec![Modes::NONE, ISC, REFLECT, ISC | REFLECT]),
        commands in prop::collection::vec(any_command(), 0..12),
        sizes in chunk_sizes(),
    ) {
        let spec = Spec::new(SecurityMode::Unauthenticated, features);
        let stream = open_stream(features, &commands);
        let mut server = spec.server();
        let mut ctx = Ctx::default();
        feed_server(&mut server, &mut ctx, &stream, sizes.clone())?;
        let whole = replay(&spec, &stream, None, None);
        let chunked = replay(&spec, &stream, Some(cycling(sizes)), None);
        prop_assert_eq!(chunked, whole);
    }

    /// Any octets into a client that has just connected.
    #[test]
    fn random_octets_into_a_fresh_client(
        modes in prop_oneof![any::<u32>(), (0u32..0x400)],
        count in prop_oneof![Just(1024u32), 0u32..4096, any::<u32>()],
        rest in prop::collection::vec(any::<u8>(), 0..300),
        sizes in chunk_sizes(),
    ) {
        let mut spec = Spec::new(SecurityMode::Encrypted, Modes::NONE);
        spec.max_count = 4096;
        let mut client = spec.client();
        let mut greeting = ServerGreetingRepr {
            unused: [0; 12],
            modes: Modes(modes),
            challenge: CHALLENGE,
            salt: SALT,
            count,
        }
        .to_bytes()
        .to_vec();
        greeting.extend(rest);
        feed_client(&mut client, &greeting, sizes)?;
    }

    /// Any octets into a ready client waiting for answers, in every mode.
    #[test]
    fn random_octets_into_a_waiting_client(
        (security, wanted) in any_combo(),
        data in prop::collection::vec(any::<u8>(), 0..400),
        sizes in chunk_sizes(),
    ) {
        let mut p = Pair::established(Spec::new(security, wanted));
        p.client.request_session(&request()).unwrap();
        if wanted.contains(ISC) {
            p.client.start_n(&[Sid([1; 16]), Sid([2; 16])]).unwrap();
        } else {
            p.client.start_sessions(1).unwrap();
        }
        drop_output(&mut p.client);
        feed_client(&mut p.client, &data, sizes)?;
    }

    /// Plausible server answers (open mode) into a waiting client.
    #[test]
    fn random_answers_into_an_open_client(
        answers in prop::collection::vec(
            prop_oneof![
                any::<[u8; 48]>().prop_map(|a| a.to_vec()),
                (any::<u8>(), prop::collection::vec(any_sid(), 0..4)).prop_map(|(a, s)| {
                    StartNAckRepr { accept: Accept::from(a), sids: s, hmac: [0; 16] }.to_bytes()
                }),
                any::<u8>().prop_map(|a| StartAckRepr { accept: Accept::from(a), hmac: [0; 16] }
                    .to_bytes()
                    .to_vec()),
            ],
            0..5,
        ),
        sizes in chunk_sizes(),
    ) {
        let mut c = ready_open_client(ISC);
        c.request_session(&request()).unwrap();
        c.start_n(&[granted_sid(Ipv4Addr::new(192, 0, 2, 2).into(), 1)]).unwrap();
        c.request_session(&request()).unwrap();
        drop_output(&mut c);
        let data: Vec<u8> = answers.concat();
        feed_client(&mut c, &data, sizes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// However TCP cuts either direction, both machines say and do exactly
    /// what they do when every flight arrives whole.
    #[test]
    fn chunking_never_changes_the_conversation(
        (security, wanted) in any_combo(),
        sizes in chunk_sizes(),
    ) {
        let spec = Spec::new(security, wanted);
        let whole = life(spec.clone(), None);
        let cut = life(spec.clone(), Some(cycling(sizes.clone())));
        prop_assert_eq!(&cut.c2s, &whole.c2s);
        prop_assert_eq!(&cut.s2c, &whole.s2c);
        prop_assert_eq!(&cut.server_log, &whole.server_log);
        prop_assert_eq!(&cut.client_log, &whole.client_log);
        prop_assert_eq!(&cut.ctx.calls, &whole.ctx.calls);
        prop_assert_eq!(&cut.ctx.installed, &whole.ctx.installed);
        // And the server alone, fed the client's whole stream pipelined.
        let expected = Replayed {
            s2c: whole.s2c.clone(),
            events: whole.server_log.clone(),
            calls: whole.ctx.calls.clone(),
            error: None,
        };
        let b = boundaries(&spec, &whole);
        prop_assert_eq!(replay(&spec, &whole.c2s, Some(cycling(sizes)), Some(&b)), expected);
    }
}

// ---------------------------------------------------------------------------
// REFWAIT: sessions the data plane expires
// ---------------------------------------------------------------------------

/// RFC 5357 §4.2 lets the reflector end a silent session after REFWAIT. The
/// client does not know: its Stop-Sessions still counts every session it
/// started (RFC 5357 §3.8), and must end the test normally. Once every
/// started session has expired the connection also takes new requests.
#[test]
fn stop_sessions_after_refwait_expiry_counts_what_the_client_started() {
    for expire in [1usize, 2] {
        let spec = Spec::new(SecurityMode::Authenticated, Modes::NONE);
        let mut p = Pair::established(spec);
        let a = p.accepted(&request()).0;
        let b = p.accepted(&request()).0;
        p.client.start_sessions(2).unwrap();
        p.pump();
        p.client_events();
        p.server.forget_session(a);
        let mut waiting = vec![];
        if expire == 2 {
            p.server.forget_session(b);
            // Nothing in progress: requests are served again...
            waiting.push(p.accepted(&request()).0);
        }
        assert_eq!(p.server.sessions_in_progress(), expire == 1);
        // ...and the Stop-Sessions the client owes still ends its test.
        p.client.stop_sessions(Accept::Ok).unwrap();
        p.pump();
        p.assert_healthy();
        assert_eq!(
            p.ctx.stopped().iter().map(|s| s.0).collect::<Vec<_>>(),
            if expire == 1 { vec![b] } else { vec![] },
            "only live sessions are stopped in the data plane"
        );
        assert_eq!(
            p.server_log.last(),
            Some(&ServerEvent::Stopped {
                sessions: 2 - expire
            })
        );
        // A session requested after the expiry waits for its own start.
        assert_eq!(p.server.sids().collect::<Vec<_>>(), waiting);
        p.client_events();
        let c = p.accepted(&request()).0;
        waiting.push(c);
        p.client.start_sessions(waiting.len() as u32).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [ClientEvent::StartAck { accept: Accept::Ok }]
        );
        assert_eq!(p.ctx.started()[2..], waiting[..]);
        p.assert_healthy();
    }
    // A Stop-Sessions is owed only after a Start-Sessions.
    let mut c = RawClient::connect(SecurityMode::Unauthenticated, Modes::NONE);
    c.send(&request().to_bytes()).unwrap();
    let a = c.read_accept().sid;
    c.send(&start_sessions_msg()).unwrap();
    c.read(32);
    c.server.forget_session(a);
    c.send(&stop_sessions_msg(1)).unwrap();
    assert!(matches!(
        c.send(&stop_sessions_msg(0)),
        Err(ServerError::UnexpectedCommand {
            command: Command::StopSessions,
            ..
        })
    ));
    // Individual Session Control: an expired SID is simply unknown.
    let spec = Spec::new(SecurityMode::Unauthenticated, ISC);
    let mut p = Pair::established(spec);
    let a = p.accepted(&request()).0;
    p.client.start_n(&[a]).unwrap();
    p.pump();
    p.server.forget_session(a);
    assert!(!p.server.sessions_in_progress());
    p.client_events();
    p.client.stop_n(&[a]).unwrap();
    p.pump();
    assert_eq!(
        p.client_events(),
        [n_ack(Command::StopNSessions, Accept::Failure, &[a])]
    );
    p.assert_healthy();
}

#[test]
fn client_only_sends_what_the_mode_and_state_allow() {
    let not_now = |w| Err::<(), _>(ClientError::NotNow(w));
    let some = [Sid([1; 16])];
    for security in [SecurityMode::Unauthenticated, SecurityMode::Encrypted] {
        let mut p = Pair::established(Spec::new(security, Modes::NONE));
        // RFC 5938 commands need Individual Session Control.
        assert_eq!(p.client.start_n(&some), not_now("Start-N-Sessions"));
        assert_eq!(p.client.stop_n(&some), not_now("Stop-N-Sessions"));
        // Nothing started, nothing to stop.
        assert_eq!(p.client.stop_sessions(Accept::Ok), not_now("Stop-Sessions"));
        let a = p.accepted(&request()).0;
        p.client.start_sessions(1).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [ClientEvent::StartAck { accept: Accept::Ok }]
        );
        p.client.stop_sessions(Accept::Ok).unwrap();
        p.pump();
        // A refused start leaves nothing to stop, and requests may follow.
        let b = p.accepted(&request()).0;
        p.ctx.refuse_start = vec![(b, Accept::TemporaryResourceLimitation)];
        p.client.start_sessions(1).unwrap();
        p.pump();
        assert_eq!(
            p.client_events(),
            [ClientEvent::StartAck {
                accept: Accept::TemporaryResourceLimitation
            }]
        );
        assert_eq!(p.client.stop_sessions(Accept::Ok), not_now("Stop-Sessions"));
        p.accepted(&request());
        p.assert_healthy();
        // Only legal commands reached the wire.
        let cmds: Vec<u8> = p.transcript().commands.iter().map(|c| c[0]).collect();
        assert_eq!(cmds, [5, 2, 3, 5, 2, 5]);
        assert_eq!(p.ctx.started(), [a]);

        let mut p = Pair::established(Spec::new(security, ISC));
        assert_eq!(p.client.start_sessions(0), not_now("Start-Sessions"));
        assert_eq!(p.client.stop_sessions(Accept::Ok), not_now("Stop-Sessions"));
        assert!(p.client.pending_output().is_empty());
        p.assert_healthy();
    }
}
