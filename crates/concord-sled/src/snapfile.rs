//! Snapshot files: one file per document snapshot in the `snapshots/` directory beside the
//! sled database, written so that a crash at any moment leaves either the old file or the new
//! one, complete.
//!
//! A file is named `<document id, 16 hex digits>-<seq it covers, 16 hex digits>.snap` and holds
//! one record (see [`crate::record`]) whose payload repeats the id and the seq, so a file that
//! ended up under the wrong name is detected. Files are written to a `.tmp` name, fsynced,
//! renamed into place, and the directory fsynced: a snapshot file is durable, power loss
//! included, before any metadata points at it.
//!
//! Version snapshots use the same files in a directory of their own (`versions/`), the
//! version id taking the place of the seq.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::record::{self, RecordError, Snapshot, SnapshotRef};

/// Extension of finished snapshot files.
const EXTENSION: &str = "snap";
/// Extension of files being written; any left at open are the remains of a crash.
const TMP_EXTENSION: &str = "tmp";

/// Why a snapshot file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file could not be opened or read.
    Io(io::Error),
    /// The file's record is damaged.
    Record(RecordError),
    /// The record is intact but names another document or seq than its file name.
    Mislabelled { id: u64, upto: u64 },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the snapshot file: {e}"),
            Self::Record(e) => write!(f, "{e}"),
            Self::Mislabelled { id, upto } => write!(
                f,
                "the file holds the snapshot of document id {id} up to seq {upto}, not the one \
                 its name says"
            ),
        }
    }
}

/// The `snapshots/` directory of a store.
#[derive(Debug)]
pub(crate) struct SnapshotDir {
    path: PathBuf,
    /// Makes temporary names unique, so two writers never share one.
    tmp_counter: AtomicU64,
}

impl SnapshotDir {
    /// Opens (creating it if needed) the directory at `path`.
    pub(crate) fn open(path: PathBuf) -> io::Result<SnapshotDir> {
        fs::create_dir_all(&path)?;
        Ok(SnapshotDir {
            path,
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The path of the snapshot of document `id` covering up to `upto`.
    pub(crate) fn file(&self, id: u64, upto: u64) -> PathBuf {
        self.path.join(format!("{id:016x}-{upto:016x}.{EXTENSION}"))
    }

    /// Writes the snapshot of document `id` covering up to `upto` durably (file and directory
    /// fsynced) and returns its size on disk.
    pub(crate) fn write(&self, id: u64, upto: u64, bytes: &[u8]) -> io::Result<u64> {
        let record = record::seal(&SnapshotRef { id, upto, bytes }).map_err(io::Error::other)?;
        let target = self.file(id, upto);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = target.with_extension(format!("{n}.{TMP_EXTENSION}"));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&record)?;
            file.sync_all()?;
            fs::rename(&tmp, &target)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.path)?;
        Ok(record.len() as u64)
    }

    /// Opens the snapshot of document `id` covering up to `upto`. Reading happens through the
    /// returned handle, which stays valid even if the file is removed meanwhile.
    pub(crate) fn open_file(&self, id: u64, upto: u64) -> io::Result<File> {
        File::open(self.file(id, upto))
    }

    /// Removes a snapshot file; one that is already gone is not an error.
    pub(crate) fn remove(&self, id: u64, upto: u64) -> io::Result<()> {
        match fs::remove_file(self.file(id, upto)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every snapshot file as `(id, upto)`, after removing the temporary files a crash left.
    /// Files whose names this store does not write are left alone and not returned.
    pub(crate) fn scan(&self) -> io::Result<Vec<(u64, u64)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(&format!(".{TMP_EXTENSION}")) {
                tracing::info!(
                    file = name,
                    "removing a snapshot file a crash left unfinished"
                );
                fs::remove_file(entry.path())?;
                continue;
            }
            if let Some(parsed) = parse_name(name) {
                found.push(parsed);
            }
        }
        Ok(found)
    }
}

/// Reads and checks a snapshot file opened with [`SnapshotDir::open_file`].
pub(crate) fn read(mut file: File, id: u64, upto: u64) -> Result<Vec<u8>, ReadError> {
    let mut record = Vec::new();
    file.read_to_end(&mut record).map_err(ReadError::Io)?;
    let snapshot: Snapshot = record::open(&record).map_err(ReadError::Record)?;
    if (snapshot.id, snapshot.upto) != (id, upto) {
        return Err(ReadError::Mislabelled {
            id: snapshot.id,
            upto: snapshot.upto,
        });
    }
    Ok(snapshot.bytes.0)
}

/// `(id, upto)` from a file name this store writes.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(&format!(".{EXTENSION}"))?;
    let (id, upto) = stem.split_once('-')?;
    if id.len() != 16 || upto.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(id, 16).ok()?,
        u64::from_str_radix(upto, 16).ok()?,
    ))
}

/// fsyncs a directory, so that a rename or removal in it survives a power loss.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path().join("s")).unwrap();
        let file = snapshots.file(1, u64::MAX);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "0000000000000001-ffffffffffffffff.snap");
        assert_eq!(parse_name(name), Some((1, u64::MAX)));
        for foreign in [
            "README",
            "1-2.snap",
            "000000000000000g-0000000000000001.snap",
        ] {
            assert_eq!(parse_name(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn write_read_remove_and_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path().join("s")).unwrap();
        let size = snapshots.write(3, 7, b"state").unwrap();
        assert_eq!(size, fs::metadata(snapshots.file(3, 7)).unwrap().len());
        let file = snapshots.open_file(3, 7).unwrap();
        assert_eq!(read(file, 3, 7).unwrap(), b"state");
        // Under another name, the record is refused.
        fs::copy(snapshots.file(3, 7), snapshots.file(3, 8)).unwrap();
        let file = snapshots.open_file(3, 8).unwrap();
        assert!(matches!(
            read(file, 3, 8),
            Err(ReadError::Mislabelled { id: 3, upto: 7 })
        ));

        fs::write(
            dir.path().join("s/0000000000000003-0000000000000009.0.tmp"),
            b"x",
        )
        .unwrap();
        fs::write(dir.path().join("s/notes.txt"), b"x").unwrap();
        let mut found = snapshots.scan().unwrap();
        found.sort();
        assert_eq!(found, vec![(3, 7), (3, 8)]);
        assert!(
            !dir.path()
                .join("s/0000000000000003-0000000000000009.0.tmp")
                .exists()
        );
        assert!(dir.path().join("s/notes.txt").exists());

        snapshots.remove(3, 8).unwrap();
        snapshots.remove(3, 8).unwrap();
        assert_eq!(snapshots.scan().unwrap(), vec![(3, 7)]);
    }
}
