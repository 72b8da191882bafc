//! Liveness and readiness: what `/healthz` and `/readyz` answer, decided here so that every
//! edge (and an embedder's own probe) reads the same rule.

use std::sync::atomic::Ordering;

use crate::ops::stats::Counters;

/// Whether the server should get new work: `Err(why)` while it shuts down, while its store
/// keeps failing to take writes (after the persistence worker's retries), or while the store
/// says its backend is unreachable ([`concord_core::Store::ready`]).
pub(crate) fn readiness(
    shutting_down: bool,
    counters: &Counters,
    store: &dyn concord_core::Store,
) -> Result<(), String> {
    if shutting_down {
        return Err("shutting down".into());
    }
    if counters.store_failing.load(Ordering::Relaxed) {
        return Err("the store fails to take writes".into());
    }
    store
        .ready()
        .map_err(|why| format!("the store is not ready: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_unless_shutting_down_or_the_store_fails() {
        let counters = Counters::default();
        let store = concord_core::MemoryStore::new();
        assert_eq!(readiness(false, &counters, &store), Ok(()));
        assert_eq!(
            readiness(true, &counters, &store),
            Err("shutting down".into())
        );
        counters.store_failing.store(true, Ordering::Relaxed);
        assert_eq!(
            readiness(false, &counters, &store),
            Err("the store fails to take writes".into())
        );
    }
}
