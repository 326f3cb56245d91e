//! The manager's side of the loop: reads the monitor's notifications from `mysimbdp.control` and
//! acts within the agreement: `scale_out` adds an instance unless the tenant is at `max_instances`,
//! `restart` restarts the instance named (counted against `max_restarts`), `notify` only records.
//! Nothing is changed within the agreement's `cooldown` of the last change, and a tenant's stop wins
//! over any notification. Every decision, applied or skipped, is recorded with the notification that
//! caused it, in the same transaction as its effect; a notification read again after a crash finds
//! its record and is not acted on twice. Offsets are committed after that.
//!
//! Anyone who can write to the broker can write to the control topic, so a message is only a pointer:
//! the manager acts on the notification the monitor stored under its id, and drops (and records in
//! `control_dropped`, with the reason) whatever is not one, names no stored notification, differs from
//! the stored one, or fails every time it is tried. The loop never stops on a message.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::{Manager, StreamCtx};
use crate::domain::Desired;
use crate::messaging::topics::CONTROL_TOPIC;
use crate::store::instances::{self, NewInstances};
use crate::store::stream::{self as stream_store, DroppedControl, NewAction, Notification};
use crate::tenant::TenantId;
use crate::units::format_duration;

pub async fn run(ctx: Arc<StreamCtx>, manager: Manager, shutdown: CancellationToken) {
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &ctx.brokers)
        .set("group.id", format!("{}-manager", ctx.cluster))
        .set("enable.auto.commit", "false")
        // A new platform acts on what is notified from now on, not on another platform's history.
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "20")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the stream manager cannot read notifications");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[CONTROL_TOPIC]) {
        tracing::error!(error = %e, "subscribing to {CONTROL_TOPIC} failed");
        return;
    }
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading {CONTROL_TOPIC} failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        handle(&ctx, &manager, &message, &shutdown).await;
        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(error = %e, "committing {CONTROL_TOPIC} offsets failed; a notification may be read again");
        }
    }
}

/// The largest control message read; a notification is a few hundred bytes.
const MAX_MESSAGE: usize = 64 << 10;
/// Tries at acting on one notification before it is set aside as dead (a store that is down, a
/// notification that fails every time): the loop goes on past it.
const ATTEMPTS: u32 = 3;

