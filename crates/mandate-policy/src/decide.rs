//! Asking Cedar, and turning its answer into a [`Verdict`] a person can read.

use cedar_policy::{Authorizer, Context, Decision, Request, Response, RestrictedExpression};

use crate::OPEN_TASK;
use crate::facts::{EntityIndex, Names, TargetKind};
use crate::load::PolicyBundle;

/// A runtime question: may this agent, in this task, do this action on this target now?
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// The agent.
    pub agent: &'a str,
    /// The action.
    pub action: &'a str,
    /// Tool or resource.
    pub target_kind: TargetKind,
    /// The target's name.
    pub target: &'a str,
    /// `context.task`, from [`crate::TaskFacts::to_cedar`].
    pub task: RestrictedExpression,
    /// Further context attributes (`request`, and later `flow`, `args`…).
    pub extra: Vec<(String, RestrictedExpression)>,
}

/// An admission question: may this agent open this task?
#[derive(Clone, Debug)]
pub struct AdmissionQuery<'a> {
    /// The agent.
    pub agent: &'a str,
    /// The task being opened.
    pub task_id: &'a str,
    /// `context.task`, with the requested scope as `granted`.
    pub task: RestrictedExpression,
    /// Whether the credential will be bound to the agent's key (DPoP).
    pub dpop_bound: bool,
    /// `context.request`.
    pub request: RestrictedExpression,
}

/// A decision with the policies that made it and a reason in words.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// Ids of the deciding policies: the permits for an allow, the forbids (or the policies
    /// that failed to evaluate) for a deny; empty for a deny by default.
    pub policies: Vec<String>,
    /// Why, for a person.
    pub reason: String,
}

impl Verdict {
    /// A deny decided outside Cedar (token, scope, schema checks).
    pub fn deny(policy: &str, reason: impl Into<String>) -> Self {
        Verdict {
            allowed: false,
            policies: vec![policy.to_string()],
            reason: reason.into(),
        }
    }
}

fn ids(list: &[String]) -> String {
    list.iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PolicyBundle {
    fn verdict(&self, response: &Response, asked: &str) -> Verdict {
        let diag = response.diagnostics();
        let failed: Vec<String> = diag
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => {
                    pe.policy_id().to_string()
                }
            })
            .collect();
        let mut deciding: Vec<String> = diag.reason().map(ToString::to_string).collect();
        deciding.sort();
        if !failed.is_empty() {
            let detail = diag
                .errors()
                .next()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Verdict {
                allowed: false,
                reason: format!(
                    "policy {} could not be evaluated ({detail}); a policy that cannot be evaluated denies",
                    ids(&failed)
                ),
                policies: failed,
            };
        }
        match response.decision() {
            Decision::Allow => Verdict {
                allowed: true,
                reason: format!("allowed by policy {}", ids(&deciding)),
                policies: deciding,
            },
            Decision::Deny if deciding.is_empty() => Verdict {
                allowed: false,
                policies: Vec::new(),
                reason: format!("no policy permits {asked} (deny by default)"),
            },
            Decision::Deny => {
                let why = deciding
                    .iter()
                    .filter_map(|id| self.meta.get(id).and_then(|m| m.reason.clone()))
                    .next();
                Verdict {
                    allowed: false,
                    reason: match why {
                        Some(w) => format!("denied by policy {}: {w}", ids(&deciding)),
                        None => format!("denied by policy {}", ids(&deciding)),
                    },
                    policies: deciding,
                }
            }
        }
    }

    fn ask(
        &self,
        entities: &EntityIndex,
        principal: cedar_policy::EntityUid,
        action: cedar_policy::EntityUid,
        resource: cedar_policy::EntityUid,
        context: Vec<(String, RestrictedExpression)>,
        asked: &str,
    ) -> Verdict {
        let context = match Context::from_pairs(context) {
            Ok(c) => c,
            Err(e) => {
                return Verdict::deny("mandate:context", format!("request context refused: {e}"));
            }
        };
        let request = match Request::new(principal, action, resource, context, None) {
            Ok(r) => r,
            Err(e) => return Verdict::deny("mandate:context", format!("request refused: {e}")),
        };
        let response =
            Authorizer::new().is_authorized(&request, &self.policies, &entities.entities);
        self.verdict(&response, asked)
    }

    /// Decides a runtime query.
    pub fn decide(&self, entities: &EntityIndex, q: &Query<'_>) -> Verdict {
        let asked = format!(
            "`{}` on {} `{}`",
            q.action,
            match q.target_kind {
                TargetKind::Tool => "tool",
                TargetKind::Resource => "resource",
            },
            q.target
        );
        if q.action == OPEN_TASK || !self.declares_action(q.action) {
            return Verdict::deny(
                "mandate:schema",
                format!("action `{}` is not declared in the policy schema", q.action),
            );
        }
        let names = &self.names;
        let mut context = Vec::with_capacity(2 + q.extra.len());
        context.push(("task".to_string(), q.task.clone()));
        context.push((
            "asked".to_string(),
            RestrictedExpression::new_string(format!("{}:{}", q.action, q.target)),
        ));
        context.extend(q.extra.iter().cloned());
        self.ask(
            entities,
            Names::uid(&names.agent, q.agent),
            Names::uid(&names.action, q.action),
            Names::uid(names.target(q.target_kind), q.target),
            context,
            &asked,
        )
    }

    /// Decides whether a task may be opened.
    pub fn admit(&self, entities: &EntityIndex, q: &AdmissionQuery<'_>) -> Verdict {
        let names = &self.names;
        self.ask(
            entities,
            Names::uid(&names.agent, q.agent),
            Names::uid(&names.action, OPEN_TASK),
            Names::uid(&names.task, q.task_id),
            vec![
                ("task".to_string(), q.task.clone()),
                (
                    "dpop_bound".to_string(),
                    RestrictedExpression::new_bool(q.dpop_bound),
                ),
                ("request".to_string(), q.request.clone()),
            ],
            "opening this task",
        )
    }
}
