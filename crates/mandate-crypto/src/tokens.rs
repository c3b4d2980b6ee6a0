//! Task credentials: JWT access tokens in the RFC 9068 profile, signed with the key ring.

use serde::{Deserialize, Serialize};

use crate::error::JwtError;
use crate::jws::{self, Claims};
use crate::keys::KeyRing;

/// The `typ` of an RFC 9068 access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Proof-of-possession confirmation (RFC 7800 `cnf`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// RFC 7638 thumbprint of the key the token is bound to (RFC 9449 DPoP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// Base64url SHA-256 of the DER of the client certificate the token is bound to (RFC 8705).
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// The confirmation for these bindings, or `None` for a bearer token.
    pub fn of(jkt: Option<String>, x5t_s256: Option<String>) -> Option<Self> {
        (jkt.is_some() || x5t_s256.is_some()).then_some(Confirmation { jkt, x5t_s256 })
    }
}

/// The claims of a task credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: Mandate's public URL.
    pub iss: String,
    /// The agent.
    pub sub: String,
    /// The resource servers it is for.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// The OAuth client: the agent.
    pub client_id: String,
    /// The granted scope as `action:target` tokens.
    pub scope: String,
    /// The task this credential belongs to.
    pub task_id: String,
    /// The granted task, as RFC 9396 authorization details.
    pub authorization_details: serde_json::Value,
    /// Key binding, when the token was requested with a DPoP proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Delegation chain (RFC 8693 `act`), when the task was delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

impl KeyRing {
    /// Signs a task credential.
    pub fn issue_access_token(&self, claims: &AccessClaims) -> Result<String, JwtError> {
        self.signing().sign(ACCESS_TOKEN_TYP, claims)
    }

    /// Verifies a task credential's signature, type, issuer, audience and times (`now` in
    /// seconds). Whether its task is still active is the caller's business.
    pub fn verify_access_token(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Result<AccessClaims, JwtError> {
        let (header, _) = jws::header(token)?;
        match header.typ.as_deref() {
            Some(t)
                if t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                    || t.eq_ignore_ascii_case("application/at+jwt") => {}
            other => {
                return Err(JwtError::WrongType(
                    other.unwrap_or("none").chars().take(32).collect(),
                ));
            }
        }
        let kid = header.kid.ok_or(JwtError::MissingClaim("kid"))?;
        let key = self
            .verifier(&kid)
            .ok_or_else(|| JwtError::UnknownKey(kid.chars().take(64).collect()))?;
        let raw = jws::verify(token, key)?;
        let c = Claims(&raw);
        if c.str("iss")? != issuer {
            return Err(JwtError::WrongIssuer(
                c.str("iss")?.chars().take(128).collect(),
            ));
        }
        c.audience_includes(&[audience])?;
        c.check_times(now, 0)?;
        serde_json::from_value(serde_json::Value::Object(raw))
            .map_err(|_| JwtError::MissingClaim("task_id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://m".into(),
            sub: "bot".into(),
            aud: "https://m".into(),
            exp,
            iat: 100,
            jti: "j".into(),
            client_id: "bot".into(),
            scope: "call:x".into(),
            task_id: "t1".into(),
            authorization_details: serde_json::json!([]),
            cnf: None,
            act: None,
        }
    }

    #[test]
    fn issue_and_verify() {
        let ring = KeyRing::new(SigningKey::generate());
        let t = ring.issue_access_token(&claims(200)).unwrap();
        let c = ring
            .verify_access_token(&t, "https://m", "https://m", 150)
            .unwrap();
        assert_eq!(c.task_id, "t1");
        assert_eq!(
            ring.verify_access_token(&t, "https://m", "https://m", 200),
            Err(JwtError::Expired)
        );
        assert_eq!(
            ring.verify_access_token(&t, "https://m", "https://other", 150),
            Err(JwtError::WrongAudience)
        );
    }

    #[test]
    fn another_ring_cannot_verify() {
        let a = KeyRing::new(SigningKey::generate());
        let b = KeyRing::new(SigningKey::generate());
        let t = a.issue_access_token(&claims(200)).unwrap();
        assert!(matches!(
            b.verify_access_token(&t, "https://m", "https://m", 150),
            Err(JwtError::UnknownKey(_))
        ));
    }

    #[test]
    fn tampered_payload_fails() {
        let ring = KeyRing::new(SigningKey::generate());
        let t = ring.issue_access_token(&claims(200)).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = claims(9999);
        let payload = crate::b64::encode(&serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(
            ring.verify_access_token(&forged, "https://m", "https://m", 150),
            Err(JwtError::BadSignature)
        );
    }
}
