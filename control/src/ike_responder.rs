//! The in-process IKEv2 responder: the `ike` crate's sans-IO
//! [`Endpoint`] on its own UDP sockets (port 500 and the NAT-T port on each
//! configured address), served by the control loop as an
//! [`event_loop::Service`](crate::event_loop::Service). Every IKE SA it
//! establishes is published into a [`SharedSaTable`], where the RFC 7717 key
//! source finds it by (SPIi, SPIr); rekeyed and deleted SAs are withdrawn
//! (connections already keyed from them keep their keys, RFC 7717 §5.1).
//!
//! Nothing secret is logged: SPIs, peers and reasons only.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use ricochet_ike::{
    ChildPolicy, Config as IkeConfig, DeleteReason, Endpoint, Event, Identification, OsRng,
    PskAuthenticator, PskStore, TrafficSelector,
};
use ricochet_protocol::sa_records::SaId;
use zeroize::Zeroizing;

use crate::event_loop::{Context, Service};
use crate::ikev2::{SaSecret, SharedSaTable};
use crate::metrics::{EspSaEvent, IkeDrop, IkeEvent};
use crate::twamp::{apply_esp_ops, DaemonState};

/// Datagrams handled per socket per loop turn (fairness with TWAMP-Control).
const RECV_BUDGET: usize = 256;
/// Largest datagram read (the endpoint refuses anything above 8192 anyway).
const MAX_DATAGRAM: usize = 9000;

/// What the responder needs.
#[derive(Debug, Clone)]
pub struct ResponderSettings {
    /// Addresses to serve (each gets `port` and `natt_port`).
    pub addresses: Vec<IpAddr>,
    /// IKE port (500).
    pub port: u16,
    /// NAT-T port (4500).
    pub natt_port: u16,
    /// Our identity (IDr), an FQDN.
    pub identity: String,
    /// Send a liveness check after this long without a message (`None`: off).
    pub liveness: Option<std::time::Duration>,
    /// The reflector's test port range (first, last): CHILD_SA traffic
    /// selectors are narrowed to UDP on these ports on our side, so a
    /// CHILD_SA never captures TWAMP-Control or IKE itself.
    pub test_ports: (u16, u16),
}

/// The selectors a peer's CHILD_SA proposal is narrowed to: UDP from any
/// port of the peer to our test ports, IPv4 and IPv6 (RFC 7296 §2.9).
pub fn child_policy(test_ports: (u16, u16)) -> ChildPolicy {
    let any = |first: IpAddr, last: IpAddr, ports: (u16, u16)| TrafficSelector {
        ip_proto: 17,
        start_port: ports.0,
        end_port: ports.1,
        start_addr: first,
        end_addr: last,
    };
    let v4 = (
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::BROADCAST),
    );
    let v6 = (
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::from(u128::MAX)),
    );
    ChildPolicy {
        remote: vec![any(v4.0, v4.1, (0, 0xffff)), any(v6.0, v6.1, (0, 0xffff))],
        local: vec![any(v4.0, v4.1, test_ports), any(v6.0, v6.1, test_ports)],
    }
}

struct Socket {
    socket: UdpSocket,
    local: SocketAddr,
    token: Token,
}

/// The responder service.
pub struct IkeResponder {
    endpoint: Endpoint,
    sockets: Vec<Socket>,
    table: SharedSaTable,
    rng: OsRng,
    buf: Vec<u8>,
    /// Endpoint drop counters already added to the metrics.
    reported: ricochet_ike::endpoint::Stats,
}

