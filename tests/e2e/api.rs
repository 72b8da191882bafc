//! The HTTP API, Server-Sent Events and long-polling: reads and writes against WebSocket
//! clients, bad input, SSE resume across compaction without gaps or duplicates, polling, the
//! change feed for embedders, health and metrics.

use std::collections::HashMap;
use std::sync::Arc;

use concord_core::{DocName, MemoryStore, Position};
use concord_server::Config;
use concord_server::auth::{Claims, JwtAuthorizer, Permission, TokenSigner, unix_now};
use concord_server::feed::FeedEvent;
use concord_sled::SledStore;
use concord_tests::{
    DEADLINE, EmbeddedServer, RawClient, SseClient, TestClient, b64_decode, b64_encode, poll_until,
    text_insert_update,
};
use futures_util::StreamExt;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, StateVector, Text, Transact, Update, WriteTxn};

/// Polls the async `check` until it returns something, for at most [`DEADLINE`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let run = async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(concord_tests::POLL_INTERVAL).await;
        }
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

pub(crate) fn api(server: &EmbeddedServer, path: &str) -> String {
    format!("http://{}/api{path}", server.addr)
}

pub(crate) async fn memory_server(config: Config) -> EmbeddedServer {
    EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await
}

/// POSTs a v1 update; returns the status and the body.
pub(crate) async fn post_update(
    server: &EmbeddedServer,
    doc: &str,
    update: Vec<u8>,
) -> (u16, String) {
    let response = http()
        .post(api(server, &format!("/docs/{doc}/update")))
        .header("content-type", "application/octet-stream")
        .body(update)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

pub(crate) async fn get(url: &str) -> (u16, String, Vec<u8>) {
    let response = http().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, response.bytes().await.unwrap().to_vec())
}

pub(crate) fn text_of_update(update: &[u8], root: &str) -> String {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text(root);
    text.get_string(&doc.transact())
}

