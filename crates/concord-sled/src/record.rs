//! The on-disk record format: `[format version: u8][crc32 of payload: u32 LE][bincode payload]`,
//! and the payload types stored under each key.
//!
//! Decoding never trusts a length read from disk: every byte string and list is checked against
//! the bytes that remain in the record before anything is allocated, so a damaged record costs
//! at most its own size in memory and never panics.

use std::fmt;

use bincode::de::read::Reader;
use bincode::de::{Decode, Decoder};
use bincode::enc::{Encode, Encoder};
use bincode::error::{DecodeError, EncodeError};

/// The record format this build writes, and the newest it reads.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Bytes before the payload: the version byte and the checksum.
const HEADER_LEN: usize = 5;

/// bincode's standard configuration (varint integers). The limit is a backstop for the
/// containers bincode itself decodes; the byte strings and lists below bound themselves by the
/// record length, which is the bound that actually matters.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 30 }>()
}

/// Why a stored value could not be read. Used in log lines and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Shorter than the header.
    Truncated(usize),
    /// A version byte this build does not read (0, or newer than [`FORMAT_VERSION`]).
    Version(u8),
    /// The payload does not match its checksum.
    Checksum { stored: u32, computed: u32 },
    /// The checksum matched but the payload does not decode as the expected type.
    Decode(String),
    /// The payload decoded but bytes were left over.
    TrailingBytes(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(len) => write!(f, "record of {len} bytes is shorter than its header"),
            Self::Version(v) => write!(
                f,
                "record format version {v} is not one this build reads (1..={FORMAT_VERSION})"
            ),
            Self::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Self::Decode(e) => write!(f, "payload does not decode: {e}"),
            Self::TrailingBytes(n) => write!(f, "{n} bytes left over after the payload"),
        }
    }
}

/// Encodes `value` as a record of the current format version.
pub(crate) fn seal<T: Encode>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::encode_into_std_write(value, &mut out, config())?;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0] = FORMAT_VERSION;
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks a record's header and checksum and decodes its payload.
pub(crate) fn open<T: Decode<()>>(record: &[u8]) -> Result<T, RecordError> {
    if record.len() < HEADER_LEN {
        return Err(RecordError::Truncated(record.len()));
    }
    let version = record[0];
    if version == 0 || version > FORMAT_VERSION {
        return Err(RecordError::Version(version));
    }
    let stored = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let payload = &record[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    let (value, read) = bincode::decode_from_slice::<T, _>(payload, config())
        .map_err(|e| RecordError::Decode(e.to_string()))?;
    if read != payload.len() {
        return Err(RecordError::TrailingBytes(payload.len() - read));
    }
    Ok(value)
}

/// The version byte of a record, if it has one; read before anything else so that a newer
/// store is reported as newer rather than as corrupt.
pub(crate) fn version_of(record: &[u8]) -> Option<u8> {
    record.first().copied()
}

/// Reads a length prefix and checks that at least `len * min_bytes_each` bytes remain, so that a
/// damaged length cannot make us allocate more than the record holds. Only slice readers can
/// answer `peek_read`; this crate decodes from slices only.
pub(crate) fn bounded_len<D: Decoder>(
    decoder: &mut D,
    min_bytes_each: usize,
) -> Result<usize, DecodeError> {
    let raw = u64::decode(decoder)?;
    let len = usize::try_from(raw).map_err(|_| DecodeError::OutsideUsizeRange(raw))?;
    let needed = len.saturating_mul(min_bytes_each);
    if decoder.reader().peek_read(needed).is_none() {
        return Err(DecodeError::Other(
            "a length in the record exceeds the bytes that remain",
        ));
    }
    Ok(len)
}

/// A byte string whose decoding is bounded by the record. Encoded exactly like `Vec<u8>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Blob(pub(crate) Vec<u8>);

impl Encode for Blob {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.encode(encoder)
    }
}

