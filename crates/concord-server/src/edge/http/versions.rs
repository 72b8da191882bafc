//! Version history over HTTP: list a document's versions, keep a named one, read one (as a Yjs
//! update or JSON, like the document), delete one, restore one. Restoring is a write: it goes
//! through the ingest path (see `crate::history`), so read-only callers are refused.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use concord_core::{DocName, VersionId, VersionInfo};
use serde::Deserialize;
use serde_json::json;

use crate::edge::http::documents::StateFormat;
use crate::edge::http::error::{ApiError, ApiResult, DocPath, Params, Request, body, doc_name};
use crate::history::{self, HistoryError};
use crate::policy::admission::Needs;
use crate::state::AppState;

/// Longest label a named version may have, in bytes.
const MAX_LABEL_BYTES: usize = 256;

impl From<HistoryError> for ApiError {
    fn from(error: HistoryError) -> ApiError {
        let status = match &error {
            HistoryError::NoDocument(_) | HistoryError::NoVersion { .. } => StatusCode::NOT_FOUND,
            HistoryError::Unsupported => StatusCode::NOT_IMPLEMENTED,
            HistoryError::Refused(_) => StatusCode::CONFLICT,
            HistoryError::Open(_) | HistoryError::NotStored => StatusCode::SERVICE_UNAVAILABLE,
            HistoryError::Store(_) | HistoryError::Unreadable(_) => {
                return ApiError::internal(error);
            }
        };
        ApiError::new(status, error.to_string())
    }
}

/// A version as the API shows it.
fn version_json(info: &VersionInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "created_at_ms": info.created_at_ms,
        "label": info.label,
        "bytes": info.bytes,
        "position": info.position.to_string(),
    })
}

/// A document name and a version id from the path, with JSON errors.
pub(crate) struct VersionPath(DocName, VersionId);

impl<S: Send + Sync> FromRequestParts<S> for VersionPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path((name, id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))?;
        let id = id
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{id:?} is not a version id")))?;
        Ok(VersionPath(doc_name(&name)?, id))
    }
}

/// `GET /docs/{name}/versions`: the document's versions, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Read, false).await?;
    let versions = history::list(state.store.as_ref(), &name).await?;
    let versions: Vec<_> = versions.iter().map(version_json).collect();
    Ok(Json(json!({ "versions": versions })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewVersionBody {
    label: String,
}

/// `POST /docs/{name}/versions` with `{"label": "..."}`: keeps the document as it is now as a
/// named version (kept until deleted).
pub(crate) async fn create(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    request: Request,
    payload: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Write, false).await?;
    let payload = body(payload)?;
    // An object, not any JSON serde would read into the struct (an array of one string).
    let NewVersionBody { label } = serde_json::from_slice::<serde_json::Map<String, _>>(&payload)
        .and_then(|object| serde_json::from_value(serde_json::Value::Object(object)))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be JSON like {{\"label\": \"before the rewrite\"}}: {e}"
            ))
        })?;
    if label.trim().is_empty() || label.len() > MAX_LABEL_BYTES {
        return Err(ApiError::bad_request(format!(
            "label must be 1 to {MAX_LABEL_BYTES} bytes, not only spaces"
        )));
    }
    let saved = history::save_named(&state, &name, label).await?;
    Ok((StatusCode::CREATED, Json(version_json(&saved))).into_response())
}

#[derive(Deserialize)]
pub(crate) struct VersionReadParams {
    format: Option<String>,
    types: Option<String>,
}

/// `GET /docs/{name}/versions/{id}`: the document as it was at that version, as a Yjs update
/// or as JSON (`format`, `types` as for the document itself).
pub(crate) async fn read(
    State(state): State<AppState>,
    VersionPath(name, id): VersionPath,
    Params(params): Params<VersionReadParams>,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Read, false).await?;
    let format = StateFormat::parse(params.format.as_deref(), params.types.as_deref())?;
    let version = history::state_of(state.store.as_ref(), &name, id).await?;
    format.respond(version)
}

/// `DELETE /docs/{name}/versions/{id}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    VersionPath(name, id): VersionPath,
    request: Request,
) -> ApiResult<Response> {
    request.admit(&state, &name, Needs::Write, false).await?;
    if history::delete(state.store.as_ref(), &name, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(HistoryError::NoVersion {
            doc: name.to_string(),
            id,
        }
        .into())
    }
}

/// `POST /docs/{name}/versions/{id}/restore`: makes the live document equal the version (one
/// update, relayed to every connected client), after keeping the current state as a named
/// version. Answered once the update is stored.
pub(crate) async fn restore(
    State(state): State<AppState>,
    VersionPath(name, id): VersionPath,
    request: Request,
) -> ApiResult<Response> {
    let admitted = request.admit(&state, &name, Needs::Write, true).await?;
    let restored = history::restore(&state, &name, id, admitted.grant.access).await?;
    Ok(Json(json!({
        "restored": restored.version,
        "changed": restored.changed,
        "saved_before": version_json(&restored.saved_before),
    }))
    .into_response())
}
