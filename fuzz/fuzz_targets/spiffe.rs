//! SPIFFE IDs from the URI SAN of client certificates. The property is in `mandate_fuzz::spiffe`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::spiffe(data));
