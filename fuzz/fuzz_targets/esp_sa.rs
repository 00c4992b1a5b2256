//! Fuzz target esp_sa (see src/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::crypto::esp_sa(data));
