//! Finds staged files: inotify (notify) events for files renamed into place, which are complete by the
//! staging rules and go straight to admission, and a periodic rescan of every tenant's folder for files
//! written in place, which are taken once unchanged for the agreement's `min_file_age`. The rescan also
//! covers events lost to overflow or missed while the platform was down.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::Watcher;
use tokio::sync::mpsc;

/// Watches `root` recursively (tenants' folders appear and disappear under it) and sends the paths of
/// files renamed into place, which are complete whatever their age. The returned watcher must be kept
/// alive.
pub fn watch(root: &Path, tx: mpsc::UnboundedSender<PathBuf>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.need_rescan() {
            // The kernel's queue (16,384 events; notify asks for about seven per staged file) overflowed:
            // renamed files whose events were lost wait for the rescan and their `min_file_age`.
            tracing::warn!("staging events overflowed the kernel's queue; files renamed meanwhile are taken by the rescan once min_file_age old");
        }
        let path = match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
            _ => None,
        };
        if let Some(path) = path {
            let _ = tx.send(path.clone());
        }
    })?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Everything in `dir` but folders (links, FIFOs and the like are taken to be refused, not left
/// waiting), with its age. Links are not followed.
pub fn list(dir: &Path) -> Vec<(PathBuf, Duration)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let now = SystemTime::now();
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?; // lstat: a link's own metadata
            if meta.is_dir() {
                return None;
            }
            let age = now.duration_since(meta.modified().ok()?).unwrap_or_default();
            Some((e.path(), age))
        })
        .collect()
}
