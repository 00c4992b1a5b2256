//! [`BatchSocket`]: a non-blocking UDP socket set up for reflection, with
//! batched `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! At bind time the socket asks the kernel for everything a reflector must
//! copy into its reply or needs to answer correctly:
//! * receive timestamps: `SO_TIMESTAMPING` (hardware where the NIC gives
//!   them, software otherwise), or `SO_TIMESTAMPNS` if that is refused;
//! * the received TTL / Hop Limit (RFC 5357 §4.2.1 Sender TTL) and TOS /
//!   Traffic Class (RFC 7750 S-DSCP-ECN): `IP_RECVTTL`, `IP_RECVTOS`,
//!   `IPV6_RECVHOPLIMIT`, `IPV6_RECVTCLASS`; a dual-stack IPv6 socket enables
//!   the IPv4 options too, for its v4-mapped traffic;
//! * the destination address (`IP_PKTINFO`, `IPV6_RECVPKTINFO`), so a reply
//!   to a wildcard-bound socket leaves from the address the packet was sent to;
//! * `SO_RXQ_OVFL`, the count of datagrams the socket buffer dropped.
//!
//! On transmit it sets TTL / Hop Limit 255 (RFC 5357 §4.2: the reflector
//! SHOULD) and the session's TOS / Traffic Class (Type-P DSCP, RFC 5357 §3.5).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use mio::unix::SourceFd;
use socket2::{Domain, Protocol, Socket, Type};

use super::batch::{RxBatch, SendReport, TxBatch};
use crate::clock::{Stamp, StampSource, TimeScale};

/// Which receive timestamps to ask the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RxTimestamping {
    /// `SO_TIMESTAMPING` with hardware and software receive stamps; falls
    /// back to `SO_TIMESTAMPNS` if the kernel refuses it.
    #[default]
    Auto,
    /// `SO_TIMESTAMPNS` only (software stamps, nanosecond resolution).
    SoftwareOnly,
    /// No kernel stamps: packets are stamped in user space after `recvmmsg`.
    Off,
}

/// What the socket actually got from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampingMode {
    /// `SO_TIMESTAMPING` (hardware stamps when the NIC is configured for them).
    Timestamping,
    /// `SO_TIMESTAMPNS` (software stamps).
    TimestampNs,
    /// No kernel receive stamps.
    None,
}

/// Options for [`BatchSocket::bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// TOS / Traffic Class octet of sent packets: DSCP << 2 | ECN. The
    /// session's Type-P DSCP; ECN SHOULD be Not-ECT (RFC 7750 §3).
    pub tos: u8,
    /// TTL / Hop Limit of sent packets (RFC 5357 §4.2: 255).
    pub ttl: u8,
    /// Receive timestamps to ask for.
    pub timestamping: RxTimestamping,
    /// For an IPv6 socket: also accept IPv4 (v4-mapped). Ignored for IPv4.
    pub dual_stack: bool,
    /// `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// `SO_RCVBUF` in octets (the kernel doubles it); `None` keeps the default.
    pub recv_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            tos: 0,
            ttl: 255,
            timestamping: RxTimestamping::Auto,
            dual_stack: true,
            reuse_port: false,
            recv_buffer: None,
        }
    }
}

/// The TOS octet for a DSCP (6 bits) and ECN (2 bits).
pub fn tos_from_dscp(dscp: u8, ecn: u8) -> u8 {
    (dscp << 2) | (ecn & 0x03)
}

