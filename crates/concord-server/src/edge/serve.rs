//! The accept loop and HTTP/1.1 connections, with the protections that must hold before a
//! request is complete (see [`crate::serve`]): sockets counted and capped at `accept`
//! ([`crate::policy::sockets`]), a deadline on a request's line and headers, a deadline on an
//! idle kept-alive connection, and an accept loop that waits instead of spinning when the
//! process runs out of descriptors.
//!
//! Only HTTP/1.1 is served: WebSocket upgrades are HTTP/1.1, browsers speak HTTP/2 only over
//! TLS (which a reverse proxy terminates), and HTTP/1.1 lets every phase of a connection be
//! bounded here.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::ops::log_gate::LogGate;
use crate::ops::stats::Counters;
use crate::policy::sockets::{self, SocketGuard, Sockets};
use crate::state::AppState;

/// How often a line about refused sockets or failing `accept` is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The first and the longest wait after `accept` failed for want of descriptors; a closing
/// socket of ours ends the wait at once.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Deadlines of a connection before and between requests.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header_read: Duration,
    keep_alive: Duration,
}

/// Serves `app` on `listener` until the instance's shutdown token is cancelled, then lets
/// connections finish (for at most the shutdown grace) and returns.
pub(crate) async fn serve(listener: TcpListener, app: Router, state: &AppState) -> io::Result<()> {
    let sockets = state.sockets.clone();
    set_total_cap(&sockets, state.config.max_sockets);
    let timeouts = Timeouts {
        header_read: state.config.header_read_timeout,
        keep_alive: state.config.keep_alive_timeout,
    };
    let connections = TaskTracker::new();
    let refusals = LogGate::new(LOG_EVERY);
    let failures = LogGate::new(LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF.0;
    let shutdown = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            // The peer gave up before we took the connection: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays in the
                // backlog. Wait for one of our sockets to close (or a while, in case the
                // descriptors went elsewhere), never spin.
                Counters::bump(&state.counters.accept_errors);
                if let Some(held_back) = failures.pass() {
                    tracing::error!(
                        error = %e,
                        open_sockets = sockets.open(),
                        failures_not_logged = held_back,
                        "cannot accept connections; waiting for descriptors to free up"
                    );
                }
                tokio::select! {
                    () = sockets.released() => {}
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let guard = match sockets.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(refusal) => {
                // Closed unanswered: nothing was read, there is nothing to answer.
                drop(tcp);
                if let Some(held_back) = refusals.pass() {
                    tracing::warn!(
                        peer = %peer.ip(),
                        refused_not_logged = held_back,
                        "socket closed at accept: {refusal}"
                    );
                }
                continue;
            }
        };
        // Nagle's algorithm plus delayed ACKs adds tens of milliseconds to small frames.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        connections.spawn(connection(
            tcp,
            peer,
            guard,
            app.clone(),
            timeouts,
            state.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(state.config.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the shutdown grace period");
    }
    Ok(())
}

/// Sets the total cap: as configured, or derived from the descriptor limit after raising it.
fn set_total_cap(sockets: &Sockets, configured: Option<usize>) {
    let limit = sockets::raise_descriptor_limit();
    if let Some((before, after)) = limit {
        tracing::info!(
            soft_limit_before = before,
            limit = after,
            "open file descriptor limit"
        );
    }
    let derived = limit.map(|(_, after)| sockets::cap_for_descriptors(after));
    let cap = match (configured, derived) {
        (Some(cap), Some(safe)) if cap > safe => {
            tracing::warn!(
                max_sockets = cap,
                safe = safe,
                "--max-sockets is above what the descriptor limit safely allows: the server \
                 may run out of descriptors and accept nobody until some close"
            );
            cap
        }
        (Some(cap), _) => cap,
        (None, Some(derived)) => derived,
        (None, None) => 16 * 1024,
    };
    sockets.set_max_total(cap);
    tracing::info!(max_sockets = cap, "at most this many sockets open at once");
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection: HTTP/1.1 with upgrades, watched for its deadlines. Returning drops the
/// connection, which closes the socket (unless it was upgraded: the WebSocket owns it then).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    guard: SocketGuard,
    app: Router,
    timeouts: Timeouts,
    state: AppState,
) {
    let activity = Arc::new(Activity::new());
    let io = Watched {
        tcp,
        activity: activity.clone(),
        _guard: guard,
    };
    let service = {
        let activity = activity.clone();
        let state = state.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // Behind a trusted proxy, the client is who the proxy says it is.
            let client = crate::policy::proxy::client_address(
                Some(peer),
                request.headers(),
                &state.config.trusted_proxies,
            )
            .unwrap_or(peer);
            request.extensions_mut().insert(ConnectInfo(client));
            let busy = Busy::start(activity.clone());
            let app = app.clone();
            async move {
                let Ok(response) = app.oneshot(request).await;
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        // The deadlines are ours (see `Activity`): hyper's would count idle keep-alive time
        // as header time.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut draining = false;
    let mut deadline = activity.started + timeouts.header_read;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = state.shutdown.cancelled(), if !draining => {
                // Finishes the request in progress (if any), then closes.
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep_until(deadline) => {
                match activity.check(Instant::now(), timeouts) {
                    Check::Live(next) => deadline = next,
                    Check::Expired(phase) => {
                        let counter = match phase {
                            Phase::Head => &state.counters.header_timeouts,
                            Phase::Idle => &state.counters.keep_alive_timeouts,
                        };
                        Counters::bump(counter);
                        tracing::debug!(peer = %peer, ?phase, "socket closed: timed out");
                        return;
                    }
                }
            }
        }
    }
}

/// Where a connection is, for its deadlines: reading a request head (from `accept`, or from
/// the first byte after the last response), busy with requests (no deadline: a request's own
/// limits apply), or idle between requests.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// Requests whose response has not been fully written.
    in_flight: AtomicU32,
    /// With no request in flight: bytes have come since the last response (a head is being
    /// read), as opposed to idling.
    reading_head: AtomicBool,
    /// When the current phase began, in milliseconds since `started`.
    since_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Idle,
}

#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// Look again at this instant.
    Live(Instant),
    Expired(Phase),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicU32::new(0),
            reading_head: AtomicBool::new(true),
            since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self) {
        // Cheap on the hot path: two loads, and the clock only on the first byte after idling.
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn response_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.since_ms.store(self.now_ms(), Ordering::Release);
            self.reading_head.store(false, Ordering::Release);
        }
    }

    fn check(&self, now: Instant, timeouts: Timeouts) -> Check {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Check::Live(now + timeouts.header_read.min(timeouts.keep_alive));
        }
        let (phase, limit) = if self.reading_head.load(Ordering::Acquire) {
            (Phase::Head, timeouts.header_read)
        } else {
            (Phase::Idle, timeouts.keep_alive)
        };
        let since = self.started + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        let deadline = since + limit;
        if now >= deadline {
            Check::Expired(phase)
        } else {
            Check::Live(deadline)
        }
    }
}

