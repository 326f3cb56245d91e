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
pub mod lake;
pub mod layout;
pub mod messaging;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod runtime;
pub mod secrets;
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
    Platform::build(config, shutdown).await?.run_until_stopped().await
}

/// A role's task: a role that stops with an error (or panics) stops the platform, the API included:
/// a platform missing a role is not healthy, and its supervisor should restart it.
fn role(name: &'static str, shutdown: CancellationToken, task: BoxFuture) -> Role {
    tokio::spawn(async move {
        // Cancels the platform unless the role ends well; dropped also when the role panics.
        let mut stop = StopUnlessDisarmed(Some(shutdown));
        let result = task.await;
        match &result {
            Ok(()) => stop.0 = None,
            Err(e) => tracing::error!(role = name, error = %e, "a role stopped with an error; stopping the platform"),
        }
        result
    })
}

struct StopUnlessDisarmed(Option<CancellationToken>);

impl Drop for StopUnlessDisarmed {
    fn drop(&mut self) {
        if let Some(shutdown) = self.0.take() {
            shutdown.cancel();
        }
    }
}

type Role = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The platform built from its configuration: connected to its store and coredms, its agreements
/// loaded, its API bound (so its address is known before anything runs), ready to run its roles.
pub struct Platform {
    config: Config,
    shutdown: CancellationToken,
    db: store::Db,
    agreements: agreement::registry::Agreements,
    layout: layout::Layout,
    metrics: Arc<metrics::Metrics>,
    tenants: Arc<tenants::Tenants>,
    sandbox: Option<Arc<runtime::sandbox::Sandbox>>,
    /// Seals and opens tenants' secrets (from `config.secrets_key`).
    secrets_key: Option<secrets::SecretsKey>,
    api: Option<(tokio::net::TcpListener, api::ApiState)>,
}

