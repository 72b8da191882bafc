//! A loaded room: the engine ([`concord_core::Room`]) behind a short lock, the peers its frames
//! go to, and its link to other processes ([`crate::replication`]).
//!
//! Locking: the room's `std::sync::Mutex` is held while yrs applies a message and its frames
//! are queued, never across an `.await`. The frames are written to the sockets that can take
//! them at once after the lock is released ([`Locked`]). Rooms never wait for one another.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use concord_core::{
    Access, ConnId, DocName, Effects, Inbound, Recipients, Room, RoomFault, SnapshotDraft,
    awareness_payload, is_awareness_frame,
};

use crate::durability::LiveDocument;
use crate::replication::{MaybeReplication, Published, RemoteInput};
use crate::rooms::fanout::{Peers, QueueLimits};
use crate::rooms::peer::{CloseReason, Peer, Turn};

/// The connection id a message that comes from no connection acts as (an HTTP request,
/// another process). Never given to a real connection, so the frames meant for "the sender"
/// of such a message go to nobody.
const DETACHED: ConnId = ConnId::MAX - 1;

/// Where a message applied to a room comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A connection that joined the room.
    Conn(ConnId),
    /// A one-off writer that is gone right after (an HTTP request) with this access. The
    /// awareness states it sets stay until they expire or their client removes them.
    Detached(Access),
}

/// What applying messages to a room produced besides the frames it delivered.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Document changes to store, in the order the room applied them.
    pub(crate) persist: Vec<Vec<u8>>,
    /// Why the messages could not all be handled.
    pub(crate) fault: Option<RoomFault>,
}

/// A loaded room.
pub(crate) struct LiveRoom {
    name: DocName,
    limits: QueueLimits,
    state: Mutex<RoomState>,
    /// Held by the ingest path from applying a frame until its changes (and any save barrier)
    /// are queued for storage, so that a room's changes enter the persistence queue in the
    /// order the room applied them (see `ingest.rs`).
    order: tokio::sync::Mutex<()>,
    replication: MaybeReplication,
}

struct RoomState {
    room: Room,
    peers: HashMap<ConnId, Peer>,
}

/// A room's state, locked. The writing turns its fan-out took are written through when it is
/// dropped, after the lock is released: socket writes never hold up the room.
struct Locked<'a> {
    /// `None` only while it is dropped.
    state: Option<MutexGuard<'a, RoomState>>,
    turns: Vec<Turn>,
}

impl Locked<'_> {
    fn peers<'a>(&'a mut self, limits: &'a QueueLimits) -> Peers<'a> {
        let state = &mut **self.state.as_mut().expect("held until dropped");
        Peers {
            room: &mut state.room,
            peers: &mut state.peers,
            limits,
            turns: &mut self.turns,
        }
    }
}

impl Deref for Locked<'_> {
    type Target = RoomState;

    fn deref(&self) -> &RoomState {
        self.state.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut RoomState {
        self.state.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        drop(self.state.take());
        for turn in self.turns.drain(..) {
            turn.write();
        }
    }
}

impl LiveRoom {
    pub(crate) fn new(
        name: DocName,
        room: Room,
        limits: QueueLimits,
        replication: MaybeReplication,
    ) -> LiveRoom {
        LiveRoom {
            name,
            limits,
            state: Mutex::new(RoomState {
                room,
                peers: HashMap::new(),
            }),
            order: tokio::sync::Mutex::new(()),
            replication,
        }
    }

