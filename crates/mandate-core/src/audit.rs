//! Audit events and the hash chain that makes them tamper-evident.
//!
//! Each record stores the canonical JSON of its event, its sequence number, the previous record's
//! hash and its own hash: `sha256(prev_hash ":" seq ":" event_json)`, hex-encoded. Editing a
//! record breaks its hash; deleting one leaves a gap in the sequence and a broken link; moving one
//! breaks the hash of its new position, which [`verify_chain`] recognises and reports as a move.
//! The store also keeps the head (last sequence and hash) so that cutting records off the end is
//! detected too.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The broker started (with its policy set).
    ServerStarted,
    /// An agent failed to prove its identity.
    AttestationFailed,
    /// A request was refused before any decision: bad input, unknown agent, oversized body.
    RequestRejected,
    /// A task was admitted and its credential issued.
    TaskOpened,
    /// A task was refused at admission.
    TaskDenied,
    /// A runtime decision on one action.
    Decision,
    /// A presented credential was refused: bad signature, expired, task no longer active.
    CredentialRefused,
    /// The agent finished its task.
    TaskCompleted,
    /// A task's TTL ran out.
    TaskExpired,
    /// A task was ended by someone or something other than its agent.
    TaskRevoked,
    /// An owner was added.
    OwnerAdded,
    /// An owner was removed; its agents are orphaned.
    OwnerRemoved,
    /// A personal API token was issued to an owner.
    ApiTokenIssued,
    /// A personal API token was revoked.
    ApiTokenRevoked,
    /// An agent was registered.
    AgentAdded,
    /// An agent was suspended (kill switch).
    AgentSuspended,
    /// A suspended agent was allowed to work again.
    AgentResumed,
    /// A policy set was loaded.
    PolicyLoaded,
    /// A policy set was refused; the previous one stays in force.
    PolicyRejected,
    /// An enforcement point reported what a call returned.
    FlowReported,
    /// A call needs a person's approval; a request was created.
    ApprovalRequested,
    /// A person granted an approval request.
    ApprovalGranted,
    /// A person refused an approval request.
    ApprovalDenied,
    /// A brokered secret was set or rotated (never its value).
    SecretSet,
    /// A brokered secret was deleted.
    SecretDeleted,
    /// A per-task downstream credential was made (never its secret part).
    LeaseIssued,
    /// A per-task downstream credential was revoked downstream.
    LeaseRevoked,
    /// An agent or enforcement point fetched its task's downstream credential.
    CredentialFetched,
    /// The CA that signs a credential's SSH certificates was made (its public key in detail).
    SshCaCreated,
    /// The gateway forwarded or refused one call to an upstream.
    GatewayCall,
    /// What became of a forwarded gateway call when it was not a plain success: the upstream
    /// failed or timed out, its streamed answer was cut, or brokered secrets were scrubbed
    /// from it. (The call's decision is its `gateway_call` event, recorded while it was sent.)
    GatewayResult,
    /// An owner confirmed its agent is still needed.
    AgentConfirmed,
    /// An agent's owner must re-confirm it soon, or already had to.
    ConfirmationReminder,
    /// A new token signing key took over; the previous ones only verify.
    KeyRotated,
}

impl EventKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ServerStarted => "server_started",
            EventKind::AttestationFailed => "attestation_failed",
            EventKind::RequestRejected => "request_rejected",
            EventKind::TaskOpened => "task_opened",
            EventKind::TaskDenied => "task_denied",
            EventKind::Decision => "decision",
            EventKind::CredentialRefused => "credential_refused",
            EventKind::TaskCompleted => "task_completed",
            EventKind::TaskExpired => "task_expired",
            EventKind::TaskRevoked => "task_revoked",
            EventKind::OwnerAdded => "owner_added",
            EventKind::OwnerRemoved => "owner_removed",
            EventKind::ApiTokenIssued => "api_token_issued",
            EventKind::ApiTokenRevoked => "api_token_revoked",
            EventKind::AgentAdded => "agent_added",
            EventKind::AgentSuspended => "agent_suspended",
            EventKind::AgentResumed => "agent_resumed",
            EventKind::PolicyLoaded => "policy_loaded",
            EventKind::PolicyRejected => "policy_rejected",
            EventKind::FlowReported => "flow_reported",
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::ApprovalGranted => "approval_granted",
            EventKind::ApprovalDenied => "approval_denied",
            EventKind::SecretSet => "secret_set",
            EventKind::SecretDeleted => "secret_deleted",
            EventKind::LeaseIssued => "lease_issued",
            EventKind::LeaseRevoked => "lease_revoked",
            EventKind::CredentialFetched => "credential_fetched",
            EventKind::SshCaCreated => "ssh_ca_created",
            EventKind::GatewayCall => "gateway_call",
            EventKind::GatewayResult => "gateway_result",
            EventKind::AgentConfirmed => "agent_confirmed",
            EventKind::ConfirmationReminder => "confirmation_reminder",
            EventKind::KeyRotated => "key_rotated",
        }
    }
}

