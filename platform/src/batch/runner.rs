//! Runs one attempt of a queued job: the tenant's batch app as a black box on the claimed file,
//! under the route's timeout and memory limit, and turns what it left (exit status, result file,
//! log) into the job's next state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::Ctx;
use crate::agreement::Route;
use crate::runtime::process::{self, Exit, ProcessSpec, Stopped};
use crate::runtime::sandbox::{cgroup, paths, Confined};
use crate::store::jobs::{self, AttemptEnd, AttemptReport, Job, JobState};
use crate::store::{self};
use crate::tenant::TenantId;
use crate::units::format_duration;

/// Exit status by which an app asks to be run again later (EX_TEMPFAIL).
pub const EXIT_TRY_LATER: i32 = 75;

/// The result file an app may write; every field optional, unknown fields ignored.
#[derive(Debug, Default, serde::Deserialize)]
struct AppResult {
    records_ingested: Option<i64>,
    records_rejected: Option<i64>,
    bytes_read: Option<i64>,
    message: Option<String>,
}

/// Messages by which common runtimes report a failed allocation. With RLIMIT_AS the kernel does not
/// kill the app; its allocator fails and the runtime says so on its way out.
const OUT_OF_MEMORY: [&str; 7] = [
    "memory allocation of",
    "MemoryError",
    "out of memory",
    "Cannot allocate memory",
    "OutOfMemoryError",
    "std::bad_alloc",
    "failed to allocate",
];

