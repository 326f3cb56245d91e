//! Stream app instances: what the control plane and the manager's reaction want (`desired`) and what
//! the stream manager last saw (`state`). An instance row with `desired = running` is exactly one
//! supervised program; the manager reconciles the two after every change and every restart.

use chrono::{DateTime, Utc};

use super::{After, Db};
use crate::domain::{Desired, InstanceId, InstanceState};
use crate::tenant::TenantId;

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub tenant: TenantId,
    pub app: String,
    pub app_version: i32,
    #[schema(example = "process")]
    pub runtime: String,
    /// What was asked.
    pub desired: Desired,
    /// What the manager last saw.
    pub state: InstanceState,
    /// Restarts since the instance last ran stably (the agreement's `max_restarts` caps these).
    pub restarts: i32,
    pub restarts_total: i32,
    pub pid: Option<i32>,
    #[serde(skip)]
    pub start_ticks: Option<i64>,
    pub container_id: Option<String>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// What happened last, in words.
    pub detail: Option<String>,
    /// `api`, or the notification whose action created it.
    pub cause: String,
    /// Its place in the app's consumer group: it joins as the static member `<group>-<member>`, which
    /// a replacement takes over (see `messaging::groups`).
    pub member: Option<i32>,
    /// When the platform removed its member from the group after it ended.
    #[serde(skip)]
    pub member_released_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The key the instance signs its metrics reports with: never shown, handed only to its program.
    #[serde(skip)]
    pub report_key: String,
}

/// `Instance`s: the SQL pieces `[$head]` (a statement whose rows the columns come from, or none), the
/// one typed column list every query returning instances selects, then `$tail`. The `!` marks
/// columns never null (PostgreSQL does not say so for a `with` clause's columns).
macro_rules! instance_query {
    ([$($head:tt),*] $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Instance,
            $($head +)* r#"select id as "id!: InstanceId", tenant as "tenant!: TenantId", app as "app!",
                app_version as "app_version!", runtime as "runtime!", desired as "desired!: Desired",
                state as "state!: InstanceState", restarts as "restarts!", restarts_total as "restarts_total!", pid,
                start_ticks, container_id, exit_code, exit_signal, detail, cause as "cause!", member,
                member_released_at, created_at as "created_at!", started_at, ended_at, updated_at as "updated_at!",
                report_key as "report_key!""# + $tail
            $(, $arg)*
        )
    };
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        instance_query!([] $tail $(, $arg)*)
    };
}

