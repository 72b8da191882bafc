//! Disk usage: bytes on disk per update before and after compaction, for the automerge-paper
//! document (259,778 keystroke updates) in a `SledStore`.
//!
//! 1. **Raw log**: the updates written with `append` in batches of 100 (one log entry and one
//!    flush per batch: what group commit does under load), never compacted.
//! 2. **Server defaults**: the same batches, compacted from the live document whenever the
//!    log tail reaches the server's default threshold (what the persistence worker and the
//!    compactor do), then once more when the document goes idle (what unloading its room
//!    does). Measured at once, after continued light use (rounds of small appends, each round
//!    ending in an idle compaction, to see what sled keeps of its log over time), and after
//!    reopening.
//! 3. **Many documents**: the same, for `CONCORD_BENCH_DOCS` documents written at once (each
//!    batch holds 100 updates of every document, one log entry per document), then continued
//!    light use of one of them: how much log space sled holds right after, and once writes go
//!    on.
//!
//! A store directory holds `snapshots/` (one file per compacted document) and `sled/` (the log
//! and metadata). Sizes are the larger of "apparent" (sum of file lengths, `du
//! --apparent-size`) and "allocated" (blocks in use, `du`). Run with `cargo bench -p
//! concord-benches --bench disk_usage` (`CONCORD_BENCH_DOCS` sets the number of documents of
//! part 3, 64 by default). Target: after compaction, a document takes <= 1.1x its v2-encoded
//! state on disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_benches::{append_in_batches, dir_size, load_trace};
use concord_core::{Appended, DocName, Room, StoredUpdate, SystemClock};
use concord_sled::{SledOptions, SledStore};
use yrs::{GetString, ReadTxn, StateVector, Transact};

const BATCH: usize = 100;
/// Rounds of continued use after the document went idle.
const CONTINUED_ROUNDS: usize = 5;
/// Appends per round of continued use.
const CONTINUED_APPENDS: usize = 1000;
/// Updates per append during continued use (a light load: a few keystrokes per group commit).
const CONTINUED_BATCH: usize = 10;

/// A measured store directory, split into its two parts.
struct Usage {
    snapshots: u64,
    sled: u64,
}

impl Usage {
    fn of(path: &Path) -> Usage {
        let size = |p: &Path| {
            if !p.exists() {
                return 0;
            }
            let (apparent, allocated) = dir_size(p).expect("walk store directory");
            apparent.max(allocated)
        };
        Usage {
            snapshots: size(&path.join("snapshots")),
            sled: size(&path.join("sled")),
        }
    }

    fn total(&self) -> u64 {
        self.snapshots + self.sled
    }
}

struct Report {
    count: u64,
    v2_state: u64,
    rows: Vec<(String, Usage, u64)>,
}

impl Report {
    /// Adds a row for a store holding `docs` documents.
    fn row(&mut self, label: &str, path: &Path, docs: u64) {
        self.rows.push((label.to_owned(), Usage::of(path), docs));
    }

    fn print(&self) {
        println!(
            "{:<58} {:>11} {:>11} {:>11} {:>9} {:>8} {:>8}",
            "state", "snapshots B", "sled B", "total B", "B/update", "x v2", "snap x v2"
        );
        for (label, usage, docs) in &self.rows {
            let state = (self.v2_state * docs) as f64;
            println!(
                "{:<58} {:>11} {:>11} {:>11} {:>9.1} {:>8.2} {:>8.3}",
                label,
                usage.snapshots,
                usage.sled,
                usage.total(),
                usage.total() as f64 / (self.count * docs) as f64,
                usage.total() as f64 / state,
                usage.snapshots as f64 / state,
            );
        }
    }
}

