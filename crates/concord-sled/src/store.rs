//! [`SledStore`]: the [`Store`] trait on a sled database plus directories of snapshot and
//! version files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_core::{
    Appended, DocInfo, DocName, LogTail, NewVersion, Outbox, OutboxEntry, Position, Seq, Store,
    StoreError, StoreFuture, StoredDoc, StoredUpdate, VersionId, VersionInfo,
};

use crate::journal::{self, Journal};
use crate::keys;
use crate::record::{
    self, Blob, DocMeta, FORMAT_VERSION, IdCounter, JournalBatch, JournalBatchRef, JournalEntryRef,
    LogEntry, LogEntryRef, MarkRecord, OutboxRecord, STORE_FORMAT, StoreMeta, VersionMeta,
    VersionMetaRef, VersionSummary,
};
use crate::snapfile::{self, SnapshotDir};

/// How [`SledStore::open_with`] configures sled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// How often the journal is fsynced (and sled's background thread flushes), in
    /// milliseconds; `None` turns both off. This is the window a power loss (not a killed
    /// process) may lose: see the crate documentation. Default: `Some(500)`, sled's own
    /// default.
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

/// The durable [`Store`]: documents in a sled database and a directory of snapshot files, in
/// the layout and with the durability contract described in the [crate documentation](crate).
///
/// Cheap to clone: every clone is a handle to the same open store, which closes when the last
/// one is dropped. Its own methods (`load`, `append`, ...) block the calling thread on disk
/// I/O, for tools, tests and synchronous callers; its [`Store`] implementation runs the same
/// calls on Tokio's blocking thread pool, so its futures must be polled within a Tokio runtime
/// and never hold a runtime worker thread while sled reads, writes or flushes. The one
/// exception is an `append` that finds the store's lock free: it waits for no disk (see the
/// crate's Durability section) and runs on the calling task.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

/// The open store behind every [`SledStore`] handle.
struct Inner {
    db: sled::Db,
    /// sled's data file, fsynced before a superseded snapshot file is removed (see
    /// [`SledStore::sync_sled`]).
    sled_file: PathBuf,
    /// Snapshot files. They live outside sled because sled never gives back the space of the
    /// values it rewrites or removes until segments are cleaned, and a snapshot is the bulk of a
    /// document: in sled, each compaction left a dead copy behind (measured: 16-20x the
    /// document's size on disk after compacting as the server does).
    snapshots: SnapshotDir,
    /// Version snapshot files, in the snapshot file format (named by document id and version
    /// id), outside sled for the same reason: a version is as large as a snapshot.
    versions: SnapshotDir,
    /// Held by every operation that reads or writes document metadata or must see one document
    /// consistently: `append`, `compact`, `delete` and `load`. sled applies a batch atomically
    /// for single-key reads, but a range scan can observe a compaction's batch between two of
    /// its steps, so `load` takes the lock as well. Flushes, fsyncs and snapshot file writes
    /// happen outside it, so a slow disk never holds up another writer's batch.
    state: Mutex<State>,
    /// Held for the whole of a compaction, a deletion, a `save_version` or a `delete_versions`
    /// (which write and remove snapshot or version files outside `state`), so that no two of
    /// them interleave: a file is never written for a document another one is removing, one
    /// file name is never written twice at once, and a version id is handed out once. These
    /// calls are rare (one per thousands of updates); appends and loads never take this lock.
    compacting: Mutex<()>,
    /// Corrupt log entries read since the store was opened.
    corrupt_seen: AtomicU64,
    /// What makes an `append` survive a killed process (see [`crate::journal`]).
    journal: Arc<Journal>,
    /// The thread that fsyncs and checkpoints the journal; stopped when the store closes.
    /// `None` only while the store is being opened.
    checkpointer: Option<Checkpointer>,
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

/// Subdirectory of the store directory holding the sled database.
const SLED_DIR: &str = "sled";
/// Subdirectory of the store directory holding snapshot files.
const SNAPSHOT_DIR: &str = "snapshots";
/// Subdirectory of the store directory holding version snapshot files.
const VERSION_DIR: &str = "versions";
/// Subdirectory of the store directory holding the journal files.
const JOURNAL_DIR: &str = "journal";

/// A journal file this large is checkpointed (sled made durable, the file removed) at the
/// next tick of the checkpointer: what a restart after a crash replays is at most about this.
const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// A journal file that holds anything is checkpointed once it is this old, so a store that is
/// written to slowly does not keep a journal for ever.
const CHECKPOINT_AGE: Duration = Duration::from_secs(30);
/// How often the checkpointer looks at the journal when `flush_every_ms` is `None`.
const CHECKPOINT_TICK: Duration = Duration::from_secs(1);

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

