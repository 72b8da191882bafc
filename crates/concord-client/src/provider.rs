//! The provider: one document, one connection task that connects, syncs, relays local edits
//! and awareness, and reconnects with backoff; see the [crate documentation](crate).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use concord_core::{DocName, MSG_SAVED, encode_saved};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{Awareness, AwarenessUpdate, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Origin, ReadTxn, StateVector, Transact, Update};

use crate::local::LocalStore;
use crate::lock;
use crate::presence::Presence;

/// The transaction origin of updates that came from the server: they are not sent back.
const REMOTE: &str = "concord-client-remote";

/// Where a provider stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Opening a connection.
    Connecting,
    /// Connected; the sync exchange is under way.
    Connected,
    /// Connected, and the server's state has arrived (SyncStep2).
    Synced,
    /// Not connected; `reason` says why. A new attempt follows after the backoff delay unless
    /// the provider was closed.
    Disconnected {
        /// Why the last connection ended or the last attempt failed.
        reason: String,
    },
}

/// Whether the server sends Concord's save acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckSupport {
    /// Not known yet (no save request was answered or timed out).
    Unknown,
    /// The server acknowledges saves.
    Yes,
    /// A save request went unanswered for `ProviderConfig::save_ack_timeout`: the server does
    /// not speak this extension (a plain y-websocket server). Edits are still sent; only
    /// their durability is unknown.
    No,
}

/// Whether local edits are durably stored on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveState {
    /// Some local edit has not been acknowledged as durable.
    pub unsaved: bool,
    /// Whether acknowledgements come at all.
    pub acks: AckSupport,
    /// The server refused this client's edits on the current connection (the token grants
    /// read-only access): they stay unsaved, acknowledgements notwithstanding, and
    /// [`Provider::wait_saved`] fails. See [`Provider::refusal`] for the server's reason.
    pub refused: bool,
}

/// The server refused this client's edits (see [`SaveState::refused`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server refuses this client's edits: {reason}")]
pub struct EditsRefused {
    /// What the server said, or a generic reason if it gave none.
    pub reason: String,
}

/// See `ProviderConfig::fail_attempt`.
#[doc(hidden)]
pub type FailAttempt = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Gives a token before each connection attempt (a fresh one, typically).
pub type TokenSource = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// How reconnection waits: exponential backoff from `min_delay`, times `factor` per failed
/// attempt, at most `max_delay`, each delay plus a random jitter of up to itself when `jitter`
/// is set; reset to `min_delay` after a connection that lasted `reset_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnect {
    /// First delay.
    pub min_delay: Duration,
    /// Cap.
    pub max_delay: Duration,
    /// Growth per attempt.
    pub factor: f32,
    /// Add a random jitter (recommended, so clients do not all come back at once).
    pub jitter: bool,
    /// Seed of the jitter, for reproducible schedules.
    pub seed: Option<u64>,
    /// A connection that lasted this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: true,
            seed: None,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Reconnect {
    /// The delays before successive attempts, forever.
    fn schedule(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut builder = backon::ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
            if let Some(seed) = self.seed {
                builder = builder.with_jitter_seed(seed);
            }
        }
        // backon computes in f32 (200 ms comes out as 200.000003 ms): whole milliseconds.
        builder
            .build()
            .map(|d| Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

/// Where a provider is in its reconnection schedule.
struct Backoff {
    reconnect: Reconnect,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Backoff {
    fn new(reconnect: Reconnect) -> Backoff {
        let delays = Box::new(reconnect.schedule());
        Backoff { reconnect, delays }
    }

    /// The delay before the next attempt.
    fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.reconnect.max_delay)
    }

    /// A connection ended after `lasted`: a stable one starts the schedule again.
    fn connection_lasted(&mut self, lasted: Duration) {
        if lasted >= self.reconnect.reset_after {
            self.delays = Box::new(self.reconnect.schedule());
        }
    }
}

/// Everything a provider can be told.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The server, `ws://host:port` or with a path prefix `ws://host/collab`.
    pub url: String,
    /// The document name (percent-encoded into the URL path by the provider).
    pub doc: String,
    /// Asked for a token before each attempt; it goes in the `token` query parameter.
    pub token: Option<TokenSource>,
    /// Reconnection backoff.
    pub reconnect: Reconnect,
    /// A directory for the offline store: the document's updates are kept there and read back
    /// at start. `None`: in memory only.
    pub store_dir: Option<PathBuf>,
    /// The yrs client id of the local document (random when `None`).
    pub client_id: Option<u64>,
    /// How often the local awareness state is renewed (the JS clients renew every 15 s and
    /// drop states not renewed for 30 s).
    pub awareness_renewal: Duration,
    /// How long after [`Provider::typing`] the typing flag clears by itself.
    pub typing_timeout: Duration,
    /// A connection on which nothing arrived for this long is considered dead and replaced
    /// (the server sends something at least every 15 s).
    pub silence_timeout: Duration,
    /// A save request unanswered for this long means the server does not acknowledge saves.
    pub save_ack_timeout: Duration,
    /// For tests: called with the URL before each attempt; `Some(reason)` fails the attempt at
    /// once, without any I/O.
    #[doc(hidden)]
    pub fail_attempt: Option<FailAttempt>,
}

