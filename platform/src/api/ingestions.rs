//! A tenant's ingestion log: every file's job, filtered and paged by cursor; one job with its history
//! and the app's log; retry of a failed job.

use axum::extract::State;
use axum::http::{header, StatusCode};
use chrono::{DateTime, Utc};

use super::extract::{Json, OptionalJson, Query};
use super::page::{Page, PageRequest};
use super::problem::{Problem, TenantScoped};
use super::scope::{InForce, Owned, Scoped};
use super::ApiState;
use crate::agreement::{limits, BatchAgreement};
use crate::store::jobs::{self, JobEvent, JobId, JobState, JobSummary, ListFilter};
use crate::store::After;
use crate::tenant::TenantId;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this state.
    pub status: Option<JobState>,
    /// Only files detected at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only files detected before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Only jobs of files with exactly this name.
    pub file: Option<String>,
    /// Jobs per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's ingestions, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/ingestions", tag = "ingestions", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ListParams),
    responses((status = 200, body = Page<JobSummary>), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn list(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<ListParams>,
) -> Result<axum::response::Response, Problem> {
    let (filter, request) = page_request(p)?;
    Ok(json_bytes(cached_page(&state, &t, filter, request).await?))
}

/// `page`, reused while the tenant's jobs stay as they were: the answer depends on the tenant's rows
/// and the query only (no "now"), so it holds for as long as the tenant's change stamp stays the same.
async fn cached_page(
    state: &ApiState,
    t: &TenantId,
    filter: ListFilter,
    request: PageRequest<JobId>,
) -> Result<bytes::Bytes, Problem> {
    if !state.pages.enabled() {
        return page(state, t, filter, request).await;
    }
    let key = format!("{t}|{filter:?}|{request:?}");
    let generation = jobs::generation(&state.db, t).await?;
    if let Some(body) = state.pages.get(&key, generation) {
        return Ok(body);
    }
    let body = page(state, t, filter, request).await?;
    state.pages.put(key, generation, body.clone());
    Ok(body)
}

/// The query as a filter (asking one job more than the page, which tells whether there is a next
/// page) and the page asked for; 400 for a bad limit, window or cursor.
fn page_request(p: ListParams) -> Result<(ListFilter, PageRequest<JobId>), Problem> {
    let request = PageRequest::new(p.limit, p.cursor.as_deref())?;
    if let (Some(since), Some(until)) = (p.since, p.until) {
        if since > until {
            return Err(Problem::bad_request(format!("since ({since}) is after until ({until})")));
        }
    }
    let filter =
        ListFilter { state: p.status, file_name: p.file, since: p.since, until: p.until, limit: request.fetch() };
    Ok((filter, request))
}

/// One page of the tenant's jobs as the JSON answer.
async fn page(
    state: &ApiState,
    t: &TenantId,
    filter: ListFilter,
    request: PageRequest<JobId>,
) -> Result<bytes::Bytes, Problem> {
    let rows = jobs::page(&state.db, t, &filter, request.after).await?;
    let page = Page::new(rows, &request, |j| After { at: j.detected_at, id: j.id });
    let mut body = Vec::with_capacity(page.items.len() * 700 + 64);
    serde_json::to_writer(&mut body, &page).map_err(Problem::internal)?;
    Ok(bytes::Bytes::from(body))
}

fn json_bytes(body: bytes::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    /// Every state change with why, oldest first.
    pub events: Vec<JobEvent>,
}

/// One ingestion with its history.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/ingestions/{id}", tag = "ingestions", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobDetail), TenantScoped))]
pub async fn show(
    State(state): State<ApiState>,
    Owned { tenant: t, record: job }: Owned<JobSummary>,
) -> Result<Json<JobDetail>, Problem> {
    let events = jobs::events(&state.db, &t, job.id).await?;
    Ok(Json(JobDetail { job, events }))
}

/// The app's output (stdout and stderr as one stream), bounded: the first and last part are kept and
/// what was dropped between them is marked.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/ingestions/{id}/log", tag = "ingestions", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("id" = String, Path, description = "job id")),
    responses((status = 200, body = String, content_type = "text/plain"), TenantScoped))]
pub async fn log(
    State(state): State<ApiState>,
    Owned { tenant: t, record: job }: Owned<JobSummary>,
) -> Result<([(header::HeaderName, &'static str); 1], String), Problem> {
    let log = jobs::log(&state.db, &t, job.id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log.unwrap_or_default()))
}

#[derive(Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Ingest a file rejected as a duplicate anyway.
    #[serde(default)]
    pub allow_duplicate: bool,
}

/// Queues a failed job again (or, with `allow_duplicate`, one rejected as a duplicate). The JSON
/// body is optional.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/ingestions/{id}/retry", tag = "ingestions", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("id" = String, Path, description = "job id")),
    request_body(content = Option<RetryRequest>, content_type = "application/json"),
    responses((status = 202, body = JobSummary), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the job cannot be retried"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn retry(
    State(state): State<ApiState>,
    Owned { tenant: t, record: summary }: Owned<JobSummary>,
    InForce { section: batch, .. }: InForce<BatchAgreement>,
    OptionalJson(request): OptionalJson<RetryRequest>,
) -> Result<(StatusCode, Json<JobSummary>), Problem> {
    let gone = || Problem::not_found("the job went away");
    let full = jobs::get(&state.db, &t, summary.id).await?.ok_or_else(gone)?;
    let size = full.size_bytes.unwrap_or(0).max(0) as u64;
    let within = |u: &jobs::Usage| {
        limits::rates(&batch, size, u.files_last_hour, u.bytes_last_day).map_err(|r| (r.reason, r.detail))
    };
    let retried = jobs::retry(&state.db, &t, &full, request.allow_duplicate, full.max_attempts.max(1), within).await;
    retried.map_err(retry_problem)?;
    let after = jobs::summary(&state.db, &t, summary.id).await?.ok_or_else(gone)?;
    Ok((StatusCode::ACCEPTED, Json(after)))
}

/// A refused retry as the API answers it: 429 over a rate limit (with the figures), 409 otherwise.
fn retry_problem(e: jobs::RetryError) -> Problem {
    match e {
        jobs::RetryError::Store(e) => e.into(),
        jobs::RetryError::OverLimit(limit, detail) => {
            let detail = format!("a retry is admitted like a new file and {detail} ({limit})");
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
        }
        e => Problem::conflict(e.to_string()),
    }
}
