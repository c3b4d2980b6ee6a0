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
    /// `context.task`, from [`crate::TaskFacts::to_cedar`] (cached per task by callers).
    pub task: &'a RestrictedExpression,
    /// `context.request`: what the enforcement point reported ([`crate::json_to_cedar`]).
    pub request: RestrictedExpression,
    /// `context.flow`, from [`crate::flow_to_cedar`].
    pub flow: RestrictedExpression,
    /// `context.args`, from [`crate::args_to_cedar`].
    pub args: RestrictedExpression,
    /// `context.provenance`, from [`crate::provenance_to_cedar`].
    pub provenance: RestrictedExpression,
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

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Allowed only with a person's approval of this exact call.
    NeedsApproval,
}

impl Outcome {
    /// `allow`, `deny` or `needs_approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::NeedsApproval => "needs_approval",
        }
    }
}

/// A decision with the policies that made it and a reason in words.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// What was decided.
    pub outcome: Outcome,
    /// Ids of the deciding policies: the permits for an allow, the forbids (or the policies
    /// that failed to evaluate) for a deny, the approval gates for `needs_approval`; empty for
    /// a deny by default.
    pub policies: Vec<String>,
    /// Why, for a person.
    pub reason: String,
}

impl Verdict {
    /// A deny decided outside Cedar (token, scope, schema checks).
    pub fn deny(policy: &str, reason: impl Into<String>) -> Self {
        Verdict {
            outcome: Outcome::Deny,
            policies: vec![policy.to_string()],
            reason: reason.into(),
        }
    }

    /// Whether the action is allowed as it stands.
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }
}

/// A person deciding an approval request.
#[derive(Clone, Debug)]
pub enum Approver<'a> {
    /// An owner, by owner id.
    Owner(&'a str),
    /// An administrator, by token name.
    Admin(&'a str),
}

/// May this person decide this approval request?
#[derive(Clone, Debug)]
pub struct ApprovalQuery<'a> {
    /// Who decides.
    pub approver: Approver<'a>,
    /// The approval request's id.
    pub approval_id: &'a str,
    /// The agent's owner.
    pub owner: Option<&'a str>,
    /// The agent.
    pub agent: &'a str,
    /// The agent's tier.
    pub tier: &'a str,
    /// The action awaiting approval.
    pub action: &'a str,
    /// Its target.
    pub target: &'a str,
}

