//! Concord's server: a Yjs-compatible document sync server over WebSocket, as a library.
//!
//! Unmodified Yjs clients (`y-websocket`'s `WebsocketProvider`, `yrs` peers) connect to
//! `ws://host/<document name>`, sync with y-protocols and share awareness; Hocuspocus clients
//! (`@hocuspocus/provider`, Tiptap's) connect to `ws://host/` and open many documents over one
//! socket. The engine lives in
//! [`concord_core`]; this crate adds sockets, tasks, bounded queues and persistence.
//!
//! Two ways in:
//! - [`run`] serves on a listener until a [`CancellationToken`] is cancelled. The binary is a
//!   thin wrapper around it.
//! - [`Concord::new`] + [`router`] give an [`axum::Router`] to mount inside another axum app,
//!   served with [`serve`] (socket caps from `accept`, deadlines on request heads and idle
//!   connections; see `examples/embed.rs`); call [`Concord::closed`] after shutdown to wait for
//!   every connection to close and every update to be stored.
//!
//! Several processes serve the same documents when they share a store and are linked by a
//! [`Replication`] ([`Config::store`], [`Config::replication`]): `concord_redis` provides both
//! on Redis (the binary's `--redis-url`).
//!
//! [`Config::webhooks`] ([`WebhookConfig`]) makes it POST signed `document.updated`,
//! `document.deleted` and `document.restored` events to your backend, at least once, from an
//! outbox in the store (sled, memory or Redis; over Redis one node at a time, the holder of a
//! lease, announces and delivers; `HTTP.md` describes the events).
//!
//! What clients see on the wire is written down next to this crate's `Cargo.toml`:
//! `PROTOCOL.md` (the WebSocket protocol: on-connect messages, awareness, keepalive, read-only
//! access, close codes, the save acknowledgement), `HOCUSPOCUS.md` (the Hocuspocus protocol:
//! documents per socket, auth per document, SyncStatus, stateless messages) and `HTTP.md` (the
//! HTTP API, Server-Sent Events and long-polling; `src/edge/http/openapi.json` is its
//! machine-readable form).
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
mod config;
mod durability;
mod edge;
mod history;
mod ingest;
mod ops;
mod policy;
mod replication;
mod rooms;
mod state;
#[cfg(test)]
mod testing;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use concord_core::{DocName, MemoryStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use concord_core;
pub use concord_core::replication::InletTarget;
pub use config::Config;
pub use durability::feed;
pub use edge::hocuspocus::StatelessMessage;
pub use history::{HistoryConfig, HistoryError, Restored};
pub use ops::stats::Stats;
pub use policy::auth;
pub use replication::{Inlet, InletError, Published, Replication};
pub use webhooks::{WebhookConfig, WebhookError};

use feed::ChangeStream;
use rooms::Recipients;
use state::{AppState, Background};

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
    /// What the edges are handed.
    state: AppState,
    /// The persistence worker, drained once connections are closed.
    background: Background,
}

impl Concord {
    /// Starts an instance over `store`. Spawns the persistence worker, the compactor and the
    /// awareness sweeper, so it must be called within a Tokio runtime. Cancelling `shutdown`
    /// closes every connection with 1001 and refuses new ones.
    pub fn new(config: Config, store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        if config.authorizer.is_none() {
            tracing::warn!(
                "NO AUTHENTICATION: anyone who can reach this server can read and write every \
                 document (configure an authorizer, e.g. --auth-secret-file or --auth-public-key)"
            );
        }
        let (state, background) = AppState::start(config, store, shutdown);
        Concord {
            inner: Arc::new(Inner { state, background }),
        }
    }

    /// The configuration this instance runs with.
    pub fn config(&self) -> &Config {
        &self.inner.state.config
    }

    /// Whether the document `name` is currently loaded in memory.
    pub fn is_loaded(&self, name: &DocName) -> bool {
        self.inner.state.rooms.is_loaded(name)
    }

