//! Barriers: a marker queued behind updates in the persistence queue that resolves once every
//! one of them is stored. Save acknowledgements and durable HTTP answers wait on them.

use tokio::sync::oneshot;

/// A queued barrier; see [`crate::durability::Persister::queue_barrier`].
pub(crate) struct Barrier(Option<oneshot::Receiver<()>>);

impl Barrier {
    /// A barrier queued in the persistence queue: `done` is answered once everything queued
    /// before it is stored, and dropped unanswered when some of it could not be.
    pub(crate) fn queued(done: oneshot::Receiver<()>) -> Barrier {
        Barrier(Some(done))
    }

    /// A barrier that could not be queued (the worker has stopped): it never passes.
    pub(crate) fn failed() -> Barrier {
        Barrier(None)
    }

    /// True once everything queued before the barrier is stored; false if some of it could not
    /// be (or the worker has stopped).
    pub(crate) async fn wait(self) -> bool {
        match self.0 {
            Some(wait) => wait.await.is_ok(),
            None => false,
        }
    }
}
