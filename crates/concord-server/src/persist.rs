//! The persistence worker: one task that writes document updates to the [`Store`] with group
//! commit, so a burst of keystrokes from many rooms costs one store call.
//!
//! Queue policy: the queue is bounded ([`crate::Config::persist_queue`]); producers `await` a
//! free slot, which pauses reading from the connection that produced the update. Updates are
//! never dropped while the server runs. A failing store is retried with backoff, holding the
//! batch, so its updates are not lost either.

use std::sync::Arc;
use std::time::Duration;

use concord_core::{DocName, Store, StoredUpdate};
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
    pub(crate) fn start(
        store: Arc<dyn Store>,
        queue: usize,
        batch: usize,
        stop: CancellationToken,
    ) -> (Persister, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let worker = tokio::spawn(run_worker(store, rx, batch.max(1), stop));
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

async fn run_worker(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    batch: usize,
    stop: CancellationToken,
) {
    let mut jobs = Vec::with_capacity(batch);
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
        write(&store, std::mem::take(&mut jobs), &stop).await;
    }
}

/// Writes one batch, retrying with backoff while the store fails, then releases its barriers.
async fn write(store: &Arc<dyn Store>, jobs: Vec<Job>, stop: &CancellationToken) {
    let mut updates = Vec::new();
    let mut barriers = Vec::new();
    for job in jobs {
        match job {
            Job::Update(update) => updates.push(update),
            Job::Barrier(done) => barriers.push(done),
        }
    }
    if !updates.is_empty() {
        let updates = Arc::new(updates);
        let mut delay = Duration::from_millis(50);
        let mut attempts_after_stop = 0;
        loop {
            let store = store.clone();
            let batch = updates.clone();
            let result = tokio::task::spawn_blocking(move || store.append(&batch)).await;
            match result {
                Ok(Ok(())) => break,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::MemoryStore;

    #[tokio::test]
    async fn barrier_waits_for_queued_updates_and_stop_drains() {
        let store = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let (persister, worker) = Persister::start(store.clone(), 4, 2, stop.clone());
        let doc = DocName::new("d").unwrap();
        persister
            .persist(&doc, (0..10u8).map(|i| vec![i]).collect())
            .await;
        persister.barrier().await;
        assert_eq!(store.update_count(&doc), 10);
        persister.persist(&doc, vec![vec![99]]).await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(store.update_count(&doc), 11);
    }
}
