//! [`RedisLink`]: this node's [`Replication`], and the tasks behind it.
//!
//! - The **follower** delivers other nodes' log entries to the rooms. On one Redis it reads the
//!   streams of every followed document with one blocking `XREAD` on a connection of its own;
//!   when the set of followed documents changes it unblocks its read (`CLIENT UNBLOCK`) and
//!   reads again with the new set. On a Cluster one `XREAD` cannot span slots, so each append
//!   rings the document's doorbell (a sharded pub/sub message from the append script itself)
//!   and the follower reads that document's stream on its shard; because pub/sub is at most
//!   once, it also reads every followed stream each [`crate::RedisOptions::catch_up_interval`].
//!   State: one entry per loaded document (bounded by the server's `max_rooms`).
//! - The **publisher** sends this node's awareness updates, and each document update the moment
//!   its room applied it (the fast path: other nodes relay it without waiting for Redis to
//!   store it), to the documents' channels, from a bounded queue
//!   ([`crate::RedisOptions::awareness_queue`]; overflow: the message is dropped and counted:
//!   presence is renewed by every client, and an update still arrives through the stream).
//! - The **subscriber** listens on the channels of the followed documents (sharded channels,
//!   `SSUBSCRIBE`, on a Cluster), delivers other nodes' awareness and fast-path updates, and
//!   remembers which awareness clients each node has (for ghost removal).
//! - The **heartbeat** renews this node's key and, when another node's key has expired,
//!   removes that node's clients' presence from the rooms here.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use concord_core::replication::{Inlet, InletError, Published, Replication};
use concord_core::{DocName, Room, Seq, Store, SystemClock};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{PushInfo, PushKind};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use crate::RedisOptions;
use crate::conn::Conn;
use crate::keys::Keys;
use crate::metrics::RedisMetrics;
use crate::store::{Health, RedisStore, decode_entry, is_unavailable, now_ms};

/// How long one `XREAD` blocks before it is sent again.
const BLOCK: Duration = Duration::from_secs(5);
/// Most entries one `XREAD` returns per stream.
const READ_COUNT: usize = 256;
/// Kind byte of an awareness message on a channel.
const AWARENESS: u8 = 0;
/// Kind byte of a query: "I just loaded this document; who is there?" Every other node that
/// has it loaded answers with the awareness states of its own clients.
const QUERY: u8 = 1;
/// Kind byte of a document update sent the moment its room applied it: the fast path to the
/// other nodes' clients, relayed to them without entering the room (see [`Inlet::relay`]),
/// ahead of the stream entry, which brings it into the room once Redis has stored it. At most
/// once: what is lost here comes by the stream.
const UPDATE: u8 = 2;
/// Kind byte of "this document was deleted": nodes that have it loaded close their room.
const DELETED: u8 = 3;
/// Kind byte of a doorbell (Cluster only): the node named in it stored the entry whose seq is
/// the payload (decimal); followers read the stream. Sent by the append script itself.
const STORED: u8 = 4;
/// Kind byte of an application message (a Hocuspocus stateless message) for the document's
/// connections on every node.
const STATELESS: u8 = 5;
/// Documents read at once by a Cluster follower.
const CLUSTER_READS: usize = 16;

/// What the link connects with: the standalone follower and subscriber open connections of
/// their own from a client; on a Cluster the subscriber opens its own cluster connection (it
/// needs RESP3 and a push sender) from the seed URLs.
pub(crate) enum Source {
    /// A client for the follower's and subscriber's own connections, and the connection the
    /// follower sends `CLIENT UNBLOCK` on.
    Single {
        client: redis::Client,
        control: ConnectionManager,
        /// Where the subscriber listens: the store's Redis, or the pub/sub one
        /// ([`crate::RedisOptions::pubsub_url`]).
        channels: Box<redis::Client>,
    },
    Cluster {
        seeds: Vec<String>,
        timeout: Duration,
    },
}

/// The start of a doorbell message of `node`: the append script adds the seq.
pub(crate) fn doorbell_prefix(node: &str) -> Vec<u8> {
    channel_message(STORED, node, &[])
}

