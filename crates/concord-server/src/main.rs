//! The `concord-server` binary: parses flags and environment into a [`Config`], sets up logging
//! and signal handling, and calls [`concord_server::run`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use concord_server::Config;
use tokio_util::sync::CancellationToken;

/// A Yjs-compatible real-time document sync server.
///
/// Yjs clients connect to ws://HOST:PORT/<document name> (for example with y-websocket's
/// WebsocketProvider). Logging is configured with RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(
    name = "concord-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Inspect and change stored documents. Stop the server first: the data directory is
    /// locked while it runs.
    Docs {
        /// The server's data directory.
        #[arg(long, env = "CONCORD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: DocsAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum DocsAction {
    /// List documents with their stored sizes.
    List,
    /// Write a document to stdout as one Yjs v1 update (Y.applyUpdate reads it).
    Export {
        /// Document name.
        name: String,
    },
    /// Merge a Yjs v1 update read from stdin into a document (created if needed).
    Import {
        /// Document name.
        name: String,
    },
    /// Compact one document (or every document) into a snapshot.
    Compact {
        /// Document name; all documents when omitted.
        name: Option<String>,
    },
    /// Delete a document.
    Delete {
        /// Document name.
        name: String,
    },
}

/// Flags of the server itself.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONCORD_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the chosen address is printed on stdout).
    #[arg(long, env = "CONCORD_PORT", default_value_t = 1234)]
    port: u16,
    /// Serve documents under this path prefix, e.g. /collab.
    #[arg(long, env = "CONCORD_PATH_PREFIX", default_value = "")]
    path_prefix: String,
    /// Largest inbound WebSocket message in bytes; bigger ones close the connection with 1009.
    #[arg(long, env = "CONCORD_MAX_MESSAGE_SIZE", default_value_t = Config::default().max_message_size)]
    max_message_size: usize,
    /// Most frames queued for one connection; a connection that falls further behind is closed
    /// with 1013 and resyncs when it reconnects.
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_FRAMES", default_value_t = Config::default().outbound_queue_frames)]
    outbound_queue_frames: usize,
    /// Most bytes queued for one connection (same policy as --outbound-queue-frames).
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_BYTES", default_value_t = Config::default().outbound_queue_bytes)]
    outbound_queue_bytes: usize,
    /// WebSocket ping interval; peers silent for three intervals are dropped.
    #[arg(long, env = "CONCORD_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// Awareness states (presence, cursors) not renewed for this long are removed.
    #[arg(long, env = "CONCORD_AWARENESS_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    awareness_timeout: Duration,
    /// How often rooms are checked for expired awareness states.
    #[arg(long, env = "CONCORD_AWARENESS_SWEEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    awareness_sweep_interval: Duration,
    /// How long a document stays in memory after its last connection leaves.
    #[arg(long, env = "CONCORD_ROOM_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    room_idle_timeout: Duration,
    /// Most document updates waiting to be stored; producers wait when it is full.
    #[arg(long, env = "CONCORD_PERSIST_QUEUE", default_value_t = Config::default().persist_queue)]
    persist_queue: usize,
    /// Most updates written to the store in one batch.
    #[arg(long, env = "CONCORD_PERSIST_BATCH", default_value_t = Config::default().persist_batch)]
    persist_batch: usize,
    /// How long shutdown waits for connections to close.
    #[arg(long, env = "CONCORD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Directory of the document store (a sled database), created if missing.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Keep documents in memory only (lost on restart) instead of in --data-dir.
    #[arg(long, env = "CONCORD_IN_MEMORY", conflicts_with = "data_dir")]
    in_memory: bool,
    /// How often the store fsyncs in the background: what a power loss may lose. A killed
    /// process loses nothing acknowledged.
    #[arg(long, env = "CONCORD_FSYNC_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    fsync_interval: Duration,
    /// Compact a document once its log holds this many updates after its snapshot.
    #[arg(long, env = "CONCORD_COMPACT_AFTER_UPDATES", default_value_t = Config::default().compact_after_updates)]
    compact_after_updates: u64,
    /// Compact a document once its log holds this many bytes after its snapshot.
    #[arg(long, env = "CONCORD_COMPACT_AFTER_BYTES", default_value_t = Config::default().compact_after_bytes)]
    compact_after_bytes: u64,
}

