//! The broker's validated settings. The binary reads raw TOML and environment into these.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use mandate_core::Tier;

/// Settings of the broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Issuer URL (`iss` of credentials), e.g. `http://127.0.0.1:8080`. No trailing slash.
    pub issuer: String,
    /// Audience of credentials (`aud`); defaults to the issuer.
    pub audience: String,
    /// Directory of `.cedar` files and the `.cedarschema`.
    pub policy_dir: PathBuf,
    /// TTL of a task when the request names none, in seconds.
    pub default_task_ttl: i64,
    /// Longest TTL any task may have, whatever the policies say, in seconds.
    pub max_task_ttl: i64,
    /// Longest remaining lifetime of a client assertion, in seconds. The default, one hour, is
    /// what common clients (authlib) sign by default and what large identity providers accept;
    /// replay is refused by `jti` whatever the lifetime.
    pub assertion_max_lifetime: i64,
    /// Clock skew tolerated on presented JWTs, in seconds.
    pub leeway: i64,
    /// Tiers whose credentials must be bound with DPoP.
    pub dpop_required: BTreeSet<Tier>,
    /// Tiers whose credentials may be bound only to one of the agent's registered keys (for
    /// agents that have registered keys; an agent attested only by an external issuer binds to
    /// the key it proves, as RFC 9449 allows).
    pub dpop_registered_key: BTreeSet<Tier>,
    /// How old (or early) a DPoP proof's `iat` may be, in seconds.
    pub dpop_max_age: i64,
    /// Whether a decision waits until its audit record is committed before it is answered.
    pub audit_sync_decisions: bool,
    /// How long fetched JWKS documents are trusted, in seconds.
    pub jwks_ttl: i64,
    /// Shortest interval between two fetches of one JWKS, in seconds.
    pub jwks_min_refresh: i64,
    /// Default lifetime of owners' API tokens, in days.
    pub api_token_days: i64,
    /// Denied calls in a row after which a task is suspended (revoked), per tier.
    pub suspend_after_denied: BTreeMap<Tier, u64>,
    /// How long an approval request (and an unused grant) stays valid, in seconds.
    pub approval_ttl: i64,
    /// Longest a decision request may wait for a person's approval, in seconds.
    pub approval_max_wait: i64,
    /// Most approval requests one task may have waiting for a person at once.
    pub approval_max_open_per_task: usize,
    /// Where approval requests are announced, if anywhere.
    pub webhook: Option<Webhook>,
    /// The external OpenID provider people may sign in to the console with, if any.
    pub oidc: Option<OidcProvider>,
    /// Whether audit records keep a call's arguments (otherwise only their digest).
    pub audit_arguments: bool,
    /// Days an owner's confirmation of an agent lasts; past it the agent opens no task until
    /// confirmed again. `None`: no re-confirmation required.
    pub reconfirm_days: Option<i64>,
    /// Days without a task after which an agent is flagged dormant.
    pub dormant_days: i64,
    /// Days of decisions the governance view counts.
    pub activity_window_days: i64,
    /// How often a replica reads the shared log for other replicas' changes, in milliseconds.
    pub follow_interval_ms: u64,
    /// Longest a replica keeps deciding without having read the shared log, in milliseconds.
    pub max_staleness_ms: i64,
    /// Dynamic credentials (`[[credentials]]`): per-task downstream roles, certificates, tokens.
    pub credentials: Vec<crate::leases::Credential>,
}

/// A webhook: JSON POSTs signed with HMAC-SHA256 (`X-Mandate-Signature: sha256=<hex>`).
#[derive(Clone)]
pub struct Webhook {
    /// Target URL.
    pub url: String,
    /// Shared secret for the signature.
    pub secret: mandate_crypto::SecretString,
    /// Attempts before giving up (the first plus retries with doubling backoff).
    pub attempts: u32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

impl BrokerConfig {
    /// Defaults for a broker reachable at `issuer`.
    pub fn new(issuer: &str, policy_dir: PathBuf) -> Self {
        let issuer = issuer.trim_end_matches('/').to_string();
        BrokerConfig {
            audience: issuer.clone(),
            issuer,
            policy_dir,
            default_task_ttl: 600,
            max_task_ttl: 8 * 3600,
            assertion_max_lifetime: 3600,
            leeway: 30,
            dpop_required: BTreeSet::from([Tier::High]),
            dpop_registered_key: BTreeSet::from([Tier::High]),
            dpop_max_age: 60,
            audit_sync_decisions: true,
            jwks_ttl: 300,
            jwks_min_refresh: 30,
            api_token_days: 90,
            suspend_after_denied: BTreeMap::from([
                (Tier::Low, 20),
                (Tier::Medium, 10),
                (Tier::High, 5),
            ]),
            approval_ttl: 900,
            approval_max_wait: 60,
            approval_max_open_per_task: 10,
            webhook: None,
            oidc: None,
            audit_arguments: false,
            reconfirm_days: None,
            dormant_days: 30,
            activity_window_days: 7,
            follow_interval_ms: crate::replication::DEFAULT_FOLLOW_INTERVAL_MS,
            max_staleness_ms: crate::replication::DEFAULT_MAX_STALENESS_MS,
            credentials: Vec::new(),
        }
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.issuer)
    }

    /// The decision endpoint URL (the `htu` of DPoP proofs sent to it).
    pub fn decide_endpoint(&self) -> String {
        format!("{}/v1/decide", self.issuer)
    }
}

/// An external OpenID Connect provider for console sign-in.
#[derive(Clone, Debug)]
pub struct OidcProvider {
    /// Its issuer URL (discovery at `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    /// Mandate's client id there.
    pub client_id: String,
    /// Mandate's client secret there (`client_secret_basic`); `None` for a public client.
    pub client_secret: Option<mandate_crypto::SecretString>,
    /// Verified e-mail addresses that sign in as administrators. Any other verified address
    /// signs in as the owner with that id, if there is one.
    pub admins: Vec<String>,
}
