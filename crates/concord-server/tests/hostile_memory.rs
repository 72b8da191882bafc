//! Allocation bombs against the real binary: frames whose length and count fields promise
//! billions of elements must be refused without the process's memory growing.
//!
//! yrs pre-allocates from counts it reads off the wire; an unvalidated server reserves hundreds
//! of megabytes for the 7-byte frame `[0, 2, 4, 255, 255, 255, 122]`. This test drives the built
//! `concord-server` binary, sends each bomb, checks the close code, and reads the process's peak
//! resident memory (VmHWM) from /proc.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The peak resident memory the server may reach during this test. An idle server uses ~10 MB;
/// a single honoured bomb reserves and touches far more.
const PEAK_LIMIT_KB: u64 = 64 * 1024;

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concord-server"))
            .args(["--host", "127.0.0.1", "--port", "0", "--in-memory"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start concord-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Server { child, port }
    }

    fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM line")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `frame` on a fresh connection and returns the close code the server answered with.
async fn close_code_for(port: u16, frame: Vec<u8>) -> Option<CloseCode> {
    let url = format!("ws://127.0.0.1:{port}/bombed");
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    socket
        .send(Message::Binary(frame.into()))
        .await
        .expect("send");
    let read = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server closes the connection")
}

#[tokio::test]
async fn allocation_bombs_are_refused_without_growing_memory() {
    let server = Server::start();
    let huge: &[u8] = &[255, 255, 255, 122];
    // `[message type, (sync type,) length, payload]`; every payload here is under 128 bytes, so
    // its length is a one-byte varint.
    let sync = |kind: u8, payload: &[u8]| [&[0, kind, payload.len() as u8][..], payload].concat();
    let bombs: Vec<(&str, Vec<u8>)> = vec![
        ("sync update bomb", sync(2, huge)),
        ("sync step 2 bomb", sync(1, huge)),
        ("state vector bomb", sync(0, huge)),
        (
            "awareness bomb",
            [&[1, huge.len() as u8][..], huge].concat(),
        ),
        // An update with no structs whose delete set claims a huge client count.
        ("delete set bomb", sync(2, &[&[0][..], huge].concat())),
        // One client whose struct count is huge.
        (
            "struct count bomb",
            sync(2, &[&[1][..], huge, &[1, 0]].concat()),
        ),
        // An awareness entry whose JSON string claims a huge length.
        ("string length bomb", [&[1, 7, 1, 1, 1][..], huge].concat()),
    ];
    assert_eq!(bombs[0].1, [0, 2, 4, 255, 255, 255, 122]);
    for (name, frame) in bombs {
        let code = close_code_for(server.port, frame).await;
        assert_eq!(
            code,
            Some(CloseCode::Invalid),
            "{name}: expected close 1007"
        );
        let peak = server.peak_rss_kb();
        assert!(
            peak < PEAK_LIMIT_KB,
            "{name}: peak RSS {peak} kB exceeds {PEAK_LIMIT_KB} kB"
        );
    }
    // The server is still up and serving.
    let url = format!("ws://127.0.0.1:{}/after", server.port);
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("reconnect");
    let first = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .expect("a first frame")
        .expect("open")
        .expect("frame");
    assert!(matches!(first, Message::Binary(ref b) if b.starts_with(&[0, 0])));
    println!("peak RSS after all bombs: {} kB", server.peak_rss_kb());
}
