//! `GET /locks`: the locks held now, paged in resource-id order.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{RedisServer, TestApp, assert_problem, eventually};

/// `GET /locks?{query}`, asserting 200; returns the page.
pub async fn list(app: &TestApp, query: &str) -> Value {
    let response = app
        .client
        .get(format!("{}/locks?{query}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET /locks?{query}");
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lock| lock["resource_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn listing_pages_through_held_locks_in_id_order() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let mut held: Vec<String> = (0..25).map(|n| format!("file:{n:02}")).collect();
    held.push("db:users".into());
    held.push("file:ü".into());
    for id in &held {
        let encoded = id.replace('ü', "%C3%BC");
        app.acquire_ok(&encoded, "agent", 60_000).await;
    }
    let released = app.acquire_ok("file:gone", "agent", 60_000).await;
    app.release("file:gone", released["token"].as_str().unwrap())
        .await;
    held.sort();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("limit=10&cursor={cursor}"),
            None => "limit=10".to_owned(),
        };
        let page = list(&app, &query).await;
        pages += 1;
        for lock in page["locks"].as_array().unwrap() {
            assert_eq!(lock["locked"], true);
            assert_eq!(lock["agent_id"], "agent");
            assert!(lock["fencing_token"].as_u64().is_some());
            assert!(lock["ttl_remaining_ms"].as_u64().unwrap() > 0);
            assert!(lock.get("token").is_none());
        }
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging terminates");
    }
    assert_eq!(seen, held);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn listing_filters_by_prefix_and_defaults_to_100_per_page() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    for n in 0..105 {
        app.acquire_ok(&format!("file:src/{n:03}"), "agent", 60_000)
            .await;
    }
    app.acquire_ok("file:srd", "agent", 60_000).await;
    app.acquire_ok("db:x", "agent", 60_000).await;

    let page = list(&app, "prefix=file:src/").await;
    assert_eq!(ids(&page).len(), 100);
    let next = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = list(&app, &format!("prefix=file:src/&cursor={next}")).await;
    assert_eq!(
        ids(&rest),
        [
            "file:src/100",
            "file:src/101",
            "file:src/102",
            "file:src/103",
            "file:src/104"
        ]
    );
    assert_eq!(rest["next_cursor"], Value::Null);

    assert_eq!(ids(&list(&app, "prefix=db:").await), ["db:x"]);
    assert!(ids(&list(&app, "prefix=nothing").await).is_empty());
    assert_eq!(
        list(&app, "prefix=nothing").await["next_cursor"],
        Value::Null
    );
}

#[tokio::test]
async fn listing_hides_leases_that_ran_out() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    app.acquire_ok("short", "agent", 50).await;
    app.acquire_ok("long", "agent", 60_000).await;
    eventually(Duration::from_secs(5), "the short lease to end", || async {
        app.status("short").await["locked"] == false
    })
    .await;
    assert_eq!(ids(&list(&app, "").await), ["long"]);
}

#[tokio::test]
async fn listing_rejects_malformed_queries_with_400() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "limit=-1",
        "cursor=zz",
        "cursor=abc",
        "sort=desc",
        "prefix=%0A",
    ] {
        let response = app
            .client
            .get(format!("{}/locks?{query}", app.base))
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid_query").await;
    }
}
