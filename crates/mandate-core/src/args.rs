//! Argument rules: what a task may pass to a tool, pinned in its scope.
//!
//! Whole-tool allow and deny cannot tell a legitimate payment from a hijacked one; the arguments
//! can. A grant may pin arguments by exact value, by a set of values, by a glob pattern (`*`
//! and `?`, for strings) or by numeric bounds. In JSON a bare value means "exactly this":
//!
//! ```json
//! {"recipient": {"in": ["acct-1", "acct-2"]}, "amount": {"max": 100}, "to": {"pattern": "*@example.com"}, "currency": "EUR"}
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::json::exactly_comparable;

/// Most rules per target.
pub const MAX_RULES: usize = 32;
/// Most values in an `in` rule.
pub const MAX_SET: usize = 256;
/// Longest pattern or string value in a rule.
pub const MAX_RULE_STRING: usize = 1024;

/// One rule on one argument.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgRule {
    /// Exactly this value.
    Eq(Value),
    /// One of these values.
    In(Vec<Value>),
    /// A string matching this glob (`*` any run, `?` one character).
    Pattern(String),
    /// No value that only third-party content supplied (see [`crate::provenance`]): the
    /// argument must come from the task's request, a trusted output, or the agent itself.
    /// Written `{"third_party": false}`.
    NoThirdParty,
    /// A number within these bounds (inclusive).
    Range {
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
    },
}

// Bounds come from JSON numbers, which are never NaN, so equality is total.
impl Eq for ArgRule {}

fn scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// Whether two values are equal; numbers by value (`1` equals `1.0`), and only where they can be
/// compared exactly (see [`crate::json`]): two integers beyond 2^53 that share a double are not
/// equal.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
                return i == j;
            }
            if let (Some(i), Some(j)) = (x.as_u64(), y.as_u64()) {
                return i == j;
            }
            exactly_comparable(x) && exactly_comparable(y) && x.as_f64() == y.as_f64()
        }
        _ => a == b,
    }
}

/// The value of a number argument as compared by range rules, if it can be compared exactly.
fn comparable(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) if exactly_comparable(n) => n.as_f64(),
        _ => None,
    }
}

/// Whether `v` is a number the rule `r` cannot compare exactly: equality compares integers of
/// any size exactly, ranges compare doubles.
fn too_precise(r: &ArgRule, v: &Value) -> bool {
    let Value::Number(n) = v else {
        return false;
    };
    match r {
        ArgRule::Range { .. } => !exactly_comparable(n),
        _ => !(n.is_i64() || n.is_u64() || exactly_comparable(n)),
    }
}

/// Glob match with `*` and `?`, on characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

impl ArgRule {
    /// Whether `v` satisfies the rule; for an array, whether every element does. The
    /// provenance rule is judged by [`ArgRules::check`], which knows the call's provenance.
    pub fn admits(&self, v: &Value) -> bool {
        match v {
            Value::Array(items) if !matches!(self, ArgRule::NoThirdParty) => {
                items.iter().all(|i| !i.is_array() && self.admits_one(i))
            }
            _ => self.admits_one(v),
        }
    }