impl<C> Decode<C> for Blob {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = bounded_len(decoder, 1)?;
        let mut bytes = vec![0u8; len];
        decoder.reader().read(&mut bytes)?;
        Ok(Blob(bytes))
    }
}

bincode::impl_borrow_decode!(Blob);

/// A list of byte strings whose decoding is bounded by the record. Encoded exactly like
/// `Vec<Vec<u8>>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Blobs(pub(crate) Vec<Vec<u8>>);

impl<C> Decode<C> for Blobs {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // Every element takes at least one byte (its own length), which bounds the count.
        let count = bounded_len(decoder, 1)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(Blob::decode(decoder)?.0);
        }
        Ok(Blobs(items))
    }
}

bincode::impl_borrow_decode!(Blobs);

/// The store layout this build writes, and the only one it opens. Version 1 kept snapshots in
/// a sled tree; version 2 keeps them in files (see [`crate::snapfile`]).
pub(crate) const STORE_FORMAT: u32 = 2;

/// Payload under `b"m"`: which format the store is in. Written once, when the store is created.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub(crate) struct StoreMeta {
    /// The store's layout version ([`STORE_FORMAT`]); the record format has its own version
    /// byte.
    pub(crate) format_version: u32,
}

/// Payload under `b"i"`: the next numeric document id to hand out. Ids are never reused, so a
/// deleted document's keys can never be mistaken for a new one's.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub(crate) struct IdCounter {
    /// The id the next new document gets.
    pub(crate) next_doc_id: u64,
}

/// Payload under `b"d" + name`: one document's bookkeeping. Every field is kept exact by the
/// writes that change it, under the store's lock.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub(crate) struct DocMeta {
    /// Numeric id used in the log and snapshot keys (shorter and fixed-size, unlike the name).
    pub(crate) id: u64,
    /// Sequence number of the next log entry.
    pub(crate) next_seq: u64,
    /// Log entries up to and including this seq are covered by the snapshot (`None`: no
    /// snapshot).
    pub(crate) snapshot_seq: Option<u64>,
    /// Bytes of the snapshot (0 without one).
    pub(crate) snapshot_bytes: u64,
    /// Log entries after the snapshot, corrupt ones included.
    pub(crate) tail_entries: u64,
    /// Updates in those entries.
    pub(crate) tail_updates: u64,
    /// Bytes of those updates.
    pub(crate) tail_bytes: u64,
    /// Last write, in milliseconds since the Unix epoch.
    pub(crate) updated_at_ms: u64,
}

/// Payload under `b"h" + id`: document `id`'s version history summary, rewritten in the batch
/// that adds or removes one of its versions, so that it always agrees with the version
/// metadata on disk and listing a document costs one read. A document that never kept a
/// version has none (all zero). Kept, with `versions: 0`, when every version is deleted: the
/// counter must outlive them.
#[derive(Debug, Clone, Default, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub(crate) struct VersionSummary {
    /// The id the next version gets. Ids start at 1 and are never reused.
    pub(crate) next_version: u64,
    /// Readable version metadata records of the document.
    pub(crate) versions: u64,
    /// Sum of their `bytes`.
    pub(crate) history_bytes: u64,
}

/// Payload under `b"v" + id + version id`, as written: one kept version's metadata (its
/// snapshot is in a file, see [`crate::snapfile`]). The version id repeats the key's, so a
/// record under the wrong key is detected.
#[derive(Debug, bincode::Encode)]
pub(crate) struct VersionMetaRef<'a> {
    pub(crate) id: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) position_seq: u64,
    pub(crate) position_index: u32,
    pub(crate) label: Option<&'a str>,
    /// Bytes of the snapshot.
    pub(crate) bytes: u64,
}

/// Payload under `b"v" + id + version id`, as read. The label is a [`Blob`] (same encoding
/// as a string) so that a damaged length cannot allocate more than the record holds; it is
/// checked to be UTF-8 after decoding.
#[derive(Debug, bincode::Decode)]
pub(crate) struct VersionMeta {
    pub(crate) id: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) position_seq: u64,
    pub(crate) position_index: u32,
    pub(crate) label: Option<Blob>,
    pub(crate) bytes: u64,
}

