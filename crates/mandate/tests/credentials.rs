//! Dynamic credentials through real parts: a real `mandate serve` with its gateway, the real
//! PostgreSQL server `scripts/test` starts (password logins checked with SCRAM for every role but
//! the test superuser), and an upstream HTTP API on loopback that uses what the gateway sends it.
//!
//! A task that reads `orders` through the gateway gets a PostgreSQL role of its own with only the
//! privileges its scope maps to; the role is dropped, and its open sessions terminated, when the
//! task ends; a restart revokes leases whose task ended while no process was running, and leases
//! a stopped process left half made. A per-task JWT for an API verifies against Mandate's JWKS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Broker, role_exists, within};
use serde_json::{Value, json};
use sqlx::{Connection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound for a revocation to be seen, so a loaded machine does not fail the test; the
/// measured time is printed.
const BOUND: Duration = Duration::from_secs(10);

/// A fresh database on the test server with an `orders` and a `customers` table.
async fn fresh_db() -> String {
    let url = common::fresh_postgres_db("c").await;
    let mut conn = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, total INT);
         INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30);
         CREATE TABLE customers (id INT PRIMARY KEY, card TEXT);
         INSERT INTO customers VALUES (1, '4111111111111111');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    url
}

type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An upstream API on loopback. For every request it records the headers; when the request
/// carries `x-db-url` it connects to PostgreSQL with it and answers what that login may do:
/// who it is, how many orders it reads, and whether reading customers or writing orders is
/// refused.
async fn upstream() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let headers: Vec<(String, String)> = head
                    .split("\r\n")
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                log.lock().unwrap().push(headers.clone());
                let db = headers
                    .iter()
                    .find(|(k, _)| k == "x-db-url")
                    .map(|(_, v)| v.clone());
                let body = match db {
                    Some(db) => match sqlx::postgres::PgConnection::connect(&db).await {
                        Ok(mut c) => {
                            let user: String = sqlx::query("SELECT current_user::text")
                                .fetch_one(&mut c)
                                .await
                                .unwrap()
                                .get(0);
                            let orders: i64 = sqlx::query("SELECT count(*) FROM orders")
                                .fetch_one(&mut c)
                                .await
                                .unwrap()
                                .get(0);
                            let customers = sqlx::query("SELECT count(*) FROM customers")
                                .fetch_one(&mut c)
                                .await
                                .err()
                                .map(|e| e.to_string());
                            let insert = sqlx::query("INSERT INTO orders VALUES (9, 90)")
                                .execute(&mut c)
                                .await
                                .err()
                                .map(|e| e.to_string());
                            let _ = c.close().await;
                            json!({"user": user, "orders": orders,
                                   "customers_error": customers, "insert_error": insert})
                        }
                        Err(e) => json!({"connect_error": e.to_string()}),
                    },
                    None => json!({"ok": true}),
                }
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

fn config(dir: &std::path::Path, upstream: &str) -> std::path::PathBuf {
    let path = dir.join("m.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[credentials]]
name = "orders_db"
kind = "postgres"
admin_secret = "orders_db_admin"
[[credentials.grants]]
scope = "read:orders"
privileges = ["SELECT"]
tables = ["orders"]
[[credentials.grants]]
scope = "write:orders"
privileges = ["INSERT", "UPDATE"]
tables = ["orders"]

[[credentials]]
name = "tickets_jwt"
kind = "jwt"
audience = "https://tickets.example"
max_ttl = 120
[[credentials.grants]]
scope = "read:tickets"

[[credentials]]
name = "short_jwt"
kind = "jwt"
audience = "https://tickets.example"
max_ttl = 1
[[credentials.grants]]
scope = "read:tickets"

[[gateway.http]]
name = "shop"
url = "{upstream}"
headers = {{ X-Db-Url = "${{cred:orders_db}}" }}
[[gateway.http.routes]]
method = "GET"
path = "/orders"
action = "read"
resource = "orders"

[[gateway.http]]
name = "tickets"
url = "{upstream}"
headers = {{ Authorization = "Bearer ${{cred:tickets_jwt}}" }}
[[gateway.http.routes]]
method = "GET"
path = "/tickets/{{id}}"
action = "read"
resource = "tickets"

[[gateway.http]]
name = "tickets_short"
url = "{upstream}"
headers = {{ Authorization = "Bearer ${{cred:short_jwt}}" }}
[[gateway.http.routes]]
method = "GET"
path = "/tickets/{{id}}"
action = "read"
resource = "tickets"
"#
        ),
    )
    .unwrap();
    path
}

