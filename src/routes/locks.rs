//! `/locks/{resource_id}`: acquire, release, refresh and status.
//!
//! Handlers parse input into domain types, call the store, and map outcomes to HTTP.
//! Waiting for a busy lock (`wait_ms`) is event-driven: the request registers with the
//! process's [`Waiters`](crate::events::Waiters) and sleeps until a `resource.unlocked`
//! event for its resource, the end of the current lease, or its deadline.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use std::sync::Arc;

use axum::Extension;

use super::AppState;
use super::extract::{ApiJson, LOCK_TOKEN, LockTokenHeader, OptionalApiJson, ResourcePath};
use crate::auth::{Principal, Scope};
use crate::domain::{AgentId, IdempotencyKey, LockToken, ResourceId};
use crate::error::{ApiError, Problem};
use crate::store::{Acquired, Held, Lease, Owned, Releaser};
use crate::time::UnixMillis;

/// Body of `POST /locks/{resource_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"agent_id": "agent-feature-dev", "ttl_ms": 30000, "wait_ms": 5000}))]
pub struct AcquireRequest {
    /// Who is acquiring: 1 to 128 bytes of UTF-8, no control characters. (`maxLength`
    /// counts characters; the limit is in bytes, so fewer non-ASCII characters fit.)
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]+$",
        example = "agent-feature-dev"
    )]
    pub agent_id: String,
    /// Lease length in ms, 1 to `locks.max_ttl_ms` (the maximum shown is the default
    /// setting); default `locks.default_ttl_ms` (30000). Null means the default.
    #[schema(minimum = 1, maximum = 3_600_000, example = 30000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub ttl_ms: Option<u64>,
    /// How long the server may wait for a busy lock, 0 to `locks.max_wait_ms` (the maximum
    /// shown is the default setting); default 0, do not wait. Null means the default.
    #[schema(minimum = 0, maximum = 60_000, example = 5000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub wait_ms: Option<u64>,
}

/// Body of `PATCH /locks/{resource_id}` (the whole body is optional).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ttl_ms": 60000}))]
pub struct RefreshRequest {
    /// New lease length in ms from now, 1 to `locks.max_ttl_ms` (the maximum shown is the
    /// default setting); default (or null): the lease's original length.
    #[schema(minimum = 1, maximum = 3_600_000, example = 60000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub ttl_ms: Option<u64>,
}

/// Reads an optional count of milliseconds that JSON may spell `30000` or `30000.0`.
///
/// JSON Schema's `integer`, and clients that compute in floating point, count `30000.0`
/// as a whole number; serde's `u64` alone refuses it. Fractions, negatives and
/// non-numbers stay errors (422 `invalid_body`).
fn whole_number<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(whole) = number.as_u64() {
        return Ok(Some(whole));
    }
    match number.as_f64() {
        // Saturates above u64::MAX, which the range checks then refuse.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a non-negative whole number; saturation is fine"
        )]
        Some(float) if float >= 0.0 && float.fract() == 0.0 => Ok(Some(float as u64)),
        _ => Err(D::Error::custom(format!(
            "expected a whole number of milliseconds, got {number}"
        ))),
    }
}

/// A granted lease, as acquire and refresh return it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "resource_id": "file:src/main.py",
    "agent_id": "agent-feature-dev",
    "token": "6f1c1d1e-8a43-4d5f-9a8e-0c2b5d4e7f10",
    "fencing_token": 1764164400123456u64,
    "ttl_ms": 30000,
    "acquired_at": "2026-11-26T13:40:00.123Z",
    "expires_at": "2026-11-26T13:40:30.123Z"
}))]
pub struct LockGrant {
    /// The locked resource.
    pub resource_id: String,
    /// The holder.
    pub agent_id: String,
    /// The secret that releases and refreshes this lease, sent back in the `Lock-Token`
    /// header. Treat it as an opaque string; never log or share it.
    #[schema(example = "6f1c1d1e-8a43-4d5f-9a8e-0c2b5d4e7f10")]
    pub token: String,
    /// Strictly greater than every fencing token issued earlier for this resource:
    /// pass it to the protected storage, which rejects older ones. Below 2^53, so every
    /// JSON parser reads it exactly.
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub fencing_token: u64,
    /// Lease length in ms set by this request.
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
    /// When the lock was acquired (Redis's clock).
    #[schema(value_type = String, format = DateTime)]
    pub acquired_at: UnixMillis,
    /// When the lease ends unless refreshed (Redis's clock).
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: UnixMillis,
}