/// This node's link to the other nodes that share a Redis. See the module documentation.
pub struct RedisLink {
    shared: Arc<Shared>,
    /// Where channel messages go: the store's Redis, or the pub/sub one.
    conn: Conn,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

/// A followed document.
struct Followed {
    inlet: Inlet,
    /// The last seq this node has (loaded, delivered, or written itself).
    seq: Seq,
}

struct Shared {
    keys: Keys,
    node: Arc<str>,
    followed: Mutex<HashMap<DocName, Followed>>,
    /// The follower and the subscriber wait on these for changes of `followed`.
    follow_changed: Notify,
    subscribe_changed: Notify,
    /// Cluster: documents whose streams have entries to read (rung doorbells, new follows).
    dirty: Mutex<HashSet<DocName>>,
    /// `PUBLISH`, or `SPUBLISH` on a Cluster.
    publish_command: &'static str,
    /// Channel messages to publish: document, kind, payload.
    awareness: mpsc::Sender<(DocName, u8, Bytes)>,
    /// Awareness clients of other nodes, per document: node -> client -> clock.
    remote_clients: Mutex<RemoteClients>,
    metrics: Arc<RedisMetrics>,
}

/// Awareness clients of other nodes, per document: node id -> client -> clock.
type RemoteClients = HashMap<DocName, HashMap<Vec<u8>, HashMap<yrs::block::ClientID, u32>>>;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DocName, Followed>> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, RemoteClients> {
        self.remote_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Cluster: notes that `doc`'s stream has entries to read, and wakes the follower.
    fn mark_dirty(&self, doc: &DocName) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(doc.clone());
        self.follow_changed.notify_one();
    }
}

impl RedisLink {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        source: Source,
        conn: Conn,
        channels: Conn,
        store: Arc<RedisStore>,
        keys: Keys,
        node: Arc<str>,
        health: Arc<Health>,
        metrics: Arc<RedisMetrics>,
        options: &RedisOptions,
        shutdown: CancellationToken,
    ) -> Arc<RedisLink> {
        let (awareness, queue) = mpsc::channel(options.awareness_queue.max(1));
        let shared = Arc::new(Shared {
            keys,
            node,
            followed: Mutex::default(),
            follow_changed: Notify::new(),
            subscribe_changed: Notify::new(),
            dirty: Mutex::default(),
            publish_command: if conn.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            awareness,
            remote_clients: Mutex::default(),
            metrics,
        });
        match source {
            Source::Single {
                client,
                control,
                channels,
            } => {
                tokio::spawn(follow(
                    shared.clone(),
                    client,
                    control,
                    store,
                    shutdown.clone(),
                ));
                tokio::spawn(subscribe(shared.clone(), *channels, shutdown.clone()));
            }
            Source::Cluster { seeds, timeout } => {
                tokio::spawn(follow_cluster(
                    shared.clone(),
                    conn.clone(),
                    store,
                    options.catch_up_interval,
                    shutdown.clone(),
                ));
                tokio::spawn(subscribe_cluster(
                    shared.clone(),
                    seeds,
                    timeout,
                    options.awareness_queue.max(1),
                    shutdown.clone(),
                ));
            }
        }
        tokio::spawn(publish(
            shared.clone(),
            channels.clone(),
            queue,
            shutdown.clone(),
        ));
        tokio::spawn(heartbeat(
            shared.clone(),
            conn.clone(),
            health,
            options.heartbeat_interval,
            options.node_ttl,
            shutdown,
        ));
        Arc::new(RedisLink {
            shared,
            conn: channels,
        })
    }

    /// Tells the nodes that have `doc` loaded that it was deleted (they close their rooms of
    /// it), and waits until Redis took the message: for tools that delete and exit, such as
    /// `concord-server docs delete --redis-url`.
    pub async fn announce_deleted(&self, doc: &DocName) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd(self.shared.publish_command)
            .arg(self.shared.keys.channel(doc))
            .arg(channel_message(DELETED, &self.shared.node, &[]))
            .query_async(&mut conn)
            .await
    }

    /// Awareness and update messages not published because the queue was full.
    pub fn publish_dropped(&self) -> u64 {
        self.shared.metrics.publish_dropped.load(Ordering::Relaxed)
    }

    /// Log entries of other nodes delivered to rooms here.
    pub fn entries_delivered(&self) -> u64 {
        self.shared
            .metrics
            .entries_delivered
            .load(Ordering::Relaxed)
    }

    /// Times a room was brought up to date from the snapshot because entries it had not read
    /// were compacted away.
    pub fn resyncs(&self) -> u64 {
        self.shared.metrics.resyncs.load(Ordering::Relaxed)
    }

    /// Awareness clients of dead nodes removed from rooms here.
    pub fn ghosts_removed(&self) -> u64 {
        self.shared.metrics.ghosts_removed.load(Ordering::Relaxed)
    }
}

