//! perfSONAR `.pfs` key files: parse, look up, write back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::keyfile::keyfile(data));