impl LockGrant {
    fn new(resource_id: &ResourceId, token: &LockToken, lease: Lease) -> Self {
        Self {
            resource_id: resource_id.to_string(),
            agent_id: lease.agent_id,
            token: token.to_string(),
            fencing_token: lease.fencing_token,
            ttl_ms: lease.ttl_ms,
            acquired_at: lease.acquired_at,
            expires_at: lease.expires_at,
        }
    }
}

/// Who holds a lock, if anyone. The token is never shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "resource_id": "file:src/main.py",
    "locked": true,
    "agent_id": "agent-feature-dev",
    "fencing_token": 1764164400123456u64,
    "acquired_at": "2026-11-26T13:40:00.123Z",
    "expires_at": "2026-11-26T13:40:30.123Z",
    "ttl_remaining_ms": 29417
}))]
pub struct LockStatus {
    /// The resource.
    pub resource_id: String,
    /// Whether an unexpired lease holds it.
    pub locked: bool,
    /// The holder (only when locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub agent_id: Option<String>,
    /// The holder's fencing token, below 2^53 (only when locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = u64, maximum = 9_007_199_254_740_991_u64)]
    pub fencing_token: Option<u64>,
    /// When the lock was acquired, by Redis's clock (only when locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime)]
    pub acquired_at: Option<UnixMillis>,
    /// When the lease ends unless refreshed, by Redis's clock (only when locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Option<UnixMillis>,
    /// Milliseconds left on the lease (only when locked).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = u64)]
    pub ttl_remaining_ms: Option<u64>,
}

impl LockStatus {
    fn held(resource_id: String, held: Held) -> Self {
        Self {
            resource_id,
            locked: true,
            agent_id: Some(held.agent_id),
            fencing_token: Some(held.fencing_token),
            acquired_at: Some(held.acquired_at),
            expires_at: Some(held.expires_at),
            ttl_remaining_ms: Some(held.remaining_ms),
        }
    }
}

/// Query of `GET /locks`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only locks whose resource id starts with this: at most 512 bytes of UTF-8, no
    /// control characters. Empty means all.
    #[param(required = false, value_type = String, max_length = 512, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$",
        example = "file:src/")]
    pub prefix: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(required = false, value_type = u32, minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page, as it was returned (opaque). Empty means the
    /// first page.
    #[param(required = false, value_type = String, max_length = 1024, pattern = "^([0-9A-Fa-f]{2})*$")]
    pub cursor: Option<String>,
}

/// A page of held locks.
#[derive(Debug, Serialize, ToSchema)]
pub struct LockList {
    /// Locks held now, in resource-id byte order.
    pub locks: Vec<LockStatus>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true, example = "66696c653a7372632f6d61696e2e7079")]
    pub next_cursor: Option<String>,
}

/// Default and largest page of `GET /locks`.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The resource id path parameter, for the OpenAPI document.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(dead_code, reason = "describes the path parameter for OpenAPI only")]
pub struct ResourceIdParam {
    /// The resource: 1 to 512 bytes of UTF-8 after percent-decoding, no control
    /// characters. Slashes may be sent raw or as `%2F`; both name the same resource.
    /// (`maxLength` counts characters; the limit is in bytes.)
    #[param(
        min_length = 1,
        max_length = 512,
        pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]+$",
        example = "file:src/main.py"
    )]
    resource_id: String,
}

/// The `Lock-Token` request header, for the OpenAPI document.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the header for OpenAPI only")]
pub struct LockTokenParam {
    /// The `token` that acquire returned. Clients pass it back as they got it; the
    /// pattern is the shape lockd issues (a hyphenated UUID), and anything else is 400
    /// `invalid_lock_token`.
    #[param(
        rename = "Lock-Token",
        pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
        example = "6f1c1d1e-8a43-4d5f-9a8e-0c2b5d4e7f10"
    )]
    lock_token: String,
}

