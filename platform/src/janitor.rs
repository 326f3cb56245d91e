//! Retention: finished work older than the operator's setting (`--retention`) is forgotten, rows and
//! files alike, so that nothing the platform keeps grows without bound.
//!
//! - final jobs with their events, their kept file (ingested or quarantined) and its reason file;
//! - trusted and dropped metrics reports, notifications, the manager's actions, dropped control
//!   messages;
//! - stream instances stopped for good, with their folders (logs).
//!
//! What is still in use is never touched: open jobs, wanted instances, installed apps (their
//! versions are capped by the agreement instead). Deletions are idempotent, so any number of
//! platform processes may run the janitor at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::layout::reason_file;
use crate::store::{retention, Db};

/// Jobs deleted per statement, so a first run over years of history does not hold one long lock.
const BATCH: i64 = 1000;

pub async fn run(db: Db, data_dir: PathBuf, keep: Duration, shutdown: CancellationToken) {
    // Often enough that nothing outlives the setting by much, rarely enough to cost nothing.
    let every = (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        if let Err(e) = sweep(&db, &data_dir, keep).await {
            tracing::warn!(error = %e, "retention sweep failed; trying again later");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn sweep(db: &Db, data_dir: &Path, keep: Duration) -> anyhow::Result<()> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep)?;
    let mut jobs = 0;
    loop {
        // The files go first, the rows when they are gone (see `retention::Forgetting`).
        let forgetting = retention::forget_jobs(db, cutoff, BATCH).await?;
        let more = forgetting.jobs.len() as i64 == BATCH;
        jobs += forgetting.jobs.len();
        let files: Vec<_> = forgetting.jobs.iter().filter_map(|j| Some((j.id, j.final_path.clone()?))).collect();
        tokio::task::spawn_blocking(move || {
            for (id, kept) in files {
                remove_kept(id, Path::new(&kept));
            }
        })
        .await?;
        forgetting.commit().await?;
        if !more {
            break;
        }
    }
    let records = retention::forget_stream_records(db, cutoff).await?;
    let instances = retention::forget_instances(db, cutoff).await?;
    let dirs: Vec<PathBuf> = instances.iter().map(|(t, id)| crate::layout::instance_dir(data_dir, t, *id)).collect();
    tokio::task::spawn_blocking(move || {
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    })
    .await?;
    if jobs + records as usize + instances.len() > 0 {
        tracing::info!(jobs, records, instances = instances.len(), keep = ?keep, "forgot finished work past retention");
    }
    Ok(())
}

/// Removes a forgotten job's kept file: its `<job>/` folder and reason file, or (kept before names
/// had folders of their own) `<job>-<name>` and `<job>-<name>.reason.json`.
fn remove_kept(id: crate::domain::JobId, kept: &Path) {
    let own_folder = kept.parent().filter(|d| d.file_name().and_then(|n| n.to_str()) == Some(id.to_string().as_str()));
    match own_folder {
        Some(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(reason_file(kept));
        }
        None => {
            let _ = std::fs::remove_file(kept);
            let mut old_reason = kept.as_os_str().to_owned();
            old_reason.push(".reason.json");
            let _ = std::fs::remove_file(old_reason);
        }
    }
}
