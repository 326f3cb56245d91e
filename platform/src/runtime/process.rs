//! One run of a tenant's program under the platform's rules: a cleared environment holding only what
//! the contract lists, a fresh working folder, its own process group (so a timeout ends everything it
//! started), a parent-death signal (so a platform killed with -9 does not leave it running), stdout
//! and stderr merged into a bounded log, and a timeout that sends SIGTERM to the group and SIGKILL
//! after a grace period.
//!
//! Confined (the default, `sandbox`): the program runs in its own namespaces as its tenant's uid, and
//! its memory, processes and CPU are bounded by a cgroup of the run. Unconfined (`--sandbox off`, for
//! development only): it runs as the platform's user, under address-space or sampled resident-memory
//! limits and RLIMIT_CPU.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

use super::log::BoundedLog;
use super::resident::GroupMemory;
use super::sandbox::{self, Confined, Sandbox};
use super::spawn::{spawn, Child, Limits, SpawnSpec};
use crate::units::ByteSize;

/// How long the output may stay open after the program ended (by something it handed its output to)
/// before the platform stops reading it.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);

pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The complete environment; nothing of the platform's is inherited.
    pub env: Vec<(String, String)>,
    /// Address-space limit (RLIMIT_AS): a hard limit, fit for single-threaded programs.
    pub memory: Option<ByteSize>,
    /// Resident-memory limit of the process group, sampled (see `resident`); over it, SIGKILL.
    pub resident_memory: Option<ByteSize>,
    pub cpu_time: Option<Duration>,
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub log_limit: usize,
    /// Where the program may leave a result file (as the program sees the path); read once it ended,
    /// only if it is a regular file within the sandbox's `RESULT_LIMIT`.
    pub result_file: Option<PathBuf>,
    /// Runs the program in the sandbox; `program`, `args`, `cwd` and `env` then use the sandbox's
    /// paths, and `memory`, `resident_memory` give way to the cgroup's limits.
    pub confined: Option<(Arc<Sandbox>, Confined)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(s)),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU, over the CPU time limit",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Why the platform ended the program, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    No,
    Timeout,
    /// The platform is shutting down; the run does not count against the job.
    Cancelled,
    /// Killed for using more resident memory than its limit (how much, when the platform measured it;
    /// a container's kernel does not say).
    OverMemory {
        resident: Option<ByteSize>,
        limit: ByteSize,
    },
}

impl Stopped {
    /// Why the platform ended the program, in words, if it did so for a limit.
    pub fn limit_passed(&self) -> Option<String> {
        match self {
            Stopped::OverMemory { resident: Some(resident), limit } => {
                Some(format!("killed for resident memory of {resident}, over the agreement's memory of {limit}"))
            }
            Stopped::OverMemory { resident: None, limit } => {
                Some(format!("killed by the kernel for passing the agreement's memory of {limit}"))
            }
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct ProcessOutcome {
    pub exit: Exit,
    pub stopped: Stopped,
    pub elapsed: Duration,
    pub log: String,
    pub log_dropped: u64,
    /// The result file's bytes; `Err` says why a file that was there was not taken.
    pub result: Option<Result<Vec<u8>, String>>,
}

/// Reads a process's /proc/PID/stat and hands `read` its fields from field 3 (`state`) on, so field
/// N of proc(5) is `fields[N - 3]`. None if the process is gone.
pub(super) fn proc_stat<T>(pid: u32, read: impl FnOnce(&[&str]) -> Option<T>) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')' are plain.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    read(&fields)
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat); with the pid it
/// identifies a process across pid reuse.
pub fn start_ticks(pid: u32) -> Option<i64> {
    proc_stat(pid, |fields| fields.get(22 - 3)?.parse().ok())
}

/// Whether the process `pid` that started at `ticks` still runs (a pid alone may have been reused).
pub fn alive(pid: u32, ticks: i64) -> bool {
    start_ticks(pid) == Some(ticks)
}

/// Waits (up to `within`) until the process `pid` that started at `ticks` has exited: gone, or a
/// zombie. A sandboxed run's init exits only after every process of its namespace did, so once it is
/// gone nothing of the run is left. Returns whether it is.
pub async fn wait_gone(pid: u32, ticks: i64, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let running = proc_stat(pid, |f| Some((f.get(22 - 3)?.parse::<i64>().ok()? == ticks, f.first()? != &"Z")))
            .is_some_and(|(same, not_zombie)| same && not_zombie);
        if !running {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Processes of user `uid` whose environment holds `var` (`NAME=value`), with their start times:
/// the programs of one stream instance, however they came to outlive the process that ran them.
pub fn with_environment(uid: u32, var: &str) -> Vec<(u32, i64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let wanted = var.as_bytes();
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if e.metadata().ok()?.uid() != uid {
                return None;
            }
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|b| *b == 0).any(|v| v == wanted).then_some(())?;
            Some((pid, start_ticks(pid)?))
        })
        .collect()
}

/// This machine's boot: with a pid and its start time, which process of which machine (and boot) a
/// platform process was, so another on the same machine can tell it is gone.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_owned()
}

