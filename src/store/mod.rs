//! The lock store: the only code that knows Redis key names and the Lua scripts.
//!
//! Every change is one Lua script (`scripts/*.lua`, run with EVALSHA), so a change, its
//! fencing token and its event are atomic (invariants 1, 3 and 4). Times come from
//! Redis's `TIME` inside the scripts and leases are Redis key expiries (invariant 6).
//! Only the SHA-256 of a lock token is stored (invariant 3).
//!
//! # Key layout
//! The keyspace is split into `redis.partitions` partitions (one unless configured, or
//! in cluster mode); a resource belongs to partition `p` = FNV-1a of its id modulo their
//! number. All keys of a partition share the hash tag `{p}`, so each script touches one
//! Redis Cluster hash slot, and the partitions spread over a cluster's primaries:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}{p}:lock:{resource_id}` | hash | the lease: token digest, agent, fence, times; expires with the lease |
//! | `{prefix}{p}:fence:{resource_id}` | string | the last fencing token issued |
//! | `{prefix}{p}:events` | stream | the partition's event history, capped at `events.history` |
//! | `{prefix}{p}:expiry` | sorted set | held resource ids by lease end: what the reaper announces |
//! | `{prefix}{p}:held` | sorted set | held resource ids in byte order: what listing pages through |
//! | `{prefix}{p}:leases` | hash | per held resource: fence, times, agent (for expiry events and listing) |
//! | `{prefix}{p}:reply:{call}` | string | cluster mode: a change's reply, for a call the cluster connection resends |
//!
//! Events are also published: with `PUBLISH` on the channel `{prefix}events`, or in
//! cluster mode with `SPUBLISH` on the partition's sharded channel `{prefix}{p}:events`
//! (which hashes to the partition's slot, so the node that runs the script delivers it).

use std::time::Duration;

mod backend;
mod connections;
mod script;

use deadpool_redis::redis::{self, Value};

use backend::{Backend, Conn};
use connections::{Connections, SharedConnection};
use script::{Invocation, LuaScript};

use crate::config::{RedisMode, RedisSettings, Settings};
use crate::domain::{AgentId, AgentPattern, IdempotencyKey, LockToken, ResourceId};
use crate::error::Holder;
use crate::events::EventId;
use crate::time::UnixMillis;

/// Why Redis could not serve a request. Every variant means "unknown outcome" for a
/// change: the script may or may not have run.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool in time (Redis down or overloaded).
    #[error("no Redis connection: {0}")]
    Pool(String),
    /// Redis answered with an error or the connection broke.
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within `redis.command_timeout_ms`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Fewer replicas than `redis.min_replicas_ack` acknowledged a grant in time; the grant
    /// was withdrawn.
    #[error("only {acked} of {wanted} replicas acknowledged the grant in time")]
    ReplicasBehind {
        /// Replicas that acknowledged.
        acked: u32,
        /// Replicas required.
        wanted: u32,
    },
    /// A script returned something it never returns: a bug or a foreign key in our prefix.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
    /// The keyspace is laid out for another number of partitions than this instance's:
    /// another instance runs with a different `redis.partitions` on the same prefix, and
    /// the two would map a resource to different keys (and grant it twice).
    #[error(
        "the keyspace under this key prefix is laid out for {stored}, this instance for \
         {wanted}: every instance on one prefix must have the same redis.partitions"
    )]
    Layout {
        /// What the keyspace records.
        stored: String,
        /// What this instance would record.
        wanted: String,
    },
}

impl StoreError {
    /// A short label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pool(_) => "pool",
            Self::Redis(_) => "redis",
            Self::Timeout(_) => "timeout",
            Self::ReplicasBehind { .. } => "replicas",
            Self::Protocol(_) => "protocol",
            Self::Layout { .. } => "layout",
        }
    }
}

/// A granted lease, as acquire and refresh report it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Who holds it.
    pub agent_id: String,
    /// The fencing token of this grant.
    pub fencing_token: u64,
    /// Lease length in ms set by this operation.
    pub ttl_ms: u64,
    /// When the lock was acquired.
    pub acquired_at: UnixMillis,
    /// When the lease ends.
    pub expires_at: UnixMillis,
}

/// What acquire did.
#[derive(Debug)]
pub enum Acquired {
    /// The lock is ours.
    Granted(Lease),
    /// A retry with the same Idempotency-Key: the grant already made, with its token.
    Replayed(Lease, LockToken),
    /// Someone holds it.
    Held(Holder),
}

/// What release or refresh found.
#[derive(Debug)]
pub enum Owned<T> {
    /// The token held the lock; the change was made.
    Done(T),
    /// Nothing holds the lock.
    NotFound,
    /// Another token holds it; nothing changed.
    NotOwner(Holder),
    /// The caller's API key may not act for the holder (this agent); nothing changed.
    Forbidden(String),
}

/// Who releases a lock.
#[derive(Debug, Clone, Copy)]
pub enum Releaser<'a> {
    /// Its holder, by token, acting through a key that covers these agents.
    Holder(&'a LockToken, &'a AgentPattern),
    /// An administrator, whoever holds it.
    Force,
}

