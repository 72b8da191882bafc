//! Concord on Redis: several Concord nodes serve the same documents through one Redis, or a
//! Redis Cluster ([`RedisOptions::cluster`]).
//!
//! [`connect`] gives a [`Redis`]: a [`RedisStore`] (the [`concord_core::Store`] every node shares)
//! and a [`RedisLink`] (the `concord_server::Replication` that carries other nodes' changes and
//! presence into this node's rooms). Put both into the server's `Config` (the binary does it
//! for `--redis-url`) and any client may connect to any node.
//!
//! It talks to Redis with redis-rs (`redis` with tokio) rather than fred: the most used Redis
//! crate, released regularly, with everything this design needs (Streams, scripts with an
//! `EVALSHA` fallback, a multiplexed connection that reconnects by itself, cluster-async and
//! sharded pub/sub).
//!
//! # Layout
//!
//! Each document has a stream (its update log, one entry per group commit, entry ids `SEQ-0`),
//! a snapshot, a metadata hash, a compaction lease and its kept versions (a hash of their
//! metadata and a hash of their snapshots, by version id), all under one hash tag so that Redis
//! Cluster keeps them in one slot (see `keys.rs` for every name). An entry holds the updates,
//! the id of the node that wrote it, and their count and size. A saved version is acknowledged
//! like an append: once Redis answered (and, with [`RedisOptions::wait_replicas`], once the
//! replicas have it). The store also keeps the webhook outbox of the `Store` seam (entries and
//! per-document marks, written by one script) under a `{webhooks}` hash tag of its own, with
//! what lets the nodes share webhooks: a lease (a holder id that expires) so that one node at
//! a time announces, the set of documents noted edited by any node, and the set of outbox keys
//! written since the lease holder last asked; one script takes and clears both sets (the
//! news: the edited documents with their marks, the written entries still pending).
//!
//! # What an acknowledgement means
//!
//! A node acknowledges an update (save message 100, HTTP 200) once Redis answered the `XADD`
//! that holds it. Redis answers after its own persistence step: with `appendonly yes` and
//! `appendfsync always` the entry is in the AOF on disk, so a Redis restart loses nothing
//! acknowledged; with `everysec` (Redis' default) up to a second of acknowledged updates can
//! be lost to a power loss or a Redis crash; without AOF only RDB snapshots keep data. Replicas
//! are updated asynchronously: a failover can lose what the replica had not received, unless
//! [`RedisOptions::wait_replicas`] makes every acknowledgement wait for that many replicas
//! (`WAIT`). [`Redis::persistence`] reads the settings so the binary can log what applies.
//!
//! # Fan-out between nodes
//!
//! The store's append is the publication: a node follows the streams of the documents it has
//! loaded with blocking `XREAD`s on one dedicated connection, skips its own entries, and hands
//! the others' to the room's inlet at their seq (so change-feed positions are the same on every
//! node). Ahead of that, each update is also published on the document's channel the moment its
//! room applied it, and other nodes relay it to their clients at once, without waiting for
//! Redis to store it (an fsync with `appendfsync always`) and without applying it to their
//! rooms: a room only takes what the store holds (the stream entry), so a client that sends an
//! unacknowledged update again after its node died finds no room that already has it, and it
//! gets stored. Pub/sub is at most once; the stream delivers whatever it lost. It reads from the seq its load reached, so nothing falls between load and follow; an
//! entry that compaction trimmed before it was read shows as a gap in the seqs, and the node
//! then brings the room up to date from the store's snapshot.
//!
//! The channels may live on a second Redis ([`RedisOptions::pubsub_url`]): Redis writes the
//! replies and channel messages of one event-loop iteration only after that iteration's AOF
//! fsync, so with `appendfsync always` a channel message that shares an iteration with an append
//! waits for the disk. On a Redis of their own they do not (cross-node p99 1.4-1.6 ms down to
//! 0.7-0.8 ms in `benches`' `nodes`).
//!
//! On a Redis Cluster one `XREAD` cannot span slots. There the append script also publishes a
//! doorbell on the document's sharded channel (`SPUBLISH`, atomic with the append), and a node
//! reads (`XRANGE`, on the document's shard) only the streams whose doorbell rang; because
//! pub/sub is at most once it also reads every followed stream each
//! [`RedisOptions::catch_up_interval`]. Awareness goes over sharded pub/sub.
//!
//! # Presence between nodes
//!
//! Awareness goes over pub/sub, one channel per document, never into the log. A node that loads
//! a document asks on its channel who is there, and every other node that has it loaded answers
//! with the states of its own clients, so presence shows at once rather than at the clients'
//! next renewal. Each node keeps a heartbeat key that expires ([`RedisOptions::node_ttl`]); the others remember which awareness
//! clients came from which node, and when a node's key is gone they remove its clients'
//! presence from their rooms (within the TTL plus one check interval).

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

mod conn;
mod entry;
mod keys;
mod link;
mod metrics;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use link::RedisLink;
pub use metrics::RedisCollector;
pub use store::RedisStore;

