//! Pre-allocated receive and send batches for `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! A batch owns N payload buffers, N socket-address slots, N control buffers
//! and the iovec / mmsghdr arrays that point into them, all allocated once.
//! The pointers are rewritten before every system call, so a batch can move
//! freely between calls and can serve any number of sockets in turn (the
//! reflector loop owns one receive and one send batch for all its sockets).
//! Nothing is allocated per packet.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use ricochet_protocol::WireError;
use thiserror::Error;

use super::cmsg::{self, cmsg_align, Ancillary, CmsgWriter, RX_CONTROL_LEN, TX_CONTROL_LEN};
use super::udp::usable_source;
use crate::clock::{Stamp, StampSource, TimeScale};

/// `UIO_MAXIOV`: the most messages one `recvmmsg`/`sendmmsg` call takes.
pub const MAX_BATCH: usize = 1024;
/// The largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Sizes of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Messages per system call (clamped to 1..=[`MAX_BATCH`]).
    pub batch: usize,
    /// Octets per payload buffer (clamped to 1..=[`MAX_DATAGRAM`]): the
    /// largest datagram received whole, and the largest reply. Longer
    /// datagrams are flagged truncated and dropped.
    pub buf_len: usize,
    /// Control-buffer octets per received message. The default,
    /// [`RX_CONTROL_LEN`], holds every option [`super::BatchSocket`] enables;
    /// less makes the kernel cut messages (`MSG_CTRUNC`).
    pub rx_control_len: usize,
    /// The time scale of the NIC's raw hardware stamps: the PHC's. linuxptp
    /// runs PHCs on PTP time (TAI), the default.
    pub hw_scale: TimeScale,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            batch: 64,
            // Covers a 1500-octet MTU with room; jumbo frames need more.
            buf_len: 2048,
            rx_control_len: RX_CONTROL_LEN,
            hw_scale: TimeScale::Tai,
        }
    }
}

impl BatchConfig {
    fn batch(&self) -> usize {
        self.batch.clamp(1, MAX_BATCH)
    }
    fn buf_len(&self) -> usize {
        self.buf_len.clamp(1, MAX_DATAGRAM)
    }
}

/// All-zero values of the libc structs a batch holds.
trait Zeroed: Copy {
    fn zeroed() -> Self;
}

macro_rules! zeroed_pod {
    ($($t:ty),*) => {$(
        impl Zeroed for $t {
            fn zeroed() -> Self {
                // SAFETY: a plain C struct of integers, arrays and raw
                // pointers: all-zero bytes are a valid value (null pointers).
                unsafe { std::mem::zeroed() }
            }
        }
    )*};
}
zeroed_pod!(libc::sockaddr_storage, libc::iovec, libc::mmsghdr);

fn zeroed_slice<T: Zeroed>(n: usize) -> Box<[T]> {
    vec![T::zeroed(); n].into_boxed_slice()
}

/// Why a received datagram cannot be handed on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RxError {
    /// The datagram was longer than the buffer (`MSG_TRUNC`).
    #[error("datagram longer than the {buf_len}-octet receive buffer (MSG_TRUNC)")]
    Truncated {
        /// The receive buffer's size.
        buf_len: usize,
    },
    /// The source address is not IPv4 or IPv6 (or its length is short).
    #[error("source address of family {family} and length {len} is not IP")]
    BadAddress {
        /// The address family the kernel reported.
        family: i32,
        /// The address length the kernel reported.
        len: usize,
    },
}

