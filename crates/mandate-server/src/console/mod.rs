//! The web console at `/console`: people approve or deny requests, revoke tasks, suspend agents
//! (the kill switch), read a workflow's trace and see the policies in force.
//!
//! Pages are rendered on the server; one small script (embedded, like the stylesheet) counts
//! down time left and refreshes the live lists when `/console/events` (server-sent events) says
//! they changed. Every action calls the same broker method as its admin-API twin, so it is
//! audited and governed by the same policies.
//!
//! Sign-in exchanges a person's API token for a session (see [`session`]) held in a
//! `mandate_console` cookie: `HttpOnly`, `SameSite=Strict`, path `/console`, and `Secure` when the
//! issuer is `https`. Every state change needs the session's CSRF token in the form and, when
//! the browser sends an `Origin`, the issuer's origin. Every response carries a strict
//! Content-Security-Policy (no inline script or style, no framing).

mod html;
mod session;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mandate_broker::authcode::{AuthorizeError, AuthorizeRequest, CheckedAuthorize, Consent};
use mandate_broker::{AdminError, Principal};
use mandate_core::{AgentStatus, Task, TaskId, TaskState};
use mandate_crypto::SecretString;
use serde::Deserialize;

use crate::AppState;
use html::{Viewer, csrf_field, esc, esc_cut, page};
use session::Credential;
pub(crate) use session::Sessions;

const COOKIE: &str = "mandate_console";
const LOGIN_COOKIE: &str = "mandate_console_login";
/// Most event streams open at once, over all sessions.
const MAX_STREAMS: usize = 256;
/// How often an event stream looks for changes.
const POLL: Duration = Duration::from_secs(1);
/// Longest comment or reason a form may carry (the broker keeps 512 characters).
const MAX_NOTE: usize = 2048;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's state beside the broker's.
#[derive(Default)]
pub(crate) struct Console {
    sessions: Sessions,
    streams: AtomicUsize,
    /// Sign-ins with the OpenID provider between redirect and callback, by `state`.
    oidc: std::sync::Mutex<std::collections::HashMap<String, OidcWait>>,
}

struct OidcWait {
    pending: mandate_broker::oidc::OidcPending,
    next: Option<String>,
    started: std::time::Instant,
}

/// Most sign-ins waiting for the provider at once, and how long one may take.
const MAX_OIDC_WAITING: usize = 1000;
const OIDC_WAIT: Duration = Duration::from_secs(600);
const OIDC_COOKIE: &str = "mandate_console_oidc";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route("/console/login", get(login_page).post(login))
        .route("/console/login/oidc", get(oidc_start))
        .route("/console/oidc/callback", get(oidc_callback))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/events", get(events))
        .route("/console/approvals", get(approvals_page))
        .route("/console/approvals/list", get(approvals_fragment))
        .route("/console/approvals/{id}/{verdict}", post(decide_approval))
        .route("/console/tasks", get(tasks_page))
        .route("/console/tasks/list", get(tasks_fragment))
        .route("/console/tasks/{id}", get(task_page))
        .route("/console/tasks/{id}/revoke", post(revoke_task))
        .route("/console/agents", get(agents_page))
        .route("/console/agents/{id}/{verb}", post(agent_action))
        .route("/console/policies", get(policies_page))
        .route("/console/policies/reload", post(reload_policies))
        .route(
            "/console/authorize",
            get(authorize_page).post(authorize_decide),
        )
        .layer(axum::middleware::map_response(secure_headers))
}

/// Headers on every console response: the CSP, no sniffing, no framing, no caching, no referrer to other sites (`no-referrer` would make browsers send `Origin: null`).
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/console.js"),
    )
        .into_response()
}

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `; Secure` when the console is served over https.
fn secure_attr(s: &AppState) -> &'static str {
    if s.broker.config().issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// Whether a state-changing request comes from the console's own pages: a browser's `Origin`
/// must be the issuer's (on loopback, any loopback origin on the same port).
fn same_origin(s: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Browsers send Origin on every POST; a request without one is not a cross-site
        // form post from a current browser, and still needs the CSRF token.
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let issuer = s.broker.config().issuer.trim_end_matches('/');
    let (Ok(o), Ok(i)) = (url::Url::parse(origin), url::Url::parse(issuer)) else {
        return false;
    };
    if o.origin() == i.origin() {
        return true;
    }
    let loopback = |u: &url::Url| match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    loopback(&o)
        && loopback(&i)
        && o.scheme() == i.scheme()
        && o.port_or_known_default() == i.port_or_known_default()
}

/// The signed-in person of a console request. Without a live session, pages redirect to the
/// sign-in page and other requests get 401.
struct User {
    principal: Principal,
    csrf: String,
}

impl User {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            name: self.principal_name(),
            role: match self.principal {
                Principal::Admin { .. } => "admin",
                Principal::Owner { .. } => "owner",
            },
            csrf: &self.csrf,
        }
    }

    fn principal_name(&self) -> &str {
        match &self.principal {
            Principal::Admin { name, .. } => name,
            Principal::Owner { owner, .. } => owner.as_str(),
        }
    }

    /// The refusal of a state change whose form lacks this session's CSRF token or that comes
    /// from another origin; `None` when it may go on.
    fn refusal(&self, s: &AppState, headers: &HeaderMap, csrf: &str) -> Option<Response> {
        if same_origin(s, headers) && mandate_crypto::secret::ct_eq(csrf, &self.csrf) {
            None
        } else {
            Some(message_page(
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form did not come from this console session (CSRF check failed). \
                 Reload the page and try again.",
                Some(self),
            ))
        }
    }
}

/// The form of every state change: the session's CSRF token, and a comment or reason where the
/// action takes one.
#[derive(Deserialize)]
struct ChangeForm {
    csrf: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    reason: String,
}

