//! The PostgreSQL backend: a group-commit writer task and a pool of readers, safe with writers
//! of other processes on the same database.
//!
//! Every batch transaction first locks the `audit_head` row (`SELECT … FOR UPDATE`), so writers
//! of all replicas take turns: each links its audit events onto the head it read under the lock,
//! and the chain stays one chain with no forks or gaps. One-time values are inserted with
//! `ON CONFLICT DO NOTHING` against their primary key, so a value consumed through one replica is
//! refused through every other. Migrations run under a transaction-scoped advisory lock, so
//! replicas starting together migrate once.

use std::str::FromStr;
use std::time::Duration;

use mandate_core::approval::Approval;
use mandate_core::audit::{AuditEvent, AuditRecord, GENESIS_HASH};
use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use tokio::sync::mpsc;

use crate::migrate::{self, POSTGRES};
use crate::model::{
    AgentActivity, ApiTokenRecord, ApprovalFilter, Lease, LeaseFilter, Op, Receipt, Role,
    SecretRecord, TaskFilter,
};
use crate::{Job, StoreError, StoreOptions};

/// Key of the advisory lock held while migrating ("mandate1" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d61_6e64_6174_6531;

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

fn conflict(e: sqlx::Error, what: String) -> StoreError {
    match db(e) {
        StoreError::Conflict(_) => StoreError::Conflict(what),
        other => other,
    }
}

pub(crate) async fn open(
    opts: &StoreOptions,
) -> Result<(mpsc::Sender<Job>, PostgresReader), StoreError> {
    let connect = PgConnectOptions::from_str(&opts.url)
        .map_err(|e| StoreError::Database(format!("bad PostgreSQL URL: {e}")))?
        .application_name("mandate");
    // The writer's own pool of one connection: the pool reconnects if the server drops it. Its
    // transactions never wait on the client, so one left idle means a stalled replica holding
    // the head lock: the server ends it and the other replicas carry on.
    let writer_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(
            connect
                .clone()
                .options([("idle_in_transaction_session_timeout", "30s")]),
        )
        .await
        .map_err(db)?;
    migrate(&writer_pool).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(connect)
        .await
        .map_err(db)?;
    let (tx, rx) = mpsc::channel(4096);
    let writer = Writer {
        pool: writer_pool,
        max_batch: opts.max_batch.max(1),
    };
    tokio::spawn(writer.run(rx));
    Ok((tx, PostgresReader { pool }))
}

/// Applies pending migrations one transaction each. Each transaction takes the advisory lock
/// first and reads what is applied under it, so concurrent starters never apply one twice.
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    loop {
        let mut tx = pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.execute(migrate::PG_CREATE_TABLE).await.map_err(db)?;
        let applied: Vec<(i64, String)> =
            sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(db)?;
        let Some(m) = migrate::plan(POSTGRES, &applied)?.first().copied() else {
            tx.commit().await.map_err(db)?;
            return Ok(());
        };
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
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
    }
}

fn now_ms() -> i64 {
    use mandate_core::Clock;
    mandate_core::SystemClock.now().0
}