/// The `Idempotency-Key` request header of acquire, for the OpenAPI document.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the header for OpenAPI only")]
pub struct IdempotencyKeyParam {
    /// Makes a retry safe: a repeat of an acquire that was granted, with the same key, by
    /// the same agent, for the same resource, while that lease lasts, gets the same grant
    /// (same token) back, marked `Idempotent-Replayed: true`, and changes nothing. 1 to
    /// 255 visible ASCII characters; a UUID is ideal.
    #[param(rename = "Idempotency-Key", required = false, value_type = String,
        pattern = "^[!-~]{1,255}$", example = "7d0b7c2e-5f43-4a54-9d6f-0c1c7a3e9b21")]
    idempotency_key: Option<String>,
}

/// The `Lock-Token` request header of release, which `force=true` does without.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the header for OpenAPI only")]
pub struct ReleaseTokenParam {
    /// The `token` that acquire returned; required unless `force=true`. The pattern is the
    /// shape lockd issues (a hyphenated UUID); anything else is 400 `invalid_lock_token`.
    #[param(
        rename = "Lock-Token",
        required = false,
        value_type = String,
        pattern = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
        example = "6f1c1d1e-8a43-4d5f-9a8e-0c2b5d4e7f10"
    )]
    lock_token: Option<String>,
}

