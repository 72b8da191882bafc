//! [`RedisStore`]: the [`Store`] contract on Redis Streams (see the crate documentation for the
//! layout and what an acknowledgement means).
//!
//! Every operation on one document is one Lua script, so it is atomic in Redis: an append
//! takes the next seq and adds the entry together, a compaction writes the snapshot, moves the
//! covered seq and trims the stream together, and a load reads snapshot and tail together. A
//! batch of appends for many documents is one pipeline: one round trip, whatever its size.
//!
//! Kept versions live beside the log, under the same hash tag: their metadata in one hash and
//! their snapshots in another, both by version id, with the last id given out and the
//! snapshots' byte total in the document's meta hash. Saving a version (take the id, write
//! metadata and snapshot, count the bytes) is one script, and so is removing some, so a listed
//! version always has its snapshot and the counts always match what is kept; listing the
//! versions reads the metadata hash only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use concord_core::{
    Appended, DocInfo, DocName, LogTail, NewVersion, Outbox, OutboxEntry, Position, Seq, Store,
    StoreError, StoreFuture, StoredDoc, StoredUpdate, VersionId, VersionInfo, WebhookNews,
};
use futures_util::future::try_join_all;
use redis::{Script, Value};

use crate::conn::Conn;
use crate::entry;
use crate::keys::{DocKeys, Keys};
use crate::metrics::RedisMetrics;

/// How long one `WAIT` for replicas blocks before it is sent again.
const REPLICA_WAIT: Duration = Duration::from_secs(1);

/// The longest expiry the webhook lease is given (about 35,000 years): a longer ttl is taken
/// for this one, which Redis still accepts added to the current time.
const MAX_EXPIRY_MS: u64 = 1 << 50;

/// How long a compaction lease lasts: a node that dies while compacting blocks others for at
/// most this long.
const LEASE: Duration = Duration::from_secs(60);

/// Appends one entry (fields: node, updates, count, bytes, time in ms; sent as `EVAL`: Redis
/// caches the compiled script, and a pipeline of `EVALSHA`s could half-fail after a Redis
/// restart emptied the cache): takes the next seq, adds the entry under it, and counts the
/// tail. On a cluster it also rings the document's doorbell: `SPUBLISH` on its (sharded)
/// channel of ARGV[6] followed by the seq, which tells the other nodes' followers to read.
/// KEYS: log, meta[, channel]. ARGV: node, entry, updates, bytes, now (ms)[, doorbell prefix].
/// Returns {seq, tail updates, tail bytes}.
pub(crate) const APPEND: &str = r"
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('XADD', KEYS[1], seq .. '-0', 'n', ARGV[1], 'u', ARGV[2], 'c', ARGV[3], 'b', ARGV[4], 't', ARGV[5])
local tu = redis.call('HINCRBY', KEYS[2], 'tail_updates', ARGV[3])
local tb = redis.call('HINCRBY', KEYS[2], 'tail_bytes', ARGV[4])
redis.call('HSET', KEYS[2], 'updated', ARGV[5])
if KEYS[3] then redis.call('SPUBLISH', KEYS[3], ARGV[6] .. seq) end
return {seq, tu, tb}
";

/// Writes to the webhook outbox atomically: marks it started, adds entries (and, with the
/// fresh key, notes their keys there for the next webhook news), sets or removes marks. KEYS:
/// outbox, marks, started[, fresh]. ARGV: the number of entries N, then N (key, payload)
/// pairs, then (document, `SEQ.INDEX` or empty to remove) pairs.
const OUTBOX_WRITE: &str = r"
redis.call('SET', KEYS[3], '1')
local n = tonumber(ARGV[1])
local i = 2
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if KEYS[4] then redis.call('SADD', KEYS[4], ARGV[i]) end
  i = i + 2
end
while i < #ARGV do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
return 1
";

/// Takes, renews or gives up the webhook lease. KEYS: lease. ARGV: holder, ttl in ms (`0`:
/// give it up). Takes it when nobody holds it, renews it when the holder does (a zero ttl
/// removes it then); never touches another holder's. Returns 1 when the holder holds it now.
const WEBHOOK_LEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  if ARGV[2] == '0' then
    redis.call('DEL', KEYS[1])
    return 0
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if (not held) and ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Takes the webhook news at once: the documents noted edited with their marks, and the outbox
/// entries written since the last news that are still pending; clears both sets. KEYS: edited,
/// marks, fresh, outbox. Returns {documents, their marks (nil: none), outbox keys, their
/// payloads (nil: removed since)}.
const WEBHOOK_NEWS: &str = r"
local docs = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
local marks = {}
for i, doc in ipairs(docs) do
  marks[i] = redis.call('HGET', KEYS[2], doc)