/// Payload under `b"l" + id + seq`, as written: the document's updates of one batch, in batch
/// order (borrowed, to avoid copying them before encoding).
#[derive(Debug, bincode::Encode)]
pub(crate) struct LogEntryRef<'a> {
    pub(crate) updates: Vec<&'a [u8]>,
}

/// Payload under `b"l" + id + seq`, as read.
#[derive(Debug, bincode::Decode)]
pub(crate) struct LogEntry {
    pub(crate) updates: Blobs,
}

/// Payload of a snapshot file (see [`crate::snapfile`]), as written: the document's id, the
/// log position the snapshot covers and its bytes. The id and position are stored next to
/// the bytes so that a file found under the wrong name is detected.
#[derive(Debug, bincode::Encode)]
pub(crate) struct SnapshotRef<'a> {
    pub(crate) id: u64,
    pub(crate) upto: u64,
    pub(crate) bytes: &'a [u8],
}

/// Payload of a snapshot file, as read.
#[derive(Debug, bincode::Decode)]
pub(crate) struct Snapshot {
    pub(crate) id: u64,
    pub(crate) upto: u64,
    pub(crate) bytes: Blob,
}

/// Payload of one journal frame (see [`crate::journal`]), as written: the log entries of one
/// `append` batch, each with the document's name and id, so that replay can tell a document
/// from a later one of the same name.
#[derive(Debug, bincode::Encode)]
pub(crate) struct JournalBatchRef<'a> {
    pub(crate) entries: Vec<JournalEntryRef<'a>>,
}

/// One document's log entry in a [`JournalBatchRef`].
#[derive(Debug, bincode::Encode)]
pub(crate) struct JournalEntryRef<'a> {
    pub(crate) doc: &'a str,
    pub(crate) id: u64,
    pub(crate) seq: u64,
    pub(crate) updates: Vec<&'a [u8]>,
}

/// Payload of one journal frame, as read.
#[derive(Debug)]
pub(crate) struct JournalBatch {
    pub(crate) entries: Vec<JournalEntry>,
}

/// One document's log entry in a [`JournalBatch`].
#[derive(Debug, bincode::Decode)]
pub(crate) struct JournalEntry {
    pub(crate) doc: Blob,
    pub(crate) id: u64,
    pub(crate) seq: u64,
    pub(crate) updates: Blobs,
}

impl<C> Decode<C> for JournalBatch {
    fn decode<D: Decoder<Context = C>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // An entry takes at least four bytes (three varints and a list length).
        let count = bounded_len(decoder, 4)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(JournalEntry::decode(decoder)?);
        }
        Ok(JournalBatch { entries })
    }
}

