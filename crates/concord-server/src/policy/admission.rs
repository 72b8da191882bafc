//! The checks every request for a document passes before it gets anywhere near a room, shared
//! by the WebSocket upgrade and the HTTP API: shutdown, origin allow-list, connection slot,
//! authorizer, access, room capacity. A refusal is an HTTP status and a reason; each edge
//! renders it its own way (a text body before a WebSocket upgrade, JSON on the API).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use concord_core::Access;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::ops::stats::Counters;
use crate::policy::auth::{AuthError, AuthRequest, Authorizer, Grant};
use crate::policy::limits::{ConnectionLimits, ConnectionSlot, Refused};

/// A request that passed every check.
pub(crate) struct Admitted {
    /// What the authorizer granted (read-write on an open server).
    pub(crate) grant: Grant,
    /// Its place among the open connections, held for as long as it is served.
    pub(crate) slot: ConnectionSlot,
}

/// Why a request was refused.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// Whether the answer carries `WWW-Authenticate: Bearer` (a 401).
    pub(crate) fn asks_for_credentials(&self) -> bool {
        self.status == StatusCode::UNAUTHORIZED
    }
}

/// What a request needs to do with the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Read it (read-only grants suffice).
    Read,
    /// Change it.
    Write,
}

/// Asks whether a document could be opened now (the room registry's capacity): handed in, so
/// that policy depends on no other layer.
pub(crate) type RoomCapacity = Arc<dyn Fn(&concord_core::DocName) -> bool + Send + Sync>;

/// The admission policy and what it counts against.
pub(crate) struct Admission {
    pub(crate) shutdown: CancellationToken,
    /// [`crate::Config::allowed_origins`].
    pub(crate) allowed_origins: Vec<String>,
    /// [`crate::Config::authorizer`].
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
    pub(crate) connections: Arc<ConnectionLimits>,
    pub(crate) can_open: RoomCapacity,
    pub(crate) max_rooms: usize,
    pub(crate) counters: Arc<Counters>,
}

impl Admission {
    /// Runs the checks, in order: shutdown, origin, connection slot, authorizer, the access
    /// `needs`, and (when `opens_room`) room capacity.
    pub(crate) async fn admit(
        &self,
        request: AuthRequest<'_>,
        needs: Needs,
        opens_room: bool,
    ) -> Result<Admitted, Refusal> {
        let slot = self.connect(request.headers, request.peer, request.doc)?;
        let grant = self.authorize(request, needs, opens_room).await?;
        Ok(Admitted { grant, slot })
    }

    /// The checks of a connection before any document is named (a Hocuspocus socket opens
    /// its documents later, one by one, through [`Admission::authorize`]): shutdown, origin,
    /// connection slot. `what` names the request in log lines.
    pub(crate) fn connect(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
        what: &dyn std::fmt::Display,
    ) -> Result<ConnectionSlot, Refusal> {
        let counters = &self.counters;
        let name = what;
        if self.shutdown.is_cancelled() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down",
            ));
        }

        if !self.allowed_origins.is_empty()
            && let Some(origin) = headers.get(header::ORIGIN)
            && !self
                .allowed_origins
                .iter()
                .any(|allowed| origin_matches(allowed, origin.as_bytes()))
        {
            Counters::bump(&counters.origin_refused);
            let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            tracing::info!(doc = %name, %origin, "refused: origin not allowed");
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("origin {origin} is not allowed"),
            ));
        }

        self.connections
            .acquire(peer.map(|p| p.ip()))
            .map_err(|refused| {
                Counters::bump(&counters.connections_refused);
                let refusal = match refused {
                    Refused::Total(max) => Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the server holds its maximum of {max} connections"),
                    ),
                    Refused::PerIp(max) => Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("too many connections from your address (at most {max})"),
                    ),
                    Refused::AttemptsPerIp(rate) => Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "too many connection attempts from your address (more than {rate}/s)"
                        ),
                    ),
                };
                tracing::warn!(doc = %name, peer = ?peer, reason = %refusal.reason, "refused");
                refusal
            })
    }

    /// The checks of one document: authorizer, the access `needs`, and (when `opens_room`)
    /// room capacity.
    pub(crate) async fn authorize(
        &self,
        request: AuthRequest<'_>,
        needs: Needs,
        opens_room: bool,
    ) -> Result<Grant, Refusal> {
        let counters = &self.counters;
        let (name, peer) = (request.doc, request.peer);
        let grant = match &self.authorizer {
            None => Grant {
                access: Access::ReadWrite,
                subject: None,
                expires_at: None,
            },
            Some(authorizer) => {
                match AssertUnwindSafe(authorizer.authorize(request))
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(grant)) => grant,
                    Ok(Err(error)) => {
                        Counters::bump(&counters.auth_failures);
                        tracing::info!(doc = %name, peer = ?peer, reason = %error, "refused: not authorized");
                        return Err(match error {
                            AuthError::Unauthenticated(reason) => {
                                Refusal::new(StatusCode::UNAUTHORIZED, reason)
                            }
                            AuthError::Forbidden(reason) => {
                                Refusal::new(StatusCode::FORBIDDEN, reason)
                            }
                        });
                    }
                    Err(_) => {
                        Counters::bump(&counters.panics);
                        tracing::error!(doc = %name, "the authorizer panicked; request refused");
                        return Err(Refusal::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "authorization failed",
                        ));
                    }
                }
            }
        };
        if needs == Needs::Write && grant.access == Access::ReadOnly {
            Counters::bump(&counters.auth_failures);
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("the token grants read-only access to document {name:?}"),
            ));
        }

        if opens_room && !(self.can_open)(name) {
            Counters::bump(&counters.rooms_refused);
            tracing::warn!(doc = %name, max_rooms = self.max_rooms, "refused: too many documents open");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many documents are open; try again later",
            ));
        }
        Ok(grant)
    }
}

/// Whether the `Origin` header value `origin` is the configured `allowed` origin. Origins are
/// compared without case (browsers send scheme and host in lower case; a configuration may
/// not) and without a trailing slash on the configured one.
fn origin_matches(allowed: &str, origin: &[u8]) -> bool {
    allowed
        .trim_end_matches('/')
        .as_bytes()
        .eq_ignore_ascii_case(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_without_case_or_a_trailing_slash() {
        assert!(origin_matches(
            "https://App.example/",
            b"https://app.example"
        ));
        assert!(origin_matches(
            "http://localhost:5173",
            b"http://localhost:5173"
        ));
        assert!(!origin_matches(
            "https://app.example",
            b"https://app.example.evil"
        ));
        assert!(!origin_matches(
            "https://app.example",
            b"http://app.example"
        ));
        assert!(!origin_matches("https://app.example", b"null"));
    }
}
