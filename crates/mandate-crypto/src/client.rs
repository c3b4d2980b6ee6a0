//! The agent's side: signing client assertions (RFC 7523) and DPoP proofs (RFC 9449) with the
//! agent's own Ed25519 key. Used by `mandate quickstart`, the tests, and Rust agents.

use jsonwebtoken::{Algorithm, Header};

use crate::error::JwtError;
use crate::keys::SigningKey;
use crate::secret::sha256_b64;

/// An agent's key pair.
#[derive(Debug)]
pub struct AgentKey {
    key: SigningKey,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl AgentKey {
    /// A fresh key.
    pub fn generate() -> Self {
        AgentKey {
            key: SigningKey::generate(),
        }
    }

    /// Reads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JwtError> {
        Ok(AgentKey {
            key: SigningKey::from_pkcs8_der(der)?,
        })
    }

    /// The underlying signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key to register (base64url, 32 bytes).
    pub fn public_key(&self) -> String {
        self.key.public_x()
    }

    /// RFC 7638 thumbprint of the public key: the `jkt` credentials are bound to.
    pub fn thumbprint(&self) -> &str {
        self.key.kid()
    }

    /// A client assertion for `client_id`, addressed to `audience`, valid for `lifetime` seconds.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        lifetime: i64,
    ) -> Result<String, JwtError> {
        let now = now_secs();
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid_like(),
        });
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("JWT".into());
        self.key.sign_with_header(&h, &claims)
    }

    /// A DPoP proof for one request; pass the access token once there is one.
    pub fn dpop_proof(
        &self,
        method: &str,
        url: &str,
        access_token: Option<&str>,
    ) -> Result<String, JwtError> {
        let mut claims = serde_json::Map::new();
        claims.insert("jti".into(), uuid_like().into());
        claims.insert("htm".into(), method.into());
        claims.insert("htu".into(), url.into());
        claims.insert("iat".into(), now_secs().into());
        if let Some(t) = access_token {
            claims.insert("ath".into(), sha256_b64(t).into());
        }
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(crate::dpop::DPOP_TYP.into());
        let mut jwk = self.key.public_jwk().clone();
        jwk.common.key_id = None;
        h.jwk = Some(jwk);
        self.key.sign_with_header(&h, &claims)
    }
}

fn uuid_like() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    crate::b64::encode(&b)
}
