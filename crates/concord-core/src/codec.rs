//! The y-websocket wire codec: inbound frames validated and decoded into [`Inbound`] messages,
//! and the few outbound frames Concord builds itself (the save acknowledgement).
//!
//! Decoding touches no room, so a transport can decode a frame before it takes the room's lock,
//! and a frame that fails here reaches no document at all. Everything the engine relays is
//! encoded by yrs's `Message` (see [`crate::Room`]); this module adds Concord's own message type,
//! [`MSG_SAVED`], and the helpers transports need to recognise awareness frames without knowing
//! the wire tags.

use bytes::Bytes;
use yrs::encoding::read::Cursor;
use yrs::sync::protocol::MessageReader;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{StateVector, Update};

use crate::validate::{InvalidMessage, validate_frame};

/// A message from a client, validated and decoded, ready for
/// [`Room::receive`](crate::Room::receive).
#[derive(Debug)]
pub enum Inbound {
    /// SyncStep1: the client's state vector; answered with the updates it is missing.
    SyncStep1(StateVector),
    /// SyncStep2 or Update: changes to apply to the document, decoded, and the bytes they came
    /// in (stored as they are if the update cannot be integrated yet).
    Update(Update, Vec<u8>),
    /// An awareness update (presence, cursors).
    Awareness(AwarenessUpdate),
    /// A request for every current awareness state.
    QueryAwareness,
    /// An auth message; clients have nothing to say to the server with it, so it is ignored.
    Auth,
    /// A save request ([`MSG_SAVED`]): the connection, not the room, answers it once what the
    /// client sent before it is durable. Rooms ignore it.
    SaveRequest(u64),
}

/// Why an inbound frame was refused before it reached any document.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The frame failed structural validation.
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
    /// The frame passed validation but yrs could not decode it.
    #[error("undecodable message: {0}")]
    Decode(String),
}

impl ProtocolError {
    /// True when the frame was well-formed but of a kind Concord does not speak.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, ProtocolError::Invalid(e) if e.is_unsupported())
    }
}

/// Validates a binary frame of one or more y-protocols messages and decodes it.
///
/// Validation runs first so that no length or count read from the wire reaches a yrs decoder
/// unchecked (yrs pre-allocates from them). Nothing is applied anywhere.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Inbound>, ProtocolError> {
    validate_frame(frame)?;
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    let mut inbound = Vec::new();
    for message in MessageReader::new(&mut decoder) {
        let message = message.map_err(|e| ProtocolError::Decode(e.to_string()))?;
        inbound.push(match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => Inbound::SyncStep1(sv),
            Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                Inbound::Update(decode_update(&update)?, update)
            }
            Message::Awareness(update) => Inbound::Awareness(update),
            Message::AwarenessQuery => Inbound::QueryAwareness,
            Message::Auth(_) => Inbound::Auth,
            Message::Custom(MSG_SAVED, payload) => {
                use yrs::encoding::read::Read;
                let id = Cursor::new(&payload)
                    .read_var::<u64>()
                    .map_err(|e| ProtocolError::Decode(e.to_string()))?;
                Inbound::SaveRequest(id)
            }
            Message::Custom(tag, _) => {
                return Err(InvalidMessage::UnknownMessageType(tag.into()).into());
            }
        });
    }
    Ok(inbound)
}

