//! The SQLite backend: one writer connection owned by a group-commit task, a pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use mandate_core::audit::{AuditRecord, GENESIS_HASH};
use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId, Timestamp};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Executor, Row};
use tokio::sync::mpsc;

use crate::migrate::{self, SQLITE};
use crate::model::{
    AgentActivity, ApiTokenRecord, ApprovalFilter, Op, Receipt, Role, SecretRecord, TaskFilter,
};
use crate::{Durability, Job, StoreError, StoreOptions};
use mandate_core::approval::Approval;

fn db(e: sqlx::Error) -> StoreError {
    if let Some(d) = e.as_database_error()
        && d.is_unique_violation()
    {
        return StoreError::Conflict("record".into());
    }
    StoreError::Database(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn options(path: &Path, durability: Durability) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

/// The database holds the audit trail and sealed secrets: it is created readable by its owner
/// only (SQLite gives its `-wal` and `-shm` files the database's mode), and an existing one is
/// narrowed to that.
fn restrict_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |p: &Path, e: std::io::Error| {
        StoreError::Database(format!(
            "cannot restrict `{}` to mode 0600: {e}",
            p.display()
        ))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail(path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        match std::fs::metadata(&p) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&p, e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

pub(crate) async fn open(
    path: &Path,
    opts: &StoreOptions,
) -> Result<(mpsc::Sender<Job>, SqliteReader), StoreError> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Database(format!("cannot create `{}`: {e}", parent.display()))
        })?;
    }
    restrict_files(path)?;
    let mut conn = SqliteConnection::connect_with(&options(path, opts.durability))
        .await
        .map_err(db)?;
    migrate(&mut conn).await?;
    let head: Option<(i64, String)> = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(&mut conn)
        .await
        .map_err(db)?
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
        .map_err(db)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options(path, opts.durability).read_only(true))
        .await
        .map_err(db)?;
    let (tx, rx) = mpsc::channel(4096);
    let writer = Writer {
        conn,
        head: head.unwrap_or((0, GENESIS_HASH.to_string())),
        max_batch: opts.max_batch.max(1),
    };
    tokio::spawn(writer.run(rx));
    Ok((tx, SqliteReader { pool }))
}

async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    conn.execute(migrate::CREATE_TABLE).await.map_err(db)?;
    let applied: Vec<(i64, String)> =
        sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)?;
    for m in migrate::plan(SQLITE, &applied)? {
        let mut tx = conn.begin().await.map_err(db)?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(|e| {
            StoreError::Migration(format!(
                "migration {} ({}) failed: {e}",
                m.version, m.description
            ))
        })?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, checksum, applied_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(m.version)
        .bind(m.description)
        .bind(m.checksum())
        .bind(mandate_core::SystemClock.now_ms())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
    }
    Ok(())
}

trait NowMs {
    fn now_ms(&self) -> i64;
}

impl NowMs for mandate_core::SystemClock {
    fn now_ms(&self) -> i64 {
        use mandate_core::Clock;
        self.now().0
    }
}

