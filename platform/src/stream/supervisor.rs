//! One instance's life: start its program under the agreement's limits with the contract's
//! environment, keep its log (bounded, rotated), and when it ends apply the agreement's restart
//! policy (backoff doubling from `backoff`, capped at `max_restarts` restarts in a row).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysimbdp_contract::env;
use tokio_util::sync::CancellationToken;

use super::StreamCtx;
use crate::agreement::{RestartMode, RestartPolicy, StreamAgreement};
use crate::domain::{Desired, InstanceState};
use crate::layout::{instance_log, INSTANCE_LOG_LIMIT};
use crate::messaging::topics::{tenant_topic, METRICS_TOPIC};
use crate::runtime::instance::{InstanceSpec, Runtime, Started};
use crate::runtime::log::RotatingLog;
use crate::runtime::process::{Exit, Stopped};
use crate::store::instances::{self, Instance, RunEnd};
use crate::store::{self};
use crate::tenant::TenantId;
use crate::units::format_duration;

/// A run at least this long counts as stable: the restart count starts again from zero.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// The longest wait between restarts, however often the instance crashed. Below the consumers'
/// session timeout (librdkafka's default is 45 s), so a restarted instance is back before the broker
/// gives up on its static member: tansu 0.6 strands a group whose leader's session expired while the
/// other members kept going (it keeps the gone leader), and no removal by the platform undoes that.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the manager reaches a supervised instance.
pub struct Control {
    /// Stop for good (the instance was asked to stop, or the platform is stopping).
    pub stop: CancellationToken,
    /// The current run; cancelling it alone restarts the instance.
    current: Mutex<CancellationToken>,
    /// The current run's program, for a manager that must end it at once (see `super::leader`).
    pub started: Mutex<Option<Started>>,
}

impl Control {
    pub fn new(stop: CancellationToken) -> Self {
        let current = Mutex::new(stop.child_token());
        Control { stop, current, started: Mutex::default() }
    }

    /// Ends the current run (SIGTERM, then SIGKILL after the grace period) and starts a new one at
    /// once. It counts against `max_restarts` like a crash: a loop that keeps restarting an instance
    /// ends where the agreement says, whatever asked for the restarts.
    pub fn restart(&self) {
        self.current.lock().expect("control lock").cancel();
    }

    fn next_run(&self) -> CancellationToken {
        let token = self.stop.child_token();
        *self.current.lock().expect("control lock") = token.clone();
        token
    }
}

/// The environment the stream app contract lists, and nothing else.
fn environment(
    ctx: &StreamCtx,
    inst: &Instance,
    tenant: &TenantId,
    stream: &StreamAgreement,
    coredms: &crate::coredms::TenantCoreDms,
) -> Vec<(String, String)> {
    let topics: Vec<String> = stream.inputs_of(&inst.app).into_iter().map(|t| tenant_topic(tenant, t)).collect();
    let group = super::consumer_group(tenant, &inst.app);
    // HOME is the runtime's to add: it knows where the working folder is for the program.
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        (env::KAFKA_BROKERS.into(), ctx.app_brokers.clone()),
        (env::TENANT.into(), tenant.to_string()),
        (env::APP.into(), inst.app.clone()),
        (env::INSTANCE_ID.into(), inst.id.to_string()),
        (env::INPUT_TOPICS.into(), topics.join(",")),
        (env::GROUP_INSTANCE_ID.into(), super::group_instance_id(&group, inst.id, inst.member)),
        (env::CONSUMER_GROUP.into(), group),
        (env::METRICS_TOPIC.into(), METRICS_TOPIC.into()),
        (env::REPORT_KEY.into(), inst.report_key.clone()),
        (env::REPORT_INTERVAL_MS.into(), stream.report_interval.as_millis().to_string()),
        (env::COREDMS_URL.into(), coredms.url.clone()),
        (env::COREDMS_DB.into(), coredms.database.clone()),
        (env::MAX_MESSAGE_SIZE.into(), stream.max_message_size.0.to_string()),
    ]
}