/// Acquire a lock.
///
/// Grants the lock on `resource_id` to `agent_id` for `ttl_ms`, or answers 409 when it
/// is held. With `wait_ms`, the server waits up to that long for the lock to be released
/// or to expire. The response carries the lock `token` (also in the `Lock-Token` header)
/// and a `fencing_token` that is greater than every earlier one for this resource.
/// A 5xx or a broken connection means the outcome is unknown: the lock may have been
/// granted, and then it runs out with its lease.
#[utoipa::path(
    post,
    path = "/locks/{resource_id}",
    tag = "locks",
    params(ResourceIdParam, IdempotencyKeyParam),
    request_body(content = AcquireRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Acquired. The token is in the body and in `Lock-Token`.",
            body = LockGrant,
            headers(
                ("Location" = String, description = "The lock's URL, `/locks/{resource_id}`"),
                ("Lock-Token" = String, description = "The lock token, as in the body"),
                ("Idempotent-Replayed" = String,
                    description = "`true` when this is the grant an earlier request with the same `Idempotency-Key` got; absent otherwise"),
            ),
            links(
                ("get_lock" = (operation_id = "get_lock",
                    parameters(("resource_id" = "$request.path.resource_id")),
                    description = "Status of the lock just acquired")),
                ("refresh_lock" = (operation_id = "refresh_lock",
                    parameters(("resource_id" = "$request.path.resource_id"),
                        ("Lock-Token" = "$response.header.Lock-Token")),
                    description = "Extend the lease just granted")),
                ("release_lock" = (operation_id = "release_lock",
                    parameters(("resource_id" = "$request.path.resource_id"),
                        ("Lock-Token" = "$response.header.Lock-Token")),
                    description = "Release the lock just acquired")),
            )),
        (status = 400, description = "`invalid_resource_id`, `invalid_idempotency_key`, or `malformed_json` (the body is not JSON)",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_resource_id),
        (status = 403, description = "`forbidden`: the API key lacks the `lock` scope, or may not act as `agent_id`",
            body = Problem, content_type = "application/problem+json", example = examples::forbidden),
        (status = 409, description = "`lock_held`: still held after `wait_ms` (by anyone, the caller included)",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Whole seconds until the current lease ends, at least 1")), example = examples::lock_held),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB",
            body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as `application/json`",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_body`, `invalid_agent_id`, `invalid_ttl_ms` or `invalid_wait_ms`: \
            wrong types, missing or unknown fields, or out-of-range values",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_ttl_ms),
        (status = 503, description = "`store_unavailable` (Redis unavailable: the outcome is unknown), \
            `shutting_down` (the server stopped while the request waited), or `waiter_limit` \
            (`locks.max_waiters` requests already wait; acquires without `wait_ms` are not limited)",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")), example = examples::store_unavailable),
    )
)]
pub async fn acquire_lock(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ResourcePath(resource_id): ResourcePath,
    request_headers: HeaderMap,
    ApiJson(request): ApiJson<AcquireRequest>,
) -> Result<(StatusCode, HeaderMap, Json<LockGrant>), ApiError> {
    principal.require(Scope::Lock)?;
    let limits = &state.locks;
    let agent = AgentId::parse(request.agent_id).map_err(ApiError::InvalidAgentId)?;
    principal.may_act_as(agent.as_str())?;
    let idempotency = request_headers
        .get("idempotency-key")
        .map(|value| {
            let text = value.to_str().map_err(|_| {
                ApiError::InvalidIdempotencyKey(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?;
            IdempotencyKey::parse(text)
                .map(|key| key.for_caller(&principal.name))
                .map_err(ApiError::InvalidIdempotencyKey)
        })
        .transpose()?;
    let ttl_ms = request.ttl_ms.unwrap_or(limits.default_ttl_ms);
    if !(1..=limits.max_ttl_ms).contains(&ttl_ms) {
        return Err(ApiError::InvalidTtl {
            got: ttl_ms,
            max: limits.max_ttl_ms,
        });
    }
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > limits.max_wait_ms {
        return Err(ApiError::InvalidWait {
            got: wait_ms,
            max: limits.max_wait_ms,
        });
    }

    let token = LockToken::generate();
    let started = Instant::now();
    let outcome = if wait_ms == 0 {
        state
            .store
            .acquire(&resource_id, &agent, &token, ttl_ms, idempotency.as_ref())
            .await?
    } else {
        acquire_waiting(
            &state,
            &resource_id,
            &agent,
            &token,
            ttl_ms,
            idempotency.as_ref(),
            started + Duration::from_millis(wait_ms),
        )
        .await?
    };

    let mut headers = HeaderMap::new();
    let (lease, token) = match outcome {
        Acquired::Granted(lease) => {
            crate::metrics::granted((wait_ms > 0).then(|| started.elapsed()));
            (lease, token)
        }
        Acquired::Replayed(lease, token) => {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            (lease, token)
        }
        Acquired::Held(holder) => {
            crate::metrics::contended();
            return Err(ApiError::LockHeld {
                resource_id: resource_id.to_string(),
                holder,
            });
        }
    };
    headers.insert(header::LOCATION, lock_location(&resource_id));
    headers.insert(
        HeaderName::from_static(LOCK_TOKEN),
        HeaderValue::try_from(token.to_string()).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let grant = LockGrant::new(&resource_id, &token, lease);
    Ok((StatusCode::CREATED, headers, Json(grant)))
}

/// One acquire attempt of a waiting request, run as its own task. If the request goes
/// away (the client disconnected, the request timed out) while the script is on its
/// way, the attempt still ends, and a lock it granted, which nobody will hear of, is
/// released at once: a client that leaves while waiting acquires nothing.
struct DetachedAttempt {
    task: Option<tokio::task::JoinHandle<Result<Acquired, crate::store::StoreError>>>,
    store: crate::store::Store,
    resource_id: ResourceId,
    token: LockToken,
}

impl DetachedAttempt {
    fn start(
        state: &AppState,
        resource_id: &ResourceId,
        agent: &AgentId,
        token: &LockToken,
        ttl_ms: u64,
        idempotency: Option<&IdempotencyKey>,
    ) -> Self {
        let (store, id, agent, token_copy, key) = (
            state.store.clone(),
            resource_id.clone(),
            agent.clone(),
            token.clone(),
            idempotency.cloned(),
        );
        let task = tokio::spawn(async move {
            store
                .acquire(&id, &agent, &token_copy, ttl_ms, key.as_ref())
                .await
        });
        Self {
            task: Some(task),
            store: state.store.clone(),
            resource_id: resource_id.clone(),
            token: token.clone(),
        }
    }

    async fn outcome(mut self) -> Result<Acquired, ApiError> {
        let Some(task) = self.task.as_mut() else {
            return Err(ApiError::Internal("attempt awaited twice".into()));
        };
        let joined = task.await;
        self.task = None;
        Ok(joined.map_err(|e| ApiError::Internal(e.to_string()))??)
    }
}

impl Drop for DetachedAttempt {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (store, id, token) = (
            self.store.clone(),
            self.resource_id.clone(),
            self.token.clone(),
        );
        tokio::spawn(async move {
            if let Ok(Ok(Acquired::Granted(_))) = task.await {
                let any = crate::domain::AgentPattern::any();
                let released = store.release(&id, Releaser::Holder(&token, &any)).await;
                tracing::info!(
                    resource_id = %id,
                    released = matches!(released, Ok(Owned::Done(()))),
                    "released a lock granted to a request that had gone away"
                );
            }
        });
    }
}

/// Tries to acquire until `deadline`, sleeping between attempts until the lock is
/// released (an event wakes us), its lease ends (a timer), or the deadline passes.
/// If the client goes away, hyper drops this future and the wait ends with it (see
/// [`DetachedAttempt`] for an attempt already under way). Returns `Held` when the lock
/// is still held at the deadline.
async fn acquire_waiting(
    state: &AppState,
    resource_id: &ResourceId,
    agent: &AgentId,
    token: &LockToken,
    ttl_ms: u64,
    idempotency: Option<&IdempotencyKey>,
    deadline: Instant,
) -> Result<Acquired, ApiError> {
    let registration = state
        .waiters
        .register(resource_id.as_str(), state.locks.max_waiters)
        .ok_or_else(|| {
            crate::metrics::rejected("waiter_limit");
            ApiError::WaiterLimit
        })?;
    loop {
        // Enabled before the attempt, so a release between the attempt and the sleep
        // still wakes us.
        let released = registration.notify().notified();
        tokio::pin!(released);
        released.as_mut().enable();

        let attempt = DetachedAttempt::start(state, resource_id, agent, token, ttl_ms, idempotency);
        let holder = match attempt.outcome().await? {
            Acquired::Held(holder) => holder,
            done => return Ok(done),
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(Acquired::Held(holder));
        }
        // At least a millisecond, so a lease ending right now cannot make us spin.
        let lease_end = now + Duration::from_millis(holder.remaining_ms.max(1));
        tokio::select! {
            () = &mut released => {}
            () = tokio::time::sleep_until(lease_end.min(deadline)) => {}
            () = state.shutdown.cancelled() => return Err(ApiError::ShuttingDown),
        }
    }
}

/// Query of `DELETE /locks/{resource_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReleaseQuery {
    /// `true`: release whoever holds the lock, without its token (needs the `admin`
    /// scope). The `resource.unlocked` event then says `reason: "forced"`.
    #[param(required = false, value_type = bool)]
    pub force: Option<bool>,
}

/// Release a lock.
///
/// Ends the lease held under the `Lock-Token` header and emits `resource.unlocked`.
/// Only the holder's token works; nothing changes otherwise. An administrator can end
/// anyone's lease with `force=true` instead of a token.
#[utoipa::path(
    delete,
    path = "/locks/{resource_id}",
    tag = "locks",
    params(ResourceIdParam, ReleaseTokenParam, ReleaseQuery),
    responses(
        (status = 204, description = "Released; `resource.unlocked` went out"),
        (status = 400, description = "`invalid_resource_id`, `missing_lock_token`, `invalid_lock_token`, \
            or `invalid_query` (`force` is not `true` or `false`)",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_lock_token),
        (status = 403, description = "`forbidden`: the API key lacks the `lock` scope (`admin` for `force`), \
            or may not act as the lock's holder",
            body = Problem, content_type = "application/problem+json", example = examples::forbidden),
        (status = 404, description = "`lock_not_found`: nothing holds the lock (it expired or was never taken)",
            body = Problem, content_type = "application/problem+json", example = examples::lock_not_found),
        (status = 409, description = "`not_lock_owner`: held under another token; nothing changed",
            body = Problem, content_type = "application/problem+json", example = examples::not_lock_owner),
        (status = 503, description = "`store_unavailable`: Redis unavailable; the outcome is unknown",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")), example = examples::store_unavailable),
    )
)]
pub async fn release_lock(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ResourcePath(resource_id): ResourcePath,
    query: Result<Query<ReleaseQuery>, QueryRejection>,
    token: Result<LockTokenHeader, ApiError>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let force = query.force.unwrap_or(false);
    let token = if force {
        principal.require(Scope::Admin)?;
        // A forced release needs no token, but a malformed one is still refused: a
        // malformed request changes nothing.
        match token {
            Ok(_) | Err(ApiError::MissingLockToken) => None,
            Err(malformed) => return Err(malformed),
        }
    } else {
        principal.require(Scope::Lock)?;
        Some(token?.0)
    };
    let releaser = match &token {
        Some(token) => Releaser::Holder(token, &principal.agents),
        None => Releaser::Force,
    };
    match state.store.release(&resource_id, releaser).await? {
        Owned::Done(()) => {
            crate::metrics::released(if force { "forced" } else { "released" });
            Ok(StatusCode::NO_CONTENT)
        }
        Owned::NotFound => Err(ApiError::LockNotFound(resource_id.to_string())),
        Owned::NotOwner(holder) => Err(ApiError::NotLockOwner {
            resource_id: resource_id.to_string(),
            holder,
        }),
        Owned::Forbidden(agent) => Err(forbidden_agent(&principal, &agent)),
    }
}

/// The 403 for a lock held by an agent the caller's key does not cover.
fn forbidden_agent(principal: &Principal, agent: &str) -> ApiError {
    principal.may_act_as(agent).err().unwrap_or_else(|| {
        ApiError::Forbidden(format!(
            "API key {} may not act as agent {agent}",
            principal.name
        ))
    })
}

/// Refresh a lock.
///
/// Sets the lease held under the `Lock-Token` header to end `ttl_ms` from now (default:
/// the lease's original length) and emits `resource.refreshed`. The body is optional.
/// A lease that has already run out is never revived (404).
#[utoipa::path(
    patch,
    path = "/locks/{resource_id}",
    tag = "locks",
    params(ResourceIdParam, LockTokenParam),
    request_body(content = Option<RefreshRequest>, content_type = "application/json",
        description = "Optional: without a body (and without `Content-Type`) the lease gets its original length"),
    responses(
        (status = 200, description = "Refreshed: same `token` and `fencing_token`, new `expires_at`",
            body = LockGrant),
        (status = 400, description = "`invalid_resource_id`, `missing_lock_token`, `invalid_lock_token` or `malformed_json`",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_lock_token),
        (status = 403, description = "`forbidden`: the API key lacks the `lock` scope, or may not act as the lock's holder",
            body = Problem, content_type = "application/problem+json", example = examples::forbidden),
        (status = 404, description = "`lock_not_found`: nothing holds the lock; an expired lease is never revived",
            body = Problem, content_type = "application/problem+json", example = examples::lock_not_found),
        (status = 409, description = "`not_lock_owner`: held under another token; nothing changed",
            body = Problem, content_type = "application/problem+json", example = examples::not_lock_owner),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB",
            body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: a body without `Content-Type: application/json`",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_body` or `invalid_ttl_ms`: wrong types, unknown fields or out-of-range values",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_ttl_ms),
        (status = 503, description = "`store_unavailable`: Redis unavailable; the outcome is unknown",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")), example = examples::store_unavailable),
    )
)]
pub async fn refresh_lock(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ResourcePath(resource_id): ResourcePath,
    LockTokenHeader(token): LockTokenHeader,
    OptionalApiJson(request): OptionalApiJson<RefreshRequest>,
) -> Result<Json<LockGrant>, ApiError> {
    principal.require(Scope::Lock)?;
    let ttl_ms = request.and_then(|r| r.ttl_ms);
    if let Some(ttl_ms) = ttl_ms {
        let max = state.locks.max_ttl_ms;
        if !(1..=max).contains(&ttl_ms) {
            return Err(ApiError::InvalidTtl { got: ttl_ms, max });
        }
    }
    match state
        .store
        .refresh(&resource_id, &token, ttl_ms, &principal.agents)
        .await?
    {
        Owned::Done(lease) => {
            crate::metrics::refreshed();
            Ok(Json(LockGrant::new(&resource_id, &token, lease)))
        }
        Owned::NotFound => Err(ApiError::LockNotFound(resource_id.to_string())),
        Owned::NotOwner(holder) => Err(ApiError::NotLockOwner {
            resource_id: resource_id.to_string(),
            holder,
        }),
        Owned::Forbidden(agent) => Err(forbidden_agent(&principal, &agent)),
    }
}

