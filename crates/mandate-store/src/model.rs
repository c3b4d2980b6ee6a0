//! What can be written, and what reads return besides the core types.

use mandate_core::approval::{Approval, ApprovalState};
use mandate_core::audit::AuditEvent;
use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId, TaskState, Timestamp};
use serde::{Deserialize, Serialize};

/// Whose API token it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May administer everything.
    Admin,
    /// May manage its own agents and their tasks.
    Owner,
}

impl Role {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// A personal API token as stored: only its hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Public id, to list and revoke it.
    pub id: String,
    /// SHA-256 of the token.
    #[serde(skip_serializing)]
    pub hash: String,
    /// Admin or owner.
    pub role: Role,
    /// The owner it belongs to (owner tokens).
    pub owner: Option<OwnerId>,
    /// A label.
    pub name: String,
    /// When issued.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When revoked.
    pub revoked_at: Option<Timestamp>,
}

impl ApiTokenRecord {
    /// Whether it may be used at `now`.
    pub fn usable(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// One write. A commit's ops succeed or fail together.
#[derive(Clone, Debug)]
pub enum Op {
    /// Add an owner; conflicts if the id exists.
    InsertOwner(Owner),
    /// Delete an owner and revoke its API tokens (the broker orphans its agents in the same commit).
    DeleteOwner {
        /// Which.
        id: OwnerId,
        /// When.
        at: Timestamp,
    },
    /// Store a new API token; conflicts if the id or hash exists.
    InsertApiToken(ApiTokenRecord),
    /// Revoke an API token.
    RevokeApiToken {
        /// Token id.
        id: String,
        /// When.
        at: Timestamp,
    },
    /// Register an agent; conflicts if the id exists.
    InsertAgent(Agent),
    /// Replace a registered agent.
    UpdateAgent(Agent),
    /// Record a new task; conflicts if the id exists.
    InsertTask(Task),
    /// Replace a task (state changes). Fails with `NotFound` if absent.
    UpdateTask(Task),
    /// Mark a one-time value (assertion or proof `jti`) used until it expires; conflicts if it
    /// was used before.
    ConsumeOnce {
        /// Namespaced value, e.g. `assertion:<agent>:<jti>`.
        key: String,
        /// When it may be forgotten.
        expires_at: Timestamp,
    },
    /// Forget one-time values that expired before `before`.
    PurgeOnce {
        /// Cut-off.
        before: Timestamp,
    },
    /// Record a new approval request.
    InsertApproval(Approval),
    /// Replace an approval request, only if it is still in state `from`; otherwise the commit
    /// fails with `Conflict` (a grant is used once, a request decided once).
    UpdateApproval {
        /// The new version.
        approval: Approval,
        /// The state it must still be in.
        from: ApprovalState,
    },
    /// Store a sealed secret value as `version`; the previous version must be `version - 1`
    /// (0 for a new secret), else the commit fails with `Conflict`.
    PutSecret(SecretRecord),
    /// Delete a secret.
    DeleteSecret {
        /// Name.
        name: String,
    },
    /// Record a new lease; conflicts if the id exists or the task already has an open lease of
    /// that credential.
    InsertLease(Lease),
    /// Replace a lease, only if it is still in state `from`; otherwise the commit fails with
    /// `Conflict` (a lease is revoked once).
    UpdateLease {
        /// The new version.
        lease: Lease,
        /// The state it must still be in.
        from: LeaseState,
    },
    /// Append an event to the audit chain.
    Audit(AuditEvent),
    /// Add a key-value pair only if the key is absent; conflicts otherwise (one writer wins a
    /// race to create a shared value).
    InsertMeta {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Set a key-value pair.
    SetMeta {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

/// What a commit did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Sequence numbers given to the commit's audit events, in order.
    pub audit_seqs: Vec<i64>,
}

/// Which approval requests to list.
#[derive(Clone, Debug, Default)]
pub struct ApprovalFilter {
    /// Only of this task.
    pub task: Option<mandate_core::TaskId>,
    /// Only for agents of this owner.
    pub owner: Option<OwnerId>,
    /// Only in this state.
    pub state: Option<ApprovalState>,
    /// At most this many (default 1000).
    pub limit: Option<i64>,
}

/// Which tasks to list.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only this agent's.
    pub agent: Option<AgentId>,
    /// Only agents of this owner.
    pub owner: Option<OwnerId>,
    /// Only in this state.
    pub state: Option<TaskState>,
    /// Only this workflow's: the task with this id and every task delegated from it.
    pub root: Option<TaskId>,
    /// At most this many (default 1000).
    pub limit: Option<i64>,
}

/// A sealed secret as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Name, e.g. `github_token`.
    pub name: String,
    /// Starts at 1, grows with every rotation.
    pub version: i64,
    /// AEAD nonce, base64url.
    #[serde(skip_serializing)]
    pub nonce: String,
    /// AEAD ciphertext, base64url.
    #[serde(skip_serializing)]
    pub ciphertext: String,
    /// When first set.
    pub created_at: Timestamp,
    /// When last rotated.
    pub updated_at: Timestamp,
}

/// Where a lease is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Recorded before the downstream credential is made, so a crash cannot leave one unknown.
    Pending,
    /// Made and handed out; revoked when its task ends.
    Live,
    /// Revoked downstream (or never made).
    Revoked,
}

impl LeaseState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Live => "live",
            LeaseState::Revoked => "revoked",
        }
    }

    /// Whether the downstream credential may exist.
    pub fn is_open(self) -> bool {
        matches!(self, LeaseState::Pending | LeaseState::Live)
    }
}

/// A per-task downstream credential: a PostgreSQL role, an SSH certificate, a JWT for an API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Id (also the `jti` of a JWT, the key id of a certificate).
    pub id: String,
    /// The task it serves.
    pub task: TaskId,
    /// The task's agent.
    pub agent: AgentId,
    /// The configured credential (`[[credentials]]` name).
    pub credential: String,
    /// `postgres`, `ssh` or `jwt`.
    pub kind: String,
    /// Where it is in its life.
    pub state: LeaseState,
    /// What names it downstream: the role, the certified public key, the token id.
    pub handle: String,
    /// What it grants, in the downstream's words (privileges, principals, scope).
    pub grants: Vec<String>,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// When it stops working downstream at the latest (never after its task).
    pub expires_at: Timestamp,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Why it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The credential's secret part sealed under the key-encryption key (nonce, ciphertext),
    /// so another replica or a restart can hand it out again while it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<(String, String)>,
}

/// Which leases to list.
#[derive(Clone, Debug, Default)]
pub struct LeaseFilter {
    /// Only of this task.
    pub task: Option<TaskId>,
    /// Only of this agent.
    pub agent: Option<AgentId>,
    /// Only pending or live ones.
    pub open: bool,
    /// At most this many (default 1000).
    pub limit: Option<i64>,
}

/// What an agent did: its decisions since a given time (from the audit), its last audited event
/// and its last task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentActivity {
    /// The agent.
    pub agent: AgentId,
    /// Allowed decisions in the window.
    pub allowed: u64,
    /// Denied decisions in the window.
    pub denied: u64,
    /// Decisions that needed a person's approval in the window.
    pub needs_approval: u64,
    /// Its most recent audit event.
    pub last_event: Option<Timestamp>,
    /// When it last opened a task (or was delegated one).
    pub last_task: Option<Timestamp>,
}
