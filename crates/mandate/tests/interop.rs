//! Interop with clients nobody here wrote: Python's authlib and PyJWT obtain, verify, introspect
//! and revoke a task credential. The Python environment is installed by `scripts/test`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::path::PathBuf;

use common::Broker;

fn python() -> PathBuf {
    let p = std::env::var("MANDATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.test-deps/venv/bin/python")
        });
    assert!(
        p.exists(),
        "python test environment missing at {}: run scripts/setup-test-deps (scripts/test does)",
        p.display()
    );
    p
}

#[tokio::test]
async fn authlib_and_pyjwt_speak_to_mandate() {
    let b = Broker::start().await;
    b.add_owner("research").await;
    // The agent's key comes from the CLI, in the PEM form other tools read.
    let key_path = b.data_dir().join("agent.pem");
    let out = b.cli(&["agent", "keygen", "--out", key_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = b.cli(&[
        "agent",
        "add",
        "py-agent",
        "--owner",
        "research",
        "--tier",
        "low",
        "--envelope",
        "read:reports",
        "--public-key",
        &public,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/oauth_interop.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .env("MANDATE_URL", &b.url)
        .env("AGENT_ID", "py-agent")
        .env("AGENT_KEY", &key_path)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python interop failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    let task = report["task_id"].as_str().unwrap();
    let kinds: Vec<String> = b
        .audit()
        .into_iter()
        .filter(|e| e["task"] == task)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "task_opened",
            "decision",
            "task_completed",
            "credential_refused"
        ]
    );
}

#[tokio::test]
async fn rfc8693_exchange_from_requests_and_pyjwt() {
    let b = Broker::start().await;
    b.add_owner("research").await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = Vec::new();
    for (role, id, envelope) in [
        ("PARENT", "py-lead", "read:reports read:customers"),
        ("CHILD", "py-helper", "read:reports"),
        ("GRANDCHILD", "py-intern", "read:reports"),
    ] {
        let key_path = dir.path().join(format!("{id}.pem"));
        let out = b.cli(&["agent", "keygen", "--out", key_path.to_str().unwrap()]);
        assert!(out.status.success());
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let public_arg = format!("--public-key={public}");
        let out = b.cli(&[
            "agent",
            "add",
            id,
            "--owner",
            "research",
            "--tier",
            "low",
            "--envelope",
            envelope,
            &public_arg,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env.push((format!("{role}_ID"), id.to_string()));
        env.push((format!("{role}_KEY"), key_path.display().to_string()));
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/token_exchange.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .env("MANDATE_URL", &b.url)
        .envs(env)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python token exchange failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    // The audit saw the sub-task opened as a delegation from the parent's task.
    let opened = b
        .audit_kind("task_opened")
        .into_iter()
        .find(|e| e["task"] == report["child_task"])
        .unwrap();
    assert_eq!(
        opened["detail"]["delegation"]["chain"],
        serde_json::json!(["py-lead", "py-helper"])
    );
}
