//! The manager's side of the loop: reads the monitor's notifications from `mysimbdp.control` and
//! acts within the agreement: `scale_out` adds an instance unless the tenant is at `max_instances`,
//! `restart` restarts the instance named, `notify` only records. Nothing is changed within the
//! agreement's `cooldown` of the last change. Every decision, applied or skipped, is recorded with the
//! notification that caused it, in the same transaction as its effect; a notification read again
//! after a crash finds its record and is not acted on twice. Offsets are committed after that.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::{Manager, StreamCtx};
use crate::messaging::topics::CONTROL_TOPIC;
use crate::store::instances::{self, NewInstances};
use crate::store::stream::{self as stream_store, NewAction, Notification};
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
        let payload = message.payload().unwrap_or_default();
        match serde_json::from_slice::<Notification>(payload) {
            Ok(n) => loop {
                match act(&ctx, &manager, &n).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(notification = %n.id, error = %e, "acting on a notification failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            },
            Err(e) => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                error = %e,
                "ignored a message on {CONTROL_TOPIC} that is not a notification"
            ),
        }
        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(error = %e, "committing {CONTROL_TOPIC} offsets failed; a notification may be read again");
        }
    }
}

/// Decides and records what to do about one notification; the effect is in the same transaction.
async fn act(ctx: &StreamCtx, manager: &Manager, n: &Notification) -> anyhow::Result<()> {
    let Some(tenant) = TenantId::parse(&n.tenant).ok().filter(|t| ctx.agreements.get(t).is_some()) else {
        // Not a tenant of this platform (platforms may share a broker).
        tracing::debug!(notification = %n.id, tenant = %n.tenant, "notification for a tenant not served here; ignored");
        return Ok(());
    };
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
            if let (Some(at), true) = (cooling, n.action != "notify") {
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
    let version: Option<(i32, String)> = sqlx::query_as(
        "select app_version, runtime from stream_instances where tenant = $1 and app = $2
         order by (id = $3) desc, created_at desc limit 1",
    )
    .bind(tenant.as_str())
    .bind(&n.app)
    .bind(n.instance)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((app_version, runtime)) = version else {
        return Ok(("skipped", before, format!("no instance of `{}` to copy", n.app)));
    };
    let cause = format!("scale_out: notification {}", n.id);
    let new = NewInstances { tenant, app: &n.app, app_version, runtime: &runtime, count: 1, max, cause: &cause };
    instances::create(tx, &new).await?;
    Ok(("applied", before + 1, format!("scaled {} from {before} to {} instances", n.app, before + 1)))
}