/// Who holds a lock now.
#[derive(Debug, Clone)]
pub struct Held {
    /// The holder.
    pub agent_id: String,
    /// Its fencing token.
    pub fencing_token: u64,
    /// When it was acquired.
    pub acquired_at: UnixMillis,
    /// When its lease ends.
    pub expires_at: UnixMillis,
    /// Milliseconds left, by Redis's clock.
    pub remaining_ms: u64,
}

/// What one round of reaping did.
#[derive(Debug)]
pub struct Reaped {
    /// Expiries announced.
    pub announced: u64,
    /// Time until the next lease ends, when any is held (zero when more are due now).
    pub next: Option<Duration>,
    /// Why a partition could not be reaped, if one could not.
    pub failure: Option<StoreError>,
}

/// A page of held locks.
#[derive(Debug)]
pub struct Page {
    /// The locks, in resource-id byte order.
    pub locks: Vec<(String, Held)>,
    /// The resource id to continue after, when more may follow.
    pub next_after: Option<String>,
}

/// An event as the stream keeps it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its stream entry id.
    pub id: EventId,
    /// The event's JSON document without its `id` member.
    pub body: String,
}

/// What the stream still holds, for deciding whether a resume has a gap.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogBounds {
    /// The oldest event kept, if any.
    pub first: Option<EventId>,
    /// The newest event ever deleted (`XDEL`; `0-0` when none was). Trimming does not
    /// move it.
    pub max_deleted: EventId,
    /// Events ever appended to the stream.
    pub entries_added: u64,
    /// Events it holds now.
    pub length: u64,
}

impl LogBounds {
    /// Whether events that came after `position` are no longer held: trimmed away, or
    /// lost with Redis. Trimming removes the oldest entries, so nothing is missing when
    /// the stream still holds `position` or anything before it, or when `position` is
    /// the very entry removed last. From the start of the history (`0-0`), something is
    /// missing when anything was ever removed. Any other position older than the oldest
    /// entry held had successors that are gone. The one case this reports wrongly: a
    /// client whose last event was exactly the last one trimmed (Redis does not record
    /// which that was), told of a gap that holds nothing.
    #[must_use]
    pub fn lost_after(&self, position: EventId) -> bool {
        if self.first.is_some_and(|first| position >= first) {
            return false;
        }
        if position == EventId::ZERO {
            return self.entries_added > self.length;
        }
        position != self.max_deleted
    }
}

/// The partition of a resource among `partitions`: FNV-1a (32-bit) of its id, which is
/// stable across versions and platforms, as every instance must agree on it.
#[must_use]
pub fn partition_of(resource_id: &str, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    let hash = resource_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    usize::try_from(hash).unwrap_or(0) % partitions
}

/// The channels events are published on: one for all partitions, or in cluster mode one
/// sharded channel per partition (index = partition).
#[must_use]
pub fn event_channels(redis: &RedisSettings) -> Vec<String> {
    let partitions = redis.partition_count();
    if redis.mode == RedisMode::Cluster {
        (0..partitions)
            .map(|p| format!("{}{{{p}}}:events", redis.key_prefix))
            .collect()
    } else {
        vec![event_channel(&redis.key_prefix)]
    }
}

/// The scripts, each compiled with the shared prelude; their SHA is computed once.
struct Scripts {
    acquire: LuaScript,
    refresh: LuaScript,
    release: LuaScript,
    status: LuaScript,
    reap: LuaScript,
    list: LuaScript,
}

impl Scripts {
    /// `publish` is the command that publishes events: `PUBLISH`, or `SPUBLISH` (sharded
    /// Pub/Sub) in cluster mode; `reply_ttl` how long a change's reply is kept for a
    /// resent call (cluster mode).
    fn new(publish: &str, reply_ttl: Duration) -> Self {
        const PRELUDE: &str = include_str!("scripts/prelude.lua");
        let prelude = format!(
            "local PUBLISH_COMMAND = '{publish}'\nlocal REPLY_TTL_MS = '{}'\n{PRELUDE}",
            reply_ttl.as_millis()
        );
        // The shebang declares each script's flags (Redis 7). A script that writes is then
        // refused as a whole when Redis is out of memory, as any write command is; without
        // it, Redis lets a script run on once its first write (a DEL) was allowed.
        let writes = |body: &str| LuaScript::new(format!("#!lua\n{prelude}\n{body}"));
        let reads =
            |body: &str| LuaScript::new(format!("#!lua flags=no-writes\n{prelude}\n{body}"));
        Self {
            acquire: writes(include_str!("scripts/acquire.lua")),
            refresh: writes(include_str!("scripts/refresh.lua")),
            release: writes(include_str!("scripts/release.lua")),
            status: reads(include_str!("scripts/status.lua")),
            reap: writes(include_str!("scripts/reap.lua")),
            list: reads(include_str!("scripts/list.lua")),
        }
    }
}

