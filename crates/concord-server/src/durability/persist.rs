//! The persistence worker: one task that writes document updates to the [`Store`] with group
//! commit, so a burst of keystrokes from many rooms costs one store call (with sled: one
//! journal `write`, see `concord-sled`'s Durability section). An update alone is written at
//! once: the worker never waits for company.
//!
//! Queue policy: the queue is bounded ([`crate::Config::persist_queue`]); producers `await` a
//! free slot, which pauses reading from the connection that produced the update. Updates are
//! never dropped while the server runs. A failing store is retried with backoff, holding the
//! batch, so its updates are not lost either.
//!
//! When a document's log tail grows past the compaction thresholds, the worker asks the
//! compactor (see `compact.rs`) to snapshot it, through a small queue whose overflow policy is
//! to drop the request: the next append to that document asks again, so nothing is lost. When
//! a room is unloaded, it queues an idle marker behind its last updates; once the worker has
//! written them, it asks for a compaction of that document if it wrote anything to it since
//! the last request, so an idle document rests on disk as one snapshot rather
//! than a log. A dropped idle request only leaves that document's log until its next use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_core::{Appended, DocName, Seq, Store, StoreError, StoredUpdate};

use crate::durability::compact::CompactRequest;
use crate::durability::feed::Feed;
use crate::durability::{Barrier, LiveDocument};
use crate::ops::stats::Counters;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

enum Job {
    Update(StoredUpdate),
    /// Answered once every job queued before it has been written.
    Barrier(oneshot::Sender<()>),
    /// The room of this document was unloaded: compact the document once its updates are
    /// written (from the room's state, when given).
    Idle(DocName, Option<Arc<dyn LiveDocument>>),
}

/// Sends updates to the persistence worker.
#[derive(Clone)]
pub(crate) struct Persister {
    tx: mpsc::Sender<Job>,
}

impl Persister {
    /// Starts the worker. It writes until `stop` is cancelled, then drains the queue and ends.
    /// Documents whose log tail passes `thresholds` are sent to `compact`.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        config: PersistConfig,
        compact: mpsc::Sender<CompactRequest>,
        outputs: Outputs,
        stop: CancellationToken,
    ) -> (Persister, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let worker = tokio::spawn(run_worker(store, rx, config, compact, outputs, stop));
        (Persister { tx }, worker)
    }

    /// Queues `updates` of `doc` for writing, waiting for room in the queue.
    pub(crate) async fn persist(&self, doc: &DocName, updates: Vec<Vec<u8>>) {
        for update in updates {
            let job = Job::Update(StoredUpdate {
                doc: doc.clone(),
                update,
            });
            if self.tx.send(job).await.is_err() {
                tracing::error!(%doc, "persistence worker has stopped; update not stored");
            }
        }
    }

    /// Tells the worker that `doc`'s room was unloaded, so that the document is compacted once
    /// its updates are written. Never waits: when the queue is full the hint is dropped (the
    /// document keeps its log until it is next used).
    pub(crate) fn idle(&self, doc: &DocName, room: Option<Arc<dyn LiveDocument>>) {
        let _ = self.tx.try_send(Job::Idle(doc.clone(), room));
    }

    /// Waits until everything queued before this call has been handled. Returns true when all
    /// of it was stored, false when some of it could not be (see [`write`]).
    pub(crate) async fn barrier(&self) -> bool {
        self.queue_barrier().await.wait().await
    }

    /// Queues a barrier behind everything queued so far and returns a handle to wait on it.
    /// Barriers complete in the order they were queued.
    pub(crate) async fn queue_barrier(&self) -> Barrier {
        let (done, wait) = oneshot::channel();
        match self.tx.send(Job::Barrier(done)).await {
            Ok(()) => Barrier::queued(wait),
            Err(_) => Barrier::failed(),
        }
    }
}

/// Where the worker reports what it stored: the change feed, the flush latency histogram and
/// the store's health (for `/readyz`).
#[derive(Clone)]
pub(crate) struct Outputs {
    pub(crate) feed: Feed,
    pub(crate) flush_seconds: prometheus_client::metrics::histogram::Histogram,
    pub(crate) counters: Arc<Counters>,
}

