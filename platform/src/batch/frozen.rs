//! A claimed file, taken only as what it claims to be: one regular file that nobody can change any
//! more. Size, checksum, content check and the app's input then all come from the same bytes.
//!
//! What a tenant can put in staging instead, and why each is refused:
//! - a symbolic link: the platform would read (and hand the app) whatever it points to, the
//!   platform's keys included;
//! - a FIFO, socket or device: reading one blocks, never ends, or reaches a device;
//! - a file with other hard links: another name, outside staging, would still change or reveal it;
//! - a file still open for writing somewhere: it could grow after it was checked, past every limit.
//!   A read lease (`F_SETLEASE`), which the kernel grants only while no one holds the file open for
//!   writing, tells without looking at anyone's descriptors. Once it is checked the file belongs to
//!   the platform (root, mode 0444, in a folder only the platform enters), so no one but root can
//!   open it for writing again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::agreement::limits::Refusal;
use crate::domain::Reason;
use crate::runtime::sandbox::init::describe;

/// Opens the claimed file at `path` and makes it the platform's, or says why it is refused.
pub fn freeze(path: &Path) -> io::Result<Result<(File, u64), Refusal>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let refuse = |reason: Reason, detail: String| Ok(Err(Refusal { reason, detail }));
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
        return refuse(
            Reason::NotRegularFile,
            format!("`{name}` is a symbolic link (to `{target}`); only regular files are ingested, links are never followed"),
        );
    }
    if !meta.is_file() {
        return refuse(
            Reason::NotRegularFile,
            format!("`{name}` is {}; only regular files are ingested", describe(&meta)),
        );
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let opened = file.metadata()?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) || !opened.is_file() {
        return refuse(Reason::NotRegularFile, format!("`{name}` changed while it was opened"));
    }
    if opened.nlink() != 1 {
        return refuse(
            Reason::HardLink,
            format!(
                "`{name}` has {} hard links; a file linked elsewhere could be changed or read through its other names, so only a file of its own is ingested",
                opened.nlink()
            ),
        );
    }
    if open_for_writing(&file) {
        return refuse(
            Reason::OpenForWriting,
            format!("`{name}` is still open for writing by some process; finish writing and close it before it is renamed into staging"),
        );
    }
    let fd = file.as_raw_fd();
    // SAFETY: plain system calls on our own descriptor. Ownership moves to the platform where it runs
    // as root (elsewhere this fails and the mode alone applies).
    unsafe {
        libc::fchown(fd, 0, 0);
        if libc::fchmod(fd, 0o444) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Ok((file, opened.len())))
}

/// How long a writer may take to let go: a process that forks while it writes a file gives the
/// child a copy of the descriptor until the child executes its program, which can outlast the
/// writer's own close and rename by a few milliseconds (the platform's own uploads and spawns do
/// this). A writer still there after this is holding the file.
const WRITERS_LET_GO: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether any process holds the file open for writing: the kernel refuses a read lease then. Where
/// leases are not supported the answer is no (and the file's mode and folder still keep new writers
/// out).
fn open_for_writing(file: &File) -> bool {
    let fd = file.as_raw_fd();
    let started = std::time::Instant::now();
    loop {
        // SAFETY: plain fcntl calls on our own descriptor; the lease is released at once.
        let busy = unsafe {
            if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
                libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
                false
            } else {
                io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
            }
        };
        if !busy || started.elapsed() >= WRITERS_LET_GO {
            return busy;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn reason(path: &Path) -> Option<Reason> {
        freeze(path).unwrap().err().map(|r| r.reason)
    }

    #[test]
    fn only_a_plain_file_nobody_writes_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.csv");
        std::fs::write(&plain, b"a\n1\n").unwrap();
        let (_, size) = freeze(&plain).unwrap().unwrap();
        assert_eq!(size, 4);
        assert!(std::fs::metadata(&plain).unwrap().mode() & 0o222 == 0, "no one may write it any more");

        let link = dir.path().join("l.csv");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let r = freeze(&link).unwrap().unwrap_err();
        assert_eq!(r.reason, Reason::NotRegularFile);
        assert!(r.detail.contains("symbolic link (to `/etc/passwd`)"), "{}", r.detail);

        let fifo = dir.path().join("f.csv");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(reason(&fifo), Some(Reason::NotRegularFile));

        let twice = dir.path().join("h.csv");
        std::fs::write(&twice, b"x\n").unwrap();
        std::fs::hard_link(&twice, dir.path().join("elsewhere")).unwrap();
        assert_eq!(reason(&twice), Some(Reason::HardLink));

        let open = dir.path().join("o.csv");
        let mut writer = File::create(&open).unwrap();
        writer.write_all(b"a\n").unwrap();
        assert_eq!(reason(&open), Some(Reason::OpenForWriting));
        drop(writer);
        assert_eq!(reason(&open), None, "closed, it is taken");
    }
}
