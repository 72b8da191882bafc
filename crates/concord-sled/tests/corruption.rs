//! Damaged records: a corrupt log entry is skipped, counted and logged while the rest of the
//! document loads; a corrupt snapshot or metadata is an error naming the document; nothing
//! panics.

use std::path::Path;

use concord_core::StoreError;
use concord_core::conformance::{name, update};
use concord_sled::SledStore;

/// `b"l" + id + seq`, as the crate documents. "doc" is the first document created (id 1).
fn log_key(id: u64, seq: u64) -> Vec<u8> {
    let mut key = b"l".to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Document "doc" with entries 1, 2, 3 holding updates [1], [2], [3]; "other" with one entry.
fn populate(path: &Path) {
    let store = SledStore::open(path).unwrap();
    store
        .append(&[update("doc", &[1]), update("other", &[9])])
        .unwrap();
    store.append(&[update("doc", &[2])]).unwrap();
    store.append(&[update("doc", &[3])]).unwrap();
}

/// Rewrites the value under `key` through the sled API, with the store closed afterwards.
fn damage(path: &Path, key: &[u8], f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let store = SledStore::open(path).unwrap();
    let tree = store.raw_tree();
    let value = tree.get(key).unwrap().expect("the key exists").to_vec();
    tree.insert(key, f(value)).unwrap();
    tree.flush().unwrap();
}

/// Rewrites the snapshot file of document `doc`, with the store closed afterwards.
fn damage_snapshot(path: &Path, doc: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let store = SledStore::open(path).unwrap();
    let file = store
        .snapshot_file(&name(doc))
        .unwrap()
        .expect("the snapshot exists");
    let value = std::fs::read(&file).unwrap();
    std::fs::write(&file, f(value)).unwrap();
}

/// A record with a valid header and checksum around `payload`.
fn sealed(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_corrupt_log_entry_is_skipped_counted_and_the_rest_loads() {
    type Damage = fn(Vec<u8>) -> Vec<u8>;
    let cases: [(&str, Damage); 8] = [
        ("flipped payload byte", |mut v| {
            *v.last_mut().unwrap() ^= 0x55;
            v
        }),
        ("flipped checksum byte", |mut v| {
            v[2] ^= 1;
            v
        }),
        ("truncated to 3 bytes", |v| v[..3].to_vec()),
        ("last byte cut", |v| v[..v.len() - 1].to_vec()),
        ("newer format version", |mut v| {
            v[0] = 2;
            v
        }),
        ("garbage", |_| {
            b"this is not a Concord record, not at all".to_vec()
        }),
        ("empty", |_| Vec::new()),
        // Checksum fine, but the payload claims an entry of 2^40 updates.
        ("valid checksum, absurd length", |_| {
            let mut payload = vec![253];
            payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
            sealed(&payload)
        }),
    ];
    for (case, f) in cases {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path());
        damage(dir.path(), &log_key(1, 2), f);

        let store = SledStore::open(dir.path()).unwrap();
        let loaded = store.load(&name("doc")).unwrap();
        assert_eq!(loaded.updates, vec![vec![1], vec![3]], "{case}");
        assert_eq!(loaded.corrupt_entries, 1, "{case}");
        assert_eq!(loaded.last_seq, 3, "{case}");
        assert_eq!(store.corrupt_entries_seen(), 1, "{case}");
        assert_eq!(
            store.load(&name("other")).unwrap().updates,
            vec![vec![9]],
            "{case}"
        );
        assert_eq!(store.list().unwrap().len(), 2, "{case}");

        // The document keeps working, and a compaction past the entry removes it.
        assert_eq!(
            store.append(&[update("doc", &[4])]).unwrap()[0].seq,
            4,
            "{case}"
        );
        store.compact(&name("doc"), &[0], 3).unwrap();
        let loaded = store.load(&name("doc")).unwrap();
        assert_eq!(
            (loaded.updates, loaded.corrupt_entries),
            (vec![vec![4]], 0),
            "{case}"
        );
        assert_eq!(store.corrupt_entries_seen(), 1, "{case}");
    }
}

#[test]
fn a_compaction_that_keeps_a_corrupt_entry_counts_it_in_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    damage(dir.path(), &log_key(1, 2), |_| b"junk".to_vec());
    let store = SledStore::open(dir.path()).unwrap();
    store.compact(&name("doc"), &[0], 1).unwrap();
    assert_eq!(store.corrupt_entries_seen(), 1, "the recount read it");
    let info = store.list().unwrap().remove(0);
    assert_eq!((info.log_entries, info.log_bytes), (2, 1));
    assert_eq!(
        store.append(&[update("doc", &[4])]).unwrap()[0].tail_updates,
        2
    );
}

#[test]
fn a_corrupt_snapshot_fails_the_load_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.compact(&name("doc"), &[7, 7, 7], 2).unwrap();
    }
    damage_snapshot(dir.path(), "doc", |mut v| {
        *v.last_mut().unwrap() ^= 1;
        v
    });
    let store = SledStore::open(dir.path()).unwrap();
    match store.load(&name("doc")) {
        Err(StoreError::Corrupt(why)) => {
            assert!(why.contains("\"doc\""), "{why}");
            assert!(why.contains("snapshot"), "{why}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.load(&name("other")).unwrap().updates, vec![vec![9]]);
    drop(store);

    // Also when the snapshot is cut short, copied from another document, or missing.
    damage_snapshot(dir.path(), "doc", |v| v[..2].to_vec());
    let store = SledStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.load(&name("doc")),
        Err(StoreError::Corrupt(_))
    ));
    store.compact(&name("other"), &[8], 1).unwrap();
    let other = store.snapshot_file(&name("other")).unwrap().unwrap();
    let file = store.snapshot_file(&name("doc")).unwrap().unwrap();
    std::fs::copy(&other, &file).unwrap();
    match store.load(&name("doc")) {
        Err(StoreError::Corrupt(why)) => {
            assert!(why.contains("not the one its name says"), "{why}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    std::fs::remove_file(&file).unwrap();
    match store.load(&name("doc")) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("missing"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.load(&name("other")).unwrap().snapshot, Some(vec![8]));
}

#[test]
fn corrupt_metadata_is_an_error_and_the_document_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    damage(dir.path(), b"ddoc", |mut v| {
        v[5] ^= 0xff;
        v
    });
    let store = SledStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.load(&name("doc")),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.append(&[update("doc", &[4])]),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.compact(&name("doc"), &[0], 1),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(store.list(), Err(StoreError::Corrupt(_))));
    assert_eq!(store.load(&name("other")).unwrap().updates, vec![vec![9]]);

    store.delete(&name("doc")).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    // The name starts afresh with a new id: the orphaned entries never come back.
    assert_eq!(store.append(&[update("doc", &[5])]).unwrap()[0].seq, 1);
    assert_eq!(store.load(&name("doc")).unwrap().updates, vec![vec![5]]);
}

#[test]
fn a_damaged_id_counter_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    damage(dir.path(), b"i", |_| vec![1, 2]);
    assert!(matches!(
        SledStore::open(dir.path()),
        Err(StoreError::Corrupt(_))
    ));
}
