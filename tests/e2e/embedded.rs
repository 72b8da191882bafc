//! Tests through the embedding API (`Concord::new` + `router`), which expose what `run` hides:
//! the store (to count loads, block them, and read what was persisted) and the instance handle
//! (`is_loaded`, `connection_count`, `closed`).
//!
//! Serving an `axum::Router` takes `axum::serve`, and `axum` is not (yet) a dependency of the
//! test crate, so `main.rs` compiles this module only once `axum.workspace = true` is added to
//! `tests/Cargo.toml` and the `#[cfg(any())]` in front of `mod embedded;` is removed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use concord_core::{DocName, MemoryStore};
use concord_server::Config;
use concord_tests::{
    DEADLINE, EmbeddedServer, Hooked, ManualClock, RawClient, Root, StoreHooks, TestClient,
    awareness_message, doc_json, poll_until, poll_until_ok,
};
use tokio::sync::Barrier;
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, GetString, Text, Transact, Update, WriteTxn};

/// A [`MemoryStore`] that counts loads and, while its gate is closed, blocks them.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    loads: AtomicUsize,
    closed: Mutex<bool>,
    opened: Condvar,
}

impl GatedStore {
    fn closed() -> Arc<GatedStore> {
        let store = GatedStore::default();
        *store.closed.lock().unwrap() = true;
        Arc::new(store)
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

impl StoreHooks for GatedStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    fn before_load(&self, _doc: &DocName) {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

/// The text `t` of the document rebuilt from everything `store` holds for `doc`.
fn stored_text(store: &concord_core::MemoryStore, doc: &DocName) -> String {
    let rebuilt = Doc::new();
    let text = rebuilt.get_or_insert_text("t");
    {
        let stored = store.load(doc).unwrap();
        let mut txn = rebuilt.transact_mut();
        if let Some(snapshot) = stored.snapshot {
            txn.apply_update(concord_core::decode_snapshot(&snapshot).unwrap())
                .unwrap();
        }
        for update in stored.updates {
            txn.apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
    }
    let txn = rebuilt.transact();
    text.get_string(&txn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_opens_atomically_with_exactly_one_load() {
    const CLIENTS: usize = 20;
    let store = GatedStore::closed();
    let hooked = Arc::new(Hooked(store.clone()));
    let server = EmbeddedServer::start_with_store(Config::default(), hooked).await;
    let name = DocName::new("stampede").unwrap();
    let url = server.url(name.as_str());

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), url.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                TestClient::connect(&url).await
            })
        })
        .collect();
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.unwrap().unwrap());
    }
    // Every connection is upgraded and waiting for the (blocked) load.
    poll_until(DEADLINE, "the load has started", || store.loads() >= 1).await;
    assert!(!server.concord.is_loaded(&name));
    assert!(clients.iter().all(|c| !c.is_synced()));
    store.open();

    for client in &clients {
        client.wait_synced().await;
    }
    for (i, client) in clients.iter().enumerate() {
        client.edit(|txn| {
            txn.get_or_insert_array("joined")
                .push_back(txn, format!("client-{i}"));
        });
    }
    poll_until_ok(DEADLINE, "every client sees every edit", || {
        let first = clients[0].array_json("joined");
        for (i, client) in clients.iter().enumerate() {
            let seen = client.array_json("joined");
            if seen.as_array().map_or(0, Vec::len) != CLIENTS || seen != first {
                return Err(format!("client {i} sees {seen}"));
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(store.loads(), 1, "the document was loaded more than once");
    assert_eq!(server.concord.connection_count(&name), CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_room_unloads_and_reloads_from_the_store() {
    let store = Arc::new(GatedStore::default());
    let hooked = Arc::new(Hooked(store.clone()));
    let config = Config {
        room_idle_timeout: Duration::from_millis(50),
        // The compaction at unloading would make a version, which reads the store: this test
        // counts the room's loads alone.
        history: concord_server::HistoryConfig {
            automatic: false,
            ..Default::default()
        },
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, hooked).await;
    let name = DocName::new("team/idle").unwrap();
    let url = server.url(name.as_str());

    let mut a = TestClient::connect_synced(&url).await.unwrap();
    let mut b = TestClient::connect_synced(&url).await.unwrap();
    a.edit(|txn| {
        txn.get_or_insert_text("t")
            .insert(txn, 0, "kept in the store");
    });
    b.wait_until(DEADLINE, "b sees the edit", |b| {
        b.text("t") == "kept in the store"
    })
    .await;
    assert!(server.concord.is_loaded(&name));
    assert_eq!(server.concord.connection_count(&name), 2);

    a.disconnect().await;
    b.disconnect().await;
    poll_until(DEADLINE, "the room unloads once idle", || {
        !server.concord.is_loaded(&name)
    })
    .await;
    assert_eq!(server.concord.connection_count(&name), 0);
    assert_eq!(store.loads(), 1);
    // Persistence is asynchronous: the update may still be on its way to the store. (Read
    // through the inner store: the gated one would count this as a load.)
    poll_until(DEADLINE, "the edit is in the store", || {
        stored_text(&store.inner, &name) == "kept in the store"
    })
    .await;

    let c = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(c.text("t"), "kept in the store");
    assert!(server.concord.is_loaded(&name));
    assert_eq!(store.loads(), 2, "the document was reloaded from the store");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_leaves_the_connection_count() {
    let config = Config {
        keepalive_interval: Duration::from_millis(100),
        clock: ManualClock::new(1_000_000) as Arc<dyn concord_core::Clock>,
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await;
    let name = DocName::new("dead").unwrap();
    let url = server.url(name.as_str());
    let observer = TestClient::connect_synced(&url).await.unwrap();
    let mut dead = RawClient::connect(&url).await.unwrap();
    dead.send_binary(awareness_message(777, 1, "{}"))
        .await
        .unwrap();
    poll_until(DEADLINE, "both connections are in the room", || {
        server.concord.connection_count(&name) == 2
    })
    .await;
    // The dead peer never reads again (so never answers a ping): it is dropped.
    poll_until(DEADLINE, "only the live connection remains", || {
        server.concord.connection_count(&name) == 1
    })
    .await;
    assert!(observer.is_connected());
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stores_every_update_and_closes_with_1001() {
    let store = Arc::new(MemoryStore::new());
    let server = EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    let name = DocName::new("durable").unwrap();
    let url = server.url(name.as_str());
    let writer = TestClient::connect_synced(&url).await.unwrap();
    let observer = TestClient::connect_synced(&url).await.unwrap();
    let mut expected = String::new();
    for i in 0..50 {
        let piece = format!("{i};");
        expected.push_str(&piece);
        writer.edit(|txn| {
            let t = txn.get_or_insert_text("t");
            let end = t.len(txn);
            t.insert(txn, end, &piece);
        });
    }
    // The observer has everything, so the server applied everything.
    observer
        .wait_until(DEADLINE, "the observer has every update", |o| {
            o.text("t") == expected
        })
        .await;

    server.shutdown().await;
    for client in [&writer, &observer] {
        client.wait_closed().await;
        assert_eq!(
            client.close_frame().map(|(code, _)| code),
            Some(1001),
            "{:?}",
            client.status()
        );
    }
    assert!(store.update_count(&name) >= 1);
    assert_eq!(stored_text(&store, &name), expected);
    let json = doc_json(&writer.full_state(), &[Root::Text("t")]).unwrap();
    assert_eq!(json["t"], expected.as_str());
}
