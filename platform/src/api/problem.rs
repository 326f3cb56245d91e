//! Errors as RFC 9457 `application/problem+json`: a stable `type` per kind of problem, the HTTP
//! status, and a `detail` that names exactly what was wrong with the request.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// What every tenant-scoped endpoint may answer besides its own: no valid token, and "not found",
/// which is also the answer for another tenant's resources.
#[derive(utoipa::IntoResponses)]
pub enum TenantScoped {
    #[response(status = 401, description = "no valid token", content_type = "application/problem+json")]
    Unauthorized(Problem),
    #[response(
        status = 404,
        description = "no such tenant or resource (also the answer for another tenant's)",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 429,
        description = "the tenant has the most requests in progress it may have (see `concurrency`)",
        content_type = "application/problem+json"
    )]
    TooManyRequests(Problem),
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What exactly was wrong, in words meant for the caller.
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail)
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-content", detail)
    }

    /// The platform failed, not the request: logged in full, answered without internals.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::now_v7();
        tracing::error!(error = %error, problem = %id, "request failed in the platform");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the platform could not complete the request; its log names this as problem {id}"),
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("a problem serialises");
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        Problem::internal(format!("platform store: {e}"))
    }
}

impl From<std::io::Error> for Problem {
    fn from(e: std::io::Error) -> Self {
        Problem::internal(format!("file system: {e}"))
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "the body must be JSON, sent with `Content-Type: application/json`",
            ),
            JsonRejection::JsonSyntaxError(e) => {
                Problem::bad_request(format!("the body is not valid JSON: {}", source_text(&e)))
            }
            JsonRejection::JsonDataError(e) => {
                Problem::unprocessable(format!("the JSON body does not fit: {}", source_text(&e)))
            }
            other => Problem::bad_request(other.body_text()),
        }
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Self {
        match r {
            QueryRejection::FailedToDeserializeQueryString(e) => {
                Problem::bad_request(format!("query string: {}", source_text(&e)))
            }
            other => Problem::bad_request(other.body_text()),
        }
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Self {
        match r {
            PathRejection::FailedToDeserializePathParams(e) => {
                Problem::not_found(format!("no such resource: {}", e.body_text()))
            }
            other => Problem::bad_request(other.body_text()),
        }
    }
}

/// The innermost error's message: serde's own words ("unknown field `x`, expected one of ..."),
/// without axum's generic prefix.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
