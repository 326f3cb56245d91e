//! From a complete file in staging to a queued (or rejected) job. The order makes it crash-safe:
//! the job row is written first, then the file is moved out of staging atomically, then it is
//! checked; a restart finds the row in `detected` and finishes whichever step was cut short.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::frozen::freeze;
use super::sniff::sniff;
use super::Ctx;
use crate::agreement::limits::{self, Refusal};
use crate::domain::{JobId, Reason};
use crate::layout::move_file;
use crate::names;
use crate::store::jobs::{self, Admission, Claim, Job, Limits, Queue};
use crate::tenant::TenantId;
use crate::units::ByteSize;

/// Claims `path` for `tenant`. Returns `Ok(None)` when the file was gone (taken by someone else).
pub async fn claim(ctx: &Arc<Ctx>, tenant: &TenantId, path: &Path) -> anyhow::Result<Option<JobId>> {
    let raw = path.file_name().ok_or_else(|| anyhow::anyhow!("{} names no file", path.display()))?.as_bytes();
    // A name that is not text is recorded escaped, its bytes kept beside it (see `names`).
    let name = names::escaped(raw);
    let bytes = (name.as_bytes() != raw).then_some(raw);
    let id = JobId::now();
    let work = ctx.layout.work_file(tenant, id, &name);
    let claim = Claim {
        id,
        file_name: name.clone(),
        file_name_bytes: bytes.map(<[u8]>::to_vec),
        staging_path: path.to_string_lossy().into_owned(),
        work_path: work.to_string_lossy().into_owned(),
    };
    let job = ctx.claims.send(tenant.clone(), claim).await?;
    // On an error the lease runs out and the sweep takes the claim up again.
    let claimed = ctx.leases.holding(id, job.fence, claimed(ctx, tenant, path, &work, &job)).await;
    claimed.map(|moved| moved.then_some(id))
}

/// The claim's second step, its row written: the file out of staging, then judged. False if the
/// file had gone meanwhile.
async fn claimed(ctx: &Arc<Ctx>, tenant: &TenantId, path: &Path, work: &Path, job: &Job) -> anyhow::Result<bool> {
    if let Err(e) = move_file(path, work) {
        jobs::forget(&ctx.db, tenant, job.id, job.fence).await?;
        let _ = std::fs::remove_dir(ctx.layout.work_dir(tenant, job.id));
        return match e.kind() {
            std::io::ErrorKind::NotFound => Ok(false),
            _ => Err(anyhow::anyhow!("moving {} out of staging: {e}", path.display())),
        };
    }
    tracing::debug!(%tenant, job = %job.id, file = %job.file_name, "claimed");
    evaluate(ctx, tenant, job).await?;
    Ok(true)
}

