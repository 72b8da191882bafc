//! The room registry: opens rooms atomically (loading each from the store once, however many
//! connections arrive at the same moment), bounds how many are loaded (the least recently used
//! idle one is unloaded to make room), and unloads rooms that stayed idle.
//!
//! Locking: the registry lock is taken only to open, release, unload and list rooms, never per
//! message; rooms proceed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_core::{Clock, DocName, Room, RoomLimits, Store};
use futures_util::FutureExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::durability::feed::Feed;
use crate::durability::{LiveDocument, LiveDocuments, Persister};
use crate::ops::stats::Counters;
use crate::replication::{MaybeReplication, RemoteInput, RoomInlet};
use crate::rooms::fanout::QueueLimits;
use crate::rooms::room::LiveRoom;

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
    /// Not an error of the registry: what a caller reports when shutdown interrupted its open.
    #[error("the server is shutting down")]
    ShuttingDown,
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
    pub(crate) replication: MaybeReplication,
}

/// All rooms of a server.
pub(crate) struct Rooms {
    slots: Mutex<HashMap<DocName, Slot>>,
    store: Arc<dyn Store>,
    persister: Persister,
    /// Where entries other processes stored enter this process's change feed.
    feed: Feed,
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
        feed: Feed,
        config: RoomsConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Rooms {
            slots: Mutex::new(HashMap::new()),
            store,
            persister,
            feed,
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
                let evicted = evict_least_recently_used(&mut slots)
                    .ok_or(OpenError::TooManyRooms(self.config.max_rooms))?;
                self.unfollow(&evicted.0);
                Some(evicted)
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
            self.persister
                .idle(&evicted, Some(room as Arc<dyn LiveDocument>));
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

    async fn load(self: &Arc<Self>, name: &DocName) -> Result<Arc<LiveRoom>, OpenError> {
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
        // The last log entry the load covers: another process's entries after it reach the
        // room through the replication.
        let loaded = stored.position.seq;
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
        let room = Arc::new(LiveRoom::new(
            name.clone(),
            room,
            self.config.queue.clone(),
            self.config.replication.clone(),
        ));
        if let Some(replication) = &self.config.replication {
            let input: Arc<dyn RemoteInput> = room.clone();
            let (rooms, live) = (Arc::downgrade(self), Arc::downgrade(&room));
            let on_deleted = Box::new(move || {
                if let (Some(rooms), Some(room)) = (rooms.upgrade(), live.upgrade()) {
                    rooms.deleted_elsewhere(&room);
                }
            });
            let inlet = RoomInlet::inlet(
                Arc::downgrade(&input),
                name.clone(),
                self.feed.clone(),
                on_deleted,
            );
            replication.follow(name, inlet, loaded);
        }
        Ok(room)
    }

    /// Tells the replication, if any, that `name`'s room is gone. Called with the registry
    /// lock held, so that it comes before the `follow` of the room that replaces it.
    fn unfollow(&self, name: &DocName) {
        if let Some(replication) = &self.config.replication {
            replication.unfollow(name);
        }
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
            if poisoned {
                self.unfollow(name);
            }
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
            self.unfollow(name);
            drop(slots);
            let room = cell.get().map(|room| room.clone() as Arc<dyn LiveDocument>);
            self.persister.idle(name, room);
            tracing::debug!(doc = %name, "room unloaded");
        }
    }

    /// Removes `name`'s room from the registry, whoever holds it, and returns it if it was
    /// loaded: the next connection opens the document afresh. For deleting a document.
    pub(crate) fn remove(&self, name: &DocName) -> Option<Arc<LiveRoom>> {
        let mut slots = self.slots();
        let slot = slots.remove(name)?;
        let room = slot.cell.get().cloned();
        if room.is_some() {
            self.unfollow(name);
        }
        room
    }

    /// Another process deleted `room`'s document: closes its connections (as a local delete
    /// does) and takes it out of the registry, so the next connection loads what the store
    /// holds. A room that was already replaced is left alone.
    pub(crate) fn deleted_elsewhere(&self, room: &Arc<LiveRoom>) {
        {
            let mut slots = self.slots();
            let matches = slots
                .get(room.name())
                .and_then(|slot| slot.cell.get())
                .is_some_and(|loaded| Arc::ptr_eq(loaded, room));
            if !matches {
                return;
            }
            slots.remove(room.name());
            self.unfollow(room.name());
        }
        room.close_all(crate::rooms::CloseReason::DocumentDeleted);
        tracing::info!(doc = %room.name(), "document deleted by another node: room closed");
    }

