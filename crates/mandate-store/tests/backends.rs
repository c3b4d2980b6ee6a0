//! The store against each backend: every case runs on a SQLite file and on PostgreSQL, and the
//! PostgreSQL-only cases run two stores (two replicas) on one database.
//!
//! PostgreSQL comes from `MANDATE_TEST_POSTGRES_URL` (set by `scripts/test`, which runs
//! `scripts/setup-postgres`); each test creates its own database through it. Without it the
//! PostgreSQL tests fail, they do not skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use mandate_core::approval::{Approval, ApprovalState};
use mandate_core::audit::{AuditEvent, ChainVerifier, EventKind, verify_chain};
use mandate_core::{
    Agent, AgentId, AgentStatus, Intent, Owner, OwnerId, Scope, Task, TaskId, TaskState, Tier,
    Timestamp,
};
use mandate_store::{
    ApiTokenRecord, ApprovalFilter, Op, Role, SecretRecord, Store, StoreError, StoreOptions,
    TaskFilter,
};
use sqlx::Connection;

const PG_ENV: &str = "MANDATE_TEST_POSTGRES_URL";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of one backend, which stores can be opened on (again).
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn new(backend: Backend) -> Db {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Db {
                    url: format!("sqlite://{}", dir.path().join("m.db").display()),
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => Db {
                url: fresh_postgres_database().await,
                _dir: None,
            },
        }
    }

    async fn open(&self) -> Store {
        Store::open(&StoreOptions {
            url: self.url.clone(),
            durability: Default::default(),
            max_batch: 512,
        })
        .await
        .unwrap()
    }
}

/// Creates a database with a random name on the test server and returns its URL.
async fn fresh_postgres_database() -> String {
    let Ok(admin) = std::env::var(PG_ENV) else {
        panic!(
            "{PG_ENV} is not set: the PostgreSQL tests need a server. Run scripts/setup-postgres \
             and export {PG_ENV}=$(cat .test-deps/pg/url), or run scripts/test, which does both"
        );
    };
    let name = format!(
        "t_{:016x}",
        RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
    );
    let mut conn = sqlx::postgres::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}={admin}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin.as_str(), String::new()),
    };
    let (server, _db) = base
        .rsplit_once('/')
        .filter(|(s, _)| s.contains("://"))
        .unwrap_or_else(|| panic!("{PG_ENV} must name a database: postgres://user@host:port/db"));
    format!("{server}/{name}{query}")
}

/// Runs each listed case once per backend, as `sqlite::case` and `postgres::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Backend::Postgres).await
            })*
        }
    };
}

on_both_backends!(
    commits_are_atomic_and_read_back,
    one_time_values_are_refused_twice_until_purged,
    concurrent_commits_form_one_verifiable_chain_and_survive_reopen,
    updates_of_missing_rows_are_not_found,
    every_op_reads_back_the_same,
    leases_are_one_open_per_task_and_revoked_once,
    a_shared_value_is_created_once,
);

fn lease(id: &str, task: &str, state: mandate_store::LeaseState) -> mandate_store::Lease {
    mandate_store::Lease {
        id: id.into(),
        task: mandate_core::TaskId::parse(task).unwrap(),
        agent: AgentId::parse("bot").unwrap(),
        credential: "db".into(),
        kind: "postgres".into(),
        state,
        handle: format!("mandate_{id}"),
        grants: vec!["SELECT ON orders".into()],
        created_at: Timestamp(1),
        expires_at: Timestamp(1_000),
        ended_at: None,
        end_reason: None,
        sealed: Some(("n".into(), "c".into())),
    }
}

