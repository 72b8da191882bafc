//! Several nodes on one Redis: cross-node fan-out beside the same load on one node, and how long
//! the clients of a killed node take to be synced on the others.
//!
//! Starts `target/release/concord-server` processes (build it first: `cargo build --release -p
//! concord-server`; `CONCORD_BIN` points elsewhere) and a `redis-server` of its own on a free
//! loopback port (`appendonly yes`, `appendfsync always`, temporary directory), all on this
//! machine, then:
//!
//! 1. Fan-out, with the load tool's edit mode (real WebSocket clients, yrs edits from the
//!    automerge-paper trace, every delivery timed): each scenario on one node with sled, one node
//!    on Redis, three nodes on Redis with each document's clients spread over the three (about
//!    two thirds of the deliveries cross nodes), the same with the channels between nodes on a
//!    second Redis (`--redis-pubsub-url`), and three nodes on a 3-master Redis Cluster (started
//!    by the bench too). Server CPU counts every node and every Redis server.
//! 2. Node kill: 60 clients on 6 documents spread over three nodes; one node is killed with
//!    SIGKILL; each of its clients reconnects to the next node after y-websocket's first backoff
//!    (100 ms) and syncs. Reported: SIGKILL to the last of them synced, and to all documents
//!    equal on every client.
//!
//! Run with `cargo bench -p concord-benches --bench nodes`. Targets: cross-node p99 <= 10 ms
//! and <= 2x the single-node p99 at 10 docs x 10 clients x 5 edits/s; 1 doc x 50 clients x 20
//! edits/s with nothing missing; node kill to all synced <= 2 s.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use concord_benches::ServerProcess;
use concord_benches::load::{self, Mode, Report, Scenario};
use concord_redis::testing::{RedisCluster, RedisServer};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Text, Transact};

/// Starts a node with `store_args` and no rate limits (the load is a machine's).
fn start(store_args: &[&str]) -> Result<ServerProcess> {
    let unlimited = u32::MAX.to_string();
    let mut args = store_args.to_vec();
    for flag in [
        "--rate-messages",
        "--rate-message-burst",
        "--rate-bytes",
        "--rate-byte-burst",
        "--rate-awareness",
        "--rate-awareness-burst",
    ] {
        args.extend([flag, unlimited.as_str()]);
    }
    args.extend([
        "--connection-attempts-per-ip",
        "100000",
        "--connection-attempt-burst",
        "100000",
    ]);
    ServerProcess::start(&args)
}

/// One fan-out scenario.
fn scenario(name: &str, docs: usize, clients: usize, rate: f64, edits: usize) -> Scenario {
    let mut s = Scenario::new(name, "", Mode::Edit);
    s.docs = docs;
    s.clients = clients;
    s.rate = rate;
    s.edits = edits;
    s.window = 0;
    s.deadline = Duration::from_secs(120);
    s
}

/// Runs `s` with its clients spread over `nodes`; CPU counts the nodes and the `redis` servers.
fn run_load(mut s: Scenario, nodes: &[&ServerProcess], redis: &[&RedisServer]) -> Result<Report> {
    s.url = nodes[0].url();
    s.server_pid = Some(nodes[0].pid());
    s.more_urls = nodes[1..].iter().map(|n| n.url()).collect();
    s.more_pids = nodes[1..].iter().map(|n| n.pid()).collect();
    s.more_pids.extend(redis.iter().filter_map(|r| r.pid()));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(load::run(s))
}

fn row(label: &str, report: &Report) -> String {
    let Some(edit) = &report.edit else {
        return format!("{label:<34} failed: {:?}", report.error);
    };
    let cpu = report.server_cpu_s.unwrap_or(f64::NAN);
    format!(
        "{label:<34} {:>8.2} {:>8.2} {:>8.2} {:>10.0} {:>8} {:>12.3} {:>4}",
        edit.fanout.p50_ms,
        edit.fanout.p99_ms,
        edit.fanout.max_ms,
        edit.delivered_per_s,
        edit.missing,
        cpu / edit.delivered.max(1) as f64 * 10_000.0,
        if report.ok && edit.converged {
            "ok"
        } else {
            "FAIL"
        }
    )
}

/// A client that reads until it has the server's sync step 2; returns its connection and doc.
async fn synced_client(
    url: &str,
    doc: yrs::Doc,
) -> Result<(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    yrs::Doc,
)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let step1 = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector())).encode_v1();
    ws.send(WsMessage::binary(step1)).await?;
    loop {
        let Some(frame) = ws.next().await else {
            bail!("closed before sync");
        };
        let WsMessage::Binary(data) = frame? else {
            continue;
        };
        let mut decoder =
            yrs::updates::decoder::DecoderV1::new(yrs::encoding::read::Cursor::new(&data));
        let reader = yrs::sync::MessageReader::new(&mut decoder);
        for message in reader {
            match message? {
                Message::Sync(SyncMessage::SyncStep2(update)) => {
                    doc.transact_mut()
                        .apply_update(yrs::Update::decode_v1(&update)?)?;
                    // What this client has that the server lacks (its offline edits).
                    return Ok((ws, doc));
                }
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let update = doc.transact().encode_state_as_update_v1(&sv);
                    ws.send(WsMessage::binary(
                        Message::Sync(SyncMessage::SyncStep2(update)).encode_v1(),
                    ))
                    .await?;
                }
                _ => {}
            }
        }
    }
}

