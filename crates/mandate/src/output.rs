//! Printing results: tables for people, JSON for programs.

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

/// Prints `v` as pretty JSON.
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Text as a terminal may show it: line breaks and tabs as `\n` and `\t`, control and
/// invisible formatting characters as `\u{…}`, so a value from the network (an intent, a
/// reason, a path) can neither break a table nor send escape sequences to the terminal.
pub fn safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if mandate_core::model::unsafe_text_char(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// A string field of `v` (rendered with [`safe`]), or `-`.
pub fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => safe(s),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Renders a millisecond timestamp field as RFC 3339.
pub fn time(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_i64)
        .map(|ms| mandate_core::Timestamp(ms).rfc3339())
        .unwrap_or_else(|| "-".into())
}

/// Prints a table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

/// Prints `key: value` lines.
pub fn pairs(items: &[(&str, String)]) {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in items {
        println!("{k:width$}  {v}");
    }
}

/// The member `key` of `v`, or `null`.
pub fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_text_is_rendered_inert() {
        assert_eq!(
            super::safe("line one\nline two\tx"),
            "line one\\nline two\\tx"
        );
        assert_eq!(super::safe("red\u{1b}[31m"), "red\\u{1b}[31m");
        assert_eq!(super::safe("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(super::safe("plain é"), "plain é");
    }
}
