//! `RedisLink` on a real `redis-server` and on a real 3-master Redis Cluster (every case runs on
//! both), with recording inlets in place of rooms: other nodes'
//! entries arrive in seq order at their seqs, a node's own entries do not come back, a room that
//! loaded behind a compaction is brought up to date from the snapshot, and awareness crosses
//! nodes until a node leaves, when its clients' presence is removed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::replication::{Inlet, InletError, InletTarget, Replication};
use concord_core::{DocName, Room, Store, StoredUpdate, SystemClock};
use concord_redis::testing::{RedisCluster, RedisServer};
use concord_redis::{Redis, RedisOptions, connect};
use tokio_util::sync::CancellationToken;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, Text, Transact, Update};

const DEADLINE: Duration = Duration::from_secs(20);

/// What an inlet received.
#[derive(Default)]
struct Recorded {
    stored: Vec<(u64, Vec<Vec<u8>>)>,
    relayed: Vec<Vec<u8>>,
    updates: Vec<Vec<u8>>,
    awareness: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Recorder(Mutex<Recorded>);

impl Recorder {
    fn get<R>(&self, f: impl FnOnce(&Recorded) -> R) -> R {
        f(&self.0.lock().unwrap())
    }
}

impl InletTarget for Recorder {
    fn stored(&self, seq: u64, updates: Vec<Vec<u8>>) -> Result<(), InletError> {
        self.0.lock().unwrap().stored.push((seq, updates));
        Ok(())
    }
    fn update(&self, update: &[u8]) -> Result<(), InletError> {
        self.0.lock().unwrap().updates.push(update.to_vec());
        Ok(())
    }
    fn awareness(&self, update: &[u8]) -> Result<(), InletError> {
        self.0.lock().unwrap().awareness.push(update.to_vec());
        Ok(())
    }
    fn is_closed(&self) -> bool {
        false
    }
    fn relay(&self, update: &[u8]) -> Result<(), InletError> {
        self.0.lock().unwrap().relayed.push(update.to_vec());
        Ok(())
    }
}

async fn node(options: &RedisOptions, shutdown: &CancellationToken) -> Redis {
    connect(options.clone(), shutdown.clone())
        .await
        .expect("redis answers")
}

/// Runs each case against one `redis-server` and against a 3-master Redis Cluster.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = super::RedisServer::start();
                    super::$case(server.options("link")).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let cluster = super::RedisCluster::start(3);
                    // No periodic catch-up: what arrives came by a doorbell (or the reads
                    // at follow and subscribe).
                    let options = super::RedisOptions {
                        catch_up_interval: super::Duration::from_secs(3600),
                        ..cluster.options("link")
                    };
                    super::$case(options).await;
                }
            )*
        }
    };
}

on_both!(
    other_nodes_entries_arrive_at_their_seqs_and_own_entries_do_not,
    a_room_loaded_behind_a_compaction_is_caught_up_from_the_snapshot,
    presence_crosses_nodes_and_a_node_that_leaves_takes_its_clients_presence_along,
    a_published_update_is_relayed_at_once_and_enters_rooms_only_from_the_stream,
);

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn name(s: &str) -> DocName {
    DocName::new(s).unwrap()
}

/// A Yjs update inserting `text` at the start of root text `t`, by client `client`.
fn text_update(client: u64, text: &str) -> Vec<u8> {
    let doc = yrs::Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

fn text_of(updates: &[Vec<u8>]) -> String {
    let doc = yrs::Doc::new();
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    for u in updates {
        txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
    }
    t.get_string(&txn)
}

async fn other_nodes_entries_arrive_at_their_seqs_and_own_entries_do_not(server: RedisOptions) {
    let shutdown = CancellationToken::new();
    let (a, b) = (
        node(&server, &shutdown).await,
        node(&server, &shutdown).await,
    );
    let doc = name("d");
    let seen_by_a = Arc::new(Recorder::default());
    a.link.follow(&doc, Inlet::new(seen_by_a.clone()), 0);
    for (store, text) in [(&b.store, "b1"), (&a.store, "a2"), (&b.store, "b3")] {
        let batch: Arc<[StoredUpdate]> = vec![StoredUpdate {
            doc: doc.clone(),
            update: text_update(1, text),
        }]
        .into();
        store.append(batch).await.unwrap();
    }
    wait_for("A has B's two entries", || {
        seen_by_a.get(|r| r.stored.len() == 2)
    })
    .await;
    let seqs: Vec<u64> = seen_by_a.get(|r| r.stored.iter().map(|(s, _)| *s).collect());
    assert_eq!(
        seqs,
        vec![1, 3],
        "B's entries at their seqs, A's own skipped"
    );
    shutdown.cancel();
}

async fn a_room_loaded_behind_a_compaction_is_caught_up_from_the_snapshot(server: RedisOptions) {
    let shutdown = CancellationToken::new();
    let (a, b) = (
        node(&server, &shutdown).await,
        node(&server, &shutdown).await,
    );
    let doc = name("compacted");
    let mut room = Room::new(Arc::new(SystemClock));
    for (i, piece) in ["x", "y", "z"].iter().enumerate() {
        let update = text_update(10 + i as u64, piece);
        room.restore(&update).unwrap();
        let batch: Arc<[StoredUpdate]> = vec![StoredUpdate {
            doc: doc.clone(),
            update,
        }]
        .into();
        b.store.append(batch).await.unwrap();
    }
    // Entries 1 and 2 are in the snapshot; 3 stays in the stream.
    let mut covered = Room::new(Arc::new(SystemClock));
    covered.restore(&text_update(10, "x")).unwrap();
    covered.restore(&text_update(11, "y")).unwrap();
    b.store
        .compact(&doc, covered.encode_snapshot().unwrap(), 2)
        .await
        .unwrap();
    // A follows as if its load had stopped before entry 1: entry 1 is gone from the stream.
    let seen = Arc::new(Recorder::default());
    a.link.follow(&doc, Inlet::new(seen.clone()), 0);
    wait_for("A caught up", || seen.get(|r| !r.updates.is_empty())).await;
    let text = seen.get(|r| text_of(&r.updates));
    assert_eq!(text.len(), 3, "the whole document arrived: {text:?}");
    assert_eq!(a.link.resyncs(), 1);
    // Later entries arrive as entries again.
    let batch: Arc<[StoredUpdate]> = vec![StoredUpdate {
        doc: doc.clone(),
        update: text_update(20, "w"),
    }]
    .into();
    b.store.append(batch).await.unwrap();
    wait_for("entry 4 arrives", || {
        seen.get(|r| r.stored.iter().any(|(seq, _)| *seq == 4))
    })
    .await;
    shutdown.cancel();
}

fn awareness(client: u64, clock: u32, json: &str) -> Vec<u8> {
    AwarenessUpdate {
        clients: [(
            yrs::block::ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: Arc::from(json),
            },
        )]
        .into_iter()
        .collect(),
    }
    .encode_v1()
}