/// Get a lock's status.
///
/// Always 200: whether the resource is locked and, if so, by whom and until when.
/// The token is never shown. `HEAD` answers the same without a body.
#[utoipa::path(
    get,
    path = "/locks/{resource_id}",
    tag = "locks",
    params(ResourceIdParam),
    responses(
        (status = 200, description = "The lock's status: `{resource_id, locked: false}` when free",
            body = LockStatus),
        (status = 400, description = "`invalid_resource_id`",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_resource_id),
        (status = 503, description = "`store_unavailable`: Redis unavailable",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")), example = examples::store_unavailable),
    )
)]
pub async fn get_lock(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    ResourcePath(resource_id): ResourcePath,
) -> Result<Json<LockStatus>, ApiError> {
    principal.require(Scope::Read)?;
    let held = state.store.status(&resource_id).await?;
    let resource_id = resource_id.to_string();
    Ok(Json(match held {
        None => LockStatus {
            resource_id,
            locked: false,
            agent_id: None,
            fencing_token: None,
            acquired_at: None,
            expires_at: None,
            ttl_remaining_ms: None,
        },
        Some(held) => LockStatus::held(resource_id, held),
    }))
}

/// List held locks.
///
/// The locks held now, in resource-id byte order, optionally only those whose id starts
/// with `prefix`, a page at a time. Served from lockd's lease index, never by scanning
/// the Redis keyspace.
#[utoipa::path(
    get,
    path = "/locks",
    tag = "locks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of held locks", body = LockList),
        (status = 400, description = "`invalid_query`: an unknown, malformed or out-of-range query parameter, \
            or a cursor that `GET /locks` did not return",
            body = Problem, content_type = "application/problem+json", example = examples::invalid_query),
        (status = 503, description = "`store_unavailable`: Redis unavailable",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying")), example = examples::store_unavailable),
    )
)]
pub async fn list_locks(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<LockList>, ApiError> {
    principal.require(Scope::Read)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {MAX_PAGE} (got {limit})"
        )));
    }
    let prefix = query.prefix.unwrap_or_default();
    if !prefix.is_empty() {
        ResourceId::parse(prefix.clone())
            .map_err(|e| ApiError::InvalidQuery(format!("prefix: {e}")))?;
    }
    let after = query
        .cursor
        .filter(|cursor| !cursor.is_empty())
        .map(|cursor| decode_cursor(&cursor))
        .transpose()?;
    let page = state
        .store
        .list(&prefix, after.as_deref(), limit as usize)
        .await?;
    Ok(Json(LockList {
        locks: page
            .locks
            .into_iter()
            .map(|(resource_id, held)| LockStatus::held(resource_id, held))
            .collect(),
        next_cursor: page.next_after.as_deref().map(encode_cursor),
    }))
}

