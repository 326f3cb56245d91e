//! A run's init: cloned by the fork server (`forkserver`) as PID 1 of new PID, mount, IPC and UTS
//! namespaces, as root with an empty capability bounding set, already in the run's cgroup, with its
//! spec in memory. It builds the run's root file system (the prepared root bound read-only, the
//! host's system folders, the tenant's `/etc`, the app, the input, a private `/tmp` and `/work`, a
//! fresh `/proc`), pivots into it, starts the tenant's program as the tenant's own uid with no
//! capabilities, `no_new_privs` and the seccomp filter, then drops its own privileges the same way and
//! waits. When the program exits, the init reads the result file, writes its report and exits; the
//! kernel then kills whatever the program left running in the namespace (a `setsid` child
//! included), so a run ends with its program.
//!
//! Why a process of its own beside the program: a program that is PID 1 of its namespace ignores
//! SIGTERM unless it handles it, which would change the app contract. The init stays PID 1 instead:
//! it ignores what it does not handle, and the program beside it gets the platform's SIGTERM like any
//! process.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;

use super::seccomp;
use super::spec::{InitReport, InitSpec, Mount, PARENT_FD, REPORT_FD};

/// Runs the init and exits with 0 once it has reported, 127 if it could not start the program.
pub fn main(spec: &InitSpec) -> ! {
    let mut report = InitReport::default();
    let code = match run(spec, &mut report) {
        Ok(()) => 0,
        Err(e) => {
            report.error = Some(e);
            127
        }
    };
    write_report(&report);
    // SAFETY: ends the process; nothing is left to flush.
    unsafe { libc::_exit(code) }
}

