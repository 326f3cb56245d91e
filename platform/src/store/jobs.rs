//! Ingestion jobs: one row per staged file and an event per state change.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use std::path::Path;

use super::leases::Lease;
use super::{After, Db};
use crate::domain::ManagerId;
pub use crate::domain::{JobId, JobState, Reason};
use crate::tenant::TenantId;

/// A job row in full: what tenants see (`JobSummary`, reached through `Deref`) and what only the
/// platform needs (its paths, the app's process, the log).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Job {
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The name's bytes, when they are not the text `file_name` shows (see `names`).
    #[serde(skip)]
    pub file_name_bytes: Option<Vec<u8>>,
    pub staging_path: String,
    pub work_path: String,
    pub not_before: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub log: Option<String>,
    #[serde(skip)]
    pub pid: Option<i32>,
    #[serde(skip)]
    pub pid_start_ticks: Option<i64>,
    /// Where the file rests once the job is final (`ingested/` or `quarantine/`); for a retried job
    /// waiting to run, where its file still lies until the run takes it back.
    pub final_path: Option<String>,
    /// The batch manager working on it (see `leases`), and the fencing number of that lease.
    #[serde(skip)]
    pub lease_owner: Option<ManagerId>,
    #[serde(skip)]
    pub fence: i64,
}

impl std::ops::Deref for Job {
    type Target = JobSummary;
    fn deref(&self) -> &JobSummary {
        &self.summary
    }
}

impl Job {
    pub fn state(&self) -> JobState {
        self.summary.state
    }

    /// The name as it was in staging, byte for byte.
    pub fn raw_name(&self) -> &[u8] {
        self.file_name_bytes.as_deref().unwrap_or(self.file_name.as_bytes())
    }
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub at: DateTime<Utc>,
    pub state: String,
    pub message: String,
}

/// Whole `Job`s: the SQL pieces `[$head]` (a `with` clause, or none), then the one typed column list
/// every query returning jobs selects, then `$tail` (`from ...`). sqlx checks the query against the
/// schema when building (`.sqlx/`, see `scripts/sqlx-prepare.sh`). The `!` marks columns that are
/// never null: PostgreSQL does not say so for a function's or a `with` clause's columns.
///
/// The form with `=> |row, job| out` also selects what `$tail` adds after the columns and makes the
/// result from the row (fields not taken into the job) and the job.
macro_rules! job_query {
    ([$($head:tt),*] $tail:tt => |$row:ident, $job:ident| $out:expr $(, $arg:expr)* $(,)?) => {
        sqlx::query!(
            $($head +)* r#"select id as "id!: crate::domain::JobId", tenant as "tenant!: crate::tenant::TenantId",
                file_name as "file_name!", state as "state!: crate::domain::JobState",
                reason as "reason: crate::domain::Reason", detail, size_bytes, checksum, format,
                route_app as app, app_version, attempts as "attempts!", max_attempts as "max_attempts!",
                records_ingested, records_rejected, bytes_read, app_message, exit_code, signal,
                duplicate_of as "duplicate_of: crate::domain::JobId", log_dropped_bytes as "log_dropped_bytes!",
                detected_at as "detected_at!", admitted_at, started_at, finished_at, run_ms, file_name_bytes,
                staging_path as "staging_path!", work_path as "work_path!", not_before, log, pid, pid_start_ticks,
                final_path, lease_owner as "lease_owner: crate::domain::ManagerId", fence as "fence!""# + $tail
            $(, $arg)*
        )
        .map(|$row| {
            let summary = $crate::store::jobs::JobSummary {
                id: $row.id,
                tenant: $row.tenant,
                file_name: $row.file_name,
                state: $row.state,
                reason: $row.reason,
                detail: $row.detail,
                size_bytes: $row.size_bytes,
                checksum: $row.checksum,
                format: $row.format,
                app: $row.app,
                app_version: $row.app_version,
                attempts: $row.attempts,
                max_attempts: $row.max_attempts,
                records_ingested: $row.records_ingested,
                records_rejected: $row.records_rejected,
                bytes_read: $row.bytes_read,
                app_message: $row.app_message,
                exit_code: $row.exit_code,
                signal: $row.signal,
                duplicate_of: $row.duplicate_of,
                log_dropped_bytes: $row.log_dropped_bytes,
                detected_at: $row.detected_at,
                admitted_at: $row.admitted_at,
                started_at: $row.started_at,
                finished_at: $row.finished_at,
                run_ms: $row.run_ms,
            };
            let $job = $crate::store::jobs::Job {
                summary,
                file_name_bytes: $row.file_name_bytes,
                staging_path: $row.staging_path,
                work_path: $row.work_path,
                not_before: $row.not_before,
                log: $row.log,
                pid: $row.pid,
                pid_start_ticks: $row.pid_start_ticks,
                final_path: $row.final_path,
                lease_owner: $row.lease_owner,
                fence: $row.fence,
            };
            $out
        })
    };
    ([$($head:tt),*] $tail:tt $(, $arg:expr)* $(,)?) => {
        job_query!([$($head),*] $tail => |row, job| job $(, $arg)*)
    };
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        job_query!([] $tail $(, $arg)*)
    };
}
pub(crate) use job_query;

