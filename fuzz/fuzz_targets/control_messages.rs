//! Every TWAMP-Control message parser and the command framing (RFC 4656 §3, RFC 5357 §3, RFC 5938 §3).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::control::messages(data));
