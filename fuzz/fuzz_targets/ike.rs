//! IKEv2: the message parsers and a responder endpoint fed arbitrary
//! datagrams (ports 500 and 4500) from unauthenticated peers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::ike::responder(data));