impl User {
    /// A state change's form, parsed, from this session and the console's origin, its texts
    /// within [`MAX_NOTE`]; or the page refusing it.
    fn accept(
        &self,
        s: &AppState,
        headers: &HeaderMap,
        form: Result<Form<ChangeForm>, FormRejection>,
    ) -> Result<ChangeForm, Box<Response>> {
        let Form(f) = form.map_err(|e| Box::new(bad_form(&e, Some(self))))?;
        if let Some(r) = self.refusal(s, headers, &f.csrf) {
            return Err(Box::new(r));
        }
        if f.note.len() > MAX_NOTE || f.reason.len() > MAX_NOTE {
            return Err(Box::new(message_page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The comment or reason is too long.",
                Some(self),
            )));
        }
        Ok(f)
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Response> {
        let refused = || {
            // Pages send the browser to sign-in; fragments and the event stream, fetched by
            // the script, get a status it can act on.
            let path = parts.uri.path();
            if parts.method == axum::http::Method::GET
                && !path.ends_with("/list")
                && path != "/console/events"
            {
                Redirect::to("/console/login").into_response()
            } else {
                (StatusCode::UNAUTHORIZED, "sign in again at /console/login").into_response()
            }
        };
        let Some(id) = cookie(&parts.headers, COOKIE) else {
            return Err(refused());
        };
        let Some((cred, csrf)) = s.console.sessions.get(id) else {
            return Err(refused());
        };
        match authenticate(s, &cred).await {
            Ok(principal) => Ok(User { principal, csrf }),
            Err(_) => {
                // The token was revoked or expired, or the owner removed: the session ends.
                s.console.sessions.remove(id);
                Err(refused())
            }
        }
    }
}

/// The person behind a session's credential, checked now.
async fn authenticate(s: &AppState, cred: &Credential) -> Result<Principal, AdminError> {
    match cred {
        Credential::Token(t) => s.broker.authenticate_person(Some(t.expose())).await,
        Credential::Person(p) => s.broker.recheck_person(p).map(|()| p.clone()),
    }
}

fn admin_status(e: &AdminError) -> StatusCode {
    crate::errors::admin_status(e)
}

fn message_page(status: StatusCode, title: &str, text: &str, user: Option<&User>) -> Response {
    let viewer = user.map(User::viewer);
    let body = format!(
        "<p class=\"message\">{}</p><p><a href=\"/console\">Back to the console</a></p>",
        esc(text)
    );
    html_response(status, page(title, "", viewer.as_ref(), &body))
}

fn error_page(e: &AdminError, user: &User) -> Response {
    message_page(admin_status(e), "Refused", &e.to_string(), Some(user))
}

fn bad_form(e: &FormRejection, user: Option<&User>) -> Response {
    message_page(StatusCode::BAD_REQUEST, "Bad request", &e.body_text(), user)
}

// ---------------------------------------------------------------------------------------------
// Sign-in

#[derive(Deserialize, Default)]
struct LoginQuery {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    next: Option<String>,
}

/// Where sign-in may continue to: only the consent screen (no open redirect).
fn safe_next(next: Option<&str>) -> Option<&str> {
    next.filter(|n| n.starts_with("/console/authorize?") && n.len() <= 8 * 1024)
}

