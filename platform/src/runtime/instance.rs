//! The one interface the stream manager runs instances through, whatever runs them: a supervised
//! subprocess (the default) or a container through the Docker Engine API (`container`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::process::{self, Ended, ProcessSpec};
use super::sandbox::{self, cgroup, Account, Confined, Sandbox};
use crate::units::ByteSize;

/// One run of an instance.
pub struct InstanceSpec {
    /// `mysimbdp-<instance id>`: the container's name, unique per instance.
    pub name: String,
    /// The image of the app version (container runtime), named by tenant, app and content (see
    /// `container::image_name`).
    pub image: String,
    /// The installed app's folder and its entrypoint inside it.
    pub app_dir: PathBuf,
    pub entrypoint: String,
    /// The complete environment (the stream app contract's variables, PATH, LANG); HOME is added by
    /// the runtime, which knows where the working folder is.
    pub env: Vec<(String, String)>,
    /// Working folder on the host, used only when programs run unconfined (`--sandbox off`); a
    /// confined instance's working folder is a private tmpfs.
    pub work_dir: PathBuf,
    /// The tenant's own account the program runs as.
    pub account: Account,
    /// Memory of the instance (its cgroup's limit; sampled resident memory when unconfined).
    pub memory: ByteSize,
    pub cpus: f64,
    /// Processes and threads at once.
    pub pids: u64,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The tenant's lake folder on the host, for a lake sink (shown at `/lake` when confined).
    pub lake: Option<PathBuf>,
}

/// What identifies a started run, for the store (and for finding it again after a crash).
#[derive(Clone, Debug, Default)]
pub struct Started {
    pub pid: Option<u32>,
    pub start_ticks: Option<i64>,
    pub container: Option<String>,
}

#[derive(Clone)]
pub enum Runtime {
    /// A process, in the sandbox unless the platform runs with `--sandbox off` (None).
    Process(Option<Arc<Sandbox>>),
    Container(super::container::Containers),
}

impl Runtime {
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Process(_) => "process",
            Runtime::Container(_) => "container",
        }
    }

    /// Runs one instance until it exits or `cancel` (SIGTERM, then SIGKILL after the grace period).
    /// `on_start` hears how to find the run; `output` gets everything it prints.
    pub async fn run(
        &self,
        spec: InstanceSpec,
        cancel: &CancellationToken,
        on_start: impl FnOnce(Started) + Send,
        output: impl FnMut(&[u8]) + Send + 'static,
    ) -> std::io::Result<Ended> {
        match self {
            Runtime::Process(sandbox) => {
                let (program, work) = match sandbox {
                    Some(_) => {
                        (PathBuf::from(sandbox::paths::APP).join(&spec.entrypoint), PathBuf::from(sandbox::paths::WORK))
                    }
                    None => (spec.app_dir.join(&spec.entrypoint), spec.work_dir.clone()),
                };
                let mut env = spec.env;
                env.push(("HOME".into(), work.to_string_lossy().into_owned()));
                let confined = sandbox.clone().map(|s| {
                    let limits = cgroup::Limits { memory: spec.memory.0, pids: spec.pids, cpus: Some(spec.cpus) };
                    let (account, app_dir, lake) = (spec.account.clone(), spec.app_dir.clone(), spec.lake.clone());
                    (s, Confined { account, app_dir, input: None, lake, limits })
                });
                let ps = ProcessSpec {
                    program,
                    args: Vec::new(),
                    cwd: work,
                    env,
                    memory: None,
                    // Unconfined only: resident, not address space, as stream apps are multithreaded
                    // (see `resident`).
                    resident_memory: Some(spec.memory),
                    cpu_time: None,
                    timeout: None,
                    grace: spec.grace,
                    log_limit: 0,
                    result_file: None,
                    confined,
                };
                process::run_with_output(
                    ps,
                    cancel,
                    |pid, ticks| on_start(Started { pid: Some(pid), start_ticks: ticks, container: None }),
                    output,
                )
                .await
            }
            Runtime::Container(c) => c.run(spec, cancel, on_start, output).await,
        }
    }

    /// Ends what a previous run of the platform may have left of an instance (a process that
    /// outlived it, a container still running), so the instance is never run twice.
    pub async fn end_leftover(&self, started: &Started) {
        if let (Some(pid), Some(ticks)) = (started.pid, started.start_ticks) {
            if process::kill_leftover(pid as i32, ticks) {
                tracing::warn!(pid, "ended a process left from the platform's previous run");
            }
        }
        if let (Runtime::Container(c), Some(id)) = (self, &started.container) {
            c.remove(id).await;
        }
    }
}
