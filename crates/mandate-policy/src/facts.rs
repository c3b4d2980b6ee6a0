//! What policies see: agents, owners, tools and resources as Cedar entities, and the task and
//! request as Cedar values.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::Value;

use crate::NAMESPACE;

/// Deepest nesting of a JSON value turned into a Cedar value.
pub const MAX_JSON_DEPTH: usize = 8;

/// Why facts could not be turned into Cedar values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    /// A JSON number that Cedar cannot hold (Cedar has only 64-bit integers).
    #[error("`{0}` holds a number that is not a 64-bit integer")]
    NotAnInteger(String),
    /// JSON `null`, which Cedar has no value for.
    #[error("`{0}` is null; leave the attribute out instead")]
    Null(String),
    /// Too deeply nested.
    #[error("`{0}` is nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep(String),
    /// Anything Cedar refused.
    #[error("{0}")]
    Cedar(String),
}

/// Whether a target is a tool (MCP tool, API operation) or a resource (data set, repository).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A tool: `Mandate::Tool`.
    Tool,
    /// A resource: `Mandate::Resource`.
    Resource,
}

impl TargetKind {
    /// The Cedar entity type name without namespace.
    pub fn type_name(self) -> &'static str {
        match self {
            TargetKind::Tool => "Tool",
            TargetKind::Resource => "Resource",
        }
    }
}

/// An agent as policies see it (`principal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFacts {
    /// Agent id.
    pub id: String,
    /// Owner id; the agent is a member of `Mandate::Owner::"<owner>"`.
    pub owner: Option<String>,
    /// `low`, `medium` or `high`.
    pub tier: String,
    /// Envelope as `action:target` tokens.
    pub envelope: Vec<String>,
}

/// A tool or resource as policies see it (`resource`), with its catalog labels as attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetFacts {
    /// Tool or resource.
    pub kind: TargetKind,
    /// Its name.
    pub id: String,
    /// Attributes (catalog labels), JSON-shaped.
    pub attrs: serde_json::Map<String, Value>,
}

/// A task as policies see it (`context.task`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFacts {
    /// Task id.
    pub id: String,
    /// Intent text.
    pub intent: String,
    /// Intent class.
    pub intent_class: String,
    /// Granted (or, at admission, requested) `action:target` tokens.
    pub granted: Vec<String>,
    /// Lifetime asked for or granted, in seconds.
    pub ttl_seconds: i64,
    /// Limits the task asked for itself.
    pub budget: mandate_core::Budget,
    /// Hops from the task that started the workflow (0 unless delegated).
    pub depth: i64,
    /// Agents up the delegation chain, the root's first.
    pub delegated_by: Vec<String>,
}

