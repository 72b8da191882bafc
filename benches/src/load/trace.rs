//! The automerge-paper editing trace as the load tool uses it: its keystroke patches, replayed
//! by editing clients, and the document it makes as one Yjs update, preloaded for late joiners.

use std::sync::{Arc, Mutex, OnceLock};

use yrs::{Doc, GetString, ReadTxn, StateVector, Transact};

/// The trace file, in `benches/data`.
pub(crate) const TRACE_FILE: &str = "automerge-paper.json.gz";

/// The parsed trace.
pub(crate) use crate::Trace;

/// The trace, parsed once per process.
pub(crate) fn trace() -> anyhow::Result<Arc<Trace>> {
    static TRACE: OnceLock<Arc<Trace>> = OnceLock::new();
    if let Some(trace) = TRACE.get() {
        return Ok(trace.clone());
    }
    let trace = Arc::new(crate::read_trace(TRACE_FILE).map_err(anyhow::Error::msg)?);
    Ok(TRACE.get_or_init(|| trace).clone())
}

/// A document the trace makes (the whole trace, or its first transactions) as one Yjs v1 update
/// of the root text `text`, and the text it holds.
pub(crate) struct FullDocument {
    pub(crate) update: Vec<u8>,
    pub(crate) text: String,
}

/// The root text the full document lives in.
pub(crate) const FULL_TEXT: &str = "text";

/// The document the first `count` trace transactions make, built by replaying their patches
/// through a yrs `Text`, one transaction per trace transaction (the history, tombstones
/// included, that a server holding this document would have). The last one built is kept.
pub(crate) fn document(count: usize) -> anyhow::Result<Arc<FullDocument>> {
    static LAST: Mutex<Option<(usize, Arc<FullDocument>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((n, full)) = last.as_ref()
        && *n == count
    {
        return Ok(full.clone());
    }
    let trace = trace()?;
    anyhow::ensure!(
        count <= trace.txns.len(),
        "the trace has {} transactions, not {count}",
        trace.txns.len()
    );
    let doc = Doc::with_client_id(crate::TRACE_CLIENT_ID);
    let text = doc.get_or_insert_text(FULL_TEXT);
    for txn in &trace.txns[..count] {
        txn.apply(&text, &mut doc.transact_mut());
    }
    let t = doc.transact();
    let content = text.get_string(&t);
    // Replaying on a `String` is quadratic: only done for a part of the trace.
    let expected_ok = if count == trace.txns.len() {
        content == trace.end_content
    } else {
        content == replayed(&trace, count)
    };
    anyhow::ensure!(
        expected_ok,
        "the replayed trace does not produce the text it should"
    );
    let full = Arc::new(FullDocument {
        update: t.encode_state_as_update_v1(&StateVector::default()),
        text: content,
    });
    *last = Some((count, full.clone()));
    Ok(full)
}

/// The text a client's field holds after it replayed the first `count` transactions.
pub(crate) fn replayed(trace: &Trace, count: usize) -> String {
    let mut text = String::new();
    for txn in &trace.txns[..count] {
        for (pos, deleted, inserted) in &txn.patches {
            // The trace is ASCII: character offsets are byte offsets.
            let pos = *pos as usize;
            text.replace_range(pos..pos + *deleted as usize, inserted);
        }
    }
    text
}
