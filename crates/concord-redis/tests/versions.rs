//! `RedisStore`'s version history on a real `redis-server` (and a real 3-master Redis Cluster):
//! where its keys live (one slot with the document's other keys), that deleting the document
//! leaves none of them, a large snapshot, and versions surviving a new store and a Redis
//! restart. The contract itself is checked by the conformance suite (`tests/conformance.rs`).

use std::sync::Arc;

use concord_core::{DocName, NewVersion, Position, Store, StoredUpdate, VersionInfo};
use concord_redis::testing::{RedisCluster, RedisServer};
use concord_redis::{RedisOptions, RedisStore, connect};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "v";

/// A name with the characters the hash tag escapes.
fn doc() -> DocName {
    DocName::new("notes/{x}%").unwrap()
}

async fn store(options: &RedisOptions, shutdown: &CancellationToken) -> Arc<RedisStore> {
    connect(options.clone(), shutdown.clone())
        .await
        .expect("redis answers")
        .store
}

fn version(snapshot: Vec<u8>, at: u64, label: Option<&str>) -> NewVersion {
    NewVersion {
        snapshot,
        created_at_ms: at,
        position: Position {
            seq: at,
            index: u32::MAX,
        },
        label: label.map(str::to_owned),
    }
}

async fn append(store: &RedisStore, doc: &DocName, update: &[u8]) {
    store
        .append(
            vec![StoredUpdate {
                doc: doc.clone(),
                update: update.to_vec(),
            }]
            .into(),
        )
        .await
        .expect("append");
}

