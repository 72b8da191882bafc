//! Counters of what the server refused, cut off or survived, read with [`crate::Concord::stats`].
//! Every limit that is hit is also logged where it is hit.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The live counters, shared by every connection.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) auth_failures: AtomicU64,
    pub(crate) origin_refused: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) rooms_refused: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) documents_too_large: AtomicU64,
    pub(crate) awareness_too_large: AtomicU64,
    pub(crate) tokens_expired: AtomicU64,
    pub(crate) rooms_evicted: AtomicU64,
    pub(crate) awareness_skipped: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) updates_in: AtomicU64,
    pub(crate) update_bytes_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) corrupt_entries: AtomicU64,
    /// Compactions that replaced a log with a snapshot, and those that failed (the log is kept).
    pub(crate) compactions_done: AtomicU64,
    pub(crate) compactions_failed: AtomicU64,
    /// Versions kept (automatic and named), automatic ones the retention policy removed,
    /// automatic ones that could not be kept, and restores done.
    pub(crate) versions_kept: AtomicU64,
    pub(crate) versions_thinned: AtomicU64,
    pub(crate) versions_failed: AtomicU64,
    pub(crate) restores: AtomicU64,
    /// Bytes of every document's versions, as of the history keeper's last sweep (at start,
    /// then hourly).
    pub(crate) history_bytes: AtomicU64,
    /// Webhooks: stored updates the notifier took into account, events made (one per event,
    /// whatever the receivers), deliveries answered 2xx, attempts that failed, deliveries
    /// dropped (given up, outbox full, receiver no longer configured), and deliveries pending.
    pub(crate) webhook_updates_seen: AtomicU64,
    pub(crate) webhook_events: AtomicU64,
    pub(crate) webhook_delivered: AtomicU64,
    pub(crate) webhook_failures: AtomicU64,
    pub(crate) webhook_dropped: AtomicU64,
    pub(crate) webhook_pending: AtomicU64,
    pub(crate) webhook_leading: AtomicU64,
    /// Set while the store fails to take writes (after retries), for `/readyz`.
    pub(crate) store_failing: std::sync::atomic::AtomicBool,
    /// Open connections by transport.
    pub(crate) websockets: AtomicI64,
    pub(crate) sse_streams: AtomicI64,
    pub(crate) polls: AtomicI64,
    /// TCP connections open now, counted from `accept` (see [`crate::policy::sockets`]).
    pub(crate) sockets_open: AtomicI64,
    /// Sockets closed at `accept` for the total cap and for the per-address cap.
    pub(crate) sockets_refused_total: AtomicU64,
    pub(crate) sockets_refused_per_address: AtomicU64,
    /// Sockets closed for not sending a request's headers in time, and for idling too long
    /// between requests.
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) keep_alive_timeouts: AtomicU64,
    /// `accept` calls that failed for want of descriptors or memory.
    pub(crate) accept_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a frame of `len` bytes written to a WebSocket.
    pub(crate) fn frame_out(&self, len: usize) {
        Counters::bump(&self.frames_out);
        Counters::add(&self.bytes_out, len as u64);
    }

    pub(crate) fn add_websocket(&self, delta: i64) {
        self.websockets.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn add_sse(&self, delta: i64) {
        self.sse_streams.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn add_poll(&self, delta: i64) {
        self.polls.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            auth_failures: read(&self.auth_failures),
            origin_refused: read(&self.origin_refused),
            connections_refused: read(&self.connections_refused),
            rooms_refused: read(&self.rooms_refused),
            rate_limited: read(&self.rate_limited),
            malformed: read(&self.malformed),
            documents_too_large: read(&self.documents_too_large),
            awareness_too_large: read(&self.awareness_too_large),
            tokens_expired: read(&self.tokens_expired),
            rooms_evicted: read(&self.rooms_evicted),
            awareness_skipped: read(&self.awareness_skipped),
            slow_consumers: read(&self.slow_consumers),
            panics: read(&self.panics),
            websockets: self.websockets.load(Ordering::Relaxed).max(0) as u64,
            sse_streams: self.sse_streams.load(Ordering::Relaxed).max(0) as u64,
            polls: self.polls.load(Ordering::Relaxed).max(0) as u64,
            sockets_open: self.sockets_open.load(Ordering::Relaxed).max(0) as u64,
            sockets_refused_total: read(&self.sockets_refused_total),
            sockets_refused_per_address: read(&self.sockets_refused_per_address),
            header_timeouts: read(&self.header_timeouts),
            keep_alive_timeouts: read(&self.keep_alive_timeouts),
            accept_errors: read(&self.accept_errors),
            webhook_updates_seen: read(&self.webhook_updates_seen),
            webhook_events: read(&self.webhook_events),
            webhook_delivered: read(&self.webhook_delivered),
            webhook_failures: read(&self.webhook_failures),
            webhook_dropped: read(&self.webhook_dropped),
            webhook_pending: read(&self.webhook_pending),
            webhook_leading: read(&self.webhook_leading) != 0,
        }
    }
}

