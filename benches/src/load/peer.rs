//! One y-websocket client: a yrs document and its awareness over a tokio-tungstenite connection,
//! speaking the y-protocols messages through `yrs::sync` (sync step 1 and 2, updates,
//! awareness), as the y-websocket provider does.
//!
//! On open it sends sync step 1 and its awareness state; it answers the server's step 1 with
//! step 2, applies every step 2 and update it receives, and is synced once the answer to its own
//! step 1 has been applied. A reader task per connection does all receiving; sending goes
//! through a shared sink.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use yrs::sync::{Awareness, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Transact, Update};

use super::ledger::{Inbox, nanos_since};

type Ws = WebSocketStream<TcpStream>;
type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, WsMessage>>>;

/// What a connection's reader has seen, readable while it runs.
#[derive(Default)]
pub(crate) struct PeerState {
    /// Sync step 2 messages applied.
    step2: AtomicU64,
    /// When the last step 2 frame arrived, before decoding (ns since the epoch).
    step2_received_ns: AtomicU64,
    /// When the last step 2 was applied (ns since the epoch).
    step2_applied_ns: AtomicU64,
    /// Woken after each step 2.
    synced: Notify,
    /// Set when the connection ended while we were not closing it.
    closed: AtomicBool,
    /// Why it ended (close frame or error), when it did.
    close_reason: Mutex<Option<String>>,
    /// Frames that did not decode or apply.
    errors: AtomicU64,
    /// Permission denied by the server (y-protocols auth message).
    denied: AtomicBool,
}

impl PeerState {
    /// Whether the server ended this connection (or it failed) before we closed it.
    pub(crate) fn closed(&self) -> Option<String> {
        if !self.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.close_reason
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or_else(|| "closed".to_owned()),
        )
    }

    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// (frame received, frame applied) of the last step 2, in ns since the epoch.
    pub(crate) fn last_step2(&self) -> (u64, u64) {
        (
            self.step2_received_ns.load(Ordering::Acquire),
            self.step2_applied_ns.load(Ordering::Acquire),
        )
    }

    fn end(&self, reason: String) {
        if let Ok(mut r) = self.close_reason.lock()
            && r.is_none()
        {
            *r = Some(reason);
        }
        self.closed.store(true, Ordering::Release);
        // Waiters for sync give up on a closed connection.
        self.synced.notify_waiters();
    }
}

/// How a peer connects.
#[derive(Clone)]
pub(crate) struct Dial {
    /// Each server's address, resolved once, and `ws://host:port[/prefix]` without a trailing
    /// slash; connection `i` goes to `targets[i % len]`.
    pub(crate) targets: Vec<(SocketAddr, String)>,
    /// Read buffer per connection: small for idle connections (memory), larger for editors and
    /// late joiners (fewer reads per large frame).
    pub(crate) read_buffer: usize,
    pub(crate) epoch: Instant,
    pub(crate) timeout: Duration,
}

/// A connected client.
pub(crate) struct Peer {
    pub(crate) doc: Doc,
    pub(crate) state: Arc<PeerState>,
    sink: Sink,
    stop: CancellationToken,
    reader: Option<JoinHandle<Option<Inbox>>>,
}

/// The awareness state every load client announces.
fn awareness_state(doc: &Doc) -> String {
    format!(r#"{{"user":{{"name":"load-{}"}}}}"#, doc.client_id())
}

impl Peer {
    /// Connects `doc` to document `name`, sends sync step 1 and its awareness, and starts the
    /// reader (which records deliveries in `inbox` when given).
    pub(crate) async fn connect(
        dial: &Dial,
        at: usize,
        name: &str,
        doc: Doc,
        inbox: Option<Inbox>,
    ) -> anyhow::Result<Peer> {
        let (addr, base) = &dial.targets[at % dial.targets.len()];
        let url = format!("{base}/{name}");
        let ws = tokio::time::timeout(dial.timeout, async {
            let tcp = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connect to {addr}"))?;
            tcp.set_nodelay(true).context("TCP_NODELAY")?;
            let config = WebSocketConfig::default()
                .read_buffer_size(dial.read_buffer)
                .write_buffer_size(0)
                .max_message_size(Some(256 << 20))
                .max_frame_size(Some(256 << 20));
            let (ws, _) = tokio_tungstenite::client_async_with_config(&url, tcp, Some(config))
                .await
                .with_context(|| format!("WebSocket handshake with {url}"))?;
            anyhow::Ok(ws)
        })
        .await
        .with_context(|| format!("no connection to {url} within {:?}", dial.timeout))??;
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let mut awareness = Awareness::new(doc.clone());
        awareness.set_local_state_raw(awareness_state(&doc));
        let step1 = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector()));
        let hello = awareness
            .update()
            .map(|u| Message::Awareness(u).encode_v1())
            .ok();
        {
            let mut sink = sink.lock().await;
            sink.feed(WsMessage::Binary(step1.encode_v1().into()))
                .await
                .context("send sync step 1")?;
            if let Some(hello) = hello {
                sink.feed(WsMessage::Binary(hello.into()))
                    .await
                    .context("send awareness")?;
            }
            sink.flush().await.context("flush")?;
        }
        let state = Arc::new(PeerState::default());
        let stop = CancellationToken::new();
        let reader = tokio::spawn(read(
            stream,
            Reader {
                sink: sink.clone(),
                awareness,
                state: state.clone(),
                inbox,
                epoch: dial.epoch,
                arrived: Vec::new(),
            },
            stop.clone(),
        ));
        Ok(Peer {
            doc,
            state,
            sink,
            stop,
            reader: Some(reader),
        })
    }

    /// Waits until `count` step 2 messages have been applied; false if the connection ended or
    /// `deadline` passed first.
    pub(crate) async fn wait_step2(&self, count: u64, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.state.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.step2.load(Ordering::Acquire) >= count {
                return true;
            }
            if self.state.closed.load(Ordering::Acquire) {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Sends one frame.
    pub(crate) async fn send(&self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.sink
            .lock()
            .await
            .send(WsMessage::Binary(Bytes::from(frame)))
            .await
            .context("send")
    }

    /// A handle for sending from another task.
    pub(crate) fn sender(&self) -> Sender {
        Sender(self.sink.clone())
    }

    /// Closes the connection (a close frame, then the reader stops) and returns the reader's
    /// inbox.
    pub(crate) async fn close(mut self) -> Option<Inbox> {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut sink = self.sink.lock().await;
            let _ = sink.send(WsMessage::Close(None)).await;
        })
        .await;
        self.stop.cancel();
        match self.reader.take() {
            Some(reader) => reader.await.ok().flatten(),
            None => None,
        }
    }
}

