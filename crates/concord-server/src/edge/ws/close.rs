//! WebSocket close codes: how this edge says each [`CloseReason`].
//!
//! Concord's own codes follow the 4000 + HTTP status habit of the Yjs ecosystem (Hocuspocus
//! uses 4401/4403); the standard codes keep their meaning.

use crate::rooms::CloseReason;

/// The server is shutting down.
pub(crate) const GOING_AWAY: u16 = 1001;
/// A text frame, or a message type Concord does not speak.
pub(crate) const UNSUPPORTED: u16 = 1003;
/// A malformed message or an update yrs refused.
pub(crate) const INVALID_PAYLOAD: u16 = 1007;
/// A message larger than the configured maximum, or an awareness state over its limit.
pub(crate) const TOO_BIG: u16 = 1009;
/// The document could not be loaded, or the room failed and will be reloaded.
pub(crate) const INTERNAL_ERROR: u16 = 1011;
/// The connection's outbound queue overflowed (the client was too slow), or too many
/// documents are open.
pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
/// The connection's token expired.
pub(crate) const TOKEN_EXPIRED: u16 = 4401;
/// The document was deleted.
pub(crate) const DOCUMENT_DELETED: u16 = 4404;
/// An update would have grown the document past its size limit.
pub(crate) const DOCUMENT_TOO_LARGE: u16 = 4413;
/// The connection sent faster than its rate limits.
pub(crate) const RATE_LIMITED: u16 = 4429;

/// The close code and reason text for `reason`. The text fits a control frame (123 bytes).
pub(crate) fn close_frame(reason: &CloseReason) -> (u16, String) {
    let (code, text) = match reason {
        CloseReason::SlowConsumer => (
            TRY_AGAIN_LATER,
            "outbound queue full: client too slow; reconnect to resync",
        ),
        CloseReason::RoomFailed => (INTERNAL_ERROR, "internal error in this document; reconnect"),
        CloseReason::DocumentDeleted => (DOCUMENT_DELETED, "document deleted"),
        CloseReason::ShuttingDown => (GOING_AWAY, "server shutting down"),
        CloseReason::LoadFailed => (INTERNAL_ERROR, "could not load the document"),
        CloseReason::TooManyRooms => (
            TRY_AGAIN_LATER,
            "too many documents are open; try again later",
        ),
        CloseReason::TokenExpired => (TOKEN_EXPIRED, "token expired"),
        CloseReason::RateLimited(why) => (RATE_LIMITED, why.as_str()),
        CloseReason::Unsupported(why) => (UNSUPPORTED, why.as_str()),
        CloseReason::Malformed(why) => (INVALID_PAYLOAD, why.as_str()),
        CloseReason::TooBig(why) | CloseReason::AwarenessTooLarge(why) => (TOO_BIG, why.as_str()),
        CloseReason::DocumentTooLarge(why) => (DOCUMENT_TOO_LARGE, why.as_str()),
    };
    (code, truncate_reason(text))
}

/// Close reasons must fit in a control frame: 123 bytes of UTF-8.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100);
        let (code, cut) = close_frame(&CloseReason::Malformed(long.clone()));
        assert_eq!(code, INVALID_PAYLOAD);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn every_reason_has_its_code() {
        let why = || "why".to_owned();
        let codes: Vec<u16> = [
            CloseReason::SlowConsumer,
            CloseReason::RoomFailed,
            CloseReason::DocumentDeleted,
            CloseReason::ShuttingDown,
            CloseReason::LoadFailed,
            CloseReason::TooManyRooms,
            CloseReason::TokenExpired,
            CloseReason::RateLimited(why()),
            CloseReason::Unsupported(why()),
            CloseReason::Malformed(why()),
            CloseReason::TooBig(why()),
            CloseReason::DocumentTooLarge(why()),
            CloseReason::AwarenessTooLarge(why()),
        ]
        .iter()
        .map(|reason| close_frame(reason).0)
        .collect();
        assert_eq!(
            codes,
            [
                1013, 1011, 4404, 1001, 1011, 1013, 4401, 4429, 1003, 1007, 1009, 4413, 1009
            ]
        );
    }
}
