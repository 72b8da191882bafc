//! Webhooks: editing latency while a webhook receiver answers slowly or fails.
//!
//! Concord announces edits to webhook receivers from one notifier task that debounces the
//! change feed, writes each event to the store's outbox and delivers it (at most 4 requests in
//! flight per receiver). Nothing on the editing path waits for it; this bench checks that a
//! receiver that cannot keep up does not slow editing down either.
//!
//! Each phase runs on a fresh in-process Concord server (`Concord::new` +
//! `concord_server::router`, served by axum on 127.0.0.1 with TCP_NODELAY, on a runtime with 2
//! worker threads; default `Config` without rate limits) storing in a fresh `SledStore` in its
//! own temporary directory. 10 real WebSocket clients (tokio-tungstenite, TCP_NODELAY, on a
//! current-thread runtime of their own) each edit their own document: they stream the
//! automerge-paper trace's frames (one keystroke update each) in order, each update followed by
//! a save request (`[100, varUint8Array(varUint id)]`) that the server acknowledges once the
//! update is durable, 50 pairs per second per client (500/s in all; clients staggered 2 ms
//! apart so the load is even), for 10 s after a 1 s warm-up that is not measured. Latency: from
//! just before a pair is written to its acknowledgement.
//!
//! Phases:
//! 1. `no webhooks`;
//! 2. `slow receiver`: webhooks to a receiver on 127.0.0.1 (axum, started by the bench on its
//!    own runtime) that answers 200 after sleeping 2 s; events debounced 50 ms / at most 200 ms,
//!    so every document makes several events a second, far more than 4 requests per 2 s can
//!    take: the outbox grows all along; 10 s per attempt;
//! 3. `failing receiver`: the receiver answers 503 at once; retries after at most 10 ms
//!    doubling to 100 ms, given up after an hour: deliveries are retried constantly.
//!
//! The table shows acknowledgement latency and, from `Concord::stats()` at the end of each
//! phase, the webhook events made, delivered, failed attempts and deliveries pending. A second
//! table shows the CPU the process used and the CPU time the hypervisor gave to other machines
//! during each phase (`steal` in `/proc/stat`): on a virtual machine, steal moves the p99 of a
//! sub-millisecond latency by milliseconds, more than anything measured here; compare phases
//! without it.
//!
//! With `CONCORD_BENCH_STORE=redis` the server stores in Redis instead (`concord_redis`, as
//! `--redis-url` does): a fresh `redis-server` per phase, started by the bench on a free loopback
//! port (`appendonly yes`, `appendfsync always`), on this same machine. Webhooks then take the
//! shared-store path: the server takes the lease, notes edited documents in Redis and takes
//! them back as news.
//!
//! Run with `cargo bench -p concord-benches --bench webhooks`. Target: the acknowledgement p99
//! with a slow and with a failing receiver within max(1 ms, 20 %) of the p99 without webhooks.
//! The bench only reports whether it is met; it asserts nothing about timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concord_benches::{Summary, load_trace, ms, process_cpu};
use concord_core::webhook::Retry;
use concord_core::{Store, encode_saved};
use concord_server::{Stats, WebhookConfig};
use concord_sled::{SledOptions, SledStore};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[path = "common/inprocess.rs"]
mod inprocess;

use inprocess::{Server, Ws, connect, cpu_used, parse_ack, unlimited};

/// Clients, one document each.
const CLIENTS: usize = 10;
/// Update + save pairs per second, per client.
const RATE_PER_CLIENT: u64 = 50;
/// Measured seconds per phase.
const SECONDS: u64 = 10;
/// Pairs at the start of each client's stream that are not measured (1 s).
const WARMUP: usize = 50;
/// How long to wait for outstanding acknowledgements, and for a server to stop.
const DRAIN: Duration = Duration::from_secs(20);
/// How long the slow receiver takes to answer.
const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// Steal time during a phase from which the bench says the phase was disturbed.
const STEAL_NOTICE: Duration = Duration::from_millis(250);

/// What receives the phase's webhooks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// No webhooks configured.
    None,
    /// Answers 200 after [`SLOW_ANSWER`].
    Slow,
    /// Answers 503 at once.
    Failing,
}

