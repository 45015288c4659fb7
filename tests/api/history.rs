//! A history checker for lock operations, in the manner of Jepsen: tests drive load through
//! [`History`], which records every operation's invocation, completion and outcome, then
//! [`History::check`] asserts the safety properties over the whole history, and
//! [`History::check_events`] holds the history against the event log Redis kept.
//!
//! What it asserts, per resource:
//! - fencing tokens are unique and strictly increase in grant order, by Redis's clock and
//!   in real time (a grant that completed before another was requested has the lower
//!   fence);
//! - no two grants' leases `[acquired_at, end)` overlap, where `end` is the lease's
//!   `expires_at` as moved by successful refreshes, unless the earlier lease was released
//!   before the later grant;
//! - a successful release or refresh was made by the current holder, whose lease had not
//!   run out (a stale token never releases or refreshes);
//! - every 409 names a holder that some operation could have created.
//!
//! Times: `acquired_at`, `expires_at` and refresh times come from the responses, on
//! Redis's clock. A release's response carries no time, so it is bracketed by the wall
//! clock at its invocation and completion: the tests run Redis on this host, and Redis's
//! `TIME` reads that same clock. [`SLACK_MS`] absorbs millisecond rounding.
//!
//! Unknown outcomes (a 5xx, a timeout, a broken connection) are accounted for
//! conservatively: an unknown acquire may have been granted (and then nobody knows its
//! token, so nobody can release or refresh it: it runs out), and it may have taken effect
//! at any time after its invocation, even after the client gave up (a command queued in a
//! frozen Redis runs when Redis thaws). An unknown release may have ended its lease, and an
//! unknown refresh may have extended it. The checker never counts such an operation as a
//! violation, and never relies on it having failed. Agent ids are unique per acquire in
//! the tests, so a 409's holder and an event name exactly one acquire.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Tolerance, in ms, between the wall clock read here and Redis's `TIME`.
pub const SLACK_MS: i64 = 2;

/// Why an acquire whose client hung up while waiting has an unknown outcome.
pub const ABANDONED: &str = "abandoned by the client";

/// How long after its client hung up an abandoned acquire may still be granted: the
/// attempt in flight when the connection closed may complete (lockd cannot recall a
/// script it has sent), but lockd must not go on waiting.
pub const ABANDON_GRACE_MS: i64 = 1000;

/// The wall clock in Unix milliseconds: the clock Redis's `TIME` reads on this host.
pub fn wall_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit in i64")
}

/// Parses lockd's RFC 3339 form, `2026-11-26T13:40:00.123Z`, to Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> i64 {
    let bad = || panic!("not an RFC 3339 UTC time with ms: {text:?}");
    let b = text.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        bad();
    }
    let num = |from: usize, to: usize| -> i64 { text[from..to].parse().unwrap_or_else(|_| bad()) };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let (hour, minute, second, milli) = (num(11, 13), num(14, 16), num(17, 19), num(20, 23));
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli
}

/// A lease as a grant or a refresh reported it.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The resource.
    pub resource: String,
    /// The holder.
    pub agent: String,
    /// The secret.
    pub token: String,
    /// The fencing token.
    pub fence: u64,
    /// The lease length this operation set.
    pub ttl_ms: u64,
    /// Redis ms.
    pub acquired_at: i64,
    /// Redis ms.
    pub expires_at: i64,
}

impl Lease {
    fn from_body(body: &Value) -> Self {
        let text = |key: &str| -> String {
            body[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} in {body}"))
                .to_owned()
        };
        let number = |key: &str| -> u64 {
            body[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key} in {body}"))
        };
        Self {
            resource: text("resource_id"),
            agent: text("agent_id"),
            token: text("token"),
            fence: number("fencing_token"),
            ttl_ms: number("ttl_ms"),
            acquired_at: parse_rfc3339_ms(&text("acquired_at")),
            expires_at: parse_rfc3339_ms(&text("expires_at")),
        }
    }
}

/// What an operation asked for.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `POST`, with the lease length asked for.
    Acquire { ttl_ms: u64 },
    /// `DELETE` with the token of the lease of fence `of`.
    Release { of: u64 },
    /// `PATCH` with the token of the lease of fence `of`.
    Refresh { of: u64, ttl_ms: Option<u64> },
}

/// How an operation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 201.
    Granted(Lease),
    /// 409 `lock_held`: the holder and its lease end.
    Held { agent: String, expires_at: i64 },
    /// 204.
    Released,
    /// 200 to a refresh.
    Refreshed(Lease),
    /// 404 `lock_not_found`.
    NotFound,
    /// 409 `not_lock_owner`.
    NotOwner { agent: String, expires_at: i64 },
    /// A 5xx, a timeout or a broken connection: the change may or may not have happened.
    Unknown(String),
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    /// The resource.
    pub resource: String,
    /// The acquiring agent, or the holder whose token a release or refresh used.
    pub agent: String,
    /// The token a release or refresh sent.
    pub token: Option<String>,
    /// What it asked for.
    pub kind: Kind,
    /// Local monotonic time when the request was sent.
    pub invoked: Instant,
    /// Local monotonic time when the answer (or the failure) came.
    pub completed: Instant,
    /// Wall-clock ms at `invoked`.
    pub invoked_wall: i64,
    /// Wall-clock ms at `completed`.
    pub completed_wall: i64,
    /// How it ended.
    pub outcome: Outcome,
}

