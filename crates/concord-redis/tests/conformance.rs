//! `RedisStore` against the `Store` contract (`concord_core::conformance`), on a real
//! `redis-server` and on a real 3-master Redis Cluster started by the test: each store gets a
//! key prefix of its own, and "reopening" connects a new store to the same prefix, as a
//! restarted node would. Also the methods for stores several processes share (the webhook
//! lease and news), which the contract leaves to such stores.

use std::future::Future;
use std::time::{Duration, Instant};

use concord_core::conformance::{Harness, run_all};
use concord_core::{DocName, OutboxEntry, Position, Store, WebhookNews};
use concord_redis::testing::{RedisCluster, RedisServer};
use concord_redis::{RedisOptions, RedisStore, connect};
use tokio_util::sync::CancellationToken;

struct Redis {
    /// Options with the deployment's URLs; each store sets its prefix.
    options: RedisOptions,
    made: u32,
    shutdown: CancellationToken,
}

impl Redis {
    async fn store(&self, prefix: String) -> std::sync::Arc<RedisStore> {
        let options = RedisOptions {
            prefix,
            ..self.options.clone()
        };
        connect(options, self.shutdown.clone())
            .await
            .expect("redis answers")
            .store
    }
}

/// `Arc<RedisStore>` is what `connect` gives; the harness hands out the store itself. It
/// forwards every method: one left out would answer with the trait's default (the version
/// methods' is `Unsupported`, which the versions check takes for a store without history).
struct Shared(std::sync::Arc<RedisStore>, String);

impl concord_core::Store for Shared {
    fn load<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
    ) -> concord_core::StoreFuture<'a, concord_core::StoredDoc> {
        self.0.load(doc)
    }
    fn append(
        &self,
        batch: std::sync::Arc<[concord_core::StoredUpdate]>,
    ) -> concord_core::StoreFuture<'_, Vec<concord_core::Appended>> {
        self.0.append(batch)
    }
    fn compact<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        snapshot: Vec<u8>,
        upto: concord_core::Seq,
    ) -> concord_core::StoreFuture<'a, ()> {
        self.0.compact(doc, snapshot, upto)
    }
    fn delete<'a>(&'a self, doc: &'a concord_core::DocName) -> concord_core::StoreFuture<'a, ()> {
        self.0.delete(doc)
    }
    fn list(&self) -> concord_core::StoreFuture<'_, Vec<concord_core::DocInfo>> {
        self.0.list()
    }
    fn log_from<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        from: concord_core::Seq,
    ) -> concord_core::StoreFuture<'a, concord_core::LogTail> {
        self.0.log_from(doc, from)
    }
    fn save_version<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        version: concord_core::NewVersion,
    ) -> concord_core::StoreFuture<'a, concord_core::VersionInfo> {
        self.0.save_version(doc, version)
    }
    fn versions<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
    ) -> concord_core::StoreFuture<'a, Vec<concord_core::VersionInfo>> {
        self.0.versions(doc)
    }
    fn version<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        id: concord_core::VersionId,
    ) -> concord_core::StoreFuture<'a, Option<Vec<u8>>> {
        self.0.version(doc, id)
    }
    fn delete_versions<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        ids: Vec<concord_core::VersionId>,
    ) -> concord_core::StoreFuture<'a, u64> {
        self.0.delete_versions(doc, ids)
    }
    fn outbox_write(
        &self,
        add: Vec<concord_core::OutboxEntry>,
        marks: Vec<(concord_core::DocName, Option<concord_core::Position>)>,
    ) -> concord_core::StoreFuture<'_, ()> {
        self.0.outbox_write(add, marks)
    }
    fn outbox(&self) -> concord_core::StoreFuture<'_, concord_core::Outbox> {
        self.0.outbox()
    }
    fn outbox_remove(&self, keys: Vec<String>) -> concord_core::StoreFuture<'_, ()> {
        self.0.outbox_remove(keys)
    }
    fn webhook_lease<'a>(
        &'a self,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> concord_core::StoreFuture<'a, bool> {
        self.0.webhook_lease(holder, ttl)
    }
    fn webhook_edited(
        &self,
        docs: Vec<concord_core::DocName>,
    ) -> concord_core::StoreFuture<'_, ()> {
        self.0.webhook_edited(docs)
    }
    fn webhook_news(&self) -> concord_core::StoreFuture<'_, concord_core::WebhookNews> {
        self.0.webhook_news()
    }
    fn shared(&self) -> bool {
        self.0.shared()
    }
    fn ready(&self) -> Result<(), String> {
        self.0.ready()
    }
}

impl Harness for Redis {
    type Store = Shared;

    fn create(&mut self) -> impl Future<Output = Shared> {
        self.made += 1;
        let prefix = format!("conformance{}", self.made);
        async move { Shared(self.store(prefix.clone()).await, prefix) }
    }

    async fn reopen(&mut self, store: Shared) -> Shared {
        let prefix = store.1.clone();
        drop(store);
        Shared(self.store(prefix.clone()).await, prefix)
    }
}

