//! The HTTP reverse proxy: `/http/<api>/<path>`. A request matching one of the API's routes is
//! an action on a resource; it is decided like any other and forwarded only when allowed, to
//! exactly the path and query that were decided (see [`crate::route`]), with the API's headers
//! (and secrets) injected and the agent's credential stripped.
//!
//! Headers (RFC 9110 section 7.6.1): hop-by-hop headers, and any header the `Connection` header
//! names, are never forwarded either way. Of the agent's request only an allow-list travels
//! (content negotiation, conditional requests, `idempotency-key`, plus the API's
//! `request_headers`); credentials, cookies and forwarding headers never do. Of the upstream's
//! response likewise (content type and caching metadata, plus the API's `response_headers`);
//! `set-cookie` never does. Request bodies are limited to [`MAX_PROXY_BODY`]; JSON-object and
//! form bodies are judged as the call's arguments. Response bodies stream through, scrubbed of
//! brokered secrets and scanned for labels on the way, and are cut at the API's
//! `max_response_bytes`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use mandate_broker::{
    ClientCert, DecideError, DecideInput, DpopInput, EventKind, ReportInput, Target,
};
use mandate_policy::TargetKind;
use serde_json::{Map, Value, json};

use crate::Gateway;
use crate::classify::classify;
use crate::config::{Classifier, HttpApiConfig, RouteConfig};
use crate::route::{self, Pattern};
use crate::scrub::Scrubber;

/// Largest request body forwarded.
pub const MAX_PROXY_BODY: usize = 1024 * 1024;
/// Largest response body returned, unless the API sets `max_response_bytes`.
pub const DEFAULT_MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// A response longer than this (or an event stream) is streamed rather than buffered.
const BUFFER_LIMIT: usize = 64 * 1024;
/// Text of the previous chunk scanned again with the next one, so values across the boundary
/// are found.
const SCAN_OVERLAP: usize = 2048;

/// Never forwarded, either way (RFC 9110 section 7.6.1, and `proxy-connection` of old clients).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];
/// Never forwarded from the agent: its credentials, cookies, and what says where it came from.
const NEVER_REQUEST: &[&str] = &[
    "authorization",
    "dpop",
    "cookie",
    "host",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "mandate-approval-id",
];
/// Never returned to the agent.
const NEVER_RESPONSE: &[&str] = &["set-cookie", "content-length", "content-encoding"];
/// Forwarded from the agent by default.
const DEFAULT_REQUEST: &[&str] = &[
    "accept",
    "accept-language",
    "content-type",
    "content-language",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "idempotency-key",
];
/// Returned to the agent by default.
const DEFAULT_RESPONSE: &[&str] = &[
    "content-type",
    "content-language",
    "content-disposition",
    "cache-control",
    "etag",
    "last-modified",
    "expires",
    "retry-after",
    "vary",
];

/// An HTTP API as the proxy uses it: its checked base URL, parsed routes and header lists.
#[derive(Debug)]
pub(crate) struct Api {
    cfg: HttpApiConfig,
    base: url::Url,
    routes: Vec<(RouteConfig, Pattern)>,
    request_headers: HashSet<HeaderName>,
    response_headers: HashSet<HeaderName>,
    max_response: usize,
}

fn header_list(
    api: &str,
    field: &str,
    defaults: &[&str],
    extra: &[String],
    never: &[&str],
) -> Result<HashSet<HeaderName>, String> {
    let mut out = HashSet::new();
    for name in defaults
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let h = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("http api `{api}`: `{name}` in `{field}` is not a header name"))?;
        if HOP_BY_HOP.contains(&h.as_str()) || never.contains(&h.as_str()) {
            return Err(format!(
                "http api `{api}`: `{name}` in `{field}` is never forwarded"
            ));
        }
        out.insert(h);
    }
    Ok(out)
}

