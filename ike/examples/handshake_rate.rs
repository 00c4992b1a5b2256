//! How long one IKE_SA_INIT + IKE_AUTH handshake (PSK, childless) takes in
//! process, per suite: both sides' CPU work, no network. Measured with the
//! monotonic clock (`std::time::Instant`).
//!
//! ```sh
//! cargo run --release -p ricochet-ike --example handshake_rate -- 200
//! ```

use std::time::Instant;

use ricochet_ike::{
    Config, Endpoint, Event, Identification, IkeSuite, InitiateParams, PskAuthenticator, PskStore,
    SeqRng,
};

fn store(peer: &str) -> Box<PskAuthenticator> {
    let mut s = PskStore::new();
    s.insert(peer, b"lab-only-secret");
    Box::new(PskAuthenticator { store: s })
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("usage: handshake_rate [COUNT]"))
        .unwrap_or(100);
    for (name, suite) in [
        (
            "aes128gcm16-prfsha256-ecp256",
            IkeSuite::GCM128_SHA256_ECP256,
        ),
        (
            "aes128gcm16-prfsha256-x25519",
            IkeSuite::GCM128_SHA256_X25519,
        ),
        ("aes256-sha256-modp2048", IkeSuite::CBC256_SHA256_MODP2048),
    ] {
        let mut rng = SeqRng::new(1);
        let mut ca = Config::new(Identification::fqdn("a.test"));
        ca.ike_suites = vec![suite];
        let mut a = Endpoint::new(ca, store("b.test"), &mut rng);
        let mut b = Endpoint::new(
            Config::new(Identification::fqdn("b.test")),
            store("a.test"),
            &mut rng,
        );
        let start = Instant::now();
        let mut up = 0;
        for _ in 0..n {
            let now = Instant::now();
            a.initiate(
                now,
                &mut rng,
                InitiateParams {
                    local: "198.18.0.1:500".parse().unwrap(),
                    peer: "198.18.0.2:500".parse().unwrap(),
                    peer_id: Some(Identification::fqdn("b.test")),
                    child: None,
                },
            )
            .unwrap();
            loop {
                let mut moved = false;
                while let Some(t) = a.poll_transmit() {
                    b.handle_datagram(now, &mut rng, t.remote, t.local, &t.data);
                    moved = true;
                }
                while let Some(t) = b.poll_transmit() {
                    a.handle_datagram(now, &mut rng, t.remote, t.local, &t.data);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            while let Some(e) = a.poll_event() {
                if matches!(e, Event::IkeSaEstablished(_)) {
                    up += 1;
                }
            }
            while b.poll_event().is_some() {}
        }
        let per = start.elapsed() / n;
        assert_eq!(up, n, "every handshake completed");
        println!(
            "{name}: {n} handshakes, {:.3} ms each (both sides), {:.0} per second",
            per.as_secs_f64() * 1e3,
            1.0 / per.as_secs_f64()
        );
    }
}
