//! Reports from enforcement points about what a call returned. A PEP that sees a response (the
//! gateway does this by itself) tells Mandate which data classes were in it; they join the
//! task's flow labels, so later calls are judged by what came back.

use mandate_core::audit::EventKind;
use mandate_core::flow::FlowAdded;
use mandate_store::Op;
use serde::Serialize;

use crate::Broker;
use crate::decide::{DpopInput, Target, target_label};
use crate::error::DecideError;

/// Most data classes in one report.
pub const MAX_REPORTED_CLASSES: usize = 64;

/// What a call returned, reported for a task.
#[derive(Clone, Debug)]
pub struct ReportInput {
    /// The task credential.
    pub token: String,
    /// Its DPoP proof, when the credential is key-bound.
    pub dpop: Option<DpopInput>,
    /// The client certificate of the connection it came over, when verified (mutual TLS).
    pub client_cert: Option<crate::ClientCert>,
    /// The tool or resource whose output this was.
    pub target: Option<Target>,
    /// Data classes seen in the output.
    pub data_classes: Vec<String>,
    /// The output itself (or its text), when it carries third-party content: the values in it
    /// are remembered for argument provenance. Not stored, not audited.
    pub output: Option<String>,
    /// Whether the output is third-party content even if the catalog does not say so.
    pub third_party: bool,
}

/// The task's labels after a report.
#[derive(Clone, Debug, Serialize)]
pub struct ReportOutcome {
    /// The task.
    pub task_id: String,
    /// What the report added.
    pub added: FlowAdded,
    /// Every data class the task has read.
    pub data_read: Vec<String>,
    /// How many third-party values the output added to the task's provenance.
    pub remembered: usize,
}

fn check_class(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
}

/// Splits a JSON output into the text of the members named `fields` (at any depth) and the text
/// of the rest; `None` if it is not JSON.
fn split_fields(text: &str, fields: &[String]) -> Option<(String, String)> {
    fn walk(
        v: &serde_json::Value,
        inside: bool,
        fields: &[String],
        out: &mut (String, String),
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, item) in m {
                    walk(
                        item,
                        inside || fields.iter().any(|f| f == k),
                        fields,
                        out,
                        depth + 1,
                    );
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, inside, fields, out, depth + 1);
                }
            }
            serde_json::Value::Null => {}
            scalar => {
                let s = match scalar {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let into = if inside { &mut out.0 } else { &mut out.1 };
                into.push_str(&s);
                into.push('\n');
            }
        }
    }
    let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let mut out = (String::new(), String::new());
    walk(&v, false, fields, &mut out, 0);
    Some(out)
}

impl Broker {
    /// Adds reported data classes to a task's flow labels, and records the report.
    pub async fn report(&self, input: &ReportInput) -> Result<ReportOutcome, DecideError> {
        let bad = input.data_classes.len() > MAX_REPORTED_CLASSES
            || input.data_classes.iter().any(|c| !check_class(c))
            || input
                .output
                .as_ref()
                .is_some_and(|o| o.len() > mandate_core::provenance::MAX_SCAN);
        if bad {
            let msg = format!(
                "data_classes must be at most {MAX_REPORTED_CLASSES} labels of lowercase letters, digits, `_` or `-`, and output at most {} bytes",
                mandate_core::provenance::MAX_SCAN
            );
            self.record_rejected_request("/v1/report", &msg).await;
            return Err(DecideError::BadRequest(msg));
        }
        let probe = Target {
            kind: mandate_policy::TargetKind::Tool,
            id: "-".into(),
        };
        let (claims, entry) = self
            .credential_or_audit(
                &input.token,
                input.dpop.as_ref(),
                input.client_cert.as_ref(),
                "report",
                input.target.as_ref().unwrap_or(&probe),
            )
            .await?;
        self.record_report(&claims.task_id, &entry, input).await
    }

    /// Records what a call returned, on behalf of an enforcement point in this process that
    /// decided the call with [`Broker::decide_pending`] and records both at once: the labels
    /// change in memory now, and the task's new labels are written with the call's audit event
    /// when `pending` is committed.
    pub fn note_output(
        &self,
        pending: &mut crate::decide::PendingAudit,
        task_id: &str,
        input: &ReportInput,
    ) -> Option<ReportOutcome> {
        let entry = self.inventory.task(task_id)?;
        let (outcome, snapshot, _) = self.apply_report(task_id, &entry, input);
        if let Some(t) = snapshot {
            pending.push(Op::UpdateTask(t));
        }
        for op in self.share_labels(&entry, &outcome.added) {
            pending.push(op);
        }
        Some(outcome)
    }

