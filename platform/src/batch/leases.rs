//! This manager's leases on the jobs it admits and runs (see `store::leases`), so that several
//! platform processes share one store and no job is worked on twice.
//!
//! - A lease is taken with the work (the claim's row, an attempt's start) and kept alive every third
//!   of its time to live while the work goes on.
//! - The store is the judge: a lease the store no longer renews (another manager took the job over)
//!   is given up at once, and its app stopped. A manager that cannot reach the store for a whole
//!   lease stops all its work, since others may take it over as soon as the store is back.
//! - A job whose lease ran out, or whose manager is known to be gone (a process on this machine that
//!   no longer exists), is taken over under the next fencing number and carried on from its state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{admission, finished, Ctx};
use crate::domain::{JobId, ManagerId, Reason};
use crate::layout::move_file;
use crate::store::jobs::{self, JobState};
use crate::store::leases::{self, Lease, TakenOver};
use crate::tenant::TenantId;

/// A job whose recovery failed this many times (each after its lease ran out) is failed with the
/// reason, so one file that cannot be recovered never blocks the rest.
const RECOVERY_TRIES: i64 = 4;

pub struct Leases {
    pub lease: Lease,
    boot_id: String,
    held: Mutex<HashMap<JobId, Held>>,
}

struct Held {
    fence: i64,
    /// Stops the work done under the lease when it is lost.
    lost: CancellationToken,
}

impl Leases {
    pub fn new(ttl: Duration) -> Self {
        let boot_id = crate::runtime::process::boot_id();
        Leases { lease: Lease { owner: ManagerId::now(), ttl }, boot_id, held: Mutex::default() }
    }

    /// Keeps the lease on `id` (under `fence`) alive until `release`; the token is cancelled if
    /// the lease is lost meanwhile.
    pub fn hold(&self, id: JobId, fence: i64, lost: CancellationToken) {
        self.held.lock().expect("leases lock").insert(id, Held { fence, lost });
    }

    /// Does `work` on `id` holding its lease (`fence`), and lets the lease go after: kept alive while
    /// the work lasts, left to run out if the work failed, so the sweep takes the job up again.
    pub async fn holding<T>(&self, id: JobId, fence: i64, work: impl std::future::Future<Output = T>) -> T {
        self.hold(id, fence, CancellationToken::new());
        let out = work.await;
        self.release(id);
        out
    }

    pub fn release(&self, id: JobId) {
        self.held.lock().expect("leases lock").remove(&id);
    }

    /// The fencing number this manager holds `id` under, if it holds it.
    pub fn fence(&self, id: JobId) -> Option<i64> {
        self.held.lock().expect("leases lock").get(&id).map(|h| h.fence)
    }

    fn snapshot(&self) -> Vec<(JobId, i64)> {
        self.held.lock().expect("leases lock").iter().map(|(id, h)| (*id, h.fence)).collect()
    }

    /// Gives up the leases of `lost` (taken as they were in the snapshot) and stops their work.
    fn give_up(&self, lost: &[(JobId, i64)]) {
        let mut held = self.held.lock().expect("leases lock");
        for (id, fence) in lost {
            if held.get(id).is_some_and(|h| h.fence == *fence) {
                let h = held.remove(id).expect("checked above");
                h.lost.cancel();
                tracing::warn!(job = %id, fence, "lease on the job lost to another batch manager; its work here stops");
            }
        }
    }
}

/// Registers this manager, so others on this machine can tell when it is gone.
pub async fn register(ctx: &Ctx) -> anyhow::Result<()> {
    let pid = std::process::id();
    let ticks = crate::runtime::process::start_ticks(pid).unwrap_or_default();
    leases::register(&ctx.db, ctx.leases.lease.owner, &ctx.leases.boot_id, pid as i32, ticks).await?;
    tracing::info!(manager = %ctx.leases.lease.owner, "batch manager registered");
    Ok(())
}

/// Renews the held leases every third of their time to live until shutdown.
pub async fn keep(ctx: Arc<Ctx>) {
    let every = ctx.leases.lease.ttl / 3;
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let held = ctx.leases.snapshot();
        match leases::renew(&ctx.db, ctx.leases.lease.owner, &held, ctx.leases.lease.ttl).await {
            Ok(renewed) => {
                last_renewed = Instant::now();
                let lost: Vec<_> = held.into_iter().filter(|(id, _)| !renewed.contains(id)).collect();
                ctx.leases.give_up(&lost);
            }
            Err(e) if last_renewed.elapsed() >= ctx.leases.lease.ttl => {
                tracing::error!(error = %e, "leases could not be renewed for a whole lease; stopping the work held under them");
                ctx.leases.give_up(&held);
            }
            Err(e) => tracing::warn!(error = %e, "renewing leases failed; trying again"),
        }
    }
}

