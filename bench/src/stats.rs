//! Latency histograms (HDR, nanoseconds, 3 significant digits), CPU accounting, and
//! the report every scenario prints as a table and as JSON.

use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Nanoseconds since the tool started, on the monotonic clock every thread shares.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram in nanoseconds, 1 ns to 60 s.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    /// Records one latency (clamped to the histogram's range).
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        let _ = self.0.add(&other.0);
    }

    /// The percentiles of the report.
    pub fn summary(&self) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = self.0.is_empty();
        let at = |q: f64| {
            if empty {
                0.0
            } else {
                us(self.0.value_at_quantile(q))
            }
        };
        Latency {
            count: self.0.len(),
            min_us: if empty { 0.0 } else { us(self.0.min()) },
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if empty { 0.0 } else { us(self.0.max()) },
            mean_us: if empty { 0.0 } else { self.0.mean() / 1000.0 },
        }
    }
}

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// CPU time used during a measurement window, per process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cpu {
    /// redis-server, in CPU-seconds per wall-clock second (1.0 = one core busy).
    pub redis_cores: Option<f64>,
    /// lockd, likewise.
    pub lockd_cores: Option<f64>,
    /// This tool, likewise.
    pub bench_cores: f64,
    /// redis-server CPU microseconds per operation counted in `throughput`.
    pub redis_us_per_op: Option<f64>,
    /// lockd CPU microseconds per operation.
    pub lockd_us_per_op: Option<f64>,
    /// This tool's CPU microseconds per operation.
    pub bench_us_per_op: f64,
}

/// CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at_ns: u64,
    redis_us: Option<u64>,
    lockd_us: Option<u64>,
    bench_us: u64,
}

impl CpuMark {
    /// Reads the counters of the given processes and of this one.
    pub fn take(redis_pid: Option<u32>, lockd_pid: Option<u32>) -> Self {
        Self {
            at_ns: now_ns(),
            redis_us: redis_pid.and_then(crate::env::cpu_us),
            lockd_us: lockd_pid.and_then(crate::env::cpu_us),
            bench_us: crate::env::self_cpu_us(),
        }
    }

    /// CPU used between `self` and `later`, per second and per one of `ops`.
    pub fn until(&self, later: &Self, ops: u64) -> Cpu {
        let wall_s = (later.at_ns.saturating_sub(self.at_ns)) as f64 / 1e9;
        let ops = ops.max(1) as f64;
        let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64);
        let cores = |us: Option<f64>| us.map(|us| round3(us / 1e6 / wall_s));
        let per_op = |us: Option<f64>| us.map(|us| round3(us / ops));
        let redis = diff(self.redis_us, later.redis_us);
        let lockd = diff(self.lockd_us, later.lockd_us);
        let bench = later.bench_us.saturating_sub(self.bench_us) as f64;
        Cpu {
            redis_cores: cores(redis),
            lockd_cores: cores(lockd),
            bench_cores: round3(bench / 1e6 / wall_s),
            redis_us_per_op: per_op(redis),
            lockd_us_per_op: per_op(lockd),
            bench_us_per_op: round3(bench / ops),
        }
    }
}

/// Rounds to 3 decimals, for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Smallest and largest of `values`.
pub fn range(values: &[f64]) -> [f64; 2] {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        [0.0, 0.0]
    } else {
        [min, max]
    }
}

/// Prints latency rows as a fixed-width table.
pub fn print_latency_table(rows: &[(String, &Latency)]) {
    println!(
        "  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, l) in rows {
        println!(
            "  {:<28} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name, l.count, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
    }
}

/// Prints the CPU line of a run.
pub fn print_cpu(cpu: &Cpu, unit: &str) {
    let fmt = |cores: Option<f64>, per: Option<f64>| match (cores, per) {
        (Some(c), Some(p)) => format!("{c:.2} cores, {p:.1} µs/{unit}"),
        _ => "-".to_owned(),
    };
    println!(
        "  cpu: redis {} | lockd {} | bench {}",
        fmt(cpu.redis_cores, cpu.redis_us_per_op),
        fmt(cpu.lockd_cores, cpu.lockd_us_per_op),
        fmt(Some(cpu.bench_cores), Some(cpu.bench_us_per_op)),
    );
}
