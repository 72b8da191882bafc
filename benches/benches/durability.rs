//! Durability: how fast Concord acknowledges that an update is durable, and how many durable
//! updates per second it sustains, through its real WebSocket path.
//!
//! An in-process Concord server (`Concord::new` + `concord_server::router`, served by axum on
//! 127.0.0.1 with TCP_NODELAY, default `Config` without rate limits: the load is a machine's)
//! stores documents in a `SledStore` in a temporary directory. Clients are real WebSocket clients (tokio-tungstenite, TCP_NODELAY) on
//! their own runtime, sending pre-encoded frames from the automerge-paper trace (one keystroke
//! update per frame) and save requests (`[100, varUint8Array(varUint id)]`), which the server
//! answers with the same message once everything the connection sent before is durable.
//!
//! Phases, one after the other:
//! 1. this disk's fdatasync latency: 4 KiB append + `sync_data`, in the same temporary
//!    directory;
//! 2. `SledStore::append` of one update (one sled batch + flush), called directly: the storage
//!    part of an acknowledgement;
//! 3. the server's round trip without storage: an update then an awareness query, whose reply
//!    comes straight back (same read loop, room lock and outbound queue; no storage wait);
//! 4. durable acknowledgement latency under a steady stream: an update then a save request,
//!    500 times a second for 10 s, send -> acknowledgement;
//! 5. sustained durable throughput: 4 clients on 4 documents stream the trace as fast as the
//!    server takes it, a save request after every 100 updates, at most 16 unacknowledged save
//!    requests each, for 10 s or until the trace (259,778 updates) ends.
//!
//! Run with `cargo bench -p concord-benches --bench durability`. Targets: acknowledgement p99
//! within 1 ms of the fdatasync p99; >= 100,000 acknowledged-durable updates/s.
//!
//! With `CONCORD_BENCH_STORE=redis` the server stores in Redis instead (`concord_redis`, as
//! `--redis-url` does): a `redis-server` started by the bench on a free loopback port with
//! `appendonly yes` and `appendfsync always` in a temporary directory, on this same machine.
//! Phases 1 and 2 still measure the disk and sled for reference; the target is then >= 50,000
//! acknowledged updates/s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_benches::{Summary, fdatasync_latency, load_trace, ms, process_cpu};
use concord_core::{DocName, Room, Store, StoredUpdate, SystemClock, encode_saved};
use concord_sled::{SledOptions, SledStore};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use yrs::{GetString, Transact};

#[path = "common/inprocess.rs"]
mod inprocess;

use inprocess::{Server, Ws, connect, cpu_used, parse_ack, unlimited};

const FSYNC_SAMPLES: usize = 2000;
const STORE_SAMPLES: usize = 2000;
/// Steady-stream rate and durations.
const RATE_PER_S: u64 = 500;
const RTT_SECONDS: u64 = 3;
const ACK_SECONDS: u64 = 10;
/// Samples at the start of a steady stream that are not measured.
const WARMUP: usize = 250;
/// Throughput phase.
const CLIENTS: usize = 4;
const SAVE_EVERY: usize = 100;
const MAX_OUTSTANDING: usize = 16;
const THROUGHPUT_SECONDS: u64 = 10;
/// How long to wait for outstanding acknowledgements at the end of a phase.
const DRAIN: Duration = Duration::from_secs(20);
/// An awareness message with no states: what the server answers an awareness query with here.
const EMPTY_AWARENESS: &[u8] = &[1, 1, 0];
/// An awareness query.
const QUERY_AWARENESS: &[u8] = &[3];

