//! `compare`: runs the same load scenarios against Concord and the reference Yjs server
//! (`@y/websocket-server`), alternating between them, and prints a table with ratios. Edit
//! scenarios also run against a second Concord variant, `--in-memory` (no store), which shows
//! what storing every update costs beside what the server's own path costs.
//!
//!   cargo build --release -p concord-server
//!   npm ci --prefix benches/reference
//!   cargo run --release -p concord-benches --bin compare
//!
//! Each run gets a fresh server process (on a free port, Concord storing into a temporary
//! directory or, as the in-memory variant, nowhere), so memory figures start from the same
//! state. Every run's JSON line (`{"server", "variant", "round", "report"}`) goes to stderr as it
//! finishes; the Markdown table to stdout at the end: each figure is the median over `--rounds`
//! rounds (default 3), the servers taking turns to go first.

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

/// The servers: Concord storing in sled (as in production), Concord keeping documents in memory
/// only (as the reference does), and the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Concord,
    ConcordInMemory,
    Reference,
}

impl Server {
    /// Every server, in the table's column order.
    const ALL: [Server; 3] = [Server::Concord, Server::ConcordInMemory, Server::Reference];

    /// The name in the table and the log.
    fn label(self) -> &'static str {
        match self {
            Server::Concord => "Concord",
            Server::ConcordInMemory => "Concord in-memory",
            Server::Reference => "reference",
        }
    }

    /// The name in the JSON lines.
    fn variant(self) -> &'static str {
        match self {
            Server::Concord => "concord-sled",
            Server::ConcordInMemory => "concord-in-memory",
            Server::Reference => "reference",
        }
    }

    /// The position in [`Server::ALL`] (and in [`Outcome::runs`]).
    fn index(self) -> usize {
        match self {
            Server::Concord => 0,
            Server::ConcordInMemory => 1,
            Server::Reference => 2,
        }
    }
}

/// The servers a scenario runs against: edit scenarios all three, the idle and late-join ones
/// (memory per connection, one large document's sync) Concord with sled and the reference.
fn servers(scenario: &Scenario) -> Vec<Server> {
    match scenario.mode {
        Mode::Edit => Server::ALL.to_vec(),
        Mode::Idle | Mode::LateJoin => vec![Server::Concord, Server::Reference],
    }
}

