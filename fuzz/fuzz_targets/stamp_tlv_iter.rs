//! RFC 8972 §4 TLV iteration, the `Tlv` view and `TlvRepr`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::stamp::tlv_iter(data));
