//! `GET /events` with a real SSE client over real sockets, and two lockd instances
//! sharing one Redis.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    EventStream, RedisServer, TestApp, assert_problem, eventually, stream_events, test_settings,
};

/// Two apps on one Redis with the same key prefix: two instances of one deployment.
async fn two_instances(redis: &RedisServer) -> (TestApp, TestApp) {
    let settings = test_settings(redis);
    let first = TestApp::spawn_with(settings.clone()).await;
    let second = TestApp::spawn_with(settings).await;
    (first, second)
}

#[tokio::test]
async fn events_from_every_instance_reach_a_client_in_order() {
    let redis = RedisServer::start().await;
    let (a, b) = two_instances(&redis).await;
    let mut stream = EventStream::open(&b, "", None).await;

    let mut expected = Vec::new();
    for n in 0..6 {
        let app = if n % 2 == 0 { &a } else { &b };
        let grant = app
            .acquire_ok(&format!("file:{n}"), &format!("agent-{n}"), 60_000)
            .await;
        expected.push(("resource.locked", format!("file:{n}")));
        let other = if n % 2 == 0 { &b } else { &a };
        other
            .release(&format!("file:{n}"), grant["token"].as_str().unwrap())
            .await;
        expected.push(("resource.unlocked", format!("file:{n}")));
    }

    let mut last_id = String::new();
    for (kind, resource) in expected {
        let event = stream.next_json().await;
        assert_eq!(event["type"], kind);
        assert_eq!(event["resource_id"], resource.as_str());
        let id = event["id"].as_str().unwrap().to_owned();
        assert!(id_key(&id) > id_key(&last_id), "{last_id} then {id}");
        last_id = id;
    }
    // What the client saw is exactly the stream.
    let streamed = stream_events(&redis, &a).await;
    assert_eq!(streamed.last().unwrap()["id"], last_id.as_str());
}

fn id_key(id: &str) -> (u64, u64) {
    match id.split_once('-') {
        Some((ms, seq)) => (ms.parse().unwrap(), seq.parse().unwrap()),
        None => (0, 0),
    }
}

