//! HTML for the console: escaping and the page frame. Every value that reaches a page goes
//! through [`esc`]; nothing is inserted raw.

use std::fmt::Write as _;

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control and invisible reordering characters are shown, not obeyed.
            c if mandate_core::model::unsafe_text_char(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Escapes text, cut to `max` characters with an ellipsis.
pub(crate) fn esc_cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        esc(s)
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{}…", esc(&cut))
    }
}

/// The sections of the console, as (path, label).
const NAV: [(&str, &str); 4] = [
    ("/console/approvals", "Approvals"),
    ("/console/tasks", "Tasks"),
    ("/console/agents", "Agents"),
    ("/console/policies", "Policies"),
];

/// Who is signed in, for the page header.
pub(crate) struct Viewer<'a> {
    /// The person's name.
    pub name: &'a str,
    /// `admin` or `owner`.
    pub role: &'a str,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: &'a str,
}

/// A whole page: header with navigation (when someone is signed in), then `body`.
pub(crate) fn page(title: &str, current: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(v) = viewer {
        nav.push_str("<nav>");
        for (path, label) in NAV {
            let cls = if path == current {
                " class=\"current\""
            } else {
                ""
            };
            let _ = write!(nav, "<a href=\"{path}\"{cls}>{label}</a>");
        }
        let _ = write!(
            nav,
            "<span class=\"who\">{} ({})</span>\
             <form method=\"post\" action=\"/console/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form></nav>",
            esc(v.name),
            esc(v.role),
            esc(v.csrf)
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Mandate</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/console\">Mandate</a>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>\n",
        esc(title),
        esc(title)
    )
}

/// A hidden CSRF field.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// Pretty JSON, escaped, in a `<pre>`.
pub(crate) fn json_block(v: &serde_json::Value) -> String {
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    format!("<pre class=\"json\">{}</pre>", esc_cut(&s, 4000))
}

/// A time as RFC 3339 in a `<time>` element.
pub(crate) fn time(t: mandate_core::Timestamp) -> String {
    let s = t.rfc3339();
    format!("<time datetime=\"{s}\">{s}</time>")
}

/// Time left until `t`, counted down in the page by the console's script.
pub(crate) fn time_left(t: mandate_core::Timestamp, now: mandate_core::Timestamp) -> String {
    let secs = (t.0 - now.0).div_euclid(1000);
    let text = if secs <= 0 {
        "expired".to_string()
    } else if secs >= 3600 {
        format!("{}h {}m left", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m {}s left", secs / 60, secs % 60)
    } else {
        format!("{secs}s left")
    };
    format!("<span class=\"ttl\" data-expires=\"{}\">{text}</span>", t.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_hidden_characters() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("a\u{202E}b"), "a\\u{202e}b");
        assert_eq!(esc("line\nbreak"), "line\nbreak");
        assert_eq!(esc_cut("abcdef", 3), "abc…");
    }
}
