//! The sans-IO TWAMP-Test reflection builder (RFC 5357 §4.2, RFC 6038,
//! RFC 7750, RFC 8186; twamp-test.md §4–§8).
//!
//! Pure and allocation-free: every data-plane path (sockets, AF_XDP) calls
//! [`reflect_twamp`] (or [`reflect_twamp_light`]) with the decrypted sender
//! payload and a buffer for the reply, then [`set_t3`] as late as possible,
//! then applies test-packet protection (`crate::crypto`) if the session has
//! any, then sends.
//!
//! Order of operations per security mode (twamp-test.md §1, §5 rule 8):
//!
//! * unauthenticated / mixed: `reflect_twamp` → `set_t3` → send.
//! * authenticated: `reflect_twamp` → HMAC-SHA1 over octets 0–15 written at
//!   96 → AES-ECB of octets 0–15 → `set_t3` (T3 is at 16–23, in the clear
//!   and outside the HMAC, so it can be written last) → send.
//! * encrypted: `reflect_twamp` → **`set_t3`** → HMAC-SHA1 over octets 0–95
//!   written at 96 → AES-CBC (IV 0) of octets 0–95 → send. T3 is encrypted
//!   and authenticated, so it must be written before protection.
//!
//! The HMAC field (96–111) is left zero by the builder; padding is never
//! encrypted nor authenticated.

use thiserror::Error;

use super::format::SessionFormat;
use super::packet::{ReflectorPacket, SenderPacket};
use super::ERROR_ESTIMATE_Z;
use crate::time::{ErrorEstimate, TimeFormat};

/// What the data plane read from the IP header of the received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RxMeta {
    /// IPv4 TTL or IPv6 Hop Limit (RFC 5357 §4.2.1: copied into Sender TTL;
    /// pass 255 only if it cannot be read).
    pub ttl: u8,
    /// IPv4 TOS or IPv6 Traffic Class: DSCP (upper 6 bits) ‖ ECN (lower 2).
    /// Copied into S-DSCP-ECN when RFC 7750 monitoring is on.
    pub tos: u8,
}

/// Per-packet inputs of the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReflectParams {
    /// The reflector's own Sequence Number for this reply (a per-session
    /// counter from 0, RFC 5357 §4.2.1). Not used by the stateless variants,
    /// which copy the sender's.
    pub seq: u32,
    /// Receive Timestamp T2, already encoded in the session's timestamp format.
    pub t2: [u8; 8],
    /// The reflector's Error Estimate for T2 and T3. Its Z bit is always
    /// written from [`SessionFormat::timestamp_format`], so the estimate can
    /// never contradict the format T2/T3 are in.
    pub error_estimate: ErrorEstimate,
    /// Cap on the reply length: the received length for stateless listeners
    /// (no amplification), larger for sessions admitted by TWAMP-Control
    /// where RFC 5357 requires growing 14 → 41 and 48 → 112 octets.
    pub max_len: usize,
}

/// Why no reflection was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum ReflectError {
    /// The received packet is shorter than the sender header of the mode.
    #[error("test packet too short for the session's mode: need {need} octets, have {have}")]
    TooShort {
        /// Minimum sender length for the mode.
        need: usize,
        /// Received length.
        have: usize,
    },
    /// The reply the rules require is longer than the caller's cap.
    #[error("reflection would be {len} octets, above the cap of {max_len}")]
    TooLong {
        /// Reply length the rules require.
        len: usize,
        /// The cap ([`ReflectParams::max_len`]).
        max_len: usize,
    },
    /// The output buffer cannot hold the reply.
    #[error("output buffer too small: need {need} octets, have {have}")]
    BufferTooSmall {
        /// Octets needed.
        need: usize,
        /// Octets available.
        have: usize,
    },
}

/// The Error Estimate bits with the Z bit set from `format`.
#[inline]
pub(crate) fn error_estimate_bits(e: ErrorEstimate, format: TimeFormat) -> u16 {
    let bits = e.to_bits() & !ERROR_ESTIMATE_Z;
    match format {
        TimeFormat::Ntp => bits,
        TimeFormat::Ptp => bits | ERROR_ESTIMATE_Z,
    }
}

/// Checks the received length, the cap and the output buffer; returns the
/// reply length.
#[inline]
pub(crate) fn check_lengths(
    min_rx: usize,
    rx_len: usize,
    reply_len: usize,
    max_len: usize,
    out_len: usize,
) -> Result<usize, ReflectError> {
    if rx_len < min_rx {
        return Err(ReflectError::TooShort {
            need: min_rx,
            have: rx_len,
        });
    }
    if reply_len > max_len {
        return Err(ReflectError::TooLong {
            len: reply_len,
            max_len,
        });
    }
    if out_len < reply_len {
        return Err(ReflectError::BufferTooSmall {
            need: reply_len,
            have: out_len,
        });
    }
    Ok(reply_len)
}

/// Copies `src` into `dst` from the start, truncating `src` or zero-filling
/// the rest of `dst`.
#[inline]
pub(crate) fn copy_prefix(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    dst[..n].copy_from_slice(&src[..n]);
    dst[n..].fill(0);
}

