//! Probes, the binary's configuration and signals, timeouts, and the OpenAPI document:
//! its snapshot, how it is served, and the docs page that browses it.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    LockdProcess, RedisServer, TestApp, assert_problem, eventually, test_settings,
};

const LOCKD: &str = env!("CARGO_BIN_EXE_lockd");

#[tokio::test]
async fn healthz_and_readyz_answer_when_redis_is_up() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let live: Value = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live, json!({"status": "ok"}));
    // Ready once the event subscription is up, which follows startup by a moment.
    crate::helpers::until_subscribed(&redis, &app).await;
    let ready = app.readyz().await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let response = app
        .client
        .get(format!("{}/nowhere", app.base))
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    let given = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.server.header_read_timeout_ms = 200;
    let app = TestApp::spawn_with(settings).await;

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;

    assert!(read.is_ok(), "the server closed the connection");
    let text = String::from_utf8_lossy(&buffer);
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_after_the_request_timeout() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.server.request_timeout_ms = 300;
    settings.locks.max_wait_ms = 0;
    let app = TestApp::spawn_with(settings).await;

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /locks/r HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"agent_id\"")
        .await
        .unwrap();
    let mut buffer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer before the test's own timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buffer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("application/problem+json") && text.contains("request_timeout"),
        "{text}"
    );
    assert_eq!(app.status("r").await["locked"], false);
}

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let generated = lockd::openapi::document_json();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let first_difference = committed
        .lines()
        .zip(generated.lines())
        .position(|(old, new)| old != new)
        .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date (first difference at line {}); regenerate it \
         with:\n\n    cargo run -- openapi > openapi/openapi.json\n",
        first_difference + 1
    );
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    let generated: Value = serde_json::from_str(&lockd::openapi::document_json()).unwrap();
    assert_eq!(served, generated);
    for operation in ["acquire_lock", "release_lock", "refresh_lock", "get_lock"] {
        assert!(
            generated
                .to_string()
                .contains(&format!("\"operationId\":\"{operation}\"")),
            "{operation}"
        );
    }
}

/// The document says which operations take an API key; with auth on, exactly those
/// answer 401 to a request without one.
#[tokio::test]
async fn the_documented_security_matches_which_routes_need_a_key() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.auth.enabled = true;
    let app = TestApp::spawn_with(settings).await;
    let document: Value = serde_json::from_str(&lockd::openapi::document_json()).unwrap();
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let url = format!("{}{}", app.base, path.replace("{resource_id}", "r"));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), url)
                .header("Lock-Token", "6f1c1d1e-8a43-4d5f-9a8e-0c2b5d4e7f10")
                .json(&json!({"agent_id": "agent-a"}))
                .send()
                .await
                .unwrap();
            let documented = operation["security"]
                .as_array()
                .is_some_and(|security| security.iter().any(|s| s.get("api_key").is_some()));
            assert_eq!(
                response.status() == 401,
                documented,
                "{method} {path} answered {} without a key",
                response.status()
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked}");
}

#[tokio::test]
async fn docs_serve_swagger_ui_and_all_its_assets_from_the_binary() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: String| {
        let (client, url) = (client.clone(), format!("{}{path}", app.base));
        async move { client.get(url).send().await.unwrap() }
    };

    let redirect = get("/docs".into()).await;
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "docs/");

    let page = get("/docs/".into()).await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");

    // Every script, style and icon the page loads is relative, served by lockd itself:
    // the page needs nothing from the internet.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .skip(1)
        .step_by(2)
        .filter(|value| {
            [".js", ".css", ".png"]
                .iter()
                .any(|extension| value.ends_with(extension))
        })
        .collect();
    assert!(assets.len() >= 4, "{assets:?}");
    for asset in &assets {
        assert!(!asset.contains("//"), "{asset} is not served by lockd");
        let response = get(format!("/docs/{}", asset.trim_start_matches("./"))).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
    let initializer = get("/docs/swagger-initializer.js".into())
        .await
        .text()
        .await
        .unwrap();
    assert!(
        initializer.contains("\"url\": \"../openapi.json\""),
        "{initializer}"
    );
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "{initializer}"
    );

    assert_problem(get("/docs/nothing-here.js".into()).await, 404, "not_found").await;
}

/// Generated clients (openapi-python-client, for one) send `Content-Type:
/// application/json` even when they leave the optional refresh body out.
#[tokio::test]
async fn a_refresh_with_a_json_content_type_and_no_body_keeps_the_original_length() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("r", "agent-a", 30_000).await;
    let token = grant["token"].as_str().unwrap();
    let longer = app
        .refresh("r", token, Some(json!({"ttl_ms": 60_000})))
        .await;
    assert_eq!(longer.status(), 200);

    let response = app
        .client
        .patch(app.lock_url("r"))
        .header("Lock-Token", token)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refreshed: Value = response.json().await.unwrap();
    assert_eq!(refreshed["ttl_ms"], 30_000);

    // A body still needs a JSON content type.
    let response = app
        .client
        .patch(app.lock_url("r"))
        .header("Lock-Token", token)
        .header("Content-Type", "text/plain")
        .body(r#"{"ttl_ms": 1000}"#)
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported_media_type").await;
}