impl Api {
    /// Checks an API's configuration and prepares it.
    pub(crate) fn new(cfg: &HttpApiConfig) -> Result<Self, String> {
        let base =
            route::parse_base(&cfg.url).map_err(|e| format!("http api `{}`: {e}", cfg.name))?;
        let mut routes = Vec::new();
        for r in &cfg.routes {
            let ok_method = !r.method.is_empty()
                && r.method.len() <= 16
                && r.method.bytes().all(|b| b.is_ascii_uppercase());
            if !ok_method {
                return Err(format!(
                    "http api `{}`: method `{}` must be an uppercase HTTP method",
                    cfg.name, r.method
                ));
            }
            let pattern =
                Pattern::parse(&r.path).map_err(|e| format!("http api `{}`: {e}", cfg.name))?;
            mandate_core::scope::check_action(&r.action).map_err(|e| e.to_string())?;
            for p in placeholders(&r.resource) {
                if !pattern.params().any(|n| n == p) {
                    return Err(format!(
                        "http api `{}`: resource `{}` names `{{{p}}}`, which route `{}` does not have",
                        cfg.name, r.resource, r.path
                    ));
                }
            }
            routes.push((r.clone(), pattern));
        }
        let max_response = cfg.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE);
        if max_response == 0 || max_response > 1024 * 1024 * 1024 {
            return Err(format!(
                "http api `{}`: max_response_bytes must be between 1 and 1 GiB",
                cfg.name
            ));
        }
        Ok(Api {
            request_headers: header_list(
                &cfg.name,
                "request_headers",
                DEFAULT_REQUEST,
                &cfg.request_headers,
                NEVER_REQUEST,
            )?,
            response_headers: header_list(
                &cfg.name,
                "response_headers",
                DEFAULT_RESPONSE,
                &cfg.response_headers,
                NEVER_RESPONSE,
            )?,
            cfg: cfg.clone(),
            base,
            routes,
            max_response,
        })
    }

    /// The API's name.
    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }
}

/// The `{name}` placeholders of a resource template.
fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        let tail = rest.get(at + 1..).unwrap_or_default();
        match tail.find('}') {
            Some(end) => {
                out.push(tail.get(..end).unwrap_or_default());
                rest = tail.get(end + 1..).unwrap_or_default();
            }
            None => break,
        }
    }
    out
}

pub(crate) fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/http/{api}/{*rest}", any(proxy))
        .with_state(gw)
}

fn error(status: StatusCode, code: &str, msg: &str, extra: Option<Value>) -> Response {
    let mut body = json!({"error": code, "error_description": msg});
    if let (Some(Value::Object(x)), Some(o)) = (extra, body.as_object_mut()) {
        o.extend(x);
    }
    (status, axum::Json(body)).into_response()
}

/// Header names the `Connection` header lists: hop-by-hop for this message.
fn connection_listed(headers: &HeaderMap) -> BTreeSet<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers of `from` that `allowed` lists and the message's `Connection` header does not.
fn filtered<'a>(
    from: &'a HeaderMap,
    allowed: &'a HashSet<HeaderName>,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
    let hop = connection_listed(from);
    from.iter()
        .filter(move |(k, _)| allowed.contains(*k) && !hop.contains(k.as_str()))
}

