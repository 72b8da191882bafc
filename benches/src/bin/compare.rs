//! `compare`: runs the same load scenarios against Concord and the reference Yjs server
//! (`@y/websocket-server`), alternating between them, and prints a table with ratios.
//!
//!   cargo build --release -p concord-server
//!   npm ci --prefix benches/reference
//!   cargo run --release -p concord-benches --bin compare
//!
//! Each scenario gets a fresh server process (on a free port, Concord storing into a temporary
//! directory), so memory figures start from the same state. Every run's JSON line goes to
//! stderr as it finishes; the Markdown table to stdout at the end: each figure is the median
//! over `--rounds` rounds (default 3), the servers taking turns to go first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use concord_benches::load::{self, Mode, Report, Scenario, Source};

/// Concord against the reference y-websocket server, scenario by scenario.
#[derive(Debug, Parser)]
#[command(name = "compare")]
struct Args {
    /// The Concord binary (default: target/release/concord-server of this workspace).
    #[arg(long)]
    concord: Option<PathBuf>,
    /// The directory of the reference server (server.mjs, node_modules).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The Node.js executable.
    #[arg(long, default_value = "node")]
    node: String,
    /// Run only these scenarios (comma-separated names; see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Rounds: each scenario runs this many times against each server, alternating which goes
    /// first; the table shows the median of each figure over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Concord,
    Reference,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Concord => "Concord",
            Server::Reference => "reference",
        }
    }
}

/// A running server process.
struct Running {
    child: Child,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only the child we started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Limits generous enough that the load itself is never refused: the scenarios open thousands
/// of connections from one address and send thousands of messages per second per connection.
const CONCORD_FLAGS: &[&str] = &[
    "--max-connections",
    "100000",
    "--max-connections-per-ip",
    "100000",
    "--max-sockets-per-address",
    "0",
    "--connection-attempts-per-ip",
    "1000000",
    "--connection-attempt-burst",
    "1000000",
    "--rate-messages",
    "10000000",
    "--rate-message-burst",
    "10000000",
    "--rate-bytes",
    "4000000000",
    "--rate-byte-burst",
    "4000000000",
    "--rate-awareness",
    "1000000",
    "--rate-awareness-burst",
    "1000000",
    "--max-rooms",
    "100000",
];

struct Paths {
    concord: PathBuf,
    reference: PathBuf,
    node: String,
}

fn start(server: Server, paths: &Paths) -> anyhow::Result<Running> {
    let (mut command, dir) = match server {
        Server::Concord => {
            let dir = tempfile::tempdir().context("temporary data directory")?;
            let mut command = Command::new(&paths.concord);
            command
                .args(["--port", "0", "--no-static", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(CONCORD_FLAGS)
                .env("RUST_LOG", "warn");
            (command, Some(dir))
        }
        Server::Reference => {
            let mut command = Command::new(&paths.node);
            command.arg(paths.reference.join("server.mjs")).args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ]);
            (command, None)
        }
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}: {command:?}", server.label()))?;
    // Both print `listening on HOST:PORT` on stdout once they accept connections.
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(addr) = line.trim().strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
                sent = true;
            }
            // Later lines are drained so the pipe never fills.
        }
    });
    let mut running = Running {
        child,
        port: 0,
        _dir: dir,
    };
    let addr = rx
        .recv_timeout(Duration::from_secs(15))
        .with_context(|| format!("{} printed no `listening on` line", server.label()))?;
    running.port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{} printed an odd address {addr:?}", server.label()))?;
    Ok(running)
}

