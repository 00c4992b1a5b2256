//! TWAMP-Test Session-Reflector packet, four layouts (RFC 5357 §4.2.1, RFC 7750 §3).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::twamp::reflector(data));
