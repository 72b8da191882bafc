//! What the in-process benches share (included with `#[path]` by each): Concord served by axum
//! on a loopback port, the WebSocket client's connect, the save acknowledgement's parser, and
//! the CPU a phase used.

#![allow(dead_code)] // Not every bench uses every item.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_benches::process_cpu;
use concord_core::{MSG_SAVED, Store};
use concord_server::{Concord, Config};
use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The default `Config` with the per-connection rate limits lifted: the load of a bench is a
/// machine's, not a person's.
pub(crate) fn unlimited() -> Config {
    Config {
        rate_messages_per_second: u32::MAX,
        rate_message_burst: u32::MAX,
        rate_bytes_per_second: u32::MAX,
        rate_byte_burst: u32::MAX,
        rate_awareness_per_second: u32::MAX,
        rate_awareness_burst: u32::MAX,
        ..Config::default()
    }
}

/// Concord served by axum on an ephemeral loopback port.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) concord: Concord,
    shutdown: CancellationToken,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves `Concord::new(config, store)` on 127.0.0.1 (TCP_NODELAY on every connection).
    pub(crate) async fn start(store: Arc<dyn Store>, config: Config) -> Server {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let concord = Concord::new(config, store, shutdown.clone());
        let app = concord_server::router(&concord);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let signal = shutdown.clone().cancelled_owned();
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        Server {
            addr,
            concord,
            shutdown,
            serve,
        }
    }

    /// Closes every connection and waits until every update is stored.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.concord.closed().await;
        let _ = self.serve.await;
    }
}

pub(crate) async fn connect(
    addr: SocketAddr,
    doc: &str,
) -> (SplitSink<Ws, Message>, SplitStream<Ws>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("TCP_NODELAY");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/{doc}"), tcp)
        .await
        .expect("WebSocket handshake");
    ws.split()
}

/// The id of a save acknowledgement, or `None` for any other message.
pub(crate) fn parse_ack(data: &[u8]) -> Option<u64> {
    let (&tag, rest) = data.split_first()?;
    if tag != MSG_SAVED {
        return None;
    }
    let (len, rest) = read_var(rest)?;
    let payload = rest.get(..usize::try_from(len).ok()?)?;
    let (id, _) = read_var(payload)?;
    Some(id)
}

/// A lib0 varUint and the bytes after it.
pub(crate) fn read_var(data: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &data[i + 1..]));
        }
    }
    None
}

/// The CPU the process used since `before`, over `wall`.
pub(crate) fn cpu_used(before: Option<Duration>, wall: Duration) -> String {
    match (before, process_cpu()) {
        (Some(before), Some(after)) => {
            let cpu = after.saturating_sub(before);
            format!(
                "{:.2} s in {:.2} s = {:.2} cores",
                cpu.as_secs_f64(),
                wall.as_secs_f64(),
                cpu.as_secs_f64() / wall.as_secs_f64()
            )
        }
        _ => "unavailable".to_owned(),
    }
}
