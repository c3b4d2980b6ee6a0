//! Mandate's state, behind one interface.
//!
//! Callers see [`Store`]: a group-committing writer ([`Store::commit`] takes a list of [`Op`]s that
//! succeed or fail together) and typed reads. Every write goes through one writer task that batches
//! concurrent commits into a single database transaction, each commit in its own savepoint, and
//! links audit events into the hash chain in commit order. A commit is acknowledged only after the
//! database transaction holding it has committed, so an acknowledged write survives the process
//! being killed.
//!
//! SQLite (WAL mode) is the embedded default; PostgreSQL (`postgres://…`) lets several replicas
//! share one database. The backend is chosen by URL; callers never see it.

mod migrate;
mod model;
mod postgres;
mod sqlite;
mod sqlite_writer;
mod workflow;

use std::path::Path;

use mandate_core::audit::AuditRecord;
use tokio::sync::{mpsc, oneshot};

pub use model::{
    AgentActivity, ApiTokenRecord, ApprovalFilter, Lease, LeaseFilter, LeaseState, Op, Receipt,
    Role, SecretRecord, TaskFilter,
};
pub use workflow::{MAX_WORKFLOW_TASKS, Workflow, WorkflowNode, workflow};

use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId, Timestamp};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness rule was broken: the thing already exists (or an assertion id was used).
    #[error("{0} already exists")]
    Conflict(String),
    /// The thing does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(String),
    /// A stored row could not be read back.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The schema in the database is not one this binary can use.
    #[error("{0}")]
    Migration(String),
    /// The writer has stopped.
    #[error("the store is shutting down")]
    Closed,
}

/// How SQLite syncs commits to disk. PostgreSQL follows the server's own settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit: survives power loss (the default).
    #[default]
    Full,
    /// fsync at checkpoints: survives the process being killed, not the machine losing power.
    Normal,
}

/// Options for opening a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `sqlite:///path/to/mandate.db`, a plain file path, or
    /// `postgres://user:password@host:port/database` (also `postgresql://`).
    pub url: String,
    /// SQLite durability.
    pub durability: Durability,
    /// Most commits batched into one transaction.
    pub max_batch: usize,
}

impl StoreOptions {
    /// Defaults for a SQLite file at `path`.
    pub fn sqlite(path: &Path) -> Self {
        StoreOptions {
            url: format!("sqlite://{}", path.display()),
            durability: Durability::Full,
            max_batch: 512,
        }
    }
}

pub(crate) struct Job {
    pub ops: Vec<Op>,
    pub reply: oneshot::Sender<Result<Receipt, StoreError>>,
}

#[derive(Clone)]
enum Reader {
    Sqlite(sqlite::SqliteReader),
    Postgres(postgres::PostgresReader),
}

/// Runs the same read on whichever backend the store has.
macro_rules! read {
    ($store:expr, $r:ident => $call:expr) => {
        match &$store.reader {
            Reader::Sqlite($r) => $call,
            Reader::Postgres($r) => $call,
        }
    };
}

