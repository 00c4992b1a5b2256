//! ESP in the AF_XDP pollers (RFC 4303; spec `esp.md`): frames the XDP
//! program redirected with `origin = RC_ORIGIN_ESP` (raw ESP or ESP-in-UDP
//! of a known inbound SA, the SA's `esp_keys` slot in the metadata).
//!
//! Per packet, in RFC 4303 §3.4 order:
//!
//! 1. the SA's prepared state from the per-poller [`EspCache`] (re-read
//!    from `esp_keys` only when the metadata's generation changes);
//! 2. hard lifetimes, then the anti-replay pre-check (ESN high half
//!    inferred, App. A2.2) — before any cryptography;
//! 3. ICV verification and decryption in place; only then the window
//!    slides; a dummy packet (Next Header 59) is dropped;
//! 4. the inner packet (transport: the UDP datagram; tunnel: an inner IPv4
//!    or IPv6 packet) must be UDP inside the SA's traffic selectors, then it
//!    is reflected by the inner session's engine (the `keys` slot the SA
//!    names: every rule of the plain path, T3 as late as possible);
//! 5. inner headers rebuilt (ports swapped; tunnel: inner addresses
//!    swapped, TTL 255, checksums), the reply sealed with the outbound SA:
//!    its own sequence counter in the shared `esp_state` mapping (atomic, so
//!    several queues never reuse a number, and kept across restarts), the
//!    IV derived from it (never reused), RFC 4303 padding and trailer;
//! 6. outer Ethernet/IP(/UDP 4500) rebuilt in front with correct lengths
//!    and checksums (addresses and ports swapped, IP options dropped).
//!
//! No allocation per packet. Counters per SA go to `esp_state` (rx, tx,
//! replay drops, ICV failures, selector drops, expiry, sequence
//! exhaustion and the rekey-needed bits raised at 90 % of a limit).
//!
//! Anti-replay windows are per poller: an SA's packets share one outer
//! 5-tuple, so RSS delivers them to one queue; a replay steered to another
//! queue would meet that queue's own window (a known limit, see README).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use ricochet_protocol::crypto::esp_sa::NEXT_HEADER_DUMMY;
use ricochet_protocol::crypto::{CryptoError, EspCipher, ReplayWindow};
use ricochet_protocol::twamp_test::RxMeta;

use super::cache::{KeyCache, KeySource};
use super::frame::{fold, ones_sum, udp_checksum, FrameError};
use super::secured::Reflected;
use super::stats::{DropReason, PollerStats};
use crate::bpf::{BpfError, EspKeysReader, EspSelectors, EspSlotKeys, EspState, EspStateShared};
use crate::bpf::MAX_ESP_SAS;
use crate::clock::{ClockState, Stamp};
use crate::engine::same_endpoint;

/// How long a failed SA lookup is remembered (as the keys cache does).
const RETRY_NS: u64 = 10_000_000;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const NH_UDP: u8 = 17;
const NH_IPV4: u8 = 4;
const NH_IPV6: u8 = 41;
const NH_ESP: u8 = 50;

/// Where the pollers read SA state (`esp_keys`; a fake in tests).
pub(crate) trait EspKeySource {
    fn read(&self, slot: u32) -> Result<Option<EspSlotKeys>, BpfError>;
}

impl EspKeySource for EspKeysReader {
    fn read(&self, slot: u32) -> Result<Option<EspSlotKeys>, BpfError> {
        EspKeysReader::read(self, slot)
    }
}

/// The per-SA counters (`esp_state`; a plain array in tests).
pub(crate) trait EspCounters {
    fn add(&self, slot: u32, w: usize, v: u64);
    fn add_fetch(&self, slot: u32, w: usize, v: u64) -> Option<u64>;
    fn or(&self, slot: u32, w: usize, bits: u64);
    fn load(&self, slot: u32, w: usize) -> u64;
}

impl EspCounters for EspStateShared {
    fn add(&self, slot: u32, w: usize, v: u64) {
        EspStateShared::add(self, slot, w, v)
    }
    fn add_fetch(&self, slot: u32, w: usize, v: u64) -> Option<u64> {
        EspStateShared::add_fetch(self, slot, w, v)
    }
    fn or(&self, slot: u32, w: usize, bits: u64) {
        EspStateShared::or(self, slot, w, bits)
    }
    fn load(&self, slot: u32, w: usize) -> u64 {
        EspStateShared::load(self, slot, w)
    }
}

