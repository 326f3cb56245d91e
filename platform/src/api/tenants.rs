//! Tenants as the API shows them: who is calling, which tenants exist, and one tenant's agreement in
//! force with its usage against the limits.

use axum::extract::State;

use super::auth::{Caller, Role};
use super::extract::Json;
use super::problem::{Problem, TenantScoped};
use super::scope::Scoped;
use super::ApiState;
use crate::tenant::TenantId;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub role: Role,
    /// The tenant a tenant token is for; absent for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub sub: String,
}

/// Who the token says the caller is.
#[utoipa::path(get, path = "/v1/whoami", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match caller {
        Caller::Operator { sub } => WhoAmI { role: Role::Operator, tenant: None, sub },
        Caller::Tenant { tenant, sub } => WhoAmI { role: Role::Tenant, tenant: Some(tenant.to_string()), sub },
    })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TenantSummary {
    pub tenant: String,
    /// The agreement's display name; absent when no agreement is in force.
    pub name: Option<String>,
    pub agreement_in_force: bool,
    pub batch: bool,
    pub stream: bool,
}

/// Tenants the caller can see: every tenant for an operator, its own for a tenant.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = [TenantSummary]), (status = 401, body = Problem, content_type = "application/problem+json")))]
pub async fn list(State(state): State<ApiState>, caller: Caller) -> Result<Json<Vec<TenantSummary>>, Problem> {
    let mut names = crate::store::coredms::provisioned_tenants(&state.db).await?;
    names.extend(state.agreements.current().in_force.keys().map(|t| t.to_string()));
    names.sort();
    names.dedup();
    let visible = names.iter().filter_map(|n| TenantId::parse(n).ok()).filter(|t| caller.scope(t.as_str()).is_ok());
    Ok(Json(visible.map(|t| summary(&state, t)).collect()))
}

fn summary(state: &ApiState, t: TenantId) -> TenantSummary {
    let a = state.agreements.get(&t);
    TenantSummary {
        tenant: t.to_string(),
        name: a.as_ref().map(|a| a.name.clone()),
        agreement_in_force: a.is_some(),
        batch: a.as_ref().is_some_and(|a| a.batch.is_some()),
        stream: a.as_ref().is_some_and(|a| a.stream.is_some()),
    }
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub files_last_hour: i64,
    pub max_files_per_hour: Option<u64>,
    pub bytes_last_day: i64,
    pub max_bytes_per_day: Option<u64>,
    pub queued: i64,
    pub running: i64,
    pub max_concurrent_jobs: Option<u64>,
    pub apps: i64,
    pub max_apps: Option<u64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TenantDetail {
    pub tenant: String,
    /// The service agreement in force, as the platform understood it (sizes and durations written
    /// as in agreements: `200MiB`, `10m`); absent when none is.
    #[schema(value_type = Option<Object>)]
    pub agreement: Option<serde_json::Value>,
    /// What is wrong with the tenant's agreement file as last read (each mistake with its field);
    /// empty when it is valid. While it is not, the previous valid version stays in force.
    pub agreement_errors: Vec<crate::agreement::FieldError>,
    pub usage: Usage,
}

/// One tenant: its agreement in force and what it uses of it.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = TenantDetail), TenantScoped))]
pub async fn show(
    State(state): State<ApiState>,
    Scoped { tenant: t, .. }: Scoped,
) -> Result<Json<TenantDetail>, Problem> {
    let snapshot = state.agreements.current();
    let (a, agreement_errors) = (snapshot.get(&t).cloned(), snapshot.errors_of(&t));
    let usage = usage(&state, &t, a.as_deref()).await?;
    let agreement = a.map(|a| serde_json::to_value(&*a)).transpose().map_err(Problem::internal)?;
    Ok(Json(TenantDetail { tenant: t.to_string(), agreement, agreement_errors, usage }))
}

/// What the tenant uses of its agreement's limits now.
async fn usage(
    state: &ApiState,
    t: &TenantId,
    a: Option<&crate::agreement::ServiceAgreement>,
) -> Result<Usage, Problem> {
    let used = crate::store::jobs::usage(&state.db, t).await?;
    let (queued, running, apps) = crate::store::jobs::in_progress(&state.db, t).await?;
    let batch = a.and_then(|a| a.batch.as_ref());
    Ok(Usage {
        files_last_hour: used.files_last_hour,
        max_files_per_hour: batch.map(|b| b.max_files_per_hour),
        bytes_last_day: used.bytes_last_day,
        max_bytes_per_day: batch.map(|b| b.max_bytes_per_day.0),
        queued,
        running,
        max_concurrent_jobs: batch.map(|b| b.max_concurrent_jobs),
        apps,
        max_apps: a.map(|a| a.apps.max_apps),
    })
}
