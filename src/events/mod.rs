//! Events: the only code that knows the Pub/Sub channel.
//!
//! One dedicated Pub/Sub connection per process (never a pooled one) receives every
//! event that the store's scripts publish. It reconnects with backoff when Redis goes
//! away, and fans events out in-process. Today its consumer is [`Waiters`]: the acquire
//! requests that wait for a busy lock (invariant 8: no polling loop, no connection per
//! waiter).

mod waiters;

use std::time::Duration;

use deadpool_redis::redis;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use waiters::{WaitRegistration, Waiters};

/// The fields of an event that lockd routes on; the rest passes through untouched.
#[derive(Debug, Deserialize)]
struct EventHead {
    #[serde(rename = "type")]
    kind: String,
    resource_id: String,
}

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the process's Pub/Sub subscriber until `shutdown` fires.
///
/// After every (re)subscription it wakes all local waiters: while the subscription was
/// down, a release may have gone unseen, and a woken waiter simply tries again.
pub async fn run_subscriber(
    url: String,
    channel: String,
    connect_timeout: Duration,
    waiters: Waiters,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = subscribe_and_dispatch(&url, &channel, connect_timeout, &waiters, &shutdown);
        let subscribed = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = attempt => outcome,
        };
        if shutdown.is_cancelled() {
            return;
        }
        match subscribed {
            Ok(()) => {
                tracing::warn!("event subscription lost; reconnecting");
                backoff = Duration::from_millis(50);
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot subscribe to events");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Subscribes, then dispatches messages until the connection ends.
///
/// # Errors
/// When the connection or the subscription cannot be set up.
async fn subscribe_and_dispatch(
    url: &str,
    channel: &str,
    connect_timeout: Duration,
    waiters: &Waiters,
    shutdown: &CancellationToken,
) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "timed out subscribing to events"))
        })??;
    tracing::info!(channel, "subscribed to events");
    waiters.wake_all();

    let mut messages = pubsub.into_on_message();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let Some(message) = message else {
            return Ok(());
        };
        let payload: &[u8] = message.get_payload_bytes();
        match serde_json::from_slice::<EventHead>(payload) {
            Ok(head) if head.kind == "resource.unlocked" => waiters.wake(&head.resource_id),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "ignoring a malformed event"),
        }
    }
}
