//! One in-process decision through Mandate's policy facade, against calling Cedar's
//! `is_authorized` directly on the same request, policy set and entities (the floor).
//!
//! Groups:
//! - `core`: the shipped pack, a task without flow labels (issue 2's figure).
//! - `context`: the shipped pack plus 200 generated policies, a task with flow labels and call
//!   arguments (issue 3's figure).
//! - `parts`: the pieces of Mandate's side of `core`, one by one, to show where the difference
//!   from the floor goes.
//!
//! Each of `core` and `context` has three functions: `raw_cedar_prebuilt_request` (the floor),
//! `raw_cedar_building_request` (the same, building the context and request every time, as any
//! caller of Cedar must) and `mandate_decide` (the scope and argument gates, the flow, argument
//! and provenance records, `PolicyBundle::decide` with its verdict). At the end the run prints
//! the ratios of the medians.
//!
//! Run: `cargo bench -p mandate-bench --bench decision`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up fails loudly"
)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Authorizer, Context, EntityUid, Request, RestrictedExpression};
use criterion::Criterion;
use mandate_core::Timestamp;
use mandate_core::flow::Flow;
use mandate_policy::{
    AgentFacts, EntityIndex, PolicyBundle, Query, TargetKind, TaskFacts, args_to_cedar,
    flow_to_cedar, json_to_cedar, provenance_to_cedar,
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
        depth: 0,
        delegated_by: Vec::new(),
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
    if !f.scope.allows("read", "cases") || f.scope.check_args("cases", &f.args, &|_| false).is_err()
    {
        return false;
    }
    let flow = flow_to_cedar(&mut f.flow, "cases", &Default::default(), Timestamp(5_000)).unwrap();
    let verdict = f.bundle.decide(
        &f.index,
        &Query {
            agent: "agent-7",
            action: "read",
            target_kind: TargetKind::Resource,
            target: "cases",
            task: &f.task_expr,
            request: json_to_cedar(&serde_json::Value::Object(Default::default()), "request")
                .unwrap(),
            flow,
            args: args_to_cedar(&f.args).unwrap(),
            provenance: provenance_to_cedar(&Default::default()).unwrap(),
        },
    );
    verdict.allowed()
}

type Parts = (
    EntityUid,
    EntityUid,
    EntityUid,
    Vec<(String, RestrictedExpression)>,
);

/// The principal, action, resource and context a plain Cedar caller would build; the task
/// record is built each time too (a caller without Mandate's per-task cache).
fn cedar_parts(f: &mut Fixture) -> Parts {
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
            flow_to_cedar(&mut f.flow, "cases", &Default::default(), Timestamp(5_000)).unwrap(),
        ),
        ("args".to_string(), args_to_cedar(&f.args).unwrap()),
        (
            "provenance".to_string(),
            provenance_to_cedar(&Default::default()).unwrap(),
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
    assert!(
        authorizer
            .is_authorized(
                &prebuilt,
                f.bundle.cedar_policies(),
                f.index.cedar_entities()
            )
            .decision()
            == cedar_policy::Decision::Allow,
        "raw Cedar must agree with Mandate"
    );
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
            let (p, a, r, ctx) = cedar_parts(&mut f);
            let req = Request::new(p, a, r, Context::from_pairs(ctx).unwrap(), None).unwrap();
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

/// The pieces of Mandate's side, measured alone on the `core` fixture.
fn parts(c: &mut Criterion) {
    let mut f = fixture(0, false);
    let (p, a, r, ctx) = cedar_parts(&mut f);
    let mut g = c.benchmark_group("parts");
    g.bench_function("scope_and_argument_gates", |b| {
        b.iter(|| {
            black_box(
                f.scope.allows(black_box("read"), black_box("cases"))
                    && f.scope.check_args("cases", &f.args, &|_| false).is_ok(),
            )
        })
    });
    g.bench_function("flow_to_cedar", |b| {
        b.iter(|| {
            black_box(flow_to_cedar(
                &mut f.flow,
                "cases",
                &Default::default(),
                Timestamp(5_000),
            ))
        })
    });
    g.bench_function("request_json_to_cedar", |b| {
        b.iter(|| {
            black_box(json_to_cedar(
                &serde_json::Value::Object(Default::default()),
                "request",
            ))
        })
    });
    g.bench_function("args_and_provenance_to_cedar", |b| {
        b.iter(|| {
            black_box((
                args_to_cedar(&f.args),
                provenance_to_cedar(&Default::default()),
            ))
        })
    });
    g.bench_function("task_to_cedar_uncached", |b| {
        b.iter(|| black_box(f.task.to_cedar()))
    });
    g.bench_function("context_pairs_clone", |b| b.iter(|| black_box(ctx.clone())));
    g.bench_function("entity_uids_from_str", |b| {
        b.iter(|| {
            black_box((
                EntityUid::from_str("Mandate::Agent::\"agent-7\""),
                EntityUid::from_str("Mandate::Action::\"read\""),
                EntityUid::from_str("Mandate::Resource::\"cases\""),
            ))
        })
    });
    g.bench_function("context_from_pairs_and_request_new", |b| {
        b.iter(|| {
            black_box(
                Request::new(
                    p.clone(),
                    a.clone(),
                    r.clone(),
                    Context::from_pairs(ctx.clone()).unwrap(),
                    None,
                )
                .unwrap(),
            )
        })
    });
    g.finish();
}

/// Where criterion writes its estimates (the same rule criterion follows, without running
/// `cargo metadata`: this crate sits two levels below the workspace root).
fn criterion_dir() -> PathBuf {
    if let Some(v) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(v);
    }
    if let Some(v) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(v).join("criterion");
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion")
}

/// The median (ns) criterion measured for `group/function` in this run, if it did.
fn median_ns(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    v.pointer("/median/point_estimate")?.as_f64()
}

fn summary(since: SystemTime) {
    println!("\nmedians and ratios (this run):");
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>16} {:>16}",
        "group", "raw prebuilt", "raw building", "mandate", "mandate/raw", "mandate/building"
    );
    for name in ["core", "context"] {
        let raw = median_ns(name, "raw_cedar_prebuilt_request", since);
        let build = median_ns(name, "raw_cedar_building_request", since);
        let m = median_ns(name, "mandate_decide", since);
        if let (Some(raw), Some(build), Some(m)) = (raw, build, m) {
            println!(
                "{name:<8} {:>11.2} µs {:>11.2} µs {:>11.2} µs {:>15.2}× {:>15.2}×",
                raw / 1e3,
                build / 1e3,
                m / 1e3,
                m / raw,
                m / build
            );
        }
    }
}

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default().configure_from_args();
    group(&mut c, "core", 0, false);
    group(&mut c, "context", 200, true);
    parts(&mut c);
    c.final_summary();
    summary(since);
}
