//! The HTTP reverse proxy: `/http/<api>/<path>`. A request matching one of the API's routes is
//! an action on a resource; it is decided like any other and forwarded only when allowed, with
//! the API's headers (and secrets) injected and the agent's credential stripped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use mandate_broker::{DecideError, DecideInput, DpopInput, EventKind, ReportInput, Target};
use mandate_policy::TargetKind;
use serde_json::{Map, Value, json};

use crate::Gateway;
use crate::classify::classify;
use crate::config::{HttpApiConfig, RouteConfig};
use crate::template::redact;

/// Largest request body forwarded.
pub const MAX_PROXY_BODY: usize = 1024 * 1024;
/// Largest response body returned.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/http/{api}/{*rest}", any(proxy))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PROXY_BODY))
        .with_state(gw)
}

fn error(status: StatusCode, code: &str, msg: &str, extra: Option<Value>) -> Response {
    let mut body = json!({"error": code, "error_description": msg});
    if let (Some(Value::Object(x)), Some(o)) = (extra, body.as_object_mut()) {
        o.extend(x);
    }
    (status, axum::Json(body)).into_response()
}

/// Matches `path` against a route pattern, returning the `{param}` values.
fn matches(pattern: &str, path: &str) -> Option<Map<String, Value>> {
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let a: Vec<&str> = path.trim_matches('/').split('/').collect();
    if p.len() != a.len() {
        return None;
    }
    let mut params = Map::new();
    for (ps, seg) in p.iter().zip(&a) {
        if let Some(name) = ps.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            if seg.is_empty() {
                return None;
            }
            params.insert(name.to_string(), Value::String((*seg).to_string()));
        } else if ps != seg {
            return None;
        }
    }
    Some(params)
}

fn route<'a>(
    api: &'a HttpApiConfig,
    method: &Method,
    path: &str,
) -> Option<(&'a RouteConfig, Map<String, Value>)> {
    api.routes.iter().find_map(|r| {
        (r.method.eq_ignore_ascii_case(method.as_str()))
            .then(|| matches(&r.path, path).map(|p| (r, p)))
            .flatten()
    })
}

