//! Who has received which edit, and when: the measurement behind fan-out latency and missing
//! deliveries.
//!
//! Every edit advances its sender's clock (see `Editor::edit`). The sender writes the clock its
//! edit ends at into a slot before the frame leaves; a receiver, after applying an update, reads
//! which clock ranges that transaction integrated (`TransactionMut::insert_set`) and marks as
//! delivered every edit of that sender whose end clock is covered. Slots are preallocated
//! atomics, so neither side allocates or locks per edit. An edit's latency runs from its
//! sender's clock reading just before the frame is written to the socket until the last
//! receiver of the document has applied it. All clocks are one `Instant` of this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;
use yrs::block::ClientID;

/// Nanoseconds since the run's epoch.
pub(crate) fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One edit.
#[derive(Default)]
struct Slot {
    /// The sender's clock once the edit is made (exclusive end of its last struct).
    end_clock: AtomicU32,
    /// When the frame was handed to the socket.
    made_ns: AtomicU64,
    /// Receivers that have not applied it yet.
    remaining: AtomicU32,
    /// When the last receiver applied it.
    done_ns: AtomicU64,
}

/// The edits of one sender.
pub(crate) struct Ledger {
    slots: Box<[Slot]>,
    /// Slots published so far (written before their frames are sent).
    made: AtomicUsize,
    /// Receivers per edit: the other clients of the document.
    receivers: u32,
    /// Woken when an edit has reached every receiver (the sender's in-flight window).
    completed: Notify,
}

/// The ledgers of one document's clients, and who is who.
pub(crate) struct DocLedger {
    senders: Vec<Ledger>,
    by_client: HashMap<ClientID, usize>,
    /// Deliveries still expected, over the whole run (shared by every document).
    outstanding: std::sync::Arc<AtomicI64>,
}

impl DocLedger {
    /// A ledger for clients `ids` (index = client index in the document), each making at most
    /// `edits` edits.
    pub(crate) fn new(
        ids: &[ClientID],
        edits: usize,
        outstanding: std::sync::Arc<AtomicI64>,
    ) -> DocLedger {
        let receivers = u32::try_from(ids.len().saturating_sub(1)).unwrap_or(u32::MAX);
        DocLedger {
            senders: ids
                .iter()
                .map(|_| Ledger {
                    slots: (0..edits).map(|_| Slot::default()).collect(),
                    made: AtomicUsize::new(0),
                    receivers,
                    completed: Notify::new(),
                })
                .collect(),
            by_client: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            outstanding,
        }
    }

    /// Sender `sender` made edit `seq`, ending at `end_clock`, and sends it now.
    pub(crate) fn publish(&self, sender: usize, seq: usize, end_clock: u32, now_ns: u64) {
        let ledger = &self.senders[sender];
        let slot = &ledger.slots[seq];
        slot.end_clock.store(end_clock, Ordering::Relaxed);
        slot.made_ns.store(now_ns, Ordering::Relaxed);
        slot.remaining.store(ledger.receivers, Ordering::Relaxed);
        self.outstanding
            .fetch_add(i64::from(ledger.receivers), Ordering::Relaxed);
        // Publishes the slot's fields to the receivers that load `made` with Acquire.
        ledger.made.store(seq + 1, Ordering::Release);
    }

    /// Whether edit `seq` of `sender` has reached every receiver.
    pub(crate) fn is_complete(&self, sender: usize, seq: usize) -> bool {
        self.senders[sender].slots[seq]
            .remaining
            .load(Ordering::Acquire)
            == 0
    }

    /// Waits until edit `seq` of `sender` has reached every receiver.
    pub(crate) async fn wait_complete(&self, sender: usize, seq: usize) {
        let ledger = &self.senders[sender];
        while !self.is_complete(sender, seq) {
            // `notify_one` keeps a permit when nobody waits, so a completion between the check
            // above and this wait is not lost.
            ledger.completed.notified().await;
        }
    }

