//! The `concord-server` binary: parses flags and environment into a [`Config`], sets up logging
//! and signal handling, and calls [`concord_server::run`].

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use concord_server::Config;
use concord_server::auth::{Claims, JwtAuthorizer, Permission, TokenSigner};
use tokio_util::sync::CancellationToken;

/// jemalloc, with a background thread that returns freed memory to the system: after a flood
/// of connections is shed, the server's RSS falls back within seconds (glibc's malloc keeps
/// most of it; see the slowloris figures in benches/README.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A Yjs-compatible real-time document sync server.
///
/// Yjs clients connect to ws://HOST:PORT/<document name> (for example with y-websocket's
/// WebsocketProvider). Logging is configured with RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(
    name = "concord-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Inspect and change stored documents. Stop the server first: the data directory is
    /// locked while it runs.
    Docs {
        /// The server's data directory.
        #[arg(long, env = "CONCORD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Work on the documents in Redis (as the nodes started with the same --redis-* flags
        /// see them) instead of --data-dir. Nodes may keep running.
        #[command(flatten)]
        redis: RedisArgs,
        #[command(subcommand)]
        action: DocsAction,
    },
    /// Mint a token for development: prints a JWT granting the given documents.
    Token(TokenArgs),
}

/// Where the documents are when they are in Redis (the server and the `docs` commands).
#[derive(Debug, clap::Args)]
struct RedisArgs {
    /// Store documents in this Redis (redis://HOST:PORT[/DB]) instead of --data-dir, and share
    /// them with every other node started with the same Redis and --redis-prefix: clients may
    /// connect to any node. With --redis-cluster: a seed node of the Redis Cluster
    /// (repeatable, or comma-separated).
    #[arg(long = "redis-url", env = "CONCORD_REDIS_URL", value_delimiter = ',')]
    redis_urls: Vec<String>,
    /// The --redis-url nodes are seeds of a Redis Cluster: each document lives on the shard of
    /// its hash tag, presence goes over sharded pub/sub.
    #[arg(long, env = "CONCORD_REDIS_CLUSTER", requires = "redis_urls")]
    redis_cluster: bool,
    /// Prefix of every Redis key and channel Concord uses.
    #[arg(long, env = "CONCORD_REDIS_PREFIX", default_value = "concord")]
    redis_prefix: String,
}

impl RedisArgs {
    /// The Redis options, when documents are in Redis.
    fn options(&self) -> Option<concord_redis::RedisOptions> {
        (!self.redis_urls.is_empty()).then(|| concord_redis::RedisOptions {
            urls: self.redis_urls.clone(),
            cluster: self.redis_cluster,
            prefix: self.redis_prefix.clone(),
            ..concord_redis::RedisOptions::default()
        })
    }
}

/// Flags of `concord-server token`.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Sign with HS256 and the secret in this file (whitespace around it is trimmed): the file
    /// the server gets as --auth-secret-file.
    #[arg(
        long,
        required_unless_present = "private_key",
        conflicts_with = "private_key"
    )]
    secret_file: Option<PathBuf>,
    /// Sign with EdDSA or ES256 and this Ed25519 or P-256 private key (PEM, PKCS#8); the
    /// server gets the public key as --auth-public-key.
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Who the token is for (the `sub` claim).
    #[arg(long)]
    sub: Option<String>,
    /// A document (or a prefix pattern ending in *) and what the token grants on it, e.g.
    /// --doc 'team-a/*=write' --doc handbook=read. Repeatable.
    #[arg(long = "doc", value_name = "NAME=read|write", required = true, value_parser = parse_grant)]
    docs: Vec<(String, Permission)>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// An address or a network: `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`.
fn parse_network(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{value:?} is not an address or a network (e.g. 10.0.0.0/8)"))
}

/// `*`, or `scheme://host[:port]` with nothing after it.
fn parse_origin(value: &str) -> Result<String, String> {
    let origin = value.trim_end_matches('/');
    let valid = origin == "*"
        || (origin.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
        }) && axum::http::HeaderValue::from_str(origin).is_ok());
    if valid {
        Ok(origin.to_owned())
    } else {
        Err(format!(
            "{value:?} is not an origin (e.g. https://app.example.com, or *)"
        ))
    }
}

fn parse_grant(value: &str) -> Result<(String, Permission), String> {
    let (name, permission) = value
        .rsplit_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=read or NAME=write"))?;
    let permission = match permission {
        "read" => Permission::Read,
        "write" => Permission::Write,
        other => return Err(format!("{other:?} is neither read nor write")),
    };
    if name.is_empty() {
        return Err("the document name is empty".into());
    }
    Ok((name.to_owned(), permission))
}

