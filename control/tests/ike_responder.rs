//! The daemon's in-process IKEv2 responder over loopback: an `ike` crate
//! initiator on a real UDP socket brings up a childless IKE SA with
//! `ricochet-control`, then TWAMP-Control sets up in IKEv2-derived mode with
//! the SA's `prf(SK_d, "IPPM")` (computed here with the `hmac` crate from the
//! initiator's own SK_d: independent of the daemon). Rekeying and deleting
//! the SA withdraw it for new connections (Accept 6) while a connection
//! keyed before keeps working (RFC 7717 §5.1).

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hmac::Mac;
use ricochet_ike::{
    Config as IkeConfig, Endpoint, Event, Identification, IkeSaInfo, InitiateParams,
    PskAuthenticator, PskStore, SeqRng,
};
use ricochet_protocol::accept::Accept;
use ricochet_protocol::client::{Client, ClientConfig, ClientRandom};
use ricochet_protocol::crypto::{SessionKeys, SharedSecret, TokenKeyDerivation};
use ricochet_protocol::modes::Modes;
use support::*;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("udp port")
        .port()
}

/// An initiator on its own loopback socket.
struct Initiator {
    ep: Endpoint,
    sock: UdpSocket,
    local: SocketAddr,
    peer: SocketAddr,
    rng: SeqRng,
}

impl Initiator {
    fn new(peer: SocketAddr, psk: &str) -> Initiator {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.connect(peer).expect("connect");
        let local = sock.local_addr().expect("local");
        let mut store = PskStore::new();
        store.insert("twamp.test", psk.as_bytes());
        let mut rng = SeqRng::new(u64::from(local.port()));
        let ep = Endpoint::new(
            IkeConfig::new(Identification::fqdn("probe.test")),
            Box::new(PskAuthenticator { store }),
            &mut rng,
        );
        Initiator {
            ep,
            sock,
            local,
            peer,
            rng,
        }
    }

    /// Moves datagrams and timers until `pick` accepts an event (bounded).
    fn pump<T>(&mut self, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 9000];
        loop {
            while let Some(t) = self.ep.poll_transmit() {
                assert_eq!((t.local, t.remote), (self.local, self.peer));
                self.sock.send(&t.data).expect("send");
            }
            while let Some(ev) = self.ep.poll_event() {
                if let Some(v) = pick(ev) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "IKE exchange did not finish");
            self.sock
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    self.ep.handle_datagram(
                        Instant::now(),
                        &mut self.rng,
                        self.local,
                        self.peer,
                        &buf[..n],
                    );
                }
                Err(_) => self.ep.handle_timeout(Instant::now(), &mut self.rng),
            }
        }
    }

    fn establish(&mut self) -> Result<IkeSaInfo, String> {
        self.ep
            .initiate(
                Instant::now(),
                &mut self.rng,
                InitiateParams {
                    local: self.local,
                    peer: self.peer,
                    peer_id: Some(Identification::fqdn("twamp.test")),
                    child: None,
                },
            )
            .expect("initiate");
        self.pump(|ev| match ev {
            Event::IkeSaEstablished(info) => Some(Ok(info)),
            Event::IkeSaDeleted { reason, .. } => Some(Err(format!("{reason:?}"))),
            _ => None,
        })
    }
}

/// `prf(SK_d, "IPPM")` with HMAC-SHA-256, computed here (RFC 7717 §5.1).
fn ippm(info: &IkeSaInfo) -> Vec<u8> {
    assert_eq!(info.prf, ricochet_protocol::crypto::Prf::HmacSha256);
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&info.sk_d).expect("key");
    m.update(b"IPPM");
    m.finalize().into_bytes().to_vec()
}

fn twamp(addr: SocketAddr, info: &IkeSaInfo, secret: Vec<u8>, mode: Modes) -> TwampConn {
    let stream = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut octets = [0u8; 64];
    getrandom::fill(&mut octets).expect("random");
    let keys = SessionKeys::from_bytes(octets[..48].try_into().expect("48"));
    let mut client = Client::new(
        ClientConfig {
            allowed: mode,
            wanted: Modes::NONE,
            key_id: Some(info.key_id()),
            secret: Some(SharedSecret::new(secret)),
            max_count: 32768,
            max_sessions: 10,
        },
        ClientRandom {
            session_keys: keys.clone(),
            client_iv: octets[48..].try_into().expect("16"),
        },
    );
    client.use_ikev2_key(TokenKeyDerivation::Pbkdf2);
    TwampConn {
        stream,
        client,
        keys,
    }
}

