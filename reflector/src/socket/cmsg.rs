//! Ancillary data (control messages, `cmsg(3)`) of received and sent datagrams.
//!
//! Received: TTL / Hop Limit (`IP_TTL`, `IPV6_HOPLIMIT`), TOS / Traffic Class
//! (`IP_TOS`, `IPV6_TCLASS`), the destination address (`IP_PKTINFO`,
//! `IPV6_PKTINFO`), the kernel's receive timestamps (`SCM_TIMESTAMPING`,
//! `SCM_TIMESTAMPNS`) and the socket's overflow counter (`SO_RXQ_OVFL`).
//! Sent: the source address (`IP_PKTINFO` / `IPV6_PKTINFO`) and a per-message
//! TOS / Traffic Class.
//!
//! The walker works on a plain byte slice with offsets relative to its start
//! (as the kernel's `put_cmsg` lays them out), so it needs no aligned buffer
//! and is safe to run on anything: a control buffer cut short by `MSG_CTRUNC`
//! (where the kernel shortens the last message's `cmsg_len` and data), random
//! bytes, or a forged length. Malformed input ends the walk with a
//! [`WireError`]; a known message with short data yields a `Truncated` error
//! for that message and the walk goes on.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ricochet_protocol::WireError;

use crate::clock::timespec_ns;

/// `SO_TIMESTAMPNS_NEW` / `SO_TIMESTAMPING_NEW` (64-bit `__kernel_timespec`
/// variants, Linux 5.1). Their numbers follow asm-generic wherever the old
/// ones do; elsewhere they are disabled (-1 is never a valid cmsg type).
const SO_TIMESTAMPNS_NEW: libc::c_int = if libc::SO_TIMESTAMPNS == 35 { 64 } else { -1 };
const SO_TIMESTAMPING_NEW: libc::c_int = if libc::SO_TIMESTAMPING == 37 { 65 } else { -1 };

/// `CMSG_ALIGN`: Linux aligns control messages to `sizeof(size_t)`.
pub const fn cmsg_align(len: usize) -> usize {
    let a = size_of::<usize>();
    (len + a - 1) & !(a - 1)
}

/// `CMSG_LEN(0)`: the aligned header length.
pub const CMSG_HDR_LEN: usize = cmsg_align(size_of::<libc::cmsghdr>());

/// `CMSG_SPACE(len)`: the room one message with `len` data octets takes.
pub const fn cmsg_space(len: usize) -> usize {
    CMSG_HDR_LEN + cmsg_align(len)
}

/// Control-buffer room a received datagram needs when every option this
/// module enables is on: `SCM_TIMESTAMPING` (3 timespecs), TTL, TOS, both
/// kinds of packet info and the overflow counter, IPv4 and IPv6 together
/// (dual-stack sockets deliver both for v4-mapped traffic).
pub const RX_CONTROL_LEN: usize = cmsg_space(3 * 16)
    + cmsg_space(4) // IP_TTL
    + cmsg_space(4) // IP_TOS (1 octet, room for an int)
    + cmsg_space(12) // IP_PKTINFO
    + cmsg_space(4) // IPV6_HOPLIMIT
    + cmsg_space(4) // IPV6_TCLASS
    + cmsg_space(20) // IPV6_PKTINFO
    + cmsg_space(4) // SO_RXQ_OVFL
    + cmsg_space(16); // SCM_TIMESTAMPNS (fallback)

/// Control-buffer room a sent datagram needs: packet info and a TOS.
pub const TX_CONTROL_LEN: usize = cmsg_space(20) + cmsg_space(4);

/// One control message: level, type and its data octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmsg<'a> {
    /// `cmsg_level` (`SOL_SOCKET`, `IPPROTO_IP`, `IPPROTO_IPV6`).
    pub level: libc::c_int,
    /// `cmsg_type`.
    pub ty: libc::c_int,
    /// The data octets (`cmsg_len` minus the header).
    pub data: &'a [u8],
}

/// An iterator over the control messages in a buffer. Yields `Err` once and
/// stops when a header is malformed or runs past the buffer.
#[derive(Debug, Clone)]
pub struct CmsgIter<'a> {
    buf: &'a [u8],
    off: usize,
    done: bool,
}

/// Walks the control messages of `buf` (the first `msg_controllen` octets).
pub fn walk(buf: &[u8]) -> CmsgIter<'_> {
    CmsgIter {
        buf,
        off: 0,
        done: false,
    }
}

