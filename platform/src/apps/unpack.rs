//! Safe unpacking of app archives. An archive is written by someone who may want to write outside
//! its folder, so nothing is trusted:
//! - names: no absolute paths, no `..`;
//! - every file, folder and link is created relative to the app's folder with `openat2` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: an entry can never be written *through* a link an
//!   earlier entry made (`d -> .`, then `d/up -> ..`, then `up/x` would otherwise land outside);
//! - links: relative targets only, and once everything is unpacked each link must resolve inside the
//!   folder (`RESOLVE_BENEATH`, which follows links and `..` as the kernel would);
//! - no hard links, devices, FIFOs or sockets; no set-uid, set-gid or sticky bits; modes masked to
//!   `rwxr-xr-x` and made readable to the app's own uid;
//! - a bound on the total unpacked size checked while writing (a header may lie about its size) and
//!   on the number of entries.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::AppError;
use crate::units::ByteSize;

/// The most entries an archive may hold.
pub const MAX_ENTRIES: usize = 20_000;

/// Resolves `path` lexically; `None` if it is absolute or climbs above its root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn unsafe_entry(path: &Path, why: &str) -> AppError {
    AppError::UnsafeArchive(format!("entry `{}` {why}", path.display()))
}

/// `struct open_how` for openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// openat2 relative to `dir`, never leaving it; `follow` lets it resolve links (still beneath `dir`).
fn open_beneath(dir: RawFd, path: &Path, flags: i32, mode: u32, follow: bool) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    if !follow {
        resolve |= RESOLVE_NO_SYMLINKS;
    }
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: mode as u64, resolve };
    // SAFETY: a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, dir, name.as_ptr(), &how, std::mem::size_of::<OpenHow>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What an openat2 failure means for an archive entry.
fn beneath_error(entry: &Path, e: io::Error) -> AppError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => unsafe_entry(entry, "passes through a link (entries are never written through links)"),
        Some(libc::EXDEV) => unsafe_entry(entry, "leaves the app folder"),
        Some(libc::EEXIST) => unsafe_entry(entry, "appears twice in the archive"),
        _ => AppError::Io(io::Error::new(e.kind(), format!("unpacking `{}`: {e}", entry.display()))),
    }
}

