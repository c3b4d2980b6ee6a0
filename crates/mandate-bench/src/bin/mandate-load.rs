//! A load harness for a running (or spawned) `mandate serve`: drives decisions (native or
//! AuthZEN) or task issuance from many keep-alive connections and reports throughput and
//! latency percentiles.
//!
//! ```sh
//! cargo build --release -p mandate -p mandate-bench
//! target/release/mandate-load --scenario decide --connections 16 --duration 10
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use mandate_crypto::client::AgentKey;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `POST /v1/decide` with one task's credential.
    Decide,
    /// `POST /access/v1/evaluation` with one task's credential.
    Authzen,
    /// `POST /oauth/token`: one new task per request, each with a fresh client assertion.
    Token,
    /// `GET /healthz`: the HTTP floor of the same server (no credential, no policy, no store).
    Healthz,
    /// MCP `tools/call get-sum` straight to an MCP server at `--target` (no Mandate).
    McpDirect,
    /// MCP `tools/call everything.get-sum` through the gateway's `/mcp` (the spawned broker's
    /// config must front an upstream named `everything`).
    McpGateway,
    /// `GET --target` straight to an HTTP API (no Mandate).
    HttpDirect,
    /// `GET /http/api/items/1` through the gateway's reverse proxy (an API named `api`).
    HttpGateway,
    /// `GET --target` with the task's credential: the same API behind another enforcement
    /// point (nginx with `auth_request` to this broker's `/v1/decide`, see
    /// `scripts/bench-gateway`).
    HttpPeer,
    /// Revocation propagation across replicas (`--replicas 2` or more on `--store`): opens a
    /// task on one replica, completes it on another, and times until a third (or the first)
    /// refuses it; `--rounds` times.
    Propagation,
}

