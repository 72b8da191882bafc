//! The room registry: opens rooms atomically (loading them from the store once, however many
//! connections arrive at the same moment), fans frames out to their connections, and unloads rooms
//! that stayed idle.
//!
//! Locking: the registry lock is taken only to join, leave and unload, never per message. Each
//! room has its own short `std::sync::Mutex`, held while yrs applies a message and its frames
//! are queued, never across an `.await`; rooms therefore proceed in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use concord_core::{
    Access, Clock, ConnId, DocName, Effects, Inbound, Recipients, Room, RoomFault, RoomLimits,
    SnapshotDraft, Store,
};
use futures_util::FutureExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::persist::Persister;

/// The connection id HTTP API requests act as (never given to a real connection).
const API_CONN: ConnId = ConnId::MAX - 1;

/// Message type of y-protocols awareness messages (the first byte of their frames; yrs's
/// `sync::protocol::MSG_AWARENESS`).
const MSG_AWARENESS: u8 = 1;
use crate::stats::Counters;

/// WebSocket close codes Concord sends, with the situations that produce them.
pub(crate) mod close_code {
    /// The server is shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// A text frame, or a message type Concord does not speak.
    pub(crate) const UNSUPPORTED: u16 = 1003;
    /// A malformed message or an update yrs refused.
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than the configured maximum.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The document could not be loaded, or the room failed and will be reloaded.
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
    /// The connection's outbound queue overflowed: the client was too slow; or too many
    /// documents are open.
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection's token expired.
    pub(crate) const TOKEN_EXPIRED: u16 = 4401;
    /// An update would have grown the document past its size limit.
    pub(crate) const DOCUMENT_TOO_LARGE: u16 = 4413;
    /// The document was deleted.
    pub(crate) const DOCUMENT_DELETED: u16 = 4404;
    /// The connection sent faster than its rate limits.
    pub(crate) const RATE_LIMITED: u16 = 4429;
}

/// Asks a connection to close, once, with an optional close frame. Shared by the connection's
/// reader and writer and by rooms that need to drop a peer.
#[derive(Clone, Default)]
pub(crate) struct Closer {
    token: CancellationToken,
    frame: Arc<OnceLock<Option<(u16, String)>>>,
}

impl Closer {
    /// Closes with a close frame; the first call wins.
    pub(crate) fn close(&self, code: u16, reason: impl Into<String>) {
        let _ = self.frame.set(Some((code, reason.into())));
        self.token.cancel();
    }

    /// Closes without a close frame (the peer is gone or already said goodbye).
    pub(crate) fn close_silently(&self) {
        let _ = self.frame.set(None);
        self.token.cancel();
    }

    pub(crate) async fn closed(&self) {
        self.token.cancelled().await;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The close frame to send, if any.
    pub(crate) fn frame(&self) -> Option<(u16, String)> {
        self.frame.get().cloned().flatten()
    }
}

/// A connection as a room sees it: where its frames go and how to close it.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) tx: mpsc::Sender<Bytes>,
    /// Bytes queued in `tx` and not yet written; the writer subtracts what it sends.
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    pub(crate) closer: Closer,
    /// Only awareness frames are queued for it: an SSE stream, which gets document changes
    /// from the change feed (with positions) instead.
    pub(crate) awareness_only: bool,
}

/// Limits applied when queueing frames to peers.
#[derive(Clone)]
pub(crate) struct QueueLimits {
    pub(crate) max_bytes: usize,
    /// Where skipped awareness frames are counted.
    pub(crate) counters: Arc<Counters>,
}

/// A loaded room: the engine plus the peers its frames go to.
pub(crate) struct LiveRoom {
    name: DocName,
    limits: QueueLimits,
    state: Mutex<RoomState>,
    /// Held from applying a frame until its changes (and any save barrier) are queued for
    /// storage, so that a room's changes enter the persistence queue in the order the room
    /// applied them. Without it, a save request could be queued ahead of changes another
    /// connection applied earlier (and that the requester's sync relied on), and be acknowledged
    /// before they are stored.
    persist_order: tokio::sync::Mutex<()>,
}

struct RoomState {
    room: Room,
    peers: HashMap<ConnId, Peer>,
}