fn main() {
    let started = Instant::now();
    let trace = load_trace("automerge-paper.json.gz");
    let frames: Arc<Vec<Bytes>> = Arc::new(trace.frames.iter().cloned().map(Bytes::from).collect());
    let updates = trace.updates();
    println!(
        "trace: automerge-paper, {} updates (prepared in {:.1} s)",
        frames.len(),
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. The disk.
    let fsync =
        Summary::of(&fdatasync_latency(dir.path(), FSYNC_SAMPLES, None).expect("fdatasync"));
    // The same at the steady stream's pace and length: a disk stall delays every write due
    // during it, as it delays every acknowledgement of the stream.
    let pace = Duration::from_micros(1_000_000 / RATE_PER_S);
    let paced_samples = usize::try_from(RATE_PER_S * ACK_SECONDS).expect("fits");
    let fsync_paced =
        Summary::of(&fdatasync_latency(dir.path(), paced_samples, Some(pace)).expect("fdatasync"));

    // 2. The store alone: back to back, then paced like the steady stream below (so sled's
    // background thread, which fsyncs and cleans segments every 500 ms, runs in between), then
    // paced with that thread turned off.
    let store_burst = store_probe(
        dir.path(),
        "probe-burst",
        &updates,
        SledOptions::default(),
        None,
    );
    let pace = Some(pace);
    let store_paced = store_probe(
        dir.path(),
        "probe-paced",
        &updates,
        SledOptions::default(),
        pace,
    );
    let no_flusher = SledOptions {
        flush_every_ms: None,
        ..SledOptions::default()
    };
    let store_paced_no_flusher = store_probe(
        dir.path(),
        "probe-paced-no-flusher",
        &updates,
        no_flusher,
        pace,
    );

    // The server, on its own runtime (two worker threads on this two-core machine).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let redis_mode = std::env::var("CONCORD_BENCH_STORE").is_ok_and(|s| s == "redis");
    let redis_server = redis_mode.then(concord_redis::testing::RedisServer::start);
    let link_stop = CancellationToken::new();
    let store: Arc<dyn Store> = match &redis_server {
        Some(redis) => {
            let options = redis.options("concord");
            server_rt
                .block_on(concord_redis::connect(options, link_stop.clone()))
                .expect("redis answers")
                .store
        }
        None => Arc::new(
            SledStore::open_with(dir.path().join("server-store"), SledOptions::default())
                .expect("open server store"),
        ),
    };
    let server = server_rt.block_on(Server::start(store.clone(), unlimited()));
    let addr = server.addr;

    // Clients on a runtime of their own, driven from this thread.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    // 3. Round trip without storage.
    let rtt = client_rt.block_on(steady_stream(
        addr,
        "rtt",
        frames.clone(),
        RTT_SECONDS,
        Probe::AwarenessQuery,
    ));
    // 4. Durable acknowledgement latency.
    let cpu_before = process_cpu();
    let ack = client_rt.block_on(steady_stream(
        addr,
        "ack-latency",
        frames.clone(),
        ACK_SECONDS,
        Probe::Save,
    ));
    let ack_cpu = cpu_used(cpu_before, ack.elapsed);
    // 5. Throughput.
    let cpu_before = process_cpu();
    let compactions_before = server.concord.compactions();
    let throughput = client_rt.block_on(throughput(addr, frames.clone()));
    let throughput_cpu = cpu_used(cpu_before, throughput.elapsed);
    let compactions = server.concord.compactions() - compactions_before;

    server_rt.block_on(server.stop());
    let checks = verify(
        |doc| server_rt.block_on(store.load(doc)).expect("load"),
        &updates,
        &throughput,
        &trace.end_content,
    );
    link_stop.cancel();
    drop(server_rt);

    println!();
    println!("Durable acknowledgements through Concord's WebSocket path (loopback, one process).");
    if redis_mode {
        println!(
            "Times in milliseconds. Server: default Config but no rate limits, RedisStore on a local \
             redis-server (appendonly yes, appendfsync always: every acknowledged update fsynced)."
        );
    } else {
        println!(
            "Times in milliseconds. Server: default Config but no rate limits, SledStore (flush = sync_file_range,"
        );
        println!("background fsync every 500 ms, as the server runs by default).");
    }
    println!();
    println!("{}", Summary::header("latency"));
    println!(
        "{}",
        fsync.row("disk: 4 KiB append + fdatasync (this tempdir)")
    );
    println!(
        "{}",
        fsync_paced.row(&format!("  the same, {RATE_PER_S}/s for {ACK_SECONDS} s"))
    );
    println!(
        "{}",
        store_burst.row("SledStore::append(1 update), back to back")
    );
    println!("{}", store_paced.row("SledStore::append(1 update), 500/s"));
    println!(
        "{}",
        store_paced_no_flusher.row("  the same, sled flusher thread off")
    );
    println!(
        "{}",
        Summary::of(&rtt.latencies).row("server round trip, no storage (aw. query)")
    );
    println!(
        "{}",
        Summary::of(&ack.latencies).row("durable ack: update+save -> ack")
    );
    println!(
        "{}",
        Summary::of(&throughput.ack_latencies).row("durable ack under saturation (save -> ack)")
    );
    println!();
    println!(
        "steady streams: {} updates/s offered; achieved {:.0}/s (round trip) and {:.0}/s (durable ack); \
         first {WARMUP} samples of each not measured; CPU during the ack stream: {}",
        RATE_PER_S,
        rtt.sent as f64 / rtt.elapsed.as_secs_f64(),
        ack.sent as f64 / ack.elapsed.as_secs_f64(),
        ack_cpu
    );
    println!(
        "acknowledgements that arrived after a later request's: {} of {} (steady stream)",
        ack.reordered, ack.sent
    );
    let ack_summary = Summary::of(&ack.latencies);
    print_slow(&ack.timeline, fsync.p99 + Duration::from_millis(1));
    let gap = ack_summary.p99.as_secs_f64() - fsync.p99.as_secs_f64();
    let paced_gap = ack_summary.p99.as_secs_f64() - fsync_paced.p99.as_secs_f64();
    println!(
        "target: durable ack p99 within 1 ms of fdatasync p99: {} against the disk at the same pace (ack p99 {} ms, paced fdatasync p99 {} ms, difference {:+.3} ms); {} against back-to-back fdatasync (p99 {} ms, difference {:+.3} ms)",
        if paced_gap <= 1e-3 { "MET" } else { "NOT MET" },
        ms(ack_summary.p99),
        ms(fsync_paced.p99),
        paced_gap * 1e3,
        if gap <= 1e-3 { "met" } else { "not met" },
        ms(fsync.p99),
        gap * 1e3
    );
    println!();
    println!(
        "Sustained durable throughput: {CLIENTS} clients x 1 document each, a save request every \
         {SAVE_EVERY} updates, at most {MAX_OUTSTANDING} unacknowledged per client, {THROUGHPUT_SECONDS} s or the whole trace."
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>14} {:>10} {:>10}",
        "client", "sent", "acked", "seconds", "acked/s", "saves", "reordered"
    );
    for (i, client) in throughput.clients.iter().enumerate() {
        println!(
            "{:<10} {:>12} {:>12} {:>12.2} {:>14.0} {:>10} {:>10}",
            i,
            client.sent,
            client.acked,
            client.elapsed.as_secs_f64(),
            client.acked as f64 / client.elapsed.as_secs_f64(),
            client.requests,
            client.reordered
        );
    }
    let acked: u64 = throughput.clients.iter().map(|c| c.acked).sum();
    let rate = acked as f64 / throughput.elapsed.as_secs_f64();
    println!(
        "{:<10} {:>12} {:>12} {:>12.2} {:>14.0}",
        "all",
        throughput.clients.iter().map(|c| c.sent).sum::<u64>(),
        acked,
        throughput.elapsed.as_secs_f64(),
        rate
    );
    println!(
        "acknowledged-durable updates/s (all clients, first send to last ack): {rate:.0}; \
         compactions during the run: {compactions}; CPU (server + clients): {throughput_cpu}"
    );
    let target = if redis_mode { 50_000.0 } else { 100_000.0 };
    println!(
        "target: >= {target:.0} acknowledged-durable updates/s: {}",
        if rate >= target { "MET" } else { "NOT MET" }
    );
    println!();
    for line in checks {
        println!("{line}");
    }
    println!("bench time: {:.1} s", started.elapsed().as_secs_f64());
}