impl std::fmt::Debug for IkeResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let locals: Vec<SocketAddr> = self.sockets.iter().map(|s| s.local).collect();
        f.debug_struct("IkeResponder")
            .field("sockets", &locals)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl IkeResponder {
    /// Binds every socket (errors name the address and what to do) and
    /// prepares the endpoint with the PSKs of `psks`.
    pub fn bind(
        settings: &ResponderSettings,
        psks: PskStore,
        table: SharedSaTable,
    ) -> Result<IkeResponder, String> {
        let mut config = IkeConfig::new(Identification::fqdn(&settings.identity));
        config.natt_port = settings.natt_port;
        config.liveness_interval = settings.liveness;
        config.child_policy = Some(child_policy(settings.test_ports));
        let mut rng = OsRng;
        let endpoint = Endpoint::new(config, Box::new(PskAuthenticator { store: psks }), &mut rng);
        let mut sockets = Vec::new();
        for ip in &settings.addresses {
            for port in [settings.port, settings.natt_port] {
                let addr = SocketAddr::new(*ip, port);
                let socket = UdpSocket::bind(addr).map_err(|e| {
                    let hint = match e.kind() {
                        ErrorKind::AddrInUse => {
                            "; another IKE daemon (charon?) holds it: stop it or give ikev2.responder other ports"
                        }
                        ErrorKind::PermissionDenied => "; ports below 1024 need root or CAP_NET_BIND_SERVICE",
                        ErrorKind::AddrNotAvailable => "; the address is not configured on this host",
                        _ => "",
                    };
                    format!("ikev2.responder: cannot bind UDP {addr}: {e}{hint}")
                })?;
                let local = socket
                    .local_addr()
                    .map_err(|e| format!("ikev2.responder: {addr}: {e}"))?;
                sockets.push(Socket {
                    socket,
                    local,
                    token: Token(0),
                });
            }
        }
        Ok(IkeResponder {
            endpoint,
            sockets,
            table,
            rng,
            buf: vec![0; MAX_DATAGRAM],
            reported: Default::default(),
        })
    }

    /// The bound addresses (real ports when 0 was asked).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    /// Send what the endpoint queued, from the socket bound to its local
    /// address.
    fn transmit(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            let Some(s) = self.sockets.iter().find(|s| s.local == t.local) else {
                tracing::warn!(local = %t.local, remote = %t.remote, "IKE: no socket for the local address; datagram dropped");
                continue;
            };
            match s.socket.send_to(&t.data, t.remote) {
                Ok(_) => {}
                // A full socket buffer drops the datagram: IKE retransmits.
                Err(e) => tracing::debug!(remote = %t.remote, error = %e, "IKE send failed"),
            }
        }
    }

    /// Publish established SAs, withdraw rekeyed and deleted ones, hand
    /// CHILD_SAs to the ESP data plane; count.
    fn events(&mut self, ctx: &mut Context<'_, DaemonState>) {
        let metrics = ctx.metrics;
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                Event::IkeSaEstablished(info) => {
                    metrics.ike_event(IkeEvent::Established);
                    let id = SaId {
                        spi_i: info.spi_i,
                        spi_r: info.spi_r,
                    };
                    tracing::info!(sa = %id, peer = %info.peer, prf = ?info.prf, "IKE SA established; its RFC 7717 key is available");
                    self.publish(id, info.prf, &info.sk_d);
                }
                Event::IkeSaRekeyed {
                    old_spi_i,
                    old_spi_r,
                    new,
                } => {
                    metrics.ike_event(IkeEvent::Rekeyed);
                    let old = SaId {
                        spi_i: old_spi_i,
                        spi_r: old_spi_r,
                    };
                    let id = SaId {
                        spi_i: new.spi_i,
                        spi_r: new.spi_r,
                    };
                    tracing::info!(old = %old, new = %id, peer = %new.peer, "IKE SA rekeyed; new connections must name the new SA");
                    self.table.lock().remove(&old);
                    ctx.state
                        .esp_link()
                        .ike_rekeyed((old_spi_i, old_spi_r), (new.spi_i, new.spi_r));
                    self.publish(id, new.prf, &new.sk_d);
                }
                Event::IkeSaDeleted {
                    spi_i,
                    spi_r,
                    peer,
                    reason,
                } => {
                    let id = SaId { spi_i, spi_r };
                    metrics.ike_event(match reason {
                        DeleteReason::Local
                        | DeleteReason::Peer
                        | DeleteReason::Rekeyed
                        | DeleteReason::Timeout => IkeEvent::Deleted,
                        _ => IkeEvent::Failed,
                    });
                    if self.table.lock().remove(&id) {
                        tracing::info!(sa = %id, %peer, ?reason, "IKE SA deleted; its RFC 7717 key is withdrawn");
                    } else {
                        tracing::debug!(sa = %id, %peer, ?reason, "IKE SA set-up failed or ended");
                    }
                    // A rekeyed SA's CHILD_SAs live on under the new one.
                    if reason != DeleteReason::Rekeyed {
                        let ops = ctx.state.esp_link().ike_deleted((spi_i, spi_r));
                        apply_esp_ops(ctx, ops);
                    }
                }
                Event::ChildSaInstalled {
                    ike_spi_i,
                    ike_spi_r,
                    child,
                } => {
                    let (spi_i, spi_r, peer) = (child.spi_i, child.spi_r, child.peer);
                    tracing::info!(
                        ike = %SaId { spi_i: ike_spi_i, spi_r: ike_spi_r },
                        spi_i = %format_args!("{spi_i:08x}"),
                        spi_r = %format_args!("{spi_r:08x}"),
                        %peer,
                        ts_i = ?child.ts_i,
                        ts_r = ?child.ts_r,
                        "CHILD_SA up"
                    );
                    match ctx
                        .state
                        .esp_link()
                        .child_installed((ike_spi_i, ike_spi_r), child)
                    {
                        Ok(ops) => apply_esp_ops(ctx, ops),
                        Err(e) => {
                            metrics.esp_sa_event(EspSaEvent::Refused);
                            tracing::warn!(spi_i = %format_args!("{spi_i:08x}"), spi_r = %format_args!("{spi_r:08x}"), %peer, "CHILD_SA not used by the data plane: {e}");
                        }
                    }
                }
                Event::ChildSaDeleted {
                    ike_spi_i,
                    ike_spi_r,
                    spi_i,
                    spi_r,
                } => {
                    tracing::info!(spi_i = %format_args!("{spi_i:08x}"), spi_r = %format_args!("{spi_r:08x}"), "CHILD_SA deleted");
                    let ops =
                        ctx.state
                            .esp_link()
                            .child_deleted((ike_spi_i, ike_spi_r), spi_i, spi_r);
                    apply_esp_ops(ctx, ops);
                }
                Event::PeerAlive { .. } => {}
            }
        }
        let now = self.endpoint.stats().clone();
        let old = &self.reported;
        for (reason, n, was) in [
            (IkeDrop::Malformed, now.malformed, old.malformed),
            (IkeDrop::UnknownSa, now.unknown_sa, old.unknown_sa),
            (
                IkeDrop::DecryptFailed,
                now.decrypt_failed,
                old.decrypt_failed,
            ),
            (
                IkeDrop::BadMessageId,
                now.bad_message_id,
                old.bad_message_id,
            ),
            (
                IkeDrop::HalfOpenRefused,
                now.half_open_refused,
                old.half_open_refused,
            ),
        ] {
            metrics.add_ike_dropped(reason, n.saturating_sub(was));
        }
        self.reported = now;
        metrics.set_ike_sas(self.endpoint.established_count());
    }

    fn publish(&mut self, id: SaId, prf: ricochet_protocol::crypto::Prf, sk_d: &[u8]) {
        let sa = SaSecret::SkD {
            prf,
            sk_d: Zeroizing::new(sk_d.to_vec()),
        };
        if let Err(e) = self.table.lock().insert(id, sa) {
            tracing::warn!(sa = %id, "IKE SA not published: {e}");
        }
    }
}

