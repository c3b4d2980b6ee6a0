//! Policy tests: a table of example requests with the decisions they should get, run against a
//! policy set the way the broker decides (task scope and argument rules first, then Cedar).
//! Users write such tables for their own policies; the shipped pack has its own in
//! `policies/tests/`.
//!
//! ```toml
//! [[agents]]
//! id = "support-bot"
//! owner = "alice"
//! tier = "low"
//! envelope = "read:cases export:cases"
//!
//! [[cases]]
//! name = "support tasks never export (S2)"
//! agent = "support-bot"
//! task = { intent_class = "support", scope = "read:cases export:cases", ttl = 600 }
//! action = "export"
//! resource = { type = "resource", id = "cases" }
//! expect = "deny"
//! policies = ["support-tasks-never-export"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use cedar_policy::RestrictedExpression;
use mandate_core::Scope;
use mandate_core::args::ArgRules;
use serde::{Deserialize, Serialize};

use crate::decide::{AdmissionQuery, Outcome, Query, Verdict};
use crate::facts::{
    AgentFacts, EntityIndex, TargetKind, TaskFacts, args_to_cedar, json_to_cedar,
    provenance_to_cedar,
};
use crate::load::PolicyBundle;

/// Largest test file read.
const MAX_TEST_FILE: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Catalog entries for these cases, on top of the policy set's own `catalog.toml`.
    #[serde(default)]
    catalog: Option<toml::Table>,
    #[serde(default)]
    agents: Vec<AgentCase>,
    #[serde(default)]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentCase {
    id: String,
    owner: Option<String>,
    tier: String,
    #[serde(default)]
    envelope: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskCase {
    #[serde(default = "default_class")]
    intent_class: String,
    #[serde(default = "default_intent")]
    intent: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    arguments: BTreeMap<String, ArgRules>,
    #[serde(default = "default_ttl")]
    ttl: i64,
    #[serde(default)]
    max_calls: Option<u64>,
    #[serde(default)]
    max_calls_per_minute: Option<u64>,
    #[serde(default)]
    dpop_bound: bool,
    /// Agents up the delegation chain, the root's first (empty: not delegated).
    #[serde(default)]
    delegated_by: Vec<String>,
}

fn default_class() -> String {
    "default".into()
}
fn default_intent() -> String {
    "policy test".into()
}
fn default_ttl() -> i64 {
    600
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowCase {
    #[serde(default)]
    data_read: Vec<String>,
    #[serde(default)]
    egress: Vec<String>,
    #[serde(default)]
    calls: i64,
    #[serde(default)]
    calls_last_minute: i64,
    #[serde(default)]
    target_calls: i64,
    #[serde(default)]
    distinct_targets: i64,
    #[serde(default)]
    denied_in_a_row: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceCase {
    #[serde(rename = "type")]
    kind: TargetKind,
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    agent: String,
    #[serde(default)]
    task: TaskCase,
    /// `admission` or `runtime` (default).
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<ResourceCase>,
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    flow: FlowCase,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    /// Arguments marked as carrying third-party values.
    #[serde(default)]
    third_party_args: Vec<String>,
    /// Origins of the destination arguments' values (`request`, `trusted`, `third_party`,
    /// `unknown`).
    #[serde(default)]
    destinations: Vec<String>,
    /// Arguments marked as carrying third-party links.
    #[serde(default)]
    links: Vec<String>,
    expect: Outcome,
    #[serde(default)]
    policies: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "allow" => Ok(Outcome::Allow),
            "deny" => Ok(Outcome::Deny),
            "needs_approval" => Ok(Outcome::NeedsApproval),
            other => Err(serde::de::Error::custom(format!(
                "expect `{other}` is not allow, deny or needs_approval"
            ))),
        }
    }
}

/// The result of one case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// File it came from.
    pub file: String,
    /// Its name.
    pub name: String,
    /// Whether the decision matched.
    pub passed: bool,
    /// Expected outcome.
    pub expected: Outcome,
    /// Expected policies, if given.
    pub expected_policies: Option<Vec<String>>,
    /// What was decided.
    pub got: Verdict,
}

fn flow_record(f: &FlowCase, unsinked: &[String]) -> Result<RestrictedExpression, String> {
    let set = |v: &Vec<String>| {
        RestrictedExpression::new_set(
            v.iter()
                .map(|s| RestrictedExpression::new_string(s.clone())),
        )
    };
    RestrictedExpression::new_record([
        ("data_read".to_string(), set(&f.data_read)),
        ("unsinked".to_string(), set(&unsinked.to_vec())),
        ("egress".to_string(), set(&f.egress)),
        ("calls".to_string(), RestrictedExpression::new_long(f.calls)),
        (
            "calls_last_minute".to_string(),
            RestrictedExpression::new_long(f.calls_last_minute),
        ),
        (
            "target_calls".to_string(),
            RestrictedExpression::new_long(f.target_calls),
        ),
        (
            "distinct_targets".to_string(),
            RestrictedExpression::new_long(f.distinct_targets),
        ),
        (
            "denied_in_a_row".to_string(),
            RestrictedExpression::new_long(f.denied_in_a_row),
        ),
    ])
    .map_err(|e| e.to_string())
}

