//! Prometheus metrics. Counters and histograms count what this process did since it started (the
//! usual Prometheus semantics: a restart resets them and `rate()` copes); gauges of work in progress
//! are read from the store at each scrape, so they are right whichever process runs the batch role.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::jobs::{Job, JobState};
use crate::store::Db;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub tenant: String,
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub tenant: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub pass: &'static str,
}

/// The platform's periodic passes, counted so that an operator (or a test) can see each one happen:
/// a loop whose count stops growing is stuck, and "nothing happened after two more passes" is an
/// observation, not a guess at how long to wait.
#[derive(Clone, Copy, Debug)]
pub enum Pass {
    /// The batch manager listed every staging folder for files its watch missed.
    BatchRescan,
    /// The stream manager compared the instances running with those wanted, and acted.
    StreamReconcile,
    /// The monitor looked for instances that stopped reporting.
    MonitorSweep,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::BatchRescan => "batch_rescan",
            Pass::StreamReconcile => "stream_reconcile",
            Pass::MonitorSweep => "monitor_sweep",
        }
    }
}

fn run_seconds_histogram() -> Histogram {
    // 5 ms to ~45 min in factors of 2.
    Histogram::new(exponential_buckets(0.005, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    jobs_finished: Family<OutcomeLabels, Counter>,
    bytes_ingested: Family<TenantLabels, Counter>,
    records_ingested: Family<TenantLabels, Counter>,
    records_rejected: Family<TenantLabels, Counter>,
    run_seconds: Family<TenantLabels, Histogram, fn() -> Histogram>,
    jobs_open: Family<StateLabels, Gauge>,
    dependency_up: Family<CheckLabels, Gauge>,
    passes: Family<PassLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mysimbdp");
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "batch_jobs_finished",
            "Files that reached a final outcome, by tenant, outcome and reason",
            jobs_finished.clone(),
        );
        let bytes_ingested = Family::<TenantLabels, Counter>::default();
        registry.register("batch_ingested_bytes", "Bytes of files ingested successfully", bytes_ingested.clone());
        let records_ingested = Family::<TenantLabels, Counter>::default();
        registry.register("batch_records_ingested", "Records the apps reported ingested", records_ingested.clone());
        let records_rejected = Family::<TenantLabels, Counter>::default();
        registry.register("batch_records_rejected", "Records the apps reported rejected", records_rejected.clone());
        let run_seconds = Family::<TenantLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            run_seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "batch_app_run_seconds",
            "How long batch apps ran, per attempt that ended the job",
            run_seconds.clone(),
        );
        let jobs_open = Family::<StateLabels, Gauge>::default();
        registry.register(
            "batch_jobs_open",
            "Jobs not yet final, by state: detected, queued and retry_wait are the queue, running are apps running now",
            jobs_open.clone(),
        );
        let dependency_up = Family::<CheckLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "Whether each readiness check passed at this scrape (1) or not (0): platform_store, broker, data_disk, staging_disk",
            dependency_up.clone(),
        );
        let passes = Family::<PassLabels, Counter>::default();
        registry.register(
            "loop_passes",
            "Passes of the platform's periodic loops: batch_rescan, stream_reconcile, monitor_sweep",
            passes.clone(),
        );
        Metrics {
            registry,
            passes,
            jobs_finished,
            bytes_ingested,
            records_ingested,
            records_rejected,
            run_seconds,
            jobs_open,
            dependency_up,
        }
    }
}

impl Metrics {
    /// Counts one finished pass of a periodic loop.
    pub fn pass(&self, pass: Pass) {
        self.passes.get_or_create(&PassLabels { pass: pass.name() }).inc();
    }

    /// Counts a job that just reached its final state.
    pub fn job_finished(&self, job: &Job) {
        let tenant = TenantLabels { tenant: job.tenant.to_string() };
        self.jobs_finished
            .get_or_create(&OutcomeLabels {
                tenant: job.tenant.to_string(),
                outcome: job.state.to_string(),
                reason: job.reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            })
            .inc();
        if job.state == JobState::Succeeded {
            self.bytes_ingested.get_or_create(&tenant).inc_by(job.size_bytes.unwrap_or(0).max(0) as u64);
        }
        self.records_ingested.get_or_create(&tenant).inc_by(job.records_ingested.unwrap_or(0).max(0) as u64);
        self.records_rejected.get_or_create(&tenant).inc_by(job.records_rejected.unwrap_or(0).max(0) as u64);
        if let Some(ms) = job.run_ms {
            self.run_seconds.get_or_create(&tenant).observe(ms as f64 / 1000.0);
        }
    }

    /// The text exposition format, with the readiness checks' results (`checks`: name, passed) and
    /// the open-job gauges read from the store now. A store out of reach leaves those gauges out
    /// (rather than stale) and the rest is still served: a scrape must work most when something fails.
    pub async fn render(&self, db: &Db, checks: &[(&str, bool)]) -> anyhow::Result<String> {
        for (check, ok) in checks {
            self.dependency_up.get_or_create(&CheckLabels { check: (*check).to_owned() }).set(i64::from(*ok));
        }
        let open = crate::store::jobs::open_by_tenant(db).await;
        self.jobs_open.clear();
        match open {
            Ok(open) => {
                for (tenant, state, n) in open {
                    self.jobs_open.get_or_create(&StateLabels { tenant, state: state.to_string() }).set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: the open-job gauges could not be read from the store"),
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