impl Service<DaemonState> for IkeResponder {
    fn register(
        &mut self,
        registry: &Registry,
        token: &mut dyn FnMut() -> io::Result<Token>,
    ) -> io::Result<()> {
        for s in &mut self.sockets {
            s.token = token()?;
            registry.register(&mut s.socket, s.token, Interest::READABLE)?;
            tracing::info!(addr = %s.local, "IKEv2 responder listening");
        }
        Ok(())
    }

    fn on_ready(&mut self, token: Token, ctx: &mut Context<'_, DaemonState>) -> bool {
        let Some(i) = self.sockets.iter().position(|s| s.token == token) else {
            return false;
        };
        let local = self.sockets[i].local;
        let now = ctx.now;
        let mut more = true;
        for _ in 0..RECV_BUDGET {
            match self.sockets[i].socket.recv_from(&mut self.buf) {
                Ok((n, remote)) => {
                    self.endpoint.handle_datagram(
                        now,
                        &mut self.rng,
                        local,
                        remote,
                        &self.buf[..n],
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here on Linux; nothing to do.
                    tracing::debug!(%local, error = %e, "IKE receive failed");
                }
            }
        }
        // Publish (and count) before the peer can learn the SA is up.
        self.events(ctx);
        self.transmit();
        more
    }

    fn deadline(&self) -> Option<Instant> {
        self.endpoint.poll_timeout()
    }

    fn on_timer(&mut self, ctx: &mut Context<'_, DaemonState>) {
        self.endpoint.handle_timeout(ctx.now, &mut self.rng);
        // Publish (and count) before the peer can learn the SA is up.
        self.events(ctx);
        self.transmit();
    }

    fn on_stop(&mut self, ctx: &mut Context<'_, DaemonState>) {
        // Tell peers their SAs are gone (best effort: one Delete each).
        for info in self.endpoint.established() {
            let _ = self
                .endpoint
                .delete_ike_sa(ctx.now, &mut self.rng, info.spi_i, info.spi_r);
        }
        self.transmit();
        self.table.lock().clear();
        // Their CHILD_SAs are gone with them.
        let ops = ctx.state.esp_link().clear();
        apply_esp_ops(ctx, ops);
    }
}