impl Replication for RedisLink {
    fn follow(&self, doc: &DocName, inlet: Inlet, loaded: Seq) {
        self.shared
            .lock()
            .insert(doc.clone(), Followed { inlet, seq: loaded });
        if self.conn.is_cluster() {
            // Read what was appended since the load (the subscriber reads once more when its
            // subscription is confirmed: nothing falls between).
            self.shared.mark_dirty(doc);
        }
        self.shared.follow_changed.notify_one();
        self.shared.subscribe_changed.notify_one();
    }

    fn unfollow(&self, doc: &DocName) {
        let mut followed = self.shared.lock();
        followed.remove(doc);
        self.shared
            .metrics
            .followed
            .store(followed.len() as u64, Ordering::Relaxed);
        drop(followed);
        self.shared.remote().remove(doc);
        self.shared.follow_changed.notify_one();
        self.shared.subscribe_changed.notify_one();
    }

    fn publish(&self, doc: &DocName, event: Published) {
        // An update also reaches the other nodes through the log the store appends it to; this
        // is the fast path, which does not wait for Redis to store it.
        let message = match event {
            Published::Update(update) => (doc.clone(), UPDATE, update),
            Published::Awareness(update) => (doc.clone(), AWARENESS, update),
            Published::Stateless(payload) => (doc.clone(), STATELESS, payload),
        };
        if self.shared.awareness.try_send(message).is_err() {
            RedisMetrics::bump(&self.shared.metrics.publish_dropped);
        }
    }

    fn deleted(&self, doc: &DocName) {
        if self
            .shared
            .awareness
            .try_send((doc.clone(), DELETED, Bytes::new()))
            .is_err()
        {
            RedisMetrics::bump(&self.shared.metrics.publish_dropped);
            tracing::warn!(%doc, "the publish queue is full: other nodes keep their rooms of this deleted document until they unload them");
        }
    }
}

/// Waits `delay` (doubled up to a second for the next time), or returns false at shutdown.
async fn back_off(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(Duration::from_secs(1));
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// A connection of the follower's own, and its client id (for `CLIENT UNBLOCK`).
async fn follower_connection(
    client: &redis::Client,
) -> redis::RedisResult<(MultiplexedConnection, u64)> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let id: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    Ok((conn, id))
}

/// One stream's reply to `XREAD`: key and entries.
type StreamReply = (String, Vec<(String, Vec<Vec<u8>>)>);

