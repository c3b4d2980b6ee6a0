//! The shipped policy pack loads, validates, and decides the basic scenarios as documented.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

use std::path::Path;

use mandate_core::flow::Flow;
use mandate_policy::{
    AdmissionQuery, AgentFacts, ApprovalQuery, Approver, EntityIndex, Outcome, PolicyBundle, Query,
    TargetKind, TaskFacts, args_to_cedar, flow_to_cedar, json_to_cedar,
};

fn pack() -> PolicyBundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    PolicyBundle::load_dir(&dir).unwrap_or_else(|e| panic!("shipped pack must load: {e}"))
}

fn index(b: &PolicyBundle, owner: Option<&str>, tier: &str) -> EntityIndex {
    let agent = AgentFacts {
        id: "bot".into(),
        owner: owner.map(str::to_string),
        tier: tier.into(),
        envelope: vec![
            "read:cases".into(),
            "export:cases".into(),
            "call:git.push".into(),
        ],
    };
    EntityIndex::build(b.schema(), [&agent], []).unwrap()
}

fn task(class: &str, granted: &[&str], ttl: i64) -> TaskFacts {
    TaskFacts {
        id: "t1".into(),
        intent: "help".into(),
        intent_class: class.into(),
        granted: granted.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: ttl,
        budget: Default::default(),
        depth: 0,
        delegated_by: Vec::new(),
    }
}

fn decide(
    b: &PolicyBundle,
    idx: &EntityIndex,
    t: &TaskFacts,
    action: &str,
    target: &str,
) -> mandate_policy::Verdict {
    decide_with(
        b,
        idx,
        t,
        action,
        target,
        &mut Flow::default(),
        serde_json::json!({}),
    )
}

fn decide_with(
    b: &PolicyBundle,
    idx: &EntityIndex,
    t: &TaskFacts,
    action: &str,
    target: &str,
    flow: &mut Flow,
    args: serde_json::Value,
) -> mandate_policy::Verdict {
    b.decide(
        idx,
        &Query {
            agent: "bot",
            action,
            target_kind: TargetKind::Resource,
            target,
            task: &t.to_cedar().unwrap(),
            request: json_to_cedar(&serde_json::json!({}), "request").unwrap(),
            flow: flow_to_cedar(
                flow,
                target,
                &b.catalog().unsinked(target, &flow.data_read.clone()),
                mandate_core::Timestamp(0),
            )
            .unwrap(),
            args: args_to_cedar(args.as_object().unwrap()).unwrap(),
            provenance: mandate_policy::provenance_to_cedar(&Default::default()).unwrap(),
        },
    )
}

fn admit(
    b: &PolicyBundle,
    idx: &EntityIndex,
    t: &TaskFacts,
    dpop: bool,
) -> mandate_policy::Verdict {
    b.admit(
        idx,
        &AdmissionQuery {
            agent: "bot",
            task_id: "t1",
            task: t.to_cedar().unwrap(),
            dpop_bound: dpop,
            request: json_to_cedar(&serde_json::json!({}), "request").unwrap(),
        },
    )
}

#[test]
fn in_scope_read_is_allowed_out_of_scope_is_denied_by_default() {
    let b = pack();
    let idx = index(&b, Some("alice"), "low");
    let t = task("support", &["read:cases"], 600);
    let v = decide(&b, &idx, &t, "read", "cases");
    assert!(v.allowed(), "{v:?}");
    assert_eq!(v.policies, vec!["act-within-task-scope"]);
    let v = decide(&b, &idx, &t, "write", "cases");
    assert!(!v.allowed());
    assert_eq!(
        v.reason,
        "no policy permits `write` on resource `cases` (deny by default)"
    );
}

#[test]
fn support_task_cannot_export_even_when_granted() {
    let b = pack();
    let idx = index(&b, Some("alice"), "low");
    let t = task("support", &["read:cases", "export:cases"], 600);
    let v = decide(&b, &idx, &t, "export", "cases");
    assert!(!v.allowed());
    assert_eq!(v.policies, vec!["support-tasks-never-export"]);
    assert!(v.reason.contains("never export"), "{}", v.reason);
}

#[test]
fn undeclared_action_is_denied_with_reason() {
    let b = pack();
    let idx = index(&b, Some("alice"), "low");
    let t = task("support", &["frobnicate:cases"], 600);
    let v = decide(&b, &idx, &t, "frobnicate", "cases");
    assert!(!v.allowed());
    assert_eq!(
        v.reason,
        "action `frobnicate` is not declared in the policy schema"
    );
}

