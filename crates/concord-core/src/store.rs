//! The storage trait every persistence backend implements, and an in-memory implementation.
//!
//! A document is stored as an optional **snapshot** (the whole document, as
//! [`Room::encode_snapshot`](crate::Room::encode_snapshot) makes it; opaque to stores) plus a
//! **log** of entries written after it; each log entry holds the v1 updates one group commit
//! wrote for that document. Compaction replaces a prefix of the log with a new snapshot.
//!
//! The trait is asynchronous, with boxed futures so that it stays object-safe (`Arc<dyn Store>`):
//! a network-backed store (Redis, a database) awaits its I/O without holding a runtime worker
//! thread, and an embedded one (sled) moves its blocking calls to a blocking thread pool inside
//! its own implementation. Defining the trait does no I/O and needs no runtime: this crate stays
//! sans-IO. The server batches many updates into one `append` call (group commit), so backends
//! see few, large calls.
//!
//! [`MemoryStore`] keeps everything in memory; its futures are ready at once. It also has plain
//! (synchronous) methods of the same names for tests and tools.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::DocName;

/// Position of an entry in a document's log. Sequence numbers grow by one per entry, start at
/// 1, and are never reused for a document, even after compaction.
pub type Seq = u64;

/// Where a stored update sits in its document's history: the seq of the log entry it was
/// written in and its index within that entry. Positions only grow for a document and survive
/// restarts and compaction (seqs are never reused). Written `SEQ.INDEX`, e.g. `17.3`;
/// [`Position::START`] (`0.0`) is before every update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The log entry.
    pub seq: Seq,
    /// The update's index within the entry.
    pub index: u32,
}

impl Position {
    /// Before every update.
    pub const START: Position = Position { seq: 0, index: 0 };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.seq, self.index)
    }
}

/// Why a string is not a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a position (SEQ.INDEX, e.g. 17.3)")]
pub struct InvalidPosition(pub String);

impl std::str::FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Position, InvalidPosition> {
        let invalid = || InvalidPosition(s.chars().take(64).collect());
        let (seq, index) = s.split_once('.').ok_or_else(invalid)?;
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(seq) || !digits(index) {
            return Err(invalid());
        }
        Ok(Position {
            seq: seq.parse().map_err(|_| invalid())?,
            index: index.parse().map_err(|_| invalid())?,
        })
    }
}

/// The log entries of a document from some seq on, from [`Store::log_from`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogTail {
    /// `(seq, updates)` of every readable entry with seq >= the one asked for, in seq order.
    pub entries: Vec<(Seq, Vec<Vec<u8>>)>,
    /// False when compaction already replaced some of the entries asked for with a snapshot:
    /// the history from that seq on is no longer complete in the log.
    pub complete: bool,
    /// The seq of the last entry written to the document (0 when none was).
    pub last_seq: Seq,
}

/// An error reported by a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O error, a closed database...).
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend cannot be reached right now (a network store lost its server): nothing of
    /// the call is known to be written, and the same call may succeed later. The server keeps
    /// retrying such a write (holding its updates, acknowledging none) instead of giving up.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    /// The store was written by a newer version of Concord with a format this one cannot read.
    #[error("store format version {found} is newer than the {supported} this server supports")]
    NewerFormat {
        /// Version found on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The data on disk is not what this store writes (not a Concord store, or damaged
    /// metadata).
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The backend does not implement this operation.
    #[error("this storage backend does not support {0}")]
    Unsupported(&'static str),
}

/// One update to append to a document's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpdate {
    /// The document the update belongs to.
    pub doc: DocName,
    /// A Yjs update in lib0 v1 encoding, exactly as the engine produced it.
    pub update: Vec<u8>,
}

/// What [`Store::append`] wrote for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The document.
    pub doc: DocName,
    /// Sequence number of the log entry just written.
    pub seq: Seq,
    /// Updates in the document's log after its snapshot, this entry included.
    pub tail_updates: u64,
    /// Bytes of those updates.
    pub tail_bytes: u64,
}