impl TaskFacts {
    /// The Cedar record for `context.task`.
    pub fn to_cedar(&self) -> Result<RestrictedExpression, FactsError> {
        RestrictedExpression::new_record(
            [
                (
                    "id".to_string(),
                    RestrictedExpression::new_string(self.id.clone()),
                ),
                (
                    "intent".to_string(),
                    RestrictedExpression::new_string(self.intent.clone()),
                ),
                (
                    "intent_class".to_string(),
                    RestrictedExpression::new_string(self.intent_class.clone()),
                ),
                ("granted".to_string(), string_set(&self.granted)),
                (
                    "ttl_seconds".to_string(),
                    RestrictedExpression::new_long(self.ttl_seconds),
                ),
                (
                    "depth".to_string(),
                    RestrictedExpression::new_long(self.depth),
                ),
                ("delegated_by".to_string(), string_set(&self.delegated_by)),
            ]
            .into_iter()
            .chain(self.budget.max_calls.map(|n| {
                (
                    "max_calls".to_string(),
                    RestrictedExpression::new_long(clamp(n)),
                )
            }))
            .chain(self.budget.max_calls_per_minute.map(|n| {
                (
                    "max_calls_per_minute".to_string(),
                    RestrictedExpression::new_long(clamp(n)),
                )
            })),
        )
        .map_err(|e| FactsError::Cedar(e.to_string()))
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The Cedar record for `context.flow`: the task's labels before this call, with the counters
/// that concern `target` at `now`.
pub fn flow_to_cedar(
    flow: &mut mandate_core::flow::Flow,
    target: &str,
    unsinked: &std::collections::BTreeSet<String>,
    now: mandate_core::Timestamp,
) -> Result<RestrictedExpression, FactsError> {
    let last_minute = flow.attempts_last_minute(now);
    RestrictedExpression::new_record([
        ("data_read".to_string(), string_set(&flow.data_read)),
        ("unsinked".to_string(), string_set(unsinked)),
        ("egress".to_string(), string_set(&flow.egress)),
        (
            "calls".to_string(),
            RestrictedExpression::new_long(clamp(flow.calls)),
        ),
        (
            "calls_last_minute".to_string(),
            RestrictedExpression::new_long(clamp(last_minute)),
        ),
        (
            "target_calls".to_string(),
            RestrictedExpression::new_long(clamp(flow.target_calls(target))),
        ),
        (
            "distinct_targets".to_string(),
            RestrictedExpression::new_long(clamp(flow.distinct_targets())),
        ),
        (
            "denied_in_a_row".to_string(),
            RestrictedExpression::new_long(clamp(flow.denied_in_a_row)),
        ),
    ])
    .map_err(|e| FactsError::Cedar(e.to_string()))
}

/// The Cedar record for `context.provenance`.
pub fn provenance_to_cedar(
    marks: &mandate_core::provenance::Marks,
) -> Result<RestrictedExpression, FactsError> {
    RestrictedExpression::new_record([
        ("args".to_string(), string_set(&marks.args)),
        ("sources".to_string(), string_set(&marks.sources)),
        ("destinations".to_string(), string_set(&marks.destinations)),
        ("links".to_string(), string_set(&marks.links)),
    ])
    .map_err(|e| FactsError::Cedar(e.to_string()))
}

/// The Cedar record for `context.args`. Unlike [`json_to_cedar`] it accepts any JSON: `null`
/// members are left out, whole floats become integers and other numbers strings, so a call
/// with unusual arguments is still decided (and policies that read such an argument fail closed).
pub fn args_to_cedar(
    args: &serde_json::Map<String, Value>,
) -> Result<RestrictedExpression, FactsError> {
    fn conv(v: &Value, depth: usize) -> Option<RestrictedExpression> {
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => RestrictedExpression::new_bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => RestrictedExpression::new_long(i),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                        RestrictedExpression::new_long(f as i64)
                    }
                    _ => RestrictedExpression::new_string(n.to_string()),
                },
            },
            Value::String(s) => RestrictedExpression::new_string(s.clone()),
            Value::Array(items) => {
                RestrictedExpression::new_set(items.iter().filter_map(|i| conv(i, depth + 1)))
            }
            Value::Object(m) => RestrictedExpression::new_record(
                m.iter()
                    .filter_map(|(k, v)| conv(v, depth + 1).map(|c| (k.clone(), c))),
            )
            .ok()?,
        })
    }
    RestrictedExpression::new_record(
        args.iter()
            .filter_map(|(k, v)| conv(v, 1).map(|c| (k.clone(), c))),
    )
    .map_err(|e| FactsError::Cedar(e.to_string()))
}

fn string_set(items: impl IntoIterator<Item = impl AsRef<str>>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        items
            .into_iter()
            .map(|s| RestrictedExpression::new_string(s.as_ref().to_string())),
    )
}

/// Converts JSON into a Cedar value: strings, 64-bit integers, booleans, arrays (as sets) and
/// objects (as records). `path` names the value in error messages.
pub fn json_to_cedar(v: &Value, path: &str) -> Result<RestrictedExpression, FactsError> {
    json_to_cedar_at(v, path, 0)
}

fn json_to_cedar_at(
    v: &Value,
    path: &str,
    depth: usize,
) -> Result<RestrictedExpression, FactsError> {
    if depth > MAX_JSON_DEPTH {
        return Err(FactsError::TooDeep(path.to_string()));
    }
    Ok(match v {
        Value::Null => return Err(FactsError::Null(path.to_string())),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(
            n.as_i64()
                .ok_or_else(|| FactsError::NotAnInteger(path.to_string()))?,
        ),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(json_to_cedar_at(item, &format!("{path}[{i}]"), depth + 1)?);
            }
            RestrictedExpression::new_set(out)
        }
        Value::Object(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, item) in map {
                out.push((
                    k.clone(),
                    json_to_cedar_at(item, &format!("{path}.{k}"), depth + 1)?,
                ));
            }
            RestrictedExpression::new_record(out).map_err(|e| FactsError::Cedar(e.to_string()))?
        }
    })
}

