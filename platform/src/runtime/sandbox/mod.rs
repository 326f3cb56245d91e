//! The isolation boundary every program the platform runs for a tenant starts inside.
//!
//! Each run gets, from the kernel, what a container gets, at the start-up cost of a process:
//! - its own PID namespace and `/proc`: it sees no process but its own; when it exits, everything it
//!   started goes with it (a `setsid` child included);
//! - its own mount namespace: a read-only root holding the host's system folders read-only (`/usr`
//!   and the top-level links into it, a chosen part of `/etc`), its app at `/app` read-only, its input
//!   at `/input/<name>` read-only, a private `/work` (its home and working folder) and `/tmp`, a
//!   minimal `/dev`; nothing of the platform's folders, staging or other tenants;
//! - its own IPC and UTS namespaces;
//! - its tenant's own uid and gid (allocated by the platform and recorded in the store), no
//!   capabilities, `no_new_privs`, and a seccomp filter (`seccomp`);
//! - a cgroup per run (`cgroup`): memory, process count and CPU limits it cannot escape by forking;
//!   the platform reads the peak and the OOM kills back.
//!
//! The network is the host's: the apps' coredms and broker listen on loopback here, and both check
//! credentials of their own (see the README's security model).
//!
//! How a run starts: the platform sends the run's spec and descriptors to its fork server
//! (`mysimbdp-sandbox`, started once, see `forkserver`), which clones itself into the run's new
//! namespaces; the clone enters the run's cgroup and becomes the run's init (`init`), which builds the
//! root, pivots into it, and starts the program with the tenant's credentials.
//!
//! Why not bubblewrap, hakoniwa or youki's libcontainer, and what each step cost: the README's
//! security model. They taught the order of the steps followed here: private propagation first, binds
//! then read-only remounts, `pivot_root(".", ".")` and a detach, the bounding set before the uid.

pub mod cgroup;
pub mod forkserver;
pub mod init;
pub mod seccomp;
pub mod spec;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use spec::{InitReport, InitSpec, Mount};

pub use crate::config::{SandboxConfig, DEFAULT_UID_BASE};

/// Where things are inside the sandbox.
pub mod paths {
    /// The installed app version, read-only.
    pub const APP: &str = "/app";
    /// The run's private working folder and home (a tmpfs counted against its memory).
    pub const WORK: &str = "/work";
    /// The batch input file, read-only, under its own name.
    pub const INPUT: &str = "/input";
    /// Where a batch app may leave its result.
    pub const RESULT_FILE: &str = "/work/result.json";
    /// The tenant's lake folder, writable, for its lake sinks only.
    pub const LAKE: &str = "/lake";
}

/// The largest result file taken from an app.
pub const RESULT_LIMIT: u64 = 1 << 20;

/// The host's top-level folders a program needs to run (all read-only); links among them (a merged
/// `/usr`) are reproduced as links.
const SYSTEM: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What of the host's `/etc` programs need: the dynamic loader's cache, name resolution, TLS roots,
/// time zones, MIME and magic databases, and the configuration of the usual interpreters. Not the
/// rest: `/etc` also holds credentials and the host's own configuration.
const ETC: [&str; 29] = [
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "hosts",
    "java-17-openjdk",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "magic",
    "magic.mime",
    "mime.types",
    "networks",
    "nsswitch.conf",
    "os-release",
    "perl",
    "pki",
    "protocols",
    "python3",
    "python3.11",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
    "xdg",
];

/// A tenant's account on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    /// The name in the sandbox's `/etc/passwd` (the tenant id).
    pub name: String,
}

/// The program a run starts, as it sees itself in the sandbox.
#[derive(Clone, Copy)]
pub struct Program<'a> {
    pub path: &'a Path,
    pub args: &'a [std::ffi::OsString],
    /// The complete environment.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Where it may leave its result file.
    pub result_file: Option<&'a Path>,
    /// RLIMIT_CPU.
    pub cpu_time: Option<std::time::Duration>,
}

/// One run to confine.
pub struct Confined {
    pub account: Account,
    /// Host folder shown at `/app`.
    pub app_dir: PathBuf,
    /// Host file shown at `/input/<its name>`. Its folder is what the sandbox shows at `/input`, so it
    /// must hold nothing else (a job's work folder holds its claimed file only).
    pub input: Option<PathBuf>,
    /// Host folder shown at `/lake`, writable: the tenant's own lake folder (its lake sinks only).
    pub lake: Option<PathBuf>,
    pub limits: cgroup::Limits,
}