impl<'a> Iterator for CmsgIter<'a> {
    type Item = Result<Cmsg<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.buf.get(self.off..).unwrap_or(&[]);
        // Fewer octets than a header: the end (the kernel does not write a
        // partial header; it sets MSG_CTRUNC instead).
        if rest.len() < size_of::<libc::cmsghdr>() {
            self.done = true;
            return None;
        }
        // SAFETY: `rest` holds at least size_of::<cmsghdr>() octets (checked
        // above); read_unaligned has no alignment requirement and cmsghdr is
        // a plain C struct valid for any bit pattern.
        let hdr: libc::cmsghdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
        // size_t on glibc, socklen_t on musl.
        #[allow(clippy::useless_conversion)]
        let len = usize::try_from(hdr.cmsg_len).unwrap_or(usize::MAX);
        if len < CMSG_HDR_LEN || len > rest.len() {
            self.done = true;
            return Some(Err(WireError::BadLength {
                what: "control message header",
                len,
                why: if len < CMSG_HDR_LEN {
                    "cmsg_len shorter than the header"
                } else {
                    "cmsg_len runs past the control buffer"
                },
            }));
        }
        let data = &rest[CMSG_HDR_LEN..len];
        self.off = self.off.saturating_add(cmsg_align(len));
        Some(Ok(Cmsg {
            level: hdr.cmsg_level,
            ty: hdr.cmsg_type,
            data,
        }))
    }
}

/// What the received control messages said about one datagram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ancillary {
    /// IPv4 TTL or IPv6 Hop Limit of the received packet.
    pub ttl: Option<u8>,
    /// IPv4 TOS or IPv6 Traffic Class octet (DSCP << 2 | ECN).
    pub tos: Option<u8>,
    /// The packet's destination address (v4-mapped addresses made IPv4).
    pub dst: Option<IpAddr>,
    /// The interface the packet arrived on.
    pub ifindex: Option<u32>,
    /// The kernel's software receive stamp (system clock, UTC), ns.
    pub sw_stamp_ns: Option<u64>,
    /// The NIC's raw hardware receive stamp (PHC time), ns.
    pub hw_stamp_ns: Option<u64>,
    /// `SO_RXQ_OVFL`: datagrams the socket dropped so far (cumulative).
    pub rxq_dropped: Option<u32>,
    /// The first malformed or truncated control message, if any.
    pub error: Option<WireError>,
}

fn need<'a, const N: usize>(what: &'static str, data: &'a [u8]) -> Result<&'a [u8; N], WireError> {
    data.get(..N)
        .and_then(|d| d.try_into().ok())
        .ok_or(WireError::Truncated {
            what,
            need: N,
            have: data.len(),
        })
}

fn int(what: &'static str, data: &[u8]) -> Result<i32, WireError> {
    Ok(i32::from_ne_bytes(*need::<4>(what, data)?))
}

fn octet(what: &'static str, field: &'static str, v: i32) -> Result<u8, WireError> {
    u8::try_from(v).map_err(|_| WireError::BadField {
        what,
        field,
        value: v as u32 as u64,
    })
}

/// A `timespec` of two 64-bit fields (`__kernel_timespec`, and the native
/// layout on 64-bit targets). All zero means "no stamp".
fn timespec64(what: &'static str, data: &[u8]) -> Result<Option<u64>, WireError> {
    let b = need::<16>(what, data)?;
    let (s, n) = b.split_at(8);
    let sec = i64::from_ne_bytes(s.try_into().unwrap_or([0; 8]));
    let nsec = i64::from_ne_bytes(n.try_into().unwrap_or([0; 8]));
    if sec == 0 && nsec == 0 {
        return Ok(None);
    }
    timespec_ns(sec, nsec).map(Some).ok_or(WireError::BadField {
        what,
        field: "tv_nsec",
        value: nsec as u64,
    })
}

