//! Fuzz target crypto_test_packet (see src/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::crypto::test_packet(data));