/// Every document key under [`PREFIX`] on the servers at `urls`, with the URL of the server
/// that holds it: the index of documents and the nodes' heartbeats left out.
async fn doc_keys(urls: &[String]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            found.extend(
                keys.into_iter()
                    .filter(|k| {
                        k != &format!("{PREFIX}:docs")
                            && !k.starts_with(&format!("{PREFIX}:{{nodes}}:"))
                    })
                    .map(|k| (url.clone(), k)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_version_keys_share_the_documents_slot() {
    let cluster = RedisCluster::start(3);
    let options = cluster.options(PREFIX);
    let shutdown = CancellationToken::new();
    let store = store(&options, &shutdown).await;
    let doc = doc();
    append(&store, &doc, b"u").await;
    store.compact(&doc, b"snap".to_vec(), 1).await.unwrap();
    for at in 1..=3 {
        store
            .save_version(&doc, version(vec![at as u8; 10], at, None))
            .await
            .unwrap();
    }
    assert_eq!(store.delete_versions(&doc, vec![2]).await.unwrap(), 1);

    let keys = doc_keys(&cluster.urls()).await;
    let names: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
    for suffix in [":log", ":meta", ":snap", ":versions", ":version-snaps"] {
        assert!(
            names.iter().any(|k| k.ends_with(suffix)),
            "no {suffix} key in {names:?}"
        );
    }
    assert!(
        keys.iter().all(|(url, _)| *url == keys[0].0),
        "the document's keys are on several shards: {keys:?}"
    );
    let client = redis::Client::open(keys[0].0.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut slots = Vec::new();
    for key in &names {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(*key)
            .query_async(&mut conn)
            .await
            .unwrap();
        slots.push(slot);
    }
    assert!(
        slots.iter().all(|s| *s == slots[0]),
        "the document's keys are in several slots: {names:?} {slots:?}"
    );

    store.delete(&doc).await.unwrap();
    let left = doc_keys(&cluster.urls()).await;
    // The fencing counter outlives the document on purpose: a lease token is never given twice.
    assert!(
        left.iter().all(|(_, k)| k.ends_with(":fence")),
        "deleting the document left {left:?}"
    );
    assert_eq!(store.versions(&doc).await.unwrap(), vec![]);
    shutdown.cancel();
}

async fn deleting_a_document_leaves_none_of_its_keys(options: RedisOptions, urls: Vec<String>) {
    let shutdown = CancellationToken::new();
    let store = store(&options, &shutdown).await;
    let (doc, other) = (doc(), DocName::new("other").unwrap());
    append(&store, &doc, b"u").await;
    for at in 1..=3 {
        store
            .save_version(&doc, version(vec![1; 100], at, Some("kept")))
            .await
            .unwrap();
    }
    store
        .save_version(&other, version(b"o".to_vec(), 1, None))
        .await
        .unwrap();
    assert_eq!(store.delete_versions(&doc, vec![1]).await.unwrap(), 1);
    assert!(!doc_keys(&urls).await.is_empty());

    store.delete(&doc).await.unwrap();
    let left = doc_keys(&urls).await;
    assert!(
        left.iter()
            .all(|(_, k)| k.starts_with(&format!("{PREFIX}:{{other}}:"))),
        "deleting the document left {left:?}"
    );
    assert_eq!(store.versions(&doc).await.unwrap(), vec![]);
    assert_eq!(store.version(&doc, 2).await.unwrap(), None);
    let listed = store.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["other"],
        "a document with only versions is listed; a deleted one is not"
    );
    assert_eq!((listed[0].versions, listed[0].history_bytes), (1, 1));
    // Gone entirely, as in `MemoryStore`: written again, its ids start over.
    let again = store
        .save_version(&doc, version(b"new".to_vec(), 9, None))
        .await
        .unwrap();
    assert_eq!(again.id, 1);
    assert_eq!(store.versions(&other).await.unwrap().len(), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_document_leaves_none_of_its_keys_on_one_server() {
    let server = RedisServer::start();
    deleting_a_document_leaves_none_of_its_keys(server.options(PREFIX), vec![server.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_document_leaves_none_of_its_keys_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    deleting_a_document_leaves_none_of_its_keys(cluster.options(PREFIX), cluster.urls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_snapshot_round_trips() {
    let server = RedisServer::start();
    let shutdown = CancellationToken::new();
    let store = store(&server.options(PREFIX), &shutdown).await;
    let doc = doc();
    // Every byte value, in an order that no run-length trick could shorten.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let snapshot: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let small = store
        .save_version(&doc, version(b"small".to_vec(), 1, None))
        .await
        .unwrap();
    let big = store
        .save_version(&doc, version(snapshot.clone(), 2, Some("big")))
        .await
        .unwrap();
    assert_eq!((big.id, big.bytes), (2, 4 << 20));
    assert_eq!(store.versions(&doc).await.unwrap(), vec![small, big]);
    assert!(store.version(&doc, 2).await.unwrap() == Some(snapshot));
    let info = store.list().await.unwrap().remove(0);
    assert_eq!((info.versions, info.history_bytes), (2, 5 + (4 << 20)));
    assert_eq!(store.delete_versions(&doc, vec![2]).await.unwrap(), 1);
    let info = store.list().await.unwrap().remove(0);
    assert_eq!((info.versions, info.history_bytes), (1, 5));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_survive_a_new_store_and_a_redis_restart() {
    let mut server = RedisServer::start();
    let options = server.options(PREFIX);
    let doc = doc();
    let shutdown = CancellationToken::new();
    let first = store(&options, &shutdown).await;
    let saved: Vec<VersionInfo> = vec![
        first
            .save_version(&doc, version(b"one".to_vec(), 10, None))
            .await
            .unwrap(),
        first
            .save_version(&doc, version(vec![0, 255], 20, Some("named \u{e9}")))
            .await
            .unwrap(),
    ];
    drop(first);
    shutdown.cancel();

    let check = |store: Arc<RedisStore>| {
        let (doc, saved) = (doc.clone(), saved.clone());
        async move {
            assert_eq!(store.versions(&doc).await.unwrap(), saved);
            assert_eq!(store.version(&doc, 2).await.unwrap(), Some(vec![0, 255]));
            let info = store.list().await.unwrap().remove(0);
            assert_eq!((info.versions, info.history_bytes), (2, 5));
            let next = store
                .save_version(&doc, version(b"x".to_vec(), 30, None))
                .await
                .unwrap();
            assert_eq!(store.delete_versions(&doc, vec![next.id]).await.unwrap(), 1);
            next.id
        }
    };
    let shutdown = CancellationToken::new();
    assert_eq!(check(store(&options, &shutdown).await).await, 3);
    shutdown.cancel();

    // SIGKILL, then Redis reloads its append-only file (`appendfsync always`).
    server.restart();
    let shutdown = CancellationToken::new();
    assert_eq!(
        check(store(&options, &shutdown).await).await,
        4,
        "the id counter survives too"
    );
    shutdown.cancel();
}
