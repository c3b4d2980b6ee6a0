//! The only place keys live.
//!
//! Mandate signs task credentials with Ed25519 (JWS `EdDSA`, RFC 8037) and verifies three kinds
//! of JWT presented to it: its own access tokens (RFC 9068), agents' client assertions (RFC 7523)
//! and DPoP proofs (RFC 9449), plus tokens from external issuers (OIDC, SPIFFE JWT-SVID) against
//! their JWKS. Every verification pins the algorithm to the key's type, so `alg: none` and the
//! HS256-with-a-public-key confusion cannot be expressed. Claims are checked here against a
//! caller-supplied time, never the process clock, so expiry is testable.

pub mod assertion;
mod b64;
pub mod client;
pub mod dpop;
pub mod error;
pub mod jwk;
mod jws;
pub mod keys;
pub mod seal;
pub mod secret;
pub mod tokens;

pub use error::JwtError;
pub use keys::{KeyRing, SigningKey};
pub use secret::{ApiToken, SecretString, hash_api_token};
pub use tokens::{AccessClaims, Confirmation};
