//! A Concord server in a process of its own, for tests that kill it with SIGKILL and start it
//! again on the same port and data directory. It serves with `concord_server::run`, the entry
//! point the `concord-server` binary calls, on 127.0.0.1, and prints `listening on ADDR` once
//! its listener is bound. Being a binary of this package, a test here finds it with
//! `env!("CARGO_BIN_EXE_server-process")`: no other package's binary has to be built first.
//!
//! Usage:
//!
//! ```text
//! server-process [--port PORT] [--data-dir DIR] [--max-sockets N]
//!                [--max-sockets-per-address N] [--header-read-timeout DURATION]
//!                [--awareness-timeout DURATION] [--redis-url URL[,URL...]] [--redis-cluster]
//!                [--webhook-url URL --webhook-secret SECRET]
//! ```
//!
//! With `--redis-url` documents are stored in that Redis (with `--redis-cluster`, the Redis
//! Cluster those seeds belong to) and shared with the other processes on it
//! (`concord_redis::connect`, key prefix `concord`), as `concord-server --redis-url` does.
//!
//! Without `--port` (or with 0) the port is ephemeral; without `--data-dir` documents are kept
//! in memory; `--webhook-url` and `--webhook-secret` make `Config::webhooks` (defaults
//! otherwise); the other flags set the `Config` fields of the same names (defaults otherwise).
//! The server's log goes to stderr (`RUST_LOG`, default `info`). Ctrl-C (SIGINT) shuts it down gracefully; a failure is a message on stderr and
//! exit status 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use concord_server::Config;
use tokio_util::sync::CancellationToken;

/// What the command line asked for.
struct Args {
    port: u16,
    data_dir: Option<PathBuf>,
    redis_urls: Vec<String>,
    redis_cluster: bool,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    config: Config,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        port: 0,
        data_dir: None,
        redis_urls: Vec::new(),
        redis_cluster: false,
        webhook_url: None,
        webhook_secret: None,
        config: Config::default(),
    };
    let mut argv = std::env::args_os().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || {
            argv.next()
                .with_context(|| format!("{} needs a value", flag.display()))
        };
        match flag.to_str() {
            Some("--port") => {
                let port = value()?;
                args.port = port
                    .to_str()
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("--port {} is not a port", port.display()))?;
            }
            Some("--data-dir") => args.data_dir = Some(PathBuf::from(value()?)),
            Some("--redis-url") => {
                let urls = value()?;
                args.redis_urls
                    .extend(urls.to_string_lossy().split(',').map(str::to_owned));
            }
            Some("--redis-cluster") => args.redis_cluster = true,
            Some("--webhook-url") => args.webhook_url = Some(value()?.to_string_lossy().into()),
            Some("--webhook-secret") => {
                args.webhook_secret = Some(value()?.to_string_lossy().into());
            }
            Some("--awareness-timeout") => args.config.awareness_timeout = duration(&value()?)?,
            Some("--max-sockets") => args.config.max_sockets = Some(number(&value()?)?),
            Some("--max-sockets-per-address") => {
                args.config.max_sockets_per_address = number(&value()?)?;
            }
            Some("--header-read-timeout") => {
                args.config.header_read_timeout = duration(&value()?)?;
            }
            _ => bail!(
                "unknown argument {}; see the usage at the top of server-process.rs",
                flag.display()
            ),
        }
    }
    Ok(args)
}

fn duration(text: &std::ffi::OsStr) -> Result<std::time::Duration> {
    humantime::parse_duration(&text.to_string_lossy())
        .with_context(|| format!("{} is not a duration", text.display()))
}

fn number(text: &std::ffi::OsStr) -> Result<usize> {
    text.to_str()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("{} is not a number", text.display()))
}

#[tokio::main]
async fn serve(args: Args) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    // The test reads this line to learn the address (and that the port is bound).
    println!("listening on {}", listener.local_addr()?);

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let mut config = Config {
        data_dir: args.data_dir,
        ..args.config
    };
    if let Some(url) = args.webhook_url {
        let secret = args
            .webhook_secret
            .context("--webhook-url needs --webhook-secret")?;
        config.webhooks = Some(concord_server::WebhookConfig::new([url], secret)?);
    }
    if !args.redis_urls.is_empty() {
        let options = concord_redis::RedisOptions {
            urls: args.redis_urls,
            cluster: args.redis_cluster,
            ..concord_redis::RedisOptions::default()
        };
        let redis = concord_redis::connect(options, shutdown.clone()).await?;
        config.store = Some(redis.store.clone());
        config.replication = Some(redis.link.clone());
        config.metrics.push(redis.metrics());
    }
    concord_server::run(listener, config, shutdown)
        .await
        .context("the server failed")
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match parse_args().and_then(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server-process: {e:#}");
            ExitCode::FAILURE
        }
    }
}
