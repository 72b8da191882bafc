//! The server in a process of its own (this package's `server-process` binary, which serves
//! with `concord_server::run`), for tests that kill it or start it under process limits.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use concord_tests::DEADLINE;

/// A running server process, killed with SIGKILL by [`ServerProcess::kill`] or on drop.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// What the process logged on stderr so far.
    log: Arc<Mutex<String>>,
}

/// `server-process`, built by `cargo test` for this package's tests.
fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_server-process"))
}

impl ServerProcess {
    /// Starts it on 127.0.0.1:`port` (0: ephemeral) storing in `data_dir`; retries while the
    /// port or the data directory's lock are not free yet after a kill.
    pub(crate) fn start(port: u16, data_dir: &std::path::Path) -> ServerProcess {
        let data_dir = data_dir.to_string_lossy().into_owned();
        ServerProcess::start_with(port, &["--data-dir", &data_dir], None)
    }

    /// Starts it with `args` (see `server-process.rs`), with its descriptor limit (soft and
    /// hard) set to `nofile` when given.
    pub(crate) fn start_with(port: u16, args: &[&str], nofile: Option<u64>) -> ServerProcess {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let mut command = match nofile {
                Some(limit) => {
                    let mut shell = Command::new("bash");
                    shell
                        .arg("-c")
                        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                        .arg(server_binary());
                    shell
                }
                None => Command::new(server_binary()),
            };
            let mut child = command
                .args(["--port", &port.to_string()])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the server binary");
            let log = Arc::new(Mutex::new(String::new()));
            let stderr = child.stderr.take().expect("stderr");
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            let stdout = child.stdout.take().expect("stdout");
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            if let Some(addr) = first.trim().strip_prefix("listening on ") {
                return ServerProcess {
                    child,
                    addr: addr.parse().expect("an address"),
                    log,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not start: {}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            );
            std::thread::sleep(concord_tests::POLL_INTERVAL);
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
