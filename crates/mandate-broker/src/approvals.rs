//! Human approval: a `needs_approval` decision opens a request for that exact call; a person's
//! grant lets that call through once, before it expires. Reusing a grant, or using it for other
//! arguments, is denied.

use std::sync::Arc;
use std::time::Duration;

use mandate_core::approval::{Approval, ApprovalState, call_hash};
use mandate_core::audit::EventKind;
use mandate_core::{TaskState, Tier};
use mandate_policy::{ApprovalQuery, Approver, Labels, Outcome, Verdict};
use mandate_store::{ApprovalFilter, Op, StoreError};

use crate::Broker;
use crate::admin::Principal;
use crate::decide::{DecideInput, Step, record_allowed, target_label};
use crate::error::{AdminError, DecideError};
use crate::state::TaskEntry;

fn unavailable(e: StoreError) -> DecideError {
    DecideError::Unavailable(format!("approval state could not be read or written: {e}"))
}

impl Broker {
    /// Resolves a `needs_approval` verdict: uses a matching grant, or opens (or finds) the
    /// pending request and, if asked to, waits for a person.
    pub(crate) async fn approval_path(
        &self,
        entry: &Arc<TaskEntry>,
        input: &DecideInput,
        step: &mut Step,
        labels: Option<&Labels>,
    ) -> Result<(), DecideError> {
        let (task_id, agent, owner) = {
            let t = entry.read();
            (t.id.clone(), t.agent.clone(), t.owner.clone())
        };
        let args = serde_json::Value::Object(input.arguments.clone());
        let hash = call_hash(&task_id, &input.action, &input.target.id, &args);
        let now = self.now();
        let deny = |reason: String| Verdict::deny("mandate:approval", reason);
        let mut approval = match &input.approval_id {
            Some(id) => match self.store.approval(id).await.map_err(unavailable)? {
                None => {
                    step.verdict = deny(format!("approval `{id}` does not exist"));
                    return Ok(());
                }
                Some(a) if a.task != task_id => {
                    step.verdict = deny(format!("approval `{id}` belongs to another task"));
                    return Ok(());
                }
                Some(a) if a.call_hash != hash => {
                    step.verdict = deny(format!(
                        "approval `{id}` covers a different call (action, target or arguments differ)"
                    ));
                    return Ok(());
                }
                Some(a) => a,
            },
            None => {
                let filter = ApprovalFilter {
                    task: Some(task_id.clone()),
                    ..ApprovalFilter::default()
                };
                let live: Vec<Approval> = self
                    .store
                    .approvals(&filter)
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .filter(|a| {
                        matches!(a.state, ApprovalState::Pending | ApprovalState::Granted)
                            && !a.expired(now)
                    })
                    .collect();
                let pending = live
                    .iter()
                    .filter(|a| a.state == ApprovalState::Pending)
                    .count();
                match live.into_iter().find(|a| a.call_hash == hash) {
                    Some(a) => a,
                    None if pending >= self.cfg.approval_max_open_per_task => {
                        // A task must not flood the people in the loop with requests.
                        step.verdict = Verdict::deny(
                            "mandate:approval-limit",
                            format!(
                                "task `{task_id}` already has {pending} approval requests waiting for a person (limit {}); wait for them to be decided or to lapse",
                                self.cfg.approval_max_open_per_task
                            ),
                        );
                        return Ok(());
                    }
                    None => {
                        let tier = self
                            .inventory
                            .agent(&agent)
                            .map(|a| a.tier)
                            .unwrap_or(Tier::High);
                        let a = Approval {
                            id: format!("apr_{}", uuid::Uuid::new_v4().simple()),
                            task: task_id.clone(),
                            agent: agent.clone(),
                            owner: owner.clone(),
                            tier,
                            action: input.action.clone(),
                            target_kind: target_label(&input.target)
                                .split(':')
                                .next()
                                .unwrap_or("tool")
                                .to_string(),
                            target: input.target.id.clone(),
                            arguments: args.clone(),
                            call_hash: hash.clone(),
                            policies: step.verdict.policies.clone(),
                            reason: step.verdict.reason.clone(),
                            state: ApprovalState::Pending,
                            created_at: now,
                            expires_at: now.plus_secs(self.cfg.approval_ttl),
                            decided_at: None,
                            decided_by: None,
                            note: None,
                            used_at: None,
                        };
                        let mut e = self.event(EventKind::ApprovalRequested);
                        e.agent = Some(agent.to_string());
                        e.owner = owner.as_ref().map(ToString::to_string);
                        e.task = Some(task_id.to_string());
                        e.action = Some(input.action.clone());
                        e.resource = Some(target_label(&input.target));
                        e.policies = a.policies.clone();
                        e.reason = Some(a.reason.clone());
                        e.detail = serde_json::json!({
                            "approval_id": a.id,
                            "args_digest": mandate_core::approval::args_digest(&args),
                        });
                        self.store
                            .commit(vec![Op::InsertApproval(a.clone()), Op::Audit(e)])
                            .await
                            .map_err(unavailable)?;
                        self.announce(&a);
                        a
                    }
                }
            }
        };
        let wait = input
            .wait
            .min(u64::try_from(self.cfg.approval_max_wait).unwrap_or(0));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        loop {
            let now = self.now();
            match approval.state {
                _ if approval.expired(now) => {
                    step.verdict = deny(format!("approval `{}` has expired", approval.id));
                    return Ok(());
                }
                ApprovalState::Used => {
                    step.verdict = deny(format!("approval `{}` was already used", approval.id));
                    return Ok(());
                }
                ApprovalState::Denied => {
                    step.verdict = deny(format!(
                        "approval `{}` was denied by {}{}",
                        approval.id,
                        approval.decided_by.as_deref().unwrap_or("a person"),
                        approval
                            .note
                            .as_deref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    ));
                    return Ok(());
                }
                ApprovalState::Granted => {
                    return self
                        .use_grant(entry, approval, step, labels, &input.target.id)
                        .await;
                }
                ApprovalState::Pending => {}
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            // Woken when someone decides here; the store is re-read on a timer as well, so a
            // decision taken on another replica is seen too.
            let changed = self.approvals_changed.notified();
            let _ = tokio::time::timeout(remaining.min(Duration::from_millis(500)), changed).await;
            approval = match self
                .store
                .approval(&approval.id)
                .await
                .map_err(unavailable)?
            {
                Some(a) => a,
                None => break,
            };
        }
        step.verdict.reason = format!(
            "{} (approval `{}` is pending)",
            step.verdict.reason, approval.id
        );
        step.approval_id = Some(approval.id);
        Ok(())
    }

    /// Spends a grant on the call it covers, then lets the call through.
    async fn use_grant(
        &self,
        entry: &Arc<TaskEntry>,
        mut approval: Approval,
        step: &mut Step,
        labels: Option<&Labels>,
        target: &str,
    ) -> Result<(), DecideError> {
        let now = self.now();
        approval.state = ApprovalState::Used;
        approval.used_at = Some(now);
        let spent = self
            .store
            .commit(vec![Op::UpdateApproval {
                approval: approval.clone(),
                from: ApprovalState::Granted,
            }])
            .await;
        match spent {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                step.verdict = Verdict::deny(
                    "mandate:approval",
                    format!("approval `{}` was already used", approval.id),
                );
                return Ok(());
            }
            Err(e) => return Err(unavailable(e)),
        }
        let mut task = entry.write();
        if task.state != TaskState::Active {
            step.verdict = Verdict::deny(
                "mandate:task-state",
                format!("task `{}` is {}", task.id, task.state),
            );
            return Ok(());
        }
        step.added = record_allowed(&mut task, target, labels, now);
        if !step.added.is_empty() {
            step.ops.push(Op::UpdateTask(task.clone()));
        }
        let mut policies = std::mem::take(&mut step.verdict.policies);
        policies.push(format!("approval:{}", approval.id));
        step.verdict = Verdict {
            outcome: Outcome::Allow,
            policies,
            reason: format!(
                "allowed once by approval `{}` granted by {}",
                approval.id,
                approval.decided_by.as_deref().unwrap_or("a person")
            ),
        };
        step.approval_id = Some(approval.id);
        Ok(())
    }

