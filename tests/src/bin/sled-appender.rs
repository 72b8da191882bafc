//! The writing process of the SIGKILL durability test (`tests/durability/main.rs`): appends
//! numbered updates to a sled document store until it is killed.
//!
//! Usage:
//!
//! ```text
//! sled-appender STORE_DIR [--no-background-flush]
//! ```
//!
//! With `--no-background-flush` sled's own periodic flush is off, so only the store's journal
//! can keep what an append returned for.
//!
//! Update `i` of the document `doc` is `i` as four little-endian bytes, and `appended i` is
//! printed (and flushed) only once the `append` of update `i` returned, so the test knows which
//! appends the store promised to keep. It exits with status 1 and a message on stderr when an
//! append or a write to stdout fails (the test that reads stdout has gone away).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use concord_core::{DocName, StoredUpdate};
use concord_sled::{SledOptions, SledStore};

fn main() -> ExitCode {
    match append_until_killed() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sled-appender: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn append_until_killed() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = args
        .next()
        .context("usage: sled-appender STORE_DIR [--no-background-flush]")?;
    let options = match args.next() {
        None => SledOptions::default(),
        Some(flag) if flag == "--no-background-flush" => SledOptions {
            flush_every_ms: None,
            ..SledOptions::default()
        },
        Some(other) => anyhow::bail!("unknown argument {}", other.display()),
    };
    let store = SledStore::open_with(&dir, options)
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let doc = DocName::new("doc").context("the document name")?;
    let mut stdout = std::io::stdout().lock();
    // u32 numbers are 4 billion appends: far more than any test waits for.
    for i in 0u32..=u32::MAX {
        store
            .append(&[StoredUpdate {
                doc: doc.clone(),
                update: i.to_le_bytes().to_vec(),
            }])
            .with_context(|| format!("append {i} failed"))?;
        writeln!(stdout, "appended {i}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
    }
    Ok(())
}
