//! Releases the group members of instances that ended for good.
//!
//! An instance joins its app's consumer group as a static member (`stream::group_instance_id`), which
//! does not leave the group when the program stops. Once an instance has ended (stopped, or failed)
//! and no live instance took its member over, its member is removed from the group (see
//! `messaging::groups`), so its partitions go to the instances that remain. What is still to do is
//! derived from the store (`member_released_at` is null), so a crash of the platform at any point only
//! means the removal is done, harmlessly, again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::StreamCtx;
use crate::messaging::groups;
use crate::store::instances;
use crate::tenant::TenantId;

const EVERY: Duration = Duration::from_millis(500);
/// Longer than any consumer's session timeout (librdkafka's default is 45 s): a member of an instance
/// that ended this long ago is removed even while its group rebalances (see `groups::remove_static`).
const SESSIONS_OVER: Duration = Duration::from_secs(60);

pub async fn run(ctx: Arc<StreamCtx>, shutdown: CancellationToken) {
    let mut last_error = String::new();
    loop {
        match release(&ctx).await {
            Ok(()) => last_error.clear(),
            Err(e) => {
                // The broker may be down for a while; say so once, not twice a second.
                let e = format!("{e:#}");
                if e != last_error {
                    tracing::warn!(error = %e, "releasing ended instances' group members failed; retrying");
                    last_error = e;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

async fn release(ctx: &StreamCtx) -> anyhow::Result<()> {
    for (tenant, app) in instances::with_unreleased_members(&ctx.db).await? {
        let tenant = TenantId::parse(&tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
        let group = super::consumer_group(&tenant, &app);
        // Under the tenant's lock no new instance takes one of these members while they are removed.
        let mut tx = ctx.db.begin().await?;
        instances::lock_tenant(&mut tx, &tenant).await?;
        let ended = instances::unreleased_members(&mut tx, tenant.as_str(), &app, SESSIONS_OVER).await?;
        let mut leaving: Vec<String> =
            ended.iter().filter(|e| !e.taken_over).map(|e| super::group_instance_id(&group, e.id, e.member)).collect();
        leaving.sort();
        leaving.dedup();
        if !leaving.is_empty() {
            let overdue = ended.iter().any(|e| e.long_ago);
            match groups::remove_static(&ctx.brokers, &group, &leaving, overdue).await? {
                // The group is rebalancing; the next pass tries again.
                None => continue,
                Some(removed) if !removed.is_empty() => {
                    tracing::info!(tenant = %tenant, group, ?removed, "removed ended instances' members from the group")
                }
                Some(_) => {}
            }
        }
        let ids: Vec<_> = ended.iter().map(|e| e.id).collect();
        instances::members_released(&mut tx, &ids).await?;
        tx.commit().await?;
    }
    Ok(())
}
