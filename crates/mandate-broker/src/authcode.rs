//! The authorization-code grant with PKCE (RFC 6749 section 4.1, RFC 7636) for interactive MCP
//! hosts, with dynamic client registration (RFC 7591).
//!
//! A host registers (public client, no secret), sends the person's browser to the authorization
//! endpoint, and the person, signed in to the console, sees the consent screen: which of their
//! agents the host acts as, the intent, and the scope the host asks for, which they may narrow.
//! Their consent is a task: the code it yields is redeemed (once, within a minute, with the
//! PKCE verifier) for an ordinary task credential of that agent, bounded by its envelope,
//! admitted by the same policies as any task, and recorded as opened on the person's behalf.
//!
//! Registered clients and pending codes live in this process's memory: a restart forgets them
//! (hosts register again), and behind several replicas a code must be redeemed at the replica
//! that issued it.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::{AgentStatus, Intent, Scope, Timestamp};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::oauth::TaskAsk;
use crate::{AdminError, Broker, OAuthError, Principal, TokenResponse};

/// The grant type.
pub const AUTHORIZATION_CODE: &str = "authorization_code";
/// How long a code may wait to be redeemed, in seconds.
pub const CODE_TTL: i64 = 60;
/// Most registered clients held at once.
pub const MAX_CLIENTS: usize = 1000;
/// Most codes waiting at once.
pub const MAX_CODES: usize = 1000;
/// Most redirect URIs per client, and the longest.
pub const MAX_REDIRECT_URIS: usize = 8;
const MAX_URI: usize = 2048;
const MAX_NAME: usize = 200;

/// An RFC 7591 registration request (the fields Mandate uses; others are ignored, as the RFC
/// allows).
#[derive(Clone, Debug, Deserialize)]
pub struct ClientRegistration {
    /// Where codes may be sent.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// The name shown on the consent screen.
    #[serde(default)]
    pub client_name: Option<String>,
    /// Must be `none` (public client) when given.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    /// Must include `authorization_code` when given.
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    /// Must be `["code"]` when given.
    #[serde(default)]
    pub response_types: Option<Vec<String>>,
}

/// A registered client, as RFC 7591 section 3.2.1 returns it.
#[derive(Clone, Debug, Serialize)]
pub struct RegisteredClient {
    /// The client's id.
    pub client_id: String,
    /// When it was issued (seconds since the epoch).
    pub client_id_issued_at: i64,
    /// The registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// The name shown on the consent screen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Always `none`: the client proves itself with PKCE.
    pub token_endpoint_auth_method: &'static str,
    /// `["authorization_code"]`.
    pub grant_types: Vec<&'static str>,
    /// `["code"]`.
    pub response_types: Vec<&'static str>,
}

/// The parameters of an authorization request (RFC 6749 section 4.1.1, RFC 7636 section 4.3,
/// RFC 8707).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AuthorizeRequest {
    /// Must be `code`.
    #[serde(default)]
    pub response_type: Option<String>,
    /// A registered client.
    #[serde(default)]
    pub client_id: Option<String>,
    /// One of its redirect URIs.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// Passed back unchanged.
    #[serde(default)]
    pub state: Option<String>,
    /// The PKCE challenge.
    #[serde(default)]
    pub code_challenge: Option<String>,
    /// Must be `S256`.
    #[serde(default)]
    pub code_challenge_method: Option<String>,
    /// What the host asks for.
    #[serde(default)]
    pub scope: Option<String>,
    /// The protected resource (RFC 8707): must be this service's.
    #[serde(default)]
    pub resource: Option<String>,
}

/// Why an authorization request cannot go on.
#[derive(Clone, Debug)]
pub enum AuthorizeError {
    /// The client or redirect URI is unknown or wrong: shown to the person, never redirected
    /// (RFC 6749 section 4.1.2.1).
    Show(String),
    /// Anything else: sent back to the client's redirect URI as `error` and
    /// `error_description`.
    Redirect {
        /// The redirect URI.
        redirect_uri: String,
        /// The RFC 6749 error code.
        error: &'static str,
        /// Why.
        description: String,
        /// The request's `state`.
        state: Option<String>,
    },
}

