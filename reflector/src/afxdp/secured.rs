//! The per-slot secured reflection a poller runs on a frame's UDP payload:
//! verify (and decrypt) the sender packet, build the reply, take T3,
//! protect the reply (twamp-test.md §1, §5; stamp.md §3).
//!
//! Built once per (slot, generation) from the `keys` map
//! ([`SecuredSlot::new`]: AES key schedule and keyed HMAC states
//! precomputed), then used for every packet without allocation.
//!
//! Order of operations per mode (protocol::twamp_test module docs):
//! * TWAMP authenticated: unprotect (sender role: ECB of block 0, HMAC over
//!   0–15) → `reflect_twamp` → protect (HMAC over 0–15, ECB) → T3 (in the
//!   clear, outside the HMAC: taken last);
//! * TWAMP encrypted: unprotect (CBC over 0–31, HMAC) → `reflect_twamp` →
//!   T3 → protect (HMAC over 0–95, CBC over 0–95);
//! * STAMP authenticated: verify HMAC-SHA-256 over 0–95 → `reflect_stamp`
//!   → TLV framing pass → T3 → HMAC over 0–95.

use std::net::SocketAddr;

use ricochet_protocol::crypto::{
    CryptoError, PacketRole, SessionKeys, StampHmac, TestKeys, TestProtection,
};
use ricochet_protocol::stamp::packet::StampLayout;
use ricochet_protocol::stamp::reflect::{self as stamp_reflect, ReflectorMode, StampFormat};
use ricochet_protocol::stamp::tlv::{process_tlvs_in_place, FramingOnly};
use ricochet_protocol::time::{TimeFormat, Timestamp};
use ricochet_protocol::twamp_test::{
    reflect_twamp, reflect_twamp_light, set_t3, AuthSymmetricalMbz, ReflectError, ReflectOctets,
    ReflectParams, RxMeta, SessionFormat, TestSecurity,
};

use super::stats::DropReason;
use crate::bpf::{EntryFlags, KeyMaterial, SlotKeys};
use crate::clock::{now_tai_ns, ClockState};

enum Kind {
    Twamp {
        keys: TestKeys,
        protection: TestProtection,
        format: SessionFormat,
    },
    Stamp {
        hmac: StampHmac,
        format: TimeFormat,
    },
}

/// One slot's prepared state.
pub(crate) struct SecuredSlot {
    /// The generation it was built for.
    pub generation: u32,
    /// The session instance (sequence numbers restart when it changes).
    pub instance: u32,
    /// DSCP of the replies; `None` copies the received DSCP.
    pub dscp: Option<u8>,
    /// The only source accepted; `None` for listeners.
    pub sender: Option<SocketAddr>,
    kind: Kind,
}

/// What one reflection produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reflected {
    /// UDP payload length of the reply.
    pub len: usize,
    /// The reflector sequence number written (stateful) or copied.
    pub seq: u32,
    /// T3, TAI nanoseconds.
    pub t3_tai_ns: u64,
}

impl SecuredSlot {
    /// Prepares a slot from its `keys` map entry.
    pub fn new(k: &SlotKeys) -> Result<SecuredSlot, String> {
        let format = if k.flags.contains(EntryFlags::PTP) {
            TimeFormat::Ptp
        } else {
            TimeFormat::Ntp
        };
        let twamp = |keys: &SessionKeys, security, protection| -> Result<Kind, String> {
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
            Ok(Kind::Twamp {
                keys: TestKeys::new(keys),
                protection,
                format: SessionFormat {
                    reflect_octets: k
                        .flags
                        .contains(EntryFlags::REFLECT_OCTETS)
                        .then_some(ReflectOctets {
                            length: k.reflect_octets,
                            server_octets: 0,
                        }),
                    symmetrical_size,
                    dscp_ecn_monitoring: k.flags.contains(EntryFlags::DSCP_ECN),
                    timestamp_format: format,
                    auth_symmetrical_mbz,
                    ..SessionFormat::new(security)
                },
            })
        };
        let kind = match &k.keys {
            KeyMaterial::TwampAuthenticated(keys) => twamp(
                keys,
                TestSecurity::Authenticated,
                TestProtection::Authenticated,
            )?,
            KeyMaterial::TwampEncrypted(keys) => {
                twamp(keys, TestSecurity::Encrypted, TestProtection::Encrypted)?
            }
            KeyMaterial::StampAuthenticated(key) => Kind::Stamp {
                hmac: StampHmac::new(&key[..]),
                format,
            },
        };
        Ok(SecuredSlot {
            generation: k.generation,
            instance: k.instance,
            dscp: k
                .flags
                .contains(EntryFlags::SET_DSCP)
                .then_some(k.dscp & 0x3f),
            sender: k.sender,
            kind,
        })
    }

