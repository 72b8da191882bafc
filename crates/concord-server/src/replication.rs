//! The seam to other server processes that serve the same documents.
//!
//! A [`Replication`] (set in [`crate::Config::replication`]) is told when a document's room
//! opens and closes in this process ([`Replication::follow`], [`Replication::unfollow`]) and
//! is handed what each room applies from its own clients ([`Replication::publish`]): the
//! document updates it stores and relays, and the awareness changes it relays. What another
//! process publishes comes back through the [`Inlet`] given to `follow`, and enters the room
//! the way a peer's message does: validated, applied, relayed to every local connection. It is
//! never published again (so nothing echoes between processes) and never stored by this
//! process: the process whose client sent it stored it, in the store the processes share.
//!
//! Without a replication (the default, one process) none of this runs: a room checks one
//! `Option` per message it applies, and nothing is encoded, copied or queued for it.
//!
//! This module depends on `concord-core` only: rooms implement [`RemoteInput`] (the trait the
//! inlet feeds) and call the [`Replication`], so the arrows point from rooms to here.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use concord_core::{DocName, Inbound, ProtocolError, RoomFault, decode_frame};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;

/// Links this process's rooms to other processes serving the same documents.
///
/// Every method is called with a room's or the registry's lock held, in the order the room
/// applied what it reports: an implementation must not block or call back into Concord from
/// them. Queue the work (a bounded channel to a task of its own, with a written overflow
/// policy) and return.
pub trait Replication: Send + Sync + 'static {
    /// A room for `doc` is open in this process: from now on, give what other processes
    /// publish for `doc` to `inlet`. For one document, `follow` and [`Replication::unfollow`]
    /// alternate, starting with `follow`.
    ///
    /// The room was loaded from the store just before this call: what other processes stored
    /// before that load is in it, what they publish after it must reach the inlet (a
    /// stream-based implementation reads from where the stored state ends). Delivering an
    /// update twice is harmless: applying a Yjs update again changes nothing.
    fn follow(&self, doc: &DocName, inlet: Inlet);

    /// The room for `doc` closed (unloaded, deleted, or discarded after an internal error):
    /// stop delivering to the inlet given to `follow` (it would refuse with
    /// [`InletError::Closed`] anyway).
    fn unfollow(&self, doc: &DocName);

    /// The room for `doc` applied `event` from one of this process's clients (a WebSocket
    /// connection, an HTTP request). Events of one document come in the order the room
    /// applied them.
    fn publish(&self, doc: &DocName, event: Published);
}

/// What a room applied from a local client, for other processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A Yjs v1 update: exactly what the room stores for it (the change yrs reports, or the
    /// update as received when yrs holds it pending).
    Update(Bytes),
    /// A y-protocols awareness update (what `encodeAwarenessUpdate` returns in JS): states
    /// that were set, renewed or removed, also removals because a client left.
    Awareness(Bytes),
}

/// Where another process's updates and awareness enter one room of this process. Cheap to
/// clone; it does not keep the room loaded.
#[derive(Clone)]
pub struct Inlet {
    room: Weak<dyn RemoteInput>,
}

impl std::fmt::Debug for Inlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inlet")
            .field("open", &!self.is_closed())
            .finish()
    }
}

/// Why an [`Inlet`] refused an event.
#[derive(Debug, thiserror::Error)]
pub enum InletError {
    /// The room closed: the document is no longer loaded in this process.
    #[error("the room is closed")]
    Closed,
    /// The event is not a valid Yjs update or awareness update.
    #[error("malformed: {0}")]
    Malformed(#[from] ProtocolError),
    /// The room could not apply it (yrs refused it, a limit, or the room failed).
    #[error(transparent)]
    Refused(#[from] RoomFault),
}

impl Inlet {
    pub(crate) fn new(room: Weak<dyn RemoteInput>) -> Inlet {
        Inlet { room }
    }

    /// Applies a Yjs v1 update another process published ([`Published::Update`]) and relays
    /// it to every connection of the room here. Validated like a client's update; applying it
    /// runs yrs on the calling thread (call it from a task that may block for the time a large
    /// update takes to merge).
    pub fn update(&self, update: &[u8]) -> Result<(), InletError> {
        let frame = Message::Sync(SyncMessage::Update(update.to_vec())).encode_v1();
        self.apply(&frame)
    }

    /// Applies an awareness update another process published ([`Published::Awareness`]) and
    /// relays it to every connection of the room here.
    pub fn awareness(&self, update: &[u8]) -> Result<(), InletError> {
        let mut frame = Vec::with_capacity(update.len() + 6);
        frame.push(yrs::sync::protocol::MSG_AWARENESS);
        yrs::encoding::write::Write::write_buf(&mut frame, update);
        self.apply(&frame)
    }

    /// Whether the room has closed (every event is then refused with [`InletError::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.room.strong_count() == 0
    }

    fn apply(&self, frame: &[u8]) -> Result<(), InletError> {
        let room = self.room.upgrade().ok_or(InletError::Closed)?;
        let inbound = decode_frame(frame)?;
        room.receive_remote(inbound)?;
        Ok(())
    }
}

/// A room as the inlet sees it: implemented by the live room.
pub(crate) trait RemoteInput: Send + Sync {
    /// Applies messages another process published: relayed to every local connection, never
    /// stored here, never published again.
    fn receive_remote(&self, inbound: Vec<Inbound>) -> Result<(), RoomFault>;
}

/// The replication of a server, or none.
pub(crate) type MaybeReplication = Option<Arc<dyn Replication>>;