end
local keys = redis.call('SMEMBERS', KEYS[3])
redis.call('DEL', KEYS[3])
local payloads = {}
for from = 1, #keys, 512 do
  local to = math.min(from + 511, #keys)
  local got = redis.call('HMGET', KEYS[4], unpack(keys, from, to))
  for j = 1, #got do payloads[from + j - 1] = got[j] end
end
return {docs, marks, keys, payloads}
";

/// Reads a document: its snapshot, the seq the snapshot covers, and the entries after it.
/// KEYS: snap, meta, log.
const LOAD: &str = r"
local snap = redis.call('GET', KEYS[1])
local covered = redis.call('HGET', KEYS[2], 'snap_seq')
local from = '-'
if covered then from = '(' .. covered .. '-0' end
return {snap, covered, redis.call('XRANGE', KEYS[3], from, '+')}
";

/// Reads the entries from a seq on. KEYS: meta, log. ARGV: first id. Returns {covered seq,
/// last seq, entries}.
const LOG_FROM: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'snap_seq', 'seq')
return {meta[1], meta[2], redis.call('XRANGE', KEYS[2], ARGV[1], '+')}
";

/// Replaces the snapshot and trims the entries it covers, if the caller still holds the lease.
/// KEYS: snap, meta, log, lease. ARGV: lease token, snapshot, upto, first id kept. A snapshot
/// that covers less than the stored one is not written: it was built from the store and holds
/// exactly what it covers. Returns 1 when done, 0 when the lease was lost.
const COMPACT: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
local upto = tonumber(ARGV[3])
local covered = redis.call('HGET', KEYS[2], 'snap_seq')
if (not covered) or upto >= tonumber(covered) then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'snap_seq', ARGV[3])
  local seq = redis.call('HGET', KEYS[2], 'seq')
  if (not seq) or upto > tonumber(seq) then redis.call('HSET', KEYS[2], 'seq', ARGV[3]) end
  redis.call('XTRIM', KEYS[3], 'MINID', ARGV[4])
  local tu, tb = 0, 0
  for _, e in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'c' then tu = tu + tonumber(f[i + 1]) elseif f[i] == 'b' then tb = tb + tonumber(f[i + 1]) end
    end
  end
  redis.call('HSET', KEYS[2], 'tail_updates', tu, 'tail_bytes', tb)
end
redis.call('DEL', KEYS[4])
return 1
";

/// Keeps a version: takes the document's next version id and writes the version's metadata and
/// snapshot under it, adding its bytes to the history's total, all at once (a listed version
/// always has its snapshot). KEYS: meta, versions, version-snaps. ARGV: metadata (see
/// [`encode_version`]), snapshot, its bytes. Returns the id.
const SAVE_VERSION: &str = r"
local id = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[3], id, ARGV[2])
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('HINCRBY', KEYS[1], 'history_bytes', ARGV[3])
return id
";

/// Removes versions: each one's metadata and snapshot together, and their bytes from the
/// history's total; ids not kept (or given twice) are skipped. The last id given out stays, so
/// ids are not reused. KEYS: meta, versions, version-snaps. ARGV: the ids. Returns how many
/// were removed.
const DELETE_VERSIONS: &str = r"
local removed, freed = 0, 0
for _, id in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[2], id) == 1 then
    freed = freed + redis.call('HSTRLEN', KEYS[3], id)
    redis.call('HDEL', KEYS[3], id)
    removed = removed + 1
  end
end
if removed > 0 then redis.call('HINCRBY', KEYS[1], 'history_bytes', -freed) end
return removed
";

/// The format of a version's metadata, the first word of every value: a reader that finds
/// another one refuses it rather than misreading it.
const VERSION_FORMAT: &str = "1";

/// A version's metadata as the versions hash keeps it: `1 CREATED_MS SEQ INDEX BYTES`, then
/// for a named version a newline and the label (which may hold anything, newlines too: it is
/// the rest of the value). The id is the hash field.
fn encode_version(
    created_at_ms: u64,
    position: Position,
    bytes: u64,
    label: Option<&str>,
) -> String {
    let mut meta = format!(
        "{VERSION_FORMAT} {created_at_ms} {} {} {bytes}",
        position.seq, position.index
    );
    if let Some(label) = label {
        meta.push('\n');
        meta.push_str(label);
    }
    meta
}

/// Reads what [`encode_version`] wrote; `None` when it is not that.
fn decode_version(id: VersionId, meta: &[u8]) -> Option<VersionInfo> {
    let meta = std::str::from_utf8(meta).ok()?;
    let (numbers, label) = match meta.split_once('\n') {
        Some((numbers, label)) => (numbers, Some(label.to_owned())),
        None => (meta, None),
    };
    let mut words = numbers.split(' ');
    if words.next()? != VERSION_FORMAT {
        return None;
    }
    let mut next = || words.next()?.parse::<u64>().ok();
    let (created_at_ms, seq, index, bytes) = (next()?, next()?, next()?, next()?);
    if words.next().is_some() {
        return None;
    }
    Some(VersionInfo {
        id,
        created_at_ms,
        position: Position {
            seq,
            index: u32::try_from(index).ok()?,
        },
        label,
        bytes,
    })
}

