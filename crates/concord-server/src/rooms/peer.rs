//! A connection as a room sees it: a bounded queue its frames go to, how to close it, and why.
//! Every edge (a WebSocket, an SSE stream) makes one [`Peer`] per connection and drains the
//! [`Outbox`] at its own pace; the reasons a connection ends are named here once, and each edge
//! says them its own way (a WebSocket close code, the end of a stream).
//!
//! The writing turn: frames are taken from a queue only by whoever holds it, so they reach the
//! socket in queue order. An edge that installs a [`Wire`] (the y-websocket writer) takes the
//! turn to write a batch ([`Outbox::claim`]); a queuer of a frame up to 16 KiB that finds the
//! turn free and the socket idle for 100 µs takes it and writes the queue to the socket itself
//! ([`Turn::write`]), never waiting: at a paced load most frames go out that way, with no task
//! woken for them. Frames that come closer together (a room at full speed) are left to the
//! edge's task, which writes all that gathered with one flush. What the socket cannot take at
//! once is left to the edge's task, which waits for the socket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use concord_core::ConnId;
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A connection id no other connection of this process has.
pub(crate) fn next_conn_id() -> ConnId {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why a connection is closed. Rooms close peers for the first three; edges for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Its outbound queue overflowed: the client reads too slowly. It reconnects and resyncs.
    SlowConsumer,
    /// The room failed (yrs panicked); it is discarded and reloads from the store.
    RoomFailed,
    /// The document was deleted.
    DocumentDeleted,
    /// The server is shutting down.
    ShuttingDown,
    /// The document could not be loaded.
    LoadFailed,
    /// Too many documents are open and none is idle.
    TooManyRooms,
    /// The connection's token expired.
    TokenExpired,
    /// It sent faster than its rate limits (the limit that was hit).
    RateLimited(String),
    /// It sent something Concord does not speak (a text frame, an unknown message type).
    Unsupported(String),
    /// It sent a malformed message, or an update yrs refused.
    Malformed(String),
    /// It sent a message over the size limit.
    TooBig(String),
    /// Its update would have grown the document past its size limit.
    DocumentTooLarge(String),
    /// Its awareness state is over the size limit.
    AwarenessTooLarge(String),
}

impl CloseReason {
    /// Why a connection (or one document of it) is closed for a message it sent that cannot
    /// be used: `Unsupported` when the message was well-formed but of a kind not spoken here,
    /// else `Malformed`.
    pub(crate) fn refusing(error: &dyn std::fmt::Display, unsupported: bool) -> CloseReason {
        let why = format!("malformed message: {error}");
        if unsupported {
            CloseReason::Unsupported(why)
        } else {
            CloseReason::Malformed(why)
        }
    }
}

/// Asks a connection to close, once, with or without a reason to tell the client. Shared by
/// the connection's tasks and by the room that may drop it.
#[derive(Clone, Default)]
pub(crate) struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<Option<CloseReason>>>,
}

impl Closer {
    /// Closes, telling the client why; the first call wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(Some(reason));
        self.token.cancel();
    }

    /// Closes without telling the client anything (it is gone or already said goodbye).
    pub(crate) fn close_silently(&self) {
        let _ = self.reason.set(None);
        self.token.cancel();
    }

    pub(crate) async fn closed(&self) {
        self.token.cancelled().await;
    }

    /// Whether it was asked to close. A lock-free read (the reason is set before the token is
    /// cancelled; a token's own check takes its lock): the fan-out asks it of every peer for
    /// every frame.
    pub(crate) fn is_closed(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Why it was closed, when the client is to be told.
    pub(crate) fn reason(&self) -> Option<CloseReason> {
        self.reason.get().cloned().flatten()
    }
}

/// The sending side of a connection, held by its room.
#[derive(Clone)]
pub(crate) struct Peer {
    tx: Sender,
    /// Only awareness frames are queued for it: an SSE stream, which gets document changes
    /// from the change feed (with positions) instead.
    pub(crate) awareness_only: bool,
    /// It speaks a protocol with application messages (Hocuspocus): stateless frames are
    /// queued for it; other peers never get them.
    pub(crate) stateless: bool,
}

/// The receiving side of a connection's queue, drained by the edge that writes to it.
pub(crate) struct Outbox {
    queue: Arc<Queue>,
}

