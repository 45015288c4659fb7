//! The process's one Pub/Sub subscription.
//!
//! It reconnects with backoff when Redis goes away. After each reconnection it reads
//! what it missed from the stream before going on with live messages, skipping ids it
//! has already dispatched, so consumers see every event once and in order.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Event, EventId, Hub, Waiters};
use crate::store::{Store, StoreError};

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the subscription's connection must answer a PING to count as alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Events read from the stream per page when filling a gap.
const FILL_PAGE: usize = 500;

/// Where the subscription connects.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Where Redis is: the server, or the Sentinels that name the primary.
    pub redis: crate::config::RedisSettings,
    /// The channel the scripts publish on.
    pub channel: String,
    /// Longest time to connect and subscribe.
    pub connect_timeout: Duration,
}

/// Consumers of the events, and what has been handed to them.
struct Dispatcher {
    waiters: Waiters,
    hub: Hub,
    store: Store,
    last: Option<EventId>,
}

impl Dispatcher {
    fn dispatch(&mut self, event: Event) {
        if self.last.is_some_and(|last| event.id <= last) {
            return;
        }
        self.last = Some(event.id);
        if event.kind == super::EventKind::Unlocked {
            self.waiters.wake(&event.resource_id);
        }
        self.hub.publish(&Arc::new(event));
    }

    /// Dispatches what the stream holds after the last event handed out (or after where
    /// the stream stood when the first subscription was made).
    async fn fill_gap(&mut self) -> Result<(), StoreError> {
        let Some(mut after) = self.last else {
            return Ok(());
        };
        if self.store.event_log_bounds().await?.max_deleted > after {
            // The capped stream lost events this process never handed out: the clients
            // cannot be made whole from here. Cut them off; they resume with their
            // Last-Event-ID and are told of the gap.
            tracing::warn!(%after, "events were trimmed while the subscription was down");
            self.hub.disconnect_all();
        }
        loop {
            let page = self.store.events_after(after, FILL_PAGE).await?;
            let full = page.len() == FILL_PAGE;
            for stored in page {
                after = stored.id;
                match Event::from_stored(stored.id, &stored.body) {
                    Ok(event) => self.dispatch(event),
                    Err(error) => tracing::warn!(%error, "skipping a malformed stored event"),
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Runs the subscription until `shutdown` fires.
pub async fn run_subscriber(
    config: SubscriberConfig,
    store: Store,
    waiters: Waiters,
    hub: Hub,
    shutdown: CancellationToken,
) {
    let mut dispatcher = Dispatcher {
        waiters,
        hub,
        store,
        last: None,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = subscribe_and_dispatch(&config, &mut dispatcher) => outcome,
        };
        match outcome {
            Ok(()) => {
                tracing::warn!("event subscription lost; reconnecting");
                backoff = Duration::from_millis(50);
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "cannot subscribe to events"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Subscribes, fills the gap, then dispatches live messages until the connection ends.
///
/// # Errors
/// When the connection, the subscription or the gap fill fails.
async fn subscribe_and_dispatch(
    config: &SubscriberConfig,
    dispatcher: &mut Dispatcher,
) -> Result<(), String> {
    // Asked afresh on every (re)connection: after a failover, Sentinel names the new primary.
    let client = tokio::time::timeout(
        config.connect_timeout,
        crate::store::primary_client(&config.redis),
    )
    .await
    .map_err(|_| "timed out asking for the primary".to_owned())?
    .map_err(|e| e.to_string())?;
    if dispatcher.last.is_none() {
        // Where the stream stands before the first subscription: anything after it that
        // the subscription does not deliver, the gap fill will.
        let newest = dispatcher
            .store
            .last_event_id()
            .await
            .map_err(|e| e.to_string())?;
        dispatcher.last = Some(newest.unwrap_or(EventId::ZERO));
    }
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&config.channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| "timed out subscribing".to_owned())?
        .map_err(|e| e.to_string())?;
    tracing::info!(channel = %config.channel, "subscribed to events");

    // Live messages queue up on the connection meanwhile, and duplicates are skipped.
    dispatcher.fill_gap().await.map_err(|e| e.to_string())?;
    // A release may have gone unseen while the subscription was down; waiters retry.
    dispatcher.waiters.wake_all();
    dispatcher.hub.set_live(true);

    // A connection can die without a word (a dropped NAT entry, a lost host): a PING
    // that goes unanswered tells, and the subscription starts over.
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = heartbeat.tick() => {
                let pong = tokio::time::timeout(config.connect_timeout, sink.ping::<String>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!("event subscription stopped answering; reconnecting");
                    break;
                }
                continue;
            }
        };
        let Some(message) = message else {
            break;
        };
        let payload = match std::str::from_utf8(message.get_payload_bytes()) {
            Ok(payload) => payload,
            Err(_) => {
                tracing::warn!("ignoring an event that is not UTF-8");
                continue;
            }
        };
        match Event::from_published(payload) {
            Ok(event) => dispatcher.dispatch(event),
            Err(error) => tracing::warn!(%error, "ignoring a malformed event"),
        }
    }
    dispatcher.hub.set_live(false);
    Ok(())
}
