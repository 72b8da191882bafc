//! The writing half of a WebSocket connection: drains the connection's outbox in batches (one
//! flush per batch), keeps the connection alive, and ends it with the close frame its
//! [`CloseReason`](crate::rooms::CloseReason) calls for. Generic over the socket's sink, so it
//! is tested without sockets.
//!
//! A y-websocket connection's sink is shared ([`SharedSink`]) with whoever queues a frame
//! while the writer is idle: the room's fan-out writes it to the socket itself, without
//! waiting, as a single-threaded server would, which spares the connection's task a wake-up per
//! frame (see `rooms/peer.rs`). The writer takes over what the socket could not take at once.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage};
use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::edge::ws::close::close_frame;
use crate::ops::stats::Counters;
use crate::rooms::{CloseReason, Closer, Outbox, Wire, WriteNow};

/// An awareness message with no entries: `[messageAwareness, length 1, count 0]`. Clients apply
/// it as a no-op, but it counts as a received message for their 30 s reconnect timer.
pub(crate) const EMPTY_AWARENESS: &[u8] = &[1, 1, 0];

/// Most queued frames written to a connection with one flush.
const WRITE_BATCH: usize = 64;

/// How long a close frame may take to go out before the connection is simply dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the writer of one connection works with.
pub(crate) struct Writer<'a> {
    /// [`crate::Config::keepalive_interval`].
    pub(crate) keepalive: Duration,
    pub(crate) shutdown: &'a CancellationToken,
    pub(crate) closer: &'a Closer,
    pub(crate) last_seen: &'a LastSeen,
    pub(crate) counters: &'a Arc<Counters>,
}

impl Writer<'_> {
    /// Writes until the connection is asked to close (then sends its close frame), the peer
    /// is gone, or the server shuts down.
    ///
    /// Keepalive: a ping every `keepalive`; a peer silent for three intervals is dropped; a
    /// connection sent nothing during an interval also gets [`EMPTY_AWARENESS`], so an idle
    /// y-websocket client (which reconnects after 30 s without a message) stays connected.
    pub(crate) async fn run<S>(&self, sink: S, mut outbox: Outbox)
    where
        S: Sink<WsMessage> + Unpin + Send + 'static,
    {
        // The fan-out writes to the socket itself while this task is not writing.
        let wire = Arc::new(SharedSink {
            sink: Mutex::new(sink),
            counters: self.counters.clone(),
        });
        outbox.install(wire.clone());
        self.drain(SharedRef(wire), outbox, EMPTY_AWARENESS).await;
    }

    /// [`Writer::run`] over any source of frames, with `idle` as the message sent in an
    /// interval during which nothing else was (the Hocuspocus edge sends its Ping there).
    pub(crate) async fn drain<S, F>(&self, mut sink: S, mut frames: F, idle: &'static [u8])
    where
        S: Sink<WsMessage> + Unpin,
        F: Frames,
    {
        let (closer, interval) = (self.closer, self.keepalive);
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent_since_tick = false;
        // Made once, not per frame: each new one registers a waiter under the token's lock.
        let mut closed = std::pin::pin!(closer.closed());
        let mut shutdown = std::pin::pin!(self.shutdown.cancelled());
        loop {
            // This frame and whatever else is queued already go out in one write: a busy
            // room's fan-out costs a syscall per batch, not per frame.
            let (batch, claimed) = tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = &mut shutdown => {
                    closer.close(CloseReason::ShuttingDown);
                    break;
                }
                batch = frames.next_batch(WRITE_BATCH) => match batch {
                    Some(batch) => {
                        sent_since_tick = true;
                        (batch, true)
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    if self.last_seen.elapsed() > interval * 3 {
                        tracing::info!("closing: peer silent for three keepalive intervals");
                        closer.close_silently();
                        break;
                    }
                    let ping = vec![WsMessage::Ping(Bytes::new())];
                    if !send_all(&mut sink, ping, closer, &mut closed).await {
                        return;
                    }
                    if std::mem::take(&mut sent_since_tick) | frames.wrote_elsewhere() {
                        continue;
                    }
                    (vec![Bytes::from_static(idle)], false)
                }
            };
            for frame in &batch {
                self.counters.frame_out(frame.len());
            }
            let messages = batch.into_iter().map(WsMessage::Binary).collect();
            if !send_all(&mut sink, messages, closer, &mut closed).await {
                return;
            }
            if claimed {
                frames.written();
            }
        }
        // Boxed: its timers would otherwise take room in every idle connection's writer.
        Box::pin(end(&mut sink, closer)).await;
    }
}

