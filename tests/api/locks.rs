//! Acquire, release, refresh and status: the happy paths and the conflicts.

use serde_json::json;

use crate::helpers::{RedisServer, TestApp, assert_problem, dump_keys, eventually};
use std::time::Duration;

#[tokio::test]
async fn acquire_returns_201_with_location_token_header_and_grant() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;

    let response = app
        .acquire(
            "file:src/main.py",
            json!({"agent_id": "agent-a", "ttl_ms": 5000}),
        )
        .await;

    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    assert_eq!(headers["location"], "/locks/file:src/main.py");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(headers["lock-token"].to_str().unwrap(), body["token"]);
    assert_eq!(body["resource_id"], "file:src/main.py");
    assert_eq!(body["agent_id"], "agent-a");
    assert_eq!(body["ttl_ms"], 5000);
    assert!(body["fencing_token"].as_u64().unwrap() > 0);
    assert!(body["fencing_token"].as_u64().unwrap() < 1 << 53);
    let token = body["token"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(token).is_ok(), "{token}");
    let acquired = body["acquired_at"].as_str().unwrap();
    let expires = body["expires_at"].as_str().unwrap();
    assert_eq!(
        acquired.len(),
        "2026-11-26T13:40:00.123Z".len(),
        "{acquired}"
    );
    assert!(
        acquired.ends_with('Z') && expires > acquired,
        "{acquired} {expires}"
    );
}

#[tokio::test]
async fn default_ttl_comes_from_config() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let response = app.acquire("r", json!({"agent_id": "a"})).await;
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ttl_ms"], 30_000);
}

#[tokio::test]
async fn raw_slashes_and_percent_encoded_slashes_name_the_same_resource() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;

    app.acquire_ok("file:src/main.py", "agent-a", 5000).await;

    let response = app
        .acquire("file:src%2Fmain.py", json!({"agent_id": "agent-b"}))
        .await;
    let problem = assert_problem(response, 409, "lock_held").await;
    assert_eq!(problem["agent_id"], "agent-a");
    let status = app.status("file:src%2Fmain.py").await;
    assert_eq!(status["resource_id"], "file:src/main.py");
    assert_eq!(status["locked"], true);
}

#[tokio::test]
async fn acquire_returns_409_with_holder_and_retry_after_when_lock_is_held() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 4500).await;

    let response = app.acquire("r", json!({"agent_id": "agent-b"})).await;

    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    let problem = assert_problem(response, 409, "lock_held").await;
    assert_eq!(problem["agent_id"], "agent-a");
    assert_eq!(problem["expires_at"], grant["expires_at"]);
}

#[tokio::test]
async fn the_same_agent_cannot_acquire_a_lock_it_holds() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    app.acquire_ok("r", "agent-a", 5000).await;
    let response = app.acquire("r", json!({"agent_id": "agent-a"})).await;
    assert_problem(response, 409, "lock_held").await;
}

#[tokio::test]
async fn release_returns_204_and_frees_the_lock() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 5000).await;

    let response = app.release("r", grant["token"].as_str().unwrap()).await;

    assert_eq!(response.status(), 204);
    assert_eq!(
        app.status("r").await,
        json!({"resource_id": "r", "locked": false})
    );
    // Released means anyone can take it now, with a greater fence.
    let next = app.acquire_ok("r", "agent-b", 5000).await;
    assert!(next["fencing_token"].as_u64() > grant["fencing_token"].as_u64());
}

#[tokio::test]
async fn release_returns_404_when_nothing_holds_the_lock() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 5000).await;
    let token = grant["token"].as_str().unwrap();
    assert_eq!(app.release("r", token).await.status(), 204);

    assert_problem(app.release("r", token).await, 404, "lock_not_found").await;
    let never = uuid::Uuid::new_v4().to_string();
    assert_problem(
        app.release("never-taken", &never).await,
        404,
        "lock_not_found",
    )
    .await;
}

#[tokio::test]
async fn release_with_another_token_returns_409_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 5000).await;
    let before = app.status("r").await;

    let stolen = uuid::Uuid::new_v4().to_string();
    let problem = assert_problem(app.release("r", &stolen).await, 409, "not_lock_owner").await;

    assert_eq!(problem["agent_id"], "agent-a");
    assert_eq!(problem["expires_at"], grant["expires_at"]);
    let after = app.status("r").await;
    assert_eq!(after["fencing_token"], before["fencing_token"]);
    assert_eq!(after["expires_at"], before["expires_at"]);
}

#[tokio::test]
async fn refresh_extends_the_lease_and_keeps_token_and_fence() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 1000).await;
    let token = grant["token"].as_str().unwrap();

    let response = app
        .refresh("r", token, Some(json!({"ttl_ms": 60_000})))
        .await;

    assert_eq!(response.status(), 200);
    let refreshed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(refreshed["token"], grant["token"]);
    assert_eq!(refreshed["fencing_token"], grant["fencing_token"]);
    assert_eq!(refreshed["acquired_at"], grant["acquired_at"]);
    assert_eq!(refreshed["agent_id"], "agent-a");
    assert_eq!(refreshed["ttl_ms"], 60_000);
    assert!(refreshed["expires_at"].as_str() > grant["expires_at"].as_str());
    let status = app.status("r").await;
    assert_eq!(status["expires_at"], refreshed["expires_at"]);
    assert!(status["ttl_remaining_ms"].as_u64().unwrap() > 50_000);
}