/// Cursors are the last resource id of a page, hex-encoded: opaque to clients, safe in
/// a query string, and checkable.
fn encode_cursor(after: &str) -> String {
    after.bytes().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::InvalidQuery("cursor is not one that GET /locks returned".into());
    if !cursor.len().is_multiple_of(2) || cursor.len() > 2 * crate::domain::MAX_RESOURCE_ID_BYTES {
        return Err(invalid());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(cursor.get(at..at + 2).ok_or_else(invalid)?, 16)
                .map_err(|_| invalid())
        })
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// `/locks/` with nothing after it names no resource.
pub async fn empty_resource_id() -> ApiError {
    ApiError::InvalidResourceId("the resource id after /locks/ must not be empty".into())
}

/// `/locks/{resource_id}` with the id percent-encoded where a path needs it; `/` and
/// `:` stay as they are, so the URL reads like the id.
fn lock_location(resource_id: &ResourceId) -> HeaderValue {
    let mut location = String::from("/locks/");
    for byte in resource_id.as_str().bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte);
        if keep {
            location.push(char::from(byte));
        } else {
            location.push_str(&format!("%{byte:02X}"));
        }
    }
    // Only visible ASCII remains, which is always a valid header value.
    HeaderValue::try_from(location).unwrap_or_else(|_| HeaderValue::from_static("/locks/"))
}