    /// Approval requests the principal may see: all for admins, those of its agents for an
    /// owner.
    pub async fn approvals(
        &self,
        p: &Principal,
        state: Option<&str>,
    ) -> Result<Vec<Approval>, AdminError> {
        let mut filter = ApprovalFilter {
            limit: Some(1000),
            ..ApprovalFilter::default()
        };
        if let Some(s) = state {
            filter.state = Some(s.parse().map_err(AdminError::BadRequest)?);
        }
        if let Principal::Owner { owner, .. } = p {
            filter.owner = Some(owner.clone());
        }
        Ok(self.store.approvals(&filter).await?)
    }

    /// One approval request.
    pub async fn approval(&self, p: &Principal, id: &str) -> Result<Approval, AdminError> {
        let a = self.store.approval(id).await?.ok_or_else(|| {
            AdminError::NotFound(format!(
                "approval `{}` does not exist",
                id.chars().take(64).collect::<String>()
            ))
        })?;
        if let Principal::Owner { owner, .. } = p
            && a.owner.as_ref() != Some(owner)
        {
            return Err(AdminError::Forbidden(
                "the approval request concerns another owner's agent".into(),
            ));
        }
        Ok(a)
    }

    /// A person grants or refuses an approval request. Who may is decided by policy (action
    /// `approve`); by default only the agent's owner.
    pub async fn decide_approval(
        &self,
        p: &Principal,
        id: &str,
        grant: bool,
        note: Option<String>,
    ) -> Result<Approval, AdminError> {
        let a = self.approval(p, id).await?;
        let now = self.now();
        if a.state != ApprovalState::Pending {
            return Err(AdminError::Conflict(format!(
                "approval `{}` is already {}",
                a.id,
                a.state.as_str()
            )));
        }
        if a.expired(now) {
            return Err(AdminError::Conflict(format!(
                "approval `{}` has expired",
                a.id
            )));
        }
        let note: Option<String> = note.map(|n| n.chars().take(512).collect());
        let approver = match p {
            Principal::Owner { owner, .. } => Approver::Owner(owner.as_str()),
            Principal::Admin { name, .. } => Approver::Admin(name.as_str()),
        };
        let verdict = self.policy.current().may_approve(
            &self.entities.load(),
            &ApprovalQuery {
                approver,
                approval_id: &a.id,
                owner: a.owner.as_ref().map(|o| o.as_str()),
                agent: a.agent.as_str(),
                tier: a.tier.as_str(),
                action: &a.action,
                target: &a.target,
            },
        );
        if !verdict.allowed() {
            return Err(AdminError::Forbidden(format!(
                "{} may not decide approval `{}`: {}",
                p.name(),
                a.id,
                verdict.reason
            )));
        }
        let mut decided = a.clone();
        decided.state = if grant {
            ApprovalState::Granted
        } else {
            ApprovalState::Denied
        };
        decided.decided_at = Some(now);
        decided.decided_by = Some(p.name());
        decided.note = note.clone();
        if grant {
            // A grant is good for one use within the approval lifetime from now.
            decided.expires_at = now.plus_secs(self.cfg.approval_ttl);
        }
        let mut e = self.event(if grant {
            EventKind::ApprovalGranted
        } else {
            EventKind::ApprovalDenied
        });
        e.actor = Some(p.name());
        e.agent = Some(a.agent.to_string());
        e.owner = a.owner.as_ref().map(ToString::to_string);
        e.task = Some(a.task.to_string());
        e.action = Some(a.action.clone());
        e.resource = Some(format!("{}:{}", a.target_kind, a.target));
        e.decision = Some(if grant { "granted" } else { "denied" }.into());
        e.policies = verdict.policies;
        e.reason = note;
        e.detail = serde_json::json!({ "approval_id": a.id });
        match self
            .store
            .commit(vec![
                Op::UpdateApproval {
                    approval: decided.clone(),
                    from: ApprovalState::Pending,
                },
                Op::Audit(e),
            ])
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(AdminError::Conflict(format!(
                    "approval `{}` was decided meanwhile",
                    a.id
                )));
            }
            Err(e) => return Err(AdminError::Unavailable(e.to_string())),
        }
        self.approvals_changed.notify_waiters();
        Ok(decided)
    }

    /// Announces a new approval request on the webhook, if one is configured. Deliveries are
    /// signed (HMAC-SHA256 of the body) and retried with doubling backoff.
    fn announce(&self, a: &Approval) {
        let body = serde_json::json!({
            "type": "approval.requested",
            "approval": a,
            "grant_url": format!("{}/admin/v1/approvals/{}/grant", self.cfg.issuer, a.id),
            "deny_url": format!("{}/admin/v1/approvals/{}/deny", self.cfg.issuer, a.id),
        })
        .to_string();
        self.deliver_webhook(a.id.clone(), body);
    }
}
