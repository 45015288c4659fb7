//! The in-process fan-out of events to SSE clients.
//!
//! Each client registers a [`Filter`] and gets a bounded channel. Publishing offers each
//! matching event to each client without waiting: a client whose buffer is full has
//! fallen behind, and is disconnected (its connection is closed, so even a client that
//! stopped reading goes away). It can resume with `Last-Event-ID`. Memory is therefore
//! bounded by clients × buffer, whatever the clients do (invariant 8).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Event, EventKind};

/// Which events a client wants; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exactly this resource.
    pub resource_id: Option<String>,
    /// Resources whose id starts with this.
    pub prefix: Option<String>,
    /// Only these kinds.
    pub kinds: Option<Vec<EventKind>>,
}

impl Filter {
    /// Whether `event` passes.
    #[must_use]
    pub fn matches(&self, kind: EventKind, resource_id: &str) -> bool {
        self.resource_id
            .as_deref()
            .is_none_or(|id| id == resource_id)
            && self
                .prefix
                .as_deref()
                .is_none_or(|prefix| resource_id.starts_with(prefix))
            && self
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&kind))
    }
}

struct Client {
    filter: Filter,
    sender: mpsc::Sender<Arc<Event>>,
    /// Closes the client's HTTP connection when it falls behind.
    closer: Option<CancellationToken>,
}

#[derive(Default)]
struct Clients {
    next_key: u64,
    map: HashMap<u64, Client>,
}

/// The registry of SSE clients. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    clients: Arc<Mutex<Clients>>,
}

impl Hub {
    /// Registers a client. Events published from now on that pass `filter` arrive on the
    /// subscription, up to `buffer` of them ahead of the reader.
    #[must_use]
    pub fn subscribe(
        &self,
        filter: Filter,
        buffer: usize,
        closer: Option<CancellationToken>,
    ) -> Subscription {
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let key = clients.next_key;
        clients.next_key += 1;
        clients.map.insert(
            key,
            Client {
                filter,
                sender,
                closer,
            },
        );
        Subscription {
            receiver,
            hub: self.clone(),
            key,
        }
    }

    /// Offers `event` to every client whose filter it passes; disconnects those that
    /// cannot take it.
    pub fn publish(&self, event: &Arc<Event>) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients.map.retain(|key, client| {
            if !client.filter.matches(event.kind, &event.resource_id) {
                return true;
            }
            match client.sender.try_send(Arc::clone(event)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        client = key,
                        "event stream client fell behind; disconnecting it"
                    );
                    if let Some(closer) = &client.closer {
                        closer.cancel();
                    }
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// How many clients are registered.
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

/// One client's feed; dropping it unregisters the client.
pub struct Subscription {
    /// Events, in the order Redis assigned their ids.
    pub receiver: mpsc::Receiver<Arc<Event>>,
    hub: Hub,
    key: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventId;

    fn event(seq: u64, kind: EventKind, resource_id: &str) -> Arc<Event> {
        Arc::new(Event {
            id: EventId { ms: 1, seq },
            kind,
            resource_id: resource_id.to_owned(),
            frame: bytes::Bytes::new(),
        })
    }

    #[test]
    fn filters_combine_with_and() {
        let filter = Filter {
            resource_id: None,
            prefix: Some("file:".into()),
            kinds: Some(vec![EventKind::Unlocked]),
        };
        assert!(filter.matches(EventKind::Unlocked, "file:a"));
        assert!(!filter.matches(EventKind::Locked, "file:a"));
        assert!(!filter.matches(EventKind::Unlocked, "db:a"));
        assert!(Filter::default().matches(EventKind::Refreshed, "anything"));
    }

    #[test]
    fn a_client_that_falls_behind_is_cut_off_and_others_are_not() {
        let hub = Hub::default();
        let slow_closer = CancellationToken::new();
        let slow = hub.subscribe(Filter::default(), 2, Some(slow_closer.clone()));
        let mut fast = hub.subscribe(Filter::default(), 2, None);
        for seq in 0..5 {
            hub.publish(&event(seq, EventKind::Locked, "r"));
            assert_eq!(fast.receiver.try_recv().unwrap().id.seq, seq);
        }
        assert!(slow_closer.is_cancelled());
        assert_eq!(hub.client_count(), 1);
        drop(slow);
        drop(fast);
        assert_eq!(hub.client_count(), 0);
    }
}
