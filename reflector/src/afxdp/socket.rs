//! One AF_XDP socket bound to one (interface, queue), with its own UMEM and
//! its four rings (Documentation/networking/af_xdp.rst), built directly on
//! the `libc` system-call bindings.
//!
//! Set-up order: socket → `XDP_UMEM_REG` (asking for TX metadata with
//! `XDP_UMEM_TX_METADATA_LEN`, falling back without it) → ring sizes →
//! `XDP_MMAP_OFFSETS` → mmap the rings → bind (copy / zero-copy,
//! need_wakeup) → every frame to the fill ring. The socket must then be
//! registered in the XDP program's `xsks` map for its queue
//! ([`crate::bpf::Maps::set_xsk`]); the kernel removes it from the map when
//! the socket is closed.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::ring::{ConsumerRing, ProducerRing, RingOffsets, XdpDesc};
use super::umem::{Frame, Mmap, Umem, UmemConfig};
use super::XskError;

/// `sizeof(struct xsk_tx_metadata)`: the TX metadata area in front of each
/// transmitted packet (flags u64, then the request/completion union).
pub const TX_METADATA_LEN: u32 = 16;

/// How to bind the socket to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Copy mode (`XDP_COPY`): works on every driver, packets are copied
    /// between the driver's buffers and the UMEM.
    Copy,
    /// Zero-copy (`XDP_ZEROCOPY`): the driver DMAs into the UMEM; fails on
    /// drivers without AF_XDP zero-copy support.
    ZeroCopy,
    /// Let the kernel choose: zero-copy where the driver supports it, copy
    /// otherwise ([`XskSocket::zero_copy`] tells which).
    Auto,
}

/// Busy-poll socket options (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`,
/// `SO_BUSY_POLL_BUDGET`): the poller's system calls run the driver's NAPI
/// instead of waiting for interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds to busy-poll in a blocking call.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per NAPI poll.
    pub budget: u32,
}

/// Everything needed to open a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XskConfig {
    /// Interface index.
    pub ifindex: u32,
    /// Receive queue (and TX queue) index.
    pub queue: u32,
    /// Copy, zero-copy or automatic.
    pub bind: BindMode,
    /// `XDP_USE_NEED_WAKEUP`: the kernel says through the ring flags when a
    /// system call is needed, so a busy poller makes none otherwise.
    pub need_wakeup: bool,
    /// UMEM sizes; the fill and completion rings get `frame_count` entries.
    pub umem: UmemConfig,
    /// RX and TX ring entries (a power of two).
    pub ring_size: u32,
    /// Ask for AF_XDP TX metadata (kernel ≥ 6.11 flag semantics): TX
    /// timestamps requested per frame.
    pub tx_metadata: bool,
    /// Busy-poll socket options, if wanted.
    pub busy_poll: Option<BusyPoll>,
}

impl XskConfig {
    /// Copy mode with need_wakeup and TX metadata on `ifindex`/`queue`,
    /// default UMEM, 2048-entry RX/TX rings.
    pub fn new(ifindex: u32, queue: u32) -> XskConfig {
        XskConfig {
            ifindex,
            queue,
            bind: BindMode::Copy,
            need_wakeup: true,
            umem: UmemConfig::default(),
            ring_size: 2048,
            tx_metadata: true,
            busy_poll: None,
        }
    }
}

/// Whether TX metadata (and so TX timestamps) is in use on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxMetadataSupport {
    /// The UMEM reserves [`TX_METADATA_LEN`] octets in front of each TX
    /// packet; timestamps are requested per frame.
    Enabled,
    /// Not asked for ([`XskConfig::tx_metadata`] false).
    Disabled,
    /// Asked for, refused by the kernel (before 6.11, or a kernel without
    /// `XDP_UMEM_TX_METADATA_LEN`); the socket runs without it.
    Unsupported(String),
}

/// The kernel's per-socket counters (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for other reasons than invalid descriptors.
    pub rx_dropped: u64,
    /// Dropped because of invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Dropped because of invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when the kernel needed a frame.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket with its UMEM and rings, owned by one thread.
