//! The token service: opening tasks (client credentials), introspection (RFC 7662) and
//! revocation (RFC 7009).

use std::sync::Arc;

use mandate_core::audit::EventKind;
use mandate_core::scope::Grant;
use mandate_core::{Agent, Budget, Intent, Scope, Task, TaskId, TaskState, Timestamp};
use mandate_crypto::dpop::{DpopExpectation, verify_dpop};
use mandate_crypto::{AccessClaims, Confirmation};
use mandate_policy::{AdmissionQuery, Verdict, json_to_cedar};
use mandate_store::{Op, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Broker;
use crate::admin::Principal;
use crate::attest::{Authenticated, ClientAuth};
use crate::error::OAuthError;
use crate::state::{TaskEntry, task_facts};

/// The RFC 9396 `type` of Mandate's task description.
pub const TASK_DETAILS_TYPE: &str = "mandate_task";
/// Largest `authorization_details` parameter accepted.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// Most entries in `authorization_details`.
pub const MAX_DETAILS_ENTRIES: usize = 16;

/// A token request, as the HTTP layer parsed it.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// Client authentication.
    pub auth: ClientAuth,
    /// `scope`.
    pub scope: Option<String>,
    /// `authorization_details` (a JSON array, as sent).
    pub authorization_details: Option<String>,
    /// The `DPoP` header.
    pub dpop: Option<String>,
    /// Token exchange (RFC 8693) parameters, for delegation.
    pub exchange: ExchangeParams,
    /// `code`, for the authorization-code grant.
    pub code: Option<String>,
    /// `code_verifier` (RFC 7636).
    pub code_verifier: Option<String>,
    /// `redirect_uri`, as sent with the authorization request.
    pub redirect_uri: Option<String>,
}

/// The RFC 8693 section 2.1 parameters of a token exchange request.
#[derive(Clone, Debug, Default)]
pub struct ExchangeParams {
    /// `subject_token`: the parent task's credential.
    pub subject_token: Option<String>,
    /// `subject_token_type`.
    pub subject_token_type: Option<String>,
    /// `actor_token`: the child agent's own identity proof.
    pub actor_token: Option<String>,
    /// `actor_token_type`.
    pub actor_token_type: Option<String>,
    /// `requested_token_type`.
    pub requested_token_type: Option<String>,
    /// `resource` and `audience` values, which must name this service when present.
    pub targets: Vec<String>,
    /// `dpop_jkt` (RFC 9449 section 10): the key the child's credential is bound to.
    pub dpop_jkt: Option<String>,
}

/// A successful token response (RFC 6749 section 5.1, RFC 9396 section 7).
#[derive(Clone, Debug, Serialize)]
pub struct TokenResponse {
    /// The task credential.
    pub access_token: String,
    /// `DPoP` when key-bound, else `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// Granted scope.
    pub scope: String,
    /// Granted task.
    pub authorization_details: Value,
    /// The task's id.
    pub task_id: String,
    /// RFC 8693: what was issued, for a token exchange.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// Mandate's task description inside `authorization_details`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskDetails {
    #[serde(rename = "type")]
    _type: String,
    intent: Option<String>,
    intent_class: Option<String>,
    ttl: Option<i64>,
    #[serde(default)]
    access: Vec<Grant>,
    #[serde(default)]
    budget: Budget,
    /// Values the request named beyond its intent text.
    #[serde(default)]
    values: Vec<String>,
}

/// A one-time value (an assertion or DPoP `jti`) and when it may be forgotten.
pub(crate) type OnceValue = (String, Timestamp);

/// The writes that spend one-time values (assertion and DPoP `jti`s); a second use conflicts.
pub(crate) fn once_ops(once: &[(String, Timestamp)]) -> Vec<Op> {
    once.iter()
        .map(|(key, exp)| Op::ConsumeOnce {
            key: key.clone(),
            expires_at: *exp,
        })
        .collect()
}

/// What an agent asked for, parsed and checked for form.
#[derive(Debug)]
pub(crate) struct TaskAsk {
    pub(crate) intent: Intent,
    pub(crate) scope: Scope,
    pub(crate) ttl: i64,
    /// Whether the request named its TTL (else it is the default).
    pub(crate) ttl_asked: bool,
    pub(crate) budget: Budget,
    pub(crate) via_details: bool,
}

