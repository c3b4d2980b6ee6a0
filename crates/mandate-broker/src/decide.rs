//! Runtime decisions: one action of one task, judged now, from memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mandate_core::TaskState;
use mandate_core::audit::EventKind;
use mandate_core::scope::{check_action, check_target};
use mandate_crypto::dpop::{DpopExpectation, verify_dpop};
use mandate_crypto::{AccessClaims, JwtError};
use mandate_policy::{Query, TargetKind, Verdict, json_to_cedar};
use mandate_store::Op;
use serde::Serialize;

use crate::Broker;
use crate::error::DecideError;
use crate::state::TaskEntry;

/// A DPoP proof presented with a credential, and the request it was made for.
#[derive(Clone, Debug)]
pub struct DpopInput {
    /// The proof JWT.
    pub proof: String,
    /// HTTP method of the agent's request.
    pub method: String,
    /// URL of the agent's request.
    pub url: String,
}

/// What is acted on.
#[derive(Clone, Debug)]
pub struct Target {
    /// Tool or resource.
    pub kind: TargetKind,
    /// Its name.
    pub id: String,
}

/// A runtime question.
#[derive(Clone, Debug)]
pub struct DecideInput {
    /// The task credential.
    pub token: String,
    /// Its DPoP proof, when the credential is key-bound.
    pub dpop: Option<DpopInput>,
    /// The action.
    pub action: String,
    /// The tool or resource.
    pub target: Target,
    /// Facts reported by the enforcement point (`context.request` in policies).
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionOutcome {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Whether allowed.
    #[serde(skip)]
    pub allowed: bool,
    /// The task.
    pub task_id: String,
    /// The agent.
    pub agent: String,
    /// Deciding policies.
    pub policies: Vec<String>,
    /// Why.
    pub reason: String,
}

/// DPoP proofs seen recently, to refuse their replay.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayCache {
    /// Remembers `key` until `until`; false if it was already there.
    pub fn first_use(&self, key: String, until: i64) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains_key(&key) {
            return false;
        }
        seen.insert(key, until);
        true
    }

    pub fn purge(&self, now: i64) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, until| *until >= now);
    }
}

/// Why a credential was refused, with what is known of it for the audit.
struct Refusal {
    error: DecideError,
    agent: Option<String>,
    task: Option<String>,
}

impl Broker {
    /// Checks a presented credential: signature, expiry, its task being active, and its DPoP
    /// proof when it is key-bound.
    fn credential(
        &self,
        token: &str,
        dpop: Option<&DpopInput>,
    ) -> Result<(AccessClaims, Arc<TaskEntry>), Refusal> {
        let now = self.now();
        let refuse = |error, agent: Option<&str>, task: Option<&str>| Refusal {
            error,
            agent: agent.map(str::to_string),
            task: task.map(str::to_string),
        };
        let claims = self
            .keys
            .load()
            .verify_access_token(token, &self.cfg.issuer, &self.cfg.audience, now.as_secs())
            .map_err(|e| {
                let msg = match e {
                    JwtError::Expired => "credential has expired".to_string(),
                    other => format!("credential refused: {other}"),
                };
                refuse(DecideError::InvalidToken(msg), None, None)
            })?;
        let (agent, task_id) = (Some(claims.sub.as_str()), Some(claims.task_id.as_str()));
        let entry = self.inventory.task(&claims.task_id).ok_or_else(|| {
            refuse(
                DecideError::InvalidToken(format!("task `{}` is not known", claims.task_id)),
                agent,
                task_id,
            )
        })?;
        {
            let task = entry.read();
            if task.state != TaskState::Active {
                return Err(refuse(
                    DecideError::InvalidToken(format!(
                        "task `{}` is {}; its credential is no longer valid",
                        task.id, task.state
                    )),
                    agent,
                    task_id,
                ));
            }
            if task.expires_at <= now {
                return Err(refuse(
                    DecideError::InvalidToken(format!("task `{}` has expired", task.id)),
                    agent,
                    task_id,
                ));
            }
            if task.agent.as_str() != claims.sub {
                return Err(refuse(
                    DecideError::InvalidToken("credential does not match its task".into()),
                    agent,
                    task_id,
                ));
            }
        }
        if let Some(cnf) = &claims.cnf {
            let Some(d) = dpop else {
                return Err(refuse(
                    DecideError::InvalidDpopProof(
                        "credential is bound to the agent's key: a DPoP proof is required".into(),
                    ),
                    agent,
                    task_id,
                ));
            };
            let want = DpopExpectation {
                method: &d.method,
                url: &d.url,
                access_token: Some(token),
                now: now.as_secs(),
                max_age: self.cfg.dpop_max_age,
            };
            let proof = verify_dpop(&d.proof, &want).map_err(|e| {
                refuse(
                    DecideError::InvalidDpopProof(format!("dpop proof refused: {e}")),
                    agent,
                    task_id,
                )
            })?;
            if !mandate_crypto::secret::ct_eq(&proof.jkt, &cnf.jkt) {
                return Err(refuse(
                    DecideError::InvalidDpopProof(
                        "dpop proof was signed by a key other than the one the credential is bound to"
                            .into(),
                    ),
                    agent,
                    task_id,
                ));
            }
            let until = proof.iat + self.cfg.dpop_max_age + self.cfg.leeway;
            if !self
                .replay
                .first_use(format!("{}:{}", proof.jkt, proof.jti), until)
            {
                return Err(refuse(
                    DecideError::InvalidDpopProof(
                        "dpop proof was already used (replay refused)".into(),
                    ),
                    agent,
                    task_id,
                ));
            }
        }
        Ok((claims, entry))
    }

