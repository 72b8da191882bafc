//! Crash test: a real `concord-server` process on a data directory is killed with SIGKILL in the
//! middle of a write storm, restarted on the same directory, and must have kept every update it
//! acknowledged as durable (save acknowledgements, message type 100), without duplicating any.
//!
//! Each round:
//! 1. four writers connect (two per document: one document shared by every round, one new per
//!    round), sync, and write as fast as the acknowledgements let them: every update inserts a
//!    unique key `r{round}-w{writer}-{n}` into the Y.Map `acked` AND pushes the same string onto
//!    the Y.Array `items`, in one transaction; after every `k` updates a writer sends a save
//!    request, and it keeps at most three requests unanswered (flow control);
//! 2. once a seeded random number of updates has been sent (and at least one acknowledged), the
//!    server is killed with SIGKILL;
//! 3. the server is restarted on the same directory (with other compaction and batching
//!    settings, so kills also land in compactions and in batches of every size) and a fresh
//!    client checks every document: every acknowledged key is there, no array item appears
//!    twice, every item is one a writer sent, the map and the array agree, nothing is pending;
//! 4. the writers reconnect and resync their whole state (as a y-websocket provider does), and
//!    the fresh client then finds every key ever sent, exactly once.
//!
//! The seed is printed; set `CONCORD_CRASH_SEED` to replay one (the kill moment is drawn from it,
//! though exactly what was in flight at that moment still depends on scheduling).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

mod common;

use common::ServerProcess;
use concord_server::concord_core::{MSG_SAVED, encode_saved};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, Map, Out, ReadTxn, StateVector, Transact, Update};

