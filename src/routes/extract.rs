//! Extractors that turn raw request parts into domain types, and every rejection into
//! an [`ApiError`], so malformed input also leaves as a problem document.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::domain::{LockToken, ResourceId};
use crate::error::ApiError;

/// Name of the header that carries a lock token, both ways.
pub const LOCK_TOKEN: &str = "lock-token";

/// The resource id: the whole rest of the path after `/locks/`, percent-decoded.
pub struct ResourcePath(pub ResourceId);

impl<S: Send + Sync> FromRequestParts<S> for ResourcePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::InvalidResourceId(format!(
                    "the resource id in the path is not valid: {}",
                    rejection.body_text()
                ))
            })?;
        ResourceId::parse(raw)
            .map(Self)
            .map_err(ApiError::InvalidResourceId)
    }
}

/// The `Lock-Token` request header.
pub struct LockTokenHeader(pub LockToken);

impl<S: Send + Sync> FromRequestParts<S> for LockTokenHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(LOCK_TOKEN)
            .ok_or(ApiError::MissingLockToken)?;
        let text = value.to_str().map_err(|_| {
            ApiError::InvalidLockToken("Lock-Token must be the token returned by acquire".into())
        })?;
        LockToken::parse(text.trim())
            .map(Self)
            .map_err(ApiError::InvalidLockToken)
    }
}

/// A JSON body: `Content-Type: application/json` required, unknown fields rejected (by
/// the target type), at most the configured body limit.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(value)| Self(value))
            .map_err(json_rejection)
    }
}

/// A JSON body that may be left out entirely: no body and no `Content-Type` gives
/// `None`. A body without a JSON content type is refused, not ignored.
pub struct OptionalApiJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let has_content_type = req.headers().contains_key(CONTENT_TYPE);
        if has_content_type {
            return ApiJson::<T>::from_request(req, state)
                .await
                .map(|ApiJson(value)| Self(Some(value)));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_error(rejection.status(), rejection.body_text()))?;
        if body.is_empty() {
            Ok(Self(None))
        } else {
            Err(ApiError::UnsupportedMediaType(
                "a request body needs Content-Type: application/json".into(),
            ))
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "the request body must be JSON, sent with Content-Type: application/json".into(),
        ),
        JsonRejection::BytesRejection(e) => body_error(e.status(), e.body_text()),
        other => ApiError::InvalidBody(other.body_text()),
    }
}

fn body_error(status: axum::http::StatusCode, text: String) -> ApiError {
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        crate::metrics::rejected("body_too_large");
        ApiError::PayloadTooLarge(
            "the request body is larger than this server accepts (server.max_body_bytes)".into(),
        )
    } else {
        ApiError::MalformedJson(text)
    }
}