async fn proxy(
    State(gw): State<Arc<Gateway>>,
    Path((api_name, rest)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(api) = gw.cfg.http.iter().find(|a| a.name == api_name) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no HTTP API named `{api_name}`"),
            None,
        );
    };
    let path = format!("/{rest}");
    let Some((route, params)) = route(api, &method, &path) else {
        let msg = format!(
            "no route of `{api_name}` matches {method} {path}; unrouted requests are refused"
        );
        gw.broker
            .record_rejected_request(&format!("/http/{api_name}{path}"), &msg)
            .await;
        return error(StatusCode::FORBIDDEN, "access_denied", &msg, None);
    };
    let issuer = &gw.broker.config().issuer;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some((scheme, token)) = auth.and_then(|a| a.split_once(' ')) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "a task credential is required",
            None,
        );
    };
    let dpop = (scheme.eq_ignore_ascii_case("dpop"))
        .then(|| headers.get("dpop").and_then(|p| p.to_str().ok()))
        .flatten()
        .map(|p| DpopInput {
            proof: p.to_string(),
            method: method.as_str().to_string(),
            url: format!("{issuer}/http/{api_name}{path}"),
        });
    let mut resource = route.resource.clone();
    for (k, v) in &params {
        if let Some(v) = v.as_str() {
            resource = resource.replace(&format!("{{{k}}}"), v);
        }
    }
    let mut arguments = params.clone();
    if let Some(q) = &query {
        for pair in q.split('&').take(64) {
            if let Some((k, v)) = pair.split_once('=') {
                arguments.insert(format!("query.{k}"), Value::String(v.to_string()));
            }
        }
    }
    let input = DecideInput {
        token: token.trim().to_string(),
        dpop,
        action: route.action.clone(),
        target: Target {
            kind: TargetKind::Resource,
            id: resource.clone(),
        },
        context: Map::new(),
        arguments,
        approval_id: headers
            .get("mandate-approval-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        wait: gw.cfg.approval_wait_seconds,
    };
    let (outcome, mut pending) = match gw.broker.decide_pending(&input).await {
        Ok(v) => v,
        Err(DecideError::InvalidToken(m)) | Err(DecideError::InvalidDpopProof(m)) => {
            return error(StatusCode::UNAUTHORIZED, "invalid_token", &m, None);
        }
        Err(DecideError::BadRequest(m)) => {
            return error(StatusCode::BAD_REQUEST, "invalid_request", &m, None);
        }
        Err(DecideError::Unavailable(m)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m, None);
        }
    };
    let mut detail = Map::new();
    detail.insert("upstream".into(), api_name.clone().into());
    detail.insert(
        "route".into(),
        format!("{} {}", route.method, route.path).into(),
    );
    if !outcome.allowed {
        detail.insert("outcome".into(), "refused".into());
        if let Err(e) = gw
            .broker
            .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail))
            .await
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &e.to_string(),
                None,
            );
        }
        return error(
            StatusCode::FORBIDDEN,
            if outcome.decision == "needs_approval" {
                "approval_required"
            } else {
                "access_denied"
            },
            &outcome.reason,
            Some(json!({"policies": outcome.policies, "approval_id": outcome.approval_id})),
        );
    }
    let mut url = format!("{}{path}", api.url.trim_end_matches('/'));
    if let Some(q) = &query {
        url.push('?');
        url.push_str(q);
    }
    let mut req = gw
        .http
        .request(method.clone(), &url)
        .timeout(Duration::from_secs(gw.cfg.call_timeout_seconds.max(1)))
        .body(body);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v.clone());
        }
    }
    let mut secrets = Vec::new();
    for (k, t) in &api.headers {
        match t.resolve(&gw.broker).await {
            Ok(v) => {
                req = req.header(k.as_str(), v.expose());
                for name in t.secrets() {
                    if let Ok(s) = gw.broker.secret_value(name).await {
                        secrets.push(s);
                    }
                }
            }
            Err(e) => {
                detail.insert("outcome".into(), "upstream_error".into());
                detail.insert("error".into(), e.clone().into());
                let _ = gw
                    .broker
                    .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail))
                    .await;
                return error(StatusCode::BAD_GATEWAY, "upstream_error", &e, None);
            }
        }
    }
    let started = Instant::now();
    let sent = req.send().await;
    let result = match sent {
        Ok(mut resp) => {
            let status = resp.status();
            let ctype = resp.headers().get(header::CONTENT_TYPE).cloned();
            let mut body = Vec::new();
            let mut too_big = false;
            while let Ok(Some(chunk)) = resp.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_RESPONSE {
                    too_big = true;
                    break;
                }
            }
            if too_big {
                Err(format!(
                    "`{api_name}` answered more than {MAX_RESPONSE} bytes"
                ))
            } else {
                Ok((status, ctype, body))
            }
        }
        Err(e) => Err(if e.is_timeout() {
            format!("`{api_name}` did not answer in time")
        } else {
            format!("`{api_name}` is unreachable: {}", crate::root_cause(&e))
        }),
    };
    let elapsed = started.elapsed();
    detail.insert(
        "latency_ms".into(),
        json!((elapsed.as_secs_f64() * 10_000.0).round() / 10.0),
    );
    metrics::histogram!("mandate_gateway_upstream_seconds", "upstream" => api_name.clone())
        .record(elapsed.as_secs_f64());
    match result {
        Ok((status, ctype, body)) => {
            let mut text = Value::String(String::from_utf8_lossy(&body).into_owned());
            let scrubbed = redact(&mut text, &secrets);
            let text = text.as_str().unwrap_or_default().to_string();
            let classes: Vec<String> = classify(&text, &api.classifiers).into_iter().collect();
            let report = ReportInput {
                token: String::new(),
                dpop: None,
                target: Some(Target {
                    kind: TargetKind::Resource,
                    id: resource.clone(),
                }),
                data_classes: classes.clone(),
                output: Some(
                    text.chars()
                        .take(mandate_core::provenance::MAX_SCAN / 4)
                        .collect(),
                ),
                third_party: false,
            };
            if let Some(noted) = gw
                .broker
                .note_output(&mut pending, &outcome.task_id, &report)
                && noted.remembered > 0
            {
                detail.insert("third_party_values".into(), json!(noted.remembered));
            }
            detail.insert("outcome".into(), "forwarded".into());
            detail.insert("status".into(), json!(status.as_u16()));
            if !classes.is_empty() {
                detail.insert("classified".into(), json!(classes));
            }
            if let Err(e) = gw
                .broker
                .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail))
                .await
            {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                    None,
                );
            }
            let body: Vec<u8> = if scrubbed > 0 {
                text.into_bytes()
            } else {
                body
            };
            let mut r = (
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
            )
                .into_response();
            if let Some(c) = ctype.and_then(|c| HeaderValue::from_bytes(c.as_bytes()).ok()) {
                r.headers_mut().insert(header::CONTENT_TYPE, c);
            }
            r
        }
        Err(msg) => {
            detail.insert("outcome".into(), "upstream_error".into());
            detail.insert("error".into(), msg.clone().into());
            let _ = gw
                .broker
                .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail))
                .await;
            error(StatusCode::BAD_GATEWAY, "upstream_error", &msg, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns() {
        let p = matches("/repos/{owner}/{repo}", "/repos/acme/web").unwrap();
        assert_eq!(p.get("owner").unwrap(), "acme");
        assert!(matches("/repos/{owner}/{repo}", "/repos/acme").is_none());
        assert!(matches("/repos/{owner}", "/users/acme").is_none());
    }
}
