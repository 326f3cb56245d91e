//! mysimbdp-streamingestmanager: runs tenants' stream apps as supervised instances.
//!
//! The store holds what is wanted (`stream_instances.desired`); the manager reconciles it with what
//! runs, the way a Kubernetes controller does: after every change (PostgreSQL NOTIFY from the
//! control plane or the reaction) and every second. One supervisor task per wanted instance, and
//! only in the one process that holds the manager's lock, fenced so that two platform processes
//! never run an instance twice (see `leader`). After a crash, every wanted instance is started again (its previous process was
//! ended by the parent-death signal, or here by `end_leftover`); its consumer group's committed
//! offsets and idempotent writes make the restart lose and duplicate nothing.
//!
//! `reaction` applies the monitor's notifications from `mysimbdp.control`.

pub mod connectors;
pub mod leader;
pub mod members;
pub mod reaction;
pub mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::agreement::registry::Agreements;
use crate::domain::{InstanceId, InstanceState};
use crate::runtime::instance::{Runtime, Started};
use crate::store::instances::{self, Instance};
use crate::store::Db;
use crate::tenant::TenantId;
use crate::tenants::Tenants;
use supervisor::Control;

const RECONCILE_EVERY: Duration = Duration::from_secs(1);

pub struct StreamCtx {
    pub db: Db,
    pub agreements: Agreements,
    pub tenants: Arc<Tenants>,
    pub data_dir: PathBuf,
    pub brokers: String,
    /// The brokers as tenants' programs are given them: the broker gateway, when they are confined.
    pub app_brokers: String,
    /// The container runtime, when the platform is configured with a Docker Engine API socket.
    pub containers: Option<crate::runtime::container::Containers>,
    /// Prefix of the platform's consumer groups.
    pub cluster: String,
    /// Confines the process runtime's instances (absent: `--sandbox off`).
    pub sandbox: Option<Arc<crate::runtime::sandbox::Sandbox>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The connectors' program (`mysimbdp-connect`).
    pub connect_bin: PathBuf,
    /// Opens tenants' secrets for their connectors.
    pub secrets_key: Option<crate::secrets::SecretsKey>,
}

impl StreamCtx {
    /// The runtime an instance was created for.
    pub fn runtime(&self, kind: &str) -> Result<Runtime, String> {
        match (kind, &self.containers) {
            ("process", _) => Ok(Runtime::Process(self.sandbox.clone())),
            ("container", Some(c)) => Ok(Runtime::Container(c.clone())),
            ("container", None) => Err("the agreement asks for the container runtime, but this platform has no Docker Engine API configured (--container-socket)".into()),
            (other, _) => Err(format!("unknown runtime `{other}`")),
        }
    }

    /// `<data>/instances/<tenant>/<id>/`: the instance's log and working folder.
    pub fn instance_dir(&self, tenant: &TenantId, id: InstanceId) -> PathBuf {
        crate::layout::instance_dir(&self.data_dir, tenant, id)
    }
}

/// The consumer group of a tenant's app: tenant-prefixed like its topics.
pub fn consumer_group(tenant: &TenantId, app: &str) -> String {
    format!("{tenant}.{app}")
}

/// The static member (Kafka's `group.instance.id`) an instance joins its app's group as. Instances
/// recorded before members existed use their own id.
pub fn group_instance_id(group: &str, inst_id: InstanceId, member: Option<i32>) -> String {
    member.map_or_else(|| inst_id.to_string(), |m| format!("{group}-{m}"))
}

struct Supervised {
    control: Arc<Control>,
    runtime: String,
    task: tokio::task::JoinHandle<()>,
}

/// The running manager: its supervised instances, for the reaction to reach.
#[derive(Clone)]
pub struct Manager {
    ctx: Arc<StreamCtx>,
    supervised: Arc<Mutex<HashMap<InstanceId, Supervised>>>,
}

impl Manager {
    /// Restarts a supervised instance now; false if this manager does not run it.
    pub fn restart(&self, id: InstanceId) -> bool {
        match self.supervised.lock().expect("supervised lock").get(&id) {
            Some(s) if !s.task.is_finished() => {
                s.control.restart();
                true
            }
            _ => false,
        }
    }

    async fn reconcile(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        connectors::sync(&self.ctx).await?;
        let mut wanted = instances::wanted(&self.ctx.db).await?;
        // A tenant whose agreement was withdrawn (its file removed, or no stream section left) has
        // its instances stopped: nothing runs for a tenant the platform no longer serves.
        let (withdrawn, kept): (Vec<Instance>, Vec<Instance>) =
            wanted.into_iter().partition(|i| self.ctx.agreements.get(&i.tenant).is_none_or(|a| a.stream.is_none()));
        wanted = kept;
        for inst in withdrawn {
            let tenant = inst.tenant.clone();
            tracing::warn!(%tenant, instance = %inst.id, "the tenant's agreement was withdrawn; stopping its instance");
            instances::request_stop(&self.ctx.db, &tenant, Some(inst.id), None).await?;
            instances::set_state(
                &self.ctx.db,
                inst.id,
                InstanceState::Stopping,
                "the tenant's service agreement no longer serves streams; stopping",
            )
            .await?;
        }
        let wanted_ids: std::collections::HashSet<InstanceId> = wanted.iter().map(|i| i.id).collect();
        let running: Vec<InstanceId> = {
            let mut supervised = self.supervised.lock().expect("supervised lock");
            supervised.retain(|_, s| !s.task.is_finished());
            for (id, s) in supervised.iter() {
                if !wanted_ids.contains(id) {
                    s.control.stop.cancel();
                }
            }
            for inst in wanted {
                if supervised.contains_key(&inst.id) {
                    continue;
                }
                let (id, control) = (inst.id, Arc::new(Control::new(shutdown.child_token())));
                let runtime = inst.runtime.clone();
                let task =
                    tokio::spawn(supervisor::supervise(self.ctx.clone(), inst, control.clone(), shutdown.clone()));
                supervised.insert(id, Supervised { control, runtime, task });
            }
            supervised.keys().copied().collect()
        };
        // Asked to stop while no supervisor ran it (the platform was down): nothing runs it now.
        for inst in instances::stopping(&self.ctx.db).await? {
            if !running.contains(&inst.id) {
                instances::set_state(
                    &self.ctx.db,
                    inst.id,
                    InstanceState::Exited,
                    "stopped while the platform was not running",
                )
                .await?;
            }
        }
        Ok(())
    }
}

