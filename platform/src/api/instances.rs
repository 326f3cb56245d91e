//! A tenant's stream app instances over HTTP: start n, list, show, stop one or all of an app, read
//! one's log. The API only records what is wanted; the stream manager starts and stops programs.

use axum::extract::State;
use axum::http::{header, StatusCode};

use super::extract::{Json, OptionalJson, Path, Query};
use super::page::{Page, PageRequest};
use super::problem::{Problem, TenantScoped};
use super::scope::{InForce, Owned, Scoped};
use super::ApiState;
use crate::agreement::StreamAgreement;
use crate::domain::InstanceState;
use crate::runtime::log::RotatingLog;
use crate::store::instances::{self, Instance, NewInstances, StartError};
use crate::store::After;
use crate::tenant::TenantId;

#[derive(Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Instances to start (default 1); with those already wanted, at most the agreement's
    /// `max_instances`.
    #[schema(minimum = 1, maximum = 256)]
    pub count: Option<u64>,
    /// Version of the app to run (default: the newest).
    pub version: Option<i32>,
}

/// Starts instances of a stream app. The JSON body is optional.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/apps/{app}/instances", tag = "instances", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("app" = String, Path, description = "stream app name")),
    request_body(content = Option<StartRequest>, content_type = "application/json"),
    responses((status = 201, body = Vec<Instance>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "no stream section, or over max_instances"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "not a stream app, or a bad count"), TenantScoped))]
pub async fn start(
    State(state): State<ApiState>,
    InForce { tenant: t, section: stream, .. }: InForce<StreamAgreement>,
    Path((_, app)): Path<(String, String)>,
    OptionalJson(request): OptionalJson<StartRequest>,
) -> Result<(StatusCode, Json<Vec<Instance>>), Problem> {
    let (count, max) = (request.count.unwrap_or(1), stream.max_instances);
    if count == 0 || count > max {
        return Err(Problem::unprocessable(format!(
            "count {count} is outside 1..={max} (the agreement's max_instances)"
        )));
    }
    let found = stream_app(&state, &t, &app, request.version).await?;
    let (app, app_version, runtime) = (&found.name, found.version, stream.runtime.as_str());
    let new = NewInstances { tenant: &t, app, app_version, runtime, count, max, cause: "api" };
    Ok((StatusCode::CREATED, Json(create(&state, &new).await?)))
}

/// The tenant's stream app `app` (its newest version, or `version`): 404 if there is none, 422 for a
/// batch app.
async fn stream_app(
    state: &ApiState,
    t: &TenantId,
    app: &str,
    version: Option<i32>,
) -> Result<crate::store::apps::App, Problem> {
    let resolved = crate::store::apps::resolve(&state.db, t, app, version).await?;
    let found = resolved.ok_or_else(|| {
        let which = version.map_or(String::new(), |v| format!(" version {v}"));
        Problem::not_found(format!("tenant `{t}` has no app `{app}`{which}"))
    })?;
    if found.kind != crate::domain::AppKind::Stream {
        let kind = found.kind;
        return Err(Problem::unprocessable(format!("`{app}` is a {kind} app; only stream apps run as instances")));
    }
    Ok(found)
}

/// Records the new instances under the tenant's lock, within `max_instances` (409 past it).
async fn create(state: &ApiState, new: &NewInstances<'_>) -> Result<Vec<Instance>, Problem> {
    let mut tx = state.db.begin().await?;
    instances::lock_tenant(&mut tx, new.tenant).await?;
    let created = match instances::create(&mut tx, new).await {
        Ok(c) => c,
        Err(e @ StartError::OverLimit { .. }) => return Err(Problem::conflict(e.to_string())),
        Err(StartError::Store(e)) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(created)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only instances of this app.
    pub app: Option<String>,
    /// Only instances in this state (starting, running, stopping, exited, failed, restarting).
    pub state: Option<InstanceState>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's instances, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/instances", tag = "instances", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ListParams),
    responses((status = 200, body = Page<Instance>), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn list(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<ListParams>,
) -> Result<Json<Page<Instance>>, Problem> {
    let request = PageRequest::new(p.limit, p.cursor.as_deref())?;
    let rows = instances::list(&state.db, &t, p.app.as_deref(), p.state, request.fetch(), request.after).await?;
    Ok(Json(Page::new(rows, &request, |i| After { at: i.created_at, id: i.id })))
}

/// One instance.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/instances/{id}", tag = "instances", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("id" = String, Path, description = "instance id")),
    responses((status = 200, body = Instance), TenantScoped))]
pub async fn show(Owned { record, .. }: Owned<Instance>) -> Result<Json<Instance>, Problem> {
    Ok(Json(record))
}

/// Stops an instance: SIGTERM, then SIGKILL after the agreement's `stop_grace`. Answers at once
/// with the instance `stopping`; it is `exited` once its program ended.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/instances/{id}", tag = "instances", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), TenantScoped))]
pub async fn stop(
    State(state): State<ApiState>,
    Owned { tenant: t, record: inst }: Owned<Instance>,
) -> Result<(StatusCode, Json<Instance>), Problem> {
    let changed = instances::request_stop(&state.db, &t, Some(inst.id), None).await?;
    Ok((StatusCode::ACCEPTED, Json(changed.into_iter().next().unwrap_or(inst))))
}

/// Stops every instance of an app; the instances it asked to stop.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/apps/{app}/instances", tag = "instances", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("app" = String, Path, description = "stream app name")),
    responses((status = 202, body = Vec<Instance>), TenantScoped))]
pub async fn stop_app(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Path((_, app)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Vec<Instance>>), Problem> {
    Ok((StatusCode::ACCEPTED, Json(instances::request_stop(&state.db, &t, None, Some(&app)).await?)))
}

/// The instance's output (stdout and stderr), the newest megabyte or so; the platform's own lines
/// start with `[mysimbdp]`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/instances/{id}/log", tag = "instances", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("id" = String, Path, description = "instance id")),
    responses((status = 200, body = String, content_type = "text/plain"), TenantScoped))]
pub async fn log(
    State(state): State<ApiState>,
    Owned { tenant: t, record: inst }: Owned<Instance>,
) -> Result<([(header::HeaderName, &'static str); 1], String), Problem> {
    let path = crate::layout::instance_log(&state.layout.data, &t, inst.id);
    // Up to a MiB read from disk: off the runtime's workers, which serve every other request.
    let text = tokio::task::spawn_blocking(move || RotatingLog::tail(&path, crate::layout::INSTANCE_LOG_LIMIT))
        .await
        .map_err(Problem::internal)??;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}
