//! Faults injected with real processes while contenders load lockd, every operation
//! recorded and the whole history checked (see `history.rs`): Redis frozen longer than a
//! lease, Redis crashed with `appendfsync everysec` and its last writes lost, a lockd
//! instance killed mid-request, and many contenders whose holders outlive their leases.
//!
//! Run just these with `cargo test --test api chaos:: -- --nocapture` to see the counts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    LockdProcess, RedisServer, ReplyStallingProxy, TestApp, eventually, stream_events,
    stream_events_for, test_settings,
};
use crate::history::{ABANDONED, History, Lease, Mode, Outcome, wall_ms};

/// A small deterministic generator (xorshift), so a run's choices need no extra crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How contenders behave.
#[derive(Clone)]
struct Workload {
    /// Tags agent ids, which are unique per acquire.
    tag: &'static str,
    resources: Vec<String>,
    ttl_ms: u64,
    wait_ms: u64,
    /// One grant in this many is held past its lease before it is released or refreshed.
    outlive_one_in: Option<u64>,
    /// One normal grant in this many is refreshed before it is released.
    refresh_one_in: u64,
    /// One acquire in this many hangs up after a fifth of `wait_ms` without an answer.
    abandon_one_in: Option<u64>,
    deadline: Instant,
}

/// Where a contender sends its requests: its own instance until that one is known dead.
#[derive(Clone)]
struct Targets {
    preferred: String,
    fallback: String,
    preferred_dead: Arc<AtomicBool>,
}

impl Targets {
    fn one(base: &str) -> Self {
        Self {
            preferred: base.to_owned(),
            fallback: base.to_owned(),
            preferred_dead: Arc::default(),
        }
    }

    fn base(&self) -> &str {
        if self.preferred_dead.load(Ordering::SeqCst) {
            &self.fallback
        } else {
            &self.preferred
        }
    }
}

/// What one contender did besides what the history records.
#[derive(Default, Debug)]
struct Tally {
    /// Releases and refreshes sent after the holder's lease had surely run out.
    late: usize,
}

/// One contender: acquire (waiting up to `wait_ms`), hold a little, maybe refresh, release;
/// now and then outlive the lease first. Bounded by the deadline and an operation count.
async fn contender(
    id: usize,
    history: Arc<History>,
    client: reqwest::Client,
    targets: Targets,
    work: Workload,
) -> Tally {
    let mut rng = Rng::new(id as u64 + 1);
    let mut tally = Tally::default();
    for round in 0..10_000 {
        if Instant::now() >= work.deadline {
            break;
        }
        let resource = &work.resources[rng.below(work.resources.len() as u64) as usize];
        let agent = format!("{}-{id}-{round}", work.tag);
        let base = targets.base().to_owned();
        let give_up = work
            .abandon_one_in
            .is_some_and(|n| rng.below(n) == 0)
            .then(|| Duration::from_millis(work.wait_ms / 5));
        let Some(lease) = history
            .acquire_or_give_up(
                &client,
                &base,
                resource,
                &agent,
                work.ttl_ms,
                work.wait_ms,
                give_up,
            )
            .await
        else {
            // Busy, or an unknown outcome: give the others a moment.
            tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
            continue;
        };
        if work.outlive_one_in.is_some_and(|n| rng.below(n) == 0) {
            // A holder paused past its lease (a GC pause, a suspended laptop): by the time it
            // comes back, the lease has run out by any clock on this host.
            tokio::time::sleep(Duration::from_millis(work.ttl_ms + 60)).await;
            let base = targets.base().to_owned();
            let outcome = if rng.below(2) == 0 {
                history.release(&client, &base, &lease).await
            } else {
                history.refresh(&client, &base, &lease, None).await
            };
            assert!(
                matches!(
                    outcome,
                    Outcome::NotFound | Outcome::NotOwner { .. } | Outcome::Unknown(_)
                ),
                "a stale token changed a lock: {outcome:?} for {lease:?}"
            );
            tally.late += 1;
            continue;
        }
        let mut lease: Lease = lease;
        tokio::time::sleep(Duration::from_millis(rng.below(work.ttl_ms / 4 + 1))).await;
        if rng.below(work.refresh_one_in) == 0 {
            let base = targets.base().to_owned();
            if let Outcome::Refreshed(new) = history.refresh(&client, &base, &lease, None).await {
                lease = new;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(work.ttl_ms / 8 + 1))).await;
        }
        let base = targets.base().to_owned();
        history.release(&client, &base, &lease).await;
    }
    tally
}

