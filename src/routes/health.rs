//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::error::{ApiError, Problem};

/// Body of the probes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` for liveness, `ready` for readiness.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up and serving HTTP.
///
/// Answers 200 without touching Redis, so an orchestrator does not restart lockd while
/// Redis is down (lockd recovers by itself when Redis returns).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Prometheus metrics: requests, grants, waits, contention, expiries, event-stream
/// clients, Redis errors and rejections.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4")))]
pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Readiness: Redis answers and the event subscription is up, so lock requests,
/// waits and event streams can all be served.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Redis answers", body = Health),
        (status = 503, description = "`store_unavailable` (Redis does not answer, or another instance on this key prefix has a different `redis.partitions`) or `events_unavailable` (the event subscription is down)", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u64, description = "Seconds to wait before retrying"),
        )),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await?;
    if !state.hub.is_live() {
        return Err(ApiError::EventsUnavailable);
    }
    Ok(Json(Health { status: "ready" }))
}
