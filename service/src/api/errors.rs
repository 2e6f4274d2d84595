//! API errors on the wire: every [`ServiceError`] is an HTTP status with an `ErrorBody` a
//! person can act on, and the JSON extractor that turns bad JSON, unknown fields and oversized bodies into 400s.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hammer_protocol::api::ErrorBody;

use crate::error::{ErrorKind, ServiceError};

/// The HTTP status of each kind of refusal.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let text = super::audit::ErrorText(crate::store::cut(&self.message, 200).into_owned());
        let mut r = (
            status_of(self.kind),
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        r.extensions_mut().insert(text);
        r
    }
}

/// `Json<T>` whose every rejection is a 400 with the reason.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let msg = match &rej {
                    JsonRejection::MissingJsonContentType(_) => {
                        "send the body as JSON with `Content-Type: application/json`".to_owned()
                    }
                    JsonRejection::BytesRejection(_) => format!(
                        "the request body could not be read (at most {} bytes are accepted)",
                        crate::limits::HTTP_BODY_LIMIT
                    ),
                    _ => format!("invalid request body: {}", rej.body_text()),
                };
                Err(ServiceError::bad_request(msg))
            }
        }
    }
}
