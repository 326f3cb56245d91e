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
