//! Finds staged files: inotify events for files renamed into place, which are complete by the
//! staging rules and go straight to admission, and a periodic rescan of every tenant's folder for files
//! written in place, which are taken once unchanged for the agreement's `min_file_age`. The rescan also
//! covers events lost to overflow or missed while the platform was down.
//!
//! inotify directly, not `notify`: `notify` asks the kernel for every kind of event (open, create,
//! modify, close, both halves of a rename), about seven per staged file, and the kernel's queue holds
//! 16,384. Only renames into place are asked for here, one event per file.
//!
//! A rename is seen only once the folder is watched: files renamed into a folder before (while the
//! platform starts, or in the moment between a new tenant's folder appearing and its watch being
//! added) cannot be told from files being written in place, so the rescan takes them, once
//! `min_file_age` old.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc;

/// How long the reader waits for events before it checks whether it is to stop.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// Watches `root` and each folder in it (tenants' folders appear and disappear under it) and sends the
/// paths of files renamed into a tenant's folder, which are complete whatever their age. Watching
/// stops when the returned value is dropped.
pub fn watch(root: &Path, tx: mpsc::UnboundedSender<PathBuf>) -> std::io::Result<Watching> {
    let inotify = Inotify::init()?;
    let root_wd = inotify.watches().add(root, ROOT)?;
    let mut reader = Reader { inotify, root: root.to_path_buf(), root_wd, folders: HashMap::new(), tx };
    for entry in std::fs::read_dir(root)?.filter_map(|e| e.ok()) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            reader.add_folder(entry.path());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new().name("staging-watch".into()).spawn(move || reader.run(&stopped))?;
    Ok(Watching { stop })
}

/// New tenants' folders, created or renamed into the staging root.
const ROOT: WatchMask =
    WatchMask::CREATE.union(WatchMask::MOVED_TO).union(WatchMask::ONLYDIR).union(WatchMask::DONT_FOLLOW);
/// Files renamed into a tenant's folder.
const FOLDER: WatchMask = WatchMask::MOVED_TO.union(WatchMask::ONLYDIR).union(WatchMask::DONT_FOLLOW);

/// Stops the watch when dropped.
pub struct Watching {
    stop: Arc<AtomicBool>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Reader {
    inotify: Inotify,
    root: PathBuf,
    root_wd: WatchDescriptor,
    folders: HashMap<WatchDescriptor, PathBuf>,
    tx: mpsc::UnboundedSender<PathBuf>,
}

impl Reader {
    fn add_folder(&mut self, dir: PathBuf) {
        // A link or a file in the root is no tenant's folder: ONLYDIR and DONT_FOLLOW refuse it.
        if let Ok(wd) = self.inotify.watches().add(&dir, FOLDER) {
            self.folders.insert(wd, dir);
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut buffer = vec![0u8; 64 * 1024];
        let fd = self.inotify.as_raw_fd();
        while !stop.load(Ordering::Relaxed) && !self.tx.is_closed() {
            let mut ready = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the inotify descriptor this reader owns.
            if unsafe { libc::poll(&mut ready, 1, STOP_CHECK.as_millis() as libc::c_int) } <= 0 {
                continue;
            }
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading staging events failed; the rescan alone finds files from now on");
                    return;
                }
            };
            let mut new_folders = Vec::new();
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    tracing::warn!("staging events overflowed the kernel's queue; files renamed meanwhile are found by the rescan once min_file_age old");
                } else if event.mask.contains(EventMask::IGNORED) {
                    self.folders.remove(&event.wd);
                } else if let Some(name) = event.name {
                    if event.wd == self.root_wd {
                        if event.mask.contains(EventMask::ISDIR) {
                            new_folders.push(self.root.join(name));
                        }
                    } else if let Some(dir) = self.folders.get(&event.wd) {
                        if !event.mask.contains(EventMask::ISDIR) {
                            let _ = self.tx.send(dir.join(name));
                        }
                    }
                }
            }
            new_folders.into_iter().for_each(|dir| self.add_folder(dir));
        }
    }
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
