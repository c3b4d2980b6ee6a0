//! The MCP endpoint agents talk to: Streamable HTTP at `/mcp`, answering each JSON-RPC request
//! with a JSON body. Every request carries the task credential; `tools/list` shows only what
//! the task may call; `tools/call`, `resources/read` and `prompts/get` are decided one by one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mandate_broker::{
    ClientCert, DecideError, DecideInput, DpopInput, EventKind, ReportInput, Target,
};
use mandate_policy::TargetKind;
use serde_json::{Map, Value, json};

use crate::Gateway;
use crate::classify::{classify, text_of};
use crate::template::redact;
use crate::upstream::{PROTOCOL_VERSIONS, Upstream, UpstreamError};

/// Largest MCP message accepted from an agent.
pub const MAX_MCP_BODY: usize = 2 * 1024 * 1024;
/// Most sessions remembered.
const MAX_SESSIONS: usize = 10_000;

/// JSON-RPC error codes of the gateway's own refusals.
pub mod codes {
    /// Denied by policy (or scope).
    pub const DENIED: i64 = -32001;
    /// Needs a person's approval.
    pub const APPROVAL_REQUIRED: i64 = -32002;
    /// The upstream failed, timed out, or is down.
    pub const UPSTREAM: i64 = -32003;
}

/// Sessions opened by `initialize`, with the agent that opened each.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, String>>,
}

impl Sessions {
    fn open(&self, agent: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_SESSIONS {
            map.clear();
        }
        map.insert(id.clone(), agent.to_string());
        id
    }

    fn agent(&self, id: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn close(&self, id: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
            .is_some()
    }
}

pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/mcp", post(handle).get(no_stream).delete(end_session))
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_MCP_BODY))
        .with_state(gw)
}

