//! The store's two hot operations, with criterion: appending with group commit (one `append`
//! = one sled batch + one flush, however many updates it holds) and cold loading the
//! automerge-paper document from sled (`SledStore::load` + `Room::from_stored`, what the
//! server runs when the first connection to an unloaded document arrives).
//!
//! `cargo bench -p concord-benches --bench store`. The disk's flush latency dominates small
//! appends: the per-update cost falls with the batch size, which is what group commit buys.
//! `--bench cold_load` gives the cold load's percentiles and the uncompacted case.

use std::sync::Arc;
use std::time::Duration;

use concord_benches::load_trace;
use concord_core::{DocName, Room, StoredUpdate, SystemClock};
use concord_sled::{SledOptions, SledStore};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use yrs::{GetString, Transact};

fn open(path: &std::path::Path) -> SledStore {
    SledStore::open_with(path, SledOptions::default()).expect("open store")
}

fn append(c: &mut Criterion) {
    let trace = load_trace("automerge-paper.json.gz");
    let updates = trace.updates();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let docs: Vec<DocName> = (0..10)
        .map(|i| DocName::new(&format!("doc-{i}")).expect("valid name"))
        .collect();

    let mut group = c.benchmark_group("store/append (group commit)");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    for (label, size, spread) in [
        ("1 update", 1usize, 1usize),
        ("100 updates, 1 document", 100, 1),
        ("100 updates, 10 documents", 100, 10),
        ("1000 updates, 10 documents", 1000, 10),
    ] {
        group.throughput(Throughput::Elements(size as u64));
        let mut next = 0usize;
        group.bench_function(label, |b| {
            b.iter_batched(
                || {
                    // Consecutive trace updates, dealt round-robin over `spread` documents.
                    (0..size)
                        .map(|i| {
                            next = (next + 1) % updates.len();
                            StoredUpdate {
                                doc: docs[i % spread].clone(),
                                update: updates[next].clone(),
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |batch| store.append(&batch).expect("append"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn cold_load(c: &mut Criterion) {
    let trace = load_trace("automerge-paper.json.gz");
    let mut room = Room::new(Arc::new(SystemClock));
    for update in trace.updates() {
        room.restore(&update).expect("trace updates apply");
    }
    let snapshot = room.encode_snapshot().expect("snapshot");
    drop(room);
    let doc = DocName::new("automerge-paper").expect("valid name");
    let dir = tempfile::tempdir().expect("tempdir");
    open(dir.path())
        .compact(&doc, &snapshot, 0)
        .expect("store snapshot");

    let load = |store: &SledStore| {
        let stored = store.load(&doc).expect("load");
        let (room, skipped) = Room::from_stored(Arc::new(SystemClock), &stored).expect("rebuild");
        assert!(skipped.is_empty(), "no stored entry is corrupt");
        room
    };
    // Once, unmeasured: the content is right.
    let room = load(&open(dir.path()));
    let text = room.doc().get_or_insert_text("text");
    assert_eq!(text.get_string(&room.doc().transact()), trace.end_content);
    drop(room);

    let mut group = c.benchmark_group("store/cold load (automerge-paper, compacted)");
    group.sample_size(50);
    group.bench_function("load + rebuild, open store", |b| {
        let store = open(dir.path());
        b.iter(|| load(&store))
    });
    group.bench_function("load + rebuild, store just reopened", |b| {
        b.iter_batched(
            || open(dir.path()),
            |store| load(&store),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, append, cold_load);
criterion_main!(benches);