/// The running platform's sandbox: its init, its cgroups and its filters.
#[derive(Debug)]
pub struct Sandbox {
    forkserver: forkserver::ForkServer,
    /// The root every run pivots into: the mount points and links of the sandbox, made once.
    root: PathBuf,
    cgroups: cgroup::Cgroups,
    seccomp: Vec<u64>,
    /// The host's system folders every run sees.
    system: Vec<Mount>,
    /// `/dev` for every run: the usual devices and links, made once (a bind per run instead of a
    /// dozen mounts).
    dev: PathBuf,
    /// Each tenant's `/etc` (see `ETC`), made once per tenant per start, under here.
    etc: PathBuf,
    /// Tenants whose `/etc` is ready.
    etc_ready: std::sync::Mutex<std::collections::HashSet<String>>,
    pub uid_base: u32,
}

/// Why the sandbox cannot be used on this host.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox for tenants' programs cannot start: {0}")]
pub struct SandboxError(String);

impl Sandbox {
    /// Checks that this host can confine programs (root, cgroups, the init binary) and prepares what
    /// every run shares.
    pub fn start(config: &SandboxConfig, data_dir: &Path) -> Result<Self, SandboxError> {
        let fail = |what: String| SandboxError(what);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(fail(
                "the platform must run as root to give each tenant's program its own uid, namespaces and cgroup \
                 (or start it with --sandbox off, which runs tenants' programs as the platform's own user: \
                 for development only)"
                    .into(),
            ));
        }
        if config.uid_base < 1000 {
            return Err(fail(format!(
                "the tenants' uid base {} is among the host's own users (use 1000 or more)",
                config.uid_base
            )));
        }
        let init = match &config.init {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| fail(format!("finding the platform's own binary: {e}")))?
                .with_file_name("mysimbdp-sandbox"),
        };
        if !init.is_file() {
            return Err(fail(format!(
                "its init {} is missing (it is built beside `mysimbdp`; or set --sandbox-init)",
                init.display()
            )));
        }
        let base = crate::config::private_dir(&data_dir.join("sandbox"))
            .map_err(|e| fail(format!("its folder under {}: {e}", data_dir.display())))?;
        let home = own_home(&base).map_err(|e| fail(format!("its folder under {}: {e}", base.display())))?;
        let (root, system) = make_root(&home.join("root")).map_err(|e| fail(format!("its root folder: {e}")))?;
        let dev = make_dev(&home.join("dev")).map_err(|e| fail(format!("its /dev: {e}")))?;
        // Made afresh at each start, so changes to the host's /etc reach programs after a restart.
        let etc = home.join("etc");
        if etc.exists() {
            std::fs::remove_dir_all(&etc).map_err(|e| fail(format!("clearing {}: {e}", etc.display())))?;
        }
        crate::config::private_dir(&etc).map_err(|e| fail(format!("its /etc folder: {e}")))?;
        let cgroups = cgroup::Cgroups::start().map_err(|e| fail(format!("cgroups: {e}")))?;
        Ok(Sandbox {
            forkserver: forkserver::ForkServer::new(&init),
            root,
            cgroups,
            seccomp: seccomp::filter(),
            system,
            dev,
            etc,
            etc_ready: Default::default(),
            uid_base: config.uid_base,
        })
    }

    /// What confines the programs, for the log at start.
    pub fn describe(&self) -> String {
        format!(
            "PID, mount, IPC and UTS namespaces, tenants' uids from {}, no capabilities, seccomp; {}",
            self.uid_base,
            self.cgroups.describe()
        )
    }

    /// The fork server's pid, once started (the runs' CPU time is counted in its children's).
    pub fn forkserver_pid(&self) -> Option<u32> {
        self.forkserver.pid()
    }

    /// Starts a prepared run; `output` becomes its stdout and stderr.
    pub async fn launch(&self, prepared: &Prepared, output: std::os::fd::RawFd) -> io::Result<forkserver::Launched> {
        use std::os::fd::AsRawFd;
        let cgroups = prepared.cgroup.procs_fds();
        self.forkserver.start(&prepared.spec, output, prepared.report.as_raw_fd(), &cgroups).await
    }

    /// Everything one run needs before it starts: its spec, its cgroup, and the memfd its init
    /// reports into.
    pub fn prepare(&self, run: &Confined, program: &Program<'_>) -> io::Result<Prepared> {
        let Program { path: program, args, env, cwd, result_file, cpu_time } = *program;
        let text = |p: &Path| -> io::Result<String> {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not UTF-8", p.display())))
        };
        let memory = run.limits.memory;
        let etc = self.tenant_etc(&run.account)?;
        let mut mounts: Vec<Mount> = Vec::with_capacity(self.system.len() + 10);
        mounts.extend(self.system.iter().cloned());
        let bind = |src: PathBuf, dst: &str, exec: bool, devices: bool| Mount::Bind {
            src,
            dst: dst.into(),
            writable: false,
            exec,
            devices,
        };
        mounts.push(bind(etc, "/etc", false, false));
        mounts.push(Mount::Proc { dst: "/proc".into() });
        mounts.push(bind(self.dev.clone(), "/dev", false, true));
        mounts.push(bind(run.app_dir.clone(), paths::APP, true, false));
        if let Some(input) = &run.input {
            // The job's own folder holds the claimed file and nothing else.
            let folder =
                input.parent().ok_or_else(|| io::Error::other(format!("{} has no folder", input.display())))?;
            mounts.push(bind(folder.to_owned(), paths::INPUT, false, false));
        }
        if let Some(lake) = &run.lake {
            mounts.push(Mount::Bind {
                src: lake.clone(),
                dst: paths::LAKE.into(),
                writable: true,
                exec: false,
                devices: false,
            });
        }
        mounts.push(Mount::Tmpfs { dst: paths::WORK.into(), size: memory, mode: 0o700, owned: true });
        mounts.push(Mount::Tmpfs { dst: "/tmp".into(), size: memory, mode: 0o1777, owned: false });
        let uid = run.account.uid;
        let spec = InitSpec {
            root: self.root.clone(),
            hostname: "mysimbdp".into(),
            uid,
            gid: uid,
            mounts,
            program: text(program)?,
            args: args.iter().map(|a| text(Path::new(a))).collect::<io::Result<_>>()?,
            env: env.to_vec(),
            cwd: text(cwd)?,
            seccomp: self.seccomp.clone(),
            result_file: result_file.map(text).transpose()?,
            result_limit: RESULT_LIMIT,
            cpu_seconds: cpu_time.map(|d| d.as_secs().max(1)),
        };
        let cgroup = self.cgroups.create(&uuid::Uuid::new_v4().simple().to_string(), &run.limits)?;
        Ok(Prepared { spec, cgroup, report: memfd()? })
    }

    /// Takes back a finished run's cgroup (blocking: call off the async runtime).
    pub fn release(&self, cgroup: cgroup::RunCgroup) {
        self.cgroups.release(cgroup);
    }
}

