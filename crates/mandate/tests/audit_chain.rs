//! The audit chain against tampering with the real SQLite file, and durability across SIGKILL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use common::Broker;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

async fn db(b: &Broker) -> SqliteConnection {
    let path = b.data_dir().join("mandate.db");
    SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

async fn some_history(b: &Broker) -> String {
    b.add_owner("ops").await;
    let key = b
        .add_agent("bot", "ops", "low", "read:data write:data")
        .await;
    let (_, t) = b.open_scope(&key, "bot", "read:data").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    for action in ["read", "write", "read"] {
        b.decide(&token, action, "resource", "data").await;
    }
    token
}

fn verify(b: &Broker) -> (bool, String) {
    let out = b.cli(&["audit", "verify"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn verify_names_an_edited_record() {
    let b = Broker::start().await;
    some_history(&b).await;
    assert!(verify(&b).0);
    let mut c = db(&b).await;
    sqlx::query("UPDATE audit_log SET event = replace(event, '\"deny\"', '\"allow\"') WHERE kind = 'decision' AND event LIKE '%deny%'")
        .execute(&mut c)
        .await
        .unwrap();
    let seq: i64 = sqlx::query_scalar(
        "SELECT seq FROM audit_log WHERE kind = 'decision' ORDER BY seq LIMIT 1 OFFSET 1",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let (ok, text) = verify(&b);
    assert!(!ok);
    assert!(text.contains(&format!("record {seq} was edited")), "{text}");
}

#[tokio::test]
async fn verify_names_a_deleted_record_and_a_cut_tail() {
    let b = Broker::start().await;
    some_history(&b).await;
    let mut c = db(&b).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&mut c)
        .await
        .unwrap();
    let (ok, text) = verify(&b);
    assert!(!ok);
    assert!(text.contains("record 4 is missing (deleted)"), "{text}");

    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_log")
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = $1")
        .bind(last)
        .execute(&mut c)
        .await
        .unwrap();
    let (_, text) = verify(&b);
    assert!(
        text.contains(&format!("records {last} to {last} at the end are missing")),
        "{text}"
    );
}

#[tokio::test]
async fn verify_names_reordered_records() {
    let b = Broker::start().await;
    some_history(&b).await;
    let mut c = db(&b).await;
    // Swap records 5 and 6 whole: content, links and hashes travel together.
    sqlx::query("UPDATE audit_log SET seq = -1 WHERE seq = 5")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET seq = 5 WHERE seq = 6")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET seq = 6 WHERE seq = -1")
        .execute(&mut c)
        .await
        .unwrap();
    let (ok, text) = verify(&b);
    assert!(!ok);
    assert!(
        text.contains("record 5 is out of order: it was written as record 6"),
        "{text}"
    );
    assert!(
        text.contains("record 6 is out of order: it was written as record 5"),
        "{text}"
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut b = Broker::start().await;
    let token = some_history(&b).await;
    let before = b.audit().len();
    b.kill_and_restart().await;
    // The task opened before the crash is still active, and its decisions are on record.
    let (s, v) = b.decide(&token, "read", "resource", "data").await;
    assert_eq!((s, v["decision"].as_str()), (200, Some("allow")), "{v}");
    let after = b.audit();
    assert!(after.len() >= before + 2, "{} then {}", before, after.len());
    assert_eq!(after.iter().filter(|e| e["kind"] == "decision").count(), 4);
    let (ok, text) = verify(&b);
    assert!(ok, "{text}");
}

#[tokio::test]
async fn bad_policy_reload_keeps_the_previous_set() {
    let b = Broker::start().await;
    let token = some_history(&b).await;
    let dir = b.data_dir().join("policies");
    std::fs::write(
        dir.join("20-broken.cedar"),
        "permit(principal, action, resource)\nwhen { principal.nope };\n",
    )
    .unwrap();
    let out = b.cli(&["policy", "reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("20-broken.cedar:"), "{err}");
    let out = b.cli(&["policy", "check", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("20-broken.cedar:2:"), "{err}");
    assert!(err.contains("attribute `nope`"), "{err}");
    // Decisions go on under the old set.
    let (_, v) = b.decide(&token, "read", "resource", "data").await;
    assert_eq!(v["decision"], "allow");
    assert_eq!(b.audit_kind("policy_rejected").len(), 1);
    std::fs::remove_file(dir.join("20-broken.cedar")).unwrap();
    let out = b.cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.audit_kind("policy_loaded").len(), 1);
}