#[tokio::test]
async fn refresh_without_a_body_reuses_the_original_ttl() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 7000).await;
    let token = grant["token"].as_str().unwrap();
    // Shorten it once; the default stays the lease's original length.
    assert_eq!(
        app.refresh("r", token, Some(json!({"ttl_ms": 100_000})))
            .await
            .status(),
        200
    );

    let response = app.refresh("r", token, None).await;

    assert_eq!(response.status(), 200);
    let refreshed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(refreshed["ttl_ms"], 7000);
    let remaining = app.status("r").await["ttl_remaining_ms"].as_u64().unwrap();
    assert!(remaining <= 7000 && remaining > 5000, "{remaining}");
}

#[tokio::test]
async fn refresh_of_an_expired_lease_returns_404_and_never_revives_it() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 50).await;
    let token = grant["token"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(5), "the lease to run out", || async {
        app.status("r").await["locked"] == false
    })
    .await;

    assert_problem(app.refresh("r", &token, None).await, 404, "lock_not_found").await;
    assert_eq!(app.status("r").await["locked"], false);
}

#[tokio::test]
async fn refresh_with_another_token_returns_409_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 5000).await;
    let stolen = uuid::Uuid::new_v4().to_string();

    let response = app
        .refresh("r", &stolen, Some(json!({"ttl_ms": 3_000_000})))
        .await;

    assert_problem(response, 409, "not_lock_owner").await;
    assert_eq!(app.status("r").await["expires_at"], grant["expires_at"]);
}

#[tokio::test]
async fn status_shows_the_holder_but_never_the_token() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    assert_eq!(
        app.status("r").await,
        json!({"resource_id": "r", "locked": false})
    );
    let grant = app.acquire_ok("r", "agent-a", 5000).await;

    let status = app.status("r").await;

    assert_eq!(status["locked"], true);
    assert_eq!(status["agent_id"], "agent-a");
    assert_eq!(status["fencing_token"], grant["fencing_token"]);
    assert_eq!(status["acquired_at"], grant["acquired_at"]);
    assert_eq!(status["expires_at"], grant["expires_at"]);
    let remaining = status["ttl_remaining_ms"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= 5000, "{remaining}");
    assert!(status.get("token").is_none());
    assert!(
        !status
            .to_string()
            .contains(grant["token"].as_str().unwrap())
    );
}

#[tokio::test]
async fn head_gives_the_status_headers_without_a_body() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    app.acquire_ok("r", "agent-a", 5000).await;

    let response = app.client.head(app.lock_url("r")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.bytes().await.unwrap().is_empty());
    let bad = app.client.head(app.lock_url("a%00b")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_lease_ends_exactly_at_expires_at() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let first = app.acquire_ok("r", "agent-a", 300).await;

    // Waiting for it is served by the lease-end timer: no release ever comes.
    let response = app
        .acquire("r", json!({"agent_id": "agent-b", "wait_ms": 5000}))
        .await;

    assert_eq!(response.status(), 201);
    let second: serde_json::Value = response.json().await.unwrap();
    assert!(second["acquired_at"].as_str() >= first["expires_at"].as_str());
    assert!(second["fencing_token"].as_u64() > first["fencing_token"].as_u64());
    // The old holder's token is dead.
    let stale = first["token"].as_str().unwrap();
    assert_problem(app.release("r", stale).await, 409, "not_lock_owner").await;
    assert_problem(app.refresh("r", stale, None).await, 409, "not_lock_owner").await;
}

#[tokio::test]
async fn the_raw_token_never_reaches_redis() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("file:a", "agent-a", 5000).await;
    let token = grant["token"].as_str().unwrap();
    app.refresh("file:a", token, None).await;
    let other = app.acquire_ok("file:b", "agent-b", 5000).await;
    app.release("file:b", other["token"].as_str().unwrap())
        .await;

    let dump = dump_keys(&redis, &app.settings.redis.key_prefix).await;

    assert!(dump.contains("agent-a"), "the dump reads the keys: {dump}");
    for secret in [token, other["token"].as_str().unwrap()] {
        let variants = [
            secret.to_owned(),
            secret.to_uppercase(),
            secret.replace('-', ""),
            secret.replace('-', "").to_uppercase(),
        ];
        for variant in variants {
            assert!(
                !dump.contains(&variant),
                "token {variant} found in Redis:\n{dump}"
            );
        }
    }
}

#[tokio::test]
async fn unicode_and_long_resource_ids_work_up_to_512_bytes() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let unicode = "dossier/ファイル ü.txt";
    let encoded: String = unicode
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'/' || b == b'.' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let grant = app.acquire_ok(&encoded, "agent-a", 5000).await;
    assert_eq!(grant["resource_id"], unicode);
    assert_eq!(app.status(&encoded).await["resource_id"], unicode);

    let longest = "x".repeat(512);
    app.acquire_ok(&longest, "agent-a", 5000).await;
}