struct Writer {
    pool: PgPool,
    max_batch: usize,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            self.commit_batch(&mut batch).await;
        }
    }

    async fn commit_batch(&self, batch: &mut Vec<Job>) {
        let mut results: Vec<Result<Receipt, StoreError>> = Vec::with_capacity(batch.len());
        // First without savepoints (two round trips fewer per commit); if any commit fails,
        // the whole transaction is rolled back and the batch written again with a savepoint
        // per commit, so the failing one fails alone.
        let mut committed = self.write_batch(batch, &mut results, false).await;
        if matches!(committed, Err(Retry::Safely)) {
            results.clear();
            committed = self.write_batch(batch, &mut results, true).await;
        }
        let committed = committed.map_err(|r| match r {
            Retry::Safely => StoreError::Database("batch could not be written".into()),
            Retry::Failed(e) => e,
        });
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

    /// Writes and commits a batch in one transaction. The head row is locked first, which
    /// orders this batch against every other writer on the database; commits that hold only
    /// audit events are buffered into multi-row inserts, the others get a savepoint each so one
    /// that fails rolls back alone. A transaction that is not committed is rolled back on drop.
    async fn write_batch(
        &self,
        batch: &[Job],
        results: &mut Vec<Result<Receipt, StoreError>>,
        safe: bool,
    ) -> Result<(), Retry> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::Corrupt("the audit_head row is missing".into()))?;
        let seq: i64 = row.try_get(0).map_err(db)?;
        let hash: String = row.try_get(1).map_err(db)?;
        let mut head = if seq == 0 {
            (0, GENESIS_HASH.to_string())
        } else {
            (seq, hash)
        };
        let start_head = head.0;
        let mut buffered: Vec<(AuditRecord, &AuditEvent)> = Vec::new();
        for job in batch {
            if job.ops.iter().all(|op| matches!(op, Op::Audit(_))) {
                let mut receipt = Receipt::default();
                for op in &job.ops {
                    if let Op::Audit(event) = op {
                        let seq = head.0 + 1;
                        let record = AuditRecord::link(seq, &head.1, event);
                        head = (seq, record.hash.clone());
                        receipt.audit_seqs.push(seq);
                        buffered.push((record, event));
                    }
                }
                results.push(Ok(receipt));
            } else if safe {
                flush_audit(&mut tx, &mut buffered).await?;
                let r = apply_job(&mut tx, &mut head, &job.ops).await?;
                results.push(r);
            } else {
                // Audit records join the batch's multi-row inserts; nothing in a commit reads
                // them back, and their order in the chain is fixed here.
                let mut receipt = Receipt::default();
                for op in &job.ops {
                    if let Op::Audit(event) = op {
                        let seq = head.0 + 1;
                        let record = AuditRecord::link(seq, &head.1, event);
                        head = (seq, record.hash.clone());
                        receipt.audit_seqs.push(seq);
                        buffered.push((record, event));
                    } else if apply(&mut tx, &mut head, op, &mut receipt).await.is_err() {
                        return Err(Retry::Safely);
                    }
                }
                results.push(Ok(receipt));
            }
        }
        flush_audit(&mut tx, &mut buffered).await?;
        if head.0 != start_head {
            if changes_state(batch) {
                // Delivered at commit: it wakes the other replicas, which then read the log
                // past what they applied. One statement with the head's update.
                sqlx::query(
                    "WITH h AS (UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1 RETURNING seq)
                     SELECT pg_notify($3, seq::text) FROM h",
                )
                .bind(head.0)
                .bind(&head.1)
                .bind(CHANGES_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            } else {
                sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                    .bind(head.0)
                    .bind(&head.1)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        tx.commit().await.map_err(|e| Retry::Failed(db(e)))
    }
}

/// The channel a batch that changes state notifies on commit.
pub(crate) const CHANGES_CHANNEL: &str = "mandate_changes";

/// Whether a batch changes what other replicas decide on: any write besides audit records, or
/// an audit record of a change made in memory only (a policy reload). Batches of plain
/// decisions and refusals wake nobody; the periodic read still covers them.
fn changes_state(batch: &[Job]) -> bool {
    use mandate_core::audit::EventKind as K;
    batch.iter().flat_map(|j| j.ops.iter()).any(|op| match op {
        Op::Audit(e) => !matches!(
            e.kind,
            K::Decision
                | K::CredentialRefused
                | K::RequestRejected
                | K::AttestationFailed
                | K::GatewayCall
                | K::ServerStarted
        ),
        _ => true,
    })
}

/// A subscription to the notifications of committed batches.
pub(crate) struct Changes {
    listener: sqlx::postgres::PgListener,
}

impl Changes {
    /// Waits for the next committed batch of any writer on the database, then takes the
    /// notifications that arrived meanwhile too, so one read of the log answers them all.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.listener.recv().await.map_err(db)?;
        while self.listener.next_buffered().is_some() {}
        Ok(())
    }
}

/// Why a batch was not written.
enum Retry {
    /// A commit in it failed while written without savepoints: write it again with them.
    Safely,
    /// The database failed: every commit of the batch fails.
    Failed(StoreError),
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        Retry::Failed(e)
    }
}

/// Inserts buffered audit records, in chunks of fixed sizes so the statement cache stays small.
async fn flush_audit(
    conn: &mut PgConnection,
    rows: &mut Vec<(AuditRecord, &AuditEvent)>,
) -> Result<(), StoreError> {
    let mut rest: &[(AuditRecord, &AuditEvent)] = rows;
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
        q.execute(&mut *conn).await.map_err(db)?;
        rest = tail;
    }
    rows.clear();
    Ok(())
}

/// Applies one commit inside a savepoint. The outer `Result` fails the whole batch (the
/// savepoint itself could not be handled); the inner one is this commit's outcome.
async fn apply_job(
    conn: &mut PgConnection,
    head: &mut (i64, String),
    ops: &[Op],
) -> Result<Result<Receipt, StoreError>, StoreError> {
    conn.execute("SAVEPOINT job").await.map_err(db)?;
    let head_before = head.clone();
    let mut receipt = Receipt::default();
    let mut outcome = Ok(());
    for op in ops {
        if let Err(e) = apply(conn, head, op, &mut receipt).await {
            outcome = Err(e);
            break;
        }
    }
    match outcome {
        Ok(()) => {
            conn.execute("RELEASE SAVEPOINT job").await.map_err(db)?;
            Ok(Ok(receipt))
        }
        Err(e) => {
            *head = head_before;
            conn.execute("ROLLBACK TO SAVEPOINT job")
                .await
                .map_err(db)?;
            conn.execute("RELEASE SAVEPOINT job").await.map_err(db)?;
            Ok(Err(e))
        }
    }
}

