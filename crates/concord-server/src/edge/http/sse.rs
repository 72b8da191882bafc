//! `GET /docs/{name}/events`: Server-Sent Events. The document's stored changes come from the
//! change feed (each with its position as the event id, so a client resumes exactly with
//! `Last-Event-ID`); its awareness comes from the room, which this stream joins as a peer that
//! only receives awareness.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use concord_core::{Access, awareness_payload};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::durability::feed::{ChangeStream, FeedEvent};
use crate::edge::http::error::{ApiError, ApiResult, DocPath, Params, Request};
use crate::edge::http::params::{encode_b64, position_param, state_vector_param};
use crate::policy::admission::Needs;
use crate::rooms::{Closer, LiveRoom, Peer, next_conn_id};
use crate::state::AppState;

/// Interval of the SSE heartbeat comment.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events waiting for the client. Overflow policy: the stream's task waits (it reads the feed
/// no faster than the client takes events; the feed catches up from the store if it lags).
const EVENT_QUEUE: usize = 64;

#[derive(Deserialize)]
pub(crate) struct EventsParams {
    sv: Option<String>,
    last_event_id: Option<String>,
}

/// `GET /docs/{name}/events`.
pub(crate) async fn events(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    Params(params): Params<EventsParams>,
    request: Request,
) -> ApiResult<Response> {
    let admitted = request.admit(&state, &name, Needs::Read, true).await?;
    let sv = state_vector_param(params.sv.as_deref())?;
    // The header (what an EventSource sends on reconnecting) wins over the query parameter;
    // an empty one means "none".
    let header =
        match request.headers.get("last-event-id") {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::bad_request("Last-Event-ID is not a position (SEQ.INDEX)")
            })?),
        };
    let last = header
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .or(params.last_event_id.filter(|id| !id.is_empty()));
    let from = last
        .as_deref()
        .map(|id| position_param("Last-Event-ID", id))
        .transpose()?;
    let guard = state.rooms.open(&name).await?;
    let (events_tx, events_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let feed = state.changes(&name, from, sv);
    let task_state = state.clone();
    state.tracker.spawn(async move {
        task_state.counters.add_sse(1);
        stream_events(&task_state, guard.room(), feed, from.is_none(), events_tx).await;
        task_state.counters.add_sse(-1);
        drop(guard);
        drop(admitted);
    });
    let stream = futures_util::stream::unfold(events_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Feeds one SSE stream until the client goes away or the server shuts down: the document's
/// changes from the feed, and the room's awareness as a peer that only receives awareness.
async fn stream_events(
    state: &AppState,
    room: &Arc<LiveRoom>,
    mut feed: ChangeStream,
    fresh: bool,
    events: mpsc::Sender<Event>,
) {
    let closer = Closer::default();
    let (peer, mut awareness) = Peer::new(state.config.outbound_queue_frames, closer.clone(), true);
    // A fresh stream's first event is the sync: it goes out before the room's awareness can,
    // since a client expects the document first. (A resumed stream may have nothing to say
    // for a long time, and must get presence meanwhile.)
    if fresh {
        let first = tokio::select! {
            item = feed.next() => item,
            _ = state.shutdown.cancelled() => return,
            _ = events.closed() => return,
        };
        match first.map(|item| item.map(feed_event)) {
            Some(Ok(event)) => {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                tracing::error!(doc = %room.name(), error = %e, "SSE stream ended");
                return;
            }
            None => return,
        }
    }
    let _membership = room.join(next_conn_id(), Access::ReadOnly, peer);
    loop {
        let event = tokio::select! {
            item = feed.next() => match item {
                Some(Ok(event)) => feed_event(event),
                Some(Err(e)) => {
                    tracing::error!(doc = %room.name(), error = %e, "SSE stream ended");
                    return;
                }
                None => return,
            },
            frame = awareness.recv() => match frame {
                // An awareness message is [1, varUint8Array(update)]: send the update.
                Some(frame) => match awareness_payload(&frame) {
                    Some(update) => Event::default().event("awareness").data(encode_b64(update)),
                    None => continue,
                },
                None => return,
            },
            _ = closer.closed() => return,
            _ = state.shutdown.cancelled() => return,
            _ = events.closed() => return,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// An SSE event for a feed event.
fn feed_event(event: FeedEvent) -> Event {
    match event {
        FeedEvent::Sync { update, position } => Event::default()
            .event("sync")
            .id(position.to_string())
            .data(encode_b64(&update)),
        FeedEvent::Change(change) => Event::default()
            .event("update")
            .id(change.position.to_string())
            .data(encode_b64(&change.update)),
    }
}
