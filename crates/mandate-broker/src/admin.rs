//! Administration by people: owners, their API tokens, agents, tasks. Every call names its
//! principal; owners see and manage only their own agents; agents never get here at all.

use mandate_core::audit::EventKind;
use mandate_core::{
    Agent, AgentId, AgentStatus, Attestation, Intent, Owner, OwnerId, Scope, Task, TaskId,
    TaskState, Tier, Timestamp,
};
use mandate_crypto::{ApiToken, SecretString, hash_api_token};

use mandate_store::{ApiTokenRecord, Op, Role, TaskFilter};
use serde::{Deserialize, Serialize};

use crate::Broker;
use crate::error::AdminError;

/// Meta key recording that the bootstrap admin credential was created.
const BOOTSTRAP_KEY: &str = "bootstrap_admin_token";
/// Most attestation methods per agent.
const MAX_ATTESTATIONS: usize = 8;

/// A person authenticated by an API token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An administrator.
    Admin {
        /// The token used.
        token_id: String,
        /// Its label.
        name: String,
    },
    /// An owner.
    Owner {
        /// Which owner.
        owner: OwnerId,
        /// The token used.
        token_id: String,
    },
}

impl Principal {
    /// How the principal appears in the audit.
    pub fn name(&self) -> String {
        match self {
            Principal::Admin { name, .. } => format!("admin:{name}"),
            Principal::Owner { owner, .. } => format!("owner:{owner}"),
        }
    }

    pub(crate) fn require_admin(&self) -> Result<(), AdminError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Owner { .. } => Err(AdminError::Forbidden(
                "this needs an admin token; owner tokens manage only their own agents".into(),
            )),
        }
    }

    pub(crate) fn require_admin_for(&self, what: &str) -> Result<(), AdminError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Owner { .. } => Err(AdminError::Forbidden(format!(
                "{what} are managed by admins only"
            ))),
        }
    }

    fn may_manage(&self, agent: &Agent) -> Result<(), AdminError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Owner { owner, .. } if agent.owner.as_ref() == Some(owner) => Ok(()),
            Principal::Owner { .. } => Err(AdminError::Forbidden(format!(
                "agent `{}` belongs to another owner",
                agent.id
            ))),
        }
    }
}

/// A new owner.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOwner {
    /// Id.
    pub id: String,
    /// Display name; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
}

/// A new agent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Id (the OAuth client id).
    pub id: String,
    /// Owner; an owner registering an agent may leave it out.
    #[serde(default)]
    pub owner: Option<String>,
    /// `low`, `medium` or `high`.
    pub tier: String,
    /// Envelope, as `action:target` tokens separated by spaces.
    pub envelope: String,
    /// Argument rules on envelope targets, by target (see `mandate_core::args`).
    #[serde(default)]
    pub envelope_arguments: std::collections::BTreeMap<String, mandate_core::args::ArgRules>,
    /// At least one way to prove its identity.
    pub attestations: Vec<Attestation>,
    /// Intent for requests with a plain `scope`.
    #[serde(default)]
    pub default_intent: Option<Intent>,
    /// Free-form description.
    #[serde(default)]
    pub description: Option<String>,
}

