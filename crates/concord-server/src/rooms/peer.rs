//! A connection as a room sees it: a bounded queue its frames go to, how to close it, and why.
//! Every edge (a WebSocket, an SSE stream) makes one [`Peer`] per connection and drains the
//! [`Outbox`] at its own pace; the reasons a connection ends are named here once, and each edge
//! says them its own way (a WebSocket close code, the end of a stream).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    pub(crate) closer: Closer,
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
}

struct QueueState {
    frames: VecDeque<Bytes>,
    /// [`Sender`]s alive; at 0 the outbox ends once it has taken the rest.
    senders: usize,
}

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
        if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
            state.frames.shrink_to(KEPT_CAPACITY);
        }
        drop(state);
        self.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }
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
            }),
            waker: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_frames: frames.max(2),
        });
        let peer = Peer {
            tx: Sender(queue.clone()),
            closer,
            awareness_only,
            stateless: false,
        };
        (peer, Outbox { queue })
    }

    /// Queues `frame` unless the queue is full (by frames, or by bytes: `max_bytes` bounds the
    /// backlog already queued, so one frame larger than it still goes out behind a small one).
    /// Returns false when it did not fit; the caller then closes the connection, never skips
    /// the frame.
    pub(crate) fn try_queue(&self, frame: Bytes, max_bytes: usize) -> bool {
        if self.queued_bytes() >= max_bytes {
            return false;
        }
        let queue = &self.tx.0;
        let len = frame.len();
        {
            let mut state = queue.lock();
            if state.frames.len() >= queue.max_frames {
                return false;
            }
            state.frames.push_back(frame);
            queue.queued_bytes.fetch_add(len, Ordering::Relaxed);
        }
        queue.waker.wake();
        true
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
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        self.queue.pop()
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
