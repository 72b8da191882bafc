//! Server configuration: one plain struct, filled by the binary from flags and environment and by
//! embedders in code.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord_core::{Clock, Store, SystemClock};

use crate::auth::Authorizer;
use crate::replication::Replication;

/// Everything the server can be told. Start from [`Config::default`] and change what you need.
#[derive(Clone)]
pub struct Config {
    /// Path prefix under which [`crate::run`] serves documents, e.g. `/collab` makes
    /// `ws://host/collab/my-doc` the document `my-doc`. Empty: documents live at the root.
    /// Embedders that mount [`crate::router`] themselves choose the prefix with `nest` instead.
    pub path_prefix: String,
    /// Where the HTTP API lives, under the routes of [`crate::router`]: `/api` makes
    /// `GET /api/docs` the list of documents. A document whose name starts with this prefix is
    /// not reachable over WebSocket. Empty: no HTTP API.
    pub api_prefix: String,
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
    /// How often the sled store fsyncs its journal (and sled flushes) in the background: the
    /// window a power loss may lose. A killed process loses nothing that was acknowledged.
    pub fsync_interval: Duration,
    /// A document whose log holds this many updates after its snapshot is compacted.
    pub compact_after_updates: u64,
    /// A document whose log holds this many bytes after its snapshot is compacted.
    pub compact_after_bytes: u64,
    /// How long shutdown waits for connections to close before it stops waiting.
    pub shutdown_grace: Duration,
    /// Time source for awareness expiry, in milliseconds. Tests inject a manual clock.
    pub clock: Arc<dyn Clock>,
    /// Decides who may open which document (see [`crate::auth`]). `None`: the server is open,
    /// anyone who can reach it reads and writes every document.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Origins (`scheme://host[:port]`, as browsers send them in the `Origin` header) allowed
    /// to open documents (WebSocket upgrades and HTTP API requests), against cross-site
    /// WebSocket hijacking. Requests from other origins get HTTP 403; requests without an
    /// `Origin` header (non-browser clients) are allowed. Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// Most connections at once (WebSocket connections, SSE streams, polls and API requests
    /// in progress); more get HTTP 503.
    pub max_connections: usize,
    /// Most connections at once from one IP address (counted as `max_connections` is); more
    /// get HTTP 429. Behind a reverse proxy every client has the proxy's address: raise it
    /// there. Only applied when the server knows peer addresses ([`crate::serve`] and
    /// [`crate::run`] do; with `axum::serve`, serve
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    pub max_connections_per_ip: usize,
    /// New connections (WebSocket upgrades and HTTP API requests) per second from one IP
    /// address, sustained, with a burst of
    /// `connection_attempt_burst`; more get HTTP 429. Each connection starts with full rate
    /// buckets, so without this a client reconnecting in a loop would multiply its allowance.
    pub connection_attempts_per_ip: u32,
    /// How many connections one address may open at once above its sustained rate.
    pub connection_attempt_burst: u32,
    /// Most TCP connections open at once, counted from `accept` (requests still being read,
    /// WebSocket, SSE, polls and idle keep-alive connections alike); a socket past it is closed
    /// at once, before anything is read from it. `None`: derived from the process's descriptor
    /// limit, which [`crate::serve`] first raises from its soft to its hard value (the cap then
    /// leaves an eighth of the descriptors, at least 64, for the store and everything else). A
    /// value above that limit is used as given, with a warning: the server may then run out of
    /// descriptors (it survives that, see [`crate::serve`], but accepts nobody meanwhile).
    pub max_sockets: Option<usize>,
    /// Most TCP connections open at once from one peer address, counted as `max_sockets` is;
    /// 0: no cap. Behind a reverse proxy every peer is the proxy: raise it to `max_sockets`
    /// there (per-client limits after the request is read then still apply).
    pub max_sockets_per_address: usize,
    /// How long a client may take to send a request's line and headers, counted from `accept`
    /// (or from the first byte of a later request on a kept-alive connection). Past it the
    /// socket is closed without an answer: a client that trickles its headers (slowloris)
    /// holds a descriptor and a buffer this long at most.
    pub header_read_timeout: Duration,
    /// How long a plain-HTTP connection may stay open with no request in progress, after its
    /// last response; past it the socket is closed. WebSocket connections are not affected
    /// (their liveness is [`Config::keepalive_interval`]'s pings).
    pub keep_alive_timeout: Duration,
    /// Messages per second one connection may send, sustained; `rate_message_burst` more may
    /// come at once. A connection over it is closed with 4429.
    pub rate_messages_per_second: u32,
    /// How many messages a connection may send at once above its sustained rate.
    pub rate_message_burst: u32,
    /// Bytes per second one connection may send, sustained, with a burst of
    /// `max(rate_byte_burst, max_message_size)` (so a single message of the largest allowed
    /// size always gets through). A connection over it is closed with 4429.
    pub rate_bytes_per_second: u32,
    /// How many bytes a connection may send at once above its sustained rate.
    pub rate_byte_burst: u32,
    /// Awareness messages per second one connection may send, sustained (they count against
    /// `rate_messages_per_second` too). Awareness is relayed to every connection of the room,
    /// so its bucket is smaller: a flood of it would fill the other clients' outbound queues.
    /// A connection over it is closed with 4429.
    pub rate_awareness_per_second: u32,
    /// How many awareness messages a connection may send at once above its sustained rate.
    pub rate_awareness_burst: u32,
    /// Largest a document may grow to, in stored bytes (its last snapshot plus the updates
    /// since, see [`concord_core::Room::document_bytes`]). An update that would pass it is not
    /// applied, and its sender is closed with 4413. `None`: no limit.
    pub max_document_bytes: Option<u64>,
    /// Most documents loaded in memory at once. Opening another unloads the least recently used
    /// idle one first; when none is idle, the request is refused (HTTP 503; a WebSocket that
    /// lost the race for the last room after its upgrade is closed with 1013).
    pub max_rooms: usize,
    /// Largest awareness state of one client (its JSON), in bytes; a larger one closes its
    /// sender with 1009.
    pub max_awareness_state_bytes: usize,
    /// Whether read-only connections' awareness (presence, cursors) is relayed.
    pub read_only_awareness: bool,
    /// A directory of static files (the web demo's `dist/`) served by [`crate::router`] for
    /// plain GET and HEAD requests, `index.html` at `/`. WebSocket upgrades on the same paths
    /// still open documents; a path with no file answers as before (400: expected a WebSocket
    /// upgrade). `None`: no files are served.
    pub static_dir: Option<PathBuf>,
    /// Links this server to other processes serving the same documents (see
    /// [`Replication`]): what their clients change reaches this one's, and back. `None`: a
    /// single process.
    pub replication: Option<Arc<dyn Replication>>,
    /// The store [`crate::run`] uses (a shared one such as `concord_redis::RedisStore` when
    /// several processes serve the same documents). `None`: sled in [`Config::data_dir`], or
    /// memory.
    pub store: Option<Arc<dyn Store>>,
    /// Reverse proxies and load balancers whose word on the client is believed: a request whose
    /// peer is in one of these networks is taken to come from the address the proxies put in
    /// `Forwarded: for=` or `X-Forwarded-For` (read from the right, past every trusted proxy),
    /// for per-IP limits, logs and authorizers. Applied by [`crate::serve`]. Empty: every peer
    /// is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Browser origins (e.g. `https://app.example.com`) whose cross-origin requests to the HTTP
    /// API are allowed (CORS: preflights answered, `Access-Control-Allow-Origin` on responses).
    /// `["*"]` allows any origin. Empty: no CORS headers (same-origin pages only).
    pub cors_origins: Vec<String>,
    /// More metrics for `GET /metrics`, encoded after the server's own at every scrape (e.g.
    /// `concord_redis::Redis::metrics`). Names get the `concord_` prefix.
    pub metrics: Vec<Arc<dyn prometheus_client::collector::Collector>>,
    /// Most documents one Hocuspocus connection may have open at once (authenticated, or
    /// waiting for their Auth message). Another document is answered with `PermissionDenied`;
    /// the documents already open go on.
    pub max_documents_per_connection: usize,
    /// Receives the Hocuspocus clients' stateless messages (`provider.sendStateless`). Called
    /// on the connection's task: it must return quickly (hand the message to a channel or a
    /// task for anything slow). `None`: they are dropped (after the rate and size checks).
    pub on_stateless: Option<Arc<dyn Fn(crate::StatelessMessage) + Send + Sync>>,
    /// Whether a Hocuspocus client's stateless message is also passed on to the document's
    /// other Hocuspocus connections in this process (after [`Config::on_stateless`]), as a
    /// Hocuspocus server whose `onStateless` hook calls `document.broadcastStateless` does.
    pub relay_stateless: bool,
    /// Version history: automatic versions and their retention (named versions and restore
    /// work whatever this says). See [`crate::HistoryConfig`].
    pub history: crate::HistoryConfig,
    /// Where to POST signed events about documents (see [`crate::WebhookConfig`]); `None`: no
    /// webhooks. Needs a store with an outbox (sled, memory, Redis). Over a store other
    /// processes share ([`concord_core::Store::shared`], Redis), give every process the same
    /// settings: one at a time, the holder of a lease in the store, announces and delivers
    /// (a shared store without that lease gets an error logged and no webhooks).
    pub webhooks: Option<crate::WebhookConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path_prefix: String::new(),
            api_prefix: "/api".to_owned(),
            max_message_size: 16 * 1024 * 1024,
            outbound_queue_frames: 4096,
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
            authorizer: None,
            allowed_origins: Vec::new(),
            max_connections: 16 * 1024,
            max_connections_per_ip: 512,
            connection_attempts_per_ip: 20,
            connection_attempt_burst: 200,
            max_sockets: None,
            max_sockets_per_address: 1024,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            rate_messages_per_second: 200,
            rate_message_burst: 1000,
            rate_bytes_per_second: 2 * 1024 * 1024,
            rate_byte_burst: 16 * 1024 * 1024,
            rate_awareness_per_second: 60,
            rate_awareness_burst: 300,
            max_document_bytes: Some(64 * 1024 * 1024),
            max_rooms: 10_000,
            max_awareness_state_bytes: 64 * 1024,
            read_only_awareness: true,
            static_dir: None,
            replication: None,
            store: None,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            metrics: Vec::new(),
            max_documents_per_connection: 64,
            on_stateless: None,
            relay_stateless: false,
            history: crate::HistoryConfig::default(),
            webhooks: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path_prefix", &self.path_prefix)
            .field("api_prefix", &self.api_prefix)
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
            .field("static_dir", &self.static_dir)
            .field("authorizer", &self.authorizer.as_ref().map(|_| "set"))
            .field("replication", &self.replication.as_ref().map(|_| "set"))
            .field("store", &self.store.as_ref().map(|_| "set"))
            .field("trusted_proxies", &self.trusted_proxies)
            .field("cors_origins", &self.cors_origins)
            .field("metrics", &self.metrics.len())
            .field(
                "max_documents_per_connection",
                &self.max_documents_per_connection,
            )
            .field("on_stateless", &self.on_stateless.as_ref().map(|_| "set"))
            .field("relay_stateless", &self.relay_stateless)
            .field("history", &self.history)
            .field("webhooks", &self.webhooks)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field(
                "connection_attempts_per_ip",
                &self.connection_attempts_per_ip,
            )
            .field("connection_attempt_burst", &self.connection_attempt_burst)
            .field("max_sockets", &self.max_sockets)
            .field("max_sockets_per_address", &self.max_sockets_per_address)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("rate_messages_per_second", &self.rate_messages_per_second)
            .field("rate_message_burst", &self.rate_message_burst)
            .field("rate_bytes_per_second", &self.rate_bytes_per_second)
            .field("rate_byte_burst", &self.rate_byte_burst)
            .field("rate_awareness_per_second", &self.rate_awareness_per_second)
            .field("rate_awareness_burst", &self.rate_awareness_burst)
            .field("max_document_bytes", &self.max_document_bytes)
            .field("max_rooms", &self.max_rooms)
            .field("max_awareness_state_bytes", &self.max_awareness_state_bytes)
            .field("read_only_awareness", &self.read_only_awareness)
            .finish_non_exhaustive()
    }
}