pub async fn run(ctx: &Arc<Ctx>, tenant: &TenantId, id: Uuid) -> anyhow::Result<()> {
    let Some(job) = jobs::get(&ctx.db, tenant, id).await? else { return Ok(()) };
    if job.state != JobState::Queued {
        return Ok(()); // already taken up (a duplicate push after recovery)
    }
    let Some(agreement) = ctx.agreements.get(tenant) else {
        return fail_early(
            ctx,
            tenant,
            &job,
            "no_agreement",
            format!("tenant {tenant} has no service agreement in force"),
        )
        .await;
    };
    let Some(route) = agreement.route_for(&job.file_name).cloned() else {
        return fail_early(
            ctx,
            tenant,
            &job,
            "no_route",
            format!("no route of the current agreement matches `{}`", job.file_name),
        )
        .await;
    };
    let Some(app) = store::apps::resolve(&ctx.db, tenant, &route.app, route.app_version).await? else {
        let which = route.app_version.map_or(String::new(), |v| format!(" version {v}"));
        return fail_early(
            ctx,
            tenant,
            &job,
            "app_not_found",
            format!("batch app `{}`{which} is not installed", route.app),
        )
        .await;
    };
    if app.kind != "batch" {
        return fail_early(
            ctx,
            tenant,
            &job,
            "app_not_found",
            format!("app `{}` is a {} app, not a batch app", app.name, app.kind),
        )
        .await;
    }
    let provisioned = ctx.tenants.ensure(tenant, &agreement.coredms).await?;
    let max_running = agreement.batch.as_ref().map_or(1, |b| b.max_concurrent_jobs) as i64;
    let started = jobs::start_attempt(&ctx.db, tenant, id, app.version, &ctx.leases.lease, max_running).await?;
    let Some((attempt, fence)) = started else {
        // Taken by another runner, or the tenant runs its most on other managers: it stays queued
        // and the sweep offers it again.
        return Ok(());
    };
    // Stopped on shutdown, and when the lease is lost to another manager (see `leases`).
    let stop = ctx.shutdown.child_token();
    ctx.leases.hold(id, fence, stop.clone());
    let run = Attempt { job: &job, number: attempt, fence };
    let input = PathBuf::from(&job.work_path);
    let app_dir = PathBuf::from(&app.dir);
    // Where the app finds its program, input and working folder: the sandbox's own paths, or
    // (unconfined) the host's, with a fresh folder per attempt.
    let (program, input_seen, work, unconfined_dir) = match &ctx.sandbox {
        Some(_) => {
            let name = input.file_name().map(PathBuf::from).unwrap_or_default();
            (
                Path::new(paths::APP).join(&app.entrypoint),
                Path::new(paths::INPUT).join(name),
                PathBuf::from(paths::WORK),
                None,
            )
        }
        None => {
            let run_dir = ctx.layout.work_dir(tenant, id).join(format!("run-{attempt}"));
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir)?;
            }
            std::fs::create_dir_all(&run_dir)?;
            (app_dir.join(&app.entrypoint), input.clone(), run_dir.clone(), Some(run_dir))
        }
    };
    let result_file = work.join("result.json");
    let env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), work.to_string_lossy().into_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("MYSIMBDP_TENANT".to_owned(), tenant.to_string()),
        ("MYSIMBDP_JOB_ID".to_owned(), id.to_string()),
        ("MYSIMBDP_INPUT_FILE".to_owned(), input_seen.to_string_lossy().into_owned()),
        ("MYSIMBDP_COREDMS_URL".to_owned(), provisioned.coredms.url.clone()),
        ("MYSIMBDP_COREDMS_DB".to_owned(), provisioned.coredms.database.clone()),
        ("MYSIMBDP_RESULT_FILE".to_owned(), result_file.to_string_lossy().into_owned()),
    ];
    let confined = ctx.sandbox.clone().map(|sandbox| {
        let limits = cgroup::Limits { memory: route.memory.0, pids: route.max_processes, cpus: route.cpus };
        (
            sandbox,
            Confined {
                account: provisioned.account.clone(),
                app_dir: app_dir.clone(),
                input: Some(input.clone()),
                limits,
            },
        )
    });
    let spec = ProcessSpec {
        program,
        args: vec![input_seen.into()],
        cwd: work,
        env,
        // Unconfined only (a confined run's memory is its cgroup's): an address-space limit.
        memory: Some(route.memory),
        resident_memory: None,
        cpu_time: route.cpu_time,
        timeout: Some(route.timeout),
        grace: ctx.config.kill_grace,
        log_limit: ctx.config.log_limit,
        result_file: Some(result_file),
        confined,
    };
    tracing::info!(%tenant, job = %id, attempt, app = %app.name, version = app.version, "running");
    let db = ctx.db.clone();
    let owner = tenant.clone();
    let spawned = process::run(spec, &stop, move |pid, ticks| {
        if let Some(ticks) = ticks {
            tokio::spawn(async move {
                if let Err(e) = jobs::set_process(&db, &owner, id, fence, pid as i32, ticks).await {
                    tracing::warn!(job = %id, error = %e, "recording the app's pid failed");
                }
            });
        }
    })
    .await;
    let outcome = match spawned {
        Ok(o) => o,
        Err(e) => {
            let report =
                AttemptReport { log: format!("the platform could not start the app: {e}"), ..Default::default() };
            return end_attempt(
                ctx,
                tenant,
                &run,
                report,
                "app_start",
                format!("could not start `{}`: {e}", app.entrypoint),
            )
            .await;
        }
    };
    let result = parse_result(outcome.result);
    let mut report = AttemptReport {
        exit_code: match outcome.exit {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        },
        signal: match outcome.exit {
            Exit::Signal(s) => Some(s),
            Exit::Code(_) => None,
        },
        run_ms: outcome.elapsed.as_millis() as i64,
        log: outcome.log,
        log_dropped_bytes: outcome.log_dropped as i64,
        ..Default::default()
    };
    match result {
        Ok(r) => {
            report.records_ingested = r.records_ingested;
            report.records_rejected = r.records_rejected;
            report.bytes_read = r.bytes_read;
            report.app_message = r.message.map(|m| printable(&m, MESSAGE_LIMIT));
        }
        Err(why) => report.log.push_str(&format!("\n[mysimbdp] result file ignored: {why}\n")),
    }
    if let Some(dir) = unconfined_dir {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }

    if outcome.stopped == Stopped::Cancelled {
        // Not the app's fault: the platform is stopping (run it again after the restart), or the
        // lease was lost (then the fencing number keeps this from changing anything).
        jobs::requeue_interrupted(
            &ctx.db,
            tenant,
            id,
            fence,
            "platform shut down during the attempt; it will run again",
        )
        .await?;
        return Ok(());
    }
    if let Stopped::OverMemory { resident, limit } = outcome.stopped {
        let peak = resident.map_or(String::new(), |r| format!(" (peak {r})"));
        let detail = format!(
            "{}: its memory reached the route's memory limit of {limit}{peak} and the kernel ended it",
            outcome.exit
        );
        return end_attempt(ctx, tenant, &run, report, "memory_limit", detail).await;
    }
    if outcome.stopped == Stopped::Timeout {
        let detail = format!(
            "ran longer than the route's timeout of {}; process group terminated",
            format_duration(route.timeout)
        );
        return end_attempt(ctx, tenant, &run, report, "timeout", detail).await;
    }
    match outcome.exit {
        Exit::Code(0) => {
            let target = ctx.layout.ingested_file(tenant, id, &job.file_name);
            let end = AttemptEnd::Succeeded { final_path: &target.to_string_lossy() };
            let Some(done) = jobs::finish_attempt(&ctx.db, tenant, id, fence, &report, end).await? else {
                lost(tenant, &run);
                return Ok(());
            };
            tracing::info!(%tenant, job = %id, records = ?report.records_ingested, ms = report.run_ms, "succeeded");
            super::finished(ctx, tenant, &done).await
        }
        Exit::Code(EXIT_TRY_LATER) => {
            let detail =
                report.app_message.clone().unwrap_or_else(|| "the app asked to be run again later (exit 75)".into());
            end_attempt(ctx, tenant, &run, report, "try_later", detail).await
        }
        exit => {
            let (reason, detail) = classify_failure(exit, &report.log, &route);
            end_attempt(ctx, tenant, &run, report, reason, detail).await
        }
    }
}

