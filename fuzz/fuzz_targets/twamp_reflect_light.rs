//! `reflect_twamp_light`: stateless TWAMP Light reflection (RFC 5357 Appendix I).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::twamp::reflect(data, true));
