//! `ricochet-ping --ike PEER`: bring up a childless IKEv2 SA (RFC 7296,
//! RFC 6023) with the server through the `ike` crate's initiator on a real
//! UDP socket, and key the TWAMP connection from it (RFC 7717 §5.1 rule 8:
//! a client without an IKE SA may bring one up first, and logs it).
//!
//! The SA lives for one run: it is deleted (INFORMATIONAL Delete) when the
//! run ends. Connections already keyed from it keep their keys (RFC 7717
//! §5.1). To reuse a long-lived SA, let an IKE daemon keep it and pass its
//! record with `--ikev2-key-file`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ricochet_ike::{
    Config as IkeConfig, Endpoint, Event, IkeSaInfo, InitiateParams, OsRng, PskAuthenticator,
    PskStore,
};
use ricochet_protocol::crypto::{SharedSecret, TokenKeyDerivation};
use ricochet_protocol::sa_records::SaId;

use super::ikev2::Ikev2Key;
use super::PingError;

/// How to reach and authenticate to the server's IKE responder.
#[derive(Debug, Clone)]
pub struct IkeOptions {
    /// The responder (port 500 unless given).
    pub peer: SocketAddr,
    /// Our identity (IDi), an FQDN.
    pub local_id: String,
    /// The responder's identity (IDr): sent, checked, and the name its PSK
    /// is found under.
    pub peer_id: Option<String>,
    /// PSK file (`IDENTITY SECRET` per line; the responder's identity or
    /// `*`), mode 0600.
    pub psk_file: PathBuf,
    /// Time allowed for IKE_SA_INIT + IKE_AUTH (retransmissions included).
    pub timeout: Duration,
    /// Token-key reading the server uses.
    pub token_key: TokenKeyDerivation,
}

/// The initiator on its socket.
struct Driver {
    endpoint: Endpoint,
    socket: UdpSocket,
    local: SocketAddr,
    peer: SocketAddr,
    rng: OsRng,
}

/// An IKE SA this run brought up; deleted by [`IkeRun::close`].
pub struct IkeRun {
    driver: Driver,
    /// The established SA.
    pub info: IkeSaInfo,
}

impl std::fmt::Debug for IkeRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeRun")
            .field("local", &self.driver.local)
            .field("peer", &self.driver.peer)
            .field("info", &self.info)
            .finish()
    }
}

fn ike_err(why: impl Into<String>) -> PingError {
    PingError::Ike(why.into())
}

impl IkeRun {
    /// Runs IKE_SA_INIT and IKE_AUTH (childless) with `opts.peer`.
    pub fn establish(opts: &IkeOptions) -> Result<(IkeRun, Ikev2Key), PingError> {
        let psks = PskStore::load(&opts.psk_file).map_err(|e| ike_err(e.to_string()))?;
        let bind: SocketAddr = if opts.peer.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let io =
            |what: &'static str| move |e: std::io::Error| ike_err(format!("cannot {what}: {e}"));
        let socket = UdpSocket::bind(bind).map_err(io("open a UDP socket"))?;
        socket
            .connect(opts.peer)
            .map_err(io("reach the IKE peer"))?;
        // The source address the kernel picked: NAT detection hashes it.
        let local = socket.local_addr().map_err(io("read the local address"))?;
        let config = IkeConfig::new(ricochet_ike::Identification::fqdn(&opts.local_id));
        let mut rng = OsRng;
        let mut endpoint =
            Endpoint::new(config, Box::new(PskAuthenticator { store: psks }), &mut rng);
        let start = Instant::now();
        endpoint
            .initiate(
                start,
                &mut rng,
                InitiateParams {
                    local,
                    peer: opts.peer,
                    peer_id: opts
                        .peer_id
                        .as_deref()
                        .map(ricochet_ike::Identification::fqdn),
                    child: None,
                },
            )
            .map_err(|e| ike_err(e.to_string()))?;
        let mut driver = Driver {
            endpoint,
            socket,
            local,
            peer: opts.peer,
            rng,
        };
        let deadline = start + opts.timeout;
        let info = driver.pump_until(deadline, |ev| match ev {
            Event::IkeSaEstablished(info) => Some(Ok(info)),
            Event::IkeSaDeleted { reason, .. } => Some(Err(ike_err(format!(
                "IKE SA with {} not established: {reason:?}",
                opts.peer
            )))),
            _ => None,
        })?;
        let info = info.ok_or_else(|| {
            ike_err(format!(
                "no IKE answer from {} within {:?} (is an IKEv2 responder running there?)",
                opts.peer, opts.timeout
            ))
        })??;
        let sa = SaId {
            spi_i: info.spi_i,
            spi_r: info.spi_r,
        };
        let key = Ikev2Key {
            sa,
            secret: SharedSecret::from_slice(&info.ippm_key()),
            token_key: opts.token_key,
        };
        log_established(&key);
        Ok((IkeRun { driver, info }, key))
    }