fn login_form(
    s: &AppState,
    status: StatusCode,
    error: Option<&str>,
    next: Option<&str>,
) -> Response {
    let nonce = session::random_token();
    let mut body = String::new();
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/login\" class=\"login\">\
         <input type=\"hidden\" name=\"login_csrf\" value=\"{nonce}\">{}\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required \
           maxlength=\"256\" placeholder=\"mnd_…\">\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">An owner's token comes from <code>mandate owner token OWNER</code>; \
         the administrator's from <code>admin.token</code> in the data directory.</p>",
        safe_next(next)
            .map(|n| format!("<input type=\"hidden\" name=\"next\" value=\"{}\">", esc(n)))
            .unwrap_or_default()
    );
    if let Some(issuer) = s.broker.oidc_issuer() {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", safe_next(next).unwrap_or(""))
            .finish();
        let _ = write!(
            body,
            "<p class=\"oidc\"><a class=\"button\" href=\"/console/login/oidc?{}\">Sign in with {}</a></p>",
            esc(&q),
            esc(issuer)
        );
    }
    let mut r = html_response(status, page("Sign in", "", None, &body));
    let c = format!(
        "{LOGIN_COOKIE}={nonce}; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=600{}",
        secure_attr(s)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(
    State(s): State<AppState>,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let error = q.error.as_deref().map(|e| match e {
        "expired" => "Your session ended; sign in again.",
        _ => "Sign in again.",
    });
    login_form(&s, StatusCode::OK, error, q.next.as_deref())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    login_csrf: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => return bad_form(&e, None),
    };
    // Login CSRF: the form's nonce must match the cookie set with the form.
    let nonce_ok = cookie(&headers, LOGIN_COOKIE)
        .is_some_and(|c| mandate_crypto::secret::ct_eq(c, &f.login_csrf));
    if !nonce_ok || !same_origin(&s, &headers) {
        return login_form(
            &s,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or came from another site; try again."),
            f.next.as_deref(),
        );
    }
    let token = f.token.trim();
    if token.is_empty() || token.len() > 256 {
        return login_form(
            &s,
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid."),
            f.next.as_deref(),
        );
    }
    let principal = match s.broker.authenticate_person(Some(token)).await {
        Ok(p) => p,
        Err(_) => {
            return login_form(
                &s,
                StatusCode::UNAUTHORIZED,
                Some("That token is not valid."),
                f.next.as_deref(),
            );
        }
    };
    let Some(id) = s
        .console
        .sessions
        .create(Credential::Token(SecretString::new(token.to_string())))
    else {
        return login_form(
            &s,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Too many console sessions are open; try again later."),
            f.next.as_deref(),
        );
    };
    tracing::info!(person = %principal.name(), "console sign-in");
    let mut r =
        Redirect::to(safe_next(f.next.as_deref()).unwrap_or("/console/approvals")).into_response();
    let c = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::ABSOLUTE.as_secs(),
        secure_attr(&s)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    let clear = format!("{LOGIN_COOKIE}=; Path=/console/login; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn logout(
    State(s): State<AppState>,
    user: User,
    headers: HeaderMap,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> Response {
    if let Err(r) = user.accept(&s, &headers, form) {
        return *r;
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        s.console.sessions.remove(id);
    }
    let mut r = Redirect::to("/console/login").into_response();
    let c = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Sign-in with the OpenID provider

async fn oidc_start(
    State(s): State<AppState>,
    q: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let redirect_uri = format!("{}/console/oidc/callback", s.broker.config().issuer);
    let (url, pending) = match s.broker.oidc_begin(&redirect_uri).await {
        Ok(x) => x,
        Err(e) => {
            return message_page(
                admin_status(&e),
                "Sign-in unavailable",
                &e.to_string(),
                None,
            );
        }
    };
    let state = pending.state.clone();
    {
        let mut m = s
            .console
            .oidc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, w| w.started.elapsed() < OIDC_WAIT);
        if m.len() >= MAX_OIDC_WAITING {
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                "Too many sign-ins are in progress; try again shortly.",
                None,
            );
        }
        m.insert(
            state.clone(),
            OidcWait {
                pending,
                next: safe_next(q.next.as_deref()).map(str::to_string),
                started: std::time::Instant::now(),
            },
        );
    }
    let mut r = Redirect::to(&url).into_response();
    // Lax: the provider sends the browser back with a cross-site redirect. The cookie ties the
    // callback to this browser (no sign-in of someone else's code into this session).
    let c = format!(
        "{OIDC_COOKIE}={state}; Path=/console/oidc; HttpOnly; SameSite=Lax; Max-Age={}{}",
        OIDC_WAIT.as_secs(),
        secure_attr(&s)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize, Default)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

async fn oidc_callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let fail = |status: StatusCode, text: &str| {
        let mut r = login_form(&s, status, Some(text), None);
        let clear = format!("{OIDC_COOKIE}=; Path=/console/oidc; Max-Age=0");
        if let Ok(v) = HeaderValue::from_str(&clear) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    };
    let Ok(Query(q)) = q else {
        return fail(
            StatusCode::BAD_REQUEST,
            "The sign-in provider's answer is malformed.",
        );
    };
    let state = q.state.unwrap_or_default();
    let bound =
        cookie(&headers, OIDC_COOKIE).is_some_and(|c| mandate_crypto::secret::ct_eq(c, &state));
    let wait = s
        .console
        .oidc
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&state);
    let (Some(wait), true) = (wait, bound) else {
        return fail(
            StatusCode::FORBIDDEN,
            "This sign-in was not started in this browser, or it expired; try again.",
        );
    };
    if wait.started.elapsed() >= OIDC_WAIT {
        return fail(StatusCode::FORBIDDEN, "This sign-in expired; try again.");
    }
    if let Some(e) = q.error {
        let d = q.error_description.unwrap_or_default();
        return fail(
            StatusCode::UNAUTHORIZED,
            &format!(
                "The sign-in provider refused: {} {}",
                e.chars().take(64).collect::<String>(),
                d.chars().take(200).collect::<String>()
            ),
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "The sign-in provider sent no code.",
        );
    };
    let principal = match s.broker.oidc_complete(&wait.pending, &code).await {
        Ok(p) => p,
        Err(e) => return fail(admin_status(&e), &e.to_string()),
    };
    tracing::info!(person = %principal.name(), "console sign-in with the OpenID provider");
    let Some(id) = s.console.sessions.create(Credential::Person(principal)) else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many console sessions are open; try again later.",
        );
    };
    let next = wait.next.unwrap_or_else(|| "/console/approvals".into());
    // A page of this origin moves on, so the SameSite=Strict session cookie goes with the next
    // request (a redirect chain that began at the provider would not carry it).
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={}\"><title>Signed in · Mandate</title></head>\
         <body><p>Signed in. <a href=\"{}\">Continue</a></p></body></html>",
        esc(&next),
        esc(&next)
    );
    let mut r = html_response(StatusCode::OK, body);
    for c in [
        format!(
            "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
            session::ABSOLUTE.as_secs(),
            secure_attr(&s)
        ),
        format!("{OIDC_COOKIE}=; Path=/console/oidc; Max-Age=0"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Live updates

/// What the live lists show, reduced to what decides whether they must be redrawn.
async fn fingerprints(s: &AppState, p: &Principal) -> (String, String) {
    let mut a = String::new();
    if let Ok(list) = s.broker.approvals(p, Some("pending")).await {
        for x in list {
            let _ = write!(a, "{}:{};", x.id, x.state.as_str());
        }
    }
    let mut t = String::new();
    if let Ok(list) = s.broker.tasks(p, None, Some("active"), Some(200)).await {
        for x in list {
            let _ = write!(t, "{}:{}:{};", x.id, x.state, x.flow.calls);
        }
    }
    (a, t)
}

/// `text/event-stream`: an `approvals` event when the pending approvals change, a `tasks`
/// event when the active tasks do. It reads the store, so changes made through another replica
/// show too; it ends when the session does.
async fn events(State(s): State<AppState>, user: User, headers: HeaderMap) -> Response {
    if s.console.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        s.console.streams.fetch_sub(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open",
        )
            .into_response();
    }
    let session = cookie(&headers, COOKIE).unwrap_or_default().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    let st = s.clone();
    tokio::spawn(async move {
        let mut last = fingerprints(&st, &user.principal).await;
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                () = tx.closed() => break,
                _ = tick.tick() => {}
            }
            let Some((cred, _)) = st.console.sessions.get(&session) else {
                break;
            };
            if authenticate(&st, &cred).await.is_err() {
                break;
            }
            let now = fingerprints(&st, &user.principal).await;
            if now.0 != last.0
                && tx
                    .send(Ok(Event::default().event("approvals").data("changed")))
                    .await
                    .is_err()
            {
                break;
            }
            if now.1 != last.1
                && tx
                    .send(Ok(Event::default().event("tasks").data("changed")))
                    .await
                    .is_err()
            {
                break;
            }
            last = now;
        }
        st.console.streams.fetch_sub(1, Ordering::SeqCst);
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Approvals

#[derive(Deserialize, Default)]
struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

fn flash(done: Option<&str>) -> String {
    match done {
        Some(d) if d.len() <= 200 => format!("<p class=\"flash\" role=\"status\">{}</p>", esc(d)),
        _ => String::new(),
    }
}

async fn pending_list(s: &AppState, user: &User) -> Result<String, AdminError> {
    let now = s.broker.now();
    let pending = s.broker.approvals(&user.principal, Some("pending")).await?;
    let pending: Vec<_> = pending.into_iter().filter(|a| !a.expired(now)).collect();
    if pending.is_empty() {
        return Ok("<p class=\"empty\">No approval requests are waiting.</p>".into());
    }
    let mut out = String::new();
    for a in pending {
        let intent = s
            .broker
            .task(&user.principal, a.task.as_str())
            .await
            .map(|t| t.intent.text)
            .unwrap_or_default();
        let id = esc(&a.id);
        let _ = write!(
            out,
            "<article class=\"approval\" id=\"{id}\" data-approval=\"{id}\">\
             <h2><span class=\"action\">{}</span> on <span class=\"target\">{} {}</span></h2>\
             <dl><dt>Agent</dt><dd>{} ({} tier)</dd>\
             <dt>Task</dt><dd><a href=\"/console/tasks/{}\">{}</a></dd>\
             <dt>Intent</dt><dd class=\"intent\">{}</dd>\
             <dt>Why approval</dt><dd class=\"reason\">{}</dd>\
             <dt>Policies</dt><dd>{}</dd>\
             <dt>Time left</dt><dd>{}</dd></dl>\
             <h3>Arguments</h3>{}\
             <form method=\"post\" action=\"/console/approvals/{id}/grant\" class=\"decide\">{}\
             <label>Comment <input name=\"note\" maxlength=\"512\"></label>\
             <button type=\"submit\" class=\"grant\">Approve</button>\
             <button type=\"submit\" class=\"deny\" formaction=\"/console/approvals/{id}/deny\">Deny</button>\
             </form></article>",
            esc(&a.action),
            esc(&a.target_kind),
            esc(&a.target),
            esc(a.agent.as_str()),
            esc(a.tier.as_str()),
            esc(a.task.as_str()),
            esc(a.task.as_str()),
            esc_cut(&intent, 600),
            esc(&a.reason),
            esc(&a.policies.join(", ")),
            html::time_left(a.expires_at, now),
            html::json_block(&a.arguments),
            csrf_field(&user.csrf),
        );
    }
    Ok(out)
}

async fn approvals_page(
    State(s): State<AppState>,
    user: User,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let list = match pending_list(&s, &user).await {
        Ok(l) => l,
        Err(e) => return error_page(&e, &user),
    };
    let done = q.ok().and_then(|Query(q)| q.done);
    let mut body = flash(done.as_deref());
    let _ = write!(
        body,
        "<section id=\"pending\" data-live=\"/console/approvals/list\" data-topic=\"approvals\">{list}</section>"
    );
    // The latest decided requests, for context.
    if let Ok(all) = s.broker.approvals(&user.principal, None).await {
        let decided: Vec<_> = all
            .into_iter()
            .filter(|a| a.state.as_str() != "pending")
            .take(20)
            .collect();
        if !decided.is_empty() {
            body.push_str(
                "<h2>Recently decided</h2><table><thead><tr><th>Request</th><th>Agent</th>\
                 <th>Action</th><th>State</th><th>By</th><th>Comment</th></tr></thead><tbody>",
            );
            for a in decided {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{} {}</td><td class=\"state\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&a.id),
                    esc(a.agent.as_str()),
                    esc(&a.action),
                    esc(&a.target),
                    esc(a.state.as_str()),
                    esc(a.decided_by.as_deref().unwrap_or("-")),
                    esc(a.note.as_deref().unwrap_or("")),
                );
            }
            body.push_str("</tbody></table>");
        }
    }
    html_response(
        StatusCode::OK,
        page(
            "Approvals",
            "/console/approvals",
            Some(&user.viewer()),
            &body,
        ),
    )
}

async fn approvals_fragment(State(s): State<AppState>, user: User) -> Response {
    match pending_list(&s, &user).await {
        Ok(l) => html_response(StatusCode::OK, l),
        Err(e) => (admin_status(&e), e.to_string()).into_response(),
    }
}

fn note(n: &str) -> Option<String> {
    let n = n.trim();
    (!n.is_empty()).then(|| n.to_string())
}

async fn decide_approval(
    State(s): State<AppState>,
    user: User,
    headers: HeaderMap,
    Path((id, verdict)): Path<(String, String)>,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> Response {
    let f = match user.accept(&s, &headers, form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let grant = match verdict.as_str() {
        "grant" => true,
        "deny" => false,
        _ => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such action.",
                Some(&user),
            );
        }
    };
    match s
        .broker
        .decide_approval(&user.principal, &id, grant, note(&f.note))
        .await
    {
        Ok(a) => {
            let msg = format!(
                "Request {} {}.",
                a.id,
                if grant { "approved" } else { "denied" }
            );
            see_other("/console/approvals", &msg)
        }
        Err(e) => error_page(&e, &user),
    }
}

/// 303 to `path` with a message shown once.
fn see_other(path: &str, msg: &str) -> Response {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("done", msg)
        .finish();
    Redirect::to(&format!("{path}?{q}")).into_response()
}

// ---------------------------------------------------------------------------------------------
// Tasks

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TasksQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    done: Option<String>,
}