/// Kills the process group led by `pid` if that process is still the one that started at `ticks`.
/// Used after a platform crash to end programs that outlived it.
pub fn kill_leftover(pid: i32, ticks: i64) -> bool {
    if pid <= 1 || !alive(pid as u32, ticks) {
        return false;
    }
    // SAFETY: plain syscall on a process group we created.
    unsafe { libc::kill(-pid, libc::SIGKILL) == 0 }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: plain syscall; the group is the one the child leads (process_group(0)).
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Runs the program to completion. `on_spawn` receives the pid (also the process group id) and
/// its start time, so callers can record them before the program does anything.
pub async fn run(
    spec: ProcessSpec,
    cancel: &CancellationToken,
    on_spawn: impl FnOnce(u32, Option<i64>),
) -> std::io::Result<ProcessOutcome> {
    let log = Arc::new(Mutex::new(BoundedLog::new(spec.log_limit)));
    let sink = {
        let log = log.clone();
        move |bytes: &[u8]| log.lock().expect("log lock").push(bytes)
    };
    let ended = run_with_output(spec, cancel, on_spawn, sink).await?;
    let log = log.lock().expect("log lock");
    Ok(ProcessOutcome {
        exit: ended.exit,
        stopped: ended.stopped,
        elapsed: ended.elapsed,
        log: log.render(),
        log_dropped: log.dropped(),
        result: ended.result,
    })
}

/// How a run ended, for callers that keep the output themselves.
#[derive(Clone, Debug)]
pub struct Ended {
    pub exit: Exit,
    pub stopped: Stopped,
    pub elapsed: Duration,
    pub result: Option<Result<Vec<u8>, String>>,
}

/// A started run: a program the platform spawned itself, or a sandboxed run its fork server cloned.
enum Running {
    Spawned(Child),
    Sandboxed { pid: u32, exited: tokio::sync::oneshot::Receiver<Result<i32, String>>, status: Option<i32> },
}

impl Running {
    fn id(&self) -> u32 {
        match self {
            Running::Spawned(child) => child.id(),
            Running::Sandboxed { pid, .. } => *pid,
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Running::Spawned(child) => child.wait().await,
            Running::Sandboxed { exited, status, .. } => {
                if status.is_none() {
                    let raw = exited
                        .await
                        .map_err(|_| std::io::Error::other("the sandbox's fork server stopped"))?
                        .map_err(std::io::Error::other)?;
                    *status = Some(raw);
                }
                Ok(std::process::ExitStatus::from_raw(status.expect("set above")))
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A run whose end was not waited for (its future dropped) must not go on: the group goes,
        // and with its init the whole sandbox.
        if let Running::Sandboxed { pid, status: None, .. } = self {
            signal_group(*pid as i32, libc::SIGKILL);
        }
    }
}

/// Reads the program's output until every copy of the pipe is closed, or until `give_up` is set and
/// nothing came for a moment (something outside the run kept a copy open).
fn read_output(reader: std::io::PipeReader, give_up: &AtomicBool, output: &mut impl FnMut(&[u8])) {
    let mut reader = reader;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut poll = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready == 0 {
            if give_up.load(Ordering::Relaxed) {
                return;
            }
            continue;
        }
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => output(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Runs the program to completion, handing everything it prints to `output` (on a blocking
/// thread, in the order it was written). `spec.log_limit` is not used: `output` bounds itself.
/// Long on purpose: one run's life (start, the wait on exit, timeout, cancellation and memory, the
/// group kill and the reaping) is one `select!` whose branches share the run's state.
pub async fn run_with_output(
    spec: ProcessSpec,
    cancel: &CancellationToken,
    on_spawn: impl FnOnce(u32, Option<i64>),
    mut output: impl FnMut(&[u8]) + Send + 'static,
) -> std::io::Result<Ended> {
    // One pipe for stdout and stderr (as `2>&1`), so the log keeps the order the program wrote in.
    let (reader, writer) = std::io::pipe()?;
    let started = Instant::now();
    let (mut running, prepared) = match &spec.confined {
        Some((sandbox, run)) => {
            let program = sandbox::Program {
                path: &spec.program,
                args: &spec.args,
                env: &spec.env,
                cwd: &spec.cwd,
                result_file: spec.result_file.as_deref(),
                cpu_time: spec.cpu_time,
            };
            let prepared = sandbox.prepare(run, &program)?;
            match sandbox.launch(&prepared, writer.as_raw_fd()).await {
                Ok(l) => (Running::Sandboxed { pid: l.pid, exited: l.exited, status: None }, Some(prepared)),
                Err(e) => {
                    let sandbox = sandbox.clone();
                    tokio::task::spawn_blocking(move || sandbox.release(prepared.cgroup));
                    return Err(e);
                }
            }
        }
        None => {
            let child = spawn(&SpawnSpec {
                program: &spec.program,
                args: &spec.args,
                env: &spec.env,
                cwd: &spec.cwd,
                output: writer.as_raw_fd(),
                limits: Limits {
                    address_space: spec.memory.map(|m| m.0),
                    cpu_seconds: spec.cpu_time.map(|d| d.as_secs().max(1)),
                },
                namespaces: 0,
                cgroups: &[],
                fd3: None,
            })?;
            (Running::Spawned(child), None)
        }
    };
    drop(writer); // the reader sees EOF once the program's copies are closed
    let pid = running.id();
    on_spawn(pid, start_ticks(pid));

    let give_up = Arc::new(AtomicBool::new(false));
    let reading = {
        let give_up = give_up.clone();
        tokio::task::spawn_blocking(move || read_output(reader, &give_up, &mut output))
    };

    let pgid = pid as i32;
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    // A confined run's memory is the kernel's business (its cgroup); an unconfined one is sampled.
    let sampled = spec.resident_memory.filter(|_| prepared.is_none());
    let over_memory = async {
        match sampled {
            Some(limit) => (GroupMemory::new(pgid).over(limit).await, limit),
            None => std::future::pending().await,
        }
    };
    let mut stopped = Stopped::No;
    let status = tokio::select! {
        status = running.wait() => status,
        (resident, limit) = over_memory => {
            stopped = Stopped::OverMemory { resident: Some(resident), limit };
            signal_group(pgid, libc::SIGKILL);
            running.wait().await
        }
        _ = sleep_until_deadline => {
            stopped = Stopped::Timeout;
            terminate(&mut running, pgid, spec.grace).await
        }
        _ = cancel.cancelled() => {
            stopped = Stopped::Cancelled;
            terminate(&mut running, pgid, spec.grace).await
        }
    };
    let elapsed = started.elapsed();
    // Whatever the program left running in its group would keep our pipes open; end it. (A confined
    // run's namespace has already taken everything with it.)
    signal_group(pgid, libc::SIGKILL);
    let mut reading = reading;
    if tokio::time::timeout(OUTPUT_AFTER_EXIT, &mut reading).await.is_err() {
        tracing::warn!(pid, "the program's output stayed open after it ended; no longer read");
        give_up.store(true, Ordering::Relaxed);
        let _ = reading.await;
    }
    let release = |prepared: sandbox::Prepared| {
        if let Some((sandbox, _)) = &spec.confined {
            let sandbox = sandbox.clone();
            tokio::task::spawn_blocking(move || sandbox.release(prepared.cgroup));
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            if let Some(p) = prepared {
                release(p);
            }
            return Err(e);
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let mut exit = match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Code(-1),
    };
    let mut result = None;
    match prepared {
        Some(prepared) => {
            let report = prepared.report();
            let usage = prepared.cgroup.usage();
            release(prepared);
            if let Some(report) = report {
                if let Some(error) = report.error {
                    return Err(std::io::Error::other(error));
                }
                if let Some(raw) = report.status {
                    exit = exit_of(raw);
                }
                result = match (report.result_base64, report.result_error) {
                    (_, Some(why)) => Some(Err(why)),
                    (Some(b64), None) => {
                        use base64::Engine;
                        Some(base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| e.to_string()))
                    }
                    (None, None) => None,
                };
            }
            if usage.oom_kills > 0 && stopped == Stopped::No {
                let limit = spec.confined.as_ref().map_or(ByteSize(0), |(_, c)| ByteSize(c.limits.memory));
                stopped = Stopped::OverMemory { resident: usage.peak.map(ByteSize), limit };
            }
        }
        None => {
            if let Some(path) = spec.result_file {
                result = tokio::task::spawn_blocking(move || sandbox::init::read_result(&path, sandbox::RESULT_LIMIT))
                    .await
                    .map_err(std::io::Error::other)?
                    .transpose();
            }
        }
    }
    Ok(Ended { exit, stopped, elapsed, result })
}

/// A raw wait status as an exit.
fn exit_of(raw: i32) -> Exit {
    if libc::WIFSIGNALED(raw) {
        Exit::Signal(libc::WTERMSIG(raw))
    } else {
        Exit::Code(libc::WEXITSTATUS(raw))
    }
}

async fn terminate(child: &mut Running, pgid: i32, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
    signal_group(pgid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, libc::SIGKILL);
            child.wait().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Option<Duration>) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("ONLY".into(), "this".into())],
            memory: None,
            resident_memory: None,
            cpu_time: None,
            timeout,
            grace: Duration::from_millis(200),
            log_limit: 1 << 16,
            result_file: None,
            confined: None,
        }
    }

    #[tokio::test]
    async fn the_environment_is_exactly_what_was_given() {
        let out = run(sh("env | sort", None), &CancellationToken::new(), |_, _| {}).await.unwrap();
        assert_eq!(out.exit, Exit::Code(0));
        let vars: Vec<&str> = out.log.lines().map(|l| l.split('=').next().unwrap()).collect();
        // sh itself adds PWD (and may add SHLVL / _); nothing of the parent's environment leaks.
        for v in &vars {
            assert!(["ONLY", "PATH", "PWD", "SHLVL", "_"].contains(v), "unexpected variable {v}");
        }
        assert!(out.log.contains("ONLY=this"));
    }

    #[tokio::test]
    async fn a_timeout_ends_the_whole_process_group() {
        let marker = format!("/tmp/mysimbdp-pg-{}", std::process::id());
        let script = format!("(sleep 30; touch {marker}) & sleep 30");
        let out =
            run(sh(&script, Some(Duration::from_millis(300))), &CancellationToken::new(), |_, _| {}).await.unwrap();
        assert_eq!(out.stopped, Stopped::Timeout);
        assert!(matches!(out.exit, Exit::Signal(libc::SIGTERM) | Exit::Signal(libc::SIGKILL)), "{:?}", out.exit);
        assert!(out.elapsed < Duration::from_secs(5));
        assert!(!std::path::Path::new(&marker).exists());
    }

    #[tokio::test]
    async fn over_its_resident_memory_the_group_is_killed() {
        // A child of the shell holds ~200 MB: the limit covers the whole group, not only the leader.
        let mut spec = sh("a=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 30", None);
        spec.resident_memory = Some(ByteSize(64 << 20));
        let out = run(spec, &CancellationToken::new(), |_, _| {}).await.unwrap();
        let Stopped::OverMemory { resident: Some(resident), limit } = out.stopped else {
            panic!("{:?} {}", out.stopped, out.log)
        };
        assert!(resident.0 > 64 << 20 && limit == ByteSize(64 << 20), "{resident} {limit}");
        assert_eq!(out.exit, Exit::Signal(libc::SIGKILL));
        assert!(out.elapsed < Duration::from_secs(20), "{:?}", out.elapsed);
        let why = out.stopped.limit_passed().unwrap();
        assert!(why.contains("over the agreement's memory of 64MiB"), "{why}");
        // Under the limit nothing happens: the same program with room to spare ends by itself.
        let mut spec = sh("a=$(head -c 2000000 /dev/zero | tr '\\0' a); echo done", None);
        spec.resident_memory = Some(ByteSize(256 << 20));
        let out = run(spec, &CancellationToken::new(), |_, _| {}).await.unwrap();
        assert_eq!((out.stopped, out.exit), (Stopped::No, Exit::Code(0)), "{}", out.log);
    }

    #[tokio::test]
    async fn the_start_time_identifies_the_process() {
        let mut seen = None;
        run(sh("true", None), &CancellationToken::new(), |pid, ticks| seen = Some((pid, ticks))).await.unwrap();
        let (_, ticks) = seen.unwrap();
        assert!(ticks.is_some());
        assert!(start_ticks(std::process::id()).is_some());
        assert!(!kill_leftover(std::process::id() as i32, -1), "a different start time is not our process");
    }

    #[tokio::test]
    async fn limits_signals_and_descriptors_are_the_programs_own() {
        let mut spec = sh("grep -E 'address space|cpu time' /proc/self/limits; grep -E '^Sig(Ign|Blk)' /proc/self/status; ls /proc/self/fd; readlink /proc/self/fd/0", None);
        spec.memory = Some(ByteSize(256 << 20));
        spec.cpu_time = Some(Duration::from_secs(7));
        let out = run(spec, &CancellationToken::new(), |_, _| {}).await.unwrap();
        assert_eq!(out.exit, Exit::Code(0), "{}", out.log);
        let line = |prefix: &str| out.log.lines().find(|l| l.starts_with(prefix)).unwrap_or_default().to_owned();
        let words = |l: String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(line("Max address space"))[3..5], ["268435456", "268435456"], "{}", out.log);
        assert_eq!(words(line("Max cpu time"))[3..5], ["7", "12"], "{}", out.log);
        // The platform ignores SIGPIPE and blocks signals while spawning; the program sees neither.
        assert_eq!(line("SigIgn:"), "SigIgn:\t0000000000000000", "{}", out.log);
        assert_eq!(line("SigBlk:"), "SigBlk:\t0000000000000000", "{}", out.log);
        // stdin, stdout, stderr and the descriptor `ls` opens for /proc/self/fd: nothing of the platform's.
        let fds: Vec<&str> = out.log.lines().filter(|l| l.parse::<u32>().is_ok()).collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{}", out.log);
        assert!(out.log.contains("/dev/null"), "{}", out.log);
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_a_precise_error() {
        let mut spec = sh("true", None);
        spec.program = "/nonexistent/app".into();
        let e = run(spec, &CancellationToken::new(), |_, _| {}).await.expect_err("no such program");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("executing /nonexistent/app"), "{e}");
        let mut spec = sh("true", None);
        spec.cwd = "/nonexistent/folder".into();
        let e = run(spec, &CancellationToken::new(), |_, _| {}).await.expect_err("no such folder");
        assert!(e.to_string().starts_with("entering the working folder"), "{e}");
    }
}
