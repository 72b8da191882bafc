//! Shared helpers for Concord's end-to-end tests.
//!
//! - [`TestServer`] runs a real Concord server on an ephemeral loopback port.
//! - [`TestClient`] is a real y-websocket-compatible peer built on `yrs`: it runs the sync
//!   handshake, applies what the server sends in a background task, forwards its own edits and
//!   awareness, and can disconnect and reconnect while keeping its document (like the
//!   y-websocket provider does).
//! - [`RawClient`] sends arbitrary frames (for malformed-input tests) and reads whatever comes
//!   back, without answering anything.
//! - [`http_get`] speaks plain HTTP/1.1 to check responses that are not upgrades.
//! - [`poll_until`] waits for a condition by polling it; tests never sleep to wait for a result.
//! - [`WebhookReceiver`] is a real HTTP server on loopback that records webhook requests and
//!   answers 200 or 503 as the test says.
//! - [`ManualClock`] is a clock tests advance by hand, and [`SplitMix64`] a tiny seeded PRNG.
//!
//! All y-protocols encoding and decoding goes through `yrs`' own sync types; the only
//! hand-written bytes in the test suite are the deliberately malformed frames.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use concord_core::Clock;
use concord_server::{Config, ServerError};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use yrs::encoding::read::Cursor;
use yrs::sync::{Awareness, DefaultProtocol, Message, MessageReader, Protocol, SyncMessage};
use yrs::types::ToJson;
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    Doc, GetString, Origin, ReadTxn, StateVector, Transact, Transaction, TransactionMut, Update,
};

/// The default deadline for anything a test waits for. Generous on purpose: the suite must pass
/// on a loaded two-core machine, and a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How often [`poll_until`] re-evaluates its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Origin of the transactions made through [`TestClient::edit`]; only those are forwarded to the
/// server, so updates received from the server are never echoed back.
const LOCAL_ORIGIN: &str = "concord-test-client-local";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a test thread while holding one of these locks leaves plain data behind;
    // the test fails anyway, so poisoning carries no extra information.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok(())`, and panics after `deadline`
