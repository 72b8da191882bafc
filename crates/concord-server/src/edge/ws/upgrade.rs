//! Turns an HTTP upgrade into a connection of a room: admission before the upgrade, then one
//! task per connection running its reader, writer, acknowledger and timers until it ends.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use concord_core::DocName;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::edge::ws::acks::{SaveQueue, acknowledge};
use crate::edge::ws::close::close_frame;
use crate::edge::ws::linger::linger;
use crate::edge::ws::reader::Reader;
use crate::edge::ws::writer::{LastSeen, Writer, close};
use crate::ops::stats::Counters;
use crate::policy::admission::{Admitted, Needs, Refusal};
use crate::policy::auth::{AuthRequest, Grant};
use crate::policy::limits::{ConnectionSlot, RateLimits, Rates};
use crate::rooms::{CloseReason, Closer, OpenError, Peer, next_conn_id};
use crate::state::AppState;

/// Bytes tungstenite collects before writing to the socket even without a flush.
const WRITE_BUFFER: usize = 16 * 1024;

/// Extracts the document name from a request path: the whole path after the leading `/`,
/// percent-decoded. The query string is not part of the name.
pub(crate) fn doc_name_from_path(path: &str) -> Result<DocName, String> {
    let raw = path.strip_prefix('/').unwrap_or(path);
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "document name is not valid UTF-8 once percent-decoded".to_owned())?;
    DocName::new(&decoded).map_err(|e| e.to_string())
}

/// Upgrades to a WebSocket connection to the document named by `uri`'s path, once the request
/// passed every check (a valid name, then admission: origin, connection slot, authorizer,
/// room capacity); a refusal is an HTTP status with the reason as a text body.
pub(crate) async fn upgrade(
    state: AppState,
    uri: &Uri,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
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
    let request = AuthRequest {
        doc: &name,
        headers,
        query: uri.query(),
        peer,
        protocol_token: None,
    };
    let Admitted { grant, slot } = match state.admission.admit(request, Needs::Read, true).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal_response(refusal),
    };
    let max = state.config.max_message_size;
    let tracker = state.tracker.clone();
    // Memory per idle connection: tungstenite zero-fills its whole read buffer on every read,
    // so all of it is resident. 512 bytes hold a dozen keystroke updates per read; a larger
    // frame gets a buffer of its size (read at most 512 bytes per syscall). Measured with
    // `compare`: 1 KiB cost 0.3 KiB more per idle connection, and neither size changed the
    // max-rate scenarios beyond their run-to-run spread.
    ws.read_buffer_size(512)
        // Frames of one batch (see `writer.rs`) collect here until the flush writes them.
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max.saturating_mul(2).max(1 << 20))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(serve_contained(state, name, grant, slot, socket))
        })
}

/// A refusal before the upgrade: the status, `WWW-Authenticate: Bearer` on a 401, the reason
/// as a text body.
pub(crate) fn refusal_response(refusal: Refusal) -> Response {
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
    state: AppState,
    name: DocName,
    grant: Grant,
    slot: ConnectionSlot,
    socket: WebSocket,
) {
    let counters = state.counters.clone();
    let doc = name.clone();
    counters.add_websocket(1);
    // Boxed here and inside `serve`: a future moved into another one (an async block, a
    // `join!`) is laid out twice by rustc; boxing keeps one copy of each part on the heap.
    let served = AssertUnwindSafe(Box::pin(serve(state, name, grant, socket)))
        .catch_unwind()
        .await;
    counters.add_websocket(-1);
    if served.is_err() {
        Counters::bump(&counters.panics);
        tracing::error!(%doc, "a connection panicked; it was closed, the server goes on");
    }
    drop(slot);
}

