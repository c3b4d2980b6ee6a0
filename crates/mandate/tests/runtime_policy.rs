//! Context-aware runtime policy, end to end: S2, S3, S8, S9 and S12 with their audit records,
//! reports from enforcement points, argument rules, and the approval webhook.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::time::Duration;

use common::{Broker, task_details};
use serde_json::{Value, json};

const CATALOG: &str = r#"
[resources.customers]
side_effect = "read"
data_classes = ["pii"]

[resources.notes]
side_effect = "read"

[tools.http_post]
side_effect = "write"
egress = "external"
risk = "medium"

[tools.refund]
side_effect = "write"
risk = "medium"
"#;

#[tokio::test]
async fn s2_a_read_only_support_task_cannot_export() {
    let b = Broker::start().await;
    b.add_owner("support").await;
    let key = b
        .add_agent("support-bot", "support", "low", "read:cases export:cases")
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "support-bot",
            task_details("answer case 4", "support", &[("cases", &["read"])], 600),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap();
    let (_, v) = b.decide(token, "export", "resource", "cases").await;
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policies"], json!(["mandate:task-scope"]));
    // Even a support task that was granted export is refused by policy.
    let (_, t) = b
        .open_task(
            &key,
            "support-bot",
            task_details(
                "bulk case review",
                "support",
                &[("cases", &["read", "export"])],
                600,
            ),
            false,
        )
        .await;
    let (_, v) = b
        .decide(
            t["access_token"].as_str().unwrap(),
            "export",
            "resource",
            "cases",
        )
        .await;
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policies"], json!(["support-tasks-never-export"]));
    let denials: Vec<Value> = b
        .audit_kind("decision")
        .into_iter()
        .filter(|e| e["decision"] == "deny" && e["action"] == "export")
        .collect();
    assert_eq!(denials.len(), 2);
}

