//! What a node's Redis store and link measure, for `GET /metrics` ([`crate::Redis::metrics`]
//! gives the collector; the server prefixes every name with `concord_`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::store::Health;

/// Counters and histograms shared by the store and the link.
#[derive(Debug)]
pub(crate) struct RedisMetrics {
    /// Round trip of one append pipeline (what an acknowledgement waits for).
    pub(crate) append_seconds: Histogram,
    /// Round trip of one read (load, log tail).
    pub(crate) read_seconds: Histogram,
    /// From an entry's append to its delivery to a room here (clocks of two nodes: skew shows).
    pub(crate) follow_lag_seconds: Histogram,
    pub(crate) entries_delivered: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) ghosts_removed: AtomicU64,
    pub(crate) publish_dropped: AtomicU64,
    pub(crate) fast_updates: AtomicU64,
    /// Cluster: channel messages dropped because the subscriber's queue was full.
    pub(crate) received_dropped: AtomicU64,
    pub(crate) leases_taken: AtomicU64,
    pub(crate) leases_busy: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) corrupt_entries: AtomicU64,
    pub(crate) followed: AtomicU64,
}

impl Default for RedisMetrics {
    fn default() -> Self {
        // 50 µs to about 3.3 s.
        let seconds = || Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        RedisMetrics {
            append_seconds: seconds(),
            read_seconds: seconds(),
            follow_lag_seconds: seconds(),
            entries_delivered: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            ghosts_removed: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            fast_updates: AtomicU64::new(0),
            received_dropped: AtomicU64::new(0),
            leases_taken: AtomicU64::new(0),
            leases_busy: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            corrupt_entries: AtomicU64::new(0),
            followed: AtomicU64::new(0),
        }
    }
}

impl RedisMetrics {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The collector [`crate::Redis::metrics`] returns. It holds the node's metrics weakly: once the
/// node is gone it reports nothing.
#[derive(Debug)]
pub struct RedisCollector {
    pub(crate) metrics: Weak<RedisMetrics>,
    pub(crate) health: Weak<Health>,
}

fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(family)
}

impl Collector for RedisCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (Some(m), Some(health)) = (self.metrics.upgrade(), self.health.upgrade()) else {
            return Ok(());
        };
        let m: Arc<RedisMetrics> = m;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;
        encode_one(
            e,
            "redis_reachable",
            "Whether Redis answered lately (1) or not (0)",
            &ConstGauge::new(i64::from(health.is_up())),
        )?;
        encode_one(
            e,
            "redis_append_seconds",
            "Round trip of one append pipeline to Redis (what a save acknowledgement waits for)",
            &m.append_seconds,
        )?;
        encode_one(
            e,
            "redis_read_seconds",
            "Round trip of one read from Redis (document load, log tail)",
            &m.read_seconds,
        )?;
        encode_one(
            e,
            "redis_follow_lag_seconds",
            "From another node's append to its delivery to a room here (includes clock skew between nodes)",
            &m.follow_lag_seconds,
        )?;
        encode_one(
            e,
            "redis_followed_documents",
            "Documents whose streams this node follows",
            &ConstGauge::new(read(&m.followed) as i64),
        )?;
        encode_one(
            e,
            "redis_entries_delivered",
            "Log entries of other nodes delivered to rooms here",
            &ConstCounter::new(read(&m.entries_delivered)),
        )?;
        encode_one(
            e,
            "redis_resyncs",
            "Rooms caught up from the snapshot because compaction trimmed entries they had not read",
            &ConstCounter::new(read(&m.resyncs)),
        )?;
        encode_one(
            e,
            "redis_ghost_clients_removed",
            "Awareness clients of dead nodes removed from rooms here",
            &ConstCounter::new(read(&m.ghosts_removed)),
        )?;
        encode_one(
            e,
            "redis_publish_dropped",
            "Awareness and fast-path update messages not published because the queue was full \
             (updates still arrive by the stream)",
            &ConstCounter::new(read(&m.publish_dropped)),
        )?;
        encode_one(
            e,
            "redis_fast_updates",
            "Other nodes' updates relayed here from pub/sub, ahead of their stream entries",
            &ConstCounter::new(read(&m.fast_updates)),
        )?;
        encode_one(
            e,
            "redis_received_dropped",
            "Cluster: channel messages dropped because this node's subscriber queue was full \
             (stored entries are still read by the periodic catch-up)",
            &ConstCounter::new(read(&m.received_dropped)),
        )?;
        encode_one(
            e,
            "redis_corrupt_entries",
            "Log entries skipped because they could not be read",
            &ConstCounter::new(read(&m.corrupt_entries)),
        )?;
        let mut family = e.encode_descriptor(
            "redis_compaction_leases",
            "Compaction leases: taken, busy (another node held it), lost (expired before the write)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (outcome, value) in [
            ("taken", read(&m.leases_taken)),
            ("busy", read(&m.leases_busy)),
            ("lost", read(&m.leases_lost)),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        Ok(())
    }
}