    /// Opens (or creates, with any missing parent directories) the store in directory `path`:
    /// the sled database in `path/sled`, snapshot files in `path/snapshots`, version files in
    /// `path/versions`. Snapshot and version files nothing refers to (what a crash during a
    /// compaction, a deletion or a version write leaves) are removed.
    ///
    /// Fails with [`StoreError::NewerFormat`] if a newer Concord wrote the store, with
    /// [`StoreError::Corrupt`] if the directory holds a sled database that is not a Concord
    /// store (or whose format records are damaged) or a store in an older layout, and with
    /// [`StoreError::Backend`] if sled cannot open it (I/O errors, or the directory is still
    /// locked by another handle after waiting a second for it: a store dropped a moment ago may
    /// hold it a few more milliseconds).
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SledOptions,
    ) -> Result<SledStore, StoreError> {
        Ok(SledStore {
            inner: Arc::new(Inner::open_with(path.as_ref(), options)?),
        })
    }

    /// How many corrupt log entries this store has read (and skipped) since it was opened. An
    /// entry read twice counts twice: this is a signal for monitoring, not an inventory.
    pub fn corrupt_entries_seen(&self) -> u64 {
        self.inner.corrupt_seen.load(Ordering::Relaxed)
    }

    /// Failpoint for tests: does the first part of [`Store::compact`] only, i.e. what a crash in
    /// the middle of a compaction leaves. `load` must still return every update exactly once,
    /// and reopening the store must clean up.
    #[doc(hidden)]
    pub fn compact_interrupted(
        &self,
        doc: &DocName,
        snapshot: &[u8],
        upto: Seq,
        at: CompactCrash,
    ) -> Result<(), StoreError> {
        self.inner.compact_inner(doc, snapshot, upto, Some(at))
    }

    /// The underlying sled tree, for tests that inspect or damage stored records.
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.inner.db
    }

    /// The file holding the current snapshot of `doc`, for tests that inspect or damage it.
    #[doc(hidden)]
    pub fn snapshot_file(&self, doc: &DocName) -> Result<Option<PathBuf>, StoreError> {
        self.inner.snapshot_file(doc)
    }

    /// [`Store::load`], blocking the calling thread.
    pub fn load(&self, doc: &DocName) -> Result<StoredDoc, StoreError> {
        self.inner.load(doc)
    }

    /// [`Store::append`], blocking the calling thread until the batch is in sled and written to
    /// the journal (see the crate documentation's Durability section).
    pub fn append(&self, batch: &[StoredUpdate]) -> Result<Vec<Appended>, StoreError> {
        self.inner.append(batch)
    }

    /// [`Store::compact`], blocking the calling thread.
    pub fn compact(&self, doc: &DocName, snapshot: &[u8], upto: Seq) -> Result<(), StoreError> {
        self.inner.compact_inner(doc, snapshot, upto, None)
    }

    /// [`Store::delete`], blocking the calling thread.
    pub fn delete(&self, doc: &DocName) -> Result<(), StoreError> {
        self.inner.delete(doc)
    }

    /// [`Store::list`], blocking the calling thread.
    pub fn list(&self) -> Result<Vec<DocInfo>, StoreError> {
        self.inner.list()
    }

    /// [`Store::log_from`], blocking the calling thread.
    pub fn log_from(&self, doc: &DocName, from: Seq) -> Result<LogTail, StoreError> {
        self.inner.log_from(doc, from)
    }

    /// [`Store::save_version`], blocking the calling thread until the version is durable
    /// (power loss included: its file and sled are fsynced).
    pub fn save_version(
        &self,
        doc: &DocName,
        version: &NewVersion,
    ) -> Result<VersionInfo, StoreError> {
        self.inner.save_version(doc, version)
    }

    /// [`Store::versions`], blocking the calling thread.
    pub fn versions(&self, doc: &DocName) -> Result<Vec<VersionInfo>, StoreError> {
        self.inner.versions(doc)
    }

    /// [`Store::version`], blocking the calling thread.
    pub fn version(&self, doc: &DocName, id: VersionId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.version(doc, id)
    }

    /// [`Store::delete_versions`], blocking the calling thread.
    pub fn delete_versions(&self, doc: &DocName, ids: &[VersionId]) -> Result<u64, StoreError> {
        self.inner.delete_versions(doc, ids)
    }

    /// Runs `f` on the open store on Tokio's blocking thread pool.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| backend(format!("a blocking store call failed: {e}")))?
        })
    }
}

/// Each call but an uncontended `append` runs on Tokio's blocking thread pool (see
/// [`SledStore`]).
impl Store for SledStore {
    fn load<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, StoredDoc> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.load(&doc))
    }

    /// Runs on the calling task when the store's lock is free, since an append waits for no
    /// disk (sled applies it in memory and the journal `write` goes to the page cache): a trip
    /// to the blocking pool and back would cost more than the append. When the lock is held
    /// (a load scanning a log, a compaction applying its batch), it goes to the blocking pool
    /// like every other call, so no runtime thread waits for another's disk reads.
    fn append(&self, batch: Arc<[StoredUpdate]>) -> StoreFuture<'_, Vec<Appended>> {
        if let Some(state) = self.inner.try_lock() {
            let appended = self.inner.append_locked(state, &batch);
            return Box::pin(std::future::ready(appended));
        }
        self.blocking(move |inner| inner.append(&batch))
    }

    fn compact<'a>(
        &'a self,
        doc: &'a DocName,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> StoreFuture<'a, ()> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.compact_inner(&doc, &snapshot, upto, None))
    }

    fn delete<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, ()> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.delete(&doc))
    }

    fn list(&self) -> StoreFuture<'_, Vec<DocInfo>> {
        self.blocking(|inner| inner.list())
    }

    fn log_from<'a>(&'a self, doc: &'a DocName, from: Seq) -> StoreFuture<'a, LogTail> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.log_from(&doc, from))
    }

    fn save_version<'a>(
        &'a self,
        doc: &'a DocName,
        version: NewVersion,
    ) -> StoreFuture<'a, VersionInfo> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.save_version(&doc, &version))
    }

    fn versions<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, Vec<VersionInfo>> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.versions(&doc))
    }

    fn version<'a>(&'a self, doc: &'a DocName, id: VersionId) -> StoreFuture<'a, Option<Vec<u8>>> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.version(&doc, id))
    }

    fn delete_versions<'a>(
        &'a self,
        doc: &'a DocName,
        ids: Vec<VersionId>,
    ) -> StoreFuture<'a, u64> {
        let doc = doc.clone();
        self.blocking(move |inner| inner.delete_versions(&doc, &ids))
    }

    fn outbox_write(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> StoreFuture<'_, ()> {
        self.blocking(move |inner| inner.outbox_write(add, marks))
    }

    fn outbox(&self) -> StoreFuture<'_, Outbox> {
        self.blocking(|inner| inner.outbox())
    }

    fn outbox_remove(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        self.blocking(move |inner| inner.outbox_remove(&keys))
    }
}

impl Inner {
    fn open_with(path: &Path, options: SledOptions) -> Result<Inner, StoreError> {
        if path.join("conf").exists() && path.join("db").exists() {
            return Err(StoreError::Corrupt(format!(
                "{} holds a sled database at its top level: a store of format 1, written by a \
                 pre-release Concord; this build opens format {STORE_FORMAT} only",
                path.display()
            )));
        }
        let sled_path = path.join(SLED_DIR);
        std::fs::create_dir_all(&sled_path).map_err(backend)?;
        let config = sled::Config::new()
            .path(&sled_path)
            .flush_every_ms(options.flush_every_ms)
            .cache_capacity(options.cache_capacity_bytes);
        let db = open_waiting_for_lock(&config)?;
        // A document's metadata is written before the id counter (see `append`), so sled may
        // have recovered one without the other: no id a document holds is handed out again.
        let next_doc_id = check_format(&db)?.max(next_id(max_doc_id(&db)?)?);
        let snapshots = SnapshotDir::open(path.join(SNAPSHOT_DIR)).map_err(backend)?;
        let versions = SnapshotDir::open(path.join(VERSION_DIR)).map_err(backend)?;
        let journal_dir = path.join(JOURNAL_DIR);
        std::fs::create_dir_all(&journal_dir).map_err(backend)?;
        // The files a previous process left, replayed below; appends go to a new one after them.
        let left = journal::files(&journal_dir).map_err(backend)?;
        let next_file = left.last().map_or(0, |last| last.saturating_add(1));
        let mut store = Inner {
            db,
            sled_file: sled_path.join("db"),
            snapshots,
            versions,
            state: Mutex::new(State { next_doc_id }),
            compacting: Mutex::new(()),
            corrupt_seen: AtomicU64::new(0),
            journal: Arc::new(Journal::create(&journal_dir, next_file).map_err(backend)?),
            checkpointer: None,
        };
        store.replay_journal(&journal_dir, &left)?;
        store.checkpointer = Some(Checkpointer::start(
            store.db.clone(),
            store.sled_file.clone(),
            store.journal.clone(),
            options.flush_every_ms.map(Duration::from_millis),
        )?);
        store.remove_orphan_snapshots()?;
        store.remove_orphan_versions()?;
        Ok(store)
    }

