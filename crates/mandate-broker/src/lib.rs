//! The broker: everything Mandate does, without HTTP.
//!
//! [`Broker`] owns the in-memory inventory and live tasks, the policy engine, the key ring and the
//! store. The token service ([`Broker::token`], introspection, revocation) opens and ends tasks;
//! [`Broker::decide`] answers runtime questions from memory only; the admin operations manage
//! owners, agents and tasks. Every step is appended to the audit chain.
//!
//! Ordering rule: a change that ends privilege (revocation, suspension, completion) flips the
//! in-memory state first and then commits, so no decision made after the call started can allow
//! on the old state; a change that grants (a new task) commits first and only then becomes
//! visible.

mod admin;
mod approvals;
mod attest;
pub mod authcode;
mod config;
mod decide;
mod delegation;
mod error;
mod governance;
mod governance_report;
mod leases;
mod oauth;
pub mod oidc;
pub mod plan;
mod replication;
mod report;
pub mod search;
mod secrets;
mod signing;
mod state;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mandate_core::audit::AuditEvent;
pub use mandate_core::audit::EventKind;
use mandate_core::{Clock, TaskState, Timestamp};
use mandate_crypto::KeyRing;
use mandate_policy::{AgentFacts, EntityIndex, PolicyBundle, PolicyEngine};
use mandate_store::{Op, Store};

pub use admin::{Activity, AgentView, ApiTokenIssued, NewAgent, NewOwner, Principal};
pub use attest::{ClientAuth, ClientCert, JWT_BEARER, JWT_SPIFFE};
pub use config::{BrokerConfig, OidcProvider, Webhook};
pub use decide::{DecideInput, DecisionOutcome, DpopInput, PendingAudit, Target, TaskView};
pub use error::{AdminError, CredentialError, DecideError, OAuthError};
pub use governance::MAX_WINDOW_DAYS;
pub use leases::{
    Credential, CredentialKind, CredentialSpec, GrantSpec, IssuedCredential, LeaseView,
    check_credentials,
};

pub use delegation::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, MAX_CHAIN, TOKEN_EXCHANGE};
pub use oauth::{Caller, ExchangeParams, TASK_DETAILS_TYPE, TokenRequest, TokenResponse};
pub use replication::{DEFAULT_FOLLOW_INTERVAL_MS, DEFAULT_MAX_STALENESS_MS};
pub use report::{ReportInput, ReportOutcome};
pub use secrets::check_secret_name;
pub use signing::shared_key_ring;

/// The broker. Cheap to share behind an `Arc`.
pub struct Broker {
    pub(crate) cfg: BrokerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) store: Store,
    pub(crate) keys: ArcSwap<KeyRing>,
    pub(crate) policy: PolicyEngine,
    pub(crate) entities: ArcSwap<EntityIndex>,
    pub(crate) inventory: state::Inventory,
    pub(crate) jwks_cache: attest::JwksCache,
    pub(crate) replay: decide::ReplayCache,
    pub(crate) verified: decide::VerifiedTokens,
    pub(crate) approvals_changed: tokio::sync::Notify,
    pub(crate) kek: Option<mandate_crypto::seal::Kek>,
    pub(crate) secret_cache: secrets::SecretCache,
    pub(crate) secret_changes: tokio::sync::watch::Sender<u64>,
    pub(crate) leases: leases::Leases,
    pub(crate) reminded: governance::Reminded,
    pub(crate) follower: replication::Follower,
    pub(crate) last_reload: std::sync::Mutex<Option<PolicyReload>>,
    pub(crate) authcodes: authcode::AuthCodes,
    pub(crate) oidc_discovery: tokio::sync::Mutex<Option<oidc::Discovery>>,
    http: std::sync::OnceLock<reqwest::Client>,
}

/// The outcome of the last policy reload in this process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyReload {
    /// When it ran.
    pub at: Timestamp,
    /// Who asked (`None`: a file change or a signal).
    pub actor: Option<String>,
    /// Whether the new set was taken.
    pub loaded: bool,
    /// What happened, in words (the refusal when not loaded).
    pub message: String,
    /// Tasks the new set revoked (policy drift).
    pub revoked_tasks: Vec<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("issuer", &self.cfg.issuer)
            .field("store", &self.store)
            .finish()
    }
}

/// What the broker reports about itself.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Health {
    /// Always `ok` when the broker answers.
    pub status: &'static str,
    /// Number of tasks held in memory.
    pub tasks_in_memory: usize,
    /// Fingerprint of the policy set in force.
    pub policy_digest: String,
    /// Number of policies in force.
    pub policies: usize,
}