use conn::Conn;
use keys::Keys;
use store::Health;

/// How to reach Redis and name things in it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://HOST:PORT[/DB]` (or `rediss://`, `redis+unix://`): the Redis, or with
    /// [`RedisOptions::cluster`] one or more seed nodes of the Redis Cluster.
    pub urls: Vec<String>,
    /// The URLs are seeds of a Redis Cluster: documents spread over its shards by their hash
    /// tags, presence goes over sharded pub/sub.
    pub cluster: bool,
    /// On a Cluster, how often a node reads every followed document's stream even when no
    /// doorbell rang (doorbells are pub/sub, at most once): the most a lost one delays an entry.
    pub catch_up_interval: Duration,
    /// Prefix of every key and channel: nodes that share documents use the same prefix.
    pub prefix: String,
    /// How often a node renews its heartbeat key and checks the others'.
    pub heartbeat_interval: Duration,
    /// How long a node's heartbeat key lives: a node silent for this long is taken for dead and
    /// its clients' presence is removed.
    pub node_ttl: Duration,
    /// How long one Redis command may take before it counts as failed.
    pub response_timeout: Duration,
    /// Replicas that must have an update before it is acknowledged (Redis `WAIT`): 0 (the
    /// default) acknowledges once the primary has it. With N, an update is acknowledged only
    /// when N replicas confirmed it, however long that takes (meanwhile `/readyz` says 503 and
    /// updates wait unacknowledged).
    pub wait_replicas: u64,
    /// Awareness and fast-path update messages waiting to be published; past it new ones are
    /// dropped (and counted): presence is soft state that each client renews, and an update
    /// still reaches the other nodes through its stream entry.
    pub awareness_queue: usize,
    /// A second Redis (standalone) for the channels between nodes: fast-path updates,
    /// presence, "who is there" queries and deletions. Channel messages are never stored, so it
    /// may run without persistence. `None` (the default): the channels are on the store's
    /// Redis. Worth it when that Redis fsyncs every write (`appendfsync always`): Redis writes
    /// the replies and channel messages of an event-loop iteration only after that iteration's
    /// fsync, so on the store's Redis every cross-node delivery waits for the disk. Not with a
    /// Cluster (its doorbells are published by the append itself, on the store's shards).
    pub pubsub_url: Option<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            urls: vec!["redis://127.0.0.1:6379".to_owned()],
            cluster: false,
            catch_up_interval: Duration::from_secs(1),
            prefix: "concord".to_owned(),
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(3),
            response_timeout: Duration::from_secs(5),
            wait_replicas: 0,
            awareness_queue: 4096,
            pubsub_url: None,
        }
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL is not one redis-rs understands.
    #[error("bad redis url {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        #[source]
        source: redis::RedisError,
    },
    /// The options do not fit together.
    #[error("{0}")]
    Options(String),
    /// Redis did not answer.
    #[error("cannot reach redis at {url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// What failed.
        #[source]
        source: redis::RedisError,
    },
}

/// A node's connection to Redis: its store and its link to the other nodes.
#[derive(Debug, Clone)]
pub struct Redis {
    /// The store shared by every node.
    pub store: Arc<RedisStore>,
    /// This node's link to the others.
    pub link: Arc<RedisLink>,
    node: Arc<str>,
    conn: Conn,
    metrics: Arc<metrics::RedisMetrics>,
    health: Arc<Health>,
}

/// What Redis will do with an acknowledged write, as far as this node can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly`: `yes` or `no` (empty when Redis refused `CONFIG GET`, as managed services
    /// may).
    pub appendonly: String,
    /// `appendfsync`: `always`, `everysec` or `no`.
    pub appendfsync: String,
    /// Replicas connected to this Redis.
    pub replicas: u64,
}

impl Persistence {
    /// One sentence on what an acknowledged update survives.
    pub fn meaning(&self) -> &'static str {
        match (self.appendonly.as_str(), self.appendfsync.as_str()) {
            ("yes", "always") => {
                "acknowledged updates are fsynced to Redis' append-only file: a Redis crash or \
                 restart loses none"
            }
            ("yes", "everysec") => {
                "Redis fsyncs its append-only file once a second: a Redis crash or power loss \
                 may lose up to a second of acknowledged updates"
            }
            ("yes", _) => {
                "Redis leaves fsync of its append-only file to the OS: a power loss may lose \
                 acknowledged updates"
            }
            ("no", _) => {
                "Redis has no append-only file: a Redis restart loses acknowledged updates since \
                 its last RDB snapshot"
            }
            _ => "Redis did not say how it persists: what an acknowledgement survives is unknown",
        }
    }
}

impl Redis {
    /// This node's id (random, new at every start), as other nodes see it.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The node's Redis metrics (append and read round trips, follow lag, deliveries, catch-ups,
    /// ghost removals, compaction leases, reachability), for the server's `Config::metrics`.
    pub fn metrics(&self) -> Arc<RedisCollector> {
        Arc::new(RedisCollector {
            metrics: Arc::downgrade(&self.metrics),
            health: Arc::downgrade(&self.health),
        })
    }

