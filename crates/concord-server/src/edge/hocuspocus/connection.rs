//! A Hocuspocus socket from upgrade to close: socket admission, then a reader that keeps the
//! socket's table of documents (open ones, and ones whose Auth has not come yet) and hands
//! each document's messages to the ingest path.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use concord_core::hocuspocus::{self as hp, ClientFrame, DocMessage, DocMessageError, Scope};
use concord_core::{Access, ConnId, Inbound};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::edge::hocuspocus::StatelessMessage;
use crate::edge::hocuspocus::writer::{Attach, SocketFrames};
use crate::edge::ws::close::close_frame;
use crate::edge::ws::linger::linger;
use crate::edge::ws::reader::{Next, binary};
use crate::edge::ws::writer::{LastSeen, Writer};
use crate::edge::ws::{open_failed, rates, refusal_response};
use crate::ingest::{Durable, Source};
use crate::ops::stats::Counters;
use crate::policy::admission::Needs;
use crate::policy::auth::AuthRequest;
use crate::policy::limits::{ConnectionSlot, RateLimits};
use crate::rooms::{
    CloseReason, Closer, LiveRoom, Membership, OpenError, Peer, Recipients, RoomGuard, next_conn_id,
};
use crate::state::AppState;

/// Frames of the socket's own (auth answers, closes, pongs) waiting for the writer. Overflow
/// policy: the socket is closed as a slow consumer (a client that keeps asking without reading).
const CONTROL_QUEUE: usize = 256;
/// SyncStatus answers of one document waiting for their updates to be stored. Overflow policy:
/// the reader waits (the socket's reads pause) until the store catches up.
const ACK_QUEUE: usize = 1024;
/// Most frames held for documents whose Auth message has not arrived (the provider may send
/// queued edits first). Overflow policy: the socket is closed with 1009.
const PENDING_FRAMES: usize = 1024;
/// Documents remembered as closed by the server, per socket. Overflow policy: the set is
/// emptied (a provider that keeps sending for a forgotten one has its frames held, as for any
/// document not open).
const CLOSED_KEYS: usize = 256;
/// Bytes written to the socket's buffer before it is flushed even without one.
const WRITE_BUFFER: usize = 16 * 1024;

/// What the authorizer may look at besides the token: the upgrade request.
struct Handshake {
    headers: HeaderMap,
    query: Option<String>,
    peer: Option<std::net::SocketAddr>,
}

/// Upgrades a request for the server's root to a Hocuspocus socket once the socket's checks
/// pass (shutdown, origin, connection slot); documents are admitted later, one by one.
pub(crate) async fn upgrade(
    state: AppState,
    uri: &Uri,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let slot = match state
        .admission
        .connect(headers, peer, &"(hocuspocus socket)")
    {
        Ok(slot) => slot,
        Err(refusal) => return refusal_response(refusal),
    };
    let handshake = Handshake {
        headers: headers.clone(),
        query: uri.query().map(str::to_owned),
        peer,
    };
    let max = state.config.max_message_size;
    let tracker = state.tracker.clone();
    ws.read_buffer_size(1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.saturating_mul(2).max(1 << 20))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(serve_contained(state, handshake, slot, socket))
        })
}

/// Runs one socket; a panic while serving it is logged and counted, and ends only this socket.
async fn serve_contained(
    state: AppState,
    handshake: Handshake,
    slot: ConnectionSlot,
    socket: WebSocket,
) {
    let counters = state.counters.clone();
    counters.add_websocket(1);
    let served = AssertUnwindSafe(Box::pin(serve(state, handshake, socket)))
        .catch_unwind()
        .await;
    counters.add_websocket(-1);
    if served.is_err() {
        Counters::bump(&counters.panics);
        tracing::error!("a Hocuspocus connection panicked; it was closed, the server goes on");
    }
    drop(slot);
}

async fn serve(state: AppState, handshake: Handshake, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let config = &state.config;
    let closer = Closer::default();
    let last_seen = LastSeen::new();
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (attach_tx, attach_rx) = mpsc::channel(config.max_documents_per_connection.max(1));
    let reader = Box::pin(async {
        let mut session = Session {
            state: &state,
            handshake: &handshake,
            closer: &closer,
            last_seen: &last_seen,
            control: control_tx,
            attach: attach_tx,
            limits: RateLimits::new(rates(config), config.max_message_size),
            docs: HashMap::new(),
            pending: HashMap::new(),
            pending_frames: 0,
            pending_bytes: 0,
            closed: HashSet::new(),
            watches: FuturesUnordered::new(),
        };
        session.run(&mut stream).await;
        // Leave every room at once (others see these clients' awareness go).
        drop(session);
        if closer.reason().is_some() {
            linger(&mut stream).await;
        }
    });
    let writer = Box::pin(async {
        let writer = Writer {
            keepalive: config.keepalive_interval,
            shutdown: &state.shutdown,
            closer: &closer,
            last_seen: &last_seen,
            counters: &state.counters,
        };
        let frames = SocketFrames::new(control_rx, attach_rx);
        writer.drain(sink, frames, hp::PING).await;
    });
    tokio::join!(reader, writer);
}