impl Broker {
    /// Starts a broker over `store`: loads the policy directory (refusing to start on a bad one),
    /// the inventory and the unexpired tasks.
    pub async fn start(
        cfg: BrokerConfig,
        store: Store,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let bundle = PolicyBundle::load_dir(&cfg.policy_dir)
            .map_err(|e| format!("policy set refused: {e}"))?;
        let broker = Broker {
            policy: PolicyEngine::new(bundle),
            entities: ArcSwap::from_pointee(EntityIndex::empty()),
            inventory: state::Inventory::default(),
            jwks_cache: attest::JwksCache::default(),
            replay: decide::ReplayCache::default(),
            verified: decide::VerifiedTokens::default(),
            approvals_changed: tokio::sync::Notify::new(),
            kek: None,
            secret_cache: secrets::SecretCache::default(),
            secret_changes: tokio::sync::watch::channel(0).0,
            leases: Default::default(),
            reminded: Default::default(),
            follower: Default::default(),
            last_reload: std::sync::Mutex::new(None),
            authcodes: Default::default(),
            oidc_discovery: tokio::sync::Mutex::new(None),
            keys: ArcSwap::from_pointee(keys),
            http: std::sync::OnceLock::new(),
            cfg,
            clock,
            store,
        };
        broker.load().await.map_err(|e| e.to_string())?;
        let broker = Arc::new(broker);
        let current = broker.policy.current();
        let mut started = broker.event(EventKind::ServerStarted);
        started.detail = serde_json::json!({
            "issuer": broker.cfg.issuer,
            "policy_digest": current.digest(),
            "policies": current.len(),
        });
        broker
            .store
            .commit(vec![Op::Audit(started)])
            .await
            .map_err(|e| e.to_string())?;
        Ok(broker)
    }

    async fn load(&self) -> Result<(), mandate_store::StoreError> {
        for o in self.store.owners().await? {
            self.inventory.put_owner(o);
        }
        for a in self.store.agents().await? {
            self.inventory.put_agent(a);
        }
        let now = self.now();
        let filter = mandate_store::TaskFilter {
            limit: Some(i64::MAX),
            ..Default::default()
        };
        for t in self.store.tasks(&filter).await? {
            if t.expires_at > now || t.state == TaskState::Active {
                self.inventory.put_task(t);
            }
        }
        self.rebuild_entities();
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The public keys, as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::to_value(self.keys.load().jwks()).unwrap_or(serde_json::Value::Null)
    }

    /// Current time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Liveness facts.
    pub fn health(&self) -> Health {
        let p = self.policy.current();
        Health {
            status: "ok",
            tasks_in_memory: self.inventory.task_count(),
            policy_digest: p.digest().to_string(),
            policies: p.len(),
        }
    }

    pub(crate) fn http_client(&self) -> Result<&reqwest::Client, String> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        // One TLS backend for every outgoing call: rustls on ring. Installing it is idempotent;
        // without a provider reqwest would panic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build http client: {e}"))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// An audit event of `kind` stamped now.
    pub(crate) fn event(&self, kind: EventKind) -> AuditEvent {
        AuditEvent::new(kind, self.now())
    }

    /// Records an event that accompanies a refusal. If the store cannot take it, the refusal
    /// stands and the failure is logged.
    pub(crate) async fn audit_best_effort(&self, e: AuditEvent) {
        if let Err(err) = self.store.commit(vec![Op::Audit(e)]).await {
            tracing::error!(error = %err, "could not record audit event");
        }
    }

    /// Rebuilds what policies see of agents and owners. Called after every inventory change.
    pub(crate) fn rebuild_entities(&self) {
        let agents: Vec<AgentFacts> = self
            .inventory
            .agents()
            .into_iter()
            .map(|a| AgentFacts {
                id: a.id.to_string(),
                owner: a.owner.as_ref().map(ToString::to_string),
                tier: a.tier.as_str().to_string(),
                envelope: a.envelope.tokens(),
            })
            .collect();
        let bundle = self.policy.current();
        match EntityIndex::build(bundle.schema(), &agents, &bundle.catalog().facts()) {
            Ok(index) => self.entities.store(Arc::new(index)),
            Err(e) => tracing::error!(error = %e, "could not rebuild policy entities"),
        }
    }

