//! Each tenant's coredms credentials. They are created once and kept, so re-provisioning after a
//! restart hands apps the same login.

use super::Db;
use crate::tenant::TenantId;

#[derive(Clone)]
pub struct Credentials {
    pub backend: String,
    pub database: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("backend", &self.backend)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Returns the stored credentials, or stores `fresh` if there are none yet (first writer wins).
pub async fn get_or_insert(db: &Db, tenant: &TenantId, fresh: &Credentials) -> sqlx::Result<Credentials> {
    sqlx::query!(
        "insert into tenant_coredms (tenant, backend, database, username, password) values ($1, $2, $3, $4, $5)
         on conflict (tenant) do nothing",
        tenant.as_str(),
        fresh.backend,
        fresh.database,
        fresh.username,
        fresh.password,
    )
    .execute(db)
    .await?;
    get(db, tenant).await?.ok_or(sqlx::Error::RowNotFound)
}

pub async fn get(db: &Db, tenant: &TenantId) -> sqlx::Result<Option<Credentials>> {
    sqlx::query_as!(
        Credentials,
        "select backend, database, username, password from tenant_coredms where tenant = $1",
        tenant.as_str()
    )
    .fetch_optional(db)
    .await
}

/// Every tenant ever provisioned (its history stays readable after its agreement is withdrawn).
pub async fn provisioned_tenants(db: &Db) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!("select tenant from tenant_coredms").fetch_all(db).await
}
