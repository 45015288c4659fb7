//! The `lockd` binary: parse the command line, load config, serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

use lockd::config::{LogFormat, Overrides};
use lockd::{Application, Settings};

/// A distributed lock service over HTTP, on Redis.
#[derive(Debug, Parser)]
#[command(name = "lockd", version, about)]
struct Cli {
    /// A TOML file whose settings override the defaults (see config/default.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (server.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Redis URL (redis.url).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key (redis.key_prefix).
    #[arg(long, value_name = "PREFIX")]
    key_prefix: Option<String>,
    /// Log format (log.format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Print the effective configuration as JSON (passwords hidden) and exit.
    Config,
    /// Make a new random API key and print it with its `[[auth.keys]]` entry.
    NewKey {
        /// The key's name, for logs and per-key limits.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        return print_out(&lockd::openapi::document_json());
    }
    if let Some(Command::NewKey { name }) = &cli.command {
        return print_out(&new_key(name));
    }
    let overrides = Overrides {
        listen: cli.listen,
        redis_url: cli.redis_url,
        key_prefix: cli.key_prefix,
        log_format: cli.log_format,
    };
    let settings = match Settings::load(cli.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("lockd: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Config) = cli.command {
        let mut shown = settings;
        shown.redis.url = lockd::config::redact_url(&shown.redis.url);
        return match serde_json::to_string_pretty(&shown) {
            Ok(json) => print_out(&format!("{json}\n")),
            Err(error) => {
                eprintln!("lockd: {error}");
                ExitCode::FAILURE
            }
        };
    }
    lockd::telemetry::init(&settings.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lockd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match Application::build(&settings).await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(%error, "startup failed");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = app.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        });
        app.run_until_stopped().await;
        ExitCode::SUCCESS
    })
}

/// A random key (244 bits from two UUID v4s) and the configuration entry that admits it.
fn new_key(name: &str) -> String {
    let key = format!(
        "lockd_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let digest = lockd::auth::hex_sha256(&key);
    format!(
        "# API key for {name}: give it to the client, keep only the entry below in the config.\n\
         # {key}\n\
         [[auth.keys]]\n\
         name = {name:?}\n\
         sha256 = \"{digest}\"\n\
         agents = \"*\"\n\
         scopes = [\"lock\", \"read\"]\n"
    )
}

/// Writes to stdout without panicking when the reader has gone (`lockd openapi | head`).
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lockd: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops lockd");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
