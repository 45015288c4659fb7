//! Prometheus metrics, rendered by `GET /metrics`.
//!
//! One process-wide recorder. Counters and histograms are named `lockd_*`; the helpers
//! here are the only places that spell the names, so dashboards have one source.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns the handle that renders it.
///
/// # Panics
/// If another metrics recorder was installed first, which lockd never does.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            const LATENCY: &[f64] = &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// One HTTP request, by route template (never the raw path: resource ids are unbounded).
pub fn request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("lockd_http_requests_total", &labels).increment(1);
    metrics::histogram!(
        "lockd_http_request_duration_seconds",
        "method" => method.to_owned(),
        "route" => route.to_owned()
    )
    .record(elapsed.as_secs_f64());
}

/// A lock was granted; `waited` is how long the request waited for it.
pub fn granted(waited: Option<Duration>) {
    metrics::counter!("lockd_lock_grants_total").increment(1);
    if let Some(waited) = waited {
        metrics::histogram!("lockd_lock_wait_seconds").record(waited.as_secs_f64());
    }
}

/// An acquire found the lock held (after any wait): contention.
pub fn contended() {
    metrics::counter!("lockd_lock_conflicts_total").increment(1);
}

/// A lock was released (`released` by its holder or `forced` by an administrator).
pub fn released(reason: &'static str) {
    metrics::counter!("lockd_lock_releases_total", "reason" => reason).increment(1);
}

/// A lease was refreshed.
pub fn refreshed() {
    metrics::counter!("lockd_lock_refreshes_total").increment(1);
}

/// The reaper announced `count` expired leases.
pub fn expired(count: u64) {
    metrics::counter!("lockd_lock_expiries_total").increment(count);
}

/// Waiting acquires in this process went up (+1) or down (-1).
pub fn waiters(delta: f64) {
    metrics::gauge!("lockd_waiters").increment(delta);
}

/// Event-stream clients in this process went up (+1) or down (-1).
pub fn sse_clients(delta: f64) {
    metrics::gauge!("lockd_sse_clients").increment(delta);
}

/// An event-stream client was disconnected for falling behind.
pub fn sse_slow_disconnect() {
    metrics::counter!("lockd_sse_slow_disconnects_total").increment(1);
}

/// Open client connections went up (+1) or down (-1).
pub fn connections(delta: f64) {
    metrics::gauge!("lockd_connections").increment(delta);
}

/// A Redis call failed (unreachable, timed out, or refused).
pub fn redis_error(kind: &'static str) {
    metrics::counter!("lockd_redis_errors_total", "kind" => kind).increment(1);
}

/// A request was turned away by a limit or by access control.
pub fn rejected(limit: &'static str) {
    metrics::counter!("lockd_rejections_total", "reason" => limit).increment(1);
}
