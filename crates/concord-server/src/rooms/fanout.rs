//! Fan-out: queues a room's frames for its peers, encoded once and shared by every recipient.
//!
//! Overflow policy: a peer whose queue is full (by frames or by bytes) is closed with
//! [`CloseReason::SlowConsumer`] and removed from the room, never skipped, since skipping would
//! leave its document silently behind; its client reconnects and resyncs. Awareness frames,
//! soft state that clients renew every 15 s, are the exception: a peer that is behind is not
//! sent more of them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use concord_core::{ConnId, Effects, Room, is_awareness_frame};

use crate::ops::stats::Counters;
use crate::rooms::peer::{CloseReason, Peer, Queueing, Turn};

/// Frames queued for a peer past which it is sent no more awareness: a healthy connection's
/// queue is nearly empty, and each frame waiting delays the document updates behind it.
const AWARENESS_BACKLOG: usize = 64;

/// Who an application message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recipients {
    /// Every connection that takes them.
    All,
    /// That connection alone.
    Only(ConnId),
    /// Every one but that connection (its sender).
    AllBut(ConnId),
}

impl Recipients {
    fn includes(self, id: ConnId) -> bool {
        match self {
            Recipients::All => true,
            Recipients::Only(only) => only == id,
            Recipients::AllBut(sender) => sender != id,
        }
    }
}

/// Limits applied when queueing frames to peers.
#[derive(Clone)]
pub(crate) struct QueueLimits {
    /// [`crate::Config::outbound_queue_bytes`].
    pub(crate) max_bytes: usize,
    /// Where skipped awareness frames and slow consumers are counted.
    pub(crate) counters: Arc<Counters>,
}

/// The peers of one room, and the engine whose frames they get.
pub(crate) struct Peers<'a> {
    pub(crate) room: &'a mut Room,
    pub(crate) peers: &'a mut HashMap<ConnId, Peer>,
    pub(crate) limits: &'a QueueLimits,
    /// Writing turns taken while queueing: their frames are written to the sockets once the
    /// room's lock is released.
    pub(crate) turns: &'a mut Vec<Turn>,
}

impl Peers<'_> {
    /// Delivers `effects` caused by `sender` (who is "the sender" and who "the others" are).
    /// Peers whose queues overflow are closed and removed, and the removal of their awareness
    /// states delivered in turn.
    pub(crate) fn deliver(&mut self, sender: ConnId, effects: &Effects) {
        let mut dropped = Vec::new();
        for out in &effects.send {
            match out.to {
                concord_core::Recipients::Sender => {
                    self.deliver_to(sender, &out.frame, &mut dropped)
                }
                concord_core::Recipients::Others | concord_core::Recipients::Everyone => {
                    let ids: Vec<ConnId> = self
                        .peers
                        .keys()
                        .copied()
                        .filter(|&id| out.to == concord_core::Recipients::Everyone || id != sender)
                        .collect();
                    for id in ids {
                        self.deliver_to(id, &out.frame, &mut dropped);
                    }
                }
            }
        }
        self.drop_peers(dropped);
    }

    /// Queues `frame` (an application message) for the peers that take them among `to`;
    /// returns how many it was queued for.
    pub(crate) fn deliver_stateless(&mut self, frame: &Bytes, to: Recipients) -> usize {
        let ids: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(id, peer)| peer.stateless && to.includes(**id))
            .map(|(id, _)| *id)
            .collect();
        let mut dropped = Vec::new();
        for &id in &ids {
            self.deliver_to(id, frame, &mut dropped);
        }
        let delivered = ids.len() - dropped.len();
        self.drop_peers(dropped);
        delivered
    }

    /// Queues the frames a joining peer starts with.
    pub(crate) fn deliver_join(&mut self, conn: ConnId, frames: &[Bytes]) {
        let mut dropped = Vec::new();
        for frame in frames {
            self.deliver_to(conn, frame, &mut dropped);
        }
        self.drop_peers(dropped);
    }

    fn drop_peers(&mut self, mut dropped: Vec<ConnId>) {
        while let Some(id) = dropped.pop() {
            let effects = self.room.leave(id);
            for out in &effects.send {
                let ids: Vec<ConnId> = self.peers.keys().copied().collect();
                for other in ids {
                    self.deliver_to(other, &out.frame, &mut dropped);
                }
            }
        }
    }

    /// Queues one frame for one peer, or closes and removes that peer if it does not fit.
    fn deliver_to(&mut self, id: ConnId, frame: &Bytes, dropped: &mut Vec<ConnId>) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let awareness = is_awareness_frame(frame);
        if peer.awareness_only && !awareness {
            return;
        }
        // A flood of presence from one client would otherwise fill every other client's queue
        // (delaying their document updates, then getting them closed) before its sender is
        // rate-limited. Document updates are never skipped.
        if awareness && behind(peer, self.limits.max_bytes) {
            Counters::bump(&self.limits.counters.awareness_skipped);
            return;
        }
        match peer.queue(frame.clone(), self.limits.max_bytes) {
            Queueing::Queued => return,
            Queueing::Turn(turn) => {
                self.turns.push(turn);
                return;
            }
            Queueing::Full => {}
        }
        if let Some(peer) = self.peers.remove(&id) {
            if !peer.closer().is_closed() {
                tracing::warn!(conn = id, "outbound queue full; closing slow connection");
            }
            peer.closer().close(CloseReason::SlowConsumer);
            Counters::bump(&self.limits.counters.slow_consumers);
        }
        dropped.push(id);
    }
}

/// Whether `peer` is behind: more than [`AWARENESS_BACKLOG`] frames, or more than a quarter of
/// its byte bound, wait in its outbound queue.
fn behind(peer: &Peer, max_bytes: usize) -> bool {
    peer.queued_frames() > AWARENESS_BACKLOG || peer.queued_bytes() > max_bytes / 4
}