/// Appends one update at a time to a fresh `SledStore` in `dir/name`, `STORE_SAMPLES` times,
/// every `pace` (or back to back); returns the latency of each `append` (one sled batch + flush).
fn store_probe(
    dir: &std::path::Path,
    name: &str,
    updates: &[Vec<u8>],
    options: SledOptions,
    pace: Option<Duration>,
) -> Summary {
    let store = SledStore::open_with(dir.join(name), options).expect("open probe store");
    let doc = DocName::new("probe").expect("valid name");
    let mut samples = Vec::with_capacity(STORE_SAMPLES);
    let mut next = Instant::now();
    for update in updates.iter().take(STORE_SAMPLES) {
        if let Some(pace) = pace {
            next += pace;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let batch = [StoredUpdate {
            doc: doc.clone(),
            update: update.clone(),
        }];
        let start = Instant::now();
        store.append(&batch).expect("append");
        samples.push(start.elapsed());
    }
    Summary::of(&samples)
}

/// Prints the episodes in which acknowledgements took longer than `limit`: runs of slow
/// requests sent less than 50 ms apart, with when they started and their worst latency.
fn print_slow(timeline: &[(Duration, Duration)], limit: Duration) {
    let slow: Vec<_> = timeline.iter().filter(|(_, l)| *l > limit).collect();
    let mut episodes: Vec<(Duration, Duration, usize)> = Vec::new();
    let mut last_at: Option<Duration> = None;
    for &&(at, latency) in &slow {
        match episodes.last_mut() {
            Some(episode) if last_at.is_some_and(|l| at - l < Duration::from_millis(50)) => {
                episode.1 = episode.1.max(latency);
                episode.2 += 1;
            }
            _ => episodes.push((at, latency, 1)),
        }
        last_at = Some(at);
    }
    let shown: Vec<String> = episodes
        .iter()
        .take(24)
        .map(|(at, worst, n)| format!("{:.3}s:{n}x<={}ms", at.as_secs_f64(), ms(*worst)))
        .collect();
    println!(
        "acks slower than {} ms: {} of {}, in {} episodes (start:count x worst){}{}",
        ms(limit),
        slow.len(),
        timeline.len(),
        episodes.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join(" ")
    );
}

/// What follows each update in a steady stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// An awareness query: answered at once, nothing waits for storage.
    AwarenessQuery,
    /// A save request: answered once the update is durable.
    Save,
}