    /// Replays the journal files `numbers` that a process that did not close the store left in
    /// `dir` (see [`crate::journal`]), makes sled durable and removes them.
    fn replay_journal(&self, dir: &Path, numbers: &[u64]) -> Result<(), StoreError> {
        if numbers.is_empty() {
            return Ok(());
        }
        let mut applied = 0u64;
        for &number in numbers {
            let damage = journal::read(dir, number, |batch| {
                applied += self.replay(batch)?;
                Ok(())
            })?;
            if let Some(damage) = damage {
                tracing::warn!(
                    file = number,
                    %damage,
                    "journal file damaged: the frames from there on are not replayed (a power \
                     loss in the middle of a write leaves this; a killed process does not)"
                );
            }
        }
        self.sync_sled()?;
        for &number in numbers {
            journal::remove(dir, number).map_err(backend)?;
        }
        if applied > 0 {
            tracing::info!(
                files = numbers.len(),
                entries = applied,
                "journal replayed: log entries sled had not written yet are restored"
            );
        }
        Ok(())
    }

    /// Writes the entries of one journal frame that sled does not hold. Returns how many.
    ///
    /// Ids are never reused and the id counter is written in the batch that creates a
    /// document, so an entry whose document sled does not know was deleted (its id is below
    /// the counter) or was created after sled's last write (its id is not).
    fn replay(&self, batch: JournalBatch) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut applied = 0;
        for entry in batch.entries {
            let Some(doc) = std::str::from_utf8(&entry.doc.0)
                .ok()
                .and_then(|name| DocName::new(name).ok())
            else {
                tracing::warn!("journal entry with an invalid document name skipped");
                continue;
            };
            let mut sled_batch = sled::Batch::default();
            let mut meta = match self.read_meta(&doc)? {
                Some(meta) if meta.id == entry.id => meta,
                // An earlier document of this name, deleted since.
                Some(meta) if meta.id > entry.id => continue,
                // A later document of this name: sled missed the deletion of the one it holds,
                // which came before it.
                Some(meta) => {
                    self.remove_entries(&mut sled_batch, meta.id, Seq::MAX)?;
                    // Its version files become orphans, removed once the journal is replayed.
                    self.remove_versions(&mut sled_batch, meta.id)?;
                    DocMeta::new(entry.id)
                }
                None if entry.id >= state.next_doc_id => DocMeta::new(entry.id),
                None => continue,
            };
            if entry.seq < meta.next_seq {
                continue;
            }
            let updates: Vec<&[u8]> = entry.updates.0.iter().map(Vec::as_slice).collect();
            meta.next_seq = entry.seq.saturating_add(1);
            meta.count_entry(&updates, now_ms());
            sled_batch.insert(
                &keys::log(entry.id, entry.seq)[..],
                seal(&LogEntryRef { updates })?,
            );
            sled_batch.insert(keys::doc(doc.as_str()), seal(&meta)?);
            let next_doc_id = state.next_doc_id.max(next_id(entry.id)?);
            sled_batch.insert(keys::ID_COUNTER, seal(&IdCounter { next_doc_id })?);
            self.db.apply_batch(sled_batch).map_err(backend)?;
            state.next_doc_id = next_doc_id;
            applied += 1;
        }
        Ok(applied)
    }

    fn snapshot_file(&self, doc: &DocName) -> Result<Option<PathBuf>, StoreError> {
        let _state = self.lock();
        Ok(self
            .read_meta(doc)?
            .and_then(|meta| Some(self.snapshots.file(meta.id, meta.snapshot_seq?))))
    }

    /// The lock if it is free now.
    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
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

    /// Opens the snapshot file of `doc`, if it has one; read it with [`read_snapshot`] once the
    /// lock is released (the handle stays valid if a compaction removes the file meanwhile).
    fn open_snapshot(
        &self,
        doc: &DocName,
        meta: &DocMeta,
    ) -> Result<Option<(File, Seq)>, StoreError> {
        let Some(seq) = meta.snapshot_seq else {
            return Ok(None);
        };
        match self.snapshots.open_file(meta.id, seq) {
            Ok(file) => Ok(Some((file, seq))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(snapshot_corrupt(doc, &"its file is missing"))
            }
            Err(e) => Err(backend(e)),
        }
    }

    /// Removes the snapshot files no document refers to: a compaction or a deletion that
    /// crashed between writing the metadata and removing a file leaves one behind.
    fn remove_orphan_snapshots(&self) -> Result<(), StoreError> {
        let mut referenced = HashSet::new();
        for item in self.db.scan_prefix([keys::DOC_TAG]) {
            let (key, value) = item.map_err(backend)?;
            match record::open::<DocMeta>(&value) {
                Ok(meta) => {
                    if let Some(seq) = meta.snapshot_seq {
                        referenced.insert((meta.id, seq));
                    }
                }
                Err(e) => {
                    // Its snapshot cannot be told from an orphan: keep every file.
                    tracing::warn!(
                        key = %String::from_utf8_lossy(&key[1..]),
                        reason = %e,
                        "document metadata is corrupt: snapshot files are not cleaned up"
                    );
                    return Ok(());
                }
            }
        }
        for (id, seq) in self.snapshots.scan().map_err(backend)? {
            if !referenced.contains(&(id, seq)) {
                tracing::info!(id, seq, "removing a snapshot file no document refers to");
                self.snapshots.remove(id, seq).map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Makes every write sled has accepted durable against power loss, not only against a
    /// killed process: sled's `flush` only starts write-back (`sync_file_range`), and its own
    /// fsync runs every `flush_every_ms`. A file removed after this (a superseded snapshot) can
    /// never be needed by the metadata sled recovers. fsync applies to the file, whichever
    /// descriptor it is called through.
    fn sync_sled(&self) -> Result<(), StoreError> {
        sync_sled(&self.db, &self.sled_file)
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

    /// Adds the removal of document `id`'s log entries with seq <= `upto` to `batch`.
    fn remove_entries(
        &self,
        batch: &mut sled::Batch,
        id: u64,
        upto: Seq,
    ) -> Result<(), StoreError> {
        for key in self.db.range(keys::log_range(id, 0, upto)).keys() {
            batch.remove(key.map_err(backend)?);
        }
        Ok(())
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

    /// Reads the log entries of document `id` with seq >= `from` into `loaded`. Called with the
    /// lock held.
    fn read_tail(
        &self,
        doc: &DocName,
        id: u64,
        from: Seq,
        loaded: &mut StoredDoc,
    ) -> Result<(), StoreError> {
        for item in self.db.range(keys::log_range(id, from, Seq::MAX)) {
            let (key, value) = item.map_err(backend)?;
            let seq = keys::log_seq(&key);
            // A corrupt entry still counts as read: a snapshot built from this load covers it.
            loaded.last_seq = seq.unwrap_or(loaded.last_seq);
            match (seq, record::open::<LogEntry>(&value)) {
                (Some(seq), Ok(entry)) => {
                    loaded.position = Position {
                        seq,
                        index: u32::try_from(entry.updates.0.len().saturating_sub(1))
                            .unwrap_or(u32::MAX),
                    };
                    loaded.updates.extend(entry.updates.0);
                }
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
        Ok(())
    }

    /// The id of `doc` and the seq its new snapshot will cover (`upto`, or the current
    /// snapshot's seq if that is larger). A document that does not exist yet gets an id
    /// reserved here and persisted with its metadata by the compaction.
    fn compaction_target(&self, doc: &DocName, upto: Seq) -> Result<(u64, Seq), StoreError> {
        let mut state = self.lock();
        Ok(match self.read_meta(doc)? {
            // The new snapshot replaces the old one, which already made the entries up to its
            // seq redundant: never let those come back, even if `upto` is older (the store's
            // observable behaviour is then the one the conformance suite requires).
            Some(meta) => (meta.id, meta.snapshot_seq.map_or(upto, |old| old.max(upto))),
            None => {
                let id = state.next_doc_id;
                state.next_doc_id = next_id(id)?;
                (id, upto)
            }
        })
    }

    fn compact_inner(
        &self,
        doc: &DocName,
        snapshot: &[u8],
        upto: Seq,
        crash: Option<CompactCrash>,
    ) -> Result<(), StoreError> {
        let _compacting = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
        // A few rounds at most: a round is only repeated when an `append` created the document
        // between choosing its id and writing its metadata.
        for _ in 0..4 {
            let (id, covered) = self.compaction_target(doc, upto)?;
            // The file first, outside the lock, durably: nothing points at it yet, so a crash
            // now leaves an orphan that the next open removes.
            self.snapshots
                .write(id, covered, snapshot)
                .map_err(backend)?;
            if crash == Some(CompactCrash::AfterSnapshotFile) {
                return Ok(());
            }
            let superseded = {
                let mut state = self.lock();
                let mut meta = match self.read_meta(doc)? {
                    Some(meta) if meta.id == id => meta,
                    None => DocMeta::new(id),
                    Some(_) => {
                        // Created (or deleted and created again) meanwhile under another id.
                        drop(state);
                        self.snapshots.remove(id, covered).map_err(backend)?;
                        continue;
                    }
                };
                let mut batch = sled::Batch::default();
                if crash != Some(CompactCrash::KeepCoveredEntries) {
                    self.remove_entries(&mut batch, id, covered)?;
                }
                // Recounted from the entries that remain rather than adjusted: exact even if
                // an earlier compaction stopped half-way, and the remaining tail is the short
                // part.
                let tail = self.count_tail(doc, id, covered)?;
                // A compaction at the seq of the current snapshot replaced its file by rename.
                let superseded = meta.snapshot_seq.filter(|&old| old != covered);
                meta.snapshot_seq = Some(covered);
                meta.snapshot_bytes = snapshot.len() as u64;
                meta.tail_entries = tail.entries;
                meta.tail_updates = tail.updates;
                meta.tail_bytes = tail.bytes;
                meta.next_seq = meta.next_seq.max(covered.saturating_add(1));
                meta.updated_at_ms = now_ms();
                batch.insert(keys::doc(doc.as_str()), seal(&meta)?);
                // The reserved id counts as handed out from now on, on disk too.
                batch.insert(
                    keys::ID_COUNTER,
                    seal(&IdCounter {
                        next_doc_id: state.next_doc_id,
                    })?,
                );
                // One batch: the new metadata and the removal of the covered entries become
                // visible (and durable) together or not at all.
                self.db.apply_batch(batch).map_err(backend)?;
                state.next_doc_id = state.next_doc_id.max(next_id(id)?);
                superseded
            };
            self.db.flush().map_err(backend)?;
            if let Some(old) = superseded {
                if crash == Some(CompactCrash::BeforeOldSnapshotRemoval) {
                    return Ok(());
                }
                // The old file may go only once no recoverable metadata can point at it.
                self.sync_sled()?;
                self.snapshots.remove(id, old).map_err(backend)?;
            }
            return Ok(());
        }
        Err(StoreError::Backend(
            format!("document {doc:?} kept changing identity during its compaction").into(),
        ))
    }
}

/// Where [`SledStore::compact_interrupted`] stops, as a crash would.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactCrash {
    /// The new snapshot file is written; the metadata does not point at it yet.
    AfterSnapshotFile,
    /// The metadata points at the new snapshot, but the covered log entries are still there
    /// (a state the store never writes, since both change in one batch: `load` copes anyway).
    KeepCoveredEntries,
    /// The compaction is complete except for the removal of the superseded snapshot file.
    BeforeOldSnapshotRemoval,
}

/// The thread that fsyncs the journal every `flush_every_ms` and checkpoints it.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    db: sled::Db,
    sled_file: PathBuf,
    journal: Arc<Journal>,
}

impl Checkpointer {
    fn start(
        db: sled::Db,
        sled_file: PathBuf,
        journal: Arc<Journal>,
        fsync_every: Option<Duration>,
    ) -> Result<Checkpointer, StoreError> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = {
            let (db, sled_file, journal) = (db.clone(), sled_file.clone(), journal.clone());
            std::thread::Builder::new()
                .name("concord-journal".into())
                .spawn(move || {
                    let tick = fsync_every.unwrap_or(CHECKPOINT_TICK);
                    let mut since = Instant::now();
                    // Ends when the store closes (the sender is dropped).
                    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        stopped.recv_timeout(tick)
                    {
                        if fsync_every.is_some()
                            && let Err(e) = journal.sync()
                        {
                            tracing::error!(error = %e, "journal fsync failed");
                        }
                        let len = journal.len();
                        if len >= CHECKPOINT_BYTES || (len > 0 && since.elapsed() >= CHECKPOINT_AGE)
                        {
                            since = Instant::now();
                            if let Err(e) = checkpoint(&db, &sled_file, &journal) {
                                tracing::error!(error = %e, "journal checkpoint failed; retried later");
                            }
                        }
                    }
                })
                .map_err(backend)?
        };
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
            db,
            sled_file,
            journal,
        })
    }
}

impl Drop for Checkpointer {
    /// Stops the thread, then checkpoints: a store closed in an orderly way leaves no journal.
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let closed = checkpoint(&self.db, &self.sled_file, &self.journal).and_then(|()| {
            // The current file is empty now; nothing needs it.
            self.journal
                .remove_through(self.journal.number())
                .map_err(backend)
        });
        if let Err(e) = closed {
            tracing::warn!(error = %e, "journal not checkpointed at close: replayed at next open");
        }
    }
}

