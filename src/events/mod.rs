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
pub use id::EventId;
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

/// One event, parsed once and shared by every consumer.
#[derive(Debug)]
pub struct Event {
    /// Its stream id.
    pub id: EventId,
    /// What happened.
    pub kind: EventKind,
    /// To which resource.
    pub resource_id: String,
    /// The whole SSE frame (`id:`, `event:`, `data:`), rendered once for all clients.
    pub frame: Bytes,
}

/// The routing fields of an event document.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: EventKind,
    resource_id: String,
}

impl Event {
    /// Parses an event as published: a JSON document with its `id`.
    ///
    /// # Errors
    /// A message when the document is not a lockd event.
    pub fn from_published(json: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct WithId {
            id: String,
        }
        let WithId { id } = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Self::new(id.parse()?, json)
    }

    /// Parses an event as the stream keeps it: the document without its `id`.
    ///
    /// # Errors
    /// A message when the document is not a lockd event.
    pub fn from_stored(id: EventId, body: &str) -> Result<Self, String> {
        // The same splice the Lua prelude makes when it publishes.
        let rest = body
            .strip_prefix('{')
            .ok_or_else(|| format!("event {id} is not a JSON object"))?;
        Self::new(id, &format!("{{\"id\":\"{id}\",{rest}"))
    }

    fn new(id: EventId, json: &str) -> Result<Self, String> {
        let head: Head = serde_json::from_str(json).map_err(|e| e.to_string())?;
        // The scripts write compact JSON, and ids cannot hold control characters, so the
        // document is one line: it fits a single `data:` field.
        if json.contains(['\n', '\r']) {
            return Err(format!("event {id} spans several lines"));
        }
        let frame = format!("id: {id}\nevent: {}\ndata: {json}\n\n", head.kind.as_str());
        Ok(Self {
            id,
            kind: head.kind,
            resource_id: head.resource_id,
            frame: Bytes::from(frame),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_published_forms_give_the_same_frame() {
        let body = r#"{"type":"resource.locked","resource_id":"file:src\/a.py","agent_id":"a","fencing_token":5,"at":"2026-11-26T13:40:00.123Z","expires_at":"2026-11-26T13:40:30.123Z"}"#;
        let id: EventId = "1764164400123-0".parse().unwrap();
        let stored = Event::from_stored(id, body).unwrap();
        let published =
            Event::from_published(&format!("{{\"id\":\"1764164400123-0\",{}", &body[1..])).unwrap();
        assert_eq!(stored.frame, published.frame);
        assert_eq!(stored.resource_id, "file:src/a.py");
        assert_eq!(stored.kind, EventKind::Locked);
        let frame = std::str::from_utf8(&stored.frame).unwrap();
        assert!(frame.starts_with("id: 1764164400123-0\nevent: resource.locked\ndata: {\"id\":\"1764164400123-0\",\"type\""));
        assert!(frame.ends_with("}\n\n"));
    }

    #[test]
    fn foreign_documents_are_refused() {
        assert!(Event::from_published("{}").is_err());
        assert!(Event::from_published(r#"{"id":"1-0","type":"other","resource_id":"r"}"#).is_err());
        assert!(Event::from_stored(EventId::ZERO, "[]").is_err());
    }
}