impl LiveRoom {
    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic inside yrs is caught by the engine (which marks the room poisoned), so a
        // poisoned mutex can only come from a bug in the fan-out code below; the state it guards
        // is then still structurally valid, and the room is discarded through `is_poisoned`.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn name(&self) -> &DocName {
        &self.name
    }

    /// See the `persist_order` field.
    pub(crate) async fn persist_order(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.persist_order.lock().await
    }

    /// Adds a peer and queues its first frames (SyncStep1 and awareness states).
    pub(crate) fn join(&self, conn: ConnId, access: Access, peer: Peer) {
        let mut state = self.lock();
        let frames = state.room.join(conn, access);
        state.peers.insert(conn, peer);
        let mut dropped = Vec::new();
        for frame in frames {
            deliver_to(&mut state, conn, &frame, &self.limits, &mut dropped);
        }
        self.drop_peers(&mut state, dropped);
    }

    /// Applies decoded messages from `conn`, delivers the resulting frames and returns the
    /// updates to persist and the fault, if any.
    pub(crate) fn receive(
        &self,
        conn: ConnId,
        inbound: Vec<Inbound>,
    ) -> (Vec<Vec<u8>>, Option<RoomFault>) {
        let mut state = self.lock();
        let mut effects = state.room.receive(conn, inbound);
        let persist = std::mem::take(&mut effects.persist);
        let fault = effects.fault.take();
        self.deliver(&mut state, conn, effects);
        if matches!(fault, Some(RoomFault::Poisoned)) {
            for peer in state.peers.values() {
                peer.closer.close(
                    close_code::INTERNAL_ERROR,
                    "internal error in this document; reconnect",
                );
            }
        }
        (persist, fault)
    }

    /// Applies decoded messages sent through the HTTP API with `access`, as a connection of
    /// its own that is gone right after: the frames go to every peer, and awareness states it
    /// set stay (until they expire or their client removes them). Returns what to persist and
    /// the fault, like [`LiveRoom::receive`].
    pub(crate) fn receive_from_api(
        &self,
        access: Access,
        inbound: Vec<Inbound>,
    ) -> (Vec<Vec<u8>>, Option<RoomFault>) {
        let mut state = self.lock();
        // No peer has this id, so the frames of joining are queued for nobody.
        state.room.join(API_CONN, access);
        let mut effects = state.room.receive(API_CONN, inbound);
        state.room.detach(API_CONN);
        let persist = std::mem::take(&mut effects.persist);
        let fault = effects.fault.take();
        self.deliver(&mut state, API_CONN, effects);
        (persist, fault)
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

    /// Every awareness state of the room, as one awareness update payload.
    pub(crate) fn awareness_update(&self) -> Option<Vec<u8>> {
        self.lock().room.awareness_update()
    }

    /// Closes every connection of the room with `code`.
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        for peer in self.lock().peers.values() {
            peer.closer.close(code, reason);
        }
    }

    /// Removes a peer and tells the others its awareness states are gone.
    pub(crate) fn leave(&self, conn: ConnId) {
        let mut state = self.lock();
        state.peers.remove(&conn);
        let effects = state.room.leave(conn);
        self.deliver(&mut state, conn, effects);
    }

    /// Expires stale awareness states and broadcasts their removal.
    pub(crate) fn expire_awareness(&self, timeout: Duration) {
        let mut state = self.lock();
        let effects = state.room.expire_awareness(timeout);
        // No connection caused this: `ConnId::MAX` is never assigned, so "Everyone" is everyone.
        self.deliver(&mut state, ConnId::MAX, effects);
    }

    /// The document's snapshot draft (finish it off the room's lock), unless the room is
    /// poisoned or yrs cannot encode it. For compaction: the room's stored size restarts from
    /// the snapshot's.
    pub(crate) fn snapshot(&self) -> Option<SnapshotDraft> {
        let mut state = self.lock();
        if state.room.is_poisoned() {
            return None;
        }
        let draft = state.room.draft_snapshot().ok()?;
        state.room.set_document_bytes(draft.size_bound());
        Some(draft)
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.lock().peers.len()
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.lock().room.is_poisoned()
    }

    /// Delivers effects; peers whose queues overflow are closed, removed from the room, and
    /// their own awareness removals delivered in turn.
    fn deliver(&self, state: &mut RoomState, sender: ConnId, effects: Effects) {
        let mut dropped = Vec::new();
        for out in &effects.send {
            match out.to {
                Recipients::Sender => {
                    deliver_to(state, sender, &out.frame, &self.limits, &mut dropped);
                }
                Recipients::Others | Recipients::Everyone => {
                    let ids: Vec<ConnId> = state
                        .peers
                        .keys()
                        .copied()
                        .filter(|&id| out.to == Recipients::Everyone || id != sender)
                        .collect();
                    for id in ids {
                        deliver_to(state, id, &out.frame, &self.limits, &mut dropped);
                    }
                }
            }
        }
        self.drop_peers(state, dropped);
    }

    fn drop_peers(&self, state: &mut RoomState, mut dropped: Vec<ConnId>) {
        while let Some(id) = dropped.pop() {
            let effects = state.room.leave(id);
            for out in &effects.send {
                let ids: Vec<ConnId> = state.peers.keys().copied().collect();
                for other in ids {
                    deliver_to(state, other, &out.frame, &self.limits, &mut dropped);
                }
            }
        }
    }
}

