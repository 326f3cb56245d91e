//! Tenants' accounts on the host: the uid each tenant's programs run as in the sandbox.

use super::Db;
use crate::tenant::TenantId;

/// Serialises allocations across platform processes (the next uid is the largest plus one).
const ALLOCATION_LOCK: i64 = 0x6d79_7369_6d62_7569; // "mysimbui"

/// The tenant's uid, allocated from `base` upwards on first use.
pub async fn uid(db: &Db, tenant: &TenantId, base: u32) -> sqlx::Result<u32> {
    if let Some(uid) = get(db, tenant).await? {
        return Ok(uid);
    }
    let mut tx = db.begin().await?;
    sqlx::query!("select pg_advisory_xact_lock($1)", ALLOCATION_LOCK).execute(&mut *tx).await?;
    sqlx::query!(
        "insert into tenant_accounts (tenant, uid)
         select $1, greatest($2::integer, coalesce(max(uid) + 1, $2::integer)) from tenant_accounts
         on conflict (tenant) do nothing",
        tenant.as_str(),
        base as i32,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(db, tenant).await?.ok_or(sqlx::Error::RowNotFound)
}

pub async fn get(db: &Db, tenant: &TenantId) -> sqlx::Result<Option<u32>> {
    let uid = sqlx::query_scalar!("select uid from tenant_accounts where tenant = $1", tenant.as_str())
        .fetch_optional(db)
        .await?;
    Ok(uid.map(|u| u as u32))
}

/// The tenant whose programs run as `uid`, if any.
pub async fn tenant_of(db: &Db, uid: u32) -> sqlx::Result<Option<TenantId>> {
    sqlx::query_scalar!(r#"select tenant as "tenant: TenantId" from tenant_accounts where uid = $1"#, uid as i32)
        .fetch_optional(db)
        .await
}
