//! The conformance suite of the [`Store`] contract: one set of checks that every storage
//! backend runs, so that the server can rely on the contract whichever backend it is given.
//!
//! The checks talk to a store through the [`Store`] trait only, the way the server does, and
//! only await the futures it returns: they need no runtime of their own and run on whichever one
//! the backend needs (a Tokio runtime for `concord-sled`, whose futures run on Tokio's blocking
//! pool). Each check panics with a message saying what broke; [`run_all`] runs every check on a
//! fresh store and reports all the checks that failed together, so one failure does not hide the
//! others.
//!
//! # Running it against a backend
//!
//! Add concord-core with this feature as a dev-dependency of the backend's crate:
//!
//! ```toml
//! [dev-dependencies]
//! concord-core = { path = "../concord-core", features = ["conformance"] }
//! ```
//!
//! and call [`run_all`] from a test, with a [`Harness`] that makes empty stores. A closure that
//! returns a new store is one (this is how `MemoryStore` runs it):
//!
//! ```ignore
//! #[tokio::test]
//! async fn the_memory_store_conforms() {
//!     concord_core::conformance::run_all(concord_core::MemoryStore::new).await;
//! }
//! ```
//!
//! A backend that keeps data across restarts implements [`Harness`] itself, so that the random
//! check can also close and reopen the store between operations (see
//! `crates/concord-sled/tests/conformance.rs`):
//!
//! ```ignore
//! struct Sled { dir: tempfile::TempDir, made: u32, current: Option<std::path::PathBuf> }
//!
//! impl Harness for Sled {
//!     type Store = SledStore;
//!     fn create(&mut self) -> impl Future<Output = SledStore> {
//!         self.made += 1;
//!         let path = self.dir.path().join(self.made.to_string());
//!         self.current = Some(path.clone());
//!         std::future::ready(SledStore::open(path).expect("a new store opens"))
//!     }
//!     fn reopen(&mut self, store: SledStore) -> impl Future<Output = SledStore> {
//!         drop(store);
//!         let path = self.current.clone().expect("a store was created");
//!         std::future::ready(SledStore::open(path).expect("the store opens again"))
//!     }
//! }
//!
//! #[tokio::test]
//! async fn the_sled_store_conforms() {
//!     run_all(Sled { dir: tempfile::tempdir().unwrap(), made: 0, current: None }).await;
//! }
//! ```
//!
//! A backend whose stores share one server (Redis, a database) makes each store use its own
//! namespace (a key prefix, a schema), so that the checks never see each other's documents.
//!
//! Where the trait's documentation leaves room, the checks hold every backend to what
//! `MemoryStore` and `SledStore` do, so that the server sees one behaviour: a deleted document
//! is gone entirely (written again, it starts from seq 1); a compaction past the end of the log
//! counts the seqs up to `upto` as used; a compaction below the current snapshot's seq replaces
//! the snapshot's bytes but not the seq it covers (a shared store, [`Store::shared`], keeps the
//! newer snapshot instead: its snapshots cover exactly their seq); empty updates are stored
//! like any other.
//!
//! Each check is public too, so a backend can run one on its own while fixing it. What the
//! checks do not cover is backend-specific and tested by the backend: durability across a crash,
//! its on-disk layout, corruption handling, concurrent writers, `DocInfo::updated_at_ms` (0 is
//! allowed) and `StoredDoc::corrupt_entries` of damaged data.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use crate::test_support::Rng;
use crate::{
    Appended, DocInfo, DocName, LogTail, NewVersion, Outbox, OutboxEntry, Position, Seq, Store,
    StoreError, StoredDoc, StoredUpdate, VersionInfo,
};

/// How the suite gets stores to check.
///
/// The suite uses one store at a time: [`Harness::reopen`] is only ever given the store that
/// [`Harness::create`] (or `reopen`) returned last, which makes a harness that remembers the
/// location of its latest store enough.
pub trait Harness {
    /// The implementation under test.
    type Store: Store;

    /// A new store with nothing in it. Panics if no store can be made: there is nothing to
    /// check then.
    fn create(&mut self) -> impl Future<Output = Self::Store>;

    /// `store` closed and opened again, as after a restart of the process. A store that keeps
    /// nothing across restarts returns `store` itself, which is the default.
    fn reopen(&mut self, store: Self::Store) -> impl Future<Output = Self::Store> {
        std::future::ready(store)
    }
}

/// A closure that returns a new store is a harness whose stores are never reopened.
impl<S, F> Harness for F
where
    S: Store,
    F: FnMut() -> S,
{
    type Store = S;

    fn create(&mut self) -> impl Future<Output = S> {
        std::future::ready(self())
    }
}

/// Every check's name, in the order [`run_all`] runs them.
pub const CHECKS: [&str; 17] = [
    "a_new_store_is_empty",
    "append_writes_one_entry_per_document_per_batch",
    "seqs_start_at_one_grow_and_compaction_never_reuses_them",
    "tail_statistics_count_the_log_after_the_snapshot",
    "load_returns_the_snapshot_and_the_updates_after_it",
    "log_from_reports_entries_completeness_and_last_seq",
    "list_is_sorted_by_name_with_sizes",
    "delete_removes_everything_of_one_document",
    "compaction_replaces_the_covered_prefix",
    "compaction_below_the_current_snapshot_brings_nothing_back",
    "compaction_is_idempotent",
    "compaction_is_atomic_for_concurrent_readers",
    "compaction_of_an_unknown_document_creates_it",
    "empty_batches_and_empty_updates",
    "random_operations_match_a_reference_model",
    "versions_are_kept_listed_read_deleted_and_survive_reopening",
    "the_outbox_keeps_entries_and_marks_and_survives_reopening",
];

/// Seed of the random sequence [`run_all`] checks.
pub const RANDOM_SEED: u64 = 7;
/// Operations in the random sequence [`run_all`] checks.
pub const RANDOM_STEPS: u32 = 600;

