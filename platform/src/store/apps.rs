//! The app registry's rows: one per installed version of a tenant's program.

use chrono::{DateTime, Utc};

use super::Db;
use crate::domain::{AppId, AppKind};
use crate::tenant::TenantId;

#[derive(Clone, Debug, serde::Serialize)]
pub struct App {
    pub id: AppId,
    pub tenant: TenantId,
    pub name: String,
    pub version: i32,
    pub kind: AppKind,
    /// Relative to `dir`.
    pub entrypoint: String,
    pub dir: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// `App`s from the apps table, `$tail` choosing which: the one typed column list every such query
/// selects (sqlx checks it against the schema when building; see `scripts/sqlx-prepare.sh`).
macro_rules! app_query {
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            App,
            r#"select id as "id: AppId", tenant as "tenant: TenantId", name, version, kind as "kind: AppKind",
                      entrypoint, dir, sha256, size_bytes, created_at from apps "# + $tail
            $(, $arg)*
        )
    };
}

/// Serialises version numbering per (tenant, app) so concurrent uploads get distinct versions.
pub async fn next_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    name: &str,
) -> sqlx::Result<i32> {
    sqlx::query!("select pg_advisory_xact_lock(hashtextextended('app/' || $1 || '/' || $2, 0))", tenant.as_str(), name)
        .execute(&mut **tx)
        .await?;
    let v = sqlx::query_scalar!("select max(version) from apps where tenant = $1 and name = $2", tenant.as_str(), name)
        .fetch_one(&mut **tx)
        .await?;
    Ok(v.unwrap_or(0) + 1)
}

pub async fn insert(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, app: &App) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into apps (id, tenant, name, version, kind, entrypoint, dir, sha256, size_bytes)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        app.id as AppId,
        app.tenant.as_str(),
        app.name,
        app.version,
        app.kind.as_str(),
        app.entrypoint,
        app.dir,
        app.sha256,
        app.size_bytes,
    )
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
    let pruned = sqlx::query!(
        "delete from apps a where tenant = $1 and name = $2 and version <= $3 and version <> all($4)
           and not exists (select 1 from jobs j where j.tenant = $1 and j.route_app = $2 and j.app_version = a.version
                             and j.state in ('queued', 'running', 'retry_wait'))
           and not exists (select 1 from stream_instances s where s.tenant = $1 and s.app = $2
                             and s.app_version = a.version and s.desired = 'running')
         returning version, dir",
        tenant.as_str(),
        name,
        up_to,
        pinned,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(pruned.into_iter().map(|r| (r.version, r.dir)).collect())
}

/// Distinct app names a tenant has, for the `max_apps` limit.
pub async fn count_names(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, tenant: &TenantId) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(distinct name) as "n!" from apps where tenant = $1"#, tenant.as_str())
        .fetch_one(&mut **tx)
        .await
}

/// The version to run: `version` if pinned, else the newest.
pub async fn resolve(db: &Db, tenant: &TenantId, name: &str, version: Option<i32>) -> sqlx::Result<Option<App>> {
    app_query!(
        "where tenant = $1 and name = $2 and ($3::int is null or version = $3) order by version desc limit 1",
        tenant.as_str(),
        name,
        version
    )
    .fetch_optional(db)
    .await
}

pub async fn list(db: &Db, tenant: &TenantId) -> sqlx::Result<Vec<App>> {
    app_query!("where tenant = $1 order by name, version desc", tenant.as_str()).fetch_all(db).await
}

/// Jobs of the tenant waiting for the app or running it, and instances of it wanted running.
pub async fn jobs_using(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    name: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"select (select count(*) from jobs where tenant = $1 and route_app = $2 and state in ('queued', 'running', 'retry_wait'))
              + (select count(*) from stream_instances where tenant = $1 and app = $2 and desired = 'running') as "n!""#,
        tenant.as_str(),
        name,
    )
    .fetch_one(&mut **tx)
    .await
}

pub async fn delete(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, tenant: &TenantId, name: &str) -> sqlx::Result<()> {
    sqlx::query!("delete from apps where tenant = $1 and name = $2", tenant.as_str(), name).execute(&mut **tx).await?;
    Ok(())
}