/// What the server refused, cut off or survived since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connection attempts refused by the authorizer (HTTP 401/403).
    pub auth_failures: u64,
    /// Upgrades refused because their `Origin` is not allowed (HTTP 403).
    pub origin_refused: u64,
    /// Connection attempts over the total or per-address limit (HTTP 503/429).
    pub connections_refused: u64,
    /// Connections refused because too many documents are open and none is idle.
    pub rooms_refused: u64,
    /// Connections closed for sending faster than the rate limits (close 4429).
    pub rate_limited: u64,
    /// Connections closed for a malformed message or an update yrs refused (close 1003/1007).
    pub malformed: u64,
    /// Connections closed for an update past the document size limit (close 4413).
    pub documents_too_large: u64,
    /// Connections closed for an awareness state past its size limit (close 1009).
    pub awareness_too_large: u64,
    /// Connections closed because their token expired (close 4401).
    pub tokens_expired: u64,
    /// Idle rooms unloaded early to make room for another document.
    pub rooms_evicted: u64,
    /// Awareness frames not queued for a connection that was behind.
    pub awareness_skipped: u64,
    /// Connections closed because their outbound queue overflowed (close 1013).
    pub slow_consumers: u64,
    /// Panics caught while serving a connection or authorizing one.
    pub panics: u64,
    /// WebSocket connections open now.
    pub websockets: u64,
    /// SSE streams open now.
    pub sse_streams: u64,
    /// Long polls waiting now.
    pub polls: u64,
    /// TCP connections open now, counted from `accept`.
    pub sockets_open: u64,
    /// Sockets closed at `accept` because [`crate::Config::max_sockets`] were open.
    pub sockets_refused_total: u64,
    /// Sockets closed at `accept` because their address held
    /// [`crate::Config::max_sockets_per_address`].
    pub sockets_refused_per_address: u64,
    /// Sockets closed because a request's headers did not arrive within
    /// [`crate::Config::header_read_timeout`].
    pub header_timeouts: u64,
    /// Idle HTTP connections closed after [`crate::Config::keep_alive_timeout`].
    pub keep_alive_timeouts: u64,
    /// `accept` calls that failed for want of descriptors or memory (the server waited and
    /// went on).
    pub accept_errors: u64,
    /// Stored updates the webhook notifier has taken into account.
    pub webhook_updates_seen: u64,
    /// Webhook events made (each is delivered to every receiver).
    pub webhook_events: u64,
    /// Webhook deliveries a receiver answered with 2xx.
    pub webhook_delivered: u64,
    /// Webhook delivery attempts that failed (each is retried until given up).
    pub webhook_failures: u64,
    /// Webhook deliveries dropped: given up after [`crate::WebhookConfig::retry`], the oldest
    /// of a full outbox, or for a receiver no longer configured.
    pub webhook_dropped: u64,
    /// Webhook deliveries waiting now (in the outbox) in this process' hands.
    pub webhook_pending: u64,
    /// Whether this process announces and delivers webhooks: always with webhooks on an
    /// embedded store; over a shared store (Redis), while it holds the lease.
    pub webhook_leading: bool,
}
