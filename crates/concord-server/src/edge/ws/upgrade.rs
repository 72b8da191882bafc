//! The WebSocket edge: turns an HTTP upgrade into a connection of a room, reads frames into the
//! engine and writes the room's frames out, with keepalive, backpressure and close codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::panic::AssertUnwindSafe;
use std::time::SystemTime;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{Extensions, HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use concord_core::{ConnId, DocName, Inbound, RoomFault, decode_frame, encode_saved};
use futures_util::FutureExt;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::Concord;
use crate::admission::{Admitted, Needs, Refusal, admit};
use crate::auth::Grant;
use crate::limits::{ConnectionSlot, RateLimits, Rates};
use crate::persist::Barrier;
use crate::rooms::{Closer, LiveRoom, OpenError, Peer, close_code};
use crate::stats::Counters;

/// An awareness message with no entries: `[messageAwareness, length 1, count 0]`. Clients apply
/// it as a no-op, but it counts as a received message for their 30 s reconnect timer.
const EMPTY_AWARENESS: &[u8] = &[1, 1, 0];

/// Most save requests of one connection waiting for the store.
const SAVE_QUEUE: usize = 1024;
/// Bytes tungstenite collects before writing to the socket even without a flush.
const WRITE_BUFFER: usize = 16 * 1024;
/// Most queued frames written to a connection with one flush.
const WRITE_BATCH: usize = 64;

/// Counts the document updates among `inbound` (for `/metrics`).
pub(crate) fn count_updates(counters: &Counters, inbound: &[Inbound]) {
    for message in inbound {
        if let Inbound::Update(_, raw) = message {
            Counters::bump(&counters.updates_in);
            Counters::add(&counters.update_bytes_in, raw.len() as u64);
        }
    }
}

/// Most bytes read and ignored after the server closed a connection (see `linger`).
const LINGER_BYTES: usize = 1 << 20;

/// Frames at least this large are applied inside `block_in_place`.
const BLOCKING_FRAME_BYTES: usize = 256 * 1024;

/// Whether `block_in_place` may be used here (it panics on a current-thread runtime).
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// How long a close frame may take to go out before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A connection id no other connection of this process has.
pub(crate) fn next_conn_id() -> ConnId {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Extracts the document name from a request path: the whole path after the leading `/`,
/// percent-decoded. The query string is not part of the name.
pub(crate) fn doc_name_from_path(path: &str) -> Result<DocName, String> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "document name is not valid UTF-8 once percent-decoded".to_owned())?;
    DocName::new(&decoded).map_err(|e| e.to_string())
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::UPGRADE)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
        })
}

/// `GET /{*doc}`: upgrades to a WebSocket connection to the document named by the path, once
/// the request passed every check: a valid name, an allowed origin, a free connection slot,
/// the authorizer, and room for the document in memory. A plain GET of a path holding a static
/// file ([`crate::Config::static_dir`]) gets the file.
pub(crate) async fn upgrade(
    State(concord): State<Concord>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A plain GET of a path that holds a static file gets the file (see `static_files`).
    if let Some(files) = &concord.inner.static_files
        && let Some(response) = files.serve(&method, &uri, &headers).await
    {
        return response;
    }
    let name = match doc_name_from_path(uri.path()) {
        Ok(name) => name,
        Err(reason) => {
            tracing::info!(path = uri.path(), %reason, "refused connection: bad document name");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let admitted = match admit(
        &concord,
        &name,
        &headers,
        &uri,
        &extensions,
        Needs::Read,
        true,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal_response(refusal),
    };
    let Admitted { grant, slot } = admitted;
    let inner = &concord.inner;
    let config = &inner.config;
    let max = config.max_message_size;
    let tracker = inner.tracker.clone();
    // Memory per idle connection: tungstenite zero-fills its whole read buffer on every read,
    // so all of it is resident. 1 KiB holds dozens of keystroke updates per read; a larger
    // frame gets a buffer of its size (read at most 1 KiB per syscall).
    ws.read_buffer_size(1024)
        // Frames of one batch (`write_loop`) collect here until the flush writes them at once.
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.saturating_mul(2).max(1 << 20))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(serve_contained(concord, name, grant, slot, socket))
        })
}

/// A refusal before the upgrade: the status, `WWW-Authenticate: Bearer` on a 401, the reason
/// as a text body.
fn refusal_response(refusal: Refusal) -> Response {
    if refusal.asks_for_credentials() {
        return (
            refusal.status,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            refusal.reason,
        )
            .into_response();
    }
    (refusal.status, refusal.reason).into_response()
}