fn details_error(reason: String) -> OAuthError {
    OAuthError::InvalidAuthorizationDetails {
        reason,
        policies: Vec::new(),
        task_id: None,
    }
}

impl Broker {
    pub(crate) fn parse_ask(
        &self,
        req: &TokenRequest,
        agent: &Agent,
    ) -> Result<TaskAsk, OAuthError> {
        let mut scope = match &req.scope {
            Some(s) => Scope::parse(s).map_err(|e| OAuthError::InvalidScope {
                reason: format!("scope is malformed: {e}"),
                policies: Vec::new(),
                task_id: None,
            })?,
            None => Scope::empty(),
        };
        let mut intent = agent.default_intent.clone();
        let mut ttl = None;
        let mut budget = Budget::default();
        let mut via_details = false;
        if let Some(raw) = &req.authorization_details {
            via_details = true;
            if raw.len() > MAX_DETAILS_BYTES {
                return Err(details_error(format!(
                    "authorization_details is larger than {MAX_DETAILS_BYTES} bytes"
                )));
            }
            let items: Vec<Value> = serde_json::from_str(raw).map_err(|e| {
                details_error(format!(
                    "authorization_details is not a JSON array of objects: {e}"
                ))
            })?;
            if items.len() > MAX_DETAILS_ENTRIES {
                return Err(details_error(format!(
                    "authorization_details has more than {MAX_DETAILS_ENTRIES} entries"
                )));
            }
            let mut seen = false;
            for item in items {
                let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
                if ty != TASK_DETAILS_TYPE {
                    return Err(details_error(format!(
                        "authorization_details type `{}` is not supported; use `{TASK_DETAILS_TYPE}`",
                        ty.chars().take(64).collect::<String>()
                    )));
                }
                if seen {
                    return Err(details_error(format!(
                        "send one `{TASK_DETAILS_TYPE}` entry per task"
                    )));
                }
                seen = true;
                let d: TaskDetails = serde_json::from_value(item)
                    .map_err(|e| details_error(format!("`{TASK_DETAILS_TYPE}` entry: {e}")))?;
                if let Some(text) = d.intent {
                    intent.text = text;
                }
                if let Some(class) = d.intent_class {
                    intent.class = class;
                }
                intent.values = d.values;
                ttl = d.ttl;
                budget = d.budget;
                // `scope` tokens and `access` entries (with their argument rules) add up.
                let mut grants = scope.to_grants();
                grants.extend(d.access);
                scope = Scope::from_grants(&grants)
                    .map_err(|e| details_error(format!("`access`: {e}")))?;
            }
        }
        intent.check().map_err(details_error)?;
        if scope.is_empty() {
            return Err(OAuthError::InvalidRequest(
                "a task must ask for something: send `scope` or `authorization_details` with `access`"
                    .into(),
            ));
        }
        let ttl_asked = ttl.is_some();
        let ttl = ttl.unwrap_or(self.cfg.default_task_ttl);
        if ttl < 1 || ttl > self.cfg.max_task_ttl {
            return Err(details_error(format!(
                "ttl must be between 1 and {} seconds",
                self.cfg.max_task_ttl
            )));
        }
        Ok(TaskAsk {
            intent,
            scope,
            ttl,
            ttl_asked,
            budget,
            via_details,
        })
    }

