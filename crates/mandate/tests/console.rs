//! The web console's HTTP surface without a browser: sign-in checks, session and CSRF refusals,
//! size limits and security headers. The browser tests (tests/console) cover the pages in use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use common::Broker;
use reqwest::header;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn value_of<'a>(html: &'a str, name: &str) -> &'a str {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap() + name.len() + 15;
    let rest = &html[at..];
    &rest[..rest.find('"').unwrap()]
}

/// Signs in with `token`; returns the session cookie and a page's CSRF token.
async fn sign_in(b: &Broker, c: &reqwest::Client, token: &str) -> (String, String) {
    let r = c
        .get(format!("{}/console/login", b.url))
        .send()
        .await
        .unwrap();
    let login_cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = r.text().await.unwrap();
    let nonce = value_of(&html, "login_csrf").to_string();
    let r = c
        .post(format!("{}/console/login", b.url))
        .header(header::COOKIE, &login_cookie)
        .form(&[("token", token), ("login_csrf", &nonce)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("mandate_console="))
        .unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    let session = session.split(';').next().unwrap().to_string();
    let html = c
        .get(format!("{}/console/agents", b.url))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (session, value_of(&html, "csrf").to_string())
}

#[tokio::test]
async fn sign_in_needs_the_forms_nonce_and_a_valid_token() {
    let b = Broker::start().await;
    let c = client();
    // No nonce cookie: refused even with the right token.
    let r = c
        .post(format!("{}/console/login", b.url))
        .form(&[("token", b.admin_token.as_str()), ("login_csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|v| !v.to_str().unwrap().starts_with("mandate_console="))
    );
    // A malformed form: a clear 400.
    let r = c
        .post(format!("{}/console/login", b.url))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("nothing=here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (session, csrf) = sign_in(&b, &c, &b.admin_token).await;
    assert_eq!(csrf.len(), 43);
    let r = c
        .get(format!("{}/console/approvals", b.url))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn state_changes_need_the_session_csrf_token_and_origin() {
    let b = Broker::start().await;
    b.add_owner("ops").await;
    b.add_agent("bot", "ops", "low", "call:x").await;
    let c = client();
    let (session, csrf) = sign_in(&b, &c, &b.admin_token).await;
    let post = |path: &str, form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut r = c
            .post(format!("{}{path}", b.url))
            .header(header::COOKIE, &session)
            .form(&form);
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        r.send()
    };
    let r = post(
        "/console/agents/bot/suspend",
        vec![("csrf", "wrong".into())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(
        "/console/agents/bot/suspend",
        vec![("csrf", csrf.clone())],
        Some("http://evil.example"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let (_, agent) = b.admin_get("/admin/v1/agents/bot").await;
    assert_eq!(agent["status"], "active");
    // Too long a reason: 400, nothing done.
    let r = post(
        "/console/agents/bot/suspend",
        vec![("csrf", csrf.clone()), ("reason", "x".repeat(5000))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    // An unknown verb: 404.
    let r = post(
        "/console/agents/bot/explode",
        vec![("csrf", csrf.clone())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    // The right token from the console's origin: suspended, and audited like the CLI's.
    let r = post(
        "/console/agents/bot/suspend",
        vec![("csrf", csrf.clone()), ("reason", "test".into())],
        Some("http://127.0.0.1:1"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403, "another port is another origin");
    let origin: &'static str = Box::leak(b.url.clone().into_boxed_str());
    let r = post(
        "/console/agents/bot/suspend",
        vec![("csrf", csrf.clone()), ("reason", "test".into())],
        Some(origin),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    let (_, agent) = b.admin_get("/admin/v1/agents/bot").await;
    assert_eq!(agent["status"], "suspended");
    // A decision on an approval that does not exist: the broker's 404, as a page.
    let r = post(
        "/console/approvals/apr_nope/grant",
        vec![("csrf", csrf.clone())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn without_a_session_pages_redirect_and_the_rest_is_401() {
    let b = Broker::start().await;
    let c = client();
    let r = c
        .get(format!("{}/console/tasks", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[header::LOCATION], "/console/login");
    for (path, cookie) in [
        ("/console/events", "mandate_console=forged".to_string()),
        (
            "/console/approvals/list",
            format!("mandate_console={}", "a".repeat(5000)),
        ),
    ] {
        let r = c
            .get(format!("{}{path}", b.url))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // A revoked token ends its console session at once.
    b.add_owner("ops").await;
    let token = b.owner_token("ops").await;
    let (session, _) = sign_in(&b, &c, &token).await;
    let (_, tokens) = b.admin_get("/admin/v1/owners/ops/tokens").await;
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    let (status, _) = b
        .admin_delete(&format!("/admin/v1/owners/ops/tokens/{id}"))
        .await;
    assert_eq!(status, 200);
    let r = c
        .get(format!("{}/console/agents", b.url))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}