/// Makes everything the journal holds durable in sled and removes the journal files that
/// held it: appends go to a new file first, so none is missed.
fn checkpoint(db: &sled::Db, sled_file: &Path, journal: &Journal) -> Result<(), StoreError> {
    let Some(old) = journal.rotate().map_err(backend)? else {
        return Ok(());
    };
    sync_sled(db, sled_file)?;
    journal.remove_through(old).map_err(backend)
}

/// [`Inner::sync_sled`], for the checkpointer, which holds sled but not the store.
fn sync_sled(db: &sled::Db, sled_file: &Path) -> Result<(), StoreError> {
    db.flush().map_err(backend)?;
    File::open(sled_file)
        .and_then(|f| f.sync_all())
        .map_err(backend)
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("corrupt_entries_seen", &self.corrupt_entries_seen())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn load(&self, doc: &DocName) -> Result<StoredDoc, StoreError> {
        let mut loaded = StoredDoc::default();
        let snapshot = {
            let _state = self.lock();
            let Some(meta) = self.read_meta(doc)? else {
                return Ok(loaded);
            };
            let snapshot = self.open_snapshot(doc, &meta)?;
            // Entries the snapshot covers are skipped even if they are still there, so an
            // update is never applied twice whatever state a compaction left.
            let from = match &snapshot {
                Some((_, covered)) => covered.checked_add(1),
                None => Some(0),
            };
            if let Some(from) = from {
                self.read_tail(doc, meta.id, from, &mut loaded)?;
            }
            if loaded.position == Position::START
                && let Some(covered) = meta.snapshot_seq
            {
                loaded.position = Position {
                    seq: covered,
                    index: u32::MAX,
                };
            }
            snapshot.map(|(file, seq)| (file, meta.id, seq))
        };
        if let Some((file, id, seq)) = snapshot {
            loaded.snapshot = Some(snapfile::read(file, id, seq).map_err(|e| match e {
                snapfile::ReadError::Io(e) => backend(e),
                e => snapshot_corrupt(doc, &e),
            })?);
        }
        Ok(loaded)
    }

    fn append(&self, batch: &[StoredUpdate]) -> Result<Vec<Appended>, StoreError> {
        self.append_locked(self.lock(), batch)
    }

    fn append_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        batch: &[StoredUpdate],
    ) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut grouped: BTreeMap<&DocName, Vec<&[u8]>> = BTreeMap::new();
        for update in batch {
            grouped.entry(&update.doc).or_default().push(&update.update);
        }
        let now = now_ms();
        let mut written = Vec::with_capacity(grouped.len());
        let mut journaled = Vec::with_capacity(grouped.len());
        {
            let mut next_doc_id = state.next_doc_id;
            // Written one key at a time, not as a sled batch: sled rolls its write buffer at
            // the start and end of every batch, handing it to its I/O threads (two thread
            // hand-offs and a `pwrite` per append). Atomicity comes from the order instead:
            // sled recovers a prefix of its writes, and each document's log entry goes before
            // its metadata and the id counter after both, so a recovered metadata record never
            // points past a missing entry (and the journal replays what sled lacks; see
            // `replay`). Readers see the whole append: they take the lock held here.
            let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(2 * grouped.len() + 1);
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
                meta.count_entry(&updates, now);
                written.push(Appended {
                    doc: doc.clone(),
                    seq,
                    tail_updates: meta.tail_updates,
                    tail_bytes: meta.tail_bytes,
                });
                writes.push((
                    keys::log(meta.id, seq).to_vec(),
                    seal(&LogEntryRef {
                        updates: updates.clone(),
                    })?,
                ));
                writes.push((keys::doc(doc.as_str()), seal(&meta)?));
                journaled.push(JournalEntryRef {
                    doc: doc.as_str(),
                    id: meta.id,
                    seq,
                    updates,
                });
            }
            if next_doc_id != state.next_doc_id {
                writes.push((keys::ID_COUNTER.to_vec(), seal(&IdCounter { next_doc_id })?));
            }
            for (key, value) in writes {
                self.db.insert(key, value).map_err(backend)?;
            }
            state.next_doc_id = next_doc_id;
            // Under the lock, so the journal holds the entries in the order sled got them. Once
            // this `write` returned the batch survives a killed process: no sled flush needed.
            // Should it fail, sled holds the batch but the caller is told it failed: a retry
            // stores the updates again, which Yjs applies as no-ops.
            self.journal
                .write(&JournalBatchRef { entries: journaled })
                .map_err(backend)?;
        }
        Ok(written)
    }

    fn delete(&self, doc: &DocName) -> Result<(), StoreError> {
        let _compacting = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
        let files = {
            let _state = self.lock();
            let mut batch = sled::Batch::default();
            let mut snapshot = None;
            let mut versions = (0, Vec::new());
            match self.read_meta(doc) {
                Ok(None) => return Ok(()),
                Ok(Some(meta)) => {
                    snapshot = meta.snapshot_seq.map(|seq| (meta.id, seq));
                    self.remove_entries(&mut batch, meta.id, Seq::MAX)?;
                    versions = (meta.id, self.remove_versions(&mut batch, meta.id)?);
                }
                // Deleting is how an operator gets rid of a damaged document, so it must work
                // without the id; the document's other keys are orphaned (ids are never
                // reused, so they can never be mistaken for another document's).
                Err(StoreError::Corrupt(why)) => {
                    tracing::warn!(
                        doc = %doc,
                        reason = %why,
                        "deleting a document with corrupt metadata: its log entries, \
                         snapshot file and versions stay on disk, unreachable"
                    );
                }
                Err(e) => return Err(e),
            }
            batch.remove(keys::doc(doc.as_str()));
            self.db.apply_batch(batch).map_err(backend)?;
            (snapshot, versions)
        };
        self.db.flush().map_err(backend)?;
        let (snapshot, (id, versions)) = files;
        if snapshot.is_some() || !versions.is_empty() {
            // A crash before these removals leaves orphan files, removed at the next open.
            self.sync_sled()?;
        }
        if let Some((id, seq)) = snapshot {
            self.snapshots.remove(id, seq).map_err(backend)?;
        }
        for version in versions {
            self.versions.remove(id, version).map_err(backend)?;
        }
        Ok(())
    }

    fn log_from(&self, doc: &DocName, from: Seq) -> Result<LogTail, StoreError> {
        let _state = self.lock();
        let Some(meta) = self.read_meta(doc)? else {
            return Ok(LogTail {
                complete: true,
                ..LogTail::default()
            });
        };
        // Entries the snapshot covers are not returned even if a compaction left them.
        let first = meta
            .snapshot_seq
            .map_or(from, |covered| from.max(covered.saturating_add(1)));
        let mut tail = LogTail {
            entries: Vec::new(),
            complete: meta.snapshot_seq.is_none_or(|covered| covered < from),
            last_seq: meta.next_seq.saturating_sub(1),
        };
        for item in self.db.range(keys::log_range(meta.id, first, Seq::MAX)) {
            let (key, value) = item.map_err(backend)?;
            let seq = keys::log_seq(&key);
            match (seq, record::open::<LogEntry>(&value)) {
                (Some(seq), Ok(entry)) => tail.entries.push((seq, entry.updates.0)),
                (seq, Err(e)) => self.report_corrupt(doc, seq, &e),
                (None, Ok(_)) => self.report_corrupt(doc, None, &"malformed log key"),
            }
        }
        Ok(tail)
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
            let history = self.read_history(&name, meta.id)?;
            infos.push(DocInfo {
                name,
                snapshot_bytes: meta.snapshot_bytes,
                log_entries: meta.tail_entries,
                log_bytes: meta.tail_bytes,
                updated_at_ms: meta.updated_at_ms,
                versions: history.versions,
                history_bytes: history.history_bytes,
            });
        }
        // Keys sort bytewise, which for UTF-8 is the order of `DocName`; sorting again is
        // cheap insurance that the contract holds whatever the key order.
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }
}