/// A statement that changes one job (`$change`: `... returning *`) and records the change's event in
/// the same statement, its message parameter `$message` (`"$9"`): one round trip and one atomic change
/// instead of a four-step transaction. Returns the job as changed.
macro_rules! change_job {
    ($change:tt, $message:tt $(, $arg:expr)* $(,)?) => {
        job_query!(
            [
                "with u as (",
                $change,
                "), e as (insert into job_events (job_id, tenant, state, message) select id, tenant, state, ",
                $message,
                " from u) "
            ] " from u"
            $(, $arg)*
        )
    };
}

/// A file being claimed: its job's id, its name (shown, and its bytes when they differ), where it
/// was staged and where it goes.
pub struct Claim {
    pub id: JobId,
    pub file_name: String,
    pub file_name_bytes: Option<Vec<u8>>,
    pub staging_path: String,
    pub work_path: String,
}

/// Records files the moment they are claimed, before they are moved out of staging, so that a crash
/// at any later point finds the row (or, after a crash of the machine, the claimed file) and finishes
/// the move. The claims are leased to their manager from the start. One statement for them all (see
/// the migration `grouped_writes`); it commits without waiting for the flush. The jobs come back in
/// the claims' order.
pub async fn insert_detected(db: &Db, tenant: &TenantId, claims: &[Claim], lease: &Lease) -> sqlx::Result<Vec<Job>> {
    let texts = |f: &dyn Fn(&Claim) -> &str| claims.iter().map(|c| f(c).to_owned()).collect::<Vec<String>>();
    let rows: Vec<Job> = job_query!(
        " from claim_jobs($1, $2, $3, $4, $5, $6, $7, $8)",
        tenant.as_str(),
        claims.iter().map(|c| c.id).collect::<Vec<_>>() as Vec<JobId>,
        &texts(&|c| &c.file_name),
        claims.iter().map(|c| c.file_name_bytes.clone()).collect::<Vec<_>>() as Vec<Option<Vec<u8>>>,
        &texts(&|c| &c.staging_path),
        &texts(&|c| &c.work_path),
        lease.owner as ManagerId,
        lease.ttl_ms(),
    )
    .fetch_all(db)
    .await?;
    let mut by_id: std::collections::HashMap<JobId, Job> = rows.into_iter().map(|j| (j.id, j)).collect();
    claims.iter().map(|c| by_id.remove(&c.id).ok_or_else(|| sqlx::Error::RowNotFound)).collect()
}

