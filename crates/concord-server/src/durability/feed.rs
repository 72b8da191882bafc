//! The change feed: every update the persistence worker stores, with its position, for
//! embedding backends ([`crate::Concord::changes`], [`crate::Concord::all_changes`]) and for
//! the SSE and polling transports, which are built on it.
//!
//! An update enters the feed once it is stored, so every change a subscriber sees is durable
//! and has a position it can resume from. The feed is a bounded broadcast channel
//! (16,384 changes); a subscriber that falls that far behind is told it lagged, and a
//! document stream then catches up from the store's log, or with a state sync when compaction
//! removed that part of the log. Nothing is skipped either way.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use concord_core::{DocName, Position, Room, Seq, Store, StoredUpdate, SystemClock};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use yrs::{ReadTxn, StateVector, Transact};

/// Changes the broadcast channel holds for its slowest subscriber.
pub(crate) const FEED_CAPACITY: usize = 16 * 1024;

/// One stored update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its document.
    pub doc: DocName,
    /// Where it sits in the document's history.
    pub position: Position,
    /// The update, Yjs v1.
    pub update: Bytes,
}

/// What a document stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// The document's state, or what it has beyond the state vector the stream was opened
    /// with, as one Yjs v1 update, and the position that state reaches. Comes first when a
    /// stream starts without a position, or when the log no longer holds the history from the
    /// position it was asked to resume at (compaction replaced it with a snapshot).
    Sync {
        /// Yjs v1 update.
        update: Vec<u8>,
        /// How far the state reaches: changes after it follow.
        position: Position,
    },
    /// A stored update, in position order.
    Change(Arc<Change>),
}

/// Why a document stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The store could not be read.
    #[error("the store failed: {0}")]
    Store(String),
    /// The stored document cannot be rebuilt.
    #[error("the stored document cannot be rebuilt: {0}")]
    Unreadable(String),
    /// With other processes sharing the store, the document could not be opened here, so
    /// their changes could not be followed.
    #[error("the document cannot be opened to follow other processes' changes: {0}")]
    Open(String),
}

/// A document's changes: see [`crate::Concord::changes`].
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<FeedEvent, FeedError>> + Send>>;

/// The sending side, held by the persistence worker, and the place subscribers come from.
#[derive(Clone)]
pub(crate) struct Feed {
    tx: broadcast::Sender<Arc<Change>>,
}