struct SteadyResult {
    latencies: Vec<Duration>,
    /// (sent at, since the stream started; latency) of every measured request, by send time.
    timeline: Vec<(Duration, Duration)>,
    /// Answers that arrived after the answer to a later request.
    reordered: usize,
    sent: usize,
    elapsed: Duration,
}

/// Sends `update, probe` pairs at `RATE_PER_S` for `seconds` on document `doc`; returns the
/// latency from just before each pair is written to the probe's answer.
async fn steady_stream(
    addr: SocketAddr,
    doc: &str,
    frames: Arc<Vec<Bytes>>,
    seconds: u64,
    probe: Probe,
) -> SteadyResult {
    let (mut sink, mut stream) = connect(addr, doc).await;
    let total = usize::try_from(RATE_PER_S * seconds).expect("fits") + WARMUP;
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            let mut answered = 0;
            let mut highest = None;
            let mut reordered = 0;
            let mut timeline = Vec::with_capacity(total);
            while answered < total {
                let Ok(Some(Ok(message))) = tokio::time::timeout(DRAIN, stream.next()).await else {
                    break;
                };
                let received = Instant::now();
                let Message::Binary(data) = message else {
                    continue;
                };
                let id = match probe {
                    Probe::Save => match parse_ack(&data) {
                        Some(id) => id,
                        None => continue,
                    },
                    Probe::AwarenessQuery if &data[..] == EMPTY_AWARENESS => answered as u64,
                    Probe::AwarenessQuery => continue,
                };
                let at = sent_at
                    .lock()
                    .expect("lock")
                    .remove(&id)
                    .expect("an answer to something sent, once");
                if highest.is_some_and(|h| id < h) {
                    reordered += 1;
                }
                highest = highest.max(Some(id));
                if id >= WARMUP as u64 {
                    latencies.push(received - at);
                    timeline.push((at, received - at));
                }
                answered += 1;
            }
            (latencies, reordered, timeline)
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    for (i, frame) in frames.iter().cycle().take(total).enumerate() {
        ticker.tick().await;
        let id = i as u64;
        let probe_frame = match probe {
            Probe::Save => encode_saved(id),
            Probe::AwarenessQuery => Bytes::from_static(QUERY_AWARENESS),
        };
        sent_at.lock().expect("lock").insert(id, Instant::now());
        sink.feed(Message::Binary(frame.clone()))
            .await
            .expect("send update");
        sink.send(Message::Binary(probe_frame))
            .await
            .expect("send probe");
    }
    let elapsed = start.elapsed();
    let (latencies, reordered, mut timeline) = reader.await.expect("reader");
    timeline.sort_by_key(|(at, _)| *at);
    let timeline = timeline
        .into_iter()
        .map(|(at, latency)| (at.saturating_duration_since(start), latency))
        .collect();
    let _ = sink.close().await;
    assert!(
        latencies.len() == total - WARMUP,
        "{} of {} answers arrived",
        latencies.len() + WARMUP,
        total
    );
    SteadyResult {
        latencies,
        timeline,
        reordered,
        sent: total,
        elapsed,
    }
}