/// RFC 9728 protected resource metadata for `/mcp`.
async fn resource_metadata(State(gw): State<Arc<Gateway>>) -> Response {
    let issuer = &gw.broker.config().issuer;
    let scopes: Vec<String> = gw
        .upstreams
        .values()
        .flat_map(|u| {
            u.offer()
                .tools
                .iter()
                .filter_map(|t| {
                    t.get("name")
                        .and_then(Value::as_str)
                        .map(|n| format!("call:{}.{n}", u.name))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    axum::Json(json!({
        "resource": format!("{issuer}/mcp"),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
        "resource_name": "Mandate MCP gateway",
        "dpop_signing_alg_values_supported": ["EdDSA", "ES256", "RS256"],
        "dpop_bound_access_tokens_required": false,
        "authorization_details_types_supported": [mandate_broker::TASK_DETAILS_TYPE],
    }))
    .into_response()
}

async fn no_stream() -> Response {
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    r
}

/// Ends a session: only the agent that opened it may, with a live credential.
async fn end_session(
    State(gw): State<Arc<Gateway>>,
    cert: Option<axum::Extension<ClientCert>>,
    headers: HeaderMap,
) -> Response {
    let (token, dpop, dpop_scheme) = match credential(&gw, &headers, "DELETE") {
        Ok(Some(c)) => c,
        Ok(None) => return unauthorized(&gw, "a task credential is required", false),
        Err(m) => return unauthorized(&gw, &m, true),
    };
    let view = match gw
        .broker
        .task_view(&token, dpop.as_ref(), cert.as_deref())
        .await
    {
        Ok(v) => v,
        Err(e) => return refusal(&gw, e, dpop_scheme),
    };
    let Some(id) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match gw.sessions.agent(id) {
        Some(agent) if agent == view.agent && gw.sessions.close(id) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Some(_) => StatusCode::FORBIDDEN.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn rpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let (Some(d), Some(o)) = (data, err.as_object_mut()) {
        o.insert("data".into(), d);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

fn reply(body: Value) -> Response {
    axum::Json(body).into_response()
}

/// 401 with the pointer to the protected-resource metadata (MCP authorization spec).
fn unauthorized(gw: &Gateway, msg: &str, dpop: bool) -> Response {
    let issuer = &gw.broker.config().issuer;
    let scheme = if dpop { "DPoP" } else { "Bearer" };
    let challenge = format!(
        "{scheme} error=\"invalid_token\", resource_metadata=\"{issuer}/.well-known/oauth-protected-resource/mcp\""
    );
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "invalid_token", "error_description": msg})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The credential of an MCP request (one `Authorization` header), with its DPoP proof for
/// `<method> {issuer}/mcp` (at most one `DPoP` header, RFC 9449 section 4.3).
fn credential(
    gw: &Gateway,
    headers: &HeaderMap,
    method: &str,
) -> Result<Option<(String, Option<DpopInput>, bool)>, String> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = all.next().and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err("send exactly one Authorization header".into());
    }
    let Some((scheme, token)) = v.split_once(' ') else {
        return Ok(None);
    };
    let dpop_scheme = scheme.eq_ignore_ascii_case("dpop");
    if !dpop_scheme && !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let proof = mandate_crypto::dpop::single_header(
        headers.get_all("dpop").iter().map(HeaderValue::as_bytes),
    )
    .map_err(|e| e.to_string())?
    .map(|p| DpopInput {
        proof: p.to_string(),
        method: method.into(),
        url: format!("{}/mcp", gw.broker.config().issuer),
    });
    Ok(Some((token.trim().to_string(), proof, dpop_scheme)))
}

/// Whether a browser `Origin` may talk to the gateway: none (not a browser), or the gateway's
/// own origin. Anything else is refused, against DNS rebinding (MCP transport spec).
fn origin_allowed(gw: &Gateway, headers: &HeaderMap) -> bool {
    let issuer = gw.broker.config().issuer.trim_end_matches('/');
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let origin = origin.trim_end_matches('/');
            // A gateway serving loopback also takes pages served from loopback (a local MCP
            // host, a proxy in front of it): a rebinding page's origin is the attacker's name.
            origin == issuer || (loopback_origin(issuer) && loopback_origin(origin))
        }
    }
}

/// Whether an origin (`scheme://host[:port]`) names this machine's loopback interface.
fn loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    })
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    cert: Option<axum::Extension<ClientCert>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !origin_allowed(&gw, &headers) {
        return (
            StatusCode::FORBIDDEN,
            reply(rpc_error(
                &Value::Null,
                -32600,
                "requests from this origin are refused",
                None,
            )),
        )
            .into_response();
    }
    if let Some(v) = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        && !PROTOCOL_VERSIONS.contains(&v)
    {
        return (
            StatusCode::BAD_REQUEST,
            reply(rpc_error(
                &Value::Null,
                -32600,
                &format!("protocol version `{v}` is not supported"),
                None,
            )),
        )
            .into_response();
    }
    let (token, dpop, dpop_scheme) = match credential(&gw, &headers, "POST") {
        Ok(Some(c)) => c,
        Ok(None) => {
            return unauthorized(
                &gw,
                "a task credential is required: send `Authorization: Bearer <token>`",
                false,
            );
        }
        Err(m) => return unauthorized(&gw, &m, true),
    };
    let parsed = serde_json::from_slice(&body).map_err(|e| format!("parse error: {e}"));
    // A repeated key would be read one way here and perhaps another way upstream.
    let parsed = parsed.and_then(|v| {
        mandate_core::json::check_unique_keys(&body)
            .map(|()| v)
            .map_err(|e| format!("parse error: {e}"))
    });
    let msg: Value = match parsed {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                reply(rpc_error(&Value::Null, -32700, &e, None)),
            )
                .into_response();
        }
    };
    if !msg.is_object() {
        return (
            StatusCode::BAD_REQUEST,
            reply(rpc_error(
                &Value::Null,
                -32600,
                "send one JSON-RPC message per request",
                None,
            )),
        )
            .into_response();
    }
    let tool_schema = tool_schema(&gw, &msg);
    if let Err(m) = crate::mcp_headers::check(&headers, &msg, tool_schema.as_ref()) {
        return (
            StatusCode::BAD_REQUEST,
            reply(rpc_error(
                &msg.get("id").cloned().unwrap_or(Value::Null),
                -32600,
                &m,
                None,
            )),
        )
            .into_response();
    }
    let id = msg.get("id").cloned();
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A response or an error from the client: nothing to answer.
        return StatusCode::ACCEPTED.into_response();
    };
    let session = headers.get("mcp-session-id").and_then(|v| v.to_str().ok());
    // Every request, notifications included, must come with a live credential.
    let view = match gw
        .broker
        .task_view(&token, dpop.as_ref(), cert.as_deref())
        .await
    {
        Ok(v) => v,
        Err(e) => return refusal(&gw, e, dpop_scheme),
    };
    if let Some(s) = session
        && method != "initialize"
    {
        match gw.sessions.agent(s) {
            Some(agent) if agent == view.agent => {}
            Some(_) => return StatusCode::FORBIDDEN.into_response(),
            None => return StatusCode::NOT_FOUND.into_response(),
        }
    }
    let Some(id) = id else {
        return StatusCode::ACCEPTED.into_response();
    };
    let params = msg.get("params").cloned().unwrap_or(json!({}));
    match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let version = if PROTOCOL_VERSIONS.contains(&asked) {
                asked
            } else {
                PROTOCOL_VERSIONS.first().copied().unwrap_or("2025-06-18")
            };
            let sid = gw.sessions.open(&view.agent);
            let mut r = reply(json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}, "resources": {}, "prompts": {}},
                "serverInfo": {"name": "mandate-gateway", "version": env!("CARGO_PKG_VERSION")},
                "instructions": format!(
                    "Tools are named <server>.<tool>. This session acts for task {} of agent {}; calls outside its scope are refused.",
                    view.task_id, view.agent
                ),
            }}));
            if let Ok(v) = HeaderValue::from_str(&sid) {
                r.headers_mut().insert("mcp-session-id", v);
            }
            r
        }
        "ping" => reply(json!({"jsonrpc": "2.0", "id": id, "result": {}})),
        "logging/setLevel" => reply(json!({"jsonrpc": "2.0", "id": id, "result": {}})),
        "tools/list" => {
            let mut tools = Vec::new();
            for u in gw.upstreams.values() {
                for t in u.offer().tools {
                    let Some(name) = t.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    let full = format!("{}.{name}", u.name);
                    if view.scope.allows("call", &full) {
                        let mut t = t.clone();
                        if let Some(o) = t.as_object_mut() {
                            o.insert("name".into(), Value::String(full));
                        }
                        tools.push(t);
                    }
                }
            }
            reply(json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}}))
        }
        "resources/list" => {
            let mut resources = Vec::new();
            for u in gw.upstreams.values() {
                for r in u.offer().resources {
                    let Some(uri) = r.get("uri").and_then(Value::as_str) else {
                        continue;
                    };
                    if view.scope.allows("read", &format!("{}:{uri}", u.name)) {
                        resources.push(r.clone());
                    }
                }
            }
            reply(json!({"jsonrpc": "2.0", "id": id, "result": {"resources": resources}}))
        }
        "resources/templates/list" => {
            let templates: Vec<Value> = gw
                .upstreams
                .values()
                .flat_map(|u| u.offer().templates)
                .collect();
            reply(json!({"jsonrpc": "2.0", "id": id, "result": {"resourceTemplates": templates}}))
        }
        "prompts/list" => {
            let mut prompts = Vec::new();
            for u in gw.upstreams.values() {
                for p in u.offer().prompts {
                    let Some(name) = p.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    let full = format!("{}.{name}", u.name);
                    if view.scope.allows("read", &format!("prompt:{full}")) {
                        let mut p = p.clone();
                        if let Some(o) = p.as_object_mut() {
                            o.insert("name".into(), Value::String(full));
                        }
                        prompts.push(p);
                    }
                }
            }
            reply(json!({"jsonrpc": "2.0", "id": id, "result": {"prompts": prompts}}))
        }
        "tools/call" | "resources/read" | "prompts/get" => {
            match call(
                &gw,
                &token,
                dpop_scheme,
                method,
                &id,
                &params,
                &view.task_id,
            )
            .await
            {
                Ok(v) => reply(v),
                Err(r) => r,
            }
        }
        "completion/complete" => {
            reply(json!({"jsonrpc": "2.0", "id": id, "result": {"completion": {"values": []}}}))
        }
        other => reply(rpc_error(
            &id,
            -32601,
            &format!("method `{other}` is not supported by the Mandate gateway"),
            None,
        )),
    }
}

