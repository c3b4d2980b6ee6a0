//! The SQLite backend: migrations and a pool of readers over sqlx, and the group-commit writer
//! on its own thread (`sqlite_writer`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use mandate_core::audit::AuditRecord;
use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId, Timestamp};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Executor, Row};
use tokio::sync::mpsc;

use crate::migrate::{self, SQLITE};
use crate::model::{
    AgentActivity, ApiTokenRecord, ApprovalFilter, Lease, LeaseFilter, Role, SecretRecord,
    TaskFilter,
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
    conn.close().await.map_err(db)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options(path, opts.durability).read_only(true))
        .await
        .map_err(db)?;
    let tx = crate::sqlite_writer::start(path, opts.durability, opts.max_batch)?;
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

    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT body FROM leases WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| from_body(&r)).transpose()
    }

    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        sqlx::query(
            "SELECT body FROM leases
             WHERE (?1 IS NULL OR task_id = ?1) AND (?2 IS NULL OR agent_id = ?2)
               AND (NOT ?3 OR state IN ('pending', 'live'))
             ORDER BY created_at DESC, id DESC LIMIT ?4",
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
