//! Mandate's state, behind one interface.
//!
//! Callers see [`Store`]: a group-committing writer ([`Store::commit`] takes a list of [`Op`]s that
//! succeed or fail together) and typed reads. Every write goes through one writer task that batches
//! concurrent commits into a single database transaction, each commit in its own savepoint, and
//! links audit events into the hash chain in commit order. A commit is acknowledged only after the
//! database transaction holding it has committed, so an acknowledged write survives the process
//! being killed.
//!
//! SQLite (WAL mode) is the embedded default. The backend is chosen by URL; callers never see it.

mod migrate;
mod model;
mod sqlite;

use std::path::Path;

use mandate_core::audit::AuditRecord;
use tokio::sync::{mpsc, oneshot};

pub use model::{ApiTokenRecord, ApprovalFilter, Op, Receipt, Role, SecretRecord, TaskFilter};

use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId};

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

/// How SQLite syncs commits to disk.
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
    /// `sqlite:///path/to/mandate.db` or a plain file path.
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
        let path = opts
            .url
            .strip_prefix("sqlite://")
            .or_else(|| opts.url.strip_prefix("sqlite:"))
            .unwrap_or(&opts.url);
        if opts.url.starts_with("postgres") {
            return Err(StoreError::Database(
                "this build supports SQLite only".into(),
            ));
        }
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

    /// One owner.
    pub async fn owner(&self, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.owner(id).await,
        }
    }

    /// All owners, by id.
    pub async fn owners(&self) -> Result<Vec<Owner>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.owners().await,
        }
    }

    /// One agent.
    pub async fn agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.agent(id).await,
        }
    }

    /// All agents, by id.
    pub async fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.agents().await,
        }
    }

    /// One task.
    pub async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.task(id).await,
        }
    }

    /// Tasks matching `filter`, newest first.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.tasks(filter).await,
        }
    }

    /// The API token with this hash, revoked or not.
    pub async fn api_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.api_token_by_hash(hash).await,
        }
    }

    /// API tokens of an owner (or, with `None`, admin tokens).
    pub async fn api_tokens(
        &self,
        owner: Option<&OwnerId>,
    ) -> Result<Vec<ApiTokenRecord>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.api_tokens(owner).await,
        }
    }

    /// Audit records with `seq >= from`, in order, at most `limit`.
    pub async fn audit_range(&self, from: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.audit_range(from, limit).await,
        }
    }

    /// Audit records of tasks in `tasks`, in chain order.
    pub async fn audit_for_tasks(&self, tasks: &[TaskId]) -> Result<Vec<AuditRecord>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.audit_for_tasks(tasks).await,
        }
    }

    /// The recorded head of the chain: last sequence number and hash.
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.audit_head().await,
        }
    }

    /// One approval request.
    pub async fn approval(
        &self,
        id: &str,
    ) -> Result<Option<mandate_core::approval::Approval>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.approval(id).await,
        }
    }

    /// Approval requests matching `filter`, newest first.
    pub async fn approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<mandate_core::approval::Approval>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.approvals(filter).await,
        }
    }

    /// One sealed secret.
    pub async fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.secret(name).await,
        }
    }

    /// All sealed secrets, by name.
    pub async fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.secrets().await,
        }
    }

    /// A value from the key-value table.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        match &self.reader {
            Reader::Sqlite(r) => r.meta(key).await,
        }
    }
}