async fn presence_crosses_nodes_and_a_node_that_leaves_takes_its_clients_presence_along(
    server: RedisOptions,
) {
    let shutdown = CancellationToken::new();
    let a = node(&server, &shutdown).await;
    let b_stop = CancellationToken::new();
    let b = node(&server, &b_stop).await;
    let doc = name("presence");
    let at_a = Arc::new(Recorder::default());
    let at_b = Arc::new(Recorder::default());
    a.link.follow(&doc, Inlet::new(at_a.clone()), 0);
    b.link.follow(&doc, Inlet::new(at_b.clone()), 0);
    // Subscriptions are made by a task: publish until one arrives.
    let state = awareness(7, 3, r#"{"user":"bob"}"#);
    let end = Instant::now() + DEADLINE;
    while at_a.get(|r| r.awareness.is_empty()) {
        assert!(Instant::now() < end, "B's awareness never reached A");
        b.link.publish(
            &doc,
            concord_core::replication::Published::Awareness(state.clone().into()),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(at_a.get(|r| r.awareness[0].clone()), state);
    assert!(
        at_b.get(|r| r.awareness.is_empty()),
        "a node's own awareness does not come back to it"
    );
    // B stops: A removes B's client with a clock past the last one it saw.
    b_stop.cancel();
    wait_for("A removed bob", || {
        at_a.get(|r| {
            r.awareness.iter().any(|u| {
                let update = AwarenessUpdate::decode_v1(u).unwrap();
                update
                    .clients
                    .get(&yrs::block::ClientID::new(7))
                    .is_some_and(|e| &*e.json == "null" && e.clock == 4)
            })
        })
    })
    .await;
    assert_eq!(a.link.ghosts_removed(), 1);
    shutdown.cancel();
}

async fn a_published_update_is_relayed_at_once_and_enters_rooms_only_from_the_stream(
    server: RedisOptions,
) {
    let shutdown = CancellationToken::new();
    let (a, b) = (
        node(&server, &shutdown).await,
        node(&server, &shutdown).await,
    );
    let doc = name("fast");
    let at_a = Arc::new(Recorder::default());
    a.link.follow(&doc, Inlet::new(at_a.clone()), 0);
    let update = text_update(3, "hi");
    // Subscriptions are made by a task: publish until the fast path delivers.
    let end = Instant::now() + DEADLINE;
    while at_a.get(|r| r.relayed.is_empty()) {
        assert!(
            Instant::now() < end,
            "B's update never reached A over pub/sub"
        );
        b.link.publish(
            &doc,
            concord_core::replication::Published::Update(update.clone().into()),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(at_a.get(|r| r.relayed[0].clone()), update);
    assert!(
        at_a.get(|r| r.updates.is_empty() && r.stored.is_empty()),
        "nothing entered A's room before the store had it"
    );
    // Once B's store appends it, it arrives as the stream entry.
    let batch: Arc<[StoredUpdate]> = vec![StoredUpdate {
        doc: doc.clone(),
        update: update.clone(),
    }]
    .into();
    b.store.append(batch).await.unwrap();
    wait_for("the stream entry reaches A", || {
        at_a.get(|r| r.stored == vec![(1, vec![update.clone()])])
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_an_entry_whose_doorbell_was_lost_arrives_at_the_next_catch_up() {
    let cluster = RedisCluster::start(3);
    let options = RedisOptions {
        catch_up_interval: Duration::from_millis(200),
        ..cluster.options("link")
    };
    let shutdown = CancellationToken::new();
    let a = node(&options, &shutdown).await;
    let doc = name("quiet");
    let seen = Arc::new(Recorder::default());
    a.link.follow(&doc, Inlet::new(seen.clone()), 0);
    let update = text_update(5, "unannounced");
    let seq = concord_redis::testing::append_without_doorbell(&options, &doc, &update)
        .await
        .unwrap();
    wait_for("the unannounced entry arrives", || {
        seen.get(|r| r.stored == vec![(seq, vec![update.clone()])])
    })
    .await;
    shutdown.cancel();
}
