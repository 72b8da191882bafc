//! One document's sync engine: a `yrs` document, its awareness, and the connections editing it.
//!
//! A [`Room`] is sans-IO. Inbound frames are validated and decoded by
//! [`decode_frame`](crate::decode_frame) (without touching the room, so the caller can do it
//! outside any lock), then handed to [`Room::receive`], which applies them and returns
//! [`Effects`]: the frames to send to whom and the document changes to persist. The caller owns
//! sockets, queues and storage. The wire codec lives in `codec.rs` and the snapshot format in
//! `snapshot.rs`; this file is the engine only.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use yrs::sync::time::Clock;
use yrs::sync::{Awareness, AwarenessUpdate, DefaultProtocol, Message, Protocol, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update};

use crate::StoredDoc;
use crate::codec::{Inbound, ProtocolError, decode_update};
use crate::snapshot::{SnapshotDraft, SnapshotError, decode_snapshot};
use crate::validate::validate_update_v1;

/// Identifies one connection (or other subscriber) within a server process.
pub type ConnId = u64;

/// What a connection may do to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read the document and awareness, send updates and awareness.
    ReadWrite,
    /// Read the document and awareness and send awareness; document updates are refused.
    ReadOnly,
}

/// A Yjs v1 update with no structs and an empty delete set.
const EMPTY_UPDATE: [u8; 2] = [0, 0];

/// Limits a [`Room`] enforces on what its connections send. The default enforces none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Largest the document may grow to, in stored bytes: its snapshot plus every update
    /// applied since (see [`Room::document_bytes`]). An update whose new content would pass it
    /// is refused before it is applied, with [`RoomFault::DocumentTooLarge`]. `None`: no limit.
    pub max_document_bytes: Option<u64>,
    /// Largest awareness state of one client (its JSON), in bytes. An awareness message with a
    /// larger state is refused whole, with [`RoomFault::AwarenessTooLarge`]. `None`: no limit.
    pub max_awareness_state_bytes: Option<usize>,
    /// Whether the awareness of read-only connections is applied and relayed (the presence of
    /// readers matters to most apps). When false it is ignored.
    pub read_only_awareness: bool,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_document_bytes: None,
            max_awareness_state_bytes: None,
            read_only_awareness: true,
        }
    }
}

/// The reason sent (once) to a read-only connection that tries to write.
pub const READ_ONLY_REASON: &str = "read-only access: document updates are not accepted";

/// Who a frame in [`Effects`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// Only the connection whose input caused it.
    Sender,
    /// Every connection of the room except the sender.
    Others,
    /// Every connection of the room, the sender included.
    Everyone,
}

/// One outbound frame (a single y-protocols message: y-websocket clients read one per frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Who receives it.
    pub to: Recipients,
    /// The encoded message, shared by every recipient.
    pub frame: Bytes,
}

/// What the caller must do after the room handled an input.
#[derive(Debug, Default)]
pub struct Effects {
    /// Frames to deliver, in order.
    pub send: Vec<Outgoing>,
    /// Document changes (Yjs v1 updates) to persist, in order. Each is exactly what changed in
    /// the document, so a no-op update persists nothing.
    pub persist: Vec<Vec<u8>>,
    /// Set when the input could not be handled completely; the caller should close the sender's
    /// connection. Effects listed above still happened and must still be delivered.
    pub fault: Option<RoomFault>,
}

impl Effects {
    fn push(&mut self, to: Recipients, message: &Message) {
        self.send.push(Outgoing {
            to,
            frame: Bytes::from(message.encode_v1()),
        });
    }
}

/// Why a room could not handle an input completely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomFault {
    /// yrs refused the update while integrating it (e.g. an item whose parent is not a type).
    #[error("update rejected: {0}")]
    UpdateRejected(String),
    /// yrs panicked; the document may be inconsistent and the room must be discarded and
    /// reloaded from storage.
    #[error("internal error while applying an update; the document will be reloaded")]
    Poisoned,
    /// The update would grow the document past [`RoomLimits::max_document_bytes`]; it was not
    /// applied.
    #[error("document too large: the limit is {limit} bytes")]
    DocumentTooLarge {
        /// The limit.
        limit: u64,
    },
    /// An awareness state is larger than [`RoomLimits::max_awareness_state_bytes`]; the
    /// message was not applied.
    #[error("awareness state too large: the limit is {limit} bytes")]
    AwarenessTooLarge {
        /// The limit.
        limit: usize,
    },
}

#[derive(Debug)]
struct Conn {
    access: Access,
    /// Awareness client ids this connection set a state for, removed when it leaves.
    clients: HashSet<ClientID>,
    /// Whether this read-only connection was already told that its updates are refused.
    told_read_only: bool,
}

/// A document's pending update and pending delete set, encoded (see `Room::pending`).
type PendingData = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Adapts a shared clock to the `Clock` type yrs's `Awareness` stores.
struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now(&self) -> yrs::sync::time::Timestamp {
        self.0.now()
    }
}

