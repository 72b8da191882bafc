//! The journal: an append-only file beside sled that makes an `append` survive a killed process
//! with one `write(2)`, instead of a sled flush (a hand-off to sled's I/O threads, a `pwrite`
//! and a `sync_file_range` that waits for the disk) per batch.
//!
//! Every `append` applies its sled batch and then writes the same log entries to the journal,
//! under the store's lock, so the journal holds every entry in the order sled got them. Once
//! `write` returned, the bytes are the kernel's: a killed process loses nothing. A background
//! thread fsyncs the journal every `flush_every_ms` (the power-loss window) and, once the file
//! is large or old enough, checkpoints: it switches appends to a new file, makes sled durable
//! (flush and fsync) and removes the old file, whose entries sled now holds.
//!
//! Opening the store replays what the journal files hold into sled (see
//! [`crate::store`]'s `replay`), makes sled durable and removes them.
//!
//! # File format
//!
//! Files `journal/<number>.log` (16 hex digits, replayed in number order), each a sequence of
//! frames `[length: u32 LE][record]`, the record in the store's record format (version byte,
//! crc32, bincode payload: [`crate::record::JournalBatchRef`]). A frame that is cut short or
//! fails its checksum (what a power loss in the middle of a write leaves) ends the replay of
//! its file; the frames before it are kept.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::record::{self, JournalBatch, JournalBatchRef, RecordError};

/// Bytes of the frame header (the record's length).
const FRAME_HEADER: usize = 4;

/// The journal of an open store: the file appends go to.
pub(crate) struct Journal {
    dir: PathBuf,
    slot: Mutex<Slot>,
    /// Bytes written to any journal file since the store was opened.
    written: AtomicU64,
    /// What `written` was when the last fsync started.
    synced: AtomicU64,
}

/// The current file.
struct Slot {
    file: Arc<File>,
    number: u64,
    len: u64,
}

/// Why a journal file stopped being read before its end.
#[derive(Debug)]
pub(crate) enum Damage {
    /// The file ends inside a frame (a write cut short).
    Truncated { offset: u64 },
    /// A frame's record is damaged.
    Record { offset: u64, error: RecordError },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated { offset } => {
                write!(f, "the file ends inside the frame at byte {offset}")
            }
            Damage::Record { offset, error } => write!(f, "the frame at byte {offset}: {error}"),
        }
    }
}

impl Journal {
    /// Starts a new, empty journal file numbered after every file in `dir`. Call after the
    /// existing files were replayed and removed.
    pub(crate) fn create(dir: &Path, number: u64) -> io::Result<Journal> {
        let file = new_file(dir, number)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            slot: Mutex::new(Slot {
                file: Arc::new(file),
                number,
                len: 0,
            }),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // `len` is only changed after the write it counts, so a poisoned lock is safe.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one frame holding `batch`. On failure the file is cut back to its previous
    /// length, so a partial frame never hides the frames written after it.
    pub(crate) fn write(&self, batch: &JournalBatchRef<'_>) -> io::Result<()> {
        let record = record::seal(batch).map_err(io::Error::other)?;
        let len = u32::try_from(record.len())
            .map_err(|_| io::Error::other("a journal frame larger than 4 GiB"))?;
        let mut frame = Vec::with_capacity(FRAME_HEADER + record.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&record);
        let mut slot = self.lock();
        match (&*slot.file).write_all(&frame) {
            Ok(()) => {
                slot.len += frame.len() as u64;
                self.written
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // The file is opened for appending: the next write goes to the new end.
                let _ = slot.file.set_len(slot.len);
                Err(e)
            }
        }
    }

    /// Bytes in the current file.
    pub(crate) fn len(&self) -> u64 {
        self.lock().len
    }

    /// fsyncs the current file if anything was written since the last call.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let written = self.written.load(Ordering::Relaxed);
        if self.synced.load(Ordering::Relaxed) == written {
            return Ok(());
        }
        let file = self.lock().file.clone();
        file.sync_data()?;
        self.synced.store(written, Ordering::Relaxed);
        Ok(())
    }

    /// Sends appends to a new file and returns the number of the old one, or `None` when the
    /// current file is empty. The caller makes sled durable and then removes the old file
    /// with [`Journal::remove_through`]: every entry in it was applied to sled before it was
    /// written there.
    pub(crate) fn rotate(&self) -> io::Result<Option<u64>> {
        let mut slot = self.lock();
        if slot.len == 0 {
            return Ok(None);
        }
        let number = slot.number + 1;
        let file = new_file(&self.dir, number)?;
        let old = std::mem::replace(
            &mut *slot,
            Slot {
                file: Arc::new(file),
                number,
                len: 0,
            },
        );
        drop(slot);
        // The new file's name must survive a power loss before anything relies on it.
        sync_dir(&self.dir)?;
        Ok(Some(old.number))
    }

    /// Removes the journal files numbered `through` and below.
    pub(crate) fn remove_through(&self, through: u64) -> io::Result<()> {
        for number in files(&self.dir)? {
            if number <= through {
                remove(&self.dir, number)?;
            }
        }
        Ok(())
    }

    /// The number of the current file.
    pub(crate) fn number(&self) -> u64 {
        self.lock().number
    }
}

/// The journal files in `dir`, by number. Other files are ignored.
pub(crate) fn files(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(".log")
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Removes journal file `number`.
pub(crate) fn remove(dir: &Path, number: u64) -> io::Result<()> {
    match fs::remove_file(path(dir, number)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Calls `each` with every intact frame of journal file `number`, in order. Returns where the
/// file stopped being readable, if before its end.
pub(crate) fn read(
    dir: &Path,
    number: u64,
    mut each: impl FnMut(JournalBatch) -> Result<(), concord_core::StoreError>,
) -> Result<Option<Damage>, concord_core::StoreError> {
    let backend = |e: io::Error| concord_core::StoreError::Backend(e.into());
    let mut file = io::BufReader::new(File::open(path(dir, number)).map_err(backend)?);
    let size = file.get_ref().metadata().map_err(backend)?.len();
    let mut offset = 0u64;
    while offset < size {
        let mut header = [0u8; FRAME_HEADER];
        if size - offset < FRAME_HEADER as u64 {
            return Ok(Some(Damage::Truncated { offset }));
        }
        file.read_exact(&mut header).map_err(backend)?;
        let len = u64::from(u32::from_le_bytes(header));
        // Never allocate more than the file holds, whatever the header says.
        if len > size - offset - FRAME_HEADER as u64 {
            return Ok(Some(Damage::Truncated { offset }));
        }
        let mut bytes = vec![0u8; len as usize];
        file.read_exact(&mut bytes).map_err(backend)?;
        match record::open::<JournalBatch>(&bytes) {
            Ok(batch) => each(batch)?,
            Err(error) => return Ok(Some(Damage::Record { offset, error })),
        }
        offset += FRAME_HEADER as u64 + len;
    }
    Ok(None)
}

fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.log"))
}

fn new_file(dir: &Path, number: u64) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path(dir, number))
}

/// fsyncs a directory, so that the names of the files created in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
