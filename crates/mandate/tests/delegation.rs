//! Delegation between agents through RFC 8693 token exchange, end to end against a real
//! `mandate serve`: S6 (no amplification), S7 across a chain, shared flow labels, key binding,
//! depth limits, malformed exchanges, and S13 across agents (the trace tree).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail on any surprise"
)]

mod common;

use base64::Engine;
use common::{Broker, task_details};
use mandate_crypto::client::AgentKey;
use serde_json::{Value, json};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

const CATALOG: &str = r#"
[resources.customers]
side_effect = "read"
data_classes = ["pii"]

[resources.reports]
side_effect = "read"

[tools.http_post]
side_effect = "write"
egress = "external"
risk = "medium"

[tools.deploy]
side_effect = "write"
risk = "high"
"#;

/// Asks for a sub-task of `parent` for `child`, with `details`.
async fn delegate(
    b: &Broker,
    parent: &str,
    child_key: &AgentKey,
    child: &str,
    details: Value,
) -> (u16, Value) {
    let actor = b.assertion(child_key, child);
    let details = details.to_string();
    b.token_form(
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", parent),
            ("subject_token_type", ACCESS),
            ("actor_token", &actor),
            ("actor_token_type", JWT),
            ("authorization_details", &details),
        ],
        None,
    )
    .await
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn token(v: &Value) -> String {
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"))
        .to_string()
}

async fn open(b: &Broker, key: &AgentKey, agent: &str, details: Value) -> Value {
    let (s, v) = b.open_task(key, agent, details, false).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn s6_a_sub_task_gets_at_most_what_its_parent_holds() {
    let b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("research").await;
    let planner = b
        .add_agent(
            "planner",
            "research",
            "medium",
            "read:reports read:customers call:http_post",
        )
        .await;
    let analyst = b
        .add_agent(
            "analyst",
            "research",
            "low",
            "read:reports read:customers call:deploy",
        )
        .await;
    let parent = open(
        &b,
        &planner,
        "planner",
        task_details("Q3 study", "research", &[("reports", &["read"])], 600),
    )
    .await;
    let parent_token = token(&parent);

    // Within the parent's scope and the child's envelope: granted, and no longer-lived.
    let (s, v) = delegate(
        &b,
        &parent_token,
        &analyst,
        "analyst",
        task_details(
            "read the reports",
            "research",
            &[("reports", &["read"])],
            300,
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["issued_token_type"], ACCESS);
    assert_eq!(v["scope"], "read:reports");
    let child_token = token(&v);
    let c = claims(&child_token);
    let p = claims(&parent_token);
    assert_eq!(c["sub"], "planner", "the subject stays the workflow's");
    assert_eq!(c["client_id"], "analyst");
    assert_eq!(c["act"], json!({"sub": "analyst"}));
    assert!(c["exp"].as_i64() <= p["exp"].as_i64());
    let (_, d) = b.decide(&child_token, "read", "resource", "reports").await;
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["agent"], "analyst");

    // More than the parent holds, although the child's envelope allows it: refused, by name.
    let (s, v) = delegate(
        &b,
        &parent_token,
        &analyst,
        "analyst",
        task_details(
            "read customers",
            "research",
            &[("reports", &["read"]), ("customers", &["read"])],
            300,
        ),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_authorization_details");
    assert_eq!(v["mandate_policies"], json!(["mandate:delegation"]));
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("`read:customers` is beyond what task"),
        "{v}"
    );
    // Outside the child's envelope: refused by the envelope.
    let child2 = b
        .add_agent("reader", "research", "low", "read:customers")
        .await;
    let (s, v) = delegate(
        &b,
        &parent_token,
        &child2,
        "reader",
        task_details("reports", "research", &[("reports", &["read"])], 60),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["mandate_policies"], json!(["mandate:envelope"]));
    // Longer than the parent lives: refused, not trimmed in silence.
    let (s, v) = delegate(
        &b,
        &parent_token,
        &analyst,
        "analyst",
        task_details("reports", "research", &[("reports", &["read"])], 3000),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("lives no longer than its parent"),
        "{v}"
    );
    // A plain scope request is held to the same bounds.
    let actor = b.assertion(&analyst, "analyst");
    let (s, v) = b
        .token_form(
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &parent_token),
                ("subject_token_type", ACCESS),
                ("actor_token", &actor),
                ("actor_token_type", JWT),
                ("scope", "read:reports call:deploy"),
            ],
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_scope");

    // Every refusal is in the audit, as a denied task with its reason.
    let denied = b.audit_kind("task_denied");
    assert_eq!(denied.len(), 4, "{denied:?}");
    assert!(
        denied
            .iter()
            .all(|e| e["detail"]["delegation"]["parent"] == parent["task_id"])
    );
}