/// The native `struct timespec` (the `_OLD` cmsg variants).
fn timespec_native(what: &'static str, data: &[u8]) -> Result<Option<u64>, WireError> {
    if size_of::<libc::timespec>() == 16 {
        return timespec64(what, data);
    }
    let n = size_of::<libc::timespec>();
    if data.len() < n {
        return Err(WireError::Truncated {
            what,
            need: n,
            have: data.len(),
        });
    }
    // SAFETY: `data` holds at least size_of::<timespec>() octets (checked
    // above); read_unaligned has no alignment requirement and timespec is a
    // plain C struct valid for any bit pattern.
    let ts: libc::timespec = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    // time_t and c_long are i32 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    if sec == 0 && nsec == 0 {
        return Ok(None);
    }
    timespec_ns(sec, nsec).map(Some).ok_or(WireError::BadField {
        what,
        field: "tv_nsec",
        value: nsec as u64,
    })
}

/// `scm_timestamping`: `ts[0]` software, `ts[1]` legacy (unused), `ts[2]` raw
/// hardware (Documentation/networking/timestamping.rst §2.1).
fn timestamping(
    what: &'static str,
    data: &[u8],
    one: fn(&'static str, &[u8]) -> Result<Option<u64>, WireError>,
    width: usize,
) -> Result<(Option<u64>, Option<u64>), WireError> {
    if data.len() < 3 * width {
        return Err(WireError::Truncated {
            what,
            need: 3 * width,
            have: data.len(),
        });
    }
    let sw = one(what, &data[..width])?;
    let hw = one(what, &data[2 * width..3 * width])?;
    Ok((sw, hw))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl Ancillary {
    /// Parses every control message in `control`. Never fails: unknown
    /// messages are skipped, bad ones recorded in [`Ancillary::error`] (the
    /// first one wins) and the fields they would have set left `None`.
    pub fn parse(control: &[u8]) -> Ancillary {
        let mut a = Ancillary::default();
        for c in walk(control) {
            let r = match c {
                Ok(c) => a.apply(c),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                a.error.get_or_insert(e);
            }
        }
        a
    }

    fn apply(&mut self, c: Cmsg<'_>) -> Result<(), WireError> {
        const TS64: usize = 16;
        let native = size_of::<libc::timespec>();
        match (c.level, c.ty) {
            (libc::IPPROTO_IP, libc::IP_TTL) => {
                let v = int("IP_TTL cmsg", c.data)?;
                self.ttl.get_or_insert(octet("IP_TTL cmsg", "ttl", v)?);
            }
            (libc::IPPROTO_IP, libc::IP_TOS) => {
                // The kernel sends the TOS as one octet (ip_cmsg_recv_tos).
                let v = need::<1>("IP_TOS cmsg", c.data)?[0];
                self.tos.get_or_insert(v);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                let b = need::<12>("IP_PKTINFO cmsg", c.data)?;
                let ifindex = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                let addr = Ipv4Addr::new(b[8], b[9], b[10], b[11]);
                self.dst.get_or_insert(IpAddr::V4(addr));
                self.ifindex.get_or_insert(ifindex);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                let v = int("IPV6_HOPLIMIT cmsg", c.data)?;
                self.ttl
                    .get_or_insert(octet("IPV6_HOPLIMIT cmsg", "hop limit", v)?);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                let v = int("IPV6_TCLASS cmsg", c.data)?;
                self.tos
                    .get_or_insert(octet("IPV6_TCLASS cmsg", "traffic class", v)?);
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                // struct in6_pktinfo { in6_addr addr; unsigned int ifindex; }
                let b = need::<20>("IPV6_PKTINFO cmsg", c.data)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[..16]);
                let ifindex = u32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                self.dst
                    .get_or_insert(canonical(IpAddr::V6(Ipv6Addr::from(a))));
                self.ifindex.get_or_insert(ifindex);
            }
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPING) => {
                let (sw, hw) =
                    timestamping("SCM_TIMESTAMPING cmsg", c.data, timespec_native, native)?;
                self.sw_stamp_ns = self.sw_stamp_ns.or(sw);
                self.hw_stamp_ns = self.hw_stamp_ns.or(hw);
            }
            (libc::SOL_SOCKET, SO_TIMESTAMPING_NEW) => {
                let (sw, hw) = timestamping("SCM_TIMESTAMPING_NEW cmsg", c.data, timespec64, TS64)?;
                self.sw_stamp_ns = self.sw_stamp_ns.or(sw);
                self.hw_stamp_ns = self.hw_stamp_ns.or(hw);
            }
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS) => {
                let sw = timespec_native("SCM_TIMESTAMPNS cmsg", c.data)?;
                self.sw_stamp_ns = self.sw_stamp_ns.or(sw);
            }
            (libc::SOL_SOCKET, SO_TIMESTAMPNS_NEW) => {
                let sw = timespec64("SCM_TIMESTAMPNS_NEW cmsg", c.data)?;
                self.sw_stamp_ns = self.sw_stamp_ns.or(sw);
            }
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => {
                let b = need::<4>("SO_RXQ_OVFL cmsg", c.data)?;
                self.rxq_dropped = Some(u32::from_ne_bytes(*b));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Writes control messages into a buffer, `CMSG_NXTHDR`-compatible.
#[derive(Debug)]
pub struct CmsgWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> CmsgWriter<'a> {
    /// A writer starting at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        CmsgWriter { buf, len: 0 }
    }

    /// Octets written so far (the `msg_controllen` to pass).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one message; fails (writing nothing) if it does not fit.
    pub fn push(
        &mut self,
        level: libc::c_int,
        ty: libc::c_int,
        data: &[u8],
    ) -> Result<(), WireError> {
        let len = CMSG_HDR_LEN + data.len();
        let space = cmsg_align(len);
        let end = self.len + space;
        let Some(out) = self.buf.get_mut(self.len..end) else {
            return Err(WireError::Truncated {
                what: "control buffer",
                need: end,
                have: self.buf.len(),
            });
        };
        out.fill(0);
        // SAFETY: cmsghdr is a plain C struct (musl adds private padding
        // fields, hence zeroed() rather than a literal); all-zero is valid.
        let mut hdr: libc::cmsghdr = unsafe { std::mem::zeroed() };
        hdr.cmsg_len = len as _;
        hdr.cmsg_level = level;
        hdr.cmsg_type = ty;
        // SAFETY: `out` holds `space` ≥ CMSG_HDR_LEN ≥ size_of::<cmsghdr>()
        // octets (the `get_mut` above succeeded); write_unaligned has no
        // alignment requirement.
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast::<libc::cmsghdr>(), hdr) };
        out[CMSG_HDR_LEN..len].copy_from_slice(data);
        self.len = end;
        Ok(())
    }
}

