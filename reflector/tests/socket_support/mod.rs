//! Helpers shared by the socket integration tests (loopback only).
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ricochet_reflector::socket::{BatchSocket, RxBatch};
use socket2::{Domain, Protocol, Socket, Type};

/// How long a test waits for loopback traffic before failing.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Receives until `want` datagrams have arrived; returns the number of
/// `recv_batch` calls that returned datagrams, and hands each batch to `each`.
pub fn recv_until(
    sock: &BatchSocket,
    rx: &mut RxBatch,
    want: usize,
    mut each: impl FnMut(&RxBatch),
) -> usize {
    let deadline = Instant::now() + PATIENCE;
    let (mut got, mut calls) = (0, 0);
    while got < want {
        match sock.recv_batch(rx) {
            Ok(n) => {
                got += n;
                calls += 1;
                each(rx);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "only {got} of {want} datagrams arrived"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    calls
}

/// A plain blocking UDP socket (set up with socket2, independent of the
/// code under test) bound to `bind`, sending with TTL / Hop Limit `ttl` and
/// TOS / Traffic Class `tos`, with a read timeout.
pub fn plain_socket(bind: SocketAddr, ttl: u32, tos: u32) -> UdpSocket {
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP)).unwrap();
    if bind.is_ipv6() {
        s.set_only_v6(true).unwrap();
        s.set_unicast_hops_v6(ttl).unwrap();
        s.set_tclass_v6(tos).unwrap();
    } else {
        s.set_ttl_v4(ttl).unwrap();
        s.set_tos_v4(tos).unwrap();
    }
    s.bind(&bind.into()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.into()
}

/// Receives one datagram on a plain socket: payload and source.
pub fn plain_recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s
        .recv_from(&mut buf)
        .expect("a datagram within the timeout");
    (buf[..n].to_vec(), from)
}
