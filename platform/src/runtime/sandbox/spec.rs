//! What the platform tells a run's init (through the fork server's socket) and what the init tells
//! it back (in a memfd the init finds as descriptor 3). Neither is ever on a command line
//! (world-readable in `/proc/PID/cmdline`): the spec holds the app's environment, and with it the
//! tenant's coredms password.

use std::path::PathBuf;

/// The descriptor the init writes its report to.
pub const REPORT_FD: i32 = 3;
/// A pidfd of the process the init dies with (the fork server): readable once it is gone.
pub const PARENT_FD: i32 = 4;

/// One run of a tenant's program.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct InitSpec {
    /// The sandbox's root: a host folder the platform prepared with the mount points and links of
    /// every run, bound read-only in the run's own mount namespace before the init pivots into it.
    pub root: PathBuf,
    pub hostname: String,
    /// The tenant's own account: never 0, never the platform's.
    pub uid: u32,
    pub gid: u32,
    /// What the root file system holds, built in this order.
    pub mounts: Vec<Mount>,
    /// Inside the sandbox.
    pub program: String,
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// The seccomp filter installed before the program starts: classic BPF, packed (`seccomp::pack`).
    pub seccomp: Vec<u64>,
    /// A file the program may leave behind (the batch result file), read by the init once the
    /// program has exited and handed back in the report: the platform never opens a path the
    /// tenant's program could have replaced.
    pub result_file: Option<String>,
    pub result_limit: u64,
    /// RLIMIT_CPU of the run, in seconds.
    pub cpu_seconds: Option<u64>,
}

/// One mount of the sandbox's file system, on a folder of the prepared root; `dst` is inside the
/// sandbox (absolute).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Mount {
    /// A host file or folder, read-only unless `writable`; never set-uid; device files only where
    /// `devices` (the platform's prepared `/dev`).
    Bind { src: PathBuf, dst: String, writable: bool, exec: bool, devices: bool },
    /// A private memory-backed folder (its pages count against the run's memory limit), owned by
    /// root or, when `owned`, by the tenant's uid.
    Tmpfs { dst: String, size: u64, mode: u32, owned: bool },
    /// A fresh procfs of the run's own PID namespace.
    Proc { dst: String },
}

/// What the init reports back.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitReport {
    /// How the program ended (a raw wait status), if it started.
    pub status: Option<i32>,
    /// Setting up the sandbox or starting the program failed: what, in words.
    pub error: Option<String>,
    /// The result file's bytes, base64-encoded, when it was a regular file within the limit.
    pub result_base64: Option<String>,
    /// Why the result file was not read, when it existed but could not be taken.
    pub result_error: Option<String>,
}
