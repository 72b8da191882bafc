//! Durability: everything between a room and the [`Store`](concord_core::Store). The
//! persistence worker writes updates with group commit (`persist.rs`), barriers tell when what
//! was queued before them is stored (`barrier.rs`), the compactor replaces long logs with
//! snapshots (`compact.rs`), and the change feed publishes what was stored, with positions
//! (`feed.rs`).
//!
//! This layer talks to the store seam only. It knows nothing of rooms: a loaded document is a
//! [`LiveDocument`] it can ask for a snapshot, found through [`LiveDocuments`], both
//! implemented by the room registry.

use std::sync::Arc;

use concord_core::{DocName, Seq, SnapshotDraft, Store, StoreError};

mod barrier;
pub(crate) mod compact;
pub mod feed;
pub(crate) mod persist;

pub(crate) use barrier::Barrier;
pub(crate) use persist::Persister;

/// A document loaded in memory, whose state covers everything stored for it.
pub(crate) trait LiveDocument: Send + Sync {
    /// Its state, encoded for a snapshot (finish the draft off any lock), or `None` when it
    /// cannot give one (it failed, or yrs cannot encode it): the compactor then rebuilds the
    /// document from the store.
    fn draft_snapshot(&self) -> Option<SnapshotDraft>;
}

/// Finds the loaded document of a name.
pub(crate) trait LiveDocuments: Send + Sync {
    /// The loaded document `doc`, if it is loaded.
    fn live(&self, doc: &DocName) -> Option<Arc<dyn LiveDocument>>;
}

/// Whether `store` holds anything of `doc` (a log entry was ever written and not deleted).
pub(crate) async fn is_stored(store: &dyn Store, doc: &DocName) -> Result<bool, StoreError> {
    Ok(store.log_from(doc, Seq::MAX).await?.last_seq > 0)
}
