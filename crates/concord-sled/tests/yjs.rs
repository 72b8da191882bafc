//! `SledStore` with real Yjs data: snapshots and updates made by yrs rebuild the document after
//! compaction, a half-done compaction, reopening, and concurrent appends and compactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use concord_core::conformance::{name, update};
use concord_core::{StoredDoc, StoredUpdate};
use concord_sled::{CompactCrash, SledStore};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Doc, GetString, Map, MapRef, ReadTxn, StateVector, Text, TextRef, Transact, Update,
};

fn updates_of(doc: &str, updates: &[Vec<u8>]) -> Vec<StoredUpdate> {
    updates.iter().map(|u| update(doc, u)).collect()
}

/// A document edited one transaction at a time, and the v1 update of each transaction.
struct Source {
    doc: Doc,
    text: TextRef,
    map: MapRef,
    updates: Vec<Vec<u8>>,
}

impl Source {
    fn new() -> Self {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        Source {
            doc,
            text,
            map,
            updates: Vec::new(),
        }
    }

    /// Edit `i`: a text insertion (sometimes a deletion too) and a map write.
    fn edit(&mut self, i: u32) {
        let mut txn = self.doc.transact_mut();
        let len = self.text.len(&txn);
        let at = i.wrapping_mul(7919) % (len + 1);
        self.text.insert(&mut txn, at, &format!("<{i}>"));
        if i % 5 == 4 && len > 3 {
            self.text.remove_range(&mut txn, at / 2, 2);
        }
        self.map
            .insert(&mut txn, format!("key{}", i % 13), i64::from(i));
        self.map
            .insert(&mut txn, format!("unique{i}"), format!("value {i}"));
        self.updates.push(txn.encode_update_v1());
    }

    fn content(&self) -> (String, Any) {
        content(&self.doc)
    }
}

fn content(doc: &Doc) -> (String, Any) {
    let text = doc.get_or_insert_text("text");
    let map = doc.get_or_insert_map("map");
    let txn = doc.transact();
    (text.get_string(&txn), map.to_json(&txn))
}

/// Applies a stored document to an empty yrs document, as the server does on load.
fn rebuild(stored: &StoredDoc) -> Doc {
    let doc = Doc::with_client_id(99);
    {
        let mut txn = doc.transact_mut();
        if let Some(snapshot) = &stored.snapshot {
            txn.apply_update(Update::decode_v2(snapshot).unwrap())
                .unwrap();
        }
        for update in &stored.updates {
            txn.apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
        assert!(!txn.has_missing_updates(), "the stored log has a hole");
    }
    doc
}

fn snapshot_of(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v2(&StateVector::default())
}

#[test]
fn yjs_documents_survive_compaction_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = Source::new();
    for i in 0..200 {
        source.edit(i);
    }
    let mut other = Source::new();
    for i in 0..20 {
        other.edit(i);
    }

    {
        let store = SledStore::open(dir.path()).unwrap();
        // Ten batches of ten updates, each batch also carrying one update of another document.
        for (n, chunk) in source.updates[..100].chunks(10).enumerate() {
            let mut batch = updates_of("notes", chunk);
            batch.extend(updates_of("other", &other.updates[n..=n]));
            let written = store.append(&batch).unwrap();
            assert_eq!(written.len(), 2);
        }
        let before = store.load(&name("notes")).unwrap();
        assert_eq!((before.last_seq, before.updates.len()), (10, 100));
        let rebuilt = rebuild(&before);
        let state_before = (content(&rebuilt), rebuilt.transact().state_vector());

        store
            .compact(&name("notes"), &snapshot_of(&rebuilt), before.last_seq)
            .unwrap();
        let after = store.load(&name("notes")).unwrap();
        assert!(after.snapshot.is_some());
        assert_eq!((after.updates.len(), after.last_seq), (0, 0));
        let rebuilt = rebuild(&after);
        assert_eq!(
            (content(&rebuilt), rebuilt.transact().state_vector()),
            state_before,
            "compaction changed the document"
        );

        for chunk in source.updates[100..].chunks(25) {
            store.append(&updates_of("notes", chunk)).unwrap();
        }
        store
            .append(&updates_of("other", &other.updates[10..]))
            .unwrap();
    }

    let store = SledStore::open(dir.path()).unwrap();
    let loaded = store.load(&name("notes")).unwrap();
    assert_eq!((loaded.last_seq, loaded.updates.len()), (14, 100));
    assert_eq!(loaded.corrupt_entries, 0);
    let rebuilt = rebuild(&loaded);
    assert_eq!(content(&rebuilt), source.content());
    assert_eq!(
        rebuilt.transact().state_vector(),
        source.doc.transact().state_vector()
    );
    assert_eq!(
        content(&rebuild(&store.load(&name("other")).unwrap())),
        other.content()
    );
}

