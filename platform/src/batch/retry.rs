//! An operator's or tenant's retry of a final job: its file goes back to the work area and the job
//! is queued again with fresh attempts; the batch manager's sweep of the store picks it up.

use std::path::{Path, PathBuf};

use crate::agreement::limits;
use crate::agreement::BatchAgreement;
use crate::layout::{move_file, reason_file};
use crate::store::jobs::{self, Job, RetryError};
use crate::store::Db;
use crate::tenant::TenantId;

#[derive(Debug, thiserror::Error)]
pub enum RetryFailure {
    #[error(transparent)]
    Refused(#[from] RetryError),
    #[error("job {0} has no file to run again")]
    NoFile(uuid::Uuid),
    #[error("the file of job {0} is no longer at {1}")]
    FileGone(uuid::Uuid, String),
    #[error("the tenant has no batch ingestion in its agreement in force")]
    NoBatch,
    #[error("moving the file back: {0}")]
    Io(#[from] std::io::Error),
}

/// Queues `job` again, admitted anew under `batch`'s rate limits (absent: the tenant has no batch
/// ingestion in force, and nothing is admitted).
pub async fn retry(
    db: &Db,
    tenant: &TenantId,
    job: &Job,
    allow_duplicate: bool,
    batch: Option<&BatchAgreement>,
) -> Result<(), RetryFailure> {
    let batch = batch.ok_or(RetryFailure::NoBatch)?;
    jobs::retryable(job, allow_duplicate)?;
    let from = PathBuf::from(job.final_path.clone().ok_or(RetryFailure::NoFile(job.id))?);
    if !from.exists() {
        return Err(RetryFailure::FileGone(job.id, from.display().to_string()));
    }
    // File first, then the store: a crash in between leaves a final job with its file in the work
    // area, which recovery moves back to where the job says it is.
    move_file(&from, Path::new(&job.work_path))?;
    let size = job.size_bytes.unwrap_or(0).max(0) as u64;
    let within = |u: &jobs::Usage| {
        limits::rates(batch, size, u.files_last_hour, u.bytes_last_day).map_err(|r| (r.reason, r.detail))
    };
    if let Err(e) = jobs::retry(db, tenant, job, allow_duplicate, job.max_attempts.max(1), within).await {
        move_file(Path::new(&job.work_path), &from)?;
        return Err(e.into());
    }
    let _ = std::fs::remove_file(reason_file(&from));
    tracing::info!(%tenant, job = %job.id, file = %job.file_name, "queued again on request");
    Ok(())
}
