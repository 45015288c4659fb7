//! Access control, idempotent retries, limits and metrics.

use std::time::Duration;

use lockd::config::ApiKeySettings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    EventStream, RedisServer, TestApp, assert_problem, dump_keys, eventually, stream_events,
    test_settings,
};

fn key(name: &str, secret: &str, agents: &str, scopes: &[&str]) -> ApiKeySettings {
    ApiKeySettings {
        name: name.into(),
        sha256: lockd::auth::hex_sha256(secret),
        agents: agents.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn app_with_auth(redis: &RedisServer) -> TestApp {
    let mut settings = test_settings(redis);
    settings.auth.enabled = true;
    settings.auth.keys = vec![
        key("ci", "ci-secret", "ci-*", &["lock", "read"]),
        key("prod", "prod-secret", "prod-*", &["lock", "read"]),
        key("reader", "reader-secret", "*", &["read"]),
        key("writer", "writer-secret", "*", &["lock"]),
        key("ops", "ops-secret", "*", &["admin", "read"]),
    ];
    settings.events.max_clients_per_key = 1;
    TestApp::spawn_with(settings).await
}

/// Sends a request with a bearer key.
async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method, format!("{}{path}", app.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(token) = token {
        request = request.header("Lock-Token", token);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn with_auth_on_a_missing_or_unknown_key_gets_401_and_probes_stay_open() {
    let redis = RedisServer::start().await;
    let app = app_with_auth(&redis).await;
    let acquire = json!({"agent_id": "ci-1"});

    for key in [None, Some("wrong-secret")] {
        let response = send(
            &app,
            reqwest::Method::POST,
            "/locks/r",
            key,
            Some(acquire.clone()),
            None,
        )
        .await;
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"lockd\""
        );
        assert_problem(response, 401, "unauthorized").await;
    }
    let basic = app
        .client
        .get(app.lock_url("r"))
        .header("Authorization", "Basic Y2k6Y2ktc2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "unauthorized").await;
    crate::helpers::until_subscribed(&redis, &app).await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = send(&app, reqwest::Method::GET, path, None, None, None).await;
        assert_eq!(response.status(), 200, "{path} is public");
    }
    assert!(
        stream_events(&redis, &app).await.is_empty(),
        "nothing changed"
    );
}

#[tokio::test]
async fn keys_act_only_as_their_agents_and_within_their_scopes() {
    let redis = RedisServer::start().await;
    let app = app_with_auth(&redis).await;
    let post = reqwest::Method::POST;

    // Acquiring as an agent the key does not cover: 403, nothing taken.
    let response = send(
        &app,
        post.clone(),
        "/locks/r",
        Some("ci-secret"),
        Some(json!({"agent_id": "prod-1"})),
        None,
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    // A key without the lock scope cannot acquire at all.
    let response = send(
        &app,
        post.clone(),
        "/locks/r",
        Some("reader-secret"),
        Some(json!({"agent_id": "ci-1"})),
        None,
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    assert!(stream_events(&redis, &app).await.is_empty());

    // The prod key takes a lock as its own agent.
    let response = send(
        &app,
        post.clone(),
        "/locks/r",
        Some("prod-secret"),
        Some(json!({"agent_id": "prod-1"})),
        None,
    )
    .await;
    assert_eq!(response.status(), 201);
    let grant: Value = response.json().await.unwrap();
    let token = grant["token"].as_str().unwrap();

    // Even with the right token, the ci key may not release or refresh prod's lock.
    let response = send(
        &app,
        reqwest::Method::DELETE,
        "/locks/r",
        Some("ci-secret"),
        None,
        Some(token),
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    let response = send(
        &app,
        reqwest::Method::PATCH,
        "/locks/r",
        Some("ci-secret"),
        None,
        Some(token),
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    // Reading needs the read scope, which writer lacks.
    let response = send(
        &app,
        reqwest::Method::GET,
        "/locks/r",
        Some("writer-secret"),
        None,
        None,
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    let response = send(
        &app,
        reqwest::Method::GET,
        "/events",
        Some("writer-secret"),
        None,
        None,
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    let status: Value = send(
        &app,
        reqwest::Method::GET,
        "/locks/r",
        Some("reader-secret"),
        None,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(status["agent_id"], "prod-1", "the lock is untouched");
    assert_eq!(status["expires_at"], grant["expires_at"]);

    // Its own key releases it.
    let response = send(
        &app,
        reqwest::Method::DELETE,
        "/locks/r",
        Some("prod-secret"),
        None,
        Some(token),
    )
    .await;
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn only_admins_force_release_and_the_event_says_forced() {
    let redis = RedisServer::start().await;
    let app = app_with_auth(&redis).await;
    let response = send(
        &app,
        reqwest::Method::POST,
        "/locks/r",
        Some("ci-secret"),
        Some(json!({"agent_id": "ci-1"})),
        None,
    )
    .await;
    assert_eq!(response.status(), 201);

    let response = send(
        &app,
        reqwest::Method::DELETE,
        "/locks/r?force=true",
        Some("ci-secret"),
        None,
        None,
    )
    .await;
    assert_problem(response, 403, "forbidden").await;
    let response = send(
        &app,
        reqwest::Method::DELETE,
        "/locks/r?force=true",
        Some("ops-secret"),
        None,
        None,
    )
    .await;
    assert_eq!(response.status(), 204);
    let response = send(
        &app,
        reqwest::Method::DELETE,
        "/locks/r?force=true",
        Some("ops-secret"),
        None,
        None,
    )
    .await;
    assert_problem(response, 404, "lock_not_found").await;
    let response = send(
        &app,
        reqwest::Method::DELETE,
        "/locks/r?force=maybe",
        Some("ops-secret"),
        None,
        None,
    )
    .await;
    assert_problem(response, 400, "invalid_query").await;

    let events = stream_events(&redis, &app).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "resource.unlocked");
    assert_eq!(last["reason"], "forced");
    assert_eq!(last["agent_id"], "ci-1");
}

#[tokio::test]
async fn event_streams_are_limited_per_key_with_429() {
    let redis = RedisServer::start().await;
    let app = app_with_auth(&redis).await;
    let first = app
        .client
        .get(format!("{}/events", app.base))
        .bearer_auth("reader-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = app
        .client
        .get(format!("{}/events", app.base))
        .bearer_auth("reader-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(second.headers()["retry-after"], "1");
    assert_problem(second, 429, "key_event_client_limit").await;
    // Another key still gets its own.
    let other = app
        .client
        .get(format!("{}/events", app.base))
        .bearer_auth("ops-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // The slot frees up when the first stream goes.
    drop(first);
    eventually(
        Duration::from_secs(5),
        "the first stream's slot to free up",
        || async {
            app.client
                .get(format!("{}/events", app.base))
                .bearer_auth("reader-secret")
                .send()
                .await
                .unwrap()
                .status()
                == 200
        },
    )
    .await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_same_grant() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let acquire = |agent: &'static str, key: &'static str| {
        app.client
            .post(app.lock_url("r"))
            .header("Idempotency-Key", key)
            .json(&json!({"agent_id": agent, "ttl_ms": 60_000, "wait_ms": 100}))
            .send()
    };

    let first = acquire("agent-a", "attempt-1").await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let events = stream_events(&redis, &app).await.len();

    let retry = acquire("agent-a", "attempt-1").await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retry.headers()["lock-token"].to_str().unwrap(),
        first["token"]
    );
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["token"], first["token"]);
    assert_eq!(retry["fencing_token"], first["fencing_token"]);
    assert_eq!(retry["acquired_at"], first["acquired_at"]);
    assert_eq!(retry["expires_at"], first["expires_at"]);
    assert_eq!(
        stream_events(&redis, &app).await.len(),
        events,
        "a replay changes nothing"
    );

    // Another agent, or another key, is an ordinary contender.
    assert_problem(
        acquire("agent-b", "attempt-1").await.unwrap(),
        409,
        "lock_held",
    )
    .await;
    assert_problem(
        acquire("agent-a", "attempt-2").await.unwrap(),
        409,
        "lock_held",
    )
    .await;
    // The replayed token is the real one: it releases the lock.
    assert_eq!(
        app.release("r", first["token"].as_str().unwrap())
            .await
            .status(),
        204
    );
    // Neither the key nor the token sits in Redis in the clear.
    let dump = dump_keys(&redis, &app.settings.redis.key_prefix).await;
    assert!(!dump.contains("attempt-1"));
    // Once released, the same key acquires afresh.
    let again: Value = acquire("agent-a", "attempt-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(again["token"], first["token"]);
    let dump = dump_keys(&redis, &app.settings.redis.key_prefix).await;
    let token = again["token"].as_str().unwrap();
    assert!(
        !dump.contains(token) && !dump.contains(&token.replace('-', "")),
        "{dump}"
    );

    let bad = app
        .client
        .post(app.lock_url("r2"))
        .header("Idempotency-Key", "has spaces in it")
        .json(&json!({"agent_id": "agent-a"}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400, "invalid_idempotency_key").await;
}

#[tokio::test]
async fn waiters_beyond_the_limit_get_503_with_retry_after() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.locks.max_waiters = 1;
    let app = TestApp::spawn_with(settings).await;
    let holder = app.acquire_ok("r", "agent-a", 60_000).await;
    let waiting = app
        .spawn_waiter("r", json!({"agent_id": "agent-b", "wait_ms": 10_000}))
        .await;

    let refused = app
        .acquire("other", json!({"agent_id": "agent-c", "wait_ms": 1000}))
        .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_problem(refused, 503, "waiter_limit").await;
    // Acquires that do not wait are not limited.
    app.acquire_ok("other", "agent-c", 1000).await;

    app.release("r", holder["token"].as_str().unwrap()).await;
    assert_eq!(waiting.await.unwrap().status(), 201);
}

#[tokio::test]
async fn event_streams_beyond_the_server_limit_get_503() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.max_clients = 1;
    let app = TestApp::spawn_with(settings).await;
    let _first = EventStream::open(&app, "", None).await;
    let second = app
        .client
        .get(format!("{}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_problem(second, 503, "event_client_limit").await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_a_503_problem_and_are_closed() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.server.max_connections = 2;
    let app = TestApp::spawn_with(settings).await;

    // Two idle keep-alive connections hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }

    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("the refusal comes at once")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["code"], "connection_limit");

    drop(held);
    eventually(Duration::from_secs(5), "a slot to free up", || async {
        reqwest::get(format!("{}/healthz", app.base))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.server.max_body_bytes = 2048;
    let app = TestApp::spawn_with(settings).await;
    let body = json!({"agent_id": "a".repeat(3000)});
    assert_problem(app.acquire("r", body).await, 413, "payload_too_large").await;
}

/// The value of an unlabelled counter or gauge in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_grants_contention_waits_and_redis_errors() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let page = || async {
        let response = app
            .client
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        response.text().await.unwrap()
    };
    let before = page().await;

    let grant = app.acquire_ok("m", "agent-a", 60_000).await;
    app.acquire("m", json!({"agent_id": "agent-b"})).await;
    let waiter = app
        .spawn_waiter("m", json!({"agent_id": "agent-c", "wait_ms": 5000}))
        .await;
    assert!(metric(&page().await, "lockd_waiters") >= 1.0);
    app.release("m", grant["token"].as_str().unwrap()).await;
    assert_eq!(waiter.await.unwrap().status(), 201);
    redis.kill();
    app.acquire("n", json!({"agent_id": "agent-a"})).await;

    let after = page().await;
    for name in [
        "lockd_lock_grants_total",
        "lockd_lock_conflicts_total",
        "lockd_lock_releases_total{reason=\"released\"}",
    ] {
        assert!(
            metric(&after, name) > metric(&before, name),
            "{name} grew:\n{after}"
        );
    }
    assert!(after.contains("lockd_lock_wait_seconds_bucket"), "{after}");
    assert!(after.contains("lockd_redis_errors_total{kind="), "{after}");
    assert!(
        after.contains(
            r#"lockd_http_requests_total{method="POST",route="/locks/{*resource_id}",status="201"}"#
        ),
        "{after}"
    );
    assert!(
        after.contains("lockd_http_request_duration_seconds_bucket"),
        "{after}"
    );
}

#[tokio::test]
async fn the_documented_redis_acl_is_all_lockd_needs() {
    let acl = concat!(env!("CARGO_MANIFEST_DIR"), "/config/redis-users.acl");
    let redis =
        RedisServer::start_with(&["--save", "", "--appendonly", "no", "--aclfile", acl]).await;
    let mut settings = test_settings(&redis);
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    settings.redis.url = format!("redis://lockd:change-me@127.0.0.1:{port}");
    settings.redis.key_prefix = "lockd:".into();
    let app = TestApp::spawn_with(settings).await;
    crate::helpers::until_subscribed(&redis, &app).await;
    assert_eq!(app.readyz().await.status(), 200);

    // Acquire, wait woken by a release, refresh, release, expiry, listing, resume.
    let first = app.acquire_ok("file:a", "agent-a", 60_000).await;
    let waiter = app
        .spawn_waiter(
            "file:a",
            json!({"agent_id": "agent-b", "ttl_ms": 200, "wait_ms": 10_000}),
        )
        .await;
    let token = first["token"].as_str().unwrap();
    assert_eq!(app.refresh("file:a", token, None).await.status(), 200);
    assert_eq!(app.release("file:a", token).await.status(), 204);
    assert_eq!(waiter.await.unwrap().status(), 201);
    let mut stream = EventStream::open(&app, "types=resource.unlocked", Some("0-0")).await;
    assert_eq!(stream.next_json().await["reason"], "released");
    assert_eq!(stream.next_json().await["reason"], "expired");
    let page: Value = app
        .client
        .get(format!("{}/locks", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["locks"], json!([]));
}

/// `redis-server` arguments for TLS on `port` with the certificates `make_certificates`
/// left in `dir`, clients not asked for certificates of their own.
pub fn tls_server_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        path("server.crt"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI.
pub fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=lockd test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test]
async fn lockd_reaches_redis_over_tls_and_verifies_its_certificate() {
    let dir = std::env::temp_dir().join(format!("lockd-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let tls_port = crate::helpers::free_port();
    let tls = tls_server_args(&dir, tls_port);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let redis =
        RedisServer::start_with(&[&["--save", "", "--appendonly", "no"], &tls[..]].concat()).await;

    let mut settings = test_settings(&redis);
    settings.redis.url = format!("rediss://127.0.0.1:{tls_port}");
    settings.redis.tls_ca_file = path("ca.crt");
    let app = TestApp::spawn_with(settings.clone()).await;
    crate::helpers::until_subscribed(&redis, &app).await;
    assert_eq!(app.readyz().await.status(), 200);
    let holder = app.acquire_ok("r", "agent-a", 60_000).await;
    let waiter = app
        .spawn_waiter("r", json!({"agent_id": "agent-b", "wait_ms": 10_000}))
        .await;
    app.release("r", holder["token"].as_str().unwrap()).await;
    assert_eq!(
        waiter.await.unwrap().status(),
        201,
        "woken through the TLS subscription"
    );

    // Without the private CA, the certificate is not trusted and nothing is served.
    settings.redis.tls_ca_file = String::new();
    let untrusting = TestApp::spawn_with(settings).await;
    assert_problem(untrusting.readyz().await, 503, "store_unavailable").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn browser_pages_on_allowed_origins_get_cors_headers_both_ways() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.server.cors_allowed_origins = vec!["https://dashboard.example.com".into()];
    settings.auth.enabled = true;
    settings.auth.keys = vec![key("ui", "ui-secret", "*", &["lock", "read"])];
    let app = TestApp::spawn_with(settings).await;

    // The preflight of a release, sent without credentials as browsers do.
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.lock_url("r"))
        .header("Origin", "https://dashboard.example.com")
        .header("Access-Control-Request-Method", "DELETE")
        .header(
            "Access-Control-Request-Headers",
            "lock-token, authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://dashboard.example.com"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        allowed.contains("lock-token") && allowed.contains("authorization"),
        "{allowed}"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("DELETE")
    );

    // The real request: the page can read the token header of the response.
    let response = app
        .client
        .post(app.lock_url("r"))
        .header("Origin", "https://dashboard.example.com")
        .bearer_auth("ui-secret")
        .json(&json!({"agent_id": "ui"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://dashboard.example.com"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("lock-token") && exposed.contains("location"),
        "{exposed}"
    );

    // Other origins get no CORS headers, so browsers keep their pages out.
    let foreign = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("Origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn without_allowed_origins_there_are_no_cors_headers() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let response = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("Origin", "https://dashboard.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_only_for_the_api_key_that_sent_it() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.auth.enabled = true;
    settings.auth.keys = vec![
        key("ci", "ci-secret", "ci-*", &["lock", "read"]),
        key("ops", "ops-secret", "*", &["lock", "read"]),
    ];
    let app = TestApp::spawn_with(settings).await;
    let acquire = |secret: &'static str| {
        app.client
            .post(app.lock_url("deploy"))
            .bearer_auth(secret)
            .header("Idempotency-Key", "job-42")
            .json(&json!({"agent_id": "ci-runner"}))
            .send()
    };
    let first = acquire("ci-secret").await.unwrap();
    assert_eq!(first.status(), 201);
    let again = acquire("ci-secret").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    // Another key that may act as the same agent is an ordinary contender: no token.
    let other = acquire("ops-secret").await.unwrap();
    assert!(other.headers().get("lock-token").is_none());
    assert_problem(other, 409, "lock_held").await;
}
