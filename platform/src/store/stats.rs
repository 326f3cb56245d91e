//! Ingestion statistics computed from the jobs table: per tenant and per day, and platform-wide.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::FromRow;

use super::Db;
use crate::tenant::TenantId;

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct DayStats {
    pub tenant: String,
    pub day: NaiveDate,
    pub files: i64,
    pub succeeded: i64,
    pub rejected: i64,
    pub failed: i64,
    pub in_progress: i64,
    pub bytes: i64,
    pub bytes_ingested: i64,
    pub records_ingested: i64,
    pub records_rejected: i64,
    pub run_ms_mean: Option<f64>,
    pub run_ms_p50: Option<f64>,
    pub run_ms_p95: Option<f64>,
    /// Bytes of succeeded files over the time their apps ran.
    pub throughput_bytes_per_s: Option<f64>,
}

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct ReasonCount {
    pub tenant: String,
    pub state: String,
    pub reason: String,
    pub count: i64,
}

/// Per tenant and day, for one tenant or all, over `[since, now)`.
pub async fn by_day(db: &Db, tenant: Option<&TenantId>, since: DateTime<Utc>) -> sqlx::Result<Vec<DayStats>> {
    sqlx::query_as(
        "select tenant, (detected_at at time zone 'UTC')::date as day,
                count(*) as files,
                count(*) filter (where state = 'succeeded') as succeeded,
                count(*) filter (where state = 'rejected') as rejected,
                count(*) filter (where state = 'failed') as failed,
                count(*) filter (where state not in ('succeeded', 'rejected', 'failed')) as in_progress,
                coalesce(sum(size_bytes), 0)::bigint as bytes,
                coalesce(sum(size_bytes) filter (where state = 'succeeded'), 0)::bigint as bytes_ingested,
                coalesce(sum(records_ingested), 0)::bigint as records_ingested,
                coalesce(sum(records_rejected), 0)::bigint as records_rejected,
                avg(run_ms) filter (where state = 'succeeded')::float8 as run_ms_mean,
                percentile_cont(0.5) within group (order by run_ms) filter (where state = 'succeeded') as run_ms_p50,
                percentile_cont(0.95) within group (order by run_ms) filter (where state = 'succeeded') as run_ms_p95,
                (sum(size_bytes) filter (where state = 'succeeded')::float8
                  / nullif(sum(run_ms) filter (where state = 'succeeded'), 0) * 1000.0) as throughput_bytes_per_s
         from jobs
         where ($1::text is null or tenant = $1) and detected_at >= $2
         group by tenant, day order by tenant, day",
    )
    .bind(tenant.map(|t| t.as_str()))
    .bind(since)
    .fetch_all(db)
    .await
}

/// Why files did not get in: counts by final state and reason.
pub async fn reasons(db: &Db, tenant: Option<&TenantId>, since: DateTime<Utc>) -> sqlx::Result<Vec<ReasonCount>> {
    sqlx::query_as(
        "select tenant, state, reason, count(*) as count from jobs
         where ($1::text is null or tenant = $1) and detected_at >= $2 and reason is not null
           and state in ('rejected', 'failed')
         group by tenant, state, reason order by tenant, count desc",
    )
    .bind(tenant.map(|t| t.as_str()))
    .bind(since)
    .fetch_all(db)
    .await
}
