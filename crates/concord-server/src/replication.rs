//! The seam to other server processes that serve the same documents: the trait and types
//! are in `concord_core::replication` (re-exported by this crate); here is how a room takes
//! what arrives through an [`Inlet`].
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

use concord_core::replication::InletTarget;
pub use concord_core::replication::{Inlet, InletError, Published, Replication};
use concord_core::{DocName, Inbound, RoomFault, Seq, decode_frame};
use yrs::sync::{Message, SyncMessage};

use crate::durability::feed::Feed;
use yrs::updates::encoder::Encode;

/// The inlet of one live room.
pub(crate) struct RoomInlet {
    room: Weak<dyn RemoteInput>,
    doc: DocName,
    feed: Feed,
    /// Closes and unloads the room (the registry's part of [`Inlet::deleted`]).
    on_deleted: Box<dyn Fn() + Send + Sync>,
}

impl RoomInlet {
    pub(crate) fn inlet(
        room: Weak<dyn RemoteInput>,
        doc: DocName,
        feed: Feed,
        on_deleted: Box<dyn Fn() + Send + Sync>,
    ) -> Inlet {
        Inlet::new(Arc::new(RoomInlet {
            room,
            doc,
            feed,
            on_deleted,
        }))
    }

    fn apply(&self, frame: &[u8]) -> Result<(), InletError> {
        let room = self.room.upgrade().ok_or(InletError::Closed)?;
        let inbound = decode_frame(frame)?;
        room.receive_remote(inbound)?;
        Ok(())
    }
}

impl InletTarget for RoomInlet {
    fn stored(&self, seq: Seq, updates: Vec<Vec<u8>>) -> Result<(), InletError> {
        for update in &updates {
            self.update(update)?;
        }
        if self.feed.has_subscribers() {
            self.feed.publish(&self.doc, seq, updates);
        }
        Ok(())
    }

    fn update(&self, update: &[u8]) -> Result<(), InletError> {
        let frame = Message::Sync(SyncMessage::Update(update.to_vec())).encode_v1();
        self.apply(&frame)
    }

    fn awareness(&self, update: &[u8]) -> Result<(), InletError> {
        let mut frame = Vec::with_capacity(update.len() + 6);
        frame.push(yrs::sync::protocol::MSG_AWARENESS);
        yrs::encoding::write::Write::write_buf(&mut frame, update);
        self.apply(&frame)
    }

    fn is_closed(&self) -> bool {
        self.room.strong_count() == 0
    }

    fn local_awareness(&self) -> Option<Vec<u8>> {
        self.room.upgrade()?.local_awareness()
    }

    fn deleted(&self) {
        (self.on_deleted)();
    }

    fn stateless(&self, payload: &str) {
        if let Some(room) = self.room.upgrade() {
            room.stateless_remote(payload);
        }
    }

    fn relay(&self, update: &[u8]) -> Result<(), InletError> {
        concord_core::validate::validate_update_v1(update)
            .map_err(|e| InletError::Malformed(e.into()))?;
        let room = self.room.upgrade().ok_or(InletError::Closed)?;
        room.relay_remote(update);
        Ok(())
    }
}

/// A room as the inlet sees it: implemented by the live room.
pub(crate) trait RemoteInput: Send + Sync {
    /// Applies messages another process published: relayed to every local connection, never
    /// stored here, never published again.
    fn receive_remote(&self, inbound: Vec<Inbound>) -> Result<(), RoomFault>;

    /// The awareness states of this process's own connections, as one awareness update.
    fn local_awareness(&self) -> Option<Vec<u8>>;

    /// Sends a validated update to every connection, without applying it.
    fn relay_remote(&self, update: &[u8]);

    /// Sends an application message to every connection that takes them, without publishing
    /// it again.
    fn stateless_remote(&self, payload: &str);
}

/// The replication of a server, or none.
pub(crate) type MaybeReplication = Option<Arc<dyn Replication>>;
