//! Typed configuration: `config/default.toml` (compiled in), then a file given with
//! `--config`, then `LOCKD_<SECTION>__<KEY>` environment variables, then CLI flags.
//!
//! Loading fails with a message that names the offending key, so a bad deployment stops
//! at startup instead of misbehaving later.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The defaults, the same text as `config/default.toml` in the repository.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Most event partitions `redis.partitions` may ask for. An event id names a position
/// in each (up to 40 bytes), and clients send it back in a header: 128 keep it within
/// the 8 KiB that proxies commonly allow a header line.
pub const MAX_PARTITIONS: u16 = 128;
/// Event partitions in cluster mode when `redis.partitions` is 0: enough for the keys
/// and events to spread over a few dozen primaries.
pub const CLUSTER_PARTITIONS: u16 = 16;

/// All of lockd's settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP side.
    pub server: ServerSettings,
    /// The Redis side.
    pub redis: RedisSettings,
    /// Lease and wait limits.
    pub locks: LockSettings,
    /// The event stream.
    pub events: EventSettings,
    /// Access control.
    pub auth: AuthSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Whether the API requires a bearer key.
    pub enabled: bool,
    /// The keys.
    pub keys: Vec<ApiKeySettings>,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Who the key belongs to, for logs and per-key limits.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Glob of the agent ids the key may act as.
    pub agents: String,
    /// `lock`, `read`, `admin`.
    pub scopes: Vec<String>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Longest time a request may take (acquires get `locks.max_wait_ms` on top).
    pub request_timeout_ms: u64,
    /// Longest time a client may take to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Grace period for requests in flight at shutdown.
    pub shutdown_timeout_ms: u64,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Origins whose browser pages may use the API (`*` for any).
    pub cors_allowed_origins: Vec<String>,
}

/// Which Redis deployment holds the locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `redis.url`.
    Standalone,
    /// The primary that Sentinel names.
    Sentinel,
    /// A Redis Cluster, found through its seed nodes.
    Cluster,
}

/// `[redis]`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// The deployment.
    pub mode: RedisMode,
    /// Sentinel mode: the Sentinels' URLs.
    pub sentinels: Vec<String>,
    /// Sentinel mode: the monitored primary's name.
    #[serde(deserialize_with = "text")]
    pub master_name: String,
    /// Cluster mode: seed nodes' URLs; the rest of the cluster is discovered from them.
    pub nodes: Vec<String>,
    /// Event partitions (and hash-tag groups of keys); 0 picks 1 outside cluster mode and
    /// 16 in it. Every instance on one keyspace must use the same number.
    pub partitions: u16,
    /// Replicas that must acknowledge a grant (WAIT) before it is answered.
    pub min_replicas_ack: u32,
    /// How long to wait for those acknowledgements.
    pub replica_ack_timeout_ms: u64,
    /// Connection URL; may carry a password, so `Debug` hides it.
    #[serde(deserialize_with = "text")]
    pub url: String,
    /// With `rediss://`: the CA to trust instead of the system's roots.
    #[serde(deserialize_with = "text")]
    pub tls_ca_file: String,
    /// Prefix of every key and of the event channel.
    #[serde(deserialize_with = "text")]
    pub key_prefix: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest time to open a connection.
    pub connect_timeout_ms: u64,
    /// Longest time a command may take, pool wait included.
    pub command_timeout_ms: u64,
}

