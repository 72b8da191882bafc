//! `RedisOptions::wait_replicas`: with a replica required, an append is acknowledged only once
//! the replica has it; while the replica is gone, appends wait (unacknowledged, the store not
//! ready) and complete once it is back. Real `redis-server` primary and replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_core::{DocName, Store, StoredUpdate};
use concord_redis::testing::RedisServer;
use concord_redis::{RedisOptions, connect};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

fn batch(doc: &DocName, byte: u8) -> Arc<[StoredUpdate]> {
    vec![StoredUpdate {
        doc: doc.clone(),
        update: vec![byte],
    }]
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_wait_for_the_replicas_asked_for() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&primary);
    let shutdown = CancellationToken::new();
    let options = RedisOptions {
        urls: vec![primary.url()],
        wait_replicas: 1,
        ..RedisOptions::default()
    };
    let redis = connect(options, shutdown.clone()).await.unwrap();
    let store = redis.store.clone();
    let doc = DocName::new("replicated").unwrap();
    // Acknowledged once the replica has it (the replica may still be syncing at first).
    tokio::time::timeout(DEADLINE, store.append(batch(&doc, 1)))
        .await
        .expect("the replica confirms")
        .unwrap();
    assert_eq!(store.ready(), Ok(()));

    replica.kill();
    let pending = tokio::spawn({
        let store = store.clone();
        let doc = doc.clone();
        async move { store.append(batch(&doc, 2)).await }
    });
    let end = Instant::now() + DEADLINE;
    while store.ready().is_ok() {
        assert!(
            Instant::now() < end,
            "the store never said it waits for replicas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pending.is_finished(),
        "an append was acknowledged without its replica"
    );
    replica.restart();
    let appended = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("acknowledged once the replica is back")
        .unwrap()
        .unwrap();
    assert_eq!(appended[0].seq, 2, "appended once, not again");
    let end = Instant::now() + DEADLINE;
    while store.ready().is_err() {
        assert!(Instant::now() < end, "the store stayed not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}
