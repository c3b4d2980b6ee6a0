//! JSON request bodies through the strict check (repeated keys, inexact numbers). The property is in `mandate_fuzz::json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::json(data));
