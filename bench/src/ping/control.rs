//! The TWAMP-Control connection of the client: the sans-IO
//! [`Client`] state machine driven over a blocking TCP stream with timeouts
//! (RFC 5357 §3, RFC 4656 §3, RFC 5938 for Start-N/Stop-N).
//!
//! Random values (session keys and Client-IV, RFC 4656 §3.1) come from the
//! operating system's CSPRNG.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rand::rngs::OsRng;
use rand::TryRngCore;
use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientError, ClientEvent, ClientRandom};
use ricochet_protocol::control::{Command, RequestTwSessionRepr, Sid};
use ricochet_protocol::crypto::{SessionKeys, TestKeys, TokenKeyDerivation};
use ricochet_protocol::modes::{Modes, Selection};
use ricochet_protocol::time::NtpTimestamp;
use zeroize::Zeroizing;

use super::PingError;

/// Largest PBKDF2 iteration count accepted from a server (RFC 5357 §6: a
/// client bounds the work a server can make it do). perfSONAR offers 2048.
pub const MAX_PBKDF2_COUNT: u32 = 1 << 15;

/// What the server answered to one Request-TW-Session (RFC 5357 §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAnswer {
    /// Accept 0: the reflector port, the SID and the RFC 6038 octets.
    Accepted {
        port: u16,
        sid: Sid,
        reflected_octets: [u8; 2],
        server_octets: [u8; 2],
    },
    /// A non-zero Accept.
    Refused(Accept),
}

/// The set-up's outcome: the mode chosen and what the server offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    pub selection: Selection,
    pub offered: Modes,
    pub server_start_time: NtpTimestamp,
}

/// One TWAMP-Control connection, client side.
pub struct ControlConnection {
    stream: TcpStream,
    client: Client,
    io_timeout: Duration,
    local: SocketAddr,
    peer: SocketAddr,
    offered: Option<Modes>,
    allowed: Modes,
    have_key: bool,
    buf: Vec<u8>,
}

/// `N` octets from the operating system's CSPRNG.
pub fn os_random<const N: usize>() -> Result<Zeroizing<[u8; N]>, PingError> {
    let mut b = Zeroizing::new([0u8; N]);
    OsRng
        .try_fill_bytes(&mut b[..])
        .map_err(|e| PingError::Random(e.to_string()))?;
    Ok(b)
}

impl ControlConnection {
    /// Connects to `server` (within `io_timeout`) and prepares the client
    /// with fresh random session keys and Client-IV.
    pub fn connect(
        server: SocketAddr,
        config: ClientConfig,
        io_timeout: Duration,
    ) -> Result<ControlConnection, PingError> {
        let stream = TcpStream::connect_timeout(&server, io_timeout)
            .map_err(|source| PingError::Connect { server, source })?;
        let ctl = |what: &'static str| move |source| PingError::ControlIo { what, source };
        stream.set_nodelay(true).map_err(ctl("set TCP_NODELAY"))?;
        stream
            .set_write_timeout(Some(io_timeout))
            .map_err(ctl("set the write timeout"))?;
        let local = stream.local_addr().map_err(ctl("read the local address"))?;
        let keys = os_random::<{ SessionKeys::LEN }>()?;
        let iv = os_random::<16>()?;
        let random = ClientRandom {
            session_keys: SessionKeys::from_bytes(&keys),
            client_iv: *iv,
        };
        let allowed = config.allowed;
        let have_key = config.key_id.is_some() && config.secret.is_some();
        Ok(ControlConnection {
            stream,
            client: Client::new(config, random),
            io_timeout,
            local,
            peer: server,
            offered: None,
            allowed,
            have_key,
            buf: vec![0; 4096],
        })
    }

    /// The configured key is IKEv2-derived (RFC 7717): select 0x80 and
    /// derive the token key as `how` says.
    pub fn use_ikev2_key(&mut self, how: TokenKeyDerivation) {
        self.client.use_ikev2_key(how);
    }

    /// Our end of the control connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's end.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The test keys of an accepted session (authenticated and encrypted
    /// modes, RFC 4656 §4.1.2 / RFC 5357 §4.1.2).
    pub fn test_keys(&self, sid: &Sid) -> Option<TestKeys> {
        self.client.test_keys(sid)
    }

    fn flush(&mut self) -> Result<(), PingError> {
        let out = self.client.pending_output();
        if out.is_empty() {
            return Ok(());
        }
        let n = out.len();
        self.stream
            .write_all(out)
            .map_err(|source| PingError::ControlIo {
                what: "send a control message",
                source,
            })?;
        self.client.consume_output(n);
        Ok(())
    }

    fn map_error(&self, e: ClientError) -> PingError {
        match e {
            ClientError::NoCommonMode { offered } => PingError::NoCommonMode {
                offered,
                allowed: self.allowed,
                have_key: self.have_key,
            },
            ClientError::Refused(accept) => PingError::SetupRefused {
                accept,
                protected: self.have_key,
            },
            ClientError::Ikev2NotOffered { offered } => PingError::Ikev2NotOffered { offered },
            other => PingError::Control(other),
        }
    }