impl Feed {
    pub(crate) fn new() -> Feed {
        Feed {
            tx: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// Whether anyone listens (publishing costs nothing otherwise).
    pub(crate) fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes the updates of one log entry of `doc`, in entry order.
    pub(crate) fn publish(&self, doc: &DocName, seq: Seq, updates: Vec<Vec<u8>>) {
        for (index, update) in updates.into_iter().enumerate() {
            let position = Position {
                seq,
                index: u32::try_from(index).unwrap_or(u32::MAX),
            };
            // No receivers is not an error: nobody listens right now.
            let _ = self.tx.send(Arc::new(Change {
                doc: doc.clone(),
                position,
                update: Bytes::from(update),
            }));
        }
    }

    /// Publishes everything a successful `append` of `batch` wrote: `seqs` holds the seq of each
    /// document's new entry.
    pub(crate) fn publish_batch(&self, mut batch: Arc<[StoredUpdate]>, seqs: &[(DocName, Seq)]) {
        if !self.has_subscribers() {
            return;
        }
        // Once the store's call returned, the batch is no longer shared: take its bytes instead
        // of copying them (a copy only if a store kept a handle).
        let updates: Vec<(DocName, Vec<u8>)> = match Arc::get_mut(&mut batch) {
            Some(owned) => owned
                .iter_mut()
                .map(|update| (update.doc.clone(), std::mem::take(&mut update.update)))
                .collect(),
            None => batch
                .iter()
                .map(|update| (update.doc.clone(), update.update.clone()))
                .collect(),
        };
        // The store wrote each document's updates in batch order: group them the same way.
        let mut by_doc: std::collections::BTreeMap<DocName, Vec<Vec<u8>>> =
            std::collections::BTreeMap::new();
        for (doc, update) in updates {
            by_doc.entry(doc).or_default().push(update);
        }
        for (doc, seq) in seqs {
            if let Some(updates) = by_doc.remove(doc) {
                self.publish(doc, *seq, updates);
            }
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

/// The stream of `doc`'s changes after `from` (or a state sync first, against `sv`), fed by a
/// task until the stream is dropped or `shutdown` is cancelled.
pub(crate) fn document_stream(
    feed: &Feed,
    store: Arc<dyn Store>,
    doc: DocName,
    from: Option<Position>,
    sv: Option<StateVector>,
    shutdown: CancellationToken,
) -> ChangeStream {
    // Subscribed before anything is read, so nothing stored meanwhile can be missed; what is
    // read twice is dropped by position.
    let live = feed.subscribe();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let run = follow(live, store, doc, from, sv, &tx);
        tokio::select! {
            result = run => {
                if let Err(e) = result {
                    let _ = tx.send(Err(e)).await;
                }
            }
            _ = shutdown.cancelled() => {}
            _ = tx.closed() => {}
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Every change of every document, as it is stored, live (no history). A subscriber more than
/// [`FEED_CAPACITY`] changes behind gets `Err(lagged count)` and goes on with newer changes.
/// What [`all_changes`] returns: every stored change, or how many were missed.
pub(crate) type AllChanges = Pin<Box<dyn Stream<Item = Result<Arc<Change>, u64>> + Send>>;

pub(crate) fn all_changes(feed: &Feed) -> AllChanges {
    let rx = feed.subscribe();
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(change) => Some((Ok(change), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some((Err(n), rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}

type Sender = mpsc::Sender<Result<FeedEvent, FeedError>>;

async fn follow(
    mut live: broadcast::Receiver<Arc<Change>>,
    store: Arc<dyn Store>,
    doc: DocName,
    from: Option<Position>,
    sv: Option<StateVector>,
    tx: &Sender,
) -> Result<(), FeedError> {
    let mut last = match from {
        Some(from) => catch_up(&store, &doc, from, sv.as_ref(), tx).await?,
        None => sync(&store, &doc, sv.as_ref(), tx).await?,
    };
    loop {
        match live.recv().await {
            Ok(change) => {
                if change.doc == doc && change.position > last {
                    last = change.position;
                    if tx.send(Ok(FeedEvent::Change(change))).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                last = catch_up(&store, &doc, last, sv.as_ref(), tx).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Sends what the log holds after `from`, or a sync when it no longer holds all of it.
/// Returns the position reached.
async fn catch_up(
    store: &Arc<dyn Store>,
    doc: &DocName,
    from: Position,
    sv: Option<&StateVector>,
    tx: &Sender,
) -> Result<Position, FeedError> {
    let tail = store
        .log_from(doc, from.seq)
        .await
        .map_err(|e| FeedError::Store(e.to_string()))?;
    // A position past the end of the log comes from another history of the document (a
    // memory store that restarted, a document deleted and made again): start over.
    if !tail.complete || from.seq > tail.last_seq {
        return sync(store, doc, sv, tx).await;
    }
    let mut last = from;
    for (seq, updates) in tail.entries {
        for (index, update) in updates.into_iter().enumerate() {
            let position = Position {
                seq,
                index: u32::try_from(index).unwrap_or(u32::MAX),
            };
            if position <= from {
                continue;
            }
            last = position;
            let change = Arc::new(Change {
                doc: doc.clone(),
                position,
                update: Bytes::from(update),
            });
            if tx.send(Ok(FeedEvent::Change(change))).await.is_err() {
                return Ok(last);
            }
        }
    }
    Ok(last)
}

/// Sends the stored state (or its diff against `sv`) and returns the position it reaches.
async fn sync(
    store: &Arc<dyn Store>,
    doc: &DocName,
    sv: Option<&StateVector>,
    tx: &Sender,
) -> Result<Position, FeedError> {
    let (update, position) = stored_state(store.clone(), doc.clone(), sv.cloned()).await?;
    let _ = tx.send(Ok(FeedEvent::Sync { update, position })).await;
    Ok(position)
}

/// The stored state of `doc` as one v1 update (what `sv` lacks, when given), and the position
/// it reaches.
pub(crate) async fn stored_state(
    store: Arc<dyn Store>,
    doc: DocName,
    sv: Option<StateVector>,
) -> Result<(Vec<u8>, Position), FeedError> {
    let stored = store
        .load(&doc)
        .await
        .map_err(|e| FeedError::Store(e.to_string()))?;
    // Replaying a long log is blocking work: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let (room, _skipped) = Room::from_stored(Arc::new(SystemClock), &stored)
            .map_err(|e| FeedError::Unreadable(e.to_string()))?;
        let update = room
            .doc()
            .transact()
            .encode_state_as_update_v1(&sv.unwrap_or_default());
        Ok((update, stored.position))
    })
    .await
    .map_err(|e| FeedError::Store(e.to_string()))?
}