/// Runs every check, each on a new store from `harness`, and panics at the end listing every
/// check that failed and why.
pub async fn run_all<H: Harness>(mut harness: H) {
    let mut failures = Vec::new();
    for name in CHECKS {
        if let Err(why) = caught(run_one(&mut harness, name)).await {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} store conformance checks failed:\n{}",
        failures.len(),
        CHECKS.len(),
        failures.join("\n")
    );
}

/// Runs the check called `name` (one of [`CHECKS`]) on a new store from `harness`.
pub async fn run_one<H: Harness>(harness: &mut H, name: &str) {
    if name == "random_operations_match_a_reference_model" {
        return random_operations_match_a_reference_model(harness, RANDOM_SEED, RANDOM_STEPS).await;
    }
    if name == "versions_are_kept_listed_read_deleted_and_survive_reopening" {
        return versions_are_kept_listed_read_deleted_and_survive_reopening(harness).await;
    }
    if name == "the_outbox_keeps_entries_and_marks_and_survives_reopening" {
        return the_outbox_keeps_entries_and_marks_and_survives_reopening(harness).await;
    }
    let store = harness.create().await;
    let store: &dyn Store = &store;
    match name {
        "a_new_store_is_empty" => a_new_store_is_empty(store).await,
        "append_writes_one_entry_per_document_per_batch" => {
            append_writes_one_entry_per_document_per_batch(store).await
        }
        "seqs_start_at_one_grow_and_compaction_never_reuses_them" => {
            seqs_start_at_one_grow_and_compaction_never_reuses_them(store).await
        }
        "tail_statistics_count_the_log_after_the_snapshot" => {
            tail_statistics_count_the_log_after_the_snapshot(store).await
        }
        "load_returns_the_snapshot_and_the_updates_after_it" => {
            load_returns_the_snapshot_and_the_updates_after_it(store).await
        }
        "log_from_reports_entries_completeness_and_last_seq" => {
            log_from_reports_entries_completeness_and_last_seq(store).await
        }
        "list_is_sorted_by_name_with_sizes" => list_is_sorted_by_name_with_sizes(store).await,
        "delete_removes_everything_of_one_document" => {
            delete_removes_everything_of_one_document(store).await
        }
        "compaction_replaces_the_covered_prefix" => {
            compaction_replaces_the_covered_prefix(store).await
        }
        "compaction_below_the_current_snapshot_brings_nothing_back" => {
            compaction_below_the_current_snapshot_brings_nothing_back(store).await
        }
        "compaction_is_idempotent" => compaction_is_idempotent(store).await,
        "compaction_is_atomic_for_concurrent_readers" => {
            compaction_is_atomic_for_concurrent_readers(store).await
        }
        "compaction_of_an_unknown_document_creates_it" => {
            compaction_of_an_unknown_document_creates_it(store).await
        }
        "empty_batches_and_empty_updates" => empty_batches_and_empty_updates(store).await,
        other => panic!("no store conformance check is called {other:?}"),
    }
}

/// A new store lists nothing, loads an unknown document as empty, reports a complete, empty
/// log with `last_seq` 0 for it from any seq, and deletes it without error.
pub async fn a_new_store_is_empty(store: &dyn Store) {
    assert_eq!(list(store).await, vec![], "a new store lists documents");
    let unknown = name("unknown");
    assert_eq!(load(store, &unknown).await, StoredDoc::default());
    for from in [0, 1, 7, Seq::MAX] {
        assert_eq!(
            log_from(store, &unknown, from).await,
            empty_log(0),
            "log_from({from}) of an unknown document"
        );
    }
    delete(store, &unknown).await;
    assert_eq!(
        list(store).await,
        vec![],
        "deleting an unknown document created it"
    );
}

/// `append` writes one log entry per document of a batch, holding that document's updates in
/// batch order, and returns one [`Appended`] per document, sorted by name.
pub async fn append_writes_one_entry_per_document_per_batch(store: &dyn Store) {
    let written = append(
        store,
        &[
            update("b", &[1]),
            update("a", &[2]),
            update("b", &[3, 4]),
            update("b", &[]),
        ],
    )
    .await;
    assert_eq!(
        written,
        vec![appended("a", 1, 1, 1), appended("b", 1, 3, 3),],
        "one result per document, sorted by name"
    );
    assert_eq!(
        log_from(store, &name("b"), 0).await,
        LogTail {
            entries: vec![(1, vec![vec![1], vec![3, 4], vec![]])],
            complete: true,
            last_seq: 1,
        },
        "one entry holding b's updates in batch order"
    );
    assert_eq!(
        log_from(store, &name("a"), 0).await.entries,
        vec![(1, vec![vec![2]])]
    );
    let written = append(store, &[update("b", &[5]), update("b", &[6, 6])]).await;
    assert_eq!(written, vec![appended("b", 2, 5, 6)]);
    assert_eq!(
        log_from(store, &name("b"), 0).await.entries,
        vec![
            (1, vec![vec![1], vec![3, 4], vec![]]),
            (2, vec![vec![5], vec![6, 6]]),
        ]
    );
    assert_eq!(
        load(store, &name("b")).await,
        StoredDoc {
            snapshot: None,
            updates: vec![vec![1], vec![3, 4], vec![], vec![5], vec![6, 6]],
            last_seq: 2,
            position: Position { seq: 2, index: 1 },
            corrupt_entries: 0,
        }
    );
    assert_eq!(
        load(store, &name("a")).await.updates,
        vec![vec![2]],
        "documents of one batch do not mix"
    );
}

