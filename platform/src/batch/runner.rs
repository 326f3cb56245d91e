//! Runs one attempt of a queued job: the tenant's batch app as a black box on the claimed file,
//! under the route's timeout and memory limit, and turns what it left (exit status, result file,
//! log) into the job's next state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mysimbdp_contract::env;

use super::Ctx;
use crate::agreement::Route;
use crate::apps::AppKind;
use crate::domain::{JobId, Reason};
use crate::layout::{move_file, reason_file};
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

/// Runs the queued job `id` once: resolve what to run, claim the attempt, prepare the program's
/// place, execute it, classify how it ended, record that.
pub async fn run(ctx: &Arc<Ctx>, tenant: &TenantId, id: JobId) -> anyhow::Result<()> {
    let Some(job) = jobs::get(&ctx.db, tenant, id).await? else { return Ok(()) };
    if job.state != JobState::Queued {
        return Ok(()); // already taken up (a duplicate push after recovery)
    }
    take_back(&job).await?;
    let target = match resolve(ctx, tenant, &job).await? {
        Ok(target) => target,
        Err((reason, detail)) => return fail_early(ctx, tenant, &job, reason, detail).await,
    };
    let provisioned = ctx.tenants.ensure(tenant, &target.agreement.coredms).await?;
    let max_running = target.agreement.batch.as_ref().map_or(1, |b| b.max_concurrent_jobs) as i64;
    let started = jobs::start_attempt(&ctx.db, tenant, id, target.app.version, &ctx.leases.lease, max_running).await?;
    let Some((attempt, fence)) = started else {
        // Taken by another runner, or the tenant runs its most on other managers: it stays queued
        // and the sweep offers it again.
        return Ok(());
    };
    // Stopped on shutdown, and when the lease is lost to another manager (see `leases`).
    let stop = ctx.shutdown.child_token();
    ctx.leases.hold(id, fence, stop.clone());
    let run = Attempt { job: &job, number: attempt, fence };
    let (spec, unconfined_dir) = prepare(ctx, tenant, &run, &target, &provisioned).await?;
    tracing::info!(%tenant, job = %id, attempt, app = %target.app.name, version = target.app.version, "running");
    let executed = execute(ctx, tenant, &run, spec, &stop).await;
    if let Some(dir) = unconfined_dir {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
    let (report, verdict) = match executed {
        Ok(outcome) => {
            let (stopped, exit) = (outcome.stopped, outcome.exit);
            let report = report_of(outcome);
            let verdict = classify(stopped, exit, &report, &target.route);
            (report, verdict)
        }
        Err(e) => (
            AttemptReport { log: format!("the platform could not start the app: {e}"), ..Default::default() },
            Verdict::Failed {
                reason: Reason::AppStart,
                detail: format!("could not start `{}`: {e}", target.app.entrypoint),
            },
        ),
    };
    record(ctx, tenant, &run, report, verdict).await
}

/// A retried job's file still lies where its last outcome left it (`final_path`, see
/// `store::jobs::retry`): it is moved back to the work area before the run, and its reason file
/// removed. Repeatable: after a crash between the two the file is in the work area, and nothing moves.
async fn take_back(job: &Job) -> anyhow::Result<()> {
    let Some(kept) = job.final_path.clone().map(PathBuf::from) else { return Ok(()) };
    let work = PathBuf::from(&job.work_path);
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if !work.exists() && kept.exists() {
            move_file(&kept, &work)?;
            tracing::info!(from = %kept.display(), "a retried job's file taken back to the work area");
        }
        match std::fs::remove_file(reason_file(&kept)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
    .await??;
    Ok(())
}

/// What a job runs under: the agreement in force, the route its file takes, and that route's app.
struct Target {
    agreement: Arc<crate::agreement::ServiceAgreement>,
    route: Route,
    app: store::apps::App,
}

/// The agreement, route and app for `job`, or why there is none (a reason and its detail).
async fn resolve(ctx: &Ctx, tenant: &TenantId, job: &Job) -> anyhow::Result<Result<Target, (Reason, String)>> {
    let Some(agreement) = ctx.agreements.get(tenant) else {
        return Ok(Err((Reason::NoAgreement, crate::agreement::not_in_force(tenant))));
    };
    let Some(route) = agreement.route_for(&job.file_name).cloned() else {
        return Ok(Err((Reason::NoRoute, format!("no route of the current agreement matches `{}`", job.file_name))));
    };
    let Some(app) = store::apps::resolve(&ctx.db, tenant, &route.app, route.app_version).await? else {
        let which = route.app_version.map_or(String::new(), |v| format!(" version {v}"));
        return Ok(Err((Reason::AppNotFound, format!("batch app `{}`{which} is not installed", route.app))));
    };
    if app.kind != AppKind::Batch {
        let detail = format!("app `{}` is a {} app, not a batch app", app.name, app.kind);
        return Ok(Err((Reason::AppNotFound, detail)));
    }
    Ok(Ok(Target { agreement, route, app }))
}

/// The program as it is to run: where it finds its program, input and working folder (the sandbox's
/// own paths, or unconfined the host's with a fresh folder per attempt, returned to be removed), its
/// environment (the app contract) and its limits.
async fn prepare(
    ctx: &Ctx,
    tenant: &TenantId,
    run: &Attempt<'_>,
    target: &Target,
    provisioned: &crate::tenants::Provisioned,
) -> anyhow::Result<(ProcessSpec, Option<PathBuf>)> {
    let (job, route, app) = (run.job, &target.route, &target.app);
    let input = PathBuf::from(&job.work_path);
    let app_dir = PathBuf::from(&app.dir);
    let (program, input_seen, work, unconfined_dir) = match &ctx.sandbox {
        Some(_) => {
            let name = input.file_name().map(PathBuf::from).unwrap_or_default();
            let (app_path, input_path) = (Path::new(paths::APP), Path::new(paths::INPUT));
            (app_path.join(&app.entrypoint), input_path.join(name), PathBuf::from(paths::WORK), None)
        }
        None => {
            let run_dir = ctx.layout.work_dir(tenant, job.id).join(format!("run-{}", run.number));
            let fresh = run_dir.clone();
            tokio::task::spawn_blocking(move || {
                if fresh.exists() {
                    std::fs::remove_dir_all(&fresh)?;
                }
                std::fs::create_dir_all(&fresh)
            })
            .await??;
            (app_dir.join(&app.entrypoint), input.clone(), run_dir.clone(), Some(run_dir))
        }
    };
    let result_file = work.join("result.json");
    let env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), work.to_string_lossy().into_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        (env::TENANT.to_owned(), tenant.to_string()),
        (env::JOB_ID.to_owned(), job.id.to_string()),
        (env::INPUT_FILE.to_owned(), input_seen.to_string_lossy().into_owned()),
        (env::COREDMS_URL.to_owned(), provisioned.coredms.url.clone()),
        (env::COREDMS_DB.to_owned(), provisioned.coredms.database.clone()),
        (env::RESULT_FILE.to_owned(), result_file.to_string_lossy().into_owned()),
    ];
    let confined = ctx.sandbox.clone().map(|sandbox| {
        let limits = cgroup::Limits { memory: route.memory.0, pids: route.max_processes, cpus: route.cpus };
        let account = provisioned.account.clone();
        (sandbox, Confined { account, app_dir: app_dir.clone(), input: Some(input.clone()), lake: None, limits })
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
    Ok((spec, unconfined_dir))
}

/// An app still running this long after its start has its pid recorded. Recording it sooner only
/// matters for an app that outlives its manager, and none does: a platform that dies takes its runs
/// with it (parent-death signals), and one that hangs loses its leases 15 s later, long after this.
/// Most small files' apps end sooner, and skip a write to their job's row.
const RECORD_PID_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs the program to its end, recording its pid (for recovery after a crash) once it runs.
async fn execute(
    ctx: &Ctx,
    tenant: &TenantId,
    run: &Attempt<'_>,
    spec: ProcessSpec,
    stop: &tokio_util::sync::CancellationToken,
) -> std::io::Result<process::ProcessOutcome> {
    let (db, owner, id, fence) = (ctx.db.clone(), tenant.clone(), run.job.id, run.fence);
    let ended = tokio_util::sync::CancellationToken::new();
    let _cancel_when_run_ends = ended.clone().drop_guard();
    process::run(spec, stop, move |pid, ticks| {
        if let Some(ticks) = ticks {
            tokio::spawn(async move {
                tokio::select! {
                    _ = ended.cancelled() => return,
                    _ = tokio::time::sleep(RECORD_PID_AFTER) => {}
                }
                if let Err(e) = jobs::set_process(&db, &owner, id, fence, pid as i32, ticks).await {
                    tracing::warn!(job = %id, error = %e, "recording the app's pid failed");
                }
            });
        }
    })
    .await
}

/// What the run left, as the job records it: exit, time, log, and the result file's figures (or, in
/// the log, why the result file was not used).
fn report_of(outcome: process::ProcessOutcome) -> AttemptReport {
    let (exit_code, signal) = match outcome.exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    let mut report = AttemptReport {
        exit_code,
        signal,
        run_ms: outcome.elapsed.as_millis() as i64,
        log: outcome.log,
        log_dropped_bytes: outcome.log_dropped as i64,
        ..Default::default()
    };
    match parse_result(outcome.result) {
        Ok(r) => {
            report.records_ingested = r.records_ingested;
            report.records_rejected = r.records_rejected;
            report.bytes_read = r.bytes_read;
            report.app_message = r.message.map(|m| printable(&m, MESSAGE_LIMIT));
        }
        Err(why) => report.log.push_str(&format!("\n[mysimbdp] result file ignored: {why}\n")),
    }
    report
}

/// What an attempt's end means for its job.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Stopped by the platform, not the app's fault: shutting down (run it again after the restart),
    /// or its lease lost (the fencing number then keeps this from changing anything).
    Interrupted,
    Succeeded,
    /// Failed for `reason` (stable, for filters and statistics); retried while attempts remain.
    Failed {
        reason: Reason,
        detail: String,
    },
}

/// How the run ended, judged: the platform's stops first (they explain any exit status), then the
/// exit status, then what the log says of memory.
fn classify(stopped: Stopped, exit: Exit, report: &AttemptReport, route: &Route) -> Verdict {
    let failed = |reason, detail| Verdict::Failed { reason, detail };
    match stopped {
        Stopped::Cancelled => return Verdict::Interrupted,
        Stopped::OverMemory { resident, limit } => {
            let peak = resident.map_or(String::new(), |r| format!(" (peak {r})"));
            let detail =
                format!("{exit}: its memory reached the route's memory limit of {limit}{peak} and the kernel ended it");
            return failed(Reason::MemoryLimit, detail);
        }
        Stopped::Timeout => {
            let timeout = format_duration(route.timeout);
            return failed(
                Reason::Timeout,
                format!("ran longer than the route's timeout of {timeout}; process group terminated"),
            );
        }
        Stopped::No => {}
    }
    match exit {
        Exit::Code(0) => Verdict::Succeeded,
        Exit::Code(EXIT_TRY_LATER) => {
            let asked = "the app asked to be run again later (exit 75)";
            failed(Reason::TryLater, report.app_message.clone().unwrap_or_else(|| asked.into()))
        }
        exit => {
            let (reason, detail) = classify_failure(exit, &report.log, route);
            failed(reason, detail)
        }
    }
}

/// Records the verdict: requeued, succeeded (and the file moved to `ingested/`), or failed (retried
/// or quarantined).
async fn record(
    ctx: &Arc<Ctx>,
    tenant: &TenantId,
    run: &Attempt<'_>,
    report: AttemptReport,
    verdict: Verdict,
) -> anyhow::Result<()> {
    let id = run.job.id;
    match verdict {
        Verdict::Interrupted => {
            let why = "platform shut down during the attempt; it will run again";
            jobs::requeue_interrupted(&ctx.db, tenant, id, run.fence, why).await?;
            Ok(())
        }
        Verdict::Succeeded => {
            let target = ctx.layout.ingested_file(tenant, id, &run.job.file_name);
            let end = AttemptEnd::Succeeded { final_path: &target.to_string_lossy() };
            let Some(done) = jobs::finish_attempt(&ctx.db, tenant, id, run.fence, &report, end).await? else {
                lost(tenant, run);
                return Ok(());
            };
            tracing::info!(%tenant, job = %id, records = ?report.records_ingested, ms = report.run_ms, "succeeded");
            super::finished(ctx, tenant, &done).await
        }
        Verdict::Failed { reason, detail } => end_attempt(ctx, tenant, run, report, reason, detail).await,
    }
}

fn classify_failure(exit: Exit, log: &str, route: &Route) -> (Reason, String) {
    let status = exit.to_string();
    if let Some(hint) = OUT_OF_MEMORY.iter().find(|m| log.contains(*m)) {
        return (
            Reason::MemoryLimit,
            format!(
                "{status} after an allocation failed (`{hint}`): over the route's memory limit of {}",
                route.memory
            ),
        );
    }
    (Reason::AppError, status)
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
    reason: Reason,
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
        tracing::warn!(%tenant, job = %job.id, %reason, %detail, "attempt failed; will retry");
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
    tracing::warn!(%tenant, job = %job.id, %reason, %detail, "failed");
    super::finished(ctx, tenant, &done).await
}

async fn fail_early(ctx: &Ctx, tenant: &TenantId, job: &Job, reason: Reason, detail: String) -> anyhow::Result<()> {
    let target = ctx.layout.quarantine_file(tenant, job.id, &job.file_name);
    let failed =
        jobs::fail_without_run(&ctx.db, tenant, job.id, job.fence, reason, &detail, Some(&target.to_string_lossy()))
            .await?;
    let Some(done) = failed else { return Ok(()) }; // started elsewhere meanwhile
    tracing::warn!(%tenant, job = %job.id, %reason, %detail, "failed before running");
    super::finished(ctx, tenant, &done).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;
    use std::time::Duration;

    fn route() -> Route {
        Route {
            files: "*.csv".into(),
            app: "count".into(),
            app_version: None,
            timeout: Duration::from_secs(90),
            memory: ByteSize(256 << 20),
            cpu_time: None,
            cpus: None,
            max_processes: 64,
        }
    }

    fn reason(v: Verdict) -> Reason {
        match v {
            Verdict::Failed { reason, .. } => reason,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn a_clean_exit_succeeds_and_the_platforms_stops_come_before_any_exit_status() {
        let ok = AttemptReport::default();
        assert_eq!(classify(Stopped::No, Exit::Code(0), &ok, &route()), Verdict::Succeeded);
        // Killed by the platform: the exit status (a signal, or even 0) says nothing of the app.
        assert_eq!(classify(Stopped::Cancelled, Exit::Signal(9), &ok, &route()), Verdict::Interrupted);
        assert_eq!(classify(Stopped::Cancelled, Exit::Code(0), &ok, &route()), Verdict::Interrupted);
        let Verdict::Failed { reason, detail } = classify(Stopped::Timeout, Exit::Code(0), &ok, &route()) else {
            panic!("a timeout is a failure")
        };
        assert_eq!(
            (reason, detail.as_str()),
            (Reason::Timeout, "ran longer than the route's timeout of 90s; process group terminated")
        );
        let over = Stopped::OverMemory { resident: Some(ByteSize(300 << 20)), limit: ByteSize(256 << 20) };
        let Verdict::Failed { reason, detail } = classify(over, Exit::Signal(9), &ok, &route()) else { panic!() };
        assert_eq!(reason, Reason::MemoryLimit);
        assert!(detail.contains("memory limit of 256MiB (peak 300MiB)"), "{detail}");
    }

    #[test]
    fn exit_statuses_and_the_log_name_the_failure() {
        let plain = AttemptReport::default();
        assert_eq!(reason(classify(Stopped::No, Exit::Code(1), &plain, &route())), Reason::AppError);
        assert_eq!(reason(classify(Stopped::No, Exit::Signal(11), &plain, &route())), Reason::AppError);
        let asked = AttemptReport { app_message: Some("coredms busy".into()), ..Default::default() };
        assert_eq!(
            classify(Stopped::No, Exit::Code(EXIT_TRY_LATER), &asked, &route()),
            Verdict::Failed { reason: Reason::TryLater, detail: "coredms busy".into() }
        );
        let oom = AttemptReport { log: "Traceback ...\nMemoryError\n".into(), ..Default::default() };
        assert_eq!(reason(classify(Stopped::No, Exit::Code(1), &oom, &route())), Reason::MemoryLimit);
        // A log that mentions memory does not make a clean exit a failure.
        assert_eq!(classify(Stopped::No, Exit::Code(0), &oom, &route()), Verdict::Succeeded);
    }

    #[test]
    fn the_report_takes_the_result_files_figures_or_says_why_not() {
        let outcome = |result| process::ProcessOutcome {
            exit: Exit::Signal(15),
            stopped: Stopped::No,
            elapsed: Duration::from_millis(1234),
            log: "out\n".into(),
            log_dropped: 7,
            result,
        };
        let good = br#"{"records_ingested": 10, "records_rejected": 2, "message": "bad\u0000row", "extra": 1}"#;
        let r = report_of(outcome(Some(Ok(good.to_vec()))));
        assert_eq!((r.exit_code, r.signal, r.run_ms, r.log_dropped_bytes), (None, Some(15), 1234, 7));
        assert_eq!((r.records_ingested, r.records_rejected), (Some(10), Some(2)));
        assert_eq!(r.app_message.as_deref(), Some("bad\u{FFFD}row"), "no NUL reaches the store");
        let r = report_of(outcome(Some(Ok(b"[1, 2]".to_vec()))));
        assert_eq!(r.records_ingested, None);
        assert!(r.log.starts_with("out\n") && r.log.contains("result file ignored: not the result JSON"), "{}", r.log);
        let r = report_of(outcome(Some(Err("a FIFO, not a file".into()))));
        assert!(r.log.contains("result file ignored: a FIFO, not a file"), "{}", r.log);
    }
}
