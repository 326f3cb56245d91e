//! Ingestion statistics computed from the jobs table: per tenant and per day, and platform-wide.

use chrono::{DateTime, NaiveDate, Utc};

use super::Db;
use crate::domain::{JobState, Reason};
use crate::tenant::TenantId;

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DayStats {
    pub tenant: TenantId,
    /// UTC day; absent in totals over the whole period.
    pub day: Option<NaiveDate>,
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
    /// Records ingested by succeeded jobs over the time their apps ran.
    pub throughput_records_per_s: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReasonCount {
    pub tenant: TenantId,
    pub state: JobState,
    pub reason: Reason,
    pub count: i64,
}

/// The tenants' (`$1`) `DayStats` over files detected in `[$2, $3)`, grouped by `$day` (an expression
/// of `detected_at`, or a null date for the whole period): the one list of aggregates, typed.
macro_rules! day_stats {
    ($day:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            DayStats,
            r#"select tenant as "tenant: TenantId", "# + $day + r#" as day,
                count(*) as "files!",
                count(*) filter (where state = 'succeeded') as "succeeded!",
                count(*) filter (where state = 'rejected') as "rejected!",
                count(*) filter (where state = 'failed') as "failed!",
                count(*) filter (where state not in ('succeeded', 'rejected', 'failed')) as "in_progress!",
                coalesce(sum(size_bytes), 0)::bigint as "bytes!",
                coalesce(sum(size_bytes) filter (where state = 'succeeded'), 0)::bigint as "bytes_ingested!",
                coalesce(sum(records_ingested), 0)::bigint as "records_ingested!",
                coalesce(sum(records_rejected), 0)::bigint as "records_rejected!",
                avg(run_ms) filter (where state = 'succeeded')::float8 as run_ms_mean,
                percentile_cont(0.5) within group (order by run_ms) filter (where state = 'succeeded') as run_ms_p50,
                percentile_cont(0.95) within group (order by run_ms) filter (where state = 'succeeded') as run_ms_p95,
                (sum(size_bytes) filter (where state = 'succeeded')::float8
                  / nullif(sum(run_ms) filter (where state = 'succeeded'), 0) * 1000.0) as throughput_bytes_per_s,
                (sum(records_ingested) filter (where state = 'succeeded')::float8
                  / nullif(sum(run_ms) filter (where state = 'succeeded'), 0) * 1000.0) as throughput_records_per_s
              from jobs
             where tenant = any($1) and detected_at >= $2 and detected_at < $3
             group by 1, 2 order by 1, 2"#
            $(, $arg)*
        )
    };
}

/// Per tenant and UTC day (`per_day`) or per tenant over the whole period, for the given tenants,
/// over files detected in `[since, until)`. Naming the tenants (rather than "all") lets every tenant's
/// part be an index-only scan of `jobs_by_tenant_time`.
pub async fn aggregate(
    db: &Db,
    tenants: &[String],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    per_day: bool,
) -> sqlx::Result<Vec<DayStats>> {
    let mut tx = db.begin().await?;
    // Sorting a period's run times for the percentiles needs room; the default 4MB spills to disk from
    // about 300,000 jobs.
    sqlx::query!("set local work_mem = '64MB'").execute(&mut *tx).await?;
    let rows = if per_day {
        day_stats!("(detected_at at time zone 'UTC')::date", tenants, since, until).fetch_all(&mut *tx).await?
    } else {
        day_stats!("null::date", tenants, since, until).fetch_all(&mut *tx).await?
    };
    tx.commit().await?;
    Ok(rows)
}

/// Why files did not get in: counts by final state and reason, over files detected in `[since, until)`.
pub async fn reasons(
    db: &Db,
    tenants: &[String],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Vec<ReasonCount>> {
    sqlx::query_as!(
        ReasonCount,
        r#"select tenant as "tenant: TenantId", state as "state: JobState", reason as "reason!: Reason",
                  count(*) as "count!" from jobs
         where tenant = any($1) and detected_at >= $2 and detected_at < $3 and reason is not null
           and state in ('rejected', 'failed')
         group by tenant, state, reason order by tenant, count(*) desc"#,
        tenants,
        since,
        until,
    )
    .fetch_all(db)
    .await
}

/// Every tenant that ever had a job.
pub async fn tenants_with_jobs(db: &Db) -> sqlx::Result<Vec<String>> {
    // A loose index scan: one probe per distinct tenant instead of reading every job.
    sqlx::query_scalar!(
        r#"with recursive t(tenant) as (
             (select tenant from jobs order by tenant limit 1)
             union all
             select (select j.tenant from jobs j where j.tenant > t.tenant order by j.tenant limit 1) from t
             where t.tenant is not null)
         select tenant as "tenant!" from t where tenant is not null"#,
    )
    .fetch_all(db)
    .await
}