/// What a crash between writing a snapshot and deleting the log it covers would leave: the
/// covered entries are ignored, the later ones applied, and a real compaction cleans up.
#[test]
fn a_half_done_compaction_still_loads_every_update_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let doc = name("doc");
    let mut source = Source::new();
    for i in 0..30 {
        source.edit(i);
    }
    // The snapshot covers edits 0..20, i.e. entries 1..=20 (one edit per batch).
    let mut covered = Source::new();
    for i in 0..20 {
        covered.edit(i);
    }
    {
        let store = SledStore::open(dir.path()).unwrap();
        for update in &source.updates {
            store
                .append(&updates_of("doc", std::slice::from_ref(update)))
                .unwrap();
        }
        store
            .compact_interrupted(
                &doc,
                &snapshot_of(&covered.doc),
                20,
                CompactCrash::KeepCoveredEntries,
            )
            .unwrap();
    }

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.raw_tree().scan_prefix(b"l").count(),
        30,
        "the covered entries are still on disk"
    );
    let loaded = store.load(&doc).unwrap();
    assert_eq!(
        loaded.updates,
        source.updates[20..].to_vec(),
        "only entries 21..=30"
    );
    assert_eq!(loaded.last_seq, 30);
    assert_eq!(content(&rebuild(&loaded)), source.content());
    let info = store.list().unwrap().remove(0);
    assert_eq!(
        info.log_entries, 10,
        "tail stats count only the entries after the snapshot"
    );

    source.edit(30);
    let written = store
        .append(&updates_of("doc", &source.updates[30..]))
        .unwrap();
    assert_eq!((written[0].seq, written[0].tail_updates), (31, 11));

    let loaded = store.load(&doc).unwrap();
    let rebuilt = rebuild(&loaded);
    store
        .compact(&doc, &snapshot_of(&rebuilt), loaded.last_seq)
        .unwrap();
    assert_eq!(store.raw_tree().scan_prefix(b"l").count(), 0);
    let loaded = store.load(&doc).unwrap();
    assert_eq!(loaded.updates.len(), 0);
    assert_eq!(content(&rebuild(&loaded)), source.content());
}

/// Snapshot files in the store's `snapshots/` directory.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    files
}

/// A crash after the new snapshot file is written but before the metadata points at it, and a
/// crash after the compaction but before the old snapshot file is removed: either way every
/// update loads exactly once, and the next open removes the file nobody refers to.
#[test]
fn a_crash_at_either_end_of_a_compaction_loses_nothing_and_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let doc = name("doc");
    let mut source = Source::new();
    for i in 0..30 {
        source.edit(i);
    }
    let prefix = |n: usize| {
        let mut covered = Source::new();
        for i in 0..n {
            covered.edit(i as u32);
        }
        snapshot_of(&covered.doc)
    };
    {
        let store = SledStore::open(dir.path()).unwrap();
        for update in &source.updates {
            store
                .append(&updates_of("doc", std::slice::from_ref(update)))
                .unwrap();
        }
        store.compact(&doc, &prefix(10), 10).unwrap();
        store
            .compact_interrupted(&doc, &prefix(20), 20, CompactCrash::AfterSnapshotFile)
            .unwrap();
    }
    assert_eq!(snapshot_files(dir.path()).len(), 2, "the new file is there");
    {
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            snapshot_files(dir.path()),
            vec!["0000000000000001-000000000000000a.snap".to_owned()],
            "the unreferenced new file is gone, the current one stays"
        );
        let loaded = store.load(&doc).unwrap();
        assert_eq!(loaded.updates, source.updates[10..].to_vec());
        assert_eq!(content(&rebuild(&loaded)), source.content());

        store
            .compact_interrupted(
                &doc,
                &prefix(20),
                20,
                CompactCrash::BeforeOldSnapshotRemoval,
            )
            .unwrap();
        let loaded = store.load(&doc).unwrap();
        assert_eq!(loaded.updates, source.updates[20..].to_vec());
        assert_eq!(content(&rebuild(&loaded)), source.content());
    }
    assert_eq!(snapshot_files(dir.path()).len(), 2, "the old file is there");
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        vec!["0000000000000001-0000000000000014.snap".to_owned()]
    );
    let loaded = store.load(&doc).unwrap();
    assert_eq!(loaded.updates, source.updates[20..].to_vec());
    assert_eq!(content(&rebuild(&loaded)), source.content());

    // A completed compaction and a deletion leave no file behind, without a reopen.
    let rebuilt = rebuild(&loaded);
    store
        .compact(&doc, &snapshot_of(&rebuilt), loaded.last_seq)
        .unwrap();
    assert_eq!(
        snapshot_files(dir.path()),
        vec!["0000000000000001-000000000000001e.snap".to_owned()]
    );
    store.delete(&doc).unwrap();
    assert!(snapshot_files(dir.path()).is_empty());
}