/// An authorization request that passed its checks.
#[derive(Clone, Debug)]
pub struct CheckedAuthorize {
    /// The client.
    pub client: RegisteredClient,
    /// The redirect URI the code goes to.
    pub redirect_uri: String,
    /// The scope asked for (may be empty: the person chooses).
    pub scope: Scope,
    /// The PKCE challenge.
    pub code_challenge: String,
    /// `state`.
    pub state: Option<String>,
}

/// What the person decided on the consent screen.
#[derive(Clone, Debug)]
pub struct Consent {
    /// The agent the host acts as.
    pub agent: String,
    /// The task's intent.
    pub intent: String,
    /// The scope granted (at most what was asked, when something was).
    pub scope: String,
    /// The task's lifetime in seconds.
    pub ttl: i64,
}

struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    agent: mandate_core::AgentId,
    person: String,
    intent: Intent,
    scope: Scope,
    ttl: i64,
    expires_at: Timestamp,
}

/// Registered clients and codes waiting to be redeemed.
#[derive(Default)]
pub(crate) struct AuthCodes {
    clients: Mutex<HashMap<String, RegisteredClient>>,
    codes: Mutex<HashMap<[u8; 32], PendingCode>>,
}

fn random() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn code_key(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// Whether `uri` may receive codes: `https`, or `http` on loopback (RFC 8252 section 7.3), no
/// fragment, no user info.
fn redirect_uri_ok(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI {
        return Err(format!("a redirect URI is longer than {MAX_URI} bytes"));
    }
    let u = url::Url::parse(uri).map_err(|e| format!("redirect URI `{uri}` is not a URL: {e}"))?;
    if u.fragment().is_some() || !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "redirect URI `{uri}` must have no fragment and no user info"
        ));
    }
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "redirect URI `{uri}` must be https, or http on loopback"
        )),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Broker {
    /// RFC 7591 dynamic registration of a public client.
    pub fn register_client(&self, reg: ClientRegistration) -> Result<RegisteredClient, OAuthError> {
        let bad = |m: String| OAuthError::InvalidClientMetadata(m);
        if reg.redirect_uris.is_empty() || reg.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(OAuthError::InvalidRedirectUri(format!(
                "register 1 to {MAX_REDIRECT_URIS} redirect_uris"
            )));
        }
        for u in &reg.redirect_uris {
            redirect_uri_ok(u).map_err(OAuthError::InvalidRedirectUri)?;
        }
        if let Some(m) = reg.token_endpoint_auth_method.as_deref()
            && m != "none"
        {
            return Err(bad(format!(
                "token_endpoint_auth_method `{}` is not supported: clients of the authorization-code grant are public (`none`) and use PKCE",
                m.chars().take(64).collect::<String>()
            )));
        }
        if let Some(g) = &reg.grant_types
            && !g.iter().any(|g| g == AUTHORIZATION_CODE)
        {
            return Err(bad("grant_types must include `authorization_code`".into()));
        }
        if let Some(r) = &reg.response_types
            && r.iter().any(|r| r != "code")
        {
            return Err(bad("response_types must be [\"code\"]".into()));
        }
        let name = reg
            .client_name
            .map(|n| n.trim().chars().take(MAX_NAME).collect::<String>())
            .filter(|n| !n.is_empty());
        if name
            .as_deref()
            .is_some_and(|n| n.chars().any(mandate_core::model::unsafe_text_char))
        {
            return Err(bad(
                "client_name holds control or invisible characters".into()
            ));
        }
        let client = RegisteredClient {
            client_id: format!("mcp_{}", random()),
            client_id_issued_at: self.now().as_secs(),
            redirect_uris: reg.redirect_uris,
            client_name: name,
            token_endpoint_auth_method: "none",
            grant_types: vec![AUTHORIZATION_CODE],
            response_types: vec!["code"],
        };
        let mut clients = lock(&self.authcodes.clients);
        if clients.len() >= MAX_CLIENTS {
            return Err(OAuthError::ServerError(format!(
                "{MAX_CLIENTS} clients are registered; restart the server or try later"
            )));
        }
        clients.insert(client.client_id.clone(), client.clone());
        tracing::info!(client_id = %client.client_id, name = ?client.client_name, "client registered");
        Ok(client)
    }

    /// Checks an authorization request before the consent screen.
    pub fn check_authorize(
        &self,
        req: &AuthorizeRequest,
    ) -> Result<CheckedAuthorize, AuthorizeError> {
        let client_id = req.client_id.as_deref().unwrap_or("");
        let client = lock(&self.authcodes.clients)
            .get(client_id)
            .cloned()
            .ok_or_else(|| {
                AuthorizeError::Show(format!(
                    "client `{}` is not registered here (RFC 7591 registration at {}/oauth/register)",
                    client_id.chars().take(80).collect::<String>(),
                    self.cfg.issuer
                ))
            })?;
        let redirect_uri = match req.redirect_uri.as_deref() {
            Some(u) if client.redirect_uris.iter().any(|r| r == u) => u.to_string(),
            Some(_) => {
                return Err(AuthorizeError::Show(
                    "redirect_uri is not one the client registered".into(),
                ));
            }
            None if client.redirect_uris.len() == 1 => {
                client.redirect_uris.first().cloned().unwrap_or_default()
            }
            None => {
                return Err(AuthorizeError::Show(
                    "redirect_uri is missing and the client registered several".into(),
                ));
            }
        };
        let state = req.state.clone();
        let fail = |error: &'static str, description: String| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            error,
            description,
            state: state.clone(),
        };
        if req.response_type.as_deref() != Some("code") {
            return Err(fail(
                "unsupported_response_type",
                "response_type must be `code`".into(),
            ));
        }
        let challenge = match (
            req.code_challenge.as_deref(),
            req.code_challenge_method.as_deref(),
        ) {
            (Some(c), Some("S256"))
                if (43..=128).contains(&c.len())
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                c.to_string()
            }
            (Some(_), Some("S256")) => {
                return Err(fail(
                    "invalid_request",
                    "code_challenge is malformed".into(),
                ));
            }
            _ => {
                return Err(fail(
                    "invalid_request",
                    "PKCE is required: send code_challenge with code_challenge_method=S256".into(),
                ));
            }
        };
        if let Some(r) = req.resource.as_deref()
            && !self.is_own_resource(r)
        {
            return Err(fail(
                "invalid_target",
                format!(
                    "`{}` is not a resource of this service",
                    r.chars().take(200).collect::<String>()
                ),
            ));
        }
        if state.as_ref().is_some_and(|s| s.len() > 512) {
            return Err(fail(
                "invalid_request",
                "state is longer than 512 bytes".into(),
            ));
        }
        let scope = match req.scope.as_deref() {
            Some(s) => Scope::parse(s)
                .map_err(|e| fail("invalid_scope", format!("scope is malformed: {e}")))?,
            None => Scope::empty(),
        };
        Ok(CheckedAuthorize {
            client,
            redirect_uri,
            scope,
            code_challenge: challenge,
            state,
        })
    }

    /// The person's consent: returns the code to send back to the client.
    pub fn consent(
        &self,
        p: &Principal,
        req: &CheckedAuthorize,
        consent: Consent,
    ) -> Result<String, AdminError> {
        let agent = self.managed_agent(p, &consent.agent)?;
        if agent.status == AgentStatus::Suspended {
            return Err(AdminError::Conflict(format!(
                "agent `{}` is suspended",
                agent.id
            )));
        }
        let scope = Scope::parse(&consent.scope)
            .map_err(|e| AdminError::BadRequest(format!("scope: {e}")))?;
        if scope.is_empty() {
            return Err(AdminError::BadRequest(
                "choose at least one thing the host may do".into(),
            ));
        }
        if !req.scope.is_empty() && !scope.excess_over(&req.scope).is_empty() {
            return Err(AdminError::BadRequest(
                "the consent may narrow what the host asked for, not add to it".into(),
            ));
        }
        if consent.ttl < 1 || consent.ttl > self.cfg.max_task_ttl {
            return Err(AdminError::BadRequest(format!(
                "the task's lifetime must be between 1 and {} seconds",
                self.cfg.max_task_ttl
            )));
        }
        let intent = Intent {
            text: consent.intent.trim().to_string(),
            class: "interactive".into(),
            values: Vec::new(),
        };
        intent.check().map_err(AdminError::BadRequest)?;
        let code = random();
        let mut codes = lock(&self.authcodes.codes);
        let now = self.now();
        codes.retain(|_, c| c.expires_at > now);
        if codes.len() >= MAX_CODES {
            return Err(AdminError::Unavailable(
                "too many authorization codes are waiting; try again shortly".into(),
            ));
        }
        codes.insert(
            code_key(&code),
            PendingCode {
                client_id: req.client.client_id.clone(),
                redirect_uri: req.redirect_uri.clone(),
                challenge: req.code_challenge.clone(),
                agent: agent.id,
                person: p.name(),
                intent,
                scope,
                ttl: consent.ttl,
                expires_at: now.plus_secs(CODE_TTL),
            },
        );
        Ok(code)
    }

    /// The token endpoint for `grant_type=authorization_code`: redeems a code once, with the
    /// PKCE verifier, for the consented task's credential (bound to the key of a DPoP proof
    /// when one is sent).
    pub async fn redeem_code(
        &self,
        code: Option<&str>,
        verifier: Option<&str>,
        client_id: Option<&str>,
        redirect_uri: Option<&str>,
        resource: Option<&str>,
        dpop: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let invalid = |m: &str| OAuthError::InvalidGrant(m.to_string());
        let code = code.ok_or_else(|| OAuthError::InvalidRequest("`code` is missing".into()))?;
        let verifier = verifier
            .ok_or_else(|| OAuthError::InvalidRequest("`code_verifier` is missing".into()))?;
        if let Some(r) = resource
            && !self.is_own_resource(r)
        {
            return Err(OAuthError::InvalidTarget(format!(
                "`{}` is not a resource of this service",
                r.chars().take(200).collect::<String>()
            )));
        }
        // Spent on the first attempt, right or wrong (RFC 6749 section 4.1.2).
        let pending = lock(&self.authcodes.codes).remove(&code_key(code));
        let Some(c) = pending else {
            return Err(invalid("the code is unknown, used or expired"));
        };
        let now = self.now();
        if c.expires_at <= now {
            return Err(invalid("the code expired"));
        }
        if client_id != Some(c.client_id.as_str()) {
            return Err(invalid("the code was issued to another client"));
        }
        if redirect_uri.is_some_and(|u| u != c.redirect_uri) {
            return Err(invalid(
                "redirect_uri differs from the authorization request's",
            ));
        }
        if !(43..=128).contains(&verifier.len()) {
            return Err(OAuthError::InvalidRequest(
                "code_verifier must be 43 to 128 characters".into(),
            ));
        }
        let derived = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !mandate_crypto::secret::ct_eq(&derived, &c.challenge) {
            return Err(invalid("code_verifier does not match the code_challenge"));
        }
        let agent = self
            .inventory
            .agent(&c.agent)
            .ok_or_else(|| invalid("the agent no longer exists"))?;
        if agent.status == AgentStatus::Suspended {
            return Err(invalid("the agent is suspended"));
        }
        let (jkt, once) = match self.token_dpop(&agent, dpop, now)? {
            Some((jkt, spent)) => (Some(jkt), vec![spent]),
            None => (None, Vec::new()),
        };
        let ask = TaskAsk {
            intent: c.intent,
            scope: c.scope,
            ttl: c.ttl,
            ttl_asked: true,
            budget: Default::default(),
            via_details: false,
        };
        self.issue_task(agent, ask, jkt, None, &once, Some(&c.person))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::redirect_uri_ok;

    #[test]
    fn redirect_uris() {
        assert!(redirect_uri_ok("https://host.example/cb").is_ok());
        assert!(redirect_uri_ok("http://127.0.0.1:8123/callback").is_ok());
        assert!(redirect_uri_ok("http://localhost/cb").is_ok());
        assert!(redirect_uri_ok("http://host.example/cb").is_err());
        assert!(redirect_uri_ok("https://host.example/cb#x").is_err());
        assert!(redirect_uri_ok("https://u:p@host.example/cb").is_err());
        assert!(redirect_uri_ok("javascript:alert(1)").is_err());
        assert!(redirect_uri_ok(&format!("https://h.example/{}", "a".repeat(3000))).is_err());
    }
}
