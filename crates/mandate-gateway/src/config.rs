//! Gateway configuration: the MCP upstreams and the HTTP APIs fronted, with their secret
//! references. Read from the `[gateway]` section of the config file.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::template::Template;

/// What the gateway fronts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Longest wait for an upstream's answer to one call, in seconds.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_seconds: u64,
    /// Longest wait for an upstream to start and answer `initialize`, in seconds.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_seconds: u64,
    /// How long a call that needs approval is held waiting for a person (0: answer at once
    /// with the approval id).
    #[serde(default)]
    pub approval_wait_seconds: u64,
    /// Keep call arguments out of the audit (only a digest) — set in `[audit] arguments`.
    /// MCP servers to front.
    #[serde(default)]
    pub mcp: Vec<McpUpstreamConfig>,
    /// HTTP APIs to front.
    #[serde(default)]
    pub http: Vec<HttpApiConfig>,
}

fn default_call_timeout() -> u64 {
    30
}

fn default_startup_timeout() -> u64 {
    30
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            call_timeout_seconds: default_call_timeout(),
            startup_timeout_seconds: default_startup_timeout(),
            approval_wait_seconds: 0,
            mcp: Vec::new(),
            http: Vec::new(),
        }
    }
}

/// Classifiers that look at an output and name the data classes in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classifier {
    /// E-mail addresses → `pii`.
    Email,
    /// Payment card numbers (Luhn-checked) → `financial`.
    CardNumber,
    /// Private keys and well-known API key formats → `secret`.
    Secret,
}

/// One MCP server behind the gateway.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpUpstreamConfig {
    /// Name; tools appear to agents as `<name>.<tool>`.
    pub name: String,
    /// Program to start (stdio transport).
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment for it; values may reference secrets as `${secret:NAME}`.
    #[serde(default)]
    pub env: BTreeMap<String, Template>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// URL of a Streamable HTTP MCP server (HTTP transport).
    #[serde(default)]
    pub url: Option<String>,
    /// Headers sent to it; values may reference secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Output classifiers run on every result of this upstream.
    #[serde(default)]
    pub classifiers: Vec<Classifier>,
}

/// One HTTP API behind the gateway's reverse proxy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Name; agents call `/http/<name>/<path>`.
    pub name: String,
    /// Base URL of the API.
    pub url: String,
    /// Headers injected into every forwarded request; values may reference secrets
    /// (`${secret:NAME}`) and the task's dynamic credentials (`${cred:NAME}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Output classifiers run on every response.
    #[serde(default)]
    pub classifiers: Vec<Classifier>,
    /// Request headers forwarded besides the default allow-list (content negotiation and
    /// conditional requests); credentials, cookies and hop-by-hop headers never are.
    #[serde(default)]
    pub request_headers: Vec<String>,
    /// Response headers returned besides the default allow-list (content type and caching
    /// metadata); `set-cookie` and hop-by-hop headers never are.
    #[serde(default)]
    pub response_headers: Vec<String>,
    /// Longest response body passed back, in bytes (default 8 MiB); a longer one is cut there.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// The routes; a request matching none is refused.
    pub routes: Vec<RouteConfig>,
}

/// A route: which requests map to which action on which resource.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// HTTP method, uppercase (`GET`); matched exactly.
    pub method: String,
    /// Path pattern below the API's base, with `{param}` segments, e.g. `/repos/{owner}/{repo}`
    /// (see [`crate::route::Pattern`]).
    pub path: String,
    /// The action this is, e.g. `read`.
    pub action: String,
    /// The resource, with `{param}` placeholders, e.g. `github.repo:{owner}/{repo}`.
    pub resource: String,
}

/// Checks names and URLs; returns the first problem.
pub fn check(cfg: &GatewayConfig) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let mut seen = std::collections::BTreeSet::new();
    for u in &cfg.mcp {
        if !name_ok(&u.name) {
            return Err(format!(
                "gateway upstream name `{}` must be 1 to 64 letters, digits, `_` or `-`",
                u.name
            ));
        }
        if !seen.insert(u.name.clone()) {
            return Err(format!("gateway upstream `{}` is declared twice", u.name));
        }
        match (&u.command, &u.url) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(format!(
                    "gateway upstream `{}` needs exactly one of `command` (stdio) or `url` (HTTP)",
                    u.name
                ));
            }
        }
        if let Some(url) = &u.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "gateway upstream `{}`: url must be http(s)",
                u.name
            ));
        }
        // An MCP upstream is shared by every task (one process, one session), so a per-task
        // credential has nowhere to go.
        if let Some(c) = u
            .env
            .values()
            .chain(u.headers.values())
            .flat_map(Template::credentials)
            .next()
        {
            return Err(format!(
                "gateway upstream `{}`: `${{cred:{c}}}` is per task, and an MCP upstream is shared by all tasks; use it in an `[[gateway.http]]` API's headers, or fetch it with POST /v1/credentials/{c}",
                u.name
            ));
        }
    }
    for api in &cfg.http {
        if !name_ok(&api.name) {
            return Err(format!("http api name `{}` is invalid", api.name));
        }
        if !seen.insert(api.name.clone()) {
            return Err(format!("gateway name `{}` is used twice", api.name));
        }
        crate::proxy::Api::new(api)?;
    }
    Ok(())
}