/// A request in flight, until its response body is dropped (written, or the connection gone).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.request_started();
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

/// A response body that marks its request finished when dropped.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling [`Activity`] when bytes arrive, and holding its place in [`Sockets`].
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
    _guard: SocketGuard,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        keep_alive: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_complete_head_expires_after_the_header_timeout() {
        let activity = Activity::new();
        let start = activity.started;
        assert_eq!(
            activity.check(start, TIMEOUTS),
            Check::Live(start + TIMEOUTS.header_read)
        );
        // Bytes trickling in do not move the deadline.
        tokio::time::advance(Duration::from_secs(9)).await;
        activity.bytes_read();
        assert_eq!(
            activity.check(start + Duration::from_secs(10), TIMEOUTS),
            Check::Expired(Phase::Head)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_has_no_deadline_and_idling_after_it_has_the_keep_alive_one() {
        let activity = Activity::new();
        let start = activity.started;
        activity.request_started();
        let later = start + Duration::from_secs(100);
        assert!(matches!(activity.check(later, TIMEOUTS), Check::Live(_)));
        tokio::time::advance(Duration::from_secs(100)).await;
        activity.response_finished();
        let idle_since = start + Duration::from_secs(100);
        assert_eq!(
            activity.check(idle_since + Duration::from_secs(29), TIMEOUTS),
            Check::Live(idle_since + TIMEOUTS.keep_alive)
        );
        assert_eq!(
            activity.check(idle_since + TIMEOUTS.keep_alive, TIMEOUTS),
            Check::Expired(Phase::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_after_idling_starts_the_header_deadline() {
        let activity = Activity::new();
        let start = activity.started;
        activity.request_started();
        activity.response_finished();
        tokio::time::advance(Duration::from_secs(20)).await;
        activity.bytes_read();
        let first_byte = start + Duration::from_secs(20);
        assert_eq!(
            activity.check(first_byte, TIMEOUTS),
            Check::Live(first_byte + TIMEOUTS.header_read)
        );
        assert_eq!(
            activity.check(first_byte + TIMEOUTS.header_read, TIMEOUTS),
            Check::Expired(Phase::Head)
        );
    }
}
