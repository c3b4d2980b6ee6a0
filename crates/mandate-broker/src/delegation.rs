//! Delegation between agents: an agent holding an active task hands part of it to another
//! registered agent through OAuth 2.0 Token Exchange (RFC 8693).
//!
//! The parent sends its task credential as `subject_token` (with a DPoP proof of its key when the
//! credential is bound) and the child's own client assertion or external JWT as `actor_token`,
//! with the sub-task described as for any task. The sub-task gets at most what the parent holds,
//! what the child's envelope allows and what admission policy admits, and lives no longer than
//! its parent; asking for more is refused, never narrowed in silence. Its credential names the
//! chain in nested `act` claims (RFC 8693 section 4.1): `sub` stays the agent that started the
//! workflow, `act.sub` is the agent acting now, and each nested `act` the one before.
//!
//! Every task of a workflow shares what any of them read and where any of them sent data (flow
//! labels), so handing work to another agent cannot launder data past a flow rule. Ending any
//! task ends every task delegated from it, further down too.

use std::sync::Arc;

use mandate_core::flow::{Flow, FlowAdded};
use mandate_core::{Delegation, Task, TaskId, TaskState, Timestamp};
use mandate_crypto::dpop::{DpopExpectation, verify_dpop};
use mandate_crypto::{AccessClaims, Confirmation};
use mandate_policy::Verdict;
use mandate_store::Op;
use serde_json::{Value, json};

use crate::Broker;
use crate::attest::{Authenticated, ClientAuth, JWT_BEARER};
use crate::error::OAuthError;
use crate::oauth::{TASK_DETAILS_TYPE, TokenRequest, TokenResponse};
use crate::state::TaskEntry;

/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of Mandate's task credentials.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of an actor's client assertion or external JWT.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Longest delegation chain Mandate will build whatever the policies say: it bounds the size of
/// the nested `act` claim. Policies set the working limit (the shipped pack: 3).
pub const MAX_CHAIN: usize = 16;

fn short(s: &str) -> String {
    s.chars().take(100).collect()
}