/// One received datagram and what the kernel said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPacket<'a> {
    /// The UDP payload.
    pub payload: &'a [u8],
    /// The sender (v4-mapped addresses made IPv4).
    pub src: SocketAddr,
    /// The address and port the datagram was sent to (from packet info);
    /// the reply's source.
    pub dst: Option<SocketAddr>,
    /// The receiving interface.
    pub ifindex: Option<u32>,
    /// IPv4 TTL or IPv6 Hop Limit as received (RFC 5357 §4.2.1 Sender TTL).
    pub ttl: Option<u8>,
    /// IPv4 TOS or IPv6 Traffic Class as received (DSCP << 2 | ECN).
    pub tos: Option<u8>,
    /// The receive stamp: the NIC's, else the kernel's, else user space's
    /// (taken right after `recvmmsg` returned).
    pub rx_stamp: Stamp,
    /// The kernel cut the control data (`MSG_CTRUNC`): some of the fields
    /// above may be missing.
    pub control_truncated: bool,
    /// A malformed control message, if any.
    pub control_error: Option<WireError>,
    /// `SO_RXQ_OVFL`: datagrams the socket has dropped so far (cumulative).
    pub rxq_dropped: Option<u32>,
}

/// Decodes a kernel-written socket address; v4-mapped becomes IPv4.
fn decode_sockaddr(
    ss: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Result<SocketAddr, RxError> {
    let len = len as usize;
    let family = i32::from(ss.ss_family);
    let bad = RxError::BadAddress { family, len };
    match family {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is sized and aligned for every socket
            // address type; the family and length say the kernel wrote a
            // sockaddr_in here.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Ok(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => Err(bad),
    }
}

/// Encodes `addr` for a socket of the given family: IPv4 destinations are
/// v4-mapped on IPv6 sockets. `None` if the family cannot carry it.
fn encode_sockaddr(
    addr: SocketAddr,
    v6_socket: bool,
    ss: &mut libc::sockaddr_storage,
) -> Option<libc::socklen_t> {
    let v6 = |ip: Ipv6Addr, port: u16, flow: u32, scope: u32| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: flow,
        sin6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: scope,
    };
    let v4 = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let put_v4 = |ss: &mut libc::sockaddr_storage, sin: libc::sockaddr_in| {
        // SAFETY: sockaddr_storage is sized and aligned for sockaddr_in.
        unsafe { *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() = sin };
        size_of::<libc::sockaddr_in>() as libc::socklen_t
    };
    let put_v6 = |ss: &mut libc::sockaddr_storage, sin6: libc::sockaddr_in6| {
        // SAFETY: sockaddr_storage is sized and aligned for sockaddr_in6.
        unsafe { *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() = sin6 };
        size_of::<libc::sockaddr_in6>() as libc::socklen_t
    };
    match (canonical(addr), v6_socket) {
        (SocketAddr::V4(a), false) => Some(put_v4(ss, v4(*a.ip(), a.port()))),
        (SocketAddr::V4(a), true) => Some(put_v6(ss, v6(a.ip().to_ipv6_mapped(), a.port(), 0, 0))),
        (SocketAddr::V6(a), true) => Some(put_v6(
            ss,
            v6(*a.ip(), a.port(), a.flowinfo(), a.scope_id()),
        )),
        (SocketAddr::V6(_), false) => None,
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// A batch of receive buffers for [`super::BatchSocket::recv_batch`].
pub struct RxBatch {
    batch: usize,
    buf_len: usize,
    control_len: usize,
    hw_scale: TimeScale,
    bufs: Box<[u8]>,
    controls: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
    local_port: u16,
    user_stamp: Stamp,
    syscalls: u64,
}

// SAFETY: the raw pointers in `iovecs` and `hdrs` only ever point into this
// batch's own heap buffers, are rewritten before each system call and are
// never dereferenced by Rust code; moving the batch to another thread moves
// the buffers with it.
unsafe impl Send for RxBatch {}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch")
            .field("batch", &self.batch)
            .field("buf_len", &self.buf_len)
            .field("control_len", &self.control_len)
            .field("len", &self.len)
            .field("syscalls", &self.syscalls)
            .finish_non_exhaustive()
    }
}