/// Runs one connection; a panic while serving it is logged and counted, and ends only this
/// connection (its room membership is undone as the stack unwinds).
async fn serve_contained(
    concord: Concord,
    name: DocName,
    grant: Grant,
    slot: ConnectionSlot,
    socket: WebSocket,
) {
    let counters = concord.inner.counters.clone();
    let doc = name.clone();
    counters.add_websocket(1);
    // Boxed here and inside `serve`: a future moved into another one (an async block, a
    // `join!`) is laid out twice by rustc; boxing keeps one copy of each part on the heap.
    let served = AssertUnwindSafe(Box::pin(serve(concord, name, grant, socket)))
        .catch_unwind()
        .await;
    counters.add_websocket(-1);
    if served.is_err() {
        Counters::bump(&counters.panics);
        tracing::error!(%doc, "a connection panicked; it was closed, the server goes on");
    }
    drop(slot);
}

/// Takes a connection out of its room when dropped, also while unwinding from a panic, so
/// that its peer entry and awareness states never outlive it.
pub(crate) struct Membership<'a> {
    pub(crate) room: &'a LiveRoom,
    pub(crate) conn: ConnId,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.room.leave(self.conn);
    }
}

/// Runs one connection from join to leave.
async fn serve(concord: Concord, name: DocName, grant: Grant, socket: WebSocket) {
    let access = grant.access;
    let conn = next_conn_id();
    let (mut sink, stream) = socket.split();
    let inner = &concord.inner;
    let opened = tokio::select! {
        opened = inner.rooms.open(&name) => opened,
        _ = inner.shutdown.cancelled() => {
            close(&mut sink, close_code::GOING_AWAY, "server shutting down").await;
            return;
        }
    };
    let guard = match opened {
        Ok(guard) => guard,
        Err(OpenError::TooManyRooms(max)) => {
            // Checked before the upgrade too; this is the race where the last slot went to
            // another document meanwhile.
            Counters::bump(&inner.counters.rooms_refused);
            tracing::warn!(doc = %name, max_rooms = max, "closing: too many documents open");
            close(
                &mut sink,
                close_code::TRY_AGAIN_LATER,
                "too many documents are open; try again later",
            )
            .await;
            return;
        }
        Err(e) => {
            if e.is_panic() {
                Counters::bump(&inner.counters.panics);
            }
            tracing::error!(doc = %name, error = %e, "could not open document");
            close(
                &mut sink,
                close_code::INTERNAL_ERROR,
                "could not load the document",
            )
            .await;
            return;
        }
    };
    let room = guard.room().clone();
    let config = &inner.config;
    let (tx, rx) = mpsc::channel(config.outbound_queue_frames.max(2));
    let closer = Closer::default();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let last_seen = LastSeen::new();
    let peer = Peer {
        tx,
        queued_bytes: queued_bytes.clone(),
        closer: closer.clone(),
        awareness_only: false,
    };
    room.join(conn, access, peer.clone());
    let membership = Membership { room: &room, conn };
    tracing::debug!(doc = %name, conn, subject = grant.subject.as_deref(), ?access, "connected");

    // Save requests waiting for their barrier, made on the first request (plain y-websocket
    // clients never send one).
    let (mut saves, saves_rx) = SaveQueue::new();
    let acks = Box::pin({
        let peer = peer.clone();
        async move {
            if let Ok(saves) = saves_rx.await {
                acknowledge_saves(saves, peer).await;
            }
        }
    });
    let reader = Box::pin(async {
        let mut stream = stream;
        read_loop(
            &concord,
            &room,
            conn,
            &mut stream,
            &peer,
            &mut saves,
            &last_seen,
        )
        .await;
        // Let the acknowledger finish what is queued, then stop.
        drop(saves);
        if closer.frame().is_some() {
            linger(&mut stream).await;
        }
    });
    let writer = Box::pin(write_loop(
        &concord,
        sink,
        rx,
        &closer,
        &queued_bytes,
        &last_seen,
    ));
    // Shutdown closes the connection even while the writer is stuck sending to a peer that
    // stopped reading (that peer gets no close frame: its socket cannot take one).
    // Beyond a year the timer is not worth arming (and far deadlines overflow `Instant`).
    let expiry = grant.expires_at.and_then(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        (left < Duration::from_secs(365 * 24 * 3600)).then(|| Instant::now() + left)
    });
    let on_shutdown = Box::pin(async {
        tokio::select! {
            _ = inner.shutdown.cancelled() => {
                closer.close(close_code::GOING_AWAY, "server shutting down");
            }
            _ = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                Counters::bump(&inner.counters.tokens_expired);
                tracing::info!(doc = %name, conn, "closing: token expired");
                closer.close(close_code::TOKEN_EXPIRED, "token expired");
            }
            _ = closer.closed() => {}
        }
    });
    let session = async {
        tokio::join!(reader, writer, on_shutdown);
        // Leave at once (others see this client's awareness go) even if acknowledgements are
        // still waiting for the store.
        drop(membership);
    };
    tokio::join!(session, acks);

    if room.is_poisoned() {
        inner.rooms.discard(&room);
    }
    drop(guard);
    tracing::debug!(doc = %name, conn, "disconnected");
}

