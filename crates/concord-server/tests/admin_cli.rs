//! The `concord-server docs ...` admin commands, run as a user would: the real binary on a data
//! directory a real server wrote (and is stopped on), checking exit codes, stdout and stderr.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

mod common;

use common::ServerProcess;
use concord_server::concord_core::{MSG_SAVED, encode_saved};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Map, ReadTxn, Text, Transact, Update};

const DEADLINE: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_concord-server");

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs `concord-server docs --data-dir DIR ARGS...`, with `stdin` as its input if given.
async fn docs(data_dir: &Path, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("docs")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Some(path) => command.stdin(std::fs::File::open(path).unwrap()),
        None => command.stdin(Stdio::null()),
    };
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("docs {args:?} did not finish"))
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed with {}: stderr {:?}",
        output.status,
        stderr(output)
    );
}

/// Requires a failure (non-zero exit) whose stderr mentions `message`.
#[track_caller]
fn assert_fails_with(output: &Output, what: &str, message: &str) {
    assert!(
        !output.status.success(),
        "{what} should fail; stdout {:?}, stderr {:?}",
        stdout(output),
        stderr(output)
    );
    assert!(
        stderr(output).contains(message),
        "{what}: stderr {:?} does not say {message:?}",
        stderr(output)
    );
}

/// `docs list` as (name, snapshot bytes, log entries) rows.
async fn list(data_dir: &Path) -> Vec<(String, u64, u64)> {
    let output = docs(data_dir, &["list"], None).await;
    assert_ok(&output, "docs list");
    let text = stdout(&output);
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("name"), "{text}");
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 6, "unexpected list line {line:?}");
            (
                fields[0].to_owned(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
        })
        .collect()
}

fn names(rows: &[(String, u64, u64)]) -> Vec<&str> {
    rows.iter().map(|(name, _, _)| name.as_str()).collect()
}

/// What the test compares of a document: its text `t` and its map `m` (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    text: String,
    map: BTreeMap<String, String>,
}

/// The content of a document given as a v1 update.
fn content(update: &[u8]) -> Content {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("an exported document decodes"))
        .expect("an exported document applies");
    let txn = doc.transact();
    assert!(!txn.has_missing_updates(), "the export is complete");
    Content {
        text: text.get_string(&txn),
        map: map
            .iter(&txn)
            .map(|(key, value)| (key.to_owned(), value.to_string(&txn)))
            .collect(),
    }
}

async fn connect(url: &str) -> Ws {
    tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect")
        .0
}

fn messages(data: &[u8]) -> Vec<Message> {
    let mut decoder = DecoderV1::new(Cursor::new(data));
    MessageReader::new(&mut decoder)
        .collect::<Result<_, _>>()
        .expect("server frames decode")
}

/// Reads until `done` accepts a message of the server.
async fn read_until(ws: &mut Ws, mut done: impl FnMut(Message) -> bool) {
    let wait = async {
        while let Some(item) = ws.next().await {
            if let WsMessage::Binary(data) = item.expect("read") {
                for message in messages(&data) {
                    if done(message) {
                        return;
                    }
                }
            }
        }
        panic!("the connection ended early");
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("the expected message within the deadline");
}

/// Writes the document `doc` in several updates, then waits for the save acknowledgement.
/// Returns the document's whole state.
async fn write_document(url: &str) -> Vec<u8> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let mut ws = connect(url).await;
    for (i, piece) in ["hello ", "from ", "the admin test"].iter().enumerate() {
        let update = {
            let mut txn = doc.transact_mut();
            let end = text.len(&txn);
            text.insert(&mut txn, end, piece);
            map.insert(&mut txn, format!("k{i}"), *piece);
            txn.encode_update_v1()
        };
        let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
        ws.send(WsMessage::Binary(frame.into())).await.unwrap();
    }
    ws.send(WsMessage::Binary(encode_saved(42))).await.unwrap();
    read_until(&mut ws, |message| match message {
        Message::Custom(MSG_SAVED, payload) => {
            Cursor::new(&payload).read_var::<u64>().unwrap() == 42
        }
        _ => false,
    })
    .await;
    let _ = ws.close(None).await;
    let txn = doc.transact();
    txn.encode_state_as_update_v1(&yrs::StateVector::default())
}

