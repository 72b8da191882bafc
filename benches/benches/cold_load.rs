//! Cold load: how long the server takes to bring a stored document into memory, i.e.
//! `store.load(doc)` + `Room::from_stored(...)` (what `rooms/registry.rs` runs when the first connection
//! to an unloaded document arrives), on the automerge-paper document (259,778 keystroke updates)
//! stored in a `SledStore` two ways:
//!
//! - **compacted**: one Yjs v2 snapshot, no log (what compaction leaves);
//! - **raw log**: every update, written with `append` in group-commit batches of 100 (what the
//!   server writes under load before any compaction).
//!
//! Each is measured with a fresh store handle per iteration (sled's cache empty; the OS page
//! cache stays warm, this bench does not drop it) and with one handle reused (sled's cache
//! warm). Run with `cargo bench -p concord-benches --bench cold_load`. Target: compacted p50
//! <= 10 ms.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_benches::{Summary, append_in_batches, load_trace, ms};
use concord_core::{DocName, Room, StoredDoc, SystemClock};
use concord_sled::{SledOptions, SledStore};
use yrs::{GetString, ReadTxn, StateVector, Transact};

/// Iterations per compacted scenario (cheap: ~6 ms each).
const COMPACTED_ITERATIONS: usize = 100;
/// Iterations per raw-log scenario (~0.5 s each).
const LOG_ITERATIONS: usize = 30;
const BATCH: usize = 100;

struct Timings {
    open: Vec<Duration>,
    load: Vec<Duration>,
    rebuild: Vec<Duration>,
    total: Vec<Duration>,
}

fn main() {
    let started = Instant::now();
    let trace = load_trace("automerge-paper.json.gz");
    let updates = trace.updates();
    let payload: usize = updates.iter().map(Vec::len).sum();
    println!(
        "trace: automerge-paper, {} updates, {} bytes of v1 updates (prepared in {:.1} s)",
        updates.len(),
        payload,
        started.elapsed().as_secs_f64()
    );

    // The compacted form, built the way the compactor builds it from a live room.
    let mut room = Room::new(Arc::new(SystemClock));
    for update in &updates {
        room.restore(update).expect("trace updates apply");
    }
    assert_eq!(text_of(&room), trace.end_content);
    let snapshot = room.encode_snapshot().unwrap();
    let v1_state = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len();
    drop(room);
    println!(
        "document state: {} bytes as a v2 snapshot, {v1_state} bytes as a v1 update, {} chars of text",
        snapshot.len(),
        trace.end_content.len()
    );

    let doc = DocName::new("automerge-paper").expect("valid name");
    let compacted_dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(compacted_dir.path());
        store.compact(&doc, &snapshot, 0).expect("store snapshot");
    }
    let log_dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(log_dir.path());
        let start = Instant::now();
        append_in_batches(&store, &doc, &updates, BATCH);
        let elapsed = start.elapsed();
        println!(
            "raw log written: {} appends of {BATCH} updates (one sled batch + flush each) in {:.2} s = {:.0} updates/s",
            updates.len().div_ceil(BATCH),
            elapsed.as_secs_f64(),
            updates.len() as f64 / elapsed.as_secs_f64()
        );
    }

    let end = &trace.end_content;
    let compacted_fresh = measure(compacted_dir.path(), &doc, end, true, COMPACTED_ITERATIONS);
    let compacted_warm = measure(compacted_dir.path(), &doc, end, false, COMPACTED_ITERATIONS);
    let log_fresh = measure(log_dir.path(), &doc, end, true, LOG_ITERATIONS);
    let log_warm = measure(log_dir.path(), &doc, end, false, LOG_ITERATIONS);

    println!();
    println!("Cold load of the automerge-paper document (259,778 updates) from a SledStore.");
    println!("total = store.load(doc) + Room::from_stored(..), the server's cold-load path;");
    println!(
        "load = store.load alone (sled read + record decode); rebuild = Room::from_stored alone."
    );
    println!("'fresh handle': the store is reopened before every iteration (sled cache empty);");
    println!(
        "'same handle': one open store, iterations back to back. OS page cache is warm in both."
    );
    println!("Percentiles are nearest-rank: with 30 samples p99 is the largest sample.");
    println!();
    println!("{}", Summary::header("scenario"));
    for (label, timings) in [
        ("compacted (v2 snapshot), fresh handle", &compacted_fresh),
        ("compacted (v2 snapshot), same handle", &compacted_warm),
        ("raw log (2,598 entries), fresh handle", &log_fresh),
        ("raw log (2,598 entries), same handle", &log_warm),
    ] {
        println!(
            "{}",
            Summary::of(&timings.total).row(&format!("{label}: total"))
        );
        println!("{}", Summary::of(&timings.load).row("    load"));
        println!("{}", Summary::of(&timings.rebuild).row("    rebuild"));
    }
    println!(
        "{}",
        Summary::of(&compacted_fresh.open).row("SledStore::open_with (compacted store)")
    );
    println!(
        "{}",
        Summary::of(&log_fresh.open).row("SledStore::open_with (raw-log store)")
    );
    let p50 = Summary::of(&compacted_fresh.total).p50;
    println!();
    println!(
        "target: compacted cold load p50 <= 10 ms: {} (fresh-handle p50 {} ms)",
        if p50 <= Duration::from_millis(10) {
            "MET"
        } else {
            "NOT MET"
        },
        ms(p50)
    );
    println!(
        "compaction speeds the cold load up {:.0}x (p50, fresh handle)",
        Summary::of(&log_fresh.total).p50.as_secs_f64() / p50.as_secs_f64()
    );
    println!("bench time: {:.1} s", started.elapsed().as_secs_f64());
}

fn open(path: &Path) -> SledStore {
    SledStore::open_with(path, SledOptions::default()).expect("open store")
}

/// Loads `doc` `iterations` times (plus one unmeasured check that the content is right).
fn measure(path: &Path, doc: &DocName, expected: &str, fresh: bool, iterations: usize) -> Timings {
    let mut timings = Timings {
        open: Vec::new(),
        load: Vec::new(),
        rebuild: Vec::new(),
        total: Vec::new(),
    };
    let mut store = None;
    for iteration in 0..=iterations {
        if fresh || store.is_none() {
            // Close the previous handle first: sled holds a lock on the directory.
            drop(store.take());
            let start = Instant::now();
            store = Some(open(path));
            if fresh && iteration > 0 {
                timings.open.push(start.elapsed());
            }
        }
        let store = store.as_ref().expect("opened");
        let start = Instant::now();
        let stored: StoredDoc = store.load(doc).expect("load");
        let loaded = Instant::now();
        let (room, skipped) =
            Room::from_stored(Arc::new(SystemClock), &stored).expect("rebuild room");
        let rebuilt = Instant::now();
        assert!(skipped.is_empty(), "no stored update may be skipped");
        if iteration == 0 {
            // The first pass checks the content; it is not measured (it also warms the code).
            assert_eq!(text_of(&room), expected);
            continue;
        }
        timings.load.push(loaded - start);
        timings.rebuild.push(rebuilt - loaded);
        timings.total.push(rebuilt - start);
        drop(room);
    }
    timings
}

fn text_of(room: &Room) -> String {
    let text = room.doc().get_or_insert_text("text");
    text.get_string(&room.doc().transact())
}
