//! The storage trait every persistence backend implements, and an in-memory implementation.
//!
//! The trait is synchronous on purpose: the engine does no I/O, and the server calls a store from
//! a blocking thread pool (`spawn_blocking`), batching many updates into one `append` call (group
//! commit). Backends therefore see few, large calls and never block an async runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::DocName;

/// An error reported by a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O error, corruption, a closed database...).
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One update to append to a document's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpdate {
    /// The document the update belongs to.
    pub doc: DocName,
    /// A Yjs update in lib0 v1 encoding, exactly as the engine produced it.
    pub update: Vec<u8>,
}

/// Durable storage for documents: an append-only log of Yjs v1 updates per document.
///
/// **Contract.** `append` returns only once every update of the batch is as durable as the
/// backend promises (the backend documents how durable that is). Updates of one document may be
/// appended in any order: Yjs updates commute, so replaying them in any order yields the same
/// document. `load` returns updates that, applied one by one to an empty document, rebuild it.
pub trait Store: Send + Sync + 'static {
    /// Everything stored for `doc`, as updates to apply in order. Empty when the document is
    /// unknown.
    fn load(&self, doc: &DocName) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Appends a batch of updates (possibly for several documents) durably.
    fn append(&self, batch: &[StoredUpdate]) -> Result<(), StoreError>;

    /// Removes everything stored for `doc`. Removing an unknown document is not an error.
    fn delete(&self, doc: &DocName) -> Result<(), StoreError>;

    /// The names of every stored document, sorted.
    fn list(&self) -> Result<Vec<DocName>, StoreError>;
}

/// A [`Store`] that keeps logs in process memory: nothing survives a restart. For tests, and for
/// servers that only relay.
#[derive(Debug, Default)]
pub struct MemoryStore {
    docs: Mutex<HashMap<DocName, Vec<Vec<u8>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many updates are stored for `doc` (for tests that check what was persisted).
    pub fn update_count(&self, doc: &DocName) -> usize {
        self.lock().get(doc).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DocName, Vec<Vec<u8>>>> {
        // A panic while holding this lock cannot leave the map half-written (every operation is
        // a single insert or remove), so a poisoned lock is still safe to use.
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self, doc: &DocName) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.lock().get(doc).cloned().unwrap_or_default())
    }

    fn append(&self, batch: &[StoredUpdate]) -> Result<(), StoreError> {
        let mut docs = self.lock();
        for entry in batch {
            docs.entry(entry.doc.clone())
                .or_default()
                .push(entry.update.clone());
        }
        Ok(())
    }

    fn delete(&self, doc: &DocName) -> Result<(), StoreError> {
        self.lock().remove(doc);
        Ok(())
    }

    fn list(&self) -> Result<Vec<DocName>, StoreError> {
        let docs = self.lock();
        let sorted: BTreeMap<_, _> = docs.iter().collect();
        Ok(sorted.into_keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DocName {
        DocName::new(s).unwrap()
    }

    #[test]
    fn appends_loads_lists_and_deletes() {
        let store = MemoryStore::new();
        assert!(store.load(&name("a")).unwrap().is_empty());
        store
            .append(&[
                StoredUpdate {
                    doc: name("b"),
                    update: vec![1],
                },
                StoredUpdate {
                    doc: name("a"),
                    update: vec![2],
                },
                StoredUpdate {
                    doc: name("b"),
                    update: vec![3],
                },
            ])
            .unwrap();
        assert_eq!(store.load(&name("b")).unwrap(), vec![vec![1], vec![3]]);
        assert_eq!(store.list().unwrap(), vec![name("a"), name("b")]);
        store.delete(&name("b")).unwrap();
        store.delete(&name("unknown")).unwrap();
        assert_eq!(store.list().unwrap(), vec![name("a")]);
    }
}