/// A [`Store`] in Redis, shared by every Concord node that uses the same Redis and key prefix.
///
/// Made by [`crate::connect`]. Its futures await Redis (or a Redis Cluster: each document's
/// commands go to the shard of its hash tag) over a multiplexed connection that reconnects by
/// itself; while Redis cannot be reached, calls fail with
/// [`StoreError::Unavailable`] (the server then holds the updates unacknowledged and retries)
/// and [`Store::ready`] says why.
pub struct RedisStore {
    conn: Conn,
    /// The appends' own connection: `WAIT` counts the replicas that have the writes of the
    /// connection it is sent on, and blocks that connection meanwhile.
    append_conn: Conn,
    /// Replicas that must have an append before it is acknowledged (0: none; see
    /// [`crate::RedisOptions::wait_replicas`]).
    wait_replicas: u64,
    keys: Keys,
    /// This node's id, written into every entry so its followers skip their own entries.
    node: Arc<str>,
    /// The start of this node's doorbell messages (the append script adds the seq).
    doorbell: Vec<u8>,
    health: Arc<Health>,
    metrics: Arc<RedisMetrics>,
    scripts: Scripts,
}

struct Scripts {
    outbox_write: Script,
    webhook_lease: Script,
    webhook_news: Script,
    load: Script,
    log_from: Script,
    compact: Script,
    save_version: Script,
    delete_versions: Script,
}

/// Whether Redis answered lately, and if not, why.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: AtomicBool,
    why: Mutex<String>,
    /// Appends wait for replicas that have not confirmed them.
    replicas_behind: AtomicBool,
}