/// A daemon with the responder on loopback (free ports) and a PSK file.
fn daemon(dir: &TempDir, psk: &str) -> (TestDaemon, SocketAddr) {
    let mut c = config(dir, &ALL_SECURITY);
    let (port, natt) = (free_udp_port(), free_udp_port());
    let r = &mut c.ikev2.responder;
    r.listen = vec!["127.0.0.1".parse().expect("ip")];
    r.port = port;
    r.natt_port = natt;
    r.identity = "twamp.test".into();
    r.psk_file = Some(dir.file("ike.psk", &format!("probe.test {psk}\n"), 0o600));
    (
        TestDaemon::start(c, timing()),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

#[test]
fn an_ike_sa_with_the_responder_keys_twamp_until_rekeyed_or_deleted() {
    let dir = TempDir::new("ike-resp");
    let (d, ike) = daemon(&dir, "lab-only-ike-psk");
    let mut ini = Initiator::new(ike, "lab-only-ike-psk");
    let info = ini.establish().expect("IKE SA established");
    // The responder counted it (it handled IKE_AUTH before answering).
    assert_eq!(d.metric("ricochet_control_ike_sas"), 1);
    assert_eq!(
        d.metric("ricochet_control_ike_sa_events_total{event=\"established\"}"),
        1
    );

    // Both protected modes with the SA's key; the greeting offers 0x80.
    for mode in [Modes::AUTHENTICATED, Modes::ENCRYPTED] {
        let mut conn = twamp(d.v4(), &info, ippm(&info), mode);
        conn.setup().expect("keyed from the responder's SA");
        assert_eq!(
            conn.client.selection().expect("sel").modes().bits(),
            mode.bits() | 0x80
        );
        conn.request(&request(d.v4().ip(), 42000 + mode.bits() as u16, 0))
            .expect("session");
    }
    let mut held = twamp(d.v4(), &info, ippm(&info), Modes::ENCRYPTED);
    held.setup().expect("set up before the rekey");

    // Rekey the IKE SA: new SPIs and SK_d.
    ini.ep
        .rekey_ike_sa(Instant::now(), &mut ini.rng, info.spi_i, info.spi_r)
        .expect("rekey");
    let new = ini.pump(|ev| match ev {
        Event::IkeSaRekeyed { new, .. } => Some(new),
        _ => None,
    });
    assert_ne!((new.spi_i, new.spi_r), (info.spi_i, info.spi_r));
    let mut conn = twamp(d.v4(), &new, ippm(&new), Modes::AUTHENTICATED);
    conn.setup().expect("the rekeyed SA keys new connections");
    let mut conn = twamp(d.v4(), &info, ippm(&info), Modes::AUTHENTICATED);
    assert_eq!(
        conn.setup(),
        Err(Accept::Ikev2SaNotFound),
        "old SA withdrawn"
    );
    // The connection keyed before the rekey keeps its key (RFC 7717 §5.1).
    held.request(&request(d.v4().ip(), 42010, 0))
        .expect("still works after the rekey");

    // Delete the SA: gone for new connections.
    ini.ep
        .delete_ike_sa(Instant::now(), &mut ini.rng, new.spi_i, new.spi_r)
        .expect("delete");
    ini.pump(|ev| matches!(ev, Event::IkeSaDeleted { .. }).then_some(()));
    let mut conn = twamp(d.v4(), &new, ippm(&new), Modes::ENCRYPTED);
    assert_eq!(conn.setup(), Err(Accept::Ikev2SaNotFound), "deleted SA");
    held.request(&request(d.v4().ip(), 42011, 0))
        .expect("still works after the delete");
    assert_eq!(d.metric("ricochet_control_ike_sas"), 0);
    assert_eq!(
        d.metric("ricochet_control_ike_sa_events_total{event=\"rekeyed\"}"),
        1
    );
}

#[test]
fn a_wrong_psk_gets_no_sa_and_no_key() {
    let dir = TempDir::new("ike-psk");
    let (d, ike) = daemon(&dir, "the-right-psk");
    let mut ini = Initiator::new(ike, "a-wrong-psk");
    let e = ini.establish().expect_err("authentication fails");
    assert!(
        e.contains("Authentication") || e.contains("PeerError"),
        "{e}"
    );
    assert_eq!(
        d.metric("ricochet_control_ike_sa_events_total{event=\"failed\"}"),
        1
    );
    assert_eq!(d.metric("ricochet_control_ike_sas"), 0);
    // The daemon still answers TWAMP (nothing wedged) and offers 0x80.
    let mut conn = TwampConn::connect(d.v4(), Peer::open());
    conn.setup().expect("unauthenticated still works");
}