    /// Waits for the next client event, reading from the server as needed.
    fn next_event(&mut self, waiting_for: &'static str) -> Result<ClientEvent, PingError> {
        let deadline = Instant::now() + self.io_timeout;
        loop {
            if let Some(ev) = self.client.poll_event() {
                if let ClientEvent::SetupSent { offered, .. } = ev {
                    self.offered = Some(offered);
                }
                return Ok(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PingError::ControlTimeout { waiting_for });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| PingError::ControlIo {
                    what: "set the read timeout",
                    source,
                })?;
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(PingError::ControlClosed { waiting_for }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(PingError::ControlTimeout { waiting_for })
                }
                Err(source) => {
                    return Err(PingError::ControlIo {
                        what: "read from the server",
                        source,
                    })
                }
            };
            let data = self.buf[..n].to_vec();
            let r = self.client.receive(&data);
            // Flush even after an error: a Mode-0 "quit" may be queued.
            let flushed = self.flush();
            r.map_err(|e| self.map_error(e))?;
            flushed?;
        }
    }

    /// Reads the Server Greeting, sends the Set-Up-Response and reads the
    /// Server-Start (RFC 4656 §3.1).
    pub fn handshake(&mut self) -> Result<Established, PingError> {
        let mut selection = None;
        loop {
            match self.next_event("the Server Greeting and Server-Start")? {
                ClientEvent::SetupSent { selection: s, .. } => selection = Some(s),
                ClientEvent::Ready { server_start_time } => {
                    let selection =
                        selection
                            .or(self.client.selection())
                            .ok_or(PingError::Control(ClientError::NotNow(
                                "Server-Start before set-up",
                            )))?;
                    return Ok(Established {
                        selection,
                        offered: self.offered.unwrap_or_default(),
                        server_start_time,
                    });
                }
                ClientEvent::Refused { accept } => {
                    return Err(PingError::SetupRefused {
                        accept,
                        protected: self.have_key,
                    })
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Sends Request-TW-Session and waits for its Accept-Session.
    pub fn request(&mut self, req: &RequestTwSessionRepr) -> Result<SessionAnswer, PingError> {
        let tag = self
            .client
            .request_session(req)
            .map_err(PingError::Control)?;
        self.flush()?;
        match self.next_event("Accept-Session")? {
            ClientEvent::SessionAccepted {
                tag: t,
                port,
                sid,
                reflected_octets,
                server_octets,
            } if t == tag => Ok(SessionAnswer::Accepted {
                port,
                sid,
                reflected_octets,
                server_octets,
            }),
            ClientEvent::SessionRefused { tag: t, accept } if t == tag => {
                Ok(SessionAnswer::Refused(accept))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Start-Sessions and its Start-Ack (RFC 5357 §3.7).
    pub fn start(&mut self, accepted: u32) -> Result<(), PingError> {
        self.client
            .start_sessions(accepted)
            .map_err(PingError::Control)?;
        self.flush()?;
        match self.next_event("Start-Ack")? {
            ClientEvent::StartAck { accept } if accept.is_ok() => Ok(()),
            ClientEvent::StartAck { accept } => Err(PingError::StartRefused { accept }),
            other => Err(unexpected(other)),
        }
    }

    /// Stop-Sessions with Accept 0 (RFC 5357 §3.8); no answer comes.
    pub fn stop(&mut self) -> Result<(), PingError> {
        self.client
            .stop_sessions(Accept::Ok)
            .map_err(PingError::Control)?;
        self.flush()
    }

    /// Start-N-Sessions (RFC 5938 §3.2) and its Start-N-Acks: the Accept of
    /// every SID, in the order the server grouped them.
    pub fn start_n(&mut self, sids: &[Sid]) -> Result<Vec<(Sid, Accept)>, PingError> {
        self.client.start_n(sids).map_err(PingError::Control)?;
        self.flush()?;
        self.n_acks(Command::StartNSessions, sids.len(), "Start-N-Ack")
    }

    /// Stop-N-Sessions (RFC 5938 §3.4) and its Stop-N-Acks.
    pub fn stop_n(&mut self, sids: &[Sid]) -> Result<Vec<(Sid, Accept)>, PingError> {
        self.client.stop_n(sids).map_err(PingError::Control)?;
        self.flush()?;
        self.n_acks(Command::StopNSessions, sids.len(), "Stop-N-Ack")
    }

    fn n_acks(
        &mut self,
        command: Command,
        n: usize,
        what: &'static str,
    ) -> Result<Vec<(Sid, Accept)>, PingError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event(what)? {
                ClientEvent::NAck {
                    command: c,
                    accept,
                    sids,
                } if c == command => out.extend(sids.into_iter().map(|s| (s, accept))),
                other => return Err(unexpected(other)),
            }
        }
        Ok(out)
    }

    /// Closes the connection (RFC 5357 §3.8: the client closes after
    /// Stop-Sessions).
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn unexpected(ev: ClientEvent) -> PingError {
    PingError::UnexpectedAnswer(format!("{ev:?}"))
}
