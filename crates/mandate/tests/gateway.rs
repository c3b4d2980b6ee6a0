//! The gateway with real MCP servers nobody here wrote (`@modelcontextprotocol/server-everything`
//! and `server-filesystem` over stdio, `mcp-server-time` over stdio) and the official MCP Python
//! SDK as the agent, which finds Mandate's token service through RFC 9728 metadata and obtains
//! its task credential itself (client-credentials extension, private_key_jwt).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Broker, npm_package, python};
use serde_json::{Value, json};

const SECRET: &str = "sk-live-9f8e7d6c5b4a-NEVER-SHOW-THIS";

fn gateway_config(workdir: &std::path::Path) -> String {
    let everything = npm_package("@modelcontextprotocol/server-everything").join("dist/index.js");
    let fs = npm_package("@modelcontextprotocol/server-filesystem").join("dist/index.js");
    format!(
        r#"
[gateway]
call_timeout_seconds = 20

[[gateway.mcp]]
name = "everything"
command = "node"
args = ["{everything}", "stdio"]
env = {{ MANDATE_DEMO_API_KEY = "${{secret:demo_key}}" }}
classifiers = ["email", "secret"]

[[gateway.mcp]]
name = "fs"
command = "node"
args = ["{fs}", "{work}"]
classifiers = ["email"]

[[gateway.mcp]]
name = "time"
command = "{python}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"#,
        everything = everything.display(),
        fs = fs.display(),
        work = workdir.display(),
        python = python().display(),
    )
}

const CATALOG: &str = r#"
[tools."fs.read_text_file"]
side_effect = "read"
data_classes = ["pii"]
third_party_content = true

[tools."fs.write_file"]
side_effect = "write"
risk = "high"

