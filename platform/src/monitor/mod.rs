//! mysimbdp-streamingestmonitor: reads the stream apps' metrics reports from `mysimbdp.metrics`,
//! trusts only what it can check, judges against the agreement and tells the stream manager through
//! `mysimbdp.control`.
//!
//! A report is dropped (recorded with why, never judged) when its key is not
//! `<tenant>/<app>/<instance>`, it does not parse as the contract's report, it names another tenant,
//! app or instance than its key, its figures are impossible, or the instance it names is not a
//! running instance of that tenant's app. The monitor measures lag itself (`lag`) and judges
//! (`judge`); a notification is stored, then published. It also notices running instances that
//! stopped reporting (no report for three intervals) and asks for their restart.

pub mod judge;
pub mod lag;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agreement::registry::Agreements;
use crate::agreement::{BreachAction, StreamAgreement};
use crate::messaging::topics::{tenant_topic, CONTROL_TOPIC, METRICS_TOPIC};
use crate::store::instances;
use crate::store::stream::{self as stream_store, Notification, Reason, StoredReport};
use crate::store::Db;
use crate::tenant::TenantId;
use judge::{Figures, Judge, Verdict};

/// Reports larger than this are not read.
const MAX_REPORT: usize = 16 << 10;
/// An instance is silent after this many intervals without a report; a report older than that (plus
/// `STALE_SLACK`) when read is stale.
const SILENT_INTERVALS: u32 = 3;
const STALE_SLACK: Duration = Duration::from_secs(5);

/// The metrics report contract (DESIGN.md), as read: every field required, nothing else allowed.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    version: u32,
    tenant: String,
    app: String,
    instance: String,
    window_start: chrono::DateTime<Utc>,
    window_end: chrono::DateTime<Utc>,
    messages: u64,
    bytes: u64,
    rejected: u64,
    avg_ingestion_ms: f64,
    p95_ingestion_ms: f64,
    processing_rate: f64,
    throughput_bytes_per_s: f64,
}

/// Why a report was not trusted.
#[derive(Debug)]
struct Dropped {
    tenant: Option<String>,
    reason: &'static str,
    detail: String,
}

fn dropped(tenant: Option<&str>, reason: &'static str, detail: impl Into<String>) -> Dropped {
    Dropped { tenant: tenant.map(str::to_owned), reason, detail: detail.into() }
}

/// A report that passed every check that needs no store.
struct Checked {
    tenant: TenantId,
    instance: Uuid,
    report: Report,
}

/// The checks on the message alone: key, shape, consistency with the key, plausible figures.
fn check(key: Option<&[u8]>, payload: &[u8]) -> Result<Checked, Dropped> {
    let key = key.and_then(|k| std::str::from_utf8(k).ok()).ok_or_else(|| {
        dropped(None, "bad_key", "the report has no UTF-8 key (`<tenant>/<app>/<instance>` is required)")
    })?;
    let parts: Vec<&str> = key.split('/').collect();
    let [key_tenant, key_app, key_instance] = parts[..] else {
        return Err(dropped(None, "bad_key", format!("key `{key}` is not `<tenant>/<app>/<instance>`")));
    };
    let tenant = TenantId::parse(key_tenant)
        .map_err(|e| dropped(None, "bad_key", format!("key `{key}` names no valid tenant: {e}")))?;
    let t = Some(key_tenant);
    if payload.len() > MAX_REPORT {
        return Err(dropped(t, "malformed", format!("{} bytes is over the {MAX_REPORT}-byte bound", payload.len())));
    }
    let report: Report =
        serde_json::from_slice(payload).map_err(|e| dropped(t, "malformed", format!("not a metrics report: {e}")))?;
    if report.version != 1 {
        return Err(dropped(t, "malformed", format!("report version {} (this monitor reads 1)", report.version)));
    }
    if report.tenant != key_tenant {
        return Err(dropped(
            t,
            "tenant_mismatch",
            format!("the report names tenant `{}` but its key names `{key_tenant}`", report.tenant),
        ));
    }
    if report.app != key_app || report.instance != key_instance {
        return Err(dropped(
            t,
            "key_mismatch",
            format!("the report names {}/{} but its key is `{key}`", report.app, report.instance),
        ));
    }
    let instance = Uuid::parse_str(key_instance)
        .map_err(|_| dropped(t, "unknown_instance", format!("`{key_instance}` is not an instance id")))?;
    let figures =
        [report.avg_ingestion_ms, report.p95_ingestion_ms, report.processing_rate, report.throughput_bytes_per_s];
    if figures.iter().any(|f| !f.is_finite() || *f < 0.0) {
        return Err(dropped(t, "implausible", "a rate or a time is negative or not a number"));
    }
    if report.window_end < report.window_start || report.window_end > Utc::now() + chrono::Duration::minutes(5) {
        return Err(dropped(t, "implausible", "the window ends before it starts or in the future"));
    }
    Ok(Checked { tenant, instance, report })
}