async fn leases_are_one_open_per_task_and_revoked_once(backend: Backend) {
    use mandate_store::{LeaseFilter, LeaseState};
    let db = Db::new(backend).await;
    let store = db.open().await;
    let task = "01890000-0000-7000-8000-000000000001";
    store
        .commit(vec![Op::InsertLease(lease(
            "l1",
            task,
            LeaseState::Pending,
        ))])
        .await
        .unwrap();
    // A second open lease of the same credential for the same task conflicts.
    assert!(matches!(
        store
            .commit(vec![Op::InsertLease(lease(
                "l2",
                task,
                LeaseState::Pending
            ))])
            .await,
        Err(StoreError::Conflict(_))
    ));
    let live = lease("l1", task, LeaseState::Live);
    store
        .commit(vec![Op::UpdateLease {
            lease: live.clone(),
            from: LeaseState::Pending,
        }])
        .await
        .unwrap();
    assert_eq!(store.lease("l1").await.unwrap(), Some(live.clone()));
    let mut revoked = lease("l1", task, LeaseState::Revoked);
    revoked.sealed = None;
    revoked.end_reason = Some("its task is completed".into());
    let revoke = || Op::UpdateLease {
        lease: revoked.clone(),
        from: LeaseState::Live,
    };
    store.commit(vec![revoke()]).await.unwrap();
    // Revoked once: a second revocation (another replica's) conflicts.
    assert!(matches!(
        store.commit(vec![revoke()]).await,
        Err(StoreError::Conflict(_))
    ));
    // Once the first is closed, the task may hold a new one.
    store
        .commit(vec![Op::InsertLease(lease(
            "l2",
            task,
            LeaseState::Pending,
        ))])
        .await
        .unwrap();
    let open = store
        .leases(&LeaseFilter {
            open: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        open.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["l2"]
    );
    let all = store
        .leases(&LeaseFilter {
            task: Some(mandate_core::TaskId::parse(task).unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
}

async fn a_shared_value_is_created_once(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.open().await;
    let put = |v: &str| Op::InsertMeta {
        key: "ssh_ca:build".into(),
        value: v.into(),
    };
    store.commit(vec![put("first")]).await.unwrap();
    assert!(matches!(
        store.commit(vec![put("second")]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.meta("ssh_ca:build").await.unwrap().as_deref(),
        Some("first")
    );
}

fn owner(id: &str) -> Owner {
    Owner {
        id: OwnerId::parse(id).unwrap(),
        name: id.into(),
        created_at: Timestamp(1),
    }
}

fn agent(id: &str, owner: &str) -> Agent {
    Agent {
        id: AgentId::parse(id).unwrap(),
        owner: Some(OwnerId::parse(owner).unwrap()),
        former_owner: None,
        tier: Tier::Low,
        envelope: Scope::parse("read:cases").unwrap(),
        attestations: vec![],
        default_intent: Intent {
            text: "work".into(),
            class: "default".into(),
            values: Vec::new(),
        },
        status: AgentStatus::Active,
        created_at: Timestamp(2),
        description: String::new(),
        confirmed_at: None,
    }
}

/// A task, built from JSON so that fields with defaults need not be listed.
fn task(agent: &str) -> Task {
    serde_json::from_value(serde_json::json!({
        "id": TaskId::generate(),
        "agent": agent,
        "owner": null,
        "intent": {"text": "t", "class": "c"},
        "scope": Scope::parse("read:cases").unwrap(),
        "state": TaskState::Active,
        "created_at": 3,
        "expires_at": 1000,
    }))
    .unwrap()
}

fn approval(id: &str, task: &Task, owner: &str, created_at: i64) -> Approval {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "task": task.id,
        "agent": task.agent,
        "owner": owner,
        "tier": Tier::Low,
        "action": "read",
        "target_kind": "tool",
        "target": "cases",
        "arguments": {"n": 1},
        "call_hash": format!("hash-{id}"),
        "policies": ["gate"],
        "reason": "because",
        "state": ApprovalState::Pending,
        "created_at": created_at,
        "expires_at": 10_000,
    }))
    .unwrap()
}

fn event(kind: EventKind, task: Option<&TaskId>) -> Op {
    let mut e = AuditEvent::new(kind, Timestamp(5));
    e.task = task.map(|t| t.to_string());
    Op::Audit(e)
}

async fn commits_are_atomic_and_read_back(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.open().await;
    assert_eq!(store.audit_head().await.unwrap(), None);
    store
        .commit(vec![
            Op::InsertOwner(owner("alice")),
            Op::InsertAgent(agent("bot", "alice")),
            event(EventKind::AgentAdded, None),
        ])
        .await
        .unwrap();
    // A conflicting commit changes nothing, not even the audit chain.
    let err = store
        .commit(vec![
            event(EventKind::AgentAdded, None),
            Op::InsertOwner(owner("bob")),
            Op::InsertAgent(agent("bot", "bob")),
        ])
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Conflict("agent `bot`".into()));
    assert!(
        store
            .owner(&OwnerId::parse("bob").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 1);
    let got = store
        .agent(&AgentId::parse("bot").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, agent("bot", "alice"));
}

async fn one_time_values_are_refused_twice_until_purged(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.open().await;
    let once = || Op::ConsumeOnce {
        key: "assertion:bot:j1".into(),
        expires_at: Timestamp(100),
    };
    store.commit(vec![once()]).await.unwrap();
    assert_eq!(
        store.commit(vec![once()]).await,
        Err(StoreError::Conflict("one-time value".into()))
    );
    // Not yet expired at 100: kept.
    store
        .commit(vec![Op::PurgeOnce {
            before: Timestamp(100),
        }])
        .await
        .unwrap();
    assert!(store.commit(vec![once()]).await.is_err());
    store
        .commit(vec![Op::PurgeOnce {
            before: Timestamp(101),
        }])
        .await
        .unwrap();
    store.commit(vec![once()]).await.unwrap();
}

async fn concurrent_commits_form_one_verifiable_chain_and_survive_reopen(backend: Backend) {
    let db = Db::new(backend).await;
    let store = Arc::new(db.open().await);
    store
        .commit(vec![
            Op::InsertOwner(owner("alice")),
            Op::InsertAgent(agent("bot", "alice")),
        ])
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let t = task("bot");
            let mut ops = vec![
                Op::InsertTask(t.clone()),
                event(EventKind::TaskOpened, Some(&t.id)),
            ];
            if i % 10 == 0 {
                // Every tenth commit fails half-way and must leave no trace.
                ops.push(Op::InsertOwner(owner("alice")));
            }
            store.commit(ops).await.map(|r| (t.id, r))
        }));
    }
    let mut ok = 0;
    for h in handles {
        if h.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 180);
    let tasks = store.tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(tasks.len(), 180);
    drop(store);

    let store = db.open().await;
    let records = store.audit_range(1, 10_000).await.unwrap();
    assert_eq!(records.len(), 180);
    let head = store.audit_head().await.unwrap().unwrap();
    let report = verify_chain(&records, Some((head.0, &head.1)));
    assert!(report.ok(), "{:?}", report.problems);
    // The chain continues where it stopped.
    let r = store
        .commit(vec![event(EventKind::ServerStarted, None)])
        .await
        .unwrap();
    assert_eq!(r.audit_seqs, vec![181]);
}