/// Ends the processes of user `uid` carrying this instance's id in their environment, and waits for
/// them to exit. Only the instance's own user's processes are looked at: a tenant that copies another
/// instance's id into its programs' environment has only its own programs ended.
async fn end_earlier_runs(inst: &Instance, uid: u32, confined: bool) {
    use crate::runtime::process::{wait_gone, with_environment};
    // Unconfined, programs run as the platform's own user.
    // SAFETY: geteuid cannot fail.
    let uid = if confined { uid } else { unsafe { libc::geteuid() } };
    let var = format!("{}={}", env::INSTANCE_ID, inst.id);
    for (pid, ticks) in with_environment(uid, &var) {
        tracing::warn!(instance = %inst.id, pid, "a program of an earlier run of the instance still runs; ending it first");
        // SAFETY: plain syscall on a process of the instance's user, checked just above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        if !wait_gone(pid, ticks, Duration::from_secs(5)).await {
            tracing::error!(instance = %inst.id, pid, "a program of an earlier run did not exit within 5s of SIGKILL");
        }
    }
}

/// Runs the instance's program once. Its start is recorded (pid, start time) before its end is.
async fn run_once(
    ctx: &StreamCtx,
    id: crate::domain::InstanceId,
    control: &Arc<Control>,
    runtime: &Runtime,
    spec: InstanceSpec,
    mut log: RotatingLog,
) -> std::io::Result<crate::runtime::process::Ended> {
    let run = control.next_run();
    let recorded: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let on_start = {
        let (db, recorded, control) = (ctx.db.clone(), recorded.clone(), control.clone());
        move |s: Started| {
            *control.started.lock().expect("started lock") = Some(s.clone());
            let task = tokio::spawn(async move {
                let pid = s.pid.map(|p| p as i32);
                if let Err(e) = instances::started(&db, id, pid, s.start_ticks, s.container.as_deref()).await {
                    tracing::warn!(instance = %id, error = %e, "recording the instance's start failed");
                }
            });
            *recorded.lock().expect("recorded lock") = Some(task);
        }
    };
    let output = move |bytes: &[u8]| log.push(bytes);
    let outcome = runtime.run(spec, &run, on_start, output).await;
    control.started.lock().expect("started lock").take();
    let recording = recorded.lock().expect("recorded lock").take();
    if let Some(task) = recording {
        let _ = task.await;
    }
    outcome
}

/// What one run of an instance needs.
struct Prepared {
    stream: StreamAgreement,
    runtime: Runtime,
    spec: InstanceSpec,
    log: RotatingLog,
    /// What runs, in words: `orders-stream version 3`, `source orders (postgres_cdc)`.
    label: String,
}

/// The program an instance runs: a tenant's installed app, or a connector the agreement declares.
struct Program {
    dir: std::path::PathBuf,
    entrypoint: String,
    /// The container image it runs as (apps only).
    image: String,
    /// Variables beyond the stream app contract's.
    env: Vec<(String, String)>,
    label: String,
    /// The tenant's lake folder (a lake sink only).
    lake: Option<std::path::PathBuf>,
}

async fn program(
    ctx: &StreamCtx,
    inst: &Instance,
    agreement: &crate::agreement::ServiceAgreement,
) -> anyhow::Result<Result<Program, String>> {
    let tenant = &inst.tenant;
    if super::connectors::is_connector(&inst.app) {
        let found = super::connectors::program(ctx, inst, agreement).await?;
        return Ok(found.map(|p| Program {
            dir: p.dir,
            entrypoint: p.entrypoint,
            image: String::new(),
            env: p.env,
            label: p.label,
            lake: p.lake,
        }));
    }
    let Some(app) = store::apps::resolve(&ctx.db, tenant, &inst.app, Some(inst.app_version)).await? else {
        return Ok(Err(format!("app `{}` version {} is no longer installed", inst.app, inst.app_version)));
    };
    Ok(Ok(Program {
        dir: app.dir.clone().into(),
        entrypoint: app.entrypoint.clone(),
        image: crate::runtime::container::image_repository(tenant, app.id),
        env: Vec::new(),
        label: format!("{} version {}", app.name, app.version),
        lake: None,
    }))
}