/// The scenarios, each a few seconds to twenty.
fn scenarios() -> Vec<Scenario> {
    let mut all = Vec::new();
    // `window`: edits a client may have sent and not yet seen delivered (0: paced by `rate`).
    let mut edit = |name: &str, docs, clients, edits, rate: f64, window| {
        let mut s = Scenario::new(name, "", Mode::Edit);
        s.docs = docs;
        s.clients = clients;
        s.edits = edits;
        s.rate = rate;
        s.source = Source::Trace;
        s.window = window;
        s.deadline = Duration::from_secs(60);
        all.push(s);
    };
    // As fast as possible: 256 edits in flight per client are enough to saturate either server
    // (with 16 the round trip, not the server, sets the pace: `a16`).
    edit("a-1doc-2c-5k-max", 1, 2, 5000, 0.0, 256);
    edit("b-1doc-50c-20eps", 1, 50, 200, 20.0, 0);
    edit("c-100doc-10c-5eps", 100, 10, 50, 5.0, 0);
    // Saturation: 100 clients editing as fast as their windows allow, 9 receivers per edit.
    edit("g-10doc-10c-max", 10, 10, 300, 0.0, 16);
    edit("a16-1doc-2c-5k-w16", 1, 2, 5000, 0.0, 16);
    let idle = |name: &str, docs, connections, hold| {
        let mut s = Scenario::new(name, "", Mode::Idle);
        s.docs = docs;
        s.connections = connections;
        s.hold = Duration::from_secs(hold);
        s.connect_timeout = Duration::from_secs(20);
        s.deadline = Duration::from_secs(90);
        s
    };
    all.push(idle("d-idle-1k", 100, 1000, 2));
    let mut late = Scenario::new("e-late-join-automerge", "", Mode::LateJoin);
    late.joiners = 10;
    late.deadline = Duration::from_secs(90);
    all.push(late);
    all.push(idle("f-idle-10k", 1000, 10_000, 3));
    // `g` and `a16` last, so a-f keep their order.
    let g = all.remove(3);
    let a16 = all.remove(3);
    all.push(g);
    all.push(a16);
    all
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = scenarios();
    if args.list {
        for s in &all {
            println!("{}", s.name);
        }
        return Ok(());
    }
    let chosen: Vec<Scenario> = if args.only.is_empty() {
        all
    } else {
        let unknown: Vec<&String> = args
            .only
            .iter()
            .filter(|n| !all.iter().any(|s| &s.name == *n))
            .collect();
        if !unknown.is_empty() {
            bail!("unknown scenario(s) {unknown:?}; see --list");
        }
        all.into_iter()
            .filter(|s| args.only.contains(&s.name))
            .collect()
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_owned();
    let paths = Paths {
        concord: args
            .concord
            .unwrap_or_else(|| workspace.join("target/release/concord-server")),
        reference: args
            .reference
            .unwrap_or_else(|| workspace.join("benches/reference")),
        node: args.node,
    };
    if !paths.concord.is_file() {
        bail!(
            "no Concord binary at {} (cargo build --release -p concord-server)",
            paths.concord.display()
        );
    }
    if !paths
        .reference
        .join("node_modules/@y/websocket-server")
        .is_dir()
    {
        bail!(
            "the reference server is not installed (npm ci --prefix {})",
            paths.reference.display()
        );
    }
    // Children inherit the raised limit: 10,000 connections need 10,000 descriptors on each
    // side.
    let nofile = load::proc::raise_nofile().context("raise the open-file limit")?;
    let (cores, model, ram) = load::proc::machine();
    eprintln!("compare: {cores} CPUs ({model}), {ram} MiB RAM, open-file limit {nofile}");

    let runtime = tokio::runtime::Runtime::new()?;
    let load_before = loadavg();
    let mut results: Vec<(Scenario, Vec<Report>, Vec<Report>)> = Vec::new();
    for (index, scenario) in chosen.iter().enumerate() {
        let mut runs = (Vec::new(), Vec::new());
        for round in 0..args.rounds.max(1) {
            let order = if (index + round) % 2 == 0 {
                [Server::Concord, Server::Reference]
            } else {
                [Server::Reference, Server::Concord]
            };
            for server in order {
                let report = match run_one(&runtime, scenario, server, &paths) {
                    Ok(report) => report,
                    Err(e) => {
                        eprintln!("compare: {} on {}: {e:#}", scenario.name, server.label());
                        continue;
                    }
                };
                eprintln!(
                    "{}",
                    serde_json::json!({"server": server.label(), "report": report})
                );
                match server {
                    Server::Concord => runs.0.push(report),
                    Server::Reference => runs.1.push(report),
                }
            }
        }
        results.push((scenario.clone(), runs.0, runs.1));
    }
    drop(runtime);
    println!(
        "{cores} CPUs ({model}), {ram} MiB RAM; load average before {load_before}, after {}; \
         median of {} round(s)",
        loadavg(),
        args.rounds.max(1)
    );
    println!();
    print!("{}", table(&results));
    Ok(())
}

fn run_one(
    runtime: &tokio::runtime::Runtime,
    scenario: &Scenario,
    server: Server,
    paths: &Paths,
) -> anyhow::Result<Report> {
    let running = start(server, paths)?;
    let mut scenario = scenario.clone();
    scenario.url = format!("ws://127.0.0.1:{}", running.port);
    scenario.server_pid = Some(running.pid());
    eprintln!(
        "compare: {} on {} (pid {}, port {})",
        scenario.name,
        server.label(),
        running.pid(),
        running.port
    );
    let report = runtime.block_on(load::run(scenario))?;
    drop(running);
    Ok(report)
}

/// A number with `decimals` decimals, or `-`.
fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".to_owned(),
    }
}

