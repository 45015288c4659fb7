//! Redis connections shared by every request.
//!
//! A multiplexed connection carries many requests at once: each command is written as it
//! comes and replies are matched to requests by order, so concurrent requests pipeline
//! on one socket (one `write` and one `read` for several of them, on both sides) instead
//! of each holding a connection of its own. The store keeps `redis.pool_size` of them
//! and hands them out in turn. Taking one costs no round trip, where a checkout from the
//! deadpool pool first sends `UNWATCH` and `PING`, doubling a request's round trips.
//!
//! A connection that fails is set aside: requests still in flight on it finish or fail
//! on their own, and the next request on its slot opens a new one, to the primary that
//! Sentinel names now in Sentinel mode. A dropped connection (or a READONLY primary, or a
//! failed health check) sets aside every connection, since it seldom dies alone; a mere
//! timeout retires only its own, so an overloaded Redis does not also get a storm of
//! reconnections. Connections open lazily, so lockd starts while Redis is down and
//! recovers by itself.
//!
//! A connection can die unseen, say when Redis restarts while lockd is idle. So, like a
//! pool checkout, a connection is checked with `PING` before it serves, but only when it
//! has not served for a second, or when another connection broke since it last served:
//! under load that is never. A connection used just before a restart can still be lent
//! unchecked; the write to it fails with a broken pipe, which means Redis never saw the
//! command, and the store sends it again on a fresh connection.
//!
//! Commands that block the connection they run on (`WAIT`) must not share one: they go
//! through the pool, which lends each request a connection of its own.
//!
//! In cluster mode each partition has a shared connection of its own, a cluster
//! connection: one multiplexed connection per primary, with requests routed by the slot
//! of their first key and redirections (`MOVED`, `ASK`) followed as the cluster's slots
//! move. A cluster connection repairs a node's connection by itself, and takes no
//! requests while it does: with one per partition, a node in trouble stalls only the
//! partitions it serves. They are neither checked nor set aside here: either would have
//! to reach every node, so one frozen node would stop all partitions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use super::{StoreError, backend::Backend};
use crate::config::{RedisMode, RedisSettings};

/// A connection that many requests share: to one server, or to a whole cluster.
#[derive(Clone)]
pub(super) enum SharedConnection {
    /// To the one server, or to the primary that Sentinel names.
    Single(MultiplexedConnection),
    /// To every primary of a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The shared connections: `redis.pool_size` of them, or in cluster mode one cluster
/// connection per partition.
pub(super) struct Connections {
    redis: RedisSettings,
    config: AsyncConnectionConfig,
    slots: Arc<[Slot]>,
    /// The slot the next request takes.
    next: AtomicUsize,
    /// Tells connections apart, so a failure sets aside only the one that failed.
    generation: AtomicU64,
    /// Clock of `last_served` and `broken_at`.
    epoch: Instant,
    /// When a connection last broke (ms since `epoch`, 0: never): the others are checked
    /// before they serve again.
    broken_at: AtomicU64,
}

/// A connection that has not served for this long is checked before it serves.
const IDLE_CHECK_MS: u64 = 1000;

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Shared>>,
    /// Held while a connection for this slot is being opened: one attempt at a time.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<Shared> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes a newly opened connection the slot's, served as of `now`.
    fn install(&self, connection: SharedConnection, generation: u64, now: u64) -> Shared {
        let shared = Shared {
            connection,
            generation,
            last_served: Arc::new(AtomicU64::new(now)),
        };
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(shared.clone());
        shared
    }
}

#[derive(Clone)]
struct Shared {
    connection: SharedConnection,
    generation: u64,
    /// When it was last lent out or checked (ms since `epoch`).
    last_served: Arc<AtomicU64>,
}

/// A connection lent to one request: a handle to a shared one.
pub(super) struct Lent {
    /// The connection.
    pub(super) connection: SharedConnection,
    slot: usize,
    generation: u64,
}

impl Connections {
    /// `redis.pool_size` connections to the primary; none is opened yet.
    pub(super) fn new(redis: &RedisSettings) -> Self {
        Self {
            redis: redis.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(redis.connect_timeout_ms)))
                .set_response_timeout(Some(Duration::from_millis(redis.command_timeout_ms))),
            slots: (0..if redis.mode == RedisMode::Cluster {
                redis.partition_count()
            } else {
                redis.pool_size.max(1)
            })
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            epoch: Instant::now(),
            broken_at: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `shared` must answer a `PING` before it serves. Never a cluster
    /// connection: it repairs its node connections itself, and a `PING` (sent to every
    /// primary) would fail for all partitions when one node is frozen.
    fn needs_check(&self, shared: &Shared, now: u64) -> bool {
        if self.redis.mode == RedisMode::Cluster {
            return false;
        }
        let served = shared.last_served.load(Ordering::Relaxed);
        now.saturating_sub(served) >= IDLE_CHECK_MS
            || served <= self.broken_at.load(Ordering::Relaxed)
    }