#[tokio::test]
async fn s7_ending_anything_up_a_three_agent_chain_ends_everything_below() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let envelope = "read:reports read:logs";
    let a = b.add_agent("lead", "ops", "low", envelope).await;
    let bk = b.add_agent("middle", "ops", "low", envelope).await;
    let ck = b.add_agent("worker", "ops", "low", envelope).await;
    let details = |ttl| task_details("triage", "ops", &[("reports", &["read"])], ttl);

    let chain = || async {
        let root = token(&open(&b, &a, "lead", details(600)).await);
        let (s, v) = delegate(&b, &root, &bk, "middle", details(400)).await;
        assert_eq!(s, 200, "{v}");
        let mid = token(&v);
        let (s, v) = delegate(&b, &mid, &ck, "worker", details(300)).await;
        assert_eq!(s, 200, "{v}");
        let leaf = token(&v);
        let c = claims(&leaf);
        assert_eq!(c["sub"], "lead");
        assert_eq!(c["act"], json!({"sub": "worker", "act": {"sub": "middle"}}));
        (root, mid, leaf)
    };
    let allowed = |t: String| {
        let b = &b;
        async move { b.decide(&t, "read", "resource", "reports").await.0 == 200 }
    };

    // The kill switch on the middle agent ends its task and the worker's, not the lead's.
    let (root, mid, leaf) = chain().await;
    assert!(allowed(leaf.clone()).await);
    let out = b.cli(&["agent", "suspend", "middle", "--reason", "acting oddly"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!allowed(mid).await);
    let (s, v) = b.decide(&leaf, "read", "resource", "reports").await;
    assert_eq!(s, 401, "{v}");
    assert!(allowed(root).await);
    let cascaded: Vec<Value> = b
        .audit_kind("task_revoked")
        .into_iter()
        .filter(|e| e["actor"] == "mandate:delegation")
        .collect();
    assert_eq!(cascaded.len(), 1, "{cascaded:?}");
    assert_eq!(cascaded[0]["agent"], "worker");
    assert!(
        cascaded[0]["reason"]
            .as_str()
            .unwrap()
            .contains("acting oddly")
    );
    assert!(b.cli(&["agent", "resume", "middle"]).status.success());

    // The lead completing its task ends the whole chain at once.
    let (root, mid, leaf) = chain().await;
    let (s, _) = b.revoke_as_agent(&a, "lead", &root).await;
    assert_eq!(s, 200);
    for t in [root, mid, leaf.clone()] {
        assert!(!allowed(t).await);
    }
    // A sub-task of an ended task cannot be opened either.
    let (s, v) = delegate(&b, &leaf, &ck, "worker", details(60)).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("only an active task can delegate")
    );
}

