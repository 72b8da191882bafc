//! Abuse on loopback: a flooding client is cut off while others keep editing, a connection
//! storm past the caps is refused without hurting existing sessions, documents and awareness
//! states past their size limits are refused, and idle rooms make way for new ones.

use std::sync::Arc;
use std::time::Duration;

use concord_core::{DocName, MemoryStore};
use concord_server::Config;
use concord_tests::{
    DEADLINE, EmbeddedServer, Hooked, RawClient, StoreHooks, TestClient, awareness_message,
    http_get, poll_until, text_insert_update, update_message,
};
use yrs::{Text, WriteTxn};

async fn server(config: Config) -> EmbeddedServer {
    EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await
}

/// Appends `piece` to the client's text `t`.
fn append(client: &TestClient, piece: &str) {
    client.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, piece);
    });
}

/// Two well-behaved clients edit back and forth, each edit seen by the other.
async fn exchange_edits(a: &TestClient, b: &TestClient, rounds: usize, tag: &str) {
    for i in 0..rounds {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let piece = format!("[{tag}{i}]");
        append(from, &piece);
        to.wait_until(DEADLINE, "the edit arrives", |c| {
            c.text("t").contains(&piece)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_cut_off_while_others_keep_editing() {
    let server = server(Config {
        rate_messages_per_second: 50,
        rate_message_burst: 100,
        ..Config::default()
    })
    .await;
    let url = server.url("doc");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();
    exchange_edits(&a, &b, 4, "before").await;

    // 2,000 awareness renewals sent at once: the bucket holds 100 and refills at 50/s, so
    // the flood passes it unless sending took 38 s.
    let mut flood = RawClient::connect(&url).await.unwrap();
    for clock in 1..=2000 {
        if flood
            .send_binary(awareness_message(99, clock, r#"{"spam":true}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = flood.expect_close().await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("50 messages/s"), "{reason}");

    exchange_edits(&a, &b, 10, "after").await;
    assert!(a.is_connected() && b.is_connected());
    assert_eq!(server.concord.stats().rate_limited, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_too_many_bytes_is_cut_off() {
    let server = server(Config {
        max_message_size: 64 * 1024,
        rate_bytes_per_second: 1024,
        rate_byte_burst: 0,
        ..Config::default()
    })
    .await;
    let mut raw = RawClient::connect(&server.url("doc")).await.unwrap();
    // The bucket holds one largest message: the first 40 KB update passes, the second not.
    for i in 0..2 {
        let big = "x".repeat(40 * 1024);
        raw.send_binary(update_message(text_insert_update(5 + i, "t", &big)))
            .await
            .unwrap();
    }
    let (code, reason) = raw.expect_close().await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("1024 bytes/s"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_past_the_caps_is_refused_and_sessions_go_on() {
    // Per address: every test client is 127.0.0.1.
    let server = server(Config {
        max_connections_per_ip: 10,
        ..Config::default()
    })
    .await;
    let url = server.url("doc");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();
    let mut storm = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..30 {
        match RawClient::connect_or_refusal(&url).await {
            Ok(client) => storm.push(client),
            Err(refusal) => refused.push(refusal),
        }
    }
    assert_eq!(storm.len(), 8, "10 per address, two taken by the editors");
    assert_eq!(refused.len(), 22);
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        assert!(body.contains("too many connections"), "{body}");
    }
    exchange_edits(&a, &b, 6, "storm").await;
    assert_eq!(server.concord.stats().connections_refused, 22);
    server.shutdown().await;

    // In all.
    let server = self::server(Config {
        max_connections: 5,
        ..Config::default()
    })
    .await;
    let url = server.url("doc");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();
    let mut raws = Vec::new();
    for _ in 0..3 {
        raws.push(RawClient::connect(&url).await.unwrap());
    }
    let (status, body) = RawClient::connect_or_refusal(&url).await.err().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("maximum of 5"), "{body}");
    // Slots come back when connections end.
    drop(raws);
    poll_until(DEADLINE, "the storm's slots are free", || {
        server.concord.open_connections() == 2
    })
    .await;
    let c = TestClient::connect_synced(&url).await.unwrap();
    exchange_edits(&a, &c, 2, "after").await;
    b.wait_until(DEADLINE, "b has everything", |b| b.text("t") == a.text("t"))
        .await;
    server.shutdown().await;

    // Attempts per address: reconnecting in a loop would renew a client's rate buckets.
    let server = self::server(Config {
        connection_attempts_per_ip: 1,
        connection_attempt_burst: 5,
        ..Config::default()
    })
    .await;
    let url = server.url("doc");
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(RawClient::connect_or_refusal(&url).await.map(drop));
    }
    // Five from the full bucket; the next may find one token regained if a second passed.
    let opened = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!((5..=6).contains(&opened), "{outcomes:?}");
    let (status, body) = outcomes.last().unwrap().clone().unwrap_err();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("connection attempts"), "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_past_the_document_size_limit_is_refused() {
    let server = server(Config {
        max_document_bytes: Some(4096),
        ..Config::default()
    })
    .await;
    let url = server.url("doc");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();
    append(&a, &"a".repeat(1000));
    b.wait_until(DEADLINE, "b sees the first kilobyte", |b| {
        b.text("t").len() == 1000
    })
    .await;

    let mut big = RawClient::connect(&url).await.unwrap();
    big.send_binary(update_message(text_insert_update(
        77,
        "t",
        &"z".repeat(8000),
    )))
    .await
    .unwrap();
    let (code, reason) = big.expect_close().await;
    assert_eq!(code, 4413, "{reason}");
    assert!(reason.contains("document too large"), "{reason}");

    // Nothing of it arrived anywhere, and small edits still do.
    append(&b, "!");
    a.wait_until(DEADLINE, "a sees b's edit", |a| a.text("t").ends_with('!'))
        .await;
    assert!(!a.text("t").contains('z'));
    let fresh = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(fresh.text("t").len(), 1001);
    assert_eq!(server.concord.stats().documents_too_large, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awareness_state_past_its_limit_closes_with_1009() {
    let server = server(Config {
        max_awareness_state_bytes: 256,
        ..Config::default()
    })
    .await;
    let url = server.url("doc");
    let watcher = TestClient::connect_synced(&url).await.unwrap();
    let mut raw = RawClient::connect(&url).await.unwrap();
    let big = format!(r#"{{"avatar":"{}"}}"#, "A".repeat(1000));
    raw.send_binary(awareness_message(55, 1, &big))
        .await
        .unwrap();
    let (code, reason) = raw.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("awareness state too large"), "{reason}");
    assert!(watcher.awareness_states().is_empty());
    assert_eq!(server.concord.stats().awareness_too_large, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_idle_room_makes_way_and_busy_rooms_are_never_unloaded() {
    let server = server(Config {
        max_rooms: 2,
        room_idle_timeout: Duration::from_secs(3600),
        ..Config::default()
    })
    .await;
    let names: Vec<DocName> = (1..=5)
        .map(|i| DocName::new(&format!("doc{i}")).unwrap())
        .collect();
    // doc1 and doc2 get an edit each and go idle, doc1 first.
    for name in &names[..2] {
        let mut c = TestClient::connect_synced(&server.url(name.as_str()))
            .await
            .unwrap();
        append(&c, name.as_str());
        c.disconnect().await;
        poll_until(DEADLINE, "the room is idle", || {
            server.concord.is_loaded(name) && server.concord.connection_count(name) == 0
        })
        .await;
    }

    let c3 = TestClient::connect_synced(&server.url("doc3"))
        .await
        .unwrap();
    assert!(
        !server.concord.is_loaded(&names[0]),
        "doc1 was idle longest"
    );
    assert!(server.concord.is_loaded(&names[1]));
    let c4 = TestClient::connect_synced(&server.url("doc4"))
        .await
        .unwrap();
    assert!(!server.concord.is_loaded(&names[1]));
    assert_eq!(server.concord.stats().rooms_evicted, 2);

    // doc3 and doc4 are busy: a fifth document must wait.
    let refused = http_get(server.addr, "/doc5", true).await.unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("too many documents"), "{refused:?}");
    assert_eq!(server.concord.stats().rooms_refused, 1);

    // An evicted document comes back whole once there is room.
    drop(c4);
    poll_until(DEADLINE, "doc4 is idle", || {
        server.concord.connection_count(&names[3]) == 0
    })
    .await;
    let again = TestClient::connect_synced(&server.url("doc1"))
        .await
        .unwrap();
    assert_eq!(again.text("t"), "doc1");
    assert_eq!(c3.text("t"), "");
    server.shutdown().await;
}

/// A store whose first load of one document panics.
#[derive(Default)]
struct PanicsOnce {
    inner: MemoryStore,
    panicked: std::sync::atomic::AtomicBool,
}

impl StoreHooks for PanicsOnce {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    fn before_load(&self, doc: &DocName) {
        if doc.as_str() == "fragile"
            && !self
                .panicked
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a bug while loading");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_opening_a_room_is_contained_and_the_room_loads_next_time() {
    let server = EmbeddedServer::start_with_store(
        Config::default(),
        Arc::new(Hooked(Arc::new(PanicsOnce::default()))),
    )
    .await;
    let a = TestClient::connect_synced(&server.url("steady"))
        .await
        .unwrap();
    let b = TestClient::connect_synced(&server.url("steady"))
        .await
        .unwrap();
    let mut fragile = RawClient::connect(&server.url("fragile")).await.unwrap();
    let (code, reason) = fragile.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1011, "could not load the document")
    );
    assert_eq!(server.concord.stats().panics, 1);
    exchange_edits(&a, &b, 4, "steady").await;
    let again = TestClient::connect_synced(&server.url("fragile"))
        .await
        .unwrap();
    append(&again, "loaded");
    assert!(server.concord.is_loaded(&DocName::new("fragile").unwrap()));
    server.shutdown().await;
}
