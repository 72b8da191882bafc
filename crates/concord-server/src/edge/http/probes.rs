//! Routes at the root that are not documents: `/` (the static files' index), `/healthz`,
//! `/readyz` and `/metrics`.

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::edge::http::static_files::{self, is_upgrade};
use crate::ops::health::readiness;
use crate::state::AppState;

/// `GET /` without an upgrade (an upgrade is a Hocuspocus socket, see `edge::root`): the static
/// files' `index.html` when there are some; there is no document there.
/// Under a prefix (`/collab`, see [`crate::run`]) the index is at `/collab/`, and `/collab`
/// redirects there, so the page's relative links resolve under the prefix.
pub(crate) async fn root(
    State(state): State<AppState>,
    method: Method,
    original: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(files) = &state.static_files
        && !is_upgrade(&headers)
    {
        let path = original.path();
        if !path.ends_with('/') {
            let query = original
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            return Redirect::permanent(&format!("{path}/{query}")).into_response();
        }
        let index = Uri::from_static("/");
        if let Some(response) = static_files::serve(files, &method, &index, &headers).await {
            return response;
        }
    }
    (
        StatusCode::BAD_REQUEST,
        "document name is empty: y-websocket clients connect to /<document name>; Hocuspocus \
         clients open a WebSocket here",
    )
        .into_response()
}

/// `GET /healthz`: the process answers.
pub(crate) async fn health() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 while the server accepts work and its store takes writes, else 503.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    match readiness(
        state.shutdown.is_cancelled(),
        &state.counters,
        state.store.as_ref(),
    ) {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
