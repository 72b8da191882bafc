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
use crate::webhooks::Webhooks;

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
    /// Told of every deletion before the store forgets the document.
    webhooks: Option<Webhooks>,
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

/// Why [`Ingest::apply_request`] did not apply and store everything.
#[derive(Debug)]
pub(crate) enum NotApplied {
    /// The room refused a message (nothing after it was applied).
    Refused(Refused),
    /// Applied, but the store did not take it: send it again.
    NotStored,
}

impl Ingest {
    pub(crate) fn new(
        rooms: Arc<Rooms>,
        persister: Persister,
        store: Arc<dyn Store>,
        counters: Arc<Counters>,
        webhooks: Option<Webhooks>,
    ) -> Ingest {
        Ingest {
            rooms,
            persister,
            store,
            counters,
            webhooks,
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

    /// Applies `inbound` to `room` as a request with `access` (an HTTP write, a restore) and
    /// waits until what it changed is stored.
    pub(crate) async fn apply_request(
        &self,
        room: &Arc<LiveRoom>,
        access: Access,
        inbound: Vec<Inbound>,
    ) -> Result<(), NotApplied> {
        let outcome = self.receive(room, Source::Request(access), inbound).await;
        if let Some(refused) = outcome.refused {
            return Err(NotApplied::Refused(refused));
        }
        let stored = match outcome.stored {
            Some(durable) => durable.wait().await,
            None => true,
        };
        if stored {
            Ok(())
        } else {
            Err(NotApplied::NotStored)
        }
    }

    /// Waits until every update applied so far (to any room) is stored, or failed to be.
    pub(crate) async fn stored_so_far(&self) {
        self.persister.barrier().await;
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
        // The event is in the outbox before the document is gone: a crash in between announces
        // a deletion that did not happen (the document is still there, and its next edits are
        // announced too) rather than lose one that did.
        if let Some(webhooks) = &self.webhooks {
            webhooks.deleted(name).await?;
        }
        self.store.delete(name).await?;
        self.rooms.announce_deleted(name);
        tracing::info!(doc = %name, "document deleted");
        Ok(true)
    }
}

/// Whether `block_in_place` may be used here (it panics on a current-thread runtime).
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::rooms::{Closer, Peer, next_conn_id};
    use crate::state::AppState;
    use crate::testing::GatedStore;
    use concord_core::decode_frame;
    use futures_util::FutureExt;
    use tokio_util::sync::CancellationToken;
    use yrs::updates::encoder::Encode;
    use yrs::{Text, Transact};

    fn doc(name: &str) -> DocName {
        DocName::new(name).unwrap()
    }

    fn update(text: &str) -> Vec<Inbound> {
        let doc = yrs::Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        let frame =
            yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(txn.encode_update_v1()))
                .encode_v1();
        decode_frame(&frame).unwrap()
    }

    fn save(id: u64) -> Vec<Inbound> {
        decode_frame(&concord_core::encode_saved(id)).unwrap()
    }

    #[tokio::test]
    async fn a_save_ticket_resolves_only_once_what_the_room_applied_before_it_is_stored() {
        let store = GatedStore::new(false, true);
        let state = AppState::start(Config::default(), store.clone(), CancellationToken::new()).0;
        let name = doc("ordered");
        let guard = state.rooms.open(&name).await.unwrap();
        let room = guard.room();
        let (a, b) = (next_conn_id(), next_conn_id());
        // Each peer keeps its outbox: a peer whose queue is gone is dropped from the room.
        let (peer_a, _out_a) = Peer::new(16, Closer::default(), false);
        let (peer_b, _out_b) = Peer::new(16, Closer::default(), false);
        let _ma = room.join(a, Access::ReadWrite, peer_a);
        let _mb = room.join(b, Access::ReadWrite, peer_b);

        // A's update is queued; the store holds its append at the gate.
        let outcome = state
            .ingest
            .receive(room, Source::Conn(a), update("u1"))
            .await;
        assert!(outcome.refused.is_none() && outcome.saves.is_empty());
        // B asks for a save after A's update was applied: it covers A's update too.
        let mut outcome = state.ingest.receive(room, Source::Conn(b), save(7)).await;
        let ticket = outcome.saves.pop().unwrap();
        assert_eq!(ticket.id, 7);
        let mut durable = Box::pin(ticket.durable.wait());
        assert!(
            (&mut durable).now_or_never().is_none(),
            "not durable while the update before it is not stored"
        );
        store.allow_appends(usize::MAX >> 4);
        assert!(durable.await);
        assert_eq!(
            store.inner.update_count(&name),
            1,
            "stored when acknowledged"
        );
    }

