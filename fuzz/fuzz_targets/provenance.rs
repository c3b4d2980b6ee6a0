//! Tool outputs scanned for third-party values, and arguments marked against them. The property is in `mandate_fuzz::provenance`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::provenance(data));