/// Everything stored for one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDoc {
    /// The latest snapshot (see [`crate::Room::encode_snapshot`]), if the document was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// The v1 updates of the log entries after the snapshot, in log order.
    pub updates: Vec<Vec<u8>>,
    /// Sequence number of the last log entry read (0 when the log is empty).
    pub last_seq: Seq,
    /// How far in the document's history the loaded state reaches: the position of the last
    /// update read, or `(snapshot seq, u32::MAX)` when the log after the snapshot is empty
    /// ([`Position::START`] for a document with nothing stored).
    pub position: Position,
    /// Log entries that failed their checksum or could not be decoded. They were skipped, and
    /// reported by the backend; the document loads from what is intact.
    pub corrupt_entries: u64,
}

/// A stored document's name and size, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocInfo {
    /// The document.
    pub name: DocName,
    /// Bytes of its snapshot.
    pub snapshot_bytes: u64,
    /// Number of log entries after the snapshot.
    pub log_entries: u64,
    /// Bytes of those log entries.
    pub log_bytes: u64,
    /// When the document was last written, in milliseconds since the Unix epoch (0 if unknown).
    pub updated_at_ms: u64,
    /// Number of kept versions (see [`Store::save_version`]).
    pub versions: u64,
    /// Bytes of those versions' snapshots: what the document's history costs on disk.
    pub history_bytes: u64,
}

/// Identifies a version of a document. Ids grow per document and are never reused, even after
/// the version is deleted.
pub type VersionId = u64;

/// A version to keep: the whole document at some point of its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVersion {
    /// The document's state, as [`crate::Room::encode_snapshot`] makes it (opaque to stores).
    pub snapshot: Vec<u8>,
    /// When the state was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// How far in the document's history the state reaches.
    pub position: Position,
    /// A named version's label; `None` for a version kept automatically, which the retention
    /// policy may thin. A named version is kept until deleted.
    pub label: Option<String>,
}

/// A kept version, without its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its id.
    pub id: VersionId,
    /// When the state was taken, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// How far in the document's history the state reaches.
    pub position: Position,
    /// The label of a named version; `None` for an automatic one.
    pub label: Option<String>,
    /// Bytes of its snapshot.
    pub bytes: u64,
}

/// A webhook delivery waiting in the outbox (see [`Store::outbox_write`]). Opaque to stores,
/// apart from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Unique among pending entries; [`Store::outbox`] returns entries sorted by it. Writing an
    /// entry whose key is pending replaces it.
    pub key: String,
    /// What the server needs to deliver it (the receiver, the request body).
    pub payload: Vec<u8>,
}

/// Everything the outbox holds, from [`Store::outbox`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// Pending deliveries, sorted by key.
    pub entries: Vec<OutboxEntry>,
    /// Per document, the position through which its edits have been announced.
    pub marks: BTreeMap<DocName, Position>,
    /// Whether [`Store::outbox_write`] was ever called on this store: before the first call no
    /// mark was ever kept, so documents without one are not "never announced".
    pub started: bool,
}

/// What changed for webhooks in a shared store since the lease holder last asked, from
/// [`Store::webhook_news`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookNews {
    /// Documents edited (by any process), each with its announced-through mark (`None`: none).
    pub edited: Vec<(DocName, Option<Position>)>,
    /// Outbox entries written (by any process) and still pending, sorted by key.
    pub entries: Vec<OutboxEntry>,
}