struct Monitor {
    db: Db,
    agreements: Agreements,
    producer: FutureProducer,
    lag: Arc<Mutex<lag::Lag>>,
    judge: Judge,
    /// When each running instance last reported (or was first seen running).
    last_seen: HashMap<Uuid, Instant>,
}

impl Monitor {
    async fn handle(&mut self, key: Option<&[u8]>, payload: &[u8]) -> anyhow::Result<()> {
        let key_text = key.map(|k| String::from_utf8_lossy(k).into_owned());
        let outcome = match check(key, payload) {
            Ok(c) => self.trust(c).await?,
            Err(d) => Err(d),
        };
        if let Err(d) = outcome {
            if d.tenant.as_deref().is_some_and(|t| !self.serves(t)) {
                // Another platform's tenant on a shared broker: not this monitor's to judge or count.
                tracing::debug!(key = ?key_text, "report for a tenant not served here; ignored");
                return Ok(());
            }
            tracing::warn!(key = ?key_text, reason = d.reason, detail = %d.detail, "metrics report dropped");
            stream_store::insert_dropped(&self.db, d.tenant.as_deref(), key_text.as_deref(), d.reason, &d.detail)
                .await?;
        }
        Ok(())
    }

    fn serves(&self, tenant: &str) -> bool {
        TenantId::parse(tenant).ok().is_some_and(|t| self.agreements.get(&t).is_some())
    }

    /// The checks that need the store and the agreement, then the judgement.
    async fn trust(&mut self, c: Checked) -> anyhow::Result<Result<(), Dropped>> {
        let t = Some(c.tenant.as_str());
        let Some(stream) = self.agreements.get(&c.tenant).and_then(|a| a.stream.clone()) else {
            return Ok(Err(dropped(
                t,
                "unknown_tenant",
                "no agreement with a stream section is in force for this tenant",
            )));
        };
        let instance = instances::get(&self.db, &c.tenant, c.instance).await?;
        let running = instance
            .as_ref()
            .is_some_and(|i| i.app == c.report.app && matches!(i.state.as_str(), "running" | "starting"));
        if !running {
            let what = match &instance {
                None => "no instance of this tenant has that id".to_owned(),
                Some(i) if i.app != c.report.app => format!("the instance runs `{}`, not `{}`", i.app, c.report.app),
                Some(i) => format!("the instance is {}, not running", i.state),
            };
            return Ok(Err(dropped(t, "unknown_instance", what)));
        }
        let r = &c.report;
        // A report read long after it was sent (the monitor was down, or read its topic from the start)
        // is kept but not judged: the lag measured now says nothing about that window.
        let age = Utc::now().signed_duration_since(r.window_end).to_std().unwrap_or_default();
        let stale = age > stream.report_interval * SILENT_INTERVALS + STALE_SLACK;
        let (lag, verdict) = if stale {
            (None, Verdict::Stale)
        } else {
            self.last_seen.insert(c.instance, Instant::now());
            let lag = self.measure_lag(&c.tenant, &r.app, &stream).await;
            let figures = Figures {
                messages: r.messages,
                processing_rate: r.processing_rate,
                avg_ingestion_ms: r.avg_ingestion_ms,
            };
            (lag, self.judge.judge(c.instance, figures, lag, &stream.thresholds))
        };
        let stored = StoredReport {
            id: 0,
            tenant: c.tenant.to_string(),
            app: r.app.clone(),
            instance: c.instance,
            window_start: r.window_start,
            window_end: r.window_end,
            messages: r.messages.min(i64::MAX as u64) as i64,
            bytes: r.bytes.min(i64::MAX as u64) as i64,
            rejected: r.rejected.min(i64::MAX as u64) as i64,
            avg_ingestion_ms: r.avg_ingestion_ms,
            p95_ingestion_ms: r.p95_ingestion_ms,
            processing_rate: r.processing_rate,
            throughput_bytes_per_s: r.throughput_bytes_per_s,
            lag: lag.map(|l| l.min(i64::MAX as u64) as i64),
            verdict: verdict.name().into(),
            received_at: Utc::now(),
        };
        stream_store::insert_report(&self.db, &stored).await?;
        if let Verdict::Breach { reasons, act: true } = verdict {
            let action = match stream.on_breach {
                BreachAction::ScaleOut => "scale_out",
                BreachAction::Restart => "restart",
                BreachAction::Notify => "notify",
            };
            self.notify(&c.tenant, &r.app, Some(c.instance), "below_threshold", action, reasons).await?;
        }
        Ok(Ok(()))
    }

