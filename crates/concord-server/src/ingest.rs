//! The one write path. Every edge (a WebSocket connection, an HTTP request, and any later
//! protocol) hands the messages it decoded to [`Ingest::receive`], which takes the room's
//! ordering lock, applies them, queues the changes for durable storage, queues a barrier for
//! each save request, and returns an [`Outcome`]. The edge only turns the outcome into its own
//! answer (a close code, an HTTP status); it holds no persistence or barrier code.
//!
//! **Invariant: a save ticket only resolves once what it covers is stored.** Under the
//! room's ordering lock, the room's changes are queued for storage in the order the room
//! applied them, and a save request's barrier is queued behind them. Without the lock, a save
//! request could be queued ahead of changes another connection applied earlier (and that the
//! requester's sync relied on), and be acknowledged before they are stored.
//!
//! Deleting a document is a write too ([`Ingest::delete`]): its queued updates are stored
//! before it is removed, or they would bring it back.

use std::sync::Arc;

use concord_core::{Access, ConnId, DocName, Inbound, RoomFault, Store, StoreError};

use crate::durability::{Barrier, Persister, is_stored};
use crate::ops::stats::Counters;
use crate::rooms::{CloseReason, LiveRoom, Origin, Rooms};

/// Inbound update bytes from which a message is applied inside `block_in_place`: merging a
/// large update can take tens of milliseconds.
const BLOCKING_UPDATE_BYTES: usize = 256 * 1024;

/// The write path; cheap to clone.
#[derive(Clone)]
pub(crate) struct Ingest {
    rooms: Arc<Rooms>,
    persister: Persister,
    store: Arc<dyn Store>,
    counters: Arc<Counters>,
}

/// Who sent the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A connection that joined the room; it gets a [`SaveTicket`] per save request.
    Conn(ConnId),
    /// A one-off writer with this access (an HTTP request); its outcome always carries a
    /// ticket for everything it applied ([`Outcome::stored`]).
    Request(Access),
}

/// Why messages were refused part-way. What the room had applied before stays applied (and
/// stored, and relayed), so that every replica agrees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// yrs refused an update while integrating it.
    #[error("{0}")]
    UpdateRejected(String),
    /// An update would have grown the document past its size limit; it was not applied.
    #[error("{0}")]
    DocumentTooLarge(String),
    /// An awareness state is over its size limit; it was not applied.
    #[error("{0}")]
    AwarenessTooLarge(String),
    /// yrs panicked: the room was discarded (it reloads from the store next time), and every
    /// connection of it closed.
    #[error("internal error in this document")]
    RoomPoisoned,
}

impl Refused {
    /// How a connection that sent it is closed.
    pub(crate) fn close_reason(&self) -> CloseReason {
        match self {
            Refused::UpdateRejected(why) => CloseReason::Malformed(why.clone()),
            Refused::DocumentTooLarge(why) => CloseReason::DocumentTooLarge(why.clone()),
            Refused::AwarenessTooLarge(why) => CloseReason::AwarenessTooLarge(why.clone()),
            Refused::RoomPoisoned => CloseReason::RoomFailed,
        }
    }
}

/// Resolves once every change queued before it is stored.
pub(crate) struct Durable(Barrier);

impl Durable {
    /// True once stored; false when some of it could not be (the store kept failing, or the
    /// server stopped): nothing may then claim it is durable.
    pub(crate) async fn wait(self) -> bool {
        self.0.wait().await
    }
}

/// A save request and what answers it.
pub(crate) struct SaveTicket {
    /// The id the client gave the request.
    pub(crate) id: u64,
    /// Resolves once everything the connection sent before the request is stored.
    pub(crate) durable: Durable,
}

/// What became of one call to [`Ingest::receive`].
pub(crate) struct Outcome {
    /// The save requests among the messages, in order.
    pub(crate) saves: Vec<SaveTicket>,
    /// For [`Source::Request`]: resolves once what the request applied is stored.
    pub(crate) stored: Option<Durable>,
    /// Set when the messages could not all be applied.
    pub(crate) refused: Option<Refused>,
}