/// Load harness for Mandate.
#[derive(Parser, Debug)]
struct Args {
    /// What to load.
    #[arg(long, value_enum, default_value_t = Scenario::Decide)]
    scenario: Scenario,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds of measured load (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Target request rate in total (requests per second); unlimited when absent.
    #[arg(long)]
    rate: Option<u64>,
    /// The `mandate` binary to spawn.
    #[arg(long, default_value = "target/release/mandate")]
    mandate_bin: PathBuf,
    /// A config file for the spawned server.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Target this broker instead of spawning one (needs --token-file).
    #[arg(long, requires = "token_file")]
    url: Option<String>,
    /// Admin API token of the targeted broker.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The process id of a server this harness did not spawn, to report its CPU time per request
    /// (Linux `/proc`); a spawned server is accounted without it.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The upstream for the direct scenarios.
    #[arg(long)]
    target: Option<String>,
    /// Serve a tiny HTTP API on this port (`GET /items/{id}`) until interrupted, and do nothing
    /// else: the fast upstream of the HTTP gateway benchmark.
    #[arg(long)]
    serve_api: Option<u16>,
    /// Serve a minimal MCP server over Streamable HTTP on this port (`POST /mcp`: initialize,
    /// tools/list, tools/call `get-sum`, answered at once as JSON) until interrupted: the fast
    /// upstream of the MCP gateway benchmark.
    #[arg(long)]
    serve_mcp: Option<u16>,
    /// Only register the agent and open a task on the targeted broker, print its credential, and
    /// exit (for driving the load with another tool, e.g. wrk).
    #[arg(long, requires = "url")]
    setup_only: bool,
    /// Store of the spawned servers (e.g. `postgres://…`); default: each its own SQLite file.
    #[arg(long)]
    store: Option<String>,
    /// Spawn this many replicas on `--store` behind one public URL; connections are spread
    /// over them round-robin.
    #[arg(long, default_value_t = 1, requires = "store")]
    replicas: usize,
    /// Rounds of the propagation scenario.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

/// The issuer replicas share (their public URL behind a load balancer).
const REPLICA_ISSUER: &str = "http://mandate-bench.test";

/// A spawned server, killed on drop.
struct Spawned {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The policies the spawned server runs: the shipped pack without the velocity budgets (which
/// would throttle the load they are measured with) and without approval gates.
fn bench_policies(dir: &std::path::Path) -> anyhow::Result<()> {
    let pack = mandate_bench::pack_dir();
    std::fs::create_dir_all(dir)?;
    for name in [
        "mandate.cedarschema",
        "00-admission.cedar",
        "10-runtime.cedar",
        "20-flow.cedar",
    ] {
        std::fs::copy(pack.join(name), dir.join(name)).with_context(|| format!("copy {name}"))?;
    }
    Ok(())
}

async fn spawn(args: &Args, kek: Option<&str>) -> anyhow::Result<(Spawned, String, String)> {
    let dir = tempfile::tempdir()?;
    let policies = dir.path().join("bench-policies");
    bench_policies(&policies)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = tokio::process::Command::new(&args.mandate_bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--policy-dir")
        .arg(&policies)
        .env("MANDATE_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(store) = &args.store {
        cmd.arg("--store").arg(store);
    }
    if let Some(kek) = kek {
        cmd.env("MANDATE_KEK", kek)
            .arg("--public-url")
            .arg(REPLICA_ISSUER);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", args.mandate_bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await? {
            Some(l) if l.starts_with("mandate listening on ") => break,
            Some(_) => {}
            None => bail!("mandate serve exited before listening"),
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Only the first replica on a store writes the bootstrap token.
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    Ok((
        Spawned { child, _dir: dir },
        format!("http://127.0.0.1:{port}"),
        token,
    ))
}

async fn admin(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let r = client
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("{path}: {status} {v}");
    }
    Ok(v)
}

fn assertion(key: &AgentKey, agent: &str, url: &str) -> anyhow::Result<String> {
    let issuer = if REPLICAS.load(Ordering::Relaxed) > 0 {
        REPLICA_ISSUER
    } else {
        url
    };
    key.assertion(agent, &format!("{issuer}/oauth/token"), 300)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Set when the harness spawned replicas behind [`REPLICA_ISSUER`].
static REPLICAS: AtomicU64 = AtomicU64::new(0);

async fn open_task(
    client: &reqwest::Client,
    url: &str,
    agent: &str,
    key: &AgentKey,
) -> anyhow::Result<reqwest::Response> {
    let a = assertion(key, agent, url)?;
    Ok(client
        .post(format!("{url}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", a.as_str()),
            ("scope", "read:data call:everything.get-sum read:item:1"),
        ])
        .send()
        .await?)
}

struct Totals {
    ok: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(port) = args.serve_api {
        return serve_api(port).await;
    }
    if let Some(port) = args.serve_mcp {
        return serve_mcp(port).await;
    }
    if matches!(args.scenario, Scenario::McpDirect | Scenario::HttpDirect) {
        return direct(&args).await;
    }
    let setup = reqwest::Client::new();
    let mut servers: Vec<Spawned> = Vec::new();
    let mut urls: Vec<String> = Vec::new();
    let (server, url, admin_token) = match (&args.url, &args.token_file) {
        (Some(u), Some(f)) => (
            None,
            u.clone(),
            std::fs::read_to_string(f)?.trim().to_string(),
        ),
        _ => {
            let kek = (args.store.is_some()).then(|| {
                mandate_crypto::seal::Kek::generate()
                    .to_base64()
                    .expose()
                    .to_string()
            });
            if kek.is_some() {
                REPLICAS.store(args.replicas as u64, Ordering::Relaxed);
            }
            let (s, u, t) = spawn(&args, kek.as_deref()).await?;
            for _ in 1..args.replicas {
                let (s, u, _) = spawn(&args, kek.as_deref()).await?;
                servers.push(s);
                urls.push(u);
            }
            (Some(s), u, t)
        }
    };
    urls.insert(0, url.clone());
    let urls = Arc::new(urls);
    let _ = admin(
        &setup,
        &url,
        &admin_token,
        "/admin/v1/owners",
        json!({"id": "bench"}),
    )
    .await;
    let key = Arc::new(AgentKey::generate());
    // A new agent id per run, so the harness can target the same broker again.
    let agent_id = format!("bench-agent-{}", std::process::id());
    admin(
        &setup,
        &url,
        &admin_token,
        "/admin/v1/agents",
        json!({"id": agent_id, "owner": "bench", "tier": "low",
               "envelope": "read:data call:everything.get-sum read:item:1",
               "attestations": [{"type": "private_key_jwt", "public_key": key.public_key()}]}),
    )
    .await?;
    let resp = open_task(&setup, &url, &agent_id, &key).await?;
    let task: Value = resp.json().await?;
    let token = task
        .get("access_token")
        .and_then(Value::as_str)
        .context("no task credential")?
        .to_string();
    if args.setup_only {
        println!("{token}");
        return Ok(());
    }
    if args.scenario == Scenario::Propagation {
        return propagation(&args, &urls, &agent_id, &key).await;
    }
    // Replicas learn of the agent and the task from the shared log.
    if urls.len() > 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let per_conn_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1) as f64));
    let mut workers = Vec::new();
    for conn in 0..args.connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let url = urls.get(conn % urls.len()).cloned().unwrap_or_default();
        let (token, key, agent_id) = (token.clone(), key.clone(), agent_id.clone());
        let (stop, measuring, totals) = (stop.clone(), measuring.clone(), totals.clone());
        let scenario = args.scenario;
        let peer_target = args.target.clone().unwrap_or_default();
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let decide_body =
                json!({"action": "read", "resource": {"type": "resource", "id": "data"}})
                    .to_string();
            let authzen_body = json!({
                "subject": {"type": "agent", "id": agent_id, "properties": {"token": token}},
                "action": {"name": "read"}, "resource": {"type": "resource", "id": "data"}
            })
            .to_string();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // At a fixed rate, a worker that is behind schedule counts latency from when the
                // request was due, not from when it got to send it (no coordinated omission); one
                // on time counts from when it woke (tokio's timer is coarser than the latencies).
                let started = match per_conn_interval {
                    Some(i) => {
                        next += i;
                        let now = Instant::now();
                        if next > now {
                            tokio::time::sleep(next - now).await;
                            Instant::now()
                        } else {
                            next
                        }
                    }
                    None => Instant::now(),
                };
                let sent = match scenario {
                    Scenario::Decide => {
                        client
                            .post(format!("{url}/v1/decide"))
                            .bearer_auth(&token)
                            .header("content-type", "application/json")
                            .body(decide_body.clone())
                            .send()
                            .await
                    }
                    Scenario::Authzen => {
                        client
                            .post(format!("{url}/access/v1/evaluation"))
                            .header("content-type", "application/json")
                            .body(authzen_body.clone())
                            .send()
                            .await
                    }
                    Scenario::Token => match open_task(&client, &url, &agent_id, &key).await {
                        Ok(r) => Ok(r),
                        Err(_) => {
                            if measuring.load(Ordering::Relaxed) {
                                totals.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                    },
                    Scenario::Healthz => client.get(format!("{url}/healthz")).send().await,
                    Scenario::McpGateway => {
                        client
                            .post(format!("{url}/mcp"))
                            .bearer_auth(&token)
                            .header("content-type", "application/json")
                            .header("accept", "application/json, text/event-stream")
                            .body(mcp_call("everything.get-sum"))
                            .send()
                            .await
                    }
                    Scenario::HttpGateway => {
                        client
                            .get(format!("{url}/http/api/items/1"))
                            .bearer_auth(&token)
                            .send()
                            .await
                    }
                    Scenario::HttpPeer => {
                        client
                            .get(peer_target.as_str())
                            .bearer_auth(&token)
                            .send()
                            .await
                    }
                    Scenario::McpDirect | Scenario::HttpDirect | Scenario::Propagation => continue,
                };
                let ok = match sent {
                    Ok(r) => {
                        let good = r.status().is_success();
                        let body = r.bytes().await.unwrap_or_default();
                        good && !body.windows(8).any(|w| w == b"\"error\":")
                    }
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if ok {
                        totals.ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = hist.as_mut() {
                            let _ = h.record(us.max(1));
                        }
                    } else {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let server_pids: Vec<u32> = server
        .iter()
        .chain(servers.iter())
        .filter_map(|s| s.child.id())
        .chain(args.server_pid)
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = CpuSample::take_all(&server_pids);
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = CpuSample::take_all(&server_pids).since(&cpu_before);
    drop(servers);
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in workers {
        if let Some(h) = w.await? {
            all.add(&h)?;
        }
    }
    print_report(
        &args,
        &all,
        totals.ok.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
        elapsed,
        cpu,
    );
    Ok(())
}

fn mcp_call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": tool, "arguments": {"a": 1, "b": 2}}})
    .to_string()
}

/// The tiny API the HTTP gateway benchmark fronts.
async fn serve_api(port: u16) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/items/{id}",
        axum::routing::get(
            |axum::extract::Path(id): axum::extract::Path<String>| async move {
                axum::Json(json!({"id": id, "name": "widget", "price": 12}))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// A minimal MCP server over Streamable HTTP: every answer is a JSON body at once, so what the
/// gateway adds is not hidden by the upstream.
async fn serve_mcp(port: u16) -> anyhow::Result<()> {
    async fn handle(body: axum::body::Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
            return axum::http::StatusCode::BAD_REQUEST.into_response();
        };
        let Some(id) = msg.get("id").cloned() else {
            return axum::http::StatusCode::ACCEPTED.into_response();
        };
        let result = match msg.get("method").and_then(Value::as_str) {
            Some("initialize") => json!({
                "protocolVersion": msg.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-mcp", "version": "0"}}),
            Some("tools/list") => json!({"tools": [{"name": "get-sum",
                "description": "Adds two numbers.",
                "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]}),
            Some("tools/call") => {
                let n = |k: &str| {
                    msg.pointer(&format!("/params/arguments/{k}"))
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0)
                };
                json!({"content": [{"type": "text", "text": format!("The sum of {} and {} is {}.", n("a"), n("b"), n("a") + n("b"))}]})
            }
            _ => json!({}),
        };
        let mut r =
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
        r.headers_mut().insert(
            "mcp-session-id",
            axum::http::HeaderValue::from_static("bench-session"),
        );
        r
    }
    let app = axum::Router::new().route("/mcp", axum::routing::post(handle));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The direct baselines: the same load with no Mandate in the path.
async fn direct(args: &Args) -> anyhow::Result<()> {
    let target = args
        .target
        .clone()
        .context("--target is required for direct scenarios")?;
    let mut session = None;
    if args.scenario == Scenario::McpDirect {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "mandate-load", "version": "0"}}});
        let r = reqwest::Client::new()
            .post(&target)
            .header("accept", "application/json, text/event-stream")
            .json(&init)
            .send()
            .await?;
        session = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = r.bytes().await;
        if let Some(s) = &session {
            let _ = reqwest::Client::new()
                .post(&target)
                .header("mcp-session-id", s)
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .send()
                .await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let per_conn_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(1) as f64));
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (target, session) = (target.clone(), session.clone());
        let (stop, measuring, totals) = (stop.clone(), measuring.clone(), totals.clone());
        let scenario = args.scenario;
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // At a fixed rate, a worker that is behind schedule counts latency from when the
                // request was due, not from when it got to send it (no coordinated omission); one
                // on time counts from when it woke (tokio's timer is coarser than the latencies).
                let started = match per_conn_interval {
                    Some(i) => {
                        next += i;
                        let now = Instant::now();
                        if next > now {
                            tokio::time::sleep(next - now).await;
                            Instant::now()
                        } else {
                            next
                        }
                    }
                    None => Instant::now(),
                };
                let req = if scenario == Scenario::McpDirect {
                    let mut r = client
                        .post(&target)
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(mcp_call("get-sum"));
                    if let Some(s) = &session {
                        r = r.header("mcp-session-id", s);
                    }
                    r
                } else {
                    client.get(&target)
                };
                let ok = match req.send().await {
                    Ok(r) => {
                        let good = r.status().is_success();
                        let body = r.bytes().await.unwrap_or_default();
                        good && !body.windows(8).any(|w| w == b"\"error\":")
                    }
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if ok {
                        totals.ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = hist.as_mut() {
                            let _ = h.record(us.max(1));
                        }
                    } else {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = CpuSample::take(args.server_pid);
    measuring.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = CpuSample::take(args.server_pid).since(&cpu_before);
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in workers {
        if let Some(h) = w.await? {
            all.add(&h)?;
        }
    }
    print_report(
        args,
        &all,
        totals.ok.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
        elapsed,
        cpu,
    );
    Ok(())
}

/// CPU seconds (user + system) used so far by this process and, when known, the server.
struct CpuSample {
    server: Option<f64>,
    client: Option<f64>,
}

impl CpuSample {
    fn take(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|p| cpu_seconds(&format!("/proc/{p}/stat"))),
            client: cpu_seconds("/proc/self/stat"),
        }
    }

    /// CPU of all these servers together.
    fn take_all(pids: &[u32]) -> Self {
        let server = if pids.is_empty() {
            None
        } else {
            pids.iter()
                .map(|p| cpu_seconds(&format!("/proc/{p}/stat")))
                .sum::<Option<f64>>()
        };
        Self {
            server,
            client: cpu_seconds("/proc/self/stat"),
        }
    }

    fn since(&self, before: &Self) -> Self {
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Self {
            server: d(self.server, before.server),
            client: d(self.client, before.client),
        }
    }
}

/// utime + stime of `/proc/<pid>/stat`, in seconds (Linux; clock ticks of 1/100 s).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn print_report(
    args: &Args,
    all: &Histogram<u64>,
    ok: u64,
    errors: u64,
    elapsed: f64,
    cpu: CpuSample,
) {
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let name = format!("{:?}", args.scenario).to_lowercase();
    let done = (ok + errors).max(1) as f64;
    // CPU microseconds per request (answered or failed), for the server and this harness.
    let per_req = |s: Option<f64>| s.map(|s| s * 1e6 / done);
    if args.json {
        println!(
            "{}",
            json!({"scenario": name, "connections": args.connections, "rate": args.rate,
                   "seconds": elapsed, "requests": ok, "errors": errors,
                   "per_second": ok as f64 / elapsed,
                   "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
                   "max_ms": all.max() as f64 / 1000.0,
                   "server_cpu_us_per_request": per_req(cpu.server),
                   "client_cpu_us_per_request": per_req(cpu.client),
                   "server_cores_busy": cpu.server.map(|s| s / elapsed),
                   "client_cores_busy": cpu.client.map(|s| s / elapsed)})
        );
    } else {
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
        println!(
            "{name:<12} conns {:>3}  {:>9.0} req/s  p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms  errors {errors}  cpu/req server {} µs client {} µs",
            args.connections,
            ok as f64 / elapsed,
            ms(0.50),
            ms(0.90),
            ms(0.99),
            all.max() as f64 / 1000.0,
            fmt(per_req(cpu.server)),
            fmt(per_req(cpu.client)),
        );
    }
}

/// Revocation propagation: for each round, a task opened on replica `i`, seen live on replica
/// `j`, completed on replica `i`; the time until `j` refuses it.
async fn propagation(
    args: &Args,
    urls: &[String],
    agent: &str,
    key: &AgentKey,
) -> anyhow::Result<()> {
    if urls.len() < 2 {
        bail!("the propagation scenario needs --replicas 2 or more");
    }
    let client = reqwest::Client::new();
    let decide = |url: &str, token: &str| {
        client
            .post(format!("{url}/v1/decide"))
            .bearer_auth(token)
            .json(&json!({"action": "read", "resource": {"type": "resource", "id": "data"}}))
            .send()
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for round in 0..args.rounds {
        let (i, j) = (round % urls.len(), (round + 1) % urls.len());
        let (from, to) = (
            urls.get(i).context("replica")?.as_str(),
            urls.get(j).context("replica")?.as_str(),
        );
        let v: Value = open_task(&client, from, agent, key).await?.json().await?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .context("no task credential")?
            .to_string();
        // Wait until the other replica knows the task.
        let seen = Instant::now();
        while decide(to, &token).await?.status() != 200 {
            if seen.elapsed() > Duration::from_secs(10) {
                bail!("replica {j} never saw the task");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let a = assertion(key, agent, from)?;
        let revoked = client
            .post(format!("{}/oauth/revoke", from))
            .form(&[
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", a.as_str()),
                ("token", token.as_str()),
            ])
            .send()
            .await?;
        let done = Instant::now();
        if !revoked.status().is_success() {
            bail!("revocation refused: {}", revoked.status());
        }
        loop {
            let s = decide(to, &token).await?.status();
            if s == 401 {
                let us = u64::try_from(done.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.record(us.max(1))?;
                break;
            }
            if done.elapsed() > Duration::from_secs(10) {
                failed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if args.json {
        println!(
            "{}",
            json!({"scenario": "propagation", "replicas": urls.len(), "rounds": hist.len(),
                   "not_propagated_in_10s": failed, "p50_ms": ms(0.5), "p99_ms": ms(0.99),
                   "max_ms": hist.max() as f64 / 1000.0})
        );
    } else {
        println!(
            "propagation over {} replicas, {} rounds: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} not propagated within 10 s",
            urls.len(),
            hist.len(),
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1000.0,
            failed
        );
    }
    Ok(())
}