    /// Tells the replication, if any, that a document was deleted through this process.
    pub(crate) fn announce_deleted(&self, name: &DocName) {
        if let Some(replication) = &self.config.replication {
            replication.deleted(name);
        }
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
            self.unfollow(room.name());
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

impl Rooms {
    /// Every `every`, expires the awareness states of every loaded room not renewed within
    /// `timeout` (clients renew every 15 s), until shutdown.
    pub(crate) async fn sweep_awareness(self: Arc<Self>, every: Duration, timeout: Duration) {
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            for room in self.loaded() {
                room.expire_awareness(timeout);
            }
        }
    }
}

impl LiveDocuments for Rooms {
    fn live(&self, doc: &DocName) -> Option<Arc<dyn LiveDocument>> {
        self.get(doc).map(|room| room as Arc<dyn LiveDocument>)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::state::AppState;
    use crate::testing::GatedStore;

    fn doc(name: &str) -> DocName {
        DocName::new(name).unwrap()
    }

    fn start(store: Arc<GatedStore>, config: Config) -> AppState {
        AppState::start(config, store, CancellationToken::new()).0
    }

    /// Polls `cond` (yielding to the runtime) until it holds, for at most ten seconds.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn concurrent_opens_of_one_document_load_it_once_and_share_one_room() {
        let store = GatedStore::new(true, false);
        let state = start(store.clone(), Config::default());
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let rooms = state.rooms.clone();
                tokio::spawn(async move { rooms.open(&doc("shared")).await })
            })
            .collect();
        until("the load started", || store.loads() == 1).await;
        assert!(
            opens.iter().all(|open| !open.is_finished()),
            "nobody is answered before the load finished"
        );
        assert!(state.rooms.can_open(&doc("shared")));
        assert!(!state.rooms.is_loaded(&doc("shared")), "still loading");
        store.allow_loads(1);
        let mut guards = Vec::new();
        for open in opens {
            guards.push(open.await.unwrap().unwrap());
        }
        let first = guards[0].room().clone();
        assert!(guards.iter().all(|g| Arc::ptr_eq(g.room(), &first)));
        assert_eq!(store.loads(), 1, "one load for every connection");
        assert!(state.rooms.is_loaded(&doc("shared")));
    }

    #[tokio::test]
    async fn the_least_recently_used_idle_room_makes_room_and_busy_rooms_are_never_unloaded() {
        let store = GatedStore::new(false, false);
        let config = Config {
            max_rooms: 2,
            room_idle_timeout: Duration::from_secs(3600),
            ..Config::default()
        };
        let state = start(store.clone(), config);
        let rooms = &state.rooms;
        let a = rooms.open(&doc("a")).await.unwrap();
        let b = rooms.open(&doc("b")).await.unwrap();
        drop(a);
        drop(b);
        // Both idle: `a` has been idle longer, so it goes.
        let c = rooms.open(&doc("c")).await.unwrap();
        assert!(!rooms.is_loaded(&doc("a")));
        assert!(rooms.is_loaded(&doc("b")));
        let d = rooms.open(&doc("d")).await.unwrap();
        assert!(!rooms.is_loaded(&doc("b")));
        assert_eq!(
            state
                .counters
                .rooms_evicted
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // Every loaded room is in use: no room for another, but the loaded ones still open.
        assert!(!rooms.can_open(&doc("e")));
        assert!(matches!(
            rooms.open(&doc("e")).await,
            Err(OpenError::TooManyRooms(2))
        ));
        assert!(rooms.can_open(&doc("c")));
        let c_again = rooms.open(&doc("c")).await.unwrap();
        assert!(Arc::ptr_eq(c.room(), c_again.room()));
        assert_eq!(store.loads(), 4, "a, b, c and d once each; e never");
        drop((c, c_again, d));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_room_unloads_after_its_timeout_unless_used_again_and_reloads_what_it_stored() {
        use concord_core::{Access, decode_frame};
        use yrs::updates::decoder::Decode;
        use yrs::updates::encoder::Encode;
        use yrs::{GetString, Text, Transact};

        let store = GatedStore::new(false, false);
        let idle = Duration::from_secs(30);
        let config = Config {
            room_idle_timeout: idle,
            // The compaction at unloading would make a version, which reads the store: this
            // test counts the rooms' loads alone.
            history: crate::HistoryConfig {
                automatic: false,
                ..Default::default()
            },
            ..Config::default()
        };
        let state = start(store.clone(), config);
        let name = doc("idle");
        let guard = state.rooms.open(&name).await.unwrap();
        let edit = {
            let doc = yrs::Doc::new();
            let text = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "kept");
            txn.encode_update_v1()
        };
        let frame = yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(edit)).encode_v1();
        let outcome = state
            .ingest
            .receive(
                guard.room(),
                crate::ingest::Source::Request(Access::ReadWrite),
                decode_frame(&frame).unwrap(),
            )
            .await;
        assert!(outcome.stored.unwrap().wait().await);
        drop(guard);

        // Used again before the timeout: the first idle timer must not unload it.
        tokio::time::sleep(idle / 2).await;
        let again = state.rooms.open(&name).await.unwrap();
        tokio::time::sleep(idle).await;
        assert!(state.rooms.is_loaded(&name), "in use: stays loaded");
        drop(again);
        tokio::time::sleep(idle + Duration::from_secs(1)).await;
        until("the idle room unloaded", || !state.rooms.is_loaded(&name)).await;
        assert_eq!(store.loads(), 1);

        let reloaded = state.rooms.open(&name).await.unwrap();
        assert_eq!(store.loads(), 2, "loaded afresh from the store");
        let update = reloaded.room().encode_state(&yrs::StateVector::default());
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&update).unwrap())
            .unwrap();
        assert_eq!(text.get_string(&doc.transact()), "kept");
    }
}