/// Whether `url` names a PostgreSQL database.
fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` without the password, if it has one.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Wake-ups for other writers' commits on a shared store.
pub struct Changes {
    inner: postgres::Changes,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Changes")
    }
}

impl Changes {
    /// Waits until some writer commits audit records.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.inner.next().await
    }
}

/// The store: a writer and readers over one database. Clones share them.
#[derive(Clone)]
pub struct Store {
    writer: mpsc::Sender<Job>,
    reader: Reader,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        if is_postgres(&opts.url) {
            let (writer, reader) = postgres::open(opts).await?;
            return Ok(Store {
                writer,
                reader: Reader::Postgres(reader),
                url: without_password(&opts.url),
            });
        }
        let path = opts
            .url
            .strip_prefix("sqlite://")
            .or_else(|| opts.url.strip_prefix("sqlite:"))
            .unwrap_or(&opts.url);
        let (writer, reader) = sqlite::open(Path::new(path), opts).await?;
        Ok(Store {
            writer,
            reader: Reader::Sqlite(reader),
            url: opts.url.clone(),
        })
    }

    /// Applies `ops` atomically, after everything committed before. Audit events among them are
    /// linked into the chain; the receipt gives their sequence numbers.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Receipt, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job { ops, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `ops` for the writer without waiting for their commit. The writer keeps the order
    /// of everything queued; a failure is logged. Waits only while the queue is full.
    pub async fn enqueue(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (reply, _) = oneshot::channel();
        self.writer
            .send(Job { ops, reply })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Where the store is (a file path or URL without credentials).
    pub fn location(&self) -> &str {
        &self.url
    }

    /// Whether several processes may share this store (PostgreSQL): replicas must then follow
    /// each other's changes.
    pub fn is_shared(&self) -> bool {
        matches!(self.reader, Reader::Postgres(_))
    }

    /// A subscription that wakes when any writer on a shared store commits audit records
    /// (PostgreSQL `LISTEN`); `None` for a store only this process writes.
    pub async fn changes(&self) -> Option<Result<Changes, StoreError>> {
        match &self.reader {
            Reader::Postgres(r) => Some(r.changes().await.map(|inner| Changes { inner })),
            Reader::Sqlite(_) => None,
        }
    }

    /// One owner.
    pub async fn owner(&self, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        read!(self, r => r.owner(id).await)
    }

    /// All owners, by id.
    pub async fn owners(&self) -> Result<Vec<Owner>, StoreError> {
        read!(self, r => r.owners().await)
    }

    /// One agent.
    pub async fn agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        read!(self, r => r.agent(id).await)
    }

    /// All agents, by id.
    pub async fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        read!(self, r => r.agents().await)
    }

    /// One task.
    pub async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        read!(self, r => r.task(id).await)
    }

    /// The tasks with these ids that exist, in no particular order.
    pub async fn tasks_by_id(&self, ids: &[TaskId]) -> Result<Vec<Task>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, r => r.tasks_by_id(ids).await)
    }

    /// Tasks matching `filter`, newest first.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        read!(self, r => r.tasks(filter).await)
    }

    /// The API token with this hash, revoked or not.
    pub async fn api_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        read!(self, r => r.api_token_by_hash(hash).await)
    }

    /// API tokens of an owner (or, with `None`, admin tokens).
    pub async fn api_tokens(
        &self,
        owner: Option<&OwnerId>,
    ) -> Result<Vec<ApiTokenRecord>, StoreError> {
        read!(self, r => r.api_tokens(owner).await)
    }

    /// Audit records with `seq >= from`, in order, at most `limit`.
    pub async fn audit_range(&self, from: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        read!(self, r => r.audit_range(from, limit).await)
    }

    /// Audit records of tasks in `tasks`, in chain order.
    pub async fn audit_for_tasks(&self, tasks: &[TaskId]) -> Result<Vec<AuditRecord>, StoreError> {
        read!(self, r => r.audit_for_tasks(tasks).await)
    }

    /// The recorded head of the chain: last sequence number and hash.
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        read!(self, r => r.audit_head().await)
    }

    /// One approval request.
    pub async fn approval(
        &self,
        id: &str,
    ) -> Result<Option<mandate_core::approval::Approval>, StoreError> {
        read!(self, r => r.approval(id).await)
    }

    /// Approval requests matching `filter`, newest first.
    pub async fn approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<mandate_core::approval::Approval>, StoreError> {
        read!(self, r => r.approvals(filter).await)
    }

    /// One sealed secret.
    pub async fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        read!(self, r => r.secret(name).await)
    }

    /// All sealed secrets, by name.
    pub async fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        read!(self, r => r.secrets().await)
    }

    /// One lease.
    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        read!(self, r => r.lease(id).await)
    }

    /// Leases matching `filter`, newest first.
    pub async fn leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        read!(self, r => r.leases(filter).await)
    }

    /// A value from the key-value table.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        read!(self, r => r.meta(key).await)
    }

    /// Per agent: decisions since `since`, last audit event and last task. Agents with no
    /// activity at all are absent.
    pub async fn agent_activity(&self, since: Timestamp) -> Result<Vec<AgentActivity>, StoreError> {
        read!(self, r => r.agent_activity(since).await)
    }
}

#[cfg(test)]
mod tests {
    use super::{is_postgres, without_password};

    #[test]
    fn urls_are_told_apart_and_shown_without_passwords() {
        assert!(is_postgres("postgres://h/db"));
        assert!(is_postgres("postgresql://h/db"));
        assert!(!is_postgres("sqlite:///tmp/m.db"));
        assert!(!is_postgres("postgres.db"));
        assert_eq!(
            without_password("postgres://app:s3cr:et@db.example:5432/m?sslmode=require"),
            "postgres://app@db.example:5432/m?sslmode=require"
        );
        assert_eq!(without_password("postgres://app@h/m"), "postgres://app@h/m");
        assert_eq!(without_password("postgres://h/m"), "postgres://h/m");
        assert_eq!(without_password("/var/lib/m@x/m.db"), "/var/lib/m@x/m.db");
    }
}
