//! What the stream loop leaves for tenants to read: trusted metrics reports with the monitor's
//! verdict, reports it dropped and why, its notifications, and the manager's actions.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{After, Db};
use crate::domain::{InstanceId, NotificationId};
use crate::tenant::TenantId;

/// A trusted report as stored, with the lag the monitor measured and its verdict.
#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct StoredReport {
    pub id: i64,
    pub tenant: TenantId,
    pub app: String,
    pub instance: InstanceId,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub messages: i64,
    pub bytes: i64,
    pub rejected: i64,
    pub avg_ingestion_ms: f64,
    pub p95_ingestion_ms: f64,
    pub processing_rate: f64,
    pub throughput_bytes_per_s: f64,
    /// Messages waiting in the app's consumer group when the report arrived (measured at the broker).
    pub lag: Option<i64>,
    /// `ok`, `idle` (nothing waiting: not judged) or `breach`.
    pub verdict: String,
    pub received_at: DateTime<Utc>,
}

pub async fn insert_report(db: &Db, r: &StoredReport) -> sqlx::Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "insert into metrics_reports (tenant, app, instance, window_start, window_end, messages, bytes, rejected,
             avg_ingestion_ms, p95_ingestion_ms, processing_rate, throughput_bytes_per_s, lag, verdict)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) returning id",
    )
    .bind(&r.tenant)
    .bind(&r.app)
    .bind(r.instance)
    .bind(r.window_start)
    .bind(r.window_end)
    .bind(r.messages)
    .bind(r.bytes)
    .bind(r.rejected)
    .bind(r.avg_ingestion_ms)
    .bind(r.p95_ingestion_ms)
    .bind(r.processing_rate)
    .bind(r.throughput_bytes_per_s)
    .bind(r.lag)
    .bind(&r.verdict)
    .fetch_one(db)
    .await?;
    Ok(id)
}

pub struct ReportFilter<'a> {
    pub app: Option<&'a str>,
    pub instance: Option<InstanceId>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
    pub after: Option<After<i64>>,
}

/// The tenant's reports, newest first.
pub async fn reports(db: &Db, tenant: &TenantId, f: &ReportFilter<'_>) -> sqlx::Result<Vec<StoredReport>> {
    sqlx::query_as(
        "select * from metrics_reports where tenant = $1 and ($2::text is null or app = $2)
           and ($3::uuid is null or instance = $3) and ($4::timestamptz is null or received_at >= $4)
           and ($6::timestamptz is null or (received_at, id) < ($6, $7))
         order by received_at desc, id desc limit $5",
    )
    .bind(tenant.as_str())
    .bind(f.app)
    .bind(f.instance)
    .bind(f.since)
    .bind(f.limit)
    .bind(f.after.map(|a| a.at))
    .bind(f.after.map(|a| a.id))
    .fetch_all(db)
    .await
}

/// A report the monitor did not trust.
pub async fn insert_dropped(
    db: &Db,
    tenant: Option<&str>,
    key: Option<&str>,
    reason: &str,
    detail: &str,
) -> sqlx::Result<()> {
    sqlx::query("insert into dropped_reports (tenant, key, reason, detail) values ($1, $2, $3, $4)")
        .bind(tenant)
        .bind(key)
        .bind(reason)
        .bind(detail)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DroppedCount {
    pub reason: String,
    pub count: i64,
    pub last_detail: String,
    pub last_at: DateTime<Utc>,
}

/// Dropped reports whose key names the tenant, by reason.
pub async fn dropped(db: &Db, tenant: &TenantId) -> sqlx::Result<Vec<DroppedCount>> {
    sqlx::query_as(
        "select reason, count(*) as count,
                (array_agg(detail order by id desc))[1] as last_detail, max(received_at) as last_at
           from dropped_reports where tenant = $1 group by reason order by reason",
    )
    .bind(tenant.as_str())
    .fetch_all(db)
    .await
}

/// The notification contract (monitor to manager), also stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub version: u32,
    pub id: NotificationId,
    pub tenant: TenantId,
    pub app: String,
    pub instance: Option<InstanceId>,
    /// `below_threshold` or `silent` (an instance stopped reporting).
    pub kind: String,
    pub at: DateTime<Utc>,
    /// scale_out, restart or notify.
    pub action: String,
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    pub metric: String,
    pub observed: f64,
    pub threshold: f64,
}

