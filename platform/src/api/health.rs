//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};

use super::auth::Caller;
use super::extract::Json;
use super::problem::Problem;
use super::ApiState;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
}

/// The process answers (nothing else is checked).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub status: String,
    /// Each dependency and whether it answered.
    pub checks: Vec<Check>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Whether the platform can serve: the platform store answers within a second, and so does the
/// Kafka-API broker when one is configured; the disks of the data and staging folders have room.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Readiness>) {
    let checks = checks(&state).await;
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { status: if ok { "ready" } else { "not ready" }.into(), checks }))
}

/// Every readiness check, each within a second.
async fn checks(state: &ApiState) -> Vec<Check> {
    let store = match tokio::time::timeout(Duration::from_secs(1), crate::store::ping(&state.db)).await {
        Ok(Ok(_)) => Check { name: "platform_store".into(), ok: true, detail: "PostgreSQL answered".into() },
        Ok(Err(e)) => Check { name: "platform_store".into(), ok: false, detail: format!("PostgreSQL: {e}") },
        Err(_) => {
            Check { name: "platform_store".into(), ok: false, detail: "PostgreSQL did not answer within 1s".into() }
        }
    };
    let broker = match &state.kafka_brokers {
        Some(brokers) => match crate::messaging::probe(brokers, Duration::from_secs(1)).await {
            Ok(detail) => Check { name: "broker".into(), ok: true, detail },
            Err(why) => Check { name: "broker".into(), ok: false, detail: why },
        },
        None => Check {
            name: "broker".into(),
            ok: true,
            detail: "no broker configured (MYSIMBDP_KAFKA_BROKERS); stream ingestion is off".into(),
        },
    };
    vec![store, broker, disk_room("data_disk", &state.layout.data), disk_room("staging_disk", &state.layout.staging)]
}

/// Below this much free space (a tenth of a smaller disk; 2% of a disk where that is more) a disk
/// is reported full: claimed
/// files, kept files and logs may not fit any more. Ingestion goes on where it can and every file
/// still gets its one outcome once there is room (moves that failed are retried).
const LOW_DISK: u64 = 256 << 20;

fn disk_room(name: &str, dir: &std::path::Path) -> Check {
    let name = name.to_owned();
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Check { name, ok: false, detail: format!("{} is not a path", dir.display()) };
    };
    // SAFETY: statvfs fills the struct it is given from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        return Check { name, ok: false, detail: format!("{}: {e}", dir.display()) };
    }
    let (free, size) = (st.f_bavail as u64 * st.f_frsize as u64, st.f_blocks as u64 * st.f_frsize as u64);
    let floor = LOW_DISK.min(size / 10).max(size / 50);
    let (free_s, size_s) = (crate::units::ByteSize(free), crate::units::ByteSize(size));
    if free < floor {
        let detail = format!("{}: {free_s} free of {size_s}, below {}", dir.display(), crate::units::ByteSize(floor));
        Check { name, ok: false, detail }
    } else {
        Check { name, ok: true, detail: format!("{}: {free_s} free of {size_s}", dir.display()) }
    }
}

/// Prometheus metrics (text exposition format), with the readiness checks as `mysimbdp_dependency_up`;
/// operators only.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = [])),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json")))]
pub async fn metrics(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<([(header::HeaderName, &'static str); 1], String), Problem> {
    caller.require_operator()?;
    let checks = checks(&state).await;
    let passed: Vec<(&str, bool)> = checks.iter().map(|c| (c.name.as_str(), c.ok)).collect();
    let text = state.metrics.render(&state.db, &passed).await.map_err(Problem::internal)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}