impl Sandbox {
    /// The tenant's `/etc`: the host's entries `ETC` names (only what any user of the host may read
    /// of them), and a `passwd` and `group` that know the tenant's account (programs such as `psql`
    /// refuse to run as a uid without a name).
    fn tenant_etc(&self, account: &Account) -> io::Result<PathBuf> {
        let dir = self.etc.join(&account.name);
        let mut ready = self.etc_ready.lock().expect("etc lock");
        if ready.contains(&account.name) {
            return Ok(dir);
        }
        let building = self.etc.join(format!(".{}", account.name));
        if building.exists() {
            std::fs::remove_dir_all(&building)?;
        }
        std::fs::create_dir(&building)?;
        for name in ETC {
            copy_readable(&Path::new("/etc").join(name), &building.join(name))?;
        }
        let (uid, name) = (account.uid, &account.name);
        let files = [
            ("passwd", format!("root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n{name}:x:{uid}:{uid}:{name}:{}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", paths::WORK)),
            ("group", format!("root:x:0:\n{name}:x:{uid}:\nnogroup:x:65534:\n")),
            ("hostname", "mysimbdp\n".to_owned()),
        ];
        for (file, text) in files {
            std::fs::write(building.join(file), text)?;
        }
        std::os::unix::fs::symlink("/proc/self/mounts", building.join("mtab"))?;
        set_mode(&building, 0o755)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&building, &dir)?;
        ready.insert(account.name.clone());
        Ok(dir)
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Copies `src` to `dst` (folders recursively, links as links), leaving out what other users of the
/// host may not read (say `/etc/ssl/private`): the sandbox must not make readable what was not.
fn copy_readable(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = meta.permissions().mode();
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
    } else if meta.is_dir() {
        if mode & 0o005 != 0o005 {
            return Ok(());
        }
        std::fs::create_dir(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_readable(&entry.path(), &dst.join(entry.file_name()))?;
        }
        set_mode(dst, 0o755)
    } else if meta.is_file() {
        if mode & 0o004 == 0 {
            return Ok(());
        }
        std::fs::copy(src, dst)?;
        set_mode(dst, 0o644)
    } else {
        Ok(())
    }
}

