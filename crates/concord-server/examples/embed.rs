//! Mounting Concord inside an existing axum application.
//!
//! The host app keeps its own routes (`/` and `/api/hello`) and serves Concord's documents under
//! `/collab`: a Yjs client connects to `ws://127.0.0.1:3000/collab/<document name>`.
//!
//! Run it with `cargo run -p concord-server --example embed`, stop it with ctrl-c.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use concord_server::concord_core::MemoryStore;
use concord_server::{Concord, Config};
use tokio_util::sync::CancellationToken;

/// The host application: its own routes plus Concord nested under `/collab`.
fn app(concord: &Concord) -> Router {
    Router::new()
        .route("/", get(|| async { "the host application" }))
        .route("/api/hello", get(|| async { "hello from the host app" }))
        .nest("/collab", concord_server::router(concord))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let shutdown = CancellationToken::new();
    let concord = Concord::new(
        Config::default(),
        Arc::new(MemoryStore::new()),
        shutdown.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "host app on http://{}/, documents under ws://{}/collab/<name>",
        listener.local_addr()?,
        listener.local_addr()?
    );
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    // In place of `axum::serve`: sockets capped from accept, deadlines on request headers and
    // idle connections, peer addresses for the per-address limits. Returns once `shutdown` is
    // cancelled and the requests in progress have finished.
    concord_server::serve(listener, app(&concord), &concord).await?;
    // Wait for Concord's connections to close (1001) and its updates to be stored.
    concord.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, GetString, Text, Transact, Update};

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Reads frames until a sync message of interest arrives (or the deadline passes).
    async fn next_sync(socket: &mut Socket) -> SyncMessage {
        let deadline = Duration::from_secs(20);
        tokio::time::timeout(deadline, async {
            loop {
                let frame = socket.next().await.expect("socket open").expect("frame");
                if let WsMessage::Binary(data) = frame
                    && let Ok(Message::Sync(sync)) = Message::decode_v1(&data)
                {
                    return sync;
                }
            }
        })
        .await
        .expect("a sync message within the deadline")
    }

    #[tokio::test]
    async fn concord_is_served_under_collab_beside_the_host_routes() {
        let shutdown = CancellationToken::new();
        let concord = Concord::new(
            Config::default(),
            Arc::new(MemoryStore::new()),
            shutdown.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn({
            let concord = concord.clone();
            async move { concord_server::serve(listener, app(&concord), &concord).await }
        });

        // The host app's own route still answers.
        let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        http.write_all(b"GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        http.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("hello from the host app"), "{response}");

        // A writer and a reader meet in /collab/notes.
        let url = format!("ws://{addr}/collab/notes");
        let (mut writer, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let (mut reader, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert!(matches!(
            next_sync(&mut writer).await,
            SyncMessage::SyncStep1(_)
        ));
        assert!(matches!(
            next_sync(&mut reader).await,
            SyncMessage::SyncStep1(_)
        ));

        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "embedded");
            txn.encode_update_v1()
        };
        let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
        writer.send(WsMessage::Binary(frame.into())).await.unwrap();

        let SyncMessage::Update(relayed) = next_sync(&mut reader).await else {
            panic!("expected the relayed update");
        };
        let copy = Doc::new();
        let copy_text = copy.get_or_insert_text("t");
        copy.transact_mut()
            .apply_update(Update::decode_v1(&relayed).unwrap())
            .unwrap();
        assert_eq!(copy_text.get_string(&copy.transact()), "embedded");

        shutdown.cancel();
        concord.closed().await;
        server.await.unwrap().unwrap();
    }
}