/// Queues one frame for one peer. A peer whose queue is full (by frames or bytes) is closed with
/// 1013 and removed, never skipped: skipping would leave its document silently behind.
fn deliver_to(
    state: &mut RoomState,
    id: ConnId,
    frame: &Bytes,
    limits: &QueueLimits,
    dropped: &mut Vec<ConnId>,
) {
    let Some(peer) = state.peers.get(&id) else {
        return;
    };
    if peer.awareness_only && frame.first() != Some(&MSG_AWARENESS) {
        return;
    }
    // Awareness is soft state (clients renew theirs every 15 s and forget states not renewed
    // for 30 s): a peer that is behind is not sent more of it. A flood of presence from one
    // client would otherwise fill every other client's queue (delaying their document updates,
    // then getting them closed) before its sender is rate-limited. Document updates are never
    // skipped.
    if frame.first() == Some(&MSG_AWARENESS) && behind(peer, limits) {
        Counters::bump(&limits.counters.awareness_skipped);
        return;
    }
    // The byte bound applies to the backlog already queued, so one frame larger than the bound
    // (a big document's SyncStep2) still goes out behind a small backlog: memory per connection
    // stays under `max_bytes` plus one frame.
    let fits = peer.queued_bytes.load(Ordering::Relaxed) < limits.max_bytes;
    let sent = fits && {
        peer.queued_bytes.fetch_add(frame.len(), Ordering::Relaxed);
        match peer.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(_) => {
                peer.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
                false
            }
        }
    };
    if !sent {
        if let Some(peer) = state.peers.remove(&id) {
            if !peer.closer.is_closed() {
                tracing::warn!(conn = id, "outbound queue full; closing slow connection");
            }
            peer.closer.close(
                close_code::TRY_AGAIN_LATER,
                "outbound queue full: client too slow; reconnect to resync",
            );
            Counters::bump(&limits.counters.slow_consumers);
        }
        dropped.push(id);
    }
}

/// Frames queued for a peer past which it is sent no more awareness: a healthy connection's
/// queue is nearly empty, and each frame waiting delays the document updates behind it.
const AWARENESS_BACKLOG: usize = 64;

/// Whether `peer` is behind: more than [`AWARENESS_BACKLOG`] frames, or more than a quarter of
/// its byte bound, wait in its outbound queue.
fn behind(peer: &Peer, limits: &QueueLimits) -> bool {
    let frames_queued = peer.tx.max_capacity() - peer.tx.capacity();
    frames_queued > AWARENESS_BACKLOG
        || peer.queued_bytes.load(Ordering::Relaxed) > limits.max_bytes / 4
}

/// Why a room could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("loading the document from storage failed: {0}")]
    Store(#[from] concord_core::StoreError),
    #[error("loading the document from storage failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("the store panicked while loading the document")]
    StorePanicked,
    #[error("the stored snapshot does not decode: {0}")]
    Snapshot(String),
    #[error("{0} documents are open and none is idle")]
    TooManyRooms(usize),
}

impl OpenError {
    /// Whether the load panicked (counted in [`crate::Stats::panics`]).
    pub(crate) fn is_panic(&self) -> bool {
        match self {
            OpenError::Join(join) => join.is_panic(),
            OpenError::StorePanicked => true,
            _ => false,
        }
    }
}

struct Slot {
    cell: Arc<OnceCell<Arc<LiveRoom>>>,
    /// Connections holding this slot (loaded or still loading).
    refs: usize,
    /// Bumped whenever `refs` drops to zero, so only the latest idle timer may unload.
    idle_generation: u64,
    /// Since when `refs` is zero: which idle room was used least recently.
    idle_since: Option<std::time::Instant>,
}

/// Settings of the registry taken from [`crate::Config`].
pub(crate) struct RoomsConfig {
    pub(crate) idle_timeout: Duration,
    pub(crate) queue: QueueLimits,
    pub(crate) clock: Arc<dyn Clock>,
    /// Most rooms loaded (or loading) at once.
    pub(crate) max_rooms: usize,
    pub(crate) room_limits: RoomLimits,
    pub(crate) counters: Arc<Counters>,
}

