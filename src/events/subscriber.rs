//! The process's one Pub/Sub subscription.
//!
//! It reconnects with backoff when Redis goes away. After each reconnection it reads
//! what it missed from the stream before going on with live messages, skipping ids it
//! has already dispatched, so consumers see every event once and in order.
//!
//! In cluster mode it is one RESP3 cluster connection subscribed (`SSUBSCRIBE`) to every
//! partition's sharded channel, each on the primary that owns it. Any node's connection
//! dropping, or a channel's slot moving away, starts the whole subscription over, gap
//! fill included: events are in order per partition, and no partition is left behind.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Cursor, Hub, RawEvent, Waiters};
use crate::config::RedisMode;
use crate::store::{Store, StoreError};

/// First pause before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A subscription that lasted this long was a working one: reconnect without delay.
const STABLE: Duration = Duration::from_secs(10);
/// How often the subscription's connection must answer a PING to count as alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Events read from the stream per page when filling a gap.
const FILL_PAGE: usize = 500;

/// Where the subscription connects.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Where Redis is: the server, or the Sentinels that name the primary.
    pub redis: crate::config::RedisSettings,
    /// The channels the scripts publish on: one, or in cluster mode one sharded channel
    /// per partition.
    pub channels: Vec<String>,
    /// Longest time to connect and subscribe.
    pub connect_timeout: Duration,
}

/// Consumers of the events, and what has been handed to them.
struct Dispatcher {
    waiters: Waiters,
    hub: Hub,
    store: Store,
    /// Per partition, the last event handed out (or where the stream stood when the
    /// first subscription was made); `None` until then.
    last: Option<Cursor>,
}

impl Dispatcher {
    fn dispatch(&mut self, event: RawEvent) {
        let Some(last) = self.last.as_mut() else {
            return;
        };
        let partition = self.store.partition_of(&event.resource_id);
        if event.id <= last.get(partition) {
            return;
        }
        last.set(partition, event.id);
        if event.kind == super::EventKind::Unlocked {
            self.waiters.wake(&event.resource_id);
        }
        let event = event.place(partition, last.clone());
        self.hub.publish(&Arc::new(event));
    }

    /// Where every partition's stream stands, before the first subscription: anything
    /// after it that the subscription does not deliver, the gap fill will.
    async fn start(&mut self) -> Result<(), StoreError> {
        if self.last.is_some() {
            return Ok(());
        }
        let mut start = Cursor::start(self.store.partitions());
        for partition in 0..self.store.partitions() {
            if let Some(newest) = self.store.last_event_id(partition).await? {
                start.set(partition, newest);
            }
        }
        self.last = Some(start);
        Ok(())
    }

    /// Dispatches what each partition's stream holds after the last event handed out.
    async fn fill_gap(&mut self) -> Result<(), StoreError> {
        for partition in 0..self.store.partitions() {
            self.fill_partition(partition).await?;
        }
        Ok(())
    }