    fn admits_one(&self, v: &Value) -> bool {
        match self {
            ArgRule::NoThirdParty => true,
            ArgRule::Eq(want) => same(want, v),
            ArgRule::In(set) => set.iter().any(|w| same(w, v)),
            ArgRule::Pattern(p) => v.as_str().is_some_and(|s| glob(p, s)),
            ArgRule::Range { min, max } => comparable(v)
                .is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)),
        }
    }

    /// Whether every value `self` admits is admitted by `outer` (conservative: `false` when
    /// that cannot be shown, e.g. for two different patterns).
    pub fn within(&self, outer: &ArgRule) -> bool {
        match self {
            ArgRule::Eq(v) => outer.admits(v),
            ArgRule::In(set) => set.iter().all(|v| outer.admits(v)),
            ArgRule::Pattern(p) => match outer {
                ArgRule::Pattern(q) => p == q || q.chars().all(|c| c == '*'),
                _ => false,
            },
            ArgRule::NoThirdParty => matches!(outer, ArgRule::NoThirdParty),
            ArgRule::Range { min, max } => match outer {
                ArgRule::Range {
                    min: omin,
                    max: omax,
                } => {
                    let lo = match (min, omin) {
                        (_, None) => true,
                        (Some(a), Some(b)) => a >= b,
                        (None, Some(_)) => false,
                    };
                    let hi = match (max, omax) {
                        (_, None) => true,
                        (Some(a), Some(b)) => a <= b,
                        (None, Some(_)) => false,
                    };
                    lo && hi
                }
                ArgRule::Eq(v) => min.is_some() && min == max && v.as_f64() == *min,
                ArgRule::In(_) | ArgRule::Pattern(_) | ArgRule::NoThirdParty => false,
            },
        }
    }

    fn check(&self) -> Result<(), String> {
        let exact = |v: &Value| !too_precise(self, v);
        match self {
            ArgRule::Eq(v) if !exact(v) => Err(format!(
                "a number in a rule may have at most {} significant digits",
                crate::json::MAX_SIGNIFICANT_DIGITS
            )),
            ArgRule::In(set) if !set.iter().all(exact) => Err(format!(
                "a number in a rule may have at most {} significant digits",
                crate::json::MAX_SIGNIFICANT_DIGITS
            )),
            ArgRule::Eq(v) if !scalar(v) => {
                Err("an exact value must be a string, number or boolean".into())
            }
            ArgRule::Eq(Value::String(s)) if s.len() > MAX_RULE_STRING => {
                Err(format!("a value is longer than {MAX_RULE_STRING} bytes"))
            }
            ArgRule::In(set) if set.is_empty() || set.len() > MAX_SET => {
                Err(format!("`in` needs 1 to {MAX_SET} values"))
            }
            ArgRule::In(set) if !set.iter().all(scalar) => {
                Err("`in` values must be strings, numbers or booleans".into())
            }
            ArgRule::Pattern(p) if p.is_empty() || p.len() > MAX_RULE_STRING => {
                Err(format!("a pattern must be 1 to {MAX_RULE_STRING} bytes"))
            }
            ArgRule::Range {
                min: None,
                max: None,
            } => Err("a range needs `min` or `max`".into()),
            ArgRule::Range {
                min: Some(a),
                max: Some(b),
            } if a > b => Err("a range's `min` is above its `max`".into()),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ArgRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgRule::Eq(v) => write!(f, "= {v}"),
            ArgRule::In(set) => write!(
                f,
                "in {{{}}}",
                set.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ArgRule::Pattern(p) => write!(f, "matches `{p}`"),
            ArgRule::NoThirdParty => {
                write!(f, "carries no value only third-party content supplied")
            }
            ArgRule::Range { min, max } => match (min, max) {
                (Some(a), Some(b)) => write!(f, "between {a} and {b}"),
                (Some(a), None) => write!(f, "≥ {a}"),
                (None, Some(b)) => write!(f, "≤ {b}"),
                (None, None) => write!(f, "any number"),
            },
        }
    }
}

/// A range bound as JSON that reads back as the same bound: a whole number within ±2^53 is
/// written as an integer (`1777777777777777`, not `1777777777777777.0`, which has more
/// significant digits than a rule may carry).
fn bound_json(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "whole and within ±2^53: exact"
        )]
        return Value::from(x as i64);
    }
    serde_json::json!(x)
}