/// Runs `lockd` with arguments and environment; returns (exit code, stdout, stderr).
fn run_lockd(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(LOCKD);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("lockd runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn configuration_layers_file_then_environment_then_flags() {
    let dir = std::env::temp_dir().join(format!("lockd-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lockd.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1111\"\n[redis]\nkey_prefix = \"file:\"\npool_size = 3\n\
         [locks]\nmax_wait_ms = 1234\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (code, out, err) = run_lockd(
        &["--config", file, "--listen", "127.0.0.1:3333", "config"],
        &[
            ("LOCKD_SERVER__LISTEN", "127.0.0.1:2222"),
            ("LOCKD_REDIS__KEY_PREFIX", "env:"),
            (
                "LOCKD_REDIS__URL",
                "redis://user:hunter2@redis.internal:6380/1",
            ),
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(code, 0, "{err}");
    let effective: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(effective["server"]["listen"], "127.0.0.1:3333", "flags win");
    assert_eq!(
        effective["redis"]["key_prefix"], "env:",
        "environment beats the file"
    );
    assert_eq!(
        effective["redis"]["pool_size"], 3,
        "the file beats the defaults"
    );
    assert_eq!(effective["locks"]["max_wait_ms"], 1234);
    assert_eq!(
        effective["locks"]["default_ttl_ms"], 30_000,
        "defaults fill the rest"
    );
    assert_eq!(
        effective["redis"]["url"],
        "redis://user:***@redis.internal:6380/1"
    );
    assert!(!out.contains("hunter2"));
}

#[test]
fn a_bad_setting_stops_startup_with_a_message_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 8] = [
        (&[("LOCKD_LOCKS__MAX_TTL_MS", "soon")], "locks.max_ttl_ms"),
        (&[("LOCKD_REDIS__MODE", "cluster")], "redis.nodes"),
        (
            &[
                ("LOCKD_REDIS__MODE", "cluster"),
                ("LOCKD_REDIS__NODES", r#"["http://10.0.0.1:6379"]"#),
            ],
            "redis.nodes",
        ),
        (&[("LOCKD_REDIS__PARTITIONS", "129")], "redis.partitions"),
        (
            &[("LOCKD_LOCKS__DEFAULT_TTL_MS", "0")],
            "locks.default_ttl_ms",
        ),
        (&[("LOCKD_REDIS__URL", "http://nope")], "redis.url"),
        (&[("LOCKD_SERVER__LISTEN", "everywhere")], "server.listen"),
        (&[("LOCKD_REDIS__POOL_SIZ", "3")], "pool_siz"),
    ];
    for (env, key) in cases {
        let (code, _, err) = run_lockd(&[], env);
        assert_eq!(code, 2, "{env:?}: {err}");
        assert!(err.contains(key), "{env:?} should name {key}: {err}");
    }
    let (code, _, err) = run_lockd(&["--config", "/nonexistent/lockd.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/lockd.toml"), "{err}");
}

#[tokio::test]
async fn sigterm_ends_waits_with_503_and_exits_0() {
    let redis = RedisServer::start().await;
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let mut lockd = LockdProcess::spawn(&redis.url(), &prefix, &[]).await;
    let base = lockd.base.clone();
    let client = reqwest::Client::new();
    let holder = client
        .post(format!("{base}/locks/r"))
        .json(&json!({"agent_id": "agent-a", "ttl_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(holder.status(), 201);
    let waiter = {
        let (client, url) = (client.clone(), format!("{base}/locks/r"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"agent_id": "agent-b", "wait_ms": 30_000}))
                .send()
                .await
                .unwrap()
        })
    };
    // The waiter has made its first attempt once Redis has run the acquire script twice.
    let conn = redis.connection().await;
    eventually(Duration::from_secs(5), "the waiter's first attempt", || {
        let mut conn = conn.clone();
        async move {
            let info: String = deadpool_redis::redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await
                .unwrap();
            info.lines()
                .find(|line| line.starts_with("cmdstat_evalsha:"))
                .and_then(|line| line.split("calls=").nth(1))
                .and_then(|rest| rest.split(',').next())
                .and_then(|calls| calls.parse::<u32>().ok())
                .is_some_and(|calls| calls >= 2)
        }
    })
    .await;

    let status = lockd.terminate(Duration::from_secs(10)).await;

    let response = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_problem(response, 503, "shutting_down").await;
    assert!(status.success(), "lockd exited with {status}");
}