    async fn fill_partition(&mut self, partition: usize) -> Result<(), StoreError> {
        let Some(mut after) = self.last.as_ref().map(|last| last.get(partition)) else {
            return Ok(());
        };
        if self
            .store
            .event_log_bounds(partition)
            .await?
            .lost_after(after)
        {
            // The capped stream lost events this process never handed out: the clients
            // cannot be made whole from here. Cut them off; they resume with their
            // Last-Event-ID and are told of the gap.
            tracing::warn!(%after, partition, "events were trimmed while the subscription was down");
            self.hub.disconnect_all();
        }
        loop {
            let page = self.store.events_after(partition, after, FILL_PAGE).await?;
            let full = page.len() == FILL_PAGE;
            for stored in page {
                after = stored.id;
                match RawEvent::from_stored(stored.id, &stored.body) {
                    Ok(event) => self.dispatch(event),
                    Err(error) => tracing::warn!(%error, "skipping a malformed stored event"),
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Dispatches a published message.
    fn dispatch_published(&mut self, payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            tracing::warn!("ignoring an event that is not UTF-8");
            return;
        };
        match RawEvent::from_published(payload) {
            Ok(event) => self.dispatch(event),
            Err(error) => tracing::warn!(%error, "ignoring a malformed event"),
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
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        // Boxed: the two forms' states are large, and only one runs at a time.
        let session: std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> =
            if config.redis.mode == RedisMode::Cluster {
                Box::pin(subscribe_cluster_and_dispatch(&config, &mut dispatcher))
            } else {
                Box::pin(subscribe_and_dispatch(&config, &mut dispatcher))
            };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = session => outcome,
        };
        match outcome {
            Ok(()) => {
                tracing::warn!("event subscription lost; reconnecting");
                // A subscription that lasted starts over quickly; one that keeps dropping
                // at once (a flapping node) backs off like one that cannot connect.
                if started.elapsed() >= STABLE {
                    backoff = MIN_BACKOFF;
                }
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
    dispatcher.start().await.map_err(|e| e.to_string())?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&config.channels).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| "timed out subscribing".to_owned())?
        .map_err(|e| e.to_string())?;
    tracing::info!(channels = ?config.channels, "subscribed to events");

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
                let pong = tokio::time::timeout(config.connect_timeout, sink.ping::<Value>()).await;
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
        dispatcher.dispatch_published(message.get_payload_bytes());
    }
    dispatcher.hub.set_live(false);
    Ok(())
}

/// The cluster form of [`subscribe_and_dispatch`]: one sharded subscription per
/// partition, on a cluster connection that pushes what it receives.
///
/// # Errors
/// When the connection, a subscription or the gap fill fails.
async fn subscribe_cluster_and_dispatch(
    config: &SubscriberConfig,
    dispatcher: &mut Dispatcher,
) -> Result<(), String> {
    let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel();
    let client =
        crate::store::cluster_client(&config.redis, Some(pushes)).map_err(|e| e.to_string())?;
    dispatcher.start().await.map_err(|e| e.to_string())?;
    let connect = async {
        let mut connection = client.get_async_connection().await?;
        // One channel per call: a sharded subscription names channels of one slot only.
        for channel in &config.channels {
            connection.ssubscribe(channel).await?;
        }
        Ok::<_, redis::RedisError>(connection)
    };
    let mut connection = tokio::time::timeout(config.connect_timeout, connect)
        .await
        .map_err(|_| "timed out subscribing".to_owned())?
        .map_err(|e| e.to_string())?;
    tracing::info!(
        channels = config.channels.len(),
        "subscribed to events on the cluster"
    );

    // Messages queue up on the channel meanwhile, and duplicates are skipped.
    dispatcher.fill_gap().await.map_err(|e| e.to_string())?;
    dispatcher.waiters.wake_all();
    dispatcher.hub.set_live(true);

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        let push = tokio::select! {
            push = received.recv() => push,
            _ = heartbeat.tick() => {
                // PING goes to every node; a node that stopped answering fails it.
                let pong = tokio::time::timeout(
                    config.connect_timeout,
                    redis::cmd("PING").query_async::<Value>(&mut connection),
                )
                .await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!("event subscription stopped answering; reconnecting");
                    break;
                }
                continue;
            }
        };
        let Some(push) = push else {
            break;
        };
        match push.kind {
            redis::PushKind::SMessage => {
                if let [_, Value::BulkString(payload)] = push.data.as_slice() {
                    dispatcher.dispatch_published(payload);
                }
            }
            // A node went away (the connection resubscribes by itself, but what was
            // published meanwhile must be read from the stream), or a channel's slot
            // moved to another node: start over.
            redis::PushKind::Disconnection | redis::PushKind::SUnsubscribe => {
                tracing::warn!(kind = ?push.kind, "event subscription interrupted; resubscribing");
                break;
            }
            _ => {}
        }
    }
    dispatcher.hub.set_live(false);
    Ok(())
}
