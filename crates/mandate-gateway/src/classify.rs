//! Output classifiers: which data classes a tool's answer holds, judged from its text.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use crate::config::Classifier;

/// Most text looked at per output.
const MAX_TEXT: usize = 1024 * 1024;

fn email() -> Option<&'static Regex> {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").ok()
    })
    .as_ref()
}

fn card() -> Option<&'static Regex> {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\b(?:\d[ -]?){12,18}\d\b").ok())
        .as_ref()
}

fn secret() -> Option<&'static Regex> {
    static R: OnceLock<Option<Regex>> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(concat!(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
            r"|\bAKIA[0-9A-Z]{16}\b",
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b",
            r"|\bsk-[A-Za-z0-9_-]{20,}\b",
            r"|\bxox[baprs]-[A-Za-z0-9-]{10,}\b",
        ))
        .ok()
    })
    .as_ref()
}

fn luhn(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// All the text in an MCP result (its `text` contents, resource texts, structured content).
pub fn text_of(v: &Value) -> String {
    let mut out = String::new();
    fn walk(v: &Value, out: &mut String) {
        if out.len() > MAX_TEXT {
            return;
        }
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(m) => {
                for (k, i) in m {
                    // Images and blobs are base64: not text to classify.
                    if k != "data" && k != "blob" {
                        walk(i, out);
                    }
                }
            }
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// The data classes the classifiers find in `text`.
pub fn classify(text: &str, classifiers: &[Classifier]) -> BTreeSet<String> {
    let text = text.get(..MAX_TEXT.min(text.len())).unwrap_or(text);
    let mut found = BTreeSet::new();
    for c in classifiers {
        let hit = match c {
            Classifier::Email => email().is_some_and(|r| r.is_match(text)),
            Classifier::CardNumber => {
                card().is_some_and(|r| r.find_iter(text).any(|m| luhn(m.as_str())))
            }
            Classifier::Secret => secret().is_some_and(|r| r.is_match(text)),
        };
        if hit {
            found.insert(
                match c {
                    Classifier::Email => "pii",
                    Classifier::CardNumber => "financial",
                    Classifier::Secret => "secret",
                }
                .to_string(),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_should_and_not_more() {
        let all = [
            Classifier::Email,
            Classifier::CardNumber,
            Classifier::Secret,
        ];
        assert_eq!(
            classify("write to ana@example.com", &all),
            BTreeSet::from(["pii".to_string()])
        );
        assert_eq!(
            classify("card 4111 1111 1111 1111", &all),
            BTreeSet::from(["financial".to_string()])
        );
        assert!(
            classify("order 1234567890123456", &all).is_empty(),
            "fails Luhn"
        );
        assert_eq!(
            classify("token ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ", &all),
            BTreeSet::from(["secret".to_string()])
        );
        assert!(classify("nothing to see", &all).is_empty());
        let v = serde_json::json!({"content": [{"type": "text", "text": "a@b.io"}, {"type": "image", "data": "QUFB"}]});
        assert_eq!(text_of(&v).trim(), "text\na@b.io\nimage");
    }
}