/// Example problem documents for the OpenAPI document, made by the errors themselves so
/// they cannot drift from what lockd sends.
mod examples {
    use serde_json::Value;

    use crate::error::{ApiError, Holder};
    use crate::time::UnixMillis;

    const RESOURCE: &str = "file:src/main.py";

    fn problem(error: &ApiError) -> Value {
        serde_json::to_value(error.to_problem()).unwrap_or_default()
    }

    fn holder() -> Holder {
        Holder {
            agent_id: "agent-feature-dev".into(),
            expires_at: UnixMillis(1_795_705_635_399),
            remaining_ms: 29_417,
        }
    }

    pub(super) fn invalid_resource_id() -> Value {
        problem(&ApiError::InvalidResourceId(
            "resource id must not contain control characters (found U+0007)".into(),
        ))
    }

    pub(super) fn invalid_lock_token() -> Value {
        problem(&ApiError::InvalidLockToken(
            "Lock-Token must be the token returned by acquire (a UUID)".into(),
        ))
    }

    pub(super) fn invalid_query() -> Value {
        problem(&ApiError::InvalidQuery(
            "limit must be between 1 and 1000 (got 0)".into(),
        ))
    }

    pub(super) fn invalid_ttl_ms() -> Value {
        problem(&ApiError::InvalidTtl {
            got: 0,
            max: 3_600_000,
        })
    }

