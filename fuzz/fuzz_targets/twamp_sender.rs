//! TWAMP-Test Session-Sender packet, both layouts (RFC 5357 §4.1.2).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::twamp::sender(data));
