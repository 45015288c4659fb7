//! `GET /events`: lock events as Server-Sent Events.
//!
//! A client is registered with the [`Hub`](crate::events::Hub) before anything is read
//! from the stream, so a resume (`Last-Event-ID`) replays the stream and then goes live
//! with no gap; ids already replayed are skipped on the live side, so there is no
//! duplicate at the seam either. Frames are rendered once per event and shared by all
//! clients. The stream ends at shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::events::{Cursor, EventKind, Filter, RawEvent, Refused, Subscription};
use crate::server::ConnectionCloser;
use crate::store::Store;

/// Query of `GET /events`; every filter is optional and they combine with AND.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of exactly this resource. Empty means any.
    #[param(required = false, value_type = String, example = "file:src/main.py")]
    pub resource_id: Option<String>,
    /// Only events of resources whose id starts with this. Empty means any.
    #[param(required = false, value_type = String, example = "file:src/")]
    pub prefix: Option<String>,
    /// Only these event types, comma-separated (`types=resource.locked,resource.unlocked`).
    /// Empty means all; an unknown type is 400 `invalid_query`.
    #[param(required = false, value_type = Vec<EventType>, style = Form, explode = false,
        example = json!(["resource.locked", "resource.unlocked"]))]
    pub types: Option<String>,
}

/// The `Last-Event-ID` request header, for the OpenAPI document.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "describes the header for OpenAPI only")]
pub struct ResumeHeader {
    /// Resume after this event id (the `id` of the last event received). Empty counts as
    /// absent; anything that is not an event id of this deployment is 400
    /// `invalid_last_event_id`. With one partition (`redis.partitions`) an id is a Redis
    /// stream id; with several, one position per partition joined by `.`, and the
    /// document a deployment serves at `/openapi.json` gives the pattern of its own ids.
    #[param(required = false, rename = "Last-Event-ID", value_type = String,
        pattern = "^([0-9]{1,19}-[0-9]{1,19})?$", example = "1764164400123-0")]
    last_event_id: Option<String>,
}

/// A lock event, as each SSE `data:` line carries it and as Redis Pub/Sub publishes it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "1764164400123-0",
    "type": "resource.locked",
    "resource_id": "file:src/main.py",
    "agent_id": "agent-feature-dev",
    "fencing_token": 1764164400123456u64,
    "at": "2026-11-26T13:40:00.123Z",
    "expires_at": "2026-11-26T13:40:30.123Z"
}))]
pub struct LockEvent {
    /// Opaque event id: where the stream stands with this event. Send it back as
    /// `Last-Event-ID` to resume after it.
    #[schema(pattern = "^[0-9]{1,19}-[0-9]{1,19}$", example = "1764164400123-0")]
    pub id: String,
    /// `resource.locked`, `resource.refreshed` or `resource.unlocked`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The resource.
    pub resource_id: String,
    /// The holder whose lease changed.
    pub agent_id: String,
    /// The fencing token of that lease (below 2^53).
    #[schema(maximum = 9_007_199_254_740_991_u64)]
    pub fencing_token: u64,
    /// When the change took effect; for an expiry, the lease's end.
    #[schema(format = DateTime)]
    pub at: String,
    /// Only in `resource.locked` and `resource.refreshed`: when the lease ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Option<String>,
    /// Only in `resource.unlocked`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = UnlockReason)]
    pub reason: Option<UnlockReason>,
}

/// The event types.
#[derive(Debug, Serialize, ToSchema)]
pub enum EventType {
    /// A lock was acquired.
    #[serde(rename = "resource.locked")]
    Locked,
    /// A lease was extended.
    #[serde(rename = "resource.refreshed")]
    Refreshed,
    /// A lock was released, or its lease ran out.
    #[serde(rename = "resource.unlocked")]
    Unlocked,
}

/// Why a lock was unlocked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnlockReason {
    /// Its holder released it.
    Released,
    /// Its lease ran out.
    Expired,
    /// An administrator released it with `force=true`.
    Forced,
}