struct ClientResult {
    sent: u64,
    acked: u64,
    /// Save requests sent.
    requests: u64,
    /// Acknowledgements that arrived after the acknowledgement of a later request.
    reordered: usize,
    elapsed: Duration,
}

struct ThroughputResult {
    clients: Vec<ClientResult>,
    /// First send to last acknowledgement, all clients.
    elapsed: Duration,
    ack_latencies: Vec<Duration>,
}

/// `CLIENTS` clients, one document each, streaming the trace with pipelined save requests.
async fn throughput(addr: SocketAddr, frames: Arc<Vec<Bytes>>) -> ThroughputResult {
    let mut connections = Vec::new();
    for i in 0..CLIENTS {
        connections.push(connect(addr, &format!("throughput-{i}")).await);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(THROUGHPUT_SECONDS);
    let mut tasks = Vec::new();
    for (sink, stream) in connections {
        tasks.push(tokio::spawn(stream_trace(
            sink,
            stream,
            frames.clone(),
            start,
            deadline,
        )));
    }
    let mut clients = Vec::new();
    let mut ack_latencies = Vec::new();
    let mut end = start;
    for task in tasks {
        let (client, latencies, last_ack) = task.await.expect("client task");
        end = end.max(last_ack);
        clients.push(client);
        ack_latencies.extend(latencies);
    }
    ThroughputResult {
        clients,
        elapsed: end - start,
        ack_latencies,
    }
}

/// One throughput client. Returns its counts, its save-request latencies and when its last
/// acknowledgement arrived.
async fn stream_trace(
    mut sink: SplitSink<Ws, Message>,
    mut stream: SplitStream<Ws>,
    frames: Arc<Vec<Bytes>>,
    start: Instant,
    deadline: Instant,
) -> (ClientResult, Vec<Duration>, Instant) {
    let permits = Arc::new(Semaphore::new(MAX_OUTSTANDING));
    // id -> (updates covered, sent at) of every unacknowledged save request.
    let pending: Arc<Mutex<HashMap<u64, (u64, Instant)>>> = Arc::default();
    // The writer tells the reader how many requests it sent in all once it is done.
    let (total_tx, mut total_rx) = oneshot::channel::<u64>();
    let reader = {
        let permits = permits.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut acked = 0;
            let mut acks = 0u64;
            let mut highest = None;
            let mut reordered = 0;
            let mut total = None;
            let mut last_ack = start;
            let mut latencies = Vec::new();
            while total != Some(acks) {
                let message = tokio::select! {
                    sent = &mut total_rx, if total.is_none() => {
                        total = Some(sent.expect("the writer reports its total"));
                        continue;
                    }
                    message = tokio::time::timeout(DRAIN, stream.next()) => message,
                };
                let Ok(Some(Ok(message))) = message else {
                    eprintln!("throughput client: acknowledgements stopped arriving");
                    break;
                };
                let Message::Binary(data) = message else {
                    continue;
                };
                let Some(id) = parse_ack(&data) else {
                    continue;
                };
                last_ack = Instant::now();
                let (covered, at) = pending
                    .lock()
                    .expect("lock")
                    .remove(&id)
                    .expect("an acknowledgement of a request sent, once");
                if highest.is_some_and(|h| id < h) {
                    reordered += 1;
                }
                highest = highest.max(Some(id));
                // An acknowledgement covers everything sent before its request.
                acked = acked.max(covered);
                acks += 1;
                latencies.push(last_ack - at);
                permits.add_permits(1);
            }
            (acked, latencies, last_ack, reordered)
        })
    };
    let mut sent = 0u64;
    let mut next_id = 0u64;
    for chunk in frames.chunks(SAVE_EVERY) {
        if Instant::now() >= deadline {
            break;
        }
        for frame in chunk {
            sink.feed(Message::Binary(frame.clone()))
                .await
                .expect("send update");
        }
        sent += chunk.len() as u64;
        permits.acquire().await.expect("semaphore open").forget();
        // Registered before it is sent, so the reader always finds it.
        pending
            .lock()
            .expect("lock")
            .insert(next_id, (sent, Instant::now()));
        sink.send(Message::Binary(encode_saved(next_id)))
            .await
            .expect("send save request");
        next_id += 1;
    }
    let _ = total_tx.send(next_id);
    let (acked, latencies, last_ack, reordered) = reader.await.expect("reader");
    let _ = sink.close().await;
    (
        ClientResult {
            sent,
            acked,
            requests: next_id,
            reordered,
            elapsed: last_ack - start,
        },
        latencies,
        last_ack,
    )
}

