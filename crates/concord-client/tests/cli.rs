//! The `concord` binary against a real Concord server: put, cat, watch, tokens, and the
//! `docs` commands over the HTTP API (documents, versions, restore).
//!
//! The server runs in this test process, through the same `concord_server::run` its binary
//! calls, on an ephemeral loopback port; the `concord` binary under test is this package's own
//! (`CARGO_BIN_EXE_concord`), so the tests need no earlier build of another package.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use concord_client::{Presence, Provider, ProviderConfig, User};
use concord_server::auth::{Authorizer, Claims, JwtAuthorizer, Permission, TokenSigner, unix_now};
use concord_server::{Config, ServerError};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long anything here may take before the test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// The key tokens are signed and checked with, on servers that require them.
const SECRET: &[u8] = b"a secret only this test knows";

fn concord_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_concord"))
}

/// A Concord server on an ephemeral loopback port with an in-memory store, on a runtime of its
/// own so the tests themselves stay synchronous (they drive child processes). Dropping it
/// cancels its shutdown token, also when a test panics; [`Server::stop`] also checks that it
/// stopped cleanly.
struct Server {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    url: String,
}

impl Server {
    /// Starts a server; with an authorizer, connections need a token it accepts. It answers
    /// as soon as this returns: the listener is bound, so connections queue until it accepts.
    fn start(authorizer: Option<Arc<dyn Authorizer>>) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot build the server's runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("cannot bind a loopback port");
        let address = listener.local_addr().expect("the listener's address");
        let config = Config {
            authorizer,
            ..Config::default()
        };
        let shutdown = CancellationToken::new();
        let task = runtime.spawn(concord_server::run(listener, config, shutdown.clone()));
        Server {
            runtime,
            shutdown,
            task: Some(task),
            url: format!("ws://{address}"),
        }
    }

    /// A server that requires HS256 tokens signed with [`SECRET`].
    fn with_tokens() -> Server {
        let authorizer = JwtAuthorizer::hs256(SECRET).expect("a valid secret");
        Server::start(Some(Arc::new(authorizer)))
    }

    /// Shuts the server down and requires `run` to return without an error in time.
    fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("stopped once");
        // The timer is made inside the runtime: it needs the runtime's time driver.
        let stopped = self
            .runtime
            .block_on(async { tokio::time::timeout(DEADLINE, task).await });
        match stopped {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("the server failed: {e}"),
            Ok(Err(e)) => panic!("the server task panicked: {e}"),
            Err(_) => panic!("the server did not stop within {DEADLINE:?}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // After a failed test: close the connections and let the runtime's drop end the rest.
        self.shutdown.cancel();
    }
}

/// The lines of a child's stdout, read on a thread, so a test can wait for one with a deadline.
fn line_reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// What a finished `concord` run said.
#[derive(Debug)]
struct Run {
    success: bool,
    /// The exit status (None when killed by a signal).
    code: Option<i32>,
    stdout: String,
    /// Stdout as bytes (`stdout` is its lossy UTF-8 reading).
    stdout_bytes: Vec<u8>,
    stderr: String,
    took: Duration,
}

/// Runs `concord ARGS` with `stdin` and extra environment, to completion (killed, and the test
/// failed, after [`DEADLINE`]).
fn concord(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(concord_bin())
        .args(args)
        .env_remove("CONCORD_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start concord");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_owned();
    // Written on a thread: a child that does not read stdin must not block the test.
    thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let read_all = |mut from: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for concord") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("concord {args:?} did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout_bytes = stdout.join().unwrap_or_default();
    Run {
        success: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
        stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
        took: started.elapsed(),
    }
}

/// Runs `concord ARGS` and requires success.
fn concord_ok(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let run = concord(args, stdin, env);
    assert!(run.success, "concord {args:?} failed: {run:?}");
    run
}

/// The JSON `concord cat` printed.
fn cat_json(url: &str, doc: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = vec!["cat", url, doc, "--types", "text:content"];
    args.extend_from_slice(extra);
    let run = concord_ok(&args, "", env);
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("cat printed no JSON ({e}): {run:?}"))
}