/// The follower task: see the module documentation.
async fn follow(
    shared: Arc<Shared>,
    client: redis::Client,
    mut control: ConnectionManager,
    store: Arc<RedisStore>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    'connect: while !shutdown.is_cancelled() {
        let (mut conn, id) = match follower_connection(&client).await {
            Ok(connected) => connected,
            Err(e) => {
                tracing::debug!(error = %e, "follower cannot connect to redis");
                if back_off(&mut delay, &shutdown).await {
                    continue;
                }
                return;
            }
        };
        loop {
            // The streams to read and where each stands.
            let wanted: Vec<(DocName, String, Seq)> = shared
                .lock()
                .iter()
                .map(|(doc, f)| (doc.clone(), shared.keys.doc(doc).log, f.seq))
                .collect();
            if wanted.is_empty() {
                tokio::select! {
                    _ = shared.follow_changed.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS");
            for (_, key, _) in &wanted {
                read.arg(key);
            }
            for (_, _, seq) in &wanted {
                read.arg(format!("{seq}-0"));
            }
            let reply = read.query_async::<Option<Vec<StreamReply>>>(&mut conn);
            tokio::pin!(reply);
            let reply = tokio::select! {
                reply = &mut reply => reply,
                _ = shared.follow_changed.notified() => {
                    // Wake the blocked read so the next one covers the new set.
                    let _: redis::RedisResult<u64> = redis::cmd("CLIENT")
                        .arg("UNBLOCK")
                        .arg(id)
                        .query_async(&mut control)
                        .await;
                    reply.await
                }
                _ = shutdown.cancelled() => return,
            };
            match reply {
                Ok(streams) => {
                    delay = Duration::from_millis(50);
                    let by_key: HashMap<&str, &DocName> = wanted
                        .iter()
                        .map(|(doc, key, _)| (key.as_str(), doc))
                        .collect();
                    for (key, entries) in streams.unwrap_or_default() {
                        if let Some(doc) = by_key.get(key.as_str()) {
                            deliver(&shared, &store, doc, entries).await;
                        }
                    }
                }
                Err(e) => {
                    if is_unavailable(&e) {
                        tracing::debug!(error = %e, "follower lost redis; reconnecting");
                    } else {
                        tracing::warn!(error = %e, "follower read failed; reconnecting");
                    }
                    if back_off(&mut delay, &shutdown).await {
                        continue 'connect;
                    }
                    return;
                }
            }
        }
    }
}

/// Delivers one document's new entries to its room, in seq order, skipping this node's own.
async fn deliver(
    shared: &Shared,
    store: &RedisStore,
    doc: &DocName,
    entries: Vec<(String, Vec<Vec<u8>>)>,
) {
    for raw in entries {
        let Some(entry) = decode_entry(raw) else {
            continue;
        };
        let (inlet, last) = match shared.lock().get(doc) {
            Some(f) => (f.inlet.clone(), f.seq),
            None => return,
        };
        if entry.seq <= last {
            continue;
        }
        if entry.seq != last + 1 {
            // Entries between were compacted away before this node read them.
            resync(shared, store, doc, &inlet).await;
            continue;
        }
        let delivered = if entry.node.as_slice() == shared.node.as_bytes() {
            Ok(())
        } else {
            match entry.updates {
                Ok(updates) => {
                    RedisMetrics::bump(&shared.metrics.entries_delivered);
                    if let Some(written) = entry.written_ms {
                        let lag = now_ms().saturating_sub(written);
                        shared
                            .metrics
                            .follow_lag_seconds
                            .observe(lag as f64 / 1000.0);
                    }
                    inlet.stored(entry.seq, updates)
                }
                Err(why) => {
                    tracing::error!(%doc, seq = entry.seq, %why, "skipping a log entry that cannot be read");
                    Ok(())
                }
            }
        };
        match delivered {
            Ok(()) => {}
            Err(InletError::Closed) => return,
            Err(e) => {
                tracing::warn!(%doc, seq = entry.seq, error = %e, "another node's entry was refused here");
            }
        }
        if let Some(f) = shared.lock().get_mut(doc) {
            f.seq = f.seq.max(entry.seq);
        }
    }
}

/// Brings a room up to date from the store (snapshot and log), after entries it had not read
/// were compacted away.
async fn resync(shared: &Shared, store: &RedisStore, doc: &DocName, inlet: &Inlet) {
    RedisMetrics::bump(&shared.metrics.resyncs);
    let stored = match store.load(doc).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(%doc, error = %e, "cannot read the document to catch up; retrying");
            return;
        }
    };
    let reached = stored.position.seq;
    let inlet = inlet.clone();
    let doc_name = doc.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let (room, _) = Room::from_stored(Arc::new(SystemClock), &stored)
            .map_err(|e| format!("the stored document cannot be rebuilt: {e}"))?;
        inlet
            .update(&room.encode_state())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match applied {
        Ok(()) => {
            tracing::info!(doc = %doc_name, reached, "caught up from the snapshot after a compaction");
            if let Some(f) = shared.lock().get_mut(doc) {
                f.seq = f.seq.max(reached);
            }
        }
        Err(e) => tracing::warn!(doc = %doc_name, error = %e, "cannot catch up"),
    }
}

