//! The sandbox's fork server: `mysimbdp-sandbox`, started once by the platform (as root, in the
//! platform's namespaces), clones each run's init into that run's new namespaces.
//!
//! Why a server, not a program started per run: executing a program costs far more than cloning a
//! small one already running. On these machines each C library start-up alone asks the CPU for its
//! features (CPUID), which a virtual machine traps: the init's own start was a quarter of the
//! sandbox's whole cost per run. The server is a small single-threaded process, so cloning it copies
//! little, and the init it clones runs its code straight away, with its spec already in memory.
//!
//! The platform talks to it over a `SOCK_SEQPACKET` socket: a request is a run's spec (JSON) with its
//! descriptors (the output pipe, the report memfd, the cgroups' `cgroup.procs`); the server answers
//! with the init's pid once cloned, and again with its wait status when it ends. The server dies with
//! the platform (parent-death signal, never cleared since it never changes its credentials), and the
//! inits die with the server.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::spec::{InitSpec, PARENT_FD, REPORT_FD};

/// The socket's descriptor in the server.
const SOCKET_FD: RawFd = 3;
/// The largest message: a spec is a few KiB (its mounts and the app's environment).
const MAX_MESSAGE: usize = 1 << 20;
/// Descriptors a request carries at most: output, report, and one `cgroup.procs` per controller.
const MAX_FDS: usize = 8;
/// The stack each cloned init starts on (a copy of the server's memory, so this is copied on write).
const INIT_STACK: usize = 1 << 20;

/// A run to start: its spec; its descriptors (output, report, then each `cgroup.procs`) come with it.
#[derive(serde::Serialize)]
struct Request<'a> {
    id: u64,
    spec: &'a InitSpec,
}

/// The same, as the server reads it.
#[derive(serde::Deserialize)]
struct Received {
    id: u64,
    spec: InitSpec,
}

/// The server's answers: `started` (the init's pid) or `error`, then `exited` (its wait status).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reply {
    id: u64,
    #[serde(default)]
    started: Option<i32>,
    #[serde(default)]
    exited: Option<i32>,
    #[serde(default)]
    error: Option<String>,
}

// ---------- the platform's side ----------

/// What a started run is waited on with.
pub struct Launched {
    pub pid: u32,
    /// The init's raw wait status (or why the server lost it).
    pub exited: oneshot::Receiver<Result<i32, String>>,
}

struct Pending {
    started: Option<oneshot::Sender<Result<i32, String>>>,
    exited: Option<oneshot::Sender<Result<i32, String>>>,
}

struct Connection {
    socket: Arc<OwnedFd>,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    /// Set by the reader when the server is gone.
    closed: Arc<std::sync::atomic::AtomicBool>,
    server: super::super::spawn::Child,
}

/// The platform's handle on its fork server, started on first use and again if it ever stops.
pub struct ForkServer {
    program: PathBuf,
    connection: Mutex<Option<Connection>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer").field("program", &self.program).finish_non_exhaustive()
    }
}

impl ForkServer {
    pub fn new(program: &Path) -> Self {
        ForkServer { program: program.to_owned(), connection: Mutex::new(None), next_id: Default::default() }
    }

    /// The server's pid, if it runs (its CPU time holds the runs', for benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.connection.lock().expect("fork server lock").as_ref().map(|c| c.server.id())
    }

    fn connect(&self) -> io::Result<Connection> {
        let mut pair = [0; 2];
        // SAFETY: a two-element array for socketpair to fill.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors nothing else owns.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let server = super::super::spawn::spawn(&super::super::spawn::SpawnSpec {
            program: &self.program,
            args: &[],
            env: &[],
            cwd: Path::new("/"),
            // Its own complaints go where the platform's do.
            output: libc::STDERR_FILENO,
            limits: Default::default(),
            namespaces: 0,
            cgroups: &[],
            fd3: Some(theirs.as_raw_fd()),
        })?;
        drop(theirs);
        let socket = Arc::new(ours);
        let pending: Arc<Mutex<HashMap<u64, Pending>>> = Arc::default();
        let closed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (s, p, c) = (socket.clone(), pending.clone(), closed.clone());
        std::thread::Builder::new().name("mysimbdp-forksrv".into()).spawn(move || read_replies(&s, &p, &c))?;
        tracing::info!(pid = server.id(), "the sandbox's fork server started");
        Ok(Connection { socket, pending, closed, server })
    }

    /// Starts a run: its init, cloned into new namespaces, enters the cgroups, takes `output` as its
    /// stdout and stderr and reports into `report`.
    pub async fn start(
        &self,
        spec: &InitSpec,
        output: RawFd,
        report: RawFd,
        cgroups: &[RawFd],
    ) -> io::Result<Launched> {
        let mut fds = vec![output, report];
        fds.extend_from_slice(cgroups);
        // A request a server could not take, or never answered because it died (any init it had
        // cloned died with it), goes once more to a new server.
        match self.try_start(spec, &fds).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                tracing::warn!("the sandbox's fork server stopped; starting it again");
                self.try_start(spec, &fds).await
            }
            other => other,
        }
    }

    async fn try_start(&self, spec: &InitSpec, fds: &[RawFd]) -> io::Result<Launched> {
        let gone = || io::Error::new(io::ErrorKind::ConnectionAborted, "the sandbox's fork server stopped");
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        let message = serde_json::to_vec(&Request { id, spec }).map_err(io::Error::other)?;
        {
            let mut guard = self.connection.lock().expect("fork server lock");
            if guard.as_ref().is_none_or(|c| c.closed.load(std::sync::atomic::Ordering::Acquire)) {
                *guard = Some(self.connect()?);
            }
            let conn = guard.as_ref().expect("connected");
            let entry = Pending { started: Some(started_tx), exited: Some(exited_tx) };
            conn.pending.lock().expect("pending lock").insert(id, entry);
            if send(conn.socket.as_raw_fd(), &message, fds).is_err() {
                conn.pending.lock().expect("pending lock").remove(&id);
                conn.closed.store(true, std::sync::atomic::Ordering::Release);
                return Err(gone());
            }
        }
        match started_rx.await {
            Ok(Ok(pid)) => Ok(Launched { pid: pid as u32, exited: exited_rx }),
            Ok(Err(why)) if why == SERVER_GONE => Err(gone()),
            Ok(Err(why)) => Err(io::Error::other(why)),
            Err(_) => Err(gone()),
        }
    }
}

