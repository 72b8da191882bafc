//! The reading half of a WebSocket connection: frames in, checked against the connection's rate
//! limits, decoded, handed to the ingest path; the outcome decides whether the connection
//! goes on. Generic over the socket's stream, so it is tested without sockets.

use std::sync::Arc;

use axum::extract::ws::Message as WsMessage;
use bytes::Bytes;
use concord_core::{ConnId, decode_frame};
use futures_util::{Stream, StreamExt};

use crate::edge::ws::acks::SaveQueue;
use crate::edge::ws::writer::LastSeen;
use crate::ingest::{Ingest, Source};
use crate::ops::stats::Counters;
use crate::policy::limits::RateLimits;
use crate::rooms::{CloseReason, Closer, LiveRoom};

/// What the reader of one connection works with.
pub(crate) struct Reader<'a> {
    pub(crate) ingest: &'a Ingest,
    pub(crate) room: &'a Arc<LiveRoom>,
    pub(crate) conn: ConnId,
    pub(crate) closer: &'a Closer,
    pub(crate) limits: RateLimits,
    /// [`crate::Config::max_message_size`], for the reason given when a frame is over it.
    pub(crate) max_message_size: usize,
    pub(crate) counters: &'a Counters,
    pub(crate) last_seen: &'a LastSeen,
}

impl Reader<'_> {
    /// Reads until the peer leaves, the connection is asked to close, or a frame closes it.
    /// Save requests go to `saves` with what answers them.
    pub(crate) async fn run<S, E>(&self, stream: &mut S, saves: &mut SaveQueue)
    where
        S: Stream<Item = Result<WsMessage, E>> + Unpin,
        E: Into<axum::Error>,
    {
        let name = self.room.name();
        let (conn, closer, counters) = (self.conn, self.closer, self.counters);
        // Made once, not per frame: each new one registers a waiter under the token's lock.
        let mut closed = std::pin::pin!(closer.closed());
        loop {
            let message = tokio::select! {
                biased;
                _ = &mut closed => return,
                message = stream.next() => message,
            };
            self.last_seen.touch();
            let data = match binary(message, closer, self.max_message_size) {
                Next::Frame(data) => data,
                Next::Skip => continue,
                Next::End => {
                    if let Some(reason) = closer.reason() {
                        tracing::info!(doc = %name, conn, ?reason, "closing");
                    }
                    return;
                }
            };
            // Before decoding: a flood costs a bucket check per frame, nothing more.
            if let Err(exceeded) = self.limits.check(data.len()) {
                Counters::bump(&counters.rate_limited);
                tracing::warn!(doc = %name, conn, %exceeded, "closing: rate limit exceeded");
                closer.close(CloseReason::RateLimited(exceeded.to_string()));
                return;
            }
            let inbound = match decode_frame(&data) {
                Ok(inbound) => inbound,
                Err(e) => {
                    Counters::bump(&counters.malformed);
                    tracing::warn!(doc = %name, conn, error = %e, "closing: malformed message");
                    closer.close(CloseReason::refusing(&e, e.is_unsupported()));
                    return;
                }
            };
            if let Err(exceeded) = self.limits.check_awareness_of(&inbound) {
                Counters::bump(&counters.rate_limited);
                tracing::warn!(doc = %name, conn, %exceeded, "closing: rate limit exceeded");
                closer.close(CloseReason::RateLimited(exceeded.to_string()));
                return;
            }
            // Boxed: the write path's state then takes heap only while a frame is processed,
            // instead of every idle connection's reader carrying room for it.
            let outcome =
                Box::pin(self.ingest.receive(self.room, Source::Conn(conn), inbound)).await;
            for ticket in outcome.saves {
                // Boxed too: only clients that ask for acknowledgements get here.
                if Box::pin(saves.send(ticket)).await.is_err() {
                    return;
                }
            }
            if let Some(refused) = outcome.refused {
                tracing::warn!(doc = %name, conn, error = %refused, "closing: refused");
                closer.close(refused.close_reason());
                return;
            }
        }
    }
}

/// What a read of a WebSocket gave.
pub(crate) enum Next {
    /// A binary frame to handle.
    Frame(Bytes),
    /// A control frame: nothing to handle.
    Skip,
    /// The connection ends; `closer` says why, if the client is to be told.
    End,
}