/// Why new instances were refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting {asked} more would make {total} instances for tenant {tenant}, over the agreement's max_instances of {max} ({running} running or wanted)")]
    OverLimit { tenant: String, asked: u64, running: u64, total: u64, max: u64 },
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Serialises changes to one tenant's instance count, so concurrent starts and scale-outs never pass
/// `max_instances` together.
pub async fn lock_tenant(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, tenant: &TenantId) -> sqlx::Result<()> {
    sqlx::query!("select pg_advisory_xact_lock(hashtextextended('instances/' || $1, 0))", tenant.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Instances of the tenant's apps that run or are wanted running (its connectors are not counted:
/// the agreement that declares them bounds them).
pub async fn count_wanted(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, tenant: &TenantId) -> sqlx::Result<u64> {
    let n = sqlx::query_scalar!(
        r#"select count(*) as "n!" from stream_instances
            where tenant = $1 and desired = 'running' and app not like 'source:%' and app not like 'sink:%'"#,
        tenant.as_str()
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(n as u64)
}

pub struct NewInstances<'a> {
    pub tenant: &'a TenantId,
    pub app: &'a str,
    pub app_version: i32,
    pub runtime: &'a str,
    pub count: u64,
    pub max: u64,
    pub cause: &'a str,
}

/// Records the one instance of a declared connector (`app` is `source:<name>`), unless one is wanted
/// already or one of the same declaration (`cause`) failed: a connector that keeps failing stays
/// failed until its declaration or its secret changes. Returns the new instance, if any.
pub async fn ensure_connector(
    db: &Db,
    tenant: &TenantId,
    app: &str,
    runtime: &str,
    cause: &str,
) -> sqlx::Result<Option<Instance>> {
    let mut tx = db.begin().await?;
    lock_tenant(&mut tx, tenant).await?;
    let present = sqlx::query_scalar!(
        r#"select exists (select from stream_instances where tenant = $1 and app = $2
             and (desired = 'running' or (cause = $3 and state = 'failed'))) as "present!""#,
        tenant.as_str(),
        app,
        cause,
    )
    .fetch_one(&mut *tx)
    .await?;
    if present {
        return Ok(None);
    }
    let row = instance_query!(
        [
            "with i as (insert into stream_instances
                 (id, tenant, app, app_version, runtime, desired, state, cause, detail)
               values ($1, $2, $3, 0, $4, 'running', 'starting', $5, 'declared by the agreement; waiting for the stream manager')
               returning *) "
        ] " from i",
        InstanceId::now() as InstanceId,
        tenant.as_str(),
        app,
        runtime,
        cause,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Records `count` new wanted instances inside `tx` (which holds the tenant's lock), refusing to pass
/// `max`. Each takes the lowest group member no live instance of the app holds.
pub async fn create(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: &NewInstances<'_>,
) -> Result<Vec<Instance>, StartError> {
    let running = count_wanted(tx, new.tenant).await?;
    if running + new.count > new.max {
        return Err(StartError::OverLimit {
            tenant: new.tenant.to_string(),
            asked: new.count,
            running,
            total: running + new.count,
            max: new.max,
        });
    }
    // Members of the app's live instances (wanted, or whose program may still run).
    let mut taken: Vec<i32> = sqlx::query_scalar!(
        r#"select member as "member!" from stream_instances
          where tenant = $1 and app = $2 and member is not null
            and (desired = 'running' or state not in ('exited', 'failed'))"#,
        new.tenant.as_str(),
        new.app,
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::new();
    for _ in 0..new.count {
        let member = (0..).find(|m| !taken.contains(m)).expect("a free member");
        taken.push(member);
        let row = instance_query!(
            [
                "with i as (insert into stream_instances
                     (id, tenant, app, app_version, runtime, desired, state, cause, detail, member)
                   values ($1, $2, $3, $4, $5, 'running', 'starting', $6, 'waiting for the stream manager', $7)
                   returning *) "
            ] " from i",
            InstanceId::now() as InstanceId,
            new.tenant.as_str(),
            new.app,
            new.app_version,
            new.runtime,
            new.cause,
            member,
        )
        .fetch_one(&mut **tx)
        .await?;
        out.push(row);
    }
    Ok(out)
}

pub async fn get(db: &Db, tenant: &TenantId, id: InstanceId) -> sqlx::Result<Option<Instance>> {
    instance_query!(" from stream_instances where tenant = $1 and id = $2", tenant.as_str(), id as InstanceId)
        .fetch_optional(db)
        .await
}

/// The tenant's instances, newest first, optionally of one app and in one state.
pub async fn list(
    db: &Db,
    tenant: &TenantId,
    app: Option<&str>,
    state: Option<InstanceState>,
    limit: i64,
    after: Option<After<InstanceId>>,
) -> sqlx::Result<Vec<Instance>> {
    instance_query!(
        " from stream_instances where tenant = $1 and ($2::text is null or app = $2)
           and ($3::text is null or state = $3) and ($5::timestamptz is null or (created_at, id) < ($5, $6))
         order by created_at desc, id desc limit $4",
        tenant.as_str(),
        app,
        state.map(|s| s.as_str()),
        limit,
        after.map(|a| a.at),
        after.map(|a| a.id) as Option<InstanceId>,
    )
    .fetch_all(db)
    .await
}

/// Every instance that should be running, on any tenant (the manager's work list).
pub async fn wanted(db: &Db) -> sqlx::Result<Vec<Instance>> {
    instance_query!(" from stream_instances where desired = 'running' order by created_at").fetch_all(db).await
}

/// Instances asked to stop whose program may still run.
pub async fn stopping(db: &Db) -> sqlx::Result<Vec<Instance>> {
    instance_query!(" from stream_instances where desired = 'stopped' and state not in ('exited', 'failed')")
        .fetch_all(db)
        .await
}

/// Asks for instances to stop: one (`id`) or every instance of `app`. Returns those it changed.
pub async fn request_stop(
    db: &Db,
    tenant: &TenantId,
    id: Option<InstanceId>,
    app: Option<&str>,
) -> sqlx::Result<Vec<Instance>> {
    // Under the tenant's lock, like every change to its instance count: a scale-out decided while the
    // stop was under way either sees the stop (and is skipped) or committed first (and is stopped here).
    let mut tx = db.begin().await?;
    lock_tenant(&mut tx, tenant).await?;
    let stopped = instance_query!(
        [
            "with s as (update stream_instances
                set desired = 'stopped',
                    state = case when state in ('exited', 'failed') then state else 'stopping' end,
                    updated_at = now()
              where tenant = $1 and ($2::uuid is null or id = $2) and ($3::text is null or app = $3)
                and desired = 'running'
              returning *) "
        ] " from s",
        tenant.as_str(),
        id as Option<InstanceId>,
        app,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(stopped)
}

/// The program of an instance started.
pub async fn started(
    db: &Db,
    id: InstanceId,
    pid: Option<i32>,
    ticks: Option<i64>,
    container: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "update stream_instances
            set state = case when desired = 'running' then 'running' else 'stopping' end,
                pid = $2, start_ticks = $3, container_id = $4, started_at = now(),
                exit_code = null, exit_signal = null, detail = 'running', updated_at = now()
          where id = $1",
        id as InstanceId,
        pid,
        ticks,
        container,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// How a run of an instance ended and what the manager does next.
pub struct RunEnd<'a> {
    /// Restarting, or final.
    pub state: InstanceState,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub restarts: i32,
    /// The run counts as a restart (total).
    pub counted: bool,
    pub detail: &'a str,
}

pub async fn ended(db: &Db, id: InstanceId, end: &RunEnd<'_>) -> sqlx::Result<()> {
    let last = end.state.is_final();
    sqlx::query!(
        "update stream_instances
            set state = $2, exit_code = $3, exit_signal = $4, restarts = $5,
                restarts_total = restarts_total + $6::int, detail = $7,
                desired = case when $8 then 'stopped' else desired end,
                ended_at = now(), updated_at = now()
          where id = $1",
        id as InstanceId,
        end.state.as_str(),
        end.exit_code,
        end.exit_signal,
        end.restarts,
        i32::from(end.counted),
        end.detail,
        last,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A state change with no exit (starting, stopping, or a failure to start at all).
pub async fn set_state(db: &Db, id: InstanceId, state: InstanceState, detail: &str) -> sqlx::Result<()> {
    let last = state.is_final();
    sqlx::query!(
        "update stream_instances
            set state = $2, detail = $3, updated_at = now(),
                desired = case when $4 then 'stopped' else desired end,
                ended_at = case when $4 then now() else ended_at end
          where id = $1",
        id as InstanceId,
        state.as_str(),
        detail,
        last,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Apps with ended instances whose group member may still be in the group: `(tenant, app)`.
pub async fn with_unreleased_members(db: &Db) -> sqlx::Result<Vec<(String, String)>> {
    let apps = sqlx::query!(
        "select distinct tenant, app from stream_instances
          where member_released_at is null and state in ('exited', 'failed')",
    )
    .fetch_all(db)
    .await?;
    Ok(apps.into_iter().map(|r| (r.tenant, r.app)).collect())
}

/// An ended instance whose group member was not released.
pub struct Unreleased {
    pub id: InstanceId,
    /// None for instances recorded before members existed (their member is their id).
    pub member: Option<i32>,
    /// A live instance holds the member again (a replacement): it is not to be removed.
    pub taken_over: bool,
    /// Ended longer ago than any session timeout: the broker has given up on its member too.
    pub long_ago: bool,
}

/// The app's ended instances whose member was not released. Inside `tx`, which holds the tenant's
/// lock, so no instance takes a member meanwhile.
pub async fn unreleased_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
    app: &str,
    long_ago: std::time::Duration,
) -> sqlx::Result<Vec<Unreleased>> {
    sqlx::query_as!(
        Unreleased,
        r#"select e.id as "id: InstanceId", e.member,
                e.member is not null and exists (
                    select 1 from stream_instances l
                     where l.tenant = e.tenant and l.app = e.app and l.member = e.member
                       and (l.desired = 'running' or l.state not in ('exited', 'failed'))) as "taken_over!",
                coalesce(e.ended_at < now() - make_interval(secs => $3), false) as "long_ago!"
           from stream_instances e
          where e.tenant = $1 and e.app = $2 and e.member_released_at is null
            and e.state in ('exited', 'failed')"#,
        tenant,
        app,
        long_ago.as_secs_f64(),
    )
    .fetch_all(&mut **tx)
    .await
}

pub async fn members_released(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, ids: &[InstanceId]) -> sqlx::Result<()> {
    sqlx::query!("update stream_instances set member_released_at = now() where id = any($1)", ids as &[InstanceId])
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An instance's tenant, app and what is asked of it, read inside `tx`.
pub async fn owner(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: InstanceId,
) -> sqlx::Result<Option<(String, String, Desired)>> {
    let owner = sqlx::query!(
        r#"select tenant, app, desired as "desired: Desired" from stream_instances where id = $1"#,
        id as InstanceId
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(owner.map(|r| (r.tenant, r.app, r.desired)))
}

/// Instances of the tenant's app that are wanted running, inside `tx`.
pub async fn count_wanted_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    app: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from stream_instances where tenant = $1 and app = $2 and desired = $3"#,
        tenant.as_str(),
        app,
        Desired::Running.as_str(),
    )
    .fetch_one(&mut **tx)
    .await
}

/// The app version and runtime a new instance of the app copies: those of instance `like` when it is
/// one of the app's, else of the app's newest instance.
pub async fn version_to_copy(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    app: &str,
    like: Option<InstanceId>,
) -> sqlx::Result<Option<(i32, String)>> {
    let copied = sqlx::query!(
        "select app_version, runtime from stream_instances where tenant = $1 and app = $2
         order by (id = $3) desc, created_at desc limit 1",
        tenant.as_str(),
        app,
        like as Option<InstanceId>,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(copied.map(|r| (r.app_version, r.runtime)))
}
