//! The governance view: per agent, what it can do now, what it did lately, and what needs a
//! person's look (orphaned, dormant, wide envelope, unconfirmed, standing privilege); and owner
//! accountability, where an owner re-confirms each agent every N days.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use mandate_core::audit::EventKind;
use mandate_core::{Agent, AgentId, AgentStatus, Task, TaskState, Timestamp};
use mandate_policy::Verdict;
use mandate_store::Op;

use crate::Broker;
use crate::admin::{Activity, AgentView, Principal};
use crate::error::AdminError;

const DAY_MS: i64 = 86_400_000;
/// Longest activity window the governance view counts.
pub const MAX_WINDOW_DAYS: i64 = 366;

impl Broker {
    /// Catalog targets labelled `high`-risk writes that the agent's envelope reaches.
    pub(crate) fn high_risk_writes(&self, agent: &Agent) -> Vec<String> {
        let bundle = self.policy.current();
        bundle
            .catalog()
            .entries()
            .filter(|(_, _, l)| {
                l.risk.as_deref() == Some("high") && l.side_effect.as_deref() == Some("write")
            })
            .filter(|(name, _, _)| agent.envelope.has_target(name))
            .map(|(name, _, _)| name.clone())
            .collect()
    }

    /// When the owner must confirm `agent` again, if re-confirmation is required.
    pub(crate) fn confirmation_due(&self, agent: &Agent) -> Option<Timestamp> {
        let days = self.cfg.reconfirm_days?;
        let since = agent.confirmed_at.unwrap_or(agent.created_at);
        Some(Timestamp(
            since.0.saturating_add(days.saturating_mul(DAY_MS)),
        ))
    }

    /// The agent's live credentials that outlive what is allowed now: past their expiry,
    /// longer-lived than any task may be, or no longer admitted by the policies in force.
    /// Tasks end when any of that happens, so this is 0 unless something is broken.
    pub(crate) fn standing_privilege(&self, agent: &Agent) -> u64 {
        let now = self.now();
        let max_ms = self.cfg.max_task_ttl.saturating_mul(1000);
        let live: Vec<Task> = self
            .inventory
            .tasks_where(|t| t.agent == agent.id && t.state == TaskState::Active)
            .iter()
            .map(|e| e.read().clone())
            .collect();
        let count = live
            .iter()
            .filter(|t| {
                t.expires_at <= now
                    || t.expires_at.0 - t.created_at.0 > max_ms
                    || agent.status == AgentStatus::Suspended
                    || !self.admit(agent, t).allowed()
            })
            .count();
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// Adds what each agent did in the window, and the `dormant` flag.
    pub(crate) async fn with_activity(
        &self,
        mut views: Vec<AgentView>,
        window_days: Option<i64>,
    ) -> Result<Vec<AgentView>, AdminError> {
        let days = window_days.unwrap_or(self.cfg.activity_window_days);
        if !(1..=MAX_WINDOW_DAYS).contains(&days) {
            return Err(AdminError::BadRequest(format!(
                "the activity window must be 1 to {MAX_WINDOW_DAYS} days"
            )));
        }
        let now = self.now();
        let activity: HashMap<AgentId, mandate_store::AgentActivity> = self
            .store
            .agent_activity(Timestamp(now.0 - days * DAY_MS))
            .await?
            .into_iter()
            .map(|a| (a.agent.clone(), a))
            .collect();
        let dormant_before = Timestamp(now.0 - self.cfg.dormant_days.saturating_mul(DAY_MS));
        let open_leases = self
            .store
            .leases(&mandate_store::LeaseFilter {
                open: true,
                limit: Some(10_000),
                ..Default::default()
            })
            .await?;
        let outliving = self.outliving(&open_leases).await?;
        for v in &mut views {
            v.leases = open_leases
                .iter()
                .filter(|l| l.agent == v.agent.id)
                .map(crate::leases::LeaseView::from)
                .collect();
            let stale = outliving.iter().filter(|l| l.agent == v.agent.id).count();
            if stale > 0 {
                v.standing_privilege += u64::try_from(stale).unwrap_or(u64::MAX);
                if !v.flags.iter().any(|f| f == "standing-privilege") {
                    v.flags.push("standing-privilege".into());
                }
            }
            let a = activity.get(&v.agent.id);
            let last_task = a.and_then(|a| a.last_task);
            if last_task.unwrap_or(v.agent.created_at) < dormant_before {
                v.flags.push("dormant".into());
            }
            v.activity = Some(Activity {
                window_days: days,
                allowed: a.map_or(0, |a| a.allowed),
                denied: a.map_or(0, |a| a.denied),
                needs_approval: a.map_or(0, |a| a.needs_approval),
                last_activity: a.and_then(|a| a.last_event),
                last_task,
            });
        }
        Ok(views)
    }

    /// The owner (or an admin) confirms the agent is still needed; starts a new period.
    pub async fn confirm_agent(&self, p: &Principal, id: &str) -> Result<AgentView, AdminError> {
        let mut agent = self.managed_agent(p, id)?;
        let now = self.now();
        agent.confirmed_at = Some(now);
        let mut e = self.event(EventKind::AgentConfirmed);
        e.actor = Some(p.name());
        e.agent = Some(agent.id.to_string());
        e.owner = agent.owner.as_ref().map(ToString::to_string);
        e.detail = serde_json::json!({
            "next_due": self.confirmation_due(&agent),
        });
        self.store
            .commit(vec![Op::UpdateAgent(agent.clone()), Op::Audit(e)])
            .await?;
        self.inventory.put_agent(agent.clone());
        self.reminded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(a, _)| *a != agent.id);
        Ok(self.view(agent))
    }