/// All rooms of a server.
pub(crate) struct Rooms {
    slots: Mutex<HashMap<DocName, Slot>>,
    store: Arc<dyn Store>,
    persister: Persister,
    config: RoomsConfig,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// A connection's hold on a room; releasing it (on drop) may start the idle-unload timer.
pub(crate) struct RoomGuard {
    rooms: Arc<Rooms>,
    cell: Arc<OnceCell<Arc<LiveRoom>>>,
    room: Arc<LiveRoom>,
}

impl RoomGuard {
    pub(crate) fn room(&self) -> &Arc<LiveRoom> {
        &self.room
    }
}

impl Drop for RoomGuard {
    fn drop(&mut self) {
        self.rooms.release(self.room.name(), &self.cell);
    }
}

impl Rooms {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        persister: Persister,
        config: RoomsConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Rooms {
            slots: Mutex::new(HashMap::new()),
            store,
            persister,
            config,
            tracker,
            shutdown,
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<DocName, Slot>> {
        // Every critical section below is a handful of map operations that cannot panic halfway.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the room `name`, loading it if needed. Concurrent callers for the same name share
    /// one load and one room; none returns before the load finished.
    pub(crate) async fn open(self: &Arc<Self>, name: &DocName) -> Result<RoomGuard, OpenError> {
        let (cell, evicted) = {
            let mut slots = self.slots();
            let evicted = if slots.contains_key(name) || slots.len() < self.config.max_rooms {
                None
            } else {
                Some(
                    evict_least_recently_used(&mut slots)
                        .ok_or(OpenError::TooManyRooms(self.config.max_rooms))?,
                )
            };
            let slot = slots.entry(name.clone()).or_insert_with(|| Slot {
                cell: Arc::new(OnceCell::new()),
                refs: 0,
                idle_generation: 0,
                idle_since: None,
            });
            slot.refs += 1;
            slot.idle_since = None;
            (slot.cell.clone(), evicted)
        };
        if let Some((evicted, room)) = evicted {
            Counters::bump(&self.config.counters.rooms_evicted);
            tracing::info!(doc = %evicted, for_doc = %name, "unloaded the least recently used idle room to open another");
            self.persister.idle(&evicted, Some(room));
        }
        // Release our reference if this future is dropped or the load fails.
        let mut pending = PendingRef {
            rooms: self,
            name,
            cell: &cell,
            armed: true,
        };
        let room = cell.get_or_try_init(|| self.load(name)).await?.clone();
        pending.armed = false;
        drop(pending);
        Ok(RoomGuard {
            rooms: self.clone(),
            cell,
            room,
        })
    }

    async fn load(&self, name: &DocName) -> Result<Arc<LiveRoom>, OpenError> {
        // Updates of a previous incarnation of this room may still be queued: wait for them.
        if !self.persister.barrier().await {
            tracing::warn!(doc = %name, "some queued updates could not be stored before this load");
        }
        // A panicking store must not take the connection's task down with it: the load fails
        // (1011) and the next connection tries again.
        let stored = std::panic::AssertUnwindSafe(self.store.load(name))
            .catch_unwind()
            .await
            .map_err(|_| OpenError::StorePanicked)??;
        let clock = self.config.clock.clone();
        // Replaying a long log is blocking work: keep it off the async workers.
        let (room, skipped, stored_updates, corrupt) = tokio::task::spawn_blocking(move || {
            let (room, skipped) = Room::from_stored(clock, &stored)
                .map_err(|e| OpenError::Snapshot(e.to_string()))?;
            Ok::<_, OpenError>((room, skipped, stored.updates.len(), stored.corrupt_entries))
        })
        .await??;
        for (index, error) in &skipped {
            tracing::error!(doc = %name, index, %error, "skipping a stored update that does not apply");
        }
        Counters::add(&self.config.counters.corrupt_entries, corrupt);
        if corrupt > 0 {
            tracing::error!(doc = %name, corrupt, "document loaded without its corrupt log entries");
        }
        tracing::debug!(doc = %name, updates = stored_updates, skipped = skipped.len(), "room loaded");
        let mut room = room;
        room.set_limits(self.config.room_limits);
        Ok(Arc::new(LiveRoom {
            name: name.clone(),
            limits: self.config.queue.clone(),
            state: Mutex::new(RoomState {
                room,
                peers: HashMap::new(),
            }),
            persist_order: tokio::sync::Mutex::new(()),
        }))
    }

    fn release(self: &Arc<Self>, name: &DocName, cell: &Arc<OnceCell<Arc<LiveRoom>>>) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        if !Arc::ptr_eq(&slot.cell, cell) {
            return;
        }
        slot.refs -= 1;
        if slot.refs > 0 {
            return;
        }
        let poisoned = cell.get().is_some_and(|room| room.is_poisoned());
        if cell.get().is_none() || poisoned {
            // Never loaded (the load failed or was abandoned), or broken: forget it now so the
            // next connection loads afresh from the store.
            slots.remove(name);
            return;
        }
        slot.idle_generation += 1;
        slot.idle_since = Some(std::time::Instant::now());
        let generation = slot.idle_generation;
        drop(slots);
        let rooms = self.clone();
        let name = name.clone();
        let cell = cell.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tracker.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(rooms.config.idle_timeout) => {}
                    _ = rooms.shutdown.cancelled() => return,
                }
                rooms.unload_if_idle(&name, &cell, generation);
            });
        }
    }

    fn unload_if_idle(&self, name: &DocName, cell: &Arc<OnceCell<Arc<LiveRoom>>>, generation: u64) {
        let mut slots = self.slots();
        let idle = slots.get(name).is_some_and(|slot| {
            Arc::ptr_eq(&slot.cell, cell) && slot.refs == 0 && slot.idle_generation == generation
        });
        if idle {
            // Its updates are already queued for the store; the next load waits for them, and
            // the idle marker queued behind them compacts the document once they are written.
            slots.remove(name);
            drop(slots);
            self.persister.idle(name, cell.get().cloned());
            tracing::debug!(doc = %name, "room unloaded");
        }
    }

    /// Removes `name`'s room from the registry, whoever holds it, and returns it if it was
    /// loaded: the next connection opens the document afresh. For deleting a document.
    pub(crate) fn remove(&self, name: &DocName) -> Option<Arc<LiveRoom>> {
        self.slots()
            .remove(name)
            .and_then(|slot| slot.cell.get().cloned())
    }

    /// Removes a poisoned room from the registry at once so new connections reload it.
    pub(crate) fn discard(&self, room: &Arc<LiveRoom>) {
        let mut slots = self.slots();
        let matches = slots
            .get(room.name())
            .and_then(|slot| slot.cell.get())
            .is_some_and(|loaded| Arc::ptr_eq(loaded, room));
        if matches {
            slots.remove(room.name());
            tracing::error!(doc = %room.name(), "room discarded after an internal error; it reloads from storage");
        }
    }

    /// Whether a connection to `name` would find room: it is loaded (or loading), there is
    /// space for one more, or an idle room can be unloaded for it.
    pub(crate) fn can_open(&self, name: &DocName) -> bool {
        let slots = self.slots();
        slots.contains_key(name)
            || slots.len() < self.config.max_rooms
            || slots
                .values()
                .any(|slot| slot.refs == 0 && slot.cell.initialized())
    }

    /// The rooms currently loaded.
    pub(crate) fn loaded(&self) -> Vec<Arc<LiveRoom>> {
        self.slots()
            .values()
            .filter_map(|slot| slot.cell.get().cloned())
            .collect()
    }

    /// Whether `name` is loaded in memory.
    pub(crate) fn is_loaded(&self, name: &DocName) -> bool {
        self.get(name).is_some()
    }

    /// The loaded room `name`, if any.
    pub(crate) fn get(&self, name: &DocName) -> Option<Arc<LiveRoom>> {
        self.slots()
            .get(name)
            .and_then(|slot| slot.cell.get().cloned())
    }
}

/// Removes the loaded room that has been idle longest, if any room is idle, and returns it.
fn evict_least_recently_used(
    slots: &mut HashMap<DocName, Slot>,
) -> Option<(DocName, Arc<LiveRoom>)> {
    let name = slots
        .iter()
        .filter(|(_, slot)| slot.refs == 0 && slot.cell.initialized())
        .min_by_key(|(_, slot)| slot.idle_since)
        .map(|(name, _)| name.clone())?;
    let slot = slots.remove(&name)?;
    let room = slot.cell.get().cloned()?;
    Some((name, room))
}

/// Undoes the reference taken by [`Rooms::open`] unless the open completed.
struct PendingRef<'a> {
    rooms: &'a Arc<Rooms>,
    name: &'a DocName,
    cell: &'a Arc<OnceCell<Arc<LiveRoom>>>,
    armed: bool,
}

impl Drop for PendingRef<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.rooms.release(self.name, self.cell);
        }
    }
}