/// The call's arguments: route parameters, `query.<name>` for query parameters, and the members
/// of a JSON-object or form body.
fn arguments(
    params: &[(String, String)],
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, String> {
    let mut args = Map::new();
    for (k, v) in params {
        args.insert(k.clone(), Value::String(v.clone()));
    }
    for (k, v) in query {
        args.insert(format!("query.{k}"), Value::String(v.clone()));
    }
    if body.is_empty() {
        return Ok(args);
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let members: Vec<(String, Value)> = if ctype == "application/json" || ctype.ends_with("+json") {
        mandate_core::json::check_strict(body).map_err(|e| format!("request body: {e}"))?;
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m.into_iter().collect(),
            Ok(_) => return Ok(args),
            Err(e) => return Err(format!("request body is not JSON: {e}")),
        }
    } else if ctype == "application/x-www-form-urlencoded" {
        let text =
            std::str::from_utf8(body).map_err(|_| "request body is not UTF-8".to_string())?;
        route::parse_query(text)
            .map_err(|e| format!("request body: {e}"))?
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    } else {
        return Ok(args);
    };
    for (k, v) in members {
        if args.contains_key(&k) {
            return Err(format!(
                "request body member `{}` repeats a path or query parameter",
                k.chars().take(64).collect::<String>()
            ));
        }
        args.insert(k, v);
    }
    Ok(args)
}

/// The credential of a proxied request: exactly one `Authorization` header, and at most one
/// `DPoP` header.
fn credential(headers: &HeaderMap) -> Result<(String, bool, Option<String>), (StatusCode, String)> {
    let unauthorized = |m: &str| (StatusCode::UNAUTHORIZED, m.to_string());
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let auth = all
        .next()
        .ok_or_else(|| unauthorized("a task credential is required"))?;
    if all.next().is_some() {
        return Err(unauthorized("send exactly one Authorization header"));
    }
    let (scheme, token) = auth
        .to_str()
        .ok()
        .and_then(|a| a.split_once(' '))
        .ok_or_else(|| unauthorized("a task credential is required"))?;
    let dpop_scheme = scheme.eq_ignore_ascii_case("dpop");
    if !dpop_scheme && !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("use the Bearer or DPoP scheme"));
    }
    let proof = mandate_crypto::dpop::single_header(
        headers.get_all("dpop").iter().map(HeaderValue::as_bytes),
    )
    .map_err(|e| unauthorized(&e.to_string()))?;
    Ok((
        token.trim().to_string(),
        dpop_scheme,
        proof.filter(|_| dpop_scheme).map(str::to_string),
    ))
}

async fn refuse_request(
    gw: &Gateway,
    api: &str,
    raw: &str,
    status: StatusCode,
    msg: &str,
) -> Response {
    let shown: String = raw.chars().take(512).collect();
    gw.broker
        .record_rejected_request(&format!("/http/{api}{shown}"), msg)
        .await;
    error(
        status,
        if status == StatusCode::FORBIDDEN {
            "access_denied"
        } else {
            "invalid_request"
        },
        msg,
        None,
    )
}

