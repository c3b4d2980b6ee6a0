//! Runtime decisions: one action of one task, judged now, from memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cedar_policy::RestrictedExpression;
use mandate_core::approval::args_digest;
use mandate_core::audit::EventKind;
use mandate_core::flow::FlowAdded;
use mandate_core::scope::{check_action, check_target};
use mandate_core::{Task, TaskState, Tier};
use mandate_crypto::dpop::{DpopExpectation, verify_dpop};
use mandate_crypto::{AccessClaims, JwtError};
use mandate_policy::{
    Labels, Outcome, Query, TargetKind, Verdict, args_to_cedar, flow_to_cedar, json_to_cedar,
    provenance_to_cedar,
};
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

/// Largest serialized `arguments` accepted with a decision.
pub const MAX_ARGUMENTS_BYTES: usize = 16 * 1024;

/// A runtime question.
#[derive(Clone, Debug)]
pub struct DecideInput {
    /// The task credential.
    pub token: String,
    /// Its DPoP proof, when the credential is key-bound.
    pub dpop: Option<DpopInput>,
    /// The client certificate of the connection it came over, when verified (mutual TLS).
    pub client_cert: Option<crate::ClientCert>,
    /// The action.
    pub action: String,
    /// The tool or resource.
    pub target: Target,
    /// Facts reported by the enforcement point (`context.request` in policies).
    pub context: serde_json::Map<String, serde_json::Value>,
    /// The call's arguments (`context.args`; checked against argument rules in the scope).
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// An approval request this call claims to be covered by.
    pub approval_id: Option<String>,
    /// How long to wait for a person's approval, in seconds (bounded by configuration).
    pub wait: u64,
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionOutcome {
    /// `allow`, `deny` or `needs_approval`.
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
    /// The approval request, when one is pending or was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Labels this decision added to the task's flow.
    #[serde(skip_serializing_if = "FlowAdded::is_empty")]
    pub flow_added: FlowAdded,
}

/// A task as an enforcement point needs it to shape what the agent may see.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// The task.
    pub task_id: String,
    /// Its agent.
    pub agent: String,
    /// Its granted scope.
    pub scope: mandate_core::Scope,
}

/// A decision not yet recorded; see [`Broker::commit_decision`].
#[must_use = "a decision must be recorded"]
#[derive(Debug)]
pub struct PendingAudit {
    ops: Vec<Op>,
}

impl PendingAudit {
    pub(crate) fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
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

/// Credentials whose signature was verified, keyed by the SHA-256 of the token, so a task's
/// repeated calls skip the signature check. A hit still checks expiry; the task's state is
/// checked on every call regardless.
#[derive(Debug, Default)]
pub(crate) struct VerifiedTokens {
    map: std::sync::RwLock<HashMap<[u8; 32], Arc<AccessClaims>>>,
}

/// Most verified credentials remembered.
const VERIFIED_CAP: usize = 50_000;

fn token_key(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl VerifiedTokens {
    fn get(&self, token: &str, now: i64) -> Option<Arc<AccessClaims>> {
        let map = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&token_key(token)).filter(|c| c.exp > now).cloned()
    }

    fn insert(&self, token: &str, claims: Arc<AccessClaims>, now: i64) {
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERIFIED_CAP {
            map.retain(|_, c| c.exp > now);
            if map.len() >= VERIFIED_CAP {
                map.clear();
            }
        }
        map.insert(token_key(token), claims);
    }

    /// Forgets credentials that expired.
    pub(crate) fn purge(&self, now: i64) {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, c| c.exp > now);
    }
}

