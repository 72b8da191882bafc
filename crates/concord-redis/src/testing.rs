//! A real `redis-server` for tests (feature `testing`): started on a free loopback port with
//! its own config and temporary directory (append-only file, `appendfsync always`), stopped
//! when dropped; and a Redis Cluster of such servers ([`RedisCluster`], formed with
//! `redis-cli --cluster create`). Never a Redis that happens to be running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::RedisOptions;

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

    /// Options for a node on this server, with key prefix `prefix`.
    pub fn options(&self, prefix: &str) -> RedisOptions {
        RedisOptions {
            urls: vec![self.url()],
            prefix: prefix.to_owned(),
            ..RedisOptions::default()
        }
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

/// A Redis Cluster of `redis-server`s of a test, masters only, each with its own port, cluster
/// bus port and directory; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// The cluster's nodes, in the order they were started.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` servers (at least 3, as Redis Cluster wants), forms a cluster of them
    /// with the slots spread evenly (`redis-cli --cluster create`), and waits until every node
    /// says the cluster is ok. Panics, saying what to install, when it cannot.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(format!(
                    "cluster-enabled yes\ncluster-config-file nodes.conf\n\
                     cluster-node-timeout 2000\ncluster-port {}\n",
                    free_port()
                ))
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): install it (apt-get install redis-tools)")
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and knows every node.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let info = cluster_info(node.port).unwrap_or_default();
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ok within {START_DEADLINE:?}: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every node's URL (any of them is a seed).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Options for a node on this cluster, with key prefix `prefix`.
    pub fn options(&self, prefix: &str) -> RedisOptions {
        RedisOptions {
            urls: self.urls(),
            cluster: true,
            prefix: prefix.to_owned(),
            ..RedisOptions::default()
        }
    }
}

/// Appends `update` to `doc`'s log on a Redis Cluster as a node would, but without ringing the
/// doorbell: what a node sees when a doorbell is lost (pub/sub is at most once). Returns the
/// entry's seq. The entry names node `quiet`.
pub async fn append_without_doorbell(
    options: &RedisOptions,
    doc: &concord_core::DocName,
    update: &[u8],
) -> redis::RedisResult<u64> {
    let client = redis::cluster::ClusterClientBuilder::new(options.urls.clone()).build()?;
    let mut conn = client.get_async_connection().await?;
    let keys = crate::keys::Keys::new(&options.prefix).doc(doc);
    let (seq, _, _): (u64, u64, u64) = redis::cmd("EVAL")
        .arg(crate::store::APPEND)
        .arg(2)
        .arg(&keys.log)
        .arg(&keys.meta)
        .arg("quiet")
        .arg(crate::entry::encode(std::iter::once(update)))
        .arg(1)
        .arg(update.len())
        .arg(crate::store::now_ms())
        .query_async(&mut conn)
        .await?;
    Ok(seq)
}

/// `CLUSTER INFO` of the node on `port`.
fn cluster_info(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()
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
