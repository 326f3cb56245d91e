//! Every path the platform uses for tenants' files and programs' folders, in one place (the roles
//! and the API all take them from here). Staging belongs to the tenant; everything under the data
//! folder belongs to the platform:
//!
//! ```text
//! staging/<tenant>/<name>                      dropped by the tenant
//! <data>/work/<tenant>/<job>/<name>            claimed: moved here atomically before anything else
//! <data>/work/<tenant>/<job>/run-<n>/          the app's fresh working folder for attempt n
//! <data>/ingested/<tenant>/<job>/<name>        succeeded
//! <data>/quarantine/<tenant>/<job>/<name>      rejected or failed, beside <job>.reason.json
//! <data>/instances/<tenant>/<instance>/        a stream instance's folder, its `log` in it
//! <data>/lake/<tenant>/<topic>/date=<day>/     the tenant's lake sinks' Parquet files
//! ```
//!
//! A name is always a path component of its own (never joined to the job's id), so any name the
//! file system took in staging fits in every later place.

use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::domain::{InstanceId, JobId};
use crate::names::component;
use crate::tenant::TenantId;

#[derive(Clone, Debug)]
pub struct Layout {
    pub staging: PathBuf,
    pub data: PathBuf,
}

impl Layout {
    pub fn staging_dir(&self, t: &TenantId) -> PathBuf {
        self.staging.join(t.as_str())
    }

    pub fn work_root(&self) -> PathBuf {
        self.data.join("work")
    }

    pub fn work_dir(&self, t: &TenantId, job: JobId) -> PathBuf {
        self.work_root().join(t.as_str()).join(job.to_string())
    }

    pub fn work_file(&self, t: &TenantId, job: JobId, name: &str) -> PathBuf {
        self.work_dir(t, job).join(component(name))
    }

    pub fn ingested_file(&self, t: &TenantId, job: JobId, name: &str) -> PathBuf {
        self.data.join("ingested").join(t.as_str()).join(job.to_string()).join(component(name))
    }

    pub fn quarantine_file(&self, t: &TenantId, job: JobId, name: &str) -> PathBuf {
        self.data.join("quarantine").join(t.as_str()).join(job.to_string()).join(component(name))
    }
}

/// The folder of a tenant's stream instance: its working folder and its `log`.
pub fn instance_dir(data: &Path, t: &TenantId, id: InstanceId) -> PathBuf {
    data.join("instances").join(t.as_str()).join(id.to_string())
}

/// The tenant's lake: its lake sinks write here (and nowhere else), the lake API reads here.
pub fn lake_dir(data: &Path, t: &TenantId) -> PathBuf {
    data.join("lake").join(t.as_str())
}

/// The log of a stream instance, in its folder.
pub fn instance_log(data: &Path, t: &TenantId, id: InstanceId) -> PathBuf {
    instance_dir(data, t, id).join("log")
}

/// What a stream instance's log keeps: at most twice this (the file and one rotated file); the API
/// serves its tail up to this.
pub const INSTANCE_LOG_LIMIT: u64 = 1 << 20;

/// Where the reason for a quarantined file is written: `<job>.reason.json` beside the job's folder,
/// a name no staged file can take and that fits whatever the file's name.
pub fn reason_file(final_path: &Path) -> PathBuf {
    let dir = final_path.parent().unwrap_or(final_path);
    let mut name = dir.as_os_str().to_owned();
    name.push(".reason.json");
    PathBuf::from(name)
}

/// Moves a file, atomically when source and target share a file system, by copy and delete otherwise.
/// A link is moved as a link and a FIFO as a FIFO, never copied through (admission refuses them with
/// their reason).
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // A short name of its own: `to` may already use all of NAME_MAX.
            let tmp = to.with_file_name(format!(".{}.moving", Uuid::new_v4().simple()));
            let kind = std::fs::symlink_metadata(from)?.file_type();
            // A copy cut short (a full disk) leaves nothing behind: the source is still whole.
            let copied = copy_as(from, &tmp, kind);
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, to)?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

/// A copy of `from` at `tmp` as what it is: a link as a link, a FIFO as a FIFO, a file's bytes.
fn copy_as(from: &Path, tmp: &Path, kind: std::fs::FileType) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, tmp)
    } else if kind.is_fifo() {
        let path = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    } else if kind.is_file() {
        let mut source =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(from)?;
        let mut copy = std::fs::File::create(tmp)?;
        io::copy(&mut source, &mut copy)?;
        copy.sync_all()
    } else {
        Err(io::Error::other(format!("{} is not a file that can be moved", from.display())))
    }
}