impl Broker {
    /// The token-exchange grant: opens a sub-task of the `subject_token`'s task for the agent
    /// that signed the `actor_token`.
    pub(crate) async fn exchange(&self, req: &TokenRequest) -> Result<TokenResponse, OAuthError> {
        let x = &req.exchange;
        let form = self.check_exchange_form(req);
        let (subject, actor) = match form {
            Ok(ok) => ok,
            Err(e) => {
                self.reject(None, &e.to_string()).await;
                return Err(e);
            }
        };
        let now = self.now();
        let (claims, parent_entry, parent) = match self.parent_of(subject, now) {
            Ok(ok) => ok,
            Err(e) => {
                self.reject(None, &e.to_string()).await;
                return Err(e);
            }
        };
        // The child proves who it is with its own assertion, spent like any other.
        let child_auth = ClientAuth {
            client_id: None,
            assertion_type: Some(JWT_BEARER.into()),
            assertion: Some(actor.to_string()),
            tls_cert: None,
        };
        let Authenticated { agent: child, once } = self
            .authenticate_agent(&child_auth)
            .await
            .map_err(|e| match e {
                OAuthError::InvalidClient(m) => {
                    OAuthError::InvalidRequest(format!("actor_token refused: {m}"))
                }
                other => other,
            })?;
        let mut once = once;
        // Possession of the parent's credential, when it is bound to the parent's key; an
        // unbound parent's DPoP proof binds the sub-task's credential instead (RFC 9449).
        let mut proof_jkt = None;
        if let Some(proof) = &req.dpop {
            let endpoint = self.cfg.token_endpoint();
            let want = DpopExpectation {
                method: "POST",
                url: &endpoint,
                access_token: claims
                    .cnf
                    .as_ref()
                    .and_then(|c| c.jkt.as_ref())
                    .map(|_| subject),
                now: now.as_secs(),
                max_age: self.cfg.dpop_max_age,
            };
            match verify_dpop(proof, &want) {
                Ok(p) => {
                    once.push((
                        format!("dpop:{}:{}", p.jkt, p.jti),
                        Timestamp::from_secs(p.iat + self.cfg.dpop_max_age + self.cfg.leeway),
                    ));
                    proof_jkt = Some(p.jkt);
                }
                Err(e) => {
                    let e = OAuthError::InvalidDpopProof(format!("dpop proof refused: {e}"));
                    self.spend(&child, &once, &e.to_string()).await?;
                    return Err(e);
                }
            }
        }
        let parent_jkt = claims.cnf.as_ref().and_then(|c| c.jkt.as_ref());
        let parent_x5t = claims.cnf.as_ref().and_then(|c| c.x5t_s256.as_ref());
        let parent_proven = match (parent_jkt, &proof_jkt) {
            (None, _) => true,
            (Some(want), Some(jkt)) => mandate_crypto::secret::ct_eq(want, jkt),
            (Some(_), None) => false,
        };
        if !parent_proven {
            let e = OAuthError::InvalidDpopProof(
                "the parent task's credential is bound to its agent's key: send a DPoP proof of \
                 that key for the subject_token"
                    .into(),
            );
            self.spend(&child, &once, &e.to_string()).await?;
            return Err(e);
        }
        // A parent bound to a client certificate is proven only over a connection with it.
        let cert_proven = parent_x5t.is_none_or(|want| {
            req.auth
                .tls_cert
                .as_ref()
                .is_some_and(|c| mandate_crypto::secret::ct_eq(want, &c.x5t_s256))
        });
        if !cert_proven {
            let e = OAuthError::InvalidClient(
                "the parent task's credential is bound to a client certificate: delegate over mutual TLS with that certificate"
                    .into(),
            );
            self.spend(&child, &once, &e.to_string()).await?;
            return Err(e);
        }
        let ask = match self.parse_ask(req, &child) {
            Ok(a) => a,
            Err(e) => {
                self.spend(&child, &once, &e.to_string()).await?;
                return Err(e);
            }
        };
        let jkt = match self.child_binding(
            x.dpop_jkt.as_deref(),
            parent_jkt.is_none().then_some(proof_jkt).flatten(),
            parent_jkt.is_some(),
            &child,
        ) {
            Ok(j) => j,
            Err(e) => {
                self.spend(&child, &once, &e.to_string()).await?;
                return Err(e);
            }
        };
        // Whole seconds rounded up: a child asking for exactly its parent's lifetime in the
        // same second is not refused over the milliseconds already gone; its expiry is still
        // capped at the parent's below.
        let remaining = (parent.expires_at.0 - now.0 + 999).div_euclid(1000);
        let mut ancestors = parent
            .delegation
            .as_ref()
            .map(|d| d.ancestors.clone())
            .unwrap_or_default();
        ancestors.push(parent.id.clone());
        let mut agents = parent
            .delegation
            .as_ref()
            .map(|d| d.agents.clone())
            .unwrap_or_default();
        agents.push(parent.agent.clone());
        let ttl = ask.ttl.min(remaining);
        let mut flow = Flow::default();
        flow.absorb(&parent.flow);
        let task = Task {
            id: TaskId::generate(),
            agent: child.id.clone(),
            owner: child.owner.clone(),
            intent: ask.intent.clone(),
            scope: ask.scope.clone(),
            state: TaskState::Active,
            created_at: now,
            expires_at: Timestamp(now.plus_secs(ttl).0.min(parent.expires_at.0)),
            ended_at: None,
            end_reason: None,
            jkt: jkt.clone(),
            x5t: None,
            budget: ask.budget,
            flow,
            provenance: Default::default(),
            delegation: Some(Delegation { ancestors, agents }),
        };
        // Mandate's own bounds first (the parent's scope and lifetime, the chain's length),
        // then admission as for any task: the child's envelope, tier and the policies.
        let over_parent = ask.scope.excess_over(&parent.scope);
        let verdict = if !over_parent.is_empty() {
            Verdict::deny(
                "mandate:delegation",
                format!(
                    "{} beyond what task `{}` holds; a sub-task gets at most its parent's scope",
                    over_parent
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if over_parent.len() == 1 {
                            " is"
                        } else {
                            " are"
                        },
                    parent.id
                ),
            )
        } else if ask.ttl_asked && ask.ttl > remaining {
            Verdict::deny(
                "mandate:delegation",
                format!(
                    "ttl {} s outlives task `{}`, which ends in {remaining} s; a sub-task lives no \
                     longer than its parent",
                    ask.ttl, parent.id
                ),
            )
        } else if task.depth() > MAX_CHAIN {
            Verdict::deny(
                "mandate:delegation",
                format!("delegation chains are limited to {MAX_CHAIN} hops"),
            )
        } else {
            self.reconfirmation_gate(&child)
                .unwrap_or_else(|| self.admit(&child, &task))
        };
        let mut task = task;
        task.scope = task
            .scope
            .narrowed_by(&parent.scope)
            .narrowed_by(&child.envelope);
        let mut ops = crate::oauth::once_ops(&once);
        let mut e = self.admission_event(&child, &task, &verdict);
        e.detail = json!({
            "intent_class": task.intent.class,
            "scope": task.scope.to_string(),
            "ttl": (task.expires_at.0 - now.0).div_euclid(1000),
            "dpop_bound": jkt.is_some(),
            "delegation": delegation_detail(&task),
        });
        if !verdict.allowed() {
            return Err(self
                .refuse_task(&child, &task, verdict, ops, e, ask.via_details)
                .await);
        }
        let ttl = (task.expires_at.0 - now.0).div_euclid(1000);
        let details = json!([{
            "type": TASK_DETAILS_TYPE,
            "intent": task.intent.text,
            "intent_class": task.intent.class,
            "ttl": ttl,
            "access": task.scope,
            "budget": task.budget,
        }]);
        // RFC 8693 section 4.1: the newest actor on top, the ones before nested inside.
        let mut act = serde_json::Map::new();
        act.insert("sub".into(), child.id.to_string().into());
        if let Some(before) = &claims.act {
            act.insert("act".into(), before.clone());
        }
        let act = Value::Object(act);
        let access = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: claims.sub.clone(),
            aud: self.cfg.audience.clone(),
            exp: task.expires_at.as_secs(),
            iat: now.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: child.id.to_string(),
            scope: task.scope.to_string(),
            task_id: task.id.to_string(),
            authorization_details: details.clone(),
            cnf: Confirmation::of(jkt.clone(), None),
            act: Some(act),
        };
        let token = self
            .keys
            .load()
            .issue_access_token(&access)
            .map_err(|e| OAuthError::ServerError(format!("cannot sign credential: {e}")))?;
        ops.push(Op::InsertTask(task.clone()));
        ops.push(Op::Audit(e));
        self.commit_spending(&child, ops).await?;
        let entry = self.inventory.put_task(task.clone());
        metrics::counter!("mandate_tasks_opened_total").increment(1);
        metrics::counter!("mandate_tasks_delegated_total").increment(1);
        self.settle_new_child(&parent_entry, &entry).await;
        if !entry.read().is_live(self.now()) {
            return Err(OAuthError::InvalidRequest(format!(
                "task `{}` ended while the sub-task was being opened",
                parent.id
            )));
        }
        Ok(TokenResponse {
            access_token: token,
            token_type: if jkt.is_some() { "DPoP" } else { "Bearer" },
            expires_in: ttl,
            scope: task.scope.to_string(),
            authorization_details: details,
            task_id: task.id.to_string(),
            issued_token_type: Some(ACCESS_TOKEN_TYPE),
        })
    }

    fn check_exchange_form<'a>(
        &self,
        req: &'a TokenRequest,
    ) -> Result<(&'a str, &'a str), OAuthError> {
        let x = &req.exchange;
        let bad = |m: String| OAuthError::InvalidRequest(m);
        let subject = x.subject_token.as_deref().ok_or_else(|| {
            bad("`subject_token` is missing: send the parent task's credential".into())
        })?;
        match x.subject_token_type.as_deref() {
            Some(ACCESS_TOKEN_TYPE) => {}
            Some(other) => {
                return Err(bad(format!(
                    "subject_token_type `{}` is not supported; use `{ACCESS_TOKEN_TYPE}`",
                    short(other)
                )));
            }
            None => return Err(bad("`subject_token_type` is missing".into())),
        }
        let actor = x.actor_token.as_deref().ok_or_else(|| {
            bad(
                "`actor_token` is missing: send the client assertion (or external JWT) of the \
                 agent the sub-task is for"
                    .into(),
            )
        })?;
        match x.actor_token_type.as_deref() {
            Some(JWT_TOKEN_TYPE) => {}
            Some(other) => {
                return Err(bad(format!(
                    "actor_token_type `{}` is not supported; use `{JWT_TOKEN_TYPE}`",
                    short(other)
                )));
            }
            None => return Err(bad("`actor_token_type` is missing".into())),
        }
        if let Some(t) = x.requested_token_type.as_deref()
            && t != ACCESS_TOKEN_TYPE
        {
            return Err(bad(format!(
                "requested_token_type `{}` is not supported; Mandate issues `{ACCESS_TOKEN_TYPE}`",
                short(t)
            )));
        }
        if let Some(t) = x.targets.iter().find(|t| !self.is_own_resource(t)) {
            return Err(OAuthError::InvalidTarget(format!(
                "`{}` is not a resource or audience of this service; task credentials are for `{}`",
                short(t),
                self.cfg.audience
            )));
        }
        if req.auth.assertion.is_some() {
            return Err(bad(
                "send the child agent's assertion as `actor_token`, not as client authentication"
                    .into(),
            ));
        }
        Ok((subject, actor))
    }

    /// The parent task behind a `subject_token`, which must be live.
    fn parent_of(
        &self,
        subject: &str,
        now: Timestamp,
    ) -> Result<(AccessClaims, Arc<TaskEntry>, Task), OAuthError> {
        let refuse = |m: String| OAuthError::InvalidRequest(format!("subject_token refused: {m}"));
        let claims = self
            .verify_signature(subject)
            .ok_or_else(|| refuse("not a valid, unexpired credential of this service".into()))?;
        let entry = self
            .inventory
            .task(&claims.task_id)
            .ok_or_else(|| refuse(format!("task `{}` is not known", claims.task_id)))?;
        let parent = entry.read().clone();
        if parent.state != TaskState::Active || parent.expires_at <= now {
            return Err(refuse(format!(
                "task `{}` is {}; only an active task can delegate",
                parent.id,
                if parent.state == TaskState::Active {
                    TaskState::Expired
                } else {
                    parent.state
                }
            )));
        }
        if parent.agent.as_str() != claims.client_id {
            return Err(refuse("credential does not match its task".into()));
        }
        if !self.ancestors_live(parent.delegation.as_ref(), now) {
            return Err(refuse(format!(
                "task `{}` was delegated from a task that has ended",
                parent.id
            )));
        }
        Ok((claims, entry, parent))
    }

    /// The key the sub-task's credential is bound to: the one named by `dpop_jkt`, else the key
    /// of an unbound parent's DPoP proof, else, when the parent's credential was bound or the
    /// child's tier requires binding, the child's registered key.
    fn child_binding(
        &self,
        dpop_jkt: Option<&str>,
        proof_jkt: Option<String>,
        parent_bound: bool,
        child: &mandate_core::Agent,
    ) -> Result<Option<String>, OAuthError> {
        let jkt = self.child_key(dpop_jkt, proof_jkt, parent_bound, child)?;
        if let Some(j) = &jkt {
            self.binding_key_allowed(child, j)
                .map_err(OAuthError::InvalidDpopProof)?;
        }
        Ok(jkt)
    }

    fn child_key(
        &self,
        dpop_jkt: Option<&str>,
        proof_jkt: Option<String>,
        parent_bound: bool,
        child: &mandate_core::Agent,
    ) -> Result<Option<String>, OAuthError> {
        if let Some(j) = dpop_jkt {
            let ok = j.len() == 43
                && j.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(OAuthError::InvalidRequest(
                    "`dpop_jkt` must be an RFC 7638 SHA-256 thumbprint (43 base64url characters)"
                        .into(),
                ));
            }
            return Ok(Some(j.to_string()));
        }
        if proof_jkt.is_some() {
            return Ok(proof_jkt);
        }
        if !parent_bound && !self.cfg.dpop_required.contains(&child.tier) {
            return Ok(None);
        }
        match child.public_keys().as_slice() {
            [one] => mandate_crypto::jwk::ed25519_thumbprint(one)
                .map(Some)
                .map_err(|e| OAuthError::ServerError(format!("agent key is unusable: {e}"))),
            _ => Err(OAuthError::InvalidDpopProof(format!(
                "the sub-task's credential must be bound to agent `{}`'s key: send `dpop_jkt` \
                 with the thumbprint of the key it will prove",
                child.id
            ))),
        }
    }

    /// Closes the gaps between checking the parent and publishing the child: labels the parent
    /// gained meanwhile are copied down, and a parent that ended meanwhile ends the child.
    async fn settle_new_child(&self, parent: &Arc<TaskEntry>, child: &Arc<TaskEntry>) {
        let (flow, live, reason) = {
            let p = parent.read();
            (
                p.flow.clone(),
                p.is_live(self.now()),
                format!("task `{}` it was delegated from ended", p.id),
            )
        };
        let mut ops = Vec::new();
        {
            let mut c = child.write();
            if !c.flow.absorb(&flow).is_empty() {
                ops.push(Op::UpdateTask(c.clone()));
            }
        }
        if !live && let Some(t) = child.end(TaskState::Revoked, self.now(), &reason) {
            ops.extend(self.end_ops_by(t, Some("mandate:delegation"), &[]));
        }
        if !ops.is_empty()
            && let Err(e) = self.store.commit(ops).await
        {
            tracing::error!(error = %e, "could not record a new sub-task's settlement");
        }
    }

    /// Whether every task above `task` is still live. Ending a task ends its descendants; this
    /// is the check that holds even if that cascade could not be recorded.
    pub(crate) fn ancestors_live(&self, delegation: Option<&Delegation>, now: Timestamp) -> bool {
        let Some(d) = delegation else {
            return true;
        };
        d.ancestors.iter().all(|id| {
            self.inventory
                .task(id.as_str())
                .is_some_and(|e| e.read().is_live(now))
        })
    }

    /// Shares labels one task of a workflow gained with every other live task of that workflow,
    /// and returns the writes that record them. Call without holding any task's lock.
    pub(crate) fn share_labels(&self, entry: &TaskEntry, added: &FlowAdded) -> Vec<Op> {
        if added.is_empty() {
            return Vec::new();
        }
        let (me, root, delegated) = {
            let t = entry.read();
            (t.id.clone(), t.root().clone(), t.delegation.is_some())
        };
        let mut members = self.inventory.descendants(&root);
        if delegated && let Some(r) = self.inventory.task(root.as_str()) {
            members.insert(0, r);
        }
        if members.is_empty() {
            return Vec::new();
        }
        let mut delta = Flow::default();
        delta.data_read.extend(added.data_read.iter().cloned());
        delta.egress.extend(added.egress.iter().cloned());
        let mut ops = Vec::new();
        for m in members {
            let mut t = m.write();
            if t.id == me || t.state != TaskState::Active {
                continue;
            }
            if !t.flow.absorb(&delta).is_empty() {
                ops.push(Op::UpdateTask(t.clone()));
            }
        }
        ops
    }
}

/// The audit record of a task's place in its workflow.
pub(crate) fn delegation_detail(task: &Task) -> Value {
    match &task.delegation {
        None => Value::Null,
        Some(d) => json!({
            "root": d.root().map(ToString::to_string),
            "parent": d.parent().map(ToString::to_string),
            "depth": d.depth(),
            "chain": d.agents.iter().map(ToString::to_string).chain([task.agent.to_string()]).collect::<Vec<_>>(),
        }),
    }
}