/// The sync engine of one document. See the module documentation.
pub struct Room {
    awareness: Awareness,
    clock: Arc<dyn Clock>,
    /// Changes committed by the last transactions, filled by the document's update observer.
    deltas: Arc<Mutex<Vec<Vec<u8>>>>,
    conns: HashMap<ConnId, Conn>,
    /// Which connection owns each awareness client id (the last one to send a state for it), so a
    /// client that reconnects before its old connection is noticed dead keeps its state.
    owners: HashMap<ClientID, ConnId>,
    poisoned: bool,
    limits: RoomLimits,
    /// The document's stored size: the snapshot it was loaded from (or last compacted into)
    /// plus every update applied since. An upper bound of the encoded state, cheap to keep.
    document_bytes: u64,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("connections", &self.conns.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Room {
    /// An empty room. `clock` (milliseconds) timestamps awareness states for expiry.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let doc = Doc::new();
        let deltas: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = deltas.clone();
        // A fresh document has no transaction open, so subscribing cannot fail.
        doc.observe_update_v1("concord-room", move |_, event| {
            lock(&sink).push(event.update.clone());
        })
        .expect("a new document has no open transaction");
        Room {
            awareness: Awareness::with_clock(doc, SharedClock(clock.clone())),
            clock,
            deltas,
            conns: HashMap::new(),
            owners: HashMap::new(),
            poisoned: false,
            limits: RoomLimits::default(),
            document_bytes: 0,
        }
    }

    /// Sets the limits this room enforces from now on.
    pub fn set_limits(&mut self, limits: RoomLimits) {
        self.limits = limits;
    }

    /// The document's stored size, in bytes: the snapshot it was loaded from (or last reset
    /// to with [`Room::set_document_bytes`]) plus every update applied since. It only grows
    /// between resets, so it bounds what the document takes in a store; it is what
    /// [`RoomLimits::max_document_bytes`] is checked against.
    pub fn document_bytes(&self) -> u64 {
        self.document_bytes
    }

    /// Resets the stored size, e.g. to the length of a snapshot just encoded from this room
    /// (compaction replaced the log with it).
    pub fn set_document_bytes(&mut self, bytes: u64) {
        self.document_bytes = bytes;
    }

    /// Rebuilds a room from what a [`Store`](crate::Store) returned: the snapshot, then every
    /// update of the log, one transaction each. A snapshot that does not decode is an error (the
    /// log alone cannot rebuild the document); log updates that do not apply are skipped and
    /// returned so the caller can report them.
    pub fn from_stored(
        clock: Arc<dyn Clock>,
        stored: &StoredDoc,
    ) -> Result<(Room, Vec<(usize, ProtocolError)>), ProtocolError> {
        let mut room = Room::new(clock);
        if let Some(snapshot) = &stored.snapshot {
            room.restore_snapshot(snapshot)?;
        }
        let mut skipped = Vec::new();
        for (index, update) in stored.updates.iter().enumerate() {
            if let Err(e) = room.restore(update) {
                skipped.push((index, e));
            }
        }
        Ok((room, skipped))
    }

    /// Applies a stored update while loading the room. Nothing is broadcast or persisted.
    pub fn restore(&mut self, update: &[u8]) -> Result<(), ProtocolError> {
        validate_update_v1(update)?;
        let len = update.len() as u64;
        let update = decode_update(update)?;
        let result = self.apply(update);
        lock(&self.deltas).clear();
        self.document_bytes = self.document_bytes.saturating_add(len);
        result.map_err(|fault| ProtocolError::Decode(fault.to_string()))
    }

    /// Applies a stored snapshot (written by [`Room::encode_snapshot`]) while loading the room.
    /// Snapshots come from the server itself and are checksummed by the store, so they are not
    /// run through the wire validator; a snapshot yrs cannot decode is an error.
    pub fn restore_snapshot(&mut self, snapshot: &[u8]) -> Result<(), ProtocolError> {
        let update = decode_snapshot(snapshot)?;
        let result = self.apply(update);
        lock(&self.deltas).clear();
        self.document_bytes = self.document_bytes.saturating_add(snapshot.len() as u64);
        result.map_err(|fault| ProtocolError::Decode(fault.to_string()))
    }

    /// The whole document as a snapshot: see [`SnapshotDraft`]. Equivalent to
    /// `self.draft_snapshot()?.finish()`.
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.draft_snapshot()?.finish())
    }

    /// Encodes the document both ways a snapshot may take; cheap enough to do under the room's
    /// lock (about a millisecond each for a 160 KB document). [`SnapshotDraft::finish`], which
    /// checks the v2 encoding by decoding it, can run after the lock is released.
    pub fn draft_snapshot(&self) -> Result<SnapshotDraft, SnapshotError> {
        SnapshotDraft::of(self.doc())
    }

    /// The document.
    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// The awareness states of the room.
    pub fn awareness(&self) -> &Awareness {
        &self.awareness
    }

    /// Number of connections in the room.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// True once yrs panicked inside this room: discard it and reload from storage.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The whole document as one Yjs v1 update.
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Adds a connection and returns the frames it must receive first: SyncStep1 with the
    /// room's state vector, then the current awareness states if there are any (as the
    /// reference y-websocket server does).
    pub fn join(&mut self, conn: ConnId, access: Access) -> Vec<Bytes> {
        self.conns.insert(
            conn,
            Conn {
                access,
                clients: HashSet::new(),
                told_read_only: false,
            },
        );
        let sv = self.doc().transact().state_vector();
        let mut frames = vec![Bytes::from(
            Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1(),
        )];
        if let Ok(update) = self.awareness.update()
            && !update.clients.is_empty()
        {
            frames.push(Bytes::from(Message::Awareness(update).encode_v1()));
        }
        frames
    }

    /// Handles decoded messages from `conn`. Unknown connections are treated as read-only.
    pub fn receive(&mut self, conn: ConnId, inbound: Vec<Inbound>) -> Effects {
        let mut effects = Effects::default();
        for message in inbound {
            if self.poisoned {
                effects.fault = Some(RoomFault::Poisoned);
                break;
            }
            match message {
                Inbound::SyncStep1(sv) => {
                    if let Ok(Some(reply)) =
                        DefaultProtocol.handle_sync_step1(&mut self.awareness, sv)
                    {
                        effects.push(Recipients::Sender, &reply);
                    }
                }
                Inbound::Update(update, raw) => {
                    if self.access(conn) == Access::ReadOnly {
                        // y-websocket answers the server's SyncStep1 with a SyncStep2 even when
                        // it has nothing new: only an update that would change the document is
                        // a write to refuse.
                        if self.would_change(&update) {
                            self.refuse_write(conn, &mut effects);
                        }
                        continue;
                    }
                    if let Some(limit) = self.limits.max_document_bytes
                        && self
                            .document_bytes
                            .saturating_add(self.new_content_bytes(&update, raw.len()))
                            > limit
                    {
                        effects.fault = Some(RoomFault::DocumentTooLarge { limit });
                        break;
                    }
                    let skips = self.skips_clocks(&update);
                    let pending_before = self.pending();
                    let result = self.apply(update);
                    for delta in lock(&self.deltas).drain(..) {
                        // No structs and no deletions: yrs reports one for an update it put
                        // behind a hole. Nothing to tell anyone.
                        if delta == EMPTY_UPDATE {
                            continue;
                        }
                        effects.push(
                            Recipients::Others,
                            &Message::Sync(SyncMessage::Update(delta.clone())),
                        );
                        self.document_bytes =
                            self.document_bytes.saturating_add(delta.len() as u64);
                        effects.persist.push(delta);
                    }
                    // yrs keeps an update whose dependencies have not arrived as pending and
                    // reports no change for it, so it would be relayed and stored by nobody.
                    // Store it as received: it is in the document (snapshots include pending
                    // data) and may have been acknowledged. Replaying it is harmless.
                    // The same for an update that skips clocks the document does not have yet
                    // (see `skips_clocks`): yrs integrates it behind a hole and reports nothing.
                    // Also when yrs refused the update part-way: what it had integrated stays,
                    // and a reload must reach the same state.
                    if !self.poisoned {
                        let pending_after = self.pending();
                        if skips || (pending_after.is_some() && pending_after != pending_before) {
                            self.document_bytes =
                                self.document_bytes.saturating_add(raw.len() as u64);
                            effects.persist.push(raw);
                        }
                    }
                    if let Err(fault) = result {
                        effects.fault = Some(fault);
                        break;
                    }
                }
                Inbound::Awareness(update) => {
                    if self.access(conn) == Access::ReadOnly && !self.limits.read_only_awareness {
                        continue;
                    }
                    if let Some(limit) = self.limits.max_awareness_state_bytes
                        && update
                            .clients
                            .values()
                            .any(|entry| entry.json.len() > limit)
                    {
                        effects.fault = Some(RoomFault::AwarenessTooLarge { limit });
                        break;
                    }
                    self.receive_awareness(conn, update, &mut effects);
                }
                Inbound::QueryAwareness => {
                    if let Ok(update) = self.awareness.update() {
                        effects.push(Recipients::Sender, &Message::Awareness(update));
                    }
                }
                Inbound::Auth | Inbound::SaveRequest(_) => {}
            }
        }
        effects
    }

    /// Removes a connection without removing the awareness states it set: they stay until
    /// they expire or their client removes them. For one-shot writers (an HTTP request) whose
    /// client lives on after the request.
    pub fn detach(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.remove(&conn) {
            for client in state.clients {
                if self.owners.get(&client) == Some(&conn) {
                    self.owners.remove(&client);
                }
            }
        }
    }

    /// The awareness states of the room, as one y-protocols awareness update (the payload of
    /// an awareness message), or `None` when there are none.
    pub fn awareness_update(&self) -> Option<Vec<u8>> {
        use yrs::updates::encoder::Encode;
        let update = self.awareness.update().ok()?;
        (!update.clients.is_empty()).then(|| update.encode_v1())
    }

    /// The awareness states set by this room's own connections (not those that arrived from
    /// other processes), as one awareness update, or `None` when there are none: what another
    /// process that just loaded the document asks for.
    pub fn owned_awareness_update(&self) -> Option<Vec<u8>> {
        use yrs::updates::encoder::Encode;
        if self.owners.is_empty() {
            return None;
        }
        let update = self
            .awareness
            .update_with_clients(self.owners.keys().copied())
            .ok()?;
        (!update.clients.is_empty()).then(|| update.encode_v1())
    }

    /// Removes a connection and broadcasts the removal of the awareness states it owned.
    /// Removing an unknown connection does nothing.
    pub fn leave(&mut self, conn: ConnId) -> Effects {
        let mut effects = Effects::default();
        let Some(state) = self.conns.remove(&conn) else {
            return effects;
        };
        let mut removed = Vec::new();
        for client in state.clients {
            if self.owners.get(&client) == Some(&conn) {
                self.owners.remove(&client);
                if self.has_state(client) {
                    self.awareness.remove_state(client);
                    removed.push(client);
                }
            }
        }
        self.broadcast_awareness(removed, Recipients::Others, &mut effects);
        effects
    }

    /// Removes awareness states not renewed within `timeout` and broadcasts their removal to
    /// everyone. JS clients renew every 15 s and consider 30 s stale.
    pub fn expire_awareness(&mut self, timeout: Duration) -> Effects {
        let now = self.clock.now();
        let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<ClientID> = self
            .awareness
            .iter()
            .filter(|(_, state)| {
                state.data.is_some() && now.saturating_sub(state.last_updated) >= timeout
            })
            .map(|(client, _)| client)
            .collect();
        for &client in &expired {
            self.awareness.remove_state(client);
            if let Some(&owner) = self.owners.get(&client) {
                self.disown(client, owner);
            }
        }
        let mut effects = Effects::default();
        self.broadcast_awareness(expired, Recipients::Everyone, &mut effects);
        effects
    }

    /// Whether applying `update` would change the document: content past its state vector, or
    /// deletions it does not have yet.
    pub fn would_change(&self, update: &Update) -> bool {
        let txn = self.doc().transact();
        if update.extends(&txn.state_vector()) {
            return true;
        }
        let deletes = update.delete_set();
        !deletes.is_empty() && !deletes.diff(&txn.snapshot().delete_set).is_empty()
    }

    /// Whether `update` holds structs of a client that start past what the document has
    /// integrated of that client. A y-websocket client that reconnects sends its new edits at
    /// once, and the edits it made offline only in its SyncStep2, an instant later: the new
    /// ones skip clocks meanwhile. yrs 0.28 keeps such a struct pending when it depends on a
    /// missing item, but integrates it behind an internal skip range when it depends on
    /// nothing missing (a map entry, say; also after data it holds pending): the state vector
    /// does not move, so the update observer reports nothing and the struct would be neither
    /// relayed nor stored. The room stores such an update as received (replaying it is
    /// harmless); it is relayed when the hole is filled.
    fn skips_clocks(&self, update: &Update) -> bool {
        let known = self.doc().transact().state_vector();
        update
            .insertions(true)
            .iter()
            .any(|(client, ranges)| ranges.iter().any(|r| r.start > known.get(client)))
    }

    /// What `conn` may do; unknown connections are read-only.
    fn access(&self, conn: ConnId) -> Access {
        self.conns.get(&conn).map_or(Access::ReadOnly, |c| c.access)
    }

    /// How many of an update's `raw_len` bytes carry content the document does not have yet,
    /// estimated from the share of its inserted clock ranges that lie past the document's
    /// state vector. A client that reconnects sends its whole state back (SyncStep2), which
    /// is mostly known: counting all of it would refuse a document near its limit for edits
    /// it already holds. Deletions are not counted (they shrink what is stored).
    fn new_content_bytes(&self, update: &Update, raw_len: usize) -> u64 {
        let known = self.doc().transact().state_vector();
        let (mut total, mut new) = (0u64, 0u64);
        for (client, ranges) in update.insertions(true).iter() {
            let known = known.get(client);
            for range in ranges.iter() {
                total += u64::from(range.end.saturating_sub(range.start));
                new += u64::from(range.end.saturating_sub(range.start.max(known)));
            }
        }
        if total == 0 {
            return 0;
        }
        // new <= total, and raw_len fits in usize: no overflow in u128.
        (u128::from(new) * raw_len as u128 / u128::from(total)) as u64
    }

    /// The document's pending (not yet integrable) data, encoded, or `None` when there is none.
    /// Only encodes anything when something is pending, which real clients rarely cause.
    fn pending(&self) -> Option<PendingData> {
        let txn = self.doc().transact();
        if !txn.has_missing_updates() {
            return None;
        }
        let store = txn.store();
        Some((
            store.pending_update().map(|p| p.update.encode_v1()),
            store.pending_ds().map(|ds| ds.encode_v1()),
        ))
    }

    fn has_state(&self, client: ClientID) -> bool {
        self.awareness
            .update_with_clients([client])
            .is_ok_and(|u| u.clients.values().any(|e| &*e.json != "null"))
    }

    fn refuse_write(&mut self, conn: ConnId, effects: &mut Effects) {
        if let Some(state) = self.conns.get_mut(&conn)
            && !state.told_read_only
        {
            state.told_read_only = true;
            effects.push(
                Recipients::Sender,
                &Message::Auth(Some(READ_ONLY_REASON.to_owned())),
            );
        }
    }

    fn receive_awareness(&mut self, conn: ConnId, update: AwarenessUpdate, effects: &mut Effects) {
        let Ok(Some(summary)) = self.awareness.apply_update_summary(update) else {
            return;
        };
        // Ownership follows only entries that changed the room's awareness (a newer clock).
        // y-websocket clients echo every state they receive back to the server unchanged; an
        // echo must not make the echoing connection the owner of another client's state.
        if self.conns.contains_key(&conn) {
            for &client in summary.added.iter().chain(&summary.updated) {
                if let Some(previous) = self.owners.insert(client, conn)
                    && previous != conn
                    && let Some(other) = self.conns.get_mut(&previous)
                {
                    other.clients.remove(&client);
                }
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.clients.insert(client);
                }
            }
            for &client in &summary.removed {
                if let Some(&owner) = self.owners.get(&client) {
                    self.disown(client, owner);
                }
            }
        }
        // Relayed to the sender too, as the reference server does: a lone idle client's own
        // renewals are what keep its 30 s no-message timeout from firing.
        self.broadcast_awareness(summary.all_changes(), Recipients::Everyone, effects);
    }

    /// Forgets that `conn` owns the awareness state of `client`.
    fn disown(&mut self, client: ClientID, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.clients.remove(&client);
        }
        if self.owners.get(&client) == Some(&conn) {
            self.owners.remove(&client);
        }
    }

    fn broadcast_awareness(&self, clients: Vec<ClientID>, to: Recipients, effects: &mut Effects) {
        if clients.is_empty() {
            return;
        }
        if let Ok(update) = self.awareness.update_with_clients(clients) {
            effects.push(to, &Message::Awareness(update));
        }
    }

    /// Applies one update in its own transaction; a panic inside yrs poisons the room.
    fn apply(&mut self, update: Update) -> Result<(), RoomFault> {
        let doc = self.awareness.doc();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            txn.apply_update(update)
        }));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RoomFault::UpdateRejected(e.to_string())),
            Err(_) => {
                self.poisoned = true;
                Err(RoomFault::Poisoned)
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The delta buffer is a plain Vec pushed to and drained whole: a panic elsewhere cannot leave
    // it inconsistent, so poisoning carries no information here.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_frame;
    use std::sync::atomic::{AtomicU64, Ordering};
    use yrs::sync::awareness::AwarenessUpdateEntry;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Text};

    #[derive(Default)]
    struct ManualClock(AtomicU64);

    impl Clock for ManualClock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn room() -> (Room, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (Room::new(clock.clone()), clock)
    }

    fn decode(frame: &[u8]) -> Message {
        Message::decode_v1(frame).expect("server frames decode")
    }

    fn text_update(content: &str) -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, content);
        txn.encode_update_v1()
    }

    fn update_frame(update: Vec<u8>) -> Vec<u8> {
        Message::Sync(SyncMessage::Update(update)).encode_v1()
    }

    fn awareness_frame(client: u64, clock: u32, json: &str) -> Vec<u8> {
        let mut clients = HashMap::new();
        clients.insert(
            ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: json.into(),
            },
        );
        Message::Awareness(AwarenessUpdate { clients }).encode_v1()
    }

    fn text_of(room: &Room) -> String {
        let text = room.doc().get_or_insert_text("t");
        text.get_string(&room.doc().transact())
    }

    fn states(room: &Room) -> Vec<u64> {
        let mut ids: Vec<u64> = room
            .awareness()
            .iter()
            .filter(|(_, s)| s.data.is_some())
            .map(|(id, _)| id.get())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn join_sends_step1_then_awareness_only_when_present() {
        let (mut room, _) = room();
        let frames = room.join(1, Access::ReadWrite);
        assert_eq!(frames.len(), 1);
        assert!(matches!(
            decode(&frames[0]),
            Message::Sync(SyncMessage::SyncStep1(_))
        ));
        room.receive(1, decode_frame(&awareness_frame(7, 1, "{}")).unwrap());
        let frames = room.join(2, Access::ReadWrite);
        assert_eq!(frames.len(), 2);
        assert!(matches!(decode(&frames[1]), Message::Awareness(u) if u.clients.len() == 1));
    }

    #[test]
    fn step1_is_answered_with_the_missing_state() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.receive(
            1,
            decode_frame(&update_frame(text_update("hello"))).unwrap(),
        );
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        let effects = room.receive(1, decode_frame(&step1).unwrap());
        assert_eq!(effects.send.len(), 1);
        assert_eq!(effects.send[0].to, Recipients::Sender);
        let Message::Sync(SyncMessage::SyncStep2(update)) = decode(&effects.send[0].frame) else {
            panic!("expected step 2");
        };
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        let text = doc.get_or_insert_text("t");
        assert_eq!(text.get_string(&doc.transact()), "hello");
    }

    #[test]
    fn updates_are_relayed_to_others_and_persisted_once() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadWrite);
        let update = text_update("hi");
        let effects = room.receive(1, decode_frame(&update_frame(update.clone())).unwrap());
        assert_eq!(effects.send.len(), 1);
        assert_eq!(effects.send[0].to, Recipients::Others);
        assert_eq!(effects.persist.len(), 1);
        assert!(effects.fault.is_none());
        assert_eq!(text_of(&room), "hi");
        // The same update again changes nothing: nothing to relay or persist.
        let effects = room.receive(2, decode_frame(&update_frame(update)).unwrap());
        assert!(effects.send.is_empty() && effects.persist.is_empty());
    }

    #[test]
    fn an_update_missing_its_dependencies_is_persisted_as_received() {
        // Client 2 continues client 1's text: its edit depends on client 1's.
        let mut updates: Vec<Vec<u8>> = Vec::new();
        let first = Doc::with_client_id(1);
        let second = Doc::with_client_id(2);
        for (source, word) in [(&first, "first;"), (&second, "second;")] {
            let text = source.get_or_insert_text("t");
            for update in &updates {
                let mut txn = source.transact_mut();
                txn.apply_update(Update::decode_v1(update).unwrap())
                    .unwrap();
            }
            let mut txn = source.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, word);
            updates.push(txn.encode_update_v1());
        }
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        let effects = room.receive(1, decode_frame(&update_frame(updates[1].clone())).unwrap());
        assert_eq!(
            effects.persist,
            vec![updates[1].clone()],
            "stored although pending"
        );
        assert!(
            effects.send.is_empty(),
            "nothing integrated, nothing relayed yet"
        );
        // Sent again while still pending: nothing new to store.
        let effects = room.receive(1, decode_frame(&update_frame(updates[1].clone())).unwrap());
        assert!(effects.persist.is_empty());
        // Its dependency arrives: both integrate, and the change is relayed and stored.
        let effects = room.receive(1, decode_frame(&update_frame(updates[0].clone())).unwrap());
        assert_eq!(effects.persist.len(), 1);
        assert_eq!(text_of(&room), "first;second;");
        // A room rebuilt from what was persisted has everything.
        let (mut copy, _) = super::tests::room();
        copy.restore(&updates[1]).unwrap();
        for update in &effects.persist {
            copy.restore(update).unwrap();
        }
        assert_eq!(text_of(&copy), "first;second;");
    }

    #[test]
    fn an_update_that_skips_clocks_is_stored_as_received_and_relayed_once_the_hole_fills() {
        use yrs::Map;
        // A client set one map entry offline, then another once back: the second arrives first.
        let client = Doc::with_client_id(9);
        let map = client.get_or_insert_map("m");
        let set = |key: &str| {
            let mut txn = client.transact_mut();
            map.insert(&mut txn, key, 1);
            txn.encode_update_v1()
        };
        let offline = set("offline");
        let online = set("online");
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadWrite);
        let effects = room.receive(1, decode_frame(&update_frame(online.clone())).unwrap());
        assert_eq!(effects.fault, None);
        assert_eq!(effects.persist, vec![online.clone()], "stored as received");
        // The hole fills: the watcher is sent everything.
        let effects = room.receive(1, decode_frame(&update_frame(offline.clone())).unwrap());
        let watcher = Doc::new();
        for out in &effects.send {
            if let Message::Sync(SyncMessage::Update(u)) = decode(&out.frame) {
                watcher
                    .transact_mut()
                    .apply_update(Update::decode_v1(&u).unwrap())
                    .unwrap();
            }
        }
        let keys = |doc: &Doc| {
            let map = doc.get_or_insert_map("m");
            let txn = doc.transact();
            let mut keys: Vec<String> = map.keys(&txn).map(str::to_owned).collect();
            keys.sort();
            keys
        };
        assert_eq!(keys(&watcher), ["offline", "online"]);
        // A room reloaded from what was stored, in that order, is the same.
        let (mut copy, _) = super::tests::room();
        copy.restore(&online).unwrap();
        for update in &effects.persist {
            copy.restore(update).unwrap();
        }
        assert_eq!(keys(copy.doc()), ["offline", "online"]);
        assert_eq!(
            copy.doc().transact().state_vector(),
            room.doc().transact().state_vector()
        );
    }

    #[test]
    fn several_messages_in_one_frame_are_all_handled() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        let mut frame = update_frame(text_update("a"));
        frame.extend(awareness_frame(5, 1, r#"{"user":"x"}"#));
        frame.extend(Message::AwarenessQuery.encode_v1());
        let effects = room.receive(1, decode_frame(&frame).unwrap());
        let targets: Vec<_> = effects.send.iter().map(|o| o.to).collect();
        assert_eq!(
            targets,
            [Recipients::Others, Recipients::Everyone, Recipients::Sender]
        );
        assert_eq!(text_of(&room), "a");
        assert_eq!(states(&room), [5]);
    }

    #[test]
    fn read_only_connections_are_refused_once_and_change_nothing() {
        let (mut room, _) = room();
        room.join(1, Access::ReadOnly);
        let frame = update_frame(text_update("nope"));
        let effects = room.receive(1, decode_frame(&frame).unwrap());
        assert!(effects.persist.is_empty());
        assert_eq!(effects.send.len(), 1);
        assert_eq!(
            decode(&effects.send[0].frame),
            Message::Auth(Some(READ_ONLY_REASON.into()))
        );
        let effects = room.receive(1, decode_frame(&frame).unwrap());
        assert!(effects.send.is_empty());
        assert_eq!(text_of(&room), "");
        // Their awareness is still relayed.
        let effects = room.receive(1, decode_frame(&awareness_frame(9, 1, "{}")).unwrap());
        assert_eq!(effects.send.len(), 1);
    }

    #[test]
    fn a_read_only_sync_that_changes_nothing_is_not_a_write() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadOnly);
        // The writer types, then deletes part of it: the room has content and deletions.
        let writer = Doc::with_client_id(5);
        let text = writer.get_or_insert_text("t");
        let edit = |f: &dyn Fn(&mut yrs::TransactionMut)| {
            let mut txn = writer.transact_mut();
            f(&mut txn);
            txn.encode_update_v1()
        };
        for update in [
            edit(&|txn| text.insert(txn, 0, "hello world")),
            edit(&|txn| text.remove_range(txn, 0, 6)),
        ] {
            room.receive(1, decode_frame(&update_frame(update)).unwrap());
        }
        // The reader, synced, answers SyncStep1 with its whole state: nothing new.
        let whole = writer
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let step2 = Message::Sync(SyncMessage::SyncStep2(whole)).encode_v1();
        let effects = room.receive(2, decode_frame(&step2).unwrap());
        assert!(effects.send.is_empty(), "no permission-denied for a no-op");
        // An empty one, as a fresh reader sends.
        let empty = Doc::new()
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let step2 = Message::Sync(SyncMessage::SyncStep2(empty)).encode_v1();
        assert!(
            room.receive(2, decode_frame(&step2).unwrap())
                .send
                .is_empty()
        );
        // A deletion the room does not have yet is a write.
        let delete = edit(&|txn| text.remove_range(txn, 0, 1));
        let effects = room.receive(2, decode_frame(&update_frame(delete)).unwrap());
        assert_eq!(effects.send.len(), 1, "refused");
        assert_eq!(text_of(&room), "world");
    }

    #[test]
    fn leaving_removes_owned_awareness_states() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadWrite);
        room.receive(
            1,
            decode_frame(&awareness_frame(10, 1, r#"{"a":1}"#)).unwrap(),
        );
        room.receive(
            2,
            decode_frame(&awareness_frame(20, 1, r#"{"b":2}"#)).unwrap(),
        );
        assert_eq!(states(&room), [10, 20]);
        let effects = room.leave(1);
        assert_eq!(states(&room), [20]);
        assert_eq!(effects.send.len(), 1);
        assert_eq!(effects.send[0].to, Recipients::Others);
        let Message::Awareness(update) = decode(&effects.send[0].frame) else {
            panic!("expected awareness");
        };
        assert_eq!(&*update.clients[&ClientID::new(10)].json, "null");
        assert!(room.leave(1).send.is_empty(), "leaving twice is harmless");
    }

    #[test]
    fn a_client_that_reconnected_keeps_its_state_when_the_old_connection_closes() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.receive(1, decode_frame(&awareness_frame(10, 1, "{}")).unwrap());
        room.join(2, Access::ReadWrite);
        room.receive(2, decode_frame(&awareness_frame(10, 2, "{}")).unwrap());
        assert!(room.leave(1).send.is_empty());
        assert_eq!(states(&room), [10]);
        room.leave(2);
        assert!(states(&room).is_empty());
    }

    #[test]
    fn an_echoed_state_stays_owned_by_the_connection_that_set_it() {
        let (mut room, _) = room();
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadWrite);
        let state = awareness_frame(10, 3, r#"{"user":"a"}"#);
        room.receive(1, decode_frame(&state).unwrap());
        // y-websocket clients send every state they receive back, unchanged.
        let echo = room.receive(2, decode_frame(&state).unwrap());
        assert!(echo.send.is_empty(), "an echo changes nothing");
        let effects = room.leave(1);
        assert!(states(&room).is_empty(), "the owner left: its state goes");
        assert_eq!(effects.send.len(), 1);
        room.join(3, Access::ReadWrite);
        room.receive(3, decode_frame(&awareness_frame(30, 1, "{}")).unwrap());
        room.receive(2, decode_frame(&awareness_frame(30, 1, "{}")).unwrap());
        assert!(room.leave(2).send.is_empty(), "the echoer owns nothing");
        assert_eq!(states(&room), [30]);
    }

    #[test]
    fn stale_awareness_expires_after_the_timeout() {
        let (mut room, clock) = room();
        room.join(1, Access::ReadWrite);
        room.receive(1, decode_frame(&awareness_frame(10, 1, "{}")).unwrap());
        clock.0.store(10_000, Ordering::SeqCst);
        room.receive(1, decode_frame(&awareness_frame(11, 1, "{}")).unwrap());
        let timeout = Duration::from_secs(30);
        clock.0.store(29_999, Ordering::SeqCst);
        assert!(room.expire_awareness(timeout).send.is_empty());
        clock.0.store(30_000, Ordering::SeqCst);
        let effects = room.expire_awareness(timeout);
        assert_eq!(states(&room), [11]);
        assert_eq!(effects.send.len(), 1);
        assert_eq!(effects.send[0].to, Recipients::Everyone);
        // A renewal keeps a state alive.
        room.receive(1, decode_frame(&awareness_frame(11, 2, "{}")).unwrap());
        clock.0.store(45_000, Ordering::SeqCst);
        assert!(room.expire_awareness(timeout).send.is_empty());
        assert_eq!(states(&room), [11]);
    }

    #[test]
    fn restore_rebuilds_the_document_without_effects() {
        let (mut room, _) = room();
        room.restore(&text_update("stored")).unwrap();
        assert_eq!(text_of(&room), "stored");
        assert!(room.restore(&[0xff, 0xff]).is_err());
        room.join(1, Access::ReadWrite);
        let effects = room.receive(1, decode_frame(&update_frame(text_update("x"))).unwrap());
        assert_eq!(
            effects.persist.len(),
            1,
            "restored changes are not re-persisted"
        );
    }

    #[test]
    fn a_snapshot_restores_the_whole_document() {
        let (mut room, _) = room();
        room.restore(&text_update("snap")).unwrap();
        let snapshot = room.encode_snapshot().unwrap();
        let (mut copy, _) = super::tests::room();
        copy.restore_snapshot(&snapshot).unwrap();
        assert_eq!(text_of(&copy), "snap");
        assert!(copy.restore_snapshot(&[1, 2, 3]).is_err());
    }

    #[test]
    fn an_update_that_would_pass_the_document_limit_is_refused_before_it_is_applied() {
        let (mut room, _) = room();
        room.set_limits(RoomLimits {
            max_document_bytes: Some(200),
            ..RoomLimits::default()
        });
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadWrite);
        // A client that edits, then reconnects and sends its whole state back.
        let client = Doc::with_client_id(7);
        let text = client.get_or_insert_text("t");
        let edit = |at: u32, s: &str| {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, at, s);
            txn.encode_update_v1()
        };
        let first = edit(0, &"a".repeat(100));
        let effects = room.receive(1, decode_frame(&update_frame(first)).unwrap());
        assert_eq!(effects.fault, None);
        let size = room.document_bytes();
        assert!(size > 100 && size < 200, "{size}");

        // Its whole state again plus a little: only the little is new, so it fits.
        edit(100, "b");
        let whole = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert!(
            size + whole.len() as u64 > 200,
            "the whole state would not fit"
        );
        let effects = room.receive(1, decode_frame(&update_frame(whole)).unwrap());
        assert_eq!(effects.fault, None);
        assert_eq!(text_of(&room).len(), 101);

        // Something big is refused, not applied, not relayed, not stored.
        let before = room.encode_state();
        let big = edit(101, &"c".repeat(150));
        let effects = room.receive(1, decode_frame(&update_frame(big)).unwrap());
        assert_eq!(
            effects.fault,
            Some(RoomFault::DocumentTooLarge { limit: 200 })
        );
        assert!(effects.send.is_empty() && effects.persist.is_empty());
        assert_eq!(room.encode_state(), before);

        // Resetting the size (after a compaction) lets edits in again.
        room.set_document_bytes(50);
        let effects = room.receive(2, decode_frame(&update_frame(text_update("e"))).unwrap());
        assert_eq!(effects.fault, None);
    }

    #[test]
    fn the_stored_size_counts_snapshot_and_updates() {
        let (mut room, _) = room();
        let update = text_update("hello");
        room.restore(&update).unwrap();
        assert_eq!(room.document_bytes(), update.len() as u64);
        let snapshot = room.encode_snapshot().unwrap();
        let (mut copy, _) = super::tests::room();
        copy.restore_snapshot(&snapshot).unwrap();
        assert_eq!(copy.document_bytes(), snapshot.len() as u64);
    }

    #[test]
    fn awareness_states_over_the_limit_are_refused() {
        let (mut room, _) = room();
        room.set_limits(RoomLimits {
            max_awareness_state_bytes: Some(16),
            ..RoomLimits::default()
        });
        room.join(1, Access::ReadWrite);
        let effects = room.receive(
            1,
            decode_frame(&awareness_frame(9, 1, "{\"a\":1}")).unwrap(),
        );
        assert_eq!((effects.fault, effects.send.len()), (None, 1));
        let big = format!("{{\"name\":\"{}\"}}", "x".repeat(20));
        let effects = room.receive(1, decode_frame(&awareness_frame(9, 2, &big)).unwrap());
        assert_eq!(
            effects.fault,
            Some(RoomFault::AwarenessTooLarge { limit: 16 })
        );
        assert!(effects.send.is_empty());
        let state = room.awareness().update().unwrap();
        assert_eq!(&*state.clients[&ClientID::new(9)].json, "{\"a\":1}");
    }

    #[test]
    fn read_only_awareness_can_be_ignored() {
        let (mut room, _) = room();
        room.set_limits(RoomLimits {
            read_only_awareness: false,
            ..RoomLimits::default()
        });
        room.join(1, Access::ReadOnly);
        room.join(2, Access::ReadWrite);
        let effects = room.receive(1, decode_frame(&awareness_frame(9, 1, "{}")).unwrap());
        assert!(effects.send.is_empty());
        assert!(states(&room).is_empty());
        let effects = room.receive(2, decode_frame(&awareness_frame(10, 1, "{}")).unwrap());
        assert_eq!(effects.send.len(), 1);
        assert_eq!(states(&room), vec![10]);
    }
}
