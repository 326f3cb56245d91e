//! coredms provisioning: one database per tenant with a login that reaches only that database.
//! The admin URL's scheme picks the backend (`postgres://` or `mongodb://`); both follow the same
//! steps and hand apps a URL holding only the tenant's own credentials.

mod mongo;
mod postgres;

use rand::distr::{Alphanumeric, SampleString};

use crate::agreement::CoreDmsAgreement;
use crate::store::{self, coredms::Credentials, Db};
use crate::tenant::TenantId;

/// What a tenant's app is given: `MYSIMBDP_COREDMS_URL` and `MYSIMBDP_COREDMS_DB`.
#[derive(Clone)]
pub struct TenantCoreDms {
    pub url: String,
    pub database: String,
}

impl std::fmt::Debug for TenantCoreDms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCoreDms").field("database", &self.database).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreDmsError {
    #[error("coredms url `{0}` has an unsupported scheme (use postgres:// or mongodb://)")]
    Scheme(String),
    #[error("invalid coredms url: {0}")]
    Url(#[from] url::ParseError),
    #[error("platform store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("coredms (postgres): {0}")]
    Postgres(String),
    #[error("coredms (mongodb): {0}")]
    Mongo(String),
}

enum Backend {
    Postgres(postgres::Provisioner),
    Mongo(mongo::Provisioner),
}

/// Creates tenants' databases and logins with the admin credentials, which never leave the platform.
pub struct CoreDms {
    admin_url: url::Url,
    backend: Backend,
}

impl CoreDms {
    pub async fn connect(admin_url: &str) -> Result<Self, CoreDmsError> {
        let url = url::Url::parse(admin_url)?;
        let backend = match url.scheme() {
            "postgres" | "postgresql" => Backend::Postgres(postgres::Provisioner::connect(admin_url).await?),
            "mongodb" | "mongodb+srv" => Backend::Mongo(mongo::Provisioner::connect(admin_url).await?),
            other => return Err(CoreDmsError::Scheme(other.to_owned())),
        };
        Ok(CoreDms { admin_url: url, backend })
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Mongo(_) => "mongodb",
        }
    }

    /// Idempotent: creates what is missing and (re)sets the login's password to the stored one.
    pub async fn provision(&self, db: &Db, tenant: &TenantId) -> Result<TenantCoreDms, CoreDmsError> {
        let name = tenant.coredms_name();
        let fresh = Credentials {
            backend: self.backend_name().to_owned(),
            database: name.clone(),
            username: name,
            password: Alphanumeric.sample_string(&mut rand::rng(), 32),
        };
        let creds = store::coredms::get_or_insert(db, tenant, &fresh).await?;
        match &self.backend {
            Backend::Postgres(p) => p.provision(&creds).await?,
            Backend::Mongo(m) => m.provision(&creds).await?,
        }
        Ok(self.tenant_view(&creds))
    }

    /// Applies the agreement's share of the server to the tenant's login (PostgreSQL; MongoDB has no
    /// per-user connection limit, so there the operator bounds the server's connections).
    pub async fn limit(&self, tenant: &TenantId, limits: &CoreDmsAgreement) -> Result<(), CoreDmsError> {
        match &self.backend {
            Backend::Postgres(p) => p.limit(&tenant.coredms_name(), limits).await,
            Backend::Mongo(_) => Ok(()),
        }
    }

    /// Cancels statements and closes sessions of tenants' logins past their agreement's timeouts.
    pub async fn enforce(&self, limits: &[(TenantId, CoreDmsAgreement)]) -> Result<u64, CoreDmsError> {
        match &self.backend {
            Backend::Postgres(p) => {
                let logins: Vec<_> = limits.iter().map(|(t, l)| (t.coredms_name(), l.clone())).collect();
                p.enforce(&logins).await
            }
            Backend::Mongo(_) => Ok(0),
        }
    }

    /// The admin URL with the tenant's login and database in place of the admin's.
    fn tenant_view(&self, creds: &Credentials) -> TenantCoreDms {
        let mut url = self.admin_url.clone();
        let _ = url.set_username(&creds.username);
        let _ = url.set_password(Some(&creds.password));
        url.set_path(&format!("/{}", creds.database));
        if matches!(self.backend, Backend::Mongo(_)) {
            url.set_query(Some(&format!("authSource={}", creds.database)));
        } else {
            url.set_query(None);
        }
        TenantCoreDms { url: url.to_string(), database: creds.database.clone() }
    }

    /// Removes a tenant's database and login (tests, and operators removing a tenant for good).
    pub async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), CoreDmsError> {
        let name = tenant.coredms_name();
        match &self.backend {
            Backend::Postgres(p) => p.drop(&name).await,
            Backend::Mongo(m) => m.drop(&name).await,
        }
    }
}
