//! Attacks on the edges of the protocol: JOSE headers a verifier must not ignore, ambiguous
//! headers and JSON, numbers that round, target kinds, approval floods, file permissions, and
//! which key a credential may be bound to. Each was accepted once; each is refused now.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Broker, JWT_BEARER, task_details};
use jsonwebtoken::{Algorithm, Header};
use mandate_crypto::client::AgentKey;
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A broker whose gateway fronts one HTTP API (so `/mcp` and `/http/…` exist), with a config
/// file holding `extra`.
async fn broker(extra: &str) -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        format!(
            r#"{extra}
[[gateway.http]]
name = "api"
url = "http://127.0.0.1:9/base"
[[gateway.http.routes]]
method = "GET"
path = "/tickets/{{id}}"
action = "read"
resource = "tickets"
"#
        ),
    )
    .unwrap();
    let b = Broker::start_with(&["--config", path.to_str().unwrap()]).await;
    b.add_owner("ops").await;
    (b, dir)
}

async fn post_raw(b: &Broker, path: &str, token: &str, body: &str) -> (u16, Value) {
    let r = b
        .http
        .post(format!("{}{path}", b.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn unknown_critical_headers_are_refused() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("bot", "ops", "low", "read:tickets").await;
    let claims = json!({"iss": "bot", "sub": "bot", "aud": b.token_endpoint(), "iat": now(),
        "exp": now() + 60, "jti": uuid::Uuid::new_v4().to_string()});
    let mut h = Header::new(Algorithm::EdDSA);
    h.crit = Some(vec!["urn:x:unknown".into()]);
    let assertion = key.signing_key().sign_with_header(&h, &claims).unwrap();
    let form = |a: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_assertion_type", JWT_BEARER.to_string()),
            ("client_assertion", a.to_string()),
            ("scope", "read:tickets".to_string()),
        ]
    };
    let r = b
        .http
        .post(b.token_endpoint())
        .form(&form(&assertion))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(matches!(status, 400 | 401), "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("crit"),
        "{v}"
    );
    // The same in a DPoP proof.
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("dpop+jwt".into());
    h.crit = Some(vec!["exp".into()]);
    let mut jwk = key.signing_key().public_jwk().clone();
    jwk.common.key_id = None;
    h.jwk = Some(jwk);
    let proof = key
        .signing_key()
        .sign_with_header(
            &h,
            &json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST",
                    "htu": b.token_endpoint(), "iat": now()}),
        )
        .unwrap();
    let assertion = b.assertion(&key, "bot");
    let r = b
        .http
        .post(b.token_endpoint())
        .header("DPoP", proof)
        .form(&form(&assertion))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_dpop_proof", "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("crit"),
        "{v}"
    );
    assert_eq!(b.task_count().await, 0);
}

#[tokio::test]
async fn exactly_one_dpop_header() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("bot", "ops", "low", "read:tickets").await;
    let (s, t) = b
        .open_task(
            &key,
            "bot",
            task_details("read", "support", &[("tickets", &["read"])], 300),
            true,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let token = t["access_token"].as_str().unwrap();
    let decide = format!("{}/v1/decide", b.url);
    let twice = |url: &str, method: &str| {
        let one = key.dpop_proof(method, url, Some(token)).unwrap();
        let two = key.dpop_proof(method, url, Some(token)).unwrap();
        (one, two)
    };
    let body = json!({"action": "read", "resource": {"type": "resource", "id": "tickets"}});
    let (p1, p2) = twice(&decide, "POST");
    let r = b
        .http
        .post(&decide)
        .header("Authorization", format!("DPoP {token}"))
        .header("DPoP", p1)
        .header("DPoP", p2)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("exactly one DPoP header"),
        "{v}"
    );
    // The gateway's MCP endpoint and proxy refuse the same.
    let mcp = format!("{}/mcp", b.url);
    let (p1, p2) = twice(&mcp, "POST");
    let r = b
        .http
        .post(&mcp)
        .header("Authorization", format!("DPoP {token}"))
        .header("DPoP", p1)
        .header("DPoP", p2)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let proxied = format!("{}/http/api/tickets/1", b.url);
    let (p1, p2) = twice(&proxied, "GET");
    let r = b
        .http
        .get(&proxied)
        .header("Authorization", format!("DPoP {token}"))
        .header("DPoP", p1)
        .header("DPoP", p2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("exactly one DPoP header"));
    // And one header is fine.
    let (s, v) = b.decide_dpop(token, &key, "read", "tickets").await;
    assert_eq!((s, v["decision"].as_str()), (200, Some("allow")), "{v}");
}

