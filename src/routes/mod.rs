//! The HTTP surface: every route in one place, then the middleware stack in one order.

mod docs;
pub mod events;
mod extract;
pub mod health;
pub mod locks;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderName;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use axum::extract::MatchedPath;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{self, Authenticator};
use crate::config::{EventSettings, LockSettings, Settings};
use crate::error::ApiError;
use crate::events::{Hub, Waiters};
use crate::store::Store;

pub use extract::LOCK_TOKEN;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The lock store.
    pub store: Store,
    /// Local waiters of busy locks.
    pub waiters: Waiters,
    /// The SSE clients.
    pub hub: Hub,
    /// Lease and wait limits.
    pub locks: LockSettings,
    /// Event stream settings.
    pub events: EventSettings,
    /// Fires at shutdown; long waits end with it.
    pub shutdown: CancellationToken,
    /// Renders `GET /metrics`.
    pub metrics: PrometheusHandle,
}

/// How long requests may take.
#[derive(Clone, Copy)]
struct Timeouts {
    request: Duration,
    acquire: Duration,
}

/// Builds the application: routes, fallbacks and middleware.
pub fn router(state: AppState, settings: &Settings, authenticator: Authenticator) -> Router {
    let timeouts = Timeouts {
        request: settings.server.request_timeout(),
        acquire: settings.server.request_timeout()
            + Duration::from_millis(settings.locks.max_wait_ms),
    };
    let openapi_json = crate::openapi::document_json_for(settings.redis.partition_count());

    let routes = Router::new()
        .route(
            "/locks/{*resource_id}",
            post(locks::acquire_lock)
                .delete(locks::release_lock)
                .patch(locks::refresh_lock)
                .get(locks::get_lock),
        )
        .route("/locks", get(locks::list_locks))
        .route("/locks/", any(locks::empty_resource_id))
        .route("/events", get(events::stream_events))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::get_metrics))
        .route(
            "/openapi.json",
            get(
                move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi_json) },
            ),
        )
        .route("/docs", get(docs::docs_redirect))
        .route("/docs/", get(docs::docs_index))
        .route("/docs/{*path}", get(docs::docs_asset))
        .route_layer(middleware::from_fn(record_metrics))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);

    // Outermost first: every request gets an id before it is traced, and every response,
    // even one from a panic or a timeout, carries that id back.
    let app = routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request| {
                        let request_id = request
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id,
                        )
                    })
                    .on_response(DefaultOnResponse::new().level(Level::INFO))
                    // Every response is logged above with its status, and server-side
                    // causes where they arise; a second line per 5xx would only be noise.
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            )
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(middleware::from_fn_with_state(timeouts, request_timeout))
            .layer(middleware::from_fn_with_state(
                authenticator,
                auth::authenticate,
            ))
            .layer(DefaultBodyLimit::max(settings.server.max_body_bytes)),
    );
    // Outside everything else: preflights are answered before authentication, as
    // browsers send them without credentials, and errors get CORS headers too.
    match cors(&settings.server.cors_allowed_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

/// The CORS policy for browser pages on `origins`; `None` when no origin is allowed.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("lock-token"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("lock-token"),
                HeaderName::from_static("idempotent-replayed"),
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Bounds every request's time. Acquires get `locks.max_wait_ms` on top, since waiting
/// for the lock is part of their job.
async fn request_timeout(
    State(timeouts): State<Timeouts>,
    request: Request,
    next: Next,
) -> Response {
    let limit = if request.method() == Method::POST && request.uri().path().starts_with("/locks/") {
        timeouts.acquire
    } else {
        timeouts.request
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
            .into_response(),
    }
}

/// Counts and times each routed request by its route template.
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    crate::metrics::request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn route_not_found(request: Request) -> ApiError {
    ApiError::RouteNotFound(request.uri().path().to_owned())
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed(request.method().to_string())
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic message went to the log through the panic hook; the client learns nothing
    // of internals.
    let mut response = ApiError::Internal("handler panicked".into()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