/// The devices every program expects (no terminal: a program given the platform's controlling
/// terminal could type into it), the descriptor links, and `/dev/shm`.
fn make_dev(dir: &Path) -> io::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir(dir)?;
    for (name, minor) in [("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)] {
        let path = std::ffi::CString::new(dir.join(name).as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated path; memory devices are character devices of major 1.
        if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        set_mode(&dir.join(name), 0o666)?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dir.join(name))?;
    }
    // POSIX shared memory and semaphores live in /dev/shm: the run's private /tmp serves.
    std::os::unix::fs::symlink("/tmp", dir.join("shm"))?;
    set_mode(dir, 0o755)?;
    Ok(dir.to_owned())
}

/// The root every run pivots into, made afresh at each start: a folder per mount point, and the
/// host's top-level links into `/usr` (on a merged `/usr`) reproduced. Returns it with the binds of
/// the host's system folders that are folders of their own.
/// This process's own folder under `base` (`run-<pid>-<start ticks>`): several platform processes
/// may share one data folder, and each remakes its root, /dev and /etc at start. Folders of
/// processes that are gone are removed.
fn own_home(base: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    let ticks = crate::runtime::process::start_ticks(pid).unwrap_or_default();
    for entry in std::fs::read_dir(base)?.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let alive = name
            .strip_prefix("run-")
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, t)| Some((p.parse::<u32>().ok()?, t.parse::<i64>().ok()?)))
            .is_some_and(|(p, t)| crate::runtime::process::alive(p, t));
        if !alive {
            // Gone, or the single folder of an earlier version.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    crate::config::private_dir(&base.join(format!("run-{pid}-{ticks}")))
}

fn make_root(root: &Path) -> io::Result<(PathBuf, Vec<Mount>)> {
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    std::fs::create_dir(root)?;
    for dir in ["etc", "dev", "proc", "app", "input", "lake", "work", "tmp", "var"] {
        std::fs::create_dir(root.join(dir))?;
    }
    std::os::unix::fs::symlink("/tmp", root.join("var/tmp"))?;
    let mut binds = Vec::new();
    for name in SYSTEM {
        let host = Path::new("/").join(name);
        match std::fs::read_link(&host) {
            Ok(target) => std::os::unix::fs::symlink(target, root.join(name))?,
            Err(_) if host.is_dir() => {
                std::fs::create_dir(root.join(name))?;
                binds.push(Mount::Bind {
                    src: host,
                    dst: format!("/{name}"),
                    writable: false,
                    exec: true,
                    devices: false,
                });
            }
            Err(_) => {}
        }
    }
    for dir in ["", "var"] {
        set_mode(&root.join(dir), 0o755)?;
    }
    Ok((root.to_owned(), binds))
}

fn memfd() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; the descriptor is fresh and owned below.
    let fd = unsafe { libc::memfd_create(c"mysimbdp-sandbox-report".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A run ready to start: its init's spec, the cgroup it enters, the memfd it reports into.
pub struct Prepared {
    pub spec: InitSpec,
    pub cgroup: cgroup::RunCgroup,
    pub report: OwnedFd,
}

impl Prepared {
    /// What the init reported, once it has exited. `None`: it was killed before it could.
    pub fn report(&self) -> Option<InitReport> {
        let file = std::fs::File::from(self.report.try_clone().ok()?);
        let mut text = vec![0u8; file.metadata().ok()?.len().min(4 << 20) as usize];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut text, 0).ok()?;
        text.truncate(n);
        serde_json::from_slice(&text).ok()
    }
}
