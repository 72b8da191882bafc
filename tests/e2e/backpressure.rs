//! Backpressure: a client that stops reading is closed once its outbound queue is full; it is
//! never silently skipped, so whatever it did receive is a gap-free prefix of the history.

use concord_server::Config;
use concord_tests::decode_messages;
use concord_tests::{DEADLINE, RawClient, TestClient, TestServer};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, ReadTxn, Text, Transact, Update, WriteTxn};

const UPDATES: usize = 200;
const CHUNK: usize = 64 * 1024;

/// Update `i` appends this string to the root array `chunks`.
fn chunk(i: usize) -> String {
    let mut chunk = format!("{i:05}:");
    chunk.push_str(&"x".repeat(CHUNK - chunk.len()));
    chunk
}

/// The number `chunk` starts with.
fn chunk_number(value: &str) -> usize {
    value[..5].parse().expect("chunks start with their number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_not_skipped() {
    let config = Config {
        outbound_queue_frames: 8,
        outbound_queue_bytes: 512 * 1024,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let url = server.url("slow-consumer");

    // The slow client joins (its first frame proves it is in the room), then stops reading.
    // Its small receive buffer means the loopback connection holds little for it.
    let mut slow = RawClient::connect_with_recv_buffer(&url, 16 * 1024)
        .await
        .unwrap();
    slow.next_binary(DEADLINE)
        .await
        .expect("the server's SyncStep1");
    let fast = TestClient::connect_synced(&url).await.unwrap();
    let writer = TestClient::connect_synced(&url).await.unwrap();

    // ~12.5 MiB in 64 KiB updates: far more than the socket buffers plus the queue can hold.
    // The writer stays at most two updates ahead of the fast client, so only the slow one
    // can fall behind.
    for i in 0..UPDATES {
        fast.wait_until(
            DEADLINE,
            format!("the fast client has update {i} - 2"),
            |f| f.array_len("chunks") as usize + 2 >= i,
        )
        .await;
        writer.edit(|txn| {
            txn.get_or_insert_array("chunks").push_back(txn, chunk(i));
        });
    }
    fast.wait_until(DEADLINE, "the fast client has every update", |f| {
        f.array_len("chunks") as usize == UPDATES
    })
    .await;
    assert!(fast.is_connected(), "{:?}", fast.status());
    assert!(writer.is_connected(), "{:?}", writer.status());

    // Now the slow client reads whatever reached it. Its connection has ended: closed with
    // 1013, or cut (EOF/reset) when even the close frame could not get through.
    let ending = slow.read_to_end(DEADLINE).await;
    if let Some((code, reason)) = &ending.close {
        assert_eq!(*code, 1013, "unexpected close: {code} {reason}");
    }
    // Replay what it received, in order: every update must extend the array by exactly the next
    // chunk. A skipped update would leave a gap (yrs would park the rest as pending).
    let doc = Doc::new();
    let chunks = doc.get_or_insert_array("chunks");
    let mut received = 0usize;
    for frame in &ending.frames {
        for message in decode_messages(frame).expect("the server's frames decode") {
            let update = match message {
                Message::Sync(SyncMessage::Update(update) | SyncMessage::SyncStep2(update)) => {
                    update
                }
                _ => continue,
            };
            let mut txn = doc.transact_mut();
            txn.apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
            assert!(
                !txn.has_missing_updates(),
                "update {received} left a gap: an earlier update was skipped"
            );
            let len = chunks.len(&txn) as usize;
            if len == received {
                continue; // an update that added nothing (none are expected, but harmless)
            }
            assert_eq!(len, received + 1, "one update, one chunk");
            let last = chunks.get(&txn, len as u32 - 1).unwrap().to_string(&txn);
            assert_eq!(chunk_number(&last), received, "chunks arrive in order");
            received = len;
        }
    }
    println!(
        "slow client: received {received} of {UPDATES} updates, close {:?}, error {:?}",
        ending.close, ending.error
    );
    assert!(
        received < UPDATES,
        "the slow client received everything: it was never backed up"
    );

    // Reconnecting resyncs it completely.
    let again = TestClient::connect_synced(&url).await.unwrap();
    again
        .wait_until(DEADLINE, "the reconnected client has every update", |c| {
            c.array_len("chunks") as usize == UPDATES
        })
        .await;
    again.read(|txn| {
        let chunks = txn.get_array("chunks").unwrap();
        for (i, value) in chunks.iter(txn).enumerate() {
            assert_eq!(chunk_number(&value.to_string(txn)), i);
        }
    });
    assert!(again.is_connected(), "{:?}", again.status());
    assert!(fast.status().errors.is_empty() && again.status().errors.is_empty());
}

/// The queue limits must not turn away a client that has done nothing wrong: the SyncStep2
/// answering a new client's SyncStep1 holds the whole document, and may exceed
/// `outbound_queue_bytes` (a frame larger than the limit is meant to be accepted when the queue
/// is otherwise empty). But when the server reads the client's SyncStep1 before its writer has
/// flushed the join frames (SyncStep1, awareness), the queue is not empty and the new client is
/// closed with 1013. Reconnecting runs into the same race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_document_larger_than_the_queue_byte_limit_always_syncs() {
    const JOINS: usize = 100;
    let config = Config {
        outbound_queue_bytes: 64 * 1024,
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let url = server.url("big-document");
    let writer = TestClient::connect_synced(&url).await.unwrap();
    let big = "z".repeat(1 << 20);
    writer.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, &big);
    });
    let observer = TestClient::connect_synced(&url).await.unwrap();
    observer
        .wait_until(DEADLINE, "the server has the whole document", |o| {
            o.text("t").len() == big.len()
        })
        .await;
    let mut refused = Vec::new();
    for i in 0..JOINS {
        let client = TestClient::connect(&url).await.unwrap();
        client
            .wait_until(DEADLINE, "the joiner syncs or is closed", |c| {
                c.is_synced() || !c.is_connected()
            })
            .await;
        if !client.is_synced() {
            refused.push((i, client.close_frame()));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {JOINS} joins were closed instead of synced: {refused:?}",
        refused.len()
    );
}
