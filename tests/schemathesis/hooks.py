"""Schemathesis hooks for the Concord API run (loaded through SCHEMATHESIS_HOOKS by run.sh).

- Long-polling: a poll with `since` waits up to `timeout` seconds (default 25, at most 60) when
  nothing new is stored. To bound the run's time, polls with `since` are sent with a short
  timeout, for every timeout value the server is meant to accept. Values it must refuse
  (negative, NaN, infinite, not a number) and values too large for a `std::time::Duration`
  (2^64 s and more) are sent as generated: the server clamps them to 60 s, so they are sent
  with `since` far in the future only when they are refused at once.
- Responses that are bytes (`application/octet-stream`) are read as strings, so that the
  schema (`type: string, format: binary`) is checked on them too.
- Checks of the contract (ARCHITECTURE.md) that a schema cannot state: see each check.
  With CONCORD_ST_EXPECT_AUTH=1 (the run against an authenticating server without a token),
  every document operation must be refused before it does anything.
"""

import math
import os
import re

import schemathesis

POLL_PATH = "/api/docs/{name}/poll"
EVENTS_PATH = "/api/docs/{name}/events"
LIST_PATH = "/api/docs"
# A poll that waits, waits this long (seconds): enough to exercise the waiting path.
SHORT_TIMEOUT = 0.1
# `Duration::from_secs_f64` takes values below 2^64 seconds.
DURATION_LIMIT = 2.0**64
# What both Rust's `f64::from_str` and Python's `float` read the same way (query values can
# come as strings).
DECIMAL = re.compile(r"^\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
POSITION = re.compile(r"^([0-9]+)\.([0-9]+)$")


def _position(text):
    match = POSITION.match(text) if isinstance(text, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _readable(value):
    # What `HeaderValue::to_str` accepts: visible ASCII, space and tab.
    return all(ch == "\t" or " " <= ch <= "~" for ch in value)


def _header(case, name):
    for key, value in (case.headers or {}).items():
        if key.lower() == name.lower():
            return key, value
    return None, None


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    if path == POLL_PATH and isinstance(case.query, dict) and "since" in case.query:
        timeout = case.query.get("timeout")
        if timeout is None:
            case.query["timeout"] = SHORT_TIMEOUT
            return
        if isinstance(timeout, str) and DECIMAL.match(timeout):
            timeout = float(timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            return
        if math.isfinite(timeout) and timeout > SHORT_TIMEOUT:
            case.query["timeout"] = SHORT_TIMEOUT


@schemathesis.deserializer("application/octet-stream")
def _bytes_as_string(ctx, response):
    return response.content.decode("latin-1")


@schemathesis.check
def poll_answer_contract(ctx, response, case):
    """A poll without `since` carries the state and no updates; with `since`, the updates are
    after it, in order, and the answer's `since` is the last of them."""
    if case.operation.path != POLL_PATH or response.status_code != 200:
        return None
    answer = response.json()
    since = (case.query or {}).get("since")
    if since is None:
        if answer["sync"] is None or answer["updates"]:
            raise AssertionError(
            f"a poll without `since` must carry the state and no updates: {answer}"
        )
        return None
    ids = [_position(update["id"]) for update in answer["updates"]]
    # After a sync (the log after `since` was compacted away) updates follow the sync.
    previous = _position(since) if answer["sync"] is None else None
    for position in ids:
        if previous is not None and position <= previous:
            raise AssertionError(f"updates must come after `since` {since}, in order: {answer}")
        previous = position
    if ids and answer["sync"] is None and _position(answer["since"]) != ids[-1]:
        raise AssertionError(f"the answer's `since` must be its last update's id: {answer}")
    return None


@schemathesis.check
def list_contract(ctx, response, case):
    """Listed names are sorted, after `after`, at most `limit` (clamped to 1..1000) of them;
    `next` is the last name of a full page."""
    if case.operation.path != LIST_PATH or response.status_code != 200:
        return None
    answer = response.json()
    names = [doc["name"] for doc in answer["docs"]]
    # The server compares names as Rust strings: UTF-8 bytes.
    keys = [name.encode() for name in names]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise AssertionError(f"names must be sorted and distinct: {names}")
    after = (case.query or {}).get("after")
    if isinstance(after, str) and any(key <= after.encode() for key in keys):
        raise AssertionError(f"every name must sort after {after!r}: {names}")
    limit = (case.query or {}).get("limit", 100)
    if isinstance(limit, int) and not isinstance(limit, bool):
        limit = min(max(limit, 1), 1000)
        if len(names) > limit:
            raise AssertionError(f"more than limit={limit} documents: {len(names)}")
        if answer["next"] is not None and (len(names) != limit or answer["next"] != names[-1]):
            raise AssertionError(f"`next` must be the last name of a full page: {answer}")
    return None


@schemathesis.check
def auth_enforced(ctx, response, case):
    """Against a server that requires tokens, without one: every document operation is refused
    with 401 (or 400 for a request that is malformed before its token is looked at, 405 for a
    method a path does not serve)."""
    if os.environ.get("CONCORD_ST_EXPECT_AUTH") != "1":
        return None
    if not case.operation.path.startswith("/api/docs"):
        return None
    if response.status_code not in (400, 401, 405):
        raise AssertionError(
            f"without a token, {case.operation.method.upper()} {case.operation.path} must be refused "
            f"(401), not answered {response.status_code}"
        )
    return None