/// Deletes a claim whose file went away before it was moved. A row written and deleted again
/// leaves the tenant's change stamp where it was before (see the migration that adds
/// `jobs.changed`), which is right only because the rows are then as they were; retention, which
/// deletes rows that were there, moves the stamp itself (`retention::forget_jobs`).
pub async fn forget(db: &Db, tenant: &TenantId, id: JobId, fence: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let mine = sqlx::query_scalar!(
        "select 1 as one from jobs where id = $1 and tenant = $2 and state = 'detected' and fence = $3 for update",
        id as JobId,
        tenant.as_str(),
        fence,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if mine.is_none() {
        return Ok(()); // another manager holds it now
    }
    sqlx::query!("delete from job_events where job_id = $1 and tenant = $2", id as JobId, tenant.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query!("delete from jobs where id = $1 and tenant = $2 and state = 'detected'", id as JobId, tenant.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

pub async fn get(db: &Db, tenant: &TenantId, id: JobId) -> sqlx::Result<Option<Job>> {
    job_query!(" from jobs where tenant = $1 and id = $2", tenant.as_str(), id as JobId).fetch_optional(db).await
}

pub async fn events(db: &Db, tenant: &TenantId, id: JobId) -> sqlx::Result<Vec<JobEvent>> {
    sqlx::query_as!(
        JobEvent,
        "select at, state, message from job_events where tenant = $1 and job_id = $2 order by id",
        tenant.as_str(),
        id as JobId,
    )
    .fetch_all(db)
    .await
}

/// Jobs not yet in a final state, oldest first: what a starting manager takes up again.
pub async fn open_jobs(db: &Db) -> sqlx::Result<Vec<Job>> {
    job_query!(" from jobs where state in ('detected', 'queued', 'running', 'retry_wait') order by detected_at, id")
        .fetch_all(db)
        .await
}

/// A claimed job as admission queues it.
pub struct Queue {
    pub id: JobId,
    pub fence: i64,
    pub size: i64,
    pub checksum: String,
    pub format: &'static str,
    pub app: String,
    pub app_version: Option<i32>,
    pub max_attempts: i32,
}

impl Queue {
    fn message(&self) -> String {
        format!("admitted: {} bytes of {} for app {}", self.size, self.format, self.app)
    }
}

/// The agreement's limits an admission is judged against.
pub struct Limits {
    pub max_files_per_hour: u64,
    pub max_bytes_per_day: u64,
    pub disk_quota: u64,
}

/// Admission's common case, for a batch of one tenant's files in one statement: queues each job that
/// is no duplicate and within its limits, judged in order under the tenant's admission lock (the
/// store's `admit_jobs`, migration `grouped_writes`). Returns the jobs queued; each other one is
/// unchanged, and the caller takes the full path for it (`Admission`), which names the refusal.
pub async fn admit(db: &Db, tenant: &TenantId, batch: &[(Queue, Limits)]) -> sqlx::Result<Vec<JobId>> {
    admit_jobs(db, tenant, batch).await
}

/// The store's `admit_jobs` for `batch`.
async fn admit_jobs<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    tenant: &TenantId,
    batch: &[(Queue, Limits)],
) -> sqlx::Result<Vec<JobId>> {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let numbers = |f: &dyn Fn(&(Queue, Limits)) -> i64| batch.iter().map(f).collect::<Vec<i64>>();
    let texts = |f: &dyn Fn(&(Queue, Limits)) -> String| batch.iter().map(f).collect::<Vec<String>>();
    sqlx::query_scalar!(
        r#"select admit_jobs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) as "id!: JobId""#,
        tenant.as_str(),
        batch.iter().map(|(q, _)| q.id).collect::<Vec<_>>() as Vec<JobId>,
        &numbers(&|(q, _)| q.fence),
        &numbers(&|(q, _)| q.size),
        &texts(&|(q, _)| q.checksum.clone()),
        &texts(&|(q, _)| q.format.to_owned()),
        &texts(&|(q, _)| q.app.clone()),
        batch.iter().map(|(q, _)| q.app_version).collect::<Vec<_>>() as Vec<Option<i32>>,
        &batch.iter().map(|(q, _)| q.max_attempts).collect::<Vec<_>>(),
        &texts(&|(q, _)| q.message()),
        &numbers(&|(_, l)| clamp(l.max_files_per_hour)),
        &numbers(&|(_, l)| clamp(l.max_bytes_per_day)),
        &numbers(&|(_, l)| clamp(l.disk_quota)),
    )
    .fetch_all(conn)
    .await
}

/// The admission decision, taken under a per-tenant lock so that concurrent admissions (several
/// files at once, or several batch managers) cannot both squeeze under a rate limit.
pub struct Admission<'a> {
    tx: Transaction<'a, Postgres>,
    tenant: TenantId,
}

/// What the tenant used of its rate limits, as admission sees it: its admitted files in the last hour
/// and bytes in the last day (see the store's `tenant_rates`, migration `one_round_trip`).
pub async fn usage<'e>(conn: impl sqlx::PgExecutor<'e>, tenant: &TenantId) -> sqlx::Result<Usage> {
    let r = sqlx::query!(r#"select files as "files!", bytes as "bytes!" from tenant_rates($1)"#, tenant.as_str())
        .fetch_one(conn)
        .await?;
    Ok(Usage { files_last_hour: r.files, bytes_last_day: r.bytes })
}

/// Bytes the tenant's files take on the platform's disk, for its `disk_quota` (the store's
/// `tenant_disk_used`).
pub async fn disk_usage<'e>(conn: impl sqlx::PgExecutor<'e>, tenant: &TenantId) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select tenant_disk_used($1) as "bytes!""#, tenant.as_str()).fetch_one(conn).await
}

