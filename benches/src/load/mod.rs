//! The load tool: y-websocket clients (yrs over tokio-tungstenite) driving any Yjs sync server,
//! Concord or the reference `@y/websocket-server`, and what they measure.
//!
//! A run is one [`Scenario`]; [`run`] returns its [`Report`], which the `load` binary prints as
//! one JSON line and `compare` tabulates. Three kinds of run:
//!
//! - [`Mode::Edit`]: D documents x C clients, each making E edits at R edits/s (or as fast as
//!   its in-flight window allows). Measures fan-out latency (from an edit's frame leaving its
//!   client until every other client of the document has applied it), delivered updates per
//!   second, missing deliveries, and convergence (every client of a document ends with the same
//!   text, and in trace mode with the text the trace produces).
//! - [`Mode::Idle`]: N connections that sync and then sit; measures the server's resident
//!   memory per connection and whether they all stay open.
//! - [`Mode::LateJoin`]: a document preloaded with the whole automerge-paper trace; measures a
//!   fresh client's connect + sync step 1/step 2 until it holds the document.
//!
//! Everything is bounded: connections by the scenario, time by its deadline, past which the
//! run fails with a clear error.

mod edits;
mod ledger;
mod peer;
pub mod proc;
mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use yrs::block::ClientID;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, Transact};

pub use edits::Source;
use ledger::{DocLedger, Inbox, nanos_since};
use peer::{Dial, Peer};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Clients edit documents; fan-out latency, throughput, convergence.
    Edit,
    /// Connections sync and sit; memory per connection.
    Idle,
    /// A fresh client joins a large document; connect + sync time.
    LateJoin,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "edit" => Ok(Mode::Edit),
            "idle" => Ok(Mode::Idle),
            "late-join" => Ok(Mode::LateJoin),
            other => Err(format!("{other:?} is not edit, idle or late-join")),
        }
    }
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// A label for the report.
    pub name: String,
    /// `ws://host:port[/prefix]`: document `d` is at `<url>/<d>`.
    pub url: String,
    /// The server's process id, for its memory (`/proc/PID/status`); `None`: not measured.
    pub server_pid: Option<u32>,
    /// More servers serving the same documents (nodes sharing a Redis): connection `i` goes to
    /// `[url, more_urls...][i % n]`, so the clients of each document spread over the nodes.
    pub more_urls: Vec<String>,
    /// More processes whose CPU time counts as the server's (the other nodes, Redis).
    pub more_pids: Vec<u32>,
    pub mode: Mode,
    /// Documents (edit and idle).
    pub docs: usize,
    /// Clients per document (edit).
    pub clients: usize,
    /// Edits per client (edit).
    pub edits: usize,
    /// Edits per second per client; 0: as fast as the window allows.
    pub rate: f64,
    /// Most edits of one client not yet delivered to every other client of its document; the
    /// client waits before making more. 0: no limit.
    pub window: usize,
    /// What the edits are.
    pub source: Source,
    /// Seed of the random edits.
    pub seed: u64,
    /// Connections (idle), spread evenly over `docs` documents.
    pub connections: usize,
    /// How long idle connections are held before memory is read and they are checked.
    #[serde(with = "secs")]
    pub hold: Duration,
    /// Late joiners, one after the other (late-join).
    pub joiners: usize,
    /// Trace transactions preloaded into the late joiners' document; `None`: the whole trace.
    pub preload_txns: Option<usize>,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Longest one connection may take to open and sync.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// How long edits may take to reach everyone after the last was sent before the missing
    /// ones are counted as missing.
    #[serde(with = "secs")]
    pub drain: Duration,
    /// The whole run must finish within this; past it, it fails.
    #[serde(with = "secs")]
    pub deadline: Duration,
}

