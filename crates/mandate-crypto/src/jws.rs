//! Verifying a compact JWS against one pinned key, and the claim checks all our JWTs share.

use jsonwebtoken::{Header, Validation};
use serde_json::{Map, Value};

use crate::b64;
use crate::error::JwtError;
use crate::jwk::PublicKey;

/// Longest JWT accepted anywhere.
pub const MAX_JWT_LEN: usize = 16 * 1024;

/// The parsed header: `jsonwebtoken`'s view and the raw JSON (to look at members it ignores).
pub(crate) fn header(token: &str) -> Result<(Header, Value), JwtError> {
    if token.len() > MAX_JWT_LEN {
        return Err(JwtError::TooLong(MAX_JWT_LEN));
    }
    let first = token.split('.').next().ok_or(JwtError::Malformed)?;
    let raw = b64::decode(first).ok_or(JwtError::Malformed)?;
    // RFC 7515 section 4: a header with a repeated member is refused, not read last-wins.
    mandate_core::json::check_unique_keys(&raw).map_err(|_| JwtError::Malformed)?;
    let raw: Value = serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed)?;
    if raw.get("crit").is_some() {
        // RFC 7515 section 4.1.11: this server implements no JWS extension, so every critical
        // one is unknown to it.
        return Err(JwtError::Invalid(
            "the `crit` header names extensions this server does not understand".into(),
        ));
    }
    if let Some(alg) = raw.get("alg").and_then(Value::as_str)
        && !matches!(alg, "EdDSA" | "ES256" | "RS256")
    {
        // `none`, HMAC and anything else we never verify: say so plainly.
        return Err(JwtError::AlgorithmNotAllowed(
            alg.chars().take(16).collect(),
        ));
    }
    let parsed = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
    Ok((parsed, raw))
}

/// Verifies the signature of `token` with `key`, refusing any `alg` but the key's own, and
/// returns the claims. No claim is checked here.
pub(crate) fn verify(token: &str, key: &PublicKey) -> Result<Map<String, Value>, JwtError> {
    let (h, _) = header(token)?;
    if h.alg != key.alg {
        return Err(JwtError::AlgorithmNotAllowed(format!("{:?}", h.alg)));
    }
    let mut v = Validation::new(key.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)?;
    Ok(data.claims)
}

/// Typed access to claims with clear errors.
pub(crate) struct Claims<'a>(pub &'a Map<String, Value>);

impl Claims<'_> {
    pub fn str(&self, name: &'static str) -> Result<&str, JwtError> {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .ok_or(JwtError::MissingClaim(name))
    }

    pub fn opt_str(&self, name: &'static str) -> Result<Option<&str>, JwtError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(JwtError::MissingClaim(name)),
        }
    }

    pub fn int(&self, name: &'static str) -> Result<i64, JwtError> {
        self.opt_int(name)?.ok_or(JwtError::MissingClaim(name))
    }

    pub fn opt_int(&self, name: &'static str) -> Result<Option<i64>, JwtError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or(JwtError::MissingClaim(name)),
            Some(_) => Err(JwtError::MissingClaim(name)),
        }
    }

    /// Whether `aud` (a string or an array of strings) contains one of `accepted`.
    pub fn audience_includes(&self, accepted: &[&str]) -> Result<(), JwtError> {
        let ok = match self.0.get("aud") {
            Some(Value::String(a)) => accepted.contains(&a.as_str()),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .any(|a| accepted.contains(&a)),
            _ => return Err(JwtError::MissingClaim("aud")),
        };
        if ok {
            Ok(())
        } else {
            Err(JwtError::WrongAudience)
        }
    }

    /// `exp` must be present and after `now - leeway`; `nbf` and `iat`, when present, must not be
    /// after `now + leeway`.
    pub fn check_times(&self, now: i64, leeway: i64) -> Result<i64, JwtError> {
        let exp = self.int("exp")?;
        if exp <= now - leeway {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = self.opt_int("nbf")?
            && nbf > now + leeway
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iat) = self.opt_int("iat")?
            && iat > now + leeway
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(exp)
    }
}