/// Handle to the lock store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    /// Multiplexed connections shared by all requests: the hot path.
    shared: Connections,
    /// The pool, for commands that block their connection (`WAIT`).
    backend: Backend,
    scripts: Scripts,
    /// The keys of each partition.
    partitions: Box<[Partition]>,
    /// Whether changes keep their reply for a resent call (cluster mode: see
    /// `remember` in the scripts' prelude).
    keep_replies: bool,
    history: String,
    fence_retention_ms: String,
    command_timeout: Duration,
    /// `{prefix}layout`, and what it must hold: the number of partitions.
    layout_key: String,
    layout: String,
    /// When the layout was last found right (ms since `epoch`; 0: not yet).
    layout_checked: std::sync::atomic::AtomicU64,
    /// Whether the layout was ever found right (and not wrong since).
    layout_found: std::sync::atomic::AtomicBool,
    epoch: std::time::Instant,
    /// Replicas that must acknowledge a grant, and how long to wait for them.
    min_replicas_ack: u32,
    replica_ack_timeout_ms: u64,
}

/// The keys (and channel) of one partition.
struct Partition {
    /// Its number, `p`.
    index: usize,
    /// `{prefix}{p}:` — every key of the partition starts with it.
    key_base: String,
    stream_key: String,
    expiry_key: String,
    held_key: String,
    leases_key: String,
    channel: String,
}

