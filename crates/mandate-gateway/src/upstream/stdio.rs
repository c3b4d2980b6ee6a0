//! MCP over stdio: a child process speaking newline-delimited JSON-RPC.

use std::collections::HashMap;
use std::process::Stdio as PipeMode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mandate_broker::Broker;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::oneshot;

use super::{MAX_MESSAGE, Upstream, UpstreamError};

type Waiter = oneshot::Sender<Result<Value, UpstreamError>>;

/// Environment variables a started upstream inherits from the broker.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"];

/// The live connection to the current child process.
struct Conn {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Mutex<HashMap<u64, Waiter>>,
}

impl Conn {
    fn fail_all(&self, err: &UpstreamError) {
        let waiters: Vec<Waiter> = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in waiters {
            let _ = w.send(Err(err.clone()));
        }
    }

    async fn write(&self, msg: &Value) -> std::io::Result<()> {
        let mut line = msg.to_string();
        line.push('\n');
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    }
}

/// The stdio transport of one upstream.
pub(super) struct Stdio {
    conn: Mutex<Option<Arc<Conn>>>,
    next: AtomicU64,
}

/// Reads one line of at most `MAX_MESSAGE` bytes into `buf`. `None` at end of input; a longer
/// line is skipped whole and reported as `Some(Err(()))`.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> Option<Result<(), ()>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = match r.fill_buf().await {
            Ok(b) => b,
            Err(_) => return None,
        };
        if available.is_empty() {
            return if any {
                Some(if too_long { Err(()) } else { Ok(()) })
            } else {
                None
            };
        }
        any = true;
        let (take, consume, newline) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i, i + 1, true),
            None => (available.len(), available.len(), false),
        };
        if buf.len() + take > MAX_MESSAGE {
            too_long = true;
            buf.clear();
        } else if !too_long {
            buf.extend_from_slice(available.get(..take).unwrap_or(&[]));
        }
        r.consume(consume);
        if newline {
            return Some(if too_long { Err(()) } else { Ok(()) });
        }
    }
}