fn classify_failure(exit: Exit, log: &str, route: &Route) -> (&'static str, String) {
    let status = exit.to_string();
    if let Some(hint) = OUT_OF_MEMORY.iter().find(|m| log.contains(*m)) {
        return (
            "memory_limit",
            format!(
                "{status} after an allocation failed (`{hint}`): over the route's memory limit of {}",
                route.memory
            ),
        );
    }
    ("app_error", status)
}

/// The result file's content as the app's result; `Err` says why it is not used.
fn parse_result(file: Option<Result<Vec<u8>, String>>) -> Result<AppResult, String> {
    match file {
        None => Ok(AppResult::default()),
        Some(Err(why)) => Err(why),
        Some(Ok(bytes)) => serde_json::from_slice(&bytes).map_err(|e| format!("not the result JSON: {e}")),
    }
}

/// The longest app message kept, in characters.
const MESSAGE_LIMIT: usize = 4096;

/// Text an app wrote, fit for the store and a terminal: no NUL (PostgreSQL text cannot hold it), no
/// other control characters but newlines and tabs, at most `limit` characters.
fn printable(text: &str, limit: usize) -> String {
    let mut out: String = text
        .chars()
        .take(limit)
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(limit).is_some() {
        out.push('…');
    }
    out
}

/// The attempt being run: its job as it was queued, its number, and the lease it runs under.
struct Attempt<'a> {
    job: &'a Job,
    number: i32,
    fence: i64,
}

/// The attempt's lease went to another manager: what happened here is not recorded (the app was
/// stopped, or its outcome arrived too late), and the job is the other manager's.
fn lost(tenant: &TenantId, run: &Attempt<'_>) {
    tracing::warn!(%tenant, job = %run.job.id, attempt = run.number, fence = run.fence, "the attempt's lease was lost; its outcome is not recorded");
}

/// Ends a failed attempt: retry after a backoff while attempts remain, otherwise fail and quarantine.
async fn end_attempt(
    ctx: &Arc<Ctx>,
    tenant: &TenantId,
    run: &Attempt<'_>,
    report: AttemptReport,
    reason: &str,
    detail: String,
) -> anyhow::Result<()> {
    let (job, attempt) = (run.job, run.number);
    if attempt < job.max_attempts {
        let delay = ctx.config.retry_backoff * 2u32.saturating_pow(attempt as u32 - 1).min(64);
        let detail = format!("attempt {attempt} of {}: {detail}", job.max_attempts);
        let end = AttemptEnd::Retry { reason, detail: &detail, delay_ms: delay.as_millis() as i64 };
        if jobs::finish_attempt(&ctx.db, tenant, job.id, run.fence, &report, end).await?.is_none() {
            lost(tenant, run);
            return Ok(());
        }
        tracing::warn!(%tenant, job = %job.id, reason, %detail, "attempt failed; will retry");
        super::retry_after(ctx, tenant, job.id, delay);
        return Ok(());
    }
    let detail =
        if job.max_attempts > 1 { format!("{detail} (attempt {attempt} of {})", job.max_attempts) } else { detail };
    let target = ctx.layout.quarantine_file(tenant, job.id, &job.file_name);
    let end = AttemptEnd::Failed { reason, detail: &detail, final_path: &target.to_string_lossy() };
    let Some(done) = jobs::finish_attempt(&ctx.db, tenant, job.id, run.fence, &report, end).await? else {
        lost(tenant, run);
        return Ok(());
    };
    tracing::warn!(%tenant, job = %job.id, reason, %detail, "failed");
    super::finished(ctx, tenant, &done).await
}

async fn fail_early(ctx: &Ctx, tenant: &TenantId, job: &Job, reason: &str, detail: String) -> anyhow::Result<()> {
    let target = ctx.layout.quarantine_file(tenant, job.id, &job.file_name);
    let failed =
        jobs::fail_without_run(&ctx.db, tenant, job.id, job.fence, reason, &detail, Some(&target.to_string_lossy()))
            .await?;
    let Some(done) = failed else { return Ok(()) }; // started elsewhere meanwhile
    tracing::warn!(%tenant, job = %job.id, reason, %detail, "failed before running");
    super::finished(ctx, tenant, &done).await
}
