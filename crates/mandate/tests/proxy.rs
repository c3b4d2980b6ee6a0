//! The HTTP reverse proxy tried as an attacker would: raw request targets sent over TCP, with no
//! client normalising them, against a real `mandate serve` fronting an upstream that records
//! exactly what reached it. Each hostile target is refused, or reaches only the routed path.

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

use common::Broker;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one request that reached the upstream looked like.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

const SECRET: &str = "upstream-api-key-7f3a9c";

/// An upstream HTTP API on loopback that records every request it reads. Its answer depends on
/// the path: `/base/files/big` streams a large chunked body (with the brokered secret split
/// across two chunks and an e-mail address near the end), `/base/files/sse` an event stream
/// whose second event waits for the test, anything else a small JSON body and a few headers the
/// proxy must not pass back.
async fn upstream(sse_go: Arc<tokio::sync::Notify>) -> (String, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/base", listener.local_addr().unwrap());
    let log: Log = Log::default();
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let sse_go = sse_go.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let first: Vec<String> = lines
                    .next()
                    .unwrap_or_default()
                    .split(' ')
                    .map(str::to_string)
                    .collect();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let target = first.get(1).cloned().unwrap_or_default();
                seen.lock().unwrap().push(Seen {
                    method: first.first().cloned().unwrap_or_default(),
                    target: target.clone(),
                    headers,
                    body: String::from_utf8_lossy(&body).to_string(),
                });
                if target == "/base/files/big" {
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                        .await;
                    let filler = "x".repeat(40_000);
                    let half = SECRET.len() / 2;
                    let pieces = [
                        filler.clone(),
                        format!("{filler}key={}", &SECRET[..half]),
                        format!("{}; {filler}", &SECRET[half..]),
                        format!("{filler}{filler}{filler} contact: leak@customer.example end"),
                    ];
                    for p in pieces {
                        let _ = sock
                            .write_all(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes())
                            .await;
                        let _ = sock.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                } else if target == "/base/files/sse" {
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                        .await;
                    let ev = "data: first\n\n";
                    let _ = sock
                        .write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                        .await;
                    let _ = sock.flush().await;
                    sse_go.notified().await;
                    let ev = "data: second\n\n";
                    let _ = sock
                        .write_all(format!("{:x}\r\n{ev}\r\n0\r\n\r\n", ev.len()).as_bytes())
                        .await;
                } else {
                    let body = json!({"ok": true, "echo_auth": "seen"}).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nset-cookie: session=upstream-session\r\nx-internal-host: db-7.internal\r\netag: \"v1\"\r\nx-request-id: r-1\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                }
            });
        }
    });
    (url, log)
}

struct Setup {
    b: Broker,
    token: String,
    log: Log,
    sse_go: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
}

