//! Every change emits its event, atomically: appended to the stream and published on
//! the channel, with the stream id as the event id.

use std::time::Duration;

use deadpool_redis::redis;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{RedisServer, TestApp, stream_events};

#[tokio::test]
async fn each_change_is_streamed_and_published_with_the_stream_id() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let channel = format!("{}events", app.settings.redis.key_prefix);
    let mut pubsub = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let mut published = pubsub.into_on_message();

    let grant = app.acquire_ok("file:src/main.py", "agent-a", 5000).await;
    let token = grant["token"].as_str().unwrap();
    let refresh: Value = app
        .refresh("file:src/main.py", token, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(app.release("file:src/main.py", token).await.status(), 204);

    let events = stream_events(&redis, &app).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let fence = grant["fencing_token"].clone();
    let common = |event: &Value, kind: &str| {
        assert_eq!(event["type"], kind);
        assert_eq!(event["resource_id"], "file:src/main.py");
        assert_eq!(event["agent_id"], "agent-a");
        assert_eq!(event["fencing_token"], fence);
    };
    common(&events[0], "resource.locked");
    assert_eq!(
        events[0]["at"], grant["acquired_at"],
        "Lua and Rust format time alike"
    );
    assert_eq!(events[0]["expires_at"], grant["expires_at"]);
    common(&events[1], "resource.refreshed");
    assert_eq!(events[1]["expires_at"], refresh["expires_at"]);
    common(&events[2], "resource.unlocked");
    assert_eq!(events[2]["reason"], "released");
    assert!(events[2]["at"].as_str() >= events[1]["at"].as_str());

    for streamed in &events {
        let message = tokio::time::timeout(Duration::from_secs(5), published.next())
            .await
            .expect("the event was published")
            .expect("the subscription is open");
        let payload: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
        assert_eq!(
            &payload, streamed,
            "the published event is the streamed one"
        );
    }
    // Ids are the stream's, in order.
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id.contains('-')), "{ids:?}");
}

#[tokio::test]
async fn refused_changes_emit_no_event() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 5000).await;
    let before = stream_events(&redis, &app).await;

    app.acquire("r", json!({"agent_id": "agent-b"})).await;
    let stranger = uuid::Uuid::new_v4().to_string();
    app.release("r", &stranger).await;
    app.refresh("r", &stranger, None).await;
    app.release("free", &stranger).await;

    assert_eq!(stream_events(&redis, &app).await, before);
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["fencing_token"], grant["fencing_token"]);
}

#[tokio::test]
async fn the_stream_is_capped_at_the_configured_history() {
    let redis = RedisServer::start().await;
    let mut settings = crate::helpers::test_settings(&redis);
    settings.events.history = 10;
    let app = TestApp::spawn_with(settings).await;

    for n in 0..400 {
        let grant = app.acquire_ok(&format!("r{n}"), "agent-a", 5000).await;
        app.release(&format!("r{n}"), grant["token"].as_str().unwrap())
            .await;
    }

    // MAXLEN ~ trims whole radix-tree nodes (100 entries by default), so the stream stays
    // near the cap, far below the 800 events emitted.
    let events = stream_events(&redis, &app).await;
    assert!(
        events.len() >= 10 && events.len() <= 200,
        "{} events kept",
        events.len()
    );
}

/// The subscription's heartbeat (a PING every 5 s) must find a live connection alive:
/// the same subscribed client is still there well past two heartbeats.
#[tokio::test]
async fn the_subscription_outlives_its_heartbeats() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    crate::helpers::until_subscribed(&redis, &app).await;
    let mut conn = redis.connection().await;
    let subscriber = |list: &str| -> Option<(String, u64)> {
        let line = list.lines().find(|line| line.contains(" sub=1 "))?;
        let field = |name: &str| {
            line.split(' ')
                .find_map(|part| part.strip_prefix(name))
                .map(str::to_owned)
        };
        Some((field("id=")?, field("age=")?.parse().ok()?))
    };
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (first, _) = subscriber(&list).expect("lockd's subscription");
    crate::helpers::eventually(Duration::from_secs(20), "two heartbeats", || {
        let mut conn = conn.clone();
        let first = first.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .unwrap();
            let (id, age) = subscriber(&list).expect("lockd's subscription");
            assert_eq!(id, first, "the subscription was not replaced");
            age >= 11
        }
    })
    .await;
}