/// A channel message: kind, node id, payload.
fn channel_message(kind: u8, node: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(2 + node.len() + payload.len());
    message.push(kind);
    message.push(u8::try_from(node.len()).unwrap_or(u8::MAX));
    message.extend_from_slice(&node.as_bytes()[..node.len().min(255)]);
    message.extend_from_slice(payload);
    message
}

/// Splits a channel message into kind, node id and payload.
fn parse_channel_message(message: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&kind, rest) = message.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if !matches!(
        kind,
        AWARENESS | QUERY | UPDATE | DELETED | STORED | STATELESS
    ) || rest.len() < usize::from(len)
    {
        return None;
    }
    let (node, payload) = rest.split_at(usize::from(len));
    Some((kind, node, payload))
}

/// The publisher task: sends queued channel messages, a pipeline per wake-up (on a Cluster, a
/// pipeline per document, all at once: a pipeline stays within one slot).
async fn publish(
    shared: Arc<Shared>,
    conn: Conn,
    mut queue: mpsc::Receiver<(DocName, u8, Bytes)>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let got = tokio::select! {
            got = queue.recv_many(&mut batch, 256) => got,
            _ = shutdown.cancelled() => return,
        };
        if got == 0 {
            return;
        }
        let mut by_doc: HashMap<DocName, redis::Pipeline> = HashMap::new();
        let mut single = redis::pipe();
        for (doc, kind, payload) in batch.drain(..) {
            let channel = shared.keys.channel(&doc);
            let pipe = if conn.is_cluster() {
                by_doc.entry(doc).or_insert_with(redis::pipe)
            } else {
                &mut single
            };
            pipe.cmd(shared.publish_command)
                .arg(channel)
                .arg(channel_message(kind, &shared.node, &payload))
                .ignore();
        }
        let pipes: Vec<redis::Pipeline> = if conn.is_cluster() {
            by_doc.into_values().collect()
        } else {
            vec![single]
        };
        // Presence is soft state: what fails to go out is renewed by its client; an update
        // still arrives through its stream entry.
        let sent = futures_util::future::join_all(pipes.iter().map(|pipe| {
            let mut conn = conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        }))
        .await;
        for result in sent {
            if let Err(e) = result {
                tracing::debug!(error = %e, "channel message not published");
            }
        }
    }
}

/// Asks the other nodes who is there in `doc`, once subscribed to its channel (dropped like
/// awareness when the queue is full; presence then comes with the next renewals).
fn ask_who_is_there(shared: &Shared, doc: &DocName) {
    let _ = shared
        .awareness
        .try_send((doc.clone(), QUERY, Bytes::new()));
}

/// The subscribed channels whose documents are no longer followed.
fn unwanted(channels: &HashMap<String, DocName>, wanted: &HashSet<DocName>) -> Vec<String> {
    channels
        .iter()
        .filter(|(_, doc)| !wanted.contains(*doc))
        .map(|(channel, _)| channel.clone())
        .collect()
}

