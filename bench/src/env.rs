//! The processes under test: a private redis-server and lockd on free loopback ports,
//! each stopped by its PID when dropped, and what /proc says about them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet
            // (try_wait above saw it running), so the PID still names it.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "lockd-bench: {} did not stop on SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory for the servers' logs: `$TMPDIR/lockd-bench-<pid>`. A run that
/// succeeds removes it; one that fails leaves it for its logs.
pub fn scratch_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lockd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `redis-server` without persistence on a free loopback port; returns it and
/// its `host:port`.
pub fn start_redis(binary: &str, dir: &Path) -> Result<(Proc, String), String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let log = dir.join("redis.log");
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning", "--logfile"])
        .arg(&log)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {binary}: {e} (is redis-server installed?)"))?;
    let mut proc = Proc {
        child,
        name: "redis-server",
    };
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping_redis(&addr) {
            return Ok((proc, addr));
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "redis-server exited with {status}; see {}",
                log.display()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("redis-server did not answer on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping_redis(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Starts lockd on a free loopback port against `redis_url`, with `env` on top of its
/// defaults (LOCKD_... variables); waits until `/readyz` answers 200.
pub fn start_lockd(
    binary: &Path,
    redis_url: &str,
    env: &[(String, String)],
    dir: &Path,
) -> Result<(Proc, String), String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let addr = format!("127.0.0.1:{port}");
    let log_path = dir.join(format!("lockd-{port}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    // Only what the run asks for: no LOCKD_ or RUST_LOG setting leaks in from the shell.
    for (key, _) in std::env::vars_os() {
        let inherited = key.to_string_lossy();
        if inherited.starts_with("LOCKD_") || inherited == "RUST_LOG" {
            command.env_remove(&key);
        }
    }
    let child = command
        .env("LOCKD_SERVER__LISTEN", &addr)
        .env("LOCKD_REDIS__URL", redis_url)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let mut proc = Proc {
        child,
        name: "lockd",
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if http_status(&addr, "/readyz") == Some(200) {
            return Ok((proc, addr));
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "lockd exited with {status}; see {}",
                log_path.display()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "lockd did not become ready on {addr}; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Builds lockd in release mode with cargo and returns the binary's path.
pub fn build_lockd() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    eprintln!("lockd-bench: building lockd (cargo build --release -p lockd)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "lockd"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release -p lockd failed: {status}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("lockd"))
}

/// Resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) that `pid` has used, all threads, in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0)?;
    Some(ticks * 1_000_000 / hz)
}

/// CPU time this process has used, in microseconds.
pub fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the struct we pass; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |tv: libc::timeval| {
        u64::try_from(tv.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec).unwrap_or(0)
    };
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Raises this process's open-file limit to at least `wanted` (children inherit it):
/// the soft limit up to the hard one, and the hard one too when allowed (root).
/// Returns the soft limit in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        if limit.rlim_max < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return wanted;
            }
        }
        limit.rlim_cur = limit.rlim_max.min(wanted.max(limit.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}
