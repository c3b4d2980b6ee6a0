//! One error type per boundary. The HTTP layer maps each variant to a status and body, without a
//! catch-all arm, so a new variant forces a decision there.

/// Errors of the OAuth endpoints (token, introspection, revocation), named after their RFC 6749,
/// RFC 9396 and RFC 9449 error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_request`: missing or malformed parameters.
    #[error("{0}")]
    InvalidRequest(String),
    /// `invalid_client`: the agent could not be authenticated.
    #[error("{0}")]
    InvalidClient(String),
    /// `unauthorized_client`: authenticated, but may not do this (suspended, orphaned…).
    #[error("{0}")]
    UnauthorizedClient(String),
    /// `unsupported_grant_type`.
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// `invalid_scope`: the task was refused at admission.
    #[error("{reason}")]
    InvalidScope {
        /// Why.
        reason: String,
        /// Deciding policies.
        policies: Vec<String>,
        /// The denied task's id.
        task_id: Option<String>,
    },
    /// `invalid_authorization_details` (RFC 9396): malformed or refused details.
    #[error("{reason}")]
    InvalidAuthorizationDetails {
        /// Why.
        reason: String,
        /// Deciding policies.
        policies: Vec<String>,
        /// The denied task's id.
        task_id: Option<String>,
    },
    /// `invalid_dpop_proof` (RFC 9449).
    #[error("{0}")]
    InvalidDpopProof(String),
    /// `invalid_target` (RFC 8693): a `resource` or `audience` this service does not serve.
    #[error("{0}")]
    InvalidTarget(String),
    /// `invalid_grant`: an authorization code that is unknown, used, expired, or presented
    /// with the wrong verifier, client or redirect URI.
    #[error("{0}")]
    InvalidGrant(String),
    /// `invalid_redirect_uri` (RFC 7591): a registration's redirect URIs are refused.
    #[error("{0}")]
    InvalidRedirectUri(String),
    /// `invalid_client_metadata` (RFC 7591): other registration metadata is refused.
    #[error("{0}")]
    InvalidClientMetadata(String),
    /// `server_error`: the store failed; nothing was granted.
    #[error("{0}")]
    ServerError(String),
}

impl OAuthError {
    /// The OAuth `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::InvalidScope { .. } => "invalid_scope",
            OAuthError::InvalidAuthorizationDetails { .. } => "invalid_authorization_details",
            OAuthError::InvalidDpopProof(_) => "invalid_dpop_proof",
            OAuthError::InvalidTarget(_) => "invalid_target",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::InvalidRedirectUri(_) => "invalid_redirect_uri",
            OAuthError::InvalidClientMetadata(_) => "invalid_client_metadata",
            OAuthError::ServerError(_) => "server_error",
        }
    }
}

/// Errors of the decision endpoints, before any decision could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The credential was refused: forged, expired, or its task is no longer active.
    #[error("{0}")]
    InvalidToken(String),
    /// The credential is key-bound and the DPoP proof is missing or wrong.
    #[error("{0}")]
    InvalidDpopProof(String),
    /// The decision could not be recorded, so it was not given.
    #[error("{0}")]
    Unavailable(String),
}

/// Errors of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No valid API token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist (or the caller may not see it).
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already, or the state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// The store failed; nothing changed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<mandate_store::StoreError> for AdminError {
    fn from(e: mandate_store::StoreError) -> Self {
        use mandate_store::StoreError as S;
        match e {
            S::Conflict(what) => AdminError::Conflict(format!("{what} already exists")),
            S::NotFound(what) => AdminError::NotFound(format!("{what} does not exist")),
            other => AdminError::Unavailable(other.to_string()),
        }
    }
}

/// Errors of fetching a per-task downstream credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The task credential was refused.
    #[error("{0}")]
    Token(DecideError),
    /// No such credential is configured.
    #[error("{0}")]
    NotFound(String),
    /// The task's scope earns nothing of this credential.
    #[error("{0}")]
    Forbidden(String),
    /// The task is no longer active.
    #[error("{0}")]
    TaskEnded(String),
    /// The credential could not be made (downstream or store failure); nothing is left behind.
    #[error("{0}")]
    Unavailable(String),
}