/// A connection's socket as whoever queues a frame may write to it: without waiting, and only
/// while no one else writes (the queue hands out that turn). An edge that installs one
/// ([`Outbox::install`]) spares most frames a wake-up of its task: the fan-out writes them
/// itself, as a single-threaded server would, and the edge's task only takes over what the
/// socket could not take at once.
pub(crate) trait Wire: Send + Sync {
    /// Writes the frames `next` hands out, without waiting, and flushes them. Stops at the first
    /// frame the socket cannot take (that frame is not taken from `next`).
    fn write_now(&self, next: &mut dyn FnMut() -> Option<Bytes>) -> WriteNow;
}

/// How a [`Wire::write_now`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteNow {
    /// Every frame went out and was flushed.
    Done,
    /// The socket would block: what is left (frames queued, or written but not flushed) is
    /// for the edge's task, which waits for the socket.
    Blocked,
    /// The socket failed: the connection is over.
    Failed,
}

/// A connection's queue of frames: a deque that allocates nothing until a frame is queued
/// and gives back what a burst grew it to once drained, so an idle connection's queue costs
/// about a hundred bytes (a Tokio channel allocates a 32-slot block and cache-padded
/// halves up front: about 1.8 KiB per connection, the largest part of an idle one).
struct Queue {
    state: Mutex<QueueState>,
    /// The outbox's task, woken when a frame is queued or the last sender goes.
    waker: AtomicWaker,
    /// Bytes queued and not yet taken by the [`Outbox`].
    queued_bytes: AtomicUsize,
    /// Most frames queued at once.
    max_frames: usize,
    /// The socket, when queuers may write to it themselves, and how long it must have been
    /// idle for them to (see [`WIRE_GAP_NANOS`]).
    wire: OnceLock<(Arc<dyn Wire>, u64)>,
    /// Frames went out through the wire since the outbox last asked.
    wrote: AtomicBool,
    /// When the socket was last written to ([`clock`] nanoseconds; 0: never).
    last_write: AtomicU64,
    /// How to close the connection: the room's, the edge's, and the wire's when a write
    /// fails.
    closer: Closer,
}

impl QueueState {
    /// Gives back what a burst grew the deque to, once it is drained.
    fn shrink_if_drained(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > KEPT_CAPACITY {
            self.frames.shrink_to(KEPT_CAPACITY);
        }
    }
}

struct QueueState {
    frames: VecDeque<Bytes>,
    /// [`Sender`]s alive; at 0 the outbox ends once it has taken the rest.
    senders: usize,
    /// Someone has the writing turn: the outbox's task or a queuer writing through the wire.
    /// Frames are taken from the queue only with the turn, so they go out in queue order.
    writing: bool,
    /// A write through the wire blocked: the outbox's task is to flush the socket even if
    /// no frame is queued.
    unflushed: bool,
}

/// Largest frame a queuer writes through the wire itself; a larger one (a late joiner's whole
/// document) is the edge's task's.
const WIRE_FRAME_BYTES: usize = 16 * 1024;

/// A queuer writes through the wire only when the socket was last written to longer ago than
/// this. Frames that follow one another closer (a room at full speed) are left to the edge's
/// task, which writes all that gathered meanwhile with one flush: one syscall for many frames,
/// where writing each at once would make one per frame.
const WIRE_GAP_NANOS: u64 = 100_000;

/// Nanoseconds since the first call, plus one (0 is "never"): a clock for [`WIRE_GAP_NANOS`].
fn clock() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Most rounds a queuer writes through the wire before it leaves what others queued
/// meanwhile to the outbox's task.
const WIRE_ROUNDS: usize = 4;

