//! Compact JWTs: client assertions, DPoP proofs, task credentials. The property is in `mandate_fuzz::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mandate_fuzz::jwt(data));
