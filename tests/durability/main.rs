//! The sled store's durability contract against a real SIGKILL: every `append` that returned
//! before the writing process was killed is there when the store is reopened.
//!
//! The writer is this package's `sled-appender` binary, so `cargo test` builds it for these
//! tests (`CARGO_BIN_EXE_sled-appender`); no earlier build step is needed.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use concord_core::DocName;
use concord_sled::SledStore;

/// How long the writer may take to confirm its appends before the test fails instead of
/// hanging. Generous: a passing run on a loaded two-core machine takes a fraction of it.
const DEADLINE: Duration = Duration::from_secs(60);

/// How many appends must have returned before the kill. The writer keeps appending while the
/// test reads its output, so the kill lands in the middle of a later append.
const CONFIRMED_BEFORE_KILL: u32 = 300;

/// SIGKILL's number on every Unix.
const SIGKILL: i32 = 9;

/// The writer process, killed when dropped (also when the test panics).
struct Writer {
    child: Child,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn appends_that_returned_survive_sigkill() {
    appends_survive_sigkill(&[]);
}

/// With sled's periodic flush off, only the journal (one `write` per append) can keep them.
#[test]
fn appends_survive_sigkill_through_the_journal_alone() {
    appends_survive_sigkill(&["--no-background-flush"]);
}

fn appends_survive_sigkill(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer {
        child: Command::new(env!("CARGO_BIN_EXE_sled-appender"))
            .arg(dir.path())
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start sled-appender"),
    };
    // Read on threads, so the test waits with a deadline and can show stderr on failure.
    let (tx, lines) = mpsc::channel();
    let stdout = writer.child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stderr = writer.child.stderr.take().expect("piped stderr");
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + DEADLINE;
    let mut confirmed: Option<u32> = None;
    while confirmed.is_none_or(|n| n < CONFIRMED_BEFORE_KILL) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!(
                "the writer confirmed only {confirmed:?} appends within {DEADLINE:?}, \
                 not {CONFIRMED_BEFORE_KILL}"
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = writer.child.wait().expect("cannot wait for the writer");
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "the writer stopped by itself ({status}) after {confirmed:?} appends: {stderr}"
                );
            }
        };
        let n: u32 = line
            .strip_prefix("appended ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line from the writer: {line:?}"));
        let expected = confirmed.map_or(0, |c| c + 1);
        assert_eq!(n, expected, "the writer confirms its appends in order");
        confirmed = Some(n);
    }
    let confirmed = confirmed.expect("at least one append returned");

    // `Child::kill` sends SIGKILL: no destructor, no final flush runs in the writer.
    writer.child.kill().expect("cannot kill the writer");
    let status = writer.child.wait().expect("cannot wait for the writer");
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "the writer ended by SIGKILL, not on its own: {status}; {}",
        stderr.join().unwrap_or_default()
    );

    let store = SledStore::open(dir.path()).expect("the killed writer's store reopens");
    let loaded = store.load(&DocName::new("doc").unwrap()).unwrap();
    assert_eq!(loaded.corrupt_entries, 0, "no entry was torn");
    assert_eq!(loaded.snapshot, None, "nothing compacted the log");
    assert!(
        loaded.updates.len() > confirmed as usize,
        "appends 0..={confirmed} returned before the kill, but only {} are stored",
        loaded.updates.len()
    );
    // Whatever else survived (an append that was in flight) comes after them, none missing.
    for (i, update) in loaded.updates.iter().enumerate() {
        let i = u32::try_from(i).unwrap();
        assert_eq!(update, &i.to_le_bytes().to_vec(), "update {i}");
    }
}
