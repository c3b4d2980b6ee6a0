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

use crate::args::ArgRules;

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
    /// Rules on the call's arguments (see [`crate::args`]).
    #[serde(default, skip_serializing_if = "ArgRules::is_empty")]
    pub arguments: ArgRules,
}

fn default_actions() -> Vec<String> {
    vec![DEFAULT_ACTION.to_string()]
}

/// A set of (action, target) pairs, kept sorted so equal scopes compare and print equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    grants: BTreeMap<String, BTreeSet<String>>,
    args: BTreeMap<String, ArgRules>,
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
            if !g.arguments.is_empty() {
                let merged = scope
                    .args
                    .get(&g.identifier)
                    .map(|r| r.and(&g.arguments))
                    .unwrap_or_else(|| g.arguments.clone());
                scope.args.insert(g.identifier.clone(), merged);
            }
        }
        Ok(scope)
    }

    /// The string values the argument rules pin (`"to": "a@x"`, `{"in": [...]}`): values the
    /// task's request named.
    pub fn pinned_values(&self) -> Vec<String> {
        use crate::args::ArgRule;
        let mut out = Vec::new();
        for rules in self.args.values() {
            for rule in rules.0.values().flatten() {
                let values: &[serde_json::Value] = match rule {
                    ArgRule::Eq(v) => std::slice::from_ref(v),
                    ArgRule::In(set) => set,
                    _ => &[],
                };
                out.extend(values.iter().filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }));
            }
        }
        out
    }

    /// The argument rules on `target`, if any.
    pub fn arg_rules(&self, target: &str) -> Option<&ArgRules> {
        self.args.get(target)
    }

    /// Checks a call's arguments against the rules on `target`.
    pub fn check_args(
        &self,
        target: &str,
        args: &serde_json::Map<String, serde_json::Value>,
        third_party: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        match self.args.get(target) {
            Some(rules) => rules.check(args, third_party),
            None => Ok(()),
        }
    }

    /// This scope with `outer`'s argument rules added on the targets they share, so that the
    /// result is within `outer`'s rules too.
    pub fn narrowed_by(&self, outer: &Scope) -> Scope {
        let mut out = self.clone();
        for target in self.grants.keys() {
            if let Some(o) = outer.args.get(target) {
                let merged = out
                    .args
                    .get(target)
                    .map(|m| m.and(o))
                    .unwrap_or_else(|| o.clone());
                out.args.insert(target.clone(), merged);
            }
        }
        out
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

    /// What `self` asks beyond `outer`: pairs as `action:target` tokens, and arguments pinned
    /// outside `outer`'s rules as `target(argument)`.
    pub fn excess_over(&self, outer: &Scope) -> Vec<String> {
        let mut out: Vec<String> = self
            .pairs()
            .filter(|(a, t)| !outer.allows(a, t))
            .map(|(a, t)| format!("{a}:{t}"))
            .collect();
        for (target, rules) in &self.args {
            if let Some(o) = outer.args.get(target) {
                out.extend(
                    rules
                        .escapes(o)
                        .into_iter()
                        .map(|a| format!("{target}({a})")),
                );
            }
        }
        out
    }

    /// Whether every pair of `self` is in `outer`, and every argument `outer` constrains is
    /// constrained in `self` within `outer`'s rules.
    pub fn is_subset_of(&self, outer: &Scope) -> bool {
        self.pairs().all(|(a, t)| outer.allows(a, t))
            && self.grants.keys().all(|t| match outer.args.get(t) {
                None => true,
                Some(o) => {
                    let mine = self.args.get(t).cloned().unwrap_or_default();
                    o.0.keys().all(|name| mine.0.contains_key(name)) && mine.escapes(o).is_empty()
                }
            })
    }

    /// The pairs held by both scopes, under the argument rules of both.
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
        for t in out.grants.keys() {
            let rules = match (self.args.get(t), other.args.get(t)) {
                (Some(x), Some(y)) => Some(x.and(y)),
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => None,
            };
            if let Some(r) = rules {
                out.args.insert(t.clone(), r);
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
                arguments: self.args.get(t).cloned().unwrap_or_default(),
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
                actions: vec![],
                arguments: Default::default(),
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

    #[test]
    fn argument_rules_travel_with_the_scope() {
        let asked: Scope = serde_json::from_value(serde_json::json!([
            {"identifier": "send_money", "actions": ["call"], "arguments": {"amount": {"max": 100}}}
        ]))
        .unwrap();
        let envelope: Scope = serde_json::from_value(serde_json::json!([
            {"identifier": "send_money", "actions": ["call"], "arguments": {"amount": {"max": 1000}, "recipient": {"in": ["a", "b"]}}}
        ]))
        .unwrap();
        assert!(asked.excess_over(&envelope).is_empty());
        let effective = asked.narrowed_by(&envelope);
        assert!(effective.is_subset_of(&envelope));
        assert!(!asked.is_subset_of(&envelope), "leaves recipient free");
        let call = serde_json::json!({"amount": 50, "recipient": "c"});
        assert!(
            effective
                .check_args("send_money", call.as_object().unwrap(), &|_| false)
                .is_err()
        );
        let greedy: Scope = serde_json::from_value(serde_json::json!([
            {"identifier": "send_money", "arguments": {"amount": {"max": 5000}}}
        ]))
        .unwrap();
        assert_eq!(greedy.excess_over(&envelope), vec!["send_money(amount)"]);
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