bincode::impl_borrow_decode!(JournalBatch);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(updates: &[&[u8]]) -> Vec<u8> {
        seal(&LogEntryRef {
            updates: updates.to_vec(),
        })
        .unwrap()
    }

    #[test]
    fn borrowed_and_owned_payloads_share_one_encoding() {
        let record = entry(&[b"ab", b"", b"cde"]);
        assert_eq!(record[0], FORMAT_VERSION);
        let read: LogEntry = open(&record).unwrap();
        assert_eq!(
            read.updates.0,
            vec![b"ab".to_vec(), vec![], b"cde".to_vec()]
        );
        // Same bytes as bincode's own Vec<Vec<u8>>, so the format is plain bincode.
        let plain = bincode::encode_to_vec(
            vec![b"ab".to_vec(), vec![], b"cde".to_vec()],
            bincode::config::standard(),
        )
        .unwrap();
        assert_eq!(&record[HEADER_LEN..], &plain[..]);

        let snap = seal(&SnapshotRef {
            id: 2,
            upto: 7,
            bytes: &[1, 2, 3],
        })
        .unwrap();
        let read: Snapshot = open(&snap).unwrap();
        assert_eq!((read.id, read.upto, read.bytes.0), (2, 7, vec![1, 2, 3]));
    }

    #[test]
    fn version_records_round_trip() {
        let record = seal(&VersionMetaRef {
            id: 4,
            created_at_ms: 1_700_000_000_000,
            position_seq: 9,
            position_index: u32::MAX,
            label: Some("draft \u{e9}"),
            bytes: 300,
        })
        .unwrap();
        let read: VersionMeta = open(&record).unwrap();
        assert_eq!(
            (
                read.id,
                read.created_at_ms,
                read.position_seq,
                read.position_index,
                read.label.unwrap().0,
                read.bytes
            ),
            (
                4,
                1_700_000_000_000,
                9,
                u32::MAX,
                "draft \u{e9}".as_bytes().to_vec(),
                300
            )
        );
        let summary = VersionSummary {
            next_version: 5,
            versions: 2,
            history_bytes: 7,
        };
        assert_eq!(
            open::<VersionSummary>(&seal(&summary).unwrap()).unwrap(),
            summary
        );
    }

    #[test]
    fn damaged_records_are_errors() {
        let record = entry(&[b"hello"]);
        assert_eq!(
            open::<LogEntry>(&record[..3]).unwrap_err(),
            RecordError::Truncated(3)
        );
        let mut flipped = record.clone();
        *flipped.last_mut().unwrap() ^= 0xff;
        assert!(matches!(
            open::<LogEntry>(&flipped),
            Err(RecordError::Checksum { .. })
        ));
        let mut newer = record.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert_eq!(
            open::<LogEntry>(&newer).unwrap_err(),
            RecordError::Version(FORMAT_VERSION + 1)
        );
        let mut cut = record.clone();
        cut.pop();
        assert!(matches!(
            open::<LogEntry>(&cut),
            Err(RecordError::Checksum { .. })
        ));
        assert!(open::<LogEntry>(b"").is_err());
        assert!(open::<LogEntry>(b"\x01garbage garbage").is_err());
    }

    /// A record with a valid checksum over a payload that claims huge lengths (what a bug, or a
    /// 1-in-4-billion checksum collision, would give) fails without allocating them.
    #[test]
    fn huge_lengths_with_a_valid_checksum_do_not_allocate() {
        let reseal = |payload: &[u8]| {
            let mut out = vec![FORMAT_VERSION];
            out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            out.extend_from_slice(payload);
            out
        };
        // Count u64::MAX - 1 (varint tag 253 + 8 bytes), then nothing.
        let mut payload = vec![253];
        payload.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(matches!(
            open::<LogEntry>(&reseal(&payload)),
            Err(RecordError::Decode(_))
        ));
        // One element whose length claims 2^40 bytes.
        let mut payload = vec![1, 253];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            open::<LogEntry>(&reseal(&payload)),
            Err(RecordError::Decode(_))
        ));
        // Snapshot whose byte length claims 2^40 bytes.
        let mut payload = vec![2, 7, 253];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            open::<Snapshot>(&reseal(&payload)),
            Err(RecordError::Decode(_))
        ));
        // Valid payload followed by junk.
        let mut payload =
            bincode::encode_to_vec(vec![vec![1u8]], bincode::config::standard()).unwrap();
        payload.push(0);
        assert_eq!(
            open::<LogEntry>(&reseal(&payload)).unwrap_err(),
            RecordError::TrailingBytes(1)
        );
    }
}

/// Payload under `b"o" + key`: a pending webhook delivery (opaque to the store).
#[derive(Debug, bincode::Encode, bincode::Decode)]
pub(crate) struct OutboxRecord {
    pub(crate) payload: Blob,
}

/// Payload under `b"w" + name`: the position through which a document's edits were announced.
#[derive(Debug, bincode::Encode, bincode::Decode)]
pub(crate) struct MarkRecord {
    pub(crate) seq: u64,
    pub(crate) index: u32,
}
