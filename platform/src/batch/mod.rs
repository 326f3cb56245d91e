//! mysimbdp-batchingestmanager: watches `staging/<tenant>/`, admits complete files under the tenant's
//! agreement, and runs the tenant's batch app on each, recording exactly one outcome per file.
//!
//! watcher -> admission (claim, checks) -> scheduler (fair queues) -> runner (black-box app) -> finalize
//!
//! State lives in the store and the file system only; `recover` rebuilds everything in memory from
//! them at start, so a platform killed at any point loses no file and ingests none twice.

pub mod admission;
pub mod frozen;
pub mod grouped;
pub mod leases;
pub mod runner;
pub mod scheduler;
pub mod sniff;
pub mod watcher;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agreement::registry::Agreements;
use crate::domain::JobId;
use crate::layout::{move_file, Layout};
use crate::names::is_ignored;
use crate::store::jobs::{self, Job, JobState};
use crate::store::Db;
use crate::tenant::TenantId;
use crate::tenants::Tenants;
use grouped::Grouped;
use scheduler::Scheduler;

pub use crate::config::BatchConfig;

const WORK_AREA_EVERY: Duration = Duration::from_secs(30);

/// What every part of the batch manager shares.
pub struct Ctx {
    pub db: Db,
    pub layout: Layout,
    pub agreements: Agreements,
    pub tenants: Arc<Tenants>,
    pub scheduler: Scheduler,
    pub config: BatchConfig,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Cancelled on shutdown; running apps are stopped and their jobs requeued.
    pub shutdown: CancellationToken,
    /// Where apps run (absent: `--sandbox off`, unconfined).
    pub sandbox: Option<Arc<crate::runtime::sandbox::Sandbox>>,
    /// Staging paths being claimed right now, so a rename event and a rescan do not race for one file.
    claiming: Mutex<HashSet<PathBuf>>,
    /// Bounds the files being hashed and sniffed at once (I/O- and CPU-bound), so small files keep
    /// flowing past a huge one; claiming (a row and a rename) is not bounded by it.
    pub(crate) hashing: Semaphore,
    /// Claims, and admissions of checked files, sent to the store in groups per tenant.
    pub(crate) claims: Arc<Grouped<TenantId, jobs::Claim, Job>>,
    pub(crate) admissions: Arc<Grouped<TenantId, (jobs::Queue, jobs::Limits), bool>>,
    /// The jobs this manager works on, leased from the store.
    pub leases: leases::Leases,
    tasks: TaskTracker,
}

/// What the batch manager works with, shared with the rest of the platform.
pub struct Services {
    pub db: Db,
    pub layout: Layout,
    pub agreements: Agreements,
    pub tenants: Arc<Tenants>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where apps run (absent: `--sandbox off`, unconfined).
    pub sandbox: Option<Arc<crate::runtime::sandbox::Sandbox>>,
}

/// Runs the batch manager until `shutdown`, then waits for running apps to stop.
pub async fn run(services: Services, config: BatchConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&services.layout.staging)?;
    crate::config::private_dir(&services.layout.work_root())?;
    let ctx = context(services, config, shutdown.clone());
    leases::register(&ctx).await?;
    recover(&ctx).await;
    let keeper = tokio::spawn(leases::keep(ctx.clone()));

    let (tx, mut candidates) = mpsc::unbounded_channel();
    let _watcher = watcher::watch(&ctx.layout.staging, tx.clone())?;
    let dispatcher = tokio::spawn(dispatch(ctx.clone()));
    // The store's sweeps run on their own, so that a store that is slow or down holds up neither
    // the rename events nor the rescan.
    let sweeper = tokio::spawn(sweep(ctx.clone()));
    let mut rescan = tokio::time::interval(ctx.config.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(staging = %ctx.layout.staging.display(), workers = ctx.config.workers, "batch manager started");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(renamed) = candidates.recv() => consider(&ctx, renamed, true),
            _ = rescan.tick() => rescan_staging(&ctx),
        }
    }
    tracing::info!("batch manager stopping: no new files; running apps get SIGTERM");
    ctx.tasks.close();
    ctx.tasks.wait().await;
    dispatcher.abort();
    sweeper.abort();
    keeper.abort();
    if let Err(e) = crate::store::leases::unregister(&ctx.db, ctx.leases.lease.owner).await {
        tracing::warn!(error = %e, "unregistering the batch manager failed");
    }
    Ok(())
}