/// Where a writer's frames come from: a connection's [`Outbox`], or what a protocol with
/// several queues per socket merges.
pub(crate) trait Frames {
    /// Waits for frames and takes up to `max` of them (none when the source only owes the
    /// socket a flush); `None` once no more will come. The writer calls [`Frames::written`]
    /// once they are written.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = Option<Vec<Bytes>>> + Send;
    /// The batch [`Frames::next_batch`] returned is written.
    fn written(&mut self) {}
    /// Whether frames reached the socket without this writer since the last call.
    fn wrote_elsewhere(&mut self) -> bool {
        false
    }
}

impl Frames for Outbox {
    async fn next_batch(&mut self, max: usize) -> Option<Vec<Bytes>> {
        self.claim(max).await
    }

    fn written(&mut self) {
        self.release();
    }

    fn wrote_elsewhere(&mut self) -> bool {
        self.wrote_through_wire()
    }
}

/// A connection's sink, shared by its writer and the fan-out writing through it as a [`Wire`].
/// Each use holds the lock for one call that does not wait, so a whole frame goes in at once.
struct SharedSink<S> {
    sink: Mutex<S>,
    counters: Arc<Counters>,
}

impl<S> SharedSink<S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        // A sink that panicked mid-call has failed its connection; its next call says so.
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S> Wire for SharedSink<S>
where
    S: Sink<WsMessage> + Unpin + Send,
{
    fn write_now(&self, next: &mut dyn FnMut() -> Option<Bytes>) -> WriteNow {
        let mut sink = self.lock();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match sink.poll_ready_unpin(&mut cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return WriteNow::Failed,
                Poll::Pending => return WriteNow::Blocked,
            }
            let Some(frame) = next() else { break };
            self.counters.frame_out(frame.len());
            if sink.start_send_unpin(WsMessage::Binary(frame)).is_err() {
                return WriteNow::Failed;
            }
        }
        match sink.poll_flush_unpin(&mut cx) {
            Poll::Ready(Ok(())) => WriteNow::Done,
            Poll::Ready(Err(_)) => WriteNow::Failed,
            Poll::Pending => WriteNow::Blocked,
        }
    }
}

/// The writer's handle to a [`SharedSink`].
struct SharedRef<S>(Arc<SharedSink<S>>);

