//! Redis faults: killed, paused, restarted empty. Requests fail fast with 503, nothing is
//! granted twice, fences never go backwards, and lockd recovers by itself.

use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::json;

use crate::helpers::{RedisServer, TestApp, assert_problem, eventually};

#[tokio::test]
async fn redis_killed_gives_503_then_lockd_recovers_by_itself() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    app.acquire_ok("before", "agent-a", 5000).await;

    redis.kill();

    for attempt in 0..3 {
        let started = Instant::now();
        let response = app
            .acquire(&format!("during-{attempt}"), json!({"agent_id": "a"}))
            .await;
        assert!(started.elapsed() < Duration::from_secs(3), "503 came fast");
        assert_eq!(response.headers()["retry-after"], "1");
        assert_problem(response, 503, "store_unavailable").await;
    }
    let status = app.client.get(app.lock_url("before")).send().await.unwrap();
    assert_problem(status, 503, "store_unavailable").await;
    assert_problem(app.readyz().await, 503, "store_unavailable").await;
    let live = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    redis.restart().await;

    app.until_ready(Duration::from_secs(10)).await;
    app.acquire_ok("after", "agent-a", 5000).await;
}

#[tokio::test]
async fn the_event_subscription_recovers_after_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let channel = format!("{}events", app.settings.redis.key_prefix);

    redis.restart().await;
    eventually(Duration::from_secs(10), "lockd to subscribe again", || {
        let (redis, channel) = (&redis, &channel);
        async move {
            let mut conn = redis.connection().await;
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            counts[0].1 == 1
        }
    })
    .await;

    // A release must wake the waiter through the new subscription: the lease is too
    // long for the timer to do it within the wait.
    let holder = app.acquire_ok("r", "agent-a", 60_000).await;
    let waiter = app
        .spawn_waiter("r", json!({"agent_id": "agent-b", "wait_ms": 10_000}))
        .await;
    app.release("r", holder["token"].as_str().unwrap()).await;
    assert_eq!(waiter.await.unwrap().status(), 201);
}

#[tokio::test]
async fn redis_paused_gives_503_within_the_command_timeout_and_grants_nothing() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let holder = app.acquire_ok("r", "agent-a", 60_000).await;

    redis.pause();
    let started = Instant::now();
    let response = app.acquire("r", json!({"agent_id": "agent-b"})).await;
    let elapsed = started.elapsed();
    redis.resume();

    assert_problem(response, 503, "store_unavailable").await;
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    // Back to normal, and the holder is still the holder.
    app.until_serving().await;
    let status = app.status("r").await;
    assert_eq!(status["agent_id"], "agent-a");
    assert_eq!(status["fencing_token"], holder["fencing_token"]);
}

#[tokio::test]
async fn fences_keep_increasing_when_redis_loses_everything() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let first = app.acquire_ok("r", "agent-a", 60_000).await;

    // No persistence: the restart forgets the lease and the fence counter.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let second: serde_json::Value = loop {
        let response = app
            .acquire("r", json!({"agent_id": "agent-b", "ttl_ms": 60_000}))
            .await;
        if response.status() == 201 {
            break response.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "lockd did not grant again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    assert!(
        second["fencing_token"].as_u64() > first["fencing_token"].as_u64(),
        "{} then {}",
        first["fencing_token"],
        second["fencing_token"]
    );
}

#[tokio::test]
async fn fences_keep_increasing_when_the_counter_key_is_lost() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let mut conn = redis.connection().await;
    let fence_key = format!("{}{{0}}:fence:r", app.settings.redis.key_prefix);

    let mut last = 0;
    for _ in 0..5 {
        let grant = app.acquire_ok("r", "agent-a", 60_000).await;
        let fence = grant["fencing_token"].as_u64().unwrap();
        assert!(fence > last, "{last} then {fence}");
        last = fence;
        let stored: u64 = conn.get(&fence_key).await.unwrap();
        assert_eq!(stored, fence);
        app.release("r", grant["token"].as_str().unwrap()).await;
        let _: () = conn.del(&fence_key).await.unwrap();
    }
}

#[tokio::test]
async fn a_full_redis_refuses_the_whole_change_and_lockd_answers_503() {
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory",
        "2mb",
        "--maxmemory-policy",
        "noeviction",
    ])
    .await;
    let app = TestApp::spawn(&redis).await;
    app.acquire_ok("before", "agent-a", 60_000).await;
    // Fill Redis past its limit with keys of our own, until even a small write is refused.
    let mut conn = redis.connection().await;
    let mut filled = false;
    for n in 0..100_000 {
        let size = if n < 100 { 16 * 1024 } else { 64 };
        let stored: redis::RedisResult<()> =
            conn.set(format!("ballast:{n}"), "x".repeat(size)).await;
        if stored.is_err() && size == 64 {
            filled = true;
            break;
        }
    }
    assert!(filled, "Redis is full");

    let response = app.acquire("r", json!({"agent_id": "agent-a"})).await;

    assert_problem(response, 503, "store_unavailable").await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let lock_keys: Vec<String> = conn.keys("*lock:r").await.unwrap();
    assert!(
        lock_keys.is_empty(),
        "no part of the refused acquire was written"
    );
}
