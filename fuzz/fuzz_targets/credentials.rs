//! The `[[credentials]]` sections of the configuration. The property is in `mandate_fuzz::credentials`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::credentials(data));