/// Takes over every job whose lease ran out or whose manager is gone, and carries each on from its
/// state. One job that fails does not stop the others. Returns how many were taken.
pub async fn take_over(ctx: &Arc<Ctx>) -> anyhow::Result<usize> {
    let gone: Vec<ManagerId> = leases::holders(&ctx.db, ctx.leases.lease.owner)
        .await?
        .into_iter()
        .filter(|h| h.boot_id == ctx.leases.boot_id && !crate::runtime::process::alive(h.pid as u32, h.start_ticks))
        .map(|h| h.id)
        .collect();
    let held: Vec<JobId> = ctx.leases.snapshot().into_iter().map(|(id, _)| id).collect();
    let taken = leases::take_over(&ctx.db, ctx.leases.lease.owner, ctx.leases.lease.ttl, &gone, &held).await?;
    let n = taken.len();
    for t in taken {
        let (id, fence) = (t.job.id, t.job.fence);
        let tenant = t.job.tenant.clone();
        let state = t.job.state();
        if let Err(e) = ctx.leases.holding(id, fence, carry_on(ctx, &tenant, &t)).await {
            tracing::error!(%tenant, job = %id, fence, error = %e, "taking up the job failed; its lease will run out and it is tried again");
            if state == JobState::Detected && fence >= RECOVERY_TRIES {
                give_up_job(ctx, &tenant, &t, &format!("{e:#}")).await;
            }
        }
    }
    Ok(n)
}

/// Carries on a taken-over job: a claim is finished and judged; an interrupted attempt (its app
/// ended if it is still running on this machine) is queued again.
async fn carry_on(ctx: &Arc<Ctx>, tenant: &TenantId, t: &TakenOver) -> anyhow::Result<()> {
    let job = &t.job;
    match job.state() {
        JobState::Detected => {
            let work = PathBuf::from(&job.work_path);
            if !work.exists() {
                match move_file(Path::new(&job.staging_path), &work) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(%tenant, job = %job.id, "claimed file is gone from staging; forgetting the claim");
                        jobs::forget(&ctx.db, tenant, job.id, job.fence).await?;
                        let _ = std::fs::remove_dir(ctx.layout.work_dir(tenant, job.id));
                        return Ok(());
                    }
                    other => other.map_err(|e| anyhow::anyhow!("moving the claimed file out of staging: {e}"))?,
                }
            }
            admission::evaluate(ctx, tenant, job).await
        }
        JobState::Running => {
            if let (Some(pid), Some(ticks)) = (job.pid, job.pid_start_ticks) {
                let here = match t.old_owner {
                    Some(owner) => leases::boot_id(&ctx.db, owner).await?.is_none_or(|b| b == ctx.leases.boot_id),
                    None => true,
                };
                if here && crate::runtime::process::kill_leftover(pid, ticks) {
                    tracing::warn!(%tenant, job = %job.id, pid, "ended an app whose manager is gone");
                }
            }
            let why = format!("its batch manager stopped during attempt {}; running it again", job.attempts);
            jobs::requeue_interrupted(&ctx.db, tenant, job.id, job.fence, &why).await?;
            ctx.scheduler.push(tenant, job.id);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Fails a claim whose recovery keeps failing, with the reason, and quarantines its file if it can.
async fn give_up_job(ctx: &Arc<Ctx>, tenant: &TenantId, t: &TakenOver, error: &str) {
    let job = &t.job;
    let target = ctx.layout.quarantine_file(tenant, job.id, &job.file_name);
    let detail = format!("the claimed file could not be taken up after {} tries: {error}", job.fence);
    let failed = jobs::fail_without_run(
        &ctx.db,
        tenant,
        job.id,
        job.fence,
        Reason::RecoveryFailed,
        &detail,
        Some(&target.to_string_lossy()),
    )
    .await;
    match failed {
        Ok(Some(done)) => {
            tracing::error!(%tenant, job = %job.id, %detail, "failed");
            if let Err(e) = finished(ctx, tenant, &done).await {
                tracing::error!(%tenant, job = %job.id, error = %e, "moving the failed file to quarantine failed; recovery moves it later");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(%tenant, job = %job.id, error = %e, "recording the failure failed"),
    }
}
