//! The Redis deployment behind the store: one server, a primary found through Sentinel,
//! or a cluster. Each hands out connections from a deadpool pool, so the store's code is
//! the same for all.

use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{self, Cmd, Pipeline, RedisFuture, Value};
use deadpool_redis::sentinel::{self, SentinelServerType};
use deadpool_redis::{Pool, Runtime};

use super::StoreError;
use crate::config::{RedisMode, RedisSettings};

/// A connection pool to the deployment's primary.
pub(crate) enum Backend {
    /// One Redis server.
    Standalone(Pool),
    /// The primary that the Sentinels name; after a failover, new connections go to the
    /// new primary.
    Sentinel(sentinel::Pool),
    /// Every primary of a cluster; commands go to the one that owns their keys' slot.
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pooled connection to the primary.
pub(crate) enum Conn {
    Standalone(deadpool_redis::Connection),
    Sentinel(sentinel::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Backend {
    /// Builds the pool; connections open lazily, so Redis need not be up yet.
    pub(crate) fn new(redis: &RedisSettings) -> Result<Self, StoreError> {
        let connect = Duration::from_millis(redis.connect_timeout_ms);
        let command = Duration::from_millis(redis.command_timeout_ms);
        let build_error = |e: String| StoreError::Pool(e);
        match redis.mode {
            RedisMode::Standalone => {
                let connection = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(command));
                let manager = deadpool_redis::Manager::new_with_config(
                    super::connection_info(redis)?,
                    connection,
                )?;
                Pool::builder(manager)
                    .max_size(redis.pool_size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(command))
                    .create_timeout(Some(connect))
                    .recycle_timeout(Some(command))
                    .build()
                    .map(Self::Standalone)
                    .map_err(|e| build_error(e.to_string()))
            }
            RedisMode::Sentinel => {
                let mut config = sentinel::Config::from_urls(
                    redis.sentinels.clone(),
                    redis.master_name.clone(),
                    SentinelServerType::Master,
                );
                config.node_connection_info = Some(sentinel::SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: Some(primary_credentials(redis)?.into()),
                });
                config
                    .builder()
                    .map_err(|e| build_error(e.to_string()))?
                    .max_size(redis.pool_size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(command))
                    .create_timeout(Some(connect))
                    .recycle_timeout(Some(command))
                    .build()
                    .map(Self::Sentinel)
                    .map_err(|e| build_error(e.to_string()))
            }
            RedisMode::Cluster => {
                let manager =
                    deadpool_redis::cluster::Manager::new(super::cluster_nodes(redis)?, false)?;
                deadpool_redis::cluster::Pool::builder(manager)
                    .max_size(redis.pool_size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(command))
                    .create_timeout(Some(connect))
                    .recycle_timeout(Some(command))
                    .build()
                    .map(Self::Cluster)
                    .map_err(|e| build_error(e.to_string()))
            }
        }
    }

    /// A connection from the pool.
    pub(crate) async fn get(&self) -> Result<Conn, StoreError> {
        match self {
            Self::Standalone(pool) => pool
                .get()
                .await
                .map(Conn::Standalone)
                .map_err(|e| StoreError::Pool(e.to_string())),
            Self::Sentinel(pool) => pool
                .get()
                .await
                .map(Conn::Sentinel)
                .map_err(|e| StoreError::Pool(e.to_string())),
            Self::Cluster(pool) => pool
                .get()
                .await
                .map(Conn::Cluster)
                .map_err(|e| StoreError::Pool(e.to_string())),
        }
    }

    /// A client for the current primary, for the Pub/Sub subscription. A cluster has
    /// no one primary: use [`super::cluster_client`].
    pub(crate) async fn primary_client(redis: &RedisSettings) -> Result<redis::Client, StoreError> {
        match redis.mode {
            RedisMode::Standalone => Ok(redis::Client::open(super::connection_info(redis)?)?),
            RedisMode::Cluster => Err(StoreError::Protocol(
                "a cluster has no single primary".to_owned(),
            )),
            RedisMode::Sentinel => {
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(primary_credentials(redis)?);
                let mut client = redis::sentinel::SentinelClient::build(
                    redis.sentinels.clone(),
                    redis.master_name.clone(),
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )?;
                Ok(client.async_get_client().await?)
            }
        }
    }
}

/// The username, password and database for the primary, from `redis.url` (whose host
/// and port Sentinel mode ignores).
fn primary_credentials(redis: &RedisSettings) -> Result<redis::RedisConnectionInfo, StoreError> {
    use redis::IntoConnectionInfo;
    let info = redis.url.as_str().into_connection_info()?;
    Ok(info.redis_settings().clone())
}

impl Conn {
    /// Takes a connection that must not serve again out of the pool: after a failover,
    /// one still open to the demoted primary answers every write with READONLY.
    pub(crate) fn discard(self) {
        match self {
            Self::Standalone(conn) => drop(deadpool_redis::Connection::take(conn)),
            Self::Sentinel(conn) => drop(sentinel::Connection::take(conn)),
            Self::Cluster(conn) => drop(deadpool_redis::cluster::Connection::take(conn)),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
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
            Self::Standalone(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