struct Writer {
    conn: SqliteConnection,
    head: (i64, String),
    max_batch: usize,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            self.commit_batch(&mut batch).await;
        }
    }

    async fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let mut results: Vec<Result<Receipt, StoreError>> = Vec::with_capacity(batch.len());
        let start_head = self.head.clone();
        let outcome = self.write_batch(batch, &mut results).await;
        let committed = match outcome {
            Ok(()) => match self.conn.execute("COMMIT").await {
                Ok(_) => Ok(()),
                Err(e) => Err(db(e)),
            },
            Err(e) => Err(e),
        };
        if committed.is_err() {
            let _ = self.conn.execute("ROLLBACK").await;
            self.head = start_head;
        }
        for (i, job) in batch.drain(..).enumerate() {
            let out = match &committed {
                Ok(()) => results
                    .get_mut(i)
                    .map(|r| std::mem::replace(r, Ok(Receipt::default())))
                    .unwrap_or_else(|| Err(StoreError::Database("lost result".into()))),
                Err(e) => Err(e.clone()),
            };
            // The caller may have gone away (or never waited); the write stands either way,
            // and a failure nobody hears about is logged.
            if let Err(Err(e)) = job.reply.send(out) {
                tracing::error!(error = %e, "a queued write failed");
            }
        }
    }

    /// Writes a batch inside one transaction (left open for the caller to commit). Commits that
    /// hold only audit events cannot conflict: their records are buffered and written with
    /// multi-row inserts, with no savepoint, which is what keeps a stream of decisions cheap.
    /// Other commits get a savepoint each, so one that fails rolls back alone. The chain head is
    /// written once, at the end.
    async fn write_batch(
        &mut self,
        batch: &[Job],
        results: &mut Vec<Result<Receipt, StoreError>>,
    ) -> Result<(), StoreError> {
        let start_head = self.head.0;
        self.conn.execute("BEGIN IMMEDIATE").await.map_err(db)?;
        let mut buffered: Vec<(AuditRecord, &mandate_core::audit::AuditEvent)> = Vec::new();
        for job in batch {
            if job.ops.iter().all(|op| matches!(op, Op::Audit(_))) {
                let mut receipt = Receipt::default();
                for op in &job.ops {
                    if let Op::Audit(event) = op {
                        let seq = self.head.0 + 1;
                        let record = AuditRecord::link(seq, &self.head.1, event);
                        self.head = (seq, record.hash.clone());
                        receipt.audit_seqs.push(seq);
                        buffered.push((record, event));
                    }
                }
                results.push(Ok(receipt));
            } else {
                self.flush_audit(&mut buffered).await?;
                let r = self.apply_job(&job.ops).await;
                results.push(r);
            }
        }
        self.flush_audit(&mut buffered).await?;
        if self.head.0 != start_head {
            sqlx::query(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            )
            .bind(self.head.0)
            .bind(&self.head.1)
            .execute(&mut self.conn)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    /// Inserts buffered audit records, in chunks of fixed sizes so the statement cache stays
    /// small.
    async fn flush_audit(
        &mut self,
        rows: &mut Vec<(AuditRecord, &mandate_core::audit::AuditEvent)>,
    ) -> Result<(), StoreError> {
        let mut rest: &[(AuditRecord, &mandate_core::audit::AuditEvent)] = rows;
        while !rest.is_empty() {
            let n = [64usize, 16, 4, 1]
                .into_iter()
                .find(|n| *n <= rest.len())
                .unwrap_or(1);
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            let mut sql = String::from(
                "INSERT INTO audit_log (seq, time, kind, task_id, agent_id, prev_hash, hash, event) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 8;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${},${},${},${},${},${},${},${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8
                ));
            }
            // Built only from fixed text and placeholder numbers; every value is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (record, event) in chunk {
                q = q
                    .bind(record.seq)
                    .bind(event.time.0)
                    .bind(event.kind.as_str())
                    .bind(event.task.as_deref())
                    .bind(event.agent.as_deref())
                    .bind(&record.prev_hash)
                    .bind(&record.hash)
                    .bind(&record.event_json);
            }
            q.execute(&mut self.conn).await.map_err(db)?;
            rest = tail;
        }
        rows.clear();
        Ok(())
    }

    async fn apply_job(&mut self, ops: &[Op]) -> Result<Receipt, StoreError> {
        if let Err(e) = self.conn.execute("SAVEPOINT job").await {
            return Err(db(e));
        }
        let head_before = self.head.clone();
        let mut receipt = Receipt::default();
        let mut outcome = Ok(());
        for op in ops {
            if let Err(e) = self.apply(op, &mut receipt).await {
                outcome = Err(e);
                break;
            }
        }
        match outcome {
            Ok(()) => {
                self.conn.execute("RELEASE job").await.map_err(db)?;
                Ok(receipt)
            }
            Err(e) => {
                self.head = head_before;
                self.conn.execute("ROLLBACK TO job").await.map_err(db)?;
                self.conn.execute("RELEASE job").await.map_err(db)?;
                Err(e)
            }
        }
    }

    async fn apply(&mut self, op: &Op, receipt: &mut Receipt) -> Result<(), StoreError> {
        let conn = &mut self.conn;
        match op {
            Op::InsertOwner(o) => {
                sqlx::query("INSERT INTO owners (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(o.id.as_str())
                    .bind(&o.name)
                    .bind(o.created_at.0)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| conflict(e, format!("owner `{}`", o.id)))?;
            }
            Op::DeleteOwner { id, at } => {
                let done = sqlx::query("DELETE FROM owners WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("owner `{id}`")));
                }
                sqlx::query(
                    "UPDATE api_tokens SET revoked_at = $1 WHERE owner_id = $2 AND revoked_at IS NULL",
                )
                .bind(at.0)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            Op::InsertApiToken(t) => {
                sqlx::query(
                    "INSERT INTO api_tokens (id, hash, role, owner_id, name, created_at, expires_at, revoked_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
                )
                .bind(&t.id)
                .bind(&t.hash)
                .bind(t.role.as_str())
                .bind(t.owner.as_ref().map(OwnerId::as_str))
                .bind(&t.name)
                .bind(t.created_at.0)
                .bind(t.expires_at.map(|e| e.0))
                .execute(&mut *conn)
                .await
                .map_err(|e| conflict(e, format!("api token `{}`", t.id)))?;
            }
            Op::RevokeApiToken { id, at } => {
                let done = sqlx::query(
                    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                )
                .bind(at.0)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("api token `{id}`")));
                }
            }
            Op::InsertAgent(a) => {
                sqlx::query(
                    "INSERT INTO agents (id, owner_id, status, created_at, body) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(a.id.as_str())
                .bind(a.owner.as_ref().map(OwnerId::as_str))
                .bind(a.status.as_str())
                .bind(a.created_at.0)
                .bind(to_json(a)?)
                .execute(&mut *conn)
                .await
                .map_err(|e| conflict(e, format!("agent `{}`", a.id)))?;
            }
            Op::UpdateAgent(a) => {
                let done = sqlx::query(
                    "UPDATE agents SET owner_id = $1, status = $2, body = $3 WHERE id = $4",
                )
                .bind(a.owner.as_ref().map(OwnerId::as_str))
                .bind(a.status.as_str())
                .bind(to_json(a)?)
                .bind(a.id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("agent `{}`", a.id)));
                }
            }
            Op::InsertTask(t) => {
                sqlx::query(
                    "INSERT INTO tasks (id, agent_id, state, created_at, expires_at, ended_at, body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(t.id.as_str())
                .bind(t.agent.as_str())
                .bind(t.state.as_str())
                .bind(t.created_at.0)
                .bind(t.expires_at.0)
                .bind(t.ended_at.map(|e| e.0))
                .bind(to_json(t)?)
                .execute(&mut *conn)
                .await
                .map_err(|e| conflict(e, format!("task `{}`", t.id)))?;
            }
            Op::UpdateTask(t) => {
                let done = sqlx::query(
                    "UPDATE tasks SET state = $1, expires_at = $2, ended_at = $3, body = $4 WHERE id = $5",
                )
                .bind(t.state.as_str())
                .bind(t.expires_at.0)
                .bind(t.ended_at.map(|e| e.0))
                .bind(to_json(t)?)
                .bind(t.id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("task `{}`", t.id)));
                }
            }
            Op::ConsumeOnce { key, expires_at } => {
                sqlx::query("INSERT INTO used_jti (key, expires_at) VALUES ($1, $2)")
                    .bind(key)
                    .bind(expires_at.0)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| conflict(e, "one-time value".to_string()))?;
            }
            Op::PurgeOnce { before } => {
                sqlx::query("DELETE FROM used_jti WHERE expires_at < $1")
                    .bind(before.0)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
            }
            Op::InsertApproval(a) => {
                sqlx::query(
                    "INSERT INTO approvals (id, task_id, owner_id, state, call_hash, created_at, expires_at, body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&a.id)
                .bind(a.task.as_str())
                .bind(a.owner.as_ref().map(OwnerId::as_str))
                .bind(a.state.as_str())
                .bind(&a.call_hash)
                .bind(a.created_at.0)
                .bind(a.expires_at.0)
                .bind(to_json(a)?)
                .execute(&mut *conn)
                .await
                .map_err(|e| conflict(e, format!("approval `{}`", a.id)))?;
            }
            Op::UpdateApproval { approval: a, from } => {
                let done = sqlx::query(
                    "UPDATE approvals SET state = $1, body = $2 WHERE id = $3 AND state = $4",
                )
                .bind(a.state.as_str())
                .bind(to_json(a)?)
                .bind(&a.id)
                .bind(from.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!(
                        "approval `{}` in state {}",
                        a.id,
                        from.as_str()
                    )));
                }
            }
            Op::PutSecret(rec) => {
                let done = if rec.version == 1 {
                    sqlx::query(
                        "INSERT INTO secrets (name, version, nonce, ciphertext, created_at, updated_at)
                         VALUES ($1, 1, $2, $3, $4, $5)",
                    )
                    .bind(&rec.name)
                    .bind(&rec.nonce)
                    .bind(&rec.ciphertext)
                    .bind(rec.created_at.0)
                    .bind(rec.updated_at.0)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| conflict(e, format!("secret `{}`", rec.name)))?
                } else {
                    sqlx::query(
                        "UPDATE secrets SET version = $1, nonce = $2, ciphertext = $3, updated_at = $4
                         WHERE name = $5 AND version = $6",
                    )
                    .bind(rec.version)
                    .bind(&rec.nonce)
                    .bind(&rec.ciphertext)
                    .bind(rec.updated_at.0)
                    .bind(&rec.name)
                    .bind(rec.version - 1)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?
                };
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!(
                        "secret `{}` version {}",
                        rec.name, rec.version
                    )));
                }
            }
            Op::DeleteSecret { name } => {
                let done = sqlx::query("DELETE FROM secrets WHERE name = $1")
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("secret `{name}`")));
                }
            }
            Op::Audit(event) => {
                let seq = self.head.0 + 1;
                let record = AuditRecord::link(seq, &self.head.1, event);
                sqlx::query(
                    "INSERT INTO audit_log (seq, time, kind, task_id, agent_id, prev_hash, hash, event)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(seq)
                .bind(event.time.0)
                .bind(event.kind.as_str())
                .bind(event.task.as_deref())
                .bind(event.agent.as_deref())
                .bind(&record.prev_hash)
                .bind(&record.hash)
                .bind(&record.event_json)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                // The head row is written once per batch, by `write_batch`.
                self.head = (seq, record.hash);
                receipt.audit_seqs.push(seq);
            }
            Op::SetMeta { key, value } => {
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(value)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
        }
        Ok(())
    }
}

