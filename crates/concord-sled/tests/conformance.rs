//! `SledStore` against the `Store` contract: the conformance suite every backend runs
//! (`concord_core::conformance`), with stores reopened from disk between operations of its random
//! sequence. What only sled has (its key layout, format checks, locking, corruption, crash
//! points of compaction) is tested in the other files of this directory.

use std::future::Future;
use std::path::PathBuf;

use concord_core::conformance::{Harness, name, run_all};
use concord_core::{NewVersion, Position, Store};
use concord_sled::SledStore;

/// Makes each store in a directory of its own under one temporary directory, and reopens the
/// latest one from disk.
struct Sled {
    root: tempfile::TempDir,
    made: u32,
    latest: Option<PathBuf>,
}

impl Harness for Sled {
    type Store = SledStore;

    fn create(&mut self) -> impl Future<Output = SledStore> {
        self.made += 1;
        let path = self.root.path().join(self.made.to_string());
        self.latest = Some(path.clone());
        std::future::ready(SledStore::open(path).expect("a new store opens"))
    }

    fn reopen(&mut self, store: SledStore) -> impl Future<Output = SledStore> {
        // The old handle must be gone first: sled locks its directory.
        drop(store);
        let path = self.latest.clone().expect("a store was created");
        std::future::ready(SledStore::open(path).expect("the store opens again"))
    }
}

/// Tokio's runtime is needed because `SledStore`'s futures run on its blocking thread pool.
#[tokio::test]
async fn the_sled_store_conforms() {
    run_all(Sled {
        root: tempfile::tempdir().expect("a temporary directory"),
        made: 0,
        latest: None,
    })
    .await;
}

/// The suite's version check passes at once for a store that answers `Unsupported`: make sure
/// sled is not one, so that the check runs in full against it.
#[tokio::test]
async fn the_version_check_runs_in_full_for_sled() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SledStore::open(dir.path()).expect("a new store opens");
    let saved = Store::save_version(
        &store,
        &name("doc"),
        NewVersion {
            snapshot: vec![1, 2, 3],
            created_at_ms: 1,
            position: Position::START,
            label: None,
        },
    )
    .await
    .expect("sled keeps versions");
    assert_eq!(saved.id, 1);
    assert_eq!(
        Store::versions(&store, &name("doc"))
            .await
            .expect("versions"),
        vec![saved]
    );
}