/// One SA prepared for the data path.
pub(crate) struct EspSa {
    generation: u32,
    instance: u32,
    /// Its own `esp_state` index.
    slot: u32,
    spi_in: u32,
    spi_out: u32,
    cin: EspCipher,
    cout: EspCipher,
    /// Also used for ESN inference when anti-replay is off.
    window: ReplayWindow,
    replay: bool,
    esn: bool,
    tunnel: bool,
    udp: bool,
    inner_slot: u32,
    inner_generation: u32,
    tx_state: u32,
    life_packets: u64,
    life_bytes: u64,
    expires_ns: u64,
    selectors: EspSelectors,
}

impl EspSa {
    fn new(slot: u32, k: &EspSlotKeys) -> Result<EspSa, String> {
        Ok(EspSa {
            generation: k.generation,
            instance: k.instance,
            slot,
            spi_in: k.spi_in,
            spi_out: k.spi_out,
            cin: EspCipher::new(&k.key_in).map_err(|e| e.to_string())?,
            cout: EspCipher::new(&k.key_out).map_err(|e| e.to_string())?,
            window: ReplayWindow::new(k.replay_window.max(64), k.esn),
            replay: k.replay_window != 0,
            esn: k.esn,
            tunnel: k.tunnel,
            udp: k.udp,
            inner_slot: k.inner_slot,
            inner_generation: k.inner_generation,
            tx_state: k.tx_state,
            life_packets: k.life_packets,
            life_bytes: k.life_bytes,
            expires_ns: k.expires_ns,
            selectors: k.selectors,
        })
    }
}

enum Entry {
    Empty,
    Ready(Box<EspSa>),
    Failed {
        generation: u32,
        retry_at_ns: u64,
        reason: DropReason,
    },
}

/// Prepared SAs of one poller, by `esp_keys` slot.
pub(crate) struct EspCache<S: EspKeySource> {
    entries: Vec<Entry>,
    source: S,
}

impl<S: EspKeySource> EspCache<S> {
    pub fn new(source: S) -> Self {
        EspCache {
            entries: (0..MAX_ESP_SAS).map(|_| Entry::Empty).collect(),
            source,
        }
    }

    /// The SA in `slot` at `generation`. A new generation of the same SA
    /// (same instance: e.g. its outbound half switched by a rekey) keeps
    /// the anti-replay window.
    pub fn lookup(
        &mut self,
        slot: u32,
        generation: u32,
        now_ns: u64,
    ) -> Result<&mut EspSa, DropReason> {
        let i = slot as usize;
        let Some(entry) = self.entries.get(i) else {
            return Err(DropReason::UnknownSlot);
        };
        match entry {
            Entry::Ready(s) if s.generation == generation => {}
            Entry::Failed {
                generation: g,
                retry_at_ns,
                reason,
            } if *g == generation && now_ns < *retry_at_ns => return Err(*reason),
            _ => {
                let fail = |reason| Entry::Failed {
                    generation,
                    retry_at_ns: now_ns.saturating_add(RETRY_NS),
                    reason,
                };
                let old = std::mem::replace(&mut self.entries[i], Entry::Empty);
                self.entries[i] = match self.source.read(slot) {
                    Ok(Some(k)) if k.generation == generation => match EspSa::new(slot, &k) {
                        Ok(mut sa) => {
                            if let Entry::Ready(prev) = old {
                                if prev.instance == sa.instance {
                                    sa.window = prev.window;
                                }
                            }
                            Entry::Ready(Box::new(sa))
                        }
                        Err(why) => {
                            tracing::warn!(slot, generation, %why, "unusable esp_keys entry");
                            fail(DropReason::BadKeys)
                        }
                    },
                    Ok(Some(_)) => fail(DropReason::StaleGeneration),
                    Ok(None) => fail(DropReason::UnknownSlot),
                    Err(e) => {
                        tracing::warn!(slot, error = %e, "esp_keys read failed");
                        fail(DropReason::BadKeys)
                    }
                };
            }
        }
        match &mut self.entries[i] {
            Entry::Ready(s) => Ok(s),
            Entry::Failed { reason, .. } => Err(*reason),
            Entry::Empty => Err(DropReason::UnknownSlot),
        }
    }
}

/// The outer headers of a received ESP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outer {
    l3_off: usize,
    opt_len: usize,
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    tos: u8,
    /// Source and destination ports of UDP encapsulation.
    udp: Option<(u16, u16)>,
    esp_off: usize,
    esp_len: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn need(b: &[u8], what: &'static str, at: usize, len: usize) -> Result<(), FrameError> {
    if at.checked_add(len).is_none_or(|end| end > b.len()) {
        Err(FrameError::Truncated { what, at })
    } else {
        Ok(())
    }
}