impl Store {
    /// Sets up the connections; they open lazily, so Redis need not be up yet.
    ///
    /// # Errors
    /// [`StoreError`] when the URL is not a Redis URL.
    pub fn new(settings: &Settings) -> Result<Self, StoreError> {
        let redis = &settings.redis;
        let backend = Backend::new(redis)?;
        let channels = event_channels(redis);
        let partitions = (0..redis.partition_count())
            .map(|p| {
                let key_base = format!("{}{{{p}}}:", redis.key_prefix);
                Partition {
                    index: p,
                    stream_key: format!("{key_base}events"),
                    expiry_key: format!("{key_base}expiry"),
                    held_key: format!("{key_base}held"),
                    leases_key: format!("{key_base}leases"),
                    key_base,
                    channel: channels[p.min(channels.len() - 1)].clone(),
                }
            })
            .collect();
        let cluster = redis.mode == RedisMode::Cluster;
        let publish = if cluster { "SPUBLISH" } else { "PUBLISH" };
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                shared: Connections::new(redis),
                backend,
                scripts: Scripts::new(publish, reply_ttl(redis)),
                layout_key: format!("{}layout", redis.key_prefix),
                layout: format!("partitions={}", redis.partition_count()),
                layout_checked: std::sync::atomic::AtomicU64::new(0),
                layout_found: std::sync::atomic::AtomicBool::new(false),
                epoch: std::time::Instant::now(),
                partitions,
                keep_replies: cluster,
                history: settings.events.history.to_string(),
                fence_retention_ms: settings.locks.fence_retention_ms.to_string(),
                command_timeout: Duration::from_millis(redis.command_timeout_ms),
                min_replicas_ack: redis.min_replicas_ack,
                replica_ack_timeout_ms: redis.replica_ack_timeout_ms,
            }),
        })
    }

    /// How many partitions the keyspace has.
    #[must_use]
    pub fn partitions(&self) -> usize {
        self.inner.partitions.len()
    }

    /// The partition of a resource.
    #[must_use]
    pub fn partition_of(&self, resource_id: &str) -> usize {
        partition_of(resource_id, self.partitions())
    }

    fn partition(&self, id: &ResourceId) -> &Partition {
        &self.inner.partitions[self.partition_of(id.as_str())]
    }

    fn lock_key(&self, id: &ResourceId) -> String {
        format!("{}lock:{id}", self.partition(id).key_base)
    }

    fn fence_key(&self, id: &ResourceId) -> String {
        format!("{}fence:{id}", self.partition(id).key_base)
    }

    /// Adds the key that keeps a change's reply, in cluster mode (see `remember` in the
    /// scripts' prelude): fresh for every call.
    fn keep_reply(&self, part: &Partition, invocation: &mut Invocation<'_>) {
        if self.inner.keep_replies {
            let call = uuid::Uuid::new_v4().simple();
            invocation.key(format!("{}reply:{call}", part.key_base));
        }
    }

    /// Makes sure the keyspace is laid out for this instance's number of partitions
    /// before a change: two instances that disagree would keep one resource's lock
    /// under two keys. The first instance records its layout (`SET NX`); the check is
    /// repeated every few seconds, so an instance that started first also stops when
    /// the record changes under it (a Redis that lost it, then a differing instance).
    async fn check_layout(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        const RECHECK_MS: u64 = 5_000;
        let inner = &self.inner;
        let now = u64::try_from(inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let checked = inner.layout_checked.load(Ordering::Relaxed);
        if checked != 0 && now.saturating_sub(checked) < RECHECK_MS {
            return Ok(());
        }
        let stored: Option<String> = match self
            .query(
                None,
                redis::cmd("SET")
                    .arg(&inner.layout_key)
                    .arg(&inner.layout)
                    .arg("NX")
                    .arg("GET")
                    .to_owned(),
            )
            .await
        {
            Ok(stored) => stored,
            // The record may live on a cluster node that is down while the partition at
            // hand is fine: a layout found right before stands until it can be read again.
            Err(_) if inner.layout_found.load(Ordering::Relaxed) => return Ok(()),
            Err(error) => return Err(error),
        };
        match stored {
            Some(stored) if stored != inner.layout => {
                inner.layout_checked.store(0, Ordering::Relaxed);
                inner.layout_found.store(false, Ordering::Relaxed);
                tracing::error!(key = %inner.layout_key, %stored, wanted = %inner.layout,
                    "refusing changes: the keyspace is laid out for another redis.partitions");
                Err(StoreError::Layout {
                    stored,
                    wanted: inner.layout.clone(),
                })
            }
            _ => {
                inner.layout_checked.store(now, Ordering::Relaxed);
                inner.layout_found.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Bounds `work` by the command timeout, so a frozen Redis costs a request no more.
    async fn timed<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.inner.command_timeout;
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| StoreError::Timeout(limit))?
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        self.inner.backend.get().await
    }

    /// Passes `result` on, first taking the connection out of the pool when the error
    /// says it is useless (broken, or still open to a primary that was demoted).
    fn settle<T>(conn: Conn, result: redis::RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                if Self::useless(&error) {
                    conn.discard();
                }
                Err(error.into())
            }
        }
    }

    /// Runs `work` on a shared connection within the command timeout, connecting
    /// included, so a frozen Redis costs a request no more. A connection that breaks,
    /// answers READONLY or does not answer in time is set aside, and its slot reconnects
    /// on next use. Work that never reached Redis (see [`never_sent`]) is sent once more,
    /// on a fresh connection. Dropping the future midway is safe: the multiplexed
    /// connection matches replies to requests by order, so a late reply is discarded.
    async fn on_shared<T, F, Fut>(&self, partition: Option<usize>, work: F) -> Result<T, StoreError>
    where
        F: Fn(SharedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match self.on_shared_once(partition, &work).await {
            Err(StoreError::Redis(error)) if never_sent(&error) => {
                self.on_shared_once(partition, &work).await
            }
            outcome => outcome,
        }
    }

    async fn on_shared_once<T, F, Fut>(
        &self,
        partition: Option<usize>,
        work: &F,
    ) -> Result<T, StoreError>
    where
        F: Fn(SharedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let shared = &self.inner.shared;
        let limit = self.inner.command_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let lent = tokio::time::timeout_at(deadline, shared.get(partition))
            .await
            .map_err(|_| StoreError::Timeout(limit))??;
        match tokio::time::timeout_at(deadline, work(lent.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                // A dropped connection seldom dies alone (Redis restarted or failed over):
                // all reconnect. A slow answer only retires its own connection, so that
                // an overloaded Redis does not also get a storm of reconnections.
                if Self::useless(&error) {
                    shared.set_aside(&lent, true);
                } else if error.is_io_error() {
                    shared.set_aside(&lent, false);
                }
                Err(error.into())
            }
            Err(_) => {
                shared.set_aside(&lent, false);
                Err(StoreError::Timeout(limit))
            }
        }
    }

    /// Runs a script (EVALSHA, or EVAL where the server lacks it) on a shared connection within
    /// the command timeout.
    async fn run(&self, partition: usize, invocation: Invocation<'_>) -> Result<Value, StoreError> {
        let invocation = &invocation;
        self.on_shared(Some(partition), |mut conn| async move {
            invocation.invoke(&mut conn).await
        })
        .await
    }

    /// Runs an acquire or refresh script and, when it made its change (reply `{1, ...}`)
    /// and replicas must acknowledge, `WAIT`s for them on the same connection (WAIT covers
    /// the writes that connection sent). Returns the reply and how many replicas
    /// acknowledged. `WAIT` blocks its connection, so with replica acknowledgement on,
    /// these changes take a pooled connection of their own rather than a shared one.
    async fn run_replicated(
        &self,
        partition: usize,
        invocation: Invocation<'_>,
    ) -> Result<(Value, Option<u32>), StoreError> {
        let inner = &self.inner;
        if inner.min_replicas_ack == 0 {
            return Ok((self.run(partition, invocation).await?, None));
        }
        self.timed(async {
            let mut conn = self.connection().await?;
            let reply = match invocation.invoke(&mut conn).await {
                Ok(reply) => reply,
                Err(error) => return Self::settle(conn, Err(error)),
            };
            let granted =
                matches!(&reply, Value::Array(items) if items.first() == Some(&Value::Int(1)));
            if !granted {
                return Ok((reply, None));
            }
            let acked = redis::cmd("WAIT")
                .arg(inner.min_replicas_ack)
                .arg(inner.replica_ack_timeout_ms)
                .query_async::<u32>(&mut conn)
                .await;
            let acked = Self::settle(conn, acked)?;
            Ok((reply, Some(acked)))
        })
        .await
    }

    fn useless(error: &redis::RedisError) -> bool {
        error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            || error.is_unrecoverable_error()
            || error.is_connection_dropped()
    }

    /// Runs a plain command on a shared connection within the command timeout.
    async fn query<T: redis::FromRedisValue>(
        &self,
        partition: Option<usize>,
        command: redis::Cmd,
    ) -> Result<T, StoreError> {
        let command = &command;
        self.on_shared(partition, |mut conn| async move {
            command.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// Grants the lock to `token`'s holder unless someone holds it.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable; the lock may then have been granted.
    pub async fn acquire(
        &self,
        id: &ResourceId,
        agent: &AgentId,
        token: &LockToken,
        ttl_ms: u64,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Acquired, StoreError> {
        self.check_layout().await?;
        let inner = &self.inner;
        let (idempotency_digest, sealed) = idempotency
            .map(|key| (key.digest(id, agent), key.seal(token, id, agent)))
            .unwrap_or_default();
        let part = self.partition(id);
        let mut invocation = inner.scripts.acquire.invocation();
        invocation
            .key(self.lock_key(id))
            .key(self.fence_key(id))
            .key(&part.stream_key)
            .key(&part.expiry_key)
            .key(&part.held_key)
            .key(&part.leases_key)
            .arg(token.digest())
            .arg(agent.as_str())
            .arg(ttl_ms)
            .arg(id.as_str())
            .arg(&part.channel)
            .arg(&inner.history)
            .arg(&inner.fence_retention_ms)
            .arg(idempotency_digest)
            .arg(sealed);
        self.keep_reply(part, &mut invocation);
        let (reply, acked) = self.run_replicated(part.index, invocation).await?;
        if let Some(acked) = acked
            && acked < inner.min_replicas_ack
        {
            // Too few copies to survive a failover: take the grant back rather than hand
            // out a lock that a promoted replica would not know. Only a withdrawal that
            // went through lets us say the lock was not granted; otherwise the outcome is
            // unknown (the lease still runs out by itself).
            self.release(id, Releaser::Holder(token, &AgentPattern::any()))
                .await?;
            return Err(StoreError::ReplicasBehind {
                acked,
                wanted: inner.min_replicas_ack,
            });
        }
        let reply = Reply::new(reply)?;
        let lease = |ttl_ms| -> Result<Lease, StoreError> {
            Ok(Lease {
                agent_id: agent.as_str().to_owned(),
                fencing_token: reply.uint(1)?,
                ttl_ms,
                acquired_at: UnixMillis(reply.int(2)?),
                expires_at: UnixMillis(reply.int(3)?),
            })
        };
        match (reply.int(0)?, idempotency) {
            (1, _) => Ok(Acquired::Granted(lease(ttl_ms)?)),
            (2, Some(key)) => {
                let token = key
                    .unseal(&reply.string(4)?, id, agent)
                    .map_err(StoreError::Protocol)?;
                Ok(Acquired::Replayed(lease(reply.uint(5)?)?, token))
            }
            (0, _) => Ok(Acquired::Held(Holder {
                agent_id: reply.string(1)?,
                expires_at: UnixMillis(reply.int(2)?),
                remaining_ms: reply.uint(3)?,
            })),
            (other, _) => Err(StoreError::Protocol(format!(
                "unknown acquire outcome {other}"
            ))),
        }
    }

    /// Moves the end of `token`'s lease to now + `ttl_ms` (the original length if `None`).
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn refresh(
        &self,
        id: &ResourceId,
        token: &LockToken,
        ttl_ms: Option<u64>,
        agents: &AgentPattern,
    ) -> Result<Owned<Lease>, StoreError> {
        self.check_layout().await?;
        let inner = &self.inner;
        let part = self.partition(id);
        let mut invocation = inner.scripts.refresh.invocation();
        invocation
            .key(self.lock_key(id))
            .key(self.fence_key(id))
            .key(&part.stream_key)
            .key(&part.expiry_key)
            .key(&part.held_key)
            .key(&part.leases_key)
            .arg(token.digest())
            .arg(ttl_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(id.as_str())
            .arg(&part.channel)
            .arg(&inner.history)
            .arg(&inner.fence_retention_ms)
            .arg(agents.to_lua());
        self.keep_reply(part, &mut invocation);
        let (reply, acked) = self.run_replicated(part.index, invocation).await?;
        if let Some(acked) = acked
            && acked < inner.min_replicas_ack
        {
            // The new end of the lease may not survive a failover, which would end the
            // lease early: the caller must treat the refresh as unknown and retry.
            return Err(StoreError::ReplicasBehind {
                acked,
                wanted: inner.min_replicas_ack,
            });
        }
        let reply = Reply::new(reply)?;
        reply.owned(|reply| {
            Ok(Lease {
                agent_id: reply.string(1)?,
                fencing_token: reply.uint(2)?,
                ttl_ms: reply.uint(3)?,
                acquired_at: UnixMillis(reply.int(4)?),
                expires_at: UnixMillis(reply.int(5)?),
            })
        })
    }

    /// Ends the lease: the holder's, by token, or whoever's when forced.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn release(
        &self,
        id: &ResourceId,
        releaser: Releaser<'_>,
    ) -> Result<Owned<()>, StoreError> {
        self.check_layout().await?;
        let inner = &self.inner;
        let (token_digest, agents) = match releaser {
            Releaser::Holder(token, agents) => (token.digest(), agents.to_lua()),
            Releaser::Force => (String::new(), String::new()),
        };
        let part = self.partition(id);
        let mut invocation = inner.scripts.release.invocation();
        invocation
            .key(self.lock_key(id))
            .key(&part.stream_key)
            .key(&part.expiry_key)
            .key(&part.held_key)
            .key(&part.leases_key)
            .arg(token_digest)
            .arg(id.as_str())
            .arg(&part.channel)
            .arg(&inner.history)
            .arg(agents);
        self.keep_reply(part, &mut invocation);
        let reply = Reply::new(self.run(part.index, invocation).await?)?;
        reply.owned(|_| Ok(()))
    }

    /// Who holds the lock, if anyone.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn status(&self, id: &ResourceId) -> Result<Option<Held>, StoreError> {
        let mut invocation = self.inner.scripts.status.invocation();
        invocation.key(self.lock_key(id));
        let reply = Reply::new(self.run(self.partition(id).index, invocation).await?)?;
        if reply.int(0)? == 0 {
            return Ok(None);
        }
        Ok(Some(Held {
            agent_id: reply.string(1)?,
            fencing_token: reply.uint(2)?,
            acquired_at: UnixMillis(reply.int(3)?),
            expires_at: UnixMillis(reply.int(4)?),
            remaining_ms: reply.uint(5)?,
        }))
    }

    /// Announces up to `batch` leases per partition that have run out, each exactly
    /// once across all instances. Partitions are reaped concurrently; one that cannot be
    /// reached does not hold the others back.
    pub async fn reap(&self, batch: usize) -> Reaped {
        // Only a layout found wrong stops the reaper: one that cannot be read now (its
        // node is down) must not keep the other partitions' leases from being announced.
        if let Err(failure @ StoreError::Layout { .. }) = self.check_layout().await {
            return Reaped {
                announced: 0,
                next: None,
                failure: Some(failure),
            };
        }
        let reaps = self
            .inner
            .partitions
            .iter()
            .map(|part| self.reap_partition(part, batch));
        let mut reaped = Reaped {
            announced: 0,
            next: None,
            failure: None,
        };
        for outcome in futures_util::future::join_all(reaps).await {
            match outcome {
                Ok((count, until)) => {
                    reaped.announced += count;
                    // A full batch: more are due now.
                    let until = if count as usize >= batch {
                        Some(Duration::ZERO)
                    } else {
                        until
                    };
                    reaped.next = match (reaped.next, until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Err(error) => reaped.failure = Some(error),
            }
        }
        reaped
    }

    async fn reap_partition(
        &self,
        part: &Partition,
        batch: usize,
    ) -> Result<(u64, Option<Duration>), StoreError> {
        let mut invocation = self.inner.scripts.reap.invocation();
        invocation
            .key(&part.expiry_key)
            .key(&part.held_key)
            .key(&part.leases_key)
            .key(&part.stream_key)
            .arg(&part.channel)
            .arg(&self.inner.history)
            .arg(batch);
        let reply = Reply::new(self.run(part.index, invocation).await?)?;
        let next = u64::try_from(reply.int(1)?).ok().map(Duration::from_millis);
        Ok((reply.uint(0)?, next))
    }

    /// A page of the locks held now whose ids start with `prefix`, after `after`.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let parts = &self.inner.partitions;
        if let [part] = &parts[..] {
            return self.list_partition(part, prefix, after, limit).await;
        }
        // Each partition pages through its own index, in the same byte order: merge their
        // pages. A partition that has more stopped at its cursor and says nothing of what
        // lies past it, so the merged page ends at the least such cursor.
        let pages = futures_util::future::try_join_all(
            parts
                .iter()
                .map(|part| self.list_partition(part, prefix, after, limit)),
        )
        .await?;
        let bound = pages
            .iter()
            .filter_map(|page| page.next_after.clone())
            .min();
        let mut locks: Vec<(String, Held)> = pages
            .into_iter()
            .flat_map(|page| page.locks)
            .filter(|(id, _)| bound.as_ref().is_none_or(|bound| id <= bound))
            .collect();
        locks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let next_after = if locks.len() > limit {
            locks.truncate(limit);
            locks.last().map(|(id, _)| id.clone())
        } else {
            bound
        };
        Ok(Page { locks, next_after })
    }

    async fn list_partition(
        &self,
        part: &Partition,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        // Bytewise comparison, as the sorted set orders: continue after the cursor only
        // when it lies past the start of the prefix's range.
        let min = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                [b"(".as_slice(), after.as_bytes()].concat()
            }
            _ => [b"[".as_slice(), prefix.as_bytes()].concat(),
        };
        let max = if prefix.is_empty() {
            b"+".to_vec()
        } else {
            [b"(".as_slice(), prefix.as_bytes(), &[0xff]].concat()
        };
        let mut invocation = self.inner.scripts.list.invocation();
        invocation
            .key(&part.held_key)
            .key(&part.leases_key)
            .arg(min)
            .arg(max)
            .arg(limit);
        let reply = Reply::new(self.run(part.index, invocation).await?)?;
        let cursor = reply.string(0)?;
        let mut locks = Vec::new();
        let mut at = 1;
        while at + 5 < reply.0.len() {
            locks.push((
                reply.string(at)?,
                Held {
                    agent_id: reply.string(at + 1)?,
                    fencing_token: reply.uint(at + 2)?,
                    acquired_at: UnixMillis(reply.int(at + 3)?),
                    expires_at: UnixMillis(reply.int(at + 4)?),
                    remaining_ms: reply.uint(at + 5)?,
                },
            ));
            at += 6;
        }
        Ok(Page {
            locks,
            next_after: (!cursor.is_empty()).then_some(cursor),
        })
    }

    /// Up to `count` events of `partition` after `after`, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn events_after(
        &self,
        partition: usize,
        after: EventId,
        count: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let command = redis::cmd("XRANGE")
            .arg(&self.inner.partitions[partition].stream_key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .to_owned();
        let reply: redis::streams::StreamRangeReply = self.query(Some(partition), command).await?;
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let id = entry
                    .id
                    .parse()
                    .map_err(|e: String| StoreError::Protocol(e))?;
                let body: String = entry.get("event").ok_or_else(|| {
                    StoreError::Protocol(format!("stream entry {id} has no event"))
                })?;
                Ok(StoredEvent { id, body })
            })
            .collect()
    }

    /// The id of the newest event in `partition`'s stream, if any.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn last_event_id(&self, partition: usize) -> Result<Option<EventId>, StoreError> {
        let command = redis::cmd("XREVRANGE")
            .arg(&self.inner.partitions[partition].stream_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .to_owned();
        let reply: redis::streams::StreamRangeReply = self.query(Some(partition), command).await?;
        reply
            .ids
            .first()
            .map(|entry| entry.id.parse().map_err(StoreError::Protocol))
            .transpose()
    }

    /// The bounds of the event history that `partition`'s stream still holds.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn event_log_bounds(&self, partition: usize) -> Result<LogBounds, StoreError> {
        let command = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.inner.partitions[partition].stream_key)
            .to_owned();
        let info: Value = match self.query(Some(partition), command).await {
            Ok(info) => info,
            // No stream yet: no event was ever emitted (or Redis lost them all).
            Err(StoreError::Redis(e)) if e.to_string().contains("no such key") => {
                return Ok(LogBounds::default());
            }
            Err(e) => return Err(e),
        };
        let mut bounds = LogBounds::default();
        let pairs = match info {
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => return Err(StoreError::Protocol(format!("XINFO STREAM gave {other:?}"))),
        };
        for pair in pairs.chunks(2) {
            let [Value::BulkString(name), value] = pair else {
                continue;
            };
            match (name.as_slice(), value) {
                (b"max-deleted-entry-id", Value::BulkString(id)) => {
                    bounds.max_deleted = parse_id(id)?;
                }
                (b"entries-added", Value::Int(n)) => {
                    bounds.entries_added = u64::try_from(*n).unwrap_or(0);
                }
                (b"length", Value::Int(n)) => bounds.length = u64::try_from(*n).unwrap_or(0),
                (b"first-entry", Value::Array(entry)) => {
                    if let Some(Value::BulkString(id)) = entry.first() {
                        bounds.first = Some(parse_id(id)?);
                    }
                }
                _ => {}
            }
        }
        Ok(bounds)
    }

    /// Checks that Redis answers, and that the keyspace is laid out as this instance
    /// expects, for readiness probes.
    ///
    /// # Errors
    /// [`StoreError`] when it does not within the command timeout, or the layout differs.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<()>(None, redis::cmd("PING")).await?;
        self.check_layout().await
    }
}