impl ProviderConfig {
    /// The defaults, for document `doc` on server `url`.
    pub fn new(url: impl Into<String>, doc: impl Into<String>) -> ProviderConfig {
        ProviderConfig {
            url: url.into(),
            doc: doc.into(),
            token: None,
            reconnect: Reconnect::default(),
            store_dir: None,
            client_id: None,
            awareness_renewal: Duration::from_secs(15),
            typing_timeout: Duration::from_secs(3),
            silence_timeout: Duration::from_secs(30),
            save_ack_timeout: Duration::from_secs(10),
            fail_attempt: None,
        }
    }
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("url", &self.url)
            .field("doc", &self.doc)
            .field("token", &self.token.as_ref().map(|_| "set"))
            .field("reconnect", &self.reconnect)
            .field("store_dir", &self.store_dir)
            .finish_non_exhaustive()
    }
}

/// Why a provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The document name is not one a server accepts.
    #[error("invalid document name: {0}")]
    DocName(#[from] concord_core::InvalidDocName),
    /// The offline store could not be opened or read.
    #[error("the local store failed: {0}")]
    LocalStore(String),
    /// The URL is not `ws://` or `wss://`.
    #[error("not a WebSocket URL: {0}")]
    Url(String),
    /// The server refuses this client's edits.
    #[error(transparent)]
    Refused(#[from] EditsRefused),
}

/// A change in the peers' awareness.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A peer appeared, with its state.
    Joined(u64, serde_json::Value),
    /// A peer's state changed.
    Updated(u64, serde_json::Value),
    /// A peer left (or its state expired, or the connection to the server ended).
    Left(u64),
}

/// A document kept in sync with a server. See the [crate documentation](crate).
pub struct Provider {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    config: ProviderConfig,
    name: DocName,
    doc: Doc,
    awareness: Mutex<Awareness>,
    status: watch::Sender<Status>,
    /// Every status change, for those who must see each one (the watch keeps the latest).
    transitions: broadcast::Sender<Status>,
    save: watch::Sender<SaveState>,
    /// Why the server refused edits on the current connection (with `SaveState::refused`).
    refusal: Mutex<Option<String>>,
    /// Local updates not sent yet.
    outbox: Mutex<Vec<Vec<u8>>>,
    /// Something to send: local updates, or a change of the local awareness state.
    wake: Notify,
    awareness_dirty: AtomicBool,
    /// Local updates made so far, and how many of them the server acknowledged as durable.
    local_edits: AtomicU64,
    acked: AtomicU64,
    /// When the typing flag clears by itself.
    typing_until: Mutex<Option<Instant>>,
    peers: broadcast::Sender<PeerEvent>,
    store: Option<LocalStore>,
    shutdown: CancellationToken,
}

