//! Reacts to tenants appearing in `tenants/`: creates their staging folder, their coredms database
//! and login, and their account on the host (the uid their programs run as), and keeps what the
//! runners need of each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::agreement::registry::Agreements;
use crate::agreement::CoreDmsAgreement;
use crate::coredms::{CoreDms, CoreDmsError, TenantCoreDms};
use crate::runtime::sandbox::Account;
use crate::store::Db;
use crate::tenant::TenantId;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("creating the tenant's staging folder: {0}")]
    Staging(std::io::Error),
    #[error(transparent)]
    CoreDms(#[from] CoreDmsError),
    #[error("allocating the tenant's account: {0}")]
    Account(sqlx::Error),
}

/// What the runners need of a provisioned tenant.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub coredms: TenantCoreDms,
    pub account: Account,
}

pub struct Tenants {
    db: Db,
    coredms: CoreDms,
    staging: PathBuf,
    /// Tenants' uids are allocated from here.
    uid_base: u32,
    provisioned: Mutex<HashMap<TenantId, Provisioned>>,
    /// The coredms limits this process last applied to each tenant's login.
    limited: Mutex<HashMap<TenantId, CoreDmsAgreement>>,
}

/// How often sessions past their agreement's timeouts are looked for.
const ENFORCE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Tenants {
    pub fn new(db: Db, coredms: CoreDms, staging: PathBuf, uid_base: u32) -> Self {
        Tenants {
            db,
            coredms,
            staging,
            uid_base,
            provisioned: Mutex::new(HashMap::new()),
            limited: Mutex::new(HashMap::new()),
        }
    }

    pub fn coredms(&self) -> &CoreDms {
        &self.coredms
    }

    /// The tenant's coredms view and account, provisioning them first if this process has not yet,
    /// with the login limited as the agreement says.
    pub async fn ensure(&self, tenant: &TenantId, limits: &CoreDmsAgreement) -> Result<Provisioned, ProvisionError> {
        let known = self.provisioned.lock().expect("tenants lock").get(tenant).cloned();
        let provisioned = match known {
            Some(p) => p,
            None => self.provision(tenant).await?,
        };
        let applied = self.limited.lock().expect("tenants lock").get(tenant) == Some(limits);
        if !applied {
            self.coredms.limit(tenant, limits).await?;
            self.limited.lock().expect("tenants lock").insert(tenant.clone(), limits.clone());
        }
        Ok(provisioned)
    }

    async fn provision(&self, tenant: &TenantId) -> Result<Provisioned, ProvisionError> {
        std::fs::create_dir_all(self.staging.join(tenant.as_str())).map_err(ProvisionError::Staging)?;
        let coredms = self.coredms.provision(&self.db, tenant).await?;
        let uid =
            crate::store::accounts::uid(&self.db, tenant, self.uid_base).await.map_err(ProvisionError::Account)?;
        let account = Account { uid, name: tenant.to_string() };
        tracing::info!(%tenant, database = %coredms.database, backend = self.coredms.backend_name(), uid, "tenant provisioned");
        let p = Provisioned { coredms, account };
        self.provisioned.lock().expect("tenants lock").insert(tenant.clone(), p.clone());
        Ok(p)
    }

    /// Provisions every tenant in force now and whenever the agreements change, and enforces their
    /// coredms timeouts, until `shutdown`.
    pub async fn reconcile(&self, agreements: Agreements, shutdown: CancellationToken) {
        let mut rx = agreements.subscribe();
        let mut enforce = tokio::time::interval(ENFORCE_EVERY);
        enforce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let tenants: Vec<(TenantId, CoreDmsAgreement)> =
                rx.borrow_and_update().in_force.iter().map(|(t, a)| (t.clone(), a.coredms.clone())).collect();
            for (tenant, limits) in &tenants {
                if let Err(e) = self.ensure(tenant, limits).await {
                    tracing::error!(%tenant, error = %e, "provisioning tenant failed; will retry on the next change");
                }
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return } else { break },
                    _ = enforce.tick() => match self.coredms.enforce(&tenants).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(sessions = n, "ended coredms statements or sessions past their agreement's timeouts"),
                        Err(e) => tracing::warn!(error = %e, "enforcing coredms timeouts failed"),
                    },
                }
            }
        }
    }
}
