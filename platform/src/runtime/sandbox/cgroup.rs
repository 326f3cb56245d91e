//! A cgroup per run: the memory, process and CPU limits a program cannot escape by forking or by
//! `setsid`, and the memory figures (peak, OOM kills) the platform reads back when it ends.
//!
//! Both layouts the kernel offers are supported: the unified hierarchy (cgroup v2, the usual host
//! today) and per-controller hierarchies (cgroup v1, as on the machines this project is built on,
//! which mount `memory`, `pids` and `cpu` under `/sys/fs/cgroup/<controller>` and an empty cgroup2
//! at `/sys/fs/cgroup/unified`). Runs live under a folder of this platform process,
//! `<own cgroup>/mysimbdp-<pid>-<n>/run-<id>`, so two platform processes (or two platforms in one
//! test process) never touch each other's runs, and the folders of a process that died are removed
//! by the next one to start.
//!
//! A run's cgroup is used by that run alone, but the folders are kept for the next run once the
//! last process has left (limits written again, the peak reset, OOM kills counted from where they
//! stood): making and removing a memory cgroup costs the kernel about 0.35 ms, a tenth of what
//! confining a small file's run costs in all.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// Limits of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Bytes of memory (page cache and tmpfs pages included); no swap beyond it.
    pub memory: u64,
    /// Processes and threads at once.
    pub pids: u64,
    /// CPUs' worth of time per period; `None`: no cap.
    pub cpus: Option<f64>,
}

/// What the kernel counted for a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Processes the kernel killed for passing the memory limit.
    pub oom_kills: u64,
    /// The largest memory use seen, in bytes, where the kernel keeps it.
    pub peak: Option<u64>,
}

const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug)]
enum Layout {
    /// One hierarchy; `base` is this process's folder in it.
    V2 { base: PathBuf },
    /// One hierarchy per controller; `cpu` is absent where the controller is not mounted.
    V1 { memory: PathBuf, pids: PathBuf, cpu: Option<PathBuf> },
}

#[derive(Debug)]
pub struct Cgroups {
    layout: Layout,
    /// Cgroups of runs that ended, empty, kept for the next runs.
    idle: std::sync::Mutex<Vec<RunCgroup>>,
}

/// The most idle cgroups kept (beyond it they are removed).
const KEEP_IDLE: usize = 64;

/// One run's cgroup: its folders, and its `cgroup.procs` files opened for the program's start.
#[derive(Debug)]
pub struct RunCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<fs::File>,
    v2: bool,
    /// OOM kills the kernel had counted when this run took the cgroup.
    oom_before: u64,
    /// v2: `memory.peak` opened and reset for this run (its reset is per open file).
    peak: Option<fs::File>,
    /// The limits last written (a kept cgroup given the same ones needs no writes).
    limits: Option<Limits>,
}

/// A mounted cgroup file system: where, which version, and for v1 which controllers.
struct Hierarchy {
    mount_point: PathBuf,
    /// The mount's root inside the hierarchy (`/` unless the host mounted a sub-tree).
    root: String,
    v2: bool,
    controllers: Vec<String>,
}

fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            let (v2, controllers) = match fstype {
                "cgroup2" => (true, Vec::new()),
                "cgroup" => {
                    let options = right.get(2)?;
                    (false, options.split(',').map(str::to_owned).collect())
                }
                _ => return None,
            };
            Some(Hierarchy {
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                root: unescape(left.get(3)?),
                v2,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// This process's cgroup in each hierarchy (`/proc/self/cgroup`): (controllers, path); v2 is `""`.
fn own_paths(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The folder of `own` (a path in the hierarchy) under the hierarchy's mount point.
fn folder(h: &Hierarchy, own: &str) -> PathBuf {
    let relative = own.strip_prefix(h.root.trim_end_matches('/')).unwrap_or(own);
    h.mount_point.join(relative.trim_start_matches('/'))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("writing `{value}` to {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", path.display()))),
    }
}

