//! `sse`: S subscribers on `GET /events`, then a steady stream of lock changes.
//! Measures lockd's RSS with the subscribers connected and idle (per subscriber, against
//! the RSS before they connected), and the delivery latency from each change's HTTP
//! response (as its maker sees it) to each subscriber's receipt of its event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::cycle::{Pids, secs_ns, sleep_until};
use crate::env::rss_kib;
use crate::http::{HttpConn, SseStream, realtime_ns};
use crate::stats::{Cpu, CpuMark, Hist, Latency, now_ns, print_cpu, print_latency_table, round3};

/// How an SSE run is shaped.
#[derive(Debug, Clone, Serialize)]
pub struct SseConfig {
    /// Subscribers.
    pub subscribers: usize,
    /// Lock changes (events) per second while measuring delivery, evenly spaced:
    /// acquire sse:n, then release it, then acquire sse:n+1, ...
    pub rate: f64,
    /// How long the changes run, in seconds.
    pub duration_s: f64,
    /// Idle time after the last subscriber connected, before RSS is read, in seconds.
    pub settle_s: f64,
}

/// What an SSE run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SseReport {
    /// Always `sse`.
    pub scenario: &'static str,
    /// The run's shape.
    pub config: SseConfig,
    /// Subscribers that connected.
    pub connected: usize,
    /// Time to connect them all, in seconds.
    pub connect_s: f64,
    /// lockd RSS before any subscriber, in KiB.
    pub rss_before_kib: u64,
    /// lockd RSS with every subscriber connected and idle, in KiB.
    pub rss_idle_kib: u64,
    /// lockd RSS after the changes were delivered, in KiB.
    pub rss_after_kib: u64,
    /// (idle - before) / connected, in KiB.
    pub rss_per_subscriber_kib: f64,
    /// Events the changes produced.
    pub events: u64,
    /// events × connected.
    pub deliveries_expected: u64,
    /// Events received by subscribers.
    pub deliveries: u64,
    /// Deliveries that reached their subscriber before the change's response reached
    /// its maker (kernel stamps; counted as 0). The event is published inside the
    /// change's script, before Redis replies to lockd, so this happens.
    pub early: u64,
    /// Change response to each subscriber, both as the kernel received them (socket
    /// receive stamps, `SO_TIMESTAMPNS`): what lockd delivers, independent of how
    /// quickly this tool reads 1,000s of sockets.
    pub delivery: Latency,
    /// The same as this tool's tasks saw it: includes the time the tool takes to get
    /// to each of its sockets (one thread reads them all, by default).
    pub delivery_read: Latency,
    /// Subscribers whose stream failed or ended early.
    pub errors: u64,
    /// CPU used while the changes ran (per op = per delivery).
    pub cpu: Cpu,
}

impl SseReport {
    /// Prints the run as a table.
    pub fn print(&self) {
        println!(
            "sse: S={} ({} connected in {:.1}s), {} events at {:.0}/s: {}/{} deliveries ({} early, {} stream errors)",
            self.config.subscribers,
            self.connected,
            self.connect_s,
            self.events,
            self.config.rate,
            self.deliveries,
            self.deliveries_expected,
            self.early,
            self.errors
        );
        println!(
            "  lockd RSS: {:.1} MiB before, {:.1} MiB with the subscribers idle ({:.1} KiB each), {:.1} MiB after the changes",
            self.rss_before_kib as f64 / 1024.0,
            self.rss_idle_kib as f64 / 1024.0,
            self.rss_per_subscriber_kib,
            self.rss_after_kib as f64 / 1024.0
        );
        print_latency_table(&[
            ("change -> subscriber socket".to_owned(), &self.delivery),
            ("change -> read by the tool".to_owned(), &self.delivery_read),
        ]);
        print_cpu(&self.cpu, "delivery");
    }
}

