//! The Rust client (`concord-client`) against real servers: offline edits of two clients
//! converge when the server comes back, a client restarted while offline sends the edits its
//! local store kept, a killed server process comes back and the client resyncs on its own with
//! its status changes in order, and save acknowledgements (with a server that never sends
//! them, too).

use std::net::SocketAddr;
use std::time::Duration;

use concord_client::{AckSupport, Provider, ProviderConfig, Reconnect, Status};
use concord_server::Config;
use concord_tests::{DEADLINE, TestClient, TestServer};
use yrs::{GetString, Text, Transact, WriteTxn};

use crate::process::ServerProcess;

/// Fast reconnection, so the tests do not wait for the default backoff.
fn quick(url: &str, doc: &str) -> ProviderConfig {
    ProviderConfig {
        reconnect: Reconnect {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            ..Reconnect::default()
        },
        ..ProviderConfig::new(url, doc)
    }
}

fn append(provider: &Provider, piece: &str) {
    let doc = provider.doc();
    let mut txn = doc.transact_mut();
    let text = txn.get_or_insert_text("t");
    let end = text.len(&txn);
    text.insert(&mut txn, end, piece);
}

fn text(provider: &Provider) -> String {
    let doc = provider.doc();
    let text = doc.get_or_insert_text("t");
    text.get_string(&doc.transact())
}

/// Waits (up to [`DEADLINE`]) until `check` holds, polling.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    concord_tests::poll_until(DEADLINE, what, &mut check).await;
}

async fn wait_status(provider: &Provider, want: impl Fn(&Status) -> bool) {
    let mut status = provider.status();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| want(s)))
        .await
        .expect("the status came")
        .expect("the provider runs");
}

fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_editing_while_the_server_is_down_converge_when_it_returns() {
    let server = TestServer::start(Config::default()).await;
    let addr = server.addr;
    server.shutdown().await.unwrap();

    let a = Provider::start(quick(&ws_url(addr), "offline"))
        .await
        .unwrap();
    let b = Provider::start(quick(&ws_url(addr), "offline"))
        .await
        .unwrap();
    for provider in [&a, &b] {
        wait_status(provider, |s| matches!(s, Status::Disconnected { .. })).await;
    }
    append(&a, "[a1]");
    append(&b, "[b1]");
    append(&a, "[a2]");
    assert!(a.has_unsaved_changes() && b.has_unsaved_changes());

    let server = TestServer::start_at(Config::default(), addr).await;
    for provider in [&a, &b] {
        tokio::time::timeout(DEADLINE, provider.wait_synced())
            .await
            .unwrap();
    }
    until("both have all edits", || {
        let (ta, tb) = (text(&a), text(&b));
        ta == tb && ["[a1]", "[a2]", "[b1]"].iter().all(|p| ta.contains(p))
    })
    .await;
    tokio::time::timeout(DEADLINE, a.wait_saved())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(DEADLINE, b.wait_saved())
        .await
        .unwrap()
        .unwrap();
    assert!(!a.has_unsaved_changes() && !b.has_unsaved_changes());
    assert_eq!(a.save_state().borrow().acks, AckSupport::Yes);
    a.close().await;
    b.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_restarted_while_offline_sends_its_stored_edits_later() {
    let store = tempfile::tempdir().unwrap();
    let server = TestServer::start(Config::default()).await;
    let addr = server.addr;
    server.shutdown().await.unwrap();
    let config = ProviderConfig {
        store_dir: Some(store.path().join("client")),
        ..quick(&ws_url(addr), "kept")
    };

    let first = Provider::start(config.clone()).await.unwrap();
    append(&first, "written offline;");
    first.close().await;

    // A new process, still offline: the edit is there from the local store.
    let second = Provider::start(config.clone()).await.unwrap();
    assert_eq!(text(&second), "written offline;");
    assert!(
        second.has_unsaved_changes(),
        "not known to be on the server"
    );
    append(&second, "and more;");

    let server = TestServer::start_at(Config::default(), addr).await;
    tokio::time::timeout(DEADLINE, second.wait_saved())
        .await
        .unwrap()
        .unwrap();
    let reader = TestClient::connect_synced(&server.url("kept"))
        .await
        .unwrap();
    assert_eq!(reader.text("t"), "written offline;and more;");
    second.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_comes_back_and_the_client_resyncs_by_itself() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(0, data.path());
    let addr = server.addr;
    let provider = Provider::start(quick(&ws_url(addr), "survivor"))
        .await
        .unwrap();
    let mut changes = provider.status_changes();
    tokio::time::timeout(DEADLINE, provider.wait_synced())
        .await
        .unwrap();
    append(&provider, "before;");
    tokio::time::timeout(DEADLINE, provider.wait_saved())
        .await
        .unwrap()
        .unwrap();

    server.kill();
    wait_status(&provider, |s| matches!(s, Status::Disconnected { .. })).await;
    append(&provider, "while down;");
    let server = ServerProcess::start(addr.port(), data.path());
    tokio::time::timeout(DEADLINE, provider.wait_saved())
        .await
        .unwrap()
        .unwrap();
    let reader = TestClient::connect_synced(&format!("ws://{}/survivor", server.addr))
        .await
        .unwrap();
    assert_eq!(reader.text("t"), "before;while down;");

    // In order: synced, then lost, retried (perhaps several times), connected, synced again.
    let mut seen = Vec::new();
    while let Ok(status) = changes.try_recv() {
        seen.push(status);
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|s| match s {
            Status::Connecting => "connecting",
            Status::Connected => "connected",
            Status::Synced => "synced",
            Status::Disconnected { .. } => "disconnected",
        })
        .collect();
    let mut compact = kinds.clone();
    compact.dedup();
    let first_sync = compact.iter().position(|k| *k == "synced").unwrap();
    let after: Vec<&str> = compact[first_sync..].to_vec();
    assert_eq!(after.first(), Some(&"synced"), "{kinds:?}");
    assert_eq!(after.get(1), Some(&"disconnected"), "{kinds:?}");
    assert_eq!(
        &after[after.len() - 2..],
        ["connected", "synced"],
        "{kinds:?}"
    );
    // Between the loss and the new connection, only attempts and their failures.
    assert!(
        after[1..after.len() - 2]
            .iter()
            .all(|k| *k == "connecting" || *k == "disconnected"),
        "{kinds:?}"
    );
    provider.close().await;
    drop(server);
}

/// A y-websocket server that speaks the sync protocol but ignores Concord's save requests,
/// as the reference server does.
async fn plain_server() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use yrs::ReadTxn;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let doc = yrs::Doc::new();
                let sv = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector()));
                let _ = sink.send(sv.encode_v1().into()).await;
                while let Some(Ok(message)) = stream.next().await {
                    let data = message.into_data();
                    match Message::decode_v1(&data) {
                        Ok(Message::Sync(SyncMessage::SyncStep1(sv))) => {
                            let update = doc.transact().encode_state_as_update_v1(&sv);
                            let reply = Message::Sync(SyncMessage::SyncStep2(update));
                            let _ = sink.send(reply.encode_v1().into()).await;
                        }
                        Ok(Message::Sync(
                            SyncMessage::SyncStep2(update) | SyncMessage::Update(update),
                        )) => {
                            if let Ok(update) = yrs::Update::decode_v1(&update) {
                                let _ = doc.transact_mut().apply_update(update);
                            }
                        }
                        // Awareness, and the save requests it does not know.
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_server_without_save_acknowledgements_the_provider_says_so_and_goes_on() {
    let addr = plain_server().await;
    let provider = Provider::start(ProviderConfig {
        save_ack_timeout: Duration::from_millis(200),
        ..quick(&ws_url(addr), "plain")
    })
    .await
    .unwrap();
    tokio::time::timeout(DEADLINE, provider.wait_synced())
        .await
        .unwrap();
    append(&provider, "unacknowledged");
    // wait_saved returns once it is clear no acknowledgement will come.
    tokio::time::timeout(DEADLINE, provider.wait_saved())
        .await
        .unwrap()
        .unwrap();
    let state = *provider.save_state().borrow();
    assert_eq!(state.acks, AckSupport::No);
    assert!(state.unsaved, "durability stays unknown, never claimed");
    assert_eq!(*provider.status().borrow(), Status::Synced);
    provider.close().await;
}
