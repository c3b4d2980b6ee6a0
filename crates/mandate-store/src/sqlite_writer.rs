//! The SQLite group-commit writer: one OS thread that owns the write connection (rusqlite, so
//! a statement is a function call on this thread, not a hand-off to a driver's worker), takes
//! whatever commits are queued (up to a batch), writes them in one transaction, commits, and
//! only then answers each caller.
//!
//! Commits that hold only audit events cannot conflict: their records are written with
//! multi-row inserts and no savepoint, which keeps a stream of decisions cheap. Other commits
//! get a savepoint each, so one that fails rolls back alone. The chain head is written once per
//! batch.

use std::path::Path;

use mandate_core::audit::{AuditEvent, AuditRecord};
use mandate_core::{OwnerId, Timestamp};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::mpsc;

use crate::model::{Op, Receipt};
use crate::{Durability, Job, StoreError};

fn db(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == ErrorCode::ConstraintViolation
        && matches!(
            f.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    {
        return StoreError::Conflict("record".into());
    }
    StoreError::Database(e.to_string())
}

fn conflict(e: rusqlite::Error, what: String) -> StoreError {
    match db(e) {
        StoreError::Conflict(_) => StoreError::Conflict(what),
        other => other,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Opens the write connection and starts the writer thread; returns the channel to it.
pub(crate) fn start(
    path: &Path,
    durability: Durability,
    max_batch: usize,
) -> Result<mpsc::Sender<Job>, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
    ))
    .map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    conn.set_prepared_statement_cache_capacity(64);
    let head: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db)?;
    let (tx, rx) = mpsc::channel(4096);
    let mut writer = Writer {
        conn,
        head: head.unwrap_or((0, mandate_core::audit::GENESIS_HASH.to_string())),
        max_batch: max_batch.max(1),
    };
    std::thread::Builder::new()
        .name("mandate-store-writer".into())
        .spawn(move || writer.serve(rx))
        .map_err(|e| StoreError::Database(format!("cannot start the store writer: {e}")))?;
    Ok(tx)
}

struct Writer {
    conn: Connection,
    head: (i64, String),
    max_batch: usize,
}

