//! Agents identified by an external issuer (OIDC ID tokens, SPIFFE JWT-SVIDs): RS256, ES256 and
//! EdDSA tokens made by Python's `cryptography` and PyJWT, a JWKS served over HTTP (refetched on
//! an unknown `kid`) and read from a file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves the file at `path` on every request; counts requests.
async fn serve_file(path: PathBuf) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let path = path.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = tokio::fs::read(&path).await.unwrap_or_default();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    (url, hits)
}

#[tokio::test]
async fn rs256_es256_and_eddsa_issuers_identify_agents() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("mandate.toml");
    std::fs::write(&cfg, "[attestation]\njwks_min_refresh_seconds = 0\n").unwrap();
    let b = Broker::start_with(&["--config", cfg.to_str().unwrap()]).await;
    b.add_owner("platform").await;
    let jwks = b.data_dir().join("idp-jwks.json");
    std::fs::write(&jwks, "{\"keys\": []}").unwrap();
    let (url, hits) = serve_file(jwks.clone()).await;
    let issuer = "https://idp.example.org";
    let svid = "spiffe://example.org/agent/inventory";
    let out = b.cli(&[
        "agent",
        "add",
        svid,
        "--owner",
        "platform",
        "--tier",
        "low",
        "--envelope",
        "read:inventory",
        "--jwt-issuer",
        issuer,
        "--jwks",
        &url,
        "--subject",
        svid,
        "--claim",
        "team=blue",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.cli(&[
        "agent",
        "add",
        "oidc-agent",
        "--owner",
        "platform",
        "--tier",
        "low",
        "--envelope",
        "read:inventory",
        "--jwt-issuer",
        issuer,
        "--jwks",
        jwks.to_str().unwrap(),
        "--subject",
        "file-subject",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let python = std::env::var("MANDATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.test-deps/venv/bin/python")
        });
    assert!(
        python.exists(),
        "python test environment missing: run scripts/setup-test-deps"
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/external_issuer.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("MANDATE_URL", &b.url)
        .env("JWKS_PATH", &jwks)
        .env("ISSUER", issuer)
        .env("SVID_AGENT", svid)
        .env("FILE_AGENT", "oidc-agent")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "external issuer check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tasks"].as_object().unwrap().len(), 3);
    // Fetched once, then again for the unknown kid (twice: before and after publication).
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "jwks fetched {} times",
        hits.load(Ordering::SeqCst)
    );
    let failed = b.audit_kind("attestation_failed");
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(failed.iter().any(|e| {
        e["reason"]
            .as_str()
            .unwrap()
            .contains("claim `team` does not match")
    }));
}