/// Seqs are per document: each starts at 1 and grows by one per entry, and compaction never
/// lets one be used again, even a compaction of the whole log or past its end. A deleted
/// document is gone entirely: written again, it starts again from seq 1, as a new document.
pub async fn seqs_start_at_one_grow_and_compaction_never_reuses_them(store: &dyn Store) {
    let d = name("d");
    for seq in 1..=3u8 {
        let written = append(store, &[update("d", &[seq])]).await;
        assert_eq!(written[0].seq, u64::from(seq));
    }
    assert_eq!(
        append(store, &[update("other", &[1]), update("d", &[4])]).await,
        vec![appended("d", 4, 4, 4), appended("other", 1, 1, 1)],
        "each document counts its own seqs"
    );
    compact(store, &d, vec![9], 2).await;
    assert_eq!(append(store, &[update("d", &[5])]).await[0].seq, 5);
    // The whole log: the next entry still gets a fresh seq.
    compact(store, &d, vec![8], 5).await;
    assert_eq!(append(store, &[update("d", &[6])]).await[0].seq, 6);
    // Past the end of the log: the seqs up to `upto` count as used.
    compact(store, &d, vec![7], 10).await;
    assert_eq!(append(store, &[update("d", &[7])]).await[0].seq, 11);
    assert_eq!(load(store, &d).await.last_seq, 11);

    delete(store, &d).await;
    assert_eq!(append(store, &[update("d", &[8])]).await[0].seq, 1);
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: None,
            updates: vec![vec![8]],
            last_seq: 1,
            position: Position { seq: 1, index: 0 },
            corrupt_entries: 0,
        },
        "nothing of the deleted document comes back"
    );
}

/// [`Appended::tail_updates`] and [`Appended::tail_bytes`] count every update of the log
/// after the snapshot, the new entry included; compaction recounts them from what remains, and
/// `list` reports the same tail.
pub async fn tail_statistics_count_the_log_after_the_snapshot(store: &dyn Store) {
    let d = name("d");
    assert_eq!(
        append(store, &[update("d", &[1]), update("d", &[2, 2])]).await,
        vec![appended("d", 1, 2, 3)]
    );
    assert_eq!(
        append(store, &[update("d", &[3, 3, 3])]).await,
        vec![appended("d", 2, 3, 6)]
    );
    assert_eq!(
        append(store, &[update("d", &[4; 4])]).await,
        vec![appended("d", 3, 4, 10)]
    );
    assert_eq!(sizes(store).await, vec![("d".into(), 0, 3, 10)]);
    compact(store, &d, vec![0; 5], 2).await;
    assert_eq!(
        sizes(store).await,
        vec![("d".into(), 5, 1, 4)],
        "entry 3 is the tail now"
    );
    assert_eq!(
        append(store, &[update("d", &[5, 5])]).await,
        vec![appended("d", 4, 2, 6)],
        "tail statistics are recounted after compaction"
    );
    compact(store, &d, vec![0; 3], 4).await;
    assert_eq!(sizes(store).await, vec![("d".into(), 3, 0, 0)]);
    assert_eq!(
        append(store, &[update("d", &[6])]).await,
        vec![appended("d", 5, 1, 1)],
        "the tail is only the new entry after compacting everything"
    );
}

/// `load` returns the latest snapshot and the updates of every entry after it, in log order;
/// `last_seq` is the last entry read (0 when the log after the snapshot is empty); `position`
/// is that of the last update read, or `(snapshot seq, u32::MAX)` when only the snapshot is
/// there.
pub async fn load_returns_the_snapshot_and_the_updates_after_it(store: &dyn Store) {
    let d = name("d");
    append(store, &[update("d", &[1])]).await;
    append(
        store,
        &[update("d", &[2]), update("d", &[3]), update("d", &[4])],
    )
    .await;
    append(store, &[update("d", &[5]), update("d", &[6])]).await;
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: None,
            updates: (1..=6).map(|u| vec![u]).collect(),
            last_seq: 3,
            position: Position { seq: 3, index: 1 },
            corrupt_entries: 0,
        }
    );
    compact(store, &d, b"up to 2".to_vec(), 2).await;
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: Some(b"up to 2".to_vec()),
            updates: vec![vec![5], vec![6]],
            last_seq: 3,
            position: Position { seq: 3, index: 1 },
            corrupt_entries: 0,
        },
        "the snapshot, then the entries after it"
    );
    compact(store, &d, b"up to 3".to_vec(), 3).await;
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: Some(b"up to 3".to_vec()),
            updates: vec![],
            last_seq: 0,
            position: Position {
                seq: 3,
                index: u32::MAX
            },
            corrupt_entries: 0,
        },
        "only a snapshot"
    );
    append(
        store,
        &[update("d", &[7]), update("d", &[8]), update("d", &[9])],
    )
    .await;
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: Some(b"up to 3".to_vec()),
            updates: vec![vec![7], vec![8], vec![9]],
            last_seq: 4,
            position: Position { seq: 4, index: 2 },
            corrupt_entries: 0,
        }
    );
}

/// `log_from(doc, from)` returns every entry with seq >= `from` in seq order; it is complete
/// unless compaction removed some of them (`from` at or below the snapshot's seq); `last_seq`
/// is the last seq the document used, even when compaction removed that entry.
pub async fn log_from_reports_entries_completeness_and_last_seq(store: &dyn Store) {
    let d = name("d");
    for u in 1..=4u8 {
        append(store, &[update("d", &[u])]).await;
    }
    let entry = |seq: u8| (Seq::from(seq), vec![vec![seq]]);
    for (from, first) in [(0, 1), (1, 1), (3, 3), (4, 4)] {
        assert_eq!(
            log_from(store, &d, from).await,
            LogTail {
                entries: (first..=4).map(entry).collect(),
                complete: true,
                last_seq: 4,
            },
            "log_from({from})"
        );
    }
    for from in [5, 6, Seq::MAX] {
        assert_eq!(
            log_from(store, &d, from).await,
            empty_log(4),
            "log_from({from}), past the end"
        );
    }
    compact(store, &d, vec![0], 2).await;
    for (from, complete) in [(0, false), (1, false), (2, false), (3, true), (4, true)] {
        assert_eq!(
            log_from(store, &d, from).await,
            LogTail {
                entries: (from.max(3) as u8..=4).map(entry).collect(),
                complete,
                last_seq: 4,
            },
            "log_from({from}) after compacting up to 2"
        );
    }
    compact(store, &d, vec![0], 4).await;
    assert_eq!(
        log_from(store, &d, 4).await,
        LogTail {
            entries: vec![],
            complete: false,
            last_seq: 4,
        },
        "entry 4 was compacted away"
    );
    assert_eq!(
        log_from(store, &d, 5).await,
        empty_log(4),
        "nothing was compacted from 5 on"
    );
    append(store, &[update("d", &[5])]).await;
    assert_eq!(
        log_from(store, &d, 0).await,
        LogTail {
            entries: vec![entry(5)],
            complete: false,
            last_seq: 5,
        }
    );
    assert_eq!(log_from(store, &name("unknown"), 3).await, empty_log(0));
}

