//! axum's extractors, answering with a problem document that names what was wrong instead of
//! axum's plain-text rejections.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;

use super::problem::Problem;

#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Query<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// Serialised straight into one `Vec` (axum's own `Json` grows a `BytesMut` from 128 bytes, which
/// profiling showed costing a fifth of the API's CPU on a 66 KB page of jobs).
impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue};
        let mut buf = Vec::with_capacity(16 << 10);
        match serde_json::to_writer(&mut buf, &self.0) {
            Ok(()) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], buf).into_response(),
            Err(e) => super::problem::Problem::internal(format!("serialising the answer: {e}")).into_response(),
        }
    }
}

/// A JSON body that may be left out (an empty body means the defaults), with the same checks and
/// messages as every JSON body when it is there.
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        let req = axum::extract::Request::from_parts(parts.clone(), body);
        let body = axum::body::Bytes::from_request(req, state).await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Problem::too_large(format!("the body: {}", e.body_text())),
            _ => Problem::bad_request(format!("the body: {}", e.body_text())),
        })?;
        if body.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
        let Json(r) = <Json<T> as FromRequest<S>>::from_request(req, state).await?;
        Ok(OptionalJson(r))
    }
}
