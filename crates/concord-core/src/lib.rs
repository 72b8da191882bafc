//! Concord's sans-IO engine: rooms, sessions over `yrs::sync`, awareness lifecycle, input
//! validation and the storage trait. It performs no I/O and knows nothing of sockets, runtimes or
//! databases: bytes come in, frames to send and updates to persist come out.
//!
//! - [`decode_frame`] validates and decodes an inbound WebSocket frame without touching a room.
//! - [`Room`] applies decoded messages to one document and says what to send to whom.
//! - [`Store`] is the persistence seam; [`MemoryStore`] keeps everything in memory.

mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod history;
pub mod hocuspocus;
pub mod json;
mod name;
pub mod replication;
pub mod restore;
mod room;
mod snapshot;
mod store;
#[cfg(any(test, feature = "conformance"))]
mod test_support;
pub mod validate;
pub mod webhook;

pub use codec::{
    Inbound, MSG_SAVED, ProtocolError, awareness_payload, decode_frame, encode_saved,
    is_awareness_frame, raise_state_vector,
};
pub use name::{DocName, InvalidDocName, MAX_DOC_NAME_BYTES};
pub use room::{
    Access, ConnId, Effects, Outgoing, READ_ONLY_REASON, Recipients, Room, RoomFault, RoomLimits,
};
pub use snapshot::{SnapshotDraft, SnapshotError, decode_snapshot};
pub use store::{
    Appended, DocInfo, InvalidPosition, LogTail, MemoryStore, NewVersion, Outbox, OutboxEntry,
    Position, Seq, Store, StoreError, StoreFuture, StoredDoc, StoredUpdate, VersionId, VersionInfo,
    WebhookNews,
};
pub use yrs::sync::time::{Clock, SystemClock};
