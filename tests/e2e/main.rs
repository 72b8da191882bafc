//! End-to-end tests: a real Concord server on a loopback port, real WebSocket clients built on
//! `yrs` (see the `concord_tests` helpers). Every wait is a poll with a generous deadline; no test
//! depends on how fast the machine is.

// The HTTP API, SSE, polling, the change feed, health and metrics.
mod api;
// Tokens, read-only access, origins and application authorizers.
mod auth;
mod awareness;
mod backpressure;
// The Rust client against real servers.
mod client;
// Tests through `Concord::new` + `router` (custom stores, `is_loaded`, `connection_count`,
// `closed`).
mod embedded;
// The Hocuspocus protocol at the root URL, through the embedding API.
mod hocuspocus;
// Versions: named, automatic, thinned, restored.
mod history;
// Document names, path prefixes, static files next to documents.
mod http;
mod keepalive;
// Floods, connection storms, size limits and room eviction.
mod limits;
mod malformed;
// Durability with a real sled store: save acknowledgements, compaction, restarts, corruption.
mod persistence;
// The server as a process of its own.
mod process;
mod random;
mod redis;
// The replication seam: two instances linked through `Replication`.
mod replication;
mod shutdown;
// Before a request is complete: socket caps at accept, header and keep-alive deadlines,
// running out of descriptors.
mod sockets;
mod sync;
// Signed events to a real receiver: debounce, retries, SIGKILL with events pending.
mod webhooks;
