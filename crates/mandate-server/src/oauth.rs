//! OAuth endpoints and metadata.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_broker::{
    Caller, ClientAuth, ExchangeParams, OAuthError, TASK_DETAILS_TYPE, TokenRequest,
};

use crate::AppState;
use crate::body::{Form, Limited};
use crate::errors::{json_error, oauth_error};

/// RFC 8414 authorization server metadata.
pub(crate) async fn metadata(State(s): State<AppState>) -> Response {
    let issuer = &s.broker.config().issuer;
    let algs = ["EdDSA", "ES256", "RS256"];
    axum::Json(serde_json::json!({
        "issuer": issuer,
        // Agents use client credentials; interactive MCP hosts the authorization-code grant
        // with PKCE, the person consenting in the console.
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "registration_endpoint": format!("{issuer}/oauth/register"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "grant_types_supported": [
            "client_credentials",
            mandate_broker::TOKEN_EXCHANGE,
            mandate_broker::authcode::AUTHORIZATION_CODE,
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "bearer"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "bearer"],
        "dpop_signing_alg_values_supported": algs,
        "authorization_details_types_supported": [TASK_DETAILS_TYPE],
    }))
    .into_response()
}

/// The public signing keys.
pub(crate) async fn jwks(State(s): State<AppState>) -> Response {
    let mut r = axum::Json(s.broker.jwks()).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    r
}

fn client_auth(form: &Form, cert: Option<&mandate_broker::ClientCert>) -> ClientAuth {
    ClientAuth {
        client_id: form.get("client_id"),
        assertion_type: form.get("client_assertion_type"),
        assertion: form.get("client_assertion"),
        tls_cert: cert.cloned(),
    }
}

async fn read_form(s: &AppState, body: Limited, path: &str) -> Result<Form, Response> {
    match body.form() {
        Ok(f) => Ok(f),
        Err(msg) => {
            s.broker.record_rejected_request(path, &msg).await;
            Err(oauth_error(OAuthError::InvalidRequest(msg)))
        }
    }
}

pub(crate) async fn token(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let form = match read_form(&s, body, "/oauth/token").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let dpop = match mandate_crypto::dpop::single_header(
        headers.get_all("dpop").iter().map(|v| v.as_bytes()),
    ) {
        Ok(p) => p.map(str::to_string),
        Err(e) => return oauth_error(OAuthError::InvalidDpopProof(e.to_string())),
    };
    let req = TokenRequest {
        grant_type: form.get("grant_type"),
        auth: client_auth(&form, cert.as_deref()),
        scope: form.get("scope"),
        authorization_details: form.get("authorization_details"),
        dpop,
        exchange: ExchangeParams {
            subject_token: form.get("subject_token"),
            subject_token_type: form.get("subject_token_type"),
            actor_token: form.get("actor_token"),
            actor_token_type: form.get("actor_token_type"),
            requested_token_type: form.get("requested_token_type"),
            // Repeated parameters are refused for every grant, so one of each at most.
            targets: form
                .get("resource")
                .into_iter()
                .chain(form.get("audience"))
                .collect(),
            dpop_jkt: form.get("dpop_jkt"),
        },
        code: form.get("code"),
        code_verifier: form.get("code_verifier"),
        redirect_uri: form.get("redirect_uri"),
    };
    match s.broker.token(&req).await {
        Ok(resp) => {
            let mut r = axum::Json(resp).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => oauth_error(e),
    }
}

/// Who is calling introspection or revocation: a person (Bearer API token) or an agent (client
/// assertion).
async fn caller(
    s: &AppState,
    headers: &HeaderMap,
    form: &Form,
    cert: Option<&mandate_broker::ClientCert>,
) -> Result<Caller, Response> {
    if let Some((token, false)) = crate::auth_header(headers) {
        return s
            .broker
            .authenticate_person(Some(&token))
            .await
            .map(Caller::Person)
            .map_err(crate::errors::admin_error);
    }
    s.broker
        .authenticate_caller(&client_auth(form, cert))
        .await
        .map_err(oauth_error)
}

pub(crate) async fn introspect(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let form = match read_form(&s, body, "/oauth/introspect").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let who = match caller(&s, &headers, &form, cert.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = form.get("token") else {
        return oauth_error(OAuthError::InvalidRequest("`token` is missing".into()));
    };
    match s.broker.introspect(&who, &token).await {
        Ok(v) => {
            let mut r = axum::Json(v).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => oauth_error(e),
    }
}

pub(crate) async fn revoke(
    State(s): State<AppState>,
    cert: Option<axum::Extension<mandate_broker::ClientCert>>,
    headers: HeaderMap,
    body: Limited,
) -> Response {
    let form = match read_form(&s, body, "/oauth/revoke").await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let who = match caller(&s, &headers, &form, cert.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = form.get("token") else {
        return oauth_error(OAuthError::InvalidRequest("`token` is missing".into()));
    };
    match s.broker.revoke_token(&who, &token).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(OAuthError::ServerError(m)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "server_error", &m)
        }
        Err(e) => oauth_error(e),
    }
}

/// The authorization endpoint (RFC 6749 section 3.1): the consent screen is the console's, where
/// the person's session lives; the request goes there unchanged.
pub(crate) async fn authorize(uri: axum::http::Uri) -> Response {
    let q = uri.query().unwrap_or("");
    if q.len() > 8 * 1024 {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the authorization request is longer than 8 KiB",
        );
    }
    axum::response::Redirect::to(&format!("/console/authorize?{q}")).into_response()
}

/// RFC 7591 dynamic client registration, for MCP hosts (public clients using PKCE).
pub(crate) async fn register(State(s): State<AppState>, body: Limited) -> Response {
    let reg: mandate_broker::authcode::ClientRegistration =
        match body.json(&s.broker, "/oauth/register").await {
            Ok(r) => r,
            Err(r) => return r,
        };
    match s.broker.register_client(reg) {
        Ok(c) => {
            let mut r = (StatusCode::CREATED, axum::Json(c)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => oauth_error(e),
    }
}
