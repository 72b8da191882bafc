//! The `tracing::error!` a corrupt log entry produces. Alone in its test binary: tracing caches
//! per-callsite interest process-wide, so a scoped subscriber can miss events when other tests
//! hit the same callsite concurrently without one.

use std::io::Write;
use std::sync::{Arc, Mutex};

use concord_core::conformance::{name, update};
use concord_sled::SledStore;

/// A writer that appends to a shared buffer, for capturing log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_corrupt_log_entry_is_logged_as_an_error_with_document_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    for i in 1..=3 {
        store.append(&[update("doc", &[i])]).unwrap();
    }
    // Entry 3 of document 1 (`b"l"` + id + seq, as the crate documents): flip a payload byte.
    let mut key = b"l".to_vec();
    key.extend_from_slice(&1u64.to_be_bytes());
    key.extend_from_slice(&3u64.to_be_bytes());
    let mut value = store.raw_tree().get(&key).unwrap().unwrap().to_vec();
    *value.last_mut().unwrap() ^= 0xff;
    store.raw_tree().insert(&key, value).unwrap();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let captured = captured.clone();
            move || captured.clone()
        })
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        store.load(&name("doc")).unwrap();
    });
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(output.contains("ERROR"), "{output}");
    assert!(output.contains("doc=doc"), "{output}");
    assert!(output.contains("seq=3"), "{output}");
    assert!(output.contains("checksum mismatch"), "{output}");
    assert_eq!(store.corrupt_entries_seen(), 1);
}
