//! Bad input of every kind: each gets a clear 4xx, changes nothing in the store, and is audited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Broker, JWT_BEARER, task_details};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mandate_crypto::client::AgentKey;
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn claims(b: &Broker, agent: &str) -> Value {
    json!({"iss": agent, "sub": agent, "aud": b.token_endpoint(), "iat": now(), "exp": now() + 60,
           "jti": uuid::Uuid::new_v4().to_string()})
}

fn sign(key: &AgentKey, claims: &Value) -> String {
    key.signing_key()
        .sign_with_header(&Header::new(Algorithm::EdDSA), claims)
        .unwrap()
}

async fn setup() -> (Broker, AgentKey) {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let key = b.add_agent("bot", "ops", "low", "read:data").await;
    (b, key)
}

/// Sends an assertion; expects a refusal that left no task behind and added an audit record of
/// `kind` whose reason contains `why`.
async fn refused(b: &Broker, assertion: &str, status: u16, why: &str, kind: &str) {
    let before_tasks = b.task_count().await;
    let before_audit = b.audit_kind(kind).len();
    let (s, v) = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
                ("scope", "read:data"),
            ],
            None,
        )
        .await;
    assert_eq!(s, status, "{v}");
    let desc = v["error_description"].as_str().unwrap_or_default();
    assert!(desc.contains(why), "`{desc}` should mention `{why}`");
    assert!(!desc.contains(assertion), "error echoes the assertion");
    assert_eq!(b.task_count().await, before_tasks, "a task was created");
    let after = b.audit_kind(kind);
    assert_eq!(after.len(), before_audit + 1, "not audited as {kind}");
    let last = after.last().unwrap().to_string();
    assert!(!last.contains(assertion), "audit holds the assertion");
}

#[tokio::test]
async fn forged_signature_is_refused() {
    let (b, _) = setup().await;
    let other = AgentKey::generate();
    refused(
        &b,
        &sign(&other, &claims(&b, "bot")),
        401,
        "signature does not verify",
        "attestation_failed",
    )
    .await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (b, _) = setup().await;
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&b, "bot"))
    );
    refused(
        &b,
        &token,
        401,
        "algorithm `none` is not accepted",
        "attestation_failed",
    )
    .await;
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_refused() {
    let (b, key) = setup().await;
    let public = URL_SAFE_NO_PAD.decode(key.public_key()).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&b, "bot"),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    refused(
        &b,
        &token,
        401,
        "algorithm `HS256` is not accepted",
        "attestation_failed",
    )
    .await;
    // The public key as text, too.
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&b, "bot"),
        &EncodingKey::from_secret(key.public_key().as_bytes()),
    )
    .unwrap();
    refused(
        &b,
        &token,
        401,
        "algorithm `HS256` is not accepted",
        "attestation_failed",
    )
    .await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_assertions_are_refused() {
    let (b, key) = setup().await;
    let mut c = claims(&b, "bot");
    c["exp"] = json!(now() - 120);
    c["iat"] = json!(now() - 180);
    refused(
        &b,
        &sign(&key, &c),
        401,
        "token has expired",
        "attestation_failed",
    )
    .await;
    let mut c = claims(&b, "bot");
    c["nbf"] = json!(now() + 600);
    refused(
        &b,
        &sign(&key, &c),
        401,
        "token is not valid yet",
        "attestation_failed",
    )
    .await;
    let mut c = claims(&b, "bot");
    c["exp"] = json!(now() + 86_400);
    refused(
        &b,
        &sign(&key, &c),
        401,
        "token lifetime exceeds 3600 seconds",
        "attestation_failed",
    )
    .await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let (b, key) = setup().await;
    let mut c = claims(&b, "bot");
    c["aud"] = json!("https://somewhere.else/token");
    refused(&b, &sign(&key, &c), 401, "audience", "attestation_failed").await;
}

#[tokio::test]
async fn replayed_assertion_is_refused() {
    let (b, key) = setup().await;
    let a = sign(&key, &claims(&b, "bot"));
    let (s, v) = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &a),
                ("scope", "read:data"),
            ],
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    refused(
        &b,
        &a,
        401,
        "already used (replay refused)",
        "attestation_failed",
    )
    .await;
}

#[tokio::test]
async fn replayed_dpop_proof_at_the_token_endpoint_is_refused() {
    let (b, key) = setup().await;
    let proof = key.dpop_proof("POST", &b.token_endpoint(), None).unwrap();
    let send = |assertion: String| {
        let proof = proof.clone();
        let b = &b;
        async move {
            b.token_form(
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", "read:data"),
                ],
                Some(&proof),
            )
            .await
        }
    };
    let (s, v) = send(b.assertion(&key, "bot")).await;
    assert_eq!(s, 200, "{v}");
    let before = b.task_count().await;
    let (s, v) = send(b.assertion(&key, "bot")).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error_description"].as_str().unwrap().contains("replay"));
    assert_eq!(b.task_count().await, before);
}