impl Receiver {
    fn label(self) -> &'static str {
        match self {
            Receiver::None => "no webhooks",
            Receiver::Slow => "slow receiver",
            Receiver::Failing => "failing receiver",
        }
    }
}

/// What one phase measured.
struct Phase {
    receiver: Receiver,
    /// Measured acknowledgement latencies, all clients.
    latencies: Vec<Duration>,
    /// Measured pairs sent, all clients.
    sent: usize,
    /// Pairs per second achieved (measured part, all clients).
    rate: f64,
    stats: Stats,
    /// Requests the receiver got.
    received: u64,
    cpu: String,
    /// CPU time stolen from this machine by the hypervisor during the phase.
    steal: Option<Duration>,
}

fn main() {
    let started = Instant::now();
    let trace = load_trace("automerge-paper.json.gz");
    let frames: Arc<Vec<Bytes>> = Arc::new(trace.frames.iter().cloned().map(Bytes::from).collect());
    println!(
        "trace: automerge-paper, {} updates (prepared in {:.1} s)",
        frames.len(),
        started.elapsed().as_secs_f64()
    );
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    let phases: Vec<Phase> = [Receiver::None, Receiver::Slow, Receiver::Failing]
        .into_iter()
        .map(|receiver| run_phase(receiver, &frames, &client_rt))
        .collect();

    println!();
    println!(
        "Durable acknowledgements while webhooks are delivered: {CLIENTS} clients x 1 document, \
         {RATE_PER_CLIENT} update+save pairs/s each ({} /s in all), {SECONDS} s measured after a \
         1 s warm-up; fresh server + {} per phase.",
        RATE_PER_CLIENT * CLIENTS as u64,
        if redis_mode() {
            "redis-server (appendfsync always; the server holds the webhook lease, notes edits \
             and takes the news every 200 ms)"
        } else {
            "SledStore"
        }
    );
    println!(
        "Webhooks: debounced 50 ms / at most 200 ms; slow receiver answers 200 after {} s \
         (10 s timeout); failing receiver answers 503 (retry 10 ms .. 100 ms, give up after 1 h).",
        SLOW_ANSWER.as_secs()
    );
    println!();
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>11} {:>8} {:>10} {:>8} {:>8}",
        "phase", "p50 ms", "p99 ms", "max ms", "acked", "events", "delivered", "failed", "pending"
    );
    for phase in &phases {
        let summary = Summary::of(&phase.latencies);
        println!(
            "{:<18} {:>9} {:>9} {:>9} {:>11} {:>8} {:>10} {:>8} {:>8}",
            phase.receiver.label(),
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.max),
            format!("{}/{}", phase.latencies.len(), phase.sent),
            phase.stats.webhook_events,
            phase.stats.webhook_delivered,
            phase.stats.webhook_failures,
            phase.stats.webhook_pending,
        );
    }
    println!();
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>13} {:>8}  cpu (server + clients + receiver)",
        "phase", "p90 ms", "pairs/s", "updates", "dropped", "receiver got", "steal s"
    );
    for phase in &phases {
        let summary = Summary::of(&phase.latencies);
        println!(
            "{:<18} {:>9} {:>9.0} {:>9} {:>9} {:>13} {:>8}  {}",
            phase.receiver.label(),
            ms(summary.p90),
            phase.rate,
            phase.stats.webhook_updates_seen,
            phase.stats.webhook_dropped,
            phase.received,
            phase
                .steal
                .map_or("n/a".to_owned(), |s| format!("{:.2}", s.as_secs_f64())),
            phase.cpu
        );
    }
    println!(
        "(updates: stored updates the notifier took into account; steal: CPU time the hypervisor \
         gave to others during the phase)"
    );
    println!();
    let base = Summary::of(&phases[0].latencies).p99;
    let allowance = Duration::from_millis(1).max(base.mul_f64(0.2));
    let verdicts: Vec<String> = phases[1..]
        .iter()
        .map(|phase| {
            let p99 = Summary::of(&phase.latencies).p99;
            let gap = p99.as_secs_f64() - base.as_secs_f64();
            let complete = phase.latencies.len() == phase.sent;
            format!(
                "{} {} (p99 {} ms, {:+.3} ms{})",
                phase.receiver.label(),
                if complete && gap <= allowance.as_secs_f64() {
                    "met"
                } else {
                    "not met"
                },
                ms(p99),
                gap * 1e3,
                if complete {
                    ""
                } else {
                    ", acknowledgements missing"
                }
            )
        })
        .collect();
    println!(
        "target: ack p99 within max(1 ms, 20 %) = {} ms of the p99 without webhooks ({} ms): {}",
        ms(allowance),
        ms(base),
        verdicts.join("; ")
    );
    if phases
        .iter()
        .any(|phase| phase.steal.is_some_and(|s| s >= STEAL_NOTICE))
    {
        println!(
            "note: the hypervisor took CPU time from this machine during a phase (steal column): \
             its latencies are disturbed; run again for a comparison"
        );
    }
    println!("bench time: {:.1} s", started.elapsed().as_secs_f64());
}

