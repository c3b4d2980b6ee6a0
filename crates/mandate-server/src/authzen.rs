//! OpenID AuthZEN Authorization API 1.0: a second front door to the same decisions.
//!
//! Mapping (documented in ARCHITECTURE.md):
//! - `subject`: `type` `agent`, `id` the agent id, `properties.token` the task credential, and
//!   `properties.dpop` (`proof`, `method`, `url`) when the credential is key-bound;
//! - `action`: `name` the action, `properties.arguments` the call's arguments,
//!   `properties.approval_id` an approval the call claims;
//! - `resource`: `type` `tool` or `resource`, `id` its name;
//! - `context`: what the enforcement point reports (`context.request` in policies).
//!
//! The answer's `decision` is `true` only for an allow; its `context` carries the deciding
//! policies, the reason (`reason_admin`), and for `needs_approval` the approval request.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mandate_broker::{DecideError, DecideInput, DecisionOutcome, DpopInput, Target};
use mandate_policy::TargetKind;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::body::Limited;
use crate::errors::json_error;

/// Most items in one batch.
pub const MAX_EVALUATIONS: usize = 64;

#[derive(Clone, Debug, Default, Deserialize)]
struct Subject {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Action {
    name: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Resource {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    #[serde(default)]
    properties: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Evaluation {
    subject: Option<Subject>,
    action: Option<Action>,
    resource: Option<Resource>,
    context: Option<Map<String, Value>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Options {
    #[serde(default)]
    evaluations_semantic: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Evaluations {
    #[serde(flatten)]
    defaults: Evaluation,
    #[serde(default)]
    evaluations: Option<Vec<Evaluation>>,
    #[serde(default)]
    options: Option<Options>,
}

/// `GET /.well-known/authzen-configuration`.
pub(crate) async fn configuration(State(s): State<AppState>) -> Response {
    let issuer = &s.broker.config().issuer;
    // `policy_decision_point` is the identifier in AuthZEN 1.0; earlier drafts called it
    // `issuer`. Consumers ignore members they do not know, so both are given.
    axum::Json(json!({
        "policy_decision_point": issuer,
        "issuer": issuer,
        "access_evaluation_endpoint": format!("{issuer}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{issuer}/access/v1/evaluations"),
        "search_subject_endpoint": format!("{issuer}/access/v1/search/subject"),
        "search_resource_endpoint": format!("{issuer}/access/v1/search/resource"),
        "search_action_endpoint": format!("{issuer}/access/v1/search/action"),
    }))
    .into_response()
}

/// Echoes `X-Request-ID`, as the spec asks.
fn with_request_id(mut r: Response, headers: &HeaderMap) -> Response {
    if let Some(id) = headers.get("x-request-id")
        && id.len() <= 256
    {
        r.headers_mut().insert("x-request-id", id.clone());
    }
    r
}

fn bad(msg: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid_request", msg)
}

/// Turns one evaluation into Mandate's decision input.
fn input(e: &Evaluation) -> Result<(DecideInput, Option<String>), String> {
    let subject = e.subject.as_ref().ok_or("`subject` is missing")?;
    let action = e.action.as_ref().ok_or("`action` is missing")?;
    let resource = e.resource.as_ref().ok_or("`resource` is missing")?;
    if subject.kind.as_deref().is_none_or(str::is_empty) {
        return Err("`subject.type` is missing".into());
    }
    let token = subject
        .properties
        .get("token")
        .and_then(Value::as_str)
        .ok_or("`subject.properties.token` must hold the agent's task credential")?
        .to_string();
    let dpop = match subject.properties.get("dpop") {
        None => None,
        Some(d) => {
            let get = |k: &str| {
                d.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(format!("`subject.properties.dpop.{k}` is missing"))
            };
            Some(DpopInput {
                proof: get("proof")?,
                method: get("method")?,
                url: get("url")?,
            })
        }
    };
    let name = action
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("`action.name` is missing")?;
    let kind = match resource.kind.as_deref() {
        Some("tool") => TargetKind::Tool,
        Some("resource") => TargetKind::Resource,
        Some(other) => {
            return Err(format!(
                "`resource.type` `{}` is not `tool` or `resource`",
                other.chars().take(64).collect::<String>()
            ));
        }
        None => return Err("`resource.type` is missing".into()),
    };
    let id = resource
        .id
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or("`resource.id` is missing")?;
    let arguments = match action.properties.get("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("`action.properties.arguments` must be an object".into()),
    };
    let approval_id = action
        .properties
        .get("approval_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let _ = &resource.properties;
    Ok((
        DecideInput {
            token,
            dpop,
            client_cert: None,
            action: name,
            target: Target { kind, id },
            context: e.context.clone().unwrap_or_default(),
            arguments,
            approval_id,
            wait: 0,
        },
        subject.id.clone(),
    ))
}

fn answer(o: &DecisionOutcome) -> Value {
    let mut ctx = Map::new();
    ctx.insert("decision".into(), o.decision.into());
    ctx.insert("task_id".into(), o.task_id.clone().into());
    ctx.insert("policies".into(), json!(o.policies));
    ctx.insert("reason_admin".into(), json!({ "en": o.reason }));
    if let Some(a) = &o.approval_id {
        ctx.insert("approval_id".into(), a.clone().into());
    }
    json!({ "decision": o.allowed, "context": ctx })
}

/// A `false` decision carrying an error in the shape of the spec's batch example (section 7.2.1):
/// `context.error` with the status the single endpoint would have answered, a code and a message.
fn refused(status: u16, code: &str, msg: &str) -> Value {
    json!({
        "decision": false,
        "context": {
            "error": { "status": status, "code": code, "message": msg },
            "reason_admin": { "en": msg },
        }
    })
}

/// Evaluates one request: a decision (`true`/`false`), never an HTTP error for a bad
/// credential, so that one refused item does not fail a batch.
async fn evaluate(
    s: &AppState,
    e: &Evaluation,
    cert: Option<&mandate_broker::ClientCert>,
) -> Result<Value, String> {
    let (mut input, subject_id) = input(e)?;
    // A certificate-bound credential is judged against the certificate of this connection: the
    // agent's own, when it asks itself.
    input.client_cert = cert.cloned();
    match s.broker.decide(&input).await {
        Ok(o) => {
            if let Some(id) = subject_id
                && id != o.agent
            {
                // The credential decides who the subject is; a mismatch is refused outright.
                return Ok(refused(
                    403,
                    "subject_mismatch",
                    "`subject.id` is not the agent the credential was issued to",
                ));
            }
            Ok(answer(&o))
        }
        Err(DecideError::BadRequest(m)) => Err(m),
        Err(DecideError::InvalidToken(m)) => Ok(refused(401, "invalid_token", &m)),
        Err(DecideError::InvalidDpopProof(m)) => Ok(refused(401, "invalid_dpop_proof", &m)),
        Err(DecideError::Unavailable(m)) => Ok(refused(503, "unavailable", &m)),
    }
}

/// `POST /access/v1/evaluation`.
pub(crate) async fn evaluation(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let e: Evaluation = match body.json(&s.broker, "/access/v1/evaluation").await {
        Ok(e) => e,
        Err(r) => return with_request_id(r, &headers),
    };
    let r = match evaluate(&s, &e, cert.as_deref()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(m) => bad(&m),
    };
    with_request_id(r, &headers)
}

fn merged(defaults: &Evaluation, item: &Evaluation) -> Evaluation {
    Evaluation {
        subject: item.subject.clone().or_else(|| defaults.subject.clone()),
        action: item.action.clone().or_else(|| defaults.action.clone()),
        resource: item.resource.clone().or_else(|| defaults.resource.clone()),
        context: item.context.clone().or_else(|| defaults.context.clone()),
    }
}

/// `POST /access/v1/evaluations`.
pub(crate) async fn evaluations(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let req: Evaluations = match body.json(&s.broker, "/access/v1/evaluations").await {
        Ok(e) => e,
        Err(r) => return with_request_id(r, &headers),
    };
    let semantic = req
        .options
        .as_ref()
        .and_then(|o| o.evaluations_semantic.as_deref())
        .unwrap_or("execute_all");
    if !matches!(
        semantic,
        "execute_all" | "deny_on_first_deny" | "permit_on_first_permit"
    ) {
        return with_request_id(
            bad(&format!(
                "`options.evaluations_semantic` `{}` is not one of execute_all, deny_on_first_deny, permit_on_first_permit",
                semantic.chars().take(64).collect::<String>()
            )),
            &headers,
        );
    }
    let items = match &req.evaluations {
        Some(items) if !items.is_empty() => items,
        // Without items the request is a single evaluation, answered as one.
        _ => {
            let r = match evaluate(&s, &req.defaults, cert.as_deref()).await {
                Ok(v) => axum::Json(v).into_response(),
                Err(m) => bad(&m),
            };
            return with_request_id(r, &headers);
        }
    };
    if items.len() > MAX_EVALUATIONS {
        return with_request_id(
            bad(&format!(
                "at most {MAX_EVALUATIONS} evaluations per request"
            )),
            &headers,
        );
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let v = match evaluate(&s, &merged(&req.defaults, item), cert.as_deref()).await {
            Ok(v) => v,
            Err(m) => refused(400, "invalid_request", &m),
        };
        let decision = v.get("decision").and_then(Value::as_bool).unwrap_or(false);
        out.push(v);
        let stop = match semantic {
            "deny_on_first_deny" => !decision,
            "permit_on_first_permit" => decision,
            _ => false,
        };
        if stop {
            break;
        }
    }
    let mut r = axum::Json(json!({ "evaluations": out })).into_response();
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    with_request_id(r, &headers)
}

/// Results per page unless the request asks for fewer.
pub const DEFAULT_PAGE: usize = 50;
/// Most results per page.
pub const MAX_PAGE: usize = 200;

#[derive(Clone, Debug, Default, Deserialize)]
struct PageRequest {
    /// The continuation token of the previous page (`next_token` in earlier drafts).
    #[serde(default, alias = "next_token")]
    token: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Search {
    subject: Option<Subject>,
    action: Option<Action>,
    resource: Option<Resource>,
    /// Accepted; a search judges without request facts.
    #[serde(default, rename = "context")]
    _context: Option<Map<String, Value>>,
    #[serde(default)]
    page: Option<PageRequest>,
}

/// A fingerprint of what a search asks (not its page), so a page token is refused for another
/// search.
fn fingerprint(what: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(what.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// One page of `results`, with the token of the next one (empty on the last page).
fn page(results: Vec<Value>, req: Option<&PageRequest>, what: &str) -> Result<Value, String> {
    let fp = fingerprint(what);
    let start = match req
        .and_then(|p| p.token.as_deref())
        .filter(|t| !t.is_empty())
    {
        None => 0,
        Some(t) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("`page.token` is not a token this server issued")?;
            let (offset, f) = raw
                .split_once(':')
                .ok_or("`page.token` is not a token this server issued")?;
            if f != fp {
                return Err("`page.token` belongs to another search".into());
            }
            offset
                .parse::<usize>()
                .map_err(|_| "`page.token` is not a token this server issued")?
        }
    };
    let limit = req.and_then(|p| p.limit).unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(format!("`page.limit` must be between 1 and {MAX_PAGE}"));
    }
    let total = results.len();
    let items: Vec<Value> = results.into_iter().skip(start).take(limit).collect();
    let start = start.min(total);
    let end = start + items.len();
    let next = if end < total {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{end}:{fp}"))
    } else {
        String::new()
    };
    Ok(json!({
        "results": items,
        "page": {"next_token": next, "count": end - start, "total": total},
    }))
}

fn kind_of(r: &Resource) -> Result<Option<TargetKind>, String> {
    match r.kind.as_deref() {
        Some("tool") => Ok(Some(TargetKind::Tool)),
        Some("resource") => Ok(Some(TargetKind::Resource)),
        None | Some("") => Ok(None),
        Some(other) => Err(format!(
            "`resource.type` `{}` is not `tool` or `resource`",
            other.chars().take(64).collect::<String>()
        )),
    }
}

fn kind_name(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Tool => "tool",
        TargetKind::Resource => "resource",
    }
}

/// The task credential of a search's subject.
fn subject_credential(q: &Search) -> Result<(String, Option<DpopInput>), String> {
    let probe = Evaluation {
        subject: q.subject.clone(),
        action: Some(Action {
            name: Some("call".into()),
            properties: Map::new(),
        }),
        resource: Some(Resource {
            kind: Some("tool".into()),
            id: Some("-".into()),
            properties: Map::new(),
        }),
        context: None,
    };
    input(&probe).map(|(i, _)| (i.token, i.dpop))
}

fn search_error(e: DecideError) -> Response {
    match e {
        DecideError::BadRequest(m) => bad(&m),
        DecideError::InvalidToken(m) | DecideError::InvalidDpopProof(m) => {
            json_error(StatusCode::UNAUTHORIZED, "invalid_token", &m)
        }
        DecideError::Unavailable(m) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m)
        }
    }
}

fn searched(r: Result<Value, String>, headers: &HeaderMap) -> Response {
    let r = match r {
        Ok(v) => {
            let mut r = axum::Json(v).into_response();
            r.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            r
        }
        Err(m) => bad(&m),
    };
    with_request_id(r, headers)
}

/// `POST /access/v1/search/resource`: the targets the subject's task may act on with `action`.
pub(crate) async fn search_resource(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let q: Search = match body.json(&s.broker, "/access/v1/search/resource").await {
        Ok(q) => q,
        Err(r) => return with_request_id(r, &headers),
    };
    let parsed = (|| {
        let (token, dpop) = subject_credential(&q)?;
        let action = q
            .action
            .as_ref()
            .and_then(|a| a.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or("`action.name` is missing")?;
        let kind = kind_of(q.resource.as_ref().ok_or("`resource` is missing")?)?;
        Ok::<_, String>((token, dpop, action, kind))
    })();
    let (token, dpop, action, kind) = match parsed {
        Ok(p) => p,
        Err(m) => return with_request_id(bad(&m), &headers),
    };
    match s
        .broker
        .search_targets(&token, dpop.as_ref(), cert.as_deref(), &action, kind)
        .await
    {
        Ok(targets) => {
            let results = targets
                .iter()
                .map(|t| json!({"type": kind_name(t.kind), "id": t.id}))
                .collect();
            let what = format!("resource:{action}:{kind:?}:{}", fingerprint(&token));
            searched(page(results, q.page.as_ref(), &what), &headers)
        }
        Err(e) => with_request_id(search_error(e), &headers),
    }
}

/// `POST /access/v1/search/action`: the actions the subject's task may take on the resource.
pub(crate) async fn search_action(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let q: Search = match body.json(&s.broker, "/access/v1/search/action").await {
        Ok(q) => q,
        Err(r) => return with_request_id(r, &headers),
    };
    let parsed = (|| {
        let (token, dpop) = subject_credential(&q)?;
        let r = q.resource.as_ref().ok_or("`resource` is missing")?;
        let id =
            r.id.clone()
                .filter(|i| !i.is_empty())
                .ok_or("`resource.id` is missing")?;
        let kind = kind_of(r)?.ok_or("`resource.type` is missing")?;
        Ok::<_, String>((token, dpop, Target { kind, id }))
    })();
    let (token, dpop, target) = match parsed {
        Ok(p) => p,
        Err(m) => return with_request_id(bad(&m), &headers),
    };
    match s
        .broker
        .search_actions(&token, dpop.as_ref(), cert.as_deref(), &target)
        .await
    {
        Ok(actions) => {
            let results = actions.iter().map(|a| json!({"name": a})).collect();
            let what = format!("action:{}:{}", target.id, fingerprint(&token));
            searched(page(results, q.page.as_ref(), &what), &headers)
        }
        Err(e) => with_request_id(search_error(e), &headers),
    }
}

/// `POST /access/v1/search/subject`: the agents whose live tasks may take the action on the
/// resource. Asked by a person (an owner sees its own agents, an admin all), with an API token
/// in `Authorization: Bearer`.
pub(crate) async fn search_subject(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let person = match crate::auth_header(&headers) {
        Some((token, false)) => s.broker.authenticate_person(Some(&token)).await,
        _ => s.broker.authenticate_person(None).await,
    };
    let person = match person {
        Ok(p) => p,
        Err(e) => return with_request_id(crate::errors::admin_error(e), &headers),
    };
    let q: Search = match body.json(&s.broker, "/access/v1/search/subject").await {
        Ok(q) => q,
        Err(r) => return with_request_id(r, &headers),
    };
    let parsed = (|| {
        let st = q
            .subject
            .as_ref()
            .and_then(|s| s.kind.clone())
            .ok_or("`subject.type` is missing")?;
        if st != "agent" {
            return Err(format!(
                "`subject.type` `{}` is not `agent`: Mandate's subjects are agents",
                st.chars().take(64).collect::<String>()
            ));
        }
        let action = q
            .action
            .as_ref()
            .and_then(|a| a.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or("`action.name` is missing")?;
        let r = q.resource.as_ref().ok_or("`resource` is missing")?;
        let id =
            r.id.clone()
                .filter(|i| !i.is_empty())
                .ok_or("`resource.id` is missing")?;
        let kind = kind_of(r)?.ok_or("`resource.type` is missing")?;
        Ok::<_, String>((action, Target { kind, id }))
    })();
    let (action, target) = match parsed {
        Ok(p) => p,
        Err(m) => return with_request_id(bad(&m), &headers),
    };
    match s.broker.search_subjects(&person, &action, &target) {
        Ok(agents) => {
            let results = agents
                .iter()
                .map(|a| json!({"type": "agent", "id": a}))
                .collect();
            let what = format!("subject:{action}:{}", target.id);
            searched(page(results, q.page.as_ref(), &what), &headers)
        }
        Err(e) => with_request_id(crate::errors::admin_error(e), &headers),
    }
}