#[tokio::test]
async fn flow_labels_are_shared_so_delegation_cannot_launder_data() {
    let b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("research").await;
    let envelope = "read:customers read:reports call:http_post";
    let pk = b.add_agent("boss", "research", "low", envelope).await;
    let ck = b.add_agent("courier", "research", "low", envelope).await;
    let all = |ttl| {
        task_details(
            "study",
            "research",
            &[
                ("customers", &["read"]),
                ("reports", &["read"]),
                ("http_post", &["call"]),
            ],
            ttl,
        )
    };

    // The parent reads pii; the child it delegates to may not post it out.
    let parent = token(&open(&b, &pk, "boss", all(600)).await);
    let (_, d) = b.decide(&parent, "read", "resource", "customers").await;
    assert_eq!(d["decision"], "allow");
    let (s, v) = delegate(&b, &parent, &ck, "courier", all(300)).await;
    assert_eq!(s, 200, "{v}");
    let child = token(&v);
    let (_, d) = b.decide(&child, "call", "tool", "http_post").await;
    assert_eq!(d["decision"], "deny", "{d}");
    assert_eq!(d["policies"], json!(["no-egress-after-sensitive-read"]));

    // The other way round: the child reads pii, and the parent may no longer post.
    let parent = token(&open(&b, &pk, "boss", all(600)).await);
    let (s, v) = delegate(&b, &parent, &ck, "courier", all(300)).await;
    assert_eq!(s, 200, "{v}");
    let child = token(&v);
    let (s, v) = delegate(&b, &parent, &ck, "courier", all(300)).await;
    assert_eq!(s, 200, "{v}");
    let sibling = token(&v);
    assert_eq!(
        b.decide(&parent, "call", "tool", "http_post").await.1["decision"],
        "allow"
    );
    let (_, d) = b.decide(&child, "read", "resource", "customers").await;
    assert_eq!(d["decision"], "allow");
    for t in [&parent, &sibling] {
        let (_, d) = b.decide(t, "call", "tool", "http_post").await;
        assert_eq!(d["decision"], "deny", "{d}");
    }
}

#[tokio::test]
async fn bound_parents_must_prove_their_key_and_children_are_bound_to_theirs() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let pk = b.add_agent("bound-lead", "ops", "low", "read:logs").await;
    let ck = b.add_agent("helper", "ops", "low", "read:logs").await;
    let (s, v) = b
        .open_task(
            &pk,
            "bound-lead",
            task_details("logs", "ops", &[("logs", &["read"])], 600),
            true,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let parent = token(&v);
    let details = task_details("logs", "ops", &[("logs", &["read"])], 300).to_string();
    let actor = || b.assertion(&ck, "helper");
    let form = |actor: String| {
        vec![
            ("grant_type", EXCHANGE.to_string()),
            ("subject_token", parent.clone()),
            ("subject_token_type", ACCESS.to_string()),
            ("actor_token", actor),
            ("actor_token_type", JWT.to_string()),
            ("authorization_details", details.clone()),
        ]
    };
    let send = |f: Vec<(&'static str, String)>, proof: Option<String>| {
        let b = &b;
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            b.token_form(&f, proof.as_deref()).await
        }
    };
    // A copied parent credential, without the parent's key, delegates nothing.
    let (s, v) = send(form(actor()), None).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "invalid_dpop_proof");
    // A proof by another key neither.
    let stranger = AgentKey::generate();
    let proof = stranger
        .dpop_proof("POST", &b.token_endpoint(), Some(&parent))
        .unwrap();
    let (s, v) = send(form(actor()), Some(proof)).await;
    assert_eq!(s, 400, "{v}");
    // With the parent's proof: the child's credential is bound to the child's own key.
    let proof = pk
        .dpop_proof("POST", &b.token_endpoint(), Some(&parent))
        .unwrap();
    let (s, v) = send(form(actor()), Some(proof)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    let child = token(&v);
    assert_eq!(claims(&child)["cnf"]["jkt"], ck.thumbprint());
    assert_eq!(b.decide_dpop(&child, &ck, "read", "logs").await.0, 200);
    let (s, _) = b.decide_dpop(&child, &pk, "read", "logs").await;
    assert_eq!(
        s, 401,
        "the parent's key does not prove the child's credential"
    );
}