/// A freshly issued API token. The plaintext is shown this once.
#[derive(Debug, Serialize)]
pub struct ApiTokenIssued {
    /// Token id.
    pub id: String,
    /// The token.
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
    /// Its owner.
    pub owner: Option<String>,
    /// When it stops working.
    pub expires_at: Option<Timestamp>,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

/// An active task, as listed with its agent.
#[derive(Clone, Debug, Serialize)]
pub struct ActiveTask {
    /// Id.
    pub id: String,
    /// Intent text.
    pub intent: String,
    /// Intent class.
    pub intent_class: String,
    /// Granted scope.
    pub scope: String,
    /// Expiry.
    pub expires_at: Timestamp,
}

/// An agent with what it can do now.
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    /// The registration.
    #[serde(flatten)]
    pub agent: Agent,
    /// Active tasks.
    pub active_tasks: Vec<ActiveTask>,
    /// Governance flags: `orphaned`, `suspended`, `dormant`, `wide-envelope`, `unconfirmed`,
    /// `standing-privilege`.
    pub flags: Vec<String>,
    /// Live credentials that outlive what policy allows now, and open downstream leases whose
    /// task is no longer live. Always 0 when Mandate works.
    pub standing_privilege: u64,
    /// Open downstream leases (per-task database roles, certificates, tokens); filled in by
    /// the governance view.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::leases::LeaseView>,
    /// Envelope entries that reach `high`-risk write targets of the catalog.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub high_risk_writes: Vec<String>,
    /// When the owner must confirm the agent again, when re-confirmation is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation_due: Option<Timestamp>,
    /// What it did lately (the governance view; absent in replies to changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

/// What an agent did lately.
#[derive(Clone, Debug, Serialize)]
pub struct Activity {
    /// Days of decisions counted.
    pub window_days: i64,
    /// Allowed decisions in the window.
    pub allowed: u64,
    /// Denied decisions in the window.
    pub denied: u64,
    /// Decisions that needed approval in the window.
    pub needs_approval: u64,
    /// Its most recent audit event.
    pub last_activity: Option<Timestamp>,
    /// When it last opened (or was delegated) a task.
    pub last_task: Option<Timestamp>,
}

fn bad(e: impl std::fmt::Display) -> AdminError {
    AdminError::BadRequest(e.to_string())
}

fn check_attestation(a: &Attestation) -> Result<(), AdminError> {
    match a {
        Attestation::PrivateKeyJwt { public_key } => {
            mandate_crypto::jwk::ed25519_jwk(public_key, None).map_err(|_| {
                bad("`public_key` must be an Ed25519 public key: 32 bytes, base64url")
            })?;
        }
        Attestation::ExternalJwt {
            issuer,
            jwks,
            subject,
            audience,
            claims,
        } => {
            if issuer.is_empty() || issuer.len() > 512 {
                return Err(bad("`issuer` must be 1 to 512 characters"));
            }
            if subject.is_empty() || subject.len() > 512 {
                return Err(bad("`subject` must be 1 to 512 characters"));
            }
            let url = jwks.starts_with("https://") || jwks.starts_with("http://");
            if jwks.len() > 1024 || !(url || jwks.starts_with('/')) {
                return Err(bad(
                    "`jwks` must be an http(s) URL or an absolute file path",
                ));
            }
            if audience.as_ref().is_some_and(|a| a.len() > 512) || claims.len() > 16 {
                return Err(bad("`audience` or `claims` too large"));
            }
        }
        Attestation::X509Svid { spiffe_id } => {
            mandate_core::spiffe::SpiffeId::parse(spiffe_id)
                .map_err(|e| bad(format!("`spiffe_id`: {e}")))?;
        }
    }
    Ok(())
}

impl Broker {
    /// Whether the bootstrap admin credential still has to be created (first start).
    pub async fn needs_bootstrap(&self) -> Result<bool, AdminError> {
        Ok(self.store.meta(BOOTSTRAP_KEY).await?.is_none())
    }

    /// Records the bootstrap admin credential, given only its hash: the caller generated the
    /// token and has already written it where the operator can read it.
    pub async fn record_bootstrap(&self, token_hash: String) -> Result<(), AdminError> {
        let id = format!("tok_{}", uuid::Uuid::new_v4().simple());
        let mut e = self.event(EventKind::ApiTokenIssued);
        e.actor = Some("system".into());
        e.detail = serde_json::json!({"token_id": id, "role": "admin", "name": "bootstrap"});
        self.store
            .commit(vec![
                Op::InsertApiToken(ApiTokenRecord {
                    id: id.clone(),
                    hash: token_hash,
                    role: Role::Admin,
                    owner: None,
                    name: "bootstrap".into(),
                    created_at: self.now(),
                    expires_at: None,
                    revoked_at: None,
                }),
                Op::SetMeta {
                    key: BOOTSTRAP_KEY.into(),
                    value: id,
                },
                Op::Audit(e),
            ])
            .await?;
        Ok(())
    }