async fn setup(scope: &str, max_response: Option<usize>) -> Setup {
    let sse_go = Arc::new(tokio::sync::Notify::new());
    let (url, log) = upstream(sse_go.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    let max = max_response
        .map(|m| format!("max_response_bytes = {m}\n"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            r#"
[[gateway.http]]
name = "api"
url = "{url}"
headers = {{ Authorization = "Bearer ${{secret:api_key}}" }}
classifiers = ["email"]
request_headers = ["x-trace"]
response_headers = ["x-request-id"]
{max}
[[gateway.http.routes]]
method = "GET"
path = "/tickets/{{id}}"
action = "read"
resource = "tickets"
[[gateway.http.routes]]
method = "POST"
path = "/refunds"
action = "call"
resource = "refund"
[[gateway.http.routes]]
method = "GET"
path = "/files/{{name}}"
action = "read"
resource = "files"
"#
        ),
    )
    .unwrap();
    let b = Broker::start_with(&["--config", path.to_str().unwrap()]).await;
    b.set_secret("api_key", SECRET);
    b.add_owner("ops").await;
    let key = b
        .add_agent(
            "support",
            "ops",
            "low",
            "read:tickets call:refund read:files",
        )
        .await;
    let (s, t) = b.open_scope(&key, "support", scope).await;
    assert_eq!(s, 200, "{t}");
    Setup {
        token: t["access_token"].as_str().unwrap().to_string(),
        b,
        log,
        sse_go,
        _dir: dir,
    }
}

/// Sends `head` (a request line and headers, no normalisation) and returns the status and body.
async fn raw(b: &Broker, head: &str) -> (u16, String) {
    let addr = b.url.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn get(target: &str, b: &Broker, token: &str) -> String {
    let host = b.url.trim_start_matches("http://");
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
}

/// Percent-decodes one path segment the way an upstream would.
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap();
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn hostile_targets_are_refused_or_reach_only_the_routed_path() {
    let s = setup("read:tickets", None).await;
    let hostile = [
        // The table of the report.
        "/http/api/tickets/..%5C..%5Cadmin%5Csecret",
        "/http/api/tickets/..\\..\\admin",
        "/http/api/tickets/..",
        "/http/api/tickets/%2e%2e",
        "/http/api/tickets/1%3Fadmin=true%26x=1",
        "/http/api/tickets/%00",
        // Dot segments, encoded and not.
        "/http/api/tickets/.",
        "/http/api/tickets/%2e",
        "/http/api/tickets/%2E%2E",
        "/http/api/tickets/.%2e",
        "/http/api/tickets/%2e.",
        "/http/api/tickets/1/..",
        "/http/api/tickets/1/.",
        "/http/api/tickets/1/../../admin",
        "/http/api/../api/tickets/1",
        "/http/api/tickets/..%2f..%2fadmin",
        "/http/api/tickets/..%2F",
        "/http/api/tickets/1%2F..%2F..%2Fadmin",
        // Mixed and doubled slashes.
        "/http/api/tickets//1",
        "/http/api/tickets/1//",
        "/http/api//tickets/1",
        "/http/api/tickets\\1",
        "/http/api/tickets/1%5c",
        "/http/api/tickets/%2e%2e%5c",
        // Matrix parameters and path-parameter confusion.
        "/http/api/tickets/1;admin=true",
        "/http/api/tickets/..;/admin",
        "/http/api/tickets/1;",
        "/http/api/tickets/1%3B",
        "/http/api;x/tickets/1",
        // Fragments and queries smuggled into a segment.
        "/http/api/tickets/1%23frag",
        "/http/api/tickets/1%3f",
        // Double encoding.
        "/http/api/tickets/%252e%252e",
        "/http/api/tickets/%252f",
        "/http/api/tickets/%25",
        "/http/api/tickets/%25%32%65",
        // Overlong and broken UTF-8.
        "/http/api/tickets/%c0%ae%c0%ae",
        "/http/api/tickets/%c0%af",
        "/http/api/tickets/%e0%80%af",
        "/http/api/tickets/%c1%9c",
        "/http/api/tickets/%ff",
        "/http/api/tickets/%ed%a0%80",
        // Look-alikes some servers fold into `/`, `\` or `.`.
        "/http/api/tickets/%ef%bc%8fadmin",
        "/http/api/tickets/%e2%88%95admin",
        "/http/api/tickets/%ef%bc%bcadmin",
        "/http/api/tickets/%ef%bc%8e%ef%bc%8e",
        "/http/api/tickets/1%e2%80%8b",
        // Control characters and header injection.
        "/http/api/tickets/1%0d%0aX-Injected:%20yes",
        "/http/api/tickets/%0a",
        "/http/api/tickets/%09",
        "/http/api/tickets/%7f",
        "/http/api/tickets/%c2%85",
        "/http/api/tickets/..%00/",
        // Malformed escapes.
        "/http/api/tickets/%zz",
        "/http/api/tickets/%2",
        "/http/api/tickets/%",
        "/http/api/tickets/%u002e%u002e",
        // Other routes' shapes and prefixes.
        "/http/api/tickets/1/",
        "/http/api/tickets/1/2",
        "/http/api/%74ickets/1",
        "/http/%61pi/tickets/1",
        "/http/API/tickets/1",
        // Queries that would mean different things to different servers.
        "/http/api/tickets/1?a=1&a=2",
        "/http/api/tickets/1?a=%00",
        "/http/api/tickets/1?=x",
        "/http/api/tickets/1?a=%zz",
        // Allowed shapes, which must arrive exactly as routed.
        "/http/api/tickets/1",
        "/http/api/tickets/1%20%20",
        "/http/api/tickets/...",
        "/http/api/tickets/.hidden",
        "/http/api/tickets/1%2e",
        "/http/api/tickets/~admin",
        "/http/api/tickets/T-1!$&'()*+,=:@",
        "/http/api/tickets/%41%42",
        "/http/api/tickets/1?admin=true",
        "/http/api/tickets/1?a=x%26y&b=..%2f..",
        "/http/api/tickets/1?",
        "/http/api/tickets/1?&&",
        "/http/api/tickets/1?q=a+b",
    ];
    assert!(hostile.len() >= 60);
    let mut refused = 0;
    let mut forwarded = 0;
    for target in hostile {
        let before = s.log.lock().unwrap().len();
        let audit_before = s.b.audit_kind("gateway_call").len();
        let (status, body) = raw(&s.b, &get(target, &s.b, &s.token)).await;
        let reached: Vec<Seen> = s.log.lock().unwrap()[before..].to_vec();
        if status != 200 {
            assert!(
                (400..500).contains(&status),
                "{target}: status {status}, {body}"
            );
            assert!(
                reached.is_empty(),
                "{target} was refused ({status}) yet reached {reached:?}"
            );
            refused += 1;
            continue;
        }
        forwarded += 1;
        assert_eq!(reached.len(), 1, "{target}: {reached:?}");
        let seen = &reached[0];
        // Only one segment below /base/tickets/, which decodes to no separator or dot segment.
        let (path, query) = seen.target.split_once('?').unwrap_or((&seen.target, ""));
        let seg = path
            .strip_prefix("/base/tickets/")
            .unwrap_or_else(|| panic!("{target} reached {}", seen.target));
        assert!(
            !seg.is_empty() && !seg.contains('/'),
            "{target} → {}",
            seen.target
        );
        let decoded = decode(seg);
        assert!(
            !decoded.contains(&b'/')
                && !decoded.contains(&b'\\')
                && decoded != b".."
                && decoded != b".",
            "{target} → {}",
            seen.target
        );
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
        // The audit names exactly what the upstream received.
        let calls = s.b.audit_kind("gateway_call");
        assert_eq!(calls.len(), audit_before + 1);
        let d = &calls.last().unwrap()["detail"];
        assert_eq!(d["outcome"], "forwarded", "{target}");
        assert_eq!(d["upstream_path"], path, "{target}");
        if query.is_empty() {
            assert!(
                d.get("upstream_query").is_none_or(Value::is_null),
                "{target}: {d}"
            );
        } else {
            assert_eq!(d["upstream_query"], query, "{target}");
        }
    }
    assert!(refused >= 55, "refused {refused}");
    assert!(forwarded >= 10, "forwarded {forwarded}");
    // A few exact upstream targets.
    let targets: Vec<String> = s
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|x| x.target.clone())
        .collect();
    for want in [
        "/base/tickets/1",
        "/base/tickets/1%20%20",
        "/base/tickets/1?admin=true",
        "/base/tickets/1?a=x%26y&b=..%2F..",
        "/base/tickets/1?q=a%20b",
        "/base/tickets/AB",
        "/base/tickets/T-1%21%24%26%27%28%29%2A%2B%2C%3D%3A%40",
    ] {
        assert!(
            targets.iter().any(|t| t == want),
            "{want} not in {targets:?}"
        );
    }
    // Refusals of malformed targets are audited with the target.
    let rejected = s.b.audit_kind("request_rejected");
    assert!(
        rejected.iter().any(|e| e["resource"]
            .as_str()
            .unwrap_or("")
            .contains("..%5C..%5Cadmin")),
        "{rejected:?}"
    );
}

#[tokio::test]
async fn a_route_outside_the_task_is_denied_and_bodies_are_judged() {
    let s = setup("read:tickets", None).await;
    let host = s.b.url.trim_start_matches("http://").to_string();
    let body = r#"{"amount": 5000}"#;
    let post = format!(
        "POST /http/api/refunds HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.token,
        body.len()
    );
    let (status, text) = raw(&s.b, &post).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("outside the scope"), "{text}");
    assert!(s.log.lock().unwrap().is_empty());
    // A body with a repeated key is refused before anything is decided.
    let dup = r#"{"amount": 5000, "amount": 50}"#;
    let post = format!(
        "POST /http/api/refunds HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{dup}",
        s.token,
        dup.len()
    );
    let (status, text) = raw(&s.b, &post).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("appears twice"), "{text}");
    // The request body limit is stated and enforced.
    let big = "x".repeat(1024 * 1024 + 1);
    let r =
        s.b.http
            .post(format!("{}/http/api/refunds", s.b.url))
            .bearer_auth(&s.token)
            .body(big)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("larger than 1048576 bytes")
    );
}

