//! Scopes: which actions on which targets (tools or resources) a task holds, or an agent's
//! envelope may ever hold.
//!
//! The textual form is a space-separated list of `action:target` tokens, the way OAuth `scope`
//! values are usually written (`read:cases call:git.push`). A bare token without `:` means the
//! `call` action on a tool, which is what a plain OAuth client asking for tools sends. The split is
//! at the first `:`, so targets may themselves contain `:` (`read:repo:acme/web`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most grants a scope may hold.
pub const MAX_GRANTS: usize = 256;
/// Longest target name.
pub const MAX_TARGET_LEN: usize = 256;
/// Longest action name.
pub const MAX_ACTION_LEN: usize = 64;
/// The action a bare scope token stands for.
pub const DEFAULT_ACTION: &str = "call";

/// Why a scope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// An action name is malformed.
    #[error(
        "action `{0}` must be lowercase letters, digits or `_`, start with a letter, and be at most 64 characters"
    )]
    BadAction(String),
    /// A target name is malformed.
    #[error("target `{0}` must be 1 to 256 visible characters without spaces or quotes")]
    BadTarget(String),
    /// An entry names no actions.
    #[error("target `{0}` lists no actions")]
    NoActions(String),
    /// Too many grants.
    #[error("scope has more than {MAX_GRANTS} grants")]
    TooLarge,
}

/// One entry of a scope: actions on one target. This is the JSON shape used in
/// `authorization_details` (`identifier` and `actions` are RFC 9396 common fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The tool or resource.
    pub identifier: String,
    /// The actions allowed on it. Defaults to `["call"]`.
    #[serde(default = "default_actions")]
    pub actions: Vec<String>,
}

fn default_actions() -> Vec<String> {
    vec![DEFAULT_ACTION.to_string()]
}

/// A set of (action, target) pairs, kept sorted so equal scopes compare and print equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    grants: BTreeMap<String, BTreeSet<String>>,
}

/// Checks an action name.
pub fn check_action(a: &str) -> Result<(), ScopeError> {
    let mut chars = a.chars();
    let ok = a.len() <= MAX_ACTION_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ScopeError::BadAction(truncate(a)))
    }
}

