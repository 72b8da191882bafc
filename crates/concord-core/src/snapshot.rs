//! Concord's snapshot format: the whole document as one tag byte and a Yjs update, made by
//! [`SnapshotDraft`] and read back by [`decode_snapshot`].
//!
//! Stores treat a snapshot as opaque bytes (see [`crate::Store`]); only this module knows the
//! tags. The format is on disk in every compacted document, so the tags never change meaning:
//! a new encoding gets a new tag.

use std::panic::{AssertUnwindSafe, catch_unwind};

use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::ProtocolError;

/// Tag of a snapshot holding a Yjs v1 update.
const SNAPSHOT_V1: u8 = 1;
/// Tag of a snapshot holding a Yjs v2 update.
const SNAPSHOT_V2: u8 = 2;

/// A room's state encoded both ways a snapshot may take, from
/// [`Room::draft_snapshot`](crate::Room::draft_snapshot).
///
/// A snapshot is one tag byte and a Yjs update: `2` and the v2 encoding (about half the size
/// of v1), or `1` and the v1 encoding. yrs 0.28 cannot always read back its own v2: it writes
/// the length of binary content (every `Uint8Array` a Yjs app stores) twice and reads it once,
/// and some states do not encode in v2 at all. So v2 is kept only when it decodes into a
/// document whose v1 encoding is the live one's (the same update, decoded); otherwise the
/// snapshot is v1.
#[derive(Debug, Clone)]
pub struct SnapshotDraft {
    v1: Vec<u8>,
    v2: Option<Vec<u8>>,
}

impl SnapshotDraft {
    /// Encodes `doc` both ways (see [`Room::draft_snapshot`](crate::Room::draft_snapshot)).
    pub fn of(doc: &Doc) -> Result<SnapshotDraft, SnapshotError> {
        let txn = doc.transact();
        // yrs panics on some states it holds pending (an `unwrap` in its pending merge).
        let v1 = quietly(|| txn.encode_state_as_update_v1(&StateVector::default()))
            .ok_or(SnapshotError)?;
        let v2 = quietly(|| txn.encode_state_as_update_v2(&StateVector::default()));
        Ok(SnapshotDraft { v1, v2 })
    }

    /// An upper bound of the finished snapshot's size.
    pub fn size_bound(&self) -> u64 {
        1 + self.v1.len().max(self.v2.as_ref().map_or(0, Vec::len)) as u64
    }

    /// The snapshot: v2 if it round-trips, else v1. Decodes the v2 encoding into a fresh
    /// document (a few milliseconds for a large one); no room is involved.
    pub fn finish(self) -> Vec<u8> {
        let (tag, bytes) = match self.v2 {
            Some(v2) if v2_restores(&v2, &self.v1) => (SNAPSHOT_V2, v2),
            _ => (SNAPSHOT_V1, self.v1),
        };
        let mut snapshot = Vec::with_capacity(1 + bytes.len());
        snapshot.push(tag);
        snapshot.extend_from_slice(&bytes);
        snapshot
    }
}

/// Decodes a snapshot made by [`Room::encode_snapshot`](crate::Room::encode_snapshot) (see
/// [`SnapshotDraft`] for the format) into the Yjs update it holds.
pub fn decode_snapshot(snapshot: &[u8]) -> Result<Update, ProtocolError> {
    let decode_error = |e: yrs::encoding::read::Error| ProtocolError::Decode(e.to_string());
    match snapshot.split_first() {
        Some((&SNAPSHOT_V2, bytes)) => Update::decode_v2(bytes).map_err(decode_error),
        Some((&SNAPSHOT_V1, bytes)) => Update::decode_v1(bytes).map_err(decode_error),
        _ => Err(ProtocolError::Decode(
            "not a Concord snapshot (unknown encoding tag)".into(),
        )),
    }
}

/// Whether `v2` decodes into a document that encodes to exactly `v1`.
fn v2_restores(v2: &[u8], v1: &[u8]) -> bool {
    quietly(|| {
        let Ok(update) = Update::decode_v2(v2) else {
            return false;
        };
        let doc = Doc::new();
        if doc.transact_mut().apply_update(update).is_err() {
            return false;
        }
        let restored = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        // Equal bytes, or equal decoded updates: maps (JSON objects, attributes) are encoded
        // in hash order, so the same document may encode to other bytes.
        restored == v1
            || matches!(
                (Update::decode_v1(&restored), Update::decode_v1(v1)),
                (Ok(a), Ok(b)) if a == b
            )
    })
    .unwrap_or(false)
}

/// Runs `f`, turning a panic inside yrs into `None`.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// yrs could not encode the document (it panicked on data it holds pending): no snapshot can
/// be taken; the log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the document cannot be encoded as a snapshot (yrs failed on its pending data)")]
pub struct SnapshotError;

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    /// The text of root "t" after applying a decoded snapshot to an empty document.
    fn restored_text(snapshot: &[u8]) -> String {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(decode_snapshot(snapshot).unwrap())
            .unwrap();
        let text = doc.get_or_insert_text("t");
        text.get_string(&doc.transact())
    }

    #[test]
    fn a_document_that_round_trips_in_v2_is_stored_in_v2() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello");
        let draft = SnapshotDraft::of(&doc).unwrap();
        let bound = draft.size_bound();
        let snapshot = draft.finish();
        assert_eq!(snapshot[0], SNAPSHOT_V2);
        assert!(snapshot.len() as u64 <= bound);
        assert_eq!(restored_text(&snapshot), "hello");
    }

    #[test]
    fn binary_content_falls_back_to_v1() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "with a buffer");
        // A `Uint8Array` as Yjs stores it (yrs never writes this content itself): one binary
        // item [0, 1, 255] under root "a", from client 1 at clock 0, and no deletions.
        let binary = [1, 1, 1, 0, 3, 1, 1, b'a', 3, 0, 1, 255, 0];
        doc.transact_mut()
            .apply_update(Update::decode_v1(&binary).unwrap())
            .unwrap();
        let snapshot = SnapshotDraft::of(&doc).unwrap().finish();
        assert_eq!(
            snapshot[0], SNAPSHOT_V1,
            "yrs cannot read its own v2 of binary content"
        );
        assert_eq!(restored_text(&snapshot), "with a buffer");
    }

    #[test]
    fn a_snapshot_with_an_unknown_tag_or_no_tag_is_refused() {
        for bad in [&[][..], &[0, 0, 0], &[3, 0, 0], &[SNAPSHOT_V1, 0xff, 0xff]] {
            assert!(decode_snapshot(bad).is_err(), "{bad:?}");
        }
        let unknown = decode_snapshot(&[3, 0, 0]).unwrap_err().to_string();
        assert!(unknown.contains("unknown encoding tag"), "{unknown}");
    }
}