/// The order of the servers in one round: rotated by one each round (and each scenario), so
/// every server goes first equally often.
fn round_order(servers: &[Server], index: usize, round: usize) -> Vec<Server> {
    let mut order = servers.to_vec();
    if !order.is_empty() {
        let n = order.len();
        order.rotate_left((index + round) % n);
    }
    order
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
                .env_remove("CONCORD_IN_MEMORY")
                .env("RUST_LOG", "warn");
            (command, Some(dir))
        }
        Server::ConcordInMemory => {
            let mut command = Command::new(&paths.concord);
            command
                .args(["--port", "0", "--no-static", "--in-memory"])
                .args(CONCORD_FLAGS)
                // `--in-memory` conflicts with a data directory, even one from the environment.
                .env_remove("CONCORD_DATA_DIR")
                .env("RUST_LOG", "warn");
            (command, None)
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
    // All print `listening on HOST:PORT` on stdout once they accept connections.
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

/// The scenarios, each a few seconds to fifty.
fn scenarios() -> Vec<Scenario> {
    // `edits` per client; `window`: edits a client may have sent and not yet seen delivered (0:
    // paced by `rate`).
    let edit = |name: &str, docs, clients, edits: usize, rate: f64, window| {
        let mut s = Scenario::new(name, "", Mode::Edit);
        s.docs = docs;
        s.clients = clients;
        s.edits = edits;
        s.rate = rate;
        s.source = Source::Trace;
        s.window = window;
        // A paced run lasts edits / rate seconds; 30 s more for connecting and the drain.
        let paced = if rate > 0.0 {
            Duration::from_secs_f64(edits as f64 / rate + 30.0)
        } else {
            Duration::ZERO
        };
        s.deadline = Duration::from_secs(60).max(paced);
        s
    };
    let idle = |name: &str, docs, connections, hold| {
        let mut s = Scenario::new(name, "", Mode::Idle);
        s.docs = docs;
        s.connections = connections;
        s.hold = Duration::from_secs(hold);
        s.connect_timeout = Duration::from_secs(20);
        s.deadline = Duration::from_secs(90);
        s
    };
    let mut late = Scenario::new("e-late-join-automerge", "", Mode::LateJoin);
    late.joiners = 10;
    late.deadline = Duration::from_secs(90);
    vec![
        // As fast as possible: 256 edits in flight per client are enough to saturate either
        // server (with 16 the round trip, not the server, sets the pace: `a16`).
        edit("a-1doc-2c-5k-max", 1, 2, 5000, 0.0, 256),
        // Paced (b, c, h, i): the same offered load for every server; latency and CPU differ.
        edit("b-1doc-50c-20eps", 1, 50, 200, 20.0, 0),
        edit("c-100doc-10c-5eps", 100, 10, 50, 5.0, 0),
        idle("d-idle-1k", 100, 1000, 2),
        late,
        idle("f-idle-10k", 1000, 10_000, 3),
        // Saturation: 100 clients editing as fast as their windows allow, 9 receivers per edit.
        edit("g-10doc-10c-max", 10, 10, 300, 0.0, 16),
        edit("a16-1doc-2c-5k-w16", 1, 2, 5000, 0.0, 16),
        // Paced, few receivers per edit: 10 x 10 x 5/s for 10 s (the `nodes` bench's load) and
        // 2 clients x 20/s for 50 s (2,000 edits, one receiver each).
        edit("h-10doc-10c-5eps", 10, 10, 50, 5.0, 0),
        edit("i-1doc-2c-20eps", 1, 2, 1000, 20.0, 0),
    ]
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
    let mut results: Vec<Outcome> = Vec::new();
    for (index, scenario) in chosen.iter().enumerate() {
        let mut outcome = Outcome {
            scenario: scenario.clone(),
            servers: servers(scenario),
            runs: Default::default(),
        };
        for round in 0..args.rounds.max(1) {
            for server in round_order(&outcome.servers, index, round) {
                let report = match run_one(&runtime, scenario, server, &paths) {
                    Ok(report) => report,
                    Err(e) => {
                        eprintln!("compare: {} on {}: {e:#}", scenario.name, server.label());
                        continue;
                    }
                };
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "server": server.label(),
                        "variant": server.variant(),
                        "round": round + 1,
                        "report": report,
                    })
                );
                outcome.runs[server.index()].push(report);
            }
        }
        results.push(outcome);
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

