//! The gateway under upstream faults (a stdio server that crashes mid-call, one that hangs, one
//! that sends garbage), with an HTTP upstream, and in front of an HTTP API: the agent always
//! gets a clear error, never a hang, and the gateway keeps serving the others.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, npm_package, python, repo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mcp(b: &Broker, token: &str, method: &str, params: Value) -> Value {
    let r = b
        .http
        .post(format!("{}/mcp", b.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

async fn tools(b: &Broker, token: &str) -> Vec<String> {
    let v = mcp(b, token, "tools/list", json!({})).await;
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_for(b: &Broker, token: &str, want: &[&str]) {
    for _ in 0..300 {
        let have = tools(b, token).await;
        if want.iter().all(|w| have.iter().any(|h| h == w)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("upstreams did not come up: {:?}", tools(b, token).await);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_hanging_and_garbage_upstreams_get_clear_errors() {
    let faulty = repo().join("tests/interop/faulty_server.py");
    let everything = npm_package("@modelcontextprotocol/server-everything").join("dist/index.js");
    let http_port = free_port();
    let mut http_upstream = tokio::process::Command::new("node")
        .arg(&everything)
        .arg("streamableHttp")
        .env("PORT", http_port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut cfg =
        String::from("[gateway]\ncall_timeout_seconds = 2\nstartup_timeout_seconds = 10\n");
    for mode in ["crash", "hang", "garbage"] {
        cfg.push_str(&format!(
            "[[gateway.mcp]]\nname = \"{mode}\"\ncommand = \"{}\"\nargs = [\"{}\", \"{mode}\"]\n",
            python().display(),
            faulty.display()
        ));
    }
    cfg.push_str(&format!(
        "[[gateway.mcp]]\nname = \"everything\"\nurl = \"http://127.0.0.1:{http_port}/mcp\"\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, cfg).unwrap();
    let b = Broker::start_with(&["--config", path.to_str().unwrap()]).await;
    b.add_owner("ops").await;
    let key = b
        .add_agent(
            "worker",
            "ops",
            "low",
            "call:crash.work call:hang.work call:garbage.work call:everything.get-sum",
        )
        .await;
    let (_, t) = b
        .open_scope(
            &key,
            "worker",
            "call:crash.work call:hang.work call:garbage.work call:everything.get-sum",
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    wait_for(
        &b,
        &token,
        &[
            "crash.work",
            "hang.work",
            "garbage.work",
            "everything.get-sum",
        ],
    )
    .await;

    let call = |name: &'static str| {
        let (b, token) = (&b, token.clone());
        async move {
            let started = Instant::now();
            let v = mcp(
                b,
                &token,
                "tools/call",
                json!({"name": name, "arguments": {"a": 1, "b": 2}}),
            )
            .await;
            (v, started.elapsed())
        }
    };
    let (v, _) = call("crash.work").await;
    assert_eq!(v["error"]["code"], -32003, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream `crash` stopped while handling the call"),
        "{v}"
    );
    let (v, took) = call("hang.work").await;
    assert_eq!(v["error"]["code"], -32003, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2 seconds"),
        "{v}"
    );
    assert!(
        took < Duration::from_secs(10),
        "a hung upstream must not hang the agent"
    );
    let (v, _) = call("garbage.work").await;
    assert_eq!(v["error"]["code"], -32003, "{v}");
    // The others keep serving, over HTTP too.
    let (v, _) = call("everything.get-sum").await;
    assert_eq!(
        v["result"]["content"][0]["text"], "The sum of 1 and 2 is 3.",
        "{v}"
    );
    // The crashed server is restarted and serves again.
    wait_for(&b, &token, &["crash.work"]).await;
    let metrics = b
        .http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mandate_gateway_upstream_garbage_total"),
        "garbage not counted"
    );
    let errors: Vec<Value> = b
        .audit_kind("gateway_result")
        .into_iter()
        .filter(|e| e["detail"]["outcome"] == "upstream_error")
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    let _ = http_upstream.kill().await;
}

/// An HTTP API that answers with what it was sent: the injected header and a customer record.
async fn api() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let auth = req
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization:")
                            .then(|| l[14..].trim().to_string())
                    })
                    .unwrap_or_default();
                let line = req.lines().next().unwrap_or("").to_string();
                log.lock().unwrap().push(format!("{line} | {auth}"));
                let body =
                    json!({"owner": "acme", "contact": "dev@acme.example", "debug_auth": auth})
                        .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn the_http_proxy_decides_injects_scrubs_and_rotates() {
    let (api_url, seen) = api().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[gateway.http]]
name = "repos"
url = "{api_url}"
headers = {{ Authorization = "Bearer ${{secret:repos_token}}" }}
classifiers = ["email"]
[[gateway.http.routes]]
method = "GET"
path = "/repos/{{owner}}/{{repo}}"
action = "read"
resource = "repo:{{owner}}/{{repo}}"
"#
        ),
    )
    .unwrap();
    let b = Broker::start_with(&["--config", path.to_str().unwrap()]).await;
    let set = |value: &str| b.set_secret("repos_token", value);
    set("first-token-value-1234");
    b.add_owner("dev").await;
    let key = b
        .add_agent(
            "coder",
            "dev",
            "low",
            "read:repo:acme/web read:repo:acme/api",
        )
        .await;
    let (_, t) = b.open_scope(&key, "coder", "read:repo:acme/web").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let get = |path: &'static str| {
        let (b, token) = (&b, token.clone());
        async move {
            let r = b
                .http
                .get(format!("{}/http/repos{path}", b.url))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = get("/repos/acme/web").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("dev@acme.example"));
    // The API got the secret; the agent sees it scrubbed, and the agent's own credential never
    // went upstream.
    assert!(body.contains("[redacted by mandate]"), "{body}");
    assert!(!body.contains("first-token-value-1234"));
    assert!(
        seen.lock()
            .unwrap()
            .last()
            .unwrap()
            .ends_with("Bearer first-token-value-1234")
    );
    assert!(!seen.lock().unwrap().iter().any(|l| l.contains(&token)));
    // Out of scope, and unrouted: refused before anything is sent.
    let before = seen.lock().unwrap().len();
    assert_eq!(get("/repos/acme/api").await.0, 403);
    assert_eq!(get("/orgs/acme").await.0, 403);
    assert_eq!(seen.lock().unwrap().len(), before);
    // Rotation takes effect on the next call, without restarting anything.
    set("second-token-value-5678");
    assert_eq!(get("/repos/acme/web").await.0, 200);
    assert!(
        seen.lock()
            .unwrap()
            .last()
            .unwrap()
            .ends_with("Bearer second-token-value-5678")
    );
    // The email in the response labelled the task: a later egress would be judged by it.
    let calls = b.audit_kind("gateway_call");
    let forwarded: Vec<&Value> = calls
        .iter()
        .filter(|e| e["detail"]["outcome"] == "forwarded")
        .collect();
    assert_eq!(forwarded.len(), 2);
    assert_eq!(forwarded[0]["detail"]["upstream_path"], "/repos/acme/web");
    let reported = b.audit_kind("flow_reported");
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0]["detail"]["reported"], json!(["pii"]));
    let audit: String = b.audit().iter().map(Value::to_string).collect();
    assert!(!audit.contains("token-value"), "a secret reached the audit");
    assert_eq!(b.audit_kind("secret_set").len(), 2);
}
