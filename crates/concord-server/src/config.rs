//! Server configuration: one plain struct, filled by the binary from flags and environment and by
//! embedders in code.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord_core::{Clock, SystemClock};

/// Everything the server can be told. Start from [`Config::default`] and change what you need.
#[derive(Clone)]
pub struct Config {
    /// Path prefix under which [`crate::run`] serves documents, e.g. `/collab` makes
    /// `ws://host/collab/my-doc` the document `my-doc`. Empty: documents live at the root.
    /// Embedders that mount [`crate::router`] themselves choose the prefix with `nest` instead.
    pub path_prefix: String,
    /// Largest inbound WebSocket message (and frame), in bytes. Bigger ones close the connection
    /// with 1009.
    pub max_message_size: usize,
    /// Most frames waiting to be written to one connection. When full, the connection is closed
    /// with 1013 (the client reconnects and resyncs); updates are never skipped.
    pub outbound_queue_frames: usize,
    /// Most bytes waiting to be written to one connection; the same policy as
    /// [`Config::outbound_queue_frames`].
    pub outbound_queue_bytes: usize,
    /// How often a WebSocket ping is sent. A connection from which nothing (not even a pong) has
    /// arrived for three intervals is considered dead and dropped. A connection that was sent
    /// nothing during an interval also gets an empty awareness message, so the y-websocket
    /// client's 30 s no-message timeout never fires on an idle but healthy connection.
    pub keepalive_interval: Duration,
    /// Awareness states not renewed for this long are removed and their removal broadcast.
    pub awareness_timeout: Duration,
    /// How often rooms are swept for expired awareness states.
    pub awareness_sweep_interval: Duration,
    /// How long a room stays in memory after its last connection leaves.
    pub room_idle_timeout: Duration,
    /// Most document updates waiting to be written to the store. When full, connections that
    /// produce updates wait (their reads pause): backpressure, never loss.
    pub persist_queue: usize,
    /// Most updates written to the store in one batch (group commit).
    pub persist_batch: usize,
    /// Where documents are stored (a sled database). `None` keeps them in memory only, so
    /// they do not survive a restart. Used by [`crate::run`]; embedders pass a store to
    /// [`crate::Concord::new`] instead.
    pub data_dir: Option<PathBuf>,
    /// How often sled fsyncs in the background: the window a power loss may lose. A killed
    /// process loses nothing that was acknowledged.
    pub fsync_interval: Duration,
    /// A document whose log holds this many updates after its snapshot is compacted.
    pub compact_after_updates: u64,
    /// A document whose log holds this many bytes after its snapshot is compacted.
    pub compact_after_bytes: u64,
    /// How long shutdown waits for connections to close before it stops waiting.
    pub shutdown_grace: Duration,
    /// Time source for awareness expiry, in milliseconds. Tests inject a manual clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path_prefix: String::new(),
            max_message_size: 16 * 1024 * 1024,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 64 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(15),
            awareness_timeout: Duration::from_secs(30),
            awareness_sweep_interval: Duration::from_secs(5),
            room_idle_timeout: Duration::from_secs(30),
            persist_queue: 16 * 1024,
            persist_batch: 4096,
            data_dir: None,
            fsync_interval: Duration::from_millis(500),
            compact_after_updates: 10_000,
            compact_after_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path_prefix", &self.path_prefix)
            .field("max_message_size", &self.max_message_size)
            .field("outbound_queue_frames", &self.outbound_queue_frames)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("awareness_timeout", &self.awareness_timeout)
            .field("awareness_sweep_interval", &self.awareness_sweep_interval)
            .field("room_idle_timeout", &self.room_idle_timeout)
            .field("persist_queue", &self.persist_queue)
            .field("persist_batch", &self.persist_batch)
            .field("data_dir", &self.data_dir)
            .field("fsync_interval", &self.fsync_interval)
            .field("compact_after_updates", &self.compact_after_updates)
            .field("compact_after_bytes", &self.compact_after_bytes)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}
