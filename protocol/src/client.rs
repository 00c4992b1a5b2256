//! The TWAMP-Control client state machine (RFC 5357 §3, RFC 4656 §3,
//! RFC 5618, RFC 5938, RFC 6038, RFC 7717 key source), sans-IO.
//!
//! The outer loop connects, feeds every octet read to [`Client::receive`],
//! writes [`Client::pending_output`], and reacts to [`ClientEvent`]s. Once the
//! connection is [`ClientEvent::Ready`] it calls [`Client::request_session`],
//! [`Client::start_sessions`] / [`Client::stop_sessions`] (or their RFC 5938
//! N forms). Randomness (session keys, Client-IV) comes in through
//! [`ClientRandom`], so a captured session replays octet for octet.

use std::collections::VecDeque;

use thiserror::Error;

use crate::accept::Accept;
use crate::control::{
    self, AcceptSessionRepr, Command, RequestTwSessionRepr, ServerGreetingRepr, ServerReply,
    ServerStartRepr, SetUpResponseRepr, Sid, StartAckRepr, StartNAckRepr, StartNSessionsRepr,
    StartSessionsRepr, StopNAckRepr, StopNSessionsRepr, StopSessionsRepr,
};
use crate::crypto::{
    self, ControlRx, ControlTx, CryptoError, SessionKeys, SharedSecret, TestKeys,
    TokenKeyDerivation,
};
use crate::error::WireError;
use crate::inbox::Inbox;
use crate::modes::{self, Modes, Selection};
use crate::server::KeyId;
use crate::time::NtpTimestamp;

/// What the client may and wants to do.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Security modes the user allows (bits 0–3); the most secure one the
    /// server offers is chosen (Encrypted > Authenticated > Mixed > Open).
    pub allowed: Modes,
    /// Feature bits (4–9) to select when the server offers them.
    pub wanted: Modes,
    /// Key ID (identity, or SPIi‖SPIr in RFC 7717 mode) for protected modes.
    pub key_id: Option<KeyId>,
    pub secret: Option<SharedSecret>,
    /// Largest PBKDF2 count accepted from a server (RFC 5357 §6: DoS guard).
    pub max_count: u32,
    /// Bound on N in the N-acknowledgements read.
    pub max_sessions: u32,
}

/// Random values the client draws per connection.
pub struct ClientRandom {
    pub session_keys: SessionKeys,
    pub client_iv: [u8; 16],
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Set-Up-Response sent with this selection.
    SetupSent {
        selection: Selection,
        offered: Modes,
    },
    /// Server-Start accepted: commands may be sent.
    Ready {
        server_start_time: NtpTimestamp,
    },
    /// Server-Start refused the set-up; the connection is over.
    Refused {
        accept: Accept,
    },
    /// Answer to the request with this tag (requests are numbered from 0).
    SessionAccepted {
        tag: u32,
        port: u16,
        sid: Sid,
        reflected_octets: [u8; 2],
        server_octets: [u8; 2],
    },
    SessionRefused {
        tag: u32,
        accept: Accept,
    },
    StartAck {
        accept: Accept,
    },
    NAck {
        command: Command,
        accept: Accept,
        sids: Vec<Sid>,
    },
}