/// Builds the reflection of a TWAMP-Test packet of a session admitted by
/// TWAMP-Control (stateful reflector, RFC 5357 §4.2.1).
///
/// `rx` is the **plaintext** sender packet (decrypted in modes 2/4), with
/// its padding. Writes the complete reply into `out[..n]` and returns `n`:
///
/// * Sequence Number = `params.seq`; T3 zero (write it with [`set_t3`]);
///   Error Estimate = `params.error_estimate` with the session's Z bit;
///   T2 = `params.t2`;
/// * Sender Sequence Number, Timestamp and Error Estimate copied verbatim;
///   Sender TTL = `meta.ttl`; S-DSCP-ECN = `meta.tos` with RFC 7750;
/// * every MBZ octet and the HMAC field zero;
/// * length [`SessionFormat::reply_len`]: `max(received, reflector header
///   [+ octets to reflect])` — the sender padding truncated by 27/64 octets
///   when it is long enough, the 41/44/112-octet minimum otherwise
///   (RFC 5357 §4.2.1, twamp-test.md §4), equal to the received length for
///   Symmetrical Size senders (RFC 6038 §4.2);
/// * padding = the sender's padding from [`SessionFormat::sender_padding_offset`]
///   on, lowest-numbered octets kept (RFC 5357 §4.2.1 allows reusing it; it
///   carries the RFC 6038 octets to reflect to the start of the reflector
///   padding), zero-filled where the sender had fewer octets. perfSONAR's
///   reflector does the same.
///
/// # Errors
/// [`ReflectError::TooShort`] below the 14/48-octet sender header,
/// [`ReflectError::TooLong`] above `params.max_len`,
/// [`ReflectError::BufferTooSmall`] if `out` cannot hold the reply.
pub fn reflect_twamp(
    fmt: &SessionFormat,
    rx: &[u8],
    meta: &RxMeta,
    params: &ReflectParams,
    out: &mut [u8],
) -> Result<usize, ReflectError> {
    build(fmt, rx, meta, params, Some(params.seq), out)
}

/// Builds the reflection of a TWAMP Light stateless reflector (RFC 5357
/// Appendix I): like [`reflect_twamp`], but the reflector's Sequence Number
/// is copied from the received packet; `params.seq` is not used.
///
/// # Errors
/// As [`reflect_twamp`].
pub fn reflect_twamp_light(
    fmt: &SessionFormat,
    rx: &[u8],
    meta: &RxMeta,
    params: &ReflectParams,
    out: &mut [u8],
) -> Result<usize, ReflectError> {
    build(fmt, rx, meta, params, None, out)
}

fn build(
    fmt: &SessionFormat,
    rx: &[u8],
    meta: &RxMeta,
    params: &ReflectParams,
    seq: Option<u32>,
    out: &mut [u8],
) -> Result<usize, ReflectError> {
    let len = check_lengths(
        fmt.sender_header_len(),
        rx.len(),
        fmt.reply_len(rx.len()),
        params.max_len,
        out.len(),
    )?;
    let sender = SenderPacket::new_unchecked(rx, fmt.layout());
    let (head, padding) = out[..len].split_at_mut(fmt.reflector_header_len());
    let mut reply = ReflectorPacket::new_unchecked(head, fmt.reflector_layout());
    reply.set_sequence_number(seq.unwrap_or_else(|| sender.sequence_number()));
    reply.set_timestamp([0; 8]);
    reply.set_error_estimate_raw(error_estimate_bits(
        params.error_estimate,
        fmt.timestamp_format,
    ));
    reply.set_receive_timestamp(params.t2);
    reply.set_sender_sequence_number(sender.sequence_number());
    reply.set_sender_timestamp(sender.timestamp());
    reply.set_sender_error_estimate_raw(sender.error_estimate_raw());
    reply.set_sender_ttl(meta.ttl);
    reply.set_s_dscp_ecn(meta.tos);
    reply.clear_mbz();
    if let Some(h) = reply.hmac_mut() {
        h.fill(0);
    }
    copy_prefix(
        padding,
        rx.get(fmt.sender_padding_offset()..).unwrap_or(&[]),
    );
    Ok(len)
}

/// Writes T3 into a reply built by [`reflect_twamp`] / [`reflect_twamp_light`]
/// (octets 4–11, or 16–23 in the authenticated/encrypted layout).
///
/// Take T3 as late as possible before transmit (RFC 5357 §4.2.1), encoded in
/// the session's timestamp format. In **encrypted** mode T3 is covered by the
/// HMAC and the encryption, so call this **before** protecting the packet; in
/// authenticated mode it lies in the clear region and may be written after.
///
/// # Errors
/// [`ReflectError::BufferTooSmall`] if `out` is shorter than the reflector header.
pub fn set_t3(out: &mut [u8], fmt: &SessionFormat, t3: [u8; 8]) -> Result<(), ReflectError> {
    let need = fmt.reflector_header_len();
    if out.len() < need {
        return Err(ReflectError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    ReflectorPacket::new_unchecked(out, fmt.reflector_layout()).set_timestamp(t3);
    Ok(())
}
