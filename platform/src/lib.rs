//! mysimbdp: a multi-tenant big-data ingestion platform.
//!
//! Roles (each a module; they talk through the store and the file system, never through each other):
//! - `batch`: the batch ingest manager (staging watcher, admission, fair scheduler, runner).
//! - `api`: the control plane (REST under `/v1`, JWT tenancy, OpenAPI, metrics).
//!
//! Shared services under them: `agreement` (service agreements and hot reload), `apps` (app registry),
//! `store` (PostgreSQL), `coredms` (tenant databases), `runtime` (running black-box programs),
//! `tenants` (provisioning). `run` wires them under one shutdown token; `main` only parses the CLI.

pub mod agreement;
pub mod api;
pub mod apps;
pub mod batch;
pub mod config;
pub mod coredms;
pub mod messaging;
pub mod metrics;
pub mod runtime;
pub mod store;
pub mod tenant;
pub mod tenants;
pub mod units;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::Config;

/// How long requests in flight may go on after shutdown.
const API_DRAIN: Duration = Duration::from_secs(10);

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
    let layout = batch::layout::Layout { staging: config.staging_dir.clone(), data: config.data_dir.clone() };
    let metrics = Arc::new(metrics::Metrics::default());

    let api = match &config.api {
        Some(api) => {
            let registry = apps::Registry::new(db.clone(), &config.data_dir)?;
            registry.clean_incoming()?;
            let state = api::ApiState {
                db: db.clone(),
                agreements: agreements.clone(),
                apps: Arc::new(registry),
                layout: layout.clone(),
                keys: api::Keys::new(&api.jwt_secret)?,
                metrics: metrics.clone(),
                pages: Arc::new(api::page_cache::PageCache::new(api.page_cache)),
                kafka_brokers: config.kafka_brokers.clone(),
            };
            let listener = tokio::net::TcpListener::bind(api.listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding the API to {}: {e}", api.listen))?;
            // Where the API really listens (a port of 0 picks a free one), for scripts and tests.
            std::fs::write(config.data_dir.join("api.addr"), listener.local_addr()?.to_string())?;
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move { api::serve(listener, state, shutdown).await }))
        }
        None => None,
    };

    let result = if config.batch_role {
        let tenants = Arc::new(tenants::Tenants::new(db.clone(), coredms, config.staging_dir.clone()));
        let reconcile = {
            let (tenants, agreements, shutdown) = (tenants.clone(), agreements.clone(), shutdown.clone());
            tokio::spawn(async move { tenants.reconcile(agreements, shutdown).await })
        };
        let topics = match &config.kafka_brokers {
            Some(brokers) => {
                let topics = messaging::topics::Topics::new(brokers)?;
                Some(tokio::spawn(topics.reconcile(agreements.clone(), shutdown.clone())))
            }
            None => None,
        };
        let result =
            batch::run(db.clone(), layout, agreements, tenants, metrics, config.batch.clone(), shutdown.clone()).await;
        shutdown.cancel();
        let _ = reconcile.await;
        if let Some(topics) = topics {
            let _ = topics.await;
        }
        result
    } else {
        shutdown.cancelled().await;
        Ok(())
    };
    if let Some(mut api) = api {
        // Requests in flight may finish, but a client that never stops uploading must not keep the
        // platform from stopping.
        match tokio::time::timeout(API_DRAIN, &mut api).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the API stopped with an error"),
            Ok(Err(e)) => tracing::error!(error = %e, "the API task failed"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!(seconds = API_DRAIN.as_secs(), "API requests still running after shutdown; cut off");
                api.abort();
            }
        }
    }
    db.close().await;
    result
}
