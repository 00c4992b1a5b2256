//! The per-slot state a poller keeps for a secured session: the shared
//! reflection [`engine`](crate::engine) built from the slot's `keys` map
//! entry, plus what the frame rewrite needs (DSCP, the sender for the
//! source check).
//!
//! * TWAMP authenticated / encrypted (RFC 5357 modes 2/4): a started
//!   [`SessionEngine`] with the per-SID test keys: own sequence numbers from
//!   0, sender header decrypted and its HMAC checked, reply built, T3 taken
//!   at the last moment and the reply protected (engine module docs).
//! * STAMP authenticated (RFC 8762 §4.1.1): a [`ListenerEngine`] with the
//!   HMAC-SHA-256 key: stateless (sequence number copied, reply never
//!   longer than the request).
//!
//! Rate limits are the XDP program's (token bucket per map entry), so the
//! engines here are unlimited.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use ricochet_protocol::time::TimeFormat;
use ricochet_protocol::twamp_test::{
    AuthSymmetricalMbz, ReflectOctets, RxMeta, SessionFormat, TestSecurity,
};
use zeroize::Zeroizing;

use super::stats::DropReason;
use crate::bpf::{EntryFlags, KeyMaterial, SlotKeys, TsSource};
use crate::clock::{ClockState, Stamp, StampSource, TimeScale};
use crate::engine::{self, ListenerEngine, SessionEngine};
use crate::session_table::ListenerKind;
use crate::session_table::StampSessionSpec;
use crate::stamp_engine::{CosPolicy, PacketAddrs, StampSessionEngine};

thread_local! {
    /// The last T3 the engines of this thread took (TAI ns): the poller
    /// needs it for its T3 → TX statistics, the engine takes it itself.
    static LAST_T3: Cell<u64> = const { Cell::new(0) };
}

/// The engines' T3 source on poller threads: `CLOCK_TAI` now, remembered.
fn t3_now() -> Stamp {
    let s = Stamp::now();
    LAST_T3.with(|c| c.set(s.ns));
    s
}

enum Engine {
    Twamp(SessionEngine),
    Stamp(ListenerEngine),
    StampSession(Box<StampSessionEngine>),
}

/// One slot's prepared state.
pub(crate) struct SecuredSlot {
    /// The generation it was built for.
    pub generation: u32,
    /// DSCP of the replies; `None` copies the received DSCP.
    pub dscp: Option<u8>,
    /// The only source accepted; `None` for listeners.
    pub sender: Option<SocketAddr>,
    /// The map value without its generation: a new generation with the same
    /// configuration keeps this state (and the sequence counter).
    config: Zeroizing<Vec<u8>>,
    engine: Engine,
}

/// What one reflection produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reflected {
    /// UDP payload length of the reply.
    pub len: usize,
    /// The reflector sequence number of the reply.
    pub seq: u32,
    /// T3, TAI nanoseconds.
    pub t3_tai_ns: u64,
    /// The DSCP a STAMP Class of Service TLV decided for this reply.
    pub reply_dscp: Option<u8>,
}

/// The map value of `k` with the generation zeroed.
fn config_of(k: &SlotKeys) -> Zeroizing<Vec<u8>> {
    let mut b = k.to_bytes();
    b[..4].fill(0); // rc_keys.generation
    b
}