impl Manager {
    /// Ends every supervised instance's program now, without grace: this process is no longer the
    /// manager and another may be starting them.
    async fn kill_all(&self) {
        let running: Vec<(String, Started)> = self
            .supervised
            .lock()
            .expect("supervised lock")
            .values()
            .filter_map(|s| Some((s.runtime.clone(), s.control.started.lock().expect("started lock").clone()?)))
            .collect();
        for (runtime, started) in running {
            if let Ok(runtime) = self.ctx.runtime(&runtime) {
                runtime.end_leftover(&started).await;
            }
        }
    }
}

/// Runs the stream manager (and its reaction to notifications) until `shutdown`, whenever this
/// process holds the manager's lock; then stops every instance (they stay wanted and start again
/// with the platform, or under the next manager).
pub async fn run(ctx: StreamCtx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx = Arc::new(ctx);
    loop {
        // The store out of reach (restarting, cut off) stops nothing for good: this process stands
        // by and takes the lead again once it answers.
        match leader::acquire(&ctx.db, &shutdown).await {
            Ok(Some(lock)) => match lead(&ctx, lock, &shutdown).await {
                Ok(()) if shutdown.is_cancelled() => return Ok(()),
                Ok(()) => tracing::error!("the stream manager's lock was lost; its instances were killed; standing by"),
                Err(e) => tracing::error!(error = %e, "leading the stream manager failed; standing by"),
            },
            Ok(None) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "the store does not answer; the stream manager stands by"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Manages instances while `lock` holds the manager's lock, until shutdown or the lock is lost.
async fn lead(ctx: &Arc<StreamCtx>, mut lock: sqlx::PgConnection, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let wait = leader::take_over(&mut lock).await?;
    if !wait.is_zero() {
        tracing::info!(?wait, "became the stream manager; waiting for the previous one to stop its instances");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
    for inst in instances::wanted(&ctx.db).await?.iter().chain(instances::stopping(&ctx.db).await?.iter()) {
        if let Ok(runtime) = ctx.runtime(&inst.runtime) {
            runtime.end_leftover(&leftover(inst)).await;
        }
        // Killed is not yet gone: nothing starts the instance again until its old run has exited.
        if let (Some(pid), Some(ticks)) = (inst.pid, inst.start_ticks) {
            if !crate::runtime::process::wait_gone(pid as u32, ticks, Duration::from_secs(5)).await {
                tracing::warn!(instance = %inst.id, pid, "a previous run of the instance did not exit within 5s of SIGKILL");
            }
        }
    }
    let mut listener = PgListener::connect_with(&ctx.db).await?;
    listener.listen("mysimbdp_instances").await?;
    // Everything below stops with the leadership: on shutdown, or when the lock is lost.
    let leading = shutdown.child_token();
    let manager = Manager { ctx: ctx.clone(), supervised: Arc::default() };
    let reaction = tokio::spawn(reaction::run(ctx.clone(), manager.clone(), leading.clone()));
    let members = tokio::spawn(members::run(ctx.clone(), leading.clone()));
    let mut check = tokio::time::interval(RECONCILE_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(containers = ctx.containers.is_some(), "stream manager running");
    loop {
        match manager.reconcile(&leading).await {
            Ok(()) => ctx.metrics.pass(crate::metrics::Pass::StreamReconcile),
            Err(e) => tracing::error!(error = %e, "reconciling instances failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Every second: the lock checked, then a reconcile pass.
            _ = check.tick() => if !leader::still_held(&mut lock).await {
                manager.kill_all().await;
                break;
            },
            n = listener.recv() => if let Err(e) = n {
                tracing::warn!(error = %e, "listening for instance changes failed; polling");
                tokio::time::sleep(RECONCILE_EVERY).await;
            },
        }
    }
    leading.cancel();
    let tasks: Vec<_> = manager.supervised.lock().expect("supervised lock").drain().map(|(_, s)| s.task).collect();
    for task in tasks {
        let _ = task.await;
    }
    let _ = reaction.await;
    let _ = members.await;
    drop(lock);
    Ok(())
}

fn leftover(inst: &Instance) -> Started {
    Started { pid: inst.pid.map(|p| p as u32), start_ticks: inst.start_ticks, container: inst.container_id.clone() }
}