/// A non-blocking UDP socket with batched receive and send.
#[derive(Debug)]
pub struct BatchSocket {
    socket: Socket,
    local: SocketAddr,
    v6: bool,
    /// Carries IPv4 traffic (an IPv4 or a dual-stack IPv6 socket).
    v4_traffic: bool,
    timestamping: TimestampingMode,
    /// Transmit timestamps are asked for ([`BatchSocket::enable_tx_timestamps`]).
    tx_stamping: bool,
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; the option value
    // points to a live c_int whose size is passed alongside.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The `SO_TIMESTAMPING` flags asked for: generate hardware and software
/// receive stamps, report software and raw hardware stamps.
pub const TIMESTAMPING_FLAGS: libc::c_uint = libc::SOF_TIMESTAMPING_RX_HARDWARE
    | libc::SOF_TIMESTAMPING_RX_SOFTWARE
    | libc::SOF_TIMESTAMPING_SOFTWARE
    | libc::SOF_TIMESTAMPING_RAW_HARDWARE;

impl BatchSocket {
    /// Creates, configures and binds a socket. Port 0 picks a free port (see
    /// [`Self::local_addr`]).
    pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<BatchSocket> {
        let v6 = addr.is_ipv6();
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        if v6 {
            socket.set_only_v6(!opts.dual_stack)?;
        }
        if opts.reuse_port {
            socket.set_reuse_port(true)?;
        }
        if let Some(n) = opts.recv_buffer {
            socket.set_recv_buffer_size(n)?;
        }
        let fd = socket.as_raw_fd();
        // IPv4 options: on an IPv4 socket, and on a dual-stack IPv6 socket
        // for its v4-mapped traffic (udp_sendmsg / ip_cmsg_recv use them).
        let v4_traffic = !v6 || opts.dual_stack;
        if v4_traffic {
            set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
            set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)?;
            set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
            socket.set_ttl_v4(u32::from(opts.ttl))?;
        }
        if v6 {
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1)?;
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            socket.set_unicast_hops_v6(u32::from(opts.ttl))?;
        }
        // Best effort: an old kernel without it only loses a counter.
        let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
        let timestamping = enable_timestamping(fd, opts.timestamping);
        socket.bind(&addr.into())?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))?;
        let s = BatchSocket {
            socket,
            local,
            v6,
            v4_traffic,
            timestamping,
            tx_stamping: false,
        };
        s.set_tos(opts.tos)?;
        Ok(s)
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// An IPv6 socket (possibly dual-stack).
    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// The receive timestamping the kernel granted.
    pub fn timestamping(&self) -> TimestampingMode {
        self.timestamping
    }

    /// Sets the TOS / Traffic Class of sent packets (the session's DSCP,
    /// RFC 5357 §3.5 Type-P Descriptor). A dual-stack socket sets both.
    pub fn set_tos(&self, tos: u8) -> io::Result<()> {
        if self.v4_traffic {
            self.socket.set_tos_v4(u32::from(tos))?;
        }
        if self.v6 {
            self.socket.set_tclass_v6(u32::from(tos))?;
        }
        Ok(())
    }

    /// Receives up to `rx.capacity()` datagrams with one `recvmmsg` call.
    /// Returns how many arrived; `WouldBlock` when none were waiting.
    pub fn recv_batch(&self, rx: &mut RxBatch) -> io::Result<usize> {
        rx.recv_from(self.socket.as_raw_fd(), self.local.port())
    }

    /// Asks the kernel for a transmit timestamp of every datagram sent
    /// (`SOF_TIMESTAMPING_TX_SOFTWARE` / `_TX_HARDWARE`, delivered on the
    /// error queue with the packet, read by [`Self::read_tx_stamps`]), on
    /// top of the receive timestamps. Only with `SO_TIMESTAMPING` receive
    /// stamps ([`TimestampingMode::Timestamping`]); returns whether it is on.
    pub fn enable_tx_timestamps(&mut self) -> io::Result<bool> {
        if self.timestamping != TimestampingMode::Timestamping {
            return Ok(false);
        }
        set_int(
            self.socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            (TIMESTAMPING_FLAGS | TX_TIMESTAMPING_FLAGS) as libc::c_int,
        )?;
        self.tx_stamping = true;
        Ok(true)
    }

    /// Whether transmit timestamps are on.
    pub fn tx_stamping(&self) -> bool {
        self.tx_stamping
    }

    /// Drains up to `max` transmit timestamps from the error queue
    /// (`MSG_ERRQUEUE`, non-blocking) into `f`: the UDP payload of the
    /// datagram as the kernel looped it back, its destination address,
    /// and the stamp (hardware if the device gave one, else the kernel's
    /// software stamp at transmission). `buf` must hold a whole looped
    /// packet (headers included); longer ones are skipped. Returns how many
    /// messages were read.
    pub fn read_tx_stamps(
        &self,
        buf: &mut [u8],
        control: &mut [u8],
        max: usize,
        f: &mut dyn FnMut(&[u8], IpAddr, Stamp),
    ) -> usize {
        let mut n = 0;
        while n < max {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is a plain C struct; all-zero is valid.
            let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
            mh.msg_iov = &mut iov;
            mh.msg_iovlen = 1;
            mh.msg_control = control.as_mut_ptr().cast();
            mh.msg_controllen = control.len() as _;
            // SAFETY: the socket is open; `mh` points to `iov` over `buf` and
            // to `control`, both live and exclusively borrowed for the call.
            let r = unsafe {
                libc::recvmsg(
                    self.socket.as_raw_fd(),
                    &mut mh,
                    libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                break;
            }
            n += 1;
            let len = (r as usize).min(buf.len());
            let clen = (mh.msg_controllen as usize).min(control.len());
            if mh.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let anc = super::cmsg::Ancillary::parse(&control[..clen]);
            let stamp = match (anc.hw_stamp_ns, anc.sw_stamp_ns) {
                (Some(ns), _) if ns != 0 => Stamp {
                    ns,
                    // The PHC is assumed to run on TAI (ptp4l), as for RX.
                    scale: TimeScale::Tai,
                    source: StampSource::NicHardware,
                },
                (_, Some(ns)) if ns != 0 => Stamp {
                    ns,
                    scale: TimeScale::Utc,
                    source: StampSource::KernelSoftware,
                },
                _ => continue,
            };
            if let Some((dst, payload)) = looped_udp_payload(&buf[..len]) {
                f(payload, dst, stamp);
            }
        }
        n
    }

    /// Sends every queued reply with as few `sendmmsg` calls as possible
    /// (one unless a message fails) and empties `tx`.
    pub fn send_batch(&self, tx: &mut TxBatch) -> SendReport {
        tx.send_on(self.socket.as_raw_fd(), self.v6)
    }
}

