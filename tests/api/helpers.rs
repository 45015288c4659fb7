//! The test harness: real `redis-server` processes on free ports, killed on drop, and
//! lockd apps on port 0, each with its own key prefix.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use lockd::events::{Hub, Waiters};
use lockd::{Application, Settings};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `condition` every 10 ms for up to `limit`; panics with `what` if it never holds.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `redis-server` owned by one test: started on a free port, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub async fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// Starts a server with extra `redis-server` arguments.
    pub async fn start_with(args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("lockd-test-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut server = Self {
            port: 0,
            dir,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        // Another process may take the port between our probe and Redis's bind: retry.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server did not start (is it on PATH?)");
    }

    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (is it on PATH?)");
        self.child = Some(child);
        for _ in 0..300 {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        false
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's data directory (where an AOF or RDB file goes).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same data directory.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// A connection for inspecting what lockd wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("a redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL until thawed on some kernels' accounting;
            // thaw first so that it really goes.
            signal(child.id(), "-CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends a signal with kill(1), so the tests need no libc bindings.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid} failed");
}

async fn ping(port: u16) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_millis(200),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), stream.read_exact(&mut reply)).await,
        Ok(Ok(_)) if &reply == b"+PONG\r\n"
    )
}

/// Settings for a test app on `redis`: port 0, a fresh key prefix, short timeouts.
pub fn test_settings(redis: &RedisServer) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".parse().expect("an address");
    settings.server.shutdown_timeout_ms = 2000;
    settings.redis.url = redis.url();
    settings.redis.key_prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    settings.redis.connect_timeout_ms = 300;
    settings.redis.command_timeout_ms = 500;
    settings
}

/// A lockd app serving on a loopback port, stopped on drop.
pub struct TestApp {
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// A client with keep-alive, as SDKs use.
    pub client: reqwest::Client,
    /// The settings the app runs with.
    pub settings: Settings,
    /// The app's waiters, to await "the request is waiting" without sleeping.
    pub waiters: Waiters,
    /// The app's event-stream clients, to await "the client is registered".
    pub hub: Hub,
    shutdown: CancellationToken,
}

impl TestApp {
    /// Starts an app on `redis` with the test defaults.
    pub async fn spawn(redis: &RedisServer) -> Self {
        Self::spawn_with(test_settings(redis)).await
    }

    /// Starts an app with the given settings.
    pub async fn spawn_with(settings: Settings) -> Self {
        // LOCKD_TEST_LOG=debug (or any filter) shows the apps' logs when a test fails.
        if let Ok(level) = std::env::var("LOCKD_TEST_LOG") {
            lockd::telemetry::init(&lockd::config::LogSettings {
                format: lockd::config::LogFormat::Text,
                level,
            });
        }
        let app = Application::build(&settings).await.expect("lockd starts");
        let addr = app.local_addr();
        let shutdown = app.shutdown_token();
        let waiters = app.waiters();
        let hub = app.hub();
        tokio::spawn(app.run_until_stopped());
        Self {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
            settings,
            waiters,
            hub,
            shutdown,
        }
    }

    /// The URL of a resource's lock.
    pub fn lock_url(&self, resource: &str) -> String {
        format!("{}/locks/{resource}", self.base)
    }

