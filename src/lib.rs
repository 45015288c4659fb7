//! lockd: a distributed lock service over HTTP, on Redis.
//!
//! Agents take short-lived, fenced leases on named resources; every change is one
//! atomic Lua script in Redis that also records and publishes its event.
//!
//! # Layout
//! - [`config`] — the typed settings tree and its layered loading.
//! - [`domain`] — `ResourceId`, `AgentId`, `LockToken`: parsed at the edge, valid after.
//! - [`store`] — the only code that knows Redis keys and the Lua scripts
//!   (`src/store/scripts/*.lua`).
//! - [`events`] — the one Pub/Sub subscription per process, and the local waiters it wakes.
//! - [`routes`] — thin axum handlers and the middleware stack.
//! - [`error`] — the one error type; every 4xx/5xx is an RFC 9457 problem document.
//! - [`auth`] — bearer API keys, their agent globs and scopes.
//! - [`metrics`] — the Prometheus counters and histograms behind `GET /metrics`.
//! - [`openapi`] — the utoipa document behind `openapi/openapi.json`.
//! - [`server`] — the accept loop (header-read timeout, graceful drain).
//! - [`app`] — startup, shared by `main` and the tests.
//! - [`telemetry`] — logging.
//! - [`time`] — RFC 3339 formatting of Redis timestamps.

pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;

pub use app::Application;
pub use config::Settings;