#[tokio::test]
async fn repeated_argument_keys_are_refused() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("payer", "ops", "low", "call:refund").await;
    let (_, t) = b.open_scope(&key, "payer", "call:refund").await;
    let token = t["access_token"].as_str().unwrap();
    let native = r#"{"action": "call", "resource": {"type": "tool", "id": "refund"},
        "arguments": {"amount": 5000, "amount": 50}}"#;
    let (s, v) = post_raw(&b, "/v1/decide", token, native).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("`amount` appears twice"),
        "{v}"
    );
    let authzen = format!(
        r#"{{"subject": {{"type": "agent", "id": "payer", "properties": {{"token": "{token}"}}}},
            "action": {{"name": "call", "properties": {{"arguments": {{"amount": 5000, "amount": 50}}}}}},
            "resource": {{"type": "tool", "id": "refund"}}}}"#
    );
    let (s, v) = post_raw(&b, "/access/v1/evaluation", token, &authzen).await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("appears twice"), "{v}");
    let mcp = r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "x.refund", "arguments": {"amount": 5000, "amount": 50}}}"#;
    let (s, v) = post_raw(&b, "/mcp", token, mcp).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], -32700, "{v}");
    // Nothing was decided.
    assert!(b.audit_kind("decision").is_empty());
}

#[tokio::test]
async fn numbers_are_compared_exactly_or_refused() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("payer", "ops", "low", "call:refund").await;
    let details = json!([{"type": "mandate_task", "intent": "refund", "ttl": 300,
        "access": [{"identifier": "refund", "arguments": {"amount": {"max": 100}}}]}]);
    let (_, t) = b.open_task(&key, "payer", details, false).await;
    let token = t["access_token"].as_str().unwrap();
    let call = |amount: &str| {
        format!(
            r#"{{"action": "call", "resource": {{"type": "tool", "id": "refund"}}, "arguments": {{"amount": {amount}}}}}"#
        )
    };
    for (amount, want) in [("100", 200), ("99.99", 200), ("100.01", 200)] {
        let (s, v) = post_raw(&b, "/v1/decide", token, &call(amount)).await;
        assert_eq!(s, want, "{amount}: {v}");
        let expect = if amount == "100.01" { "deny" } else { "allow" };
        assert_eq!(v["decision"], expect, "{amount}: {v}");
    }
    for amount in [
        "100.00000000000001",
        "100.000000000000001",
        "9007199254740993",
    ] {
        let (s, v) = post_raw(&b, "/v1/decide", token, &call(amount)).await;
        assert_eq!(s, 400, "{amount}: {v}");
        let msg = v["error_description"].as_str().unwrap();
        assert!(msg.contains("compared exactly"), "{msg}");
    }
}

#[tokio::test]
async fn a_catalogued_target_is_acted_on_as_its_own_kind() {
    let (b, _d) = broker("").await;
    b.set_policies(&[(
        "catalog.toml",
        "[resources.customers]\nside_effect = \"read\"\ndata_classes = [\"pii\"]\n",
    )]);
    let key = b.add_agent("analyst", "ops", "low", "read:customers").await;
    let (_, t) = b.open_scope(&key, "analyst", "read:customers").await;
    let token = t["access_token"].as_str().unwrap();
    let (s, v) = b.decide(token, "read", "tool", "customers").await;
    assert_eq!(s, 200);
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["policies"], json!(["mandate:target-kind"]), "{v}");
    let (_, v) = b.decide(token, "read", "resource", "customers").await;
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["flow_added"]["data_read"], json!(["pii"]), "{v}");
}