[tools."everything.echo"]
side_effect = "write"
egress = "external"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_works_through_the_gateway_with_real_servers() {
    let work = tempfile::tempdir().unwrap();
    let workdir = work.path().canonicalize().unwrap();
    std::fs::write(
        workdir.join("customers.txt"),
        "Ana Lima, ana.lima@example.com, +351 900 000 000\n",
    )
    .unwrap();
    let cfg = work.path().join("mandate.toml");
    std::fs::write(&cfg, gateway_config(&workdir)).unwrap();
    let log = work.path().join("server.log");
    let b = Broker::start_logged(&["--config", cfg.to_str().unwrap()], Some(&log)).await;

    // The secret goes in through stdin, never as an argument.
    let mut child = std::process::Command::new(common::bin())
        .args([
            "--data-dir",
            b.data_dir().to_str().unwrap(),
            "--server",
            &b.url,
            "secret",
            "set",
            "demo_key",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SECRET}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());

    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("ops").await;
    let key_path = work.path().join("agent.pem");
    let out = b.cli(&["agent", "keygen", "--out", key_path.to_str().unwrap()]);
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The servers offer some thirty tools; the agent's envelope is six of them.
    let envelope = "call:everything.get-sum call:everything.get-env call:everything.echo \
                    call:time.get_current_time call:fs.read_text_file call:fs.write_file";
    let out = b.cli(&[
        "agent",
        "add",
        "sdk-agent",
        "--owner",
        "ops",
        "--tier",
        "medium",
        "--envelope",
        envelope,
        "--public-key",
        &public,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner = b.owner_token("ops").await;

    // An MCP client asks for the scopes the resource metadata lists, and those are the tools of
    // the upstreams that are up: wait until all three servers have announced theirs.
    let prm = format!("{}/.well-known/oauth-protected-resource/mcp", b.url);
    let mut scopes = Vec::new();
    for _ in 0..600 {
        let meta: Value = b.http.get(&prm).send().await.unwrap().json().await.unwrap();
        scopes = meta["scopes_supported"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        if envelope
            .split_whitespace()
            .all(|t| scopes.iter().any(|s| s == t))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        envelope
            .split_whitespace()
            .all(|t| scopes.iter().any(|s| s == t)),
        "the upstreams never offered the envelope's tools: {scopes:?}"
    );

    let approval_file = work.path().join("approval");
    let granted_file = work.path().join("granted");
    let script = common::repo().join("tests/interop/mcp_gateway_client.py");
    let client = tokio::process::Command::new(python())
        .arg(script)
        .env("GATEWAY", format!("{}/mcp", b.url))
        .env("ISSUER", &b.url)
        .env("AGENT_ID", "sdk-agent")
        .env("AGENT_KEY", &key_path)
        .env("WORKDIR", &workdir)
        .env("APPROVAL_FILE", &approval_file)
        .env("GRANTED_FILE", &granted_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drain its output all along, so it never blocks on a full pipe.
    let mut done = tokio::spawn(client.wait_with_output());
    // A person approves the pending write when the agent reports it.
    let mut approval = String::new();
    for _ in 0..1200 {
        if let Ok(id) = std::fs::read_to_string(&approval_file) {
            approval = id;
            break;
        }
        if done.is_finished() {
            let out = (&mut done).await.unwrap().unwrap();
            panic!(
                "the agent stopped before asking for approval:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !approval.is_empty(),
        "the agent never met an approval request"
    );
    let out = b.cli_as(&owner, &["approval", "grant", &approval]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&granted_file, "yes").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(180), done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The SDK asks for every scope the gateway advertises; the task gets what the envelope
    // allows of it, and only those tools are listed, under their namespaced names.
    assert_eq!(
        r["basics"]["tools"],
        json!([
            "everything.echo",
            "everything.get-env",
            "everything.get-sum",
            "fs.read_text_file",
            "fs.write_file",
            "time.get_current_time"
        ])
    );
    // Allowed calls return the upstreams' real results.
    assert!(
        r["basics"]["sum"].as_str().unwrap().contains('5'),
        "{}",
        r["basics"]["sum"]
    );
    assert!(
        r["basics"]["time"].as_str().unwrap().contains("UTC"),
        "{}",
        r["basics"]["time"]
    );
    // A call outside the task's scope is a JSON-RPC error naming the reason and the policy.
    let denied = &r["basics"]["denied"];
    assert_eq!(denied["code"], -32001);
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("mandate:task-scope"),
        "{denied}"
    );
    // S15: the upstream got the secret in its environment; the agent saw it scrubbed.
    let env = r["basics"]["env"].as_str().unwrap();
    assert!(
        env.contains("MANDATE_DEMO_API_KEY"),
        "the upstream did not get the secret: {env}"
    );
    assert!(
        !env.contains("MANDATE_LOG") && !env.contains("CARGO"),
        "the broker's environment leaked: {env}"
    );
    assert!(env.contains("[redacted by mandate]"), "{env}");
    assert!(!env.contains(SECRET));
    // S3 across two real tools: echo goes out before, not after reading customer records.
    assert_eq!(r["s3"]["echo_before"], "Echo: hello");
    assert!(
        r["s3"]["read"]
            .as_str()
            .unwrap()
            .contains("ana.lima@example.com")
    );
    let after = &r["s3"]["echo_after"];
    assert_eq!(after["code"], -32001);
    assert!(
        after["message"]
            .as_str()
            .unwrap()
            .contains("no-egress-after-sensitive-read"),
        "{after}"
    );
    // Approval: held, granted by the owner, then through once; other arguments are not covered.
    let first = &r["approval"]["first"];
    assert_eq!(first["code"], -32002, "{first}");
    assert_eq!(first["data"]["approval_id"], approval.as_str());
    assert_eq!(r["approval"]["written_before"], false);
    assert_eq!(r["approval"]["written_after"], "quarterly report");
    assert_eq!(
        r["approval"]["third"]["code"], -32002,
        "{}",
        r["approval"]["third"]
    );

    // Each call is one audit event with the upstream, tool and outcome, recorded as it is made.
    let calls = b.audit_kind("gateway_call");
    let by = |tool: &str, outcome: &str| {
        calls
            .iter()
            .filter(|e| e["detail"]["tool"] == tool && e["detail"]["outcome"] == outcome)
            .count()
    };
    assert_eq!(by("everything.get-sum", "forwarded"), 1);
    assert_eq!(by("everything.get-tiny-image", "refused"), 1);
    assert_eq!(by("everything.echo", "refused"), 1);
    assert_eq!(by("fs.write_file", "forwarded"), 1);
    let sum = calls
        .iter()
        .find(|e| e["detail"]["tool"] == "everything.get-sum")
        .unwrap();
    assert_eq!(sum["detail"]["upstream"], "everything");
    assert!(sum["detail"]["args_digest"].is_string());
    assert!(
        !sum.to_string().contains("\"a\":2"),
        "arguments must not be in the audit"
    );
    // What became of a call is recorded when it was not a plain success: here, a secret
    // scrubbed from what the upstream answered.
    let results = b.audit_kind("gateway_result");
    let env_call = results
        .iter()
        .find(|e| e["detail"]["tool"] == "everything.get-env")
        .unwrap();
    assert_eq!(env_call["detail"]["outcome"], "scrubbed");
    assert!(env_call["detail"]["secrets_scrubbed"].as_u64().unwrap() >= 1);
    assert!(env_call["detail"]["latency_ms"].is_number());

    // S15: the secret is nowhere the agent or an operator's tools can see it.
    let audit: String = b.audit().iter().map(Value::to_string).collect();
    let metrics = b
        .http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    let tokens = format!(
        "{} {} {}",
        r["basics"]["token"], r["s3"]["token"], r["approval"]["token"]
    );
    for (place, text) in [
        ("audit", &audit),
        ("metrics", &metrics),
        ("logs", &logs),
        ("tokens", &tokens),
        (
            "client output",
            &String::from_utf8_lossy(&out.stdout).to_string(),
        ),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked into the {place}");
    }
    assert!(
        metrics.contains("mandate_gateway_calls_total"),
        "gateway metrics missing"
    );
    let db = std::fs::read(b.data_dir().join("mandate.db")).unwrap();
    assert!(
        !db.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret is stored in clear"
    );
}

#[tokio::test]
async fn unauthenticated_mcp_requests_point_at_the_metadata() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("mandate.toml");
    std::fs::write(&cfg, "[gateway]\n").unwrap();
    let b = Broker::start_with(&["--config", cfg.to_str().unwrap()]).await;
    let r = b
        .http
        .post(format!("{}/mcp", b.url))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
            b.url
        )),
        "{challenge}"
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
    // A page on another origin cannot reach the gateway through the agent's browser.
    let r = b
        .http
        .post(format!("{}/mcp", b.url))
        .header("origin", "http://evil.example")
        .bearer_auth("whatever")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(meta["authorization_servers"], json!([b.url]));
}
