//! Concord's durable document store on sled: [`SledStore`] implements
//! [`concord_core::Store`] with an update log per document, snapshots and atomic compaction.
//!
//! # Model
//!
//! Each document has an optional **snapshot** (the whole document, bytes the store does
//! not interpret) and a **log** of entries written after it. [`Store::append`] writes one log
//! entry per document per batch, holding that document's updates in batch order (sled spends
//! about 200 bytes on every entry, so one entry per keystroke would multiply the disk used by
//! ten or more), then writes the same entries to the **journal** with one `write(2)`: that,
//! not a sled flush, is what makes the batch survive a killed process (see [Durability]). [`Store::compact`] stores a
//! snapshot and deletes the log entries it covers, atomically. [`Store::load`] returns the
//! snapshot and the updates of the entries after it, in seq order. A document also keeps
//! **versions** ([`Store::save_version`]): whole-document snapshots with an id, a time, a
//! position and an optional label (see [Versions]).
//!
//! # Layout
//!
//! A store is a directory holding four things:
//!
//! - `sled/`: a sled database with the format records, document metadata and log entries,
//!   all in sled's default tree;
//! - `snapshots/`: one file per document snapshot, named `<id>-<seq>.snap` (both 16 hex
//!   digits: the document's numeric id and the last log seq the snapshot covers);
//! - `versions/`: one file per kept version, named `<id>-<version id>.snap` (both 16 hex
//!   digits), in the snapshot file format;
//! - `journal/`: the log entries sled may not have written yet, in files `<number>.log` (16
//!   hex digits), each a sequence of frames `[length: u32 LE][record]` whose record payload
//!   is `{ entries: Vec<{ doc: name, id: u64, seq: u64, updates: Vec<Vec<u8>> }> }`, one frame
//!   per `append`. Empty after an orderly close.
//!
//! Snapshots are files because a snapshot is the bulk of a compacted document and sled keeps
//! the space of every value it rewrites or removes until it cleans the segment: with snapshots
//! inside sled, a document compacted as the server does took 16-20x its size on disk. A file
//! costs the snapshot's size plus a header of at most 32 bytes, and a superseded one is removed at once.
//!
//! Integers in keys are big-endian, so byte order is numeric order and a range scan returns log
//! entries by seq.
//!
//! | Key                                        | Value (payload of a record)                     |
//! |--------------------------------------------|-------------------------------------------------|
//! | `b"m"`                                     | store format: `{ format_version: u32 }` (2)     |
//! | `b"i"`                                     | id counter: `{ next_doc_id: u64 }`              |
//! | `b"d"` + name (UTF-8 bytes)                | document metadata, see below                    |
//! | `b"l"` + id (u64 BE) + seq (u64 BE)        | log entry: `{ updates: Vec<Vec<u8>> }` (Yjs v1) |
//! | `b"h"` + id (u64 BE)                       | version history summary, see [Versions]         |
//! | `b"v"` + id (u64 BE) + version id (u64 BE) | version metadata, see [Versions]                |
//! | `b"o"` + key (UTF-8 bytes)                 | webhook outbox entry: `{ payload: Vec<u8> }`    |
//! | `b"w"` + name (UTF-8 bytes)                | announced through: `{ seq: u64, index: u32 }`   |
//! | `b"s"`                                     | empty: the outbox was written at least once     |
//!
//! A snapshot file holds one record whose payload is `{ id: u64, upto: u64, bytes: Vec<u8> }`
//! (`bytes` is the snapshot as the server made it); the id and seq repeat the file name, so a file under the wrong name is
//! detected.
//!
//! Document metadata is `{ id: u64, next_seq: u64, snapshot_seq: Option<u64>,
//! snapshot_bytes: u64, tail_entries: u64, tail_updates: u64, tail_bytes: u64,
//! updated_at_ms: u64 }`. Documents get a numeric id from the `b"i"` counter (updated in the
//! same batch as the document's first write) so that log keys are short and fixed-size; ids are
//! never reused. Seqs start at 1 and are never reused either, even after compaction.
//!
//! # Versions
//!
//! A version's snapshot is as large as the document's (several MB for a big one) and
//! retention deletes versions, so, like snapshots, version snapshots are **files**, in
//! `versions/`: `<id>-<version id>.snap`, one record `{ id: u64, upto: u64, bytes: Vec<u8> }`
//! (the snapshot file format, `upto` holding the version id), written to a `.tmp` name,
//! fsynced, renamed, the directory fsynced. Everything else is small and lives in sled's
//! default tree with the rest of the document, so that one `sled::Batch` changes it together
//! with the document's metadata and the id counter:
//!
//! - `b"v" + id + version id` (big-endian: a prefix scan lists a document's versions oldest
//!   first) holds the version's metadata `{ id: u64, created_at_ms: u64, position_seq: u64,
//!   position_index: u32, label: Option<String>, bytes: u64 }` (`id` repeats the key's, so a
//!   record under the wrong key is detected; `bytes` is the snapshot's length). Listing a
//!   document's versions reads these records only, never a file.
//! - `b"h" + id` holds the document's history summary `{ next_version: u64, versions: u64,
//!   history_bytes: u64 }`: the version id counter (ids start at 1; the record stays when
//!   every version is deleted, so ids are never reused, across reopening too) and the count
//!   and byte total that [`DocInfo`] reports, so a listing reads one record per document. It
//!   is rewritten in the same batch as the metadata it summarises, recounted from that
//!   metadata (exact whatever it held before), so it agrees with the metadata after any crash.
//!
//! `save_version` on a document that does not exist creates it (empty, listed), as
//! [`Store::compact`] does. It takes the lock compactions and deletions hold (so version ids
//! are handed out one at a time) and:
//!
//! 1. writes the version file durably, outside the store's lock;
//! 2. applies ONE sled batch: the version's metadata, the summary (and, for a new document,
//!    its metadata and the id counter);
//! 3. flushes and fsyncs sled: when `save_version` returns, the version survives a killed
//!    process **and a power loss** (stronger than an append; versions are rare, so the fsync
//!    costs little), and its id can never be handed out again.
//!
//! `delete_versions` applies one batch removing the metadata and rewriting the summary,
//! flushes and fsyncs sled, then removes the files. [`Store::delete`] removes the document's
//! version metadata and summary in its batch and the files after its fsync.
//!
//! **Crashes.** A version is listed only once its metadata is in sled, which happens only
//! after its file is durable, and a file is removed only after the metadata's removal is
//! durable: no crash (power loss included) leaves a listed version without its bytes. What a
//! crash can leave is the opposite, a file nothing refers to (a crash in `save_version` before
//! step 2, or in `delete_versions`/`delete` before the files are removed) or a `.tmp` file:
//! never listed or read, and removed when the store opens (a file is kept when a `b"v"` key
//! names it, whether or not its record is readable). An orphan's version id may then be
//! handed out again, but it was never returned to a caller.
//!
//! **Format.** The change is additive: the `b"h"` and `b"v"` keys and the `versions/`
//! directory are new and nothing existing changed, so the store format stays 2 and stores
//! written before versions existed open unchanged (no summary means no versions, next id 1;
//! the directory is created at open).
//!
//! # Webhook outbox
//!
//! The server's pending webhook deliveries (`b"o"` keys, opaque payloads) and, per document,
//! the position through which its edits were announced (`b"w"` keys) are written in one batch
//! followed by sled's write-back, which makes them survive a killed process like an append
//! (power loss: within `flush_every_ms`). They are independent of the document records:
//! deleting a document leaves its mark. These keys are additive as well (format 2).
//!
//! # Record format
//!
//! Every stored value is `[format version: u8][crc32 of the payload: u32 LE][payload]`, the
//! payload being bincode 2 with `bincode::config::standard()` (varint integers; a struct is its
//! fields in order, a `Vec` its length then its elements). The record format version is 1; the
//! store format (the layout above, in the `b"m"` record) is 2. Opening a store whose record
//! format or store format is newer fails with [`StoreError::NewerFormat`]; a database whose
//! `b"m"` is missing (while holding data) or is not a Concord record, and a store of format 1
//! (a pre-release layout with snapshots inside sled), fail with [`StoreError::Corrupt`].
//! Decoding checks every length against the bytes that remain, so no
//! stored value, however damaged, can panic the store or make it allocate more than its size.
//!
//! # Corruption
//!
//! - A **log entry** that fails its checksum or does not decode is skipped: the rest of the
//!   document loads, [`StoredDoc::corrupt_entries`] counts it, it is logged with
//!   `tracing::error!` (document, seq, reason) and counted by
//!   [`SledStore::corrupt_entries_seen`]. The updates it held are lost; clients that still have
//!   them send them again when they next sync.
//! - A damaged, mislabelled or missing **snapshot file** makes [`Store::load`] fail with
//!   [`StoreError::Corrupt`] naming the document: the entries after a snapshot are only the
//!   changes since it, so the document cannot be rebuilt from them.
//! - Damaged **document metadata** is [`StoreError::Corrupt`] for every operation on that
//!   document except [`Store::delete`], which removes it (its log and snapshot keys are left
//!   behind, unreachable). An `append` batch that includes such a document fails as a whole:
//!   the trait reports one result per batch. While any metadata is damaged, opening the store
//!   removes no snapshot file (an orphan cannot be told from that document's snapshot).
//!   Such a document's versions (keys and files) stay behind with its other keys.
//! - Damaged **version metadata** is skipped by [`Store::versions`] and by the summary's
//!   count, and logged with `tracing::error!`; [`Store::delete_versions`] removes it. A
//!   damaged **history summary** is [`StoreError::Corrupt`] for listings and version writes
//!   until the document is deleted. A damaged, mislabelled or missing **version file** makes
//!   [`Store::version`] fail with [`StoreError::Corrupt`] for that version only.
//!
//! # Compaction and crashes
//!
//! `compact(doc, snapshot, upto)` covers the entries with seq <= `upto` (or <= the current
//! snapshot's seq, if larger) in three steps:
//!
//! 1. write the snapshot file under a temporary name, fsync it, rename it into place, fsync the
//!    directory: the file is durable (power loss included) before anything points at it;
//! 2. apply ONE sled batch that rewrites the metadata (new snapshot seq, tail statistics
//!    recounted from the entries that remain) and removes the covered log entries, then flush;
//! 3. fsync sled's data file, then remove the superseded snapshot file.
//!
//! A crash before step 2 leaves the old state and an orphan file; a crash before step 3
//! leaves the new state and the old file as an orphan; opening the store removes files no
//! metadata refers to (and unfinished `.tmp` files). Step 3 waits for the fsync because sled's
//! flush alone does not survive a power loss: the metadata recovered after one must never point
//! at a removed file. Independently of the batch's atomicity, `load` ignores every log entry
//! whose seq is <= the snapshot's. `SledStore::compact_interrupted` (hidden, for tests) stops
//! at each of these points, to prove it. Compactions and deletions are serialised by a lock of
//! their own; appends and loads do not wait for a compaction's file write.
//!
//! `delete` removes the metadata and log entries in one batch, flushes, fsyncs sled's data file
//! and removes the snapshot file.
//!
//! # Durability
//!
//! When `append` returns, its batch has been applied to sled (in memory) and written to the
//! journal with one `write(2)`: the bytes are in the operating system's page cache. sled itself
//! writes them later (its own flush every `flush_every_ms`, and each checkpoint). No append
//! waits for a flush, a sync or another thread: that is what made a durable update cost as
//! much as two in-memory ones when each batch held one update (a sled flush hands the batch to
//! sled's I/O threads, `pwrite`s it and waits in `sync_file_range` for the disk).
//!
//! - **A killed process (SIGKILL, a panic, an OOM kill) loses nothing** that a call returned
//!   for: the journal is in the page cache, and opening the store replays every journal entry
//!   sled lacks (seqs tell which; a document deleted since is never brought back, since ids are
//!   never reused), makes sled durable and removes the journal. `tests/journal.rs` and the
//!   SIGKILL test in the workspace's `tests/durability` (sled's own flush on and off) show it.
//! - **A power loss or kernel crash may lose up to the last
//!   [`SledOptions::flush_every_ms`]** (500 ms by default) of returned writes: a thread of
//!   the store fsyncs the journal at that interval (and sled's own thread flushes). With
//!   `flush_every_ms: None` neither runs and the window is unbounded. A frame cut short by a
//!   power loss ends the replay of its file; recovery is consistent: a batch is recovered whole
//!   or not at all.
//! - **Checkpoints** keep the journal short: once its file holds 4 MiB, or anything for 30 s,
//!   the same thread sends appends to a new file, flushes and fsyncs sled, and removes the old
//!   file. Closing the store (dropping its last handle) checkpoints too.
//!
//! sled 0.34 is, by its own README, beta software, and its on-disk format is not compatible with
//! the unreleased sled 1.0. That is why it sits behind the [`Store`] trait: another backend can
//! replace it without touching the server.
//!
//! [Durability]: #durability
//! [Versions]: #versions
//!
//! # Concurrency
//!
//! A [`SledStore`] is shared between threads: the server appends from its persistence worker
//! while compactions run elsewhere. One internal mutex serialises the metadata
//! read-modify-writes (`append`, `compact`, `delete`, the version calls) and `load` (a sled
//! range scan is not isolated from a concurrent batch); flushes, fsyncs and snapshot and
//! version file I/O run outside it (a load opens the snapshot file under the lock and reads it
//! after; `version` does the same with its file). Note that sled 0.34 itself
//! applies batches under a process-wide lock shared by every sled database in the process:
//! while a batch is applied (a large compaction removes one key per log entry), every other
//! sled read and write in the process waits.
//!
//! [`Store`]: concord_core::Store
//! [`Store::append`]: concord_core::Store::append
//! [`Store::compact`]: concord_core::Store::compact
//! [`Store::load`]: concord_core::Store::load
//! [`Store::delete`]: concord_core::Store::delete
//! [`Store::save_version`]: concord_core::Store::save_version
//! [`Store::versions`]: concord_core::Store::versions
//! [`Store::version`]: concord_core::Store::version
//! [`Store::delete_versions`]: concord_core::Store::delete_versions
//! [`DocInfo`]: concord_core::DocInfo
//! [`StoreError::NewerFormat`]: concord_core::StoreError::NewerFormat
//! [`StoreError::Corrupt`]: concord_core::StoreError::Corrupt
//! [`StoredDoc::corrupt_entries`]: concord_core::StoredDoc::corrupt_entries

mod journal;
mod keys;
mod record;
mod snapfile;
mod store;

pub use store::{CompactCrash, SledOptions, SledStore};
