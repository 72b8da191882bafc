//! Documents over plain HTTP: list, read (as a Yjs update or JSON), state vector, write an
//! update (answered once durable), write awareness, delete. Writes go through the ingest path
//! like a WebSocket client's messages; this file only turns outcomes into statuses.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use concord_core::{DocName, Inbound, decode_frame};
use serde::Deserialize;
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::durability::feed::stored_state;
use crate::durability::is_stored;
use crate::edge::http::error::{ApiError, ApiResult, DocPath, Params, Request, body, doc_name};
use crate::edge::http::params::{binary, state_vector_param};
use crate::ingest::{NotApplied, Refused};
use crate::ops::stats::Counters;
use crate::policy::admission::Needs;
use crate::rooms::Recipients;
use crate::state::AppState;

/// `GET /openapi.json`: the API's description, and its reference.
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ListParams {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /docs`: every stored document, by name, a page at a time. Listing is authorized as
/// the document `*` (a token's `"*"` pattern grants it).
pub(crate) async fn list(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
    request: Request,
) -> ApiResult<Response> {
    let all = doc_name("*")?;
    request.admit(&state, &all, Needs::Read, false).await?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let infos = state.store.list().await.map_err(ApiError::internal)?;
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
                "versions": info.versions,
                "history_bytes": info.history_bytes,
                "loaded": state.rooms.is_loaded(&info.name),
            })
        })
        .collect();
    Ok(Json(json!({ "docs": docs, "next": next })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ReadParams {
    format: Option<String>,
    sv: Option<String>,
    types: Option<String>,
}

/// How a read asked for a document's state: as a Yjs update, or as JSON with `types` hints.
pub(crate) enum StateFormat {
    Update,
    Json(Vec<(String, concord_core::json::RootKind)>),
}

impl StateFormat {
    /// Reads `format` and `types` (400 for values it does not know).
    pub(crate) fn parse(format: Option<&str>, types: Option<&str>) -> ApiResult<StateFormat> {
        // Checked whatever the format, so a bad hint is a 400 even where it is not used.
        let types = match types {
            Some(types) => concord_core::json::parse_types(types)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            None => Vec::new(),
        };
        match format.unwrap_or("update") {
            "update" => Ok(StateFormat::Update),
            "json" => Ok(StateFormat::Json(types)),
            other => Err(ApiError::bad_request(format!(
                "format must be update or json, not {other:?}"
            ))),
        }
    }

    /// The answer holding `state` (a v1 update) in this format.
    pub(crate) fn respond(&self, state: Vec<u8>) -> ApiResult<Response> {
        match self {
            StateFormat::Update => Ok(binary(state)),
            StateFormat::Json(types) => {
                let json =
                    concord_core::json::state_json(&state, types).map_err(ApiError::internal)?;
                Ok(Json(json).into_response())
            }
        }
    }
}

/// The document's state as one v1 update (what `sv` lacks), from its room when loaded (which
/// may hold updates not stored yet), else from the store; `None` for a document that exists
/// in neither.
async fn current_state(
    state: &AppState,
    name: &DocName,
    sv: Option<StateVector>,
) -> ApiResult<Option<Vec<u8>>> {
    let sv = sv.unwrap_or_default();
    if let Some(room) = state.rooms.get(name) {
        return Ok(Some(room.encode_state(&sv)));
    }
    if !is_stored(state.store.as_ref(), name)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(None);
    }
    let (update, _) = stored_state(state.store.clone(), name.clone(), Some(sv))
        .await
        .map_err(ApiError::internal)?;
    Ok(Some(update))
}

/// `GET /docs/{name}`: the document as a Yjs update or as JSON.
pub(crate) async fn read(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    Params(params): Params<ReadParams>,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Read, false).await?;
    let sv = state_vector_param(params.sv.as_deref())?;
    let format = StateFormat::parse(params.format.as_deref(), params.types.as_deref())?;
    let current = current_state(&state, &name, sv)
        .await?
        .ok_or_else(|| ApiError::not_found(&name))?;
    format.respond(current)
}

/// `GET /docs/{name}/state-vector`.
pub(crate) async fn state_vector(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
) -> ApiResult<Response> {
    use yrs::updates::encoder::Encode;
    request.admit(&state, &name, Needs::Read, false).await?;
    let current = current_state(&state, &name, None)
        .await?
        .ok_or_else(|| ApiError::not_found(&name))?;
    let update = yrs::Update::decode_v1(&current).map_err(ApiError::internal)?;
    // The state vector of a document is that of its whole state as an update.
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(update)
        .map_err(ApiError::internal)?;
    let sv = doc.transact().state_vector().encode_v1();
    Ok(binary(sv))
}

/// Decodes a request body wrapped as the y-protocols message `prefix` would start (so that it
/// goes through the same validation and decoding as what a WebSocket client sends).
fn decode_body(state: &AppState, prefix: &[u8], payload: &[u8]) -> ApiResult<Vec<Inbound>> {
    use yrs::encoding::write::Write;
    let mut frame = Vec::with_capacity(prefix.len() + 10 + payload.len());
    frame.extend_from_slice(prefix);
    frame.write_buf(payload);
    decode_frame(&frame).map_err(|e| {
        Counters::bump(&state.counters.malformed);
        ApiError::bad_request(format!("malformed body: {e}"))
    })
}

/// Applies `inbound` to `name`'s room through the ingest path as a request with `access`, and
/// waits until what it changed is stored.
async fn apply(
    state: &AppState,
    name: &DocName,
    access: concord_core::Access,
    inbound: Vec<Inbound>,
) -> ApiResult<()> {
    let guard = state.rooms.open(name).await?;
    state
        .ingest
        .apply_request(guard.room(), access, inbound)
        .await
        .map_err(|error| match error {
            NotApplied::Refused(refused) => match refused {
                Refused::RoomPoisoned => ApiError::internal(refused),
                Refused::UpdateRejected(why) => ApiError::bad_request(why),
                Refused::DocumentTooLarge(why) | Refused::AwarenessTooLarge(why) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, why)
                }
            },
            NotApplied::NotStored => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the update was applied but could not be stored; send it again",
            ),
        })
}

/// `POST /docs/{name}/update`: a Yjs v1 update, answered once it is durable.
pub(crate) async fn write(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
    payload: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let admitted = request.admit(&state, &name, Needs::Write, true).await?;
    let payload = body(payload)?;
    let inbound = decode_body(&state, &[0, 2], &payload)?;
    apply(&state, &name, admitted.grant.access, inbound).await?;
    Ok(Json(json!({ "stored": true })).into_response())
}

/// `POST /docs/{name}/awareness`: a y-protocols awareness update.
pub(crate) async fn awareness(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
    payload: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let admitted = request.admit(&state, &name, Needs::Read, true).await?;
    let payload = body(payload)?;
    let inbound = decode_body(&state, &[1], &payload)?;
    apply(&state, &name, admitted.grant.access, inbound).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /docs/{name}/stateless`: an application message (UTF-8 text) for every Hocuspocus
/// connection of the document in this process; answers how many it was queued for.
pub(crate) async fn stateless(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
    payload: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Write, false).await?;
    let payload = body(payload)?;
    let limit = state.config.max_awareness_state_bytes;
    if payload.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("stateless message too large: the limit is {limit} bytes"),
        ));
    }
    if payload.is_empty() {
        return Err(ApiError::bad_request(
            "malformed body: empty (send the message as the body)",
        ));
    }
    let text = std::str::from_utf8(&payload)
        .map_err(|e| ApiError::bad_request(format!("malformed body: not UTF-8: {e}")))?;
    let delivered = state
        .rooms
        .get(&name)
        .map_or(0, |room| room.send_stateless(text, Recipients::All));
    Ok(Json(json!({ "delivered": delivered })).into_response())
}

/// `DELETE /docs/{name}`: closes its connections and removes it from the store.
pub(crate) async fn delete(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Write, false).await?;
    match state.ingest.delete(&name).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(&name)),
        Err(e) => Err(ApiError::internal(e)),
    }
}
