//! Concord's server: a Yjs-compatible document sync server over WebSocket, as a library.
//!
//! Unmodified Yjs clients (`y-websocket`'s `WebsocketProvider`, `yrs` peers) connect to
//! `ws://host/<document name>`, sync with y-protocols and share awareness. The engine lives in
//! [`concord_core`]; this crate adds sockets, tasks, bounded queues and persistence.
//!
//! Two ways in:
//! - [`run`] serves on a listener until a [`CancellationToken`] is cancelled. The binary is a
//!   thin wrapper around it.
//! - [`Concord::new`] + [`router`] give an [`axum::Router`] to mount inside another axum app
//!   (see `examples/embed.rs`); call [`Concord::closed`] after shutdown to wait for every
//!   connection to close and every update to be stored.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_server::ServerError> {
//! use tokio_util::sync::CancellationToken;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:1234").await?;
//! let shutdown = CancellationToken::new();
//! concord_server::run(listener, concord_server::Config::default(), shutdown).await
//! # }
//! ```

pub mod admin;
mod admission;
mod api;
pub mod auth;
mod compact;
mod config;
pub mod feed;
mod limits;
mod metrics;
mod persist;
mod rooms;
mod static_files;
mod stats;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use concord_core::{DocName, MemoryStore, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use concord_core;
pub use config::Config;
pub use stats::Stats;

use compact::CompactionStats;
use feed::{ChangeStream, Feed};
use limits::ConnectionLimits;
use persist::{PersistConfig, Persister};
use rooms::{QueueLimits, Rooms, RoomsConfig};
use stats::Counters;

/// Errors of the server layer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store could not be opened.
    #[error("cannot open the document store: {0}")]
    Store(#[from] concord_core::StoreError),
}

/// A running Concord instance: rooms, the persistence worker and the tasks serving connections.
/// Cheap to clone; every clone is the same instance.
#[derive(Clone)]
pub struct Concord {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    rooms: Arc<Rooms>,
    persister: Persister,
    compactions: Arc<CompactionStats>,
    counters: Arc<Counters>,
    connections: Arc<ConnectionLimits>,
    feed: Feed,
    store: Arc<dyn Store>,
    metrics: metrics::Metrics,
    tracker: TaskTracker,
    /// Cancelled by the embedder: stop accepting, close connections with 1001.
    shutdown: CancellationToken,
    /// Cancelled once connections are closed: the persistence worker drains and stops.
    stop_persist: CancellationToken,
    persist_worker: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// `Config::static_dir`, ready to serve.
    static_files: Option<static_files::StaticFiles>,
}

impl Concord {
    /// Starts an instance over `store`. Spawns the persistence worker and the awareness sweeper,
    /// so it must be called within a Tokio runtime. Cancelling `shutdown` closes every
    /// connection with 1001 and refuses new ones.
    pub fn new(config: Config, store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        if config.authorizer.is_none() {
            tracing::warn!(
                "NO AUTHENTICATION: anyone who can reach this server can read and write every \
                 document (configure an authorizer, e.g. --auth-secret-file or --auth-public-key)"
            );
        }
        let static_files = config
            .static_dir
            .as_deref()
            .map(static_files::StaticFiles::new);
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let feed = Feed::new();
        let flush_seconds = metrics::Metrics::flush_histogram();
        let stop_persist = CancellationToken::new();
        // Compaction requests: a small queue whose overflow drops requests (they are repeated
        // by the next append to the same document).
        let (compact_tx, compact_rx) = tokio::sync::mpsc::channel(256);
        let (persister, worker) = Persister::start(
            store.clone(),
            PersistConfig {
                queue: config.persist_queue,
                batch: config.persist_batch,
                compact_after_updates: config.compact_after_updates,
                compact_after_bytes: config.compact_after_bytes,
            },
            compact_tx,
            persist::Outputs {
                feed: feed.clone(),
                flush_seconds: flush_seconds.clone(),
                counters: counters.clone(),
            },
            stop_persist.clone(),
        );
        let rooms = Arc::new(Rooms::new(
            store.clone(),
            persister.clone(),
            RoomsConfig {
                idle_timeout: config.room_idle_timeout,
                queue: QueueLimits {
                    max_bytes: config.outbound_queue_bytes,
                    counters: counters.clone(),
                },
                clock: config.clock.clone(),
                max_rooms: config.max_rooms.max(1),
                room_limits: concord_core::RoomLimits {
                    max_document_bytes: config.max_document_bytes,
                    max_awareness_state_bytes: Some(config.max_awareness_state_bytes),
                    read_only_awareness: config.read_only_awareness,
                },
                counters: counters.clone(),
            },
            tracker.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(sweep_awareness(
            rooms.clone(),
            config.awareness_sweep_interval,
            config.awareness_timeout,
            shutdown.clone(),
        ));
        let compactions = Arc::new(CompactionStats::default());
        tracker.spawn(compact::run_compactor(
            rooms.clone(),
            store.clone(),
            compact_rx,
            compactions.clone(),
            shutdown.clone(),
        ));
        let metrics = metrics::Metrics::new(
            counters.clone(),
            rooms.clone(),
            compactions.clone(),
            flush_seconds,
        );
        let connections = ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.connection_attempts_per_ip,
            config.connection_attempt_burst,
        );
        tracker.spawn(forget_quiet_addresses(
            connections.clone(),
            shutdown.clone(),
        ));
        Concord {
            inner: Arc::new(Inner {
                config,
                rooms,
                persister,
                compactions,
                counters,
                connections,
                feed,
                store,
                metrics,
                tracker,
                shutdown,
                stop_persist,
                persist_worker: std::sync::Mutex::new(Some(worker)),
                static_files,
            }),
        }
    }

    /// The configuration this instance runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the document `name` is currently loaded in memory.
    pub fn is_loaded(&self, name: &DocName) -> bool {
        self.inner.rooms.is_loaded(name)
    }

    /// How many compactions have completed since start.
    pub fn compactions(&self) -> u64 {
        self.inner
            .compactions
            .done
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The changes of `doc` as they are stored, each with its position: after `from` (read
    /// from the store's log first), or, without `from`, after a [`feed::FeedEvent::Sync`] of
    /// the stored state (its diff against `sv` when given). When compaction removed the log
    /// after `from`, the stream starts with a sync instead. No change is skipped or repeated,
    /// also when the subscriber falls behind. The SSE and polling transports are built on it.
    pub fn changes(
        &self,
        doc: &DocName,
        from: Option<concord_core::Position>,
        sv: Option<yrs::StateVector>,
    ) -> ChangeStream {
        feed::document_stream(
            &self.inner.feed,
            self.inner.store.clone(),
            doc.clone(),
            from,
            sv,
            self.inner.shutdown.clone(),
        )
    }

    /// Every document's changes as they are stored, from now on. A subscriber that falls more
    /// than 16,384 changes behind gets `Err(missed)` and goes on with newer ones (use
    /// [`Concord::changes`] per document to resume without loss).
    pub fn all_changes(
        &self,
    ) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Arc<feed::Change>, u64>> + Send>>
    {
        feed::all_changes(&self.inner.feed)
    }

    /// What the server refused, cut off or survived since it started.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// How many WebSocket connections are open.
    pub fn open_connections(&self) -> usize {
        self.inner.connections.open()
    }

    /// How many connections the document `name` has (0 when it is not loaded).
    pub fn connection_count(&self, name: &DocName) -> usize {
        self.inner
            .rooms
            .get(name)
            .map_or(0, |room| room.connection_count())
    }

    /// Waits, after the shutdown token was cancelled, until every connection has closed (or
    /// [`Config::shutdown_grace`] passed) and every update has been written to the store.
    pub async fn closed(&self) {
        let inner = &self.inner;
        inner.shutdown.cancelled().await;
        inner.tracker.close();
        if tokio::time::timeout(inner.config.shutdown_grace, inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        inner.stop_persist.cancel();
        let worker = inner
            .persist_worker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(worker) = worker
            && let Err(e) = worker.await
        {
            tracing::error!(error = %e, "persistence worker failed");
        }
    }
}

/// The routes serving documents: `GET /{*name}` upgrades to a WebSocket connection to the
/// document `name` (the whole path, percent-decoded, slashes allowed; the query string is not
/// part of the name). Mount it with `Router::nest("/prefix", router(&concord))` to serve
/// documents under a prefix. With [`Config::static_dir`], plain GETs of paths holding a file get
/// the file, and `/` the `index.html` (under a prefix, route `/prefix/` to it as [`run`] does).
pub fn router(concord: &Concord) -> Router {
    let api = api::routes(concord);
    let documents = Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/{*doc}", get(ws::upgrade))
        .with_state(concord.clone());
    match normalize_prefix(&concord.inner.config.api_prefix) {
        Ok(Some(prefix)) => documents.nest(&prefix, api),
        // Checked when the instance was made: see `Concord::new`.
        _ => documents,
    }
}

/// `GET /`: the static files' `index.html` when there are some; there is no document there.
/// Under a prefix (`/collab`, see [`run`]) the index is at `/collab/`, and `/collab` redirects
/// there, so the page's relative links resolve under the prefix.
async fn root(
    axum::extract::State(concord): axum::extract::State<Concord>,
    method: axum::http::Method,
    original: axum::extract::OriginalUri,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(files) = &concord.inner.static_files
        && !ws::is_upgrade(&headers)
    {
        let path = original.path();
        if !path.ends_with('/') {
            let query = original
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            return axum::response::Redirect::permanent(&format!("{path}/{query}")).into_response();
        }
        let index = axum::http::Uri::from_static("/");
        if let Some(response) = files.serve(&method, &index, &headers).await {
            return response;
        }
    }
    (StatusCode::BAD_REQUEST, "document name is empty").into_response()
}

/// `GET /readyz`: 200 while the server accepts work and its store takes writes, else 503.
async fn ready(axum::extract::State(concord): axum::extract::State<Concord>) -> Response {
    let inner = &concord.inner;
    if inner.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if inner
        .counters
        .store_failing
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the store fails to take writes",
        )
            .into_response();
    }
    "ready".into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(axum::extract::State(concord): axum::extract::State<Concord>) -> Response {
    match concord.inner.metrics.encode() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves Concord on `listener` until `shutdown` is cancelled, then closes connections with
/// 1001, stores what is pending and returns. Documents are stored in a sled database in
/// [`Config::data_dir`], or in memory when it is `None`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let prefix = normalize_prefix(&config.path_prefix)?;
    normalize_prefix(&config.api_prefix)?;
    let store = open_store(&config).await?;
    let concord = Concord::new(config, store, shutdown.clone());
    let app = match prefix {
        // `nest` routes `/collab` and `/collab/...`; `/collab/` is the root too.
        Some(prefix) => Router::new()
            .nest(&prefix, router(&concord))
            .route(&format!("{prefix}/"), get(root).with_state(concord.clone())),
        None => router(&concord),
    };
    tracing::info!(address = %listener.local_addr()?, "concord listening");
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Nagle's algorithm plus delayed ACKs adds tens of milliseconds to small frames.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    // Peer addresses, for the per-address connection limit.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let serve =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let result = serve.await;
    concord.closed().await;
    result.map_err(ServerError::Io)
}

/// Opens the store [`run`] uses: sled in `data_dir`, or memory.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    let Some(dir) = config.data_dir.clone() else {
        tracing::warn!("no data directory: documents are kept in memory and lost on restart");
        return Ok(Arc::new(MemoryStore::new()));
    };
    let options = concord_sled::SledOptions {
        flush_every_ms: Some(u64::try_from(config.fsync_interval.as_millis()).unwrap_or(u64::MAX)),
        ..concord_sled::SledOptions::default()
    };
    let shown = dir.display().to_string();
    let store =
        tokio::task::spawn_blocking(move || concord_sled::SledStore::open_with(&dir, options))
            .await
            .map_err(|e| ServerError::Config(format!("opening the store panicked: {e}")))??;
    tracing::info!(data_dir = %shown, "documents are stored in sled");
    Ok(Arc::new(store))
}

/// `""` and `"/"` mean no prefix; otherwise the prefix must start with `/` and is used without a
/// trailing `/`.
fn normalize_prefix(prefix: &str) -> Result<Option<String>, ServerError> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    if !trimmed.starts_with('/') {
        return Err(ServerError::Config(format!(
            "path prefix {prefix:?} must start with '/'"
        )));
    }
    Ok(Some(trimmed.to_owned()))
}

/// Every minute, drops the connection-attempt buckets of addresses that went quiet.
async fn forget_quiet_addresses(limits: Arc<ConnectionLimits>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticker.tick() => limits.forget_quiet_addresses(),
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn sweep_awareness(
    rooms: Arc<Rooms>,
    every: std::time::Duration,
    timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for room in rooms.loaded() {
            room.expire_awareness(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix("").unwrap(), None);
        assert_eq!(normalize_prefix("/").unwrap(), None);
        assert_eq!(
            normalize_prefix("/collab/").unwrap().as_deref(),
            Some("/collab")
        );
        assert!(normalize_prefix("collab").is_err());
    }
}
