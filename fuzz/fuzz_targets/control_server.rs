//! The TWAMP-Control server state machine fed a client's octets, whole and segmented (RFC 5357 §3).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::control::server(data));