#[tokio::test]
async fn open_approval_requests_per_task_are_capped() {
    let (b, _d) = broker("[approvals]\nmax_open_per_task = 3\n").await;
    b.set_policies(&[(
        "catalog.toml",
        "[tools.refund]\nside_effect = \"write\"\nrisk = \"high\"\n",
    )]);
    let key = b.add_agent("payer", "ops", "medium", "call:refund").await;
    let (_, t) = b.open_scope(&key, "payer", "call:refund").await;
    let token = t["access_token"].as_str().unwrap();
    let ask = |n: i64| json!({"action": "call", "resource": {"type": "tool", "id": "refund"}, "arguments": {"amount": n}});
    let mut first = None;
    for n in 1..=3 {
        let (_, v) = b.decide_call(token, ask(n)).await;
        assert_eq!(v["decision"], "needs_approval", "{v}");
        first.get_or_insert(v["approval_id"].clone());
    }
    let (_, v) = b.decide_call(token, ask(4)).await;
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["policies"], json!(["mandate:approval-limit"]), "{v}");
    // A call that already has its request still finds it.
    let (_, v) = b.decide_call(token, ask(1)).await;
    assert_eq!(v["decision"], "needs_approval", "{v}");
    assert_eq!(Some(v["approval_id"].clone()), first);
    assert_eq!(b.audit_kind("approval_requested").len(), 3);
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn files_with_secrets_or_audit_data_are_private() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("bot", "ops", "low", "read:tickets").await;
    let (_, t) = b.open_scope(&key, "bot", "read:tickets").await;
    let _ = b
        .decide(
            t["access_token"].as_str().unwrap(),
            "read",
            "resource",
            "tickets",
        )
        .await;
    let dir = b.data_dir();
    for f in [
        "mandate.db",
        "mandate.db-wal",
        "mandate.db-shm",
        "admin.token",
        "keys/signing.key",
        "keys/secrets.kek",
    ] {
        let p = dir.join(f);
        assert!(p.exists(), "{f} missing");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    let out = tempfile::tempdir().unwrap();
    let export = out.path().join("audit.jsonl");
    std::fs::write(&export, "old").unwrap();
    std::fs::set_permissions(&export, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = b.cli(&["audit", "export", "--output", export.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&export), 0o600);
    let report = out.path().join("governance");
    let o = b.cli(&["report", "--output", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&report.with_extension("md")), 0o600);
    assert_eq!(mode(&report.with_extension("json")), 0o600);
}

#[tokio::test]
async fn an_existing_world_readable_database_is_narrowed() {
    let b = Broker::start().await;
    let db = b.data_dir().join("mandate.db");
    let mut b = b;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    b.kill_and_restart().await;
    assert_eq!(mode(&db), 0o600);
}

#[tokio::test]
async fn high_tier_credentials_bind_to_a_registered_key() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("payments", "ops", "high", "call:refund").await;
    let stranger = AgentKey::generate();
    let open = async |proof: String| {
        let assertion = b.assertion(&key, "payments");
        b.token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("scope", "call:refund"),
            ],
            Some(&proof),
        )
        .await
    };
    let (s, v) = open(
        stranger
            .dpop_proof("POST", &b.token_endpoint(), None)
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_dpop_proof");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("registered keys"),
        "{v}"
    );
    let (s, v) = open(key.dpop_proof("POST", &b.token_endpoint(), None).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    // A low-tier agent may bind to a key of its choosing (RFC 9449): the credential is then
    // useless without that key.
    let low = b.add_agent("helper", "ops", "low", "read:tickets").await;
    let assertion = b.assertion(&low, "helper");
    let (s, v) = b
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("scope", "read:tickets"),
            ],
            Some(
                &stranger
                    .dpop_proof("POST", &b.token_endpoint(), None)
                    .unwrap(),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    let (s, _) = b.decide_dpop(token, &low, "read", "tickets").await;
    assert_eq!(
        s, 401,
        "a proof of the agent's registered key is not the bound key"
    );
    let (s, v) = b.decide_dpop(token, &stranger, "read", "tickets").await;
    assert_eq!((s, v["decision"].as_str()), (200, Some("allow")), "{v}");
}