fn conflict(e: sqlx::Error, what: String) -> StoreError {
    match db(e) {
        StoreError::Conflict(_) => StoreError::Conflict(what),
        other => other,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(corrupt)
}

fn from_body<T: serde::de::DeserializeOwned>(row: &SqliteRow) -> Result<T, StoreError> {
    let body: String = row.try_get("body").map_err(db)?;
    serde_json::from_str(&body).map_err(corrupt)
}

#[derive(Clone)]
pub(crate) struct SqliteReader {
    pool: SqlitePool,
}

fn token_from_row(r: &SqliteRow) -> Result<ApiTokenRecord, StoreError> {
    let role: String = r.try_get("role").map_err(db)?;
    let owner: Option<String> = r.try_get("owner_id").map_err(db)?;
    Ok(ApiTokenRecord {
        id: r.try_get("id").map_err(db)?,
        hash: r.try_get("hash").map_err(db)?,
        role: match role.as_str() {
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            other => return Err(corrupt(format!("unknown role `{other}`"))),
        },
        owner: owner.map(OwnerId::parse).transpose().map_err(corrupt)?,
        name: r.try_get("name").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        expires_at: r
            .try_get::<Option<i64>, _>("expires_at")
            .map_err(db)?
            .map(Timestamp),
        revoked_at: r
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(db)?
            .map(Timestamp),
    })
}

fn record_from_row(r: &SqliteRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.try_get("seq").map_err(db)?,
        prev_hash: r.try_get("prev_hash").map_err(db)?,
        hash: r.try_get("hash").map_err(db)?,
        event_json: r.try_get("event").map_err(db)?,
    })
}

