//! Webhooks against a real HTTP receiver on loopback: debouncing (with an injected clock),
//! signatures, a receiver that is down for a while, giving up, and a SIGKILL with events
//! pending.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use concord_core::webhook::{Retry, verify};
use concord_core::{DocName, MemoryStore};
use concord_server::{Config, WebhookConfig};
use concord_tests::{ManualClock, Received, WebhookReceiver, text_insert_update};
use serde_json::{Value, json};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::api::{api, eventually, get, http, post_update};

const SECRET: &[u8] = b"whsec_concord_tests";
/// Requests one receiver may have in flight at once.
const SLOTS_PER_RECEIVER: usize = 4;

/// A request's signature holds for its body under [`SECRET`] at `now_s`, and the id header is
/// the body's id.
fn assert_signed(request: &Received, now_s: u64) {
    assert_eq!(
        verify(SECRET, &request.signature, &request.body, now_s, 300),
        Ok(()),
        "signature {:?}",
        request.signature
    );
    assert_eq!(request.json()["id"], request.event_id.as_str());
}

fn config_for(receiver: &WebhookReceiver) -> WebhookConfig {
    WebhookConfig::new([receiver.url.as_str()], SECRET).unwrap()
}

/// The state vector a document's stored state has.
async fn stored_state_vector(server: &concord_tests::EmbeddedServer, doc: &str) -> StateVector {
    let (status, _, state) = get(&api(server, &format!("/docs/{doc}"))).await;
    assert_eq!(status, 200);
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    doc.transact().state_vector()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_announced_after_two_quiet_seconds_or_ten_busy_ones_signed_with_range_and_state_vector()
 {
    let clock = ManualClock::new(1_800_000_000_000);
    let receiver = WebhookReceiver::start(true).await;
    let config = Config {
        clock: clock.clone(),
        webhooks: Some(config_for(&receiver)),
        ..Config::default()
    };
    let server = crate::api::memory_server(config).await;
    let seen = |n: u64| {
        let concord = server.concord.clone();
        async move {
            eventually("the notifier saw the edit", || async {
                (concord.stats().webhook_updates_seen >= n).then_some(())
            })
            .await
        }
    };
    // `x` is edited once; `y` at once and 1.9 s later.
    assert_eq!(
        post_update(&server, "x", text_insert_update(1, "t", "x"))
            .await
            .0,
        200
    );
    assert_eq!(
        post_update(&server, "y", text_insert_update(2, "t", "y1"))
            .await
            .0,
        200
    );
    seen(2).await;
    clock.advance(Duration::from_millis(1_900));
    assert_eq!(
        post_update(&server, "y", text_insert_update(3, "t", "y2"))
            .await
            .0,
        200
    );
    seen(3).await;
    // Two seconds after `x`'s edit: `x` is due, `y` (edited 0.1 s ago) is not. Both would be
    // announced by the same round if `y` were, so once `x` arrived, one event was made.
    clock.advance(Duration::from_millis(100));
    let x = eventually("x is announced", || async {
        receiver.accepted().into_iter().next()
    })
    .await;
    assert_eq!(server.concord.stats().webhook_events, 1, "y is not due yet");
    assert_signed(&x, clock.millis() / 1_000);
    let body = x.json();
    assert_eq!(body["type"], "document.updated");
    assert_eq!(body["document"], "x");
    assert_eq!(
        (body["from"].as_str(), body["through"].as_str()),
        (Some("1.0"), Some("1.0"))
    );
    assert_eq!(body["created_at_ms"], clock.millis());
    let sv = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body["state_vector"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        StateVector::decode_v1(&sv).unwrap(),
        stored_state_vector(&server, "x").await
    );

    // Two seconds after `y`'s second edit: one event for both.
    clock.advance(Duration::from_millis(1_900));
    let y = eventually("y is announced", || async {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.json()["document"] == "y")
    })
    .await;
    assert_signed(&y, clock.millis() / 1_000);
    let body = y.json();
    assert_eq!(
        (body["from"].as_str(), body["through"].as_str()),
        (Some("1.0"), Some("2.0"))
    );
    let sv = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body["state_vector"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        StateVector::decode_v1(&sv).unwrap(),
        stored_state_vector(&server, "y").await
    );
    assert_eq!(server.concord.stats().webhook_events, 2);

    // `z` is edited every 1.5 s and never quiet for two: it is announced 10 s after its first
    // edit, with what came until then, although edits go on.
    let mut sent = 0u64;
    let before = server.concord.stats().webhook_updates_seen;
    for i in 0..8u64 {
        if i > 0 {
            clock.advance(Duration::from_millis(1_500));
        }
        let update = text_insert_update(10 + i, "t", "z");
        assert_eq!(post_update(&server, "z", update).await.0, 200);
        sent += 1;
        seen(before + sent).await;
    }
    // The clock is now 10.5 s after the first edit and 0 s after the last one.
    let z = eventually("z is announced while it is edited", || async {
        receiver
            .accepted()
            .into_iter()
            .find(|r| r.json()["document"] == "z")
    })
    .await;
    let body = z.json();
    assert_eq!(body["from"], "1.0");
    let through: concord_core::Position = body["through"].as_str().unwrap().parse().unwrap();
    assert!(
        through.seq >= 7,
        "the edits of the first ten seconds: {through}"
    );
    let delivered = receiver.accepted().len();
    assert_eq!(
        delivered,
        3,
        "one event per burst: {:?}",
        receiver.accepted()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_receiver_that_was_down_for_a_while_at_least_once_with_its_id() {
    let receiver = WebhookReceiver::start(false).await;
    let mut webhooks = config_for(&receiver);
    webhooks.quiet = Duration::from_millis(100);
    webhooks.max_wait = Duration::from_secs(1);
    webhooks.retry = Retry {
        first: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        give_up_after: Duration::from_secs(3_600),
    };
    let config = Config {
        webhooks: Some(webhooks),
        ..Config::default()
    };
    let store = Arc::new(MemoryStore::new());
    let server = concord_tests::EmbeddedServer::start_with_store(config, store.clone()).await;
    let a = DocName::new("a").unwrap();
    assert_eq!(
        post_update(&server, "a", text_insert_update(1, "t", "one"))
            .await
            .0,
        200
    );
    assert_eq!(
        post_update(&server, "b", text_insert_update(2, "t", "b"))
            .await
            .0,
        200
    );
    let version = server.concord.save_version(&a, "one").await.unwrap();
    assert_eq!(
        post_update(&server, "a", text_insert_update(3, "t", "two "))
            .await
            .0,
        200
    );
    let restored = server.concord.restore(&a, version.id).await.unwrap();
    // `b`'s edit is announced before it is deleted (a burst still pending at a deletion is
    // not: the deletion is).
    eventually("b's edit is announced", || async {
        receiver
            .received()
            .iter()
            .any(|r| r.json()["document"] == "b")
            .then_some(())
    })
    .await;
    let deleted = http().delete(api(&server, "/docs/b")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    // Each event is refused a few times...
    let refused = eventually("every event refused twice", || async {
        let mut tries: BTreeMap<String, usize> = BTreeMap::new();
        for request in receiver.received() {
            *tries.entry(request.event_id).or_default() += 1;
        }
        let kinds: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| format!("{} {}", r.json()["type"], r.json()["document"]))
            .collect();
        (kinds.len() == 4 && tries.values().all(|n| *n >= 2)).then_some(tries)
    })
    .await;
    assert!(server.concord.stats().webhook_failures >= 8);
    // ...then the receiver is back.
    receiver.set_accepting(true);
    let now_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let accepted = eventually("every event delivered", || async {
        let accepted: BTreeMap<String, Received> = receiver
            .accepted()
            .into_iter()
            .map(|r| (r.event_id.clone(), r))
            .collect();
        refused
            .keys()
            .all(|id| accepted.contains_key(id))
            .then_some(accepted)
    })
    .await;
    for request in accepted.values() {
        assert_signed(request, now_s());
    }
    let bodies: Vec<Value> = accepted.values().map(Received::json).collect();
    let find = |kind: &str, doc: &str| {
        bodies
            .iter()
            .find(|b| b["type"] == kind && b["document"] == doc)
            .unwrap_or_else(|| panic!("no {kind} for {doc} in {bodies:?}"))
            .clone()
    };
    let restore = find("document.restored", "a");
    assert_eq!(
        (
            &restore["version"],
            &restore["saved_before"],
            &restore["changed"]
        ),
        (
            &json!(version.id),
            &json!(restored.saved_before.id),
            &json!(true)
        )
    );
    find("document.deleted", "b");
    find("document.updated", "b");
    // `a`'s edits (the restore is one) are announced, perhaps over two events.
    let through_a = bodies
        .iter()
        .filter(|b| b["type"] == "document.updated" && b["document"] == "a")
        .map(|b| {
            b["through"]
                .as_str()
                .unwrap()
                .parse::<concord_core::Position>()
                .unwrap()
        })
        .max()
        .unwrap();
    assert_eq!(
        through_a.seq, 3,
        "three writes to a: two edits and the restore"
    );
    eventually("the outbox is empty", || async {
        (server.concord.stats().webhook_pending == 0 && store.outbox().unwrap().entries.is_empty())
            .then_some(())
    })
    .await;
    assert_eq!(server.concord.stats().webhook_dropped, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_dropped_with_a_count_once_retrying_it_passed_the_bound() {
    let clock = ManualClock::new(1_800_000_000_000);
    let receiver = WebhookReceiver::start(false).await;
    let mut webhooks = config_for(&receiver);
    webhooks.retry = Retry {
        first: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        give_up_after: Duration::from_secs(3_600),
    };
    let store = Arc::new(MemoryStore::new());
    let config = Config {
        clock: clock.clone(),
        webhooks: Some(webhooks),
        ..Config::default()
    };
    let server = concord_tests::EmbeddedServer::start_with_store(config, store.clone()).await;
    assert_eq!(
        post_update(&server, "gone", text_insert_update(1, "t", "x"))
            .await
            .0,
        200
    );
    eventually("the notifier saw the edit", || async {
        (server.concord.stats().webhook_updates_seen == 1).then_some(())
    })
    .await;
    clock.advance(Duration::from_secs(2));
    eventually("the receiver refused it", || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        store.outbox().unwrap().entries.len(),
        1,
        "kept while retried"
    );
    clock.advance(Duration::from_secs(3_600));
    eventually("given up", || async {
        (server.concord.stats().webhook_dropped == 1).then_some(())
    })
    .await;
    eventually("gone from the outbox", || async {
        store.outbox().unwrap().entries.is_empty().then_some(())
    })
    .await;
    assert_eq!(server.concord.stats().webhook_pending, 0);
    assert_eq!(server.concord.stats().webhook_delivered, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_at_a_sigkill_are_delivered_after_the_restart_with_the_same_ids() {
    use crate::process::ServerProcess;
    let data = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(false).await;
    let secret = std::str::from_utf8(SECRET).unwrap();
    let start = |port: u16| {
        let dir = data.path().to_string_lossy().into_owned();
        ServerProcess::start_with(
            port,
            &[
                "--data-dir",
                &dir,
                "--webhook-url",
                &receiver.url,
                "--webhook-secret",
                secret,
            ],
            None,
        )
    };
    let server = start(0);
    let write = |addr: std::net::SocketAddr, doc: &str, client: u64| {
        http()
            .post(format!("http://{addr}/api/docs/{doc}/update"))
            .header("content-type", "application/octet-stream")
            .body(text_insert_update(client, "t", doc))
            .send()
    };
    assert_eq!(write(server.addr, "early", 1).await.unwrap().status(), 200);
    // `early`'s event is made and refused: it is in the outbox.
    let refused = tokio::time::timeout(concord_tests::DEADLINE, async {
        loop {
            if let Some(first) = receiver.received().into_iter().next() {
                return first;
            }
            tokio::time::sleep(concord_tests::POLL_INTERVAL).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "early's event never came; the server logged:\n{}",
            server.log()
        )
    });
    assert_eq!(refused.json()["document"], "early");
    // `late` is stored, and the process dies before its burst is due (two quiet seconds).
    assert_eq!(write(server.addr, "late", 2).await.unwrap().status(), 200);
    let port = server.addr.port();
    server.kill();
    receiver.set_accepting(true);
    let server = start(port);
    let accepted = eventually("both announced after the restart", || async {
        let accepted = receiver.accepted();
        let has = |doc: &str| accepted.iter().any(|r| r.json()["document"] == doc);
        (has("early") && has("late")).then_some(accepted)
    })
    .await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for request in &accepted {
        assert_signed(request, now_s);
    }
    let early = accepted
        .iter()
        .find(|r| r.json()["document"] == "early")
        .unwrap();
    assert_eq!(
        early.event_id, refused.event_id,
        "the same event, the same id"
    );
    assert_eq!(early.body, refused.body, "the same event, the same body");
    let late = accepted
        .iter()
        .find(|r| r.json()["document"] == "late")
        .unwrap()
        .json();
    assert_eq!(late["type"], "document.updated");
    assert_eq!(late["from"], "1.0");
    let through: concord_core::Position = late["through"].as_str().unwrap().parse().unwrap();
    assert_eq!(through.seq, 1);
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_its_oldest_delivery_and_one_for_a_receiver_no_longer_configured() {
    let clock = ManualClock::new(1_800_000_000_000);
    let receiver = WebhookReceiver::start(false).await;
    let store = Arc::new(MemoryStore::new());
    // Left from a run with another receiver.
    let stale = json!({
        "url": "http://127.0.0.1:9/removed",
        "event": "0123",
        "created_at_ms": 1,
        "body": "{}",
    });
    store
        .outbox_write(
            vec![concord_core::OutboxEntry {
                key: "0000000000000001-0123-0".to_owned(),
                payload: stale.to_string().into_bytes(),
            }],
            vec![],
        )
        .unwrap();
    let mut webhooks = config_for(&receiver);
    webhooks.max_pending = 2;
    webhooks.retry = Retry {
        first: Duration::from_secs(3_600),
        max_delay: Duration::from_secs(3_600),
        give_up_after: Duration::from_secs(86_400),
    };
    let config = Config {
        clock: clock.clone(),
        webhooks: Some(webhooks),
        ..Config::default()
    };
    let server = concord_tests::EmbeddedServer::start_with_store(config, store.clone()).await;
    eventually("the stale delivery is dropped", || async {
        (server.concord.stats().webhook_dropped == 1).then_some(())
    })
    .await;
    // Three documents, one burst each: three deliveries for a room of two.
    for (i, doc) in ["d1", "d2", "d3"].into_iter().enumerate() {
        let update = text_insert_update(i as u64 + 1, "t", doc);
        assert_eq!(post_update(&server, doc, update).await.0, 200);
        eventually("the notifier saw the edit", || async {
            (server.concord.stats().webhook_updates_seen == i as u64 + 1).then_some(())
        })
        .await;
        clock.advance(Duration::from_secs(3));
        eventually("its event is made", || async {
            (server.concord.stats().webhook_events == i as u64 + 1).then_some(())
        })
        .await;
        if i < 2 {
            // Refused once and waiting an hour for its retry: not in flight when d3 comes.
            eventually("its first attempt failed", || async {
                (server.concord.stats().webhook_failures == i as u64 + 1).then_some(())
            })
            .await;
        }
    }
    eventually("the oldest is dropped", || async {
        let stats = server.concord.stats();
        (stats.webhook_dropped == 2 && stats.webhook_pending == 2).then_some(())
    })
    .await;
    eventually("the outbox holds the two newest", || async {
        let documents: Vec<String> = store
            .outbox()
            .unwrap()
            .entries
            .iter()
            .map(|entry| {
                let delivery: Value = serde_json::from_slice(&entry.payload).unwrap();
                let body: Value = serde_json::from_str(delivery["body"].as_str().unwrap()).unwrap();
                body["document"].as_str().unwrap().to_owned()
            })
            .collect();
        (documents == ["d2", "d3"]).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_hold_up_another() {
    let stuck = WebhookReceiver::start(true).await;
    stuck.hang();
    let healthy = WebhookReceiver::start(true).await;
    let mut webhooks =
        WebhookConfig::new([stuck.url.as_str(), healthy.url.as_str()], SECRET).unwrap();
    webhooks.quiet = Duration::from_millis(20);
    webhooks.max_wait = Duration::from_millis(100);
    webhooks.timeout = Duration::from_secs(600);
    let config = Config {
        webhooks: Some(webhooks),
        ..Config::default()
    };
    let server = crate::api::memory_server(config).await;
    // More events than the stuck receiver has slots: each is held there, none at the other.
    let docs: Vec<String> = (0..12).map(|i| format!("doc-{i}")).collect();
    for (i, doc) in docs.iter().enumerate() {
        let update = text_insert_update(i as u64 + 1, "t", doc);
        assert_eq!(post_update(&server, doc, update).await.0, 200);
    }
    let delivered = eventually("every event reaches the healthy receiver", || async {
        let got: BTreeSet<String> = healthy
            .accepted()
            .iter()
            .map(|r| r.json()["document"].as_str().unwrap().to_owned())
            .collect();
        (got.len() == docs.len()).then_some(got)
    })
    .await;
    assert_eq!(delivered, docs.iter().cloned().collect::<BTreeSet<_>>());
    eventually("the stuck receiver holds its slots", || async {
        (stuck.received().len() == SLOTS_PER_RECEIVER).then_some(())
    })
    .await;
    assert_eq!(stuck.received().len(), SLOTS_PER_RECEIVER, "and no more");
    assert!(server.concord.stats().webhook_pending >= 12 - SLOTS_PER_RECEIVER as u64);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_whose_mark_is_an_earlier_ones_is_announced_from_its_start() {
    // `x` is stored while no webhooks are configured, and the outbox holds a mark for `x` past
    // its log's end: one of an earlier `x`, deleted without its mark going.
    let store = Arc::new(MemoryStore::new());
    let x = DocName::new("x").unwrap();
    let quiet =
        concord_tests::EmbeddedServer::start_with_store(Config::default(), store.clone()).await;
    assert_eq!(
        post_update(&quiet, "x", text_insert_update(1, "t", "new x"))
            .await
            .0,
        200
    );
    quiet.shutdown().await;
    let stale = concord_core::Position {
        seq: 5,
        index: u32::MAX,
    };
    store
        .outbox_write(Vec::new(), vec![(x, Some(stale))])
        .unwrap();

    let receiver = WebhookReceiver::start(true).await;
    let mut webhooks = config_for(&receiver);
    webhooks.quiet = Duration::from_millis(100);
    let config = Config {
        webhooks: Some(webhooks),
        ..Config::default()
    };
    let server = concord_tests::EmbeddedServer::start_with_store(config, store.clone()).await;
    let event = eventually("x announced at the start", || async {
        receiver
            .accepted()
            .iter()
            .map(Received::json)
            .find(|e| e["type"] == "document.updated" && e["document"] == "x")
    })
    .await;
    assert_eq!(event["from"], "1.0", "{event}");
    let through: concord_core::Position = event["through"].as_str().unwrap().parse().unwrap();
    assert_eq!(through.seq, 1, "{event}");
    server.shutdown().await;
}
