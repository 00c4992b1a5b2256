//! The socket reflector loop on loopback: an echo handler reflects every
//! datagram, sockets come and go through the handle while the loop runs on
//! its own thread, and the counters add up.

mod socket_support;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ricochet_reflector::socket::{
    BatchConfig, BatchSocket, Reflect, ReflectorConfig, ReflectorHandle, ReplyTos, RxBatch,
    RxPacket, SocketKey, SocketOptions, SocketReflector, Stats, TxBatch, TxMeta,
};
use socket_support::{plain_recv, plain_socket, recv_until, PATIENCE};

const WAIT: Duration = PATIENCE;

/// What the handler saw per key: (payload, TTL).
type Seen = Arc<Mutex<HashMap<SocketKey, Vec<(Vec<u8>, Option<u8>)>>>>;

/// An echo handler: replies with the payload, declines payloads starting
/// with 0xff, and records what it saw.
fn echo(seen: Seen) -> impl FnMut(SocketKey, &RxPacket<'_>, &mut [u8]) -> Option<usize> {
    move |key, rx, tx| {
        seen.lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push((rx.payload.to_vec(), rx.ttl));
        if rx.payload.first() == Some(&0xff) {
            return None;
        }
        tx[..rx.payload.len()].copy_from_slice(rx.payload);
        Some(rx.payload.len())
    }
}

fn bind(a: &str) -> BatchSocket {
    BatchSocket::bind(a.parse().unwrap(), &SocketOptions::default()).unwrap()
}

fn start(seen: Seen) -> (ReflectorHandle, thread::JoinHandle<Stats>) {
    let mut r = SocketReflector::new(&ReflectorConfig::default()).unwrap();
    let handle = r.handle();
    let join = thread::spawn(move || {
        let mut h = echo(seen);
        r.run(&mut h).unwrap();
        r.stats()
    });
    (handle, join)
}

#[test]
fn echo_loop_reflects_every_packet_over_v4_and_v6_and_counts() {
    const N: usize = 200;
    let seen = Seen::default();
    let (handle, join) = start(seen.clone());

    let v4 = bind("127.0.0.1:0");
    let v6 = bind("[::1]:0");
    let (a4, a6) = (v4.local_addr(), v6.local_addr());
    handle
        .add(1, v4, ReplyTos::Socket)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    handle
        .add(2, v6, ReplyTos::Socket)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();

    for (target, peer_bind) in [(a4, "127.0.0.1:0"), (a6, "[::1]:0")] {
        let peer = plain_socket(peer_bind.parse().unwrap(), 64, 0);
        for i in 0..N as u32 {
            peer.send_to(&i.to_be_bytes(), target).unwrap();
            let (data, from) = plain_recv(&peer);
            assert_eq!(data, i.to_be_bytes());
            assert_eq!(from, target);
        }
    }

    let s1 = handle
        .socket_stats(1)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    assert_eq!(
        (s1.received, s1.reflected, s1.dropped()),
        (N as u64, N as u64, 0)
    );
    let s2 = handle
        .remove(2)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    assert_eq!((s2.received, s2.reflected), (N as u64, N as u64));
    assert!(handle
        .remove(2)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .is_none());

    let total = handle.stats();
    assert_eq!(total.received, 2 * N as u64);
    assert_eq!(total.reflected, 2 * N as u64);
    assert_eq!(total.dropped(), 0);
    assert!(total.rx_syscalls >= 1 && total.tx_syscalls >= 1);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[&1].len(), N);
        assert_eq!(seen[&2].len(), N);
        // The handler got the received TTL / Hop Limit.
        assert!(seen[&1]
            .iter()
            .chain(&seen[&2])
            .all(|(_, ttl)| *ttl == Some(64)));
    }

    handle.shutdown().unwrap();
    let end = join.join().unwrap();
    assert_eq!(end, handle.stats());
}

#[test]
fn a_burst_queued_before_registration_is_read_in_batches() {
    let seen = Seen::default();
    let (handle, join) = start(seen.clone());
    let sock = bind("127.0.0.1:0");
    let target = sock.local_addr();
    let peer = plain_socket("127.0.0.1:0".parse().unwrap(), 64, 0);
    for i in 0..64u8 {
        peer.send_to(&[i], target).unwrap();
    }
    handle
        .add(7, sock, ReplyTos::Socket)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    for i in 0..64u8 {
        assert_eq!(plain_recv(&peer), (vec![i], target));
    }
    let s = handle
        .socket_stats(7)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    assert_eq!((s.received, s.reflected), (64, 64));
    assert!(
        s.rx_syscalls < s.received && s.tx_syscalls < s.reflected,
        "batched: {s:?}"
    );
    handle.shutdown().unwrap();
    join.join().unwrap();
}

#[test]
fn declined_packets_are_counted_and_removed_sockets_go_quiet() {
    let seen = Seen::default();
    let (handle, join) = start(seen.clone());
    let sock = bind("127.0.0.1:0");
    let target = sock.local_addr();
    handle
        .add(3, sock, ReplyTos::Socket)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    // A duplicate key is refused, the loop keeps running.
    let dup = handle
        .add(3, bind("127.0.0.1:0"), ReplyTos::Socket)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap();
    assert_eq!(dup.unwrap_err().kind(), ErrorKind::AlreadyExists);

    let peer = plain_socket("127.0.0.1:0".parse().unwrap(), 64, 0);
    for i in 0..10u8 {
        let first = if i % 2 == 0 { 0xff } else { i };
        peer.send_to(&[first, i], target).unwrap();
    }
    // Only the five odd ones come back, in order.
    for i in (1..10u8).step_by(2) {
        assert_eq!(plain_recv(&peer).0, vec![i, i]);
    }
    let s = handle
        .remove(3)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    assert_eq!((s.received, s.reflected, s.declined), (10, 5, 5));
    assert_eq!(s.dropped(), 5);
    assert_eq!(seen.lock().unwrap()[&3].len(), 10);

    // The port is closed now: nothing reflects.
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = peer.send_to(&[1], target);
    let mut buf = [0u8; 16];
    assert!(peer.recv_from(&mut buf).is_err());

    handle.shutdown().unwrap();
    join.join().unwrap();
    // The loop is gone: commands fail instead of hanging.
    assert!(handle.shutdown().is_err());
}

