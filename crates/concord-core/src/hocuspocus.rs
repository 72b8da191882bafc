//! The Hocuspocus wire protocol (`@hocuspocus/provider` 4.x), sans-IO: the envelope around
//! y-protocols that lets one WebSocket carry many documents.
//!
//! Every message starts with the document's routing key, a lib0 `varString`: the document name,
//! or `name\0sessionId` for providers with `sessionAwareness` (answers carry the same raw key).
//! Then a `varUint` message type:
//!
//! | type | name | body |
//! |---|---|---|
//! | 0 | Sync | a y-protocols sync message (step 1, step 2, update) |
//! | 1 | Awareness | `varUint8Array` awareness update |
//! | 2 | Auth | `varUint` subtype: 0 token (`varString`, then optionally the provider's version as a `varString`); 1 permission denied (`varString` reason); 2 authenticated (`varString` scope `read-write` or `readonly`) |
//! | 3 | QueryAwareness | nothing: answered with every awareness state |
//! | 4 | SyncReply | a sync message; the server treats it as Sync |
//! | 5 | Stateless | `varString` payload for the application |
//! | 6 | BroadcastStateless | server-internal in Hocuspocus; refused from a client |
//! | 7 | Close | from the client: close this document; from the server: `varString` reason |
//! | 8 | SyncStatus | `varUint` 1: the update was saved, 0: it was refused |
//!
//! Types 0, 1 and 3 with their bodies are byte for byte the y-websocket messages of the same
//! types, so [`decode_frame`] reads them and the rooms' own frames need only the key in front.
//! Two frames carry no key and are exactly one byte long: Ping `[9]` (server to client) and
//! Pong `[10]` (the answer). A routing key never makes a one-byte frame, so they cannot be
//! mistaken for document messages.

use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::codec::{Inbound, ProtocolError, decode_frame};
use crate::name::{DocName, InvalidDocName};

/// Message type: y-protocols sync.
pub const SYNC: u8 = 0;
/// Message type: awareness.
pub const AWARENESS: u8 = 1;
/// Message type: authentication.
pub const AUTH: u8 = 2;
/// Message type: a request for every awareness state.
pub const QUERY_AWARENESS: u8 = 3;
/// Message type: a sync message that asks for no SyncStep1 in return.
pub const SYNC_REPLY: u8 = 4;
/// Message type: an application message.
pub const STATELESS: u8 = 5;
/// Message type: Hocuspocus' server-to-server stateless relay; never valid from a client.
pub const BROADCAST_STATELESS: u8 = 6;
/// Message type: close one document.
pub const CLOSE: u8 = 7;
/// Message type: whether an update was saved.
pub const SYNC_STATUS: u8 = 8;
/// The connection-level ping the server sends; the provider answers [`PONG`].
pub const PING: &[u8] = &[9];
/// The provider's answer to [`PING`].
pub const PONG: &[u8] = &[10];

/// Longest session id accepted after the `\0` of a routing key, in bytes (the provider sends
/// a UUID).
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// Longest routing key accepted: a document name, `\0` and a session id. A frame with a longer
/// one names no document the server could open, and is refused as a whole (answers repeat the
/// key, so it must stay small).
pub const MAX_KEY_BYTES: usize = crate::MAX_DOC_NAME_BYTES + 1 + MAX_SESSION_ID_BYTES;

/// Scope of an `Authenticated` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `read-write`.
    ReadWrite,
    /// `readonly`.
    ReadOnly,
}

/// One frame from a Hocuspocus client.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// The connection-level Pong (or a Ping, which is answered with a Pong).
    Pong,
    /// A Ping: answer [`PONG`].
    Ping,
    /// A message for one document.
    Doc {
        /// The raw routing key, repeated in every answer.
        key: &'a str,
        /// What the message says, or why it cannot be used. A message that names its
        /// document but is malformed after that concerns that document only.
        message: Result<DocMessage<'a>, DocMessageError>,
    },
}

/// A message for one document.
#[derive(Debug)]
pub enum DocMessage<'a> {
    /// Sync, Awareness or QueryAwareness, decoded as y-websocket messages are; SyncReply
    /// arrives as Sync.
    YProtocols(Vec<Inbound>),
    /// The provider's token (the empty string when it has none).
    Token {
        /// The token.
        token: &'a str,
    },
    /// An application message.
    Stateless(&'a str),
    /// The provider closes this document (the socket stays open).
    Close,
}

