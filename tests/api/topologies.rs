//! Beyond one Redis: a primary with a replica, watched by three Sentinels, all real
//! `redis-server` processes on loopback ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use lockd::config::RedisMode;
use serde_json::{Value, json};

use crate::helpers::{RedisServer, TestApp, assert_problem, eventually, free_port, test_settings};

/// A Sentinel process, killed on drop.
pub struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    pub async fn start(primary_port: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("lockd-sentinel-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // Sentinel rewrites its configuration file, so each gets its own.
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor lockd-primary 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds lockd-primary 500\n\
                 sentinel failover-timeout lockd-primary 5000\n\
                 sentinel parallel-syncs lockd-primary 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        let sentinel = Self { port, dir, child };
        eventually(
            Duration::from_secs(10),
            "the Sentinel to answer",
            || async { sentinel.primary().await.is_some() },
        )
        .await;
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port of the primary this Sentinel names now.
    async fn primary(&self) -> Option<u16> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("lockd-primary")
            .query_async(&mut conn)
            .await
            .ok()?;
        port.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary and a replica that has caught up with it.
pub async fn primary_and_replica() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start().await;
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--replicaof",
        "127.0.0.1",
        &port,
    ])
    .await;
    let conn = replica.connection().await;
    eventually(Duration::from_secs(10), "the replica to sync", || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap();
            info.contains("master_link_status:up")
        }
    })
    .await;
    (primary, replica)
}

/// Three Sentinels watching `primary`, and settings for an app that finds it through
/// them.
pub async fn watched_by_sentinels(primary: &RedisServer) -> (Vec<Sentinel>, lockd::Settings) {
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(Sentinel::start(primary.port()).await);
    }
    let mut settings = test_settings(primary);
    settings.redis.mode = RedisMode::Sentinel;
    settings.redis.sentinels = sentinels.iter().map(Sentinel::url).collect();
    settings.redis.master_name = "lockd-primary".into();
    (sentinels, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockd_follows_a_sentinel_failover_without_a_restart() {
    let (mut primary, replica) = primary_and_replica().await;
    let (sentinels, settings) = watched_by_sentinels(&primary).await;
    let app = TestApp::spawn_with(settings).await;
    crate::helpers::until_subscribed(&primary, &app).await;
    let before = app.acquire_ok("fenced", "agent-a", 60_000).await;
    app.release("fenced", before["token"].as_str().unwrap())
        .await;

    primary.kill();
    let killed = Instant::now();
    // Serving again means a grant from the promoted replica.
    let mut attempts = 0;
    let after: Value = loop {
        attempts += 1;
        // A 503 leaves the outcome unknown (an attempt may have been granted just before
        // the primary died, or answered too late): the same Idempotency-Key makes a retry
        // get that grant back rather than a 409 from it.
        let response = app
            .client
            .post(app.lock_url("fenced"))
            .header("Idempotency-Key", "failover-retry")
            .json(&json!({"agent_id": "agent-b", "ttl_ms": 60_000}))
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            break response.json().await.unwrap();
        }
        assert_eq!(response.status(), 503, "only 503 while there is no primary");
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let downtime = killed.elapsed();
    eprintln!(
        "sentinel failover: lockd served again {downtime:?} after the primary died ({attempts} attempts)"
    );
    let promoted = sentinels[0].primary().await;
    assert_eq!(promoted, Some(replica.port()), "the replica was promoted");
    assert!(
        after["fencing_token"].as_u64() > before["fencing_token"].as_u64(),
        "fences keep increasing across the failover"
    );

    // The event subscription followed too: a waiter is woken by a release.
    eventually(
        Duration::from_secs(10),
        "lockd to subscribe to the new primary",
        || {
            let replica = &replica;
            let channel = format!("{}events", app.settings.redis.key_prefix);
            async move {
                let mut conn = replica.connection().await;
                let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                counts[0].1 >= 1
            }
        },
    )
    .await;
    let waiter = app
        .spawn_waiter("fenced", json!({"agent_id": "agent-c", "wait_ms": 10_000}))
        .await;
    app.release("fenced", after["token"].as_str().unwrap())
        .await;
    assert_eq!(waiter.await.unwrap().status(), 201);
}

#[tokio::test]
async fn grants_wait_for_replicas_and_are_withdrawn_when_they_lag() {
    let (primary, mut replica) = primary_and_replica().await;
    let mut settings = test_settings(&primary);
    settings.redis.min_replicas_ack = 1;
    settings.redis.replica_ack_timeout_ms = 200;
    let app = TestApp::spawn_with(settings).await;

    let grant = app.acquire_ok("r", "agent-a", 60_000).await;
    // The replica holds the lock as soon as acquire answers.
    let mut conn = replica.connection().await;
    let key = format!("{}{{0}}:lock:r", app.settings.redis.key_prefix);
    let agent: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("agent")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(agent.as_deref(), Some("agent-a"));
    app.release("r", grant["token"].as_str().unwrap()).await;
    let kept = app.acquire_ok("t", "agent-a", 60_000).await;

    replica.kill();
    // A refresh that no replica holds could be lost in a failover: not acknowledged.
    let response = app
        .refresh(
            "t",
            kept["token"].as_str().unwrap(),
            Some(json!({"ttl_ms": 120_000})),
        )
        .await;
    assert_problem(response, 503, "replica_ack_timeout").await;
    let response = app.acquire("s", json!({"agent_id": "agent-a"})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503, "replica_ack_timeout").await;
    assert_eq!(
        app.status("s").await["locked"],
        false,
        "the unacknowledged grant was withdrawn"
    );
}
