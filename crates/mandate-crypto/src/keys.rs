//! Mandate's own signing keys and the key ring that verifies what they signed.

use std::collections::BTreeMap;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::b64;
use crate::error::JwtError;
use crate::jwk::{PublicKey, ed25519_jwk, public_key_from_jwk};

/// An Ed25519 signing key. Its `Debug` shows only the key id.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    encoding: EncodingKey,
    kid: String,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_dalek(key)
    }

    /// Reads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JwtError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| JwtError::BadKey)?;
        Ok(Self::from_dalek(key))
    }

    /// The PKCS#8 v1 DER encoding (RFC 8410, the form OpenSSL and most tools read), for
    /// storage. Zeroed when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, JwtError> {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        let doc = bytes.to_pkcs8_der().map_err(|_| JwtError::BadKey)?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let x = b64::encode(key.verifying_key().as_bytes());
        // The key id is the RFC 7638 thumbprint, so it is stable and needs no bookkeeping.
        let mut public = ed25519_jwk(&x, None).unwrap_or_else(|_| Jwk {
            common: Default::default(),
            algorithm: jsonwebtoken::jwk::AlgorithmParameters::Other(Default::default()),
        });
        let kid = public
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap_or_default();
        public.common.key_id = Some(kid.clone());
        let der = key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let encoding = EncodingKey::from_ed_der(&der);
        SigningKey {
            key,
            encoding,
            kid,
            public,
        }
    }

    /// The key id (`kid`): the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// The raw public key, base64url (the JWK `x`).
    pub fn public_x(&self) -> String {
        b64::encode(self.key.verifying_key().as_bytes())
    }

    /// Signs `claims` as a compact JWS with `alg: EdDSA`, this key's `kid` and the given `typ`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_string());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|_| JwtError::BadKey)
    }

    /// Signs with an explicit header (used by clients and tests to build assertions and DPoP
    /// proofs that carry a `jwk`).
    pub fn sign_with_header<T: Serialize>(
        &self,
        header: &Header,
        claims: &T,
    ) -> Result<String, JwtError> {
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(|_| JwtError::BadKey)
    }
}

/// The keys that sign new credentials and verify existing ones. The newest key signs; older keys
/// keep verifying until the credentials they signed have expired.
#[derive(Debug)]
pub struct KeyRing {
    signing: SigningKey,
    verifiers: BTreeMap<String, PublicKey>,
    jwks: JwkSet,
}

impl KeyRing {
    /// A ring whose only key is `signing`.
    pub fn new(signing: SigningKey) -> Self {
        let mut ring = KeyRing {
            verifiers: BTreeMap::new(),
            jwks: JwkSet { keys: Vec::new() },
            signing,
        };
        let public = ring.signing.public_jwk().clone();
        ring.add_verifier(public);
        ring
    }

    /// Adds a public key that verifies but does not sign (a retired signing key).
    pub fn add_verifier(&mut self, jwk: Jwk) {
        if let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), public_key_from_jwk(&jwk))
            && !self.verifiers.contains_key(&kid)
        {
            self.verifiers.insert(kid, key);
            self.jwks.keys.push(jwk);
        }
    }

    /// The key that signs.
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// The verification key with this id.
    pub fn verifier(&self, kid: &str) -> Option<&PublicKey> {
        self.verifiers.get(kid)
    }

    /// The public keys as a JWK Set document.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_round_trip_keeps_kid() {
        let k = SigningKey::generate();
        let der = k.to_pkcs8_der().unwrap();
        let k2 = SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(k.kid(), k2.kid());
        assert_eq!(
            format!("{k:?}"),
            format!("SigningKey {{ kid: {:?} }}", k.kid())
        );
        assert!(SigningKey::from_pkcs8_der(b"garbage").is_err());
    }

    #[test]
    fn ring_publishes_signing_key() {
        let ring = KeyRing::new(SigningKey::generate());
        assert_eq!(ring.jwks().keys.len(), 1);
        assert!(ring.verifier(ring.signing().kid()).is_some());
    }
}