fn run_case(
    bundle: &PolicyBundle,
    index: &EntityIndex,
    agents: &[AgentFacts],
    c: &Case,
    extra: Option<&crate::catalog::Catalog>,
) -> Result<Verdict, String> {
    let agent = agents
        .iter()
        .find(|a| a.id == c.agent)
        .ok_or_else(|| format!("agent `{}` is not declared in [[agents]]", c.agent))?;
    let mut grants = Scope::parse(&c.task.scope)
        .map_err(|e| e.to_string())?
        .to_grants();
    for g in &mut grants {
        if let Some(rules) = c.task.arguments.get(&g.identifier) {
            g.arguments = rules.clone();
        }
    }
    let scope = Scope::from_grants(&grants).map_err(|e| e.to_string())?;
    let facts = TaskFacts {
        id: "test-task".into(),
        intent: c.task.intent.clone(),
        intent_class: c.task.intent_class.clone(),
        granted: scope.tokens(),
        ttl_seconds: c.task.ttl,
        budget: mandate_core::Budget {
            max_calls: c.task.max_calls,
            max_calls_per_minute: c.task.max_calls_per_minute,
        },
        depth: i64::try_from(c.task.delegated_by.len()).unwrap_or(i64::MAX),
        delegated_by: c.task.delegated_by.clone(),
    };
    let task = facts.to_cedar().map_err(|e| e.to_string())?;
    let request = json_to_cedar(&serde_json::Value::Object(c.context.clone()), "context")
        .map_err(|e| e.to_string())?;
    if c.kind.as_deref() == Some("admission") {
        let envelope = Scope::parse(&agent.envelope.join(" ")).map_err(|e| e.to_string())?;
        if agent.owner.is_none() {
            return Ok(Verdict::deny("mandate:ownership", "the agent has no owner"));
        }
        let excess = scope.excess_over(&envelope);
        if !excess.is_empty() {
            return Ok(Verdict::deny(
                "mandate:envelope",
                format!("{} outside the envelope", excess.join(", ")),
            ));
        }
        return Ok(bundle.admit(
            index,
            &AdmissionQuery {
                agent: &agent.id,
                task_id: "test-task",
                task,
                dpop_bound: c.task.dpop_bound,
                request,
            },
        ));
    }
    let action = c.action.as_deref().ok_or("a runtime case needs `action`")?;
    let resource = c
        .resource
        .as_ref()
        .ok_or("a runtime case needs `resource`")?;
    if !scope.allows(action, &resource.id) {
        return Ok(Verdict::deny(
            "mandate:task-scope",
            "outside the task's scope",
        ));
    }
    if let Err(why) = scope.check_args(&resource.id, &c.args, &|_| false) {
        return Ok(Verdict::deny("mandate:task-arguments", why));
    }
    Ok(bundle.decide(
        index,
        &Query {
            agent: &agent.id,
            action,
            target_kind: resource.kind,
            target: &resource.id,
            task: &task,
            request,
            flow: flow_record(
                &c.flow,
                &Vec::from_iter({
                    let mut u = bundle.catalog().unsinked(&resource.id, &c.flow.data_read);
                    if let Some(x) = extra {
                        u = x.unsinked(&resource.id, &u);
                    }
                    u
                }),
            )?,
            args: args_to_cedar(&c.args).map_err(|e| e.to_string())?,
            provenance: provenance_to_cedar(&mandate_core::provenance::Marks {
                args: c.third_party_args.iter().cloned().collect(),
                sources: if c.third_party_args.is_empty() {
                    Default::default()
                } else {
                    ["test".to_string()].into()
                },
                destinations: c.destinations.iter().cloned().collect(),
                links: c.links.iter().cloned().collect(),
            })
            .map_err(|e| e.to_string())?,
        },
    ))
}

/// Runs every `*.toml` file in `tests_dir` against `bundle`.
pub fn run_tests(bundle: &PolicyBundle, tests_dir: &Path) -> Result<Vec<CaseResult>, String> {
    let mut files: Vec<_> = std::fs::read_dir(tests_dir)
        .map_err(|e| format!("cannot read `{}`: {e}", tests_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "no `*.toml` test tables in `{}`",
            tests_dir.display()
        ));
    }
    let mut results = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("{name}: {e}"))?
            .len();
        if size > MAX_TEST_FILE {
            return Err(format!("{name}: larger than {MAX_TEST_FILE} bytes"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let file: TestFile =
            toml::from_str(&text).map_err(|e| format!("{name}: {}", e.to_string().trim()))?;
        let agents: Vec<AgentFacts> = file
            .agents
            .iter()
            .map(|a| {
                Ok(AgentFacts {
                    id: a.id.clone(),
                    owner: a.owner.clone(),
                    tier: a.tier.clone(),
                    envelope: Scope::parse(&a.envelope)
                        .map_err(|e| format!("{name}: agent `{}`: {e}", a.id))?
                        .tokens(),
                })
            })
            .collect::<Result<_, String>>()?;
        let mut targets = bundle.catalog().facts();
        let extra = match &file.catalog {
            Some(extra) => {
                let extra = crate::catalog::Catalog::parse(&extra.to_string())
                    .map_err(|e| format!("{name}: [catalog]: {e}"))?;
                targets.retain(|t| extra.get(&t.id).is_none());
                targets.extend(extra.facts());
                Some(extra)
            }
            None => None,
        };
        let index = EntityIndex::build(bundle.schema(), &agents, &targets)
            .map_err(|e| format!("{name}: {e}"))?;
        for c in &file.cases {
            let got = run_case(bundle, &index, &agents, c, extra.as_ref())
                .map_err(|e| format!("{name}: case `{}`: {e}", c.name))?;
            let policies_ok = c.policies.as_ref().is_none_or(|want| {
                let mut want = want.clone();
                want.sort();
                let mut have = got.policies.clone();
                have.sort();
                want == have
            });
            results.push(CaseResult {
                file: name.clone(),
                name: c.name.clone(),
                passed: got.outcome == c.expect && policies_ok,
                expected: c.expect,
                expected_policies: c.policies.clone(),
                got,
            });
        }
    }
    Ok(results)
}