fn grants(history: &History) -> usize {
    history
        .ops()
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Granted(_)))
        .count()
}

async fn wait_for_grants(history: &Arc<History>, at_least: usize) {
    eventually(Duration::from_secs(10), "grants under load", || {
        let history = history.clone();
        async move { grants(&history) >= at_least }
    })
    .await;
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for task in tasks {
        total.late += task.await.expect("a contender panicked").late;
    }
    total
}

fn resources(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_longer_than_a_lease_answers_503_fast_and_grants_nothing_twice() {
    const COMMAND_TIMEOUT_MS: u64 = 300;
    const TTL_MS: u64 = 250;
    const FROZEN: Duration = Duration::from_millis(900);
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.redis.command_timeout_ms = COMMAND_TIMEOUT_MS;
    settings.events.history = 100_000;
    let a = TestApp::spawn_with(settings.clone()).await;
    let b = TestApp::spawn_with(settings).await;
    let history = Arc::new(History::new());
    let work = Workload {
        tag: "frozen",
        resources: resources("frozen", 3),
        ttl_ms: TTL_MS,
        wait_ms: 150,
        outlive_one_in: None,
        refresh_one_in: 3,
        abandon_one_in: None,
        deadline: Instant::now() + Duration::from_millis(3200),
    };
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let base = if n % 2 == 0 { &a.base } else { &b.base };
            tokio::spawn(contender(
                n,
                history.clone(),
                client(),
                Targets::one(base),
                work.clone(),
            ))
        })
        .collect();
    wait_for_grants(&history, 10).await;

    redis.pause();
    let frozen_at = Instant::now();
    // The fault itself: Redis stays frozen for longer than a lease.
    tokio::time::sleep(FROZEN).await;
    // Taken before the thaw: `kill -CONT` blocks this worker for a moment, and requests
    // that Redis answers meanwhile must not count as answered while it was frozen.
    let thawed_at = Instant::now();
    redis.resume();
    join(tasks).await;

    let ops = history.ops();
    let during: Vec<_> = ops
        .iter()
        .filter(|op| op.invoked >= frozen_at && op.completed <= thawed_at)
        .collect();
    let slowest = during
        .iter()
        .map(|op| op.completed - op.invoked)
        .max()
        .unwrap_or_default();
    for op in &during {
        assert!(
            matches!(&op.outcome, Outcome::Unknown(why) if why == "503 store_unavailable"),
            "a request while Redis was frozen got {:?}",
            op.outcome
        );
    }
    assert!(
        during.len() >= 4,
        "only {} requests ran while Redis was frozen",
        during.len()
    );
    assert!(
        slowest < Duration::from_millis(COMMAND_TIMEOUT_MS + 700),
        "a 503 took {slowest:?} with a {COMMAND_TIMEOUT_MS} ms command timeout"
    );
    let granted_after = ops
        .iter()
        .filter(|op| op.invoked >= thawed_at && matches!(op.outcome, Outcome::Granted(_)))
        .count();
    assert!(granted_after >= 3, "{granted_after} grants after the thaw");

    let counts = history.check(Mode::Strict);
    let events = history.check_events(&stream_events(&redis, &a).await);
    eprintln!(
        "chaos[redis frozen {FROZEN:?}, lease {TTL_MS} ms]: {counts:?}; {events:?}; \
         503s while frozen: {}, slowest {slowest:?}; grants after the thaw: {granted_after}",
        during.len()
    );
    assert!(counts.grants >= 15, "{counts:?}");
    assert!(counts.releases >= 5, "{counts:?}");
    assert!(counts.conflicts >= 1, "{counts:?}");
    assert!(counts.unknowns() >= 4, "{counts:?}");
}