#[tokio::test]
async fn argument_rules_see_the_body_of_a_proxied_call() {
    // With a task pinned to refunds of at most 100, a larger JSON body is denied and a smaller
    // one forwarded unchanged.
    let s2 = setup_pinned().await;
    let (status, text) = post_refund(&s2, r#"{"amount": 5000, "ticket": "T-1"}"#).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("amount"), "{text}");
    assert!(s2.log.lock().unwrap().is_empty());
    let (status, text) = post_refund(&s2, r#"{"amount": 50, "ticket": "T-1"}"#).await;
    assert_eq!(status, 200, "{text}");
    let seen = s2.log.lock().unwrap()[0].clone();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/base/refunds");
    assert_eq!(seen.body, r#"{"amount": 50, "ticket": "T-1"}"#);
    // A number more precise than Mandate compares is refused, not rounded into the rule.
    let (status, text) = post_refund(&s2, r#"{"amount": 100.000000000000001}"#).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("significant digits"), "{text}");
}

async fn setup_pinned() -> Setup {
    let s = setup("read:tickets", None).await;
    let key = s.b.add_agent("refunder", "ops", "low", "call:refund").await;
    let details = json!([{"type": "mandate_task", "intent": "refund ticket T-1", "ttl": 300,
        "access": [{"identifier": "refund", "actions": ["call"], "arguments": {"amount": {"max": 100}}}]}]);
    let (st, t) = s.b.open_task(&key, "refunder", details, false).await;
    assert_eq!(st, 200, "{t}");
    Setup {
        token: t["access_token"].as_str().unwrap().to_string(),
        ..s
    }
}

async fn post_refund(s: &Setup, body: &str) -> (u16, String) {
    let host = s.b.url.trim_start_matches("http://");
    raw(
        &s.b,
        &format!(
            "POST /http/api/refunds HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.token,
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn headers_follow_the_documented_policy() {
    let s = setup("read:tickets", None).await;
    let host = s.b.url.trim_start_matches("http://");
    let head = format!(
        "GET /http/api/tickets/7 HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nCookie: agent-session=1\r\nX-Forwarded-For: 10.0.0.1\r\nProxy-Authorization: Basic eA==\r\nX-Trace: t-42\r\nX-Unlisted: no\r\nAccept: application/json\r\nIf-None-Match: \"v0\"\r\nConnection: close, accept\r\n\r\n",
        s.token
    );
    let addr = s.b.url.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.unwrap();
    let resp = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(resp.starts_with("http/1.1 200"), "{resp}");
    let seen = s.log.lock().unwrap()[0].clone();
    // The agent's credential, cookies, forwarding and proxy headers never travel; the listed
    // extra header does; a header the Connection header names is hop-by-hop.
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert!(!seen.headers.iter().any(|(_, v)| v.contains(&s.token)));
    for gone in [
        "cookie",
        "x-forwarded-for",
        "proxy-authorization",
        "x-unlisted",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} was forwarded: {seen:?}"
        );
    }
    assert_ne!(seen.header("accept"), Some("application/json"), "{seen:?}");
    assert_eq!(seen.header("x-trace"), Some("t-42"));
    assert_eq!(seen.header("if-none-match"), Some("\"v0\""));
    // Of the response: the upstream's cookie and internal headers stay behind.
    assert!(!resp.contains("set-cookie"), "{resp}");
    assert!(!resp.contains("x-internal-host"), "{resp}");
    assert!(resp.contains("etag: \"v1\""), "{resp}");
    assert!(resp.contains("x-request-id: r-1"), "{resp}");
}

#[tokio::test]
async fn large_responses_stream_scrubbed_and_labelled() {
    let s = setup("read:files", None).await;
    let r =
        s.b.http
            .get(format!("{}/http/api/files/big", s.b.url))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    // The secret, split across two upstream chunks, is scrubbed; the rest arrives whole.
    assert!(!body.contains(SECRET), "secret leaked");
    assert!(
        body.contains("key=[redacted by mandate];"),
        "scrubbed marker missing"
    );
    assert!(body.ends_with(" contact: leak@customer.example end"));
    assert_eq!(body.matches(&"x".repeat(40_000)).count(), 6);
    // The decision was recorded before the stream; the e-mail found near its end labelled the
    // task (committed before that part was released).
    let calls = s.b.audit_kind("gateway_call");
    assert_eq!(
        calls.last().unwrap()["detail"]["upstream_path"],
        "/base/files/big"
    );
    let results = s.b.audit_kind("gateway_result");
    assert_eq!(
        results.last().unwrap()["detail"]["outcome"],
        "scrubbed",
        "{results:?}"
    );
    let reports = s.b.audit_kind("flow_reported");
    assert!(
        reports
            .iter()
            .any(|e| e["detail"]["flow_added"]["data_read"] == json!(["pii"])),
        "{reports:?}"
    );
    let task = s.b.cli_json(&["task", "list"]);
    assert!(task.to_string().contains("pii"), "{task}");
}

#[tokio::test]
async fn responses_past_the_limit_are_cut_and_recorded() {
    let s = setup("read:files", Some(100_000)).await;
    let r =
        s.b.http
            .get(format!("{}/http/api/files/big", s.b.url))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    // The body breaks off: the client sees an error, not a clean end.
    assert!(r.bytes().await.is_err());
    let mut cut = Vec::new();
    for _ in 0..50 {
        cut = s.b.audit_kind("gateway_result");
        if !cut.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cut.len(), 1);
    assert!(
        cut[0]["reason"]
            .as_str()
            .unwrap()
            .contains("more than 100000 bytes")
    );
}

#[tokio::test]
async fn event_streams_are_passed_through_as_they_come() {
    let s = setup("read:files", None).await;
    let mut r =
        s.b.http
            .get(format!("{}/http/api/files/sse", s.b.url))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    // The first event arrives while the upstream still holds the second: nothing is buffered.
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("the first event was held back")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    s.sse_go.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"data: second\n\n");
}
