//! Owners, agents, tasks and their states.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{AgentId, OwnerId, TaskId};
use crate::scope::Scope;

/// Blast radius of an agent: what can go wrong if it misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Little harm possible.
    Low,
    /// Moderate harm possible.
    Medium,
    /// Serious harm possible: money, production, customer data.
    High,
}

impl Tier {
    /// The lowercase name used in config, policies and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Tier::Low),
            "medium" => Ok(Tier::Medium),
            "high" => Ok(Tier::High),
            other => Err(format!(
                "tier `{other}` is not one of `low`, `medium`, `high`"
            )),
        }
    }
}

/// The accountable person or team behind agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Id, e.g. `alice@example.com`.
    pub id: OwnerId,
    /// Display name.
    pub name: String,
    /// When the owner was added.
    pub created_at: Timestamp,
}

/// How an agent proves what it is. Proof of identity grants nothing by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Attestation {
    /// A client assertion (RFC 7523 `private_key_jwt`) signed with the agent's Ed25519 key.
    PrivateKeyJwt {
        /// The Ed25519 public key, base64url without padding (the JWK `x` value).
        public_key: String,
    },
    /// A JWT from an external issuer: an OIDC ID token or a SPIFFE JWT-SVID.
    ExternalJwt {
        /// Expected `iss`.
        issuer: String,
        /// Where the issuer's keys are: an `https://` or `http://` URL, or a file path.
        jwks: String,
        /// Expected `sub` (for SPIFFE, the SPIFFE ID).
        subject: String,
        /// Expected `aud`; defaults to Mandate's issuer URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
        /// Further claims that must equal the given strings (or, for array claims, contain them).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        claims: BTreeMap<String, String>,
    },
    /// An X.509-SVID presented over mutual TLS (RFC 8705 `tls_client_auth`): the certificate
    /// chains to a configured SPIFFE trust bundle and its one URI SAN is this SPIFFE ID.
    X509Svid {
        /// The SPIFFE ID, `spiffe://trust-domain/path`.
        spiffe_id: String,
    },
}

impl Attestation {
    /// A short name for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Attestation::PrivateKeyJwt { .. } => "private_key_jwt",
            Attestation::ExternalJwt { .. } => "external_jwt",
            Attestation::X509Svid { .. } => "x509_svid",
        }
    }
}

/// Whether an agent may work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// May open tasks.
    Active,
    /// Kill switch thrown: no task may be opened and every active task was revoked.
    Suspended,
}

impl AgentStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
        }
    }
}

/// A registered workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Id; also the OAuth `client_id`.
    pub id: AgentId,
    /// The accountable owner; `None` once the owner was removed (the agent is orphaned).
    pub owner: Option<OwnerId>,
    /// The owner it had before it was orphaned, kept for the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub former_owner: Option<OwnerId>,
    /// Blast radius.
    pub tier: Tier,
    /// What its tasks may ever ask for. Grants nothing by itself.
    pub envelope: Scope,
    /// How it proves what it is.
    pub attestations: Vec<Attestation>,
    /// Intent used when a client asks with a plain `scope` and no `authorization_details`.
    pub default_intent: Intent,
    /// Active or suspended.
    pub status: AgentStatus,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Free-form description.
    #[serde(default)]
    pub description: String,
    /// When its owner last confirmed it still needs it (owner re-confirmation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<Timestamp>,
}

impl Agent {
    /// Its registered Ed25519 public keys (base64url), for `private_key_jwt`.
    pub fn public_keys(&self) -> Vec<&str> {
        self.attestations
            .iter()
            .filter_map(|a| match a {
                Attestation::PrivateKeyJwt { public_key } => Some(public_key.as_str()),
                Attestation::ExternalJwt { .. } | Attestation::X509Svid { .. } => None,
            })
            .collect()
    }

    /// Whether the agent has lost its owner.
    pub fn is_orphaned(&self) -> bool {
        self.owner.is_none()
    }
}

/// Why a task exists: free text for people and a class for policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// What the task is for, in words: free text, typically the request the agent's planner was
    /// given (line breaks allowed).
    pub text: String,
    /// A short machine-readable class, e.g. `code_change`, `support`, `research`.
    pub class: String,
    /// Values the request named (addresses, accounts, URLs, ids) beyond those in its text: calls
    /// carrying them are the task's own doing (see [`crate::provenance`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Longest intent text.
pub const MAX_INTENT_TEXT: usize = 8 * 1024;
/// Most values an intent may name.
pub const MAX_INTENT_VALUES: usize = 64;
/// Longest such value.
pub const MAX_INTENT_VALUE: usize = 256;

/// Whether a character may not appear in free text shown to people: control characters other
/// than line breaks and tabs, and the invisible characters that reorder or hide text.
pub fn unsafe_text_char(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}
/// Longest intent class.
pub const MAX_INTENT_CLASS: usize = 64;