/// The index of a frame's event in the change table: 2n for `resource.locked` of
/// `sse:n`, 2n+1 for its `resource.unlocked`; `None` for anything else.
fn event_index(frame: &[u8]) -> Option<usize> {
    let kind = if contains(frame, b"\nevent: resource.locked\n") {
        0
    } else if contains(frame, b"\nevent: resource.unlocked\n") {
        1
    } else {
        return None;
    };
    let key = b"\"resource_id\":\"sse:";
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let n: usize = std::str::from_utf8(
        &frame[at..at
            + frame[at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()],
    )
    .ok()?
    .parse()
    .ok()?;
    Some(2 * n + kind)
}

/// Says why the changes' driver failed, the first few times.
fn report_driver_error(what: &str, outcome: &std::io::Result<crate::http::Response>) {
    static SHOWN: AtomicUsize = AtomicUsize::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        match outcome {
            Ok(r) => eprintln!(
                "lockd-bench: sse driver: {what} answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(e) => eprintln!("lockd-bench: sse driver: {what}: {e}"),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs the scenario against lockd at `lockd_addr` (process `pids.lockd`).
pub async fn run(lockd_addr: &str, config: &SseConfig, pids: Pids) -> SseReport {
    let rss = || pids.lockd.and_then(rss_kib).unwrap_or(0);
    let rss_before_kib = rss();
    let (stop_tx, stop_rx) = watch::channel(false);
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let deliveries = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(128));

    let connect_start = now_ns();
    let subscribers: Vec<_> = (0..config.subscribers)
        .map(|_| {
            let addr = lockd_addr.to_owned();
            let (connected, failed, deliveries, gate) = (
                connected.clone(),
                failed.clone(),
                deliveries.clone(),
                gate.clone(),
            );
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                // (event index, read by the tool at, kernel receive stamp)
                let mut seen: Vec<(u32, u64, u64)> = Vec::new();
                let stream = {
                    let _permit = gate.acquire().await;
                    SseStream::open(&addr, "/events", true).await
                };
                let mut stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("lockd-bench: subscribe: {e}");
                        }
                        return (seen, true);
                    }
                };
                connected.fetch_add(1, Ordering::Relaxed);
                loop {
                    tokio::select! {
                        frame = stream.next_frame() => match frame {
                            Ok(Some((frame, stamp))) => {
                                let t = now_ns();
                                if let Some(index) = event_index(&frame) {
                                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                                    seen.push((index, t, stamp.unwrap_or(0)));
                                    deliveries.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(None) | Err(_) => return (seen, !*stop.borrow()),
                        },
                        _ = stop.changed() => return (seen, false),
                    }
                }
            })
        })
        .collect();

    // Wait for every subscriber to connect or fail (bounded: 60 s).
    let connect_deadline = now_ns() + secs_ns(60.0);
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < config.subscribers
        && now_ns() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = (now_ns() - connect_start) as f64 / 1e9;
    let n_connected = connected.load(Ordering::Relaxed);
    sleep_until(now_ns() + secs_ns(config.settle_s)).await;
    let rss_idle_kib = rss();

    // The changes, evenly spaced: acquire sse:n, release it, acquire sse:n+1, ...,
    // noting when each response arrived.
    let cycles = (config.rate * config.duration_s / 2.0).ceil().max(1.0) as usize;
    // When each change's response arrived: kernel stamp, and as the driver read it.
    let made: Vec<(AtomicU64, AtomicU64)> = (0..2 * cycles)
        .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
        .collect();
    let note = |index: usize, stamp: Option<u64>| {
        made[index]
            .0
            .store(stamp.unwrap_or_else(realtime_ns), Ordering::SeqCst);
        made[index].1.store(now_ns(), Ordering::SeqCst);
    };
    let interval_ns = secs_ns(1.0 / config.rate.max(0.001));
    let before = CpuMark::take(pids.redis, pids.lockd);
    let mut events = 0u64;
    let mut driver_errors = 0u64;
    match HttpConn::connect_with(lockd_addr, true).await {
        Ok(mut conn) => {
            let body = br#"{"agent_id":"sse-driver","ttl_ms":30000}"#;
            let first = now_ns();
            for n in 0..cycles {
                sleep_until(first + 2 * n as u64 * interval_ns).await;
                let path = format!("/locks/sse:{n}");
                let token = match conn.request("POST", &path, None, Some(body)).await {
                    Ok(r) if r.status == 201 => {
                        note(2 * n, r.stamp);
                        events += 1;
                        r.lock_token.unwrap_or_default()
                    }
                    other => {
                        driver_errors += 1;
                        report_driver_error("acquire", &other);
                        continue;
                    }
                };
                sleep_until(first + (2 * n as u64 + 1) * interval_ns).await;
                match conn.request("DELETE", &path, Some(&token), None).await {
                    Ok(r) if r.status == 204 => {
                        note(2 * n + 1, r.stamp);
                        events += 1;
                    }
                    other => {
                        driver_errors += 1;
                        report_driver_error("release", &other);
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("lockd-bench: connect to lockd: {e}");
            driver_errors += 1;
        }
    }
    // Let the last deliveries arrive (up to 5 s).
    let expected = events * n_connected as u64;
    let grace = now_ns() + secs_ns(5.0);
    while deliveries.load(Ordering::Relaxed) < expected && now_ns() < grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = CpuMark::take(pids.redis, pids.lockd);
    let rss_after_kib = rss();
    let _ = stop_tx.send(true);

    let mut socket = Hist::default();
    let mut read = Hist::default();
    let mut early = 0u64;
    let mut received = 0u64;
    let mut errors = driver_errors;
    for task in subscribers {
        let Ok((seen, failed)) = task.await else {
            errors += 1;
            continue;
        };
        errors += u64::from(failed);
        for (index, read_at, stamp) in seen {
            let Some((made_stamp, made_read)) = made
                .get(index as usize)
                .map(|(s, r)| (s.load(Ordering::SeqCst), r.load(Ordering::SeqCst)))
            else {
                continue;
            };
            if made_read == 0 {
                continue;
            }
            received += 1;
            if stamp != 0 {
                if stamp < made_stamp {
                    early += 1;
                }
                socket.record(stamp.saturating_sub(made_stamp));
            }
            read.record(read_at.saturating_sub(made_read));
        }
    }
    let per_subscriber = if n_connected > 0 {
        round3(rss_idle_kib.saturating_sub(rss_before_kib) as f64 / n_connected as f64)
    } else {
        0.0
    };
    SseReport {
        scenario: "sse",
        config: config.clone(),
        connected: n_connected,
        connect_s: round3(connect_s),
        rss_before_kib,
        rss_idle_kib,
        rss_after_kib,
        rss_per_subscriber_kib: per_subscriber,
        events,
        deliveries_expected: expected,
        deliveries: received,
        early,
        delivery: socket.summary(),
        delivery_read: read.summary(),
        errors,
        cpu: before.until(&after, received),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn indexes_the_events_of_the_changes() {
        let locked = b"id: 1-0\nevent: resource.locked\ndata: {\"id\":\"1-0\",\"type\":\"resource.locked\",\"resource_id\":\"sse:12\"}";
        let unlocked = b"id: 1-1\nevent: resource.unlocked\ndata: {\"resource_id\":\"sse:3\"}";
        assert_eq!(super::event_index(locked), Some(24));
        assert_eq!(super::event_index(unlocked), Some(7));
        assert_eq!(super::event_index(b"retry: 1000"), None);
        assert_eq!(super::event_index(b":"), None);
    }
}