fn ids(list: &[String]) -> String {
    list.iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PolicyBundle {
    fn verdict(&self, response: &Response, asked: &dyn Fn() -> String) -> Verdict {
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
                outcome: Outcome::Deny,
                reason: format!(
                    "policy {} could not be evaluated ({detail}); a policy that cannot be evaluated denies",
                    ids(&failed)
                ),
                policies: failed,
            };
        }
        match response.decision() {
            Decision::Allow => Verdict {
                outcome: Outcome::Allow,
                reason: match deciding.as_slice() {
                    // The common case: one permit, whose reason string is built once per load.
                    [one] => self
                        .allow_reasons
                        .get(one)
                        .cloned()
                        .unwrap_or_else(|| format!("allowed by policy `{one}`")),
                    _ => format!("allowed by policy {}", ids(&deciding)),
                },
                policies: deciding,
            },
            Decision::Deny if deciding.is_empty() => Verdict {
                outcome: Outcome::Deny,
                policies: Vec::new(),
                reason: format!("no policy permits {} (deny by default)", asked()),
            },
            Decision::Deny => {
                let why = deciding
                    .iter()
                    .filter_map(|id| self.meta.get(id).and_then(|m| m.reason.clone()))
                    .next();
                Verdict {
                    outcome: Outcome::Deny,
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
        policies: &cedar_policy::PolicySet,
        entities: &cedar_policy::Entities,
        (principal, action, resource): (
            cedar_policy::EntityUid,
            cedar_policy::EntityUid,
            cedar_policy::EntityUid,
        ),
        context: Vec<(String, RestrictedExpression)>,
        asked: &dyn Fn() -> String,
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
        let response = Authorizer::new().is_authorized(&request, policies, entities);
        self.verdict(&response, asked)
    }

    /// Decides a runtime query.
    pub fn decide(&self, entities: &EntityIndex, q: &Query<'_>) -> Verdict {
        let asked = || {
            format!(
                "`{}` on {} `{}`",
                q.action,
                match q.target_kind {
                    TargetKind::Tool => "tool",
                    TargetKind::Resource => "resource",
                },
                q.target
            )
        };
        if q.action == OPEN_TASK || q.action == "approve" || !self.declares_action(q.action) {
            return Verdict::deny(
                "mandate:schema",
                format!("action `{}` is not declared in the policy schema", q.action),
            );
        }
        let names = &self.names;
        let context = || {
            vec![
                ("task".to_string(), q.task.clone()),
                (
                    "asked".to_string(),
                    RestrictedExpression::new_string(format!("{}:{}", q.action, q.target)),
                ),
                ("request".to_string(), q.request.clone()),
                ("flow".to_string(), q.flow.clone()),
                ("args".to_string(), q.args.clone()),
                ("provenance".to_string(), q.provenance.clone()),
            ]
        };
        let principal = Names::uid(&names.agent, q.agent);
        let action = Names::uid(&names.action, q.action);
        let resource = Names::uid(names.target(q.target_kind), q.target);
        let verdict = self.ask(
            &self.policies,
            &entities.entities,
            (principal.clone(), action.clone(), resource.clone()),
            context(),
            &asked,
        );
        // A deny that rests only on approval gates becomes `needs_approval`, if the request
        // would be allowed without them.
        let gated = verdict.outcome == Outcome::Deny
            && !verdict.policies.is_empty()
            && verdict.policies.iter().all(|p| self.gates.contains(p));
        if !gated {
            return verdict;
        }
        let ungated = self.ask(
            &self.ungated,
            &entities.entities,
            (principal, action, resource),
            context(),
            &asked,
        );
        if !ungated.allowed() {
            return ungated;
        }
        Verdict {
            outcome: Outcome::NeedsApproval,
            policies: verdict.policies,
            reason: verdict
                .reason
                .replacen("denied by policy", "approval required by policy", 1),
        }
    }

    /// Decides whether a person may decide an approval request.
    pub fn may_approve(&self, entities: &EntityIndex, q: &ApprovalQuery<'_>) -> Verdict {
        let names = &self.names;
        let principal = match q.approver {
            Approver::Owner(o) => Names::uid(&names.owner, o),
            Approver::Admin(a) => Names::uid(&names.admin, a),
        };
        let resource = Names::uid(&names.approval, q.approval_id);
        let mut attrs = std::collections::HashMap::new();
        // An agent without owner gets an owner nobody can be.
        let owner = Names::uid(&names.owner, q.owner.unwrap_or("\u{0}orphaned"));
        attrs.insert(
            "owner".to_string(),
            RestrictedExpression::new_entity_uid(owner),
        );
        attrs.insert(
            "agent".to_string(),
            RestrictedExpression::new_entity_uid(Names::uid(&names.agent, q.agent)),
        );
        for (k, v) in [("tier", q.tier), ("action", q.action), ("target", q.target)] {
            attrs.insert(
                k.to_string(),
                RestrictedExpression::new_string(v.to_string()),
            );
        }
        let entity = match cedar_policy::Entity::new(resource.clone(), attrs, Default::default()) {
            Ok(e) => e,
            Err(e) => return Verdict::deny("mandate:context", e.to_string()),
        };
        let entities = match entities.entities.clone().add_entities([entity], None) {
            Ok(e) => e,
            Err(e) => return Verdict::deny("mandate:context", e.to_string()),
        };
        self.ask(
            &self.policies,
            &entities,
            (principal, Names::uid(&names.action, "approve"), resource),
            Vec::new(),
            &|| "deciding this approval request".to_string(),
        )
    }

    /// Decides whether a task may be opened.
    pub fn admit(&self, entities: &EntityIndex, q: &AdmissionQuery<'_>) -> Verdict {
        let names = &self.names;
        self.ask(
            &self.policies,
            &entities.entities,
            (
                Names::uid(&names.agent, q.agent),
                Names::uid(&names.action, OPEN_TASK),
                Names::uid(&names.task, q.task_id),
            ),
            vec![
                ("task".to_string(), q.task.clone()),
                (
                    "dpop_bound".to_string(),
                    RestrictedExpression::new_bool(q.dpop_bound),
                ),
                ("request".to_string(), q.request.clone()),
            ],
            &|| "opening this task".to_string(),
        )
    }
}