impl RxBatch {
    /// Allocates every buffer of the batch.
    pub fn new(cfg: &BatchConfig) -> RxBatch {
        let batch = cfg.batch();
        let buf_len = cfg.buf_len();
        let control_len = cmsg_align(cfg.rx_control_len);
        RxBatch {
            batch,
            buf_len,
            control_len,
            hw_scale: cfg.hw_scale,
            bufs: vec![0u8; batch * buf_len].into_boxed_slice(),
            controls: vec![0u8; batch * control_len].into_boxed_slice(),
            names: zeroed_slice(batch),
            iovecs: zeroed_slice(batch),
            hdrs: zeroed_slice(batch),
            len: 0,
            local_port: 0,
            user_stamp: Stamp::now(),
            syscalls: 0,
        }
    }

    /// Messages per system call.
    pub fn capacity(&self) -> usize {
        self.batch
    }

    /// Datagrams from the last receive.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `recvmmsg` calls that returned datagrams, since creation.
    pub fn syscalls(&self) -> u64 {
        self.syscalls
    }

    fn prepare(&mut self) {
        let buf_base = self.bufs.as_mut_ptr();
        for (i, iov) in self.iovecs.iter_mut().enumerate() {
            *iov = libc::iovec {
                iov_base: buf_base.wrapping_add(i * self.buf_len).cast(),
                iov_len: self.buf_len,
            };
        }
        let iov_base = self.iovecs.as_mut_ptr();
        let name_base = self.names.as_mut_ptr();
        let ctl_base = self.controls.as_mut_ptr();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            h.msg_len = 0;
            let m = &mut h.msg_hdr;
            m.msg_name = name_base.wrapping_add(i).cast();
            m.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_iov = iov_base.wrapping_add(i);
            m.msg_iovlen = 1;
            if self.control_len == 0 {
                m.msg_control = std::ptr::null_mut();
            } else {
                m.msg_control = ctl_base.wrapping_add(i * self.control_len).cast();
            }
            m.msg_controllen = self.control_len as _;
            m.msg_flags = 0;
        }
    }

    /// One non-blocking `recvmmsg` on `fd`, whose local port is `port`.
    pub(crate) fn recv_from(&mut self, fd: RawFd, port: u16) -> io::Result<usize> {
        self.len = 0;
        self.prepare();
        let n = loop {
            // SAFETY: `fd` is an open socket owned by the caller. `hdrs` holds
            // `batch` mmsghdrs, each pointing (set just above by `prepare`)
            // to one iovec over a `buf_len`-octet slice of `bufs`, to one
            // sockaddr_storage of `names` (namelen = its size) and to a
            // `control_len`-octet slice of `controls` — all live, exclusively
            // borrowed through `self` for the duration of the call.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    self.batch as _,
                    libc::MSG_DONTWAIT as _,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        self.user_stamp = Stamp::now();
        self.len = n.min(self.batch);
        self.local_port = port;
        self.syscalls += 1;
        Ok(self.len)
    }

    /// The `i`-th datagram of the last receive.
    pub fn get(&self, i: usize) -> Option<Result<RxPacket<'_>, RxError>> {
        if i >= self.len {
            return None;
        }
        let h = &self.hdrs[i];
        let flags = h.msg_hdr.msg_flags;
        if flags & libc::MSG_TRUNC != 0 {
            return Some(Err(RxError::Truncated {
                buf_len: self.buf_len,
            }));
        }
        let src = match decode_sockaddr(&self.names[i], h.msg_hdr.msg_namelen) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        let n = (h.msg_len as usize).min(self.buf_len);
        let start = i * self.buf_len;
        // size_t on glibc, socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let clen = (h.msg_hdr.msg_controllen as usize).min(self.control_len);
        let cstart = i * self.control_len;
        let anc = Ancillary::parse(&self.controls[cstart..cstart + clen]);
        let rx_stamp = match (anc.hw_stamp_ns, anc.sw_stamp_ns) {
            (Some(ns), _) => Stamp {
                ns,
                scale: self.hw_scale,
                source: StampSource::NicHardware,
            },
            (None, Some(ns)) => Stamp {
                ns,
                scale: TimeScale::Utc,
                source: StampSource::KernelSoftware,
            },
            (None, None) => self.user_stamp,
        };
        Some(Ok(RxPacket {
            payload: &self.bufs[start..start + n],
            src,
            dst: anc.dst.map(|ip| SocketAddr::new(ip, self.local_port)),
            ifindex: anc.ifindex,
            ttl: anc.ttl,
            tos: anc.tos,
            rx_stamp,
            control_truncated: flags & libc::MSG_CTRUNC != 0,
            control_error: anc.error,
            rxq_dropped: anc.rxq_dropped,
        }))
    }

    /// The datagrams of the last receive, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Result<RxPacket<'_>, RxError>> + '_ {
        (0..self.len).filter_map(move |i| self.get(i))
    }
}