mod secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Scenario {
    /// A scenario with small defaults: 1 document, 2 clients, 100 edits at the maximum rate.
    pub fn new(name: impl Into<String>, url: impl Into<String>, mode: Mode) -> Scenario {
        Scenario {
            name: name.into(),
            url: url.into(),
            server_pid: None,
            more_urls: Vec::new(),
            more_pids: Vec::new(),
            mode,
            docs: 1,
            clients: 2,
            edits: 100,
            rate: 0.0,
            window: 16,
            source: Source::Trace,
            seed: 1,
            connections: 100,
            hold: Duration::from_secs(1),
            joiners: 5,
            preload_txns: None,
            connect_concurrency: 64,
            connect_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

/// Order statistics of latencies, in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// Of samples in nanoseconds; all zero when there are none.
    pub fn of_nanos(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |p: f64| {
            let index = ((p / 100.0) * n as f64).ceil() as usize;
            samples[index.clamp(1, n) - 1] as f64 / 1e6
        };
        Latency {
            n,
            p50_ms: rank(50.0),
            p95_ms: rank(95.0),
            p99_ms: rank(99.0),
            max_ms: samples[n - 1] as f64 / 1e6,
            mean_ms: samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64 / 1e6,
        }
    }
}

/// What an edit run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EditReport {
    /// Edits made, all clients.
    pub edits_made: usize,
    /// Deliveries expected: every edit to every other client of its document.
    pub deliveries_expected: u64,
    /// Deliveries that happened.
    pub delivered: u64,
    /// Deliveries that did not happen within the drain time.
    pub missing: u64,
    /// Fan-out latency of the edits that reached every receiver.
    pub fanout: Latency,
    /// Deliveries per second, from the first edit to the last delivery.
    pub delivered_per_s: f64,
    /// Edits per second, from the first edit to the last delivery.
    pub edits_per_s: f64,
    /// Seconds from the first edit to the last delivery.
    pub duration_s: f64,
    /// Seconds to open and sync every client.
    pub connect_s: f64,
    /// Whether every client of every document ended with the same (and the expected) text.
    pub converged: bool,
    /// Documents whose clients disagree.
    pub divergent_docs: usize,
}

/// What an idle run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleReport {
    pub connections: usize,
    /// Connections still open after the hold.
    pub held: usize,
    /// Seconds to open and sync all of them.
    pub connect_s: f64,
    /// Server RSS before connecting (after one warm-up connection) and after the hold, KiB.
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    /// (after - before) / connections, KiB.
    pub rss_per_connection_kb: f64,
    /// The same for anonymous memory (heap and stacks, without mapped files).
    pub anon_per_connection_kb: f64,
}

/// What a late-join run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LateJoinReport {
    /// Trace transactions in the document.
    pub txns: usize,
    /// Size of the document as one Yjs v1 update, bytes.
    pub update_bytes: usize,
    /// Characters of its text.
    pub text_chars: usize,
    /// Seconds to preload it (send, then a probe client sees all of it).
    pub preload_s: f64,
    /// Per joiner: from starting to connect until sync step 2 was applied, ms.
    pub synced_ms: Vec<f64>,
    /// Per joiner: from starting to connect until the step 2 frame arrived, ms.
    pub received_ms: Vec<f64>,
    /// Order statistics of `synced_ms`.
    pub synced: Latency,
    /// Whether every joiner ended with the document's exact text.
    pub text_matches: bool,
}

/// One run's result: the line the `load` binary prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    /// Everything finished within the deadline, nothing is missing, all converged, every
    /// connection stayed open.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Seconds the run took.
    pub elapsed_s: f64,
    /// Connections the server closed (or that failed) during the run.
    pub closed_by_server: usize,
    /// The first reason one was closed.
    pub close_reason: Option<String>,
    /// Frames that did not decode or apply, or auth denials.
    pub protocol_errors: u64,
    /// Server memory at the start and end of the run (before the clients disconnect).
    pub server_before: Option<proc::Memory>,
    pub server_after: Option<proc::Memory>,
    /// Server CPU seconds used during the run.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds this process (the load clients) used during the run: on a small machine
    /// the clients compete with the server for the same cores.
    pub client_cpu_s: Option<f64>,
    pub edit: Option<EditReport>,
    pub idle: Option<IdleReport>,
    pub late_join: Option<LateJoinReport>,
}

/// The health of a set of peers, accumulated into a report.
#[derive(Default)]
struct Health {
    closed: usize,
    reason: Option<String>,
    errors: u64,
}

impl Health {
    fn check(&mut self, peers: &[Peer]) {
        for peer in peers {
            self.add(peer);
        }
    }

    fn add(&mut self, peer: &Peer) {
        if let Some(reason) = peer.state.closed() {
            self.closed += 1;
            self.reason.get_or_insert(reason);
        }
        self.errors += peer.state.errors();
    }
}

