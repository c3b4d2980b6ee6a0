//! Tool outputs (third-party content) scanned for addresses, URLs, hosts and account-like
//! values, then call arguments checked against what was remembered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mandate_core::provenance::Provenance;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut p = Provenance::default();
    p.remember(&text, "fuzz.tool");
    let (out, args) = text.split_once('\n').unwrap_or((&text, "{}"));
    p.remember(out, "fuzz.other");
    if let Ok(args) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(args) {
        let _ = p.marks(&args, &|_| false);
    }
});