/// The subscriber task: see the module documentation.
async fn subscribe(shared: Arc<Shared>, client: redis::Client, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!(error = %e, "subscriber cannot connect to redis");
                if back_off(&mut delay, &shutdown).await {
                    continue;
                }
                return;
            }
        };
        delay = Duration::from_millis(50);
        let (mut sink, mut messages) = pubsub.split();
        // Channel -> document, of the channels subscribed on this connection.
        let mut channels: HashMap<String, DocName> = HashMap::new();
        'connected: loop {
            // Subscribe to what is followed and not yet subscribed, and the reverse.
            let wanted: HashSet<DocName> = shared.lock().keys().cloned().collect();
            let mut failed = false;
            for doc in &wanted {
                let channel = shared.keys.channel(doc);
                if let std::collections::hash_map::Entry::Vacant(slot) = channels.entry(channel) {
                    if sink.subscribe(slot.key()).await.is_err() {
                        failed = true;
                        break;
                    }
                    slot.insert(doc.clone());
                    ask_who_is_there(&shared, doc);
                }
            }
            for channel in unwanted(&channels, &wanted) {
                if sink.unsubscribe(&channel).await.is_err() {
                    failed = true;
                    break;
                }
                channels.remove(&channel);
            }
            if failed {
                break 'connected;
            }
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break 'connected };
                        if let Some(doc) = channels.get(message.get_channel_name()) {
                            awareness_arrived(&shared, doc, message.get_payload_bytes());
                        }
                    }
                    _ = shared.subscribe_changed.notified() => continue 'connected,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
        tracing::debug!("subscriber lost redis; reconnecting");
        if !back_off(&mut delay, &shutdown).await {
            return;
        }
    }
}

/// Cluster: a doorbell of `doc`'s stream. This node's own entry right after the last one it
/// has needs no read (it would be skipped); anything else is read.
fn doorbell(shared: &Shared, doc: &DocName, node: &[u8], seq: &[u8]) {
    let Some(seq) = std::str::from_utf8(seq)
        .ok()
        .and_then(|s| s.parse::<Seq>().ok())
    else {
        return;
    };
    if node == shared.node.as_bytes() {
        let mut followed = shared.lock();
        match followed.get_mut(doc) {
            Some(f) if f.seq + 1 == seq => {
                f.seq = seq;
                return;
            }
            Some(f) if f.seq >= seq => return,
            Some(_) => {}
            None => return,
        }
    }
    shared.mark_dirty(doc);
}

/// Delivers another node's awareness update to the room, and notes its clients.
fn awareness_arrived(shared: &Shared, doc: &DocName, message: &[u8]) {
    let Some((kind, node, update)) = parse_channel_message(message) else {
        return;
    };
    if kind == STORED {
        doorbell(shared, doc, node, update);
        return;
    }
    if node == shared.node.as_bytes() {
        return;
    }
    let Some(inlet) = shared.lock().get(doc).map(|f| f.inlet.clone()) else {
        return;
    };
    if kind == DELETED {
        inlet.deleted();
        return;
    }
    if kind == UPDATE {
        RedisMetrics::bump(&shared.metrics.fast_updates);
        if let Err(e) = inlet.relay(update)
            && !matches!(e, InletError::Closed)
        {
            tracing::debug!(%doc, error = %e, "another node's update was refused here");
        }
        return;
    }
    if kind == STATELESS {
        inlet.stateless(update);
        return;
    }
    if kind == QUERY {
        if let Some(states) = inlet.local_awareness() {
            let _ = shared
                .awareness
                .try_send((doc.clone(), AWARENESS, states.into()));
        }
        return;
    }
    // The inlet validates the update before anything of it is trusted.
    if let Err(e) = inlet.awareness(update) {
        if !matches!(e, InletError::Closed) {
            tracing::debug!(%doc, error = %e, "another node's awareness was refused here");
        }
        return;
    }
    let Ok(decoded) = AwarenessUpdate::decode_v1(update) else {
        return;
    };
    let mut remote = shared.remote();
    let clients = remote
        .entry(doc.clone())
        .or_default()
        .entry(node.to_vec())
        .or_default();
    for (client, entry) in decoded.clients {
        if &*entry.json == "null" {
            clients.remove(&client);
        } else {
            clients.insert(client, entry.clock);
        }
    }
}

