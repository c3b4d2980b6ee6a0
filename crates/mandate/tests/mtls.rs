//! Agents attested by X.509-SVID over mutual TLS, against a real `mandate serve` terminating TLS
//! with certificates made here (rcgen): two SPIFFE trust domains, each with its own CA. An agent
//! opens a task with its certificate alone (RFC 8705 `tls_client_auth`), the credential is bound
//! to the certificate (`cnf.x5t#S256`), and it is refused without it, with another agent's
//! certificate, at the decision endpoint and at the gateway. Expired certificates, a SPIFFE ID
//! of the wrong trust domain, and certificates without exactly one SPIFFE URI SAN fail the
//! handshake.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use base64::Engine as _;
use common::Broker;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ca {
        issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
    }
}

/// A leaf for `uris` (URI SANs), valid from `from_days` to `to_days` around now.
fn leaf(ca: &Ca, uris: &[&str], from_days: i64, to_days: i64) -> (String, String, Vec<u8>) {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "agent");
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from_days);
    p.not_after = now + time::Duration::days(to_days);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn server_cert(ca: &Ca) -> (String, String) {
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn client(root: &Ca, identity: Option<(&str, &str)>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.issuer.pem().as_bytes()).unwrap()]);
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// An upstream API that answers 200 to anything.
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = r#"{"ticket": 7}"#;
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    url
}

