//! Agent authentication at the OAuth endpoints: a client assertion signed with the agent's own
//! key (RFC 7523), or a JWT from an external issuer (OIDC ID token, SPIFFE JWT-SVID) verified
//! against the issuer's JWKS, fetched and cached here and refreshed when an unknown `kid` shows up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandate_core::audit::EventKind;
use mandate_core::{Agent, AgentId, AgentStatus, Attestation, Timestamp};
use mandate_crypto::JwtError;
use mandate_crypto::assertion::{
    AssertionRules, ExternalRules, Jwks, peek_issuer, peek_subject, verify_client_assertion,
    verify_external,
};

use crate::Broker;
use crate::error::OAuthError;

/// RFC 7523 client assertion type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// SPIFFE JWT-SVID client assertion type (draft-ietf-oauth-spiffe-client-auth).
pub const JWT_SPIFFE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe";
/// Largest JWKS document fetched.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Client authentication parameters of an OAuth request.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    /// `client_id`, optional with assertions.
    pub client_id: Option<String>,
    /// `client_assertion_type`.
    pub assertion_type: Option<String>,
    /// `client_assertion`.
    pub assertion: Option<String>,
    /// The client certificate of the TLS connection, when one was presented and verified.
    pub tls_cert: Option<ClientCert>,
}

/// A client certificate the TLS layer verified against a configured SPIFFE trust bundle: an
/// X.509-SVID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// The SPIFFE ID in its one URI SAN.
    pub spiffe_id: String,
    /// RFC 8705 thumbprint: base64url SHA-256 of the certificate's DER.
    pub x5t_s256: String,
}

/// An agent that proved what it is, and the one-time values its proof used up.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub agent: Agent,
    pub once: Vec<(String, Timestamp)>,
}

#[derive(Debug)]
struct CachedJwks {
    jwks: Arc<Jwks>,
    fetched: Timestamp,
}

/// JWKS documents by source.
#[derive(Debug, Default)]
pub(crate) struct JwksCache {
    entries: Mutex<HashMap<String, CachedJwks>>,
}