    /// How many compactions have completed since start.
    pub fn compactions(&self) -> u64 {
        self.inner
            .state
            .counters
            .compactions_done
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The changes of `doc` as they are stored, each with its position: after `from` (read
    /// from the store's log first), or, without `from`, after a [`feed::FeedEvent::Sync`] of
    /// the stored state (its diff against `sv` when given). When compaction removed the log
    /// after `from`, the stream starts with a sync instead. No change is skipped or repeated,
    /// also when the subscriber falls behind. The SSE and polling transports are built on it.
    ///
    /// With a [`Config::replication`], the document stays loaded here while the stream lives,
    /// so other processes' changes arrive as they are stored (the stream counts against
    /// `max_rooms` like a connection; when no room can be opened it ends with
    /// [`feed::FeedError::Open`]).
    pub fn changes(
        &self,
        doc: &DocName,
        from: Option<concord_core::Position>,
        sv: Option<yrs::StateVector>,
    ) -> ChangeStream {
        self.inner.state.changes_followed(doc, from, sv)
    }

    /// Every document's changes as they are stored, from now on. A subscriber that falls more
    /// than 16,384 changes behind gets `Err(missed)` and goes on with newer ones (use
    /// [`Concord::changes`] per document to resume without loss).
    pub fn all_changes(
        &self,
    ) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Arc<feed::Change>, u64>> + Send>>
    {
        feed::all_changes(&self.inner.state.feed)
    }

    /// What the server refused, cut off or survived since it started.
    pub fn stats(&self) -> Stats {
        self.inner.state.counters.snapshot()
    }

    /// How many connections are open (WebSocket, SSE and HTTP requests holding a slot).
    pub fn open_connections(&self) -> usize {
        self.inner.state.admission.connections.open()
    }

    /// Sends a stateless message (what a Hocuspocus provider's `on('stateless')` receives) to
    /// every Hocuspocus connection of `doc` in this process, or to connection `to` alone (the
    /// [`StatelessMessage::connection`] of a message it sent); returns how many it was queued
    /// for here (0 when the document is not loaded here). y-websocket clients never get one.
    /// Not stored. With a [`Config::replication`], a message for every connection is published
    /// too, and other processes deliver it to theirs (at most once).
    pub fn send_stateless(&self, doc: &DocName, payload: &str, to: Option<u64>) -> usize {
        self.inner.state.rooms.get(doc).map_or(0, |room| {
            room.send_stateless(payload, to.map_or(Recipients::All, Recipients::Only))
        })
    }

    /// The versions of `doc`, oldest first (see [`HistoryConfig`] for when versions are kept).
    pub async fn versions(
        &self,
        doc: &DocName,
    ) -> Result<Vec<concord_core::VersionInfo>, HistoryError> {
        history::list(self.inner.state.store.as_ref(), doc).await
    }

    /// Keeps `doc` as a version named `label`, with every update applied to it so far; kept
    /// until deleted.
    pub async fn save_version(
        &self,
        doc: &DocName,
        label: &str,
    ) -> Result<concord_core::VersionInfo, HistoryError> {
        history::save_named(&self.inner.state, doc, label.to_owned()).await
    }

    /// Version `id` of `doc` as one Yjs v1 update of the whole document.
    pub async fn version(
        &self,
        doc: &DocName,
        id: concord_core::VersionId,
    ) -> Result<Vec<u8>, HistoryError> {
        history::state_of(self.inner.state.store.as_ref(), doc, id).await
    }

    /// Removes version `id` of `doc`; `Ok(false)` when there was no such version.
    pub async fn delete_version(
        &self,
        doc: &DocName,
        id: concord_core::VersionId,
    ) -> Result<bool, HistoryError> {
        history::delete(self.inner.state.store.as_ref(), doc, id).await
    }

    /// Restores `doc` to version `id`: keeps the current state as a named version, then
    /// applies one update that makes every root equal the version's, stored and relayed to
    /// every connected client like any edit. Returns once that update is stored.
    pub async fn restore(
        &self,
        doc: &DocName,
        id: concord_core::VersionId,
    ) -> Result<Restored, HistoryError> {
        history::restore(&self.inner.state, doc, id, concord_core::Access::ReadWrite).await
    }

    /// How many connections the document `name` has (0 when it is not loaded).
    pub fn connection_count(&self, name: &DocName) -> usize {
        self.inner
            .state
            .rooms
            .get(name)
            .map_or(0, |room| room.connection_count())
    }

    /// Waits, after the shutdown token was cancelled, until every connection has closed (or
    /// [`Config::shutdown_grace`] passed) and every update has been written to the store.
    pub async fn closed(&self) {
        let state = &self.inner.state;
        let background = &self.inner.background;
        state.shutdown.cancelled().await;
        state.tracker.close();
        if tokio::time::timeout(state.config.shutdown_grace, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        background.stop_persist.cancel();
        let worker = background
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
/// part of the name), and the HTTP API lives under [`Config::api_prefix`]. Mount it with
/// `Router::nest("/prefix", router(&concord))` to serve documents under a prefix. With
/// [`Config::static_dir`], plain GETs of paths holding a file get the file, and `/` the
/// `index.html` (under a prefix, route `/prefix/` to it as [`run`] does).
pub fn router(concord: &Concord) -> Router {
    let state = &concord.inner.state;
    // Checked by `run` before the instance was made; an invalid prefix serves no API.
    let api = normalize_prefix(&state.config.api_prefix).ok().flatten();
    edge::routes(state, api.as_deref())
}

/// Serves Concord on `listener` until `shutdown` is cancelled, then closes connections with
/// 1001, stores what is pending and returns. Documents are stored in [`Config::store`] when it
/// is set, else in a sled database in [`Config::data_dir`], or in memory when that is `None`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let prefix = normalize_prefix(&config.path_prefix)?;
    normalize_prefix(&config.api_prefix)?;
    let store = match config.store.clone() {
        Some(store) => store,
        None => open_store(&config).await?,
    };
    let concord = Concord::new(config, store, shutdown.clone());
    let app = match prefix {
        // `nest` routes `/collab` and `/collab/...`; `/collab/` is the root too.
        Some(prefix) => Router::new().nest(&prefix, router(&concord)).route(
            &format!("{prefix}/"),
            get(edge::root).with_state(concord.inner.state.clone()),
        ),
        None => router(&concord),
    };
    tracing::info!(address = %listener.local_addr()?, "concord listening");
    let result = serve(listener, app, &concord).await;
    concord.closed().await;
    result.map_err(ServerError::Io)
}

/// Serves `app` (which mounts [`router`]`(concord)`, perhaps beside routes of your own) on
/// `listener` with the protections a server facing the Internet needs before a request is
/// complete, until `concord`'s shutdown token is cancelled; then requests in progress finish
/// (for at most [`Config::shutdown_grace`]) and it returns. [`run`] serves with it; an
/// embedder calls it in place of `axum::serve(listener, app)`:
///
/// - sockets are counted from `accept` in all ([`Config::max_sockets`]) and per peer address
///   ([`Config::max_sockets_per_address`]); a socket past a cap is closed at once, unread;
/// - a request's line and headers must arrive within [`Config::header_read_timeout`], and an
///   idle kept-alive connection is closed after [`Config::keep_alive_timeout`];
/// - when `accept` fails for want of descriptors, the loop waits (until one of its sockets
///   closes, at most a second) instead of spinning, and logs at a bounded rate;
/// - without [`Config::max_sockets`], the process's soft descriptor limit is raised to its
///   hard limit and the total cap derived from it; both are logged.
///
/// Requests carry the peer's address as axum's `ConnectInfo<SocketAddr>`. HTTP/1.1 only
/// (WebSocket upgrades included); put HTTP/2 and TLS in a reverse proxy.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    concord: &Concord,
) -> Result<(), std::io::Error> {
    edge::serve::serve(listener, app, &concord.inner.state).await
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