/// Version history: snapshots in files under `versions/`, metadata and a per-document summary
/// in sled (see the crate documentation's Versions section).
impl Inner {
    /// The id of `doc` and its version summary, recounted (its next version id is then above
    /// every version key there is: the file written next can never be an existing version's).
    /// A document that does not exist yet gets an id reserved here and persisted with its
    /// metadata by `save_version`, and an empty summary. The caller holds `compacting`, which
    /// every writer of a history holds, so the summary stays true until it writes.
    fn version_target(&self, doc: &DocName) -> Result<(u64, VersionSummary), StoreError> {
        let mut state = self.lock();
        Ok(match self.read_meta(doc)? {
            Some(meta) => {
                let mut history = self.read_history(doc, meta.id)?;
                self.recount_history(doc, meta.id, &mut history, &BTreeSet::new())?;
                (meta.id, history)
            }
            None => {
                let id = state.next_doc_id;
                state.next_doc_id = next_id(id)?;
                (id, VersionSummary::default())
            }
        })
    }

    fn save_version(&self, doc: &DocName, version: &NewVersion) -> Result<VersionInfo, StoreError> {
        let _writing = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
        // A round is only repeated when an `append` created the document between choosing its
        // id and writing its metadata, as in a compaction.
        for _ in 0..4 {
            let (id, mut history) = self.version_target(doc)?;
            let number = history.next_version.max(1);
            // The file first, outside the lock, durably: nothing points at it yet, so a crash
            // now leaves an orphan that the next open removes.
            self.versions
                .write(id, number, &version.snapshot)
                .map_err(backend)?;
            let info = VersionInfo {
                id: number,
                created_at_ms: version.created_at_ms,
                position: version.position,
                label: version.label.clone(),
                bytes: version.snapshot.len() as u64,
            };
            {
                let mut state = self.lock();
                let mut batch = sled::Batch::default();
                let mut created = false;
                match self.read_meta(doc)? {
                    Some(meta) if meta.id == id => {}
                    None => {
                        let mut meta = DocMeta::new(id);
                        meta.updated_at_ms = now_ms();
                        batch.insert(keys::doc(doc.as_str()), seal(&meta)?);
                        // The reserved id counts as handed out from now on, on disk too.
                        batch.insert(
                            keys::ID_COUNTER,
                            seal(&IdCounter {
                                next_doc_id: state.next_doc_id,
                            })?,
                        );
                        created = true;
                    }
                    Some(_) => {
                        // Created (or deleted and created again) meanwhile under another id.
                        drop(state);
                        self.versions.remove(id, number).map_err(backend)?;
                        continue;
                    }
                }
                history.next_version = number.checked_add(1).ok_or_else(|| {
                    StoreError::Corrupt(format!("document {doc:?} ran out of version ids"))
                })?;
                history.versions = history.versions.saturating_add(1);
                history.history_bytes = history.history_bytes.saturating_add(info.bytes);
                batch.insert(
                    &keys::version(id, number)[..],
                    seal(&VersionMetaRef {
                        id: number,
                        created_at_ms: info.created_at_ms,
                        position_seq: info.position.seq,
                        position_index: info.position.index,
                        label: info.label.as_deref(),
                        bytes: info.bytes,
                    })?,
                );
                batch.insert(&keys::history(id)[..], seal(&history)?);
                // One batch: the metadata, the summary (and a new document) appear together.
                self.db.apply_batch(batch).map_err(backend)?;
                if created {
                    state.next_doc_id = state.next_doc_id.max(next_id(id)?);
                }
            }
            // Durable when it returns, power loss included (stronger than an append, whose
            // journal is fsynced every `flush_every_ms`): a returned id is never handed out
            // again. Versions are rare, so the fsync costs little.
            self.sync_sled()?;
            return Ok(info);
        }
        Err(StoreError::Backend(
            format!("document {doc:?} kept changing identity while a version was saved").into(),
        ))
    }

