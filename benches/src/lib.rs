//! Shared benchmark inputs: real editing traces turned into the Yjs updates a client would send;
//! and the load tool ([`load`]) behind the `load` and `compare` binaries.

pub mod load;

/// The release server binary the process benches start: `CONCORD_BIN`, or
/// `target/release/concord-server` (build it with `cargo build --release -p concord-server`).
pub fn server_binary() -> std::path::PathBuf {
    std::env::var_os("CONCORD_BIN").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/release/concord-server")
        },
        std::path::PathBuf::from,
    )
}

/// A release server process a bench started ([`server_binary`]): killed, by its handle, when
/// dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: std::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

impl ServerProcess {
    /// Starts the server with `--port 0 --no-static` and `args` (log level `warn`, its log
    /// discarded) and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> anyhow::Result<ServerProcess> {
        use anyhow::Context;
        use std::io::BufRead;
        let binary = server_binary();
        if !binary.is_file() {
            anyhow::bail!(
                "no server binary at {} (cargo build --release -p concord-server)",
                binary.display()
            );
        }
        let child = std::process::Command::new(&binary)
            .args(["--port", "0", "--no-static"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut server = ServerProcess {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
        };
        let stdout = server.child.stdout.take().context("stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(server)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://ADDR`, the base of its document URLs.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Text, TextRef, Transact, TransactionMut};

/// A trace file as it is stored: the text it ends with and its transactions.
#[derive(Deserialize)]
pub(crate) struct Trace {
    #[serde(rename = "endContent")]
    pub(crate) end_content: String,
    pub(crate) txns: Vec<Txn>,
}

/// One transaction of a trace: its patches `(position, deleted, inserted)`, applied in order.
#[derive(Debug, Deserialize)]
pub(crate) struct Txn {
    pub(crate) patches: Vec<(u32, u32, String)>,
}

impl Txn {
    /// Applies the patches to `text` inside `t`, as the editor that recorded them did.
    pub(crate) fn apply(&self, text: &TextRef, t: &mut TransactionMut) {
        for (pos, deleted, inserted) in &self.patches {
            if *deleted > 0 {
                text.remove_range(t, *pos, *deleted);
            }
            if !inserted.is_empty() {
                text.insert(t, *pos, inserted);
            }
        }
    }
}

/// Reads and parses the gzipped trace `file` of `benches/data`.
pub(crate) fn read_trace(file: &str) -> Result<Trace, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(file);
    let gz = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut json)
        .map_err(|e| format!("gunzip {}: {e}", path.display()))?;
    serde_json::from_str(&json).map_err(|e| format!("parse {}: {e}", path.display()))
}

/// A trace replayed through a yrs client: one update per trace transaction (typically one
/// keystroke), as y-websocket would send them, plus the text they must produce.
pub struct TraceUpdates {
    /// Each update wrapped in a y-protocols sync Update message: the exact WebSocket frames.
    pub frames: Vec<Vec<u8>>,
    /// The text the trace ends with.
    pub end_content: String,
}

impl TraceUpdates {
    /// The bare Yjs v1 updates inside the frames: what the server hands its store.
    pub fn updates(&self) -> Vec<Vec<u8>> {
        self.frames
            .iter()
            .map(|frame| match Message::decode_v1(frame) {
                Ok(Message::Sync(SyncMessage::Update(update))) => update,
                other => panic!("trace frames are sync updates, got {other:?}"),
            })
            .collect()
    }
}

/// The client id the trace's edits are made with.
pub const TRACE_CLIENT_ID: u64 = 0x9e37_79b9;

/// Loads a gzipped trace from `benches/data` and replays it into frames.
pub fn load_trace(file: &str) -> TraceUpdates {
    let trace = read_trace(file).unwrap_or_else(|e| panic!("{e}"));

    // A fixed client id, so every run produces the same bytes: a 32-bit value like the ones
    // Yjs (JS) clients pick at random (yrs picks 53-bit ids, a byte or three longer each).
    let doc = Doc::with_client_id(TRACE_CLIENT_ID);
    let text = doc.get_or_insert_text("text");
    let mut frames = Vec::with_capacity(trace.txns.len());
    for txn in &trace.txns {
        let mut t = doc.transact_mut();
        txn.apply(&text, &mut t);
        let update = t.encode_update_v1();
        drop(t);
        frames.push(Message::Sync(SyncMessage::Update(update)).encode_v1());
    }
    assert_eq!(
        text.get_string(&doc.transact()),
        trace.end_content,
        "the replayed trace must produce its end content"
    );
    TraceUpdates {
        frames,
        end_content: trace.end_content,
    }
}

/// Order statistics of a set of durations.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Smallest sample.
    pub min: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl Summary {
    /// Summarises `samples` (nearest-rank percentiles). Panics on an empty set.
    pub fn of(samples: &[Duration]) -> Summary {
        assert!(!samples.is_empty(), "no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        let total: Duration = sorted.iter().sum();
        Summary {
            n: sorted.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
            min: sorted[0],
            mean: total / sorted.len() as u32,
        }
    }

    /// One table row: `label`, then n, min, p50, p90, p99, max and mean in milliseconds.
    pub fn row(&self, label: &str) -> String {
        format!(
            "{label:<44} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            self.n,
            ms(self.min),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            ms(self.mean),
        )
    }

    /// The header matching [`Summary::row`].
    pub fn header(title: &str) -> String {
        format!(
            "{title:<44} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "n", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"
        )
    }
}

/// A duration in milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Bytes of every file under `dir`, recursively: (apparent size = sum of file lengths,
/// allocated size = blocks actually used on disk, what `du` reports).
pub fn dir_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = dir_size(&entry.path())?;
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    Ok((apparent, allocated))
}

/// This disk's durable-write latency: `count` times, appends 4 KiB to a fresh file in `dir` and
/// calls `sync_data` (fdatasync), back to back or, with `pace`, one every `pace` (a stall of
/// the disk then shows in every sample it delays, as it does in a paced stream of requests).
/// Returns one sample per append + sync.
pub fn fdatasync_latency(
    dir: &Path,
    count: usize,
    pace: Option<Duration>,
) -> std::io::Result<Vec<Duration>> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(count);
    let began = Instant::now();
    for i in 0..count {
        // Latency from when the write was due, so time spent behind a stall counts.
        let due = match pace {
            Some(pace) => {
                let due = began + pace * u32::try_from(i).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                due
            }
            None => Instant::now(),
        };
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(due.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(samples)
}

/// CPU time this process has used so far, all threads, user + system (Linux `/proc/self/stat`,
/// assuming the usual 100 clock ticks per second). `None` where unavailable.
pub fn process_cpu() -> Option<Duration> {
    load::proc::cpu(std::process::id())
}

/// Appends `updates` of `doc` to `store` in batches of `batch`, one `append` per batch: what the
/// server's group commit does when that many updates arrive during each flush.
pub fn append_in_batches(
    store: &concord_sled::SledStore,
    doc: &concord_core::DocName,
    updates: &[Vec<u8>],
    batch: usize,
) {
    for chunk in updates.chunks(batch) {
        append_batch(store, doc, chunk);
    }
}

/// Appends `updates` of `doc` to `store` in one `append` and returns what it wrote for `doc`.
pub fn append_batch(
    store: &concord_sled::SledStore,
    doc: &concord_core::DocName,
    updates: &[Vec<u8>],
) -> concord_core::Appended {
    let batch: Vec<concord_core::StoredUpdate> = updates
        .iter()
        .map(|update| concord_core::StoredUpdate {
            doc: doc.clone(),
            update: update.clone(),
        })
        .collect();
    store
        .append(&batch)
        .expect("append")
        .pop()
        .expect("one entry for the document")
}
