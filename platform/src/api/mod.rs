//! The control plane: a REST API under `/v1` (axum + tower), JWT tenancy, problem+json errors, an
//! OpenAPI document generated from the handlers, health, readiness and Prometheus metrics.
//!
//! The API records what is wanted in the store and the file system (an upload, a staged file, a
//! retried job, instances to run or stop); the batch and stream managers take it from there. It
//! never calls into another role's code.

pub mod apps;
pub mod auth;
pub mod concurrency;
pub mod connections;
pub mod extract;
pub mod health;
pub mod ingestions;
pub mod instances;
pub mod lake;
pub mod openapi;
pub mod page;
pub mod page_cache;
pub mod problem;
pub mod scope;
pub mod secrets;
pub mod staging;
pub mod stats;
pub mod stream;
pub mod tenants;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::agreement::registry::Agreements;
use crate::apps::Registry;
use crate::layout::Layout;
use crate::metrics::Metrics;
use crate::store::Db;
pub use auth::{Caller, Keys};
use problem::Problem;

/// Requests other than uploads must be answered within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on JSON and other small bodies; uploads are streamed under the agreement's own limits.
pub const SMALL_BODY_LIMIT: usize = 64 << 10;

#[derive(Clone)]
pub struct ApiState {
    pub db: Db,
    pub agreements: Agreements,
    pub apps: Arc<Registry>,
    pub layout: Layout,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub pages: Arc<page_cache::PageCache>,
    /// The slowest an upload may be.
    pub min_upload_rate: upload::MinRate,
    pub kafka_brokers: Option<String>,
    /// Seals tenants' secrets; absent: the platform keeps none.
    pub secrets_key: Option<crate::secrets::SecretsKey>,
}

impl FromRef<ApiState> for Keys {
    fn from_ref(s: &ApiState) -> Keys {
        s.keys.clone()
    }
}

pub fn router(state: ApiState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let per_tenant = concurrency::TenantRequests::new(state.keys.clone());
    // Uploads stream their bodies under the agreement's size limits and may take as long as the
    // client needs to send them; everything else is small and bounded in time.
    let uploads = Router::new()
        .route("/v1/tenants/{tenant}/apps", post(apps::upload))
        .route("/v1/tenants/{tenant}/staging/{file}", put(staging::put))
        .route("/v1/tenants/{tenant}/staging/", put(staging::put_unnamed))
        .layer(DefaultBodyLimit::disable());
    let rest = Router::new()
        .route("/v1/whoami", get(tenants::whoami))
        .route("/v1/tenants", get(tenants::list))
        .route("/v1/tenants/{tenant}", get(tenants::show))
        .route("/v1/tenants/{tenant}/apps", get(apps::list))
        .route("/v1/tenants/{tenant}/apps/{app}", get(apps::show).delete(apps::delete))
        .route("/v1/tenants/{tenant}/staging", get(staging::list))
        .route("/v1/tenants/{tenant}/ingestions", get(ingestions::list))
        .route("/v1/tenants/{tenant}/ingestions/{id}", get(ingestions::show))
        .route("/v1/tenants/{tenant}/ingestions/{id}/log", get(ingestions::log))
        .route("/v1/tenants/{tenant}/ingestions/{id}/retry", post(ingestions::retry))
        .route("/v1/tenants/{tenant}/apps/{app}/instances", post(instances::start).delete(instances::stop_app))
        .route("/v1/tenants/{tenant}/instances", get(instances::list))
        .route("/v1/tenants/{tenant}/instances/{id}", get(instances::show).delete(instances::stop))
        .route("/v1/tenants/{tenant}/instances/{id}/log", get(instances::log))
        .route("/v1/tenants/{tenant}/reports", get(stream::reports))
        .route("/v1/tenants/{tenant}/notifications", get(stream::notifications))
        .route("/v1/tenants/{tenant}/actions", get(stream::actions))
        .route("/v1/tenants/{tenant}/stats", get(stats::tenant))
        .route("/v1/stats", get(stats::platform))
        .route("/v1/tenants/{tenant}/secrets", get(secrets::list))
        .route("/v1/tenants/{tenant}/secrets/{name}", put(secrets::put).delete(secrets::delete))
        .route("/v1/tenants/{tenant}/lake", get(lake::list))
        .route("/v1/tenants/{tenant}/lake/{topic}/{date}/{file}", get(lake::download))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT))
        .layer(axum::middleware::from_fn(timeout));
    uploads
        .merge(rest)
        .fallback(|| async { Problem::not_found("no such endpoint; the API is described at /openapi.json") })
        .method_not_allowed_fallback(|| async {
            Problem::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "this endpoint does not take that method")
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(per_tenant, concurrency::limit))
        .layer(axum::middleware::from_fn(refuse_nul))
        .layer(axum::middleware::from_fn(upload::drain_refused))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, caller = tracing::field::Empty)
                }))
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
}

/// No name or value of this API may hold a NUL character, and PostgreSQL refuses it in text: a path
/// holding one names nothing (404), a query holding one is refused (400), instead of a store error.
async fn refuse_nul(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = req.uri();
    let has_nul = |s: &str| s.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if has_nul(uri.path()) {
        return Problem::not_found("no resource's name holds a NUL character (%00)").into_response();
    }
    if uri.query().is_some_and(has_nul) {
        return Problem::bad_request("the query holds a NUL character (%00), which no value here may hold")
            .into_response();
    }
    next.run(req).await
}

async fn timeout(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            Problem::unavailable(format!("the request took longer than {}s", REQUEST_TIMEOUT.as_secs())).into_response()
        }
    }
}

/// Serves the API on `listener` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "API listening");
    connections::serve(listener, router(state), shutdown).await
}