#[tokio::test]
async fn s3_what_a_task_read_decides_where_it_may_send() {
    let b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("research").await;
    let key = b
        .add_agent(
            "researcher",
            "research",
            "low",
            "read:customers read:notes call:http_post",
        )
        .await;
    let open = || {
        b.open_task(
            &key,
            "researcher",
            task_details(
                "market study",
                "research",
                &[
                    ("customers", &["read"]),
                    ("notes", &["read"]),
                    ("http_post", &["call"]),
                ],
                600,
            ),
            false,
        )
    };
    // Alone, posting is allowed.
    let (_, t) = open().await;
    let fresh = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.decide(&fresh, "call", "tool", "http_post").await.1["decision"],
        "allow"
    );

    // After reading customer records (pii, from the catalog), it is not.
    let (_, t) = open().await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let task = t["task_id"].as_str().unwrap().to_string();
    let (_, v) = b.decide(&token, "read", "resource", "customers").await;
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["flow_added"]["data_read"], json!(["pii"]));
    let (_, v) = b.decide(&token, "call", "tool", "http_post").await;
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["policies"], json!(["no-egress-after-sensitive-read"]));

    // The same through a report: notes are uncatalogued, but the enforcement point saw pii in
    // the response and says so.
    let (_, t) = open().await;
    let reported = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.decide(&reported, "read", "resource", "notes").await.1["decision"],
        "allow"
    );
    let r = b
        .http
        .post(format!("{}/v1/report", b.url))
        .bearer_auth(&reported)
        .json(&json!({"resource": {"type": "resource", "id": "notes"}, "data_classes": ["pii"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["added"]["data_read"], json!(["pii"]));
    assert_eq!(
        b.decide(&reported, "call", "tool", "http_post").await.1["decision"],
        "deny"
    );
    let r = b
        .http
        .post(format!("{}/v1/report", b.url))
        .bearer_auth(&reported)
        .json(&json!({"data_classes": ["Not A Label"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The audit shows which decision added the label and which policy the later one hit.
    let steps: Vec<Value> = b
        .audit()
        .into_iter()
        .filter(|e| e["task"] == task.as_str())
        .collect();
    let read = steps
        .iter()
        .find(|e| e["resource"] == "resource:customers")
        .unwrap();
    assert_eq!(read["detail"]["flow_added"]["data_read"], json!(["pii"]));
    let post = steps
        .iter()
        .find(|e| e["resource"] == "tool:http_post")
        .unwrap();
    assert_eq!(post["decision"], "deny");
    assert_eq!(post["policies"], json!(["no-egress-after-sensitive-read"]));
    assert_eq!(b.audit_kind("flow_reported").len(), 1);
}

#[tokio::test]
async fn flow_labels_survive_a_restart() {
    let mut b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("research").await;
    let key = b
        .add_agent(
            "researcher",
            "research",
            "low",
            "read:customers call:http_post",
        )
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "researcher",
            task_details(
                "study",
                "research",
                &[("customers", &["read"]), ("http_post", &["call"])],
                600,
            ),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    b.decide(&token, "read", "resource", "customers").await;
    b.kill_and_restart().await;
    assert_eq!(
        b.decide(&token, "call", "tool", "http_post").await.1["decision"],
        "deny"
    );
}

#[tokio::test]
async fn s8_a_policy_change_revokes_tasks_it_no_longer_admits() {
    let b = Broker::start().await;
    b.add_owner("research").await;
    let key = b
        .add_agent("researcher", "research", "low", "read:reports")
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "researcher",
            task_details("weekly digest", "research", &[("reports", &["read"])], 600),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let task = t["task_id"].as_str().unwrap().to_string();
    let (_, other) = b
        .open_task(
            &key,
            "researcher",
            task_details("one report", "reporting", &[("reports", &["read"])], 600),
            false,
        )
        .await;
    assert_eq!(
        b.decide(&token, "read", "resource", "reports").await.1["decision"],
        "allow"
    );

    b.set_policies(&[(
        "50-freeze.cedar",
        "@id(\"freeze-research\")\n@reason(\"research tasks are frozen during the audit\")\nforbid (principal, action == Mandate::Action::\"open_task\", resource)\nwhen { context.task.intent_class == \"research\" };\n",
    )]);

    let (s, v) = b.decide(&token, "read", "resource", "reports").await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("is revoked")
    );
    // A task the change does not concern goes on.
    let (_, v) = b
        .decide(
            other["access_token"].as_str().unwrap(),
            "read",
            "resource",
            "reports",
        )
        .await;
    assert_eq!(v["decision"], "allow");
    let revoked = b.audit_kind("task_revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["task"], task.as_str());
    assert_eq!(revoked[0]["policies"], json!(["freeze-research"]));
    assert!(
        revoked[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("policy change: denied by policy `freeze-research`")
    );
    let loaded = b.audit_kind("policy_loaded");
    assert_eq!(
        loaded.last().unwrap()["detail"]["revoked_tasks"],
        json!([task])
    );
    // New research tasks are refused too.
    let (s, _) = b
        .open_task(
            &key,
            "researcher",
            task_details("another", "research", &[("reports", &["read"])], 600),
            false,
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn s9_a_large_refund_needs_one_exact_approval() {
    let b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("finance").await;
    let key = b
        .add_agent("payments-bot", "finance", "high", "call:refund")
        .await;
    let (s, t) = b
        .open_task(
            &key,
            "payments-bot",
            task_details(
                "refund disputed orders",
                "payments",
                &[("refund", &["call"])],
                600,
            ),
            true,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let token = t["access_token"].as_str().unwrap().to_string();
    let url = format!("{}/v1/decide", b.url);
    let call = |body: Value| {
        let proof = key.dpop_proof("POST", &url, Some(&token)).unwrap();
        b.http
            .post(&url)
            .header("Authorization", format!("DPoP {token}"))
            .header("DPoP", proof)
            .json(&body)
            .send()
    };
    let refund = |amount: i64| json!({"action": "call", "resource": {"type": "tool", "id": "refund"}, "arguments": {"order": "o-17", "amount": amount}});

    let small: Value = call(refund(40)).await.unwrap().json().await.unwrap();
    assert_eq!(small["decision"], "allow", "{small}");
    let first: Value = call(refund(250)).await.unwrap().json().await.unwrap();
    assert_eq!(first["decision"], "needs_approval", "{first}");
    assert_eq!(first["policies"], json!(["large-amount-needs-approval"]));
    let id = first["approval_id"].as_str().unwrap().to_string();
    // Asking again for the same call finds the same pending request.
    let again: Value = call(refund(250)).await.unwrap().json().await.unwrap();
    assert_eq!(again["approval_id"], id.as_str());

    let pending = b.cli_json(&["approval", "list", "--state", "pending"]);
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(
        pending[0]["arguments"],
        json!({"order": "o-17", "amount": 250})
    );

    // The admin may not decide it (policy: the owner decides); the owner may.
    let out = b.cli(&["approval", "grant", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not decide"));
    let owner = b.owner_token("finance").await;
    let out = b.cli_as(
        &owner,
        &["approval", "grant", &id, "--note", "checked the dispute"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another amount under the same approval is denied; the exact call goes through once.
    let mut other = refund(900);
    other["approval_id"] = json!(id);
    let v: Value = call(other).await.unwrap().json().await.unwrap();
    assert_eq!(v["decision"], "deny");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("covers a different call"),
        "{v}"
    );
    let mut exact = refund(250);
    exact["approval_id"] = json!(id);
    let v: Value = call(exact.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(
        v["policies"],
        json!(["large-amount-needs-approval", format!("approval:{id}")])
    );
    let v: Value = call(exact).await.unwrap().json().await.unwrap();
    assert_eq!(v["decision"], "deny");
    assert!(
        v["reason"].as_str().unwrap().contains("was already used"),
        "{v}"
    );

    // A fresh request for the same call waits for the owner (long poll) and then goes through.
    let waiting = tokio::spawn(call(
        json!({"action": "call", "resource": {"type": "tool", "id": "refund"},
        "arguments": {"order": "o-17", "amount": 250}, "wait": 20}),
    ));
    let mut pending_id = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = b.cli_json(&["approval", "list", "--state", "pending"]);
        if let Some(a) = p.as_array().unwrap().first() {
            pending_id = a["id"].as_str().unwrap().to_string();
            break;
        }
    }
    assert!(!pending_id.is_empty());
    let out = b.cli_as(&owner, &["approval", "grant", &pending_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = waiting.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(v["decision"], "allow", "{v}");

    let kinds: Vec<String> = b
        .audit()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("approval_"))
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "approval_requested",
            "approval_granted",
            "approval_requested",
            "approval_granted"
        ]
    );
    let granted = b.audit_kind("approval_granted");
    assert_eq!(granted[0]["actor"], "owner:finance");
    assert_eq!(granted[0]["reason"], "checked the dispute");
    assert_eq!(granted[0]["policies"], json!(["owner-approves-own-agents"]));
}

#[tokio::test]
async fn s12_a_tight_loop_of_denied_retries_suspends_the_task() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let key = b
        .add_agent("looper", "ops", "medium", "read:logs write:logs")
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "looper",
            task_details("rotate logs", "ops", &[("logs", &["read"])], 600),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let task = t["task_id"].as_str().unwrap().to_string();
    let mut denied = 0;
    let mut status = 200;
    for _ in 0..30 {
        let (s, v) = b.decide(&token, "write", "resource", "logs").await;
        status = s;
        if s != 200 {
            break;
        }
        assert_eq!(v["decision"], "deny");
        denied += 1;
    }
    assert_eq!(
        denied, 10,
        "the medium tier suspends after 10 denied calls in a row"
    );
    assert_eq!(status, 401);
    // Even a call it could make before is refused now.
    assert_eq!(b.decide(&token, "read", "resource", "logs").await.0, 401);
    let revoked = b.audit_kind("task_revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["task"], task.as_str());
    assert_eq!(revoked[0]["actor"], "mandate:velocity");
    assert!(
        revoked[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("suspended: 10 denied calls in a row")
    );
}

#[tokio::test]
async fn argument_rules_pin_what_a_task_may_pass() {
    let b = Broker::start().await;
    b.add_owner("finance").await;
    let key = b
        .add_agent("payer", "finance", "low", "call:send_money")
        .await;
    let details = json!([{"type": "mandate_task", "intent": "pay supplier", "intent_class": "payments", "ttl": 600,
        "access": [{"identifier": "send_money", "actions": ["call"],
                    "arguments": {"recipient": {"in": ["acct-1", "acct-2"]}, "amount": {"max": 100}}}]}]);
    let (s, t) = b.open_task(&key, "payer", details, false).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        t["authorization_details"][0]["access"][0]["arguments"]["amount"],
        // A whole bound comes back as it was asked, an integer.
        json!({"max": 100})
    );
    let token = t["access_token"].as_str().unwrap();
    let pay = |recipient: &str, amount: f64| json!({"action": "call", "resource": {"type": "tool", "id": "send_money"}, "arguments": {"recipient": recipient, "amount": amount}});
    assert_eq!(
        b.decide_call(token, pay("acct-1", 99.5)).await.1["decision"],
        "allow"
    );
    let (_, v) = b.decide_call(token, pay("acct-9", 10.0)).await;
    assert_eq!(v["policies"], json!(["mandate:task-arguments"]));
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("argument `recipient`"),
        "{v}"
    );
    let (_, v) = b.decide_call(token, pay("acct-2", 100.5)).await;
    assert_eq!(v["decision"], "deny");
    // Arguments are not in the audit, only their digest.
    let last = b.audit_kind("decision").pop().unwrap();
    assert!(last["detail"]["args_digest"].is_string());
    assert!(!last.to_string().contains("acct-2"));
}

#[tokio::test]
async fn envelope_argument_rules_bind_tasks_and_refuse_wider_pins() {
    let b = Broker::start().await;
    b.add_owner("finance").await;
    let key = mandate_crypto::client::AgentKey::generate();
    let (s, v) = b
        .admin_post(
            "/admin/v1/agents",
            json!({"id": "payer", "owner": "finance", "tier": "low", "envelope": "call:send_money",
                   "envelope_arguments": {"send_money": {"amount": {"max": 500}}},
                   "attestations": [{"type": "private_key_jwt", "public_key": key.public_key()}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ask = |max: i64| {
        json!([{"type": "mandate_task", "intent": "pay", "intent_class": "payments", "ttl": 600,
        "access": [{"identifier": "send_money", "arguments": {"amount": {"max": max}}}]}])
    };
    let (s, v) = b.open_task(&key, "payer", ask(5000), false).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("`send_money(amount)`"),
        "{v}"
    );
    // A task that pins nothing still gets the envelope's bound.
    let (s, t) = b.open_scope(&key, "payer", "call:send_money").await;
    assert_eq!(s, 200, "{t}");
    let (_, v) = b
        .decide_call(t["access_token"].as_str().unwrap(), json!({"action": "call", "resource": {"type": "tool", "id": "send_money"}, "arguments": {"amount": 900}}))
        .await;
    assert_eq!(v["policies"], json!(["mandate:task-arguments"]));
}

#[tokio::test]
async fn approval_requests_are_announced_on_a_signed_retried_webhook() {
    let (url, got) = common::webhook_receiver(1).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let secret = "a-long-enough-webhook-secret";
    std::fs::write(cfg_dir.path().join("secret"), secret).unwrap();
    let cfg = cfg_dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[approvals]\nwebhook_url = \"{url}\"\nwebhook_secret_file = \"{}\"\n",
            cfg_dir.path().join("secret").display()
        ),
    )
    .unwrap();
    let b = Broker::start_with(&["--config", cfg.to_str().unwrap()]).await;
    b.set_policies(&[(
        "catalog.toml",
        "[tools.deploy]\nside_effect = \"write\"\nrisk = \"high\"\n",
    )]);
    b.add_owner("dev").await;
    let key = b
        .add_agent("deployer", "dev", "medium", "call:deploy")
        .await;
    let (_, t) = b.open_scope(&key, "deployer", "call:deploy").await;
    let (_, v) = b
        .decide(
            t["access_token"].as_str().unwrap(),
            "call",
            "tool",
            "deploy",
        )
        .await;
    assert_eq!(v["decision"], "needs_approval", "{v}");
    let id = v["approval_id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        if got.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries = got.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 2, "one refused delivery, one retry");
    for (sig, body) in &deliveries {
        let want = mandate_crypto::secret::hmac_sha256_hex(secret.as_bytes(), body.as_bytes());
        assert_eq!(sig, &format!("sha256={want}"));
        let payload: Value = serde_json::from_str(body).unwrap();
        assert_eq!(payload["type"], "approval.requested");
        assert_eq!(payload["approval"]["id"], id.as_str());
        assert!(!body.contains(secret));
    }
}
