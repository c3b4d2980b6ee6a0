//! Approval requests: a person's single-use yes or no for one exact call of one task.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::ids::{AgentId, OwnerId, TaskId};
use crate::model::Tier;

/// Where an approval request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// Granted, not yet used.
    Granted,
    /// Refused.
    Denied,
    /// Granted and used up by the call it covered.
    Used,
}

impl ApprovalState {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Granted => "granted",
            ApprovalState::Denied => "denied",
            ApprovalState::Used => "used",
        }
    }
}

impl std::str::FromStr for ApprovalState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(ApprovalState::Pending),
            "granted" => Ok(ApprovalState::Granted),
            "denied" => Ok(ApprovalState::Denied),
            "used" => Ok(ApprovalState::Used),
            other => Err(format!("approval state `{other}` is unknown")),
        }
    }
}

/// One approval request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Id, `apr_…`.
    pub id: String,
    /// The task asking.
    pub task: TaskId,
    /// Its agent.
    pub agent: AgentId,
    /// The agent's owner.
    pub owner: Option<OwnerId>,
    /// The agent's tier.
    pub tier: Tier,
    /// The action.
    pub action: String,
    /// `tool` or `resource`.
    pub target_kind: String,
    /// The tool or resource.
    pub target: String,
    /// The call's arguments, shown to the person deciding.
    pub arguments: serde_json::Value,
    /// [`call_hash`] of task, action, target and arguments: the exact call covered.
    pub call_hash: String,
    /// The approval gates that asked for it.
    pub policies: Vec<String>,
    /// Why approval is needed.
    pub reason: String,
    /// State.
    pub state: ApprovalState,
    /// When asked.
    pub created_at: Timestamp,
    /// When it lapses if not decided, or if granted and not used.
    pub expires_at: Timestamp,
    /// When decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// What the person said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the call it covered went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<Timestamp>,
}

impl Approval {
    /// Whether it has lapsed at `now` (pending or granted past its expiry).
    pub fn expired(&self, now: Timestamp) -> bool {
        matches!(self.state, ApprovalState::Pending | ApprovalState::Granted)
            && now >= self.expires_at
    }
}

/// JSON with object keys sorted at every level, so equal values hash equal whatever order the
/// caller sent them in.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(item) = m.get(*k) {
                        write(item, out);
                    }
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(v, &mut s);
    s
}

/// The digest of one exact call: task, action, target and arguments.
pub fn call_hash(task: &TaskId, action: &str, target: &str, args: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    for part in [task.as_str(), action, target, &canonical_json(args)] {
        h.update(part.len().to_string().as_bytes());
        h.update(b":");
        h.update(part.as_bytes());
    }
    crate::audit::hex(&h.finalize())
}

/// The digest of a call's arguments alone, for audit records that must not hold them.
pub fn args_digest(args: &serde_json::Value) -> String {
    crate::audit::hex(&Sha256::digest(canonical_json(args).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_hash_ignores_key_order_but_not_values() {
        let t = TaskId::parse("t1").unwrap();
        let a = serde_json::json!({"amount": 150, "to": {"x": 1, "y": 2}});
        let b: serde_json::Value =
            serde_json::from_str(r#"{"to": {"y": 2, "x": 1}, "amount": 150}"#).unwrap();
        assert_eq!(
            call_hash(&t, "call", "refund", &a),
            call_hash(&t, "call", "refund", &b)
        );
        let c = serde_json::json!({"amount": 151, "to": {"x": 1, "y": 2}});
        assert_ne!(
            call_hash(&t, "call", "refund", &a),
            call_hash(&t, "call", "refund", &c)
        );
        assert_ne!(
            call_hash(&t, "call", "refund", &a),
            call_hash(&t, "call", "refunds", &a)
        );
    }
}