#[test]
fn admission_enforces_envelope_tier_ttl_dpop_and_ownership() {
    let b = pack();
    let low = index(&b, Some("alice"), "low");
    assert!(admit(&b, &low, &task("support", &["read:cases"], 3600), false).allowed());
    let v = admit(&b, &low, &task("support", &["write:cases"], 600), false);
    assert!(!v.allowed(), "outside envelope");
    let high = index(&b, Some("alice"), "high");
    let v = admit(&b, &high, &task("support", &["read:cases"], 3600), true);
    assert_eq!(v.policies, vec!["tier-high-max-ttl"]);
    let v = admit(&b, &high, &task("support", &["read:cases"], 600), false);
    assert_eq!(v.policies, vec!["tier-high-needs-dpop"]);
    assert!(admit(&b, &high, &task("support", &["read:cases"], 600), true).allowed());
    let orphan = index(&b, None, "low");
    let v = admit(&b, &orphan, &task("support", &["read:cases"], 600), false);
    assert_eq!(v.policies, vec!["orphaned-agent-opens-nothing"]);
}

#[test]
fn approval_gate_turns_a_deny_into_needs_approval_only_when_otherwise_allowed() {
    let b = pack();
    let high = index(&b, Some("alice"), "high");
    let t = task("payments", &["write:cases"], 600);
    let small = decide_with(
        &b,
        &high,
        &t,
        "write",
        "cases",
        &mut Flow::default(),
        serde_json::json!({"amount": 50}),
    );
    assert!(small.allowed(), "{small:?}");
    let big = decide_with(
        &b,
        &high,
        &t,
        "write",
        "cases",
        &mut Flow::default(),
        serde_json::json!({"amount": 500}),
    );
    assert_eq!(big.outcome, Outcome::NeedsApproval, "{big:?}");
    assert_eq!(big.policies, vec!["large-amount-needs-approval"]);
    assert!(
        big.reason.starts_with("approval required by policy"),
        "{}",
        big.reason
    );
    // Out of scope stays a plain deny, gate or not.
    let outside = decide_with(
        &b,
        &high,
        &t,
        "export",
        "cases",
        &mut Flow::default(),
        serde_json::json!({"amount": 500}),
    );
    assert_eq!(outside.outcome, Outcome::Deny);
}

#[test]
fn only_the_owner_may_approve() {
    let b = pack();
    let idx = index(&b, Some("alice"), "high");
    let q = |approver| ApprovalQuery {
        approver,
        approval_id: "apr_1",
        owner: Some("alice"),
        agent: "bot",
        tier: "high",
        action: "call",
        target: "refund",
    };
    assert!(b.may_approve(&idx, &q(Approver::Owner("alice"))).allowed());
    assert!(!b.may_approve(&idx, &q(Approver::Owner("bob"))).allowed());
    assert!(!b.may_approve(&idx, &q(Approver::Admin("root"))).allowed());
}

#[test]
fn sensitive_read_then_egress_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let pack_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    for f in std::fs::read_dir(&pack_dir).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("catalog.toml"),
        "[resources.cases]\ndata_classes = [\"pii\"]\n[resources.paste]\negress = \"external\"\n",
    )
    .unwrap();
    let b = PolicyBundle::load_dir(dir.path()).unwrap();
    let agent = AgentFacts {
        id: "bot".into(),
        owner: Some("alice".into()),
        tier: "low".into(),
        envelope: vec![],
    };
    let idx = EntityIndex::build(b.schema(), [&agent], &b.catalog().facts()).unwrap();
    let t = task("research", &["read:cases", "write:paste"], 600);
    let mut flow = Flow::default();
    assert!(
        decide_with(
            &b,
            &idx,
            &t,
            "write",
            "paste",
            &mut flow,
            serde_json::json!({})
        )
        .allowed()
    );
    let labels = b.catalog().get("cases").unwrap().1.data_classes.clone();
    flow.record_allowed("cases", &labels, None, mandate_core::Timestamp(0));
    let v = decide_with(
        &b,
        &idx,
        &t,
        "write",
        "paste",
        &mut flow,
        serde_json::json!({}),
    );
    assert_eq!(v.policies, vec!["no-egress-after-sensitive-read"], "{v:?}");
}