/// Resolves what the instance runs under (the agreement's stream section, its app version, its
/// runtime) and prepares its folder, log and spec; `Err` says why it cannot run at all.
async fn prepare(ctx: &StreamCtx, inst: &Instance, tenant: &TenantId) -> anyhow::Result<Result<Prepared, String>> {
    let agreement = ctx.agreements.get(tenant);
    let (Some(agreement), Some(stream)) = (agreement.as_ref(), agreement.as_ref().and_then(|a| a.stream.clone()))
    else {
        return Ok(Err("the tenant's agreement has no stream section".into()));
    };
    let program = match program(ctx, inst, agreement).await? {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let runtime = match ctx.runtime(&inst.runtime) {
        Ok(r) => r,
        Err(why) => return Ok(Err(why)),
    };
    let limits = agreement.coredms.clone();
    let provisioned = ctx.tenants.ensure(tenant, &limits).await?;
    let dir = ctx.instance_dir(tenant, inst.id);
    let work = dir.join("work");
    // A confined instance's working folder is a tmpfs of the sandbox's own.
    let made = if ctx.sandbox.is_none() { work.clone() } else { dir.clone() };
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(made)).await??;
    let log = RotatingLog::open(&instance_log(&ctx.data_dir, tenant, inst.id), INSTANCE_LOG_LIMIT)?;
    if let Some(lake) = program.lake.clone() {
        // The tenant's own, as its working folder is: its sinks write here as the tenant's user.
        let owner = ctx.sandbox.as_ref().map(|_| provisioned.account.uid);
        tokio::task::spawn_blocking(move || own_folder(&lake, owner)).await??;
    }
    let mut env = environment(ctx, inst, tenant, &stream, &provisioned.coredms);
    if !program.env.is_empty() {
        // A connector reads no topics of the stream section's.
        env.retain(|(k, _)| k != env::INPUT_TOPICS);
        env.extend(program.env);
    }
    let spec = InstanceSpec {
        name: format!("mysimbdp-{}", inst.id),
        image: program.image,
        app_dir: program.dir,
        entrypoint: program.entrypoint,
        env,
        work_dir: work,
        account: provisioned.account.clone(),
        memory: stream.memory,
        cpus: stream.cpus,
        pids: stream.max_processes,
        grace: stream.stop_grace,
        lake: program.lake,
    };
    Ok(Ok(Prepared { stream, runtime, spec, log, label: program.label }))
}

/// Makes `dir` (and its parents) and gives it to `uid` alone (when programs run confined).
fn own_folder(dir: &std::path::Path, uid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// What the supervisor does after a run ended.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Again { after: Duration },
    Done,
}

pub async fn supervise(ctx: Arc<StreamCtx>, inst: Instance, control: Arc<Control>, shutdown: CancellationToken) {
    let id = inst.id;
    if let Err(e) = supervise_inner(&ctx, &inst, control, &shutdown).await {
        // The store is unreachable or similar; the manager's next pass starts a new supervisor.
        tracing::error!(instance = %id, error = %e, "supervising the instance failed");
    }
}