fn labels(t: &Task) -> String {
    let mut l: Vec<String> = t
        .flow
        .data_read
        .iter()
        .map(|d| format!("read {d}"))
        .collect();
    l.extend(t.flow.egress.iter().map(|e| format!("egress {e}")));
    if l.is_empty() {
        "-".into()
    } else {
        l.join(", ")
    }
}

async fn task_rows(s: &AppState, user: &User, state: Option<&str>) -> Result<String, AdminError> {
    let now = s.broker.now();
    let tasks = s
        .broker
        .tasks(&user.principal, None, state, Some(200))
        .await?;
    if tasks.is_empty() {
        return Ok("<p class=\"empty\">No tasks.</p>".into());
    }
    let mut out = String::from(
        "<table><thead><tr><th>Task</th><th>Agent</th><th>Intent</th><th>State</th>\
         <th>Scope</th><th>Flow</th><th>Time left</th><th></th></tr></thead><tbody>",
    );
    for t in tasks {
        let id = esc(t.id.as_str());
        let action = if t.state == TaskState::Active {
            format!(
                "<form method=\"post\" action=\"/console/tasks/{id}/revoke\" class=\"inline\">{}\
                 <button type=\"submit\" class=\"deny\">Revoke</button></form>",
                csrf_field(&user.csrf)
            )
        } else {
            String::new()
        };
        let ttl = if t.state == TaskState::Active {
            html::time_left(t.expires_at, now)
        } else {
            "-".into()
        };
        let _ = write!(
            out,
            "<tr data-task=\"{id}\"><td><a href=\"/console/tasks/{id}\">{id}</a></td><td>{}</td>\
             <td class=\"intent\">{}</td><td class=\"state\">{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{ttl}</td><td>{action}</td></tr>",
            esc(t.agent.as_str()),
            esc_cut(&t.intent.text, 120),
            esc(&t.state.to_string()),
            esc_cut(&t.scope.to_string(), 200),
            esc(&labels(&t)),
        );
    }
    out.push_str("</tbody></table>");
    Ok(out)
}

