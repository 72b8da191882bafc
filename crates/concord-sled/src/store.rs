//! [`SledStore`]: the [`Store`] trait on one sled tree.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sled::Transactional;

use concord_core::{Appended, DocInfo, DocName, Seq, Store, StoreError, StoredDoc, StoredUpdate};

use crate::keys;
use crate::record::{
    self, DocMeta, FORMAT_VERSION, IdCounter, LogEntry, LogEntryRef, Snapshot, SnapshotRef,
    StoreMeta,
};

/// How [`SledStore::open_with`] configures sled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// How often sled's background thread fsyncs, in milliseconds; `None` turns the thread off.
    /// This is the window a power loss (not a killed process) may lose: see the crate
    /// documentation. Default: `Some(500)`, sled's own default.
    pub flush_every_ms: Option<u64>,
    /// Upper bound of sled's page cache, in bytes. Default: 128 MiB. Rooms being edited live in
    /// memory as yrs documents already, so the cache mostly serves loads and compactions; sled's
    /// own default (1 GiB) would mostly duplicate what the server holds.
    pub cache_capacity_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            flush_every_ms: Some(500),
            cache_capacity_bytes: 128 * 1024 * 1024,
        }
    }
}

/// The durable [`Store`]: documents in a sled database, in the layout and with the durability
/// contract described in the [crate documentation](crate).
pub struct SledStore {
    db: sled::Db,
    /// Snapshots live in their own tree. In the default tree, a document's snapshot key sat in
    /// the same leaf as its newest log keys, and sled rewrites a leaf's large values whenever it
    /// rewrites the leaf: every append after a compaction rewrote the whole snapshot (measured:
    /// ~19 KB written per 10-update append instead of ~1.2 KB). Compaction writes both trees in
    /// one sled transaction, so it stays atomic.
    snapshots: sled::Tree,
    /// Held by every operation that reads or writes document metadata or must see one document
    /// consistently: `append`, `compact`, `delete` and `load`. sled applies a batch atomically
    /// for single-key reads, but a range scan can observe a compaction's batch between two of
    /// its steps, so `load` takes the lock as well. Flushes happen after it is released, so a
    /// slow flush never holds up another writer's batch.
    state: Mutex<State>,
    /// Corrupt log entries read since the store was opened.
    corrupt_seen: AtomicU64,
}

/// What the lock protects besides the metadata read-modify-writes themselves.
#[derive(Debug)]
struct State {
    /// Mirror of the `b"i"` counter; changed only after the batch that persists it is applied.
    next_doc_id: u64,
}

/// How long `open` waits for sled's lock on the directory. Dropping the last handle of a store
/// does not release the lock at once: sled's background write tasks (on a thread pool shared by
/// every sled database in the process) hold the file a few more milliseconds (measured: up to
/// ~7 ms with four stores busy in one process), so an immediate reopen in the same process (a
/// restart in tests, an embedder) would otherwise fail now and then.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Name of the sled tree holding snapshots (see the `snapshots` field of [`SledStore`]).
const SNAPSHOT_TREE: &[u8] = b"snapshots";

