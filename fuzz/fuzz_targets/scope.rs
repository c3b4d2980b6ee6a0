//! Scopes as agents send them: a `scope` string, `access` entries with argument rules (JSON),
//! and the call arguments those rules check. Nothing may panic; what parses must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mandate_core::{Grant, Scope};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scope) = Scope::parse(text) {
        let again = Scope::parse(&scope.to_string()).expect("a parsed scope prints parsable");
        assert_eq!(again.tokens(), scope.tokens());
        let _ = scope.excess_over(&Scope::empty());
    }
    // `access` entries, then arguments checked against their rules.
    let (grants, args) = text.split_once('\n').unwrap_or((text, "{}"));
    if let Ok(grants) = serde_json::from_str::<Vec<Grant>>(grants)
        && let Ok(scope) = Scope::from_grants(&grants)
    {
        let json = serde_json::to_string(&scope).expect("serialises");
        let back: Scope = serde_json::from_str(&json).expect("round-trips");
        assert_eq!(back.tokens(), scope.tokens());
        if let Ok(args) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(args) {
            for token in scope.tokens() {
                if let Some((_, target)) = token.split_once(':') {
                    let _ = scope.check_args(target, &args);
                }
            }
            let _ = scope.intersect(&back);
            let _ = scope.narrowed_by(&back);
        }
    }
});