    /// One batch, then sled's write-back: as durable as an append (survives a killed process;
    /// power loss within `flush_every_ms`). Touches no document metadata, so takes no lock.
    fn outbox_write(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(keys::OUTBOX_STARTED, &[][..]);
        for entry in add {
            batch.insert(
                keys::tagged(keys::OUTBOX_TAG, &entry.key),
                seal(&OutboxRecord {
                    payload: Blob(entry.payload),
                })?,
            );
        }
        for (doc, mark) in marks {
            let key = keys::tagged(keys::MARK_TAG, doc.as_str());
            match mark {
                Some(at) => batch.insert(
                    key,
                    seal(&MarkRecord {
                        seq: at.seq,
                        index: at.index,
                    })?,
                ),
                None => batch.remove(key),
            }
        }
        self.db.apply_batch(batch).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Unreadable records are reported and skipped: a lost delivery or mark is announced again
    /// from the document's stored position, never a reason to stop delivering the rest.
    fn outbox(&self) -> Result<Outbox, StoreError> {
        let mut outbox = Outbox {
            started: self
                .db
                .contains_key(keys::OUTBOX_STARTED)
                .map_err(backend)?,
            ..Outbox::default()
        };
        for item in self.db.scan_prefix([keys::OUTBOX_TAG]) {
            let (key, value) = item.map_err(backend)?;
            let Ok(text) = std::str::from_utf8(&key[1..]) else {
                tracing::error!(key = ?key, "skipping an outbox entry with a key that is not UTF-8");
                continue;
            };
            match record::open::<OutboxRecord>(&value) {
                Ok(entry) => outbox.entries.push(OutboxEntry {
                    key: text.to_owned(),
                    payload: entry.payload.0,
                }),
                Err(e) => {
                    tracing::error!(key = text, error = %e, "skipping a corrupt outbox entry")
                }
            }
        }
        for item in self.db.scan_prefix([keys::MARK_TAG]) {
            let (key, value) = item.map_err(backend)?;
            let name = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|name| DocName::new(name).ok());
            match (name, record::open::<MarkRecord>(&value)) {
                (Some(name), Ok(mark)) => {
                    outbox.marks.insert(
                        name,
                        Position {
                            seq: mark.seq,
                            index: mark.index,
                        },
                    );
                }
                _ => tracing::error!(key = ?key, "skipping a corrupt announced-position mark"),
            }
        }
        Ok(outbox)
    }