impl<S> Sink<WsMessage> for SharedRef<S>
where
    S: Sink<WsMessage> + Unpin,
{
    type Error = S::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.lock().poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), S::Error> {
        self.0.lock().start_send_unpin(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.lock().poll_flush_unpin(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.lock().poll_close_unpin(cx)
    }
}

/// Ends a connection: the close frame its [`CloseReason`] calls for, or, with none, only the
/// closing of the sink (if the peer sent a close frame, tungstenite has queued the reply that
/// completes the closing handshake, and closing the sink flushes it).
pub(crate) async fn end<S>(sink: &mut S, closer: &Closer)
where
    S: Sink<WsMessage> + Unpin,
{
    match closer.reason() {
        Some(reason) => {
            let (code, reason) = close_frame(&reason);
            close(sink, code, &reason).await;
        }
        None => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
    }
}

/// Sends `messages` with one flush at the end, unless the connection is asked to close
/// meanwhile (`closed`, the writer's own wait for `closer`, never polled again once it
/// completed: then this returns false). Returns false when the connection is finished (the
/// peer is gone, or closing was requested mid-send: a socket whose send blocks cannot take a
/// close frame either).
async fn send_all<S>(
    sink: &mut S,
    messages: Vec<WsMessage>,
    closer: &Closer,
    closed: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> bool
where
    S: Sink<WsMessage> + Unpin,
{
    let sending = async {
        for message in messages {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        result = sending => {
            if result.is_err() {
                closer.close_silently();
                return false;
            }
            true
        }
        _ = closed => false,
    }
}

/// Sends a close frame and closes the sink, each within [`CLOSE_TIMEOUT`].
pub(crate) async fn close<S>(sink: &mut S, code: u16, reason: &str)
where
    S: Sink<WsMessage> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(WsMessage::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

/// When the peer last sent anything, for dead-peer detection: the reader touches it, the
/// writer reads it.
pub(crate) struct LastSeen {
    start: Instant,
    millis: AtomicU64,
}

impl LastSeen {
    pub(crate) fn new() -> Self {
        LastSeen {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(now, Ordering::Relaxed);
    }

    pub(crate) fn elapsed(&self) -> Duration {
        let seen = Duration::from_millis(self.millis.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::Peer;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    /// A sink whose messages the test reads, holding `capacity` of them before it blocks.
    fn sink(capacity: usize) -> (PollSender<WsMessage>, mpsc::Receiver<WsMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        (PollSender::new(tx), rx)
    }

    struct Fixture {
        shutdown: CancellationToken,
        closer: Closer,
        last_seen: LastSeen,
        counters: Arc<Counters>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                shutdown: CancellationToken::new(),
                closer: Closer::default(),
                last_seen: LastSeen::new(),
                counters: Arc::default(),
            }
        }

        fn writer(&self) -> Writer<'_> {
            Writer {
                keepalive: Duration::from_secs(15),
                shutdown: &self.shutdown,
                closer: &self.closer,
                last_seen: &self.last_seen,
                counters: &self.counters,
            }
        }
    }

    fn binary(message: WsMessage) -> Bytes {
        match message {
            WsMessage::Binary(data) => data,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    fn close_code(message: Option<WsMessage>) -> Option<u16> {
        match message {
            Some(WsMessage::Close(Some(frame))) => Some(frame.code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn queued_frames_go_out_in_order_then_the_close_frame_of_the_reason() {
        let fx = Fixture::new();
        let (peer, outbox) = Peer::new(16, fx.closer.clone(), false);
        for frame in [&b"a"[..], b"bb", b"ccc"] {
            assert!(peer.try_queue(Bytes::copy_from_slice(frame), usize::MAX));
        }
        let (sink, mut written) = sink(16);
        let writer = fx.writer();
        let writing = writer.run(sink, outbox);
        let closing = async {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(binary(written.recv().await.unwrap()));
            }
            fx.closer.close(CloseReason::SlowConsumer);
            (got, written)
        };
        let ((), (got, mut written)) = tokio::join!(writing, closing);
        assert_eq!(got, [&b"a"[..], b"bb", b"ccc"]);
        assert_eq!(close_code(written.recv().await), Some(1013));
        assert_eq!(fx.counters.frames_out.load(Ordering::Relaxed), 3);
        assert_eq!(fx.counters.bytes_out.load(Ordering::Relaxed), 6);
        assert_eq!(peer.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_running_writer_lets_whoever_queues_a_frame_write_it_to_the_socket() {
        let fx = Fixture::new();
        let (peer, outbox) = Peer::new(16, fx.closer.clone(), false);
        let (sink, mut written) = sink(16);
        let writer = fx.writer();
        let mut writing = std::pin::pin!(writer.run(sink, outbox));
        // Its first poll installs the socket as the connection's wire; then it waits.
        assert!(futures_util::poll!(writing.as_mut()).is_pending());
        assert!(peer.try_queue(Bytes::from_static(b"a"), usize::MAX));
        // On the socket already, though the writer was not polled again.
        assert_eq!(binary(written.try_recv().unwrap()), "a");
        assert_eq!(fx.counters.frames_out.load(Ordering::Relaxed), 1);
        assert_eq!(fx.counters.bytes_out.load(Ordering::Relaxed), 1);
        // Right after a write, frames are the writer's to batch (or, after a pause, written at
        // once again): either way they go out in order.
        for frame in [&b"bb"[..], b"ccc"] {
            assert!(peer.try_queue(Bytes::copy_from_slice(frame), usize::MAX));
        }
        let reading = async {
            let got = [written.recv().await, written.recv().await].map(|m| binary(m.unwrap()));
            fx.closer.close(CloseReason::SlowConsumer);
            (got, written.recv().await)
        };
        let ((), (got, close)) = tokio::join!(writing, reading);
        assert_eq!(got, [&b"bb"[..], b"ccc"]);
        assert_eq!(close_code(close), Some(1013));
        assert_eq!(fx.counters.frames_out.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn frames_a_full_socket_cannot_take_are_written_by_the_writer_in_order() {
        let fx = Fixture::new();
        let (peer, outbox) = Peer::new(64, fx.closer.clone(), false);
        // Takes two frames, then blocks until the test reads.
        let (sink, mut written) = sink(2);
        let writer = fx.writer();
        let writing = writer.run(sink, outbox);
        let queueing = async {
            tokio::task::yield_now().await;
            let mut got = Vec::new();
            for i in 0..20u8 {
                assert!(peer.try_queue(Bytes::from(vec![i]), usize::MAX));
            }
            while got.len() < 20 {
                got.push(binary(written.recv().await.unwrap())[0]);
            }
            fx.closer.close(CloseReason::SlowConsumer);
            got
        };
        let ((), got) = tokio::join!(writing, queueing);
        assert_eq!(got, (0..20).collect::<Vec<u8>>());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_gets_pings_and_empty_awareness_and_a_silent_peer_is_dropped() {
        let fx = Fixture::new();
        let (_peer, outbox) = Peer::new(16, fx.closer.clone(), false);
        let (sink, mut written) = sink(64);
        let writer = fx.writer();
        let writing = writer.run(sink, outbox);
        let watching = async {
            let mut seen = Vec::new();
            while let Some(message) = written.recv().await {
                seen.push(message);
            }
            seen
        };
        // Paused time: the clock jumps to each tick; the peer never answers.
        let ((), seen) = tokio::join!(writing, watching);
        let kinds: Vec<&str> = seen
            .iter()
            .map(|m| match m {
                WsMessage::Ping(_) => "ping",
                WsMessage::Binary(data) if &data[..] == EMPTY_AWARENESS => "empty awareness",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // Three intervals of pings and keep-alive awareness; at the fourth tick the peer has
        // been silent for more than three intervals and is dropped without a close frame.
        assert_eq!(
            kinds,
            [
                "ping",
                "empty awareness",
                "ping",
                "empty awareness",
                "ping",
                "empty awareness"
            ]
        );
        assert!(fx.closer.is_closed());
        assert_eq!(fx.closer.reason(), None);
    }

    #[tokio::test]
    async fn shutdown_closes_with_1001() {
        let fx = Fixture::new();
        let (_peer, outbox) = Peer::new(16, fx.closer.clone(), false);
        let (sink, mut written) = sink(4);
        fx.shutdown.cancel();
        fx.writer().run(sink, outbox).await;
        assert_eq!(close_code(written.recv().await), Some(1001));
        assert_eq!(fx.closer.reason(), Some(CloseReason::ShuttingDown));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stopped_reading_does_not_hold_the_writer_once_closing_is_asked() {
        let fx = Fixture::new();
        let (peer, outbox) = Peer::new(16, fx.closer.clone(), false);
        for _ in 0..4 {
            assert!(peer.try_queue(Bytes::from_static(b"x"), usize::MAX));
        }
        // The sink takes one message and then blocks, as a full socket does.
        let (sink, _written) = sink(1);
        let writer = fx.writer();
        let writing = writer.run(sink, outbox);
        let stopping = async {
            tokio::task::yield_now().await;
            fx.closer.close(CloseReason::SlowConsumer);
        };
        tokio::join!(writing, stopping);
        assert!(fx.closer.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn last_seen_measures_silence() {
        let seen = LastSeen::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(seen.elapsed(), Duration::from_secs(5));
        seen.touch();
        assert_eq!(seen.elapsed(), Duration::ZERO);
    }
}
