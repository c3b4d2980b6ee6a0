//! Compact JWTs from the network: client assertions (peeked before the agent is known), DPoP
//! proofs and task credentials. Nothing may panic, and nothing unsigned by the ring may verify.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mandate_crypto::assertion::{peek_issuer, peek_subject};
use mandate_crypto::dpop::{DpopExpectation, verify_dpop};
use mandate_crypto::{KeyRing, SigningKey};

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| KeyRing::new(SigningKey::generate()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = peek_subject(token);
    let _ = peek_issuer(token);
    let want = DpopExpectation {
        method: "POST",
        url: "https://mandate.example/v1/decide",
        access_token: Some("credential"),
        now: 1_800_000_000,
        max_age: 60,
    };
    let _ = verify_dpop(token, &want);
    let verified = ring().verify_access_token(
        token,
        "https://mandate.example",
        "https://mandate.example",
        1_800_000_000,
    );
    assert!(verified.is_err(), "a credential nobody signed verified");
});
