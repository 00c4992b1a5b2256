//! BatchSocket and the batches against real loopback traffic: the metadata
//! the kernel reports (TTL, TOS, destination, receive stamp) must be what an
//! independently configured peer sent, over IPv4, IPv6 and v4-mapped.

mod socket_support;

use std::net::{IpAddr, SocketAddr, UdpSocket};

use ricochet_protocol::WireError;
use ricochet_reflector::clock::{now_tai_ns, now_utc_ns, StampSource, TimeScale};
use ricochet_reflector::socket::{
    tos_from_dscp, BatchConfig, BatchSocket, RxBatch, RxError, RxPacket, RxTimestamping,
    SocketOptions, TimestampingMode, TxBatch, TxMeta,
};
use socket_support::{plain_recv, plain_socket, recv_until};

const SECOND: u64 = 1_000_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One datagram from a plain sender with `ttl`/`tos` to a BatchSocket bound
/// at `bind`, sent to `to_ip`. Checks the fields common to all cases, then
/// hands the socket, the packet and the UTC time after reception to `more`.
fn exchange(
    bind: &str,
    sender: &str,
    to_ip: &str,
    ttl: u8,
    tos: u8,
    opts: SocketOptions,
    more: impl FnOnce(&BatchSocket, &RxPacket<'_>, u64),
) {
    let sock = BatchSocket::bind(addr(bind), &opts).unwrap();
    let to = SocketAddr::new(to_ip.parse().unwrap(), sock.local_addr().port());
    let tx = plain_socket(addr(sender), ttl.into(), tos.into());
    let mut rx = RxBatch::new(&BatchConfig::default());
    if opts.timestamping != RxTimestamping::Off {
        wait_for_kernel_stamps(&sock, &tx, to, &mut rx);
    }
    tx.send_to(b"ricochet", to).unwrap();
    recv_until(&sock, &mut rx, 1, |_| {});
    let after = now_utc_ns();
    let pkt = rx.get(0).unwrap().unwrap();
    assert_eq!(pkt.payload, b"ricochet");
    assert_eq!(pkt.src, tx.local_addr().unwrap());
    assert_eq!(pkt.dst, Some(to), "destination from packet info");
    assert_eq!(pkt.ttl, Some(ttl));
    assert_eq!(pkt.tos, Some(tos));
    assert!(!pkt.control_truncated);
    assert_eq!(pkt.control_error, None);
    more(&sock, &pkt, after);
}

/// The kernel turns receive timestamping on for the whole host lazily (a
/// static key flipped from a work queue when the first socket asks), and
/// `SO_TIMESTAMPING` has no recvmsg-time fallback: the first datagrams after
/// that may carry no software stamp. Probe until one does.
fn wait_for_kernel_stamps(sock: &BatchSocket, tx: &UdpSocket, to: SocketAddr, rx: &mut RxBatch) {
    for _ in 0..500 {
        tx.send_to(b"warm-up", to).unwrap();
        let mut stamped = false;
        recv_until(sock, rx, 1, |rx| {
            stamped = rx
                .iter()
                .any(|p| p.unwrap().rx_stamp.source == StampSource::KernelSoftware);
        });
        if stamped {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("the kernel never stamped a datagram");
}

fn assert_kernel_stamp(pkt: &RxPacket<'_>, after_utc: u64) {
    assert_eq!(pkt.rx_stamp.source, StampSource::KernelSoftware);
    assert_eq!(pkt.rx_stamp.scale, TimeScale::Utc);
    // Taken before we looked, and not long before.
    assert!(
        pkt.rx_stamp.ns <= after_utc,
        "{:?} after {after_utc}",
        pkt.rx_stamp
    );
    assert!(after_utc - pkt.rx_stamp.ns < SECOND, "{:?}", pkt.rx_stamp);
}

#[test]
fn ipv4_ttl_tos_destination_and_software_stamp() {
    exchange(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "127.0.0.1",
        64,
        0xb8,
        SocketOptions::default(),
        |sock, pkt, after| {
            assert_eq!(sock.timestamping(), TimestampingMode::Timestamping);
            assert!(!sock.is_ipv6());
            assert_kernel_stamp(pkt, after);
        },
    );
}

#[test]
fn ipv6_hop_limit_traffic_class_destination_and_software_stamp() {
    exchange(
        "[::1]:0",
        "[::1]:0",
        "::1",
        64,
        0xb8,
        SocketOptions::default(),
        |sock, pkt, after| {
            assert!(sock.is_ipv6());
            assert!(pkt.ifindex.is_some_and(|i| i > 0));
            assert_kernel_stamp(pkt, after);
        },
    );
}

#[test]
fn dual_stack_socket_reports_v4_mapped_traffic_as_ipv4() {
    // Wildcard dual-stack socket; the sender aims at 127.0.0.2, which the
    // packet info must report (the reply has to leave from it).
    exchange(
        "[::]:0",
        "127.0.0.1:0",
        "127.0.0.2",
        33,
        0x28,
        SocketOptions::default(),
        |sock, pkt, after| {
            assert!(sock.is_ipv6());
            assert!(pkt.src.is_ipv4());
            assert_kernel_stamp(pkt, after);
        },
    );
}

#[test]
fn timestampns_fallback_and_user_space_stamps() {
    let opts = SocketOptions {
        timestamping: RxTimestamping::SoftwareOnly,
        ..SocketOptions::default()
    };
    exchange(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "127.0.0.1",
        7,
        0,
        opts,
        |sock, pkt, after| {
            assert_eq!(sock.timestamping(), TimestampingMode::TimestampNs);
            assert_kernel_stamp(pkt, after);
        },
    );

    let opts = SocketOptions {
        timestamping: RxTimestamping::Off,
        ..SocketOptions::default()
    };
    let before_tai = now_tai_ns();
    exchange(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "127.0.0.1",
        7,
        0,
        opts,
        |sock, pkt, _| {
            let after_tai = now_tai_ns();
            assert_eq!(sock.timestamping(), TimestampingMode::None);
            assert_eq!(pkt.rx_stamp.source, StampSource::UserSpace);
            assert_eq!(pkt.rx_stamp.scale, TimeScale::Tai);
            assert!((before_tai..=after_tai).contains(&pkt.rx_stamp.ns));
        },
    );
}

/// The reply path: a dual-stack wildcard socket answers a v4 peer from the
/// address the peer used, with TTL 255 and the socket's DSCP, and the peer
/// (a BatchSocket too) sees those values.
#[test]
fn reply_leaves_from_the_destination_address_with_ttl_255_and_session_dscp() {
    let reflector = BatchSocket::bind(
        addr("[::]:0"),
        &SocketOptions {
            tos: tos_from_dscp(46, 0),
            ..SocketOptions::default()
        },
    )
    .unwrap();
    let port = reflector.local_addr().port();
    let peer = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let cfg = BatchConfig::default();
    let (mut rx, mut tx) = (RxBatch::new(&cfg), TxBatch::new(&cfg));

    let to = SocketAddr::new("127.0.0.2".parse().unwrap(), port);
    tx.push(TxMeta::to(to), |b| {
        b[..4].copy_from_slice(b"ping");
        Some(4)
    })
    .unwrap();
    let rep = peer.send_batch(&mut tx);
    assert_eq!((rep.sent, rep.failed, rep.syscalls), (1, 0, 1));

    recv_until(&reflector, &mut rx, 1, |_| {});
    let pkt = rx.get(0).unwrap().unwrap();
    assert_eq!(pkt.ttl, Some(255), "BatchSocket sends with TTL 255");
    let meta = TxMeta::reply_to(&pkt);
    assert_eq!(meta.src, Some("127.0.0.2".parse::<IpAddr>().unwrap()));
    tx.push(meta, |b| {
        b[..4].copy_from_slice(b"pong");
        Some(4)
    })
    .unwrap();
    let rep = reflector.send_batch(&mut tx);
    assert_eq!((rep.sent, rep.failed), (1, 0), "{:?}", rep.last_error);

    let mut back = RxBatch::new(&cfg);
    recv_until(&peer, &mut back, 1, |_| {});
    let reply = back.get(0).unwrap().unwrap();
    assert_eq!(reply.payload, b"pong");
    assert_eq!(
        reply.src, to,
        "reply from the address the probe was sent to"
    );
    assert_eq!(reply.ttl, Some(255));
    assert_eq!(reply.tos, Some(0xb8));
}

#[test]
fn per_message_tos_and_ipv6_reply() {
    let a = BatchSocket::bind(addr("[::1]:0"), &SocketOptions::default()).unwrap();
    let b = BatchSocket::bind(addr("[::1]:0"), &SocketOptions::default()).unwrap();
    let cfg = BatchConfig::default();
    let (mut rx, mut tx) = (RxBatch::new(&cfg), TxBatch::new(&cfg));
    let meta = TxMeta {
        tos: Some(0x48),
        ..TxMeta::to(b.local_addr())
    };
    tx.push(meta, |_| Some(3)).unwrap();
    tx.push(TxMeta::to(b.local_addr()), |_| Some(5)).unwrap();
    assert_eq!(a.send_batch(&mut tx).sent, 2);
    recv_until(&b, &mut rx, 2, |_| {});
    let got: Vec<_> = rx.iter().map(|p| p.unwrap()).collect();
    assert_eq!((got[0].payload.len(), got[0].tos), (3, Some(0x48)));
    assert_eq!((got[1].payload.len(), got[1].tos), (5, Some(0)));
    assert_eq!(got[0].src, a.local_addr());
    assert_eq!(got[0].ttl, Some(255));
}

#[test]
fn sixty_four_datagrams_in_one_syscall_each_way() {
    let recv = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let send = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let cfg = BatchConfig::default();
    assert_eq!(cfg.batch, 64);
    let (mut rx, mut tx) = (RxBatch::new(&cfg), TxBatch::new(&cfg));
    for i in 0..64u8 {
        tx.push(TxMeta::to(recv.local_addr()), |b| {
            b[..2].copy_from_slice(&[0xab, i]);
            Some(2)
        })
        .unwrap();
    }
    assert!(tx.is_full());
    let rep = send.send_batch(&mut tx);
    assert_eq!((rep.sent, rep.failed, rep.syscalls), (64, 0, 1));
    assert!(tx.is_empty());

    let mut seen = Vec::new();
    let calls = recv_until(&recv, &mut rx, 64, |rx| {
        seen.extend(rx.iter().map(|p| p.unwrap().payload[1]));
    });
    assert_eq!(seen, (0..64).collect::<Vec<u8>>(), "all, in order");
    assert!(calls < 64, "{calls} recvmmsg calls for 64 datagrams");
    // Loopback usually delivers within the send call, so this is one batch;
    // a softirq deferred to ksoftirqd on a busy host may split it.
    assert_eq!(rx.syscalls(), calls as u64);
    assert_eq!(tx.syscalls(), 1);
}

#[test]
fn short_control_buffer_sets_ctrunc_and_still_delivers() {
    let sock = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let peer = plain_socket(addr("127.0.0.1:0"), 64, 0xb8);
    // Room for one small control message only: the 48-octet timestamp, the
    // packet info and the rest do not fit, so the kernel cuts and sets
    // MSG_CTRUNC.
    let mut rx = RxBatch::new(&BatchConfig {
        rx_control_len: 24,
        ..BatchConfig::default()
    });
    peer.send_to(b"abc", sock.local_addr()).unwrap();
    recv_until(&sock, &mut rx, 1, |_| {});
    let pkt = rx.get(0).unwrap().unwrap();
    assert_eq!(pkt.payload, b"abc");
    assert!(pkt.control_truncated);
    // Linux writes the timestamp first and cuts it to the room left (8 data
    // octets here): a typed error, not garbage.
    assert!(
        matches!(pkt.control_error, None | Some(WireError::Truncated { .. })),
        "{pkt:?}"
    );
    assert_eq!(pkt.src, peer.local_addr().unwrap());
    // Whatever survived is right; the stamp falls back if the kernel's was cut.
    assert!(pkt.ttl.is_none() || pkt.ttl == Some(64));
    assert!(pkt.tos.is_none() || pkt.tos == Some(0xb8));
    assert!(pkt.dst.is_none() || pkt.dst == Some(sock.local_addr()));
    if pkt.rx_stamp.source == StampSource::UserSpace {
        assert_eq!(pkt.rx_stamp.scale, TimeScale::Tai);
    }

    // No control buffer at all.
    let mut bare = RxBatch::new(&BatchConfig {
        rx_control_len: 0,
        ..BatchConfig::default()
    });
    peer.send_to(b"de", sock.local_addr()).unwrap();
    recv_until(&sock, &mut bare, 1, |_| {});
    let pkt = bare.get(0).unwrap().unwrap();
    assert_eq!(pkt.payload, b"de");
    assert_eq!((pkt.ttl, pkt.tos, pkt.dst), (None, None, None));
    assert_eq!(pkt.rx_stamp.source, StampSource::UserSpace);
}

#[test]
fn oversized_datagram_is_reported_truncated() {
    let sock = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let peer = plain_socket(addr("127.0.0.1:0"), 64, 0);
    let mut rx = RxBatch::new(&BatchConfig {
        buf_len: 16,
        ..BatchConfig::default()
    });
    peer.send_to(&[7u8; 100], sock.local_addr()).unwrap();
    peer.send_to(&[8u8; 16], sock.local_addr()).unwrap();
    recv_until(&sock, &mut rx, 2, |_| {});
    assert_eq!(rx.get(0).unwrap(), Err(RxError::Truncated { buf_len: 16 }));
    assert_eq!(rx.get(1).unwrap().unwrap().payload, &[8u8; 16]);
    assert!(rx.get(2).is_none());
}

#[test]
fn would_block_when_nothing_is_waiting() {
    let sock = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let mut rx = RxBatch::new(&BatchConfig::default());
    let e = sock.recv_batch(&mut rx).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    assert!(rx.is_empty());
}

#[test]
fn ipv6_destination_on_ipv4_socket_fails_alone() {
    let sock = BatchSocket::bind(addr("127.0.0.1:0"), &SocketOptions::default()).unwrap();
    let peer = plain_socket(addr("127.0.0.1:0"), 64, 0);
    let mut tx = TxBatch::new(&BatchConfig::default());
    tx.push(TxMeta::to(addr("[::1]:9")), |_| Some(1)).unwrap();
    tx.push(TxMeta::to(peer.local_addr().unwrap()), |b| {
        b[0] = 42;
        Some(1)
    })
    .unwrap();
    let rep = sock.send_batch(&mut tx);
    assert_eq!((rep.sent, rep.failed), (1, 1));
    assert_eq!(
        rep.last_error.unwrap().raw_os_error(),
        Some(libc::EAFNOSUPPORT)
    );
    assert_eq!(plain_recv(&peer).0, vec![42]);
}

#[test]
fn nic_timestamping_is_refused_on_loopback() {
    // `lo` has no hardware clock; the call must fail cleanly.
    assert!(ricochet_reflector::socket::enable_nic_rx_timestamps("lo").is_err());
    let long = "x".repeat(16);
    assert_eq!(
        ricochet_reflector::socket::enable_nic_rx_timestamps(&long)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::InvalidInput
    );
}
