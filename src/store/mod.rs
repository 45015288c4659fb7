//! The lock store: the only code that knows Redis key names and the Lua scripts.
//!
//! Every change is one Lua script (`scripts/*.lua`, run with EVALSHA), so a change, its
//! fencing token and its event are atomic (invariants 1, 3 and 4). Times come from
//! Redis's `TIME` inside the scripts and leases are Redis key expiries (invariant 6).
//! Only the SHA-256 of a lock token is stored (invariant 3).
//!
//! # Key layout
//! All keys of a resource share the hash tag `{0}`, the event partition the resource
//! belongs to, so each script touches one Redis Cluster hash slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}{0}:lock:{resource_id}` | hash | the lease: token digest, agent, fence, times; expires with the lease |
//! | `{prefix}{0}:fence:{resource_id}` | string | the last fencing token issued |
//! | `{prefix}{0}:events` | stream | the event history, capped at `events.history` |
//!
//! Events are also published on the channel `{prefix}events`.

use std::time::Duration;

use deadpool_redis::redis::{self, Script, Value};
use deadpool_redis::{Pool, Runtime};

use crate::config::{RedisSettings, Settings};
use crate::domain::{AgentId, LockToken, ResourceId};
use crate::error::Holder;
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
    /// A script returned something it never returns: a bug or a foreign key in our prefix.
    #[error("unexpected reply from Redis: {0}")]
    Protocol(String),
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

/// The scripts, each compiled with the shared prelude; their SHA is computed once.
struct Scripts {
    acquire: Script,
    refresh: Script,
    release: Script,
    status: Script,
}

impl Scripts {
    fn new() -> Self {
        const PRELUDE: &str = include_str!("scripts/prelude.lua");
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            acquire: with_prelude(include_str!("scripts/acquire.lua")),
            refresh: with_prelude(include_str!("scripts/refresh.lua")),
            release: with_prelude(include_str!("scripts/release.lua")),
            status: with_prelude(include_str!("scripts/status.lua")),
        }
    }
}

/// Handle to the lock store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    pool: Pool,
    scripts: Scripts,
    /// `{prefix}{0}:` — every key starts with it.
    key_base: String,
    stream_key: String,
    channel: String,
    history: String,
    fence_retention_ms: String,
    command_timeout: Duration,
}

impl Store {
    /// Builds the pool; connections open lazily, so Redis need not be up yet.
    ///
    /// # Errors
    /// [`StoreError`] when the URL is not a Redis URL.
    pub fn new(settings: &Settings) -> Result<Self, StoreError> {
        let redis = &settings.redis;
        let pool = build_pool(redis)?;
        let key_base = format!("{}{{0}}:", redis.key_prefix);
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                pool,
                scripts: Scripts::new(),
                stream_key: format!("{key_base}events"),
                key_base,
                channel: event_channel(&redis.key_prefix),
                history: settings.events.history.to_string(),
                fence_retention_ms: settings.locks.fence_retention_ms.to_string(),
                command_timeout: Duration::from_millis(redis.command_timeout_ms),
            }),
        })
    }

    fn lock_key(&self, id: &ResourceId) -> String {
        format!("{}lock:{id}", self.inner.key_base)
    }

    fn fence_key(&self, id: &ResourceId) -> String {
        format!("{}fence:{id}", self.inner.key_base)
    }

    /// Runs a script invocation within the command timeout (pool wait included).
    async fn run(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let inner = &self.inner;
        let work = async {
            let mut conn = inner
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Pool(e.to_string()))?;
            // A dropped future is safe here: the multiplexed connection matches replies
            // to requests by order, so a late reply is discarded, not misattributed.
            Ok(invocation.invoke_async::<Value>(&mut conn).await?)
        };
        tokio::time::timeout(inner.command_timeout, work)
            .await
            .map_err(|_| StoreError::Timeout(inner.command_timeout))?
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
    ) -> Result<Acquired, StoreError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.acquire.prepare_invoke();
        invocation
            .key(self.lock_key(id))
            .key(self.fence_key(id))
            .key(&inner.stream_key)
            .arg(token.digest())
            .arg(agent.as_str())
            .arg(ttl_ms)
            .arg(id.as_str())
            .arg(&inner.channel)
            .arg(&inner.history)
            .arg(&inner.fence_retention_ms);
        let reply = Reply::new(self.run(invocation).await?)?;
        if reply.int(0)? == 1 {
            Ok(Acquired::Granted(Lease {
                agent_id: agent.as_str().to_owned(),
                fencing_token: reply.uint(1)?,
                ttl_ms,
                acquired_at: UnixMillis(reply.int(2)?),
                expires_at: UnixMillis(reply.int(3)?),
            }))
        } else {
            Ok(Acquired::Held(Holder {
                agent_id: reply.string(1)?,
                expires_at: UnixMillis(reply.int(2)?),
                remaining_ms: reply.uint(3)?,
            }))
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
    ) -> Result<Owned<Lease>, StoreError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.refresh.prepare_invoke();
        invocation
            .key(self.lock_key(id))
            .key(self.fence_key(id))
            .key(&inner.stream_key)
            .arg(token.digest())
            .arg(ttl_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(id.as_str())
            .arg(&inner.channel)
            .arg(&inner.history)
            .arg(&inner.fence_retention_ms);
        let reply = Reply::new(self.run(invocation).await?)?;
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

    /// Ends `token`'s lease.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn release(
        &self,
        id: &ResourceId,
        token: &LockToken,
    ) -> Result<Owned<()>, StoreError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.release.prepare_invoke();
        invocation
            .key(self.lock_key(id))
            .key(&inner.stream_key)
            .arg(token.digest())
            .arg(id.as_str())
            .arg(&inner.channel)
            .arg(&inner.history);
        let reply = Reply::new(self.run(invocation).await?)?;
        reply.owned(|_| Ok(()))
    }

    /// Who holds the lock, if anyone.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn status(&self, id: &ResourceId) -> Result<Option<Held>, StoreError> {
        let mut invocation = self.inner.scripts.status.prepare_invoke();
        invocation.key(self.lock_key(id));
        let reply = Reply::new(self.run(invocation).await?)?;
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

    /// Checks that Redis answers, for readiness probes.
    ///
    /// # Errors
    /// [`StoreError`] when it does not within the command timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let work = async {
            let mut conn = inner
                .pool
                .get()
                .await
                .map_err(|e| StoreError::Pool(e.to_string()))?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(())
        };
        tokio::time::timeout(inner.command_timeout, work)
            .await
            .map_err(|_| StoreError::Timeout(inner.command_timeout))?
    }
}

/// The Pub/Sub channel every event is published on.
#[must_use]
pub fn event_channel(key_prefix: &str) -> String {
    format!("{key_prefix}events")
}

fn build_pool(redis: &RedisSettings) -> Result<Pool, StoreError> {
    let connect = Duration::from_millis(redis.connect_timeout_ms);
    let command = Duration::from_millis(redis.command_timeout_ms);
    let connection = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(command));
    let manager = deadpool_redis::Manager::new_with_config(redis.url.as_str(), connection)?;
    Pool::builder(manager)
        .max_size(redis.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(command))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(command))
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
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

    /// Decodes the `{1, ...} | {-1} | {-2, agent, expires}` shape of release and refresh.
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
            other => Err(StoreError::Protocol(format!("unknown outcome {other}"))),
        }
    }
}
