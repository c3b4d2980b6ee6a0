//! MCP over Streamable HTTP: each message a POST; the answer a JSON body or an SSE stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mandate_broker::Broker;
use serde_json::{Value, json};

use super::{MAX_MESSAGE, Upstream, UpstreamError};
use crate::template::Template;

/// The HTTP transport of one upstream.
pub(super) struct Http {
    url: String,
    headers: BTreeMap<String, Template>,
    session: Mutex<Option<String>>,
    protocol: Mutex<Option<String>>,
    next: AtomicU64,
    client: std::sync::OnceLock<reqwest::Client>,
}

impl Http {
    pub(super) fn new(url: String, headers: BTreeMap<String, Template>) -> Self {
        Http {
            url,
            headers,
            session: Mutex::new(None),
            protocol: Mutex::new(None),
            next: AtomicU64::new(1),
            client: std::sync::OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(self.client.get_or_init(|| c))
    }

    pub(super) fn set_protocol(&self, v: Option<&str>) {
        *self
            .protocol
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = v.map(str::to_string);
    }

    async fn post(
        &self,
        name: &str,
        broker: &Broker,
        msg: &Value,
        timeout: Duration,
    ) -> Result<reqwest::Response, UpstreamError> {
        let client = self
            .client()
            .map_err(|e| UpstreamError::Unavailable(name.into(), e))?;
        let mut req = client
            .post(&self.url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(msg.to_string());
        // The standard headers mirror the body (SEP-2243), so what the upstream routes on is
        // what it executes. Names are the upstream's own (the gateway's prefix removed).
        if let Some(m) = msg.get("method").and_then(Value::as_str) {
            req = req.header("mcp-method", m);
        }
        if let Some(n) = msg
            .get("params")
            .and_then(|p| p.get("name").or_else(|| p.get("uri")))
            .and_then(Value::as_str)
            .filter(|n| n.bytes().all(|b| (0x20..0x7f).contains(&b)) && n.trim() == *n)
        {
            req = req.header("mcp-name", n);
        }
        for (k, t) in &self.headers {
            let v = t
                .resolve(broker)
                .await
                .map_err(|e| UpstreamError::Unavailable(name.into(), e))?;
            req = req.header(k.as_str(), v.expose());
        }
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            req = req.header("mcp-session-id", s);
        }
        if let Some(p) = self
            .protocol
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            req = req.header("mcp-protocol-version", p);
        }
        req.send().await.map_err(|e| {
            if e.is_timeout() {
                UpstreamError::Timeout(name.into(), timeout.as_secs())
            } else {
                // Say what failed without echoing a URL that could carry credentials.
                UpstreamError::Unavailable(name.into(), crate::root_cause(&e))
            }
        })
    }

    pub(super) async fn notify(&self, broker: &Broker, method: &str) {
        let _ = self
            .post(
                "",
                broker,
                &json!({"jsonrpc": "2.0", "method": method}),
                Duration::from_secs(5),
            )
            .await;
    }

    pub(super) async fn request(
        &self,
        name: &str,
        broker: &Broker,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let resp = self.post(name, broker, &msg, timeout).await?;
        if method == "initialize"
            && let Some(s) = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            *self
                .session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s.to_string());
        }
        let status = resp.status();
        if status.as_u16() == 404 && method != "initialize" {
            // The session is gone; the supervisor re-initialises.
            *self
                .session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            return Err(UpstreamError::Unavailable(
                name.into(),
                "session expired".into(),
            ));
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(
                name.into(),
                format!("HTTP {status}"),
            ));
        }
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let mut body = Vec::new();
        let mut resp = resp;
        let read = async {
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|_| UpstreamError::Crashed(name.into()))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_MESSAGE {
                    return Err(UpstreamError::Garbage(name.into()));
                }
                if sse && find_response(&body, id).is_some() {
                    break;
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| UpstreamError::Timeout(name.into(), timeout.as_secs()))??;
        let msg = if sse {
            find_response(&body, id).ok_or_else(|| UpstreamError::Garbage(name.into()))?
        } else {
            serde_json::from_slice(&body).map_err(|_| UpstreamError::Garbage(name.into()))?
        };
        match (msg.get("result"), msg.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(e)) => Err(UpstreamError::Rpc {
                upstream: name.into(),
                code: e.get("code").and_then(Value::as_i64).unwrap_or(-32603),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .chars()
                    .take(1000)
                    .collect(),
                data: e.get("data").cloned(),
            }),
            (None, None) => Err(UpstreamError::Garbage(name.into())),
        }
    }

    /// One life of the HTTP upstream: initialise (retrying), then check it every 30 seconds.
    pub(super) async fn run(&self, up: &Arc<Upstream>, broker: &Arc<Broker>) -> String {
        *self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if let Err(e) = up.handshake(broker).await {
            return format!("handshake failed: {e}");
        }
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if let Err(e) = self
                .request(&up.name, broker, "ping", json!({}), Duration::from_secs(10))
                .await
            {
                return format!("ping failed: {e}");
            }
        }
    }
}

/// The JSON-RPC response with `id` among the `data:` events of an SSE body.
fn find_response(body: &[u8], id: u64) -> Option<Value> {
    let text = String::from_utf8_lossy(body);
    let mut data = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
            data.push('\n');
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(v) = serde_json::from_str::<Value>(data.trim())
                && v.get("id").and_then(Value::as_u64) == Some(id)
                && (v.get("result").is_some() || v.get("error").is_some())
            {
                return Some(v);
            }
            data.clear();
        }
    }
    None
}