async fn apply(
    conn: &mut PgConnection,
    head: &mut (i64, String),
    op: &Op,
    receipt: &mut Receipt,
) -> Result<(), StoreError> {
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
            let done = sqlx::query(
                "INSERT INTO used_jti (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(expires_at.0)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict("one-time value".into()));
            }
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
        Op::InsertLease(l) => {
            sqlx::query(
                "INSERT INTO leases (id, task_id, agent_id, credential, state, created_at, expires_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&l.id)
            .bind(l.task.as_str())
            .bind(l.agent.as_str())
            .bind(&l.credential)
            .bind(l.state.as_str())
            .bind(l.created_at.0)
            .bind(l.expires_at.0)
            .bind(to_json(l)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                conflict(
                    e,
                    format!("an open lease of `{}` for task `{}`", l.credential, l.task),
                )
            })?;
        }
        Op::UpdateLease { lease: l, from } => {
            let done = sqlx::query(
                "UPDATE leases SET state = $1, expires_at = $2, body = $3 WHERE id = $4 AND state = $5",
            )
            .bind(l.state.as_str())
            .bind(l.expires_at.0)
            .bind(to_json(l)?)
            .bind(&l.id)
            .bind(from.as_str())
            .execute(&mut *conn)
            .await
            .map_err(db)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "lease `{}` in state {}",
                    l.id,
                    from.as_str()
                )));
            }
        }
        Op::Audit(event) => {
            let seq = head.0 + 1;
            let record = AuditRecord::link(seq, &head.1, event);
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
            *head = (seq, record.hash);
            receipt.audit_seqs.push(seq);
        }
        Op::InsertMeta { key, value } => {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2)")
                .bind(key)
                .bind(value)
                .execute(&mut *conn)
                .await
                .map_err(|e| conflict(e, format!("meta `{key}`")))?;
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

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(corrupt)
}

fn from_body<T: serde::de::DeserializeOwned>(row: &PgRow) -> Result<T, StoreError> {
    let body: String = row.try_get("body").map_err(db)?;
    serde_json::from_str(&body).map_err(corrupt)
}

fn token_from_row(r: &PgRow) -> Result<ApiTokenRecord, StoreError> {
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

fn record_from_row(r: &PgRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.try_get("seq").map_err(db)?,
        prev_hash: r.try_get("prev_hash").map_err(db)?,
        hash: r.try_get("hash").map_err(db)?,
        event_json: r.try_get("event").map_err(db)?,
    })
}

fn owner_from_row(r: &PgRow) -> Result<Owner, StoreError> {
    let id: String = r.try_get("id").map_err(db)?;
    Ok(Owner {
        id: OwnerId::from_str(&id).map_err(corrupt)?,
        name: r.try_get("name").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
    })
}

fn secret_from_row(r: &PgRow) -> Result<SecretRecord, StoreError> {
    Ok(SecretRecord {
        name: r.try_get("name").map_err(db)?,
        version: r.try_get("version").map_err(db)?,
        nonce: r.try_get("nonce").map_err(db)?,
        ciphertext: r.try_get("ciphertext").map_err(db)?,
        created_at: Timestamp(r.try_get("created_at").map_err(db)?),
        updated_at: Timestamp(r.try_get("updated_at").map_err(db)?),
    })
}

#[derive(Clone)]
pub(crate) struct PostgresReader {
    pool: PgPool,
}

impl PostgresReader {
    /// Subscribes to the notifications of committed batches.
    pub async fn changes(&self) -> Result<Changes, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(db)?;
        listener.listen(CHANGES_CHANNEL).await.map_err(db)?;
        Ok(Changes { listener })
    }

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
        sqlx::query("SELECT body FROM tasks WHERE id = ANY($1)")
            .bind(
                ids.iter()
                    .map(|i| i.as_str().to_string())
                    .collect::<Vec<String>>(),
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
             WHERE ($1::TEXT IS NULL OR t.agent_id = $1)
               AND ($2::TEXT IS NULL OR a.owner_id = $2)
               AND ($3::TEXT IS NULL OR t.state = $3)
               AND ($5::TEXT IS NULL OR t.id = $5
                    OR t.body::JSONB -> 'delegation' -> 'ancestors' ->> 0 = $5)
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

    /// The head, or `None` before the first event (the row exists from the start with seq 0).
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 AND seq > 0")
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
             WHERE ($1::TEXT IS NULL OR task_id = $1)
               AND ($2::TEXT IS NULL OR owner_id = $2)
               AND ($3::TEXT IS NULL OR state = $3)
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

    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT body FROM leases WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| from_body(&r)).transpose()
    }

    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        sqlx::query(
            "SELECT body FROM leases
             WHERE ($1 IS NULL OR task_id = $1) AND ($2 IS NULL OR agent_id = $2)
               AND (NOT $3 OR state IN ('pending', 'live'))
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .bind(f.task.as_ref().map(TaskId::as_str))
        .bind(f.agent.as_ref().map(AgentId::as_str))
        .bind(f.open)
        .bind(f.limit.unwrap_or(1000))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(from_body)
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
            "SELECT agent_id, (event::jsonb ->> 'decision') AS decision, COUNT(*) AS n FROM audit_log
             WHERE kind = 'decision' AND agent_id IS NOT NULL AND time >= $1
             GROUP BY agent_id, (event::jsonb ->> 'decision')",
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