    /// Decides one action. Errors mean no decision could be made (bad input or a refused
    /// credential); a made decision, allow or deny, is an `Ok`.
    pub async fn decide(&self, input: &DecideInput) -> Result<DecisionOutcome, DecideError> {
        let started = Instant::now();
        let checked = check_action(&input.action)
            .and_then(|()| check_target(&input.target.id))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                json_to_cedar(&serde_json::Value::Object(input.context.clone()), "context")
                    .map_err(|e| e.to_string())
            });
        let request = match checked {
            Ok(r) => r,
            Err(msg) => {
                self.record_rejected_request("/v1/decide", &msg).await;
                return Err(DecideError::BadRequest(msg));
            }
        };
        let (claims, entry) = match self.credential(&input.token, input.dpop.as_ref()) {
            Ok(ok) => ok,
            Err(r) => {
                metrics::counter!("mandate_credentials_refused_total").increment(1);
                let mut e = self.event(EventKind::CredentialRefused);
                e.agent = r.agent;
                e.task = r.task;
                e.action = Some(input.action.clone());
                e.resource = Some(target_label(&input.target));
                e.reason = Some(r.error.to_string());
                self.audit_best_effort(e).await;
                return Err(r.error);
            }
        };
        let (verdict, mut event) = {
            let task = entry.read();
            let verdict = if !task.scope.allows(&input.action, &input.target.id) {
                Verdict::deny(
                    "mandate:task-scope",
                    format!(
                        "`{}` on `{}` is outside the scope of task `{}` (granted: {})",
                        input.action, input.target.id, task.id, task.scope
                    ),
                )
            } else {
                let bundle = self.policy.current();
                bundle.decide(
                    &self.entities.load(),
                    &Query {
                        agent: task.agent.as_str(),
                        action: &input.action,
                        target_kind: input.target.kind,
                        target: &input.target.id,
                        task: entry.facts.clone(),
                        extra: vec![("request".to_string(), request)],
                    },
                )
            };
            let mut e = self.event(EventKind::Decision);
            e.agent = Some(task.agent.to_string());
            e.owner = task.owner.as_ref().map(ToString::to_string);
            e.task = Some(task.id.to_string());
            e.intent = Some(task.intent.text.clone());
            (verdict, e)
        };
        let decision = if verdict.allowed { "allow" } else { "deny" };
        event.action = Some(input.action.clone());
        event.resource = Some(target_label(&input.target));
        event.decision = Some(decision.into());
        event.policies = verdict.policies.clone();
        event.reason = Some(verdict.reason.clone());
        if self.cfg.audit_sync_decisions {
            self.store
                .commit(vec![Op::Audit(event)])
                .await
                .map_err(|e| {
                    DecideError::Unavailable(format!(
                        "the decision could not be recorded, so it is not given: {e}"
                    ))
                })?;
        } else {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.commit(vec![Op::Audit(event)]).await {
                    tracing::error!(error = %e, "could not record decision");
                }
            });
        }
        metrics::counter!("mandate_decisions_total", "outcome" => decision).increment(1);
        metrics::histogram!("mandate_decision_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(DecisionOutcome {
            decision,
            allowed: verdict.allowed,
            task_id: claims.task_id,
            agent: claims.sub,
            policies: verdict.policies,
            reason: verdict.reason,
        })
    }
}

fn target_label(t: &Target) -> String {
    let kind = match t.kind {
        TargetKind::Tool => "tool",
        TargetKind::Resource => "resource",
    };
    format!("{kind}:{}", t.id.chars().take(256).collect::<String>())
}
