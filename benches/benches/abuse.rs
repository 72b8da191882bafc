//! Abuse: what flooding clients cost a pair of well-behaved editors on the same document.
//!
//! An in-process Concord server with the default `Config` (rate limits included; documents in
//! memory) serves one document. Two editors exchange keystrokes: A sends one update every 20 ms
//! (50/s, a fast typist), and the latency is A's send to B's receipt of the relayed frame.
//! Measured twice, for `SECONDS` each: alone, then while `FLOODERS` connections to the same
//! document send awareness messages as fast as they can; a flooder that is cut off (close 4429)
//! reconnects at once and floods again. Prints latency percentiles for both phases, how many
//! flooder connections were cut off and what the server refused. Run with
//! `cargo bench -p concord-benches --bench abuse`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_benches::{Summary, process_cpu};
use concord_core::MemoryStore;
use concord_server::{Concord, Config};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Text, Transact};

const SECONDS: u64 = 5;
const FLOODERS: usize = 4;
const KEYSTROKE: Duration = Duration::from_millis(20);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let concord = Concord::new(
        Config::default(),
        Arc::new(MemoryStore::new()),
        shutdown.clone(),
    );
    let app = concord_server::router(&concord).into_make_service_with_connect_info::<SocketAddr>();
    let signal = shutdown.clone().cancelled_owned();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });

    let cpu_before = process_cpu();
    let started = Instant::now();
    let quiet = editors(addr, "quiet").await;

    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        flooders.push(tokio::spawn(flood(
            addr,
            i as u64,
            stop.clone(),
            cut_off.clone(),
            sent.clone(),
        )));
    }
    let flooded = editors(addr, "flooded").await;
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        let _ = flooder.await;
    }
    let elapsed = started.elapsed();
    let stats = concord.stats();
    shutdown.cancel();
    concord.closed().await;
    let _ = serve.await;

    println!(
        "Two editors, one update every {} ms from A to B, {SECONDS} s per phase; default Config (per connection 200 messages/s with a burst of 1,000, of which 60 awareness messages/s with a burst of 300).",
        KEYSTROKE.as_millis()
    );
    println!("Times in milliseconds: A's send to B's receipt of the relayed update.");
    println!();
    println!("{}", Summary::header("latency"));
    println!("{}", Summary::of(&quiet).row("editors alone"));
    println!(
        "{}",
        Summary::of(&flooded).row(&format!("with {FLOODERS} flooders"))
    );
    println!();
    println!(
        "flooders sent {} awareness messages; {} flooder connections were cut off with 4429 (server count: {}); editors disconnected: 0",
        sent.load(Ordering::Relaxed),
        cut_off.load(Ordering::Relaxed),
        stats.rate_limited
    );
    if let Some(before) = cpu_before
        && let Some(after) = process_cpu()
    {
        let cpu = after.saturating_sub(before);
        println!(
            "CPU (server, editors and flooders in one process): {:.2} s in {:.2} s",
            cpu.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(addr: SocketAddr, doc: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/{doc}"), tcp)
        .await
        .expect("WebSocket handshake");
    ws
}

/// Connects, or `None` when the server refuses (a flooder may meet a limit of its own).
async fn try_connect(addr: SocketAddr, doc: &str) -> Option<Ws> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/{doc}"), tcp)
        .await
        .ok()?;
    Some(ws)
}

/// A types into B for [`SECONDS`]; returns the latency of every keystroke.
async fn editors(addr: SocketAddr, doc: &str) -> Vec<Duration> {
    let mut a = connect(addr, doc).await;
    let mut b = connect(addr, doc).await;
    let source = Doc::with_client_id(1);
    let text = source.get_or_insert_text("t");
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let mut ticker = tokio::time::interval(KEYSTROKE);
    let mut i = 0u32;
    while Instant::now() < deadline {
        ticker.tick().await;
        let update = {
            let mut txn = source.transact_mut();
            text.insert(&mut txn, i, "x");
            txn.encode_update_v1()
        };
        i += 1;
        let frame = YMessage::Sync(SyncMessage::Update(update.clone())).encode_v1();
        let sent = Instant::now();
        a.send(Message::Binary(frame.into()))
            .await
            .expect("A sends");
        // B reads until the relayed update arrives (skipping the handshake and awareness).
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), b.next())
                .await
                .expect("B receives within 10 s")
                .expect("B is connected")
                .expect("B reads");
            if let Message::Close(frame) = &message {
                panic!("B was closed: {frame:?}");
            }
            if let Message::Binary(data) = message
                && let Ok(YMessage::Sync(SyncMessage::Update(got))) =
                    <YMessage as yrs::updates::decoder::Decode>::decode_v1(&data)
                && got == update
            {
                latencies.push(sent.elapsed());
                break;
            }
        }
        // A drains what it was sent, so its socket never backs up.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::ZERO, a.next()).await {}
    }
    latencies
}

/// Sends awareness messages as fast as the socket takes them; reconnects when cut off.
async fn flood(
    addr: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
    cut_off: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    let mut clock = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(ws) = try_connect(addr, "flooded").await else {
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        // Read in the background so the close frame (and everything else) is seen.
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Close(Some(frame)) = message {
                    return u16::from(frame.code) == 4429;
                }
            }
            false
        });
        while !stop.load(Ordering::Relaxed) {
            clock += 1;
            let frame = awareness(1_000 + id, clock);
            if sink.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            if reader.is_finished() {
                break;
            }
        }
        let _ = sink.close().await;
        if reader.await.unwrap_or(false) {
            cut_off.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn awareness(client: u64, clock: u32) -> Vec<u8> {
    let mut clients = std::collections::HashMap::new();
    clients.insert(
        yrs::ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: r#"{"cursor":{"anchor":1,"head":2}}"#.into(),
        },
    );
    YMessage::Awareness(yrs::sync::AwarenessUpdate { clients }).encode_v1()
}
