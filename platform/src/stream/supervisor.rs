//! One instance's life: start its program under the agreement's limits with the contract's
//! environment, keep its log (bounded, rotated), and when it ends apply the agreement's restart
//! policy (backoff doubling from `backoff`, capped at `max_restarts` restarts in a row).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::StreamCtx;
use crate::agreement::{RestartMode, StreamAgreement};
use crate::domain::InstanceState;
use crate::messaging::topics::{tenant_topic, METRICS_TOPIC};
use crate::runtime::instance::{InstanceSpec, Started};
use crate::runtime::log::RotatingLog;
use crate::runtime::process::{Ended, Exit, Stopped};
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
/// Each instance's log keeps at most twice this (the file and one rotated file).
pub const LOG_LIMIT: u64 = 1 << 20;

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
    let topics: Vec<String> = stream.topics.iter().map(|t| tenant_topic(tenant, &t.name)).collect();
    let group = super::consumer_group(tenant, &inst.app);
    // HOME is the runtime's to add: it knows where the working folder is for the program.
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("KAFKA_BROKERS".into(), ctx.app_brokers.clone()),
        ("MYSIMBDP_TENANT".into(), tenant.to_string()),
        ("MYSIMBDP_APP".into(), inst.app.clone()),
        ("MYSIMBDP_INSTANCE_ID".into(), inst.id.to_string()),
        ("MYSIMBDP_INPUT_TOPICS".into(), topics.join(",")),
        ("MYSIMBDP_GROUP_INSTANCE_ID".into(), super::group_instance_id(&group, inst.id, inst.member)),
        ("MYSIMBDP_CONSUMER_GROUP".into(), group),
        ("MYSIMBDP_METRICS_TOPIC".into(), METRICS_TOPIC.into()),
        ("MYSIMBDP_REPORT_KEY".into(), inst.report_key.clone()),
        ("MYSIMBDP_REPORT_INTERVAL_MS".into(), stream.report_interval.as_millis().to_string()),
        ("MYSIMBDP_COREDMS_URL".into(), coredms.url.clone()),
        ("MYSIMBDP_COREDMS_DB".into(), coredms.database.clone()),
        ("MYSIMBDP_MAX_MESSAGE_SIZE".into(), stream.max_message_size.0.to_string()),
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
    let var = format!("MYSIMBDP_INSTANCE_ID={}", inst.id);
    for (pid, ticks) in with_environment(uid, &var) {
        tracing::warn!(instance = %inst.id, pid, "a program of an earlier run of the instance still runs; ending it first");
        // SAFETY: plain syscall on a process of the instance's user, checked just above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        if !wait_gone(pid, ticks, Duration::from_secs(5)).await {
            tracing::error!(instance = %inst.id, pid, "a program of an earlier run did not exit within 5s of SIGKILL");
        }
    }
}