impl ServeArgs {
    fn config(self) -> Config {
        Config {
            path_prefix: self.path_prefix,
            max_message_size: self.max_message_size,
            outbound_queue_frames: self.outbound_queue_frames,
            outbound_queue_bytes: self.outbound_queue_bytes,
            keepalive_interval: self.keepalive_interval,
            awareness_timeout: self.awareness_timeout,
            awareness_sweep_interval: self.awareness_sweep_interval,
            room_idle_timeout: self.room_idle_timeout,
            persist_queue: self.persist_queue,
            persist_batch: self.persist_batch,
            shutdown_grace: self.shutdown_grace,
            data_dir: (!self.in_memory).then_some(self.data_dir),
            fsync_interval: self.fsync_interval,
            compact_after_updates: self.compact_after_updates,
            compact_after_bytes: self.compact_after_bytes,
            ..Config::default()
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Some(Command::Docs { data_dir, action }) => docs(&data_dir, action),
        None => serve(cli.serve),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn serve(cli: ServeArgs) -> anyhow::Result<()> {
    let host = cli.host.clone();
    let address: SocketAddr = tokio::net::lookup_host((host.as_str(), cli.port))
        .await
        .with_context(|| format!("cannot resolve --host {host}"))?
        .next()
        .with_context(|| format!("--host {host} resolves to no address"))?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    // Scripts and tests read this line to learn the port when --port 0 was given.
    println!("listening on {}", listener.local_addr()?);

    let shutdown = CancellationToken::new();
    // Registered before serving, so no signal finds the default handler (which would kill the
    // process without a graceful shutdown).
    let mut signals = Signals::new().context("cannot listen for signals")?;
    let watched = shutdown.clone();
    tokio::spawn(async move {
        on_signals(&mut signals, &watched, || std::process::exit(1)).await;
    });
    concord_server::run(listener, cli.config(), shutdown)
        .await
        .context("server failed")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Runs a `docs` command against the store in `data_dir`.
fn docs(data_dir: &Path, action: DocsAction) -> anyhow::Result<()> {
    use concord_server::admin;
    use concord_server::concord_core::{DocName, Store};
    use std::io::{Read, Write};

    if !data_dir.exists() {
        anyhow::bail!("no data directory at {}", data_dir.display());
    }
    let store = concord_sled::SledStore::open(data_dir).with_context(|| {
        format!(
            "cannot open the store in {} (is the server still running?)",
            data_dir.display()
        )
    })?;
    let name = |s: &str| DocName::new(s).with_context(|| format!("bad document name {s:?}"));
    match action {
        DocsAction::List => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<40} {:>12} {:>10} {:>12}",
                "name", "snapshot", "log", "log bytes"
            )?;
            for info in admin::list(&store)? {
                writeln!(
                    out,
                    "{:<40} {:>12} {:>10} {:>12}",
                    info.name, info.snapshot_bytes, info.log_entries, info.log_bytes
                )?;
            }
        }
        DocsAction::Export { name: doc } => {
            let update = admin::export(&store, &name(&doc)?)?;
            std::io::stdout().lock().write_all(&update)?;
        }
        DocsAction::Import { name: doc } => {
            let mut update = Vec::new();
            std::io::stdin().lock().read_to_end(&mut update)?;
            admin::import(&store, &name(&doc)?, &update)?;
            eprintln!("imported {} bytes into {doc:?}", update.len());
        }
        DocsAction::Compact { name: doc } => {
            let targets = match doc {
                Some(doc) => vec![name(&doc)?],
                None => store.list()?.into_iter().map(|info| info.name).collect(),
            };
            for doc in targets {
                let bytes = admin::compact(&store, &doc)?;
                eprintln!("compacted {doc:?}: snapshot of {bytes} bytes");
            }
        }
        DocsAction::Delete { name: doc } => {
            admin::delete(&store, &name(&doc)?)?;
            eprintln!("deleted {doc:?}");
        }
    }
    Ok(())
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once.
/// The signal policy: the first signal starts a graceful shutdown, the second calls `exit`
/// (the process then ends at once with status 1, whatever shutdown was still waiting for).
async fn on_signals(
    signals: &mut impl SignalSource,
    shutdown: &CancellationToken,
    exit: impl FnOnce(),
) {
    signals.next().await;
    tracing::info!("shutting down: closing connections and storing pending updates");
    shutdown.cancel();
    signals.next().await;
    tracing::warn!("second signal: exiting without waiting");
    exit();
}

/// Where [`on_signals`] gets its signals from.
trait SignalSource {
    /// Waits for the next signal.
    async fn next(&mut self);
}

/// SIGINT (Ctrl-C) and SIGTERM. Both listeners are registered once, up front, so a second
/// signal that arrives while the first is being handled is not missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }
}

impl SignalSource for Signals {
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SignalSource for tokio::sync::mpsc::Receiver<()> {
        async fn next(&mut self) {
            let _ = self.recv().await;
        }
    }