/// Where and how a queued datagram is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxMeta {
    /// The destination.
    pub dst: SocketAddr,
    /// The source address (`IP_PKTINFO` / `IPV6_PKTINFO`); `None`, or an
    /// unspecified, multicast or broadcast address, lets routing choose.
    pub src: Option<IpAddr>,
    /// Outgoing interface for an IPv6 link-local source; 0 for none.
    pub ifindex: u32,
    /// A TOS / Traffic Class for this datagram only (`IP_TOS` /
    /// `IPV6_TCLASS` cmsg); `None` keeps the socket's.
    pub tos: Option<u8>,
}

impl TxMeta {
    /// A plain datagram to `dst`.
    pub fn to(dst: SocketAddr) -> TxMeta {
        TxMeta {
            dst,
            src: None,
            ifindex: 0,
            tos: None,
        }
    }

    /// The reply to `rx`: back to its source, from the address it was sent to.
    pub fn reply_to(rx: &RxPacket<'_>) -> TxMeta {
        TxMeta {
            dst: rx.src,
            src: rx.dst.map(|d| d.ip()),
            ifindex: rx.ifindex.unwrap_or(0),
            tos: None,
        }
    }
}

/// Why a reply could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TxError {
    /// Every slot is taken: send the batch first.
    #[error("send batch full")]
    Full,
    /// The filler claimed more octets than the buffer has.
    #[error("reply length {len} exceeds the {buf_len}-octet buffer")]
    TooLong {
        /// The length the filler returned.
        len: usize,
        /// The slot's size.
        buf_len: usize,
    },
}

/// The outcome of [`super::BatchSocket::send_batch`].
#[derive(Debug, Default)]
pub struct SendReport {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams that failed (each counted once).
    pub failed: usize,
    /// `sendmmsg` calls made.
    pub syscalls: usize,
    /// The last failure's error.
    pub last_error: Option<io::Error>,
}

/// A batch of datagrams to send with [`super::BatchSocket::send_batch`].
pub struct TxBatch {
    batch: usize,
    buf_len: usize,
    bufs: Box<[u8]>,
    lens: Box<[usize]>,
    metas: Box<[TxMeta]>,
    names: Box<[libc::sockaddr_storage]>,
    name_lens: Box<[libc::socklen_t]>,
    controls: Box<[u8]>,
    control_lens: Box<[usize]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
    syscalls: u64,
}

// SAFETY: as for RxBatch: the raw pointers in `iovecs` and `hdrs` point only
// into this batch's own heap buffers and are rewritten before each call.
unsafe impl Send for TxBatch {}

impl std::fmt::Debug for TxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxBatch")
            .field("batch", &self.batch)
            .field("buf_len", &self.buf_len)
            .field("len", &self.len)
            .field("syscalls", &self.syscalls)
            .finish_non_exhaustive()
    }
}

