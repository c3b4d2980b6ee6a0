//! Several replicas on one database. Every change that matters to a decision (a task opened or
//! ended, an agent suspended, an owner removed, labels gained, policies or keys changed) is
//! written in the same transaction as its audit event, and the audit log is one chain whose
//! sequence numbers are handed out in commit order under a row lock. So a replica learns every
//! other replica's changes, and misses none, by reading the audit log past the last sequence
//! number it applied: whenever a writer's commit notifies it (PostgreSQL `NOTIFY`, sent in the
//! committing transaction), and every `follow_interval` in any case (catching up in pages after
//! a gap); then it re-reads the rows each event names.
//!
//! A replica that cannot read the log refuses decisions once its view is older than
//! `max_staleness`: it cannot prove a task was not revoked elsewhere meanwhile. It recovers on
//! the next successful read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use mandate_core::audit::{AuditEvent, EventKind};
use mandate_core::{AgentId, Task, TaskId, TaskState};
use mandate_store::StoreError;

use crate::Broker;

/// Records read per catch-up page.
const PAGE: i64 = 2000;
/// How long a woken replica lets further commits gather before it reads the log.
const GATHER: Duration = Duration::from_millis(3);

/// Where this replica is in the shared log.
#[derive(Debug, Default)]
pub(crate) struct Follower {
    enabled: AtomicBool,
    /// Last sequence number applied.
    seq: AtomicI64,
    /// When the log was last read successfully (ms since the epoch, by the broker's clock).
    synced_ms: AtomicI64,
}

