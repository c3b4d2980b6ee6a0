//! The scenarios of SCENARIOS.md that the core covers, end to end against a real `mandate serve`
//! process: S1, S4, S5, S7, S10, S11, S13 (one agent) and S14, each with its audit trail.

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
use mandate_crypto::client::AgentKey;
use serde_json::json;

#[tokio::test]
async fn s1_task_scope_keeps_a_code_agent_away_from_production_secrets() {
    let b = Broker::start().await;
    b.add_owner("dev-team").await;
    // The envelope even includes the secret: it is the task's scope that must stop the read.
    let key = b
        .add_agent(
            "code-writer",
            "dev-team",
            "medium",
            "read:repo:acme/web write:repo:acme/web read:secret:prod/db",
        )
        .await;
    let (s, t) = b
        .open_task(
            &key,
            "code-writer",
            task_details(
                "push the fix for bug 12",
                "code_change",
                &[("repo:acme/web", &["read", "write"])],
                600,
            ),
            false,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let token = t["access_token"].as_str().unwrap();
    let task_id = t["task_id"].as_str().unwrap();

    let (s, v) = b.decide(token, "write", "resource", "repo:acme/web").await;
    assert_eq!((s, v["decision"].as_str()), (200, Some("allow")), "{v}");

    let (s, v) = b.decide(token, "read", "resource", "secret:prod/db").await;
    assert_eq!(s, 200);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policies"], json!(["mandate:task-scope"]));
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("outside the scope of task `{task_id}`")),
        "{reason}"
    );
    assert!(
        reason.contains("granted: read:repo:acme/web write:repo:acme/web"),
        "{reason}"
    );

    let denied: Vec<_> = b
        .audit_kind("decision")
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["task"], task_id);
    assert_eq!(denied[0]["resource"], "resource:secret:prod/db");
    assert_eq!(denied[0]["agent"], "code-writer");
    assert_eq!(denied[0]["owner"], "dev-team");
    assert_eq!(denied[0]["intent"], "push the fix for bug 12");
}

#[tokio::test]
async fn s4_a_copied_credential_is_useless_without_the_agents_key() {
    let b = Broker::start().await;
    b.add_owner("finance").await;
    let key = b
        .add_agent("payments-bot", "finance", "high", "call:refund")
        .await;
    let details = task_details("refund order 7", "payments", &[("refund", &["call"])], 600);

    // High tier: the credential must be key-bound.
    let (s, v) = b
        .open_task(&key, "payments-bot", details.clone(), false)
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_dpop_proof");

    let (s, t) = b.open_task(&key, "payments-bot", details, true).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["token_type"], "DPoP");
    let token = t["access_token"].as_str().unwrap();

    let (s, v) = b.decide_dpop(token, &key, "call", "refund").await;
    assert_eq!(s, 200, "{v}");

    // Another process copies the token: as a bearer token…
    let (s, v) = b.decide(token, "call", "tool", "refund").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "invalid_dpop_proof");
    // …or with proofs signed by its own key.
    let thief = AgentKey::generate();
    let (s, v) = b.decide_dpop(token, &thief, "call", "refund").await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("other than the one the credential is bound to")
    );

    // A proof captured on the wire cannot be replayed either.
    let url = format!("{}/v1/decide", b.url);
    let proof = key.dpop_proof("POST", &url, Some(token)).unwrap();
    let send = || {
        b.http
            .post(&url)
            .header("Authorization", format!("DPoP {token}"))
            .header("DPoP", &proof)
            .json(&json!({"action": "call", "resource": {"type": "tool", "id": "refund"}}))
            .send()
    };
    assert_eq!(send().await.unwrap().status().as_u16(), 200);
    let again = send().await.unwrap();
    assert_eq!(again.status().as_u16(), 401);
    let v: serde_json::Value = again.json().await.unwrap();
    assert!(
        v["error_description"].as_str().unwrap().contains("replay"),
        "{v}"
    );

    let refused = b.audit_kind("credential_refused");
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|e| e["agent"] == "payments-bot"));
}

#[tokio::test]
async fn s5_credentials_die_with_completion_and_with_their_ttl() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let key = b
        .add_agent("batch-agent", "ops", "low", "read:ledger")
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "batch-agent",
            task_details("nightly export", "batch", &[("ledger", &["read"])], 600),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(b.decide(&token, "read", "resource", "ledger").await.0, 200);
    let (s, _) = b.revoke_as_agent(&key, "batch-agent", &token).await;
    assert_eq!(s, 200);
    let (s, v) = b.decide(&token, "read", "resource", "ledger").await;
    assert_eq!(s, 401);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("is completed"),
        "{v}"
    );

    let (_, t) = b
        .open_task(
            &key,
            "batch-agent",
            task_details("quick look", "batch", &[("ledger", &["read"])], 1),
            false,
        )
        .await;
    let short = t["access_token"].as_str().unwrap().to_string();
    let short_task = t["task_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, v) = b.decide(&short, "read", "resource", "ledger").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "invalid_token");

    // The sweeper records the expiry.
    let mut expired = Vec::new();
    for _ in 0..50 {
        expired = b.audit_kind("task_expired");
        if !expired.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["task"], short_task.as_str());
    assert_eq!(b.audit_kind("task_completed").len(), 1);
}