/// Sorts what a read gave, closing the connection with the right reason when it ends: a text
/// frame (unsupported), a frame over `max_message_size` (too big), the peer's close or a read
/// error (silently).
pub(crate) fn binary<E: Into<axum::Error>>(
    message: Option<Result<WsMessage, E>>,
    closer: &Closer,
    max_message_size: usize,
) -> Next {
    match message {
        Some(Ok(WsMessage::Binary(data))) => Next::Frame(data),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Next::Skip,
        Some(Ok(WsMessage::Text(_))) => {
            closer.close(CloseReason::Unsupported(
                "text frames are not supported: send binary messages".into(),
            ));
            Next::End
        }
        Some(Ok(WsMessage::Close(_))) | None => {
            closer.close_silently();
            Next::End
        }
        Some(Err(e)) => {
            if is_too_big(e.into()) {
                closer.close(CloseReason::TooBig(format!(
                    "message too big: the limit is {max_message_size} bytes"
                )));
            } else {
                closer.close_silently();
            }
            Next::End
        }
    }
}

/// Whether a read failed because the frame was over the size limit.
fn is_too_big(error: axum::Error) -> bool {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => matches!(*e, tungstenite::Error::Capacity(_)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::policy::limits::Rates;
    use crate::rooms::{Outbox, Peer, next_conn_id};
    use crate::state::AppState;
    use bytes::Bytes;
    use concord_core::{Access, DocName};
    use tokio::sync::mpsc;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    use yrs::{Text, Transact};

    type Item = Result<WsMessage, axum::Error>;

    /// A room with one peer (the "other" client) that watches what is relayed.
    struct Fixture {
        state: AppState,
        room: Arc<LiveRoom>,
        _guard: crate::rooms::RoomGuard,
        _other: crate::rooms::Membership,
        other_out: Outbox,
    }

    async fn fixture(config: Config) -> Fixture {
        let state = AppState::for_tests(config);
        let guard = state
            .rooms
            .open(&DocName::new("reader").unwrap())
            .await
            .unwrap();
        let room = guard.room().clone();
        let (peer, mut other_out) = Peer::new(64, Closer::default(), false);
        let other = room.join(next_conn_id(), Access::ReadWrite, peer);
        // The joining frames: SyncStep1.
        assert!(other_out.try_recv().is_some());
        Fixture {
            state,
            room,
            _guard: guard,
            _other: other,
            other_out,
        }
    }

    fn rates(messages_per_second: u32, message_burst: u32) -> Rates {
        Rates {
            messages_per_second,
            message_burst,
            bytes_per_second: 1 << 20,
            byte_burst: 1 << 20,
            awareness_per_second: 60,
            awareness_burst: 300,
        }
    }

    fn update_frame(text: &str) -> Bytes {
        let doc = yrs::Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        Bytes::from(Message::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1())
    }

    /// Runs a reader over `frames` (then the end of the stream) and returns its closer and the
    /// save tickets it handed on.
    async fn read(fx: &Fixture, frames: Vec<Item>, rates: Rates) -> (Closer, Vec<u64>) {
        let closer = Closer::default();
        let last_seen = LastSeen::new();
        // The reading connection is a member of the room, as a served connection is.
        let conn = next_conn_id();
        let (peer, _outbox) = Peer::new(64, closer.clone(), false);
        let _membership = fx.room.join(conn, Access::ReadWrite, peer);
        let reader = Reader {
            ingest: &fx.state.ingest,
            room: &fx.room,
            conn,
            closer: &closer,
            limits: RateLimits::new(rates, 1024),
            max_message_size: 1024,
            counters: &fx.state.counters,
            last_seen: &last_seen,
        };
        let (mut saves, started) = SaveQueue::new();
        let mut stream = futures_util::stream::iter(frames);
        reader.run(&mut stream, &mut saves).await;
        drop(saves);
        let mut ids = Vec::new();
        if let Ok(mut tickets) = started.await {
            while let Some(ticket) = tickets.recv().await {
                assert!(
                    ticket.durable.wait().await,
                    "a memory store stores everything"
                );
                ids.push(ticket.id);
            }
        }
        (closer, ids)
    }

    #[tokio::test]
    async fn updates_are_applied_relayed_and_save_requests_handed_on_in_order() {
        let mut fx = fixture(Config::default()).await;
        let mut both = update_frame("hello").to_vec();
        both.extend_from_slice(&concord_core::encode_saved(7));
        let frames = vec![
            Ok(WsMessage::Binary(Bytes::from(both))),
            Ok(WsMessage::Ping(Bytes::new())),
            Ok(WsMessage::Binary(concord_core::encode_saved(8))),
        ];
        let (closer, saves) = read(&fx, frames, rates(100, 100)).await;
        // The stream ended: the peer is gone, nobody is told anything.
        assert!(closer.is_closed());
        assert_eq!(closer.reason(), None);
        assert_eq!(saves, [7, 8]);
        let relayed = fx.other_out.try_recv().expect("the update was relayed");
        assert_eq!(relayed[..2], [0, 2], "a sync update message");
        assert_eq!(
            fx.state
                .counters
                .updates_in
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_text_frame_closes_as_unsupported_and_nothing_after_it_is_read() {
        let mut fx = fixture(Config::default()).await;
        let frames = vec![
            Ok(WsMessage::Text("hi".into())),
            Ok(WsMessage::Binary(update_frame("never"))),
        ];
        let (closer, _) = read(&fx, frames, rates(100, 100)).await;
        assert!(matches!(closer.reason(), Some(CloseReason::Unsupported(_))));
        assert!(fx.other_out.try_recv().is_none());
    }

    #[tokio::test]
    async fn malformed_frames_close_and_change_nothing() {
        let mut fx = fixture(Config::default()).await;
        // The seven-byte allocation bomb: a sync update whose payload claims 4 GiB.
        let bomb = Bytes::from_static(&[0, 2, 4, 255, 255, 255, 122]);
        let (closer, _) = read(&fx, vec![Ok(WsMessage::Binary(bomb))], rates(100, 100)).await;
        assert!(matches!(closer.reason(), Some(CloseReason::Malformed(_))));
        let (closer, _) = read(
            &fx,
            vec![Ok(WsMessage::Binary(Bytes::from_static(&[42, 0])))],
            rates(100, 100),
        )
        .await;
        assert!(matches!(closer.reason(), Some(CloseReason::Unsupported(_))));
        assert!(fx.other_out.try_recv().is_none());
        assert_eq!(
            fx.state
                .counters
                .malformed
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn a_sender_over_its_rate_is_closed_before_its_frame_is_decoded() {
        let mut fx = fixture(Config::default()).await;
        let frames = (0..3)
            .map(|i| Ok(WsMessage::Binary(update_frame(&i.to_string()))))
            .collect();
        let (closer, _) = read(&fx, frames, rates(1, 2)).await;
        assert!(matches!(closer.reason(), Some(CloseReason::RateLimited(_))));
        // Two frames got through, the third did not.
        assert!(fx.other_out.try_recv().is_some());
        assert!(fx.other_out.try_recv().is_some());
        assert!(fx.other_out.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_frame_over_the_size_limit_closes_with_a_reason_naming_the_limit() {
        let fx = fixture(Config::default()).await;
        let too_big = axum::Error::new(tungstenite::Error::Capacity(
            tungstenite::error::CapacityError::MessageTooLong {
                size: 2048,
                max_size: 1024,
            },
        ));
        let (closer, _) = read(&fx, vec![Err(too_big)], rates(100, 100)).await;
        assert_eq!(
            closer.reason(),
            Some(CloseReason::TooBig(
                "message too big: the limit is 1024 bytes".into()
            ))
        );
        // Any other read error: the peer is gone, nothing to say.
        let reset = axum::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let (closer, _) = read(&fx, vec![Err(reset)], rates(100, 100)).await;
        assert!(closer.is_closed());
        assert_eq!(closer.reason(), None);
    }

    #[tokio::test]
    async fn an_update_past_the_document_limit_is_refused_and_its_sender_closed() {
        let mut fx = fixture(Config {
            max_document_bytes: Some(8),
            ..Config::default()
        })
        .await;
        let frames = vec![Ok(WsMessage::Binary(update_frame(&"x".repeat(100))))];
        let (closer, _) = read(&fx, frames, rates(100, 100)).await;
        assert!(matches!(
            closer.reason(),
            Some(CloseReason::DocumentTooLarge(_))
        ));
        assert!(fx.other_out.try_recv().is_none(), "nothing was applied");
    }

    #[tokio::test]
    async fn a_reader_asked_to_close_stops_reading() {
        let mut fx = fixture(Config::default()).await;
        let closer = Closer::default();
        closer.close(CloseReason::ShuttingDown);
        let last_seen = LastSeen::new();
        let reader = Reader {
            ingest: &fx.state.ingest,
            room: &fx.room,
            conn: next_conn_id(),
            closer: &closer,
            limits: RateLimits::new(rates(100, 100), 1024),
            max_message_size: 1024,
            counters: &fx.state.counters,
            last_seen: &last_seen,
        };
        let (tx, rx) = mpsc::channel::<Item>(4);
        tx.send(Ok(WsMessage::Binary(update_frame("late"))))
            .await
            .unwrap();
        let mut stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let (mut saves, _started) = SaveQueue::new();
        reader.run(&mut stream, &mut saves).await;
        assert!(fx.other_out.try_recv().is_none());
    }
}