    /// The next connection in turn, opened first if its slot has none, checked first
    /// if it may have died unseen. The caller bounds the wait (the command timeout).
    ///
    /// In cluster mode each partition has a cluster connection of its own, so that the
    /// repairs a node's trouble sets off (during which a cluster connection takes no
    /// requests) stall only the partitions on that node.
    pub(super) async fn get(&self, partition: Option<usize>) -> Result<Lent, StoreError> {
        let index = match partition {
            Some(partition) if self.redis.mode == RedisMode::Cluster => partition,
            _ => self.next.fetch_add(1, Ordering::Relaxed),
        } % self.slots.len();
        let slot = &self.slots[index];
        let now = self.now_ms();
        let shared = match slot.live() {
            Some(shared) if !self.needs_check(&shared, now) => shared,
            _ if self.redis.mode == RedisMode::Cluster => self.open_in_background(index).await?,
            _ => {
                let _opening = slot.opening.lock().await;
                self.checked_or_new(slot).await?
            }
        };
        shared.last_served.fetch_max(now, Ordering::Relaxed);
        Ok(Lent {
            connection: shared.connection,
            slot: index,
            generation: shared.generation,
        })
    }

    /// With the slot's opening lock held: its connection if it answers a `PING` (or was
    /// checked meanwhile), else a new one.
    async fn checked_or_new(&self, slot: &Slot) -> Result<Shared, StoreError> {
        if let Some(shared) = slot.live() {
            let now = self.now_ms();
            if !self.needs_check(&shared, now) {
                return Ok(shared);
            }
            let mut connection = shared.connection.clone();
            let pong = redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await;
            if pong.is_ok() {
                shared.last_served.fetch_max(now, Ordering::Relaxed);
                return Ok(shared);
            }
            // The others most likely died with it (Redis restarted or failed over).
            self.forget_all();
        }
        let connection = self.open().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(slot.install(connection, generation, self.now_ms()))
    }

    /// Opens slot `index`'s cluster connection in a task of its own, which stores it in
    /// the slot when done even if the request that asked gave up first. Opening reaches
    /// every node, and waits up to `redis.connect_timeout_ms` for one that is frozen:
    /// were it bound by each request's deadline instead, a partition first used while a
    /// node is frozen would never get its connection.
    async fn open_in_background(&self, index: usize) -> Result<Shared, StoreError> {
        let slots = Arc::clone(&self.slots);
        let redis = self.redis.clone();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let opening = tokio::spawn(async move {
            let slot = &slots[index];
            let _opening = slot.opening.lock().await;
            if let Some(shared) = slot.live() {
                return Ok(shared);
            }
            let connection = super::cluster_client(&redis, None)?
                .get_async_connection()
                .await
                .map_err(|e| StoreError::Pool(e.to_string()))?;
            Ok(slot.install(SharedConnection::Cluster(connection), generation, now))
        });
        opening.await.map_err(|e| StoreError::Pool(e.to_string()))?
    }

    async fn open(&self) -> Result<SharedConnection, StoreError> {
        let pool_error = |e: deadpool_redis::redis::RedisError| StoreError::Pool(e.to_string());
        Backend::primary_client(&self.redis)
            .await?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map(SharedConnection::Single)
            .map_err(pool_error)
    }

    /// Sets `lent`'s connection aside after it failed; its slot opens a new one next,
    /// and the other connections are checked before they serve again.
    ///
    /// A cluster connection is never set aside: its failure is one node's, which it
    /// repairs by itself, and a new one would have to reach every node, the failed one
    /// included, before it served any partition.
    pub(super) fn set_aside(&self, lent: &Lent, all: bool) {
        if self.redis.mode == RedisMode::Cluster {
            return;
        }
        let mut live = self.slots[lent.slot]
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A failure seen on a connection opened since is old news.
        if live
            .as_ref()
            .is_none_or(|shared| shared.generation != lent.generation)
        {
            return;
        }
        *live = None;
        drop(live);
        if all {
            self.forget_all();
        } else {
            self.broken_at.fetch_max(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Drops every connection from its slot, so each opens afresh before it serves: a
    /// failure seldom comes alone (Redis restarted, failed over, or the network broke),
    /// and a connection that looks fine may still be open to a dead or demoted server.
    /// Requests in flight on them finish or fail on their own.
    fn forget_all(&self) {
        self.broken_at.fetch_max(self.now_ms(), Ordering::Relaxed);
        for slot in self.slots.iter() {
            *slot.live.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}
