//! Closing connections: on graceful shutdown connected clients are told the server is going away
//! (1001) and the server returns only once every connection is closed and every update stored;
//! a client's own close is answered.

use concord_server::Config;
use concord_tests::{DEADLINE, RawClient, TestClient, TestServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrs::{Text, WriteTxn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_1001_and_returns() {
    let server = TestServer::start(Config::default()).await;
    let mut clients = Vec::new();
    for doc in ["one", "one", "two", "three/deep"] {
        clients.push(TestClient::connect_synced(&server.url(doc)).await.unwrap());
    }
    clients[0].edit(|txn| {
        txn.get_or_insert_text("t")
            .insert(txn, 0, "before shutdown");
    });
    clients[1]
        .wait_until(DEADLINE, "the edit is relayed", |c| {
            c.text("t") == "before shutdown"
        })
        .await;

    server
        .shutdown()
        .await
        .expect("run returns Ok after a graceful shutdown");
    // `run` returned, so every connection was already closed: each client got 1001.
    for (i, client) in clients.iter().enumerate() {
        client.wait_closed().await;
        let close = client.close_frame();
        assert_eq!(
            close.as_ref().map(|(code, _)| *code),
            Some(1001),
            "client {i}: {:?}",
            client.status()
        );
    }
}

/// RFC 6455 §5.5.1: an endpoint that receives a Close frame (and has not sent one) must send a
/// Close frame in response. Concord currently drops the TCP connection instead, so browsers
/// report an unclean close (1006) where the client asked for a normal one (1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_close_frame() {
    let server = TestServer::start(Config::default()).await;
    let mut raw = RawClient::connect(&server.url("polite")).await.unwrap();
    raw.next_binary(DEADLINE)
        .await
        .expect("the server's SyncStep1");
    raw.send(WsMessage::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let ending = raw.read_to_end(DEADLINE).await;
    assert_eq!(
        ending.close.as_ref().map(|(code, _)| *code),
        Some(1000),
        "the close was not echoed: {ending:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stopped_reading_does_not_hold_up_shutdown() {
    // The grace period is far longer than the test's deadline: shutdown may only finish in time
    // if the stuck connection is dropped rather than waited for.
    let config = Config {
        shutdown_grace: std::time::Duration::from_secs(600),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let url = server.url("stuck");
    let mut stuck = RawClient::connect_with_recv_buffer(&url, 16 * 1024)
        .await
        .unwrap();
    stuck
        .next_binary(DEADLINE)
        .await
        .expect("the server's SyncStep1");
    // The stuck client reads nothing more. 8 MiB in 256 KiB updates stay within its queue's
    // bounds (so it is not closed for overflow) but far exceed what its socket can absorb, so
    // the server's writer for it blocks in send.
    let writer = TestClient::connect_synced(&url).await.unwrap();
    let observer = TestClient::connect_synced(&url).await.unwrap();
    for i in 0..32 {
        writer.edit(|txn| {
            let text = txn.get_or_insert_text("t");
            let len = text.len(txn);
            text.insert(txn, len, &format!("{i:04}{}", "x".repeat(256 * 1024 - 4)));
        });
    }
    observer
        .wait_until(DEADLINE, "every update reached the observer", |o| {
            o.text("t").len() == 32 * 256 * 1024
        })
        .await;

    tokio::time::timeout(DEADLINE, server.shutdown())
        .await
        .expect("shutdown finishes without waiting for the stuck peer")
        .expect("run() returns Ok");
    drop(stuck);
}
