//! The admin API: people managing owners, agents and tasks. Every route needs a person's API
//! token; agent credentials are refused.

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mandate_broker::{AdminError, NewAgent, NewOwner, Principal};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::body::Limited;
use crate::errors::admin_error;

/// The authenticated person making an admin call.
pub(crate) struct Person(Principal);

impl FromRequestParts<AppState> for Person {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Response> {
        let bearer = crate::auth_header(&parts.headers).map(|(t, _)| t);
        s.broker
            .authenticate_person(bearer.as_deref())
            .await
            .map(Person)
            .map_err(admin_error)
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/whoami", get(whoami))
        .route("/admin/v1/owners", get(list_owners).post(add_owner))
        .route(
            "/admin/v1/owners/{id}",
            get(show_owner).delete(remove_owner),
        )
        .route(
            "/admin/v1/owners/{id}/tokens",
            get(list_tokens).post(issue_token),
        )
        .route(
            "/admin/v1/owners/{id}/tokens/{token}",
            axum::routing::delete(revoke_token),
        )
        .route("/admin/v1/agents", get(list_agents).post(add_agent))
        .route("/admin/v1/agents/{id}", get(show_agent))
        .route("/admin/v1/agents/{id}/suspend", post(suspend_agent))
        .route("/admin/v1/agents/{id}/resume", post(resume_agent))
        .route("/admin/v1/agents/{id}/confirm", post(confirm_agent))
        .route("/admin/v1/report", get(report))
        .route("/admin/v1/keys/rotate", post(rotate_keys))
        .route("/admin/v1/tasks", get(list_tasks))
        .route("/admin/v1/tasks/{id}", get(show_task))
        .route("/admin/v1/tasks/{id}/revoke", post(revoke_task))
        .route("/admin/v1/leases", get(list_leases))
        .route("/admin/v1/policies/reload", post(reload_policies))
        .route("/admin/v1/secrets", get(list_secrets))
        .route(
            "/admin/v1/secrets/{name}",
            axum::routing::put(set_secret).delete(delete_secret),
        )
        .route("/admin/v1/approvals", get(list_approvals))
        .route("/admin/v1/approvals/{id}", get(show_approval))
        .route("/admin/v1/approvals/{id}/grant", post(grant_approval))
        .route("/admin/v1/approvals/{id}/deny", post(deny_approval))
}

fn ok<T: Serialize>(r: Result<T, AdminError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => admin_error(e),
    }
}

fn created<T: Serialize>(r: Result<T, AdminError>) -> Response {
    match r {
        Ok(v) => (StatusCode::CREATED, axum::Json(v)).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn json<T: serde::de::DeserializeOwned>(
    s: &AppState,
    body: Limited,
    path: &str,
) -> Result<T, Response> {
    body.json(&s.broker, path).await
}

async fn whoami(Person(p): Person) -> Response {
    let (role, owner) = match &p {
        Principal::Admin { .. } => ("admin", None),
        Principal::Owner { owner, .. } => ("owner", Some(owner.to_string())),
    };
    axum::Json(serde_json::json!({"role": role, "owner": owner, "name": p.name()})).into_response()
}

async fn list_owners(State(s): State<AppState>, Person(p): Person) -> Response {
    axum::Json(s.broker.owners(&p)).into_response()
}

async fn add_owner(State(s): State<AppState>, Person(p): Person, body: Limited) -> Response {
    let new: NewOwner = match json(&s, body, "/admin/v1/owners").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    created(s.broker.add_owner(&p, new).await)
}

async fn show_owner(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker.owner(&p, &id))
}

async fn remove_owner(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker
        .remove_owner(&p, &id)
        .await
        .map(|orphaned| serde_json::json!({"removed": id, "orphaned_agents": orphaned})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueToken {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    days: Option<i64>,
}

async fn issue_token(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
    body: Limited,
) -> Response {
    let req: IssueToken = match json(&s, body, "/admin/v1/owners/{id}/tokens").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    created(s.broker.issue_api_token(&p, &id, req.name, req.days).await)
}

async fn list_tokens(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker.api_tokens(&p, &id).await)
}

async fn revoke_token(
    State(s): State<AppState>,
    Person(p): Person,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    ok(s.broker
        .revoke_api_token(&p, &id, &token)
        .await
        .map(|()| serde_json::json!({"revoked": token})))
}

/// `?window_days=N`: how many days of decisions the governance view counts.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WindowQuery {
    #[serde(default)]
    window_days: Option<i64>,
}

type WindowParams = Result<Query<WindowQuery>, axum::extract::rejection::QueryRejection>;

fn window(q: WindowParams) -> Result<Option<i64>, AdminError> {
    match q {
        Ok(Query(q)) => Ok(q.window_days),
        Err(e) => Err(AdminError::BadRequest(e.body_text())),
    }
}

async fn list_agents(State(s): State<AppState>, Person(p): Person, q: WindowParams) -> Response {
    let days = match window(q) {
        Ok(d) => d,
        Err(e) => return admin_error(e),
    };
    ok(s.broker.agents(&p, days).await)
}

async fn add_agent(State(s): State<AppState>, Person(p): Person, body: Limited) -> Response {
    let new: NewAgent = match json(&s, body, "/admin/v1/agents").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    created(s.broker.add_agent(&p, new).await)
}

async fn show_agent(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
    q: WindowParams,
) -> Response {
    let days = match window(q) {
        Ok(d) => d,
        Err(e) => return admin_error(e),
    };
    ok(s.broker.agent(&p, &id, days).await)
}

async fn report(State(s): State<AppState>, Person(p): Person, q: WindowParams) -> Response {
    let days = match window(q) {
        Ok(d) => d,
        Err(e) => return admin_error(e),
    };
    ok(s.broker.governance_report(&p, days).await)
}

async fn rotate_keys(State(s): State<AppState>, Person(p): Person) -> Response {
    ok(s.broker.rotate_signing_key(&p).await)
}

async fn confirm_agent(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker.confirm_agent(&p, &id).await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn optional_reason(
    s: &AppState,
    body: Limited,
    path: &str,
) -> Result<Option<String>, Response> {
    if body.is_empty() {
        return Ok(None);
    }
    let r: ReasonBody = json(s, body, path).await?;
    Ok(r.reason)
}

async fn suspend_agent(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
    body: Limited,
) -> Response {
    let reason = match optional_reason(&s, body, "/admin/v1/agents/{id}/suspend").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    ok(s.broker.suspend_agent(&p, &id, reason).await)
}

async fn resume_agent(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker.resume_agent(&p, &id).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_tasks(
    State(s): State<AppState>,
    Person(p): Person,
    q: Result<Query<TaskQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return admin_error(AdminError::BadRequest(e.body_text())),
    };
    ok(s.broker
        .tasks(&p, q.agent.as_deref(), q.state.as_deref(), q.limit)
        .await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseQuery {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    task: Option<String>,
    /// Only pending or live leases.
    #[serde(default)]
    open: bool,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_leases(
    State(s): State<AppState>,
    Person(p): Person,
    q: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return admin_error(AdminError::BadRequest(e.body_text())),
    };
    let agent = match q
        .agent
        .as_deref()
        .map(mandate_core::AgentId::parse)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => return admin_error(AdminError::BadRequest(e.to_string())),
    };
    let task = match q
        .task
        .as_deref()
        .map(mandate_core::TaskId::parse)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return admin_error(AdminError::BadRequest(e.to_string())),
    };
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return admin_error(AdminError::BadRequest("limit must be 1 to 1000".into()));
    }
    let filter = mandate_store::LeaseFilter {
        agent,
        task,
        open: q.open,
        limit: q.limit,
    };
    ok(s.broker.list_leases(&p, &filter).await)
}

async fn show_task(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker.task(&p, &id).await)
}