/// Copies the files of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a snapshot dir");
    for entry in std::fs::read_dir(from).expect("the AOF dir") {
        let entry = entry.expect("an AOF file");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy an AOF file");
    }
}

fn aof_holds(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            std::fs::read(entry.path())
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
    })
}

/// Acquires until granted (Redis may still be coming back), recording every attempt.
async fn acquire_until_granted(
    history: &History,
    client: &reqwest::Client,
    base: &str,
    resource: &str,
    agent_prefix: &str,
    ttl_ms: u64,
) -> Lease {
    for attempt in 0..200 {
        let agent = format!("{agent_prefix}-{attempt}");
        if let Some(lease) = history
            .acquire(client, base, resource, &agent, ttl_ms, 1000)
            .await
        {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{resource} was never granted");
}

/// A store the lock protects, as README's "Safety" section asks: it remembers the highest
/// fencing token it accepted per resource and refuses writes with a lower one.
#[derive(Default)]
struct FencedStore {
    highest: std::collections::HashMap<String, u64>,
}

impl FencedStore {
    fn write(&mut self, resource: &str, fence: u64) -> bool {
        let highest = self.highest.entry(resource.to_owned()).or_default();
        if fence < *highest {
            return false;
        }
        *highest = fence;
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_never_go_backwards_when_redis_crashes_and_loses_its_last_writes() {
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ])
    .await;
    let mut settings = test_settings(&redis);
    settings.events.history = 100_000;
    let prefix = settings.redis.key_prefix.clone();
    let app = TestApp::spawn_with(settings).await;
    let history = Arc::new(History::new());
    let client = client();
    let contended = resources("crash", 3);

    // Phase 1: load, every lease released; then one lease kept over the crash.
    let phase = |tag: &'static str, rounds: usize| {
        let (history, client, base, resources) = (
            history.clone(),
            client.clone(),
            app.base.clone(),
            contended.clone(),
        );
        async move {
            let tasks: Vec<_> = (0..4)
                .map(|n| {
                    let (history, client, base, resources) = (
                        history.clone(),
                        client.clone(),
                        base.clone(),
                        resources.clone(),
                    );
                    tokio::spawn(async move {
                        for round in 0..rounds {
                            let resource = &resources[(n + round) % resources.len()];
                            let agent = format!("{tag}-{n}-{round}");
                            let lease = acquire_until_granted(
                                &history, &client, &base, resource, &agent, 2000,
                            )
                            .await;
                            history.release(&client, &base, &lease).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("a contender panicked");
            }
        }
    };
    phase("before", 6).await;
    let kept = history
        .acquire(&client, &app.base, "crash-kept", "kept-holder", 60_000, 0)
        .await
        .expect("kept granted");

    // What is on disk now survives the crash; everything after it is lost, as when the
    // host dies before Redis's next fsync. (A SIGKILL alone loses nothing that Redis has
    // written to the page cache, so the test drops the tail itself.)
    let aof = redis.dir().join("appendonlydir");
    let snapshot = redis.dir().join("aof-snapshot");
    eventually(Duration::from_secs(5), "the AOF to hold phase 1", || {
        let aof = aof.clone();
        async move { aof_holds(&aof, b"kept-holder") }
    })
    .await;
    copy_dir(&aof, &snapshot);

    // Phase 2: more grants on the same resources, and a lease on a resource that exists
    // only in the lost writes: its lease and its fence counter will be gone.
    phase("lost", 4).await;
    let lost = history
        .acquire(&client, &app.base, "crash-new", "lost-holder", 60_000, 0)
        .await
        .expect("lost granted");
    let mut store = FencedStore::default();
    assert!(store.write("crash-new", lost.fence), "the holder writes");
    let mut before_crash = std::collections::HashMap::<String, u64>::new();
    for op in history.ops() {
        if let Outcome::Granted(lease) = &op.outcome {
            let max = before_crash.entry(lease.resource.clone()).or_default();
            *max = (*max).max(lease.fence);
        }
    }

    redis.kill();
    std::fs::remove_dir_all(&aof).expect("drop the AOF");
    std::fs::rename(&snapshot, &aof).expect("restore the snapshot");
    redis.restart().await;

    // The crash really lost writes: the new resource's lease and counter are gone, and
    // each contended resource's counter went back to its value before phase 2.
    let mut conn = redis.connection().await;
    let key = |kind: &str, resource: &str| format!("{prefix}{{0}}:{kind}:{resource}");
    let exists: u32 = conn
        .exists(&[key("lock", "crash-new"), key("fence", "crash-new")])
        .await
        .unwrap();
    assert_eq!(exists, 0, "the lost lease and its counter are gone");
    for resource in &contended {
        let counter: Option<u64> = conn.get(key("fence", resource)).await.unwrap();
        assert!(
            counter.is_some_and(|c| c < before_crash[resource]),
            "{resource}: counter {counter:?}, {} before the crash",
            before_crash[resource]
        );
    }
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();

    // Phase 3: after the crash.
    let again = acquire_until_granted(
        &history,
        &client,
        &app.base,
        "crash-new",
        "after-new",
        60_000,
    )
    .await;
    phase("after", 6).await;
    for resource in &contended {
        let lease =
            acquire_until_granted(&history, &client, &app.base, resource, "after-last", 1000).await;
        history.release(&client, &app.base, &lease).await;
    }

    // Fences went on from above every fence issued before the crash, lost ones included.
    for op in history.ops() {
        if let Outcome::Granted(lease) = &op.outcome
            && lease.agent.starts_with("after")
        {
            assert!(
                lease.fence > before_crash[&lease.resource],
                "{}: fence {} after the crash, {} before it",
                lease.resource,
                lease.fence,
                before_crash[&lease.resource]
            );
        }
    }
    // The lost lease was granted again while its holder still thinks it holds it: only
    // the fence tells them apart, and the protected store refuses the stale holder.
    assert!(again.fence > lost.fence);
    assert!(
        store.write("crash-new", again.fence),
        "the new holder writes"
    );
    assert!(
        !store.write("crash-new", lost.fence),
        "the stale holder is fenced off"
    );
    assert!(matches!(
        history.release(&client, &app.base, &lost).await,
        Outcome::NotOwner { .. }
    ));
    // The lease that was on disk survived with its fence, and its holder can still end it.
    let status = app.status("crash-kept").await;
    assert_eq!(status["fencing_token"], json!(kept.fence));
    assert!(matches!(
        history.release(&client, &app.base, &kept).await,
        Outcome::Released
    ));

    let counts = history.check(Mode::RedisLostWrites);
    eprintln!(
        "chaos[redis crash, appendfsync everysec, last writes lost]: {counts:?}; \
         fences before the crash: {before_crash:?}"
    );
    assert!(counts.grants >= 60, "{counts:?}");
    assert!(counts.releases >= 55, "{counts:?}");
    assert_eq!(counts.resources, 5, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockd_killed_mid_request_leaves_the_other_serving_and_nothing_granted_twice() {
    let redis = RedisServer::start().await;
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("LOCKD_REDIS__COMMAND_TIMEOUT_MS", "500"),
        ("LOCKD_EVENTS__HISTORY", "100000"),
    ];
    let mut a = LockdProcess::spawn(&redis.url(), &prefix, &env).await;
    let b = LockdProcess::spawn(&redis.url(), &prefix, &env).await;
    let history = Arc::new(History::new());
    let client = client();

    // A request that is surely in flight on A when it dies: a wait for a lock that B's
    // client holds for the whole test.
    let pinned = history
        .acquire(
            &client,
            &b.base,
            "killed-pinned",
            "pinned-holder",
            30_000,
            0,
        )
        .await
        .expect("pinned granted");
    let body = r#"{"agent_id":"doomed-waiter","ttl_ms":1000,"wait_ms":20000}"#;
    let address = a.base.trim_start_matches("http://").to_owned();
    let request = format!(
        "POST /locks/killed-pinned HTTP/1.1\r\nHost: {address}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (doomed_sent, doomed_wall) = (Instant::now(), wall_ms());
    let mut doomed = TcpStream::connect(&address).await.unwrap();
    doomed.write_all(request.as_bytes()).await.unwrap();

    let a_dead = Arc::new(AtomicBool::new(false));
    let work = Workload {
        tag: "killed",
        resources: resources("killed", 3),
        ttl_ms: 300,
        wait_ms: 300,
        outlive_one_in: Some(8),
        refresh_one_in: 3,
        abandon_one_in: None,
        deadline: Instant::now() + Duration::from_millis(3500),
    };
    // Half the contenders use A until it dies, then B; the other half use B throughout.
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let targets = if n % 2 == 0 {
                Targets {
                    preferred: a.base.clone(),
                    fallback: b.base.clone(),
                    preferred_dead: a_dead.clone(),
                }
            } else {
                Targets::one(&b.base)
            };
            tokio::spawn(contender(
                n,
                history.clone(),
                client.clone(),
                targets,
                work.clone(),
            ))
        })
        .collect();
    wait_for_grants(&history, 15).await;

    a.kill().await;
    a_dead.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();

    // The doomed request gets no answer at all: its outcome is unknown to its client.
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), doomed.read_to_end(&mut reply))
        .await
        .expect("the connection ended with the process");
    assert!(
        read.is_err() || reply.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    history.record_unknown_acquire(
        "killed-pinned",
        "doomed-waiter",
        1000,
        doomed_sent,
        doomed_wall,
        "connection closed by a killed lockd",
    );

    let tally = join(tasks).await;
    assert!(matches!(
        history.release(&client, &b.base, &pinned).await,
        Outcome::Released
    ));
    let ops = history.ops();
    let served_after = ops
        .iter()
        .filter(|op| op.invoked > killed_at && matches!(op.outcome, Outcome::Granted(_)))
        .count();
    assert!(
        served_after >= 5,
        "only {served_after} grants after the kill"
    );

    let counts = history.check(Mode::Strict);
    let events = history.check_events(&stream_events_for(&redis, &prefix).await);
    eprintln!(
        "chaos[lockd killed mid-request]: {counts:?}; {events:?}; grants after the kill: \
         {served_after}; late releases/refreshes: {}",
        tally.late
    );
    assert!(counts.grants >= 20, "{counts:?}");
    assert!(counts.unknown_acquires >= 1, "{counts:?}");
    assert!(counts.conflicts >= 1, "{counts:?}");
    assert!(events.locked >= counts.grants, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_contenders_on_two_instances_with_holders_outliving_their_leases() {
    const TTL_MS: u64 = 200;
    let redis = RedisServer::start().await;
    let mut settings = test_settings(&redis);
    settings.events.history = 100_000;
    let a = TestApp::spawn_with(settings.clone()).await;
    let b = TestApp::spawn_with(settings).await;
    let history = Arc::new(History::new());
    let work = Workload {
        tag: "crowd",
        resources: resources("crowd", 3),
        ttl_ms: TTL_MS,
        wait_ms: 400,
        outlive_one_in: Some(4),
        refresh_one_in: 3,
        abandon_one_in: Some(8),
        deadline: Instant::now() + Duration::from_millis(3000),
    };
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let base = if n % 2 == 0 { &a.base } else { &b.base };
            tokio::spawn(contender(
                n,
                history.clone(),
                client(),
                Targets::one(base),
                work.clone(),
            ))
        })
        .collect();
    let tally = join(tasks).await;

    // Every outlived lease ran out and was announced, also those nobody took afterwards.
    let prefix = a.settings.redis.key_prefix.clone();
    eventually(Duration::from_secs(5), "every lease to be over", || {
        let (redis, prefix) = (&redis, &prefix);
        async move {
            let mut conn = redis.connection().await;
            let held: u64 = conn.zcard(format!("{prefix}{{0}}:expiry")).await.unwrap();
            held == 0
        }
    })
    .await;

    let counts = history.check(Mode::Strict);
    let events = history.check_events(&stream_events(&redis, &a).await);
    eprintln!(
        "chaos[40 contenders, 2 instances, lease {TTL_MS} ms]: {counts:?}; {events:?}; \
         late releases/refreshes: {}; clients that hung up while waiting: {}",
        tally.late, counts.unknown_acquires
    );
    assert!(counts.grants >= 40, "{counts:?}");
    assert!(counts.conflicts >= 10, "{counts:?}");
    assert!(tally.late >= 5, "{tally:?}");
    assert!(
        counts.stale_refusals() >= tally.late,
        "{counts:?} {tally:?}"
    );
    assert!(events.expired >= tally.late, "{events:?} {tally:?}");
    // The only unknown outcomes are the clients that hung up while waiting.
    let abandoned = history
        .ops()
        .iter()
        .filter(|op| matches!(&op.outcome, Outcome::Unknown(why) if why == ABANDONED))
        .count();
    assert_eq!(counts.unknowns(), abandoned, "{counts:?}");
    assert!(abandoned >= 3, "{abandoned} clients hung up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_answered_503_may_still_be_granted_and_its_lease_runs_out_by_itself() {
    const COMMAND_TIMEOUT_MS: u64 = 300;
    let redis = RedisServer::start().await;
    let proxy = ReplyStallingProxy::start(&redis).await;
    let mut settings = test_settings(&redis);
    settings.redis.url = proxy.url();
    settings.redis.command_timeout_ms = COMMAND_TIMEOUT_MS;
    let app = TestApp::spawn_with(settings).await;
    let history = History::new();
    let client = client();
    // Redis knows the acquire script already (else the stalled NOSCRIPT answer would keep
    // lockd from sending the script itself).
    let warm = history
        .acquire(&client, &app.base, "warm", "warm-up", 60_000, 0)
        .await
        .expect("warm-up granted");

    // A one-way partition: the acquire reaches Redis and runs, its answer does not come
    // back in time, and lockd answers 503.
    proxy.stall_replies_from_command_with(b"lock:orphan");
    let started = Instant::now();
    let lease = history
        .acquire(&client, &app.base, "orphan", "timed-out", 1500, 0)
        .await;
    let elapsed = started.elapsed();
    proxy.heal();
    assert!(lease.is_none());
    assert!(
        matches!(&history.ops()[1].outcome, Outcome::Unknown(why) if why == "503 store_unavailable"),
        "{:?}",
        history.ops()[1].outcome
    );
    assert!(
        elapsed < Duration::from_millis(COMMAND_TIMEOUT_MS + 700),
        "{elapsed:?}"
    );

    // The unknown outcome was a grant: nobody has its token, so it runs out by itself.
    let mut conn = redis.connection().await;
    let lock_key = format!("{}{{0}}:lock:orphan", app.settings.redis.key_prefix);
    let holder: Option<String> = conn.hget(&lock_key, "agent").await.unwrap();
    assert_eq!(holder.as_deref(), Some("timed-out"));
    assert!(
        history
            .acquire(&client, &app.base, "orphan", "next-0", 1000, 0)
            .await
            .is_none(),
        "409 while the orphan lease runs"
    );
    let next = history
        .acquire(&client, &app.base, "orphan", "next-1", 1000, 5000)
        .await
        .expect("granted once the orphan lease ran out");
    history.release(&client, &app.base, &next).await;
    history.release(&client, &app.base, &warm).await;

    let counts = history.check(Mode::Strict);
    let events = history.check_events(&stream_events(&redis, &app).await);
    eprintln!("chaos[acquire answer lost]: {counts:?}; {events:?}; 503 after {elapsed:?}");
    assert_eq!(counts.unknown_acquires, 1, "{counts:?}");
    assert_eq!(counts.conflicts, 1, "{counts:?}");
    assert_eq!(counts.grants, 2, "{counts:?}");
    assert_eq!(events.unknown_acquires_granted, 1, "{events:?}");
    assert_eq!(events.expired, 1, "{events:?}");
}