/// A drained queue keeps at most this much room for frames (a burst may have grown it to
/// `max_frames`).
const KEPT_CAPACITY: usize = 8;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every change to the state is a single push, pop or count: a panic cannot leave it
        // half-changed, so a poisoned lock is safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop(&self) -> Option<Bytes> {
        let mut state = self.lock();
        let frame = state.frames.pop_front()?;
        state.shrink_if_drained();
        drop(state);
        self.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }

    /// How long before `now` the socket was last written to.
    fn idle_since(&self, now: u64) -> u64 {
        match self.last_write.load(Ordering::Relaxed) {
            0 => u64::MAX,
            last => now.saturating_sub(last),
        }
    }

    /// Writes the queue through its wire with the writing turn already taken, then gives the
    /// turn back; whatever is left is the outbox's task's, which is woken for it.
    fn write_through(&self) {
        if let Some((wire, _)) = self.wire.get() {
            for _ in 0..WIRE_ROUNDS {
                let result = wire.write_now(&mut || self.pop());
                self.last_write.store(clock(), Ordering::Relaxed);
                let mut state = self.lock();
                match result {
                    // Frames queued meanwhile found the turn taken and were left to this.
                    WriteNow::Done if !state.frames.is_empty() => continue,
                    WriteNow::Done => {
                        state.writing = false;
                        drop(state);
                        self.wrote.store(true, Ordering::Relaxed);
                        return;
                    }
                    WriteNow::Blocked => state.unflushed = true,
                    WriteNow::Failed => {
                        drop(state);
                        self.closer.close_silently();
                    }
                }
                break;
            }
        }
        self.give_turn_to_outbox();
    }

    /// Gives back the writing turn, and wakes the outbox's task for whatever is left.
    fn give_turn_to_outbox(&self) {
        self.lock().writing = false;
        self.waker.wake();
    }
}

/// A connection's writing turn, taken by [`Peer::queue`]: the frames it queued are written
/// to the socket through [`Turn::write`], by the caller, once it holds no lock (a room's fan-out
/// queues under the room's lock and writes after releasing it). Dropped unwritten, it gives the
/// turn to the edge's task.
pub(crate) struct Turn(Option<Arc<Queue>>);

impl Turn {
    /// Writes what is queued to the socket, without waiting for it.
    pub(crate) fn write(mut self) {
        if let Some(queue) = self.0.take() {
            queue.write_through();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            queue.give_turn_to_outbox();
        }
    }
}

/// What [`Peer::queue`] did with a frame.
pub(crate) enum Queueing {
    /// It did not fit: the caller closes the connection, never skips the frame.
    Full,
    /// Queued; the edge's task, or whoever is writing to the socket, sends it.
    Queued,
    /// Queued, and the connection's writing turn taken: write it through this.
    Turn(Turn),
}

/// A counted handle to a [`Queue`]: the outbox learns when the last one is gone.
struct Sender(Arc<Queue>);

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.waker.wake();
        }
    }
}

impl Peer {
    /// A peer whose queue holds at most `frames` frames (the byte bound is the room's, see
    /// `fanout.rs`), and the outbox its edge drains.
    pub(crate) fn new(frames: usize, closer: Closer, awareness_only: bool) -> (Peer, Outbox) {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                senders: 1,
                writing: false,
                unflushed: false,
            }),
            waker: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_frames: frames.max(2),
            wire: OnceLock::new(),
            wrote: AtomicBool::new(false),
            last_write: AtomicU64::new(0),
            closer,
        });
        let peer = Peer {
            tx: Sender(queue.clone()),
            awareness_only,
            stateless: false,
        };
        (peer, Outbox { queue })
    }

    /// Queues `frame` unless the queue is full (by frames, or by bytes: `max_bytes` bounds the
    /// backlog already queued, so one frame larger than it still goes out behind a small one).
    /// Returns false when it did not fit; the caller then closes the connection, never skips
    /// the frame. With a [`Wire`] installed, the frame may be written to the socket here.
    pub(crate) fn try_queue(&self, frame: Bytes, max_bytes: usize) -> bool {
        match self.queue(frame, max_bytes) {
            Queueing::Full => false,
            Queueing::Queued => true,
            Queueing::Turn(turn) => {
                turn.write();
                true
            }
        }
    }

    /// [`Peer::try_queue`] that leaves the writing to the caller: with a [`Wire`] installed and
    /// no one writing to the socket, the connection's writing turn is handed out; else the
    /// edge's task is woken for the frame (or whoever is writing takes it).
    pub(crate) fn queue(&self, frame: Bytes, max_bytes: usize) -> Queueing {
        if self.queued_bytes() >= max_bytes {
            return Queueing::Full;
        }
        let queue = &self.tx.0;
        let len = frame.len();
        {
            let mut state = queue.lock();
            if state.frames.len() >= queue.max_frames {
                return Queueing::Full;
            }
            state.frames.push_back(frame);
            queue.queued_bytes.fetch_add(len, Ordering::Relaxed);
            if state.writing {
                // Whoever writes takes it before giving the turn back.
                return Queueing::Queued;
            }
            let gap = queue.wire.get().map(|(_, gap)| *gap);
            if let Some(gap) = gap
                && len <= WIRE_FRAME_BYTES
                && !state.unflushed
                && !queue.closer.is_closed()
                && queue.idle_since(clock()) >= gap
            {
                state.writing = true;
                return Queueing::Turn(Turn(Some(queue.clone())));
            }
        }
        queue.waker.wake();
        Queueing::Queued
    }

    /// How to close the connection.
    pub(crate) fn closer(&self) -> &Closer {
        &self.tx.0.closer
    }

    /// Frames waiting in the queue.
    pub(crate) fn queued_frames(&self) -> usize {
        self.tx.0.lock().frames.len()
    }

    /// Bytes waiting in the queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.tx.0.queued_bytes.load(Ordering::Relaxed)
    }
}