impl Health {
    pub(crate) fn up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis reachable again");
        }
    }

    pub(crate) fn down(&self, why: &redis::RedisError) {
        let text = why.to_string();
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = text.clone();
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %text, "redis unreachable");
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    pub(crate) fn replicas_behind(&self, confirmed: u64, wanted: u64) {
        self.replicas_behind.store(true, Ordering::Relaxed);
        tracing::warn!(
            confirmed,
            wanted,
            "redis replicas have not confirmed the latest appends: acknowledgements wait"
        );
    }

    pub(crate) fn replicas_caught_up(&self) {
        self.replicas_behind.store(false, Ordering::Relaxed);
        tracing::info!("redis replicas confirmed the appends: acknowledgements resume");
    }

    fn status(&self) -> Result<(), String> {
        if !self.is_up() {
            let why = self.why.lock().unwrap_or_else(|e| e.into_inner());
            return Err(format!("redis unreachable: {why}"));
        }
        if self.replicas_behind.load(Ordering::Relaxed) {
            return Err("waiting for redis replicas to confirm appends".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Whether a Redis error means "cannot reach Redis now" rather than "Redis refused this".
pub(crate) fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        )
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One stream entry as XRANGE returns it: id and flattened field/value pairs.
type RawEntry = (String, Vec<Vec<u8>>);

/// A readable log entry: its seq and updates.
type LogEntry = (Seq, Vec<Vec<u8>>);

/// A decoded stream entry.
pub(crate) struct Entry {
    pub(crate) seq: Seq,
    pub(crate) node: Vec<u8>,
    /// When it was appended (ms since the Unix epoch, the writing node's clock).
    pub(crate) written_ms: Option<u64>,
    /// The updates, or why they cannot be read.
    pub(crate) updates: Result<Vec<Vec<u8>>, String>,
}

/// Decodes a stream entry; `None` when its id is not one Concord writes.
pub(crate) fn decode_entry((id, fields): RawEntry) -> Option<Entry> {
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let mut node = Vec::new();
    let mut blob = None;
    let mut written_ms = None;
    let mut pairs = fields.into_iter();
    while let (Some(field), Some(value)) = (pairs.next(), pairs.next()) {
        match field.as_slice() {
            b"n" => node = value,
            b"u" => blob = Some(value),
            b"t" => {
                written_ms = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| t.parse().ok())
            }
            _ => {}
        }
    }
    let updates = match blob {
        Some(blob) => entry::decode(&blob),
        None => Err("no updates field".into()),
    };
    Some(Entry {
        seq,
        node,
        written_ms,
        updates,
    })
}

impl RedisStore {
    pub(crate) fn new(
        (conn, append_conn): (Conn, Conn),
        wait_replicas: u64,
        keys: Keys,
        node: Arc<str>,
        health: Arc<Health>,
        metrics: Arc<RedisMetrics>,
    ) -> RedisStore {
        RedisStore {
            conn,
            append_conn,
            wait_replicas,
            keys,
            doorbell: crate::link::doorbell_prefix(&node),
            node,
            health,
            metrics,
            scripts: Scripts {
                outbox_write: Script::new(OUTBOX_WRITE),
                webhook_lease: Script::new(WEBHOOK_LEASE),
                webhook_news: Script::new(WEBHOOK_NEWS),
                load: Script::new(LOAD),
                log_from: Script::new(LOG_FROM),
                compact: Script::new(COMPACT),
                save_version: Script::new(SAVE_VERSION),
                delete_versions: Script::new(DELETE_VERSIONS),
            },
        }
    }

    /// Log entries skipped so far because they could not be decoded.
    pub fn corrupt_entries(&self) -> u64 {
        self.metrics.corrupt_entries.load(Ordering::Relaxed)
    }

    /// Maps a Redis error to the store's, noting an unreachable Redis.
    fn fail(&self, e: redis::RedisError) -> StoreError {
        if is_unavailable(&e) {
            self.health.down(&e);
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Backend(Box::new(e))
        }
    }

    /// Notes that Redis answered.
    fn answered<T>(&self, result: redis::RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.health.up();
                Ok(value)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Decodes entries, counting and reporting the ones that cannot be read.
    fn decode_all(&self, doc: &DocName, raw: Vec<RawEntry>) -> (Vec<LogEntry>, u64) {
        let mut entries = Vec::with_capacity(raw.len());
        let mut corrupt = 0;
        for raw in raw {
            let id = raw.0.clone();
            match decode_entry(raw) {
                Some(Entry {
                    seq,
                    updates: Ok(updates),
                    ..
                }) => entries.push((seq, updates)),
                Some(Entry {
                    updates: Err(why), ..
                }) => {
                    corrupt += 1;
                    tracing::error!(%doc, %id, %why, "skipping a log entry that cannot be read");
                }
                None => {
                    corrupt += 1;
                    tracing::error!(%doc, %id, "skipping a log entry with an id Concord does not write");
                }
            }
        }
        self.metrics
            .corrupt_entries
            .fetch_add(corrupt, Ordering::Relaxed);
        (entries, corrupt)
    }

    async fn load_doc(&self, doc: &DocName) -> Result<StoredDoc, StoreError> {
        let k = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let (snapshot, covered, raw): (Option<Vec<u8>>, Option<Seq>, Vec<RawEntry>) = self
            .answered(
                self.scripts
                    .load
                    .key(&k.snap)
                    .key(&k.meta)
                    .key(&k.log)
                    .invoke_async(&mut conn)
                    .await,
            )?;
        self.metrics
            .read_seconds
            .observe(started.elapsed().as_secs_f64());
        let (entries, corrupt_entries) = self.decode_all(doc, raw);
        let position = match (entries.last(), covered) {
            (Some((seq, updates)), _) => Position {
                seq: *seq,
                index: u32::try_from(updates.len().saturating_sub(1)).unwrap_or(u32::MAX),
            },
            (None, Some(covered)) if snapshot.is_some() => Position {
                seq: covered,
                index: u32::MAX,
            },
            _ => Position::START,
        };
        Ok(StoredDoc {
            last_seq: entries.last().map_or(0, |(seq, _)| *seq),
            updates: entries.into_iter().flat_map(|(_, u)| u).collect(),
            snapshot,
            position,
            corrupt_entries,
        })
    }

    async fn append_batch(&self, batch: &[StoredUpdate]) -> Result<Vec<Appended>, StoreError> {
        let mut grouped: BTreeMap<&DocName, Vec<&[u8]>> = BTreeMap::new();
        for update in batch {
            grouped
                .entry(&update.doc)
                .or_default()
                .push(update.update.as_slice());
        }
        if grouped.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let cluster = self.append_conn.is_cluster();
        let appends: Vec<redis::Cmd> = grouped
            .iter()
            .map(|(doc, updates)| {
                let k = self.keys.doc(doc);
                let bytes: usize = updates.iter().map(|u| u.len()).sum();
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(APPEND).arg(if cluster { 3 } else { 2 });
                cmd.arg(&k.log).arg(&k.meta);
                if cluster {
                    cmd.arg(self.keys.channel(doc));
                }
                cmd.arg(&*self.node)
                    .arg(entry::encode(updates.iter().copied()))
                    .arg(updates.len())
                    .arg(bytes)
                    .arg(now);
                if cluster {
                    cmd.arg(&self.doorbell);
                }
                cmd
            })
            .collect();
        let mut index = redis::cmd("ZADD");
        index.arg(self.keys.index());
        for doc in grouped.keys() {
            index.arg(now).arg(doc.as_str());
        }
        let mut conn = self.append_conn.clone();
        let started = std::time::Instant::now();
        let written: Vec<(Seq, u64, u64)> = if cluster {
            // One document's keys share a slot, different documents' do not: each append goes
            // to its own shard, all at once over the multiplexed connection.
            let (written, ()) = self.answered(futures_util::try_join!(
                try_join_all(appends.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<(Seq, u64, u64)>(&mut conn).await }
                })),
                async {
                    let mut conn = conn.clone();
                    index.query_async::<()>(&mut conn).await
                },
            ))?;
            written
        } else {
            let mut pipe = redis::pipe();
            for cmd in appends {
                pipe.add_command(cmd);
            }
            pipe.add_command(index).ignore();
            self.answered(pipe.query_async(&mut conn).await)?
        };
        if self.wait_replicas > 0 {
            self.wait_for_replicas(&mut conn).await?;
        }
        self.metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(grouped
            .keys()
            .zip(written)
            .map(|(doc, (seq, tail_updates, tail_bytes))| Appended {
                doc: (*doc).clone(),
                seq,
                tail_updates,
                tail_bytes,
            })
            .collect())
    }

    /// Waits until `wait_replicas` replicas have this connection's writes, however long that
    /// takes: the appends are on the primary already, so they are not sent again; they are
    /// just not acknowledged until then. Meanwhile the store reports itself not ready.
    async fn wait_for_replicas(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let mut warned = false;
        loop {
            let confirmed: u64 = self.answered(
                redis::cmd("WAIT")
                    .arg(self.wait_replicas)
                    .arg(REPLICA_WAIT.as_millis() as u64)
                    .query_async(conn)
                    .await,
            )?;
            if confirmed >= self.wait_replicas {
                if warned {
                    self.health.replicas_caught_up();
                }
                return Ok(());
            }
            if !warned {
                self.health.replicas_behind(confirmed, self.wait_replicas);
                warned = true;
            }
        }
    }

    async fn compact_doc(
        &self,
        doc: &DocName,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> Result<(), StoreError> {
        let k: DocKeys = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        let token: u64 = self.answered(
            redis::cmd("INCR")
                .arg(&k.fence)
                .query_async(&mut conn)
                .await,
        )?;
        let taken: Option<String> = self.answered(
            redis::cmd("SET")
                .arg(&k.lease)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE.as_millis() as u64)
                .query_async(&mut conn)
                .await,
        )?;
        if taken.is_none() {
            RedisMetrics::bump(&self.metrics.leases_busy);
            tracing::debug!(%doc, "another node is compacting this document; skipped");
            return Ok(());
        }
        RedisMetrics::bump(&self.metrics.leases_taken);
        let done: u8 = self.answered(
            self.scripts
                .compact
                .key(&k.snap)
                .key(&k.meta)
                .key(&k.log)
                .key(&k.lease)
                .arg(token)
                .arg(snapshot)
                .arg(upto)
                .arg(format!("{}-0", upto.saturating_add(1)))
                .invoke_async(&mut conn)
                .await,
        )?;
        if done == 0 {
            RedisMetrics::bump(&self.metrics.leases_lost);
            tracing::warn!(%doc, token, "compaction lease expired before the snapshot was written; skipped");
            return Ok(());
        }
        let _: () = self.answered(
            redis::cmd("ZADD")
                .arg(self.keys.index())
                .arg(now_ms())
                .arg(doc.as_str())
                .query_async(&mut conn)
                .await,
        )?;
        Ok(())
    }

    async fn delete_doc(&self, doc: &DocName) -> Result<(), StoreError> {
        let k = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        // The document's keys share a slot; the index is elsewhere on a cluster.
        let () = self.answered(
            redis::cmd("DEL")
                .arg(&k.log)
                .arg(&k.meta)
                .arg(&k.snap)
                .arg(&k.lease)
                .arg(&k.versions)
                .arg(&k.version_snaps)
                .query_async(&mut conn)
                .await,
        )?;
        self.answered(
            redis::cmd("ZREM")
                .arg(self.keys.index())
                .arg(doc.as_str())
                .query_async(&mut conn)
                .await,
        )
    }

    async fn list_docs(&self) -> Result<Vec<DocInfo>, StoreError> {
        let mut conn = self.conn.clone();
        let names: Vec<String> = self.answered(
            redis::cmd("ZRANGE")
                .arg(self.keys.index())
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await,
        )?;
        let mut docs: Vec<DocName> = names
            .iter()
            .filter_map(|name| DocName::new(name).ok())
            .collect();
        docs.sort();
        let mut infos = Vec::with_capacity(docs.len());
        // Bounded pipelines, so a store with many documents does not build one huge reply.
        let sizes_of = |doc: &DocName| {
            let k = self.keys.doc(doc);
            let mut pipe = redis::pipe();
            pipe.cmd("STRLEN").arg(&k.snap);
            pipe.cmd("XLEN").arg(&k.log);
            pipe.cmd("HMGET")
                .arg(&k.meta)
                .arg("tail_bytes")
                .arg("updated")
                .arg("history_bytes");
            pipe.cmd("HLEN").arg(&k.versions);
            pipe
        };
        for chunk in docs.chunks(512) {
            let values: Vec<Value> = if conn.is_cluster() {
                // A pipeline stays within one slot: one per document, all at once.
                let per_doc: Vec<Vec<Value>> = self.answered(
                    try_join_all(chunk.iter().map(|doc| {
                        let pipe = sizes_of(doc);
                        let mut conn = conn.clone();
                        async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
                    }))
                    .await,
                )?;
                per_doc.into_iter().flatten().collect()
            } else {
                let mut pipe = redis::pipe();
                for doc in chunk {
                    for cmd in sizes_of(doc).cmd_iter() {
                        pipe.add_command(cmd.clone());
                    }
                }
                self.answered(pipe.query_async(&mut conn).await)?
            };
            for (doc, sizes) in chunk.iter().zip(values.chunks(4)) {
                let [snapshot, entries, meta, versions] = sizes else {
                    continue;
                };
                let (log_bytes, updated, history_bytes): (Option<u64>, Option<u64>, Option<u64>) =
                    redis::from_redis_value_ref(meta).unwrap_or_default();
                infos.push(DocInfo {
                    name: doc.clone(),
                    snapshot_bytes: redis::from_redis_value_ref(snapshot).unwrap_or(0),
                    log_entries: redis::from_redis_value_ref(entries).unwrap_or(0),
                    log_bytes: log_bytes.unwrap_or(0),
                    updated_at_ms: updated.unwrap_or(0),
                    versions: redis::from_redis_value_ref(versions).unwrap_or(0),
                    history_bytes: history_bytes.unwrap_or(0),
                });
            }
        }
        Ok(infos)
    }

    /// Keeps a version. Lists the document first (the index lives in another slot on a
    /// cluster, so not in the same script): a failure between the two leaves a listed document
    /// without the version, never a version of an unlisted one, and a retry adds no duplicate.
    /// Written on the appends' connection and, like an append, acknowledged only once the
    /// replicas asked for have it.
    async fn save_version_of(
        &self,
        doc: &DocName,
        version: NewVersion,
    ) -> Result<VersionInfo, StoreError> {
        let k = self.keys.doc(doc);
        let bytes = version.snapshot.len() as u64;
        let meta = encode_version(
            version.created_at_ms,
            version.position,
            bytes,
            version.label.as_deref(),
        );
        let mut conn = self.append_conn.clone();
        // NX: keeping a version is no write to the document's content, so an already listed
        // document keeps its score.
        let () = self.answered(
            redis::cmd("ZADD")
                .arg(self.keys.index())
                .arg("NX")
                .arg(now_ms())
                .arg(doc.as_str())
                .query_async(&mut conn)
                .await,
        )?;
        let id: VersionId = self.answered(
            self.scripts
                .save_version
                .key(&k.meta)
                .key(&k.versions)
                .key(&k.version_snaps)
                .arg(meta)
                .arg(version.snapshot)
                .arg(bytes)
                .invoke_async(&mut conn)
                .await,
        )?;
        if self.wait_replicas > 0 {
            self.wait_for_replicas(&mut conn).await?;
        }
        Ok(VersionInfo {
            id,
            created_at_ms: version.created_at_ms,
            position: version.position,
            label: version.label,
            bytes,
        })
    }

    /// The kept versions' metadata (one `HGETALL` of the metadata hash: no snapshot is read).
    async fn versions_of(&self, doc: &DocName) -> Result<Vec<VersionInfo>, StoreError> {
        let k = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        let raw: BTreeMap<VersionId, Vec<u8>> = self.answered(
            redis::cmd("HGETALL")
                .arg(&k.versions)
                .query_async(&mut conn)
                .await,
        )?;
        raw.into_iter()
            .map(|(id, meta)| {
                decode_version(id, &meta).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "version {id} of {doc:?} has metadata Concord does not write: {:?}",
                        String::from_utf8_lossy(&meta)
                    ))
                })
            })
            .collect()
    }

    async fn version_snapshot(
        &self,
        doc: &DocName,
        id: VersionId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        self.answered(
            redis::cmd("HGET")
                .arg(&k.version_snaps)
                .arg(id)
                .query_async(&mut conn)
                .await,
        )
    }

    async fn delete_versions_of(
        &self,
        doc: &DocName,
        ids: &[VersionId],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let k = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        let mut script = self.scripts.delete_versions.key(&k.meta);
        script.key(&k.versions).key(&k.version_snaps);
        for id in ids {
            script.arg(id);
        }
        self.answered(script.invoke_async(&mut conn).await)
    }

    async fn write_outbox(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> Result<(), StoreError> {
        let keys = self.keys.webhooks();
        let mut script = self.scripts.outbox_write.key(keys.outbox);
        script
            .key(keys.marks)
            .key(keys.started)
            .key(keys.fresh)
            .arg(add.len());
        for entry in add {
            script.arg(entry.key).arg(entry.payload);
        }
        for (doc, mark) in marks {
            script
                .arg(doc.as_str())
                .arg(mark.map_or_else(String::new, |at| at.to_string()));
        }
        let mut conn = self.append_conn.clone();
        let () = self.answered(script.invoke_async(&mut conn).await)?;
        if self.wait_replicas > 0 {
            self.wait_for_replicas(&mut conn).await?;
        }
        Ok(())
    }

    /// The outbox as one transaction (its keys share a slot). Unreadable marks are skipped and
    /// logged: the document is then announced again from the start of its log.
    async fn read_outbox(&self) -> Result<Outbox, StoreError> {
        let keys = self.keys.webhooks();
        let mut conn = self.conn.clone();
        let (entries, marks, started): (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>, bool) =
            self.answered(
                redis::pipe()
                    .atomic()
                    .cmd("HGETALL")
                    .arg(keys.outbox)
                    .cmd("HGETALL")
                    .arg(keys.marks)
                    .cmd("EXISTS")
                    .arg(keys.started)
                    .query_async(&mut conn)
                    .await,
            )?;
        let mut read = Outbox {
            entries: entries
                .into_iter()
                .map(|(key, payload)| OutboxEntry { key, payload })
                .collect(),
            started,
            ..Outbox::default()
        };
        for (name, mark) in marks {
            match (DocName::new(&name), mark.parse::<Position>()) {
                (Ok(doc), Ok(at)) => {
                    read.marks.insert(doc, at);
                }
                _ => tracing::error!(doc = %name, %mark, "skipping an unreadable webhook mark"),
            }
        }
        Ok(read)
    }

    /// Removes entries, and their keys from the fresh set with them (one transaction: the keys
    /// share a slot), so that set only names pending entries.
    async fn remove_from_outbox(&self, keys: Vec<String>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let webhooks = self.keys.webhooks();
        let mut conn = self.conn.clone();
        self.answered(
            redis::pipe()
                .atomic()
                .cmd("HDEL")
                .arg(webhooks.outbox)
                .arg(&keys)
                .ignore()
                .cmd("SREM")
                .arg(webhooks.fresh)
                .arg(&keys)
                .ignore()
                .query_async(&mut conn)
                .await,
        )
    }

    /// Takes, renews or gives up the webhook lease (see [`WEBHOOK_LEASE`]).
    async fn take_webhook_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        // Whole milliseconds, at least one for a nonzero ttl (zero gives the lease up), and
        // at most what Redis accepts as an expiry from now.
        let ms = match ttl.as_millis() {
            0 if ttl.is_zero() => 0,
            0 => 1,
            ms => u64::try_from(ms).unwrap_or(u64::MAX).min(MAX_EXPIRY_MS),
        };
        let mut conn = self.conn.clone();
        let held: u8 = self.answered(
            self.scripts
                .webhook_lease
                .key(self.keys.webhooks().lease)
                .arg(holder)
                .arg(ms)
                .invoke_async(&mut conn)
                .await,
        )?;
        Ok(held == 1)
    }

    /// Notes documents as edited, durably like an outbox write (the appends' connection, and
    /// the replicas asked for).
    async fn note_webhook_edits(&self, docs: Vec<DocName>) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut conn = self.append_conn.clone();
        let () = self.answered(
            redis::cmd("SADD")
                .arg(self.keys.webhooks().edited)
                .arg(docs.iter().map(DocName::as_str).collect::<Vec<_>>())
                .query_async(&mut conn)
                .await,
        )?;
        if self.wait_replicas > 0 {
            self.wait_for_replicas(&mut conn).await?;
        }
        Ok(())
    }

    /// Takes the webhook news in one script (see [`WEBHOOK_NEWS`]). Invalid document names and
    /// unreadable outbox keys are skipped and logged; an unreadable mark is logged and the
    /// document returned without one (announced again from the start of its log).
    async fn take_webhook_news(&self) -> Result<WebhookNews, StoreError> {
        let keys = self.keys.webhooks();
        let mut conn = self.conn.clone();
        type Raw = (
            Vec<Vec<u8>>,
            Vec<Option<Vec<u8>>>,
            Vec<Vec<u8>>,
            Vec<Option<Vec<u8>>>,
        );
        let (docs, marks, written, payloads): Raw = self.answered(
            self.scripts
                .webhook_news
                .key(keys.edited)
                .key(keys.marks)
                .key(keys.fresh)
                .key(keys.outbox)
                .invoke_async(&mut conn)
                .await,
        )?;
        let mut edited = BTreeMap::new();
        for (name, mark) in docs.into_iter().zip(marks) {
            let Some(doc) = std::str::from_utf8(&name)
                .ok()
                .and_then(|name| DocName::new(name).ok())
            else {
                tracing::error!(
                    doc = %String::from_utf8_lossy(&name),
                    "skipping an edited document with an invalid name"
                );
                continue;
            };
            let mark = mark.and_then(|mark| {
                let text = String::from_utf8_lossy(&mark);
                text.parse::<Position>()
                    .inspect_err(|_| {
                        tracing::error!(%doc, mark = %text, "skipping an unreadable webhook mark");
                    })
                    .ok()
            });
            edited.insert(doc, mark);
        }
        let mut entries = BTreeMap::new();
        for (key, payload) in written.into_iter().zip(payloads) {
            let Some(payload) = payload else {
                continue;
            };
            match String::from_utf8(key) {
                Ok(key) => {
                    entries.insert(key.clone(), OutboxEntry { key, payload });
                }
                Err(e) => tracing::error!(
                    key = %String::from_utf8_lossy(e.as_bytes()),
                    "skipping an outbox entry whose key is not UTF-8"
                ),
            }
        }
        Ok(WebhookNews {
            edited: edited.into_iter().collect(),
            entries: entries.into_values().collect(),
        })
    }

    async fn log_tail(&self, doc: &DocName, from: Seq) -> Result<LogTail, StoreError> {
        let k = self.keys.doc(doc);
        let mut conn = self.conn.clone();
        let (covered, last, raw): (Option<Seq>, Option<Seq>, Vec<RawEntry>) = self.answered(
            self.scripts
                .log_from
                .key(&k.meta)
                .key(&k.log)
                .arg(format!("{from}-0"))
                .invoke_async(&mut conn)
                .await,
        )?;
        let (entries, _) = self.decode_all(doc, raw);
        Ok(LogTail {
            entries,
            complete: covered.is_none_or(|covered| from > covered),
            last_seq: last.unwrap_or(0),
        })
    }
}

