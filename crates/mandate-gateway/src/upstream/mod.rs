//! MCP servers behind the gateway, as a client would see them: started (stdio) or reached
//! (HTTP), initialised, asked for their tools, resources and prompts, and called with a timeout.
//! A stdio server that exits is restarted with backoff; one whose secrets rotate is restarted so
//! its environment holds the new value.

mod http;
mod stdio;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use mandate_broker::Broker;
use serde_json::{Value, json};

use crate::config::McpUpstreamConfig;

/// Protocol versions the gateway speaks, newest first.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// Largest message read from an upstream.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Why a call to an upstream failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// Not running or not reachable now.
    #[error("upstream `{0}` is unavailable: {1}")]
    Unavailable(String, String),
    /// No answer in time.
    #[error("upstream `{0}` did not answer within {1} seconds")]
    Timeout(String, u64),
    /// It stopped while the call was in flight.
    #[error("upstream `{0}` stopped while handling the call")]
    Crashed(String),
    /// It answered with a JSON-RPC error.
    #[error("upstream `{upstream}` answered with an error: {message}")]
    Rpc {
        /// Which.
        upstream: String,
        /// JSON-RPC code.
        code: i64,
        /// Its message.
        message: String,
        /// Its data.
        data: Option<Value>,
    },
    /// It answered something that is not MCP.
    #[error("upstream `{0}` answered something that is not a JSON-RPC response")]
    Garbage(String),
}

/// What an upstream offers.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    /// Its tools, as it lists them.
    pub tools: Vec<Value>,
    /// Its resources.
    pub resources: Vec<Value>,
    /// Its resource templates.
    pub templates: Vec<Value>,
    /// Its prompts.
    pub prompts: Vec<Value>,
    /// What it said it can do at `initialize`.
    pub capabilities: Value,
    /// Whether it is up.
    pub ready: bool,
    /// The last problem, if down.
    pub problem: Option<String>,
}

enum Transport {
    Stdio(stdio::Stdio),
    Http(http::Http),
}

/// One MCP server behind the gateway.
pub struct Upstream {
    /// Its name.
    pub name: String,
    cfg: McpUpstreamConfig,
    transport: Transport,
    offer: RwLock<Offer>,
    timeout: Duration,
    startup: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

fn initialize_params() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSIONS.first().copied().unwrap_or("2025-06-18"),
        "capabilities": {},
        "clientInfo": {"name": "mandate-gateway", "version": env!("CARGO_PKG_VERSION")},
    })
}

impl Upstream {
    /// Starts supervising an upstream.
    pub fn start(
        cfg: McpUpstreamConfig,
        broker: Arc<Broker>,
        timeout: Duration,
        startup: Duration,
    ) -> Arc<Self> {
        let transport = match &cfg.url {
            Some(url) => Transport::Http(http::Http::new(url.clone(), cfg.headers.clone())),
            None => Transport::Stdio(stdio::Stdio::new()),
        };
        let up = Arc::new(Upstream {
            name: cfg.name.clone(),
            cfg,
            transport,
            offer: RwLock::new(Offer::default()),
            timeout,
            startup,
        });
        let supervised = up.clone();
        tokio::spawn(async move { supervised.supervise(broker).await });
        up
    }

    /// What it offers now.
    pub fn offer(&self) -> Offer {
        self.offer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_offer(&self, f: impl FnOnce(&mut Offer)) {
        f(&mut self
            .offer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// The configuration.
    pub fn config(&self) -> &McpUpstreamConfig {
        &self.cfg
    }

    /// Sends a request and waits (bounded) for its answer.
    pub async fn request(
        &self,
        broker: &Broker,
        method: &str,
        params: Value,
    ) -> Result<Value, UpstreamError> {
        self.request_within(broker, method, params, self.timeout)
            .await
    }

    async fn request_within(
        &self,
        broker: &Broker,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        match &self.transport {
            Transport::Stdio(s) => s.request(&self.name, method, params, timeout).await,
            Transport::Http(h) => h.request(&self.name, broker, method, params, timeout).await,
        }
    }

    /// Initialises the session and reads what the upstream offers.
    async fn handshake(&self, broker: &Broker) -> Result<(), UpstreamError> {
        let init = self
            .request_within(broker, "initialize", initialize_params(), self.startup)
            .await?;
        if let Transport::Http(h) = &self.transport {
            h.set_protocol(init.get("protocolVersion").and_then(Value::as_str));
        }
        let caps = init.get("capabilities").cloned().unwrap_or(Value::Null);
        match &self.transport {
            Transport::Stdio(s) => s.notify("notifications/initialized").await,
            Transport::Http(h) => h.notify(broker, "notifications/initialized").await,
        }
        self.refresh(broker, &caps).await;
        Ok(())
    }

    /// Re-reads tools, resources and prompts.
    pub async fn refresh(&self, broker: &Broker, caps: &Value) {
        let list = |method: &'static str, key: &'static str| async move {
            match self.request(broker, method, json!({})).await {
                Ok(v) => v
                    .get(key)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(upstream = %self.name, error = %e, method, "listing failed");
                    Vec::new()
                }
            }
        };
        let tools = if caps.get("tools").is_some() {
            list("tools/list", "tools").await
        } else {
            Vec::new()
        };
        let (resources, templates) = if caps.get("resources").is_some() {
            (
                list("resources/list", "resources").await,
                list("resources/templates/list", "resourceTemplates").await,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let prompts = if caps.get("prompts").is_some() {
            list("prompts/list", "prompts").await
        } else {
            Vec::new()
        };
        self.set_offer(|o| {
            o.capabilities = caps.clone();
            o.tools = tools;
            o.resources = resources;
            o.templates = templates;
            o.prompts = prompts;
            o.ready = true;
            o.problem = None;
        });
    }

    async fn supervise(self: Arc<Self>, broker: Arc<Broker>) {
        let mut backoff = Duration::from_millis(500);
        let mut changes = broker.secret_changes();
        loop {
            let started = tokio::time::Instant::now();
            let outcome = match &self.transport {
                Transport::Stdio(s) => s.run(&self, &broker, &mut changes).await,
                Transport::Http(h) => h.run(&self, &broker).await,
            };
            self.set_offer(|o| {
                o.ready = false;
                o.problem = Some(outcome.clone());
            });
            tracing::warn!(upstream = %self.name, problem = %outcome, "upstream down; restarting");
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_millis(500);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}
