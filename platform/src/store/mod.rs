//! The platform store: PostgreSQL through sqlx, schema in `migrations/`. One file per table family;
//! every function that reads or writes a tenant's rows takes the `TenantId` first.

pub mod accounts;
pub mod apps;
pub mod coredms;
pub mod instances;
pub mod jobs;
pub mod leader;
pub mod leases;
pub mod retention;
pub mod secrets;
pub mod stats;
pub mod stream;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub type Db = PgPool;

/// Where a page of a list ends, newest first: the next page starts after this row. Keyset paging (no
/// OFFSET): page 10,000 costs what page 1 does, and rows arriving meanwhile shift nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct After<K> {
    pub at: chrono::DateTime<chrono::Utc>,
    pub id: K,
}

pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let options: PgConnectOptions = url.parse().map_err(|e| anyhow::anyhow!("invalid database url: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the platform store: {e}"))?;
    Ok(pool)
}

/// Whether the store answers a trivial query.
pub async fn ping(db: &Db) -> sqlx::Result<()> {
    sqlx::query_scalar!("select 1 as one").fetch_one(db).await.map(drop)
}

pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    sqlx::migrate!("../migrations").run(db).await.map_err(|e| anyhow::anyhow!("migrating the platform store: {e}"))
}

/// Closes the platform store's database to everyone but its owner and superusers: tenants' coredms
/// logins live on the same server in small deployments and must not open it. Needs ownership of the
/// database; where the platform's login lacks it, this is logged and left to the operator.
pub async fn lock_down(db: &Db) {
    let result = sqlx::raw_sql(
        "do $$ begin execute format('revoke all on database %I from public', current_database()); end $$",
    )
    .execute(db)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not revoke PUBLIC access to the platform store's database; do it by hand");
    }
}