    /// Fan-out latencies (ns) of every edit that reached all its receivers, and the number
    /// of edits made.
    pub(crate) fn collect(&self, latencies: &mut Vec<u64>) -> usize {
        let mut made = 0;
        for ledger in &self.senders {
            let count = ledger.made.load(Ordering::Acquire);
            made += count;
            if ledger.receivers == 0 {
                continue;
            }
            for slot in &ledger.slots[..count] {
                if slot.remaining.load(Ordering::Acquire) == 0 {
                    let done = slot.done_ns.load(Ordering::Relaxed);
                    latencies.push(done.saturating_sub(slot.made_ns.load(Ordering::Relaxed)));
                }
            }
        }
        made
    }

    /// Edits made by each sender.
    pub(crate) fn made(&self) -> Vec<usize> {
        self.senders
            .iter()
            .map(|l| l.made.load(Ordering::Acquire))
            .collect()
    }
}

/// One receiver's view: how far it has got in each sender's edits.
pub(crate) struct Inbox {
    ledger: std::sync::Arc<DocLedger>,
    /// Own index: own edits are not deliveries.
    me: usize,
    next: Vec<usize>,
    epoch: Instant,
    /// Deliveries recorded by this receiver.
    pub(crate) delivered: u64,
    /// When the last of them happened (ns since the epoch).
    pub(crate) last_ns: u64,
}

impl Inbox {
    pub(crate) fn new(ledger: std::sync::Arc<DocLedger>, me: usize, epoch: Instant) -> Inbox {
        let senders = ledger.senders.len();
        Inbox {
            ledger,
            me,
            next: vec![0; senders],
            epoch,
            delivered: 0,
            last_ns: 0,
        }
    }

    /// A transaction just integrated `client`'s structs up to `end_clock` (exclusive).
    pub(crate) fn arrived(&mut self, client: ClientID, end_clock: u32) {
        let Some(&sender) = self.ledger.by_client.get(&client) else {
            return;
        };
        if sender == self.me {
            return;
        }
        let ledger = &self.ledger.senders[sender];
        let made = ledger.made.load(Ordering::Acquire);
        let mut seq = self.next[sender];
        if seq >= made || ledger.slots[seq].end_clock.load(Ordering::Relaxed) > end_clock {
            return;
        }
        let now = nanos_since(self.epoch);
        let mut count = 0;
        while seq < made && ledger.slots[seq].end_clock.load(Ordering::Relaxed) <= end_clock {
            let slot = &ledger.slots[seq];
            if slot.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                slot.done_ns.store(now, Ordering::Relaxed);
                ledger.completed.notify_one();
            }
            seq += 1;
            count += 1;
        }
        self.next[sender] = seq;
        self.delivered += count;
        self.last_ns = now;
        self.ledger
            .outstanding
            .fetch_sub(i64::try_from(count).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_edit_completes_when_every_other_client_has_it() {
        let ids = [ClientID::new(1), ClientID::new(2), ClientID::new(3)];
        let outstanding = Arc::new(AtomicI64::new(0));
        let ledger = Arc::new(DocLedger::new(&ids, 4, outstanding.clone()));
        let epoch = Instant::now();
        ledger.publish(0, 0, 5, 0);
        ledger.publish(0, 1, 6, 0);
        assert_eq!(outstanding.load(Ordering::Relaxed), 4);
        let mut b = Inbox::new(ledger.clone(), 1, epoch);
        let mut c = Inbox::new(ledger.clone(), 2, epoch);
        // Client 1's own structs, and a range short of the first edit, deliver nothing.
        b.arrived(ids[1], 100);
        b.arrived(ids[0], 4);
        assert_eq!(b.delivered, 0);
        b.arrived(ids[0], 6);
        assert_eq!(b.delivered, 2);
        assert!(!ledger.is_complete(0, 0));
        c.arrived(ids[0], 5);
        assert!(ledger.is_complete(0, 0) && !ledger.is_complete(0, 1));
        c.arrived(ids[0], 6);
        assert!(ledger.is_complete(0, 1));
        assert_eq!(outstanding.load(Ordering::Relaxed), 0);
        let mut latencies = Vec::new();
        assert_eq!(ledger.collect(&mut latencies), 2);
        assert_eq!(latencies.len(), 2);
    }
}
