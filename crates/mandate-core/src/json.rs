//! Strict JSON for what enforcement points send: the text a decision is made on must mean one
//! thing to every parser.
//!
//! - **Duplicate object keys are refused at any depth.** `{"amount": 5000, "amount": 50}` is 50
//!   to a parser that keeps the last value and 5000 to one that keeps the first; Mandate must
//!   never judge a call its enforcement point would execute differently.
//! - **Numbers must be exactly comparable.** Argument rules compare numbers as IEEE-754 doubles;
//!   a double holds any decimal of up to 15 significant digits exactly enough that distinct
//!   decimals stay distinct and ordered. A number written with more significant digits (or an
//!   integer beyond ±2^53) could be read as a different value by the enforcement point than by
//!   Mandate, so it is refused: send such values as strings.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most significant digits a number may carry.
pub const MAX_SIGNIFICANT_DIGITS: usize = 15;
/// Largest integer magnitude compared exactly (2^53).
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Checks that `raw` is one JSON value with no duplicate keys and only exactly comparable
/// numbers. The error is one line naming the problem.
pub fn check_strict(raw: &[u8]) -> Result<(), String> {
    check_unique_keys(raw)?;
    check_numbers(raw)
}

/// Checks that no object in `raw` repeats a key.
pub fn check_unique_keys(raw: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    Unique
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())
}

/// Whether a number, as a double, is within the precision Mandate compares exactly: an integer
/// of at most 2^53 in magnitude, or a value whose shortest round-trip decimal form has at most
/// [`MAX_SIGNIFICANT_DIGITS`] significant digits.
pub fn exactly_comparable(n: &serde_json::Number) -> bool {
    if let Some(u) = n.as_u64() {
        return u <= MAX_EXACT_INTEGER;
    }
    if let Some(i) = n.as_i64() {
        return i.unsigned_abs() <= MAX_EXACT_INTEGER;
    }
    n.as_f64().is_some_and(|f| {
        f.is_finite()
            && significant_digits(&f.to_string()).is_some_and(|d| d <= MAX_SIGNIFICANT_DIGITS)
    })
}

/// Significant digits of a decimal number's text (`-12.3400e5` has 4), or `None` if the text is
/// not a number.
fn significant_digits(text: &str) -> Option<usize> {
    let t = text.strip_prefix('-').unwrap_or(text);
    let mantissa = t.split(['e', 'E']).next()?;
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    // Trailing zeros are significant only in an integer part; `1000` is exact either way, so
    // count them out: what matters is whether the value fits a double's decimal precision.
    Some(digits.trim_end_matches('0').len())
}

/// Walks the text of `raw` outside strings and checks every number token.
fn check_numbers(raw: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = raw.get(i) {
                    match c {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while raw
                    .get(i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    i += 1;
                }
                let token = std::str::from_utf8(raw.get(start..i).unwrap_or_default())
                    .map_err(|e| e.to_string())?;
                check_number_token(token)?;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

fn check_number_token(token: &str) -> Result<(), String> {
    let shown: String = token.chars().take(40).collect();
    let integer = !token.contains(['.', 'e', 'E']);
    if integer {
        let magnitude = token.strip_prefix('-').unwrap_or(token);
        let exact = magnitude.len() <= 16
            && magnitude
                .parse::<u64>()
                .is_ok_and(|m| m <= MAX_EXACT_INTEGER);
        if !exact {
            return Err(format!(
                "the integer {shown} is beyond ±2^53 and cannot be compared exactly; send it as a string"
            ));
        }
        return Ok(());
    }
    match significant_digits(token) {
        Some(d) if d <= MAX_SIGNIFICANT_DIGITS => Ok(()),
        Some(_) => Err(format!(
            "the number {shown} has more than {MAX_SIGNIFICANT_DIGITS} significant digits and cannot be compared exactly; round it or send it as a string"
        )),
        None => Err(format!("`{shown}` is not a number")),
    }
}

/// A visitor that accepts any JSON value and refuses objects with a repeated key.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(Unique)?;
            if !seen.insert(key.clone()) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!(
                    "the key `{shown}` appears twice in one object; duplicate keys are refused"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(check_strict(br#"{"a": 1, "b": {"c": [1, {"d": 2}]}}"#).is_ok());
        for bad in [
            &br#"{"amount": 5000, "amount": 50}"#[..],
            br#"{"x": {"arguments": {"amount": 1, "amount": 2}}}"#,
            br#"[{"k": 1, "k": 1}]"#,
            // Escapes name the same key.
            br#"{"amount": 1, "\u0061mount": 2}"#,
        ] {
            let e = check_strict(bad).unwrap_err();
            assert!(e.contains("appears twice"), "{e}");
        }
    }

    #[test]
    fn numbers_must_be_exactly_comparable() {
        for ok in [
            "1",
            "-2",
            "9007199254740992",
            "99.95",
            "100.0000000000",
            "1e300",
            "0.000123",
            r#"{"s": "100.00000000000001 in a string"}"#,
        ] {
            assert!(check_strict(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "100.00000000000001",
            "100.000000000000001",
            "0.30000000000000004",
            "9007199254740993",
            "-18446744073709551615",
            r#"{"a": [1, 2, 123456789.123456789]}"#,
        ] {
            assert!(check_strict(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn comparable_doubles() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert!(exactly_comparable(&n("100")));
        assert!(exactly_comparable(&n("99.95")));
        assert!(!exactly_comparable(&n("100.00000000000001")));
        assert!(!exactly_comparable(&n("9007199254740993")));
    }
}