    /// Reads Redis' persistence settings (`CONFIG GET appendonly appendfsync`, `INFO
    /// replication`). On a Cluster the settings are those of one node (deploy its nodes
    /// alike) and the replicas are the fewest any primary has.
    pub async fn persistence(&self) -> Persistence {
        let mut conn = self.conn.clone();
        let config: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        // One text from one Redis; a map of node -> text from every primary of a Cluster.
        let info: Value = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap_or(Value::Nil);
        let texts: Vec<String> = match redis::from_redis_value_ref::<String>(&info) {
            Ok(text) => vec![text],
            Err(_) => {
                redis::from_redis_value_ref::<std::collections::HashMap<String, String>>(&info)
                    .map(|by_node| by_node.into_values().collect())
                    .unwrap_or_default()
            }
        };
        let replicas = texts
            .iter()
            .map(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("connected_slaves:"))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        Persistence {
            appendonly: config.get("appendonly").cloned().unwrap_or_default(),
            appendfsync: config.get("appendfsync").cloned().unwrap_or_default(),
            replicas,
        }
    }
}

/// Connects to Redis (or a Redis Cluster) and starts this node's link tasks (they stop when
/// `shutdown` is cancelled). Fails when Redis does not answer at once; once connected, a lost
/// Redis is waited for (see [`RedisStore`]).
pub async fn connect(
    options: RedisOptions,
    shutdown: CancellationToken,
) -> Result<Redis, RedisError> {
    if options.prefix.contains(['{', '}']) {
        return Err(RedisError::Options(format!(
            "the redis prefix {:?} may not contain braces: they would end the documents' hash tags",
            options.prefix
        )));
    }
    let shown = options.urls.join(",");
    let (conn, append_conn, source, channels) = if options.cluster {
        if options.pubsub_url.is_some() {
            return Err(RedisError::Options(
                "a separate pub/sub Redis (--redis-pubsub-url) is not supported with a Redis \
                 Cluster"
                    .into(),
            ));
        }
        if options.wait_replicas > 0 {
            return Err(RedisError::Options(
                "waiting for replicas (--redis-wait-replicas) is not supported on a Redis Cluster"
                    .into(),
            ));
        }
        let client = redis::cluster::ClusterClientBuilder::new(options.urls.clone())
            .connection_timeout(options.response_timeout)
            .response_timeout(options.response_timeout)
            .build()
            .map_err(|source| RedisError::Url {
                url: shown.clone(),
                source,
            })?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|source| RedisError::Connect {
                url: shown.clone(),
                source,
            })?;
        let conn = Conn::Cluster(conn);
        let source = link::Source::Cluster {
            seeds: options.urls.clone(),
            timeout: options.response_timeout,
        };
        (conn.clone(), conn.clone(), source, conn)
    } else {
        let [url] = options.urls.as_slice() else {
            return Err(RedisError::Options(format!(
                "{} redis urls given: one, or several seeds of a Redis Cluster (--redis-cluster)",
                options.urls.len()
            )));
        };
        let client = redis::Client::open(url.as_str()).map_err(|source| RedisError::Url {
            url: url.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.response_timeout))
            .set_max_delay(Duration::from_secs(1));
        let connect = |client: redis::Client, url: String| {
            let config = config.clone();
            async move {
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|source| RedisError::Connect { url, source })
            }
        };
        let conn = connect(client.clone(), url.clone()).await?;
        let append_conn = connect(client.clone(), url.clone()).await?;
        let (channels_client, channels) = match &options.pubsub_url {
            Some(pubsub) => {
                let pubsub_client =
                    redis::Client::open(pubsub.as_str()).map_err(|source| RedisError::Url {
                        url: pubsub.clone(),
                        source,
                    })?;
                let channels = connect(pubsub_client.clone(), pubsub.clone()).await?;
                (pubsub_client, channels)
            }
            None => (client.clone(), conn.clone()),
        };
        let source = link::Source::Single {
            client,
            control: conn.clone(),
            channels: Box::new(channels_client),
        };
        (
            Conn::Single(conn),
            Conn::Single(append_conn),
            source,
            Conn::Single(channels),
        )
    };
    let node: Arc<str> = new_node_id().into();
    let keys = Keys::new(&options.prefix);
    let health = Arc::new(Health::default());
    let metrics = Arc::new(metrics::RedisMetrics::default());
    let store = Arc::new(RedisStore::new(
        (conn.clone(), append_conn),
        options.wait_replicas,
        keys.clone(),
        node.clone(),
        health.clone(),
        metrics.clone(),
    ));
    let link = RedisLink::start(
        source,
        conn.clone(),
        channels,
        store.clone(),
        keys,
        node.clone(),
        health.clone(),
        metrics.clone(),
        &options,
        shutdown,
    );
    Ok(Redis {
        store,
        link,
        node,
        conn,
        metrics,
        health,
    })
}

/// 64 random bits, in hex.
fn new_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