/// Why a frame is not a Hocuspocus message at all: no routing key can be read, so the frame
/// concerns no one document. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// The routing key is missing, cut short or not UTF-8.
    #[error("malformed document name: {0}")]
    Key(String),
}

/// Why a message for one document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DocMessageError {
    /// The document name in the routing key is not valid.
    #[error(transparent)]
    Name(#[from] InvalidDocName),
    /// The session id after `\0` is longer than [`MAX_SESSION_ID_BYTES`].
    #[error("session id longer than {MAX_SESSION_ID_BYTES} bytes")]
    SessionId,
    /// A message type this server does not accept from a client.
    #[error("unsupported message type {0}")]
    Unsupported(u64),
    /// The body is malformed.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A sync or awareness message that fails validation.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl DocMessageError {
    /// True when the message was well-formed but of a kind this server does not accept.
    pub fn is_unsupported(&self) -> bool {
        match self {
            DocMessageError::Unsupported(_) => true,
            DocMessageError::Protocol(e) => e.is_unsupported(),
            _ => false,
        }
    }
}

/// The document a routing key names: the part before `\0`, checked as every document name is.
pub fn doc_name(key: &str) -> Result<DocName, DocMessageError> {
    let (name, session) = match key.split_once('\0') {
        Some((name, session)) => (name, Some(session)),
        None => (key, None),
    };
    if session.is_some_and(|s| s.len() > MAX_SESSION_ID_BYTES) {
        return Err(DocMessageError::SessionId);
    }
    Ok(DocName::new(name)?)
}

/// Reads one client frame. Bounds-checked throughout; nothing is allocated from a length read
/// off the wire before the bytes it claims are there.
pub fn decode_client_frame(frame: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    match frame {
        [] => return Err(FrameError::Empty),
        [10] => return Ok(ClientFrame::Pong),
        [9] => return Ok(ClientFrame::Ping),
        _ => {}
    }
    let (key, rest) = read_str(frame).map_err(FrameError::Key)?;
    if key.len() > MAX_KEY_BYTES {
        return Err(FrameError::Key(format!(
            "longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(ClientFrame::Doc {
        key,
        message: doc_message(rest),
    })
}

/// The message after the routing key.
fn doc_message(body: &[u8]) -> Result<DocMessage<'_>, DocMessageError> {
    let malformed = |e: yrs::encoding::read::Error| DocMessageError::Malformed(e.to_string());
    let mut cursor = Cursor::new(body);
    let kind: u64 = cursor.read_var().map_err(malformed)?;
    let after = &body[cursor.next..];
    match kind {
        0 | 1 | 3 => Ok(DocMessage::YProtocols(one_message(body)?)),
        4 => {
            let mut as_sync = Vec::with_capacity(body.len());
            as_sync.push(SYNC);
            as_sync.extend_from_slice(after);
            Ok(DocMessage::YProtocols(one_message(&as_sync)?))
        }
        2 => {
            let mut cursor = Cursor::new(after);
            let subtype: u64 = cursor.read_var().map_err(malformed)?;
            if subtype != 0 {
                return Err(DocMessageError::Unsupported(2));
            }
            let (token, rest) =
                read_str(&after[cursor.next..]).map_err(DocMessageError::Malformed)?;
            // The provider's version may follow; nothing else may.
            if !rest.is_empty() {
                let (_version, rest) = read_str(rest).map_err(DocMessageError::Malformed)?;
                trailing(rest)?;
            }
            Ok(DocMessage::Token { token })
        }
        5 => {
            let (payload, rest) = read_str(after).map_err(DocMessageError::Malformed)?;
            trailing(rest)?;
            Ok(DocMessage::Stateless(payload))
        }
        7 => Ok(DocMessage::Close),
        other => Err(DocMessageError::Unsupported(other)),
    }
}

/// Exactly one y-protocols message, of the kinds a Hocuspocus client sends.
fn one_message(frame: &[u8]) -> Result<Vec<Inbound>, DocMessageError> {
    let inbound = decode_frame(frame)?;
    match inbound.as_slice() {
        [
            Inbound::SyncStep1(_)
            | Inbound::Update(..)
            | Inbound::Awareness(_)
            | Inbound::QueryAwareness,
        ] => Ok(inbound),
        [_] => Err(DocMessageError::Malformed(
            "not a sync, awareness or query message".into(),
        )),
        _ => Err(DocMessageError::Malformed(
            "more than one message in a frame".into(),
        )),
    }
}

/// A lib0 `varString` at the start of `buf`, and what follows it.
fn read_str(buf: &[u8]) -> Result<(&str, &[u8]), String> {
    let mut cursor = Cursor::new(buf);
    let len: u64 = cursor.read_var().map_err(|e| e.to_string())?;
    let start = cursor.next;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= buf.len())
        .ok_or_else(|| format!("a string of {len} bytes where {} remain", buf.len() - start))?;
    let text = std::str::from_utf8(&buf[start..end]).map_err(|e| e.to_string())?;
    Ok((text, &buf[end..]))
}

