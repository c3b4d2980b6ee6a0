//! The OpenID AuthZEN Authorization API 1.0 front door: request and response shapes, batch
//! semantics, discovery, and errors, against the real server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use common::{Broker, task_details};
use serde_json::{Value, json};

async fn setup() -> (Broker, String) {
    let b = Broker::start().await;
    b.add_owner("support").await;
    let key = b
        .add_agent(
            "helpdesk",
            "support",
            "low",
            "read:cases write:cases read:kb",
        )
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "helpdesk",
            task_details(
                "answer case 8",
                "support",
                &[("cases", &["read"]), ("kb", &["read"])],
                600,
            ),
            false,
        )
        .await;
    (b, t["access_token"].as_str().unwrap().to_string())
}

async fn post(b: &Broker, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = b
        .http
        .post(format!("{}{path}", b.url))
        .header("X-Request-ID", "req-42")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn subject(token: &str) -> Value {
    json!({"type": "agent", "id": "helpdesk", "properties": {"token": token}})
}

#[tokio::test]
async fn discovery_names_the_endpoints() {
    let b = Broker::start().await;
    let v: Value = b
        .http
        .get(format!("{}/.well-known/authzen-configuration", b.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["policy_decision_point"], b.url.as_str());
    assert_eq!(
        v["access_evaluation_endpoint"],
        format!("{}/access/v1/evaluation", b.url)
    );
    assert_eq!(
        v["access_evaluations_endpoint"],
        format!("{}/access/v1/evaluations", b.url)
    );
}

#[tokio::test]
async fn single_evaluations_answer_with_a_boolean_decision() {
    let (b, token) = setup().await;
    let req = |action: &str, id: &str| {
        json!({"subject": subject(&token), "action": {"name": action},
               "resource": {"type": "resource", "id": id}, "context": {"environment": "prod"}})
    };
    let (s, h, v) = post(&b, "/access/v1/evaluation", &req("read", "cases")).await;
    assert_eq!(s, 200);
    assert_eq!(h.get("x-request-id").unwrap(), "req-42");
    assert_eq!(v["decision"], true);
    assert_eq!(v["context"]["policies"], json!(["act-within-task-scope"]));
    let (_, _, v) = post(&b, "/access/v1/evaluation", &req("write", "cases")).await;
    assert_eq!(v["decision"], false);
    assert!(
        v["context"]["reason_admin"]["en"]
            .as_str()
            .unwrap()
            .contains("outside the scope")
    );
    // The same decision path as /v1/decide: both are audited as decisions of the task.
    assert_eq!(b.audit_kind("decision").len(), 2);

    // A refused credential is a `false` decision with the error, not an HTTP failure.
    let mut forged = req("read", "cases");
    forged["subject"]["properties"]["token"] = json!("not-a-token");
    let (s, _, v) = post(&b, "/access/v1/evaluation", &forged).await;
    assert_eq!(s, 200);
    assert_eq!(v["decision"], false);
    assert_eq!(v["context"]["error"]["code"], "invalid_token");
    assert_eq!(v["context"]["error"]["status"], 401);
    // The subject must be the credential's agent.
    let mut other = req("read", "cases");
    other["subject"]["id"] = json!("someone-else");
    let (_, _, v) = post(&b, "/access/v1/evaluation", &other).await;
    assert_eq!(v["decision"], false);
    assert_eq!(v["context"]["error"]["code"], "subject_mismatch");
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let (b, token) = setup().await;
    for (body, why) in [
        (
            json!({"action": {"name": "read"}, "resource": {"type": "resource", "id": "cases"}}),
            "`subject` is missing",
        ),
        (
            json!({"subject": {"type": "agent", "id": "x"}, "action": {"name": "read"}, "resource": {"type": "resource", "id": "cases"}}),
            "subject.properties.token",
        ),
        (
            json!({"subject": subject(&token), "action": {}, "resource": {"type": "resource", "id": "cases"}}),
            "`action.name` is missing",
        ),
        (
            json!({"subject": subject(&token), "action": {"name": "read"}, "resource": {"type": "planet", "id": "mars"}}),
            "`resource.type` `planet`",
        ),
    ] {
        let (s, h, v) = post(&b, "/access/v1/evaluation", &body).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(h.get("x-request-id").unwrap(), "req-42");
        assert!(
            v["error_description"].as_str().unwrap().contains(why),
            "{v} should say {why}"
        );
    }
    let r = b
        .http
        .post(format!("{}/access/v1/evaluation", b.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn batches_apply_defaults_and_the_three_semantics() {
    let (b, token) = setup().await;
    let batch = |semantic: Option<&str>| {
        let mut v = json!({
            "subject": subject(&token),
            "action": {"name": "read"},
            "evaluations": [
                {"resource": {"type": "resource", "id": "cases"}},
                {"resource": {"type": "resource", "id": "secrets"}},
                {"action": {"name": "read"}, "resource": {"type": "resource", "id": "kb"}},
                {"action": {"name": "write"}, "resource": {"type": "resource", "id": "cases"}}
            ]
        });
        if let Some(s) = semantic {
            v["options"] = json!({"evaluations_semantic": s});
        }
        v
    };
    let decisions = |v: &Value| -> Vec<bool> {
        v["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["decision"].as_bool().unwrap())
            .collect()
    };
    let (s, _, v) = post(&b, "/access/v1/evaluations", &batch(None)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(decisions(&v), [true, false, true, false]);
    let (_, _, v) = post(&b, "/access/v1/evaluations", &batch(Some("execute_all"))).await;
    assert_eq!(decisions(&v), [true, false, true, false]);
    let (_, _, v) = post(
        &b,
        "/access/v1/evaluations",
        &batch(Some("deny_on_first_deny")),
    )
    .await;
    assert_eq!(decisions(&v), [true, false]);
    let (_, _, v) = post(
        &b,
        "/access/v1/evaluations",
        &batch(Some("permit_on_first_permit")),
    )
    .await;
    assert_eq!(decisions(&v), [true]);
    let (s, _, v) = post(&b, "/access/v1/evaluations", &batch(Some("sometimes"))).await;
    assert_eq!(s, 400, "{v}");

    // Without items, the request is one evaluation, answered as one.
    let single = json!({"subject": subject(&token), "action": {"name": "read"}, "resource": {"type": "resource", "id": "kb"}});
    let (_, _, v) = post(&b, "/access/v1/evaluations", &single).await;
    assert_eq!(v["decision"], true, "{v}");
    // An item missing what the defaults do not supply is refused in place.
    let partial = json!({"subject": subject(&token), "evaluations": [
        {"action": {"name": "read"}, "resource": {"type": "resource", "id": "kb"}},
        {"resource": {"type": "resource", "id": "kb"}}
    ]});
    let (_, _, v) = post(&b, "/access/v1/evaluations", &partial).await;
    assert_eq!(decisions(&v), [true, false]);
    assert_eq!(v["evaluations"][1]["context"]["error"]["status"], 400);
    assert!(
        v["evaluations"][1]["context"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`action` is missing")
    );
}

#[tokio::test]
async fn search_apis_answer_a_client_written_from_the_specification() {
    let b = Broker::start().await;
    b.add_owner("support").await;
    let key = b
        .add_agent(
            "helpdesk",
            "support",
            "low",
            "read:cases write:cases export:cases read:kb call:search_kb",
        )
        .await;
    let (_, t) = b
        .open_task(
            &key,
            "helpdesk",
            task_details(
                "answer case 8",
                "support",
                &[
                    ("cases", &["read", "write", "export"]),
                    ("kb", &["read"]),
                    ("search_kb", &["call"]),
                ],
                600,
            ),
            false,
        )
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let owner = b.owner_token("support").await;
    let out = tokio::process::Command::new(common::python())
        .arg(common::repo().join("tests/interop/authzen_search.py"))
        .args([&b.url, &token, "helpdesk", &owner])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    // Searches decide nothing: no decision was recorded, no budget spent.
    assert!(b.audit_kind("decision").is_empty());
}