/// The input schema of the tool a `tools/call` names, as its upstream lists it.
fn tool_schema(gw: &Gateway, msg: &Value) -> Option<Value> {
    if msg.get("method").and_then(Value::as_str) != Some("tools/call") {
        return None;
    }
    let full = msg.pointer("/params/name").and_then(Value::as_str)?;
    let (up, name) = full.split_once('.')?;
    gw.upstreams
        .get(up)?
        .offer()
        .tools
        .into_iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|t| t.get("inputSchema").cloned())
}

fn refusal(gw: &Gateway, e: DecideError, dpop_scheme: bool) -> Response {
    match e {
        DecideError::InvalidToken(m) => unauthorized(gw, &m, dpop_scheme),
        DecideError::InvalidDpopProof(m) => unauthorized(gw, &m, true),
        DecideError::BadRequest(m) => (
            StatusCode::BAD_REQUEST,
            reply(rpc_error(&Value::Null, -32602, &m, None)),
        )
            .into_response(),
        DecideError::Unavailable(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            reply(rpc_error(&Value::Null, -32603, &m, None)),
        )
            .into_response(),
    }
}

/// What a call is aimed at: the upstream, its own name for the thing, and Mandate's target.
struct Aim {
    upstream: Arc<Upstream>,
    forward: Value,
    action: &'static str,
    target: Target,
    tool: String,
}

