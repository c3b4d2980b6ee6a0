//! The HTTP front of Mandate.
//!
//! OAuth endpoints (`/oauth/*`, RFC 6749/7523/9449/7662/7009), metadata (RFC 8414) and JWKS, the
//! decision API (`/v1/decide`), the admin API (`/admin/v1/*`), the web console (`/console`),
//! `/metrics` and `/healthz`.
//! Handlers parse and size-check input, call the [`mandate_broker::Broker`], and map its typed
//! errors to statuses here, one arm per variant.

mod admin;
mod authzen;
mod body;
mod console;
mod errors;
mod oauth;
pub mod tls;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mandate_broker::{Broker, DecideInput, DpopInput, Target};
use mandate_policy::TargetKind;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

pub use body::MAX_BODY_BYTES;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    broker: Arc<Broker>,
    metrics: Option<PrometheusHandle>,
    console: Arc<console::Console>,
}

fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// The whole HTTP application.
pub fn router(broker: Arc<Broker>) -> Router {
    // A decision may wait for a person up to `approvals.max_wait_seconds`: the request timeout
    // leaves room for that.
    let timeout = Duration::from_secs(
        u64::try_from(broker.config().approval_max_wait)
            .unwrap_or(0)
            .saturating_add(10)
            .max(30),
    );
    let state = AppState {
        broker,
        metrics: metrics_handle(),
        console: console::state(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route(
            "/oauth/authorize",
            get(oauth::authorize).post(oauth::authorize),
        )
        .route("/oauth/token", post(oauth::token))
        .route("/oauth/register", post(oauth::register))
        .route("/oauth/introspect", post(oauth::introspect))
        .route("/oauth/revoke", post(oauth::revoke))
        .route("/v1/decide", post(decide))
        .route("/v1/report", post(report))
        .route("/v1/credentials/{name}", post(fetch_credential))
        .route("/v1/credentials/{name}/ssh-ca", get(ssh_ca))
        .route(
            "/.well-known/authzen-configuration",
            get(authzen::configuration),
        )
        .route("/access/v1/evaluation", post(authzen::evaluation))
        .route("/access/v1/evaluations", post(authzen::evaluations))
        .route("/access/v1/search/subject", post(authzen::search_subject))
        .route("/access/v1/search/resource", post(authzen::search_resource))
        .route("/access/v1/search/action", post(authzen::search_action))
        .merge(admin::routes())
        .merge(console::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// Serves the application, plus `extra` routes (the gateway), on `listener` until `shutdown`
/// resolves; over TLS when `tls` is given (see [`tls`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    extra: Option<Router>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = match extra {
        Some(extra) => extra.merge(router(broker)),
        None => router(broker),
    };
    match tls {
        Some(cfg) => {
            let app = app.layer(axum::middleware::from_fn(tls::attach_client_cert));
            axum::serve(
                tls::TlsListener::new(listener, cfg),
                app.into_make_service_with_connect_info::<tls::Peer>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

async fn not_found() -> Response {
    errors::json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn healthz(State(s): State<AppState>) -> Response {
    axum::Json(s.broker.health()).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => errors::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "metrics are not available in this process",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DpopBody {
    proof: String,
    method: String,
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceBody {
    #[serde(rename = "type")]
    kind: TargetKind,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    dpop: Option<DpopBody>,
    action: String,
    resource: ResourceBody,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    approval_id: Option<String>,
    /// Seconds to wait for a person's approval.
    #[serde(default)]
    wait: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    dpop: Option<DpopBody>,
    #[serde(default)]
    resource: Option<ResourceBody>,
    #[serde(default)]
    data_classes: Vec<String>,
    /// The call's output, when it carries third-party content (for argument provenance).
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    third_party: bool,
}

/// The credential from `Authorization: Bearer|DPoP <token>`, and whether the DPoP scheme was used.
/// A request with several `Authorization` headers carries none.
pub(crate) fn auth_header(headers: &HeaderMap) -> Option<(String, bool)> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let v = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    let (scheme, rest) = v.split_once(' ')?;
    let token = rest.trim().to_string();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((token, false))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some((token, true))
    } else {
        None
    }
}

/// The credential and DPoP proof of a request: from the body when a PEP asks on an agent's
/// behalf, else from the `Authorization` and `DPoP` headers of the agent's own request.
fn credential(
    s: &AppState,
    headers: &HeaderMap,
    token: Option<String>,
    dpop: Option<DpopBody>,
    path: &str,
) -> Result<(String, Option<DpopInput>), mandate_broker::DecideError> {
    match (token, auth_header(headers)) {
        (Some(t), _) => Ok((
            t,
            dpop.map(|d| DpopInput {
                proof: d.proof,
                method: d.method,
                url: d.url,
            }),
        )),
        (None, Some((t, _))) => {
            let proof = mandate_crypto::dpop::single_header(
                headers.get_all("dpop").iter().map(|v| v.as_bytes()),
            )
            .map_err(|e| mandate_broker::DecideError::InvalidDpopProof(e.to_string()))?
            .map(|p| DpopInput {
                proof: p.to_string(),
                method: "POST".into(),
                url: format!("{}{path}", s.broker.config().issuer),
            });
            Ok((t, proof))
        }
        (None, None) => Err(mandate_broker::DecideError::InvalidToken(
            "a task credential is required: send `token` or one Authorization header".into(),
        )),
    }
}

async fn decide(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: body::Limited,
) -> Response {
    let parsed: DecideBody = match body.json(&s.broker, "/v1/decide").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (token, dpop) = match credential(&s, &headers, parsed.token, parsed.dpop, "/v1/decide") {
        Ok(c) => c,
        Err(e) => return errors::decide_error(e),
    };
    let input = DecideInput {
        token,
        dpop,
        client_cert: cert.map(|axum::Extension(c)| c),
        action: parsed.action,
        target: Target {
            kind: parsed.resource.kind,
            id: parsed.resource.id,
        },
        context: parsed.context,
        arguments: parsed.arguments,
        approval_id: parsed.approval_id,
        wait: parsed.wait,
    };
    // An enforcement point that acts on the status alone (nginx `auth_request`, forward-auth
    // proxies) asks for it with `Mandate-Enforce: status`: anything but an allow is 403.
    let enforce = headers
        .get("mandate-enforce")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"status"));
    match s.broker.decide(&input).await {
        Ok(outcome) if enforce && !outcome.allowed => {
            (StatusCode::FORBIDDEN, axum::Json(outcome)).into_response()
        }
        Ok(outcome) => axum::Json(outcome).into_response(),
        Err(e) => errors::decide_error(e),
    }
}

/// A per-task downstream credential for the presented task credential (header only: the body
/// is empty; a DPoP proof's `htu` is this URL).
async fn fetch_credential(
    State(s): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
) -> Response {
    if mandate_broker::check_secret_name(&name).is_err() {
        return errors::json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such credential is configured",
        );
    }
    let path = format!("/v1/credentials/{name}");
    let (token, dpop) = match credential(&s, &headers, None, None, &path) {
        Ok(c) => c,
        Err(e) => return errors::decide_error(e),
    };
    match s
        .broker
        .fetch_credential(&token, dpop.as_ref(), cert.as_deref(), &name)
        .await
    {
        Ok(issued) => {
            let mut r = axum::Json(issued).into_response();
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => errors::credential_error(e),
    }
}

/// The public key sshd's `TrustedUserCAKeys` names for an `ssh` credential (a public key: no
/// authentication).
async fn ssh_ca(
    State(s): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    match s.broker.ssh_ca_public_key(&name).await {
        Ok(line) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            format!("{line}\n"),
        )
            .into_response(),
        Err(e) => errors::credential_error(e),
    }
}

async fn report(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: body::Limited,
) -> Response {
    let parsed: ReportBody = match body.json(&s.broker, "/v1/report").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (token, dpop) = match credential(&s, &headers, parsed.token, parsed.dpop, "/v1/report") {
        Ok(c) => c,
        Err(e) => return errors::decide_error(e),
    };
    let input = mandate_broker::ReportInput {
        token,
        dpop,
        client_cert: cert.map(|axum::Extension(c)| c),
        target: parsed.resource.map(|r| Target {
            kind: r.kind,
            id: r.id,
        }),
        data_classes: parsed.data_classes,
        output: parsed.output,
        third_party: parsed.third_party,
    };
    match s.broker.report(&input).await {
        Ok(outcome) => axum::Json(outcome).into_response(),
        Err(e) => errors::decide_error(e),
    }
}