/// with `what` and the last error `check` reported (so a failure says what state was seen).
pub async fn poll_until_ok(
    deadline: Duration,
    what: impl fmt::Display,
    mut check: impl FnMut() -> std::result::Result<(), String>,
) {
    let end = Instant::now() + deadline;
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(last) => last,
        };
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`poll_until_ok`] for a check that has to await (a store's `load`, say).
pub async fn poll_until_ok_async<F>(
    deadline: Duration,
    what: impl fmt::Display,
    mut check: impl FnMut() -> F,
) where
    F: std::future::Future<Output = std::result::Result<(), String>>,
{
    let end = Instant::now() + deadline;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(last) => last,
        };
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `cond` every [`POLL_INTERVAL`] until it is true, and panics with `what` if it is still
/// false after `deadline`.
pub async fn poll_until(
    deadline: Duration,
    what: impl fmt::Display,
    mut cond: impl FnMut() -> bool,
) {
    poll_until_ok(deadline, what, || {
        if cond() {
            Ok(())
        } else {
            Err("condition false".to_owned())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Clock and randomness
// ---------------------------------------------------------------------------------------------

/// A [`Clock`] that only moves when told to, for awareness expiry tests.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_millis`.
    pub fn new(start_millis: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            millis: AtomicU64::new(start_millis),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).expect("advance by less than 584 million years");
        self.millis.fetch_add(by, Ordering::SeqCst);
    }

    /// The current reading, in milliseconds.
    pub fn millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.millis()
    }
}

/// SplitMix64: a tiny, fast, seedable PRNG, good enough to drive randomized scenarios
/// reproducibly (the `rand` crate is not a dependency of the test crate).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` must be positive). The modulo bias is irrelevant for tests.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Waits a little before binding again (the port is briefly in use after a server stopped).
async fn tracing_free_wait(_error: &std::io::Error) {
    tokio::time::sleep(POLL_INTERVAL).await;
}

/// A Concord server listening on `127.0.0.1` on an ephemeral port, served by
/// [`concord_server::run`] on a spawned task (documents live in a `MemoryStore`).
///
/// Dropping it cancels the server without waiting; call [`TestServer::shutdown`] to shut down
/// gracefully and wait for it.
pub struct TestServer {
    /// The address the server listens on.
    pub addr: SocketAddr,
    prefix: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::result::Result<(), ServerError>>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and starts serving with `config` (including its `path_prefix`).
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_at(config, "127.0.0.1:0".parse().expect("an address")).await
    }

    /// Starts serving on `addr`: the address of a server that was stopped, to bring it back.
    pub async fn start_at(config: Config, addr: SocketAddr) -> TestServer {
        // The old listener's port may take a moment to be free again.
        let deadline = Instant::now() + DEADLINE;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline && addr.port() != 0 => {
                    tracing_free_wait(&e).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("listener address");
        let prefix = config.path_prefix.trim_end_matches('/').to_owned();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(concord_server::run(listener, config, shutdown.clone()));
        TestServer {
            addr,
            prefix,
            shutdown,
            task: Some(task),
        }
    }

    /// The WebSocket URL of document path `doc` (used verbatim: percent-encode it yourself),
    /// under the configured path prefix: `ws://127.0.0.1:PORT[/prefix]/doc`.
    pub fn url(&self, doc: &str) -> String {
        format!("ws://{}{}/{}", self.addr, self.prefix, doc)
    }

    /// The WebSocket URL of an arbitrary request path (starting with `/`), ignoring the prefix.
    pub fn raw_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Stops the server at once, as a killed process would: its connections end without close
    /// frames and nothing is flushed (documents are in memory, or in a store the test holds).
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Whether the server task has finished.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.is_finished())
    }

    /// Cancels the server and waits (up to [`DEADLINE`]) until it has closed every connection
    /// and stored every update, returning what [`concord_server::run`] returned.
    pub async fn shutdown(mut self) -> std::result::Result<(), ServerError> {
        self.shutdown.cancel();
        let task = self
            .task
            .take()
            .expect("the server task is only taken here");
        match tokio::time::timeout(DEADLINE, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => panic!("the server task failed: {join}"),
            Err(_) => panic!("the server did not shut down within {DEADLINE:?}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket connections
// ---------------------------------------------------------------------------------------------

/// The `host:port` part of a `ws://` URL.
fn authority(url: &str) -> Result<&str> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("not a ws:// URL: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Opens a TCP connection (TCP_NODELAY, optionally with a small receive buffer) and runs the
/// WebSocket client handshake over it. Size limits are lifted: the tests decide what is too big.
async fn connect_ws(url: &str, recv_buffer: Option<u32>) -> Result<WebSocketStream<TcpStream>> {
    connect_ws_with_headers(url, recv_buffer, None, &[]).await
}

/// [`connect_ws`] with extra request headers, from the local address `source` when given (any
/// of 127.0.0.0/8 reaches a loopback server and is a peer address of its own to it).
async fn connect_ws_with_headers(
    url: &str,
    recv_buffer: Option<u32>,
    source: Option<std::net::IpAddr>,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<TcpStream>> {
    let addr: SocketAddr = authority(url)?
        .parse()
        .with_context(|| format!("the test URL {url} must use a literal IP address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
            value.parse()?,
        );
    }
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .with_context(|| format!("WebSocket handshake with {url} failed"))?;
    Ok(ws)
}

fn close_code_and_reason(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
        // A close frame without a body means "no status code" (1005).
        None => (1005, String::new()),
    }
}

fn binary(message: &Message) -> WsMessage {
    WsMessage::Binary(message.encode_v1().into())
}

// ---------------------------------------------------------------------------------------------
// TestClient
// ---------------------------------------------------------------------------------------------

/// What one connection of a [`TestClient`] has seen so far.
#[derive(Debug, Default, Clone)]
pub struct ConnStatus {
    /// The server's SyncStep2 arrived (the client has the server's state as of the handshake).
    pub synced: bool,
    /// The connection has ended (read side finished).
    pub ended: bool,
    /// The close frame the server sent, as (code, reason); 1005 when it had no body.
    pub close: Option<(u16, String)>,
    /// Binary frames received.
    pub frames: usize,
    /// Binary frames received after `synced` became true.
    pub frames_after_sync: usize,
    /// Awareness messages received (including empty keepalive ones).
    pub awareness_messages: usize,
    /// Sync Update messages received.
    pub update_messages: usize,
    /// Protocol errors: undecodable frames, updates yrs refused, text frames.
    pub errors: Vec<String>,
    /// The transport error that ended the connection, if any (reset, EOF mid-frame...).
    pub transport_error: Option<String>,
}

struct Shared {
    /// The client's document lives inside its awareness, as in y-websocket.
    awareness: Mutex<Awareness>,
    /// Where local updates go; `None` while disconnected (they are then sent by the resync).
    outbox: Arc<Mutex<Option<mpsc::UnboundedSender<WsMessage>>>>,
}

/// A y-websocket-compatible peer on `yrs`, connected to one document.
///
/// On connect it sends SyncStep1 (and its awareness state, if set), answers the server's
/// SyncStep1 with SyncStep2, and applies every update and awareness message in a background
/// task. Edits made through [`TestClient::edit`] are forwarded as sync Update messages, one per
/// transaction. [`TestClient::disconnect`] and [`TestClient::reconnect`] keep the document, and a
/// reconnect resyncs through the SyncStep1/SyncStep2 exchange, exactly like the y-websocket
/// provider; edits made while disconnected reach the server that way.
pub struct TestClient {
    shared: Arc<Shared>,
    status: Arc<Mutex<ConnStatus>>,
    url: String,
    /// Sent with every upgrade request (cookies, an Authorization header).
    headers: Vec<(String, String)>,
    /// The local address connections are made from (`None`: the system's choice).
    source: Option<std::net::IpAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestClient {
    /// Connects a fresh client with a random client id to `url`.
    pub async fn connect(url: &str) -> Result<TestClient> {
        TestClient::connect_with_doc(url, Doc::new()).await
    }

    /// Connects a fresh client with client id `id` (53 bits at most) to `url`.
    pub async fn connect_with_client_id(url: &str, id: u64) -> Result<TestClient> {
        TestClient::connect_with_doc(url, Doc::with_client_id(id)).await
    }

    /// Connects and waits (up to [`DEADLINE`]) until the server's SyncStep2 has arrived.
    pub async fn connect_synced(url: &str) -> Result<TestClient> {
        let client = TestClient::connect(url).await?;
        client.wait_synced().await;
        Ok(client)
    }

    /// Connects from the local address `source` (say 127.0.0.2, a peer address of its own to a
    /// loopback server) and waits until synced.
    pub async fn connect_synced_from(url: &str, source: std::net::IpAddr) -> Result<TestClient> {
        let client =
            TestClient::connect_with_doc_and_headers(url, Doc::new(), &[], Some(source)).await?;
        client.wait_synced().await;
        Ok(client)
    }

    /// Connects with `headers` on every upgrade request and waits until synced.
    pub async fn connect_synced_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<TestClient> {
        let client =
            TestClient::connect_with_doc_and_headers(url, Doc::new(), headers, None).await?;
        client.wait_synced().await;
        Ok(client)
    }

    /// Connects a client that edits `doc` (which may already hold content).
    pub async fn connect_with_doc(url: &str, doc: Doc) -> Result<TestClient> {
        TestClient::connect_with_doc_and_headers(url, doc, &[], None).await
    }

    async fn connect_with_doc_and_headers(
        url: &str,
        doc: Doc,
        headers: &[(&str, &str)],
        source: Option<std::net::IpAddr>,
    ) -> Result<TestClient> {
        let shared = Arc::new(Shared {
            awareness: Mutex::new(Awareness::new(doc)),
            outbox: Arc::new(Mutex::new(None)),
        });
        {
            // The observer holds only the outbox: holding `shared` would make a cycle through
            // the document and leak every client.
            let outbox = shared.outbox.clone();
            let awareness = lock(&shared.awareness);
            awareness
                .doc()
                .observe_update_v1("concord-test-client", move |txn, event| {
                    if txn.origin() == Some(&Origin::from(LOCAL_ORIGIN))
                        && let Some(tx) = lock(&outbox).as_ref()
                    {
                        let message = Message::Sync(SyncMessage::Update(event.update.clone()));
                        // A closed channel means the connection just ended; the next reconnect
                        // resyncs this change.
                        let _ = tx.send(binary(&message));
                    }
                })
                .map_err(|e| anyhow!("cannot observe document updates: {e}"))?;
        }
        let mut client = TestClient {
            shared,
            status: Arc::new(Mutex::new(ConnStatus::default())),
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            source,
            tasks: Vec::new(),
        };
        client.open().await?;
        Ok(client)
    }

    async fn open(&mut self) -> Result<()> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let ws = connect_ws_with_headers(&self.url, None, self.source, &headers).await?;
        let (sink, stream) = ws.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(ConnStatus::default()));
        {
            // The handshake is queued before the outbox is published, so it precedes any update.
            let awareness = lock(&self.shared.awareness);
            let sv = awareness.doc().transact().state_vector();
            let _ = tx.send(binary(&Message::Sync(SyncMessage::SyncStep1(sv))));
            if awareness.local_state_raw().is_some()
                && let Ok(update) = awareness.update_with_clients([awareness.client_id()])
            {
                let _ = tx.send(binary(&Message::Awareness(update)));
            }
            *lock(&self.shared.outbox) = Some(tx.clone());
        }
        self.status = status.clone();
        let writer = tokio::spawn(write_loop(sink, rx));
        let reader = tokio::spawn(read_loop(stream, self.shared.clone(), status, tx));
        self.tasks = vec![writer, reader];
        Ok(())
    }

    /// Closes the connection (close code 1000) and waits until it has ended. The document and
    /// awareness state are kept; edits made now are sent on [`TestClient::reconnect`].
    pub async fn disconnect(&mut self) {
        let tx = lock(&self.shared.outbox).take();
        if let Some(tx) = tx {
            let _ = tx.send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })));
        }
        self.finish_tasks().await;
    }

    /// Drops the connection without a close handshake (like a crashed client or a lost network).
    pub async fn drop_connection(&mut self) {
        lock(&self.shared.outbox).take();
        for task in &self.tasks {
            task.abort();
        }
        self.finish_tasks().await;
    }

    async fn finish_tasks(&mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        let end = Instant::now() + DEADLINE;
        for mut task in tasks {
            if tokio::time::timeout_at(end, &mut task).await.is_err() {
                task.abort();
            }
        }
        lock(&self.status).ended = true;
    }

    /// Connects again to the same URL, keeping the document and awareness state, and resyncs.
    pub async fn reconnect(&mut self) -> Result<()> {
        if !self.tasks.is_empty() {
            self.disconnect().await;
        }
        self.open().await
    }

    /// The URL this client connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This client's id (its yrs client id, also its awareness id).
    pub fn client_id(&self) -> u64 {
        lock(&self.shared.awareness).client_id().get()
    }

    /// A copy of what the current connection has seen.
    pub fn status(&self) -> ConnStatus {
        lock(&self.status).clone()
    }

    /// Whether the current connection got the server's SyncStep2.
    pub fn is_synced(&self) -> bool {
        lock(&self.status).synced
    }

    /// Whether the current connection is still open.
    pub fn is_connected(&self) -> bool {
        !lock(&self.status).ended && !self.tasks.is_empty()
    }

    /// The close frame the server sent on the current connection, if any, as (code, reason).
    pub fn close_frame(&self) -> Option<(u16, String)> {
        lock(&self.status).close.clone()
    }

    /// Waits until the current connection has synced, panicking after [`DEADLINE`].
    pub async fn wait_synced(&self) {
        self.wait_until(DEADLINE, "the client synced", |c| c.is_synced())
            .await;
    }

    /// Waits until the current connection has ended, panicking after [`DEADLINE`].
    pub async fn wait_closed(&self) {
        self.wait_until(DEADLINE, "the connection ended", |c| !c.is_connected())
            .await;
    }

    /// Polls `predicate` on this client until it holds, panicking after `deadline` with `what`
    /// and the connection status.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: impl fmt::Display,
        mut predicate: impl FnMut(&TestClient) -> bool,
    ) {
        poll_until_ok(deadline, what, || {
            if predicate(self) {
                Ok(())
            } else {
                Err(format!("{:?}", self.status()))
            }
        })
        .await;
    }

    /// Runs `f` in a local transaction; the resulting update is sent to the server (or, while
    /// disconnected, on the next resync). Get root types with `txn.get_or_insert_text(..)` etc.
    /// (`yrs::WriteTxn`); the document itself must not be touched inside `f`.
    pub fn edit<R>(&self, f: impl FnOnce(&mut TransactionMut<'_>) -> R) -> R {
        let awareness = lock(&self.shared.awareness);
        let mut txn = awareness.doc().transact_mut_with(LOCAL_ORIGIN);
        let result = f(&mut txn);
        // Committing runs the update observer, which queues the update for the server.
        drop(txn);
        result
    }

    /// Runs `f` in a read transaction over the client's document.
    pub fn read<R>(&self, f: impl FnOnce(&Transaction<'_>) -> R) -> R {
        let awareness = lock(&self.shared.awareness);
        let txn = awareness.doc().transact();
        f(&txn)
    }

    /// The content of the root text `name` (empty when it does not exist).
    pub fn text(&self, name: &str) -> String {
        self.read(|txn| {
            txn.get_text(name)
                .map(|text| text.get_string(txn))
                .unwrap_or_default()
        })
    }

    /// The root array `name` as JSON (`[]` when it does not exist).
    pub fn array_json(&self, name: &str) -> serde_json::Value {
        self.read(|txn| match txn.get_array(name) {
            Some(array) => any_to_json(&array.to_json(txn)),
            None => serde_json::json!([]),
        })
    }

    /// The number of elements of the root array `name` (0 when it does not exist).
    pub fn array_len(&self, name: &str) -> u32 {
        use yrs::Array;
        self.read(|txn| txn.get_array(name).map_or(0, |array| array.len(txn)))
    }

    /// The root map `name` as JSON (`{}` when it does not exist).
    pub fn map_json(&self, name: &str) -> serde_json::Value {
        self.read(|txn| match txn.get_map(name) {
            Some(map) => any_to_json(&map.to_json(txn)),
            None => serde_json::json!({}),
        })
    }

    /// The client's state vector.
    pub fn state_vector(&self) -> StateVector {
        self.read(|txn| txn.state_vector())
    }

    /// The client's whole document as one v1 update.
    pub fn full_state(&self) -> Vec<u8> {
        self.read(|txn| txn.encode_state_as_update_v1(&StateVector::default()))
    }

    /// Whether the document holds updates it could not integrate yet (a gap in what it got).
    pub fn has_missing_updates(&self) -> bool {
        self.read(|txn| txn.has_missing_updates())
    }

    /// The client's whole state, decoded into a fresh document, as JSON of `roots`.
    pub fn snapshot(&self, roots: &[Root<'_>]) -> serde_json::Value {
        doc_json(&self.full_state(), roots).expect("a client's own state decodes")
    }

    /// Sets the local awareness state to the JSON `json` and sends it.
    pub fn set_awareness(&self, json: &str) {
        let mut awareness = lock(&self.shared.awareness);
        awareness.set_local_state_raw(json);
        let update = awareness
            .update_with_clients([awareness.client_id()])
            .expect("the local state was just set");
        self.send_now(&Message::Awareness(update));
    }

    /// Clears the local awareness state (sends `null`, as y-protocols does on a clean leave).
    pub fn clear_awareness(&self) {
        let mut awareness = lock(&self.shared.awareness);
        awareness.clean_local_state();
        let update = awareness
            .update_with_clients([awareness.client_id()])
            .expect("the local state exists");
        self.send_now(&Message::Awareness(update));
    }

    /// Every awareness state this client knows (its own included), by client id, as JSON text.
    pub fn awareness_states(&self) -> HashMap<u64, String> {
        lock(&self.shared.awareness)
            .iter()
            .filter_map(|(id, state)| state.data.map(|data| (id.get(), data.to_string())))
            .collect()
    }

    /// The awareness clock this client knows for client `id` (its own included), if any. A
    /// client's own clock moves past the server's when the server removes its state.
    pub fn awareness_clock(&self, id: u64) -> Option<u32> {
        lock(&self.shared.awareness)
            .meta(yrs::ClientID::new(id))
            .map(|(clock, _)| clock)
    }

    /// Sends one y-protocols message on the current connection (dropped while disconnected).
    pub fn send_message(&self, message: &Message) {
        self.send_now(message);
    }

    fn send_now(&self, message: &Message) {
        if let Some(tx) = lock(&self.shared.outbox).as_ref() {
            let _ = tx.send(binary(message));
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocketStream<TcpStream>, WsMessage>,
    mut rx: mpsc::UnboundedReceiver<WsMessage>,
) {
    while let Some(message) = rx.recv().await {
        let closing = matches!(message, WsMessage::Close(_));
        if sink.send(message).await.is_err() || closing {
            return;
        }
    }
}

async fn read_loop(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
    shared: Arc<Shared>,
    status: Arc<Mutex<ConnStatus>>,
    tx: mpsc::UnboundedSender<WsMessage>,
) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(WsMessage::Binary(data)) => {
                for reply in handle_frame(&shared, &status, &data) {
                    let _ = tx.send(binary(&reply));
                }
            }
            Ok(WsMessage::Close(frame)) => {
                lock(&status).close = Some(close_code_and_reason(frame));
            }
            Ok(WsMessage::Text(text)) => {
                lock(&status)
                    .errors
                    .push(format!("unexpected text frame: {text}"));
            }
            Ok(_) => {}
            Err(e) => {
                lock(&status).transport_error = Some(e.to_string());
                break;
            }
        }
    }
    lock(&status).ended = true;
}

/// Applies one binary frame from the server and returns the replies to send.
fn handle_frame(shared: &Shared, status: &Mutex<ConnStatus>, data: &[u8]) -> Vec<Message> {
    let mut replies = Vec::new();
    let mut awareness = lock(&shared.awareness);
    let mut status = lock(status);
    status.frames += 1;
    if status.synced {
        status.frames_after_sync += 1;
    }
    let mut decoder = DecoderV1::new(Cursor::new(data));
    for message in MessageReader::new(&mut decoder) {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                status
                    .errors
                    .push(format!("undecodable frame {data:?}: {e}"));
                break;
            }
        };
        let step2 = matches!(message, Message::Sync(SyncMessage::SyncStep2(_)));
        match &message {
            Message::Awareness(_) => status.awareness_messages += 1,
            Message::Sync(SyncMessage::Update(_)) => status.update_messages += 1,
            _ => {}
        }
        match DefaultProtocol.handle_message(&mut awareness, message) {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) => {}
            Err(e) => status.errors.push(format!("cannot apply a message: {e}")),
        }
        if step2 {
            status.synced = true;
        }
    }
    replies
}