fn aim(gw: &Gateway, method: &str, params: &Value) -> Result<Aim, String> {
    match method {
        "tools/call" | "prompts/get" => {
            let full = params
                .get("name")
                .and_then(Value::as_str)
                .ok_or("`params.name` is missing")?;
            let (up, name) = full
                .split_once('.')
                .ok_or_else(|| format!("`{full}` is not a gateway name (<server>.<name>)"))?;
            let upstream = gw
                .upstreams
                .get(up)
                .cloned()
                .ok_or_else(|| format!("no upstream named `{up}`"))?;
            let mut forward = params.clone();
            if let Some(o) = forward.as_object_mut() {
                o.insert("name".into(), Value::String(name.to_string()));
            }
            let (action, target) = if method == "tools/call" {
                (
                    "call",
                    Target {
                        kind: TargetKind::Tool,
                        id: full.to_string(),
                    },
                )
            } else {
                (
                    "read",
                    Target {
                        kind: TargetKind::Resource,
                        id: format!("prompt:{full}"),
                    },
                )
            };
            Ok(Aim {
                upstream,
                forward,
                action,
                target,
                tool: full.to_string(),
            })
        }
        _ => {
            let uri = params
                .get("uri")
                .and_then(Value::as_str)
                .ok_or("`params.uri` is missing")?;
            let upstream = gw
                .upstreams
                .values()
                .find(|u| {
                    u.offer()
                        .resources
                        .iter()
                        .any(|r| r.get("uri").and_then(Value::as_str) == Some(uri))
                })
                .or_else(|| {
                    // A templated resource: the first upstream that has templates.
                    gw.upstreams
                        .values()
                        .find(|u| !u.offer().templates.is_empty())
                })
                .cloned()
                .ok_or_else(|| format!("no upstream offers `{uri}`"))?;
            let target = Target {
                kind: TargetKind::Resource,
                id: format!("{}:{uri}", upstream.name),
            };
            Ok(Aim {
                tool: target.id.clone(),
                upstream,
                forward: params.clone(),
                action: "read",
                target,
            })
        }
    }
}

/// Secret values an upstream was given, to scrub from what it answers.
async fn injected(gw: &Gateway, up: &Upstream) -> Vec<mandate_crypto::SecretString> {
    let mut out = Vec::new();
    let cfg = up.config();
    for t in cfg.env.values().chain(cfg.headers.values()) {
        for name in t.secrets() {
            if let Ok(v) = gw.broker.secret_value(name).await {
                out.push(v);
            }
        }
    }
    out
}

