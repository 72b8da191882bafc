//! `SledStore` against the `Store` contract: round trips, the one-entry-per-document-per-batch
//! layout, seqs, tail statistics, listing, deletion, reopening, format checks, and equivalence
//! with the in-memory reference store under a long random sequence of operations.

use concord_core::{Appended, DocInfo, DocName, MemoryStore, StoreError, StoredDoc, StoredUpdate};
use concord_sled::{SledOptions, SledStore};

fn name(s: &str) -> DocName {
    DocName::new(s).unwrap()
}

fn update(doc: &str, bytes: &[u8]) -> StoredUpdate {
    StoredUpdate {
        doc: name(doc),
        update: bytes.to_vec(),
    }
}

/// Number of log entry keys in the store.
fn log_keys(store: &SledStore) -> usize {
    store.raw_tree().scan_prefix(b"l").count()
}

#[test]
fn append_and_load_round_trip_with_one_entry_per_document_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.load(&name("a")).unwrap(), StoredDoc::default());

    let written = store
        .append(&[
            update("b", &[1]),
            update("a", &[2]),
            update("b", &[3, 4]),
            update("b", &[]),
        ])
        .unwrap();
    assert_eq!(
        written,
        vec![
            Appended {
                doc: name("a"),
                seq: 1,
                tail_updates: 1,
                tail_bytes: 1
            },
            Appended {
                doc: name("b"),
                seq: 1,
                tail_updates: 3,
                tail_bytes: 3
            },
        ]
    );
    // Two documents in the batch: two entries, whatever the number of updates.
    assert_eq!(log_keys(&store), 2);

    let written = store.append(&[update("b", &[5])]).unwrap();
    assert_eq!(
        (
            written[0].seq,
            written[0].tail_updates,
            written[0].tail_bytes
        ),
        (2, 4, 4)
    );
    assert_eq!(log_keys(&store), 3);

    let loaded = store.load(&name("b")).unwrap();
    assert_eq!(
        loaded,
        StoredDoc {
            snapshot: None,
            updates: vec![vec![1], vec![3, 4], vec![], vec![5]],
            last_seq: 2,
            position: concord_core::Position { seq: 2, index: 0 },
            corrupt_entries: 0,
        }
    );
    assert_eq!(store.append(&[]).unwrap(), vec![]);
    assert_eq!(store.corrupt_entries_seen(), 0);
}

#[test]
fn seqs_increase_and_are_never_reused_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for i in 1..=3u8 {
        let written = store.append(&[update("d", &[i])]).unwrap();
        assert_eq!(written[0].seq, u64::from(i));
    }
    store.compact(&name("d"), &[9, 9], 2).unwrap();
    assert_eq!(log_keys(&store), 1, "entries 1 and 2 are gone, 3 stays");
    let loaded = store.load(&name("d")).unwrap();
    assert_eq!(loaded.snapshot, Some(vec![9, 9]));
    assert_eq!(loaded.updates, vec![vec![3]]);
    assert_eq!(loaded.last_seq, 3);

    let written = store.append(&[update("d", &[4, 4])]).unwrap();
    assert_eq!(
        (
            written[0].seq,
            written[0].tail_updates,
            written[0].tail_bytes
        ),
        (4, 2, 3),
        "tail stats are recounted after compaction"
    );

    // Compacting everything empties the log; the next entry still gets a fresh seq.
    store.compact(&name("d"), &[8], 4).unwrap();
    let loaded = store.load(&name("d")).unwrap();
    assert_eq!(
        (loaded.snapshot, loaded.updates, loaded.last_seq),
        (Some(vec![8]), vec![], 0)
    );
    assert_eq!(log_keys(&store), 0);
    let written = store.append(&[update("d", &[5])]).unwrap();
    assert_eq!((written[0].seq, written[0].tail_updates), (5, 1));

    // Compacting beyond the last seq moves the next seq past it, as the reference store does.
    store.compact(&name("d"), &[7], 10).unwrap();
    assert_eq!(store.append(&[update("d", &[6])]).unwrap()[0].seq, 11);

    // A compaction of an unknown document creates it with just a snapshot.
    store.compact(&name("new"), &[1, 2, 3], 0).unwrap();
    let loaded = store.load(&name("new")).unwrap();
    assert_eq!(
        (loaded.snapshot, loaded.updates),
        (Some(vec![1, 2, 3]), vec![])
    );
    assert_eq!(store.append(&[update("new", &[1])]).unwrap()[0].seq, 1);
}