/// Node kill: seconds from SIGKILL to the last moved client synced.
fn node_kill(redis: &RedisServer) -> Result<(Duration, usize)> {
    let url = redis.url();
    let mut nodes: Vec<Option<ServerProcess>> = (0..3)
        .map(|_| start(&["--redis-url", &url]).map(Some))
        .collect::<Result<_>>()?;
    let urls: Vec<String> = nodes.iter().flatten().map(ServerProcess::url).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut on_killed = Vec::new();
        let mut others = Vec::new();
        for i in 0..60 {
            let doc_name = format!("kill-{}", i % 6);
            let node = i % 3;
            let doc = yrs::Doc::with_client_id(1000 + i as u64);
            {
                let text = doc.get_or_insert_text("t");
                let mut txn = doc.transact_mut();
                text.insert(&mut txn, 0, &format!("[{i}]"));
            }
            let (mut ws, doc) = synced_client(&format!("{}/{doc_name}", urls[node]), doc).await?;
            // Send this client's edit.
            let update = doc
                .transact()
                .encode_state_as_update_v1(&yrs::StateVector::default());
            ws.send(WsMessage::binary(
                Message::Sync(SyncMessage::Update(update)).encode_v1(),
            ))
            .await?;
            if node == 0 {
                on_killed.push((doc_name, doc, ws));
            } else {
                others.push(ws);
            }
        }
        // Let every edit be stored.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed = Instant::now();
        drop(nodes[0].take());
        let moved = on_killed.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (k, (doc_name, doc, mut ws)) in on_killed.into_iter().enumerate() {
            let target = format!("{}/{doc_name}", urls[1 + k % 2]);
            tasks.spawn(async move {
                // The connection ends (reset) when the node dies.
                while let Some(Ok(_)) = ws.next().await {}
                // y-websocket's first reconnect waits 100 ms.
                tokio::time::sleep(Duration::from_millis(100)).await;
                synced_client(&target, doc).await.map(|_| Instant::now())
            });
        }
        let mut last = killed;
        while let Some(done) = tasks.join_next().await {
            last = last.max(done??);
        }
        drop(others);
        anyhow::Ok((last - killed, moved))
    })
}

fn main() -> Result<()> {
    let started = Instant::now();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let scenarios = [
        scenario("10x10 5/s", 10, 10, 5.0, 50),
        scenario("1x50 20/s", 1, 50, 20.0, 100),
    ];
    println!(
        "Fan-out: delivery latency in ms from an edit's send to its arrival at each other client \
         of its document; CPU: all server processes (nodes and Redis), seconds per 10k deliveries."
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>10} {:>8} {:>12} {:>4}",
        "scenario / setup", "p50", "p99", "max", "deliv/s", "missing", "cpu/10k", ""
    );
    for s in &scenarios {
        let sled = start(&["--data-dir", &data_dir])?;
        let report = run_load(s.clone(), &[&sled], &[])?;
        println!("{}", row(&format!("{}: 1 node, sled", s.name), &report));
        drop(sled);

        let url = redis.url();
        let one = start(&["--redis-url", &url])?;
        let report = run_load(s.clone(), &[&one], &[&redis])?;
        println!("{}", row(&format!("{}: 1 node, Redis", s.name), &report));
        drop(one);

        let three: Vec<ServerProcess> = (0..3)
            .map(|_| start(&["--redis-url", &url]))
            .collect::<Result<_>>()?;
        let refs: Vec<&ServerProcess> = three.iter().collect();
        let report = run_load(s.clone(), &refs, &[&redis])?;
        println!("{}", row(&format!("{}: 3 nodes, Redis", s.name), &report));
        drop(three);

        // The channels between nodes on a Redis of their own: the store's AOF fsync
        // (appendfsync always) no longer delays cross-node deliveries.
        let pubsub = RedisServer::start();
        let pubsub_url = pubsub.url();
        let three: Vec<ServerProcess> = (0..3)
            .map(|_| start(&["--redis-url", &url, "--redis-pubsub-url", &pubsub_url]))
            .collect::<Result<_>>()?;
        let refs: Vec<&ServerProcess> = three.iter().collect();
        let report = run_load(s.clone(), &refs, &[&redis, &pubsub])?;
        println!(
            "{}",
            row(&format!("{}: 3 nodes, Redis + pub/sub", s.name), &report)
        );
        drop(three);
        drop(pubsub);

        let cluster = RedisCluster::start(3);
        let seeds = cluster.urls().join(",");
        let three: Vec<ServerProcess> = (0..3)
            .map(|_| start(&["--redis-url", &seeds, "--redis-cluster"]))
            .collect::<Result<_>>()?;
        let refs: Vec<&ServerProcess> = three.iter().collect();
        let shards: Vec<&RedisServer> = cluster.nodes.iter().collect();
        let report = run_load(s.clone(), &refs, &shards)?;
        println!(
            "{}",
            row(&format!("{}: 3 nodes, Cluster x3", s.name), &report)
        );
    }
    println!();
    let (took, moved) = node_kill(&redis)?;
    println!(
        "node kill: {moved} clients of the killed node synced on the other nodes {:.0} ms after \
         SIGKILL (including y-websocket's 100 ms first backoff); target <= 2,000 ms: {}",
        took.as_secs_f64() * 1e3,
        if took <= Duration::from_secs(2) {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!("bench time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
