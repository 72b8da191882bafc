//! `GET /metrics`: Prometheus text exposition through `prometheus-client`. The counters the
//! server keeps anyway ([`Counters`]) and the number of rooms loaded (a gauge the registry is
//! asked for through a closure, so this module knows nothing of rooms) are read at scrape time
//! by a collector; the persistence flush latency is a histogram the worker observes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ops::stats::Counters;

/// Reads how many rooms are loaded, at scrape time.
pub(crate) type RoomsLoaded = Arc<dyn Fn() -> usize + Send + Sync>;

/// The registry: the collector of live counters and the flush latency histogram (observed
/// by the persistence worker, which holds a clone of it).
pub(crate) struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The histogram [`Metrics::new`] wants for flush latencies: 50 µs to about 3.3 s.
    pub(crate) fn flush_histogram() -> Histogram {
        Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
    }

    pub(crate) fn new(
        counters: Arc<Counters>,
        rooms_loaded: RoomsLoaded,
        flush_seconds: Histogram,
        extra: &[Arc<dyn Collector>],
    ) -> Metrics {
        let mut registry = Registry::with_prefix("concord");
        registry.register(
            "persist_flush_seconds",
            "Time of one group commit: a store append (one batch and one flush)",
            flush_seconds,
        );
        registry.register_collector(Box::new(Live {
            counters,
            rooms_loaded,
        }));
        for collector in extra {
            registry.register_collector(Box::new(Shared(collector.clone())));
        }
        Metrics { registry }
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A collector given in [`crate::Config::metrics`].
#[derive(Debug)]
struct Shared(Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// Reads the live counters at scrape time.
struct Live {
    counters: Arc<Counters>,
    rooms_loaded: RoomsLoaded,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(family)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(family)
}

/// One metric with a single label taking several values.
fn labelled<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: Vec<(&str, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(kind) = values.first().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, metric) in values {
        let labels = [(label, value)];
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        let read = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let stats = c.snapshot();
        labelled(
            &mut encoder,
            "connections",
            "Open connections, by transport",
            "transport",
            vec![
                ("websocket", ConstGauge::new(stats.websockets as i64)),
                ("sse", ConstGauge::new(stats.sse_streams as i64)),
                ("poll", ConstGauge::new(stats.polls as i64)),
            ],
        )?;
        gauge(
            &mut encoder,
            "rooms_loaded",
            "Documents loaded in memory",
            (self.rooms_loaded)() as i64,
        )?;
        counter(
            &mut encoder,
            "updates_received",
            "Document updates received from clients (WebSocket and HTTP)",
            read(&c.updates_in),
        )?;
        counter(
            &mut encoder,
            "update_bytes_received",
            "Bytes of the document updates received from clients",
            read(&c.update_bytes_in),
        )?;
        counter(
            &mut encoder,
            "frames_sent",
            "WebSocket frames sent to clients",
            read(&c.frames_out),
        )?;
        counter(
            &mut encoder,
            "bytes_sent",
            "Bytes of the WebSocket frames sent to clients",
            read(&c.bytes_out),
        )?;
        labelled(
            &mut encoder,
            "compactions",
            "Document compactions, by outcome",
            "outcome",
            vec![
                ("done", ConstCounter::new(read(&c.compactions_done))),
                ("failed", ConstCounter::new(read(&c.compactions_failed))),
            ],
        )?;
        labelled(
            &mut encoder,
            "versions",
            "Document versions: kept (automatic and named), removed by the retention policy, failed (automatic ones that could not be kept)",
            "event",
            vec![
                ("kept", ConstCounter::new(read(&c.versions_kept))),
                ("thinned", ConstCounter::new(read(&c.versions_thinned))),
                ("failed", ConstCounter::new(read(&c.versions_failed))),
            ],
        )?;
        gauge(
            &mut encoder,
            "history_bytes",
            "Bytes of every document's versions, as of the last hourly sweep",
            read(&c.history_bytes) as i64,
        )?;
        labelled(
            &mut encoder,
            "webhooks",
            "Webhooks: events made, deliveries answered 2xx, attempts failed, deliveries dropped (given up, outbox full or receiver removed)",
            "event",
            vec![
                ("made", ConstCounter::new(read(&c.webhook_events))),
                ("delivered", ConstCounter::new(read(&c.webhook_delivered))),
                ("failed", ConstCounter::new(read(&c.webhook_failures))),
                ("dropped", ConstCounter::new(read(&c.webhook_dropped))),
            ],
        )?;
        gauge(
            &mut encoder,
            "webhooks_pending",
            "Webhook deliveries waiting in the outbox",
            read(&c.webhook_pending) as i64,
        )?;
        gauge(
            &mut encoder,
            "webhooks_leader",
            "1 while this process announces and delivers webhooks (over Redis: holds the lease)",
            read(&c.webhook_leading) as i64,
        )?;
        counter(
            &mut encoder,
            "restores",
            "Documents restored to a version",
            read(&c.restores),
        )?;
        labelled(
            &mut encoder,
            "rejected",
            "Messages and connections refused or cut off, by reason",
            "reason",
            vec![
                ("malformed", ConstCounter::new(stats.malformed)),
                ("rate_limited", ConstCounter::new(stats.rate_limited)),
                (
                    "document_too_large",
                    ConstCounter::new(stats.documents_too_large),
                ),
                (
                    "awareness_too_large",
                    ConstCounter::new(stats.awareness_too_large),
                ),
                ("token_expired", ConstCounter::new(stats.tokens_expired)),
                ("origin", ConstCounter::new(stats.origin_refused)),
                (
                    "connection_limit",
                    ConstCounter::new(stats.connections_refused),
                ),
                ("room_limit", ConstCounter::new(stats.rooms_refused)),
            ],
        )?;
        counter(
            &mut encoder,
            "auth_failures",
            "Requests the authorizer refused (HTTP 401/403)",
            stats.auth_failures,
        )?;
        labelled(
            &mut encoder,
            "queue_overflows",
            "Outbound queue overflows: slow connections closed (1013), awareness frames skipped",
            "kind",
            vec![
                ("slow_consumer", ConstCounter::new(stats.slow_consumers)),
                (
                    "awareness_skipped",
                    ConstCounter::new(stats.awareness_skipped),
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "rooms_evicted",
            "Idle documents unloaded early to make room for others",
            stats.rooms_evicted,
        )?;
        counter(
            &mut encoder,
            "panics",
            "Panics caught while serving (the server went on)",
            stats.panics,
        )?;
        gauge(
            &mut encoder,
            "sockets_open",
            "TCP connections open now, counted from accept",
            stats.sockets_open as i64,
        )?;
        labelled(
            &mut encoder,
            "sockets_refused",
            "Sockets closed at accept, before anything was read, by the cap that was reached",
            "cap",
            vec![
                ("total", ConstCounter::new(stats.sockets_refused_total)),
                (
                    "per_address",
                    ConstCounter::new(stats.sockets_refused_per_address),
                ),
            ],
        )?;
        labelled(
            &mut encoder,
            "sockets_timed_out",
            "Sockets closed for sending no complete request head in time, or idling between requests",
            "phase",
            vec![
                ("header", ConstCounter::new(stats.header_timeouts)),
                ("keep_alive", ConstCounter::new(stats.keep_alive_timeouts)),
            ],
        )?;
        counter(
            &mut encoder,
            "accept_errors",
            "accept calls that failed for want of descriptors or memory",
            stats.accept_errors,
        )?;
        counter(
            &mut encoder,
            "store_corrupt_entries",
            "Corrupt log entries the store skipped",
            read(&c.corrupt_entries),
        )?;
        Ok(())
    }
}
