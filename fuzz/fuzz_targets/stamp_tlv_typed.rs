//! The typed STAMP TLVs, the reflector's fill functions and the conformance
//! checker over arbitrary TLV areas (RFC 8972 §4, RFC 9503, RFC 9534).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::stamp::tlv_typed(data));
