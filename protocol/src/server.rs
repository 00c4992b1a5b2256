//! The TWAMP-Control server state machine (RFC 5357 §3, RFC 4656 §3, RFC 5618,
//! RFC 5938, RFC 6038, RFC 7717 key source, RFC 7750, RFC 8186), sans-IO.
//!
//! The outer event loop owns the socket. It creates a [`Server`] per accepted
//! connection (which queues the Server Greeting), hands it every octet read
//! with [`Server::receive`], writes what [`Server::pending_output`] holds, and
//! closes once [`Server::wants_close`] is true and the output is flushed.
//!
//! Decisions that need the world outside the connection (key lookup, policy,
//! port and SID allocation, programming the data plane) are asked of a
//! [`ServerContext`] passed to each call; randomness and the clock come in
//! through [`ServerConfig`] and [`ServerRandom`], so a captured session can be
//! replayed octet for octet.
//!
//! Failures that the protocol answers politely (a refused session, an
//! unsupported request) keep the connection; anything that breaks the message
//! stream or its integrity (a bad HMAC, an unknown command, a wrong message
//! order) ends it with a typed [`ServerError`]. An unknown command, or one
//! not allowed in the current state, is first answered with an
//! Accept-Session carrying Accept 3 (RFC 5357 §3.5).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::accept::Accept;
use crate::control::{
    self, AcceptSessionRepr, Command, RequestTwSessionRepr, ServerGreetingRepr, ServerStartRepr,
    SetUpResponseRepr, Sid, StartAckRepr, StartNAckRepr, StartNSessionsRepr, StartSessionsRepr,
    StopNAckRepr, StopNSessionsRepr, StopSessionsRepr,
};
use crate::crypto::{
    self, ControlRx, ControlTx, CryptoError, SessionKeys, SharedSecret, TokenKeyDerivation,
};
use crate::error::WireError;
use crate::inbox::Inbox;
use crate::modes::{self, ModeError, Modes, SecurityMode, Selection};
use crate::sa_records::SaId;
use crate::time::{NtpTimestamp, TimeFormat};
use crate::twamp_test::{ReflectOctets, SessionFormat};

/// The Key ID field of a Set-Up-Response.
pub type KeyId = [u8; control::setup::KEY_ID_LEN];

/// Per-server settings (the same for every connection).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Modes offered in the Server Greeting.
    pub modes: Modes,
    /// PBKDF2 iteration count offered (power of two, ≥ 1024).
    pub count: u32,
    /// When this server instance started (Server-Start Start-Time; the same
    /// for every connection, RFC 4656 §3.1).
    pub start_time: NtpTimestamp,
    /// Most sessions one connection may hold; also bounds N in Start-N /
    /// Stop-N so a hostile N cannot make the server read without bound.
    pub max_sessions: u32,
    /// The 12 Unused octets of the greeting (zero unless the draft-era
    /// RFC 7717 greeting probe is enabled).
    pub greeting_unused: [u8; 12],
    /// How the test format resolves the RFC 6038/7750 ambiguities.
    pub test_format: SessionFormat,
}

/// Random octets a connection needs, drawn by the caller from a CSPRNG.
#[derive(Clone)]
pub struct ServerRandom {
    pub challenge: [u8; 16],
    pub salt: [u8; 16],
    pub server_iv: [u8; 16],
}

/// A validated session request, addresses resolved, for the context to admit.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Where test packets come from (and where reflections go).
    pub sender: SocketAddr,
    /// Reflector address and the port the client asked for (perfSONAR puts
    /// its own port here; any free port may be answered instead).
    pub reflector: SocketAddr,
    pub security: SecurityMode,
    /// Connection-wide features (RFC 6038 §4.1: they apply to every session).
    pub features: Modes,
    pub padding_length: u32,
    pub start_time: NtpTimestamp,
    pub timeout: NtpTimestamp,
    /// DSCP to send reflections with (Type-P).
    pub dscp: u8,
    /// The identity of the connection (Key ID name), when authenticated.
    pub identity: Option<Vec<u8>>,
}

