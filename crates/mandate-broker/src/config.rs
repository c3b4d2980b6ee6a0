//! The broker's validated settings. The binary reads raw TOML and environment into these.

use std::collections::BTreeSet;
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
            dpop_max_age: 60,
            audit_sync_decisions: true,
            jwks_ttl: 300,
            jwks_min_refresh: 30,
            api_token_days: 90,
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
