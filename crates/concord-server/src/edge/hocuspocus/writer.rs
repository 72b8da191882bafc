//! The writing half of a Hocuspocus socket: the y-websocket edge's [`Writer`] (batches, one
//! flush per batch, keepalive, the close frame) over [`SocketFrames`], which merges the socket's
//! own frames with every open document's outbox, each document's frames addressed to it. The
//! message for an idle interval is the Hocuspocus Ping (`[9]`): the provider reconnects after
//! 30 s without a message, and answers the Ping with a Pong, which tells the server it is
//! alive.
//!
//! [`Writer`]: crate::edge::ws::writer::Writer

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use concord_core::hocuspocus as hp;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::edge::ws::writer::Frames;
use crate::rooms::Outbox;

/// A document's outbox handed to the writer when the document opens: its frames go out
/// addressed to the key.
pub(crate) type Attach = (Arc<str>, Outbox);

type DocFrames = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// Every frame of one socket: its own queue (auth answers, closes, pongs) first, then the
/// open documents' outboxes. Ends once the reader is gone (its senders dropped) and every
/// document's outbox is drained.
pub(crate) struct SocketFrames {
    control: mpsc::Receiver<Bytes>,
    attach: mpsc::Receiver<Attach>,
    docs: SelectAll<DocFrames>,
}

impl SocketFrames {
    pub(crate) fn new(control: mpsc::Receiver<Bytes>, attach: mpsc::Receiver<Attach>) -> Self {
        SocketFrames {
            control,
            attach,
            docs: SelectAll::new(),
        }
    }
}

impl Frames for SocketFrames {
    async fn next_batch(&mut self, max: usize) -> Option<Vec<Bytes>> {
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            match self.try_next() {
                Some(frame) => batch.push(frame),
                None => break,
            }
        }
        Some(batch)
    }
}

impl SocketFrames {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                biased;
                Some((key, outbox)) = self.attach.recv() => self.docs.push(addressed(key, outbox)),
                Some(frame) = self.control.recv() => return Some(frame),
                Some(frame) = self.docs.next(), if !self.docs.is_empty() => return Some(frame),
                else => return None,
            }
        }
    }

    fn try_next(&mut self) -> Option<Bytes> {
        if let Ok(frame) = self.control.try_recv() {
            return Some(frame);
        }
        self.docs.next().now_or_never().flatten()
    }
}

/// A document's frames, addressed to `key`. The room's own auth message (y-protocols'
/// permission-denied, sent once to a read-only client that writes) is not passed on: a
/// Hocuspocus provider learns its scope from `Authenticated`, and its refused updates get
/// SyncStatus 0. Ends when the document is closed and its queue drained.
fn addressed(key: Arc<str>, outbox: Outbox) -> DocFrames {
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
