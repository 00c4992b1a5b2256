//! STAMP Session-Reflector base packet, both layouts (RFC 8762 §4.3, RFC 8972 §3).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::stamp::reflector(data));