pub(crate) fn error_of(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_read_written_listed_and_deleted_over_http() {
    let server = memory_server(Config::default()).await;
    let ws = TestClient::connect_synced(&server.url("notes"))
        .await
        .unwrap();

    // An update POSTed over HTTP is answered once stored and reaches the WebSocket client.
    let (status, body) = post_update(&server, "notes", text_insert_update(7, "t", "hello")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"stored":true}"#));
    ws.wait_until(DEADLINE, "the WebSocket client sees the HTTP write", |c| {
        c.text("t") == "hello"
    })
    .await;
    // And the WebSocket client's edit is readable over HTTP.
    ws.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 5, " world");
    });
    let url = api(&server, "/docs/notes?format=update");
    let state = eventually("the edit is readable over HTTP", || async {
        let (status, kind, bytes) = get(&url).await;
        assert_eq!((status, kind.as_str()), (200, "application/octet-stream"));
        (text_of_update(&bytes, "t") == "hello world").then_some(bytes)
    })
    .await;
    assert_eq!(text_of_update(&state, "t"), "hello world");

    // What a state vector lacks, and the state vector itself.
    let (_, _, sv) = get(&api(&server, "/docs/notes/state-vector")).await;
    let sv = StateVector::decode_v1(&sv).unwrap();
    assert_eq!(sv, ws.state_vector());
    let (_, _, nothing) = get(&api(
        &server,
        &format!("/docs/notes?sv={}", b64_encode(&sv.encode_v1())),
    ))
    .await;
    assert_eq!(text_of_update(&nothing, "t"), "");
    assert!(Update::decode_v1(&nothing).unwrap().is_empty());

    // JSON, with and without the type hint.
    let (_, kind, json) = get(&api(&server, "/docs/notes?format=json&types=text:t")).await;
    assert!(kind.starts_with("application/json"), "{kind}");
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["t"], "hello world");
    let (_, _, json) = get(&api(&server, "/docs/notes?format=json")).await;
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json, serde_json::json!({"t": "hello world"}), "inferred");

    // The list, with the loaded flag and pagination.
    post_update(&server, "other", text_insert_update(8, "t", "x")).await;
    let (_, _, list) = get(&api(&server, "/docs?limit=1")).await;
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["docs"][0]["name"], "notes");
    assert_eq!(list["docs"][0]["loaded"], true);
    assert_eq!(list["next"], "notes");
    let (_, _, rest) = get(&api(&server, "/docs?limit=1&after=notes")).await;
    let rest: serde_json::Value = serde_json::from_slice(&rest).unwrap();
    assert_eq!(rest["docs"][0]["name"], "other");
    assert_eq!(rest["next"], serde_json::Value::Null);

    // Deleting closes the document's connections and removes it.
    let mut raw = RawClient::connect(&server.url("notes")).await.unwrap();
    // Its first frame (the server's SyncStep1) says it joined the room: a delete before that
    // would find no connection to close, and the late joiner would open the document afresh.
    assert!(
        raw.next_binary(DEADLINE).await.is_some(),
        "the server greets"
    );
    let response = http()
        .delete(api(&server, "/docs/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (code, reason) = raw.expect_close().await;
    assert_eq!((code, reason.as_str()), (4404, "document deleted"));
    let (status, _, body) = get(&api(&server, "/docs/notes")).await;
    assert_eq!(status, 404);
    assert!(error_of(&String::from_utf8_lossy(&body)).contains("notes"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_and_changes_nothing() {
    let server = memory_server(Config::default()).await;
    post_update(&server, "doc", text_insert_update(1, "t", "kept")).await;
    let cases: Vec<(String, u16)> = vec![
        (api(&server, "/docs/unknown"), 404),
        (api(&server, "/docs/doc?sv=%%%"), 400),
        (api(&server, "/docs/doc?sv=AAAA_-"), 400),
        (api(&server, "/docs/doc?format=xml"), 400),
        (api(&server, "/docs/doc?format=json&types=blob:x"), 400),
        (api(&server, "/docs/doc/poll?since=banana"), 400),
        (api(&server, "/docs/doc/poll?since=1.0&timeout=-3"), 400),
        (api(&server, "/docs/doc/events?last_event_id=nope"), 400),
        (api(&server, &format!("/docs/{}", "x".repeat(600))), 400),
        (api(&server, "/docs/unknown/state-vector"), 404),
    ];
    for (url, expected) in cases {
        let (status, kind, body) = get(&url).await;
        assert_eq!(status, expected, "{url}");
        assert!(kind.starts_with("application/json"), "{url}: {kind}");
        assert!(!error_of(&String::from_utf8_lossy(&body)).is_empty());
    }
    // Bad update bytes: 400, the document untouched.
    for body in [vec![], vec![1, 2, 3], vec![0, 2, 4, 255, 255, 255, 122]] {
        let (status, body) = post_update(&server, "doc", body).await;
        assert_eq!(status, 400, "{body}");
        error_of(&body);
    }
    let (_, _, state) = get(&api(&server, "/docs/doc")).await;
    assert_eq!(text_of_update(&state, "t"), "kept");
    // Wrong method.
    let response = http().put(api(&server, "/docs/doc")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_the_websocket_tokens() {
    const SECRET: &[u8] = b"api secret";
    let config = Config {
        authorizer: Some(Arc::new(JwtAuthorizer::hs256(SECRET).unwrap())),
        ..Config::default()
    };
    let server = memory_server(config).await;
    let token = |docs: &[(&str, Permission)]| {
        TokenSigner::hs256(SECRET)
            .unwrap()
            .sign(&Claims {
                exp: unix_now() + 3600,
                sub: None,
                docs: docs.iter().map(|(d, p)| ((*d).to_owned(), *p)).collect(),
            })
            .unwrap()
    };
    let write = token(&[("doc", Permission::Write)]);
    let read = token(&[("doc", Permission::Read)]);
    let post = |bearer: Option<String>| {
        let mut request = http()
            .post(api(&server, "/docs/doc/update"))
            .body(text_insert_update(3, "t", "x"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    let none = post(None).await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(post(Some("garbage".into())).await.unwrap().status(), 401);
    let readonly = post(Some(read.clone())).await.unwrap();
    assert_eq!(readonly.status(), 403);
    assert!(error_of(&readonly.text().await.unwrap()).contains("read-only"));
    assert_eq!(post(Some(write.clone())).await.unwrap().status(), 200);
    // Reading with the read token, as a header and as the query parameter.
    let (status, _, _) = get(&api(&server, &format!("/docs/doc?token={read}"))).await;
    assert_eq!(status, 200);
    let response = http()
        .get(api(&server, "/docs/doc"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Listing needs the "*" grant.
    let listing = http()
        .get(api(&server, "/docs"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 403);
    let all = token(&[("*", Permission::Read)]);
    let listing = http()
        .get(api(&server, "/docs"))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 200);
    server.shutdown().await;
}

/// Reads SSE events until `doc` has this text content; returns the ids (positions) of the sync
/// and update events seen. (A stream opened just after some writes may carry them all in its
/// first sync: resuming from that sync's id is then what a client does.)
pub(crate) async fn read_until_text(sse: &mut SseClient, doc: &Doc, want: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while doc.get_or_insert_text("t").get_string(&doc.transact()) != want {
        let event = sse.next_event().await.expect("the stream goes on");
        match event.event.as_str() {
            "sync" | "update" => {
                ids.push(event.id.clone().expect("sync and update events have ids"));
                doc.transact_mut()
                    .apply_update(Update::decode_v1(&b64_decode(&event.data)).unwrap())
                    .unwrap();
            }
            _ => {}
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_edits_reach_sse_and_polling_clients() {
    let server = memory_server(Config::default()).await;
    let ws = TestClient::connect_synced(&server.url("live"))
        .await
        .unwrap();
    let mut sse = SseClient::connect(&api(&server, "/docs/live/events"), None)
        .await
        .unwrap();
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let first = sse.next_event().await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("sync", Some("0.0"))
    );

    // A poll with no position: the state now, and where to go on from.
    let (_, _, answer) = get(&api(&server, "/docs/live/poll")).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let mut since = answer["since"].as_str().unwrap().to_owned();

    let sse_doc = Doc::new();
    let poll_doc = Doc::new();
    for i in 0..5 {
        ws.edit(|txn| {
            let t = txn.get_or_insert_text("t");
            let end = t.len(txn);
            t.insert(txn, end, &format!("{i};"));
        });
    }
    let want = "0;1;2;3;4;";
    let ids = read_until_text(&mut sse, &sse_doc, want).await;
    // An update POSTed over HTTP reaches the SSE client (and the WebSocket one) too.
    let appended = Doc::with_client_id(99);
    appended
        .transact_mut()
        .apply_update(Update::decode_v1(&ws.full_state()).unwrap())
        .unwrap();
    let update = {
        let text = appended.get_or_insert_text("t");
        let mut txn = appended.transact_mut();
        let end = text.len(&txn);
        text.insert(&mut txn, end, "http;");
        txn.encode_update_v1()
    };
    assert_eq!(post_update(&server, "live", update).await.0, 200);
    let want = "0;1;2;3;4;http;";
    let ids = [ids, read_until_text(&mut sse, &sse_doc, want).await].concat();
    ws.wait_until(DEADLINE, "the WebSocket client has the HTTP write", |c| {
        c.text("t") == want
    })
    .await;

    let positions: Vec<Position> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Polling until everything is there.
    while poll_doc
        .get_or_insert_text("t")
        .get_string(&poll_doc.transact())
        != want
    {
        let (status, _, answer) = get(&api(
            &server,
            &format!("/docs/live/poll?since={since}&timeout=10"),
        ))
        .await;
        assert_eq!(status, 200);
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        for update in answer["updates"].as_array().unwrap() {
            poll_doc
                .transact_mut()
                .apply_update(
                    Update::decode_v1(&b64_decode(update["update"].as_str().unwrap())).unwrap(),
                )
                .unwrap();
        }
        since = answer["since"].as_str().unwrap().to_owned();
    }
    // Awareness reaches SSE clients as named events, and polls carry the states.
    ws.set_awareness(r#"{"user":"ada"}"#);
    loop {
        let event = sse.next_event().await.unwrap();
        if event.event == "awareness" {
            assert!(event.id.is_none());
            break;
        }
    }
    let (_, _, answer) = get(&api(
        &server,
        &format!("/docs/live/poll?since={since}&timeout=0"),
    ))
    .await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer["awareness"].is_string(), "{answer}");
    assert_eq!(answer["updates"], serde_json::json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_without_gaps_or_duplicates_within_the_log_and_across_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let config = Config {
        compact_after_updates: 8,
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, store.clone()).await;
    let ws = TestClient::connect_synced(&server.url("resume"))
        .await
        .unwrap();
    let append = |i: usize| {
        ws.edit(|txn| {
            let t = txn.get_or_insert_text("t");
            let end = t.len(txn);
            t.insert(txn, end, &format!("[{i}]"));
        })
    };
    let expected = |n: usize| (0..n).map(|i| format!("[{i}]")).collect::<String>();
    let doc = Doc::new();
    let url = api(&server, "/docs/resume/events");
    let mut sse = SseClient::connect(&url, None).await.unwrap();
    for i in 0..3 {
        append(i);
    }
    let mut seen = read_until_text(&mut sse, &doc, &expected(3)).await;
    let last = seen.last().cloned().unwrap();
    drop(sse);

    // Within the log: only the missed updates, no sync.
    for i in 3..5 {
        append(i);
    }
    let mut sse = SseClient::connect(&url, Some(&last)).await.unwrap();
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.event, "update", "{first:?}");
    doc.transact_mut()
        .apply_update(Update::decode_v1(&b64_decode(&first.data)).unwrap())
        .unwrap();
    seen.push(first.id.unwrap());
    seen.extend(read_until_text(&mut sse, &doc, &expected(5)).await);
    let last = seen.last().cloned().unwrap();
    drop(sse);

    // Across a compaction: the log after `last` is gone, so a sync first, then updates.
    let compactions = server.concord.compactions();
    let mut n = 5;
    while server.concord.compactions() == compactions || n < 20 {
        append(n);
        n += 1;
        tokio::task::yield_now().await;
        assert!(n < 100_000, "no compaction happened");
    }
    let name = DocName::new("resume").unwrap();
    poll_until(DEADLINE, "the log no longer reaches back", || {
        let from: Position = last.parse().unwrap();
        store
            .log_from(&name, from.seq)
            .is_ok_and(|tail| !tail.complete)
    })
    .await;
    let mut sse = SseClient::connect(&url, Some(&last)).await.unwrap();
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.event, "sync", "{first:?}");
    let sync_position: Position = first.id.clone().unwrap().parse().unwrap();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&b64_decode(&first.data)).unwrap())
        .unwrap();
    let after: Vec<String> = read_until_text(&mut sse, &doc, &expected(n)).await;
    for id in &after {
        assert!(id.parse::<Position>().unwrap() > sync_position);
    }
    seen.extend(after);
    // No update event twice, and positions only grow.
    let positions: Vec<Position> = seen.iter().map(|id| id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(
        doc.get_or_insert_text("t").get_string(&doc.transact()),
        ws.text("t")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedders_follow_documents_through_the_change_feed() {
    let server = memory_server(Config::default()).await;
    let doc = DocName::new("feed").unwrap();
    let mut all = server.concord.all_changes();
    let mut changes = server.concord.changes(&doc, None, None);
    match changes.next().await.unwrap().unwrap() {
        FeedEvent::Sync { position, .. } => assert_eq!(position, Position::START),
        other => panic!("expected a sync first, got {other:?}"),
    }
    for (i, word) in ["a", "b", "c"].iter().enumerate() {
        post_update(
            &server,
            "feed",
            text_insert_update(20 + i as u64, "t", word),
        )
        .await;
    }
    let mut positions = Vec::new();
    for _ in 0..3 {
        match tokio::time::timeout(DEADLINE, changes.next())
            .await
            .unwrap()
        {
            Some(Ok(FeedEvent::Change(change))) => positions.push(change.position),
            other => panic!("expected a change, got {other:?}"),
        }
        let change = tokio::time::timeout(DEADLINE, all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(change.doc, doc);
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    // Resuming from the first position gives exactly the other two.
    let mut resumed = server.concord.changes(&doc, Some(positions[0]), None);
    for expected in &positions[1..] {
        match tokio::time::timeout(DEADLINE, resumed.next())
            .await
            .unwrap()
        {
            Some(Ok(FeedEvent::Change(change))) => assert_eq!(change.position, *expected),
            other => panic!("expected a change, got {other:?}"),
        }
    }
    server.shutdown().await;
}

/// `name{labels} value` lines of a Prometheus text exposition, by name with labels.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        samples.insert(key.to_owned(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = memory_server(Config::default()).await;
    let root = |path: &str| format!("http://{}{path}", server.addr);
    assert_eq!(get(&root("/healthz")).await.0, 200);
    assert_eq!(get(&root("/readyz")).await.0, 200);
    let (status, kind, before) = get(&root("/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        kind.contains("openmetrics-text") || kind.contains("text/plain"),
        "{kind}"
    );
    let before = parse_metrics(&String::from_utf8(before).unwrap());
    for name in [
        "concord_updates_received_total",
        "concord_rooms_loaded",
        "concord_connections{transport=\"websocket\"}",
        "concord_persist_flush_seconds_count",
        "concord_rejected_total{reason=\"malformed\"}",
        "concord_auth_failures_total",
        "concord_queue_overflows_total{kind=\"slow_consumer\"}",
        "concord_compactions_total{outcome=\"done\"}",
    ] {
        assert!(before.contains_key(name), "{name} missing from {before:?}");
    }
    let a = TestClient::connect_synced(&server.url("m")).await.unwrap();
    let b = TestClient::connect_synced(&server.url("m")).await.unwrap();
    a.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "counted");
    });
    b.wait_until(DEADLINE, "b sees it", |b| b.text("t") == "counted")
        .await;
    let mut bad = RawClient::connect(&server.url("m")).await.unwrap();
    bad.send_binary(vec![0, 2, 4, 255, 255, 255, 122])
        .await
        .unwrap();
    bad.expect_close().await;
    let after = eventually("the edit is stored and counted", || async {
        let (_, _, body) = get(&root("/metrics")).await;
        let after = parse_metrics(&String::from_utf8(body).unwrap());
        (after["concord_persist_flush_seconds_count"] >= 1.0
            && after["concord_rejected_total{reason=\"malformed\"}"] >= 1.0)
            .then_some(after)
    })
    .await;
    assert!(
        after["concord_updates_received_total"] >= before["concord_updates_received_total"] + 1.0
    );
    assert!(after["concord_frames_sent_total"] > before["concord_frames_sent_total"]);
    assert_eq!(after["concord_connections{transport=\"websocket\"}"], 2.0);
    assert_eq!(after["concord_rooms_loaded"], 1.0);
    assert_eq!(after["concord_rejected_total{reason=\"malformed\"}"], 1.0);
    assert!(after["concord_persist_flush_seconds_count"] >= 1.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_from_another_history_starts_over_with_a_sync() {
    let server = memory_server(Config::default()).await;
    for i in 0..3 {
        post_update(&server, "again", text_insert_update(40 + i, "t", "old")).await;
    }
    let response = http()
        .delete(api(&server, "/docs/again"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // Made again: its seqs start over, below the position a client remembers.
    post_update(&server, "again", text_insert_update(50, "t", "new")).await;
    let mut sse = SseClient::connect(&api(&server, "/docs/again/events"), Some("3.0"))
        .await
        .unwrap();
    let first = sse.next_event().await.unwrap();
    assert_eq!(first.event, "sync", "{first:?}");
    assert_eq!(text_of_update(&b64_decode(&first.data), "t"), "new");
    let (_, _, answer) = get(&api(&server, "/docs/again/poll?since=3.0&timeout=0")).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer["sync"].is_string(), "{answer}");
    assert_eq!(answer["since"], "1.0");
    server.shutdown().await;
}