async fn read_loop(
    concord: &Concord,
    room: &Arc<LiveRoom>,
    conn: ConnId,
    stream: &mut SplitStream<WebSocket>,
    peer: &Peer,
    saves: &mut SaveQueue,
    last_seen: &LastSeen,
) {
    let name = room.name();
    let closer = &peer.closer;
    let config = &concord.inner.config;
    let counters = &concord.inner.counters;
    let limits = RateLimits::new(
        Rates {
            messages_per_second: config.rate_messages_per_second,
            message_burst: config.rate_message_burst,
            bytes_per_second: config.rate_bytes_per_second,
            byte_burst: config.rate_byte_burst,
            awareness_per_second: config.rate_awareness_per_second,
            awareness_burst: config.rate_awareness_burst,
        },
        config.max_message_size,
    );
    loop {
        let message = tokio::select! {
            biased;
            _ = closer.closed() => return,
            message = stream.next() => message,
        };
        last_seen.touch();
        let data = match message {
            Some(Ok(WsMessage::Binary(data))) => data,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Text(_))) => {
                tracing::info!(doc = %name, conn, "closing: text frame");
                closer.close(
                    close_code::UNSUPPORTED,
                    "text frames are not supported: send binary y-protocols messages",
                );
                return;
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                closer.close_silently();
                return;
            }
            Some(Err(e)) => {
                if is_too_big(e) {
                    let limit = concord.inner.config.max_message_size;
                    tracing::info!(doc = %name, conn, limit, "closing: message too big");
                    closer.close(
                        close_code::TOO_BIG,
                        format!("message too big: the limit is {limit} bytes"),
                    );
                } else {
                    closer.close_silently();
                }
                return;
            }
        };
        // Before decoding: a flood costs a bucket check per frame, nothing more.
        if let Err(exceeded) = limits.check(data.len()) {
            Counters::bump(&counters.rate_limited);
            tracing::warn!(doc = %name, conn, %exceeded, "closing: rate limit exceeded");
            closer.close(close_code::RATE_LIMITED, exceeded.to_string());
            return;
        }
        let inbound = match decode_frame(&data) {
            Ok(inbound) => inbound,
            Err(e) => {
                Counters::bump(&counters.malformed);
                tracing::warn!(doc = %name, conn, error = %e, "closing: malformed message");
                let code = if e.is_unsupported() {
                    close_code::UNSUPPORTED
                } else {
                    close_code::INVALID_PAYLOAD
                };
                closer.close(code, truncate_reason(&format!("malformed message: {e}")));
                return;
            }
        };
        let awareness = inbound
            .iter()
            .filter(|message| matches!(message, Inbound::Awareness(_)))
            .count();
        if let Err(exceeded) = limits.check_awareness(awareness) {
            Counters::bump(&counters.rate_limited);
            tracing::warn!(doc = %name, conn, %exceeded, "closing: rate limit exceeded");
            closer.close(close_code::RATE_LIMITED, exceeded.to_string());
            return;
        }
        count_updates(counters, &inbound);
        let save_ids: Vec<u64> = inbound
            .iter()
            .filter_map(|message| match message {
                Inbound::SaveRequest(id) => Some(*id),
                _ => None,
            })
            .collect();
        let order = room.persist_order().await;
        let (persist, fault) = if data.len() >= BLOCKING_FRAME_BYTES && multi_threaded() {
            // Merging a large update can take tens of milliseconds: tell the runtime, so the
            // other connections on this worker thread move to another one meanwhile.
            tokio::task::block_in_place(|| room.receive(conn, inbound))
        } else {
            room.receive(conn, inbound)
        };
        if !persist.is_empty() {
            concord.inner.persister.persist(name, persist).await;
        }
        let mut barriers = Vec::with_capacity(save_ids.len());
        for id in save_ids {
            barriers.push((id, concord.inner.persister.queue_barrier().await));
        }
        drop(order);
        for barrier in barriers {
            if saves.sender().send(barrier).await.is_err() {
                return;
            }
        }
        match fault {
            None => {}
            Some(RoomFault::Poisoned) => {
                Counters::bump(&counters.panics);
                tracing::error!(doc = %name, conn, "yrs panicked applying an update; room discarded");
                concord.inner.rooms.discard(room);
                return;
            }
            Some(fault @ RoomFault::UpdateRejected(_)) => {
                Counters::bump(&counters.malformed);
                tracing::warn!(doc = %name, conn, error = %fault, "closing: update rejected");
                closer.close(
                    close_code::INVALID_PAYLOAD,
                    truncate_reason(&fault.to_string()),
                );
                return;
            }
            Some(fault @ RoomFault::DocumentTooLarge { .. }) => {
                Counters::bump(&counters.documents_too_large);
                tracing::warn!(doc = %name, conn, error = %fault, "closing: update refused");
                closer.close(close_code::DOCUMENT_TOO_LARGE, fault.to_string());
                return;
            }
            Some(fault @ RoomFault::AwarenessTooLarge { .. }) => {
                Counters::bump(&counters.awareness_too_large);
                tracing::warn!(doc = %name, conn, error = %fault, "closing: awareness refused");
                closer.close(close_code::TOO_BIG, fault.to_string());
                return;
            }
        }
    }
}

