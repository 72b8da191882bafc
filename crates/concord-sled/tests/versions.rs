//! What only `SledStore`'s version history has, beyond the conformance check every backend
//! runs: versions and their ids outlive the process, listings count them from the summary
//! record, deletion leaves no key or file behind, large snapshots live in files, and the files
//! a crash can leave are removed at open.

use std::path::Path;

use concord_core::conformance::{name, update};
use concord_core::{NewVersion, Position, StoreError, VersionInfo};
use concord_sled::SledStore;

fn version(snapshot: Vec<u8>, at: u64, label: Option<&str>) -> NewVersion {
    NewVersion {
        snapshot,
        created_at_ms: at,
        position: Position { seq: at, index: 3 },
        label: label.map(str::to_owned),
    }
}

fn ids(versions: &[VersionInfo]) -> Vec<u64> {
    versions.iter().map(|v| v.id).collect()
}

/// The files in the store's `versions/` directory, sorted.
fn version_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir.join("versions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    files
}

/// Keys in the store's sled tree starting with `tag`.
fn keys_tagged(store: &SledStore, tag: u8) -> usize {
    store.raw_tree().scan_prefix([tag]).count()
}

/// Deterministic bytes that do not compress or repeat.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn versions_survive_reopening_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let doc = name("doc");
    let saved = {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(&[update("doc", &[1, 2])]).unwrap();
        let saved: Vec<VersionInfo> = (1..=3u8)
            .map(|i| {
                let label = (i == 2).then_some("named");
                store
                    .save_version(&doc, &version(vec![i; i.into()], i.into(), label))
                    .unwrap()
            })
            .collect();
        assert_eq!(ids(&saved), vec![1, 2, 3]);
        saved
    };
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.versions(&doc).unwrap(), saved);
    assert_eq!(
        store.versions(&doc).unwrap()[1].label.as_deref(),
        Some("named")
    );
    assert_eq!(
        store.versions(&doc).unwrap()[1].position,
        Position { seq: 2, index: 3 }
    );
    assert_eq!(store.version(&doc, 3).unwrap(), Some(vec![3, 3, 3]));
    assert_eq!(store.load(&doc).unwrap().updates, vec![vec![1, 2]]);

    // The newest is deleted: its id is still not handed out again, even after reopening.
    assert_eq!(store.delete_versions(&doc, &[3, 1, 3, 7]).unwrap(), 2);
    assert_eq!(store.version(&doc, 3).unwrap(), None);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(ids(&store.versions(&doc).unwrap()), vec![2]);
    let fourth = store
        .save_version(&doc, &version(vec![4], 4, None))
        .unwrap();
    assert_eq!(fourth.id, 4);

    // All of them deleted: the counter outlives them.
    assert_eq!(store.delete_versions(&doc, &[2, 4]).unwrap(), 2);
    assert_eq!(store.versions(&doc).unwrap(), vec![]);
    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store
            .save_version(&doc, &version(vec![5], 5, None))
            .unwrap()
            .id,
        5
    );

    // A document deleted and created again starts over: it is another document.
    store.delete(&doc).unwrap();
    assert_eq!(
        store
            .save_version(&doc, &version(vec![6], 6, None))
            .unwrap()
            .id,
        1
    );
}

#[test]
fn listings_count_versions_and_history_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store
        .append(&[update("edited", &[1]), update("plain", &[2])])
        .unwrap();
    let (edited, only) = (name("edited"), name("only-versions"));
    store
        .save_version(&edited, &version(vec![0; 10], 1, None))
        .unwrap();
    store
        .save_version(&edited, &version(vec![0; 32], 2, Some("v2")))
        .unwrap();
    store
        .save_version(&only, &version(vec![0; 7], 3, None))
        .unwrap();
    let counts = |store: &SledStore| {
        store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| (i.name.as_str().to_owned(), i.versions, i.history_bytes))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        ("edited".to_owned(), 2, 42),
        ("only-versions".to_owned(), 1, 7),
        ("plain".to_owned(), 0, 0),
    ];
    assert_eq!(counts(&store), expected);
    // A document that only has versions exists, with nothing else stored.
    let info = store.list().unwrap().remove(1);
    assert_eq!((info.snapshot_bytes, info.log_entries), (0, 0));
    assert_eq!(store.load(&only).unwrap().updates, Vec::<Vec<u8>>::new());

    drop(store);
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(counts(&store), expected, "after reopening");

    assert_eq!(store.delete_versions(&edited, &[1]).unwrap(), 1);
    assert_eq!(store.delete_versions(&edited, &[1, 9]).unwrap(), 0);
    assert_eq!(store.delete_versions(&name("unknown"), &[1]).unwrap(), 0);
    assert_eq!(store.delete_versions(&edited, &[]).unwrap(), 0);
    assert_eq!(counts(&store)[0], ("edited".to_owned(), 1, 32));
    // Compaction and appends leave the history alone.
    store.compact(&edited, &[5, 5], 1).unwrap();
    store.append(&[update("edited", &[3])]).unwrap();
    assert_eq!(counts(&store)[0], ("edited".to_owned(), 1, 32));
    assert_eq!(ids(&store.versions(&edited).unwrap()), vec![2]);
}

