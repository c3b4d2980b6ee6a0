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

/// A string field of `v`, or `-`.
pub fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
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
