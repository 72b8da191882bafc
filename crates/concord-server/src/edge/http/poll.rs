//! `GET /docs/{name}/poll`: long-polling, for clients behind proxies that break both
//! WebSockets and streamed responses. An answer carries the stored updates after `since` (at
//! once if there are any, else as soon as one is stored or after the timeout), the position the
//! next poll starts from, and the room's whole presence.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use concord_core::{DocName, Position};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use yrs::StateVector;

use crate::durability::feed::{FeedEvent, stored_state};
use crate::edge::http::error::{ApiError, ApiResult, DocPath, Params, Request};
use crate::edge::http::params::{encode_b64, position_param, state_vector_param};
use crate::ops::stats::Counters;
use crate::policy::admission::Needs;
use crate::state::AppState;

/// Longest a poll may wait, whatever it asks for.
const MAX_POLL: Duration = Duration::from_secs(60);
/// How long a poll waits when it does not say.
const DEFAULT_POLL: Duration = Duration::from_secs(25);
/// Most updates one poll answer carries (the next poll continues from there).
const MAX_POLL_UPDATES: usize = 1000;
/// Longest a poll waits while the room has awareness states (see `poll_answer`).
const PRESENCE_POLL: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub(crate) struct PollParams {
    since: Option<String>,
    timeout: Option<f64>,
    sv: Option<String>,
}

/// `GET /docs/{name}/poll`: long-polling.
pub(crate) async fn poll(
    State(state): State<AppState>,
    DocPath(name): DocPath,
    Params(params): Params<PollParams>,
    request: Request,
) -> ApiResult<Response> {
    let _admitted = request.admit(&state, &name, Needs::Read, false).await?;
    let sv = state_vector_param(params.sv.as_deref())?;
    let since = params
        .since
        .as_deref()
        .map(|s| position_param("since", s))
        .transpose()?;
    let timeout = match params.timeout {
        None => DEFAULT_POLL,
        Some(t) if t.is_finite() && t >= 0.0 => {
            Duration::from_secs_f64(t.min(MAX_POLL.as_secs_f64()))
        }
        Some(_) => return Err(ApiError::bad_request("timeout must be a number of seconds")),
    };
    let _waiting = PollGauge::start(&state);
    Ok(Json(poll_answer(&state, &name, since, sv, timeout).await?).into_response())
}

/// Counts a waiting poll for `/metrics` for as long as it lives (also when its client leaves
/// first and the handler is dropped).
struct PollGauge(std::sync::Arc<Counters>);

impl PollGauge {
    fn start(state: &AppState) -> PollGauge {
        state.counters.add_poll(1);
        PollGauge(state.counters.clone())
    }
}

impl Drop for PollGauge {
    fn drop(&mut self) {
        self.0.add_poll(-1);
    }
}

async fn poll_answer(
    state: &AppState,
    name: &DocName,
    since: Option<Position>,
    sv: Option<StateVector>,
    timeout: Duration,
) -> ApiResult<serde_json::Value> {
    // Presence as of the answer, so the newest renewal of every state is in it.
    let awareness = || {
        state
            .rooms
            .get(name)
            .and_then(|room| room.awareness_update())
            .map(|update| encode_b64(&update))
    };
    // Clients drop awareness states they have not heard of for 30 s, and polls carry presence
    // only when they answer: with presence in the room, no poll waits longer than this.
    let timeout = if awareness().is_some() {
        timeout.min(PRESENCE_POLL)
    } else {
        timeout
    };
    let Some(since) = since else {
        let (update, position) = stored_state(state.store.clone(), name.clone(), sv)
            .await
            .map_err(ApiError::internal)?;
        return Ok(json!({
            "since": position.to_string(),
            "sync": encode_b64(&update),
            "updates": [],
            "awareness": awareness(),
        }));
    };
    // Other processes' changes reach this one's feed only for documents loaded here: while it
    // waits, a poll holds the room open (as an SSE stream does), so they arrive at once.
    let _followed = state.follow(name).await?;
    let mut feed = state.changes(name, Some(since), sv);
    let mut updates = Vec::new();
    let mut next = since;
    let mut sync = None;
    // What the log already holds after `since` comes at once, whatever the timeout: the
    // stream reads it first, so that first read is not what the timeout bounds.
    let mut item = match first_without_waiting(state, name, since).await? {
        true => feed.next().await,
        false => tokio::time::timeout(timeout, feed.next())
            .await
            .unwrap_or_default(),
    };
    while let Some(event) = item {
        match event.map_err(ApiError::internal)? {
            FeedEvent::Sync { update, position } => {
                sync = Some(encode_b64(&update));
                next = position;
            }
            FeedEvent::Change(change) => {
                next = change.position;
                updates.push(json!({
                    "id": change.position.to_string(),
                    "update": encode_b64(&change.update),
                }));
            }
        }
        if updates.len() >= MAX_POLL_UPDATES {
            break;
        }
        // Whatever else is ready goes in the same answer.
        item = futures_util::FutureExt::now_or_never(feed.next()).unwrap_or_default();
    }
    Ok(json!({
        "since": next.to_string(),
        "sync": sync,
        "updates": updates,
        "awareness": awareness(),
    }))
}

/// Whether a stream from `since` has something to say at once: updates after it in the log,
/// or a sync (the log no longer reaches back, or `since` is from another history).
async fn first_without_waiting(
    state: &AppState,
    name: &DocName,
    since: Position,
) -> ApiResult<bool> {
    let tail = state
        .store
        .log_from(name, since.seq)
        .await
        .map_err(ApiError::internal)?;
    let newer = tail.entries.iter().any(|(seq, updates)| {
        *seq > since.seq
            || u32::try_from(updates.len()).unwrap_or(u32::MAX) > since.index.saturating_add(1)
    });
    Ok(newer || !tail.complete || since.seq > tail.last_seq)
}