    fn outbox_remove(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(keys::tagged(keys::OUTBOX_TAG, key));
        }
        self.db.apply_batch(batch).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn versions(&self, doc: &DocName) -> Result<Vec<VersionInfo>, StoreError> {
        let _state = self.lock();
        let Some(meta) = self.read_meta(doc)? else {
            return Ok(Vec::new());
        };
        let mut listed = Vec::new();
        // Metadata only: no version file is opened.
        for item in self.db.scan_prefix(keys::versions_of(meta.id)) {
            let (key, value) = item.map_err(backend)?;
            match version_info(&key, &value) {
                Ok(info) => listed.push(info),
                Err(why) => report_corrupt_version(doc, &key, &why),
            }
        }
        Ok(listed)
    }

    fn version(&self, doc: &DocName, number: VersionId) -> Result<Option<Vec<u8>>, StoreError> {
        let (file, id) = {
            let _state = self.lock();
            let Some(meta) = self.read_meta(doc)? else {
                return Ok(None);
            };
            if !self
                .db
                .contains_key(keys::version(meta.id, number))
                .map_err(backend)?
            {
                return Ok(None);
            }
            match self.versions.open_file(meta.id, number) {
                Ok(file) => (file, meta.id),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Corrupt(format!(
                        "version {number} of document {doc:?}: its file is missing"
                    )));
                }
                Err(e) => return Err(backend(e)),
            }
        };
        // Read outside the lock: the handle stays valid if the version is deleted meanwhile.
        snapfile::read(file, id, number)
            .map(Some)
            .map_err(|e| match e {
                snapfile::ReadError::Io(e) => backend(e),
                snapfile::ReadError::Mislabelled { id, upto } => StoreError::Corrupt(format!(
                    "version {number} of document {doc:?}: its file holds version {upto} of \
                     document id {id}"
                )),
                e => StoreError::Corrupt(format!("version {number} of document {doc:?}: {e}")),
            })
    }

    fn delete_versions(&self, doc: &DocName, numbers: &[VersionId]) -> Result<u64, StoreError> {
        let _writing = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
        let (id, removed) = {
            let _state = self.lock();
            let Some(meta) = self.read_meta(doc)? else {
                return Ok(0);
            };
            let mut removed = BTreeSet::new();
            for &number in numbers {
                if self
                    .db
                    .contains_key(keys::version(meta.id, number))
                    .map_err(backend)?
                {
                    removed.insert(number);
                }
            }
            if removed.is_empty() {
                return Ok(0);
            }
            let mut history = self.read_history(doc, meta.id)?;
            self.recount_history(doc, meta.id, &mut history, &removed)?;
            let mut batch = sled::Batch::default();
            for &number in &removed {
                batch.remove(&keys::version(meta.id, number)[..]);
            }
            batch.insert(&keys::history(meta.id)[..], seal(&history)?);
            self.db.apply_batch(batch).map_err(backend)?;
            (meta.id, removed)
        };
        // The files may go only once no recoverable metadata can point at them; a crash before
        // their removal leaves orphans, removed at the next open.
        self.sync_sled()?;
        for &number in &removed {
            self.versions.remove(id, number).map_err(backend)?;
        }
        Ok(removed.len() as u64)
    }

    /// The version history summary of document `id` (all zero when it never kept a version).
    fn read_history(&self, doc: &DocName, id: u64) -> Result<VersionSummary, StoreError> {
        let Some(value) = self.db.get(keys::history(id)).map_err(backend)? else {
            return Ok(VersionSummary::default());
        };
        record::open(&value).map_err(|e| {
            StoreError::Corrupt(format!("version history summary of document {doc:?}: {e}"))
        })
    }

    /// Recounts `history` from document `id`'s version metadata, leaving out the versions in
    /// `except`: exact whatever it held, like the tail statistics of a compaction. The next
    /// version id only grows.
    fn recount_history(
        &self,
        doc: &DocName,
        id: u64,
        history: &mut VersionSummary,
        except: &BTreeSet<VersionId>,
    ) -> Result<(), StoreError> {
        history.versions = 0;
        history.history_bytes = 0;
        for item in self.db.scan_prefix(keys::versions_of(id)) {
            let (key, value) = item.map_err(backend)?;
            let Some((_, number)) = keys::version_ids(&key) else {
                continue;
            };
            history.next_version = history.next_version.max(number.saturating_add(1));
            if except.contains(&number) {
                continue;
            }
            match version_info(&key, &value) {
                Ok(info) => {
                    history.versions += 1;
                    history.history_bytes = history.history_bytes.saturating_add(info.bytes);
                }
                Err(why) => report_corrupt_version(doc, &key, &why),
            }
        }
        Ok(())
    }

    /// Adds the removal of document `id`'s version metadata and summary to `batch`; returns
    /// the ids of the version files to remove once the batch is durable.
    fn remove_versions(
        &self,
        batch: &mut sled::Batch,
        id: u64,
    ) -> Result<Vec<VersionId>, StoreError> {
        let mut numbers = Vec::new();
        for key in self.db.scan_prefix(keys::versions_of(id)).keys() {
            let key = key.map_err(backend)?;
            if let Some((_, number)) = keys::version_ids(&key) {
                numbers.push(number);
            }
            batch.remove(key);
        }
        batch.remove(&keys::history(id)[..]);
        Ok(numbers)
    }

    /// Removes the version files no version metadata refers to: what a crash in `save_version`
    /// before its batch, or in `delete_versions` or `delete` after theirs, leaves behind. Only
    /// keys are read, so a version whose metadata is damaged keeps its file.
    fn remove_orphan_versions(&self) -> Result<(), StoreError> {
        let mut referenced = HashSet::new();
        for key in self.db.scan_prefix([keys::VERSION_TAG]).keys() {
            if let Some(ids) = keys::version_ids(&key.map_err(backend)?) {
                referenced.insert(ids);
            }
        }
        for (id, number) in self.versions.scan().map_err(backend)? {
            if !referenced.contains(&(id, number)) {
                tracing::info!(
                    id,
                    version = number,
                    "removing a version file nothing refers to"
                );
                self.versions.remove(id, number).map_err(backend)?;
            }
        }
        Ok(())
    }
}