/// Decodes a Yjs v1 update that already passed validation, so no count in it reaches yrs
/// unchecked. Shared with the room, which decodes stored updates the same way.
pub(crate) fn decode_update(update: &[u8]) -> Result<Update, ProtocolError> {
    Update::decode_v1(update).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// Raises `sv` to cover what the stored update `update` (Yjs v1, validated before it was
/// stored) inserts: per client, the end of its last inserted range. A document's state vector
/// raised by the updates stored after it (in any order) is the state vector of the document with
/// them, without building it (an update yrs would keep pending, for want of another, counts as
/// integrated).
pub fn raise_state_vector(sv: &mut StateVector, update: &[u8]) -> Result<(), ProtocolError> {
    let update = decode_update(update)?;
    for (client, ranges) in update.insertions(true).iter() {
        if let Some(end) = ranges.iter().map(|range| range.end).max() {
            sv.set_max(*client, end);
        }
    }
    Ok(())
}

/// Message type of Concord's durability extension. A client sends `[MSG_SAVED,
/// varUint8Array(varUint id)]` after its updates; the server answers with the same message once
/// everything that connection sent before it is durably stored. Plain y-websocket clients never
/// send it, so they never receive one. Below 128, so yrs's `Message::Custom` (which writes its
/// tag as a byte) and lib0's varUint agree on the encoding.
pub const MSG_SAVED: u8 = 100;

/// Encodes the acknowledgement of save request `id`.
pub fn encode_saved(id: u64) -> Bytes {
    use yrs::encoding::write::Write;
    let mut payload = Vec::with_capacity(10);
    payload.write_var(id);
    Bytes::from(Message::Custom(MSG_SAVED, payload).encode_v1())
}

/// Whether `frame`, one encoded y-protocols message as [`Effects`](crate::Effects) and
/// [`Room::join`](crate::Room::join) produce them, is an awareness message (soft state: a
/// transport may skip it for a peer that is behind, never a document update).
pub fn is_awareness_frame(frame: &[u8]) -> bool {
    frame.first() == Some(&yrs::sync::protocol::MSG_AWARENESS)
}

/// The awareness update (what `encodeAwarenessUpdate` returns in JS) inside an awareness
/// message frame, or `None` when `frame` is not a well-formed awareness message.
pub fn awareness_payload(frame: &[u8]) -> Option<&[u8]> {
    use yrs::encoding::read::Read;
    let (&tag, rest) = frame.split_first()?;
    if tag != yrs::sync::protocol::MSG_AWARENESS {
        return None;
    }
    let mut cursor = Cursor::new(rest);
    let len: u64 = cursor.read_var().ok()?;
    let start = cursor.next;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    rest.get(start..end)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_state_vector_raised_by_stored_updates_is_the_documents() {
        use yrs::{Array, Doc, GetString, ReadTxn, Text, Transact, WriteTxn};
        let doc = Doc::with_client_id(1);
        let other = Doc::with_client_id(2);
        let mut updates = Vec::new();
        let mut edit = |doc: &Doc, f: &dyn Fn(&mut yrs::TransactionMut)| {
            let before = doc.transact().state_vector();
            let mut txn = doc.transact_mut();
            f(&mut txn);
            drop(txn);
            updates.push(doc.transact().encode_state_as_update_v1(&before));
        };
        edit(&doc, &|txn| {
            txn.get_or_insert_text("t").insert(txn, 0, "hello")
        });
        let base = doc.transact().state_vector();
        edit(&other, &|txn| {
            txn.get_or_insert_array("a").insert(txn, 0, 1);
        });
        edit(&doc, &|txn| {
            let text = txn.get_or_insert_text("t");
            text.remove_range(txn, 0, 2);
            text.insert(txn, 3, " world");
        });
        edit(&other, &|txn| {
            txn.get_or_insert_array("a").insert(txn, 0, 2);
        });
        let whole = Doc::new();
        for update in &updates {
            whole
                .transact_mut()
                .apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
        let mut sv = base;
        for update in &updates[1..] {
            super::raise_state_vector(&mut sv, update).unwrap();
        }
        assert_eq!(sv, whole.transact().state_vector());
        assert_eq!(
            whole.get_or_insert_text("t").get_string(&whole.transact()),
            "llo world"
        );
        assert!(super::raise_state_vector(&mut sv, b"not an update").is_err());
    }

    use super::*;

    #[test]
    fn awareness_frames_are_recognised_and_their_payloads_extracted() {
        assert!(is_awareness_frame(&[1, 2, 7, 8]));
        assert!(!is_awareness_frame(&[0, 2, 7, 8]));
        assert!(!is_awareness_frame(&[]));
        assert_eq!(awareness_payload(&[1, 2, 7, 8]), Some(&[7u8, 8][..]));
        assert_eq!(awareness_payload(&[0, 2, 7, 8]), None);
        assert_eq!(awareness_payload(&[1, 5, 7]), None);
        assert_eq!(awareness_payload(&[1, 0xff]), None);
    }

    #[test]
    fn save_requests_decode_and_acknowledgements_encode() {
        let request = encode_saved(300);
        assert_eq!(&request[..], &[MSG_SAVED, 2, 0xac, 0x02]);
        let inbound = decode_frame(&request).unwrap();
        assert!(matches!(inbound[..], [Inbound::SaveRequest(300)]));
        // Exactly one varUint inside, nothing else.
        assert!(decode_frame(&[MSG_SAVED, 2, 1, 1]).is_err());
        assert!(decode_frame(&[MSG_SAVED, 0]).is_err());
    }

    #[test]
    fn invalid_frames_are_refused_before_decoding() {
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[0, 2, 4, 255, 255, 255, 122]).is_err());
        let unknown = decode_frame(&[42, 0]).unwrap_err();
        assert!(unknown.is_unsupported());
    }
}