async fn updates_of_missing_rows_are_not_found(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.open().await;
    let missing = [
        Op::UpdateTask(task("bot")),
        Op::UpdateAgent(agent("bot", "alice")),
        Op::DeleteOwner {
            id: OwnerId::parse("nobody").unwrap(),
            at: Timestamp(1),
        },
        Op::RevokeApiToken {
            id: "tok_none".into(),
            at: Timestamp(1),
        },
        Op::DeleteSecret {
            name: "none".into(),
        },
    ];
    for op in missing {
        let err = store.commit(vec![op.clone()]).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{op:?}: {err:?}");
    }
}

/// Every op and every read, with the exact values and errors the broker relies on.
async fn every_op_reads_back_the_same(backend: Backend) {
    let db = Db::new(backend).await;
    let store = db.open().await;
    let alice = OwnerId::parse("alice").unwrap();
    let token = |id: &str, owner: Option<&OwnerId>, created_at: i64| ApiTokenRecord {
        id: id.into(),
        hash: format!("h-{id}"),
        role: if owner.is_some() {
            Role::Owner
        } else {
            Role::Admin
        },
        owner: owner.cloned(),
        name: format!("{id} label"),
        created_at: Timestamp(created_at),
        expires_at: Some(Timestamp(9_000)),
        revoked_at: None,
    };
    store
        .commit(vec![
            Op::InsertOwner(owner("bob")),
            Op::InsertOwner(owner("alice")),
            Op::InsertOwner(owner("Zed")),
            Op::InsertApiToken(token("tok_admin", None, 1)),
            Op::InsertApiToken(token("tok_a2", Some(&alice), 3)),
            Op::InsertApiToken(token("tok_a1", Some(&alice), 2)),
            Op::InsertAgent(agent("bot", "alice")),
            Op::InsertAgent(agent("Bot2", "bob")),
        ])
        .await
        .unwrap();
    // Owners and agents come back sorted by bytes (upper case first), as SQLite sorts.
    let names: Vec<String> = store
        .owners()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id.to_string())
        .collect();
    assert_eq!(names, ["Zed", "alice", "bob"]);
    let agents: Vec<String> = store
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id.to_string())
        .collect();
    assert_eq!(agents, ["Bot2", "bot"]);
    assert_eq!(store.owner(&alice).await.unwrap(), Some(owner("alice")));

    // API tokens: by hash, by owner, admin ones, a duplicate hash, revocation.
    assert_eq!(
        store.api_token_by_hash("h-tok_a1").await.unwrap(),
        Some(token("tok_a1", Some(&alice), 2))
    );
    assert_eq!(store.api_token_by_hash("h-none").await.unwrap(), None);
    let ids = |v: Vec<ApiTokenRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.api_tokens(Some(&alice)).await.unwrap()),
        ["tok_a1", "tok_a2"]
    );
    assert_eq!(ids(store.api_tokens(None).await.unwrap()), ["tok_admin"]);
    let mut dup = token("tok_dup", None, 4);
    dup.hash = "h-tok_admin".into();
    assert_eq!(
        store.commit(vec![Op::InsertApiToken(dup)]).await,
        Err(StoreError::Conflict("api token `tok_dup`".into()))
    );
    store
        .commit(vec![Op::RevokeApiToken {
            id: "tok_a1".into(),
            at: Timestamp(50),
        }])
        .await
        .unwrap();
    // Revoking again keeps the first time.
    store
        .commit(vec![Op::RevokeApiToken {
            id: "tok_a1".into(),
            at: Timestamp(60),
        }])
        .await
        .unwrap();
    let revoked = store.api_token_by_hash("h-tok_a1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(Timestamp(50)));
    assert!(!revoked.usable(Timestamp(51)));

    // Deleting an owner revokes its remaining tokens.
    let mut orphan = agent("bot", "alice");
    orphan.owner = None;
    orphan.former_owner = Some(alice.clone());
    orphan.status = AgentStatus::Suspended;
    store
        .commit(vec![
            Op::DeleteOwner {
                id: alice.clone(),
                at: Timestamp(70),
            },
            Op::UpdateAgent(orphan.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(store.owner(&alice).await.unwrap(), None);
    let a2 = store.api_token_by_hash("h-tok_a2").await.unwrap().unwrap();
    assert_eq!(a2.revoked_at, Some(Timestamp(70)));
    assert_eq!(
        store.agent(&AgentId::parse("bot").unwrap()).await.unwrap(),
        Some(orphan)
    );

    // Tasks: filters, order (newest first) and updates.
    let mut t1 = task("bot");
    t1.created_at = Timestamp(10);
    let mut t2 = task("bot");
    t2.created_at = Timestamp(20);
    let mut t3 = task("Bot2");
    t3.created_at = Timestamp(30);
    store
        .commit(vec![
            Op::InsertTask(t1.clone()),
            Op::InsertTask(t2.clone()),
            Op::InsertTask(t3.clone()),
            event(EventKind::TaskOpened, Some(&t1.id)),
            event(EventKind::TaskOpened, Some(&t3.id)),
            event(EventKind::TaskOpened, Some(&t1.id)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.commit(vec![Op::InsertTask(t1.clone())]).await,
        Err(StoreError::Conflict(format!("task `{}`", t1.id)))
    );
    let task_ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        task_ids(store.tasks(&TaskFilter::default()).await.unwrap()),
        [t3.id.clone(), t2.id.clone(), t1.id.clone()]
    );
    assert_eq!(
        task_ids(
            store
                .tasks(&TaskFilter {
                    agent: Some(AgentId::parse("bot").unwrap()),
                    limit: Some(1),
                    ..Default::default()
                })
                .await
                .unwrap()
        ),
        [t2.id.clone()]
    );
    assert_eq!(
        task_ids(
            store
                .tasks(&TaskFilter {
                    owner: Some(OwnerId::parse("bob").unwrap()),
                    ..Default::default()
                })
                .await
                .unwrap()
        ),
        [t3.id.clone()]
    );
    // A workflow: the root task and the tasks delegated from it, however deep.
    let mut child: Task = serde_json::from_value({
        let mut v = serde_json::to_value(task("Bot2")).unwrap();
        v["delegation"] = serde_json::json!({"ancestors": [t1.id], "agents": ["bot"]});
        v
    })
    .unwrap();
    child.created_at = Timestamp(35);
    let mut grandchild: Task = serde_json::from_value({
        let mut v = serde_json::to_value(task("bot")).unwrap();
        v["delegation"] =
            serde_json::json!({"ancestors": [t1.id, child.id], "agents": ["bot", "Bot2"]});
        v
    })
    .unwrap();
    grandchild.created_at = Timestamp(36);
    store
        .commit(vec![
            Op::InsertTask(child.clone()),
            Op::InsertTask(grandchild.clone()),
        ])
        .await
        .unwrap();
    let of_root = |root: &TaskId| TaskFilter {
        root: Some(root.clone()),
        ..Default::default()
    };
    assert_eq!(
        task_ids(store.tasks(&of_root(&t1.id)).await.unwrap()),
        [grandchild.id.clone(), child.id.clone(), t1.id.clone()]
    );
    assert_eq!(
        task_ids(store.tasks(&of_root(&child.id)).await.unwrap()),
        [child.id.clone()]
    );

    let mut ended = t2.clone();
    ended.state = TaskState::Revoked;
    ended.ended_at = Some(Timestamp(40));
    store
        .commit(vec![Op::UpdateTask(ended.clone())])
        .await
        .unwrap();
    assert_eq!(store.task(&t2.id).await.unwrap(), Some(ended.clone()));
    assert_eq!(
        task_ids(
            store
                .tasks(&TaskFilter {
                    state: Some(TaskState::Revoked),
                    ..Default::default()
                })
                .await
                .unwrap()
        ),
        [t2.id.clone()]
    );

    // Audit: ranges, per-task records in chain order, the head.
    let all = store.audit_range(1, 100).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(store.audit_range(2, 1).await.unwrap(), all[1..2].to_vec());
    let of_tasks = store
        .audit_for_tasks(&[t3.id.clone(), t1.id.clone()])
        .await
        .unwrap();
    assert_eq!(of_tasks, all);
    assert_eq!(
        store.audit_head().await.unwrap(),
        Some((3, all[2].hash.clone()))
    );
    assert!(verify_chain(&all, Some((3, &all[2].hash))).ok());

    // Approvals: filters, order, and a state change only from the expected state.
    let p1 = approval("apr_1", &t1, "bob", 100);
    let p2 = approval("apr_2", &t3, "bob", 200);
    store
        .commit(vec![
            Op::InsertApproval(p1.clone()),
            Op::InsertApproval(p2.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.commit(vec![Op::InsertApproval(p1.clone())]).await,
        Err(StoreError::Conflict("approval `apr_1`".into()))
    );
    assert_eq!(store.approval("apr_1").await.unwrap(), Some(p1.clone()));
    assert_eq!(store.approval("apr_none").await.unwrap(), None);
    let apr_ids = |v: Vec<Approval>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        apr_ids(store.approvals(&ApprovalFilter::default()).await.unwrap()),
        ["apr_2", "apr_1"]
    );
    assert_eq!(
        apr_ids(
            store
                .approvals(&ApprovalFilter {
                    task: Some(t1.id.clone()),
                    ..Default::default()
                })
                .await
                .unwrap()
        ),
        ["apr_1"]
    );
    let mut granted = p1.clone();
    granted.state = ApprovalState::Granted;
    granted.decided_at = Some(Timestamp(150));
    granted.decided_by = Some("bob".into());
    let grant = || Op::UpdateApproval {
        approval: granted.clone(),
        from: ApprovalState::Pending,
    };
    store.commit(vec![grant()]).await.unwrap();
    assert_eq!(
        store.commit(vec![grant()]).await,
        Err(StoreError::Conflict(
            "approval `apr_1` in state pending".into()
        ))
    );
    assert_eq!(store.approval("apr_1").await.unwrap(), Some(granted));
    assert_eq!(
        apr_ids(
            store
                .approvals(&ApprovalFilter {
                    owner: Some(OwnerId::parse("bob").unwrap()),
                    state: Some(ApprovalState::Pending),
                    ..Default::default()
                })
                .await
                .unwrap()
        ),
        ["apr_2"]
    );

    // Secrets: versions must follow each other; deletion.
    let secret = |name: &str, version: i64| SecretRecord {
        name: name.into(),
        version,
        nonce: format!("n{version}"),
        ciphertext: format!("c{version}"),
        created_at: Timestamp(1),
        updated_at: Timestamp(version),
    };
    store
        .commit(vec![
            Op::PutSecret(secret("b", 1)),
            Op::PutSecret(secret("a", 1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.commit(vec![Op::PutSecret(secret("a", 1))]).await,
        Err(StoreError::Conflict("secret `a`".into()))
    );
    assert_eq!(
        store.commit(vec![Op::PutSecret(secret("a", 3))]).await,
        Err(StoreError::Conflict("secret `a` version 3".into()))
    );
    store
        .commit(vec![Op::PutSecret(secret("a", 2))])
        .await
        .unwrap();
    assert_eq!(store.secret("a").await.unwrap(), Some(secret("a", 2)));
    assert_eq!(
        store.secrets().await.unwrap(),
        [secret("a", 2), secret("b", 1)]
    );
    store
        .commit(vec![Op::DeleteSecret { name: "b".into() }])
        .await
        .unwrap();
    assert_eq!(store.secret("b").await.unwrap(), None);

    // Meta: set and overwrite.
    assert_eq!(store.meta("k").await.unwrap(), None);
    for v in ["one", "two"] {
        store
            .commit(vec![Op::SetMeta {
                key: "k".into(),
                value: v.into(),
            }])
            .await
            .unwrap();
    }
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("two"));

    // Everything survives reopening.
    drop(store);
    let store = db.open().await;
    assert_eq!(store.task(&t2.id).await.unwrap(), Some(ended));
    assert_eq!(store.audit_range(1, 100).await.unwrap(), all);
}

/// Two stores on one PostgreSQL database, as two replicas are: both migrate at once, write audit
/// events concurrently into one chain, and share single-use values.
#[tokio::test]
async fn postgres_replicas_share_one_chain_and_one_time_values() {
    let db = Db::new(Backend::Postgres).await;
    let (a, b) = tokio::join!(db.open(), db.open());
    let stores = [Arc::new(a), Arc::new(b)];
    stores[0]
        .commit(vec![
            Op::InsertOwner(owner("alice")),
            Op::InsertAgent(agent("bot", "alice")),
        ])
        .await
        .unwrap();

    // Both replicas commit at once: audit-only commits, commits mixing rows and events, and
    // commits that fail half-way.
    let mut handles = Vec::new();
    for i in 0..400 {
        let store = stores[i % 2].clone();
        handles.push(tokio::spawn(async move {
            let ops = match i % 4 {
                0 | 1 => vec![
                    event(EventKind::ServerStarted, None),
                    event(EventKind::ServerStarted, None),
                ],
                2 => {
                    let t = task("bot");
                    vec![
                        Op::InsertTask(t.clone()),
                        event(EventKind::TaskOpened, Some(&t.id)),
                    ]
                }
                _ => vec![
                    event(EventKind::TaskOpened, None),
                    Op::InsertOwner(owner("alice")),
                ],
            };
            store.commit(ops).await
        }));
    }
    let mut seqs = Vec::new();
    let mut failed = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(r) => seqs.extend(r.audit_seqs),
            Err(StoreError::Conflict(_)) => failed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(failed, 100);
    // 200 audit-only commits of two events, 100 task commits of one.
    let n = 500;
    let unique: BTreeSet<i64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), n, "every event got a sequence number");
    assert_eq!(unique, (1..=n as i64).collect(), "no gaps, no duplicates");

    for store in &stores {
        let records = store.audit_range(1, 10_000).await.unwrap();
        assert_eq!(records.len(), n);
        let head = store.audit_head().await.unwrap().unwrap();
        assert_eq!(head.0, n as i64);
        let mut verifier = ChainVerifier::new();
        for r in &records {
            verifier.push(r);
        }
        let report = verifier.finish(Some((head.0, &head.1)));
        assert!(report.ok(), "{:?}", report.problems);
    }

    // A value consumed through one replica is refused through the other.
    let once = |key: &str| Op::ConsumeOnce {
        key: key.into(),
        expires_at: Timestamp(100),
    };
    stores[0].commit(vec![once("jti:one")]).await.unwrap();
    assert_eq!(
        stores[1].commit(vec![once("jti:one")]).await,
        Err(StoreError::Conflict("one-time value".into()))
    );
    // Racing for the same values, each is won exactly once.
    let mut races = Vec::new();
    for i in 0..100 {
        for store in &stores {
            let store = store.clone();
            races.push(tokio::spawn(async move {
                store.commit(vec![once(&format!("jti:race:{i}"))]).await
            }));
        }
    }
    let mut won = 0;
    for r in races {
        match r.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 100);
}

/// A third store opened later continues the chain the two replicas built.
#[tokio::test]
async fn postgres_store_opened_later_continues_the_shared_chain() {
    let db = Db::new(Backend::Postgres).await;
    let a = db.open().await;
    let b = db.open().await;
    a.commit(vec![event(EventKind::ServerStarted, None)])
        .await
        .unwrap();
    let r = b
        .commit(vec![event(EventKind::ServerStarted, None)])
        .await
        .unwrap();
    assert_eq!(r.audit_seqs, vec![2]);
    let c = db.open().await;
    let r = c
        .commit(vec![event(EventKind::ServerStarted, None)])
        .await
        .unwrap();
    assert_eq!(r.audit_seqs, vec![3]);
    let records = a.audit_range(1, 10).await.unwrap();
    let head = b.audit_head().await.unwrap().unwrap();
    assert!(verify_chain(&records, Some((head.0, &head.1))).ok());
    // The location never shows a password.
    let with_password = db.url.replacen("://mandate@", "://mandate:secret@", 1);
    if with_password != db.url {
        let store = Store::open(&StoreOptions {
            url: with_password,
            durability: Default::default(),
            max_batch: 8,
        })
        .await
        .unwrap();
        assert!(!store.location().contains("secret"), "{}", store.location());
    }
}
