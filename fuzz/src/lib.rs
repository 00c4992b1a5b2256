//! Harnesses behind the libFuzzer targets in `fuzz_targets/`: TWAMP-Test
//! and STAMP packets and builders, TWAMP-Control messages and the server
//! state machine, key files.
//!
//! Each target is a one-line `fuzz_target!` calling a function here (or, for
//! a target nobody else reuses, carrying its own few lines). The functions
//! take the raw fuzzer input, derive whatever configuration they need from
//! its first octets through [`Input`], run the code under test and **assert
//! its invariants**: a failed assertion is a finding, exactly like a panic in
//! the code under test.
//!
//! Every configuration decoder has an encoder (`encode`), so that
//! `examples/seed_corpus.rs` can turn the golden captures into seeds that
//! decode to the intended configuration, and the self-tests can check that
//! the harnesses hold on real peer traffic.

#![forbid(unsafe_code)]

pub mod client;
pub mod control;
pub mod crypto;
pub mod ike;
pub mod keyfile;
pub mod sa_records;
pub mod seeds;
pub mod stamp;
pub mod twamp;

/// A harness: takes the raw fuzzer input, panics on a finding.
pub type Harness = fn(&[u8]);

/// Every harness of this crate by the name of the target that runs it (the
/// `[[bin]]` name in Cargo.toml). The self-tests run them over the seeds.
pub const HARNESSES: &[(&str, Harness)] = &[
    ("twamp_sender", twamp::sender),
    ("twamp_reflector", twamp::reflector),
    ("twamp_reflect", |d| twamp::reflect(d, false)),
    ("twamp_reflect_light", |d| twamp::reflect(d, true)),
    ("stamp_sender", stamp::sender),
    ("stamp_reflector", stamp::reflector),
    ("stamp_reflect", stamp::reflect),
    ("stamp_tlv_iter", stamp::tlv_iter),
    ("stamp_tlv_process", stamp::tlv_process),
    ("stamp_tlv_writer", stamp::tlv_writer),
    ("stamp_tlv_typed", stamp::tlv_typed),
    ("control_messages", control::messages),
    ("control_server", control::server),
    ("control_client", client::client),
    ("crypto_test_packet", crypto::test_packet),
    ("esp_open", crypto::esp_open),
    ("esp_sa", crypto::esp_sa),
    ("keyfile", keyfile::keyfile),
    ("sa_records", sa_records::sa_records),
    ("ike", ike::responder),
];

/// The harness of target `name`.
pub fn harness(name: &str) -> Option<Harness> {
    HARNESSES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

use ricochet_protocol::time::{ErrorEstimate, TaiOffset, TimeFormat, Timestamp};

/// A cursor over the fuzzer input that never fails: reading past the end
/// yields zeros, so every input, however short, reaches the code under test.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next `N` octets, zero-filled past the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// The next octet (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next two octets, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    /// The next four octets, big-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Bit `n` of `octet`.
pub const fn bit(octet: u8, n: u32) -> bool {
    octet & (1 << n) != 0
}

/// An Error Estimate from 16 fuzzer bits: the bits as they are when valid,
/// else with Multiplier 1 (a Multiplier of 0 cannot be built, RFC 4656
/// §4.1.2).
pub fn error_estimate(bits: u16) -> ErrorEstimate {
    ErrorEstimate::from_bits(bits)
        .or_else(|_| ErrorEstimate::from_bits(bits | 1))
        .unwrap_or_else(|e| unreachable!("multiplier 1 is valid: {e}"))
}

/// The Z bit of an Error Estimate (RFC 8186 §2.3).
pub const fn z_format(error_estimate_bits: u16) -> TimeFormat {
    ricochet_protocol::twamp_test::format_of_error_estimate(error_estimate_bits)
}

/// Decodes a timestamp in both directions of the TAI−UTC conversion, with an
/// arbitrary offset: none of it may panic (overflow is a finding in debug
/// builds, which fuzz builds are).
pub fn exercise_timestamp(raw: [u8; 8], error_estimate_bits: u16, offset: i32) {
    let ts = ricochet_protocol::twamp_test::decode_timestamp(raw, error_estimate_bits);
    assert_eq!(
        ts.to_bytes(),
        raw,
        "decoding a timestamp must keep its octets"
    );
    assert_eq!(ts.format(), z_format(error_estimate_bits));
    let offset = TaiOffset(offset);
    let _ = ts.to_utc_ns(offset);
    let _ = ts.to_tai_ns(offset);
    let _ = Timestamp::from_tai_ns(ts.to_tai_ns(offset), offset, ts.format());
}

/// A buffer of `len` octets filled with a canary, to check that a builder
/// writes nothing past the length it returns.
pub fn canary_buffer(len: usize) -> Vec<u8> {
    vec![CANARY; len]
}

/// The canary octet of [`canary_buffer`].
pub const CANARY: u8 = 0xa5;

/// Asserts that `buf` is still all canary.
pub fn assert_canary(buf: &[u8], what: &str) {
    if let Some(i) = buf.iter().position(|&b| b != CANARY) {
        panic!("{what}: octet {i} past the reply was written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_zero_fills_past_the_end() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0102);
        assert_eq!(i.u32(), 0x0300_0000);
        assert_eq!(i.u8(), 0);
        assert!(i.rest().is_empty());
    }

    #[test]
    fn error_estimate_repairs_multiplier_zero() {
        assert_eq!(error_estimate(0x8100).to_bits(), 0x8101);
        assert_eq!(error_estimate(0x4005).to_bits(), 0x4005);
    }
}