impl TxBatch {
    /// Allocates every buffer of the batch (`cfg.rx_control_len` is unused:
    /// sent datagrams need [`TX_CONTROL_LEN`]).
    pub fn new(cfg: &BatchConfig) -> TxBatch {
        let batch = cfg.batch();
        let buf_len = cfg.buf_len();
        TxBatch {
            batch,
            buf_len,
            bufs: vec![0u8; batch * buf_len].into_boxed_slice(),
            lens: vec![0; batch].into_boxed_slice(),
            metas: vec![TxMeta::to(SocketAddr::from(([0, 0, 0, 0], 0))); batch].into_boxed_slice(),
            names: zeroed_slice(batch),
            name_lens: vec![0; batch].into_boxed_slice(),
            controls: vec![0u8; batch * TX_CONTROL_LEN].into_boxed_slice(),
            control_lens: vec![0; batch].into_boxed_slice(),
            iovecs: zeroed_slice(batch),
            hdrs: zeroed_slice(batch),
            len: 0,
            syscalls: 0,
        }
    }

    /// Slots in the batch.
    pub fn capacity(&self) -> usize {
        self.batch
    }

    /// Octets per slot: the longest datagram.
    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every slot taken.
    pub fn is_full(&self) -> bool {
        self.len == self.batch
    }

    /// `sendmmsg` calls made since creation.
    pub fn syscalls(&self) -> u64 {
        self.syscalls
    }

    /// Drops every queued datagram.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Queues one datagram: `fill` writes it into the next slot's buffer and
    /// returns its length, or `None` to queue nothing. `Ok(true)` if queued.
    pub fn push<F>(&mut self, meta: TxMeta, fill: F) -> Result<bool, TxError>
    where
        F: FnOnce(&mut [u8]) -> Option<usize>,
    {
        if self.is_full() {
            return Err(TxError::Full);
        }
        let i = self.len;
        let start = i * self.buf_len;
        let buf = &mut self.bufs[start..start + self.buf_len];
        match fill(buf) {
            None => Ok(false),
            Some(len) if len > self.buf_len => Err(TxError::TooLong {
                len,
                buf_len: self.buf_len,
            }),
            Some(len) => {
                self.lens[i] = len;
                self.metas[i] = TxMeta {
                    dst: canonical(meta.dst),
                    src: meta.src.map(|ip| canonical(SocketAddr::new(ip, 0)).ip()),
                    ..meta
                };
                self.len += 1;
                Ok(true)
            }
        }
    }

    /// Sets the TOS / Traffic Class of the datagram queued last (a reply
    /// whose content decided its DSCP). Nothing if the batch is empty.
    pub fn set_last_tos(&mut self, tos: u8) {
        if let Some(i) = self.len.checked_sub(1) {
            self.metas[i].tos = Some(tos);
        }
    }