    pub(super) fn forbidden() -> Value {
        problem(&ApiError::Forbidden(
            "API key ci may not act as agent prod-7 (it covers ci-*)".into(),
        ))
    }

    pub(super) fn lock_held() -> Value {
        problem(&ApiError::LockHeld {
            resource_id: RESOURCE.into(),
            holder: holder(),
        })
    }

    pub(super) fn lock_not_found() -> Value {
        problem(&ApiError::LockNotFound(RESOURCE.into()))
    }

    pub(super) fn not_lock_owner() -> Value {
        problem(&ApiError::NotLockOwner {
            resource_id: RESOURCE.into(),
            holder: holder(),
        })
    }

    pub(super) fn store_unavailable() -> Value {
        problem(&ApiError::StoreUnavailable(crate::store::StoreError::Pool(
            "example".into(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lengths_may_be_written_as_whole_floats_but_not_fractions() {
        let parse = |json: &str| serde_json::from_str::<AcquireRequest>(json).map(|r| r.ttl_ms);
        assert_eq!(parse(r#"{"agent_id": "a"}"#).unwrap(), None);
        assert_eq!(parse(r#"{"agent_id": "a", "ttl_ms": null}"#).unwrap(), None);
        assert_eq!(
            parse(r#"{"agent_id": "a", "ttl_ms": 30000}"#).unwrap(),
            Some(30_000)
        );
        assert_eq!(
            parse(r#"{"agent_id": "a", "ttl_ms": 30000.0}"#).unwrap(),
            Some(30_000)
        );
        assert_eq!(
            parse(r#"{"agent_id": "a", "ttl_ms": 3e4}"#).unwrap(),
            Some(30_000)
        );
        for bad in ["0.5", "-1", "-1.0", "\"30000\"", "true"] {
            let json = format!(r#"{{"agent_id": "a", "ttl_ms": {bad}}}"#);
            assert!(parse(&json).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        for id in ["a", "file:src/main.py", "ü/ファイル"] {
            assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        }
        for bad in ["a", "zz", "ff", "0", "c3"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn location_encodes_what_a_path_cannot_hold() {
        let id = ResourceId::parse("file:src/main.py".into()).unwrap();
        assert_eq!(lock_location(&id), "/locks/file:src/main.py");
        let id = ResourceId::parse("a b?c#d%e/ü".into()).unwrap();
        assert_eq!(lock_location(&id), "/locks/a%20b%3Fc%23d%25e/%C3%BC");
    }
}
