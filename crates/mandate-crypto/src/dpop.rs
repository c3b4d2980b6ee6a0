//! DPoP proofs (RFC 9449): the agent signs each request with its own key, so a copied access token
//! is useless without that key.

use jsonwebtoken::jwk::Jwk;
use serde_json::Value;

use crate::error::JwtError;
use crate::jwk::{has_private_parts, public_key_from_jwk};
use crate::jws::{self, Claims};
use crate::secret::sha256_b64;

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";

/// What the proof must match.
#[derive(Clone, Copy, Debug)]
pub struct DpopExpectation<'a> {
    /// HTTP method of the request the proof was made for.
    pub method: &'a str,
    /// URL of that request; query and fragment are ignored.
    pub url: &'a str,
    /// The access token presented with it, whose hash must be in `ath` (absent at the token
    /// endpoint).
    pub access_token: Option<&'a str>,
    /// Now, in seconds.
    pub now: i64,
    /// How old (or how far in the future) `iat` may be, in seconds.
    pub max_age: i64,
}

/// A verified proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpopProof {
    /// RFC 7638 thumbprint of the proof's key: what `cnf.jkt` binds to.
    pub jkt: String,
    /// The proof's `jti`, to refuse its replay.
    pub jti: String,
    /// When it was made, in seconds.
    pub iat: i64,
}

/// The one `DPoP` header of a request, from all the values it carried: RFC 9449 section 4.3
/// requires exactly one, so two or more are refused (which one a server would use is
/// ambiguous). `Ok(None)` when there is none.
pub fn single_header<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<&'a str>, JwtError> {
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(JwtError::Invalid(
            "send exactly one DPoP header (RFC 9449 section 4.3)".into(),
        ));
    }
    std::str::from_utf8(first)
        .map(Some)
        .map_err(|_| JwtError::Malformed)
}

fn strip_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url.get(..end).unwrap_or(url)
}

/// Verifies a DPoP proof per RFC 9449 section 4.3 (all but `jti` uniqueness, which needs state).
pub fn verify_dpop(proof: &str, want: &DpopExpectation<'_>) -> Result<DpopProof, JwtError> {
    let (header, raw_header) = jws::header(proof)?;
    if header.typ.as_deref() != Some(DPOP_TYP) {
        return Err(JwtError::WrongType(
            header
                .typ
                .unwrap_or_else(|| "none".into())
                .chars()
                .take(32)
                .collect(),
        ));
    }
    let raw_jwk = raw_header
        .get("jwk")
        .ok_or(JwtError::Invalid("dpop proof has no `jwk` header".into()))?;
    if has_private_parts(raw_jwk) {
        return Err(JwtError::Invalid(
            "dpop proof `jwk` contains a private key".into(),
        ));
    }
    let jwk: Jwk = serde_json::from_value(raw_jwk.clone()).map_err(|_| JwtError::BadKey)?;
    let key = public_key_from_jwk(&jwk)?;
    let raw = jws::verify(proof, &key)?;
    let c = Claims(&raw);
    let jti = c.str("jti")?;
    if jti.is_empty() || jti.len() > 256 {
        return Err(JwtError::MissingClaim("jti"));
    }
    if !c.str("htm")?.eq_ignore_ascii_case(want.method) {
        return Err(JwtError::Invalid(
            "dpop proof `htm` does not match the request method".into(),
        ));
    }
    if strip_query(c.str("htu")?) != strip_query(want.url) {
        return Err(JwtError::Invalid(
            "dpop proof `htu` does not match the request URL".into(),
        ));
    }
    let iat = c.int("iat")?;
    if iat > want.now + want.max_age {
        return Err(JwtError::NotYetValid);
    }
    if iat < want.now - want.max_age {
        return Err(JwtError::Expired);
    }
    match (want.access_token, raw.get("ath")) {
        (Some(token), Some(Value::String(ath))) => {
            if !crate::secret::ct_eq(ath, &sha256_b64(token)) {
                return Err(JwtError::Invalid(
                    "dpop proof `ath` does not match the access token".into(),
                ));
            }
        }
        (Some(_), _) => return Err(JwtError::MissingClaim("ath")),
        (None, _) => {}
    }
    Ok(DpopProof {
        jkt: key.thumbprint,
        jti: jti.to_string(),
        iat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use jsonwebtoken::{Algorithm, Header};

    fn proof(key: &SigningKey, htm: &str, htu: &str, iat: i64, ath: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(DPOP_TYP.into());
        let mut jwk = key.public_jwk().clone();
        jwk.common.key_id = None;
        h.jwk = Some(jwk);
        let mut claims = serde_json::json!({"jti": "p1", "htm": htm, "htu": htu, "iat": iat});
        if let Some(a) = ath {
            claims["ath"] = serde_json::json!(a);
        }
        key.sign_with_header(&h, &claims).unwrap()
    }

    fn want<'a>(token: Option<&'a str>) -> DpopExpectation<'a> {
        DpopExpectation {
            method: "POST",
            url: "https://m/oauth/token",
            access_token: token,
            now: 1000,
            max_age: 60,
        }
    }

    #[test]
    fn valid_proof_yields_thumbprint() {
        let k = SigningKey::generate();
        let p = proof(&k, "POST", "https://m/oauth/token?x=1", 1000, None);
        let v = verify_dpop(&p, &want(None)).unwrap();
        assert_eq!(v.jkt, k.kid());
    }

    #[test]
    fn wrong_method_url_age_or_ath_fail() {
        let k = SigningKey::generate();
        assert!(
            verify_dpop(
                &proof(&k, "GET", "https://m/oauth/token", 1000, None),
                &want(None)
            )
            .is_err()
        );
        assert!(
            verify_dpop(
                &proof(&k, "POST", "https://m/other", 1000, None),
                &want(None)
            )
            .is_err()
        );
        assert_eq!(
            verify_dpop(
                &proof(&k, "POST", "https://m/oauth/token", 900, None),
                &want(None)
            ),
            Err(JwtError::Expired)
        );
        let p = proof(&k, "POST", "https://m/oauth/token", 1000, Some("wrong"));
        assert!(verify_dpop(&p, &want(Some("tok"))).is_err());
        let p = proof(
            &k,
            "POST",
            "https://m/oauth/token",
            1000,
            Some(&sha256_b64("tok")),
        );
        assert!(verify_dpop(&p, &want(Some("tok"))).is_ok());
        let p = proof(&k, "POST", "https://m/oauth/token", 1000, None);
        assert_eq!(
            verify_dpop(&p, &want(Some("tok"))),
            Err(JwtError::MissingClaim("ath"))
        );
    }
}
