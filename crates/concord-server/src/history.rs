//! Version history: versions kept automatically, named versions, and restore.
//!
//! A version is the whole document as it was stored at some point: a snapshot in the store
//! (see [`Store::save_version`]) with the time it was taken and the position its state reaches.
//! Every version is made from what the store holds (the log replayed over the last snapshot),
//! so its position is exact: replaying the log up to it gives the same document.
//!
//! - **Automatic versions** ([`HistoryConfig::automatic`]): the keeper ([`run_keeper`]) takes one
//!   when a compaction replaced a document's log, and when a document has been edited for
//!   [`HistoryConfig::interval`] without one; never two within `interval` of each other (it
//!   asks the store for the newest, so a restart or another process sharing the store counts).
//!   After each, the retention policy ([`Retention`]) thins the document's automatic versions,
//!   and once an hour it thins every document's (versions age without new edits too).
//! - **Named versions** ([`take`] with a label): taken on request, kept until deleted.
//! - **Restore** ([`restore`]): first keeps the current state as a named version (so a restore
//!   can be restored away), then applies one update, computed by
//!   [`concord_core::restore::restore_update`] against the live room, through the ingest path:
//!   stored, relayed and acknowledged like any edit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_core::history::Retention;
use concord_core::{
    Access, Clock, DocName, NewVersion, Room, Store, StoreError, SystemClock, VersionId,
    VersionInfo, decode_frame, decode_snapshot,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use crate::durability::compact::{RebuildError, snapshot_of_stored};
use crate::durability::feed::AllChanges;
use crate::durability::is_stored;
use crate::ingest::{NotApplied, Refused};
use crate::ops::stats::Counters;
use crate::state::AppState;

/// Most compaction notices waiting for the keeper. Overflow policy: the notice is dropped; the
/// document's edits still make it due for a version after [`HistoryConfig::interval`].
pub(crate) const COMPACTED_QUEUE: usize = 256;

/// How often every document's automatic versions are thinned, besides after each new one.
const SWEEP_EVERY: Duration = Duration::from_secs(3_600);

/// Version history settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Keep versions automatically (at compactions, and while a document is edited). Named
    /// versions and restore work either way.
    pub automatic: bool,
    /// At most one automatic version per document this often, and at least one this often
    /// while it is edited.
    pub interval: Duration,
    /// How long automatic versions are kept.
    pub retention: Retention,
}

impl Default for HistoryConfig {
    /// Automatic versions every 10 minutes of editing, kept by [`Retention::default`].
    fn default() -> Self {
        HistoryConfig {
            automatic: true,
            interval: Duration::from_secs(600),
            retention: Retention::default(),
        }
    }
}

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Nothing is stored under that name.
    #[error("no document named {0:?}")]
    NoDocument(String),
    /// The document has no version with that id.
    #[error("document {doc:?} has no version {id}")]
    NoVersion {
        /// The document.
        doc: String,
        /// The version asked for.
        id: VersionId,
    },
    /// The store does not keep versions.
    #[error("this server's store keeps no version history")]
    Unsupported,
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
    /// The stored document or version cannot be read or rebuilt.
    #[error("{0}")]
    Unreadable(String),
    /// The room refused the restore's update (e.g. it would pass the document size limit).
    #[error("the restore was refused: {0}")]
    Refused(String),
    /// The document cannot be opened now (too many open).
    #[error("the document cannot be opened: {0}")]
    Open(String),
    /// The restore was applied but could not be stored.
    #[error("the restore was applied but could not be stored; restore again")]
    NotStored,
}

impl From<StoreError> for HistoryError {
    fn from(error: StoreError) -> HistoryError {
        match error {
            StoreError::Unsupported(_) => HistoryError::Unsupported,
            other => HistoryError::Store(other),
        }
    }
}

