//! `lockd-bench`: measures lockd against raw Redis on the same machine, in the same run.
//!
//! It starts its own redis-server (no persistence, a free loopback port) and its own
//! lockd (the release binary, built with cargo unless `--lockd-bin` names one), runs the
//! scenario, prints a table (or JSON), and stops both by PID. Every run is bounded in
//! time and talks to loopback only.
//!
//! Scenarios: `redis` (the raw lock cycle on Redis: the ceiling), `http` (the same cycle
//! through lockd: the product), `compare` (the two alternately, with their ratios),
//! `handoff` (release-to-next-grant among waiters), `sse` (event fan-out latency and RSS
//! per subscriber), and `all` (each of them with the figures the goals name).

mod cycle;
mod env;
mod handoff;
mod http;
mod resp;
mod sse;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

use cycle::{CycleConfig, CycleReport, Pids};
use env::Proc;
use handoff::HandoffConfig;
use sse::SseConfig;
use stats::{median, range, round3};

/// Load tool for lockd: the lock cycle on raw Redis and through lockd, lock handoff and
/// SSE fan-out. Starts its own redis-server and lockd on loopback and stops them after.
#[derive(Debug, Parser)]
#[command(name = "lockd-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// Use this Redis (redis://host:port) instead of starting a private redis-server.
    /// Its keys are left behind: point it at a scratch Redis.
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// The redis-server binary to start.
    #[arg(
        long,
        global = true,
        default_value = "redis-server",
        value_name = "PATH"
    )]
    redis_server: String,
    /// The lockd binary; default: `cargo build --release -p lockd` and use that.
    #[arg(long, global = true, value_name = "PATH")]
    lockd_bin: Option<PathBuf>,
    /// Extra environment for lockd, such as LOCKD_REDIS__POOL_SIZE=32 (repeatable).
    #[arg(long = "lockd-env", global = true, value_name = "KEY=VALUE", value_parser = parse_env)]
    lockd_env: Vec<(String, String)>,
    /// Threads of the tool's own runtime (1: a current-thread runtime).
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    client_threads: usize,
    /// Unrecorded run-in before each measurement, in seconds.
    #[arg(long, global = true, default_value_t = 1.0, value_name = "SECS")]
    warmup: f64,
    /// Length of each measurement, in seconds.
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECS")]
    duration: f64,
    /// Also write the results as JSON to this file ("-": print JSON instead of tables).
    #[arg(long, global = true, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct CycleArgs {
    /// Concurrent workers, each with its own connection.
    #[arg(short = 'c', long, default_value_t = 64)]
    concurrency: usize,
    /// Resources to pick from at random.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    resources: u64,
    /// Lease length of each acquire, in ms.
    #[arg(long, default_value_t = 30_000)]
    ttl_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The raw lock cycle on Redis: SET key token NX PX, then a compare-and-delete
    /// script by EVALSHA (the ceiling).
    Redis(CycleArgs),
    /// The lock cycle through lockd: POST then DELETE /locks/{id}, keep-alive.
    Http(CycleArgs),
    /// `redis` and `http` alternately, pair by pair, with the ratio http/redis of each
    /// pair's throughput and p50 and their medians.
    Compare {
        /// Concurrency levels, comma-separated; each gets its own pairs.
        #[arg(short = 'c', long, value_delimiter = ',', default_values_t = [1usize, 64])]
        concurrency: Vec<usize>,
        /// Resources to pick from at random.
        #[arg(short = 'n', long, default_value_t = 10_000)]
        resources: u64,
        /// A-B pairs per concurrency level.
        #[arg(long, default_value_t = 5)]
        pairs: usize,
    },
    /// K waiters with wait_ms on one resource; each holder releases at once.
    Handoff {
        /// Waiters.
        #[arg(short = 'k', long, default_value_t = 16)]
        waiters: usize,
        /// wait_ms of each acquire.
        #[arg(long, default_value_t = 10_000)]
        wait_ms: u64,
    },
    /// S subscribers on /events and a steady stream of lock changes: delivery latency
    /// and lockd's RSS per subscriber. Each S gets a fresh lockd.
    Sse {
        /// Subscriber counts, comma-separated.
        #[arg(short = 's', long, value_delimiter = ',', default_values_t = [1000usize])]
        subscribers: Vec<usize>,
        /// Lock changes (events) per second while measuring, evenly spaced.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Idle seconds after connecting, before RSS is read.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// Everything the goals name: compare at C=1 and C=64, handoff with K=16, sse with
    /// 1,000 and 10,000 subscribers, then a goals table.
    All {
        /// Short runs and small counts, for CI: proves each scenario runs, measures
        /// nothing worth quoting.
        #[arg(long)]
        smoke: bool,
        /// A-B pairs per concurrency level of `compare`.
        #[arg(long, default_value_t = 5)]
        pairs: usize,
    },
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// The processes under test.
struct Setup {
    redis: Option<Proc>,
    redis_addr: String,
    lockd_bin: PathBuf,
    lockd_env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Setup {
    fn new(common: &Common, need_lockd: bool) -> Result<Self, String> {
        let dir = env::scratch_dir().map_err(|e| format!("cannot make a scratch dir: {e}"))?;
        let (redis, redis_addr) = match &common.redis_url {
            Some(url) => (None, redis_addr(url)?),
            None => {
                let (proc, addr) = env::start_redis(&common.redis_server, &dir)?;
                (Some(proc), addr)
            }
        };
        let lockd_bin = match (&common.lockd_bin, need_lockd) {
            (Some(path), _) => path.clone(),
            (None, true) => env::build_lockd()?,
            (None, false) => PathBuf::new(),
        };
        let mut lockd_env = vec![
            // Its own namespace, in case --redis-url names a shared Redis.
            (
                "LOCKD_REDIS__KEY_PREFIX".to_owned(),
                format!("lockd-bench-{}:", std::process::id()),
            ),
        ];
        lockd_env.extend(common.lockd_env.iter().cloned());
        Ok(Self {
            redis,
            redis_addr,
            lockd_bin,
            lockd_env,
            dir,
        })
    }

    fn start_lockd(&self) -> Result<(Proc, String), String> {
        self.start_lockd_with(&[])
    }

    /// Starts lockd with `extra` settings, which `--lockd-env` can still override.
    fn start_lockd_with(&self, extra: &[(String, String)]) -> Result<(Proc, String), String> {
        let mut settings = extra.to_vec();
        settings.extend(self.lockd_env.iter().cloned());
        env::start_lockd(
            &self.lockd_bin,
            &format!("redis://{}", self.redis_addr),
            &settings,
            &self.dir,
        )
    }

    fn redis_pid(&self) -> Option<u32> {
        self.redis.as_ref().map(Proc::pid)
    }
}

/// `redis://host:port[/db]` (or `host:port`) to `host:port`.
fn redis_addr(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or_default();
    if rest.contains('@') || !rest.contains(':') {
        return Err(format!(
            "--redis-url must be redis://host:port without credentials, got {url:?}"
        ));
    }
    Ok(rest.to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.common.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.common.client_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lockd-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Collects results and prints them as tables (or JSON at the end).
struct Output {
    quiet: bool,
    results: Vec<Value>,
}

impl Output {
    fn add<T: Serialize>(&mut self, result: &T, print: impl FnOnce(&T)) {
        if !self.quiet {
            print(result);
            println!();
        }
        self.results
            .push(serde_json::to_value(result).unwrap_or(Value::Null));
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let common = &cli.common;
    let mut out = Output {
        quiet: common.json.as_deref() == Some(std::path::Path::new("-")),
        results: Vec::new(),
    };
    let need_lockd = !matches!(cli.scenario, Scenario::Redis(_));
    // Every subscriber is a socket at both ends; lockd inherits the limit.
    let want_fds = match &cli.scenario {
        Scenario::Sse { subscribers, .. } => subscribers.iter().max().copied().unwrap_or(0),
        Scenario::All { .. } => 10_000,
        _ => 0,
    } as u64
        + 1024;
    let nofile = env::raise_nofile(want_fds);
    if nofile < want_fds {
        eprintln!(
            "lockd-bench: open-file limit is {nofile}, wanted {want_fds}; large runs may fail"
        );
    }
    let setup = Setup::new(common, need_lockd)?;
    let machine = machine_info(&setup.redis_addr).await;

    match &cli.scenario {
        Scenario::Redis(args) => {
            let config = cycle_config(common, args.concurrency, args.resources, args.ttl_ms);
            let pids = Pids {
                redis: setup.redis_pid(),
                lockd: None,
            };
            let report = cycle::run_redis(&setup.redis_addr, &config, pids).await;
            out.add(&report, CycleReport::print);
        }
        Scenario::Http(args) => {
            let (lockd, addr) = setup.start_lockd()?;
            let config = cycle_config(common, args.concurrency, args.resources, args.ttl_ms);
            let pids = Pids {
                redis: setup.redis_pid(),
                lockd: Some(lockd.pid()),
            };
            let report = cycle::run_http(&addr, &config, pids).await;
            out.add(&report, CycleReport::print);
        }
        Scenario::Compare {
            concurrency,
            resources,
            pairs,
        } => {
            let (lockd, addr) = setup.start_lockd()?;
            for &c in concurrency {
                let summary = compare(
                    &setup, &lockd, &addr, common, c, *resources, *pairs, &mut out,
                )
                .await;
                out.add(&summary, print_compare);
            }
        }
        Scenario::Handoff { waiters, wait_ms } => {
            let (lockd, addr) = setup.start_lockd()?;
            let report = run_handoff(&setup, &lockd, &addr, common, *waiters, *wait_ms).await;
            out.add(&report, handoff::HandoffReport::print);
        }
        Scenario::Sse {
            subscribers,
            rate,
            settle,
        } => {
            for &s in subscribers {
                let report = run_sse(&setup, common, s, *rate, *settle).await?;
                out.add(&report, sse::SseReport::print);
            }
        }
        Scenario::All { smoke, pairs } => run_all(&setup, common, *smoke, *pairs, &mut out).await?,
    }

    let document = json!({
        "tool": "lockd-bench",
        "scenario": scenario_name(&cli.scenario),
        "machine": machine,
        "lockd_env": setup.lockd_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "client_threads": common.client_threads,
        "results": out.results,
    });
    let text = serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?;
    match &common.json {
        Some(path) if path.as_os_str() == "-" => println!("{text}"),
        Some(path) => {
            std::fs::write(path, text + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("lockd-bench: wrote {}", path.display());
        }
        None => {}
    }
    let dir = setup.dir.clone();
    drop(setup);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn scenario_name(scenario: &Scenario) -> &'static str {
    match scenario {
        Scenario::Redis(_) => "redis",
        Scenario::Http(_) => "http",
        Scenario::Compare { .. } => "compare",
        Scenario::Handoff { .. } => "handoff",
        Scenario::Sse { .. } => "sse",
        Scenario::All { .. } => "all",
    }
}

fn cycle_config(common: &Common, concurrency: usize, resources: u64, ttl_ms: u64) -> CycleConfig {
    CycleConfig {
        concurrency,
        resources,
        ttl_ms,
        warmup_s: common.warmup,
        duration_s: common.duration,
    }
}

/// One pair of a comparison.
#[derive(Debug, Serialize)]
struct Pair {
    redis_cycles_per_s: f64,
    http_cycles_per_s: f64,
    throughput_ratio: f64,
    redis_p50_us: f64,
    http_p50_us: f64,
    p50_ratio: f64,
}

/// A comparison at one concurrency.
#[derive(Debug, Serialize)]
struct CompareSummary {
    scenario: &'static str,
    concurrency: usize,
    resources: u64,
    duration_s: f64,
    pairs: Vec<Pair>,
    /// Median of the pairs' http/redis throughput ratios.
    throughput_ratio_median: f64,
    throughput_ratio_range: [f64; 2],
    /// Median of the pairs' http/redis p50 ratios.
    p50_ratio_median: f64,
    p50_ratio_range: [f64; 2],
    redis_cycles_per_s_median: f64,
    http_cycles_per_s_median: f64,
    redis_p50_us_median: f64,
    http_p50_us_median: f64,
    errors: u64,
}

#[allow(clippy::too_many_arguments)]
async fn compare(
    setup: &Setup,
    lockd: &Proc,
    lockd_addr: &str,
    common: &Common,
    concurrency: usize,
    resources: u64,
    pairs: usize,
    out: &mut Output,
) -> CompareSummary {
    let config = cycle_config(common, concurrency, resources, 30_000);
    let pids = Pids {
        redis: setup.redis_pid(),
        lockd: Some(lockd.pid()),
    };
    let mut rows = Vec::new();
    let mut errors = 0;
    for i in 0..pairs.max(1) {
        eprintln!(
            "lockd-bench: compare C={concurrency} pair {}/{}",
            i + 1,
            pairs.max(1)
        );
        let a = cycle::run_redis(&setup.redis_addr, &config, pids).await;
        let b = cycle::run_http(lockd_addr, &config, pids).await;
        errors += a.errors + b.errors;
        let ratio = |x: f64, y: f64| if y > 0.0 { round3(x / y) } else { 0.0 };
        rows.push(Pair {
            redis_cycles_per_s: a.cycles_per_s,
            http_cycles_per_s: b.cycles_per_s,
            throughput_ratio: ratio(b.cycles_per_s, a.cycles_per_s),
            redis_p50_us: a.cycle.p50_us,
            http_p50_us: b.cycle.p50_us,
            p50_ratio: ratio(b.cycle.p50_us, a.cycle.p50_us),
        });
        out.add(&a, CycleReport::print);
        out.add(&b, CycleReport::print);
    }
    let pick = |f: fn(&Pair) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    let tput = pick(|p| p.throughput_ratio);
    let p50 = pick(|p| p.p50_ratio);
    CompareSummary {
        scenario: "compare",
        concurrency,
        resources,
        duration_s: common.duration,
        throughput_ratio_median: round3(median(&tput)),
        throughput_ratio_range: range(&tput),
        p50_ratio_median: round3(median(&p50)),
        p50_ratio_range: range(&p50),
        redis_cycles_per_s_median: round3(median(&pick(|p| p.redis_cycles_per_s))),
        http_cycles_per_s_median: round3(median(&pick(|p| p.http_cycles_per_s))),
        redis_p50_us_median: round3(median(&pick(|p| p.redis_p50_us))),
        http_p50_us_median: round3(median(&pick(|p| p.http_p50_us))),
        pairs: rows,
        errors,
    }
}

fn print_compare(s: &CompareSummary) {
    println!(
        "compare C={} N={} ({} pairs of {:.1}s; ratio = http / redis)",
        s.concurrency,
        s.resources,
        s.pairs.len(),
        s.duration_s
    );
    println!(
        "  {:<6} {:>12} {:>12} {:>8} {:>10} {:>10} {:>8}",
        "pair", "redis cyc/s", "http cyc/s", "ratio", "redis p50", "http p50", "ratio"
    );
    for (i, p) in s.pairs.iter().enumerate() {
        println!(
            "  {:<6} {:>12.0} {:>12.0} {:>8.3} {:>8.1}µs {:>8.1}µs {:>8.3}",
            i + 1,
            p.redis_cycles_per_s,
            p.http_cycles_per_s,
            p.throughput_ratio,
            p.redis_p50_us,
            p.http_p50_us,
            p.p50_ratio
        );
    }
    println!(
        "  {:<6} {:>12.0} {:>12.0} {:>8.3} {:>8.1}µs {:>8.1}µs {:>8.3}",
        "median",
        s.redis_cycles_per_s_median,
        s.http_cycles_per_s_median,
        s.throughput_ratio_median,
        s.redis_p50_us_median,
        s.http_p50_us_median,
        s.p50_ratio_median
    );
    println!(
        "  throughput ratio range {:.3}..{:.3}, p50 ratio range {:.3}..{:.3}, {} errors",
        s.throughput_ratio_range[0],
        s.throughput_ratio_range[1],
        s.p50_ratio_range[0],
        s.p50_ratio_range[1],
        s.errors
    );
}

async fn run_handoff(
    setup: &Setup,
    lockd: &Proc,
    lockd_addr: &str,
    common: &Common,
    waiters: usize,
    wait_ms: u64,
) -> handoff::HandoffReport {
    let config = HandoffConfig {
        waiters,
        wait_ms,
        ttl_ms: 30_000,
        warmup_s: common.warmup,
        duration_s: common.duration,
    };
    let pids = Pids {
        redis: setup.redis_pid(),
        lockd: Some(lockd.pid()),
    };
    handoff::run(lockd_addr, &config, pids).await
}

async fn run_sse(
    setup: &Setup,
    common: &Common,
    subscribers: usize,
    rate: f64,
    settle: f64,
) -> Result<sse::SseReport, String> {
    // A fresh lockd per run, so its RSS before the subscribers is a clean baseline,
    // with room for them all and for the connections that make the changes (one API
    // key, or none, holds every subscriber here).
    let room = (subscribers + 16).max(10_000).to_string();
    let (lockd, addr) = setup.start_lockd_with(&[
        (
            "LOCKD_SERVER__MAX_CONNECTIONS".to_owned(),
            (subscribers + 256).max(10_000).to_string(),
        ),
        ("LOCKD_EVENTS__MAX_CLIENTS".to_owned(), room.clone()),
        ("LOCKD_EVENTS__MAX_CLIENTS_PER_KEY".to_owned(), room),
    ])?;
    // Warm it up a little first: the first requests grow its pools and buffers.
    let warm = CycleConfig {
        concurrency: 4,
        resources: 1000,
        ttl_ms: 30_000,
        warmup_s: 0.0,
        duration_s: common.warmup.min(1.0),
    };
    let pids = Pids {
        redis: setup.redis_pid(),
        lockd: Some(lockd.pid()),
    };
    let _ = cycle::run_http(&addr, &warm, pids).await;
    let config = SseConfig {
        subscribers,
        rate,
        duration_s: common.duration,
        settle_s: settle,
    };
    eprintln!("lockd-bench: sse with {subscribers} subscribers");
    let report = sse::run(&addr, &config, pids).await;
    drop(lockd);
    Ok(report)
}

/// One line of the goals table.
#[derive(Debug, Serialize)]
struct Goal {
    goal: String,
    target: String,
    measured: String,
    met: bool,
}

async fn run_all(
    setup: &Setup,
    common: &Common,
    smoke: bool,
    pairs: usize,
    out: &mut Output,
) -> Result<(), String> {
    let mut common = common.clone();
    let (pairs, big, small) = if smoke {
        common.warmup = common.warmup.min(0.2);
        common.duration = common.duration.min(1.0);
        (1, 200, 50)
    } else {
        (pairs, 10_000, 1_000)
    };
    let (lockd, addr) = setup.start_lockd()?;
    let c1 = compare(setup, &lockd, &addr, &common, 1, 10_000, pairs, out).await;
    out.add(&c1, print_compare);
    let c64 = compare(setup, &lockd, &addr, &common, 64, 10_000, pairs, out).await;
    out.add(&c64, print_compare);
    let hand = run_handoff(setup, &lockd, &addr, &common, 16, 10_000).await;
    out.add(&hand, handoff::HandoffReport::print);
    drop(lockd);
    let fanout = run_sse(setup, &common, small, 20.0, 2.0).await?;
    out.add(&fanout, sse::SseReport::print);
    let idle = run_sse(setup, &common, big, 4.0, 2.0).await?;
    out.add(&idle, sse::SseReport::print);

    let goals = vec![
        Goal {
            goal: "compare C=64: http/redis cycle throughput".into(),
            target: ">= 0.5".into(),
            measured: format!("{:.3}", c64.throughput_ratio_median),
            met: c64.throughput_ratio_median >= 0.5,
        },
        Goal {
            goal: "compare C=1: http/redis cycle p50".into(),
            target: "<= 2.5".into(),
            measured: format!("{:.3}", c1.p50_ratio_median),
            met: c1.p50_ratio_median > 0.0 && c1.p50_ratio_median <= 2.5,
        },
        Goal {
            goal: "handoff K=16: release-to-grant p50".into(),
            target: "< 1000 µs".into(),
            measured: format!("{:.0} µs", hand.handoff.p50_us),
            met: hand.handoff.count > 0 && hand.handoff.p50_us < 1000.0,
        },
        Goal {
            goal: format!("sse S={small}: delivery p99"),
            target: "< 10000 µs".into(),
            measured: format!("{:.0} µs", fanout.delivery.p99_us),
            met: fanout.delivery.count > 0 && fanout.delivery.p99_us < 10_000.0,
        },
        Goal {
            goal: format!("sse S={big}: lockd RSS, idle subscribers"),
            target: "< 100 MiB".into(),
            measured: format!("{:.1} MiB", fanout_rss_mib(&idle)),
            met: idle.connected == big && fanout_rss_mib(&idle) < 100.0,
        },
    ];
    if !out.quiet {
        println!(
            "goals{}:",
            if smoke {
                " (smoke run: figures mean nothing)"
            } else {
                ""
            }
        );
        for g in &goals {
            println!(
                "  {:<46} {:>12} {:>14}  {}",
                g.goal,
                g.target,
                g.measured,
                if g.met { "met" } else { "NOT met" }
            );
        }
    }
    out.results
        .push(json!({"scenario": "goals", "goals": goals}));
    if smoke {
        // No timing is judged, but every scenario must have worked.
        let mut failures = Vec::new();
        for (name, c) in [("compare C=1", &c1), ("compare C=64", &c64)] {
            if c.errors > 0 || c.pairs.iter().any(|p| p.http_cycles_per_s == 0.0) {
                failures.push(format!("{name}: {} errors or no cycles", c.errors));
            }
        }
        if hand.grants == 0 || hand.errors + hand.fence_violations + hand.overlaps > 0 {
            failures.push(format!(
                "handoff: {} grants, {} errors, {} fence violations, {} overlaps",
                hand.grants, hand.errors, hand.fence_violations, hand.overlaps
            ));
        }
        for report in [&fanout, &idle] {
            if report.connected != report.config.subscribers
                || report.deliveries != report.deliveries_expected
                || report.events == 0
                || report.errors > 0
            {
                failures.push(format!(
                    "sse S={}: {} connected, {}/{} deliveries, {} errors",
                    report.config.subscribers,
                    report.connected,
                    report.deliveries,
                    report.deliveries_expected,
                    report.errors
                ));
            }
        }
        if !failures.is_empty() {
            return Err(format!("smoke run failed: {}", failures.join("; ")));
        }
    }
    Ok(())
}

fn fanout_rss_mib(report: &sse::SseReport) -> f64 {
    round3(report.rss_idle_kib as f64 / 1024.0)
}

/// The machine, for the JSON report.
async fn machine_info(redis_addr: &str) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut redis_version = String::new();
    if let Ok(mut conn) = resp::Resp::connect(redis_addr).await
        && let Ok(resp::Reply::Bulk(Some(info))) = conn.cmd(&[b"INFO", b"server"]).await
    {
        redis_version = String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or_default()
            .trim()
            .to_owned();
    }
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "redis_version": redis_version,
    })
}