/// Whether a command failed before it could reach Redis: writing to a connection that
/// Redis had already closed (it restarted, say). Such a command ran nowhere, so it is
/// safe to send again on a fresh connection, even a change. Any other failure may come
/// after Redis ran the command, and is not retried.
fn never_sent(error: &redis::RedisError) -> bool {
    // redis keeps the I/O error behind an `Arc<dyn Error>`, out of reach of a downcast;
    // std renders `ErrorKind::BrokenPipe` as "broken pipe".
    error.is_connection_dropped() && error.to_string().contains("broken pipe")
}

fn parse_id(bytes: &[u8]) -> Result<EventId, StoreError> {
    std::str::from_utf8(bytes)
        .map_err(|_| StoreError::Protocol("a stream id that is not UTF-8".to_owned()))?
        .parse()
        .map_err(StoreError::Protocol)
}

/// The Pub/Sub channel every event is published on.
#[must_use]
pub fn event_channel(key_prefix: &str) -> String {
    format!("{key_prefix}events")
}

/// The seed nodes of a cluster, each with the TLS roots of `redis.tls_ca_file` when one
/// is set.
///
/// # Errors
/// [`StoreError`] when a URL is invalid or the CA file unreadable.
pub(crate) fn cluster_nodes(
    redis: &RedisSettings,
) -> Result<Vec<redis::ConnectionInfo>, StoreError> {
    redis
        .nodes
        .iter()
        .map(|url| tls_connection_info(url, &redis.tls_ca_file))
        .collect()
}

