//! What editing clients type: consecutive keystrokes of the automerge-paper trace, or small
//! random inserts and deletes, from a seeded generator so a run can be repeated.

use std::sync::Arc;

use yrs::{Any, Map, MapRef, Text, TextRef, TransactionMut};

use super::trace::Trace;

/// A small, fast, seedable generator (SplitMix64): the load needs reproducible choices, not
/// cryptographic ones.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where edits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Each client replays the automerge-paper trace from its start, one trace transaction
    /// (mostly one keystroke) per edit, into a text field of its own (`trace-<client>`).
    Trace,
    /// Small random edits on one text shared by the document's clients: three in four insert
    /// 1-4 letters, one in four deletes 1-3 characters, at random positions.
    Random,
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Source, String> {
        match s {
            "trace" => Ok(Source::Trace),
            "random" => Ok(Source::Random),
            other => Err(format!("{other:?} is neither trace nor random")),
        }
    }
}

/// The root text of client `index` in trace mode.
pub(crate) fn trace_field(index: usize) -> String {
    format!("trace-{index}")
}

/// The root text shared by all clients in random mode.
pub(crate) const SHARED_TEXT: &str = "text";

/// The root map in which a client marks its delete-only edits (see [`Editor::edit`]).
pub(crate) const MARKS: &str = "load";

/// One client's edits.
pub(crate) struct Editor {
    kind: Kind,
    marks: MapRef,
    mark_key: Arc<str>,
}

enum Kind {
    Trace {
        trace: Arc<Trace>,
        text: TextRef,
        next: usize,
    },
    Random {
        text: TextRef,
        rng: Rng,
    },
}

impl Editor {
    /// The editor of client `index` of `doc`. `trace` is needed for [`Source::Trace`].
    pub(crate) fn new(
        source: Source,
        doc: &yrs::Doc,
        index: usize,
        trace: Option<Arc<Trace>>,
        seed: u64,
    ) -> Editor {
        let kind = match (source, trace) {
            (Source::Trace, Some(trace)) => Kind::Trace {
                trace,
                text: doc.get_or_insert_text(trace_field(index).as_str()),
                next: 0,
            },
            _ => Kind::Random {
                text: doc.get_or_insert_text(SHARED_TEXT),
                rng: Rng::new(seed),
            },
        };
        Editor {
            kind,
            marks: doc.get_or_insert_map(MARKS),
            mark_key: Arc::from(format!("c{index}")),
        }
    }

    /// Makes edit number `seq` in `txn`. Every edit must advance this client's clock, so that
    /// receivers can tell from the clocks they integrate which edits arrived: inserts do, a
    /// delete alone does not (deletions carry no clock), so a delete-only edit also sets this
    /// client's key in the `load` map to `seq`.
    pub(crate) fn edit(&mut self, txn: &mut TransactionMut, seq: u64) {
        let inserted = match &mut self.kind {
            Kind::Trace { trace, text, next } => {
                let mut inserted = false;
                for (pos, deleted, insert) in &trace.txns[*next].patches {
                    if *deleted > 0 {
                        text.remove_range(txn, *pos, *deleted);
                    }
                    if !insert.is_empty() {
                        text.insert(txn, *pos, insert);
                        inserted = true;
                    }
                }
                *next += 1;
                inserted
            }
            Kind::Random { text, rng } => {
                let len = text.len(txn);
                if len > 0 && rng.unit() < 0.25 {
                    let pos = rng.below(u64::from(len)) as u32;
                    let count = (1 + rng.below(3) as u32).min(len - pos);
                    text.remove_range(txn, pos, count);
                    false
                } else {
                    let pos = rng.below(u64::from(len) + 1) as u32;
                    let mut letters = [0u8; 4];
                    let n = 1 + rng.below(4) as usize;
                    for letter in &mut letters[..n] {
                        *letter = b'a' + rng.below(26) as u8;
                    }
                    let chunk = std::str::from_utf8(&letters[..n]).unwrap_or("x");
                    text.insert(txn, pos, chunk);
                    true
                }
            }
        };
        if !inserted {
            let value = i64::try_from(seq).unwrap_or(i64::MAX);
            self.marks.insert(
                txn,
                self.mark_key.clone(),
                Any::Number(yrs::any::Number::Int(value)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Transact};

    #[test]
    fn every_random_edit_advances_the_clock() {
        let doc = Doc::with_client_id(7);
        let mut editor = Editor::new(Source::Random, &doc, 0, None, 42);
        let mut clock = 0;
        for seq in 0..500 {
            let mut txn = doc.transact_mut();
            editor.edit(&mut txn, seq);
            drop(txn);
            let now = doc.transact().state_vector().get(&doc.client_id());
            assert!(now > clock, "edit {seq} did not advance the clock");
            clock = now;
        }
        let text = doc.get_or_insert_text(SHARED_TEXT);
        assert!(!text.get_string(&doc.transact()).is_empty());
    }

    #[test]
    fn the_generator_is_reproducible() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(9);
        assert!((0..1000).all(|_| r.below(7) < 7 && (0.0..1.0).contains(&r.unit())));
    }
}
