//! Helpers for end-to-end tests: a real `mandate serve` process on a temporary data directory,
//! driven over HTTP the way agents and people drive it, and the real CLI.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helpers"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail the test on any surprise"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mandate_crypto::client::AgentKey;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mandate")
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python of the test environment (installed by `scripts/setup-test-deps`).
pub fn python() -> PathBuf {
    let p = std::env::var("MANDATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".test-deps/venv/bin/python"));
    assert!(
        p.exists(),
        "python test environment missing at {}: run scripts/setup-test-deps",
        p.display()
    );
    p
}

/// An installed npm package's directory (installed by `scripts/setup-test-deps`).
pub fn npm_package(name: &str) -> PathBuf {
    let p = repo().join(".test-deps/node/node_modules").join(name);
    assert!(
        p.exists(),
        "npm package {name} missing: run scripts/setup-test-deps"
    );
    p
}

/// A running broker process.
pub struct Broker {
    pub url: String,
    /// The issuer credentials name: the URL, unless replicas share a public URL.
    pub issuer: Option<String>,
    pub dir: tempfile::TempDir,
    pub admin_token: String,
    pub http: reqwest::Client,
    child: Option<Child>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

async fn spawn(
    dir: &Path,
    listen: &str,
    extra: &[String],
    env: &[(String, String)],
) -> (Child, String) {
    spawn_logged(dir, listen, extra, env, None).await
}

async fn spawn_logged(
    dir: &Path,
    listen: &str,
    extra: &[String],
    env: &[(String, String)],
    log: Option<&Path>,
) -> (Child, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(listen)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("MANDATE_LOG", if log.is_some() { "debug" } else { "warn" })
        .env_remove("MANDATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
            None => Stdio::inherit(),
        })
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn mandate serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("mandate listening on ") {
                return url.to_string();
            }
        }
        panic!("mandate serve exited before listening");
    })
    .await
    .expect("mandate serve did not start in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

impl Broker {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Self {
        Self::start_logged(extra, None).await
    }

    /// Starts with debug logs written to `log`.
    pub async fn start_logged(extra: &[&str], log: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn_logged(dir.path(), "127.0.0.1:0", &extra, &[], log).await;
        let admin_token = std::fs::read_to_string(dir.path().join("admin.token"))
            .expect("bootstrap token")
            .trim()
            .to_string();
        Broker {
            url,
            issuer: None,
            dir,
            admin_token,
            http: reqwest::Client::new(),
            child: Some(child),
            extra,
            env: Vec::new(),
        }
    }

    /// Starts one replica on a shared store (`--store URL`) with a shared key-encryption key.
    /// The first replica writes the bootstrap admin token; later ones are given it.
    pub async fn start_replica(
        store: &str,
        kek: &str,
        admin_token: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Replicas sit behind one public URL: that is the issuer of every credential.
        let issuer = "http://mandate-replicas.test".to_string();
        let mut args = vec![
            "--store".to_string(),
            store.to_string(),
            "--public-url".to_string(),
            issuer.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = vec![("MANDATE_KEK".to_string(), kek.to_string())];
        // The process announces its public URL; the test talks to the port it listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let (child, _) = spawn(dir.path(), &listen, &args, &env).await;
        let url = format!("http://{listen}");
        let admin_token = match admin_token {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(dir.path().join("admin.token"))
                .expect("bootstrap token of the first replica")
                .trim()
                .to_string(),
        };
        Broker {
            url,
            issuer: Some(issuer),
            dir,
            admin_token,
            http: reqwest::Client::new(),
            child: Some(child),
            extra: args,
            env,
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and leaves it down.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.expect("kill");
        }
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and starts it again on the same
    /// data directory.
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.expect("kill");
        }
        // Same port, so the issuer (and every credential issued before) stays valid.
        let addr = self.url.trim_start_matches("http://").to_string();
        let (child, url) = spawn(self.dir.path(), &addr, &self.extra, &self.env).await;
        self.child = Some(child);
        self.url = url;
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.url)
    }

    async fn json(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    pub async fn admin_delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    pub async fn add_owner(&self, id: &str) {
        let (s, v) = self.admin_post("/admin/v1/owners", json!({"id": id})).await;
        assert_eq!(s, 201, "{v}");
    }

    /// Registers an agent with a fresh Ed25519 key and returns the key.
    pub async fn add_agent(&self, id: &str, owner: &str, tier: &str, envelope: &str) -> AgentKey {
        let key = AgentKey::generate();
        let (s, v) = self
            .admin_post(
                "/admin/v1/agents",
                json!({
                    "id": id, "owner": owner, "tier": tier, "envelope": envelope,
                    "attestations": [{"type": "private_key_jwt", "public_key": key.public_key()}],
                }),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        key
    }

    pub fn assertion(&self, key: &AgentKey, agent: &str) -> String {
        let aud = format!(
            "{}/oauth/token",
            self.issuer.as_deref().unwrap_or(&self.url)
        );
        key.assertion(agent, &aud, 60).expect("sign")
    }

    /// POSTs a form to the token endpoint.
    pub async fn token_form(&self, form: &[(&str, &str)], dpop: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(self.token_endpoint()).form(form);
        if let Some(p) = dpop {
            req = req.header("DPoP", p);
        }
        Self::json(req.send().await.expect("send")).await
    }

    /// Opens a task with `authorization_details`; `dpop` binds it to the agent's key.
    pub async fn open_task(
        &self,
        key: &AgentKey,
        agent: &str,
        details: Value,
        dpop: bool,
    ) -> (u16, Value) {
        let assertion = self.assertion(key, agent);
        let details = details.to_string();
        let proof = dpop.then(|| {
            key.dpop_proof("POST", &self.token_endpoint(), None)
                .expect("dpop")
        });
        self.token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("authorization_details", &details),
            ],
            proof.as_deref(),
        )
        .await
    }

    /// Opens a task from a plain `scope`, like a generic OAuth client.
    pub async fn open_scope(&self, key: &AgentKey, agent: &str, scope: &str) -> (u16, Value) {
        let assertion = self.assertion(key, agent);
        self.token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("scope", scope),
            ],
            None,
        )
        .await
    }

    /// Asks for a decision with a bearer credential.
    pub async fn decide(
        &self,
        token: &str,
        action: &str,
        kind: &str,
        target: &str,
    ) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/decide", self.url))
            .bearer_auth(token)
            .json(&json!({"action": action, "resource": {"type": kind, "id": target}}))
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    /// Asks for a decision with arguments and the approval options.
    pub async fn decide_call(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/v1/decide", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    /// Writes `catalog.toml` (and any extra policy files) into the broker's policy directory and
    /// reloads it.
    pub fn set_policies(&self, files: &[(&str, &str)]) {
        let dir = self.dir.path().join("policies");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write policy file");
        }
        let out = self.cli(&["policy", "reload"]);
        assert!(
            out.status.success(),
            "reload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the CLI with another person's API token.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin())
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .env("MANDATE_TOKEN", token)
            .env_remove("MANDATE_CONFIG")
            .output()
            .expect("run mandate")
    }

    /// Issues an API token to an owner.
    pub async fn owner_token(&self, owner: &str) -> String {
        let (s, v) = self
            .admin_post(
                &format!("/admin/v1/owners/{owner}/tokens"),
                json!({"days": 1}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().expect("token").to_string()
    }

    /// Asks for a decision with a DPoP-bound credential and a proof signed by `key`.
    pub async fn decide_dpop(
        &self,
        token: &str,
        key: &AgentKey,
        action: &str,
        target: &str,
    ) -> (u16, Value) {
        let url = format!("{}/v1/decide", self.url);
        let proof = key.dpop_proof("POST", &url, Some(token)).expect("dpop");
        let r = self
            .http
            .post(url)
            .header("Authorization", format!("DPoP {token}"))
            .header("DPoP", proof)
            .json(&json!({"action": action, "resource": {"type": "resource", "id": target}}))
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    pub async fn revoke_as_agent(&self, key: &AgentKey, agent: &str, token: &str) -> (u16, Value) {
        let assertion = self.assertion(key, agent);
        let r = self
            .http
            .post(format!("{}/oauth/revoke", self.url))
            .form(&[
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion.as_str()),
                ("token", token),
            ])
            .send()
            .await
            .expect("send");
        Self::json(r).await
    }

    /// Sets a brokered secret with the real CLI (`mandate secret set`, the value on stdin).
    pub fn set_secret(&self, name: &str, value: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new(bin())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--server", &self.url, "secret", "set", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run mandate secret set");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value.as_bytes())
            .expect("write the secret");
        assert!(child.wait().expect("wait").success());
    }

    /// `POST /v1/credentials/NAME` with a task credential (or none).
    pub async fn fetch_credential(&self, token: Option<&str>, name: &str) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/credentials/{name}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::json(req.send().await.expect("send")).await
    }

    /// Runs the real CLI against this broker.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin())
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .env_remove("MANDATE_TOKEN")
            .env_remove("MANDATE_CONFIG")
            .output()
            .expect("run mandate")
    }

    /// Runs the CLI with `--json` and parses its output; panics on failure.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "mandate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    /// Every audit event, in chain order, read with `mandate audit export`.
    pub fn audit(&self) -> Vec<Value> {
        let out = self.cli(&["audit", "export", "--format", "jsonl"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("jsonl")["event"].clone())
            .collect()
    }

    /// Audit events of one kind.
    pub fn audit_kind(&self, kind: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// Number of tasks the store holds.
    pub async fn task_count(&self) -> usize {
        let (s, v) = self.admin_get("/admin/v1/tasks?limit=10000").await;
        assert_eq!(s, 200, "{v}");
        v.as_array().map(Vec::len).unwrap_or(0)
    }
}

/// A `mandate_task` authorization details array.
pub fn task_details(intent: &str, class: &str, access: &[(&str, &[&str])], ttl: i64) -> Value {
    let access: Vec<Value> = access
        .iter()
        .map(|(id, actions)| json!({"identifier": id, "actions": actions}))
        .collect();
    json!([{
        "type": "mandate_task", "intent": intent, "intent_class": class, "ttl": ttl, "access": access,
    }])
}

/// What a webhook receiver got: `(X-Mandate-Signature, body)` per delivery.
pub type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A webhook receiver on loopback: answers 500 to the first `refuse_first` deliveries and 200 to
/// the rest, and keeps every delivery it read.
pub async fn webhook_receiver(refuse_first: usize) -> (String, Deliveries) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Deliveries = Deliveries::default();
    let seen = got.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            n += 1;
            let mut buf = vec![0u8; 65536];
            let mut len = 0;
            loop {
                let k = sock.read(&mut buf[len..]).await.unwrap_or(0);
                len += k;
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix(name)
                                .map(|v| v.trim().to_string())
                        })
                    };
                    let want: usize = header("content-length: ")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= want || k == 0 {
                        let sig = header("x-mandate-signature: ").unwrap_or_default();
                        seen.lock().unwrap().push((sig, body.to_string()));
                        break;
                    }
                }
                if k == 0 {
                    break;
                }
            }
            let status = if n <= refuse_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = sock
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (url, got)
}

/// The PostgreSQL server `scripts/test` started (`MANDATE_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "MANDATE_TEST_POSTGRES_URL is not set: run scripts/test (or scripts/setup-postgres and export it)"
        )
    })
}

/// A fresh database on the test PostgreSQL server; returns its URL.
pub async fn fresh_postgres_db(prefix: &str) -> String {
    use sqlx::Connection;
    let admin = postgres_url();
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::postgres::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    conn.close().await.expect("close");
    let (base, _) = admin.rsplit_once('/').expect("a database in the URL");
    format!("{base}/{name}")
}

/// Whether a role exists on the PostgreSQL database `db`.
pub async fn role_exists(db: &str, role: &str) -> bool {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(db)
        .await
        .expect("connect");
    let found = sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut conn)
        .await
        .expect("query")
        .is_some();
    conn.close().await.expect("close");
    found
}

/// Waits until `f` holds, up to `bound`, polling every 5 ms; returns how long it took, and
/// prints it (the figure, not a pass mark: speed is measured in benchmarks).
pub async fn within<F, Fut>(what: &str, bound: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < bound {
        if f().await {
            let took = start.elapsed();
            println!("{what}: {} ms", took.as_millis());
            return took;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: not within {bound:?}");
}
