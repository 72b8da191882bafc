//! Save acknowledgements (Concord's message 100) on a WebSocket connection: the reader hands
//! each save request's ticket to the connection's queue; the acknowledger answers them in the
//! order they were made, once each is durable. The ingest path decides when that is.

use tokio::sync::{mpsc, oneshot};

use crate::ingest::SaveTicket;
use crate::rooms::{CloseReason, Peer};

/// Most save requests of one connection waiting to be answered. Overflow policy: the reader
/// waits for room (its reads pause) until the store catches up.
const SAVE_QUEUE: usize = 1024;

/// The connection's queue of save requests, made on the first request (plain y-websocket
/// clients never send one, and pay nothing for it).
pub(crate) struct SaveQueue {
    tx: Option<mpsc::Sender<SaveTicket>>,
    /// Hands the receiving end to the acknowledger when the queue is made.
    start: Option<oneshot::Sender<mpsc::Receiver<SaveTicket>>>,
}

/// The queue could not take the ticket: the connection is ending.
#[derive(Debug)]
pub(crate) struct Ended;

impl SaveQueue {
    /// The queue, and where the acknowledger gets its receiving end once the queue is made.
    pub(crate) fn new() -> (SaveQueue, oneshot::Receiver<mpsc::Receiver<SaveTicket>>) {
        let (start, started) = oneshot::channel();
        let queue = SaveQueue {
            tx: None,
            start: Some(start),
        };
        (queue, started)
    }

    /// Queues `ticket`, waiting while the queue is full.
    pub(crate) async fn send(&mut self, ticket: SaveTicket) -> Result<(), Ended> {
        let start = &mut self.start;
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(SAVE_QUEUE);
            if let Some(start) = start.take() {
                // The acknowledger is gone only when the connection ends: sends then fail.
                let _ = start.send(rx);
            }
            tx
        });
        tx.send(ticket).await.map_err(|_| Ended)
    }
}

/// Answers a connection's save requests in the order they were made. Tickets resolve in order
/// anyway, so waiting one after another costs nothing and a client may match acknowledgements
/// first in, first out. A request whose updates could not be stored is never answered: the
/// client keeps showing "unsaved" and sends them again when it next syncs.
pub(crate) async fn acknowledge(
    started: oneshot::Receiver<mpsc::Receiver<SaveTicket>>,
    peer: Peer,
) {
    let Ok(mut tickets) = started.await else {
        return;
    };
    while let Some(ticket) = tickets.recv().await {
        if !ticket.durable.wait().await {
            continue;
        }
        // Acknowledgements are few and small: only the frame bound applies to them.
        if !peer.try_queue(concord_core::encode_saved(ticket.id), usize::MAX)
            && !peer.closer().is_closed()
        {
            peer.closer().close(CloseReason::SlowConsumer);
        }
    }
}
