//! The admin API client the CLI uses.

use anyhow::{Context, bail};
use serde_json::Value;

/// Percent-encodes one path segment (agent ids may contain `/` and `:`).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Talks to a running broker with a person's API token.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: String) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        // A broker serving TLS with a private CA (`[server.tls]`): trust that CA too.
        if let Some(path) = std::env::var_os("MANDATE_CA_FILE") {
            let pem = std::fs::read(&path).with_context(|| {
                format!("cannot read MANDATE_CA_FILE `{}`", path.to_string_lossy())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("MANDATE_CA_FILE `{}` is not PEM", path.to_string_lossy())
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().context("cannot build http client")?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp =
            req.bearer_auth(&self.token).send().await.map_err(|e| {
                anyhow::anyhow!("cannot reach mandate at {}: {}", self.base, root(&e))
            })?;
        let status = resp.status();
        let body = resp.bytes().await.context("cannot read response")?;
        let json: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&body).chars().take(500).collect())
            })
        };
        if !status.is_success() {
            let msg = json
                .get("error_description")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(json)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POST `body` as JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// PUT `body` as JSON to `path`.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
}

/// The innermost cause of an error, which is what a person needs to read.
pub fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