/// What the checker saw, to report and to prove a test was not vacuous.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Resources with at least one operation.
    pub resources: usize,
    /// Acquires answered 201.
    pub grants: usize,
    /// Releases answered 204.
    pub releases: usize,
    /// Refreshes answered 200.
    pub refreshes: usize,
    /// Acquires answered 409 `lock_held`.
    pub conflicts: usize,
    /// Releases and refreshes answered 404 (the lease had ended).
    pub not_found: usize,
    /// Releases and refreshes answered 409 `not_lock_owner`.
    pub not_owner: usize,
    /// Acquires with an unknown outcome.
    pub unknown_acquires: usize,
    /// Releases and refreshes with an unknown outcome.
    pub unknown_changes: usize,
}

impl Counts {
    /// All operations with an unknown outcome.
    pub fn unknowns(&self) -> usize {
        self.unknown_acquires + self.unknown_changes
    }

    /// Releases and refreshes refused because the token no longer held the lock.
    pub fn stale_refusals(&self) -> usize {
        self.not_found + self.not_owner
    }
}

/// What the event log held.
#[derive(Debug, Default, Clone)]
pub struct EventCounts {
    /// Events of the history's resources.
    pub events: usize,
    /// `resource.locked`.
    pub locked: usize,
    /// `resource.refreshed`.
    pub refreshed: usize,
    /// `resource.unlocked` with `reason: released`.
    pub released: usize,
    /// `resource.unlocked` with `reason: expired`.
    pub expired: usize,
    /// Acquires whose client saw an unknown outcome, but that the log shows granted.
    pub unknown_acquires_granted: usize,
    /// Of those, acquires whose client hung up while waiting (granted just before).
    pub abandoned_granted: usize,
}

/// Which properties a run must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything: the Redis kept every acknowledged write.
    Strict,
    /// Redis lost acknowledged writes (a crash with `appendfsync everysec`, a restart
    /// without persistence): leases can be lost, so a lock can be granted again while its
    /// previous holder still believes it holds it. Fencing tokens must still increase, and
    /// every 409 must still name a holder that some operation created.
    RedisLostWrites,
}

/// The recorded history of a test run. Share it between tasks with an `Arc`.
#[derive(Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

/// When a request was sent, in both clocks.
struct Started {
    at: Instant,
    wall: i64,
}

fn start() -> Started {
    Started {
        at: Instant::now(),
        wall: wall_ms(),
    }
}

async fn problem_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        content_type, "application/problem+json",
        "a {status} without a problem document: {body}"
    );
    let code = body["code"].as_str().unwrap_or_default().to_owned();
    (status, code)
}

