//! A tenant's secrets over HTTP: write (or replace) one, list them, delete one. Values go in and never
//! come out: listings show names, sizes and times; only the tenant's own connectors, started by the
//! stream manager, are handed a value.

use axum::extract::State;
use axum::http::StatusCode;

use super::extract::{Json, Path};
use super::problem::{Problem, TenantScoped};
use super::scope::{InForce, Scoped, Whole};
use super::ApiState;
use crate::agreement::{validate_secret_name, SecretsAgreement};
use crate::store::secrets::{self, PutError, SecretInfo};
use crate::tenant::TenantId;

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    /// The value (a connection URL, a key); at most the agreement's `secrets.max_size`.
    pub value: String,
}

/// Writes a secret, or replaces its value. The answer never holds the value.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("name" = String, Path, description = "secret name")),
    request_body(content = PutSecret, content_type = "application/json"),
    responses((status = 200, body = SecretInfo),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "over the agreement's max_secrets"),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "over the agreement's secrets.max_size"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a bad name"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "the platform has no secrets key"), TenantScoped))]
pub async fn put(
    State(state): State<ApiState>,
    InForce { tenant, agreement, .. }: InForce<Whole>,
    Path((_, name)): Path<(String, String)>,
    Json(body): Json<PutSecret>,
) -> Result<Json<SecretInfo>, Problem> {
    Ok(Json(store(&state, &tenant, &agreement.secrets, &name, &body.value).await?))
}

/// Seals and stores one secret within the agreement's limits.
async fn store(
    state: &ApiState,
    tenant: &TenantId,
    limits: &SecretsAgreement,
    name: &str,
    value: &str,
) -> Result<SecretInfo, Problem> {
    validate_secret_name(name).map_err(Problem::unprocessable)?;
    if value.len() as u64 > limits.max_size.0 {
        return Err(Problem::too_large(format!(
            "the value is {} bytes, over the agreement's secrets.max_size of {}",
            value.len(),
            limits.max_size
        )));
    }
    let key = state.secrets_key.as_ref().ok_or_else(|| {
        Problem::unavailable("this platform keeps no secrets: it has no secrets key (MYSIMBDP_SECRETS_KEY_FILE)")
    })?;
    let sealed = key.seal(tenant, name, value.as_bytes());
    match secrets::put(&state.db, tenant, name, &sealed, value.len(), limits.max_secrets).await {
        Ok(info) => {
            tracing::info!(%tenant, secret = %name, "secret written");
            Ok(info)
        }
        Err(e @ PutError::OverLimit { .. }) => Err(Problem::conflict(e.to_string())),
        Err(PutError::Store(e)) => Err(e.into()),
    }
}

/// The tenant's secrets: names, sizes and times, never values.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/secrets", tag = "secrets", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id")),
    responses((status = 200, body = Vec<SecretInfo>), TenantScoped))]
pub async fn list(State(state): State<ApiState>, scoped: Scoped) -> Result<Json<Vec<SecretInfo>>, Problem> {
    Ok(Json(secrets::list(&state.db, &scoped.tenant).await?))
}

/// Deletes a secret. Connectors already running keep the value they were started with.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("name" = String, Path, description = "secret name")),
    responses((status = 204), TenantScoped))]
pub async fn delete(
    State(state): State<ApiState>,
    scoped: Scoped,
    Path((_, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let t = scoped.tenant;
    if secrets::delete(&state.db, &t, &name).await? {
        tracing::info!(tenant = %t, secret = %name, "secret deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("tenant `{t}` has no secret `{name}`")))
    }
}