impl SqliteReader {
    pub async fn owner(&self, id: &OwnerId) -> Result<Option<Owner>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM owners WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| owner_from_row(&r)).transpose()
    }

    pub async fn owners(&self) -> Result<Vec<Owner>, StoreError> {
        sqlx::query("SELECT id, name, created_at FROM owners ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(owner_from_row)
            .collect()
    }

    pub async fn agent(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query("SELECT body FROM agents WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| from_body(&r)).transpose()
    }

    pub async fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        sqlx::query("SELECT body FROM agents ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(from_body)
            .collect()
    }

    pub async fn task(&self, id: &TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query("SELECT body FROM tasks WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| from_body(&r)).transpose()
    }

    pub async fn tasks_by_id(&self, ids: &[TaskId]) -> Result<Vec<Task>, StoreError> {
        sqlx::query("SELECT body FROM tasks WHERE id IN (SELECT value FROM json_each($1))")
            .bind(
                serde_json::to_string(&ids.iter().map(TaskId::as_str).collect::<Vec<_>>())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(from_body)
            .collect()
    }

    pub async fn tasks(&self, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        sqlx::query(
            "SELECT t.body FROM tasks t LEFT JOIN agents a ON a.id = t.agent_id
             WHERE ($1 IS NULL OR t.agent_id = $1)
               AND ($2 IS NULL OR a.owner_id = $2)
               AND ($3 IS NULL OR t.state = $3)
               AND ($5 IS NULL OR t.id = $5
                    OR json_extract(t.body, '$.delegation.ancestors[0]') = $5)
             ORDER BY t.created_at DESC, t.id DESC LIMIT $4",
        )
        .bind(f.agent.as_ref().map(AgentId::as_str))
        .bind(f.owner.as_ref().map(OwnerId::as_str))
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.limit.unwrap_or(1000))
        .bind(f.root.as_ref().map(TaskId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(from_body)
        .collect()
    }

    pub async fn api_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<ApiTokenRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn api_tokens(
        &self,
        owner: Option<&OwnerId>,
    ) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let rows = match owner {
            Some(o) => {
                sqlx::query("SELECT * FROM api_tokens WHERE owner_id = $1 ORDER BY created_at")
                    .bind(o.as_str())
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query("SELECT * FROM api_tokens WHERE owner_id IS NULL ORDER BY created_at")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db)?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn audit_range(&self, from: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        sqlx::query(
            "SELECT seq, prev_hash, hash, event FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(from)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(record_from_row)
        .collect()
    }

    pub async fn audit_for_tasks(&self, tasks: &[TaskId]) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        for t in tasks {
            let rows = sqlx::query(
                "SELECT seq, prev_hash, hash, event FROM audit_log WHERE task_id = $1 ORDER BY seq",
            )
            .bind(t.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            for r in &rows {
                out.push(record_from_row(r)?);
            }
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
            .transpose()
    }

    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query("SELECT body FROM approvals WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| from_body(&r)).transpose()
    }

    pub async fn approvals(&self, f: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        sqlx::query(
            "SELECT body FROM approvals
             WHERE ($1 IS NULL OR task_id = $1)
               AND ($2 IS NULL OR owner_id = $2)
               AND ($3 IS NULL OR state = $3)
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .bind(f.task.as_ref().map(TaskId::as_str))
        .bind(f.owner.as_ref().map(OwnerId::as_str))
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.limit.unwrap_or(1000))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(from_body)
        .collect()
    }

    pub async fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| secret_from_row(&r)).transpose()
    }

    pub async fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        sqlx::query("SELECT * FROM secrets ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(secret_from_row)
            .collect()
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get(0).map_err(db)).transpose()
    }

    pub async fn agent_activity(&self, since: Timestamp) -> Result<Vec<AgentActivity>, StoreError> {
        let mut by: std::collections::BTreeMap<String, AgentActivity> = Default::default();
        let counts = sqlx::query(
            "SELECT agent_id, json_extract(event, '$.decision') AS decision, COUNT(*) AS n FROM audit_log
             WHERE kind = 'decision' AND agent_id IS NOT NULL AND time >= $1
             GROUP BY agent_id, json_extract(event, '$.decision')",
        )
        .bind(since.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for r in &counts {
            let agent: String = r.try_get("agent_id").map_err(db)?;
            let decision: Option<String> = r.try_get("decision").map_err(db)?;
            let n: i64 = r.try_get("n").map_err(db)?;
            let a = activity_entry(&mut by, agent)?;
            let n = u64::try_from(n).unwrap_or(0);
            match decision.as_deref() {
                Some("allow") => a.allowed += n,
                Some("deny") => a.denied += n,
                Some("needs_approval") => a.needs_approval += n,
                _ => {}
            }
        }
        let last = sqlx::query(
            "SELECT l.agent_id, l.time FROM audit_log l JOIN (
                 SELECT agent_id, MAX(seq) AS seq FROM audit_log
                 WHERE agent_id IS NOT NULL GROUP BY agent_id
             ) m ON l.seq = m.seq",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        for r in &last {
            let agent: String = r.try_get("agent_id").map_err(db)?;
            let time: i64 = r.try_get("time").map_err(db)?;
            activity_entry(&mut by, agent)?.last_event = Some(Timestamp(time));
        }
        let tasks =
            sqlx::query("SELECT agent_id, MAX(created_at) AS t FROM tasks GROUP BY agent_id")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        for r in &tasks {
            let agent: String = r.try_get("agent_id").map_err(db)?;
            let time: i64 = r.try_get("t").map_err(db)?;
            activity_entry(&mut by, agent)?.last_task = Some(Timestamp(time));
        }
        Ok(by.into_values().collect())
    }
}

fn activity_entry(
    by: &mut std::collections::BTreeMap<String, AgentActivity>,
    agent: String,
) -> Result<&mut AgentActivity, StoreError> {
    use std::collections::btree_map::Entry;
    Ok(match by.entry(agent) {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => {
            let id =
                AgentId::parse(v.key().clone()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            v.insert(AgentActivity {
                agent: id,
                allowed: 0,
                denied: 0,
                needs_approval: 0,
                last_event: None,
                last_task: None,
            })
        }
    })
}

fn owner_from_row(r: &SqliteRow) -> Result<Owner, StoreError> {
    let id: String = r.try_get("id").map_err(db)?;
    Ok(Owner {
        id: OwnerId::from_str(&id).map_err(corrupt)?,
        name: r.try_get("name").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
    })
}

fn secret_from_row(r: &SqliteRow) -> Result<SecretRecord, StoreError> {
    Ok(SecretRecord {
        name: r.try_get("name").map_err(db)?,
        version: r.try_get("version").map_err(db)?,
        nonce: r.try_get("nonce").map_err(db)?,
        ciphertext: r.try_get("ciphertext").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        updated_at: Timestamp(r.try_get("updated_at").map_err(db)?),
    })
}