/// One scenario's runs, per server.
struct Outcome {
    scenario: Scenario,
    /// The servers it ran against.
    servers: Vec<Server>,
    /// The reports, indexed by [`Server::index`].
    runs: [Vec<Report>; 3],
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

/// Server CPU seconds per 10,000 deliveries of an edit run.
fn cpu_per_10k_deliveries(report: &Report) -> Option<f64> {
    match (&report.edit, report.server_cpu_s) {
        (Some(e), Some(cpu)) if e.delivered > 0 => Some(cpu / e.delivered as f64 * 10_000.0),
        _ => None,
    }
}

/// The Markdown table: one block of rows per scenario, each figure the median over rounds; a
/// server a scenario did not run against shows `-`.
fn table(results: &[Outcome]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | metric | Concord | Concord in-memory | reference | Concord / reference \
         | in-memory / reference |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for Outcome {
        scenario,
        servers,
        runs,
    } in results
    {
        let mut row = |metric: &str, f: &dyn Fn(&Report) -> Option<f64>, decimals: usize| {
            let [cv, mv, rv] = Server::ALL.map(|server| median(&runs[server.index()], f));
            out.push_str(&format!(
                "| {} | {metric} | {} | {} | {} | {} | {} |\n",
                scenario.name,
                num(cv, decimals),
                num(mv, decimals),
                num(rv, decimals),
                ratio(cv, rv),
                ratio(mv, rv)
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
                row(
                    "server CPU s per 10k deliveries",
                    &cpu_per_10k_deliveries,
                    3,
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
        for &server in servers {
            let label = server.label();
            let reports = &runs[server.index()];
            if reports.is_empty() {
                out.push_str(&format!(
                    "| {} | NOT RUN on {label} | | | | | |\n",
                    scenario.name
                ));
            }
            for report in reports.iter().filter(|r| !r.ok) {
                // The reason in the failed server's column.
                let mut cells = [""; 5];
                let reason = report
                    .error
                    .as_deref()
                    .unwrap_or("unknown")
                    .replace('|', "/");
                cells[server.index()] = &reason;
                out.push_str(&format!(
                    "| {} | FAILED on {label} | {} |\n",
                    scenario.name,
                    cells.join(" | ")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use concord_benches::load::EditReport;

    use super::*;

    fn report(scenario: &Scenario, cpu: f64, delivered: u64) -> Report {
        Report {
            scenario: scenario.clone(),
            ok: true,
            error: None,
            elapsed_s: 1.0,
            closed_by_server: 0,
            close_reason: None,
            protocol_errors: 0,
            server_before: None,
            server_after: None,
            server_cpu_s: Some(cpu),
            client_cpu_s: None,
            edit: Some(EditReport {
                delivered,
                ..EditReport::default()
            }),
            idle: None,
            late_join: None,
        }
    }

    fn find(scenario: &str) -> Scenario {
        scenarios()
            .into_iter()
            .find(|s| s.name == scenario)
            .expect("scenario")
    }

    #[test]
    fn every_server_goes_first_in_turn() {
        let all = Server::ALL;
        let firsts: Vec<Server> = (0..3).map(|round| round_order(&all, 0, round)[0]).collect();
        assert_eq!(firsts, all.to_vec());
        let two = [Server::Concord, Server::Reference];
        assert_eq!(
            round_order(&two, 1, 0),
            vec![Server::Reference, Server::Concord]
        );
        for round in 0..5 {
            let mut order = round_order(&all, 2, round);
            order.sort_by_key(|s| s.index());
            assert_eq!(order, all.to_vec(), "each server once per round");
        }
    }

    #[test]
    fn the_new_paced_scenarios() {
        let h = find("h-10doc-10c-5eps");
        assert_eq!(
            (h.docs, h.clients, h.edits, h.rate, h.window),
            (10, 10, 50, 5.0, 0)
        );
        let i = find("i-1doc-2c-20eps");
        assert_eq!(
            (i.docs, i.clients, i.edits, i.rate, i.window),
            (1, 2, 1000, 20.0, 0)
        );
        // 50 s of edits: the deadline leaves room for them.
        assert!(i.deadline >= Duration::from_secs(80));
        assert_eq!(servers(&i), Server::ALL.to_vec());
        assert_eq!(
            servers(&find("f-idle-10k")),
            vec![Server::Concord, Server::Reference]
        );
        let names: Vec<String> = scenarios().into_iter().map(|s| s.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "names are unique: {names:?}");
    }

    #[test]
    fn the_table_has_cpu_per_10k_deliveries_and_both_ratios() {
        let b = find("b-1doc-50c-20eps");
        let d = find("d-idle-1k");
        let results = [
            Outcome {
                scenario: b.clone(),
                servers: servers(&b),
                runs: [
                    vec![report(&b, 6.0, 490_000)],
                    vec![report(&b, 3.0, 490_000)],
                    vec![report(&b, 4.9, 490_000)],
                ],
            },
            Outcome {
                scenario: d.clone(),
                servers: servers(&d),
                runs: Default::default(),
            },
        ];
        let table = table(&results);
        assert!(table.starts_with(
            "| scenario | metric | Concord | Concord in-memory | reference | Concord / reference \
             | in-memory / reference |\n"
        ));
        assert!(
            table.contains(
                "| b-1doc-50c-20eps | server CPU s per 10k deliveries | 0.122 | 0.061 | 0.100 \
                 | 1.22x | 0.61x |\n"
            ),
            "{table}"
        );
        assert!(table.contains("| d-idle-1k | NOT RUN on Concord | | | | | |\n"));
        assert!(!table.contains("NOT RUN on Concord in-memory"), "{table}");
        for line in table.lines() {
            assert_eq!(line.matches('|').count(), 8, "{line}");
        }
    }
}