fn chmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain fchmod on our own descriptor.
    if unsafe { libc::fchmod(fd, mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens (creating where missing) the folder `rel` beneath `root`, one component at a time, never
/// through a link.
fn folder_beneath(root: &OwnedFd, rel: &Path, entry: &Path) -> Result<OwnedFd, AppError> {
    let mut current = open_beneath(root.as_raw_fd(), Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0, false)
        .map_err(|e| beneath_error(entry, e))?;
    for part in rel.components() {
        let Component::Normal(part) = part else { continue };
        let name = CString::new(part.as_bytes()).map_err(|_| unsafe_entry(entry, "has a NUL byte in its name"))?;
        // SAFETY: a NUL-terminated name relative to an open folder.
        let made = unsafe { libc::mkdirat(current.as_raw_fd(), name.as_ptr(), 0o755) } == 0;
        if !made && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(AppError::Io(io::Error::last_os_error()));
        }
        let next = open_beneath(current.as_raw_fd(), Path::new(part), libc::O_RDONLY | libc::O_DIRECTORY, 0, false)
            .map_err(|e| beneath_error(entry, e))?;
        if made {
            chmod(next.as_raw_fd(), 0o755)?; // whatever the platform's umask
        }
        current = next;
    }
    Ok(current)
}

/// Unpacks a gzip-compressed tar from `reader` into `dest` (which must exist and be empty).
/// Long on purpose: every entry passes every check (type, name, links, sizes) in one visible order
/// before a byte of it is written; a hostile archive is judged here and nowhere else.
pub fn unpack_tar_gz(reader: impl Read, dest: &Path, max_total: ByteSize) -> Result<u64, AppError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let root: OwnedFd = fs::File::open(dest)?.into();
    let mut total: u64 = 0;
    let mut links = Vec::new();
    let entries = archive.entries().map_err(|e| AppError::BadArchive(e.to_string()))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(AppError::UnsafeArchive(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| AppError::BadArchive(e.to_string()))?;
        let raw = entry.path().map_err(|e| AppError::BadArchive(e.to_string()))?.into_owned();
        if raw.is_absolute() {
            return Err(unsafe_entry(&raw, "has an absolute path"));
        }
        if raw.components().any(|c| c == Component::ParentDir) {
            return Err(unsafe_entry(&raw, "contains `..`"));
        }
        let rel = normalise(&raw).ok_or_else(|| unsafe_entry(&raw, "leaves the app folder"))?;
        // A link's own mode means nothing; a header without one is taken as an ordinary file's.
        let kind = entry.header().entry_type();
        let mode = if kind == tar::EntryType::Symlink { 0o777 } else { entry.header().mode().unwrap_or(0o644) };
        if mode & 0o7000 != 0 {
            let bits = [(0o4000, "set-uid"), (0o2000, "set-gid"), (0o1000, "sticky")];
            let named: Vec<&str> = bits.iter().filter(|(b, _)| mode & b != 0).map(|(_, n)| *n).collect();
            return Err(unsafe_entry(
                &raw,
                &format!("has the {} bit (mode {mode:o}); apps get no special bits", named.join(" and ")),
            ));
        }
        if rel.as_os_str().is_empty() {
            continue; // the archive's `./`
        }
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p.to_owned(), PathBuf::from(n)),
            _ => continue,
        };
        match kind {
            tar::EntryType::Directory => {
                folder_beneath(&root, &rel, &raw)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dir = folder_beneath(&root, &parent, &raw)?;
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
                let fd =
                    open_beneath(dir.as_raw_fd(), &name, flags, 0o600, false).map_err(|e| beneath_error(&raw, e))?;
                let mut out = fs::File::from(fd);
                let budget = max_total.0.saturating_sub(total);
                let written = io::copy(&mut (&mut entry).take(budget + 1), &mut out)?;
                total += written;
                if total > max_total.0 {
                    return Err(AppError::TooLarge { what: "unpacked app", limit: max_total });
                }
                out.flush()?;
                chmod(out.as_raw_fd(), (mode & 0o755) | 0o444)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| AppError::BadArchive(e.to_string()))?
                    .ok_or_else(|| unsafe_entry(&raw, "is a link without a target"))?
                    .into_owned();
                if link.is_absolute() || normalise(&parent.join(&link)).is_none() {
                    return Err(unsafe_entry(&raw, &format!("links to `{}`, outside the app folder", link.display())));
                }
                let dir = folder_beneath(&root, &parent, &raw)?;
                let target = CString::new(link.as_os_str().as_bytes())
                    .map_err(|_| unsafe_entry(&raw, "has a NUL byte in its target"))?;
                let at = CString::new(name.as_os_str().as_bytes())
                    .map_err(|_| unsafe_entry(&raw, "has a NUL byte in its name"))?;
                // SAFETY: NUL-terminated strings; the link is made inside a folder opened beneath the root.
                if unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), at.as_ptr()) } != 0 {
                    return Err(beneath_error(&raw, io::Error::last_os_error()));
                }
                links.push((rel, link));
            }
            tar::EntryType::Link => return Err(unsafe_entry(&raw, "is a hard link (not allowed)")),
            other => {
                return Err(unsafe_entry(
                    &raw,
                    &format!("is a {other:?} entry (only files, folders and links are allowed)"),
                ))
            }
        }
    }
    // Each link target was checked as text; chained, links can still climb out (`d -> .`, then
    // `e -> d/..`). The kernel resolves each one now, beneath the root or not at all.
    for (rel, target) in links {
        match open_beneath(root.as_raw_fd(), &rel, libc::O_PATH, 0, true) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {} // dangling, but inside
            Err(_) => {
                return Err(unsafe_entry(
                    &rel,
                    &format!("links to `{}`, which resolves outside the app folder", target.display()),
                ))
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..` and absolute paths, so write the name bytes directly like a hostile tool would
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn file_mode(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path(path).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_path(path).unwrap();
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    fn unpack(bytes: &[u8], limit: u64) -> Result<u64, AppError> {
        let dir = tempfile::tempdir().unwrap();
        unpack_tar_gz(bytes, dir.path(), ByteSize(limit))
    }

    #[test]
    fn a_plain_archive_unpacks() {
        let a = archive(|b| {
            file(b, "app.yaml", b"name: x\n");
            file(b, "bin/run", b"#!/bin/sh\n");
            link(b, "run", "bin/run");
        });
        assert_eq!(unpack(&a, 1 << 20).unwrap(), 18);
    }

    #[test]
    fn hostile_paths_are_refused_with_the_entry_named() {
        let cases = [
            (archive(|b| file(b, "../evil", b"x")), "`../evil` contains `..`"),
            (archive(|b| file(b, "/etc/evil", b"x")), "`/etc/evil` has an absolute path"),
            (archive(|b| file(b, "a/../../evil", b"x")), "contains `..`"),
            (archive(|b| link(b, "l", "../../etc/passwd")), "outside the app folder"),
            (archive(|b| link(b, "l", "/etc/passwd")), "outside the app folder"),
            // Written through a link an earlier entry made: `d -> .`, `d/up -> ..`, `up/x`.
            (
                archive(|b| {
                    link(b, "d", ".");
                    link(b, "d/up", "..");
                    file(b, "up/x", b"x");
                }),
                "passes through a link",
            ),
            // Links that each look inside but climb out once chained: `d -> .`, `e -> d/..`.
            (
                archive(|b| {
                    link(b, "d", ".");
                    link(b, "e", "d/..");
                }),
                "resolves outside the app folder",
            ),
            (archive(|b| file_mode(b, "run", b"x", 0o4755)), "set-uid bit"),
            (archive(|b| file_mode(b, "run", b"x", 0o2755)), "set-gid bit"),
        ];
        for (bytes, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("app");
            fs::create_dir(&dest).unwrap();
            let err = unpack_tar_gz(bytes.as_slice(), &dest, ByteSize(1 << 20)).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
            // Nothing landed beside the app folder.
            let beside: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(beside, ["app"], "{expected}");
        }
    }

    #[test]
    fn the_unpacked_size_is_bounded_whatever_the_compression() {
        let zeros = vec![0u8; 4 << 20]; // compresses to a few KiB
        let a = archive(|b| file(b, "blob", &zeros));
        assert!(a.len() < 64 << 10);
        let err = unpack(&a, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("unpacked app") && err.contains("1MiB"), "{err}");
    }
}