impl Outputs {
    /// For tests: a feed and counters nobody reads.
    #[cfg(test)]
    pub(crate) fn unobserved() -> Outputs {
        Outputs {
            feed: Feed::new(),
            flush_seconds: prometheus_client::metrics::histogram::Histogram::new([1.0]),
            counters: Arc::default(),
        }
    }
}

/// Settings of the persistence worker, from [`crate::Config`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PersistConfig {
    pub(crate) queue: usize,
    pub(crate) batch: usize,
    pub(crate) compact_after_updates: u64,
    pub(crate) compact_after_bytes: u64,
}

async fn run_worker(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    config: PersistConfig,
    compact: mpsc::Sender<CompactRequest>,
    outputs: Outputs,
    stop: CancellationToken,
) {
    let batch = config.batch.max(1);
    let mut jobs = Vec::with_capacity(batch);
    // The latest entry written to each document since its last compaction request: what an
    // idle compaction covers. One entry per document written to and not yet idle.
    let mut uncompacted: HashMap<DocName, Seq> = HashMap::new();
    let mut request_compactions = |(written, idle): (Vec<Appended>, Vec<IdleRoom>)| {
        for appended in written {
            if appended.tail_updates >= config.compact_after_updates
                || appended.tail_bytes >= config.compact_after_bytes
            {
                uncompacted.remove(&appended.doc);
                // Dropping a request when the compactor is busy loses nothing: the next append
                // to this document asks again.
                let _ = compact.try_send(CompactRequest {
                    doc: appended.doc,
                    upto: appended.seq,
                    unloaded: None,
                });
            } else {
                uncompacted.insert(appended.doc, appended.seq);
            }
        }
        for (doc, room) in idle {
            if let Some(upto) = uncompacted.remove(&doc) {
                let _ = compact.try_send(CompactRequest {
                    doc,
                    upto,
                    unloaded: room,
                });
            }
        }
    };
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut jobs, batch) => received,
            _ = stop.cancelled() => {
                // Drain what is queued (producers have stopped by now), then end.
                rx.close();
                while rx.recv_many(&mut jobs, batch).await > 0 {
                    write(&store, &outputs, std::mem::take(&mut jobs), &stop).await;
                }
                return;
            }
        };
        if received == 0 {
            return;
        }
        request_compactions(write(&store, &outputs, std::mem::take(&mut jobs), &stop).await);
    }
}

/// How many times a batch (and then each document of it) is tried before it is given up.
const ATTEMPTS: u32 = 6;

/// The document of an unloaded room, and the room.
type IdleRoom = (DocName, Option<Arc<dyn LiveDocument>>);

/// Writes one batch and releases its barriers. Returns what the store wrote, and the documents
/// whose idle markers the batch held.
///
/// A failing store is retried with backoff (50 ms doubling, about 3 s in all). If the whole
/// batch keeps failing, each document is retried on its own, so one document the store cannot
/// write (damaged metadata, say) does not hold back every other room. Updates of a document
/// that still fails are given up with an error log; the barriers of that batch then report
/// failure, so no save acknowledgement claims they are durable. The room still holds them in
/// memory and clients still have them: they are sent again on the next sync.
async fn write(
    store: &Arc<dyn Store>,
    outputs: &Outputs,
    jobs: Vec<Job>,
    stop: &CancellationToken,
) -> (Vec<Appended>, Vec<IdleRoom>) {
    let mut updates = Vec::new();
    let mut barriers = Vec::new();
    let mut idle = Vec::new();
    for job in jobs {
        match job {
            Job::Update(update) => updates.push(update),
            Job::Barrier(done) => barriers.push(done),
            Job::Idle(doc, room) => idle.push((doc, room)),
        }
    }
    let mut written = Vec::new();
    let mut stored_all = true;
    if !updates.is_empty() {
        match append_with_retries(store, outputs, updates, stop).await {
            (Some(appended), updates) => {
                publish(&outputs.feed, updates, &appended);
                written = appended;
            }
            (None, updates) => {
                let mut by_doc: std::collections::BTreeMap<DocName, Vec<StoredUpdate>> =
                    std::collections::BTreeMap::new();
                for update in updates.iter() {
                    by_doc
                        .entry(update.doc.clone())
                        .or_default()
                        .push(update.clone());
                }
                for (doc, updates) in by_doc {
                    let count = updates.len();
                    match append_with_retries(store, outputs, updates, stop).await {
                        (Some(appended), updates) => {
                            publish(&outputs.feed, updates, &appended);
                            written.extend(appended);
                        }
                        (None, _) => {
                            stored_all = false;
                            tracing::error!(%doc, updates = count, "giving up on storing these updates");
                        }
                    }
                }
            }
        }
    }
    outputs
        .counters
        .store_failing
        .store(!stored_all, std::sync::atomic::Ordering::Relaxed);
    for done in barriers {
        if stored_all {
            let _ = done.send(());
        }
    }
    (written, idle)
}

