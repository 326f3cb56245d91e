//! Reacts to tenants appearing in `tenants/`: creates their staging folder and their coredms
//! database and login, and keeps the app-facing coredms view of each for the runners.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::agreement::registry::Agreements;
use crate::coredms::{CoreDms, CoreDmsError, TenantCoreDms};
use crate::store::Db;
use crate::tenant::TenantId;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("creating the tenant's staging folder: {0}")]
    Staging(std::io::Error),
    #[error(transparent)]
    CoreDms(#[from] CoreDmsError),
}

pub struct Tenants {
    db: Db,
    coredms: CoreDms,
    staging: PathBuf,
    provisioned: Mutex<HashMap<TenantId, TenantCoreDms>>,
}

impl Tenants {
    pub fn new(db: Db, coredms: CoreDms, staging: PathBuf) -> Self {
        Tenants { db, coredms, staging, provisioned: Mutex::new(HashMap::new()) }
    }

    pub fn coredms(&self) -> &CoreDms {
        &self.coredms
    }

    /// The tenant's coredms view, provisioning it first if this process has not yet.
    pub async fn ensure(&self, tenant: &TenantId) -> Result<TenantCoreDms, ProvisionError> {
        if let Some(view) = self.provisioned.lock().expect("tenants lock").get(tenant) {
            return Ok(view.clone());
        }
        std::fs::create_dir_all(self.staging.join(tenant.as_str())).map_err(ProvisionError::Staging)?;
        let view = self.coredms.provision(&self.db, tenant).await?;
        tracing::info!(%tenant, database = %view.database, backend = self.coredms.backend_name(), "tenant provisioned");
        self.provisioned.lock().expect("tenants lock").insert(tenant.clone(), view.clone());
        Ok(view)
    }

    /// Provisions every tenant in force now and whenever the agreements change, until `shutdown`.
    pub async fn reconcile(&self, agreements: Agreements, shutdown: CancellationToken) {
        let mut rx = agreements.subscribe();
        loop {
            let tenants: Vec<TenantId> = rx.borrow_and_update().in_force.keys().cloned().collect();
            for tenant in tenants {
                if let Err(e) = self.ensure(&tenant).await {
                    tracing::error!(%tenant, error = %e, "provisioning tenant failed; will retry on the next change");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }
}
