//! Webhooks: signed JSON events POSTed to the operator's receivers, at least once.
//!
//! **Events.** `document.updated` (edits debounced per document: after [`WebhookConfig::quiet`]
//! without edits, at most [`WebhookConfig::max_wait`] after the first; it carries the range of
//! positions it announces and the document's state vector), `document.deleted` and
//! `document.restored`. Bodies and headers are described in `HTTP.md`; the signature scheme in
//! [`concord_core::webhook`].
//!
//! **Never lost.** Every delivery is first written to the store's outbox
//! ([`Store::outbox_write`]), one entry per receiver, then attempted; it leaves the outbox when
//! its receiver answered 2xx, or when [`Retry::give_up_after`] passed since the event was made
//! (logged, counted as dropped). Edits are not written twice: beside the outbox the store keeps,
//! per document, the position through which its edits were announced (its *mark*), moved in the
//! same write that adds a `document.updated` event. At start (and after the notifier fell behind
//! the change feed) every stored document whose log goes past its mark gets an event, so edits
//! stored just before a crash are announced after it. A `document.deleted` event is written
//! before the document is removed, a `document.restored` one after the restore was stored.
//!
//! **Never in the way.** One task ([`run`]) debounces, writes the outbox and delivers, with at
//! most [`MAX_IN_FLIGHT`] requests at once per receiver; nothing on the editing path waits for
//! it (it reads the change feed like any subscriber). A slow or failing receiver only makes its
//! own deliveries wait longer, not another receiver's.
//!
//! **Several processes, one announcer.** Over a store other processes share
//! ([`Store::shared`], Redis), each process notes the documents it stored edits of in the store
//! every [`TICK`] ([`Store::webhook_edited`]), and one process at a time, the holder of a lease
//! kept in the store ([`Store::webhook_lease`], [`LEASE_TTL`], renewed every [`LEASE_EVERY`]),
//! does the rest: it takes those notes and the events other processes wrote to the outbox
//! (deletes, restores) every tick ([`Store::webhook_news`]), debounces, writes the events with
//! the marks, and delivers. Its `document.updated` events cover whole log entries: from the
//! entry after the document's mark through the last one stored when the event is made. A
//! process that takes the lease loads the outbox and catches up from the marks, as at a start;
//! one that loses it (another took it, or it could not renew it in time) drops what it held in
//! memory, and the new holder delivers it from the outbox. Every [`SWEEP_EVERY`] the holder
//! also compares every document with its mark, so that an edit whose process died before
//! noting it is announced all the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concord_core::webhook::{self, Burst, Debouncer, Retry};
use concord_core::{
    Clock, DocName, OutboxEntry, Position, Seq, Store, StoreError, raise_state_vector,
};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::durability::compact::rebuild;
use crate::durability::feed::{self, AllChanges, Feed};
use crate::durability::is_stored;
use crate::edge::http::params::encode_b64;
use crate::ops::log_gate::LogGate;
use crate::ops::stats::Counters;
use crate::rooms::Rooms;

/// Most deliveries in progress at once to one receiver: a slow receiver holds its own slots,
/// never another receiver's.
pub(crate) const MAX_IN_FLIGHT: usize = 4;

/// Most batches of events announced by others (deletes, restores) waiting for the notifier.
/// Overflow policy: the announcer waits (the events are already in the store's outbox).
const ANNOUNCED_QUEUE: usize = 256;

/// Most changes taken from the feed in one turn of the notifier.
const DRAIN_AT_ONCE: usize = 1024;

/// How often due bursts of edits are looked for: a `document.updated` event is at most this
/// late.
const TICK: Duration = Duration::from_millis(200);

/// At most one warning per this long about failed delivery attempts (each is logged at debug).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the notifier waits before reading the outbox again when the store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// On the outbox's first start, documents written this recently (ms) are announced rather than
/// taken as they stand: over a shared store, another process may have stored edits of them that
/// it has not noted yet.
const FIRST_START_GRACE_MS: u64 = 60_000;

/// Over a shared store: most documents whose last event's state vector the lease holder keeps
/// (to make the next from the entries stored since rather than from the whole document); past
/// it, it forgets them all.
const STATE_VECTORS_KEPT: usize = 10_000;

/// Over a shared store: how long the webhook lease lasts unless renewed. When its holder dies,
/// another process takes over at most this long (plus [`LEASE_EVERY`]) later.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(5);

/// Over a shared store: how often the lease is taken or renewed.
pub(crate) const LEASE_EVERY: Duration = Duration::from_secs(1);

/// Over a shared store: how often the lease holder compares every stored document with its
/// mark (edits whose process died before noting them).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Webhook settings: where events go, how they are signed, debounced and retried.
#[derive(Clone)]
pub struct WebhookConfig {
    urls: Vec<reqwest::Url>,
    secret: Arc<[u8]>,
    /// `document.updated` is sent this long after a document's last edit...
    pub quiet: Duration,
    /// ...or this long after the first edit it announces, if edits go on.
    pub max_wait: Duration,
    /// When failed deliveries are tried again, and when they are given up (counted from when
    /// the event was made, across restarts).
    pub retry: Retry,
    /// How long one delivery may take (connecting, sending and reading the answer's head).
    pub timeout: Duration,
    /// Most deliveries the outbox holds; past it the oldest is dropped (logged and counted),
    /// so a receiver that is down for long costs bounded memory and disk.
    pub max_pending: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("urls", &self.urls())
            .field("secret", &"<redacted>")
            .field("quiet", &self.quiet)
            .field("max_wait", &self.max_wait)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

/// Why a [`WebhookConfig`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// No receiver was given.
    #[error("no webhook URL")]
    NoUrls,
    /// A receiver is not a URL.
    #[error("webhook URL {url:?} is not a URL: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A receiver's scheme is not `http` or `https`.
    #[error("webhook URL {0:?} must be http:// or https://")]
    Scheme(String),
    /// The signing secret is empty.
    #[error("the webhook secret is empty")]
    EmptySecret,
}

