//! The Hocuspocus protocol at the root URL, spoken by hand (the npm provider is exercised by
//! `tests/interop/hocuspocus.test.mjs`): SyncStatus waits for the store, stateless messages
//! reach the embedding application and its answers reach one connection or all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord_core::hocuspocus::{self as hp, SYNC_STATUS};
use concord_core::{DocName, MemoryStore};
use concord_server::{Config, StatelessMessage};
use concord_tests::{DEADLINE, EmbeddedServer, Hooked, RawClient, TestClient, update_message};
use tokio::sync::mpsc;
use yrs::encoding::write::Write;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Text, Transact};

use crate::persistence::{PermitStore, ReleaseOnDrop};

/// A raw Hocuspocus socket on the server's root.
async fn socket(server: &EmbeddedServer) -> RawClient {
    RawClient::connect(&format!("ws://{}/", server.addr))
        .await
        .unwrap()
}

fn auth(key: &str) -> Vec<u8> {
    let mut body = vec![hp::AUTH, 0];
    body.write_string("");
    hp::addressed(key, &body)
}

fn step1(key: &str) -> Vec<u8> {
    hp::addressed(
        key,
        &Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1(),
    )
}

fn text_update(text: &str) -> Vec<u8> {
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    drop(txn);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

fn stateless(key: &str, payload: &str) -> Vec<u8> {
    hp::addressed(key, &hp::stateless(payload))
}

/// Splits a server frame into its routing key and body.
fn split(frame: &[u8]) -> (String, Vec<u8>) {
    use yrs::encoding::read::{Cursor, Read};
    let mut cursor = Cursor::new(frame);
    let key = cursor.read_string().unwrap().to_owned();
    (key, frame[cursor.next..].to_vec())
}

/// Reads frames until one for `key` satisfies `wanted`; returns its body.
async fn expect(client: &mut RawClient, key: &str, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    loop {
        let frame = client
            .next_binary(DEADLINE)
            .await
            .expect("the socket is open");
        if frame.len() == 1 {
            continue;
        }
        let (k, body) = split(&frame);
        if k == key && wanted(&body) {
            return body;
        }
    }
}

/// Opens `key` on `client` and waits for `Authenticated`.
async fn open(client: &mut RawClient, key: &str) {
    client.send_binary(auth(key)).await.unwrap();
    client.send_binary(step1(key)).await.unwrap();
    let body = expect(client, key, |b| b.first() == Some(&hp::AUTH)).await;
    assert_eq!(body, hp::authenticated(hp::Scope::ReadWrite));
}

#[tokio::test]
async fn sync_status_is_sent_only_once_the_update_is_stored() {
    let store = Arc::new(PermitStore::default());
    let _release = ReleaseOnDrop(store.clone());
    let server =
        EmbeddedServer::start_with_store(Config::default(), Arc::new(Hooked(store.clone()))).await;
    let mut client = socket(&server).await;
    open(&mut client, "held").await;
    let watcher = TestClient::connect_synced(&server.url("held"))
        .await
        .unwrap();

    client
        .send_binary(hp::addressed(
            "held",
            &update_message(text_update("saved?")),
        ))
        .await
        .unwrap();
    // Relayed at once, while its append waits for a permit.
    watcher
        .wait_until(DEADLINE, "the update to be relayed", |c| {
            c.text("t") == "saved?"
        })
        .await;
    concord_tests::poll_until(DEADLINE, "the append to start", || store.entered() >= 1).await;
    let early = client.frames_within(Duration::from_millis(300)).await;
    assert!(
        !early
            .iter()
            .any(|f| f.len() > 1 && split(f).1.first() == Some(&SYNC_STATUS)),
        "no SyncStatus before the store took the update: {early:?}"
    );

    store.grant(u64::MAX / 2);
    let status = expect(&mut client, "held", |b| b.first() == Some(&SYNC_STATUS)).await;
    assert_eq!(status, hp::sync_status(true));
    let stored = concord_tests::StoreHooks::inner(&*store)
        .load(&DocName::new("held").unwrap())
        .unwrap();
    assert!(!stored.updates.is_empty(), "saved means stored");
    server.shutdown().await;
}

#[tokio::test]
async fn stateless_messages_reach_the_application_and_its_answers_reach_one_or_all() {
    let (tx, mut rx) = mpsc::unbounded_channel::<StatelessMessage>();
    let panics = Arc::new(AtomicUsize::new(0));
    let on_stateless = {
        let panics = panics.clone();
        Arc::new(move |message: StatelessMessage| {
            if message.payload == "boom" {
                panics.fetch_add(1, Ordering::SeqCst);
                panic!("a hook that fails");
            }
            tx.send(message).unwrap();
        })
    };
    let config = Config {
        on_stateless: Some(on_stateless),
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await;
    let (mut a, mut b) = (socket(&server).await, socket(&server).await);
    open(&mut a, "chat").await;
    open(&mut b, "chat").await;
    // A y-websocket client of the same document never gets application messages.
    let plain = TestClient::connect_synced(&server.url("chat"))
        .await
        .unwrap();

    // A hook that panics costs the message, not the socket.
    a.send_binary(stateless("chat", "boom")).await.unwrap();
    a.send_binary(stateless("chat", "{\"hello\":1}"))
        .await
        .unwrap();
    let message = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(panics.load(Ordering::SeqCst), 1);
    assert_eq!(message.doc.as_str(), "chat");
    assert_eq!(message.payload, "{\"hello\":1}");
    assert_eq!(message.subject, None);

    // An answer to the sender alone, then to everyone.
    let doc = DocName::new("chat").unwrap();
    assert_eq!(
        server
            .concord
            .send_stateless(&doc, "just you", Some(message.connection)),
        1
    );
    assert_eq!(server.concord.send_stateless(&doc, "everyone", None), 2);
    let first = expect(&mut a, "chat", |body| body.first() == Some(&hp::STATELESS)).await;
    assert_eq!(first, hp::stateless("just you"));
    let second = expect(&mut a, "chat", |body| body.first() == Some(&hp::STATELESS)).await;
    assert_eq!(second, hp::stateless("everyone"));
    let only = expect(&mut b, "chat", |body| body.first() == Some(&hp::STATELESS)).await;
    assert_eq!(
        only,
        hp::stateless("everyone"),
        "b never got the private answer"
    );
    assert_eq!(
        server
            .concord
            .send_stateless(&DocName::new("not-loaded").unwrap(), "x", None),
        0
    );

    // Everyone is still connected and in sync.
    b.send_binary(hp::addressed("chat", &update_message(text_update("ok"))))
        .await
        .unwrap();
    plain
        .wait_until(DEADLINE, "b's edit", |c| c.text("t") == "ok")
        .await;
    assert!(plain.is_connected());
    server.shutdown().await;
}

/// Seeded random frames from a small grammar (a few routing keys, every message type, real and
/// damaged bodies, Auth and Close in any order) on one socket, while a y-websocket client
/// edits the same documents: the server never panics, the socket's answers are all addressed
/// Hocuspocus messages or Ping/Pong, and afterwards a fresh socket opens a document and saves.
#[tokio::test]
async fn random_frames_on_a_socket_never_panic_and_the_server_goes_on() {
    let server = EmbeddedServer::start_with_store(
        Config {
            max_documents_per_connection: 3,
            connection_attempts_per_ip: 10_000,
            connection_attempt_burst: 10_000,
            ..Config::default()
        },
        Arc::new(MemoryStore::new()),
    )
    .await;
    let keys = ["a", "b", "a\0s1", "c", "d"];
    let plain = TestClient::connect_synced(&server.url("a")).await.unwrap();
    for seed in 0..40u64 {
        let mut rng = concord_tests::SplitMix64::new(seed);
        let mut client = socket(&server).await;
        let mut named = std::collections::HashSet::new();
        for _ in 0..60 {
            let key = keys[rng.below(keys.len() as u64) as usize];
            let frame = match rng.below(10) {
                0 | 1 => auth(key),
                2 => step1(key),
                3 => hp::addressed(key, &update_message(text_update("r"))),
                4 => hp::addressed(key, &[hp::CLOSE]),
                5 => stateless(key, "{}"),
                6 => vec![9],
                7 => {
                    // A real message with random bytes flipped after the key.
                    let mut f = hp::addressed(key, &update_message(text_update("flip")));
                    let at = key.len() + 1 + rng.below((f.len() - key.len() - 1) as u64) as usize;
                    f[at] ^= 1 << rng.below(8);
                    f
                }
                8 => {
                    let kind = rng.below(12) as u8;
                    let mut body = vec![kind];
                    for _ in 0..rng.below(8) {
                        body.push(rng.below(256) as u8);
                    }
                    hp::addressed(key, &body)
                }
                _ => {
                    let len = rng.below(12) as usize;
                    (0..len).map(|_| rng.below(256) as u8).collect()
                }
            };
            if let Ok(hp::ClientFrame::Doc { key, .. }) = hp::decode_client_frame(&frame) {
                named.insert(key.to_owned());
            }
            if client.send_binary(frame).await.is_err() {
                break;
            }
        }
        // Whatever the socket said before it ended (or within a moment) is well-formed.
        for frame in client.frames_within(Duration::from_millis(50)).await {
            if frame.len() == 1 {
                assert!(frame == [9] || frame == [10], "{frame:?}");
                continue;
            }
            let (key, body) = split(&frame);
            assert!(
                named.contains(&key),
                "an answer to {key:?}, which no frame named"
            );
            assert!(!body.is_empty());
        }
    }
    assert_eq!(server.concord.stats().panics, 0);
    assert!(plain.is_connected());
    let mut fresh = socket(&server).await;
    open(&mut fresh, "after").await;
    fresh
        .send_binary(hp::addressed("after", &update_message(text_update("fine"))))
        .await
        .unwrap();
    let status = expect(&mut fresh, "after", |b| b.first() == Some(&SYNC_STATUS)).await;
    assert_eq!(status, hp::sync_status(true));
    server.shutdown().await;
}
