//! The writing half of a Hocuspocus socket: the socket's own frames and every open document's
//! outbox, each document's frames addressed to it, written in batches (one flush per batch),
//! with keepalive and the close frame the socket's [`CloseReason`] calls for.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message as WsMessage;
use bytes::Bytes;
use concord_core::hocuspocus as hp;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::edge::ws::writer::{LastSeen, end, send_all};
use crate::ops::stats::Counters;
use crate::rooms::{CloseReason, Closer, Outbox};

/// Most frames written with one flush.
const WRITE_BATCH: usize = 64;

/// A document's outbox handed to the writer when the document opens: its frames go out
/// addressed to the key.
pub(crate) type Attach = (Arc<str>, Outbox);

type Frames = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// What the writer of one socket works with.
pub(crate) struct Writer<'a> {
    /// [`crate::Config::keepalive_interval`].
    pub(crate) keepalive: Duration,
    pub(crate) shutdown: &'a CancellationToken,
    pub(crate) closer: &'a Closer,
    pub(crate) last_seen: &'a LastSeen,
    pub(crate) counters: &'a Counters,
}

impl Writer<'_> {
    /// Writes until the socket is asked to close (then sends its close frame), the peer is
    /// gone, or the server shuts down.
    ///
    /// Keepalive: a WebSocket ping every interval, and a Hocuspocus Ping (`[9]`) when nothing
    /// else was sent during it: the provider reconnects after 30 s without a message, and
    /// answers the Ping with a Pong, which also tells the server it is alive. A peer silent
    /// for three intervals is dropped.
    pub(crate) async fn run<S>(
        &self,
        mut sink: S,
        mut control: mpsc::Receiver<Bytes>,
        mut attach: mpsc::Receiver<Attach>,
    ) where
        S: Sink<WsMessage> + Unpin,
    {
        let (closer, interval) = (self.closer, self.keepalive);
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut docs: SelectAll<Frames> = SelectAll::new();
        let mut sent_since_tick = false;
        loop {
            let first = tokio::select! {
                biased;
                _ = closer.closed() => break,
                _ = self.shutdown.cancelled() => {
                    closer.close(CloseReason::ShuttingDown);
                    break;
                }
                Some((key, outbox)) = attach.recv() => {
                    docs.push(addressed(key, outbox));
                    continue;
                }
                Some(frame) = control.recv() => frame,
                Some(frame) = docs.next(), if !docs.is_empty() => frame,
                _ = ticker.tick() => {
                    if self.last_seen.elapsed() > interval * 3 {
                        tracing::info!("closing Hocuspocus socket: peer silent for three keepalive intervals");
                        closer.close_silently();
                        break;
                    }
                    if !send_all(&mut sink, vec![WsMessage::Ping(Bytes::new())], closer).await {
                        return;
                    }
                    if std::mem::take(&mut sent_since_tick) {
                        continue;
                    }
                    Bytes::from_static(hp::PING)
                }
            };
            sent_since_tick = true;
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH {
                if let Ok(frame) = control.try_recv() {
                    batch.push(frame);
                } else if let Some(Some(frame)) = docs.next().now_or_never() {
                    batch.push(frame);
                } else {
                    break;
                }
            }
            for frame in &batch {
                Counters::bump(&self.counters.frames_out);
                Counters::add(&self.counters.bytes_out, frame.len() as u64);
            }
            let messages = batch.into_iter().map(WsMessage::Binary).collect();
            if !send_all(&mut sink, messages, closer).await {
                return;
            }
        }
        end(&mut sink, closer).await;
    }
}

/// A document's frames, addressed to `key`. The room's own auth message (y-protocols'
/// permission-denied, sent once to a read-only client that writes) is not passed on: a
/// Hocuspocus provider learns its scope from `Authenticated`, and its refused updates get
/// SyncStatus 0. Ends when the document is closed and its queue drained.
fn addressed(key: Arc<str>, outbox: Outbox) -> Frames {
    futures_util::stream::unfold(outbox, |mut outbox| async move {
        outbox.recv().await.map(|frame| (frame, outbox))
    })
    .filter_map(move |frame| {
        let key = key.clone();
        async move {
            (!frame.starts_with(&[hp::AUTH, 0])).then(|| Bytes::from(hp::addressed(&key, &frame)))
        }
    })
    .boxed()
}
