//! Bad input: every case answers a 4xx problem document and changes nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{RedisServer, TestApp, assert_problem, stream_events};

/// One bad request and the problem it must get.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    token: Option<String>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(method: Method, path: &str, status: u16, code: &'static str) -> Case {
    Case {
        method,
        path: path.to_owned(),
        content_type: None,
        token: None,
        body: None,
        status,
        code,
    }
}

impl Case {
    fn json(mut self, body: &str) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.as_bytes().to_vec());
        self
    }

    fn raw(mut self, content_type: Option<&'static str>, body: Vec<u8>) -> Self {
        self.content_type = content_type;
        self.body = Some(body);
        self
    }

    fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }
}

#[tokio::test]
async fn bad_requests_get_problem_documents_and_change_nothing() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("held", "agent-a", 60_000).await;
    let token = grant["token"].as_str().unwrap().to_owned();
    let other_token = uuid::Uuid::new_v4().to_string();
    let events_before = stream_events(&redis, &app).await;
    let held_before = app.status("held").await;

    let too_big = format!(r#"{{"agent_id": "{}"}}"#, "a".repeat(17 * 1024));
    let cases = vec![
        // Resource ids.
        case(Method::POST, "/locks/", 400, "invalid_resource_id").json(r#"{"agent_id":"a"}"#),
        case(Method::GET, "/locks/", 400, "invalid_resource_id"),
        case(Method::POST, "/locks/a%0Ab", 400, "invalid_resource_id").json(r#"{"agent_id":"a"}"#),
        case(Method::GET, "/locks/a%7Fb", 400, "invalid_resource_id"),
        case(Method::GET, "/locks/%FF%FE", 400, "invalid_resource_id"),
        case(
            Method::POST,
            &format!("/locks/{}", "x".repeat(513)),
            400,
            "invalid_resource_id",
        )
        .json(r#"{"agent_id":"a"}"#),
        // Bodies.
        case(Method::POST, "/locks/free", 400, "malformed_json").json(r#"{"agent_id":"#),
        case(Method::POST, "/locks/free", 400, "malformed_json").json("not json"),
        case(Method::POST, "/locks/free", 422, "invalid_body").json(r#"{"agent_id": 7}"#),
        case(Method::POST, "/locks/free", 422, "invalid_body").json(r#"{}"#),
        case(Method::POST, "/locks/free", 422, "invalid_body").json(r#"[]"#),
        case(Method::POST, "/locks/free", 422, "invalid_body")
            .json(r#"{"agent_id": "a", "owner": "b"}"#),
        case(Method::POST, "/locks/free", 422, "invalid_body")
            .json(r#"{"agent_id": "a", "ttl_ms": -1}"#),
        case(Method::POST, "/locks/free", 422, "invalid_body")
            .json(r#"{"agent_id": "a", "ttl_ms": "1000"}"#),
        case(Method::POST, "/locks/free", 422, "invalid_body")
            .json(r#"{"agent_id": "a", "ttl_ms": 1.5}"#),
        case(Method::POST, "/locks/free", 422, "invalid_ttl_ms")
            .json(r#"{"agent_id": "a", "ttl_ms": 0}"#),
        case(Method::POST, "/locks/free", 422, "invalid_ttl_ms")
            .json(r#"{"agent_id": "a", "ttl_ms": 3600001}"#),
        case(Method::POST, "/locks/free", 422, "invalid_wait_ms")
            .json(r#"{"agent_id": "a", "wait_ms": 60001}"#),
        case(Method::POST, "/locks/free", 422, "invalid_agent_id").json(r#"{"agent_id": ""}"#),
        case(Method::POST, "/locks/free", 422, "invalid_agent_id")
            .json(&format!(r#"{{"agent_id": "{}"}}"#, "a".repeat(129))),
        case(Method::POST, "/locks/free", 422, "invalid_agent_id")
            .json(r#"{"agent_id": "a\u0000b"}"#),
        case(Method::POST, "/locks/free", 413, "payload_too_large").json(&too_big),
        case(Method::POST, "/locks/free", 415, "unsupported_media_type")
            .raw(Some("text/plain"), br#"{"agent_id":"a"}"#.to_vec()),
        case(Method::POST, "/locks/free", 415, "unsupported_media_type")
            .raw(None, br#"{"agent_id":"a"}"#.to_vec()),
        // Tokens.
        case(Method::DELETE, "/locks/held", 400, "missing_lock_token"),
        case(Method::PATCH, "/locks/held", 400, "missing_lock_token"),
        case(Method::DELETE, "/locks/held", 400, "invalid_lock_token").token("not-a-token"),
        case(Method::PATCH, "/locks/held", 400, "invalid_lock_token").token(""),
        case(Method::DELETE, "/locks/held", 409, "not_lock_owner").token(&other_token),
        // Refresh bodies, with the holder's own token: still nothing may change.
        case(Method::PATCH, "/locks/held", 422, "invalid_ttl_ms")
            .token(&token)
            .json(r#"{"ttl_ms": 0}"#),
        case(Method::PATCH, "/locks/held", 422, "invalid_body")
            .token(&token)
            .json(r#"{"ttl_ms": 10, "agent_id": "b"}"#),
        case(Method::PATCH, "/locks/held", 400, "malformed_json")
            .token(&token)
            .json("{"),
        case(Method::PATCH, "/locks/held", 415, "unsupported_media_type")
            .token(&token)
            .raw(None, b"ttl_ms=10".to_vec()),
        case(Method::PATCH, "/locks/held", 413, "payload_too_large")
            .token(&token)
            .json(&format!(
                r#"{{"ttl_ms": 10, "pad": "{}"}}"#,
                "x".repeat(17 * 1024)
            )),
        // Routes and methods.
        case(Method::GET, "/nowhere", 404, "not_found"),
        case(Method::GET, "/lock/held", 404, "not_found"),
        case(Method::PUT, "/locks/held", 405, "method_not_allowed").json("{}"),
        case(Method::POST, "/healthz", 405, "method_not_allowed"),
    ];

    for case in cases {
        let url = format!("{}{}", app.base, case.path);
        let mut request = app.client.request(case.method.clone(), &url);
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(token) = &case.token {
            request = request.header("Lock-Token", token);
        }
        if let Some(body) = case.body.clone() {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let described = format!(
            "{} {}",
            case.method,
            case.path.chars().take(60).collect::<String>()
        );
        assert_eq!(response.status(), case.status, "{described}");
        let problem: Value = assert_problem(response, case.status, case.code).await;
        assert!(
            !problem.to_string().contains(&token),
            "{described} leaked the token: {problem}"
        );
    }

    assert_eq!(
        stream_events(&redis, &app).await,
        events_before,
        "no event was emitted"
    );
    let mut held_after = app.status("held").await;
    let mut held_before = held_before;
    held_after
        .as_object_mut()
        .unwrap()
        .remove("ttl_remaining_ms");
    held_before
        .as_object_mut()
        .unwrap()
        .remove("ttl_remaining_ms");
    assert_eq!(held_after, held_before, "the held lock is untouched");
    assert_eq!(
        app.status("free").await,
        json!({"resource_id": "free", "locked": false})
    );
}

#[tokio::test]
async fn method_not_allowed_lists_the_allowed_methods() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let response = app.client.put(app.lock_url("r")).send().await.unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    for method in ["POST", "DELETE", "PATCH", "GET", "HEAD"] {
        assert!(allow.contains(method), "{allow}");
    }
    assert_problem(response, 405, "method_not_allowed").await;
}