/// What the reader tells runs waiting on a server that is gone.
const SERVER_GONE: &str = "the sandbox's fork server stopped";

/// The reader: routes each reply to the run it belongs to; when the server is gone, fails them all.
fn read_replies(socket: &OwnedFd, pending: &Mutex<HashMap<u64, Pending>>, closed: &std::sync::atomic::AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match recv(socket.as_raw_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => break,
            Ok((n, _)) => n,
        };
        let Ok(reply) = serde_json::from_slice::<Reply>(&buf[..n]) else {
            tracing::error!("the sandbox's fork server sent something that is not a reply");
            continue;
        };
        let mut pending = pending.lock().expect("pending lock");
        let Some(entry) = pending.get_mut(&reply.id) else { continue };
        if let Some(status) = reply.exited {
            if let Some(tx) = entry.exited.take() {
                let _ = tx.send(Ok(status));
            }
            pending.remove(&reply.id);
        } else if let Some(tx) = entry.started.take() {
            let _ = tx.send(reply.started.ok_or_else(|| reply.error.unwrap_or_else(|| "no pid".into())));
            if reply.started.is_none() {
                pending.remove(&reply.id);
            }
        }
    }
    closed.store(true, std::sync::atomic::Ordering::Release);
    for (_, entry) in pending.lock().expect("pending lock").drain() {
        for tx in [entry.started, entry.exited].into_iter().flatten() {
            let _ = tx.send(Err(SERVER_GONE.into()));
        }
    }
}

// ---------- the message layer (both sides) ----------

fn send(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: a zeroed msghdr is valid; the fields point to buffers alive for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and the descriptors (CMSG_SPACE above).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        // SAFETY: a valid msghdr.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One message and the descriptors that came with it (close-on-exec).
fn recv(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; the fields point to buffers alive for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: a valid msghdr.
        let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(*data.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("a message or its descriptors did not fit"));
    }
    Ok((n, fds))
}

fn reply(reply: &Reply) {
    if let Ok(bytes) = serde_json::to_vec(reply) {
        let _ = send(SOCKET_FD, &bytes, &[]);
    }
}

// ---------- the server's side (the `mysimbdp-sandbox` binary) ----------

/// What a cloned init starts from, in the server's memory (copied into the init).
struct InitStart<'a> {
    spec: &'a InitSpec,
    fds: &'a [OwnedFd],
    parent: RawFd,
}

/// Serves the platform until it closes the socket (or dies, taking the server with it).
pub fn main() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mysimbdp-sandbox: {e}");
            1
        }
    };
    // SAFETY: ends the process.
    unsafe { libc::_exit(code) }
}

