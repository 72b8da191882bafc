//! What the edges are handed: the write path, the rooms, the admission policy, the change feed
//! and store for reads, operations, settings and the shutdown tree. Built once per instance by
//! [`AppState::start`], which also starts the background tasks (persistence worker, compactor,
//! awareness sweeper); the crate root only holds it.

use std::sync::{Arc, Mutex};

use concord_core::{DocName, Position, RoomLimits, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use yrs::StateVector;

use crate::config::Config;
use crate::durability::compact;
use crate::durability::feed::{self, ChangeStream, Feed, FeedError};
use crate::durability::persist::{self, PersistConfig};
use crate::durability::{LiveDocuments, Persister};
use crate::history;
use crate::ingest::Ingest;
use crate::ops::metrics::Metrics;
use crate::ops::stats::Counters;
use crate::policy::admission::Admission;
use crate::policy::limits::ConnectionLimits;
use crate::policy::sockets::Sockets;
use crate::rooms::{OpenError, QueueLimits, RoomGuard, Rooms, RoomsConfig};
use crate::webhooks::{self, Webhooks};
use futures_util::StreamExt;

/// Most compaction requests waiting for the compactor. Overflow policy: the request is dropped;
/// the next append to that document asks again (an idle document keeps its log until it is
/// next used).
const COMPACT_QUEUE: usize = 256;

/// The state every edge is handed: one pointer, cheap to clone. Every connection task holds a
/// clone for its whole life, so it stays one word (the fields behind it are many).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What an [`AppState`] points to.
pub(crate) struct Shared {
    /// The one write path.
    pub(crate) ingest: Ingest,
    /// Loaded documents: to join one, read its state or presence.
    pub(crate) rooms: Arc<Rooms>,
    /// Who may do what, before anything reaches a room.
    pub(crate) admission: Arc<Admission>,
    /// Stored updates with their positions.
    pub(crate) feed: Feed,
    /// For reads of what is stored (listing, the state of documents not loaded).
    pub(crate) store: Arc<dyn Store>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: Arc<Config>,
    /// Cancelled by the embedder: stop accepting, close connections.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Open sockets, counted and capped from `accept`.
    pub(crate) sockets: Arc<Sockets>,
    /// The files of [`Config::static_dir`], built once.
    pub(crate) static_files: Option<ServeDir>,
    /// Where events are announced, with [`Config::webhooks`].
    pub(crate) webhooks: Option<Webhooks>,
}

/// The background work [`AppState::start`] started that outlives connections: the persistence
/// worker drains after every connection has closed.
pub(crate) struct Background {
    /// Cancelled once connections are closed: the persistence worker drains and stops.
    pub(crate) stop_persist: CancellationToken,
    pub(crate) persist_worker: Mutex<Option<JoinHandle<()>>>,
}

impl AppState {
    /// Builds the state over `store` and starts the background tasks; must be called within a
    /// Tokio runtime.
    pub(crate) fn start(
        config: Config,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> (AppState, Background) {
        let config = Arc::new(config);
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let feed = Feed::new();
        let flush_seconds = Metrics::flush_histogram();
        let stop_persist = CancellationToken::new();
        let (compact_tx, compact_rx) = tokio::sync::mpsc::channel(COMPACT_QUEUE);
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
            feed.clone(),
            RoomsConfig {
                idle_timeout: config.room_idle_timeout,
                queue: QueueLimits {
                    max_bytes: config.outbound_queue_bytes,
                    counters: counters.clone(),
                },
                clock: config.clock.clone(),
                max_rooms: config.max_rooms.max(1),
                room_limits: RoomLimits {
                    max_document_bytes: config.max_document_bytes,
                    max_awareness_state_bytes: Some(config.max_awareness_state_bytes),
                    read_only_awareness: config.read_only_awareness,
                },
                counters: counters.clone(),
                replication: config.replication.clone(),
            },
            tracker.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(
            rooms
                .clone()
                .sweep_awareness(config.awareness_sweep_interval, config.awareness_timeout),
        );
        let live: Arc<dyn LiveDocuments> = rooms.clone();
        let (compacted_tx, compacted_rx) = tokio::sync::mpsc::channel(history::COMPACTED_QUEUE);
        tracker.spawn(compact::run_compactor(
            live,
            store.clone(),
            compact_rx,
            compacted_tx,
            counters.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(history::run_keeper(
            history::Keeper {
                store: store.clone(),
                clock: config.clock.clone(),
                config: config.history.clone(),
                changes: feed::all_changes(&feed),
                counters: counters.clone(),
            },
            compacted_rx,
            shutdown.clone(),
        ));
        let loaded = rooms.clone();
        let metrics = Arc::new(Metrics::new(
            counters.clone(),
            Arc::new(move || loaded.loaded().len()),
            flush_seconds,
            &config.metrics,
        ));
        let connections = ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.connection_attempts_per_ip,
            config.connection_attempt_burst,
        );
        tracker.spawn(
            connections
                .clone()
                .forget_quiet_addresses_until(shutdown.clone()),
        );
        let capacity = rooms.clone();
        let admission = Arc::new(Admission {
            shutdown: shutdown.clone(),
            allowed_origins: config.allowed_origins.clone(),
            authorizer: config.authorizer.clone(),
            connections,
            can_open: Arc::new(move |name| capacity.can_open(name)),
            max_rooms: config.max_rooms,
            counters: counters.clone(),
        });
        let webhooks = config.webhooks.clone().map(|webhooks| {
            let (handle, announced) = Webhooks::new(
                webhooks,
                store.clone(),
                config.clock.clone(),
                counters.clone(),
            );
            tracker.spawn(webhooks::run(
                handle.clone(),
                webhooks::Notifier::new(&feed, rooms.clone()),
                announced,
                shutdown.clone(),
            ));
            handle
        });
        let ingest = Ingest::new(
            rooms.clone(),
            persister,
            store.clone(),
            counters.clone(),
            webhooks.clone(),
        );
        let static_files = config
            .static_dir
            .as_ref()
            .map(|dir| ServeDir::new(dir).append_index_html_on_directories(true));
        let sockets = Sockets::new(config.max_sockets_per_address, counters.clone());
        let state = AppState(Arc::new(Shared {
            ingest,
            rooms,
            admission,
            feed,
            store,
            counters,
            metrics,
            config,
            shutdown,
            tracker,
            sockets,
            static_files,
            webhooks,
        }));
        let background = Background {
            stop_persist,
            persist_worker: Mutex::new(Some(worker)),
        };
        (state, background)
    }

    /// The changes of `doc` as they are stored: see [`crate::Concord::changes`].
    pub(crate) fn changes(
        &self,
        doc: &DocName,
        from: Option<Position>,
        sv: Option<StateVector>,
    ) -> ChangeStream {
        feed::document_stream(
            &self.feed,
            self.store.clone(),
            doc.clone(),
            from,
            sv,
            self.shutdown.clone(),
        )
    }

    /// With other processes sharing the store, their changes reach this process' feed only
    /// for documents loaded here: a reader of the feed that holds no room of its own (a poll,
    /// the Rust API) holds `name` open with this guard while it reads. `None` without them.
    pub(crate) async fn follow(&self, name: &DocName) -> Result<Option<RoomGuard>, OpenError> {
        match self.config.replication {
            Some(_) => self.rooms.open(name).await.map(Some),
            None => Ok(None),
        }
    }

    /// [`AppState::changes`] for a caller that holds no room of its own (the Rust API): the
    /// stream holds the document open while it lives (see [`AppState::follow`]).
    pub(crate) fn changes_followed(
        &self,
        doc: &DocName,
        from: Option<Position>,
        sv: Option<StateVector>,
    ) -> ChangeStream {
        if self.config.replication.is_none() {
            return self.changes(doc, from, sv);
        }
        // The room opens first: other processes' changes reach the feed only from the position
        // the room loaded at, so the stream must read the store after that (what is stored in
        // between is in the store it reads, and what is stored later comes through the feed).
        let (state, name) = (self.clone(), doc.clone());
        let opened = async move {
            let stream: ChangeStream = match state.follow(&name).await {
                Ok(guard) => Box::pin(state.changes(&name, from, sv).map(move |item| {
                    let _held = &guard;
                    item
                })),
                Err(e) => Box::pin(futures_util::stream::iter([Err(FeedError::Open(
                    e.to_string(),
                ))])),
            };
            stream
        };
        Box::pin(futures_util::stream::once(opened).flatten())
    }
}

#[cfg(test)]
impl AppState {
    /// An instance over a memory store with `config`, for unit tests of the layers above.
    pub(crate) fn for_tests(config: Config) -> AppState {
        let store: Arc<dyn Store> = Arc::new(concord_core::MemoryStore::new());
        AppState::start(config, store, CancellationToken::new()).0
    }
}
