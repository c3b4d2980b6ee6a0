//! Agent identity proofs: RFC 7523 client assertions signed with the agent's own Ed25519 key, and
//! JWTs from external issuers (OIDC ID tokens, SPIFFE JWT-SVIDs) verified against their JWKS.

use std::collections::{BTreeMap, HashMap};

use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;

use crate::b64;
use crate::error::JwtError;
use crate::jwk::{PublicKey, ed25519_jwk, public_key_from_jwk};
use crate::jws::{self, Claims};

/// Longest `jti` accepted.
pub const MAX_JTI_LEN: usize = 256;
/// Most keys a JWKS may hold.
pub const MAX_JWKS_KEYS: usize = 64;

/// What a verified identity proof yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The proof's `jti`, to refuse its replay (always present for client assertions).
    pub jti: Option<String>,
    /// The proof's expiry, seconds since the epoch.
    pub exp: i64,
}

/// The checks a client assertion must pass.
#[derive(Clone, Copy, Debug)]
pub struct AssertionRules<'a> {
    /// The agent's id: `iss` and `sub` must both equal it.
    pub client_id: &'a str,
    /// Accepted `aud` values: the issuer URL and the token endpoint URL.
    pub audiences: &'a [&'a str],
    /// Now, in seconds.
    pub now: i64,
    /// Longest accepted remaining lifetime (`exp - now`), in seconds.
    pub max_lifetime: i64,
    /// Clock skew tolerated, in seconds.
    pub leeway: i64,
}

/// The `sub` (or else `iss`) of an unverified JWT, used only to find whose key to verify it with.
pub fn peek_subject(token: &str) -> Option<String> {
    if token.len() > jws::MAX_JWT_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let raw: Value = serde_json::from_slice(&b64::decode(payload)?).ok()?;
    raw.get("sub")
        .or_else(|| raw.get("iss"))
        .and_then(Value::as_str)
        .map(|s| s.chars().take(512).collect())
}

/// The `iss` of an unverified JWT, used only to pick the external issuer to verify it with.
pub fn peek_issuer(token: &str) -> Option<String> {
    if token.len() > jws::MAX_JWT_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let raw: Value = serde_json::from_slice(&b64::decode(payload)?).ok()?;
    raw.get("iss")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(512).collect())
}

/// Verifies a client assertion against the agent's registered Ed25519 public keys (base64url).
pub fn verify_client_assertion(
    token: &str,
    public_keys: &[&str],
    rules: &AssertionRules<'_>,
) -> Result<VerifiedAssertion, JwtError> {
    let (header, _) = jws::header(token)?;
    if header.alg != jsonwebtoken::Algorithm::EdDSA {
        return Err(JwtError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
    }
    if public_keys.is_empty() {
        return Err(JwtError::Invalid(
            "agent has no registered key for private_key_jwt".into(),
        ));
    }
    let mut last = JwtError::BadSignature;
    let mut claims = None;
    for x in public_keys {
        let key = public_key_from_jwk(&ed25519_jwk(x, None)?)?;
        match jws::verify(token, &key) {
            Ok(c) => {
                claims = Some(c);
                break;
            }
            Err(e) => last = e,
        }
    }
    let raw = claims.ok_or(last)?;
    let c = Claims(&raw);
    if c.str("iss")? != rules.client_id {
        return Err(JwtError::WrongIssuer(
            c.str("iss")?.chars().take(128).collect(),
        ));
    }
    if c.str("sub")? != rules.client_id {
        return Err(JwtError::WrongSubject);
    }
    c.audience_includes(rules.audiences)?;
    let exp = c.check_times(rules.now, rules.leeway)?;
    if exp - rules.now > rules.max_lifetime {
        return Err(JwtError::LifetimeTooLong(rules.max_lifetime));
    }
    let jti = c.str("jti")?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(JwtError::MissingClaim("jti"));
    }
    Ok(VerifiedAssertion {
        jti: Some(jti.to_string()),
        exp,
    })
}

/// The public keys of an external issuer.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    by_kid: HashMap<String, PublicKey>,
    without_kid: Vec<PublicKey>,
}

impl Jwks {
    /// Parses a JWK Set document, keeping the usable signature keys (EdDSA, ES256, RS256) and
    /// skipping the others.
    pub fn parse(json: &[u8]) -> Result<Self, JwtError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|_| JwtError::Invalid("jwks is not a JWK Set document".into()))?;
        if set.keys.len() > MAX_JWKS_KEYS {
            return Err(JwtError::Invalid(format!(
                "jwks has more than {MAX_JWKS_KEYS} keys"
            )));
        }
        let mut jwks = Jwks::default();
        for jwk in &set.keys {
            if let Ok(key) = public_key_from_jwk(jwk) {
                match &jwk.common.key_id {
                    Some(kid) => {
                        jwks.by_kid.insert(kid.clone(), key);
                    }
                    None => jwks.without_kid.push(key),
                }
            }
        }
        Ok(jwks)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The checks an external JWT must pass.
