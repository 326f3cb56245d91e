//! mysimbdp-streamingestmonitor: reads the stream apps' metrics reports from `mysimbdp.metrics`,
//! trusts only what it can check, judges against the agreement and tells the stream manager through
//! `mysimbdp.control`.
//!
//! A report is dropped (recorded with why, never judged) when its key is not
//! `<tenant>/<app>/<instance>`, it does not parse as the contract's report, it names another tenant,
//! app or instance than its key, the instance is not one of that tenant's app, it is not signed with
//! that instance's own report key, or its figures cannot be true (against its window, and against
//! what the broker held). The monitor observes each app's group at the broker itself (`lag`) and
//! judges each instance on its own partitions (`judge`); a notification is stored, then published.
//! The last report of an instance asked to stop is kept, not judged. It also notices running
//! instances that stopped reporting (three intervals, counted from a run's start plus a grace) and
//! asks for their restart.

pub mod judge;
pub mod lag;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

// The metrics report contract (DESIGN.md), read strictly: every field required, nothing else allowed.
use mysimbdp_contract::signature::HEADER as SIGNATURE_HEADER;
use mysimbdp_contract::Report;

use crate::agreement::registry::Agreements;
use crate::agreement::{BreachAction, StreamAgreement};
use crate::domain::{Desired, InstanceId, InstanceState};
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
/// How long a run may take to start before its silence counts.
const START_GRACE: Duration = Duration::from_secs(10);

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
    instance: InstanceId,
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
    let instance = InstanceId::parse_str(key_instance)
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

/// Observations of a group kept to bound later reports, and for how long.
const HISTORY: usize = 64;
const HISTORY_AGE: chrono::Duration = chrono::Duration::minutes(10);
/// How far a window may start before its instance was created (clocks, and the stop of a restart).
const WINDOW_SLACK: chrono::Duration = chrono::Duration::seconds(60);

/// The figures a report claims, checked against its own window and its instance's life.
fn plausible(r: &Report, created: chrono::DateTime<Utc>) -> Result<(), String> {
    if r.window_start < created - WINDOW_SLACK {
        return Err(format!("the window starts at {}, before its instance was created ({created})", r.window_start));
    }
    let secs = (r.window_end - r.window_start).num_milliseconds().max(1) as f64 / 1000.0;
    // The contract's rates are counts over the window; allow rounding and a window measured a little
    // differently, nothing more.
    let most = |count: u64| count as f64 / secs * 1.5 + 1.0;
    if r.processing_rate > most(r.messages) {
        return Err(format!(
            "processing_rate {} is more than {} messages in a {secs} s window can give",
            r.processing_rate, r.messages
        ));
    }
    if r.throughput_bytes_per_s > most(r.bytes) {
        return Err(format!(
            "throughput_bytes_per_s {} is more than {} bytes in a {secs} s window can give",
            r.throughput_bytes_per_s, r.bytes
        ));
    }
    Ok(())
}

struct Monitor {
    db: Db,
    agreements: Agreements,
    producer: FutureProducer,
    brokers: String,
    judge: Judge,
    /// When each running instance last reported (or was first seen running).
    last_seen: HashMap<InstanceId, Instant>,
    /// When the monitor last found the broker out of reach (a read failed, or it did not answer a
    /// probe). No instance can report through a broker that is down, and its client takes a while to
    /// reconnect once the broker is back: silence is counted from then.
    broker_failed_at: Option<Instant>,
    /// Recent observations of each app's group, oldest first.
    history: HashMap<String, VecDeque<(chrono::DateTime<Utc>, lag::Observation)>>,
    /// What each member of each group last said it reads, and when.
    claims: HashMap<String, HashMap<String, (Instant, Vec<lag::Key>)>>,
}

