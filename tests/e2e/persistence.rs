//! Persistence through the embedding API (`Concord::new` + `router`) over a real
//! [`SledStore`] in a temporary directory (and the [`MemoryStore`] where the scenario applies to
//! any store): save acknowledgements, compaction thresholds, a restart in process, and a corrupt
//! log entry met by a connecting client.
//!
//! The test holds the same `Arc` of the store as the server, so it can read what was persisted
//! at the very moment an acknowledgement arrives.

use std::sync::Arc;
use std::time::Duration;

use concord_core::{DocName, MSG_SAVED, MemoryStore, Store, StoredDoc, encode_saved};
use concord_server::Config;
use concord_sled::SledStore;
use concord_tests::{
    DEADLINE, EmbeddedServer, Hooked, RawClient, Root, StoreHooks, TestClient, awareness_message,
    decode_messages, doc_json, poll_until, poll_until_ok, poll_until_ok_async, update_message,
};
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::Message;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

fn sled_in(dir: &std::path::Path) -> Arc<SledStore> {
    Arc::new(SledStore::open(dir).expect("open the sled store"))
}

/// The document rebuilt from a load: the snapshot (v2), then the log's updates (v1).
fn rebuild(stored: &StoredDoc) -> Doc {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        if let Some(snapshot) = &stored.snapshot {
            txn.apply_update(
                concord_core::decode_snapshot(snapshot).expect("the snapshot decodes"),
            )
            .expect("the snapshot applies");
        }
        for update in &stored.updates {
            txn.apply_update(Update::decode_v1(update).expect("a stored update decodes"))
                .expect("a stored update applies");
        }
    }
    doc
}

/// Everything `store` holds for `doc`, as one v1 update.
async fn stored_state(store: &dyn Store, doc: &DocName) -> Vec<u8> {
    let rebuilt = rebuild(&store.load(doc).await.expect("load"));
    let txn = rebuilt.transact();
    txn.encode_state_as_update_v1(&StateVector::default())
}

/// The state vector of a document given as one v1 update.
fn state_vector_of(update: &[u8]) -> StateVector {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
    doc.transact().state_vector()
}