    #[tokio::test]
    async fn a_request_gets_a_ticket_for_what_it_applied() {
        let store = GatedStore::new(false, false);
        let state = AppState::start(Config::default(), store.clone(), CancellationToken::new()).0;
        let name = doc("request");
        let guard = state.rooms.open(&name).await.unwrap();
        let outcome = state
            .ingest
            .receive(
                guard.room(),
                Source::Request(Access::ReadWrite),
                update("hi"),
            )
            .await;
        assert!(outcome.refused.is_none());
        assert!(outcome.stored.unwrap().wait().await);
        assert_eq!(store.inner.update_count(&name), 1);
    }

    #[tokio::test]
    async fn refusals_are_typed_counted_and_apply_nothing() {
        let store = GatedStore::new(false, false);
        let config = Config {
            max_document_bytes: Some(8),
            max_awareness_state_bytes: 4,
            ..Config::default()
        };
        let state = AppState::start(config, store.clone(), CancellationToken::new()).0;
        let name = doc("limits");
        let guard = state.rooms.open(&name).await.unwrap();
        let room = guard.room();
        let conn = next_conn_id();
        let (peer, _outbox) = Peer::new(16, Closer::default(), false);
        let _member = room.join(conn, Access::ReadWrite, peer);

        let outcome = state
            .ingest
            .receive(room, Source::Conn(conn), update(&"x".repeat(64)))
            .await;
        let refused = outcome.refused.unwrap();
        assert!(
            matches!(refused, Refused::DocumentTooLarge(_)),
            "{refused:?}"
        );
        assert!(matches!(
            refused.close_reason(),
            CloseReason::DocumentTooLarge(_)
        ));

        let mut awareness = vec![1u8];
        {
            use yrs::encoding::write::Write;
            let mut update = Vec::new();
            update.write_var(1u32); // one entry
            update.write_var(42u64); // client id
            update.write_var(1u32); // clock
            update.write_string(r#"{"name":"far too long"}"#);
            awareness.write_buf(&update);
        }
        let outcome = state
            .ingest
            .receive(room, Source::Conn(conn), decode_frame(&awareness).unwrap())
            .await;
        assert!(matches!(
            outcome.refused,
            Some(Refused::AwarenessTooLarge(_))
        ));
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read(&state.counters.documents_too_large), 1);
        assert_eq!(read(&state.counters.awareness_too_large), 1);
        assert!(room.awareness_update().is_none(), "no state was set");
        // Nothing reached the store either: a barrier behind everything passes with it empty.
        let outcome = state
            .ingest
            .receive(room, Source::Request(Access::ReadWrite), Vec::new())
            .await;
        assert!(outcome.stored.unwrap().wait().await);
        assert_eq!(store.inner.update_count(&name), 0);
    }

    #[tokio::test]
    async fn delete_closes_the_rooms_connections_and_stores_nothing_after_it() {
        let store = GatedStore::new(false, false);
        let state = AppState::start(Config::default(), store.clone(), CancellationToken::new()).0;
        let name = doc("doomed");
        assert!(
            !state.ingest.delete(&name).await.unwrap(),
            "nothing to delete"
        );
        let guard = state.rooms.open(&name).await.unwrap();
        let closer = Closer::default();
        let (peer, _outbox) = Peer::new(16, closer.clone(), false);
        let _member = guard.room().join(next_conn_id(), Access::ReadWrite, peer);
        let outcome = state
            .ingest
            .receive(
                guard.room(),
                Source::Request(Access::ReadWrite),
                update("bye"),
            )
            .await;
        assert!(outcome.stored.unwrap().wait().await);
        assert!(state.ingest.delete(&name).await.unwrap());
        assert_eq!(closer.reason(), Some(CloseReason::DocumentDeleted));
        assert!(!state.rooms.is_loaded(&name));
        assert!(Store::list(store.as_ref()).await.unwrap().is_empty());
        assert!(!state.ingest.delete(&name).await.unwrap(), "gone");
    }
}