    /// Whether `target` (an RFC 8707 `resource` or an RFC 8693 `audience`) names this service:
    /// its issuer or audience, or a resource it serves (the gateway's `/mcp`, `/http/<api>/…`).
    pub(crate) fn is_own_resource(&self, target: &str) -> bool {
        let t = target.trim_end_matches('/');
        let issuer = self.cfg.issuer.as_str();
        t == self.cfg.audience.trim_end_matches('/')
            || t == issuer
            || t == format!("{issuer}/mcp")
            || t.strip_prefix(issuer)
                .and_then(|rest| rest.strip_prefix("/http/"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#']))
    }

    /// Whether a credential of `agent` may be bound to the key with thumbprint `jkt`: for the
    /// tiers configured so (`dpop_registered_key`), an agent with registered keys binds only to
    /// one of them, so a credential is tied to the key its owner registered rather than to any
    /// key the agent (or whoever holds its assertion) makes up.
    pub(crate) fn binding_key_allowed(
        &self,
        agent: &mandate_core::Agent,
        jkt: &str,
    ) -> Result<(), String> {
        let keys = agent.public_keys();
        if !self.cfg.dpop_registered_key.contains(&agent.tier) || keys.is_empty() {
            return Ok(());
        }
        let registered = keys.iter().any(|k| {
            mandate_crypto::jwk::ed25519_thumbprint(k)
                .is_ok_and(|t| mandate_crypto::secret::ct_eq(&t, jkt))
        });
        if registered {
            Ok(())
        } else {
            Err(format!(
                "{}-tier agent `{}` must bind its credential to one of its registered keys; the dpop proof was signed by another key",
                agent.tier, agent.id
            ))
        }
    }

    /// The token endpoint: authenticates the agent, admits (or denies) the task it asks for, and
    /// issues its credential.
    pub async fn token(&self, req: &TokenRequest) -> Result<TokenResponse, OAuthError> {
        match req.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some(crate::delegation::TOKEN_EXCHANGE) => return self.exchange(req).await,
            Some(crate::authcode::AUTHORIZATION_CODE) => {
                if req.exchange.targets.len() > 1 {
                    return Err(OAuthError::InvalidRequest("send `resource` once".into()));
                }
                return self
                    .redeem_code(
                        req.code.as_deref(),
                        req.code_verifier.as_deref(),
                        req.auth.client_id.as_deref(),
                        req.redirect_uri.as_deref(),
                        req.exchange.targets.first().map(String::as_str),
                        req.dpop.as_deref(),
                    )
                    .await;
            }
            Some(other) => {
                let msg = format!(
                    "grant_type `{}` is not supported; use `client_credentials`, `{}` to delegate, or `{}` (interactive hosts)",
                    other.chars().take(80).collect::<String>(),
                    crate::delegation::TOKEN_EXCHANGE,
                    crate::authcode::AUTHORIZATION_CODE
                );
                self.reject(None, &msg).await;
                return Err(OAuthError::UnsupportedGrantType(msg));
            }
            None => {
                let msg = "`grant_type` is missing".to_string();
                self.reject(None, &msg).await;
                return Err(OAuthError::InvalidRequest(msg));
            }
        }
        let Authenticated { agent, mut once } = self.authenticate_agent(&req.auth).await?;
        // RFC 8707: a client may name the protected resource it wants the credential for (an
        // MCP client names the gateway's `/mcp`); it must be this service.
        if let Some(t) = req
            .exchange
            .targets
            .iter()
            .find(|t| !self.is_own_resource(t))
        {
            let e = OAuthError::InvalidTarget(format!(
                "`{}` is not a resource of this service; task credentials are for `{}` and the resources below it",
                t.chars().take(200).collect::<String>(),
                self.cfg.audience
            ));
            self.spend(&agent, &once, &e.to_string()).await?;
            return Err(e);
        }
        let ask = match self.parse_ask(req, &agent) {
            Ok(a) => a,
            Err(e) => {
                // The assertion is spent even though the request was malformed.
                self.spend(&agent, &once, &e.to_string()).await?;
                return Err(e);
            }
        };
        let now = self.now();
        // Proof of possession: the credential will be bound to the key that signed this proof.
        let jkt = match self.token_dpop(&agent, req.dpop.as_deref(), now) {
            Ok(Some((jkt, spent))) => {
                once.push(spent);
                Some(jkt)
            }
            Ok(None) => None,
            Err(e) => {
                self.spend(&agent, &once, &e.to_string()).await?;
                return Err(e);
            }
        };
        // Mutual TLS (RFC 8705 section 3): the credential is bound to the certificate too.
        let x5t = req.auth.tls_cert.as_ref().map(|c| c.x5t_s256.clone());
        self.issue_task(agent, ask, jkt, x5t, &once, None).await
    }

    /// Checks the DPoP proof sent to the token endpoint for a credential of `agent`: the key
    /// it binds to and the one-time value it spends, or `None` without a proof where the
    /// agent's tier allows it.
    pub(crate) fn token_dpop(
        &self,
        agent: &Agent,
        proof: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<(String, OnceValue)>, OAuthError> {
        let Some(proof) = proof else {
            if self.cfg.dpop_required.contains(&agent.tier) {
                return Err(OAuthError::InvalidDpopProof(format!(
                    "{}-tier agents must send a DPoP proof to bind their credential",
                    agent.tier
                )));
            }
            return Ok(None);
        };
        let endpoint = self.cfg.token_endpoint();
        let want = DpopExpectation {
            method: "POST",
            url: &endpoint,
            access_token: None,
            now: now.as_secs(),
            max_age: self.cfg.dpop_max_age,
        };
        let p = verify_dpop(proof, &want)
            .map_err(|e| OAuthError::InvalidDpopProof(format!("dpop proof refused: {e}")))?;
        self.binding_key_allowed(agent, &p.jkt)
            .map_err(OAuthError::InvalidDpopProof)?;
        let spent = (
            format!("dpop:{}:{}", p.jkt, p.jti),
            Timestamp::from_secs(p.iat + self.cfg.dpop_max_age + self.cfg.leeway),
        );
        Ok(Some((p.jkt, spent)))
    }

    /// Admits (or refuses) the task `ask` describes for `agent` and issues its credential,
    /// bound to `jkt` when given; `once` are the one-time values the request spends, and
    /// `on_behalf_of` the person who consented in a browser (the authorization-code grant).
    pub(crate) async fn issue_task(
        &self,
        agent: Agent,
        mut ask: TaskAsk,
        jkt: Option<String>,
        x5t: Option<String>,
        once: &[(String, Timestamp)],
        on_behalf_of: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.now();
        // A plain `scope` request is an OAuth scope request: the server may grant part of it
        // (RFC 6749 section 3.3) and says what it granted. MCP clients ask for everything a
        // server offers; they get what the agent's envelope allows of it. A detailed task
        // description is held to the letter instead: asking beyond the envelope is refused.
        let requested = ask.scope.clone();
        if !ask.via_details {
            let within = ask.scope.intersect(&agent.envelope);
            if !within.is_empty() {
                ask.scope = within;
            }
        }
        let task = Task {
            id: TaskId::generate(),
            agent: agent.id.clone(),
            owner: agent.owner.clone(),
            intent: ask.intent.clone(),
            // Admission judges the scope as asked; the envelope's argument rules are added
            // once it is admitted.
            scope: ask.scope.clone(),
            state: TaskState::Active,
            created_at: now,
            expires_at: now.plus_secs(ask.ttl),
            ended_at: None,
            end_reason: None,
            jkt: jkt.clone(),
            x5t: x5t.clone(),
            budget: ask.budget,
            flow: Default::default(),
            provenance: Default::default(),
            delegation: None,
        };
        let verdict = self
            .reconfirmation_gate(&agent)
            .unwrap_or_else(|| self.admit(&agent, &task));
        let mut task = task;
        task.scope = task.scope.narrowed_by(&agent.envelope);
        let mut ops: Vec<Op> = once_ops(once);
        let mut e = self.admission_event(&agent, &task, &verdict);
        e.detail = serde_json::json!({
            "intent_class": task.intent.class,
            "scope": task.scope.to_string(),
            "requested_scope": (requested != task.scope).then(|| requested.to_string()),
            "ttl": ask.ttl,
            "dpop_bound": jkt.is_some(),
            "certificate_bound": x5t.is_some(),
        });
        if let (Some(person), Some(d)) = (on_behalf_of, e.detail.as_object_mut()) {
            d.insert("on_behalf_of".into(), serde_json::json!(person));
        }
        if !verdict.allowed() {
            return Err(self
                .refuse_task(&agent, &task, verdict, ops, e, ask.via_details)
                .await);
        }
        let details = serde_json::json!([{
            "type": TASK_DETAILS_TYPE,
            "intent": task.intent.text,
            "intent_class": task.intent.class,
            "ttl": ask.ttl,
            "access": task.scope,
            "budget": task.budget,
        }]);
        let claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: agent.id.to_string(),
            aud: self.cfg.audience.clone(),
            exp: task.expires_at.as_secs(),
            iat: now.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: agent.id.to_string(),
            scope: task.scope.to_string(),
            task_id: task.id.to_string(),
            authorization_details: details.clone(),
            cnf: Confirmation::of(jkt.clone(), x5t.clone()),
            act: None,
        };
        let token = self
            .keys
            .load()
            .issue_access_token(&claims)
            .map_err(|e| OAuthError::ServerError(format!("cannot sign credential: {e}")))?;
        ops.push(Op::InsertTask(task.clone()));
        ops.push(Op::Audit(e));
        self.commit_spending(&agent, ops).await?;
        self.inventory.put_task(task.clone());
        metrics::counter!("mandate_tasks_opened_total").increment(1);
        Ok(TokenResponse {
            access_token: token,
            token_type: if jkt.is_some() { "DPoP" } else { "Bearer" },
            expires_in: task.expires_at.as_secs() - now.as_secs(),
            scope: task.scope.to_string(),
            authorization_details: details,
            task_id: task.id.to_string(),
            issued_token_type: None,
        })
    }

    pub(crate) fn admit(&self, agent: &Agent, task: &Task) -> Verdict {
        if agent.is_orphaned() {
            return Verdict::deny(
                "mandate:ownership",
                format!(
                    "agent `{}` has no owner; an orphaned agent may not open tasks",
                    agent.id
                ),
            );
        }
        let excess = task.scope.excess_over(&agent.envelope);
        if !excess.is_empty() {
            return Verdict::deny(
                "mandate:envelope",
                format!(
                    "{} outside agent `{}`'s envelope",
                    excess
                        .iter()
                        .map(|x| format!("`{x}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if excess.len() == 1 { " is" } else { " are" },
                    agent.id
                ),
            );
        }
        let facts = match task_facts(task).to_cedar() {
            Ok(f) => f,
            Err(e) => return Verdict::deny("mandate:context", e.to_string()),
        };
        let request = match json_to_cedar(&serde_json::json!({}), "request") {
            Ok(r) => r,
            Err(e) => return Verdict::deny("mandate:context", e.to_string()),
        };
        let bundle = self.policy.current();
        bundle.admit(
            &self.entities.load(),
            &AdmissionQuery {
                agent: agent.id.as_str(),
                task_id: task.id.as_str(),
                task: facts,
                dpop_bound: task.jkt.is_some(),
                request,
            },
        )
    }

    /// The audit record of an admission decision (its `detail` is the caller's).
    pub(crate) fn admission_event(
        &self,
        agent: &Agent,
        task: &Task,
        verdict: &Verdict,
    ) -> mandate_core::audit::AuditEvent {
        let mut e = self.event(if verdict.allowed() {
            EventKind::TaskOpened
        } else {
            EventKind::TaskDenied
        });
        e.agent = Some(agent.id.to_string());
        e.owner = agent.owner.as_ref().map(ToString::to_string);
        e.task = Some(task.id.to_string());
        e.intent = Some(task.intent.text.clone());
        e.action = Some("open_task".into());
        e.decision = Some(if verdict.allowed() { "allow" } else { "deny" }.into());
        e.policies = verdict.policies.clone();
        e.reason = Some(verdict.reason.clone());
        e
    }

    /// Records a task refused at admission (stored as `denied`, with its audit event and the
    /// one-time values the request spent) and returns the OAuth error naming the policies.
    pub(crate) async fn refuse_task(
        &self,
        agent: &Agent,
        task: &Task,
        verdict: Verdict,
        mut ops: Vec<Op>,
        event: mandate_core::audit::AuditEvent,
        via_details: bool,
    ) -> OAuthError {
        let mut denied = task.clone();
        denied.state = TaskState::Denied;
        denied.ended_at = Some(self.now());
        denied.end_reason = Some(verdict.reason.clone());
        ops.push(Op::InsertTask(denied));
        ops.push(Op::Audit(event));
        if let Err(e) = self.commit_spending(agent, ops).await {
            return e;
        }
        metrics::counter!("mandate_tasks_denied_total").increment(1);
        let (reason, policies, task_id) =
            (verdict.reason, verdict.policies, Some(task.id.to_string()));
        if via_details {
            OAuthError::InvalidAuthorizationDetails {
                reason,
                policies,
                task_id,
            }
        } else {
            OAuthError::InvalidScope {
                reason,
                policies,
                task_id,
            }
        }
    }

    /// Commits ops that spend one-time values; a conflict means a replayed assertion or proof.
    pub(crate) async fn commit_spending(
        &self,
        agent: &Agent,
        ops: Vec<Op>,
    ) -> Result<(), OAuthError> {
        match self.store.commit(ops).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(_)) => {
                let msg = "client assertion or dpop proof was already used (replay refused)";
                let mut e = self.event(EventKind::AttestationFailed);
                e.agent = Some(agent.id.to_string());
                e.owner = agent.owner.as_ref().map(ToString::to_string);
                e.reason = Some(msg.into());
                self.audit_best_effort(e).await;
                Err(OAuthError::InvalidClient(msg.into()))
            }
            Err(e) => Err(OAuthError::ServerError(format!(
                "the request could not be recorded, so nothing was granted: {e}"
            ))),
        }
    }

    /// Spends the one-time values of a refused request and records the refusal.
    pub(crate) async fn spend(
        &self,
        agent: &Agent,
        once: &[(String, Timestamp)],
        reason: &str,
    ) -> Result<(), OAuthError> {
        let mut e = self.event(EventKind::RequestRejected);
        e.agent = Some(agent.id.to_string());
        e.owner = agent.owner.as_ref().map(ToString::to_string);
        e.reason = Some(reason.to_string());
        let mut ops: Vec<Op> = once_ops(once);
        ops.push(Op::Audit(e));
        self.commit_spending(agent, ops).await
    }

    /// Records a request refused before the agent was known.
    pub(crate) async fn reject(&self, agent: Option<&str>, reason: &str) {
        let mut e = self.event(EventKind::RequestRejected);
        e.agent = agent.map(str::to_string);
        e.reason = Some(reason.to_string());
        self.audit_best_effort(e).await;
    }

    /// Records a request refused by the HTTP layer (oversized body, malformed JSON…).
    pub async fn record_rejected_request(&self, path: &str, reason: &str) {
        let mut e = self.event(EventKind::RequestRejected);
        e.resource = Some(path.chars().take(200).collect());
        e.reason = Some(reason.to_string());
        self.audit_best_effort(e).await;
    }

    /// Verifies a credential's signature and times without looking at its task.
    pub(crate) fn verify_signature(&self, token: &str) -> Option<AccessClaims> {
        self.keys
            .load()
            .verify_access_token(
                token,
                &self.cfg.issuer,
                &self.cfg.audience,
                self.now().as_secs(),
            )
            .ok()
    }

    /// RFC 7662 introspection. Agents may introspect their own credentials; owners those of their
    /// agents; admins any. Anything else is reported inactive.
    pub async fn introspect(&self, caller: &Caller, token: &str) -> Result<Value, OAuthError> {
        let inactive = serde_json::json!({"active": false});
        let Some(claims) = self.verify_signature(token) else {
            // A per-task JWT for an API: active while its lease is.
            return Ok(self
                .introspect_lease_token(caller, token)
                .await
                .unwrap_or(inactive));
        };
        let Some(entry) = self.inventory.task(&claims.task_id) else {
            return Ok(inactive);
        };
        let task = entry.read().clone();
        let visible = match caller {
            Caller::Agent(a) => a.as_str() == claims.client_id,
            Caller::Person(Principal::Admin { .. }) => true,
            Caller::Person(Principal::Owner { owner, .. }) => task.owner.as_ref() == Some(owner),
        };
        if !visible || !task.is_live(self.now()) {
            return Ok(inactive);
        }
        let mut v = serde_json::to_value(&claims).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("active".into(), Value::Bool(true));
            o.insert(
                "token_type".into(),
                Value::String(
                    if claims.cnf.as_ref().is_some_and(|c| c.jkt.is_some()) {
                        "DPoP"
                    } else {
                        "Bearer"
                    }
                    .into(),
                ),
            );
        }
        Ok(v)
    }