/// A port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn put_replaces_the_text_and_cat_reads_it_back() {
    let server = Server::start(None);
    let url = server.url.as_str();
    let first = "hello\nworld — ü 漢 😀\n";
    let put = concord_ok(&["put", url, "notes", "--text", "content"], first, &[]);
    assert!(
        put.stdout.is_empty(),
        "put prints nothing on stdout: {put:?}"
    );
    assert!(put.stderr.contains("saved"), "{put:?}");
    assert_eq!(cat_json(url, "notes", &[], &[]), json!({"content": first}));

    // A second put replaces the text (one delete-all and insert), it does not append.
    concord_ok(&["put", url, "notes", "--text", "content"], "second", &[]);
    assert_eq!(
        cat_json(url, "notes", &[], &[]),
        json!({"content": "second"})
    );

    // The same text again changes nothing.
    let again = concord_ok(&["put", url, "notes", "--text", "content"], "second", &[]);
    assert!(again.stderr.contains("unchanged"), "{again:?}");

    // --pretty prints the same JSON, indented.
    let pretty = concord_ok(
        &["cat", url, "notes", "--types", "text:content", "--pretty"],
        "",
        &[],
    );
    assert!(pretty.stdout.contains("\n  \"content\""), "{pretty:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&pretty.stdout).unwrap(),
        json!({"content": "second"})
    );

    // Without a hint, a text root a client only received is still read as its string.
    let unhinted = concord_ok(&["cat", url, "notes"], "", &[]);
    let unhinted: Value = serde_json::from_str(unhinted.stdout.trim()).unwrap();
    assert_eq!(unhinted, json!({"content": "second"}));

    // Empty stdin empties the text.
    concord_ok(&["put", url, "notes", "--text", "content"], "", &[]);
    assert_eq!(cat_json(url, "notes", &[], &[]), json!({"content": ""}));

    // A document nobody wrote is empty.
    assert_eq!(
        cat_json(url, "nothing-here", &[], &[]),
        json!({"content": ""})
    );
    server.stop();
}

#[test]
fn cat_fails_with_a_message_when_it_cannot_sync() {
    let port = unused_port();
    let url = format!("ws://127.0.0.1:{port}");
    // Long enough for the first connection attempt to have been refused even on a loaded
    // machine, so the reason given is that refusal and not "still connecting".
    let run = concord(&["cat", &url, "d", "--timeout", "5s"], "", &[]);
    assert!(!run.success, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(
        run.stderr.contains("cannot sync") && run.stderr.contains("within 5s"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("cannot connect"),
        "the last reason: {run:?}"
    );
    assert!(
        run.took < Duration::from_secs(20),
        "bounded by --timeout: {run:?}"
    );

    let run = concord(&["cat", "http://127.0.0.1:1", "d"], "", &[]);
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("not a WebSocket URL"), "{run:?}");

    let run = concord(&["cat", &url, "d", "--types", "blob:x"], "", &[]);
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("blob"), "{run:?}");
}

/// Lines of a running `concord watch`, read with a deadline.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

