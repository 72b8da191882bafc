//! Errors of the HTTP API and the extractors that produce them: every error under the API
//! prefix is `{"error": "..."}` with its status, also those of the framework (bad query values,
//! paths that are not UTF-8, bodies over the size limit).

use axum::Json;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use concord_core::DocName;
use serde_json::json;

use crate::policy::admission::{Admitted, Needs, Refusal};
use crate::policy::auth::AuthRequest;
use crate::rooms::OpenError;
use crate::state::AppState;

/// An error answer: the status and `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 500, logged: the server failed, not the request.
    pub(crate) fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }

    pub(crate) fn not_found(name: &DocName) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no document named {name:?}"))
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        ApiError::new(refusal.status, refusal.reason)
    }
}

impl From<OpenError> for ApiError {
    fn from(error: OpenError) -> ApiError {
        match error {
            OpenError::TooManyRooms(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many documents are open; try again later",
            ),
            other => ApiError::internal(other),
        }
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

/// A document name from the path, with JSON errors.
pub(crate) struct DocPath(pub(crate) DocName);

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
pub(crate) struct Params<T>(pub(crate) T);

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
pub(crate) fn body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| ApiError::new(e.status(), e.body_text()))
}

/// The parts of a request the admission checks read (the token from the query or the
/// `Authorization` header, the client's address), taken as an extractor by every handler.
pub(crate) struct Request {
    pub(crate) headers: HeaderMap,
    uri: Uri,
    peer: Option<std::net::SocketAddr>,
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
            peer: parts
                .extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|ConnectInfo(addr)| *addr),
        })
    }
}

impl Request {
    /// Runs the admission checks for `name`.
    pub(crate) async fn admit(
        &self,
        state: &AppState,
        name: &DocName,
        needs: Needs,
        opens_room: bool,
    ) -> ApiResult<Admitted> {
        let request = AuthRequest {
            doc: name,
            headers: &self.headers,
            query: self.uri.query(),
            peer: self.peer,
            protocol_token: None,
        };
        Ok(state.admission.admit(request, needs, opens_room).await?)
    }
}

pub(crate) fn doc_name(raw: &str) -> ApiResult<DocName> {
    DocName::new(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}