/// The key of the provider's update observer on the document.
const OBSERVER: &str = "concord-client";

impl Provider {
    /// Opens the local store (if configured), applies what it holds, and starts connecting.
    pub async fn start(config: ProviderConfig) -> Result<Provider, ClientError> {
        if !(config.url.starts_with("ws://") || config.url.starts_with("wss://")) {
            return Err(ClientError::Url(config.url.clone()));
        }
        let name = DocName::new(&config.doc)?;
        let doc = match config.client_id {
            Some(id) => Doc::with_client_id(id),
            None => Doc::new(),
        };
        let store = match &config.store_dir {
            Some(dir) => {
                let (dir, name_, doc_) = (dir.clone(), name.clone(), doc.clone());
                let opened =
                    tokio::task::spawn_blocking(move || LocalStore::open(&dir, &name_, &doc_))
                        .await
                        .map_err(|e| ClientError::LocalStore(e.to_string()))?
                        .map_err(ClientError::LocalStore)?;
                Some(opened)
            }
            None => None,
        };
        // Edits restored from the local store may not be on the server: unsaved until the
        // first sync is acknowledged.
        let restored = doc.transact().state_vector() != StateVector::default();
        let (status, _) = watch::channel(Status::Connecting);
        let (save, _) = watch::channel(SaveState {
            unsaved: restored,
            acks: AckSupport::Unknown,
            refused: false,
        });
        let shared = Arc::new(Shared {
            name,
            awareness: Mutex::new(Awareness::new(doc.clone())),
            doc,
            status,
            transitions: broadcast::channel(64).0,
            save,
            refusal: Mutex::new(None),
            outbox: Mutex::new(Vec::new()),
            wake: Notify::new(),
            awareness_dirty: AtomicBool::new(false),
            local_edits: AtomicU64::new(u64::from(restored)),
            acked: AtomicU64::new(0),
            typing_until: Mutex::new(None),
            peers: broadcast::channel(256).0,
            store,
            shutdown: CancellationToken::new(),
            config,
        });
        {
            // The observer holds a weak handle: the document must not keep the provider alive.
            let weak = Arc::downgrade(&shared);
            shared
                .doc
                .observe_update_v1(OBSERVER, move |txn, event| {
                    let Some(shared) = weak.upgrade() else { return };
                    if let Some(store) = &shared.store {
                        store.pending.push(event.update.clone());
                    }
                    if txn.origin() != Some(&Origin::from(REMOTE)) {
                        crate::push_merging(&mut lock(&shared.outbox), event.update.clone());
                        shared.local_edits.fetch_add(1, Ordering::AcqRel);
                        shared.save.send_modify(|s| s.unsaved = true);
                        shared.wake.notify_one();
                    }
                })
                .map_err(|e| ClientError::LocalStore(e.to_string()))?;
        }
        let mut tasks = vec![tokio::spawn(run(shared.clone()))];
        if shared.store.is_some() {
            let store_shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                if let Some(store) = &store_shared.store {
                    store.run(store_shared.doc.clone()).await;
                }
            }));
        }
        Ok(Provider {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// The document. Edit it with yrs transactions: every change is applied locally at once
    /// and sent to the server.
    pub fn doc(&self) -> Doc {
        self.shared.doc.clone()
    }

    /// The provider's status, as it changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Every status change from now on, in order (a subscriber more than 64 changes behind
    /// loses the oldest); [`Provider::status`] gives the latest only.
    pub fn status_changes(&self) -> broadcast::Receiver<Status> {
        self.shared.transitions.subscribe()
    }

    /// Whether local edits are durable on the server, as it changes.
    pub fn save_state(&self) -> watch::Receiver<SaveState> {
        self.shared.save.subscribe()
    }

    /// True while some local edit has not been acknowledged as durable by the server.
    pub fn has_unsaved_changes(&self) -> bool {
        self.shared.save.borrow().unsaved
    }

    /// Waits until the provider is synced with the server.
    pub async fn wait_synced(&self) {
        let mut status = self.status();
        let _ = status.wait_for(|s| *s == Status::Synced).await;
    }

    /// Waits until every local edit is durable on the server, or the server turns out not to
    /// acknowledge saves (then returns at once: see [`AckSupport::No`]). Fails if the server
    /// refuses this client's edits (a read-only token): they will not be saved on this
    /// connection, however long one waits.
    pub async fn wait_saved(&self) -> Result<(), EditsRefused> {
        let mut save = self.save_state();
        let state = match save
            .wait_for(|s| !s.unsaved || s.acks == AckSupport::No || s.refused)
            .await
        {
            Ok(state) => *state,
            Err(_) => return Ok(()),
        };
        if state.refused && state.unsaved {
            return Err(EditsRefused {
                reason: self
                    .refusal()
                    .unwrap_or_else(|| "no reason given".to_owned()),
            });
        }
        Ok(())
    }

    /// Why the server refused this client's edits on the current connection, if it did.
    pub fn refusal(&self) -> Option<String> {
        if self.shared.save.borrow().refused {
            lock(&self.shared.refusal).clone()
        } else {
            None
        }
    }

    /// The client id other clients see this provider's awareness under.
    pub fn client_id(&self) -> u64 {
        self.shared.doc.client_id().get()
    }

    /// Sets the local awareness state.
    pub fn set_presence(&self, presence: &Presence) {
        self.set_local_state(serde_json::to_value(presence).unwrap_or_default());
    }

    /// Changes the local awareness state in place (starting from the default presence).
    pub fn update_presence(&self, change: impl FnOnce(&mut Presence)) {
        let mut presence = self.presence().unwrap_or_default();
        change(&mut presence);
        self.set_presence(&presence);
    }

    /// The local awareness state, if it is a presence.
    pub fn presence(&self) -> Option<Presence> {
        lock(&self.shared.awareness).local_state()
    }

    /// Marks the user as typing; the flag clears by itself after the typing timeout unless
    /// this is called again.
    pub fn typing(&self) {
        *lock(&self.shared.typing_until) = Some(Instant::now() + self.shared.config.typing_timeout);
        if !self.presence().is_some_and(|p| p.typing) {
            self.update_presence(|p| p.typing = true);
        }
        self.shared.wake.notify_one();
    }

    /// Sets the local awareness state to any JSON value (`null` removes it).
    pub fn set_local_state(&self, state: serde_json::Value) {
        {
            let mut awareness = lock(&self.shared.awareness);
            if state.is_null() {
                awareness.clean_local_state();
            } else {
                awareness.set_local_state_raw(state.to_string());
            }
        }
        self.shared.awareness_dirty.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// The other clients' awareness states, by client id.
    pub fn peers(&self) -> HashMap<u64, serde_json::Value> {
        let own = self.client_id();
        lock(&self.shared.awareness)
            .iter()
            .filter(|(id, _)| id.get() != own)
            .filter_map(|(id, state)| {
                let json = state.data.as_deref()?;
                let value: serde_json::Value = serde_json::from_str(json).ok()?;
                (!value.is_null()).then_some((id.get(), value))
            })
            .collect()
    }

    /// Peers joining, changing and leaving, from now on.
    pub fn peer_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.peers.subscribe()
    }

    /// Clears the local awareness state (sent to the server when connected), closes the
    /// connection, and writes what is queued to the local store.
    pub async fn close(self) {
        self.shared.shutdown.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.tasks));
        if let Some(store) = &self.shared.store {
            store.close();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Shared {
    fn set_status(&self, status: Status) {
        let _ = self.transitions.send(status.clone());
        self.status.send_replace(status);
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // The document may outlive the provider: it no longer reports to it.
        let _ = self.shared.doc.unobserve_update_v1(OBSERVER);
        self.shared.shutdown.cancel();
        if let Some(store) = &self.shared.store {
            store.close();
        }
    }
}

/// Connects, serves the connection, waits, again, until the provider is closed.
async fn run(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(shared.config.reconnect.clone());
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        shared.set_status(Status::Connecting);
        let token = match &shared.config.token {
            Some(source) => source().await,
            None => None,
        };
        let connected = tokio::select! {
            connected = connect(&shared, token.as_deref()) => connected,
            _ = shared.shutdown.cancelled() => return,
        };
        let reason = match connected {
            Ok(ws) => {
                let opened = Instant::now();
                // A refusal holds for the connection it came on (the next token may grant more).
                shared
                    .save
                    .send_if_modified(|s| std::mem::replace(&mut s.refused, false));
                shared.set_status(Status::Connected);
                let reason = session(&shared, ws).await;
                forget_peers(&shared);
                backoff.connection_lasted(opened.elapsed());
                reason
            }
            Err(reason) => reason,
        };
        if shared.shutdown.is_cancelled() {
            shared.set_status(Status::Disconnected {
                reason: "closed".into(),
            });
            return;
        }
        tracing::debug!(doc = %shared.name, %reason, "disconnected");
        shared.set_status(Status::Disconnected { reason });
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The document's URL: the server URL, the percent-encoded name, the token.
fn document_url(base: &str, doc: &DocName, token: Option<&str>) -> String {
    // Slashes stay slashes: the server reads the whole path as the name.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    let mut url = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(doc.as_str(), SEGMENT)
    );
    if let Some(token) = token {
        url.push_str("?token=");
        url.push_str(
            &percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    url
}

async fn connect(shared: &Shared, token: Option<&str>) -> Result<Ws, String> {
    let url = document_url(&shared.config.url, &shared.name, token);
    if let Some(reason) = shared
        .config
        .fail_attempt
        .as_ref()
        .and_then(|fail| fail(&url))
    {
        return Err(reason);
    }
    match tokio::time::timeout(
        shared.config.silence_timeout,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    {
        Ok(Ok((ws, _response))) => {
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                let _ = tcp.set_nodelay(true);
            }
            Ok(ws)
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => Err(format!(
            "the server refused the connection: {} {}",
            response.status(),
            response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        )),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err("connecting timed out".into()),
    }
}

fn binary(message: &Message) -> WsMessage {
    WsMessage::Binary(message.encode_v1().into())
}

/// One connection, from the handshake to its end; returns why it ended.
async fn session(shared: &Arc<Shared>, ws: Ws) -> String {
    let (mut sink, mut stream) = ws.split();
    // The local state vector: the server answers with what it has that we lack.
    let sv = shared.doc.transact().state_vector();
    let mut opening = vec![binary(&Message::Sync(SyncMessage::SyncStep1(sv)))];
    if let Some(update) = local_awareness(shared) {
        opening.push(binary(&Message::Awareness(update)));
    }
    // Updates queued before this connection are in the SyncStep2 the server's SyncStep1 gets.
    lock(&shared.outbox).clear();
    shared.awareness_dirty.store(false, Ordering::Release);
    for message in opening {
        if let Err(e) = sink.send(message).await {
            return format!("sending failed: {e}");
        }
    }
    let mut renew = tokio::time::interval_at(
        Instant::now() + shared.config.awareness_renewal,
        shared.config.awareness_renewal,
    );
    // The oldest save request not answered yet, and when it was sent.
    let mut unanswered: Option<(u64, Instant)> = None;
    let mut last_heard = Instant::now();
    loop {
        let typing_deadline = *lock(&shared.typing_until);
        let ack_deadline = unanswered.map(|(_, sent)| sent + shared.config.save_ack_timeout);
        let mut out = Vec::new();
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                // Tell the others this client is gone, then close.
                lock(&shared.awareness).clean_local_state();
                if let Some(update) = local_awareness(shared) {
                    let _ = sink.send(binary(&Message::Awareness(update))).await;
                }
                let _ = sink.close().await;
                return "closed".into();
            }
            message = stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(WsMessage::Binary(data))) => {
                        match handle(shared, &data, &mut out, &mut unanswered) {
                            Ok(()) => {}
                            Err(reason) => return reason,
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return match frame {
                            Some(frame) => format!("closed by the server: {} {}", u16::from(frame.code), frame.reason),
                            None => "closed by the server".into(),
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return format!("connection failed: {e}"),
                    None => return "connection ended".into(),
                }
            }
            _ = shared.wake.notified() => {}
            _ = renew.tick() => {
                // Renew the local state (same content, newer clock) before the 30 s expiry.
                let mut awareness = lock(&shared.awareness);
                if let Some(state) = awareness.local_state_raw() {
                    awareness.set_local_state_raw(state);
                    shared.awareness_dirty.store(true, Ordering::Release);
                }
            }
            _ = sleep_until(typing_deadline) => {
                *lock(&shared.typing_until) = None;
                let mut awareness = lock(&shared.awareness);
                if let Some(mut presence) = awareness.local_state::<Presence>() && presence.typing {
                    presence.typing = false;
                    if let Ok(json) = serde_json::to_string(&presence) {
                        awareness.set_local_state_raw(json);
                        shared.awareness_dirty.store(true, Ordering::Release);
                    }
                }
            }
            _ = sleep_until(ack_deadline) => {
                shared.save.send_modify(|s| if s.acks == AckSupport::Unknown { s.acks = AckSupport::No });
                unanswered = None;
            }
            _ = tokio::time::sleep_until(last_heard + shared.config.silence_timeout) => {
                return format!("nothing from the server for {:?}", shared.config.silence_timeout);
            }
        }
        // Local edits, then a save request covering them.
        let updates = std::mem::take(&mut *lock(&shared.outbox));
        if !updates.is_empty() {
            for update in updates {
                out.push(binary(&Message::Sync(SyncMessage::Update(update))));
            }
            out.push(save_request(shared, &mut unanswered));
        }
        if shared.awareness_dirty.swap(false, Ordering::AcqRel)
            && let Some(update) = local_awareness(shared)
        {
            out.push(binary(&Message::Awareness(update)));
        }
        for message in out {
            if let Err(e) = sink.send(message).await {
                return format!("sending failed: {e}");
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A save request covering every local edit made so far.
fn save_request(shared: &Shared, unanswered: &mut Option<(u64, Instant)>) -> WsMessage {
    let id = shared.local_edits.load(Ordering::Acquire);
    if unanswered.is_none() {
        *unanswered = Some((id, Instant::now()));
    }
    WsMessage::Binary(encode_saved(id))
}

/// The local awareness state as an update, if the awareness has a local entry.
fn local_awareness(shared: &Shared) -> Option<AwarenessUpdate> {
    let awareness = lock(&shared.awareness);
    let own = awareness.client_id();
    awareness.update_with_clients([own]).ok()
}

/// Handles one frame from the server, queueing answers in `out`.
fn handle(
    shared: &Arc<Shared>,
    data: &[u8],
    out: &mut Vec<WsMessage>,
    unanswered: &mut Option<(u64, Instant)>,
) -> Result<(), String> {
    // What the server sends is checked like what clients send it: no length or count from the
    // wire reaches a yrs decoder unchecked.
    concord_core::validate::validate_frame(data)
        .map_err(|e| format!("the server sent a malformed message: {e}"))?;
    let mut decoder = DecoderV1::new(Cursor::new(data));
    for message in MessageReader::new(&mut decoder) {
        let message = message.map_err(|e| format!("the server sent a malformed message: {e}"))?;
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let update = shared.doc.transact().encode_state_as_update_v1(&sv);
                out.push(binary(&Message::Sync(SyncMessage::SyncStep2(update))));
                // The SyncStep2 carries every local edit the server lacks: ask for its ack.
                if shared.local_edits.load(Ordering::Acquire) > shared.acked.load(Ordering::Acquire)
                {
                    out.push(save_request(shared, unanswered));
                }
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                apply_remote(shared, &update)?;
                shared.set_status(Status::Synced);
            }
            Message::Sync(SyncMessage::Update(update)) => apply_remote(shared, &update)?,
            Message::Awareness(update) => apply_awareness(shared, update),
            Message::AwarenessQuery => {
                if let Some(update) = local_awareness(shared) {
                    out.push(binary(&Message::Awareness(update)));
                }
            }
            Message::Auth(reason) => {
                // The only Auth message a server sends a connected client refuses its edits
                // (y-protocols' "permission denied"; Concord's read-only access).
                let reason = reason.unwrap_or_else(|| "permission denied".to_owned());
                tracing::warn!(doc = %shared.name, %reason, "the server refuses this client's edits");
                *lock(&shared.refusal) = Some(reason);
                shared.save.send_modify(|s| s.refused = true);
            }
            Message::Custom(MSG_SAVED, payload) => {
                let id = Cursor::new(&payload)
                    .read_var::<u64>()
                    .map_err(|e| format!("malformed save acknowledgement: {e}"))?;
                let acked = shared.acked.fetch_max(id, Ordering::AcqRel).max(id);
                if unanswered.is_some_and(|(waiting, _)| waiting <= id) {
                    *unanswered = None;
                }
                let all = acked >= shared.local_edits.load(Ordering::Acquire);
                shared.save.send_modify(|s| {
                    s.acks = AckSupport::Yes;
                    // The server answers save requests on a connection whose edits it refused
                    // too: the acknowledgement covers what it accepted, which is none of them.
                    if all && !s.refused {
                        s.unsaved = false;
                    }
                });
            }
            Message::Custom(_, _) => {}
        }
    }
    Ok(())
}

fn apply_remote(shared: &Shared, update: &[u8]) -> Result<(), String> {
    let update = Update::decode_v1(update)
        .map_err(|e| format!("the server sent a malformed update: {e}"))?;
    let mut txn = shared.doc.transact_mut_with(REMOTE);
    txn.apply_update(update)
        .map_err(|e| format!("the server sent an update yrs refused: {e}"))
}

fn apply_awareness(shared: &Shared, update: AwarenessUpdate) {
    let own = shared.doc.client_id();
    let summary = {
        let mut awareness = lock(&shared.awareness);
        match awareness.apply_update_summary(update) {
            Ok(Some(summary)) => summary,
            _ => return,
        }
    };
    let awareness = lock(&shared.awareness);
    let state = |id| {
        awareness
            .iter()
            .find(|(client, _)| *client == id)
            .and_then(|(_, s)| s.data.as_deref().and_then(|j| serde_json::from_str(j).ok()))
            .unwrap_or(serde_json::Value::Null)
    };
    for &id in &summary.added {
        if id != own {
            let _ = shared.peers.send(PeerEvent::Joined(id.get(), state(id)));
        }
    }
    for &id in &summary.updated {
        if id != own {
            let _ = shared.peers.send(PeerEvent::Updated(id.get(), state(id)));
        }
    }
    for &id in &summary.removed {
        if id != own {
            let _ = shared.peers.send(PeerEvent::Left(id.get()));
        }
    }
}

/// When the connection ends, the peers' states go (as y-websocket does): they come back with
/// the next connection's awareness.
fn forget_peers(shared: &Shared) {
    let own = shared.doc.client_id();
    let mut awareness = lock(&shared.awareness);
    let others: Vec<_> = awareness
        .iter()
        .filter(|(id, state)| *id != own && state.data.is_some())
        .map(|(id, _)| id)
        .collect();
    for id in others {
        awareness.remove_state(id);
        let _ = shared.peers.send(PeerEvent::Left(id.get()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_name_and_the_token() {
        let name = DocName::new("team/notes 1").unwrap();
        assert_eq!(
            document_url("ws://h:1/", &name, None),
            "ws://h:1/team/notes%201"
        );
        assert_eq!(
            document_url("ws://h:1/collab", &name, Some("a.b=c")),
            "ws://h:1/collab/team/notes%201?token=a%2Eb%3Dc"
        );
    }

    /// Attempts against a server that is down follow the backoff schedule, each asking the
    /// token source first; timed with tokio's paused clock, so no test waits for real.
    #[tokio::test(start_paused = true)]
    async fn reconnection_follows_the_backoff_and_asks_for_a_token_each_time() {
        let attempts: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let tokens = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let config = ProviderConfig {
            reconnect: Reconnect {
                jitter: false,
                max_delay: Duration::from_secs(2),
                ..Reconnect::default()
            },
            token: Some({
                let tokens = tokens.clone();
                Arc::new(move || {
                    let n = tokens.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move { Some(format!("token{n}")) })
                })
            }),
            fail_attempt: Some({
                let attempts = attempts.clone();
                Arc::new(move |url: &str| {
                    lock(&attempts).push((Instant::now(), url.to_owned()));
                    Some("the server is down".into())
                })
            }),
            ..ProviderConfig::new("ws://127.0.0.1:9", "doc")
        };
        let provider = Provider::start(config).await.unwrap();
        let mut status = provider.status_changes();
        let mut seen = Vec::new();
        while lock(&attempts).len() < 7 {
            seen.push(status.recv().await.unwrap());
        }
        let attempts = lock(&attempts).clone();
        let gaps: Vec<u128> = attempts
            .windows(2)
            .map(|w| w[1].0.duration_since(w[0].0).as_millis())
            .collect();
        assert_eq!(gaps, [100, 200, 400, 800, 1600, 2000]);
        assert_eq!(attempts[0].0, start);
        for (i, (_, url)) in attempts.iter().enumerate() {
            assert_eq!(url, &format!("ws://127.0.0.1:9/doc?token=token{i}"));
        }
        // Each attempt: connecting, then disconnected with the reason.
        let down = Status::Disconnected {
            reason: "the server is down".into(),
        };
        for pair in seen.chunks(2).take(6) {
            assert_eq!(pair, [Status::Connecting, down.clone()], "{seen:?}");
        }
        provider.close().await;
    }

    #[test]
    fn a_stable_connection_resets_the_backoff_and_a_short_one_does_not() {
        let mut backoff = Backoff::new(Reconnect {
            jitter: false,
            ..Reconnect::default()
        });
        let mut next = || backoff.next_delay().as_millis();
        assert_eq!([next(), next(), next()], [100, 200, 400]);
        backoff.connection_lasted(Duration::from_secs(9));
        assert_eq!(backoff.next_delay().as_millis(), 800, "9 s is not stable");
        backoff.connection_lasted(Duration::from_secs(10));
        assert_eq!(backoff.next_delay().as_millis(), 100, "10 s is");
        assert_eq!(backoff.next_delay().as_millis(), 200);
    }

    #[test]
    fn the_backoff_grows_to_its_cap() {
        let reconnect = Reconnect {
            jitter: false,
            ..Reconnect::default()
        };
        let delays: Vec<_> = reconnect.schedule().take(10).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        // With jitter every delay is within [d, 2d), and a seed makes it repeatable.
        let jittered = Reconnect {
            seed: Some(7),
            ..Reconnect::default()
        };
        let a: Vec<_> = jittered.schedule().take(5).collect();
        let b: Vec<_> = jittered.schedule().take(5).collect();
        assert_eq!(a, b);
        for (plain, jittered) in delays.iter().zip(&a) {
            assert!(
                jittered >= plain && *jittered < *plain * 2,
                "{plain:?} {jittered:?}"
            );
        }
    }
}