impl Watch {
    fn start(url: &str, doc: &str) -> Watch {
        let mut child = Command::new(concord_bin())
            .args(["watch", url, doc, "--types", "text:content"])
            .env_remove("CONCORD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start concord watch");
        let lines = line_reader(child.stdout.take().expect("piped stdout"));
        Watch {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line matching `wanted`, skipping others (all kept in `seen`).
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!("no {what} from watch ({e}); it printed {:#?}", self.seen),
            };
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("watch printed a line that is not JSON ({e}): {line:?}")
            });
            self.seen.push(value.clone());
            if wanted(&value) {
                return value;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_changes_presence_and_status_and_stops_on_sigterm() {
    let server = Server::start(None);
    let url = server.url.as_str();
    concord_ok(&["put", url, "live", "--text", "content"], "v1", &[]);

    let mut watch = Watch::start(url, "live");
    watch.wait_for("synced status", |v| {
        *v == json!({"type": "status", "status": "synced"})
    });
    watch.wait_for("the initial doc line", |v| {
        *v == json!({"type": "doc", "json": {"content": "v1"}})
    });

    concord_ok(&["put", url, "live", "--text", "content"], "v2", &[]);
    watch.wait_for("the doc line after a put", |v| {
        *v == json!({"type": "doc", "json": {"content": "v2"}})
    });

    // A peer with a presence joins, changes it and leaves.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peer = runtime
        .block_on(Provider::start(ProviderConfig::new(url, "live")))
        .unwrap();
    let id = peer.client_id();
    peer.set_presence(&Presence {
        user: Some(User {
            name: "Ada".into(),
            color: Some("#d33682".into()),
        }),
        ..Presence::default()
    });
    let joined = watch.wait_for("the peer joining", |v| {
        v["type"] == "presence" && v["event"] == "joined" && v["client"] == id
    });
    assert_eq!(joined["state"]["user"]["name"], "Ada", "{joined}");
    peer.update_presence(|p| p.user.as_mut().unwrap().name = "Ada L.".into());
    watch.wait_for("the peer's update", |v| {
        v["event"] == "updated" && v["client"] == id && v["state"]["user"]["name"] == "Ada L."
    });
    runtime.block_on(peer.close());
    watch.wait_for("the peer leaving", |v| {
        v["event"] == "left" && v["client"] == id
    });

    // SIGTERM ends it cleanly.
    let pid = watch.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = watch.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "watch did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "watch exits 0 on SIGTERM: {status}");
    server.stop();
}

/// A token signed with [`SECRET`] granting `permission` on `doc`, valid for an hour.
fn mint(doc: &str, permission: Permission) -> String {
    let claims = Claims {
        exp: unix_now() + 3600,
        sub: Some("cli-test".into()),
        docs: BTreeMap::from([(doc.to_owned(), permission)]),
    };
    TokenSigner::hs256(SECRET)
        .expect("a valid secret")
        .sign(&claims)
        .expect("cannot sign a token")
}

#[test]
fn tokens_open_the_document_and_their_absence_is_a_clear_failure() {
    let server = Server::with_tokens();
    let url = server.url.as_str();
    let token = mint("d", Permission::Write);

    concord_ok(
        &["put", url, "d", "--text", "content", "--token", &token],
        "secret",
        &[],
    );
    // The token may come from the environment.
    assert_eq!(
        cat_json(url, "d", &[], &[("CONCORD_TOKEN", &token)]),
        json!({"content": "secret"})
    );

    // No token: the server's 401 ends the attempt at once, not after the timeout.
    let run = concord(&["cat", url, "d", "--timeout", "20s"], "", &[]);
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr.contains("401"),
        "the server's refusal is shown: {run:?}"
    );
    assert!(
        run.took < Duration::from_secs(15),
        "a refusal is final: {run:?}"
    );

    // A token for another document is refused too.
    let run = concord(
        &["cat", url, "other", "--token", &token, "--timeout", "3s"],
        "",
        &[],
    );
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("cannot open"), "{run:?}");
    server.stop();
}

/// A read-only token lets `put` connect, but the server refuses the edit: `put` must not say
/// it was saved. (The server answers the save request of a read-only connection too; the
/// provider has to tell a refused edit from a stored one.)
#[test]
fn put_with_a_read_only_token_fails() {
    let server = Server::with_tokens();
    let url = server.url.as_str();
    let writer = mint("d", Permission::Write);
    let reader = mint("d", Permission::Read);
    concord_ok(
        &["put", url, "d", "--text", "content", "--token", &writer],
        "kept",
        &[],
    );

    let run = concord(
        &[
            "put",
            url,
            "d",
            "--text",
            "content",
            "--token",
            &reader,
            "--timeout",
            "3s",
        ],
        "overwritten?",
        &[],
    );
    assert_eq!(
        cat_json(url, "d", &["--token", &reader], &[]),
        json!({"content": "kept"}),
        "the server refused the edit"
    );
    assert!(
        !run.success,
        "put reported success although the server refused the edit: {run:?}"
    );
    assert!(
        run.stderr.contains("read-only"),
        "the failure names the server's reason: {run:?}"
    );
    server.stop();
}

/// Runs `concord ARGS` and requires it to fail with status 1 and a message on stderr holding
/// every one of `says`.
fn concord_fails(args: &[&str], env: &[(&str, &str)], says: &[&str]) -> Run {
    let run = concord(args, "", env);
    assert_eq!(run.code, Some(1), "concord {args:?} must fail: {run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line on stderr: {run:?}");
    for said in says {
        assert!(run.stderr.contains(said), "{said:?} in {run:?}");
    }
    run
}