impl Monitor {
    async fn handle(&mut self, key: Option<&[u8]>, payload: &[u8], signature: Option<&[u8]>) -> anyhow::Result<()> {
        let key_text = key.map(|k| String::from_utf8_lossy(k).into_owned());
        let outcome = match check(key, payload) {
            Ok(c) => self.trust(c, payload, signature).await?,
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

    /// The checks that need the store, the agreement and the broker, then the judgement. Long on
    /// purpose: each way a report can be untrustworthy is a step with its own drop reason, in the
    /// order they are cheapest to check.
    async fn trust(
        &mut self,
        c: Checked,
        payload: &[u8],
        signature: Option<&[u8]>,
    ) -> anyhow::Result<Result<(), Dropped>> {
        let t = Some(c.tenant.as_str());
        let Some(stream) = self.agreements.get(&c.tenant).and_then(|a| a.stream.clone()) else {
            return Ok(Err(dropped(
                t,
                "unknown_tenant",
                "no agreement with a stream section is in force for this tenant",
            )));
        };
        let inst = match self.author(&c, payload, signature).await? {
            Ok(i) => i,
            Err(d) => return Ok(Err(d)),
        };
        let r = &c.report;
        if let Err(why) = plausible(r, inst.created_at) {
            return Ok(Err(dropped(t, "implausible", why)));
        }
        // Asked to stop (or no longer running): its last report is its own but nothing is left to judge.
        let live =
            inst.desired == Desired::Running && matches!(inst.state, InstanceState::Running | InstanceState::Starting);
        // A report read long after it was sent (the monitor was down, or read its topic from the start)
        // is kept but not judged: the lag measured now says nothing about that window.
        let age = Utc::now().signed_duration_since(r.window_end).to_std().unwrap_or_default();
        let stale = age > stream.report_interval * SILENT_INTERVALS + STALE_SLACK;
        let (lag, verdict) = if !live {
            (None, Verdict::Final)
        } else if stale {
            (None, Verdict::Stale)
        } else if crate::stream::connectors::is_connector(&r.app) {
            // A source reads no topic: what waits for it is in its database's log, which the monitor
            // does not measure yet; a sink runs one instance and cannot be scaled out. Kept, and
            // their silence watched, not judged.
            self.last_seen.insert(c.instance, Instant::now());
            (None, Verdict::Unjudged)
        } else {
            self.last_seen.insert(c.instance, Instant::now());
            let group = crate::stream::consumer_group(&c.tenant, &r.app);
            let member = crate::stream::group_instance_id(&group, inst.id, inst.member);
            if let Some(claimed) = &r.partitions {
                let keys = claimed.iter().flat_map(|(t, ps)| ps.iter().map(|p| (t.clone(), *p))).collect();
                self.claims.entry(group.clone()).or_default().insert(member.clone(), (Instant::now(), keys));
            }
            let observed = self.observe(&c.tenant, &r.app, &group, &stream).await;
            if let Some(now) = &observed {
                let readable = now.readable_since(self.earlier(&group, r.window_start));
                if r.messages > readable + readable / 10 + 100 {
                    let why = format!(
                        "the report claims {} messages written in its window; the broker held at most {readable} \
                         to read (from the group's positions before the window to the partitions' ends now)",
                        r.messages
                    );
                    return Ok(Err(dropped(t, "implausible", why)));
                }
            }
            let share = observed.map(|o| o.share(&member));
            let lag = share.as_ref().map(|s| s.lag);
            let figures = Figures {
                messages: r.messages,
                processing_rate: r.processing_rate,
                avg_ingestion_ms: r.avg_ingestion_ms,
            };
            (lag, self.judge.judge(c.instance, figures, share, &stream.thresholds, stream.report_interval))
        };
        let stored = StoredReport {
            id: 0,
            tenant: c.tenant.clone(),
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

    /// The instance the report is from: one of the tenant's app, whose own key signed it.
    async fn author(
        &self,
        c: &Checked,
        payload: &[u8],
        signature: Option<&[u8]>,
    ) -> anyhow::Result<Result<instances::Instance, Dropped>> {
        let t = Some(c.tenant.as_str());
        let inst = match instances::get(&self.db, &c.tenant, c.instance).await? {
            Some(i) if i.app == c.report.app => i,
            Some(i) => {
                let what = format!("the instance runs `{}`, not `{}`", i.app, c.report.app);
                return Ok(Err(dropped(t, "unknown_instance", what)));
            }
            None => return Ok(Err(dropped(t, "unknown_instance", "no instance of this tenant has that id"))),
        };
        Ok(match signature {
            None => {
                let why =
                    format!("no `{SIGNATURE_HEADER}` header (the report must be signed with MYSIMBDP_REPORT_KEY)");
                Err(dropped(t, "unsigned", why))
            }
            Some(s) if !mysimbdp_contract::signature::verify(&inst.report_key, payload, s) => {
                let why = "the signature is not this instance's (HMAC-SHA256 of the payload with its report key)";
                Err(dropped(t, "bad_signature", why))
            }
            Some(_) => Ok(inst),
        })
    }

    /// The app's group at the broker now, kept for bounding later reports; None if the broker did
    /// not answer (the report is then not judged).
    async fn observe(
        &mut self,
        tenant: &TenantId,
        app: &str,
        group: &str,
        stream: &StreamAgreement,
    ) -> Option<lag::Observation> {
        let topics: Vec<String> = stream.inputs_of(app).into_iter().map(|t| tenant_topic(tenant, t)).collect();
        match lag::observe(&self.brokers, group, &topics).await {
            Ok(mut o) => {
                if o.partitions.values().all(|p| p.owner.is_none()) {
                    self.apply_claims(group, &mut o, stream.report_interval * SILENT_INTERVALS);
                }
                let now = Utc::now();
                let kept = self.history.entry(group.to_owned()).or_default();
                while kept.len() >= HISTORY || kept.front().is_some_and(|(at, _)| *at < now - HISTORY_AGE) {
                    kept.pop_front();
                }
                kept.push_back((now, o.clone()));
                Some(o)
            }
            Err(e) => {
                tracing::warn!(%tenant, group, error = %e, "observing the group at the broker failed; not judged");
                None
            }
        }
    }

    /// Owners from the members' own reports, the freshest claim winning (a partition moves between
    /// two reports during a rebalance); claims older than `fresh` are forgotten.
    fn apply_claims(&mut self, group: &str, o: &mut lag::Observation, fresh: Duration) {
        let Some(claims) = self.claims.get_mut(group) else { return };
        claims.retain(|_, (at, _)| at.elapsed() <= fresh);
        let mut by_age: Vec<(&String, &(Instant, Vec<lag::Key>))> = claims.iter().collect();
        by_age.sort_by_key(|(_, (at, _))| *at);
        for (member, (_, keys)) in by_age {
            for key in keys {
                if let Some(p) = o.partitions.get_mut(key) {
                    p.owner = Some(member.clone());
                }
            }
        }
    }

    /// The latest observation of `group` made no later than `at`.
    fn earlier(&self, group: &str, at: chrono::DateTime<Utc>) -> Option<&lag::Observation> {
        self.history.get(group)?.iter().rev().find(|(seen, _)| *seen <= at).map(|(_, o)| o)
    }

    async fn notify(
        &mut self,
        tenant: &TenantId,
        app: &str,
        instance: Option<InstanceId>,
        kind: &str,
        action: &str,
        reasons: Vec<Reason>,
    ) -> anyhow::Result<()> {
        let n = Notification {
            version: 1,
            id: crate::domain::NotificationId::now(),
            tenant: tenant.clone(),
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

    /// Whether the broker is out of reach now (remembered: see `broker_failed_at`).
    async fn broker_down(&mut self) -> bool {
        let down = crate::messaging::probe(&self.brokers, Duration::from_secs(1)).await.is_err();
        if down {
            self.broker_failed_at = Some(Instant::now());
        }
        down
    }

    /// Running instances that have not reported for three intervals, with the broker in reach all the
    /// while: ask for their restart.
    async fn find_silent(&mut self) -> anyhow::Result<()> {
        let running: Vec<instances::Instance> =
            instances::wanted(&self.db).await?.into_iter().filter(|i| i.state == InstanceState::Running).collect();
        let ids: std::collections::HashSet<InstanceId> = running.iter().map(|i| i.id).collect();
        self.last_seen.retain(|id, _| ids.contains(id));
        self.judge.retain(&ids);
        for inst in running {
            let tenant = inst.tenant.clone();
            let Some(stream) = self.agreements.get(&tenant).and_then(|a| a.stream.clone()) else { continue };
            let now = Instant::now();
            let mut seen = *self.last_seen.entry(inst.id).or_insert(now);
            // A run's silence counts from its start plus a grace for the program to get going (an
            // engine starting a container, the first connections): a report of the run before a
            // restart says nothing of this one.
            if let Some(started) = inst.started_at {
                let ago = Utc::now().signed_duration_since(started).to_std().unwrap_or_default();
                let expected = now.checked_sub(ago).unwrap_or(now) + START_GRACE;
                seen = seen.max(expected);
            }
            if let Some(failed) = self.broker_failed_at {
                seen = seen.max(failed + START_GRACE);
            }
            let limit = stream.report_interval * SILENT_INTERVALS;
            if now.duration_since(seen) > limit && !self.broker_down().await {
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
    metrics: std::sync::Arc<crate::metrics::Metrics>,
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
        brokers: brokers.clone(),
        judge: Judge::default(),
        last_seen: HashMap::new(),
        broker_failed_at: None,
        history: HashMap::new(),
        claims: HashMap::new(),
    };
    tracing::info!("stream monitor reading {METRICS_TOPIC}");
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sweep.tick() => {
                match monitor.find_silent().await {
                    Ok(()) => metrics.pass(crate::metrics::Pass::MonitorSweep),
                    Err(e) => tracing::warn!(error = %e, "looking for silent instances failed"),
                }
            }
            m = consumer.recv() => match m {
                Ok(m) => {
                    let signature = m
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == SIGNATURE_HEADER))
                        .and_then(|h| h.value);
                    if let Err(e) = monitor.handle(m.key(), m.payload().unwrap_or_default(), signature).await {
                        tracing::error!(error = %e, "handling a metrics report failed");
                    }
                }
                Err(e) => {
                    monitor.broker_failed_at = Some(Instant::now());
                    tracing::warn!(error = %e, "reading {METRICS_TOPIC} failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
}