/// `list` returns every stored document once, sorted by name, with the bytes of its snapshot
/// and the number and bytes of the log entries after it.
pub async fn list_is_sorted_by_name_with_sizes(store: &dyn Store) {
    append(store, &[update("zeta", &[1, 2]), update("alpha", &[3])]).await;
    append(store, &[update("zeta", &[4, 5, 6]), update("é", &[])]).await;
    append(store, &[update("mid", &[7])]).await;
    compact(store, &name("mid"), vec![0; 10], 1).await;
    append(store, &[update("mid", &[8, 8]), update("c/d", &[9])]).await;
    append(store, &[update("B", &[1])]).await;
    compact(store, &name("snapshot only"), vec![0; 4], 0).await;
    let listed = list(store).await;
    let names: Vec<&DocName> = listed.iter().map(|info| &info.name).collect();
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "not sorted by name, or a name twice: {names:?}"
    );
    assert_eq!(
        sizes(store).await,
        vec![
            ("B".into(), 0, 1, 1),
            ("alpha".into(), 0, 1, 1),
            ("c/d".into(), 0, 1, 1),
            ("mid".into(), 10, 1, 2),
            ("snapshot only".into(), 4, 0, 0),
            ("zeta".into(), 0, 2, 5),
            ("é".into(), 0, 1, 0),
        ]
    );
}

/// `delete` removes everything of one document (snapshot, log, listing) and nothing of
/// another; deleting an unknown or already deleted document is not an error.
pub async fn delete_removes_everything_of_one_document(store: &dyn Store) {
    let (gone, kept) = (name("gone"), name("kept"));
    append(store, &[update("gone", &[1]), update("kept", &[2])]).await;
    append(store, &[update("gone", &[3])]).await;
    compact(store, &gone, vec![9, 9], 1).await;
    append(store, &[update("gone", &[4])]).await;
    let kept_before = load(store, &kept).await;

    delete(store, &gone).await;
    assert_eq!(load(store, &gone).await, StoredDoc::default());
    for from in [0, 1, 3, 9] {
        assert_eq!(
            log_from(store, &gone, from).await,
            empty_log(0),
            "log_from({from}) of a deleted document"
        );
    }
    assert_eq!(sizes(store).await, vec![("kept".into(), 0, 1, 1)]);
    assert_eq!(load(store, &kept).await, kept_before);
    delete(store, &gone).await;
    delete(store, &name("never written")).await;
    assert_eq!(sizes(store).await, vec![("kept".into(), 0, 1, 1)]);
}

/// `compact(doc, snapshot, upto)` replaces the snapshot and removes exactly the entries up to
/// and including `upto`; the entries after it stay, in order.
pub async fn compaction_replaces_the_covered_prefix(store: &dyn Store) {
    let d = name("d");
    append(store, &[update("d", &[1])]).await;
    append(store, &[update("d", &[2]), update("d", &[3])]).await;
    append(store, &[update("d", &[4])]).await;
    append(store, &[update("other", &[5])]).await;
    compact(store, &d, vec![1, 2], 2).await;
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: Some(vec![1, 2]),
            updates: vec![vec![4]],
            last_seq: 3,
            position: Position { seq: 3, index: 0 },
            corrupt_entries: 0,
        }
    );
    assert_eq!(
        log_from(store, &d, 3).await.entries,
        vec![(3, vec![vec![4]])]
    );
    assert_eq!(
        load(store, &name("other")).await.updates,
        vec![vec![5]],
        "another document's log is untouched"
    );
    compact(store, &d, vec![1, 2, 3], 3).await;
    assert_eq!(
        load(store, &d).await.snapshot,
        Some(vec![1, 2, 3]),
        "a newer snapshot replaces the old one"
    );
    // An empty snapshot is a snapshot like any other: stores do not interpret them.
    compact(store, &d, vec![], 3).await;
    assert_eq!(load(store, &d).await.snapshot, Some(vec![]));
    assert_eq!(
        sizes(store).await,
        vec![("d".into(), 0, 0, 0), ("other".into(), 0, 1, 1)]
    );
}

/// A compaction whose `upto` is below the current snapshot's seq replaces the snapshot but
/// brings back none of the entries the old snapshot covered, and uses no seq again.
pub async fn compaction_below_the_current_snapshot_brings_nothing_back(store: &dyn Store) {
    let d = name("d");
    for u in 1..=5u8 {
        append(store, &[update("d", &[u])]).await;
    }
    compact(store, &d, b"up to 3".to_vec(), 3).await;
    compact(store, &d, b"older".to_vec(), 1).await;
    // A shared store's snapshots are built from the store and cover exactly their seq, so an
    // older one covers less: it must not replace the newer one.
    let kept: &[u8] = if store.shared() { b"up to 3" } else { b"older" };
    assert_eq!(
        load(store, &d).await,
        StoredDoc {
            snapshot: Some(kept.to_vec()),
            updates: vec![vec![4], vec![5]],
            last_seq: 5,
            position: Position { seq: 5, index: 0 },
            corrupt_entries: 0,
        }
    );
    for from in [0, 2, 3] {
        assert!(
            !log_from(store, &d, from).await.complete,
            "log_from({from}): entries up to 3 are still compacted away"
        );
    }
    assert!(log_from(store, &d, 4).await.complete);
    assert_eq!(append(store, &[update("d", &[6])]).await[0].seq, 6);
}