async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path();
    let below = raw_path.strip_prefix("/http/").unwrap_or_default();
    let (api_name, rest) = below.split_once('/').unwrap_or((below, ""));
    let rest = format!("/{rest}");
    let Some(api) = gw.apis.iter().find(|a| a.name() == api_name) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "no HTTP API named `{}`",
                api_name.chars().take(64).collect::<String>()
            ),
            None,
        );
    };
    let raw_query = parts.uri.query();
    let parsed = route::parse_path(&rest).and_then(|p| {
        let q = raw_query
            .map(route::parse_query)
            .transpose()?
            .unwrap_or_default();
        Ok((p, q))
    });
    let (path, query) = match parsed {
        Ok(ok) => ok,
        Err(e) => {
            let msg = format!("refused request target: {e}");
            return refuse_request(&gw, api_name, &rest, StatusCode::BAD_REQUEST, &msg).await;
        }
    };
    let method = &parts.method;
    let Some((route, params)) = api.routes.iter().find_map(|(r, p)| {
        (r.method == method.as_str())
            .then(|| p.matches(&path).map(|params| (r, params)))
            .flatten()
    }) else {
        let msg = format!(
            "no route of `{api_name}` matches {method} {}; unrouted requests are refused",
            rest.chars().take(256).collect::<String>()
        );
        return refuse_request(&gw, api_name, &rest, StatusCode::FORBIDDEN, &msg).await;
    };
    let upstream = match route::upstream_url(&api.base, &path, &query) {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("refused request target: {e}");
            return refuse_request(&gw, api_name, &rest, StatusCode::BAD_REQUEST, &msg).await;
        }
    };
    let body = match axum::body::to_bytes(body, MAX_PROXY_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let msg = format!("request body is larger than {MAX_PROXY_BODY} bytes");
            return refuse_request(&gw, api_name, &rest, StatusCode::PAYLOAD_TOO_LARGE, &msg).await;
        }
    };
    let arguments = match arguments(&params, &query, &parts.headers, &body) {
        Ok(a) => a,
        Err(msg) => {
            return refuse_request(&gw, api_name, &rest, StatusCode::BAD_REQUEST, &msg).await;
        }
    };
    let (token, dpop_scheme, proof) = match credential(&parts.headers) {
        Ok(c) => c,
        Err((status, m)) => return error(status, "invalid_token", &m, None),
    };
    let issuer = &gw.broker.config().issuer;
    let dpop = proof.map(|p| DpopInput {
        proof: p,
        method: method.as_str().to_string(),
        url: format!("{issuer}/http/{api_name}{rest}"),
    });
    if dpop_scheme && dpop.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the DPoP scheme needs a DPoP proof header",
            None,
        );
    }
    let mut resource = route.resource.clone();
    for (k, v) in &params {
        resource = resource.replace(&format!("{{{k}}}"), v);
    }
    let input = DecideInput {
        token,
        dpop,
        // Set by the TLS layer of `mandate serve` when the agent presented an X.509-SVID.
        client_cert: parts.extensions.get::<ClientCert>().cloned(),
        action: route.action.clone(),
        target: Target {
            kind: TargetKind::Resource,
            id: resource.clone(),
        },
        context: Map::new(),
        arguments,
        approval_id: parts
            .headers
            .get("mandate-approval-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        wait: gw.cfg.approval_wait_seconds,
    };
    let (outcome, pending) = match gw.broker.decide_pending(&input).await {
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
    detail.insert("upstream".into(), api_name.into());
    detail.insert(
        "route".into(),
        format!("{} {}", route.method, route.path).into(),
    );
    detail.insert("upstream_path".into(), upstream.path.clone().into());
    if let Some(q) = &upstream.query {
        detail.insert("upstream_query".into(), q.clone().into());
    }
    let target = Target {
        kind: TargetKind::Resource,
        id: resource,
    };
    if !outcome.allowed {
        detail.insert("outcome".into(), "refused".into());
        if let Err(e) = gw
            .broker
            .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail))
            .await
        {
            return unavailable(&e);
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
    detail.insert("outcome".into(), "forwarded".into());
    let call = Call {
        gw: gw.clone(),
        task_id: outcome.task_id.clone(),
        target,
        classifiers: api.cfg.classifiers.clone(),
        result: Map::from_iter([("upstream".to_string(), Value::from(api_name))]),
    };
    // The decision is recorded while the upstream works; the answer waits for both.
    let commit = gw
        .broker
        .commit_decision(pending, Some(EventKind::GatewayCall), Some(detail));
    let exchange = send(&call, api, method.clone(), &parts.headers, upstream, body);
    let (committed, sent) = tokio::join!(commit, exchange);
    if let Err(e) = committed {
        return unavailable(&e);
    }
    match sent {
        Ok(first) => call.answer(api, first).await,
        Err(msg) => call.fail(msg).await,
    }
}

fn unavailable(e: &DecideError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        &e.to_string(),
        None,
    )
}

/// An allowed call whose decision is recorded: where its output's labels go, and what its
/// result record will say when it is not a plain success.
struct Call {
    gw: Arc<Gateway>,
    task_id: String,
    target: Target,
    classifiers: Vec<Classifier>,
    result: Map<String, Value>,
}

/// The upstream's answer as far as it was read before deciding whether to stream it.
struct FirstPart {
    resp: reqwest::Response,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    ended: bool,
    secrets: Vec<mandate_crypto::SecretString>,
}

impl Call {
    async fn fail(mut self, msg: String) -> Response {
        self.result
            .insert("outcome".into(), "upstream_error".into());
        self.gw
            .broker
            .record_gateway_result(&self.task_id, Some(&msg), self.result)
            .await;
        error(StatusCode::BAD_GATEWAY, "upstream_error", &msg, None)
    }