/// How often a cluster connection tries a request again (after a redirection, or a
/// connection lost before the reply), and its shortest and longest pause in between.
const CLUSTER_RETRIES: u32 = 3;
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 20;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 200;

/// How long a change's reply is kept for a call the cluster connection resends. The
/// connection gives a request up after `redis.command_timeout_ms` (the response timeout
/// covers its retries too), and lockd's own deadline is the same, so a resend comes
/// within it; the reply is kept well past that.
fn reply_ttl(redis: &RedisSettings) -> Duration {
    Duration::from_millis((4 * redis.command_timeout_ms).max(10_000))
}

/// A client for the cluster behind `redis.nodes`. With `push`, it speaks RESP3 and sends
/// what it is pushed (Pub/Sub messages, disconnections) there.
///
/// # Errors
/// [`StoreError`] when a URL is invalid or the CA file unreadable.
pub fn cluster_client(
    redis: &RedisSettings,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<redis::cluster::ClusterClient, StoreError> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(cluster_nodes(redis)?)
        .connection_timeout(Duration::from_millis(redis.connect_timeout_ms))
        .response_timeout(Duration::from_millis(redis.command_timeout_ms))
        // Enough to follow a redirection or two as slots move, with short pauses; all
        // within the response timeout, after which the request is given up.
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS);
    if !redis.tls_ca_file.is_empty() {
        builder = builder.certs(tls_certificates(&redis.tls_ca_file)?);
    }
    if let Some(push) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    Ok(builder.build()?)
}