    /// Authenticates a person by API token.
    pub async fn authenticate_person(&self, bearer: Option<&str>) -> Result<Principal, AdminError> {
        let token = bearer.ok_or_else(|| {
            AdminError::Unauthenticated(
                "the admin API needs a person's API token: send `Authorization: Bearer mdt_…`"
                    .into(),
            )
        })?;
        if token.len() > 512 {
            return Err(AdminError::Unauthenticated("API token is malformed".into()));
        }
        if token.matches('.').count() == 2 {
            return Err(AdminError::Unauthenticated(
                "agent credentials cannot call the admin API; use a person's API token".into(),
            ));
        }
        let hash = hash_api_token(token);
        let rec = self
            .store
            .api_token_by_hash(&hash)
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let rec = match rec {
            Some(r) if mandate_crypto::secret::ct_eq(&r.hash, &hash) => r,
            _ => return Err(AdminError::Unauthenticated("API token is not valid".into())),
        };
        if !rec.usable(self.now()) {
            return Err(AdminError::Unauthenticated(
                "API token has expired or was revoked".into(),
            ));
        }
        match (rec.role, rec.owner) {
            (Role::Admin, _) => Ok(Principal::Admin {
                token_id: rec.id,
                name: rec.name,
            }),
            (Role::Owner, Some(owner)) => {
                if self.inventory.owner(&owner).is_none() {
                    return Err(AdminError::Unauthenticated(
                        "API token's owner was removed".into(),
                    ));
                }
                Ok(Principal::Owner {
                    owner,
                    token_id: rec.id,
                })
            }
            (Role::Owner, None) => {
                Err(AdminError::Unauthenticated("API token is not valid".into()))
            }
        }
    }

    /// Adds an owner (admins only).
    pub async fn add_owner(&self, p: &Principal, new: NewOwner) -> Result<Owner, AdminError> {
        p.require_admin()?;
        let id = OwnerId::parse(new.id).map_err(bad)?;
        let name = new.name.unwrap_or_else(|| id.to_string());
        if name.len() > 256 || name.chars().any(char::is_control) {
            return Err(bad("owner name must be at most 256 printable characters"));
        }
        let owner = Owner {
            id,
            name,
            created_at: self.now(),
        };
        let mut e = self.event(EventKind::OwnerAdded);
        e.actor = Some(p.name());
        e.owner = Some(owner.id.to_string());
        self.store
            .commit(vec![Op::InsertOwner(owner.clone()), Op::Audit(e)])
            .await?;
        self.inventory.put_owner(owner.clone());
        Ok(owner)
    }

    /// Removes an owner (admins only): its agents are orphaned, their tasks revoked, its API
    /// tokens revoked.
    pub async fn remove_owner(&self, p: &Principal, id: &str) -> Result<Vec<String>, AdminError> {
        p.require_admin()?;
        let id = OwnerId::parse(id).map_err(bad)?;
        if self.inventory.owner(&id).is_none() {
            return Err(AdminError::NotFound(format!("owner `{id}` does not exist")));
        }
        let now = self.now();
        let reason = format!("owner `{id}` was removed");
        let mut ops = vec![Op::DeleteOwner {
            id: id.clone(),
            at: now,
        }];
        let mut orphaned = Vec::new();
        let mut updated = Vec::new();
        for mut agent in self.inventory.agents() {
            if agent.owner.as_ref() != Some(&id) {
                continue;
            }
            agent.former_owner = agent.owner.take();
            orphaned.push(agent.id.to_string());
            ops.push(Op::UpdateAgent(agent.clone()));
            updated.push(agent);
        }
        // Privilege ends first, in memory, then everything is recorded in one commit.
        let mut live = Vec::new();
        for a in &updated {
            live.extend(self.live_tasks_of(&a.id).await?);
        }
        live.extend(
            self.inventory
                .tasks_where(|t| t.state == TaskState::Active && t.owner.as_ref() == Some(&id)),
        );
        for entry in live {
            if let Some(t) = entry.end(TaskState::Revoked, now, &reason) {
                ops.extend(self.end_ops(t, Some(&p.name())));
            }
        }
        let mut e = self.event(EventKind::OwnerRemoved);
        e.actor = Some(p.name());
        e.owner = Some(id.to_string());
        e.reason = Some(format!("agents orphaned: {}", orphaned.len()));
        e.detail = serde_json::json!({ "orphaned_agents": orphaned });
        ops.push(Op::Audit(e));
        self.store.commit(ops).await?;
        self.inventory.remove_owner(&id);
        for a in updated {
            self.inventory.put_agent(a);
        }
        self.rebuild_entities();
        Ok(orphaned)
    }