impl Broker {
    pub(crate) async fn external_jwks(
        &self,
        source: &str,
        force: bool,
    ) -> Result<Arc<Jwks>, String> {
        let now = self.now();
        {
            let entries = self
                .jwks_cache
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = entries.get(source) {
                let age = (now.0 - c.fetched.0) / 1000;
                let fresh = age < self.cfg.jwks_ttl;
                let recently = age < self.cfg.jwks_min_refresh;
                if (fresh && !force) || recently {
                    return Ok(c.jwks.clone());
                }
            }
        }
        let bytes = self.fetch_jwks(source).await?;
        let jwks = Arc::new(Jwks::parse(&bytes).map_err(|e| e.to_string())?);
        self.jwks_cache
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                source.to_string(),
                CachedJwks {
                    jwks: jwks.clone(),
                    fetched: now,
                },
            );
        Ok(jwks)
    }

    async fn fetch_jwks(&self, source: &str) -> Result<Vec<u8>, String> {
        if source.starts_with("https://") || source.starts_with("http://") {
            let client = self.http_client()?;
            let mut resp = client
                .get(source)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| format!("cannot fetch jwks from `{source}`: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!(
                    "cannot fetch jwks from `{source}`: status {}",
                    resp.status()
                ));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("cannot fetch jwks from `{source}`: {e}"))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_JWKS_BYTES {
                    return Err(format!(
                        "jwks at `{source}` is larger than {MAX_JWKS_BYTES} bytes"
                    ));
                }
            }
            Ok(body)
        } else {
            let meta = tokio::fs::metadata(source)
                .await
                .map_err(|e| format!("cannot read jwks file `{source}`: {e}"))?;
            if meta.len() > MAX_JWKS_BYTES as u64 {
                return Err(format!(
                    "jwks file `{source}` is larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            tokio::fs::read(source)
                .await
                .map_err(|e| format!("cannot read jwks file `{source}`: {e}"))
        }
    }

    /// Authenticates the agent behind an OAuth request. Failures are audited.
    pub(crate) async fn authenticate_agent(
        &self,
        auth: &ClientAuth,
    ) -> Result<Authenticated, OAuthError> {
        let result = self.try_authenticate(auth).await;
        if let Err((agent, e)) = &result {
            let mut d = self.event(EventKind::AttestationFailed);
            d.agent = agent.clone();
            d.reason = Some(e.to_string());
            self.audit_best_effort(d).await;
        }
        result.map_err(|(_, e)| e)
    }

    async fn try_authenticate(
        &self,
        auth: &ClientAuth,
    ) -> Result<Authenticated, (Option<String>, OAuthError)> {
        let fail = |agent: Option<&str>, msg: String| {
            (agent.map(str::to_string), OAuthError::InvalidClient(msg))
        };
        if auth.assertion.is_none()
            && let Some(cert) = &auth.tls_cert
        {
            return self.authenticate_svid(auth.client_id.as_deref(), cert);
        }
        let assertion = auth.assertion.as_deref().ok_or_else(|| {
            fail(
                None,
                "client authentication required: send `client_assertion` (private_key_jwt), or present an X.509-SVID over mutual TLS".into(),
            )
        })?;
        match auth.assertion_type.as_deref() {
            Some(JWT_BEARER) | Some(JWT_SPIFFE) => {}
            Some(other) => {
                return Err(fail(
                    None,
                    format!(
                        "client_assertion_type `{}` is not supported",
                        other.chars().take(100).collect::<String>()
                    ),
                ));
            }
            None => return Err(fail(None, "`client_assertion_type` is missing".into())),
        }
        let claimed = match &auth.client_id {
            Some(c) => c.clone(),
            None => peek_subject(assertion)
                .ok_or_else(|| fail(None, "client assertion is not a well-formed JWT".into()))?,
        };
        let agent_id = AgentId::parse(claimed.clone())
            .map_err(|e| fail(None, format!("client id is invalid: {e}")))?;
        let agent = self
            .inventory
            .agent(&agent_id)
            .ok_or_else(|| fail(None, format!("agent `{agent_id}` is not registered")))?;
        let who = Some(agent.id.as_str());
        let now = self.now();
        let issuer = peek_issuer(assertion);
        let mut once = Vec::new();
        let verified = if issuer.as_deref() == Some(agent.id.as_str()) {
            let keys = agent.public_keys();
            let token_endpoint = self.cfg.token_endpoint();
            let audiences = [self.cfg.issuer.as_str(), token_endpoint.as_str()];
            let rules = AssertionRules {
                client_id: agent.id.as_str(),
                audiences: &audiences,
                now: now.as_secs(),
                max_lifetime: self.cfg.assertion_max_lifetime,
                leeway: self.cfg.leeway,
            };
            verify_client_assertion(assertion, &keys, &rules)
                .map_err(|e| fail(who, format!("client assertion refused: {e}")))?
        } else {
            let external = agent.attestations.iter().find_map(|a| match a {
                Attestation::ExternalJwt {
                    issuer: iss,
                    jwks,
                    subject,
                    audience,
                    claims,
                } if Some(iss.as_str()) == issuer.as_deref() => {
                    Some((iss, jwks, subject, audience, claims))
                }
                _ => None,
            });
            let Some((iss, jwks_src, subject, audience, claims)) = external else {
                return Err(fail(
                    who,
                    "client assertion refused: its issuer is not one registered for this agent"
                        .into(),
                ));
            };
            let rules = ExternalRules {
                issuer: iss,
                audience: audience.as_deref().unwrap_or(&self.cfg.issuer),
                subject,
                claims,
                now: now.as_secs(),
                leeway: self.cfg.leeway,
            };
            let jwks = self
                .external_jwks(jwks_src, false)
                .await
                .map_err(|e| fail(who, e))?;
            match verify_external(assertion, &jwks, &rules) {
                Err(JwtError::UnknownKey(_)) => {
                    let jwks = self
                        .external_jwks(jwks_src, true)
                        .await
                        .map_err(|e| fail(who, e))?;
                    verify_external(assertion, &jwks, &rules)
                }
                other => other,
            }
            .map_err(|e| fail(who, format!("external token refused: {e}")))?
        };
        if let Some(jti) = &verified.jti {
            once.push((
                format!("assertion:{}:{jti}", agent.id),
                Timestamp::from_secs(verified.exp + self.cfg.leeway),
            ));
        }
        Self::usable(agent, once)
    }

    fn usable(
        agent: Agent,
        once: Vec<(String, Timestamp)>,
    ) -> Result<Authenticated, (Option<String>, OAuthError)> {
        if agent.status == AgentStatus::Suspended {
            return Err((
                Some(agent.id.to_string()),
                OAuthError::UnauthorizedClient(format!("agent `{}` is suspended", agent.id)),
            ));
        }
        Ok(Authenticated { agent, once })
    }

    /// RFC 8705 `tls_client_auth`: the TLS layer verified the certificate's chain to the bundle
    /// of its SPIFFE trust domain; the agent is the one registered with that SPIFFE ID (named by
    /// `client_id`, or found by the ID when no `client_id` is sent).
    fn authenticate_svid(
        &self,
        client_id: Option<&str>,
        cert: &ClientCert,
    ) -> Result<Authenticated, (Option<String>, OAuthError)> {
        let fail = |agent: Option<&str>, msg: String| {
            (agent.map(str::to_string), OAuthError::InvalidClient(msg))
        };
        let holds = |a: &Agent| {
            a.attestations.iter().any(|x| {
                matches!(x, Attestation::X509Svid { spiffe_id } if *spiffe_id == cert.spiffe_id)
            })
        };
        let agent = match client_id {
            Some(id) => {
                let id = AgentId::parse(id.to_string())
                    .map_err(|e| fail(None, format!("client id is invalid: {e}")))?;
                let agent = self
                    .inventory
                    .agent(&id)
                    .ok_or_else(|| fail(None, format!("agent `{id}` is not registered")))?;
                if !holds(&agent) {
                    return Err(fail(
                        Some(agent.id.as_str()),
                        format!(
                            "the client certificate names `{}`, which is not registered for agent `{}`",
                            cert.spiffe_id, agent.id
                        ),
                    ));
                }
                agent
            }
            None => {
                let mut found = self.inventory.agents().into_iter().filter(|a| holds(a));
                match (found.next(), found.next()) {
                    (Some(a), None) => a,
                    (None, _) => {
                        return Err(fail(
                            None,
                            format!("no agent is registered for `{}`", cert.spiffe_id),
                        ));
                    }
                    (Some(_), Some(_)) => {
                        return Err(fail(
                            None,
                            format!(
                                "several agents are registered for `{}`: send `client_id`",
                                cert.spiffe_id
                            ),
                        ));
                    }
                }
            }
        };
        Self::usable(agent, Vec::new())
    }
}