/// A document open on the socket. Dropping it leaves the room (fields drop in order: the
/// membership before the room guard).
struct OpenDoc {
    conn: ConnId,
    access: Access,
    subject: Option<String>,
    /// Closes this document alone.
    closer: Closer,
    membership: Membership,
    /// SyncStatus answers, in order, for the acknowledger.
    acks: mpsc::Sender<Ack>,
    _guard: RoomGuard,
}

impl OpenDoc {
    fn room(&self) -> &Arc<LiveRoom> {
        self.membership.room()
    }
}

/// One SyncStatus answer: once something is stored, or at once.
enum Ack {
    Stored(Durable),
    Now(bool),
}

/// The reader's state: the socket's documents.
struct Session<'a> {
    state: &'a AppState,
    handshake: &'a Handshake,
    /// Closes the socket.
    closer: &'a Closer,
    last_seen: &'a LastSeen,
    control: mpsc::Sender<Bytes>,
    attach: mpsc::Sender<Attach>,
    limits: RateLimits,
    /// Open documents by routing key.
    docs: HashMap<String, OpenDoc>,
    /// Frames of documents whose Auth message has not arrived, by routing key.
    pending: HashMap<String, Vec<Bytes>>,
    pending_frames: usize,
    pending_bytes: usize,
    /// Documents the server closed on this socket (at most [`CLOSED_KEYS`]): their provider
    /// may go on sending until it opens them again, and what it sends is dropped, not held.
    closed: HashSet<String>,
    /// Resolve when an open document is closed (by its room, its token's expiry, a refusal,
    /// or the client), with its key and connection id.
    watches: FuturesUnordered<BoxFuture<'static, (String, ConnId)>>,
}