    /// RFC 7009 revocation. An agent revoking its own credential completes its task; a person
    /// revoking one revokes the task. Unknown, invalid or already ended credentials are not an
    /// error, as the RFC asks.
    pub async fn revoke_token(&self, caller: &Caller, token: &str) -> Result<(), OAuthError> {
        let Some(claims) = self.verify_signature(token) else {
            return Ok(());
        };
        let Some(entry) = self.inventory.task(&claims.task_id) else {
            return Ok(());
        };
        let owner = entry.read().owner.clone();
        let (state, reason, actor) = match caller {
            Caller::Agent(a) if a.as_str() == claims.client_id => (
                TaskState::Completed,
                "the agent completed its task".to_string(),
                None,
            ),
            Caller::Agent(_) => {
                return Err(OAuthError::UnauthorizedClient(
                    "the credential was not issued to this client".into(),
                ));
            }
            Caller::Person(p) => {
                if let Principal::Owner { owner: o, .. } = p
                    && owner.as_ref() != Some(o)
                {
                    return Err(OAuthError::UnauthorizedClient(
                        "the credential belongs to another owner's agent".into(),
                    ));
                }
                (
                    TaskState::Revoked,
                    format!("revoked by {}", p.name()),
                    Some(p.name()),
                )
            }
        };
        self.end_task(&entry, state, &reason, actor.as_deref())
            .await
            .map_err(OAuthError::ServerError)
    }