fn task_state_filter(q: &TasksQuery) -> Option<&str> {
    match q.state.as_deref() {
        None | Some("") => Some("active"),
        Some("all") => None,
        Some(s) => Some(s),
    }
}

async fn tasks_page(
    State(s): State<AppState>,
    user: User,
    q: Result<Query<TasksQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return message_page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &e.body_text(),
                Some(&user),
            );
        }
    };
    let state = task_state_filter(&q);
    let rows = match task_rows(&s, &user, state).await {
        Ok(r) => r,
        Err(e) => return error_page(&e, &user),
    };
    let mut body = flash(q.done.as_deref());
    body.push_str("<p class=\"filters\">Show: ");
    for (v, label) in [
        ("active", "active"),
        ("completed", "completed"),
        ("revoked", "revoked"),
        ("expired", "expired"),
        ("all", "all"),
    ] {
        let cur = if state.unwrap_or("all") == v {
            " class=\"current\""
        } else {
            ""
        };
        let _ = write!(
            body,
            "<a href=\"/console/tasks?state={v}\"{cur}>{label}</a> "
        );
    }
    body.push_str("</p>");
    // Only the active list updates itself.
    if state == Some("active") {
        let _ = write!(
            body,
            "<section id=\"tasks\" data-live=\"/console/tasks/list\" data-topic=\"tasks\">{rows}</section>"
        );
    } else {
        let _ = write!(body, "<section id=\"tasks\">{rows}</section>");
    }
    html_response(
        StatusCode::OK,
        page("Tasks", "/console/tasks", Some(&user.viewer()), &body),
    )
}

async fn tasks_fragment(State(s): State<AppState>, user: User) -> Response {
    match task_rows(&s, &user, Some("active")).await {
        Ok(r) => html_response(StatusCode::OK, r),
        Err(e) => (admin_status(&e), e.to_string()).into_response(),
    }
}

async fn revoke_task(
    State(s): State<AppState>,
    user: User,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> Response {
    let f = match user.accept(&s, &headers, form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match s
        .broker
        .revoke_task(&user.principal, &id, note(&f.reason))
        .await
    {
        Ok(t) => see_other("/console/tasks", &format!("Task {} revoked.", t.id)),
        Err(e) => error_page(&e, &user),
    }
}

/// One task and its workflow, as `mandate audit trace` shows it.
async fn task_page(State(s): State<AppState>, user: User, Path(id): Path<String>) -> Response {
    // The same visibility rule as the admin API: admins see every task, owners their agents'.
    let t = match s.broker.task(&user.principal, &id).await {
        Ok(t) => t,
        Err(e) => return error_page(&e, &user),
    };
    let keep = |x: &Task| match &user.principal {
        Principal::Admin { .. } => true,
        Principal::Owner { owner, .. } => x.owner.as_ref() == Some(owner),
    };
    let w = match mandate_store::workflow(s.broker.store(), &t.id, keep).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            return error_page(
                &AdminError::NotFound(format!("task `{}` does not exist", t.id)),
                &user,
            );
        }
        Err(e) => return error_page(&AdminError::Unavailable(e.to_string()), &user),
    };
    let now = s.broker.now();
    let mut body = String::new();
    let _ = write!(
        body,
        "<dl class=\"task\"><dt>Agent</dt><dd>{}</dd><dt>Owner</dt><dd>{}</dd>\
         <dt>State</dt><dd class=\"state\">{}</dd><dt>Intent</dt><dd class=\"intent\">{}</dd>\
         <dt>Scope</dt><dd><code>{}</code></dd><dt>Flow</dt><dd>{}</dd>\
         <dt>Opened</dt><dd>{}</dd><dt>Expires</dt><dd>{}{}</dd>{}</dl>",
        esc(t.agent.as_str()),
        esc(t.owner.as_ref().map_or("-", |o| o.as_str())),
        esc(&t.state.to_string()),
        esc_cut(&t.intent.text, 2000),
        esc(&t.scope.to_string()),
        esc(&labels(&t)),
        html::time(t.created_at),
        html::time(t.expires_at),
        if t.state == TaskState::Active {
            format!(" ({})", html::time_left(t.expires_at, now))
        } else {
            String::new()
        },
        t.end_reason
            .as_ref()
            .map(|r| format!("<dt>Ended because</dt><dd>{}</dd>", esc(r)))
            .unwrap_or_default(),
    );
    let _ = write!(
        body,
        "<h2>Workflow</h2><p>Root task {}: {} task{}, {} agent{}.</p>",
        esc(w.root.as_str()),
        w.tasks,
        if w.tasks == 1 { "" } else { "s" },
        w.agents,
        if w.agents == 1 { "" } else { "s" },
    );
    body.push_str("<div class=\"trace\">");
    for n in &w.tops {
        trace_node(&mut body, n, &t.id);
    }
    body.push_str("</div>");
    html_response(
        StatusCode::OK,
        page(
            &format!("Task {}", t.id),
            "/console/tasks",
            Some(&user.viewer()),
            &body,
        ),
    )
}

