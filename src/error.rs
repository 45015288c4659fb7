//! The one error type of the HTTP layer. Every 4xx and 5xx leaves lockd as an
//! RFC 9457 `application/problem+json` document with a stable `code`.
//!
//! Server-side causes (a Redis error, a panic) are logged once, here, with the request's
//! span; the client gets a generic detail and never sees internals.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::time::UnixMillis;

/// An RFC 9457 problem document, as every error response carries it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:lockd:problem:lock_held",
    "title": "Lock is held",
    "status": 409,
    "detail": "file:src/main.py is held by agent-feature-dev until 2026-11-26T13:40:30.123Z",
    "code": "lock_held",
    "agent_id": "agent-feature-dev",
    "expires_at": "2026-11-26T13:40:30.123Z"
}))]
pub struct Problem {
    /// A URI naming the problem type; it ends with `code`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence, in words a person can act on.
    pub detail: String,
    /// Stable snake_case identifier for programs to switch on.
    pub code: String,
    /// `lock_held`, `not_lock_owner`: the agent holding the lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// `lock_held`, `not_lock_owner`: when the current lease ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
}

/// Base of the `type` URIs. RFC 9457 lets a type URI be an identifier that does not
/// resolve; the README lists every code.
const PROBLEM_BASE: &str = "urn:lockd:problem:";

/// Who holds a lock, for the problem documents of `lock_held` and `not_lock_owner`.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The holder's agent id.
    pub agent_id: String,
    /// When its lease ends.
    pub expires_at: UnixMillis,
    /// Milliseconds left on the lease, by Redis's clock.
    pub remaining_ms: u64,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_resource_id`.
    #[error("{0}")]
    InvalidResourceId(String),
    /// 400 `missing_lock_token`.
    #[error("this request needs the Lock-Token header that acquire returned")]
    MissingLockToken,
    /// 400 `invalid_lock_token`.
    #[error("{0}")]
    InvalidLockToken(String),
    /// 400 `malformed_json`.
    #[error("{0}")]
    MalformedJson(String),
    /// 400 `invalid_query`.
    #[error("{0}")]
    InvalidQuery(String),
    /// 400 `invalid_last_event_id`.
    #[error("{0}")]
    InvalidLastEventId(String),
    /// 400 `invalid_idempotency_key`.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// 401 `unauthorized`: no API key, or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: the key lacks the scope, or may not act as that agent.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `lock_not_found`.
    #[error("nothing holds the lock on {0} (it expired or was never taken)")]
    LockNotFound(String),
    /// 404 `not_found`: no such route.
    #[error("there is no resource at {0}")]
    RouteNotFound(String),
    /// 405 `method_not_allowed`.
    #[error("{0} is not allowed on this resource")]
    MethodNotAllowed(String),
    /// 408 `request_timeout`.
    #[error("the request did not complete within {0} ms")]
    RequestTimeout(u64),
    /// 409 `lock_held`.
    #[error("{resource_id} is held by {} until {}", holder.agent_id, holder.expires_at.to_rfc3339())]
    LockHeld {
        /// The resource asked for.
        resource_id: String,
        /// Who holds it.
        holder: Holder,
    },
    /// 409 `not_lock_owner`.
    #[error("{resource_id} is held under another token, by {}", holder.agent_id)]
    NotLockOwner {
        /// The resource asked for.
        resource_id: String,
        /// Who holds it.
        holder: Holder,
    },
    /// 413 `payload_too_large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422 `invalid_body`: well-formed JSON with wrong types, missing or unknown fields.
    #[error("{0}")]
    InvalidBody(String),
    /// 422 `invalid_agent_id`.
    #[error("{0}")]
    InvalidAgentId(String),
    /// 422 `invalid_ttl_ms`.
    #[error("ttl_ms must be between 1 and {max} (got {got})")]
    InvalidTtl {
        /// The value sent.
        got: u64,
        /// `locks.max_ttl_ms`.
        max: u64,
    },
    /// 422 `invalid_wait_ms`.
    #[error("wait_ms must be between 0 and {max} (got {got})")]
    InvalidWait {
        /// The value sent.
        got: u64,
        /// `locks.max_wait_ms`.
        max: u64,
    },
    /// 429 `key_event_client_limit`: this API key has as many event streams open as
    /// `events.max_clients_per_key` allows.
    #[error("API key {0} already has the most event streams it may open")]
    KeyEventClientLimit(String),
    /// 503 `event_client_limit`: `events.max_clients` streams are open.
    #[error(
        "this server has as many event streams open as it serves; retry shortly or on another instance"
    )]
    EventClientLimit,
    /// 503 `waiter_limit`: `locks.max_waiters` requests are waiting.
    #[error(
        "this server has as many waiting acquires as it serves; retry shortly or without wait_ms"
    )]
    WaiterLimit,
    /// 503 `replica_ack_timeout`: fewer replicas than `redis.min_replicas_ack` held the
    /// grant in time, so it was withdrawn.
    #[error("{0}; the lock was not granted, retry shortly")]
    ReplicaAckTimeout(String),
    /// 503 `store_unavailable`: Redis did not answer in time or refused.
    #[error("the lock store is unavailable; the outcome of a change is unknown, retry shortly")]
    StoreUnavailable(#[source] crate::store::StoreError),
    /// 503 `store_unavailable`, with the reason: instances on one key prefix disagree on
    /// `redis.partitions`, so this one refuses every change until that is fixed.
    #[error("the lock store is unavailable: {0}")]
    StoreMisconfigured(String),
    /// 503 `events_unavailable`: the process's event subscription is down (readiness).
    #[error("the event subscription is not established yet; waits and event streams would stall")]
    EventsUnavailable,
    /// 503 `shutting_down`: the server stopped while the request waited.
    #[error("the server is shutting down; retry on another instance")]
    ShuttingDown,
    /// 500 `internal_error`: a bug; the cause is logged, not shown.
    #[error("an internal error occurred; it has been logged")]
    Internal(String),
}