/// The same compaction twice leaves the store as the first one did.
pub async fn compaction_is_idempotent(store: &dyn Store) {
    let d = name("d");
    for u in 1..=3u8 {
        append(store, &[update("d", &[u])]).await;
    }
    compact(store, &d, vec![7, 7], 2).await;
    let once = (
        load(store, &d).await,
        log_from(store, &d, 0).await,
        sizes(store).await,
    );
    compact(store, &d, vec![7, 7], 2).await;
    let twice = (
        load(store, &d).await,
        log_from(store, &d, 0).await,
        sizes(store).await,
    );
    assert_eq!(once, twice);
    assert_eq!(append(store, &[update("d", &[4])]).await[0].seq, 4);
}

/// A `load` that runs while a compaction does sees either the whole old state or the whole
/// new one: never a mix that loses or repeats an update. The futures are polled together, so
/// a backend that runs them in parallel has them in flight at once.
pub async fn compaction_is_atomic_for_concurrent_readers(store: &dyn Store) {
    let d = name("d");
    let mut upto = 0;
    for round in 1..=6u8 {
        for u in 0..4u8 {
            append(store, &[update("d", &[round, u])]).await;
        }
        let before = load(store, &d).await;
        let snapshot = vec![round; 3];
        let covered = upto + 2;
        upto += 4;
        let after = StoredDoc {
            snapshot: Some(snapshot.clone()),
            updates: vec![vec![round, 2], vec![round, 3]],
            last_seq: upto,
            position: Position {
                seq: upto,
                index: 0,
            },
            corrupt_entries: 0,
        };
        let loads = (0..8).map(|_| store.load(&d)).collect();
        let (compacted, loaded) = join(store.compact(&d, snapshot, covered), join_all(loads)).await;
        compacted.unwrap_or_else(|e| panic!("compact failed: {e}"));
        for seen in loaded {
            let seen = seen.unwrap_or_else(|e| panic!("load failed: {e}"));
            assert!(
                seen == before || seen == after,
                "round {round}: a load during compaction saw {seen:?}, neither {before:?} nor \
                 {after:?}"
            );
        }
        assert_eq!(load(store, &d).await, after, "round {round}");
        // The rest of this round's entries go too, so each round starts from a snapshot alone.
        compact(store, &d, vec![round; 2], upto).await;
    }
}

/// A compaction of a document that has nothing stored creates it with just the snapshot;
/// its first entry then gets seq `upto + 1`.
pub async fn compaction_of_an_unknown_document_creates_it(store: &dyn Store) {
    let new = name("new");
    compact(store, &new, vec![1, 2, 3], 0).await;
    assert_eq!(
        load(store, &new).await,
        StoredDoc {
            snapshot: Some(vec![1, 2, 3]),
            updates: vec![],
            last_seq: 0,
            position: Position {
                seq: 0,
                index: u32::MAX
            },
            corrupt_entries: 0,
        }
    );
    assert_eq!(sizes(store).await, vec![("new".into(), 3, 0, 0)]);
    assert_eq!(
        log_from(store, &new, 0).await,
        LogTail {
            entries: vec![],
            complete: false,
            last_seq: 0,
        }
    );
    assert_eq!(log_from(store, &new, 1).await, empty_log(0));
    assert_eq!(append(store, &[update("new", &[4])]).await[0].seq, 1);

    let later = name("later");
    compact(store, &later, vec![5], 3).await;
    assert_eq!(append(store, &[update("later", &[6])]).await[0].seq, 4);
}

/// An empty batch writes nothing and returns nothing; an empty update is an update like any
/// other: stored, counted and returned.
pub async fn empty_batches_and_empty_updates(store: &dyn Store) {
    assert_eq!(append(store, &[]).await, vec![]);
    assert_eq!(
        list(store).await,
        vec![],
        "an empty batch created a document"
    );
    assert_eq!(
        append(store, &[update("d", &[])]).await,
        vec![appended("d", 1, 1, 0)]
    );
    assert_eq!(
        load(store, &name("d")).await,
        StoredDoc {
            snapshot: None,
            updates: vec![vec![]],
            last_seq: 1,
            position: Position { seq: 1, index: 0 },
            corrupt_entries: 0,
        }
    );
    assert_eq!(
        log_from(store, &name("d"), 0).await.entries,
        vec![(1, vec![vec![]])]
    );
    assert_eq!(sizes(store).await, vec![("d".into(), 0, 1, 0)]);
    assert_eq!(append(store, &[]).await, vec![]);
    assert_eq!(load(store, &name("d")).await.last_seq, 1);
}

