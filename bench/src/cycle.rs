//! The lock cycle, acquire then release, by C concurrent workers on random resources
//! among N: straight on Redis (`redis`, the ceiling) and through lockd (`http`, the
//! product). Each worker has its own connection and one request in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::http::HttpConn;
use crate::resp::{Reply, Resp};
use crate::stats::{Cpu, CpuMark, Hist, Latency, now_ns, print_cpu, print_latency_table, round3};

/// The compare-and-delete half of the raw cycle: delete the key only if it still holds
/// our token (the classic single-instance Redis lock release).
pub const RAW_RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// How a cycle run is shaped.
#[derive(Debug, Clone, Serialize)]
pub struct CycleConfig {
    /// Concurrent workers, each with its own connection.
    pub concurrency: usize,
    /// Resources to pick from at random.
    pub resources: u64,
    /// Lease length of each acquire, in ms.
    pub ttl_ms: u64,
    /// Unrecorded run-in, in seconds.
    pub warmup_s: f64,
    /// Recorded window, in seconds.
    pub duration_s: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// `redis` or `http`.
    pub scenario: &'static str,
    /// The run's shape.
    pub config: CycleConfig,
    /// Complete cycles (acquired and released) in the window.
    pub cycles: u64,
    /// Complete cycles per second.
    pub cycles_per_s: f64,
    /// Acquires that found the lock held (another worker drew the same resource).
    pub busy: u64,
    /// Failed requests (connection errors, unexpected replies).
    pub errors: u64,
    /// Acquire start to release end.
    pub cycle: Latency,
    /// The acquire request alone.
    pub acquire: Latency,
    /// The release request alone.
    pub release: Latency,
    /// CPU used in the window (per op = per cycle).
    pub cpu: Cpu,
}

impl CycleReport {
    /// Prints the run as a table.
    pub fn print(&self) {
        println!(
            "{} cycle: C={} N={} {:.1}s: {:.0} cycles/s ({} cycles, {} busy, {} errors)",
            self.scenario,
            self.config.concurrency,
            self.config.resources,
            self.config.duration_s,
            self.cycles_per_s,
            self.cycles,
            self.busy,
            self.errors
        );
        print_latency_table(&[
            ("cycle".to_owned(), &self.cycle),
            ("acquire".to_owned(), &self.acquire),
            ("release".to_owned(), &self.release),
        ]);
        print_cpu(&self.cpu, "cycle");
    }
}

/// The recorded window, in [`now_ns`] time.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }
}

#[derive(Default)]
struct WorkerOut {
    cycles: u64,
    busy: u64,
    errors: u64,
    cycle: Hist,
    acquire: Hist,
    release: Hist,
}

impl WorkerOut {
    fn record(&mut self, window: Window, t0: u64, t1: u64, t2: u64) {
        if window.contains(t2) {
            self.cycles += 1;
            self.cycle.record(t2 - t0);
            self.acquire.record(t1 - t0);
            self.release.record(t2 - t1);
        }
    }
}

/// A small, fast PRNG (splitmix64): the tool must not spend its CPU on randomness.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_ns())
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Process ids whose CPU time the report includes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pids {
    /// redis-server, when the tool started it.
    pub redis: Option<u32>,
    /// lockd.
    pub lockd: Option<u32>,
}

async fn drive<F, Fut>(
    scenario: &'static str,
    config: &CycleConfig,
    pids: Pids,
    worker: F,
) -> CycleReport
where
    F: Fn(usize, Window) -> Fut,
    Fut: Future<Output = WorkerOut> + Send + 'static,
{
    let start = now_ns() + secs_ns(config.warmup_s);
    let window = Window {
        start,
        end: start + secs_ns(config.duration_s),
    };
    let tasks: Vec<_> = (0..config.concurrency)
        .map(|id| tokio::spawn(worker(id, window)))
        .collect();
    sleep_until(window.start).await;
    let before = CpuMark::take(pids.redis, pids.lockd);
    sleep_until(window.end).await;
    let after = CpuMark::take(pids.redis, pids.lockd);
    let mut total = WorkerOut::default();
    for task in tasks {
        match task.await {
            Ok(out) => {
                total.cycles += out.cycles;
                total.busy += out.busy;
                total.errors += out.errors;
                total.cycle.merge(&out.cycle);
                total.acquire.merge(&out.acquire);
                total.release.merge(&out.release);
            }
            Err(_) => total.errors += 1,
        }
    }
    let seconds = (window.end - window.start) as f64 / 1e9;
    CycleReport {
        scenario,
        config: config.clone(),
        cycles: total.cycles,
        cycles_per_s: round3(total.cycles as f64 / seconds),
        busy: total.busy,
        errors: total.errors,
        cycle: total.cycle.summary(),
        acquire: total.acquire.summary(),
        release: total.release.summary(),
        cpu: before.until(&after, total.cycles),
    }
}

/// Seconds (fractional) as nanoseconds.
pub fn secs_ns(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1e9) as u64
}

/// Sleeps until [`now_ns`] reaches `t`.
pub async fn sleep_until(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// Complains about the first few errors of a run, not about every one.
fn report_error(what: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SHOWN: AtomicU32 = AtomicU32::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("lockd-bench: {what}");
    }
}