/// One thread appends small, distinct updates while another keeps compacting the same
/// document from what it loads: every load is complete (no hole), and the final document holds
/// every update.
#[test]
fn concurrent_appends_and_compactions_lose_nothing() {
    const EDITS: u32 = 400;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let mut source = Source::new();
    for i in 0..EDITS {
        source.edit(i);
    }
    let updates = source.updates.clone();
    let done = Arc::new(AtomicBool::new(false));
    // Compactions finished so far: every 50 updates the writer waits for one more, so the two
    // threads interleave however fast appends are.
    let finished = Arc::new(std::sync::atomic::AtomicU32::new(0));

    let writer = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let mut i = 0;
            let mut size = 1;
            let mut next_wait = 50;
            while i < updates.len() {
                if i >= next_wait {
                    next_wait += 50;
                    let seen = finished.load(Ordering::SeqCst);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while finished.load(Ordering::SeqCst) == seen {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "no compaction finished in 30 s"
                        );
                        std::thread::yield_now();
                    }
                }
                let end = (i + size).min(updates.len());
                let mut batch = updates_of("shared", &updates[i..end]);
                batch.extend(updates_of("bystander", &updates[i..i + 1]));
                store.append(&batch).unwrap();
                i = end;
                size = size % 3 + 1;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let compactor = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let doc = name("shared");
            let mut compactions = 0;
            // Compactions that found new entries while the writer was still running: the
            // interleavings this test is about.
            let mut overlapping = 0;
            while !done.load(Ordering::SeqCst) || compactions < 3 {
                let loaded = store.load(&doc).unwrap();
                if !loaded.updates.is_empty() && !done.load(Ordering::SeqCst) {
                    overlapping += 1;
                }
                let rebuilt = rebuild(&loaded);
                store
                    .compact(&doc, &snapshot_of(&rebuilt), loaded.last_seq)
                    .unwrap();
                compactions += 1;
                finished.fetch_add(1, Ordering::SeqCst);
            }
            (compactions, overlapping)
        })
    };
    writer.join().unwrap();
    let (compactions, overlapping) = compactor.join().unwrap();
    eprintln!("{compactions} compactions, {overlapping} during appends");
    assert!(overlapping >= 2, "the threads did not overlap");

    let loaded = store.load(&name("shared")).unwrap();
    assert_eq!(loaded.corrupt_entries, 0);
    assert_eq!(content(&rebuild(&loaded)), source.content());
    // The tail stats are still exact after all those compactions.
    let tail_updates = loaded.updates.len() as u64;
    let tail_bytes: u64 = loaded.updates.iter().map(|u| u.len() as u64).sum();
    let info = store
        .list()
        .unwrap()
        .into_iter()
        .find(|i| i.name.as_str() == "shared")
        .unwrap();
    assert_eq!(info.log_bytes, tail_bytes);
    let written = store
        .append(&updates_of("shared", &source.updates[..1]))
        .unwrap();
    assert_eq!(written[0].tail_updates, tail_updates + 1);
    assert_eq!(
        written[0].tail_bytes,
        tail_bytes + source.updates[0].len() as u64
    );
    drop(store);

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        content(&rebuild(&store.load(&name("shared")).unwrap())),
        source.content()
    );
    let bystander = store.load(&name("bystander")).unwrap();
    assert_eq!(bystander.snapshot, None);
    assert_eq!(bystander.updates.len() as u64, bystander.last_seq);
    assert!(bystander.last_seq > 100);
}