#[derive(Debug, clap::Subcommand)]
enum DocsAction {
    /// List documents with their stored sizes.
    List,
    /// Write a document to stdout as one Yjs v1 update (Y.applyUpdate reads it).
    Export {
        /// Document name.
        name: String,
    },
    /// Merge a Yjs v1 update read from stdin into a document (created if needed).
    Import {
        /// Document name.
        name: String,
    },
    /// Compact one document (or every document) into a snapshot.
    Compact {
        /// Document name; all documents when omitted.
        name: Option<String>,
    },
    /// Delete a document.
    Delete {
        /// Document name.
        name: String,
    },
}

/// Flags of the server itself.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONCORD_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the chosen address is printed on stdout).
    #[arg(long, env = "CONCORD_PORT", default_value_t = 1234)]
    port: u16,
    /// Serve documents under this path prefix, e.g. /collab.
    #[arg(long, env = "CONCORD_PATH_PREFIX", default_value = "")]
    path_prefix: String,
    /// Where the HTTP API lives (under --path-prefix); empty: no HTTP API.
    #[arg(long, env = "CONCORD_API_PREFIX", default_value = "/api")]
    api_prefix: String,
    /// Largest inbound WebSocket message in bytes; bigger ones close the connection with 1009.
    #[arg(long, env = "CONCORD_MAX_MESSAGE_SIZE", default_value_t = Config::default().max_message_size)]
    max_message_size: usize,
    /// Most frames queued for one connection; a connection that falls further behind is closed
    /// with 1013 and resyncs when it reconnects.
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_FRAMES", default_value_t = Config::default().outbound_queue_frames)]
    outbound_queue_frames: usize,
    /// Most bytes queued for one connection (same policy as --outbound-queue-frames).
    #[arg(long, env = "CONCORD_OUTBOUND_QUEUE_BYTES", default_value_t = Config::default().outbound_queue_bytes)]
    outbound_queue_bytes: usize,
    /// WebSocket ping interval; peers silent for three intervals are dropped.
    #[arg(long, env = "CONCORD_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// Awareness states (presence, cursors) not renewed for this long are removed.
    #[arg(long, env = "CONCORD_AWARENESS_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    awareness_timeout: Duration,
    /// How often rooms are checked for expired awareness states.
    #[arg(long, env = "CONCORD_AWARENESS_SWEEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    awareness_sweep_interval: Duration,
    /// How long a document stays in memory after its last connection leaves.
    #[arg(long, env = "CONCORD_ROOM_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    room_idle_timeout: Duration,
    /// Most document updates waiting to be stored; producers wait when it is full.
    #[arg(long, env = "CONCORD_PERSIST_QUEUE", default_value_t = Config::default().persist_queue)]
    persist_queue: usize,
    /// Most updates written to the store in one batch.
    #[arg(long, env = "CONCORD_PERSIST_BATCH", default_value_t = Config::default().persist_batch)]
    persist_batch: usize,
    /// How long shutdown waits for connections to close.
    #[arg(long, env = "CONCORD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Directory of the document store (a sled database), created if missing.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Keep documents in memory only (lost on restart) instead of in --data-dir.
    #[arg(long, env = "CONCORD_IN_MEMORY", conflicts_with_all = ["data_dir", "redis_urls"])]
    in_memory: bool,
    #[command(flatten)]
    redis: RedisArgs,
    /// Acknowledge an update only once this many Redis replicas have it (Redis WAIT); 0: once
    /// the primary has it.
    #[arg(
        long,
        env = "CONCORD_REDIS_WAIT_REPLICAS",
        default_value_t = 0,
        requires = "redis_urls"
    )]
    redis_wait_replicas: u64,
    /// A second Redis (standalone, redis://HOST:PORT) for the messages between nodes (fast-path
    /// updates, presence): they skip the store's Redis, whose AOF fsync would delay them. Not
    /// stored there; it needs no persistence. Not with --redis-cluster.
    #[arg(long, env = "CONCORD_REDIS_PUBSUB_URL", requires = "redis_urls")]
    redis_pubsub_url: Option<String>,
    /// A reverse proxy or load balancer (an address or CIDR, e.g. 10.0.0.0/8) whose
    /// Forwarded/X-Forwarded-For header names the client; repeatable. Per-IP limits then apply
    /// to the client's address, not the proxy's.
    #[arg(long = "trusted-proxy", env = "CONCORD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// A browser origin (e.g. https://app.example.com, or *) allowed to call the HTTP API from
    /// another origin (CORS preflights answered); repeatable.
    #[arg(long = "cors-origin", env = "CONCORD_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    cors_origins: Vec<String>,
    /// Serve the files of this directory at / for plain GET requests (default: web-demo/dist
    /// when it exists under the working directory, i.e. the built web demo).
    #[arg(long, env = "CONCORD_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// Serve no static files, not even the web demo.
    #[arg(long, env = "CONCORD_NO_STATIC", conflicts_with = "static_dir")]
    no_static: bool,
    /// How often the store fsyncs its journal in the background: what a power loss may lose.
    /// A killed process loses nothing acknowledged.
    #[arg(long, env = "CONCORD_FSYNC_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    fsync_interval: Duration,
    /// Compact a document once its log holds this many updates after its snapshot.
    #[arg(long, env = "CONCORD_COMPACT_AFTER_UPDATES", default_value_t = Config::default().compact_after_updates)]
    compact_after_updates: u64,
    /// Compact a document once its log holds this many bytes after its snapshot.
    #[arg(long, env = "CONCORD_COMPACT_AFTER_BYTES", default_value_t = Config::default().compact_after_bytes)]
    compact_after_bytes: u64,
    /// Keep no versions automatically (named versions and restore still work).
    #[arg(long, env = "CONCORD_NO_AUTOMATIC_VERSIONS")]
    no_automatic_versions: bool,
    /// Keep an automatic version of a document at most this often, and at least this often
    /// while it is edited (also at compactions).
    #[arg(long, env = "CONCORD_VERSION_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    version_interval: Duration,
    /// Keep every automatic version younger than this.
    #[arg(long, env = "CONCORD_KEEP_ALL_VERSIONS_FOR", default_value = "1h", value_parser = humantime::parse_duration)]
    keep_all_versions_for: Duration,
    /// Then keep one automatic version per hour until they are this old.
    #[arg(long, env = "CONCORD_KEEP_HOURLY_VERSIONS_FOR", default_value = "1day", value_parser = humantime::parse_duration)]
    keep_hourly_versions_for: Duration,
    /// Then keep one automatic version per day until they are this old; older automatic
    /// versions are removed (named versions are kept until deleted).
    #[arg(long, env = "CONCORD_KEEP_DAILY_VERSIONS_FOR", default_value = "30days", value_parser = humantime::parse_duration)]
    keep_daily_versions_for: Duration,
    /// POST signed JSON events (document.updated, document.deleted, document.restored) to this
    /// http:// or https:// URL; repeatable (each receiver gets every event). Needs
    /// --webhook-secret-file. With --redis-url, give every node the same URLs and secret: one
    /// node at a time (the holder of a lease in Redis) announces and delivers.
    #[arg(
        long = "webhook-url",
        env = "CONCORD_WEBHOOK_URLS",
        value_delimiter = ',',
        requires = "webhook_secret_file"
    )]
    webhook_urls: Vec<String>,
    /// Sign webhook requests with the secret in this file (its content, whitespace around it
    /// trimmed): the Concord-Signature header.
    #[arg(long, env = "CONCORD_WEBHOOK_SECRET_FILE", requires = "webhook_urls")]
    webhook_secret_file: Option<PathBuf>,
    /// Retry a failed webhook delivery (exponential backoff with jitter, at most 5 minutes
    /// apart) until this long after its event was made; then drop it (logged and counted).
    #[arg(long, env = "CONCORD_WEBHOOK_GIVE_UP_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
    webhook_give_up_after: Duration,
    /// Require HS256 JWTs signed with the secret in this file (its content, whitespace around
    /// it trimmed). Without an auth flag the server is open to anyone who can reach it.
    #[arg(
        long,
        env = "CONCORD_AUTH_SECRET_FILE",
        conflicts_with = "auth_public_key"
    )]
    auth_secret_file: Option<PathBuf>,
    /// Require EdDSA (Ed25519) or ES256 (P-256) JWTs verified with this public key (PEM).
    #[arg(long, env = "CONCORD_AUTH_PUBLIC_KEY")]
    auth_public_key: Option<PathBuf>,
    /// An origin allowed to open documents (e.g. https://app.example.com); repeatable. When
    /// set, WebSocket upgrades and API requests from other origins get 403. Default: any origin.
    #[arg(
        long = "allowed-origin",
        env = "CONCORD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Most connections at once (WebSocket, SSE, polls, API requests); more get HTTP 503.
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    max_connections: usize,
    /// Most connections at once from one IP address; more get HTTP 429.
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS_PER_IP", default_value_t = Config::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// New connections per second from one IP address (HTTP 429 beyond).
    #[arg(long, env = "CONCORD_CONNECTION_ATTEMPTS_PER_IP", default_value_t = Config::default().connection_attempts_per_ip)]
    connection_attempts_per_ip: u32,
    /// Connections one address may open at once above that rate.
    #[arg(long, env = "CONCORD_CONNECTION_ATTEMPT_BURST", default_value_t = Config::default().connection_attempt_burst)]
    connection_attempt_burst: u32,
    /// Most TCP connections open at once, counted from accept (a socket past it is closed at
    /// once). Default: the descriptor limit (raised to its hard value at start) less an eighth.
    #[arg(long, env = "CONCORD_MAX_SOCKETS")]
    max_sockets: Option<usize>,
    /// Most TCP connections open at once from one peer address, counted from accept; 0: no cap.
    /// Behind a reverse proxy every client has the proxy's address: set it to --max-sockets.
    #[arg(long, env = "CONCORD_MAX_SOCKETS_PER_ADDRESS", default_value_t = Config::default().max_sockets_per_address)]
    max_sockets_per_address: usize,
    /// How long a client may take to send a request's line and headers; then the socket is
    /// closed.
    #[arg(long, env = "CONCORD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long an HTTP connection may stay open idle between requests; then it is closed.
    #[arg(long, env = "CONCORD_KEEP_ALIVE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    keep_alive_timeout: Duration,
    /// Messages per second one connection may send, sustained (close 4429 beyond).
    #[arg(long, env = "CONCORD_RATE_MESSAGES", default_value_t = Config::default().rate_messages_per_second)]
    rate_messages: u32,
    /// Messages one connection may send at once above its sustained rate.
    #[arg(long, env = "CONCORD_RATE_MESSAGE_BURST", default_value_t = Config::default().rate_message_burst)]
    rate_message_burst: u32,
    /// Bytes per second one connection may send, sustained (close 4429 beyond).
    #[arg(long, env = "CONCORD_RATE_BYTES", default_value_t = Config::default().rate_bytes_per_second)]
    rate_bytes: u32,
    /// Bytes one connection may send at once above its sustained rate (at least
    /// --max-message-size).
    #[arg(long, env = "CONCORD_RATE_BYTE_BURST", default_value_t = Config::default().rate_byte_burst)]
    rate_byte_burst: u32,
    /// Awareness messages per second one connection may send, sustained (close 4429 beyond).
    #[arg(long, env = "CONCORD_RATE_AWARENESS", default_value_t = Config::default().rate_awareness_per_second)]
    rate_awareness: u32,
    /// Awareness messages one connection may send at once above its sustained rate.
    #[arg(long, env = "CONCORD_RATE_AWARENESS_BURST", default_value_t = Config::default().rate_awareness_burst)]
    rate_awareness_burst: u32,
    /// Largest a document may grow to, in stored bytes; an update past it closes its sender
    /// with 4413. 0: no limit.
    #[arg(long, env = "CONCORD_MAX_DOCUMENT_SIZE", default_value_t = Config::default().max_document_bytes.unwrap_or(0))]
    max_document_size: u64,
    /// Most documents in memory at once; the least recently used idle one is unloaded first.
    #[arg(long, env = "CONCORD_MAX_ROOMS", default_value_t = Config::default().max_rooms)]
    max_rooms: usize,
    /// Largest awareness state of one client in bytes; a larger one closes its sender with 1009.
    #[arg(long, env = "CONCORD_MAX_AWARENESS_STATE", default_value_t = Config::default().max_awareness_state_bytes)]
    max_awareness_state: usize,
    /// Whether the awareness (presence, cursors) of read-only connections is relayed.
    #[arg(long, env = "CONCORD_READ_ONLY_AWARENESS", default_value_t = true, action = clap::ArgAction::Set)]
    read_only_awareness: bool,
    /// Most documents one Hocuspocus connection (at the root URL) may have open at once;
    /// another is answered with PermissionDenied.
    #[arg(long, env = "CONCORD_MAX_DOCUMENTS_PER_CONNECTION", default_value_t = Config::default().max_documents_per_connection)]
    max_documents_per_connection: usize,
    /// Pass each Hocuspocus client's stateless message on to the other Hocuspocus clients of
    /// its document (as a Hocuspocus server whose onStateless hook broadcasts does).
    #[arg(long, env = "CONCORD_RELAY_STATELESS")]
    relay_stateless: bool,
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<Config> {
        let authorizer: Option<Arc<dyn concord_server::auth::Authorizer>> =
            match (&self.auth_secret_file, &self.auth_public_key) {
                (Some(path), _) => {
                    let secret =
                        concord_server::auth::read_secret_file(path).with_context(|| {
                            format!("cannot read --auth-secret-file {}", path.display())
                        })?;
                    let authorizer = JwtAuthorizer::hs256(&secret)
                        .with_context(|| format!("--auth-secret-file {}", path.display()))?;
                    tracing::info!(file = %path.display(), "tokens required: HS256");
                    Some(Arc::new(authorizer))
                }
                (None, Some(path)) => {
                    let pem = std::fs::read(path).with_context(|| {
                        format!("cannot read --auth-public-key {}", path.display())
                    })?;
                    let authorizer = JwtAuthorizer::from_public_key_pem(&pem)
                        .with_context(|| format!("--auth-public-key {}", path.display()))?;
                    tracing::info!(file = %path.display(), "tokens required: EdDSA/ES256");
                    Some(Arc::new(authorizer))
                }
                (None, None) => None,
            };
        let webhooks = match &self.webhook_secret_file {
            Some(path) if !self.webhook_urls.is_empty() => {
                let secret = concord_server::auth::read_secret_file(path).with_context(|| {
                    format!("cannot read --webhook-secret-file {}", path.display())
                })?;
                let mut webhooks = concord_server::WebhookConfig::new(&self.webhook_urls, secret)?;
                webhooks.retry.give_up_after = self.webhook_give_up_after;
                tracing::info!(receivers = ?webhooks.urls(), "webhooks on");
                Some(webhooks)
            }
            _ => None,
        };
        Ok(Config {
            path_prefix: self.path_prefix,
            api_prefix: self.api_prefix,
            max_message_size: self.max_message_size,
            outbound_queue_frames: self.outbound_queue_frames,
            outbound_queue_bytes: self.outbound_queue_bytes,
            keepalive_interval: self.keepalive_interval,
            awareness_timeout: self.awareness_timeout,
            awareness_sweep_interval: self.awareness_sweep_interval,
            room_idle_timeout: self.room_idle_timeout,
            persist_queue: self.persist_queue,
            persist_batch: self.persist_batch,
            shutdown_grace: self.shutdown_grace,
            data_dir: (!self.in_memory).then_some(self.data_dir),
            fsync_interval: self.fsync_interval,
            compact_after_updates: self.compact_after_updates,
            compact_after_bytes: self.compact_after_bytes,
            authorizer,
            allowed_origins: self.allowed_origins,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            connection_attempts_per_ip: self.connection_attempts_per_ip,
            connection_attempt_burst: self.connection_attempt_burst,
            max_sockets: self.max_sockets,
            max_sockets_per_address: self.max_sockets_per_address,
            header_read_timeout: self.header_read_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            rate_messages_per_second: self.rate_messages,
            rate_message_burst: self.rate_message_burst,
            rate_bytes_per_second: self.rate_bytes,
            rate_byte_burst: self.rate_byte_burst,
            rate_awareness_per_second: self.rate_awareness,
            rate_awareness_burst: self.rate_awareness_burst,
            max_document_bytes: (self.max_document_size > 0).then_some(self.max_document_size),
            max_rooms: self.max_rooms,
            max_awareness_state_bytes: self.max_awareness_state,
            read_only_awareness: self.read_only_awareness,
            max_documents_per_connection: self.max_documents_per_connection,
            relay_stateless: self.relay_stateless,
            static_dir: static_dir(self.static_dir, self.no_static)?,
            trusted_proxies: self.trusted_proxies,
            cors_origins: self.cors_origins,
            history: concord_server::HistoryConfig {
                automatic: !self.no_automatic_versions,
                interval: self.version_interval,
                retention: concord_server::concord_core::history::Retention {
                    keep_all: self.keep_all_versions_for,
                    hourly: self.keep_hourly_versions_for,
                    daily: self.keep_daily_versions_for,
                },
            },
            webhooks,
            ..Config::default()
        })
    }
}

