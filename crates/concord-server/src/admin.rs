//! Offline administration of a store: list, export, import, compact and delete documents. The
//! `concord-server docs ...` commands call these while the server is stopped (sled locks its
//! directory, so a running server and an admin command cannot open it at once). They work on
//! any [`Store`], with the compactor's rebuild and snapshot code.

use std::sync::Arc;

use concord_core::validate::{InvalidMessage, validate_update_v1};
use concord_core::{DocInfo, DocName, Room, Store, StoreError, StoredUpdate, SystemClock};

use crate::durability::compact::{RebuildError, rebuild, snapshot_of_stored};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The named document is not in the store.
    #[error("no document named {0:?}")]
    UnknownDocument(String),
    /// The data to import is not a valid Yjs v1 update.
    #[error("not a valid Yjs v1 update: {0}")]
    InvalidUpdate(#[from] InvalidMessage),
    /// The stored document cannot be rebuilt.
    #[error("document {doc:?} cannot be rebuilt: {reason}")]
    Unreadable {
        /// The document.
        doc: String,
        /// Why.
        reason: String,
    },
}

/// Every stored document.
pub async fn list(store: &dyn Store) -> Result<Vec<DocInfo>, AdminError> {
    Ok(store.list().await?)
}

/// The whole document as one Yjs v1 update (what `Y.applyUpdate` takes).
pub async fn export(store: &dyn Store, doc: &DocName) -> Result<Vec<u8>, AdminError> {
    require(store, doc).await?;
    Ok(from_stored(doc, &store.load(doc).await?)?.encode_state())
}

/// Adds a Yjs v1 update to a document (creating it if needed). The update merges with what the
/// document already holds, as any client's update would.
pub async fn import(store: &dyn Store, doc: &DocName, update: &[u8]) -> Result<(), AdminError> {
    validate_update_v1(update)?;
    // Decode and apply once, so an update yrs refuses is not stored.
    let mut room = Room::new(Arc::new(SystemClock));
    room.restore(update).map_err(|e| AdminError::Unreadable {
        doc: doc.to_string(),
        reason: e.to_string(),
    })?;
    store
        .append(
            vec![StoredUpdate {
                doc: doc.clone(),
                update: update.to_vec(),
            }]
            .into(),
        )
        .await?;
    Ok(())
}

/// Compacts one document into a snapshot. Returns the snapshot's size in bytes.
pub async fn compact(store: &dyn Store, doc: &DocName) -> Result<usize, AdminError> {
    require(store, doc).await?;
    let (snapshot, last_seq, _) = snapshot_of_stored(store, doc).await.map_err(|e| match e {
        RebuildError::Store(e) => AdminError::Store(e),
        RebuildError::Unreadable { doc, reason } => AdminError::Unreadable { doc, reason },
    })?;
    let size = snapshot.len();
    store.compact(doc, snapshot, last_seq).await?;
    Ok(size)
}

/// Removes a document.
pub async fn delete(store: &dyn Store, doc: &DocName) -> Result<(), AdminError> {
    require(store, doc).await?;
    Ok(store.delete(doc).await?)
}

async fn require(store: &dyn Store, doc: &DocName) -> Result<(), AdminError> {
    if store.list().await?.iter().any(|info| &info.name == doc) {
        Ok(())
    } else {
        Err(AdminError::UnknownDocument(doc.to_string()))
    }
}

fn from_stored(doc: &DocName, stored: &concord_core::StoredDoc) -> Result<Room, AdminError> {
    rebuild(doc, stored).map_err(|e| AdminError::Unreadable {
        doc: doc.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::MemoryStore;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, Text, Transact, Update};

    fn text_update(content: &str) -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, content);
        txn.encode_update_v1()
    }

    fn text_of(update: &[u8]) -> String {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
        text.get_string(&doc.transact())
    }

    #[tokio::test]
    async fn import_export_compact_delete_round_trip() {
        let store = MemoryStore::new();
        let name = DocName::new("notes").unwrap();
        assert!(matches!(
            export(&store, &name).await,
            Err(AdminError::UnknownDocument(_))
        ));
        import(&store, &name, &text_update("hello")).await.unwrap();
        assert!(matches!(
            import(&store, &name, &[0xff, 0xff]).await,
            Err(AdminError::InvalidUpdate(_))
        ));
        assert_eq!(text_of(&export(&store, &name).await.unwrap()), "hello");
        assert!(compact(&store, &name).await.unwrap() > 0);
        let stored = store.load(&name).unwrap();
        assert!(stored.snapshot.is_some() && stored.updates.is_empty());
        assert_eq!(text_of(&export(&store, &name).await.unwrap()), "hello");
        assert_eq!(list(&store).await.unwrap().len(), 1);
        delete(&store, &name).await.unwrap();
        assert!(list(&store).await.unwrap().is_empty());
    }
}