    /// Reflects the sender payload `rx` (decrypted in place) into `out`.
    ///
    /// `stateful`: a TWAMP-Control / provisioned session (own sequence
    /// numbers from `next_seq`, called only once the packet is verified);
    /// otherwise a stateless listener (sequence copied, reply never longer
    /// than the request). `t2_tai_ns` is the XDP receive time.
    pub fn reflect(
        &self,
        rx: &mut [u8],
        meta: RxMeta,
        t2_tai_ns: u64,
        clock: &ClockState,
        stateful: bool,
        next_seq: impl FnOnce() -> u32,
        out: &mut [u8],
    ) -> Result<Reflected, DropReason> {
        let offset = clock.tai_offset();
        let max_len = if stateful { out.len() } else { rx.len() };
        match &self.kind {
            Kind::Twamp {
                keys,
                protection,
                format,
            } => {
                keys.unprotect(PacketRole::Sender, *protection, rx)
                    .map_err(crypto_drop)?;
                let seq = if stateful { next_seq() } else { rx_seq(rx) };
                let params = ReflectParams {
                    seq,
                    t2: format.encode_timestamp(t2_tai_ns, offset),
                    error_estimate: clock.error_estimate(format.timestamp_format),
                    max_len,
                };
                let len = if stateful {
                    reflect_twamp(format, rx, &meta, &params, out)
                } else {
                    reflect_twamp_light(format, rx, &meta, &params, out)
                }
                .map_err(reflect_drop)?;
                let reply = &mut out[..len];
                let t3 = match protection {
                    TestProtection::Authenticated => {
                        keys.protect(PacketRole::Reflector, *protection, reply)
                            .map_err(crypto_drop)?;
                        let t3 = now_tai_ns();
                        set_t3(reply, format, format.encode_timestamp(t3, offset))
                            .map_err(reflect_drop)?;
                        t3
                    }
                    TestProtection::Encrypted => {
                        let t3 = now_tai_ns();
                        set_t3(reply, format, format.encode_timestamp(t3, offset))
                            .map_err(reflect_drop)?;
                        keys.protect(PacketRole::Reflector, *protection, reply)
                            .map_err(crypto_drop)?;
                        t3
                    }
                };
                Ok(Reflected {
                    len,
                    seq,
                    t3_tai_ns: t3,
                })
            }
            Kind::Stamp { hmac, format } => {
                hmac.verify_packet(rx).map_err(crypto_drop)?;
                let fmt = StampFormat {
                    layout: StampLayout::Authenticated,
                    mode: if stateful {
                        ReflectorMode::Stateful
                    } else {
                        ReflectorMode::Stateless
                    },
                    timestamp_format: *format,
                };
                let seq = if stateful { next_seq() } else { rx_seq(rx) };
                let enc = |ns| Timestamp::from_tai_ns(ns, offset, *format).to_bytes();
                let params = ReflectParams {
                    seq,
                    t2: enc(t2_tai_ns),
                    error_estimate: clock.error_estimate(*format),
                    max_len,
                };
                let len = stamp_reflect::reflect_stamp(&fmt, rx, &meta, &params, out)
                    .map_err(reflect_drop)?;
                let reply = &mut out[..len];
                // RFC 8972 §4: TLVs are flagged (U for types not handled
                // here) but never grow the reply.
                process_tlvs_in_place(&mut reply[fmt.base_len()..], &mut FramingOnly);
                let t3 = now_tai_ns();
                stamp_reflect::set_t3(reply, &fmt, enc(t3)).map_err(reflect_drop)?;
                hmac.seal_packet(reply).map_err(crypto_drop)?;
                Ok(Reflected {
                    len,
                    seq,
                    t3_tai_ns: t3,
                })
            }
        }
    }
}