/// Checks a target name.
pub fn check_target(t: &str) -> Result<(), ScopeError> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TARGET_LEN
        && t.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
    if ok {
        Ok(())
    } else {
        Err(ScopeError::BadTarget(truncate(t)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl Scope {
    /// The empty scope.
    pub fn empty() -> Self {
        Scope::default()
    }

    /// Parses the space-separated textual form.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let mut scope = Scope::empty();
        for token in s.split_ascii_whitespace() {
            let (action, target) = match token.split_once(':') {
                Some((a, t)) => (a, t),
                None => (DEFAULT_ACTION, token),
            };
            scope.insert(action, target)?;
        }
        Ok(scope)
    }

    /// Builds a scope from grant entries.
    pub fn from_grants(grants: &[Grant]) -> Result<Self, ScopeError> {
        let mut scope = Scope::empty();
        for g in grants {
            if g.actions.is_empty() {
                return Err(ScopeError::NoActions(truncate(&g.identifier)));
            }
            for a in &g.actions {
                scope.insert(a, &g.identifier)?;
            }
        }
        Ok(scope)
    }

    /// Adds one (action, target) pair after checking both.
    pub fn insert(&mut self, action: &str, target: &str) -> Result<(), ScopeError> {
        check_action(action)?;
        check_target(target)?;
        let entry = self.grants.entry(target.to_string()).or_default();
        entry.insert(action.to_string());
        if self.len() > MAX_GRANTS {
            return Err(ScopeError::TooLarge);
        }
        Ok(())
    }

    /// Number of (action, target) pairs.
    pub fn len(&self) -> usize {
        self.grants.values().map(BTreeSet::len).sum()
    }

    /// Whether the scope holds nothing.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Whether `action` on `target` is in the scope.
    pub fn allows(&self, action: &str, target: &str) -> bool {
        self.grants
            .get(target)
            .is_some_and(|actions| actions.contains(action))
    }

    /// Whether `target` appears in the scope with any action.
    pub fn has_target(&self, target: &str) -> bool {
        self.grants.contains_key(target)
    }

    /// Every (action, target) pair, sorted by target then action.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.grants
            .iter()
            .flat_map(|(t, acts)| acts.iter().map(move |a| (a.as_str(), t.as_str())))
    }

    /// The pairs of `self` that `outer` does not hold, as `action:target` tokens.
    pub fn excess_over(&self, outer: &Scope) -> Vec<String> {
        self.pairs()
            .filter(|(a, t)| !outer.allows(a, t))
            .map(|(a, t)| format!("{a}:{t}"))
            .collect()
    }

    /// Whether every pair of `self` is in `outer`.
    pub fn is_subset_of(&self, outer: &Scope) -> bool {
        self.pairs().all(|(a, t)| outer.allows(a, t))
    }

    /// The pairs held by both scopes.
    pub fn intersect(&self, other: &Scope) -> Scope {
        let mut out = Scope::empty();
        for (a, t) in self.pairs() {
            if other.allows(a, t) {
                out.grants
                    .entry(t.to_string())
                    .or_default()
                    .insert(a.to_string());
            }
        }
        out
    }

    /// The entries in `authorization_details` form.
    pub fn to_grants(&self) -> Vec<Grant> {
        self.grants
            .iter()
            .map(|(t, acts)| Grant {
                identifier: t.clone(),
                actions: acts.iter().cloned().collect(),
            })
            .collect()
    }

    /// The `action:target` tokens, sorted.
    pub fn tokens(&self) -> Vec<String> {
        self.pairs().map(|(a, t)| format!("{a}:{t}")).collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tokens().join(" "))
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_grants().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let grants = Vec::<Grant>::deserialize(d)?;
        Scope::from_grants(&grants).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_tokens_and_bare_tools() {
        let s = Scope::parse("read:cases  git.push read:repo:acme/web").unwrap();
        assert!(s.allows("read", "cases"));
        assert!(s.allows("call", "git.push"));
        assert!(s.allows("read", "repo:acme/web"));
        assert!(!s.allows("export", "cases"));
        assert_eq!(s.to_string(), "read:cases call:git.push read:repo:acme/web");
    }

    #[test]
    fn rejects_bad_tokens() {
        assert!(matches!(
            Scope::parse("Read:cases"),
            Err(ScopeError::BadAction(_))
        ));
        assert!(matches!(
            Scope::parse("read:"),
            Err(ScopeError::BadTarget(_))
        ));
        assert!(matches!(
            Scope::from_grants(&[Grant {
                identifier: "x".into(),
                actions: vec![]
            }]),
            Err(ScopeError::NoActions(_))
        ));
        let many: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
        assert_eq!(Scope::parse(&many.join(" ")), Err(ScopeError::TooLarge));
    }

    #[test]
    fn json_form_round_trips() {
        let s = Scope::parse("read:cases write:cases call:git.push").unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"identifier": "cases", "actions": ["read", "write"]},
                {"identifier": "git.push", "actions": ["call"]}
            ])
        );
        let back: Scope = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    fn arb_scope() -> impl Strategy<Value = Scope> {
        proptest::collection::vec(("(read|write|call|export)", "[a-d]"), 0..8).prop_map(|v| {
            let mut s = Scope::empty();
            for (a, t) in v {
                s.insert(&a, &t).unwrap();
            }
            s
        })
    }

    proptest! {
        #[test]
        fn intersection_is_within_both(a in arb_scope(), b in arb_scope()) {
            let i = a.intersect(&b);
            prop_assert!(i.is_subset_of(&a));
            prop_assert!(i.is_subset_of(&b));
            prop_assert_eq!(a.excess_over(&b).is_empty(), a.is_subset_of(&b));
        }
    }
}