impl Serialize for ArgRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = match self {
            ArgRule::Eq(v) => v.clone(),
            ArgRule::In(set) => serde_json::json!({ "in": set }),
            ArgRule::Pattern(p) => serde_json::json!({ "pattern": p }),
            ArgRule::NoThirdParty => serde_json::json!({ "third_party": false }),
            ArgRule::Range { min, max } => {
                let mut m = serde_json::Map::new();
                if let Some(a) = min {
                    m.insert("min".into(), bound_json(*a));
                }
                if let Some(b) = max {
                    m.insert("max".into(), bound_json(*b));
                }
                Value::Object(m)
            }
        };
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ArgRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let rule = match &v {
            Value::Object(m) => {
                let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                match keys.as_slice() {
                    ["eq"] => ArgRule::Eq(m.get("eq").cloned().unwrap_or(Value::Null)),
                    ["in"] => match m.get("in") {
                        Some(Value::Array(a)) => ArgRule::In(a.clone()),
                        _ => return Err(D::Error::custom("`in` must be an array")),
                    },
                    ["third_party"] => match m.get("third_party") {
                        Some(Value::Bool(false)) => ArgRule::NoThirdParty,
                        _ => {
                            return Err(D::Error::custom(
                                "`third_party` can only be `false` (no third-party values)",
                            ));
                        }
                    },
                    ["pattern"] => match m.get("pattern") {
                        Some(Value::String(p)) => ArgRule::Pattern(p.clone()),
                        _ => return Err(D::Error::custom("`pattern` must be a string")),
                    },
                    _ if !keys.is_empty() && keys.iter().all(|k| *k == "min" || *k == "max") => {
                        let num = |k: &str| -> Result<Option<f64>, D::Error> {
                            match m.get(k) {
                                None => Ok(None),
                                Some(n) => comparable(n).map(Some).ok_or_else(|| {
                                    D::Error::custom(format!(
                                        "`{k}` must be a number of at most {} significant digits",
                                        crate::json::MAX_SIGNIFICANT_DIGITS
                                    ))
                                }),
                            }
                        };
                        ArgRule::Range {
                            min: num("min")?,
                            max: num("max")?,
                        }
                    }
                    _ => {
                        return Err(D::Error::custom(
                            "an argument rule is a value, or an object with `eq`, `in`, `pattern`, or `min`/`max`",
                        ));
                    }
                }
            }
            other => ArgRule::Eq(other.clone()),
        };
        rule.check().map_err(D::Error::custom)?;
        Ok(rule)
    }
}

/// The rules on a target's arguments: every rule listed for an argument must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgRules(pub BTreeMap<String, Vec<ArgRule>>);

