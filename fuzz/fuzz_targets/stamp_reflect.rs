//! `reflect_stamp` followed by the RFC 8972 §4 framing pass on the reply.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::stamp::reflect(data));