/// What every [`Store`] method returns: a boxed future, so that the trait is object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Durable storage for documents. See the module documentation for the model.
///
/// **Contract.** `append` returns only once every update of the batch is as durable as the
/// backend promises (the backend documents how durable that is). Updates of one document may be
/// appended in any order: Yjs updates commute, so replaying them in any order yields the same
/// document. Applying `snapshot` then `updates` of [`Store::load`] to an empty document
/// rebuilds it. `compact` is atomic: after a crash at any point, `load` returns either the old
/// log or the new snapshot with the entries after `upto`, never a mix that loses or repeats an
/// update. The conformance suite (`concord_core::conformance`, feature `conformance`) checks
/// all of this against an implementation.
///
/// **Runtime.** Callers poll these futures on an async runtime's worker threads: an
/// implementation must not block in them (run blocking I/O on a blocking pool, as
/// `concord-sled` does, or use async I/O). A caller never holds a lock across them.
pub trait Store: Send + Sync + 'static {
    /// Everything stored for `doc`. An unknown document loads as empty.
    fn load<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, StoredDoc>;

    /// Appends a batch of updates durably: one log entry per document of the batch, holding
    /// that document's updates in batch order. Returns what was written, one element per
    /// document, sorted by document name. The batch is shared so that a backend can hand it to
    /// another thread without copying it.
    fn append(&self, batch: Arc<[StoredUpdate]>) -> StoreFuture<'_, Vec<Appended>>;

    /// Atomically replaces the snapshot of `doc` with `snapshot` and removes every log
    /// entry up to and including `upto`, which the snapshot must cover.
    fn compact<'a>(&'a self, doc: &'a DocName, snapshot: Vec<u8>, upto: Seq)
    -> StoreFuture<'a, ()>;

    /// Removes everything stored for `doc`. Removing an unknown document is not an error.
    fn delete<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, ()>;

    /// Every stored document, sorted by name.
    fn list(&self) -> StoreFuture<'_, Vec<DocInfo>>;

    /// The log entries of `doc` with seq >= `from`, and whether the log still holds all of
    /// them (see [`LogTail`]). An unknown document has a complete, empty log.
    fn log_from<'a>(&'a self, doc: &'a DocName, from: Seq) -> StoreFuture<'a, LogTail>;

    /// Keeps `version` of `doc` and returns what was stored, with the new id. Durable when it
    /// returns, like an append. The default implementation refuses: a backend without history.
    fn save_version<'a>(
        &'a self,
        doc: &'a DocName,
        version: NewVersion,
    ) -> StoreFuture<'a, VersionInfo> {
        let _ = (doc, version);
        no_history()
    }

    /// The kept versions of `doc`, oldest first (by id). An unknown document has none.
    fn versions<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, Vec<VersionInfo>> {
        let _ = doc;
        no_history()
    }

    /// The snapshot of version `id` of `doc`, or `None` when there is no such version.
    fn version<'a>(&'a self, doc: &'a DocName, id: VersionId) -> StoreFuture<'a, Option<Vec<u8>>> {
        let _ = (doc, id);
        no_history()
    }

    /// Removes versions `ids` of `doc`; ids it does not hold are skipped. Returns how many were
    /// removed. [`Store::delete`] removes a document's versions with it.
    fn delete_versions<'a>(
        &'a self,
        doc: &'a DocName,
        ids: Vec<VersionId>,
    ) -> StoreFuture<'a, u64> {
        let _ = (doc, ids);
        no_history()
    }

    /// Atomically and durably (like an append) adds the webhook deliveries `add` to the outbox
    /// and sets (`Some`) or removes (`None`) the announced-through marks of documents: after a
    /// crash, [`Store::outbox`] has all of it or none. The marks are independent of the
    /// documents: [`Store::delete`] leaves a document's mark. The default implementation
    /// refuses: a backend without an outbox.
    fn outbox_write(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> StoreFuture<'_, ()> {
        let _ = (add, marks);
        no_outbox()
    }

    /// Everything the outbox holds.
    fn outbox(&self) -> StoreFuture<'_, Outbox> {
        no_outbox()
    }

    /// Removes the pending deliveries `keys` (delivered, or given up); unknown keys are skipped.
    fn outbox_remove(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        let _ = keys;
        no_outbox()
    }

    /// For a store several server processes share ([`Store::shared`]), one of them announces
    /// webhooks at a time: this takes (when nobody holds it) or renews (when `holder` holds
    /// it) that lease for `ttl`, and says whether `holder` holds it now. A zero `ttl` gives it
    /// up (when `holder` holds it). The default implementation refuses: a store with one
    /// writer needs no lease.
    fn webhook_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let _ = (holder, ttl);
        not_shared()
    }

    /// For a shared store: notes that `docs` were edited (their new entries are stored), for
    /// the lease holder's next [`Store::webhook_news`]. Durable like the outbox.
    fn webhook_edited(&self, docs: Vec<DocName>) -> StoreFuture<'_, ()> {
        let _ = docs;
        not_shared()
    }

    /// For a shared store: takes what changed since the last call, by any process: the
    /// documents noted edited (each with its current mark), and the outbox entries written
    /// (those still pending). Two calls never return the same news.
    fn webhook_news(&self) -> StoreFuture<'_, WebhookNews> {
        not_shared()
    }

    /// Whether other server processes write to this store too (a shared Redis, a database).
    /// Then a loaded room may not yet hold what another process appended, so the server builds
    /// snapshots for [`Store::compact`] from the store itself, never from a room. False by
    /// default: an embedded store has one writer.
    fn shared(&self) -> bool {
        false
    }

    /// Whether the backend can take writes right now, as far as the store knows without I/O:
    /// `Err(why)` while it is unreachable (a network store that lost its server). The server's
    /// readiness probe reports it. Always ready by default.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What a backend without version history answers to the version methods of [`Store`].