/// After the server sent a close frame: reads (and ignores) what the peer still sends until
/// its own close frame arrives, for at most [`CLOSE_TIMEOUT`] and [`LINGER_BYTES`]. Closing a socket with unread
/// data makes the kernel reset the connection, and a reset can discard the close frame (with
/// its reason) before the peer reads it, which is just what a flooding client would send into.
async fn linger(stream: &mut SplitStream<WebSocket>) {
    let drain = async {
        let mut drained = 0usize;
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, WsMessage::Close(_)) {
                return;
            }
            // A peer that keeps flooding after the close gets no more of the server's time.
            drained += match &message {
                WsMessage::Binary(data) | WsMessage::Ping(data) | WsMessage::Pong(data) => {
                    data.len()
                }
                WsMessage::Text(text) => text.len(),
                WsMessage::Close(_) => 0,
            };
            if drained > LINGER_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

/// Answers a connection's save requests, in the order they were made: each waits on a barrier
/// queued behind that connection's updates, and barriers complete in order anyway, so waiting
/// one after another costs nothing and a client may match acknowledgements first in, first out.
/// The connection's queue of save requests waiting for their barrier, created on first use.
/// Bounded: a client with `SAVE_QUEUE` requests in flight has its reads paused until the
/// store catches up.
struct SaveQueue {
    tx: Option<mpsc::Sender<(u64, Barrier)>>,
    /// Hands the receiving end to the acknowledger when the queue is made.
    start: Option<oneshot::Sender<mpsc::Receiver<(u64, Barrier)>>>,
}

impl SaveQueue {
    fn new() -> (SaveQueue, oneshot::Receiver<mpsc::Receiver<(u64, Barrier)>>) {
        let (start, started) = oneshot::channel();
        let queue = SaveQueue {
            tx: None,
            start: Some(start),
        };
        (queue, started)
    }

    fn sender(&mut self) -> &mpsc::Sender<(u64, Barrier)> {
        let start = &mut self.start;
        self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(SAVE_QUEUE);
            if let Some(start) = start.take() {
                // The acknowledger is gone only when the connection ends: sends then fail.
                let _ = start.send(rx);
            }
            tx
        })
    }
}

async fn acknowledge_saves(mut saves: mpsc::Receiver<(u64, Barrier)>, peer: Peer) {
    while let Some((id, barrier)) = saves.recv().await {
        if !barrier.wait().await {
            // Not durable: no acknowledgement. The client keeps showing "unsaved" and resends
            // its updates when it next syncs.
            continue;
        }
        let ack = encode_saved(id);
        peer.queued_bytes.fetch_add(ack.len(), Ordering::Relaxed);
        if peer.tx.try_send(ack).is_err() && !peer.closer.is_closed() {
            peer.closer.close(
                close_code::TRY_AGAIN_LATER,
                "outbound queue full: client too slow; reconnect to resync",
            );
        }
    }
}