/// What the context grants a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionGrant {
    /// The reflector port actually used.
    pub port: u16,
    pub sid: Sid,
    /// RFC 6038 Server octets (0 unless the server wants the sender to carry
    /// them); sent only when Reflect Octets was selected, MBZ otherwise.
    pub server_octets: [u8; 2],
}

/// An accepted session: everything the data plane needs to reflect it.
pub struct AcceptedSession {
    pub sid: Sid,
    pub sender: SocketAddr,
    pub reflector: SocketAddr,
    pub security: SecurityMode,
    pub format: SessionFormat,
    pub dscp: u8,
    pub padding_length: u32,
    pub start_time: NtpTimestamp,
    pub timeout: NtpTimestamp,
    /// Per-SID test keys, raw (authenticated and encrypted modes only): the
    /// data plane builds its key schedules (`TestKeys::new`) or writes them
    /// into its key map.
    pub test_keys: Option<SessionKeys>,
}

/// What a server connection asks of the world outside it.
pub trait ServerContext {
    /// The shared secret for a Key ID (a perfSONAR identity, or SPIi‖SPIr in
    /// RFC 7717 mode). `Err` names the Accept value of the refusal: 1 for an
    /// unknown identity, 6 for an unknown IKEv2 SA (RFC 7717 §5.3).
    fn shared_secret(
        &mut self,
        key_id: &KeyId,
        selection: &Selection,
    ) -> Result<SharedSecret, Accept>;
    /// How the token key is derived from the secret of `selection`: PBKDF2
    /// (RFC 4656 §3.1) unless the context says otherwise. RFC 7717 does not
    /// say whether PBKDF2 runs on an IKEv2-derived secret (spec
    /// `rfc7717-ikev2-key.md` §2 A), so a context may answer
    /// [`TokenKeyDerivation::Direct`] for the IKEv2-derived Mode bit.
    fn token_key_derivation(&mut self, selection: &Selection) -> TokenKeyDerivation {
        let _ = selection;
        TokenKeyDerivation::Pbkdf2
    }
    /// Policy on the mode (and identity, when authenticated) a client chose.
    /// In protected modes it is asked only after the token proved that the
    /// client holds the Key ID's secret.
    fn admit_mode(&mut self, identity: Option<&[u8]>, selection: &Selection) -> Result<(), Accept>;
    /// Admits a session request: policy, reflector port, SID.
    fn allocate_session(&mut self, request: &SessionRequest) -> Result<SessionGrant, Accept>;
    /// The session was accepted (its Accept-Session is queued): program the
    /// data plane. `Err` turns the answer into a refusal; the context must
    /// then have released what `allocate_session` took.
    fn install_session(&mut self, session: AcceptedSession) -> Result<(), Accept>;
    /// Starts reflecting a session (Start-Sessions or Start-N-Sessions).
    fn start_session(&mut self, sid: Sid) -> Accept;
    /// Stops a session: reflect what arrives within `timeout`, then remove it.
    fn stop_session(&mut self, sid: Sid, timeout: NtpTimestamp);
}

/// Things worth logging and counting, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Set-Up-Response accepted.
    Established {
        selection: Selection,
        identity: Option<Vec<u8>>,
    },
    /// Server-Start sent with this non-zero Accept (the connection closes).
    SetupRefused {
        accept: Accept,
        reason: SetupRefusal,
    },
    /// A session was accepted.
    SessionAccepted { sid: Sid, port: u16 },
    /// A session request was refused (the connection stays).
    SessionRefused {
        accept: Accept,
        reason: &'static str,
    },
    /// Sessions started (count).
    Started { sessions: usize },
    /// A Start-N / Stop-N acknowledgement.
    NAck {
        command: Command,
        accept: Accept,
        sessions: usize,
    },
    /// Stop-Sessions accepted: this many sessions were stopped in the data
    /// plane (those REFWAIT already removed are not counted).
    Stopped { sessions: usize },
}

/// Why a Set-Up-Response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupRefusal {
    Mode(ModeError),
    Policy,
    UnknownKey,
    /// The token did not decrypt to our challenge: wrong shared secret.
    BadToken,
}