/// Tenants whose running disk total differs from the sum of their jobs' shares: none, unless the
/// store's trigger is wrong (the tests check it after crashes, retention and quotas).
pub async fn disk_totals_off(db: &Db) -> sqlx::Result<Vec<(String, i64, i64)>> {
    let off = sqlx::query!(
        r#"select coalesce(t.tenant, j.tenant) as "tenant!", coalesce(t.bytes, 0) as "counted!",
                  coalesce(j.bytes, 0)::bigint as "summed!"
           from tenant_disk t
           full join (select tenant, sum(job_disk_share(state, final_path, size_bytes)) bytes from jobs group by tenant) j
             on j.tenant = t.tenant
          where coalesce(t.bytes, 0) <> coalesce(j.bytes, 0)"#,
    )
    .fetch_all(db)
    .await?;
    Ok(off.into_iter().map(|r| (r.tenant, r.counted, r.summed)).collect())
}

pub struct Usage {
    pub files_last_hour: i64,
    pub bytes_last_day: i64,
}

impl<'a> Admission<'a> {
    pub async fn begin(db: &'a Db, tenant: &TenantId) -> sqlx::Result<Self> {
        let mut tx = db.begin().await?;
        sqlx::query!("select pg_advisory_xact_lock(hashtextextended('admission/' || $1, 0))", tenant.as_str())
            .execute(&mut *tx)
            .await?;
        Ok(Admission { tx, tenant: tenant.clone() })
    }

    /// What the tenant's files take on the platform's disk, under the admission lock.
    pub async fn disk_usage(&mut self) -> sqlx::Result<i64> {
        disk_usage(&mut *self.tx, &self.tenant).await
    }

    /// Another job with the same content that succeeded or is still on its way, and what was admitted
    /// in the rolling windows (see `usage`).
    pub async fn checks(&mut self, id: JobId, checksum: &str) -> sqlx::Result<(Option<(JobId, String)>, Usage)> {
        let r = sqlx::query!(
            r#"select d.id as "dup_id?: JobId", d.file_name as "dup_name?", u.files as "files!", u.bytes as "bytes!"
               from tenant_rates($1) u left join lateral duplicate_of($1, $2, $3) d on true"#,
            self.tenant.as_str(),
            checksum,
            id as JobId,
        )
        .fetch_one(&mut *self.tx)
        .await?;
        let duplicate = r.dup_id.zip(r.dup_name);
        Ok((duplicate, Usage { files_last_hour: r.files, bytes_last_day: r.bytes }))
    }