    /// Owners: all for admins, itself for an owner.
    pub fn owners(&self, p: &Principal) -> Vec<Owner> {
        match p {
            Principal::Admin { .. } => self.inventory.owners(),
            Principal::Owner { owner, .. } => self.inventory.owner(owner).into_iter().collect(),
        }
    }

    /// One owner.
    pub fn owner(&self, p: &Principal, id: &str) -> Result<Owner, AdminError> {
        let id = OwnerId::parse(id).map_err(bad)?;
        if let Principal::Owner { owner, .. } = p
            && owner != &id
        {
            return Err(AdminError::Forbidden(
                "owners may see only themselves".into(),
            ));
        }
        self.inventory
            .owner(&id)
            .ok_or_else(|| AdminError::NotFound(format!("owner `{id}` does not exist")))
    }

    /// Issues a personal API token to an owner (admins only). `days` defaults to the configured
    /// lifetime; every owner token expires.
    pub async fn issue_api_token(
        &self,
        p: &Principal,
        owner: &str,
        name: Option<String>,
        days: Option<i64>,
    ) -> Result<ApiTokenIssued, AdminError> {
        p.require_admin()?;
        let owner = OwnerId::parse(owner).map_err(bad)?;
        if self.inventory.owner(&owner).is_none() {
            return Err(AdminError::NotFound(format!(
                "owner `{owner}` does not exist"
            )));
        }
        let days = days.unwrap_or(self.cfg.api_token_days);
        if !(1..=366).contains(&days) {
            return Err(bad("token lifetime must be 1 to 366 days"));
        }
        let name = name.unwrap_or_else(|| "cli".into());
        if name.len() > 128 || name.chars().any(char::is_control) {
            return Err(bad("token name must be at most 128 printable characters"));
        }
        let token = ApiToken::generate();
        let id = format!("tok_{}", uuid::Uuid::new_v4().simple());
        let now = self.now();
        let expires_at = Some(now.plus_secs(days * 86_400));
        let mut e = self.event(EventKind::ApiTokenIssued);
        e.actor = Some(p.name());
        e.owner = Some(owner.to_string());
        e.detail = serde_json::json!({"token_id": id, "role": "owner", "name": name, "days": days});
        self.store
            .commit(vec![
                Op::InsertApiToken(ApiTokenRecord {
                    id: id.clone(),
                    hash: token.hash,
                    role: Role::Owner,
                    owner: Some(owner.clone()),
                    name,
                    created_at: now,
                    expires_at,
                    revoked_at: None,
                }),
                Op::Audit(e),
            ])
            .await?;
        Ok(ApiTokenIssued {
            id,
            token: token.plaintext,
            owner: Some(owner.to_string()),
            expires_at,
        })
    }

    /// Lists an owner's API tokens (never their values).
    pub async fn api_tokens(
        &self,
        p: &Principal,
        owner: &str,
    ) -> Result<Vec<ApiTokenRecord>, AdminError> {
        let owner = self.owner(p, owner)?;
        Ok(self.store.api_tokens(Some(&owner.id)).await?)
    }

    /// Revokes an API token: admins any, owners their own.
    pub async fn revoke_api_token(
        &self,
        p: &Principal,
        owner: &str,
        token_id: &str,
    ) -> Result<(), AdminError> {
        let tokens = self.api_tokens(p, owner).await?;
        if !tokens.iter().any(|t| t.id == token_id) {
            return Err(AdminError::NotFound(format!(
                "api token `{}` does not exist",
                token_id.chars().take(64).collect::<String>()
            )));
        }
        let mut e = self.event(EventKind::ApiTokenRevoked);
        e.actor = Some(p.name());
        e.owner = Some(owner.to_string());
        e.detail = serde_json::json!({ "token_id": token_id });
        self.store
            .commit(vec![
                Op::RevokeApiToken {
                    id: token_id.to_string(),
                    at: self.now(),
                },
                Op::Audit(e),
            ])
            .await?;
        Ok(())
    }