/// One step, as recorded. Optional fields are left out of the JSON when empty, so adding a field
/// later does not change the hashes of old records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened.
    pub time: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// Who acted: a person's owner id or token name, for admin actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The agent concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The agent's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The task concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The task's intent text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// The action asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The tool or resource acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `allow`, `deny`, or another outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Ids of the policies that decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else worth keeping (never a token, assertion or secret).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event of `kind` at `time` with nothing else filled in.
    pub fn new(kind: EventKind, time: Timestamp) -> Self {
        AuditEvent {
            time,
            kind,
            actor: None,
            agent: None,
            owner: None,
            task: None,
            intent: None,
            action: None,
            resource: None,
            decision: None,
            policies: Vec::new(),
            reason: None,
            detail: serde_json::Value::Null,
        }
    }

    /// The canonical JSON that is hashed and stored.
    pub fn canonical_json(&self) -> String {
        // Serialising a struct of strings, numbers and a `Value` (whose maps are sorted) cannot
        // fail and always yields the same bytes for the same event.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A stored event with its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Hash of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
    /// The event's canonical JSON, exactly as hashed.
    pub event_json: String,
}

impl AuditRecord {
    /// Links `event` after a record with `prev_hash` at position `seq`.
    pub fn link(seq: i64, prev_hash: &str, event: &AuditEvent) -> Self {
        let event_json = event.canonical_json();
        let hash = chain_hash(prev_hash, seq, &event_json);
        AuditRecord {
            seq,
            prev_hash: prev_hash.to_string(),
            hash,
            event_json,
        }
    }

    /// The event, parsed.
    pub fn event(&self) -> Result<AuditEvent, serde_json::Error> {
        serde_json::from_str(&self.event_json)
    }
}

/// `sha256(prev_hash ":" seq ":" event_json)`, lowercase hex.
pub fn chain_hash(prev_hash: &str, seq: i64, event_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b":");
    h.update(seq.to_string().as_bytes());
    h.update(b":");
    h.update(event_json.as_bytes());
    hex(&h.finalize())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One thing wrong with a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainProblem {
    /// The position where it shows.
    pub seq: i64,
    /// What is wrong, in words.
    pub message: String,
}

/// The outcome of checking a chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// How many records were read.
    pub records: u64,
    /// Sequence number of the last record read.
    pub last_seq: i64,
    /// Hash of the last record read.
    pub last_hash: String,
    /// Everything found wrong; empty means the chain verifies.
    pub problems: Vec<ChainProblem>,
}

impl ChainReport {
    /// Whether the chain verifies.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// How far from its position a moved record is looked for.
const MOVE_WINDOW: i64 = 64;

/// Checks a chain record by record, so a long chain can be verified page by page.
#[derive(Debug)]
pub struct ChainVerifier {
    report: ChainReport,
    expected_seq: i64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            report: ChainReport {
                last_hash: GENESIS_HASH.to_string(),
                ..ChainReport::default()
            },
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
        }
    }
}

impl ChainVerifier {
    /// A verifier expecting the chain from its first record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next record (records must come by ascending `seq`).
    pub fn push(&mut self, r: &AuditRecord) {
        let report = &mut self.report;
        report.records += 1;
        let expected_seq = self.expected_seq;
        if r.seq > expected_seq {
            let msg = if r.seq == expected_seq + 1 {
                format!("record {expected_seq} is missing (deleted)")
            } else {
                format!(
                    "records {expected_seq} to {} are missing (deleted)",
                    r.seq - 1
                )
            };
            report.problems.push(ChainProblem {
                seq: expected_seq,
                message: msg,
            });
        } else if r.seq < expected_seq {
            report.problems.push(ChainProblem {
                seq: r.seq,
                message: format!("record {} appears twice or out of order", r.seq),
            });
        }
        let content_ok = chain_hash(&r.prev_hash, r.seq, &r.event_json) == r.hash;
        if !content_ok {
            let moved_from = (r.seq - MOVE_WINDOW..=r.seq + MOVE_WINDOW)
                .filter(|s| *s != r.seq && *s > 0)
                .find(|s| chain_hash(&r.prev_hash, *s, &r.event_json) == r.hash);
            let message = match moved_from {
                Some(orig) => format!(
                    "record {} is out of order: it was written as record {orig}",
                    r.seq
                ),
                None => format!(
                    "record {} was edited: its content does not match its hash",
                    r.seq
                ),
            };
            report.problems.push(ChainProblem {
                seq: r.seq,
                message,
            });
        } else if r.prev_hash != self.prev_hash && r.seq == expected_seq {
            report.problems.push(ChainProblem {
                seq: r.seq,
                message: format!(
                    "record {} does not follow record {}: the link between them is broken",
                    r.seq,
                    r.seq - 1
                ),
            });
        }
        if r.event().is_err() {
            report.problems.push(ChainProblem {
                seq: r.seq,
                message: format!("record {} does not hold a readable event", r.seq),
            });
        }
        self.prev_hash = r.hash.clone();
        self.expected_seq = r.seq.max(expected_seq) + 1;
        report.last_seq = r.seq;
        report.last_hash = r.hash.clone();
    }