/// The id in `saved version ID of ...` or `... the state before is version ID: ...`.
fn version_id_after(text: &str, marker: &str) -> String {
    let rest = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text:?}"))
        + marker.len()..];
    let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(!id.is_empty(), "no id after {marker:?} in {text:?}");
    id
}

/// The rows of `docs versions`, as (id, created, bytes, position, label).
fn version_rows(url: &str, doc: &str) -> Vec<(String, String, u64, String, String)> {
    let run = concord_ok(&["docs", "versions", url, doc], "", &[]);
    let mut lines = run.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["id", "created", "(UTC)", "bytes", "position", "label"],
        "{run:?}"
    );
    lines
        .map(|line| {
            let mut cells = line.split_whitespace();
            let mut next = || {
                cells
                    .next()
                    .unwrap_or_else(|| panic!("{line:?}"))
                    .to_owned()
            };
            let (id, created, bytes, position) = (next(), next(), next(), next());
            let label = cells.collect::<Vec<_>>().join(" ");
            (id, created, bytes.parse().unwrap(), position, label)
        })
        .collect()
}

#[test]
fn docs_versions_are_saved_listed_read_restored_and_deleted() {
    let server = Server::start(None);
    let url = server.url.as_str();
    concord_ok(&["put", url, "notes", "--text", "content"], "first", &[]);

    let saved = concord_ok(
        &["docs", "save-version", url, "notes", "first draft"],
        "",
        &[],
    );
    assert!(saved.stdout.starts_with("saved version "), "{saved:?}");
    assert!(saved.stdout.contains("first draft"), "{saved:?}");
    let draft = version_id_after(&saved.stdout, "saved version ");
    concord_ok(&["put", url, "notes", "--text", "content"], "second", &[]);

    // Listed with a UTC time, size, position and label (automatic versions may come too).
    let rows = version_rows(url, "notes");
    let row = rows
        .iter()
        .find(|row| row.0 == draft)
        .unwrap_or_else(|| panic!("version {draft} not listed: {rows:?}"));
    assert_eq!(row.4, "first draft", "{rows:?}");
    assert!(row.2 > 0, "{rows:?}");
    assert!(
        row.1.len() == 20 && row.1.ends_with('Z') && row.1.as_bytes()[10] == b'T',
        "ISO-8601 UTC: {rows:?}"
    );
    assert!(row.3.contains('.'), "a position SEQ.INDEX: {rows:?}");
    assert!(
        rows.iter().all(|row| !row.4.is_empty()),
        "labels or (automatic): {rows:?}"
    );

    // The version reads as it was, as JSON (like cat) and as a Yjs update.
    let version = concord_ok(
        &[
            "docs",
            "version",
            url,
            "notes",
            &draft,
            "--types",
            "text:content",
        ],
        "",
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(version.stdout.trim()).unwrap(),
        json!({"content": "first"})
    );
    let update = concord_ok(
        &[
            "docs", "version", url, "notes", &draft, "--format", "update",
        ],
        "",
        &[],
    );
    assert_eq!(
        concord_core::json::state_json(&update.stdout_bytes, &[]).unwrap(),
        json!({"content": "first"}),
        "{update:?}"
    );

    // Restore: the document is the version again; the state before is kept as a version.
    let restored = concord_ok(&["docs", "restore", url, "notes", &draft], "", &[]);
    assert!(
        restored
            .stdout
            .contains(&format!("restored \"notes\" to version {draft}")),
        "{restored:?}"
    );
    let before = version_id_after(&restored.stdout, "the state before is version ");
    assert_eq!(
        cat_json(url, "notes", &[], &[]),
        json!({"content": "first"})
    );
    let rows = version_rows(url, "notes");
    assert!(
        rows.iter()
            .any(|row| row.0 == before && row.4 == format!("before restoring version {draft}")),
        "{rows:?}"
    );

    // Restoring that undoes the restore; once more changes nothing.
    concord_ok(&["docs", "restore", url, "notes", &before], "", &[]);
    assert_eq!(
        cat_json(url, "notes", &[], &[]),
        json!({"content": "second"})
    );
    let again = concord_ok(&["docs", "restore", url, "notes", &before], "", &[]);
    assert!(again.stdout.contains("unchanged"), "{again:?}");

    // An unknown version: the server's 404 and reason, status 1.
    concord_fails(
        &["docs", "restore", url, "notes", "987654"],
        &[],
        &[
            "cannot restore version 987654 of \"notes\"",
            "404",
            "no version 987654",
        ],
    );
    concord_fails(
        &["docs", "version", url, "notes", "987654"],
        &[],
        &["404", "no version 987654"],
    );

    // The document list counts the versions.
    let rows = version_rows(url, "notes");
    let list = concord_ok(&["docs", "list", url], "", &[]);
    let mut lines = list.stdout.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "name", "snapshot", "log", "log", "bytes", "versions", "history", "bytes"
        ],
        "{list:?}"
    );
    let notes: Vec<&str> = lines
        .find(|line| line.starts_with("notes "))
        .unwrap_or_else(|| panic!("notes not listed: {list:?}"))
        .split_whitespace()
        .collect();
    assert_eq!(notes[4], rows.len().to_string(), "{list:?} {rows:?}");
    let history: u64 = rows.iter().map(|row| row.2).sum();
    assert_eq!(notes[5], history.to_string(), "{list:?} {rows:?}");

    // Delete: gone from the list, and a second delete fails.
    let deleted = concord_ok(&["docs", "delete-version", url, "notes", &draft], "", &[]);
    assert!(
        deleted
            .stderr
            .contains(&format!("deleted version {draft} of \"notes\"")),
        "{deleted:?}"
    );
    assert!(
        version_rows(url, "notes").iter().all(|row| row.0 != draft),
        "deleted"
    );
    concord_fails(
        &["docs", "delete-version", url, "notes", &draft],
        &[],
        &["404"],
    );
    assert_eq!(
        cat_json(url, "notes", &[], &[]),
        json!({"content": "second"})
    );

    // The server's other refusals, and usage errors (status 2).
    concord_fails(
        &["docs", "versions", url, "nothing-here"],
        &[],
        &["404", "no document"],
    );
    concord_fails(
        &["docs", "save-version", url, "notes", "  "],
        &[],
        &["400", "label"],
    );
    let usage = concord(&["docs", "restore", url, "notes", "latest"], "", &[]);
    assert_eq!(usage.code, Some(2), "{usage:?}");
    server.stop();
}

