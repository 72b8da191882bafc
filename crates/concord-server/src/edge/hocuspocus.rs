//! The Hocuspocus edge: `@hocuspocus/provider` (what Tiptap's collaboration guides use)
//! connects to the server's root URL and opens any number of documents over that one socket.
//! The wire format is [`concord_core::hocuspocus`]; `HOCUSPOCUS.md` in this crate is the
//! contract as clients see it.
//!
//! A socket is admitted like any connection (origin, connection slot) before the upgrade; each
//! document on it is then admitted on its own when its Auth message arrives (the authorizer
//! sees the provider's token), and from there is a room member with its own [`Peer`], its own
//! closer and its own acknowledger: closing, refusing or failing one document sends that
//! document a Close (or PermissionDenied) message and leaves the others alone. What concerns
//! the socket as a whole (rate limits, a frame that names no document, shutdown) closes the
//! socket with the close codes of the y-websocket edge.
//!
//! - `connection.rs`: the upgrade, and the reader with the socket's table of documents.
//! - `writer.rs`: the socket's frames for the y-websocket edge's writer: its own queue (auth answers,
//!   closes, pongs) and every open document's outbox, each frame addressed to its document.
//!
//! [`Peer`]: crate::rooms::Peer

mod connection;
mod writer;

pub(crate) use connection::upgrade;

use concord_core::DocName;

/// A stateless message from a Hocuspocus client (`provider.sendStateless(payload)`), as
/// [`crate::Config::on_stateless`] receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatelessMessage {
    /// The document the provider sent it on.
    pub doc: DocName,
    /// What it sent (Hocuspocus payloads are strings, usually JSON).
    pub payload: String,
    /// The sending connection's id for this document: pass it to
    /// [`crate::Concord::send_stateless`] to answer that connection alone.
    pub connection: u64,
    /// Who the connection belongs to, as the authorizer said.
    pub subject: Option<String>,
}