    /// Reloads the policy directory. A bad set changes nothing; either outcome is audited.
    pub async fn reload_policies(&self, actor: Option<&str>) -> Result<String, String> {
        match PolicyBundle::load_dir(&self.cfg.policy_dir) {
            Ok(bundle) => {
                let digest = bundle.digest().to_string();
                let count = bundle.len();
                self.policy.replace(bundle);
                self.rebuild_entities();
                let revoked = self.reassess_tasks(actor).await;
                let mut e = self.event(EventKind::PolicyLoaded);
                e.actor = actor.map(str::to_string);
                e.detail = serde_json::json!({
                    "policy_digest": digest,
                    "policies": count,
                    "revoked_tasks": revoked,
                });
                self.audit_best_effort(e).await;
                let msg = format!(
                    "{count} policies loaded ({digest}); {} active tasks revoked by the change",
                    revoked.len()
                );
                self.note_reload(actor, true, &msg, revoked);
                Ok(msg)
            }
            Err(err) => {
                let mut e = self.event(EventKind::PolicyRejected);
                e.actor = actor.map(str::to_string);
                e.reason = Some(err.to_string());
                self.audit_best_effort(e).await;
                self.note_reload(actor, false, &err.to_string(), Vec::new());
                Err(err.to_string())
            }
        }
    }

    fn note_reload(&self, actor: Option<&str>, loaded: bool, message: &str, revoked: Vec<String>) {
        let r = PolicyReload {
            at: self.now(),
            actor: actor.map(str::to_string),
            loaded,
            message: message.to_string(),
            revoked_tasks: revoked,
        };
        *self
            .last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
    }

    /// The last policy reload in this process, if any since it started.
    pub fn last_policy_reload(&self) -> Option<PolicyReload> {
        self.last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Policy drift: re-runs admission for every active task under the policies now in force,
    /// and revokes at once those no longer allowed, naming the policy that decided.
    async fn reassess_tasks(&self, actor: Option<&str>) -> Vec<String> {
        let now = self.now();
        let mut revoked = Vec::new();
        let active = self
            .inventory
            .tasks_where(|t| t.state == TaskState::Active && t.expires_at > now);
        for entry in active {
            let task = entry.read().clone();
            let Some(agent) = self.inventory.agent(&task.agent) else {
                continue;
            };
            let verdict = self.admit(&agent, &task);
            if verdict.allowed() {
                continue;
            }
            let reason = format!("policy change: {}", verdict.reason);
            if let Some(t) = entry.end(TaskState::Revoked, now, &reason) {
                revoked.push(t.id.to_string());
                let ops = self.end_ops_by(t, actor.or(Some("policy-reload")), &verdict.policies);
                if let Err(e) = self.store.commit(ops).await {
                    tracing::error!(error = %e, "could not record a revocation by policy change");
                }
            }
        }
        revoked
    }

    /// Periodic upkeep: expires tasks whose TTL ran out, forgets old ended tasks and used
    /// one-time values. Run it every second or so.
    pub async fn tick(&self) {
        let now = self.now();
        let due = self
            .inventory
            .tasks_where(|t| t.state == TaskState::Active && t.expires_at <= now);
        for entry in due {
            if let Some(t) = entry.end(TaskState::Expired, now, "its TTL ran out")
                && let Err(err) = self.store.commit(self.end_ops(t, None)).await
            {
                tracing::error!(error = %err, "could not record task expiry");
            }
        }
        self.remind_confirmations().await;
        self.inventory.evict(now.plus_secs(-120));
        self.replay.purge(now.as_secs());
        self.verified.purge(now.as_secs());
    }

    /// Deletes used one-time values that expired; run every few minutes.
    pub async fn purge_once(&self) {
        let before = self.now().plus_secs(-self.cfg.leeway);
        if let Err(err) = self.store.commit(vec![Op::PurgeOnce { before }]).await {
            tracing::warn!(error = %err, "could not purge used one-time values");
        }
    }

    /// Sets the key-encryption key for brokered secrets. Call before sharing the broker.
    pub fn set_kek(self: &mut Arc<Self>, kek: mandate_crypto::seal::Kek) -> Result<(), String> {
        Arc::get_mut(self)
            .map(|b| b.kek = Some(kek))
            .ok_or_else(|| "the broker is already shared".to_string())
    }

    /// Loads the signing key ring (the binary owns where keys are kept).
    pub fn replace_keys(&self, keys: KeyRing) {
        self.keys.store(Arc::new(keys));
    }

    /// Whether the policy directory exists.
    pub fn policy_dir(&self) -> &Path {
        &self.cfg.policy_dir
    }
}