impl Writer {
    fn serve(&mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let mut results: Vec<Result<Receipt, StoreError>> = Vec::with_capacity(batch.len());
        let start_head = self.head.clone();
        let committed = self
            .write_batch(batch, &mut results)
            .and_then(|()| self.conn.execute_batch("COMMIT").map_err(db));
        if committed.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
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

    /// Writes a batch inside one transaction, left open for the caller to commit.
    fn write_batch(
        &mut self,
        batch: &[Job],
        results: &mut Vec<Result<Receipt, StoreError>>,
    ) -> Result<(), StoreError> {
        let start_head = self.head.0;
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        let mut buffered: Vec<(AuditRecord, &AuditEvent)> = Vec::new();
        for job in batch {
            if job.ops.iter().all(|op| matches!(op, Op::Audit(_))) {
                let mut receipt = Receipt::default();
                for op in &job.ops {
                    if let Op::Audit(event) = op {
                        let record = self.link(event);
                        receipt.audit_seqs.push(record.seq);
                        buffered.push((record, event));
                    }
                }
                results.push(Ok(receipt));
            } else {
                self.flush_audit(&mut buffered)?;
                let r = self.apply_job(&job.ops);
                results.push(r);
            }
        }
        self.flush_audit(&mut buffered)?;
        if self.head.0 != start_head {
            self.conn
                .prepare_cached(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                )
                .and_then(|mut s| s.execute(params![self.head.0, self.head.1]))
                .map_err(db)?;
        }
        Ok(())
    }

    /// Links `event` to the chain's head and moves the head.
    fn link(&mut self, event: &AuditEvent) -> AuditRecord {
        let seq = self.head.0 + 1;
        let record = AuditRecord::link(seq, &self.head.1, event);
        self.head = (seq, record.hash.clone());
        record
    }

    /// Inserts buffered audit records, in chunks of fixed sizes so the statement cache stays
    /// small.
    fn flush_audit(
        &mut self,
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
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,?,?,?,?)");
            }
            // Built only from fixed text; every value is bound.
            let mut stmt = self.conn.prepare_cached(&sql).map_err(db)?;
            let mut values: Vec<rusqlite::types::ToSqlOutput<'_>> =
                Vec::with_capacity(chunk.len() * 8);
            fn opt(s: Option<&str>) -> rusqlite::types::ToSqlOutput<'_> {
                use rusqlite::types::{ToSqlOutput, Value, ValueRef};
                match s {
                    Some(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
                    None => ToSqlOutput::Owned(Value::Null),
                }
            }
            for (record, event) in chunk {
                use rusqlite::types::{ToSqlOutput, Value};
                values.push(ToSqlOutput::Owned(Value::Integer(record.seq)));
                values.push(ToSqlOutput::Owned(Value::Integer(event.time.0)));
                values.push(opt(Some(event.kind.as_str())));
                values.push(opt(event.task.as_deref()));
                values.push(opt(event.agent.as_deref()));
                values.push(opt(Some(&record.prev_hash)));
                values.push(opt(Some(&record.hash)));
                values.push(opt(Some(&record.event_json)));
            }
            stmt.execute(rusqlite::params_from_iter(values))
                .map_err(db)?;
            rest = tail;
        }
        rows.clear();
        Ok(())
    }

    fn apply_job(&mut self, ops: &[Op]) -> Result<Receipt, StoreError> {
        self.conn.execute_batch("SAVEPOINT job").map_err(db)?;
        let head_before = self.head.clone();
        let mut receipt = Receipt::default();
        let outcome = ops.iter().try_for_each(|op| self.apply(op, &mut receipt));
        match outcome {
            Ok(()) => {
                self.conn.execute_batch("RELEASE job").map_err(db)?;
                Ok(receipt)
            }
            Err(e) => {
                self.head = head_before;
                self.conn
                    .execute_batch("ROLLBACK TO job; RELEASE job")
                    .map_err(db)?;
                Err(e)
            }
        }
    }

    /// Runs one statement (cached), returning the rows it changed.
    fn run(&self, sql: &str, values: &[&dyn rusqlite::ToSql]) -> Result<usize, rusqlite::Error> {
        self.conn.prepare_cached(sql)?.execute(values)
    }

    fn apply(&mut self, op: &Op, receipt: &mut Receipt) -> Result<(), StoreError> {
        let owner = |o: &Option<OwnerId>| o.as_ref().map(|o| o.as_str().to_string());
        let ms = |t: Option<Timestamp>| t.map(|t| t.0);
        match op {
            Op::InsertOwner(o) => {
                self.run(
                    "INSERT INTO owners (id, name, created_at) VALUES (?1, ?2, ?3)",
                    params![o.id.as_str(), o.name, o.created_at.0],
                )
                .map_err(|e| conflict(e, format!("owner `{}`", o.id)))?;
            }
            Op::DeleteOwner { id, at } => {
                let n = self
                    .run("DELETE FROM owners WHERE id = ?1", params![id.as_str()])
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("owner `{id}`")));
                }
                self.run(
                    "UPDATE api_tokens SET revoked_at = ?1 WHERE owner_id = ?2 AND revoked_at IS NULL",
                    params![at.0, id.as_str()],
                )
                .map_err(db)?;
            }
            Op::InsertApiToken(t) => {
                self.run(
                    "INSERT INTO api_tokens (id, hash, role, owner_id, name, created_at, expires_at, revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)",
                    params![
                        t.id,
                        t.hash,
                        t.role.as_str(),
                        owner(&t.owner),
                        t.name,
                        t.created_at.0,
                        ms(t.expires_at)
                    ],
                )
                .map_err(|e| conflict(e, format!("api token `{}`", t.id)))?;
            }
            Op::RevokeApiToken { id, at } => {
                let n = self
                    .run(
                        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
                        params![at.0, id],
                    )
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("api token `{id}`")));
                }
            }
            Op::InsertAgent(a) => {
                self.run(
                    "INSERT INTO agents (id, owner_id, status, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        a.id.as_str(),
                        owner(&a.owner),
                        a.status.as_str(),
                        a.created_at.0,
                        to_json(a)?
                    ],
                )
                .map_err(|e| conflict(e, format!("agent `{}`", a.id)))?;
            }
            Op::UpdateAgent(a) => {
                let n = self
                    .run(
                        "UPDATE agents SET owner_id = ?1, status = ?2, body = ?3 WHERE id = ?4",
                        params![
                            owner(&a.owner),
                            a.status.as_str(),
                            to_json(a)?,
                            a.id.as_str()
                        ],
                    )
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("agent `{}`", a.id)));
                }
            }
            Op::InsertTask(t) => {
                self.run(
                    "INSERT INTO tasks (id, agent_id, state, created_at, expires_at, ended_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        t.id.as_str(),
                        t.agent.as_str(),
                        t.state.as_str(),
                        t.created_at.0,
                        t.expires_at.0,
                        ms(t.ended_at),
                        to_json(t)?
                    ],
                )
                .map_err(|e| conflict(e, format!("task `{}`", t.id)))?;
            }
            Op::UpdateTask(t) => {
                let n = self
                    .run(
                        "UPDATE tasks SET state = ?1, expires_at = ?2, ended_at = ?3, body = ?4 WHERE id = ?5",
                        params![
                            t.state.as_str(),
                            t.expires_at.0,
                            ms(t.ended_at),
                            to_json(t)?,
                            t.id.as_str()
                        ],
                    )
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("task `{}`", t.id)));
                }
            }
            Op::ConsumeOnce { key, expires_at } => {
                self.run(
                    "INSERT INTO used_jti (key, expires_at) VALUES (?1, ?2)",
                    params![key, expires_at.0],
                )
                .map_err(|e| conflict(e, "one-time value".to_string()))?;
            }
            Op::PurgeOnce { before } => {
                self.run(
                    "DELETE FROM used_jti WHERE expires_at < ?1",
                    params![before.0],
                )
                .map_err(db)?;
            }
            Op::InsertApproval(a) => {
                self.run(
                    "INSERT INTO approvals (id, task_id, owner_id, state, call_hash, created_at, expires_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        a.id,
                        a.task.as_str(),
                        owner(&a.owner),
                        a.state.as_str(),
                        a.call_hash,
                        a.created_at.0,
                        a.expires_at.0,
                        to_json(a)?
                    ],
                )
                .map_err(|e| conflict(e, format!("approval `{}`", a.id)))?;
            }
            Op::UpdateApproval { approval: a, from } => {
                let n = self
                    .run(
                        "UPDATE approvals SET state = ?1, body = ?2 WHERE id = ?3 AND state = ?4",
                        params![a.state.as_str(), to_json(a)?, a.id, from.as_str()],
                    )
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "approval `{}` in state {}",
                        a.id,
                        from.as_str()
                    )));
                }
            }
            Op::PutSecret(rec) => {
                let n = if rec.version == 1 {
                    self.run(
                        "INSERT INTO secrets (name, version, nonce, ciphertext, created_at, updated_at)
                         VALUES (?1, 1, ?2, ?3, ?4, ?5)",
                        params![
                            rec.name,
                            rec.nonce,
                            rec.ciphertext,
                            rec.created_at.0,
                            rec.updated_at.0
                        ],
                    )
                    .map_err(|e| conflict(e, format!("secret `{}`", rec.name)))?
                } else {
                    self.run(
                        "UPDATE secrets SET version = ?1, nonce = ?2, ciphertext = ?3, updated_at = ?4
                         WHERE name = ?5 AND version = ?6",
                        params![
                            rec.version,
                            rec.nonce,
                            rec.ciphertext,
                            rec.updated_at.0,
                            rec.name,
                            rec.version - 1
                        ],
                    )
                    .map_err(db)?
                };
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "secret `{}` version {}",
                        rec.name, rec.version
                    )));
                }
            }
            Op::DeleteSecret { name } => {
                let n = self
                    .run("DELETE FROM secrets WHERE name = ?1", params![name])
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("secret `{name}`")));
                }
            }
            Op::InsertLease(l) => {
                self.run(
                    "INSERT INTO leases (id, task_id, agent_id, credential, state, created_at, expires_at, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        l.id,
                        l.task.as_str(),
                        l.agent.as_str(),
                        l.credential,
                        l.state.as_str(),
                        l.created_at.0,
                        l.expires_at.0,
                        to_json(l)?
                    ],
                )
                .map_err(|e| {
                    conflict(
                        e,
                        format!("an open lease of `{}` for task `{}`", l.credential, l.task),
                    )
                })?;
            }
            Op::UpdateLease { lease: l, from } => {
                let n = self
                    .run(
                        "UPDATE leases SET state = ?1, expires_at = ?2, body = ?3 WHERE id = ?4 AND state = ?5",
                        params![l.state.as_str(), l.expires_at.0, to_json(l)?, l.id, from.as_str()],
                    )
                    .map_err(db)?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "lease `{}` in state {}",
                        l.id,
                        from.as_str()
                    )));
                }
            }
            Op::Audit(event) => {
                let record = self.link(event);
                self.run(
                    "INSERT INTO audit_log (seq, time, kind, task_id, agent_id, prev_hash, hash, event)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        record.seq,
                        event.time.0,
                        event.kind.as_str(),
                        event.task.as_deref(),
                        event.agent.as_deref(),
                        record.prev_hash,
                        record.hash,
                        record.event_json
                    ],
                )
                .map_err(db)?;
                // The head row is written once per batch, by `write_batch`.
                receipt.audit_seqs.push(record.seq);
            }
            Op::InsertMeta { key, value } => {
                self.run(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                    params![key, value],
                )
                .map_err(|e| conflict(e, format!("meta `{key}`")))?;
            }
            Op::SetMeta { key, value } => {
                self.run(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )
                .map_err(db)?;
            }
        }
        Ok(())
    }
}