/// Deadline for anything the test waits for; generous for a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(30);
const ROUNDS: usize = 8;
const WRITERS: usize = 4;
/// Save requests a writer may have unanswered before it waits.
const WINDOW: u64 = 3;
/// The document every round writes to (the others are one per round).
const SHARED_DOC: &str = "crash/shared";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64, seeded from `CONCORD_CRASH_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

fn seed() -> u64 {
    match std::env::var("CONCORD_CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("CONCORD_CRASH_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire helpers
// ---------------------------------------------------------------------------------------------

fn frame(message: &Message) -> WsMessage {
    WsMessage::Binary(message.encode_v1().into())
}

fn save_request(id: u64) -> WsMessage {
    WsMessage::Binary(encode_saved(id))
}

/// The messages of one binary frame (a server frame that does not decode fails the test).
fn decode(data: &[u8]) -> Vec<Message> {
    let mut decoder = DecoderV1::new(Cursor::new(data));
    MessageReader::new(&mut decoder)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("undecodable frame from the server {data:?}: {e}"))
}

/// The id of a save acknowledgement.
fn saved_id(message: &Message) -> Option<u64> {
    match message {
        Message::Custom(MSG_SAVED, payload) => {
            let mut cursor = Cursor::new(payload);
            Some(cursor.read_var::<u64>().expect("a varUint id in the ack"))
        }
        _ => None,
    }
}

async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    ws
}

/// Sends SyncStep1 for `doc` and applies frames until the server's SyncStep2 arrived.
async fn handshake(ws: &mut Ws, doc: &Doc) {
    let sv = doc.transact().state_vector();
    ws.send(frame(&Message::Sync(SyncMessage::SyncStep1(sv))))
        .await
        .expect("send SyncStep1");
    let wait = async {
        while let Some(item) = ws.next().await {
            let WsMessage::Binary(data) = item.expect("read during the handshake") else {
                continue;
            };
            for message in decode(&data) {
                if let Message::Sync(SyncMessage::SyncStep2(update)) = message {
                    let update = Update::decode_v1(&update).expect("SyncStep2 decodes");
                    doc.transact_mut()
                        .apply_update(update)
                        .expect("SyncStep2 applies");
                    return;
                }
            }
        }
        panic!("the connection ended before SyncStep2");
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("SyncStep2 within the deadline");
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

/// What the test sees of a running writer.
struct WriterProgress {
    sent: AtomicU64,
    synced: AtomicBool,
}

/// A finished writer: its document (kept for the resync) and what it sent and got acknowledged.
struct WriterResult {
    doc_name: String,
    prefix: String,
    doc: Doc,
    /// Updates sent: keys `{prefix}0 .. {prefix}{sent-1}`.
    sent: u64,
    /// Updates covered by a received acknowledgement: keys `{prefix}0 .. {prefix}{acked-1}`.
    acked: u64,
}

impl WriterResult {
    fn keys(&self, upto: u64) -> impl Iterator<Item = String> + '_ {
        (0..upto).map(move |n| format!("{}{n}", self.prefix))
    }
}

/// Connects, syncs, then writes until the connection breaks. Save request `j` follows update
/// `j * every`, so acknowledgement `j` covers the first `j * every` updates.
async fn writer(
    url: String,
    doc_name: String,
    prefix: String,
    every: u64,
    progress: Arc<WriterProgress>,
) -> WriterResult {
    let doc = Doc::new();
    let mut ws = connect(&url).await;
    handshake(&mut ws, &doc).await;
    progress.synced.store(true, Ordering::SeqCst);
    let (mut sink, stream) = ws.split();
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let reader = tokio::spawn(read_acks(stream, acked_tx));

    let map = doc.get_or_insert_map("acked");
    let array = doc.get_or_insert_array("items");
    let mut sent = 0u64;
    let mut requested = 0u64;
    'storm: loop {
        // Flow control: at most WINDOW unanswered save requests. An error means the reader
        // ended (the server is gone).
        if acked_rx
            .wait_for(|&acked| acked + WINDOW > requested)
            .await
            .is_err()
        {
            break;
        }
        for _ in 0..every {
            let key = format!("{prefix}{sent}");
            let update = {
                let mut txn = doc.transact_mut();
                map.insert(&mut txn, key.as_str(), key.as_str());
                array.push_back(&mut txn, key.as_str());
                txn.encode_update_v1()
            };
            // Counted as sent before it goes out: an update the socket may have carried must be
            // expected after the resync.
            sent += 1;
            progress.sent.store(sent, Ordering::SeqCst);
            if sink
                .send(frame(&Message::Sync(SyncMessage::Update(update))))
                .await
                .is_err()
            {
                break 'storm;
            }
        }
        requested += 1;
        if sink.send(save_request(requested)).await.is_err() {
            break;
        }
    }
    drop(sink);
    let acked_id = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the reader ends once the server is gone")
        .expect("the reader task does not panic");
    WriterResult {
        doc_name,
        prefix,
        doc,
        sent,
        acked: acked_id * every,
    }
}

/// Reads until the connection ends, publishing the highest acknowledged save id; returns it.
async fn read_acks(mut stream: SplitStream<Ws>, acked: watch::Sender<u64>) -> u64 {
    while let Some(Ok(item)) = stream.next().await {
        if let WsMessage::Binary(data) = item {
            for message in decode(&data) {
                if let Some(id) = saved_id(&message) {
                    acked.send_modify(|highest| *highest = (*highest).max(id));
                }
            }
        }
    }
    *acked.borrow()
}

/// Sends the writer's whole state (what a y-websocket provider's resync amounts to) and waits
/// until the server acknowledges it as stored.
async fn resync(url: &str, doc: &Doc) {
    let mut ws = connect(url).await;
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    ws.send(frame(&Message::Sync(SyncMessage::Update(state))))
        .await
        .expect("send the state");
    ws.send(save_request(1)).await.expect("send a save request");
    let wait = async {
        while let Some(item) = ws.next().await {
            if let WsMessage::Binary(data) = item.expect("read the ack")
                && decode(&data).iter().any(|m| saved_id(m) == Some(1))
            {
                return;
            }
        }
        panic!("the connection ended before the save acknowledgement");
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("the resync is acknowledged within the deadline");
    close(ws).await;
}

async fn close(ws: Ws) {
    let (mut sink, _stream): (SplitSink<Ws, WsMessage>, _) = ws.split();
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

/// What a fresh client finds in a document.
struct Observed {
    items: Vec<String>,
    keys: BTreeSet<String>,
    pending: bool,
}

async fn observe(url: &str) -> Observed {
    let doc = Doc::new();
    let map = doc.get_or_insert_map("acked");
    let array = doc.get_or_insert_array("items");
    let mut ws = connect(url).await;
    handshake(&mut ws, &doc).await;
    close(ws).await;
    let txn = doc.transact();
    let items = array
        .iter(&txn)
        .map(|item| match item {
            Out::Any(yrs::Any::String(s)) => s.to_string(),
            other => panic!("unexpected array item {other:?}"),
        })
        .collect();
    let keys = map.keys(&txn).map(str::to_owned).collect();
    Observed {
        items,
        keys,
        pending: txn.has_missing_updates(),
    }
}

/// Checks `observed` against what must be there (`required`) and what may be (`allowed`).
fn check(
    observed: &Observed,
    required: &BTreeSet<String>,
    allowed: &BTreeSet<String>,
) -> Result<(), String> {
    if observed.pending {
        return Err("the document holds updates it cannot integrate".into());
    }
    let mut seen = BTreeSet::new();
    let duplicates: Vec<_> = observed
        .items
        .iter()
        .filter(|item| !seen.insert(item.as_str()))
        .collect();
    if !duplicates.is_empty() {
        return Err(format!(
            "{} array items appear twice, e.g. {:?}",
            duplicates.len(),
            &duplicates[..duplicates.len().min(5)]
        ));
    }
    let items: BTreeSet<String> = observed.items.iter().cloned().collect();
    if items != observed.keys {
        let only_items: Vec<_> = items.difference(&observed.keys).take(5).collect();
        let only_keys: Vec<_> = observed.keys.difference(&items).take(5).collect();
        return Err(format!(
            "the map and the array disagree: only in the array {only_items:?}, only in the map \
             {only_keys:?}"
        ));
    }
    let missing: Vec<_> = required.difference(&items).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} required updates are missing, e.g. {:?}",
            missing.len(),
            required.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    let unknown: Vec<_> = items.difference(allowed).take(5).collect();
    if !unknown.is_empty() {
        return Err(format!("items no writer sent: {unknown:?}"));
    }
    Ok(())
}

/// Per document: the keys that must be present and the keys that may be.
#[derive(Default)]
struct Expected {
    required: BTreeSet<String>,
    allowed: BTreeSet<String>,
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_survive_sigkill() {
    let seed = seed();
    println!("crash test seed: {seed} (replay with CONCORD_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().join("data");
    let log = dir.path().join("server.log");
    let started = Instant::now();

    let server_args = |rng: &mut Rng| -> Vec<String> {
        vec![
            "--compact-after-updates".into(),
            rng.pick(&["16", "64", "1000000"]).to_string(),
            "--persist-batch".into(),
            rng.pick(&["4", "64", "4096"]).to_string(),
        ]
    };
    let mut args = server_args(&mut rng);
    let mut server = ServerProcess::start(&data_dir, &log, &args).await;
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();

    for round in 0..ROUNDS {
        let round_doc = format!("crash/round-{round}");
        let progress: Vec<_> = (0..WRITERS)
            .map(|_| {
                Arc::new(WriterProgress {
                    sent: AtomicU64::new(0),
                    synced: AtomicBool::new(false),
                })
            })
            .collect();
        let tasks: Vec<JoinHandle<WriterResult>> = (0..WRITERS)
            .map(|w| {
                let doc_name = if w % 2 == 0 {
                    SHARED_DOC.to_owned()
                } else {
                    round_doc.clone()
                };
                tokio::spawn(writer(
                    server.url(&doc_name),
                    doc_name,
                    format!("r{round}-w{w}-"),
                    rng.range(1, 6),
                    progress[w].clone(),
                ))
            })
            .collect();
        let target = rng.range(40, 1500);
        let sent = || {
            progress
                .iter()
                .map(|p| p.sent.load(Ordering::SeqCst))
                .sum::<u64>()
        };
        let deadline = Instant::now() + DEADLINE;
        while !(progress.iter().all(|p| p.synced.load(Ordering::SeqCst)) && sent() >= target) {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} of {target} updates sent within {DEADLINE:?}; log:\n{}",
                sent(),
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sent_at_kill = sent();
        server.kill().await;

        let mut writers = Vec::new();
        for task in tasks {
            writers.push(task.await.expect("writer task"));
        }
        let acked: u64 = writers.iter().map(|w| w.acked).sum();
        let total_sent: u64 = writers.iter().map(|w| w.sent).sum();
        for w in &writers {
            let entry = expected.entry(w.doc_name.clone()).or_default();
            entry.required.extend(w.keys(w.acked));
            entry.allowed.extend(w.keys(w.sent));
        }

        let killed_args = std::mem::replace(&mut args, server_args(&mut rng));
        server = ServerProcess::start(&data_dir, &log, &args).await;
        let mut recovered = 0usize;
        for (doc, want) in &expected {
            let observed = observe(&server.url(doc)).await;
            if let Err(e) = check(&observed, &want.required, &want.allowed) {
                panic!(
                    "seed {seed}, round {round}, document {doc:?} after SIGKILL and restart: {e}\n\
                     server log:\n{}",
                    server.log_tail()
                );
            }
            if round == 0 && *doc == round_doc {
                // Control: the check notices a lost acknowledged update.
                let mut stricter = want.required.clone();
                stricter.insert("r0-w1-999999".into());
                assert!(check(&observed, &stricter, &want.allowed).is_err());
            }
            recovered += observed.items.len();
        }
        println!(
            "round {round}: killed after {sent_at_kill} updates (target {target}); sent {total_sent}, \
             acknowledged {acked}; {recovered} items across {} documents after the restart \
             (settings before the kill: {:?})",
            expected.len(),
            killed_args
        );
        assert!(
            acked > 0,
            "round {round}: nothing was acknowledged, so the round proved nothing"
        );

        // The writers resync, as y-websocket providers do on reconnect: now everything ever
        // sent is there, exactly once.
        for w in &writers {
            resync(&server.url(&w.doc_name), &w.doc).await;
        }
        for want in expected.values_mut() {
            want.required = want.allowed.clone();
        }
        for (doc, want) in &expected {
            let observed = observe(&server.url(doc)).await;
            if let Err(e) = check(&observed, &want.required, &want.allowed) {
                panic!(
                    "seed {seed}, round {round}, document {doc:?} after the writers resynced: {e}"
                );
            }
            assert_eq!(observed.items.len(), want.allowed.len());
        }
    }
    server.kill().await;
    println!(
        "{ROUNDS} rounds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