/// Most audit records shown per task of a trace.
const MAX_TRACE_STEPS: usize = 500;

fn trace_node(out: &mut String, n: &mandate_store::WorkflowNode, asked: &TaskId) {
    let t = &n.task;
    let cls = if &t.id == asked { " asked" } else { "" };
    let _ = write!(
        out,
        "<details open class=\"node{cls}\"><summary>task <a href=\"/console/tasks/{id}\">{id}</a> · \
         agent {} · <span class=\"state\">{}</span> · {}</summary><ol class=\"steps\">",
        esc(t.agent.as_str()),
        esc(&t.state.to_string()),
        esc_cut(&t.intent.text, 120),
        id = esc(t.id.as_str()),
    );
    for (r, e) in n.steps.iter().take(MAX_TRACE_STEPS) {
        let what = [e.action.as_deref(), e.resource.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            out,
            "<li class=\"step {}\"><span class=\"seq\">#{}</span> {} <b>{}</b> {} {}{}{}</li>",
            esc(e.decision.as_deref().unwrap_or("")),
            r.seq,
            html::time(e.time),
            esc(e.kind.as_str()),
            esc(&what),
            e.decision
                .as_deref()
                .map(|d| format!("→ <span class=\"decision\">{}</span>", esc(d)))
                .unwrap_or_default(),
            if e.policies.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"policies\">[{}]</span>",
                    esc(&e.policies.join(", "))
                )
            },
            e.reason
                .as_deref()
                .map(|r| format!(" <span class=\"reason\">{}</span>", esc_cut(r, 400)))
                .unwrap_or_default(),
        );
    }
    if n.steps.len() > MAX_TRACE_STEPS {
        let _ = write!(
            out,
            "<li>… {} more records (see <code>mandate audit trace</code>)</li>",
            n.steps.len() - MAX_TRACE_STEPS
        );
    }
    out.push_str("</ol>");
    for c in &n.children {
        trace_node(out, c, asked);
    }
    out.push_str("</details>");
}

// ---------------------------------------------------------------------------------------------
// Agents

async fn agents_page(
    State(s): State<AppState>,
    user: User,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let agents = match s.broker.agents(&user.principal, None).await {
        Ok(a) => a,
        Err(e) => return error_page(&e, &user),
    };
    let done = q.ok().and_then(|Query(q)| q.done);
    let mut body = flash(done.as_deref());
    if agents.is_empty() {
        body.push_str("<p class=\"empty\">No agents.</p>");
    } else {
        body.push_str(
            "<table><thead><tr><th>Agent</th><th>Owner</th><th>Tier</th><th>Status</th>\
             <th>Flags</th><th>Active tasks</th><th>Live leases</th><th>Envelope</th><th></th></tr></thead><tbody>",
        );
        for v in agents {
            let a = &v.agent;
            let id = esc(a.id.as_str());
            let control = if a.status == AgentStatus::Suspended {
                format!(
                    "<form method=\"post\" action=\"/console/agents/{id}/resume\" class=\"inline\">{}\
                     <button type=\"submit\">Resume</button></form>",
                    csrf_field(&user.csrf)
                )
            } else {
                format!(
                    "<form method=\"post\" action=\"/console/agents/{id}/suspend\" class=\"inline\">{}\
                     <input name=\"reason\" placeholder=\"reason\" maxlength=\"512\" aria-label=\"reason\">\
                     <button type=\"submit\" class=\"deny\">Suspend</button></form>",
                    csrf_field(&user.csrf)
                )
            };
            let _ = write!(
                body,
                "<tr data-agent=\"{id}\"><td>{id}</td><td>{}</td><td>{}</td><td class=\"status\">{}</td>\
                 <td>{}</td><td>{}</td><td class=\"leases\">{}</td><td><code>{}</code></td><td>{control}</td></tr>",
                esc(a.owner.as_ref().map_or("-", |o| o.as_str())),
                esc(a.tier.as_str()),
                if a.status == AgentStatus::Suspended {
                    "suspended"
                } else {
                    "active"
                },
                esc(&v.flags.join(", ")),
                v.active_tasks.len(),
                if v.leases.is_empty() {
                    "-".to_string()
                } else {
                    esc(&v
                        .leases
                        .iter()
                        .map(|l| format!("{} ({})", l.credential, l.kind))
                        .collect::<Vec<_>>()
                        .join(", "))
                },
                esc_cut(&a.envelope.to_string(), 200),
            );
        }
        body.push_str("</tbody></table>");
    }
    html_response(
        StatusCode::OK,
        page("Agents", "/console/agents", Some(&user.viewer()), &body),
    )
}

