//! Tenants' sealed secrets (see `crate::secrets`): written and listed through the API, opened only
//! by the stream manager for the tenant's own connectors.

use chrono::{DateTime, Utc};

use super::Db;
use crate::secrets::Sealed;
use crate::tenant::TenantId;

/// A secret as listings show it: never its value.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub name: String,
    pub size_bytes: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a secret was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("tenant `{tenant}` has {max} secrets, the agreement's max_secrets; delete one first")]
    OverLimit { tenant: TenantId, max: u64 },
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Stores (or replaces) a secret, within `max` secrets for the tenant; serialised per tenant so two
/// writes at once cannot both pass the count.
pub async fn put(
    db: &Db,
    tenant: &TenantId,
    name: &str,
    sealed: &Sealed,
    size: usize,
    max: u64,
) -> Result<SecretInfo, PutError> {
    let mut tx = db.begin().await?;
    sqlx::query!("select pg_advisory_xact_lock(hashtextextended('secrets/' || $1, 0))", tenant.as_str())
        .execute(&mut *tx)
        .await?;
    let others = sqlx::query_scalar!(
        r#"select count(*) as "n!" from tenant_secrets where tenant = $1 and name <> $2"#,
        tenant.as_str(),
        name
    )
    .fetch_one(&mut *tx)
    .await?;
    if others as u64 >= max {
        return Err(PutError::OverLimit { tenant: tenant.clone(), max });
    }
    let info = sqlx::query_as!(
        SecretInfo,
        r#"insert into tenant_secrets (tenant, name, nonce, ciphertext, size_bytes) values ($1, $2, $3, $4, $5)
           on conflict (tenant, name) do update set nonce = excluded.nonce, ciphertext = excluded.ciphertext,
               size_bytes = excluded.size_bytes, updated_at = now()
           returning name, size_bytes, created_at, updated_at"#,
        tenant.as_str(),
        name,
        &sealed.nonce,
        &sealed.ciphertext,
        size as i32
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(info)
}

pub async fn list(db: &Db, tenant: &TenantId) -> sqlx::Result<Vec<SecretInfo>> {
    sqlx::query_as!(
        SecretInfo,
        "select name, size_bytes, created_at, updated_at from tenant_secrets where tenant = $1 order by name",
        tenant.as_str()
    )
    .fetch_all(db)
    .await
}

/// Whether a secret was there to delete.
pub async fn delete(db: &Db, tenant: &TenantId, name: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!("delete from tenant_secrets where tenant = $1 and name = $2", tenant.as_str(), name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The sealed value of one of the tenant's secrets.
pub async fn sealed(db: &Db, tenant: &TenantId, name: &str) -> sqlx::Result<Option<Sealed>> {
    let row = sqlx::query!(
        "select nonce, ciphertext from tenant_secrets where tenant = $1 and name = $2",
        tenant.as_str(),
        name
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| Sealed { nonce: r.nonce, ciphertext: r.ciphertext }))
}