/// Where the web demo is built to, relative to the working directory.
const WEB_DEMO_DIST: &str = "web-demo/dist";

/// `--static-dir`, checked; or the built web demo when it is there; or nothing.
fn static_dir(flag: Option<PathBuf>, none: bool) -> anyhow::Result<Option<PathBuf>> {
    if none {
        return Ok(None);
    }
    if let Some(dir) = flag {
        if !dir.is_dir() {
            anyhow::bail!("--static-dir {} is not a directory", dir.display());
        }
        tracing::info!(dir = %dir.display(), "serving static files at /");
        return Ok(Some(dir));
    }
    let demo = PathBuf::from(WEB_DEMO_DIST);
    if demo.join("index.html").is_file() {
        tracing::info!(dir = %demo.display(), "serving the web demo at /");
        Ok(Some(demo))
    } else {
        tracing::info!(
            "no web demo at {WEB_DEMO_DIST} (build it with `npm ci --prefix web-demo && npm run \
             build --prefix web-demo`): serving documents only"
        );
        Ok(None)
    }
}

/// `concord-server token`: prints a signed token.
fn token(args: TokenArgs) -> anyhow::Result<()> {
    let signer = match (&args.secret_file, &args.private_key) {
        (Some(path), _) => {
            let secret = concord_server::auth::read_secret_file(path)
                .with_context(|| format!("cannot read --secret-file {}", path.display()))?;
            TokenSigner::hs256(&secret)?
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --private-key {}", path.display()))?;
            TokenSigner::from_private_key_pem(&pem)?
        }
        (None, None) => anyhow::bail!("give --secret-file or --private-key"),
    };
    let claims = Claims {
        exp: concord_server::auth::unix_now().saturating_add(args.ttl.as_secs()),
        sub: args.sub,
        docs: args.docs.into_iter().collect(),
    };
    println!("{}", signer.sign(&claims)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Some(Command::Docs {
            data_dir,
            redis,
            action,
        }) => docs(&data_dir, redis.options(), action),
        Some(Command::Token(args)) => token(args),
        None => serve(cli.serve),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn serve(cli: ServeArgs) -> anyhow::Result<()> {
    let host = cli.host.clone();
    let port = cli.port;
    let redis = cli
        .redis
        .options()
        .map(|options| concord_redis::RedisOptions {
            wait_replicas: cli.redis_wait_replicas,
            pubsub_url: cli.redis_pubsub_url.clone(),
            ..options
        });
    let mut config = cli.config()?;
    let shutdown = CancellationToken::new();
    if let Some(options) = redis {
        let shown = options.urls.join(",");
        let cluster = options.cluster;
        let wait_replicas = options.wait_replicas;
        let pubsub = options.pubsub_url.clone();
        let redis = concord_redis::connect(options, shutdown.clone())
            .await
            .context("--redis-url")?;
        let persistence = redis.persistence().await;
        tracing::info!(
            redis = %shown,
            cluster,
            node = redis.node_id(),
            appendonly = %persistence.appendonly,
            appendfsync = %persistence.appendfsync,
            replicas = persistence.replicas,
            pubsub = pubsub.as_deref().unwrap_or("the same Redis"),
            "documents are stored in Redis and shared with every node on it; {}{}",
            persistence.meaning(),
            if wait_replicas > 0 {
                " (and every acknowledged update is on --redis-wait-replicas replicas too)"
            } else if persistence.replicas > 0 {
                " (replicas are updated asynchronously: a failover may lose the last acknowledged updates; --redis-wait-replicas makes acknowledgements wait for them)"
            } else {
                ""
            }
        );
        config.store = Some(redis.store.clone());
        config.replication = Some(redis.link.clone());
        config.metrics.push(redis.metrics());
    }
    let address: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve --host {host}"))?
        .next()
        .with_context(|| format!("--host {host} resolves to no address"))?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    // Scripts and tests read this line to learn the port when --port 0 was given.
    println!("listening on {}", listener.local_addr()?);

    // Registered before serving, so no signal finds the default handler (which would kill the
    // process without a graceful shutdown).
    let mut signals = Signals::new().context("cannot listen for signals")?;
    let watched = shutdown.clone();
    tokio::spawn(async move {
        on_signals(&mut signals, &watched, || std::process::exit(1)).await;
    });
    concord_server::run(listener, config, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Runs a `docs` command against the store in `data_dir`, or in Redis.
#[tokio::main(flavor = "current_thread")]
async fn docs(
    data_dir: &Path,
    redis_options: Option<concord_redis::RedisOptions>,
    action: DocsAction,
) -> anyhow::Result<()> {
    use concord_server::admin;
    use concord_server::concord_core::{DocName, Store};
    use std::io::{Read, Write};

    let stop = CancellationToken::new();
    let mut redis = None;
    let store: Arc<dyn Store> = match redis_options {
        Some(options) => {
            let connected = concord_redis::connect(options, stop.clone()).await?;
            let store = connected.store.clone();
            redis = Some(connected);
            store
        }
        None => {
            if !data_dir.exists() {
                anyhow::bail!("no data directory at {}", data_dir.display());
            }
            Arc::new(concord_sled::SledStore::open(data_dir).with_context(|| {
                format!(
                    "cannot open the store in {} (is the server still running?)",
                    data_dir.display()
                )
            })?)
        }
    };
    let store = store.as_ref();
    let _stop_link = stop.drop_guard();
    let name = |s: &str| DocName::new(s).with_context(|| format!("bad document name {s:?}"));
    match action {
        DocsAction::List => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<40} {:>12} {:>10} {:>12} {:>9} {:>14}",
                "name", "snapshot", "log", "log bytes", "versions", "history bytes"
            )?;
            for info in admin::list(store).await? {
                writeln!(
                    out,
                    "{:<40} {:>12} {:>10} {:>12} {:>9} {:>14}",
                    info.name,
                    info.snapshot_bytes,
                    info.log_entries,
                    info.log_bytes,
                    info.versions,
                    info.history_bytes
                )?;
            }
        }
        DocsAction::Export { name: doc } => {
            let update = admin::export(store, &name(&doc)?).await?;
            std::io::stdout().lock().write_all(&update)?;
        }
        DocsAction::Import { name: doc } => {
            let mut update = Vec::new();
            std::io::stdin().lock().read_to_end(&mut update)?;
            admin::import(store, &name(&doc)?, &update).await?;
            eprintln!("imported {} bytes into {doc:?}", update.len());
        }
        DocsAction::Compact { name: doc } => {
            let targets = match doc {
                Some(doc) => vec![name(&doc)?],
                None => admin::list(store)
                    .await?
                    .into_iter()
                    .map(|info| info.name)
                    .collect(),
            };
            for doc in targets {
                let bytes = admin::compact(store, &doc).await?;
                eprintln!("compacted {doc:?}: snapshot of {bytes} bytes");
            }
        }
        DocsAction::Delete { name: doc } => {
            let doc = name(&doc)?;
            admin::delete(store, &doc).await?;
            if let Some(redis) = &redis {
                // Nodes that have it loaded close their rooms of it.
                redis.link.announce_deleted(&doc).await?;
            }
            eprintln!("deleted {:?}", doc.as_str());
        }
    }
    Ok(())
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit at once.
/// The signal policy: the first signal starts a graceful shutdown, the second calls `exit`
/// (the process then ends at once with status 1, whatever shutdown was still waiting for).
async fn on_signals(
    signals: &mut impl SignalSource,
    shutdown: &CancellationToken,
    exit: impl FnOnce(),
) {
    signals.next().await;
    tracing::info!("shutting down: closing connections and storing pending updates");
    shutdown.cancel();
    signals.next().await;
    tracing::warn!("second signal: exiting without waiting");
    exit();
}

/// Where [`on_signals`] gets its signals from.
trait SignalSource {
    /// Waits for the next signal.
    async fn next(&mut self);
}

/// SIGINT (Ctrl-C) and SIGTERM. Both listeners are registered once, up front, so a second
/// signal that arrives while the first is being handled is not missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }
}

impl SignalSource for Signals {
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SignalSource for tokio::sync::mpsc::Receiver<()> {
        async fn next(&mut self) {
            let _ = self.recv().await;
        }
    }

    #[tokio::test]
    async fn the_first_signal_shuts_down_gracefully_and_the_second_exits() {
        let (send, mut signals) = tokio::sync::mpsc::channel(2);
        let shutdown = CancellationToken::new();
        let exited = std::sync::atomic::AtomicBool::new(false);
        let watcher = on_signals(&mut signals, &shutdown, || {
            exited.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        tokio::pin!(watcher);
        // Nothing happens before a signal.
        tokio::select! {
            biased;
            _ = &mut watcher => panic!("the watcher ended without a signal"),
            _ = tokio::task::yield_now() => {}
        }
        assert!(!shutdown.is_cancelled());
        send.send(()).await.unwrap();
        tokio::select! {
            _ = &mut watcher => panic!("one signal must not exit"),
            _ = shutdown.cancelled() => {}
        }
        assert!(!exited.load(std::sync::atomic::Ordering::SeqCst));
        send.send(()).await.unwrap();
        watcher.await;
        assert!(exited.load(std::sync::atomic::Ordering::SeqCst));
    }
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent_and_defaults_match_the_library() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["concord-server"]).unwrap().serve;
        assert_eq!((cli.host.as_str(), cli.port), ("127.0.0.1", 1234));
        let config = cli.config().unwrap();
        assert_eq!(config.data_dir.as_deref(), Some(Path::new("data")));
        // Every other field (the Debug form lists them all) is the library's default.
        // The default static directory depends on the working directory (see below).
        let config = Config {
            data_dir: None,
            static_dir: None,
            ..config
        };
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn static_files_are_checked_and_can_be_turned_off() {
        let parse = |args: &[&str]| {
            let mut all = vec!["concord-server"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().serve.config()
        };
        let dir = tempfile::tempdir().unwrap();
        let shown = dir.path().to_str().unwrap();
        let config = parse(&["--static-dir", shown]).unwrap();
        assert_eq!(config.static_dir.as_deref(), Some(dir.path()));
        let missing = dir.path().join("missing");
        let error = parse(&["--static-dir", missing.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("not a directory"), "{error}");
        assert_eq!(parse(&["--no-static"]).unwrap().static_dir, None);
        assert!(
            Cli::try_parse_from(["concord-server", "--no-static", "--static-dir", shown]).is_err()
        );
    }

    #[test]
    fn durations_and_sizes_parse() {
        let cli = Cli::try_parse_from([
            "concord-server",
            "--port",
            "0",
            "--keepalive-interval",
            "250ms",
            "--max-message-size",
            "65536",
            "--path-prefix",
            "/collab",
            "--in-memory",
            "--version-interval",
            "2m",
            "--keep-daily-versions-for",
            "7days",
            "--no-automatic-versions",
        ])
        .unwrap()
        .serve;
        let config = cli.config().unwrap();
        assert_eq!(config.history.interval, Duration::from_secs(120));
        assert_eq!(
            config.history.retention.daily,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            config.history.retention.keep_all,
            Duration::from_secs(3_600)
        );
        assert!(!config.history.automatic);
        assert_eq!(config.data_dir, None);
        assert_eq!(config.keepalive_interval, Duration::from_millis(250));
        assert_eq!(config.max_message_size, 65536);
        assert_eq!(config.path_prefix, "/collab");
        assert!(Cli::try_parse_from(["concord-server", "--port", "70000"]).is_err());
    }

    #[test]
    fn auth_and_limit_flags_parse() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.key");
        std::fs::write(&secret, "  s3cret\n").unwrap();
        let cli = Cli::try_parse_from([
            "concord-server",
            "--auth-secret-file",
            secret.to_str().unwrap(),
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "https://b.example",
            "--max-document-size",
            "0",
            "--read-only-awareness",
            "false",
        ])
        .unwrap()
        .serve;
        let config = cli.config().unwrap();
        assert!(config.authorizer.is_some());
        assert_eq!(
            config.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
        assert_eq!(config.max_document_bytes, None);
        assert!(!config.read_only_awareness);
        // Both key kinds at once, and an unreadable or empty secret, are refused.
        assert!(
            Cli::try_parse_from([
                "concord-server",
                "--auth-secret-file",
                "a",
                "--auth-public-key",
                "b"
            ])
            .is_err()
        );
        std::fs::write(&secret, "\n").unwrap();
        let cli = Cli::try_parse_from([
            "concord-server",
            "--auth-secret-file",
            secret.to_str().unwrap(),
        ])
        .unwrap()
        .serve;
        assert!(cli.config().is_err());
    }

    #[test]
    fn token_grants_parse() {
        assert_eq!(
            parse_grant("team-a/*=write").unwrap(),
            ("team-a/*".to_owned(), Permission::Write)
        );
        assert_eq!(
            parse_grant("a=b=read").unwrap(),
            ("a=b".to_owned(), Permission::Read)
        );
        assert!(parse_grant("x").is_err());
        assert!(parse_grant("x=admin").is_err());
        assert!(parse_grant("=read").is_err());
        assert!(Cli::try_parse_from(["concord-server", "token", "--doc", "a=read"]).is_err());
    }

    #[test]
    fn docs_subcommands_parse() {
        let cli = Cli::try_parse_from(["concord-server", "docs", "--data-dir", "d", "export", "x"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Docs { action: DocsAction::Export { ref name }, .. }) if name == "x"
        ));
        let cli = Cli::try_parse_from(["concord-server", "docs", "compact"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Docs {
                action: DocsAction::Compact { name: None },
                ..
            })
        ));
    }
}
