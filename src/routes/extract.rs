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
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(is_json_media_type);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be JSON, sent with Content-Type: application/json".into(),
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_error(rejection.status(), rejection.body_text()))?;
        read_object(&body).map(Self)
    }
}

/// Reads a JSON body as `T`, refusing anything but a JSON object: serde would read an
/// array into a struct's fields by position, and the contract takes objects only.
fn read_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ApiError::InvalidBody("the request body must be a JSON object".into()),
                Err(error) => ApiError::MalformedJson(format!(
                    "Failed to parse the request body as JSON: {error}"
                )),
            },
        );
    }
    axum::Json::<T>::from_bytes(body)
        .map(|axum::Json(value)| value)
        .map_err(json_rejection)
}

/// A JSON body that may be left out entirely: no body and no `Content-Type` gives
/// `None`. A body without a JSON content type is refused, not ignored.
pub struct OptionalApiJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(is_json_media_type);
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| body_error(rejection.status(), rejection.body_text()))?;
        // An empty body is no body, whatever the headers say: generated clients send
        // `Content-Type: application/json` even when they leave an optional body out.
        if body.is_empty() {
            return Ok(Self(None));
        }
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "a request body needs Content-Type: application/json".into(),
            ));
        }
        read_object(&body).map(|value| Self(Some(value)))
    }
}

/// `application/json` or `application/<anything>+json`, as axum's `Json` accepts.
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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