impl SecuredSlot {
    /// Prepares a slot from its `keys` map entry.
    pub fn new(k: &SlotKeys) -> Result<SecuredSlot, String> {
        let format = if k.flags.contains(EntryFlags::PTP) {
            TimeFormat::Ptp
        } else {
            TimeFormat::Ntp
        };
        let dscp = k
            .flags
            .contains(EntryFlags::SET_DSCP)
            .then_some(k.dscp & 0x3f);
        let twamp = |security| -> Result<SessionFormat, String> {
            let symmetrical_size = k.flags.contains(EntryFlags::SYMMETRICAL);
            let auth_symmetrical_mbz = match (symmetrical_size, k.sender_mbz) {
                (false, _) | (true, 64) => AuthSymmetricalMbz::Octets64,
                (true, 56) => AuthSymmetricalMbz::Octets56,
                (true, n) => {
                    return Err(format!(
                        "symmetrical sender MBZ {n} (authenticated TWAMP: 56 or 64)"
                    ))
                }
            };
            Ok(SessionFormat {
                reflect_octets: k.flags.contains(EntryFlags::REFLECT_OCTETS).then_some(
                    ReflectOctets {
                        length: k.reflect_octets,
                        server_octets: 0,
                    },
                ),
                symmetrical_size,
                dscp_ecn_monitoring: k.flags.contains(EntryFlags::DSCP_ECN),
                timestamp_format: format,
                auth_symmetrical_mbz,
                ..SessionFormat::new(security)
            })
        };
        let session = |security, keys| -> Result<Engine, String> {
            let mut e = SessionEngine::new(twamp(security)?, Some(keys), dscp.unwrap_or(0), 0, 0)
                .map_err(|e| e.to_string())?;
            e.set_t3_source(t3_now);
            e.start();
            Ok(Engine::Twamp(e))
        };
        let engine = match &k.keys {
            KeyMaterial::TwampAuthenticated(keys) => session(TestSecurity::Authenticated, keys)?,
            KeyMaterial::TwampEncrypted(keys) => session(TestSecurity::Encrypted, keys)?,
            KeyMaterial::StampAuthenticated(key) => {
                let mut e = ListenerEngine::new(
                    &ListenerKind::StampAuthenticated { key: key.clone() },
                    0,
                    0,
                );
                e.set_t3_source(t3_now);
                Engine::Stamp(e)
            }
            KeyMaterial::StampOpen => {
                let mut e = ListenerEngine::new(&ListenerKind::Unauthenticated, 0, 0);
                e.set_t3_source(t3_now);
                Engine::Stamp(e)
            }
            KeyMaterial::StampSession {
                ssid,
                key,
                cos_allowed_dscp,
                micro_session_id,
            } => {
                let sender = k.sender.ok_or("a STAMP session slot without its sender")?;
                let spec = StampSessionSpec {
                    sender,
                    local: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                    ssid: *ssid,
                    key: key.as_ref().map(|k| Zeroizing::new(k.to_vec())),
                    timestamp_format: format,
                    dscp,
                    cos_policy: CosPolicy(*cos_allowed_dscp),
                    micro_session_id: *micro_session_id,
                    // The XDP program's token bucket limits the entry.
                    rate_limit_pps: 0,
                    rate_burst: 0,
                };
                let mut e = StampSessionEngine::from_spec(&spec).map_err(|e| e.to_string())?;
                e.set_t3_source(t3_now);
                Engine::StampSession(Box::new(e))
            }
        };
        Ok(SecuredSlot {
            generation: k.generation,
            dscp,
            sender: k.sender,
            config: config_of(k),
            engine,
        })
    }

    /// Records the transmit-completion stamp of reply `seq` (TAI
    /// nanoseconds from the completion metadata) for a stateful STAMP
    /// session's Follow-Up Telemetry. Other slots ignore it.
    pub fn record_tx(&mut self, seq: u32, tx_tai_ns: u64, source: StampSource) {
        if let Engine::StampSession(e) = &mut self.engine {
            e.record_tx(
                seq,
                Stamp {
                    ns: tx_tai_ns,
                    scale: TimeScale::Tai,
                    source,
                },
            );
        }
    }

    /// Counts a packet the XDP token bucket refused
    /// ([`crate::bpf::XdpMeta::refused`]): a stateful STAMP session counts
    /// it as received (Direct Measurement R_RxC, RFC 8972 §4.5) and rate
    /// limited; other slots keep no such counter. Never answered.
    pub fn count_refused(&mut self, rx: &[u8]) {
        if let Engine::StampSession(e) = &mut self.engine {
            e.count_refused(rx);
        }
    }

