//! Secrets as types: redacted in `Debug`, zeroed on drop, compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::b64;

/// A secret string. `Debug` prints `[redacted]`; the memory is zeroed on drop.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        SecretString(Zeroizing::new(s))
    }

    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &str) -> bool {
        self.0.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Prefix of every API token, so that leaked tokens are easy to find with secret scanners.
pub const API_TOKEN_PREFIX: &str = "mdt_";

/// A freshly generated personal API token: the plaintext (shown once) and its hash (stored).
#[derive(Debug)]
pub struct ApiToken {
    /// The token as given to its holder.
    pub plaintext: SecretString,
    /// SHA-256 of the token, hex; what the store keeps.
    pub hash: String,
}

impl ApiToken {
    /// 256 random bits, base64url, with the `mdt_` prefix.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let plaintext = format!("{API_TOKEN_PREFIX}{}", b64::encode(bytes.as_ref()));
        let hash = hash_api_token(&plaintext);
        ApiToken {
            plaintext: SecretString::new(plaintext),
            hash,
        }
    }
}

/// The stored form of an API token. Tokens carry 256 bits of entropy, so a plain SHA-256 is the
/// right tool here (a slow password hash would only slow every request down).
pub fn hash_api_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Constant-time comparison of two hashes or secrets.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// HMAC-SHA256 of `body` under `key`, lowercase hex: the signature of webhook deliveries.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// base64url SHA-256 of `s`: the `ath` of DPoP, and a safe fingerprint of a token for logs.
pub fn sha256_b64(s: &str) -> String {
    b64::encode(&Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn api_tokens_are_random_and_hashed() {
        let a = ApiToken::generate();
        let b = ApiToken::generate();
        assert_ne!(a.plaintext.expose(), b.plaintext.expose());
        assert!(a.plaintext.expose().starts_with("mdt_"));
        assert_eq!(hash_api_token(a.plaintext.expose()), a.hash);
        assert_eq!(format!("{:?}", a.plaintext), "[redacted]");
        assert!(ct_eq(&a.hash, &hash_api_token(a.plaintext.expose())));
        assert!(!ct_eq(&a.hash, &b.hash));
    }
}