#[tokio::test]
async fn the_delegation_depth_is_limited_by_policy() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(
            b.add_agent(&format!("hop{i}"), "ops", "low", "read:logs")
                .await,
        );
    }
    let details = |ttl| task_details("logs", "ops", &[("logs", &["read"])], ttl);
    let mut t = token(&open(&b, &keys[0], "hop0", details(600)).await);
    for (i, key) in keys.iter().enumerate().skip(1) {
        let ttl = 600 - 100 * i64::try_from(i).unwrap();
        let (s, v) = delegate(&b, &t, key, &format!("hop{i}"), details(ttl)).await;
        if i <= 3 {
            assert_eq!(s, 200, "hop {i}: {v}");
            t = token(&v);
            assert_eq!(claims(&t)["sub"], "hop0");
        } else {
            assert_eq!(s, 400, "hop {i}: {v}");
            assert_eq!(v["mandate_policies"], json!(["delegation-depth-limit"]));
        }
    }
}

#[tokio::test]
async fn malformed_exchanges_are_refused_with_the_reason() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    let pk = b.add_agent("lead", "ops", "low", "read:logs").await;
    let ck = b.add_agent("helper", "ops", "low", "read:logs").await;
    let parent = token(
        &open(
            &b,
            &pk,
            "lead",
            task_details("logs", "ops", &[("logs", &["read"])], 600),
        )
        .await,
    );
    let details = task_details("logs", "ops", &[("logs", &["read"])], 60).to_string();
    let actor = b.assertion(&ck, "helper");
    let base = [
        ("grant_type", EXCHANGE.to_string()),
        ("subject_token", parent.clone()),
        ("subject_token_type", ACCESS.to_string()),
        ("actor_token", actor.clone()),
        ("actor_token_type", JWT.to_string()),
        ("authorization_details", details.clone()),
    ];
    let without = |k: &str| -> Vec<(&'static str, String)> {
        base.iter().filter(|(n, _)| *n != k).cloned().collect()
    };
    let with = |k: &'static str, v: &str| -> Vec<(&'static str, String)> {
        let mut f = without(k);
        f.push((k, v.to_string()));
        f
    };
    type Form = Vec<(&'static str, String)>;
    let cases: Vec<(Form, &str, &str)> = vec![
        (without("subject_token"), "invalid_request", "subject_token"),
        (
            without("subject_token_type"),
            "invalid_request",
            "subject_token_type",
        ),
        (
            with("subject_token_type", JWT),
            "invalid_request",
            "not supported",
        ),
        (without("actor_token"), "invalid_request", "actor_token"),
        (
            with("actor_token_type", ACCESS),
            "invalid_request",
            "not supported",
        ),
        (
            with(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ),
            "invalid_request",
            "requested_token_type",
        ),
        (
            with("audience", "https://elsewhere.example"),
            "invalid_target",
            "elsewhere",
        ),
        (
            with("subject_token", "eyJhbGciOiJub25lIn0.e30."),
            "invalid_request",
            "subject_token refused",
        ),
        (
            with("actor_token", "not-a-jwt"),
            "invalid_request",
            "actor_token refused",
        ),
        (
            with("client_assertion", &actor),
            "invalid_request",
            "as `actor_token`",
        ),
    ];
    for (form, code, says) in cases {
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, v) = b.token_form(&f, None).await;
        assert_eq!(s, 400, "{form:?}: {v}");
        assert_eq!(v["error"], code, "{v}");
        assert!(
            v["error_description"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
    // The actor's assertion is single-use, as at any grant.
    let f: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(b.token_form(&f, None).await.0, 200);
    let (s, v) = b.token_form(&f, None).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error_description"].as_str().unwrap().contains("replay"));
}

#[tokio::test]
async fn s13_trace_rebuilds_a_multi_agent_workflow_as_a_tree() {
    let b = Broker::start().await;
    b.set_policies(&[("catalog.toml", CATALOG)]);
    b.add_owner("research").await;
    let envelope = "read:reports read:customers call:http_post";
    let lead = b.add_agent("lead", "research", "low", envelope).await;
    let left = b.add_agent("left", "research", "low", envelope).await;
    let right = b.add_agent("right", "research", "low", envelope).await;
    let leaf = b.add_agent("leaf", "research", "low", envelope).await;
    let details =
        |intent: &str, access: &[(&str, &[&str])]| task_details(intent, "research", access, 300);
    let root = open(
        &b,
        &lead,
        "lead",
        details(
            "quarterly study",
            &[("reports", &["read"]), ("customers", &["read"])],
        ),
    )
    .await;
    let root_token = token(&root);
    let (_, l) = delegate(
        &b,
        &root_token,
        &left,
        "left",
        details("summarise reports", &[("reports", &["read"])]),
    )
    .await;
    let (_, r) = delegate(
        &b,
        &root_token,
        &right,
        "right",
        details("check customers", &[("customers", &["read"])]),
    )
    .await;
    let (_, f) = delegate(
        &b,
        &token(&r),
        &leaf,
        "leaf",
        details("one customer", &[("customers", &["read"])]),
    )
    .await;
    b.decide(&root_token, "read", "resource", "reports").await;
    b.decide(&token(&l), "read", "resource", "reports").await;
    b.decide(&token(&l), "read", "resource", "customers").await;
    b.decide(&token(&f), "read", "resource", "customers").await;
    b.revoke_as_agent(&lead, "lead", &root_token).await;

    // Asked from the leaf, the trace shows the whole workflow from its root.
    let trace = b.cli_json(&["audit", "trace", f["task_id"].as_str().unwrap()]);
    assert_eq!(trace["root"], root["task_id"]);
    assert_eq!(trace["tasks"], 4);
    fn shape(n: &Value) -> Value {
        let steps: Vec<Value> = n["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let e = &s["event"];
                json!([e["kind"], e["resource"], e["decision"], e["policies"]])
            })
            .collect();
        let kids: Vec<Value> = n["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(shape)
            .collect();
        json!({"agent": n["agent"], "intent": n["intent"], "steps": steps, "children": kids})
    }
    let opened = |by: &str| json!(["task_opened", null, "allow", [by]]);
    let revoked = json!(["task_revoked", null, null, ["mandate:delegation"]]);
    let expected = json!([{
        "agent": "lead", "intent": "quarterly study",
        "steps": [
            opened("task-within-envelope"),
            ["decision", "resource:reports", "allow", ["act-within-task-scope"]],
            ["task_completed", null, null, null],
        ],
        "children": [
            {
                "agent": "left", "intent": "summarise reports",
                "steps": [
                    opened("task-within-envelope"),
                    ["decision", "resource:reports", "allow", ["act-within-task-scope"]],
                    ["decision", "resource:customers", "deny", ["mandate:task-scope"]],
                    revoked,
                ],
                "children": [],
            },
            {
                "agent": "right", "intent": "check customers",
                "steps": [opened("task-within-envelope"), revoked],
                "children": [{
                    "agent": "leaf", "intent": "one customer",
                    "steps": [
                        opened("task-within-envelope"),
                        ["decision", "resource:customers", "allow", ["act-within-task-scope"]],
                        revoked,
                    ],
                    "children": [],
                }],
            },
        ],
    }]);
    let got: Vec<Value> = trace["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(shape)
        .collect();
    assert_eq!(Value::Array(got), expected);

    // Each delegated decision names its chain; the audit chain verifies.
    let leaf_decision = b
        .audit_kind("decision")
        .into_iter()
        .find(|e| e["agent"] == "leaf")
        .unwrap();
    assert_eq!(
        leaf_decision["detail"]["delegation"]["chain"],
        json!(["lead", "right", "leaf"])
    );
    let out = b.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The human form prints the tree too.
    let out = b.cli(&["audit", "trace", f["task_id"].as_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 tasks, 4 agents"), "{text}");
    assert!(text.contains("        task"), "nested three deep: {text}");
}