/// Sent first when a resume asks for events older than the stream still holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamGap {
    /// Always `stream.gap`.
    #[serde(rename = "type")]
    #[schema(schema_with = stream_gap_type)]
    pub gap_type: &'static str,
    /// The `Last-Event-ID` the client sent.
    #[schema(example = "1764164400123-0")]
    pub requested_id: String,
    /// The oldest event the stream still holds (null when it holds none, and with several
    /// partitions, where no one event id says it).
    #[schema(required = true, example = "1764164500000-0")]
    pub oldest_id: Option<String>,
}

/// `StreamGap.type`: the one value `stream.gap`.
fn stream_gap_type() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .description(Some("Always `stream.gap`."))
        .enum_values(Some(["stream.gap"]))
        .build()
}

/// One Server-Sent Event of `GET /events`, as an SSE client parses it from the stream's
/// `id:`, `event:` and `data:` lines: the schema of the `text/event-stream` response.
///
/// `data` holds the event as JSON: a [`LockEvent`] whose `type` is `event`, or a
/// [`StreamGap`] when `event` is `stream.gap`. Written by hand because utoipa's derive
/// cannot express `contentSchema`.
pub struct EventFrame;

impl utoipa::PartialSchema for EventFrame {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Type};
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The event as one JSON document: a LockEvent, or a StreamGap for \
                 `event: stream.gap`",
            ))
            .content_media_type("application/json")
            .content_schema(Some(
                OneOfBuilder::new()
                    .item(Ref::from_schema_name("LockEvent"))
                    .item(Ref::from_schema_name("StreamGap")),
            ));
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]{1,19}-[0-9]{1,19}$"))
            .description(Some(
                "The event id, as in `data`; `stream.gap` has none. Reconnect with the last \
                 one as `Last-Event-ID`.",
            ));
        let event = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([
                "resource.locked",
                "resource.refreshed",
                "resource.unlocked",
                "stream.gap",
            ]))
            .description(Some("The event type, as in `data.type`"));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "One Server-Sent Event: its `id:`, `event:` and `data:` lines. The stream \
                 also carries a `retry:` line and keep-alive comments, which are not events.",
            ))
            .property("id", id)
            .property("event", event)
            .required("event")
            .property("data", data)
            .required("data")
            .examples([serde_json::json!({
                "id": "1764164400123-0",
                "event": "resource.locked",
                "data": "{\"id\":\"1764164400123-0\",\"type\":\"resource.locked\",\
                    \"resource_id\":\"file:src/main.py\",\"agent_id\":\"agent-feature-dev\",\
                    \"fencing_token\":1764164400123456,\"at\":\"2026-11-26T13:40:00.123Z\",\
                    \"expires_at\":\"2026-11-26T13:40:30.123Z\"}"
            })])
            .into()
    }
}

