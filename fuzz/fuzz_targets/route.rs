//! Raw request targets of the HTTP proxy, and the upstream URLs built from them. The property is in `mandate_fuzz::route_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::route_target(data));