impl From<RebuildError> for HistoryError {
    fn from(error: RebuildError) -> HistoryError {
        match error {
            RebuildError::Store(e) => e.into(),
            unreadable @ RebuildError::Unreadable { .. } => {
                HistoryError::Unreadable(unreadable.to_string())
            }
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The version the document now equals.
    pub version: VersionId,
    /// The document as it was before, kept as a named version: restore it to undo.
    pub saved_before: VersionInfo,
    /// Whether the document changed (false when it already equalled the version).
    pub changed: bool,
}

/// Keeps what is stored of `doc` now as a version, named when `label` is given, and thins the
/// document's automatic versions. [`HistoryError::NoDocument`] when nothing is stored.
pub(crate) async fn take(
    store: &dyn Store,
    clock: &dyn Clock,
    retention: &Retention,
    counters: &Counters,
    doc: &DocName,
    label: Option<String>,
) -> Result<VersionInfo, HistoryError> {
    if !is_stored(store, doc).await? {
        return Err(HistoryError::NoDocument(doc.to_string()));
    }
    let (snapshot, _, position) = snapshot_of_stored(store, doc).await?;
    let saved = store
        .save_version(
            doc,
            NewVersion {
                snapshot,
                created_at_ms: clock.now(),
                position,
                label,
            },
        )
        .await?;
    Counters::bump(&counters.versions_kept);
    Counters::add(
        &counters.versions_thinned,
        thin(store, clock, retention, doc).await?,
    );
    Ok(saved)
}

/// Keeps `doc` as a version named `label`, with every update applied to it so far (they are
/// stored first).
pub(crate) async fn save_named(
    state: &AppState,
    doc: &DocName,
    label: String,
) -> Result<VersionInfo, HistoryError> {
    state.ingest.stored_so_far().await;
    take(
        state.store.as_ref(),
        state.config.clock.as_ref(),
        &state.config.history.retention,
        &state.counters,
        doc,
        Some(label),
    )
    .await
}

/// Removes the automatic versions of `doc` that `retention` no longer keeps; returns how many.
async fn thin(
    store: &dyn Store,
    clock: &dyn Clock,
    retention: &Retention,
    doc: &DocName,
) -> Result<u64, HistoryError> {
    let versions = store.versions(doc).await?;
    let doomed = retention.thin(&versions, clock.now());
    if doomed.is_empty() {
        return Ok(0);
    }
    Ok(store.delete_versions(doc, doomed).await?)
}

/// The versions of `doc`, oldest first. [`HistoryError::NoDocument`] when the document has
/// neither stored content nor versions.
pub(crate) async fn list(
    store: &dyn Store,
    doc: &DocName,
) -> Result<Vec<VersionInfo>, HistoryError> {
    let versions = store.versions(doc).await?;
    if versions.is_empty() && !is_stored(store, doc).await? {
        return Err(HistoryError::NoDocument(doc.to_string()));
    }
    Ok(versions)
}

/// The snapshot of version `id` of `doc`.
async fn snapshot_of(
    store: &dyn Store,
    doc: &DocName,
    id: VersionId,
) -> Result<Vec<u8>, HistoryError> {
    store
        .version(doc, id)
        .await?
        .ok_or_else(|| HistoryError::NoVersion {
            doc: doc.to_string(),
            id,
        })
}

/// Version `id` of `doc` as one Yjs v1 update of the whole document.
pub(crate) async fn state_of(
    store: &dyn Store,
    doc: &DocName,
    id: VersionId,
) -> Result<Vec<u8>, HistoryError> {
    let snapshot = snapshot_of(store, doc, id).await?;
    tokio::task::spawn_blocking(move || snapshot_state(&snapshot))
        .await
        .map_err(|e| HistoryError::Unreadable(e.to_string()))?
}

/// A snapshot's document as one v1 update.
fn snapshot_state(snapshot: &[u8]) -> Result<Vec<u8>, HistoryError> {
    let mut room = Room::new(Arc::new(SystemClock));
    room.restore_snapshot(snapshot)
        .map_err(|e| HistoryError::Unreadable(e.to_string()))?;
    Ok(room.encode_state())
}

/// Removes version `id` of `doc`; false when there was no such version.
pub(crate) async fn delete(
    store: &dyn Store,
    doc: &DocName,
    id: VersionId,
) -> Result<bool, HistoryError> {
    Ok(store.delete_versions(doc, vec![id]).await? > 0)
}

/// Restores `doc` to version `id`: see the module documentation. `access` is the caller's
/// (a read-only caller's restore is refused by the room like any update of theirs).
pub(crate) async fn restore(
    state: &AppState,
    doc: &DocName,
    id: VersionId,
    access: Access,
) -> Result<Restored, HistoryError> {
    let snapshot = snapshot_of(state.store.as_ref(), doc, id).await?;
    let saved_before = save_named(state, doc, format!("before restoring version {id}")).await?;
    let guard = state
        .rooms
        .open(doc)
        .await
        .map_err(|e| HistoryError::Open(e.to_string()))?;
    let room = guard.room();
    let current = room.encode_state(&yrs::StateVector::default());
    let update = tokio::task::spawn_blocking(move || {
        let version = decode_snapshot(&snapshot).map_err(|e| e.to_string())?;
        let current = yrs::Update::decode_v1(&current).map_err(|e| e.to_string())?;
        concord_core::restore::restore_update(current, version).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| HistoryError::Unreadable(e.to_string()))?
    .map_err(HistoryError::Unreadable)?;
    let Some(update) = update else {
        announce_restored(state, doc, id, saved_before.id, false).await;
        return Ok(Restored {
            version: id,
            saved_before,
            changed: false,
        });
    };
    // Framed as a client's sync update, so it is validated and decoded like one.
    let frame = yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(update)).encode_v1();
    let inbound = decode_frame(&frame).map_err(|e| HistoryError::Unreadable(e.to_string()))?;
    state
        .ingest
        .apply_request(room, access, inbound)
        .await
        .map_err(|error| match error {
            NotApplied::Refused(Refused::RoomPoisoned) => {
                HistoryError::Unreadable(Refused::RoomPoisoned.to_string())
            }
            NotApplied::Refused(other) => HistoryError::Refused(other.to_string()),
            NotApplied::NotStored => HistoryError::NotStored,
        })?;
    Counters::bump(&state.counters.restores);
    tracing::info!(%doc, version = id, "document restored");
    announce_restored(state, doc, id, saved_before.id, true).await;
    Ok(Restored {
        version: id,
        saved_before,
        changed: true,
    })
}

/// Tells the webhooks (when configured) that `doc` was restored. The restore is stored by then;
/// an outbox that cannot be written loses this event (logged), not the restore.
async fn announce_restored(
    state: &AppState,
    doc: &DocName,
    version: VersionId,
    saved_before: VersionId,
    changed: bool,
) {
    if let Some(webhooks) = &state.webhooks
        && let Err(error) = webhooks.restored(doc, version, saved_before, changed).await
    {
        tracing::error!(%doc, %error, "cannot write the document.restored webhook event");
    }
}

/// What the keeper needs.
pub(crate) struct Keeper {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: HistoryConfig,
    /// Every stored change, subscribed to when the instance starts.
    pub(crate) changes: AllChanges,
    pub(crate) counters: Arc<Counters>,
}

/// Takes automatic versions (see the module documentation) until `shutdown` is cancelled.
pub(crate) async fn run_keeper(
    keeper: Keeper,
    mut compacted: mpsc::Receiver<DocName>,
    shutdown: CancellationToken,
) {
    let Keeper {
        store,
        clock,
        config,
        mut changes,
        counters,
    } = keeper;
    let interval_ms = config.interval.as_millis() as u64;
    // Documents edited since their last automatic version, with when the first such edit was
    // seen. Bounded by the documents edited within one interval.
    let mut edited: HashMap<DocName, u64> = HashMap::new();
    // Due documents are looked for every second (a walk over the edited ones), so a version
    // is at most a second late whatever the interval.
    let mut tick = tokio::time::interval(
        (config.interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsupported = false;
    loop {
        let due: Vec<DocName> = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.next() => {
                match change {
                    Some(Ok(change)) => {
                        edited.entry(change.doc.clone()).or_insert_with(|| clock.now());
                    }
                    // Missed changes: their documents get versions at their next compaction
                    // or edit.
                    Some(Err(missed)) => {
                        tracing::debug!(missed, "the history keeper fell behind the change feed");
                    }
                    None => return,
                }
                continue;
            }
            Some(doc) = compacted.recv() => vec![doc],
            _ = tick.tick() => {
                let now = clock.now();
                edited
                    .iter()
                    .filter(|(_, since)| now.saturating_sub(**since) >= interval_ms)
                    .map(|(doc, _)| doc.clone())
                    .collect()
            }
            _ = sweep.tick() => {
                if !unsupported {
                    sweep_all(store.as_ref(), clock.as_ref(), &config.retention, &counters).await;
                }
                continue;
            }
        };
        if unsupported || !config.automatic {
            edited.clear();
            continue;
        }
        for doc in due {
            match keep_automatic(store.as_ref(), clock.as_ref(), &config, &counters, &doc).await {
                Ok(Some(newest)) => {
                    // Due again one interval after the newest automatic version.
                    if let Some(since) = edited.get_mut(&doc) {
                        *since = (*since).max(newest);
                    }
                }
                Ok(None) => {
                    edited.remove(&doc);
                }
                Err(HistoryError::Unsupported) => {
                    tracing::warn!("the store keeps no version history: no automatic versions");
                    unsupported = true;
                }
                Err(HistoryError::NoDocument(_)) => {
                    edited.remove(&doc);
                }
                Err(error) => {
                    Counters::bump(&counters.versions_failed);
                    tracing::error!(%doc, %error, "could not keep an automatic version");
                    edited.remove(&doc);
                }
            }
        }
    }
}

/// Keeps an automatic version of `doc` unless one was kept within the interval; then returns
/// `Some(time of that version)`.
async fn keep_automatic(
    store: &dyn Store,
    clock: &dyn Clock,
    config: &HistoryConfig,
    counters: &Counters,
    doc: &DocName,
) -> Result<Option<u64>, HistoryError> {
    let newest = store
        .versions(doc)
        .await?
        .iter()
        .filter(|v| v.label.is_none())
        .map(|v| v.created_at_ms)
        .max();
    let now = clock.now();
    if let Some(newest) = newest
        && now.saturating_sub(newest) < config.interval.as_millis() as u64
    {
        return Ok(Some(newest));
    }
    take(store, clock, &config.retention, counters, doc, None).await?;
    Ok(None)
}

/// Thins the automatic versions of every document that has versions, and counts the bytes of
/// every document's history (before thinning) for the metrics.
async fn sweep_all(
    store: &dyn Store,
    clock: &dyn Clock,
    retention: &Retention,
    counters: &Counters,
) {
    let docs = match store.list().await {
        Ok(docs) => docs,
        Err(error) => {
            tracing::error!(%error, "could not list documents to thin their versions");
            return;
        }
    };
    let total: u64 = docs.iter().map(|info| info.history_bytes).sum();
    counters
        .history_bytes
        .store(total, std::sync::atomic::Ordering::Relaxed);
    for info in docs.into_iter().filter(|info| info.versions > 0) {
        match thin(store, clock, retention, &info.name).await {
            Ok(removed) => Counters::add(&counters.versions_thinned, removed),
            Err(error) => tracing::error!(doc = %info.name, %error, "could not thin versions"),
        }
    }
}