async fn agent_action(
    State(s): State<AppState>,
    user: User,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> Response {
    let f = match user.accept(&s, &headers, form) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let r = match verb.as_str() {
        "suspend" => s
            .broker
            .suspend_agent(&user.principal, &id, note(&f.reason))
            .await
            .map(|v| {
                format!(
                    "Agent {} suspended; its active tasks are revoked.",
                    v.agent.id
                )
            }),
        "resume" => s
            .broker
            .resume_agent(&user.principal, &id)
            .await
            .map(|v| format!("Agent {} resumed.", v.agent.id)),
        _ => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Not found",
                "No such action.",
                Some(&user),
            );
        }
    };
    match r {
        Ok(msg) => see_other("/console/agents", &msg),
        Err(e) => error_page(&e, &user),
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

async fn policies_page(
    State(s): State<AppState>,
    user: User,
    q: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let h = s.broker.health();
    let done = q.ok().and_then(|Query(q)| q.done);
    let mut body = flash(done.as_deref());
    let _ = write!(
        body,
        "<dl><dt>Policies in force</dt><dd>{}</dd><dt>Digest</dt><dd><code>{}</code></dd>\
         <dt>Directory</dt><dd><code>{}</code></dd></dl>",
        h.policies,
        esc(&h.policy_digest),
        esc(&s.broker.policy_dir().display().to_string()),
    );
    let files: BTreeSet<String> = std::fs::read_dir(s.broker.policy_dir())
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".cedar") || n.ends_with(".toml") || n.ends_with(".cedarschema")
                })
                .collect()
        })
        .unwrap_or_default();
    body.push_str("<h2>Files</h2><ul class=\"files\">");
    for f in files {
        let _ = write!(body, "<li><code>{}</code></li>", esc(&f));
    }
    body.push_str("</ul><h2>Last reload</h2>");
    match s.broker.last_policy_reload() {
        None => body
            .push_str("<p>None since the server started (the set above was loaded at start).</p>"),
        Some(r) => {
            let _ = write!(
                body,
                "<dl><dt>When</dt><dd>{}</dd><dt>By</dt><dd>{}</dd><dt>Result</dt>\
                 <dd class=\"{}\">{}</dd><dt>Tasks revoked by the change</dt><dd>{}</dd></dl>",
                html::time(r.at),
                esc(r.actor.as_deref().unwrap_or("file change or signal")),
                if r.loaded { "ok" } else { "error" },
                esc(&r.message),
                if r.revoked_tasks.is_empty() {
                    "none".to_string()
                } else {
                    esc(&r.revoked_tasks.join(", "))
                },
            );
        }
    }
    if matches!(user.principal, Principal::Admin { .. }) {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/console/policies/reload\">{}\
             <button type=\"submit\">Reload policies</button></form>",
            csrf_field(&user.csrf)
        );
    }
    html_response(
        StatusCode::OK,
        page("Policies", "/console/policies", Some(&user.viewer()), &body),
    )
}

async fn reload_policies(
    State(s): State<AppState>,
    user: User,
    headers: HeaderMap,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> Response {
    if let Err(r) = user.accept(&s, &headers, form) {
        return *r;
    }
    match s.broker.reload_policies_as(&user.principal).await {
        Ok(msg) => see_other("/console/policies", &msg),
        Err(e) => error_page(&e, &user),
    }
}

// ---------------------------------------------------------------------------------------------
// Consent for interactive MCP hosts (the authorization-code grant)

/// The authorization request's parameters, carried through the consent form.
const AUTHORIZE_PARAMS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "resource",
];

fn authorize_request(pairs: &[(String, String)]) -> Result<AuthorizeRequest, String> {
    let mut req = AuthorizeRequest::default();
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "response_type" => &mut req.response_type,
            "client_id" => &mut req.client_id,
            "redirect_uri" => &mut req.redirect_uri,
            "state" => &mut req.state,
            "code_challenge" => &mut req.code_challenge,
            "code_challenge_method" => &mut req.code_challenge_method,
            "scope" => &mut req.scope,
            "resource" => &mut req.resource,
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!("parameter `{k}` is repeated"));
        }
        *slot = Some(v.clone());
    }
    Ok(req)
}

/// The authorization request among `pairs` (other fields are ignored), checked; or the page
/// or redirect that refuses it.
fn checked_authorize(
    s: &AppState,
    user: &User,
    pairs: &[(String, String)],
) -> Result<(AuthorizeRequest, CheckedAuthorize), Box<Response>> {
    let known: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| AUTHORIZE_PARAMS.contains(&k.as_str()))
        .cloned()
        .collect();
    let req = authorize_request(&known).map_err(|m| {
        message_page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            &m,
            Some(user),
        )
    })?;
    let checked = s
        .broker
        .check_authorize(&req)
        .map_err(|e| Box::new(authorize_failed(s, e, Some(user))))?;
    Ok((req, checked))
}

/// 303 to the client's redirect URI with `params`, the request's `state` and the issuer
/// (RFC 9207).
fn back_to_client(
    s: &AppState,
    redirect_uri: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
) -> Response {
    let Ok(mut u) = url::Url::parse(redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "the redirect URI is not a URL").into_response();
    };
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(st) = state {
            q.append_pair("state", st);
        }
        q.append_pair("iss", &s.broker.config().issuer);
    }
    Redirect::to(u.as_str()).into_response()
}

fn authorize_failed(s: &AppState, e: AuthorizeError, user: Option<&User>) -> Response {
    match e {
        AuthorizeError::Show(m) => {
            message_page(StatusCode::BAD_REQUEST, "Authorization refused", &m, user)
        }
        AuthorizeError::Redirect {
            redirect_uri,
            error,
            description,
            state,
        } => back_to_client(
            s,
            &redirect_uri,
            &[("error", error), ("error_description", &description)],
            state.as_deref(),
        ),
    }
}

/// The CSP of the consent page: its form may end in a redirect to the client.
fn consent_csp(redirect_uri: &str) -> String {
    let origin = url::Url::parse(redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    CSP.replace(
        "form-action 'self'",
        &format!("form-action 'self' {origin}"),
    )
}

async fn authorize_page(
    State(s): State<AppState>,
    user: Result<User, Response>,
    uri: axum::http::Uri,
) -> Response {
    let query = uri.query().unwrap_or("");
    if query.len() > 8 * 1024 {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Authorization refused",
            "The authorization request is longer than 8 KiB.",
            None,
        );
    }
    let Ok(user) = user else {
        let next = format!("/console/authorize?{query}");
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &next)
            .finish();
        return Redirect::to(&format!("/console/login?{q}")).into_response();
    };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (req, checked) = match checked_authorize(&s, &user, &pairs) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let agents = match s.broker.agents(&user.principal, Some(1)).await {
        Ok(a) => a,
        Err(e) => return error_page(&e, &user),
    };
    let body = consent_body(&s, &user, &req, &checked, &agents);
    let mut r = html_response(
        StatusCode::OK,
        page("Allow an MCP host", "", Some(&user.viewer()), &body),
    );
    if let Ok(v) = HeaderValue::from_str(&consent_csp(&checked.redirect_uri)) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

