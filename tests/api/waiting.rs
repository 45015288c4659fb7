//! Server-side waiting: woken by release and by lease end, never polling, and a client
//! that goes away stops waiting and acquires nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::helpers::{RedisServer, TestApp, assert_problem, eventually};

#[tokio::test]
async fn a_waiter_is_woken_by_release_long_before_the_lease_ends() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let holder = app.acquire_ok("r", "agent-a", 60_000).await;

    let waiter = app
        .spawn_waiter("r", json!({"agent_id": "agent-b", "wait_ms": 20_000}))
        .await;
    assert_eq!(app.waiters.resources_waited_on(), 1);

    assert_eq!(
        app.release("r", holder["token"].as_str().unwrap())
            .await
            .status(),
        204
    );

    // Only the release event can grant this within the wait: the lease had 60 s left.
    let response = waiter.await.unwrap();
    assert_eq!(response.status(), 201);
    let grant: Value = response.json().await.unwrap();
    assert_eq!(grant["agent_id"], "agent-b");
    assert!(grant["fencing_token"].as_u64() > holder["fencing_token"].as_u64());
    assert_eq!(app.waiters.resources_waited_on(), 0);
}

#[tokio::test]
async fn a_waiter_gets_409_when_the_wait_runs_out() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    app.acquire_ok("r", "agent-a", 60_000).await;

    let started = tokio::time::Instant::now();
    let response = app
        .acquire("r", json!({"agent_id": "agent-b", "wait_ms": 300}))
        .await;

    assert!(started.elapsed() >= Duration::from_millis(300));
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (59..=60).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    let problem = assert_problem(response, 409, "lock_held").await;
    assert_eq!(problem["agent_id"], "agent-a");
    assert_eq!(app.waiters.resources_waited_on(), 0);
}

#[tokio::test]
async fn a_client_that_disconnects_while_waiting_stops_waiting_and_acquires_nothing() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let holder = app.acquire_ok("r", "agent-a", 60_000).await;

    let body = r#"{"agent_id":"agent-gone","wait_ms":30000}"#;
    let request = format!(
        "POST /locks/r HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        app.addr,
        body.len()
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let waiters = app.waiters.clone();
    eventually(Duration::from_secs(5), "the waiter to register", || {
        let waiters = waiters.clone();
        async move { waiters.resources_waited_on() == 1 }
    })
    .await;

    drop(stream);
    eventually(Duration::from_secs(5), "the server to stop waiting", || {
        let waiters = waiters.clone();
        async move { waiters.resources_waited_on() == 0 }
    })
    .await;

    assert_eq!(
        app.release("r", holder["token"].as_str().unwrap())
            .await
            .status(),
        204
    );
    // Had the gone waiter still been waiting, the release would have handed it the lock.
    let status = app.status("r").await;
    assert_eq!(status, json!({"resource_id": "r", "locked": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_contenders_never_hold_a_lock_together_and_fences_strictly_increase() {
    const TASKS: usize = 50;
    const ROUNDS: usize = 3;
    let redis = RedisServer::start().await;
    let app = Arc::new(TestApp::spawn(&redis).await);
    let inside = Arc::new(AtomicBool::new(false));
    let grants: Arc<Mutex<Vec<u64>>> = Arc::default();

    let mut tasks = Vec::new();
    for n in 0..TASKS {
        let (app, inside, grants) = (app.clone(), inside.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            let agent = format!("agent-{n}");
            let mut won = 0;
            while won < ROUNDS {
                let response = app
                    .acquire(
                        "contended",
                        json!({"agent_id": agent, "ttl_ms": 30_000, "wait_ms": 30_000}),
                    )
                    .await;
                if response.status() == 409 {
                    continue;
                }
                assert_eq!(response.status(), 201);
                let grant: Value = response.json().await.unwrap();
                assert!(
                    !inside.swap(true, Ordering::SeqCst),
                    "two holders at once: {agent} got the lock while another held it"
                );
                grants
                    .lock()
                    .await
                    .push(grant["fencing_token"].as_u64().unwrap());
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                let released = app
                    .release("contended", grant["token"].as_str().unwrap())
                    .await;
                assert_eq!(released.status(), 204);
                won += 1;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a contender panicked");
    }

    let fences = grants.lock().await.clone();
    assert_eq!(fences.len(), TASKS * ROUNDS);
    for pair in fences.windows(2) {
        assert!(
            pair[0] < pair[1],
            "fences went {} then {}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(app.status("contended").await["locked"], false);
}

#[tokio::test]
async fn a_lock_granted_to_a_waiter_that_just_left_is_released_at_once() {
    use deadpool_redis::redis::AsyncCommands;
    let redis = RedisServer::start().await;
    let proxy = crate::helpers::ReplyStallingProxy::start(&redis).await;
    let mut settings = crate::helpers::test_settings(&redis);
    settings.redis.url = proxy.url();
    settings.redis.command_timeout_ms = 5000;
    let app = TestApp::spawn_with(settings).await;
    let holder = app.acquire_ok("gone", "agent-a", 60_000).await;

    // A waiter on a raw connection, so that it can go away at will.
    let body = r#"{"agent_id":"leaver","ttl_ms":60000,"wait_ms":30000}"#;
    let request = format!(
        "POST /locks/gone HTTP/1.1\r\nHost: lockd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let waiters = app.waiters.clone();
    eventually(Duration::from_secs(5), "the waiter", || {
        let waiters = waiters.clone();
        async move { waiters.waiting() == 1 }
    })
    .await;

    // Its next attempt reaches Redis and is granted, but the answer is held back ...
    proxy.stall_replies_from_command_with(b"leaver");
    app.release("gone", holder["token"].as_str().unwrap()).await;
    let conn = redis.connection().await;
    let key = format!("{}{{0}}:lock:gone", app.settings.redis.key_prefix);
    eventually(
        Duration::from_secs(5),
        "the waiter to be granted in Redis",
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let agent: Option<String> = conn.hget(&key, "agent").await.unwrap();
                agent.as_deref() == Some("leaver")
            }
        },
    )
    .await;
    // ... and the client leaves before it arrives.
    drop(stream);
    eventually(Duration::from_secs(5), "the request to end", || {
        let waiters = waiters.clone();
        async move { waiters.waiting() == 0 }
    })
    .await;
    proxy.heal();

    // Nobody knows that grant's token: lockd gives it back rather than leave it held.
    eventually(
        Duration::from_secs(5),
        "the orphan grant to be released",
        || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let exists: bool = conn.exists(&key).await.unwrap();
                !exists
            }
        },
    )
    .await;
}