/// One phase: a fresh store, server and receiver; the clients' streams; everything stopped.
fn run_phase(
    receiver: Receiver,
    frames: &Arc<Vec<Bytes>>,
    client_rt: &tokio::runtime::Runtime,
) -> Phase {
    // The server, on its own runtime (two worker threads on this two-core machine).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = redis_mode().then(concord_redis::testing::RedisServer::start);
    let link_stop = CancellationToken::new();
    let store: Arc<dyn Store> = match &redis {
        Some(redis) => {
            server_rt
                .block_on(concord_redis::connect(
                    redis.options("concord"),
                    link_stop.clone(),
                ))
                .expect("redis answers")
                .store
        }
        None => Arc::new(
            SledStore::open_with(dir.path().join("store"), SledOptions::default())
                .expect("open server store"),
        ),
    };
    let hook = (receiver != Receiver::None).then(|| Hook::start(receiver));
    let webhooks = hook.as_ref().map(|hook| {
        let mut config = WebhookConfig::new([hook.url.as_str()], "bench-secret")
            .expect("a valid webhook configuration");
        config.quiet = Duration::from_millis(50);
        config.max_wait = Duration::from_millis(200);
        config.timeout = Duration::from_secs(10);
        if receiver == Receiver::Failing {
            config.retry = Retry {
                first: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
                give_up_after: Duration::from_secs(3_600),
            };
        }
        config
    });

    let server = server_rt.block_on(Server::start(
        store,
        concord_server::Config {
            webhooks,
            ..unlimited()
        },
    ));
    let cpu_before = process_cpu();
    let steal_before = steal();
    let (latencies, sent, elapsed) = client_rt.block_on(clients(server.addr, frames.clone()));
    let cpu = cpu_used(cpu_before, elapsed);
    let steal = steal_before
        .zip(steal())
        .map(|(before, after)| after.saturating_sub(before));
    let stats = server.concord.stats();
    let received = hook
        .as_ref()
        .map_or(0, |hook| hook.received.load(Ordering::Relaxed));

    if server_rt
        .block_on(async { tokio::time::timeout(DRAIN, server.stop()).await })
        .is_err()
    {
        eprintln!(
            "{}: the server did not stop within {DRAIN:?}",
            receiver.label()
        );
    }
    link_stop.cancel();
    server_rt.shutdown_timeout(Duration::from_secs(5));
    drop(redis);
    if let Some(hook) = hook {
        hook.runtime.shutdown_timeout(Duration::from_secs(1));
    }
    if latencies.is_empty() {
        panic!("{}: no acknowledgement arrived", receiver.label());
    }
    Phase {
        receiver,
        rate: sent as f64 / elapsed.as_secs_f64(),
        latencies,
        sent,
        stats,
        received,
        cpu,
        steal,
    }
}

/// Whether the server stores in Redis (`CONCORD_BENCH_STORE=redis`) instead of sled.
fn redis_mode() -> bool {
    std::env::var("CONCORD_BENCH_STORE").is_ok_and(|s| s == "redis")
}

/// A webhook receiver on 127.0.0.1, on a runtime (one thread) of its own.
struct Hook {
    url: String,
    received: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
}

