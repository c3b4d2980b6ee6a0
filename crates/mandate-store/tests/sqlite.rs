//! The store against a real SQLite file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

use std::sync::Arc;

use mandate_core::audit::{AuditEvent, EventKind, verify_chain};
use mandate_core::{
    Agent, AgentId, AgentStatus, Intent, Owner, OwnerId, Scope, Task, TaskId, TaskState, Tier,
    Timestamp,
};
use mandate_store::{Op, Store, StoreError, StoreOptions, TaskFilter};

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&StoreOptions::sqlite(&dir.path().join("m.db")))
        .await
        .unwrap()
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
        },
        status: AgentStatus::Active,
        created_at: Timestamp(2),
        description: String::new(),
    }
}

fn task(agent: &str) -> Task {
    Task {
        id: TaskId::generate(),
        agent: AgentId::parse(agent).unwrap(),
        owner: None,
        intent: Intent {
            text: "t".into(),
            class: "c".into(),
        },
        scope: Scope::parse("read:cases").unwrap(),
        state: TaskState::Active,
        created_at: Timestamp(3),
        expires_at: Timestamp(1000),
        ended_at: None,
        end_reason: None,
        jkt: None,
        budget: Default::default(),
        flow: Default::default(),
        provenance: Default::default(),
    }
}

fn event(kind: EventKind, task: Option<&TaskId>) -> Op {
    let mut e = AuditEvent::new(kind, Timestamp(5));
    e.task = task.map(|t| t.to_string());
    Op::Audit(e)
}

#[tokio::test]
async fn commits_are_atomic_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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

#[tokio::test]
async fn one_time_values_are_refused_twice_until_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let once = || Op::ConsumeOnce {
        key: "assertion:bot:j1".into(),
        expires_at: Timestamp(100),
    };
    store.commit(vec![once()]).await.unwrap();
    assert!(matches!(
        store.commit(vec![once()]).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .commit(vec![Op::PurgeOnce {
            before: Timestamp(101),
        }])
        .await
        .unwrap();
    store.commit(vec![once()]).await.unwrap();
}

#[tokio::test]
async fn concurrent_commits_form_one_verifiable_chain_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir).await);
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

    let store = open(&dir).await;
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

#[tokio::test]
async fn updates_of_missing_rows_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let err = store
        .commit(vec![Op::UpdateTask(task("bot"))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
}