#[tokio::test]
async fn unknown_agent_is_refused() {
    let (b, _) = setup().await;
    let stranger = AgentKey::generate();
    refused(
        &b,
        &sign(&stranger, &claims(&b, "stranger")),
        401,
        "agent `stranger` is not registered",
        "attestation_failed",
    )
    .await;
}

#[tokio::test]
async fn tasks_outside_the_envelope_or_malformed_are_refused() {
    let (b, key) = setup().await;
    let (s, v) = b.open_scope(&key, "bot", "write:data").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_scope");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("`write:data` is outside agent `bot`'s envelope")
    );
    assert_eq!(v["mandate_policies"], json!(["mandate:envelope"]));

    for (details, why) in [
        (json!([{"type": "other"}]), "type `other` is not supported"),
        (json!({"type": "mandate_task"}), "not a JSON array"),
        (
            json!([{"type": "mandate_task", "access": [], "bogus": 1}]),
            "unknown field `bogus`",
        ),
        (
            task_details("x", "Bad Class", &[("data", &["read"])], 60),
            "intent class",
        ),
        (
            task_details("x", "c", &[("data", &["read"])], 999_999),
            "ttl must be between 1 and",
        ),
    ] {
        let (s, v) = b.open_task(&key, "bot", details, false).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error_description"].as_str().unwrap().contains(why),
            "{v} should say {why}"
        );
    }
    let (s, v) = b
        .token_form(&[("grant_type", "password"), ("username", "x")], None)
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (s, v) = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ],
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("repeated")
    );
    // Only one of these opened a task record at all: the envelope refusal, recorded as denied.
    let tasks = b.admin_get("/admin/v1/tasks").await.1;
    assert_eq!(tasks.as_array().unwrap().len(), 1);
    assert_eq!(tasks[0]["state"], "denied");
}

#[tokio::test]
async fn refused_credentials_at_the_decision_point() {
    let (b, key) = setup().await;
    let (_, t) = b.open_scope(&key, "bot", "read:data").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    // Tampered payload (a wider scope) keeps the old signature.
    let mut wider = payload.clone();
    wider["scope"] = json!("read:data write:data");
    let tampered = format!("{}.{}.{}", parts[0], b64(&wider), parts[2]);
    // Unsigned, and signed by someone else's key with our kid.
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt"})),
        parts[1]
    );
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = header["kid"].as_str().map(str::to_string);
    let forged = AgentKey::generate()
        .signing_key()
        .sign_with_header(&h, &payload)
        .unwrap();

    for (bad, why) in [
        (tampered.as_str(), "signature does not verify"),
        (unsigned.as_str(), "algorithm `none`"),
        (forged.as_str(), "signature does not verify"),
        ("not-a-jwt", "not a well-formed JWT"),
    ] {
        let (s, v) = b.decide(bad, "read", "resource", "data").await;
        assert_eq!(s, 401, "{v}");
        assert!(
            v["error_description"].as_str().unwrap().contains(why),
            "{v} should say {why}"
        );
    }
    assert_eq!(b.audit_kind("credential_refused").len(), 4);
    assert_eq!(b.audit_kind("decision").len(), 0);
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused_and_audited() {
    let (b, key) = setup().await;
    let (_, t) = b.open_scope(&key, "bot", "read:data").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let big = "x".repeat(70 * 1024);
    let r = b
        .http
        .post(b.token_endpoint())
        .form(&[("grant_type", big.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let r = b
        .http
        .post(format!("{}/v1/decide", b.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(format!("{{\"action\":\"read\",\"pad\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("larger than 65536 bytes")
    );
    let r = b
        .http
        .post(format!("{}/v1/decide", b.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"action\": \"read\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{v}"
    );
    let r = b
        .http
        .post(format!("{}/v1/decide", b.url))
        .bearer_auth(&token)
        .json(&json!({"action": "Read!", "resource": {"type": "resource", "id": "data"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(b.audit_kind("request_rejected").len(), 4);
    assert_eq!(b.audit_kind("decision").len(), 0);
    assert_eq!(b.task_count().await, 1);
}

#[tokio::test]
async fn no_secret_reaches_the_audit_or_the_logs() {
    let (b, key) = setup().await;
    let assertion = b.assertion(&key, "bot");
    let (_, t) = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("scope", "read:data"),
            ],
            None,
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    b.decide(&token, "read", "resource", "data").await;
    b.decide(&format!("{token}x"), "read", "resource", "data")
        .await;
    let audit: String = b.audit().iter().map(Value::to_string).collect();
    for secret in [&token, &assertion, &b.admin_token] {
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!audit.contains(sig), "audit holds a secret");
    }
}