/// The tail of a document's log, counted from its entries.
#[derive(Debug, Default)]
struct Tail {
    entries: u64,
    updates: u64,
    bytes: u64,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with default [`SledOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates, with any missing parent directories) the store in directory `path`.
    ///
    /// Fails with [`StoreError::NewerFormat`] if a newer Concord wrote the store, with
    /// [`StoreError::Corrupt`] if the directory holds a sled database that is not a Concord
    /// store (or whose format records are damaged), and with [`StoreError::Backend`] if sled
    /// cannot open it (I/O errors, or the directory is still locked by another handle after
    /// waiting a second for it: a store dropped a moment ago may hold it a few more
    /// milliseconds).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SledOptions,
    ) -> Result<SledStore, StoreError> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(backend)?;
        let config = sled::Config::new()
            .path(path)
            .flush_every_ms(options.flush_every_ms)
            .cache_capacity(options.cache_capacity_bytes);
        let db = open_waiting_for_lock(&config)?;
        let next_doc_id = check_format(&db)?;
        let snapshots = db.open_tree(SNAPSHOT_TREE).map_err(backend)?;
        Ok(SledStore {
            db,
            snapshots,
            state: Mutex::new(State { next_doc_id }),
            corrupt_seen: AtomicU64::new(0),
        })
    }

    /// How many corrupt log entries this store has read (and skipped) since it was opened. An
    /// entry read twice counts twice: this is a signal for monitoring, not an inventory.
    pub fn corrupt_entries_seen(&self) -> u64 {
        self.corrupt_seen.load(Ordering::Relaxed)
    }

    /// Failpoint for tests: does what [`Store::compact`] does except deleting the covered log
    /// entries, i.e. what a crash between the two halves of a non-atomic compaction would leave.
    /// `load` must still return every update exactly once.
    #[doc(hidden)]
    pub fn compact_snapshot_only(
        &self,
        doc: &DocName,
        snapshot: &[u8],
        upto: Seq,
    ) -> Result<(), StoreError> {
        self.compact_inner(doc, snapshot, upto, false)
    }

    /// The underlying sled tree, for tests that inspect or damage stored records.
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.db
    }

    /// The sled tree holding snapshots, for tests that inspect or damage them.
    #[doc(hidden)]
    pub fn raw_snapshots(&self) -> &sled::Tree {
        &self.snapshots
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // `State` is only changed after the write it mirrors succeeded, so a panic while the
        // lock is held cannot leave it out of step with the database: a poisoned lock is safe.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_meta(&self, doc: &DocName) -> Result<Option<DocMeta>, StoreError> {
        let Some(value) = self.db.get(keys::doc(doc.as_str())).map_err(backend)? else {
            return Ok(None);
        };
        record::open(&value)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("metadata of document {doc:?}: {e}")))
    }

    /// The snapshot of `doc` and the seq it covers, checked against the metadata.
    fn read_snapshot(
        &self,
        doc: &DocName,
        meta: &DocMeta,
    ) -> Result<Option<(Vec<u8>, Seq)>, StoreError> {
        let corrupt = |why: String| {
            StoreError::Corrupt(format!(
                "snapshot of document {doc:?}: {why}; the document cannot be rebuilt from the \
                 log entries after it alone"
            ))
        };
        let value = self
            .snapshots
            .get(keys::snapshot(meta.id))
            .map_err(backend)?;
        match (meta.snapshot_seq, value) {
            (None, None) => Ok(None),
            (Some(seq), Some(value)) => {
                let snapshot: Snapshot =
                    record::open(&value).map_err(|e| corrupt(e.to_string()))?;
                if snapshot.upto != seq {
                    return Err(corrupt(format!(
                        "it covers seq {} but the metadata says {seq}",
                        snapshot.upto
                    )));
                }
                Ok(Some((snapshot.bytes.0, seq)))
            }
            (Some(_), None) => Err(corrupt("it is missing".into())),
            (None, Some(_)) => Err(corrupt("the metadata does not know about it".into())),
        }
    }

    /// Logs a corrupt log entry loudly and counts it.
    fn report_corrupt(&self, doc: &DocName, seq: Option<Seq>, reason: &dyn fmt::Display) {
        self.corrupt_seen.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            doc = %doc,
            seq,
            reason = %reason,
            "corrupt log entry skipped: the updates it held are lost from this document"
        );
    }

    /// Counts the log entries of document `id` with seq > `after`.
    fn count_tail(&self, doc: &DocName, id: u64, after: Seq) -> Result<Tail, StoreError> {
        let mut tail = Tail::default();
        let Some(from) = after.checked_add(1) else {
            return Ok(tail);
        };
        for item in self.db.range(keys::log_range(id, from, Seq::MAX)) {
            let (key, value) = item.map_err(backend)?;
            tail.entries += 1;
            match record::open::<LogEntry>(&value) {
                Ok(entry) => {
                    tail.updates += entry.updates.0.len() as u64;
                    tail.bytes += entry.updates.0.iter().map(|u| u.len() as u64).sum::<u64>();
                }
                Err(e) => self.report_corrupt(doc, keys::log_seq(&key), &e),
            }
        }
        Ok(tail)
    }

    fn compact_inner(
        &self,
        doc: &DocName,
        snapshot: &[u8],
        upto: Seq,
        delete_covered: bool,
    ) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            let mut batch = sled::Batch::default();
            let (mut meta, new_next_id) = match self.read_meta(doc)? {
                Some(meta) => (meta, None),
                None => (
                    DocMeta::new(state.next_doc_id),
                    Some(next_id(state.next_doc_id)?),
                ),
            };
            // The new snapshot replaces the old one, which already made the entries up to its
            // seq redundant: never let those come back, even if `upto` is older (the store's
            // observable behaviour is then the same as the in-memory reference's).
            let covered = meta.snapshot_seq.map_or(upto, |old| old.max(upto));
            if delete_covered {
                // Collected first, then removed in the same batch as the snapshot is written.
                for key in self.db.range(keys::log_range(meta.id, 0, covered)).keys() {
                    batch.remove(key.map_err(backend)?);
                }
            }
            // Recounted from the entries that remain rather than adjusted: exact even if an
            // earlier compaction stopped half-way, and the remaining tail is the short part.
            let tail = self.count_tail(doc, meta.id, covered)?;
            meta.snapshot_seq = Some(covered);
            meta.snapshot_bytes = snapshot.len() as u64;
            meta.tail_entries = tail.entries;
            meta.tail_updates = tail.updates;
            meta.tail_bytes = tail.bytes;
            meta.next_seq = meta.next_seq.max(covered.saturating_add(1));
            meta.updated_at_ms = now_ms();
            let snapshot_record = seal(&SnapshotRef {
                upto: covered,
                bytes: snapshot,
            })?;
            batch.insert(keys::doc(doc.as_str()), seal(&meta)?);
            if let Some(next_doc_id) = new_next_id {
                batch.insert(keys::ID_COUNTER, seal(&IdCounter { next_doc_id })?);
            }
            // One transaction over both trees: the snapshot, the metadata and the removal of
            // the covered entries become visible (and durable) together or not at all.
            let snapshot_key = keys::snapshot(meta.id);
            (&*self.db, &self.snapshots)
                .transaction(|(main, snapshots)| {
                    snapshots.insert(&snapshot_key[..], snapshot_record.as_slice())?;
                    main.apply_batch(&batch)?;
                    Ok(())
                })
                .map_err(|e: sled::transaction::TransactionError<()>| backend(format!("{e:?}")))?;
            if let Some(next_doc_id) = new_next_id {
                state.next_doc_id = next_doc_id;
            }
        }
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("corrupt_entries_seen", &self.corrupt_entries_seen())
            .finish_non_exhaustive()
    }
}

impl Store for SledStore {
    fn load(&self, doc: &DocName) -> Result<StoredDoc, StoreError> {
        let _state = self.lock();
        let Some(meta) = self.read_meta(doc)? else {
            return Ok(StoredDoc::default());
        };
        let snapshot = self.read_snapshot(doc, &meta)?;
        let mut loaded = StoredDoc::default();
        // Entries the snapshot covers are skipped even if they are still there, so an update
        // is never applied twice whatever state a compaction left.
        let from = match &snapshot {
            Some((_, covered)) => covered.checked_add(1),
            None => Some(0),
        };
        loaded.snapshot = snapshot.map(|(bytes, _)| bytes);
        let Some(from) = from else {
            return Ok(loaded);
        };
        for item in self.db.range(keys::log_range(meta.id, from, Seq::MAX)) {
            let (key, value) = item.map_err(backend)?;
            let seq = keys::log_seq(&key);
            // A corrupt entry still counts as read: a snapshot built from this load covers it.
            loaded.last_seq = seq.unwrap_or(loaded.last_seq);
            match (seq, record::open::<LogEntry>(&value)) {
                (Some(_), Ok(entry)) => loaded.updates.extend(entry.updates.0),
                (None, _) => {
                    loaded.corrupt_entries += 1;
                    self.report_corrupt(doc, None, &"malformed log key");
                }
                (Some(_), Err(e)) => {
                    loaded.corrupt_entries += 1;
                    self.report_corrupt(doc, seq, &e);
                }
            }
        }
        Ok(loaded)
    }

    fn append(&self, batch: &[StoredUpdate]) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut grouped: BTreeMap<&DocName, Vec<&[u8]>> = BTreeMap::new();
        for update in batch {
            grouped.entry(&update.doc).or_default().push(&update.update);
        }
        let now = now_ms();
        let mut written = Vec::with_capacity(grouped.len());
        {
            let mut state = self.lock();
            let mut next_doc_id = state.next_doc_id;
            let mut sled_batch = sled::Batch::default();
            for (doc, updates) in grouped {
                let mut meta = match self.read_meta(doc)? {
                    Some(meta) => meta,
                    None => {
                        let meta = DocMeta::new(next_doc_id);
                        next_doc_id = next_id(next_doc_id)?;
                        meta
                    }
                };
                let seq = meta.next_seq;
                meta.next_seq = seq.checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt(format!("document {doc:?} ran out of sequence numbers"))
                })?;
                // Saturating: the counters come from disk, and no stored value may panic us.
                let bytes: u64 = updates.iter().map(|u| u.len() as u64).sum();
                meta.tail_entries = meta.tail_entries.saturating_add(1);
                meta.tail_updates = meta.tail_updates.saturating_add(updates.len() as u64);
                meta.tail_bytes = meta.tail_bytes.saturating_add(bytes);
                meta.updated_at_ms = now;
                written.push(Appended {
                    doc: doc.clone(),
                    seq,
                    tail_updates: meta.tail_updates,
                    tail_bytes: meta.tail_bytes,
                });
                sled_batch.insert(
                    &keys::log(meta.id, seq)[..],
                    seal(&LogEntryRef { updates })?,
                );
                sled_batch.insert(keys::doc(doc.as_str()), seal(&meta)?);
            }
            if next_doc_id != state.next_doc_id {
                sled_batch.insert(keys::ID_COUNTER, seal(&IdCounter { next_doc_id })?);
            }
            self.db.apply_batch(sled_batch).map_err(backend)?;
            state.next_doc_id = next_doc_id;
        }
        // One flush makes the whole batch durable (and any batch applied meanwhile).
        self.db.flush().map_err(backend)?;
        Ok(written)
    }

    fn compact(&self, doc: &DocName, snapshot: &[u8], upto: Seq) -> Result<(), StoreError> {
        self.compact_inner(doc, snapshot, upto, true)
    }

    fn delete(&self, doc: &DocName) -> Result<(), StoreError> {
        {
            let _state = self.lock();
            let doc_key = keys::doc(doc.as_str());
            let mut batch = sled::Batch::default();
            let mut snapshot_key = None;
            match self.read_meta(doc) {
                Ok(None) => return Ok(()),
                Ok(Some(meta)) => {
                    snapshot_key = Some(meta.id);
                    for key in self.db.range(keys::log_range(meta.id, 0, Seq::MAX)).keys() {
                        batch.remove(key.map_err(backend)?);
                    }
                }
                // Deleting is how an operator gets rid of a damaged document, so it must work
                // without the id; the document's other keys are orphaned (ids are never
                // reused, so they can never be mistaken for another document's).
                Err(StoreError::Corrupt(why)) => {
                    tracing::warn!(
                        doc = %doc,
                        reason = %why,
                        "deleting a document with corrupt metadata: its log and snapshot stay \
                         on disk, unreachable"
                    );
                }
                Err(e) => return Err(e),
            }
            batch.remove(doc_key);
            let snapshot_key = snapshot_key.map(keys::snapshot);
            (&*self.db, &self.snapshots)
                .transaction(|(main, snapshots)| {
                    if let Some(key) = &snapshot_key {
                        snapshots.remove(&key[..])?;
                    }
                    main.apply_batch(&batch)?;
                    Ok(())
                })
                .map_err(|e: sled::transaction::TransactionError<()>| backend(format!("{e:?}")))?;
        }
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<DocInfo>, StoreError> {
        // Each metadata record is read in one `get`-like step, so no lock is needed: a listing
        // is a sequence of per-document facts, not a consistent cut of the store.
        let mut infos = Vec::new();
        for item in self.db.scan_prefix([keys::DOC_TAG]) {
            let (key, value) = item.map_err(backend)?;
            let name = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|name| DocName::new(name).ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("invalid document name in key {:?}", &key[1..]))
                })?;
            let meta: DocMeta = record::open(&value)
                .map_err(|e| StoreError::Corrupt(format!("metadata of document {name:?}: {e}")))?;
            infos.push(DocInfo {
                name,
                snapshot_bytes: meta.snapshot_bytes,
                log_entries: meta.tail_entries,
                log_bytes: meta.tail_bytes,
                updated_at_ms: meta.updated_at_ms,
            });
        }
        // Keys sort bytewise, which for UTF-8 is the order of `DocName`; sorting again is
        // cheap insurance that the contract holds whatever the key order.
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }
}

impl DocMeta {
    /// Metadata of a document that has nothing stored yet. Seqs start at 1, as the trait says.
    fn new(id: u64) -> Self {
        DocMeta {
            id,
            next_seq: 1,
            snapshot_seq: None,
            snapshot_bytes: 0,
            tail_entries: 0,
            tail_updates: 0,
            tail_bytes: 0,
            updated_at_ms: 0,
        }
    }
}

/// Opens sled, retrying for up to [`LOCK_WAIT`] while its directory lock is held.
fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            // sled 0.34.7 reports a held lock only through this message (an `Other` I/O error).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result.map_err(backend),
        }
    }
}

/// Checks (or, in an empty database, writes) the format records; returns the next document id.
fn check_format(db: &sled::Db) -> Result<u64, StoreError> {
    let Some(value) = db.get(keys::FORMAT).map_err(backend)? else {
        if db.first().map_err(backend)?.is_some() {
            return Err(StoreError::Corrupt(
                "the database holds data but no Concord format record: not a Concord store".into(),
            ));
        }
        let mut batch = sled::Batch::default();
        batch.insert(
            keys::FORMAT,
            seal(&StoreMeta {
                format_version: FORMAT_VERSION.into(),
            })?,
        );
        batch.insert(keys::ID_COUNTER, seal(&IdCounter { next_doc_id: 1 })?);
        db.apply_batch(batch).map_err(backend)?;
        db.flush().map_err(backend)?;
        return Ok(1);
    };
    let supported = u32::from(FORMAT_VERSION);
    // The version byte is checked before the checksum: a newer format may change everything
    // after it, and must be reported as newer, not as damage.
    if let Some(found) = record::version_of(&value).filter(|&v| v > FORMAT_VERSION) {
        return Err(StoreError::NewerFormat {
            found: found.into(),
            supported,
        });
    }
    let format: StoreMeta = record::open(&value)
        .map_err(|e| StoreError::Corrupt(format!("format record: {e}: not a Concord store?")))?;
    if format.format_version > supported {
        return Err(StoreError::NewerFormat {
            found: format.format_version,
            supported,
        });
    }
    let counter = db
        .get(keys::ID_COUNTER)
        .map_err(backend)?
        .ok_or_else(|| StoreError::Corrupt("the document id counter is missing".into()))?;
    let counter: IdCounter = record::open(&counter)
        .map_err(|e| StoreError::Corrupt(format!("document id counter: {e}")))?;
    Ok(counter.next_doc_id)
}

fn next_id(id: u64) -> Result<u64, StoreError> {
    id.checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("document ids exhausted".into()))
}

fn seal<T: bincode::Encode>(value: &T) -> Result<Vec<u8>, StoreError> {
    record::seal(value).map_err(backend)
}

fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Backend(e.into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
