//! Values in queries and bodies: base64url binaries, state vectors and positions, parsed with
//! a 400 that says which parameter is wrong.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use concord_core::Position;
use yrs::StateVector;
use yrs::updates::decoder::Decode;

use crate::edge::http::error::{ApiError, ApiResult};

pub(crate) fn decode_b64(what: &str, value: &str) -> ApiResult<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| ApiError::bad_request(format!("{what} is not base64url: {e}")))
}

pub(crate) fn encode_b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The `sv` parameter: a base64url v1 state vector, validated before yrs decodes it.
pub(crate) fn state_vector_param(sv: Option<&str>) -> ApiResult<Option<StateVector>> {
    let Some(sv) = sv else { return Ok(None) };
    let bytes = decode_b64("sv", sv)?;
    concord_core::validate::validate_state_vector_v1(&bytes)
        .map_err(|e| ApiError::bad_request(format!("sv is not a state vector: {e}")))?;
    StateVector::decode_v1(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("sv is not a state vector: {e}")))
}

pub(crate) fn position_param(what: &str, value: &str) -> ApiResult<Position> {
    value
        .parse()
        .map_err(|e: concord_core::InvalidPosition| ApiError::bad_request(format!("{what}: {e}")))
}

/// A binary answer.
pub(crate) fn binary(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}