/// A seeded random sequence of appends (batches of up to six updates over four documents,
/// some empty), compactions (behind, at and past the end of the log), deletions, listings and
/// reopenings ([`Harness::reopen`]), checked after every step against a reference model of the
/// contract written here: every `append` result, `list` (sizes), and the `load` and a
/// `log_from` of the document the step touched. A failure names the seed and step, which replay
/// exactly.
pub async fn random_operations_match_a_reference_model<H: Harness>(
    harness: &mut H,
    seed: u64,
    steps: u32,
) {
    const DOCS: [&str; 4] = ["a", "b", "c/d", "é"];
    let mut rng = Rng(seed);
    let mut store = Some(harness.create().await);
    let mut model = Model {
        shared: store.as_ref().is_some_and(|s| s.shared()),
        ..Model::default()
    };
    for step in 0..steps {
        let at = |what: &str| format!("seed {seed}, step {step}: {what}");
        let doc = name(DOCS[rng.below(DOCS.len() as u64) as usize]);
        let s: &dyn Store = store.as_ref().expect("a store is open");
        match rng.below(20) {
            0..=10 => {
                let len = if rng.chance(3) { 0 } else { rng.below(6) + 1 };
                let batch: Vec<StoredUpdate> = (0..len)
                    .map(|_| {
                        let doc = DOCS[rng.below(DOCS.len() as u64) as usize];
                        update(doc, &vec![step as u8; rng.below(6) as usize])
                    })
                    .collect();
                assert_eq!(
                    append(s, &batch).await,
                    model.append(&batch),
                    "{}",
                    at("append")
                );
            }
            11..=13 => {
                let upto = rng.below(model.last_seq(&doc) + 3);
                let snapshot = vec![step as u8; rng.below(4) as usize];
                compact(s, &doc, snapshot.clone(), upto).await;
                model.compact(&doc, snapshot, upto);
            }
            14 => {
                delete(s, &doc).await;
                model.delete(&doc);
            }
            15 => {
                let open = store.take().expect("a store is open");
                store = Some(harness.reopen(open).await);
            }
            _ => assert_eq!(sizes(s).await, model.sizes(), "{}", at("list")),
        }
        let s: &dyn Store = store.as_ref().expect("a store is open");
        let from = rng.below(model.last_seq(&doc) + 3);
        assert_eq!(
            log_from(s, &doc, from).await,
            model.log_from(&doc, from),
            "{}",
            at(&format!("log_from({doc:?}, {from})"))
        );
        assert_eq!(
            load(s, &doc).await,
            model.load(&doc),
            "{}",
            at(&format!("load({doc:?})"))
        );
    }
}

/// The contract, written as plainly as possible: what every store must be observably
/// equivalent to.
#[derive(Debug, Default)]
struct Model {
    docs: BTreeMap<DocName, ModelDoc>,
    /// A shared store ([`Store::shared`]) keeps its snapshot when given one that covers less.
    shared: bool,
}

#[derive(Debug)]
struct ModelDoc {
    /// The snapshot and the seq it covers.
    snapshot: Option<(Seq, Vec<u8>)>,
    /// The entries after the snapshot, by seq.
    log: BTreeMap<Seq, Vec<Vec<u8>>>,
    /// The seq of the next entry.
    next_seq: Seq,
}

impl ModelDoc {
    fn new() -> Self {
        ModelDoc {
            snapshot: None,
            log: BTreeMap::new(),
            next_seq: 1,
        }
    }

    fn tail(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.log.values().flatten()
    }
}

impl Model {
    fn append(&mut self, batch: &[StoredUpdate]) -> Vec<Appended> {
        let mut grouped: BTreeMap<&DocName, Vec<Vec<u8>>> = BTreeMap::new();
        for u in batch {
            grouped.entry(&u.doc).or_default().push(u.update.clone());
        }
        let mut written = Vec::new();
        for (name, updates) in grouped {
            let doc = self.docs.entry(name.clone()).or_insert_with(ModelDoc::new);
            let seq = doc.next_seq;
            doc.next_seq += 1;
            doc.log.insert(seq, updates);
            written.push(Appended {
                doc: name.clone(),
                seq,
                tail_updates: doc.tail().count() as u64,
                tail_bytes: doc.tail().map(|u| u.len() as u64).sum(),
            });
        }
        written
    }

    fn compact(&mut self, name: &DocName, snapshot: Vec<u8>, upto: Seq) {
        let doc = self.docs.entry(name.clone()).or_insert_with(ModelDoc::new);
        // A snapshot never covers less than the one it replaces.
        let covered = doc
            .snapshot
            .as_ref()
            .map_or(upto, |(old, _)| upto.max(*old));
        let older = doc.snapshot.as_ref().is_some_and(|(old, _)| upto < *old);
        if !(self.shared && older) {
            doc.snapshot = Some((covered, snapshot));
        }
        doc.log.retain(|&seq, _| seq > covered);
        doc.next_seq = doc.next_seq.max(covered + 1);
    }

    fn delete(&mut self, name: &DocName) {
        self.docs.remove(name);
    }

    /// The last seq `name` used (0 if none).
    fn last_seq(&self, name: &DocName) -> Seq {
        self.docs.get(name).map_or(0, |doc| doc.next_seq - 1)
    }

    fn load(&self, name: &DocName) -> StoredDoc {
        let Some(doc) = self.docs.get(name) else {
            return StoredDoc::default();
        };
        let last = doc.log.iter().next_back();
        StoredDoc {
            snapshot: doc.snapshot.as_ref().map(|(_, bytes)| bytes.clone()),
            updates: doc.tail().cloned().collect(),
            last_seq: last.map_or(0, |(&seq, _)| seq),
            position: match (last, &doc.snapshot) {
                (Some((&seq, updates)), _) => Position {
                    seq,
                    index: updates.len() as u32 - 1,
                },
                (None, Some((covered, _))) => Position {
                    seq: *covered,
                    index: u32::MAX,
                },
                (None, None) => Position::START,
            },
            corrupt_entries: 0,
        }
    }

    fn log_from(&self, name: &DocName, from: Seq) -> LogTail {
        let Some(doc) = self.docs.get(name) else {
            return empty_log(0);
        };
        LogTail {
            entries: doc
                .log
                .range(from..)
                .map(|(&seq, updates)| (seq, updates.clone()))
                .collect(),
            complete: doc
                .snapshot
                .as_ref()
                .is_none_or(|(covered, _)| from > *covered),
            last_seq: doc.next_seq - 1,
        }
    }

    fn sizes(&self) -> Vec<Sizes> {
        self.docs
            .iter()
            .map(|(name, doc)| {
                (
                    name.to_string(),
                    doc.snapshot.as_ref().map_or(0, |(_, s)| s.len() as u64),
                    doc.log.len() as u64,
                    doc.tail().map(|u| u.len() as u64).sum(),
                )
            })
            .collect()
    }
}

/// A valid document name; panics on an invalid one.
pub fn name(name: &str) -> DocName {
    DocName::new(name).unwrap_or_else(|e| panic!("{name:?} is not a document name: {e}"))
}

