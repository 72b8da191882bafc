//! Liveness and readiness: what `/healthz` and `/readyz` answer, decided here so that every
//! edge (and an embedder's own probe) reads the same rule.

use std::sync::atomic::Ordering;

use crate::ops::stats::Counters;

/// Whether the server should get new work: `Err(why)` while it shuts down or while its store
/// keeps failing to take writes (after the persistence worker's retries).
pub(crate) fn readiness(shutting_down: bool, counters: &Counters) -> Result<(), &'static str> {
    if shutting_down {
        return Err("shutting down");
    }
    if counters.store_failing.load(Ordering::Relaxed) {
        return Err("the store fails to take writes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_unless_shutting_down_or_the_store_fails() {
        let counters = Counters::default();
        assert_eq!(readiness(false, &counters), Ok(()));
        assert_eq!(readiness(true, &counters), Err("shutting down"));
        counters.store_failing.store(true, Ordering::Relaxed);
        assert_eq!(
            readiness(false, &counters),
            Err("the store fails to take writes")
        );
    }
}
