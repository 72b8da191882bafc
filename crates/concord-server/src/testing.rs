//! Test support for the unit tests of the layers: a store whose loads and appends wait for the
//! test's permission and are counted, so that tests can hold the server at a known point
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use concord_core::{
    Appended, DocInfo, DocName, LogTail, MemoryStore, NewVersion, Seq, Store, StoreFuture,
    StoredDoc, StoredUpdate, VersionId, VersionInfo,
};
use tokio::sync::Semaphore;

/// A [`MemoryStore`] whose `load` and `append` each take a permit first (while a gate is
/// closed); loads are counted.
pub(crate) struct GatedStore {
    pub(crate) inner: MemoryStore,
    loads: AtomicUsize,
    load_gate: Option<Semaphore>,
    append_gate: Option<Semaphore>,
}

impl GatedStore {
    /// A store whose loads wait for [`GatedStore::allow_loads`] when `gate_loads`, and whose
    /// appends wait for [`GatedStore::allow_appends`] when `gate_appends`.
    pub(crate) fn new(gate_loads: bool, gate_appends: bool) -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner: MemoryStore::new(),
            loads: AtomicUsize::new(0),
            load_gate: gate_loads.then(|| Semaphore::new(0)),
            append_gate: gate_appends.then(|| Semaphore::new(0)),
        })
    }

    pub(crate) fn allow_loads(&self, n: usize) {
        if let Some(gate) = &self.load_gate {
            gate.add_permits(n);
        }
    }

    pub(crate) fn allow_appends(&self, n: usize) {
        if let Some(gate) = &self.append_gate {
            gate.add_permits(n);
        }
    }

    /// Loads started (counted before they wait at the gate).
    pub(crate) fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

async fn pass(gate: &Option<Semaphore>) {
    if let Some(gate) = gate {
        gate.acquire()
            .await
            .expect("the gate is never closed")
            .forget();
    }
}

impl Store for GatedStore {
    fn load<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, StoredDoc> {
        Box::pin(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            pass(&self.load_gate).await;
            self.inner.load(doc)
        })
    }

    fn append(&self, batch: Arc<[StoredUpdate]>) -> StoreFuture<'_, Vec<Appended>> {
        Box::pin(async move {
            pass(&self.append_gate).await;
            self.inner.append(&batch)
        })
    }

    fn compact<'a>(
        &'a self,
        doc: &'a DocName,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> StoreFuture<'a, ()> {
        Store::compact(&self.inner, doc, snapshot, upto)
    }

    fn delete<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, ()> {
        Store::delete(&self.inner, doc)
    }

    fn list(&self) -> StoreFuture<'_, Vec<DocInfo>> {
        Store::list(&self.inner)
    }

    fn log_from<'a>(&'a self, doc: &'a DocName, from: Seq) -> StoreFuture<'a, LogTail> {
        Store::log_from(&self.inner, doc, from)
    }

    fn save_version<'a>(
        &'a self,
        doc: &'a DocName,
        version: NewVersion,
    ) -> StoreFuture<'a, VersionInfo> {
        Store::save_version(&self.inner, doc, version)
    }

    fn versions<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, Vec<VersionInfo>> {
        Store::versions(&self.inner, doc)
    }

    fn version<'a>(&'a self, doc: &'a DocName, id: VersionId) -> StoreFuture<'a, Option<Vec<u8>>> {
        Store::version(&self.inner, doc, id)
    }

    fn delete_versions<'a>(
        &'a self,
        doc: &'a DocName,
        ids: Vec<VersionId>,
    ) -> StoreFuture<'a, u64> {
        Store::delete_versions(&self.inner, doc, ids)
    }

    fn outbox_write(
        &self,
        add: Vec<concord_core::OutboxEntry>,
        marks: Vec<(DocName, Option<concord_core::Position>)>,
    ) -> StoreFuture<'_, ()> {
        Store::outbox_write(&self.inner, add, marks)
    }

    fn outbox(&self) -> StoreFuture<'_, concord_core::Outbox> {
        Store::outbox(&self.inner)
    }

    fn outbox_remove(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        Store::outbox_remove(&self.inner, keys)
    }
}
