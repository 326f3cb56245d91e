//! mysimbdp-streamingestmanager: runs tenants' stream apps as supervised instances.
//!
//! The store holds what is wanted (`stream_instances.desired`); the manager reconciles it with what
//! runs, the way a Kubernetes controller does: after every change (PostgreSQL NOTIFY from the
//! control plane or the reaction) and every second. One supervisor task per wanted instance, and
//! only in the one process that holds the manager's lock, so two platform processes never run an
//! instance twice. After a crash, every wanted instance is started again (its previous process was
//! ended by the parent-death signal, or here by `end_leftover`); its consumer group's committed
//! offsets and idempotent writes make the restart lose and duplicate nothing.
//!
//! `reaction` applies the monitor's notifications from `mysimbdp.control`.

pub mod members;
pub mod reaction;
pub mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agreement::registry::Agreements;
use crate::runtime::instance::{Runtime, Started};
use crate::store::instances::{self, Instance};
use crate::store::Db;
use crate::tenant::TenantId;
use crate::tenants::Tenants;
use supervisor::Control;

/// Key of the session lock that makes one process the manager.
const MANAGER_LOCK: i64 = 0x6d79_7369_6d62_6470; // "mysimbdp"
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
    pub fn instance_dir(&self, tenant: &TenantId, id: Uuid) -> PathBuf {
        instance_dir(&self.data_dir, tenant, id)
    }
}

pub fn instance_dir(data_dir: &std::path::Path, tenant: &TenantId, id: Uuid) -> PathBuf {
    data_dir.join("instances").join(tenant.as_str()).join(id.to_string())
}

/// The consumer group of a tenant's app: tenant-prefixed like its topics.
pub fn consumer_group(tenant: &TenantId, app: &str) -> String {
    format!("{tenant}.{app}")
}

/// The static member (Kafka's `group.instance.id`) an instance joins its app's group as. Instances
/// recorded before members existed use their own id.
pub fn group_instance_id(group: &str, inst_id: Uuid, member: Option<i32>) -> String {
    member.map_or_else(|| inst_id.to_string(), |m| format!("{group}-{m}"))
}

struct Supervised {
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

/// The running manager: its supervised instances, for the reaction to reach.
#[derive(Clone)]
pub struct Manager {
    ctx: Arc<StreamCtx>,
    supervised: Arc<Mutex<HashMap<Uuid, Supervised>>>,
}

impl Manager {
    /// Restarts a supervised instance now; false if this manager does not run it.
    pub fn restart(&self, id: Uuid) -> bool {
        match self.supervised.lock().expect("supervised lock").get(&id) {
            Some(s) if !s.task.is_finished() => {
                s.control.restart();
                true
            }
            _ => false,
        }
    }

    async fn reconcile(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let wanted = instances::wanted(&self.ctx.db).await?;
        let wanted_ids: std::collections::HashSet<Uuid> = wanted.iter().map(|i| i.id).collect();
        let running: Vec<Uuid> = {
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
                let task =
                    tokio::spawn(supervisor::supervise(self.ctx.clone(), inst, control.clone(), shutdown.clone()));
                supervised.insert(id, Supervised { control, task });
            }
            supervised.keys().copied().collect()
        };
        // Asked to stop while no supervisor ran it (the platform was down): nothing runs it now.
        for inst in instances::stopping(&self.ctx.db).await? {
            if !running.contains(&inst.id) {
                instances::set_state(&self.ctx.db, inst.id, "exited", "stopped while the platform was not running")
                    .await?;
            }
        }
        Ok(())
    }
}

/// Waits to become the one manager (a PostgreSQL session lock); returns the connection holding it.
async fn lead(
    db: &Db,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>> {
    let mut announced = false;
    loop {
        let mut conn = db.acquire().await?;
        let (got,): (bool,) =
            sqlx::query_as("select pg_try_advisory_lock($1)").bind(MANAGER_LOCK).fetch_one(&mut *conn).await?;
        if got {
            return Ok(Some(conn));
        }
        drop(conn);
        if !announced {
            tracing::info!("another process is the stream manager; standing by");
            announced = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Runs the stream manager (and its reaction to notifications) until `shutdown`; then stops every
/// instance (they stay wanted and start again with the platform).
pub async fn run(ctx: StreamCtx, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(lock) = lead(&ctx.db, &shutdown).await? else { return Ok(()) };
    // The lock lives as long as this connection; it must never go back to the pool.
    let lock = lock.detach();
    let ctx = Arc::new(ctx);
    for inst in instances::wanted(&ctx.db).await?.iter().chain(instances::stopping(&ctx.db).await?.iter()) {
        if let Ok(runtime) = ctx.runtime(&inst.runtime) {
            runtime.end_leftover(&leftover(inst)).await;
        }
    }
    let manager = Manager { ctx: ctx.clone(), supervised: Arc::default() };
    let reaction = tokio::spawn(reaction::run(ctx.clone(), manager.clone(), shutdown.clone()));
    let members = tokio::spawn(members::run(ctx.clone(), shutdown.clone()));
    let mut listener = PgListener::connect_with(&ctx.db).await?;
    listener.listen("mysimbdp_instances").await?;
    tracing::info!(containers = ctx.containers.is_some(), "stream manager running");
    loop {
        if let Err(e) = manager.reconcile(&shutdown).await {
            tracing::error!(error = %e, "reconciling instances failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            n = listener.recv() => if let Err(e) = n {
                tracing::warn!(error = %e, "listening for instance changes failed; polling");
                tokio::time::sleep(RECONCILE_EVERY).await;
            },
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
    }
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
