//! Fuzz target esp_open (see src/).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::crypto::esp_open(data));
