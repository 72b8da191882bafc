//! Malformed input: each kind is sent on its own connection to a document with known content.
//! The connection must be closed with the documented code, and nothing else may be affected: the
//! server keeps serving, the document is unchanged, and a client connected all along stays
//! connected and keeps receiving updates.
//!
//! Frames are hand-written only here, on purpose; everything valid is encoded by yrs.

use concord_server::Config;
use concord_tests::{
    DEADLINE, RawClient, TestClient, TestServer, awareness_message, text_insert_update,
    update_message,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{StateVector, Text, WriteTxn};

const UNSUPPORTED: u16 = 1003;
const INVALID_PAYLOAD: u16 = 1007;
const TOO_BIG: u16 = 1009;

const KNOWN: &str = "known content";

/// Sends `frame` on a fresh connection to a document holding [`KNOWN`] and checks that the
/// connection is closed with `code` and that nothing else is affected.
async fn rejects(frame: WsMessage, code: u16) {
    rejects_with(Config::default(), frame, code).await;
}

async fn rejects_with(config: Config, frame: WsMessage, code: u16) {
    let server = TestServer::start(config).await;
    let url = server.url("malformed");
    let writer = TestClient::connect_synced(&url).await.unwrap();
    writer.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, KNOWN);
    });
    let watcher = TestClient::connect_synced(&url).await.unwrap();
    watcher
        .wait_until(DEADLINE, "the watcher has the known content", |w| {
            w.text("t") == KNOWN
        })
        .await;

    let mut raw = RawClient::connect(&url).await.unwrap();
    // A send may fail if the server closes first (oversized frames); the close still counts.
    let _ = raw.send(frame).await;
    let (got, reason) = raw.expect_close().await;
    assert_eq!(got, code, "wrong close code (reason: {reason:?})");
    assert!(!reason.is_empty(), "the close frame should say why");

    // The server still serves, and the document is exactly what it was.
    let fresh = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(fresh.text("t"), KNOWN);
    assert_eq!(fresh.state_vector(), writer.state_vector());

    // The client connected all along is still connected and still receives updates.
    writer.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, " and more");
    });
    let expected = format!("{KNOWN} and more");
    watcher
        .wait_until(DEADLINE, "the watcher receives the next update", |w| {
            w.text("t") == expected
        })
        .await;
    fresh
        .wait_until(DEADLINE, "the fresh client receives it too", |f| {
            f.text("t") == expected
        })
        .await;
    for client in [&writer, &watcher, &fresh] {
        let status = client.status();
        assert!(client.is_connected(), "{status:?}");
        assert!(status.errors.is_empty(), "{status:?}");
    }
}

fn bin(bytes: impl Into<Vec<u8>>) -> WsMessage {
    WsMessage::Binary(bytes.into().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_with_1007() {
    rejects(bin(vec![0xff; 16]), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_made_of_garbage_closes_with_1007() {
    // Sync Update whose 12-byte payload is random bytes (its first varint never ends).
    let frame = [
        0, 2, 12, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed, 0xfa, 0xce, 0xca, 0xfe, 0xba, 0xbe,
    ];
    rejects(bin(frame), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_frame_closes_with_1007() {
    rejects(bin(Vec::new()), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_varint_closes_with_1007() {
    rejects(bin([0x80]), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_type_closes_with_1003() {
    rejects(bin([42, 0]), UNSUPPORTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sync_subtype_closes_with_1003() {
    rejects(bin([0, 7, 0]), UNSUPPORTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_field_past_the_end_closes_with_1007() {
    // SyncStep2 announcing a 1000-byte update, followed by 3 bytes.
    rejects(bin([0, 1, 0xe8, 0x07, 1, 2, 3]), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_update_closes_with_1007() {
    let update = text_insert_update(1, "t", "abc");
    // Correctly framed (yrs computes the length), but the update lacks its last 3 bytes.
    let truncated = update[..update.len() - 3].to_vec();
    rejects(bin(update_message(truncated)), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_an_unknown_content_ref_closes_with_1007() {
    let mut update = text_insert_update(1, "t", "x");
    // clients 1, structs 1, client 1, clock 0, info 4 (string content, parent follows),
    // parent is root "t", content "x", empty delete set.
    assert_eq!(update, [1, 1, 1, 0, 4, 1, 1, b't', 1, b'x', 0]);
    update[4] = 11; // content ref 11 does not exist
    rejects(bin(update_message(update)), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seven_byte_allocation_bomb_closes_with_1007() {
    rejects(bin([0, 2, 4, 255, 255, 255, 122]), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_vector_with_a_huge_count_closes_with_1007() {
    // SyncStep1 whose state vector claims 2^32 - 1 entries in 0 remaining bytes.
    rejects(
        bin([0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        INVALID_PAYLOAD,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_with_invalid_utf8_closes_with_1007() {
    // Awareness update: 1 entry, client 5, clock 1, a 2-byte state that is not UTF-8.
    let payload = [1, 5, 1, 2, 0xc3, 0x28];
    let mut frame = vec![1, payload.len() as u8];
    frame.extend_from_slice(&payload);
    rejects(bin(frame), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_with_invalid_json_closes_with_1007() {
    rejects(
        bin(awareness_message(5, 1, r#"{"user": not json"#)),
        INVALID_PAYLOAD,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_trailing_bytes_closes_with_1007() {
    let mut update = text_insert_update(1, "t", "x");
    update.extend_from_slice(&[0, 0, 0]);
    rejects(bin(update_message(update)), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_message_followed_by_a_truncated_one_closes_with_1007() {
    let mut frame = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    frame.push(0x80);
    rejects(bin(frame), INVALID_PAYLOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_closes_with_1003() {
    rejects(WsMessage::Text("hello".into()), UNSUPPORTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_size_closes_with_1009() {
    let config = Config {
        max_message_size: 64 * 1024,
        ..Config::default()
    };
    // A perfectly valid update, only too big.
    let update = text_insert_update(9, "t", &"y".repeat(100 * 1024));
    rejects_with(config, bin(update_message(update)), TOO_BIG).await;
}