impl Store for RedisStore {
    fn load<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, StoredDoc> {
        Box::pin(self.load_doc(doc))
    }

    fn append(&self, batch: Arc<[StoredUpdate]>) -> StoreFuture<'_, Vec<Appended>> {
        Box::pin(async move { self.append_batch(&batch).await })
    }

    fn compact<'a>(
        &'a self,
        doc: &'a DocName,
        snapshot: Vec<u8>,
        upto: Seq,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.compact_doc(doc, snapshot, upto))
    }

    fn delete<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, ()> {
        Box::pin(self.delete_doc(doc))
    }

    fn list(&self) -> StoreFuture<'_, Vec<DocInfo>> {
        Box::pin(self.list_docs())
    }

    fn log_from<'a>(&'a self, doc: &'a DocName, from: Seq) -> StoreFuture<'a, LogTail> {
        Box::pin(self.log_tail(doc, from))
    }

    fn save_version<'a>(
        &'a self,
        doc: &'a DocName,
        version: NewVersion,
    ) -> StoreFuture<'a, VersionInfo> {
        Box::pin(self.save_version_of(doc, version))
    }

    fn versions<'a>(&'a self, doc: &'a DocName) -> StoreFuture<'a, Vec<VersionInfo>> {
        Box::pin(self.versions_of(doc))
    }

    fn version<'a>(&'a self, doc: &'a DocName, id: VersionId) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.version_snapshot(doc, id))
    }

    fn delete_versions<'a>(
        &'a self,
        doc: &'a DocName,
        ids: Vec<VersionId>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move { self.delete_versions_of(doc, &ids).await })
    }

    fn outbox_write(
        &self,
        add: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.write_outbox(add, marks))
    }

    fn outbox(&self) -> StoreFuture<'_, Outbox> {
        Box::pin(self.read_outbox())
    }

    fn outbox_remove(&self, keys: Vec<String>) -> StoreFuture<'_, ()> {
        Box::pin(self.remove_from_outbox(keys))
    }

    fn webhook_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(self.take_webhook_lease(holder, ttl))
    }

    fn webhook_edited(&self, docs: Vec<DocName>) -> StoreFuture<'_, ()> {
        Box::pin(self.note_webhook_edits(docs))
    }

    fn webhook_news(&self) -> StoreFuture<'_, WebhookNews> {
        Box::pin(self.take_webhook_news())
    }

    fn shared(&self) -> bool {
        true
    }

    fn ready(&self) -> Result<(), String> {
        self.health.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_metadata_round_trips_with_any_label_or_none() {
        let at = Position {
            seq: 17,
            index: u32::MAX,
        };
        for label in [
            None,
            Some(""),
            Some("draft \u{e9}"),
            Some("two\nlines 1 2 3"),
        ] {
            let meta = encode_version(1_700_000_000_000, at, 4 << 20, label);
            let info = decode_version(9, meta.as_bytes()).expect("it decodes");
            assert_eq!(
                info,
                VersionInfo {
                    id: 9,
                    created_at_ms: 1_700_000_000_000,
                    position: at,
                    label: label.map(str::to_owned),
                    bytes: 4 << 20,
                }
            );
        }
    }

    #[test]
    fn version_metadata_of_another_format_is_refused() {
        for meta in [
            &b""[..],
            b"2 1 2 3 4",
            b"1 1 2 3",
            b"1 1 2 3 4 5",
            b"1 1 2 4294967296 4",
            b"1 x 2 3 4",
            b"\xff",
        ] {
            assert_eq!(decode_version(1, meta), None, "{meta:?}");
        }
    }
}
