//! Safe unpacking of app archives: no absolute paths, no `..`, no links leaving the app's folder, no
//! hard links or device files, and a bound on the total unpacked size checked while writing (a header
//! may lie about its size; the copy is bounded by what is left of the budget).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::AppError;
use crate::units::ByteSize;

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

/// Unpacks a gzip-compressed tar from `reader` into `dest` (which must exist and be empty).
pub fn unpack_tar_gz(reader: impl Read, dest: &Path, max_total: ByteSize) -> Result<u64, AppError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let mut total: u64 = 0;
    let entries = archive.entries().map_err(|e| AppError::BadArchive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| AppError::BadArchive(e.to_string()))?;
        let raw = entry.path().map_err(|e| AppError::BadArchive(e.to_string()))?.into_owned();
        if raw.is_absolute() {
            return Err(unsafe_entry(&raw, "has an absolute path"));
        }
        if raw.components().any(|c| c == Component::ParentDir) {
            return Err(unsafe_entry(&raw, "contains `..`"));
        }
        let rel = normalise(&raw).ok_or_else(|| unsafe_entry(&raw, "leaves the app folder"))?;
        if rel.as_os_str().is_empty() {
            continue; // the archive's `./`
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => fs::create_dir_all(&target)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                let budget = max_total.0.saturating_sub(total);
                let mut out = fs::File::create(&target)?;
                let written = io::copy(&mut (&mut entry).take(budget + 1), &mut out)?;
                total += written;
                if total > max_total.0 {
                    return Err(AppError::TooLarge { what: "unpacked app", limit: max_total });
                }
                out.flush()?;
                let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o400))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| AppError::BadArchive(e.to_string()))?
                    .ok_or_else(|| unsafe_entry(&raw, "is a link without a target"))?
                    .into_owned();
                let base = rel.parent().unwrap_or(Path::new(""));
                if link.is_absolute() || normalise(&base.join(&link)).is_none() {
                    return Err(unsafe_entry(&raw, &format!("links to `{}`, outside the app folder", link.display())));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                std::os::unix::fs::symlink(&link, &target)?;
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
        ];
        for (bytes, expected) in cases {
            let err = unpack(&bytes, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
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
