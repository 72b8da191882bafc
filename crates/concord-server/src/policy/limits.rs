//! Per-server and per-connection limits: how many connections may be open (in all and per IP
//! address), and how fast one connection may send (token buckets on messages and bytes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Counts open connections against [`crate::Config::max_connections`] and
/// [`crate::Config::max_connections_per_ip`], and connection attempts per address against
/// [`crate::Config::connection_attempts_per_ip`].
pub(crate) struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per address: every connection gets fresh rate-limit buckets, so a
    /// client that reconnects as fast as it can would otherwise multiply its allowance.
    attempts: governor::DefaultKeyedRateLimiter<IpAddr>,
    attempts_per_second: u32,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("max_total", &self.max_total)
            .field("max_per_ip", &self.max_per_ip)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

/// Why a connection slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The server holds `max_connections` connections.
    Total(usize),
    /// This address holds `max_connections_per_ip` connections.
    PerIp(usize),
    /// This address opened more than this many connections per second.
    AttemptsPerIp(u32),
}

impl ConnectionLimits {
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        attempts_per_second: u32,
        attempt_burst: u32,
    ) -> Arc<Self> {
        let rate = NonZeroU32::new(attempts_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(attempt_burst.max(rate.get())).unwrap_or(rate);
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            attempts: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            attempts_per_second,
        })
    }

    /// Forgets addresses whose attempt bucket is full again, so the table does not grow with
    /// every address ever seen. Called now and then.
    pub(crate) fn forget_quiet_addresses(&self) {
        self.attempts.retain_recent();
        self.attempts.shrink_to_fit();
    }

    /// Forgets quiet addresses every minute until `shutdown`.
    pub(crate) async fn forget_quiet_addresses_until(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = ticker.tick() => self.forget_quiet_addresses(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes a slot for one connection from `ip` (unknown: counted in the total only). The
    /// slot is given back when the returned guard is dropped.
    pub(crate) fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnectionSlot, Refused> {
        // Reserve in the total first; undo if over.
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total(self.max_total));
        }
        if let Some(ip) = ip
            && self.attempts.check_key(&ip).is_err()
        {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::AttemptsPerIp(self.attempts_per_second));
        }
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp(self.max_per_ip));
            }
            *count += 1;
        }
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Each critical section is one map update that cannot panic halfway.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's place in [`ConnectionLimits`], held for the connection's life.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = self.limits.per_ip();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's send rate limits: a token bucket on messages and one on bytes (GCRA, from
/// `governor`). Checked before a frame is decoded, so a flooding client costs little.
pub(crate) struct RateLimits<C: Clock = DefaultClock> {
    messages: Bucket<C>,
    bytes: Bucket<C>,
    awareness: Bucket<C>,
    rates: Rates,
}

/// The sustained rates and bursts of [`RateLimits`], from [`crate::Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rates {
    pub(crate) messages_per_second: u32,
    pub(crate) message_burst: u32,
    pub(crate) bytes_per_second: u32,
    pub(crate) byte_burst: u32,
    /// Awareness messages are relayed to every connection of the room, so they get a bucket of
    /// their own, smaller than the one on all messages: a flood of them would otherwise fill
    /// every other client's outbound queue before its sender is cut off.
    pub(crate) awareness_per_second: u32,
    pub(crate) awareness_burst: u32,
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Which bucket ran dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateExceeded {
    Messages(u32),
    Bytes(u32),
    Awareness(u32),
}

impl std::fmt::Display for RateExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Messages(n) => write!(f, "rate limit exceeded: more than {n} messages/s"),
            Self::Bytes(n) => write!(f, "rate limit exceeded: more than {n} bytes/s"),
            Self::Awareness(n) => {
                write!(f, "rate limit exceeded: more than {n} awareness messages/s")
            }
        }
    }
}