/// The manager's shared state, with the grouped writers of claims and admissions.
fn context(services: Services, config: BatchConfig, shutdown: CancellationToken) -> Arc<Ctx> {
    let Services { db, layout, agreements, tenants, metrics, sandbox } = services;
    let leases = leases::Leases::new(config.lease);
    Arc::new(Ctx {
        db: db.clone(),
        layout,
        agreements,
        tenants,
        scheduler: Scheduler::default(),
        config,
        metrics,
        shutdown,
        sandbox,
        claiming: Mutex::new(HashSet::new()),
        hashing: Semaphore::new(4),
        claims: Arc::new(Grouped::new({
            let (db, lease) = (db.clone(), leases.lease);
            move |tenant, claims| {
                let db = db.clone();
                Box::pin(async move { Ok(jobs::insert_detected(&db, &tenant, &claims, &lease).await?) })
            }
        })),
        admissions: Arc::new(Grouped::new({
            let db = db.clone();
            move |tenant, batch: Vec<(jobs::Queue, jobs::Limits)>| {
                let db = db.clone();
                Box::pin(async move {
                    let queued = jobs::admit(&db, &tenant, &batch).await?;
                    Ok(batch.iter().map(|(q, _)| queued.contains(&q.id)).collect())
                })
            }
        })),
        leases,
        tasks: TaskTracker::new(),
    })
}

/// Every file in the staging folders of tenants with batch ingestion that is at least the agreement's
/// `min_file_age` old: what the watch's events missed (an overflow, a restart, a slow writer).
fn rescan_staging(ctx: &Arc<Ctx>) {
    let snapshot = ctx.agreements.current();
    for (tenant, agreement) in &snapshot.in_force {
        let Some(batch) = &agreement.batch else { continue };
        for (path, age) in watcher::list(&ctx.layout.staging_dir(tenant)) {
            if age >= batch.min_file_age {
                consider(ctx, path, false);
            }
        }
    }
    ctx.metrics.pass(crate::metrics::Pass::BatchRescan);
}

/// Work found in the store (every 2 s) and files left in the work area (every `WORK_AREA_EVERY`).
async fn sweep(ctx: Arc<Ctx>) {
    // Work queued by others (an operator's retry, a manager that stopped) is found in the store.
    let mut store = tokio::time::interval(Duration::from_secs(2));
    store.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Files a failed move left in the work area (a full disk, say) are moved once it clears.
    let mut work_area = tokio::time::interval_at(tokio::time::Instant::now() + WORK_AREA_EVERY, WORK_AREA_EVERY);
    work_area.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = store.tick() => sweep_store(&ctx).await,
            _ = work_area.tick() => {
                recover_work_area(&ctx).await;
            }
        }
    }
}