#[test]
fn listener_sockets_can_copy_the_received_dscp() {
    let seen = Seen::default();
    let (handle, join) = start(seen);
    let listener = bind("127.0.0.1:0");
    let target = listener.local_addr();
    handle
        .add(9, listener, ReplyTos::CopyReceivedDscp)
        .unwrap()
        .recv_timeout(WAIT)
        .unwrap()
        .unwrap();
    // The peer is a BatchSocket so it can read the reply's TOS and TTL; it
    // sends the probe with a per-message TOS.
    let peer = bind("127.0.0.1:0");
    let cfg = BatchConfig::default();
    let (mut tx, mut rx) = (TxBatch::new(&cfg), RxBatch::new(&cfg));
    tx.push(
        TxMeta {
            tos: Some(0xb9), // DSCP 46 (EF), ECN ECT(1)
            ..TxMeta::to(target)
        },
        |b| {
            b[0] = 1;
            Some(1)
        },
    )
    .unwrap();
    assert_eq!(peer.send_batch(&mut tx).sent, 1);
    recv_until(&peer, &mut rx, 1, |_| {});
    let reply = rx.get(0).unwrap().unwrap();
    assert_eq!(reply.src, target);
    assert_eq!(reply.tos, Some(0xb8), "DSCP copied, ECN Not-ECT");
    assert_eq!(reply.ttl, Some(255));
    handle.shutdown().unwrap();
    join.join().unwrap();
}

#[test]
fn poll_once_serves_sockets_added_on_the_loop_thread() {
    let mut r = SocketReflector::new(&ReflectorConfig::default()).unwrap();
    let sock = bind("[::]:0");
    let port = sock.local_addr().port();
    r.add_socket(5, sock, ReplyTos::Socket).unwrap();
    assert_eq!(r.socket_count(), 1);
    let peer = plain_socket("127.0.0.1:0".parse().unwrap(), 64, 0);
    let target = SocketAddr::from(([127, 0, 0, 3], port));
    peer.send_to(b"dual", target).unwrap();
    let mut h = echo(Seen::default());
    while r.stats().reflected == 0 {
        assert!(r.poll_once(&mut h, Some(WAIT)).unwrap());
    }
    // Reflected by a dual-stack socket, from 127.0.0.3.
    assert_eq!(plain_recv(&peer), (b"dual".to_vec(), target));
    assert_eq!(r.remove_socket(5).map(|s| s.reflected), Some(1));
    assert_eq!(r.socket_count(), 0);
    assert!(r.remove_socket(5).is_none());
}

/// Counts the batch hooks around `reflect` calls (echoing every packet).
#[derive(Default)]
struct Batches {
    open: Option<SocketKey>,
    begins: usize,
    ends: usize,
    reflected: usize,
    outside: usize,
}

impl Reflect for Batches {
    fn begin_batch(&mut self, key: SocketKey) {
        assert!(self.open.is_none(), "batches do not nest");
        self.open = Some(key);
        self.begins += 1;
    }
    fn end_batch(&mut self) {
        assert!(self.open.take().is_some(), "end without begin");
        self.ends += 1;
    }
    fn reflect(&mut self, key: SocketKey, rx: &RxPacket<'_>, tx: &mut [u8]) -> Option<usize> {
        if self.open != Some(key) {
            self.outside += 1;
        }
        self.reflected += 1;
        tx[..rx.payload.len()].copy_from_slice(rx.payload);
        Some(rx.payload.len())
    }
}

/// Every packet is handled inside a begin/end pair for its socket, and a
/// burst takes one pair per received batch (the socket table takes its
/// registry lock once per pair, not per packet).
#[test]
fn every_packet_is_reflected_inside_one_batch_per_receive() {
    const N: usize = 100;
    let mut r = SocketReflector::new(&ReflectorConfig::default()).unwrap();
    let sock = bind("127.0.0.1:0");
    let target = sock.local_addr();
    let peer = plain_socket("127.0.0.1:0".parse().unwrap(), 64, 0);
    for i in 0..N {
        peer.send_to(&[i as u8], target).unwrap();
    }
    r.add_socket(9, sock, ReplyTos::Socket).unwrap();
    let mut h = Batches::default();
    let deadline = std::time::Instant::now() + WAIT;
    while h.reflected < N {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} reflected",
            h.reflected
        );
        assert!(r
            .poll_once(&mut h, Some(Duration::from_millis(50)))
            .unwrap());
    }
    for i in 0..N {
        assert_eq!(plain_recv(&peer), (vec![i as u8], target));
    }
    assert_eq!(h.outside, 0, "reflect outside a batch");
    assert!(h.open.is_none());
    assert_eq!(h.begins, h.ends);
    let batch = BatchConfig::default().batch;
    assert!(
        h.begins <= N.div_ceil(batch) + 1,
        "{} batches for {N} packets of {batch}",
        h.begins
    );
}