#[tokio::test]
async fn filters_select_by_resource_prefix_and_type_combined() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let mut exact = EventStream::open(&app, "resource_id=file:a", None).await;
    let mut prefixed = EventStream::open(&app, "prefix=file:", None).await;
    let mut unlocks = EventStream::open(&app, "types=resource.unlocked", None).await;
    let mut combined = EventStream::open(
        &app,
        "prefix=file:&types=resource.locked,resource.refreshed",
        None,
    )
    .await;

    for resource in ["db:x", "file:a", "file:b"] {
        let grant = app.acquire_ok(resource, "agent", 60_000).await;
        let token = grant["token"].as_str().unwrap();
        app.refresh(resource, token, None).await;
        app.release(resource, token).await;
    }
    // A final event every client sees, to know nothing else is coming.
    let marker = app.acquire_ok("file:zz-marker", "agent", 60_000).await;
    app.release("file:zz-marker", marker["token"].as_str().unwrap())
        .await;

    async fn collect(
        stream: &mut EventStream,
        until_unlocked_marker: bool,
    ) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        loop {
            let event = stream.next_json().await;
            let item = (
                event["type"].as_str().unwrap().to_owned(),
                event["resource_id"].as_str().unwrap().to_owned(),
            );
            let done = item.1 == "file:zz-marker"
                && (!until_unlocked_marker || item.0 == "resource.unlocked");
            seen.push(item);
            if done {
                return seen;
            }
        }
    }
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };

    // The exact filter never sees the marker: end it with a bounded read instead.
    let mut exact_seen = Vec::new();
    for _ in 0..3 {
        let event = exact.next_json().await;
        exact_seen.push((
            event["type"].as_str().unwrap().to_owned(),
            event["resource_id"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        exact_seen,
        pairs(&[
            ("resource.locked", "file:a"),
            ("resource.refreshed", "file:a"),
            ("resource.unlocked", "file:a")
        ])
    );
    let prefixed_seen = collect(&mut prefixed, true).await;
    assert_eq!(prefixed_seen.len(), 8, "{prefixed_seen:?}");
    assert!(prefixed_seen.iter().all(|(_, id)| id.starts_with("file:")));
    let unlock_seen = collect(&mut unlocks, true).await;
    assert_eq!(
        unlock_seen,
        pairs(&[
            ("resource.unlocked", "db:x"),
            ("resource.unlocked", "file:a"),
            ("resource.unlocked", "file:b"),
            ("resource.unlocked", "file:zz-marker")
        ])
    );
    let combined_seen = collect(&mut combined, false).await;
    assert_eq!(
        combined_seen,
        pairs(&[
            ("resource.locked", "file:a"),
            ("resource.refreshed", "file:a"),
            ("resource.locked", "file:b"),
            ("resource.refreshed", "file:b"),
            ("resource.locked", "file:zz-marker")
        ])
    );
    // And the exact filter got nothing more.
    assert!(
        exact
            .next_within(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn bad_event_stream_requests_get_400_problems() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let get = |query: &str, last: Option<&str>| {
        let mut request = app.client.get(format!("{}/events?{query}", app.base));
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last);
        }
        request.send()
    };
    assert_problem(
        get("types=resource.exploded", None).await.unwrap(),
        400,
        "invalid_query",
    )
    .await;
    assert_problem(
        get("types=resource.locked,", None).await.unwrap(),
        400,
        "invalid_query",
    )
    .await;
    assert_problem(get("colour=red", None).await.unwrap(), 400, "invalid_query").await;
    for bad in ["nope", "12", "1-", "-1", "1-2-3", "a-b"] {
        let response = get("", Some(bad)).await.unwrap();
        assert_problem(response, 400, "invalid_last_event_id").await;
    }
    assert_eq!(
        app.hub.client_count(),
        0,
        "no refused client was registered"
    );
}

#[tokio::test]
async fn an_empty_last_event_id_counts_as_absent() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    // "before" has gone out live (a first client saw it) before the second connects.
    let mut first = EventStream::open(&app, "", None).await;
    app.acquire_ok("before", "agent", 60_000).await;
    assert_eq!(first.next_json().await["resource_id"], "before");
    let mut stream = EventStream::open(&app, "", Some("")).await;
    app.acquire_ok("after", "agent", 60_000).await;
    assert_eq!(stream.next_json().await["resource_id"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_then_goes_live_with_no_gap_and_no_duplicate() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let mut first = EventStream::open(&app, "", None).await;
    app.acquire_ok("r0", "agent", 60_000).await;
    let seen_before = first.next_json().await["id"].as_str().unwrap().to_owned();
    drop(first);

    // Events keep coming while the client reconnects: the seam falls among them.
    let producer = {
        let (client, base) = (app.client.clone(), app.base.clone());
        tokio::spawn(async move {
            for n in 1..=60 {
                let response = client
                    .post(format!("{base}/locks/r{n}"))
                    .json(&json!({"agent_id": "agent", "ttl_ms": 60_000}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        })
    };
    // Let some events land before the reconnection.
    eventually(
        Duration::from_secs(10),
        "some events to be missed",
        || async { stream_events(&redis, &app).await.len() >= 10 },
    )
    .await;
    let mut resumed = EventStream::open(&app, "", Some(&seen_before)).await;
    producer.await.unwrap();

    let mut received = Vec::new();
    while received.len() < 60 {
        received.push(
            resumed.next_json().await["resource_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let expected: Vec<String> = (1..=60).map(|n| format!("r{n}")).collect();
    assert_eq!(
        received, expected,
        "every event after the resume point, once, in order"
    );
    assert!(
        resumed
            .next_within(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_resume_older_than_the_history_starts_with_one_gap_event() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.history = 1;
    let app = TestApp::spawn_with(settings).await;
    let mut first = EventStream::open(&app, "", None).await;
    app.acquire_ok("r0", "agent", 60_000).await;
    let old = first.next_json().await["id"].as_str().unwrap().to_owned();
    drop(first);
    // MAXLEN ~ trims whole stream nodes (100 entries each), so emit enough to drop one.
    for n in 1..=250 {
        app.acquire_ok(&format!("r{n}"), "agent", 60_000).await;
    }
    let kept = stream_events(&redis, &app).await;
    assert!(
        kept.len() < 250,
        "the stream was trimmed ({} kept)",
        kept.len()
    );

    let mut resumed = EventStream::open(&app, "types=resource.locked", Some(&old)).await;

    let gap = resumed.next().await;
    assert_eq!(gap.event, "stream.gap");
    assert_eq!(gap.id, "", "the gap event has no id");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["type"], "stream.gap");
    assert_eq!(data["requested_id"], old.as_str());
    assert_eq!(data["oldest_id"], kept[0]["id"]);
    // Then everything the stream still holds, from the oldest on.
    for event in &kept {
        assert_eq!(resumed.next_json().await["id"], event["id"]);
    }
}

#[tokio::test]
async fn a_resume_within_the_history_has_no_gap_event() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let grant = app.acquire_ok("a", "agent", 60_000).await;
    app.release("a", grant["token"].as_str().unwrap()).await;
    let events = stream_events(&redis, &app).await;

    let mut resumed = EventStream::open(&app, "", Some(events[0]["id"].as_str().unwrap())).await;

    let next = resumed.next_json().await;
    assert_eq!(next["id"], events[1]["id"]);
    assert_eq!(next["type"], "resource.unlocked");
    // Resuming from the very start ("0-0") replays everything, gap-free as well.
    let mut from_start = EventStream::open(&app, "", Some("0-0")).await;
    assert_eq!(from_start.next_json().await["id"], events[0]["id"]);
}

#[tokio::test]
async fn an_expired_lease_is_announced_exactly_once_with_two_instances() {
    let redis = RedisServer::start().await;
    let (a, b) = two_instances(&redis).await;
    let mut stream = EventStream::open(&a, "types=resource.unlocked", None).await;

    let mut grants = Vec::new();
    for n in 0..20 {
        let app = if n % 2 == 0 { &a } else { &b };
        grants.push(app.acquire_ok(&format!("lease-{n}"), "agent", 200).await);
    }

    let mut announced = Vec::new();
    for _ in 0..20 {
        let event = stream.next_json().await;
        assert_eq!(event["reason"], "expired");
        let resource = event["resource_id"].as_str().unwrap().to_owned();
        let n: usize = resource.trim_start_matches("lease-").parse().unwrap();
        assert_eq!(
            event["at"], grants[n]["expires_at"],
            "an expiry happens at the lease's end"
        );
        assert_eq!(event["fencing_token"], grants[n]["fencing_token"]);
        // Announced within a second of the lease's end, by Redis's clock.
        let announced_ms = id_key(event["id"].as_str().unwrap()).0;
        let expires = parse_rfc3339_ms(grants[n]["expires_at"].as_str().unwrap());
        assert!(
            announced_ms >= expires && announced_ms - expires < 1000,
            "announced {} ms after the lease ended",
            announced_ms as i64 - expires as i64
        );
        announced.push(resource);
    }
    announced.sort();
    announced.dedup();
    assert_eq!(announced.len(), 20, "each lease announced once");

    // Both reapers keep running; give them several rounds to (wrongly) announce again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let unlocked = stream_events(&redis, &a)
        .await
        .into_iter()
        .filter(|event| event["type"] == "resource.unlocked")
        .count();
    assert_eq!(unlocked, 20);
    assert!(
        stream
            .next_within(Duration::from_millis(100))
            .await
            .is_none()
    );
}

/// Unix milliseconds of `2026-11-26T13:40:00.123Z` (days-from-civil, for the tests).
fn parse_rfc3339_ms(text: &str) -> u64 {
    let number = |range: std::ops::Range<usize>| -> i64 { text[range].parse().unwrap() };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second, milli) = (
        number(11..13),
        number(14..16),
        number(17..19),
        number(20..23),
    );
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli).unwrap()
}

#[tokio::test]
async fn an_unreaped_expiry_is_announced_before_the_next_grant() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    let mut stream = EventStream::open(&app, "resource_id=r", None).await;
    app.acquire_ok("r", "first", 50).await;
    assert_eq!(stream.next_json().await["type"], "resource.locked");

    // Whoever gets there first, reaper or acquire, the expiry comes before the new lock.
    let response = app
        .acquire("r", json!({"agent_id": "second", "wait_ms": 5000}))
        .await;
    assert_eq!(response.status(), 201);

    let unlocked = stream.next_json().await;
    assert_eq!(unlocked["type"], "resource.unlocked");
    assert_eq!(unlocked["agent_id"], "first");
    assert_eq!(unlocked["reason"], "expired");
    let locked = stream.next_json().await;
    assert_eq!(locked["type"], "resource.locked");
    assert_eq!(locked["agent_id"], "second");
}

#[tokio::test]
async fn idle_streams_get_keepalive_comments_and_a_retry_hint() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.keepalive_ms = 100;
    settings.events.retry_ms = 1500;
    let app = TestApp::spawn_with(settings).await;
    let mut response = app
        .client
        .get(format!("{}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");

    let mut text = String::new();
    while text.matches(":\n\n").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("a keep-alive in time")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("retry: 1500\n\n"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_while_a_healthy_one_receives_everything() {
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 250;
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.client_buffer = 256;
    let app = TestApp::spawn_with(settings).await;
    let channel = format!("{}events", app.settings.redis.key_prefix);

    // The stalled client: asks for the stream, reads the headers, then never reads again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.addr).await.unwrap();
    stalled
        .write_all(b"GET /events HTTP/1.1\r\nHost: lockd\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    let mut healthy = EventStream::open(&app, "", None).await;
    assert_eq!(app.hub.client_count(), 2);

    // Large events, published the way lockd's scripts publish them, in paced batches so
    // that only the stalled client falls behind.
    let mut conn = redis.connection().await;
    let padding = "x".repeat(400);
    let base_ms = 4_000_000_000_000u64;
    for batch in 0..BATCHES {
        let mut pipe = redis::pipe();
        for n in 0..PER_BATCH {
            let seq = batch * PER_BATCH + n;
            let body = json!({
                "type": "resource.locked",
                "resource_id": format!("{padding}{seq}"), "agent_id": "load",
                "fencing_token": seq, "at": "2096-10-02T07:06:40.000Z",
                "expires_at": "2096-10-02T07:07:10.000Z"
            })
            .to_string();
            let event = format!("{{\"id\":\"{base_ms}-{seq}\",{}", &body[1..]);
            pipe.publish(&channel, event).ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        for n in 0..PER_BATCH {
            let event = healthy.next().await;
            assert_eq!(event.id, format!("{base_ms}-{}", batch * PER_BATCH + n));
        }
    }

    assert_eq!(app.hub.client_count(), 1, "only the healthy client is left");
    // The stalled client's connection was closed: draining it reaches the end.
    let mut sink = Vec::new();
    let drained =
        tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut sink)).await;
    assert!(
        drained.is_ok(),
        "the stalled connection was closed by the server"
    );
    let total: usize = BATCHES * PER_BATCH * 500;
    assert!(
        sink.len() < total,
        "the stalled client did not get everything ({} bytes)",
        sink.len()
    );
    let _: Option<String> = conn.get("nothing").await.unwrap();
}

#[tokio::test]
async fn clients_miss_nothing_when_the_subscription_drops() {
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ])
    .await;
    let app = TestApp::spawn(&redis).await;
    let mut stream = EventStream::open(&app, "", None).await;
    let mut conn = redis.connection().await;
    crate::helpers::until_subscribed(&redis, &app).await;

    // Cut lockd's subscription and change locks before it can subscribe again: those
    // events reach the client through the gap fill from the stream.
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    for n in 0..5 {
        app.acquire_ok(&format!("during-{n}"), "agent", 60_000)
            .await;
    }
    for n in 0..5 {
        assert_eq!(
            stream.next_json().await["resource_id"],
            format!("during-{n}")
        );
    }

    // A whole Redis restart (with its data kept on disk) under the open stream.
    redis.restart().await;
    app.until_serving().await;
    for n in 0..5 {
        app.acquire_ok(&format!("after-{n}"), "agent", 60_000).await;
    }
    for n in 0..5 {
        assert_eq!(
            stream.next_json().await["resource_id"],
            format!("after-{n}")
        );
    }
    assert!(
        stream
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "no duplicates"
    );
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_the_process_exits_0() {
    let redis = RedisServer::start().await;
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let mut lockd = crate::helpers::LockdProcess::spawn(
        &redis.url(),
        &prefix,
        &[("LOCKD_EVENTS__KEEPALIVE_MS", "100")],
    )
    .await;
    let (base, client) = (lockd.base.clone(), reqwest::Client::new());
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut response = client.get(format!("{base}/events")).send().await.unwrap();
        // The first chunk (retry:) proves the stream is open.
        response.chunk().await.unwrap().unwrap();
        streams.push(response);
    }

    let status = lockd.terminate(Duration::from_secs(5)).await;

    for mut response in streams {
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = response.chunk().await {}
        })
        .await;
        assert!(ended.is_ok(), "the stream ended at shutdown");
    }
    assert!(status.success(), "lockd exited with {status}");
}

#[tokio::test]
async fn waiters_are_woken_by_expiry_events_from_another_instance() {
    let redis = RedisServer::start().await;
    let (a, b) = two_instances(&redis).await;
    let grant = a.acquire_ok("r", "agent-a", 300).await;
    let response = b
        .acquire("r", json!({"agent_id": "agent-b", "wait_ms": 5000}))
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(body["fencing_token"].as_u64() > grant["fencing_token"].as_u64());
}

#[tokio::test]
async fn a_resume_from_the_start_of_a_trimmed_history_is_told_of_the_gap() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.history = 1;
    let app = TestApp::spawn_with(settings).await;
    for n in 0..250 {
        app.acquire_ok(&format!("r{n}"), "agent", 60_000).await;
    }
    let kept = stream_events(&redis, &app).await;
    assert!(kept.len() < 250, "the stream was trimmed");

    let mut resumed = EventStream::open(&app, "", Some("0-0")).await;
    let gap = resumed.next().await;
    assert_eq!(gap.event, "stream.gap");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["requested_id"], "0-0");
    assert_eq!(data["oldest_id"], kept[0]["id"]);
    assert_eq!(resumed.next_json().await["id"], kept[0]["id"]);
}

/// With several partitions an event id holds `0` for each partition the client has not
/// reached; a partition trimmed past that while the client was away is a gap too.
#[tokio::test]
async fn a_partitioned_resume_is_told_of_a_partition_trimmed_past_it() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.history = 1;
    settings.redis.partitions = 3;
    let app = TestApp::spawn_with(settings).await;
    let partition = |id: &str| lockd::store::partition_of(id, 3);
    crate::helpers::until_subscribed(&redis, &app).await;
    let mut live = EventStream::open(&app, "", None).await;
    app.acquire_ok("first", "agent", 60_000).await;
    let cursor = live.next().await.id;
    drop(live);
    let other = (partition("first") + 1) % 3;
    let elsewhere: Vec<String> = (0..)
        .map(|n| format!("r{n}"))
        .filter(|id| partition(id) == other)
        .take(250)
        .collect();
    for id in &elsewhere {
        app.acquire_ok(id, "agent", 60_000).await;
    }

    let mut resumed = EventStream::open(&app, "", Some(&cursor)).await;
    let gap = resumed.next().await;
    assert_eq!(gap.event, "stream.gap", "resuming from {cursor}");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["requested_id"], cursor.as_str());
    assert_eq!(data["oldest_id"], Value::Null);
    // Then what the trimmed partition still holds.
    let next = resumed.next_json().await;
    assert_eq!(partition(next["resource_id"].as_str().unwrap()), other);
}