impl utoipa::ToSchema for EventFrame {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        for (name, schema) in [
            ("LockEvent", <LockEvent as utoipa::PartialSchema>::schema()),
            ("StreamGap", <StreamGap as utoipa::PartialSchema>::schema()),
        ] {
            schemas.push((name.into(), schema));
        }
        <LockEvent as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Events replayed from the stream per Redis call.
const REPLAY_PAGE: usize = 256;
/// The comment that keeps idle connections (and proxies) from timing out.
const KEEPALIVE: &[u8] = b":\n\n";

/// Stream lock events.
///
/// A `text/event-stream` of lock events: each has `id:`, `event:` (the type) and `data:`
/// (the event as JSON). Filters combine with AND. Reconnect with `Last-Event-ID` to get
/// every matching event after that id that the server still holds, then live events,
/// with no gap and no duplicate; if that id is older than the retained history, a
/// `stream.gap` event (without an id) comes first. Idle streams get a comment line every
/// `events.keepalive_ms`. A client too slow to keep up is disconnected; it can resume.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(
        EventsQuery,
        ResumeHeader,
    ),
    responses(
        (status = 200, description = "The event stream, until the client goes away or the server shuts down. \
            Each event's `data` is a LockEvent, or a StreamGap for `event: stream.gap`.",
            content_type = "text/event-stream", body = EventFrame),
        (status = 400, description = "`invalid_query` (an unknown event type or parameter) or \
            `invalid_last_event_id`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`key_event_client_limit`: this API key already has \
            `events.max_clients_per_key` streams open",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "`store_unavailable` (Redis unavailable while resuming) or \
            `event_client_limit` (the server has `events.max_clients` streams open)",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    closer: Option<Extension<ConnectionCloser>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Read)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let filter = parse_filter(query)?;
    let partitions = state.store.partitions();
    let resume = parse_last_event_id(&headers, partitions)?;

    // Registered first: whatever is published from here on reaches the client, and what
    // was published before is in the stream.
    let subscription = state
        .hub
        .subscribe(
            filter.clone(),
            state.events.client_buffer,
            closer.map(|Extension(ConnectionCloser(token))| token),
            Arc::clone(&principal.name),
        )
        .map_err(|refused| match refused {
            Refused::Total => {
                crate::metrics::rejected("event_client_limit");
                ApiError::EventClientLimit
            }
            Refused::PerOwner => {
                crate::metrics::rejected("key_event_client_limit");
                ApiError::KeyEventClientLimit(principal.name.to_string())
            }
        })?;

    let mut opening = BytesMut::new();
    opening.extend_from_slice(format!("retry: {}\n\n", state.events.retry_ms).as_bytes());
    let mut gap_told = false;
    if let Some(requested) = &resume {
        let store = &state.store;
        let bounds = futures_util::future::try_join_all(
            (0..partitions).map(|partition| store.event_log_bounds(partition)),
        )
        .await?;
        let missing = bounds
            .iter()
            .enumerate()
            .any(|(partition, bounds)| bounds.lost_after(requested.get(partition)));
        if missing {
            gap_told = true;
            // With one partition, the oldest event held is where the client can resume
            // from; with several, no one event id says that.
            let oldest_id = match bounds.as_slice() {
                [bounds] => bounds.first.map(|id| id.to_string()),
                _ => None,
            };
            let gap = StreamGap {
                gap_type: "stream.gap",
                requested_id: requested.to_string(),
                oldest_id,
            };
            let data =
                serde_json::to_string(&gap).map_err(|e| ApiError::Internal(e.to_string()))?;
            opening.extend_from_slice(format!("event: stream.gap\ndata: {data}\n\n").as_bytes());
        }
    }

    let feed = Feed {
        store: state.store.clone(),
        filter,
        subscription,
        opening: Some(opening.freeze()),
        replaying: resume.is_some().then_some(0),
        gap_told: gap_told.then(|| resume.clone()).flatten(),
        last: resume,
        keepalive: Duration::from_millis(state.events.keepalive_ms),
        shutdown: state.shutdown.clone(),
    };
    let body = Body::from_stream(stream::unfold(feed, Feed::next_chunk));

    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn parse_filter(query: EventsQuery) -> Result<Filter, ApiError> {
    let kinds = match query.types.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(list) => Some(
            list.split(',')
                .map(|name| {
                    EventKind::parse(name.trim()).ok_or_else(|| {
                        ApiError::InvalidQuery(format!(
                            "unknown event type {:?} in types; known types: {}",
                            name.trim(),
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Filter {
        resource_id: query.resource_id.filter(|id| !id.is_empty()),
        prefix: query.prefix.filter(|prefix| !prefix.is_empty()),
        kinds,
    })
}

/// `Last-Event-ID`: absent or empty means "live only".
fn parse_last_event_id(headers: &HeaderMap, partitions: usize) -> Result<Option<Cursor>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::InvalidLastEventId("Last-Event-ID is not ASCII".into()))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    Cursor::parse(text, partitions)
        .map(Some)
        .map_err(ApiError::InvalidLastEventId)
}

/// One client's event stream: the opening lines, then the replay, then live events.
struct Feed {
    store: Store,
    filter: Filter,
    subscription: Subscription,
    /// `retry:` and any `stream.gap`, sent first.
    opening: Option<Bytes>,
    /// Still replaying this partition's stream, after `last`'s position in it; the
    /// partitions after it follow.
    replaying: Option<usize>,
    /// The position resumed from, when a `stream.gap` told the client that events after
    /// it are gone.
    gap_told: Option<Cursor>,
    /// Where the client stands: per partition, the newest id sent (live events up to it
    /// were already replayed), or the position it resumed from.
    last: Option<Cursor>,
    keepalive: Duration,
    shutdown: CancellationToken,
}

type Chunk = Result<Bytes, std::convert::Infallible>;

impl Feed {
    async fn next_chunk(mut self) -> Option<(Chunk, Self)> {
        if let Some(opening) = self.opening.take() {
            return Some((Ok(opening), self));
        }
        while let Some(partition) = self.replaying {
            if self.shutdown.is_cancelled() {
                return None;
            }
            let last = self.last.as_mut()?;
            let after = last.get(partition);
            // Boxed: the Redis call's state is large, and an idle client's stream future
            // would otherwise carry room for it for as long as the connection lasts.
            let page = match Box::pin(self.store.events_after(partition, after, REPLAY_PAGE)).await
            {
                Ok(page) => page,
                Err(error) => {
                    // The client resumes from what it got, with Last-Event-ID.
                    tracing::warn!(%error, "cannot replay events; ending the stream");
                    return None;
                }
            };
            // The stream is capped: if it was trimmed past `after` while this client
            // replayed, the page began later than `after`'s successor. End the stream; the
            // client resumes from what it got and is told of the gap.
            let told = |told: &Cursor| told.get(partition) == after;
            match Box::pin(self.store.event_log_bounds(partition)).await {
                Ok(bounds)
                    if !bounds.lost_after(after) || self.gap_told.as_ref().is_some_and(told) => {}
                Ok(_) => {
                    tracing::warn!(%after, "history trimmed during a replay; ending the stream");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot replay events; ending the stream");
                    return None;
                }
            }
            self.replaying = if page.len() == REPLAY_PAGE {
                Some(partition)
            } else {
                Some(partition + 1).filter(|next| *next < self.store.partitions())
            };
            let mut chunk = BytesMut::new();
            for stored in page {
                last.set(partition, stored.id);
                match RawEvent::from_stored(stored.id, &stored.body) {
                    Ok(event) if self.filter.matches(event.kind, &event.resource_id) => {
                        chunk.extend_from_slice(&event.frame(last));
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "skipping a malformed stored event"),
                }
            }
            if !chunk.is_empty() {
                return Some((Ok(chunk.freeze()), self));
            }
        }
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                event = self.subscription.receiver.recv() => {
                    let event = event?;
                    let Some(last) = self.last.as_mut() else {
                        self.last = Some(event.cursor.clone());
                        return Some((Ok(event.frame.clone()), self));
                    };
                    if event.id <= last.get(event.partition) {
                        continue;
                    }
                    // The shared frame's id is where the process's history stands with
                    // this event. Fresh from a replay, the client can be further on in some
                    // partition than that: its id must then say so, or a resume from it
                    // would repeat events.
                    let frame = if event.cursor.covers(last) {
                        event.frame.clone()
                    } else {
                        last.advance_to(&event.cursor);
                        event.frame(last)
                    };
                    last.advance_to(&event.cursor);
                    return Some((Ok(frame), self));
                }
                () = tokio::time::sleep(self.keepalive) => {
                    return Some((Ok(Bytes::from_static(KEEPALIVE)), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle SSE client holds one of these futures for as long as it stays
    /// connected; keep it small (the Redis call of the replay is boxed for that).
    #[test]
    fn an_idle_clients_stream_state_stays_small() {
        fn size_of_future<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let settings = crate::config::Settings::defaults();
        let hub = crate::events::Hub::default();
        let feed = Feed {
            store: Store::new(&settings).unwrap(),
            filter: Filter::default(),
            subscription: hub
                .subscribe(Filter::default(), 8, None, Arc::from("test"))
                .unwrap(),
            opening: None,
            replaying: None,
            gap_told: None,
            last: None,
            keepalive: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
        };
        let size = size_of_future(&feed.next_chunk());
        assert!(
            size < 1024,
            "an idle client's stream future is {size} bytes"
        );
    }
}