impl Ingest {
    pub(crate) fn new(
        rooms: Arc<Rooms>,
        persister: Persister,
        store: Arc<dyn Store>,
        counters: Arc<Counters>,
    ) -> Ingest {
        Ingest {
            rooms,
            persister,
            store,
            counters,
        }
    }

    /// Applies `inbound` from `source` to `room`: see the module documentation.
    pub(crate) async fn receive(
        &self,
        room: &Arc<LiveRoom>,
        source: Source,
        inbound: Vec<Inbound>,
    ) -> Outcome {
        let mut update_bytes = 0;
        let mut save_ids = Vec::new();
        for message in &inbound {
            match message {
                Inbound::Update(_, raw) => {
                    Counters::bump(&self.counters.updates_in);
                    Counters::add(&self.counters.update_bytes_in, raw.len() as u64);
                    update_bytes += raw.len();
                }
                Inbound::SaveRequest(id) => save_ids.push(*id),
                _ => {}
            }
        }
        let origin = match source {
            Source::Conn(conn) => Origin::Conn(conn),
            Source::Request(access) => Origin::Detached(access),
        };

        let order = room.order().await;
        let applied = if update_bytes >= BLOCKING_UPDATE_BYTES && multi_threaded() {
            // Tell the runtime, so the other connections on this worker thread move to another
            // one meanwhile.
            tokio::task::block_in_place(|| room.receive(origin, inbound))
        } else {
            room.receive(origin, inbound)
        };
        if !applied.persist.is_empty() {
            self.persister.persist(room.name(), applied.persist).await;
        }
        let mut saves = Vec::with_capacity(save_ids.len());
        for id in save_ids {
            let durable = Durable(self.persister.queue_barrier().await);
            saves.push(SaveTicket { id, durable });
        }
        let stored = match source {
            Source::Request(_) => Some(Durable(self.persister.queue_barrier().await)),
            Source::Conn(_) => None,
        };
        drop(order);

        let refused = applied.fault.map(|fault| self.refused(room, fault));
        Outcome {
            saves,
            stored,
            refused,
        }
    }

    /// Counts a fault and, for a poisoned room, discards it.
    fn refused(&self, room: &Arc<LiveRoom>, fault: RoomFault) -> Refused {
        let counters = &self.counters;
        match fault {
            RoomFault::Poisoned => {
                Counters::bump(&counters.panics);
                tracing::error!(doc = %room.name(), "yrs panicked applying an update; room discarded");
                self.rooms.discard(room);
                Refused::RoomPoisoned
            }
            fault @ RoomFault::UpdateRejected(_) => {
                Counters::bump(&counters.malformed);
                Refused::UpdateRejected(fault.to_string())
            }
            fault @ RoomFault::DocumentTooLarge { .. } => {
                Counters::bump(&counters.documents_too_large);
                Refused::DocumentTooLarge(fault.to_string())
            }
            fault @ RoomFault::AwarenessTooLarge { .. } => {
                Counters::bump(&counters.awareness_too_large);
                Refused::AwarenessTooLarge(fault.to_string())
            }
        }
    }

    /// Deletes `name`: closes its connections, lets its queued updates be stored (they would
    /// bring it back otherwise), then removes it from the store. `Ok(false)` when there was
    /// nothing to delete (neither loaded nor stored).
    pub(crate) async fn delete(&self, name: &DocName) -> Result<bool, StoreError> {
        let room = self.rooms.remove(name);
        if room.is_none() && !is_stored(self.store.as_ref(), name).await? {
            return Ok(false);
        }
        if let Some(room) = &room {
            room.close_all(CloseReason::DocumentDeleted);
        }
        self.persister.barrier().await;
        self.store.delete(name).await?;
        tracing::info!(doc = %name, "document deleted");
        Ok(true)
    }
}

/// Whether `block_in_place` may be used here (it panics on a current-thread runtime).
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
