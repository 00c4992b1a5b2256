//! The sans-IO STAMP reflection builder (RFC 8762 §4.3, RFC 8972 §3).
//!
//! Pure and allocation-free, like [`crate::twamp_test::reflect_twamp`], and
//! sharing its [`RxMeta`], [`ReflectParams`] and [`ReflectError`]. Order of
//! operations for one reply:
//!
//! 1. (authenticated) verify the sender's HMAC-SHA-256 over octets 0–95;
//!    drop the packet on failure (RFC 8762 §4.4);
//! 2. [`reflect_stamp`] → base packet + the sender's TLV area copied;
//! 3. [`super::tlv::process_tlvs_in_place`] on `out[base_len..n]`
//!    (RFC 8972 U/M flags, TLV semantics through the handler);
//! 4. [`set_t3`] as late as possible;
//! 5. (authenticated) HMAC-SHA-256-128 over octets 0–95 written at 96, and a
//!    fresh HMAC TLV if the reply carries one — both cover fields written
//!    above, so they come last;
//! 6. send.

use super::packet::{ReflectorPacket, SenderPacket, StampLayout};
use crate::time::TimeFormat;
use crate::twamp_test::packet::field as twamp;
use crate::twamp_test::reflect::{check_lengths, copy_prefix, error_estimate_bits};

pub use crate::twamp_test::reflect::{ReflectError, ReflectParams, RxMeta};

/// How the reflector numbers its replies (RFC 8762 §4.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReflectorMode {
    /// Sequence Number copied from the received packet (round-trip loss only).
    #[default]
    Stateless,
    /// Own per-session counter from 0 (`ReflectParams::seq`), which lets the
    /// sender tell forward from backward loss.
    Stateful,
}

/// The configuration of one STAMP reflector session (provisioned out of band;
/// RFC 8762 has no control protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StampFormat {
    /// Unauthenticated (44) or authenticated (112) base packets.
    pub layout: StampLayout,
    /// Stateless or stateful numbering.
    pub mode: ReflectorMode,
    /// Format of the reflector's T2 and T3 (NTP is the default and MUST be
    /// supported; PTPv2 MAY be, RFC 8762 §4.2.1).
    pub timestamp_format: TimeFormat,
}

impl StampFormat {
    /// Base packet length: 44 or 112. The TLV area of a reply is
    /// `out[base_len()..n]`.
    pub const fn base_len(&self) -> usize {
        self.layout.base_len()
    }

    /// The shortest packet the reflector answers: 14 octets unauthenticated
    /// (a TWAMP-Light-sized sender packet, answered with the 44-octet base,
    /// stamp.md §3 rule 2), the whole 112-octet base authenticated (the
    /// HMAC must be verifiable).
    pub const fn min_rx_len(&self) -> usize {
        match self.layout {
            StampLayout::Unauthenticated => twamp::sender::HEADER_LEN,
            StampLayout::Authenticated => self.layout.base_len(),
        }
    }

    /// Reply length for a `rx_len`-octet packet: `max(rx_len, base_len)`
    /// (symmetric size, RFC 8762 §4.3; stamp.md §3 rule 2).
    pub const fn reply_len(&self, rx_len: usize) -> usize {
        if rx_len > self.base_len() {
            rx_len
        } else {
            self.base_len()
        }
    }
}

/// Builds the reflection of a STAMP Session-Sender packet.
///
/// `rx` is the received payload (HMAC already verified when authenticated).
/// Writes the complete reply into `out[..n]` and returns `n`:
///
/// * Sequence Number = the received one (stateless) or `params.seq`
///   (stateful); T3 zero (write it with [`set_t3`]); Error Estimate =
///   `params.error_estimate` with the Z bit of `fmt.timestamp_format`;
///   T2 = `params.t2`;
/// * SSID copied (RFC 8972 §3; 0 from a sender packet too short to carry one);
/// * Session-Sender Sequence Number, Timestamp and Error Estimate copied
///   verbatim; Session-Sender TTL = `meta.ttl`;
/// * every MBZ octet and the HMAC field zero;
/// * length `max(received, 44 | 112)`: octets beyond the base packet (the
///   TLVs) copied unchanged to the same offsets; a shorter unauthenticated
///   packet (e.g. 14-octet TWAMP Light) gets the 44-octet base if
///   `params.max_len` allows (stamp.md §3 rule 2).
///
/// # Errors
/// [`ReflectError::TooShort`] below [`StampFormat::min_rx_len`],
/// [`ReflectError::TooLong`] above `params.max_len`,
/// [`ReflectError::BufferTooSmall`] if `out` cannot hold the reply.
pub fn reflect_stamp(
    fmt: &StampFormat,
    rx: &[u8],
    meta: &RxMeta,
    params: &ReflectParams,
    out: &mut [u8],
) -> Result<usize, ReflectError> {
    let len = check_lengths(
        fmt.min_rx_len(),
        rx.len(),
        fmt.reply_len(rx.len()),
        params.max_len,
        out.len(),
    )?;
    // `rx` may be shorter than the base packet (unauthenticated, ≥ 14
    // octets): the sequence number, timestamp and error estimate lie in the
    // first 14 (RFC 8762 §4.2.1), and the SSID is read only when present.
    let sender = SenderPacket::new_unchecked(rx, fmt.layout);
    let sender_seq = sender.sequence_number();
    let ssid = if rx.len() >= fmt.layout.ssid_offset() + 2 {
        sender.ssid()
    } else {
        0
    };

    let (head, tlvs) = out[..len].split_at_mut(fmt.base_len());
    let mut reply = ReflectorPacket::new_unchecked(head, fmt.layout);
    reply.set_sequence_number(match fmt.mode {
        ReflectorMode::Stateless => sender_seq,
        ReflectorMode::Stateful => params.seq,
    });
    reply.set_timestamp([0; 8]);
    reply.set_error_estimate_raw(error_estimate_bits(
        params.error_estimate,
        fmt.timestamp_format,
    ));
    reply.set_ssid(ssid);
    reply.set_receive_timestamp(params.t2);
    reply.set_sender_sequence_number(sender_seq);
    reply.set_sender_timestamp(sender.timestamp());
    reply.set_sender_error_estimate_raw(sender.error_estimate_raw());
    reply.set_sender_ttl(meta.ttl);
    reply.clear_mbz();
    if let Some(h) = reply.hmac_mut() {
        h.fill(0);
    }
    copy_prefix(tlvs, rx.get(fmt.base_len()..).unwrap_or(&[]));
    Ok(len)
}

/// Writes T3 into a reply built by [`reflect_stamp`] (octets 4–11, or 16–23
/// authenticated). In authenticated mode T3 is covered by the HMAC, so write
/// it before computing the HMAC.
///
/// # Errors
/// [`ReflectError::BufferTooSmall`] if `out` is shorter than the base packet.
pub fn set_t3(out: &mut [u8], fmt: &StampFormat, t3: [u8; 8]) -> Result<(), ReflectError> {
    let need = fmt.base_len();
    if out.len() < need {
        return Err(ReflectError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    ReflectorPacket::new_unchecked(out, fmt.layout).set_timestamp(t3);
    Ok(())
}
