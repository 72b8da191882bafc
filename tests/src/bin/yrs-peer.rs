//! A tiny standalone y-websocket peer built on yrs, driven by the Node interop tests.
//!
//! It connects to a y-websocket compatible server, runs the sync handshake, appends `--insert`
//! to a root `Y.Text` once the server's SyncStep2 has arrived, then waits until the text
//! contains every `--expect-contains` string and prints `{"text": "..."}` on stdout.
//!
//! Usage:
//!
//! ```text
//! yrs-peer --url ws://127.0.0.1:PORT/docname [--text-name text] [--insert STRING]
//!          [--expect-contains STRING]... [--timeout-secs 20]
//! ```
//!
//! Exit status: 0 on success, 1 (with a message on stderr) on timeout or any error.
//! All wire encoding and decoding goes through yrs' own sync types: nothing here hand-rolls
//! the lib0 codec.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::encoding::read::Cursor;
use yrs::sync::{Awareness, DefaultProtocol, Message, MessageReader, Protocol, SyncMessage};
use yrs::updates::decoder::DecoderV1;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Origin, ReadTxn, Text, Transact};

/// Origin attached to the transaction of our own insert, so that the update observer only
/// forwards local changes and does not echo what the server sent us.
const LOCAL_ORIGIN: &str = "yrs-peer-local";

struct Args {
    url: String,
    text_name: String,
    insert: Option<String>,
    expect_contains: Vec<String>,
    timeout: Duration,
}

fn parse_args() -> Result<Args> {
    let mut url = None;
    let mut text_name = "text".to_owned();
    let mut insert = None;
    let mut expect_contains = Vec::new();
    let mut timeout_secs: u64 = 20;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("missing value for {flag}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--text-name" => text_name = value()?,
            "--insert" => insert = Some(value()?),
            "--expect-contains" => expect_contains.push(value()?),
            "--timeout-secs" => {
                timeout_secs = value()?
                    .parse()
                    .context("--timeout-secs must be a whole number of seconds")?
            }
            "-h" | "--help" => {
                println!(
                    "usage: yrs-peer --url ws://HOST:PORT/DOC [--text-name NAME] [--insert STR] \
                     [--expect-contains STR]... [--timeout-secs N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Args {
        url: url.context("--url is required")?,
        text_name,
        insert,
        expect_contains,
        timeout: Duration::from_secs(timeout_secs),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match peer().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One readable line (with its causes) rather than anyhow's backtrace dump.
            eprintln!("yrs-peer: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn peer() -> Result<()> {
    let args = parse_args()?;
    let deadline = Instant::now() + args.timeout;
    match tokio::time::timeout_at(deadline, run(&args)).await {
        Ok(result) => result,
        Err(_) => Err(anyhow!(
            "timed out after {:?} waiting for the text to contain {:?}",
            args.timeout,
            args.expect_contains
        )),
    }
}

async fn run(args: &Args) -> Result<()> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text(args.text_name.as_str());

    // Capture local updates only; remote ones are applied without an origin.
    let (update_tx, mut update_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    doc.observe_update_v1("yrs-peer-observer", move |txn, event| {
        if txn.origin() == Some(&Origin::from(LOCAL_ORIGIN)) {
            // The receiver lives until the end of `run`; a failed send only means we are done.
            let _ = update_tx.send(event.update.clone());
        }
    })
    .map_err(|e| anyhow!("cannot subscribe to document updates: {e}"))?;

    let mut awareness = Awareness::new(doc);
    awareness
        .set_local_state(serde_json::json!({ "user": { "name": "yrs-peer" } }))
        .context("cannot set the local awareness state")?;
    let protocol = DefaultProtocol;

    let (ws, _response) =
        tokio_tungstenite::connect_async_with_config(args.url.as_str(), None, true)
            .await
            .with_context(|| format!("cannot connect to {}", args.url))?;
    let (mut sink, mut stream) = ws.split();

    // Like the y-websocket provider: SyncStep1, then our awareness state, one message per frame.
    let step1 = {
        let txn = awareness.doc().transact();
        Message::Sync(SyncMessage::SyncStep1(txn.state_vector()))
    };
    let hello = Message::Awareness(awareness.update().context("cannot encode awareness")?);
    for msg in [step1, hello] {
        sink.send(WsMessage::Binary(msg.encode_v1().into()))
            .await
            .context("cannot send the handshake")?;
    }

    let mut synced = false;
    let mut inserted = args.insert.is_none();
    loop {
        if synced && !inserted {
            {
                let mut txn = awareness.doc().transact_mut_with(LOCAL_ORIGIN);
                let end = text.len(&txn);
                text.insert(&mut txn, end, args.insert.as_deref().unwrap_or_default());
            }
            inserted = true;
        }
        while let Ok(update) = update_rx.try_recv() {
            let msg = Message::Sync(SyncMessage::Update(update));
            sink.send(WsMessage::Binary(msg.encode_v1().into()))
                .await
                .context("cannot send an update")?;
        }
        if synced && inserted {
            let current = text.get_string(&awareness.doc().transact());
            if args
                .expect_contains
                .iter()
                .all(|s| current.contains(s.as_str()))
            {
                println!("{}", serde_json::json!({ "text": current }));
                // Best effort: say goodbye properly, but do not wait long for the server's echo.
                let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                return Ok(());
            }
        }

        let frame = match stream.next().await {
            Some(frame) => frame.context("websocket error")?,
            None => bail!("the server closed the connection before the text matched"),
        };
        let data = match frame {
            WsMessage::Binary(data) => data,
            WsMessage::Close(close) => {
                bail!("the server closed the connection before the text matched: {close:?}")
            }
            // Pings are answered by tungstenite itself; nothing else carries protocol data.
            _ => continue,
        };
        let mut decoder = DecoderV1::new(Cursor::new(&data));
        for msg in MessageReader::new(&mut decoder) {
            let msg = msg.context("cannot decode a message from the server")?;
            if matches!(msg, Message::Sync(SyncMessage::SyncStep2(_))) {
                synced = true;
            }
            let reply = protocol
                .handle_message(&mut awareness, msg)
                .context("cannot apply a message from the server")?;
            if let Some(reply) = reply {
                sink.send(WsMessage::Binary(reply.encode_v1().into()))
                    .await
                    .context("cannot send a reply")?;
            }
        }
    }
}
