//! Ingestion statistics: for one tenant, and platform-wide for operators. Files, bytes, records
//! ingested and rejected, outcomes with their reasons, run durations (mean, p50, p95) and throughput,
//! over the whole period and per UTC day.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};

use super::auth::Caller;
use super::extract::{Json, Query};
use super::problem::{Problem, TenantScoped};
use super::scope::Scoped;
use super::ApiState;
use crate::store::stats::{self, DayStats, ReasonCount};
use crate::tenant::TenantId;

/// The longest period one request may cover.
pub const MAX_DAYS: i64 = 366;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Files detected at or after this time (RFC 3339); default 7 days before `until`.
    pub since: Option<DateTime<Utc>>,
    /// Files detected before this time (RFC 3339); default now.
    pub until: Option<DateTime<Utc>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// One entry per tenant over the whole period.
    pub totals: Vec<DayStats>,
    /// One entry per tenant and UTC day that had files.
    pub by_day: Vec<DayStats>,
    /// Rejections and failures by reason.
    pub reasons: Vec<ReasonCount>,
}

fn period(p: &StatsParams) -> Result<(DateTime<Utc>, DateTime<Utc>), Problem> {
    let until = p.until.unwrap_or_else(Utc::now);
    let since = p.since.unwrap_or(until - Duration::days(7));
    if since >= until {
        return Err(Problem::bad_request(format!("since ({since}) must be before until ({until})")));
    }
    if until - since > Duration::days(MAX_DAYS) {
        return Err(Problem::bad_request(format!("the period is over {MAX_DAYS} days; ask for a shorter one")));
    }
    Ok((since, until))
}

async fn compute(state: &ApiState, tenant: Option<&TenantId>, p: &StatsParams) -> Result<Stats, Problem> {
    let (since, until) = period(p)?;
    let tenants = match tenant {
        Some(t) => vec![t.to_string()],
        None => stats::tenants_with_jobs(&state.db).await?,
    };
    let tenants = &tenants;
    let (totals, by_day, reasons) = tokio::try_join!(
        stats::aggregate(&state.db, tenants, since, until, false),
        stats::aggregate(&state.db, tenants, since, until, true),
        stats::reasons(&state.db, tenants, since, until),
    )?;
    Ok(Stats { since, until, totals, by_day, reasons })
}

/// One tenant's statistics.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/stats", tag = "stats", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), StatsParams),
    responses((status = 200, body = Stats), (status = 400, body = Problem, content_type = "application/problem+json"), TenantScoped))]
pub async fn tenant(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
    Query(p): Query<StatsParams>,
) -> Result<Json<Stats>, Problem> {
    Ok(Json(compute(&state, Some(&t), &p).await?))
}

/// Every tenant's statistics (operators only).
#[utoipa::path(get, path = "/v1/stats", tag = "stats", security(("bearer" = [])),
    params(StatsParams),
    responses((status = 200, body = Stats), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn platform(
    State(state): State<ApiState>,
    caller: Caller,
    Query(p): Query<StatsParams>,
) -> Result<Json<Stats>, Problem> {
    caller.require_operator()?;
    Ok(Json(compute(&state, None, &p).await?))
}
