//! Mapping the broker's typed errors to HTTP, one arm per variant.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_broker::{AdminError, CredentialError, DecideError, OAuthError};

/// `{"error": code, "error_description": message}` with `Cache-Control: no-store`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": code, "error_description": message});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn oauth_error(e: OAuthError) -> Response {
    let code = e.code();
    let (status, policies, task_id) = match &e {
        OAuthError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, None, None),
        OAuthError::InvalidClient(_) => (StatusCode::UNAUTHORIZED, None, None),
        OAuthError::UnauthorizedClient(_) => (StatusCode::BAD_REQUEST, None, None),
        OAuthError::UnsupportedGrantType(_) => (StatusCode::BAD_REQUEST, None, None),
        OAuthError::InvalidScope {
            policies, task_id, ..
        } => (
            StatusCode::BAD_REQUEST,
            Some(policies.clone()),
            task_id.clone(),
        ),
        OAuthError::InvalidAuthorizationDetails {
            policies, task_id, ..
        } => (
            StatusCode::BAD_REQUEST,
            Some(policies.clone()),
            task_id.clone(),
        ),
        OAuthError::InvalidDpopProof(_) => (StatusCode::BAD_REQUEST, None, None),
        OAuthError::InvalidTarget(_) => (StatusCode::BAD_REQUEST, None, None),
        OAuthError::InvalidGrant(_)
        | OAuthError::InvalidRedirectUri(_)
        | OAuthError::InvalidClientMetadata(_) => (StatusCode::BAD_REQUEST, None, None),
        OAuthError::ServerError(_) => (StatusCode::SERVICE_UNAVAILABLE, None, None),
    };
    let mut body = serde_json::Map::new();
    body.insert("error".into(), code.into());
    body.insert("error_description".into(), e.to_string().into());
    if let Some(p) = policies {
        body.insert("mandate_policies".into(), p.into());
    }
    if let Some(t) = task_id {
        body.insert("task_id".into(), t.into());
    }
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn decide_error(e: DecideError) -> Response {
    let (status, code, challenge) = match &e {
        DecideError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request", None),
        DecideError::InvalidToken(_) => (
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            Some("Bearer error=\"invalid_token\""),
        ),
        DecideError::InvalidDpopProof(_) => (
            StatusCode::UNAUTHORIZED,
            "invalid_dpop_proof",
            Some("DPoP error=\"invalid_dpop_proof\""),
        ),
        DecideError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
    };
    let mut r = json_error(status, code, &e.to_string());
    if let Some(c) = challenge {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
    }
    r
}

pub(crate) fn credential_error(e: CredentialError) -> Response {
    let (status, code) = match &e {
        CredentialError::Token(inner) => return decide_error(inner.clone()),
        CredentialError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        CredentialError::Forbidden(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
        // The same answer, challenge included, as any refused task credential.
        CredentialError::TaskEnded(m) => return decide_error(DecideError::InvalidToken(m.clone())),
        CredentialError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    json_error(status, code, &e.to_string())
}

/// The HTTP status of an admin error, one per variant.
pub(crate) fn admin_status(e: &AdminError) -> StatusCode {
    admin_code(e).0
}

fn admin_code(e: &AdminError) -> (StatusCode, &'static str) {
    match e {
        AdminError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

pub(crate) fn admin_error(e: AdminError) -> Response {
    let (status, code) = admin_code(&e);
    let mut r = json_error(status, code, &e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}