/// Runs one connection from join to leave.
async fn serve(state: AppState, name: DocName, grant: Grant, socket: WebSocket) {
    let access = grant.access;
    let conn = next_conn_id();
    let (mut sink, stream) = socket.split();
    // Boxed, like the other parts below: the connection's future then keeps no room for a
    // load that is over once the room is open.
    let opened = tokio::select! {
        opened = Box::pin(state.rooms.open(&name)) => opened,
        _ = state.shutdown.cancelled() => Err(OpenError::ShuttingDown),
    };
    let guard = match opened {
        Ok(guard) => guard,
        Err(e) => {
            let reason = open_failed(&state, &name, &e);
            let (code, reason) = close_frame(&reason);
            Box::pin(close(&mut sink, code, &reason)).await;
            return;
        }
    };
    let room = guard.room().clone();
    let config = &state.config;
    let closer = Closer::default();
    let (peer, outbox) = Peer::new(config.outbound_queue_frames, closer.clone(), false);
    let last_seen = LastSeen::new();
    let membership = room.join(conn, access, peer.clone());
    tracing::debug!(doc = %name, conn, subject = grant.subject.as_deref(), ?access, "connected");

    let (mut saves, started) = SaveQueue::new();
    let acks = Box::pin(acknowledge(started, peer));
    let reader = Box::pin(async {
        let mut stream = stream;
        let reader = Reader {
            ingest: &state.ingest,
            room: &room,
            conn,
            closer: &closer,
            limits: RateLimits::new(rates(config), config.max_message_size),
            max_message_size: config.max_message_size,
            counters: &state.counters,
            last_seen: &last_seen,
        };
        reader.run(&mut stream, &mut saves).await;
        // Let the acknowledger finish what is queued, then stop.
        drop(saves);
        if closer.reason().is_some() {
            Box::pin(linger(&mut stream)).await;
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
        writer.run(sink, outbox).await;
    });
    // Shutdown and token expiry close the connection even while the writer is stuck sending to
    // a peer that stopped reading (that peer gets no close frame: its socket cannot take one).
    // Beyond a year the timer is not worth arming (and far deadlines overflow `Instant`).
    let expiry = grant.expires_at.and_then(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        (left < Duration::from_secs(365 * 24 * 3600)).then(|| Instant::now() + left)
    });
    let timers = Box::pin(async {
        tokio::select! {
            _ = state.shutdown.cancelled() => closer.close(CloseReason::ShuttingDown),
            // Boxed: most connections have no expiry, and a timer is a few hundred bytes.
            _ = async {
                match expiry {
                    Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
                    None => std::future::pending().await,
                }
            } => {
                Counters::bump(&state.counters.tokens_expired);
                tracing::info!(doc = %name, conn, "closing: token expired");
                closer.close(CloseReason::TokenExpired);
            }
            _ = closer.closed() => {}
        }
    });
    let session = async {
        tokio::join!(reader, writer, timers);
        // Leave at once (others see this client's awareness go) even if acknowledgements are
        // still waiting for the store.
        drop(membership);
    };
    tokio::join!(session, acks);

    if room.is_poisoned() {
        state.rooms.discard(&room);
    }
    drop(guard);
    tracing::debug!(doc = %name, conn, "disconnected");
}

/// Why a connection whose room could not be opened is closed; counted and logged.
pub(crate) fn open_failed(state: &AppState, name: &DocName, e: &OpenError) -> CloseReason {
    match e {
        OpenError::ShuttingDown => CloseReason::ShuttingDown,
        OpenError::TooManyRooms(max) => {
            // Checked at admission too; this is the race where the last slot went to another
            // document meanwhile.
            Counters::bump(&state.counters.rooms_refused);
            tracing::warn!(doc = %name, max_rooms = max, "closing: too many documents open");
            CloseReason::TooManyRooms
        }
        e => {
            if e.is_panic() {
                Counters::bump(&state.counters.panics);
            }
            tracing::error!(doc = %name, error = %e, "could not open document");
            CloseReason::LoadFailed
        }
    }
}

/// A connection's rate limits, from the configuration.
pub(crate) fn rates(config: &crate::Config) -> Rates {
    Rates {
        messages_per_second: config.rate_messages_per_second,
        message_burst: config.rate_message_burst,
        bytes_per_second: config.rate_bytes_per_second,
        byte_burst: config.rate_byte_burst,
        awareness_per_second: config.rate_awareness_per_second,
        awareness_burst: config.rate_awareness_burst,
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
}
