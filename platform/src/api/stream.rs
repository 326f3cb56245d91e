//! What the stream loop recorded for a tenant: the metrics reports the monitor trusted (with the lag
//! it measured and its verdict), the reports it dropped and why, its notifications and the
//! manager's actions. Read together they tell "slow at 10:00:31, scaled from 1 to 2 instances at
//! 10:00:32".

use crate::domain::InstanceId;
use axum::extract::State;
use chrono::{DateTime, Utc};

use super::extract::{Json, Query};
use super::problem::{Problem, TenantScoped};
use super::scope::Scoped;
use super::ApiState;
use crate::store::stream::{self as stream_store, Action, DroppedCount, Notification, ReportFilter, StoredReport};

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
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Reports {
    /// Trusted reports, newest first.
    pub items: Vec<StoredReport>,
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
    let limit = super::extract::limit(p.limit, 100, 1000)?;
    let filter = ReportFilter { app: p.app.as_deref(), instance: p.instance, since: p.since, limit };
    let items = stream_store::reports(&state.db, &t, &filter).await?;
    let dropped = stream_store::dropped(&state.db, &t).await?;
    Ok(Json(Reports { items, dropped }))
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
}

/// The monitor's notifications about the tenant's apps, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/notifications", tag = "stream", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), SinceParams),
    responses((status = 200, body = Vec<Notification>), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn notifications(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<SinceParams>,
) -> Result<Json<Vec<Notification>>, Problem> {
    let limit = super::extract::limit(p.limit, 100, 1000)?;
    Ok(Json(stream_store::notifications(&state.db, &t, p.since, limit).await?))
}

/// What the stream manager did about each notification (applied or skipped, and why), newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/actions", tag = "stream", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), SinceParams),
    responses((status = 200, body = Vec<Action>), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn actions(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<SinceParams>,
) -> Result<Json<Vec<Action>>, Problem> {
    let limit = super::extract::limit(p.limit, 100, 1000)?;
    Ok(Json(stream_store::actions(&state.db, &t, p.since, limit).await?))
}