fn holder(body: &Value) -> (String, i64) {
    (
        body["agent_id"].as_str().expect("the holder").to_owned(),
        parse_rfc3339_ms(body["expires_at"].as_str().expect("the holder's lease end")),
    )
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, op: Op) {
        self.ops.lock().expect("history lock").push(op);
    }

    /// Every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }

    /// `POST {base}/locks/{resource}`; records the outcome and returns the lease if granted.
    pub async fn acquire(
        &self,
        client: &reqwest::Client,
        base: &str,
        resource: &str,
        agent: &str,
        ttl_ms: u64,
        wait_ms: u64,
    ) -> Option<Lease> {
        self.acquire_or_give_up(client, base, resource, agent, ttl_ms, wait_ms, None)
            .await
    }

    /// Like [`History::acquire`], but the client hangs up after `give_up` if no answer has
    /// come: a client that disconnects while waiting. Recorded as an unknown outcome
    /// ([`ABANDONED`]); the server must stop waiting and acquire nothing after that.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire_or_give_up(
        &self,
        client: &reqwest::Client,
        base: &str,
        resource: &str,
        agent: &str,
        ttl_ms: u64,
        wait_ms: u64,
        give_up: Option<std::time::Duration>,
    ) -> Option<Lease> {
        let started = start();
        let request = client
            .post(format!("{base}/locks/{resource}"))
            .json(&json!({"agent_id": agent, "ttl_ms": ttl_ms, "wait_ms": wait_ms}))
            .send();
        let sent = match give_up {
            None => Some(request.await),
            Some(limit) => tokio::time::timeout(limit, request).await.ok(),
        };
        let outcome = match sent {
            None => Outcome::Unknown(ABANDONED.to_owned()),
            Some(Err(error)) => Outcome::Unknown(format!("no answer: {error}")),
            Some(Ok(response)) if response.status() == 201 => {
                let header = response.headers()["lock-token"]
                    .to_str()
                    .expect("an ASCII token")
                    .to_owned();
                match response.json::<Value>().await {
                    Ok(body) => {
                        let lease = Lease::from_body(&body);
                        assert_eq!(lease.token, header, "Lock-Token header and body agree");
                        assert_eq!(lease.resource, resource, "{body}");
                        assert_eq!(lease.agent, agent, "{body}");
                        assert_eq!(lease.ttl_ms, ttl_ms, "{body}");
                        assert_eq!(
                            lease.expires_at,
                            lease.acquired_at + i64::try_from(ttl_ms).expect("a small ttl"),
                            "{body}"
                        );
                        Outcome::Granted(lease)
                    }
                    // The grant was made; its body was lost on the way.
                    Err(error) => Outcome::Unknown(format!("broken body: {error}")),
                }
            }
            Some(Ok(response)) if response.status() == 409 => {
                let body: Value = response.json().await.expect("a 409 problem");
                assert_eq!(body["code"], "lock_held", "{body}");
                let (agent, expires_at) = holder(&body);
                Outcome::Held { agent, expires_at }
            }
            Some(Ok(response)) => self.failure(response, "acquire").await,
        };
        let granted = match &outcome {
            Outcome::Granted(lease) => Some(lease.clone()),
            _ => None,
        };
        self.push(Op {
            resource: resource.to_owned(),
            agent: agent.to_owned(),
            token: granted.as_ref().map(|lease| lease.token.clone()),
            kind: Kind::Acquire { ttl_ms },
            invoked: started.at,
            completed: Instant::now(),
            invoked_wall: started.wall,
            completed_wall: wall_ms(),
            outcome,
        });
        granted
    }

    /// Records an acquire sent some other way (say, over a raw socket) whose outcome the
    /// client never learned.
    pub fn record_unknown_acquire(
        &self,
        resource: &str,
        agent: &str,
        ttl_ms: u64,
        invoked: Instant,
        invoked_wall: i64,
        why: &str,
    ) {
        self.push(Op {
            resource: resource.to_owned(),
            agent: agent.to_owned(),
            token: None,
            kind: Kind::Acquire { ttl_ms },
            invoked,
            completed: Instant::now(),
            invoked_wall,
            completed_wall: wall_ms(),
            outcome: Outcome::Unknown(why.to_owned()),
        });
    }

    /// `DELETE {base}/locks/{resource}` with `lease`'s token; records and returns the outcome.
    pub async fn release(&self, client: &reqwest::Client, base: &str, lease: &Lease) -> Outcome {
        let started = start();
        let sent = client
            .delete(format!("{base}/locks/{}", lease.resource))
            .header("Lock-Token", &lease.token)
            .send()
            .await;
        let outcome = match sent {
            Err(error) => Outcome::Unknown(format!("no answer: {error}")),
            Ok(response) if response.status() == 204 => Outcome::Released,
            Ok(response) => self.refusal(response, "release").await,
        };
        self.push(Op {
            resource: lease.resource.clone(),
            agent: lease.agent.clone(),
            token: Some(lease.token.clone()),
            kind: Kind::Release { of: lease.fence },
            invoked: started.at,
            completed: Instant::now(),
            invoked_wall: started.wall,
            completed_wall: wall_ms(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// `PATCH {base}/locks/{resource}` with `lease`'s token; records and returns the outcome.
    pub async fn refresh(
        &self,
        client: &reqwest::Client,
        base: &str,
        lease: &Lease,
        ttl_ms: Option<u64>,
    ) -> Outcome {
        let started = start();
        let mut request = client
            .patch(format!("{base}/locks/{}", lease.resource))
            .header("Lock-Token", &lease.token);
        if let Some(ttl_ms) = ttl_ms {
            request = request.json(&json!({ "ttl_ms": ttl_ms }));
        }
        let outcome = match request.send().await {
            Err(error) => Outcome::Unknown(format!("no answer: {error}")),
            Ok(response) if response.status() == 200 => match response.json::<Value>().await {
                Ok(body) => Outcome::Refreshed(Lease::from_body(&body)),
                Err(error) => Outcome::Unknown(format!("broken body: {error}")),
            },
            Ok(response) => self.refusal(response, "refresh").await,
        };
        self.push(Op {
            resource: lease.resource.clone(),
            agent: lease.agent.clone(),
            token: Some(lease.token.clone()),
            kind: Kind::Refresh {
                of: lease.fence,
                ttl_ms,
            },
            invoked: started.at,
            completed: Instant::now(),
            invoked_wall: started.wall,
            completed_wall: wall_ms(),
            outcome: outcome.clone(),
        });
        outcome
    }

    async fn refusal(&self, response: reqwest::Response, what: &str) -> Outcome {
        match response.status().as_u16() {
            404 => {
                let (_, code) = problem_code(response).await;
                assert_eq!(code, "lock_not_found", "{what}");
                Outcome::NotFound
            }
            409 => {
                let body: Value = response.json().await.expect("a 409 problem");
                assert_eq!(body["code"], "not_lock_owner", "{what}: {body}");
                let (agent, expires_at) = holder(&body);
                Outcome::NotOwner { agent, expires_at }
            }
            _ => self.failure(response, what).await,
        }
    }

    /// A 5xx or 408 is an unknown outcome; any other answer is a bug in the test or lockd.
    async fn failure(&self, response: reqwest::Response, what: &str) -> Outcome {
        let (status, code) = problem_code(response).await;
        assert!(
            status >= 500 || status == 408,
            "{what} got an unexpected {status} {code}"
        );
        Outcome::Unknown(format!("{status} {code}"))
    }

    /// Checks the whole history; panics listing every violation found. Returns the counts.
    pub fn check(&self, mode: Mode) -> Counts {
        let ops = self.ops();
        let mut counts = Counts::default();
        let mut violations = Vec::new();
        let mut by_resource: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &ops {
            by_resource.entry(&op.resource).or_default().push(op);
            match (&op.kind, &op.outcome) {
                (_, Outcome::Granted(_)) => counts.grants += 1,
                (_, Outcome::Released) => counts.releases += 1,
                (_, Outcome::Refreshed(_)) => counts.refreshes += 1,
                (_, Outcome::Held { .. }) => counts.conflicts += 1,
                (_, Outcome::NotFound) => counts.not_found += 1,
                (_, Outcome::NotOwner { .. }) => counts.not_owner += 1,
                (Kind::Acquire { .. }, Outcome::Unknown(why)) => {
                    counts.unknown_acquires += 1;
                    if why.starts_with("500") {
                        violations.push(format!("{}: a 500 on acquire: {why}", op.resource));
                    }
                }
                (_, Outcome::Unknown(why)) => {
                    counts.unknown_changes += 1;
                    if why.starts_with("500") {
                        violations.push(format!("{}: a 500: {why}", op.resource));
                    }
                }
            }
        }
        counts.resources = by_resource.len();
        for (resource, ops) in &by_resource {
            check_resource(resource, ops, mode, &mut violations);
        }
        if !violations.is_empty() {
            let shown: Vec<&String> = violations.iter().take(20).collect();
            panic!(
                "the history broke {} safety rule(s) ({counts:?}):\n{}",
                violations.len(),
                shown
                    .iter()
                    .map(|v| format!("  - {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        counts
    }

    /// Holds the history against the events Redis logged (as `helpers::stream_events`
    /// reads them): the log alone must show one lease at a time per resource, increasing
    /// fences, no refresh or release after a lease ended, exactly one `unlocked` per lease;
    /// and every change the clients saw has its event, every event is a change some client
    /// asked for. Only for runs where Redis lost nothing.
    pub fn check_events(&self, events: &[Value]) -> EventCounts {
        let ops = self.ops();
        let mut counts = EventCounts::default();
        let mut violations = Vec::new();
        let resources: BTreeSet<&str> = ops.iter().map(|op| op.resource.as_str()).collect();

        // What clients saw, by (resource, fence) and by agent.
        let mut granted: HashMap<(&str, u64), &Lease> = HashMap::new();
        let mut acquires_by_agent: HashMap<(&str, &str), Vec<&Op>> = HashMap::new();
        let mut changes_of: HashMap<(&str, u64), Vec<&Op>> = HashMap::new();
        for op in &ops {
            match (&op.kind, &op.outcome) {
                (Kind::Acquire { .. }, outcome) => {
                    if let Outcome::Granted(lease) = outcome {
                        granted.insert((&op.resource, lease.fence), lease);
                    }
                    acquires_by_agent
                        .entry((&op.resource, &op.agent))
                        .or_default()
                        .push(op);
                }
                (Kind::Release { of } | Kind::Refresh { of, .. }, _) => {
                    changes_of.entry((&op.resource, *of)).or_default().push(op);
                }
            }
        }

        struct Current {
            fence: u64,
            agent: String,
            expires: i64,
        }
        let mut current: HashMap<String, Current> = HashMap::new();
        let mut last_end: HashMap<String, i64> = HashMap::new();
        let mut last_fence: HashMap<String, u64> = HashMap::new();
        let mut locked_seen: HashSet<(String, u64)> = HashSet::new();
        let mut released_seen: HashSet<(String, u64)> = HashSet::new();
        // Grants to waiters whose client hung up (lockd releases those itself).
        let mut abandoned: HashSet<(String, u64)> = HashSet::new();
        let mut refreshed_seen: HashSet<(String, u64, i64)> = HashSet::new();

        for event in events {
            let Some(resource) = event["resource_id"].as_str() else {
                violations.push(format!("an event without a resource: {event}"));
                continue;
            };
            if !resources.contains(resource) {
                continue;
            }
            counts.events += 1;
            let fence = event["fencing_token"].as_u64().unwrap_or(0);
            let agent = event["agent_id"].as_str().unwrap_or_default().to_owned();
            let at = parse_rfc3339_ms(event["at"].as_str().unwrap_or_default());
            let id = event["id"].as_str().unwrap_or_default();
            match event["type"].as_str().unwrap_or_default() {
                "resource.locked" => {
                    counts.locked += 1;
                    let expires = parse_rfc3339_ms(event["expires_at"].as_str().unwrap_or("?"));
                    if let Some(previous) = current.get(resource) {
                        violations.push(format!(
                            "{resource}: event {id} grants fence {fence} while fence {} was never unlocked",
                            previous.fence
                        ));
                    }
                    if last_fence.get(resource).is_some_and(|&last| fence <= last) {
                        violations.push(format!(
                            "{resource}: event {id} grants fence {fence} after fence {}",
                            last_fence[resource]
                        ));
                    }
                    if last_end.get(resource).is_some_and(|&end| at < end) {
                        violations.push(format!(
                            "{resource}: event {id} grants at {at} before the previous lease ended at {}",
                            last_end[resource]
                        ));
                    }
                    last_fence.insert(resource.to_owned(), fence);
                    locked_seen.insert((resource.to_owned(), fence));
                    // Seen by its client, or an acquire whose client never learned it won.
                    match granted.get(&(resource, fence)) {
                        Some(lease) => {
                            if lease.agent != agent
                                || lease.acquired_at != at
                                || lease.expires_at != expires
                            {
                                violations.push(format!(
                                    "{resource}: event {id} {event} disagrees with the grant {lease:?}"
                                ));
                            }
                        }
                        None => {
                            // With the lease length that acquire asked for.
                            let unknown = acquires_by_agent
                                .get(&(resource, agent.as_str()))
                                .and_then(|ops| {
                                    ops.iter().find(|op| {
                                        matches!(
                                            (&op.kind, &op.outcome),
                                            (Kind::Acquire { ttl_ms }, Outcome::Unknown(_))
                                                if i64::try_from(*ttl_ms).ok() == Some(expires - at)
                                        )
                                    })
                                });
                            if let Some(op) = unknown {
                                counts.unknown_acquires_granted += 1;
                                if matches!(&op.outcome, Outcome::Unknown(why) if why == ABANDONED)
                                {
                                    counts.abandoned_granted += 1;
                                    abandoned.insert((resource.to_owned(), fence));
                                    if at > op.completed_wall + ABANDON_GRACE_MS {
                                        violations.push(format!(
                                            "{resource}: event {id} grants {agent} at {at}, {} ms after its client hung up",
                                            at - op.completed_wall
                                        ));
                                    }
                                }
                            } else {
                                violations.push(format!(
                                    "{resource}: event {id} grants fence {fence} to {agent}, which no acquire could have won"
                                ));
                            }
                        }
                    }
                    current.insert(
                        resource.to_owned(),
                        Current {
                            fence,
                            agent,
                            expires,
                        },
                    );
                }
                "resource.refreshed" => {
                    counts.refreshed += 1;
                    let expires = parse_rfc3339_ms(event["expires_at"].as_str().unwrap_or("?"));
                    match current.get_mut(resource) {
                        Some(lease) if lease.fence == fence && lease.agent == agent => {
                            if at >= lease.expires {
                                violations.push(format!(
                                    "{resource}: event {id} refreshes fence {fence} at {at}, after its lease ended at {}",
                                    lease.expires
                                ));
                            }
                            lease.expires = expires;
                        }
                        _ => violations.push(format!(
                            "{resource}: event {id} refreshes fence {fence}, which is not the current lease"
                        )),
                    }
                    refreshed_seen.insert((resource.to_owned(), fence, expires));
                    let asked = changes_of.get(&(resource, fence)).is_some_and(|ops| {
                        ops.iter().any(|op| match (&op.kind, &op.outcome) {
                            (Kind::Refresh { .. }, Outcome::Refreshed(lease)) => {
                                lease.expires_at == expires
                            }
                            (Kind::Refresh { .. }, Outcome::Unknown(_)) => true,
                            _ => false,
                        })
                    });
                    if !asked {
                        violations.push(format!(
                            "{resource}: event {id} refreshes fence {fence}, but no holder of its token asked for that"
                        ));
                    }
                }
                "resource.unlocked" => {
                    let reason = event["reason"].as_str().unwrap_or_default();
                    match current.remove(resource) {
                        Some(lease) if lease.fence == fence => match reason {
                            "released" => {
                                counts.released += 1;
                                if at >= lease.expires {
                                    violations.push(format!(
                                        "{resource}: event {id} releases fence {fence} at {at}, after its lease ended at {}",
                                        lease.expires
                                    ));
                                }
                            }
                            "expired" => {
                                counts.expired += 1;
                                if at != lease.expires {
                                    violations.push(format!(
                                        "{resource}: event {id} says fence {fence} expired at {at}, but its lease ended at {}",
                                        lease.expires
                                    ));
                                }
                            }
                            other => violations.push(format!(
                                "{resource}: event {id} unlocks fence {fence} for reason {other:?}"
                            )),
                        },
                        _ => violations.push(format!(
                            "{resource}: event {id} unlocks fence {fence}, which is not the current lease"
                        )),
                    }
                    last_end.insert(resource.to_owned(), at);
                    if reason == "released" {
                        released_seen.insert((resource.to_owned(), fence));
                        let asked = changes_of.get(&(resource, fence)).is_some_and(|ops| {
                            ops.iter().any(|op| {
                                matches!(
                                    (&op.kind, &op.outcome),
                                    (
                                        Kind::Release { .. },
                                        Outcome::Released | Outcome::Unknown(_)
                                    )
                                )
                            })
                        });
                        // lockd itself gives back a grant whose client hung up while
                        // waiting: nobody else could have released it.
                        if !asked && !abandoned.contains(&(resource.to_owned(), fence)) {
                            violations.push(format!(
                                "{resource}: event {id} releases fence {fence}, but no holder of its token asked for that"
                            ));
                        }
                    }
                }
                other => violations.push(format!("{resource}: unknown event type {other:?}")),
            }
        }

        // Every change a client saw has its event.
        for op in &ops {
            let resource = op.resource.clone();
            match (&op.kind, &op.outcome) {
                (_, Outcome::Granted(lease))
                    if !locked_seen.contains(&(resource.clone(), lease.fence)) =>
                {
                    violations.push(format!(
                        "{}: grant of fence {} has no resource.locked event",
                        op.resource, lease.fence
                    ));
                }
                (Kind::Release { of }, Outcome::Released)
                    if !released_seen.contains(&(resource.clone(), *of)) =>
                {
                    violations.push(format!(
                        "{}: release of fence {of} has no resource.unlocked event",
                        op.resource
                    ));
                }
                (Kind::Refresh { of, .. }, Outcome::Refreshed(lease))
                    if !refreshed_seen.contains(&(resource.clone(), *of, lease.expires_at)) =>
                {
                    violations.push(format!(
                        "{}: refresh of fence {of} to {} has no resource.refreshed event",
                        op.resource, lease.expires_at
                    ));
                }
                _ => {}
            }
        }

        if !violations.is_empty() {
            let shown: Vec<&String> = violations.iter().take(20).collect();
            panic!(
                "the event log broke {} rule(s) ({counts:?}):\n{}",
                violations.len(),
                shown
                    .iter()
                    .map(|v| format!("  - {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        counts
    }
}

/// A granted lease and what later happened to it, as clients saw it.
struct Life<'a> {
    grant: &'a Op,
    lease: &'a Lease,
    /// Successful refreshes: (Redis time of the refresh, new end, the op).
    refreshes: Vec<(i64, i64, &'a Op)>,
    unknown_refreshes: Vec<&'a Op>,
    release: Option<&'a Op>,
    unknown_releases: Vec<&'a Op>,
}

impl Life<'_> {
    /// The lease's end as known at Redis time `at`: its grant's `expires_at`, moved by the
    /// successful refreshes made before `at`.
    fn end_at(&self, at: i64) -> i64 {
        self.refreshes
            .iter()
            .rev()
            .find(|(time, _, _)| *time < at)
            .map_or(self.lease.expires_at, |(_, end, _)| *end)
    }

    /// Whether an unknown refresh sent before `at` could have moved the lease's end.
    fn maybe_extended_before(&self, at: i64) -> bool {
        self.unknown_refreshes
            .iter()
            .any(|op| op.invoked_wall <= at + SLACK_MS)
    }

    /// Whether the lease may have been released before Redis time `at`.
    fn maybe_released_before(&self, at: i64) -> bool {
        self.release
            .iter()
            .chain(self.unknown_releases.iter())
            .any(|op| op.invoked_wall <= at + SLACK_MS)
    }
}

fn check_resource(resource: &str, ops: &[&Op], mode: Mode, violations: &mut Vec<String>) {
    // Fences: unique, and increasing in grant order by both clocks.
    let mut grants: Vec<(&Op, &Lease)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Granted(lease) => Some((*op, lease)),
            _ => None,
        })
        .collect();
    grants.sort_by_key(|(_, lease)| lease.fence);
    for pair in grants.windows(2) {
        let ((_, a), (_, b)) = (pair[0], pair[1]);
        if a.fence == b.fence {
            violations.push(format!("{resource}: fence {} issued twice", a.fence));
        }
        if b.acquired_at < a.acquired_at {
            violations.push(format!(
                "{resource}: fence {} granted at {} but the lower fence {} at {}",
                b.fence, b.acquired_at, a.fence, a.acquired_at
            ));
        }
    }
    // Real time: no grant with a higher fence completed before a lower one was requested.
    let mut earliest_later_completion: Option<(Instant, u64)> = None;
    for (op, lease) in grants.iter().rev() {
        if let Some((completed, fence)) = earliest_later_completion
            && completed < op.invoked
        {
            violations.push(format!(
                "{resource}: fence {fence} was granted before fence {} was even requested",
                lease.fence
            ));
        }
        if earliest_later_completion.is_none_or(|(completed, _)| op.completed < completed) {
            earliest_later_completion = Some((op.completed, lease.fence));
        }
    }

    // Every 409 names a holder some acquire could have created (agents are unique per
    // acquire), with a lease end that acquire or one of its refreshes set.
    for op in ops {
        let (Outcome::Held { agent, expires_at } | Outcome::NotOwner { agent, expires_at }) =
            &op.outcome
        else {
            continue;
        };
        let explained = ops.iter().any(|candidate| {
            matches!(candidate.kind, Kind::Acquire { .. })
                && candidate.agent == *agent
                && match &candidate.outcome {
                    Outcome::Unknown(_) => true,
                    Outcome::Granted(lease) => {
                        lease.expires_at == *expires_at
                            || ops.iter().any(|change| {
                                matches!(change.kind, Kind::Refresh { of, .. } if of == lease.fence)
                                    && match &change.outcome {
                                        Outcome::Refreshed(new) => new.expires_at == *expires_at,
                                        Outcome::Unknown(_) => true,
                                        _ => false,
                                    }
                            })
                    }
                    _ => false,
                }
        });
        if !explained {
            violations.push(format!(
                "{resource}: a 409 names holder {agent} until {expires_at}, a lease no operation created"
            ));
        }
    }

    if mode != Mode::Strict {
        return;
    }

    // What happened to each lease, by its token.
    let mut lives: Vec<Life> = grants
        .iter()
        .map(|&(grant, lease)| Life {
            grant,
            lease,
            refreshes: Vec::new(),
            unknown_refreshes: Vec::new(),
            release: None,
            unknown_releases: Vec::new(),
        })
        .collect();
    let by_token: HashMap<&str, usize> = lives
        .iter()
        .enumerate()
        .map(|(at, life)| (life.lease.token.as_str(), at))
        .collect();
    for op in ops {
        let (Kind::Release { of } | Kind::Refresh { of, .. }) = op.kind else {
            continue;
        };
        let token = op.token.as_deref().unwrap_or_default();
        let Some(&at) = by_token.get(token) else {
            if matches!(op.outcome, Outcome::Released | Outcome::Refreshed(_)) {
                violations.push(format!(
                    "{resource}: a change with a token no grant returned succeeded (fence {of})"
                ));
            }
            continue;
        };
        let life = &mut lives[at];
        match (&op.kind, &op.outcome) {
            (Kind::Refresh { ttl_ms, .. }, Outcome::Refreshed(new)) => {
                if new.fence != life.lease.fence
                    || new.acquired_at != life.lease.acquired_at
                    || new.token != life.lease.token
                    || ttl_ms.is_some_and(|ttl| ttl != new.ttl_ms)
                {
                    violations.push(format!(
                        "{resource}: refresh of fence {} answered another lease: {new:?}",
                        life.lease.fence
                    ));
                }
                let time = new.expires_at - i64::try_from(new.ttl_ms).expect("a small ttl");
                life.refreshes.push((time, new.expires_at, op));
            }
            (Kind::Refresh { .. }, Outcome::Unknown(_)) => life.unknown_refreshes.push(op),
            (Kind::Release { .. }, Outcome::Released) => {
                if let Some(first) = life.release {
                    violations.push(format!(
                        "{resource}: fence {} released twice (at {} and {})",
                        life.lease.fence, first.invoked_wall, op.invoked_wall
                    ));
                }
                life.release = Some(op);
            }
            (Kind::Release { .. }, Outcome::Unknown(_)) => life.unknown_releases.push(op),
            _ => {}
        }
    }
    for life in &mut lives {
        life.refreshes.sort_by_key(|(time, _, _)| *time);
    }

    for (index, life) in lives.iter().enumerate() {
        let fence = life.lease.fence;
        let later = &lives[index + 1..];
        // Refreshes: only while the lease ran, and only while no newer grant existed.
        let mut end = life.lease.expires_at;
        for (time, new_end, op) in &life.refreshes {
            if *time < life.lease.acquired_at {
                violations.push(format!(
                    "{resource}: fence {fence} refreshed at {time}, before it was granted"
                ));
            }
            if *time >= end && !life.maybe_extended_before(*time) {
                violations.push(format!(
                    "{resource}: fence {fence} refreshed at {time}, after its lease ended at {end} (a stale token)"
                ));
            }
            if let Some(release) = life.release
                && *time > release.completed_wall + SLACK_MS
            {
                violations.push(format!(
                    "{resource}: fence {fence} refreshed at {time}, after its release completed at {}",
                    release.completed_wall
                ));
            }
            if let Some(newer) = later.iter().find(|n| n.lease.acquired_at <= *time) {
                violations.push(format!(
                    "{resource}: fence {fence} refreshed at {time} (invoked {}), after fence {} was granted at {} (a stale token)",
                    op.invoked_wall, newer.lease.fence, newer.lease.acquired_at
                ));
            }
            end = *new_end;
        }
        // A release: only while the lease ran, and only while no newer grant existed.
        if let Some(release) = life.release {
            let sent = release.invoked_wall;
            let end = life.end_at(sent + SLACK_MS);
            if end + SLACK_MS < sent && !life.maybe_extended_before(sent) {
                violations.push(format!(
                    "{resource}: fence {fence} released by a request sent at {sent}, after its lease ended at {end} (a stale token)"
                ));
            }
            if let Some(newer) = later.iter().find(|n| n.lease.acquired_at + SLACK_MS < sent) {
                violations.push(format!(
                    "{resource}: fence {fence} released by a request sent at {sent}, after fence {} was granted at {} (a stale token)",
                    newer.lease.fence, newer.lease.acquired_at
                ));
            }
        }
        // Mutual exclusion: every later grant starts after this lease ended or was released.
        for newer in later {
            let start = newer.lease.acquired_at;
            let end = life.end_at(start);
            if start >= end {
                // acquired_at only grows with the fence (checked above), and later refreshes
                // of this lease are checked as stale above.
                break;
            }
            if life.maybe_released_before(start) {
                continue;
            }
            violations.push(format!(
                "{resource}: fence {} granted at {start} (request {:?} after the first grant) while fence {fence} held the lock until {end}",
                newer.lease.fence,
                newer.grant.invoked.duration_since(lives[0].grant.invoked),
            ));
        }
    }
}

/// The checker on made-up histories: it passes a clean one and catches each violation.
mod checker_tests {
    use std::time::Duration;

    use super::*;

    /// Builds histories on a fake timeline where local time and wall time are the same ms.
    struct Timeline {
        history: History,
        origin: Instant,
    }

    impl Timeline {
        fn new() -> Self {
            Self {
                history: History::new(),
                origin: Instant::now(),
            }
        }

        fn at(&self, ms: i64) -> Instant {
            self.origin + Duration::from_millis(u64::try_from(ms).unwrap())
        }

        fn push(&self, agent: &str, kind: Kind, (from, to): (i64, i64), outcome: Outcome) {
            let token = match (&kind, &outcome) {
                (Kind::Acquire { .. }, Outcome::Granted(lease)) => Some(lease.token.clone()),
                (Kind::Acquire { .. }, _) => None,
                (Kind::Release { of } | Kind::Refresh { of, .. }, _) => Some(format!("t{of}")),
            };
            self.history.push(Op {
                resource: "r".into(),
                agent: agent.into(),
                token,
                kind,
                invoked: self.at(from),
                completed: self.at(to),
                invoked_wall: from,
                completed_wall: to,
                outcome,
            });
        }

        /// A grant of `fence` for [start, end), requested at `start - 1`.
        fn grant(&self, agent: &str, fence: u64, start: i64, end: i64) {
            let lease = lease(agent, fence, start, end);
            let ttl_ms = lease.ttl_ms;
            self.push(
                agent,
                Kind::Acquire { ttl_ms },
                (start - 1, start + 1),
                Outcome::Granted(lease),
            );
        }

        fn release(&self, agent: &str, fence: u64, at: i64, outcome: Outcome) {
            self.push(agent, Kind::Release { of: fence }, (at, at + 1), outcome);
        }
    }

    fn lease(agent: &str, fence: u64, start: i64, end: i64) -> Lease {
        Lease {
            resource: "r".into(),
            agent: agent.into(),
            token: format!("t{fence}"),
            fence,
            ttl_ms: u64::try_from(end - start).unwrap(),
            acquired_at: start,
            expires_at: end,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let t = Timeline::new();
        t.grant("a", 10, 1000, 1100);
        t.release("a", 10, 1050, Outcome::Released);
        t.grant("b", 11, 1060, 1160);
        // b outlives its lease: its late release is refused.
        t.grant("c", 12, 1160, 1260);
        t.release(
            "b",
            11,
            1200,
            Outcome::NotOwner {
                agent: "c".into(),
                expires_at: 1260,
            },
        );
        t.push(
            "d",
            Kind::Acquire { ttl_ms: 100 },
            (1170, 1171),
            Outcome::Held {
                agent: "c".into(),
                expires_at: 1260,
            },
        );
        let counts = t.history.check(Mode::Strict);
        assert_eq!(counts.grants, 3);
        assert_eq!(counts.stale_refusals(), 1);
    }

    #[test]
    #[should_panic(expected = "while fence 10 held the lock")]
    fn overlapping_leases_are_caught() {
        let t = Timeline::new();
        t.grant("a", 10, 1000, 1100);
        t.grant("b", 11, 1050, 1150);
        t.history.check(Mode::Strict);
    }

    #[test]
    #[should_panic(expected = "fence 11 was granted before fence 10 was even requested")]
    fn fences_going_backwards_are_caught() {
        let t = Timeline::new();
        t.grant("a", 11, 1000, 1100);
        t.release("a", 11, 1010, Outcome::Released);
        t.grant("b", 10, 1200, 1300);
        t.history.check(Mode::RedisLostWrites);
    }

    #[test]
    #[should_panic(expected = "after its lease ended at 1100 (a stale token)")]
    fn a_refresh_after_the_lease_ended_is_caught() {
        let t = Timeline::new();
        t.grant("a", 10, 1000, 1100);
        t.push(
            "a",
            Kind::Refresh {
                of: 10,
                ttl_ms: None,
            },
            (1149, 1151),
            Outcome::Refreshed(Lease {
                expires_at: 1250,
                ..lease("a", 10, 1000, 1100)
            }),
        );
        t.history.check(Mode::Strict);
    }

    #[test]
    #[should_panic(expected = "after fence 11 was granted at 1100 (a stale token)")]
    fn a_release_by_a_superseded_holder_is_caught() {
        let t = Timeline::new();
        t.grant("a", 10, 1000, 1100);
        t.grant("b", 11, 1100, 1200);
        t.release("a", 10, 1150, Outcome::Released);
        t.history.check(Mode::Strict);
    }

    #[test]
    fn an_unknown_acquire_may_explain_a_conflict_and_a_gap() {
        let t = Timeline::new();
        t.push(
            "ghost",
            Kind::Acquire { ttl_ms: 500 },
            (1000, 1300),
            Outcome::Unknown("503 store_unavailable".into()),
        );
        t.push(
            "b",
            Kind::Acquire { ttl_ms: 100 },
            (1400, 1401),
            Outcome::Held {
                agent: "ghost".into(),
                expires_at: 1800,
            },
        );
        let counts = t.history.check(Mode::Strict);
        assert_eq!((counts.unknown_acquires, counts.conflicts), (1, 1));
    }

    #[test]
    #[should_panic(expected = "a lease no operation created")]
    fn a_conflict_with_a_holder_nobody_created_is_caught() {
        let t = Timeline::new();
        t.push(
            "b",
            Kind::Acquire { ttl_ms: 100 },
            (1400, 1401),
            Outcome::Held {
                agent: "ghost".into(),
                expires_at: 1800,
            },
        );
        t.history.check(Mode::Strict);
    }

    fn event(kind: &str, fence: u64, agent: &str, at: &str, extra: (&str, &str)) -> Value {
        let mut event = json!({
            "id": "1-0", "type": kind, "resource_id": "r", "agent_id": agent,
            "fencing_token": fence, "at": at,
        });
        event[extra.0] = json!(extra.1);
        event
    }

    #[test]
    #[should_panic(expected = "while fence 10 was never unlocked")]
    fn an_event_log_with_two_holders_is_caught() {
        let t = Timeline::new();
        let (a, b) = ("2026-01-01T00:00:01.000Z", "2026-01-01T00:00:01.050Z");
        let end = "2026-01-01T00:00:01.100Z";
        let a_ms = parse_rfc3339_ms(a);
        t.grant("a", 10, a_ms, a_ms + 100);
        t.grant("b", 11, a_ms + 50, a_ms + 150);
        t.history.check_events(&[
            event("resource.locked", 10, "a", a, ("expires_at", end)),
            event(
                "resource.locked",
                11,
                "b",
                b,
                ("expires_at", "2026-01-01T00:00:01.150Z"),
            ),
        ]);
    }

    #[test]
    fn rfc3339_parsing_matches_known_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), 0);
        assert_eq!(
            parse_rfc3339_ms("2025-11-26T13:40:00.123Z"),
            1_764_164_400_123
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00.000Z"),
            1_709_164_800_000
        );
        assert_eq!(
            parse_rfc3339_ms("2100-03-01T00:00:00.000Z"),
            4_107_542_400_000
        );
    }
}