    /// Ends the check against the stored head (last seq and hash), if there is one.
    pub fn finish(mut self, expected_head: Option<(i64, &str)>) -> ChainReport {
        let report = &mut self.report;
        if let Some((head_seq, head_hash)) = expected_head {
            if head_seq > report.last_seq {
                report.problems.push(ChainProblem {
                    seq: report.last_seq + 1,
                    message: format!(
                        "records {} to {head_seq} at the end are missing (deleted)",
                        report.last_seq + 1
                    ),
                });
            } else if head_seq == report.last_seq && head_hash != report.last_hash {
                report.problems.push(ChainProblem {
                    seq: head_seq,
                    message: format!(
                        "the last record {head_seq} does not match the recorded head of the chain"
                    ),
                });
            } else if head_seq < report.last_seq {
                report.problems.push(ChainProblem {
                    seq: head_seq + 1,
                    message: format!(
                        "records after {head_seq} were added outside the chain's head"
                    ),
                });
            }
        } else if report.records > 0 {
            report.problems.push(ChainProblem {
                seq: report.last_seq,
                message: "the chain has records but no recorded head".into(),
            });
        }
        self.report
    }
}

/// Checks records (by ascending `seq`) against each other and against the stored head
/// (`expected_head`: last seq and hash), reporting every problem found.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    expected_head: Option<(i64, &str)>,
) -> ChainReport {
    let mut v = ChainVerifier::new();
    for r in records {
        v.push(r);
    }
    v.finish(expected_head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEvent::new(EventKind::Decision, Timestamp(seq * 1000));
                e.task = Some(format!("t{seq}"));
                let r = AuditRecord::link(seq, &prev, &e);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn head(c: &[AuditRecord]) -> Option<(i64, &str)> {
        c.last().map(|r| (r.seq, r.hash.as_str()))
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let r = verify_chain(&c, head(&c));
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.records, 5);
    }

    #[test]
    fn edit_is_named() {
        let mut c = chain(5);
        let h = c[4].hash.clone();
        c[2].event_json = c[2].event_json.replace("t3", "t9");
        let r = verify_chain(&c, Some((5, &h)));
        assert_eq!(r.problems.len(), 1);
        assert_eq!(
            r.problems[0].message,
            "record 3 was edited: its content does not match its hash"
        );
    }

    #[test]
    fn deletion_is_named() {
        let mut c = chain(5);
        let h = c[4].hash.clone();
        c.remove(1);
        let r = verify_chain(&c, Some((5, &h)));
        assert_eq!(r.problems[0].message, "record 2 is missing (deleted)");
    }

    #[test]
    fn truncation_is_named() {
        let mut c = chain(5);
        let h = c[4].hash.clone();
        c.truncate(3);
        let r = verify_chain(&c, Some((5, &h)));
        assert_eq!(
            r.problems[0].message,
            "records 4 to 5 at the end are missing (deleted)"
        );
    }

    #[test]
    fn reordering_is_named() {
        let mut c = chain(5);
        let h = c[4].hash.clone();
        // Swap the positions of records 2 and 3, keeping their contents and hashes.
        let (a, b) = (c[1].clone(), c[2].clone());
        c[1] = AuditRecord { seq: 2, ..b };
        c[2] = AuditRecord { seq: 3, ..a };
        let r = verify_chain(&c, Some((5, &h)));
        let msgs: Vec<_> = r.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(msgs.contains(&"record 2 is out of order: it was written as record 3"));
        assert!(msgs.contains(&"record 3 is out of order: it was written as record 2"));
    }
}
