//! The one interface the stream manager runs instances through, whatever runs them: a supervised
//! subprocess (the default) or a container through the Docker Engine API (`container`).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::process::{self, Ended, ProcessSpec};
use crate::units::ByteSize;

/// One run of an instance.
pub struct InstanceSpec {
    /// `mysimbdp-<instance id>`: the container's name, unique per instance.
    pub name: String,
    /// The image of the app version (container runtime): `mysimbdp-<tenant>-<app>-v<version>`.
    pub image: String,
    /// The installed app's folder and its entrypoint inside it.
    pub app_dir: PathBuf,
    pub entrypoint: String,
    /// The complete environment (the stream app contract's variables, PATH, HOME, LANG).
    pub env: Vec<(String, String)>,
    /// Working folder (and HOME) on the host.
    pub work_dir: PathBuf,
    /// Resident memory: sampled for a process, the container's limit for a container.
    pub memory: ByteSize,
    pub cpus: f64,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
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
    Process,
    Container(super::container::Containers),
}

impl Runtime {
    pub fn kind(&self) -> &'static str {
        match self {
            Runtime::Process => "process",
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
            Runtime::Process => {
                let ps = ProcessSpec {
                    program: spec.app_dir.join(&spec.entrypoint),
                    args: Vec::new(),
                    cwd: spec.work_dir,
                    env: spec.env,
                    // Resident, not address space: stream apps are multithreaded (see `resident`).
                    memory: None,
                    resident_memory: Some(spec.memory),
                    cpu_time: None,
                    timeout: None,
                    grace: spec.grace,
                    log_limit: 0,
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