impl Intent {
    /// Checks lengths and the class's characters.
    pub fn check(&self) -> Result<(), String> {
        if self.text.trim().is_empty() {
            return Err("intent text is empty".into());
        }
        if self.text.len() > MAX_INTENT_TEXT {
            return Err(format!(
                "intent text is longer than {MAX_INTENT_TEXT} bytes"
            ));
        }
        if self.text.chars().any(unsafe_text_char) {
            return Err(
                "intent text has control or invisible formatting characters (line breaks and tabs are fine)"
                    .into(),
            );
        }
        if self.values.len() > MAX_INTENT_VALUES {
            return Err(format!(
                "an intent names at most {MAX_INTENT_VALUES} values"
            ));
        }
        if self.values.iter().any(|v| {
            v.trim().is_empty() || v.len() > MAX_INTENT_VALUE || v.chars().any(char::is_control)
        }) {
            return Err(format!(
                "intent values must be 1 to {MAX_INTENT_VALUE} bytes without control characters"
            ));
        }
        let class_ok = !self.class.is_empty()
            && self.class.len() <= MAX_INTENT_CLASS
            && self
                .class
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !class_ok {
            return Err(format!(
                "intent class `{}` must be 1 to {MAX_INTENT_CLASS} lowercase letters, digits, `_` or `-`",
                self.class.chars().take(80).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// Where a task is in its life. Only `Active` confers anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Its credential works, within its scope.
    Active,
    /// The agent said it was done.
    Completed,
    /// Its TTL ran out.
    Expired,
    /// Ended by a person, a kill switch, a parent task ending, or a policy change.
    Revoked,
    /// Admission refused it; it never had a credential.
    Denied,
}

impl TaskState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Expired => "expired",
            TaskState::Revoked => "revoked",
            TaskState::Denied => "denied",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(TaskState::Active),
            "completed" => Ok(TaskState::Completed),
            "expired" => Ok(TaskState::Expired),
            "revoked" => Ok(TaskState::Revoked),
            "denied" => Ok(TaskState::Denied),
            other => Err(format!("task state `{other}` is unknown")),
        }
    }
}

/// Why a task left `Active`, in words for the audit and the CLI.
pub type EndReason = String;

/// The unit of privilege.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Id, carried in the credential.
    pub id: TaskId,
    /// The agent working on it.
    pub agent: AgentId,
    /// The agent's owner when the task was opened.
    pub owner: Option<OwnerId>,
    /// Why it exists.
    pub intent: Intent,
    /// What it may do.
    pub scope: Scope,
    /// Where it is in its life.
    pub state: TaskState,
    /// When it was opened.
    pub created_at: Timestamp,
    /// When its privilege ends at the latest.
    pub expires_at: Timestamp,
    /// When it left `Active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Why it left `Active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// RFC 7638 thumbprint of the key the credential is bound to (DPoP `cnf.jkt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705 thumbprint of the client certificate the credential is bound to
    /// (`cnf.x5t#S256`), when it was opened over mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t: Option<String>,
    /// Per-task limits asked for at admission.
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
    /// What the task has touched so far (flow labels).
    #[serde(default)]
    pub flow: crate::flow::Flow,
    /// Values seen in third-party content during the task (argument provenance).
    #[serde(
        default,
        skip_serializing_if = "crate::provenance::Provenance::is_empty"
    )]
    pub provenance: crate::provenance::Provenance,
    /// Where the task came from when another task delegated it (RFC 8693 token exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
}

/// A delegated task's place in its workflow: the tasks above it and their agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The tasks above this one, the root (opened by an agent itself) first, the parent last.
    pub ancestors: Vec<TaskId>,
    /// The agents of those tasks, in the same order.
    pub agents: Vec<AgentId>,
}

impl Delegation {
    /// The task this one was delegated from.
    pub fn parent(&self) -> Option<&TaskId> {
        self.ancestors.last()
    }

    /// The task that started the workflow.
    pub fn root(&self) -> Option<&TaskId> {
        self.ancestors.first()
    }

    /// Hops from the root: 1 for a task delegated by a root task.
    pub fn depth(&self) -> usize {
        self.ancestors.len()
    }
}

impl Task {
    /// Hops from the task that started the workflow (0 for a task its agent opened itself).
    pub fn depth(&self) -> usize {
        self.delegation.as_ref().map_or(0, Delegation::depth)
    }

    /// The task that started this task's workflow (itself when it was not delegated).
    pub fn root(&self) -> &TaskId {
        self.delegation
            .as_ref()
            .and_then(Delegation::root)
            .unwrap_or(&self.id)
    }
}

/// Limits a task asks for itself, on top of the tier's. Policies see them as
/// `context.task.max_calls` and `context.task.max_calls_per_minute`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most allowed calls in the task's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    /// Most decisions per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls_per_minute: Option<u64>,
}

impl Budget {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.max_calls.is_none() && self.max_calls_per_minute.is_none()
    }
}

impl Task {
    /// Whether the task confers privilege at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.state == TaskState::Active && now < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_checks() {
        let intent = |text: &str, class: &str| Intent {
            text: text.into(),
            class: class.into(),
            values: Vec::new(),
        };
        assert!(intent("fix bug 12", "code_change").check().is_ok());
        assert!(
            intent("Email the summary\nto bob@example.com,\tplease", "support")
                .check()
                .is_ok()
        );
        assert!(
            intent("x", "Code Change")
                .check()
                .unwrap_err()
                .contains("`Code Change`")
        );
        assert_eq!(
            intent("  ", "a").check().unwrap_err(),
            "intent text is empty"
        );
        for hidden in [
            "bell\u{7}",
            "esc\u{1b}[31m",
            "rtl\u{202E}txt",
            "zw\u{200B}sp",
        ] {
            assert!(intent(hidden, "a").check().is_err(), "{hidden:?}");
        }
        let mut many = intent("pay", "a");
        many.values = vec!["DE89370400440532013000".into()];
        assert!(many.check().is_ok());
        many.values = vec!["a\nb".into()];
        assert!(many.check().is_err());
    }

    #[test]
    fn attestation_json_shape() {
        let a: Attestation = serde_json::from_value(serde_json::json!({
            "type": "external_jwt", "issuer": "https://idp", "jwks": "/tmp/jwks.json",
            "subject": "spiffe://example.org/agent/x", "claims": {"team": "blue"}
        }))
        .unwrap();
        assert_eq!(a.kind(), "external_jwt");
        assert!(
            serde_json::from_value::<Attestation>(serde_json::json!({
                "type": "private_key_jwt", "public_key": "x", "extra": 1
            }))
            .is_err()
        );
    }
}