    /// Changes the task's labels; returns the task to write back when they changed.
    fn apply_report(
        &self,
        task_id: &str,
        entry: &crate::state::TaskEntry,
        input: &ReportInput,
    ) -> (ReportOutcome, Option<mandate_core::Task>, bool) {
        let bundle = self.policy.current();
        let labels = input
            .target
            .as_ref()
            .and_then(|t| bundle.catalog().get(&t.id))
            .map(|(_, l)| l);
        let third_party = input.third_party || labels.is_some_and(|l| l.third_party_content);
        let fields = labels.map_or(&[][..], |l| l.third_party_fields.as_slice());
        let source = input
            .target
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_else(|| "reported".into());
        // Which parts of the output others wrote, and which the tool itself vouches for.
        let (others, own) = match &input.output {
            None => (None, None),
            Some(text) if third_party => (Some(text.clone()), None),
            Some(text) if !fields.is_empty() => match split_fields(text, fields) {
                Some((others, own)) => (Some(others), Some(own)),
                None => (Some(text.clone()), None),
            },
            Some(text) => (None, Some(text.clone())),
        };
        let mut task = entry.write();
        let added = task.flow.record_read(&input.data_classes);
        let remembered = others
            .as_deref()
            .map_or(0, |t| task.provenance.remember(t, &source));
        let trusted = own
            .as_deref()
            .map_or(0, |t| task.provenance.remember_trusted(t));
        let changed = !added.is_empty() || remembered > 0 || trusted > 0;
        // Values only trusted outputs showed need not be on disk before the answer: losing them
        // in a crash makes their destinations unknown, which fails closed.
        let urgent = !added.is_empty() || remembered > 0;
        let outcome = ReportOutcome {
            task_id: task_id.to_string(),
            added,
            data_read: task.flow.data_read.iter().cloned().collect(),
            remembered,
        };
        (outcome, changed.then(|| task.clone()), urgent)
    }

    /// Records what part of a streamed response carried, after the call's decision was
    /// committed: when the labels or provenance change, the change is committed (audited as
    /// `flow_reported`) before this returns, so the gateway releases that part only once a
    /// restart or another replica could not forget it.
    pub async fn note_output_now(
        &self,
        task_id: &str,
        input: &ReportInput,
    ) -> Result<ReportOutcome, DecideError> {
        let entry = self
            .inventory
            .task(task_id)
            .ok_or_else(|| DecideError::InvalidToken(format!("task `{task_id}` is not known")))?;
        let (outcome, snapshot, urgent) = self.apply_report(task_id, &entry, input);
        match snapshot {
            None => Ok(outcome),
            Some(t) if !urgent => {
                // Only trusted values were learnt: written behind the answer (see apply_report).
                self.store
                    .enqueue(vec![Op::UpdateTask(t)])
                    .await
                    .map_err(|e| DecideError::Unavailable(format!("the store is gone: {e}")))?;
                Ok(outcome)
            }
            Some(t) => self.commit_report(&entry, input, outcome, Some(t)).await,
        }
    }

    /// Records what became of a forwarded gateway call of `task_id` when it was not a plain
    /// success (see [`EventKind::GatewayResult`]), with `detail` (upstream, tool, outcome, …).
    pub async fn record_gateway_result(
        &self,
        task_id: &str,
        reason: Option<&str>,
        detail: serde_json::Map<String, serde_json::Value>,
    ) {
        let mut e = self.event(EventKind::GatewayResult);
        if let Some(entry) = self.inventory.task(task_id) {
            let task = entry.read();
            e.agent = Some(task.agent.to_string());
            e.owner = task.owner.as_ref().map(ToString::to_string);
            e.task = Some(task.id.to_string());
        }
        e.reason = reason.map(str::to_string);
        e.detail = serde_json::Value::Object(detail);
        self.audit_best_effort(e).await;
    }

    async fn record_report(
        &self,
        task_id: &str,
        entry: &std::sync::Arc<crate::state::TaskEntry>,
        input: &ReportInput,
    ) -> Result<ReportOutcome, DecideError> {
        let (outcome, snapshot, _) = self.apply_report(task_id, entry, input);
        self.commit_report(entry, input, outcome, snapshot).await
    }

    async fn commit_report(
        &self,
        entry: &std::sync::Arc<crate::state::TaskEntry>,
        input: &ReportInput,
        outcome: ReportOutcome,
        snapshot: Option<mandate_core::Task>,
    ) -> Result<ReportOutcome, DecideError> {
        let label = input
            .target
            .as_ref()
            .map(target_label)
            .unwrap_or_else(|| "-".into());
        let mut e = self.event(EventKind::FlowReported);
        {
            let task = entry.read();
            e.agent = Some(task.agent.to_string());
            e.owner = task.owner.as_ref().map(ToString::to_string);
            e.task = Some(task.id.to_string());
            e.intent = Some(task.intent.text.clone());
        }
        e.resource = Some(label);
        e.detail = serde_json::json!({
            "reported": input.data_classes,
            "flow_added": outcome.added,
            "third_party_values": outcome.remembered,
        });
        let mut ops = vec![Op::Audit(e)];
        if let Some(t) = snapshot {
            ops.push(Op::UpdateTask(t));
        }
        ops.extend(self.share_labels(entry, &outcome.added));
        self.store.commit(ops).await.map_err(|e| {
            DecideError::Unavailable(format!("the report could not be recorded: {e}"))
        })?;
        Ok(outcome)
    }
}