// ---------------------------------------------------------------------------------------------
// Documents as JSON
// ---------------------------------------------------------------------------------------------

/// A root type of a document, for [`doc_json`] and [`TestClient::snapshot`].
#[derive(Debug, Clone, Copy)]
pub enum Root<'a> {
    /// A root `Y.Text`.
    Text(&'a str),
    /// A root `Y.Array`.
    Array(&'a str),
    /// A root `Y.Map`.
    Map(&'a str),
}

/// Converts a yrs `Any` to a `serde_json::Value` (maps become order-independent objects).
pub fn any_to_json(any: &yrs::Any) -> serde_json::Value {
    serde_json::to_value(any).expect("yrs values serialize to JSON")
}

/// Applies the v1 update `update` to a fresh document and returns `{root name: JSON}` for
/// `roots`. Fails when the update does not decode or does not integrate completely.
pub fn doc_json(update: &[u8], roots: &[Root<'_>]) -> Result<serde_json::Value> {
    let doc = Doc::new();
    enum Handle {
        Text(yrs::TextRef),
        Array(yrs::ArrayRef),
        Map(yrs::MapRef),
    }
    let handles: Vec<(&str, Handle)> = roots
        .iter()
        .map(|root| match *root {
            Root::Text(name) => (name, Handle::Text(doc.get_or_insert_text(name))),
            Root::Array(name) => (name, Handle::Array(doc.get_or_insert_array(name))),
            Root::Map(name) => (name, Handle::Map(doc.get_or_insert_map(name))),
        })
        .collect();
    {
        let mut txn = doc.transact_mut();
        txn.apply_update(Update::decode_v1(update)?)?;
        if txn.has_missing_updates() {
            bail!("the update depends on changes it does not contain");
        }
    }
    let txn = doc.transact();
    let mut out = serde_json::Map::new();
    for (name, handle) in handles {
        let value = match handle {
            Handle::Text(text) => serde_json::Value::String(text.get_string(&txn)),
            Handle::Array(array) => any_to_json(&array.to_json(&txn)),
            Handle::Map(map) => any_to_json(&map.to_json(&txn)),
        };
        out.insert(name.to_owned(), value);
    }
    Ok(serde_json::Value::Object(out))
}

/// Decodes every y-protocols message of one frame.
pub fn decode_messages(frame: &[u8]) -> Result<Vec<Message>> {
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    MessageReader::new(&mut decoder)
        .map(|message| message.map_err(|e| anyhow!("undecodable frame {frame:?}: {e}")))
        .collect()
}

/// Encodes a sync Update message carrying `update`.
pub fn update_message(update: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(update)).encode_v1()
}

/// Encodes an awareness message setting the state of client `client` to `json` at `clock`
/// (`json` is sent as is: `"null"` removes the state).
pub fn awareness_message(client: u64, clock: u32, json: &str) -> Vec<u8> {
    use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
    let entry = AwarenessUpdateEntry {
        clock,
        json: json.into(),
    };
    let clients = HashMap::from([(yrs::ClientID::new(client), entry)]);
    Message::Awareness(AwarenessUpdate { clients }).encode_v1()
}

/// A v1 update that inserts `content` at the start of root text `name`, made by client `client`.
pub fn text_insert_update(client: u64, name: &str, content: &str) -> Vec<u8> {
    use yrs::{Text, WriteTxn};
    let doc = Doc::with_client_id(client);
    let mut txn = doc.transact_mut();
    let text = txn.get_or_insert_text(name);
    text.insert(&mut txn, 0, content);
    txn.encode_update_v1()
}

// ---------------------------------------------------------------------------------------------
// RawClient
// ---------------------------------------------------------------------------------------------

/// How a [`RawClient`]'s connection ended, with everything read before the end.
#[derive(Debug, Default)]
pub struct Ending {
    /// Binary frames received, in order.
    pub frames: Vec<Vec<u8>>,
    /// The close frame received, as (code, reason); 1005 when it had no body.
    pub close: Option<(u16, String)>,
    /// The transport error that ended the stream, if any (reset, EOF in the middle of a frame).
    pub error: Option<String>,
}

/// A WebSocket client that does only what the test tells it: it sends arbitrary frames and reads
/// only when asked (so while it is not reading it answers no pings and its socket fills up).
pub struct RawClient {
    ws: WebSocketStream<TcpStream>,
}

impl RawClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<RawClient> {
        Ok(RawClient {
            ws: connect_ws(url, None).await?,
        })
    }

    /// Connects to `url`; a refused upgrade comes back as its HTTP status and body.
    pub async fn connect_or_refusal(url: &str) -> std::result::Result<RawClient, (u16, String)> {
        match connect_ws(url, None).await {
            Ok(ws) => Ok(RawClient { ws }),
            Err(e) => {
                let refusal = e.chain().find_map(|cause| match cause
                    .downcast_ref::<tokio_tungstenite::tungstenite::Error>(
                ) {
                    Some(tokio_tungstenite::tungstenite::Error::Http(response)) => Some((
                        response.status().as_u16(),
                        response
                            .body()
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default(),
                    )),
                    _ => None,
                });
                Err(refusal.unwrap_or_else(|| panic!("connecting to {url} failed: {e:#}")))
            }
        }
    }

    /// Connects to `url`, sending `headers` with the upgrade request.
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<RawClient> {
        Ok(RawClient {
            ws: connect_ws_with_headers(url, None, None, headers).await?,
        })
    }

    /// Connects to `url` with a socket receive buffer of about `bytes` (the kernel may round it),
    /// so that a client that stops reading is backed up quickly.
    pub async fn connect_with_recv_buffer(url: &str, bytes: u32) -> Result<RawClient> {
        Ok(RawClient {
            ws: connect_ws(url, Some(bytes)).await?,
        })
    }

    /// Sends `bytes` as one binary frame.
    pub async fn send_binary(&mut self, bytes: impl Into<Vec<u8>>) -> Result<()> {
        self.send(WsMessage::Binary(bytes.into().into())).await
    }

    /// Sends `text` as one text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send(WsMessage::Text(text.into())).await
    }

    /// Sends one WebSocket message.
    pub async fn send(&mut self, message: WsMessage) -> Result<()> {
        self.ws.send(message).await.context("send failed")
    }

    /// Reads the next binary frame, skipping control frames; `None` once the connection ended.
    /// Panics after `deadline`.
    pub async fn next_binary(&mut self, deadline: Duration) -> Option<Vec<u8>> {
        let read = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => return Some(data.to_vec()),
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return None,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(deadline, read)
            .await
            .unwrap_or_else(|_| panic!("no frame within {deadline:?}"))
    }

    /// The binary frames that arrive within `wait` (fewer if the connection ends first). For
    /// checking that something does not arrive while the server is known to be unable to send
    /// it: a correct server passes whatever the timing.
    pub async fn frames_within(&mut self, wait: Duration) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let read = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => frames.push(data.to_vec()),
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        let _ = tokio::time::timeout(wait, read).await;
        frames
    }

    /// Reads everything until the connection ends (close handshake, EOF or error) and returns
    /// it. Panics if the connection is still open after `deadline`.
    pub async fn read_to_end(&mut self, deadline: Duration) -> Ending {
        let mut ending = Ending::default();
        let read = async {
            while let Some(item) = self.ws.next().await {
                match item {
                    Ok(WsMessage::Binary(data)) => ending.frames.push(data.to_vec()),
                    Ok(WsMessage::Close(frame)) => {
                        ending.close = Some(close_code_and_reason(frame));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        ending.error = Some(e.to_string());
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(deadline, read).await.is_err() {
            panic!("the connection was still open after {deadline:?}; read so far: {ending:?}");
        }
        ending
    }

    /// Reads until the server's close frame and returns its (code, reason). Panics if the
    /// connection ends without one or stays open past [`DEADLINE`].
    pub async fn expect_close(&mut self) -> (u16, String) {
        let ending = self.read_to_end(DEADLINE).await;
        match ending.close {
            Some(close) => close,
            None => panic!(
                "the connection ended without a close frame ({:?}) after {} frames",
                ending.error,
                ending.frames.len()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------------

/// A plain HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The head (status line and headers).
    pub head: String,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// Sends `GET path` over a fresh TCP connection to `addr` and returns the response. With
/// `websocket` the request is a valid WebSocket upgrade request, as a browser would send; a
/// `101 Switching Protocols` answer is returned as is (with an empty body).
pub async fn http_get(addr: SocketAddr, path: &str, websocket: bool) -> Result<HttpResponse> {
    http_get_with_headers(addr, path, websocket, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with_headers(
    addr: SocketAddr,
    path: &str,
    websocket: bool,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let upgrade = if websocket {
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            "Connection: close\r\n"
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{upgrade}{extra}\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the response head: {buf:?}");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status code in {head:?}"))?;
        if status == 101 {
            return Ok(HttpResponse {
                status,
                head,
                body: String::new(),
            });
        }
        let length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
        let mut body = buf[head_end..].to_vec();
        loop {
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(HttpResponse {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| anyhow!("no HTTP response from {addr}{path} within {DEADLINE:?}"))?
}

/// Concord embedded in an axum server on an ephemeral loopback port, over a store of the test's
/// choosing, with the instance handle at hand.
pub struct EmbeddedServer {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// The instance, for `is_loaded`, `connection_count`, `compactions`.
    pub concord: concord_server::Concord,
    shutdown: tokio_util::sync::CancellationToken,
    serve: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl EmbeddedServer {
    /// Serves `Concord::new(config, store)` with [`concord_server::serve`] on 127.0.0.1:0.
    pub async fn start_with_store(
        config: concord_server::Config,
        store: std::sync::Arc<dyn concord_core::Store>,
    ) -> EmbeddedServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let concord = concord_server::Concord::new(config, store, shutdown.clone());
        let app = concord_server::router(&concord);
        let serve = tokio::spawn({
            let concord = concord.clone();
            async move { concord_server::serve(listener, app, &concord).await }
        });
        EmbeddedServer {
            addr,
            concord,
            shutdown,
            serve: Some(serve),
        }
    }

    /// `ws://ADDR/doc`.
    pub fn url(&self, doc: &str) -> String {
        format!("ws://{}/{}", self.addr, doc)
    }

    /// Cancels, then waits for `closed()` and for the serve task, each within [`DEADLINE`].
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.concord.closed())
            .await
            .expect("closed() returns after shutdown");
        let serve = self.serve.take().unwrap();
        tokio::time::timeout(DEADLINE, serve)
            .await
            .expect("the serve task ends after shutdown")
            .unwrap()
            .unwrap();
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Stores with hooks
// ---------------------------------------------------------------------------------------------

/// What a test store does around a [`concord_core::MemoryStore`]: count, block or break calls.
/// Wrap it in [`Hooked`] to hand it to a server as a store.
pub trait StoreHooks: Send + Sync + 'static {
    /// The store that does the work.
    fn inner(&self) -> &concord_core::MemoryStore;
    /// Runs before every `load`.
    fn before_load(&self, _doc: &concord_core::DocName) {}
    /// Runs before every `append`.
    fn before_append(&self, _batch: &[concord_core::StoredUpdate]) {}
}

/// A [`concord_core::Store`] that runs `H`'s hooks and then its inner store. The test keeps
/// the `Arc<H>` to steer the hooks. Hooks may block (wait for a test's permit) or panic: every
/// call runs on Tokio's blocking thread pool, as a blocking backend's would, and a panic in it
/// resumes in the task that awaits the call.
pub struct Hooked<H>(pub Arc<H>);

impl<H: StoreHooks> Hooked<H> {
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&H) -> std::result::Result<T, concord_core::StoreError> + Send + 'static,
    ) -> concord_core::StoreFuture<'static, T> {
        let hooks = self.0.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || f(&hooks)).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(concord_core::StoreError::Backend(Box::new(e))),
            }
        })
    }
}

impl<H: StoreHooks> concord_core::Store for Hooked<H> {
    fn load<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
    ) -> concord_core::StoreFuture<'a, concord_core::StoredDoc> {
        let doc = doc.clone();
        self.blocking(move |hooks| {
            hooks.before_load(&doc);
            hooks.inner().load(&doc)
        })
    }

    fn append(
        &self,
        batch: Arc<[concord_core::StoredUpdate]>,
    ) -> concord_core::StoreFuture<'_, Vec<concord_core::Appended>> {
        self.blocking(move |hooks| {
            hooks.before_append(&batch);
            hooks.inner().append(&batch)
        })
    }

    fn compact<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        snapshot: Vec<u8>,
        upto: concord_core::Seq,
    ) -> concord_core::StoreFuture<'a, ()> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().compact(&doc, &snapshot, upto))
    }

    fn delete<'a>(&'a self, doc: &'a concord_core::DocName) -> concord_core::StoreFuture<'a, ()> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().delete(&doc))
    }

    fn list(&self) -> concord_core::StoreFuture<'_, Vec<concord_core::DocInfo>> {
        self.blocking(|hooks| hooks.inner().list())
    }

    fn log_from<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        from: concord_core::Seq,
    ) -> concord_core::StoreFuture<'a, concord_core::LogTail> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().log_from(&doc, from))
    }

    fn save_version<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        version: concord_core::NewVersion,
    ) -> concord_core::StoreFuture<'a, concord_core::VersionInfo> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().save_version(&doc, version))
    }

    fn versions<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
    ) -> concord_core::StoreFuture<'a, Vec<concord_core::VersionInfo>> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().versions(&doc))
    }

    fn version<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        id: concord_core::VersionId,
    ) -> concord_core::StoreFuture<'a, Option<Vec<u8>>> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().version(&doc, id))
    }

    fn delete_versions<'a>(
        &'a self,
        doc: &'a concord_core::DocName,
        ids: Vec<concord_core::VersionId>,
    ) -> concord_core::StoreFuture<'a, u64> {
        let doc = doc.clone();
        self.blocking(move |hooks| hooks.inner().delete_versions(&doc, &ids))
    }

    fn outbox_write(
        &self,
        add: Vec<concord_core::OutboxEntry>,
        marks: Vec<(concord_core::DocName, Option<concord_core::Position>)>,
    ) -> concord_core::StoreFuture<'_, ()> {
        self.blocking(move |hooks| hooks.inner().outbox_write(add, marks))
    }

    fn outbox(&self) -> concord_core::StoreFuture<'_, concord_core::Outbox> {
        self.blocking(|hooks| hooks.inner().outbox())
    }

    fn outbox_remove(&self, keys: Vec<String>) -> concord_core::StoreFuture<'_, ()> {
        self.blocking(move |hooks| hooks.inner().outbox_remove(&keys))
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------------------------

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `Concord-Event-Id` header.
    pub event_id: String,
    /// The `Concord-Signature` header.
    pub signature: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// Whether it was answered 200 (else 503).
    pub accepted: bool,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }
}

