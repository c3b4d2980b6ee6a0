//! Secrets at rest: each value sealed with XChaCha20-Poly1305 under a key-encryption key (KEK),
//! with a fresh random 192-bit nonce and the secret's name and version as associated data, so a
//! sealed value cannot be moved to another name or replayed as another version.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::b64;
use crate::secret::SecretString;

/// Length of a KEK in bytes.
pub const KEK_LEN: usize = 32;
/// Largest secret value sealed.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// Why sealing or opening failed. Never carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The KEK is not 32 bytes of base64.
    #[error("the key-encryption key must be 32 bytes, base64-encoded")]
    BadKek,
    /// The value is too large.
    #[error("a secret may be at most {MAX_SECRET_LEN} bytes")]
    TooLarge,
    /// Wrong key, or the sealed value was altered.
    #[error(
        "the sealed value cannot be opened: wrong key-encryption key, or the value was altered"
    )]
    Open,
}

/// A key-encryption key. `Debug` shows nothing.
pub struct Kek(Zeroizing<[u8; KEK_LEN]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

/// A sealed value: nonce and ciphertext, base64url.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// 24-byte nonce.
    pub nonce: String,
    /// Ciphertext with its 16-byte tag.
    pub ciphertext: String,
}

fn aad(name: &str, version: i64) -> Vec<u8> {
    format!("mandate-secret:{name}:{version}").into_bytes()
}

impl Kek {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEK_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Kek(k)
    }

    /// Reads a base64 (standard or url-safe) encoded key.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        use base64::Engine;
        let t = text.trim();
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .ok()
                .or_else(|| b64::decode(t))
                .ok_or(SealError::BadKek)?,
        );
        let arr: [u8; KEK_LEN] = bytes.as_slice().try_into().map_err(|_| SealError::BadKek)?;
        Ok(Kek(Zeroizing::new(arr)))
    }

    /// The key, base64url, for writing it where it is kept.
    pub fn to_base64(&self) -> SecretString {
        SecretString::new(b64::encode(self.0.as_ref()))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }

    /// Seals `value` as version `version` of secret `name`.
    pub fn seal(&self, name: &str, version: i64, value: &[u8]) -> Result<Sealed, SealError> {
        if value.len() > MAX_SECRET_LEN {
            return Err(SealError::TooLarge);
        }
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(name, version);
        let ct = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Open)?;
        Ok(Sealed {
            nonce: b64::encode(&nonce),
            ciphertext: b64::encode(&ct),
        })
    }

    /// Opens a value sealed for `name` at `version`.
    pub fn open(
        &self,
        name: &str,
        version: i64,
        sealed: &Sealed,
    ) -> Result<SecretString, SealError> {
        let nonce = b64::decode(&sealed.nonce).ok_or(SealError::Open)?;
        let ct = b64::decode(&sealed.ciphertext).ok_or(SealError::Open)?;
        let nonce: [u8; 24] = nonce.as_slice().try_into().map_err(|_| SealError::Open)?;
        let aad = aad(name, version);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad,
                    },
                )
                .map_err(|_| SealError::Open)?,
        );
        let text = String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)?;
        Ok(SecretString::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let k = Kek::generate();
        let s = k.seal("github", 1, b"ghp_secret").unwrap();
        assert_eq!(k.open("github", 1, &s).unwrap().expose(), "ghp_secret");
        // Another name, another version, another key, or a flipped byte: refused.
        assert_eq!(k.open("gitlab", 1, &s).unwrap_err(), SealError::Open);
        assert_eq!(k.open("github", 2, &s).unwrap_err(), SealError::Open);
        assert_eq!(
            Kek::generate().open("github", 1, &s).unwrap_err(),
            SealError::Open
        );
        let mut bad = s.clone();
        bad.ciphertext = bad.ciphertext.replacen('A', "B", 1).replacen('a', "b", 1);
        assert!(k.open("github", 1, &bad).is_err() || bad == s);
        // Same value twice: different nonces, different ciphertexts.
        assert_ne!(k.seal("github", 1, b"ghp_secret").unwrap(), s);
        let again = Kek::from_base64(k.to_base64().expose()).unwrap();
        assert_eq!(again.open("github", 1, &s).unwrap().expose(), "ghp_secret");
        assert_eq!(Kek::from_base64("c2hvcnQ=").unwrap_err(), SealError::BadKek);
        assert!(!format!("{k:?}").contains(k.to_base64().expose()));
    }
}
