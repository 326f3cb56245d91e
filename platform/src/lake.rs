//! Reading a tenant's lake (`layout::lake_dir`) for the API: its files listed, one opened.
//!
//! The lake's folders are written by the tenant's lake sinks, which run as the tenant's user: the
//! platform reads them as root and trusts nothing in them. Every step goes through a descriptor
//! opened without following links (`openat` with `O_NOFOLLOW`), so a link planted in a tenant's
//! lake (to `/etc`, to another tenant's lake) is never followed, even if swapped in between a check
//! and a use; and only names the lake sink writes are served.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LakeFile {
    /// The topic, without the tenant prefix.
    pub topic: String,
    /// `YYYY-MM-DD`: the day its rows fall on.
    pub date: String,
    /// `<topic>-p<partition>-o<first>-<last>-<k>of<n>.parquet`.
    pub name: String,
    pub size: u64,
}

/// A topic folder's name, as the agreement allows topic names.
pub fn is_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `YYYY-MM-DD`.
pub fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

/// A finished file's name (temporary ones start with a dot).
pub fn is_file_name(s: &str) -> bool {
    s.len() <= 255
        && s.ends_with(".parquet")
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Opens `name` in the folder `dir` without following a link, as a folder or a regular file.
fn open_at(dir: &OwnedFd, name: &str, folder: bool) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let kind = if folder { libc::O_DIRECTORY } else { libc::O_NONBLOCK };
    // SAFETY: a valid descriptor and NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | kind)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if (folder && !meta.is_dir()) || (!folder && !meta.is_file()) {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(OwnedFd::from(file))
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let dir = File::open(root)?;
    if !dir.metadata()?.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(OwnedFd::from(dir))
}

/// The names in an opened folder.
fn names(dir: &OwnedFd) -> io::Result<Vec<String>> {
    // The descriptor's own folder, whatever its path has become since it was opened.
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        out.push(e?.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Every finished file of the lake under `root` (of `topic` only, if given), by topic, date, name.
pub fn list(root: &Path, topic: Option<&str>) -> io::Result<Vec<LakeFile>> {
    let root = match open_root(root) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for t in names(&root)?.into_iter().filter(|t| is_topic(t) && topic.is_none_or(|want| want == t)) {
        let Ok(topic_dir) = open_at(&root, &t, true) else { continue };
        for d in names(&topic_dir)? {
            let Some(date) = d.strip_prefix("date=").filter(|d| is_date(d)) else { continue };
            let Ok(date_dir) = open_at(&topic_dir, &d, true) else { continue };
            for name in names(&date_dir)?.into_iter().filter(|n| is_file_name(n)) {
                let Ok(file) = open_at(&date_dir, &name, false) else { continue };
                let size = File::from(file).metadata()?.len();
                out.push(LakeFile { topic: t.clone(), date: date.to_owned(), name, size });
            }
        }
    }
    Ok(out)
}

/// One finished file of the lake under `root`, opened; `None` if there is no such file (or what is
/// there is a link, a folder or a temporary file).
pub fn open(root: &Path, topic: &str, date: &str, name: &str) -> io::Result<Option<File>> {
    if !(is_topic(topic) && is_date(date) && is_file_name(name)) {
        return Ok(None);
    }
    let opened = open_root(root)
        .and_then(|r| open_at(&r, topic, true))
        .and_then(|t| open_at(&t, &format!("date={date}"), true))
        .and_then(|d| open_at(&d, name, false));
    match opened {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e)
            if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
                || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_unfinished_files_are_neither_listed_nor_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (root, elsewhere) = (dir.path().join("lake"), dir.path().join("elsewhere"));
        let day = root.join("orders/date=2026-12-01");
        std::fs::create_dir_all(&day).unwrap();
        std::fs::create_dir_all(elsewhere.join("date=2026-12-01")).unwrap();
        std::fs::write(elsewhere.join("date=2026-12-01/x.parquet"), b"secret").unwrap();
        std::fs::write(day.join("orders-p0-o0-9-1of1.parquet"), b"PAR1").unwrap();
        std::fs::write(day.join(".orders-p0-o10-19-1of1.parquet.tmp"), b"half").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", day.join("passwd.parquet")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("stolen")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("date=2026-12-01"), root.join("orders/date=2026-12-02")).unwrap();
        let listed = list(&root, None).unwrap();
        assert_eq!(
            listed,
            [LakeFile {
                topic: "orders".into(),
                date: "2026-12-01".into(),
                name: "orders-p0-o0-9-1of1.parquet".into(),
                size: 4
            }]
        );
        assert!(open(&root, "orders", "2026-12-01", "orders-p0-o0-9-1of1.parquet").unwrap().is_some());
        for (t, d, n) in [
            ("orders", "2026-12-01", "passwd.parquet"),
            ("stolen", "2026-12-01", "x.parquet"),
            ("orders", "2026-12-02", "x.parquet"),
            ("orders", "2026-12-01", ".orders-p0-o10-19-1of1.parquet.tmp"),
            ("..", "2026-12-01", "x.parquet"),
            ("orders", "../x", "x.parquet"),
        ] {
            assert!(open(&root, t, d, n).unwrap().is_none(), "{t}/{d}/{n} was opened");
        }
        assert_eq!(list(&dir.path().join("none"), None).unwrap(), []);
    }
}