/// The fixed names of Mandate's Cedar types, parsed once.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub agent: EntityTypeName,
    pub owner: EntityTypeName,
    pub tool: EntityTypeName,
    pub resource: EntityTypeName,
    pub task: EntityTypeName,
    pub action: EntityTypeName,
    pub admin: EntityTypeName,
    pub approval: EntityTypeName,
}

impl Names {
    pub fn new() -> Result<Self, FactsError> {
        let t = |n: &str| {
            EntityTypeName::from_str(&format!("{NAMESPACE}::{n}"))
                .map_err(|e| FactsError::Cedar(e.to_string()))
        };
        Ok(Names {
            agent: t("Agent")?,
            owner: t("Owner")?,
            tool: t("Tool")?,
            resource: t("Resource")?,
            task: t("Task")?,
            action: t("Action")?,
            admin: t("Admin")?,
            approval: t("Approval")?,
        })
    }

    pub fn uid(name: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(name.clone(), EntityId::new(id))
    }

    pub fn target(&self, kind: TargetKind) -> &EntityTypeName {
        match kind {
            TargetKind::Tool => &self.tool,
            TargetKind::Resource => &self.resource,
        }
    }
}

/// Every agent, owner, tool and resource as Cedar entities. Built when the inventory or the
/// catalog changes, never per decision.
#[derive(Clone, Debug)]
pub struct EntityIndex {
    pub(crate) entities: Entities,
}

impl EntityIndex {
    /// The Cedar entities, for benchmarks that compare against raw Cedar.
    pub fn cedar_entities(&self) -> &Entities {
        &self.entities
    }

    /// An index with nothing in it.
    pub fn empty() -> Self {
        EntityIndex {
            entities: Entities::empty(),
        }
    }

    /// Builds the index: the schema's actions (so `action in …` groups work), then the agents,
    /// their owners, and the catalogued targets.
    pub fn build<'a>(
        schema: &cedar_policy::Schema,
        agents: impl IntoIterator<Item = &'a AgentFacts>,
        targets: impl IntoIterator<Item = &'a TargetFacts>,
    ) -> Result<Self, FactsError> {
        let names = Names::new()?;
        let mut owners = BTreeSet::new();
        let mut out = Vec::new();
        for a in agents {
            let mut attrs = HashMap::new();
            attrs.insert(
                "tier".to_string(),
                RestrictedExpression::new_string(a.tier.clone()),
            );
            attrs.insert(
                "orphaned".to_string(),
                RestrictedExpression::new_bool(a.owner.is_none()),
            );
            attrs.insert("envelope".to_string(), string_set(&a.envelope));
            let mut parents = HashSet::new();
            if let Some(o) = &a.owner {
                parents.insert(Names::uid(&names.owner, o));
                owners.insert(o.clone());
            }
            out.push(
                Entity::new(Names::uid(&names.agent, &a.id), attrs, parents)
                    .map_err(|e| FactsError::Cedar(e.to_string()))?,
            );
        }
        for o in owners {
            out.push(Entity::new_no_attrs(
                Names::uid(&names.owner, &o),
                HashSet::new(),
            ));
        }
        for t in targets {
            let mut attrs = HashMap::new();
            for (k, v) in &t.attrs {
                attrs.insert(k.clone(), json_to_cedar(v, k)?);
            }
            out.push(
                Entity::new(
                    Names::uid(names.target(t.kind), &t.id),
                    attrs,
                    HashSet::new(),
                )
                .map_err(|e| FactsError::Cedar(e.to_string()))?,
            );
        }
        let actions = schema
            .action_entities()
            .map_err(|e| FactsError::Cedar(e.to_string()))?;
        let entities = actions
            .add_entities(out, None)
            .map_err(|e| FactsError::Cedar(e.to_string()))?;
        Ok(EntityIndex { entities })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_conversion_limits() {
        assert!(json_to_cedar(&serde_json::json!({"a": [1, "x", true]}), "r").is_ok());
        assert_eq!(
            json_to_cedar(&serde_json::json!({"a": 1.5}), "request").unwrap_err(),
            FactsError::NotAnInteger("request.a".into())
        );
        assert_eq!(
            json_to_cedar(&serde_json::json!({"a": null}), "request").unwrap_err(),
            FactsError::Null("request.a".into())
        );
        let mut deep = serde_json::json!(1);
        for _ in 0..12 {
            deep = serde_json::json!([deep]);
        }
        assert!(matches!(
            json_to_cedar(&deep, "d"),
            Err(FactsError::TooDeep(_))
        ));
    }
}