impl ApiError {
    /// The status code and the stable `code` of this error.
    #[must_use]
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError as E;
        match self {
            E::InvalidResourceId(_) => (StatusCode::BAD_REQUEST, "invalid_resource_id"),
            E::MissingLockToken => (StatusCode::BAD_REQUEST, "missing_lock_token"),
            E::InvalidLockToken(_) => (StatusCode::BAD_REQUEST, "invalid_lock_token"),
            E::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            E::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            E::InvalidLastEventId(_) => (StatusCode::BAD_REQUEST, "invalid_last_event_id"),
            E::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            E::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::LockNotFound(_) => (StatusCode::NOT_FOUND, "lock_not_found"),
            E::RouteNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            E::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            E::LockHeld { .. } => (StatusCode::CONFLICT, "lock_held"),
            E::NotLockOwner { .. } => (StatusCode::CONFLICT, "not_lock_owner"),
            E::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            E::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            E::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            E::InvalidAgentId(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent_id"),
            E::InvalidTtl { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_ttl_ms"),
            E::InvalidWait { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_wait_ms"),
            E::KeyEventClientLimit(_) => (StatusCode::TOO_MANY_REQUESTS, "key_event_client_limit"),
            E::EventClientLimit => (StatusCode::SERVICE_UNAVAILABLE, "event_client_limit"),
            E::WaiterLimit => (StatusCode::SERVICE_UNAVAILABLE, "waiter_limit"),
            E::ReplicaAckTimeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "replica_ack_timeout"),
            E::StoreUnavailable(_) | E::StoreMisconfigured(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            E::EventsUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "events_unavailable"),
            E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    fn title(&self) -> &'static str {
        use ApiError as E;
        match self {
            E::InvalidResourceId(_) => "Invalid resource id",
            E::MissingLockToken => "Missing Lock-Token header",
            E::InvalidLockToken(_) => "Invalid Lock-Token header",
            E::MalformedJson(_) => "Malformed JSON body",
            E::InvalidQuery(_) => "Invalid query string",
            E::InvalidLastEventId(_) => "Invalid Last-Event-ID header",
            E::InvalidIdempotencyKey(_) => "Invalid Idempotency-Key header",
            E::Unauthorized(_) => "Unauthorized",
            E::Forbidden(_) => "Forbidden",
            E::LockNotFound(_) => "Lock not found",
            E::RouteNotFound(_) => "Not found",
            E::MethodNotAllowed(_) => "Method not allowed",
            E::RequestTimeout(_) => "Request timed out",
            E::LockHeld { .. } => "Lock is held",
            E::NotLockOwner { .. } => "Not the lock's owner",
            E::PayloadTooLarge(_) => "Request body too large",
            E::UnsupportedMediaType(_) => "Unsupported media type",
            E::InvalidBody(_) => "Invalid request body",
            E::InvalidAgentId(_) => "Invalid agent id",
            E::InvalidTtl { .. } => "Lease length out of range",
            E::InvalidWait { .. } => "Wait out of range",
            E::KeyEventClientLimit(_) => "Too many event streams for this key",
            E::EventClientLimit => "Too many event streams",
            E::WaiterLimit => "Too many waiting acquires",
            E::ReplicaAckTimeout(_) => "Replicas did not acknowledge",
            E::StoreUnavailable(_) | E::StoreMisconfigured(_) => "Lock store unavailable",
            E::EventsUnavailable => "Event subscription unavailable",
            E::ShuttingDown => "Shutting down",
            E::Internal(_) => "Internal error",
        }
    }

    /// Seconds a client should wait before retrying, where that is known.
    fn retry_after(&self) -> Option<u64> {
        match self {
            // Whole seconds until the lease ends, at least 1.
            Self::LockHeld { holder, .. } => Some(holder.remaining_ms.div_ceil(1000).max(1)),
            Self::StoreUnavailable(_)
            | Self::ReplicaAckTimeout(_)
            | Self::EventsUnavailable
            | Self::ShuttingDown
            | Self::WaiterLimit
            | Self::EventClientLimit
            | Self::KeyEventClientLimit(_) => Some(1),
            _ => None,
        }
    }

    /// The problem document of this error.
    #[must_use]
    pub fn to_problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        let holder = match self {
            Self::LockHeld { holder, .. } | Self::NotLockOwner { holder, .. } => Some(holder),
            _ => None,
        };
        Problem {
            problem_type: format!("{PROBLEM_BASE}{code}"),
            title: self.title().to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_owned(),
            agent_id: holder.map(|h| h.agent_id.clone()),
            expires_at: holder.map(|h| h.expires_at.to_rfc3339()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::StoreUnavailable(cause) => {
                tracing::warn!(error = %cause, "lock store unavailable");
                crate::metrics::redis_error(cause.kind());
            }
            Self::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            _ => {}
        }
        let problem = self.to_problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::ReplicasBehind { .. } => {
                crate::metrics::redis_error(error.kind());
                Self::ReplicaAckTimeout(error.to_string())
            }
            crate::store::StoreError::Layout { .. } => {
                crate::metrics::redis_error(error.kind());
                Self::StoreMisconfigured(error.to_string())
            }
            error => Self::StoreUnavailable(error),
        }
    }
}
