//! Tenants' apps over HTTP: upload (one executable or a `.tar.gz` with `app.yaml`), streamed to disk
//! under the agreement's `max_app_size` and unpacked safely by the registry; list, show, delete.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::extract::{Json, Path, Query};
use super::problem::{Problem, TenantScoped};
use super::scope::{InForce, Scoped, Whole};
use super::upload;
use super::ApiState;
use crate::apps::{AppError, AppKind, InstallRequest};
use crate::store::apps::App;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AppVersion {
    pub name: String,
    pub version: i32,
    pub kind: AppKind,
    pub entrypoint: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<App> for AppVersion {
    fn from(a: App) -> Self {
        AppVersion {
            name: a.name,
            version: a.version,
            kind: a.kind,
            entrypoint: a.entrypoint,
            sha256: a.sha256,
            size_bytes: a.size_bytes,
            created_at: a.created_at,
        }
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// The app's name; required for a single executable, checked against `app.yaml` for an archive.
    pub name: Option<String>,
    /// For a single executable (archives say it in `app.yaml`); `batch` if not given.
    pub kind: Option<AppKind>,
}

fn app_problem(e: AppError) -> Problem {
    match e {
        AppError::TooLarge { .. } => Problem::too_large(e.to_string()),
        AppError::UnsafeArchive(_) | AppError::BadArchive(_) | AppError::Manifest(_) | AppError::Invalid(_) => {
            Problem::unprocessable(e.to_string())
        }
        AppError::TooManyApps { .. } => Problem::conflict(e.to_string()),
        AppError::DiskQuota(detail) => {
            Problem::new(axum::http::StatusCode::INSUFFICIENT_STORAGE, "disk-quota", detail.clone())
        }
        AppError::Io(e) => e.into(),
        AppError::Store(e) => e.into(),
    }
}

/// Uploads a new version of an app. The body is the file itself (`application/octet-stream` or
/// `application/gzip`); the same content as the newest version installs nothing new.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/apps", tag = "apps", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = AppVersion),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "invalid app name or parameters"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "no agreement in force, or max_apps reached"),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "the upload stalled"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "over max_app_size"),
        (status = 507, body = Problem, content_type = "application/problem+json", description = "over the tenant's disk_quota"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "unsafe or invalid archive, app.yaml missing or invalid"), TenantScoped))]
pub async fn upload(
    State(state): State<ApiState>,
    InForce { agreement, .. }: InForce<Whole>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<AppVersion>), Problem> {
    if let Some(name) = &params.name {
        crate::apps::validate_app_name(name).map_err(Problem::bad_request)?;
    }
    let incoming = state.apps.incoming_path();
    let limit = ("max_app_size", agreement.apps.max_app_size);
    upload::to_file(&headers, body, &incoming, limit, "the upload", state.min_upload_rate).await?;
    let req = InstallRequest { name: params.name.as_deref(), kind: params.kind.unwrap_or(AppKind::Batch) };
    let installed = state.apps.install(&agreement, req, &incoming).await;
    let _ = tokio::fs::remove_file(&incoming).await;
    Ok((StatusCode::CREATED, Json(installed.map_err(app_problem)?.into())))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AppSummary {
    pub name: String,
    pub kind: AppKind,
    /// The newest version, the one routes use unless they pin another.
    pub latest: i32,
    pub versions: usize,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The tenant's apps, one entry per name.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/apps", tag = "apps", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = [AppSummary]), TenantScoped))]
pub async fn list(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
) -> Result<Json<Vec<AppSummary>>, Problem> {
    Ok(Json(summaries(crate::store::apps::list(&state.db, &t).await?)))
}

/// One summary per name, from every version listed by name, newest version first within a name.
fn summaries(versions: Vec<App>) -> Vec<AppSummary> {
    let mut out: Vec<AppSummary> = Vec::new();
    for a in versions {
        match out.last_mut() {
            Some(s) if s.name == a.name => s.versions += 1,
            _ => out.push(AppSummary {
                name: a.name,
                kind: a.kind,
                latest: a.version,
                versions: 1,
                updated_at: a.created_at,
            }),
        }
    }
    out
}

/// Every version of the tenant's app `app`, or 404.
async fn versions(state: &ApiState, t: &crate::tenant::TenantId, app: &str) -> Result<Vec<App>, Problem> {
    let all: Vec<App> = crate::store::apps::list(&state.db, t).await?.into_iter().filter(|a| a.name == app).collect();
    if all.is_empty() {
        return Err(Problem::not_found(format!("tenant `{t}` has no app `{app}`")));
    }
    Ok(all)
}

/// Every version of one app, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/apps/{app}", tag = "apps", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("app" = String, Path, description = "app name")),
    responses((status = 200, body = [AppVersion]), TenantScoped))]
pub async fn show(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Path((_, app)): Path<(String, String)>,
) -> Result<Json<Vec<AppVersion>>, Problem> {
    let all = versions(&state, &t, &app).await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

/// Deletes every version of an app. Refused while a job of the tenant's is waiting for it or running it.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/apps/{app}", tag = "apps", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("app" = String, Path, description = "app name")),
    responses((status = 204, description = "deleted"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "jobs are using the app"), TenantScoped))]
pub async fn delete(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Path((_, app)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    versions(&state, &t, &app).await?;
    match state.apps.delete(&t, &app).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(crate::apps::DeleteError::InUse(n)) => Err(Problem::conflict(format!(
            "{n} job(s) or stream instance(s) of tenant `{t}` are using app `{app}` (stop its instances first)"
        ))),
        Err(crate::apps::DeleteError::Store(e)) => Err(e.into()),
        Err(crate::apps::DeleteError::Io(e)) => Err(e.into()),
    }
}
