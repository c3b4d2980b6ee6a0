//! Dynamic credentials: a downstream credential made for one task when it first needs it, scoped
//! to what the task's scope allows, expiring no later than the task, and revoked downstream when
//! the task completes, expires or is revoked.
//!
//! Three kinds, configured as `[[credentials]]`:
//! - `postgres`: a role per task (`CREATE ROLE … VALID UNTIL …` with table privileges from the
//!   task's scope); at the end its sessions are terminated and the role dropped;
//! - `ssh`: an OpenSSH user certificate for a fresh key pair, signed by a CA Mandate keeps sealed
//!   in the store, with principals and `force-command` from the scope and validity the task's;
//!   revoked through the `RevokedKeys` file sshd reads;
//! - `jwt`: a bearer token for one API (audience), signed by Mandate, which the API verifies with
//!   Mandate's JWKS and so needs no static key.
//!
//! Every lease is recorded in the store *before* it is made downstream (`pending`), made live
//! after, and revoked by one reaper ([`Broker::reap_leases`]) that runs a few times a second on
//! every replica: a lease whose task is no longer live, or whose own time ran out, is revoked
//! downstream and then marked so (a conditional update: two replicas revoke once). A restart runs
//! it at once, and also revokes leases it cannot prove live: pending ones a stopped process left
//! behind, and roles that are gone.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mandate_core::audit::EventKind;
use mandate_core::{Scope, Task, TaskState, Timestamp};
use mandate_crypto::SecretString;
use mandate_crypto::seal::Sealed;
use mandate_downstream::postgres::{self as pg, TableGrant};
use mandate_downstream::ssh;
use mandate_store::{Lease, LeaseFilter, LeaseState, Op, StoreError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Broker;
use crate::admin::Principal;
use crate::error::{AdminError, CredentialError};

/// Most `[[credentials]]` entries.
pub const MAX_CREDENTIALS: usize = 64;
/// Most grants one credential may map.
pub const MAX_CREDENTIAL_GRANTS: usize = 64;
/// A pending lease older than this, in seconds, was left by a process that stopped mid-way.
const PENDING_GRACE: i64 = 30;
/// Default lifetime of a per-task JWT, in seconds (re-minted while its task lives).
const DEFAULT_JWT_TTL: i64 = 300;

/// One `[[credentials]]` entry as written in the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    /// Name, referenced as `${cred:NAME}` and in `POST /v1/credentials/NAME`.
    pub name: String,
    /// `postgres`, `ssh` or `jwt`.
    pub kind: String,
    /// Longest life of one lease, in seconds (never beyond its task). Default: the task's for
    /// `postgres` and `ssh`, 300 for `jwt`.
    #[serde(default)]
    pub max_ttl: Option<i64>,
    /// `postgres`: the brokered secret holding the admin connection URL
    /// (`postgres://admin:…@host:port/db`), which may create roles.
    #[serde(default)]
    pub admin_secret: Option<String>,
    /// `postgres`: most sessions one task's role may hold (default 4).
    #[serde(default)]
    pub connection_limit: Option<u32>,
    /// `ssh`: the file sshd's `RevokedKeys` names; Mandate appends revoked keys to it.
    #[serde(default)]
    pub revoked_keys_file: Option<PathBuf>,
    /// `ssh`: CIDR blocks the certificate may be used from (`source-address`).
    #[serde(default)]
    pub source_address: Vec<String>,
    /// `jwt`: the API's identifier, the token's `aud`.
    #[serde(default)]
    pub audience: Option<String>,
    /// What each scope token of a task grants downstream.
    #[serde(default)]
    pub grants: Vec<GrantSpec>,
}

/// What one scope token grants downstream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// An `action:target` token; a task whose scope allows it gets the rest.
    pub scope: String,
    /// `postgres`: privileges (`SELECT`, `INSERT`, …) on each of `tables`.
    #[serde(default)]
    pub privileges: Vec<String>,
    /// `postgres`: `table` or `schema.table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// `ssh`: login names.
    #[serde(default)]
    pub principals: Vec<String>,
    /// `ssh`: the only command the certificate runs.
    #[serde(default)]
    pub force_command: Option<String>,
}

/// A validated credential.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Name.
    pub name: String,
    /// Longest life of one lease, in seconds.
    pub max_ttl: Option<i64>,
    /// What kind, with its settings.
    pub kind: CredentialKind,
    /// Scope token (action, target) → what it grants.
    grants: Vec<(String, String, Grant)>,
}

/// A credential's kind and settings.
#[derive(Clone, Debug)]
pub enum CredentialKind {
    /// A PostgreSQL role per task.
    Postgres {
        /// The brokered secret with the admin URL.
        admin_secret: String,
        /// Most sessions per role.
        connection_limit: u32,
    },
    /// An OpenSSH user certificate per task.
    Ssh {
        /// sshd's `RevokedKeys` file.
        revoked_keys_file: PathBuf,
        /// `source-address`, comma-joined.
        source_address: Option<String>,
    },
    /// A JWT for one API.
    Jwt {
        /// The token's audience.
        audience: String,
    },
}

impl CredentialKind {
    /// `postgres`, `ssh` or `jwt`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::Postgres { .. } => "postgres",
            CredentialKind::Ssh { .. } => "ssh",
            CredentialKind::Jwt { .. } => "jwt",
        }
    }
}

#[derive(Clone, Debug)]
enum Grant {
    Tables(Vec<TableGrant>),
    Login {
        principals: Vec<String>,
        force_command: Option<String>,
    },
    Scope,
}

fn bad(name: &str, msg: impl std::fmt::Display) -> String {
    format!("credential `{name}`: {msg}")
}