/// Errors that end a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServerError {
    #[error("malformed control message: {0}")]
    Wire(#[from] WireError),
    #[error("control message failed its integrity check: {0}")]
    Crypto(#[from] CryptoError),
    #[error("the client quit (mode 0 in Set-Up-Response)")]
    ClientQuit,
    #[error("set-up refused with Accept {0:?}")]
    SetupRefused(Accept),
    #[error("{command} is not allowed {state}")]
    UnexpectedCommand {
        command: Command,
        state: &'static str,
    },
    #[error("Stop-Sessions counts {got} sessions, {expected} are in progress")]
    StopCountMismatch { got: u32, expected: u32 },
    #[error("the client sent more than {limit} octets without completing a message")]
    InputOverflow { limit: usize },
    #[error("the connection is closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Greeting queued, waiting for the 164-octet Set-Up-Response.
    AwaitSetup,
    /// Waiting for a command (sessions may be requested).
    Ready,
    /// Between Start-Sessions and Stop-Sessions (non-ISC mode).
    Active,
    Closed,
}

struct Crypto {
    rx: ControlRx,
    tx: ControlTx,
    keys: SessionKeys,
}

struct Session {
    sid: Sid,
    timeout: NtpTimestamp,
    started: bool,
}

/// One TWAMP-Control connection, server side.
pub struct Server {
    config: ServerConfig,
    random: ServerRandom,
    client: SocketAddr,
    local: SocketAddr,
    state: State,
    selection: Option<Selection>,
    identity: Option<Vec<u8>>,
    crypto: Option<Crypto>,
    input: Inbox,
    output: Vec<u8>,
    events: VecDeque<ServerEvent>,
    sessions: Vec<Session>,
    /// Sessions started by the last Start-Sessions, as the client counts
    /// them: REFWAIT expiry ([`Server::forget_session`]) does not lower it.
    started_by_client: u32,
}

const SETUP_LEN: usize = control::setup::LEN;

impl Server {
    /// A connection from `client` to our `local` address; queues the greeting.
    pub fn new(
        config: ServerConfig,
        random: ServerRandom,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        let greeting = ServerGreetingRepr {
            unused: config.greeting_unused,
            modes: config.modes,
            challenge: random.challenge,
            salt: random.salt,
            count: config.count,
        };
        let mut s = Server {
            config,
            random,
            client,
            local,
            state: State::AwaitSetup,
            selection: None,
            identity: None,
            crypto: None,
            input: Inbox::default(),
            output: Vec::with_capacity(256),
            events: VecDeque::new(),
            sessions: Vec::new(),
            started_by_client: 0,
        };
        s.output.extend_from_slice(&greeting.to_bytes());
        s
    }

    /// Octets to send to the client.
    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    /// Marks `n` octets of [`Self::pending_output`] as sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// True once the connection should be closed (after flushing output).
    pub fn wants_close(&self) -> bool {
        self.state == State::Closed
    }

    /// The next event to log or count.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The negotiated mode, once set up.
    pub fn selection(&self) -> Option<Selection> {
        self.selection
    }

    /// True while a set-up or a command is partly received (for the
    /// stalled-client timeout).
    pub fn mid_message(&self) -> bool {
        !self.input.is_empty()
    }

    /// True while any session is started (SERVWAIT is suspended then,
    /// RFC 5357 §3.1, RFC 5938 §3.6).
    pub fn sessions_in_progress(&self) -> bool {
        self.sessions.iter().any(|s| s.started)
    }

    /// SIDs held by this connection (to remove them when it drops).
    pub fn sids(&self) -> impl Iterator<Item = Sid> + '_ {
        self.sessions.iter().map(|s| s.sid)
    }

    /// Forgets a session the context expired (REFWAIT, RFC 5357 §4.2).
    ///
    /// Once no session is in progress the connection accepts requests again.
    /// The client does not know of the expiry, so the Stop-Sessions it still
    /// owes is accepted too, counting every session it started (RFC 5357
    /// §3.8). In Individual Session Control mode the SID becomes unknown to
    /// Stop-N.
    pub fn forget_session(&mut self, sid: Sid) {
        self.sessions.retain(|s| s.sid != sid);
        if self.state == State::Active && !self.sessions_in_progress() {
            self.state = State::Ready;
        }
    }

    /// The largest message a client can send us: bounds buffering.
    fn input_limit(&self) -> usize {
        control::n_sessions::message_len(self.config.max_sessions)
            .unwrap_or(usize::MAX)
            .max(SETUP_LEN)
    }

    /// Feeds octets read from the connection and processes every complete
    /// message. An `Err` ends the connection (queued output, such as a
    /// refusal, should still be flushed).
    pub fn receive(&mut self, data: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        if self.state == State::Closed {
            return Err(ServerError::Closed);
        }
        self.input.push(data);
        let r = self.process(ctx);
        if r.is_err() {
            self.state = State::Closed;
            self.input.clear();
        } else if self.input.len() > self.input_limit() {
            self.state = State::Closed;
            return Err(ServerError::InputOverflow {
                limit: self.input_limit(),
            });
        }
        r
    }

    fn process(&mut self, ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        loop {
            match self.state {
                State::Closed => return Ok(()),
                State::AwaitSetup => {
                    let Some(msg) = self.input.take(SETUP_LEN) else {
                        return Ok(());
                    };
                    self.on_setup(&msg, ctx)?;
                }
                State::Ready | State::Active => {
                    let Some(msg) = self.next_command()? else {
                        return Ok(());
                    };
                    self.on_command(&msg, ctx)?;
                }
            }
        }
    }

    /// Takes the next complete (decrypted, verified) command off the input.
    fn next_command(&mut self) -> Result<Option<Vec<u8>>, ServerError> {
        let Some(first) = self
            .input
            .first_block(self.crypto.as_mut().map(|c| &mut c.rx))?
        else {
            return Ok(None);
        };
        let header = control::client_command(&first, self.config.max_sessions)?;
        let Some(len) = header.len else {
            return Err(self.reject_command(header.command, "(unknown command)"));
        };
        Ok(self
            .input
            .message(len, self.crypto.as_mut().map(|c| &mut c.rx))?)
    }

    fn on_setup(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        let setup = SetUpResponseRepr::from_bytes(msg)?;
        if setup.mode == Modes::NONE {
            self.state = State::Closed;
            return Err(ServerError::ClientQuit);
        }
        let selection = match modes::select(self.config.modes, setup.mode) {
            Ok(s) => s,
            Err(e) => return self.refuse_setup(Accept::NotSupported, SetupRefusal::Mode(e)),
        };
        let protected = selection.security.protects_control();
        // Under RFC 7717 the Key ID is SPIi ‖ SPIr, not a name: the identity
        // is then `ikev2:SPIi_SPIr` in hex (for policy, logs and metrics).
        let identity = protected.then(|| {
            if selection.has(Modes::IKEV2_DERIVED) {
                format!("ikev2:{}", SaId::from_key_id(&setup.key_id)).into_bytes()
            } else {
                setup.key_id_name().to_vec()
            }
        });
        // Policy is asked only once the identity is proven (below, after the
        // token): asking before would let a client without the secret learn
        // which identities and modes are allowed from the Accept value.
        if protected {
            // Derive the token key even for an unknown Key ID (with a stand-in
            // secret) so that the answer takes the same time (RFC 4656 §6
            // timing advice, as perfSONAR does).
            let (secret, known) = match ctx.shared_secret(&setup.key_id, &selection) {
                Ok(s) => (s, Ok(())),
                Err(a) => (SharedSecret::from_slice(&self.random.salt), Err(a)),
            };
            let how = ctx.token_key_derivation(&selection);
            let token_key =
                crypto::derive_token_key(&secret, &self.random.salt, self.config.count, how)?;
            let opened = crypto::open_token(&token_key, &setup.token, &self.random.challenge);
            if let Err(a) = known {
                return self.refuse_setup(a, SetupRefusal::UnknownKey);
            }
            let keys = match opened {
                Ok(k) => k,
                Err(_) => return self.refuse_setup(Accept::Failure, SetupRefusal::BadToken),
            };
            if let Err(a) = ctx.admit_mode(identity.as_deref(), &selection) {
                return self.refuse_setup(a, SetupRefusal::Policy);
            }
            let mut crypto = Crypto {
                rx: ControlRx::new(&keys, &setup.client_iv),
                tx: ControlTx::new(&keys, &self.random.server_iv),
                keys,
            };
            let start = ServerStartRepr {
                accept: Accept::Ok,
                server_iv: self.random.server_iv,
                start_time: self.config.start_time,
            };
            let mut bytes = start.to_bytes();
            // Octets 32–47 open the server's cipher stream and its first HMAC
            // (pitfall 1: the first Accept-Session HMAC covers this block).
            crypto.tx.seal_without_hmac(&mut bytes[32..48])?;
            self.output.extend_from_slice(&bytes);
            self.crypto = Some(crypto);
        } else {
            if let Err(a) = ctx.admit_mode(None, &selection) {
                return self.refuse_setup(a, SetupRefusal::Policy);
            }
            let start = ServerStartRepr {
                accept: Accept::Ok,
                server_iv: self.random.server_iv,
                start_time: self.config.start_time,
            };
            self.output.extend_from_slice(&start.to_bytes());
        }
        self.selection = Some(selection);
        self.identity = identity.clone();
        self.state = State::Ready;
        self.events.push_back(ServerEvent::Established {
            selection,
            identity,
        });
        Ok(())
    }

    fn refuse_setup(&mut self, accept: Accept, reason: SetupRefusal) -> Result<(), ServerError> {
        // Accept ≠ 0: Start-Time zero, nothing encrypted (no key was agreed).
        let start = ServerStartRepr {
            accept,
            server_iv: [0; 16],
            start_time: NtpTimestamp::default(),
        };
        self.output.extend_from_slice(&start.to_bytes());
        self.events
            .push_back(ServerEvent::SetupRefused { accept, reason });
        self.state = State::Closed;
        Err(ServerError::SetupRefused(accept))
    }

    fn isc(&self) -> bool {
        self.selection
            .is_some_and(|s| s.has(Modes::INDIVIDUAL_SESSION_CONTROL))
    }

    fn state_name(&self) -> &'static str {
        match (self.state, self.isc()) {
            (State::Active, _) => "while sessions are active",
            (_, true) => "in Individual Session Control mode",
            _ => "outside Individual Session Control mode",
        }
    }

    fn on_command(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        let command = Command::from(msg[0]);
        let isc = self.isc();
        let legal = match (command, self.state) {
            (Command::RequestTwSession, State::Ready) => true,
            // RFC 5938: in ISC mode requests, Start-N and Stop-N come in any order.
            (Command::RequestTwSession | Command::StartNSessions | Command::StopNSessions, _) => {
                isc
            }
            (Command::StartSessions, State::Ready) => !isc,
            (Command::StopSessions, State::Active) => !isc,
            // Owed after REFWAIT expired every started session.
            (Command::StopSessions, State::Ready) => !isc && self.started_by_client > 0,
            _ => false,
        };
        if !legal {
            return Err(self.reject_command(command, self.state_name()));
        }
        match command {
            Command::RequestTwSession => self.on_request(msg, ctx),
            Command::StartSessions => self.on_start(msg, ctx),
            Command::StopSessions => self.on_stop(msg, ctx),
            Command::StartNSessions => self.on_start_n(msg, ctx),
            Command::StopNSessions => self.on_stop_n(msg, ctx),
            _ => unreachable!("legal commands are matched above"),
        }
    }

    /// Answers an unknown command, or one not allowed now, with an
    /// Accept-Session carrying Accept 3 (RFC 5357 §3.5), then ends the
    /// connection: the client's next message cannot be framed (unknown
    /// length) or its expected reply would not come, so the stream is not
    /// resumed (perfSONAR closes without answering).
    fn reject_command(&mut self, command: Command, state: &'static str) -> ServerError {
        let answer = AcceptSessionRepr::refusal(Accept::NotSupported).to_bytes();
        if let Err(e) = self.send(answer.to_vec()) {
            return e;
        }
        ServerError::UnexpectedCommand { command, state }
    }

    /// Seals (protected modes) and queues a server message whose HMAC is its
    /// last 16 octets.
    fn send(&mut self, mut msg: Vec<u8>) -> Result<(), ServerError> {
        if let Some(c) = &mut self.crypto {
            let at = msg.len() - control::HMAC_LEN;
            c.tx.seal(&mut msg, at)?;
        }
        self.output.extend_from_slice(&msg);
        Ok(())
    }

    fn refuse_session(&mut self, accept: Accept, reason: &'static str) -> Result<(), ServerError> {
        self.events
            .push_back(ServerEvent::SessionRefused { accept, reason });
        self.send(AcceptSessionRepr::refusal(accept).to_bytes().to_vec())
    }

    fn on_request(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        let req = RequestTwSessionRepr::from_bytes(msg)?;
        let selection = self.selection.expect("Ready implies a selection");
        if let Err(r) = req.check() {
            return self.refuse_session(r.accept, r.field);
        }
        if self.sessions.len() >= self.config.max_sessions as usize {
            return self.refuse_session(
                Accept::TemporaryResourceLimitation,
                "sessions per connection",
            );
        }
        let reflect_octets = selection.has(Modes::REFLECT_OCTETS);
        if reflect_octets && u32::from(req.padding_to_reflect) > req.padding_length {
            // RFC 6038 §4.2: the padding to reflect must fit in the padding.
            return self.refuse_session(Accept::NotSupported, "Length of padding to reflect");
        }
        let Some(dscp) = req.type_p.dscp() else {
            return self.refuse_session(Accept::NotSupported, "Type-P Descriptor");
        };
        let request = SessionRequest {
            sender: SocketAddr::new(req.resolved_sender(self.client.ip()), req.sender_port),
            reflector: SocketAddr::new(
                req.resolved_receiver(unmapped(self.local.ip())),
                req.receiver_port,
            ),
            security: selection.security,
            features: selection.features,
            padding_length: req.padding_length,
            start_time: req.start_time,
            timeout: req.timeout,
            dscp,
            identity: self.identity.clone(),
        };
        let grant = match ctx.allocate_session(&request) {
            Ok(g) => g,
            Err(a) => return self.refuse_session(a, "admission"),
        };
        let mut format = self.config.test_format;
        format.security = selection.security.test_security();
        format.symmetrical_size = selection.has(Modes::SYMMETRICAL_SIZE);
        format.dscp_ecn_monitoring = selection.has(Modes::DSCP_ECN);
        format.timestamp_format = if selection.has(Modes::PTP_TIMESTAMPS) {
            TimeFormat::Ptp
        } else {
            TimeFormat::Ntp
        };
        format.reflect_octets = reflect_octets.then_some(ReflectOctets {
            length: req.padding_to_reflect,
            server_octets: u16::from_be_bytes(grant.server_octets),
        });
        let test_keys = match (&self.crypto, selection.security.test_security()) {
            (Some(c), s) if s != crate::twamp_test::TestSecurity::Unauthenticated => {
                Some(crypto::test_keys::derive_test_keys(&c.keys, &grant.sid.0))
            }
            _ => None,
        };
        let accepted = AcceptedSession {
            sid: grant.sid,
            sender: request.sender,
            reflector: SocketAddr::new(request.reflector.ip(), grant.port),
            security: selection.security,
            format,
            dscp,
            padding_length: req.padding_length,
            start_time: req.start_time,
            timeout: req.timeout,
            test_keys,
        };
        if let Err(a) = ctx.install_session(accepted) {
            return self.refuse_session(a, "data plane");
        }
        self.sessions.push(Session {
            sid: grant.sid,
            timeout: req.timeout,
            started: false,
        });
        let answer = AcceptSessionRepr {
            accept: Accept::Ok,
            port: grant.port,
            sid: grant.sid,
            reflected_octets: if reflect_octets {
                req.octets_to_reflect
            } else {
                [0; 2]
            },
            // RFC 6038 §4.2: MBZ unless Reflect Octets was selected.
            server_octets: if reflect_octets {
                grant.server_octets
            } else {
                [0; 2]
            },
            hmac: [0; 16],
        };
        self.events.push_back(ServerEvent::SessionAccepted {
            sid: grant.sid,
            port: grant.port,
        });
        self.send(answer.to_bytes().to_vec())
    }

    fn on_start(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        StartSessionsRepr::from_bytes(msg)?;
        let mut accept = Accept::Ok;
        // After a partly refused Start-Sessions (Start-Ack ≠ 0) the client may
        // retry: sessions already started are not started twice.
        for s in self.sessions.iter_mut().filter(|s| !s.started) {
            let a = ctx.start_session(s.sid);
            if a.is_ok() {
                s.started = true;
            } else if accept.is_ok() {
                accept = a;
            }
        }
        let started = self.sessions.iter().filter(|s| s.started).count();
        if accept.is_ok() {
            self.state = State::Active;
            self.started_by_client = u32::try_from(started).unwrap_or(u32::MAX);
            self.events
                .push_back(ServerEvent::Started { sessions: started });
        }
        self.send(
            StartAckRepr {
                accept,
                hmac: [0; 16],
            }
            .to_bytes()
            .to_vec(),
        )
    }

    fn on_stop(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        let stop = StopSessionsRepr::from_bytes(msg)?;
        let in_progress = self.started_by_client;
        if stop.number_of_sessions != in_progress {
            // RFC 5357 §3.8: the message is invalid; close (results discarded).
            return Err(ServerError::StopCountMismatch {
                got: stop.number_of_sessions,
                expected: in_progress,
            });
        }
        // Sessions REFWAIT already removed are not stopped again; sessions
        // requested after that expiry and not started stay for the next
        // Start-Sessions.
        let mut stopped = 0;
        self.sessions.retain(|s| {
            if s.started {
                ctx.stop_session(s.sid, s.timeout);
                stopped += 1;
            }
            !s.started
        });
        self.state = State::Ready;
        self.started_by_client = 0;
        self.events
            .push_back(ServerEvent::Stopped { sessions: stopped });
        Ok(())
    }

    /// Groups SIDs by the Accept value the context gives each (RFC 5938 §3.3).
    fn answer_n(
        &mut self,
        command: Command,
        sids: &[Sid],
        mut act: impl FnMut(&mut Self, Sid) -> Accept,
    ) -> Result<(), ServerError> {
        let mut groups: Vec<(Accept, Vec<Sid>)> = Vec::new();
        for &sid in sids {
            let a = act(self, sid);
            match groups.iter_mut().find(|(g, _)| *g == a) {
                Some((_, v)) => v.push(sid),
                None => groups.push((a, vec![sid])),
            }
        }
        for (accept, sids) in groups {
            self.events.push_back(ServerEvent::NAck {
                command,
                accept,
                sessions: sids.len(),
            });
            let bytes = if command == Command::StartNSessions {
                StartNAckRepr {
                    accept,
                    sids,
                    hmac: [0; 16],
                }
                .to_bytes()
            } else {
                StopNAckRepr {
                    accept,
                    sids,
                    hmac: [0; 16],
                }
                .to_bytes()
            };
            self.send(bytes)?;
        }
        Ok(())
    }

    fn on_start_n(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        let start = StartNSessionsRepr::from_bytes(msg)?;
        if let Err(r) = start.check() {
            return Err(ServerError::Wire(WireError::BadField {
                what: r.what,
                field: r.field,
                value: r.value,
            }));
        }
        self.answer_n(Command::StartNSessions, &start.sids, |s, sid| {
            match s.sessions.iter_mut().find(|x| x.sid == sid) {
                None => Accept::Failure,
                Some(x) if x.started => Accept::Ok,
                Some(x) => {
                    let a = ctx.start_session(sid);
                    x.started = a.is_ok();
                    a
                }
            }
        })
    }

    fn on_stop_n(&mut self, msg: &[u8], ctx: &mut dyn ServerContext) -> Result<(), ServerError> {
        let stop = StopNSessionsRepr::from_bytes(msg)?;
        if let Err(r) = stop.check() {
            return Err(ServerError::Wire(WireError::BadField {
                what: r.what,
                field: r.field,
                value: r.value,
            }));
        }
        self.answer_n(Command::StopNSessions, &stop.sids, |s, sid| {
            match s.sessions.iter().position(|x| x.sid == sid) {
                None => Accept::Failure,
                Some(i) => {
                    let x = s.sessions.remove(i);
                    ctx.stop_session(sid, x.timeout);
                    Accept::Ok
                }
            }
        })
    }
}

/// An IPv4-mapped IPv6 address as IPv4 (dual-stack listeners).
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
