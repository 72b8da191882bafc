//! The journal that makes an `append` survive a killed process without a sled flush: what a
//! crash leaves is replayed at the next open, exactly once, and never brings back a deleted
//! document.
//!
//! A crash is imitated by copying the store's directory while the store is open, with sled's
//! background flush off: the copy holds what sled had written by then (the state of its last
//! flush) and the journal as the kernel holds it, which is what a killed process leaves on
//! disk. `tests/durability` does the same with a real SIGKILL.

use std::path::Path;

use concord_core::conformance::{name, update};
use concord_core::{DocName, StoredDoc};
use concord_sled::{SledOptions, SledStore};

/// sled never writes on its own: only the store's own flushes reach its files.
fn no_background_flush() -> SledOptions {
    SledOptions {
        flush_every_ms: None,
        ..SledOptions::default()
    }
}

fn open(dir: &Path) -> SledStore {
    SledStore::open_with(dir, no_background_flush()).unwrap()
}

/// Copies the store directory `from` into a new temporary directory, leaving out the journal
/// when `journal` is false.
fn crash_image(from: &Path, journal: bool) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    copy_dir(from, to.path(), journal);
    to
}

fn copy_dir(from: &Path, to: &Path, journal: bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() == "journal" && !journal {
                continue;
            }
            copy_dir(&entry.path(), &target, journal);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The one journal file a crash image of a store holds.
fn only_journal_file(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one journal file: {files:?}");
    files.remove(0)
}

fn journal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("journal"))
        .map(|files| files.count())
        .unwrap_or(0)
}

fn updates(store: &SledStore, doc: &str) -> Vec<Vec<u8>> {
    let loaded: StoredDoc = store.load(&name(doc)).unwrap();
    assert_eq!(loaded.corrupt_entries, 0);
    loaded.updates
}

#[test]
fn appends_survive_a_crash_through_the_journal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..30u8 {
        store
            .append(&[
                update("a", &[i]),
                update("b", &[i, i]),
                update("a", &[i, 0]),
            ])
            .unwrap();
    }
    let with_journal = crash_image(dir.path(), true);
    let without_journal = crash_image(dir.path(), false);
    drop(store);

    let expected_a: Vec<Vec<u8>> = (0..30u8).flat_map(|i| [vec![i], vec![i, 0]]).collect();
    let expected_b: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i, i]).collect();
    // Without the journal, sled alone has not written them: the journal is what keeps them.
    let sled_alone = open(without_journal.path());
    assert!(
        updates(&sled_alone, "a").len() < expected_a.len(),
        "sled had written the appends by itself: this test would prove nothing"
    );
    drop(sled_alone);

    let recovered = open(with_journal.path());
    assert_eq!(updates(&recovered, "a"), expected_a);
    assert_eq!(updates(&recovered, "b"), expected_b);
    // Seqs go on after the replayed ones, and the replay is not repeated at the next open.
    recovered.append(&[update("a", &[99])]).unwrap();
    drop(recovered);
    let reopened = open(with_journal.path());
    assert_eq!(updates(&reopened, "a").len(), expected_a.len() + 1);
    assert_eq!(updates(&reopened, "a").last().unwrap(), &vec![99]);
    let logged = reopened.log_from(&name("a"), 0).unwrap();
    let seqs: Vec<u64> = logged.entries.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=31).collect::<Vec<u64>>(),
        "one entry per batch, in order"
    );
}

#[test]
fn an_orderly_close_leaves_no_journal_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(&[update("a", &[1])]).unwrap();
    assert_eq!(journal_files(dir.path()), 1);
    drop(store);
    assert_eq!(
        journal_files(dir.path()),
        0,
        "the close checkpointed the journal"
    );
    // What it held is in sled: a copy without any journal has it.
    let image = crash_image(dir.path(), false);
    assert_eq!(updates(&open(image.path()), "a"), vec![vec![1]]);
}

#[test]
fn replay_never_brings_back_a_deleted_document() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(&[update("gone", &[1])]).unwrap();
    store.append(&[update("again", &[1])]).unwrap();
    store.delete(&name("gone")).unwrap();
    store.delete(&name("again")).unwrap();
    // "again" comes back as a new document after its deletion.
    store.append(&[update("again", &[2])]).unwrap();
    let image = crash_image(dir.path(), true);
    drop(store);

    let recovered = open(image.path());
    assert!(
        updates(&recovered, "gone").is_empty(),
        "a deleted document stays deleted"
    );
    assert_eq!(
        updates(&recovered, "again"),
        vec![vec![2]],
        "only what was written after the deletion"
    );
    let names: Vec<DocName> = recovered
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec![name("again")]);
}

#[test]
fn entries_a_compaction_covered_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..5u8 {
        store.append(&[update("doc", &[i])]).unwrap();
    }
    store.compact(&name("doc"), b"snapshot", 3).unwrap();
    store.append(&[update("doc", &[5])]).unwrap();
    let image = crash_image(dir.path(), true);
    drop(store);

    let recovered = open(image.path());
    let loaded = recovered.load(&name("doc")).unwrap();
    assert_eq!(loaded.snapshot.as_deref(), Some(&b"snapshot"[..]));
    assert_eq!(loaded.updates, vec![vec![3], vec![4], vec![5]]);
}

#[test]
fn a_torn_journal_frame_keeps_the_frames_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..3u8 {
        store.append(&[update("doc", &[i; 40])]).unwrap();
    }
    let image = crash_image(dir.path(), true);
    drop(store);
    // What a power loss in the middle of the last write leaves: its frame cut short.
    let journal = only_journal_file(image.path());
    let len = std::fs::metadata(&journal).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let recovered = open(image.path());
    assert_eq!(updates(&recovered, "doc"), vec![vec![0; 40], vec![1; 40]]);
    // The store goes on from there.
    recovered.append(&[update("doc", &[7])]).unwrap();
    assert_eq!(updates(&recovered, "doc").len(), 3);
}

#[test]
fn a_damaged_journal_frame_is_not_replayed_and_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(&[update("doc", &[1; 40])]).unwrap();
    store.append(&[update("doc", &[2; 40])]).unwrap();
    let image = crash_image(dir.path(), true);
    drop(store);
    let journal = only_journal_file(image.path());
    let mut bytes = std::fs::read(&journal).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0xff;
    std::fs::write(&journal, bytes).unwrap();

    let recovered = open(image.path());
    assert_eq!(updates(&recovered, "doc"), vec![vec![1; 40]]);
}

#[test]
fn a_large_journal_is_checkpointed_into_sled_while_the_store_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with(
        dir.path(),
        SledOptions {
            flush_every_ms: Some(10),
            ..SledOptions::default()
        },
    )
    .unwrap();
    // Past the 4 MiB at which the store's thread checkpoints, in one append: a remainder
    // written after a checkpoint would wait for the 30 s age limit instead.
    let bytes = vec![7u8; 64 * 1024];
    let batch: Vec<_> = (0..80).map(|_| update("doc", &bytes)).collect();
    store.append(&batch).unwrap();
    let journal_bytes = |dir: &Path| -> u64 {
        std::fs::read_dir(dir.join("journal"))
            .unwrap()
            .map(|f| f.unwrap().metadata().unwrap().len())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal_bytes(dir.path()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal was not checkpointed within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Its entries are in sled: a copy without any journal holds them all.
    let image = crash_image(dir.path(), false);
    drop(store);
    assert_eq!(updates(&open(image.path()), "doc").len(), 80);
}
