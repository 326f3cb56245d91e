//! Starting a program the way `posix_spawn` does, plus the few things `posix_spawn` cannot do
//! (resource limits, a parent-death signal).
//!
//! Why not `std::process::Command` with `pre_exec`: a `pre_exec` hook makes std `fork()` the whole
//! multithreaded platform, and on a 2-core machine that fork (copying page tables, then
//! copy-on-write faults and TLB shootdowns in every platform thread) was the largest single cost of
//! running a small file: a third of the platform's CPU. Here the child shares the platform's memory
//! (`CLONE_VM | CLONE_VFORK`, exactly as glibc's `posix_spawn`), runs a handful of plain system
//! calls on its own small stack, and replaces itself with the program; the calling thread sleeps
//! until then. The child therefore must not allocate, lock or unwind: everything it touches is
//! prepared beforehand, and every call it makes is a thin system-call wrapper.

use std::ffi::{c_char, c_int, c_void, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;

/// Kernel-enforced limits set in the child before the program starts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// RLIMIT_AS in bytes.
    pub address_space: Option<u64>,
    /// RLIMIT_CPU in seconds (SIGXCPU at the soft limit, SIGKILL 5 s later).
    pub cpu_seconds: Option<u64>,
}

pub struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [std::ffi::OsString],
    /// The complete environment; nothing of the platform's is inherited.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Becomes the program's stdout and stderr; stdin is /dev/null.
    pub output: RawFd,
    pub limits: Limits,
    /// Namespaces the program starts in (`CLONE_NEW*` flags; 0: the platform's).
    pub namespaces: c_int,
    /// `cgroup.procs` files the child writes "0" to before the program starts, entering those cgroups.
    pub cgroups: &'a [RawFd],
    /// Handed to the program as descriptor 3 (the sandbox's fork server's socket).
    pub fd3: Option<RawFd>,
}

/// A started program leading its own process group. Dropping it before `wait` returned kills the
/// group and reaps the program.
pub struct Child {
    pid: i32,
    exited: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

/// What the child reports back through the memory it shares with the parent when a step fails.
#[repr(C)]
struct Shared {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdin: c_int,
    output: c_int,
    parent: libc::pid_t,
    cgroups: *const c_int,
    cgroup_count: usize,
    fd3: c_int,
    address_space: u64,
    cpu_seconds: u64,
    has_address_space: bool,
    has_cpu_seconds: bool,
    failed_step: c_int,
    errno: c_int,
}

const STEPS: [&str; 10] = [
    "",
    "setting the parent-death signal",
    "the platform exited while starting the program",
    "creating the process group",
    "setting the memory limit (RLIMIT_AS)",
    "setting the CPU-time limit (RLIMIT_CPU)",
    "redirecting stdin/stdout/stderr",
    "entering the working folder",
    "entering the run's cgroup",
    "handing over descriptor 3",
];
const STEP_EXEC: c_int = STEPS.len() as c_int;
const STEP_CLONE: c_int = -1;
const CHILD_STACK: usize = 64 << 10;

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// Starts the program on the calling thread (the spawner's); the pid, or the failed step and errno.
fn clone_and_exec(p: &Prepared) -> Result<i32, (c_int, c_int)> {
    let (argv_ptrs, envp_ptrs) = (null_terminated(&p.argv), null_terminated(&p.envp));

    let mut shared = Shared {
        program: p.program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: p.cwd.as_ptr(),
        stdin: p.stdin.as_raw_fd(),
        output: p.output,
        // SAFETY: getpid cannot fail.
        parent: unsafe { libc::getpid() },
        cgroups: p.cgroups.as_ptr(),
        cgroup_count: p.cgroups.len(),
        fd3: p.fd3.unwrap_or(-1),
        address_space: p.limits.address_space.unwrap_or(0),
        cpu_seconds: p.limits.cpu_seconds.unwrap_or(0),
        has_address_space: p.limits.address_space.is_some(),
        has_cpu_seconds: p.limits.cpu_seconds.is_some(),
        failed_step: 0,
        errno: 0,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the stack grows down from its 16-byte aligned top; it and everything `shared` points
    // to outlive the child's use of them, because CLONE_VFORK suspends this thread until the child
    // has called execve or _exit. All signals are blocked around clone so no handler of the
    // platform's runs on the child's stack before the child has reset them.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16) as *mut c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | p.namespaces,
            &mut shared as *mut Shared as *mut c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err((STEP_CLONE, clone_error.raw_os_error().unwrap_or(0)));
        }
        pid
    };
    // SAFETY: the child has exec'd or exited, so nothing writes `shared` any more.
    let (step, errno) =
        unsafe { (std::ptr::read_volatile(&shared.failed_step), std::ptr::read_volatile(&shared.errno)) };
    if step != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err((step, errno));
    }
    Ok(pid)
}

/// Everything the child needs, owned, so it can be handed to the spawner thread.
struct Prepared {
    program: CString,
    cwd: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    stdin: std::fs::File,
    output: RawFd,
    limits: Limits,
    namespaces: c_int,
    cgroups: Vec<c_int>,
    fd3: Option<RawFd>,
}

type Request = (Prepared, std::sync::mpsc::SyncSender<Result<i32, (c_int, c_int)>>);

/// The thread every program is started from. The parent-death signal fires when the *thread* that
/// started a program ends, not the process: a program started from one of the runtime's blocking
/// threads (which retire after a while idle) would be killed long before the platform stops. This
/// thread lives as long as the platform.
fn spawner() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<Request>> {
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("mysimbdp-spawner".into())
            .spawn(move || {
                for (prepared, reply) in rx {
                    let _ = reply.send(clone_and_exec(&prepared));
                }
            })
            .expect("starting the spawner thread");
        std::sync::Mutex::new(tx)
    })
}

pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<Child> {
    let program = cstring(spec.program.as_os_str().as_bytes(), "program path")?;
    let cwd = cstring(spec.cwd.as_os_str().as_bytes(), "working folder")?;
    let mut argv = vec![program.clone()];
    for a in spec.args {
        argv.push(cstring(OsStr::as_bytes(a), "an argument")?);
    }
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes(), "the environment"))
        .collect::<io::Result<Vec<_>>>()?;
    let stdin = std::fs::File::open("/dev/null")?;
    let prepared = Prepared {
        program,
        cwd,
        argv,
        envp,
        stdin,
        output: spec.output,
        limits: spec.limits,
        namespaces: spec.namespaces,
        cgroups: spec.cgroups.to_vec(),
        fd3: spec.fd3,
    };
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    spawner()
        .lock()
        .expect("spawner lock")
        .send((prepared, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    // The spawner answers within the time a vfork takes; the caller's thread waits as it would
    // have waited for its own vfork.
    let pid = match answer.recv().map_err(|_| io::Error::other("the spawner thread is gone"))? {
        Ok(pid) => pid,
        Err((step, errno)) => {
            let what = if step == STEP_EXEC {
                format!("executing {}", spec.program.display())
            } else if step == STEP_CLONE {
                "starting a process (clone)".to_owned()
            } else {
                STEPS[step as usize].to_owned()
            };
            let os = io::Error::from_raw_os_error(errno);
            return Err(io::Error::new(os.kind(), format!("{what}: {os}")));
        }
    };
    // `spec.output` must stay open until the child has its copy; it has, once `clone` returned.
    // SAFETY: plain system call; the pid is our unreaped child, so it cannot have been reused.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    if fd < 0 {
        let e = io::Error::last_os_error();
        kill_and_reap(pid);
        return Err(e);
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an OwnedFd always returns the one descriptor it owns, open until it is dropped.
    match unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) } {
        Ok(exited) => Ok(Child { pid, exited, status: None }),
        Err(e) => {
            kill_and_reap(pid);
            Err(e.into())
        }
    }
}

/// `struct sigaction` as the kernel takes it (not the C library's layout).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The child, on its own stack in the platform's memory. Only system-call wrappers from here on.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Shared`, alive and untouched while the parent is suspended.
    unsafe {
        let s = &mut *(arg as *mut Shared);
        let fail = |s: &mut Shared, step: c_int| -> ! {
            std::ptr::write_volatile(&mut s.errno, *libc::__errno_location());
            std::ptr::write_volatile(&mut s.failed_step, step);
            libc::_exit(127)
        };
        // The platform's handlers must never run here (they would run on this stack, in the
        // platform's memory); the program starts with every signal at its default.
        // The raw call, because the C library's wrapper refuses the signals it reserves for itself.
        let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), 8);
            }
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(s, 1);
        }
        // A platform that died before the line above would never send the signal. (In a new PID
        // namespace the parent is outside it and shows as 0; the window is a few instructions.)
        let ppid = libc::getppid();
        if ppid != s.parent && ppid != 0 {
            *libc::__errno_location() = libc::ESRCH;
            fail(s, 2);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(s, 3);
        }
        // Before anything else runs as the program: every process it starts is counted from here.
        for i in 0..s.cgroup_count {
            if libc::write(*s.cgroups.add(i), b"0".as_ptr().cast(), 1) != 1 {
                fail(s, 8);
            }
        }
        if s.has_address_space {
            let lim = libc::rlimit { rlim_cur: s.address_space, rlim_max: s.address_space };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                fail(s, 4);
            }
        }
        if s.has_cpu_seconds {
            let lim = libc::rlimit { rlim_cur: s.cpu_seconds, rlim_max: s.cpu_seconds + 5 };
            if libc::setrlimit(libc::RLIMIT_CPU, &lim) != 0 {
                fail(s, 5);
            }
        }
        if libc::dup2(s.stdin, 0) < 0 || libc::dup2(s.output, 1) < 0 || libc::dup2(s.output, 2) < 0 {
            fail(s, 6);
        }
        let mut first_closed = 3u32;
        if s.fd3 >= 0 {
            // dup2 onto itself would keep close-on-exec set, so that case clears it by hand.
            let ok = if s.fd3 == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(s.fd3, 3) == 3 };
            if !ok {
                fail(s, 9);
            }
            first_closed = 4;
        }
        // Descriptors the platform inherited without close-on-exec (from whoever started it) are not
        // the program's business. This closes the child's own table only (no CLONE_FILES).
        libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32);
        if libc::chdir(s.cwd) != 0 {
            fail(s, 7);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(s.program, s.argv, s.envp);
        fail(s, STEP_EXEC)
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: plain system calls on our own child and the group it leads.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        if libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
            // Rare (the future was dropped mid-run); a zombie must not be left behind.
            std::thread::spawn(move || libc::waitpid(pid, &mut status, 0));
        }
    }
}

impl Child {
    /// Process id, also the id of the process group it leads.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the program to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut ready = self.exited.readable().await?;
            let mut status = 0;
            // SAFETY: reaping our own child; WNOHANG never blocks the runtime.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                0 => ready.clear_ready(),
                r if r == self.pid => self.status = Some(ExitStatus::from_raw(status)),
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill_and_reap(self.pid);
        }
    }
}