    /// Registers an agent. Admins name any owner; owners register agents for themselves.
    pub async fn add_agent(&self, p: &Principal, new: NewAgent) -> Result<AgentView, AdminError> {
        let id = AgentId::parse(new.id).map_err(bad)?;
        let owner = match (p, new.owner) {
            (Principal::Admin { .. }, Some(o)) => OwnerId::parse(o).map_err(bad)?,
            (Principal::Admin { .. }, None) => return Err(bad("`owner` is required")),
            (Principal::Owner { owner, .. }, None) => owner.clone(),
            (Principal::Owner { owner, .. }, Some(o)) => {
                let o = OwnerId::parse(o).map_err(bad)?;
                if &o != owner {
                    return Err(AdminError::Forbidden(
                        "owners may register agents only for themselves".into(),
                    ));
                }
                o
            }
        };
        if self.inventory.owner(&owner).is_none() {
            return Err(AdminError::NotFound(format!(
                "owner `{owner}` does not exist"
            )));
        }
        let tier: Tier = new.tier.parse().map_err(AdminError::BadRequest)?;
        let envelope = Scope::parse(&new.envelope).map_err(|e| bad(format!("envelope: {e}")))?;
        if let Some(t) = new
            .envelope_arguments
            .keys()
            .find(|t| !envelope.has_target(t))
        {
            return Err(bad(format!(
                "envelope_arguments names `{t}`, which is not in the envelope"
            )));
        }
        let mut grants = envelope.to_grants();
        for g in &mut grants {
            if let Some(rules) = new.envelope_arguments.get(&g.identifier) {
                g.arguments = rules.clone();
            }
        }
        let envelope = Scope::from_grants(&grants).map_err(|e| bad(format!("envelope: {e}")))?;
        if new.attestations.is_empty() || new.attestations.len() > MAX_ATTESTATIONS {
            return Err(bad(format!(
                "an agent needs 1 to {MAX_ATTESTATIONS} attestation methods"
            )));
        }
        for a in &new.attestations {
            check_attestation(a)?;
        }
        let default_intent = new.default_intent.unwrap_or(Intent {
            text: "work requested with a plain scope".into(),
            class: "default".into(),
            values: Vec::new(),
        });
        default_intent.check().map_err(bad)?;
        let description = new.description.unwrap_or_default();
        if description.len() > 1024 {
            return Err(bad("description is longer than 1024 bytes"));
        }
        let agent = Agent {
            id,
            owner: Some(owner),
            former_owner: None,
            tier,
            envelope,
            attestations: new.attestations,
            default_intent,
            status: AgentStatus::Active,
            created_at: self.now(),
            description,
            confirmed_at: None,
        };
        let mut e = self.event(EventKind::AgentAdded);
        e.actor = Some(p.name());
        e.agent = Some(agent.id.to_string());
        e.owner = agent.owner.as_ref().map(ToString::to_string);
        e.detail = serde_json::json!({
            "tier": agent.tier,
            "envelope": agent.envelope.to_string(),
            "attestations": agent.attestations.iter().map(Attestation::kind).collect::<Vec<_>>(),
        });
        self.store
            .commit(vec![Op::InsertAgent(agent.clone()), Op::Audit(e)])
            .await?;
        self.inventory.put_agent(agent.clone());
        self.rebuild_entities();
        Ok(self.view(agent))
    }

