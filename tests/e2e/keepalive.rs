//! Keepalive: idle but healthy connections keep receiving traffic and stay; dead peers go.

use std::sync::Arc;
use std::time::Duration;

use concord_server::Config;
use concord_tests::{DEADLINE, ManualClock, RawClient, TestClient, TestServer, awareness_message};

fn fast_keepalive() -> Config {
    Config {
        keepalive_interval: Duration::from_millis(100),
        // Awareness must not expire on its own here: only the keepalive may remove a state.
        clock: ManualClock::new(1_000_000) as Arc<dyn concord_core::Clock>,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_keeps_receiving_messages_and_stays_connected() {
    let server = TestServer::start(fast_keepalive()).await;
    let url = server.url("idle");
    let client = TestClient::connect_synced(&url).await.unwrap();
    // Nothing else happens in this document: whatever arrives now is keepalive traffic. Three
    // messages after the sync mean the y-websocket client's 30 s no-message timer (reset by any
    // message) would never fire.
    client
        .wait_until(DEADLINE, "three messages arrive after the sync", |c| {
            let status = c.status();
            status.frames_after_sync >= 3 && status.awareness_messages >= 3
        })
        .await;
    // A client that answers pings is never taken for dead, however long it stays idle: ten
    // keepalive messages span more than the three silent intervals after which a peer is dropped.
    client
        .wait_until(DEADLINE, "ten keepalive messages arrive", |c| {
            c.status().frames_after_sync >= 10
        })
        .await;
    let status = client.status();
    assert!(client.is_connected(), "{status:?}");
    assert!(status.errors.is_empty(), "{status:?}");
    assert_eq!(status.update_messages, 0, "{status:?}");

    // On the wire, the keepalive message is the empty awareness update [1, 1, 0].
    let mut raw = RawClient::connect(&url).await.unwrap();
    let mut empty_awareness = 0;
    while empty_awareness < 3 {
        let frame = raw
            .next_binary(DEADLINE)
            .await
            .expect("the idle raw connection stays open");
        if frame == [1, 1, 0] {
            empty_awareness += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_dropped_and_its_awareness_removed() {
    let server = TestServer::start(fast_keepalive()).await;
    let url = server.url("dead-peer");
    let observer = TestClient::connect_synced(&url).await.unwrap();

    // The dead peer says hello, then never reads again, so it never answers a ping.
    let mut dead = RawClient::connect(&url).await.unwrap();
    dead.send_binary(awareness_message(777, 1, r#"{"user":"dead"}"#))
        .await
        .unwrap();
    observer
        .wait_until(DEADLINE, "the observer sees the dead peer's state", |o| {
            o.awareness_states().contains_key(&777)
        })
        .await;
    // The server drops it after three silent keepalive intervals, which removes its state.
    observer
        .wait_until(DEADLINE, "the dead peer's state is removed", |o| {
            !o.awareness_states().contains_key(&777)
        })
        .await;
    // Its connection really is closed: reading now drains what was buffered, then ends.
    let ending = dead.read_to_end(DEADLINE).await;
    assert!(
        !ending.frames.is_empty(),
        "the dead peer was sent at least the server's SyncStep1"
    );
    // The observer, which answers pings, is still there.
    assert!(observer.is_connected(), "{:?}", observer.status());
    assert!(observer.status().errors.is_empty());
}
