//! Log lines at a bounded rate, for events an attacker can cause as often as they like (a
//! refused socket, a failed `accept`): the first one is logged, then at most one line per
//! interval, carrying how many were not logged in between.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one log line through per `every`.
#[derive(Debug)]
pub(crate) struct LogGate {
    every: Duration,
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl LogGate {
    pub(crate) fn new(every: Duration) -> LogGate {
        LogGate {
            every,
            last: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many events since the last line
    /// were not logged; `None` when this one is held back (and counted).
    pub(crate) fn pass(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.held_back.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_with_the_count_held_back() {
        let gate = LogGate::new(Duration::from_secs(10));
        assert_eq!(gate.pass(), Some(0));
        assert_eq!(gate.pass(), None);
        assert_eq!(gate.pass(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(gate.pass(), Some(2));
        assert_eq!(gate.pass(), None);
    }
}