fn serve() -> io::Result<()> {
    // SAFETY: fcntl on the descriptor the platform handed over; the inits must not inherit it.
    if unsafe { libc::fcntl(SOCKET_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::other(
            "descriptor 3 is not the platform's socket (this program is started by the platform)",
        ));
    }
    // Once for every run: no program started below can gain a capability back, whatever its file
    // says. The server keeps the capabilities it has (the bounding set limits only what an execve
    // grants), so the inits it clones can still build their sandboxes.
    super::init::drop_bounding_set()?;
    // SAFETY: plain system calls on this process.
    let me = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as RawFd;
    if me < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl on our own descriptor (each init gets its copy as descriptor 4).
    unsafe { libc::fcntl(me, libc::F_SETFD, libc::FD_CLOEXEC) };
    let children = child_signals()?;
    let mut stack = vec![0u8; INIT_STACK];
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut runs: HashMap<i32, u64> = HashMap::new();
    loop {
        let mut ready = [
            libc::pollfd { fd: SOCKET_FD, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: children, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(ready.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready[1].revents != 0 {
            reap(children, &mut runs);
        }
        if ready[0].revents != 0 {
            let (n, fds) = recv(SOCKET_FD, &mut buf)?;
            if n == 0 {
                return Ok(()); // the platform closed its end
            }
            let request: Received = match serde_json::from_slice(&buf[..n]) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mysimbdp-sandbox: a request that does not parse: {e}");
                    continue;
                }
            };
            let id = request.id;
            match clone_init(&request.spec, &fds, me, &mut stack) {
                Ok(pid) => {
                    runs.insert(pid, id);
                    reply(&Reply { id, started: Some(pid), exited: None, error: None });
                }
                Err(e) => {
                    reply(&Reply { id, started: None, exited: None, error: Some(format!("starting the sandbox: {e}")) })
                }
            }
            drop(fds); // the init has its own copies
        }
    }
}

/// A signalfd for SIGCHLD (blocked, so it is read rather than delivered).
fn child_signals() -> io::Result<RawFd> {
    // SAFETY: sigset operations on a local set, then a plain system call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Reaps every init that ended and tells the platform how.
fn reap(signals: RawFd, runs: &mut HashMap<i32, u64>) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: draining the signalfd into a buffer of its record size.
    while unsafe { libc::read(signals, info.as_mut_ptr().cast(), info.len()) } > 0 {}
    loop {
        let mut status = 0;
        // SAFETY: reaping our own children without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if let Some(id) = runs.remove(&pid) {
            reply(&Reply { id, started: None, exited: Some(status), error: None });
        }
    }
}

/// Clones the server into the run's new namespaces; the child becomes the run's init.
fn clone_init(spec: &InitSpec, fds: &[OwnedFd], parent: RawFd, stack: &mut [u8]) -> io::Result<i32> {
    if fds.len() < 2 {
        return Err(io::Error::other("a request without its output and report descriptors"));
    }
    let arg = InitStart { spec, fds, parent };
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::SIGCHLD;
    // SAFETY: the stack grows down from its 16-byte aligned top. Without CLONE_VM the child runs on a
    // copy of this process's memory (a single thread, holding no lock), so `arg` and the stack are
    // its own from the start.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(init_main, top.cast(), flags, (&arg as *const InitStart<'_>).cast_mut().cast())
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // The run's process group, before the platform hears of it (it signals the group).
    // SAFETY: plain system call on our own child.
    unsafe { libc::setpgid(pid, pid) };
    Ok(pid)
}

/// The cloned child: arranges its descriptors, enters its cgroups, then runs the init.
extern "C" fn init_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `InitStart` in this process's copy of the server's memory.
    let c = unsafe { &*(arg as *const InitStart<'_>) };
    let fail = |what: &str, e: io::Error| -> ! {
        eprintln!("mysimbdp-sandbox: {what}: {e}");
        // SAFETY: ends the child.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on this new process's own state and descriptors.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Dies with the server (and so with the platform); a server gone already shows as readable.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut gone = libc::pollfd { fd: c.parent, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut gone, 1, 0) != 0 {
            libc::_exit(127);
        }
        libc::setpgid(0, 0);
        // Every process of the run is counted from here on.
        for cgroup in &c.fds[2..] {
            if libc::write(cgroup.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                fail("entering the run's cgroup", io::Error::last_os_error());
            }
        }
        if let Some(seconds) = c.spec.cpu_seconds {
            let lim = libc::rlimit { rlim_cur: seconds, rlim_max: seconds + 5 };
            if libc::setrlimit(libc::RLIMIT_CPU, &lim) != 0 {
                fail("setting the CPU-time limit", io::Error::last_os_error());
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        let output = c.fds[0].as_raw_fd();
        // Descriptors 0-4 as the init expects them; nothing else of the server's survives.
        let moved = [(null, 0), (output, 1), (output, 2)];
        for (from, to) in moved {
            if from < 0 || libc::dup2(from, to) != to {
                fail("arranging stdin, stdout and stderr", io::Error::last_os_error());
            }
        }
        if libc::dup2(c.fds[1].as_raw_fd(), REPORT_FD) != REPORT_FD || libc::dup2(c.parent, PARENT_FD) != PARENT_FD {
            fail("arranging the report and parent descriptors", io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_close_range, PARENT_FD as u32 + 1, u32::MAX, 0u32);
    }
    super::init::main(c.spec)
}