#[derive(Default)]
struct ReceiverState {
    accepting: std::sync::atomic::AtomicBool,
    /// Never answers (the request is recorded first).
    hanging: std::sync::atomic::AtomicBool,
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver: a real HTTP server on 127.0.0.1 (an ephemeral port, or one given) that
/// records every POST to `/hook` and answers 200 while accepting, 503 otherwise (or never, once
/// [`WebhookReceiver::hang`] was called). Stopped on drop.
pub struct WebhookReceiver {
    /// Where to send webhooks: `http://127.0.0.1:PORT/hook`.
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl WebhookReceiver {
    /// Starts one on an ephemeral port.
    pub async fn start(accepting: bool) -> WebhookReceiver {
        WebhookReceiver::start_on(0, accepting).await
    }

    /// Starts one on `port` (0: ephemeral).
    pub async fn start_on(port: u16, accepting: bool) -> WebhookReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(ReceiverState::default());
        state.accepting.store(accepting, Ordering::SeqCst);
        let recorder = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let state = recorder.clone();
                    async move {
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let accepted = state.accepting.load(Ordering::SeqCst)
                            && !state.hanging.load(Ordering::SeqCst);
                        state
                            .received
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Received {
                                event_id: header("concord-event-id"),
                                signature: header("concord-signature"),
                                body: body.to_vec(),
                                accepted,
                            });
                        if state.hanging.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if accepted {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                },
            ),
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            addr,
            state,
            shutdown,
        }
    }

    /// Answer 200 (true) or 503 (false) from now on.
    pub fn set_accepting(&self, accepting: bool) {
        self.state.accepting.store(accepting, Ordering::SeqCst);
    }

    /// Never answer from now on (requests are still recorded).
    pub fn hang(&self) {
        self.state.hanging.store(true, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The requests answered 200 so far.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.accepted).collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP API clients
// ---------------------------------------------------------------------------------------------

/// Decodes base64url without padding, as the HTTP API encodes binary values.
pub fn b64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {text:?}"))
}

/// Encodes base64url without padding.
pub fn b64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`; "message" when absent.
    pub event: String,
    /// `id:`, if the event has one.
    pub id: Option<String>,
    /// `data:` lines joined with newlines.
    pub data: String,
}

/// A client of an SSE stream that reads events only when asked.
pub struct SseClient {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// The response's headers.
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Opens `url` (with `Last-Event-ID` when given) and checks it is an event stream.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Result<SseClient> {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(DEADLINE, request.send())
            .await
            .context("no SSE response")??;
        if !response.status().is_success() {
            bail!("SSE request failed: {}", response.status());
        }
        let headers = response.headers().clone();
        Ok(SseClient {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            headers,
        })
    }

    /// The next event (comments are skipped); `None` when the stream ended. Panics after
    /// [`DEADLINE`].
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    ..SseEvent::default()
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => data.push(value.to_owned()),
                        _ => {}
                    }
                }
                if data.is_empty() && event.id.is_none() {
                    // A comment block (the heartbeat).
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let chunk = tokio::time::timeout(DEADLINE, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no SSE event within {DEADLINE:?}"));
            match chunk {
                Some(Ok(bytes)) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                _ => return None,
            }
        }
    }
}
