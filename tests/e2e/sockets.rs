//! Before a request is complete: sockets are capped at `accept` (in all and per peer address),
//! a request's head must arrive in time, an idle kept-alive connection is closed, and a server
//! out of descriptors waits instead of spinning and serves again once descriptors free up.
//! Long-lived connections (WebSocket, SSE) are left alone by the deadlines.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use concord_core::MemoryStore;
use concord_server::{Config, Stats};
use concord_tests::{
    DEADLINE, EmbeddedServer, SseClient, TestClient, poll_until, poll_until_ok, text_insert_update,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::process::ServerProcess;

/// Long enough that no socket of a test times out unless the test wants it to.
const NEVER: Duration = Duration::from_secs(3600);

async fn server(config: Config) -> EmbeddedServer {
    EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A TCP connection to `addr` from the local address `source`.
async fn connect_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset), failing after [`DEADLINE`];
/// returns what was read before.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.unwrap_or_else(|_| {
        panic!(
            "the server did not close the connection within {DEADLINE:?}; it sent {:?}",
            String::from_utf8_lossy(&seen)
        )
    });
    seen
}

/// `GET /metrics`, as text.
async fn metrics(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_stats(server: &EmbeddedServer, what: &str, check: impl Fn(&Stats) -> bool) {
    poll_until_ok(DEADLINE, what, || {
        let stats = server.concord.stats();
        if check(&stats) {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_past_a_cap_are_closed_at_accept_and_other_addresses_are_served() {
    let server = server(Config {
        max_sockets: Some(40),
        max_sockets_per_address: 25,
        header_read_timeout: NEVER,
        keep_alive_timeout: NEVER,
        ..Config::default()
    })
    .await;
    let flooder = ip("127.0.0.1");

    // One address holds its 25 sockets without sending a byte.
    let mut held = Vec::new();
    for _ in 0..25 {
        held.push(connect_from(server.addr, flooder).await);
    }
    wait_stats(&server, "the flood's 25 sockets are open", |s| {
        s.sockets_open == 25
    })
    .await;
    // Its next ones are closed at once, unanswered.
    for _ in 0..10 {
        let mut refused = connect_from(server.addr, flooder).await;
        // Sending a request changes nothing: the socket was closed before anything was read.
        let _ = refused
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let answer = closed_by_server(&mut refused).await;
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    }
    wait_stats(&server, "10 refusals for the per-address cap", |s| {
        s.sockets_refused_per_address == 10 && s.sockets_refused_total == 0
    })
    .await;

    // Another address is served meanwhile: it syncs and sees edits.
    let url = server.url("capped");
    let other = TestClient::connect_synced_from(&url, ip("127.0.0.2"))
        .await
        .unwrap();
    let writer = TestClient::connect_synced_from(&url, ip("127.0.0.3"))
        .await
        .unwrap();
    writer.edit(|txn| {
        use yrs::{Text, WriteTxn};
        txn.get_or_insert_text("t").insert(txn, 0, "served");
    });
    poll_until(DEADLINE, "the edit reaches the other address", || {
        other.text("t") == "served"
    })
    .await;

    // The total cap holds across addresses: 25 + 2 open, 13 more fill it, the next is refused.
    let mut filler = Vec::new();
    for _ in 0..13 {
        filler.push(connect_from(server.addr, ip("127.0.0.4")).await);
    }
    wait_stats(&server, "40 sockets open", |s| s.sockets_open == 40).await;
    let mut refused = connect_from(server.addr, ip("127.0.0.5")).await;
    closed_by_server(&mut refused).await;
    wait_stats(&server, "a refusal for the total cap", |s| {
        s.sockets_refused_total == 1
    })
    .await;

    // Closing the flood frees its places: its address is served again.
    drop(held);
    drop(filler);
    wait_stats(&server, "the flood's sockets are released", |s| {
        s.sockets_open == 2
    })
    .await;
    let back = TestClient::connect_synced_from(&url, flooder)
        .await
        .unwrap();
    assert_eq!(back.text("t"), "served");

    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains("concord_sockets_refused_total{cap=\"per_address\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("concord_sockets_refused_total{cap=\"total\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed_and_long_lived_ones_are_not() {
    let server = server(Config {
        header_read_timeout: Duration::from_millis(300),
        keep_alive_timeout: Duration::from_millis(600),
        ..Config::default()
    })
    .await;
    // Opened first, so every deadline below passes while they are open.
    let url = server.url("long-lived");
    let ws = TestClient::connect_synced(&url).await.unwrap();
    let events = format!("http://{}/api/docs/long-lived/events", server.addr);
    let mut sse = SseClient::connect(&events, None).await.unwrap();
    assert_eq!(sse.next_event().await.unwrap().event, "sync");

    // Half-open requests (slowloris), one trickling its head and many sending half of it.
    let mut trickling = TcpStream::connect(server.addr).await.unwrap();
    trickling.write_all(b"GET /doc HTTP/1.1\r\n").await.unwrap();
    let mut half_open = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /doc HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half_open.push(stream);
    }
    // A socket that never sends a byte.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // A kept-alive connection that got its answer and went quiet.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    for _ in 0..5 {
        let _ = trickling.write_all(b"X-Slow: 1\r\n").await;
    }
    let answer = closed_by_server(&mut trickling).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    for stream in &mut half_open {
        assert!(closed_by_server(stream).await.is_empty());
    }
    assert!(closed_by_server(&mut silent).await.is_empty());
    let answer = String::from_utf8(closed_by_server(&mut idle).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    wait_stats(&server, "the timeouts are counted", |s| {
        s.header_timeouts == 202 && s.keep_alive_timeouts == 1
    })
    .await;

    // The WebSocket and the SSE stream, open all along, still carry edits.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/docs/long-lived/update", server.addr))
        .header("content-type", "application/octet-stream")
        .body(text_insert_update(7, "t", "still here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    poll_until(DEADLINE, "the WebSocket client gets the edit", || {
        ws.text("t") == "still here"
    })
    .await;
    let event = sse.next_event().await.expect("the SSE stream goes on");
    assert_eq!(event.event, "update");
    assert!(ws.is_connected());
    server.shutdown().await;
}

/// The CPU time a process has used, user and system, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / per_second
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_descriptors_waits_without_spinning_and_serves_again_at_once() {
    // 128 descriptors, and a socket cap the operator set above them: accept runs out.
    let server = ServerProcess::start_with(
        0,
        &[
            "--max-sockets",
            "100000",
            "--max-sockets-per-address",
            "0",
            "--header-read-timeout",
            "1h",
        ],
        Some(128),
    );
    let mut flood = Vec::new();
    for _ in 0..200 {
        // About 115 are accepted before the descriptors run out; the rest wait in the listen
        // backlog (128 long).
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    poll_until(DEADLINE, "the server logs that it cannot accept", || {
        server.log().contains("cannot accept connections")
    })
    .await;

    // With its descriptors gone, it must not spin on accept. The measurement window is not a
    // wait for a result: a spinning loop would burn about a core for all of it.
    let window = Duration::from_secs(2);
    let before = cpu_seconds(server.pid());
    tokio::time::sleep(window).await;
    let used = cpu_seconds(server.pid()) - before;
    assert!(
        used < 0.5,
        "the server used {used:.2} s of CPU in {window:?} while out of descriptors"
    );
    let log = server.log();
    assert!(
        log.contains("limit=128"),
        "the descriptor limit is logged:\n{log}"
    );
    assert!(log.contains("max_sockets=100000"), "{log}");
    let logged = log.matches("cannot accept connections").count();
    assert!(logged <= 2, "logged {logged} times:\n{}", server.log());

    // The flood goes away: a client is served again, without a restart.
    drop(flood);
    let client = TestClient::connect_synced(&format!("ws://{}/after-the-flood", server.addr))
        .await
        .unwrap();
    client.edit(|txn| {
        use yrs::{Text, WriteTxn};
        txn.get_or_insert_text("t").insert(txn, 0, "back");
    });
    let reader = TestClient::connect_synced(&format!("ws://{}/after-the-flood", server.addr))
        .await
        .unwrap();
    poll_until(DEADLINE, "a second client sees the edit", || {
        reader.text("t") == "back"
    })
    .await;
    let metrics = metrics(server.addr).await;
    let errors = metrics
        .lines()
        .find_map(|line| line.strip_prefix("concord_accept_errors_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no accept error count in {metrics}"));
    assert!(errors > 0, "{metrics}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_derived_socket_cap_keeps_the_server_below_its_descriptor_limit() {
    // No --max-sockets: the cap comes from the 128 descriptors (128 less 64 kept free).
    let server = ServerProcess::start_with(
        0,
        &[
            "--max-sockets-per-address",
            "0",
            "--header-read-timeout",
            "1h",
        ],
        Some(128),
    );
    poll_until(DEADLINE, "the derived cap is logged", || {
        server.log().contains("max_sockets=64")
    })
    .await;
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    poll_until(
        DEADLINE,
        "sockets past the cap are refused at accept",
        || {
            server
                .log()
                .contains("socket closed at accept: 64 sockets are open")
        },
    )
    .await;
    drop(flood);
    // The server notices the flood's sockets close as it reads them: until it has, a new one
    // may still be past the cap and closed at accept.
    let url = format!("ws://{}/under-the-cap", server.addr);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let client = loop {
        match TestClient::connect_synced(&url).await {
            Ok(client) => break client,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no client got in once the flood was gone: {e:#}"),
        }
    };
    assert!(client.is_connected());
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains("concord_accept_errors_total 0"),
        "the descriptors never ran out:\n{metrics}"
    );
    let refused = metrics
        .lines()
        .find_map(|line| line.strip_prefix("concord_sockets_refused_total{cap=\"total\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(refused > 0, "{metrics}");
    server.kill();
}