/// One message from the control topic: acted on, or dropped with its reason. Never stalls the loop.
async fn handle(
    ctx: &StreamCtx,
    manager: &Manager,
    message: &rdkafka::message::BorrowedMessage<'_>,
    shutdown: &CancellationToken,
) {
    let (partition, offset) = (message.partition(), message.offset());
    let drop = |reason: &'static str, detail: String, n: Option<&Notification>| {
        let db = ctx.db.clone();
        let (tenant, id) = (n.map(|n| n.tenant.clone()), n.map(|n| n.id));
        async move {
            tracing::warn!(reason, %detail, partition, offset, "dropped a message on {CONTROL_TOPIC}");
            let d = DroppedControl {
                reason,
                detail: &detail,
                tenant: tenant.as_ref().map(TenantId::as_str),
                notification: id,
                partition,
                offset,
            };
            if let Err(e) = stream_store::insert_control_dropped(&db, &d).await {
                tracing::error!(error = %e, "recording a dropped control message failed");
            }
        }
    };
    let payload = message.payload().unwrap_or_default();
    if payload.len() > MAX_MESSAGE {
        return drop("too_large", format!("{} bytes, over {MAX_MESSAGE}", payload.len()), None).await;
    }
    let n = match serde_json::from_slice::<Notification>(payload) {
        Ok(n) => n,
        Err(e) => return drop("malformed", format!("not a notification: {e}"), None).await,
    };
    if ctx.agreements.get(&n.tenant).is_none() {
        // Not a tenant of this platform (platforms may share a broker): not this manager's to judge.
        tracing::debug!(notification = %n.id, tenant = %n.tenant, "notification for a tenant not served here; ignored");
        return;
    }
    for attempt in 1..=ATTEMPTS {
        let outcome = match stream_store::notification(&ctx.db, n.id).await {
            Ok(None) => {
                let detail = format!("no notification {} was stored by this platform's monitor", n.id);
                return drop("unknown_notification", detail, Some(&n)).await;
            }
            Ok(Some(stored)) if !same(&stored, &n) => {
                let detail = format!("differs from the notification {} the monitor stored", n.id);
                return drop("mismatch", detail, Some(&n)).await;
            }
            Ok(Some(stored)) => act(ctx, manager, &stored).await,
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => return,
            Err(e) if attempt == ATTEMPTS => {
                return drop("failed", format!("acting on it failed {ATTEMPTS} times, last: {e:#}"), Some(&n)).await
            }
            Err(e) => {
                tracing::error!(notification = %n.id, attempt, error = %e, "acting on a notification failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// The message says what the monitor stored (its time and figures aside, which change nothing).
fn same(stored: &Notification, read: &Notification) -> bool {
    (&stored.tenant, &stored.app, stored.instance, &stored.kind, &stored.action)
        == (&read.tenant, &read.app, read.instance, &read.kind, &read.action)
}

/// Decides and records what to do about one stored notification; the effect is in the same
/// transaction.
async fn act(ctx: &StreamCtx, manager: &Manager, n: &Notification) -> anyhow::Result<()> {
    let tenant = n.tenant.clone();
    let mut tx = ctx.db.begin().await?;
    instances::lock_tenant(&mut tx, &tenant).await?;
    if stream_store::already_acted(&mut tx, n.id).await? {
        return Ok(()); // read again after a crash; done before
    }
    let before = instances::count_wanted(&mut tx, &tenant).await?;
    let stream = ctx.agreements.get(&tenant).and_then(|a| a.stream.clone());
    let mut restart = None;
    let (outcome, after, detail) = match &stream {
        None => ("skipped", before, "the tenant's agreement has no stream section".to_owned()),
        Some(stream) => {
            let last = stream_store::last_applied(&mut tx, &tenant, &n.app).await?;
            let cooling = last.filter(|at| {
                chrono::Utc::now().signed_duration_since(*at).to_std().unwrap_or_default() < stream.thresholds.cooldown
            });
            let wanted = wanted_state(&mut tx, &tenant, n).await?;
            if let Some(why) = wanted {
                ("skipped", before, why)
            } else if let (Some(at), true) = (cooling, n.action != "notify") {
                let detail = format!(
                    "within the cooldown of {} after the action at {}",
                    format_duration(stream.thresholds.cooldown),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                );
                ("skipped", before, detail)
            } else {
                match n.action.as_str() {
                    "scale_out" => scale_out(&mut tx, &tenant, n, stream.max_instances, before).await?,
                    "restart" => match n.instance {
                        Some(id) => {
                            restart = Some(id);
                            ("applied", before, format!("restarted instance {id}"))
                        }
                        None => ("skipped", before, "the notification names no instance to restart".into()),
                    },
                    "notify" => ("applied", before, "recorded; the agreement asks only to notify".into()),
                    other => ("skipped", before, format!("unknown action `{other}`")),
                }
            }
        }
    };
    let record = NewAction {
        tenant: tenant.as_str(),
        app: &n.app,
        notification: n.id,
        action: &n.action,
        outcome,
        detail: &detail,
        before,
        after,
    };
    stream_store::insert_action(&mut tx, &record).await?;
    tx.commit().await?;
    if let Some(id) = restart {
        if !manager.restart(id) {
            tracing::warn!(instance = %id, "asked to restart an instance that is not running here");
        }
    }
    tracing::info!(%tenant, app = %n.app, notification = %n.id, action = %n.action, outcome, %detail, "acted on notification");
    Ok(())
}

/// Why a notification must not change anything: its instance is not one of that app's, or the tenant
/// stopped the app (or that instance). None: it may act.
async fn wanted_state(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    n: &Notification,
) -> anyhow::Result<Option<String>> {
    if let Some(id) = n.instance {
        match instances::owner(tx, id).await? {
            Some((t, a, desired)) if t == tenant.as_str() && a == n.app => {
                if n.action == "restart" && desired != Desired::Running {
                    return Ok(Some(format!("instance {id} was stopped; a stop wins over any notification")));
                }
            }
            _ => return Ok(Some(format!("instance {id} is not an instance of `{}`", n.app))),
        }
    }
    let running = instances::count_wanted_of(tx, tenant, &n.app).await?;
    if running == 0 && n.action != "notify" {
        return Ok(Some(format!("`{}` was stopped by its tenant; a stop wins over any notification", n.app)));
    }
    Ok(None)
}

async fn scale_out(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    n: &Notification,
    max: u64,
    before: u64,
) -> anyhow::Result<(&'static str, u64, String)> {
    if before >= max {
        return Ok(("skipped", before, format!("already at the agreement's max_instances of {max}")));
    }
    // The new instance runs what the breaching one runs.
    let Some((app_version, runtime)) = instances::version_to_copy(tx, tenant, &n.app, n.instance).await? else {
        return Ok(("skipped", before, format!("no instance of `{}` to copy", n.app)));
    };
    let cause = format!("scale_out: notification {}", n.id);
    let new = NewInstances { tenant, app: &n.app, app_version, runtime: &runtime, count: 1, max, cause: &cause };
    instances::create(tx, &new).await?;
    Ok(("applied", before + 1, format!("scaled {} from {before} to {} instances", n.app, before + 1)))
}