/// Runs `scenario`. Failures (a refused connection, a missing delivery, a passed deadline) are
/// in the report (`ok: false`, `error`); only a malformed scenario is an `Err`.
pub async fn run(scenario: Scenario) -> anyhow::Result<Report> {
    let began = Instant::now();
    let mut targets = vec![resolve(&scenario.url).await?];
    for url in &scenario.more_urls {
        targets.push(resolve(url).await?);
    }
    let dial = Dial {
        targets,
        read_buffer: match scenario.mode {
            Mode::Idle => 4 * 1024,
            _ => 64 * 1024,
        },
        epoch: Instant::now(),
        timeout: scenario.connect_timeout,
    };
    let pid = scenario.server_pid;
    // CPU time of every server process (the nodes, Redis), summed.
    let server_cpu = || -> Option<Duration> {
        let mut total = proc::cpu(pid?)?;
        for &more in &scenario.more_pids {
            total += proc::cpu(more)?;
        }
        Some(total)
    };
    let cpu_before = server_cpu();
    let own_cpu_before = proc::cpu(std::process::id());
    let mut report = Report {
        scenario: scenario.clone(),
        ok: false,
        error: None,
        elapsed_s: 0.0,
        closed_by_server: 0,
        close_reason: None,
        protocol_errors: 0,
        server_before: pid.and_then(proc::memory),
        server_after: None,
        server_cpu_s: None,
        client_cpu_s: None,
        edit: None,
        idle: None,
        late_join: None,
    };
    let deadline = tokio::time::Instant::now() + scenario.deadline;
    let mut health = Health::default();
    let outcome = tokio::time::timeout_at(deadline, async {
        match scenario.mode {
            Mode::Edit => edit(&scenario, &dial, deadline, &mut report, &mut health).await,
            Mode::Idle => idle(&scenario, &dial, deadline, &mut report, &mut health).await,
            Mode::LateJoin => late_join(&scenario, &dial, deadline, &mut report, &mut health).await,
        }
    })
    .await;
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!(
            "deadline exceeded: the run did not finish within {:?}",
            scenario.deadline
        )),
    };
    if report.server_after.is_none() {
        report.server_after = pid.and_then(proc::memory);
    }
    if let (Some(before), Some(after)) = (cpu_before, server_cpu()) {
        report.server_cpu_s = Some(after.saturating_sub(before).as_secs_f64());
    }
    if let (Some(before), Some(after)) = (own_cpu_before, proc::cpu(std::process::id())) {
        report.client_cpu_s = Some(after.saturating_sub(before).as_secs_f64());
    }
    report.closed_by_server = health.closed;
    report.close_reason = health.reason;
    report.protocol_errors = health.errors;
    report.elapsed_s = began.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            let problem = if health.closed > 0 {
                Some(format!(
                    "{} connection(s) closed by the server",
                    health.closed
                ))
            } else if health.errors > 0 {
                Some(format!("{} protocol error(s)", health.errors))
            } else {
                None
            };
            report.ok = problem.is_none();
            report.error = problem;
        }
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    Ok(report)
}

/// Splits `ws://host:port[/prefix]` into the address to dial and the base of document URLs.
async fn resolve(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let base = url.trim_end_matches('/').to_owned();
    let rest = base
        .strip_prefix("ws://")
        .with_context(|| format!("{url:?} is not a ws:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: the load tool only runs against this machine");
    }
    Ok((addr, base))
}

/// A name for this run's documents, unique per process and run, so runs against one server do
/// not share documents.
fn run_tag(name: &str) -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("load-{clean}-{}-{n}", std::process::id())
}