impl Session<'_> {
    async fn run<S, E>(&mut self, stream: &mut S)
    where
        S: Stream<Item = Result<WsMessage, E>> + Unpin,
        E: Into<axum::Error>,
    {
        let (closer, counters) = (self.closer, &self.state.counters);
        // Made once, not per frame: each new one registers a waiter under the token's lock.
        let mut closed = std::pin::pin!(closer.closed());
        loop {
            let message = tokio::select! {
                biased;
                _ = &mut closed => return,
                Some((key, conn)) = self.watches.next(), if !self.watches.is_empty() => {
                    self.closed(key, conn);
                    continue;
                }
                message = stream.next() => message,
            };
            self.last_seen.touch();
            let max = self.state.config.max_message_size;
            let data = match binary(message, closer, max) {
                Next::Frame(data) => data,
                Next::Skip => continue,
                Next::End => {
                    if let Some(reason) = closer.reason() {
                        tracing::info!(?reason, "closing Hocuspocus socket");
                    }
                    return;
                }
            };
            if let Err(exceeded) = self.limits.check(data.len()) {
                Counters::bump(&counters.rate_limited);
                tracing::warn!(%exceeded, "closing Hocuspocus socket: rate limit exceeded");
                closer.close(CloseReason::RateLimited(exceeded.to_string()));
                return;
            }
            if !self.frame(&data).await {
                return;
            }
        }
    }

    /// Handles one frame; false when the socket is to close.
    async fn frame(&mut self, data: &Bytes) -> bool {
        let (key, message) = match hp::decode_client_frame(data) {
            Ok(ClientFrame::Pong) => return true,
            Ok(ClientFrame::Ping) => return self.send(Bytes::from_static(hp::PONG)),
            Ok(ClientFrame::Doc { key, message }) => (key, message),
            Err(e) => {
                Counters::bump(&self.state.counters.malformed);
                tracing::warn!(error = %e, "closing Hocuspocus socket: a frame that names no document");
                self.closer
                    .close(CloseReason::Malformed(format!("malformed message: {e}")));
                return false;
            }
        };
        if let Ok(DocMessage::Token { token }) = &message {
            if self.docs.contains_key(key) {
                tracing::debug!(
                    doc = short(key),
                    "Auth for a document already open on this socket; ignored"
                );
                return true;
            }
            self.closed.remove(key);
            if !self.open(key, token).await {
                return false;
            }
            // What the provider sent before its Auth, in order.
            for queued in self.take_pending(key) {
                if let Ok(ClientFrame::Doc { key, message }) = hp::decode_client_frame(&queued)
                    && !matches!(message, Ok(DocMessage::Token { .. }))
                    && !self.doc_message(key, message).await
                {
                    return false;
                }
            }
            return true;
        }
        if !self.docs.contains_key(key) {
            if self.closed.contains(key) {
                tracing::debug!(
                    doc = short(key),
                    "a message for a document closed on this socket; dropped"
                );
                return true;
            }
            return self.hold(key, message, data);
        }
        self.doc_message(key, message).await
    }

    /// Keeps a frame for a document that is not open until its Auth arrives; false when the
    /// socket is to close.
    fn hold(
        &mut self,
        key: &str,
        message: Result<DocMessage<'_>, DocMessageError>,
        data: &Bytes,
    ) -> bool {
        match message {
            Ok(DocMessage::Close) => {
                self.take_pending(key);
                return true;
            }
            Err(e) => {
                self.take_pending(key);
                return self.refuse_frame(key, &e);
            }
            Ok(_) => {}
        }
        if !self.pending.contains_key(key) && self.documents() >= self.max_documents() {
            return self.deny(key, &self.too_many());
        }
        let cap = self.state.config.max_message_size.max(1 << 20);
        if self.pending_frames >= PENDING_FRAMES || self.pending_bytes + data.len() > cap {
            tracing::warn!(
                frames = self.pending_frames,
                bytes = self.pending_bytes,
                "closing Hocuspocus socket: too much sent for documents not authenticated"
            );
            self.closer.close(CloseReason::TooBig(format!(
                "too much sent before authentication: at most {PENDING_FRAMES} messages and \
                 {cap} bytes"
            )));
            return false;
        }
        self.pending_frames += 1;
        self.pending_bytes += data.len();
        self.pending
            .entry(key.to_owned())
            .or_default()
            .push(data.clone());
        true
    }

    fn take_pending(&mut self, key: &str) -> Vec<Bytes> {
        let frames = self.pending.remove(key).unwrap_or_default();
        self.pending_frames -= frames.len();
        self.pending_bytes -= frames.iter().map(Bytes::len).sum::<usize>();
        frames
    }

    fn documents(&self) -> usize {
        self.docs.len() + self.pending.len()
    }

    fn max_documents(&self) -> usize {
        self.state.config.max_documents_per_connection
    }

    fn too_many(&self) -> String {
        format!(
            "too many documents on this connection (at most {})",
            self.max_documents()
        )
    }

    /// Admits and opens the document `key` names with `token`: `Authenticated` and the first
    /// sync messages, or `PermissionDenied` (a Close when the document cannot be loaded).
    /// False when the socket is to close.
    async fn open(&mut self, key: &str, token: &str) -> bool {
        let others = self.documents() - usize::from(self.pending.contains_key(key));
        if others >= self.max_documents() {
            self.take_pending(key);
            return self.deny(key, &self.too_many());
        }
        let name = match hp::doc_name(key) {
            Ok(name) => name,
            Err(e) => {
                self.take_pending(key);
                tracing::info!(doc = short(key), reason = %e, "refused document: bad name");
                return self.deny(key, &e.to_string());
            }
        };
        let request = AuthRequest {
            doc: &name,
            headers: &self.handshake.headers,
            query: self.handshake.query.as_deref(),
            peer: self.handshake.peer,
            protocol_token: Some(token),
        };
        let state = self.state;
        let grant = match state.admission.authorize(request, Needs::Read, true).await {
            Ok(grant) => grant,
            Err(refusal) => {
                self.take_pending(key);
                return self.deny(key, &refusal.reason);
            }
        };
        let opened = tokio::select! {
            opened = state.rooms.open(&name) => opened,
            _ = state.shutdown.cancelled() => Err(OpenError::ShuttingDown),
        };
        let guard = match opened {
            Ok(guard) => guard,
            Err(e) => {
                self.take_pending(key);
                let reason = open_failed(state, &name, &e);
                return self.send_close(key, &reason);
            }
        };
        let room = guard.room().clone();
        let conn = next_conn_id();
        let closer = Closer::default();
        let config = &state.config;
        let (mut peer, outbox) = Peer::new(config.outbound_queue_frames, closer.clone(), false);
        peer.stateless = true;
        let scope = match grant.access {
            Access::ReadWrite => Scope::ReadWrite,
            Access::ReadOnly => Scope::ReadOnly,
        };
        // Ahead of the room's first frames, in the same queue.
        peer.try_queue(Bytes::from(hp::authenticated(scope)), usize::MAX);
        let key_arc: Arc<str> = Arc::from(key);
        if self.attach.send((key_arc, outbox)).await.is_err() {
            return false;
        }
        let membership = room.join(conn, grant.access, peer.clone());
        let (acks, acks_rx) = mpsc::channel(ACK_QUEUE);
        state.tracker.spawn(acknowledge(acks_rx, peer));
        self.watch(key, conn, &closer, grant.expires_at);
        tracing::debug!(doc = %name, conn, subject = grant.subject.as_deref(), access = ?grant.access, "Hocuspocus document opened");
        self.docs.insert(
            key.to_owned(),
            OpenDoc {
                conn,
                access: grant.access,
                subject: grant.subject,
                closer,
                membership,
                acks,
                _guard: guard,
            },
        );
        true
    }

    /// Watches an open document: resolves when it is closed, closing it itself when its token
    /// expires.
    fn watch(&mut self, key: &str, conn: ConnId, closer: &Closer, expires: Option<SystemTime>) {
        let closer = closer.clone();
        let key = key.to_owned();
        let counters = self.state.counters.clone();
        let expiry = expires.and_then(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            (left < Duration::from_secs(365 * 24 * 3600)).then(|| Instant::now() + left)
        });
        self.watches.push(
            async move {
                tokio::select! {
                    _ = closer.closed() => {}
                    _ = async {
                        match expiry {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        Counters::bump(&counters.tokens_expired);
                        tracing::info!(doc = short(&key), conn, "closing Hocuspocus document: token expired");
                        closer.close(CloseReason::TokenExpired);
                    }
                }
                (key, conn)
            }
            .boxed(),
        );
    }

    /// An open document was closed: it leaves its room, and its client is told why (unless
    /// the client closed it).
    fn closed(&mut self, key: String, conn: ConnId) {
        if self.docs.get(&key).is_none_or(|doc| doc.conn != conn) {
            return;
        }
        let Some(doc) = self.docs.remove(&key) else {
            return;
        };
        if doc.room().is_poisoned() {
            self.state.rooms.discard(doc.room());
        }
        if let Some(reason) = doc.closer.reason() {
            if self.closed.len() >= CLOSED_KEYS {
                self.closed.clear();
            }
            self.send_close(&key, &reason);
            self.closed.insert(key);
        }
    }

    /// Handles a message for an open document; false when the socket is to close.
    async fn doc_message(
        &mut self,
        key: &str,
        message: Result<DocMessage<'_>, DocMessageError>,
    ) -> bool {
        let Some(doc) = self.docs.get(key) else {
            return true;
        };
        if doc.closer.is_closed() {
            // Closed a moment ago; its watch has not said so yet.
            return true;
        }
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                Counters::bump(&self.state.counters.malformed);
                tracing::warn!(doc = short(key), conn = doc.conn, error = %e, "closing Hocuspocus document: malformed message");
                doc.closer
                    .close(CloseReason::refusing(&e, e.is_unsupported()));
                return true;
            }
        };
        match message {
            DocMessage::Close => {
                doc.closer.close_silently();
                true
            }
            DocMessage::Token { .. } => true,
            DocMessage::Stateless(payload) => self.stateless(key, payload),
            DocMessage::YProtocols(inbound) => self.y_protocols(key, inbound).await,
        }
    }

    async fn y_protocols(&mut self, key: &str, mut inbound: Vec<Inbound>) -> bool {
        let Some(doc) = self.docs.get(key) else {
            return true;
        };
        let counters = &self.state.counters;
        if let Err(exceeded) = self.limits.check_awareness_of(&inbound) {
            Counters::bump(&counters.rate_limited);
            tracing::warn!(%exceeded, "closing Hocuspocus socket: rate limit exceeded");
            self.closer
                .close(CloseReason::RateLimited(exceeded.to_string()));
            return false;
        }
        let update = inbound.iter().find_map(|m| match m {
            Inbound::Update(update, _) => Some(update),
            _ => None,
        });
        if let Some(update) = update {
            if doc.access == Access::ReadOnly {
                // Not applied. Saved means "nothing of it is missing here", as Hocuspocus
                // answers a read-only provider's SyncStep2.
                Counters::bump(&counters.updates_in);
                let saved = !doc.room().would_change(update);
                return doc.acks.send(Ack::Now(saved)).await.is_ok();
            }
            inbound.push(Inbound::SaveRequest(0));
        }
        let conn = doc.conn;
        let room = doc.room().clone();
        let outcome = Box::pin(
            self.state
                .ingest
                .receive(&room, Source::Conn(conn), inbound),
        )
        .await;
        let Some(doc) = self.docs.get(key) else {
            return true;
        };
        for ticket in outcome.saves {
            if doc.acks.send(Ack::Stored(ticket.durable)).await.is_err() {
                return true;
            }
        }
        if let Some(refused) = outcome.refused {
            tracing::warn!(doc = short(key), conn, error = %refused, "closing Hocuspocus document: refused");
            doc.closer.close(refused.close_reason());
        }
        true
    }

    fn stateless(&mut self, key: &str, payload: &str) -> bool {
        let Some(doc) = self.docs.get(key) else {
            return true;
        };
        let counters = &self.state.counters;
        let config = &self.state.config;
        if let Err(exceeded) = self.limits.check_awareness(1) {
            Counters::bump(&counters.rate_limited);
            tracing::warn!(%exceeded, "closing Hocuspocus socket: rate limit exceeded");
            self.closer
                .close(CloseReason::RateLimited(exceeded.to_string()));
            return false;
        }
        let limit = config.max_awareness_state_bytes;
        if payload.len() > limit {
            tracing::warn!(
                doc = short(key),
                conn = doc.conn,
                "closing Hocuspocus document: stateless message too large"
            );
            doc.closer.close(CloseReason::TooBig(format!(
                "stateless message too large: the limit is {limit} bytes"
            )));
            return true;
        }
        if let Some(hook) = &config.on_stateless {
            let message = StatelessMessage {
                doc: doc.room().name().clone(),
                payload: payload.to_owned(),
                connection: doc.conn,
                subject: doc.subject.clone(),
            };
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(message))).is_err() {
                Counters::bump(&counters.panics);
                tracing::error!(
                    doc = short(key),
                    "the stateless hook panicked; the message was dropped"
                );
            }
        }
        if config.relay_stateless {
            doc.room()
                .send_stateless(payload, Recipients::AllBut(doc.conn));
        }
        true
    }

    /// A malformed frame for a document that is not open: that document is told, nothing else.
    fn refuse_frame(&mut self, key: &str, e: &DocMessageError) -> bool {
        Counters::bump(&self.state.counters.malformed);
        tracing::warn!(doc = short(key), error = %e, "refused a malformed Hocuspocus message");
        self.send_close(key, &CloseReason::refusing(e, e.is_unsupported()))
    }

    /// Tells `key`'s provider it may not open the document.
    fn deny(&self, key: &str, reason: &str) -> bool {
        tracing::info!(doc = short(key), %reason, "Hocuspocus document refused");
        self.send(Bytes::from(hp::addressed(
            key,
            &hp::permission_denied(reason),
        )))
    }

    /// Tells `key`'s provider the server closed the document, and why.
    fn send_close(&self, key: &str, reason: &CloseReason) -> bool {
        let (_, text) = close_frame(reason);
        self.send(Bytes::from(hp::addressed(key, &hp::close(&text))))
    }

    /// Queues a frame of the socket's own; false (and the socket closed) when the queue is
    /// full.
    fn send(&self, frame: Bytes) -> bool {
        if self.control.try_send(frame).is_err() {
            if !self.closer.is_closed() {
                Counters::bump(&self.state.counters.slow_consumers);
                self.closer.close(CloseReason::SlowConsumer);
            }
            return false;
        }
        true
    }
}

/// A routing key for log lines: at most 80 characters of it.
fn short(key: &str) -> String {
    key.chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// Answers a document's updates with SyncStatus, in the order they came: saved once stored
/// (an update that could not be stored is never answered, so the provider keeps counting it
/// as unsynced and its next sync carries it), or at once for what needs no storing.
async fn acknowledge(mut acks: mpsc::Receiver<Ack>, peer: Peer) {
    while let Some(ack) = acks.recv().await {
        let saved = match ack {
            Ack::Stored(durable) => {
                if !durable.wait().await {
                    continue;
                }
                true
            }
            Ack::Now(saved) => saved,
        };
        if !peer.try_queue(Bytes::copy_from_slice(&hp::sync_status(saved)), usize::MAX)
            && !peer.closer().is_closed()
        {
            peer.closer().close(CloseReason::SlowConsumer);
        }
    }
}