impl ArgRules {
    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks call arguments; `third_party` tells whether an argument (by name) carries a value
    /// only third-party content supplied. The error names the first argument that breaks a rule.
    pub fn check(
        &self,
        args: &serde_json::Map<String, Value>,
        third_party: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        for (name, rules) in &self.0 {
            let Some(v) = args.get(name) else {
                return Err(format!("argument `{name}` is required by the task's scope"));
            };
            for r in rules {
                if matches!(r, ArgRule::NoThirdParty) {
                    if third_party(name) {
                        return Err(format!(
                            "argument `{name}` carries a value that only third-party content supplied, and the task's scope requires it not to"
                        ));
                    }
                    continue;
                }
                if !r.admits(v) {
                    let shown: String = v.to_string().chars().take(80).collect();
                    if too_precise(r, v) {
                        return Err(format!(
                            "argument `{name}` = {shown} has more precision than Mandate compares ({} significant digits, integers up to 2^53); round it or send it as a string",
                            crate::json::MAX_SIGNIFICANT_DIGITS
                        ));
                    }
                    return Err(format!(
                        "argument `{name}` = {shown} is outside the task's scope ({name} {r})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Both sets of rules at once.
    pub fn and(&self, other: &ArgRules) -> ArgRules {
        let mut out = self.0.clone();
        for (name, rules) in &other.0 {
            let entry = out.entry(name.clone()).or_default();
            for r in rules {
                if !entry.contains(r) {
                    entry.push(r.clone());
                }
            }
        }
        ArgRules(out)
    }

    /// The arguments of `self` that `outer` constrains and `self` does not keep within
    /// `outer`'s rules. An argument `outer` constrains but `self` leaves free is not a problem
    /// here: callers combine both rule sets with [`ArgRules::and`].
    pub fn escapes(&self, outer: &ArgRules) -> Vec<String> {
        let mut out = Vec::new();
        for (name, outer_rules) in &outer.0 {
            let Some(mine) = self.0.get(name) else {
                continue;
            };
            let fits = outer_rules.iter().all(|o| mine.iter().any(|m| m.within(o)));
            if !fits {
                out.push(name.clone());
            }
        }
        out
    }
}

impl Serialize for ArgRules {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = serde_json::Map::new();
        for (k, rules) in &self.0 {
            let v = match rules.as_slice() {
                [one] => serde_json::to_value(one).map_err(serde::ser::Error::custom)?,
                many => serde_json::to_value(many).map_err(serde::ser::Error::custom)?,
            };
            m.insert(k.clone(), v);
        }
        Value::Object(m).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ArgRules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = serde_json::Map::<String, Value>::deserialize(d)?;
        if m.len() > MAX_RULES {
            return Err(D::Error::custom(format!(
                "more than {MAX_RULES} argument rules"
            )));
        }
        let mut out = BTreeMap::new();
        for (k, v) in m {
            if k.is_empty() || k.len() > 128 {
                return Err(D::Error::custom("argument names must be 1 to 128 bytes"));
            }
            // An array of rule objects is a conjunction; any other array is an error, so that
            // `["a", "b"]` is not silently read as "equal to the array".
            let rules = match v {
                Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Value::Object(_) => ArgRule::deserialize(i).map_err(D::Error::custom),
                        _ => Err(D::Error::custom(format!(
                            "argument `{k}`: use {{\"in\": [...]}} for a set of values"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                other => vec![
                    ArgRule::deserialize(other)
                        .map_err(|e| D::Error::custom(format!("argument `{k}`: {e}")))?,
                ],
            };
            out.insert(k, rules);
        }
        Ok(ArgRules(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: Value) -> ArgRules {
        serde_json::from_value(v).unwrap()
    }

    /// Found by the `scope` fuzz target: a whole-number bound of 16 digits was accepted, then
    /// written back as `1777777777777777.0` and refused on reading (a stored task unreadable).
    #[test]
    fn large_whole_bounds_read_back() {
        for v in [
            json!(1_777_777_777_777_777_i64),
            json!(-9_007_199_254_740_992_i64),
            json!(99.95),
            json!(0),
        ] {
            let r = rules(json!({"amount": {"min": v, "max": v}}));
            let text = serde_json::to_string(&r).unwrap();
            let back: ArgRules = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
        assert_eq!(
            serde_json::to_string(&rules(
                json!({"amount": {"max": 1_777_777_777_777_777_i64}})
            ))
            .unwrap(),
            r#"{"amount":{"max":1777777777777777}}"#
        );
    }

    #[test]
    fn glob_matches() {
        assert!(glob("*@example.com", "bob@example.com"));
        assert!(!glob("*@example.com", "bob@example.com.evil"));
        assert!(glob("a?c*", "abcdef"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
    }

    #[test]
    fn checks_call_arguments() {
        let r = rules(
            json!({"recipient": {"in": ["a", "b"]}, "amount": {"max": 100}, "to": {"pattern": "*@example.com"}, "currency": "EUR"}),
        );
        let ok = json!({"recipient": "a", "amount": 99.5, "to": "x@example.com", "currency": "EUR", "memo": "hi"});
        assert!(r.check(ok.as_object().unwrap(), &|_| false).is_ok());
        let bad =
            json!({"recipient": "a", "amount": 500, "to": "x@example.com", "currency": "EUR"});
        assert_eq!(
            r.check(bad.as_object().unwrap(), &|_| false).unwrap_err(),
            "argument `amount` = 500 is outside the task's scope (amount ≤ 100)"
        );
        let missing = json!({"recipient": "a", "amount": 5, "currency": "EUR"});
        assert!(
            r.check(missing.as_object().unwrap(), &|_| false)
                .unwrap_err()
                .contains("`to` is required")
        );
    }

    #[test]
    fn numbers_are_compared_only_where_exact() {
        let r = rules(json!({"amount": {"max": 100}, "account": {"in": [9007199254740993u64]}}));
        let call = |amount: &str, account: &str| {
            let v: Value =
                serde_json::from_str(&format!(r#"{{"amount": {amount}, "account": {account}}}"#))
                    .unwrap();
            r.check(v.as_object().unwrap(), &|_| false)
        };
        assert!(call("100", "9007199254740993").is_ok());
        assert!(call("99.99", "9007199254740993").is_ok());
        let e = call("100.00000000000001", "9007199254740993").unwrap_err();
        assert!(e.contains("more precision"), "{e}");
        // Two integers that share a double are different accounts.
        assert!(call("1", "9007199254740992").is_err());
        assert!(
            serde_json::from_value::<ArgRules>(json!({"a": {"max": 0.30000000000000004}})).is_err()
        );
    }

    #[test]
    fn array_arguments_are_checked_element_by_element() {
        let r = rules(
            json!({"recipients": {"in": ["a@x.example", "b@x.example"]}, "cc": {"pattern": "*@x.example"}}),
        );
        let call = |v: Value| r.check(v.as_object().unwrap(), &|_| false);
        assert!(
            call(json!({"recipients": ["a@x.example", "b@x.example"], "cc": ["c@x.example"]}))
                .is_ok()
        );
        assert!(call(json!({"recipients": ["a@x.example", "evil@y.example"], "cc": []})).is_err());
        assert!(call(json!({"recipients": "a@x.example", "cc": ["c@evil.example"]})).is_err());
        assert!(call(json!({"recipients": [["a@x.example"]], "cc": "c@x.example"})).is_err());
    }

    #[test]
    fn a_rule_can_refuse_third_party_values() {
        let r = rules(json!({"to": {"third_party": false}}));
        let args = json!({"to": "mallory@evil.example"});
        assert!(r.check(args.as_object().unwrap(), &|_| false).is_ok());
        let e = r
            .check(args.as_object().unwrap(), &|a| a == "to")
            .unwrap_err();
        assert!(e.contains("third-party"), "{e}");
        assert!(serde_json::from_value::<ArgRules>(json!({"to": {"third_party": true}})).is_err());
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"to": {"third_party": false}})
        );
    }

    #[test]
    fn containment() {
        let env = rules(json!({"amount": {"max": 1000}, "to": {"pattern": "*@example.com"}}));
        assert!(
            rules(json!({"amount": {"min": 1, "max": 100}}))
                .escapes(&env)
                .is_empty()
        );
        assert_eq!(
            rules(json!({"amount": {"max": 5000}})).escapes(&env),
            vec!["amount"]
        );
        assert!(
            rules(json!({"to": {"in": ["a@example.com"]}}))
                .escapes(&env)
                .is_empty()
        );
        assert_eq!(rules(json!({"to": "a@evil.com"})).escapes(&env), vec!["to"]);
        assert_eq!(
            rules(json!({"amount": {"min": 0}})).escapes(&env),
            vec!["amount"]
        );
    }

    #[test]
    fn malformed_rules_are_refused() {
        for bad in [
            json!({"a": {"in": []}}),
            json!({"a": {"min": 5, "max": 1}}),
            json!({"a": {"what": 1}}),
            json!({"a": ["x", "y"]}),
            json!({"a": {"eq": [1]}}),
        ] {
            assert!(
                serde_json::from_value::<ArgRules>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
