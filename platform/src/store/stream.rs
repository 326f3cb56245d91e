//! What the stream loop leaves for tenants to read: trusted metrics reports with the monitor's
//! verdict, reports it dropped and why, its notifications, and the manager's actions.

use chrono::{DateTime, Utc};

use super::{After, Db};
use crate::domain::{InstanceId, NotificationId};
use crate::tenant::TenantId;

/// A trusted report as stored, with the lag the monitor measured and its verdict.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
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
    sqlx::query_scalar!(
        "insert into metrics_reports (tenant, app, instance, window_start, window_end, messages, bytes, rejected,
             avg_ingestion_ms, p95_ingestion_ms, processing_rate, throughput_bytes_per_s, lag, verdict)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) returning id",
        r.tenant.as_str(),
        r.app,
        r.instance as InstanceId,
        r.window_start,
        r.window_end,
        r.messages,
        r.bytes,
        r.rejected,
        r.avg_ingestion_ms,
        r.p95_ingestion_ms,
        r.processing_rate,
        r.throughput_bytes_per_s,
        r.lag,
        r.verdict,
    )
    .fetch_one(db)
    .await
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
    sqlx::query_as!(
        StoredReport,
        r#"select id, tenant as "tenant: TenantId", app, instance as "instance: InstanceId", window_start, window_end,
                  messages, bytes, rejected, avg_ingestion_ms, p95_ingestion_ms, processing_rate,
                  throughput_bytes_per_s, lag, verdict, received_at
             from metrics_reports where tenant = $1 and ($2::text is null or app = $2)
           and ($3::uuid is null or instance = $3) and ($4::timestamptz is null or received_at >= $4)
           and ($6::timestamptz is null or (received_at, id) < ($6, $7))
         order by received_at desc, id desc limit $5"#,
        tenant.as_str(),
        f.app,
        f.instance as Option<InstanceId>,
        f.since,
        f.limit,
        f.after.map(|a| a.at),
        f.after.map(|a| a.id),
    )
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
    sqlx::query!(
        "insert into dropped_reports (tenant, key, reason, detail) values ($1, $2, $3, $4)",
        tenant,
        key,
        reason,
        detail,
    )
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DroppedCount {
    pub reason: String,
    pub count: i64,
    pub last_detail: String,
    pub last_at: DateTime<Utc>,
}

/// Dropped reports whose key names the tenant, by reason.
pub async fn dropped(db: &Db, tenant: &TenantId) -> sqlx::Result<Vec<DroppedCount>> {
    sqlx::query_as!(
        DroppedCount,
        r#"select reason, count(*) as "count!",
                (array_agg(detail order by id desc))[1] as "last_detail!", max(received_at) as "last_at!"
           from dropped_reports where tenant = $1 group by reason order by reason"#,
        tenant.as_str(),
    )
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
    sqlx::query!(
        "insert into notifications (id, tenant, app, instance, kind, action, reasons, at)
         values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (id) do nothing",
        n.id as NotificationId,
        n.tenant.as_str(),
        n.app,
        n.instance as Option<InstanceId>,
        n.kind,
        n.action,
        sqlx::types::Json(&n.reasons) as _,
        n.at,
    )
    .execute(db)
    .await?;
    Ok(())
}

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

/// `NotificationRow`s from the notifications table, `$tail` choosing which.
macro_rules! notification_query {
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            NotificationRow,
            r#"select id as "id: NotificationId", tenant as "tenant: TenantId", app, instance as "instance: InstanceId",
                      kind, action, reasons as "reasons: sqlx::types::Json<Vec<Reason>>", at
                 from notifications"# + $tail
            $(, $arg)*
        )
    };
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
    let rows = notification_query!(
        " where tenant = $1 and ($2::timestamptz is null or at >= $2)
           and ($4::timestamptz is null or (at, id) < ($4, $5))
         order by at desc, id desc limit $3",
        tenant.as_str(),
        since,
        limit,
        after.map(|a| a.at),
        after.map(|a| a.id) as Option<NotificationId>,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Notification::from).collect())
}

/// The notification the monitor stored under `id`, if it did.
pub async fn notification(db: &Db, id: NotificationId) -> sqlx::Result<Option<Notification>> {
    let row = notification_query!(" where id = $1", id as NotificationId).fetch_optional(db).await?;
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
    sqlx::query!(
        r#"insert into control_dropped (reason, detail, tenant, notification, partition, "offset")
         values ($1, $2, $3, $4, $5, $6)"#,
        d.reason,
        clean(d.detail),
        d.tenant.map(clean),
        d.notification as Option<NotificationId>,
        d.partition,
        d.offset,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Control messages dropped, by reason (for operators and the tests).
pub async fn control_dropped(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    let dropped =
        sqlx::query!(r#"select reason, count(*) as "count!" from control_dropped group by reason order by reason"#)
            .fetch_all(db)
            .await?;
    Ok(dropped.into_iter().map(|r| (r.reason, r.count)).collect())
}

/// What the manager did about a notification.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
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
    let done = sqlx::query!(
        "insert into stream_actions (tenant, app, notification, action, outcome, detail, instances_before, instances_after)
         values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (notification) do nothing",
        a.tenant,
        a.app,
        a.notification as NotificationId,
        a.action,
        a.outcome,
        a.detail,
        a.before as i32,
        a.after as i32,
    )
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn already_acted(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    notification: NotificationId,
) -> sqlx::Result<bool> {
    let row =
        sqlx::query_scalar!("select id from stream_actions where notification = $1", notification as NotificationId)
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
    sqlx::query_scalar!(
        "select max(at) from stream_actions where tenant = $1 and app = $2 and outcome = 'applied' and action <> 'notify'",
        tenant.as_str(),
        app,
    )
    .fetch_one(&mut **tx)
    .await
}

pub async fn actions(
    db: &Db,
    tenant: &TenantId,
    since: Option<DateTime<Utc>>,
    limit: i64,
    after: Option<After<i64>>,
) -> sqlx::Result<Vec<Action>> {
    sqlx::query_as!(
        Action,
        r#"select id, tenant as "tenant: TenantId", app, notification as "notification: NotificationId", action,
                  outcome, detail, instances_before, instances_after, at
             from stream_actions where tenant = $1 and ($2::timestamptz is null or at >= $2)
           and ($4::timestamptz is null or (at, id) < ($4, $5))
         order by at desc, id desc limit $3"#,
        tenant.as_str(),
        since,
        limit,
        after.map(|a| a.at),
        after.map(|a| a.id),
    )
    .fetch_all(db)
    .await
}
