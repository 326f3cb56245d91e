//! mysimbdp: a multi-tenant big-data ingestion platform.
//!
//! Roles (each a module; they talk through the store, the file system and the broker, never through
//! each other):
//! - `batch`: the batch ingest manager (staging watcher, admission, fair scheduler, runner).
//! - `api`: the control plane (REST under `/v1`, JWT tenancy, OpenAPI, metrics).
//! - `stream`: the stream ingest manager (supervised instances of tenants' stream apps, and its
//!   reaction to the monitor's notifications).
//! - `monitor`: the stream ingest monitor (metrics reports in, judgements and notifications out).
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
pub mod domain;
pub mod janitor;
pub mod messaging;
pub mod metrics;
pub mod monitor;
pub mod runtime;
pub mod store;
pub mod stream;
pub mod tenant;
pub mod tenants;
pub mod units;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::Config;

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

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
                min_upload_rate: api.min_upload_rate,
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

    let needs_tenants = config.batch_role || config.stream_role;
    let brokers = config.kafka_brokers.clone();
    if (config.stream_role || config.monitor_role) && brokers.is_none() {
        anyhow::bail!(
            "the stream and monitor roles need the Kafka-API broker (--kafka-brokers / MYSIMBDP_KAFKA_BROKERS)"
        );
    }
    let sandbox = match (&config.sandbox, needs_tenants) {
        (Some(settings), true) => {
            let sandbox = runtime::sandbox::Sandbox::start(settings, &config.data_dir)?;
            tracing::info!(sandbox = %sandbox.describe(), "tenants' programs run confined");
            Some(Arc::new(sandbox))
        }
        (None, true) => {
            tracing::warn!("--sandbox off: tenants' programs run as the platform's own user and can read its files and keys; for development only");
            None
        }
        (_, false) => None,
    };
    let uid_base = config.sandbox.as_ref().map_or(runtime::sandbox::DEFAULT_UID_BASE, |s| s.uid_base);
    let tenants = Arc::new(tenants::Tenants::new(db.clone(), coredms, config.staging_dir.clone(), uid_base));
    let mut background = Vec::new();
    // A role that stops with an error stops the platform: a platform missing a role is not healthy.
    let role = |name: &'static str, shutdown: CancellationToken, task: BoxFuture| {
        tokio::spawn(async move {
            let result = task.await;
            if let Err(e) = &result {
                tracing::error!(role = name, error = %e, "a role stopped with an error; stopping the platform");
                shutdown.cancel();
            }
            result
        })
    };
    if needs_tenants {
        let (t, a, s) = (tenants.clone(), agreements.clone(), shutdown.clone());
        background.push(tokio::spawn(async move {
            t.reconcile(a, s).await;
            Ok(())
        }));
        if let Some(brokers) = &brokers {
            let topics = messaging::topics::Topics::new(brokers)?;
            let (agreements, shutdown) = (agreements.clone(), shutdown.clone());
            background.push(tokio::spawn(async move {
                topics.reconcile(agreements, shutdown).await;
                Ok(())
            }));
        }
    }
    if let (Some(keep), true) = (config.retention, needs_tenants) {
        let (db, data, shutdown) = (db.clone(), config.data_dir.clone(), shutdown.clone());
        background.push(tokio::spawn(async move {
            janitor::run(db, data, keep, shutdown).await;
            Ok(())
        }));
    }
    if config.stream_role {
        let brokers = brokers.clone().expect("checked above");
        // Confined programs reach the broker only through the gateway, which keeps each tenant to its
        // own topics and groups; unconfined ones (`--sandbox off`) run as the platform's own user,
        // which no gateway can tell apart, and are given the broker itself.
        let app_brokers = if sandbox.is_some() {
            messaging::gateway::firewall::protect(&brokers, uid_base).map_err(|e| {
                anyhow::anyhow!("broker isolation: {e} (run with --sandbox off to start without isolation)")
            })?;
            let gateway = messaging::gateway::start(db.clone(), brokers.clone(), shutdown.clone()).await?.address;
            // For operators and the benchmark: where tenants' programs reach the broker.
            std::fs::write(config.data_dir.join("broker-gateway.addr"), &gateway)?;
            gateway
        } else {
            brokers.clone()
        };
        let ctx = stream::StreamCtx {
            db: db.clone(),
            agreements: agreements.clone(),
            tenants: tenants.clone(),
            data_dir: config.data_dir.clone(),
            brokers,
            app_brokers,
            containers: config.container_socket.clone().map(|socket| runtime::container::Containers { socket }),
            cluster: config.cluster.clone(),
            sandbox: sandbox.clone(),
        };
        background.push(role("stream", shutdown.clone(), Box::pin(stream::run(ctx, shutdown.clone()))));
    }
    if config.monitor_role {
        let monitor = monitor::run(
            db.clone(),
            agreements.clone(),
            brokers.clone().expect("checked above"),
            config.cluster.clone(),
            shutdown.clone(),
        );
        background.push(role("monitor", shutdown.clone(), Box::pin(monitor)));
    }
    let mut result = if config.batch_role {
        let services = batch::Services { db: db.clone(), layout, agreements, tenants, metrics, sandbox };
        batch::run(services, config.batch.clone(), shutdown.clone()).await
    } else {
        shutdown.cancelled().await;
        Ok(())
    };
    shutdown.cancel();
    for task in background {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => tracing::error!(error = %e, "a role's task failed"),
        }
    }
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
