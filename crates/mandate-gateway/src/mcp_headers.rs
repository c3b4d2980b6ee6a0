//! The MCP standard request headers (SEP-2243, MCP 2026-07-28): `Mcp-Method`, `Mcp-Name` and
//! `Mcp-Param-{Name}` mirror fields of the JSON-RPC body so intermediaries can route on them.
//! A server that reads the body must refuse a request whose headers say something else: a
//! load balancer that routed on the header and the gateway that judged the body would
//! otherwise disagree on what the call is.

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::Value;

/// The protocol revision from which the headers are required.
pub const REQUIRED_FROM: &str = "2026-07-28";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(format!("the `{name}` header is repeated"));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| format!("the `{name}` header is not visible ASCII"))
}

/// A header value as the SEP encodes it: plain, or `=?base64?…?=` (UTF-8).
fn decoded(v: &str) -> Result<String, String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| "a base64-encoded MCP header value does not decode".to_string()),
        None => Ok(v.to_string()),
    }
}

/// Whether an argument's value is what a header says it is.
fn same_value(header: &str, v: &Value) -> bool {
    match v {
        Value::String(s) => header == s,
        Value::Bool(b) => header == if *b { "true" } else { "false" },
        Value::Number(n) => match (header.parse::<f64>(), n.as_f64()) {
            (Ok(h), Some(x)) => h == x,
            _ => false,
        },
        _ => false,
    }
}

/// Checks the standard headers of one message against its body; `tool_schema` is the input
/// schema of the tool a `tools/call` names, for its `x-mcp-header` parameters. The headers are
/// required when the request's protocol version is [`REQUIRED_FROM`] or later.
pub fn check(headers: &HeaderMap, msg: &Value, tool_schema: Option<&Value>) -> Result<(), String> {
    let required = header(headers, "mcp-protocol-version")?.is_some_and(|v| v >= REQUIRED_FROM);
    let method = msg.get("method").and_then(Value::as_str);
    match (header(headers, "mcp-method")?, method) {
        (Some(h), Some(m)) if h != m => {
            return Err(format!(
                "the Mcp-Method header says `{}` but the body's method is `{}`",
                h.chars().take(64).collect::<String>(),
                m.chars().take(64).collect::<String>()
            ));
        }
        (None, Some(_)) if required => {
            return Err("the Mcp-Method header is required from MCP 2026-07-28".into());
        }
        _ => {}
    }
    let params = msg.get("params");
    let named = matches!(
        method,
        Some("tools/call" | "resources/read" | "prompts/get")
    );
    let body_name = params
        .and_then(|p| p.get("name").or_else(|| p.get("uri")))
        .and_then(Value::as_str);
    match (
        header(headers, "mcp-name")?.map(decoded).transpose()?,
        body_name,
    ) {
        (Some(h), Some(n)) if h != n => {
            return Err(format!(
                "the Mcp-Name header says `{}` but the body names `{}`",
                h.chars().take(128).collect::<String>(),
                n.chars().take(128).collect::<String>()
            ));
        }
        (Some(_), None) => {
            return Err("the Mcp-Name header names something the body does not".into());
        }
        (None, Some(_)) if required && named => {
            return Err(
                "the Mcp-Name header is required for this method from MCP 2026-07-28".into(),
            );
        }
        _ => {}
    }
    let Some(props) = tool_schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    else {
        return Ok(());
    };
    let args = params.and_then(|p| p.get("arguments"));
    for (prop, schema) in props {
        let Some(name) = schema.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let Ok(h) = header(headers, &format!("mcp-param-{name}")) else {
            return Err(format!("the Mcp-Param-{name} header is malformed"));
        };
        let value = args.and_then(|a| a.get(prop));
        match (h.map(decoded).transpose()?, value) {
            (Some(h), Some(v)) if !same_value(&h, v) => {
                return Err(format!(
                    "the Mcp-Param-{name} header does not match argument `{prop}`"
                ));
            }
            (Some(_), None) => {
                return Err(format!(
                    "the Mcp-Param-{name} header is set but argument `{prop}` is not"
                ));
            }
            (None, Some(_)) if required => {
                return Err(format!(
                    "the Mcp-Param-{name} header is required from MCP 2026-07-28"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn headers_must_say_what_the_body_says() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "db.execute_sql", "arguments": {"region": "us-west1", "limit": 5}}});
        let schema = json!({"properties": {"region": {"type": "string", "x-mcp-header": "Region"},
                                           "limit": {"type": "number", "x-mcp-header": "Limit"}}});
        let ok = h(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "db.execute_sql"),
            ("mcp-param-region", "us-west1"),
            ("mcp-param-limit", "5"),
        ]);
        assert!(check(&ok, &call, Some(&schema)).is_ok());
        // Older clients send none.
        assert!(check(&HeaderMap::new(), &call, Some(&schema)).is_ok());
        for bad in [
            h(&[("mcp-method", "tools/list")]),
            h(&[("mcp-name", "db.drop_table")]),
            h(&[("mcp-param-region", "eu-west1")]),
            h(&[("mcp-param-region", "=?base64?ZXUtd2VzdDE=?=")]),
            h(&[("mcp-method", "tools/call"), ("mcp-method", "tools/call")]),
            h(&[("mcp-protocol-version", "2026-07-28")]),
        ] {
            assert!(check(&bad, &call, Some(&schema)).is_err(), "{bad:?}");
        }
        let b64 = h(&[("mcp-param-region", "=?base64?dXMtd2VzdDE=?=")]);
        assert!(check(&b64, &call, Some(&schema)).is_ok());
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        assert!(
            check(
                &h(&[
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/list")
                ]),
                &list,
                None
            )
            .is_ok()
        );
    }
}