/// The sender's sequence number (octets 0–3, plaintext after unprotect).
fn rx_seq(rx: &[u8]) -> u32 {
    match rx.get(..4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn crypto_drop(e: CryptoError) -> DropReason {
    match e {
        CryptoError::Wire(_) => DropReason::TooShort,
        _ => DropReason::BadHmac,
    }
}

fn reflect_drop(e: ReflectError) -> DropReason {
    match e {
        ReflectError::TooShort { .. } => DropReason::TooShort,
        ReflectError::TooLong { .. } | ReflectError::BufferTooSmall { .. } => DropReason::NoRoom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ClockSource, LeapState};
    use ricochet_protocol::twamp_test::{ReflectorPacket, ReflectorLayout};

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

    fn slot(keys: KeyMaterial) -> SecuredSlot {
        SecuredSlot::new(&SlotKeys {
            generation: 1,
            instance: 1,
            keys,
            flags: EntryFlags::empty(),
            dscp: 0,
            reflect_octets: 0,
            sender_mbz: 0,
            sender: None,
        })
        .unwrap()
    }

    fn sk() -> SessionKeys {
        SessionKeys {
            aes: [7; 16],
            hmac: [9; 32],
        }
    }

    #[test]
    fn encrypted_round_trip_and_tamper() {
        let s = slot(KeyMaterial::TwampEncrypted(sk()));
        let keys = TestKeys::new(&sk());
        let mut tx = vec![0u8; 48 + 64];
        tx[..4].copy_from_slice(&17u32.to_be_bytes());
        tx[16..24].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        tx[24..26].copy_from_slice(&0x8001u16.to_be_bytes());
        keys.protect(PacketRole::Sender, TestProtection::Encrypted, &mut tx)
            .unwrap();
        let mut out = vec![0u8; 1500];
        let meta = RxMeta { ttl: 63, tos: 0 };
        let t2 = now_tai_ns();
        let r = s
            .reflect(&mut tx.clone(), meta, t2, &clock(), true, || 5, &mut out)
            .unwrap();
        assert_eq!((r.len, r.seq), (112, 5), "48 + 64 padding → 112, truncated");
        assert!(r.t3_tai_ns >= t2);
        let mut reply = out[..r.len].to_vec();
        keys.unprotect(PacketRole::Reflector, TestProtection::Encrypted, &mut reply)
            .unwrap();
        let p = ReflectorPacket::new_checked(&reply[..], ReflectorLayout::AUTHENTICATED).unwrap();
        assert_eq!(p.sequence_number(), 5);
        assert_eq!(p.sender_sequence_number(), 17);
        assert_eq!(p.sender_timestamp(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.sender_ttl(), 63);

        let mut bad = tx.clone();
        bad[40] ^= 1; // the HMAC
        let called = std::cell::Cell::new(false);
        assert_eq!(
            s.reflect(&mut bad, meta, t2, &clock(), true, || {
                called.set(true);
                0
            }, &mut out),
            Err(DropReason::BadHmac)
        );
        assert!(!called.get(), "no sequence number for a dropped packet");
        assert_eq!(
            s.reflect(&mut tx[..47].to_vec(), meta, t2, &clock(), true, || 0, &mut out),
            Err(DropReason::TooShort)
        );
    }

    #[test]
    fn stamp_stateless_copies_sequence_and_never_grows() {
        let key = [3u8; 32];
        let s = slot(KeyMaterial::StampAuthenticated(zeroize::Zeroizing::new(key)));
        let h = StampHmac::new(&key);
        let mut tx = vec![0u8; 112];
        tx[..4].copy_from_slice(&99u32.to_be_bytes());
        h.seal_packet(&mut tx).unwrap();
        let mut out = vec![0u8; 1500];
        let r = s
            .reflect(&mut tx, RxMeta { ttl: 255, tos: 0 }, 1, &clock(), false, || unreachable!(), &mut out)
            .unwrap();
        assert_eq!((r.len, r.seq), (112, 99));
        h.verify_packet(&out[..112]).unwrap();
        assert_eq!(&out[..4], &99u32.to_be_bytes());
    }

    #[test]
    fn bad_symmetrical_mbz_is_refused() {
        let r = SecuredSlot::new(&SlotKeys {
            generation: 1,
            instance: 1,
            keys: KeyMaterial::TwampAuthenticated(sk()),
            flags: EntryFlags::SYMMETRICAL,
            dscp: 0,
            reflect_octets: 0,
            sender_mbz: 27,
            sender: None,
        });
        assert!(r.is_err());
    }
}