    /// Scrubs and scans what was read, records the labels it adds, and answers: whole, or
    /// streaming the rest.
    async fn answer(mut self, api: &Api, first: FirstPart) -> Response {
        let FirstPart {
            resp,
            status,
            headers,
            body,
            ended,
            secrets,
        } = first;
        if body.len() > api.max_response {
            return self
                .fail(format!(
                    "`{}` answered more than {} bytes",
                    api.name(),
                    api.max_response
                ))
                .await;
        }
        let mut scrubber = Scrubber::new(&secrets);
        let mut scan = Scan::new();
        let mut released = scrubber.push(&body);
        if ended {
            released.extend(scrubber.finish());
        }
        let report = scan.report(&released, &self.target, &self.classifiers);
        if let Err(e) = self.gw.broker.note_output_now(&self.task_id, &report).await {
            return unavailable(&e);
        }
        if ended {
            if scrubber.replaced > 0 {
                self.result.insert("outcome".into(), "scrubbed".into());
                self.result
                    .insert("secrets_scrubbed".into(), json!(scrubber.replaced));
                self.gw
                    .broker
                    .record_gateway_result(&self.task_id, None, self.result)
                    .await;
            }
            let mut r = (status, released).into_response();
            r.headers_mut().extend(headers);
            return r;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream = Stream {
            call: self,
            limit: api.max_response,
            sent: body.len(),
            scrubber,
            scan,
        };
        tokio::spawn(stream.run(resp, released, tx));
        let mut r = (
            status,
            Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
            .into_response();
        r.headers_mut().extend(headers);
        r
    }
}

/// What a response's text taught so far: the classes found, and the end of the text scanned
/// last, scanned again with the next piece.
struct Scan {
    classes: BTreeSet<String>,
    tail: String,
}

impl Scan {
    fn new() -> Self {
        Scan {
            classes: BTreeSet::new(),
            tail: String::new(),
        }
    }

    /// The report for the next released piece: its text with the end of the previous one.
    fn report(
        &mut self,
        released: &[u8],
        target: &Target,
        classifiers: &[Classifier],
    ) -> ReportInput {
        let text = String::from_utf8_lossy(released);
        let mut window = std::mem::take(&mut self.tail);
        window.push_str(&text);
        let classes: Vec<String> = classify(&window, classifiers)
            .into_iter()
            .filter(|c| !self.classes.contains(c))
            .collect();
        self.classes.extend(classes.iter().cloned());
        let start = window.len().saturating_sub(SCAN_OVERLAP);
        let start = (start..window.len())
            .find(|i| window.is_char_boundary(*i))
            .unwrap_or(window.len());
        self.tail = window.get(start..).unwrap_or_default().to_string();
        ReportInput {
            token: String::new(),
            dpop: None,
            client_cert: None,
            target: Some(target.clone()),
            data_classes: classes,
            output: Some(window),
            third_party: false,
        }
    }
}

/// Sends the request upstream and reads its answer's head and, unless it is an event stream,
/// up to [`BUFFER_LIMIT`] of its body.
async fn send(
    call: &Call,
    api: &Api,
    method: Method,
    headers: &HeaderMap,
    upstream: route::Upstream,
    body: Bytes,
) -> Result<FirstPart, String> {
    let gw = &call.gw;
    let mut req = gw
        .http
        .request(method, upstream.url.clone())
        .timeout(Duration::from_secs(gw.cfg.call_timeout_seconds.max(1)))
        .body(body);
    for (k, v) in filtered(headers, &api.request_headers) {
        req = req.header(k, v);
    }
    let mut secrets = Vec::new();
    for (k, t) in &api.cfg.headers {
        let v = t
            .resolve_for_task(&gw.broker, &call.task_id, &mut secrets)
            .await?;
        req = req.header(k.as_str(), v.expose());
    }
    let api_name = api.name();
    let started = Instant::now();
    let mut resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("`{api_name}` did not answer in time")
        } else {
            format!("`{api_name}` is unreachable: {}", crate::root_cause(&e))
        }
    })?;
    let encoding = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    if encoding.as_deref().is_some_and(|e| e != "identity") {
        return Err(format!(
            "`{api_name}` answered with a content-encoding the gateway cannot inspect"
        ));
    }
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out_headers = HeaderMap::new();
    for (k, v) in filtered(resp.headers(), &api.response_headers) {
        out_headers.append(k.clone(), v.clone());
    }
    let streaming = out_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"));
    // Read what can be read at once: a short response is judged whole.
    let mut first = Vec::new();
    let mut ended = false;
    while !streaming && first.len() < BUFFER_LIMIT && first.len() <= api.max_response {
        match resp.chunk().await {
            Ok(Some(c)) => first.extend_from_slice(&c),
            Ok(None) => {
                ended = true;
                break;
            }
            Err(e) => {
                return Err(format!(
                    "`{api_name}` broke off its answer: {}",
                    crate::root_cause(&e)
                ));
            }
        }
    }
    metrics::histogram!("mandate_gateway_upstream_seconds", "upstream" => api_name.to_string())
        .record(started.elapsed().as_secs_f64());
    Ok(FirstPart {
        resp,
        status,
        headers: out_headers,
        body: first,
        ended,
        secrets,
    })
}