/// `struct in_pktinfo` for `sendmsg`: `ipi_spec_dst` selects the source
/// address; `ipi_ifindex` 0 leaves the interface to routing.
pub fn in_pktinfo(src: Ipv4Addr, ifindex: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&ifindex.to_ne_bytes());
    b[4..8].copy_from_slice(&src.octets());
    b
}

/// `struct in6_pktinfo` for `sendmsg`: the source address and (for
/// link-local addresses) the outgoing interface.
pub fn in6_pktinfo(src: Ipv6Addr, ifindex: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..16].copy_from_slice(&src.octets());
    b[16..].copy_from_slice(&ifindex.to_ne_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(sec: i64, nsec: i64) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&sec.to_ne_bytes());
        b[8..].copy_from_slice(&nsec.to_ne_bytes());
        b
    }

    fn build(msgs: &[(i32, i32, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut w = CmsgWriter::new(&mut buf);
        for (l, t, d) in msgs {
            w.push(*l, *t, d).unwrap();
        }
        let n = w.len();
        buf.truncate(n);
        buf
    }

    #[test]
    fn layout_matches_glibc_macros() {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        unsafe {
            assert_eq!(cmsg_space(48), libc::CMSG_SPACE(48) as usize);
            assert_eq!(cmsg_space(1), libc::CMSG_SPACE(1) as usize);
            assert_eq!(CMSG_HDR_LEN, libc::CMSG_LEN(0) as usize);
        }
    }

    #[test]
    fn parses_every_kind() {
        let mut stamping = [0u8; 48];
        stamping[..16].copy_from_slice(&ts(1_700_000_000, 123));
        stamping[32..].copy_from_slice(&ts(1_700_000_037, 456));
        let buf = build(&[
            (libc::IPPROTO_IP, libc::IP_TTL, &64i32.to_ne_bytes()),
            (libc::IPPROTO_IP, libc::IP_TOS, &[0xb8]),
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &[1, 0, 0, 0, 0, 0, 0, 0, 127, 0, 0, 2],
            ),
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPING, &stamping),
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &7u32.to_ne_bytes()),
            (99, 99, b"ignored"),
        ]);
        let a = Ancillary::parse(&buf);
        assert_eq!(a.error, None);
        assert_eq!(a.ttl, Some(64));
        assert_eq!(a.tos, Some(0xb8));
        assert_eq!(a.dst, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(a.ifindex, Some(1));
        assert_eq!(a.sw_stamp_ns, Some(1_700_000_000_000_000_123));
        assert_eq!(a.hw_stamp_ns, Some(1_700_000_037_000_000_456));
        assert_eq!(a.rxq_dropped, Some(7));
    }

    #[test]
    fn ipv6_kinds_and_v4_mapped_pktinfo() {
        let mapped = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped();
        let buf = build(&[
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_HOPLIMIT,
                &255i32.to_ne_bytes(),
            ),
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_TCLASS,
                &0x2ei32.to_ne_bytes(),
            ),
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                &in6_pktinfo(mapped, 3),
            ),
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &ts(5, 6)),
        ]);
        let a = Ancillary::parse(&buf);
        assert_eq!(a.error, None);
        assert_eq!((a.ttl, a.tos), (Some(255), Some(0x2e)));
        assert_eq!(a.dst, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(a.ifindex, Some(3));
        assert_eq!(a.sw_stamp_ns, Some(5_000_000_006));
        assert_eq!(a.hw_stamp_ns, None);
    }

    #[test]
    fn zero_hardware_stamp_is_absent() {
        let mut stamping = [0u8; 48];
        stamping[..16].copy_from_slice(&ts(10, 0));
        let a = Ancillary::parse(&build(&[(
            libc::SOL_SOCKET,
            SO_TIMESTAMPING_NEW,
            &stamping,
        )]));
        assert_eq!((a.sw_stamp_ns, a.hw_stamp_ns), (Some(10_000_000_000), None));
    }

    #[test]
    fn truncated_timestamping_is_an_error_and_other_fields_survive() {
        // What put_cmsg does under MSG_CTRUNC: the last message's cmsg_len
        // shrinks to the room left, and its data is cut.
        let mut buf = build(&[
            (libc::IPPROTO_IP, libc::IP_TTL, &17i32.to_ne_bytes()),
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPING, &[0u8; 48]),
        ]);
        let start = cmsg_space(4);
        let cut = start + CMSG_HDR_LEN + 20;
        buf.truncate(cut);
        buf[start..start + size_of::<usize>()].copy_from_slice(&(cut - start).to_ne_bytes());
        let a = Ancillary::parse(&buf);
        assert_eq!(a.ttl, Some(17));
        assert_eq!(a.sw_stamp_ns, None);
        assert_eq!(
            a.error,
            Some(WireError::Truncated {
                what: "SCM_TIMESTAMPING cmsg",
                need: 48,
                have: 20
            })
        );
    }

    #[test]
    fn bad_headers_end_the_walk() {
        let mut buf = build(&[(libc::IPPROTO_IP, libc::IP_TTL, &1i32.to_ne_bytes())]);
        // cmsg_len larger than the buffer.
        buf[..size_of::<usize>()].copy_from_slice(&1000usize.to_ne_bytes());
        let a = Ancillary::parse(&buf);
        assert_eq!(a.ttl, None);
        assert!(matches!(
            a.error,
            Some(WireError::BadLength { len: 1000, .. })
        ));
        // cmsg_len smaller than a header.
        buf[..size_of::<usize>()].copy_from_slice(&3usize.to_ne_bytes());
        assert!(matches!(
            Ancillary::parse(&buf).error,
            Some(WireError::BadLength { len: 3, .. })
        ));
        // A partial header is just the end.
        assert_eq!(Ancillary::parse(&buf[..7]), Ancillary::default());
    }

    #[test]
    fn out_of_range_values_are_bad_fields() {
        let a = Ancillary::parse(&build(&[(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPLIMIT,
            &256i32.to_ne_bytes(),
        )]));
        assert_eq!(a.ttl, None);
        assert!(matches!(
            a.error,
            Some(WireError::BadField { value: 256, .. })
        ));
        let a = Ancillary::parse(&build(&[(
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &ts(1, 1_000_000_000),
        )]));
        assert!(matches!(a.error, Some(WireError::BadField { .. })));
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 24];
        let mut w = CmsgWriter::new(&mut buf);
        assert!(w
            .push(libc::IPPROTO_IP, libc::IP_PKTINFO, &[0; 12])
            .is_err());
        assert!(w.is_empty());
        assert!(w.push(libc::IPPROTO_IP, libc::IP_TOS, &[1]).is_ok());
        assert_eq!(w.len(), cmsg_space(1));
    }
}
