//! Version history: what keeping versions costs on disk, and how long listing, reading and
//! restoring take, on the automerge-paper document (259,778 keystroke updates) in a
//! `SledStore`.
//!
//! The trace is replayed into a room; at every tenth of it the room's snapshot is kept as a
//! version (what a compaction or the history keeper stores). Then:
//!
//! - **disk**: the bytes the store's `versions/` directory and its sled metadata grew by, per
//!   version, against the version's snapshot size (the target: a version costs its snapshot,
//!   <= 1.1x);
//! - **list**: `versions(doc)` (metadata only), repeated;
//! - **get**: `version(doc, id)` and turning the snapshot into the v1 update the API serves;
//! - **restore**: computing the restore update from the final document back to each version
//!   (`concord_core::restore::restore_update`), with its size, and checking that applying it
//!   gives the version's text.
//!
//! Run with `cargo bench -p concord-benches --bench history`.

use std::sync::Arc;
use std::time::Instant;

use concord_benches::{Summary, dir_size, load_trace};
use concord_core::{DocName, NewVersion, Position, Room, Store, SystemClock};
use concord_sled::SledStore;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact, Update};

const VERSIONS: usize = 10;
const LIST_ROUNDS: usize = 200;

fn bytes_of(path: &std::path::Path) -> u64 {
    if !path.exists() {
        return 0;
    }
    let (apparent, allocated) = dir_size(path).expect("walk the store directory");
    apparent.max(allocated)
}

fn text_of(update: Update) -> String {
    let doc = Doc::new();
    doc.transact_mut().apply_update(update).expect("applies");
    let text = doc.get_or_insert_text("text");
    text.get_string(&doc.transact())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let trace = load_trace("automerge-paper.json.gz");
    let updates = trace.updates();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SledStore::open(dir.path()).expect("open sled"));
    let doc = DocName::new("automerge-paper").unwrap();

    // Replay, keeping a version at every tenth.
    let mut room = Room::new(Arc::new(SystemClock));
    let mut kept = Vec::new();
    let step = updates.len().div_ceil(VERSIONS);
    let before = bytes_of(dir.path());
    let mut snapshot_bytes = 0u64;
    for (i, update) in updates.iter().enumerate() {
        room.restore(update).expect("trace updates apply");
        if (i + 1) % step == 0 || i + 1 == updates.len() {
            let snapshot = room.encode_snapshot().expect("snapshot");
            snapshot_bytes += snapshot.len() as u64;
            let text = room.doc().get_or_insert_text("text");
            let content = text.get_string(&room.doc().transact());
            let info = Store::save_version(
                store.as_ref(),
                &doc,
                NewVersion {
                    snapshot,
                    created_at_ms: i as u64,
                    position: Position {
                        seq: i as u64 + 1,
                        index: 0,
                    },
                    label: None,
                },
            )
            .await
            .expect("save version");
            kept.push((info, content));
        }
    }
    drop(store);
    let after = bytes_of(dir.path());
    let store = Arc::new(SledStore::open(dir.path()).expect("reopen sled"));
    let versions_dir = bytes_of(&dir.path().join("versions"));
    let n = kept.len() as u64;
    println!(
        "Version history on the automerge-paper document ({} updates)",
        updates.len()
    );
    println!();
    println!("versions kept                               {n}");
    println!(
        "snapshot bytes per version (mean)           {}",
        snapshot_bytes / n
    );
    println!(
        "version files per version (mean)            {}",
        versions_dir / n
    );
    println!(
        "store growth per version (mean, all files)  {}",
        after.saturating_sub(before) / n
    );
    println!(
        "disk per version / snapshot size            {:.2}x (target <= 1.1x)",
        after.saturating_sub(before) as f64 / snapshot_bytes as f64
    );
    println!();

    let mut list = Vec::new();
    for _ in 0..LIST_ROUNDS {
        let started = Instant::now();
        let listed = Store::versions(store.as_ref(), &doc).await.expect("list");
        list.push(started.elapsed());
        assert_eq!(listed.len(), kept.len());
    }
    let mut get = Vec::new();
    let mut restore = Vec::new();
    let mut restore_bytes = Vec::new();
    let final_state = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    for (info, content) in &kept {
        let started = Instant::now();
        let snapshot = Store::version(store.as_ref(), &doc, info.id)
            .await
            .expect("read")
            .expect("kept");
        // What the server does to answer `GET .../versions/{id}`.
        let as_v1 = {
            let mut room = Room::new(Arc::new(SystemClock));
            room.restore_snapshot(&snapshot)
                .expect("decodes and applies");
            room.encode_state()
        };
        get.push(started.elapsed());
        assert_eq!(
            text_of(Update::decode_v1(&as_v1).unwrap()),
            *content,
            "a version reads back as kept"
        );

        let current = Update::decode_v1(&final_state).unwrap();
        let version = Update::decode_v1(&as_v1).unwrap();
        let started = Instant::now();
        let change = concord_core::restore::restore_update(current, version).expect("computes");
        restore.push(started.elapsed());
        let change = change.unwrap_or_default();
        restore_bytes.push(change.len());
        // The final document with the restore applied reads as the version.
        let check = Doc::new();
        check
            .transact_mut()
            .apply_update(Update::decode_v1(&final_state).unwrap())
            .unwrap();
        if !change.is_empty() {
            check
                .transact_mut()
                .apply_update(Update::decode_v1(&change).unwrap())
                .unwrap();
        }
        let text = check.get_or_insert_text("text");
        assert_eq!(
            text.get_string(&check.transact()),
            *content,
            "the restore gives the version's text"
        );
    }
    println!("{}", Summary::header("operation"));
    println!(
        "{}",
        Summary::of(&list).row("list versions (metadata only)")
    );
    println!("{}", Summary::of(&get).row("get a version as a v1 update"));
    println!(
        "{}",
        Summary::of(&restore).row("compute a restore (final doc -> version)")
    );
    println!();
    println!("restore update bytes, by version (oldest first):");
    for ((info, content), bytes) in kept.iter().zip(&restore_bytes) {
        println!(
            "  version {:>2}: {:>8} chars of text, restore update {:>8} bytes",
            info.id,
            content.chars().count(),
            bytes
        );
    }
}