impl Cgroups {
    /// Finds the hierarchies, makes this process's folder in each and removes those of platform
    /// processes that are gone. Fails with what is missing when a run could not be bounded.
    pub fn start() -> io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let own = own_paths(&fs::read_to_string("/proc/self/cgroup")?);
        let found = hierarchies(&mountinfo);
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mysimbdp-{}-{n}", std::process::id());
        let own_v2 = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p.clone()).unwrap_or_else(|| "/".into());
        // Unified, if its controllers are there (on a hybrid host they are bound to v1 instead).
        if let Some(h) = found.iter().find(|h| h.v2) {
            let available = fs::read_to_string(h.mount_point.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| available.split_whitespace().any(|a| a == c);
            if has("memory") && has("pids") {
                let layout = Layout::V2 { base: v2_base(&folder(h, &own_v2), &name, has("cpu"))? };
                return Ok(Cgroups { layout, idle: Default::default() });
            }
        }
        let v1 = |controller: &str| -> Option<PathBuf> {
            let h = found.iter().find(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))?;
            let path = own.iter().find(|(cs, _)| cs.split(',').any(|c| c == controller)).map_or("/", |(_, p)| p);
            Some(folder(h, path))
        };
        let missing = |c: &str| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no cgroup v2 with the memory and pids controllers, and no cgroup v1 `{c}` hierarchy is mounted"
                ),
            )
        };
        let memory = v1("memory").ok_or_else(|| missing("memory"))?;
        let pids = v1("pids").ok_or_else(|| missing("pids"))?;
        let cpu = v1("cpu");
        let mut bases = vec![memory.join(&name), pids.join(&name)];
        bases.extend(cpu.as_ref().map(|c| c.join(&name)));
        for parent in [&memory, &pids].into_iter().chain(cpu.as_ref()) {
            remove_stale(parent);
        }
        for base in &bases {
            mkdir(base)?;
        }
        let layout =
            Layout::V1 { memory: bases[0].clone(), pids: bases[1].clone(), cpu: cpu.map(|_| bases[2].clone()) };
        Ok(Cgroups { layout, idle: Default::default() })
    }

    /// Which layout is in use and where, for the log at start.
    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::V2 { base } => format!("cgroup v2 at {}", base.display()),
            Layout::V1 { memory, pids, cpu } => format!(
                "cgroup v1: memory at {}, pids at {}, {}",
                memory.display(),
                pids.display(),
                cpu.as_ref().map_or("no cpu controller (CPU limits not applied)".to_owned(), |c| format!(
                    "cpu at {}",
                    c.display()
                ))
            ),
        }
    }

    /// The cgroup of one run, with its limits: one kept from an earlier run, or a new one.
    pub fn create(&self, run: &str, limits: &Limits) -> io::Result<RunCgroup> {
        let kept = self.idle.lock().expect("idle cgroups").pop();
        let mut cg = match kept {
            Some(cg) => cg,
            None => self.make(run)?,
        };
        if cg.limits != Some(*limits) {
            self.limit(&cg, limits)?;
            cg.limits = Some(*limits);
        }
        cg.oom_before = cg.oom_kills();
        cg.peak = None;
        if cg.v2 {
            // Reset for this open file only (kernel 6.12 and later); older kernels keep no peak per run.
            let peak = fs::OpenOptions::new().read(true).write(true).open(cg.dirs[0].join("memory.peak"));
            cg.peak = peak.ok().and_then(|mut f| f.write_all(b"reset").ok().map(|_| f));
        } else {
            write(&cg.dirs[0].join("memory.max_usage_in_bytes"), "0")?;
        }
        Ok(cg)
    }

    fn make(&self, run: &str) -> io::Result<RunCgroup> {
        let name = format!("run-{run}");
        let v2 = matches!(self.layout, Layout::V2 { .. });
        let mut cg = RunCgroup { dirs: Vec::new(), procs: Vec::new(), v2, oom_before: 0, peak: None, limits: None };
        match &self.layout {
            Layout::V2 { base } => cg.add(&base.join(&name))?,
            Layout::V1 { memory, pids, cpu } => {
                cg.add(&memory.join(&name))?;
                cg.add(&pids.join(&name))?;
                if let Some(cpu) = cpu {
                    cg.add(&cpu.join(&name))?;
                }
            }
        }
        Ok(cg)
    }

    fn limit(&self, cg: &RunCgroup, limits: &Limits) -> io::Result<()> {
        let quota = limits.cpus.map_or("max".to_owned(), |c| ((c * CPU_PERIOD_US as f64) as u64).max(1000).to_string());
        let memory = limits.memory.to_string();
        if cg.v2 {
            let dir = &cg.dirs[0];
            write(&dir.join("memory.max"), &memory)?;
            if dir.join("memory.swap.max").exists() {
                write(&dir.join("memory.swap.max"), "0")?;
            }
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            if dir.join("cpu.max").exists() {
                write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            return Ok(());
        }
        let (m, p) = (&cg.dirs[0], &cg.dirs[1]);
        // Memory plus swap (present where swap accounting is on) is never below memory: lift it,
        // set memory, then bring it down to the same figure (no swap beyond the limit).
        let memsw = m.join("memory.memsw.limit_in_bytes");
        let swap_accounted = memsw.exists();
        if swap_accounted {
            write(&memsw, "-1")?;
        }
        write(&m.join("memory.limit_in_bytes"), &memory)?;
        if swap_accounted {
            write(&memsw, &memory)?;
        }
        write(&p.join("pids.max"), &limits.pids.to_string())?;
        if let Some(c) = cg.dirs.get(2) {
            write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&c.join("cpu.cfs_quota_us"), if quota == "max" { "-1" } else { &quota })?;
        }
        Ok(())
    }

    /// Takes back a run's cgroup once its processes are gone: kept for another run, or removed.
    /// Blocking (it may wait a moment for the kernel to see the last process leave).
    pub fn release(&self, cg: RunCgroup) {
        let empty =
            cg.dirs.iter().all(|d| fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty()));
        let mut idle = self.idle.lock().expect("idle cgroups");
        if empty && idle.len() < KEEP_IDLE {
            idle.push(cg);
        } else {
            drop(idle);
            cg.remove();
        }
    }
}

