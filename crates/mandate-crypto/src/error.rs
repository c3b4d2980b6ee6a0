//! Why a presented JWT was refused. Messages are one lowercase line, safe to return to the client:
//! they never contain the token itself.

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts, or a part that is not JSON.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// Longer than allowed.
    #[error("token is longer than {0} bytes")]
    TooLong(usize),
    /// The `alg` header is not the one pinned for this key.
    #[error("algorithm `{0}` is not accepted here")]
    AlgorithmNotAllowed(String),
    /// The `typ` header is wrong.
    #[error("token type `{0}` is not accepted here")]
    WrongType(String),
    /// No known key has this `kid`.
    #[error("no known key has id `{0}`")]
    UnknownKey(String),
    /// The key material is unusable.
    #[error("the verification key is malformed")]
    BadKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A required claim is absent or of the wrong type.
    #[error("claim `{0}` is missing or malformed")]
    MissingClaim(&'static str),
    /// `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` does not name us.
    #[error("token audience does not include this server")]
    WrongAudience,
    /// `iss` is not the expected issuer.
    #[error("token issuer `{0}` is not the expected issuer")]
    WrongIssuer(String),
    /// `sub` is not the expected subject.
    #[error("token subject does not match")]
    WrongSubject,
    /// Lives longer than allowed.
    #[error("token lifetime exceeds {0} seconds")]
    LifetimeTooLong(i64),
    /// A claim has a value we do not accept.
    #[error("{0}")]
    Invalid(String),
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => JwtError::BadSignature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
                JwtError::AlgorithmNotAllowed("unknown".into())
            }
            K::InvalidEddsaKey
            | K::InvalidRsaKey(_)
            | K::InvalidEcdsaKey
            | K::InvalidKeyFormat
            | K::RsaFailedSigning => JwtError::BadKey,
            _ => JwtError::Malformed,
        }
    }
}
