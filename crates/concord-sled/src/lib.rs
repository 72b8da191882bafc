//! Concord's durable document store on sled: [`SledStore`] implements
//! [`concord_core::Store`] with an update log per document, snapshots and atomic compaction.
//!
//! # Model
//!
//! Each document has an optional **snapshot** (the whole document, Yjs v2 bytes the store does
//! not interpret) and a **log** of entries written after it. [`Store::append`] writes one log
//! entry per document per batch, holding that document's updates in batch order (sled spends
//! about 200 bytes on every entry, so one entry per keystroke would multiply the disk used by
//! ten or more), then makes the whole batch durable with one flush. [`Store::compact`] stores a
//! snapshot and deletes the log entries it covers, atomically. [`Store::load`] returns the
//! snapshot and the updates of the entries after it, in seq order.
//!
//! # Layout
//!
//! Snapshots live in a sled tree of their own (`snapshots`); everything else lives in sled's
//! default tree. Snapshots are kept apart because sled rewrites a leaf's large values whenever
//! it rewrites the leaf: next to a document's newest log keys, a snapshot was rewritten by every
//! later append (measured: ~19 KB written per 10-update append instead of ~1.2 KB). A
//! compaction or a deletion changes both trees in one sled transaction, so it stays atomic.
//! Integers in keys are big-endian, so byte order is numeric order and a range scan returns log
//! entries by seq.
//!
//! | Key                                  | Value (payload of a record)                         |
//! |--------------------------------------|-----------------------------------------------------|
//! | `b"m"`                               | store format: `{ format_version: u32 }`             |
//! | `b"i"`                               | id counter: `{ next_doc_id: u64 }`                  |
//! | `b"d"` + name (UTF-8 bytes)          | document metadata, see below                        |
//! | `b"l"` + id (u64 BE) + seq (u64 BE)  | log entry: `{ updates: Vec<Vec<u8>> }` (Yjs v1)     |
//! | `b"s"` + id (u64 BE), tree `snapshots` | snapshot: `{ upto: u64, bytes: Vec<u8> }` (Yjs v2) |
//!
//! Document metadata is `{ id: u64, next_seq: u64, snapshot_seq: Option<u64>,
//! snapshot_bytes: u64, tail_entries: u64, tail_updates: u64, tail_bytes: u64,
//! updated_at_ms: u64 }`. Documents get a numeric id from the `b"i"` counter (updated in the
//! same batch as the document's first write) so that log keys are short and fixed-size; ids are
//! never reused. Seqs start at 1 and are never reused either, even after compaction.
//!
//! # Record format
//!
//! Every stored value is `[format version: u8][crc32 of the payload: u32 LE][payload]`, the
//! payload being bincode 2 with `bincode::config::standard()` (varint integers; a struct is its
//! fields in order, a `Vec` its length then its elements). The format version is 1. Opening a
//! store whose `b"m"` record has a newer version fails with [`StoreError::NewerFormat`]; a
//! database whose `b"m"` is missing (while holding data) or is not a Concord record fails with
//! [`StoreError::Corrupt`]. Decoding checks every length against the bytes that remain, so no
//! stored value, however damaged, can panic the store or make it allocate more than its size.
//!
//! # Corruption
//!
//! - A **log entry** that fails its checksum or does not decode is skipped: the rest of the
//!   document loads, [`StoredDoc::corrupt_entries`] counts it, it is logged with
//!   `tracing::error!` (document, seq, reason) and counted by
//!   [`SledStore::corrupt_entries_seen`]. The updates it held are lost; clients that still have
//!   them send them again when they next sync.
//! - A damaged **snapshot** makes [`Store::load`] fail with [`StoreError::Corrupt`] naming the
//!   document: the entries after a snapshot are only the changes since it, so the document
//!   cannot be rebuilt from them.
//! - Damaged **document metadata** is [`StoreError::Corrupt`] for every operation on that
//!   document except [`Store::delete`], which removes it (its log and snapshot keys are left
//!   behind, unreachable). An `append` batch that includes such a document fails as a whole:
//!   the trait reports one result per batch.
//!
//! # Compaction and crashes
//!
//! `compact(doc, snapshot, upto)` collects the keys of the entries with seq <= `upto` (or <=
//! the previous snapshot's seq, if larger), then applies ONE transaction that writes the
//! snapshot record, rewrites the metadata (tail statistics recounted from the entries that
//! remain) and removes those keys, then flushes. Independently of that atomicity, `load` ignores every log
//! entry whose seq is <= the snapshot's: had the snapshot been written without the deletions,
//! no update would be applied twice nor lost. `SledStore::compact_snapshot_only` (hidden, for
//! tests) performs only that first half, to prove it.
//!
//! # Durability
//!
//! When `append`, `compact` or `delete` returns, its writes have been flushed with sled's
//! `flush`, which writes with `sync_file_range` but does not fsync:
//!
//! - **A killed process (SIGKILL, a panic, an OOM kill) loses nothing** that a call returned
//!   for: the data is in the operating system's page cache and sled recovers it on open.
//! - **A power loss or kernel crash may lose up to the last
//!   [`SledOptions::flush_every_ms`]** (500 ms by default) of returned writes: only sled's
//!   background thread calls fsync, at that interval. With `flush_every_ms: None` there is no
//!   such thread and the window is unbounded. Recovery is still consistent: a batch is
//!   recovered whole or not at all.
//!
//! sled 0.34 is, by its own README, beta software, and its on-disk format is not compatible with
//! the unreleased sled 1.0. That is why it sits behind the [`Store`] trait: another backend can
//! replace it without touching the server.
//!
//! # Concurrency
//!
//! A [`SledStore`] is shared between threads: the server appends from its persistence worker
//! while compactions run elsewhere. One internal mutex serialises the metadata
//! read-modify-writes (`append`, `compact`, `delete`) and `load` (a sled range scan is not
//! isolated from a concurrent batch); flushes run outside it. Note that sled 0.34 itself
//! applies batches under a process-wide lock shared by every sled database in the process:
//! while a batch is applied (a large compaction removes one key per log entry), every other
//! sled read and write in the process waits.
//!
//! [`Store`]: concord_core::Store
//! [`Store::append`]: concord_core::Store::append
//! [`Store::compact`]: concord_core::Store::compact
//! [`Store::load`]: concord_core::Store::load
//! [`Store::delete`]: concord_core::Store::delete
//! [`StoreError::NewerFormat`]: concord_core::StoreError::NewerFormat
//! [`StoreError::Corrupt`]: concord_core::StoreError::Corrupt
//! [`StoredDoc::corrupt_entries`]: concord_core::StoredDoc::corrupt_entries

mod keys;
mod record;
mod store;

pub use store::{SledOptions, SledStore};