fn ratio(c: Option<f64>, r: Option<f64>) -> String {
    match (c, r) {
        (Some(c), Some(r)) if r > 0.0 => format!("{:.2}x", c / r),
        _ => "-".to_owned(),
    }
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// The median of the figures the reports have.
fn median(reports: &[Report], f: &dyn Fn(&Report) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = reports.iter().filter_map(f).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The Markdown table: one block of rows per scenario, each figure the median over rounds.
fn table(results: &[(Scenario, Vec<Report>, Vec<Report>)]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | metric | Concord | reference | Concord / reference |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    for (scenario, c, r) in results {
        let mut row = |metric: &str, f: &dyn Fn(&Report) -> Option<f64>, decimals: usize| {
            let cv = median(c, f);
            let rv = median(r, f);
            out.push_str(&format!(
                "| {} | {metric} | {} | {} | {} |\n",
                scenario.name,
                num(cv, decimals),
                num(rv, decimals),
                ratio(cv, rv)
            ));
        };
        let rss_mb = |r: &Report| r.server_after.map(|m| m.rss_kb as f64 / 1024.0);
        let cpu = |r: &Report| r.server_cpu_s;
        match scenario.mode {
            Mode::Edit => {
                row(
                    "delivered updates/s",
                    &|r| r.edit.as_ref().map(|e| e.delivered_per_s),
                    0,
                );
                row(
                    "fan-out p50 ms",
                    &|r| r.edit.as_ref().map(|e| e.fanout.p50_ms),
                    2,
                );
                row(
                    "fan-out p95 ms",
                    &|r| r.edit.as_ref().map(|e| e.fanout.p95_ms),
                    2,
                );
                row(
                    "fan-out p99 ms",
                    &|r| r.edit.as_ref().map(|e| e.fanout.p99_ms),
                    2,
                );
                row(
                    "fan-out max ms",
                    &|r| r.edit.as_ref().map(|e| e.fanout.max_ms),
                    2,
                );
                row(
                    "missing deliveries",
                    &|r| r.edit.as_ref().map(|e| e.missing as f64),
                    0,
                );
                row(
                    "converged (1 = yes)",
                    &|r| r.edit.as_ref().map(|e| f64::from(u8::from(e.converged))),
                    0,
                );
                row("server CPU s", &cpu, 2);
                row("load clients' CPU s", &|r| r.client_cpu_s, 2);
                row(
                    "deliveries per server CPU-second",
                    &|r| match (&r.edit, r.server_cpu_s) {
                        (Some(e), Some(cpu)) if cpu > 0.0 => Some(e.delivered as f64 / cpu),
                        _ => None,
                    },
                    0,
                );
                row("server RSS after, MiB", &rss_mb, 1);
            }
            Mode::Idle => {
                row(
                    "connections held",
                    &|r| r.idle.as_ref().map(|i| i.held as f64),
                    0,
                );
                row(
                    "RSS per connection, KiB",
                    &|r| r.idle.as_ref().map(|i| i.rss_per_connection_kb),
                    2,
                );
                row(
                    "connect + sync all, s",
                    &|r| r.idle.as_ref().map(|i| i.connect_s),
                    2,
                );
                row("server RSS after, MiB", &rss_mb, 1);
            }
            Mode::LateJoin => {
                row(
                    "synced p50 ms",
                    &|r| r.late_join.as_ref().map(|l| l.synced.p50_ms),
                    2,
                );
                row(
                    "synced max ms",
                    &|r| r.late_join.as_ref().map(|l| l.synced.max_ms),
                    2,
                );
                row(
                    "first joiner ms",
                    &|r| {
                        r.late_join
                            .as_ref()
                            .and_then(|l| l.synced_ms.first().copied())
                    },
                    2,
                );
                row(
                    "step 2 received p50 ms",
                    &|r| {
                        r.late_join.as_ref().map(|l| {
                            let mut v = l.received_ms.clone();
                            v.sort_by(f64::total_cmp);
                            v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
                        })
                    },
                    2,
                );
                row(
                    "text matches (1 = yes)",
                    &|r| {
                        r.late_join
                            .as_ref()
                            .map(|l| f64::from(u8::from(l.text_matches)))
                    },
                    0,
                );
                row("server RSS after, MiB", &rss_mb, 1);
            }
        }
        for (label, reports) in [("Concord", c), ("reference", r)] {
            if reports.is_empty() {
                out.push_str(&format!(
                    "| {} | NOT RUN on {label} | | | |\n",
                    scenario.name
                ));
            }
            for report in reports.iter().filter(|r| !r.ok) {
                out.push_str(&format!(
                    "| {} | FAILED on {label} | {} | | |\n",
                    scenario.name,
                    report
                        .error
                        .as_deref()
                        .unwrap_or("unknown")
                        .replace('|', "/")
                ));
            }
        }
    }
    out
}
