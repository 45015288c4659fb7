//! The in-process fan-out of events to SSE clients.
//!
//! Each client registers a [`Filter`] and gets a bounded channel. Publishing offers each
//! matching event to each client without waiting: a client whose buffer is full has
//! fallen behind, and is disconnected (its connection is closed, so even a client that
//! stopped reading goes away). It can resume with `Last-Event-ID`. Memory is therefore
//! bounded by clients × buffer, whatever the clients do (invariant 8).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The API key it connected with, for the per-key limit.
    owner: Arc<str>,
}

#[derive(Default)]
struct Clients {
    next_key: u64,
    map: HashMap<u64, Client>,
    per_owner: HashMap<Arc<str>, usize>,
}

/// Forgets a client that has left or was cut off: the one place counts go down.
fn forget(per_owner: &mut HashMap<Arc<str>, usize>, owner: &Arc<str>) {
    if let Some(count) = per_owner.get_mut(owner) {
        *count -= 1;
        if *count == 0 {
            per_owner.remove(owner);
        }
    }
    crate::metrics::sse_clients(-1.0);
}

/// How many clients the hub takes.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// In all.
    pub total: usize,
    /// Per API key.
    pub per_owner: usize,
}

/// Why a client was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The process serves as many clients as it may.
    Total,
    /// The client's API key has as many streams as it may.
    PerOwner,
}

/// The registry of SSE clients. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    clients: Arc<Mutex<Clients>>,
    limits: HubLimits,
    /// Whether the process's subscription is up and caught up with the stream.
    live: Arc<AtomicBool>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(HubLimits {
            total: usize::MAX,
            per_owner: usize::MAX,
        })
    }
}

impl Hub {
    /// A hub that takes at most `limits` clients.
    #[must_use]
    pub fn new(limits: HubLimits) -> Self {
        Self {
            clients: Arc::default(),
            limits,
            live: Arc::default(),
        }
    }

    /// Records whether the subscription feeding the hub is up and caught up.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// Whether events flow: the subscription is up and has filled any gap.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// Registers a client. Events published from now on that pass `filter` arrive on the
    /// subscription, up to `buffer` of them ahead of the reader.
    ///
    /// # Errors
    /// [`Refused`] when a limit is reached.
    pub fn subscribe(
        &self,
        filter: Filter,
        buffer: usize,
        closer: Option<CancellationToken>,
        owner: Arc<str>,
    ) -> Result<Subscription, Refused> {
        let mut guard = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let clients = &mut *guard;
        if clients.map.len() >= self.limits.total {
            return Err(Refused::Total);
        }
        let owned = clients.per_owner.entry(Arc::clone(&owner)).or_default();
        if *owned >= self.limits.per_owner {
            return Err(Refused::PerOwner);
        }
        *owned += 1;
        crate::metrics::sse_clients(1.0);
        let (sender, receiver) = mpsc::channel(buffer.max(1));
        let key = clients.next_key;
        clients.next_key += 1;
        clients.map.insert(
            key,
            Client {
                filter,
                sender,
                closer,
                owner,
            },
        );
        Ok(Subscription {
            receiver,
            hub: self.clone(),
            key,
        })
    }

    /// Offers `event` to every client whose filter it passes; disconnects those that
    /// cannot take it.
    pub fn publish(&self, event: &Arc<Event>) {
        let mut guard = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let Clients { map, per_owner, .. } = &mut *guard;
        map.retain(|key, client| {
            if !client.filter.matches(event.kind, &event.resource_id) {
                return true;
            }
            match client.sender.try_send(Arc::clone(event)) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        client = key,
                        owner = %client.owner,
                        "event stream client fell behind; disconnecting it"
                    );
                    crate::metrics::sse_slow_disconnect();
                    if let Some(closer) = &client.closer {
                        closer.cancel();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            forget(per_owner, &client.owner);
            false
        });
    }

    /// Disconnects every client (each can resume with its `Last-Event-ID`).
    pub fn disconnect_all(&self) {
        let mut guard = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let Clients { map, per_owner, .. } = &mut *guard;
        for (_, client) in map.drain() {
            if let Some(closer) = &client.closer {
                closer.cancel();
            }
            forget(per_owner, &client.owner);
        }
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
        let mut guard = self
            .hub
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Clients { map, per_owner, .. } = &mut *guard;
        // Already gone if it was cut off for falling behind.
        if let Some(client) = map.remove(&self.key) {
            forget(per_owner, &client.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Cursor, EventId, RawEvent};

    fn event(seq: u64, kind: EventKind, resource_id: &str) -> Arc<Event> {
        let id = EventId { ms: 1, seq };
        let body = format!(
            r#"{{"type":"{}","resource_id":"{resource_id}","agent_id":"a","fencing_token":1,"at":"2026-11-26T13:40:00.123Z","reason":"released"}}"#,
            kind.as_str()
        );
        let mut cursor = Cursor::start(1);
        cursor.set(0, id);
        Arc::new(RawEvent::from_stored(id, &body).unwrap().place(0, cursor))
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
        let owner: Arc<str> = Arc::from("anonymous");
        let slow = hub
            .subscribe(
                Filter::default(),
                2,
                Some(slow_closer.clone()),
                owner.clone(),
            )
            .unwrap();
        let mut fast = hub.subscribe(Filter::default(), 2, None, owner).unwrap();
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

    #[test]
    fn limits_hold_in_all_and_per_key_and_free_up_on_leave() {
        let hub = Hub::new(HubLimits {
            total: 3,
            per_owner: 2,
        });
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let a1 = hub
            .subscribe(Filter::default(), 1, None, a.clone())
            .unwrap();
        let _a2 = hub
            .subscribe(Filter::default(), 1, None, a.clone())
            .unwrap();
        assert_eq!(
            hub.subscribe(Filter::default(), 1, None, a.clone()).err(),
            Some(Refused::PerOwner)
        );
        let _b1 = hub
            .subscribe(Filter::default(), 1, None, b.clone())
            .unwrap();
        assert_eq!(
            hub.subscribe(Filter::default(), 1, None, b.clone()).err(),
            Some(Refused::Total)
        );
        drop(a1);
        assert!(hub.subscribe(Filter::default(), 1, None, a).is_ok());
    }
}
