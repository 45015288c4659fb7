//! The OpenAPI document, generated from the handlers' annotations.
//!
//! `openapi/openapi.json` in the repository is this document; a test fails when the two
//! differ. Regenerate it with `cargo run -- openapi > openapi/openapi.json`.

use utoipa::OpenApi;

use crate::error::Problem;
use crate::routes::{events, health, locks};

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lockd",
        description = "A distributed lock service: leases with fencing tokens, released by \
            their holder's token, with every change published as an event. Errors are RFC 9457 \
            problem documents with a stable `code`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        locks::acquire_lock,
        locks::release_lock,
        locks::refresh_lock,
        locks::get_lock,
        locks::list_locks,
        events::stream_events,
        health::healthz,
        health::readyz,
    ),
    components(schemas(
        locks::AcquireRequest,
        locks::RefreshRequest,
        locks::LockGrant,
        locks::LockStatus,
        locks::LockList,
        events::LockEvent,
        events::StreamGap,
        health::Health,
        Problem,
    )),
    tags(
        (name = "locks", description = "Acquire, release, refresh and inspect locks"),
        (name = "events", description = "Lock events as Server-Sent Events"),
        (name = "operations", description = "Probes for orchestrators"),
    )
)]
pub struct ApiDoc;

/// The document as pretty-printed JSON, with a trailing newline (the committed form).
///
/// # Panics
/// Never in practice: the document is plain data that always serialises.
#[must_use]
pub fn document_json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}
