//! Public JWKs: parsing them safely and their RFC 7638 thumbprints.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::b64;
use crate::error::JwtError;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 8192;

/// A public key fit to verify one algorithm, built from a JWK after checking its parameters.
#[derive(Clone)]
pub struct PublicKey {
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    /// The key for `jsonwebtoken`.
    pub key: DecodingKey,
    /// RFC 7638 thumbprint (SHA-256, base64url).
    pub thumbprint: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

fn decoded_len(s: &str) -> Option<usize> {
    b64::decode(s).map(|v| v.len())
}

/// Builds a verification key from a public JWK. The algorithm is derived from the key type
/// (OKP/Ed25519 → EdDSA, EC/P-256 → ES256, RSA → RS256); a JWK `alg` that disagrees is refused.
/// Private keys and symmetric keys are refused.
pub fn public_key_from_jwk(jwk: &Jwk) -> Result<PublicKey, JwtError> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 || decoded_len(&p.x) != Some(32) {
                return Err(JwtError::BadKey);
            }
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) => {
            if p.curve != EllipticCurve::P256
                || decoded_len(&p.x) != Some(32)
                || decoded_len(&p.y) != Some(32)
            {
                return Err(JwtError::BadKey);
            }
            Algorithm::ES256
        }
        AlgorithmParameters::RSA(p) => {
            let bits = decoded_len(&p.n).unwrap_or(0) * 8;
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) || decoded_len(&p.e).is_none() {
                return Err(JwtError::BadKey);
            }
            Algorithm::RS256
        }
        // Symmetric keys and anything unknown never verify an agent's proof.
        _ => return Err(JwtError::BadKey),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        use jsonwebtoken::jwk::KeyAlgorithm as K;
        let matches = matches!(
            (declared, alg),
            (K::EdDSA, Algorithm::EdDSA)
                | (K::ES256, Algorithm::ES256)
                | (K::RS256, Algorithm::RS256)
        );
        if !matches {
            return Err(JwtError::AlgorithmNotAllowed(format!("{declared:?}")));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| JwtError::BadKey)?;
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| JwtError::BadKey)?;
    Ok(PublicKey {
        alg,
        key,
        thumbprint,
    })
}

/// The public JWK of an Ed25519 key given as its raw 32 bytes in base64url.
pub fn ed25519_jwk(x: &str, kid: Option<&str>) -> Result<Jwk, JwtError> {
    if decoded_len(x) != Some(32) {
        return Err(JwtError::BadKey);
    }
    let v = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"
    });
    let mut v = v;
    if kid.is_none()
        && let Some(o) = v.as_object_mut()
    {
        o.remove("kid");
    }
    serde_json::from_value(v).map_err(|_| JwtError::BadKey)
}

/// The RFC 7638 thumbprint of an Ed25519 public key given in base64url: the `jkt` a credential
/// bound to that key carries.
pub fn ed25519_thumbprint(x: &str) -> Result<String, JwtError> {
    ed25519_jwk(x, None)?
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .map_err(|_| JwtError::BadKey)
}

/// Whether a JWK (as raw JSON) carries private key material.
pub fn has_private_parts(raw: &serde_json::Value) -> bool {
    ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|k| raw.get(k).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // The RSA example of RFC 7638 section 3.1.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))
        .unwrap();
        let k = public_key_from_jwk(&jwk).unwrap();
        assert_eq!(k.thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        assert_eq!(k.alg, Algorithm::RS256);
    }

    #[test]
    fn ed25519_thumbprint_is_the_signing_keys_kid() {
        let k = crate::client::AgentKey::generate();
        assert_eq!(ed25519_thumbprint(&k.public_key()).unwrap(), k.thumbprint());
        assert!(ed25519_thumbprint("AAAA").is_err());
    }

    #[test]
    fn refuses_short_and_symmetric_keys() {
        let short: Jwk = serde_json::from_value(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
        )
        .unwrap();
        assert_eq!(public_key_from_jwk(&short).unwrap_err(), JwtError::BadKey);
        let oct: Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap();
        assert_eq!(public_key_from_jwk(&oct).unwrap_err(), JwtError::BadKey);
        assert!(has_private_parts(&serde_json::json!({"kty":"OKP","d":"x"})));
    }
}
