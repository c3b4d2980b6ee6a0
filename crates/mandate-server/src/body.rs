//! Request bodies: read with a size limit, parsed with clear errors, refusals audited.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::Response;
use mandate_broker::Broker;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::errors::json_error;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request body read whole, up to [`MAX_BODY_BYTES`].
pub(crate) struct Limited(Result<Bytes, String>);

impl FromRequest<AppState> for Limited {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let path = req.uri().path().to_string();
        match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
            Ok(b) => Ok(Limited(Ok(b))),
            Err(_) => {
                let msg = format!("request body is larger than {MAX_BODY_BYTES} bytes");
                state.broker.record_rejected_request(&path, &msg).await;
                Err(json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    &msg,
                ))
            }
        }
    }
}

impl Limited {
    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.0
            .as_ref()
            .map_or(true, |b| b.iter().all(u8::is_ascii_whitespace))
    }

    /// Parses the body as strict JSON (no repeated keys, only exactly comparable numbers: see
    /// [`mandate_core::json`]); a refusal is audited.
    pub async fn json<T: DeserializeOwned>(
        self,
        broker: &Broker,
        path: &str,
    ) -> Result<T, Response> {
        let bytes = self
            .0
            .map_err(|m| json_error(StatusCode::BAD_REQUEST, "invalid_request", &m))?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => match mandate_core::json::check_strict(&bytes) {
                Ok(()) => Ok(v),
                Err(e) => {
                    let msg = format!("request body is refused: {e}");
                    broker.record_rejected_request(path, &msg).await;
                    Err(json_error(StatusCode::BAD_REQUEST, "invalid_request", &msg))
                }
            },
            Err(e) => {
                let msg = format!("request body is not valid JSON for this endpoint: {e}");
                broker.record_rejected_request(path, &msg).await;
                Err(json_error(StatusCode::BAD_REQUEST, "invalid_request", &msg))
            }
        }
    }

    /// Parses the body as `application/x-www-form-urlencoded`; repeated parameters are refused
    /// (RFC 6749 section 3.2).
    pub fn form(self) -> Result<Form, String> {
        let bytes = self.0?;
        let mut out = Form::default();
        for (k, v) in url::form_urlencoded::parse(&bytes) {
            if out.0.iter().any(|(seen, _)| seen == &k) {
                return Err(format!(
                    "parameter `{}` is repeated",
                    k.chars().take(64).collect::<String>()
                ));
            }
            out.0.push((k.into_owned(), v.into_owned()));
        }
        Ok(out)
    }
}

/// Form parameters in order.
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// A parameter's value; empty values count as absent.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    }
}
