//! The persistence worker: one task that writes document updates to the [`Store`] with group
//! commit, so a burst of keystrokes from many rooms costs one store call and one flush.
//!
//! Queue policy: the queue is bounded ([`crate::Config::persist_queue`]); producers `await` a
//! free slot, which pauses reading from the connection that produced the update. Updates are
//! never dropped while the server runs. A failing store is retried with backoff, holding the
//! batch, so its updates are not lost either.
//!
//! When a document's log tail grows past the compaction thresholds, the worker asks the
//! compactor (see `compact.rs`) to snapshot it, through a small queue whose overflow policy is
//! to drop the request: the next append to that document asks again, so nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use concord_core::{Appended, DocName, Seq, Store, StoredUpdate};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

enum Job {
    Update(StoredUpdate),
    /// Answered once every job queued before it has been written.
    Barrier(oneshot::Sender<()>),
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
        compact: mpsc::Sender<(DocName, Seq)>,
        stop: CancellationToken,
    ) -> (Persister, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let worker = tokio::spawn(run_worker(store, rx, config, compact, stop));
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

    /// Waits until everything queued before this call has been written.
    pub(crate) async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Barrier(done)).await.is_ok() {
            let _ = wait.await;
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
    compact: mpsc::Sender<(DocName, Seq)>,
    stop: CancellationToken,
) {
    let batch = config.batch.max(1);
    let mut jobs = Vec::with_capacity(batch);
    let request_compactions = |written: Vec<Appended>| {
        for appended in written {
            if appended.tail_updates >= config.compact_after_updates
                || appended.tail_bytes >= config.compact_after_bytes
            {
                // Dropping a request when the compactor is busy loses nothing: the next append
                // to this document asks again.
                let _ = compact.try_send((appended.doc, appended.seq));
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
                    write(&store, std::mem::take(&mut jobs), &stop).await;
                }
                return;
            }
        };
        if received == 0 {
            return;
        }
        request_compactions(write(&store, std::mem::take(&mut jobs), &stop).await);
    }
}

/// Writes one batch, retrying with backoff while the store fails, then releases its barriers.
/// Returns what the store wrote.
async fn write(store: &Arc<dyn Store>, jobs: Vec<Job>, stop: &CancellationToken) -> Vec<Appended> {
    let mut updates = Vec::new();
    let mut barriers = Vec::new();
    for job in jobs {
        match job {
            Job::Update(update) => updates.push(update),
            Job::Barrier(done) => barriers.push(done),
        }
    }
    let mut written = Vec::new();
    if !updates.is_empty() {
        let updates = Arc::new(updates);
        let mut delay = Duration::from_millis(50);
        let mut attempts_after_stop = 0;
        loop {
            let store = store.clone();
            let batch = updates.clone();
            let result = tokio::task::spawn_blocking(move || store.append(&batch)).await;
            match result {
                Ok(Ok(appended)) => {
                    written = appended;
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, updates = updates.len(), "store append failed; retrying")
                }
                Err(e) => {
                    tracing::error!(error = %e, updates = updates.len(), "store append panicked; retrying")
                }
            }
            if stop.is_cancelled() {
                attempts_after_stop += 1;
                if attempts_after_stop >= 3 {
                    tracing::error!(
                        updates = updates.len(),
                        "giving up on storing updates at shutdown"
                    );
                    break;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    for done in barriers {
        let _ = done.send(());
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::MemoryStore;

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
        let (persister, worker) = Persister::start(store.clone(), config, compact_tx, stop.clone());
        let doc = DocName::new("d").unwrap();
        persister
            .persist(&doc, (0..10u8).map(|i| vec![i]).collect())
            .await;
        persister.barrier().await;
        assert_eq!(store.update_count(&doc), 10);
        // The tail passed three updates: compaction was requested for the latest entry.
        let (requested, seq) = compact_rx.recv().await.unwrap();
        assert_eq!(requested, doc);
        assert!(seq >= 2);
        persister.persist(&doc, vec![vec![99]]).await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(store.update_count(&doc), 11);
    }
}
