//! `process_tlvs_in_place` with a fuzz-driven handler (RFC 8972 §4).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::stamp::tlv_process(data));