struct Setup {
    b: Broker,
    key: mandate_crypto::client::AgentKey,
    db: String,
    seen: Seen,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let db = fresh_db().await;
    let (url, seen) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), &url);
    let b = Broker::start_with(&["--config", path.to_str().unwrap()]).await;
    b.set_secret("orders_db_admin", &db);
    b.add_owner("ops").await;
    let key = b
        .add_agent(
            "analyst",
            "ops",
            "low",
            "read:orders write:orders read:tickets",
        )
        .await;
    Setup {
        b,
        key,
        db,
        seen,
        dir,
    }
}

async fn gateway_get(b: &Broker, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", b.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reading_orders_gets_its_own_role_which_ends_with_it() {
    let s = setup().await;
    let (st, t) = s.b.open_scope(&s.key, "analyst", "read:orders").await;
    assert_eq!(st, 200, "{t}");
    let token = t["access_token"].as_str().unwrap().to_string();
    let task = t["task_id"].as_str().unwrap().to_string();

    // Through the gateway: the upstream connects with what `${cred:orders_db}` became.
    let (st, v) = gateway_get(&s.b, &token, "/http/shop/orders").await;
    assert_eq!(st, 200, "{v}");
    let role = v["user"].as_str().unwrap().to_string();
    assert!(role.starts_with("mandate_"), "{v}");
    assert_eq!(v["orders"], 3, "{v}");
    // Only what the scope maps to: no customers, no writes (the task holds read:orders only).
    assert!(
        v["customers_error"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );
    assert!(
        v["insert_error"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );
    // A second call reuses the task's role.
    let (_, again) = gateway_get(&s.b, &token, "/http/shop/orders").await;
    assert_eq!(again["user"], role.as_str());

    // The agent can fetch the same lease itself, and holds a session open with it.
    let (st, c) = s.b.fetch_credential(Some(&token), "orders_db").await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["username"], role.as_str());
    assert_eq!(c["kind"], "postgres");
    assert_eq!(c["grants"], json!(["SELECT ON orders"]));
    let login = c["url"].as_str().unwrap().to_string();
    assert!(!login.contains("orders_db_admin"));
    let mut held = sqlx::postgres::PgConnection::connect(&login).await.unwrap();
    let n: i64 = sqlx::query("SELECT count(*) FROM orders")
        .fetch_one(&mut held)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    // The password alone is what lets it in: a wrong one is refused (SCRAM on this server).
    let wrong = login.replace(c["password"].as_str().unwrap(), "wrong-password");
    assert!(sqlx::postgres::PgConnection::connect(&wrong).await.is_err());

    // Governance lists the live lease on the agent.
    let (_, leases) = s.b.admin_get("/admin/v1/leases?open=true").await;
    let leases = leases.as_array().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["handle"], role.as_str());
    assert_eq!(leases[0]["state"], "live");
    assert!(leases[0].get("sealed").is_none());
    let (_, agent) = s.b.admin_get("/admin/v1/agents/analyst").await;
    assert_eq!(agent["leases"][0]["credential"], "orders_db", "{agent}");
    assert_eq!(agent["standing_privilege"], 0, "{agent}");

    // The agent completes its task: the role goes, and the held session is cut.
    let (st, _) = s.b.revoke_as_agent(&s.key, "analyst", &token).await;
    assert_eq!(st, 200);
    let took = within("role dropped after completion", BOUND, || {
        let db = s.db.clone();
        let role = role.clone();
        async move { !role_exists(&db, &role).await }
    })
    .await;
    assert!(took < BOUND);
    assert!(sqlx::postgres::PgConnection::connect(&login).await.is_err());
    assert!(
        sqlx::query("SELECT 1").fetch_one(&mut held).await.is_err(),
        "the role's open session survived its revocation"
    );

    within("lease recorded revoked", BOUND, || async {
        s.b.admin_get("/admin/v1/leases?open=true").await.1 == json!([])
    })
    .await;
    let (_, leases) =
        s.b.admin_get(&format!("/admin/v1/leases?task={task}"))
            .await;
    assert_eq!(leases[0]["state"], "revoked", "{leases}");
    assert_eq!(leases[0]["end_reason"], "its task is completed", "{leases}");
    let (_, open) = s.b.admin_get("/admin/v1/leases?open=true").await;
    assert_eq!(open, json!([]));
    let issued = s.b.audit_kind("lease_issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert!(
        !issued[0]
            .to_string()
            .contains(c["password"].as_str().unwrap())
    );
    assert_eq!(s.b.audit_kind("lease_revoked").len(), 1);
    let fetched = s.b.audit_kind("credential_fetched");
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0]["detail"]["lease"], leases[0]["id"]);
    // The ended task's credential fetches nothing, refused like any ended task's credential.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/credentials/orders_db", s.b.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().contains("invalid_token")),
        "{:?}",
        r.headers()
    );
    // What reached the upstream never reaches the audit.
    assert!(
        !std::fs::read_to_string(s.b.data_dir().join("mandate.db-wal"))
            .unwrap_or_default()
            .contains(c["password"].as_str().unwrap())
    );
    assert!(!s.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_a_credential_is_refused_unless_the_scope_earns_it() {
    let s = setup().await;
    let (_, t) = s.b.open_scope(&s.key, "analyst", "read:tickets").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(s.b.fetch_credential(None, "orders_db").await.0, 401);
    assert_eq!(
        s.b.fetch_credential(Some("not-a-token"), "orders_db")
            .await
            .0,
        401
    );
    assert_eq!(s.b.fetch_credential(Some(token), "no_such").await.0, 404);
    assert_eq!(s.b.fetch_credential(Some(token), "bad%20name").await.0, 404);
    let (st, v) = s.b.fetch_credential(Some(token), "orders_db").await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"], "insufficient_scope");
    // Nothing was made for the refused fetch.
    let (_, leases) = s.b.admin_get("/admin/v1/leases").await;
    assert_eq!(leases, json!([]));
    // The gateway refuses a call whose route the scope lacks before anything is minted.
    let (st, _) = gateway_get(&s.b, token, "/http/shop/orders").await;
    assert_eq!(st, 403);
    assert_eq!(s.b.admin_get("/admin/v1/leases").await.1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_task_jwt_verifies_against_the_jwks_and_carries_the_task() {
    let s = setup().await;
    let (_, t) = s.b.open_scope(&s.key, "analyst", "read:tickets").await;
    let token = t["access_token"].as_str().unwrap();
    let (st, v) = gateway_get(&s.b, token, "/http/tickets/tickets/7").await;
    assert_eq!(st, 200, "{v}");
    let sent = s
        .seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
        .unwrap();
    let jwt = sent.strip_prefix("Bearer ").unwrap();
    assert_ne!(
        jwt, token,
        "the agent's own credential must not reach the API"
    );

    // Verified the way an API would: with the JWKS and nothing else.
    let jwks: jsonwebtoken::jwk::JwkSet =
        reqwest::get(format!("{}/.well-known/jwks.json", s.b.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    val.set_audience(&["https://tickets.example"]);
    val.set_issuer(&[s.b.url.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &val)
        .unwrap()
        .claims;
    assert_eq!(claims["scope"], "read:tickets");
    assert_eq!(claims["task_id"], t["task_id"]);
    assert_eq!(claims["sub"], "analyst");
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert!(exp - iat <= 120, "max_ttl bounds it: {claims}");
    // Another audience refuses it, and Mandate itself does not take it as a task credential.
    val.set_audience(&["https://other.example"]);
    assert!(jsonwebtoken::decode::<Value>(jwt, &key, &val).is_err());
    let (st, _) =
        s.b.decide_call(
            jwt,
            json!({"action": "read", "resource": {"type": "resource", "id": "tickets"}}),
        )
        .await;
    assert_eq!(st, 401);

    let (_, leases) = s.b.admin_get("/admin/v1/leases?open=true").await;
    assert_eq!(leases[0]["kind"], "jwt", "{leases}");
    assert_eq!(leases[0]["handle"], claims["jti"]);

    // An API that wants revocation at once asks introspection (RFC 7662) with its API token.
    let introspect = || async {
        let r = reqwest::Client::new()
            .post(format!("{}/oauth/introspect", s.b.url))
            .bearer_auth(&s.b.admin_token)
            .form(&[("token", jwt)])
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    };
    let v = introspect().await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["aud"], "https://tickets.example");
    let (st, _) = s.b.revoke_as_agent(&s.key, "analyst", token).await;
    assert_eq!(st, 200);
    assert_eq!(introspect().await, json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_revokes_leases_whose_task_ended_meanwhile_and_half_made_ones() {
    let mut s = setup().await;
    let details = common::task_details("nightly export", "reporting", &[("orders", &["read"])], 4);
    let (st, t) = s.b.open_task(&s.key, "analyst", details, false).await;
    assert_eq!(st, 200, "{t}");
    let token = t["access_token"].as_str().unwrap().to_string();
    let (st, c) = s.b.fetch_credential(Some(&token), "orders_db").await;
    assert_eq!(st, 200, "{c}");
    let role = c["username"].as_str().unwrap().to_string();
    assert!(role_exists(&s.db, &role).await);

    // The process dies; while it is down the task's time runs out, and a half-made lease is
    // left as a crash between CREATE ROLE and recording it live would leave it.
    s.b.kill().await;
    let orphan = "mandate_orphan_left_by_a_crash";
    let mut admin = sqlx::postgres::PgConnection::connect(&s.db).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {orphan} LOGIN PASSWORD 'x'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    let task = t["task_id"].as_str().unwrap();
    let agent_lease = json!({
        "id": "0000000000000000000000000000dead", "task": task, "agent": "analyst",
        "credential": "orders_db", "kind": "postgres", "state": "pending", "handle": orphan,
        "grants": ["SELECT ON orders"], "created_at": 1_000, "expires_at": 4_000_000_000_000_i64,
    });
    let mut lite = sqlx::sqlite::SqliteConnection::connect(&format!(
        "sqlite://{}",
        s.b.data_dir().join("mandate.db").display()
    ))
    .await
    .unwrap();
    // The partial index allows one open lease per task and credential: the orphan belongs to
    // another (unknown) task.
    let mut body = agent_lease.clone();
    body["task"] = json!("01890000-0000-7000-8000-000000000000");
    sqlx::query(
        "INSERT INTO leases (id, task_id, agent_id, credential, state, created_at, expires_at, body)
         VALUES (?1, ?2, 'analyst', 'orders_db', 'pending', 1000, 4000000000000, ?3)",
    )
    .bind("0000000000000000000000000000dead")
    .bind(body["task"].as_str().unwrap())
    .bind(body.to_string())
    .execute(&mut lite)
    .await
    .unwrap();
    lite.close().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    s.b.kill_and_restart().await;
    within("expired task's role dropped after restart", BOUND, || {
        let db = s.db.clone();
        let role = role.clone();
        async move { !role_exists(&db, &role).await }
    })
    .await;
    within("half-made role dropped after restart", BOUND, || {
        let db = s.db.clone();
        async move { !role_exists(&db, orphan).await }
    })
    .await;
    within("lease recorded revoked", BOUND, || async {
        s.b.admin_get("/admin/v1/leases?open=true").await.1 == json!([])
    })
    .await;
    let (_, all) = s.b.admin_get("/admin/v1/leases").await;
    let reasons: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["end_reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("lifetime ran out")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("never finished")),
        "{reasons:?}"
    );
    let (_, report) = s.b.admin_get("/admin/v1/agents/analyst").await;
    assert_eq!(report["standing_privilege"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_cannot_be_revoked_is_flagged_until_it_is() {
    let s = setup().await;
    let (_, t) = s.b.open_scope(&s.key, "analyst", "read:orders").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let (st, c) = s.b.fetch_credential(Some(&token), "orders_db").await;
    assert_eq!(st, 200, "{c}");
    let role = c["username"].as_str().unwrap().to_string();

    // The admin connection is taken away, then the task ends: the role cannot be dropped.
    let (st, v) = s.b.admin_delete("/admin/v1/secrets/orders_db_admin").await;
    assert!(st < 300, "{v}");
    let (st, _) = s.b.revoke_as_agent(&s.key, "analyst", &token).await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(role_exists(&s.db, &role).await);
    // Governance says so: the lease outlives its task.
    let (_, agent) = s.b.admin_get("/admin/v1/agents/analyst").await;
    assert_eq!(agent["standing_privilege"], 1, "{agent}");
    assert!(
        agent["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("standing-privilege")),
        "{agent}"
    );
    let listed = s.b.cli_json(&["credential", "leases", "--open"]);
    assert_eq!(listed[0]["handle"], role.as_str(), "{listed}");

    // Nothing was lost: once the admin connection is back, the reaper finishes the job.
    s.b.set_secret("orders_db_admin", &s.db);
    within("role dropped once revocation works again", BOUND, || {
        let db = s.db.clone();
        let role = role.clone();
        async move { !role_exists(&db, &role).await }
    })
    .await;
    // The role goes first, then the lease is recorded revoked.
    within("lease recorded revoked", BOUND, || async {
        s.b.admin_get("/admin/v1/leases?open=true").await.1 == json!([])
    })
    .await;
    let (_, agent) = s.b.admin_get("/admin/v1/agents/analyst").await;
    assert_eq!(agent["standing_privilege"], 0, "{agent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_jwt_is_replaced_while_its_task_lives() {
    let s = setup().await;
    let (_, t) = s.b.open_scope(&s.key, "analyst", "read:tickets").await;
    let token = t["access_token"].as_str().unwrap();
    let sent = |n: usize| {
        s.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| h.iter().find(|(k, _)| k == "authorization").cloned())
            .map(|(_, v)| v)
            .nth(n)
            .unwrap()
    };
    let (st, v) = gateway_get(&s.b, token, "/http/tickets_short/tickets/1").await;
    assert_eq!(st, 200, "{v}");
    let first = sent(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (st, v) = gateway_get(&s.b, token, "/http/tickets_short/tickets/2").await;
    assert_eq!(st, 200, "{v}");
    let second = sent(1);
    assert_ne!(first, second, "an expired token was sent again");
    let jti = |h: &str| {
        let payload = h
            .trim_start_matches("Bearer ")
            .split('.')
            .nth(1)
            .unwrap()
            .to_string();
        let v: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        v["jti"].as_str().unwrap().to_string()
    };
    let (_, leases) = s.b.admin_get("/admin/v1/leases").await;
    let by_handle = |h: &str| {
        leases
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["handle"] == h)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_handle(&jti(&first))["state"], "revoked", "{leases}");
    assert_eq!(
        by_handle(&jti(&first))["end_reason"],
        "its lifetime ran out"
    );
    assert_eq!(by_handle(&jti(&second))["state"], "live", "{leases}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_cannot_be_made_leaves_nothing_and_tells_the_agent_little() {
    let s = setup().await;
    // The admin connection points where no server listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.b.set_secret(
        "orders_db_admin",
        &format!("postgres://admin:admin-password-9f2@127.0.0.1:{port}/shop"),
    );
    let (_, t) = s.b.open_scope(&s.key, "analyst", "read:orders").await;
    let token = t["access_token"].as_str().unwrap();
    let (st, v) = s.b.fetch_credential(Some(token), "orders_db").await;
    assert_eq!(st, 503, "{v}");
    let said = v.to_string();
    assert!(
        !said.contains("admin-password") && !said.contains(&port.to_string()),
        "{said}"
    );
    // Whether the role was made cannot be known while the server is unreachable, so the lease
    // stays pending (never live, nothing handed out) until it can be revoked.
    let (_, leases) = s.b.admin_get("/admin/v1/leases").await;
    assert_eq!(leases[0]["state"], "pending", "{leases}");
    let (st, _) = gateway_get(&s.b, token, "/http/shop/orders").await;
    assert_eq!(st, 502);
    // The database is back and the task ends: the reaper finishes the lease.
    s.b.set_secret("orders_db_admin", &s.db);
    let (st, _) = s.b.revoke_as_agent(&s.key, "analyst", token).await;
    assert_eq!(st, 200);
    within("half-made lease revoked", BOUND, || async {
        s.b.admin_get("/admin/v1/leases?open=true").await.1 == json!([])
    })
    .await;
    let (_, leases) = s.b.admin_get("/admin/v1/leases").await;
    assert_eq!(leases[0]["end_reason"], "its task is completed", "{leases}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_revokes_a_lease_whose_grants_the_configuration_changed() {
    let mut s = setup().await;
    let (_, t) = s.b.open_scope(&s.key, "analyst", "read:orders").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let (st, c) = s.b.fetch_credential(Some(&token), "orders_db").await;
    assert_eq!(st, 200, "{c}");
    let role = c["username"].as_str().unwrap().to_string();

    // The operator widens what read:orders maps to, and restarts.
    s.b.kill().await;
    let path = s.dir.path().join("m.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen(
        "privileges = [\"SELECT\"]\ntables = [\"orders\"]",
        "privileges = [\"SELECT\"]\ntables = [\"orders\", \"customers\"]",
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&path, changed).unwrap();
    s.b.kill_and_restart().await;

    within("lease with the old grants revoked", BOUND, || async {
        s.b.admin_get("/admin/v1/leases?open=true").await.1 == json!([])
    })
    .await;
    assert!(!role_exists(&s.db, &role).await);
    let (_, leases) = s.b.admin_get("/admin/v1/leases").await;
    assert_eq!(
        leases[0]["end_reason"], "what its task earns of the credential changed",
        "{leases}"
    );
    // The task goes on, with a role carrying what it earns now.
    let (st, c) = s.b.fetch_credential(Some(&token), "orders_db").await;
    assert_eq!(st, 200, "{c}");
    assert_ne!(c["username"], role.as_str());
    assert_eq!(
        c["grants"],
        json!(["SELECT ON customers", "SELECT ON orders"])
    );
}

/// `mandate serve` with `cfg`: it must refuse to start, saying `why`.
fn refuses_to_start(cfg: &str, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(common::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env_remove("MANDATE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > BOUND {
            let _ = child.kill();
            panic!("mandate serve started with: {cfg}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains(why), "{err}");
}

#[test]
fn credentials_used_where_they_cannot_work_stop_the_start() {
    let ssh = "[[credentials]]\nname = \"host\"\nkind = \"ssh\"\nrevoked_keys_file = \"/tmp/mandate-test-revoked\"\n\
               [[credentials.grants]]\nscope = \"call:deploy\"\nprincipals = [\"deploy\"]\n";
    let api = |header: &str| {
        format!(
            "[[gateway.http]]\nname = \"api\"\nurl = \"http://127.0.0.1:9\"\nheaders = {{ X = \"{header}\" }}\n\
             [[gateway.http.routes]]\nmethod = \"GET\"\npath = \"/x\"\naction = \"read\"\nresource = \"x\"\n"
        )
    };
    refuses_to_start(
        &format!("{ssh}{}", api("${cred:host}")),
        "an ssh credential, which has no header value",
    );
    refuses_to_start(
        &api("${cred:nothing}"),
        "no `[[credentials]]` entry is named `nothing`",
    );
    refuses_to_start(
        "[[gateway.mcp]]\nname = \"notes\"\ncommand = \"true\"\nenv = { DB = \"${cred:db}\" }\n",
        "an MCP upstream is shared by all tasks",
    );
}