/// What the supervisor does after a run ended.
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
    let id = inst.id;
    let tenant = TenantId::parse(&inst.tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut restarts = inst.restarts.max(0) as u64;
    loop {
        let agreement = ctx.agreements.get(&tenant);
        let Some(stream) = agreement.as_ref().and_then(|a| a.stream.clone()) else {
            instances::set_state(&ctx.db, id, InstanceState::Failed, "the tenant's agreement has no stream section")
                .await?;
            return Ok(());
        };
        let Some(app) = store::apps::resolve(&ctx.db, &tenant, &inst.app, Some(inst.app_version)).await? else {
            let detail = format!("app `{}` version {} is no longer installed", inst.app, inst.app_version);
            instances::set_state(&ctx.db, id, InstanceState::Failed, &detail).await?;
            return Ok(());
        };
        let runtime = match ctx.runtime(&inst.runtime) {
            Ok(r) => r,
            Err(why) => {
                instances::set_state(&ctx.db, id, InstanceState::Failed, &why).await?;
                return Ok(());
            }
        };
        let limits = agreement.map(|a| a.coredms.clone()).unwrap_or_default();
        let provisioned = ctx.tenants.ensure(&tenant, &limits).await?;
        let dir = ctx.instance_dir(&tenant, id);
        let work = dir.join("work");
        if ctx.sandbox.is_none() {
            std::fs::create_dir_all(&work)?; // a confined instance's working folder is a tmpfs
        } else {
            std::fs::create_dir_all(&dir)?;
        }
        let mut log = RotatingLog::open(&dir.join("log"), LOG_LIMIT)?;
        log.push(format!("[mysimbdp] starting {} version {} ({})\n", app.name, app.version, runtime.kind()).as_bytes());
        let spec = InstanceSpec {
            name: format!("mysimbdp-{id}"),
            image: crate::runtime::container::image_repository(&tenant, app.id),
            app_dir: app.dir.clone().into(),
            entrypoint: app.entrypoint.clone(),
            env: environment(ctx, inst, &tenant, &stream, &provisioned.coredms),
            work_dir: work,
            account: provisioned.account.clone(),
            memory: stream.memory,
            cpus: stream.cpus,
            pids: stream.max_processes,
            grace: stream.stop_grace,
        };
        // Whatever still runs of this instance on this machine (a run its previous manager left
        // while dying, however it escaped) ends before the new run starts: an instance runs once.
        end_earlier_runs(inst, spec.account.uid, ctx.sandbox.is_some()).await;
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
        tracing::info!(tenant = %tenant, instance = %id, app = %app.name, version = app.version, "starting instance");
        let outcome = runtime.run(spec, &run, on_start, output).await;
        control.started.lock().expect("started lock").take();
        let recording = recorded.lock().expect("recorded lock").take();
        if let Some(task) = recording {
            let _ = task.await; // the start is recorded before the end
        }
        let next = match outcome {
            Err(e) => {
                let why = format!("could not start: {e}");
                after_failure(ctx, inst, &stream, &mut restarts, None, Duration::ZERO, &why).await?
            }
            Ok(ended) if ended.stopped == Stopped::Cancelled => {
                stopped_by_platform(ctx, inst, &stream, &control, shutdown, &mut restarts, ended).await?
            }
            Ok(ended) => {
                let why = ended.stopped.limit_passed().unwrap_or_else(|| ended.exit.to_string());
                let clean = ended.exit == Exit::Code(0) && ended.stopped == Stopped::No;
                let restart = match stream.restart.policy {
                    RestartMode::Never => false,
                    RestartMode::OnFailure => !clean,
                    RestartMode::Always => true,
                };
                if restart {
                    after_failure(ctx, inst, &stream, &mut restarts, Some(ended.exit), ended.elapsed, &why).await?
                } else {
                    let state = if clean { InstanceState::Exited } else { InstanceState::Failed };
                    let detail = format!("{why}; the restart policy is {:?}", stream.restart.policy);
                    end(ctx, inst, state, Some(ended.exit), restarts, false, &detail).await?;
                    Next::Done
                }
            }
        };
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

/// The run was ended by the platform: a stop, a shutdown, or a restart the manager asked for.
async fn stopped_by_platform(
    ctx: &StreamCtx,
    inst: &Instance,
    stream: &StreamAgreement,
    control: &Control,
    shutdown: &CancellationToken,
    restarts: &mut u64,
    ended: Ended,
) -> anyhow::Result<Next> {
    let how = match ended.exit {
        Exit::Signal(libc::SIGKILL) => "killed after the grace period".to_owned(),
        e => e.to_string(),
    };
    if shutdown.is_cancelled() {
        let detail = format!("the platform is stopping ({how}); started again when it is back");
        end(ctx, inst, InstanceState::Restarting, Some(ended.exit), *restarts, false, &detail).await?;
        return Ok(Next::Done);
    }
    if control.stop.is_cancelled() {
        end(
            ctx,
            inst,
            InstanceState::Exited,
            Some(ended.exit),
            *restarts,
            false,
            &format!("stopped on request ({how})"),
        )
        .await?;
        return Ok(Next::Done);
    }
    if ended.elapsed >= STABLE_RUN {
        *restarts = 0; // as after a crash: a run this long was a good one
    }
    let max = stream.restart.max_restarts;
    if *restarts >= max {
        let detail = format!(
            "restarted by the stream manager ({how}); not started again: {restarts} restarts in a row reached the agreement's max_restarts of {max}"
        );
        end(ctx, inst, InstanceState::Failed, Some(ended.exit), *restarts, false, &detail).await?;
        return Ok(Next::Done);
    }
    *restarts += 1;
    let detail = format!("restarted by the stream manager ({how}); restart {restarts} of {max}");
    end(ctx, inst, InstanceState::Restarting, Some(ended.exit), *restarts, true, &detail).await?;
    Ok(Next::Again { after: Duration::ZERO })
}

/// The program failed (or ended under `always`): restart after a backoff unless the cap is reached.
async fn after_failure(
    ctx: &StreamCtx,
    inst: &Instance,
    stream: &StreamAgreement,
    restarts: &mut u64,
    exit: Option<Exit>,
    ran: Duration,
    why: &str,
) -> anyhow::Result<Next> {
    if ran >= STABLE_RUN {
        *restarts = 0;
    }
    let policy = &stream.restart;
    if policy.policy == RestartMode::Never {
        end(ctx, inst, InstanceState::Failed, exit, *restarts, false, &format!("{why}; the restart policy is never"))
            .await?;
        return Ok(Next::Done);
    }
    if *restarts >= policy.max_restarts {
        let detail = format!(
            "{why}; not restarted: {} restarts in a row reached the agreement's max_restarts of {}",
            restarts, policy.max_restarts
        );
        end(ctx, inst, InstanceState::Failed, exit, *restarts, false, &detail).await?;
        tracing::warn!(instance = %inst.id, %detail, "instance failed");
        return Ok(Next::Done);
    }
    *restarts += 1;
    let after = policy.backoff.saturating_mul(1 << (*restarts - 1).min(16)).min(MAX_BACKOFF);
    let detail = format!("{why}; restart {} of {} in {}", restarts, policy.max_restarts, format_duration(after));
    end(ctx, inst, InstanceState::Restarting, exit, *restarts, true, &detail).await?;
    tracing::info!(instance = %inst.id, %detail, "instance restarting");
    Ok(Next::Again { after })
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
