//! The properties Mandate's fuzz targets check, one function per target. Each takes the raw
//! input bytes and panics (an assertion) if a property does not hold; nothing else may panic.
//! `fuzz/` wraps each in a libFuzzer binary; `tests/corpus.rs` replays the checked-in corpora
//! through them on every test run.

#![allow(
    clippy::panic,
    clippy::expect_used,
    reason = "a broken property is a panic: that is what the fuzzer looks for"
)]

use std::sync::OnceLock;

use mandate_core::{Grant, Scope};
use mandate_crypto::assertion::{peek_issuer, peek_subject};
use mandate_crypto::dpop::{DpopExpectation, verify_dpop};
use mandate_crypto::{KeyRing, SigningKey};
use mandate_gateway::route;

/// One target's check.
pub type Check = fn(&[u8]);

/// The targets, by name, as `fuzz/` and the corpus directories call them.
pub const TARGETS: &[(&str, Check)] = &[
    ("scope", scope),
    ("jwt", jwt),
    ("provenance", provenance),
    ("catalog", catalog),
    ("route", route_target),
    ("json", json),
    ("spiffe", spiffe),
    ("credentials", credentials),
];

/// Scopes as agents send them: a `scope` string, `access` entries with argument rules (JSON),
/// and the call arguments those rules check. What parses must round-trip.
pub fn scope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scope) = Scope::parse(text) {
        let again = Scope::parse(&scope.to_string()).expect("a parsed scope prints parsable");
        assert_eq!(again.tokens(), scope.tokens());
        let _ = scope.excess_over(&Scope::empty());
    }
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
                    let _ = scope.check_args(target, &args, &|a| a.len() % 2 == 0);
                }
            }
            let _ = scope.intersect(&back);
            let _ = scope.narrowed_by(&back);
        }
    }
}

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| KeyRing::new(SigningKey::generate()))
}

/// Compact JWTs from the network: client assertions (peeked before the agent is known), DPoP
/// proofs and task credentials. Nothing unsigned by the ring may verify.
pub fn jwt(data: &[u8]) {
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
}

/// Tool outputs (third-party content) scanned for addresses, URLs, hosts and account-like
/// values, then call arguments checked against what was remembered.
pub fn provenance(data: &[u8]) {
    use mandate_core::provenance::Provenance;
    let text = String::from_utf8_lossy(data);
    let mut p = Provenance::default();
    let (request, rest) = text.split_once('\n').unwrap_or(("", &text));
    p.set_request(request, [request]);
    let (out, args) = rest.split_once('\n').unwrap_or((rest, "{}"));
    p.remember(out, "fuzz.tool");
    p.remember_trusted(request);
    if let Ok(args) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(args) {
        let names: Vec<String> = args.keys().cloned().collect();
        let marks = p.marks(&args, &names);
        // Every value the request itself holds is the request's.
        if let Some(serde_json::Value::String(v)) = args.values().next()
            && v == request
            && !request.trim().is_empty()
        {
            assert!(
                marks.args.is_empty(),
                "a value of the request was marked: {marks:?}"
            );
        }
    }
}

/// `catalog.toml` files, read on every policy reload.
pub fn catalog(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mandate_policy::Catalog::parse(text);
    }
}

/// Raw request targets of the HTTP proxy: a path that passes is rebuilt into an upstream URL
/// whose path has exactly one segment per request segment, each decoding to the value that was
/// decided, with no dot segment and no separator inside; a query that passes comes back pair
/// for pair.
pub fn route_target(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (raw_path, raw_query) = text.split_once('?').unwrap_or((text, ""));
    let raw_path = format!("/{}", raw_path.trim_start_matches('/'));
    let Ok(path) = route::parse_path(&raw_path) else {
        return;
    };
    let query = route::parse_query(raw_query).unwrap_or_default();
    for pattern in ["/tickets/{id}", "/{a}/{b}/{c}", "/x/", "/"] {
        let p = route::Pattern::parse(pattern).expect("a valid pattern");
        if let Some(params) = p.matches(&path) {
            assert_eq!(params.len(), p.params().count());
        }
    }
    let base = route::parse_base("http://upstream.example/base").expect("a valid base");
    let Ok(up) = route::upstream_url(&base, &path, &query) else {
        return;
    };
    let below = up
        .path
        .strip_prefix("/base/")
        .expect("the upstream path stays below the base");
    let sent: Vec<&str> = below.split('/').collect();
    let expected = path.segments.len() + usize::from(path.trailing_slash);
    let expected = expected.max(1);
    assert_eq!(sent.len(), expected, "{} → {}", raw_path, up.path);
    for (seg, enc) in path.segments.iter().zip(&sent) {
        assert_eq!(*enc, route::encode(&seg.decoded));
        assert!(
            enc.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
        );
        assert!(*enc != "." && *enc != "..");
    }
    // What the URL library reads back is what was built.
    let reparsed = url::Url::parse(up.url.as_str()).expect("a built URL parses");
    assert_eq!(reparsed.path(), up.path);
    assert_eq!(reparsed.query(), up.query.as_deref());
    // Re-encoding may lengthen a query past the limit for what agents send; below it, the
    // built query reads back pair for pair.
    if let Some(q) = up.query.as_deref().filter(|q| q.len() <= route::MAX_QUERY) {
        let back = route::parse_query(q).expect("a built query parses");
        assert_eq!(back, query);
    }
}

/// JSON bodies of decision requests: the strict check never panics, and what it accepts has
/// no repeated key and parses.
pub fn json(data: &[u8]) {
    if mandate_core::json::check_strict(data).is_ok() {
        assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
    }
}

/// SPIFFE IDs as an X.509-SVID's URI SAN carries them: what parses is a workload ID whose trust
/// domain is its lowercase authority and whose path has only plain, non-dot segments.
pub fn spiffe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = mandate_core::spiffe::SpiffeId::parse(text) else {
        return;
    };
    assert_eq!(id.as_str(), text);
    let rest = text.strip_prefix("spiffe://").expect("scheme");
    let (domain, path) = rest.split_once('/').expect("a path");
    assert_eq!(id.trust_domain(), domain);
    assert!(!domain.is_empty() && !domain.bytes().any(|b| b.is_ascii_uppercase()));
    assert!(!domain.contains([':', '@', '?', '#']));
    for seg in path.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{text}");
        assert!(!seg.contains(['%', '?', '#', '\\']), "{text}");
    }
}

#[derive(serde::Deserialize)]
struct CredentialsFile {
    #[serde(default)]
    credentials: Vec<mandate_broker::CredentialSpec>,
}

/// `[[credentials]]` sections of the configuration: a set that is accepted names each
/// credential once, with a valid name and at least one grant.
pub fn credentials(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<CredentialsFile>(text) else {
        return;
    };
    let Ok(checked) = mandate_broker::check_credentials(&file.credentials) else {
        return;
    };
    let mut names = std::collections::BTreeSet::new();
    for c in &checked {
        assert!(mandate_broker::check_secret_name(&c.name).is_ok());
        assert!(names.insert(c.name.clone()), "{} twice", c.name);
    }
}
