//! The compactor: replaces a document's long log with a snapshot, one document at a time, off
//! the persistence worker's path so that writes of other rooms never wait for it.
//!
//! The snapshot comes from the live document when it is loaded (encoding it holds the room's
//! lock for about a millisecond on a large document, so its clients keep being served), or
//! from the document that was just unloaded when the request comes from unloading, else from
//! the store itself. Either way it covers every log entry up to the requested
//! sequence number: those entries were applied to the room before the persistence worker wrote
//! them, and a room only loads after every write of its previous incarnation (see
//! `rooms/registry.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use concord_core::{DocName, Position, Room, Seq, Store, StoreError, SystemClock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::durability::{LiveDocument, LiveDocuments};
use crate::ops::stats::Counters;

/// A request to compact `doc` up to log entry `upto`.
pub(crate) struct CompactRequest {
    pub(crate) doc: DocName,
    pub(crate) upto: Seq,
    /// The room that wrote those entries, if it was just unloaded: its state covers them, and
    /// encoding it is cheaper than rebuilding the document from the store.
    pub(crate) unloaded: Option<Arc<dyn LiveDocument>>,
}

/// Runs until `shutdown` is cancelled or every request sender is gone. Counts compactions in
/// `counters`, and tells `compacted` of each document compacted (overflow policy: when that
/// queue is full the notice is dropped; the history keeper still sees the document's edits).
pub(crate) async fn run_compactor(
    live: Arc<dyn LiveDocuments>,
    store: Arc<dyn Store>,
    mut requests: mpsc::Receiver<CompactRequest>,
    compacted: mpsc::Sender<DocName>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            request = requests.recv() => request,
            _ = shutdown.cancelled() => return,
        };
        let Some(first) = first else {
            return;
        };
        // Coalesce what queued up meanwhile: one compaction per document, up to its latest entry.
        let mut pending: HashMap<DocName, (Seq, Option<Arc<dyn LiveDocument>>)> = HashMap::new();
        let mut add = |request: CompactRequest| {
            let (seq, unloaded) = pending.entry(request.doc).or_default();
            *seq = (*seq).max(request.upto);
            // Any unloaded room covers what it wrote; the latest one covers the most.
            if request.unloaded.is_some() {
                *unloaded = request.unloaded;
            }
        };
        add(first);
        while let Ok(request) = requests.try_recv() {
            add(request);
        }
        for (doc, (upto, unloaded)) in pending {
            if shutdown.is_cancelled() {
                return;
            }
            match compact_one(live.as_ref(), &store, &doc, upto, unloaded).await {
                Ok(bytes) => {
                    Counters::bump(&counters.compactions_done);
                    tracing::debug!(%doc, upto, snapshot_bytes = bytes, "compacted");
                    let _ = compacted.try_send(doc);
                }
                Err(error) => {
                    Counters::bump(&counters.compactions_failed);
                    tracing::error!(%doc, upto, %error, "compaction failed; the log is kept");
                }
            }
        }
    }
}

async fn compact_one(
    live: &dyn LiveDocuments,
    store: &Arc<dyn Store>,
    doc: &DocName,
    upto: Seq,
    unloaded: Option<Arc<dyn LiveDocument>>,
) -> Result<usize, String> {
    // A store other processes write to: a room here may lack what they appended, so only the
    // store itself covers `upto` (and its snapshot covers whatever it read, maybe more).
    if store.shared() {
        let (snapshot, covered, _) = snapshot_of_stored(store.as_ref(), doc)
            .await
            .map_err(|e| e.to_string())?;
        let size = snapshot.len();
        store
            .compact(doc, snapshot, covered)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(size);
    }
    // The loaded room holds everything stored so far; a room unloaded since holds everything
    // it wrote, which is what `upto` covers; else the store itself.
    let live = live
        .live(doc)
        .or(unloaded)
        .and_then(|room| room.draft_snapshot());
    let snapshot = match live {
        // Checking the v2 encoding decodes it: blocking work.
        Some(draft) => tokio::task::spawn_blocking(move || draft.finish())
            .await
            .map_err(|e| e.to_string())?,
        None => {
            snapshot_of_stored(store.as_ref(), doc)
                .await
                .map_err(|e| e.to_string())?
                .0
        }
    };
    let size = snapshot.len();
    store
        .compact(doc, snapshot, upto)
        .await
        .map_err(|e| e.to_string())?;
    Ok(size)
}

/// Why a stored document could not be turned into a snapshot.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RebuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("document {doc:?} cannot be rebuilt: {reason}")]
    Unreadable { doc: String, reason: String },
}

/// Rebuilds a document from the store and encodes its snapshot, with the sequence number of
/// the last log entry it covers and the position its state reaches. For documents that are not
/// loaded, the offline `docs compact` command, and versions.
pub(crate) async fn snapshot_of_stored(
    store: &dyn Store,
    doc: &DocName,
) -> Result<(Vec<u8>, Seq, Position), RebuildError> {
    let stored = store.load(doc).await?;
    let (last_seq, position) = (stored.last_seq, stored.position);
    let name = doc.clone();
    let unreadable = |reason: String| RebuildError::Unreadable {
        doc: doc.to_string(),
        reason,
    };
    // Replaying a long log and encoding the snapshot is blocking work.
    let snapshot = tokio::task::spawn_blocking(move || {
        let room = rebuild(&name, &stored).map_err(|e| e.to_string())?;
        room.encode_snapshot().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| unreadable(format!("rebuilding it panicked: {e}")))?
    .map_err(unreadable)?;
    Ok((snapshot, last_seq, position))
}

/// Rebuilds a room from what the store holds for `doc`, logging the updates that do not apply.
pub(crate) fn rebuild(
    doc: &DocName,
    stored: &concord_core::StoredDoc,
) -> Result<Room, concord_core::ProtocolError> {
    let (room, skipped) = Room::from_stored(Arc::new(SystemClock), stored)?;
    for (index, error) in skipped {
        tracing::error!(%doc, index, %error, "skipping a stored update that does not apply");
    }
    Ok(room)
}