    /// The agent's active tasks: those in memory, and those the store holds that this replica
    /// has not seen yet (opened on another replica a moment ago).
    pub(crate) async fn live_tasks_of(
        &self,
        agent: &mandate_core::AgentId,
    ) -> Result<Vec<std::sync::Arc<crate::state::TaskEntry>>, AdminError> {
        let stored = self
            .store
            .tasks(&TaskFilter {
                agent: Some(agent.clone()),
                state: Some(TaskState::Active),
                limit: Some(100_000),
                ..Default::default()
            })
            .await?;
        for t in stored {
            if self.inventory.task(t.id.as_str()).is_none() {
                self.inventory.put_task(t);
            }
        }
        Ok(self
            .inventory
            .tasks_where(|t| t.state == TaskState::Active && &t.agent == agent))
    }

    pub(crate) fn view(&self, agent: Agent) -> AgentView {
        let now = self.now();
        let mut active: Vec<ActiveTask> = self
            .inventory
            .tasks_where(|t| t.agent == agent.id && t.is_live(now))
            .iter()
            .map(|e| {
                let t = e.read();
                ActiveTask {
                    id: t.id.to_string(),
                    intent: t.intent.text.clone(),
                    intent_class: t.intent.class.clone(),
                    scope: t.scope.to_string(),
                    expires_at: t.expires_at,
                }
            })
            .collect();
        active.sort_by(|a, b| a.id.cmp(&b.id));
        let mut flags = Vec::new();
        if agent.is_orphaned() {
            flags.push("orphaned".to_string());
        }
        if agent.status == AgentStatus::Suspended {
            flags.push("suspended".to_string());
        }
        let high_risk_writes = self.high_risk_writes(&agent);
        if !high_risk_writes.is_empty() {
            flags.push("wide-envelope".to_string());
        }
        let confirmation_due = self.confirmation_due(&agent);
        if confirmation_due.is_some_and(|d| d <= now) {
            flags.push("unconfirmed".to_string());
        }
        let standing_privilege = self.standing_privilege(&agent);
        if standing_privilege > 0 {
            flags.push("standing-privilege".to_string());
        }
        AgentView {
            agent,
            active_tasks: active,
            flags,
            standing_privilege,
            leases: Vec::new(),
            high_risk_writes,
            confirmation_due,
            activity: None,
        }
    }

    pub(crate) fn managed_agent(&self, p: &Principal, id: &str) -> Result<Agent, AdminError> {
        let id = AgentId::parse(id).map_err(bad)?;
        let agent = self
            .inventory
            .agent(&id)
            .ok_or_else(|| AdminError::NotFound(format!("agent `{id}` does not exist")))?;
        p.may_manage(&agent)?;
        Ok(agent)
    }

    /// Agents the principal may see, with flags and what they did in the last `window_days`
    /// (default: the configured window).
    pub async fn agents(
        &self,
        p: &Principal,
        window_days: Option<i64>,
    ) -> Result<Vec<AgentView>, AdminError> {
        let views = self
            .inventory
            .agents()
            .into_iter()
            .filter(|a| p.may_manage(a).is_ok())
            .map(|a| self.view(a))
            .collect();
        self.with_activity(views, window_days).await
    }

    /// One agent, with flags and recent activity.
    pub async fn agent(
        &self,
        p: &Principal,
        id: &str,
        window_days: Option<i64>,
    ) -> Result<AgentView, AdminError> {
        let view = self.view(self.managed_agent(p, id)?);
        let mut views = self.with_activity(vec![view], window_days).await?;
        views
            .pop()
            .ok_or_else(|| AdminError::NotFound(format!("agent `{id}` does not exist")))
    }

    /// The kill switch: suspends an agent and revokes all its active tasks at once.
    pub async fn suspend_agent(
        &self,
        p: &Principal,
        id: &str,
        reason: Option<String>,
    ) -> Result<AgentView, AdminError> {
        let mut agent = self.managed_agent(p, id)?;
        let reason = reason.unwrap_or_else(|| format!("agent suspended by {}", p.name()));
        let reason: String = reason.chars().take(512).collect();
        agent.status = AgentStatus::Suspended;
        // Flip memory first: from here on the agent can neither open tasks nor use its tasks.
        self.inventory.put_agent(agent.clone());
        let now = self.now();
        let mut ops = vec![Op::UpdateAgent(agent.clone())];
        let mut revoked = Vec::new();
        for entry in self.live_tasks_of(&agent.id).await? {
            if let Some(t) = entry.end(TaskState::Revoked, now, &reason) {
                revoked.push(t.id.to_string());
                ops.extend(self.end_ops(t, Some(&p.name())));
            }
        }
        let mut e = self.event(EventKind::AgentSuspended);
        e.actor = Some(p.name());
        e.agent = Some(agent.id.to_string());
        e.owner = agent.owner.as_ref().map(ToString::to_string);
        e.reason = Some(reason);
        e.detail = serde_json::json!({ "revoked_tasks": revoked });
        ops.push(Op::Audit(e));
        self.store.commit(ops).await?;
        self.rebuild_entities();
        Ok(self.view(agent))
    }

