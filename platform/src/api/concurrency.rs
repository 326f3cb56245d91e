//! Requests in progress per tenant: one tenant's burst (or its stalled uploads) takes at most
//! `PER_TENANT` of the API's connections and handlers; the rest stay for everyone else. Over it a
//! request is answered 429 at once, before its body is read. Operators are not limited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::auth::{Caller, Keys};
use super::problem::Problem;

/// Requests one tenant may have in progress at once.
pub const PER_TENANT: usize = 64;

#[derive(Clone)]
pub struct TenantRequests {
    keys: Keys,
    in_progress: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl TenantRequests {
    pub fn new(keys: Keys) -> Self {
        TenantRequests { keys, in_progress: Arc::default() }
    }
}

/// Admits a tenant's request while it has fewer than `PER_TENANT` in progress. A request without a
/// valid token passes through: its handler refuses it with the reason.
pub async fn limit(State(limits): State<TenantRequests>, request: Request, next: Next) -> Response {
    let tenant = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .and_then(|token| limits.keys.verify(token.trim()).ok());
    let Some(Caller::Tenant { tenant, .. }) = tenant else { return next.run(request).await };
    let slots = {
        let mut map = limits.in_progress.lock().expect("tenant requests lock");
        map.entry(tenant.to_string()).or_insert_with(|| Arc::new(Semaphore::new(PER_TENANT))).clone()
    };
    let Ok(_slot) = slots.try_acquire_owned() else {
        let detail = format!(
            "tenant `{tenant}` has {PER_TENANT} requests in progress, the most one tenant may have at once; retry when one has finished"
        );
        let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", detail).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}