    /// Refuses a new task for an agent whose owner has not re-confirmed it in time.
    pub(crate) fn reconfirmation_gate(&self, agent: &Agent) -> Option<Verdict> {
        let due = self.confirmation_due(agent)?;
        (due <= self.now()).then(|| {
            Verdict::deny(
                "mandate:reconfirmation",
                format!(
                    "agent `{}` was due for its owner's re-confirmation at {}; it opens no task \
                     until confirmed (`mandate agent confirm {}`)",
                    agent.id,
                    due.rfc3339(),
                    agent.id
                ),
            )
        })
    }

    /// Reminds owners of agents due for re-confirmation within a week (or a quarter of the
    /// period, if shorter) and of agents already past due: one audit event, and one webhook
    /// delivery if configured, per agent and stage.
    pub(crate) async fn remind_confirmations(&self) {
        let Some(days) = self.cfg.reconfirm_days else {
            return;
        };
        let now = self.now();
        let ahead = (days.saturating_mul(DAY_MS) / 4).min(7 * DAY_MS);
        let mut due = Vec::new();
        for agent in self.inventory.agents() {
            if agent.is_orphaned() || agent.status == AgentStatus::Suspended {
                continue;
            }
            let Some(at) = self.confirmation_due(&agent) else {
                continue;
            };
            let stage = if at <= now {
                "lapsed"
            } else if at.0 - now.0 <= ahead {
                "due_soon"
            } else {
                continue;
            };
            let key = (agent.id.clone(), format!("{stage}:{}", at.0));
            let fresh = self
                .reminded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key);
            if fresh {
                due.push((agent, at, stage));
            }
        }
        for (agent, at, stage) in due {
            let mut e = self.event(EventKind::ConfirmationReminder);
            e.agent = Some(agent.id.to_string());
            e.owner = agent.owner.as_ref().map(ToString::to_string);
            e.reason = Some(if stage == "lapsed" {
                format!(
                    "agent `{}` is past its re-confirmation date; it opens no task until its owner confirms it",
                    agent.id
                )
            } else {
                format!(
                    "agent `{}` needs its owner's re-confirmation by {}",
                    agent.id,
                    at.rfc3339()
                )
            });
            e.detail = serde_json::json!({"due_at": at, "stage": stage});
            self.audit_best_effort(e).await;
            let body = serde_json::json!({
                "type": format!("agent.confirmation_{stage}"),
                "agent": agent.id,
                "owner": agent.owner,
                "due_at": at,
                "confirm_url": format!("{}/admin/v1/agents/{}/confirm", self.cfg.issuer, agent.id),
            });
            self.deliver_webhook(format!("confirm-{}-{stage}", agent.id), body.to_string());
        }
    }

    /// Posts `body` to the configured webhook, signed (HMAC-SHA256 of the body) and retried
    /// with doubling backoff. Does nothing without a webhook.
    pub(crate) fn deliver_webhook(&self, id: String, body: String) {
        let Some(hook) = self.cfg.webhook.clone() else {
            return;
        };
        let client = match self.http_client() {
            Ok(c) => c.clone(),
            Err(e) => {
                tracing::error!(error = %e, "webhook not sent");
                return;
            }
        };
        tokio::spawn(async move {
            let signature = mandate_crypto::secret::hmac_sha256_hex(
                hook.secret.expose().as_bytes(),
                body.as_bytes(),
            );
            let mut delay = Duration::from_millis(250);
            for attempt in 1..=hook.attempts.max(1) {
                let sent = client
                    .post(&hook.url)
                    .timeout(Duration::from_secs(5))
                    .header("content-type", "application/json")
                    .header("x-mandate-signature", format!("sha256={signature}"))
                    .header("x-mandate-delivery", format!("{id}/{attempt}"))
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), attempt, delivery = %id, "webhook refused")
                    }
                    Err(e) => tracing::warn!(error = %e, attempt, delivery = %id, "webhook failed"),
                }
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            tracing::error!(delivery = %id, "webhook gave up");
        });
    }
}

/// Reminders already sent, by agent and stage, so each is sent once per process.
pub(crate) type Reminded = std::sync::Mutex<BTreeSet<(AgentId, String)>>;