    /// Lifts a suspension. Revoked tasks stay revoked.
    pub async fn resume_agent(&self, p: &Principal, id: &str) -> Result<AgentView, AdminError> {
        let mut agent = self.managed_agent(p, id)?;
        if agent.status == AgentStatus::Active {
            return Err(AdminError::Conflict(format!(
                "agent `{}` is not suspended",
                agent.id
            )));
        }
        agent.status = AgentStatus::Active;
        let mut e = self.event(EventKind::AgentResumed);
        e.actor = Some(p.name());
        e.agent = Some(agent.id.to_string());
        e.owner = agent.owner.as_ref().map(ToString::to_string);
        self.store
            .commit(vec![Op::UpdateAgent(agent.clone()), Op::Audit(e)])
            .await?;
        self.inventory.put_agent(agent.clone());
        self.rebuild_entities();
        Ok(self.view(agent))
    }

    /// Tasks the principal may see.
    pub async fn tasks(
        &self,
        p: &Principal,
        agent: Option<&str>,
        state: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Task>, AdminError> {
        let mut filter = TaskFilter {
            limit: Some(limit.unwrap_or(100).clamp(1, 10_000)),
            ..TaskFilter::default()
        };
        if let Some(a) = agent {
            filter.agent = Some(self.managed_agent(p, a)?.id);
        }
        if let Some(s) = state {
            filter.state = Some(s.parse().map_err(AdminError::BadRequest)?);
        }
        if let Principal::Owner { owner, .. } = p {
            filter.owner = Some(owner.clone());
        }
        Ok(self.store.tasks(&filter).await?)
    }

    /// One task, with its current state.
    pub async fn task(&self, p: &Principal, id: &str) -> Result<Task, AdminError> {
        let tid = TaskId::parse(id).map_err(bad)?;
        let task = match self.inventory.task(id) {
            Some(e) => e.read().clone(),
            None => self
                .store
                .task(&tid)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("task `{tid}` does not exist")))?,
        };
        if let Principal::Owner { owner, .. } = p
            && task.owner.as_ref() != Some(owner)
        {
            return Err(AdminError::Forbidden(
                "the task belongs to another owner's agent".into(),
            ));
        }
        Ok(task)
    }

    /// Revokes a task at once.
    pub async fn revoke_task(
        &self,
        p: &Principal,
        id: &str,
        reason: Option<String>,
    ) -> Result<Task, AdminError> {
        let task = self.task(p, id).await?;
        if task.state != TaskState::Active {
            return Err(AdminError::Conflict(format!(
                "task `{}` is already {}",
                task.id, task.state
            )));
        }
        let entry = self
            .inventory
            .task(id)
            .ok_or_else(|| AdminError::NotFound(format!("task `{id}` does not exist")))?;
        let reason: String = reason
            .unwrap_or_else(|| format!("revoked by {}", p.name()))
            .chars()
            .take(512)
            .collect();
        self.end_task(&entry, TaskState::Revoked, &reason, Some(&p.name()))
            .await
            .map_err(AdminError::Unavailable)?;
        Ok(entry.read().clone())
    }

    /// Reloads policies (admins only).
    pub async fn reload_policies_as(&self, p: &Principal) -> Result<String, AdminError> {
        p.require_admin()?;
        self.reload_policies(Some(&p.name()))
            .await
            .map_err(AdminError::BadRequest)
    }
}