struct Setup {
    b: Broker,
    example: Ca,
    other: Ca,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let example = ca("example.org");
    let other = ca("other.org");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = server_cert(&example);
    let w = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cert_file = w("server.pem", &cert);
    let key_file = w("server.key", &key);
    let example_bundle = w("example.org.pem", &example.issuer.pem());
    let other_bundle = w("other.org.pem", &other.issuer.pem());
    let up = upstream().await;
    let cfg = w(
        "m.toml",
        &format!(
            r#"
[server.tls]
cert_file = "{cert_file}"
key_file = "{key_file}"
trust_domains = [
  {{ name = "example.org", bundle = "{example_bundle}" }},
  {{ name = "other.org", bundle = "{other_bundle}" }},
]

[[gateway.http]]
name = "tickets"
url = "{up}"
[[gateway.http.routes]]
method = "GET"
path = "/tickets/{{id}}"
action = "read"
resource = "tickets"
"#
        ),
    );
    let mut b = Broker::start_with(&["--config", &cfg]).await;
    assert!(b.url.starts_with("https://"), "{}", b.url);
    // The test's own calls trust the test CA (and present no certificate).
    b.http = client(&example, None);
    b.add_owner("ops").await;
    for (id, spiffe) in [
        ("builder", "spiffe://example.org/agent/builder"),
        ("reviewer", "spiffe://example.org/agent/reviewer"),
    ] {
        let (s, v) = b
            .admin_post(
                "/admin/v1/agents",
                json!({"id": id, "owner": "ops", "tier": "medium", "envelope": "read:tickets",
                       "attestations": [{"type": "x509_svid", "spiffe_id": spiffe}]}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    Setup {
        b,
        example,
        other,
        dir,
    }
}

async fn token(
    b: &Broker,
    c: &reqwest::Client,
    client_id: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("scope", "read:tickets"),
    ];
    if let Some(id) = client_id {
        form.push(("client_id", id));
    }
    let r = c
        .post(format!("{}/oauth/token", b.url))
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

async fn decide(c: &reqwest::Client, b: &Broker, token: &str) -> u16 {
    c.post(format!("{}/v1/decide", b.url))
        .bearer_auth(token)
        .json(&json!({"action": "read", "resource": {"type": "resource", "id": "tickets"}}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn gateway(c: &reqwest::Client, b: &Broker, token: &str) -> u16 {
    c.get(format!("{}/http/tickets/tickets/7", b.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_agent_opens_and_uses_a_certificate_bound_task() {
    let s = setup().await;
    let (cert, key, der) = leaf(&s.example, &["spiffe://example.org/agent/builder"], -1, 1);
    let agent = client(&s.example, Some((&cert, &key)));

    // The certificate is the client authentication; no assertion, no client secret.
    let (st, t) = token(&s.b, &agent, Some("builder")).await.unwrap();
    assert_eq!(st, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_string();
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der));
    assert_eq!(claims(&access)["cnf"]["x5t#S256"], thumb.as_str());
    assert_eq!(claims(&access)["sub"], "builder");
    // Without client_id the SPIFFE ID finds the agent.
    let (st, _) = token(&s.b, &agent, None).await.unwrap();
    assert_eq!(st, 200);

    // Used over the same certificate: allowed, directly and through the gateway.
    assert_eq!(decide(&agent, &s.b, &access).await, 200);
    assert_eq!(gateway(&agent, &s.b, &access).await, 200);

    // A copy is useless: without a certificate, or with another agent's valid one.
    let bare = client(&s.example, None);
    assert_eq!(decide(&bare, &s.b, &access).await, 401);
    assert_eq!(gateway(&bare, &s.b, &access).await, 401);
    let (rcert, rkey, _) = leaf(&s.example, &["spiffe://example.org/agent/reviewer"], -1, 1);
    let reviewer = client(&s.example, Some((&rcert, &rkey)));
    assert_eq!(decide(&reviewer, &s.b, &access).await, 401);
    assert_eq!(gateway(&reviewer, &s.b, &access).await, 401);
    // Nor may the reviewer's certificate open a task as the builder.
    let (st, v) = token(&s.b, &reviewer, Some("builder")).await.unwrap();
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"], "invalid_client");

    // A sub-task of a certificate-bound task is asked for over that certificate, or not at all.
    let child = s.b.add_agent("helper", "ops", "low", "read:tickets").await;
    let delegate = |via: reqwest::Client| {
        let actor = s.b.assertion(&child, "helper");
        let details =
            common::task_details("look up ticket 7", "support", &[("tickets", &["read"])], 60)
                .to_string();
        let (url, access) = (format!("{}/oauth/token", s.b.url), access.clone());
        async move {
            let r = via
                .post(url)
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", access.as_str()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("actor_token", actor.as_str()),
                    ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                    ("authorization_details", details.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (st, v) = delegate(bare.clone()).await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"], "invalid_client", "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("bound to a client certificate"),
        "{v}"
    );
    let (st, v) = delegate(agent.clone()).await;
    assert_eq!(st, 200, "{v}");

    // The task records the binding, and the CLI reaches the TLS listener given the CA.
    let task = claims(&access)["task_id"].as_str().unwrap().to_string();
    let (_, shown) = s.b.admin_get(&format!("/admin/v1/tasks/{task}")).await;
    assert_eq!(shown["x5t"], thumb.as_str(), "{shown}");
    let out = std::process::Command::new(common::bin())
        .arg("--data-dir")
        .arg(s.b.data_dir())
        .args([
            "--server", &s.b.url, "--json", "audit", "export", "--format", "jsonl",
        ])
        .env("MANDATE_CA_FILE", s.dir.path().join("example.org.pem"))
        .env_remove("MANDATE_TOKEN")
        .env_remove("MANDATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("\"certificate_bound\":true"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_fail_the_handshake_and_plain_clients_still_connect() {
    let s = setup().await;
    // Expired.
    let (c, k, _) = leaf(&s.example, &["spiffe://example.org/agent/builder"], -10, -1);
    let refused = token(&s.b, &client(&s.example, Some((&c, &k))), Some("builder"))
        .await
        .unwrap_err();
    assert!(
        refused.contains("AlertReceived(CertificateExpired)"),
        "{refused}"
    );
    // Issued by example.org's CA for a SPIFFE ID of other.org: a bundle vouches only for its own
    // trust domain.
    let (c, k, _) = leaf(&s.example, &["spiffe://other.org/agent/builder"], -1, 1);
    assert!(
        token(&s.b, &client(&s.example, Some((&c, &k))), None)
            .await
            .unwrap_err()
            .contains("AlertReceived")
    );
    // Two URI SANs; a URI that is not a SPIFFE ID; a SPIFFE ID without a path; no URI at all.
    for uris in [
        &[
            "spiffe://example.org/agent/builder",
            "spiffe://example.org/agent/reviewer",
        ][..],
        &["https://example.org/agent/builder"][..],
        &["spiffe://example.org"][..],
        &[][..],
    ] {
        let (c, k, _) = leaf(&s.example, uris, -1, 1);
        assert!(
            token(&s.b, &client(&s.example, Some((&c, &k))), Some("builder"))
                .await
                .unwrap_err()
                .contains("AlertReceived"),
            "{uris:?}"
        );
    }
    // Signed by a CA no trust domain names.
    let stranger = ca("stranger.org");
    let (c, k, _) = leaf(&stranger, &["spiffe://example.org/agent/builder"], -1, 1);
    assert!(
        token(&s.b, &client(&s.example, Some((&c, &k))), Some("builder"))
            .await
            .unwrap_err()
            .contains("AlertReceived")
    );
    // A valid SVID of other.org that no agent is registered for: TLS passes, the token does not.
    let (c, k, _) = leaf(&s.other, &["spiffe://other.org/agent/x"], -1, 1);
    let (st, v) = token(&s.b, &client(&s.example, Some((&c, &k))), None)
        .await
        .unwrap();
    assert_eq!(st, 401, "{v}");
    // A client with no certificate still connects and is asked for an assertion.
    let (st, v) = token(&s.b, &client(&s.example, None), Some("builder"))
        .await
        .unwrap();
    assert_eq!(st, 401, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("X.509-SVID"),
        "{v}"
    );
    // A SPIFFE ID that is not one is refused at registration.
    let (st, _) = s
        .b
        .admin_post(
            "/admin/v1/agents",
            json!({"id": "bad", "owner": "ops", "tier": "low", "envelope": "read:tickets",
                   "attestations": [{"type": "x509_svid", "spiffe_id": "spiffe://Example.org/x/../y"}]}),
        )
        .await;
    assert_eq!(st, 400);
}
