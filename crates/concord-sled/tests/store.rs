//! What only `SledStore` has, beyond the `Store` contract that tests/conformance.rs checks: its
//! log keys (one per document per batch, removed by compaction and deletion), real listing
//! timestamps, reopening, format and layout checks, and its directory lock.

use concord_core::StoreError;
use concord_core::conformance::{name, update};
use concord_sled::{SledOptions, SledStore};

/// Number of log entry keys in the store.
fn log_keys(store: &SledStore) -> usize {
    store.raw_tree().scan_prefix(b"l").count()
}

#[test]
fn one_log_key_per_document_per_batch_and_compaction_removes_the_covered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store
        .append(&[
            update("b", &[1]),
            update("a", &[2]),
            update("b", &[3, 4]),
            update("b", &[]),
        ])
        .unwrap();
    // Two documents in the batch: two entries, whatever the number of updates.
    assert_eq!(log_keys(&store), 2);
    store.append(&[update("b", &[5])]).unwrap();
    assert_eq!(log_keys(&store), 3);
    assert_eq!(store.append(&[]).unwrap(), vec![]);
    assert_eq!(log_keys(&store), 3, "an empty batch writes no entry");

    store.append(&[update("b", &[6])]).unwrap();
    store.compact(&name("b"), &[9, 9], 2).unwrap();
    assert_eq!(
        log_keys(&store),
        2,
        "b's entries 1 and 2 are gone, 3 and a's stay"
    );
    store.compact(&name("b"), &[8], 3).unwrap();
    assert_eq!(log_keys(&store), 1, "only a's entry is left");
    assert_eq!(store.corrupt_entries_seen(), 0);
}

#[test]
fn list_reports_real_timestamps_and_delete_removes_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store
        .append(&[update("zeta", &[1, 2]), update("alpha", &[3])])
        .unwrap();
    store.append(&[update("zeta", &[4, 5, 6])]).unwrap();
    store.append(&[update("mid", &[7])]).unwrap();
    store.compact(&name("mid"), &[0; 10], 1).unwrap();
    store.append(&[update("mid", &[8, 8])]).unwrap();
    for info in store.list().unwrap() {
        assert!(
            info.updated_at_ms > 1_600_000_000_000,
            "{}: a real timestamp",
            info.name
        );
    }

    store.delete(&name("mid")).unwrap();
    store.delete(&name("zeta")).unwrap();
    store.delete(&name("unknown")).unwrap();
    // Only alpha's log entry, its metadata and the two store records remain.
    let keys: Vec<Vec<u8>> = store
        .raw_tree()
        .iter()
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(!keys.iter().any(|k| k[0] == b's'));
    assert!(
        std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .next()
            .is_none(),
        "mid's snapshot file is removed with it"
    );
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