async fn supervise_inner(
    ctx: &StreamCtx,
    inst: &Instance,
    control: Arc<Control>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // The manager's list of wanted instances can be a moment old: started from it just as the
    // instance failed, exited or was stopped, a supervisor would run it once more (seen: a crash
    // looping app run a fifth time past its max_restarts of 3). The store's row decides.
    let fresh = instances::get(&ctx.db, &inst.tenant, inst.id).await?;
    let Some(inst) = fresh.filter(|i| i.desired == Desired::Running) else { return Ok(()) };
    let inst = &inst;
    let id = inst.id;
    let tenant = inst.tenant.clone();
    let mut restarts = inst.restarts.max(0) as u64;
    loop {
        let Prepared { stream, runtime, spec, mut log, label } = match prepare(ctx, inst, &tenant).await? {
            Ok(prepared) => prepared,
            Err(why) => {
                instances::set_state(&ctx.db, id, InstanceState::Failed, &why).await?;
                return Ok(());
            }
        };
        log.push(format!("[mysimbdp] starting {label} ({})\n", runtime.kind()).as_bytes());
        // Whatever still runs of this instance on this machine (a run its previous manager left
        // while dying, however it escaped) ends before the new run starts: an instance runs once.
        end_earlier_runs(inst, spec.account.uid, ctx.sandbox.is_some()).await;
        tracing::info!(tenant = %tenant, instance = %id, program = %label, "starting instance");
        let outcome = run_once(ctx, id, &control, &runtime, spec, log).await;
        let ended = match &outcome {
            Err(e) => RunEnded::NotStarted { why: format!("could not start: {e}") },
            Ok(e) if e.stopped == Stopped::Cancelled => RunEnded::ByPlatform {
                exit: e.exit,
                elapsed: e.elapsed,
                shutdown: shutdown.is_cancelled(),
                stop: control.stop.is_cancelled(),
            },
            Ok(e) => RunEnded::Own { exit: e.exit, stopped: e.stopped, elapsed: e.elapsed },
        };
        let step = next_step(&stream.restart, &ended, restarts);
        restarts = step.restarts;
        let exit = outcome.as_ref().ok().map(|e| e.exit);
        end(ctx, inst, step.state, exit, restarts, step.counted, &step.detail).await?;
        match step.state {
            InstanceState::Failed => tracing::warn!(instance = %id, detail = %step.detail, "instance failed"),
            InstanceState::Restarting => tracing::info!(instance = %id, detail = %step.detail, "instance restarting"),
            _ => tracing::info!(instance = %id, detail = %step.detail, "instance ended"),
        }
        let next = step.next;
        match next {
            Next::Done => return Ok(()),
            Next::Again { after } => {
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    _ = control.stop.cancelled() => {
                        if shutdown.is_cancelled() {
                            return Ok(()); // stays wanted; the next start of the platform runs it
                        }
                        instances::set_state(&ctx.db, id, InstanceState::Exited, "stopped on request while waiting to restart").await?;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How a run ended, as the restart choice sees it.
#[derive(Debug)]
enum RunEnded {
    /// The program could not be started at all.
    NotStarted { why: String },
    /// The platform ended it: the platform is stopping (`shutdown`), the instance was asked to stop
    /// (`stop`), or else the manager asked for a restart.
    ByPlatform { exit: Exit, elapsed: Duration, shutdown: bool, stop: bool },
    /// It ended by itself, or for passing a limit.
    Own { exit: Exit, stopped: Stopped, elapsed: Duration },
}

/// What the supervisor records and does after a run: the state, the restarts in a row (`counted`:
/// this run adds one to the total), the detail in words, and whether and when it runs again.
#[derive(Debug, PartialEq)]
struct Step {
    state: InstanceState,
    restarts: u64,
    counted: bool,
    detail: String,
    next: Next,
}

/// The restart choice, from the agreement's policy, how the run ended and the restarts in a row so
/// far. A run of `STABLE_RUN` or more was a good one: the count starts again from zero.
fn next_step(policy: &RestartPolicy, ended: &RunEnded, restarts: u64) -> Step {
    let step = |state, restarts, counted, detail: String, next| Step { state, restarts, counted, detail, next };
    let max = policy.max_restarts;
    let (why, elapsed, by_manager) = match ended {
        RunEnded::NotStarted { why } => (why.clone(), Duration::ZERO, false),
        RunEnded::ByPlatform { exit, shutdown, stop, elapsed } => {
            let how = match exit {
                Exit::Signal(libc::SIGKILL) => "killed after the grace period".to_owned(),
                e => e.to_string(),
            };
            if *shutdown {
                let detail = format!("the platform is stopping ({how}); started again when it is back");
                return step(InstanceState::Restarting, restarts, false, detail, Next::Done);
            }
            if *stop {
                return step(InstanceState::Exited, restarts, false, format!("stopped on request ({how})"), Next::Done);
            }
            (format!("restarted by the stream manager ({how})"), *elapsed, true)
        }
        RunEnded::Own { exit, stopped, elapsed } => {
            let why = stopped.limit_passed().unwrap_or_else(|| exit.to_string());
            let clean = *exit == Exit::Code(0) && *stopped == Stopped::No;
            let restart = match policy.policy {
                RestartMode::Never => false,
                RestartMode::OnFailure => !clean,
                RestartMode::Always => true,
            };
            if !restart {
                let state = if clean { InstanceState::Exited } else { InstanceState::Failed };
                let detail = format!("{why}; the restart policy is {:?}", policy.policy);
                return step(state, restarts, false, detail, Next::Done);
            }
            (why, *elapsed, false)
        }
    };
    let restarts = if elapsed >= STABLE_RUN { 0 } else { restarts };
    // A restart the manager asked for is done whatever the policy says; the cap holds for both.
    if !by_manager && policy.policy == RestartMode::Never {
        return step(InstanceState::Failed, restarts, false, format!("{why}; the restart policy is never"), Next::Done);
    }
    if restarts >= max {
        let detail = if by_manager {
            format!(
                "{why}; not started again: {restarts} restarts in a row reached the agreement's max_restarts of {max}"
            )
        } else {
            format!("{why}; not restarted: {restarts} restarts in a row reached the agreement's max_restarts of {max}")
        };
        return step(InstanceState::Failed, restarts, false, detail, Next::Done);
    }
    let restarts = restarts + 1;
    if by_manager {
        let detail = format!("{why}; restart {restarts} of {max}");
        return step(InstanceState::Restarting, restarts, true, detail, Next::Again { after: Duration::ZERO });
    }
    let after = policy.backoff.saturating_mul(1 << (restarts - 1).min(16)).min(MAX_BACKOFF);
    let detail = format!("{why}; restart {restarts} of {max} in {}", format_duration(after));
    step(InstanceState::Restarting, restarts, true, detail, Next::Again { after })
}

async fn end(
    ctx: &StreamCtx,
    inst: &Instance,
    state: InstanceState,
    exit: Option<Exit>,
    restarts: u64,
    counted: bool,
    detail: &str,
) -> sqlx::Result<()> {
    let (exit_code, exit_signal) = match exit {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    let end = RunEnd { state, exit_code, exit_signal, restarts: restarts as i32, counted, detail };
    instances::ended(&ctx.db, inst.id, &end).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(policy: RestartMode, max_restarts: u64) -> RestartPolicy {
        RestartPolicy { policy, max_restarts, backoff: Duration::from_millis(100) }
    }

    fn own(exit: Exit, secs: u64) -> RunEnded {
        RunEnded::Own { exit, stopped: Stopped::No, elapsed: Duration::from_secs(secs) }
    }

    #[test]
    fn a_crash_restarts_with_a_doubling_backoff_up_to_the_cap() {
        let p = policy(RestartMode::OnFailure, 3);
        let mut restarts = 0;
        let mut waits = Vec::new();
        loop {
            let step = next_step(&p, &own(Exit::Code(1), 1), restarts);
            restarts = step.restarts;
            match step.next {
                Next::Again { after } => {
                    assert!(step.counted && step.state == InstanceState::Restarting, "{step:?}");
                    waits.push(after.as_millis());
                }
                Next::Done => {
                    assert_eq!(step.state, InstanceState::Failed);
                    assert!(!step.counted);
                    assert_eq!(
                        step.detail,
                        "exited with status 1; not restarted: 3 restarts in a row reached the agreement's max_restarts of 3"
                    );
                    break;
                }
            }
        }
        assert_eq!(waits, [100, 200, 400]);
        assert_eq!(restarts, 3);
        let backoff_capped = next_step(&policy(RestartMode::Always, 40), &own(Exit::Code(1), 1), 30);
        assert_eq!(backoff_capped.next, Next::Again { after: MAX_BACKOFF });
    }

    #[test]
    fn a_stable_run_starts_the_count_again() {
        let step = next_step(&policy(RestartMode::OnFailure, 3), &own(Exit::Code(1), 30), 3);
        assert_eq!((step.state, step.restarts), (InstanceState::Restarting, 1), "{step:?}");
        assert_eq!(step.detail, "exited with status 1; restart 1 of 3 in 100ms");
    }

    #[test]
    fn the_policy_decides_what_a_clean_exit_and_a_crash_mean() {
        let on_failure = policy(RestartMode::OnFailure, 3);
        let clean = next_step(&on_failure, &own(Exit::Code(0), 1), 2);
        assert_eq!((clean.state, clean.restarts, clean.next), (InstanceState::Exited, 2, Next::Done));
        let always = next_step(&policy(RestartMode::Always, 3), &own(Exit::Code(0), 1), 0);
        assert_eq!(always.state, InstanceState::Restarting);
        let never = next_step(&policy(RestartMode::Never, 3), &own(Exit::Signal(9), 1), 0);
        assert_eq!((never.state, never.next), (InstanceState::Failed, Next::Done));
        let over = RunEnded::Own {
            exit: Exit::Signal(9),
            stopped: Stopped::OverMemory { resident: None, limit: crate::units::ByteSize(256 << 20) },
            elapsed: Duration::from_secs(1),
        };
        let killed = next_step(&on_failure, &over, 0);
        assert!(
            killed.detail.starts_with("killed by the kernel for passing the agreement's memory of 256MiB"),
            "{killed:?}"
        );
        let not_started =
            next_step(&policy(RestartMode::Never, 3), &RunEnded::NotStarted { why: "no such file".into() }, 0);
        assert_eq!(not_started.detail, "no such file; the restart policy is never");
    }

    #[test]
    fn the_platforms_own_stops_are_not_the_apps_failures() {
        let p = policy(RestartMode::Never, 2);
        let by = |shutdown, stop, restarts| {
            let ended = RunEnded::ByPlatform {
                exit: Exit::Signal(libc::SIGKILL),
                elapsed: Duration::from_secs(1),
                shutdown,
                stop,
            };
            next_step(&p, &ended, restarts)
        };
        let shutdown = by(true, true, 1);
        assert_eq!((shutdown.state, shutdown.restarts, shutdown.counted), (InstanceState::Restarting, 1, false));
        assert!(shutdown.detail.contains("started again when it is back"), "{shutdown:?}");
        let stopped = by(false, true, 1);
        assert_eq!(
            (stopped.state, stopped.detail.as_str()),
            (InstanceState::Exited, "stopped on request (killed after the grace period)")
        );
        // A restart the manager asked for runs even under `never`, and counts against the cap.
        let restarted = by(false, false, 1);
        assert_eq!((restarted.state, restarted.restarts, restarted.counted), (InstanceState::Restarting, 2, true));
        assert_eq!(restarted.next, Next::Again { after: Duration::ZERO });
        let capped = by(false, false, 2);
        assert_eq!(capped.state, InstanceState::Failed);
        assert!(
            capped.detail.ends_with("not started again: 2 restarts in a row reached the agreement's max_restarts of 2"),
            "{capped:?}"
        );
    }
}
