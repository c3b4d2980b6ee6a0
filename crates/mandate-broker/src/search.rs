//! Searches (the AuthZEN search APIs over Mandate's model): what may this task do, on which
//! targets; and which agents' live tasks may do an action on a target. A search decides as a
//! decision would at this moment, but records nothing and spends no budget: every candidate is
//! judged on a copy of the task, without arguments (a target whose argument rules would pin a
//! call is found; the call itself is still judged with its arguments).

use mandate_core::TaskState;
use mandate_core::scope::{check_action, check_target};
use mandate_policy::{Outcome, TargetKind, args_to_cedar, json_to_cedar};

use crate::Broker;
use crate::admin::Principal;
use crate::decide::{DecideInput, DpopInput, Target};
use crate::error::{AdminError, DecideError};

/// Most results a search returns in all (pages are cut from these).
pub const MAX_RESULTS: usize = 1000;

impl Broker {
    /// The targets of `kind` (any kind when `None`) that the task of `token` may act on with
    /// `action` now, sorted by name.
    pub async fn search_targets(
        &self,
        token: &str,
        dpop: Option<&DpopInput>,
        cert: Option<&crate::ClientCert>,
        action: &str,
        kind: Option<TargetKind>,
    ) -> Result<Vec<Target>, DecideError> {
        check_action(action).map_err(|e| DecideError::BadRequest(e.to_string()))?;
        let view = self.task_view(token, dpop, cert).await?;
        let candidates: Vec<Target> = view
            .scope
            .pairs()
            .filter(|(a, _)| *a == action)
            .map(|(_, t)| Target {
                kind: self.kind_of(t, kind),
                id: t.to_string(),
            })
            .filter(|t| kind.is_none_or(|k| k == t.kind))
            .collect();
        Ok(self
            .probe(
                &view.task_id,
                candidates.into_iter().map(|t| (action.to_string(), t)),
            )
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    /// The actions the task of `token` may take on `target` now, sorted.
    pub async fn search_actions(
        &self,
        token: &str,
        dpop: Option<&DpopInput>,
        cert: Option<&crate::ClientCert>,
        target: &Target,
    ) -> Result<Vec<String>, DecideError> {
        check_target(&target.id).map_err(|e| DecideError::BadRequest(e.to_string()))?;
        let view = self.task_view(token, dpop, cert).await?;
        let candidates: Vec<(String, Target)> = view
            .scope
            .pairs()
            .filter(|(_, t)| *t == target.id)
            .map(|(a, _)| (a.to_string(), target.clone()))
            .collect();
        Ok(self
            .probe(&view.task_id, candidates.into_iter())
            .into_iter()
            .map(|(a, _)| a)
            .collect())
    }

    /// The agents with a live task that may take `action` on `target` now, sorted; only the
    /// agents `who` may see (an owner: its own; an admin: all).
    pub fn search_subjects(
        &self,
        who: &Principal,
        action: &str,
        target: &Target,
    ) -> Result<Vec<String>, AdminError> {
        check_action(action).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        check_target(&target.id).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let now = self.now();
        let tasks = self.inventory.tasks_where(|t| {
            t.state == TaskState::Active
                && t.expires_at > now
                && t.scope.allows(action, &target.id)
                && match who {
                    Principal::Admin { .. } => true,
                    Principal::Owner { owner, .. } => t.owner.as_ref() == Some(owner),
                }
        });
        let mut agents: Vec<String> = Vec::new();
        for entry in tasks {
            let task_id = entry.read().id.to_string();
            let allowed = !self
                .probe(
                    &task_id,
                    std::iter::once((action.to_string(), target.clone())),
                )
                .is_empty();
            if allowed {
                agents.push(entry.read().agent.to_string());
            }
        }
        agents.sort();
        agents.dedup();
        agents.truncate(MAX_RESULTS);
        Ok(agents)
    }

    /// The catalogued kind of `target`, else the kind asked for, else a tool.
    fn kind_of(&self, target: &str, asked: Option<TargetKind>) -> TargetKind {
        self.policy
            .current()
            .catalog()
            .get(target)
            .map(|(k, _)| k)
            .or(asked)
            .unwrap_or(TargetKind::Tool)
    }

    /// The (action, target) pairs a task may take now, judged on a copy of the task.
    fn probe(
        &self,
        task_id: &str,
        candidates: impl Iterator<Item = (String, Target)>,
    ) -> Vec<(String, Target)> {
        let Some(entry) = self.inventory.task(task_id) else {
            return Vec::new();
        };
        let mut task = entry.read().clone();
        let bundle = self.policy.current();
        let now = self.now();
        let empty = serde_json::Map::new();
        let (Ok(request), Ok(args)) = (
            json_to_cedar(&serde_json::Value::Object(empty.clone()), "context"),
            args_to_cedar(&empty),
        ) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Target)> = candidates
            .filter(|(action, target)| {
                let input = DecideInput {
                    token: String::new(),
                    dpop: None,
                    client_cert: None,
                    action: action.clone(),
                    target: target.clone(),
                    context: serde_json::Map::new(),
                    arguments: serde_json::Map::new(),
                    approval_id: None,
                    wait: 0,
                };
                let verdict = self.judge(
                    &mut task,
                    &entry,
                    &bundle,
                    &input,
                    &args,
                    request.clone(),
                    now,
                    true,
                );
                verdict.outcome == Outcome::Allow
            })
            .take(MAX_RESULTS)
            .collect();
        out.sort_by(|a, b| (&a.1.id, &a.0).cmp(&(&b.1.id, &b.0)));
        out
    }
}
