//! A workflow as `mandate audit trace` and the console show it: the task that started it, every
//! task delegated from it, and the audit records of each.

use std::collections::BTreeMap;

use mandate_core::audit::{AuditEvent, AuditRecord};
use mandate_core::{Task, TaskId};

use crate::{Store, StoreError, TaskFilter};

/// Most tasks one workflow reads.
pub const MAX_WORKFLOW_TASKS: i64 = 10_000;

/// One task of a workflow, with what was recorded about it and the tasks it delegated to.
#[derive(Debug)]
pub struct WorkflowNode {
    /// The task.
    pub task: Task,
    /// Its audit records, in chain order, each with its decoded event.
    pub steps: Vec<(AuditRecord, AuditEvent)>,
    /// Tasks delegated from it, oldest first.
    pub children: Vec<WorkflowNode>,
}

/// The workflow that `task` belongs to.
#[derive(Debug)]
pub struct Workflow {
    /// The task asked about.
    pub task: Task,
    /// The task that started the workflow.
    pub root: TaskId,
    /// How many tasks the workflow holds.
    pub tasks: usize,
    /// How many distinct agents worked on it.
    pub agents: usize,
    /// The tree: the root task, plus delegated tasks whose parent is not in the store.
    pub tops: Vec<WorkflowNode>,
}

impl Workflow {
    /// Every node, depth first.
    pub fn nodes(&self) -> Vec<&WorkflowNode> {
        fn walk<'a>(n: &'a WorkflowNode, out: &mut Vec<&'a WorkflowNode>) {
            out.push(n);
            for c in &n.children {
                walk(c, out);
            }
        }
        let mut out = Vec::new();
        for t in &self.tops {
            walk(t, &mut out);
        }
        out
    }
}

/// Reads the workflow of task `id`; `keep` says which tasks the reader may see (the others and
/// their records are left out, their visible children hang from the top). `Ok(None)` when the
/// task does not exist.
pub async fn workflow(
    store: &Store,
    id: &TaskId,
    keep: impl Fn(&Task) -> bool,
) -> Result<Option<Workflow>, StoreError> {
    let Some(t) = store.task(id).await? else {
        return Ok(None);
    };
    let root = t.root().clone();
    let mut tasks = store
        .tasks(&TaskFilter {
            root: Some(root.clone()),
            limit: Some(MAX_WORKFLOW_TASKS),
            ..Default::default()
        })
        .await?;
    if !tasks.iter().any(|x| x.id == t.id) {
        tasks.push(t.clone());
    }
    tasks.retain(|x| keep(x));
    tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let ids: Vec<TaskId> = tasks.iter().map(|x| x.id.clone()).collect();
    let mut steps: BTreeMap<String, Vec<(AuditRecord, AuditEvent)>> = BTreeMap::new();
    for r in store.audit_for_tasks(&ids).await? {
        let e = r.event().map_err(|e| {
            StoreError::Corrupt(format!("audit record {} is unreadable: {e}", r.seq))
        })?;
        steps
            .entry(e.task.clone().unwrap_or_default())
            .or_default()
            .push((r, e));
    }
    let agents = tasks
        .iter()
        .map(|x| x.agent.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let count = tasks.len();
    let mut children: BTreeMap<Option<TaskId>, Vec<Task>> = BTreeMap::new();
    for x in tasks {
        // A task whose parent is not in the store (or not visible) hangs from the top.
        let parent = x
            .delegation
            .as_ref()
            .and_then(|d| d.parent())
            .filter(|p| ids.contains(p))
            .cloned();
        children.entry(parent).or_default().push(x);
    }
    fn build(
        t: Task,
        children: &mut BTreeMap<Option<TaskId>, Vec<Task>>,
        steps: &mut BTreeMap<String, Vec<(AuditRecord, AuditEvent)>>,
    ) -> WorkflowNode {
        let kids = children.remove(&Some(t.id.clone())).unwrap_or_default();
        let own = steps.remove(t.id.as_str()).unwrap_or_default();
        WorkflowNode {
            children: kids
                .into_iter()
                .map(|c| build(c, children, steps))
                .collect(),
            steps: own,
            task: t,
        }
    }
    let tops = children.remove(&None).unwrap_or_default();
    let tops = tops
        .into_iter()
        .map(|x| build(x, &mut children, &mut steps))
        .collect();
    Ok(Some(Workflow {
        task: t,
        root,
        tasks: count,
        agents,
        tops,
    }))
}
