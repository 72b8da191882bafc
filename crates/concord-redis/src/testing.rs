//! A real `redis-server` for tests (feature `testing`): started on a free loopback port with
//! its own config and temporary directory (append-only file, `appendfsync always`), stopped
//! when dropped. Never a Redis that happens to be running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer `PING`.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A `redis-server` process of a test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// More config lines (a replica's `replicaof`).
    extra: String,
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) on a free loopback port and waits until it answers.
    /// Panics, saying what to install, when it cannot.
    pub fn start() -> RedisServer {
        RedisServer::start_with(String::new())
    }

    /// Starts a replica of `primary` (same settings, `replicaof` the primary's port).
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        RedisServer::start_with(format!("replicaof 127.0.0.1 {}\n", primary.port))
    }

    fn start_with(extra: String) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's directory (its config, AOF and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL (no shutdown, no final save) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`RedisServer::kill`]),
    /// and waits until it answers: it reloads its append-only file.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("redis.conf");
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {dir}\nappendonly yes\nappendfsync always\n\
                 save \"\"\nlogfile {log}\ndaemonize no\nprotected-mode yes\n{extra}",
                port = self.port,
                dir = self.dir.path().display(),
                log = self.log().display(),
                extra = self.extra,
            ),
        )
        .expect("the redis config is written");
        let child = Command::new("redis-server")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if ping(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within {START_DEADLINE:?}; its log: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis answers `PING` on `port` (and has loaded its data).
fn ping(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