impl Platform {
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let config = config.absolute()?;
        let secrets_key = config.secrets_key.as_ref().map(|k| secrets::SecretsKey::from_hex(&k.0)).transpose()?;
        let needs_tenants = config.batch_role || config.stream_role;
        if (config.stream_role || config.monitor_role) && config.kafka_brokers.is_none() {
            anyhow::bail!(
                "the stream and monitor roles need the Kafka-API broker (--kafka-brokers / MYSIMBDP_KAFKA_BROKERS)"
            );
        }
        let db = store::connect(&config.database_url).await?;
        store::migrate(&db).await?;
        store::lock_down(&db).await;
        let coredms = coredms::CoreDms::connect(&config.coredms_url).await?;
        let agreements = agreement::registry::Agreements::watch(
            config.tenants_dir.clone(),
            Duration::from_secs(2),
            shutdown.clone(),
        )?;
        let layout = layout::Layout { staging: config.staging_dir.clone(), data: config.data_dir.clone() };
        let metrics = Arc::new(metrics::Metrics::default());
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
        let mut platform =
            Platform { config, shutdown, db, agreements, layout, metrics, tenants, sandbox, secrets_key, api: None };
        platform.api = platform.bind_api().await?;
        Ok(platform)
    }

    /// Where the API listens, if this process serves it (a configured port of 0 picks a free one).
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    async fn bind_api(&self) -> anyhow::Result<Option<(tokio::net::TcpListener, api::ApiState)>> {
        let Some(api) = &self.config.api else { return Ok(None) };
        let registry = apps::Registry::new(self.db.clone(), &self.config.data_dir)?;
        registry.clean_incoming()?;
        let state = api::ApiState {
            db: self.db.clone(),
            agreements: self.agreements.clone(),
            apps: Arc::new(registry),
            layout: self.layout.clone(),
            keys: api::Keys::new(&api.jwt_secret)?,
            metrics: self.metrics.clone(),
            pages: Arc::new(api::page_cache::PageCache::new(api.page_cache)),
            min_upload_rate: api.min_upload_rate,
            kafka_brokers: self.config.kafka_brokers.clone(),
            secrets_key: self.secrets_key.clone(),
        };
        let listener = tokio::net::TcpListener::bind(api.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding the API to {}: {e}", api.listen))?;
        // Where the API really listens, for scripts and the CLI on this machine.
        std::fs::write(self.config.data_dir.join("api.addr"), listener.local_addr()?.to_string())?;
        Ok(Some((listener, state)))
    }

    /// Runs every role of this process until shutdown, or until one of them fails.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        let api = self.api.take().map(|(listener, state)| {
            let serve = api::serve(listener, state, shutdown.clone());
            role(
                "api",
                shutdown.clone(),
                Box::pin(async move { serve.await.map_err(|e| anyhow::anyhow!("serving the API: {e}")) }),
            )
        });
        let mut roles = self.start_services().await?;
        if self.config.stream_role {
            roles.push(self.start_stream().await?);
        }
        if self.config.monitor_role {
            let brokers = self.config.kafka_brokers.clone().expect("checked at build");
            let monitor = monitor::run(
                self.db.clone(),
                self.agreements.clone(),
                brokers,
                self.config.cluster.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            );
            roles.push(role("monitor", shutdown.clone(), Box::pin(monitor)));
        }
        let db = self.db.clone();
        let mut result = if self.config.batch_role {
            let services = batch::Services {
                db: self.db.clone(),
                layout: self.layout,
                agreements: self.agreements,
                tenants: self.tenants,
                metrics: self.metrics,
                sandbox: self.sandbox,
            };
            batch::run(services, self.config.batch.clone(), shutdown.clone()).await
        } else {
            shutdown.cancelled().await;
            Ok(())
        };
        shutdown.cancel();
        for task in roles {
            match task.await {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "a role's task failed"),
            }
        }
        if let Some(api) = api {
            let api_result = drain(api).await;
            if result.is_ok() {
                result = api_result;
            }
        }
        db.close().await;
        result
    }

    /// What the batch and stream roles both need running: tenants provisioned and their topics
    /// created as agreements come and go, and the janitor.
    async fn start_services(&self) -> anyhow::Result<Vec<Role>> {
        let mut roles = Vec::new();
        if !(self.config.batch_role || self.config.stream_role) {
            return Ok(roles);
        }
        let shutdown = self.shutdown.clone();
        let (t, a, s) = (self.tenants.clone(), self.agreements.clone(), shutdown.clone());
        roles.push(role(
            "tenants",
            shutdown.clone(),
            Box::pin(async move {
                t.reconcile(a, s).await;
                Ok(())
            }),
        ));
        if let Some(brokers) = &self.config.kafka_brokers {
            let topics = messaging::topics::Topics::new(brokers)?;
            let (a, s) = (self.agreements.clone(), shutdown.clone());
            roles.push(role(
                "topics",
                shutdown.clone(),
                Box::pin(async move {
                    topics.reconcile(a, s).await;
                    Ok(())
                }),
            ));
        }
        if let Some(keep) = self.config.retention {
            let (db, data, s) = (self.db.clone(), self.config.data_dir.clone(), shutdown.clone());
            roles.push(role(
                "janitor",
                shutdown.clone(),
                Box::pin(async move {
                    janitor::run(db, data, keep, s).await;
                    Ok(())
                }),
            ));
        }
        Ok(roles)
    }

    async fn start_stream(&self) -> anyhow::Result<Role> {
        let brokers = self.config.kafka_brokers.clone().expect("checked at build");
        let uid_base = self.config.sandbox.as_ref().map_or(runtime::sandbox::DEFAULT_UID_BASE, |s| s.uid_base);
        // The gateway outlives the stream manager: instances told to stop still write their last
        // records and commits through it (cut at shutdown, a lake sink's last commit waited for a
        // broker that was gone until the grace period killed it).
        let gateway_stop = CancellationToken::new();
        // Confined programs reach the broker only through the gateway, which keeps each tenant to its
        // own topics and groups; unconfined ones (`--sandbox off`) run as the platform's own user,
        // which no gateway can tell apart, and are given the broker itself.
        let app_brokers = if self.sandbox.is_some() {
            messaging::gateway::firewall::protect(&brokers, uid_base).map_err(|e| {
                anyhow::anyhow!("broker isolation: {e} (run with --sandbox off to start without isolation)")
            })?;
            let gateway =
                messaging::gateway::start(self.db.clone(), brokers.clone(), gateway_stop.clone()).await?.address;
            // For operators and the benchmark: where tenants' programs reach the broker.
            std::fs::write(self.config.data_dir.join("broker-gateway.addr"), &gateway)?;
            gateway
        } else {
            brokers.clone()
        };
        let ctx = stream::StreamCtx {
            db: self.db.clone(),
            agreements: self.agreements.clone(),
            tenants: self.tenants.clone(),
            data_dir: self.config.data_dir.clone(),
            brokers,
            app_brokers,
            containers: self.config.container_socket.clone().map(|socket| runtime::container::Containers { socket }),
            cluster: self.config.cluster.clone(),
            sandbox: self.sandbox.clone(),
            metrics: self.metrics.clone(),
            connect_bin: match &self.config.connect_bin {
                Some(path) => path.clone(),
                None => std::env::current_exe()?.with_file_name("mysimbdp-connect"),
            },
            secrets_key: self.secrets_key.clone(),
        };
        let shutdown = self.shutdown.clone();
        let managed = async move {
            let result = stream::run(ctx, shutdown).await;
            gateway_stop.cancel();
            result
        };
        Ok(role("stream", self.shutdown.clone(), Box::pin(managed)))
    }
}

/// Waits for the API to finish the requests in flight after shutdown, for `API_DRAIN` at most: a
/// client that never stops uploading must not keep the platform from stopping.
async fn drain(mut api: Role) -> anyhow::Result<()> {
    match tokio::time::timeout(API_DRAIN, &mut api).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow::anyhow!("the API task failed: {e}")),
        Err(_) => {
            tracing::warn!(seconds = API_DRAIN.as_secs(), "API requests still running after shutdown; cut off");
            api.abort();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_role_that_fails_or_panics_stops_the_platform() {
        let shutdown = CancellationToken::new();
        role("fine", shutdown.clone(), Box::pin(async { Ok(()) })).await.unwrap().unwrap();
        assert!(!shutdown.is_cancelled(), "a role that ends well stops nothing");
        let failed = role("broken", shutdown.clone(), Box::pin(async { anyhow::bail!("cannot serve") })).await;
        assert!(failed.unwrap().is_err());
        assert!(shutdown.is_cancelled());

        let shutdown = CancellationToken::new();
        let panicked = role("panics", shutdown.clone(), Box::pin(async { panic!("a bug") })).await;
        assert!(panicked.is_err(), "the panic reaches whoever waits for the role");
        assert!(shutdown.is_cancelled());
    }
}