fn main() {
    let started = Instant::now();
    let trace = load_trace("automerge-paper.json.gz");
    let updates = trace.updates();
    let count = updates.len() as u64;
    let payload: u64 = updates.iter().map(|u| u.len() as u64).sum();
    let docs_in_store: usize = std::env::var("CONCORD_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);

    let mut room = Room::new(Arc::new(SystemClock));
    for update in &updates {
        room.restore(update).expect("trace updates apply");
    }
    let v2_state = room.encode_snapshot().unwrap().len() as u64;
    let v1_state = room
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len() as u64;
    drop(room);
    let threshold = concord_server::Config::default().compact_after_updates;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = Report {
        count,
        v2_state,
        rows: Vec::new(),
    };
    let doc = DocName::new("automerge-paper").expect("valid name");

    // 1. The raw log.
    let raw = dir.path().join("raw");
    {
        let store = open(&raw);
        append_in_batches(&store, &doc, &updates, BATCH);
    }
    settle();
    report.row("raw log, 2,598 appends of 100, never compacted", &raw, 1);

    // 2. Server defaults, one document.
    let one = dir.path().join("one");
    let store = open(&one);
    let (compactions, final_snapshot) =
        write_like_the_server(&store, std::slice::from_ref(&doc), &updates, threshold);
    report.row(
        &format!("server defaults: {compactions} compactions, idle compaction"),
        &one,
        1,
    );
    let snapshot_file = store
        .snapshot_file(&doc)
        .expect("metadata")
        .expect("a snapshot");
    let snapshot_file_bytes = std::fs::metadata(&snapshot_file).expect("stat").len();
    // Continued use: keystrokes re-sent (valid, and no-ops for the document) in small group
    // commits, each round ending with the idle compaction.
    for round in 1..=CONTINUED_ROUNDS {
        let from = (round - 1) * CONTINUED_APPENDS * CONTINUED_BATCH;
        let resent = &updates[from..from + CONTINUED_APPENDS * CONTINUED_BATCH];
        append_in_batches(&store, &doc, resent, CONTINUED_BATCH);
        let last_seq = store.load(&doc).expect("load").last_seq;
        store
            .compact(&doc, &final_snapshot, last_seq)
            .expect("compact");
        report.row(
            &format!(
                "  then {} appends of {CONTINUED_BATCH}, idle compaction",
                round * CONTINUED_APPENDS
            ),
            &one,
            1,
        );
    }
    drop(store);
    settle();
    report.row("  store closed", &one, 1);
    let store = open(&one);
    let loaded = store.load(&doc).expect("load after reopen");
    assert!(
        loaded.updates.is_empty(),
        "the log is gone after compaction"
    );
    let (room, _) = Room::from_stored(Arc::new(SystemClock), &loaded).expect("rebuild");
    let text = room.doc().get_or_insert_text("text");
    assert_eq!(text.get_string(&room.doc().transact()), trace.end_content);
    drop(room);
    drop(store);
    settle();
    report.row("  reopened, checked, closed", &one, 1);

    // 3. Many documents in one store.
    let many = dir.path().join("many");
    let names: Vec<DocName> = (0..docs_in_store)
        .map(|i| DocName::new(&format!("paper-{i}")).expect("valid name"))
        .collect();
    let many_started = Instant::now();
    {
        let store = open(&many);
        write_like_the_server(&store, &names, &updates, threshold);
    }
    let many_time = many_started.elapsed();
    settle();
    report.row(
        &format!("{docs_in_store} documents, server defaults, idle compaction"),
        &many,
        docs_in_store as u64,
    );
    {
        let store = open(&many);
        for round in 1..=CONTINUED_ROUNDS {
            let from = (round - 1) * CONTINUED_APPENDS * CONTINUED_BATCH;
            let resent = &updates[from..from + CONTINUED_APPENDS * CONTINUED_BATCH];
            append_in_batches(&store, &names[0], resent, CONTINUED_BATCH);
            let last_seq = store.load(&names[0]).expect("load").last_seq;
            store
                .compact(&names[0], &final_snapshot, last_seq)
                .expect("compact");
            report.row(
                &format!(
                    "  then {} appends of {CONTINUED_BATCH} to one, idle compaction",
                    round * CONTINUED_APPENDS
                ),
                &many,
                docs_in_store as u64,
            );
        }
    }
    settle();
    report.row(
        &format!("{docs_in_store} documents, reopened, closed"),
        &many,
        docs_in_store as u64,
    );

    println!(
        "trace: automerge-paper, {count} updates, {payload} bytes of v1 updates ({:.1} bytes/update)",
        payload as f64 / count as f64
    );
    println!(
        "document state: {v2_state} bytes Yjs v2 (what a snapshot stores), {v1_state} bytes Yjs v1"
    );
    println!(
        "server default compaction threshold: {threshold} updates; writing {docs_in_store} documents took {:.1} s",
        many_time.as_secs_f64()
    );
    println!();
    println!("Bytes on disk (larger of apparent and allocated). B/update = total / updates");
    println!("written; x v2 = total / v2 state of the documents; snap x v2 = snapshot files only.");
    println!();
    report.print();
    let per_doc = snapshot_file_bytes as f64 / v2_state as f64;
    println!();
    println!(
        "one compacted document: snapshot file {snapshot_file_bytes} bytes = {per_doc:.4}x its v2 state, plus its metadata record in sled"
    );
    let (_, after_writes, _) = &report.rows[report.rows.len() - CONTINUED_ROUNDS - 2];
    let (_, settled, _) = report.rows.last().expect("rows");
    println!(
        "sled's part (metadata, log tails, and free space it keeps for reuse): {} bytes right after writing {docs_in_store} documents, {} bytes once writes went on",
        after_writes.sled, settled.sled
    );
    println!(
        "whole store of {docs_in_store} compacted documents: {} bytes = {:.2}x their v2 states",
        settled.total(),
        settled.total() as f64 / (v2_state * docs_in_store as u64) as f64
    );
    println!(
        "target: a compacted document takes <= 1.1x its v2 state ({} bytes): {} ({per_doc:.4}x)",
        v2_state * 11 / 10,
        if per_doc <= 1.1 { "MET" } else { "NOT MET" },
    );
    println!("bench time: {:.1} s", started.elapsed().as_secs_f64());
}

/// Writes the trace to every document of `docs` in group-commit batches (100 updates of each
/// document per `append`), compacting a document from its live state whenever its log tail
/// reaches `threshold`, and every document once more at the end, as unloading its idle room
/// does. Returns the compactions of the first document and its final snapshot.
fn write_like_the_server(
    store: &SledStore,
    docs: &[DocName],
    updates: &[Vec<u8>],
    threshold: u64,
) -> (usize, Vec<u8>) {
    let mut rooms: Vec<Room> = docs
        .iter()
        .map(|_| Room::new(Arc::new(SystemClock)))
        .collect();
    let mut compactions = 0;
    let mut last: Vec<Option<Appended>> = vec![None; docs.len()];
    for chunk in updates.chunks(BATCH) {
        let mut batch = Vec::with_capacity(chunk.len() * docs.len());
        for (doc, room) in docs.iter().zip(&mut rooms) {
            for update in chunk {
                room.restore(update).expect("trace updates apply");
                batch.push(StoredUpdate {
                    doc: doc.clone(),
                    update: update.clone(),
                });
            }
        }
        for written in store.append(&batch).expect("append") {
            let i = docs
                .iter()
                .position(|d| *d == written.doc)
                .expect("a known document");
            if written.tail_updates >= threshold {
                store
                    .compact(
                        &written.doc,
                        &rooms[i].encode_snapshot().unwrap(),
                        written.seq,
                    )
                    .expect("compact");
                compactions += usize::from(i == 0);
                last[i] = None;
            } else {
                last[i] = Some(written);
            }
        }
    }
    for (room, written) in rooms.iter().zip(last) {
        if let Some(written) = written {
            store
                .compact(&written.doc, &room.encode_snapshot().unwrap(), written.seq)
                .expect("idle compaction");
        }
    }
    (compactions, rooms[0].encode_snapshot().unwrap())
}

fn open(path: &Path) -> SledStore {
    SledStore::open_with(path, SledOptions::default()).expect("open store")
}

/// sled's background threads may still be writing or hold files a moment after a drop.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}