pub struct XskSocket {
    fd: OwnedFd,
    umem: Umem,
    fill: ProducerRing<u64>,
    comp: ConsumerRing<u64>,
    rx: ConsumerRing<XdpDesc>,
    tx: ProducerRing<XdpDesc>,
    need_wakeup: bool,
    zero_copy: bool,
    tx_md: TxMetadataSupport,
    ifindex: u32,
    queue: u32,
    /// Descriptor scratch (ring-size long), reused by every batch.
    descs: Vec<XdpDesc>,
    addrs: Vec<u64>,
    /// Descriptors the kernel handed back that were outside the UMEM.
    invalid_descs: u64,
}

fn os_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> XskError {
    let what = what.into();
    move |source| XskError::Io { what, source }
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live, initialized value of the size passed; the
    // kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// getsockopt into a plain C struct; returns the length the kernel wrote.
fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, level: i32, name: i32, v: &mut T) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is a live, exclusively borrowed value of `len` octets
    // (plain C data for which any bytes are valid); the kernel writes at
    // most `len` octets and updates `len`.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (v as *mut T).cast(), &mut len) };
    if r == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ring_offsets(o: &libc::xdp_ring_offset) -> RingOffsets {
    RingOffsets {
        producer: o.producer,
        consumer: o.consumer,
        desc: o.desc,
        flags: o.flags,
    }
}

/// Transient results of a wakeup system call (the ring is retried on the
/// next batch).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR)
    )
}