#[derive(Clone, Copy, Debug)]
pub struct ExternalRules<'a> {
    /// Expected `iss`.
    pub issuer: &'a str,
    /// Expected `aud` (one of the token's audiences).
    pub audience: &'a str,
    /// Expected `sub`.
    pub subject: &'a str,
    /// Claims that must equal the given string (or, if the claim is an array, contain it).
    pub claims: &'a BTreeMap<String, String>,
    /// Now, in seconds.
    pub now: i64,
    /// Clock skew tolerated, in seconds.
    pub leeway: i64,
}

/// Checks a JWT's signature against a key of `jwks` (by `kid`, else every key of its `alg`)
/// and returns its claims.
fn verify_with_jwks(token: &str, jwks: &Jwks) -> Result<serde_json::Map<String, Value>, JwtError> {
    let (header, _) = jws::header(token)?;
    match &header.kid {
        Some(kid) => {
            let key = jwks
                .by_kid
                .get(kid)
                .ok_or_else(|| JwtError::UnknownKey(kid.chars().take(64).collect()))?;
            jws::verify(token, key)
        }
        None => {
            let mut found = None;
            let mut last = JwtError::UnknownKey("(none)".into());
            // A token without `kid` is checked against the keys without one, or against the
            // set's only key (OpenID Connect Core 1.0 section 10.1: `kid` is required only
            // when the set holds several).
            let only = (jwks.len() == 1)
                .then(|| jwks.by_kid.values())
                .into_iter()
                .flatten();
            for key in jwks
                .without_kid
                .iter()
                .chain(only)
                .filter(|k| k.alg == header.alg)
            {
                match jws::verify(token, key) {
                    Ok(c) => {
                        found = Some(c);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            found.ok_or(last)
        }
    }
}

/// Verifies an OpenID Connect ID token from `issuer` for the client `audience` (OpenID Connect
/// Core 1.0 section 3.1.3.7): signature by a key of `jwks`, `iss`, `aud` (and `azp` when several
/// audiences), `exp` and `iat`. Returns its claims; the caller checks `nonce` and what it maps.
/// A `kid` missing from `jwks` yields [`JwtError::UnknownKey`].
pub fn verify_id_token(
    token: &str,
    jwks: &Jwks,
    issuer: &str,
    audience: &str,
    now: i64,
    leeway: i64,
) -> Result<serde_json::Map<String, Value>, JwtError> {
    let raw = verify_with_jwks(token, jwks)?;
    let c = Claims(&raw);
    if c.str("iss")? != issuer {
        return Err(JwtError::WrongIssuer(
            c.str("iss")?.chars().take(128).collect(),
        ));
    }
    c.audience_includes(&[audience])?;
    if let Some(Value::Array(auds)) = raw.get("aud")
        && auds.len() > 1
        && c.opt_str("azp")? != Some(audience)
    {
        return Err(JwtError::Invalid(
            "an ID token for several audiences must name this client in `azp`".into(),
        ));
    }
    c.check_times(now, leeway)?;
    c.int("iat")?;
    Ok(raw)
}

/// Verifies an external JWT. A `kid` missing from `jwks` yields [`JwtError::UnknownKey`], so the
/// caller can refresh the JWKS once and retry.
pub fn verify_external(
    token: &str,
    jwks: &Jwks,
    rules: &ExternalRules<'_>,
) -> Result<VerifiedAssertion, JwtError> {
    let raw = verify_with_jwks(token, jwks)?;
    let c = Claims(&raw);
    if c.str("iss")? != rules.issuer {
        return Err(JwtError::WrongIssuer(
            c.str("iss")?.chars().take(128).collect(),
        ));
    }
    if c.str("sub")? != rules.subject {
        return Err(JwtError::WrongSubject);
    }
    c.audience_includes(&[rules.audience])?;
    let exp = c.check_times(rules.now, rules.leeway)?;
    for (name, want) in rules.claims {
        let ok = match raw.get(name) {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(want)),
            Some(Value::Bool(b)) => b.to_string() == *want,
            Some(Value::Number(n)) => n.to_string() == *want,
            _ => false,
        };
        if !ok {
            return Err(JwtError::Invalid(format!(
                "claim `{}` does not match the agent's registration",
                name.chars().take(64).collect::<String>()
            )));
        }
    }
    let jti = c
        .opt_str("jti")?
        .map(|s| s.chars().take(MAX_JTI_LEN).collect());
    Ok(VerifiedAssertion { jti, exp })
}
