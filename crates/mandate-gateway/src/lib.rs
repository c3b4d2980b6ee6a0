//! Mandate's enforcement point: policy on every tool call, without trusting the agent to ask.
//!
//! To agents the gateway is an MCP server over Streamable HTTP at `/mcp`, protected per MCP's
//! authorization spec (RFC 9728 metadata pointing at Mandate's token service; `WWW-Authenticate`
//! on 401). Behind it are MCP servers over stdio (started, supervised, restarted) or Streamable
//! HTTP, and HTTP APIs behind a reverse proxy at `/http/<api>/…`. Every call is decided by the
//! broker with the task's context and the tool's catalog labels, forwarded only when allowed,
//! with brokered secrets injected on the way and scrubbed from what comes back; what it returned
//! grows the task's flow labels and provenance; each call is one audit event.

mod classify;
pub mod config;
mod mcp;
pub mod mcp_headers;
mod proxy;
pub mod route;
mod scrub;
pub mod template;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use mandate_broker::Broker;

pub use config::GatewayConfig;

/// The innermost cause of an error, without the URL reqwest would add.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The gateway: upstreams, HTTP APIs and the sessions of connected agents.
pub struct Gateway {
    broker: Arc<Broker>,
    cfg: GatewayConfig,
    upstreams: BTreeMap<String, Arc<upstream::Upstream>>,
    sessions: mcp::Sessions,
    http: reqwest::Client,
    apis: Vec<proxy::Api>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Gateway {
    /// Checks the configuration and starts the upstreams.
    pub fn start(broker: Arc<Broker>, cfg: GatewayConfig) -> Result<Arc<Self>, String> {
        config::check(&cfg)?;
        for api in &cfg.http {
            for name in api
                .headers
                .values()
                .flat_map(template::Template::credentials)
            {
                match broker.config().credentials.iter().find(|c| c.name == name) {
                    None => {
                        return Err(format!(
                            "http api `{}` sends `${{cred:{name}}}`, and no `[[credentials]]` entry is named `{name}`",
                            api.name
                        ));
                    }
                    // A certificate and its key are no header value; agents fetch them.
                    Some(c) if matches!(c.kind, mandate_broker::CredentialKind::Ssh { .. }) => {
                        return Err(format!(
                            "http api `{}` sends `${{cred:{name}}}`, an ssh credential, which has no header value; fetch it with POST /v1/credentials/{name}",
                            api.name
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let apis = cfg
            .http
            .iter()
            .map(proxy::Api::new)
            .collect::<Result<Vec<_>, _>>()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the proxy's http client: {e}"))?;
        let timeout = Duration::from_secs(cfg.call_timeout_seconds.max(1));
        let startup = Duration::from_secs(cfg.startup_timeout_seconds.max(1));
        let upstreams = cfg
            .mcp
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    upstream::Upstream::start(u.clone(), broker.clone(), timeout, startup),
                )
            })
            .collect();
        Ok(Arc::new(Gateway {
            broker,
            cfg,
            upstreams,
            sessions: mcp::Sessions::default(),
            http,
            apis,
        }))
    }

    /// The gateway's routes: `/mcp`, the protected-resource metadata, `/http/<api>/…`.
    pub fn routes(self: &Arc<Self>) -> Router {
        mcp::routes(self.clone()).merge(proxy::routes(self.clone()))
    }

    /// The upstreams, by name.
    pub fn upstreams(&self) -> &BTreeMap<String, Arc<upstream::Upstream>> {
        &self.upstreams
    }

    /// Waits until every upstream is up, or `limit` passes. Returns the names still down.
    pub async fn wait_ready(&self, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let down: Vec<String> = self
                .upstreams
                .values()
                .filter(|u| !u.offer().ready)
                .map(|u| u.name.clone())
                .collect();
            if down.is_empty() || tokio::time::Instant::now() >= deadline {
                return down;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