#[test]
fn docs_commands_send_the_token_and_show_refusals() {
    let server = Server::with_tokens();
    let url = server.url.as_str();
    let writer = mint("d", Permission::Write);
    let reader = mint("d", Permission::Read);
    concord_ok(
        &["put", url, "d", "--text", "content", "--token", &writer],
        "kept",
        &[],
    );
    // The token may come from the environment, as for the other commands.
    let saved = concord_ok(
        &["docs", "save-version", url, "d", "v1"],
        "",
        &[("CONCORD_TOKEN", &writer)],
    );
    let id = version_id_after(&saved.stdout, "saved version ");

    // A read-only token lists and reads versions, but cannot make, restore or delete one.
    let listed = concord_ok(&["docs", "versions", url, "d", "--token", &reader], "", &[]);
    assert!(listed.stdout.contains("v1"), "{listed:?}");
    for args in [
        vec!["save-version", url, "d", "v2"],
        vec!["restore", url, "d", &id],
        vec!["delete-version", url, "d", &id],
    ] {
        let mut args = [&["docs"][..], &args].concat();
        args.extend(["--token", &reader]);
        concord_fails(&args, &[], &["403", "read-only"]);
    }
    // Listing documents needs a token granting "*"; no token at all is a 401.
    concord_fails(&["docs", "list", url, "--token", &writer], &[], &["403"]);
    concord_fails(&["docs", "versions", url, "d"], &[], &["401"]);

    // No server there: a clear failure within the timeout.
    let gone = format!("http://127.0.0.1:{}", unused_port());
    let run = concord_fails(
        &["docs", "versions", &gone, "d", "--timeout", "5s"],
        &[],
        &["cannot list the versions of \"d\"", "no answer from"],
    );
    assert!(run.took < Duration::from_secs(20), "{run:?}");
    server.stop();
}