    /// Ends a task (if still active) and records it.
    pub(crate) async fn end_task(
        &self,
        entry: &Arc<TaskEntry>,
        state: TaskState,
        reason: &str,
        actor: Option<&str>,
    ) -> Result<(), String> {
        let Some(t) = entry.end(state, self.now(), reason) else {
            return Ok(());
        };
        let ops = self.end_ops(t, actor);
        self.store
            .commit(ops)
            .await
            .map(|_| ())
            .map_err(|e| format!("the task was ended here but could not be recorded: {e}"))
    }

    /// The writes that record an ended task.
    pub(crate) fn end_ops(&self, t: Task, actor: Option<&str>) -> Vec<Op> {
        self.end_ops_by(t, actor, &[])
    }

    /// The writes that record an ended task, naming the policies that ended it.
    pub(crate) fn end_ops_by(&self, t: Task, actor: Option<&str>, policies: &[String]) -> Vec<Op> {
        // Its downstream credentials go with it.
        self.leases.wake.notify_one();
        let mut e = self.event(match t.state {
            TaskState::Completed => EventKind::TaskCompleted,
            TaskState::Expired => EventKind::TaskExpired,
            TaskState::Active | TaskState::Revoked | TaskState::Denied => EventKind::TaskRevoked,
        });
        e.actor = actor.map(str::to_string);
        e.agent = Some(t.agent.to_string());
        e.owner = t.owner.as_ref().map(ToString::to_string);
        e.task = Some(t.id.to_string());
        e.intent = Some(t.intent.text.clone());
        e.reason = t.end_reason.clone();
        e.policies = policies.to_vec();
        let cascade = self.end_descendants(&t);
        let mut ops = vec![Op::UpdateTask(t), Op::Audit(e)];
        ops.extend(cascade);
        ops
    }