/// The follower on a Cluster: reads the streams of documents whose doorbell rang (or that were
/// just followed), and every followed stream each `catch_up` (pub/sub is at most once: a
/// doorbell lost to a reconnect is made up for then). Each read is one `XRANGE` on the
/// document's shard, [`CLUSTER_READS`] documents at a time.
async fn follow_cluster(
    shared: Arc<Shared>,
    conn: Conn,
    store: Arc<RedisStore>,
    catch_up: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(catch_up);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let all: Vec<DocName> = shared.lock().keys().cloned().collect();
                shared.dirty.lock().unwrap_or_else(|e| e.into_inner()).extend(all);
            }
            _ = shared.follow_changed.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        loop {
            let dirty: Vec<DocName> =
                std::mem::take(&mut *shared.dirty.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_iter()
                    .collect();
            if dirty.is_empty() {
                break;
            }
            futures_util::stream::iter(dirty)
                .for_each_concurrent(CLUSTER_READS, |doc| {
                    read_stream(&shared, &store, conn.clone(), doc)
                })
                .await;
        }
    }
}

/// Cluster: reads `doc`'s entries after the last one this node has and delivers them.
async fn read_stream(shared: &Shared, store: &RedisStore, mut conn: Conn, doc: DocName) {
    let Some(after) = shared.lock().get(&doc).map(|f| f.seq) else {
        return;
    };
    let started = std::time::Instant::now();
    let read: redis::RedisResult<Vec<(String, Vec<Vec<u8>>)>> = redis::cmd("XRANGE")
        .arg(shared.keys.doc(&doc).log)
        .arg(format!("({after}-0"))
        .arg("+")
        .arg("COUNT")
        .arg(READ_COUNT)
        .query_async(&mut conn)
        .await;
    match read {
        Ok(entries) => {
            shared
                .metrics
                .read_seconds
                .observe(started.elapsed().as_secs_f64());
            let full = entries.len() >= READ_COUNT;
            deliver(shared, store, &doc, entries).await;
            if full {
                shared.mark_dirty(&doc);
            }
        }
        // The next catch-up reads it again.
        Err(e) => tracing::debug!(%doc, error = %e, "cannot read the stream; retrying"),
    }
}

/// The subscriber on a Cluster: sharded subscriptions (`SSUBSCRIBE`, on each document's shard)
/// over a cluster connection of its own, which re-subscribes by itself after a reconnect or a
/// slot move. Messages come through a bounded queue (overflow: dropped and counted; a stored
/// entry is still read at the next catch-up, presence is renewed by its clients).
async fn subscribe_cluster(
    shared: Arc<Shared>,
    seeds: Vec<String>,
    timeout: Duration,
    queue: usize,
    shutdown: CancellationToken,
) {
    let (tx, mut messages) = mpsc::channel::<PushInfo>(queue);
    let metrics = shared.metrics.clone();
    let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
        if tx.try_send(info).is_err() {
            RedisMetrics::bump(&metrics.received_dropped);
        }
        Ok(())
    };
    let client = match redis::cluster::ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(sender)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the cluster subscriber: no presence between nodes");
            return;
        }
    };
    let mut delay = Duration::from_millis(50);
    let mut conn = loop {
        match client.get_async_connection().await {
            Ok(conn) => break conn,
            Err(e) => {
                tracing::debug!(error = %e, "subscriber cannot connect to the cluster");
                if !back_off(&mut delay, &shutdown).await {
                    return;
                }
            }
        }
    };
    // Channel -> document, of the channels subscribed.
    let mut channels: HashMap<String, DocName> = HashMap::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wanted: HashSet<DocName> = shared.lock().keys().cloned().collect();
        let mut failed = false;
        for doc in &wanted {
            let channel = shared.keys.channel(doc);
            if channels.contains_key(&channel) {
                continue;
            }
            match conn.ssubscribe(&channel).await {
                Ok(()) => {
                    channels.insert(channel, doc.clone());
                    // Subscribed: read what was stored meanwhile, and ask who is there.
                    shared.mark_dirty(doc);
                    ask_who_is_there(&shared, doc);
                }
                Err(e) => {
                    tracing::debug!(%doc, error = %e, "cannot subscribe; retrying");
                    failed = true;
                }
            }
        }
        for channel in unwanted(&channels, &wanted) {
            match conn.sunsubscribe(&channel).await {
                Ok(()) => {
                    channels.remove(&channel);
                }
                Err(_) => failed = true,
            }
        }
        loop {
            tokio::select! {
                message = messages.recv() => {
                    let Some(message) = message else { return };
                    if message.kind != PushKind::SMessage {
                        continue;
                    }
                    let mut data = message.data.into_iter();
                    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                        continue;
                    };
                    let (Ok(channel), Ok(payload)) = (
                        redis::from_redis_value::<String>(channel),
                        redis::from_redis_value::<Vec<u8>>(payload),
                    ) else {
                        continue;
                    };
                    if let Some(doc) = channels.get(&channel) {
                        awareness_arrived(&shared, doc, &payload);
                    }
                }
                _ = shared.subscribe_changed.notified() => break,
                _ = retry.tick(), if failed => break,
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The heartbeat task: see the module documentation.
async fn heartbeat(
    shared: Arc<Shared>,
    mut conn: Conn,
    health: Arc<Health>,
    interval: Duration,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let own = shared.keys.node(&shared.node);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => {
                // Leaving on purpose: the others may forget this node at once.
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&own).query_async(&mut conn).await;
                return;
            }
        }
        let renewed: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&own)
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match renewed {
            Ok(()) => health.up(),
            Err(e) => {
                health.down(&e);
                continue;
            }
        }
        // The nodes whose clients this node shows, and whether each is still alive.
        let nodes: Vec<Vec<u8>> = {
            let remote = shared.remote();
            let all: HashSet<&Vec<u8>> = remote.values().flat_map(|nodes| nodes.keys()).collect();
            all.into_iter().cloned().collect()
        };
        if nodes.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("EXISTS")
                .arg(shared.keys.node(&String::from_utf8_lossy(node)));
        }
        let Ok(alive): redis::RedisResult<Vec<bool>> = pipe.query_async(&mut conn).await else {
            continue;
        };
        for (node, alive) in nodes.iter().zip(alive) {
            if !alive {
                remove_ghosts(&shared, node);
            }
        }
    }
}

