//! One in-process decision through Mandate's policy facade, against calling Cedar's
//! `is_authorized` directly on the same request, policy set and entities (the floor).
//!
//! Groups:
//! - `core`: the shipped pack, a task without flow labels (issue 2's figure).
//! - `context`: the shipped pack plus 200 generated policies, a task with flow labels and call
//!   arguments (issue 3's figure).
//!
//! Run: `cargo bench -p mandate-bench --bench decision`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up fails loudly"
)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, EntityUid, Request, RestrictedExpression};
use criterion::{Criterion, criterion_group, criterion_main};
use mandate_core::Timestamp;
use mandate_core::flow::Flow;
use mandate_policy::{
    AgentFacts, EntityIndex, PolicyBundle, Query, TargetKind, TaskFacts, args_to_cedar,
    flow_to_cedar, json_to_cedar,
};

struct Fixture {
    bundle: PolicyBundle,
    index: EntityIndex,
    task: TaskFacts,
    task_expr: RestrictedExpression,
    scope: mandate_core::Scope,
    flow: Flow,
    args: serde_json::Map<String, serde_json::Value>,
    _dir: tempfile::TempDir,
}

fn fixture(extra: usize, labelled: bool) -> Fixture {
    let dir = mandate_bench::pack_with_extra(extra).unwrap();
    let bundle = PolicyBundle::load_dir(dir.path()).unwrap();
    let agents: Vec<AgentFacts> = (0..50)
        .map(|i| AgentFacts {
            id: format!("agent-{i}"),
            owner: Some(format!("owner-{}", i % 5)),
            tier: "low".into(),
            envelope: vec![
                "read:cases".into(),
                "write:notes".into(),
                "call:search".into(),
            ],
        })
        .collect();
    let index = EntityIndex::build(bundle.schema(), &agents, &bundle.catalog().facts()).unwrap();
    let scope = mandate_core::Scope::parse("read:cases write:notes call:search").unwrap();
    let task = TaskFacts {
        id: "task-1".into(),
        intent: "answer case 42".into(),
        intent_class: "support".into(),
        granted: scope.tokens(),
        ttl_seconds: 600,
        budget: Default::default(),
    };
    let mut flow = Flow::default();
    let mut args = serde_json::Map::new();
    if labelled {
        let classes: BTreeSet<String> = ["pii".to_string(), "financial".to_string()].into();
        for i in 0..20 {
            flow.record_allowed("cases", &classes, None, Timestamp(i * 100));
        }
        args.insert("query".into(), "order 42".into());
        args.insert("amount".into(), 12.into());
    }
    Fixture {
        task_expr: task.to_cedar().unwrap(),
        bundle,
        index,
        task,
        scope,
        flow,
        args,
        _dir: dir,
    }
}

/// What Mandate does per decision once the credential is verified: the scope and argument
/// gates, the flow and argument records, and the Cedar call with its verdict.
fn mandate_decide(f: &mut Fixture) -> bool {
    if !f.scope.allows("read", "cases") || f.scope.check_args("cases", &f.args).is_err() {
        return false;
    }
    let flow = flow_to_cedar(&mut f.flow, "cases", Timestamp(5_000)).unwrap();
    let verdict = f.bundle.decide(
        &f.index,
        &Query {
            agent: "agent-7",
            action: "read",
            target_kind: TargetKind::Resource,
            target: "cases",
            task: f.task_expr.clone(),
            request: json_to_cedar(&serde_json::Value::Object(Default::default()), "request")
                .unwrap(),
            flow,
            args: args_to_cedar(&f.args).unwrap(),
            provenance: mandate_policy::provenance_to_cedar(&Default::default()).unwrap(),
        },
    );
    verdict.allowed()
}

fn cedar_parts(
    f: &mut Fixture,
) -> (
    EntityUid,
    EntityUid,
    EntityUid,
    Vec<(String, RestrictedExpression)>,
) {
    let principal = EntityUid::from_str("Mandate::Agent::\"agent-7\"").unwrap();
    let action = EntityUid::from_str("Mandate::Action::\"read\"").unwrap();
    let resource = EntityUid::from_str("Mandate::Resource::\"cases\"").unwrap();
    let context = vec![
        ("task".to_string(), f.task.to_cedar().unwrap()),
        (
            "asked".to_string(),
            RestrictedExpression::new_string("read:cases".into()),
        ),
        (
            "request".to_string(),
            json_to_cedar(&serde_json::json!({}), "request").unwrap(),
        ),
        (
            "flow".to_string(),
            flow_to_cedar(&mut f.flow, "cases", Timestamp(5_000)).unwrap(),
        ),
        ("args".to_string(), args_to_cedar(&f.args).unwrap()),
        (
            "provenance".to_string(),
            mandate_policy::provenance_to_cedar(&Default::default()).unwrap(),
        ),
    ];
    (principal, action, resource, context)
}

fn group(c: &mut Criterion, name: &str, extra: usize, labelled: bool) {
    let mut f = fixture(extra, labelled);
    assert!(
        mandate_decide(&mut f),
        "the benchmarked request must be allowed"
    );
    let (p, a, r, ctx) = cedar_parts(&mut f);
    let prebuilt = Request::new(
        p.clone(),
        a.clone(),
        r.clone(),
        Context::from_pairs(ctx.clone()).unwrap(),
        None,
    )
    .unwrap();
    let authorizer = Authorizer::new();
    let mut g = c.benchmark_group(name);
    g.bench_function("raw_cedar_prebuilt_request", |b| {
        b.iter(|| {
            black_box(authorizer.is_authorized(
                black_box(&prebuilt),
                f.bundle.cedar_policies(),
                f.index.cedar_entities(),
            ))
        })
    });
    g.bench_function("raw_cedar_building_request", |b| {
        b.iter(|| {
            let req = Request::new(
                p.clone(),
                a.clone(),
                r.clone(),
                Context::from_pairs(ctx.clone()).unwrap(),
                None,
            )
            .unwrap();
            black_box(authorizer.is_authorized(
                &req,
                f.bundle.cedar_policies(),
                f.index.cedar_entities(),
            ))
        })
    });
    g.bench_function("mandate_decide", |b| {
        b.iter(|| black_box(mandate_decide(&mut f)))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    group(c, "core", 0, false);
    group(c, "context", 200, true);
}

criterion_group!(decision, benches);
criterion_main!(decision);