impl Broker {
    /// Makes this broker one replica among several on a shared store: from now on it follows
    /// the others' changes (call [`Broker::follow`] to run the loop) and refuses decisions when
    /// it has lost the store for longer than `max_staleness`.
    pub async fn enable_replication(&self) -> Result<(), StoreError> {
        let head = self.store.audit_head().await?.map_or(0, |(s, _)| s);
        self.follower.seq.store(head, Ordering::SeqCst);
        self.follower
            .synced_ms
            .store(self.now().0, Ordering::SeqCst);
        self.follower.enabled.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Follows the shared log until the process ends: woken by the store's notifications of
    /// other writers' commits (PostgreSQL `LISTEN`), and every `follow_interval` whatever
    /// happens, so a lost notification or subscription delays a change by one interval at most.
    pub async fn follow(self: Arc<Self>) {
        let mut failing = false;
        let mut changes: Option<mandate_store::Changes> = None;
        loop {
            if changes.is_none() {
                changes = match self.store.changes().await {
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "no change notifications; polling");
                        None
                    }
                    None => None,
                };
            }
            match self.follow_once().await {
                Ok(n) => {
                    if failing {
                        tracing::info!("store reachable again; following other replicas");
                        failing = false;
                    }
                    if n as i64 == PAGE {
                        continue;
                    }
                }
                Err(e) => {
                    self.lost_store();
                    if !failing {
                        tracing::error!(error = %e, "cannot read the shared audit log; decisions stop when this view goes stale");
                        failing = true;
                    }
                }
            }
            let interval = Duration::from_millis(self.cfg.follow_interval_ms);
            match changes.as_mut() {
                Some(c) => match tokio::time::timeout(interval, c.next()).await {
                    Ok(Ok(())) => {
                        // Let a burst of commits gather: one read then covers them all, and a
                        // busy database costs each replica at most a few hundred reads a second.
                        tokio::time::sleep(GATHER).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "change notifications lost; resubscribing");
                        changes = None;
                    }
                    Err(_) => {}
                },
                None => tokio::time::sleep(interval).await,
            }
        }
    }

    /// Applies what other replicas committed since the last call; returns how many records
    /// were read.
    pub async fn follow_once(&self) -> Result<usize, StoreError> {
        let started = self.now();
        let from = self.follower.seq.load(Ordering::SeqCst) + 1;
        let page = self.store.audit_range(from, PAGE).await?;
        let events: Vec<(i64, Option<AuditEvent>)> = page
            .iter()
            .map(|r| match r.event() {
                Ok(e) => (r.seq, Some(e)),
                Err(e) => {
                    tracing::error!(seq = r.seq, error = %e, "unreadable audit record skipped");
                    (r.seq, None)
                }
            })
            .collect();
        // The tasks this page changed elsewhere, read in one query rather than one each.
        let wanted: Vec<TaskId> = events
            .iter()
            .filter_map(|(_, e)| e.as_ref())
            .filter_map(|e| self.task_to_read(e))
            .collect();
        let fetched: HashMap<TaskId, Task> = self
            .store
            .tasks_by_id(&wanted)
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        for (seq, e) in &events {
            if let Some(e) = e {
                self.apply_remote(e, &fetched).await?;
            }
            self.follower.seq.store(*seq, Ordering::SeqCst);
        }
        self.follower.synced_ms.store(started.0, Ordering::SeqCst);
        metrics::gauge!("mandate_replication_seq")
            .set(self.follower.seq.load(Ordering::SeqCst) as f64);
        Ok(page.len())
    }

    /// Whether this broker is one replica among several on a shared store.
    pub(crate) fn replicated(&self) -> bool {
        self.follower.enabled.load(Ordering::Relaxed)
    }

    /// Marks this replica's view as unproven at once: the store just failed, so changes other
    /// replicas make cannot reach it. Decisions stop until the log is read again.
    pub(crate) fn lost_store(&self) {
        if self.follower.enabled.load(Ordering::Relaxed) {
            self.follower
                .synced_ms
                .store(i64::MIN / 2, Ordering::SeqCst);
        }
    }

    /// When replicated and the last successful read of the log is older than allowed, why
    /// decisions must stop.
    pub(crate) fn stale(&self) -> Option<String> {
        if !self.follower.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let age = self.now().0 - self.follower.synced_ms.load(Ordering::Relaxed);
        (age > self.cfg.max_staleness_ms).then(|| {
            "this replica has lost the store: it cannot prove the task is still active, so it decides nothing until it reaches the store again".to_string()
        })
    }

    /// The task an event names whose stored row this replica must read to apply it; `None`
    /// when the event changes no task or the change is already in memory (this replica's own).
    fn task_to_read(&self, e: &AuditEvent) -> Option<TaskId> {
        // A call's own labels, and what a report added to its provenance, are written with it.
        let flow = ["flow_added", "third_party_values"]
            .iter()
            .any(|k| e.detail.get(k).is_some_and(|v| !v.is_null()));
        let relevant = match e.kind {
            EventKind::TaskOpened
            | EventKind::TaskCompleted
            | EventKind::TaskExpired
            | EventKind::TaskRevoked => true,
            EventKind::Decision | EventKind::FlowReported | EventKind::GatewayCall => flow,
            _ => false,
        };
        let id = e.task.as_deref().filter(|_| relevant)?;
        if let Some(entry) = self.inventory.task(id) {
            let state = entry.read().state;
            let nothing_new = match e.kind {
                EventKind::TaskOpened => true,
                EventKind::TaskCompleted | EventKind::TaskExpired | EventKind::TaskRevoked => {
                    state != TaskState::Active
                }
                _ => false,
            };
            if nothing_new {
                return None;
            }
        }
        TaskId::parse(id).ok()
    }

    async fn apply_remote(
        &self,
        e: &AuditEvent,
        fetched: &HashMap<TaskId, Task>,
    ) -> Result<(), StoreError> {
        match e.kind {
            EventKind::TaskOpened
            | EventKind::TaskCompleted
            | EventKind::TaskExpired
            | EventKind::TaskRevoked
            | EventKind::Decision
            | EventKind::FlowReported
            | EventKind::GatewayCall => {
                if let Some(id) = self.task_to_read(e) {
                    let stored = match fetched.get(&id) {
                        Some(t) => Some(t.clone()),
                        None => self.store.task(&id).await?,
                    };
                    if let Some(t) = stored {
                        self.refresh_task(t);
                    }
                }
            }
            EventKind::AgentAdded
            | EventKind::AgentSuspended
            | EventKind::AgentResumed
            | EventKind::AgentConfirmed => {
                if let Some(id) = e.agent.as_deref().and_then(|a| AgentId::parse(a).ok()) {
                    if let Some(a) = self.store.agent(&id).await? {
                        if a.status == mandate_core::AgentStatus::Suspended {
                            // Its tasks' revocations follow in the log; end them here now.
                            let reason = e.reason.clone().unwrap_or_default();
                            for t in self
                                .inventory
                                .tasks_where(|t| t.state == TaskState::Active && t.agent == id)
                            {
                                t.end(TaskState::Revoked, e.time, &reason);
                            }
                        }
                        self.inventory.put_agent(a);
                    }
                    self.rebuild_entities();
                }
            }
            EventKind::OwnerAdded | EventKind::OwnerRemoved => {
                for o in self.inventory.owners() {
                    if self.store.owner(&o.id).await?.is_none() {
                        self.inventory.remove_owner(&o.id);
                    }
                }
                for o in self.store.owners().await? {
                    self.inventory.put_owner(o);
                }
                for a in self.store.agents().await? {
                    self.inventory.put_agent(a);
                }
                self.rebuild_entities();
            }
            EventKind::PolicyLoaded => {
                let theirs = e.detail.get("policy_digest").and_then(|d| d.as_str());
                let ours = self.policy.current().digest().to_string();
                if theirs.is_some_and(|d| d != ours)
                    && let Err(err) = self.reload_policies(Some("replica")).await
                {
                    tracing::error!(error = %err, "another replica loaded policies this one cannot");
                }
            }
            EventKind::KeyRotated => self.reload_keys().await,
            EventKind::SecretSet | EventKind::SecretDeleted => {
                if let Some(name) = e.resource.as_deref() {
                    self.forget_secret(name.trim_start_matches("secret:"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Brings one task in line with its stored row: ends it here when it ended elsewhere,
    /// adopts a task opened elsewhere, and takes on labels gained elsewhere.
    fn refresh_task(&self, stored: Task) {
        match self.inventory.task(stored.id.as_str()) {
            None => {
                if stored.state == TaskState::Active {
                    self.inventory.put_task(stored);
                }
            }
            Some(entry) => {
                if stored.state != TaskState::Active {
                    let at = stored.ended_at.unwrap_or_else(|| self.now());
                    let reason = stored.end_reason.clone().unwrap_or_default();
                    if let Some(t) = entry.end(stored.state, at, &reason) {
                        // Ended elsewhere: what was delegated from it ends here too, and the
                        // replica that ended it records those.
                        for d in self.inventory.descendants(&t.id) {
                            d.end(TaskState::Revoked, at, &reason);
                        }
                    }
                } else {
                    let mut t = entry.write();
                    t.flow.absorb(&stored.flow);
                    t.provenance = stored.provenance.clone();
                }
            }
        }
    }
}

/// Default poll interval of the follower, in milliseconds.
pub const DEFAULT_FOLLOW_INTERVAL_MS: u64 = 100;
/// Default longest a replica decides without having read the shared log, in milliseconds.
pub const DEFAULT_MAX_STALENESS_MS: i64 = 1000;
