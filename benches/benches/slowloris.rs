//! Slowloris: what half-open requests cost the release server, and how fast it sheds them.
//!
//! Starts `target/release/concord-server` (build it first: `cargo build --release -p
//! concord-server`) in memory, then opens `FLOOD` TCP connections from 127.0.0.1 that each send
//! `GET /doc HTTP/1.1\r\nHost: x\r\n` and nothing more, as an attacker would. Two runs:
//!
//! - default flags: the per-address cap (1,024) holds; the rest are closed at accept;
//! - `--max-sockets-per-address 0 --header-read-timeout 5s`: every connection is held until the
//!   header deadline, so the memory per half-open connection can be read off, and the time from
//!   the deadline of the last one until all are closed.
//!
//! Prints the server's RSS before, with the flood held, and after it was shed. Run with
//! `cargo bench -p concord-benches --bench slowloris`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_benches::ServerProcess;
use concord_benches::load::proc::{raise_nofile, rss_kb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FLOOD: usize = 15_000;
const DEADLINE: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(10);

/// Starts an in-memory server with `args`.
fn start(args: &[&str]) -> Result<ServerProcess> {
    let mut all = vec!["--in-memory"];
    all.extend_from_slice(args);
    ServerProcess::start(&all)
}

/// One scrape of `/metrics`: the value of `series`.
async fn metric(addr: SocketAddr, series: &str) -> Result<f64> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no {series} in /metrics"))
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    while !check().await.unwrap_or(false) {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Opens the flood; each connection's task reports when the server closed it.
async fn flood(addr: SocketAddr) -> Vec<tokio::task::JoinHandle<Option<Instant>>> {
    let mut tasks = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tasks.push(tokio::spawn(async { None }));
            continue;
        };
        tasks.push(tokio::spawn(async move {
            let _ = stream.write_all(b"GET /doc HTTP/1.1\r\nHost: x\r\n").await;
            let mut byte = [0u8; 1];
            // EOF or reset: closed by the server.
            let _ = tokio::time::timeout(DEADLINE, stream.read(&mut byte)).await;
            Some(Instant::now())
        }));
    }
    tasks
}

async fn run(label: &str, args: &[&str], header_timeout: Option<Duration>) -> Result<()> {
    let server = start(args)?;
    let pid = server.pid();
    let addr = server.addr;
    metric(addr, "concord_sockets_open").await?;
    let before = rss_kb(pid).context("rss")?;
    let started = Instant::now();
    let tasks = flood(addr).await;
    let opened = started.elapsed();
    // Held: open on the server, or refused at accept.
    wait_for("the flood to be held or refused", async || {
        let open = metric(addr, "concord_sockets_open").await?;
        let refused = metric(addr, "concord_sockets_refused_total{cap=\"per_address\"}").await?
            + metric(addr, "concord_sockets_refused_total{cap=\"total\"}").await?;
        let timed_out = metric(addr, "concord_sockets_timed_out_total{phase=\"header\"}").await?;
        Ok(open + refused + timed_out >= FLOOD as f64)
    })
    .await?;
    let held = metric(addr, "concord_sockets_open").await?;
    let during = rss_kb(pid).context("rss")?;
    let mut closed_at = Vec::new();
    for task in tasks {
        if let Some(at) = task.await? {
            closed_at.push(at);
        }
    }
    let after_close = rss_kb(pid).context("rss")?;
    let refused = metric(addr, "concord_sockets_refused_total{cap=\"per_address\"}").await?;
    let timed_out = metric(addr, "concord_sockets_timed_out_total{phase=\"header\"}").await?;
    println!("\n{label}: {FLOOD} half-open requests from 127.0.0.1 (opened in {opened:.2?})");
    println!(
        "  held at once: {held}; closed at accept: {refused}; closed at the header deadline: {timed_out}"
    );
    // The allocator gives freed memory back over time, not at once: a second look later.
    tokio::time::sleep(SETTLE).await;
    let settled = rss_kb(pid).context("rss")?;
    let grown = during.saturating_sub(before);
    println!(
        "  server RSS: {before} KiB before, {during} KiB with the flood held (+{grown} KiB), {after_close} KiB once it was shed, {settled} KiB {SETTLE:?} later"
    );
    if held > 1.0 {
        println!(
            "  memory per held half-open connection: {:.1} KiB",
            grown as f64 / (held - 1.0)
        );
    }
    if let Some(timeout) = header_timeout {
        // The last connection was opened at `started + opened`; its deadline is `timeout` later.
        let last_deadline = started + opened + timeout;
        let last_close = closed_at.iter().max().copied().unwrap_or(last_deadline);
        let first_close = closed_at.iter().min().copied().unwrap_or(last_deadline);
        println!(
            "  shed: first close {:.2?} after the flood began, last close {:.2?} after it began ({:.0?} past the last connection's deadline); header timeout {timeout:?}",
            first_close - started,
            last_close - started,
            last_close.saturating_duration_since(last_deadline),
        );
    }
    drop(server);
    Ok(())
}

fn main() -> Result<()> {
    let nofile = raise_nofile().context("raise the open-file limit")?;
    println!("slowloris: open-file limit {nofile} (the server inherits it)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        run("default flags", &[], None).await?;
        run(
            "--max-sockets-per-address 0 --header-read-timeout 5s",
            &[
                "--max-sockets-per-address",
                "0",
                "--header-read-timeout",
                "5s",
            ],
            Some(Duration::from_secs(5)),
        )
        .await
    })
}
