//! Lingering after the server sent a close frame: closing a socket with unread data makes the
//! kernel reset the connection, and a reset can discard the close frame (with its reason)
//! before the peer reads it, which is just what a flooding client would send into.

use axum::extract::ws::Message as WsMessage;
use futures_util::{Stream, StreamExt};

use crate::edge::ws::writer::CLOSE_TIMEOUT;

/// Most bytes read and ignored after the server closed a connection.
const LINGER_BYTES: usize = 1 << 20;

/// Reads (and ignores) what the peer still sends until its own close frame arrives, for at
/// most [`CLOSE_TIMEOUT`] and [`LINGER_BYTES`].
pub(crate) async fn linger<S, E>(stream: &mut S)
where
    S: Stream<Item = Result<WsMessage, E>> + Unpin,
{
    let drain = async {
        let mut drained = 0usize;
        while let Some(Ok(message)) = stream.next().await {
            // A peer that keeps flooding after the close gets no more of the server's time.
            drained += match &message {
                WsMessage::Close(_) => return,
                WsMessage::Binary(data) | WsMessage::Ping(data) | WsMessage::Pong(data) => {
                    data.len()
                }
                WsMessage::Text(text) => text.len(),
            };
            if drained > LINGER_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    type Item = Result<WsMessage, std::io::Error>;

    #[tokio::test]
    async fn lingering_ends_at_the_peers_close_frame() {
        let frames: Vec<Item> = vec![
            Ok(WsMessage::Binary(Bytes::from_static(b"late"))),
            Ok(WsMessage::Close(None)),
            Ok(WsMessage::Binary(Bytes::from_static(b"never read"))),
        ];
        let mut stream = futures_util::stream::iter(frames);
        linger(&mut stream).await;
        assert!(
            stream.next().await.is_some(),
            "what follows the close is left"
        );
    }

    #[tokio::test]
    async fn a_flood_after_the_close_is_read_only_up_to_the_bound() {
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let mut stream = futures_util::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(WsMessage::Binary(chunk.clone()))
        });
        // Returns without a close frame from the peer: the byte bound ends it.
        linger(&mut stream).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_waited_for_at_most_the_close_timeout() {
        let mut stream = futures_util::stream::pending::<Item>();
        let started = tokio::time::Instant::now();
        linger(&mut stream).await;
        assert_eq!(started.elapsed(), CLOSE_TIMEOUT);
    }
}