/// The v2 folder for this process's runs. The controllers must be enabled in every parent's
/// `cgroup.subtree_control`, which the kernel refuses for a cgroup that holds processes (other than
/// the root): then the platform first moves itself into a leaf of its own, as systemd's delegation
/// guidelines ask of a service that manages cgroups.
fn v2_base(own: &Path, name: &str, cpu: bool) -> io::Result<PathBuf> {
    let controllers = if cpu { "+memory +pids +cpu" } else { "+memory +pids" };
    if let Err(e) = write(&own.join("cgroup.subtree_control"), controllers) {
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
        let leaf = own.join(format!("{name}-platform"));
        mkdir(&leaf)?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        write(&own.join("cgroup.subtree_control"), controllers)?;
    }
    remove_stale(own);
    let base = own.join(name);
    mkdir(&base)?;
    write(&base.join("cgroup.subtree_control"), controllers)?;
    Ok(base)
}

/// Removes the folders left by platform processes that no longer run (and their empty runs).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix("mysimbdp-")).and_then(|rest| rest.split('-').next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(runs) = fs::read_dir(&dir) {
            for run in runs.flatten().filter(|r| r.path().is_dir()) {
                let _ = fs::remove_dir(run.path());
            }
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {
                tracing::info!(cgroup = %dir.display(), "removed the cgroup folder of a platform process that is gone")
            }
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "a gone platform process's cgroup folder could not be removed")
            }
        }
    }
}

impl RunCgroup {
    fn add(&mut self, dir: &Path) -> io::Result<()> {
        mkdir(dir)?;
        self.dirs.push(dir.to_owned());
        let procs = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
        self.procs.push(procs);
        Ok(())
    }

    /// Open `cgroup.procs` files: writing "0" to each moves the writer into the run's cgroup.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// OOM kills the kernel has counted in this cgroup since it was made.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = fs::read_to_string(self.dirs[0].join(file)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
    }

    /// What the kernel counted for this run, read once its processes are gone.
    pub fn usage(&self) -> Usage {
        let peak = if self.v2 {
            self.peak.as_ref().and_then(|f| {
                let mut buf = [0u8; 32];
                let n = std::os::unix::fs::FileExt::read_at(f, &mut buf, 0).ok()?;
                std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
            })
        } else {
            fs::read_to_string(self.dirs[0].join("memory.max_usage_in_bytes")).ok().and_then(|t| t.trim().parse().ok())
        };
        Usage { oom_kills: self.oom_kills().saturating_sub(self.oom_before), peak }
    }

    /// Removes the run's folders. The kernel refuses while a process is still in them, which can
    /// last a moment after the last one was reaped; a folder that stays is removed by the next start.
    fn remove(self) {
        drop(self.procs);
        for dir in self.dirs.iter().rev() {
            for attempt in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "a run's cgroup could not be removed")
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for cg in self.idle.lock().expect("idle cgroups").drain(..) {
            cg.remove();
        }
        let bases: Vec<&PathBuf> = match &self.layout {
            Layout::V2 { base } => vec![base],
            Layout::V1 { memory, pids, cpu } => [memory, pids].into_iter().chain(cpu.as_ref()).collect(),
        };
        for base in bases {
            let _ = fs::remove_dir(base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 /sub\\040dir /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hierarchies_and_own_paths_are_read_from_the_kernels_files() {
        let hs = hierarchies(HYBRID);
        assert_eq!(hs.len(), 5, "tmpfs is not a hierarchy");
        let memory = hs.iter().find(|h| h.controllers.contains(&"memory".to_owned())).unwrap();
        assert_eq!(memory.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert!(hs.iter().any(|h| h.v2 && h.mount_point == Path::new("/sys/fs/cgroup/unified")));
        assert!(hs.iter().any(|h| h.root == "/sub dir"), "octal escapes are decoded");
        let own = own_paths("4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n");
        assert_eq!(own[0], ("memory".to_owned(), "/process_api/abc".to_owned()));
        assert_eq!(own[2], (String::new(), "/".to_owned()));
        assert_eq!(folder(memory, "/process_api/abc"), Path::new("/sys/fs/cgroup/memory/process_api/abc"));
        let sub =
            Hierarchy { mount_point: "/sys/fs/cgroup".into(), root: "/docker/x".into(), v2: true, controllers: vec![] };
        assert_eq!(
            folder(&sub, "/docker/x/inner"),
            Path::new("/sys/fs/cgroup/inner"),
            "a mounted sub-tree is stripped"
        );
    }
}
