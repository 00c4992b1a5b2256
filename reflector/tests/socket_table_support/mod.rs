//! Helpers of the `socket_table_*` loopback tests: a test peer that sends
//! with a chosen TTL / TOS and reads each reply's TTL and TOS, sender-packet
//! builders, and field readers at the RFC offsets.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ricochet_protocol::control::Sid;
use ricochet_protocol::crypto::{PacketRole, SessionKeys, TestKeys, TestProtection};
use ricochet_protocol::modes::SecurityMode;
use ricochet_protocol::twamp_test::SessionFormat;
use ricochet_reflector::clock::now_utc_ns;
use ricochet_reflector::session_table::SessionSpec;
use ricochet_reflector::socket::{
    BatchConfig, BatchSocket, RxBatch, SocketOptions, SocketSessionTable, TableConfig, TxBatch,
    TxMeta,
};

/// How long a test waits for loopback traffic it expects.
pub const PATIENCE: Duration = Duration::from_secs(5);
/// How long a test waits to be sure nothing comes back.
pub const QUIET: Duration = Duration::from_millis(300);

pub const NTP_UNIX: u64 = 2_208_988_800;
pub const NS: u64 = 1_000_000_000;

/// A table with a fast sweep.
pub fn table() -> SocketSessionTable {
    SocketSessionTable::spawn(&TableConfig {
        housekeeping: Duration::from_millis(20),
        ..TableConfig::default()
    })
    .expect("socket table")
}

/// One received reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub payload: Vec<u8>,
    pub src: SocketAddr,
    pub ttl: Option<u8>,
    pub tos: Option<u8>,
}

/// A test peer: a socket of the I/O layer (tested on its own in
/// socket_loopback.rs), used here for its TTL / TOS reporting.
pub struct Peer {
    pub sock: BatchSocket,
    rx: RxBatch,
    tx: TxBatch,
    queue: VecDeque<Reply>,
}

impl Peer {
    /// Binds on `addr` (port 0 for any), sending with TTL / Hop Limit `ttl`
    /// and TOS / Traffic Class `tos`.
    pub fn bind(addr: &str, ttl: u8, tos: u8) -> Peer {
        let opts = SocketOptions {
            ttl,
            tos,
            dual_stack: false,
            ..SocketOptions::default()
        };
        let cfg = BatchConfig::default();
        Peer {
            sock: BatchSocket::bind(addr.parse().unwrap(), &opts).unwrap(),
            rx: RxBatch::new(&cfg),
            tx: TxBatch::new(&cfg),
            queue: VecDeque::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr()
    }

    pub fn send(&mut self, to: SocketAddr, payload: &[u8]) {
        self.tx
            .push(TxMeta::to(to), |b| {
                b[..payload.len()].copy_from_slice(payload);
                Some(payload.len())
            })
            .unwrap();
        let r = self.sock.send_batch(&mut self.tx);
        assert_eq!(r.sent, 1, "send failed: {:?}", r.last_error);
    }

    fn poll(&mut self) -> bool {
        match self.sock.recv_batch(&mut self.rx) {
            Ok(_) => {
                for p in self.rx.iter() {
                    let p = p.expect("a well-formed datagram");
                    self.queue.push_back(Reply {
                        payload: p.payload.to_vec(),
                        src: p.src,
                        ttl: p.ttl,
                        tos: p.tos,
                    });
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("recv_batch: {e}"),
        }
    }

    /// The next reply, waiting up to `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Some(r);
            }
            if !self.poll() {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// The next reply; fails the test if none comes.
    pub fn recv(&mut self) -> Reply {
        self.recv_within(PATIENCE)
            .expect("a reply within the timeout")
    }

    /// Fails the test if anything arrives within [`QUIET`].
    pub fn expect_silence(&mut self, what: &str) {
        if let Some(r) = self.recv_within(QUIET) {
            panic!("{what}: unexpected reply of {} octets", r.payload.len());
        }
    }
}

/// A SID unique within the test process.
pub fn sid() -> Sid {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let mut s = [0x5au8; 16];
    s[15] = NEXT.fetch_add(1, Ordering::Relaxed);
    s[0..4].copy_from_slice(&std::process::id().to_be_bytes());
    Sid(s)
}

/// Test keys derived from `seed` (any values do: sender and reflector share
/// them).
pub fn keys(seed: u8) -> SessionKeys {
    let mut k = SessionKeys {
        aes: [0; 16],
        hmac: [0; 32],
    };
    for (i, b) in k.aes.iter_mut().chain(k.hmac.iter_mut()).enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    k
}

pub fn session_spec(
    sender: SocketAddr,
    reflector: &str,
    security: SecurityMode,
    format: SessionFormat,
    dscp: u8,
) -> SessionSpec {
    SessionSpec {
        sid: sid(),
        sender,
        reflector: reflector.parse().unwrap(),
        security,
        format,
        dscp,
        test_keys: Some(keys(dscp)),
        rate_limit_pps: 0,
        rate_burst: 0,
    }
}

/// NTP now (UTC).
pub fn ntp_now() -> [u8; 8] {
    let ns = now_utc_ns();
    let secs = ns / NS + NTP_UNIX;
    let frac = ((ns % NS) << 32) / NS;
    ((secs << 32) | frac).to_be_bytes()
}

/// UTC nanoseconds of an NTP timestamp.
pub fn ntp_ns(b: &[u8]) -> u64 {
    let secs = u64::from(be32(b, 0));
    let frac = u64::from(be32(b, 4));
    (secs - NTP_UNIX) * NS + ((frac * NS) >> 32)
}

/// A sender packet of `security` (unprotected if `None`): 14 or 48 octets
/// of header, `pad` octets of padding, protected with `keys`.
pub fn sender_packet(
    protection: Option<TestProtection>,
    keys: &SessionKeys,
    seq: u32,
    pad: usize,
) -> Vec<u8> {
    match protection {
        None => {
            let mut p = vec![0u8; 14 + pad];
            p[0..4].copy_from_slice(&seq.to_be_bytes());
            p[4..12].copy_from_slice(&ntp_now());
            p[12..14].copy_from_slice(&0x0001u16.to_be_bytes());
            p
        }
        Some(mode) => {
            let mut p = vec![0u8; 48 + pad];
            p[0..4].copy_from_slice(&seq.to_be_bytes());
            p[16..24].copy_from_slice(&ntp_now());
            p[24..26].copy_from_slice(&0x0001u16.to_be_bytes());
            TestKeys::new(keys)
                .protect(PacketRole::Sender, mode, &mut p)
                .unwrap();
            p
        }
    }
}

/// The plaintext of a sender packet built by [`sender_packet`].
pub fn sender_plaintext(
    protection: Option<TestProtection>,
    keys: &SessionKeys,
    pkt: &[u8],
) -> Vec<u8> {
    let mut p = pkt.to_vec();
    if let Some(mode) = protection {
        TestKeys::new(keys)
            .unprotect(PacketRole::Sender, mode, &mut p)
            .unwrap();
    }
    p
}

/// Decrypts and verifies a reflector packet in place.
pub fn open_reply(mode: TestProtection, keys: &SessionKeys, reply: &mut [u8]) {
    TestKeys::new(keys)
        .unprotect(PacketRole::Reflector, mode, reply)
        .expect("the reply's HMAC verifies with the session keys");
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Polls `cond` until it holds, failing after [`PATIENCE`].
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