/// The text of an MCP result as the tool wrote it, for provenance: its structured content, or
/// its text contents joined; `None` when it has neither.
fn output_text(result: &Value) -> Option<String> {
    if let Some(sc) = result.get("structuredContent").filter(|v| !v.is_null()) {
        return Some(sc.to_string());
    }
    let texts: Vec<&str> = result
        .get("content")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

async fn call(
    gw: &Arc<Gateway>,
    token: &str,
    dpop_scheme: bool,
    method: &str,
    id: &Value,
    params: &Value,
    task_id: &str,
) -> Result<Value, Response> {
    let aim = match aim(gw, method, params) {
        Ok(a) => a,
        Err(m) => return Ok(rpc_error(id, -32602, &m, None)),
    };
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Ok(rpc_error(
                id,
                -32602,
                "`params.arguments` must be an object",
                None,
            ));
        }
    };
    let approval_id = params
        .get("_meta")
        .and_then(|m| m.get("mandate/approval_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let input = DecideInput {
        token: token.to_string(),
        // The proof of this HTTP request was spent by the credential check already, and the
        // certificate checked there.
        dpop: None,
        client_cert: None,
        action: aim.action.to_string(),
        target: aim.target.clone(),
        context: Map::new(),
        arguments,
        approval_id,
        wait: gw.cfg.approval_wait_seconds,
    };
    let (outcome, pending) = match gw.broker.decide_pending_checked(&input, task_id).await {
        Ok(v) => v,
        Err(e) => return Err(refusal(gw, e, dpop_scheme)),
    };
    let up = aim.upstream.name.clone();
    let mut detail = Map::new();
    detail.insert("upstream".into(), up.clone().into());
    detail.insert("tool".into(), aim.tool.clone().into());
    if !outcome.allowed {
        let (code, what) = if outcome.decision == "needs_approval" {
            (codes::APPROVAL_REQUIRED, "approval required")
        } else {
            (codes::DENIED, "denied by Mandate")
        };
        detail.insert("outcome".into(), "refused".into());
        metrics::counter!("mandate_gateway_calls_total", "upstream" => up.clone(), "outcome" => "refused").increment(1);
        gw.broker
            .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail))
            .await
            .map_err(|e| refusal(gw, e, dpop_scheme))?;
        let mut message = format!(
            "{what}: {} (policies: {})",
            outcome.reason,
            outcome.policies.join(", ")
        );
        if let Some(a) = &outcome.approval_id {
            message.push_str(&format!(
                "; a person can grant it with `mandate approval grant {a}`, then call again"
            ));
        }
        return Ok(rpc_error(
            id,
            code,
            &message,
            Some(json!({
                "decision": outcome.decision,
                "policies": outcome.policies,
                "reason": outcome.reason,
                "approval_id": outcome.approval_id,
            })),
        ));
    }
    // The decision is recorded while the upstream works: the answer waits for both, so an
    // answered call is always on record, and the commit costs no latency of its own.
    detail.insert("outcome".into(), "forwarded".into());
    let started = Instant::now();
    let (committed, answer) = tokio::join!(
        gw.broker
            .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail)),
        aim.upstream
            .request(&gw.broker, method, aim.forward.clone()),
    );
    let elapsed = started.elapsed();
    metrics::histogram!("mandate_gateway_upstream_seconds", "upstream" => up.clone())
        .record(elapsed.as_secs_f64());
    committed.map_err(|e| refusal(gw, e, dpop_scheme))?;
    let mut result_detail = Map::new();
    result_detail.insert("upstream".into(), up.clone().into());
    result_detail.insert("tool".into(), aim.tool.clone().into());
    result_detail.insert(
        "latency_ms".into(),
        json!((elapsed.as_secs_f64() * 1000.0 * 10.0).round() / 10.0),
    );
    match answer {
        Ok(mut result) => {
            let secrets = injected(gw, &aim.upstream).await;
            let scrubbed = redact(&mut result, &secrets);
            let text = text_of(&result);
            let classes: Vec<String> = classify(&text, &aim.upstream.config().classifiers)
                .into_iter()
                .collect();
            let report = ReportInput {
                token: String::new(),
                dpop: None,
                client_cert: None,
                target: Some(aim.target.clone()),
                data_classes: classes,
                output: Some(output_text(&result).unwrap_or(text)),
                third_party: false,
            };
            // What the output taught the task is on record before the agent sees it.
            gw.broker
                .note_output_now(task_id, &report)
                .await
                .map_err(|e| refusal(gw, e, dpop_scheme))?;
            if scrubbed > 0 {
                result_detail.insert("outcome".into(), "scrubbed".into());
                result_detail.insert("secrets_scrubbed".into(), json!(scrubbed));
                gw.broker
                    .record_gateway_result(task_id, None, result_detail)
                    .await;
            }
            metrics::counter!("mandate_gateway_calls_total", "upstream" => up.clone(), "outcome" => "forwarded").increment(1);
            Ok(json!({"jsonrpc": "2.0", "id": id, "result": result}))
        }
        Err(e) => {
            let secrets = injected(gw, &aim.upstream).await;
            let mut message = Value::String(e.to_string());
            redact(&mut message, &secrets);
            let message = message.as_str().unwrap_or("upstream failed").to_string();
            result_detail.insert("outcome".into(), "upstream_error".into());
            gw.broker
                .record_gateway_result(task_id, Some(&message), result_detail)
                .await;
            metrics::counter!("mandate_gateway_calls_total", "upstream" => up.clone(), "outcome" => "upstream_error").increment(1);
            let (code, data) = match &e {
                UpstreamError::Rpc { code, data, .. } => (*code, data.clone()),
                _ => (codes::UPSTREAM, None),
            };
            Ok(rpc_error(id, code, &message, data))
        }
    }
}

#[cfg(test)]
mod origin_tests {
    #[test]
    fn loopback_origins() {
        assert!(super::loopback_origin("http://localhost:3000"));
        assert!(super::loopback_origin("http://127.0.0.1:8080"));
        assert!(super::loopback_origin("http://[::1]:1"));
        assert!(!super::loopback_origin("http://evil.example"));
        assert!(!super::loopback_origin("http://localhost.evil.example"));
    }
}