    /// Queues the claimed job as admitted, the checks done; false if another manager took the claim
    /// over. (The same statement as `admit`, with no limit: the lock it takes is this transaction's.)
    pub async fn queue(mut self, q: Queue) -> sqlx::Result<bool> {
        let unlimited = Limits { max_files_per_hour: u64::MAX, max_bytes_per_day: u64::MAX, disk_quota: u64::MAX };
        let queued = admit_jobs(&mut *self.tx, &self.tenant, &[(q, unlimited)]).await?;
        self.tx.commit().await?;
        Ok(!queued.is_empty())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn reject(
        mut self,
        id: JobId,
        size: Option<i64>,
        checksum: Option<&str>,
        reason: Reason,
        detail: &str,
        duplicate_of: Option<JobId>,
        final_path: Option<&str>,
        fence: i64,
    ) -> sqlx::Result<Option<Job>> {
        let job = change_job!(
            "update jobs set state = 'rejected', size_bytes = $3, checksum = $4, reason = $5, detail = $6,
                    duplicate_of = $7, final_path = $8, finished_at = now()
             where tenant = $1 and id = $2 and state = 'detected' and fence = $10 returning *",
            "$9",
            self.tenant.as_str(),
            id as JobId,
            size,
            checksum,
            reason.as_str(),
            detail,
            duplicate_of as Option<JobId>,
            final_path,
            format!("{reason}: {detail}"),
            fence,
        )
        .fetch_optional(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(job)
    }
}

/// Marks the start of an attempt under a new lease and returns its number and fencing number, or
/// `None` if the job is no longer queued (another runner, in this process or another, took it) or
/// the tenant already has `max_running` jobs running on any manager: the conditional update is the
/// claim, taken under a per-tenant lock so that managers together keep to the agreement.
pub async fn start_attempt(
    db: &Db,
    tenant: &TenantId,
    id: JobId,
    app_version: i32,
    lease: &Lease,
    max_running: i64,
) -> sqlx::Result<Option<(i32, i64)>> {
    // One statement, the lock held only while it runs (see the migration `one_round_trip`).
    let started = sqlx::query!(
        r#"select attempt as "attempt!", lease_fence as "fence!" from start_attempt($1, $2, $3, $4, $5, $6)"#,
        tenant.as_str(),
        id as JobId,
        app_version,
        lease.owner as ManagerId,
        lease.ttl_ms(),
        max_running,
    )
    .fetch_optional(db)
    .await?;
    Ok(started.map(|r| (r.attempt, r.fence)))
}

/// Queued jobs, for managers to pick up work queued by others (an operator's retry, another manager).
pub async fn queued(db: &Db) -> sqlx::Result<Vec<(JobId, String)>> {
    let queued = sqlx::query!(
        r#"select id as "id: JobId", tenant from jobs where state = 'queued' order by detected_at limit 10000"#
    )
    .fetch_all(db)
    .await?;
    Ok(queued.into_iter().map(|r| (r.id, r.tenant)).collect())
}

/// Why a job cannot be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(
        "job {0} is {1}; only failed jobs (and, with allow_duplicate, jobs rejected as duplicates) can be retried"
    )]
    NotRetryable(JobId, String),
    #[error("job {0} has no file to run again")]
    NoFile(JobId),
    #[error("the file of job {0} is no longer at {1}")]
    FileGone(JobId, String),
    /// Over a rate limit of the agreement: a retry is admitted again and counts like a new file.
    #[error("{1}")]
    OverLimit(Reason, String),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Whether `job` may be queued again.
pub fn retryable(job: &Job, allow_duplicate: bool) -> Result<(), RetryError> {
    let duplicate = job.state() == JobState::Rejected && job.reason == Some(Reason::Duplicate);
    if job.state() == JobState::Failed || (allow_duplicate && duplicate) {
        return Ok(());
    }
    let state = match &job.reason {
        Some(reason) => format!("{} ({reason})", job.state),
        None => job.state.to_string(),
    };
    Err(RetryError::NotRetryable(job.id, state))
}

/// Queues a final job again as asked by an operator or the tenant: a request the batch manager carries
/// out. The file stays where the job's outcome left it (`final_path`) until the run takes it back to
/// the work area (`batch::runner`); `fresh_attempts` is how many attempts the job gets now. A retry is
/// admitted again: `within_limits` judges it against the tenant's usage (under the admission lock,
/// like any admission) and it counts in the rolling windows like a new file.
pub async fn retry(
    db: &Db,
    tenant: &TenantId,
    job: &Job,
    allow_duplicate: bool,
    fresh_attempts: i32,
    within_limits: impl FnOnce(&Usage) -> Result<(), (Reason, String)>,
) -> Result<(), RetryError> {
    retryable(job, allow_duplicate)?;
    let kept = job.final_path.as_deref().ok_or(RetryError::NoFile(job.id))?;
    if !Path::new(kept).exists() {
        return Err(RetryError::FileGone(job.id, kept.to_owned()));
    }
    let why = if job.state() == JobState::Rejected { "retry asked, duplicate content allowed" } else { "retry asked" };
    let mut admission = Admission::begin(db, tenant).await?;
    let used = usage(&mut *admission.tx, tenant).await?;
    within_limits(&used).map_err(|(limit, detail)| RetryError::OverLimit(limit, detail))?;
    let tx = &mut admission.tx;
    change_job!(
        "update jobs set state = 'queued', reason = null, detail = null, attempts = 0, max_attempts = $3,
                finished_at = null, admitted_at = now()
         where tenant = $1 and id = $2 and state in ('failed', 'rejected') returning *",
        "$4",
        tenant.as_str(),
        job.id as JobId,
        fresh_attempts,
        why,
    )
    .fetch_optional(&mut **tx)
    .await?;
    count_admission(tx, tenant, job.size_bytes.unwrap_or(0)).await?;
    admission.tx.commit().await?;
    Ok(())
}

