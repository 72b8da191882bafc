//! Open sockets, counted from `accept`, before a byte is read: in all against
//! [`crate::Config::max_sockets`] and per peer address against
//! [`crate::Config::max_sockets_per_address`]. Every later limit (connection slots, rates,
//! sizes) needs a complete request; these hold against clients that never send one.
//!
//! Overflow policy: a socket past a cap is closed at once, unanswered (there is nothing to
//! answer yet), counted, and logged at a bounded rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ops::stats::Counters;

/// The caps and the counts. One per instance, shared by every listener it serves.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// 0 until [`Sockets::set_max_total`]: no socket is admitted before the cap is known.
    max_total: AtomicUsize,
    /// 0: no per-address cap.
    max_per_address: usize,
    open: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Woken when a socket closes: an accept loop waiting for descriptors tries again.
    released: Notify,
    counters: Arc<Counters>,
}

/// Which cap a socket met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// This many sockets are open.
    Total(usize),
    /// The address holds this many.
    PerAddress(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(n) => write!(f, "{n} sockets are open (--max-sockets)"),
            Refusal::PerAddress(n) => write!(
                f,
                "this address holds {n} sockets (--max-sockets-per-address)"
            ),
        }
    }
}

impl Sockets {
    pub(crate) fn new(max_per_address: usize, counters: Arc<Counters>) -> Arc<Sockets> {
        Arc::new(Sockets {
            max_total: AtomicUsize::new(0),
            max_per_address,
            open: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            released: Notify::new(),
            counters,
        })
    }

    pub(crate) fn set_max_total(&self, max: usize) {
        self.max_total.store(max, Ordering::Relaxed);
    }

    pub(crate) fn max_total(&self) -> usize {
        self.max_total.load(Ordering::Relaxed)
    }

    /// Counts a socket just accepted from `ip`; it is uncounted when the guard drops (with the
    /// socket it travels with). Refusals are counted in the stats.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SocketGuard, Refusal> {
        let ip = ip.to_canonical();
        let max_total = self.max_total();
        if self.open.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            Counters::bump(&self.counters.sockets_refused_total);
            return Err(Refusal::Total(max_total));
        }
        if self.max_per_address > 0 {
            let mut per_address = self.per_address();
            let count = per_address.entry(ip).or_insert(0);
            if *count >= self.max_per_address {
                drop(per_address);
                self.open.fetch_sub(1, Ordering::AcqRel);
                Counters::bump(&self.counters.sockets_refused_per_address);
                return Err(Refusal::PerAddress(self.max_per_address));
            }
            *count += 1;
        }
        self.counters.sockets_open.fetch_add(1, Ordering::Relaxed);
        Ok(SocketGuard {
            sockets: self.clone(),
            ip,
        })
    }

    /// Sockets open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once a socket has closed since the last call (or right away when one closed
    /// with no one waiting).
    pub(crate) async fn released(&self) {
        self.released.notified().await;
    }

    fn per_address(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Each critical section is one map update that cannot panic halfway.
        self.per_address.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open socket's place in [`Sockets`]; travels with the socket and is given back when it
/// closes, whatever became of the connection (an upgraded WebSocket keeps it).
#[derive(Debug)]
pub(crate) struct SocketGuard {
    sockets: Arc<Sockets>,
    ip: IpAddr,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let sockets = &self.sockets;
        if sockets.max_per_address > 0 {
            let mut per_address = sockets.per_address();
            if let Some(count) = per_address.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_address.remove(&self.ip);
                }
            }
        }
        sockets.open.fetch_sub(1, Ordering::AcqRel);
        sockets
            .counters
            .sockets_open
            .fetch_sub(1, Ordering::Relaxed);
        sockets.released.notify_one();
    }
}

/// The process's descriptor limit: raised from its soft to its hard value where the platform
/// allows. Returns `(before, after)`; `None` where there is no such limit to read.
pub(crate) fn raise_descriptor_limit() -> Option<(u64, u64)> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let raised = rlimit::increase_nofile_limit(hard).unwrap_or(soft);
    Some((soft, raised.max(soft)))
}

/// The total cap for a descriptor limit of `limit`: an eighth of the descriptors (at least
/// 64, at most half) stay free for the store, its files and everything else the process opens.
pub(crate) fn cap_for_descriptors(limit: u64) -> usize {
    // Beyond a million open sockets, memory runs out before descriptors do.
    let limit = limit.min(1 << 20);
    let reserve = (limit / 8).max(64).min(limit / 2);
    usize::try_from(limit - reserve).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(max_total: usize, per_address: usize) -> Arc<Sockets> {
        let sockets = Sockets::new(per_address, Arc::new(Counters::default()));
        sockets.set_max_total(max_total);
        sockets
    }

    #[test]
    fn the_per_address_cap_leaves_other_addresses_alone() {
        let sockets = sockets(10, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = sockets.admit(a).unwrap();
        let _second = sockets.admit(a).unwrap();
        assert_eq!(sockets.admit(a).unwrap_err(), Refusal::PerAddress(2));
        let _other = sockets.admit(b).unwrap();
        drop(first);
        let _again = sockets.admit(a).unwrap();
        assert_eq!(sockets.open(), 3);
        let stats = sockets.counters.snapshot();
        assert_eq!(stats.sockets_refused_per_address, 1);
        assert_eq!(stats.sockets_open, 3);
    }

    #[test]
    fn the_total_cap_counts_every_address_and_frees_on_drop() {
        let sockets = sockets(2, 0);
        let one = sockets.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _two = sockets.admit("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            sockets.admit("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refusal::Total(2)
        );
        drop(one);
        assert!(sockets.admit("10.0.0.3".parse().unwrap()).is_ok());
        assert_eq!(sockets.counters.snapshot().sockets_refused_total, 1);
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_address() {
        let sockets = sockets(10, 1);
        let _v4 = sockets.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(
            sockets
                .admit("::ffff:192.0.2.1".parse().unwrap())
                .unwrap_err(),
            Refusal::PerAddress(1)
        );
    }

    #[test]
    fn nothing_is_admitted_before_the_total_cap_is_set() {
        let sockets = Sockets::new(0, Arc::new(Counters::default()));
        assert!(sockets.admit("10.0.0.1".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn a_closing_socket_wakes_a_waiting_accept_loop() {
        let sockets = sockets(1, 0);
        let guard = sockets.admit("10.0.0.1".parse().unwrap()).unwrap();
        let waiter = tokio::spawn({
            let sockets = sockets.clone();
            async move { sockets.released().await }
        });
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(30), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest_of_the_process() {
        assert_eq!(cap_for_descriptors(1024), 896);
        assert_eq!(cap_for_descriptors(256), 192);
        assert_eq!(cap_for_descriptors(100), 50);
        assert_eq!(cap_for_descriptors(20_000), 17_500);
        assert_eq!(cap_for_descriptors(u64::MAX), (1 << 20) - (1 << 17));
    }
}
