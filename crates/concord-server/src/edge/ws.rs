//! The y-websocket edge: one WebSocket connection per client and document, speaking
//! y-protocols byte for byte as the reference server does, plus Concord's save
//! acknowledgement (message 100). See `PROTOCOL.md` in this crate for the wire contract.
//!
//! `upgrade.rs` admits a request and runs the connection; `reader.rs` turns frames into
//! calls of the ingest path, `writer.rs` drains the connection's outbox with keepalive,
//! `acks.rs` answers save requests, `close.rs` maps close reasons to codes, `linger.rs` lets a
//! close frame reach a client that is still sending.

mod acks;
pub(crate) mod close;
pub(crate) mod linger;
pub(crate) mod reader;
mod upgrade;
pub(crate) mod writer;

pub(crate) use upgrade::{open_failed, rates, refusal_response, upgrade};
