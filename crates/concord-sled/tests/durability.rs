//! The durability contract against a real SIGKILL: every `append` that returned before the
//! process was killed is there when the store is reopened.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use concord_core::{DocName, StoredUpdate};
use concord_sled::SledStore;

/// Set (to a store directory) in the child process only.
const CHILD_ENV: &str = "CONCORD_SLED_SIGKILL_CHILD_DIR";

fn name(s: &str) -> DocName {
    DocName::new(s).unwrap()
}

/// The child's side of `appends_that_returned_survive_sigkill`: appends numbered updates forever,
/// printing each number once its `append` returned. Does nothing in a normal test run.
#[test]
fn sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = SledStore::open(&dir).unwrap();
    for i in 0u32.. {
        store
            .append(&[StoredUpdate {
                doc: name("doc"),
                update: i.to_le_bytes().to_vec(),
            }])
            .unwrap();
        println!("appended {i}");
    }
}

#[test]
fn appends_that_returned_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut confirmed = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("appended ") {
            let n: u32 = n.parse().unwrap();
            confirmed = Some(n);
            if n == 300 {
                // `Child::kill` sends SIGKILL: no destructor, no final flush runs.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    let confirmed = confirmed.expect("the child appended");

    let store = SledStore::open(dir.path()).unwrap();
    let loaded = store.load(&name("doc")).unwrap();
    assert_eq!(loaded.corrupt_entries, 0);
    assert!(
        loaded.updates.len() as u32 > confirmed,
        "lost confirmed appends"
    );
    for (i, update) in loaded.updates.iter().enumerate() {
        assert_eq!(update, &(i as u32).to_le_bytes().to_vec());
    }
}
