//! The replication seam (`concord_server::Replication`): two Concord instances in one process
//! share one store and are linked by an in-memory bus that implements the trait the way a
//! network replication would (events queued to a task of its own, delivered to the other
//! instance's inlet). A client of either instance sees the other's edits and presence; nothing
//! that arrives from the other instance is published again; an unloaded room is unfollowed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_core::{DocName, MemoryStore};
use concord_server::{Config, Inlet, Published, Replication};
use concord_tests::{DEADLINE, EmbeddedServer, TestClient, poll_until};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use yrs::Text;

/// Events waiting for the delivery task. The test fails loudly if it ever overflows.
const BUS_QUEUE: usize = 4096;

/// What the bus saw, per instance.
#[derive(Default)]
struct Seen {
    /// Inlets of the rooms open on each instance, by document.
    inlets: HashMap<(usize, DocName), Inlet>,
    /// Every event each instance published.
    published: Vec<(usize, DocName, Published)>,
    /// Documents each instance stopped following.
    unfollowed: Vec<(usize, DocName)>,
}

/// Links instances: what one publishes is delivered to the inlets of the others.
struct Bus {
    seen: Mutex<Seen>,
    events: mpsc::Sender<(usize, DocName, Published)>,
}

impl Bus {
    fn start() -> Arc<Bus> {
        let (events, mut rx) = mpsc::channel::<(usize, DocName, Published)>(BUS_QUEUE);
        let bus = Arc::new(Bus {
            seen: Mutex::default(),
            events,
        });
        let delivering = bus.clone();
        tokio::spawn(async move {
            while let Some((from, doc, event)) = rx.recv().await {
                let targets: Vec<Inlet> = delivering
                    .seen
                    .lock()
                    .unwrap()
                    .inlets
                    .iter()
                    .filter(|((node, name), _)| *node != from && *name == doc)
                    .map(|(_, inlet)| inlet.clone())
                    .collect();
                for inlet in targets {
                    // A room that closed meanwhile refuses; the store has the update anyway.
                    let _ = match &event {
                        Published::Update(update) => inlet.update(update),
                        Published::Awareness(update) => inlet.awareness(update),
                        Published::Stateless(payload) => {
                            inlet.stateless(payload);
                            Ok(())
                        }
                    };
                }
            }
        });
        bus
    }

    fn link(self: &Arc<Bus>, node: usize) -> Arc<dyn Replication> {
        Arc::new(Link {
            bus: self.clone(),
            node,
        })
    }

    fn published_by(&self, node: usize) -> Vec<Published> {
        let seen = self.seen.lock().unwrap();
        seen.published
            .iter()
            .filter(|(from, _, _)| *from == node)
            .map(|(_, _, event)| event.clone())
            .collect()
    }
}

/// One instance's end of the bus.
struct Link {
    bus: Arc<Bus>,
    node: usize,
}

impl Replication for Link {
    fn follow(&self, doc: &DocName, inlet: Inlet, _loaded: concord_core::Seq) {
        let mut seen = self.bus.seen.lock().unwrap();
        seen.inlets.insert((self.node, doc.clone()), inlet);
    }

    fn unfollow(&self, doc: &DocName) {
        let mut seen = self.bus.seen.lock().unwrap();
        seen.inlets.remove(&(self.node, doc.clone()));
        seen.unfollowed.push((self.node, doc.clone()));
    }

    fn publish(&self, doc: &DocName, event: Published) {
        self.bus
            .seen
            .lock()
            .unwrap()
            .published
            .push((self.node, doc.clone(), event.clone()));
        self.bus
            .events
            .try_send((self.node, doc.clone(), event))
            .expect("the bus keeps up in this test");
    }
}

fn updates(events: &[Published]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Published::Update(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_linked_by_a_replication_share_edits_and_presence_without_echoes() {
    let bus = Bus::start();
    let store = Arc::new(MemoryStore::new());
    let config = |node: usize| Config {
        replication: Some(bus.link(node)),
        room_idle_timeout: Duration::from_millis(50),
        ..Config::default()
    };
    let a = EmbeddedServer::start_with_store(config(0), store.clone()).await;
    let b = EmbeddedServer::start_with_store(config(1), store.clone()).await;
    // What each instance stores, as it stores it.
    let mut stored_by_a = a.concord.all_changes();
    let mut stored_by_b = b.concord.all_changes();
    let name = DocName::new("shared/notes").unwrap();

    let alice = TestClient::connect_synced(&a.url(name.as_str()))
        .await
        .unwrap();
    let bob = TestClient::connect_synced(&b.url(name.as_str()))
        .await
        .unwrap();
    for word in ["one ", "two ", "three "] {
        alice.edit(|txn| {
            let text = yrs::WriteTxn::get_or_insert_text(txn, "t");
            let end = text.len(txn);
            text.insert(txn, end, word);
        });
    }
    bob.wait_until(
        DEADLINE,
        "Bob, on the other instance, has Alice's edits",
        |c| c.text("t") == "one two three ",
    )
    .await;
    assert_eq!(updates(&bus.published_by(0)), 3, "one event per update");
    assert_eq!(
        updates(&bus.published_by(1)),
        0,
        "what arrives from another instance is not published again"
    );

    bob.edit(|txn| {
        let text = yrs::WriteTxn::get_or_insert_text(txn, "t");
        text.insert(txn, 0, "zero ");
    });
    alice
        .wait_until(DEADLINE, "Alice has Bob's edit", |c| {
            c.text("t") == "zero one two three "
        })
        .await;
    assert_eq!(updates(&bus.published_by(0)), 3, "no echo back to B");
    assert_eq!(updates(&bus.published_by(1)), 1);

    // Presence crosses too, and so does its removal when a client leaves.
    alice.set_awareness(r#"{"user":"alice"}"#);
    let alice_id = alice.client_id();
    bob.wait_until(DEADLINE, "Bob sees Alice's presence", |c| {
        c.awareness_states().contains_key(&alice_id)
    })
    .await;
    let mut alice = alice;
    alice.disconnect().await;
    bob.wait_until(DEADLINE, "Alice's presence is gone for Bob", |c| {
        !c.awareness_states().contains_key(&alice_id)
    })
    .await;

    // A's room is idle now: it unloads, and A stops following the document.
    poll_until(
        DEADLINE,
        "A unloaded the document and unfollowed it",
        || {
            !a.concord.is_loaded(&name)
                && bus
                    .seen
                    .lock()
                    .unwrap()
                    .unfollowed
                    .contains(&(0, name.clone()))
        },
    )
    .await;
    let mut bob = bob;
    bob.disconnect().await;
    a.shutdown().await;
    b.shutdown().await;

    // Each instance stored its own clients' updates, and only those: the shared store has
    // every update once. (Shutdown drained both persistence queues.)
    let count = |changes: &mut std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>>| {
        let mut n = 0;
        while let Some(Some(change)) = changes.next().now_or_never() {
            let change: Result<Arc<concord_server::feed::Change>, u64> = change;
            assert_eq!(change.expect("the subscriber kept up").doc, name);
            n += 1;
        }
        n
    };
    assert_eq!(
        count(&mut stored_by_a),
        3,
        "Alice's three edits, stored by A"
    );
    assert_eq!(count(&mut stored_by_b), 1, "Bob's edit, stored by B");
}
