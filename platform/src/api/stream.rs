//! What the stream loop recorded for a tenant: the metrics reports the monitor trusted (with the lag
//! it measured and its verdict), the reports it dropped and why, its notifications and the
//! manager's actions. Read together they tell "slow at 10:00:31, scaled from 1 to 2 instances at
//! 10:00:32".

use axum::extract::State;
use chrono::{DateTime, Utc};

use super::extract::{Json, Query};
use super::page::{Page, PageRequest};
use super::problem::{Problem, TenantScoped};
use super::scope::Scoped;
use super::ApiState;
use crate::domain::InstanceId;
use crate::store::stream::{self as stream_store, Action, DroppedCount, Notification, ReportFilter, StoredReport};
use crate::store::After;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// Only reports of this app.
    pub app: Option<String>,
    /// Only reports of this instance.
    pub instance: Option<InstanceId>,
    /// Only reports received at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Reports {
    /// Trusted reports, newest first.
    #[serde(flatten)]
    pub page: Page<StoredReport>,
    /// Reports whose key named this tenant but that were not trusted, by reason.
    pub dropped: Vec<DroppedCount>,
}

/// The tenant's metrics reports with the monitor's verdicts, and the dropped ones counted by reason.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/reports", tag = "stream", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ReportParams),
    responses((status = 200, body = Reports), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn reports(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<ReportParams>,
) -> Result<Json<Reports>, Problem> {
    let request = PageRequest::new(p.limit, p.cursor.as_deref())?;
    let (app, instance, since, limit, after) = (p.app.as_deref(), p.instance, p.since, request.fetch(), request.after);
    let rows = stream_store::reports(&state.db, &t, &ReportFilter { app, instance, since, limit, after }).await?;
    let page = Page::new(rows, &request, |r| After { at: r.received_at, id: r.id });
    Ok(Json(Reports { page, dropped: stream_store::dropped(&state.db, &t).await? }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SinceParams {
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The monitor's notifications about the tenant's apps, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/notifications", tag = "stream", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), SinceParams),
    responses((status = 200, body = Page<Notification>), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn notifications(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<SinceParams>,
) -> Result<Json<Page<Notification>>, Problem> {
    let request = PageRequest::new(p.limit, p.cursor.as_deref())?;
    let rows = stream_store::notifications(&state.db, &t, p.since, request.fetch(), request.after).await?;
    Ok(Json(Page::new(rows, &request, |n| After { at: n.at, id: n.id })))
}

/// What the stream manager did about each notification (applied or skipped, and why), newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/actions", tag = "stream", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), SinceParams),
    responses((status = 200, body = Page<Action>), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn actions(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<SinceParams>,
) -> Result<Json<Page<Action>>, Problem> {
    let request = PageRequest::new(p.limit, p.cursor.as_deref())?;
    let rows = stream_store::actions(&state.db, &t, p.since, request.fetch(), request.after).await?;
    Ok(Json(Page::new(rows, &request, |a| After { at: a.at, id: a.id })))
}
