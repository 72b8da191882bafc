//! The key scheme: every key lives in sled's default tree and starts with a one-byte tag, so one
//! `sled::Batch` can change a document's metadata, log and version history atomically.

use std::ops::RangeInclusive;

/// The store's format record.
pub(crate) const FORMAT: &[u8] = b"m";
/// The document id counter.
pub(crate) const ID_COUNTER: &[u8] = b"i";
/// Tag of document metadata keys (`b"d" + name`).
pub(crate) const DOC_TAG: u8 = b'd';
/// Tag of log entry keys (`b"l" + id + seq`).
const LOG_TAG: u8 = b'l';
/// Tag of version history summary keys (`b"h" + id`).
const HISTORY_TAG: u8 = b'h';
/// Tag of version metadata keys (`b"v" + id + version id`).
pub(crate) const VERSION_TAG: u8 = b'v';

/// Tag of webhook outbox entries (`b"o" + key`).
pub(crate) const OUTBOX_TAG: u8 = b'o';
/// Tag of the marks of announced positions (`b"w" + name`).
pub(crate) const MARK_TAG: u8 = b'w';
/// Present once the outbox was first written.
pub(crate) const OUTBOX_STARTED: &[u8] = b"s";

/// Length of a log entry key: tag, id, seq.
const LOG_KEY_LEN: usize = 1 + 8 + 8;
/// Length of a version metadata key: tag, document id, version id.
const VERSION_KEY_LEN: usize = 1 + 8 + 8;

/// `b"d" + name`: the name itself, so that a prefix scan lists documents sorted by name.
pub(crate) fn doc(name: &str) -> Vec<u8> {
    tagged(DOC_TAG, name)
}

/// `b"l" + id (u64 BE) + seq (u64 BE)`: big-endian so that byte order is numeric order and a
/// range scan returns a document's entries in seq order.
pub(crate) fn log(id: u64, seq: u64) -> [u8; LOG_KEY_LEN] {
    let mut key = [0u8; LOG_KEY_LEN];
    key[0] = LOG_TAG;
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Keys of document `id`'s log entries with `from <= seq <= to`.
pub(crate) fn log_range(id: u64, from: u64, to: u64) -> RangeInclusive<[u8; LOG_KEY_LEN]> {
    log(id, from)..=log(id, to)
}

/// The seq of a log entry key, or `None` if the key is not one this store writes.
pub(crate) fn log_seq(key: &[u8]) -> Option<u64> {
    if key.len() != LOG_KEY_LEN || key[0] != LOG_TAG {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[9..]);
    Some(u64::from_be_bytes(seq))
}

/// `b"h" + id (u64 BE)`: the version history summary of document `id`.
pub(crate) fn history(id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = HISTORY_TAG;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// `b"v" + id (u64 BE) + version id (u64 BE)`: big-endian, so a prefix scan returns a
/// document's versions oldest first.
pub(crate) fn version(id: u64, version: u64) -> [u8; VERSION_KEY_LEN] {
    let mut key = [0u8; VERSION_KEY_LEN];
    key[0] = VERSION_TAG;
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..].copy_from_slice(&version.to_be_bytes());
    key
}

/// The prefix of document `id`'s version metadata keys.
pub(crate) fn versions_of(id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = VERSION_TAG;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// `(document id, version id)` of a version metadata key, or `None` if the key is not one this
/// store writes.
pub(crate) fn version_ids(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != VERSION_KEY_LEN || key[0] != VERSION_TAG {
        return None;
    }
    let mut id = [0u8; 8];
    let mut version = [0u8; 8];
    id.copy_from_slice(&key[1..9]);
    version.copy_from_slice(&key[9..]);
    Some((u64::from_be_bytes(id), u64::from_be_bytes(version)))
}

/// `tag + text`: an outbox entry's key (`b"o"`) or a document's mark (`b"w"`).
pub(crate) fn tagged(tag: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + text.len());
    key.push(tag);
    key.extend_from_slice(text.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_document_then_seq() {
        let mut keys = vec![
            log(2, 1),
            log(1, 256),
            log(1, 2),
            log(1, u64::MAX),
            log(1, 0),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                log(1, 0),
                log(1, 2),
                log(1, 256),
                log(1, u64::MAX),
                log(2, 1)
            ]
        );
        assert_eq!(log_seq(&log(3, 258)), Some(258));
        assert_eq!(log_seq(&doc("abc")), None);
        assert!(log_range(1, 2, 256).contains(&log(1, 3)));
        assert!(!log_range(1, 2, 256).contains(&log(2, 3)));
    }

    #[test]
    fn version_keys_sort_by_document_then_version_id() {
        let mut keys = vec![version(2, 1), version(1, 256), version(1, 2)];
        keys.sort();
        assert_eq!(keys, vec![version(1, 2), version(1, 256), version(2, 1)]);
        assert!(version(1, 256).starts_with(&versions_of(1)));
        assert!(!version(2, 1).starts_with(&versions_of(1)));
        assert_eq!(version_ids(&version(3, 258)), Some((3, 258)));
        assert_eq!(version_ids(&log(3, 258)), None);
        assert_eq!(version_ids(&history(3)), None);
    }
}