/// Errors that end the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    #[error("malformed server message: {0}")]
    Wire(#[from] WireError),
    #[error("server message failed its integrity check: {0}")]
    Crypto(#[from] CryptoError),
    #[error("the server offers no mode we allow (offered {offered})")]
    NoCommonMode { offered: Modes },
    #[error("the server asks for PBKDF2 count {count}, above our limit {max}")]
    CountTooHigh { count: u32, max: u32 },
    #[error("protected mode chosen but no Key ID or secret configured")]
    NoKey,
    #[error("the server does not offer the IKEv2-derived mode (RFC 7717) our key needs (offered {offered})")]
    Ikev2NotOffered { offered: Modes },
    #[error("the server refused the set-up with Accept {0:?}")]
    Refused(Accept),
    #[error("{0} is not possible in this state")]
    NotNow(&'static str),
    #[error("the server sent data nobody asked for")]
    Unsolicited,
    #[error("the connection is closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitGreeting,
    AwaitServerStart,
    Ready,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept {
        tag: u32,
    },
    StartAck,
    /// An N-Ack carrying `remaining` more SIDs in total.
    NAck {
        reply: ServerReply,
        remaining: usize,
    },
}

struct Crypto {
    rx: ControlRx,
    tx: ControlTx,
}

/// One TWAMP-Control connection, client side.
pub struct Client {
    config: ClientConfig,
    random: ClientRandom,
    state: State,
    selection: Option<Selection>,
    crypto: Option<Crypto>,
    input: Inbox,
    output: Vec<u8>,
    events: VecDeque<ClientEvent>,
    expect: VecDeque<Expect>,
    next_tag: u32,
    started: u32,
    /// Set by [`Client::use_ikev2_key`]: the Key ID is SPIi ‖ SPIr and the
    /// secret an RFC 7717 one, derived into the token key this way.
    ikev2: Option<TokenKeyDerivation>,
    /// Between Start-Sessions and Stop-Sessions (not in ISC mode): a
    /// Stop-Sessions is due. (Requests are not refused meanwhile: the server
    /// accepts them again once REFWAIT has ended every session.)
    active: bool,
}

impl Client {
    pub fn new(config: ClientConfig, random: ClientRandom) -> Self {
        Client {
            config,
            random,
            state: State::AwaitGreeting,
            selection: None,
            crypto: None,
            input: Inbox::default(),
            output: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::new(),
            next_tag: 0,
            started: 0,
            ikev2: None,
            active: false,
        }
    }

    /// Marks the configured Key ID and secret as an IKEv2-derived key
    /// (RFC 7717): the Key ID must be SPIi ‖ SPIr of the IKE SA
    /// (`crypto::ikev2::rfc7717_key_id`) and the secret
    /// `prf(SK_d, "IPPM")`. The client then selects the IKEv2-derived Mode
    /// bit with a protected security mode, refuses a server that does not
    /// offer it ([`ClientError::Ikev2NotOffered`], answered with Mode 0), and
    /// derives the token key as `how` says. Call before the greeting arrives.
    pub fn use_ikev2_key(&mut self, how: TokenKeyDerivation) {
        self.ikev2 = Some(how);
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn selection(&self) -> Option<Selection> {
        self.selection
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    pub fn wants_close(&self) -> bool {
        self.state == State::Closed
    }

    /// True while answers are outstanding.
    pub fn awaiting_reply(&self) -> bool {
        !self.expect.is_empty()
    }

    /// The test keys of a session (authenticated and encrypted modes).
    pub fn test_keys(&self, sid: &Sid) -> Option<TestKeys> {
        let sel = self.selection?;
        (sel.security.test_security() != crate::twamp_test::TestSecurity::Unauthenticated)
            .then(|| TestKeys::derive(&self.random.session_keys, &sid.0))
    }

    pub fn receive(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if self.state == State::Closed {
            return Err(ClientError::Closed);
        }
        self.input.push(data);
        let r = self.process();
        if r.is_err() {
            self.state = State::Closed;
        }
        r
    }

    fn process(&mut self) -> Result<(), ClientError> {
        loop {
            match self.state {
                State::Closed => return Ok(()),
                State::AwaitGreeting => {
                    let Some(msg) = self.input.take(control::greeting::LEN) else {
                        return Ok(());
                    };
                    self.on_greeting(&msg)?;
                }
                State::AwaitServerStart => {
                    let Some(mut msg) = self.input.take(control::server_start::LEN) else {
                        return Ok(());
                    };
                    self.on_server_start(&mut msg)?;
                }
                State::Ready => {
                    let Some(&expect) = self.expect.front() else {
                        if self.input.is_empty() {
                            return Ok(());
                        }
                        return Err(ClientError::Unsolicited);
                    };
                    let Some(msg) = self.next_reply(expect)? else {
                        return Ok(());
                    };
                    self.on_reply(expect, &msg)?;
                }
            }
        }
    }

    fn on_greeting(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        let g = ServerGreetingRepr::from_bytes(msg)?;
        let offered = g.modes;
        let has_key = self.config.key_id.is_some() && self.config.secret.is_some();
        let allowed = if has_key {
            self.config.allowed
        } else {
            self.config.allowed & Modes::UNAUTHENTICATED
        };
        let (allowed, wanted) = match self.ikev2 {
            Some(_) => {
                if !offered.contains(Modes::IKEV2_DERIVED) {
                    return Err(self.quit(ClientError::Ikev2NotOffered { offered }));
                }
                // The secret is only good for the protected modes.
                (
                    allowed.difference(Modes::UNAUTHENTICATED),
                    self.config.wanted | Modes::IKEV2_DERIVED,
                )
            }
            None => (allowed, self.config.wanted),
        };
        let Some(selection) = modes::choose(offered, allowed, wanted) else {
            return Err(self.quit(ClientError::NoCommonMode { offered }));
        };
        let setup = if selection.security.protects_control() {
            if g.count > self.config.max_count {
                return Err(self.quit(ClientError::CountTooHigh {
                    count: g.count,
                    max: self.config.max_count,
                }));
            }
            let (Some(key_id), Some(secret)) = (self.config.key_id, &self.config.secret) else {
                return Err(self.quit(ClientError::NoKey));
            };
            let how = self.ikev2.unwrap_or_default();
            let token_key = crypto::derive_token_key(secret, &g.salt, g.count, how)?;
            let token = crypto::seal_token(&token_key, &g.challenge, &self.random.session_keys);
            self.crypto = Some(Crypto {
                rx: ControlRx::new(&self.random.session_keys, &[0; 16]),
                tx: ControlTx::new(&self.random.session_keys, &self.random.client_iv),
            });
            SetUpResponseRepr {
                mode: selection.modes(),
                key_id,
                token,
                client_iv: self.random.client_iv,
            }
        } else {
            SetUpResponseRepr {
                mode: selection.modes(),
                key_id: [0; 80],
                token: [0; 64],
                client_iv: [0; 16],
            }
        };
        self.output.extend_from_slice(&setup.to_bytes());
        self.selection = Some(selection);
        self.state = State::AwaitServerStart;
        self.events
            .push_back(ClientEvent::SetupSent { selection, offered });
        Ok(())
    }

    /// Declines the greeting with Mode 0 so the server can close at once
    /// (RFC 4656 §3.1), and ends the connection with `error`.
    fn quit(&mut self, error: ClientError) -> ClientError {
        let quit = SetUpResponseRepr {
            mode: Modes::NONE,
            key_id: [0; 80],
            token: [0; 64],
            client_iv: [0; 16],
        };
        self.output.extend_from_slice(&quit.to_bytes());
        self.state = State::Closed;
        error
    }

    fn on_server_start(&mut self, msg: &mut [u8]) -> Result<(), ClientError> {
        let accept = Accept::from(msg[15]);
        if !accept.is_ok() {
            self.events.push_back(ClientEvent::Refused { accept });
            self.state = State::Closed;
            return Err(ClientError::Refused(accept));
        }
        if let Some(c) = &mut self.crypto {
            // The Server-IV is only known now: restart the receive stream with it.
            let mut iv = [0u8; 16];
            iv.copy_from_slice(&msg[16..32]);
            c.rx = ControlRx::new(&self.random.session_keys, &iv);
            c.rx.open_without_hmac(&mut msg[32..48])?;
        }
        let start = ServerStartRepr::from_bytes(msg)?;
        self.state = State::Ready;
        self.events.push_back(ClientEvent::Ready {
            server_start_time: start.start_time,
        });
        Ok(())
    }

    fn next_reply(&mut self, expect: Expect) -> Result<Option<Vec<u8>>, ClientError> {
        let Some(first) = self
            .input
            .first_block(self.crypto.as_mut().map(|c| &mut c.rx))?
        else {
            return Ok(None);
        };
        let reply = match expect {
            Expect::Accept { .. } => ServerReply::AcceptSession,
            Expect::StartAck => ServerReply::StartAck,
            Expect::NAck { reply, .. } => reply,
        };
        let len = control::server_reply_len(reply, &first, self.config.max_sessions)?;
        Ok(self
            .input
            .message(len, self.crypto.as_mut().map(|c| &mut c.rx))?)
    }

    fn on_reply(&mut self, expect: Expect, msg: &[u8]) -> Result<(), ClientError> {
        self.expect.pop_front();
        match expect {
            Expect::Accept { tag } => {
                let a = AcceptSessionRepr::from_bytes(msg)?;
                self.events.push_back(if a.accept.is_ok() {
                    ClientEvent::SessionAccepted {
                        tag,
                        port: a.port,
                        sid: a.sid,
                        reflected_octets: a.reflected_octets,
                        server_octets: a.server_octets,
                    }
                } else {
                    ClientEvent::SessionRefused {
                        tag,
                        accept: a.accept,
                    }
                });
            }
            Expect::StartAck => {
                let a = StartAckRepr::from_bytes(msg)?;
                // A refused start leaves nothing to stop.
                self.active = a.accept.is_ok();
                self.events
                    .push_back(ClientEvent::StartAck { accept: a.accept });
            }
            Expect::NAck { reply, remaining } => {
                let (command, accept, sids) = if reply == ServerReply::StartNAck {
                    let a = StartNAckRepr::from_bytes(msg)?;
                    (Command::StartNSessions, a.accept, a.sids)
                } else {
                    let a = StopNAckRepr::from_bytes(msg)?;
                    (Command::StopNSessions, a.accept, a.sids)
                };
                if sids.len() > remaining {
                    return Err(ClientError::Unsolicited);
                }
                if sids.len() < remaining {
                    // The server splits its answer by Accept value (RFC 5938 §3.3).
                    self.expect.push_front(Expect::NAck {
                        reply,
                        remaining: remaining - sids.len(),
                    });
                }
                self.events.push_back(ClientEvent::NAck {
                    command,
                    accept,
                    sids,
                });
            }
        }
        Ok(())
    }

    fn send(&mut self, mut msg: Vec<u8>) -> Result<(), ClientError> {
        if let Some(c) = &mut self.crypto {
            let at = msg.len() - control::HMAC_LEN;
            c.tx.seal(&mut msg, at)?;
        }
        self.output.extend_from_slice(&msg);
        Ok(())
    }

    fn check_ready(&self, what: &'static str) -> Result<(), ClientError> {
        if self.state == State::Ready {
            Ok(())
        } else {
            Err(ClientError::NotNow(what))
        }
    }

    /// Ready, and the command belongs to the negotiated control mode:
    /// Start-N/Stop-N only with Individual Session Control, Start- and
    /// Stop-Sessions only without it (RFC 5938 §2). A server closes the
    /// connection on the wrong one.
    fn check_mode(&self, what: &'static str, isc_command: bool) -> Result<(), ClientError> {
        self.check_ready(what)?;
        let isc = self
            .selection
            .is_some_and(|s| s.has(Modes::INDIVIDUAL_SESSION_CONTROL));
        if isc == isc_command {
            Ok(())
        } else {
            Err(ClientError::NotNow(what))
        }
    }

    /// Queues a Request-TW-Session; its answer comes as an event with the
    /// returned tag.
    pub fn request_session(&mut self, request: &RequestTwSessionRepr) -> Result<u32, ClientError> {
        self.check_ready("Request-TW-Session")?;
        self.send(request.to_bytes().to_vec())?;
        let tag = self.next_tag;
        self.next_tag += 1;
        self.expect.push_back(Expect::Accept { tag });
        Ok(tag)
    }

    /// Start-Sessions: starts every accepted session (not in ISC mode).
    pub fn start_sessions(&mut self, accepted: u32) -> Result<(), ClientError> {
        self.check_mode("Start-Sessions", false)?;
        self.send(StartSessionsRepr { hmac: [0; 16] }.to_bytes().to_vec())?;
        self.started = accepted;
        self.active = true;
        self.expect.push_back(Expect::StartAck);
        Ok(())
    }

    /// Stop-Sessions with the given Accept (0 = normal end); no answer comes.
    /// Only after Start-Sessions (not in ISC mode).
    pub fn stop_sessions(&mut self, accept: Accept) -> Result<(), ClientError> {
        self.check_mode("Stop-Sessions", false)?;
        if !self.active {
            return Err(ClientError::NotNow("Stop-Sessions"));
        }
        let stop = StopSessionsRepr {
            accept,
            number_of_sessions: self.started,
            hmac: [0; 16],
        };
        self.send(stop.to_bytes().to_vec())?;
        self.started = 0;
        self.active = false;
        Ok(())
    }

    /// Start-N-Sessions (RFC 5938; Individual Session Control mode only).
    pub fn start_n(&mut self, sids: &[Sid]) -> Result<(), ClientError> {
        self.check_mode("Start-N-Sessions", true)?;
        self.send(
            StartNSessionsRepr {
                sids: sids.to_vec(),
                hmac: [0; 16],
            }
            .to_bytes(),
        )?;
        self.expect.push_back(Expect::NAck {
            reply: ServerReply::StartNAck,
            remaining: sids.len(),
        });
        Ok(())
    }

    /// Stop-N-Sessions (RFC 5938; Individual Session Control mode only).
    pub fn stop_n(&mut self, sids: &[Sid]) -> Result<(), ClientError> {
        self.check_mode("Stop-N-Sessions", true)?;
        self.send(
            StopNSessionsRepr {
                sids: sids.to_vec(),
                hmac: [0; 16],
            }
            .to_bytes(),
        )?;
        self.expect.push_back(Expect::NAck {
            reply: ServerReply::StopNAck,
            remaining: sids.len(),
        });
        Ok(())
    }
}