/// Loads the compare-and-delete script; returns its SHA for EVALSHA.
pub async fn load_raw_script(redis_addr: &str) -> Result<String, String> {
    let mut conn = Resp::connect(redis_addr)
        .await
        .map_err(|e| format!("cannot connect to Redis at {redis_addr}: {e}"))?;
    match conn
        .cmd(&[b"SCRIPT", b"LOAD", RAW_RELEASE_SCRIPT.as_bytes()])
        .await
    {
        Ok(Reply::Bulk(Some(sha))) => String::from_utf8(sha).map_err(|e| e.to_string()),
        other => Err(format!("SCRIPT LOAD answered {other:?}")),
    }
}

/// `redis`: SET key token NX PX ttl, then EVALSHA compare-and-delete.
pub async fn run_redis(redis_addr: &str, config: &CycleConfig, pids: Pids) -> CycleReport {
    let sha: Arc<str> = match load_raw_script(redis_addr).await {
        Ok(sha) => sha.into(),
        Err(e) => {
            report_error(&e);
            "0".into()
        }
    };
    let addr: Arc<str> = redis_addr.into();
    let resources = config.resources.max(1);
    let ttl = config.ttl_ms.to_string();
    drive("redis", config, pids, move |id, window| {
        let (addr, sha, ttl) = (addr.clone(), sha.clone(), ttl.clone());
        async move {
            let mut out = WorkerOut::default();
            let mut rng = Rng::new(id as u64 + 1);
            let mut conn = None;
            let mut seq = 0u64;
            let mut key = String::with_capacity(40);
            let mut token = String::with_capacity(40);
            while now_ns() < window.end {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Resp::connect(&addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            out.errors += 1;
                            report_error(&format!("connect to Redis: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                seq += 1;
                key.clear();
                token.clear();
                use std::fmt::Write;
                let _ = write!(key, "lockd-bench:raw:{}", rng.next_u64() % resources);
                let _ = write!(token, "w{id}-{seq}");
                let t0 = now_ns();
                let set = c
                    .cmd(&[
                        b"SET",
                        key.as_bytes(),
                        token.as_bytes(),
                        b"NX",
                        b"PX",
                        ttl.as_bytes(),
                    ])
                    .await;
                let t1 = now_ns();
                match set {
                    Ok(Reply::Simple(_)) => {}
                    Ok(Reply::Bulk(None)) => {
                        if window.contains(t1) {
                            out.busy += 1;
                        }
                        continue;
                    }
                    other => {
                        out.errors += 1;
                        report_error(&format!("SET NX answered {other:?}"));
                        conn = None;
                        continue;
                    }
                }
                let del = c
                    .cmd(&[
                        b"EVALSHA",
                        sha.as_bytes(),
                        b"1",
                        key.as_bytes(),
                        token.as_bytes(),
                    ])
                    .await;
                let t2 = now_ns();
                match del {
                    Ok(Reply::Int(1)) => out.record(window, t0, t1, t2),
                    other => {
                        out.errors += 1;
                        report_error(&format!("compare-and-delete answered {other:?}"));
                        conn = None;
                    }
                }
            }
            out
        }
    })
    .await
}

/// `http`: POST /locks/{id} then DELETE /locks/{id} with the token, keep-alive.
pub async fn run_http(lockd_addr: &str, config: &CycleConfig, pids: Pids) -> CycleReport {
    let addr: Arc<str> = lockd_addr.into();
    let resources = config.resources.max(1);
    let ttl_ms = config.ttl_ms;
    drive("http", config, pids, move |id, window| {
        let addr = addr.clone();
        async move {
            let mut out = WorkerOut::default();
            let mut rng = Rng::new(id as u64 + 1);
            let mut conn: Option<HttpConn> = None;
            let body = format!(r#"{{"agent_id":"bench-{id}","ttl_ms":{ttl_ms}}}"#);
            let mut path = String::with_capacity(40);
            while now_ns() < window.end {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match HttpConn::connect(&addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            out.errors += 1;
                            report_error(&format!("connect to lockd: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                path.clear();
                use std::fmt::Write;
                let _ = write!(path, "/locks/bench:{}", rng.next_u64() % resources);
                let t0 = now_ns();
                let acquired = c.request("POST", &path, None, Some(body.as_bytes())).await;
                let t1 = now_ns();
                let token = match acquired {
                    Ok(r) if r.status == 201 => match r.lock_token {
                        Some(token) => token,
                        None => {
                            out.errors += 1;
                            report_error("201 without a Lock-Token header");
                            continue;
                        }
                    },
                    Ok(r) if r.status == 409 => {
                        if window.contains(t1) {
                            out.busy += 1;
                        }
                        continue;
                    }
                    Ok(r) => {
                        out.errors += 1;
                        report_error(&format!(
                            "acquire answered {}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                        continue;
                    }
                    Err(e) => {
                        out.errors += 1;
                        report_error(&format!("acquire: {e}"));
                        conn = None;
                        continue;
                    }
                };
                let released = c.request("DELETE", &path, Some(&token), None).await;
                let t2 = now_ns();
                match released {
                    Ok(r) if r.status == 204 => out.record(window, t0, t1, t2),
                    Ok(r) => {
                        out.errors += 1;
                        report_error(&format!(
                            "release answered {}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ));
                    }
                    Err(e) => {
                        out.errors += 1;
                        report_error(&format!("release: {e}"));
                        conn = None;
                    }
                }
            }
            out
        }
    })
    .await
}
