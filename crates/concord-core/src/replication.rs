//! The seam to other server processes that serve the same documents (defined here, with no
//! I/O, so that a backend crate such as `concord-redis` implements it without depending on the
//! server).
//!
//! A [`Replication`] (set in the server's `Config::replication`) is told when a document's room
//! opens and closes in this process ([`Replication::follow`], [`Replication::unfollow`]) and
//! is handed what each room applies from its own clients ([`Replication::publish`]): the
//! document updates it stores and relays, and the awareness changes it relays. What another
//! process publishes comes back through the [`Inlet`] given to `follow`, and enters the room
//! the way a peer's message does: validated, applied, relayed to every local connection. It is
//! never published again (so nothing echoes between processes) and never stored by this
//! process: the process whose client sent it stored it, in the store the processes share.

use std::sync::Arc;

use bytes::Bytes;

use crate::{DocName, ProtocolError, RoomFault, Seq};

/// Links this process's rooms to other processes serving the same documents.
///
/// Every method is called with a room's or the registry's lock held, in the order the room
/// applied what it reports: an implementation must not block or call back into the server from
/// them. Queue the work (a bounded channel to a task of its own, with a written overflow
/// policy) and return.
pub trait Replication: Send + Sync + 'static {
    /// A room for `doc` is open in this process: from now on, give what other processes
    /// publish for `doc` to `inlet`. For one document, `follow` and [`Replication::unfollow`]
    /// alternate, starting with `follow`.
    ///
    /// The room was loaded from the store just before this call: what other processes stored
    /// before that load is in it (everything up to log entry `loaded`, the last one the load
    /// read or the one its snapshot covers), what they publish after it must reach the inlet (a
    /// log-based implementation reads the entries after `loaded`). Delivering an update twice
    /// is harmless: applying a Yjs update again changes nothing.
    fn follow(&self, doc: &DocName, inlet: Inlet, loaded: Seq);

    /// The room for `doc` closed (unloaded, deleted, or discarded after an internal error):
    /// stop delivering to the inlet given to `follow` (it would refuse with
    /// [`InletError::Closed`] anyway).
    fn unfollow(&self, doc: &DocName);

    /// The room for `doc` applied `event` from one of this process's clients (a WebSocket
    /// connection, an HTTP request). Events of one document come in the order the room
    /// applied them.
    fn publish(&self, doc: &DocName, event: Published);

    /// `doc` was deleted through this process (its stored data is gone): tell the other
    /// processes, whose rooms of it must close (see [`Inlet::deleted`]). Nothing by default.
    fn deleted(&self, doc: &DocName) {
        let _ = doc;
    }
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
    /// An application message (a Hocuspocus stateless message, UTF-8) for the document's
    /// connections that take them, in every process. Not stored; at most once.
    Stateless(Bytes),
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

/// What an [`Inlet`] delivers to: implemented by the server for its rooms, and by tests.
pub trait InletTarget: Send + Sync {
    /// See [`Inlet::stored`].
    fn stored(&self, seq: Seq, updates: Vec<Vec<u8>>) -> Result<(), InletError>;
    /// See [`Inlet::update`].
    fn update(&self, update: &[u8]) -> Result<(), InletError>;
    /// See [`Inlet::awareness`].
    fn awareness(&self, update: &[u8]) -> Result<(), InletError>;
    /// See [`Inlet::stateless`]. By default application messages are not taken.
    fn stateless(&self, payload: &str) {
        let _ = payload;
    }
    /// See [`Inlet::is_closed`].
    fn is_closed(&self) -> bool;
    /// See [`Inlet::local_awareness`]. None by default.
    fn local_awareness(&self) -> Option<Vec<u8>> {
        None
    }
    /// See [`Inlet::deleted`]. Nothing by default.
    fn deleted(&self) {}
    /// See [`Inlet::relay`]. Applies the update by default.
    fn relay(&self, update: &[u8]) -> Result<(), InletError> {
        self.update(update)
    }
}

/// Where another process's updates and awareness enter one room of this process. Cheap to
/// clone; it does not keep the room loaded.
#[derive(Clone)]
pub struct Inlet {
    target: Arc<dyn InletTarget>,
}

impl std::fmt::Debug for Inlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inlet")
            .field("open", &!self.is_closed())
            .finish()
    }
}

impl Inlet {
    /// An inlet that delivers to `target`.
    pub fn new(target: Arc<dyn InletTarget>) -> Inlet {
        Inlet { target }
    }

    /// Applies the updates of log entry `seq` that another process stored in the shared store,
    /// relays them to every connection of the room here, and publishes them on this process's
    /// change feed at their positions (`seq.0`, `seq.1`, ...), so SSE streams, polls and
    /// change streams here see them at the same positions as everywhere else. Entries must
    /// come in seq order, each once.
    pub fn stored(&self, seq: Seq, updates: Vec<Vec<u8>>) -> Result<(), InletError> {
        self.target.stored(seq, updates)
    }

    /// Applies a Yjs v1 update another process published ([`Published::Update`]) and relays
    /// it to every connection of the room here. Validated like a client's update; applying it
    /// runs yrs on the calling thread (call it from a task that may block for the time a large
    /// update takes to merge).
    pub fn update(&self, update: &[u8]) -> Result<(), InletError> {
        self.target.update(update)
    }

    /// Another process deleted the document: the room here closes its connections (as for a
    /// local delete) and is unloaded, so the next connection starts from what the store holds.
    pub fn deleted(&self) {
        self.target.deleted();
    }

    /// Relays a Yjs v1 update another process applied but may not have stored yet to every
    /// connection of the room here, validated but without applying it to the room: the room
    /// gets it from the shared store (through [`Inlet::stored`]) once it is durable. So a
    /// client here sees it at once, and yet the room never holds an update no store has: a
    /// client that sends it again (its own, unacknowledged, after its node died) finds the room
    /// without it, and it is stored then.
    pub fn relay(&self, update: &[u8]) -> Result<(), InletError> {
        self.target.relay(update)
    }

    /// Delivers an application message another process published ([`Published::Stateless`])
    /// to the connections of the room here that take them. A payload that is not UTF-8 is
    /// dropped.
    pub fn stateless(&self, payload: &[u8]) {
        if let Ok(payload) = std::str::from_utf8(payload) {
            self.target.stateless(payload);
        }
    }

    /// Applies an awareness update another process published ([`Published::Awareness`]) and
    /// relays it to every connection of the room here.
    pub fn awareness(&self, update: &[u8]) -> Result<(), InletError> {
        self.target.awareness(update)
    }

    /// Whether the room has closed (every event is then refused with [`InletError::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.target.is_closed()
    }

    /// The awareness states of this process's own clients in the room (not those other
    /// processes published), as one awareness update; `None` when there are none or the room
    /// closed. For answering another process that just loaded the document and asks who is
    /// there.
    pub fn local_awareness(&self) -> Option<Vec<u8>> {
        self.target.local_awareness()
    }
}