/// Removes the presence of every client of a dead node from the rooms here.
fn remove_ghosts(shared: &Shared, node: &[u8]) {
    let mut removals: Vec<(DocName, HashMap<yrs::block::ClientID, u32>)> = Vec::new();
    for (doc, nodes) in shared.remote().iter_mut() {
        if let Some(clients) = nodes.remove(node) {
            removals.push((doc.clone(), clients));
        }
    }
    for (doc, clients) in removals {
        if clients.is_empty() {
            continue;
        }
        let Some(inlet) = shared.lock().get(&doc).map(|f| f.inlet.clone()) else {
            continue;
        };
        let count = clients.len();
        let update = AwarenessUpdate {
            clients: clients
                .into_iter()
                .map(|(client, clock)| {
                    (
                        client,
                        AwarenessUpdateEntry {
                            clock: clock.wrapping_add(1),
                            json: Arc::from("null"),
                        },
                    )
                })
                .collect(),
        };
        if inlet.awareness(&update.encode_v1()).is_ok() {
            shared
                .metrics
                .ghosts_removed
                .fetch_add(count as u64, Ordering::Relaxed);
            tracing::info!(%doc, node = %String::from_utf8_lossy(node), clients = count, "removed the presence of a node that stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_round_trip_and_garbage_is_ignored() {
        let message = channel_message(AWARENESS, "abc", &[1, 2, 3]);
        assert_eq!(
            parse_channel_message(&message),
            Some((AWARENESS, &b"abc"[..], &[1u8, 2, 3][..]))
        );
        let query = channel_message(QUERY, "n", &[]);
        assert_eq!(
            parse_channel_message(&query),
            Some((QUERY, &b"n"[..], &[][..]))
        );
        assert_eq!(parse_channel_message(&[]), None);
        assert_eq!(parse_channel_message(&[AWARENESS, 9, 1]), None);
        assert_eq!(parse_channel_message(&[7, 0]), None);
    }
}