impl Hook {
    fn start(kind: Receiver) -> Hook {
        use axum::http::StatusCode;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("webhook-receiver")
            .enable_all()
            .build()
            .expect("receiver runtime");
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    match kind {
                        Receiver::Slow => {
                            tokio::time::sleep(SLOW_ANSWER).await;
                            StatusCode::OK
                        }
                        _ => StatusCode::SERVICE_UNAVAILABLE,
                    }
                }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("address");
        runtime.spawn(async move { axum::serve(listener, app).await });
        Hook {
            url: format!("http://{addr}/hook"),
            received,
            runtime,
        }
    }
}

/// `CLIENTS` clients on documents `doc-0`.. streaming at once; returns every measured latency,
/// the measured pairs sent, and how long the measured part took.
async fn clients(addr: SocketAddr, frames: Arc<Vec<Bytes>>) -> (Vec<Duration>, usize, Duration) {
    let mut connections = Vec::new();
    for i in 0..CLIENTS {
        connections.push(connect(addr, &format!("doc-{i}")).await);
    }
    let period = Duration::from_micros(1_000_000 / RATE_PER_CLIENT);
    let stagger = period / CLIENTS as u32;
    let begin = Instant::now() + Duration::from_millis(20);
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, (sink, stream))| {
            tokio::spawn(client(
                sink,
                stream,
                frames.clone(),
                begin + stagger * i as u32,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut sent = 0;
    for task in tasks {
        let (client_latencies, client_sent) = task.await.expect("client task");
        latencies.extend(client_latencies);
        sent += client_sent;
    }
    let measured_from = begin + period * WARMUP as u32;
    (latencies, sent, measured_from.elapsed())
}

/// One client: `update, save` pairs every `1 / RATE_PER_CLIENT` s from `begin`, the first
/// `WARMUP` not measured. Returns the measured latencies (fewer than sent when
/// acknowledgements stopped arriving) and how many measured pairs were sent.
async fn client(
    mut sink: SplitSink<Ws, Message>,
    mut stream: SplitStream<Ws>,
    frames: Arc<Vec<Bytes>>,
    begin: Instant,
) -> (Vec<Duration>, usize) {
    let total = WARMUP + usize::try_from(RATE_PER_CLIENT * SECONDS).expect("fits");
    let period = Duration::from_micros(1_000_000 / RATE_PER_CLIENT);
    // Nothing waits past this, whatever the server does.
    let deadline = tokio::time::Instant::from_std(begin + period * total as u32 + DRAIN);
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            let mut answered = 0;
            while answered < total {
                let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, stream.next()).await
                else {
                    eprintln!("a client stopped getting acknowledgements after {answered}");
                    break;
                };
                let received = Instant::now();
                let Message::Binary(data) = message else {
                    continue;
                };
                let Some(id) = parse_ack(&data) else {
                    continue;
                };
                let at = sent_at
                    .lock()
                    .expect("lock")
                    .remove(&id)
                    .expect("an acknowledgement of a request sent, once");
                if id >= WARMUP as u64 {
                    latencies.push(received - at);
                }
                answered += 1;
            }
            latencies
        })
    };
    let mut sent = 0usize;
    let writer = async {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(begin), period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for (i, frame) in frames.iter().take(total).enumerate() {
            ticker.tick().await;
            let id = i as u64;
            // Registered before it is sent, so the reader always finds it.
            sent_at.lock().expect("lock").insert(id, Instant::now());
            sink.feed(Message::Binary(frame.clone()))
                .await
                .expect("send update");
            sink.send(Message::Binary(encode_saved(id)))
                .await
                .expect("send save request");
            sent += 1;
        }
    };
    if tokio::time::timeout_at(deadline, writer).await.is_err() {
        eprintln!("a client could not send everything in time");
    }
    let latencies = reader.await.expect("reader");
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    (latencies, sent.saturating_sub(WARMUP))
}

/// CPU time the hypervisor gave to other machines so far, all CPUs (the `steal` column of
/// `/proc/stat`, assuming the usual 100 clock ticks per second). `None` where unavailable.
fn steal() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ticks * 10))
}
