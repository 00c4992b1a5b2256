//! TWAMP-Test packets (RFC 4656 §4.1.2, RFC 5357 §4, RFC 5618, RFC 6038,
//! RFC 7750, RFC 8186) and the sans-IO reflection builder.
//!
//! * [`packet`]: zero-copy views and `Repr`s of the Session-Sender and
//!   Session-Reflector packets in the unauthenticated and the
//!   authenticated/encrypted layouts.
//! * [`format`](mod@format): [`SessionFormat`], everything a test session negotiated
//!   that changes the octets on the wire.
//! * [`reflect`]: [`reflect_twamp`] (stateful, TWAMP-Control sessions),
//!   [`reflect_twamp_light`] (stateless, RFC 5357 Appendix I) and [`set_t3`].
//!
//! Everything here works on **plaintext**. In authenticated and encrypted
//! modes the caller decrypts the received packet before handing it to the
//! builder and protects the reply afterwards (`crate::crypto`):
//!
//! | Mode | Reflector plaintext → wire |
//! |------|----------------------------|
//! | authenticated | HMAC-SHA1-128 over octets 0–15 written at 96; octets 0–15 AES-ECB; 16–95 stay clear |
//! | encrypted | T3 written first, HMAC over 0–95 at 96, octets 0–95 AES-CBC with IV 0 |
//!
//! The HMAC (octets 96–111) and the padding (112…) are never encrypted; the
//! padding is never authenticated (twamp-test.md §1, §3.2).

pub mod format;
pub mod packet;
pub mod reflect;

pub use format::{
    AuthSymmetricalMbz, ReflectOctets, SessionFormat, TestSecurity, UnauthSymmetricalMbz,
};
pub use packet::{
    ReflectorLayout, ReflectorPacket, ReflectorRepr, SenderPacket, SenderRepr, TestLayout,
};
pub use reflect::{
    reflect_twamp, reflect_twamp_light, set_t3, ReflectError, ReflectParams, RxMeta,
};

use crate::time::TimeFormat;

/// The Z bit of an Error Estimate (RFC 8186 §2.3, RFC 8762 §4.2.1): set when the
/// timestamps it covers are PTPv2 truncated, clear for NTP.
pub const ERROR_ESTIMATE_Z: u16 = 0x4000;

/// The timestamp format an Error Estimate announces through its Z bit.
///
/// Works on the raw 16 bits so that a timestamp can be decoded even when the
/// estimate itself is invalid (Multiplier 0), which a reflector copies verbatim.
#[inline]
pub const fn format_of_error_estimate(raw: u16) -> TimeFormat {
    if raw & ERROR_ESTIMATE_Z != 0 {
        TimeFormat::Ptp
    } else {
        TimeFormat::Ntp
    }
}

// Big-endian field access shared by the TWAMP and STAMP views. Callers have
// checked the buffer length (views are built with `new_checked`).
#[inline]
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn get_8(b: &[u8], at: usize) -> [u8; 8] {
    let mut o = [0u8; 8];
    o.copy_from_slice(&b[at..at + 8]);
    o
}

#[inline]
pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_8(b: &mut [u8], at: usize, v: [u8; 8]) {
    b[at..at + 8].copy_from_slice(&v);
}

/// Decodes an 8-octet timestamp field in the format announced by the Z bit of
/// the Error Estimate that covers it (RFC 8186 §2.3).
#[inline]
pub fn decode_timestamp(raw: [u8; 8], covering_error_estimate: u16) -> crate::time::Timestamp {
    crate::time::Timestamp::from_bytes(raw, format_of_error_estimate(covering_error_estimate))
}