/// Why a credential was refused, with what is known of it for the audit.
/// A credential that passed: its claims, its task, and, on a replica, the DPoP proof's one-time
/// key (and expiry) the caller must spend in the store so no other replica accepts it.
type Checked = (Arc<AccessClaims>, Arc<TaskEntry>, Option<(String, i64)>);

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
        cert: Option<&crate::ClientCert>,
    ) -> Result<Checked, Refusal> {
        let now = self.now();
        let refuse = |error, agent: Option<&str>, task: Option<&str>| Refusal {
            error,
            agent: agent.map(str::to_string),
            task: task.map(str::to_string),
        };
        if let Some(why) = self.stale() {
            return Err(refuse(DecideError::Unavailable(why), None, None));
        }
        let claims = match self.verified.get(token, now.as_secs()) {
            Some(c) => c,
            None => {
                let c = self
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
                let c = Arc::new(c);
                self.verified.insert(token, c.clone(), now.as_secs());
                c
            }
        };
        let (agent, task_id) = (
            Some(claims.client_id.as_str()),
            Some(claims.task_id.as_str()),
        );
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
            if task.agent.as_str() != claims.client_id {
                return Err(refuse(
                    DecideError::InvalidToken("credential does not match its task".into()),
                    agent,
                    task_id,
                ));
            }
        }
        // Copied out so the ancestors' locks are taken after this task's is released.
        let delegation = entry.read().delegation.clone();
        if !self.ancestors_live(delegation.as_ref(), now) {
            return Err(refuse(
                DecideError::InvalidToken(format!(
                    "task `{}` was delegated from a task that has ended",
                    claims.task_id
                )),
                agent,
                task_id,
            ));
        }
        // RFC 8705 section 3: a certificate-bound credential is used only over a connection
        // presenting that certificate.
        if let Some(want) = claims.cnf.as_ref().and_then(|c| c.x5t_s256.as_ref()) {
            let presented = cert.is_some_and(|c| mandate_crypto::secret::ct_eq(want, &c.x5t_s256));
            if !presented {
                return Err(refuse(
                    DecideError::InvalidToken(
                        "credential is bound to a client certificate: present it over mutual TLS"
                            .into(),
                    ),
                    agent,
                    task_id,
                ));
            }
        }
        if let Some(cnf_jkt) = claims.cnf.as_ref().and_then(|c| c.jkt.as_ref()) {
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
            if !mandate_crypto::secret::ct_eq(&proof.jkt, cnf_jkt) {
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
            let key = format!("{}:{}", proof.jkt, proof.jti);
            if self.replicated() {
                // Other replicas must refuse this proof too: spent in the store by the caller.
                return Ok((claims, entry, Some((format!("dpop-decide:{key}"), until))));
            }
            if !self.replay.first_use(key, until) {
                return Err(refuse(
                    DecideError::InvalidDpopProof(
                        "dpop proof was already used (replay refused)".into(),
                    ),
                    agent,
                    task_id,
                ));
            }
        }
        Ok((claims, entry, None))
    }

    /// Decides one action and records it. Errors mean no decision could be made (bad input or a
    /// refused credential); a made decision, allow, deny or needs-approval, is an `Ok`.
    pub async fn decide(&self, input: &DecideInput) -> Result<DecisionOutcome, DecideError> {
        let (outcome, pending) = self.decide_pending(input).await?;
        self.commit_decision(pending, None, None).await?;
        Ok(outcome)
    }

    /// Decides one action without recording it yet: an enforcement point that acts on the
    /// decision (the gateway) records it afterwards, with what happened, in one audit event.
    /// The caller must pass the result to [`Broker::commit_decision`].
    pub async fn decide_pending(
        &self,
        input: &DecideInput,
    ) -> Result<(DecisionOutcome, PendingAudit), DecideError> {
        let started = Instant::now();
        let (request, args) = match self.check_decide_input(input) {
            Ok(ok) => ok,
            Err(msg) => {
                self.record_rejected_request("/v1/decide", &msg).await;
                return Err(DecideError::BadRequest(msg));
            }
        };
        let (claims, entry) = self
            .credential_or_audit(
                &input.token,
                input.dpop.as_ref(),
                input.client_cert.as_ref(),
                &input.action,
                &input.target,
            )
            .await?;
        self.decide_entry(
            input,
            &entry,
            &claims.task_id,
            &claims.client_id,
            started,
            request,
            args,
        )
        .await
    }

    /// Like [`Broker::decide_pending`], for an enforcement point in this process that checked
    /// the credential of this same request already (its DPoP proof is spent): the task is taken
    /// by id, and it must still be active.
    pub async fn decide_pending_checked(
        &self,
        input: &DecideInput,
        task_id: &str,
    ) -> Result<(DecisionOutcome, PendingAudit), DecideError> {
        let started = Instant::now();
        // The credential was checked earlier in the request; the store may have gone since.
        if let Some(why) = self.stale() {
            return Err(DecideError::Unavailable(why));
        }
        let (request, args) = match self.check_decide_input(input) {
            Ok(ok) => ok,
            Err(msg) => {
                self.record_rejected_request("gateway", &msg).await;
                return Err(DecideError::BadRequest(msg));
            }
        };
        let entry = self
            .inventory
            .task(task_id)
            .ok_or_else(|| DecideError::InvalidToken(format!("task `{task_id}` is not known")))?;
        let agent = entry.read().agent.to_string();
        self.decide_entry(input, &entry, task_id, &agent, started, request, args)
            .await
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the two entry points share everything below"
    )]
    async fn decide_entry(
        &self,
        input: &DecideInput,
        entry: &Arc<TaskEntry>,
        task_id: &str,
        agent: &str,
        started: Instant,
        request: RestrictedExpression,
        args: RestrictedExpression,
    ) -> Result<(DecisionOutcome, PendingAudit), DecideError> {
        let entry = entry.clone();
        let tier = self
            .inventory
            .tier(&entry.read().agent)
            .unwrap_or(Tier::High);
        let now = self.now();
        let bundle = self.policy.current();
        let labels = bundle.catalog().get(&input.target.id).map(|(_, l)| l);
        // The task is locked from judging to recording, so two calls of one task cannot both
        // be judged on the labels from before either of them.
        let mut step = {
            let mut task = entry.write();
            let verdict = self.judge(
                &mut task, &entry, &bundle, input, &args, request, now, false,
            );
            self.apply(&mut task, &input.target.id, verdict, labels, tier, now)
        };
        if step.verdict.outcome == Outcome::NeedsApproval {
            self.approval_path(&entry, input, &mut step, labels).await?;
        }
        // What this call read or where it sent data becomes the whole workflow's.
        let shared = self.share_labels(&entry, &step.added);
        step.ops.extend(shared);
        let mut event = self.event(EventKind::Decision);
        let delegation = {
            let task = entry.read();
            event.agent = Some(task.agent.to_string());
            event.owner = task.owner.as_ref().map(ToString::to_string);
            event.task = Some(task.id.to_string());
            event.intent = Some(task.intent.text.clone());
            crate::delegation::delegation_detail(&task)
        };
        let decision = step.verdict.outcome.as_str();
        event.action = Some(input.action.clone());
        event.resource = Some(target_label(&input.target));
        event.decision = Some(decision.into());
        event.policies = step.verdict.policies.clone();
        event.reason = Some(step.verdict.reason.clone());
        let args_value = serde_json::Value::Object(input.arguments.clone());
        let mut detail = serde_json::Map::new();
        if !input.arguments.is_empty() {
            detail.insert("args_digest".into(), args_digest(&args_value).into());
            if self.cfg.audit_arguments {
                detail.insert("arguments".into(), args_value);
            }
        }
        if !step.added.is_empty() {
            detail.insert("flow_added".into(), serde_json::json!(step.added));
        }
        if let Some(id) = &step.approval_id {
            detail.insert("approval_id".into(), id.clone().into());
        }
        if !delegation.is_null() {
            detail.insert("delegation".into(), delegation);
        }
        if !detail.is_empty() {
            event.detail = serde_json::Value::Object(detail);
        }
        let mut ops = std::mem::take(&mut step.ops);
        ops.insert(0, Op::Audit(event));
        metrics::counter!("mandate_decisions_total", "outcome" => decision).increment(1);
        metrics::histogram!("mandate_decision_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok((
            DecisionOutcome {
                decision,
                allowed: step.verdict.allowed(),
                task_id: task_id.to_string(),
                agent: agent.to_string(),
                policies: step.verdict.policies,
                reason: step.verdict.reason,
                approval_id: step.approval_id,
                flow_added: step.added,
            },
            PendingAudit { ops },
        ))
    }

    /// Records a decision made with [`Broker::decide_pending`], as `kind` (default `decision`)
    /// and with `extra` details (the gateway adds the upstream, the outcome and the latency).
    /// Waits for the commit unless configured otherwise; a decision that changed the task is
    /// always committed before this returns.
    pub async fn commit_decision(
        &self,
        pending: PendingAudit,
        kind: Option<EventKind>,
        extra: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<(), DecideError> {
        let mut ops = pending.ops;
        if let Some(Op::Audit(event)) = ops.first_mut() {
            if let Some(k) = kind {
                event.kind = k;
            }
            if let Some(extra) = extra {
                let mut detail = match std::mem::take(&mut event.detail) {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                detail.extend(extra);
                event.detail = serde_json::Value::Object(detail);
            }
        }
        let unavailable = |e: mandate_store::StoreError| {
            // Without the store this replica cannot see other replicas' revocations either.
            self.lost_store();
            DecideError::Unavailable(format!(
                "the decision could not be recorded, so it is not given: {e}"
            ))
        };
        if self.cfg.audit_sync_decisions || ops.len() > 1 {
            self.store.commit(ops).await.map_err(unavailable)?;
        } else {
            self.store.enqueue(ops).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Checks a credential and returns its task's scope (for listing what the agent may use).
    /// A refused credential is audited like at decision time.
    pub async fn task_view(
        &self,
        token: &str,
        dpop: Option<&DpopInput>,
        cert: Option<&crate::ClientCert>,
    ) -> Result<TaskView, DecideError> {
        let probe = Target {
            kind: TargetKind::Tool,
            id: "-".into(),
        };
        let (claims, entry) = self
            .credential_or_audit(token, dpop, cert, "list", &probe)
            .await?;
        let scope = entry.read().scope.clone();
        Ok(TaskView {
            task_id: claims.task_id.clone(),
            agent: claims.client_id.clone(),
            scope,
        })
    }

    fn check_decide_input(
        &self,
        input: &DecideInput,
    ) -> Result<(RestrictedExpression, RestrictedExpression), String> {
        check_action(&input.action).map_err(|e| e.to_string())?;
        check_target(&input.target.id).map_err(|e| e.to_string())?;
        let request = json_to_cedar(&serde_json::Value::Object(input.context.clone()), "context")
            .map_err(|e| e.to_string())?;
        let size = json_size(&input.arguments);
        if size > MAX_ARGUMENTS_BYTES {
            return Err(format!(
                "arguments are larger than {MAX_ARGUMENTS_BYTES} bytes"
            ));
        }
        let args = args_to_cedar(&input.arguments).map_err(|e| e.to_string())?;
        if let Some(id) = &input.approval_id
            && (id.is_empty() || id.len() > 64)
        {
            return Err("approval_id is malformed".into());
        }
        Ok((request, args))
    }

    /// Checks a credential; a refusal is counted and audited.
    pub(crate) async fn credential_or_audit(
        &self,
        token: &str,
        dpop: Option<&DpopInput>,
        cert: Option<&crate::ClientCert>,
        action: &str,
        target: &Target,
    ) -> Result<(Arc<AccessClaims>, Arc<TaskEntry>), DecideError> {
        let checked = match self.credential(token, dpop, cert) {
            Ok((claims, entry, None)) => return Ok((claims, entry)),
            Ok((claims, entry, Some((key, until)))) => {
                let spent = self
                    .store
                    .commit(vec![Op::ConsumeOnce {
                        key,
                        expires_at: mandate_core::Timestamp::from_secs(until),
                    }])
                    .await;
                match spent {
                    Ok(_) => return Ok((claims, entry)),
                    Err(mandate_store::StoreError::Conflict(_)) => Err(Refusal {
                        error: DecideError::InvalidDpopProof(
                            "dpop proof was already used (replay refused)".into(),
                        ),
                        agent: Some(claims.client_id.clone()),
                        task: Some(claims.task_id.clone()),
                    }),
                    Err(e) => {
                        self.lost_store();
                        return Err(DecideError::Unavailable(format!(
                            "the dpop proof could not be checked against other replicas: {e}"
                        )));
                    }
                }
            }
            Err(r) => Err(r),
        };
        match checked {
            Ok(ok) => Ok(ok),
            Err(r) => {
                metrics::counter!("mandate_credentials_refused_total").increment(1);
                let mut e = self.event(EventKind::CredentialRefused);
                e.agent = r.agent;
                e.task = r.task;
                e.action = Some(action.to_string());
                e.resource = Some(target_label(target));
                e.reason = Some(r.error.to_string());
                self.audit_best_effort(e).await;
                Err(r.error)
            }
        }
    }

    /// Judges a call against the task's scope, its argument rules (unless `probe`) and the
    /// policies. Changes nothing but the task's rate window.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the parts are all different"
    )]
    pub(crate) fn judge(
        &self,
        task: &mut Task,
        entry: &TaskEntry,
        bundle: &mandate_policy::PolicyBundle,
        input: &DecideInput,
        args: &RestrictedExpression,
        request: RestrictedExpression,
        now: mandate_core::Timestamp,
        probe: bool,
    ) -> Verdict {
        if task.state != TaskState::Active {
            // Ended while this call waited for the lock.
            return Verdict::deny(
                "mandate:task-state",
                format!("task `{}` is {}", task.id, task.state),
            );
        }
        if !task.scope.allows(&input.action, &input.target.id) {
            return Verdict::deny(
                "mandate:task-scope",
                format!(
                    "`{}` on `{}` is outside the scope of task `{}` (granted: {})",
                    input.action, input.target.id, task.id, task.scope
                ),
            );
        }
        // A catalogued target is one kind; asking for it as the other would judge it without
        // its labels.
        if let Some((kind, _)) = bundle.catalog().get(&input.target.id)
            && kind != input.target.kind
        {
            return Verdict::deny(
                "mandate:target-kind",
                format!(
                    "`{}` is catalogued as a {}, not a {}",
                    input.target.id,
                    kind.type_name().to_ascii_lowercase(),
                    input.target.kind.type_name().to_ascii_lowercase()
                ),
            );
        }
        if !task.provenance.request_known() {
            let pinned = task.scope.pinned_values();
            let values = task.intent.values.iter().chain(&pinned).map(String::as_str);
            task.provenance.set_request(&task.intent.text, values);
        }
        let catalogued = bundle.catalog().get(&input.target.id).map(|(_, l)| l);
        let destinations = catalogued.map_or(&[][..], |l| l.destinations.as_slice());
        let marks = task.provenance.marks(&input.arguments, destinations);
        let carries_third_party = |name: &str| {
            marks
                .args
                .iter()
                .any(|a| a == name || a.strip_prefix(name).is_some_and(|r| r.starts_with('.')))
        };
        // A probe (a search: may the task do this at all?) has no arguments to check.
        if !probe
            && let Err(why) =
                task.scope
                    .check_args(&input.target.id, &input.arguments, &carries_third_party)
        {
            return Verdict::deny("mandate:task-arguments", why);
        }
        let unsinked = bundle
            .catalog()
            .unsinked(&input.target.id, &task.flow.data_read);
        let flow = match flow_to_cedar(&mut task.flow, &input.target.id, &unsinked, now) {
            Ok(f) => f,
            Err(e) => return Verdict::deny("mandate:context", e.to_string()),
        };
        let provenance = match provenance_to_cedar(&marks) {
            Ok(p) => p,
            Err(e) => return Verdict::deny("mandate:context", e.to_string()),
        };
        bundle.decide(
            &self.entities.load(),
            &Query {
                agent: task.agent.as_str(),
                action: &input.action,
                target_kind: input.target.kind,
                target: &input.target.id,
                task: &entry.facts,
                request,
                flow,
                args: args.clone(),
                provenance,
            },
        )
    }

    /// Records a verdict in the task's flow labels; suspends the task when it keeps retrying
    /// what it may not do.
    fn apply(
        &self,
        task: &mut Task,
        target: &str,
        verdict: Verdict,
        labels: Option<&Labels>,
        tier: Tier,
        now: mandate_core::Timestamp,
    ) -> Step {
        let mut step = Step {
            verdict,
            added: FlowAdded::default(),
            ops: Vec::new(),
            approval_id: None,
        };
        match step.verdict.outcome {
            Outcome::Allow => {
                step.added = record_allowed(task, target, labels, now);
                if !step.added.is_empty() {
                    // Labels survive a restart: they decide what the task may do next.
                    step.ops.push(Op::UpdateTask(task.clone()));
                }
            }
            Outcome::Deny => {
                if task.state == TaskState::Active {
                    task.flow.record_denied(now);
                    let limit = self
                        .cfg
                        .suspend_after_denied
                        .get(&tier)
                        .copied()
                        .unwrap_or(10);
                    if task.flow.denied_in_a_row >= limit {
                        task.state = TaskState::Revoked;
                        task.ended_at = Some(now);
                        task.end_reason = Some(format!(
                            "suspended: {} denied calls in a row (limit for {tier} tier: {limit})",
                            task.flow.denied_in_a_row
                        ));
                        step.ops.extend(self.end_ops_by(
                            task.clone(),
                            Some("mandate:velocity"),
                            &step.verdict.policies,
                        ));
                    }
                }
            }
            Outcome::NeedsApproval => {}
        }
        step
    }
}

/// A decision in the making: the verdict, what it added to the flow labels, and what must be
/// written with its audit record.
pub(crate) struct Step {
    pub verdict: Verdict,
    pub added: FlowAdded,
    pub ops: Vec<Op>,
    pub approval_id: Option<String>,
}

/// Records an allowed call in the task's flow labels.
pub(crate) fn record_allowed(
    task: &mut Task,
    target: &str,
    labels: Option<&Labels>,
    now: mandate_core::Timestamp,
) -> FlowAdded {
    let empty = std::collections::BTreeSet::new();
    let target_classes = labels.map_or(&empty, |l| &l.data_classes);
    let egress = labels.and_then(Labels::egress_destination);
    task.flow
        .record_allowed(target, target_classes, egress, now)
}

/// The length of `v` serialised as JSON, counted without building the text.
fn json_size(v: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

pub(crate) fn target_label(t: &Target) -> String {
    let kind = match t.kind {
        TargetKind::Tool => "tool",
        TargetKind::Resource => "resource",
    };
    format!("{kind}:{}", t.id.chars().take(256).collect::<String>())
}