fn consent_body(
    s: &AppState,
    user: &User,
    req: &AuthorizeRequest,
    c: &CheckedAuthorize,
    agents: &[mandate_broker::AgentView],
) -> String {
    let name = c.client.client_name.as_deref().unwrap_or("An MCP host");
    let host = url::Url::parse(&c.redirect_uri)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let active: Vec<_> = agents
        .iter()
        .filter(|a| a.agent.status == AgentStatus::Active)
        .collect();
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"consent\"><b>{}</b> (returning to <code>{}</code>) asks to act as one of your \
         agents. What you allow here is a task: it ends when its time runs out, and you can revoke \
         it from Tasks at any time.</p>",
        esc(name),
        esc(&host)
    );
    if active.is_empty() {
        b.push_str(
            "<p class=\"error\">You have no active agent this host could act as. Register one \
             (<code>mandate agent add</code>) and try again.</p>",
        );
        return b;
    }
    b.push_str("<form method=\"post\" action=\"/console/authorize\" class=\"consent\">");
    b.push_str(&csrf_field(&user.csrf));
    for (k, v) in [
        ("response_type", &req.response_type),
        ("client_id", &req.client_id),
        ("redirect_uri", &Some(c.redirect_uri.clone())),
        ("state", &req.state),
        ("code_challenge", &req.code_challenge),
        ("code_challenge_method", &req.code_challenge_method),
        ("scope", &req.scope),
        ("resource", &req.resource),
    ] {
        if let Some(v) = v {
            let _ = write!(
                b,
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                esc(v)
            );
        }
    }
    b.push_str("<label for=\"agent\">Act as agent</label><select id=\"agent\" name=\"agent\">");
    for a in &active {
        let _ = write!(
            b,
            "<option value=\"{id}\">{id} ({} tier; may do <code>{}</code>)</option>",
            esc(a.agent.tier.as_str()),
            esc_cut(&a.agent.envelope.to_string(), 120),
            id = esc(a.agent.id.as_str())
        );
    }
    b.push_str("</select>");
    let _ = write!(
        b,
        "<label for=\"intent\">Intent</label><textarea id=\"intent\" name=\"intent\" rows=\"2\" \
         maxlength=\"2000\" required>Work with {} through MCP</textarea>",
        esc(name)
    );
    b.push_str("<fieldset><legend>What the host may do</legend>");
    if c.scope.is_empty() {
        b.push_str(
            "<p class=\"hint\">The host asked for nothing in particular: name what it may do \
             (e.g. <code>call:notes.search</code>).</p><input name=\"grant_text\" required \
             aria-label=\"scope\">",
        );
    } else {
        for t in c.scope.tokens() {
            let _ = write!(
                b,
                "<label class=\"grant\"><input type=\"checkbox\" name=\"grant\" value=\"{v}\" checked> \
                 <code>{v}</code></label>",
                v = esc(&t)
            );
        }
        b.push_str(
            "<p class=\"hint\">Uncheck what it should not do. The agent's envelope and the \
             policies in force bound it further.</p>",
        );
    }
    b.push_str("</fieldset><label for=\"ttl\">For</label><select id=\"ttl\" name=\"ttl\">");
    let max = s.broker.config().max_task_ttl;
    for (secs, label) in [
        (300, "5 minutes"),
        (900, "15 minutes"),
        (3600, "1 hour"),
        (8 * 3600, "8 hours"),
    ] {
        if secs <= max {
            let sel = if secs == 900 { " selected" } else { "" };
            let _ = write!(b, "<option value=\"{secs}\"{sel}>{label}</option>");
        }
    }
    b.push_str(
        "</select><div class=\"buttons\"><button type=\"submit\" name=\"decision\" value=\"allow\" \
         class=\"grant\">Allow</button><button type=\"submit\" name=\"decision\" value=\"deny\" \
         class=\"deny\">Deny</button></div></form>",
    );
    b
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn authorize_decide(
    State(s): State<AppState>,
    user: User,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Form(pairs) = match form {
        Ok(f) => f,
        Err(e) => return bad_form(&e, Some(&user)),
    };
    if let Some(r) = user.refusal(&s, &headers, field(&pairs, "csrf").unwrap_or("")) {
        return r;
    }
    let (_, checked) = match checked_authorize(&s, &user, &pairs) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if field(&pairs, "decision") != Some("allow") {
        tracing::info!(person = %user.principal.name(), client_id = %checked.client.client_id, "authorization denied by the person");
        return back_to_client(
            &s,
            &checked.redirect_uri,
            &[
                ("error", "access_denied"),
                ("error_description", "the person refused"),
            ],
            checked.state.as_deref(),
        );
    }
    let mut scope: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "grant")
        .map(|(_, v)| v.as_str())
        .collect();
    if let Some(t) = field(&pairs, "grant_text") {
        scope.extend(t.split_whitespace());
    }
    let ttl = field(&pairs, "ttl")
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(900);
    let consent = Consent {
        agent: field(&pairs, "agent").unwrap_or("").to_string(),
        intent: field(&pairs, "intent").unwrap_or("").to_string(),
        scope: scope.join(" "),
        ttl,
    };
    match s.broker.consent(&user.principal, &checked, consent) {
        Ok(code) => back_to_client(
            &s,
            &checked.redirect_uri,
            &[("code", &code)],
            checked.state.as_deref(),
        ),
        Err(e) => error_page(&e, &user),
    }
}

/// Shared state for [`routes`]: made once per router.
pub(crate) fn state() -> Arc<Console> {
    Arc::new(Console::default())
}
