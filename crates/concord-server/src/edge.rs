//! The edges: where clients meet the server. Each wire protocol is a folder of its own
//! (`ws/`: y-websocket; `hocuspocus/`: the Hocuspocus protocol at the root URL; `http/`: the
//! document API, SSE, long-polling, static files, probes) that reaches the rest of the server
//! only through the state it is handed: admission (policy) before anything else, the ingest
//! path for writes, rooms and the change feed for reads. The Hocuspocus edge reuses the
//! WebSocket mechanics of `ws/` (frame reading, the writer, close codes). An edge turns
//! outcomes into its own answers (close codes, HTTP statuses) and holds no persistence or
//! barrier code.

pub(crate) mod hocuspocus;
pub(crate) mod http;
pub(crate) mod serve;
pub(crate) mod ws;

use axum::Router;
use axum::extract::State;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{Extensions, HeaderMap, Method, Uri};
use axum::response::Response;
use axum::routing::get;

use crate::edge::http::probes;
use crate::edge::http::static_files;
use crate::state::AppState;

/// Every route of an instance: documents at `/{*name}`, the probes and `/` at the root, the
/// API under its prefix (`api_prefix`: `None` for no API).
pub(crate) fn routes(state: &AppState, api_prefix: Option<&str>) -> Router {
    let documents = Router::new()
        .route("/", get(root))
        .route("/healthz", get(probes::health))
        .route("/readyz", get(probes::ready))
        .route("/metrics", get(probes::metrics))
        .route("/{*doc}", get(document))
        .with_state(state.clone());
    match api_prefix {
        Some(prefix) => documents.nest(prefix, http::api_routes(state)),
        None => documents,
    }
}

/// `GET /`: a WebSocket upgrade is a Hocuspocus client (y-websocket clients always name a
/// document in the path); anything else is the static files' index ([`probes::root`]).
pub(crate) async fn root(
    State(state): State<AppState>,
    method: Method,
    original: axum::extract::OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if static_files::is_upgrade(&headers) {
        return hocuspocus::upgrade(state, &uri, &headers, peer(&extensions), ws).await;
    }
    probes::root(State(state), method, original, headers).await
}

/// The peer's address, present when the server was made with
/// `into_make_service_with_connect_info`.
fn peer(extensions: &Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// `GET /{*doc}`: a plain GET of a path holding a static file gets the file
/// ([`crate::Config::static_dir`]); anything else opens the document as a WebSocket.
async fn document(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(files) = &state.static_files
        && let Some(response) = static_files::serve(files, &method, &uri, &headers).await
    {
        return response;
    }
    ws::upgrade(state, &uri, &headers, peer(&extensions), ws).await
}