#[test]
fn list_reports_sizes_sorted_by_name_and_delete_removes_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store
        .append(&[update("zeta", &[1, 2]), update("alpha", &[3])])
        .unwrap();
    store.append(&[update("zeta", &[4, 5, 6])]).unwrap();
    store.append(&[update("mid", &[7])]).unwrap();
    store.compact(&name("mid"), &[0; 10], 1).unwrap();
    store.append(&[update("mid", &[8, 8])]).unwrap();

    let strip = |infos: Vec<DocInfo>| {
        infos
            .into_iter()
            .map(|i| {
                assert!(i.updated_at_ms > 1_600_000_000_000, "a real timestamp");
                (
                    i.name.to_string(),
                    i.snapshot_bytes,
                    i.log_entries,
                    i.log_bytes,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(store.list().unwrap()),
        vec![
            ("alpha".to_owned(), 0, 1, 1),
            ("mid".to_owned(), 10, 1, 2),
            ("zeta".to_owned(), 0, 2, 5),
        ]
    );

    store.delete(&name("mid")).unwrap();
    store.delete(&name("zeta")).unwrap();
    store.delete(&name("unknown")).unwrap();
    assert_eq!(
        strip(store.list().unwrap()),
        vec![("alpha".to_owned(), 0, 1, 1)]
    );
    assert_eq!(store.load(&name("zeta")).unwrap(), StoredDoc::default());
    // Only alpha's log entry, its metadata and the two store records remain.
    let keys: Vec<Vec<u8>> = store
        .raw_tree()
        .iter()
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(!keys.iter().any(|k| k[0] == b's'));

    // A deleted document starts again from seq 1.
    assert_eq!(store.append(&[update("zeta", &[1])]).unwrap()[0].seq, 1);
    assert_eq!(store.load(&name("zeta")).unwrap().updates, vec![vec![1]]);
}

#[test]
fn reopening_returns_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/store");
    let (before, list_before) = {
        let store = SledStore::open_with(
            &path,
            SledOptions {
                flush_every_ms: None,
                cache_capacity_bytes: 1 << 20,
            },
        )
        .unwrap();
        store
            .append(&[update("a", &[1]), update("b", &[2])])
            .unwrap();
        store.append(&[update("a", &[3])]).unwrap();
        store.compact(&name("a"), &[42], 1).unwrap();
        store.append(&[update("a", &[4])]).unwrap();
        (
            [
                store.load(&name("a")).unwrap(),
                store.load(&name("b")).unwrap(),
            ],
            store.list().unwrap(),
        )
    };
    let store = SledStore::open(&path).unwrap();
    let after = [
        store.load(&name("a")).unwrap(),
        store.load(&name("b")).unwrap(),
    ];
    assert_eq!(before, after);
    assert_eq!(after[0].snapshot, Some(vec![42]));
    assert_eq!(after[0].updates, vec![vec![3], vec![4]]);
    assert_eq!(list_before, store.list().unwrap());
    // The id counter survived too: a new document does not collide with the old ones.
    store.append(&[update("c", &[5])]).unwrap();
    assert_eq!(store.load(&name("a")).unwrap(), before[0]);
    assert_eq!(store.load(&name("c")).unwrap().updates, vec![vec![5]]);
}

#[test]
fn a_store_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Through the store's own handle: opening sled directly right after dropping a store
        // can find the directory still locked for a few milliseconds.
        let store = SledStore::open(dir.path()).unwrap();
        let db = store.raw_tree();
        let record = db.get(b"m").unwrap().unwrap().to_vec();
        assert_eq!(record[0], 1, "record format version 1");
        // The payload is the store format, a bincode varint: 2 today.
        assert_eq!(&record[5..], &[2]);
        db.insert(b"m", sealed(&[3])).unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(dir.path()) {
        Err(StoreError::NewerFormat { found, supported }) => assert_eq!((found, supported), (3, 2)),
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    // A newer record format is reported as newer too, not as damage.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        let mut record = sealed(&[2]);
        record[0] = 2;
        db.insert(b"m", record).unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(dir.path()) {
        Err(StoreError::NewerFormat { found, supported }) => assert_eq!((found, supported), (2, 1)),
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[test]
fn a_store_of_an_older_layout_is_refused_with_a_reason() {
    // Format 1 kept the sled files at the top of the directory.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"m", sealed(&[1])).unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(dir.path()) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("format 1"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Format 1 in the current place.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        db.insert(b"m", sealed(&[1])).unwrap();
        db.flush().unwrap();
    }
    match SledStore::open(dir.path()) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("format 1"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A record with a valid header and checksum around `payload`.
fn sealed(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_database_that_is_not_a_concord_store_is_refused() {
    // Data but no format record; a format record that is not a Concord record; an empty one.
    let cases: [(&[u8], &[u8]); 3] = [
        (b"hello", b"world"),
        (b"m", b"\x01not a record"),
        (b"m", b""),
    ];
    for (key, value) in cases {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("sled")).unwrap();
            db.insert(key, value).unwrap();
            db.flush().unwrap();
        }
        assert!(
            matches!(SledStore::open(dir.path()), Err(StoreError::Corrupt(_))),
            "{key:?} = {value:?}"
        );
    }
}

#[test]
fn a_store_already_open_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _store = SledStore::open(dir.path()).unwrap();
    assert!(matches!(
        SledStore::open(dir.path()),
        Err(StoreError::Backend(_))
    ));
}

/// A tiny deterministic generator: the test must replay identically.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The sled store and the in-memory reference agree on every observable result, through
/// appends, compactions (behind, at and beyond the log), deletions and reopenings.
#[test]
fn behaves_like_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut sled = Some(SledStore::open(dir.path()).unwrap());
    let memory = MemoryStore::new();
    let docs = ["a", "b", "c/d", "é"];
    let mut rng = Lcg(7);
    let mut last_seq = std::collections::HashMap::new();
    for step in 0..600 {
        let store = sled.as_ref().unwrap();
        let doc = docs[rng.below(docs.len() as u64) as usize];
        match rng.below(20) {
            0..=10 => {
                let batch: Vec<StoredUpdate> = (0..=rng.below(5))
                    .map(|_| {
                        let doc = docs[rng.below(docs.len() as u64) as usize];
                        let len = rng.below(6) as usize;
                        update(doc, &vec![step as u8; len])
                    })
                    .collect();
                let written = store.append(&batch).unwrap();
                assert_eq!(written, memory.append(&batch).unwrap(), "step {step}");
                for w in written {
                    last_seq.insert(w.doc.to_string(), w.seq);
                }
            }
            11..=13 => {
                let known = last_seq.get(doc).copied().unwrap_or(0);
                let upto = rng.below(known + 3);
                let snapshot = vec![step as u8; rng.below(4) as usize];
                store.compact(&name(doc), &snapshot, upto).unwrap();
                memory.compact(&name(doc), &snapshot, upto).unwrap();
            }
            14 => {
                store.delete(&name(doc)).unwrap();
                memory.delete(&name(doc)).unwrap();
                last_seq.remove(doc);
            }
            15 => {
                // The old handle must be gone (sled locks its directory) before reopening.
                drop(sled.take());
                sled = Some(SledStore::open(dir.path()).unwrap());
            }
            _ => {
                let strip = |infos: Vec<DocInfo>| {
                    infos
                        .into_iter()
                        .map(|i| (i.name, i.snapshot_bytes, i.log_entries, i.log_bytes))
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    strip(store.list().unwrap()),
                    strip(memory.list().unwrap()),
                    "step {step}"
                );
            }
        }
        let store = sled.as_ref().unwrap();
        let from = rng.below(last_seq.get(doc).copied().unwrap_or(0) + 3);
        assert_eq!(
            store.log_from(&name(doc), from).unwrap(),
            memory.log_from(&name(doc), from).unwrap(),
            "step {step}: log_from({from})"
        );
        let store = sled.as_ref().unwrap();
        assert_eq!(
            store.load(&name(doc)).unwrap(),
            memory.load(&name(doc)).unwrap(),
            "step {step}, doc {doc}"
        );
    }
}