/// A client for the current primary, for the Pub/Sub subscription.
///
/// # Errors
/// [`StoreError`] when the URL is invalid or no Sentinel names a primary.
pub async fn primary_client(redis: &RedisSettings) -> Result<redis::Client, StoreError> {
    Backend::primary_client(redis).await
}

/// Where and how to reach Redis: the URL, with the TLS roots of `redis.tls_ca_file`
/// when one is set. Shared by the pool and the Pub/Sub subscription.
///
/// # Errors
/// [`StoreError`] when the URL is invalid or the CA file unreadable.
pub fn connection_info(redis: &RedisSettings) -> Result<redis::ConnectionInfo, StoreError> {
    tls_connection_info(&redis.url, &redis.tls_ca_file)
}

fn tls_connection_info(url: &str, ca_file: &str) -> Result<redis::ConnectionInfo, StoreError> {
    use redis::IntoConnectionInfo;
    if ca_file.is_empty() || !url.starts_with("rediss://") {
        return Ok(url.into_connection_info()?);
    }
    let client = redis::Client::build_with_tls(url, tls_certificates(ca_file)?)?;
    Ok(client.get_connection_info().clone())
}

fn tls_certificates(ca_file: &str) -> Result<redis::TlsCertificates, StoreError> {
    let root_cert = std::fs::read(ca_file)
        .map_err(|e| StoreError::Protocol(format!("cannot read {ca_file}: {e}")))?;
    Ok(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    })
}

