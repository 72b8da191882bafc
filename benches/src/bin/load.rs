//! `load`: drives a y-websocket server with yrs clients and prints one JSON line of results.
//!
//!   cargo run --release -p concord-benches --bin load -- --url ws://127.0.0.1:1234 \
//!       --mode edit --docs 1 --clients 50 --edits 100 --rate 20 --server-pid PID
//!
//! Exits 1 when the run failed (the JSON line says why), 2 on bad arguments.

use std::time::Duration;

use clap::Parser;
use concord_benches::load::{self, Mode, Scenario, Source};

/// Load generator for Yjs WebSocket sync servers (y-websocket protocol), loopback only.
#[derive(Debug, Parser)]
#[command(name = "load")]
struct Args {
    /// Server URL: document D is at <URL>/D (e.g. ws://127.0.0.1:1234, or
    /// ws://127.0.0.1:1234/collab with a path prefix).
    #[arg(long)]
    url: String,
    /// The server's process id: its memory (VmRSS) and CPU time are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another node serving the same documents (repeatable): connections are spread over
    /// --url and these, so each document's clients sit on different nodes.
    #[arg(long = "also-url")]
    also_urls: Vec<String>,
    /// Another process whose CPU counts as the server's (repeatable: other nodes, Redis).
    #[arg(long = "also-pid")]
    also_pids: Vec<u32>,
    /// edit, idle or late-join.
    #[arg(long, default_value = "edit")]
    mode: Mode,
    /// A label for the report.
    #[arg(long, default_value = "load")]
    name: String,
    /// Documents (edit, idle).
    #[arg(long, default_value_t = 1)]
    docs: usize,
    /// Clients per document (edit).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Edits per client (edit).
    #[arg(long, default_value_t = 100)]
    edits: usize,
    /// Edits per second per client; 0: as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Most undelivered edits per client before it waits; 0: no limit.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// trace (the automerge-paper keystrokes, each client in its own text) or random (small
    /// random edits of one shared text).
    #[arg(long, default_value = "trace")]
    source: Source,
    /// Seed of the random edits.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connections (idle), spread over --docs documents.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// How long idle connections are held.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Late joiners, one after another (late-join).
    #[arg(long, default_value_t = 5)]
    joiners: usize,
    /// Trace transactions preloaded for late joiners (default: the whole trace).
    #[arg(long)]
    preload_txns: Option<usize>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Longest one connection may take to open and sync.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// How long the last edits may take to arrive before they count as missing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// The whole run must finish within this, or it fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Thousands of connections need as many descriptors.
    if let Err(e) = load::proc::raise_nofile() {
        eprintln!("load: cannot raise the open-file limit: {e}");
    }
    let mut scenario = Scenario::new(args.name, args.url, args.mode);
    scenario.server_pid = args.server_pid;
    scenario.more_urls = args.also_urls;
    scenario.more_pids = args.also_pids;
    scenario.docs = args.docs;
    scenario.clients = args.clients;
    scenario.edits = args.edits;
    scenario.rate = args.rate;
    scenario.window = args.window;
    scenario.source = args.source;
    scenario.seed = args.seed;
    scenario.connections = args.connections;
    scenario.hold = args.hold;
    scenario.joiners = args.joiners;
    scenario.preload_txns = args.preload_txns;
    scenario.connect_concurrency = args.connect_concurrency;
    scenario.connect_timeout = args.connect_timeout;
    scenario.drain = args.drain;
    scenario.deadline = args.deadline;
    let report = tokio::runtime::Runtime::new()?.block_on(load::run(scenario))?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.ok {
        eprintln!(
            "load: run failed: {}",
            report.error.as_deref().unwrap_or("unknown")
        );
        std::process::exit(1);
    }
    Ok(())
}
