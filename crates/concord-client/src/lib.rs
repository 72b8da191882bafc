//! Concord's Rust client: an offline-first provider that keeps a [`yrs::Doc`] in sync with a
//! Concord document (or any y-websocket server), and the `concord` command-line tool built on
//! it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::ClientError> {
//! use concord_client::{Provider, ProviderConfig, Status};
//! use yrs::{GetString, Text, Transact};
//!
//! let provider = Provider::start(ProviderConfig {
//!     store_dir: Some("notes-offline".into()), // edits survive a restart while offline
//!     ..ProviderConfig::new("ws://127.0.0.1:1234", "notes")
//! })
//! .await?;
//! let doc = provider.doc();
//! let text = doc.get_or_insert_text("content");
//! text.insert(&mut doc.transact_mut(), 0, "hello"); // applied at once, sent when connected
//! provider.wait_synced().await;
//! provider.wait_saved().await?; // durable on the server (Concord's save acknowledgement)
//! provider.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! - **Edits** go to the local document at once, online or not; the provider sends them as
//!   updates while connected, and after every (re)connect it runs the SyncStep1/SyncStep2
//!   exchange, so nothing is lost in either direction.
//! - **Reconnection**: exponential backoff with jitter and a cap, reset after a connection that
//!   lasted ([`Reconnect`]); a [`TokenSource`] is asked for a fresh token before each attempt.
//! - **Status** is a watchable [`Status`]; [`Provider::has_unsaved_changes`] and
//!   [`Provider::save_state`] follow Concord's save acknowledgement (message 100), and say
//!   [`AckSupport::No`] on servers that never send it.
//! - **Offline persistence**: with [`ProviderConfig::store_dir`], every update (local and
//!   remote) is appended to a local Concord store (sled), so a process restarted while offline
//!   still has its edits, and sends them once it connects.
//! - **Awareness**: [`Presence`] (user, color, cursor, online/away/busy, typing with an
//!   automatic timeout), renewed before the 30 s expiry, cleared on close;
//!   [`Provider::peer_events`] reports peers joining, updating and leaving.
//!
//! The client depends on `concord-core` (the same validation the server applies runs on what
//! the server sends) and on `concord-sled` for its local store; never on the server.

/// At most this many local updates wait in one of the provider's queues (to be sent, to be
/// written to the local store); past it they are merged into one. A merged update holds the same
/// changes, so nothing is lost: the count stays bounded and the bytes stay those of the edits.
pub(crate) const MAX_QUEUED_UPDATES: usize = 1024;

/// Locks `mutex`, poisoned or not: every critical section in this crate leaves its data whole
/// (a few field updates, a `Vec` pushed to or taken whole), so a panic elsewhere cannot have
/// left it half done.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues `update`, merging the queue once it is full (see [`MAX_QUEUED_UPDATES`]).
pub(crate) fn push_merging(queue: &mut Vec<Vec<u8>>, update: Vec<u8>) {
    queue.push(update);
    if queue.len() >= MAX_QUEUED_UPDATES {
        // Updates of one document: merging does not fail, but if it did, keep them all.
        if let Ok(merged) = yrs::merge_updates_v1(queue.iter().map(Vec::as_slice)) {
            *queue = vec![merged];
        }
    }
}

mod local;
mod presence;
mod provider;

pub use presence::{OnlineStatus, Presence, User};
#[doc(hidden)]
pub use provider::FailAttempt;
pub use provider::{
    AckSupport, ClientError, EditsRefused, PeerEvent, Provider, ProviderConfig, Reconnect,
    SaveState, Status, TokenSource,
};