#[test]
fn deleting_a_document_removes_its_version_keys_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let (a, b) = (name("a"), name("b"));
    store.append(&[update("a", &[1])]).unwrap();
    for i in 0..3u8 {
        store.save_version(&a, &version(vec![i], 1, None)).unwrap();
    }
    store.save_version(&b, &version(vec![9], 1, None)).unwrap();
    assert_eq!(version_files(dir.path()).len(), 4);
    assert_eq!(keys_tagged(&store, b'v'), 4);
    assert_eq!(keys_tagged(&store, b'h'), 2);

    store.delete(&a).unwrap();
    assert_eq!(store.versions(&a).unwrap(), vec![]);
    assert_eq!(store.version(&a, 1).unwrap(), None);
    assert_eq!(keys_tagged(&store, b'v'), 1, "only b's version is left");
    assert_eq!(keys_tagged(&store, b'h'), 1);
    assert_eq!(version_files(dir.path()).len(), 1);
    assert_eq!(store.version(&b, 1).unwrap(), Some(vec![9]));

    store.delete(&b).unwrap();
    assert_eq!(keys_tagged(&store, b'v'), 0);
    assert_eq!(keys_tagged(&store, b'h'), 0);
    assert_eq!(version_files(dir.path()), Vec::<String>::new());
    assert_eq!(store.list().unwrap(), vec![]);
    // Only the two store records remain.
    assert_eq!(store.raw_tree().len(), 2);
}

#[test]
fn a_large_version_round_trips_exactly_and_lives_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let doc = name("big");
    let snapshot = noise(4 * 1024 * 1024);
    {
        let store = SledStore::open(dir.path()).unwrap();
        let info = store
            .save_version(&doc, &version(snapshot.clone(), 1, Some("big")))
            .unwrap();
        assert_eq!(info.bytes, snapshot.len() as u64);
        assert_eq!(
            store.version(&doc, info.id).unwrap().as_deref(),
            Some(&snapshot[..])
        );
        // The metadata in sled is small; the bytes are in the version file.
        let (_, meta) = store.raw_tree().scan_prefix(b"v").next().unwrap().unwrap();
        assert!(meta.len() < 100, "{} bytes of metadata", meta.len());
        let files = version_files(dir.path());
        assert_eq!(files.len(), 1);
        let size = std::fs::metadata(dir.path().join("versions").join(&files[0]))
            .unwrap()
            .len();
        assert!(size >= snapshot.len() as u64 && size <= snapshot.len() as u64 + 32);
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.version(&doc, 1).unwrap().as_deref(),
        Some(&snapshot[..])
    );
    assert_eq!(
        store.list().unwrap()[0].history_bytes,
        snapshot.len() as u64
    );
}

/// A crash in `save_version` after its file is written but before its metadata is, or in
/// `delete_versions` after the metadata is gone but before the file is, leaves a file that
/// nothing refers to: never listed, and removed when the store opens.
#[test]
fn version_files_nothing_refers_to_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let doc = name("doc");
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .save_version(&doc, &version(vec![1], 1, None))
            .unwrap();
    }
    let versions = dir.path().join("versions");
    let kept = version_files(dir.path()).remove(0);
    assert_eq!(kept, "0000000000000001-0000000000000001.snap");
    // What the crashes leave: a finished file without metadata, and an unfinished one.
    let orphan = "0000000000000001-0000000000000002.snap";
    std::fs::copy(versions.join(&kept), versions.join(orphan)).unwrap();
    std::fs::write(
        versions.join("0000000000000001-0000000000000003.0.tmp"),
        b"x",
    )
    .unwrap();

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(version_files(dir.path()), vec![kept]);
    assert_eq!(ids(&store.versions(&doc).unwrap()), vec![1]);
    assert_eq!(store.version(&doc, 2).unwrap(), None);
    // The next id is the one the metadata says, and its file is written afresh.
    let next = store
        .save_version(&doc, &version(vec![2], 2, None))
        .unwrap();
    assert_eq!(next.id, 2);
    assert_eq!(store.version(&doc, 2).unwrap(), Some(vec![2]));
}

#[test]
fn damaged_version_metadata_is_skipped_and_a_missing_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let doc = name("doc");
    let store = SledStore::open(dir.path()).unwrap();
    for i in 1..=3u8 {
        store
            .save_version(&doc, &version(vec![i], 1, None))
            .unwrap();
    }
    let key = store
        .raw_tree()
        .scan_prefix(b"v")
        .keys()
        .nth(1)
        .unwrap()
        .unwrap();
    let mut value = store.raw_tree().get(&key).unwrap().unwrap().to_vec();
    *value.last_mut().unwrap() ^= 0xff;
    store.raw_tree().insert(&key, value).unwrap();
    assert_eq!(ids(&store.versions(&doc).unwrap()), vec![1, 3]);
    // Its id is still taken, and deleting it works.
    assert_eq!(
        store
            .save_version(&doc, &version(vec![4], 1, None))
            .unwrap()
            .id,
        4
    );
    assert_eq!(store.list().unwrap()[0].versions, 3, "the readable ones");
    assert_eq!(store.delete_versions(&doc, &[2]).unwrap(), 1);
    assert_eq!(store.list().unwrap()[0].versions, 3);

    std::fs::remove_file(
        dir.path()
            .join("versions")
            .join("0000000000000001-0000000000000003.snap"),
    )
    .unwrap();
    match store.version(&doc, 3) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("missing"), "{why}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.version(&doc, 1).unwrap(), Some(vec![1]));
}
