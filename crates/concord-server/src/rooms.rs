//! Rooms: the documents loaded in this process. The registry opens each room once and unloads
//! it when idle (`registry.rs`); a live room applies messages to the engine and hands the
//! frames to its peers (`room.rs`, `fanout.rs`); a peer is a connection as a room sees it
//! (`peer.rs`).
//!
//! Rooms know nothing of wire protocols or close codes: an edge makes a [`Peer`], drains its
//! [`Outbox`] and says a [`CloseReason`] its own way. Below rooms is durability (the registry
//! waits for a previous incarnation's updates before loading, and hands unloaded rooms to the
//! compactor); beside them, the replication seam they publish to.

mod fanout;
mod peer;
mod registry;
mod room;

pub(crate) use fanout::{QueueLimits, Recipients};
pub(crate) use peer::{CloseReason, Closer, Outbox, Peer, Wire, WriteNow, next_conn_id};
pub(crate) use registry::{OpenError, RoomGuard, Rooms, RoomsConfig};
pub(crate) use room::{LiveRoom, Membership, Origin};
