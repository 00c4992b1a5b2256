//! `reflect_twamp`: stateful reflection of a TWAMP-Control session (RFC 5357 §4.2.1).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::twamp::reflect(data, false));