async fn conforms(options: RedisOptions) {
    let shutdown = CancellationToken::new();
    run_all(Redis {
        options,
        made: 0,
        shutdown: shutdown.clone(),
    })
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_conforms() {
    let server = RedisServer::start();
    conforms(server.options("")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_conforms_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    conforms(cluster.options("")).await;
}

/// Sends one command to the Redis (or Cluster) of `options`, beside the store.
async fn raw(options: &RedisOptions, build: impl FnOnce(&mut redis::Cmd)) {
    let mut cmd = redis::Cmd::new();
    build(&mut cmd);
    if options.cluster {
        let client = redis::cluster::ClusterClientBuilder::new(options.urls.clone())
            .build()
            .unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        cmd.query_async::<()>(&mut conn).await.unwrap();
    } else {
        let client = redis::Client::open(options.urls[0].as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async::<()>(&mut conn).await.unwrap();
    }
}

fn entry(key: &str, payload: &[u8]) -> OutboxEntry {
    OutboxEntry {
        key: key.to_owned(),
        payload: payload.to_vec(),
    }
}

/// The webhook lease (take, refuse, renew, give up, expire) and the news (edited documents
/// with their marks, entries written and still pending, each taken once), with two stores on
/// one prefix as two nodes would have.
async fn webhooks_are_shared_through_a_lease_and_news(options: RedisOptions) {
    let shutdown = CancellationToken::new();
    let options = RedisOptions {
        prefix: "webhooks".to_owned(),
        ..options
    };
    let connect_store = || async {
        connect(options.clone(), shutdown.clone())
            .await
            .expect("redis answers")
            .store
    };
    let (a, b) = (connect_store().await, connect_store().await);
    let long = Duration::from_secs(60);

    assert!(
        a.webhook_lease("a", long).await.unwrap(),
        "a takes the free lease"
    );
    assert!(
        !b.webhook_lease("b", long).await.unwrap(),
        "b cannot take a's lease"
    );
    assert!(
        a.webhook_lease("a", long).await.unwrap(),
        "a renews its lease"
    );
    assert!(
        !b.webhook_lease("b", Duration::ZERO).await.unwrap(),
        "b cannot give up a's lease"
    );
    assert!(
        a.webhook_lease("a", long).await.unwrap(),
        "a still holds it"
    );
    assert!(
        !a.webhook_lease("a", Duration::ZERO).await.unwrap(),
        "a gives it up"
    );
    assert!(
        b.webhook_lease("b", Duration::from_millis(200))
            .await
            .unwrap(),
        "b takes it"
    );
    assert!(
        !a.webhook_lease("a", long).await.unwrap(),
        "a cannot take b's lease"
    );
    // b stops renewing: its lease expires, and a takes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.webhook_lease("a", long).await.unwrap() {
        assert!(Instant::now() < deadline, "b's lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b.webhook_lease("b", long).await.unwrap(), "a holds it now");
    // Any ttl is taken: the longest is capped, the shortest is a millisecond.
    assert!(a.webhook_lease("a", Duration::MAX).await.unwrap());
    assert!(!a.webhook_lease("a", Duration::ZERO).await.unwrap());
    assert!(b.webhook_lease("b", Duration::from_nanos(1)).await.unwrap());

    let (x, y) = (DocName::new("x").unwrap(), DocName::new("y/{z}%").unwrap());
    let mark = Position { seq: 7, index: 2 };
    assert_eq!(
        a.webhook_news().await.unwrap(),
        WebhookNews::default(),
        "nothing yet"
    );
    a.webhook_edited(vec![y.clone(), x.clone()]).await.unwrap();
    b.webhook_edited(vec![y.clone()]).await.unwrap();
    b.webhook_edited(vec![]).await.unwrap();
    b.outbox_write(
        vec![entry("2-b", b"second"), entry("1-a", b"first")],
        vec![(x.clone(), Some(mark))],
    )
    .await
    .unwrap();
    assert_eq!(
        a.webhook_news().await.unwrap(),
        WebhookNews {
            edited: vec![(x.clone(), Some(mark)), (y.clone(), None)],
            entries: vec![entry("1-a", b"first"), entry("2-b", b"second")],
        }
    );
    assert_eq!(
        a.webhook_news().await.unwrap(),
        WebhookNews::default(),
        "news is taken once"
    );

    b.outbox_write(
        vec![entry("3-c", b"third"), entry("4-d", b"fourth")],
        vec![],
    )
    .await
    .unwrap();
    b.outbox_remove(vec!["3-c".to_owned()]).await.unwrap();
    assert_eq!(
        a.webhook_news().await.unwrap(),
        WebhookNews {
            edited: vec![],
            entries: vec![entry("4-d", b"fourth")],
        },
        "an entry removed before the news is not in it"
    );
    assert_eq!(a.webhook_news().await.unwrap(), WebhookNews::default());

    // What Concord does not write is skipped: a document with an unreadable mark comes without
    // one, an invalid name not at all.
    raw(&options, |cmd| {
        cmd.arg("HSET")
            .arg("webhooks:{webhooks}:marks")
            .arg(y.as_str())
            .arg("bogus");
    })
    .await;
    raw(&options, |cmd| {
        cmd.arg("SADD")
            .arg("webhooks:{webhooks}:edited")
            .arg(y.as_str())
            .arg("bad\nname");
    })
    .await;
    assert_eq!(
        a.webhook_news().await.unwrap(),
        WebhookNews {
            edited: vec![(y.clone(), None)],
            entries: vec![],
        }
    );

    // The outbox itself holds everything pending, news taken or not.
    let outbox = b.outbox().await.unwrap();
    assert!(outbox.started);
    assert_eq!(
        outbox.entries,
        vec![
            entry("1-a", b"first"),
            entry("2-b", b"second"),
            entry("4-d", b"fourth")
        ]
    );
    assert_eq!(
        outbox.marks.into_iter().collect::<Vec<_>>(),
        vec![(x, mark)]
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_shared_through_a_lease_and_news_on_one_server() {
    let server = RedisServer::start();
    webhooks_are_shared_through_a_lease_and_news(server.options("")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_shared_through_a_lease_and_news_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    webhooks_are_shared_through_a_lease_and_news(cluster.options("")).await;
}