/// A partitioned deployment's own OpenAPI document describes its cursor ids, so that a
/// client generated from it accepts them; the committed document describes one partition.
#[tokio::test]
async fn a_partitioned_deployment_serves_the_pattern_of_its_own_event_ids() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.redis.partitions = 3;
    let app = TestApp::spawn_with(settings).await;
    let served: Value = app.get("/openapi.json").await.json().await.unwrap();
    let committed: Value = serde_json::from_str(&lockd::openapi::document_json()).unwrap();
    let id_pattern = |document: &Value| {
        document["components"]["schemas"]["LockEvent"]["properties"]["id"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let header_pattern = |document: &Value| {
        document["paths"]["/events"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "Last-Event-ID")
            .unwrap()["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id_pattern(&committed), "^[0-9]{1,19}-[0-9]{1,19}$");
    assert_eq!(
        id_pattern(&served),
        "^(([0-9]{1,19}-[0-9]{1,19})|0)(\\.(([0-9]{1,19}-[0-9]{1,19})|0)){2}$"
    );
    assert!(
        header_pattern(&served).contains("){2})$"),
        "{}",
        header_pattern(&served)
    );
    // Nothing else differs.
    let mut normalised = served.clone();
    normalised["components"]["schemas"]["LockEvent"]["properties"]["id"]["pattern"] =
        committed["components"]["schemas"]["LockEvent"]["properties"]["id"]["pattern"].clone();
    normalised["components"]["schemas"]["EventFrame"]["properties"]["id"]["pattern"] =
        committed["components"]["schemas"]["EventFrame"]["properties"]["id"]["pattern"].clone();
    for parameter in normalised["paths"]["/events"]["get"]["parameters"]
        .as_array_mut()
        .unwrap()
    {
        if parameter["name"] == "Last-Event-ID" {
            parameter["schema"]["pattern"] = header_pattern(&committed).into();
        }
    }
    assert_eq!(normalised, committed);
}
