//! The compactor: replaces a document's long log with a snapshot, one document at a time, off
//! the persistence worker's path so that writes of other rooms never wait for it.
//!
//! The snapshot comes from the live room when the document is loaded (encoding it holds the
//! room's lock for about a millisecond on a large document, so its clients keep being served),
//! or from the room that was just unloaded when the request comes from unloading, else from
//! the store itself. Either way it covers every log entry up to the requested
//! sequence number: those entries were applied to the room before the persistence worker wrote
//! them, and a room only loads after every write of its previous incarnation (see `rooms.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_core::{DocName, Seq, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::rooms::{LiveRoom, Rooms};

/// A request to compact `doc` up to log entry `upto`.
pub(crate) struct CompactRequest {
    pub(crate) doc: DocName,
    pub(crate) upto: Seq,
    /// The room that wrote those entries, if it was just unloaded: its state covers them, and
    /// encoding it is cheaper than rebuilding the document from the store.
    pub(crate) unloaded: Option<Arc<LiveRoom>>,
}

/// Counters the compactor keeps, for tests and (later) metrics.
#[derive(Debug, Default)]
pub(crate) struct CompactionStats {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// Runs until `shutdown` is cancelled or every request sender is gone.
pub(crate) async fn run_compactor(
    rooms: Arc<Rooms>,
    store: Arc<dyn Store>,
    mut requests: mpsc::Receiver<CompactRequest>,
    stats: Arc<CompactionStats>,
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
        let mut pending: HashMap<DocName, (Seq, Option<Arc<LiveRoom>>)> = HashMap::new();
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
            match compact_one(&rooms, &store, &doc, upto, unloaded).await {
                Ok(bytes) => {
                    stats.done.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%doc, upto, snapshot_bytes = bytes, "compacted");
                }
                Err(error) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%doc, upto, %error, "compaction failed; the log is kept");
                }
            }
        }
    }
}

async fn compact_one(
    rooms: &Rooms,
    store: &Arc<dyn Store>,
    doc: &DocName,
    upto: Seq,
    unloaded: Option<Arc<LiveRoom>>,
) -> Result<usize, String> {
    // The loaded room holds everything stored so far; a room unloaded since holds everything
    // it wrote, which is what `upto` covers; else the store itself.
    let live = rooms.get(doc).or(unloaded).and_then(|room| room.snapshot());
    let snapshot = match live {
        // Checking the v2 encoding decodes it: blocking work.
        Some(draft) => tokio::task::spawn_blocking(move || draft.finish())
            .await
            .map_err(|e| e.to_string())?,
        None => {
            crate::admin::snapshot_of_stored(store.as_ref(), doc)
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
