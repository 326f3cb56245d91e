//! Request bodies streamed to disk under a size limit: refused up front when `Content-Length` says
//! too much, and cut off while reading when the body turns out longer (chunked uploads carry no
//! length, and a header may lie).

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::problem::Problem;
pub use crate::config::MinRate;
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
    min: MinRate,
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
    let started = tokio::time::Instant::now();
    loop {
        // By when the upload must have sent more to stay above the minimum rate.
        let behind = started + min.grace + Duration::from_secs_f64(bytes as f64 / min.bytes_per_s);
        let idle = tokio::time::Instant::now() + IDLE_TIMEOUT;
        let next = tokio::time::timeout_at(idle.min(behind), stream.next()).await.map_err(|_| {
            let detail = if behind < idle {
                format!(
                    "{what} came slower than the minimum of {} KiB/s ({bytes} bytes in {}s); send it again faster",
                    min.bytes_per_s as u64 / 1024,
                    started.elapsed().as_secs()
                )
            } else {
                format!("{what} sent nothing for {}s; start it again", IDLE_TIMEOUT.as_secs())
            };
            Problem::new(StatusCode::REQUEST_TIMEOUT, "upload-stalled", detail)
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

/// Bound on what is read and dropped of a refused request's body.
pub const DRAIN_LIMIT: usize = 8 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request body the middleware and the handler share, so what the handler left unread can be
/// read after it answered.
struct SharedBody(Arc<Mutex<BodyDataStream>>);

impl futures::Stream for SharedBody {
    type Item = Result<bytes::Bytes, axum::Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.lock().expect("body lock").poll_next_unpin(cx)
    }
}

/// Middleware: when a request is refused (4xx, 5xx) before its body was read, reads and drops the
/// rest of it (up to 8 MiB, for at most 5 s) before answering. Otherwise a client still sending
/// (say, an upload refused for its `Content-Length`) meets a reset connection instead of the
/// problem document that says why.
pub async fn drain_refused(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(body.into_data_stream()));
    let req = axum::extract::Request::from_parts(parts, Body::from_stream(SharedBody(shared.clone())));
    let response = next.run(req).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        let mut rest = std::mem::replace(&mut *shared.lock().expect("body lock"), Body::empty().into_data_stream());
        let _ = tokio::time::timeout(DRAIN_TIME, async move {
            let mut read = 0;
            while let Some(Ok(chunk)) = rest.next().await {
                read += chunk.len();
                if read > DRAIN_LIMIT {
                    break;
                }
            }
        })
        .await;
    }
    response
}
