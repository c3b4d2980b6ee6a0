//! Several `mandate serve` processes on one PostgreSQL database: shared keys and state,
//! completion, suspension and policy changes on one replica refused on the others within a
//! second or so, assertion replay refused across replicas, one audit chain, a killed replica
//! leaving the others serving, and a replica that loses the database refusing decisions until
//! it reaches it again.
//!
//! PostgreSQL comes from `MANDATE_TEST_POSTGRES_URL`, set by `scripts/test`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail on any surprise"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, JWT_BEARER, role_exists, task_details, within};
use serde_json::Value;
use sqlx::Connection;

/// Generous bound for propagation, so a loaded machine does not fail the test; the real
/// figures are printed and measured in the benchmark.
const BOUND: Duration = Duration::from_secs(5);

/// A fresh database on the test server.
async fn fresh_db() -> String {
    common::fresh_postgres_db("r").await
}

fn kek() -> String {
    mandate_crypto::seal::Kek::generate()
        .to_base64()
        .expose()
        .to_string()
}

/// `mandate audit verify` against the shared store passes.
fn assert_chain_verifies(b: &Broker, store: &str) {
    let out = std::process::Command::new(common::bin())
        .arg("--data-dir")
        .arg(b.data_dir())
        .args(["audit", "verify"])
        .env("MANDATE_STORE", store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn status(b: &Broker, token: &str) -> u16 {
    b.decide(token, "read", "resource", "logs").await.0
}

#[tokio::test]
async fn three_replicas_share_one_state() {
    let url = fresh_db().await;
    let kek = kek();
    let a = Broker::start_replica(&url, &kek, None, &[]).await;
    let policies = a.data_dir().join("policies");
    let shared = ["--policy-dir", policies.to_str().unwrap()];
    let b = Broker::start_replica(&url, &kek, Some(&a.admin_token), &shared).await;
    let c = Broker::start_replica(&url, &kek, Some(&a.admin_token), &shared).await;

    // One key set: every replica publishes the same JWKS.
    let jwks = |r: &Broker| {
        let u = format!("{}/.well-known/jwks.json", r.url);
        let http = r.http.clone();
        async move {
            http.get(u)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(jwks(&a).await, jwks(&b).await);
    assert_eq!(jwks(&a).await, jwks(&c).await);

    a.add_owner("ops").await;
    let key = a.add_agent("bot", "ops", "low", "read:logs").await;
    // B learns of the agent; a task it opens is good on A and C.
    within("agent known on B", BOUND, || async {
        b.open_scope(&key, "bot", "read:logs").await.0 == 200
    })
    .await;
    let (_, t) = b.open_scope(&key, "bot", "read:logs").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    within("task opened on B decides on A", BOUND, || async {
        status(&a, &token).await == 200
    })
    .await;
    within("and on C", BOUND, || async {
        status(&c, &token).await == 200
    })
    .await;

    // Completed on B, refused on A and C.
    let (_, t) = a.open_scope(&key, "bot", "read:logs").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    within("task opened on A decides on B", BOUND, || async {
        status(&b, &token).await == 200
    })
    .await;
    assert_eq!(b.revoke_as_agent(&key, "bot", &token).await.0, 200);
    let on_a = within("completion on B refused on A", BOUND, || async {
        status(&a, &token).await == 401
    })
    .await;
    within("and on C", BOUND, || async {
        status(&c, &token).await == 401
    })
    .await;
    eprintln!("completion on B reached A in {on_a:?}");

    // S7: the kill switch on C ends the agent's tasks everywhere.
    let (_, t) = a.open_scope(&key, "bot", "read:logs").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    within("decides on B", BOUND, || async {
        status(&b, &token).await == 200
    })
    .await;
    let (s, v) = c
        .admin_post("/admin/v1/agents/bot/suspend", serde_json::json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let on_a = within("suspension on C refused on A", BOUND, || async {
        status(&a, &token).await == 401
    })
    .await;
    within("and on B", BOUND, || async {
        status(&b, &token).await == 401
    })
    .await;
    eprintln!("suspension on C reached A in {on_a:?}");
    within(
        "B refuses new tasks of the suspended agent",
        BOUND,
        || async { b.open_scope(&key, "bot", "read:logs").await.0 == 400 },
    )
    .await;
    let (s, _) = c
        .admin_post("/admin/v1/agents/bot/resume", serde_json::json!({}))
        .await;
    assert_eq!(s, 200);

    // S8: a policy change loaded on A revokes the task opened on B, and B and C load it too.
    within("B sees the resumed agent", BOUND, || async {
        b.open_scope(&key, "bot", "read:logs").await.0 == 200
    })
    .await;
    let (_, t) = b.open_scope(&key, "bot", "read:logs").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    within("decides on A", BOUND, || async {
        status(&a, &token).await == 200
    })
    .await;
    a.set_policies(&[(
        "60-no-logs.cedar",
        "@id(\"no-logs-tasks\")\n@reason(\"log access is closed\")\nforbid (principal, action == Mandate::Action::\"open_task\", resource)\nwhen { context.task.granted.contains(\"read:logs\") };\n",
    )]);
    within("policy change on A refused on B", BOUND, || async {
        status(&b, &token).await == 401
    })
    .await;
    let digest = |r: &Broker| {
        let u = format!("{}/healthz", r.url);
        let http = r.http.clone();
        async move {
            http.get(u)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["policy_digest"]
                .clone()
        }
    };
    let want = digest(&a).await;
    within("C loaded the same policies", BOUND, || async {
        digest(&c).await == want
    })
    .await;
    let (s, v) = c.open_scope(&key, "bot", "read:logs").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["mandate_policies"], serde_json::json!(["no-logs-tasks"]));

    // An assertion spent on one replica is refused on another.
    let assertion = a.assertion(&key, "bot");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
        (
            "authorization_details",
            &task_details("x", "ops", &[("reports", &["read"])], 60).to_string(),
        ),
    ];
    // A refuses the task (reports are outside the envelope) but authenticates the agent, which
    // spends the assertion; B then refuses the assertion itself.
    let (s1, v1) = a.token_form(&form, None).await;
    assert_eq!(s1, 400, "{v1}");
    assert_eq!(
        v1["mandate_policies"],
        serde_json::json!(["mandate:envelope"])
    );
    let (s2, v) = b.token_form(&form, None).await;
    assert_eq!(s2, 401, "{v}");
    assert!(v["error_description"].as_str().unwrap().contains("replay"));

    // A DPoP proof spent at one replica's decision point is refused at another's.
    let reports = b.add_agent("bound", "ops", "low", "read:reports").await;
    within("A knows the bound agent", BOUND, || async {
        a.open_task(
            &reports,
            "bound",
            task_details("r", "ops", &[("reports", &["read"])], 60),
            false,
        )
        .await
        .0 == 200
    })
    .await;
    let proof = reports
        .dpop_proof("POST", "http://mandate-replicas.test/oauth/token", None)
        .unwrap();
    let assertion = a.assertion(&reports, "bound");
    let details = task_details("r", "ops", &[("reports", &["read"])], 60).to_string();
    let (s, v) = a
        .token_form(
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion.as_str()),
                ("authorization_details", details.as_str()),
            ],
            Some(&proof),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let bound = v["access_token"].as_str().unwrap().to_string();
    let proof = reports
        .dpop_proof(
            "POST",
            "http://mandate-replicas.test/v1/decide",
            Some(&bound),
        )
        .unwrap();
    let ask = |r: &Broker| {
        let (http, url) = (r.http.clone(), format!("{}/v1/decide", r.url));
        let (bound, proof) = (bound.clone(), proof.clone());
        async move {
            let resp = http
                .post(url)
                .header("Authorization", format!("DPoP {bound}"))
                .header("DPoP", proof)
                .json(&serde_json::json!({"action": "read", "resource": {"type": "resource", "id": "reports"}}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    within("B knows the bound task", BOUND, || async {
        let r = b
            .http
            .post(format!("{}/v1/decide", b.url))
            .header("Authorization", format!("DPoP {bound}"))
            .json(&serde_json::json!({"action": "read", "resource": {"type": "resource", "id": "reports"}}))
            .send()
            .await
            .unwrap();
        // Known: refused for the missing proof rather than for an unknown task.
        r.text().await.unwrap().contains("DPoP proof is required")
    })
    .await;
    let (s, v) = ask(&a).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["decision"], "allow");
    let (s, v) = ask(&b).await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("replay"),
        "{v}"
    );

    // Key rotation on B: all replicas sign with the new key and still accept the old one.
    let (s, v) = b
        .admin_post("/admin/v1/keys/rotate", serde_json::json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let new_kid = v["kid"].as_str().unwrap().to_string();
    within("A publishes both keys", BOUND, || async {
        let j = jwks(&a).await;
        let kids: Vec<&str> = j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        kids.len() == 2 && kids.contains(&new_kid.as_str())
    })
    .await;

    // One audit chain across the three writers.
    assert_chain_verifies(&a, &url);
}

/// A TCP relay between one replica and PostgreSQL that the test can cut and restore.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (flag, list) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(h);
            }
        });
        Relay { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn replicas_survive_a_killed_peer_and_fail_closed_without_the_database() {
    let url = fresh_db().await;
    let kek = kek();
    let mut a = Broker::start_replica(&url, &kek, None, &[]).await;
    let b = Broker::start_replica(&url, &kek, Some(&a.admin_token), &[]).await;
    // C reaches the database through a relay the test controls.
    let hostport = url
        .split("@")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let relay = Relay::start(hostport.clone()).await;
    let via = url.replace(&hostport, &format!("127.0.0.1:{}", relay.port));
    let c = Broker::start_replica(&via, &kek, Some(&a.admin_token), &[]).await;

    a.add_owner("ops").await;
    let key = a.add_agent("bot", "ops", "low", "read:logs").await;
    let (_, t) = a.open_scope(&key, "bot", "read:logs").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    within("decides on B", BOUND, || async {
        status(&b, &token).await == 200
    })
    .await;
    within("decides on C", BOUND, || async {
        status(&c, &token).await == 200
    })
    .await;

    // A dies mid-work: B carries on with A's tasks and opens new ones.
    a.kill().await;
    assert_eq!(status(&b, &token).await, 200);
    assert_eq!(b.open_scope(&key, "bot", "read:logs").await.0, 200);

    // C loses the database: it stops deciding (503) rather than trusting a stale view, while
    // the task is revoked elsewhere.
    relay.cut();
    within("C refuses while cut off", BOUND, || async {
        status(&c, &token).await == 503
    })
    .await;
    let (s, v) = b
        .admin_post("/admin/v1/agents/bot/suspend", serde_json::json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(status(&c, &token).await, 503);
    // Back online, C catches up: the task revoked meanwhile is refused, never allowed.
    relay.restore();
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < BOUND * 2 {
        let (s, v) = c.decide(&token, "read", "resource", "logs").await;
        let _ = v;
        seen.push(s);
        if s == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.last(), Some(&401), "C never caught up: {seen:?}");
    assert!(
        !seen.contains(&200),
        "C allowed a task revoked while it was cut off: {seen:?}"
    );
}

/// A PostgreSQL server of this test's own (the shared one serves other tests running at the same
/// time), started by `scripts/setup-postgres` and stopped on drop.
struct OwnServer {
    state: tempfile::TempDir,
    url: String,
}

impl OwnServer {
    fn start() -> Self {
        let state = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(common::repo().join("scripts/setup-postgres"))
            .env("MANDATE_PG_STATE", state.path())
            .output()
            .expect("scripts/setup-postgres");
        assert!(
            out.status.success(),
            "setup-postgres: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = std::fs::read_to_string(state.path().join("url"))
            .unwrap()
            .trim()
            .to_string();
        OwnServer { state, url }
    }

    /// Restarts it (clean shutdown, as an operator or a failover would).
    fn restart(&self) {
        let dir = std::fs::read_to_string(self.state.path().join("dir")).unwrap();
        let data = format!("{}/data", dir.trim());
        let pg_ctl = std::fs::read_to_string(format!("{data}/postmaster.opts"))
            .ok()
            .and_then(|o| {
                o.split_whitespace()
                    .next()
                    .map(|b| b.trim_matches('"').to_string())
            })
            .map(|postgres| {
                std::path::Path::new(&postgres)
                    .with_file_name("pg_ctl")
                    .display()
                    .to_string()
            })
            .expect("postmaster.opts names the server binary");
        let mut cmd = if running_as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", &user_of(&data), "--", &pg_ctl]);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let out = cmd
            .args(["restart", "-m", "fast", "-w", "-t", "60", "-D", &data, "-l"])
            .arg(format!("{}/server.log", dir.trim()))
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::repo().join("scripts/stop-postgres"))
            .env("MANDATE_PG_STATE", self.state.path())
            .output();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn user_of(path: &str) -> String {
    let out = std::process::Command::new("stat")
        .args(["-c", "%U", path])
        .output()
        .expect("stat");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_database_restart_mid_load_loses_no_acknowledged_write() {
    let server = Arc::new(tokio::task::spawn_blocking(OwnServer::start).await.unwrap());
    let url = server.url.clone();
    let kek = kek();
    let a = Broker::start_replica(&url, &kek, None, &[]).await;
    let b = Broker::start_replica(&url, &kek, Some(&a.admin_token), &[]).await;
    a.add_owner("ops").await;
    let key = Arc::new(a.add_agent("bot", "ops", "low", "read:logs").await);
    within("B knows the agent", BOUND, || async {
        b.open_scope(&key, "bot", "read:logs").await.0 == 200
    })
    .await;
    // A task that will be revoked while the database is restarting.
    let (_, t) = a.open_scope(&key, "bot", "read:logs").await;
    let victim = t["access_token"].as_str().unwrap().to_string();
    within("B decides it", BOUND, || async {
        status(&b, &victim).await == 200
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for r in [&a, &b] {
        let (url, issuer) = (r.url.clone(), r.issuer.clone().unwrap());
        let (stop, acked, key) = (stop.clone(), acked.clone(), key.clone());
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                let assertion = key
                    .assertion("bot", &format!("{issuer}/oauth/token"), 60)
                    .unwrap();
                let sent = http
                    .post(format!("{url}/oauth/token"))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_assertion_type", JWT_BEARER),
                        ("client_assertion", assertion.as_str()),
                        ("scope", "read:logs"),
                    ])
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(v["task_id"].as_str().unwrap().to_string());
                        ok += 1;
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarting = server.clone();
    let restart = tokio::task::spawn_blocking(move || restarting.restart());
    // Revoke the victim as soon as the database takes writes again.
    loop {
        let r = a
            .http
            .post(format!(
                "{}/admin/v1/tasks/{}/revoke",
                a.url,
                t["task_id"].as_str().unwrap()
            ))
            .bearer_auth(&a.admin_token)
            .json(&serde_json::json!({"reason": "revoked during the restart"}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let mut totals = Vec::new();
    for l in load {
        totals.push(l.await.unwrap());
    }
    eprintln!("token requests (ok, failed) per replica through the restart: {totals:?}");
    assert!(totals.iter().all(|(ok, _)| *ok > 0));

    // Once the revocation was acknowledged and the replicas had a second to follow, neither
    // allows the victim.
    assert_eq!(status(&a, &victim).await, 401);
    assert_eq!(status(&b, &victim).await, 401);
    // Every acknowledged task is in the store, and the chain verifies.
    let mut db = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    let stored: Vec<(String,)> = sqlx::query_as("SELECT id FROM tasks")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = stored.into_iter().map(|r| r.0).collect();
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_chain_verifies(&a, &url);
}

#[tokio::test]
async fn replicas_reach_postgresql_over_verified_tls() {
    let server = tokio::task::spawn_blocking(OwnServer::start).await.unwrap();
    let certs = tempfile::tempdir().unwrap();
    let dir = std::fs::read_to_string(server.state.path().join("dir")).unwrap();
    let data = format!("{}/data", dir.trim());
    // A CA, the server's certificate for 127.0.0.1 signed by it, and another CA that signed
    // nothing here.
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(certs.path())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "stranger"] {
        let (key, crt, subj) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN={ca}"),
        );
        let mut args = vec!["req", "-x509", "-days", "1", "-subj", &subj];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(&args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(&args);
    std::fs::write(
        certs.path().join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ]);
    // The server reads its key as its own user, mode 0600.
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.path().join(f), format!("{data}/{f}")).unwrap();
    }
    if running_as_root() {
        let owner = user_of(&data);
        let out = std::process::Command::new("chown")
            .arg(&owner)
            .arg(format!("{data}/server.crt"))
            .arg(format!("{data}/server.key"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    std::process::Command::new("chmod")
        .args(["600", &format!("{data}/server.key")])
        .output()
        .unwrap();
    let mut admin = sqlx::postgres::PgConnection::connect(&server.url)
        .await
        .unwrap();
    for stmt in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(stmt))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let root = certs.path().join("ca.crt");
    let tls = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url,
        root.display()
    );
    let kek = kek();
    let a = Broker::start_replica(&tls, &kek, None, &[]).await;
    a.add_owner("ops").await;
    let key = a.add_agent("bot", "ops", "low", "read:logs").await;
    let (s, t) = a.open_scope(&key, "bot", "read:logs").await;
    assert_eq!(s, 200, "{t}");
    // Every connection of the replica is encrypted.
    let (plain, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'mandate'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(plain, 0);
    assert!(encrypted >= 1);

    // A server whose certificate the configured root did not sign is refused at start.
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url,
        certs.path().join("stranger.crt").display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &wrong])
        .arg("--data-dir")
        .arg(dir.path())
        .env("MANDATE_KEK", &kek)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_lease_per_task_and_revoke_it_once() {
    let store = fresh_db().await;
    let target = fresh_db().await;
    let kek = kek();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[[credentials]]\nname = \"logs_db\"\nkind = \"postgres\"\nadmin_secret = \"logs_admin\"\n\
         [[credentials.grants]]\nscope = \"read:logs\"\nprivileges = [\"SELECT\"]\ntables = [\"logs\"]\n",
    )
    .unwrap();
    {
        let mut c = sqlx::postgres::PgConnection::connect(&target)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE logs (line TEXT)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let with_cfg = ["--config", cfg.to_str().unwrap()];
    let a = Broker::start_replica(&store, &kek, None, &with_cfg).await;
    let policies = a.data_dir().join("policies");
    let shared = [
        "--config",
        cfg.to_str().unwrap(),
        "--policy-dir",
        policies.to_str().unwrap(),
    ];
    let b = Broker::start_replica(&store, &kek, Some(&a.admin_token), &shared).await;
    // The admin URL is a brokered secret: sealed in the shared store, read by both.
    a.set_secret("logs_admin", &target);
    a.add_owner("ops").await;
    let key = a.add_agent("bot", "ops", "low", "read:logs").await;
    let (_, t) = a.open_scope(&key, "bot", "read:logs").await;
    let token = t["access_token"].as_str().unwrap().to_string();

    // Made on A; B hands out the same lease, opened from the store.
    let (st, on_a) = a.fetch_credential(Some(&token), "logs_db").await;
    assert_eq!(st, 200, "{on_a}");
    within("B knows the task", BOUND, || async {
        b.fetch_credential(Some(&token), "logs_db").await.0 == 200
    })
    .await;
    let (_, on_b) = b.fetch_credential(Some(&token), "logs_db").await;
    assert_eq!(on_b["lease_id"], on_a["lease_id"]);
    assert_eq!(on_b["password"], on_a["password"]);
    let role = on_a["username"].as_str().unwrap().to_string();
    assert!(role_exists(&target, &role).await);

    // Completed on B: dropped, by whichever replica's reaper gets there, and recorded once.
    assert_eq!(b.revoke_as_agent(&key, "bot", &token).await.0, 200);
    within(
        "role dropped after completion on the other replica",
        BOUND,
        || async { !role_exists(&target, &role).await },
    )
    .await;
    within("lease recorded revoked", BOUND, || async {
        a.admin_get("/admin/v1/leases?open=true").await.1 == serde_json::json!([])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, audit) = a.admin_get("/admin/v1/leases").await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    let out = std::process::Command::new(common::bin())
        .arg("--data-dir")
        .arg(a.data_dir())
        .args(["audit", "export", "--format", "jsonl"])
        .env("MANDATE_STORE", &store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease = on_a["lease_id"].as_str().unwrap();
    let revoked = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .filter(|e| e["kind"] == "lease_revoked" && e["detail"]["lease"] == lease)
        .count();
    assert_eq!(
        revoked, 1,
        "a lease is revoked once, whichever replica does it"
    );
    assert_chain_verifies(&a, &store);
}