fn v4(b: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
}

fn v6(b: &[u8], at: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Parses Ethernet (up to two VLAN tags), IPv4 (options) or IPv6 (up to 4
/// hop-by-hop / routing / destination options headers) and, for UDP
/// encapsulation, the UDP header, down to the ESP packet.
fn parse_outer(frame: &[u8]) -> Result<Outer, FrameError> {
    need(frame, "Ethernet header", 0, ETH_LEN)?;
    let mut et = be16(frame, 12);
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if et != 0x8100 && et != 0x88a8 {
            break;
        }
        need(frame, "VLAN tag", l3, 4)?;
        et = be16(frame, l3 + 2);
        l3 += 4;
    }
    let (v6h, src, dst, tos, proto, l4, opt_len, end) = match et {
        0x0800 => {
            need(frame, "IPv4 header", l3, IPV4_LEN)?;
            let h = &frame[l3..];
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if h[0] >> 4 != 4 || ihl < IPV4_LEN {
                return Err(FrameError::Bad {
                    field: "IPv4 version/IHL",
                    value: u32::from(h[0]),
                });
            }
            let tot = usize::from(be16(h, 2));
            if tot < ihl || l3 + tot > frame.len() {
                return Err(FrameError::Bad {
                    field: "IPv4 total length",
                    value: tot as u32,
                });
            }
            if be16(h, 6) & 0x3fff != 0 {
                return Err(FrameError::NotUdp("IPv4 fragment"));
            }
            (false, v4(h, 12), v4(h, 16), h[1], h[9], l3 + ihl, ihl - IPV4_LEN, l3 + tot)
        }
        0x86dd => {
            need(frame, "IPv6 header", l3, IPV6_LEN)?;
            let h = &frame[l3..];
            let plen = usize::from(be16(h, 4));
            let end = l3 + IPV6_LEN + plen;
            if h[0] >> 4 != 6 || plen == 0 || end > frame.len() {
                return Err(FrameError::Bad {
                    field: "IPv6 header",
                    value: plen as u32,
                });
            }
            let mut nh = h[6];
            let mut off = l3 + IPV6_LEN;
            for _ in 0..4 {
                if nh != 0 && nh != 43 && nh != 60 {
                    break;
                }
                need(frame, "IPv6 extension header", off, 8)?;
                nh = frame[off];
                off += (usize::from(frame[off + 1]) + 1) * 8;
            }
            if off > end {
                return Err(FrameError::Bad {
                    field: "IPv6 extension headers",
                    value: off as u32,
                });
            }
            let tc = (h[0] << 4) | (h[1] >> 4);
            (true, v6(h, 8), v6(h, 24), tc, nh, off, off - l3 - IPV6_LEN, end)
        }
        _ => return Err(FrameError::NotUdp("EtherType")),
    };
    let (udp, esp_off, esp_end) = match proto {
        NH_ESP => (None, l4, end),
        NH_UDP => {
            need(frame, "UDP header", l4, UDP_LEN)?;
            let ulen = usize::from(be16(frame, l4 + 4));
            if ulen < UDP_LEN || l4 + ulen > end {
                return Err(FrameError::Bad {
                    field: "UDP length",
                    value: ulen as u32,
                });
            }
            (
                Some((be16(frame, l4), be16(frame, l4 + 2))),
                l4 + UDP_LEN,
                l4 + ulen,
            )
        }
        _ => return Err(FrameError::NotUdp("not ESP")),
    };
    Ok(Outer {
        l3_off: l3,
        opt_len,
        v6: v6h,
        src,
        dst,
        tos,
        udp,
        esp_off,
        esp_len: esp_end - esp_off,
    })
}

/// The inner UDP datagram of a decrypted payload.
#[derive(Debug, Clone, Copy)]
struct Inner {
    /// Inner IP header length (0 in transport mode).
    ip_len: usize,
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
    tos: u8,
    /// UDP payload length.
    payload_len: usize,
}

/// Parses the decrypted payload `p` (Next Header `nh`) of an SA in
/// `tunnel` mode or not; the outer header supplies transport mode's
/// addresses, TTL and TOS.
fn parse_inner(p: &[u8], nh: u8, tunnel: bool, outer: &Outer, ttl: u8) -> Option<Inner> {
    let (ip_len, src, dst, ttl, tos) = match (tunnel, nh) {
        (false, NH_UDP) => (0, outer.src, outer.dst, ttl, outer.tos),
        (true, NH_IPV4) => {
            // no inner options: a test packet has none to reflect
            if p.len() < IPV4_LEN || p[0] != 0x45 || p[9] != NH_UDP || be16(p, 6) & 0x3fff != 0 {
                return None;
            }
            if usize::from(be16(p, 2)) > p.len() {
                return None;
            }
            (IPV4_LEN, v4(p, 12), v4(p, 16), p[8], p[1])
        }
        (true, NH_IPV6) => {
            if p.len() < IPV6_LEN || p[0] >> 4 != 6 || p[6] != NH_UDP {
                return None;
            }
            if IPV6_LEN + usize::from(be16(p, 4)) > p.len() {
                return None;
            }
            (IPV6_LEN, v6(p, 8), v6(p, 24), p[7], (p[0] << 4) | (p[1] >> 4))
        }
        _ => return None,
    };
    if p.len() < ip_len + UDP_LEN {
        return None;
    }
    let u = &p[ip_len..];
    let ulen = usize::from(be16(u, 4));
    if ulen < UDP_LEN || ulen > u.len() {
        return None;
    }
    Some(Inner {
        ip_len,
        src: SocketAddr::new(src, be16(u, 0)),
        dst: SocketAddr::new(dst, be16(u, 2)),
        ttl,
        tos,
        payload_len: ulen - UDP_LEN,
    })
}

/// What the caller needs after a successful ESP reflection.
pub(crate) struct EspReply {
    /// Start of the reply frame in the room.
    pub start: usize,
    /// Its length.
    pub len: usize,
    /// The inner reflection.
    pub reflected: Reflected,
    /// The inner session's `keys` slot.
    pub inner_slot: u32,
}

/// Everything [`reflect`] works with besides the frame.
pub(crate) struct EspCtx<'a, K: KeySource, C: EspCounters> {
    pub keys: &'a mut KeyCache<K>,
    pub counters: &'a C,
    pub stats: &'a PollerStats,
    pub scratch: &'a mut [u8],
    pub clock: &'a ClockState,
    pub batch: Instant,
    pub now_ns: u64,
    /// Clock for the cost statistics (CLOCK_TAI ns).
    pub tai_now: fn() -> u64,
}