    async fn measure_lag(&self, tenant: &TenantId, app: &str, stream: &StreamAgreement) -> Option<u64> {
        let group = crate::stream::consumer_group(tenant, app);
        let topics: Vec<String> = stream.topics.iter().map(|t| tenant_topic(tenant, &t.name)).collect();
        let lag = self.lag.clone();
        let measured =
            tokio::task::spawn_blocking(move || lag.lock().expect("lag lock").measure(&group, &topics)).await;
        match measured {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::warn!(%tenant, app, error = %e, "measuring consumer lag failed; the report is not judged");
                None
            }
            Err(_) => None,
        }
    }

    async fn notify(
        &mut self,
        tenant: &TenantId,
        app: &str,
        instance: Option<Uuid>,
        kind: &str,
        action: &str,
        reasons: Vec<Reason>,
    ) -> anyhow::Result<()> {
        let n = Notification {
            version: 1,
            id: Uuid::now_v7(),
            tenant: tenant.to_string(),
            app: app.to_owned(),
            instance,
            kind: kind.into(),
            at: Utc::now(),
            action: action.into(),
            reasons,
        };
        stream_store::insert_notification(&self.db, &n).await?;
        let payload = serde_json::to_vec(&n)?;
        let key = format!("{tenant}/{app}");
        self.producer
            .send(FutureRecord::to(CONTROL_TOPIC).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("publishing notification {} to {CONTROL_TOPIC}: {e}", n.id))?;
        tracing::info!(%tenant, app, notification = %n.id, kind, action, "notified the stream manager");
        Ok(())
    }

    /// Running instances that have not reported for three intervals: ask for their restart.
    async fn find_silent(&mut self) -> anyhow::Result<()> {
        let running: Vec<instances::Instance> =
            instances::wanted(&self.db).await?.into_iter().filter(|i| i.state == "running").collect();
        let ids: std::collections::HashSet<Uuid> = running.iter().map(|i| i.id).collect();
        self.last_seen.retain(|id, _| ids.contains(id));
        for inst in running {
            let Ok(tenant) = TenantId::parse(&inst.tenant) else { continue };
            let Some(stream) = self.agreements.get(&tenant).and_then(|a| a.stream.clone()) else { continue };
            let now = Instant::now();
            let seen = *self.last_seen.entry(inst.id).or_insert(now);
            let limit = stream.report_interval * SILENT_INTERVALS;
            if now.duration_since(seen) > limit {
                self.last_seen.insert(inst.id, now); // once per silent stretch
                self.judge.forget(inst.id);
                let silent = now.duration_since(seen).as_secs_f64();
                let reasons = vec![Reason {
                    metric: "seconds_since_report".into(),
                    observed: silent,
                    threshold: limit.as_secs_f64(),
                }];
                self.notify(&tenant, &inst.app, Some(inst.id), "silent", "restart", reasons).await?;
            }
        }
        Ok(())
    }
}

/// Runs the monitor until `shutdown`.
pub async fn run(
    db: Db,
    agreements: Agreements,
    brokers: String,
    cluster: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{cluster}-monitor"))
        .set("enable.auto.commit", "true")
        // A new monitor reads the topic from its start, so no report sent while it joined its group is
        // lost; old ones are stale (kept, not judged) or of instances no longer running (dropped).
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        .create()
        .map_err(|e| anyhow::anyhow!("the monitor's consumer for {brokers}: {e}"))?;
    consumer.subscribe(&[METRICS_TOPIC])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .map_err(|e| anyhow::anyhow!("the monitor's producer for {brokers}: {e}"))?;
    let mut monitor = Monitor {
        db,
        agreements,
        producer,
        lag: Arc::new(Mutex::new(lag::Lag::new(&brokers))),
        judge: Judge::default(),
        last_seen: HashMap::new(),
    };
    tracing::info!("stream monitor reading {METRICS_TOPIC}");
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sweep.tick() => {
                if let Err(e) = monitor.find_silent().await {
                    tracing::warn!(error = %e, "looking for silent instances failed");
                }
            }
            m = consumer.recv() => match m {
                Ok(m) => {
                    if let Err(e) = monitor.handle(m.key(), m.payload().unwrap_or_default()).await {
                        tracing::error!(error = %e, "handling a metrics report failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading {METRICS_TOPIC} failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
}
