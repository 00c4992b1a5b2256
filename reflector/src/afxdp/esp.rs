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
use crate::bpf::MAX_ESP_SAS;
use crate::bpf::{BpfError, EspKeysReader, EspSelectors, EspSlotKeys, EspState, EspStateShared};
use crate::clock::{ClockState, Stamp};
use crate::engine::same_endpoint;
use crate::stamp_engine::PacketAddrs;

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
    /// Deferred outbound switch of a rekey.
    next: TxNext,
    life_packets: u64,
    life_bytes: u64,
    expires_ns: u64,
    rekey_ns: u64,
    selectors: EspSelectors,
}

/// An outbound half: where the replies go and what numbers them.
struct TxHalf {
    spi_out: u32,
    cout: EspCipher,
    esn: bool,
    /// `esp_state` index of its sequence counter.
    tx_state: u32,
}

/// The deferred outbound switch of an SA that a rekey superseded
/// (`esp_keys.tx_next`, RFC 7296 §2.8).
enum TxNext {
    /// Not superseded: the own (or written) outbound half.
    None,
    /// Waiting for a packet to authenticate on the newest SA (its slot).
    Waiting(u32),
    /// It did: replies use the newest SA's outbound half.
    Switched(Box<TxHalf>),
    /// The newest SA's entry does not fit (another session's, gone):
    /// stay on the written half until the control plane rewrites this SA.
    Refused,
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
            next: match k.tx_next {
                Some(n) if n != slot => TxNext::Waiting(n),
                _ => TxNext::None,
            },
            life_packets: k.life_packets,
            life_bytes: k.life_bytes,
            expires_ns: k.expires_ns,
            rekey_ns: k.rekey_ns,
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
                    // The map may be one step ahead of the metadata: the
                    // control plane rewrites `esp_keys` first, then the
                    // `esp_sas` entry (e.g. the outbound switch of a rekey).
                    // The newer state is the one to use; a slot reused by
                    // another SA is caught by the SPI check.
                    Ok(Some(k)) => match EspSa::new(slot, &k) {
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

impl<S: EspKeySource> EspCache<S> {
    /// As [`Self::lookup`], and completes a deferred outbound switch: once
    /// a packet authenticated on the session's newest SA (its
    /// `esp_state.rx_packets` is non-zero, seen by every poller through
    /// the shared mapping) this SA's replies go out under that SA's
    /// outbound half. Its `esp_keys` entry is read once per poller.
    pub fn lookup_tx<C: EspCounters>(
        &mut self,
        slot: u32,
        generation: u32,
        now_ns: u64,
        counters: &C,
    ) -> Result<&mut EspSa, DropReason> {
        let (next, inner) = {
            let sa = self.lookup(slot, generation, now_ns)?;
            match sa.next {
                TxNext::Waiting(n) => (n, (sa.inner_slot, sa.inner_generation, sa.spi_in)),
                _ => return self.lookup(slot, generation, now_ns),
            }
        };
        if counters.load(next, EspState::W_RX_PACKETS) != 0 {
            let half = match self.source.read(next) {
                Ok(Some(k))
                    if (k.inner_slot, k.inner_generation) == (inner.0, inner.1)
                        && k.spi_in != inner.2
                        && k.tx_state == next =>
                {
                    EspCipher::new(&k.key_out).ok().map(|cout| TxHalf {
                        spi_out: k.spi_out,
                        cout,
                        esn: k.esn,
                        tx_state: k.tx_state,
                    })
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(slot = next, error = %e, "esp_keys read failed");
                    None
                }
            };
            if let Entry::Ready(sa) = &mut self.entries[slot as usize] {
                sa.next = match half {
                    Some(h) => {
                        tracing::debug!(slot, next, "ESP outbound switched to the new SA");
                        TxNext::Switched(Box::new(h))
                    }
                    None => {
                        tracing::warn!(slot, next, "tx_next does not name this session's SA");
                        TxNext::Refused
                    }
                };
            }
        }
        self.lookup(slot, generation, now_ns)
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
            (
                false,
                v4(h, 12),
                v4(h, 16),
                h[1],
                h[9],
                l3 + ihl,
                ihl - IPV4_LEN,
                l3 + tot,
            )
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
            (
                true,
                v6(h, 8),
                v6(h, 24),
                tc,
                nh,
                off,
                off - l3 - IPV6_LEN,
                end,
            )
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
            (
                IPV6_LEN,
                v6(p, 8),
                v6(p, 24),
                p[7],
                (p[0] << 4) | (p[1] >> 4),
            )
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
    limit != 0 && used >= limit - limit.div_ceil(10)
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
    if sa.rekey_ns != 0 && cx.now_ns >= sa.rekey_ns {
        c.or(own, EspState::W_REKEY, EspState::REKEY_TIME);
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
    let inner = match parse_inner(
        &room[pay..pay_end],
        opened.next_header,
        sa.tunnel,
        &outer,
        outer_ttl,
    ) {
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
    // the outbound half: the SA's own, or the newest SA's once switched
    let (spi_out, cout, esn_out, tx_state) = match &sa.next {
        TxNext::Switched(h) => (h.spi_out, &h.cout, h.esn, h.tx_state),
        _ => (sa.spi_out, &sa.cout, sa.esn, sa.tx_state),
    };
    // room for the reply and the largest ESP tail behind it
    let tail = cout.max_overhead();
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
        Some(PacketAddrs {
            src: inner.src,
            dst: Some(inner.dst),
            src_mac: None,
        }),
        t2,
        cx.clock,
        cx.batch,
        &mut room[data_at..out_end],
    )?;
    let dscp = r.reply_dscp.or(slot.dscp).unwrap_or(inner.tos >> 2) & 0x3f;
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
    let limit = if esn_out {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    let seq_out = c
        .add_fetch(tx_state, EspState::W_TX_SEQ, 1)
        .ok_or(DropReason::BadKeys)?;
    if seq_out == 0 || seq_out > limit {
        c.add(tx_state, EspState::W_SEQ_EXHAUSTED, 1);
        c.or(tx_state, EspState::W_REKEY, EspState::REKEY_SEQ);
        return Err(DropReason::EspSeqExhausted);
    }
    if rekey_soft(seq_out, limit) {
        c.or(tx_state, EspState::W_REKEY, EspState::REKEY_SEQ);
    }
    if cx.scratch.len() < payload_len {
        return Err(DropReason::NoRoom);
    }
    let esp_total = cout
        .seal(
            spi_out,
            seq_out,
            esn_out,
            opened.next_header,
            payload_len,
            &mut room[esp_off..],
        )
        .map_err(|_| DropReason::NoRoom)?;
    cx.stats
        .esp_t3_to_sealed
        .record((cx.tai_now)().saturating_sub(r.t3_tai_ns));
    c.add(tx_state, EspState::W_TX_PACKETS, 1);
    c.add(tx_state, EspState::W_TX_BYTES, esp_total as u64);
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
    write_ip(&mut f[l3..l4], outer.dst, outer.src, dscp, proto, l4_len)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::afxdp::cache::KeySource;
    use crate::bpf::{EntryFlags, KeyMaterial, SlotKeys};
    use crate::clock::{ClockSource, LeapState, StampSource, TimeScale};
    use ricochet_protocol::crypto::EspKeys;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Independent RFC 1071 sum, one 16-bit word at a time.
    fn naive_sum(b: &[u8]) -> u16 {
        let mut s = 0u32;
        for (i, x) in b.iter().enumerate() {
            s += if i % 2 == 0 {
                u32::from(*x) << 8
            } else {
                u32::from(*x)
            };
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
        let mut p = src.to_vec();
        p.extend_from_slice(dst);
        if src.len() == 4 {
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        p
    }

    fn udp_ok(src: &[u8], dst: &[u8], u: &[u8]) -> bool {
        let mut all = pseudo(src, dst, 17, u.len());
        all.extend_from_slice(u);
        naive_sum(&all) == 0xffff
    }

    struct Counters(Vec<AtomicU64>);
    impl Counters {
        fn new() -> Counters {
            Counters(
                (0..MAX_ESP_SAS as usize * EspState::LEN / 8)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            )
        }
        fn at(&self, slot: u32, w: usize) -> &AtomicU64 {
            &self.0[slot as usize * EspState::LEN / 8 + w]
        }
    }
    impl EspCounters for Counters {
        fn add(&self, slot: u32, w: usize, v: u64) {
            self.at(slot, w).fetch_add(v, Ordering::Relaxed);
        }
        fn add_fetch(&self, slot: u32, w: usize, v: u64) -> Option<u64> {
            Some(self.at(slot, w).fetch_add(v, Ordering::Relaxed) + v)
        }
        fn or(&self, slot: u32, w: usize, bits: u64) {
            self.at(slot, w).fetch_or(bits, Ordering::Relaxed);
        }
        fn load(&self, slot: u32, w: usize) -> u64 {
            self.at(slot, w).load(Ordering::Relaxed)
        }
    }

    struct Inner(SlotKeys);
    impl KeySource for Inner {
        fn read(&self, slot: u32) -> Result<Option<SlotKeys>, BpfError> {
            Ok((slot == 5).then(|| self.0.clone()))
        }
    }

    fn clock() -> ClockState {
        ClockState {
            tai_offset_s: 37,
            synchronized: true,
            est_error_ns: 1_000,
            max_error_ns: 10_000,
            source: ClockSource::External,
            leap: LeapState::None,
            phc_present: false,
        }
    }

    const V4_A: [u8; 4] = [198, 18, 0, 1];
    const V4_B: [u8; 4] = [198, 18, 0, 2];
    const IN_A: [u8; 4] = [198, 19, 0, 1];
    const IN_B: [u8; 4] = [198, 19, 0, 2];

    struct Case {
        spi_in: u32,
        spi_out: u32,
        keys_in: EspKeys,
        keys_out: EspKeys,
        esn: bool,
        tunnel: bool,
        udp: bool,
        v6: bool,
        replay: u32,
        life_packets: u64,
        expires_ns: u64,
        rekey_ns: u64,
    }

    impl Case {
        fn gcm() -> Case {
            Case {
                spi_in: 0x1001,
                spi_out: 0x2001,
                keys_in: EspKeys::gcm_from_keymat(&[7; 20]).unwrap(),
                keys_out: EspKeys::gcm_from_keymat(&[8; 20]).unwrap(),
                esn: false,
                tunnel: false,
                udp: true,
                v6: false,
                replay: 64,
                life_packets: 0,
                expires_ns: 0,
                rekey_ns: 0,
            }
        }

        fn inner_addrs(&self) -> (IpAddr, IpAddr) {
            match (self.tunnel, self.v6) {
                (true, _) => (IpAddr::from(IN_A), IpAddr::from(IN_B)),
                (false, false) => (IpAddr::from(V4_A), IpAddr::from(V4_B)),
                (false, true) => ("2001:2::1".parse().unwrap(), "2001:2::2".parse().unwrap()),
            }
        }

        fn slot_keys(&self) -> EspSlotKeys {
            let (a, b) = self.inner_addrs();
            EspSlotKeys {
                generation: 1,
                instance: 1,
                spi_in: self.spi_in,
                spi_out: self.spi_out,
                key_in: self.keys_in.clone(),
                key_out: self.keys_out.clone(),
                esn: self.esn,
                tunnel: self.tunnel,
                udp: self.udp,
                replay_window: self.replay,
                inner_slot: 5,
                inner_generation: 9,
                // with a lifetime: an SA sending with its own outbound half
                // (both directions count); else a rekeyed one (another's)
                tx_state: if self.life_packets != 0 { 7 } else { 3 },
                tx_next: None,
                life_packets: self.life_packets,
                life_bytes: 0,
                expires_ns: self.expires_ns,
                rekey_ns: self.rekey_ns,
                selectors: EspSelectors {
                    local: SocketAddr::new(b, 862),
                    remote: SocketAddr::new(a, 40000),
                },
            }
        }

        /// The frame a peer sends: ESP sequence `seq`, inner datagram to
        /// `dport` with `nh` as Next Header (0: the right one).
        fn frame(&self, seq: u64, dport: u16, nh: u8, twamp_seq: u32) -> (Vec<u8>, usize) {
            let (ia, ib) = self.inner_addrs();
            let mut twamp = vec![0u8; 41];
            twamp[..4].copy_from_slice(&twamp_seq.to_be_bytes());
            twamp[12..14].copy_from_slice(&0x8001u16.to_be_bytes());
            let mut udp = 40000u16.to_be_bytes().to_vec();
            udp.extend_from_slice(&dport.to_be_bytes());
            udp.extend_from_slice(&(8 + twamp.len() as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&twamp);
            let payload = if self.tunnel {
                let mut ip = vec![0x45, 0xb8];
                ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0, 1, 0, 0, 33, 17, 0, 0]);
                ip.extend_from_slice(&IN_A);
                ip.extend_from_slice(&IN_B);
                let c = !naive_sum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                ip.extend_from_slice(&udp);
                ip
            } else {
                udp
            };
            let _ = (ia, ib);
            let cipher = EspCipher::new(&self.keys_in).unwrap();
            let po = cipher.payload_offset();
            let mut esp = vec![0u8; cipher.sealed_len(payload.len())];
            esp[po..po + payload.len()].copy_from_slice(&payload);
            let nh = match (nh, self.tunnel) {
                (0, true) => 4,
                (0, false) => 17,
                (n, _) => n,
            };
            let n = cipher
                .seal(self.spi_in, seq, self.esn, nh, payload.len(), &mut esp)
                .unwrap();
            esp.truncate(n);
            let l4 = if self.udp {
                let mut u = 4500u16.to_be_bytes().to_vec();
                u.extend_from_slice(&4500u16.to_be_bytes());
                u.extend_from_slice(&((8 + esp.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(&esp);
                u
            } else {
                esp
            };
            let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
            let proto = if self.udp { 17 } else { 50 };
            if self.v6 {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[proto, 64]);
                f.extend_from_slice(&"2001:2::1".parse::<Ipv6Addr>().unwrap().octets());
                f.extend_from_slice(&"2001:2::2".parse::<Ipv6Addr>().unwrap().octets());
            } else {
                f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
                f.extend_from_slice(&V4_A);
                f.extend_from_slice(&V4_B);
                let c = !naive_sum(&f[14..34]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
            }
            let esp_off = f.len() + if self.udp { 8 } else { 0 };
            f.extend_from_slice(&l4);
            (f, esp_off)
        }
    }

    struct Rig {
        case: Case,
        sa: EspSa,
        keys: KeyCache<Inner>,
        counters: Counters,
        stats: PollerStats,
        scratch: Vec<u8>,
    }

    impl Rig {
        fn new(case: Case) -> Rig {
            let sa = EspSa::new(7, &case.slot_keys()).unwrap();
            let inner = SlotKeys {
                generation: 9,
                instance: 9,
                keys: KeyMaterial::TwampOpen,
                flags: EntryFlags::empty(),
                dscp: 0,
                reflect_octets: 0,
                sender_mbz: 0,
                sender: None,
            };
            Rig {
                case,
                sa,
                keys: KeyCache::new(Inner(inner)),
                counters: Counters::new(),
                stats: PollerStats::default(),
                scratch: vec![0; 4096],
            }
        }

        fn run(&mut self, frame: &[u8], esp_off: usize) -> Result<Vec<u8>, DropReason> {
            self.run_on(None, frame, esp_off)
        }

        /// As [`Self::run`] through `sa` (one from an [`EspCache`]) if given.
        fn run_on(
            &mut self,
            sa: Option<&mut EspSa>,
            frame: &[u8],
            esp_off: usize,
        ) -> Result<Vec<u8>, DropReason> {
            let sa = match sa {
                Some(s) => s,
                None => &mut self.sa,
            };
            let mut room = vec![0u8; 4096];
            room[..frame.len()].copy_from_slice(frame);
            let clock = clock();
            let mut cx = EspCtx {
                keys: &mut self.keys,
                counters: &self.counters,
                stats: &self.stats,
                scratch: &mut self.scratch,
                clock: &clock,
                batch: Instant::now(),
                now_ns: 1,
                tai_now: crate::clock::now_tai_ns,
            };
            let t2 = Stamp {
                ns: crate::clock::now_tai_ns(),
                scale: TimeScale::Tai,
                source: StampSource::KernelSoftware,
            };
            let r = reflect(&mut room, frame.len(), esp_off, t2, sa, &mut cx)?;
            Ok(room[r.start..r.start + r.len].to_vec())
        }

        /// Checks a reply frame's outer headers and opens it; returns the
        /// ESP sequence number, the Next Header and the plaintext payload.
        fn open(&self, reply: &[u8]) -> (u64, u8, Vec<u8>) {
            self.open_as(reply, self.case.spi_out, &self.case.keys_out)
        }

        /// As [`Self::open`], the reply expected under outbound SA `spi`.
        fn open_as(&self, reply: &[u8], spi: u32, keys: &EspKeys) -> (u64, u8, Vec<u8>) {
            assert_eq!(
                &reply[..12],
                &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2],
                "MACs swapped"
            );
            let proto = if self.case.udp { 17 } else { 50 };
            let (l4, src, dst) = if self.case.v6 {
                assert_eq!(&reply[12..14], &[0x86, 0xdd]);
                let plen = usize::from(u16::from_be_bytes([reply[18], reply[19]]));
                assert_eq!(14 + 40 + plen, reply.len());
                assert_eq!((reply[20], reply[21]), (proto, 255));
                (54, reply[22..38].to_vec(), reply[38..54].to_vec())
            } else {
                assert_eq!(naive_sum(&reply[14..34]), 0xffff, "IPv4 header checksum");
                let tot = usize::from(u16::from_be_bytes([reply[16], reply[17]]));
                assert_eq!(14 + tot, reply.len());
                assert_eq!((reply[22], reply[23]), (255, proto));
                assert_eq!(&reply[26..30], &V4_B, "source = our address");
                assert_eq!(&reply[30..34], &V4_A);
                (34, reply[26..30].to_vec(), reply[30..34].to_vec())
            };
            let esp_at = if self.case.udp {
                let u = &reply[l4..];
                assert_eq!(&u[..4], &[0x11, 0x94, 0x11, 0x94], "4500 -> 4500");
                assert!(udp_ok(&src, &dst, u), "outer UDP checksum");
                l4 + 8
            } else {
                l4
            };
            let mut esp = reply[esp_at..].to_vec();
            assert_eq!(&esp[..4], &spi.to_be_bytes(), "outbound SPI");
            let c = EspCipher::new(keys).unwrap();
            let hi = self.case.esn.then_some(0);
            let o = c
                .open(&mut esp, hi)
                .expect("reply opens with the outbound keys");
            (o.seq, o.next_header, esp[o.payload].to_vec())
        }
    }

    #[test]
    fn tunnel_mode_cbc_hmac_esn_reflects_the_inner_packet() {
        let keys = EspKeys::AesCbcHmacSha256 {
            enc_key: vec![1; 32],
            auth_key: vec![2; 32],
        };
        let keys_out = EspKeys::AesCbcHmacSha256 {
            enc_key: vec![3; 32],
            auth_key: vec![4; 32],
        };
        let mut rig = Rig::new(Case {
            keys_in: keys,
            keys_out,
            esn: true,
            tunnel: true,
            ..Case::gcm()
        });
        for i in 1..=3u64 {
            let (f, off) = rig.case.frame(i, 862, 0, 100 + i as u32);
            let reply = rig.run(&f, off).unwrap();
            let (seq, nh, p) = rig.open(&reply);
            assert_eq!((seq, nh), (i, 4), "own numbers from 1; inner IPv4");
            // inner IPv4 reply: addresses swapped, TTL 255, checksum
            assert_eq!(naive_sum(&p[..20]), 0xffff);
            assert_eq!((p[8], p[9]), (255, 17));
            assert_eq!(&p[12..16], &IN_B);
            assert_eq!(&p[16..20], &IN_A);
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            let u = &p[20..];
            assert_eq!(&u[..4], &[0x03, 0x5e, 0x9c, 0x40], "862 -> 40000");
            assert!(udp_ok(&IN_B, &IN_A, u), "inner UDP checksum");
            let t = &u[8..];
            assert_eq!(t.len(), 41);
            assert_eq!(&t[24..28], &(100 + i as u32).to_be_bytes());
            assert_eq!(&t[..4], &(i as u32 - 1).to_be_bytes(), "reflector seq");
            assert_eq!(t[40], 33, "Sender TTL: the inner TTL in tunnel mode");
        }
        assert_eq!(rig.counters.load(7, EspState::W_RX_PACKETS), 3);
        assert_eq!(rig.counters.load(3, EspState::W_TX_PACKETS), 3);
        assert_eq!(rig.counters.load(3, EspState::W_TX_SEQ), 3);
        assert_eq!(rig.stats.esp_t2_to_open.count(), 3);
        assert_eq!(rig.stats.esp_t3_to_sealed.count(), 3);
    }

    #[test]
    fn raw_esp_over_ipv6_transport_gcm256() {
        let mut rig = Rig::new(Case {
            keys_in: EspKeys::gcm_from_keymat(&[5; 36]).unwrap(),
            keys_out: EspKeys::gcm_from_keymat(&[6; 36]).unwrap(),
            udp: false,
            v6: true,
            ..Case::gcm()
        });
        let (f, off) = rig.case.frame(1, 862, 0, 7);
        let reply = rig.run(&f, off).unwrap();
        let (seq, nh, p) = rig.open(&reply);
        assert_eq!((seq, nh), (1, 17));
        let a: Ipv6Addr = "2001:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:2::2".parse().unwrap();
        assert!(
            udp_ok(&b.octets(), &a.octets(), &p),
            "inner UDP checksum (IPv6)"
        );
        assert_eq!(
            p[8 + 40],
            64,
            "Sender TTL: the outer Hop Limit in transport mode"
        );
    }

    #[test]
    fn replay_tamper_selectors_and_dummies_are_dropped_and_counted() {
        let mut rig = Rig::new(Case::gcm());
        let (f1, off) = rig.case.frame(1, 862, 0, 1);
        rig.run(&f1, off).unwrap();
        assert_eq!(rig.run(&f1, off), Err(DropReason::EspReplay));
        let (mut f2, _) = rig.case.frame(2, 862, 0, 2);
        let n = f2.len();
        f2[n - 1] ^= 0x80;
        assert_eq!(rig.run(&f2, off), Err(DropReason::EspIcv));
        let (f2, _) = rig.case.frame(2, 862, 0, 2);
        rig.run(&f2, off)
            .expect("the genuine packet after a forged one");
        let (f3, _) = rig.case.frame(3, 22, 0, 3);
        assert_eq!(rig.run(&f3, off), Err(DropReason::EspSelector));
        let (f4, _) = rig.case.frame(4, 862, 59, 4);
        assert_eq!(rig.run(&f4, off), Err(DropReason::EspDummy));
        let (f5, _) = rig.case.frame(5, 862, 4, 5); // says IPv4 in transport mode
        assert_eq!(rig.run(&f5, off), Err(DropReason::EspSelector));
        let c = &rig.counters;
        assert_eq!(c.load(7, EspState::W_REPLAY), 1);
        assert_eq!(c.load(7, EspState::W_ICV), 1);
        assert_eq!(c.load(7, EspState::W_SELECTOR), 2);
        assert_eq!(c.load(3, EspState::W_TX_PACKETS), 2, "only two replies");
        // a frame whose metadata offset disagrees with its headers
        let (f6, off6) = rig.case.frame(6, 862, 0, 6);
        assert_eq!(rig.run(&f6, off6 + 4), Err(DropReason::Malformed));
        // garbage never panics
        for len in [0, 13, 30, 60] {
            let _ = rig.run(&vec![0x45; len], 42);
        }
    }

    #[test]
    fn sequence_exhaustion_and_lifetimes_signal_a_rekey() {
        let mut rig = Rig::new(Case::gcm());
        // 90 % of the 32-bit space: still sent, rekey requested
        rig.counters
            .at(3, EspState::W_TX_SEQ)
            .store(u64::from(u32::MAX) - 5, Ordering::Relaxed);
        let (f, off) = rig.case.frame(1, 862, 0, 1);
        let reply = rig.run(&f, off).unwrap();
        assert_eq!(rig.open(&reply).0, u64::from(u32::MAX) - 4);
        assert_ne!(
            rig.counters.load(3, EspState::W_REKEY) & EspState::REKEY_SEQ,
            0
        );
        // the end: never wrap (RFC 4303 §3.3.3), count and refuse
        rig.counters
            .at(3, EspState::W_TX_SEQ)
            .store(u64::from(u32::MAX), Ordering::Relaxed);
        let (f, _) = rig.case.frame(2, 862, 0, 2);
        assert_eq!(rig.run(&f, off), Err(DropReason::EspSeqExhausted));
        assert_eq!(rig.counters.load(3, EspState::W_SEQ_EXHAUSTED), 1);

        // packet lifetime 5 (both directions): soft signal at 90 %, then expiry
        let mut rig = Rig::new(Case {
            life_packets: 5,
            ..Case::gcm()
        });
        for i in 1..=2u64 {
            let (f, off) = rig.case.frame(i, 862, 0, i as u32);
            rig.run(&f, off).unwrap();
        }
        assert_eq!(rig.counters.load(7, EspState::W_REKEY), 0);
        let (f, off) = rig.case.frame(3, 862, 0, 3);
        rig.run(&f, off).unwrap(); // 4 used before it: soft limit reached
        assert_ne!(
            rig.counters.load(7, EspState::W_REKEY) & EspState::REKEY_PACKETS,
            0
        );
        let (f, off) = rig.case.frame(4, 862, 0, 4);
        assert_eq!(rig.run(&f, off), Err(DropReason::EspExpired));
        assert_ne!(
            rig.counters.load(7, EspState::W_REKEY) & EspState::REKEY_EXPIRED,
            0
        );
    }

    #[test]
    fn time_lifetime_signals_then_expires() {
        // the rig's batch time is 1 ns
        let mut rig = Rig::new(Case {
            rekey_ns: 1,
            expires_ns: 5,
            ..Case::gcm()
        });
        let (f, off) = rig.case.frame(1, 862, 0, 1);
        rig.run(&f, off).unwrap();
        assert_eq!(
            rig.counters.load(7, EspState::W_REKEY),
            EspState::REKEY_TIME
        );
        let mut rig = Rig::new(Case {
            expires_ns: 1,
            ..Case::gcm()
        });
        let (f, off) = rig.case.frame(1, 862, 0, 1);
        assert_eq!(rig.run(&f, off), Err(DropReason::EspExpired));
        assert_eq!(rig.counters.load(7, EspState::W_EXPIRED), 1);
    }

    #[test]
    fn anti_replay_off_accepts_duplicates_as_the_receiver_chose() {
        let mut rig = Rig::new(Case {
            replay: 0,
            ..Case::gcm()
        });
        let (f, off) = rig.case.frame(1, 862, 0, 1);
        rig.run(&f, off).unwrap();
        rig.run(&f, off).unwrap();
        assert_eq!(rig.counters.load(7, EspState::W_REPLAY), 0);
    }

    struct Sas(
        std::cell::RefCell<Option<EspSlotKeys>>,
        std::cell::Cell<u32>,
    );
    impl EspKeySource for &Sas {
        fn read(&self, _slot: u32) -> Result<Option<EspSlotKeys>, BpfError> {
            self.1.set(self.1.get() + 1);
            Ok(self.0.borrow().clone())
        }
    }

    #[test]
    fn cache_reads_on_generation_change_and_keeps_the_window_of_the_same_sa() {
        let src = Sas(
            std::cell::RefCell::new(Some(Case::gcm().slot_keys())),
            std::cell::Cell::new(0),
        );
        let mut c = EspCache::new(&src);
        for _ in 0..10 {
            c.lookup(7, 1, 0).unwrap();
        }
        assert_eq!(src.1.get(), 1, "one map read for ten packets");
        c.lookup(7, 1, 0).unwrap().window.accept(5).unwrap();
        // the rekey rewrote the SA (new outbound half): generation 2, same instance
        let mut k = Case::gcm().slot_keys();
        k.generation = 2;
        k.spi_out = 0x2002;
        *src.0.borrow_mut() = Some(k.clone());
        let sa = c.lookup(7, 2, 0).unwrap();
        assert_eq!(sa.spi_out, 0x2002);
        assert_eq!(sa.window.top(), 5, "window kept");
        // a new SA in the slot (new instance) starts a fresh window
        k.generation = 3;
        k.instance = 2;
        *src.0.borrow_mut() = Some(k);
        assert_eq!(c.lookup(7, 3, 0).unwrap().window.top(), 0);
        // metadata one generation behind the map (between the control
        // plane's two writes): the newer state serves it
        assert_eq!(c.lookup(7, 2, 0).unwrap().generation, 3);
        // an emptied slot is refused, and the refusal paced
        *src.0.borrow_mut() = None;
        assert_eq!(c.lookup(7, 4, 0).err(), Some(DropReason::UnknownSlot));
        let reads = src.1.get();
        assert_eq!(c.lookup(7, 4, 1).err(), Some(DropReason::UnknownSlot));
        assert_eq!(src.1.get(), reads, "paced");
        assert_eq!(
            c.lookup(MAX_ESP_SAS, 1, 0).err(),
            Some(DropReason::UnknownSlot)
        );
    }

    struct Slots(
        std::cell::RefCell<std::collections::HashMap<u32, EspSlotKeys>>,
        std::cell::Cell<u32>,
    );
    impl EspKeySource for &Slots {
        fn read(&self, slot: u32) -> Result<Option<EspSlotKeys>, BpfError> {
            self.1.set(self.1.get() + 1);
            Ok(self.0.borrow().get(&slot).cloned())
        }
    }

    /// RFC 7296 §2.8: after a rekey the replies to packets on the old SA
    /// keep using the old outbound SA until a packet authenticates on the
    /// new inbound SA, then the new outbound SA (its SPI, keys and shared
    /// sequence counter), with one map read per poller, not per packet.
    #[test]
    fn a_rekeyed_sa_switches_its_outbound_once_the_new_sa_authenticates() {
        let old = Case::gcm();
        let new = Case {
            spi_in: 0x1002,
            spi_out: 0x2002,
            keys_in: EspKeys::gcm_from_keymat(&[9; 20]).unwrap(),
            keys_out: EspKeys::gcm_from_keymat(&[10; 20]).unwrap(),
            ..Case::gcm()
        };
        let mut k7 = old.slot_keys();
        k7.tx_state = 7;
        k7.tx_next = Some(8);
        let mut k8 = new.slot_keys();
        k8.tx_state = 8;
        let src = Slots(
            std::cell::RefCell::new([(7, k7.clone()), (8, k8.clone())].into()),
            std::cell::Cell::new(0),
        );
        let mut sas = EspCache::new(&src);
        let mut rig = Rig::new(Case::gcm());
        let (k_old, k_new) = (old.keys_out.clone(), new.keys_out.clone());
        // before: old half, old counter; the new SA's entry is not read
        for i in 1..=3u64 {
            let (f, off) = old.frame(i, 862, 0, i as u32);
            let sa = sas.lookup_tx(7, 1, 0, &rig.counters).unwrap();
            let reply = rig.run_on(Some(sa), &f, off).unwrap();
            assert_eq!(rig.open_as(&reply, 0x2001, &k_old).0, i);
        }
        assert_eq!(src.1.get(), 1, "slot 7 read once");
        // a forgery on the new SPI does not authenticate: no switch
        let (mut bad, off) = new.frame(1, 862, 0, 50);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let sa = sas.lookup_tx(8, 1, 0, &rig.counters).unwrap();
        assert_eq!(rig.run_on(Some(sa), &bad, off), Err(DropReason::EspIcv));
        let (f, off) = old.frame(4, 862, 0, 4);
        let sa = sas.lookup_tx(7, 1, 0, &rig.counters).unwrap();
        let reply = rig.run_on(Some(sa), &f, off).unwrap();
        assert_eq!(rig.open_as(&reply, 0x2001, &k_old).0, 4);
        // the first authenticated packet on the new SA: replied on the
        // new half, and from now on the old SA's replies too
        let (f, off) = new.frame(1, 862, 0, 51);
        let sa = sas.lookup_tx(8, 1, 0, &rig.counters).unwrap();
        let reply = rig.run_on(Some(sa), &f, off).unwrap();
        assert_eq!(rig.open_as(&reply, 0x2002, &k_new).0, 1);
        let reads = src.1.get();
        for i in 5..=7u64 {
            let (f, off) = old.frame(i, 862, 0, i as u32);
            let sa = sas.lookup_tx(7, 1, 0, &rig.counters).unwrap();
            let reply = rig.run_on(Some(sa), &f, off).unwrap();
            let (seq, _, p) = rig.open_as(&reply, 0x2002, &k_new);
            assert_eq!(seq, i - 3, "the new SA's counter, shared");
            assert_eq!(&p[8 + 24..8 + 28], &(i as u32).to_be_bytes());
        }
        assert_eq!(src.1.get(), reads + 1, "the new SA's entry read once");
        let c = &rig.counters;
        assert_eq!(c.load(7, EspState::W_TX_SEQ), 4);
        assert_eq!(c.load(7, EspState::W_TX_PACKETS), 4);
        assert_eq!(c.load(8, EspState::W_TX_SEQ), 4);
        assert_eq!(c.load(8, EspState::W_TX_PACKETS), 4);
        assert_eq!(c.load(8, EspState::W_ICV), 1);
        assert_eq!(c.load(7, EspState::W_RX_PACKETS), 7, "old SA still opens");
        // rollback: the control plane rewrote slot 7 without tx_next
        // (new generation, same instance): back on the old half and counter
        k7.generation = 2;
        k7.tx_next = None;
        src.0.borrow_mut().insert(7, k7.clone());
        let (f, off) = old.frame(8, 862, 0, 8);
        let sa = sas.lookup_tx(7, 2, 0, &rig.counters).unwrap();
        let reply = rig.run_on(Some(sa), &f, off).unwrap();
        assert_eq!(rig.open_as(&reply, 0x2001, &k_old).0, 5);
        // tx_next naming another session's SA is refused: own half kept
        k7.generation = 3;
        k7.tx_next = Some(8);
        src.0.borrow_mut().insert(7, k7);
        k8.inner_slot = 6;
        src.0.borrow_mut().insert(8, k8);
        for i in 9..=10u64 {
            let (f, off) = old.frame(i, 862, 0, i as u32);
            let sa = sas.lookup_tx(7, 3, 0, &rig.counters).unwrap();
            let reply = rig.run_on(Some(sa), &f, off).unwrap();
            assert_eq!(rig.open_as(&reply, 0x2001, &k_old).0, i - 3);
        }
    }
}
