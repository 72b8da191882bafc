//! The HTTP edge: the document API under [`crate::Config::api_prefix`] (read, write, list,
//! delete, versions and restore; follow with Server-Sent Events or long-polling), static files, and the probes at
//! the root. Every handler passes the same admission as a WebSocket upgrade; writes go through
//! the ingest path. The contract is `openapi.json` (served at `{api_prefix}/openapi.json`) and
//! `HTTP.md` in this crate.

pub(crate) mod documents;
pub(crate) mod error;
pub(crate) mod params;
pub(crate) mod poll;
pub(crate) mod probes;
pub(crate) mod sse;
pub(crate) mod static_files;
pub(crate) mod versions;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::edge::http::error::ApiError;
use crate::state::AppState;

/// The API routes, to be nested under the API prefix.
pub(crate) fn api_routes(state: &AppState) -> Router {
    let routes = Router::new()
        .route(
            "/docs/",
            get(empty_name).post(empty_name).delete(empty_name),
        )
        .route("/openapi.json", get(documents::openapi))
        .route("/docs", get(documents::list))
        .route(
            "/docs/{name}",
            get(documents::read).delete(documents::delete),
        )
        .route("/docs/{name}/state-vector", get(documents::state_vector))
        .route("/docs/{name}/update", post(documents::write))
        .route("/docs/{name}/awareness", post(documents::awareness))
        .route("/docs/{name}/stateless", post(documents::stateless))
        .route("/docs/{name}/events", get(sse::events))
        .route("/docs/{name}/poll", get(poll::poll))
        .route(
            "/docs/{name}/versions",
            get(versions::list).post(versions::create),
        )
        .route(
            "/docs/{name}/versions/{id}",
            get(versions::read).delete(versions::delete),
        )
        .route(
            "/docs/{name}/versions/{id}/restore",
            post(versions::restore),
        )
        // Everything else under the prefix, which would otherwise reach the WebSocket route.
        .route("/{*rest}", axum::routing::any(no_such_endpoint))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_such_endpoint)
        .layer(DefaultBodyLimit::max(state.config.max_message_size))
        .with_state(state.clone());
    match cors(&state.config.cors_origins) {
        Some(cors) => routes.layer(cors),
        None => routes,
    }
}

/// CORS for the API, when [`crate::Config::cors_origins`] lists origins: preflights are
/// answered by the layer (before routing, so before admission), and responses to allowed
/// origins carry `Access-Control-Allow-Origin`.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
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