/// Counts a job admitted again in the tenant's usage (the store's `count_admission`).
async fn count_admission(tx: &mut sqlx::PgConnection, tenant: &TenantId, size: i64) -> sqlx::Result<()> {
    sqlx::query!("select count_admission($1, $2)", tenant.as_str(), size).execute(tx).await?;
    Ok(())
}

/// Remembers the app's process so that a manager restarted after a crash can end it.
pub async fn set_process(
    db: &Db,
    tenant: &TenantId,
    id: JobId,
    fence: i64,
    pid: i32,
    start_ticks: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update jobs set pid = $3, pid_start_ticks = $4 where tenant = $1 and id = $2 and fence = $5",
        tenant.as_str(),
        id as JobId,
        pid,
        start_ticks,
        fence,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// What one run of the app left behind.
#[derive(Clone, Debug, Default)]
pub struct AttemptReport {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub run_ms: i64,
    pub log: String,
    pub log_dropped_bytes: i64,
    pub records_ingested: Option<i64>,
    pub records_rejected: Option<i64>,
    pub bytes_read: Option<i64>,
    pub app_message: Option<String>,
}

/// How an attempt ends for the job.
pub enum AttemptEnd<'a> {
    Succeeded { final_path: &'a str },
    Retry { reason: Reason, detail: &'a str, delay_ms: i64 },
    Failed { reason: Reason, detail: &'a str, final_path: &'a str },
}

/// Records how an attempt ended, if the attempt's lease (`fence`) still holds the job; `None` when
/// another manager took it over meanwhile (its outcome is that manager's to record).
pub async fn finish_attempt(
    db: &Db,
    tenant: &TenantId,
    id: JobId,
    fence: i64,
    report: &AttemptReport,
    end: AttemptEnd<'_>,
) -> sqlx::Result<Option<Job>> {
    let (state, reason, detail, final_path, delay_ms) = match &end {
        AttemptEnd::Succeeded { final_path } => (JobState::Succeeded, None, None, Some(*final_path), None),
        AttemptEnd::Retry { reason, detail, delay_ms } => {
            (JobState::RetryWait, Some(*reason), Some(*detail), None, Some(*delay_ms))
        }
        AttemptEnd::Failed { reason, detail, final_path } => {
            (JobState::Failed, Some(*reason), Some(*detail), Some(*final_path), None)
        }
    };
    let message = match &end {
        AttemptEnd::Succeeded { .. } => format!(
            "ingested {} records ({} rejected) in {} ms",
            report.records_ingested.map_or("?".into(), |n| n.to_string()),
            report.records_rejected.map_or("?".into(), |n| n.to_string()),
            report.run_ms
        ),
        AttemptEnd::Retry { reason, detail, delay_ms } => format!("{reason}: {detail}; retrying in {delay_ms} ms"),
        AttemptEnd::Failed { reason, detail, .. } => format!("{reason}: {detail}"),
    };
    change_job!(
        "update jobs set state = $3, reason = $4, detail = $5, final_path = coalesce($6, final_path),
                not_before = case when $7::bigint is null then null else now() + make_interval(secs => $7::bigint / 1000.0) end,
                finished_at = case when $3 in ('succeeded', 'failed') then now() else null end,
                exit_code = $8, signal = $9, run_ms = $10, log = $11, log_dropped_bytes = $12,
                records_ingested = $13, records_rejected = $14, bytes_read = $15, app_message = $16,
                pid = null, pid_start_ticks = null
         where tenant = $1 and id = $2 and state = 'running' and fence = $18 returning *",
        "$17",
        tenant.as_str(),
        id as JobId,
        state.as_str(),
        reason.map(|r| r.as_str()),
        detail,
        final_path,
        delay_ms,
        report.exit_code,
        report.signal,
        report.run_ms,
        report.log,
        report.log_dropped_bytes,
        report.records_ingested,
        report.records_rejected,
        report.bytes_read,
        report.app_message,
        message,
        fence,
    )
    .fetch_optional(db)
    .await
}

/// Puts a job back in the queue (after its retry delay, or after a platform restart interrupted it).
pub async fn requeue(db: &Db, tenant: &TenantId, id: JobId, why: &str) -> sqlx::Result<()> {
    change_job!(
        "update jobs set state = 'queued', pid = null, pid_start_ticks = null
         where tenant = $1 and id = $2 and state in ('retry_wait', 'queued') returning *",
        "$3",
        tenant.as_str(),
        id as JobId,
        why,
    )
    .fetch_optional(db)
    .await?;
    Ok(())
}

/// Ends a job that cannot run at all (its app is missing, its input vanished, its recovery keeps
/// failing) without an attempt; `None` if the job moved on or another manager holds it (`fence`).
pub async fn fail_without_run(
    db: &Db,
    tenant: &TenantId,
    id: JobId,
    fence: i64,
    reason: Reason,
    detail: &str,
    final_path: Option<&str>,
) -> sqlx::Result<Option<Job>> {
    change_job!(
        "update jobs set state = 'failed', reason = $3, detail = $4, final_path = $5, finished_at = now()
         where tenant = $1 and id = $2 and state in ('detected', 'queued') and fence = $7 returning *",
        "$6",
        tenant.as_str(),
        id as JobId,
        reason.as_str(),
        detail,
        final_path,
        format!("{reason}: {detail}"),
        fence,
    )
    .fetch_optional(db)
    .await
}

/// A job as tenants see it: everything but the platform's own paths, process ids and the log.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: JobId,
    pub tenant: TenantId,
    pub file_name: String,
    pub state: JobState,
    /// Why it was rejected or failed (or is waiting to retry): a stable word (see `Reason`).
    pub reason: Option<Reason>,
    /// The reason in words, naming the limit and the value.
    pub detail: Option<String>,
    pub size_bytes: Option<i64>,
    pub checksum: Option<String>,
    pub format: Option<String>,
    pub app: Option<String>,
    pub app_version: Option<i32>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub records_ingested: Option<i64>,
    pub records_rejected: Option<i64>,
    pub bytes_read: Option<i64>,
    pub app_message: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duplicate_of: Option<JobId>,
    pub log_dropped_bytes: i64,
    pub detected_at: DateTime<Utc>,
    pub admitted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub run_ms: Option<i64>,
}

/// `JobSummary`s from the jobs table, `$tail` choosing which: the one typed column list of summaries.
macro_rules! summary_query {
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            JobSummary,
            r#"select id as "id: JobId", tenant as "tenant: TenantId", file_name, state as "state: JobState",
                      reason as "reason: Reason", detail, size_bytes, checksum, format, route_app as app, app_version,
                      attempts, max_attempts, records_ingested, records_rejected, bytes_read, app_message, exit_code,
                      signal, duplicate_of as "duplicate_of: JobId", log_dropped_bytes, detected_at, admitted_at,
                      started_at, finished_at, run_ms"# + $tail
            $(, $arg)*
        )
    };
}