/// Checks a claimed file against the agreement and queues or rejects it. Safe to repeat. Long on
/// purpose: the checks run in one visible order (the file itself, route, format and size, content,
/// then under the tenant's admission lock duplicate, rates and disk), each refusal named as it falls.
pub async fn evaluate(ctx: &Arc<Ctx>, tenant: &TenantId, job: &Job) -> anyhow::Result<()> {
    let work = PathBuf::from(&job.work_path);
    if let Err(detail) = names::check(job.raw_name()) {
        let refusal = Refusal { reason: Reason::BadName, detail };
        return reject(ctx, tenant, job, Rejection { size: None, checksum: None, refusal, duplicate_of: None }).await;
    }
    let frozen = {
        let work = work.clone();
        tokio::task::spawn_blocking(move || freeze(&work)).await??
    };
    let (file, size) = match frozen {
        Ok(taken) => taken,
        Err(refusal) => {
            let r = Rejection { size: None, checksum: None, refusal, duplicate_of: None };
            return reject(ctx, tenant, job, r).await;
        }
    };
    let Some(agreement) = ctx.agreements.get(tenant) else {
        let refusal = Refusal { reason: Reason::NoAgreement, detail: crate::agreement::not_in_force(tenant) };
        return reject(ctx, tenant, job, Rejection { size: Some(size), checksum: None, refusal, duplicate_of: None })
            .await;
    };
    let (batch, route, format) = match limits::precheck(&agreement, &job.file_name, size) {
        Ok(ok) => ok,
        Err(refusal) => {
            return reject(
                ctx,
                tenant,
                job,
                Rejection { size: Some(size), checksum: None, refusal, duplicate_of: None },
            )
            .await
        }
    };
    let (content, checksum) = {
        let _permit = ctx.hashing.acquire().await?;
        tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            Ok((sniff(&file, size, format)?, sha256(&file, size)?))
        })
        .await??
    };
    if let Err(why) = content {
        let refusal = Refusal { reason: Reason::ContentMismatch, detail: why };
        return reject(
            ctx,
            tenant,
            job,
            Rejection { size: Some(size), checksum: Some(&checksum), refusal, duplicate_of: None },
        )
        .await;
    }

    let queue = || Queue {
        id: job.id,
        fence: job.fence,
        size: size as i64,
        checksum: checksum.clone(),
        format: format.name(),
        app: route.app.clone(),
        app_version: route.app_version,
        max_attempts: batch.retries as i32 + 1,
    };
    let limits = Limits {
        max_files_per_hour: batch.max_files_per_hour,
        max_bytes_per_day: batch.max_bytes_per_day.0,
        disk_quota: agreement.disk_quota.0,
    };
    // The common case, with the tenant's other files ready now in one statement; anything else (a
    // refusal, a claim taken over) is judged again below, on its own and in steps, so that the
    // refusal is named.
    if ctx.admissions.send(tenant.clone(), (queue(), limits)).await? {
        queued(ctx, tenant, job, size, &route.app);
        return Ok(());
    }
    let mut admission = Admission::begin(&ctx.db, tenant).await?;
    let (duplicate, usage) = admission.checks(job.id, &checksum).await?;
    if let Some((original, original_name)) = duplicate {
        let refusal = Refusal {
            reason: Reason::Duplicate,
            detail: format!("same content (sha256 {}) as `{original_name}`, job {original}", &checksum[..16]),
        };
        let r = Rejection { size: Some(size), checksum: Some(&checksum), refusal, duplicate_of: Some(original) };
        return reject_in(ctx, admission, tenant, job, r).await;
    }
    if let Err(refusal) = limits::rates(batch, size, usage.files_last_hour, usage.bytes_last_day) {
        let r = Rejection { size: Some(size), checksum: Some(&checksum), refusal, duplicate_of: None };
        return reject_in(ctx, admission, tenant, job, r).await;
    }
    let used = admission.disk_usage().await?;
    if let Err(refusal) = limits::disk(agreement.disk_quota, used, size) {
        let r = Rejection { size: Some(size), checksum: Some(&checksum), refusal, duplicate_of: None };
        return reject_in(ctx, admission, tenant, job, r).await;
    }
    if !admission.queue(queue()).await? {
        tracing::warn!(%tenant, job = %job.id, "another batch manager took the claim over; its decision stands");
        return Ok(());
    }
    queued(ctx, tenant, job, size, &route.app);
    Ok(())
}

/// A job admitted: logged and handed to the scheduler.
fn queued(ctx: &Ctx, tenant: &TenantId, job: &Job, size: u64, app: &str) {
    tracing::info!(%tenant, job = %job.id, file = %job.file_name, size = %ByteSize(size), app, "queued");
    ctx.scheduler.push(tenant, job.id);
}

fn sha256(file: &std::fs::File, size: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    // Sized to the file up to 1 MiB: a 1 MiB buffer is mapped, zeroed page by page and unmapped
    // again for every small file.
    let mut buf = vec![0u8; (size as usize).clamp(4096, 1 << 20)];
    let mut offset = 0;
    loop {
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, offset)?;
        offset += n as u64;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What is known about a file when it is refused.
struct Rejection<'a> {
    size: Option<u64>,
    checksum: Option<&'a str>,
    refusal: Refusal,
    duplicate_of: Option<JobId>,
}

async fn reject(ctx: &Ctx, tenant: &TenantId, job: &Job, r: Rejection<'_>) -> anyhow::Result<()> {
    let admission = Admission::begin(&ctx.db, tenant).await?;
    reject_in(ctx, admission, tenant, job, r).await
}

async fn reject_in(
    ctx: &Ctx,
    admission: Admission<'_>,
    tenant: &TenantId,
    job: &Job,
    r: Rejection<'_>,
) -> anyhow::Result<()> {
    // A file over the disk quota is not kept (keeping it would take the disk the quota protects):
    // its job records what it was, and the file goes with the work folder.
    let target =
        (r.refusal.reason != Reason::DiskQuota).then(|| ctx.layout.quarantine_file(tenant, job.id, &job.file_name));
    let Rejection { size, checksum, refusal, duplicate_of } = r;
    let id = job.id;
    let rejected = admission
        .reject(
            job.id,
            size.map(|s| s as i64),
            checksum,
            refusal.reason,
            &refusal.detail,
            duplicate_of,
            target.as_ref().map(|t| t.to_string_lossy()).as_deref(),
            job.fence,
        )
        .await?;
    let Some(job) = rejected else {
        tracing::warn!(%tenant, job = %id, "another batch manager took the claim over; its decision stands");
        return Ok(());
    };
    tracing::warn!(%tenant, job = %job.id, file = %job.file_name, reason = %refusal.reason, detail = %refusal.detail, "rejected");
    super::finished(ctx, tenant, &job).await?;
    Ok(())
}