    /// Ends every live task delegated from `t`, directly or further down, and returns the writes
    /// that record it. Nothing delegated outlives the task it came from.
    fn end_descendants(&self, t: &Task) -> Vec<Op> {
        let now = self.now();
        let mut ops = Vec::new();
        for entry in self.inventory.descendants(&t.id) {
            let reason = format!(
                "task `{}` it was delegated from ended ({}: {})",
                t.id,
                t.state,
                t.end_reason.as_deref().unwrap_or("no reason given")
            );
            let Some(d) = entry.end(TaskState::Revoked, now, &reason) else {
                continue;
            };
            let mut e = self.event(EventKind::TaskRevoked);
            e.actor = Some("mandate:delegation".into());
            e.agent = Some(d.agent.to_string());
            e.owner = d.owner.as_ref().map(ToString::to_string);
            e.task = Some(d.id.to_string());
            e.intent = Some(d.intent.text.clone());
            e.reason = d.end_reason.clone();
            e.policies = vec!["mandate:delegation".into()];
            e.detail = serde_json::json!({"ancestor": t.id.to_string()});
            metrics::counter!("mandate_tasks_revoked_by_ancestor_total").increment(1);
            ops.push(Op::UpdateTask(d));
            ops.push(Op::Audit(e));
        }
        ops
    }
}

/// Who calls introspection or revocation.
#[derive(Clone, Debug)]
pub enum Caller {
    /// An agent, authenticated by its client assertion.
    Agent(mandate_core::AgentId),
    /// A person, authenticated by an API token.
    Person(Principal),
}

impl Broker {
    /// Authenticates an agent calling introspection or revocation, spending its assertion.
    pub async fn authenticate_caller(&self, auth: &ClientAuth) -> Result<Caller, OAuthError> {
        let Authenticated { agent, once } = self.authenticate_agent(auth).await?;
        let ops: Vec<Op> = once_ops(&once);
        if !ops.is_empty() {
            self.commit_spending(&agent, ops).await?;
        }
        Ok(Caller::Agent(agent.id))
    }
}
