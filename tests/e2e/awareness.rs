//! Awareness (presence): relaying, removal when a connection closes, expiry of stale states.

use std::sync::Arc;
use std::time::Duration;

use concord_server::Config;
use concord_tests::{DEADLINE, ManualClock, RawClient, TestClient, TestServer, decode_messages};
use serde_json::json;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;

/// The awareness states (client id, JSON) carried by `frame`, which must hold exactly one
/// awareness message.
fn awareness_in(frame: &[u8]) -> Vec<(u64, String)> {
    let messages = decode_messages(frame).unwrap();
    assert_eq!(messages.len(), 1, "one message per frame: {messages:?}");
    let Message::Awareness(update) = &messages[0] else {
        panic!("expected an awareness message, got {messages:?}");
    };
    let mut states: Vec<(u64, String)> = update
        .clients
        .iter()
        .map(|(id, entry)| (id.get(), entry.json.to_string()))
        .collect();
    states.sort();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_is_added_updated_and_removed_when_connections_close() {
    let server = TestServer::start(Config::default()).await;
    let url = server.url("presence");
    let mut alice = TestClient::connect_synced(&url).await.unwrap();
    let bob = TestClient::connect_synced(&url).await.unwrap();
    let alice_id = alice.client_id();

    let first = json!({"user": {"name": "alice"}}).to_string();
    alice.set_awareness(&first);
    bob.wait_until(DEADLINE, "bob sees alice's state", |b| {
        b.awareness_states().get(&alice_id) == Some(&first)
    })
    .await;
    // The sender gets its own state back too (relayed to everyone, like the reference server).
    alice
        .wait_until(DEADLINE, "alice gets her own state relayed", |a| {
            a.status().awareness_messages > 0
        })
        .await;

    let second = json!({"user": {"name": "alice"}, "cursor": {"anchor": 3}}).to_string();
    alice.set_awareness(&second);
    bob.wait_until(DEADLINE, "bob sees alice's updated state", |b| {
        b.awareness_states().get(&alice_id) == Some(&second)
    })
    .await;

    // A client joining later receives the current states when it connects.
    let carol = TestClient::connect_synced(&url).await.unwrap();
    carol
        .wait_until(DEADLINE, "carol receives alice's state on join", |c| {
            c.awareness_states().get(&alice_id) == Some(&second)
        })
        .await;

    // Clean close: the state alice introduced is removed and the removal broadcast.
    alice.disconnect().await;
    for (name, client) in [("bob", &bob), ("carol", &carol)] {
        client
            .wait_until(
                DEADLINE,
                format!("{name} sees alice's state removed"),
                |c| !c.awareness_states().contains_key(&alice_id),
            )
            .await;
    }

    // A connection that just drops (no close handshake) has its states removed too.
    let mut dave = TestClient::connect_synced(&url).await.unwrap();
    let dave_id = dave.client_id();
    dave.set_awareness(r#"{"user":{"name":"dave"}}"#);
    bob.wait_until(DEADLINE, "bob sees dave", |b| {
        b.awareness_states().contains_key(&dave_id)
    })
    .await;
    dave.drop_connection().await;
    bob.wait_until(DEADLINE, "bob sees dave's state removed", |b| {
        !b.awareness_states().contains_key(&dave_id)
    })
    .await;

    // An explicit `null` state (y-protocols' clean leave) is relayed as a removal.
    let erin = TestClient::connect_synced(&url).await.unwrap();
    let erin_id = erin.client_id();
    erin.set_awareness(r#"{"user":{"name":"erin"}}"#);
    carol
        .wait_until(DEADLINE, "carol sees erin", |c| {
            c.awareness_states().contains_key(&erin_id)
        })
        .await;
    erin.clear_awareness();
    carol
        .wait_until(DEADLINE, "carol sees erin's state cleared", |c| {
            !c.awareness_states().contains_key(&erin_id)
        })
        .await;

    for client in [&bob, &carol, &erin] {
        assert!(client.is_connected());
        assert!(client.status().errors.is_empty(), "{:?}", client.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_awareness_expires_only_after_the_timeout() {
    let clock = ManualClock::new(1_000_000_000);
    let config = Config {
        clock: clock.clone() as Arc<dyn concord_core::Clock>,
        awareness_timeout: Duration::from_secs(30),
        awareness_sweep_interval: Duration::from_millis(20),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let url = server.url("expiry");
    let observer = TestClient::connect_synced(&url).await.unwrap();
    let early = TestClient::connect_synced(&url).await.unwrap();
    let late = TestClient::connect_synced(&url).await.unwrap();
    let (early_id, late_id) = (early.client_id(), late.client_id());

    // `early` sets its state at T, `late` at T + 2 s (server time is the manual clock).
    early.set_awareness(r#"{"who":"early"}"#);
    let early_clock = early.awareness_clock(early_id);
    observer
        .wait_until(DEADLINE, "the observer sees early's state", |o| {
            o.awareness_states().contains_key(&early_id)
        })
        .await;
    clock.advance(Duration::from_secs(2));
    late.set_awareness(r#"{"who":"late"}"#);
    let late_clock = late.awareness_clock(late_id);
    observer
        .wait_until(DEADLINE, "the observer sees late's state", |o| {
            o.awareness_states().contains_key(&late_id)
        })
        .await;

    // T + 31 s: early's state is 31 s old and expires; late's is 29 s old. Both were checked by
    // the same sweep (the removal of early is broadcast in one message per sweep), so late's
    // state surviving that sweep shows it is not removed before its timeout.
    clock.advance(Duration::from_secs(29));
    observer
        .wait_until(DEADLINE, "the observer sees early's state expire", |o| {
            !o.awareness_states().contains_key(&early_id)
        })
        .await;
    assert!(
        observer.awareness_states().contains_key(&late_id),
        "late's state (29 s old) was removed before its 30 s timeout: {:?}",
        observer.awareness_states()
    );
    // Expiry removes a state, not its connection.
    assert!(early.is_connected(), "{:?}", early.status());

    // T + 33 s: late's state is 31 s old and expires as well.
    clock.advance(Duration::from_secs(2));
    observer
        .wait_until(DEADLINE, "the observer sees late's state expire", |o| {
            !o.awareness_states().contains_key(&late_id)
        })
        .await;

    // A renewed state is fresh again: it is relayed, and only expires 30 s after the renewal.
    // (Each client first learns that the server removed its state, which moves its own clock
    // past the server's; a renewal with an older clock would rightly be ignored.)
    for (client, id, clock) in [
        (&early, early_id, early_clock),
        (&late, late_id, late_clock),
    ] {
        client
            .wait_until(DEADLINE, "the client learns its state was removed", |c| {
                c.awareness_clock(id) > clock
            })
            .await;
    }
    late.set_awareness(r#"{"who":"late","renewed":true}"#);
    early.set_awareness(r#"{"who":"early","renewed":true}"#);
    observer
        .wait_until(DEADLINE, "the observer sees both renewals", |o| {
            let states = o.awareness_states();
            states.contains_key(&late_id) && states.contains_key(&early_id)
        })
        .await;
    clock.advance(Duration::from_secs(31));
    observer
        .wait_until(DEADLINE, "the renewed states expire in turn", |o| {
            let states = o.awareness_states();
            !states.contains_key(&late_id) && !states.contains_key(&early_id)
        })
        .await;
    for client in [&observer, &early, &late] {
        assert!(client.is_connected());
        assert!(client.status().errors.is_empty(), "{:?}", client.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_query_awareness_return_every_state() {
    let server = TestServer::start(Config::default()).await;
    let url = server.url("query");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();
    a.set_awareness(r#"{"who":"a"}"#);
    b.set_awareness(r#"{"who":"b"}"#);
    for client in [&a, &b] {
        client
            .wait_until(DEADLINE, "both states are known", |c| {
                c.awareness_states().len() == 2
            })
            .await;
    }
    let mut expected = vec![
        (a.client_id(), r#"{"who":"a"}"#.to_owned()),
        (b.client_id(), r#"{"who":"b"}"#.to_owned()),
    ];
    expected.sort();

    // On connect: SyncStep1, then the current states.
    let mut raw = RawClient::connect(&url).await.unwrap();
    let first = raw.next_binary(DEADLINE).await.unwrap();
    assert!(
        matches!(
            decode_messages(&first).unwrap()[..],
            [Message::Sync(SyncMessage::SyncStep1(_))]
        ),
        "{first:?}"
    );
    let second = raw.next_binary(DEADLINE).await.unwrap();
    assert_eq!(awareness_in(&second), expected);

    // QueryAwareness is answered with every state.
    raw.send_binary(Message::AwarenessQuery.encode_v1())
        .await
        .unwrap();
    let answer = raw.next_binary(DEADLINE).await.unwrap();
    assert_eq!(awareness_in(&answer), expected);
}
