//! Scopes, `access` entries with argument rules, and call arguments. The property is in `mandate_fuzz::scope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::scope(data));