fn no_history<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Err(StoreError::Unsupported(
        "version history",
    ))))
}

/// What a store with one writer answers to the methods for shared stores.
fn not_shared<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Err(StoreError::Unsupported(
        "webhooks shared by several processes",
    ))))
}

/// What a backend without an outbox answers to the outbox methods of [`Store`].
fn no_outbox<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Err(StoreError::Unsupported(
        "a webhook outbox",
    ))))
}

/// A [`Store`] that keeps documents in process memory: nothing survives a restart. For tests,
/// and for servers that only relay.
#[derive(Debug, Default)]
pub struct MemoryStore {
    docs: Mutex<HashMap<DocName, MemoryDoc>>,
    outbox: Mutex<MemoryOutbox>,
}

#[derive(Debug, Default)]
struct MemoryOutbox {
    entries: BTreeMap<String, Vec<u8>>,
    marks: BTreeMap<DocName, Position>,
    started: bool,
}

#[derive(Debug, Default)]
struct MemoryDoc {
    snapshot: Option<Vec<u8>>,
    /// The seq the snapshot covers.
    snapshot_seq: Seq,
    /// Log entries after the snapshot: (seq, updates).
    log: Vec<(Seq, Vec<Vec<u8>>)>,
    /// Updates and bytes in `log`, kept as it changes: an append must not cost a walk of it.
    tail_updates: u64,
    tail_bytes: u64,
    next_seq: Seq,
    /// Kept versions by id, with their snapshots.
    versions: BTreeMap<VersionId, (VersionInfo, Vec<u8>)>,
    next_version: VersionId,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many updates are stored in `doc`'s log (for tests that check what was persisted).
    pub fn update_count(&self, doc: &DocName) -> usize {
        self.lock()
            .get(doc)
            .map_or(0, |d| d.log.iter().map(|(_, u)| u.len()).sum())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DocName, MemoryDoc>> {
        // A panic while holding this lock cannot leave a document half-written (every
        // operation completes its change with infallible steps), so a poisoned lock is still
        // safe to use.
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryStore {
    /// [`Store::load`], at once.
    pub fn load(&self, doc: &DocName) -> Result<StoredDoc, StoreError> {
        let docs = self.lock();
        let Some(stored) = docs.get(doc) else {
            return Ok(StoredDoc::default());
        };
        Ok(StoredDoc {
            snapshot: stored.snapshot.clone(),
            updates: stored
                .log
                .iter()
                .flat_map(|(_, u)| u.iter().cloned())
                .collect(),
            last_seq: stored.log.last().map_or(0, |(seq, _)| *seq),
            position: match stored.log.last() {
                Some((seq, updates)) => Position {
                    seq: *seq,
                    index: u32::try_from(updates.len().saturating_sub(1)).unwrap_or(u32::MAX),
                },
                None if stored.snapshot.is_some() => Position {
                    seq: stored.snapshot_seq,
                    index: u32::MAX,
                },
                None => Position::START,
            },
            corrupt_entries: 0,
        })
    }

    /// [`Store::append`], at once.
    pub fn append(&self, batch: &[StoredUpdate]) -> Result<Vec<Appended>, StoreError> {
        let mut grouped: BTreeMap<&DocName, Vec<Vec<u8>>> = BTreeMap::new();
        for entry in batch {
            grouped
                .entry(&entry.doc)
                .or_default()
                .push(entry.update.clone());
        }
        let mut docs = self.lock();
        let mut written = Vec::with_capacity(grouped.len());
        for (name, updates) in grouped {
            let stored = docs.entry(name.clone()).or_default();
            stored.next_seq = stored.next_seq.max(1);
            let seq = stored.next_seq;
            stored.next_seq += 1;
            stored.tail_updates += updates.len() as u64;
            stored.tail_bytes += updates.iter().map(|u| u.len() as u64).sum::<u64>();
            stored.log.push((seq, updates));
            written.push(Appended {
                doc: name.clone(),
                seq,
                tail_updates: stored.tail_updates,
                tail_bytes: stored.tail_bytes,
            });
        }
        Ok(written)
    }

    /// [`Store::compact`], at once.
    pub fn compact(&self, doc: &DocName, snapshot: &[u8], upto: Seq) -> Result<(), StoreError> {
        let mut docs = self.lock();
        let stored = docs.entry(doc.clone()).or_default();
        stored.snapshot = Some(snapshot.to_vec());
        stored.snapshot_seq = stored.snapshot_seq.max(upto);
        stored.log.retain(|(seq, _)| *seq > stored.snapshot_seq);
        let tail = stored.log.iter().flat_map(|(_, u)| u);
        stored.tail_updates = tail.clone().count() as u64;
        stored.tail_bytes = tail.map(|u| u.len() as u64).sum();
        stored.next_seq = stored.next_seq.max(upto + 1);
        Ok(())
    }

    /// [`Store::delete`], at once.
    pub fn delete(&self, doc: &DocName) -> Result<(), StoreError> {
        self.lock().remove(doc);
        Ok(())
    }

    /// [`Store::log_from`], at once.
    pub fn log_from(&self, doc: &DocName, from: Seq) -> Result<LogTail, StoreError> {
        let docs = self.lock();
        let Some(stored) = docs.get(doc) else {
            return Ok(LogTail {
                complete: true,
                ..LogTail::default()
            });
        };
        // The first seq the log still holds (entries before it were compacted away).
        let oldest = stored.log.first().map_or(stored.next_seq, |(seq, _)| *seq);
        Ok(LogTail {
            entries: stored
                .log
                .iter()
                .filter(|(seq, _)| *seq >= from)
                .cloned()
                .collect(),
            complete: stored.snapshot.is_none() || from >= oldest,
            last_seq: stored.next_seq.saturating_sub(1),
        })
    }

    /// [`Store::list`], at once.
    pub fn list(&self) -> Result<Vec<DocInfo>, StoreError> {
        let docs = self.lock();
        let sorted: BTreeMap<_, _> = docs.iter().collect();
        Ok(sorted
            .into_iter()
            .map(|(name, d)| DocInfo {
                name: name.clone(),
                snapshot_bytes: d.snapshot.as_ref().map_or(0, |s| s.len() as u64),
                log_entries: d.log.len() as u64,
                log_bytes: d
                    .log
                    .iter()
                    .flat_map(|(_, u)| u)
                    .map(|u| u.len() as u64)
                    .sum(),
                updated_at_ms: 0,
                versions: d.versions.len() as u64,
                history_bytes: d.versions.values().map(|(info, _)| info.bytes).sum(),
            })
            .collect())
    }

    /// [`Store::save_version`], at once.
    pub fn save_version(
        &self,
        doc: &DocName,
        version: NewVersion,
    ) -> Result<VersionInfo, StoreError> {
        let mut docs = self.lock();
        let stored = docs.entry(doc.clone()).or_default();
        stored.next_version = stored.next_version.max(1);
        let info = VersionInfo {
            id: stored.next_version,
            created_at_ms: version.created_at_ms,
            position: version.position,
            label: version.label,
            bytes: version.snapshot.len() as u64,
        };
        stored.next_version += 1;
        stored
            .versions
            .insert(info.id, (info.clone(), version.snapshot));
        Ok(info)
    }

    fn lock_outbox(&self) -> std::sync::MutexGuard<'_, MemoryOutbox> {
        // As `lock`: every change completes with infallible steps.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Store::outbox_write`], at once.
    pub fn outbox_write(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> Result<(), StoreError> {
        let mut outbox = self.lock_outbox();
        outbox.started = true;
        for entry in add {
            outbox.entries.insert(entry.key, entry.payload);
        }
        for (doc, mark) in marks {
            match mark {
                Some(position) => outbox.marks.insert(doc, position),
                None => outbox.marks.remove(&doc),
            };
        }
        Ok(())
    }

    /// [`Store::outbox`], at once.
    pub fn outbox(&self) -> Result<Outbox, StoreError> {
        let outbox = self.lock_outbox();
        Ok(Outbox {
            entries: outbox
                .entries
                .iter()
                .map(|(key, payload)| OutboxEntry {
                    key: key.clone(),
                    payload: payload.clone(),
                })
                .collect(),
            marks: outbox.marks.clone(),
            started: outbox.started,
        })
    }

    /// [`Store::outbox_remove`], at once.
    pub fn outbox_remove(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut outbox = self.lock_outbox();
        for key in keys {
            outbox.entries.remove(key);
        }
        Ok(())
    }

    /// [`Store::versions`], at once.
    pub fn versions(&self, doc: &DocName) -> Result<Vec<VersionInfo>, StoreError> {
        Ok(self.lock().get(doc).map_or_else(Vec::new, |d| {
            d.versions.values().map(|(info, _)| info.clone()).collect()
        }))
    }

    /// [`Store::version`], at once.
    pub fn version(&self, doc: &DocName, id: VersionId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .get(doc)
            .and_then(|d| d.versions.get(&id))
            .map(|(_, snapshot)| snapshot.clone()))
    }

    /// [`Store::delete_versions`], at once.
    pub fn delete_versions(&self, doc: &DocName, ids: &[VersionId]) -> Result<u64, StoreError> {
        let mut docs = self.lock();
        let Some(stored) = docs.get_mut(doc) else {
            return Ok(0);
        };
        Ok(ids
            .iter()
            .filter(|id| stored.versions.remove(id).is_some())
            .count() as u64)
    }
}

/// Every method runs at once on the caller's thread: a few map operations under a mutex.
impl Store for MemoryStore {
    fn load<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, StoredDoc> {
        Box::pin(std::future::ready(MemoryStore::load(self, doc)))
    }

    fn append(&self, batch: Arc<[StoredUpdate]>) -> StoreFuture<'_, Vec<Appended>> {
        Box::pin(std::future::ready(MemoryStore::append(self, &batch)))
    }

    fn compact<'a>(
        &'a self,
        doc: &'a DocName,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(MemoryStore::compact(
            self, doc, &snapshot, upto,
        )))
    }

    fn delete<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(MemoryStore::delete(self, doc)))
    }

    fn list(&self) -> StoreFuture<'_, Vec<DocInfo>> {
        Box::pin(std::future::ready(MemoryStore::list(self)))
    }

    fn log_from<'a>(&'a self, doc: &'a DocName, from: Seq) -> StoreFuture<'a, LogTail> {
        Box::pin(std::future::ready(MemoryStore::log_from(self, doc, from)))
    }

    fn save_version<'a>(
        &'a self,
        doc: &'a DocName,
        version: NewVersion,
    ) -> StoreFuture<'a, VersionInfo> {
        Box::pin(std::future::ready(MemoryStore::save_version(
            self, doc, version,
        )))
    }

    fn versions<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, Vec<VersionInfo>> {
        Box::pin(std::future::ready(MemoryStore::versions(self, doc)))
    }

    fn version<'a>(&'a self, doc: &'a DocName, id: VersionId) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(MemoryStore::version(self, doc, id)))
    }

    fn delete_versions<'a>(
        &'a self,
        doc: &'a DocName,
        ids: Vec<VersionId>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(std::future::ready(MemoryStore::delete_versions(
            self, doc, &ids,
        )))
    }

    fn outbox_write(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(MemoryStore::outbox_write(
            self, add, marks,
        )))
    }

    fn outbox(&self) -> StoreFuture<'_, Outbox> {
        Box::pin(std::future::ready(MemoryStore::outbox(self)))
    }

    fn outbox_remove(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(MemoryStore::outbox_remove(self, &keys)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract itself is checked by the conformance suite, the same one every backend runs.
    #[tokio::test]
    async fn the_memory_store_conforms() {
        crate::conformance::run_all(MemoryStore::new).await;
    }
}
