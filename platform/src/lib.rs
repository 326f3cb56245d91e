//! mysimbdp: a multi-tenant big-data ingestion platform.
//!
//! Roles (each a module; they talk through the store and the file system, never through each other):
//! - `batch`: the batch ingest manager (staging watcher, admission, fair scheduler, runner).
//!
//! Shared services under them: `agreement` (service agreements and hot reload), `apps` (app registry),
//! `store` (PostgreSQL), `coredms` (tenant databases), `runtime` (running black-box programs),
//! `tenants` (provisioning). `run` wires them under one shutdown token; `main` only parses the CLI.

pub mod agreement;
pub mod apps;
pub mod batch;
pub mod config;
pub mod coredms;
pub mod runtime;
pub mod store;
pub mod tenant;
pub mod tenants;
pub mod units;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs the platform until `shutdown` is cancelled, then stops intake, lets running apps stop (they
/// get SIGTERM and their jobs are requeued for the next start) and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = config.absolute()?;
    let db = store::connect(&config.database_url).await?;
    store::migrate(&db).await?;
    store::lock_down(&db).await;
    let coredms = coredms::CoreDms::connect(&config.coredms_url).await?;
    let agreements =
        agreement::registry::Agreements::watch(config.tenants_dir.clone(), Duration::from_secs(2), shutdown.clone())?;
    let tenants = Arc::new(tenants::Tenants::new(db.clone(), coredms, config.staging_dir.clone()));
    let reconcile = {
        let (tenants, agreements, shutdown) = (tenants.clone(), agreements.clone(), shutdown.clone());
        tokio::spawn(async move { tenants.reconcile(agreements, shutdown).await })
    };
    let layout = batch::layout::Layout { staging: config.staging_dir.clone(), data: config.data_dir.clone() };
    let result = batch::run(db.clone(), layout, agreements, tenants, config.batch.clone(), shutdown.clone()).await;
    shutdown.cancel();
    let _ = reconcile.await;
    db.close().await;
    result
}
