//! `RedisStore` against the `Store` contract (`concord_core::conformance`), on a real
//! `redis-server` and on a real 3-master Redis Cluster started by the test: each store gets a
//! key prefix of its own, and "reopening" connects a new store to the same prefix, as a
//! restarted node would.

use std::future::Future;

use concord_core::conformance::{Harness, run_all};
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
