//! Files into a tenant's staging folder over HTTP. The body is streamed to a hidden `.part` file
//! (which the watcher ignores), synced, and renamed into place only when complete, so the batch
//! manager only ever sees whole files; a name already waiting in staging is never overwritten.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};

use super::auth::Caller;
use super::extract::{Json, Path};
use super::problem::{Problem, TenantScoped};
use super::scope::{InForce, Scoped};
use super::upload;
use super::ApiState;
use crate::agreement::BatchAgreement;
use crate::names;
use crate::tenant::TenantId;
use crate::units::ByteSize;

/// The staging rules for a name sent over HTTP: one plain file name the watcher will take.
pub fn validate_file_name(name: &str) -> Result<(), String> {
    names::check(name.as_bytes())?;
    if names::is_ignored(name) {
        return Err(format!(
            "`{name}` is hidden or temporary (leading `.`, or `.part`/`.tmp`): staging ignores such names"
        ));
    }
    Ok(())
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Staged {
    pub tenant: String,
    pub file: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Where to follow the file's ingestion.
    pub ingestions: String,
}

/// Uploads a file into the tenant's staging folder, where the batch manager takes it up.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/staging/{file}", tag = "staging", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("file" = String, Path, description = "plain file name")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Staged, description = "staged; the batch manager takes it from here"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "invalid file name"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "a file of that name is waiting, or the tenant has no batch ingestion"),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "the upload stalled"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "over max_file_size"),
        (status = 507, body = Problem, content_type = "application/problem+json", description = "over the tenant's disk_quota"), TenantScoped))]
pub async fn put(
    State(state): State<ApiState>,
    InForce { tenant: t, agreement, section: batch }: InForce<BatchAgreement>,
    Path((_, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<Staged>), Problem> {
    validate_file_name(&file).map_err(Problem::bad_request)?;
    check_quota(&state, &t, agreement.disk_quota, &headers).await?;
    let written = receive(&state, &t, &file, &headers, body, ("max_file_size", batch.max_file_size)).await?;
    tracing::info!(tenant = %t, file, bytes = written.bytes, "staged over HTTP");
    let follow = format!("/v1/tenants/{t}/ingestions?file={}", urlencode(&file));
    let (tenant, size_bytes, sha256) = (t.to_string(), written.bytes, written.sha256);
    let staged = Staged { tenant, file, size_bytes, sha256, ingestions: follow.clone() };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, follow)], Json(staged)))
}

/// Refuses an upload that says (by its length) it would take the tenant over its disk quota: what
/// the platform keeps of the tenant's (see `jobs::disk_usage`) plus what waits in its staging folder
/// unclaimed. Checked again at admission with the file's real size.
async fn check_quota(state: &ApiState, t: &TenantId, quota: ByteSize, headers: &HeaderMap) -> Result<(), Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let kept = crate::store::jobs::disk_usage(&state.db, t).await?;
    let dir = state.layout.staging_dir(t);
    let waiting = tokio::task::spawn_blocking(move || folder_bytes(&dir)).await.map_err(Problem::internal)?;
    let used = kept.saturating_add(waiting.min(i64::MAX as u64) as i64);
    crate::agreement::limits::disk(quota, used, declared)
        .map_err(|r| Problem::new(StatusCode::INSUFFICIENT_STORAGE, "disk-quota", r.detail))
}

/// Bytes of the regular files directly in `dir` (files waiting to be claimed, uploads under way).
fn folder_bytes(dir: &std::path::Path) -> u64 {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

/// Writes the body under a hidden temporary name and renames it into place, never over a file of
/// the same name still waiting there.
async fn receive(
    state: &ApiState,
    t: &TenantId,
    file: &str,
    headers: &HeaderMap,
    body: Body,
    limit: (&str, ByteSize),
) -> Result<upload::Written, Problem> {
    let dir = state.layout.staging_dir(t);
    tokio::fs::create_dir_all(&dir).await?;
    let target = dir.join(file);
    if tokio::fs::try_exists(&target).await? {
        return Err(waiting(file));
    }
    let part = dir.join(format!(".{}.part", uuid::Uuid::new_v4()));
    let written = upload::to_file(headers, body, &part, limit, "the file", state.min_upload_rate).await?;
    if let Err(e) = rename_no_replace(&part, &target) {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists { waiting(file) } else { e.into() });
    }
    Ok(written)
}

/// `PUT .../staging/` with no name at all.
pub async fn put_unnamed(caller: Caller, Path(_tenant): Path<String>) -> Problem {
    let _ = caller;
    Problem::bad_request("the file name is empty")
}

fn waiting(file: &str) -> Problem {
    Problem::conflict(format!(
        "a file named `{file}` is already waiting in staging; wait for it to be taken or use another name"
    ))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Atomic rename that fails instead of replacing an existing file, and shows up in inotify as the
/// rename the watcher reacts to at once.
fn rename_no_replace(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: plain system call on NUL-terminated paths that outlive it.
    let r =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StagedFile {
    pub file: String,
    pub size_bytes: u64,
    pub modified_at: chrono::DateTime<chrono::Utc>,
}

/// Files waiting in the tenant's staging folder (hidden and temporary files left out).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/staging", tag = "staging", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = [StagedFile]), TenantScoped))]
pub async fn list(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
) -> Result<Json<Vec<StagedFile>>, Problem> {
    let dir = state.layout.staging_dir(&t);
    Ok(Json(tokio::task::spawn_blocking(move || waiting_files(&dir)).await.map_err(Problem::internal)??))
}

/// The files waiting in a staging folder, by name; none when the folder does not exist yet.
fn waiting_files(dir: &std::path::Path) -> std::io::Result<Vec<StagedFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        // A name that is not text is listed escaped, as its job will show it.
        let name = names::escaped(entry.file_name().as_bytes());
        let Ok(meta) = entry.metadata() else { continue }; // taken while we looked
        if names::is_ignored(&name) || !meta.is_file() {
            continue;
        }
        let modified = meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
        out.push(StagedFile { file: name, size_bytes: meta.len(), modified_at: modified });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}