    /// Encodes the control messages of `meta` into `buf`; returns the length.
    fn encode_control(meta: &TxMeta, buf: &mut [u8]) -> usize {
        let mut w = CmsgWriter::new(buf);
        // TX_CONTROL_LEN has room for one packet info and one TOS, so the
        // pushes below cannot fail; if one did, that option is left out.
        if let Some(src) = meta.src.filter(|s| usable_source(*s)) {
            let _ = match (src, meta.dst) {
                (IpAddr::V4(s), SocketAddr::V4(_)) => {
                    w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &cmsg::in_pktinfo(s, 0))
                }
                (IpAddr::V6(s), SocketAddr::V6(_)) => {
                    let link_local = s.segments()[0] & 0xffc0 == 0xfe80;
                    let ifindex = if link_local { meta.ifindex } else { 0 };
                    w.push(
                        libc::IPPROTO_IPV6,
                        libc::IPV6_PKTINFO,
                        &cmsg::in6_pktinfo(s, ifindex),
                    )
                }
                // Families differ: let routing choose.
                _ => Ok(()),
            };
        }
        if let Some(tos) = meta.tos {
            let v = libc::c_int::from(tos).to_ne_bytes();
            let _ = match meta.dst {
                SocketAddr::V4(_) => w.push(libc::IPPROTO_IP, libc::IP_TOS, &v),
                SocketAddr::V6(_) => w.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &v),
            };
        }
        w.len()
    }

    /// Sends every queued datagram on `fd` and empties the batch.
    pub(crate) fn send_on(&mut self, fd: RawFd, v6_socket: bool) -> SendReport {
        let mut report = SendReport::default();
        // Encode, compacting the sendable datagrams into slots 0..m.
        let buf_base = self.bufs.as_mut_ptr();
        let mut m = 0;
        for i in 0..self.len {
            let meta = self.metas[i];
            let Some(nl) = encode_sockaddr(meta.dst, v6_socket, &mut self.names[m]) else {
                report.failed += 1;
                report.last_error = Some(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
                continue;
            };
            self.name_lens[m] = nl;
            let c = m * TX_CONTROL_LEN;
            self.control_lens[m] =
                Self::encode_control(&meta, &mut self.controls[c..c + TX_CONTROL_LEN]);
            self.iovecs[m] = libc::iovec {
                iov_base: buf_base.wrapping_add(i * self.buf_len).cast(),
                iov_len: self.lens[i],
            };
            m += 1;
        }
        let iov_base = self.iovecs.as_mut_ptr();
        let name_base = self.names.as_mut_ptr();
        let ctl_base = self.controls.as_mut_ptr();
        for (j, h) in self.hdrs[..m].iter_mut().enumerate() {
            h.msg_len = 0;
            let mh = &mut h.msg_hdr;
            mh.msg_name = name_base.wrapping_add(j).cast();
            mh.msg_namelen = self.name_lens[j];
            mh.msg_iov = iov_base.wrapping_add(j);
            mh.msg_iovlen = 1;
            let clen = self.control_lens[j];
            mh.msg_control = if clen == 0 {
                std::ptr::null_mut()
            } else {
                ctl_base.wrapping_add(j * TX_CONTROL_LEN).cast()
            };
            mh.msg_controllen = clen as _;
            mh.msg_flags = 0;
        }
        let mut off = 0;
        while off < m {
            // SAFETY: `fd` is an open socket owned by the caller. hdrs[off..m]
            // were set just above to point to live iovecs over queued slices
            // of `bufs`, encoded socket addresses in `names` and control
            // messages in `controls`, all owned by `self` and not touched
            // until the call returns.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[off..m].as_mut_ptr(),
                    (m - off) as _,
                    libc::MSG_DONTWAIT as _,
                )
            };
            report.syscalls += 1;
            if r > 0 {
                report.sent += r as usize;
                off += r as usize;
                continue;
            }
            let e = if r == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing")
            } else {
                io::Error::last_os_error()
            };
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // The socket buffer is full: the rest would fail the same way.
                io::ErrorKind::WouldBlock => {
                    report.failed += m - off;
                    report.last_error = Some(e);
                    break;
                }
                // This message failed (e.g. no route): skip it.
                _ => {
                    report.failed += 1;
                    report.last_error = Some(e);
                    off += 1;
                }
            }
        }
        self.syscalls += report.syscalls as u64;
        self.len = 0;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        let cases: [(SocketAddr, bool); 4] = [
            ("192.0.2.1:862".parse().unwrap(), false),
            ("192.0.2.1:862".parse().unwrap(), true),
            ("[2001:db8::1]:4000".parse().unwrap(), true),
            ("[fe80::1%3]:5".parse().unwrap(), true),
        ];
        for (addr, v6) in cases {
            let mut ss = libc::sockaddr_storage::zeroed();
            let len = encode_sockaddr(addr, v6, &mut ss).unwrap();
            let expect_family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
            assert_eq!(i32::from(ss.ss_family), expect_family);
            assert_eq!(decode_sockaddr(&ss, len).unwrap(), addr);
        }
        let mut ss = libc::sockaddr_storage::zeroed();
        assert!(encode_sockaddr("[2001:db8::1]:1".parse().unwrap(), false, &mut ss).is_none());
        // v4-mapped on an IPv4 socket is plain IPv4.
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:7".parse().unwrap();
        let len = encode_sockaddr(mapped, false, &mut ss).unwrap();
        assert_eq!(
            decode_sockaddr(&ss, len).unwrap(),
            "192.0.2.9:7".parse().unwrap()
        );
    }

    #[test]
    fn short_or_foreign_addresses_are_errors() {
        let mut ss = libc::sockaddr_storage::zeroed();
        let len = encode_sockaddr("[2001:db8::1]:1".parse().unwrap(), true, &mut ss).unwrap();
        assert_eq!(
            decode_sockaddr(&ss, len - 1),
            Err(RxError::BadAddress {
                family: libc::AF_INET6,
                len: len as usize - 1
            })
        );
        ss.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(matches!(
            decode_sockaddr(&ss, len),
            Err(RxError::BadAddress {
                family: libc::AF_UNIX,
                ..
            })
        ));
    }

    #[test]
    fn tx_control_encoding() {
        let mut buf = [0u8; TX_CONTROL_LEN];
        let meta = TxMeta {
            dst: "192.0.2.1:5".parse().unwrap(),
            src: Some("198.51.100.7".parse().unwrap()),
            ifindex: 4,
            tos: Some(0xb8),
        };
        let n = TxBatch::encode_control(&meta, &mut buf);
        let msgs: Vec<_> = cmsg::walk(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            (msgs[0].level, msgs[0].ty),
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        );
        assert_eq!(
            msgs[0].data,
            &cmsg::in_pktinfo("198.51.100.7".parse().unwrap(), 0)
        );
        assert_eq!(
            (msgs[1].level, msgs[1].ty),
            (libc::IPPROTO_IP, libc::IP_TOS)
        );
        assert_eq!(msgs[1].data, &0xb8i32.to_ne_bytes());

        // Link-local IPv6 source keeps the interface; unspecified source is
        // left to routing; family mismatch is ignored.
        let ll = TxMeta {
            dst: "[fe80::2%4]:5".parse().unwrap(),
            src: Some("fe80::1".parse().unwrap()),
            ifindex: 4,
            tos: None,
        };
        let n = TxBatch::encode_control(&ll, &mut buf);
        let msgs: Vec<_> = cmsg::walk(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            msgs[0].data,
            &cmsg::in6_pktinfo("fe80::1".parse().unwrap(), 4)
        );
        let global = TxMeta {
            src: Some("2001:db8::1".parse().unwrap()),
            ..ll
        };
        let n = TxBatch::encode_control(&global, &mut buf);
        let msgs: Vec<_> = cmsg::walk(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            msgs[0].data,
            &cmsg::in6_pktinfo("2001:db8::1".parse().unwrap(), 0)
        );
        for src in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "2001:db8::1"] {
            let m = TxMeta {
                src: Some(src.parse().unwrap()),
                ..meta
            };
            let m = TxMeta { tos: None, ..m };
            assert_eq!(TxBatch::encode_control(&m, &mut buf), 0, "{src}");
        }
    }

    #[test]
    fn push_respects_capacity_and_length() {
        let mut tx = TxBatch::new(&BatchConfig {
            batch: 2,
            buf_len: 8,
            ..BatchConfig::default()
        });
        let dst = TxMeta::to("127.0.0.1:9".parse().unwrap());
        assert_eq!(tx.push(dst, |_| None), Ok(false));
        assert_eq!(
            tx.push(dst, |_| Some(9)),
            Err(TxError::TooLong { len: 9, buf_len: 8 })
        );
        assert_eq!(tx.push(dst, |b| Some(b.len())), Ok(true));
        assert_eq!(tx.push(dst, |_| Some(0)), Ok(true));
        assert!(tx.is_full());
        assert_eq!(tx.push(dst, |_| Some(1)), Err(TxError::Full));
        tx.clear();
        assert!(tx.is_empty());
    }

    #[test]
    fn config_is_clamped() {
        let rx = RxBatch::new(&BatchConfig {
            batch: 0,
            buf_len: 1 << 20,
            rx_control_len: 5,
            hw_scale: TimeScale::Tai,
        });
        assert_eq!(rx.capacity(), 1);
        assert_eq!(rx.buf_len, MAX_DATAGRAM);
        assert_eq!(rx.control_len, cmsg_align(5));
        assert!(rx.get(0).is_none());
    }
}
