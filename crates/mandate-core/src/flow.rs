//! Flow labels: what a task has already touched. Policies see them, so "read PII, then post to an
//! external URL" can be denied although each step alone is allowed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Most distinct data classes or egress destinations remembered per task.
pub const MAX_LABELS: usize = 256;
/// Most decisions remembered for the one-minute rate.
const MAX_RECENT: usize = 100_000;

/// What a task has touched so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Data classes the task has read (from catalog labels and reported responses).
    #[serde(default)]
    pub data_read: BTreeSet<String>,
    /// Egress destinations used: `external`, or a host.
    #[serde(default)]
    pub egress: BTreeSet<String>,
    /// Allowed calls.
    #[serde(default)]
    pub calls: u64,
    /// Allowed calls per target.
    #[serde(default)]
    pub per_target: BTreeMap<String, u64>,
    /// Denied calls in a row (reset by an allowed one).
    #[serde(default)]
    pub denied_in_a_row: u64,
    /// Denied calls in all.
    #[serde(default)]
    pub denied: u64,
    /// When decisions were made in the last minute (milliseconds).
    #[serde(skip)]
    recent: VecDeque<i64>,
}

/// What one step added to the labels, for the audit record of that step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowAdded {
    /// Data classes new to the task.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_read: Vec<String>,
    /// Egress destinations new to the task.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

impl FlowAdded {
    /// Whether nothing new was added.
    pub fn is_empty(&self) -> bool {
        self.data_read.is_empty() && self.egress.is_empty()
    }
}

fn add_all<'a>(
    set: &mut BTreeSet<String>,
    items: impl IntoIterator<Item = &'a String>,
    added: &mut Vec<String>,
) {
    for item in items {
        if set.len() >= MAX_LABELS {
            break;
        }
        if set.insert(item.clone()) {
            added.push(item.clone());
        }
    }
}

impl Flow {
    /// Decisions (allowed or denied) in the minute before `now`.
    pub fn attempts_last_minute(&mut self, now: Timestamp) -> u64 {
        let cutoff = now.0 - 60_000;
        while self.recent.front().is_some_and(|t| *t <= cutoff) {
            self.recent.pop_front();
        }
        self.recent.len() as u64
    }

    /// Allowed calls of `target`.
    pub fn target_calls(&self, target: &str) -> u64 {
        self.per_target.get(target).copied().unwrap_or(0)
    }

    /// Distinct targets used.
    pub fn distinct_targets(&self) -> u64 {
        self.per_target.len() as u64
    }

    fn stamp(&mut self, now: Timestamp) {
        if self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(now.0);
    }

    /// Records an allowed call of `target` that returns `data_classes` and leaves through
    /// `egress`; returns what was new.
    pub fn record_allowed(
        &mut self,
        target: &str,
        data_classes: &BTreeSet<String>,
        egress: Option<&String>,
        now: Timestamp,
    ) -> FlowAdded {
        self.stamp(now);
        self.calls += 1;
        self.denied_in_a_row = 0;
        if self.per_target.len() < MAX_LABELS || self.per_target.contains_key(target) {
            *self.per_target.entry(target.to_string()).or_insert(0) += 1;
        }
        let mut added = FlowAdded::default();
        add_all(&mut self.data_read, data_classes, &mut added.data_read);
        add_all(&mut self.egress, egress, &mut added.egress);
        added
    }

    /// Records a denied call.
    pub fn record_denied(&mut self, now: Timestamp) {
        self.stamp(now);
        self.denied += 1;
        self.denied_in_a_row += 1;
    }

    /// Adds data classes an enforcement point saw in a response.
    pub fn record_read(&mut self, data_classes: &[String]) -> FlowAdded {
        let mut added = FlowAdded::default();
        add_all(&mut self.data_read, data_classes, &mut added.data_read);
        added
    }

    /// Adds labels a child task gathered (delegation), so data cannot be laundered through it.
    pub fn absorb(&mut self, child: &Flow) -> FlowAdded {
        let mut added = FlowAdded::default();
        add_all(&mut self.data_read, &child.data_read, &mut added.data_read);
        add_all(&mut self.egress, &child.egress, &mut added.egress);
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_accumulate_and_rates_slide() {
        let mut f = Flow::default();
        let pii = BTreeSet::from(["pii".to_string()]);
        let a = f.record_allowed("crm", &pii, None, Timestamp(0));
        assert_eq!(a.data_read, vec!["pii"]);
        let a = f.record_allowed("crm", &pii, Some(&"external".to_string()), Timestamp(1000));
        assert!(a.data_read.is_empty());
        assert_eq!(a.egress, vec!["external"]);
        f.record_denied(Timestamp(2000));
        f.record_denied(Timestamp(3000));
        assert_eq!(f.denied_in_a_row, 2);
        assert_eq!(f.attempts_last_minute(Timestamp(3000)), 4);
        assert_eq!(f.attempts_last_minute(Timestamp(61_500)), 2);
        assert_eq!(f.target_calls("crm"), 2);
        f.record_allowed("web", &BTreeSet::new(), None, Timestamp(62_000));
        assert_eq!(f.denied_in_a_row, 0);
        assert_eq!(f.distinct_targets(), 2);
    }
}