fn rekey_soft(used: u64, limit: u64) -> bool {
    limit != 0 && used >= limit - limit / 10
}

/// Reflects the ESP frame at the start of `room` (`len` octets; `room`
/// runs to the end of the UMEM chunk) through `sa`: see the module docs.
pub(crate) fn reflect<K: KeySource, C: EspCounters>(
    room: &mut [u8],
    len: usize,
    esp_off: usize,
    t2: Stamp,
    sa: &mut EspSa,
    cx: &mut EspCtx<'_, K, C>,
) -> Result<EspReply, DropReason> {
    let outer = parse_outer(&room[..len]).map_err(|_| DropReason::Malformed)?;
    if outer.esp_off != esp_off || outer.udp.is_some() != sa.udp {
        return Err(DropReason::Malformed);
    }
    let own = sa.slot;
    let c = cx.counters;
    let esp = &room[esp_off..esp_off + outer.esp_len];
    if esp.len() < 8 || u32::from_be_bytes([esp[0], esp[1], esp[2], esp[3]]) != sa.spi_in {
        return Err(DropReason::UnknownSlot);
    }
    // 2. lifetimes, then the cheap replay pre-check
    let used_p = c.load(own, EspState::W_RX_PACKETS) + c.load(own, EspState::W_TX_PACKETS);
    let used_b = c.load(own, EspState::W_RX_BYTES) + c.load(own, EspState::W_TX_BYTES);
    if (sa.life_packets != 0 && used_p >= sa.life_packets)
        || (sa.life_bytes != 0 && used_b >= sa.life_bytes)
        || (sa.expires_ns != 0 && cx.now_ns >= sa.expires_ns)
    {
        c.add(own, EspState::W_EXPIRED, 1);
        c.or(own, EspState::W_REKEY, EspState::REKEY_EXPIRED);
        return Err(DropReason::EspExpired);
    }
    if rekey_soft(used_p, sa.life_packets) {
        c.or(own, EspState::W_REKEY, EspState::REKEY_PACKETS);
    }
    if rekey_soft(used_b, sa.life_bytes) {
        c.or(own, EspState::W_REKEY, EspState::REKEY_BYTES);
    }
    let seq_low = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);
    let seq = if sa.replay {
        match sa.window.check(seq_low) {
            Ok(s) => s,
            Err(_) => {
                c.add(own, EspState::W_REPLAY, 1);
                return Err(DropReason::EspReplay);
            }
        }
    } else {
        sa.window.infer(seq_low)
    };
    // 3. verify and decrypt in place; the window moves only now
    let opened = sa
        .cin
        .open(
            &mut room[esp_off..esp_off + outer.esp_len],
            sa.esn.then_some((seq >> 32) as u32),
        )
        .map_err(|e| {
            c.add(own, EspState::W_ICV, 1);
            tracing::debug!(spi = sa.spi_in, seq, error = %e, "ESP packet refused");
            match e {
                CryptoError::BadIcv | CryptoError::BadEspTrailer { .. } => DropReason::EspIcv,
                _ => DropReason::Malformed,
            }
        })?;
    let accepted = if sa.replay {
        sa.window.accept(seq)
    } else {
        // keep the ESN inference's right edge moving
        if seq > sa.window.top() {
            let _ = sa.window.accept(seq);
        }
        Ok(())
    };
    if accepted.is_err() {
        c.add(own, EspState::W_REPLAY, 1);
        return Err(DropReason::EspReplay);
    }
    c.add(own, EspState::W_RX_PACKETS, 1);
    c.add(own, EspState::W_RX_BYTES, outer.esp_len as u64);
    cx.stats
        .esp_t2_to_open
        .record((cx.tai_now)().saturating_sub(t2.ns));
    if opened.next_header == NEXT_HEADER_DUMMY {
        return Err(DropReason::EspDummy);
    }
    // 4. the inner datagram, inside the selectors, to the inner session
    let pay = esp_off + opened.payload.start;
    let pay_end = esp_off + opened.payload.end;
    let outer_ttl = room[outer.l3_off + if outer.v6 { 7 } else { 8 }];
    let inner = match parse_inner(&room[pay..pay_end], opened.next_header, sa.tunnel, &outer, outer_ttl) {
        Some(i) if sa.selectors.admits(i.src, i.dst) => i,
        _ => {
            c.add(own, EspState::W_SELECTOR, 1);
            return Err(DropReason::EspSelector);
        }
    };
    let slot = cx
        .keys
        .lookup(sa.inner_slot, sa.inner_generation, cx.now_ns)?;
    if let Some(sender) = slot.sender {
        if !same_endpoint(sender, inner.src) {
            return Err(DropReason::WrongSource);
        }
    }
    let udp_at = pay + inner.ip_len;
    let data_at = udp_at + UDP_LEN;
    let rx = cx
        .scratch
        .get_mut(..inner.payload_len)
        .ok_or(DropReason::NoRoom)?;
    rx.copy_from_slice(&room[data_at..data_at + inner.payload_len]);
    // room for the reply and the largest ESP tail behind it
    let tail = sa.cout.max_overhead();
    let out_end = room.len().checked_sub(tail).ok_or(DropReason::NoRoom)?;
    if out_end <= data_at {
        return Err(DropReason::NoRoom);
    }
    let r = slot.reflect(
        rx,
        RxMeta {
            ttl: inner.ttl,
            tos: inner.tos,
        },
        t2,
        cx.clock,
        cx.batch,
        &mut room[data_at..out_end],
    )?;
    let dscp = slot.dscp.unwrap_or(inner.tos >> 2) & 0x3f;
    // 5. inner headers of the reply
    let ulen = UDP_LEN + r.len;
    let (rsrc, rdst) = (inner.dst, inner.src);
    {
        let u = &mut room[udp_at..udp_at + ulen];
        u[0..2].copy_from_slice(&rsrc.port().to_be_bytes());
        u[2..4].copy_from_slice(&rdst.port().to_be_bytes());
        u[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
        u[6..8].fill(0);
        let ck = udp_checksum(&rsrc.ip(), &rdst.ip(), u);
        u[6..8].copy_from_slice(&ck.to_be_bytes());
    }
    if sa.tunnel {
        write_ip(
            &mut room[pay..udp_at],
            rsrc.ip(),
            rdst.ip(),
            dscp,
            NH_UDP,
            ulen,
        )?;
    }
    let payload_len = inner.ip_len + ulen;
    // the outbound SA's next number: shared by every queue, never reused
    let limit = if sa.esn { u64::MAX } else { u64::from(u32::MAX) };
    let seq_out = c
        .add_fetch(sa.tx_state, EspState::W_TX_SEQ, 1)
        .ok_or(DropReason::BadKeys)?;
    if seq_out == 0 || seq_out > limit {
        c.add(sa.tx_state, EspState::W_SEQ_EXHAUSTED, 1);
        c.or(sa.tx_state, EspState::W_REKEY, EspState::REKEY_SEQ);
        return Err(DropReason::EspSeqExhausted);
    }
    if rekey_soft(seq_out, limit) {
        c.or(sa.tx_state, EspState::W_REKEY, EspState::REKEY_SEQ);
    }
    if cx.scratch.len() < payload_len {
        return Err(DropReason::NoRoom);
    }
    let esp_total = sa
        .cout
        .seal(
            sa.spi_out,
            seq_out,
            sa.esn,
            opened.next_header,
            payload_len,
            &mut room[esp_off..],
        )
        .map_err(|_| DropReason::NoRoom)?;
    cx.stats
        .esp_t3_to_sealed
        .record((cx.tai_now)().saturating_sub(r.t3_tai_ns));
    c.add(sa.tx_state, EspState::W_TX_PACKETS, 1);
    c.add(sa.tx_state, EspState::W_TX_BYTES, esp_total as u64);
    // 6. outer headers
    let (start, flen) = write_outer(room, &outer, esp_total, dscp)?;
    Ok(EspReply {
        start,
        len: flen,
        reflected: r,
        inner_slot: sa.inner_slot,
    })
}