impl RedisSettings {
    /// How many event partitions the keyspace is split into (`redis.partitions`, or its
    /// automatic value).
    #[must_use]
    pub fn partition_count(&self) -> usize {
        match (self.partitions, self.mode) {
            (0, RedisMode::Cluster) => usize::from(CLUSTER_PARTITIONS),
            (0, _) => 1,
            (n, _) => usize::from(n),
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("mode", &self.mode)
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|url| redact_url(url))
                    .collect::<Vec<_>>(),
            )
            .field("partitions", &self.partitions)
            .field("min_replicas_ack", &self.min_replicas_ack)
            .field("replica_ack_timeout_ms", &self.replica_ack_timeout_ms)
            .field("url", &redact_url(&self.url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .finish()
    }
}

/// `[locks]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockSettings {
    /// Lease length when an acquire names none.
    pub default_ttl_ms: u64,
    /// Longest lease.
    pub max_ttl_ms: u64,
    /// Longest server-side wait.
    pub max_wait_ms: u64,
    /// Most waiting acquires at once in this process.
    pub max_waiters: usize,
    /// How long a fencing counter outlives the last lease of its resource.
    pub fence_retention_ms: u64,
}

/// `[events]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Approximate length of the replay stream.
    pub history: u64,
    /// Keep-alive interval of idle event streams.
    pub keepalive_ms: u64,
    /// The SSE `retry:` value sent to clients.
    pub retry_ms: u64,
    /// Events a client may fall behind by before it is disconnected.
    pub client_buffer: usize,
    /// Most event-stream clients at once in this process.
    pub max_clients: usize,
    /// Most event-stream clients at once per API key.
    pub max_clients_per_key: usize,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// Tracing filter directive.
    #[serde(deserialize_with = "text")]
    pub level: String,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings from the command line; each one that is set overrides every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--redis-url`.
    pub redis_url: Option<String>,
    /// `--key-prefix`.
    pub key_prefix: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A value has the wrong type, or a key is unknown.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of its range.
    #[error("invalid configuration: {key}: {message}")]
    Invalid {
        /// The dotted key, like `locks.max_ttl_ms`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl Settings {
    /// Loads the layered configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key when a file is unreadable, a value has the wrong
    /// type, a key is unknown, or a value is out of range.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            // Figment skips a missing file silently; a file the operator named must exist.
            std::fs::File::open(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("LOCKD_").split("__"));
        // Flags arrive typed (clap checked them), so they cannot fail here.
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        if let Some(url) = &overrides.redis_url {
            figment = figment.merge(Serialized::default("redis.url", url));
        }
        if let Some(prefix) = &overrides.key_prefix {
            figment = figment.merge(Serialized::default("redis.key_prefix", prefix));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(Serialized::default("log.format", format));
        }
        let settings: Self = figment.extract().map_err(describe)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults, as a starting point for tests and tools.
    ///
    /// # Panics
    /// Never: the defaults are checked by a unit test.
    #[must_use]
    pub fn defaults() -> Self {
        let settings: Self = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml is valid");
        settings
    }

    /// Checks ranges and relations that types cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
            Ok(())
        }
        /// Every URL in `urls` has one of `schemes`.
        fn urls_of(
            key: &'static str,
            urls: &[String],
            schemes: &[&str],
        ) -> Result<(), ConfigError> {
            match urls
                .iter()
                .find(|url| !schemes.iter().any(|scheme| url.starts_with(scheme)))
            {
                Some(bad) => Err(invalid(
                    key,
                    format!(
                        "{:?} is not a {} URL",
                        redact_url(bad),
                        schemes.join(" or ")
                    ),
                )),
                None => Ok(()),
            }
        }
        positive("server.request_timeout_ms", self.server.request_timeout_ms)?;
        positive(
            "server.header_read_timeout_ms",
            self.server.header_read_timeout_ms,
        )?;
        positive("redis.connect_timeout_ms", self.redis.connect_timeout_ms)?;
        positive("redis.command_timeout_ms", self.redis.command_timeout_ms)?;
        positive("locks.default_ttl_ms", self.locks.default_ttl_ms)?;
        positive("events.history", self.events.history)?;
        positive("events.keepalive_ms", self.events.keepalive_ms)?;
        positive("events.retry_ms", self.events.retry_ms)?;
        if !(1..=1_000_000).contains(&self.events.client_buffer) {
            return Err(invalid(
                "events.client_buffer",
                "must be between 1 and 1000000",
            ));
        }

        let url = &self.redis.url;
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err(invalid(
                "redis.url",
                "must start with redis://, rediss://, redis+unix:// or unix://",
            ));
        }
        if !self.redis.tls_ca_file.is_empty() {
            let tls = match self.redis.mode {
                RedisMode::Cluster => self.redis.nodes.iter().all(|u| u.starts_with("rediss://")),
                _ => url.starts_with("rediss://"),
            };
            if !tls {
                return Err(invalid(
                    "redis.tls_ca_file",
                    "is only used with a rediss:// URL",
                ));
            }
            std::fs::metadata(&self.redis.tls_ca_file).map_err(|e| {
                invalid(
                    "redis.tls_ca_file",
                    format!("{}: {e}", self.redis.tls_ca_file),
                )
            })?;
        }
        if self.redis.mode == RedisMode::Sentinel {
            if self.redis.sentinels.is_empty() {
                return Err(invalid(
                    "redis.sentinels",
                    "sentinel mode needs at least one Sentinel",
                ));
            }
            urls_of("redis.sentinels", &self.redis.sentinels, &["redis://"])?;
            if self.redis.master_name.is_empty() {
                return Err(invalid(
                    "redis.master_name",
                    "must not be empty in sentinel mode",
                ));
            }
        }
        if self.redis.mode == RedisMode::Cluster {
            if self.redis.nodes.is_empty() {
                return Err(invalid(
                    "redis.nodes",
                    "cluster mode needs at least one seed node",
                ));
            }
            urls_of("redis.nodes", &self.redis.nodes, &["redis://", "rediss://"])?;
        }
        if self.redis.partitions > MAX_PARTITIONS {
            return Err(invalid(
                "redis.partitions",
                format!("must be at most {MAX_PARTITIONS}"),
            ));
        }
        if self.server.request_timeout_ms <= 2 * self.redis.command_timeout_ms {
            // Past the request timeout the outcome of a change is unknown, but the answer
            // is a 4xx (408): a change must always end within it, a resend included.
            return Err(invalid(
                "server.request_timeout_ms",
                "must be more than twice redis.command_timeout_ms",
            ));
        }
        if self.redis.min_replicas_ack > 0 {
            positive(
                "redis.replica_ack_timeout_ms",
                self.redis.replica_ack_timeout_ms,
            )?;
            if self.redis.replica_ack_timeout_ms >= self.redis.command_timeout_ms {
                return Err(invalid(
                    "redis.replica_ack_timeout_ms",
                    "must be less than redis.command_timeout_ms, which bounds the whole acquire",
                ));
            }
        }
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty() || prefix.len() > 64 {
            return Err(invalid("redis.key_prefix", "must be 1 to 64 bytes long"));
        }
        if prefix.contains(['{', '}']) || prefix.chars().any(char::is_control) {
            return Err(invalid(
                "redis.key_prefix",
                "must not contain '{', '}' (lockd places its own hash tag) or control characters",
            ));
        }
        if !(1..=1024).contains(&self.redis.pool_size) {
            return Err(invalid("redis.pool_size", "must be between 1 and 1024"));
        }
        // A year: leases are meant to be short, and expiry times must stay far below 2^53.
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        if !(1..=YEAR_MS).contains(&self.locks.max_ttl_ms) {
            return Err(invalid(
                "locks.max_ttl_ms",
                format!("must be between 1 and {YEAR_MS}"),
            ));
        }
        if self.locks.default_ttl_ms > self.locks.max_ttl_ms {
            return Err(invalid(
                "locks.default_ttl_ms",
                format!(
                    "must not exceed locks.max_ttl_ms ({})",
                    self.locks.max_ttl_ms
                ),
            ));
        }
        if self.locks.max_wait_ms > 3_600_000 {
            return Err(invalid(
                "locks.max_wait_ms",
                "must be at most 3600000 (an hour)",
            ));
        }
        if self.locks.fence_retention_ms > YEAR_MS {
            return Err(invalid(
                "locks.fence_retention_ms",
                format!("must be at most {YEAR_MS}"),
            ));
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return Err(invalid(
                "server.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.server.max_body_bytes) {
            return Err(invalid(
                "server.max_body_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if self.locks.max_waiters > 1_000_000 {
            return Err(invalid("locks.max_waiters", "must be at most 1000000"));
        }
        if self.events.max_clients > 1_000_000 {
            return Err(invalid("events.max_clients", "must be at most 1000000"));
        }
        for origin in &self.server.cors_allowed_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                return Err(invalid(
                    "server.cors_allowed_origins",
                    format!("{origin:?} is not an origin like https://example.com (or \"*\")"),
                ));
            }
        }
        self.validate_auth()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

impl Settings {
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "auth.keys",
            message,
        };
        if self.auth.enabled && self.auth.keys.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth.enabled",
                message: "auth is on but auth.keys is empty: nobody could use the API".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for key in &self.auth.keys {
            if key.name.is_empty() || !names.insert(key.name.as_str()) {
                return Err(invalid(format!(
                    "key names must be unique and non-empty ({:?})",
                    key.name
                )));
            }
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "{}: sha256 must be 64 hex digits",
                    key.name
                )));
            }
            if !hashes.insert(key.sha256.to_ascii_lowercase()) {
                return Err(invalid(format!(
                    "{}: the same key is listed twice",
                    key.name
                )));
            }
            crate::domain::AgentPattern::parse(&key.agents)
                .map_err(|e| invalid(format!("{}: agents: {e}", key.name)))?;
            if key.scopes.is_empty() {
                return Err(invalid(format!("{}: scopes must not be empty", key.name)));
            }
            for scope in &key.scopes {
                if !matches!(scope.as_str(), "lock" | "read" | "admin") {
                    return Err(invalid(format!(
                        "{}: unknown scope {scope:?} (known: lock, read, admin)",
                        key.name
                    )));
                }
            }
        }
        Ok(())
    }
}

impl ServerSettings {
    /// `request_timeout_ms` as a duration.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// A string setting. Environment variables carry no types, so figment reads
/// `LOCKD_REDIS__KEY_PREFIX=123` as a number; for a string setting it is the text.
fn text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(Text)
}

/// Names the key in the dotted form that the file uses, and where the value came from.
fn describe(error: figment::Error) -> ConfigError {
    let key = error.path.join(".").to_lowercase();
    let source = error
        .metadata
        .as_ref()
        .map(|metadata| match &metadata.source {
            Some(source) => format!(" (from {source})"),
            None => format!(" (from {})", metadata.name),
        })
        .unwrap_or_default();
    if key.is_empty() {
        ConfigError::Parse(format!("{}{source}", error.kind))
    } else {
        ConfigError::Parse(format!("{key}: {}{source}", error.kind))
    }
}

/// The URL with any password replaced, for logs.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let settings = Settings::defaults();
        settings.validate().unwrap();
        assert_eq!(settings.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.redis.key_prefix, "lockd:");
        assert_eq!(settings.locks.default_ttl_ms, 30_000);
        assert_eq!(settings.locks.max_ttl_ms, 3_600_000);
        assert_eq!(settings.locks.max_wait_ms, 60_000);
    }

    #[test]
    fn validation_names_the_key() {
        let mut settings = Settings::defaults();
        settings.locks.default_ttl_ms = settings.locks.max_ttl_ms + 1;
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("locks.default_ttl_ms"), "{message}");

        let mut settings = Settings::defaults();
        settings.redis.key_prefix = "a{b}".into();
        let message = settings.validate().unwrap_err().to_string();
        assert!(message.contains("redis.key_prefix"), "{message}");
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let mut settings = Settings::defaults();
        settings.redis.url = "redis://lockd:s3cret@redis.internal:6379/0".into();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("lockd:***@redis.internal:6379/0"), "{shown}");
    }
}