impl Outbox {
    /// The next frame; `None` once every [`Peer`] handle is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| {
            if let Some(frame) = self.queue.pop() {
                return Poll::Ready(Some(frame));
            }
            self.queue.waker.register(cx.waker());
            // Again after registering: a frame queued (or the last sender gone) in between
            // woke no one.
            if let Some(frame) = self.queue.pop() {
                return Poll::Ready(Some(frame));
            }
            if self.queue.lock().senders == 0 {
                return Poll::Ready(self.queue.pop());
            }
            Poll::Pending
        })
        .await
    }

    /// The next frame if one is queued already.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        self.queue.pop()
    }

    /// Lets queuers write to `wire` themselves. The edge then takes frames only with
    /// [`Outbox::claim`] and gives the turn back with [`Outbox::release`], never with
    /// [`Outbox::recv`].
    pub(crate) fn install(&mut self, wire: Arc<dyn Wire>) {
        let _ = self.queue.wire.set((wire, WIRE_GAP_NANOS));
    }

    /// [`Outbox::install`] with another idle gap than [`WIRE_GAP_NANOS`].
    #[cfg(test)]
    fn install_with_gap(&mut self, wire: Arc<dyn Wire>, gap: u64) {
        let _ = self.queue.wire.set((wire, gap));
    }

    /// Waits for the writing turn with something to write, takes it, and returns up to `max`
    /// frames (none when only a flush is owed); `None` once every [`Peer`] handle is gone and
    /// the queue is empty. The caller writes them, then calls [`Outbox::release`].
    pub(crate) async fn claim(&mut self, max: usize) -> Option<Vec<Bytes>> {
        std::future::poll_fn(|cx| {
            if let Some(claimed) = self.try_claim(max) {
                return Poll::Ready(claimed);
            }
            self.queue.waker.register(cx.waker());
            // Again after registering: a frame queued or a turn given back in between woke
            // no one.
            match self.try_claim(max) {
                Some(claimed) => Poll::Ready(claimed),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn try_claim(&mut self, max: usize) -> Option<Option<Vec<Bytes>>> {
        let mut state = self.queue.lock();
        if state.writing {
            return None;
        }
        if state.frames.is_empty() && !state.unflushed {
            return (state.senders == 0).then_some(None);
        }
        state.writing = true;
        state.unflushed = false;
        self.queue.last_write.store(clock(), Ordering::Relaxed);
        let count = state.frames.len().min(max);
        let batch: Vec<Bytes> = state.frames.drain(..count).collect();
        state.shrink_if_drained();
        drop(state);
        let bytes = batch.iter().map(Bytes::len).sum();
        self.queue.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Some(Some(batch))
    }

    /// Gives back the writing turn taken by [`Outbox::claim`].
    pub(crate) fn release(&mut self) {
        self.queue.last_write.store(clock(), Ordering::Relaxed);
        self.queue.lock().writing = false;
    }

    /// Whether frames went out through the [`Wire`] since the last call.
    pub(crate) fn wrote_through_wire(&mut self) -> bool {
        self.queue.wrote.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_is_bounded_by_frames_and_by_bytes_and_counts_what_it_holds() {
        let (peer, mut outbox) = Peer::new(2, Closer::default(), false);
        assert!(peer.try_queue(Bytes::from_static(b"abc"), 100));
        assert!(peer.try_queue(Bytes::from_static(b"de"), 100));
        assert_eq!((peer.queued_frames(), peer.queued_bytes()), (2, 5));
        assert!(!peer.try_queue(Bytes::from_static(b"f"), 100), "frames");
        assert_eq!(outbox.recv().await.unwrap(), "abc");
        assert_eq!((peer.queued_frames(), peer.queued_bytes()), (1, 2));
        // A frame larger than the byte bound goes out behind a backlog under it.
        assert!(peer.try_queue(Bytes::from(vec![0; 500]), 100));
        assert!(!peer.try_queue(Bytes::from_static(b"g"), 100), "bytes");
        assert_eq!(outbox.try_recv().unwrap(), "de");
        assert_eq!(outbox.try_recv().unwrap().len(), 500);
        assert!(outbox.try_recv().is_none());
        assert_eq!(peer.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn the_outbox_ends_when_the_last_peer_handle_goes_and_the_queue_is_drained() {
        let (peer, mut outbox) = Peer::new(8, Closer::default(), false);
        let copy = peer.clone();
        assert!(peer.try_queue(Bytes::from_static(b"a"), 100));
        drop(peer);
        assert!(copy.try_queue(Bytes::from_static(b"b"), 100));
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = outbox.recv().await {
                got.push(frame);
            }
            got
        });
        assert!(copy.try_queue(Bytes::from_static(b"c"), 100));
        drop(copy);
        assert_eq!(waiting.await.unwrap(), vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_waiting_outbox_is_woken_by_a_frame() {
        let (peer, mut outbox) = Peer::new(8, Closer::default(), false);
        let waiting = tokio::spawn(async move { outbox.recv().await });
        tokio::task::yield_now().await;
        assert!(peer.try_queue(Bytes::from_static(b"x"), 100));
        assert_eq!(waiting.await.unwrap().unwrap(), "x");
        assert_eq!(peer.queued_bytes(), 0);
    }

    #[test]
    fn a_drained_queue_gives_back_what_a_burst_grew_it_to() {
        let (peer, mut outbox) = Peer::new(1024, Closer::default(), false);
        for _ in 0..1000 {
            assert!(peer.try_queue(Bytes::from_static(b"x"), usize::MAX));
        }
        while outbox.try_recv().is_some() {}
        assert!(outbox.queue.lock().frames.capacity() <= KEPT_CAPACITY);
    }

    /// A socket that takes `room` frames, then blocks (or fails).
    struct TestWire {
        taken: Mutex<Vec<Bytes>>,
        room: usize,
        fail: bool,
    }

    impl TestWire {
        fn new(room: usize, fail: bool) -> Arc<TestWire> {
            Arc::new(TestWire {
                taken: Mutex::new(Vec::new()),
                room,
                fail,
            })
        }

        fn taken(&self) -> Vec<Bytes> {
            self.taken.lock().unwrap().clone()
        }
    }

    impl Wire for TestWire {
        fn write_now(&self, next: &mut dyn FnMut() -> Option<Bytes>) -> WriteNow {
            if self.fail {
                return WriteNow::Failed;
            }
            let mut taken = self.taken.lock().unwrap();
            while taken.len() < self.room {
                match next() {
                    Some(frame) => taken.push(frame),
                    None => return WriteNow::Done,
                }
            }
            WriteNow::Blocked
        }
    }

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn with_a_wire_a_frame_is_written_by_whoever_queues_it() {
        let (peer, mut outbox) = Peer::new(8, Closer::default(), false);
        let wire = TestWire::new(100, false);
        outbox.install_with_gap(wire.clone(), 0);
        assert!(peer.try_queue(frame("a"), 100));
        assert!(peer.try_queue(frame("b"), 100));
        assert_eq!(wire.taken(), ["a", "b"]);
        assert_eq!(peer.queued_frames(), 0);
        assert_eq!(peer.queued_bytes(), 0);
        assert!(outbox.wrote_through_wire());
        assert!(!outbox.wrote_through_wire());
        // A large frame (a joiner's whole document) is the outbox's task's.
        let large = Bytes::from(vec![0; WIRE_FRAME_BYTES + 1]);
        assert!(matches!(peer.queue(large, usize::MAX), Queueing::Queued));
        assert_eq!(wire.taken().len(), 2);
    }

    #[tokio::test]
    async fn a_socket_written_to_within_the_gap_is_left_to_the_outbox_which_batches() {
        let (peer, mut outbox) = Peer::new(8, Closer::default(), false);
        let wire = TestWire::new(100, false);
        outbox.install_with_gap(wire.clone(), u64::MAX);
        // Never written to: idle, so the first frame goes at once.
        assert!(peer.try_queue(frame("a"), 100));
        assert_eq!(wire.taken(), ["a"]);
        // Within the gap since: the outbox's task takes the rest, in one batch.
        assert!(matches!(peer.queue(frame("b"), 100), Queueing::Queued));
        assert!(matches!(peer.queue(frame("c"), 100), Queueing::Queued));
        assert_eq!(wire.taken(), ["a"]);
        assert_eq!(outbox.claim(64).await.unwrap(), ["b", "c"]);
        outbox.release();
    }

    #[tokio::test]
    async fn while_the_outbox_writes_queued_frames_wait_for_it_in_order() {
        let (peer, mut outbox) = Peer::new(8, Closer::default(), false);
        let wire = TestWire::new(100, false);
        outbox.install_with_gap(wire.clone(), 0);
        // Queued before anyone writes: taken through a turn held, not yet written.
        let Queueing::Turn(turn) = peer.queue(frame("a"), 100) else {
            panic!("the turn was free");
        };
        assert!(matches!(peer.queue(frame("b"), 100), Queueing::Queued));
        turn.write();
        assert_eq!(wire.taken(), ["a", "b"]);
        // A turn dropped unwritten is given to the outbox's task, which then holds it: frames
        // queued meanwhile are its too.
        let Queueing::Turn(turn) = peer.queue(frame("c"), 100) else {
            panic!("the turn was free");
        };
        drop(turn);
        assert_eq!(outbox.claim(64).await.unwrap(), ["c"]);
        assert!(peer.try_queue(frame("d"), 100));
        assert!(peer.try_queue(frame("e"), 100));
        assert_eq!(wire.taken(), ["a", "b"], "the outbox writes");
        outbox.release();
        assert_eq!(outbox.claim(64).await.unwrap(), ["d", "e"]);
        outbox.release();
        assert!(peer.try_queue(frame("f"), 100));
        assert_eq!(wire.taken(), ["a", "b", "f"]);
    }

    #[tokio::test]
    async fn a_blocked_wire_leaves_the_rest_and_a_flush_to_the_outbox() {
        let (peer, mut outbox) = Peer::new(8, Closer::default(), false);
        let wire = TestWire::new(1, false);
        outbox.install_with_gap(wire.clone(), 0);
        assert!(peer.try_queue(frame("a"), 100));
        assert_eq!(wire.taken(), ["a"]);
        // Blocked after "a" with nothing queued: the outbox owes the socket a flush.
        assert_eq!(outbox.claim(64).await.unwrap(), Vec::<Bytes>::new());
        outbox.release();
        assert!(peer.try_queue(frame("b"), 100));
        assert!(peer.try_queue(frame("c"), 100));
        assert_eq!(wire.taken(), ["a"]);
        assert_eq!(outbox.claim(64).await.unwrap(), ["b", "c"]);
        outbox.release();
    }

    #[test]
    fn a_failed_wire_closes_the_connection_silently() {
        let closer = Closer::default();
        let (peer, mut outbox) = Peer::new(8, closer.clone(), false);
        outbox.install_with_gap(TestWire::new(100, true), 0);
        assert!(peer.try_queue(frame("a"), 100));
        assert!(closer.is_closed());
        assert_eq!(closer.reason(), None);
        // Closed: frames now wait for the outbox's task, which ends the connection.
        assert!(matches!(peer.queue(frame("b"), 100), Queueing::Queued));
    }

    #[test]
    fn the_first_close_wins() {
        let closer = Closer::default();
        assert!(!closer.is_closed());
        closer.close(CloseReason::SlowConsumer);
        closer.close(CloseReason::ShuttingDown);
        closer.close_silently();
        assert!(closer.is_closed());
        assert_eq!(closer.reason(), Some(CloseReason::SlowConsumer));
        let silent = Closer::default();
        silent.close_silently();
        silent.close(CloseReason::ShuttingDown);
        assert_eq!(silent.reason(), None);
    }
}
