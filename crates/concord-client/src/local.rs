//! The provider's offline store: the document's updates (local and remote) appended to a
//! Concord store on the client's own directory, compacted now and then, and read back when the
//! provider starts. Writes go through a task that batches whatever arrived meanwhile.

use std::path::Path;
use std::sync::{Arc, Mutex};

use concord_core::{DocName, SnapshotDraft, StoredUpdate};
use concord_sled::SledStore;
use tokio::sync::Notify;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use crate::lock;

/// Compact the local log once it holds this many updates.
const COMPACT_AFTER: u64 = 1000;

/// Updates waiting to be written, and the signal that there are some.
#[derive(Default)]
pub(crate) struct Pending {
    updates: Mutex<Vec<Vec<u8>>>,
    ready: Notify,
    /// Set by `close`: write what is left and stop.
    closing: std::sync::atomic::AtomicBool,
}

impl Pending {
    /// Queues an update (called from the document's update observer: never blocks on I/O).
    pub(crate) fn push(&self, update: Vec<u8>) {
        crate::push_merging(&mut lock(&self.updates), update);
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.updates))
    }
}

/// The open local store.
pub(crate) struct LocalStore {
    store: Arc<SledStore>,
    doc_name: DocName,
    pub(crate) pending: Arc<Pending>,
}

/// Why the local store failed.
pub(crate) type LocalError = String;

impl LocalStore {
    /// Opens (or creates) the store in `dir` and applies what it holds of `doc_name` to `doc`.
    pub(crate) fn open(
        dir: &Path,
        doc_name: &DocName,
        doc: &Doc,
    ) -> Result<LocalStore, LocalError> {
        let store = SledStore::open(dir).map_err(|e| e.to_string())?;
        let stored = store.load(doc_name).map_err(|e| e.to_string())?;
        {
            let mut txn = doc.transact_mut();
            if let Some(snapshot) = &stored.snapshot {
                let update = concord_core::decode_snapshot(snapshot).map_err(|e| e.to_string())?;
                txn.apply_update(update).map_err(|e| e.to_string())?;
            }
            for update in &stored.updates {
                match Update::decode_v1(update) {
                    Ok(update) => {
                        if let Err(e) = txn.apply_update(update) {
                            tracing::warn!(error = %e, "skipping a locally stored update");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping a locally stored update"),
                }
            }
        }
        Ok(LocalStore {
            store: Arc::new(store),
            doc_name: doc_name.clone(),
            pending: Arc::default(),
        })
    }

    /// Writes queued updates until `close` is called (then writes what is left and returns).
    pub(crate) async fn run(&self, doc: Doc) {
        let mut since_compaction = 0u64;
        loop {
            let closing = self
                .pending
                .closing
                .load(std::sync::atomic::Ordering::Acquire);
            let updates = self.pending.take();
            if !updates.is_empty() {
                since_compaction += updates.len() as u64;
                let batch: Vec<StoredUpdate> = updates
                    .into_iter()
                    .map(|update| StoredUpdate {
                        doc: self.doc_name.clone(),
                        update,
                    })
                    .collect();
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.append(&batch)).await {
                    Ok(Ok(written)) => {
                        if since_compaction >= COMPACT_AFTER
                            && let Some(appended) = written.first()
                        {
                            since_compaction = 0;
                            self.compact(&doc, appended.seq).await;
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "the local store failed a write"),
                    Err(e) => tracing::error!(error = %e, "the local store panicked"),
                }
                continue;
            }
            if closing {
                return;
            }
            self.pending.ready.notified().await;
        }
    }

    async fn compact(&self, doc: &Doc, upto: concord_core::Seq) {
        // The document holds everything written so far (updates are stored after they are in
        // the document), so its snapshot covers entry `upto`.
        let Ok(draft) = SnapshotDraft::of(doc) else {
            return;
        };
        let store = self.store.clone();
        let name = self.doc_name.clone();
        let done = tokio::task::spawn_blocking(move || store.compact(&name, &draft.finish(), upto));
        if let Ok(Err(e)) = done.await {
            tracing::warn!(error = %e, "the local store could not compact");
        }
    }

    /// Asks `run` to write what is queued and stop.
    pub(crate) fn close(&self) {
        self.pending
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        self.pending.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    #[test]
    fn a_long_queue_is_merged_without_losing_an_edit() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let pending = Arc::new(Pending::default());
        let sink = pending.clone();
        doc.observe_update_v1("test", move |_, e| sink.push(e.update.clone()))
            .unwrap();
        for i in 0..3000u32 {
            text.insert(&mut doc.transact_mut(), i, "x");
        }
        let queued = pending.take();
        assert!(
            queued.len() < crate::MAX_QUEUED_UPDATES,
            "{} queued",
            queued.len()
        );
        let copy = Doc::new();
        for update in queued {
            copy.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
        let copied = copy.get_or_insert_text("t").get_string(&copy.transact());
        assert_eq!(copied, "x".repeat(3000));
    }
}
