//! The governance view and report, end to end: per-agent activity and flags through the admin
//! API and the CLI, standing privilege that stays zero, the Markdown and JSON report with its
//! controls table (every test it names exists), and owner re-confirmation with reminders.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail on any surprise"
)]

mod common;

use std::time::Duration;

use common::{Broker, task_details};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

const CATALOG: &str = r#"
[tools.deploy]
side_effect = "write"
risk = "high"

[resources.logs]
side_effect = "read"
"#;

const DAY_MS: i64 = 86_400_000;

/// Moves an agent's registration (and confirmation) `days` into the past, in the real store.
async fn age_agent(b: &Broker, agent: &str, days: i64) {
    let path = b.data_dir().join("mandate.db");
    let mut db = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - days * DAY_MS;
    let done = sqlx::query(
        "UPDATE agents SET created_at = ?1, body = json_set(body, '$.created_at', ?1) WHERE id = ?2",
    )
    .bind(then)
    .bind(agent)
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

fn by_id(list: &Value, id: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("no agent {id} in {list}"))
        .clone()
}

fn flags(a: &Value) -> Vec<String> {
    a["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_governance_view_counts_flags_and_reports() {
    let mut b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("ops").await;
    b.add_owner("gone").await;
    let worker = b
        .add_agent("worker", "ops", "medium", "read:logs call:deploy")
        .await;
    let helper = b.add_agent("helper", "ops", "low", "read:logs").await;
    b.add_agent("idle", "ops", "low", "read:logs").await;
    let leftover_key = b.add_agent("leftover", "gone", "low", "read:logs").await;

    // Activity: two allowed, one denied, one waiting for approval, one delegated sub-task.
    let (s, t) = b
        .open_task(
            &worker,
            "worker",
            task_details(
                "rotate logs",
                "ops",
                &[("logs", &["read"]), ("deploy", &["call"])],
                600,
            ),
            false,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let token = t["access_token"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(
            b.decide(token, "read", "resource", "logs").await.1["decision"],
            "allow"
        );
    }
    assert_eq!(
        b.decide(token, "write", "resource", "logs").await.1["decision"],
        "deny"
    );
    assert_eq!(
        b.decide(token, "call", "tool", "deploy").await.1["decision"],
        "needs_approval"
    );
    let actor = b.assertion(&helper, "helper");
    let details = task_details("read logs", "ops", &[("logs", &["read"])], 60).to_string();
    let (s, v) = b
        .token_form(
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", token),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("actor_token", &actor),
                ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("authorization_details", &details),
            ],
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The leftover agent's task dies with its owner (S10), and it is flagged orphaned.
    let (s, _) = b.open_scope(&leftover_key, "leftover", "read:logs").await;
    assert_eq!(s, 200);
    let (s, v) = b.admin_delete("/admin/v1/owners/gone").await;
    assert_eq!(s, 200, "{v}");
    // The idle agent was registered long ago and never worked.
    age_agent(&b, "idle", 45).await;
    b.kill_and_restart().await;

    let list = b.cli_json(&["agent", "list", "--window-days", "7"]);
    let w = by_id(&list, "worker");
    assert_eq!(w["activity"]["allowed"], 2, "{w}");
    assert_eq!(w["activity"]["denied"], 1);
    assert_eq!(w["activity"]["needs_approval"], 1);
    assert_eq!(w["activity"]["window_days"], 7);
    assert!(w["activity"]["last_activity"].as_i64().is_some());
    assert!(w["activity"]["last_task"].as_i64().is_some());
    assert_eq!(w["active_tasks"].as_array().unwrap().len(), 1);
    assert_eq!(w["active_tasks"][0]["intent"], "rotate logs");
    assert_eq!(flags(&w), ["wide-envelope"]);
    assert_eq!(w["high_risk_writes"], json!(["deploy"]));
    assert_eq!(flags(&by_id(&list, "helper")), Vec::<String>::new());
    assert_eq!(flags(&by_id(&list, "idle")), ["dormant"]);
    assert_eq!(flags(&by_id(&list, "leftover")), ["orphaned"]);
    // Standing privilege: no live credential outlives what policy allows, for any agent.
    for a in list.as_array().unwrap() {
        assert_eq!(a["standing_privilege"], 0, "{a}");
    }
    // The table form and `show` say the same.
    let out = b.cli(&["agent", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2/1/1"), "{text}");
    assert!(text.contains("wide-envelope"), "{text}");
    let out = b.cli(&["agent", "show", "worker"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 allowed, 1 denied, 1 needed approval in 7 days"),
        "{text}"
    );
    // A window out of range is a clear error.
    let (s, v) = b.admin_get("/admin/v1/agents?window_days=0").await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = b.admin_get("/admin/v1/agents?window_days=many").await;
    assert_eq!(s, 400);

    // The report, in both forms.
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("report");
    let out = b.cli(&["report", "--output", prefix.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("json")).unwrap())
            .unwrap();
    let md = std::fs::read_to_string(prefix.with_extension("md")).unwrap();
    assert_eq!(report["inventory"]["agents"], 4);
    assert_eq!(report["inventory"]["standing_privilege"], 0);
    assert_eq!(
        report["inventory"]["flags"]["orphaned"],
        json!(["leftover"])
    );
    assert_eq!(report["inventory"]["flags"]["dormant"], json!(["idle"]));
    assert_eq!(report["inventory"]["by_owner"]["ops"]["medium"], 1);
    assert_eq!(report["inventory"]["by_owner"]["(no owner)"]["low"], 1);
    assert_eq!(report["denied_decisions"]["total"], 1);
    assert_eq!(
        report["denied_decisions"]["listed"][0]["policies"],
        json!(["mandate:task-scope"])
    );
    assert_eq!(report["approvals"]["total"], 1);
    assert_eq!(report["revocation_causes"]["owner removed"], 1, "{report}");
    assert!(md.contains("| ops | 2 | 1 | 0 |"), "{md}");
    assert!(md.contains("- **orphaned**: `leftover`"), "{md}");
    assert!(md.contains("## Controls"));
    // Every control names at least a policy in force or a test, and every test it names exists.
    let controls = report["controls"].as_array().unwrap();
    for f in [
        "OWASP Top 10 for Agentic Applications 2026",
        "OWASP NHI Top 10",
        "NIST AI RMF",
        "CSA MAESTRO",
        "MITRE ATLAS",
    ] {
        assert!(controls.iter().any(|c| c["framework"] == f), "{f}");
    }
    // Every item of the agentic Top 10 is answered, with a control or the reason there is none.
    for n in 1..=10 {
        let id = format!("ASI{n:02}");
        assert!(controls.iter().any(|c| c["id"] == id.as_str()), "{id}");
    }
    let repo = common::repo();
    for c in controls {
        for p in c["policies"].as_array().unwrap() {
            assert_eq!(p["in_force"], true, "{c}");
        }
        let tests = c["tests"].as_array().unwrap();
        assert!(!tests.is_empty(), "{c}");
        for t in tests {
            let (file, name) = t.as_str().unwrap().split_once("::").unwrap();
            let found = ["crates/mandate/tests", "crates/mandate-broker/tests"]
                .iter()
                .map(|d| repo.join(d).join(file))
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .any(|src| src.contains(&format!("fn {name}(")));
            assert!(found, "control {} names missing test {t}", c["id"]);
        }
        assert!(md.contains(&format!("| {} |", c["id"].as_str().unwrap())));
    }
}

#[tokio::test]
async fn owners_reconfirm_their_agents_or_they_open_nothing() {
    let (url, got) = common::webhook_receiver(0).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let secret = "a-long-enough-webhook-secret";
    std::fs::write(cfg_dir.path().join("secret"), secret).unwrap();
    let cfg = cfg_dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "[governance]\nreconfirm_days = 30\n\n[approvals]\nwebhook_url = \"{url}\"\nwebhook_secret_file = \"{}\"\n",
            cfg_dir.path().join("secret").display()
        ),
    )
    .unwrap();
    let mut b = Broker::start_with(&["--config", cfg.to_str().unwrap()]).await;
    b.add_owner("ops").await;
    let fresh = b.add_agent("fresh", "ops", "low", "read:logs").await;
    let stale = b.add_agent("stale", "ops", "low", "read:logs").await;
    b.add_agent("soon", "ops", "low", "read:logs").await;
    // A fresh agent works; its confirmation is due in 30 days.
    assert_eq!(b.open_scope(&fresh, "fresh", "read:logs").await.0, 200);
    let v = b.cli_json(&["agent", "show", "fresh"]);
    assert!(v["confirmation_due"].as_i64().is_some(), "{v}");
    assert_eq!(flags(&v), Vec::<String>::new());

    // One agent is past its date, another is due within the week.
    age_agent(&b, "stale", 31).await;
    age_agent(&b, "soon", 25).await;
    b.kill_and_restart().await;
    let (s, v) = b.open_scope(&stale, "stale", "read:logs").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["mandate_policies"], json!(["mandate:reconfirmation"]));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("mandate agent confirm stale")
    );
    assert_eq!(
        flags(&b.cli_json(&["agent", "show", "stale"])),
        ["unconfirmed"]
    );

    // Reminders: audit events and signed webhook deliveries, one per agent and stage.
    let mut reminders = Vec::new();
    for _ in 0..100 {
        reminders = b.audit_kind("confirmation_reminder");
        if reminders.len() >= 2 && got.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stages: Vec<(String, String)> = reminders
        .iter()
        .map(|e| {
            (
                e["agent"].as_str().unwrap().to_string(),
                e["detail"]["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        stages.contains(&("stale".into(), "lapsed".into())),
        "{stages:?}"
    );
    assert!(
        stages.contains(&("soon".into(), "due_soon".into())),
        "{stages:?}"
    );
    assert_eq!(reminders.len(), 2, "once each: {stages:?}");
    let deliveries = got.lock().unwrap().clone();
    let types: Vec<String> = deliveries
        .iter()
        .map(|(sig, body)| {
            let want = mandate_crypto::secret::hmac_sha256_hex(secret.as_bytes(), body.as_bytes());
            assert_eq!(sig, &format!("sha256={want}"));
            let v: Value = serde_json::from_str(body).unwrap();
            format!(
                "{}:{}",
                v["agent"].as_str().unwrap(),
                v["type"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        types.contains(&"stale:agent.confirmation_lapsed".to_string()),
        "{types:?}"
    );

    // The owner confirms; the agent works again and its clock starts over.
    let owner = b.owner_token("ops").await;
    let out = b.cli_as(&owner, &["agent", "confirm", "stale"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.open_scope(&stale, "stale", "read:logs").await.0, 200);
    let confirmed = b.audit_kind("agent_confirmed");
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0]["agent"], "stale");
    assert_eq!(
        flags(&b.cli_json(&["agent", "show", "stale"])),
        Vec::<String>::new()
    );
}
