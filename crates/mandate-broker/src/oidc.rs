//! Console sign-in with an external OpenID Connect provider: the authorization-code flow with
//! PKCE and a nonce (OpenID Connect Core 1.0 section 3.1), the ID token verified against the
//! provider's JWKS. A verified e-mail address (`email` with `email_verified: true`) names the person: one of the configured
//! administrators, or the owner with that id.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::OwnerId;
use rand::RngCore as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::{AdminError, Broker, Principal};

/// Largest discovery document or token response read.
const MAX_DOC: usize = 64 * 1024;

/// What the provider's discovery document says (the parts used).
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// A sign-in in progress: kept by the console between the redirect and the callback.
#[derive(Clone, Debug)]
pub struct OidcPending {
    /// The `state` sent (and the key the console keeps this under).
    pub state: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
}

fn random() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn unavailable(m: String) -> AdminError {
    AdminError::Unavailable(m)
}

impl Broker {
    /// The configured provider's name for the sign-in button, if one is configured.
    pub fn oidc_issuer(&self) -> Option<&str> {
        self.cfg.oidc.as_ref().map(|o| o.issuer.as_str())
    }

    fn oidc_config(&self) -> Result<&crate::OidcProvider, AdminError> {
        self.cfg
            .oidc
            .as_ref()
            .ok_or_else(|| AdminError::NotFound("no sign-in provider is configured".into()))
    }

    async fn get_limited(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Vec<u8>, String> {
        let mut resp = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("cannot reach the sign-in provider ({what}): {e}"))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("cannot read the sign-in provider's {what}: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOC {
                return Err(format!(
                    "the sign-in provider's {what} is larger than {MAX_DOC} bytes"
                ));
            }
        }
        if !status.is_success() {
            return Err(format!(
                "the sign-in provider refused ({what}, status {status}): {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        Ok(body)
    }

    async fn discovery(&self) -> Result<Discovery, AdminError> {
        let cfg = self.oidc_config()?;
        let mut cached = self.oidc_discovery.lock().await;
        if let Some(d) = cached.as_ref() {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let client = self.http_client().map_err(unavailable)?;
        let body = self
            .get_limited(client.get(&url), "discovery document")
            .await
            .map_err(unavailable)?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| {
            unavailable(format!("the discovery document at {url} is malformed: {e}"))
        })?;
        if d.issuer != cfg.issuer {
            return Err(unavailable(format!(
                "the discovery document names issuer `{}`, not the configured `{}`",
                d.issuer.chars().take(200).collect::<String>(),
                cfg.issuer
            )));
        }
        *cached = Some(d.clone());
        Ok(d)
    }

    /// Starts a sign-in: the URL to send the browser to, and what to keep until the callback.
    pub async fn oidc_begin(
        &self,
        redirect_uri: &str,
    ) -> Result<(String, OidcPending), AdminError> {
        let d = self.discovery().await?;
        let cfg = self.oidc_config()?;
        let pending = OidcPending {
            state: random(),
            nonce: random(),
            verifier: random(),
            redirect_uri: redirect_uri.to_string(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        let mut u = url::Url::parse(&d.authorization_endpoint).map_err(|e| {
            unavailable(format!(
                "the provider's authorization endpoint is not a URL: {e}"
            ))
        })?;
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &cfg.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid email")
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok((u.to_string(), pending))
    }

    /// Finishes a sign-in: redeems `code`, verifies the ID token and maps it to a person.
    pub async fn oidc_complete(
        &self,
        pending: &OidcPending,
        code: &str,
    ) -> Result<Principal, AdminError> {
        let d = self.discovery().await?;
        let cfg = self.oidc_config()?;
        let refused = |m: String| AdminError::Unauthenticated(m);
        let client = self.http_client().map_err(unavailable)?;
        let mut req = client.post(&d.token_endpoint).form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("client_id", cfg.client_id.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ]);
        if let Some(secret) = &cfg.client_secret {
            req = req.basic_auth(&cfg.client_id, Some(secret.expose()));
        }
        let body = self
            .get_limited(req, "token response")
            .await
            .map_err(refused)?;
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: String,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            refused(format!(
                "the provider's token response has no ID token: {e}"
            ))
        })?;
        let now = self.now().as_secs();
        let mut jwks = self
            .external_jwks(&d.jwks_uri, false)
            .await
            .map_err(unavailable)?;
        let verify = |jwks: &mandate_crypto::assertion::Jwks| {
            mandate_crypto::assertion::verify_id_token(
                &t.id_token,
                jwks,
                &cfg.issuer,
                &cfg.client_id,
                now,
                self.cfg.leeway,
            )
        };
        let claims = match verify(&jwks) {
            Err(mandate_crypto::JwtError::UnknownKey(_)) => {
                jwks = self
                    .external_jwks(&d.jwks_uri, true)
                    .await
                    .map_err(unavailable)?;
                verify(&jwks)
            }
            other => other,
        }
        .map_err(|e| refused(format!("the ID token is refused: {e}")))?;
        let nonce_ok = claims
            .get("nonce")
            .and_then(|v| v.as_str())
            .is_some_and(|n| mandate_crypto::secret::ct_eq(n, &pending.nonce));
        if !nonce_ok {
            return Err(refused(
                "the ID token's nonce does not match this sign-in".into(),
            ));
        }
        let email = claims
            .get("email")
            .and_then(|v| v.as_str())
            .ok_or_else(|| refused("the ID token carries no e-mail address".into()))?;
        if claims
            .get("email_verified")
            .and_then(serde_json::Value::as_bool)
            == Some(false)
        {
            return Err(refused(format!("the provider has not verified `{email}`")));
        }
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
        let token_id = format!("oidc:{}", sub.chars().take(128).collect::<String>());
        if cfg.admins.iter().any(|a| a.eq_ignore_ascii_case(email)) {
            return Ok(Principal::Admin {
                token_id,
                name: email.to_string(),
            });
        }
        let owner = OwnerId::parse(email.to_string())
            .ok()
            .filter(|o| self.inventory.owner(o).is_some())
            .ok_or_else(|| {
                refused(format!(
                    "`{}` is neither an owner here nor an administrator",
                    email.chars().take(200).collect::<String>()
                ))
            })?;
        Ok(Principal::Owner { owner, token_id })
    }

    /// Whether a person signed in earlier still may: an owner must still exist.
    pub fn recheck_person(&self, p: &Principal) -> Result<(), AdminError> {
        match p {
            Principal::Admin { .. } => Ok(()),
            Principal::Owner { owner, .. } => self
                .inventory
                .owner(owner)
                .map(|_| ())
                .ok_or_else(|| AdminError::Unauthenticated("the owner was removed".into())),
        }
    }
}
