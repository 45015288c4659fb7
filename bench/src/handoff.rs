//! `handoff`: K waiters queue on one resource with `wait_ms`; each holder releases at
//! once. Measures the time from a holder sending its release to the next holder
//! receiving its grant, and grants per second. Checks on the way that fencing tokens
//! strictly increase and that no two workers ever hold the lock at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::cycle::{Pids, secs_ns, sleep_until};
use crate::http::HttpConn;
use crate::stats::{Cpu, CpuMark, Hist, Latency, now_ns, print_cpu, print_latency_table, round3};

/// How a handoff run is shaped.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffConfig {
    /// Workers queueing on the one resource.
    pub waiters: usize,
    /// The `wait_ms` of each acquire.
    pub wait_ms: u64,
    /// Lease length, in ms (long: leases end by release, not expiry).
    pub ttl_ms: u64,
    /// Unrecorded run-in, in seconds.
    pub warmup_s: f64,
    /// Recorded window, in seconds.
    pub duration_s: f64,
}

/// What a handoff run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffReport {
    /// Always `handoff`.
    pub scenario: &'static str,
    /// The run's shape.
    pub config: HandoffConfig,
    /// Grants in the window.
    pub grants: u64,
    /// Grants per second.
    pub grants_per_s: f64,
    /// Release sent by the holder to the grant received by the next holder.
    pub handoff: Latency,
    /// The holder's release round trip (send to 204), for comparison.
    pub release: Latency,
    /// Acquires that gave up after `wait_ms` (409).
    pub wait_timeouts: u64,
    /// Failed requests.
    pub errors: u64,
    /// Grants whose fencing token was not greater than the previous one (must be 0).
    pub fence_violations: u64,
    /// Grants made while another worker still held the lock (must be 0).
    pub overlaps: u64,
    /// CPU used in the window (per op = per grant).
    pub cpu: Cpu,
}

impl HandoffReport {
    /// Prints the run as a table.
    pub fn print(&self) {
        println!(
            "handoff: K={} {:.1}s: {:.0} grants/s ({} grants, {} wait timeouts, {} errors, {} fence violations, {} overlaps)",
            self.config.waiters,
            self.config.duration_s,
            self.grants_per_s,
            self.grants,
            self.wait_timeouts,
            self.errors,
            self.fence_violations,
            self.overlaps
        );
        print_latency_table(&[
            ("release sent -> next grant".to_owned(), &self.handoff),
            ("release round trip".to_owned(), &self.release),
        ]);
        print_cpu(&self.cpu, "grant");
    }
}

#[derive(Default)]
struct Shared {
    /// When the current holder sent its release (0: no release yet).
    release_sent: AtomicU64,
    /// Highest fencing token seen.
    fence: AtomicU64,
    /// Whether a worker holds the lock, as far as the workers know.
    held: AtomicBool,
}

#[derive(Default)]
struct Out {
    grants: u64,
    timeouts: u64,
    errors: u64,
    fence_violations: u64,
    overlaps: u64,
    handoff: Hist,
    release: Hist,
}

/// Finds `"fencing_token":N` in a grant body.
fn fencing_token(body: &[u8]) -> Option<u64> {
    let key = b"\"fencing_token\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Runs the scenario against lockd at `lockd_addr`.
pub async fn run(lockd_addr: &str, config: &HandoffConfig, pids: Pids) -> HandoffReport {
    let shared = Arc::new(Shared::default());
    let start = now_ns() + secs_ns(config.warmup_s);
    let end = start + secs_ns(config.duration_s);
    let resource = format!("/locks/handoff:{}", now_ns());
    let tasks: Vec<_> = (0..config.waiters)
        .map(|id| {
            let shared = shared.clone();
            let addr = lockd_addr.to_owned();
            let path = resource.clone();
            let body = format!(
                r#"{{"agent_id":"waiter-{id}","ttl_ms":{},"wait_ms":{}}}"#,
                config.ttl_ms, config.wait_ms
            );
            tokio::spawn(async move {
                let mut out = Out::default();
                let mut conn = match HttpConn::connect(&addr).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("lockd-bench: connect to lockd: {e}");
                        out.errors += 1;
                        return out;
                    }
                };
                while now_ns() < end {
                    let granted = match conn
                        .request("POST", &path, None, Some(body.as_bytes()))
                        .await
                    {
                        Ok(r) if r.status == 201 => r,
                        Ok(r) if r.status == 409 => {
                            out.timeouts += 1;
                            continue;
                        }
                        Ok(r) => {
                            out.errors += 1;
                            eprintln!(
                                "lockd-bench: acquire answered {}: {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            );
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Err(e) => {
                            out.errors += 1;
                            eprintln!("lockd-bench: acquire: {e}");
                            return out;
                        }
                    };
                    let g = now_ns();
                    if shared.held.swap(true, Ordering::SeqCst) {
                        out.overlaps += 1;
                    }
                    let previous = shared.release_sent.load(Ordering::SeqCst);
                    if previous != 0 && g >= start && g < end {
                        out.grants += 1;
                        out.handoff.record(g.saturating_sub(previous));
                    }
                    if let Some(fence) = fencing_token(&granted.body)
                        && shared.fence.fetch_max(fence, Ordering::SeqCst) >= fence
                    {
                        out.fence_violations += 1;
                    }
                    let Some(token) = granted.lock_token else {
                        out.errors += 1;
                        return out;
                    };
                    shared.held.store(false, Ordering::SeqCst);
                    let sent = now_ns();
                    shared.release_sent.store(sent, Ordering::SeqCst);
                    match conn.request("DELETE", &path, Some(&token), None).await {
                        Ok(r) if r.status == 204 => {
                            if sent >= start && sent < end {
                                out.release.record(now_ns() - sent);
                            }
                        }
                        Ok(r) => {
                            out.errors += 1;
                            eprintln!("lockd-bench: release answered {}", r.status);
                        }
                        Err(e) => {
                            out.errors += 1;
                            eprintln!("lockd-bench: release: {e}");
                            return out;
                        }
                    }
                }
                out
            })
        })
        .collect();
    sleep_until(start).await;
    let before = CpuMark::take(pids.redis, pids.lockd);
    sleep_until(end).await;
    let after = CpuMark::take(pids.redis, pids.lockd);
    let mut total = Out::default();
    for task in tasks {
        let Ok(out) = task.await else {
            total.errors += 1;
            continue;
        };
        total.grants += out.grants;
        total.timeouts += out.timeouts;
        total.errors += out.errors;
        total.fence_violations += out.fence_violations;
        total.overlaps += out.overlaps;
        total.handoff.merge(&out.handoff);
        total.release.merge(&out.release);
    }
    let seconds = (end - start) as f64 / 1e9;
    HandoffReport {
        scenario: "handoff",
        config: config.clone(),
        grants: total.grants,
        grants_per_s: round3(total.grants as f64 / seconds),
        handoff: total.handoff.summary(),
        release: total.release.summary(),
        wait_timeouts: total.timeouts,
        errors: total.errors,
        fence_violations: total.fence_violations,
        overlaps: total.overlaps,
        cpu: before.until(&after, total.grants),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_fencing_token() {
        let body = br#"{"resource_id":"r","fencing_token":1795705605399261,"ttl_ms":5}"#;
        assert_eq!(super::fencing_token(body), Some(1_795_705_605_399_261));
        assert_eq!(super::fencing_token(b"{}"), None);
    }
}