/// A version metadata record as [`VersionInfo`], checked against its key.
fn version_info(key: &[u8], value: &[u8]) -> Result<VersionInfo, String> {
    let (_, number) = keys::version_ids(key).ok_or("malformed version key")?;
    let meta: VersionMeta = record::open(value).map_err(|e| e.to_string())?;
    if meta.id != number {
        return Err(format!("the record is version {}'s", meta.id));
    }
    let label = meta
        .label
        .map(|label| String::from_utf8(label.0))
        .transpose()
        .map_err(|_| "the label is not UTF-8".to_owned())?;
    Ok(VersionInfo {
        id: number,
        created_at_ms: meta.created_at_ms,
        position: Position {
            seq: meta.position_seq,
            index: meta.position_index,
        },
        label,
        bytes: meta.bytes,
    })
}

/// Logs a damaged version metadata record, which listings skip.
fn report_corrupt_version(doc: &DocName, key: &[u8], why: &str) {
    tracing::error!(
        doc = %doc,
        version = keys::version_ids(key).map(|(_, number)| number),
        reason = why,
        "corrupt version metadata skipped: the version is not listed"
    );
}

impl DocMeta {
    /// Counts a new log entry holding `updates`, written at `now`, into the tail statistics.
    /// Saturating: the counters come from disk, and no stored value may panic us.
    fn count_entry(&mut self, updates: &[&[u8]], now: u64) {
        let bytes: u64 = updates.iter().map(|u| u.len() as u64).sum();
        self.tail_entries = self.tail_entries.saturating_add(1);
        self.tail_updates = self.tail_updates.saturating_add(updates.len() as u64);
        self.tail_bytes = self.tail_bytes.saturating_add(bytes);
        self.updated_at_ms = now;
    }

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
                format_version: STORE_FORMAT,
            })?,
        );
        batch.insert(keys::ID_COUNTER, seal(&IdCounter { next_doc_id: 1 })?);
        db.apply_batch(batch).map_err(backend)?;
        db.flush().map_err(backend)?;
        return Ok(1);
    };
    // The record's version byte is checked before its checksum: a newer record format may
    // change everything after it, and must be reported as newer, not as damage.
    if let Some(found) = record::version_of(&value).filter(|&v| v > FORMAT_VERSION) {
        return Err(StoreError::NewerFormat {
            found: found.into(),
            supported: FORMAT_VERSION.into(),
        });
    }
    let format: StoreMeta = record::open(&value)
        .map_err(|e| StoreError::Corrupt(format!("format record: {e}: not a Concord store?")))?;
    if format.format_version > STORE_FORMAT {
        return Err(StoreError::NewerFormat {
            found: format.format_version,
            supported: STORE_FORMAT,
        });
    }
    if format.format_version < STORE_FORMAT {
        return Err(StoreError::Corrupt(format!(
            "store format {} was written by a pre-release Concord; this build opens format \
             {STORE_FORMAT} only",
            format.format_version
        )));
    }
    let counter = db
        .get(keys::ID_COUNTER)
        .map_err(backend)?
        .ok_or_else(|| StoreError::Corrupt("the document id counter is missing".into()))?;
    let counter: IdCounter = record::open(&counter)
        .map_err(|e| StoreError::Corrupt(format!("document id counter: {e}")))?;
    Ok(counter.next_doc_id)
}

/// The largest id a readable document metadata record holds (0 when there is none).
fn max_doc_id(db: &sled::Db) -> Result<u64, StoreError> {
    let mut max = 0;
    for item in db.scan_prefix([keys::DOC_TAG]) {
        let (_, value) = item.map_err(backend)?;
        if let Ok(meta) = record::open::<DocMeta>(&value) {
            max = max.max(meta.id);
        }
    }
    Ok(max)
}

fn next_id(id: u64) -> Result<u64, StoreError> {
    id.checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("document ids exhausted".into()))
}

fn snapshot_corrupt(doc: &DocName, why: &dyn fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "snapshot of document {doc:?}: {why}; the document cannot be rebuilt from the log \
         entries after it alone"
    ))
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
