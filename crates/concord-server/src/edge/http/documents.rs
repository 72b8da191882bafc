//! The HTTP API under `Config::api_prefix`: read, write, list and delete documents, and follow
//! them with Server-Sent Events or long-polling. The contract (positions, events, answers) is in
//! ARCHITECTURE.md and `openapi.json`; every handler goes through the same admission checks as
//! a WebSocket upgrade.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use concord_core::{DocName, Inbound, Position, RoomFault, Seq, decode_frame};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::Concord;
use crate::admission::{Admitted, Needs, Refusal, admit};
use crate::feed::{FeedEvent, stored_state};
use crate::rooms::{Closer, LiveRoom, Peer, close_code};
use crate::stats::Counters;

/// Longest a poll may wait, whatever it asks for.
const MAX_POLL: Duration = Duration::from_secs(60);
/// How long a poll waits when it does not say.
const DEFAULT_POLL: Duration = Duration::from_secs(25);
/// Most updates one poll answer carries (the next poll continues from there).
const MAX_POLL_UPDATES: usize = 1000;
/// Longest a poll waits while the room has awareness states (see `poll_answer`).
const PRESENCE_POLL: Duration = Duration::from_secs(10);
/// Interval of the SSE heartbeat comment.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The API routes, to be nested under the API prefix.
pub(crate) fn routes(concord: &Concord) -> Router {
    Router::new()
        .route(
            "/docs/",
            get(empty_name).post(empty_name).delete(empty_name),
        )
        .route("/openapi.json", get(openapi))
        .route("/docs", get(list))
        .route("/docs/{name}", get(read).delete(delete))
        .route("/docs/{name}/state-vector", get(state_vector))
        .route("/docs/{name}/update", post(write))
        .route("/docs/{name}/awareness", post(awareness))
        .route("/docs/{name}/events", get(events))
        .route("/docs/{name}/poll", get(poll))
        // Everything else under the prefix, which would otherwise reach the WebSocket route.
        .route("/{*rest}", axum::routing::any(no_such_endpoint))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_such_endpoint)
        .layer(DefaultBodyLimit::max(concord.inner.config.max_message_size))
        .with_state(concord.clone())
}

async fn empty_name() -> ApiError {
    ApiError::bad_request("document name is empty")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method",
    )
}

async fn no_such_endpoint() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A document name from the path, with JSON errors.
struct DocPath(DocName);

impl<S: Send + Sync> FromRequestParts<S> for DocPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        Ok(DocPath(doc_name(&name)?))
    }
}

/// Query parameters, with JSON errors.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Query(params) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))?;
        Ok(Params(params))
    }
}

/// A request body, with JSON errors (a body over `max_message_size` is a 413).
fn body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| ApiError::new(e.status(), e.body_text()))
}

/// An error answer: the status and `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        ApiError::new(refusal.status, refusal.reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The parts of a request the admission checks read (the token from the query or the
/// `Authorization` header, the client's address), taken as an extractor by every handler.
struct Request {
    headers: HeaderMap,
    uri: Uri,
    extensions: Extensions,
}

impl<S: Send + Sync> FromRequestParts<S> for Request {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Request {
            headers: parts.headers.clone(),
            uri: parts.uri.clone(),
            extensions: parts.extensions.clone(),
        })
    }
}

impl Request {
    async fn admit(
        &self,
        concord: &Concord,
        name: &DocName,
        needs: Needs,
        opens_room: bool,
    ) -> ApiResult<Admitted> {
        Ok(admit(
            concord,
            name,
            &self.headers,
            &self.uri,
            &self.extensions,
            needs,
            opens_room,
        )
        .await?)
    }
}

fn doc_name(raw: &str) -> ApiResult<DocName> {
    DocName::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn decode_b64(what: &str, value: &str) -> ApiResult<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| ApiError::bad_request(format!("{what} is not base64url: {e}")))
}