impl XskSocket {
    /// Opens, configures and binds a socket; every frame starts in the
    /// fill ring.
    pub fn open(cfg: &XskConfig) -> Result<XskSocket, XskError> {
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 8 {
            return Err(XskError::Config(format!(
                "ring size {} (must be a power of two >= 8)",
                cfg.ring_size
            )));
        }
        let mut umem = Umem::new(&cfg.umem).map_err(os_err("map UMEM"))?;

        // SAFETY: plain socket(2); the returned descriptor is checked and
        // then owned by OwnedFd.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os_err("socket(AF_XDP)")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let b = fd.as_fd();

        // UMEM registration, with TX metadata if asked and supported.
        let (addr, len) = umem.region();
        let mut reg = libc::xdp_umem_reg {
            addr,
            len,
            chunk_size: cfg.umem.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let tx_md = if cfg.tx_metadata {
            reg.flags = libc::XDP_UMEM_TX_METADATA_LEN;
            reg.tx_metadata_len = TX_METADATA_LEN;
            match setsockopt(b, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg) {
                Ok(()) => TxMetadataSupport::Enabled,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    reg.flags = 0;
                    reg.tx_metadata_len = 0;
                    setsockopt(b, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
                        .map_err(os_err("XDP_UMEM_REG"))?;
                    TxMetadataSupport::Unsupported(format!(
                        "XDP_UMEM_REG with XDP_UMEM_TX_METADATA_LEN refused ({e}); \
                         kernel without AF_XDP TX metadata (needs 6.11+)"
                    ))
                }
                Err(e) => return Err(os_err("XDP_UMEM_REG")(e)),
            }
        } else {
            setsockopt(b, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)
                .map_err(os_err("XDP_UMEM_REG"))?;
            TxMetadataSupport::Disabled
        };

        let n_frames = cfg.umem.frame_count;
        for (name, opt, size) in [
            ("XDP_UMEM_FILL_RING", libc::XDP_UMEM_FILL_RING, n_frames),
            (
                "XDP_UMEM_COMPLETION_RING",
                libc::XDP_UMEM_COMPLETION_RING,
                n_frames,
            ),
            ("XDP_RX_RING", libc::XDP_RX_RING, cfg.ring_size),
            ("XDP_TX_RING", libc::XDP_TX_RING, cfg.ring_size),
        ] {
            setsockopt(b, libc::SOL_XDP, opt, &size).map_err(os_err(name))?;
        }

        // SAFETY: xdp_mmap_offsets is plain integers; all-zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let got = getsockopt(b, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS, &mut off)
            .map_err(os_err("XDP_MMAP_OFFSETS"))?;
        if got != size_of::<libc::xdp_mmap_offsets>() {
            return Err(XskError::Config(format!(
                "XDP_MMAP_OFFSETS returned {got} octets: kernel without ring flags (need_wakeup, 5.4+)"
            )));
        }
        let map = |what: &str, pgoff: u64, o: &libc::xdp_ring_offset, size: u32, desc: usize| {
            Mmap::shared(b, pgoff, o.desc as usize + size as usize * desc)
                .map_err(os_err(format!("mmap {what} ring")))
        };
        let u64s = size_of::<u64>();
        let ds = size_of::<XdpDesc>();
        let fill = ProducerRing::from_mmap(
            map(
                "fill",
                libc::XDP_UMEM_PGOFF_FILL_RING,
                &off.fr,
                n_frames,
                u64s,
            )?,
            ring_offsets(&off.fr),
            n_frames,
        )
        .map_err(XskError::Config)?;
        let comp = ConsumerRing::from_mmap(
            map(
                "completion",
                libc::XDP_UMEM_PGOFF_COMPLETION_RING,
                &off.cr,
                n_frames,
                u64s,
            )?,
            ring_offsets(&off.cr),
            n_frames,
        )
        .map_err(XskError::Config)?;
        let rx = ConsumerRing::from_mmap(
            map(
                "RX",
                libc::XDP_PGOFF_RX_RING as u64,
                &off.rx,
                cfg.ring_size,
                ds,
            )?,
            ring_offsets(&off.rx),
            cfg.ring_size,
        )
        .map_err(XskError::Config)?;
        let tx = ProducerRing::from_mmap(
            map(
                "TX",
                libc::XDP_PGOFF_TX_RING as u64,
                &off.tx,
                cfg.ring_size,
                ds,
            )?,
            ring_offsets(&off.tx),
            cfg.ring_size,
        )
        .map_err(XskError::Config)?;

        let mut flags = match cfg.bind {
            BindMode::Copy => libc::XDP_COPY,
            BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
            BindMode::Auto => 0,
        };
        if cfg.need_wakeup {
            flags |= libc::XDP_USE_NEED_WAKEUP;
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: cfg.ifindex,
            sxdp_queue_id: cfg.queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a live sockaddr_xdp of the length passed.
        let r = unsafe {
            libc::bind(
                b.as_raw_fd(),
                (&sa as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(os_err(format!(
                "bind AF_XDP socket to ifindex {} queue {} ({:?})",
                cfg.ifindex, cfg.queue, cfg.bind
            ))(io::Error::last_os_error()));
        }
        let mut opts = libc::xdp_options { flags: 0 };
        getsockopt(b, libc::SOL_XDP, libc::XDP_OPTIONS, &mut opts)
            .map_err(os_err("XDP_OPTIONS"))?;
        let zero_copy = opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;

        if let Some(bp) = cfg.busy_poll {
            // Best effort: these options only change how fast the NAPI
            // runs, never correctness.
            for (name, opt, v) in [
                ("SO_PREFER_BUSY_POLL", SO_PREFER_BUSY_POLL, 1u32),
                ("SO_BUSY_POLL", libc::SO_BUSY_POLL, bp.usecs),
                ("SO_BUSY_POLL_BUDGET", SO_BUSY_POLL_BUDGET, bp.budget),
            ] {
                if let Err(e) = setsockopt(b, libc::SOL_SOCKET, opt, &v) {
                    tracing::warn!(option = name, error = %e, "AF_XDP busy-poll option refused");
                }
            }
        }

        let frames = umem.take_frames();
        let mut sock = XskSocket {
            fd,
            umem,
            fill,
            comp,
            rx,
            tx,
            need_wakeup: cfg.need_wakeup,
            zero_copy,
            tx_md,
            ifindex: cfg.ifindex,
            queue: cfg.queue,
            descs: vec![XdpDesc::default(); cfg.ring_size.max(n_frames) as usize],
            addrs: vec![0; n_frames as usize],
            invalid_descs: 0,
        };
        let mut frames = frames;
        let n = sock.fill(&mut frames);
        debug_assert_eq!(n, n_frames as usize);
        Ok(sock)
    }

    /// The UMEM.
    pub fn umem(&self) -> &Umem {
        &self.umem
    }

    /// The UMEM, mutably (to read and write owned frames).
    pub fn umem_mut(&mut self) -> &mut Umem {
        &mut self.umem
    }

    /// Whether the kernel bound the socket in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// TX metadata status.
    pub fn tx_metadata(&self) -> &TxMetadataSupport {
        &self.tx_md
    }

    /// Interface index and queue.
    pub fn queue(&self) -> (u32, u32) {
        (self.ifindex, self.queue)
    }

    /// RX descriptors that pointed outside the UMEM (a kernel bug if ever
    /// non-zero; the frames are lost).
    pub fn invalid_descs(&self) -> u64 {
        self.invalid_descs
    }

    /// Takes up to `max` received packets into `out`; returns how many.
    pub fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let max = max.min(self.descs.len());
        let n = self.rx.consume(&mut self.descs[..max]);
        for d in &self.descs[..n] {
            match self.umem.frame_from_desc(d.addr, d.len) {
                Some(f) => out.push(f),
                None => self.invalid_descs += 1,
            }
        }
        n
    }

    /// Takes up to `max` transmitted frames back from the completion ring
    /// into `out` (each with the offset it was sent at, length 0).
    pub fn completed(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let max = max.min(self.addrs.len());
        let n = self.comp.consume(&mut self.addrs[..max]);
        for a in &self.addrs[..n] {
            match self.umem.frame_from_desc(*a, 0) {
                Some(f) => out.push(f),
                None => self.invalid_descs += 1,
            }
        }
        n
    }

    /// Gives frames to the kernel for reception; returns how many were
    /// taken from the front of `frames` (all of them: the fill ring holds
    /// every frame of the UMEM).
    pub fn fill(&mut self, frames: &mut Vec<Frame>) -> usize {
        let mut done = 0;
        while done < frames.len() {
            let chunk = (frames.len() - done).min(self.addrs.len());
            for (a, f) in self.addrs.iter_mut().zip(&frames[done..done + chunk]) {
                *a = f.base();
            }
            let n = self.fill.produce(&self.addrs[..chunk]);
            done += n;
            if n < chunk {
                break;
            }
        }
        frames.drain(..done);
        done
    }

    /// Queues frames for transmission with descriptor `options` (e.g.
    /// `XDP_TX_METADATA`); returns how many were taken from the front of
    /// `frames`. Call [`XskSocket::kick_tx`] afterwards when
    /// [`XskSocket::tx_needs_wakeup`].
    pub fn transmit(&mut self, frames: &mut Vec<Frame>, options: u32) -> usize {
        let n = frames.len().min(self.descs.len());
        for (d, f) in self.descs.iter_mut().zip(&frames[..n]) {
            *d = XdpDesc {
                addr: f.addr(),
                len: f.len() as u32,
                options,
            };
        }
        let sent = self.tx.produce(&self.descs[..n]);
        frames.drain(..sent);
        sent
    }

    /// Frames queued for transmission that the kernel has not taken yet.
    pub fn tx_outstanding(&self) -> u32 {
        self.tx.outstanding()
    }

    /// Whether a `sendto` is needed for the kernel to transmit (always
    /// without need_wakeup; copy mode transmits only inside `sendto`).
    pub fn tx_needs_wakeup(&self) -> bool {
        !self.need_wakeup || self.tx.needs_wakeup()
    }

    /// Whether the kernel waits for a system call to see new fill entries.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.need_wakeup && self.fill.needs_wakeup()
    }

    /// Tells the kernel to transmit (`sendto`, non-blocking). Transient
    /// refusals (ring busy, no buffers, link down) are not errors.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length sendto with no buffer and no address on an
        // open socket; the kernel only processes the TX ring.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if transient(&e) {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Lets the kernel refill from the fill ring / busy-poll the NAPI
    /// (`recvfrom`, non-blocking).
    pub fn kick_rx(&self) -> io::Result<()> {
        // SAFETY: a zero-length recvfrom with no buffer and no address on
        // an open socket; nothing is written to user memory.
        let r = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if transient(&e) {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Waits up to `timeout_ms` for received packets (`poll`, POLLIN).
    /// Returns whether the socket is readable.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(r > 0 && p.revents & libc::POLLIN != 0)
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        // SAFETY: plain integers; all-zero is valid.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        getsockopt(self.fd.as_fd(), libc::SOL_XDP, libc::XDP_STATISTICS, &mut s)?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `SO_PREFER_BUSY_POLL` (asm-generic/socket.h, Linux 5.11).
const SO_PREFER_BUSY_POLL: i32 = 69;
/// `SO_BUSY_POLL_BUDGET` (asm-generic/socket.h, Linux 5.11).
const SO_BUSY_POLL_BUDGET: i32 = 70;
