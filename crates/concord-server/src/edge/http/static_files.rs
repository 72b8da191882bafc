//! Static files next to the documents: the web demo (or an embedder's app) served from
//! [`crate::Config::static_dir`] for plain GET and HEAD requests. A document and a file may
//! share a path: a WebSocket upgrade opens the document, anything else gets the file.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// Whether the request asks for a WebSocket (`Upgrade: websocket`): such a request is for
/// the document at its path, never for a file.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
    })
}

/// The file of `files` at `uri`'s path, or `None` when there is none or the request is not a
/// plain GET or HEAD (a WebSocket upgrade is for the document), so the caller answers as if no
/// files were served. `files` is [`crate::state::Shared::static_files`].
pub(crate) async fn serve(
    files: &ServeDir,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    if (method != Method::GET && method != Method::HEAD) || is_upgrade(headers) {
        return None;
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    // Conditional and range requests (If-None-Match, If-Modified-Since, Range) work as
    // ServeDir implements them.
    *request.headers_mut() = headers.clone();
    let response: Result<_, Infallible> = files.clone().oneshot(request).await;
    let Ok(response) = response;
    if response.status() == StatusCode::NOT_FOUND {
        return None;
    }
    let mut response = response.into_response();
    // Vite names built assets by content hash: they never change. Everything else
    // (index.html) is revalidated, so a new build is picked up at once.
    let cache = if uri.path().starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}
