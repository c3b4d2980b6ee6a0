//! The tool and resource catalog: labels that say what each target does, returns and reaches.
//! Policies see them as attributes of `Mandate::Tool` and `Mandate::Resource` entities; the
//! broker uses them to grow a task's flow labels.
//!
//! It lives beside the policies as `catalog.toml` and is loaded and reloaded with them:
//!
//! ```toml
//! [tools.http_post]
//! side_effect = "write"
//! egress = "external"
//! risk = "medium"
//!
//! [resources.customers]
//! side_effect = "read"
//! data_classes = ["pii"]
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::facts::{TargetFacts, TargetKind};

/// Most catalog entries.
pub const MAX_ENTRIES: usize = 10_000;

/// What a tool or resource does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// `read` or `write`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_effect: Option<String>,
    /// Data classes it returns, e.g. `pii`, `secret`, `financial`, `source_code`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub data_classes: BTreeSet<String>,
    /// Where it sends data: `internal`, `external`, or a destination host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// `low`, `medium` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
    /// Whether its output carries content written by third parties (mail, web pages, files,
    /// messages): the values in it are remembered for argument provenance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub third_party_content: bool,
    /// For a tool whose output is JSON with some members written by others (a transaction's
    /// subject, a listing's reviews): the member names, at any depth, whose values are
    /// third-party content; the rest of the output is trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub third_party_fields: Vec<String>,
    /// The arguments naming where a call sends data, money or access (recipients, URLs,
    /// accounts, invitees), or what a destructive call acts on: their values' origins are what
    /// flow and provenance policies judge (`context.provenance.destinations`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
}

impl Labels {
    /// The egress destination a call records in the task's flow labels: none for internal
    /// targets.
    pub fn egress_destination(&self) -> Option<&String> {
        self.egress.as_ref().filter(|e| e.as_str() != "internal")
    }

    fn check(&self, name: &str) -> Result<(), String> {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        };
        if let Some(se) = &self.side_effect
            && se != "read"
            && se != "write"
        {
            return Err(format!(
                "`{name}`: side_effect must be `read` or `write`, not `{se}`"
            ));
        }
        if let Some(r) = &self.risk
            && !matches!(r.as_str(), "low" | "medium" | "high")
        {
            return Err(format!(
                "`{name}`: risk must be `low`, `medium` or `high`, not `{r}`"
            ));
        }
        if let Some(dc) = self.data_classes.iter().find(|d| !label(d)) {
            return Err(format!(
                "`{name}`: data class `{dc}` must be lowercase letters, digits, `_` or `-`"
            ));
        }
        let arg_ok = |a: &String| {
            !a.is_empty()
                && a.len() <= 128
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        if let Some(a) = self
            .destinations
            .iter()
            .chain(&self.third_party_fields)
            .find(|a| !arg_ok(a))
        {
            return Err(format!(
                "`{name}`: `{a}` is not an argument or field name (letters, digits, `_`, `-`, `.`)"
            ));
        }
        if self.destinations.len() > 32 || self.third_party_fields.len() > 64 {
            return Err(format!(
                "`{name}`: at most 32 destinations and 64 third_party_fields"
            ));
        }
        if let Some(e) = &self.egress {
            let host_ok = !e.is_empty()
                && e.len() <= 253
                && e.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':');
            if !host_ok {
                return Err(format!(
                    "`{name}`: egress must be `internal`, `external` or a host name, not `{e}`"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    tools: BTreeMap<String, Labels>,
    #[serde(default)]
    resources: BTreeMap<String, Labels>,
    #[serde(default)]
    data_classes: BTreeMap<String, DataClass>,
}

/// What the catalog says of a data class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataClass {
    /// Targets that are a legitimate destination of this class (financial data to the payment
    /// tool is not exfiltration).
    #[serde(default)]
    sinks: BTreeSet<String>,
}

/// Every catalogued tool and resource, and the data classes' legitimate sinks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    entries: BTreeMap<String, (TargetKind, Labels)>,
    sinks: BTreeMap<String, BTreeSet<String>>,
}

impl Catalog {
    /// Parses `catalog.toml` text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut entries = BTreeMap::new();
        for (kind, map) in [
            (TargetKind::Tool, raw.tools),
            (TargetKind::Resource, raw.resources),
        ] {
            for (name, labels) in map {
                mandate_core::scope::check_target(&name).map_err(|e| e.to_string())?;
                labels.check(&name)?;
                if entries.insert(name.clone(), (kind, labels)).is_some() {
                    return Err(format!(
                        "`{name}` is declared both as a tool and as a resource"
                    ));
                }
            }
        }
        if entries.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} catalog entries"));
        }
        let mut sinks = BTreeMap::new();
        for (class, d) in raw.data_classes {
            let ok = !class.is_empty()
                && class.len() <= 64
                && class
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !ok {
                return Err(format!(
                    "data class `{class}` must be lowercase letters, digits, `_` or `-`"
                ));
            }
            for t in &d.sinks {
                mandate_core::scope::check_target(t).map_err(|e| e.to_string())?;
            }
            sinks.insert(class, d.sinks);
        }
        Ok(Catalog { entries, sinks })
    }

    /// Of the data classes in `read`, those `target` is not a declared sink for.
    pub fn unsinked<'a>(
        &self,
        target: &str,
        read: impl IntoIterator<Item = &'a String>,
    ) -> BTreeSet<String> {
        read.into_iter()
            .filter(|c| !self.sinks.get(*c).is_some_and(|s| s.contains(target)))
            .cloned()
            .collect()
    }

    /// The labels of `target`, if catalogued.
    pub fn get(&self, target: &str) -> Option<(TargetKind, &Labels)> {
        self.entries.get(target).map(|(k, l)| (*k, l))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is catalogued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&String, TargetKind, &Labels)> {
        self.entries.iter().map(|(n, (k, l))| (n, *k, l))
    }

    /// The entries as policy facts (entity attributes).
    pub fn facts(&self) -> Vec<TargetFacts> {
        self.entries
            .iter()
            .map(|(name, (kind, labels))| {
                let attrs = match serde_json::to_value(labels) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                TargetFacts {
                    kind: *kind,
                    id: name.clone(),
                    attrs,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let c = Catalog::parse(
            "[tools.http_post]\nside_effect = \"write\"\negress = \"external\"\n[resources.customers]\ndata_classes = [\"pii\"]\n",
        )
        .unwrap();
        assert_eq!(c.get("http_post").unwrap().0, TargetKind::Tool);
        assert_eq!(c.get("customers").unwrap().1.data_classes.len(), 1);
        assert_eq!(
            c.get("http_post")
                .unwrap()
                .1
                .egress_destination()
                .map(String::as_str),
            Some("external")
        );
        assert!(
            Catalog::parse("[tools.x]\nside_effect = \"delete\"\n")
                .unwrap_err()
                .contains("side_effect")
        );
        assert!(
            Catalog::parse("[tools.x]\ncolour = \"red\"\n")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            Catalog::parse("[tools.x]\n[resources.x]\n")
                .unwrap_err()
                .contains("both as a tool and as a resource")
        );
    }
}