/// The `SO_TIMESTAMPING` flags added for transmit stamps: software and
/// hardware, the packet looped back with them (no `OPT_TSONLY`: the reply
/// is recognised by its content, not by a counter).
pub const TX_TIMESTAMPING_FLAGS: libc::c_uint =
    libc::SOF_TIMESTAMPING_TX_SOFTWARE | libc::SOF_TIMESTAMPING_TX_HARDWARE;

/// The destination and UDP payload of a packet looped back on the error
/// queue (it starts at the link-layer header: none, Ethernet or Linux
/// cooked); `None` unless an IPv4/IPv6 + UDP header chain at one of those
/// offsets accounts for exactly the rest of the packet.
pub fn looped_udp_payload(pkt: &[u8]) -> Option<(IpAddr, &[u8])> {
    for off in [0usize, 14, 16] {
        let Some(ip) = pkt.get(off..) else { continue };
        let Some(&first) = ip.first() else { continue };
        let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]) as usize;
        match first >> 4 {
            4 if ip.len() >= 20 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < 20 || ip[9] != 17 || be16(ip, 2) != ip.len() || ip.len() < ihl + 8 {
                    continue;
                }
                if be16(ip, ihl + 4) != ip.len() - ihl {
                    continue;
                }
                let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
                return Some((dst, &ip[ihl + 8..]));
            }
            6 if ip.len() >= 48 => {
                if ip[6] != 17 || be16(ip, 4) != ip.len() - 40 || be16(ip, 44) != ip.len() - 40 {
                    continue;
                }
                let mut a = [0u8; 16];
                a.copy_from_slice(&ip[24..40]);
                return Some((IpAddr::from(a).to_canonical(), &ip[48..]));
            }
            _ => {}
        }
    }
    None
}

fn enable_timestamping(fd: RawFd, want: RxTimestamping) -> TimestampingMode {
    if want == RxTimestamping::Auto
        && set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            TIMESTAMPING_FLAGS as libc::c_int,
        )
        .is_ok()
    {
        return TimestampingMode::Timestamping;
    }
    if want != RxTimestamping::Off && set_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).is_ok()
    {
        return TimestampingMode::TimestampNs;
    }
    TimestampingMode::None
}

impl AsRawFd for BatchSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl mio::event::Source for BatchSocket {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        SourceFd(&self.socket.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        SourceFd(&self.socket.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        SourceFd(&self.socket.as_raw_fd()).deregister(registry)
    }
}

/// Asks the NIC `iface` to timestamp every received packet in hardware
/// (`SIOCSHWTSTAMP` with `HWTSTAMP_FILTER_ALL`), keeping its transmit
/// setting (ptp4l may own it). Returns the receive filter now in force (the
/// driver may widen it). Needs `CAP_NET_ADMIN`; fails on devices without
/// hardware timestamping (e.g. `lo`). Per-socket `SO_TIMESTAMPING` only
/// reports what the device generates, hence this device-wide switch.
pub fn enable_nic_rx_timestamps(iface: &str) -> io::Result<i32> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1 to 15 octets without NUL",
        ));
    }
    let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), None)?;
    let mut cfg = libc::hwtstamp_config {
        flags: 0,
        tx_type: 0,
        rx_filter: 0,
    };
    let ioctl = |req: libc::c_ulong, cfg: &mut libc::hwtstamp_config| -> io::Result<()> {
        // SAFETY: ifreq is a plain C struct/union; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (cfg as *mut libc::hwtstamp_config).cast();
        // SAFETY: `sock` is an open socket; `ifr` is a live ifreq with a
        // NUL-terminated name whose ifru_data points to `cfg`, a live,
        // exclusively borrowed hwtstamp_config — the layout SIOC[GS]HWTSTAMP
        // expect.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, &mut ifr as *mut libc::ifreq) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    ioctl(libc::SIOCGHWTSTAMP, &mut cfg)?;
    if cfg.rx_filter == libc::HWTSTAMP_FILTER_ALL as libc::c_int {
        return Ok(cfg.rx_filter);
    }
    cfg.rx_filter = libc::HWTSTAMP_FILTER_ALL as libc::c_int;
    ioctl(libc::SIOCSHWTSTAMP, &mut cfg)?;
    Ok(cfg.rx_filter)
}

/// Whether `ip` can be a reply's source address (not unspecified, multicast
/// or the IPv4 limited broadcast: replies to those leave from the address
/// routing picks).
pub(crate) fn usable_source(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4 == Ipv4Addr::BROADCAST),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}