/// Opens one connection per `(document, doc, inbox)`, at most `concurrency` at once, and waits
/// until each has applied the server's answer to its sync step 1. Returns them in order.
async fn connect_all(
    dial: &Dial,
    wanted: Vec<(String, Doc, Option<Inbox>)>,
    concurrency: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Vec<Peer>> {
    let count = wanted.len();
    let mut opened: Vec<Option<Peer>> = (0..count).map(|_| None).collect();
    let mut stream = futures_util::stream::iter(wanted.into_iter().enumerate().map(
        |(i, (name, doc, inbox))| async move {
            let peer = Peer::connect(dial, i, &name, doc, inbox)
                .await
                .with_context(|| format!("connection {i} (document {name})"))?;
            let sync_by = deadline.min(tokio::time::Instant::now() + dial.timeout);
            if !peer.wait_step2(1, sync_by).await {
                let why = peer
                    .state
                    .closed()
                    .unwrap_or_else(|| format!("no sync step 2 within {:?}", dial.timeout));
                bail!("connection {i} (document {name}) did not sync: {why}");
            }
            anyhow::Ok((i, peer))
        },
    ))
    .buffer_unordered(concurrency.max(1));
    while let Some(result) = stream.next().await {
        let (i, peer) = result?;
        opened[i] = Some(peer);
    }
    Ok(opened.into_iter().flatten().collect())
}

/// Closes every peer, many at once, and returns their inboxes in order.
async fn close_all(peers: Vec<Peer>) -> Vec<Option<Inbox>> {
    futures_util::stream::iter(peers.into_iter().map(Peer::close))
        .buffered(256)
        .collect()
        .await
}

/// The clock `client` has reached in `doc`.
fn clock_of(doc: &Doc, client: ClientID) -> u32 {
    doc.transact().state_vector().get(&client)
}

async fn edit(
    scenario: &Scenario,
    dial: &Dial,
    deadline: tokio::time::Instant,
    report: &mut Report,
    health: &mut Health,
) -> anyhow::Result<()> {
    if scenario.docs == 0 || scenario.clients == 0 {
        bail!("an edit run needs at least one document and one client");
    }
    let trace = match scenario.source {
        Source::Trace => {
            let trace = trace::trace()?;
            if scenario.edits > trace.txns.len() {
                bail!(
                    "{} edits per client, but the trace has {} transactions",
                    scenario.edits,
                    trace.txns.len()
                );
            }
            Some(trace)
        }
        Source::Random => None,
    };
    let tag = run_tag(&scenario.name);
    let outstanding = Arc::new(AtomicI64::new(0));
    let mut ledgers = Vec::with_capacity(scenario.docs);
    let mut wanted = Vec::with_capacity(scenario.docs * scenario.clients);
    // Client ids: distinct within the run, and unlike any other run's in this process.
    let mut next_id = u64::from(spread(&tag)) * 1_000_000;
    for d in 0..scenario.docs {
        let ids: Vec<ClientID> = (0..scenario.clients)
            .map(|_| {
                next_id += 1;
                ClientID::new(next_id)
            })
            .collect();
        let ledger = Arc::new(DocLedger::new(&ids, scenario.edits, outstanding.clone()));
        let name = format!("{tag}-{d}");
        for (c, id) in ids.iter().enumerate() {
            let inbox = Inbox::new(ledger.clone(), c, dial.epoch);
            wanted.push((name.clone(), Doc::with_client_id(id.get()), Some(inbox)));
        }
        ledgers.push(ledger);
    }
    let connecting = Instant::now();
    let peers = connect_all(dial, wanted, scenario.connect_concurrency, deadline).await?;
    let connect_s = connecting.elapsed().as_secs_f64();
    report.server_before = scenario.server_pid.and_then(proc::memory);

    // Every client starts together, its edits spread evenly over the period between two of its
    // edits, so the offered load is smooth rather than in bursts of one edit per client.
    let total = peers.len();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let start_ns = nanos_since(dial.epoch) + 50_000_000;
    let period = (scenario.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / scenario.rate));
    let mut senders = tokio::task::JoinSet::new();
    for (i, peer) in peers.iter().enumerate() {
        let d = i / scenario.clients;
        let c = i % scenario.clients;
        let ledger = ledgers[d].clone();
        let doc = peer.doc.clone();
        let sender = peer.sender();
        let mut editor = edits::Editor::new(
            scenario.source,
            &doc,
            c,
            trace.clone(),
            scenario.seed.wrapping_add(i as u64),
        );
        let edits = scenario.edits;
        let window = scenario.window;
        let drain = scenario.drain;
        let offset = period.map(|p| p.mul_f64(i as f64 / total as f64));
        let epoch = dial.epoch;
        senders.spawn(async move {
            let id = doc.client_id();
            for seq in 0..edits {
                if let (Some(period), Some(offset)) = (period, offset) {
                    tokio::time::sleep_until(start + offset + period * seq as u32).await;
                } else if seq == 0 {
                    tokio::time::sleep_until(start).await;
                }
                if window > 0 && seq >= window {
                    let waited = seq - window;
                    tokio::time::timeout(drain, ledger.wait_complete(c, waited))
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "edit {waited} of client {c} of document {d} did not reach every \
                                 other client within {drain:?}"
                            )
                        })?;
                }
                let update = {
                    let mut txn = doc.transact_mut();
                    editor.edit(&mut txn, seq as u64);
                    txn.encode_update_v1()
                };
                let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
                ledger.publish(c, seq, clock_of(&doc, id), nanos_since(epoch));
                sender
                    .send(frame)
                    .await
                    .with_context(|| format!("client {c} of document {d}, edit {seq}"))?;
            }
            anyhow::Ok(())
        });
    }
    let mut send_error = None;
    while let Some(joined) = senders.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                send_error.get_or_insert(e);
            }
            Err(e) => {
                send_error.get_or_insert(anyhow::anyhow!("a sender task failed: {e}"));
            }
        }
    }
    // Wait for the last deliveries.
    let drain_until = deadline.min(tokio::time::Instant::now() + scenario.drain);
    while outstanding.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < drain_until {
        if peers.iter().any(|p| p.state.closed().is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report.server_after = scenario.server_pid.and_then(proc::memory);
    health.check(&peers);

    // Convergence: every client of a document holds the same texts (and, replaying the trace,
    // the texts the trace produces after the edits each client made).
    let mut divergent = 0;
    for (d, ledger) in ledgers.iter().enumerate() {
        let clients = &peers[d * scenario.clients..(d + 1) * scenario.clients];
        let made = ledger.made();
        let fields: Vec<String> = match scenario.source {
            Source::Trace => (0..scenario.clients).map(edits::trace_field).collect(),
            Source::Random => vec![edits::SHARED_TEXT.to_owned()],
        };
        let expected: Option<Vec<String>> = trace
            .as_ref()
            .map(|t| made.iter().map(|&n| trace::replayed(t, n)).collect());
        let texts = |peer: &Peer| -> Vec<String> {
            let txn = peer.doc.transact();
            fields
                .iter()
                .map(|f| {
                    txn.get_text(f.as_str())
                        .map(|t| t.get_string(&txn))
                        .unwrap_or_default()
                })
                .collect()
        };
        let first = texts(&clients[0]);
        let agree = clients[1..].iter().all(|p| texts(p) == first)
            && expected.as_ref().is_none_or(|e| *e == first);
        if !agree {
            divergent += 1;
        }
    }

    let mut latencies = Vec::new();
    let mut made = 0;
    let mut expected = 0u64;
    for ledger in &ledgers {
        made += ledger.collect(&mut latencies);
        expected += ledger.made().iter().sum::<usize>() as u64 * (scenario.clients as u64 - 1);
    }
    let inboxes = close_all(peers).await;
    let mut delivered = 0;
    let mut last_ns = start_ns;
    for inbox in inboxes.into_iter().flatten() {
        delivered += inbox.delivered;
        last_ns = last_ns.max(inbox.last_ns);
    }
    let duration_s = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let per_s = |n: f64| {
        if duration_s > 0.0 {
            n / duration_s
        } else {
            0.0
        }
    };
    let missing = expected.saturating_sub(delivered);
    report.edit = Some(EditReport {
        edits_made: made,
        deliveries_expected: expected,
        delivered,
        missing,
        fanout: Latency::of_nanos(&mut latencies),
        delivered_per_s: per_s(delivered as f64),
        edits_per_s: per_s(made as f64),
        duration_s,
        connect_s,
        converged: divergent == 0,
        divergent_docs: divergent,
    });
    if let Some(e) = send_error {
        return Err(e);
    }
    if made < scenario.docs * scenario.clients * scenario.edits {
        bail!("only {made} edits were made");
    }
    if missing > 0 {
        bail!(
            "{missing} of {expected} deliveries missing {:?} after the last edit",
            scenario.drain
        );
    }
    if divergent > 0 {
        bail!("{divergent} document(s) did not converge");
    }
    Ok(())
}

/// A number below a million from a string (FNV-1a), to spread client ids of different runs
/// apart.
fn spread(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % 1_000_000
}

async fn idle(
    scenario: &Scenario,
    dial: &Dial,
    deadline: tokio::time::Instant,
    report: &mut Report,
    health: &mut Health,
) -> anyhow::Result<()> {
    let docs = scenario.docs.max(1);
    let tag = run_tag(&scenario.name);
    // One connection first, so what the first connection sets up once (buffers, threads, the
    // document map) is not counted per connection.
    let warm = connect_all(
        dial,
        vec![(format!("{tag}-warm-up"), Doc::new(), None)],
        1,
        deadline,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = scenario.server_pid.and_then(proc::memory);
    report.server_before = before;
    let wanted = (0..scenario.connections)
        .map(|i| (format!("{tag}-{}", i % docs), Doc::new(), None))
        .collect();
    let connecting = Instant::now();
    let peers = connect_all(dial, wanted, scenario.connect_concurrency, deadline).await?;
    let connect_s = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(scenario.hold).await;
    let after = scenario.server_pid.and_then(proc::memory);
    report.server_after = after;
    health.check(&peers);
    health.check(&warm);
    let held = peers.iter().filter(|p| p.state.closed().is_none()).count();
    let n = scenario.connections.max(1) as f64;
    let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
    report.idle = Some(IdleReport {
        connections: scenario.connections,
        held,
        connect_s,
        rss_before_kb: before.rss_kb,
        rss_after_kb: after.rss_kb,
        rss_per_connection_kb: (after.rss_kb as f64 - before.rss_kb as f64) / n,
        anon_per_connection_kb: (after.anon_kb as f64 - before.anon_kb as f64) / n,
    });
    close_all(peers).await;
    close_all(warm).await;
    if held < scenario.connections {
        bail!(
            "{} of {} connections did not hold",
            scenario.connections - held,
            scenario.connections
        );
    }
    Ok(())
}

async fn late_join(
    scenario: &Scenario,
    dial: &Dial,
    deadline: tokio::time::Instant,
    report: &mut Report,
    health: &mut Health,
) -> anyhow::Result<()> {
    let trace = trace::trace()?;
    let txns = scenario
        .preload_txns
        .unwrap_or(trace.txns.len())
        .min(trace.txns.len());
    let full = trace::document(txns)?;
    let name = format!("{}-doc", run_tag(&scenario.name));
    let preloading = Instant::now();
    // The writer stays connected, as the document's author would.
    let writer = connect_all(dial, vec![(name.clone(), Doc::new(), None)], 1, deadline).await?;
    writer[0]
        .send(Message::Sync(SyncMessage::Update(full.update.clone())).encode_v1())
        .await
        .context("send the preloaded document")?;
    // Probes until one sees the whole document: the server has applied it.
    loop {
        let probe = connect_all(dial, vec![(name.clone(), Doc::new(), None)], 1, deadline).await?;
        let done = text_of(&probe[0].doc) == full.text;
        health.check(&probe);
        close_all(probe).await;
        if done {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the preloaded document never reached a client");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let preload_s = preloading.elapsed().as_secs_f64();
    report.server_before = scenario.server_pid.and_then(proc::memory);

    let mut synced_ms = Vec::new();
    let mut received_ms = Vec::new();
    let mut samples = Vec::new();
    let mut matches = true;
    for _ in 0..scenario.joiners.max(1) {
        let began = nanos_since(dial.epoch);
        let joiner = connect_all(dial, vec![(name.clone(), Doc::new(), None)], 1, deadline).await?;
        let (received, applied) = joiner[0].state.last_step2();
        matches &= text_of(&joiner[0].doc) == full.text;
        health.check(&joiner);
        close_all(joiner).await;
        samples.push(applied.saturating_sub(began));
        synced_ms.push(applied.saturating_sub(began) as f64 / 1e6);
        received_ms.push(received.saturating_sub(began) as f64 / 1e6);
    }
    report.server_after = scenario.server_pid.and_then(proc::memory);
    health.check(&writer);
    close_all(writer).await;
    report.late_join = Some(LateJoinReport {
        txns,
        update_bytes: full.update.len(),
        text_chars: full.text.chars().count(),
        preload_s,
        synced_ms,
        received_ms,
        synced: Latency::of_nanos(&mut samples),
        text_matches: matches,
    });
    if !matches {
        bail!("a late joiner's text differs from the document's");
    }
    Ok(())
}

/// The text of the late-join document in `doc`.
fn text_of(doc: &Doc) -> String {
    let txn = doc.transact();
    txn.get_text(trace::FULL_TEXT)
        .map(|t| t.get_string(&txn))
        .unwrap_or_default()
}