async fn write_loop(
    concord: &Concord,
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Bytes>,
    closer: &Closer,
    queued_bytes: &AtomicUsize,
    last_seen: &LastSeen,
) {
    let inner = &concord.inner;
    let interval = inner.config.keepalive_interval;
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_since_tick = false;
    loop {
        let message = tokio::select! {
            biased;
            _ = closer.closed() => break,
            _ = inner.shutdown.cancelled() => {
                closer.close(close_code::GOING_AWAY, "server shutting down");
                break;
            }
            frame = rx.recv() => match frame {
                Some(frame) => {
                    queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
                    sent_since_tick = true;
                    WsMessage::Binary(frame)
                }
                None => break,
            },
            _ = ticker.tick() => {
                if last_seen.elapsed() > interval * 3 {
                    tracing::info!("closing: peer silent for three keepalive intervals");
                    closer.close_silently();
                    break;
                }
                if !send(&mut sink, WsMessage::Ping(Bytes::new()), closer).await {
                    return;
                }
                if sent_since_tick {
                    sent_since_tick = false;
                    continue;
                }
                WsMessage::Binary(Bytes::from_static(EMPTY_AWARENESS))
            }
        };
        let counters = &concord.inner.counters;
        let WsMessage::Binary(first) = message else {
            if !send(&mut sink, message, closer).await {
                return;
            }
            continue;
        };
        // This frame and whatever else is queued already go out in one write: a busy room's
        // fan-out costs a syscall per batch, not per frame.
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => {
                    queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        for data in &batch {
            Counters::bump(&counters.frames_out);
            Counters::add(&counters.bytes_out, data.len() as u64);
        }
        if !send_all(&mut sink, batch, closer).await {
            return;
        }
    }
    match closer.frame() {
        Some((code, reason)) => close(&mut sink, code, &reason).await,
        // No frame of our own: if the peer sent a close frame, tungstenite has queued the
        // reply that completes the closing handshake, and closing the sink flushes it.
        None => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
    }
}

/// Sends one message unless the connection is asked to close meanwhile. Returns false when the
/// connection is finished (the peer is gone, or closing was requested mid-send: a socket
/// whose send blocks cannot take a close frame either).
async fn send(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    message: WsMessage,
    closer: &Closer,
) -> bool {
    tokio::select! {
        result = sink.send(message) => {
            if result.is_err() {
                closer.close_silently();
                return false;
            }
            true
        }
        _ = closer.closed() => false,
    }
}

/// Sends `frames` with one flush at the end, unless the connection is asked to close meanwhile;
/// returns false when the connection is finished (as [`send`]).
async fn send_all(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    frames: Vec<Bytes>,
    closer: &Closer,
) -> bool {
    let sending = async {
        for frame in frames {
            sink.feed(WsMessage::Binary(frame)).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        result = sending => {
            if result.is_err() {
                closer.close_silently();
                return false;
            }
            true
        }
        _ = closer.closed() => false,
    }
}

async fn close(sink: &mut SplitSink<WebSocket, WsMessage>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(WsMessage::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// Close reasons must fit in a control frame: 123 bytes of UTF-8.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn is_too_big(error: axum::Error) -> bool {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => matches!(*e, tungstenite::Error::Capacity(_)),
        Err(_) => false,
    }
}

/// When the peer last sent anything, for dead-peer detection.
struct LastSeen {
    start: Instant,
    millis: AtomicU64,
}

impl LastSeen {
    fn new() -> Self {
        LastSeen {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(now, Ordering::Relaxed);
    }

    fn elapsed(&self) -> Duration {
        let seen = Duration::from_millis(self.millis.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_names_come_from_the_decoded_path() {
        assert_eq!(doc_name_from_path("/my-doc").unwrap().as_str(), "my-doc");
        assert_eq!(
            doc_name_from_path("/team/a/notes").unwrap().as_str(),
            "team/a/notes"
        );
        assert_eq!(doc_name_from_path("/my%20doc").unwrap().as_str(), "my doc");
        assert!(doc_name_from_path("/").is_err());
        assert!(doc_name_from_path("/a%0Ab").is_err());
        assert!(doc_name_from_path("/%FF").is_err());
        assert!(doc_name_from_path(&format!("/{}", "x".repeat(513))).is_err());
    }

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
    }
}