impl RateLimits {
    /// Buckets on the system clock: see [`RateLimits::with_clock`].
    pub(crate) fn new(rates: Rates, max_message_size: usize) -> RateLimits {
        Self::with_clock(rates, max_message_size, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// Buckets refilling at the sustained rates and holding the bursts (each at least one
    /// second's worth; the byte bucket at least `max_message_size`, so the largest allowed
    /// message always fits in a full bucket).
    pub(crate) fn with_clock(rates: Rates, max_message_size: usize, clock: &C) -> RateLimits<C> {
        let bucket = |rate: u32, burst: u32| {
            let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
            RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            )
        };
        let max_message = u32::try_from(max_message_size).unwrap_or(u32::MAX);
        RateLimits {
            messages: bucket(rates.messages_per_second, rates.message_burst),
            bytes: bucket(rates.bytes_per_second, rates.byte_burst.max(max_message)),
            awareness: bucket(rates.awareness_per_second, rates.awareness_burst),
            rates,
        }
    }

    /// Takes one message of `len` bytes from the buckets, or says which is empty.
    pub(crate) fn check(&self, len: usize) -> Result<(), RateExceeded> {
        if self.messages.check().is_err() {
            return Err(RateExceeded::Messages(self.rates.messages_per_second));
        }
        let len = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX));
        if let Some(len) = len
            && !matches!(self.bytes.check_n(len), Ok(Ok(())))
        {
            return Err(RateExceeded::Bytes(self.rates.bytes_per_second));
        }
        Ok(())
    }

    /// Takes `count` awareness messages (of one frame, once decoded) from their bucket.
    pub(crate) fn check_awareness(&self, count: usize) -> Result<(), RateExceeded> {
        let Some(count) = NonZeroU32::new(u32::try_from(count).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        match self.awareness.check_n(count) {
            Ok(Ok(())) => Ok(()),
            _ => Err(RateExceeded::Awareness(self.rates.awareness_per_second)),
        }
    }

    /// [`RateLimits::check_awareness`] for the awareness messages among `inbound`.
    pub(crate) fn check_awareness_of(
        &self,
        inbound: &[concord_core::Inbound],
    ) -> Result<(), RateExceeded> {
        let count = inbound
            .iter()
            .filter(|message| matches!(message, concord_core::Inbound::Awareness(_)))
            .count();
        self.check_awareness(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_counted_in_all_and_per_address() {
        let limits = ConnectionLimits::new(3, 2, 1000, 1000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.acquire(Some(a)).unwrap();
        let a2 = limits.acquire(Some(a)).unwrap();
        assert_eq!(limits.acquire(Some(a)).unwrap_err(), Refused::PerIp(2));
        let b1 = limits.acquire(Some(b)).unwrap();
        assert_eq!(limits.acquire(None).unwrap_err(), Refused::Total(3));
        assert_eq!(limits.open(), 3);
        drop(a1);
        let unknown = limits.acquire(None).unwrap();
        drop((a2, b1, unknown));
        assert_eq!(limits.open(), 0);
        assert!(limits.per_ip().is_empty());

        // Attempts per address, from a full bucket of 5.
        let limits = ConnectionLimits::new(100, 100, 1, 5);
        for _ in 0..5 {
            drop(limits.acquire(Some(a)).unwrap());
        }
        assert_eq!(
            limits.acquire(Some(a)).unwrap_err(),
            Refused::AttemptsPerIp(1)
        );
        assert!(limits.acquire(Some(b)).is_ok(), "per address");
        assert!(
            limits.acquire(None).is_ok(),
            "unknown addresses are not rate-limited"
        );
        limits.forget_quiet_addresses();
    }

    #[test]
    fn a_burst_passes_a_flood_is_caught_and_the_bucket_refills() {
        use governor::clock::FakeRelativeClock;
        use std::time::Duration;
        let clock = FakeRelativeClock::default();
        let rates = |messages, message_burst, bytes| Rates {
            messages_per_second: messages,
            message_burst,
            bytes_per_second: bytes,
            byte_burst: 0,
            awareness_per_second: 5,
            awareness_burst: 10,
        };
        let limits = RateLimits::with_clock(rates(10, 20, 1_000_000), 4000, &clock);
        // The message bucket holds 20: a burst of 20 passes, the 21st does not.
        for _ in 0..20 {
            limits.check(1).unwrap();
        }
        assert_eq!(limits.check(1), Err(RateExceeded::Messages(10)));
        // One token comes back every 100 ms.
        clock.advance(Duration::from_millis(100));
        limits.check(1).unwrap();
        assert_eq!(limits.check(1), Err(RateExceeded::Messages(10)));

        // The byte bucket holds at least one largest message, and refills at its rate.
        let bytes = RateLimits::with_clock(rates(1000, 1000, 1000), 4000, &clock);
        bytes.check(4000).unwrap();
        assert_eq!(bytes.check(4000), Err(RateExceeded::Bytes(1000)));
        clock.advance(Duration::from_secs(4));
        bytes.check(4000).unwrap();
        // A message over the bucket's whole capacity can never pass.
        clock.advance(Duration::from_secs(60));
        assert_eq!(bytes.check(5000), Err(RateExceeded::Bytes(1000)));

        // Awareness has its own, smaller bucket.
        bytes.check_awareness(10).unwrap();
        assert_eq!(bytes.check_awareness(1), Err(RateExceeded::Awareness(5)));
        clock.advance(Duration::from_millis(200));
        bytes.check_awareness(1).unwrap();
        bytes.check_awareness(0).unwrap();
    }
}
