//! IKEv2 SA records (RFC 7717 keys fed by an IKE daemon): parse, write back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ricochet_fuzz::sa_records::sa_records(data));