impl Stdio {
    pub(super) fn new() -> Self {
        Stdio {
            conn: Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    fn conn(&self) -> Option<Arc<Conn>> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) async fn request(
        &self,
        name: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, UpstreamError> {
        let conn = self
            .conn()
            .ok_or_else(|| UpstreamError::Unavailable(name.into(), "not running".into()))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = conn.write(&msg).await {
            conn.pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            return Err(UpstreamError::Unavailable(name.into(), e.to_string()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(UpstreamError::Crashed(name.into())),
            Err(_) => {
                conn.pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id);
                Err(UpstreamError::Timeout(name.into(), timeout.as_secs()))
            }
        }
    }

    pub(super) async fn notify(&self, method: &str) {
        if let Some(conn) = self.conn() {
            let _ = conn
                .write(&json!({"jsonrpc": "2.0", "method": method}))
                .await;
        }
    }

    /// Runs one life of the child: start, handshake, serve until it exits (or its secrets
    /// change). Returns why it ended.
    pub(super) async fn run(
        &self,
        up: &Arc<Upstream>,
        broker: &Arc<Broker>,
        changes: &mut tokio::sync::watch::Receiver<u64>,
    ) -> String {
        let cfg = up.config();
        let Some(program) = cfg.command.clone() else {
            return "no command".into();
        };
        let mut env = Vec::new();
        for (k, t) in &cfg.env {
            match t.resolve(broker).await {
                Ok(v) => env.push((k.clone(), v)),
                Err(e) => return format!("environment `{k}`: {e}"),
            }
        }
        let mut cmd = Command::new(&program);
        // The child gets a clean environment: never the broker's own (which may hold its
        // key-encryption key or tokens), only a few neutral variables and what is configured.
        cmd.env_clear();
        for k in INHERITED_ENV {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        cmd.args(&cfg.args)
            .stdin(PipeMode::piped())
            .stdout(PipeMode::piped())
            .stderr(PipeMode::piped())
            .kill_on_drop(true);
        for (k, v) in &env {
            cmd.env(k, v.expose());
        }
        if let Some(dir) = &cfg.cwd {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return format!("cannot start `{program}`: {e}"),
        };
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return "no pipes to the child".into();
        };
        let conn = Arc::new(Conn {
            stdin: tokio::sync::Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
        });
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        let name = up.name.clone();
        let reader_conn = conn.clone();
        let reader_up = up.clone();
        let reader_broker = broker.clone();
        let mut reader = tokio::spawn(async move {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            let mut garbage = 0u64;
            while let Some(line) = read_line(&mut r, &mut buf).await {
                let parsed: Option<Value> = match line {
                    Ok(()) if buf.iter().all(u8::is_ascii_whitespace) => continue,
                    Ok(()) => serde_json::from_slice(&buf).ok(),
                    Err(()) => None,
                };
                let Some(msg) = parsed.filter(Value::is_object) else {
                    garbage += 1;
                    metrics::counter!("mandate_gateway_upstream_garbage_total", "upstream" => name.clone()).increment(1);
                    if garbage <= 3 {
                        tracing::warn!(upstream = %name, "upstream wrote a line that is not JSON-RPC; ignored");
                    }
                    continue;
                };
                dispatch(&reader_conn, &reader_up, &reader_broker, msg).await;
            }
        });
        // Drain stderr so the child never blocks on it; its content stays out of our logs,
        // since it may echo its environment.
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr);
            let mut sink = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut sink).await {
                if n == 0 {
                    break;
                }
                sink.clear();
            }
        });
        let ended = tokio::select! {
            h = up.handshake(broker) => match h {
                Err(e) => Some(format!("handshake failed: {e}")),
                Ok(()) => None,
            },
            status = child.wait() => Some(format!("exited during start-up: {}", status.map(|s| s.to_string()).unwrap_or_default())),
        };
        let why = match ended {
            Some(why) => why,
            None => {
                let uses_secrets = cfg.env.values().any(|t| t.secrets().next().is_some());
                loop {
                    tokio::select! {
                        status = child.wait() => {
                            break format!("exited: {}", status.map(|s| s.to_string()).unwrap_or_default());
                        }
                        _ = &mut reader => {
                            let _ = child.start_kill();
                            break "closed its output".to_string();
                        }
                        changed = changes.changed() => {
                            if changed.is_err() {
                                continue;
                            }
                            if uses_secrets && env_changed(cfg, broker, &env).await {
                                let _ = child.start_kill();
                                let _ = child.wait().await;
                                break "restarted: a secret in its environment was rotated".to_string();
                            }
                        }
                    }
                }
            }
        };
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        reader.abort();
        conn.fail_all(&UpstreamError::Crashed(up.name.clone()));
        why
    }
}

async fn env_changed(
    cfg: &crate::config::McpUpstreamConfig,
    broker: &Broker,
    current: &[(String, mandate_crypto::SecretString)],
) -> bool {
    for (k, t) in &cfg.env {
        let now = t.resolve(broker).await.ok();
        let was = current.iter().find(|(ck, _)| ck == k).map(|(_, v)| v);
        match (now, was) {
            (Some(n), Some(w)) if n.ct_eq(w.expose()) => {}
            _ => return true,
        }
    }
    false
}

async fn dispatch(conn: &Conn, up: &Arc<Upstream>, broker: &Arc<Broker>, msg: Value) {
    let id = msg.get("id").cloned();
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    match (id, method) {
        (Some(id), None) => {
            let Some(n) = id.as_u64() else { return };
            let waiter = conn
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&n);
            if let Some(w) = waiter {
                let out = match (msg.get("result"), msg.get("error")) {
                    (Some(r), _) => Ok(r.clone()),
                    (None, Some(e)) => Err(UpstreamError::Rpc {
                        upstream: up.name.clone(),
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
                    (None, None) => Err(UpstreamError::Garbage(up.name.clone())),
                };
                let _ = w.send(out);
            }
        }
        (Some(id), Some(method)) => {
            // The gateway is the upstream's client and offers no sampling, roots or
            // elicitation; refusing at once keeps the upstream from waiting.
            let _ = conn
                .write(&json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": -32601,
                    "message": format!("`{method}` is not offered by the Mandate gateway"),
                }}))
                .await;
        }
        (None, Some(method)) if method.ends_with("/list_changed") && up.offer().ready => {
            let up = up.clone();
            let broker = broker.clone();
            tokio::spawn(async move {
                let caps = up.offer().capabilities;
                up.refresh(&broker, &caps).await;
            });
        }
        _ => {}
    }
}