/// Work found in the store: jobs queued by others (an operator's retry, a manager that stopped) and
/// jobs whose lease ran out (a manager that hangs, is cut off, or is gone).
async fn sweep_store(ctx: &Arc<Ctx>) {
    match jobs::queued(&ctx.db).await {
        // Pushing a job the scheduler holds already is a no-op, and a job that is started twice is
        // refused by `start_attempt`, so the sweep cannot run anything twice.
        Ok(queued) => {
            for (id, tenant) in queued {
                if let Ok(tenant) = TenantId::parse(&tenant) {
                    ctx.scheduler.push_if_idle(&tenant, id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweeping queued jobs failed"),
    }
    match leases::take_over(ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(jobs = n, "took over jobs whose batch manager stopped answering"),
        Err(e) => tracing::warn!(error = %e, "looking for jobs whose lease ran out failed"),
    }
}

/// Takes a candidate path through the staging rules and, if it is a tenant's complete file, admits it.
fn consider(ctx: &Arc<Ctx>, path: PathBuf, renamed: bool) {
    let Some((tenant, name)) = tenant_file(&ctx.layout.staging, &path) else { return };
    if is_ignored(&name.to_string_lossy()) || ctx.shutdown.is_cancelled() {
        return;
    }
    let Some(agreement) = ctx.agreements.get(&tenant) else { return };
    if agreement.batch.is_none() {
        return;
    }
    // Anything but a folder is taken (and a link, FIFO or device refused with its reason at
    // admission, never followed or opened as what it points to).
    if renamed && std::fs::symlink_metadata(&path).map_or(true, |m| m.is_dir()) {
        return;
    }
    if !ctx.claiming.lock().expect("claiming lock").insert(path.clone()) {
        return;
    }
    let ctx = ctx.clone();
    ctx.clone().tasks.spawn(async move {
        if let Err(e) = admission::claim(&ctx, &tenant, &path).await {
            tracing::error!(%tenant, file = %path.display(), error = %e, "admitting file failed; it will be retried");
        }
        ctx.claiming.lock().expect("claiming lock").remove(&path);
    });
}

/// `staging/<tenant>/<name>` -> (tenant, name); anything deeper or elsewhere is not a staged file.
/// The name is taken whatever its bytes (admission refuses a bad one with its reason).
fn tenant_file(root: &Path, path: &Path) -> Option<(TenantId, std::ffi::OsString)> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let tenant = parts.next()?.as_os_str().to_str()?;
    let name = parts.next()?.as_os_str().to_owned();
    if parts.next().is_some() {
        return None;
    }
    Some((TenantId::parse(tenant).ok()?, name))
}

/// Starts queued jobs whenever a slot is free.
async fn dispatch(ctx: Arc<Ctx>) {
    loop {
        let limit = |t: &TenantId| {
            ctx.agreements.get(t).and_then(|a| a.batch.as_ref().map(|b| b.max_concurrent_jobs as usize)).unwrap_or(1)
        };
        while let Some((tenant, id)) = ctx.scheduler.next(ctx.config.workers, limit) {
            let ctx2 = ctx.clone();
            ctx.tasks.spawn(async move {
                if let Err(e) = runner::run(&ctx2, &tenant, id).await {
                    // The platform failed (store, coredms, file system), not the app: try again later.
                    tracing::error!(%tenant, job = %id, error = ?e, "running the job failed in the platform; retrying in 5s");
                    // A job that did not start is still queued, whatever the fencing number.
                    let fence = ctx2.leases.fence(id).unwrap_or(-1);
                    let why = format!("platform error, retrying: {e:#}");
                    match jobs::requeue_interrupted(&ctx2.db, &tenant, id, fence, &why).await {
                        Ok(()) => retry_after(&ctx2, &tenant, id, Duration::from_secs(5)),
                        Err(e) => tracing::error!(%tenant, job = %id, error = %e, "requeue failed; its lease runs out and another manager takes it up"),
                    }
                }
                ctx2.leases.release(id);
                ctx2.scheduler.done(&tenant, id);
            });
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ctx.scheduler.wake.notified() => {}
        }
    }
}

/// Puts a job back in the queue after `delay` (its retry backoff).
pub(crate) fn retry_after(ctx: &Arc<Ctx>, tenant: &TenantId, id: JobId, delay: Duration) {
    let (ctx2, tenant) = (ctx.clone(), tenant.clone());
    ctx.tasks.spawn(async move {
        tokio::select! {
            _ = ctx2.shutdown.cancelled() => return, // stays in retry_wait; recovery schedules it
            _ = tokio::time::sleep(delay) => {}
        }
        match jobs::requeue(&ctx2.db, &tenant, id, "retrying after backoff").await {
            Ok(()) => ctx2.scheduler.push(&tenant, id),
            Err(e) => tracing::error!(%tenant, job = %id, error = %e, "requeue failed; recovery will take it up"),
        }
    });
}

/// A claimed file in `<work>/<tenant>/<job>/` with no job row: the claim's commit was lost. The
/// row is written again under the same id and the file goes through admission as if just claimed.
async fn adopt_orphan(ctx: &Arc<Ctx>, tenant: &TenantId, id: JobId, dir: &Path) -> anyhow::Result<()> {
    let files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        // A staged name never starts with a dot: such a file is a copy a failed move left.
        .filter(|n| !n.starts_with('.'))
        .collect();
    let [name] = files.as_slice() else {
        tracing::warn!(%tenant, job = %id, dir = %dir.display(), files = files.len(), "work folder without a job row is not one claimed file; left alone");
        return Ok(());
    };
    let staging = ctx.layout.staging_dir(tenant).join(name);
    let work = ctx.layout.work_file(tenant, id, name);
    let claim = jobs::Claim {
        id,
        file_name: name.clone(),
        file_name_bytes: None,
        staging_path: staging.to_string_lossy().into_owned(),
        work_path: work.to_string_lossy().into_owned(),
    };
    let job = ctx.claims.send(tenant.clone(), claim).await?;
    tracing::warn!(%tenant, job = %id, file = %name, "adopted a claimed file whose job row was lost");
    ctx.leases.holding(id, job.fence, admission::evaluate(ctx, tenant, &job)).await
}

/// A job has just reached its final state: count it and bring the file system in line.
pub(crate) async fn finished(ctx: &Ctx, tenant: &TenantId, job: &Job) -> anyhow::Result<()> {
    ctx.metrics.job_finished(job);
    finalize(ctx, tenant, job).await
}

/// Brings the file system in line with a final job: its file moved to `final_path` (plus a reason
/// file beside a quarantined one) and its work folder gone. Repeatable; recovery calls it for jobs
/// whose move a crash cut short. The move may be a copy of gigabytes to another disk: it runs off the
/// runtime's workers.
pub(crate) async fn finalize(ctx: &Ctx, tenant: &TenantId, job: &Job) -> anyhow::Result<()> {
    if !job.state().is_final() {
        return Ok(());
    }
    let (job, dir) = (job.clone(), ctx.layout.work_dir(tenant, job.id));
    tokio::task::spawn_blocking(move || finalize_files(&job, &dir)).await?
}

fn finalize_files(job: &Job, dir: &Path) -> anyhow::Result<()> {
    let work = PathBuf::from(&job.work_path);
    if let (Some(target), true) = (&job.final_path, work.exists()) {
        let target = PathBuf::from(target);
        if job.state() != JobState::Succeeded {
            let reason = serde_json::json!({
                "job": job.id, "tenant": job.tenant, "file": job.file_name, "state": job.state,
                "reason": job.reason, "detail": job.detail, "exit_code": job.exit_code, "signal": job.signal,
                "log": job.log,
            });
            let sidecar = crate::layout::reason_file(&target);
            if let Some(parent) = sidecar.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&sidecar, serde_json::to_vec_pretty(&reason)?)?;
        }
        match move_file(&work, &target) {
            // Moved meanwhile by another manager finishing the same job.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.exists() => {}
            other => other?,
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Takes up what earlier managers left: claims cut short and apps interrupted (`leases::take_over`:
/// a lease of a manager that is gone is taken at once, a live manager's work is left to it), queued
/// and waiting jobs, final jobs whose file was not yet moved, and claimed files whose row was lost.
/// Job by job: one that fails is logged (and, if it keeps failing, failed with its reason); the
/// manager always starts.
async fn recover(ctx: &Arc<Ctx>) {
    let taken = leases::take_over(ctx).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "taking over interrupted jobs failed; the sweep tries again");
        0
    });
    let (mut queued, mut waiting) = (0, 0);
    match jobs::open_jobs(&ctx.db).await {
        Ok(open) => {
            for job in open {
                let tenant = job.tenant.clone();
                match job.state() {
                    JobState::Queued => {
                        queued += 1;
                        ctx.scheduler.push(&tenant, job.id);
                    }
                    JobState::RetryWait => {
                        waiting += 1;
                        let delay = job
                            .not_before
                            .map_or(Duration::ZERO, |t| (t - chrono::Utc::now()).to_std().unwrap_or_default());
                        retry_after(ctx, &tenant, job.id, delay);
                    }
                    _ => {}
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "listing open jobs failed; the sweep finds queued ones"),
    }
    let (finalized, adopted) = recover_work_area(ctx).await;
    if taken + queued + waiting + finalized + adopted > 0 {
        tracing::info!(taken, queued, retry_wait = waiting, finalized, adopted, "recovered jobs left by earlier runs");
    }
}

/// Final jobs whose file or work folder is still in the work area, and claimed files whose row a
/// crash of the machine or of PostgreSQL lost (claims commit without waiting for the flush).
async fn recover_work_area(ctx: &Arc<Ctx>) -> (usize, usize) {
    let (mut finalized, mut adopted) = (0, 0);
    let tenants = match std::fs::read_dir(ctx.layout.work_root()) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, dir = %ctx.layout.work_root().display(), "listing the work area failed");
            return (0, 0);
        }
    };
    for tenant_dir in tenants.filter_map(|e| e.ok()) {
        let Some(tenant) = tenant_dir.file_name().to_str().and_then(|t| TenantId::parse(t).ok()) else { continue };
        let job_dirs = match std::fs::read_dir(tenant_dir.path()) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(%tenant, error = %e, dir = %tenant_dir.path().display(), "listing the tenant's work area failed; left alone");
                continue;
            }
        };
        for job_dir in job_dirs.filter_map(|e| e.ok()) {
            let Some(id) = job_dir.file_name().to_str().and_then(|s| JobId::parse_str(s).ok()) else { continue };
            let done = match jobs::get(&ctx.db, &tenant, id).await {
                Ok(Some(job)) if job.state().is_final() => finalize(ctx, &tenant, &job).await.map(|()| finalized += 1),
                Ok(Some(_)) => Ok(()),
                Ok(None) => adopt_orphan(ctx, &tenant, id, &job_dir.path()).await.map(|()| adopted += 1),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = done {
                tracing::error!(%tenant, job = %id, error = %e, "recovering the job's files failed; left for the next start");
            }
        }
    }
    (finalized, adopted)
}