/// Checks that every throughput document holds exactly the updates its client sent, read back
/// from the store after the server stopped.
fn verify(
    load: impl Fn(&DocName) -> concord_core::StoredDoc,
    updates: &[Vec<u8>],
    throughput: &ThroughputResult,
    end_content: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, client) in throughput.clients.iter().enumerate() {
        let doc = DocName::new(&format!("throughput-{i}")).expect("valid name");
        let stored = load(&doc);
        let (room, skipped) = Room::from_stored(Arc::new(SystemClock), &stored).expect("rebuild");
        let text = room.doc().get_or_insert_text("text");
        let got = text.get_string(&room.doc().transact());
        let expected = if client.sent as usize == updates.len() {
            end_content.to_owned()
        } else {
            let mut reference = Room::new(Arc::new(SystemClock));
            for update in &updates[..client.sent as usize] {
                reference.restore(update).expect("apply");
            }
            let text = reference.doc().get_or_insert_text("text");
            text.get_string(&reference.doc().transact())
        };
        lines.push(format!(
            "check throughput-{i}: stored document after shutdown {} the {} updates sent \
             (snapshot: {}, log updates after it: {}, skipped: {})",
            if got == expected {
                "matches"
            } else {
                "DOES NOT MATCH"
            },
            client.sent,
            stored.snapshot.as_ref().map_or(0, Vec::len),
            stored.updates.len(),
            skipped.len()
        ));
    }
    lines
}
