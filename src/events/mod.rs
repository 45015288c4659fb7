//! Events: the process's one Pub/Sub subscription and everything it feeds.
//!
//! The store's scripts append each event to the Redis stream and publish it, atomically
//! with the change (invariant 4). Here, one dedicated Pub/Sub connection per process
//! (never a pooled one) receives them, reconnects with backoff when Redis goes away and
//! fills the gap from the stream, then fans each event out in-process to:
//! - [`Waiters`]: acquire requests waiting for a busy lock (no polling, no connection
//!   per waiter: invariant 8);
//! - [`Hub`]: the SSE clients of `GET /events`, each with a bounded buffer; a client
//!   that cannot keep up is disconnected rather than buffered without bound.
//!
//! The [`reaper`] announces leases that run out (invariant 5).

mod hub;
mod id;
pub mod reaper;
pub mod subscriber;
mod waiters;

use bytes::Bytes;
use serde::Deserialize;

pub use hub::{Filter, Hub, HubLimits, Refused, Subscription};
pub use id::{Cursor, EventId};
pub use subscriber::run_subscriber;
pub use waiters::{WaitRegistration, Waiters};

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum EventKind {
    /// A lock was acquired.
    #[serde(rename = "resource.locked")]
    Locked,
    /// A lease was extended.
    #[serde(rename = "resource.refreshed")]
    Refreshed,
    /// A lock was released or its lease ran out.
    #[serde(rename = "resource.unlocked")]
    Unlocked,
}

impl EventKind {
    /// Every kind, for parsing and documentation.
    pub const ALL: [Self; 3] = [Self::Locked, Self::Refreshed, Self::Unlocked];

    /// The wire name, like `resource.locked`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "resource.locked",
            Self::Refreshed => "resource.refreshed",
            Self::Unlocked => "resource.unlocked",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// An event as Redis holds or publishes it, parsed but not yet placed in the history
/// that clients see.
#[derive(Debug)]
pub struct RawEvent {
    /// Its entry id in its partition's stream.
    pub id: EventId,
    /// What happened.
    pub kind: EventKind,
    /// To which resource.
    pub resource_id: String,
    /// The JSON document without its `id` member, as the stream keeps it.
    body: String,
}

/// The routing fields of an event document.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: EventKind,
    resource_id: String,
}

impl RawEvent {
    /// Parses an event as published: a JSON document that starts with its `id`.
    ///
    /// # Errors
    /// A message when the document is not a lockd event.
    pub fn from_published(json: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct WithId {
            id: String,
        }
        let WithId { id } = serde_json::from_str(json).map_err(|e| e.to_string())?;
        // The scripts publish `{"id":"<id>",` followed by the stored document's members.
        let rest = json
            .strip_prefix(&format!("{{\"id\":\"{id}\","))
            .ok_or_else(|| "the event does not start with its id".to_owned())?;
        Self::from_stored(id.parse()?, &format!("{{{rest}"))
    }

    /// Parses an event as the stream keeps it: the document without its `id`.
    ///
    /// # Errors
    /// A message when the document is not a lockd event.
    pub fn from_stored(id: EventId, body: &str) -> Result<Self, String> {
        if !body.starts_with('{') {
            return Err(format!("event {id} is not a JSON object"));
        }
        let head: Head = serde_json::from_str(body).map_err(|e| e.to_string())?;
        // The scripts write compact JSON, and ids cannot hold control characters, so the
        // document is one line: it fits a single `data:` field.
        if body.contains(['\n', '\r']) {
            return Err(format!("event {id} spans several lines"));
        }
        Ok(Self {
            id,
            kind: head.kind,
            resource_id: head.resource_id,
            body: body.to_owned(),
        })
    }

    /// The SSE frame (`id:`, `event:`, `data:`) of this event for a client that stands at
    /// `cursor` once it has it: the cursor is the event's `id`, in the frame and in the
    /// document alike.
    #[must_use]
    pub fn frame(&self, cursor: &Cursor) -> Bytes {
        let rest = &self.body[1..];
        Bytes::from(format!(
            "id: {cursor}\nevent: {}\ndata: {{\"id\":\"{cursor}\",{rest}\n\n",
            self.kind.as_str()
        ))
    }

    /// Places the event in the history: `cursor` is where the history stands with it
    /// (this event in its partition, the last one handed out in every other).
    #[must_use]
    pub fn place(self, partition: usize, cursor: Cursor) -> Event {
        Event {
            frame: self.frame(&cursor),
            partition,
            cursor,
            raw: self,
        }
    }
}

/// One event as handed out live, shared by every consumer.
#[derive(Debug)]
pub struct Event {
    /// The event itself.
    pub raw: RawEvent,
    /// The partition whose stream holds it.
    pub partition: usize,
    /// Where the history stands with this event.
    pub cursor: Cursor,
    /// The whole SSE frame (`id:`, `event:`, `data:`), rendered once for all clients.
    pub frame: Bytes,
}

impl std::ops::Deref for Event {
    type Target = RawEvent;

    fn deref(&self) -> &RawEvent {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_published_forms_give_the_same_frame() {
        let body = r#"{"type":"resource.locked","resource_id":"file:src\/a.py","agent_id":"a","fencing_token":5,"at":"2026-11-26T13:40:00.123Z","expires_at":"2026-11-26T13:40:30.123Z"}"#;
        let id: EventId = "1764164400123-0".parse().unwrap();
        let cursor = Cursor::parse("1764164400123-0", 1).unwrap();
        let stored = RawEvent::from_stored(id, body).unwrap();
        let published =
            RawEvent::from_published(&format!("{{\"id\":\"1764164400123-0\",{}", &body[1..]))
                .unwrap();
        assert_eq!(stored.frame(&cursor), published.frame(&cursor));
        assert_eq!(stored.resource_id, "file:src/a.py");
        assert_eq!(stored.kind, EventKind::Locked);
        let event = stored.place(0, cursor);
        let frame = std::str::from_utf8(&event.frame).unwrap();
        assert!(frame.starts_with("id: 1764164400123-0\nevent: resource.locked\ndata: {\"id\":\"1764164400123-0\",\"type\""));
        assert!(frame.ends_with("}\n\n"));
    }

    #[test]
    fn a_partitioned_frame_carries_the_cursor_as_its_id() {
        let body = r#"{"type":"resource.unlocked","resource_id":"r","agent_id":"a","fencing_token":5,"at":"2026-11-26T13:40:00.123Z","reason":"released"}"#;
        let raw = RawEvent::from_stored("7-1".parse().unwrap(), body).unwrap();
        let cursor = Cursor::parse("0.7-1.3-0", 3).unwrap();
        let frame = String::from_utf8(raw.frame(&cursor).to_vec()).unwrap();
        assert!(
            frame.starts_with(
                "id: 0.7-1.3-0\nevent: resource.unlocked\ndata: {\"id\":\"0.7-1.3-0\",\"type\""
            ),
            "{frame}"
        );
        let data: serde_json::Value = serde_json::from_str(
            frame
                .lines()
                .nth(2)
                .unwrap()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(data["id"], "0.7-1.3-0");
        assert_eq!(data["reason"], "released");
    }

    #[test]
    fn foreign_documents_are_refused() {
        assert!(RawEvent::from_published("{}").is_err());
        assert!(
            RawEvent::from_published(r#"{"id":"1-0","type":"other","resource_id":"r"}"#).is_err()
        );
        assert!(
            RawEvent::from_published(r#"{"type":"resource.locked","resource_id":"r","id":"1-0"}"#)
                .is_err()
        );
        assert!(RawEvent::from_stored(EventId::ZERO, "[]").is_err());
    }
}
