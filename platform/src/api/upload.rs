//! Request bodies streamed to disk under a size limit: refused up front when `Content-Length` says
//! too much, and cut off while reading when the body turns out longer (chunked uploads carry no
//! length, and a header may lie).

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::problem::Problem;
use crate::units::ByteSize;

pub struct Written {
    pub bytes: u64,
    pub sha256: String,
}

/// How long an upload may send nothing before it is given up (a stalled or malicious client must
/// not hold a connection and a half-written file forever).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Removes a half-written file unless the upload completed, also when the request future is
/// dropped because the client went away.
struct Partial<'a>(&'a Path, bool);

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_file(self.0);
        }
    }
}

/// Writes `body` to `path` (created new, synced) and returns its size and SHA-256. On any error, or
/// if the client goes away, the partial file is removed.
pub async fn to_file(
    headers: &HeaderMap,
    body: Body,
    path: &Path,
    (limit_name, limit): (&str, ByteSize),
    what: &str,
) -> Result<Written, Problem> {
    let too_large = || Problem::too_large(format!("{what} is over the agreement's {limit_name} of {limit}"));
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.0) {
        return Err(too_large());
    }
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await?;
    let mut partial = Partial(path, false);
    let mut stream = body.into_data_stream();
    let (mut bytes, mut hasher) = (0u64, Sha256::new());
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await.map_err(|_| {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload-stalled",
                format!("{what} sent nothing for {}s; start it again", IDLE_TIMEOUT.as_secs()),
            )
        })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Problem::bad_request(format!("the upload was cut off: {e}")))?;
        bytes += chunk.len() as u64;
        if bytes > limit.0 {
            return Err(too_large());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    partial.1 = true;
    Ok(Written { bytes, sha256: hex::encode(hasher.finalize()) })
}