/// One update of document `doc`.
pub fn update(doc: &str, bytes: &[u8]) -> StoredUpdate {
    StoredUpdate {
        doc: name(doc),
        update: bytes.to_vec(),
    }
}

/// What `append` reports for one document.
fn appended(doc: &str, seq: Seq, tail_updates: u64, tail_bytes: u64) -> Appended {
    Appended {
        doc: name(doc),
        seq,
        tail_updates,
        tail_bytes,
    }
}

/// The complete, empty log that `log_from` returns past the end of a document's log.
fn empty_log(last_seq: Seq) -> LogTail {
    LogTail {
        entries: vec![],
        complete: true,
        last_seq,
    }
}

/// What the suite compares of a listing: name, snapshot bytes, log entries and log bytes
/// (`updated_at_ms` is the backend's to fill or leave at 0).
type Sizes = (String, u64, u64, u64);

async fn sizes(store: &dyn Store) -> Vec<Sizes> {
    list(store)
        .await
        .into_iter()
        .map(|i| {
            (
                i.name.to_string(),
                i.snapshot_bytes,
                i.log_entries,
                i.log_bytes,
            )
        })
        .collect()
}

/// Versions (a backend with history; one whose `save_version` answers
/// [`StoreError::Unsupported`] passes without further checks): ids start at 1 and grow per
/// document, are never reused after a delete; `versions` lists them oldest first with their
/// time, position, label and size; `version` returns the snapshot byte for byte; they survive
/// reopening; `delete_versions` skips unknown ids and counts what it removed; `list` counts
/// them and their bytes; deleting the document removes its versions and no other's.
pub async fn versions_are_kept_listed_read_deleted_and_survive_reopening<H: Harness>(
    harness: &mut H,
) {
    let store = harness.create().await;
    let (a, b) = (name("a"), name("b/c"));
    let version = |bytes: &[u8], at: u64, label: Option<&str>| NewVersion {
        snapshot: bytes.to_vec(),
        created_at_ms: at,
        position: Position {
            seq: at,
            index: u32::MAX,
        },
        label: label.map(str::to_owned),
    };
    let first = match store.save_version(&a, version(b"one", 10, None)).await {
        Err(StoreError::Unsupported(_)) => return,
        other => other.unwrap_or_else(|e| panic!("save_version failed: {e}")),
    };
    assert_eq!(first.id, 1, "the first version's id");
    assert_eq!(
        (first.created_at_ms, first.bytes, first.label.as_deref()),
        (10, 3, None)
    );
    let second = save_version(&store, &a, version(b"second", 20, Some("draft \u{e9}"))).await;
    let third = save_version(&store, &a, version(&[0, 255, 7], 30, None)).await;
    assert_eq!((second.id, third.id), (2, 3));
    let other = save_version(&store, &b, version(b"b", 5, None)).await;
    assert_eq!(other.id, 1, "ids count per document");
    let store = harness.reopen(store).await;
    let listed = versions(&store, &a).await;
    assert_eq!(listed, vec![first.clone(), second.clone(), third.clone()]);
    assert_eq!(listed[1].label.as_deref(), Some("draft \u{e9}"));
    assert_eq!(listed[1].position.seq, 20);
    assert_eq!(
        store.version(&a, 3).await.expect("version"),
        Some(vec![0, 255, 7])
    );
    assert_eq!(store.version(&a, 9).await.expect("version"), None);
    assert_eq!(versions(&store, &name("unknown")).await, vec![]);
    let infos = list(&store).await;
    let info_a = infos.iter().find(|i| i.name == a).expect("a is listed");
    assert_eq!((info_a.versions, info_a.history_bytes), (3, 3 + 6 + 3));
    assert_eq!(
        store
            .delete_versions(&a, vec![2, 2, 42])
            .await
            .expect("delete_versions"),
        1
    );
    let after = save_version(&store, &a, version(b"four", 40, None)).await;
    assert_eq!(after.id, 4, "a deleted version's id is not reused");
    let store = harness.reopen(store).await;
    assert_eq!(
        versions(&store, &a)
            .await
            .iter()
            .map(|v| v.id)
            .collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    delete(&store, &a).await;
    assert_eq!(
        versions(&store, &a).await,
        vec![],
        "deleted with the document"
    );
    assert_eq!(
        versions(&store, &b).await,
        vec![other],
        "other documents keep theirs"
    );
}

/// The webhook outbox (a store without one answers [`StoreError::Unsupported`] and passes
/// without further checks): a new store's outbox is empty and not started; one write adds
/// entries and sets marks, and starts it even when empty; entries come back sorted by key, byte
/// for byte, a pending key is replaced; `None` removes a mark; removing skips unknown keys;
/// everything survives reopening; deleting a document leaves its mark.
pub async fn the_outbox_keeps_entries_and_marks_and_survives_reopening<H: Harness>(
    harness: &mut H,
) {
    let store = harness.create().await;
    let empty = match store.outbox().await {
        Err(StoreError::Unsupported(_)) => return,
        other => other.unwrap_or_else(|e| panic!("outbox failed: {e}")),
    };
    assert_eq!(empty, Outbox::default(), "a new store's outbox");
    let entry = |key: &str, payload: &[u8]| OutboxEntry {
        key: key.to_owned(),
        payload: payload.to_vec(),
    };
    let at = |seq: Seq, index: u32| Position { seq, index };
    let (a, b) = (name("a"), name("b/c"));
    outbox_write(&store, vec![], vec![]).await;
    assert!(
        outbox(&store).await.started,
        "an empty write starts the outbox"
    );
    append(&store, &[update("a", b"x")]).await;
    outbox_write(
        &store,
        vec![entry("2-b", b"second"), entry("1-a", &[0, 255, 1])],
        vec![(a.clone(), Some(at(1, 0))), (b.clone(), Some(at(7, 3)))],
    )
    .await;
    outbox_write(
        &store,
        vec![entry("3-c", b"third"), entry("2-b", b"second, again")],
        vec![(b.clone(), None), (a.clone(), Some(at(2, u32::MAX)))],
    )
    .await;
    let store = harness.reopen(store).await;
    let kept = outbox(&store).await;
    assert_eq!(
        kept.entries,
        vec![
            entry("1-a", &[0, 255, 1]),
            entry("2-b", b"second, again"),
            entry("3-c", b"third")
        ]
    );
    assert_eq!(kept.marks, BTreeMap::from([(a.clone(), at(2, u32::MAX))]));
    assert!(kept.started);
    if let Err(e) = store
        .outbox_remove(vec!["1-a".to_owned(), "unknown".to_owned()])
        .await
    {
        panic!("outbox_remove failed: {e}");
    }
    delete(&store, &a).await;
    let store = harness.reopen(store).await;
    let kept = outbox(&store).await;
    assert_eq!(
        kept.entries
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["2-b", "3-c"]
    );
    assert_eq!(
        kept.marks.get(&a),
        Some(&at(2, u32::MAX)),
        "a deleted document keeps its mark"
    );
}

async fn outbox(store: &dyn Store) -> Outbox {
    store
        .outbox()
        .await
        .unwrap_or_else(|e| panic!("outbox failed: {e}"))
}

async fn outbox_write(
    store: &dyn Store,
    add: Vec<OutboxEntry>,
    marks: Vec<(DocName, Option<Position>)>,
) {
    if let Err(e) = store.outbox_write(add, marks).await {
        panic!("outbox_write failed: {e}");
    }
}

// The store's calls, failing the check when the store reports an error: every call of the
// suite is one a correct store must answer.

async fn append(store: &dyn Store, batch: &[StoredUpdate]) -> Vec<Appended> {
    store
        .append(Arc::from(batch))
        .await
        .unwrap_or_else(|e| panic!("append failed: {e}"))
}

async fn load(store: &dyn Store, doc: &DocName) -> StoredDoc {
    store
        .load(doc)
        .await
        .unwrap_or_else(|e| panic!("load({doc:?}) failed: {e}"))
}

async fn compact(store: &dyn Store, doc: &DocName, snapshot: Vec<u8>, upto: Seq) {
    store
        .compact(doc, snapshot, upto)
        .await
        .unwrap_or_else(|e| panic!("compact({doc:?}, upto {upto}) failed: {e}"))
}

async fn delete(store: &dyn Store, doc: &DocName) {
    store
        .delete(doc)
        .await
        .unwrap_or_else(|e| panic!("delete({doc:?}) failed: {e}"))
}

async fn list(store: &dyn Store) -> Vec<DocInfo> {
    store
        .list()
        .await
        .unwrap_or_else(|e| panic!("list failed: {e}"))
}

async fn save_version(store: &dyn Store, doc: &DocName, version: NewVersion) -> VersionInfo {
    store
        .save_version(doc, version)
        .await
        .unwrap_or_else(|e| panic!("save_version({doc:?}) failed: {e}"))
}

async fn versions(store: &dyn Store, doc: &DocName) -> Vec<VersionInfo> {
    store
        .versions(doc)
        .await
        .unwrap_or_else(|e| panic!("versions({doc:?}) failed: {e}"))
}

async fn log_from(store: &dyn Store, doc: &DocName, from: Seq) -> LogTail {
    store
        .log_from(doc, from)
        .await
        .unwrap_or_else(|e| panic!("log_from({doc:?}, {from}) failed: {e}"))
}

/// Awaits both futures, polling them together.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(|cx| {
        if out_a.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            out_a = Some(v);
        }
        if out_b.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            out_b = Some(v);
        }
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (
        out_a.expect("polled to completion"),
        out_b.expect("polled to completion"),
    )
}

