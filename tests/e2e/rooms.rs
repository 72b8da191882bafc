//! Rooms: many clients opening a new document at the same moment end up in one room.

use std::sync::Arc;

use concord_server::Config;
use concord_tests::{DEADLINE, TestClient, TestServer, poll_until_ok};
use tokio::sync::Barrier;
use yrs::{Array, WriteTxn};

const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_opening_a_new_document_at_once_share_one_room() {
    let server = TestServer::start(Config::default()).await;
    let url = server.url("stampede");
    // Release all connection attempts together, from tasks spread over the runtime's threads.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            let url = url.clone();
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
    for client in &clients {
        client.wait_synced().await;
    }
    // Had two connections loaded the document separately, they would sit in different rooms
    // and never see each other's edits.
    for (i, client) in clients.iter().enumerate() {
        client.edit(|txn| {
            txn.get_or_insert_array("joined")
                .push_back(txn, format!("client-{i}"));
        });
    }
    poll_until_ok(DEADLINE, "every client sees every client's edit", || {
        let first = clients[0].array_json("joined");
        for (i, client) in clients.iter().enumerate() {
            let seen = client.array_json("joined");
            let count = seen.as_array().map_or(0, Vec::len);
            if count != CLIENTS {
                return Err(format!("client {i} sees {count} edits: {seen}"));
            }
            if seen != first {
                return Err(format!(
                    "client {i} orders edits differently: {seen} vs {first}"
                ));
            }
        }
        Ok(())
    })
    .await;
    for client in &clients {
        assert!(client.is_connected(), "{:?}", client.status());
        assert!(client.status().errors.is_empty());
    }
}