impl WebhookConfig {
    /// Events for every one of `urls` (http or https; receivers outside loopback are the
    /// operator's choice), signed with `secret`; debounced 2 s / 10 s, retried with
    /// [`Retry::default`] (for a day), 10 s per attempt, at most 10,000 pending deliveries.
    pub fn new<U: AsRef<str>>(
        urls: impl IntoIterator<Item = U>,
        secret: impl Into<Vec<u8>>,
    ) -> Result<WebhookConfig, WebhookError> {
        let urls = urls
            .into_iter()
            .map(|url| {
                let url = url.as_ref();
                let parsed = reqwest::Url::parse(url).map_err(|e| WebhookError::BadUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
                match parsed.scheme() {
                    "http" | "https" => Ok(parsed),
                    _ => Err(WebhookError::Scheme(url.to_owned())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(WebhookError::NoUrls);
        }
        let secret: Vec<u8> = secret.into();
        if secret.is_empty() {
            return Err(WebhookError::EmptySecret);
        }
        Ok(WebhookConfig {
            urls,
            secret: secret.into(),
            quiet: Duration::from_secs(2),
            max_wait: Duration::from_secs(10),
            retry: Retry::default(),
            timeout: Duration::from_secs(10),
            max_pending: 10_000,
        })
    }

    /// The receivers.
    pub fn urls(&self) -> Vec<&str> {
        self.urls.iter().map(reqwest::Url::as_str).collect()
    }
}

/// What an outbox entry's payload holds (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    /// The receiver.
    url: String,
    /// The event's id.
    event: String,
    /// When the event was made (ms since the Unix epoch, [`crate::Config::clock`]).
    created_at_ms: u64,
    /// The request body: the event as JSON.
    body: String,
}

/// Over a shared store, a process cannot use it: logs why and stops the notifier.
fn cannot_share(what: &str) -> bool {
    tracing::error!(
        "webhooks are configured over a store other processes share, but it cannot keep {what}: none are sent"
    );
    false
}

/// The handle others announce events through: cheap to clone.
#[derive(Clone)]
pub(crate) struct Webhooks(Arc<Announcer>);

struct Announcer {
    config: WebhookConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    /// To the notifier, which delivers what was announced.
    tx: mpsc::Sender<Vec<OutboxEntry>>,
}

/// What the notifier task needs besides the handle.
pub(crate) struct Notifier {
    /// Every stored change, subscribed to before the instance takes its first write (so none is
    /// missed between the start and the task's first turn).
    pub(crate) changes: AllChanges,
    pub(crate) rooms: Arc<Rooms>,
}

impl Notifier {
    /// Subscribes to `feed` now.
    pub(crate) fn new(feed: &Feed, rooms: Arc<Rooms>) -> Notifier {
        Notifier {
            changes: feed::all_changes(feed),
            rooms,
        }
    }
}

impl Webhooks {
    /// The handle and the receiving end for [`run`].
    pub(crate) fn new(
        config: WebhookConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        counters: Arc<Counters>,
    ) -> (Webhooks, mpsc::Receiver<Vec<OutboxEntry>>) {
        let (tx, rx) = mpsc::channel(ANNOUNCED_QUEUE);
        let announcer = Announcer {
            config,
            store,
            clock,
            counters,
            tx,
        };
        (Webhooks(Arc::new(announcer)), rx)
    }

    /// Writes a `document.deleted` event for `doc` to the outbox (and forgets its mark); call
    /// before removing it, so that a crash in between loses no event.
    pub(crate) async fn deleted(&self, doc: &DocName) -> Result<(), StoreError> {
        let now = self.0.clock.now();
        let ends = (Position::START, Position { seq: now, index: 0 });
        let entries = self.0.event("document.deleted", doc, ends, now, json!({}));
        self.announce(entries, vec![(doc.clone(), None)]).await
    }

    /// Writes a `document.restored` event for `doc` to the outbox: it now equals `version`, and
    /// `saved_before` holds what it was.
    pub(crate) async fn restored(
        &self,
        doc: &DocName,
        version: u64,
        saved_before: u64,
        changed: bool,
    ) -> Result<(), StoreError> {
        let ends = (
            Position {
                seq: version,
                index: 0,
            },
            Position {
                seq: saved_before,
                index: 0,
            },
        );
        let fields = json!({
            "version": version,
            "saved_before": saved_before,
            "changed": changed,
        });
        let now = self.0.clock.now();
        let entries = self.0.event("document.restored", doc, ends, now, fields);
        self.announce(entries, vec![]).await
    }

    /// Stores the deliveries of one event, then hands them to the notifier (waiting while its
    /// queue is full; when it has stopped, they are delivered after the next start).
    async fn announce(
        &self,
        entries: Vec<OutboxEntry>,
        marks: Vec<(DocName, Option<Position>)>,
    ) -> Result<(), StoreError> {
        match self.0.store.outbox_write(entries.clone(), marks).await {
            Ok(()) => {}
            // Said once at start by the notifier; the store cannot keep events.
            Err(StoreError::Unsupported(_)) => return Ok(()),
            Err(error) => return Err(error),
        }
        Counters::bump(&self.0.counters.webhook_events);
        let _ = self.0.tx.send(entries).await;
        Ok(())
    }
}

impl Announcer {
    /// The outbox entries (one per receiver) of a `kind` event about `doc` made at `now`: its
    /// id from `kind`, `doc` and the positions `ends`; its body the id, `kind`, the time, the
    /// document and `fields` (an object). Keys start with the time in hex, so the outbox lists
    /// oldest first.
    fn event(
        &self,
        kind: &str,
        doc: &DocName,
        ends: (Position, Position),
        now: u64,
        fields: serde_json::Value,
    ) -> Vec<OutboxEntry> {
        let id = webhook::event_id(kind, doc.as_str(), ends.0, ends.1);
        let mut body = json!({
            "id": id,
            "type": kind,
            "created_at_ms": now,
            "document": doc.as_str(),
        });
        if let (Some(body), serde_json::Value::Object(fields)) = (body.as_object_mut(), fields) {
            body.extend(fields);
        }
        let body = body.to_string();
        self.config
            .urls
            .iter()
            .enumerate()
            .map(|(n, url)| {
                let delivery = Delivery {
                    url: url.to_string(),
                    event: id.clone(),
                    created_at_ms: now,
                    body: body.clone(),
                };
                OutboxEntry {
                    key: format!("{now:016x}-{id}-{n}"),
                    payload: serde_json::to_vec(&delivery).unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// A delivery waiting in memory (and in the outbox).
struct Pending {
    delivery: Delivery,
    /// Failed attempts so far (since this process loaded it).
    attempts: u32,
    /// Not before this.
    next_at: Instant,
    /// An attempt is in progress (it is then in no waiting line).
    in_flight: bool,
}

/// One receiver's deliveries.
#[derive(Default)]
struct Queue {
    waiting: BTreeSet<(Instant, String)>,
    in_flight: usize,
}

/// How one attempt went.
type Attempt = (String, Result<(), String>);

/// The notifier's state.
struct Task {
    hooks: Webhooks,
    rooms: Arc<Rooms>,
    client: reqwest::Client,
    debouncer: Debouncer,
    /// By outbox key (oldest first).
    pending: BTreeMap<String, Pending>,
    /// Delivered or dropped, and removed from the outbox at the next tick, all in one store
    /// write (a crash before it delivers them again: at least once).
    leaving: HashSet<String>,
    /// Per receiver (URL), the pending deliveries not in flight by when they are due (a wakeup
    /// costs a look at each receiver's first, whatever the backlog) and how many are in flight.
    queues: HashMap<String, Queue>,
    /// Failed attempts are logged at most once per [`FAILURE_LOG_EVERY`] (a receiver that is
    /// down fails every retry of every pending delivery).
    failure_log: LogGate,
    attempts: JoinSet<Attempt>,
    random: std::hash::RandomState,
    draws: u64,
    /// Over a shared store: this process' part in announcing.
    shared: Option<SharedPart>,
}

/// What a process sharing its store with others keeps for webhooks.
struct SharedPart {
    /// Who this process is, for the lease.
    holder: String,
    /// While this process holds the lease: until when at least.
    leading_until: Option<Instant>,
    /// When the lease is taken or renewed next.
    next_lease: Instant,
    /// When the holder compares every document with its mark next.
    next_sweep: Instant,
    /// Documents this process stored edits of, not yet noted in the store.
    edited: BTreeSet<DocName>,
    /// The holder's: the marks of the documents with a burst pending, as last read.
    marks: HashMap<DocName, Option<Position>>,
    /// The holder's: per document, the state vector of its last event and the seq it reached,
    /// raised by the entries stored since to make the next one (at most
    /// [`STATE_VECTORS_KEPT`]).
    state_vectors: HashMap<DocName, (Seq, StateVector)>,
    /// Failures to note edits or renew the lease are logged at most this often.
    failure_log: LogGate,
}

/// Debounces edits into events, keeps the outbox and delivers it (see the module
/// documentation) until `shutdown` is cancelled. Deliveries in progress then are abandoned;
/// they stay in the outbox for the next start.
pub(crate) async fn run(
    hooks: Webhooks,
    notifier: Notifier,
    mut announced: mpsc::Receiver<Vec<OutboxEntry>>,
    shutdown: CancellationToken,
) {
    let config = &hooks.0.config;
    let client = match reqwest::Client::builder()
        .connect_timeout(config.timeout)
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Concord/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook HTTP client: no webhooks are sent");
            return;
        }
    };
    let debouncer = Debouncer::new(config.quiet, config.max_wait);
    // Subscribed before the outbox is read: a change stored in between is in both, never in
    // neither.
    let Notifier { mut changes, rooms } = notifier;
    let random = std::hash::RandomState::new();
    let shared = hooks.0.store.shared().then(|| SharedPart {
        holder: format!("{}-{:016x}", std::process::id(), random.hash_one(0u8)),
        leading_until: None,
        next_lease: Instant::now(),
        next_sweep: Instant::now(),
        edited: BTreeSet::new(),
        marks: HashMap::new(),
        state_vectors: HashMap::new(),
        failure_log: LogGate::new(FAILURE_LOG_EVERY),
    });
    let mut task = Task {
        hooks,
        rooms,
        client,
        debouncer,
        pending: BTreeMap::new(),
        leaving: HashSet::new(),
        queues: HashMap::new(),
        failure_log: LogGate::new(FAILURE_LOG_EVERY),
        attempts: JoinSet::new(),
        random,
        draws: 0,
        shared,
    };
    if task.shared.is_none() {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            started = task.start_alone() => if !started { return },
        }
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        task.launch();
        let wake = task.next_wake();
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Over a shared store, what was stored before the shutdown is noted (alone, the
                // next start catches up on it from the marks).
                if task.shared.is_some() {
                    while let Some(Some(Ok(change))) = changes.next().now_or_never() {
                        task.edited(&change.doc, change.position);
                    }
                }
                task.stop().await;
                return;
            }
            change = changes.next() => {
                // Take what is already queued too (up to a bound, so that a flood of edits
                // does not hold up deliveries), so that a log entry's updates are not split
                // between two events: marks are compared by seq.
                let mut next = Some(change);
                let mut taken = 0;
                while let Some(change) = next.take() {
                    match change {
                        Some(Ok(change)) => {
                            Counters::bump(&task.hooks.0.counters.webhook_updates_seen);
                            task.edited(&change.doc, change.position);
                        }
                        Some(Err(missed)) => {
                            tracing::warn!(missed, "the webhook notifier fell behind the change feed; catching up from the store");
                            task.missed().await;
                        }
                        None => return,
                    }
                    taken += 1;
                    if taken < DRAIN_AT_ONCE {
                        next = changes.next().now_or_never();
                    }
                }
            }
            // Over a shared store the lease holder takes them from the store's news, like those
            // of other processes (taking them here too could deliver one twice).
            Some(entries) = announced.recv() => if task.shared.is_none() { task.add(entries) },
            Some(done) = task.attempts.join_next(), if !task.attempts.is_empty() => {
                match done {
                    Ok((key, outcome)) => task.finished(key, outcome),
                    Err(error) => tracing::error!(%error, "a webhook delivery task failed"),
                }
            }
            _ = tick.tick() => if !task.turn().await { return },
            _ = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Task {
    fn store(&self) -> &dyn Store {
        self.hooks.0.store.as_ref()
    }

    /// [`Task::start`], tried until it works. False when the store keeps no outbox.
    async fn start_alone(&mut self) -> bool {
        loop {
            match self.start().await {
                Ok(()) => {
                    self.set_leading(true);
                    return true;
                }
                Err(StoreError::Unsupported(what)) => {
                    tracing::error!(
                        "webhooks are configured, but this store keeps no {what}: none will be sent"
                    );
                    return false;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start webhooks (reading the outbox, comparing documents with their marks); trying again");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
    }

    /// Loads the outbox and makes what was stored but not announced due.
    async fn start(&mut self) -> Result<(), StoreError> {
        let outbox = self.store().outbox().await?;
        let urls: HashSet<String> = self
            .hooks
            .0
            .config
            .urls
            .iter()
            .map(|url| url.to_string())
            .collect();
        let mut unwanted = Vec::new();
        let mut entries = Vec::new();
        for entry in outbox.entries {
            match serde_json::from_slice::<Delivery>(&entry.payload) {
                Ok(delivery) if urls.contains(&delivery.url) => entries.push(entry),
                Ok(delivery) => {
                    tracing::warn!(url = %delivery.url, event = %delivery.event, "dropping a pending webhook delivery to a receiver no longer configured");
                    unwanted.push(entry.key);
                }
                Err(error) => {
                    tracing::error!(key = %entry.key, %error, "dropping an unreadable webhook delivery");
                    unwanted.push(entry.key);
                }
            }
        }
        self.forget(unwanted);
        if !entries.is_empty() {
            tracing::info!(
                pending = entries.len(),
                "webhook deliveries left from before the start"
            );
        }
        self.add(entries);
        self.reconcile(&outbox.marks, outbox.started).await
    }

    /// Whether this process announces and delivers: always over a store of its own; over a
    /// shared one, while it holds the lease.
    fn leading(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| shared.leading_until.is_some())
    }

    /// `doc` was stored through `position` here.
    fn edited(&mut self, doc: &DocName, position: Position) {
        match &mut self.shared {
            Some(shared) => {
                if !shared.edited.contains(doc) {
                    shared.edited.insert(doc.clone());
                }
            }
            None => {
                let now = self.hooks.0.clock.now();
                self.debouncer.edited(doc, position, now);
            }
        }
    }

    /// Changes of the feed were missed.
    async fn missed(&mut self) {
        match &mut self.shared {
            // Which documents they were is lost: note every loaded one (the lease holder
            // announces only those whose log went past its mark), and the sweep finds the rest.
            Some(shared) => shared
                .edited
                .extend(self.rooms.loaded().iter().map(|room| room.name().clone())),
            None => self.catch_up().await,
        }
    }

    /// One tick: over a shared store, notes edits and takes or renews the lease (and, holding
    /// it, takes the news); then, leading, announces due bursts. False when webhooks cannot
    /// work over this store.
    async fn turn(&mut self) -> bool {
        self.remove_leaving().await;
        if self.shared.is_some() && !self.shared_turn().await {
            return false;
        }
        if self.leading() {
            let now = self.hooks.0.clock.now();
            let due = self.debouncer.due(now);
            if !due.is_empty() {
                self.announce_bursts(due).await;
            }
        }
        true
    }

    async fn shared_turn(&mut self) -> bool {
        let noted = self.note_edits().await;
        let store = self.hooks.0.store.clone();
        let Some(shared) = &mut self.shared else {
            return true;
        };
        match noted {
            Ok(()) => {}
            Err(StoreError::Unsupported(what)) => return cannot_share(what),
            Err(error) => {
                if let Some(unlogged) = shared.failure_log.pass() {
                    tracing::warn!(%error, unlogged, "cannot note edited documents for webhooks; trying again");
                }
            }
        }
        let now = Instant::now();
        if now >= shared.next_lease {
            shared.next_lease = now + LEASE_EVERY;
            match store.webhook_lease(&shared.holder, LEASE_TTL).await {
                Ok(true) => {
                    let took = shared.leading_until.is_none();
                    shared.leading_until = Some(now + LEASE_TTL);
                    if took {
                        shared.next_sweep = now + SWEEP_EVERY;
                        self.lead().await;
                    }
                }
                Ok(false) if shared.leading_until.is_some() => {
                    tracing::warn!("another process took the webhook lease: it delivers now");
                    self.step_down();
                }
                Ok(false) => {}
                Err(StoreError::Unsupported(what)) => return cannot_share(what),
                Err(error) => {
                    if let Some(unlogged) = shared.failure_log.pass() {
                        tracing::warn!(%error, unlogged, "cannot take or renew the webhook lease; trying again");
                    }
                }
            }
        }
        let Some(shared) = &mut self.shared else {
            return true;
        };
        match shared.leading_until {
            None => return true,
            Some(until) if Instant::now() >= until => {
                tracing::warn!(
                    "the webhook lease could not be renewed in time: another process delivers"
                );
                self.step_down();
                return true;
            }
            Some(_) => {}
        }
        if Instant::now() >= shared.next_sweep {
            shared.next_sweep = Instant::now() + SWEEP_EVERY;
            self.catch_up().await;
        }
        match store.webhook_news().await {
            Ok(news) => {
                let now = self.hooks.0.clock.now();
                if let Some(shared) = &mut self.shared {
                    for (doc, mark) in &news.edited {
                        shared.marks.insert(doc.clone(), *mark);
                    }
                }
                for (doc, _) in news.edited {
                    self.debouncer.edited(&doc, Position::START, now);
                }
                self.add(news.entries);
            }
            Err(error) => {
                tracing::error!(%error, "cannot read what other processes noted for webhooks; trying again")
            }
        }
        true
    }

    /// Removes what was delivered or dropped since the last tick from the outbox, in one
    /// write. When the store fails, they are tried again at the next tick (and delivered again
    /// after a restart).
    async fn remove_leaving(&mut self) {
        if self.leaving.is_empty() {
            return;
        }
        let keys: Vec<String> = self.leaving.iter().cloned().collect();
        match self.hooks.0.store.outbox_remove(keys).await {
            Ok(()) => self.leaving.clear(),
            Err(error) => {
                if let Some(unlogged) = self.failure_log.pass() {
                    tracing::error!(%error, unlogged, leaving = self.leaving.len(), "cannot remove delivered or dropped webhooks from the outbox; trying again");
                }
            }
        }
    }

    /// Took the lease: loads the outbox and catches up, as at a start.
    async fn lead(&mut self) {
        tracing::info!("this process holds the webhook lease: it announces and delivers");
        self.set_leading(true);
        if let Err(error) = self.start().await {
            tracing::error!(%error, "cannot start delivering webhooks; giving the lease up");
            self.step_down();
            self.give_up_lease().await;
        }
    }

    /// Over a shared store: gives the lease up (it passes when it expires if the store fails).
    async fn give_up_lease(&self) {
        if let Some(shared) = &self.shared {
            let _ = self
                .hooks
                .0
                .store
                .webhook_lease(&shared.holder, Duration::ZERO)
                .await;
        }
    }

    /// Over a shared store: notes the documents edited here since the last note.
    async fn note_edits(&mut self) -> Result<(), StoreError> {
        let store = self.hooks.0.store.clone();
        let Some(shared) = &mut self.shared else {
            return Ok(());
        };
        if !shared.edited.is_empty() {
            store
                .webhook_edited(shared.edited.iter().cloned().collect())
                .await?;
            shared.edited.clear();
        }
        Ok(())
    }

    fn set_leading(&self, leading: bool) {
        self.hooks
            .0
            .counters
            .webhook_leading
            .store(u64::from(leading), Ordering::Relaxed);
    }

    /// Lost the lease: forgets what it held (the outbox keeps it for the next holder) and
    /// abandons deliveries in progress.
    fn step_down(&mut self) {
        let config = &self.hooks.0.config;
        self.debouncer = Debouncer::new(config.quiet, config.max_wait);
        self.pending.clear();
        self.queues.clear();
        // Dropping the set aborts its tasks.
        self.attempts = JoinSet::new();
        if let Some(shared) = &mut self.shared {
            shared.leading_until = None;
            shared.marks.clear();
            shared.state_vectors.clear();
        }
        self.set_leading(false);
        self.update_gauge();
    }

    /// At shutdown: removes what was delivered from the outbox; over a shared store, also notes
    /// the last edits and gives the lease up, so that another process takes over at once.
    async fn stop(&mut self) {
        if tokio::time::timeout(STORE_RETRY, self.remove_leaving())
            .await
            .is_err()
        {
            tracing::warn!(
                "the store did not answer at shutdown: delivered webhooks still in the outbox are delivered again after the next start"
            );
        }
        if self.shared.is_none() {
            return;
        }
        let done = async {
            if let Err(error) = self.note_edits().await {
                tracing::warn!(%error, "cannot note the last edited documents for webhooks: they are announced at the lease holder's next sweep");
            }
            if self.leading() {
                self.give_up_lease().await;
            }
        };
        if tokio::time::timeout(STORE_RETRY, done).await.is_err() {
            tracing::warn!(
                "the store did not answer at shutdown: the webhook lease passes when it expires"
            );
        }
    }

    /// After missing changes: every document whose stored log passed its mark, and that has no
    /// burst pending here, gets one.
    async fn catch_up(&mut self) {
        let result = match self.store().outbox().await {
            Ok(outbox) => self.reconcile(&outbox.marks, true).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::error!(%error, "cannot catch up on missed changes: their documents are announced at their next edit or restart");
        }
    }

    /// Makes every stored document whose log goes past its mark due for an event from the
    /// mark on. On the outbox's first start, marks every document where it stands instead
    /// (documents stored before webhooks were configured are not announced), but those written
    /// within [`FIRST_START_GRACE_MS`], which are announced from their first entry.
    async fn reconcile(
        &mut self,
        marks: &BTreeMap<DocName, Position>,
        started: bool,
    ) -> Result<(), StoreError> {
        let mut baseline = Vec::new();
        let now = self.hooks.0.clock.now();
        for info in self.store().list().await? {
            let last = self.store().log_from(&info.name, u64::MAX).await?.last_seq;
            if last == 0 {
                continue;
            }
            let through = Position {
                seq: last,
                index: u32::MAX,
            };
            if !started && info.updated_at_ms.saturating_add(FIRST_START_GRACE_MS) < now {
                baseline.push((info.name, Some(through)));
                continue;
            }
            // A mark past the end of the log is one of an earlier document of that name,
            // deleted without its mark going (an offline delete, a race with a delete
            // elsewhere): this one is announced from its start.
            let mark = marks.get(&info.name).filter(|mark| mark.seq <= last);
            if mark.is_some_and(|mark| mark.seq >= last) || self.debouncer.has(&info.name) {
                continue;
            }
            let first = Position {
                seq: mark.map_or(1, |mark| mark.seq.saturating_add(1)),
                index: 0,
            };
            self.debouncer.edited(&info.name, first, now);
            self.debouncer.edited(&info.name, through, now);
            if let Some(shared) = &mut self.shared {
                shared.marks.insert(info.name, mark.copied());
            }
        }
        if !started {
            self.store().outbox_write(Vec::new(), baseline).await?;
        }
        Ok(())
    }

    /// Makes the `document.updated` events of `bursts` and stores them with the documents' new
    /// marks in one write, then delivers them. When the store fails, the bursts wait for
    /// another round.
    async fn announce_bursts(&mut self, bursts: Vec<Burst>) {
        let mut entries = Vec::new();
        let mut marks = Vec::new();
        let mut announced = Vec::new();
        for burst in bursts {
            match self.updated_event(&burst).await {
                Ok(Some((event, through))) => {
                    entries.extend(event);
                    marks.push((burst.doc.clone(), Some(through)));
                    announced.push(burst);
                }
                // Deleted since (its `document.deleted` event says so, and no mark is kept),
                // or, over a shared store, announced already.
                Ok(None) => {
                    if let Some(shared) = &mut self.shared {
                        shared.marks.remove(&burst.doc);
                    }
                }
                Err(error) => {
                    tracing::error!(doc = %burst.doc, %error, "cannot make a webhook event; trying again later");
                    self.retry_burst(&burst);
                }
            }
        }
        if announced.is_empty() {
            return;
        }
        match self.store().outbox_write(entries.clone(), marks).await {
            Ok(()) => {
                Counters::add(
                    &self.hooks.0.counters.webhook_events,
                    announced.len() as u64,
                );
                if let Some(shared) = &mut self.shared {
                    // The next news of these documents brings the marks just written.
                    for burst in &announced {
                        shared.marks.remove(&burst.doc);
                    }
                }
                self.add(entries);
            }
            Err(error) => {
                tracing::error!(%error, events = announced.len(), "cannot write webhook events to the outbox; trying again later");
                for burst in &announced {
                    self.retry_burst(burst);
                }
            }
        }
    }

    /// The outbox entries of the `document.updated` event of `burst`, and the position it
    /// announces through; `None` when the document is neither loaded nor stored any more.
    async fn updated_event(
        &mut self,
        burst: &Burst,
    ) -> Result<Option<(Vec<OutboxEntry>, Position)>, String> {
        let doc = &burst.doc;
        let (ends, state_vector) = match &self.shared {
            None => {
                if self.rooms.get(doc).is_none()
                    && !is_stored(self.store(), doc)
                        .await
                        .map_err(|e| e.to_string())?
                {
                    return Ok(None);
                }
                ((burst.first, burst.last), self.state_vector(doc).await?)
            }
            Some(_) => match self.shared_ends(doc).await? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        let fields = json!({
            "from": ends.0.to_string(),
            "through": ends.1.to_string(),
            // As the HTTP API's `sv` parameter takes it.
            "state_vector": encode_b64(&state_vector),
        });
        let now = self.hooks.0.clock.now();
        let entries = self
            .hooks
            .0
            .event("document.updated", doc, ends, now, fields);
        Ok(Some((entries, ends.1)))
    }

    /// Over a shared store: the ends of the next `document.updated` of `doc` (whole log
    /// entries, from the one after its mark through the last stored by any process: the feed
    /// here saw only this process' own) and its state vector then; `None` when nothing was
    /// stored past the mark. The state vector is the one of its previous event raised by the
    /// entries stored since (read from the store, which a room here may lag behind), or, when
    /// there is none to start from, the stored document's.
    async fn shared_ends(
        &mut self,
        doc: &DocName,
    ) -> Result<Option<((Position, Position), Vec<u8>)>, String> {
        let Some(shared) = &mut self.shared else {
            return Ok(None);
        };
        let mut mark = shared.marks.get(doc).copied().flatten();
        // Valid while the mark is where that event left it (a delete removes the mark).
        let mut cached = shared
            .state_vectors
            .get(doc)
            .filter(|(seq, _)| mark.is_some_and(|mark| mark.seq == *seq))
            .cloned();
        let store = self.hooks.0.store.clone();
        let read_from = cached.as_ref().map_or(u64::MAX, |(seq, _)| seq + 1);
        let tail = store
            .log_from(doc, read_from)
            .await
            .map_err(|e| e.to_string())?;
        if mark.is_some_and(|mark| mark.seq > tail.last_seq) {
            // Past the end of the log: the mark of an earlier document of that name (deleted
            // while its event was made): this one is announced from its start.
            mark = None;
            cached = None;
        }
        let first = mark.map_or(1, |mark| mark.seq.saturating_add(1));
        if tail.last_seq < first {
            return Ok(None);
        }
        let raised = match cached {
            Some((_, mut sv)) if tail.complete => tail
                .entries
                .iter()
                .flat_map(|(_, updates)| updates)
                .try_for_each(|update| raise_state_vector(&mut sv, update))
                .ok()
                .map(|()| (tail.last_seq, sv)),
            _ => None,
        };
        let (through, sv) = match raised {
            Some(raised) => raised,
            None => self.stored_state_vector(doc).await?,
        };
        let encoded = sv.encode_v1();
        if let Some(shared) = &mut self.shared {
            if shared.state_vectors.len() >= STATE_VECTORS_KEPT {
                shared.state_vectors.clear();
            }
            shared.state_vectors.insert(doc.clone(), (through, sv));
        }
        let ends = (
            Position {
                seq: first,
                index: 0,
            },
            Position {
                seq: through.max(tail.last_seq),
                index: u32::MAX,
            },
        );
        Ok(Some((ends, encoded)))
    }

    fn retry_burst(&mut self, burst: &Burst) {
        let now = self.hooks.0.clock.now();
        self.debouncer.edited(&burst.doc, burst.first, now);
        self.debouncer.edited(&burst.doc, burst.last, now);
    }

    /// The document's state vector (Yjs v1): from its room when loaded, else from the store.
    async fn state_vector(&self, doc: &DocName) -> Result<Vec<u8>, String> {
        if let Some(room) = self.rooms.get(doc) {
            return Ok(room.state_vector());
        }
        Ok(self.stored_state_vector(doc).await?.1.encode_v1())
    }

    /// The stored document's state vector, and the seq of the last log entry it holds (or its
    /// snapshot covers).
    async fn stored_state_vector(&self, doc: &DocName) -> Result<(Seq, StateVector), String> {
        let stored = self.store().load(doc).await.map_err(|e| e.to_string())?;
        let name = doc.clone();
        tokio::task::spawn_blocking(move || {
            let room = rebuild(&name, &stored).map_err(|e| e.to_string())?;
            Ok((stored.position.seq, room.doc().transact().state_vector()))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Takes deliveries in (due now), dropping the oldest past [`WebhookConfig::max_pending`].
    fn add(&mut self, entries: Vec<OutboxEntry>) {
        let now = Instant::now();
        for entry in entries {
            match serde_json::from_slice::<Delivery>(&entry.payload) {
                // A key already pending is the same delivery (the key names the event, its
                // time and the receiver).
                Ok(_) if self.pending.contains_key(&entry.key) => {}
                // Delivered or dropped; its removal from the outbox is on its way.
                Ok(_) if self.leaving.contains(&entry.key) => {}
                Ok(delivery) => {
                    let queue = self.queues.entry(delivery.url.clone()).or_default();
                    queue.waiting.insert((now, entry.key.clone()));
                    let pending = Pending {
                        delivery,
                        attempts: 0,
                        next_at: now,
                        in_flight: false,
                    };
                    self.pending.insert(entry.key, pending);
                }
                Err(error) => {
                    tracing::error!(key = %entry.key, %error, "an unreadable webhook delivery")
                }
            }
        }
        let over = self
            .pending
            .len()
            .saturating_sub(self.hooks.0.config.max_pending);
        if over > 0 {
            let doomed: Vec<String> = self
                .pending
                .iter()
                .filter(|(_, pending)| !pending.in_flight)
                .map(|(key, _)| key.clone())
                .take(over)
                .collect();
            for key in &doomed {
                if let Some(dropped) = self.pending.remove(key) {
                    self.unqueue(&dropped, key);
                    tracing::error!(url = %dropped.delivery.url, event = %dropped.delivery.event, "webhook outbox full: dropping its oldest delivery");
                }
            }
            self.forget(doomed);
        }
        self.update_gauge();
    }

    /// Removes deliveries given up from the store, in the background of this task.
    fn forget(&mut self, keys: Vec<String>) {
        Counters::add(&self.hooks.0.counters.webhook_dropped, keys.len() as u64);
        self.leaving.extend(keys);
    }

    fn update_gauge(&self) {
        self.hooks
            .0
            .counters
            .webhook_pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Takes `key` (pending as `pending`) out of its receiver's waiting line.
    fn unqueue(&mut self, pending: &Pending, key: &str) {
        if let Some(queue) = self.queues.get_mut(&pending.delivery.url) {
            queue.waiting.remove(&(pending.next_at, key.to_owned()));
        }
    }

    /// Starts due deliveries, at most [`MAX_IN_FLIGHT`] in progress per receiver.
    fn launch(&mut self) {
        let now = Instant::now();
        for queue in self.queues.values_mut() {
            while queue.in_flight < MAX_IN_FLIGHT
                && queue.waiting.first().is_some_and(|(at, _)| *at <= now)
            {
                let Some((_, key)) = queue.waiting.pop_first() else {
                    break;
                };
                let Some(pending) = self.pending.get_mut(&key) else {
                    continue;
                };
                pending.in_flight = true;
                queue.in_flight += 1;
                let request = Request {
                    client: self.client.clone(),
                    secret: self.hooks.0.config.secret.clone(),
                    delivery: pending.delivery.clone(),
                    now_s: self.hooks.0.clock.now() / 1_000,
                };
                self.attempts
                    .spawn(async move { (key, request.send().await) });
            }
        }
    }

    /// When the next waiting delivery of a receiver with a free slot is due.
    fn next_wake(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|queue| queue.in_flight < MAX_IN_FLIGHT)
            .filter_map(|queue| queue.waiting.first().map(|(at, _)| *at))
            .min()
    }

    /// Removes a delivered (or given up) delivery from the outbox, or schedules its retry.
    fn finished(&mut self, key: String, outcome: Result<(), String>) {
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.in_flight = false;
            if let Some(queue) = self.queues.get_mut(&pending.delivery.url) {
                queue.in_flight = queue.in_flight.saturating_sub(1);
            }
        }
        let counters = self.hooks.0.counters.clone();
        match outcome {
            Ok(()) => {
                Counters::bump(&counters.webhook_delivered);
                self.pending.remove(&key);
                self.leaving.insert(key);
            }
            Err(why) => {
                Counters::bump(&counters.webhook_failures);
                self.draws = self.draws.wrapping_add(1);
                let random = self.random.hash_one(self.draws);
                let now = self.hooks.0.clock.now();
                let retry = self.hooks.0.config.retry;
                let Some(pending) = self.pending.get_mut(&key) else {
                    return;
                };
                match retry.delay(
                    pending.attempts,
                    pending.delivery.created_at_ms,
                    now,
                    random,
                ) {
                    Some(delay) => {
                        match self.failure_log.pass() {
                            Some(unlogged) => {
                                tracing::warn!(url = %pending.delivery.url, event = %pending.delivery.event, attempt = pending.attempts + 1, error = %why, retry_in = ?delay, unlogged, "webhook delivery failed")
                            }
                            None => {
                                tracing::debug!(url = %pending.delivery.url, event = %pending.delivery.event, attempt = pending.attempts + 1, error = %why, retry_in = ?delay, "webhook delivery failed")
                            }
                        }
                        pending.attempts = pending.attempts.saturating_add(1);
                        pending.next_at = Instant::now() + delay;
                        self.queues
                            .entry(pending.delivery.url.clone())
                            .or_default()
                            .waiting
                            .insert((pending.next_at, key));
                    }
                    None => {
                        tracing::error!(url = %pending.delivery.url, event = %pending.delivery.event, attempts = pending.attempts + 1, error = %why, "webhook delivery given up");
                        self.pending.remove(&key);
                        self.forget(vec![key]);
                    }
                }
            }
        }
        self.update_gauge();
    }
}

/// One attempt.
struct Request {
    client: reqwest::Client,
    secret: Arc<[u8]>,
    delivery: Delivery,
    now_s: u64,
}

impl Request {
    /// POSTs the event; only a 2xx answer counts as delivered (redirects are not followed).
    async fn send(self) -> Result<(), String> {
        let body = self.delivery.body.into_bytes();
        let signature = webhook::sign(&self.secret, self.now_s, &body);
        let response = self
            .client
            .post(&self.delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhook::EVENT_ID_HEADER, &self.delivery.event)
            .header(webhook::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// An error with its sources, as reqwest's own message says little ("error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_receivers_with_a_secret_are_accepted() {
        let ok = WebhookConfig::new(["http://127.0.0.1:9/a", "HTTPS://hooks.example/b"], "s");
        assert_eq!(
            ok.unwrap().urls(),
            ["http://127.0.0.1:9/a", "https://hooks.example/b"]
        );
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "ws://x/",
            "javascript:alert(1)",
        ] {
            assert_eq!(
                WebhookConfig::new([bad], "s").unwrap_err(),
                WebhookError::Scheme(bad.to_owned())
            );
        }
        assert!(matches!(
            WebhookConfig::new(["/relative"], "s"),
            Err(WebhookError::BadUrl { .. })
        ));
        assert_eq!(
            WebhookConfig::new(Vec::<String>::new(), "s").unwrap_err(),
            WebhookError::NoUrls
        );
        assert_eq!(
            WebhookConfig::new(["http://x/"], "").unwrap_err(),
            WebhookError::EmptySecret
        );
        let shown = format!("{:?}", WebhookConfig::new(["http://x/"], "hidden").unwrap());
        assert!(!shown.contains("hidden"), "{shown}");
    }
}
