//! The real `concord-server` binary as a child process, shared by the integration tests that
//! need one (admin commands, crash recovery).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the server gets to start or to exit.
pub(crate) const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// A running server process on 127.0.0.1 with a port it chose.
pub(crate) struct ServerProcess {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on `data_dir` with `extra` flags and waits for its `listening on`
    /// line. Its stderr is appended to `log` (never a pipe nobody reads).
    pub(crate) async fn start(data_dir: &Path, log: &Path, extra: &[String]) -> ServerProcess {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_concord-server"))
            .args(["--host", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn concord-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let read = async {
            while let Some(line) = lines.next_line().await.expect("read the server's stdout") {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Some(addr.trim().to_owned());
                }
            }
            None
        };
        let addr = match tokio::time::timeout(PROCESS_DEADLINE, read).await {
            Ok(Some(addr)) => addr,
            outcome => panic!(
                "the server did not print its address ({outcome:?}); log:\n{}",
                log_tail(log)
            ),
        };
        ServerProcess {
            child,
            addr,
            log: log.to_owned(),
        }
    }

    /// `HOST:PORT`.
    #[allow(dead_code)] // Not every test binary speaks HTTP to it.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// `ws://ADDR/doc`.
    #[allow(dead_code)] // Not every test binary opens WebSockets.
    pub(crate) fn url(&self, doc: &str) -> String {
        format!("ws://{}/{}", self.addr, doc)
    }

    /// The end of the server's log, for failure messages.
    #[allow(dead_code)] // Not every test binary reads the log.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// SIGTERM, then requires a clean exit (status 0) within the deadline.
    #[allow(dead_code)] // Not every test binary stops gracefully.
    pub(crate) async fn stop(mut self) {
        let pid = self.child.id().expect("the server is running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(PROCESS_DEADLINE, self.child.wait())
            .await
            .expect("the server exits after SIGTERM")
            .expect("wait for the server");
        assert!(
            exit.success(),
            "the server exited with {exit} after SIGTERM; log:\n{}",
            log_tail(&self.log)
        );
    }

    /// SIGKILL, and reap the process.
    #[allow(dead_code)] // Not every test binary kills.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the server");
    }
}

/// The last few kilobytes of `log`.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(6000);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_owned()
}