fn trailing(rest: &[u8]) -> Result<(), DocMessageError> {
    if !rest.is_empty() {
        return Err(DocMessageError::Malformed(
            "bytes after the end of the message".into(),
        ));
    }
    Ok(())
}

/// `frame` (one y-protocols message, as rooms make them) addressed to `key`.
pub fn addressed(key: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + frame.len());
    out.write_string(key);
    out.extend_from_slice(frame);
    out
}

/// The body of a SyncStatus message (address it with [`addressed`]).
pub fn sync_status(saved: bool) -> [u8; 2] {
    [SYNC_STATUS, u8::from(saved)]
}

/// The body of a Stateless message.
pub fn stateless(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 6);
    out.push(STATELESS);
    out.write_string(payload);
    out
}

/// The body of an `Authenticated` answer.
pub fn authenticated(scope: Scope) -> Vec<u8> {
    let mut out = vec![AUTH, 2];
    out.write_string(match scope {
        Scope::ReadWrite => "read-write",
        Scope::ReadOnly => "readonly",
    });
    out
}

/// The body of a `PermissionDenied` answer.
pub fn permission_denied(reason: &str) -> Vec<u8> {
    let mut out = vec![AUTH, 1];
    out.write_string(reason);
    out
}

/// The body of a Close message: the server closed this document, for `reason`.
pub fn close(reason: &str) -> Vec<u8> {
    let mut out = vec![CLOSE];
    out.write_string(reason);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    use yrs::{ReadTxn, StateVector, Text, Transact};

    fn token_frame(key: &str, token: &str, version: Option<&str>) -> Vec<u8> {
        let mut body = vec![AUTH, 0];
        body.write_string(token);
        if let Some(version) = version {
            body.write_string(version);
        }
        addressed(key, &body)
    }

    #[test]
    fn pings_pongs_and_keys() {
        assert!(matches!(decode_client_frame(PONG), Ok(ClientFrame::Pong)));
        assert!(matches!(decode_client_frame(PING), Ok(ClientFrame::Ping)));
        assert_eq!(decode_client_frame(&[]).unwrap_err(), FrameError::Empty);
        // A key that claims more bytes than there are, and one that is not UTF-8.
        assert!(matches!(
            decode_client_frame(&[200, 1, b'a']),
            Err(FrameError::Key(_))
        ));
        assert!(matches!(
            decode_client_frame(&[2, 0xff, 0xfe, 0]),
            Err(FrameError::Key(_))
        ));
        let long = addressed(&"k".repeat(MAX_KEY_BYTES + 1), &[QUERY_AWARENESS]);
        assert!(matches!(
            decode_client_frame(&long),
            Err(FrameError::Key(_))
        ));
        assert_eq!(doc_name("notes").unwrap().as_str(), "notes");
        assert_eq!(doc_name("notes\0abc").unwrap().as_str(), "notes");
        assert!(doc_name("").is_err());
        assert!(matches!(
            doc_name(&format!("notes\0{}", "s".repeat(200))),
            Err(DocMessageError::SessionId)
        ));
    }

    #[test]
    fn tokens_with_and_without_the_provider_version() {
        for version in [None, Some("4.8.0")] {
            let frame = token_frame("doc", "secret", version);
            let Ok(ClientFrame::Doc { key, message }) = decode_client_frame(&frame) else {
                panic!("a document message");
            };
            assert_eq!(key, "doc");
            assert!(matches!(message, Ok(DocMessage::Token { token: "secret" })));
        }
        // A token followed by more than the version.
        let mut frame = token_frame("doc", "t", Some("v"));
        frame.push(0);
        let Ok(ClientFrame::Doc { message, .. }) = decode_client_frame(&frame) else {
            panic!("a document message");
        };
        assert!(matches!(message, Err(DocMessageError::Malformed(_))));
    }

    #[test]
    fn sync_awareness_and_sync_reply_are_y_protocols_messages() {
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hi");
            txn.encode_update_v1()
        };
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        let update_msg = Message::Sync(SyncMessage::Update(update)).encode_v1();
        let mut reply = update_msg.clone();
        reply[0] = SYNC_REPLY;
        for (body, want_update) in [(step1, false), (update_msg, true), (reply, true)] {
            let frame = addressed("a\0session", &body);
            let Ok(ClientFrame::Doc { key, message }) = decode_client_frame(&frame) else {
                panic!("a document message");
            };
            assert_eq!(key, "a\0session");
            let Ok(DocMessage::YProtocols(inbound)) = message else {
                panic!("y-protocols");
            };
            assert_eq!(matches!(inbound[..], [Inbound::Update(..)]), want_update);
        }
        let query = addressed("a", &[QUERY_AWARENESS]);
        assert!(matches!(
            decode_client_frame(&query),
            Ok(ClientFrame::Doc {
                message: Ok(DocMessage::YProtocols(_)),
                ..
            })
        ));
        let _ = doc.transact().state_vector();
    }

    #[test]
    fn hostile_bodies_concern_their_document_only() {
        let cases: Vec<Vec<u8>> = vec![
            // The seven-byte allocation bomb, addressed.
            addressed("a", &[0, 2, 4, 255, 255, 255, 122]),
            // BroadcastStateless from a client.
            addressed("a", &[BROADCAST_STATELESS, 0]),
            // SyncStatus from a client, an unknown type, a cut-short stateless payload.
            addressed("a", &[SYNC_STATUS, 1]),
            addressed("a", &[99]),
            addressed("a", &[STATELESS, 10, b'x']),
            // Two messages in one frame; a save request.
            addressed("a", &[QUERY_AWARENESS, QUERY_AWARENESS]),
            addressed("a", &[100, 1, 7]),
            // No type at all.
            addressed("a", &[]),
        ];
        for frame in cases {
            match decode_client_frame(&frame) {
                Ok(ClientFrame::Doc {
                    key: "a",
                    message: Err(_),
                }) => {}
                other => panic!("{frame:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn answers_encode_as_the_provider_reads_them() {
        assert_eq!(addressed("ab", &sync_status(true)), [2, b'a', b'b', 8, 1]);
        assert_eq!(authenticated(Scope::ReadOnly)[..3], [AUTH, 2, 8]);
        assert_eq!(&authenticated(Scope::ReadWrite)[3..], b"read-write");
        assert_eq!(permission_denied("no")[..], [AUTH, 1, 2, b'n', b'o']);
        assert_eq!(close("bye")[..], [CLOSE, 3, b'b', b'y', b'e']);
        assert_eq!(stateless("{}")[..], [STATELESS, 2, b'{', b'}']);
        let frame = addressed("d", &stateless("{\"x\":1}"));
        let Ok(ClientFrame::Doc { message, .. }) = decode_client_frame(&frame) else {
            panic!("a document message");
        };
        assert!(matches!(message, Ok(DocMessage::Stateless("{\"x\":1}"))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 2000,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever arrives, reading it neither panics nor misreads the key.
        #[test]
        fn any_frame_is_read_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let _ = decode_client_frame(&bytes);
            let frame = addressed("doc\0s", &bytes);
            match decode_client_frame(&frame) {
                Ok(ClientFrame::Doc { key, .. }) => proptest::prop_assert_eq!(key, "doc\0s"),
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }
}
