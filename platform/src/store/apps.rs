//! The app registry's rows: one per installed version of a tenant's program.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::Db;
use crate::domain::AppId;
use crate::tenant::TenantId;

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct App {
    pub id: AppId,
    pub tenant: TenantId,
    pub name: String,
    pub version: i32,
    pub kind: crate::domain::AppKind,
    /// Relative to `dir`.
    pub entrypoint: String,
    pub dir: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// Serialises version numbering per (tenant, app) so concurrent uploads get distinct versions.
pub async fn next_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    name: &str,
) -> sqlx::Result<i32> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('app/' || $1 || '/' || $2, 0))")
        .bind(tenant.as_str())
        .bind(name)
        .execute(&mut **tx)
        .await?;
    let (v,): (Option<i32>,) = sqlx::query_as("select max(version) from apps where tenant = $1 and name = $2")
        .bind(tenant.as_str())
        .bind(name)
        .fetch_one(&mut **tx)
        .await?;
    Ok(v.unwrap_or(0) + 1)
}

pub async fn insert(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, app: &App) -> sqlx::Result<()> {
    sqlx::query(
        "insert into apps (id, tenant, name, version, kind, entrypoint, dir, sha256, size_bytes)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(app.id)
    .bind(&app.tenant)
    .bind(&app.name)
    .bind(app.version)
    .bind(app.kind)
    .bind(&app.entrypoint)
    .bind(&app.dir)
    .bind(&app.sha256)
    .bind(app.size_bytes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes the app's versions up to `up_to` that nothing uses (not `pinned` by a route, not run by
/// an open job, not run by an instance wanted running); returns (version, folder) of each.
pub async fn prune_versions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    name: &str,
    up_to: i32,
    pinned: &[i32],
) -> sqlx::Result<Vec<(i32, String)>> {
    sqlx::query_as(
        "delete from apps a where tenant = $1 and name = $2 and version <= $3 and version <> all($4)
           and not exists (select 1 from jobs j where j.tenant = $1 and j.route_app = $2 and j.app_version = a.version
                             and j.state in ('queued', 'running', 'retry_wait'))
           and not exists (select 1 from stream_instances s where s.tenant = $1 and s.app = $2
                             and s.app_version = a.version and s.desired = 'running')
         returning version, dir",
    )
    .bind(tenant.as_str())
    .bind(name)
    .bind(up_to)
    .bind(pinned)
    .fetch_all(&mut **tx)
    .await
}

/// Distinct app names a tenant has, for the `max_apps` limit.
pub async fn count_names(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, tenant: &TenantId) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("select count(distinct name) from apps where tenant = $1")
        .bind(tenant.as_str())
        .fetch_one(&mut **tx)
        .await?;
    Ok(n)
}

/// The version to run: `version` if pinned, else the newest.
pub async fn resolve(db: &Db, tenant: &TenantId, name: &str, version: Option<i32>) -> sqlx::Result<Option<App>> {
    sqlx::query_as(
        "select * from apps where tenant = $1 and name = $2 and ($3::int is null or version = $3)
         order by version desc limit 1",
    )
    .bind(tenant.as_str())
    .bind(name)
    .bind(version)
    .fetch_optional(db)
    .await
}

pub async fn list(db: &Db, tenant: &TenantId) -> sqlx::Result<Vec<App>> {
    sqlx::query_as("select * from apps where tenant = $1 order by name, version desc")
        .bind(tenant.as_str())
        .fetch_all(db)
        .await
}

/// Jobs of the tenant waiting for the app or running it, and instances of it wanted running.
pub async fn jobs_using(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    name: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select (select count(*) from jobs where tenant = $1 and route_app = $2 and state in ('queued', 'running', 'retry_wait'))
              + (select count(*) from stream_instances where tenant = $1 and app = $2 and desired = 'running')",
    )
    .bind(tenant.as_str())
    .bind(name)
    .fetch_one(&mut **tx)
    .await
}

pub async fn delete(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, tenant: &TenantId, name: &str) -> sqlx::Result<()> {
    sqlx::query("delete from apps where tenant = $1 and name = $2")
        .bind(tenant.as_str())
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