/// What a fresh client syncing with the server receives, as a v1 update.
async fn read_document(url: &str) -> Vec<u8> {
    let mut ws = connect(url).await;
    let step1 = Message::Sync(SyncMessage::SyncStep1(yrs::StateVector::default())).encode_v1();
    ws.send(WsMessage::Binary(step1.into())).await.unwrap();
    let mut state = None;
    read_until(&mut ws, |message| match message {
        Message::Sync(SyncMessage::SyncStep2(update)) => {
            state = Some(update);
            true
        }
        _ => false,
    })
    .await;
    let _ = ws.close(None).await;
    state.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_commands_list_export_import_compact_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let alpha = "notes/alpha";
    let beta = "notes/beta";

    let server = ServerProcess::start(&data, &log, &[]).await;
    let written = content(&write_document(&server.url(alpha)).await);
    assert_eq!(written.text, "hello from the admin test");
    assert_eq!(written.map.len(), 3, "{written:?}");

    // sled locks the directory: an admin command cannot open it while the server runs.
    let busy = docs(&data, &["list"], None).await;
    assert_fails_with(
        &busy,
        "docs list while the server runs",
        "is the server still running?",
    );
    server.stop().await;

    let rows = list(&data).await;
    assert_eq!(names(&rows), [alpha], "{rows:?}");
    assert!(rows[0].2 >= 1, "the document has log entries: {rows:?}");

    let export = docs(&data, &["export", alpha], None).await;
    assert_ok(&export, "docs export");
    assert_eq!(content(&export.stdout), written);
    let file = dir.path().join("alpha.bin");
    std::fs::write(&file, &export.stdout).unwrap();

    let import = docs(&data, &["import", beta], Some(&file)).await;
    assert_ok(&import, "docs import");
    assert_eq!(names(&list(&data).await), [alpha, beta]);
    let beta_export = docs(&data, &["export", beta], None).await;
    assert_ok(&beta_export, "docs export of the imported document");
    assert_eq!(content(&beta_export.stdout), written);

    let compact = docs(&data, &["compact"], None).await;
    assert_ok(&compact, "docs compact");
    assert!(
        stderr(&compact).contains("compacted"),
        "{}",
        stderr(&compact)
    );
    let rows = list(&data).await;
    for (name, snapshot, log_entries) in &rows {
        assert!(
            *snapshot > 0 && *log_entries == 0,
            "{name} is compacted: {rows:?}"
        );
    }
    for name in [alpha, beta] {
        let again = docs(&data, &["export", name], None).await;
        assert_ok(&again, "docs export after compaction");
        assert_eq!(content(&again.stdout), written, "{name} after compaction");
    }
    // Compacting one named document works too (and again is harmless).
    assert_ok(
        &docs(&data, &["compact", alpha], None).await,
        "docs compact NAME",
    );

    let delete = docs(&data, &["delete", alpha], None).await;
    assert_ok(&delete, "docs delete");
    assert_eq!(names(&list(&data).await), [beta]);

    // Errors: non-zero exit and a message that says what is wrong.
    for (args, message) in [
        (&["export", alpha][..], "no document named"),
        (&["delete", alpha][..], "no document named"),
        (&["compact", "nope"][..], "no document named"),
        (&["export", ""][..], "bad document name"),
        (&["export", "a\u{7}b"][..], "bad document name"),
        (&["delete", "bad\nname"][..], "bad document name"),
    ] {
        let output = docs(&data, args, None).await;
        assert_fails_with(&output, &format!("docs {args:?}"), message);
    }
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, [0xff, 0xff, 0xff, 0x01]).unwrap();
    let output = docs(&data, &["import", "notes/gamma"], Some(&garbage)).await;
    assert_fails_with(
        &output,
        "docs import of garbage",
        "not a valid Yjs v1 update",
    );
    assert_eq!(
        names(&list(&data).await),
        [beta],
        "a refused import creates nothing"
    );
    let missing = dir.path().join("no-such-dir");
    let output = docs(&missing, &["list"], None).await;
    assert_fails_with(
        &output,
        "docs list without a data directory",
        "no data directory",
    );
    assert!(
        !missing.exists(),
        "a failed admin command creates no directory"
    );

    // The server sees what the admin commands did.
    let server = ServerProcess::start(&data, &log, &[]).await;
    assert_eq!(content(&read_document(&server.url(beta)).await), written);
    let gone = content(&read_document(&server.url(alpha)).await);
    assert_eq!(gone.text, "", "the deleted document is empty");
    server.stop().await;
}