#[tokio::test]
async fn s7_kill_switch_ends_every_task_at_once() {
    let b = Broker::start().await;
    b.add_owner("support").await;
    let key = b
        .add_agent("helpdesk", "support", "low", "read:cases call:search")
        .await;
    let mut tokens = Vec::new();
    for intent in ["case 1", "case 2"] {
        let (_, t) = b
            .open_task(
                &key,
                "helpdesk",
                task_details(intent, "support", &[("cases", &["read"])], 600),
                false,
            )
            .await;
        tokens.push(t["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        b.decide(&tokens[0], "read", "resource", "cases").await.0,
        200
    );

    let out = b.cli(&["agent", "suspend", "helpdesk", "--reason", "acting oddly"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for t in &tokens {
        let (s, v) = b.decide(t, "read", "resource", "cases").await;
        assert_eq!(s, 401, "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("is revoked"),
            "{v}"
        );
    }
    let (s, v) = b.open_scope(&key, "helpdesk", "read:cases").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "unauthorized_client");

    let suspended = b.audit_kind("agent_suspended");
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0]["reason"], "acting oddly");
    let revoked = b.audit_kind("task_revoked");
    assert_eq!(revoked.len(), 2);
    assert!(revoked.iter().all(|e| e["reason"] == "acting oddly"));

    // Resuming lets it open new tasks, but revoked ones stay revoked.
    let out = b.cli(&["agent", "resume", "helpdesk"]);
    assert!(out.status.success());
    assert_eq!(b.open_scope(&key, "helpdesk", "read:cases").await.0, 200);
    assert_eq!(
        b.decide(&tokens[1], "read", "resource", "cases").await.0,
        401
    );
}

#[tokio::test]
async fn s10_an_agent_without_owner_opens_nothing_and_is_flagged() {
    let b = Broker::start().await;
    b.add_owner("leaver@example.com").await;
    let key = b
        .add_agent("old-bot", "leaver@example.com", "low", "read:wiki")
        .await;
    let (_, t) = b.open_scope(&key, "old-bot", "read:wiki").await;
    let token = t["access_token"].as_str().unwrap().to_string();

    let out = b.cli(&["owner", "remove", "leaver@example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("orphaned agents: old-bot"));

    // Its running task ended with its owner, and it can open no other.
    assert_eq!(b.decide(&token, "read", "resource", "wiki").await.0, 401);
    let (s, v) = b.open_scope(&key, "old-bot", "read:wiki").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["mandate_policies"], json!(["mandate:ownership"]));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("orphaned")
    );

    let agents = b.cli_json(&["agent", "list"]);
    let a = &agents.as_array().unwrap()[0];
    assert_eq!(a["id"], "old-bot");
    assert_eq!(a["flags"], json!(["orphaned"]));
    assert_eq!(a["former_owner"], "leaver@example.com");
    let table = String::from_utf8_lossy(&b.cli(&["agent", "list"]).stdout).to_string();
    assert!(table.contains("orphaned"), "{table}");

    let denied = b.audit_kind("task_denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["policies"], json!(["mandate:ownership"]));
    assert_eq!(b.audit_kind("owner_removed").len(), 1);
}

#[tokio::test]
async fn s11_two_tasks_of_one_agent_stay_apart() {
    let b = Broker::start().await;
    b.add_owner("support").await;
    let key = b
        .add_agent("assistant", "support", "low", "read:cases write:tickets")
        .await;
    let (_, a) = b
        .open_task(
            &key,
            "assistant",
            task_details("read case 9", "support", &[("cases", &["read"])], 600),
            false,
        )
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "assistant",
            task_details("file ticket", "support", &[("tickets", &["write"])], 600),
            false,
        )
        .await;
    let (ta, tt) = (
        a["access_token"].as_str().unwrap(),
        t["access_token"].as_str().unwrap(),
    );
    let (ida, idt) = (
        a["task_id"].as_str().unwrap(),
        t["task_id"].as_str().unwrap(),
    );

    assert_eq!(
        b.decide(ta, "read", "resource", "cases").await.1["decision"],
        "allow"
    );
    assert_eq!(
        b.decide(ta, "write", "resource", "tickets").await.1["decision"],
        "deny"
    );
    assert_eq!(
        b.decide(tt, "write", "resource", "tickets").await.1["decision"],
        "allow"
    );
    assert_eq!(
        b.decide(tt, "read", "resource", "cases").await.1["decision"],
        "deny"
    );

    let decisions = b.audit_kind("decision");
    let of = |id: &str| -> Vec<(String, String)> {
        decisions
            .iter()
            .filter(|e| e["task"] == id)
            .map(|e| {
                (
                    e["resource"].as_str().unwrap().to_string(),
                    e["decision"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        of(ida),
        vec![
            ("resource:cases".into(), "allow".into()),
            ("resource:tickets".into(), "deny".into())
        ]
    );
    assert_eq!(
        of(idt),
        vec![
            ("resource:tickets".into(), "allow".into()),
            ("resource:cases".into(), "deny".into())
        ]
    );
}

#[tokio::test]
async fn s13_trace_rebuilds_a_single_agent_workflow_and_the_chain_verifies() {
    let b = Broker::start().await;
    b.add_owner("research").await;
    let key = b
        .add_agent(
            "analyst",
            "research",
            "low",
            "read:reports call:summarise write:notes",
        )
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "analyst",
            task_details(
                "summarise Q3 reports",
                "research",
                &[("reports", &["read"]), ("summarise", &["call"])],
                600,
            ),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap();
    let task_id = t["task_id"].as_str().unwrap();
    b.decide(token, "read", "resource", "reports").await;
    b.decide(token, "call", "tool", "summarise").await;
    b.decide(token, "write", "resource", "notes").await;
    b.revoke_as_agent(&key, "analyst", token).await;

    let trace = b.cli_json(&["audit", "trace", task_id]);
    let steps: Vec<(String, String, String, String)> = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let e = &s["event"];
            let get = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            (
                get("kind"),
                get("resource"),
                get("decision"),
                e["policies"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .map(|x| x.as_str().unwrap())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            )
        })
        .collect();
    let want = |k: &str, r: &str, d: &str, p: &str| {
        (k.to_string(), r.to_string(), d.to_string(), p.to_string())
    };
    assert_eq!(
        steps,
        vec![
            want("task_opened", "-", "allow", "task-within-envelope"),
            want(
                "decision",
                "resource:reports",
                "allow",
                "act-within-task-scope"
            ),
            want(
                "decision",
                "tool:summarise",
                "allow",
                "act-within-task-scope"
            ),
            want("decision", "resource:notes", "deny", "mandate:task-scope"),
            want("task_completed", "-", "-", ""),
        ]
    );
    assert_eq!(trace["task"]["intent"]["text"], "summarise Q3 reports");
    let human = String::from_utf8_lossy(&b.cli(&["audit", "trace", task_id]).stdout).to_string();
    assert!(
        human.contains("intent: summarise Q3 reports [research]"),
        "{human}"
    );
    assert!(human.contains("act-within-task-scope"), "{human}");

    let out = b.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

#[tokio::test]
async fn s14_identity_without_a_task_grants_nothing() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let key = b.add_agent("idle-bot", "ops", "low", "read:metrics").await;
    let assertion = b.assertion(&key, "idle-bot");

    // Its identity proof is not a credential for anything.
    let (s, v) = b.decide(&assertion, "read", "resource", "metrics").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "invalid_token");
    let r = b
        .http
        .post(format!("{}/v1/decide", b.url))
        .json(&json!({"action": "read", "resource": {"type": "resource", "id": "metrics"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Nor for the admin API.
    let r = b
        .http
        .get(format!("{}/admin/v1/agents", b.url))
        .bearer_auth(&assertion)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("agent credentials cannot call the admin API")
    );
    assert_eq!(b.task_count().await, 0);
    assert_eq!(b.audit_kind("credential_refused").len(), 1);
}

#[tokio::test]
async fn owners_manage_only_their_own_agents() {
    let b = Broker::start().await;
    b.add_owner("alice").await;
    b.add_owner("bob").await;
    b.add_agent("bobs-bot", "bob", "low", "read:x").await;
    let (s, issued) = b
        .admin_post("/admin/v1/owners/alice/tokens", json!({"days": 7}))
        .await;
    assert_eq!(s, 201, "{issued}");
    let alice = issued["token"].as_str().unwrap().to_string();
    let as_alice = |method: reqwest::Method, path: &str| {
        b.http
            .request(method, format!("{}{path}", b.url))
            .bearer_auth(&alice)
    };
    let key = AgentKey::generate();
    let r = as_alice(reqwest::Method::POST, "/admin/v1/agents")
        .json(
            &json!({"id": "alices-bot", "tier": "low", "envelope": "read:x",
            "attestations": [{"type": "private_key_jwt", "public_key": key.public_key()}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = as_alice(reqwest::Method::GET, "/admin/v1/agents")
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "alices-bot");
    let r = as_alice(reqwest::Method::POST, "/admin/v1/agents/bobs-bot/suspend")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = as_alice(reqwest::Method::POST, "/admin/v1/owners")
        .json(&json!({"id": "mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Revoked tokens stop working; the store kept only a hash of it.
    let tid = issued["id"].as_str().unwrap();
    assert_eq!(
        b.admin_delete(&format!("/admin/v1/owners/alice/tokens/{tid}"))
            .await
            .0,
        200
    );
    let r = as_alice(reqwest::Method::GET, "/admin/v1/agents")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let db = std::fs::read(b.data_dir().join("mandate.db")).unwrap();
    let needle = alice.as_bytes();
    assert!(
        !db.windows(needle.len()).any(|w| w == needle),
        "token stored in clear"
    );
}