impl Drop for Peer {
    /// A peer dropped without [`Peer::close`] (a run past its deadline) stops its reader.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sends frames on a peer's connection.
#[derive(Clone)]
pub(crate) struct Sender(Sink);

impl Sender {
    pub(crate) async fn send(&self, frame: Vec<u8>) -> anyhow::Result<()> {
        self.0
            .lock()
            .await
            .send(WsMessage::Binary(Bytes::from(frame)))
            .await
            .context("send")
    }
}

struct Reader {
    sink: Sink,
    awareness: Awareness,
    state: Arc<PeerState>,
    inbox: Option<Inbox>,
    epoch: Instant,
    /// Reused per update: (client, end clock) of what a transaction integrated.
    arrived: Vec<(yrs::block::ClientID, u32)>,
}

async fn read(
    mut stream: SplitStream<Ws>,
    mut reader: Reader,
    stop: CancellationToken,
) -> Option<Inbox> {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            message = stream.next() => message,
        };
        match message {
            Some(Ok(WsMessage::Binary(data))) => reader.handle(&data).await,
            Some(Ok(WsMessage::Close(frame))) => {
                let reason = match frame {
                    Some(f) => format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                    None => "closed by the server".to_owned(),
                };
                if !stop.is_cancelled() {
                    reader.state.end(reason);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if !stop.is_cancelled() {
                    reader.state.end(format!("connection error: {e}"));
                }
                break;
            }
            None => {
                if !stop.is_cancelled() {
                    reader.state.end("connection ended".to_owned());
                }
                break;
            }
        }
    }
    reader.inbox
}

impl Reader {
    async fn handle(&mut self, data: &[u8]) {
        let received = nanos_since(self.epoch);
        let message = match Message::decode_v1(data) {
            Ok(message) => message,
            Err(_) => {
                self.state.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let diff = self.awareness.doc().transact().encode_diff_v1(&sv);
                let reply = Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1();
                self.reply(reply).await;
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                self.apply(&update);
                self.state
                    .step2_received_ns
                    .store(received, Ordering::Release);
                self.state
                    .step2_applied_ns
                    .store(nanos_since(self.epoch), Ordering::Release);
                self.state.step2.fetch_add(1, Ordering::AcqRel);
                self.state.synced.notify_waiters();
            }
            Message::Sync(SyncMessage::Update(update)) => self.apply(&update),
            Message::Awareness(update) => {
                // Other clients' presence: kept like a provider keeps it, never checked.
                let _ = self.awareness.apply_update(update);
            }
            Message::AwarenessQuery => {
                if let Ok(update) = self.awareness.update() {
                    self.reply(Message::Awareness(update).encode_v1()).await;
                }
            }
            Message::Auth(Some(_)) => {
                self.state.denied.store(true, Ordering::Relaxed);
                self.state.errors.fetch_add(1, Ordering::Relaxed);
            }
            Message::Auth(None) | Message::Custom(..) => {}
        }
    }

    fn apply(&mut self, update: &[u8]) {
        let update = match Update::decode_v1(update) {
            Ok(update) => update,
            Err(_) => {
                self.state.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let doc = self.awareness.doc();
        self.arrived.clear();
        {
            let mut txn = doc.transact_mut();
            if txn.apply_update(update).is_err() {
                self.state.errors.fetch_add(1, Ordering::Relaxed);
            }
            if self.inbox.is_some() {
                for (client, ranges) in txn.insert_set().iter() {
                    if let Some(end) = ranges.iter().map(|r| r.end).max() {
                        self.arrived.push((*client, end));
                    }
                }
            }
            // Committed here: observers and integration done before deliveries are counted.
        }
        if let Some(inbox) = &mut self.inbox {
            for (client, end) in self.arrived.drain(..) {
                inbox.arrived(client, end);
            }
        }
    }

    async fn reply(&self, frame: Vec<u8>) {
        let mut sink = self.sink.lock().await;
        if sink
            .send(WsMessage::Binary(Bytes::from(frame)))
            .await
            .is_err()
        {
            self.state.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