/// The tenant's jobs that pass `f` (and come after `after`), newest first, made by `$query` (one of
/// the macros above).
macro_rules! filtered {
    ($query:ident, $db:expr, $tenant:expr, $f:expr, $after:expr) => {
        $query!(
            " from jobs
             where tenant = $1 and ($2::text is null or state = $2) and ($3::text is null or file_name = $3)
               and ($4::timestamptz is null or detected_at >= $4) and ($5::timestamptz is null or detected_at < $5)
               and ($6::timestamptz is null or (detected_at, id) < ($6, $7))
             order by detected_at desc, id desc limit $8",
            $tenant.as_str(),
            $f.state.map(|s| s.as_str()),
            $f.file_name.as_deref(),
            $f.since,
            $f.until,
            $after.map(|k| k.at),
            $after.map(|k| k.id) as Option<JobId>,
            $f.limit,
        )
        .fetch_all($db)
        .await
    };
}

/// One page of a tenant's jobs, newest first, by keyset (no OFFSET: page 10,000 costs what page 1 does).
pub async fn page(
    db: &Db,
    tenant: &TenantId,
    f: &ListFilter,
    after: Option<After<JobId>>,
) -> sqlx::Result<Vec<JobSummary>> {
    filtered!(summary_query, db, tenant, f, after)
}

