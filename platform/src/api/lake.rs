//! A tenant's lake over HTTP: its Parquet files listed, one downloaded. Only the tenant's own (and
//! an operator's): the folder comes from the scoped tenant, never from the request.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::extract::{Json, Path, Query};
use super::problem::{Problem, TenantScoped};
use super::scope::Scoped;
use super::ApiState;
use crate::lake::{self, LakeFile};

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LakeParams {
    /// Only this topic's files (its name without the tenant prefix).
    pub topic: Option<String>,
}

/// The tenant's lake files, by topic, date and name.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/lake", tag = "lake", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), LakeParams),
    responses((status = 200, body = Vec<LakeFile>),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "an unknown query parameter"), TenantScoped))]
pub async fn list(
    State(state): State<ApiState>,
    scoped: Scoped,
    Query(params): Query<LakeParams>,
) -> Result<Json<Vec<LakeFile>>, Problem> {
    let root = crate::layout::lake_dir(&state.layout.data, &scoped.tenant);
    let files = tokio::task::spawn_blocking(move || lake::list(&root, params.topic.as_deref()))
        .await
        .map_err(Problem::internal)??;
    Ok(Json(files))
}

/// One Parquet file of the tenant's lake.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/lake/{topic}/{date}/{file}", tag = "lake", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "tenant id"), ("topic" = String, Path, description = "topic without the tenant prefix"),
        ("date" = String, Path, description = "YYYY-MM-DD"), ("file" = String, Path, description = "file name")),
    responses((status = 200, body = Vec<u8>, content_type = "application/vnd.apache.parquet"), TenantScoped))]
pub async fn download(
    State(state): State<ApiState>,
    scoped: Scoped,
    Path((_, topic, date, file)): Path<(String, String, String, String)>,
) -> Result<impl IntoResponse, Problem> {
    let (opened, size) = open(&state, &scoped.tenant, topic, date, file).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(opened)));
    let headers = [
        (header::CONTENT_TYPE, "application/vnd.apache.parquet".to_owned()),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((headers, body))
}

/// The tenant's lake file and its size, or 404 naming what is not there.
async fn open(
    state: &ApiState,
    tenant: &crate::tenant::TenantId,
    topic: String,
    date: String,
    file: String,
) -> Result<(std::fs::File, u64), Problem> {
    let root = crate::layout::lake_dir(&state.layout.data, tenant);
    let (t, d, f) = (topic.clone(), date.clone(), file.clone());
    let opened =
        tokio::task::spawn_blocking(move || lake::open(&root, &t, &d, &f)).await.map_err(Problem::internal)??;
    let opened = opened.ok_or_else(|| {
        Problem::not_found(format!("the lake of tenant `{tenant}` has no file {topic}/{date}/{file}"))
    })?;
    let size = opened.metadata()?.len();
    Ok((opened, size))
}