    /// The stateful STAMP session of this slot, if it is one.
    #[cfg(test)]
    pub fn stamp_session(&self) -> Option<&StampSessionEngine> {
        match &self.engine {
            Engine::StampSession(e) => Some(e),
            _ => None,
        }
    }

    /// Whether `k` describes this slot's session unchanged (only the
    /// generation differs): then the state is kept.
    pub fn same_config(&self, k: &SlotKeys) -> bool {
        *self.config == *config_of(k)
    }

    /// Reflects the sender payload `rx` into `out` (distinct buffers).
    /// `t2` comes from the XDP metadata ([`t2_stamp`]); `now` is the batch
    /// time.
    #[allow(clippy::too_many_arguments)]
    pub fn reflect(
        &mut self,
        rx: &[u8],
        meta: RxMeta,
        addrs: Option<PacketAddrs>,
        t2: Stamp,
        clock: &ClockState,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Reflected, DropReason> {
        LAST_T3.with(|c| c.set(0));
        let (len, seq, reply_dscp) = match &mut self.engine {
            Engine::Twamp(e) => {
                let seq = e.next_seq();
                let len = e
                    .reflect_at(rx, meta, t2, clock, now, out)
                    .map_err(engine_drop)?;
                (len, seq, None)
            }
            Engine::Stamp(e) => {
                let len = e
                    .reflect_from(rx, meta, addrs, t2, clock, now, out)
                    .map_err(engine_drop)?;
                let seq = rx
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                (len, seq, e.reply_dscp())
            }
            Engine::StampSession(e) => {
                // RFC 8972 §3: the SSID must match (the source was checked
                // by the caller against the slot's sender).
                let src = addrs.map(|a| a.src).unwrap_or(e.sender());
                if !e.matches(src, rx) {
                    e.count_unmatched();
                    return Err(DropReason::WrongSource);
                }
                let seq = e.next_seq();
                let len = e
                    .reflect_at(rx, meta, addrs, t2, clock, now, out)
                    .map_err(engine_drop)?;
                (len, seq, e.reply_dscp())
            }
        };
        Ok(Reflected {
            len,
            seq,
            t3_tai_ns: LAST_T3.with(Cell::get),
            reply_dscp,
        })
    }
}

/// T2 as the XDP metadata gives it: TAI nanoseconds from the kernel's TAI
/// clock at XDP entry or from the NIC (`rc_xdp_meta.ts_source`).
pub(crate) fn t2_stamp(tai_ns: u64, source: TsSource) -> Stamp {
    Stamp {
        ns: tai_ns,
        scale: TimeScale::Tai,
        source: match source {
            TsSource::Nic => StampSource::NicHardware,
            TsSource::KernelTai => StampSource::KernelSoftware,
        },
    }
}

fn engine_drop(e: engine::DropReason) -> DropReason {
    match e {
        engine::DropReason::TooShort => DropReason::TooShort,
        engine::DropReason::BadHmac => DropReason::BadHmac,
        engine::DropReason::WrongSource => DropReason::WrongSource,
        engine::DropReason::TooLong | engine::DropReason::BufferTooSmall => DropReason::NoRoom,
        engine::DropReason::NotStarted
        | engine::DropReason::Expired
        | engine::DropReason::RateLimited => DropReason::Refused,
        engine::DropReason::NoReplyRequested => DropReason::NoReplyRequested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{now_tai_ns, ClockSource, LeapState};
    use ricochet_protocol::crypto::{PacketRole, SessionKeys, StampHmac, TestKeys, TestProtection};
    use ricochet_protocol::twamp_test::{ReflectorLayout, ReflectorPacket};

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

    fn keys(material: KeyMaterial, generation: u32) -> SlotKeys {
        SlotKeys {
            generation,
            instance: 1,
            keys: material,
            flags: EntryFlags::empty(),
            dscp: 0,
            reflect_octets: 0,
            sender_mbz: 0,
            sender: None,
        }
    }

    fn sk() -> SessionKeys {
        SessionKeys {
            aes: [7; 16],
            hmac: [9; 32],
        }
    }

    #[test]
    fn encrypted_through_the_engine_with_t3_and_sequence() {
        let mut s = SecuredSlot::new(&keys(KeyMaterial::TwampEncrypted(sk()), 1)).unwrap();
        let tk = TestKeys::new(&sk());
        let mut tx = vec![0u8; 48 + 64];
        tx[..4].copy_from_slice(&17u32.to_be_bytes());
        tk.protect(PacketRole::Sender, TestProtection::Encrypted, &mut tx)
            .unwrap();
        let mut out = vec![0u8; 1500];
        let meta = RxMeta { ttl: 63, tos: 0 };
        let t2 = now_tai_ns();
        let now = Instant::now();
        for want_seq in 0..2 {
            let r = s
                .reflect(
                    &tx,
                    meta,
                    None,
                    t2_stamp(t2, TsSource::KernelTai),
                    &clock(),
                    now,
                    &mut out,
                )
                .unwrap();
            assert_eq!((r.len, r.seq), (112, want_seq));
            assert!(r.t3_tai_ns >= t2, "T3 recorded from the engine's clock");
            let mut reply = out[..r.len].to_vec();
            tk.unprotect(PacketRole::Reflector, TestProtection::Encrypted, &mut reply)
                .unwrap();
            let p =
                ReflectorPacket::new_checked(&reply[..], ReflectorLayout::AUTHENTICATED).unwrap();
            assert_eq!(
                (p.sequence_number(), p.sender_sequence_number()),
                (want_seq, 17)
            );
        }
        let mut bad = tx.clone();
        bad[40] ^= 1;
        assert_eq!(
            s.reflect(
                &bad,
                meta,
                None,
                t2_stamp(t2, TsSource::KernelTai),
                &clock(),
                now,
                &mut out
            ),
            Err(DropReason::BadHmac)
        );
        assert_eq!(
            s.reflect(
                &tx[..47],
                meta,
                None,
                t2_stamp(t2, TsSource::KernelTai),
                &clock(),
                now,
                &mut out
            ),
            Err(DropReason::TooShort)
        );
        // a new generation of the same configuration keeps the state
        assert!(s.same_config(&keys(KeyMaterial::TwampEncrypted(sk()), 2)));
        assert!(!s.same_config(&keys(KeyMaterial::TwampAuthenticated(sk()), 2)));
    }

    #[test]
    fn stamp_listener_copies_sequence() {
        let key = [3u8; 32];
        let material = KeyMaterial::StampAuthenticated(Zeroizing::new(key));
        let mut s = SecuredSlot::new(&keys(material, 1)).unwrap();
        let h = StampHmac::new(&key);
        let mut tx = vec![0u8; 112];
        tx[..4].copy_from_slice(&99u32.to_be_bytes());
        h.seal_packet(&mut tx).unwrap();
        let mut out = vec![0u8; 1500];
        let meta = RxMeta { ttl: 255, tos: 0 };
        let r = s
            .reflect(
                &tx,
                meta,
                None,
                t2_stamp(1, TsSource::Nic),
                &clock(),
                Instant::now(),
                &mut out,
            )
            .unwrap();
        assert_eq!((r.len, r.seq), (112, 99));
        h.verify_packet(&out[..112]).unwrap();
        assert_eq!(&out[..4], &99u32.to_be_bytes());
    }

    #[test]
    fn bad_symmetrical_mbz_is_refused() {
        let mut k = keys(KeyMaterial::TwampAuthenticated(sk()), 1);
        k.flags = EntryFlags::SYMMETRICAL;
        k.sender_mbz = 27;
        assert!(SecuredSlot::new(&k).is_err());
    }

    /// A stateful STAMP session slot: own counter from 0, the SSID checked,
    /// PTP from the flags, the keys map round trip, and Follow-Up
    /// Telemetry from the recorded completion stamp of the previous reply.
    #[test]
    fn stamp_session_slot_is_stateful_and_reports_completions() {
        let sender: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let mut k = keys(
            KeyMaterial::StampSession {
                ssid: 0x0707,
                key: None,
                cos_allowed_dscp: u64::MAX,
                micro_session_id: None,
            },
            1,
        );
        k.sender = Some(sender);
        k.flags = EntryFlags::PTP;
        // Through the map encoding, as the pollers read it.
        let k = SlotKeys::from_bytes(&k.to_bytes()).unwrap().unwrap();
        assert!(matches!(
            k.keys,
            KeyMaterial::StampSession {
                ssid: 0x0707,
                key: None,
                ..
            }
        ));
        let mut s = SecuredSlot::new(&k).unwrap();
        let addrs = Some(PacketAddrs {
            src: sender,
            dst: Some("198.18.0.2:862".parse().unwrap()),
            src_mac: None,
        });
        let mut rx = vec![0u8; 44 + 20];
        rx[14..16].copy_from_slice(&[7, 7]);
        rx[44..48].copy_from_slice(&[0x80, 7, 0, 16]); // Follow-Up Telemetry
        let mut out = vec![0u8; 1500];
        let meta = RxMeta { ttl: 64, tos: 0 };
        let t2 = t2_stamp(1_795_756_276_000_000_000, TsSource::KernelTai);
        let reflect = |s: &mut SecuredSlot, rx: &[u8], out: &mut [u8]| {
            s.reflect(rx, meta, addrs, t2, &clock(), Instant::now(), out)
        };
        for want in 0..2u32 {
            rx[0..4].copy_from_slice(&(500 + want).to_be_bytes());
            let r = reflect(&mut s, &rx, &mut out).unwrap();
            assert_eq!((r.len, r.seq), (64, want));
            assert_eq!(&out[0..4], &want.to_be_bytes());
            assert_eq!(out[12] & 0x40, 0x40, "PTP: Z = 1");
        }
        // The completion of reply 1, as the poller records it (copy mode).
        let tx_ns = 1_795_756_276_000_500_000;
        s.record_tx(1, tx_ns, StampSource::KernelSoftware);
        let r = reflect(&mut s, &rx, &mut out).unwrap();
        assert_eq!(r.seq, 2);
        let fu = &out[48..64];
        assert_eq!(&fu[0..4], &1u32.to_be_bytes());
        // PTP: TAI seconds and nanoseconds of the completion stamp.
        assert_eq!(&fu[4..8], &((tx_ns / 1_000_000_000) as u32).to_be_bytes());
        assert_eq!(&fu[8..12], &((tx_ns % 1_000_000_000) as u32).to_be_bytes());
        assert_eq!(fu[12], 2, "software local");
        let c = s.stamp_session().unwrap().stamp_counters();
        assert_eq!((c.follow_up_stamped, c.follow_up_unstamped), (1, 1));
        // Another SSID: not this session.
        rx[14..16].copy_from_slice(&[7, 8]);
        assert_eq!(reflect(&mut s, &rx, &mut out), Err(DropReason::WrongSource));
        // Authenticated variant round-trips its key.
        let mut ka = keys(
            KeyMaterial::StampSession {
                ssid: 1,
                key: Some(Zeroizing::new([4; 32])),
                cos_allowed_dscp: 1 << 46,
                micro_session_id: Some(0xbeef),
            },
            1,
        );
        ka.sender = Some(sender);
        let back = SlotKeys::from_bytes(&ka.to_bytes()).unwrap().unwrap();
        assert!(
            matches!(back.keys, KeyMaterial::StampSession { ssid: 1, key: Some(k), cos_allowed_dscp, micro_session_id: Some(0xbeef) } if *k == [4; 32] && cos_allowed_dscp == 1 << 46)
        );
    }

    /// A STAMP session slot applies the session's Class of Service policy
    /// and Micro-session ID as the socket path does (RFC 8972 §4.4,
    /// RFC 9534 §3), carried through the keys map encoding: a permitted
    /// DSCP1 is used for the reply (RP = 0), a refused one keeps the
    /// received DSCP (RP = 1); the Micro-session ID TLV gets the reflector
    /// ID with U = 0, and U = 1 on a slot without one.
    #[test]
    fn stamp_session_slot_applies_cos_policy_and_micro_session_id() {
        let sender: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let slot = |cos: u64, micro: Option<u16>| {
            let mut k = keys(
                KeyMaterial::StampSession {
                    ssid: 0x0707,
                    key: None,
                    cos_allowed_dscp: cos,
                    micro_session_id: micro,
                },
                1,
            );
            k.sender = Some(sender);
            let k = SlotKeys::from_bytes(&k.to_bytes()).unwrap().unwrap();
            SecuredSlot::new(&k).unwrap()
        };
        let addrs = Some(PacketAddrs {
            src: sender,
            dst: Some("198.18.0.2:862".parse().unwrap()),
            src_mac: None,
        });
        // Base, Class of Service (DSCP1 at value bits 0-5), Micro-session
        // ID (sender ID 0x0102, reflector ID 0).
        let request = |dscp1: u8| {
            let mut rx = vec![0u8; 44 + 8 + 8];
            rx[14..16].copy_from_slice(&[7, 7]);
            rx[44..48].copy_from_slice(&[0x80, 4, 0, 4]);
            rx[48] = dscp1 << 2;
            rx[52..56].copy_from_slice(&[0x80, 11, 0, 4]);
            rx[56..58].copy_from_slice(&[1, 2]);
            rx
        };
        let meta = RxMeta {
            ttl: 64,
            tos: 18 << 2, // received DSCP 18 (AF21)
        };
        let t2 = t2_stamp(1_795_756_276_000_000_000, TsSource::KernelTai);
        let mut out = vec![0u8; 1500];
        // Only DSCP 10 permitted; member link 9.
        let mut s = slot(1 << 10, Some(9));
        let r = s
            .reflect(
                &request(46),
                meta,
                addrs,
                t2,
                &clock(),
                Instant::now(),
                &mut out,
            )
            .unwrap();
        assert_eq!(r.reply_dscp, Some(18), "EF refused: received DSCP kept");
        let cos = u32::from_be_bytes(out[48..52].try_into().unwrap());
        assert_eq!(cos >> 26, 46, "DSCP1 as asked");
        assert_eq!((cos >> 20) & 0x3f, 18, "DSCP2 = received");
        assert_eq!((cos >> 16) & 0x3, 1, "RP = 1: refused by policy");
        assert_eq!(out[44] & 0x80, 0, "CoS understood");
        assert_eq!(out[52] & 0x80, 0, "Micro-session ID understood");
        assert_eq!(&out[56..60], &[1, 2, 0, 9], "sender ID kept, ours filled");
        let r = s
            .reflect(
                &request(10),
                meta,
                addrs,
                t2,
                &clock(),
                Instant::now(),
                &mut out,
            )
            .unwrap();
        assert_eq!(r.reply_dscp, Some(10), "permitted DSCP used");
        let cos = u32::from_be_bytes(out[48..52].try_into().unwrap());
        assert_eq!((cos >> 16) & 0x3, 0, "RP = 0");
        // Everything permitted, no member-link ID: EF used, U = 1.
        let mut s = slot(u64::MAX, None);
        let r = s
            .reflect(
                &request(46),
                meta,
                addrs,
                t2,
                &clock(),
                Instant::now(),
                &mut out,
            )
            .unwrap();
        assert_eq!(r.reply_dscp, Some(46));
        assert_eq!(out[52] & 0x80, 0x80, "no member-link ID: U = 1");
        assert_eq!(&out[56..60], &[1, 2, 0, 0]);
    }
}
