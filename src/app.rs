//! Startup: builds everything from [`Settings`] the same way for production and tests.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::{RedisMode, Settings, redact_url};
use crate::events::subscriber::SubscriberConfig;
use crate::events::{self, Hub, HubLimits, Waiters};
use crate::routes::{self, AppState};
use crate::server::{self, ConnectionLimits};
use crate::store::{self, Store};

/// Why lockd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Redis settings are unusable.
    #[error("invalid Redis settings: {0}")]
    Store(#[from] store::StoreError),
}

/// A built, bound, not yet serving lockd.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    subscriber: JoinHandle<()>,
    reaper: JoinHandle<()>,
    waiters: Waiters,
    hub: Hub,
}

impl Application {
    /// Binds the listener, builds the store and starts the event subscriber. Redis need
    /// not be up: requests answer 503 until it is, and the subscriber keeps retrying.
    ///
    /// # Errors
    /// [`StartupError`] when the address cannot be bound or the Redis URL is invalid.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;

        // TLS to Redis uses ring; installing it twice (tests build several apps) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::new(settings)?;
        let shutdown = CancellationToken::new();
        let waiters = Waiters::default();
        let hub = Hub::new(HubLimits {
            total: settings.events.max_clients,
            // Without auth every client is the same anonymous caller: only the total applies.
            per_owner: if settings.auth.enabled {
                settings.events.max_clients_per_key
            } else {
                usize::MAX
            },
        });
        let subscriber = tokio::spawn(events::run_subscriber(
            SubscriberConfig {
                redis: settings.redis.clone(),
                channels: store::event_channels(&settings.redis),
                connect_timeout: Duration::from_millis(settings.redis.connect_timeout_ms),
            },
            store.clone(),
            waiters.clone(),
            hub.clone(),
            shutdown.clone(),
        ));
        let reaper = tokio::spawn(events::reaper::run(store.clone(), shutdown.clone()));
        let state = AppState {
            store,
            waiters: waiters.clone(),
            hub: hub.clone(),
            locks: settings.locks.clone(),
            events: settings.events.clone(),
            shutdown: shutdown.clone(),
            metrics: crate::metrics::install(),
        };
        let authenticator = Authenticator::new(&settings.auth);
        if !authenticator.enabled() && !settings.auth.keys.is_empty() {
            tracing::warn!(
                keys = settings.auth.keys.len(),
                "auth.keys are configured but auth.enabled is false: the keys are ignored \
                 and the API is open to anyone"
            );
        }
        if !authenticator.enabled() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                %local_addr,
                "AUTH IS OFF on a non-loopback address: anyone who can reach this port can \
                 take, release and read every lock; set auth.enabled = true with API keys"
            );
        }
        let router = routes::router(state, settings, authenticator);
        let redis = &settings.redis;
        let redacted = |urls: &[String]| {
            urls.iter()
                .map(|url| redact_url(url))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let reached = match redis.mode {
            RedisMode::Standalone => redact_url(&redis.url),
            RedisMode::Sentinel => format!(
                "{} via the Sentinels {}",
                redis.master_name,
                redacted(&redis.sentinels)
            ),
            RedisMode::Cluster => format!("the cluster of {}", redacted(&redis.nodes)),
        };
        tracing::info!(
            %local_addr,
            redis = %reached,
            partitions = redis.partition_count(),
            key_prefix = %redis.key_prefix,
            "lockd ready to serve"
        );
        Ok(Self {
            listener,
            local_addr,
            router,
            limits: ConnectionLimits {
                max_connections: settings.server.max_connections,
                header_read_timeout: Duration::from_millis(settings.server.header_read_timeout_ms),
                shutdown_timeout: Duration::from_millis(settings.server.shutdown_timeout_ms),
            },
            shutdown,
            subscriber,
            reaper,
            waiters,
            hub,
        })
    }

    /// The address actually bound (useful with port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A token that stops the server when cancelled.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The registry of requests waiting for busy locks in this process.
    #[must_use]
    pub fn waiters(&self) -> Waiters {
        self.waiters.clone()
    }

    /// The registry of event-stream clients in this process.
    #[must_use]
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Serves until the shutdown token fires, then drains and returns.
    pub async fn run_until_stopped(self) {
        server::serve(
            self.listener,
            self.router,
            self.limits,
            self.shutdown.clone(),
        )
        .await;
        self.shutdown.cancel();
        let _ = self.subscriber.await;
        let _ = self.reaper.await;
        tracing::info!("lockd stopped");
    }
}