pub async fn insert_notification(db: &Db, n: &Notification) -> sqlx::Result<()> {
    sqlx::query(
        "insert into notifications (id, tenant, app, instance, kind, action, reasons, at)
         values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (id) do nothing",
    )
    .bind(n.id)
    .bind(&n.tenant)
    .bind(&n.app)
    .bind(n.instance)
    .bind(&n.kind)
    .bind(&n.action)
    .bind(sqlx::types::Json(&n.reasons))
    .bind(n.at)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct NotificationRow {
    id: NotificationId,
    tenant: TenantId,
    app: String,
    instance: Option<InstanceId>,
    kind: String,
    action: String,
    reasons: sqlx::types::Json<Vec<Reason>>,
    at: DateTime<Utc>,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Self {
        Notification {
            version: 1,
            id: r.id,
            tenant: r.tenant,
            app: r.app,
            instance: r.instance,
            kind: r.kind,
            at: r.at,
            action: r.action,
            reasons: r.reasons.0,
        }
    }
}

pub async fn notifications(
    db: &Db,
    tenant: &TenantId,
    since: Option<DateTime<Utc>>,
    limit: i64,
    after: Option<After<NotificationId>>,
) -> sqlx::Result<Vec<Notification>> {
    let rows: Vec<NotificationRow> = sqlx::query_as(
        "select * from notifications where tenant = $1 and ($2::timestamptz is null or at >= $2)
           and ($4::timestamptz is null or (at, id) < ($4, $5))
         order by at desc, id desc limit $3",
    )
    .bind(tenant.as_str())
    .bind(since)
    .bind(limit)
    .bind(after.map(|a| a.at))
    .bind(after.map(|a| a.id))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Notification::from).collect())
}

/// The notification the monitor stored under `id`, if it did.
pub async fn notification(db: &Db, id: NotificationId) -> sqlx::Result<Option<Notification>> {
    let row: Option<NotificationRow> =
        sqlx::query_as("select * from notifications where id = $1").bind(id).fetch_optional(db).await?;
    Ok(row.map(Notification::from))
}

/// A message on the control topic the manager did not act on, and why.
pub struct DroppedControl<'a> {
    pub reason: &'a str,
    pub detail: &'a str,
    pub tenant: Option<&'a str>,
    pub notification: Option<NotificationId>,
    pub partition: i32,
    pub offset: i64,
}

pub async fn insert_control_dropped(db: &Db, d: &DroppedControl<'_>) -> sqlx::Result<()> {
    // Whatever the message held, PostgreSQL text takes no NUL.
    let clean = |s: &str| s.replace('\0', "\u{FFFD}");
    sqlx::query(
        "insert into control_dropped (reason, detail, tenant, notification, partition, \"offset\")
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(d.reason)
    .bind(clean(d.detail))
    .bind(d.tenant.map(clean))
    .bind(d.notification)
    .bind(d.partition)
    .bind(d.offset)
    .execute(db)
    .await?;
    Ok(())
}

/// Control messages dropped, by reason (for operators and the tests).
pub async fn control_dropped(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select reason, count(*) from control_dropped group by reason order by reason").fetch_all(db).await
}

/// What the manager did about a notification.
#[derive(Clone, Debug, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Action {
    pub id: i64,
    pub tenant: TenantId,
    pub app: String,
    pub notification: Option<NotificationId>,
    pub action: String,
    /// `applied` or `skipped`.
    pub outcome: String,
    pub detail: String,
    pub instances_before: i32,
    pub instances_after: i32,
    pub at: DateTime<Utc>,
}

pub struct NewAction<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub notification: NotificationId,
    pub action: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub before: u64,
    pub after: u64,
}

/// Records an action inside `tx`; false if this notification was already acted on.
pub async fn insert_action(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, a: &NewAction<'_>) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "insert into stream_actions (tenant, app, notification, action, outcome, detail, instances_before, instances_after)
         values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (notification) do nothing",
    )
    .bind(a.tenant)
    .bind(a.app)
    .bind(a.notification)
    .bind(a.action)
    .bind(a.outcome)
    .bind(a.detail)
    .bind(a.before as i32)
    .bind(a.after as i32)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn already_acted(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    notification: NotificationId,
) -> sqlx::Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("select id from stream_actions where notification = $1")
        .bind(notification)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// When the manager last changed anything for the tenant's app (the cooldown starts there).
pub async fn last_applied(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    app: &str,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    let (at,): (Option<DateTime<Utc>>,) = sqlx::query_as(
        "select max(at) from stream_actions where tenant = $1 and app = $2 and outcome = 'applied' and action <> 'notify'",
    )
    .bind(tenant.as_str())
    .bind(app)
    .fetch_one(&mut **tx)
    .await?;
    Ok(at)
}

pub async fn actions(
    db: &Db,
    tenant: &TenantId,
    since: Option<DateTime<Utc>>,
    limit: i64,
    after: Option<After<i64>>,
) -> sqlx::Result<Vec<Action>> {
    sqlx::query_as(
        "select * from stream_actions where tenant = $1 and ($2::timestamptz is null or at >= $2)
           and ($4::timestamptz is null or (at, id) < ($4, $5))
         order by at desc, id desc limit $3",
    )
    .bind(tenant.as_str())
    .bind(since)
    .bind(limit)
    .bind(after.map(|a| a.at))
    .bind(after.map(|a| a.id))
    .fetch_all(db)
    .await
}