impl Credential {
    /// Validates a configured credential.
    pub fn from_spec(s: &CredentialSpec) -> Result<Self, String> {
        crate::check_secret_name(&s.name).map_err(|e| format!("credential name: {e}"))?;
        let name = s.name.as_str();
        if s.grants.is_empty() {
            return Err(bad(name, "lists no grants, so no task could use it"));
        }
        if s.grants.len() > MAX_CREDENTIAL_GRANTS {
            return Err(bad(
                name,
                format!("has more than {MAX_CREDENTIAL_GRANTS} grants"),
            ));
        }
        if let Some(t) = s.max_ttl
            && !(1..=86_400).contains(&t)
        {
            return Err(bad(name, "max_ttl must be 1 to 86400 seconds"));
        }
        let kind = match s.kind.as_str() {
            "postgres" => {
                let admin_secret = s
                    .admin_secret
                    .clone()
                    .ok_or_else(|| bad(name, "a postgres credential needs `admin_secret`"))?;
                crate::check_secret_name(&admin_secret).map_err(|e| bad(name, e))?;
                CredentialKind::Postgres {
                    admin_secret,
                    connection_limit: s.connection_limit.unwrap_or(4).clamp(1, 1000),
                }
            }
            "ssh" => {
                let file = s.revoked_keys_file.clone().ok_or_else(|| {
                    bad(
                        name,
                        "an ssh credential needs `revoked_keys_file` (the file sshd's RevokedKeys names)",
                    )
                })?;
                for a in &s.source_address {
                    let ok = !a.is_empty()
                        && a.len() <= 64
                        && a.chars()
                            .all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '/'));
                    if !ok {
                        return Err(bad(
                            name,
                            format!("source_address `{a}` is not an address or CIDR block"),
                        ));
                    }
                }
                CredentialKind::Ssh {
                    revoked_keys_file: file,
                    source_address: (!s.source_address.is_empty())
                        .then(|| s.source_address.join(",")),
                }
            }
            "jwt" => {
                let audience = s
                    .audience
                    .clone()
                    .filter(|a| !a.is_empty() && a.len() <= 256)
                    .ok_or_else(|| {
                        bad(
                            name,
                            "a jwt credential needs `audience` (the API's identifier)",
                        )
                    })?;
                CredentialKind::Jwt { audience }
            }
            other => {
                return Err(bad(
                    name,
                    format!("kind `{other}` is not one of `postgres`, `ssh`, `jwt`"),
                ));
            }
        };
        let mut grants = Vec::new();
        for g in &s.grants {
            let scope = Scope::parse(&g.scope).map_err(|e| bad(name, e))?;
            let mut pairs = scope.pairs();
            let (action, target) = match (pairs.next(), pairs.next()) {
                (Some(p), None) => p,
                _ => {
                    return Err(bad(
                        name,
                        "each grant's `scope` is one `action:target` token",
                    ));
                }
            };
            let postgres_fields = !g.privileges.is_empty() || !g.tables.is_empty();
            let ssh_fields = !g.principals.is_empty() || g.force_command.is_some();
            let grant = match &kind {
                CredentialKind::Postgres { .. } => {
                    if ssh_fields || g.privileges.is_empty() || g.tables.is_empty() {
                        return Err(bad(
                            name,
                            format!(
                                "grant `{}` needs `privileges` and `tables`, and nothing else",
                                g.scope
                            ),
                        ));
                    }
                    let privileges = g
                        .privileges
                        .iter()
                        .map(|p| pg::check_privilege(p))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad(name, e))?;
                    let mut tables = Vec::new();
                    for t in &g.tables {
                        pg::check_table(t).map_err(|e| bad(name, e))?;
                        tables.push(TableGrant {
                            privileges: privileges.clone(),
                            table: t.clone(),
                        });
                    }
                    Grant::Tables(tables)
                }
                CredentialKind::Ssh { .. } => {
                    if postgres_fields || g.principals.is_empty() {
                        return Err(bad(
                            name,
                            format!(
                                "grant `{}` needs `principals` (and may set `force_command`)",
                                g.scope
                            ),
                        ));
                    }
                    for p in &g.principals {
                        ssh::check_principal(p).map_err(|e| bad(name, e))?;
                    }
                    if let Some(c) = &g.force_command
                        && (c.is_empty() || c.len() > 1024 || c.contains(['\n', '\0']))
                    {
                        return Err(bad(
                            name,
                            "force_command must be one line of at most 1024 bytes",
                        ));
                    }
                    Grant::Login {
                        principals: g.principals.clone(),
                        force_command: g.force_command.clone(),
                    }
                }
                CredentialKind::Jwt { .. } => {
                    if postgres_fields || ssh_fields {
                        return Err(bad(
                            name,
                            format!("grant `{}` of a jwt credential takes only `scope`", g.scope),
                        ));
                    }
                    Grant::Scope
                }
            };
            grants.push((action.to_string(), target.to_string(), grant));
        }
        Ok(Credential {
            name: s.name.clone(),
            max_ttl: s.max_ttl,
            kind,
            grants,
        })
    }

    /// What `earned` grants, in the downstream's words, sorted: privileges on tables, principals,
    /// scope tokens. A lease records it; a restart compares it with what the task earns now.
    fn described(&self, earned: &[(String, &Grant)]) -> Vec<String> {
        let mut out: Vec<String> = earned
            .iter()
            .flat_map(|(token, g)| match g {
                Grant::Tables(t) => t.iter().map(TableGrant::describe).collect(),
                Grant::Login { principals, .. } => principals.clone(),
                Grant::Scope => vec![token.clone()],
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The grants a task's scope earns, as (scope token, grant).
    fn earned<'a>(&'a self, scope: &Scope) -> Vec<(String, &'a Grant)> {
        self.grants
            .iter()
            .filter(|(a, t, _)| scope.allows(a, t))
            .map(|(a, t, g)| (format!("{a}:{t}"), g))
            .collect()
    }
}

/// Validates the configured credentials: names unique, each well formed.
pub fn check_credentials(specs: &[CredentialSpec]) -> Result<Vec<Credential>, String> {
    if specs.len() > MAX_CREDENTIALS {
        return Err(format!("more than {MAX_CREDENTIALS} [[credentials]]"));
    }
    let mut out: Vec<Credential> = Vec::new();
    for s in specs {
        if out.iter().any(|c| c.name == s.name) {
            return Err(format!("credential `{}` is configured twice", s.name));
        }
        out.push(Credential::from_spec(s)?);
    }
    Ok(out)
}

/// A credential handed out for a task. Its `Debug` leaves the secret parts out.
#[derive(Clone, Serialize)]
pub struct IssuedCredential {
    /// The configured credential.
    pub credential: String,
    /// `postgres`, `ssh` or `jwt`.
    pub kind: &'static str,
    /// The lease, as listed by `mandate lease list` and in the audit.
    pub lease_id: String,
    /// When it stops working downstream.
    pub expires_at: Timestamp,
    /// What it grants, in the downstream's words.
    pub grants: Vec<String>,
    /// The credential itself: `username`, `password`, `url` (postgres); `token`, `token_type`
    /// (jwt); `private_key`, `certificate`, `principals` (ssh).
    #[serde(flatten)]
    pub secret: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential")
            .field("credential", &self.credential)
            .field("kind", &self.kind)
            .field("lease_id", &self.lease_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl IssuedCredential {
    /// The value `${cred:NAME}` stands for: the connection URL (postgres), the token (jwt).
    pub fn primary(&self) -> Option<SecretString> {
        let field = match self.kind {
            "postgres" => "url",
            "jwt" => "token",
            _ => return None,
        };
        self.secret
            .get(field)
            .and_then(Value::as_str)
            .map(|s| SecretString::new(s.to_string()))
    }

    /// The secret parts, to be scrubbed from anything an upstream sends back.
    pub fn secret_values(&self) -> Vec<SecretString> {
        ["password", "url", "token", "private_key"]
            .iter()
            .filter_map(|f| self.secret.get(*f).and_then(Value::as_str))
            .map(|s| SecretString::new(s.to_string()))
            .collect()
    }
}

/// A lease as people see it: never its secret part.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseView {
    /// Id.
    pub id: String,
    /// The task.
    pub task: String,
    /// The agent.
    pub agent: String,
    /// The configured credential.
    pub credential: String,
    /// Its kind.
    pub kind: String,
    /// `pending`, `live` or `revoked`.
    pub state: &'static str,
    /// What names it downstream.
    pub handle: String,
    /// What it grants.
    pub grants: Vec<String>,
    /// When made.
    pub created_at: Timestamp,
    /// When it stops working downstream.
    pub expires_at: Timestamp,
    /// When revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Why revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

impl From<&Lease> for LeaseView {
    fn from(l: &Lease) -> Self {
        LeaseView {
            id: l.id.clone(),
            task: l.task.to_string(),
            agent: l.agent.to_string(),
            credential: l.credential.clone(),
            kind: l.kind.clone(),
            state: l.state.as_str(),
            handle: l.handle.clone(),
            grants: l.grants.clone(),
            created_at: l.created_at,
            expires_at: l.expires_at,
            ended_at: l.ended_at,
            end_reason: l.end_reason.clone(),
        }
    }
}

/// What this process holds of leases: handed-out credentials (so the gateway does not mint per
/// call), one lock per (task, credential) so a task mints once, the SSH CAs opened.
#[derive(Default)]
pub(crate) struct Leases {
    handed: Mutex<HashMap<LeaseKey, IssuedCredential>>,
    minting: Mutex<HashMap<LeaseKey, Arc<tokio::sync::Mutex<()>>>>,
    cas: Mutex<HashMap<String, Arc<ssh::Ca>>>,
    /// When a failing revocation was last logged, per lease (once a minute, not every pass).
    warned: Mutex<HashMap<String, std::time::Instant>>,
    /// Wakes the reaper (a task ended here).
    pub(crate) wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leases")
    }
}

/// (task, credential): at most one open lease each.
type LeaseKey = (String, String);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn random_text(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| {
            let i = rng.gen_range(0..ALPHABET.len());
            char::from(ALPHABET.get(i).copied().unwrap_or(b'x'))
        })
        .collect()
}

/// The name a lease's value is sealed under (its AEAD associated data).
fn seal_name(lease_id: &str) -> String {
    format!("lease:{lease_id}")
}

impl Broker {
    /// A configured credential.
    fn credential_config(&self, name: &str) -> Result<&Credential, CredentialError> {
        self.cfg
            .credentials
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                CredentialError::NotFound(format!("no credential `{name}` is configured"))
            })
    }

    /// The credential `name` for a task the caller already authenticated (the gateway, after
    /// a decision allowed the call): the live lease's value, or a new lease made now.
    pub async fn task_credential(
        &self,
        task_id: &str,
        name: &str,
    ) -> Result<IssuedCredential, CredentialError> {
        let now = self.now();
        let ended = || CredentialError::TaskEnded(format!("task `{task_id}` is not active"));
        let entry = self
            .inventory
            .task(task_id)
            .filter(|e| e.read().is_live(now))
            .ok_or_else(ended)?;
        let key = (entry.read().id.to_string(), name.to_string());
        // The gateway's path: a handed-out lease, without copying the task.
        if let Some(h) = lock(&self.leases.handed).get(&key)
            && h.expires_at > now
        {
            return Ok(h.clone());
        }
        let cred = self.credential_config(name)?.clone();
        let task = entry.read().clone();
        let gate = lock(&self.leases.minting)
            .entry(key.clone())
            .or_default()
            .clone();
        let _minting = gate.lock().await;
        let now = self.now();
        if let Some(h) = lock(&self.leases.handed).get(&key)
            && h.expires_at > now
        {
            return Ok(h.clone());
        }
        let issued = match self.open_lease_of(&task, &cred).await? {
            Some(i) => i,
            None => self.mint(&task, &cred).await?,
        };
        lock(&self.leases.handed).insert(key, issued.clone());
        Ok(issued)
    }

    /// The credential `name` for the task whose credential is presented (`POST
    /// /v1/credentials/NAME`).
    pub async fn fetch_credential(
        &self,
        token: &str,
        dpop: Option<&crate::DpopInput>,
        cert: Option<&crate::ClientCert>,
        name: &str,
    ) -> Result<IssuedCredential, CredentialError> {
        let target = crate::Target {
            kind: mandate_policy::TargetKind::Resource,
            id: format!("credential:{name}"),
        };
        let (claims, _) = self
            .credential_or_audit(token, dpop, cert, "fetch_credential", &target)
            .await
            .map_err(CredentialError::Token)?;
        let issued = self.task_credential(&claims.task_id, name).await?;
        // Every hand-out is on record before the credential leaves.
        let mut e = self.event(EventKind::CredentialFetched);
        e.agent = Some(claims.client_id.clone());
        e.task = Some(claims.task_id.clone());
        e.resource = Some(format!("credential:{name}"));
        e.detail = json!({"lease": issued.lease_id, "kind": issued.kind});
        self.store.commit(vec![Op::Audit(e)]).await.map_err(|e| {
            CredentialError::Unavailable(format!("the fetch could not be recorded: {e}"))
        })?;
        Ok(issued)
    }

    /// A lease another replica (or this process before a restart) made and still holds live.
    async fn open_lease_of(
        &self,
        task: &Task,
        cred: &Credential,
    ) -> Result<Option<IssuedCredential>, CredentialError> {
        let filter = LeaseFilter {
            task: Some(task.id.clone()),
            open: true,
            ..Default::default()
        };
        let now = self.now();
        let found = self
            .store
            .leases(&filter)
            .await
            .map_err(|e| CredentialError::Unavailable(e.to_string()))?
            .into_iter()
            .find(|l| l.credential == cred.name);
        let Some(l) = found else {
            return Ok(None);
        };
        if l.state == LeaseState::Live && l.expires_at <= now {
            // Its own lifetime ran out while the task lives (a short-lived JWT): end it here
            // rather than wait for the reaper, and make the next one.
            self.revoke_downstream(&l)
                .await
                .map_err(CredentialError::Unavailable)?;
            self.close_lease(l, LeaseState::Live, "its lifetime ran out")
                .await;
            return Ok(None);
        }
        if l.state == LeaseState::Pending {
            return Err(CredentialError::Unavailable(format!(
                "credential `{}` is being made or revoked for this task; try again shortly",
                cred.name
            )));
        }
        let kek = self.lease_kek()?;
        let (nonce, ciphertext) = l
            .sealed
            .clone()
            .ok_or_else(|| CredentialError::Unavailable("the lease holds no value".into()))?;
        let opened = kek
            .open(&seal_name(&l.id), 1, &Sealed { nonce, ciphertext })
            .map_err(|e| {
                CredentialError::Unavailable(format!("the lease cannot be opened: {e}"))
            })?;
        let secret: serde_json::Map<String, Value> = serde_json::from_str(opened.expose())
            .map_err(|e| CredentialError::Unavailable(format!("the lease is unreadable: {e}")))?;
        Ok(Some(IssuedCredential {
            credential: l.credential,
            kind: cred.kind.as_str(),
            lease_id: l.id,
            expires_at: l.expires_at,
            grants: l.grants,
            secret,
        }))
    }

    fn lease_kek(&self) -> Result<&mandate_crypto::seal::Kek, CredentialError> {
        self.kek.as_ref().ok_or_else(|| {
            CredentialError::Unavailable(
                "no key-encryption key is configured, so dynamic credentials are off".into(),
            )
        })
    }

    /// Makes a new lease: recorded pending, made downstream, recorded live with its value sealed.
    async fn mint(
        &self,
        task: &Task,
        cred: &Credential,
    ) -> Result<IssuedCredential, CredentialError> {
        let earned = cred.earned(&task.scope);
        if earned.is_empty() {
            return Err(CredentialError::Forbidden(format!(
                "the task's scope grants nothing of credential `{}`",
                cred.name
            )));
        }
        let kek = self.lease_kek()?;
        let now = self.now();
        let ttl = cred.max_ttl.unwrap_or(match cred.kind {
            CredentialKind::Jwt { .. } => DEFAULT_JWT_TTL,
            _ => i64::MAX,
        });
        let expires_at = Timestamp(task.expires_at.0.min(now.plus_secs(ttl.min(86_400)).0));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let handle = match &cred.kind {
            CredentialKind::Postgres { .. } => format!("mandate_{id}"),
            CredentialKind::Ssh { .. } => String::new(),
            CredentialKind::Jwt { .. } => id.clone(),
        };
        let grants_sorted = cred.described(&earned);
        let mut lease = Lease {
            id: id.clone(),
            task: task.id.clone(),
            agent: task.agent.clone(),
            credential: cred.name.clone(),
            kind: cred.kind.as_str().to_string(),
            state: LeaseState::Pending,
            handle,
            grants: grants_sorted,
            created_at: now,
            expires_at,
            ended_at: None,
            end_reason: None,
            sealed: None,
        };
        match self
            .store
            .commit(vec![Op::InsertLease(lease.clone())])
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(CredentialError::Unavailable(format!(
                    "credential `{}` is being made for this task elsewhere; try again shortly",
                    cred.name
                )));
            }
            Err(e) => return Err(CredentialError::Unavailable(e.to_string())),
        }
        let made = self.make_downstream(task, cred, &earned, &mut lease).await;
        let secret = match made {
            Ok(s) => s,
            Err(e) => {
                // The downstream's own words are for operators (the log and the lease), not for
                // the agent: they may describe the admin side.
                tracing::warn!(lease = %lease.id, credential = %cred.name, error = %e, "could not make a lease");
                let told = CredentialError::Unavailable(format!(
                    "credential `{}` could not be made now; nothing was granted",
                    cred.name
                ));
                // Nothing must stay behind: undo what may exist, then close the lease.
                let reason = format!("could not be made: {e}");
                if let Err(undo) = self.revoke_downstream(&lease).await {
                    tracing::warn!(lease = %lease.id, error = %undo, "could not undo a failed lease; the reaper retries");
                    return Err(told);
                }
                self.close_lease(lease, LeaseState::Pending, &reason).await;
                return Err(told);
            }
        };
        let text = serde_json::to_string(&secret).unwrap_or_default();
        let sealed = kek
            .seal(&seal_name(&id), 1, text.as_bytes())
            .map_err(|e| CredentialError::Unavailable(e.to_string()))?;
        let mut live = lease.clone();
        live.state = LeaseState::Live;
        live.sealed = Some((sealed.nonce, sealed.ciphertext));
        let mut e = self.event(EventKind::LeaseIssued);
        e.agent = Some(task.agent.to_string());
        e.owner = task.owner.as_ref().map(ToString::to_string);
        e.task = Some(task.id.to_string());
        e.resource = Some(format!("credential:{}", cred.name));
        e.detail = json!({
            "lease": id,
            "kind": live.kind,
            "handle": live.handle,
            "grants": live.grants,
            "expires_at": live.expires_at,
        });
        if let Err(err) = self
            .store
            .commit(vec![
                Op::UpdateLease {
                    lease: live.clone(),
                    from: LeaseState::Pending,
                },
                Op::Audit(e),
            ])
            .await
        {
            // Not recorded live: it must not be used. The reaper revokes the pending lease.
            self.leases.wake.notify_one();
            return Err(CredentialError::Unavailable(format!(
                "the lease could not be recorded: {err}"
            )));
        }
        metrics::counter!("mandate_leases_issued_total", "kind" => live.kind.clone()).increment(1);
        // The task may have ended while the credential was being made: revoke at once then.
        if !self
            .inventory
            .task(task.id.as_str())
            .is_some_and(|t| t.read().is_live(self.now()))
        {
            self.leases.wake.notify_one();
            return Err(CredentialError::TaskEnded(format!(
                "task `{}` ended while its credential was made",
                task.id
            )));
        }
        Ok(IssuedCredential {
            credential: cred.name.clone(),
            kind: cred.kind.as_str(),
            lease_id: id,
            expires_at: live.expires_at,
            grants: live.grants,
            secret,
        })
    }

    /// Makes the credential downstream; returns its secret parts. Sets the lease's handle where
    /// only the made credential knows it (the certified public key).
    async fn make_downstream(
        &self,
        task: &Task,
        cred: &Credential,
        earned: &[(String, &Grant)],
        lease: &mut Lease,
    ) -> Result<serde_json::Map<String, Value>, String> {
        let mut out = serde_json::Map::new();
        match &cred.kind {
            CredentialKind::Postgres {
                admin_secret,
                connection_limit,
            } => {
                let admin = self.secret_value(admin_secret).await?;
                let tables: Vec<TableGrant> = earned
                    .iter()
                    .flat_map(|(_, g)| match g {
                        Grant::Tables(t) => t.clone(),
                        _ => Vec::new(),
                    })
                    .collect();
                let password = random_text(32);
                pg::create_role(
                    admin.expose(),
                    &pg::RoleSpec {
                        name: &lease.handle,
                        password: &password,
                        valid_until: lease.expires_at.as_secs(),
                        grants: &tables,
                        connection_limit: *connection_limit,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
                let url = pg::login_url(admin.expose(), &lease.handle, &password)
                    .map_err(|e| e.to_string())?;
                out.insert("username".into(), lease.handle.clone().into());
                out.insert("password".into(), password.into());
                out.insert("url".into(), url.into());
            }
            CredentialKind::Ssh {
                revoked_keys_file: _,
                source_address,
            } => {
                let ca = self.ssh_ca(&cred.name).await?;
                let mut principals = Vec::new();
                let mut commands = Vec::new();
                for (_, g) in earned {
                    if let Grant::Login {
                        principals: p,
                        force_command,
                    } = g
                    {
                        principals.extend(p.iter().cloned());
                        commands.extend(force_command.iter().cloned());
                    }
                }
                principals.sort();
                principals.dedup();
                commands.sort();
                commands.dedup();
                // Grants with different forced commands cannot share one certificate: the
                // narrowest reading is that none of them is allowed unforced.
                if commands.len() > 1 {
                    return Err(format!(
                        "the task earns grants of `{}` with different force_command values; one certificate carries one",
                        cred.name
                    ));
                }
                let now = self.now().as_secs();
                let issued = ssh::issue(
                    &ca,
                    &ssh::CertSpec {
                        key_id: &format!("mandate lease {} task {}", lease.id, task.id),
                        serial: rand::rngs::OsRng.r#gen(),
                        principals: &principals,
                        valid_after: u64::try_from(now - 60).unwrap_or(0),
                        valid_before: u64::try_from(lease.expires_at.as_secs()).unwrap_or(0),
                        force_command: commands.first().map(String::as_str),
                        source_address: source_address.as_deref(),
                        pty: false,
                    },
                )
                .map_err(|e| e.to_string())?;
                lease.handle = issued.public_key.clone();
                // Record the key before it leaves, so its revocation is always possible.
                let mut pending = lease.clone();
                pending.state = LeaseState::Pending;
                self.store
                    .commit(vec![Op::UpdateLease {
                        lease: pending,
                        from: LeaseState::Pending,
                    }])
                    .await
                    .map_err(|e| e.to_string())?;
                out.insert("private_key".into(), issued.private_key.as_str().into());
                out.insert("public_key".into(), issued.public_key.into());
                out.insert("certificate".into(), issued.certificate.into());
                out.insert("principals".into(), json!(principals));
            }
            CredentialKind::Jwt { audience } => {
                let scope: Vec<String> = earned.iter().map(|(s, _)| s.clone()).collect();
                let claims = mandate_crypto::AccessClaims {
                    iss: self.cfg.issuer.clone(),
                    sub: task.agent.to_string(),
                    aud: audience.clone(),
                    exp: lease.expires_at.as_secs(),
                    iat: self.now().as_secs(),
                    jti: lease.id.clone(),
                    client_id: task.agent.to_string(),
                    scope: scope.join(" "),
                    task_id: task.id.to_string(),
                    authorization_details: json!([]),
                    cnf: None,
                    act: None,
                };
                let token = self
                    .keys
                    .load()
                    .issue_access_token(&claims)
                    .map_err(|e| e.to_string())?;
                out.insert("token".into(), token.into());
                out.insert("token_type".into(), "Bearer".into());
            }
        }
        Ok(out)
    }

    /// The SSH CA of a credential: kept in the store sealed under the key-encryption key, made
    /// on first use.
    async fn ssh_ca(&self, name: &str) -> Result<Arc<ssh::Ca>, String> {
        if let Some(ca) = lock(&self.leases.cas).get(name) {
            return Ok(ca.clone());
        }
        let kek = self.lease_kek().map_err(|e| e.to_string())?;
        let key = format!("ssh_ca:{name}");
        // Two tries: a replica that loses the race to create the CA reads the winner's.
        let mut ca = None;
        for _ in 0..2 {
            if let Some(text) = self.store.meta(&key).await.map_err(|e| e.to_string())? {
                let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                let field = |f: &str| {
                    v.get(f)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let sealed = Sealed {
                    nonce: field("nonce"),
                    ciphertext: field("ciphertext"),
                };
                let pem = kek
                    .open(&key, 1, &sealed)
                    .map_err(|e| format!("the SSH CA of `{name}` cannot be opened: {e}"))?;
                ca = Some(ssh::Ca::from_openssh(pem.expose()).map_err(|e| e.to_string())?);
                break;
            }
            let made = ssh::Ca::generate().map_err(|e| e.to_string())?;
            let pem = made.to_openssh().map_err(|e| e.to_string())?;
            let sealed = kek
                .seal(&key, 1, pem.as_bytes())
                .map_err(|e| e.to_string())?;
            let mut e = self.event(EventKind::SshCaCreated);
            e.resource = Some(format!("credential:{name}"));
            e.detail = json!({"public_key": made.public_line().map_err(|e| e.to_string())?});
            let value = json!({"nonce": sealed.nonce, "ciphertext": sealed.ciphertext}).to_string();
            match self
                .store
                .commit(vec![
                    Op::InsertMeta {
                        key: key.clone(),
                        value,
                    },
                    Op::Audit(e),
                ])
                .await
            {
                Ok(_) => {
                    ca = Some(made);
                    break;
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let ca = ca.ok_or_else(|| format!("the SSH CA of `{name}` could not be made or read"))?;
        let ca = Arc::new(ca);
        lock(&self.leases.cas).insert(name.to_string(), ca.clone());
        Ok(ca)
    }

    /// Readies the configured credentials at start: the revocation file each `ssh` credential
    /// names exists (sshd refuses every key while it is missing) and its CA is made, so it can
    /// be given to sshd before the first task needs it.
    pub async fn prepare_credentials(&self) -> Result<(), String> {
        for c in &self.cfg.credentials {
            if let CredentialKind::Ssh {
                revoked_keys_file, ..
            } = &c.kind
            {
                ssh::ensure_revoked_keys(revoked_keys_file)
                    .map_err(|e| format!("credential `{}`: {e}", c.name))?;
                self.ssh_ca(&c.name)
                    .await
                    .map_err(|e| format!("credential `{}`: {e}", c.name))?;
            }
        }
        Ok(())
    }

    /// The public key line sshd's `TrustedUserCAKeys` needs for credential `name` (made now if
    /// it does not exist yet).
    pub async fn ssh_ca_public_key(&self, name: &str) -> Result<String, CredentialError> {
        let cred = self.credential_config(name)?;
        if !matches!(cred.kind, CredentialKind::Ssh { .. }) {
            return Err(CredentialError::NotFound(format!(
                "credential `{name}` is not an ssh credential"
            )));
        }
        let ca = self
            .ssh_ca(name)
            .await
            .map_err(CredentialError::Unavailable)?;
        ca.public_line()
            .map_err(|e| CredentialError::Unavailable(e.to_string()))
    }

    /// Revokes the credential downstream. Safe to repeat; a lease never made is a no-op.
    async fn revoke_downstream(&self, l: &Lease) -> Result<(), String> {
        let Some(cred) = self.cfg.credentials.iter().find(|c| c.name == l.credential) else {
            return Err(format!(
                "credential `{}` is no longer configured, so its lease cannot be revoked",
                l.credential
            ));
        };
        match &cred.kind {
            CredentialKind::Postgres { admin_secret, .. } => {
                if l.handle.is_empty() {
                    return Ok(());
                }
                let admin = self.secret_value(admin_secret).await?;
                pg::drop_role(admin.expose(), &l.handle)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            CredentialKind::Ssh {
                revoked_keys_file, ..
            } => {
                if l.handle.is_empty() {
                    return Ok(());
                }
                let until = u64::try_from(l.expires_at.as_secs()).unwrap_or(u64::MAX);
                let now = u64::try_from(self.now().as_secs()).unwrap_or(0);
                ssh::revoke(revoked_keys_file, &l.handle, until, now).map_err(|e| e.to_string())
            }
            // A JWT cannot be recalled; it expires with its lease, and the lease's state says it
            // is revoked to whoever asks.
            CredentialKind::Jwt { .. } => Ok(()),
        }
    }

    /// Marks a lease revoked (only if still in `from`) and records why.
    async fn close_lease(&self, mut l: Lease, from: LeaseState, reason: &str) {
        let now = self.now();
        l.state = LeaseState::Revoked;
        l.ended_at = Some(now);
        l.end_reason = Some(reason.to_string());
        l.sealed = None;
        let mut e = self.event(EventKind::LeaseRevoked);
        e.agent = Some(l.agent.to_string());
        e.task = Some(l.task.to_string());
        e.resource = Some(format!("credential:{}", l.credential));
        e.reason = Some(reason.to_string());
        e.detail = json!({"lease": l.id, "kind": l.kind, "handle": l.handle});
        let key = (l.task.to_string(), l.credential.clone());
        lock(&self.leases.handed).remove(&key);
        lock(&self.leases.minting).remove(&key);
        match self
            .store
            .commit(vec![
                Op::UpdateLease {
                    lease: l.clone(),
                    from,
                },
                Op::Audit(e),
            ])
            .await
        {
            Ok(_) => {
                metrics::counter!("mandate_leases_revoked_total", "kind" => l.kind.clone())
                    .increment(1);
            }
            // Another replica revoked it first.
            Err(StoreError::Conflict(_)) => {}
            Err(err) => {
                tracing::error!(lease = %l.id, error = %err, "could not record a lease revocation")
            }
        }
    }

    /// Why a lease must be revoked now, if it must.
    async fn lease_due(&self, l: &Lease, now: Timestamp, startup: bool) -> Option<String> {
        if l.expires_at <= now {
            return Some("its lifetime ran out".into());
        }
        if l.state == LeaseState::Pending && l.created_at.plus_secs(PENDING_GRACE) <= now {
            return Some("it was never finished (the process making it stopped)".into());
        }
        let task = match self.inventory.task(l.task.as_str()) {
            Some(e) => Some(e.read().clone()),
            None => match self.store.task(&l.task).await {
                Ok(t) => t,
                Err(_) => return None,
            },
        };
        match task {
            None => Some("its task is unknown".into()),
            Some(t) if t.state != TaskState::Active => {
                Some(format!("its task is {}", t.state.as_str()))
            }
            Some(t) if t.expires_at <= now => Some("its task expired".into()),
            Some(t) if startup && l.state == LeaseState::Live => self.unprovable(l, &t).await,
            Some(_) => None,
        }
    }

    /// At a restart: a live lease whose downstream credential cannot be shown to exist is
    /// revoked (a role dropped by hand, a database restored).
    async fn unprovable(&self, l: &Lease, task: &Task) -> Option<String> {
        let cred = self
            .cfg
            .credentials
            .iter()
            .find(|c| c.name == l.credential)?;
        // Drift of the configuration: the task no longer earns what the lease grants.
        if cred.described(&cred.earned(&task.scope)) != l.grants {
            return Some("what its task earns of the credential changed".into());
        }
        if let CredentialKind::Postgres { admin_secret, .. } = &cred.kind {
            let admin = self.secret_value(admin_secret).await.ok()?;
            return match pg::role_exists(admin.expose(), &l.handle).await {
                Ok(true) => None,
                Ok(false) => Some("its role no longer exists".into()),
                Err(e) => Some(format!("its role could not be checked at restart: {e}")),
            };
        }
        None
    }

    /// Revokes every open lease that must end: its task ended, expired or is unknown, its own
    /// lifetime ran out, or (at `startup`) it cannot be proved live. Run it a few times a second
    /// and whenever a task ends; every replica may, and each lease is revoked once.
    pub async fn reap_leases(&self, startup: bool) {
        if self.cfg.credentials.is_empty() && !startup {
            return;
        }
        let filter = LeaseFilter {
            open: true,
            limit: Some(10_000),
            ..Default::default()
        };
        let open = match self.store.leases(&filter).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not read open leases");
                return;
            }
        };
        let now = self.now();
        for l in open {
            let Some(reason) = self.lease_due(&l, now, startup).await else {
                continue;
            };
            match self.revoke_downstream(&l).await {
                Ok(()) => {
                    lock(&self.leases.warned).remove(&l.id);
                    let from = l.state;
                    self.close_lease(l, from, &reason).await;
                }
                Err(e) => {
                    let mut warned = lock(&self.leases.warned);
                    let due = warned
                        .get(&l.id)
                        .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
                    if due {
                        warned.insert(l.id.clone(), std::time::Instant::now());
                        tracing::warn!(lease = %l.id, credential = %l.credential, error = %e, "could not revoke a lease; retrying until it is");
                    }
                }
            }
        }
    }

    /// Runs the reaper until the process ends: at once (a restart), then every 250 ms and
    /// whenever a task ends here.
    pub async fn run_lease_reaper(self: Arc<Self>) {
        self.reap_leases(true).await;
        loop {
            tokio::select! {
                () = self.leases.wake.notified() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
            self.reap_leases(false).await;
        }
    }

    /// RFC 7662 introspection of a per-task JWT (`jwt` credentials): active while its lease is
    /// live and its task too, so an API that asks sees a revocation at once. Visible to the
    /// agent itself, its owner and admins. `None` when the token is not one of these.
    pub(crate) async fn introspect_lease_token(
        &self,
        caller: &crate::Caller,
        token: &str,
    ) -> Option<Value> {
        let now = self.now();
        let claims = self.cfg.credentials.iter().find_map(|c| match &c.kind {
            CredentialKind::Jwt { audience } => self
                .keys
                .load()
                .verify_access_token(token, &self.cfg.issuer, audience, now.as_secs())
                .ok(),
            _ => None,
        })?;
        let lease = self.store.lease(&claims.jti).await.ok().flatten()?;
        let visible = match caller {
            crate::Caller::Agent(a) => a.as_str() == claims.client_id,
            crate::Caller::Person(Principal::Admin { .. }) => true,
            crate::Caller::Person(Principal::Owner { owner, .. }) => self
                .inventory
                .agent(&lease.agent)
                .is_some_and(|a| a.owner.as_ref() == Some(owner)),
        };
        let task_live = self
            .inventory
            .task(lease.task.as_str())
            .is_some_and(|t| t.read().is_live(now));
        let active = visible
            && lease.state == LeaseState::Live
            && lease.expires_at > now
            && task_live
            && lease.task.as_str() == claims.task_id;
        if !active {
            return Some(json!({"active": false}));
        }
        let mut v = serde_json::to_value(&claims).ok()?;
        if let Some(o) = v.as_object_mut() {
            o.insert("active".into(), Value::Bool(true));
            o.insert("token_type".into(), Value::String("Bearer".into()));
        }
        Some(v)
    }

    /// Leases, newest first: admins see all, owners those of their agents.
    pub async fn list_leases(
        &self,
        p: &Principal,
        filter: &LeaseFilter,
    ) -> Result<Vec<LeaseView>, AdminError> {
        let leases = self.store.leases(filter).await?;
        Ok(leases
            .iter()
            .filter(|l| match p {
                Principal::Admin { .. } => true,
                Principal::Owner { owner, .. } => self
                    .inventory
                    .agent(&l.agent)
                    .is_some_and(|a| a.owner.as_ref() == Some(owner)),
            })
            .map(LeaseView::from)
            .collect())
    }

    /// Of the open leases `open`, those whose task is no longer live (or whose own time ran
    /// out): standing privilege (0 when the reaper keeps up).
    pub(crate) async fn outliving<'a>(
        &self,
        open: &'a [Lease],
    ) -> Result<Vec<&'a Lease>, StoreError> {
        let now = self.now();
        let mut out = Vec::new();
        for l in open {
            let live = match self.inventory.task(l.task.as_str()) {
                Some(e) => e.read().is_live(now),
                None => self
                    .store
                    .task(&l.task)
                    .await?
                    .is_some_and(|t| t.is_live(now)),
            };
            if !live || l.expires_at <= now {
                out.push(l);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> CredentialSpec {
        CredentialSpec {
            name: "db".into(),
            kind: kind.into(),
            max_ttl: None,
            admin_secret: Some("db_admin".into()),
            connection_limit: None,
            revoked_keys_file: Some("/tmp/revoked".into()),
            source_address: vec![],
            audience: Some("https://api.example".into()),
            grants: vec![GrantSpec {
                scope: "read:orders".into(),
                privileges: vec!["select".into()],
                tables: vec!["orders".into()],
                principals: vec![],
                force_command: None,
            }],
        }
    }

    #[test]
    fn configurations_are_checked() {
        let c = Credential::from_spec(&spec("postgres")).unwrap();
        let scope = Scope::parse("read:orders call:other").unwrap();
        assert_eq!(c.earned(&scope).len(), 1);
        assert!(c.earned(&Scope::parse("write:orders").unwrap()).is_empty());

        assert!(
            Credential::from_spec(&spec("ftp"))
                .unwrap_err()
                .contains("not one of")
        );
        // Postgres fields on an ssh credential, and the other way round.
        assert!(
            Credential::from_spec(&spec("ssh"))
                .unwrap_err()
                .contains("principals")
        );
        assert!(
            Credential::from_spec(&spec("jwt"))
                .unwrap_err()
                .contains("only `scope`")
        );
        let mut s = spec("postgres");
        s.grants[0].tables = vec!["orders; DROP TABLE x".into()];
        assert!(Credential::from_spec(&s).is_err());
        let mut s = spec("postgres");
        s.grants[0].privileges = vec!["ALL".into()];
        assert!(Credential::from_spec(&s).is_err());
        let mut s = spec("postgres");
        s.grants[0].scope = "read:a read:b".into();
        assert!(
            Credential::from_spec(&s)
                .unwrap_err()
                .contains("one `action:target`")
        );
        let mut s = spec("postgres");
        s.admin_secret = None;
        assert!(
            Credential::from_spec(&s)
                .unwrap_err()
                .contains("admin_secret")
        );
        let mut s = spec("postgres");
        s.grants.clear();
        assert!(Credential::from_spec(&s).unwrap_err().contains("no grants"));
        let mut s = spec("ssh");
        s.grants[0].privileges.clear();
        s.grants[0].tables.clear();
        s.grants[0].principals = vec!["deploy".into()];
        s.source_address = vec!["127.0.0.1/32; rm".into()];
        assert!(
            Credential::from_spec(&s)
                .unwrap_err()
                .contains("source_address")
        );
        s.source_address = vec!["127.0.0.1/32".into()];
        assert!(Credential::from_spec(&s).is_ok());
        let twice = vec![spec("postgres"), spec("postgres")];
        assert!(check_credentials(&twice).unwrap_err().contains("twice"));
    }
}
