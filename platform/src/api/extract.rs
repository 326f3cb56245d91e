//! axum's extractors, answering with a problem document that names what was wrong instead of
//! axum's plain-text rejections.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;

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
pub async fn optional_json<T: serde::de::DeserializeOwned + Default>(
    headers: &axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<T, Problem> {
    use axum::http::header;
    if body.is_empty() {
        return Ok(T::default());
    }
    let req = axum::http::Request::builder()
        .header(
            header::CONTENT_TYPE,
            headers.get(header::CONTENT_TYPE).cloned().unwrap_or(header::HeaderValue::from_static("")),
        )
        .body(axum::body::Body::from(body))
        .map_err(Problem::internal)?;
    let Json(r) = <Json<T> as FromRequest<()>>::from_request(req, &()).await?;
    Ok(r)
}

/// A page size from a query, `default` when absent, refused outside 1..=`max`.
pub fn limit(asked: Option<u32>, default: u32, max: u32) -> Result<i64, Problem> {
    let limit = asked.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(Problem::bad_request(format!("limit is {limit}; it must be between 1 and {max}")));
    }
    Ok(limit as i64)
}