/// Awaits every future, polling them together; the outputs come in the futures' order.
async fn join_all<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(&mut outputs) {
            if output.is_none() {
                match std::pin::Pin::new(future).poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to completion"))
        .collect()
}

/// Awaits `future`, turning a panic while polling it into the panic's message.
async fn caught<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = pin!(future);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned()))),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, StoreFuture};

    /// A store that breaks the contract in one place: it lists documents in reverse order.
    #[derive(Default)]
    struct Unsorted(MemoryStore);

    impl Store for Unsorted {
        fn load<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, StoredDoc> {
            Store::load(&self.0, doc)
        }
        fn append(&self, batch: Arc<[StoredUpdate]>) -> StoreFuture<'_, Vec<Appended>> {
            Store::append(&self.0, batch)
        }
        fn compact<'a>(
            &'a self,
            doc: &'a DocName,
            snapshot: Vec<u8>,
            upto: Seq,
        ) -> StoreFuture<'a, ()> {
            Store::compact(&self.0, doc, snapshot, upto)
        }
        fn delete<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, ()> {
            Store::delete(&self.0, doc)
        }
        fn list(&self) -> StoreFuture<'_, Vec<DocInfo>> {
            let mut listed = self.0.list();
            if let Ok(listed) = &mut listed {
                listed.reverse();
            }
            Box::pin(std::future::ready(listed))
        }
        fn log_from<'a>(&'a self, doc: &'a DocName, from: Seq) -> StoreFuture<'a, LogTail> {
            Store::log_from(&self.0, doc, from)
        }
    }

    #[tokio::test]
    async fn a_store_that_breaks_the_contract_fails_every_check_it_breaks() {
        let failure = caught(run_all(Unsorted::default)).await.unwrap_err();
        let failed: Vec<&str> = CHECKS
            .into_iter()
            .filter(|check| failure.contains(&format!("\n{check}: ")))
            .collect();
        assert_eq!(
            failed,
            [
                "list_is_sorted_by_name_with_sizes",
                "compaction_replaces_the_covered_prefix",
                "random_operations_match_a_reference_model",
            ],
            "{failure}"
        );
        assert!(
            failure.starts_with("3 of 17 store conformance checks failed"),
            "{failure}"
        );
    }

    #[test]
    fn every_check_has_a_unique_name() {
        let mut names = CHECKS.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CHECKS.len());
    }
}