fn encode_b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn state_vector_param(sv: Option<&str>) -> ApiResult<Option<StateVector>> {
    let Some(sv) = sv else { return Ok(None) };
    let bytes = decode_b64("sv", sv)?;
    concord_core::validate::validate_state_vector_v1(&bytes)
        .map_err(|e| ApiError::bad_request(format!("sv is not a state vector: {e}")))?;
    StateVector::decode_v1(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("sv is not a state vector: {e}")))
}

fn position_param(what: &str, value: &str) -> ApiResult<Position> {
    value
        .parse()
        .map_err(|e: concord_core::InvalidPosition| ApiError::bad_request(format!("{what}: {e}")))
}

fn binary(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ListParams {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /docs`: every stored document, by name, a page at a time. Listing is authorized as
/// the document `*` (a token's `"*"` pattern grants it).
async fn list(
    State(concord): State<Concord>,
    Params(params): Params<ListParams>,
    request: Request,
) -> ApiResult<Response> {
    let all = doc_name("*")?;
    request.admit(&concord, &all, Needs::Read, false).await?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let infos = concord
        .inner
        .store
        .list()
        .await
        .map_err(ApiError::internal)?;
    let after = params.after.unwrap_or_default();
    let page: Vec<_> = infos
        .into_iter()
        .filter(|info| info.name.as_str() > after.as_str())
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| page[limit - 1].name.to_string());
    let docs: Vec<_> = page
        .iter()
        .take(limit)
        .map(|info| {
            json!({
                "name": info.name.as_str(),
                "snapshot_bytes": info.snapshot_bytes,
                "log_entries": info.log_entries,
                "log_bytes": info.log_bytes,
                "updated_at_ms": info.updated_at_ms,
                "loaded": concord.is_loaded(&info.name),
            })
        })
        .collect();
    Ok(Json(json!({ "docs": docs, "next": next })).into_response())
}

#[derive(Deserialize)]
struct ReadParams {
    format: Option<String>,
    sv: Option<String>,
    types: Option<String>,
}

/// The document's state as one v1 update (what `sv` lacks), from its room when loaded (which
/// may hold updates not stored yet), else from the store; `None` for a document that exists
/// in neither.
async fn current_state(
    concord: &Concord,
    name: &DocName,
    sv: Option<StateVector>,
) -> ApiResult<Option<Vec<u8>>> {
    let sv = sv.unwrap_or_default();
    if let Some(room) = concord.inner.rooms.get(name) {
        return Ok(Some(room.encode_state(&sv)));
    }
    if !stored(concord, name).await? {
        return Ok(None);
    }
    let (update, _) = stored_state(concord.inner.store.clone(), name.clone(), Some(sv))
        .await
        .map_err(ApiError::internal)?;
    Ok(Some(update))
}

/// Whether the store has anything of `name` (a log entry was ever written and not deleted).
async fn stored(concord: &Concord, name: &DocName) -> ApiResult<bool> {
    let tail = concord
        .inner
        .store
        .log_from(name, Seq::MAX)
        .await
        .map_err(ApiError::internal)?;
    Ok(tail.last_seq > 0)
}

fn not_found(name: &DocName) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no document named {name:?}"))
}

/// `GET /docs/{name}`: the document as a Yjs update or as JSON.
async fn read(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    Params(params): Params<ReadParams>,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&concord, &name, Needs::Read, false).await?;
    let sv = state_vector_param(params.sv.as_deref())?;
    let format = params.format.as_deref().unwrap_or("update");
    if !matches!(format, "update" | "json") {
        return Err(ApiError::bad_request(format!(
            "format must be update or json, not {format:?}"
        )));
    }
    let types = match &params.types {
        Some(types) => concord_core::json::parse_types(types)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Vec::new(),
    };
    let state = current_state(&concord, &name, sv)
        .await?
        .ok_or_else(|| not_found(&name))?;
    if format == "update" {
        return Ok(binary(state));
    }
    let json = concord_core::json::state_json(&state, &types).map_err(ApiError::internal)?;
    Ok(Json(json).into_response())
}

/// `GET /docs/{name}/state-vector`.
async fn state_vector(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    request: Request,
) -> ApiResult<Response> {
    use yrs::updates::encoder::Encode;
    request.admit(&concord, &name, Needs::Read, false).await?;
    let state = current_state(&concord, &name, None)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let update = yrs::Update::decode_v1(&state).map_err(ApiError::internal)?;
    // The state vector of a document is that of its whole state as an update.
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(update)
        .map_err(ApiError::internal)?;
    let sv = doc.transact().state_vector().encode_v1();
    Ok(binary(sv))
}

/// Wraps `payload` into a y-protocols message of `tag` (and sub-tag) so that it goes through
/// the same validation and decoding as what a WebSocket client sends.
fn frame(prefix: &[u8], payload: &[u8]) -> Vec<u8> {
    use yrs::encoding::write::Write;
    let mut frame = Vec::with_capacity(prefix.len() + 10 + payload.len());
    frame.extend_from_slice(prefix);
    frame.write_buf(payload);
    frame
}

/// Applies validated `inbound` to `name`'s room as an API write and, for document updates,
/// waits until they are stored.
async fn apply(
    concord: &Concord,
    name: &DocName,
    access: concord_core::Access,
    inbound: Vec<Inbound>,
) -> ApiResult<()> {
    let inner = &concord.inner;
    let guard = inner.rooms.open(name).await.map_err(|e| match e {
        crate::rooms::OpenError::TooManyRooms(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many documents are open; try again later",
        ),
        other => ApiError::internal(other),
    })?;
    let room = guard.room();
    let order = room.persist_order().await;
    let (persist, fault) = room.receive_from_api(access, inbound);
    if !persist.is_empty() {
        inner.persister.persist(name, persist).await;
    }
    let barrier = inner.persister.queue_barrier().await;
    drop(order);
    match fault {
        None => {}
        Some(RoomFault::Poisoned) => {
            Counters::bump(&inner.counters.panics);
            inner.rooms.discard(room);
            return Err(ApiError::internal("internal error in this document"));
        }
        Some(fault @ RoomFault::UpdateRejected(_)) => {
            Counters::bump(&inner.counters.malformed);
            return Err(ApiError::bad_request(fault.to_string()));
        }
        Some(fault @ RoomFault::DocumentTooLarge { .. }) => {
            Counters::bump(&inner.counters.documents_too_large);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                fault.to_string(),
            ));
        }
        Some(fault @ RoomFault::AwarenessTooLarge { .. }) => {
            Counters::bump(&inner.counters.awareness_too_large);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                fault.to_string(),
            ));
        }
    }
    if !barrier.wait().await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the update was applied but could not be stored; send it again",
        ));
    }
    Ok(())
}

fn decode_body(frame: &[u8]) -> ApiResult<Vec<Inbound>> {
    decode_frame(frame).map_err(|e| ApiError::bad_request(format!("malformed body: {e}")))
}

/// `POST /docs/{name}/update`: a Yjs v1 update, answered once it is durable.
async fn write(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    request: Request,
    payload: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let admitted = request.admit(&concord, &name, Needs::Write, true).await?;
    let body = body(payload)?;
    let inbound = decode_body(&frame(&[0, 2], &body)).inspect_err(|_| {
        Counters::bump(&concord.inner.counters.malformed);
    })?;
    crate::ws::count_updates(&concord.inner.counters, &inbound);
    apply(&concord, &name, admitted.grant.access, inbound).await?;
    Ok(Json(json!({ "stored": true })).into_response())
}

/// `POST /docs/{name}/awareness`: a y-protocols awareness update.
async fn awareness(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    request: Request,
    payload: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let admitted = request.admit(&concord, &name, Needs::Read, true).await?;
    let body = body(payload)?;
    let inbound = decode_body(&frame(&[1], &body)).inspect_err(|_| {
        Counters::bump(&concord.inner.counters.malformed);
    })?;
    apply(&concord, &name, admitted.grant.access, inbound).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /docs/{name}`: closes its connections and removes it from the store.
async fn delete(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&concord, &name, Needs::Write, false).await?;
    let inner = &concord.inner;
    let room = inner.rooms.remove(&name);
    if room.is_none() && !stored(&concord, &name).await? {
        return Err(not_found(&name));
    }
    if let Some(room) = &room {
        room.close_all(close_code::DOCUMENT_DELETED, "document deleted");
    }
    // Updates of the room still queued for the store would bring it back: let them land first.
    inner.persister.barrier().await;
    inner
        .store
        .delete(&name)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(doc = %name, "document deleted through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct EventsParams {
    sv: Option<String>,
    last_event_id: Option<String>,
}

/// `GET /docs/{name}/events`: Server-Sent Events.
async fn events(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    Params(params): Params<EventsParams>,
    request: Request,
) -> ApiResult<Response> {
    let admitted = request.admit(&concord, &name, Needs::Read, true).await?;
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
    let guard = concord.inner.rooms.open(&name).await.map_err(|e| match e {
        crate::rooms::OpenError::TooManyRooms(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many documents are open; try again later",
        ),
        other => ApiError::internal(other),
    })?;
    let (events_tx, events_rx) = mpsc::channel::<Event>(64);
    let feed = concord.changes(&name, from, sv);
    let task_concord = concord.clone();
    concord.inner.tracker.spawn(async move {
        task_concord.inner.counters.add_sse(1);
        stream_events(&task_concord, guard.room(), feed, from.is_none(), events_tx).await;
        task_concord.inner.counters.add_sse(-1);
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
    concord: &Concord,
    room: &std::sync::Arc<LiveRoom>,
    mut feed: crate::feed::ChangeStream,
    fresh: bool,
    events: mpsc::Sender<Event>,
) {
    let inner = &concord.inner;
    let conn = crate::ws::next_conn_id();
    let (tx, mut awareness) = mpsc::channel(inner.config.outbound_queue_frames.max(2));
    let closer = Closer::default();
    let peer = Peer {
        tx,
        queued_bytes: Default::default(),
        closer: closer.clone(),
        awareness_only: true,
    };
    // A fresh stream's first event is the sync: it goes out before the room's awareness can,
    // since a client expects the document first. (A resumed stream may have nothing to say
    // for a long time, and must get presence meanwhile.)
    if fresh {
        let first = tokio::select! {
            item = feed.next() => item,
            _ = inner.shutdown.cancelled() => return,
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
    room.join(conn, concord_core::Access::ReadOnly, peer);
    let _leave = crate::ws::Membership { room, conn };
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
            _ = inner.shutdown.cancelled() => return,
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

/// The awareness update inside an awareness message frame.
fn awareness_payload(frame: &[u8]) -> Option<&[u8]> {
    use yrs::encoding::read::{Cursor, Read};
    let (&tag, rest) = frame.split_first()?;
    if tag != 1 {
        return None;
    }
    let mut cursor = Cursor::new(rest);
    let len: u64 = cursor.read_var().ok()?;
    let start = cursor.next;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    rest.get(start..end)
}

#[derive(Deserialize)]
struct PollParams {
    since: Option<String>,
    timeout: Option<f64>,
    sv: Option<String>,
}

/// `GET /docs/{name}/poll`: long-polling.
async fn poll(
    State(concord): State<Concord>,
    DocPath(name): DocPath,
    Params(params): Params<PollParams>,
    request: Request,
) -> ApiResult<Response> {
    let _admitted = request.admit(&concord, &name, Needs::Read, false).await?;
    let sv = state_vector_param(params.sv.as_deref())?;
    let since = params
        .since
        .as_deref()
        .map(|s| position_param("since", s))
        .transpose()?;
    let timeout = match params.timeout {
        None => DEFAULT_POLL,
        Some(t) if t.is_finite() && t >= 0.0 => {
            Duration::from_secs_f64(t.min(MAX_POLL.as_secs_f64()))
        }
        Some(_) => return Err(ApiError::bad_request("timeout must be a number of seconds")),
    };
    let _waiting = PollGauge::start(&concord);
    Ok(Json(poll_answer(&concord, &name, since, sv, timeout).await?).into_response())
}

/// Counts a waiting poll for `/metrics` for as long as it lives (also when its client leaves
/// first and the handler is dropped).
struct PollGauge(std::sync::Arc<Counters>);

impl PollGauge {
    fn start(concord: &Concord) -> PollGauge {
        concord.inner.counters.add_poll(1);
        PollGauge(concord.inner.counters.clone())
    }
}

impl Drop for PollGauge {
    fn drop(&mut self) {
        self.0.add_poll(-1);
    }
}

async fn poll_answer(
    concord: &Concord,
    name: &DocName,
    since: Option<Position>,
    sv: Option<StateVector>,
    timeout: Duration,
) -> ApiResult<serde_json::Value> {
    // Presence as of the answer, so the newest renewal of every state is in it.
    let awareness = || {
        concord
            .inner
            .rooms
            .get(name)
            .and_then(|room| room.awareness_update())
            .map(|update| encode_b64(&update))
    };
    // Clients drop awareness states they have not heard of for 30 s, and polls carry presence
    // only when they answer: with presence in the room, no poll waits longer than this.
    let timeout = if awareness().is_some() {
        timeout.min(PRESENCE_POLL)
    } else {
        timeout
    };
    let Some(since) = since else {
        let (update, position) = stored_state(concord.inner.store.clone(), name.clone(), sv)
            .await
            .map_err(ApiError::internal)?;
        return Ok(json!({
            "since": position.to_string(),
            "sync": encode_b64(&update),
            "updates": [],
            "awareness": awareness(),
        }));
    };
    let mut feed = concord.changes(name, Some(since), sv);
    let mut updates = Vec::new();
    let mut next = since;
    let mut sync = None;
    // What the log already holds after `since` comes at once, whatever the timeout: the
    // stream reads it first, so that first read is not what the timeout bounds.
    let mut item = match first_without_waiting(concord, name, since).await? {
        true => feed.next().await,
        false => tokio::time::timeout(timeout, feed.next())
            .await
            .unwrap_or_default(),
    };
    while let Some(event) = item {
        match event.map_err(ApiError::internal)? {
            FeedEvent::Sync { update, position } => {
                sync = Some(encode_b64(&update));
                next = position;
            }
            FeedEvent::Change(change) => {
                next = change.position;
                updates.push(json!({
                    "id": change.position.to_string(),
                    "update": encode_b64(&change.update),
                }));
            }
        }
        if updates.len() >= MAX_POLL_UPDATES {
            break;
        }
        // Whatever else is ready goes in the same answer.
        item = futures_util::FutureExt::now_or_never(feed.next()).unwrap_or_default();
    }
    Ok(json!({
        "since": next.to_string(),
        "sync": sync,
        "updates": updates,
        "awareness": awareness(),
    }))
}

/// Whether a stream from `since` has something to say at once: updates after it in the log,
/// or a sync (the log no longer reaches back, or `since` is from another history).
async fn first_without_waiting(
    concord: &Concord,
    name: &DocName,
    since: Position,
) -> ApiResult<bool> {
    let tail = concord
        .inner
        .store
        .log_from(name, since.seq)
        .await
        .map_err(ApiError::internal)?;
    let newer = tail.entries.iter().any(|(seq, updates)| {
        *seq > since.seq
            || u32::try_from(updates.len()).unwrap_or(u32::MAX) > since.index.saturating_add(1)
    });
    Ok(newer || !tail.complete || since.seq > tail.last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awareness_payloads_come_out_of_their_frames() {
        assert_eq!(awareness_payload(&[1, 2, 7, 8]), Some(&[7u8, 8][..]));
        assert_eq!(awareness_payload(&[0, 2, 7, 8]), None);
        assert_eq!(awareness_payload(&[1, 5, 7]), None);
    }
}