    /// Deletes the SA (waits at most `wait` for the peer's answer).
    pub fn close(mut self, wait: Duration) {
        let d = &mut self.driver;
        let (i, r) = (self.info.spi_i, self.info.spi_r);
        if d.endpoint
            .delete_ike_sa(Instant::now(), &mut d.rng, i, r)
            .is_ok()
        {
            let _ = d.pump_until(Instant::now() + wait, |ev| match ev {
                Event::IkeSaDeleted { .. } => Some(()),
                _ => None,
            });
        }
    }
}

/// RFC 7717 §5.1 rule 8: bringing up an IKE SA for the test is logged.
fn log_established(key: &Ikev2Key) {
    eprintln!(
        "ricochet-ping: IKE SA {} established for RFC 7717 keys",
        key.sa
    );
}

impl Driver {
    /// Moves datagrams and timers until `pick` returns something for an
    /// event, or `deadline`. `Ok(None)`: the deadline passed.
    fn pump_until<T>(
        &mut self,
        deadline: Instant,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<Option<T>, PingError> {
        let mut buf = vec![0u8; 9000];
        loop {
            while let Some(t) = self.endpoint.poll_transmit() {
                if t.local != self.local || t.remote != self.peer {
                    return Err(ike_err(format!(
                        "the IKE SA wants to move to {} -> {} (NAT detected); --ike supports \
                         only paths without NAT",
                        t.local, t.remote
                    )));
                }
                // A lost datagram is retransmitted by the endpoint.
                let _ = self.socket.send(&t.data);
            }
            while let Some(ev) = self.endpoint.poll_event() {
                if let Some(v) = pick(ev) {
                    return Ok(Some(v));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let next = self
                .endpoint
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            let wait = next
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let _ = self.socket.set_read_timeout(Some(wait));
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let now = Instant::now();
                    self.endpoint.handle_datagram(
                        now,
                        &mut self.rng,
                        self.local,
                        self.peer,
                        &buf[..n],
                    );
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                            // ICMP port unreachable from a previous send.
                            | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    self.endpoint.handle_timeout(Instant::now(), &mut self.rng);
                }
                Err(e) => return Err(ike_err(format!("IKE receive: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ping::cli::Args;
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["ricochet-ping", "-A", "enc"];
        argv.extend_from_slice(extra);
        argv.push("198.51.100.7");
        Args::try_parse_from(argv)
    }

    #[test]
    fn ike_options_from_the_command_line() {
        let base = [
            "--ike-id",
            "probe.test",
            "--ike-peer-id",
            "twamp.test",
            "--ike-psk-file",
            "/nonexistent.psk",
        ];
        for (peer, want) in [
            ("198.51.100.9", "198.51.100.9:500"),
            ("198.51.100.9:4501", "198.51.100.9:4501"),
            ("[2001:db8::9]", "[2001:db8::9]:500"),
            ("[2001:db8::9]:600", "[2001:db8::9]:600"),
            ("2001:db8::9", "[2001:db8::9]:500"),
        ] {
            let a = args(&[&["--ike", peer][..], &base].concat()).expect(peer);
            let (c, _) = a.to_config().expect("config");
            let o = c.ike.expect("ike options");
            assert_eq!(o.peer.to_string(), want, "{peer}");
            assert_eq!(o.local_id, "probe.test");
            assert_eq!(o.peer_id.as_deref(), Some("twamp.test"));
            assert!(c.ikev2.is_none() && c.credentials.is_none());
        }
        // Every part is required, and a key file cannot be mixed in.
        for missing in ["--ike-id", "--ike-peer-id", "--ike-psk-file"] {
            let mut v = vec!["--ike", "198.51.100.9"];
            let mut it = base.iter();
            while let Some(flag) = it.next() {
                let value = it.next().expect("value");
                if *flag != missing {
                    v.extend([*flag, *value]);
                }
            }
            assert!(args(&v).is_err(), "without {missing}");
        }
        assert!(
            args(&[&["--ike", "198.51.100.9", "-u", "a", "-k", "k"][..], &base].concat()).is_err()
        );
        // Open mode only cannot use an IKEv2 key.
        let a = Args::try_parse_from(
            [
                &["ricochet-ping", "-A", "open", "--ike", "198.51.100.9"][..],
                &base,
                &["198.51.100.7"],
            ]
            .concat(),
        )
        .expect("parses");
        assert!(a.to_config().is_err());
    }
}