/// The rest of a streamed response.
struct Stream {
    call: Call,
    limit: usize,
    sent: usize,
    scrubber: Scrubber,
    scan: Scan,
}

impl Stream {
    async fn run(
        mut self,
        mut resp: reqwest::Response,
        first: Vec<u8>,
        tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        let api = self
            .call
            .result
            .get("upstream")
            .and_then(Value::as_str)
            .unwrap_or("upstream")
            .to_string();
        let problem = loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let rest = self.scrubber.finish();
                    if let Err(p) = self.release(rest, &tx).await {
                        break Some(p);
                    }
                    break None;
                }
                Err(e) => {
                    break Some(format!(
                        "`{api}` broke off its answer: {}",
                        crate::root_cause(&e)
                    ));
                }
            };
            self.sent += chunk.len();
            if self.sent > self.limit {
                break Some(format!(
                    "`{api}` answered more than {} bytes; the response was cut there",
                    self.limit
                ));
            }
            let out = self.scrubber.push(&chunk);
            if let Err(p) = self.release(out, &tx).await {
                break Some(p);
            }
        };
        let mut result = std::mem::take(&mut self.call.result);
        result.insert("bytes".into(), json!(self.sent));
        if self.scrubber.replaced > 0 {
            result.insert("secrets_scrubbed".into(), json!(self.scrubber.replaced));
        }
        match problem {
            Some(p) => {
                let _ = tx.send(Err(std::io::Error::other(p.clone()))).await;
                result.insert("outcome".into(), "cut".into());
                self.call
                    .gw
                    .broker
                    .record_gateway_result(&self.call.task_id, Some(&p), result)
                    .await;
            }
            None if self.scrubber.replaced > 0 => {
                result.insert("outcome".into(), "scrubbed".into());
                self.call
                    .gw
                    .broker
                    .record_gateway_result(&self.call.task_id, None, result)
                    .await;
            }
            None => {}
        }
    }

    /// Scans a piece, records the labels it adds before releasing it, then sends it.
    async fn release(
        &mut self,
        piece: Vec<u8>,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), String> {
        if piece.is_empty() {
            return Ok(());
        }
        let report = self
            .scan
            .report(&piece, &self.call.target, &self.call.classifiers);
        self.call
            .gw
            .broker
            .note_output_now(&self.call.task_id, &report)
            .await
            .map_err(|e| format!("the labels of the response could not be recorded: {e}"))?;
        tx.send(Ok(Bytes::from(piece)))
            .await
            .map_err(|_| "the agent went away".to_string())
    }
}