/// The same as whole rows, for the platform's own use (and its tests).
pub async fn list(db: &Db, tenant: &TenantId, f: &ListFilter) -> sqlx::Result<Vec<Job>> {
    filtered!(job_query, db, tenant, f, None::<After<JobId>>)
}

/// The tenant's latest change stamp: it moves whenever any of the tenant's jobs is written.
pub async fn generation(db: &Db, tenant: &TenantId) -> sqlx::Result<i64> {
    // Retention's deletions move the stamp through `job_deletions` (see `retention`).
    sqlx::query_scalar!(
        r#"select greatest((select coalesce(max(changed), 0) from jobs where tenant = $1),
                           (select coalesce(max(changed), 0) from job_deletions where tenant = $1)) as "changed!""#,
        tenant.as_str(),
    )
    .fetch_one(db)
    .await
}

pub async fn summary(db: &Db, tenant: &TenantId, id: JobId) -> sqlx::Result<Option<JobSummary>> {
    summary_query!(" from jobs where tenant = $1 and id = $2", tenant.as_str(), id as JobId).fetch_optional(db).await
}

/// Filters for listing jobs; every one is optional.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub file_name: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Puts back a job whose attempt the platform itself interrupted (shutdown, crash, platform error);
/// an attempt that had started does not count against the app. A running job is put back only by
/// the holder of its lease (`fence`).
pub async fn requeue_interrupted(db: &Db, tenant: &TenantId, id: JobId, fence: i64, why: &str) -> sqlx::Result<()> {
    change_job!(
        "update jobs set state = 'queued', pid = null, pid_start_ticks = null,
                attempts = case when state = 'running' then greatest(attempts - 1, 0) else attempts end
         where tenant = $1 and id = $2 and (state = 'queued' or (state = 'running' and fence = $4)) returning *",
        "$3",
        tenant.as_str(),
        id as JobId,
        why,
        fence,
    )
    .fetch_optional(db)
    .await?;
    Ok(())
}

/// The app's log of a job (bounded when it was kept), if it has one.
pub async fn log(db: &Db, tenant: &TenantId, id: JobId) -> sqlx::Result<Option<String>> {
    let log = sqlx::query_scalar!("select log from jobs where tenant = $1 and id = $2", tenant.as_str(), id as JobId)
        .fetch_optional(db)
        .await?;
    Ok(log.flatten())
}

/// A tenant's work in progress: jobs waiting (detected, queued, retry_wait) and running, and the
/// names of its apps.
pub async fn in_progress(db: &Db, tenant: &TenantId) -> sqlx::Result<(i64, i64, i64)> {
    let r = sqlx::query!(
        r#"select (select count(*) from jobs where tenant = $1 and state = any($2)) as "waiting!",
                  (select count(*) from jobs where tenant = $1 and state = $3) as "running!",
                  (select count(distinct name) from apps where tenant = $1) as "apps!""#,
        tenant.as_str(),
        &[JobState::Detected, JobState::Queued, JobState::RetryWait] as &[JobState],
        JobState::Running.as_str(),
    )
    .fetch_one(db)
    .await?;
    Ok((r.waiting, r.running, r.apps))
}

/// Jobs not yet final, counted by tenant and state, across every tenant (the metrics' gauges).
pub async fn open_by_tenant(db: &Db) -> sqlx::Result<Vec<(String, JobState, i64)>> {
    let open = sqlx::query!(
        r#"select tenant, state as "state: JobState", count(*) as "count!" from jobs
           where state = any($1) group by 1, 2"#,
        &[JobState::Detected, JobState::Queued, JobState::Running, JobState::RetryWait] as &[JobState],
    )
    .fetch_all(db)
    .await?;
    Ok(open.into_iter().map(|r| (r.tenant, r.state, r.count)).collect())
}