async fn revoke_task(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
    body: Limited,
) -> Response {
    let reason = match optional_reason(&s, body, "/admin/v1/tasks/{id}/revoke").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    ok(s.broker.revoke_task(&p, &id, reason).await)
}

async fn reload_policies(State(s): State<AppState>, Person(p): Person) -> Response {
    ok(s.broker
        .reload_policies_as(&p)
        .await
        .map(|msg| serde_json::json!({"result": msg})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalQueryParams {
    #[serde(default)]
    state: Option<String>,
}

async fn list_approvals(
    State(s): State<AppState>,
    Person(p): Person,
    q: Result<Query<ApprovalQueryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return admin_error(AdminError::BadRequest(e.body_text())),
    };
    ok(s.broker.approvals(&p, q.state.as_deref()).await)
}

async fn show_approval(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
) -> Response {
    ok(s.broker.approval(&p, &id).await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    #[serde(default)]
    note: Option<String>,
}

async fn decide_approval(
    s: &AppState,
    p: &Principal,
    id: &str,
    grant: bool,
    body: Limited,
) -> Response {
    let note = if body.is_empty() {
        None
    } else {
        match json::<NoteBody>(s, body, "/admin/v1/approvals/{id}").await {
            Ok(b) => b.note,
            Err(r) => return r,
        }
    };
    ok(s.broker.decide_approval(p, id, grant, note).await)
}

async fn grant_approval(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
    body: Limited,
) -> Response {
    decide_approval(&s, &p, &id, true, body).await
}

async fn deny_approval(
    State(s): State<AppState>,
    Person(p): Person,
    Path(id): Path<String>,
    body: Limited,
) -> Response {
    decide_approval(&s, &p, &id, false, body).await
}

async fn list_secrets(State(s): State<AppState>, Person(p): Person) -> Response {
    ok(s.broker.secrets(&p).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: String,
}

async fn set_secret(
    State(s): State<AppState>,
    Person(p): Person,
    Path(name): Path<String>,
    body: Limited,
) -> Response {
    let body: SecretBody = match json(&s, body, "/admin/v1/secrets/{name}").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let value = mandate_crypto::SecretString::new(body.value);
    ok(s.broker.set_secret(&p, &name, &value).await)
}

async fn delete_secret(
    State(s): State<AppState>,
    Person(p): Person,
    Path(name): Path<String>,
) -> Response {
    ok(s.broker
        .delete_secret(&p, &name)
        .await
        .map(|()| serde_json::json!({"deleted": name})))
}