    /// `POST /locks/{resource}` with a JSON body.
    pub async fn acquire(&self, resource: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.lock_url(resource))
            .json(&body)
            .send()
            .await
            .expect("acquire answers")
    }

    /// Acquires and asserts 201; returns the body.
    pub async fn acquire_ok(&self, resource: &str, agent: &str, ttl_ms: u64) -> Value {
        let response = self
            .acquire(resource, json!({"agent_id": agent, "ttl_ms": ttl_ms}))
            .await;
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, 201, "acquire of {resource} was not granted: {body}");
        body
    }

    /// `GET {path}` on the app.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the app answers")
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> reqwest::Response {
        self.get("/readyz").await
    }

    /// Waits up to `limit` until the app is ready: Redis answers and its event
    /// subscription is live.
    pub async fn until_ready(&self, limit: Duration) {
        eventually(limit, "lockd to be ready", || async {
            self.client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await;
    }

    /// Waits until lock requests are answered again (after a Redis fault).
    pub async fn until_serving(&self) {
        eventually(Duration::from_secs(10), "lockd to serve again", || async {
            self.client
                .get(self.lock_url("probe"))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await;
    }

    /// Sends an acquire that will wait (its body has `wait_ms`) and returns once the
    /// server is waiting on it, with the task that yields its response.
    pub async fn spawn_waiter(
        &self,
        resource: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let before = self.waiters.waiting();
        let (client, url) = (self.client.clone(), self.lock_url(resource));
        let waiter = tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("acquire answers")
        });
        let waiters = self.waiters.clone();
        eventually(Duration::from_secs(5), "the acquire to wait", || {
            let waiters = waiters.clone();
            async move { waiters.waiting() > before }
        })
        .await;
        waiter
    }

    /// `DELETE /locks/{resource}` with a token.
    pub async fn release(&self, resource: &str, token: &str) -> reqwest::Response {
        self.client
            .delete(self.lock_url(resource))
            .header("Lock-Token", token)
            .send()
            .await
            .expect("release answers")
    }

    /// `PATCH /locks/{resource}` with a token and an optional JSON body.
    pub async fn refresh(
        &self,
        resource: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .patch(self.lock_url(resource))
            .header("Lock-Token", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("refresh answers")
    }

    /// `GET /locks/{resource}`, asserting 200; returns the body.
    pub async fn status(&self, resource: &str) -> Value {
        let response = self
            .client
            .get(self.lock_url(resource))
            .send()
            .await
            .expect("status answers");
        assert_eq!(response.status(), 200);
        response.json().await.expect("a JSON status")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until `app`'s process has its Pub/Sub subscription to the event channel and has
/// caught up with the stream (readiness says so), so that what follows is live.
pub async fn until_subscribed(redis: &RedisServer, app: &TestApp) {
    let channel = format!("{}events", app.settings.redis.key_prefix);
    let conn = redis.connection().await;
    eventually(
        Duration::from_secs(10),
        "lockd to subscribe to events",
        || {
            let (mut conn, channel) = (conn.clone(), channel.clone());
            async move {
                let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async(&mut conn)
                    .await
                    .expect("PUBSUB NUMSUB");
                counts.first().is_some_and(|(_, n)| *n >= 1)
            }
        },
    )
    .await;
    app.until_ready(Duration::from_secs(10)).await;
}

/// An open `GET /events` stream, read as a real SSE client reads it.
pub struct EventStream {
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = eventsource_stream::Event> + Send>>,
}

impl EventStream {
    /// Connects with a query string (without `?`) and an optional `Last-Event-ID`, and
    /// waits until the server has registered the client.
    pub async fn open(app: &TestApp, query: &str, last_event_id: Option<&str>) -> Self {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let before = app.hub.client_count();
        let mut request = app.client.get(format!("{}/events?{query}", app.base));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("GET /events answers");
        assert_eq!(response.status(), 200, "GET /events?{query}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let hub = app.hub.clone();
        eventually(Duration::from_secs(5), "the client to register", || {
            let hub = hub.clone();
            async move { hub.client_count() > before }
        })
        .await;
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event stream"));
        Self {
            events: Box::pin(events),
        }
    }

    /// The next event, or a panic after `limit`.
    pub async fn next(&mut self) -> eventsource_stream::Event {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event arrived in time")
    }

    /// The next event within `limit`, or `None` if none came (or the stream ended).
    pub async fn next_within(&mut self, limit: Duration) -> Option<eventsource_stream::Event> {
        use futures_util::StreamExt;
        tokio::time::timeout(limit, self.events.next())
            .await
            .ok()
            .flatten()
    }

    /// The next event's JSON document.
    pub async fn next_json(&mut self) -> Value {
        let event = self.next().await;
        let data: Value = serde_json::from_str(&event.data).expect("JSON data");
        assert_eq!(data["id"], event.id, "the SSE id is the event's id");
        assert_eq!(data["type"], event.event, "the SSE event name is its type");
        data
    }
}

/// Asserts a problem document: status, content type and `code`; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "status for {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        content_type, "application/problem+json",
        "content type for {code}"
    );
    let body: Value = response.json().await.expect("a JSON problem");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert_eq!(body["type"], format!("urn:lockd:problem:{code}"), "{body}");
    body
}

/// Every key under `prefix`, with its whole content, as one string (for "is this secret
/// anywhere in Redis?" checks).
pub async fn dump_keys(redis: &RedisServer, prefix: &str) -> String {
    let mut conn = redis.connection().await;
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.expect("KEYS");
    let mut dump = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let content: redis::Value = match kind.as_str() {
            "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await,
            "string" => redis::cmd("GET").arg(&key).query_async(&mut conn).await,
            "stream" => {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
            }
            "zset" => {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
            }
            other => panic!("unexpected key type {other} for {key}"),
        }
        .expect("read key");
        dump.push_str(&format!("{key} => {content:?}\n"));
    }
    dump
}

/// All events in the app's stream, oldest first, as JSON documents with their ids.
pub async fn stream_events(redis: &RedisServer, app: &TestApp) -> Vec<Value> {
    stream_events_for(redis, &app.settings.redis.key_prefix).await
}

/// All events in the stream of the deployment with `key_prefix`, oldest first.
pub async fn stream_events_for(redis: &RedisServer, key_prefix: &str) -> Vec<Value> {
    let mut conn = redis.connection().await;
    let key = format!("{key_prefix}{{0}}:events");
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(key).await.expect("XRANGE");
    entries
        .ids
        .into_iter()
        .map(|entry| {
            let body: String = entry.get("event").expect("an event field");
            let mut event: Value = serde_json::from_str(&body).expect("event JSON");
            event["id"] = Value::String(entry.id);
            event
        })
        .collect()
}

/// A `lockd` binary serving on a loopback port, as production runs it: SIGKILL it to
/// crash it; it is killed on drop.
pub struct LockdProcess {
    /// `http://127.0.0.1:{port}`.
    pub base: String,
    child: Option<tokio::process::Child>,
}

impl LockdProcess {
    /// Starts `lockd` on a free port against `redis_url` with `key_prefix`, plus extra
    /// `LOCKD_…` environment variables, and waits until it is ready (Redis answers).
    pub async fn spawn(redis_url: &str, key_prefix: &str, env: &[(&str, &str)]) -> Self {
        // Another process may take the port between our probe and lockd's bind: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockd"));
            command
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--redis-url", redis_url, "--key-prefix", key_prefix])
                .env("LOCKD_LOG__LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            for (key, value) in env {
                command.env(key, value);
            }
            let mut child = command.spawn().expect("lockd runs");
            let base = format!("http://127.0.0.1:{port}");
            let client = reqwest::Client::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while tokio::time::Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                let ready = client
                    .get(format!("{base}/readyz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if ready {
                    return Self {
                        base,
                        child: Some(child),
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill().await;
        }
        panic!("lockd did not start");
    }

    /// Sends SIGTERM and returns the exit status once the process has drained and exited
    /// (panics if it takes longer than `limit`).
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("lockd is running");
        signal(child.id().expect("a running child has a pid"), "-TERM");
        tokio::time::timeout(limit, child.wait())
            .await
            .expect("lockd exits in time")
            .expect("lockd is reaped")
    }

    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL lockd");
        }
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body as far as `Content-Length` goes (empty for streams).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as-is over a fresh TCP connection and reads one response. With
/// `half_close`, the client then shuts down its sending side, so the server sees the end
/// of the input (lockd treats that as a client that went away). `None` when the server
/// closed the connection without answering (what a server does with bytes it cannot even
/// parse as a request).
pub async fn raw_request(
    addr: SocketAddr,
    request: &[u8],
    half_close: bool,
) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything: a failed write is
    // then no error of the test.
    let _ = stream.write_all(request).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the server answered or closed within 10 s");
        match read {
            Ok(0) | Err(_) if buffer.is_empty() => return None,
            Ok(0) | Err(_) => panic!(
                "the connection ended inside a response head: {:?}",
                String::from_utf8_lossy(&buffer)
            ),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line, got {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the body arrived within 10 s");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// A TCP proxy in front of Redis that can hold back Redis's replies, as a one-way network
/// partition does: commands still reach Redis and run, their answers wait until the
/// partition heals (or the client gives up on the connection). Stopped on drop.
pub struct ReplyStallingProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    stalled: tokio::sync::watch::Sender<bool>,
    /// Stall as soon as a command holding these bytes passes (before it reaches Redis).
    trigger: std::sync::Mutex<Option<Vec<u8>>>,
}

impl ProxyState {
    /// Called with each chunk going to Redis, and the tail of the one before.
    fn inspect(&self, tail: &[u8], chunk: &[u8]) {
        let mut trigger = self.trigger.lock().expect("trigger lock");
        if let Some(marker) = trigger.as_deref() {
            let seen = [tail, chunk].concat();
            if seen.windows(marker.len()).any(|w| w == marker) {
                self.stalled.send_replace(true);
                *trigger = None;
            }
        }
    }
}

impl ReplyStallingProxy {
    /// Listens on a loopback port and forwards every connection to `redis`.
    pub async fn start(redis: &RedisServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().expect("the proxy address");
        let upstream = format!("127.0.0.1:{}", redis.port);
        let (stalled, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(ProxyState {
            stalled,
            trigger: std::sync::Mutex::new(None),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 16 * 1024];
                    let mut tail = Vec::new();
                    loop {
                        let n = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        state.inspect(&tail, &buffer[..n]);
                        if server_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        tail = buffer[n.saturating_sub(256)..n].to_vec();
                    }
                    let _ = server_write.shutdown().await;
                });
                let mut stalled = shared.stalled.subscribe();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 16 * 1024];
                    loop {
                        if stalled.wait_for(|stalled| !stalled).await.is_err() {
                            return;
                        }
                        let n = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Read just before a stall began: hold it back too.
                        if stalled.wait_for(|stalled| !stalled).await.is_err() {
                            return;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Holds back every reply from the moment a command holding `marker` passes on its
    /// way to Redis (the command itself still gets there and runs).
    pub fn stall_replies_from_command_with(&self, marker: &[u8]) {
        *self.state.trigger.lock().expect("trigger lock") = Some(marker.to_vec());
    }

    /// Lets the held-back replies through, late.
    pub fn heal(&self) {
        self.state.stalled.send_replace(false);
    }
}

impl Drop for ReplyStallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
