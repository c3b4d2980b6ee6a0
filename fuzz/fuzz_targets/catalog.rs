//! `catalog.toml` files. The property is in `mandate_fuzz::catalog`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::catalog(data));
