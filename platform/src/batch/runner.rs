//! Runs one attempt of a queued job: the tenant's batch app as a black box on the claimed file,
//! under the route's timeout and memory limit, and turns what it left (exit status, result file,
//! log) into the job's next state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::Ctx;
use crate::agreement::Route;
use crate::runtime::process::{self, Exit, ProcessSpec, Stopped};
use crate::store::jobs::{self, AttemptEnd, AttemptReport, Job};
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
    if job.state != "queued" {
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
    let coredms = ctx.tenants.ensure(tenant).await?;
    let Some(attempt) = jobs::start_attempt(&ctx.db, tenant, id, app.version).await? else {
        return Ok(()); // taken by another runner
    };
    let input = PathBuf::from(&job.work_path);
    let run_dir = ctx.layout.work_dir(tenant, id).join(format!("run-{attempt}"));
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    std::fs::create_dir_all(&run_dir)?;
    let result_file = run_dir.join("result.json");
    let env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), run_dir.to_string_lossy().into_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("MYSIMBDP_TENANT".to_owned(), tenant.to_string()),
        ("MYSIMBDP_JOB_ID".to_owned(), id.to_string()),
        ("MYSIMBDP_INPUT_FILE".to_owned(), input.to_string_lossy().into_owned()),
        ("MYSIMBDP_COREDMS_URL".to_owned(), coredms.url.clone()),
        ("MYSIMBDP_COREDMS_DB".to_owned(), coredms.database.clone()),
        ("MYSIMBDP_RESULT_FILE".to_owned(), result_file.to_string_lossy().into_owned()),
    ];
    let spec = ProcessSpec {
        program: Path::new(&app.dir).join(&app.entrypoint),
        args: vec![input.clone().into()],
        cwd: run_dir.clone(),
        env,
        memory: Some(route.memory),
        resident_memory: None,
        cpu_time: route.cpu_time,
        timeout: Some(route.timeout),
        grace: ctx.config.kill_grace,
        log_limit: ctx.config.log_limit,
    };
    tracing::info!(%tenant, job = %id, attempt, app = %app.name, version = app.version, "running");
    let db = ctx.db.clone();
    let owner = tenant.clone();
    let spawned = process::run(spec, &ctx.shutdown, move |pid, ticks| {
        if let Some(ticks) = ticks {
            tokio::spawn(async move {
                if let Err(e) = jobs::set_process(&db, &owner, id, pid as i32, ticks).await {
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
                &job,
                attempt,
                report,
                "app_start",
                format!("could not start `{}`: {e}", app.entrypoint),
            )
            .await;
        }
    };
    let result = read_result(&result_file);
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
            report.app_message = r.message;
        }
        Err(why) => report.log.push_str(&format!("\n[mysimbdp] result file ignored: {why}\n")),
    }
    let _ = std::fs::remove_dir_all(&run_dir);

    if outcome.stopped == Stopped::Cancelled {
        // Not the app's fault: the platform is stopping. Run it again after the restart.
        jobs::requeue_interrupted(&ctx.db, tenant, id, "platform shut down during the attempt; it will run again")
            .await?;
        return Ok(());
    }
    if outcome.stopped == Stopped::Timeout {
        let detail = format!(
            "ran longer than the route's timeout of {}; process group terminated",
            format_duration(route.timeout)
        );
        return end_attempt(ctx, tenant, &job, attempt, report, "timeout", detail).await;
    }
    match outcome.exit {
        Exit::Code(0) => {
            let target = ctx.layout.ingested_file(tenant, id, &job.file_name);
            let done = jobs::finish_attempt(
                &ctx.db,
                tenant,
                id,
                &report,
                AttemptEnd::Succeeded { final_path: &target.to_string_lossy() },
            )
            .await?;
            tracing::info!(%tenant, job = %id, records = ?report.records_ingested, ms = report.run_ms, "succeeded");
            super::finished(ctx, tenant, &done)
        }
        Exit::Code(EXIT_TRY_LATER) => {
            let detail =
                report.app_message.clone().unwrap_or_else(|| "the app asked to be run again later (exit 75)".into());
            end_attempt(ctx, tenant, &job, attempt, report, "try_later", detail).await
        }
        exit => {
            let (reason, detail) = classify_failure(exit, &report.log, &route);
            end_attempt(ctx, tenant, &job, attempt, report, reason, detail).await
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

fn read_result(path: &Path) -> Result<AppResult, String> {
    match std::fs::metadata(path) {
        Err(_) => Ok(AppResult::default()),
        Ok(m) if m.len() > 1 << 20 => Err(format!("{} bytes is over the 1MiB bound", m.len())),
        Ok(_) => {
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            serde_json::from_str(&text).map_err(|e| format!("not the result JSON: {e}"))
        }
    }
}

/// Ends a failed attempt: retry after a backoff while attempts remain, otherwise fail and quarantine.
async fn end_attempt(
    ctx: &Arc<Ctx>,
    tenant: &TenantId,
    job: &Job,
    attempt: i32,
    report: AttemptReport,
    reason: &str,
    detail: String,
) -> anyhow::Result<()> {
    if attempt < job.max_attempts {
        let delay = ctx.config.retry_backoff * 2u32.saturating_pow(attempt as u32 - 1).min(64);
        let detail = format!("attempt {attempt} of {}: {detail}", job.max_attempts);
        jobs::finish_attempt(
            &ctx.db,
            tenant,
            job.id,
            &report,
            AttemptEnd::Retry { reason, detail: &detail, delay_ms: delay.as_millis() as i64 },
        )
        .await?;
        tracing::warn!(%tenant, job = %job.id, reason, %detail, "attempt failed; will retry");
        super::retry_after(ctx, tenant, job.id, delay);
        return Ok(());
    }
    let detail =
        if job.max_attempts > 1 { format!("{detail} (attempt {attempt} of {})", job.max_attempts) } else { detail };
    let target = ctx.layout.quarantine_file(tenant, job.id, &job.file_name);
    let done = jobs::finish_attempt(
        &ctx.db,
        tenant,
        job.id,
        &report,
        AttemptEnd::Failed { reason, detail: &detail, final_path: &target.to_string_lossy() },
    )
    .await?;
    tracing::warn!(%tenant, job = %job.id, reason, %detail, "failed");
    super::finished(ctx, tenant, &done)
}

async fn fail_early(ctx: &Ctx, tenant: &TenantId, job: &Job, reason: &str, detail: String) -> anyhow::Result<()> {
    let target = ctx.layout.quarantine_file(tenant, job.id, &job.file_name);
    let done =
        jobs::fail_without_run(&ctx.db, tenant, job.id, reason, &detail, Some(&target.to_string_lossy())).await?;
    tracing::warn!(%tenant, job = %job.id, reason, %detail, "failed before running");
    super::finished(ctx, tenant, &done)
}