/// A script's array reply, read by position.
struct Reply(Vec<Value>);

impl Reply {
    fn new(value: Value) -> Result<Self, StoreError> {
        match value {
            Value::Array(items) if !items.is_empty() => Ok(Self(items)),
            other => Err(StoreError::Protocol(format!(
                "expected an array, got {other:?}"
            ))),
        }
    }

    fn int(&self, index: usize) -> Result<i64, StoreError> {
        match self.0.get(index) {
            Some(Value::Int(n)) => Ok(*n),
            other => Err(StoreError::Protocol(format!(
                "expected an integer at {index}, got {other:?}"
            ))),
        }
    }

    fn uint(&self, index: usize) -> Result<u64, StoreError> {
        let n = self.int(index)?;
        u64::try_from(n)
            .map_err(|_| StoreError::Protocol(format!("expected a non-negative integer, got {n}")))
    }

    fn string(&self, index: usize) -> Result<String, StoreError> {
        match self.0.get(index) {
            Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone())
                .map_err(|_| StoreError::Protocol("a string that is not UTF-8".to_owned())),
            other => Err(StoreError::Protocol(format!(
                "expected a string at {index}, got {other:?}"
            ))),
        }
    }

    /// Decodes the `{1, ...} | {-1} | {-2, agent, expires} | {-3, agent}` shape of release
    /// and refresh.
    fn owned<T>(
        self,
        done: impl FnOnce(&Self) -> Result<T, StoreError>,
    ) -> Result<Owned<T>, StoreError> {
        match self.int(0)? {
            1 => Ok(Owned::Done(done(&self)?)),
            -1 => Ok(Owned::NotFound),
            -2 => {
                let expires_at = self.int(2)?;
                Ok(Owned::NotOwner(Holder {
                    agent_id: self.string(1)?,
                    expires_at: UnixMillis(expires_at),
                    remaining_ms: 0,
                }))
            }
            -3 => Ok(Owned::Forbidden(self.string(1)?)),
            other => Err(StoreError::Protocol(format!("unknown outcome {other}"))),
        }
    }
}

#[cfg(test)]
mod tests;
