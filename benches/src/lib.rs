//! Shared benchmark inputs: real editing traces turned into the Yjs updates a client would send.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, Text, Transact};

#[derive(Deserialize)]
struct Trace {
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(u32, u32, String)>,
}

/// A trace replayed through a yrs client: one update per trace transaction (typically one
/// keystroke), as y-websocket would send them, plus the text they must produce.
pub struct TraceUpdates {
    /// Each update wrapped in a y-protocols sync Update message: the exact WebSocket frames.
    pub frames: Vec<Vec<u8>>,
    /// The text the trace ends with.
    pub end_content: String,
}

/// Loads a gzipped trace from `benches/data` and replays it into frames.
pub fn load_trace(file: &str) -> TraceUpdates {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(file);
    let gz = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut json = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut json)
        .expect("gunzip trace");
    let trace: Trace = serde_json::from_str(&json).expect("parse trace");

    let doc = Doc::new();
    let text = doc.get_or_insert_text("text");
    let mut frames = Vec::with_capacity(trace.txns.len());
    for txn in &trace.txns {
        let mut t = doc.transact_mut();
        for (pos, deleted, inserted) in &txn.patches {
            if *deleted > 0 {
                text.remove_range(&mut t, *pos, *deleted);
            }
            if !inserted.is_empty() {
                text.insert(&mut t, *pos, inserted);
            }
        }
        let update = t.encode_update_v1();
        drop(t);
        frames.push(Message::Sync(SyncMessage::Update(update)).encode_v1());
    }
    assert_eq!(
        text.get_string(&doc.transact()),
        trace.end_content,
        "the replayed trace must produce its end content"
    );
    TraceUpdates {
        frames,
        end_content: trace.end_content,
    }
}