/// Publishes what one successful `append` wrote to the change feed.
fn publish(feed: &Feed, updates: Arc<[StoredUpdate]>, appended: &[Appended]) {
    if feed.has_subscribers() {
        let seqs: Vec<(DocName, Seq)> = appended.iter().map(|a| (a.doc.clone(), a.seq)).collect();
        feed.publish_batch(updates, &seqs);
    }
}

/// Appends `updates`, retrying with backoff. Gives the updates back either way.
///
/// A store that reports itself unavailable ([`StoreError::Unavailable`]: a network store that
/// lost its server) is retried until it answers or the server shuts down, with the delay
/// capped at [`UNAVAILABLE_MAX_DELAY`]: the updates stay applied and relayed in their rooms,
/// unacknowledged, and the queue behind them fills until producers wait. Other errors are
/// tried [`ATTEMPTS`] times.
async fn append_with_retries(
    store: &Arc<dyn Store>,
    outputs: &Outputs,
    updates: Vec<StoredUpdate>,
    stop: &CancellationToken,
) -> (Option<Vec<Appended>>, Arc<[StoredUpdate]>) {
    let updates: Arc<[StoredUpdate]> = updates.into();
    let mut delay = Duration::from_millis(50);
    let mut failures = 0;
    let mut unavailable_since: Option<std::time::Instant> = None;
    loop {
        let started = std::time::Instant::now();
        match store.append(updates.clone()).await {
            Ok(appended) => {
                outputs
                    .flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Some(since) = unavailable_since {
                    tracing::info!(after = ?since.elapsed(), updates = updates.len(), "store available again: held updates stored");
                }
                return (Some(appended), updates);
            }
            Err(StoreError::Unavailable(why)) => {
                if unavailable_since.is_none() {
                    tracing::warn!(error = %why, updates = updates.len(), "store unavailable: holding these updates (unacknowledged) and retrying");
                    unavailable_since = Some(started);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return (None, updates),
                }
                delay = (delay * 2).min(UNAVAILABLE_MAX_DELAY);
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, updates = updates.len(), attempt = failures, "store append failed");
            }
        }
        if failures >= ATTEMPTS || stop.is_cancelled() {
            return (None, updates);
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// The longest wait between two tries of an unavailable store.
const UNAVAILABLE_MAX_DELAY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::{MemoryStore, StoredDoc};

    /// A store that refuses every append for one document.
    struct RefusesOneDoc {
        inner: MemoryStore,
        refused: DocName,
    }

    impl Store for RefusesOneDoc {
        fn load<'a>(&'a self, doc: &'a DocName) -> concord_core::StoreFuture<'a, StoredDoc> {
            Store::load(&self.inner, doc)
        }
        fn append(
            &self,
            batch: Arc<[StoredUpdate]>,
        ) -> concord_core::StoreFuture<'_, Vec<Appended>> {
            if batch.iter().any(|u| u.doc == self.refused) {
                return Box::pin(async {
                    Err(concord_core::StoreError::Corrupt("refused".into()))
                });
            }
            Store::append(&self.inner, batch)
        }
        fn compact<'a>(
            &'a self,
            doc: &'a DocName,
            snapshot: Vec<u8>,
            upto: Seq,
        ) -> concord_core::StoreFuture<'a, ()> {
            Store::compact(&self.inner, doc, snapshot, upto)
        }
        fn delete<'a>(&'a self, doc: &'a DocName) -> concord_core::StoreFuture<'a, ()> {
            Store::delete(&self.inner, doc)
        }
        fn list(&self) -> concord_core::StoreFuture<'_, Vec<concord_core::DocInfo>> {
            Store::list(&self.inner)
        }
        fn log_from<'a>(
            &'a self,
            doc: &'a DocName,
            from: Seq,
        ) -> concord_core::StoreFuture<'a, concord_core::LogTail> {
            Store::log_from(&self.inner, doc, from)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_document_the_store_refuses_does_not_block_the_others() {
        let bad = DocName::new("bad").unwrap();
        let good = DocName::new("good").unwrap();
        let store = Arc::new(RefusesOneDoc {
            inner: MemoryStore::new(),
            refused: bad.clone(),
        });
        let config = PersistConfig {
            queue: 16,
            batch: 16,
            compact_after_updates: u64::MAX,
            compact_after_bytes: u64::MAX,
        };
        let (compact_tx, _compact_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let (persister, _worker) = Persister::start(
            store.clone(),
            config,
            compact_tx,
            Outputs::unobserved(),
            stop,
        );
        persister.persist(&bad, vec![vec![1]]).await;
        persister.persist(&good, vec![vec![2]]).await;
        assert!(
            !persister.barrier().await,
            "the refused update is reported, not acknowledged"
        );
        assert_eq!(store.inner.update_count(&good), 1);
        assert_eq!(store.inner.update_count(&bad), 0);
        persister.persist(&good, vec![vec![3]]).await;
        assert!(persister.barrier().await);
        assert_eq!(store.inner.update_count(&good), 2);
    }

    #[tokio::test]
    async fn an_idle_document_written_since_its_last_compaction_is_compacted() {
        let store = Arc::new(MemoryStore::new());
        let config = PersistConfig {
            queue: 16,
            batch: 16,
            compact_after_updates: u64::MAX,
            compact_after_bytes: u64::MAX,
        };
        let (compact_tx, mut compact_rx) = mpsc::channel(16);
        let (persister, _worker) = Persister::start(
            store.clone(),
            config,
            compact_tx,
            Outputs::unobserved(),
            CancellationToken::new(),
        );
        let [written, untouched] = ["written", "untouched"].map(|n| DocName::new(n).unwrap());
        persister.persist(&written, vec![vec![1]]).await;
        persister.persist(&written, vec![vec![2]]).await;
        persister.idle(&untouched, None);
        persister.idle(&written, None);
        assert!(persister.barrier().await);
        let request = compact_rx.recv().await.unwrap();
        assert_eq!(request.doc, written);
        assert_eq!(request.upto, store.load(&written).unwrap().last_seq);
        // Nothing for the document never written to, nor for one idle twice in a row.
        persister.idle(&written, None);
        assert!(persister.barrier().await);
        assert!(compact_rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn barrier_waits_for_queued_updates_and_stop_drains() {
        let store = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let config = PersistConfig {
            queue: 4,
            batch: 2,
            compact_after_updates: 3,
            compact_after_bytes: u64::MAX,
        };
        let (compact_tx, mut compact_rx) = mpsc::channel(16);
        let (persister, worker) = Persister::start(
            store.clone(),
            config,
            compact_tx,
            Outputs::unobserved(),
            stop.clone(),
        );
        let doc = DocName::new("d").unwrap();
        persister
            .persist(&doc, (0..10u8).map(|i| vec![i]).collect())
            .await;
        assert!(persister.barrier().await);
        assert_eq!(store.update_count(&doc), 10);
        // The tail passed three updates: compaction was requested for the latest entry.
        let request = compact_rx.recv().await.unwrap();
        assert_eq!(request.doc, doc);
        assert!(request.upto >= 2);
        persister.persist(&doc, vec![vec![99]]).await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(store.update_count(&doc), 11);
    }
}