fn run(spec: &InitSpec, report: &mut InitReport) -> Result<(), String> {
    // SAFETY: plain fcntl on the descriptors the fork server arranged: the program inherits neither.
    unsafe {
        libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(PARENT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    // SAFETY: getpid cannot fail.
    if unsafe { libc::getpid() } != 1 {
        return Err("the sandbox's init must be PID 1 of its own PID namespace (the platform starts it)".into());
    }
    build_root(spec)?;
    let name = spec.hostname.as_bytes();
    // SAFETY: a valid buffer and its length.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }, || "setting the host name".into())?;
    let program = start_program(spec)?;
    // The init stays beside the program for the whole run, as the tenant's uid with no capabilities
    // and undumpable (the uid change makes it so): the program can neither trace it nor signal it
    // (PID 1 ignores what it does not handle). It needs no seccomp filter: it runs nothing more.
    drop_privileges(spec.uid, spec.gid, &[]).map_err(|(what, e)| format!("{what}: {e}"))?;
    follow_parent()?;
    let status = wait_for(program)?;
    report.status = Some(status);
    if let Some(path) = &spec.result_file {
        match read_result(Path::new(path), spec.result_limit) {
            Ok(Some(bytes)) => report.result_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            Ok(None) => {}
            Err(why) => report.result_error = Some(why),
        }
    }
    Ok(())
}

/// Dies with the fork server (which dies with the platform). The parent-death signal set at the start
/// was cleared by the change of uid, so it is set again; a server gone in between shows as a readable
/// pidfd.
fn follow_parent() -> Result<(), String> {
    // SAFETY: plain prctl and poll on our own descriptor.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL), || "setting the parent-death signal".into())?;
        let mut gone = libc::pollfd { fd: PARENT_FD, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut gone, 1, 0) != 0 {
            return Err("the platform is gone".into());
        }
    }
    Ok(())
}

fn write_report(report: &InitReport) {
    let Ok(bytes) = serde_json::to_vec(report) else { return };
    // SAFETY: plain system call on descriptor 3; if it is not open it fails and nothing is reported.
    unsafe {
        libc::pwrite(REPORT_FD, bytes.as_ptr().cast(), bytes.len(), 0);
    }
}

fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<(), String> {
    if ret < 0 {
        Err(format!("{}: {}", what(), io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn c(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{} contains a NUL byte", path.display()))
}

fn mount(
    src: Option<&CStr>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let target = c(dst)?;
    let fstype = fstype.map(|f| CString::new(f).expect("no NUL"));
    let data = data.map(|d| CString::new(d).expect("no NUL"));
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: NUL-terminated strings (or null) that outlive the call.
    let ret =
        unsafe { libc::mount(ptr(src), target.as_ptr(), ptr(fstype.as_deref()), flags, ptr(data.as_deref()).cast()) };
    check(ret, || format!("mounting {}", dst.display()))
}

/// Read-only (unless writable), no set-uid, no devices, no exec unless asked: a bind mount takes
/// these only from a remount.
fn bind(src: &Path, dst: &Path, writable: bool, exec: bool, devices: bool) -> Result<(), String> {
    let source = c(src)?;
    mount(Some(&source), dst, None, libc::MS_BIND | libc::MS_REC, None)?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    if !exec {
        flags |= libc::MS_NOEXEC;
    }
    if !devices {
        flags |= libc::MS_NODEV;
    }
    mount(None, dst, None, flags, None)
}

fn tmpfs(dst: &Path, size: u64, mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
    let mut options = format!("mode={mode:o},size={size}");
    if let Some((uid, gid)) = owner {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    mount(Some(c"tmpfs"), dst, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some(&options))
}

/// Where a sandbox path lands under the root being built.
fn under(root: &Path, dst: &str) -> PathBuf {
    root.join(dst.trim_start_matches('/'))
}

/// A mount point must be in the prepared root already, of the right kind: the init makes nothing,
/// since every folder it sees is a host folder (a mount point made inside one would be made on the
/// host).
fn mount_point(dst: &Path, folder: bool) -> Result<(), String> {
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() == folder && !m.file_type().is_symlink() => Ok(()),
        _ => Err(format!("{} is not a ready mount point", dst.display())),
    }
}

fn build_root(spec: &InitSpec) -> Result<(), String> {
    // Nothing mounted here reaches the host, nor the other way round.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    // The prepared root (its folders and links), read-only, then the run's mounts on its folders.
    let root = &spec.root;
    bind(root, root, false, false, false)?;
    for m in &spec.mounts {
        let dst = match m {
            Mount::Bind { dst, .. } | Mount::Tmpfs { dst, .. } | Mount::Proc { dst } => dst.as_str(),
        };
        if !dst.starts_with('/') || dst.split('/').any(|part| part == "..") {
            return Err(format!("sandbox path `{dst}` is not absolute and plain"));
        }
        let target = under(root, dst);
        match m {
            Mount::Bind { src, writable, exec, devices, .. } => {
                let meta = std::fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
                mount_point(&target, meta.is_dir())?;
                bind(src, &target, *writable, *exec, *devices)?;
            }
            Mount::Tmpfs { size, mode, owned, .. } => {
                mount_point(&target, true)?;
                tmpfs(&target, *size, *mode, owned.then_some((spec.uid, spec.gid)))?;
            }
            Mount::Proc { .. } => {
                mount_point(&target, true)?;
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                mount(Some(c"proc"), &target, Some("proc"), flags, None)?;
            }
        }
    }
    let root_c = c(root)?;
    // SAFETY: plain system calls with NUL-terminated paths. `pivot_root(".", ".")` stacks the old root
    // under the new one, and the detach removes it from this namespace's view.
    unsafe {
        check(libc::chdir(root_c.as_ptr()), || format!("entering {}", root.display()))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int, || {
            "pivoting into the sandbox's root".into()
        })?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), || "detaching the host's root".into())?;
        check(libc::chdir(c"/".as_ptr()), || "entering /".into())?;
    }
    Ok(())
}

/// Everything the program's start needs, made before the clone: the child shares the init's memory
/// (as `vfork` does, which spares copying it for a process that will exec at once), so it may only
/// make system calls.
struct Exec<'a> {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    filter: Vec<libc::sock_filter>,
    uid: u32,
    gid: u32,
    /// Set by the child when a step fails: which, and the errno.
    failed: Option<(&'static str, i32)>,
    /// The strings `argv` and `envp` point into, kept alive as long as they are.
    _strings: &'a [CString],
}

const PROGRAM_STACK: usize = 64 << 10;

fn start_program(spec: &InitSpec) -> Result<libc::pid_t, String> {
    let cstring = |s: &str, what: &str| CString::new(s).map_err(|_| format!("{what} contains a NUL byte"));
    let mut strings = vec![cstring(&spec.program, "the program path")?];
    for a in &spec.args {
        strings.push(cstring(a, "an argument")?);
    }
    let argc = strings.len();
    for (k, v) in &spec.env {
        strings.push(cstring(&format!("{k}={v}"), "the environment")?);
    }
    let terminated =
        |list: &[CString]| list.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let filter = spec
        .seccomp
        .iter()
        .map(|i| {
            let (code, jt, jf, k) = seccomp::unpack(*i);
            libc::sock_filter { code, jt, jf, k }
        })
        .collect();
    let mut exec = Exec {
        program: cstring(&spec.program, "the program path")?,
        argv: terminated(&strings[..argc]),
        envp: terminated(&strings[argc..]),
        cwd: cstring(&spec.cwd, "the working folder")?,
        filter,
        uid: spec.uid,
        gid: spec.gid,
        failed: None,
        _strings: &strings,
    };
    let mut stack = vec![0u8; PROGRAM_STACK];
    // SAFETY: the stack grows down from its 16-byte aligned top; it and `exec` outlive the child's use
    // of them, since CLONE_VFORK suspends the init until the child has executed or exited. The init
    // handles no signal, so none can run on the child's stack.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(PROGRAM_STACK);
        let top = top.sub(top as usize % 16);
        libc::clone(
            program_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut exec as *mut Exec<'_>).cast(),
        )
    };
    if pid < 0 {
        return Err(format!("starting the program: {}", io::Error::last_os_error()));
    }
    // SAFETY: the child has executed or exited: nothing writes `exec` any more.
    if let Some((what, errno)) = unsafe { std::ptr::read_volatile(&exec.failed) } {
        let mut status = 0;
        // SAFETY: reaping the child that failed to start.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let what = if what == "executing" { format!("executing {}", spec.program) } else { what.to_owned() };
        return Err(format!("{what}: {}", io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

/// The program's process, in the init's memory until it executes: system calls only.
extern "C" fn program_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the init's `Exec`, alive and untouched while the init is suspended.
    unsafe {
        let exec = &mut *(arg as *mut Exec<'_>);
        let fail = |exec: &mut Exec<'_>, what: &'static str, e: io::Error| -> ! {
            std::ptr::write_volatile(&mut exec.failed, Some((what, e.raw_os_error().unwrap_or(0))));
            libc::_exit(127)
        };
        if let Err((what, e)) = drop_privileges(exec.uid, exec.gid, &exec.filter) {
            fail(exec, what, e);
        }
        if libc::chdir(exec.cwd.as_ptr()) != 0 {
            fail(exec, "entering the working folder", io::Error::last_os_error());
        }
        libc::execve(exec.program.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
        fail(exec, "executing", io::Error::last_os_error())
    }
}

/// Empties the capability bounding set: no program started from here can gain a capability back,
/// whatever its file says. Needs CAP_SETPCAP, so it comes before the uid changes.
pub(super) fn drop_bounding_set() -> io::Result<()> {
    for cap in 0.. {
        // SAFETY: plain prctl on this process's own credentials.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            return if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 { Ok(()) } else { Err(e) };
        }
    }
    Ok(())
}

/// Becomes the tenant's uid and gid with no capabilities left, no new privileges from set-uid
/// programs, and the seccomp filter. On failure, what failed and why.
fn drop_privileges(uid: u32, gid: u32, filter: &[libc::sock_filter]) -> Result<(), (&'static str, io::Error)> {
    let last = io::Error::last_os_error;
    if uid == 0 || gid == 0 {
        return Err(("refusing to run a tenant's program as root", io::Error::from_raw_os_error(libc::EPERM)));
    }
    // SAFETY: plain system calls on this process's own credentials.
    unsafe {
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 {
            return Err(("clearing the ambient capabilities", last()));
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(("dropping supplementary groups", last()));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(("becoming the tenant's group", last()));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(("becoming the tenant's user", last()));
        }
        // A uid change from root clears the permitted and effective sets; the inheritable set too.
        let mut header = CapHeader { version: 0x2008_0522, pid: 0 };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(("clearing the capability sets", last()));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(("setting no_new_privs", last()));
        }
        if !filter.is_empty() {
            let fprog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
            if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0 {
                return Err(("installing the seccomp filter", last()));
            }
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` (version 3: two of them).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Reaps whatever ends in the namespace until the program itself does; its raw wait status.
fn wait_for(program: libc::pid_t) -> Result<i32, String> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own children (and the orphans the namespace hands to its init).
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == program {
            return Ok(status);
        }
        if pid < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("waiting for the program: {e}"));
            }
        }
    }
}

/// The result file, opened without following links or blocking on a FIFO, taken only when it is a
/// regular file within `limit` bytes. `Ok(None)`: the program left none.
pub fn read_result(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("the result file is a symbolic link; only a regular file is read".into())
        }
        Err(e) => return Err(format!("the result file cannot be opened: {e}")),
    };
    let meta = file.metadata().map_err(|e| format!("the result file cannot be examined: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the result file is {}; only a regular file is read", describe(&meta)));
    }
    if meta.len() > limit {
        return Err(format!("the result file has {} bytes, over the {limit}-byte bound", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| format!("reading the result file: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("the result file grew past the {limit}-byte bound while it was read"));
    }
    Ok(Some(bytes))
}

/// What kind of file `meta` describes, in words.
pub fn describe(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_file_is_taken_only_as_a_bounded_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        assert_eq!(read_result(&path, 100), Ok(None), "no file: nothing, no error");
        std::fs::write(&path, b"{\"records_ingested\": 3}").unwrap();
        assert_eq!(read_result(&path, 100).unwrap().unwrap(), b"{\"records_ingested\": 3}");
        assert!(read_result(&path, 10).unwrap_err().contains("over the 10-byte bound"));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(read_result(&path, 100).unwrap_err().contains("symbolic link"));
        std::fs::remove_file(&path).unwrap();
        let fifo = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Opening a FIFO that no one writes must neither block nor be read.
        assert!(read_result(&path, 100).unwrap_err().contains("a FIFO"));
    }
}