#[tokio::test]
async fn enforcement_points_can_ask_for_the_decision_as_a_status() {
    let (b, _d) = broker("").await;
    let key = b
        .add_agent("bot", "ops", "low", "read:tickets read:secrets")
        .await;
    let (_, t) = b.open_scope(&key, "bot", "read:tickets").await;
    let token = t["access_token"].as_str().unwrap();
    let ask = async |target: &str, enforce: bool| {
        let mut r = b
            .http
            .post(format!("{}/v1/decide", b.url))
            .bearer_auth(token)
            .json(&json!({"action": "read", "resource": {"type": "resource", "id": target}}));
        if enforce {
            r = r.header("Mandate-Enforce", "status");
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(ask("tickets", true).await.0, 200);
    let (s, v) = ask("secrets", true).await;
    assert_eq!((s, v["decision"].as_str()), (403, Some("deny")), "{v}");
    // Without the header a deny is an answer like any other.
    assert_eq!(ask("secrets", false).await.0, 200);
}

#[tokio::test]
async fn resource_indicators_must_name_this_service() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("bot", "ops", "low", "read:tickets").await;
    let ask = async |resource: &str| {
        let assertion = b.assertion(&key, "bot");
        b.token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("scope", "read:tickets"),
                ("resource", resource),
            ],
            None,
        )
        .await
    };
    // RFC 8707: the gateway's MCP endpoint, as an MCP client names it.
    let (s, v) = ask(&format!("{}/mcp", b.url)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = ask("https://elsewhere.example/mcp").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_target")),
        "{v}"
    );
    let meta: Value = b
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            b.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["resource"], format!("{}/mcp", b.url));
    assert_eq!(
        meta["authorization_details_types_supported"],
        json!(["mandate_task"])
    );
}

#[tokio::test]
async fn mcp_standard_headers_must_match_the_body() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("bot", "ops", "low", "read:tickets").await;
    let (_, t) = b.open_scope(&key, "bot", "read:tickets").await;
    let token = t["access_token"].as_str().unwrap();
    let post = async |headers: &[(&str, &str)], body: Value| {
        let mut r = b
            .http
            .post(format!("{}/mcp", b.url))
            .bearer_auth(token)
            .json(&body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().await.unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    assert_eq!(post(&[("mcp-method", "ping")], ping.clone()).await.0, 200);
    let (s, v) = post(&[("mcp-method", "tools/list")], ping.clone()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Method"),
        "{v}"
    );
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "x.read", "arguments": {}}});
    let (s, v) = post(
        &[
            ("mcp-method", "tools/call"),
            ("mcp-name", "x.delete_everything"),
        ],
        call,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // From 2026-07-28 on they are required.
    let (s, _) = post(&[("mcp-protocol-version", "2026-07-28")], ping).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn only_the_agent_that_opened_an_mcp_session_may_end_it() {
    let (b, _d) = broker("").await;
    let key = b.add_agent("bot", "ops", "low", "read:tickets").await;
    let other = b.add_agent("other", "ops", "low", "read:tickets").await;
    let (_, t) = b.open_scope(&key, "bot", "read:tickets").await;
    let (_, o) = b.open_scope(&other, "other", "read:tickets").await;
    let r = b
        .http
        .post(format!("{}/mcp", b.url))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let delete = async |token: Option<&str>| {
        let mut r = b
            .http
            .delete(format!("{}/mcp", b.url))
            .header("mcp-session-id", &sid);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap().status().as_u16()
    };
    assert_eq!(delete(None).await, 401);
    assert_eq!(delete(o["access_token"].as_str()).await, 403);
    assert_eq!(delete(t["access_token"].as_str()).await, 204);
}