/// Writes an IP header (no options) of a datagram of `l4_len` octets of
/// protocol `proto` into `h` (20 or 40 octets, the family of `src`).
fn write_ip(
    h: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    dscp: u8,
    proto: u8,
    l4_len: usize,
) -> Result<(), DropReason> {
    let tos = (dscp & 0x3f) << 2; // ECN Not-ECT (RFC 7750 §3)
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if h.len() == IPV4_LEN => {
            let tot = u16::try_from(IPV4_LEN + l4_len).map_err(|_| DropReason::NoRoom)?;
            h[0] = 0x45;
            h[1] = tos;
            h[2..4].copy_from_slice(&tot.to_be_bytes());
            h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, not a fragment
            h[8] = 255;
            h[9] = proto;
            h[10..12].fill(0);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = !fold(ones_sum(h, 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) if h.len() == IPV6_LEN => {
            let plen = u16::try_from(l4_len).map_err(|_| DropReason::NoRoom)?;
            h[0] = 0x60 | (tos >> 4);
            h[1] = ((tos & 0x0f) << 4) | (h[1] & 0x0f);
            h[4..6].copy_from_slice(&plen.to_be_bytes());
            h[6] = proto;
            h[7] = 255;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
        }
        _ => return Err(DropReason::Malformed),
    }
    Ok(())
}

/// Rebuilds Ethernet, IP (options dropped) and UDP 4500 in front of the
/// sealed ESP packet of `esp_total` octets at `outer.esp_off`; returns
/// where the frame starts and its length.
fn write_outer(
    room: &mut [u8],
    outer: &Outer,
    esp_total: usize,
    dscp: u8,
) -> Result<(usize, usize), DropReason> {
    let ip_fixed = if outer.v6 { IPV6_LEN } else { IPV4_LEN };
    let start = outer.opt_len;
    if start > 0 {
        room.copy_within(0..outer.l3_off + ip_fixed, start);
    }
    let end = outer.esp_off + esp_total;
    let f = room.get_mut(start..end).ok_or(DropReason::NoRoom)?;
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    let l3 = outer.l3_off;
    let l4 = l3 + ip_fixed;
    let (proto, l4_len) = match outer.udp {
        Some(_) => (NH_UDP, UDP_LEN + esp_total),
        None => (NH_ESP, esp_total),
    };
    write_ip(
        &mut f[l3..l4],
        outer.dst,
        outer.src,
        dscp,
        proto,
        l4_len,
    )?;
    if let Some((sport, dport)) = outer.udp {
        let u = &mut f[l4..l4 + l4_len];
        u[0..2].copy_from_slice(&dport.to_be_bytes());
        u[2..4].copy_from_slice(&sport.to_be_bytes());
        u[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        u[6..8].fill(0);
        let ck = udp_checksum(&outer.dst, &outer.src, u);
        u[6..8].copy_from_slice(&ck.to_be_bytes());
    }
    Ok((start, end - start))
}
