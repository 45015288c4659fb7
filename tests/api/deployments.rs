//! The same lock, event and listing behaviour on every deployment lockd supports: one
//! Redis (with one partition and with several), a primary watched by Sentinels, and a
//! three-primary Redis Cluster; plus what only a cluster can do to lockd: lose a node
//! and get it back. All real `redis-server` processes on loopback ports.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use lockd::config::RedisMode;
use serde_json::{Value, json};

use crate::helpers::{
    EventStream, RedisServer, TestApp, assert_problem, eventually, test_settings,
};
use crate::topologies::{primary_and_replica, watched_by_sentinels};

/// A Redis Cluster of primaries without replicas, each node killed on drop.
pub struct RedisCluster {
    /// The nodes, in the order they were created.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`, slots split evenly. Each keeps an append-only file
    /// synced on every write, so a node killed and restarted comes back with its data.
    pub async fn start(primaries: usize) -> Self {
        Self::start_with_replicas(primaries, 0).await
    }

    /// As [`start`](Self::start), with `replicas` replicas of each primary; the first
    /// `primaries` nodes are the primaries.
    pub async fn start_with_replicas(primaries: usize, replicas: usize) -> Self {
        Self::start_with(primaries, replicas, |_| Vec::new()).await
    }

    /// As [`start_with_replicas`](Self::start_with_replicas), node `n` with the extra
    /// `redis-server` arguments `extra(n)`.
    pub async fn start_with(
        primaries: usize,
        replicas: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Self {
        let mut nodes = Vec::new();
        for index in 0..primaries * (1 + replicas) {
            let extra = extra(index);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            nodes.push(
                RedisServer::start_with(
                    &[
                        &extra[..],
                        &[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--cluster-node-timeout",
                            "1000",
                            // A replica may take over however long it has been cut off.
                            "--cluster-replica-validity-factor",
                            "0",
                            "--save",
                            "",
                            "--appendonly",
                            "yes",
                            "--appendfsync",
                            "always",
                        ],
                    ]
                    .concat(),
                )
                .await,
            );
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs (is it on PATH?)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.until_healthy().await;
        cluster
    }

    /// The nodes' URLs, as `redis.nodes` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every node reports the cluster healthy, all slots served, and every
    /// replica has caught up with its primary.
    pub async fn until_healthy(&self) {
        eventually(
            Duration::from_secs(20),
            "the cluster to be healthy",
            || async {
                for node in &self.nodes {
                    let mut conn = node.connection().await;
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if !(info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len())))
                    {
                        return false;
                    }
                    let replication: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    if replication.contains("role:slave")
                        && !replication.contains("master_link_status:up")
                    {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// How many keys under `prefix` each node holds.
    pub async fn keys_per_node(&self, prefix: &str) -> Vec<usize> {
        let mut counts = Vec::new();
        for node in &self.nodes {
            let mut conn = node.connection().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            counts.push(keys.len());
        }
        counts
    }
}

/// Settings for an app on `cluster`.
fn cluster_settings(cluster: &RedisCluster) -> lockd::Settings {
    let mut settings = test_settings(&cluster.nodes[0]);
    settings.redis.mode = RedisMode::Cluster;
    settings.redis.nodes = cluster.urls();
    settings
}

/// Waits until `app` is ready: Redis answers and its event subscription is live.
async fn until_ready(app: &TestApp) {
    app.until_ready(Duration::from_secs(20)).await;
}

/// Every held lock, paging with `limit`.
async fn list_all(app: &TestApp, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let query = match &cursor {
            Some(cursor) => format!("limit={limit}&cursor={cursor}"),
            None => format!("limit={limit}"),
        };
        let page = crate::listing::list(app, &query).await;
        let locks = page["locks"].as_array().unwrap();
        assert!(locks.len() <= limit, "a page holds at most limit locks");
        seen.extend(
            locks
                .iter()
                .map(|lock| lock["resource_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
    }
    panic!("paging did not end");
}

/// An event as compared across streams: its ids differ between a live stream and a
/// replay (each is the client's own position), what happened does not.
fn what(event: &Value) -> (String, String, u64) {
    (
        event["type"].as_str().unwrap().to_owned(),
        event["resource_id"].as_str().unwrap().to_owned(),
        event["fencing_token"].as_u64().unwrap(),
    )
}

/// Reads `count` events, checking that each SSE `id:` is the `id` in its data.
async fn read_events(stream: &mut EventStream, count: usize) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for _ in 0..count {
        let event = stream.next().await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["id"], event.id, "the SSE id is the event's id");
        assert_eq!(data["type"], event.event);
        events.push((event.id, data));
    }
    events
}

/// The contract, exercised the same way whatever Redis is behind `app`: locks on many
/// resources (spread over every partition), one live event stream that sees each
/// resource's events in order, a resume from the middle that misses nothing and
/// repeats nothing, listing in id order across pages, expiry and a woken waiter.
async fn the_contract_holds(app: &TestApp) {
    until_ready(app).await;
    let mut live = EventStream::open(app, "prefix=c-", None).await;
    let resources: Vec<String> = (0..24).map(|n| format!("c-{n:02}")).collect();
    let mut tokens = BTreeMap::new();
    for id in &resources {
        let grant = app.acquire_ok(id, "agent-a", 60_000).await;
        let status = app.status(id).await;
        assert_eq!(status["agent_id"], "agent-a");
        assert_eq!(status["fencing_token"], grant["fencing_token"]);
        let taken = app
            .acquire(id, json!({"agent_id": "agent-b", "ttl_ms": 1000}))
            .await;
        assert_problem(taken, 409, "lock_held").await;
        let token = grant["token"].as_str().unwrap().to_owned();
        let refreshed = app
            .refresh(id, &token, Some(json!({"ttl_ms": 120_000})))
            .await;
        assert_eq!(refreshed.status(), 200);
        tokens.insert(id.clone(), token);
    }
    assert_eq!(list_all(app, 5).await, resources, "listing, 5 per page");
    assert_eq!(list_all(app, 100).await, resources, "listing, one page");
    for id in resources.iter().step_by(2) {
        assert_eq!(app.release(id, &tokens[id]).await.status(), 204);
    }
    let kept: Vec<String> = resources.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(
        list_all(app, 7).await,
        kept,
        "released locks leave the listing"
    );

    // 24 locked, 24 refreshed, 12 unlocked; per resource in that order.
    let seen = read_events(&mut live, 60).await;
    let mut per_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, data) in &seen {
        per_resource
            .entry(data["resource_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(data["type"].as_str().unwrap().to_owned());
    }
    for (n, id) in resources.iter().enumerate() {
        let mut expected = vec!["resource.locked", "resource.refreshed"];
        if n % 2 == 0 {
            expected.push("resource.unlocked");
        }
        assert_eq!(per_resource[id], expected, "the events of {id}, in order");
    }

    // A client that got the first 30 events and reconnects gets exactly the other 30,
    // then what happens next, live.
    let (resume_from, _) = &seen[29];
    let mut resumed = EventStream::open(app, "prefix=c-", Some(resume_from)).await;
    let replayed: BTreeSet<_> = read_events(&mut resumed, 30)
        .await
        .iter()
        .map(|(_, data)| what(data))
        .collect();
    let expected: BTreeSet<_> = seen[30..].iter().map(|(_, data)| what(data)).collect();
    assert_eq!(
        replayed, expected,
        "the resume misses nothing and repeats nothing"
    );
    let id = &kept[0];
    assert_eq!(app.release(id, &tokens[id]).await.status(), 204);
    let (_, next) = &read_events(&mut resumed, 1).await[0];
    assert_eq!(what(next).1, *id, "then live events");
    assert_eq!(next["reason"], "released");
    let (_, also) = &read_events(&mut live, 1).await[0];
    assert_eq!(what(also), what(next));

    // A lease that runs out is announced once; a waiter gets the lock when it is released.
    app.acquire_ok("c-expiring", "agent-a", 200).await;
    let mut expired = None;
    for (_, data) in read_events(&mut live, 2).await {
        if data["type"] == "resource.unlocked" {
            expired = Some(data);
        }
    }
    let expired = expired.expect("the expiry was announced");
    assert_eq!(expired["resource_id"], "c-expiring");
    assert_eq!(expired["reason"], "expired");
    let id = &kept[1];
    let waiter = app
        .spawn_waiter(id, json!({"agent_id": "agent-w", "wait_ms": 10_000}))
        .await;
    assert_eq!(app.release(id, &tokens[id]).await.status(), 204);
    assert_eq!(waiter.await.unwrap().status(), 201);
    assert_eq!(app.status(id).await["agent_id"], "agent-w");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_one_redis() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn(&redis).await;
    the_contract_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_one_redis_with_partitions() {
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.redis.partitions = 5;
    let app = TestApp::spawn_with(settings).await;
    the_contract_holds(&app).await;
    // The resources spread over every partition's keys.
    let keys = crate::helpers::dump_keys(&redis, &app.settings.redis.key_prefix).await;
    for partition in 0..5 {
        assert!(
            keys.contains(&format!("{{{partition}}}:held")),
            "partition {partition} holds locks:\n{keys}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_behind_sentinels() {
    let (primary, _replica) = primary_and_replica().await;
    let (_sentinels, settings) = watched_by_sentinels(&primary).await;
    let app = TestApp::spawn_with(settings).await;
    the_contract_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_a_cluster_with_locks_on_every_node() {
    let cluster = RedisCluster::start(3).await;
    let app = TestApp::spawn_with(cluster_settings(&cluster)).await;
    the_contract_holds(&app).await;
    let keys = cluster.keys_per_node(&app.settings.redis.key_prefix).await;
    assert!(
        keys.iter().all(|&count| count > 0),
        "every primary holds some of the locks and events: {keys:?}"
    );
}

/// Which node of `cluster` holds `key` (the others answer it with a redirection).
async fn owner_of(cluster: &RedisCluster, key: &str) -> usize {
    for (index, node) in cluster.nodes.iter().enumerate() {
        let mut conn = node.connection().await;
        let exists: redis::RedisResult<u64> =
            redis::cmd("EXISTS").arg(key).query_async(&mut conn).await;
        if exists == Ok(1) {
            return index;
        }
    }
    panic!("no node holds {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_restart_is_survived() {
    let mut cluster = RedisCluster::start(3).await;
    let app = TestApp::spawn_with(cluster_settings(&cluster)).await;
    until_ready(&app).await;
    let mut live = EventStream::open(&app, "prefix=n-", None).await;
    let resources: Vec<String> = (0..12).map(|n| format!("n-{n:02}")).collect();
    let mut grants = BTreeMap::new();
    for id in &resources {
        grants.insert(id.clone(), app.acquire_ok(id, "agent-a", 120_000).await);
    }
    assert_eq!(read_events(&mut live, 12).await.len(), 12);
    let prefix = &app.settings.redis.key_prefix;
    let mut on_victim = Vec::new();
    let mut elsewhere = Vec::new();
    for id in &resources {
        let partition = lockd::store::partition_of(id, app.settings.redis.partition_count());
        let key = format!("{prefix}{{{partition}}}:lock:{id}");
        if owner_of(&cluster, &key).await == 1 {
            on_victim.push(id.clone());
        } else {
            elsewhere.push(id.clone());
        }
    }
    assert!(
        !on_victim.is_empty() && !elsewhere.is_empty(),
        "the locks spread over the nodes"
    );

    cluster.nodes[1].kill();
    let killed = Instant::now();
    // While the node is down its locks cannot be served: 503, never a wrong answer.
    let response = app
        .acquire(&on_victim[0], json!({"agent_id": "agent-b"}))
        .await;
    assert_problem(response, 503, "store_unavailable").await;
    cluster.nodes[1].restart().await;
    cluster.until_healthy().await;

    // Its locks came back with it (the node's append-only file), and lockd serves them
    // again without a restart of its own.
    let victim = &on_victim[0];
    eventually(
        Duration::from_secs(20),
        "lockd to serve the node's locks",
        || async {
            let response = app.client.get(app.lock_url(victim)).send().await.unwrap();
            response.status() == 200
                && response.json::<Value>().await.unwrap()["agent_id"] == "agent-a"
        },
    )
    .await;
    eprintln!(
        "cluster node restart: lockd served its locks again {:?} after the kill",
        killed.elapsed()
    );
    let taken = app
        .acquire(victim, json!({"agent_id": "agent-b", "ttl_ms": 1000}))
        .await;
    assert_problem(taken, 409, "lock_held").await;

    // The event subscription came back too: releases on every node reach the same
    // client, after what it had, once each.
    until_ready(&app).await;
    for id in [victim, &elsewhere[0]] {
        let token = grants[id]["token"].as_str().unwrap();
        assert_eq!(app.release(id, token).await.status(), 204);
    }
    let after: BTreeSet<_> = read_events(&mut live, 2)
        .await
        .iter()
        .map(|(_, data)| what(data))
        .collect();
    let expected: BTreeSet<_> = [victim, &elsewhere[0]]
        .into_iter()
        .map(|id| {
            let fence = grants[id]["fencing_token"].as_u64().unwrap();
            ("resource.unlocked".to_owned(), id.clone(), fence)
        })
        .collect();
    assert_eq!(after, expected);
    let regrant = app.acquire_ok(victim, "agent-b", 60_000).await;
    assert!(
        regrant["fencing_token"].as_u64() > grants[victim]["fencing_token"].as_u64(),
        "fences keep increasing on the restarted node"
    );
    let (_, locked) = &read_events(&mut live, 1).await[0];
    assert_eq!(what(locked).1, *victim);
}

/// One worker of the failover load: acquires and releases `resource` in a loop, retrying
/// each step through 503s (an acquire with one Idempotency-Key, so that a grant whose
/// answer was lost is handed back rather than refused), and records every fence granted.
async fn acquire_release_loop(
    app: &TestApp,
    resource: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<(Instant, u64)> {
    let mut fences = Vec::new();
    for round in 0.. {
        if *stop.borrow() {
            break;
        }
        let key = format!("{resource}-{round}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let grant: Value = loop {
            let response = app
                .client
                .post(app.lock_url(resource))
                .header("Idempotency-Key", &key)
                .json(&json!({"agent_id": "worker", "ttl_ms": 5_000}))
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                200 | 201 => break response.json().await.unwrap(),
                503 => {}
                other => panic!("acquire of {resource} answered {other}"),
            }
            assert!(
                Instant::now() < deadline,
                "{resource}: no grant within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        fences.push((Instant::now(), grant["fencing_token"].as_u64().unwrap()));
        let token = grant["token"].as_str().unwrap();
        loop {
            match app.release(resource, token).await.status().as_u16() {
                // 404: a grant the failover lost, or a release that went through
                // although its answer did not.
                204 | 404 => break,
                503 => {}
                other => panic!("release of {resource} answered {other}"),
            }
            assert!(
                Instant::now() < deadline,
                "{resource}: no release within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fences
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_failover_under_load_keeps_fences_increasing() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1).await;
    let app = TestApp::spawn_with(cluster_settings(&cluster)).await;
    until_ready(&app).await;
    let resources: Vec<String> = (0..6).map(|n| format!("f-{n}")).collect();
    let prefix = app.settings.redis.key_prefix.clone();
    let partitions = app.settings.redis.partition_count();
    let probe = app.acquire_ok(&resources[0], "probe", 60_000).await;
    let partition = lockd::store::partition_of(&resources[0], partitions);
    let victim = owner_of(&cluster, &format!("{prefix}{{{partition}}}:lock:f-0")).await;
    app.release(&resources[0], probe["token"].as_str().unwrap())
        .await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = resources
        .iter()
        .map(|resource| {
            let (app, resource, stopped) = (&app, resource.clone(), stopped.clone());
            async move { acquire_release_loop(app, &resource, &stopped).await }
        })
        .collect();
    let run = futures_util::future::join_all(workers);
    let kill_and_stop = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.nodes[victim].kill();
        let killed = Instant::now();
        // Long enough for the replica to be promoted and every worker to be granted again.
        eventually(
            Duration::from_secs(30),
            "a grant after the failover",
            || async {
                app.client
                    .get(app.lock_url(&resources[0]))
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == 200)
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(true).unwrap();
        killed
    };
    let (histories, killed) = tokio::join!(run, kill_and_stop);

    let mut downtime = Duration::ZERO;
    for (resource, history) in resources.iter().zip(&histories) {
        assert!(
            history.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "{resource}: fences increase across the failover: {history:?}"
        );
        let before = history.iter().filter(|(at, _)| *at < killed).count();
        assert!(
            before > 0 && history.len() > before,
            "{resource}: granted before and after"
        );
        if let Some((at, _)) = history.get(before) {
            downtime = downtime.max(at.duration_since(killed));
        }
    }
    // The event subscription moved to the promoted replica too.
    until_ready(&app).await;
    let mut events = EventStream::open(&app, "resource_id=f-0", None).await;
    let grant = app.acquire_ok("f-0", "agent-after", 60_000).await;
    let (_, locked) = &read_events(&mut events, 1).await[0];
    assert_eq!(locked["agent_id"], "agent-after");
    assert_eq!(locked["fencing_token"], grant["fencing_token"]);

    let grants: usize = histories.iter().map(Vec::len).sum();
    eprintln!(
        "cluster failover: {grants} grants over {} resources; every resource granted again \
         within {downtime:?} of the primary's death",
        resources.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_redis_acl_is_all_lockd_needs_on_a_cluster() {
    let acl = concat!(env!("CARGO_MANIFEST_DIR"), "/config/redis-users.acl");
    let cluster = RedisCluster::start_with(3, 0, |_| vec!["--aclfile".into(), acl.into()]).await;
    let mut settings = cluster_settings(&cluster);
    settings.redis.nodes = cluster
        .nodes
        .iter()
        .map(|node| format!("redis://lockd:change-me@127.0.0.1:{}", node.port()))
        .collect();
    settings.redis.key_prefix = "lockd:".into();
    let app = TestApp::spawn_with(settings).await;
    the_contract_holds(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_grants_wait_for_a_replica_of_every_primary() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1).await;
    let mut settings = cluster_settings(&cluster);
    settings.redis.min_replicas_ack = 1;
    settings.redis.replica_ack_timeout_ms = 200;
    let app = TestApp::spawn_with(settings).await;
    until_ready(&app).await;
    for n in 0..6 {
        app.acquire_ok(&format!("w-{n}"), "agent-a", 60_000).await;
    }
    // The last three nodes are the replicas; with one gone, its primary cannot have a
    // grant acknowledged, and WAIT counts the least any primary's replicas acknowledged.
    cluster.nodes[5].kill();
    let response = app.acquire("w-late", json!({"agent_id": "agent-a"})).await;
    assert_problem(response, 503, "replica_ack_timeout").await;
    assert_eq!(
        app.status("w-late").await["locked"],
        false,
        "the unacknowledged grant was withdrawn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockd_reaches_a_cluster_over_tls() {
    let dir = std::env::temp_dir().join(format!("lockd-tls-cluster-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    crate::access::make_certificates(&dir);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let tls_ports: Vec<u16> = (0..3).map(|_| crate::helpers::free_port()).collect();
    // Each node also keeps a plain port, for redis-cli and the harness; lockd uses TLS
    // only, and the nodes announce their TLS ports to TLS clients.
    let cluster = RedisCluster::start_with(3, 0, |index| {
        let mut args = crate::access::tls_server_args(&dir, tls_ports[index]);
        args.extend(["--tls-cluster".into(), "yes".into()]);
        args
    })
    .await;
    let mut settings = cluster_settings(&cluster);
    settings.redis.nodes = vec![format!("rediss://127.0.0.1:{}", tls_ports[0])];
    settings.redis.tls_ca_file = path("ca.crt");
    let app = TestApp::spawn_with(settings.clone()).await;
    the_contract_holds(&app).await;

    // Without the private CA, no node's certificate is trusted and nothing is served.
    settings.redis.tls_ca_file = String::new();
    let untrusting = TestApp::spawn_with(settings).await;
    assert_problem(untrusting.readyz().await, 503, "store_unavailable").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_node_stops_only_its_own_partitions() {
    // Without full coverage required, the rest of the cluster serves while a node is out.
    let cluster = RedisCluster::start_with(3, 0, |_| {
        vec!["--cluster-require-full-coverage".into(), "no".into()]
    })
    .await;
    let app = TestApp::spawn_with(cluster_settings(&cluster)).await;
    until_ready(&app).await;
    let prefix = app.settings.redis.key_prefix.clone();
    let partitions = app.settings.redis.partition_count();
    let mut frozen_side = None;
    let mut healthy = Vec::new();
    for n in 0..12 {
        let id = format!("z-{n}");
        app.acquire_ok(&id, "agent-a", 120_000).await;
        let partition = lockd::store::partition_of(&id, partitions);
        match owner_of(&cluster, &format!("{prefix}{{{partition}}}:lock:{id}")).await {
            1 => frozen_side = Some(id),
            _ => healthy.push(id),
        }
    }
    let frozen_side = frozen_side.expect("a lock on node 1");

    cluster.nodes[1].pause();
    let response = app
        .client
        .get(app.lock_url(&frozen_side))
        .send()
        .await
        .unwrap();
    assert_problem(response, 503, "store_unavailable").await;
    // For three seconds (long past the node timeout, and past the reaper's attempts on
    // the frozen partitions), every lock elsewhere is served.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for id in &healthy {
            let status = app.status(id).await;
            assert_eq!(status["agent_id"], "agent-a", "{id} while node 1 is frozen");
            served += 1;
        }
        let response = app
            .acquire(&healthy[0], json!({"agent_id": "agent-b", "ttl_ms": 1000}))
            .await;
        assert_problem(response, 409, "lock_held").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{served} status reads served on the healthy nodes while node 1 was frozen");
    // An instance that starts while the node is frozen serves the others too, once its
    // connections have given up on the frozen node: even when that takes as long as a
    // request may (the defaults are 1 s for both).
    let mut settings = app.settings.clone();
    settings.redis.connect_timeout_ms = settings.redis.command_timeout_ms;
    let late = TestApp::spawn_with(settings).await;
    let opened = Instant::now();
    // Each partition's connection opens on its first use, in the background.
    eventually(
        Duration::from_secs(10),
        "the new instance to serve every healthy partition",
        || async {
            for id in &healthy {
                let response = late.client.get(late.lock_url(id)).send().await.unwrap();
                if response.status() != 200 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!(
        "a new instance served every healthy partition {:?} after it started",
        opened.elapsed()
    );
    for id in &healthy {
        assert_eq!(
            late.status(id).await["agent_id"],
            "agent-a",
            "{id} from the new instance"
        );
    }
    cluster.nodes[1].resume();
    eventually(
        Duration::from_secs(20),
        "node 1's locks to be served again",
        || async {
            let response = app
                .client
                .get(app.lock_url(&frozen_side))
                .send()
                .await
                .unwrap();
            response.status() == 200
        },
    )
    .await;
    until_ready(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_disagree_on_partitions_refuse_to_serve_the_same_keyspace() {
    let redis = RedisServer::start().await;
    let first = TestApp::spawn(&redis).await;
    let grant = first.acquire_ok("shared", "agent-a", 60_000).await;
    let mut settings = first.settings.clone();
    settings.redis.partitions = 4;
    let second = TestApp::spawn_with(settings).await;

    // It would look for "shared" under another partition's keys and grant it again.
    let response = second
        .acquire("shared", json!({"agent_id": "agent-b"}))
        .await;
    let problem = assert_problem(response, 503, "store_unavailable").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("redis.partitions"),
        "{problem}"
    );
    assert_problem(second.readyz().await, 503, "store_unavailable").await;
    // The first instance, whose layout the keyspace records, serves on.
    let token = grant["token"].as_str().unwrap();
    assert_eq!(first.release("shared", token).await.status(), 204);
}

/// While a slot moves between nodes, a key that already moved is reached with a
/// redirection (`ASK`) that the documented user must be allowed to follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_follows_a_slot_on_the_move() {
    let acl = concat!(env!("CARGO_MANIFEST_DIR"), "/config/redis-users.acl");
    let cluster = RedisCluster::start_with(3, 0, |_| vec!["--aclfile".into(), acl.into()]).await;
    let mut settings = cluster_settings(&cluster);
    settings.redis.nodes = vec![format!(
        "redis://lockd:change-me@127.0.0.1:{}",
        cluster.nodes[0].port()
    )];
    settings.redis.key_prefix = "lockd:".into();
    let app = TestApp::spawn_with(settings).await;
    until_ready(&app).await;

    let partition = lockd::store::partition_of("moving", app.settings.redis.partition_count());
    let key = format!("lockd:{{{partition}}}:lock:moving");
    let mut any = cluster.nodes[0].connection().await;
    let slot: u64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut any)
        .await
        .unwrap();
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for node in &cluster.nodes {
            let mut conn = node.connection().await;
            ids.push(
                redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            );
        }
        ids
    };
    let owner = {
        let mut owner = None;
        for (index, node) in cluster.nodes.iter().enumerate() {
            // Only the owner answers for the key; the others redirect.
            let mut conn = node.connection().await;
            let served = redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut conn)
                .await;
            if served.is_ok() {
                owner = Some(index);
            }
        }
        owner.expect("a node serves the slot")
    };
    let target = (owner + 1) % 3;
    let set_slot = |index: usize, state: &str, node: usize| {
        let (cluster, ids) = (&cluster, &ids);
        let state = state.to_owned();
        async move {
            let mut conn = cluster.nodes[index].connection().await;
            let () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(&state)
                .arg(&ids[node])
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    set_slot(target, "IMPORTING", owner).await;
    set_slot(owner, "MIGRATING", target).await;

    // The lock key does not exist on the old owner, so it answers ASK: the status is
    // read from the new owner.
    let status = app.status("moving").await;
    assert_eq!(status["locked"], false);
}