const TEXT: [Root<'static>; 3] = [Root::Text("t"), Root::Array("log"), Root::Map("m")];

/// The id of a save acknowledgement in a server frame, if the frame is one.
pub(crate) fn ack_in(frame: &[u8]) -> Option<u64> {
    decode_messages(frame)
        .expect("server frames decode")
        .into_iter()
        .find_map(|message| match message {
            Message::Custom(MSG_SAVED, payload) => {
                Some(Cursor::new(&payload).read_var::<u64>().expect("ack id"))
            }
            _ => None,
        })
}

/// Reads frames until the acknowledgement of one of `ids` arrives; returns its id.
pub(crate) async fn next_ack(client: &mut RawClient, ids: &[u64]) -> u64 {
    loop {
        let frame = client
            .next_binary(DEADLINE)
            .await
            .expect("the connection ended while waiting for an acknowledgement");
        if let Some(id) = ack_in(&frame) {
            assert!(ids.contains(&id), "unexpected acknowledgement {id}");
            return id;
        }
    }
}

/// A writer that appends `piece` to the root text `t`, one update per call.
pub(crate) struct Appender {
    doc: Doc,
    pub(crate) text: String,
}

impl Appender {
    pub(crate) fn new(client: u64) -> Appender {
        Appender {
            doc: Doc::with_client_id(client),
            text: String::new(),
        }
    }

    pub(crate) fn append(&mut self, piece: &str) -> Vec<u8> {
        self.text.push_str(piece);
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let end = text.len(&txn);
        text.insert(&mut txn, end, piece);
        txn.encode_update_v1()
    }
}

/// The text `t` of what `store` holds for `doc`.
async fn stored_text(store: &dyn Store, doc: &DocName) -> String {
    doc_json(&stored_state(store, doc).await, &[Root::Text("t")]).unwrap()["t"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn save_acknowledgements(store: Arc<dyn Store>) {
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let name = DocName::new("acks/doc").unwrap();
    let mut client = RawClient::connect(&server.url(name.as_str()))
        .await
        .unwrap();
    let mut writer = Appender::new(1);

    // A save request before anything was sent is answered too.
    client.send_binary(encode_saved(1).to_vec()).await.unwrap();
    assert_eq!(next_ack(&mut client, &[1]).await, 1);

    for i in 0..20 {
        let update = writer.append(&format!("{i};"));
        client.send_binary(update_message(update)).await.unwrap();
    }
    client.send_binary(encode_saved(7).to_vec()).await.unwrap();
    assert_eq!(next_ack(&mut client, &[7]).await, 7);
    // At the moment the acknowledgement arrives, the store already has all 20 updates.
    assert_eq!(stored_text(&*store, &name).await, writer.text);

    // Pipelined requests; each acknowledgement covers what was sent before its own request,
    // whatever order they arrive in. An id beyond 32 bits round-trips.
    let big = 1u64 << 40;
    for i in 20..30 {
        let update = writer.append(&format!("{i};"));
        client.send_binary(update_message(update)).await.unwrap();
    }
    let after_30 = writer.text.clone();
    client.send_binary(encode_saved(8).to_vec()).await.unwrap();
    for i in 30..40 {
        let update = writer.append(&format!("{i};"));
        client.send_binary(update_message(update)).await.unwrap();
    }
    client
        .send_binary(encode_saved(big).to_vec())
        .await
        .unwrap();
    let mut pending = vec![8, big];
    while !pending.is_empty() {
        let id = next_ack(&mut client, &pending).await;
        pending.retain(|&p| p != id);
        let stored = stored_text(&*store, &name).await;
        if id == 8 {
            // One client appending at the end: what is stored is always a prefix of the end
            // result, and it must contain the first 30 pieces.
            assert!(
                stored.starts_with(&after_30),
                "after ack 8 the store has {stored:?}, expected at least {after_30:?}"
            );
        } else {
            assert_eq!(stored, writer.text, "after ack {id}");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_acknowledgement_means_the_sled_store_has_the_updates() {
    let dir = tempfile::tempdir().unwrap();
    save_acknowledgements(sled_in(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_acknowledgement_means_the_memory_store_has_the_updates() {
    save_acknowledgements(Arc::new(MemoryStore::new())).await;
}

/// Appends `piece` to the client's text `t`, in one transaction.
fn append_to_t(client: &mut TestClient, piece: &str) {
    client.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, piece);
    });
}

/// Polls until `doc` is stored as a snapshot with an empty log.
async fn until_compacted_whole(store: &dyn Store, doc: &DocName) {
    poll_until_ok_async(DEADLINE, "the idle document is compacted", || async {
        let stored = store.load(doc).await.map_err(|e| e.to_string())?;
        if stored.snapshot.is_some() && stored.updates.is_empty() {
            Ok(())
        } else {
            Err(format!("a tail of {} updates", stored.updates.len()))
        }
    })
    .await;
}

async fn compaction_thresholds(store: Arc<dyn Store>) {
    const THRESHOLD: u64 = 20;
    let config = Config {
        compact_after_updates: THRESHOLD,
        room_idle_timeout: Duration::from_millis(50),
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, store.clone()).await;
    let name = DocName::new("compaction").unwrap();
    let url = server.url(name.as_str());
    let mut a = TestClient::connect_synced(&url).await.unwrap();
    let mut b = TestClient::connect_synced(&url).await.unwrap();

    // A writes 100 small updates; B keeps editing all along, and after compactions happened.
    for i in 0..100 {
        append_to_t(&mut a, &format!("{i};"));
        if i % 4 == 0 {
            b.edit(|txn| {
                txn.get_or_insert_array("log")
                    .push_back(txn, format!("b{i}"));
            });
        }
    }
    poll_until(DEADLINE, "a compaction has completed", || {
        server.concord.compactions() > 0
    })
    .await;
    for i in 0..30 {
        b.edit(|txn| {
            txn.get_or_insert_map("m")
                .insert(txn, format!("late{i}"), i as i64);
        });
    }
    poll_until_ok(DEADLINE, "A and B converge", || {
        let (ja, jb) = (a.snapshot(&TEXT), b.snapshot(&TEXT));
        if ja == jb
            && a.state_vector() == b.state_vector()
            && jb["m"].as_object().unwrap().len() == 30
        {
            Ok(())
        } else {
            Err(format!("A {ja}\nB {jb}"))
        }
    })
    .await;
    let live = a.full_state();
    let live_json = doc_json(&live, &TEXT).unwrap();
    assert_eq!(live_json["log"].as_array().unwrap().len(), 25);

    // Persistence and compaction are asynchronous: poll until the store holds the live state
    // as a snapshot plus a tail shorter than the threshold.
    poll_until_ok_async(
        DEADLINE,
        "the store holds the live state, compacted",
        || async {
            let stored = store.load(&name).await.map_err(|e| e.to_string())?;
            let tail = stored.updates.len();
            let state = stored_state(&*store, &name).await;
            let json = doc_json(&state, &TEXT).map_err(|e| e.to_string())?;
            if stored.snapshot.is_none() || tail as u64 >= THRESHOLD {
                return Err(format!(
                    "snapshot: {}, tail of {tail} updates",
                    stored.snapshot.is_some()
                ));
            }
            if json != live_json || state_vector_of(&state) != state_vector_of(&live) {
                return Err(format!("stored {json}\nlive {live_json}"));
            }
            Ok(())
        },
    )
    .await;
    let info = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|info| info.name == name)
        .unwrap();
    assert!(info.snapshot_bytes > 0, "{info:?}");
    assert!(info.log_entries < THRESHOLD, "{info:?}");

    a.disconnect().await;
    b.disconnect().await;
    poll_until(DEADLINE, "the room unloads once idle", || {
        !server.concord.is_loaded(&name)
    })
    .await;
    // Unloading compacts what was written since the last compaction: the idle document rests
    // as one snapshot.
    until_compacted_whole(&*store, &name).await;
    assert_eq!(
        doc_json(&stored_state(&*store, &name).await, &TEXT).unwrap(),
        live_json
    );
    let c = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(c.snapshot(&TEXT), live_json);
    assert_eq!(c.state_vector(), state_vector_of(&live));
    assert!(!c.has_missing_updates());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_thresholds_trigger_and_lose_nothing_sled() {
    let dir = tempfile::tempdir().unwrap();
    compaction_thresholds(sled_in(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_thresholds_trigger_and_lose_nothing_memory() {
    compaction_thresholds(Arc::new(MemoryStore::new())).await;
}

/// With the thresholds out of reach, only unloading compacts: the idle document rests as one
/// snapshot, and it loads as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_document_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = sled_in(dir.path());
    let config = Config {
        compact_after_updates: u64::MAX,
        compact_after_bytes: u64::MAX,
        room_idle_timeout: Duration::from_millis(50),
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, store.clone()).await;
    let name = DocName::new("idle").unwrap();
    let url = server.url(name.as_str());
    let mut a = TestClient::connect_synced(&url).await.unwrap();
    for i in 0..10 {
        append_to_t(&mut a, &format!("{i};"));
    }
    let live_json = doc_json(&a.full_state(), &TEXT).unwrap();
    poll_until(DEADLINE, "the store holds the ten updates", || {
        store.load(&name).is_ok_and(|s| s.updates.len() == 10)
    })
    .await;
    assert!(store.load(&name).unwrap().snapshot.is_none());
    a.disconnect().await;
    until_compacted_whole(&*store, &name).await;
    // The compactor counts a compaction once the store's call has returned.
    poll_until(DEADLINE, "the compaction is counted", || {
        server.concord.compactions() == 1
    })
    .await;
    assert_eq!(
        doc_json(&stored_state(&*store, &name).await, &TEXT).unwrap(),
        live_json
    );
    let b = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(b.snapshot(&TEXT), live_json);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_survive_a_restart_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let text = DocName::new("restart/text").unwrap();
    let other = DocName::new("restart/other").unwrap();

    let store = sled_in(dir.path());
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let writer = TestClient::connect_synced(&server.url(text.as_str()))
        .await
        .unwrap();
    let observer = TestClient::connect_synced(&server.url(text.as_str()))
        .await
        .unwrap();
    let second = TestClient::connect_synced(&server.url(other.as_str()))
        .await
        .unwrap();
    for i in 0..40 {
        writer.edit(|txn| {
            let t = txn.get_or_insert_text("t");
            let end = t.len(txn);
            t.insert(txn, end, &format!("{i},"));
            txn.get_or_insert_map("m")
                .insert(txn, format!("k{i}"), i as i64);
        });
    }
    second.edit(|txn| {
        txn.get_or_insert_array("log").push_back(txn, "other doc");
    });
    // The server applied everything once the observer has it (the writer's socket could still
    // hold updates otherwise); the other document is checked through the store.
    let expected = writer.snapshot(&TEXT);
    observer
        .wait_until(DEADLINE, "the observer has every edit", |o| {
            o.snapshot(&TEXT) == expected
        })
        .await;
    let other_expected = second.snapshot(&TEXT);
    poll_until_ok_async(DEADLINE, "the other document is stored", || async {
        let stored = doc_json(&stored_state(&*store, &other).await, &TEXT).unwrap();
        if stored == other_expected {
            Ok(())
        } else {
            Err(format!("stored {stored}"))
        }
    })
    .await;
    let writer_state = writer.full_state();
    let writer_id = writer.client_id();

    server.shutdown().await;
    drop((writer, observer, second));
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "after closed() the server must hold no reference to the store"
    );
    drop(store);

    // sled may hold its directory lock a few ms after the last handle is dropped; `open`
    // waits for it.
    let store = sled_in(dir.path());
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let fresh = TestClient::connect_synced(&server.url(text.as_str()))
        .await
        .unwrap();
    assert_eq!(fresh.snapshot(&TEXT), expected);
    assert!(!fresh.has_missing_updates());
    let fresh_other = TestClient::connect_synced(&server.url(other.as_str()))
        .await
        .unwrap();
    assert_eq!(fresh_other.snapshot(&TEXT), other_expected);

    // The writer comes back with its replica (same client id, same state), as a y-websocket
    // provider reconnects, and keeps editing: nothing is duplicated, both converge.
    let replica = Doc::with_client_id(writer_id);
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&writer_state).unwrap())
        .unwrap();
    let back = TestClient::connect_with_doc(&server.url(text.as_str()), replica)
        .await
        .unwrap();
    back.wait_synced().await;
    back.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, "after restart");
    });
    let want = back.snapshot(&TEXT);
    assert!(
        want["t"].as_str().unwrap().ends_with("39,after restart"),
        "{want}"
    );
    fresh
        .wait_until(DEADLINE, "the fresh client converges", |f| {
            f.snapshot(&TEXT) == want && f.state_vector() == back.state_vector()
        })
        .await;
    server.shutdown().await;
    assert_eq!(
        doc_json(&stored_state(&*store, &text).await, &TEXT).unwrap(),
        want,
        "shutdown stored the edit made after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_entry_is_skipped_and_the_rest_of_the_document_loads() {
    let dir = tempfile::tempdir().unwrap();
    let name = DocName::new("corrupt/doc").unwrap();
    const BATCHES: u64 = 4;

    // Four batches, each from its own client (so they do not depend on one another) and each
    // acknowledged before the next is sent: four separate log entries.
    let store = sled_in(dir.path());
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let mut raw = RawClient::connect(&server.url(name.as_str()))
        .await
        .unwrap();
    let mut updates = Vec::new();
    for i in 0..BATCHES {
        let doc = Doc::with_client_id(100 + i);
        let update = {
            let mut txn = doc.transact_mut();
            let m = txn.get_or_insert_map("m");
            m.insert(&mut txn, format!("b{i}"), format!("value {i}"));
            txn.encode_update_v1()
        };
        raw.send_binary(update_message(update.clone()))
            .await
            .unwrap();
        raw.send_binary(encode_saved(i + 1).to_vec()).await.unwrap();
        assert_eq!(next_ack(&mut raw, &[i + 1]).await, i + 1);
        updates.push(update);
    }
    drop(raw);
    server.shutdown().await;

    // Damage the payload of the entry with seq 2 (batch b1): its checksum no longer matches.
    let log_keys: Vec<Vec<u8>> = store
        .raw_tree()
        .scan_prefix(b"l")
        .keys()
        .map(|key| key.map(|key| key.to_vec()))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        log_keys.len() as u64,
        BATCHES,
        "one log entry per acknowledged batch"
    );
    let key = log_keys
        .iter()
        .find(|key| key.len() == 17 && key[9..] == 2u64.to_be_bytes())
        .expect("the entry with seq 2");
    let mut value = store
        .raw_tree()
        .get(key.as_slice())
        .unwrap()
        .unwrap()
        .to_vec();
    let last = value.len() - 1;
    value[last] ^= 0xff;
    store.raw_tree().insert(key.as_slice(), value).unwrap();
    store.raw_tree().flush().unwrap();
    drop(store);

    let store = sled_in(dir.path());
    assert_eq!(store.corrupt_entries_seen(), 0);
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let url = server.url(name.as_str());
    let client = TestClient::connect_synced(&url).await.unwrap();
    let json = client.map_json("m");
    assert_eq!(
        json,
        serde_json::json!({"b0": "value 0", "b2": "value 2", "b3": "value 3"}),
        "the intact entries load, the damaged one is skipped"
    );
    assert!(!client.has_missing_updates());
    assert!(store.corrupt_entries_seen() >= 1);

    // A client that still has every update brings the lost one back when it syncs.
    let full = Doc::new();
    for update in &updates {
        full.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }
    let holder = TestClient::connect_with_doc(&url, full).await.unwrap();
    holder.wait_synced().await;
    client
        .wait_until(DEADLINE, "the lost entry comes back from a client", |c| {
            c.map_json("m").as_object().is_some_and(|m| m.len() == 4)
        })
        .await;
    server.shutdown().await;
    let restored = doc_json(&stored_state(&*store, &name).await, &[Root::Map("m")]).unwrap();
    assert_eq!(restored["m"]["b1"], "value 1", "{restored}");
}

/// A [`MemoryStore`] whose `append` needs a permit: the test decides how many appends may
/// complete, and sees how many have started.
#[derive(Default)]
pub(crate) struct PermitStore {
    inner: MemoryStore,
    permits: std::sync::Mutex<u64>,
    granted: std::sync::Condvar,
    entered: std::sync::atomic::AtomicU64,
}

impl PermitStore {
    pub(crate) fn grant(&self, n: u64) {
        *self.permits.lock().unwrap() += n;
        self.granted.notify_all();
    }

    pub(crate) fn entered(&self) -> u64 {
        self.entered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl StoreHooks for PermitStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    fn before_append(&self, _batch: &[concord_core::StoredUpdate]) {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut permits = self.permits.lock().unwrap();
        while *permits == 0 {
            permits = self.granted.wait(permits).unwrap();
        }
        *permits -= 1;
    }
}

/// Grants every permit a [`PermitStore`] could need when dropped (also when a test panics).
pub(crate) struct ReleaseOnDrop(pub(crate) Arc<PermitStore>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.grant(u64::MAX / 2);
    }
}

/// Several y-protocols messages in one frame.
fn one_frame(updates: &[Vec<u8>]) -> Vec<u8> {
    updates
        .iter()
        .flat_map(|update| update_message(update.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_covers_updates_the_room_already_had_but_had_not_stored() {
    // B sends an update the room already applied from A, whose write is still waiting for the
    // (full, blocked) persistence queue. B's save acknowledgement must still wait until that
    // update is stored: B sent it.
    let store = Arc::new(PermitStore::default());
    // Whatever happens, blocked appends are released at the end: the runtime waits for them.
    let _release = ReleaseOnDrop(store.clone());
    let config = Config {
        persist_queue: 1,
        persist_batch: 1,
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, Arc::new(Hooked(store.clone()))).await;
    let name = DocName::new("dedup").unwrap();
    let other = DocName::new("blocker").unwrap();

    // Every connection joins first: loading a room waits for the persistence queue, which is
    // about to be blocked.
    let observer = TestClient::connect_synced(&server.url(name.as_str()))
        .await
        .unwrap();
    let mut a = RawClient::connect(&server.url(name.as_str()))
        .await
        .unwrap();
    let mut b = RawClient::connect(&server.url(name.as_str()))
        .await
        .unwrap();
    let mut blocker = RawClient::connect(&server.url(other.as_str()))
        .await
        .unwrap();
    poll_until(DEADLINE, "every connection has joined", || {
        server.concord.connection_count(&name) == 3 && server.concord.connection_count(&other) == 1
    })
    .await;

    // The worker blocks appending an update of another document.
    let x = Appender::new(9).append("x");
    blocker.send_binary(update_message(x)).await.unwrap();
    poll_until(DEADLINE, "the worker is blocked in append", || {
        store.entered() == 1
    })
    .await;

    // A sends three updates in one frame: the room applies them all, the first takes the
    // queue's only slot, the others wait for room in the queue.
    let mut writer = Appender::new(1);
    let updates: Vec<Vec<u8>> = ["u0;", "u1;", "u2;"]
        .iter()
        .map(|piece| writer.append(piece))
        .collect();
    a.send_binary(one_frame(&updates)).await.unwrap();
    observer
        .wait_until(DEADLINE, "the room applied A's updates", |o| {
            o.text("t") == "u0;u1;u2;"
        })
        .await;

    // B sends, in one frame, the last of them (nothing new for the room), an awareness state
    // and a save request. A server that queues B's barrier behind B's own (empty) changes
    // only puts it ahead of u2; Concord makes B's frame wait until the room's earlier changes
    // (u1, u2) are queued, so the barrier lands behind u2.
    let mut frame = update_message(updates[2].clone());
    frame.extend(awareness_message(777, 1, r#"{"b":"asks for a save"}"#));
    frame.extend_from_slice(&encode_saved(1));
    b.send_binary(frame).await.unwrap();
    let (acked_tx, acked_rx) = tokio::sync::oneshot::channel();
    let reader_store = store.clone();
    let reader_name = name.clone();
    tokio::spawn(async move {
        let id = next_ack(&mut b, &[1]).await;
        // What the store holds at the moment the acknowledgement arrives.
        let _ = acked_tx.send((id, stored_text(&reader_store.inner, &reader_name).await));
    });

    // Let X, u0 and u1 be written; the next append (u2, whenever it comes) stays blocked.
    store.grant(3);
    poll_until(DEADLINE, "a fourth append has started", || {
        store.entered() >= 4
    })
    .await;
    // B's frame has now been handled (its awareness state went out), so its barrier is queued.
    observer
        .wait_until(DEADLINE, "the server handled B's frame", |o| {
            o.awareness_states().contains_key(&777)
        })
        .await;
    // A correct server cannot acknowledge now (u2 is not stored); a server that does, does so at
    // once. Give it a moment to show it, then let u2 through.
    let mut acked_rx = acked_rx;
    let (id, stored_at_ack) =
        match tokio::time::timeout(Duration::from_secs(2), &mut acked_rx).await {
            Ok(result) => result.expect("the reader reports the ack"),
            Err(_) => {
                store.grant(u64::MAX / 4);
                tokio::time::timeout(DEADLINE, acked_rx)
                    .await
                    .expect("the acknowledgement once u2 is stored")
                    .expect("the reader reports the ack")
            }
        };
    assert_eq!(id, 1);
    assert_eq!(
        stored_at_ack, "u0;u1;u2;",
        "B's save was acknowledged before the update B sent (u2) was stored"
    );
    drop((a, blocker, observer));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_update_still_missing_its_dependencies_survives_a_restart() {
    // B sends an edit that continues A's text (it cannot be integrated yet: it depends on A's
    // edit, which the server does not have) and gets its save acknowledged. A's edit arrives
    // after a clean restart: the acknowledged one must still be there to complete the document.
    let dir = tempfile::tempdir().unwrap();
    let name = DocName::new("pending").unwrap();
    let mut writer = Appender::new(5);
    let first = writer.append("first;");
    let mut continuation = Appender::new(6);
    continuation
        .doc
        .transact_mut()
        .apply_update(Update::decode_v1(&first).unwrap())
        .unwrap();
    continuation.text = writer.text.clone();
    let second = continuation.append("second;");
    writer.text = continuation.text.clone();

    let store = sled_in(dir.path());
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let mut b = RawClient::connect(&server.url(name.as_str()))
        .await
        .unwrap();
    b.send_binary(update_message(second)).await.unwrap();
    b.send_binary(encode_saved(1).to_vec()).await.unwrap();
    assert_eq!(next_ack(&mut b, &[1]).await, 1);
    drop(b);
    server.shutdown().await;
    drop(store);

    let store = sled_in(dir.path());
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let mut a = RawClient::connect(&server.url(name.as_str()))
        .await
        .unwrap();
    a.send_binary(update_message(first)).await.unwrap();
    a.send_binary(encode_saved(1).to_vec()).await.unwrap();
    assert_eq!(next_ack(&mut a, &[1]).await, 1);
    let fresh = TestClient::connect_synced(&server.url(name.as_str()))
        .await
        .unwrap();
    assert_eq!(
        fresh.text("t"),
        writer.text,
        "the acknowledged update that waited for its dependency was lost by a clean restart"
    );
    server.shutdown().await;
}