    #[tokio::test]
    async fn the_first_signal_shuts_down_gracefully_and_the_second_exits() {
        let (send, mut signals) = tokio::sync::mpsc::channel(2);
        let shutdown = CancellationToken::new();
        let exited = std::sync::atomic::AtomicBool::new(false);
        let watcher = on_signals(&mut signals, &shutdown, || {
            exited.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        tokio::pin!(watcher);
        // Nothing happens before a signal.
        tokio::select! {
            biased;
            _ = &mut watcher => panic!("the watcher ended without a signal"),
            _ = tokio::task::yield_now() => {}
        }
        assert!(!shutdown.is_cancelled());
        send.send(()).await.unwrap();
        tokio::select! {
            _ = &mut watcher => panic!("one signal must not exit"),
            _ = shutdown.cancelled() => {}
        }
        assert!(!exited.load(std::sync::atomic::Ordering::SeqCst));
        send.send(()).await.unwrap();
        watcher.await;
        assert!(exited.load(std::sync::atomic::Ordering::SeqCst));
    }
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent_and_defaults_match_the_library() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["concord-server"]).unwrap().serve;
        assert_eq!((cli.host.as_str(), cli.port), ("127.0.0.1", 1234));
        let config = cli.config();
        assert_eq!(config.data_dir.as_deref(), Some(Path::new("data")));
        let defaults = Config::default();
        assert_eq!(config.max_message_size, defaults.max_message_size);
        assert_eq!(config.keepalive_interval, defaults.keepalive_interval);
        assert_eq!(config.awareness_timeout, defaults.awareness_timeout);
        assert_eq!(
            config.awareness_sweep_interval,
            defaults.awareness_sweep_interval
        );
        assert_eq!(config.room_idle_timeout, defaults.room_idle_timeout);
        assert_eq!(config.shutdown_grace, defaults.shutdown_grace);
    }

    #[test]
    fn durations_and_sizes_parse() {
        let cli = Cli::try_parse_from([
            "concord-server",
            "--port",
            "0",
            "--keepalive-interval",
            "250ms",
            "--max-message-size",
            "65536",
            "--path-prefix",
            "/collab",
            "--in-memory",
        ])
        .unwrap()
        .serve;
        let config = cli.config();
        assert_eq!(config.data_dir, None);
        assert_eq!(config.keepalive_interval, Duration::from_millis(250));
        assert_eq!(config.max_message_size, 65536);
        assert_eq!(config.path_prefix, "/collab");
        assert!(Cli::try_parse_from(["concord-server", "--port", "70000"]).is_err());
    }

    #[test]
    fn docs_subcommands_parse() {
        let cli = Cli::try_parse_from(["concord-server", "docs", "--data-dir", "d", "export", "x"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Docs { action: DocsAction::Export { ref name }, .. }) if name == "x"
        ));
        let cli = Cli::try_parse_from(["concord-server", "docs", "compact"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Docs {
                action: DocsAction::Compact { name: None },
                ..
            })
        ));
    }
}
