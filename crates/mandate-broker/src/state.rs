//! What the broker holds in memory: the inventory and the live tasks. Decisions read only this.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cedar_policy::RestrictedExpression;
use mandate_core::{Agent, AgentId, Owner, OwnerId, Task, TaskId, TaskState, Timestamp};
use mandate_policy::TaskFacts;

/// A task in memory, with its policy-facing facts computed once.
#[derive(Debug)]
pub(crate) struct TaskEntry {
    task: RwLock<Task>,
    pub facts: RestrictedExpression,
}

impl TaskEntry {
    pub fn new(task: Task) -> Self {
        let facts = task_facts(&task)
            .to_cedar()
            .unwrap_or_else(|_| RestrictedExpression::new_string(String::new()));
        TaskEntry {
            task: RwLock::new(task),
            facts,
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Task> {
        self.task
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Task> {
        self.task
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the task if it is still active: returns the task as it was ended, or `None` if it had
    /// already ended. The state flips in memory first, so no decision taken after this call can
    /// see the task active.
    pub fn end(&self, state: TaskState, at: Timestamp, reason: &str) -> Option<Task> {
        let mut t = self.write();
        if t.state != TaskState::Active {
            return None;
        }
        t.state = state;
        t.ended_at = Some(at);
        t.end_reason = Some(reason.to_string());
        Some(t.clone())
    }
}

pub(crate) fn task_facts(task: &Task) -> TaskFacts {
    TaskFacts {
        id: task.id.to_string(),
        intent: task.intent.text.clone(),
        intent_class: task.intent.class.clone(),
        granted: task.scope.tokens(),
        ttl_seconds: (task.expires_at.0 - task.created_at.0).div_euclid(1000),
        budget: task.budget,
        depth: i64::try_from(task.depth()).unwrap_or(i64::MAX),
        delegated_by: task
            .delegation
            .as_ref()
            .map(|d| d.agents.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A delegated task, as its parent's entry in the delegation index lists it.
type Child = (TaskId, Arc<TaskEntry>);

/// Owners, agents and tasks.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    owners: RwLock<HashMap<OwnerId, Owner>>,
    agents: RwLock<HashMap<AgentId, Agent>>,
    tasks: RwLock<HashMap<TaskId, Arc<TaskEntry>>>,
    /// Delegated tasks by parent. A workflow's tree is walked through this index alone, without
    /// the task map's lock or any task's, so it is safe while holding a task's lock.
    children: RwLock<HashMap<TaskId, Vec<Child>>>,
}

impl Inventory {
    pub fn owner(&self, id: &OwnerId) -> Option<Owner> {
        read(&self.owners).get(id).cloned()
    }

    pub fn owners(&self) -> Vec<Owner> {
        let mut v: Vec<Owner> = read(&self.owners).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn put_owner(&self, o: Owner) {
        write(&self.owners).insert(o.id.clone(), o);
    }

    pub fn remove_owner(&self, id: &OwnerId) {
        write(&self.owners).remove(id);
    }

    pub fn agent(&self, id: &AgentId) -> Option<Agent> {
        read(&self.agents).get(id).cloned()
    }

    /// An agent's tier, without copying the whole registration.
    pub fn tier(&self, id: &AgentId) -> Option<mandate_core::Tier> {
        read(&self.agents).get(id).map(|a| a.tier)
    }

    pub fn agents(&self) -> Vec<Agent> {
        let mut v: Vec<Agent> = read(&self.agents).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn put_agent(&self, a: Agent) {
        write(&self.agents).insert(a.id.clone(), a);
    }

    pub fn task(&self, id: &str) -> Option<Arc<TaskEntry>> {
        // Task ids are parsed on insert; a lookup by an unparsable id simply finds nothing.
        let id = TaskId::parse(id).ok()?;
        read(&self.tasks).get(&id).cloned()
    }

    pub fn put_task(&self, t: Task) -> Arc<TaskEntry> {
        let parent = t.delegation.as_ref().and_then(|d| d.parent()).cloned();
        let entry = Arc::new(TaskEntry::new(t));
        let id = entry.read().id.clone();
        write(&self.tasks).insert(id.clone(), entry.clone());
        if let Some(parent) = parent {
            let mut children = write(&self.children);
            let list = children.entry(parent).or_default();
            list.retain(|(c, _)| *c != id);
            list.push((id, entry.clone()));
        }
        entry
    }

    /// Every task delegated from `id`, directly or further down, parents before children.
    /// Takes no task's lock.
    pub fn descendants(&self, id: &TaskId) -> Vec<Arc<TaskEntry>> {
        let children = read(&self.children);
        let mut seen: Vec<&TaskId> = Vec::new();
        let mut out = Vec::new();
        let mut next = std::collections::VecDeque::from([id]);
        while let Some(at) = next.pop_front() {
            for (c, entry) in children.get(at).into_iter().flatten() {
                if !seen.contains(&c) {
                    seen.push(c);
                    out.push(entry.clone());
                    next.push_back(c);
                }
            }
        }
        out
    }

    /// Live tasks matching `pred`.
    pub fn tasks_where(&self, pred: impl Fn(&Task) -> bool) -> Vec<Arc<TaskEntry>> {
        read(&self.tasks)
            .values()
            .filter(|e| pred(&e.read()))
            .cloned()
            .collect()
    }

    /// Forgets ended tasks whose credentials can no longer be presented anyway.
    pub fn evict(&self, before: Timestamp) {
        let kept: std::collections::HashSet<TaskId> = {
            let mut tasks = write(&self.tasks);
            tasks.retain(|_, e| {
                let t = e.read();
                t.state == TaskState::Active || t.expires_at >= before
            });
            tasks.keys().cloned().collect()
        };
        write(&self.children).retain(|parent, list| {
            list.retain(|(c, _)| kept.contains(c));
            kept.contains(parent) || !list.is_empty()
        });
    }

    pub fn task_count(&self) -> usize {
        read(&self.tasks).len()
    }
}