    fn lock(&self) -> Locked<'_> {
        // A panic inside yrs is caught by the engine (which marks the room poisoned), so a
        // poisoned mutex can only come from a bug in the fan-out code; the state it guards is
        // then still structurally valid, and the room is discarded through `is_poisoned`.
        Locked {
            state: Some(self.state.lock().unwrap_or_else(|e| e.into_inner())),
            turns: Vec::new(),
        }
    }

    pub(crate) fn name(&self) -> &DocName {
        &self.name
    }

    /// The room's ordering lock: see the `order` field.
    pub(crate) async fn order(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.order.lock().await
    }

    /// Adds a peer and queues its first frames (SyncStep1 and awareness states). The peer
    /// leaves when the returned membership is dropped, also while a panic unwinds.
    pub(crate) fn join(self: &Arc<Self>, conn: ConnId, access: Access, peer: Peer) -> Membership {
        let mut state = self.lock();
        let frames = state.room.join(conn, access);
        state.peers.insert(conn, peer);
        state.peers(&self.limits).deliver_join(conn, &frames);
        Membership {
            room: self.clone(),
            conn,
        }
    }

    /// Applies decoded messages from `origin`, delivers the frames they produce, publishes
    /// what they changed to other processes, and returns what to store. A room poisoned by a
    /// panic inside yrs closes every peer.
    pub(crate) fn receive(&self, origin: Origin, inbound: Vec<Inbound>) -> Applied {
        self.apply(origin, inbound, true)
    }

    fn apply(&self, origin: Origin, inbound: Vec<Inbound>, publish: bool) -> Applied {
        let mut state = self.lock();
        let conn = match origin {
            Origin::Conn(conn) => conn,
            Origin::Detached(access) => {
                // No peer has this id, so the frames of joining are queued for nobody.
                state.room.join(DETACHED, access);
                DETACHED
            }
        };
        let mut effects = state.room.receive(conn, inbound);
        if matches!(origin, Origin::Detached(_)) {
            state.room.detach(DETACHED);
        }
        let applied = Applied {
            persist: std::mem::take(&mut effects.persist),
            fault: effects.fault.take(),
        };
        if publish {
            self.publish(&applied.persist, &effects);
        }
        state.peers(&self.limits).deliver(conn, &effects);
        if matches!(applied.fault, Some(RoomFault::Poisoned)) {
            for peer in state.peers.values() {
                peer.closer().close(CloseReason::RoomFailed);
            }
        }
        applied
    }

    /// Hands what a local client changed to the replication, if there is one.
    fn publish(&self, persist: &[Vec<u8>], effects: &Effects) {
        let Some(replication) = &self.replication else {
            return;
        };
        for update in persist {
            replication.publish(&self.name, Published::Update(Bytes::from(update.clone())));
        }
        for out in &effects.send {
            // Awareness for the sender alone answers its query; what others get is a change.
            if out.to != Recipients::Sender
                && is_awareness_frame(&out.frame)
                && let Some(payload) = awareness_payload(&out.frame)
            {
                replication.publish(
                    &self.name,
                    Published::Awareness(Bytes::copy_from_slice(payload)),
                );
            }
        }
    }

    /// The document's state as one v1 update: what `sv` lacks.
    pub(crate) fn encode_state(&self, sv: &yrs::StateVector) -> Vec<u8> {
        use yrs::{ReadTxn, Transact};
        self.lock()
            .room
            .doc()
            .transact()
            .encode_state_as_update_v1(sv)
    }

    /// The document's state vector, Yjs v1.
    pub(crate) fn state_vector(&self) -> Vec<u8> {
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, Transact};
        self.lock().room.doc().transact().state_vector().encode_v1()
    }

    /// Whether applying `update` would change the document.
    pub(crate) fn would_change(&self, update: &yrs::Update) -> bool {
        self.lock().room.would_change(update)
    }

    /// Queues an application message (a Hocuspocus Stateless message, `payload`) for the
    /// room's connections among `to` that speak such messages; returns how many here it was
    /// queued for. Unless it is for one connection, it is also published to other processes,
    /// whose rooms deliver it to all of theirs.
    pub(crate) fn send_stateless(&self, payload: &str, to: crate::rooms::Recipients) -> usize {
        if let Some(replication) = &self.replication
            && !matches!(to, crate::rooms::Recipients::Only(_))
        {
            replication.publish(
                &self.name,
                Published::Stateless(Bytes::copy_from_slice(payload.as_bytes())),
            );
        }
        self.deliver_stateless(payload, to)
    }

    fn deliver_stateless(&self, payload: &str, to: crate::rooms::Recipients) -> usize {
        let frame = Bytes::from(concord_core::hocuspocus::stateless(payload));
        let mut state = self.lock();
        state.peers(&self.limits).deliver_stateless(&frame, to)
    }

    /// Every awareness state of the room, as one awareness update payload.
    pub(crate) fn awareness_update(&self) -> Option<Vec<u8>> {
        self.lock().room.awareness_update()
    }

    /// Closes every connection of the room.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        for peer in self.lock().peers.values() {
            peer.closer().close(reason.clone());
        }
    }

    /// Removes a peer and tells the others (and other processes) its awareness states are
    /// gone.
    fn leave(&self, conn: ConnId) {
        let mut state = self.lock();
        state.peers.remove(&conn);
        let effects = state.room.leave(conn);
        self.publish(&[], &effects);
        state.peers(&self.limits).deliver(conn, &effects);
    }

    /// Expires stale awareness states and broadcasts their removal. Not published: every
    /// process expires the states it holds on its own clock.
    pub(crate) fn expire_awareness(&self, timeout: Duration) {
        let mut state = self.lock();
        let effects = state.room.expire_awareness(timeout);
        // No connection caused this: `ConnId::MAX` is never assigned, so "Everyone" is everyone.
        state.peers(&self.limits).deliver(ConnId::MAX, &effects);
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.lock().peers.len()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.lock().room.is_poisoned()
    }
}

impl LiveDocument for LiveRoom {
    /// The document's snapshot draft (finished off the room's lock by the compactor), unless
    /// the room is poisoned or yrs cannot encode it. The room's stored size restarts from the
    /// snapshot's: compaction replaces the log with it.
    fn draft_snapshot(&self) -> Option<SnapshotDraft> {
        let mut state = self.lock();
        if state.room.is_poisoned() {
            return None;
        }
        let draft = state.room.draft_snapshot().ok()?;
        state.room.set_document_bytes(draft.size_bound());
        Some(draft)
    }
}

impl RemoteInput for LiveRoom {
    fn receive_remote(&self, inbound: Vec<Inbound>) -> Result<(), RoomFault> {
        // Not stored here (the publishing process stored it) and not published again.
        let applied = self.apply(Origin::Detached(Access::ReadWrite), inbound, false);
        match applied.fault {
            Some(fault) => Err(fault),
            None => Ok(()),
        }
    }

    fn local_awareness(&self) -> Option<Vec<u8>> {
        self.lock().room.owned_awareness_update()
    }

    fn stateless_remote(&self, payload: &str) {
        self.deliver_stateless(payload, crate::rooms::Recipients::All);
    }

    fn relay_remote(&self, update: &[u8]) {
        use yrs::sync::{Message, SyncMessage};
        use yrs::updates::encoder::Encode;
        let frame = Message::Sync(SyncMessage::Update(update.to_vec())).encode_v1();
        let effects = Effects {
            send: vec![concord_core::Outgoing {
                to: Recipients::Everyone,
                frame: Bytes::from(frame),
            }],
            ..Effects::default()
        };
        let mut state = self.lock();
        state.peers(&self.limits).deliver(DETACHED, &effects);
    }
}

/// A connection's place in a room; dropping it (also while unwinding from a panic) takes the
/// connection out, so that its peer entry and awareness states never outlive it.
pub(crate) struct Membership {
    room: Arc<LiveRoom>,
    conn: ConnId,
}

impl Membership {
    /// The room this is a place in.
    pub(crate) fn room(&self) -> &Arc<LiveRoom> {
        &self.room
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.room.leave(self.conn);
    }
}
