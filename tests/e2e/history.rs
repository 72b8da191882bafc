//! Version history: named versions over HTTP and the Rust API, automatic versions at
//! compactions and after a while of editing (with an injected clock), retention thinning,
//! versions that equal the replayed log, restore relayed to live clients, restore of a restore,
//! read-only callers refused.

use std::sync::Arc;
use std::time::Duration;

use concord_core::{DocName, MemoryStore, Position};
use concord_server::auth::{Claims, JwtAuthorizer, Permission, TokenSigner, unix_now};
use concord_server::feed::FeedEvent;
use concord_server::{Config, HistoryConfig};
use concord_sled::SledStore;
use concord_tests::{DEADLINE, EmbeddedServer, ManualClock, TestClient, text_insert_update};
use futures_util::StreamExt;
use serde_json::{Value, json};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

use crate::api::{api, error_of, eventually, get, http, post_update, text_of_update};

/// POSTs `body` as JSON to `path`; returns the status and the body as JSON (or a string).
async fn post_json(server: &EmbeddedServer, path: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(api(server, path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn versions(server: &EmbeddedServer, doc: &str) -> Vec<Value> {
    let (status, _, body) = get(&api(server, &format!("/docs/{doc}/versions"))).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).unwrap();
    body["versions"].as_array().unwrap().clone()
}

/// A version's text root `t`, read as a Yjs update.
async fn version_text(server: &EmbeddedServer, doc: &str, id: u64) -> String {
    let (status, kind, body) = get(&api(
        server,
        &format!("/docs/{doc}/versions/{id}?format=update"),
    ))
    .await;
    assert_eq!((status, kind.as_str()), (200, "application/octet-stream"));
    text_of_update(&body, "t")
}

fn edit_text(client: &TestClient, at: u32, insert: &str) {
    client.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, at, insert);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_versions_are_kept_listed_read_restored_and_deleted_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let server = EmbeddedServer::start_with_store(Config::default(), store).await;
    let a = TestClient::connect_synced(&server.url("notes"))
        .await
        .unwrap();
    let b = TestClient::connect_synced(&server.url("notes"))
        .await
        .unwrap();
    edit_text(&a, 0, "first draft");
    a.edit(|txn| {
        let meta = txn.get_or_insert_map("meta");
        meta.insert(txn, "status", "draft");
    });
    b.wait_until(DEADLINE, "b sees a's draft", |c| {
        c.text("t") == "first draft"
    })
    .await;

    // A named version holds what the clients sent before it was asked for.
    let (status, first) =
        post_json(&server, "/docs/notes/versions", json!({"label": "draft"})).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["label"], "draft");
    assert!(first["bytes"].as_u64().unwrap() > 0);
    let id = first["id"].as_u64().unwrap();
    assert_eq!(version_text(&server, "notes", id).await, "first draft");
    let (_, _, as_json) = get(&api(
        &server,
        &format!("/docs/notes/versions/{id}?format=json&types=text:t,map:meta"),
    ))
    .await;
    let as_json: Value = serde_json::from_slice(&as_json).unwrap();
    assert_eq!(
        as_json,
        json!({"t": "first draft", "meta": {"status": "draft"}})
    );

    // Both clients edit on.
    edit_text(&b, 11, ", then rewritten");
    a.edit(|txn| {
        let meta = txn.get_or_insert_map("meta");
        meta.insert(txn, "status", "final");
        meta.insert(txn, "owner", "ada");
    });
    let edited = "first draft, then rewritten";
    for client in [&a, &b] {
        client
            .wait_until(DEADLINE, "both clients see both edits", |c| {
                c.text("t") == edited && c.map_json("meta")["owner"] == "ada"
            })
            .await;
    }

    // Restore: every connected client converges to the version, without reconnecting.
    let (status, restored) = post_json(
        &server,
        &format!("/docs/notes/versions/{id}/restore"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["restored"], id);
    assert_eq!(restored["changed"], true);
    for client in [&a, &b] {
        client
            .wait_until(DEADLINE, "the restore reaches every client", |c| {
                c.text("t") == "first draft" && c.map_json("meta") == json!({"status": "draft"})
            })
            .await;
        assert!(client.is_connected());
    }
    // The state before the restore is a named version: restoring it undoes the restore.
    let before = restored["saved_before"]["id"].as_u64().unwrap();
    assert_eq!(
        restored["saved_before"]["label"],
        format!("before restoring version {id}")
    );
    assert_eq!(version_text(&server, "notes", before).await, edited);
    let (status, undone) = post_json(
        &server,
        &format!("/docs/notes/versions/{before}/restore"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{undone}");
    for client in [&a, &b] {
        client
            .wait_until(
                DEADLINE,
                "the restore of the restore reaches every client",
                |c| c.text("t") == edited && c.map_json("meta")["owner"] == "ada",
            )
            .await;
    }
    // Restoring what the document already is changes nothing.
    let (status, again) = post_json(
        &server,
        &format!("/docs/notes/versions/{before}/restore"),
        json!({}),
    )
    .await;
    assert_eq!((status, &again["changed"]), (200, &json!(false)), "{again}");

    // Listing: oldest first, labels, sizes, positions.
    let listed = versions(&server, "notes").await;
    let labels: Vec<&str> = listed
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "draft".to_owned(),
            format!("before restoring version {id}"),
            format!("before restoring version {before}"),
            format!("before restoring version {before}"),
        ]
    );
    assert!(
        listed
            .iter()
            .all(|v| v["position"].as_str().unwrap().contains('.'))
    );
    // Listing documents counts their history.
    let (_, _, docs) = get(&api(&server, "/docs")).await;
    let docs: Value = serde_json::from_slice(&docs).unwrap();
    assert_eq!(docs["docs"][0]["versions"], 4);
    assert!(docs["docs"][0]["history_bytes"].as_u64().unwrap() > 0);

    // Delete, then it is gone.
    let url = api(&server, &format!("/docs/notes/versions/{id}"));
    assert_eq!(http().delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(http().delete(&url).send().await.unwrap().status(), 404);
    let (status, _, body) = get(&url).await;
    assert_eq!(status, 404);
    assert!(error_of(&String::from_utf8_lossy(&body)).contains("no version"));
    assert_eq!(versions(&server, "notes").await.len(), 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_version_requests_get_clear_errors() {
    let server = crate::api::memory_server(Config::default()).await;
    let (status, _) = post_update(&server, "doc", text_insert_update(1, "t", "x")).await;
    assert_eq!(status, 200);
    let cases = [
        (
            "/docs/nothing/versions",
            json!({"label": "x"}),
            404,
            "no document",
        ),
        ("/docs/doc/versions", json!({"label": ""}), 400, "label"),
        ("/docs/doc/versions", json!({"label": "   "}), 400, "label"),
        (
            "/docs/doc/versions",
            json!({"label": "x".repeat(300)}),
            400,
            "label",
        ),
        ("/docs/doc/versions", json!({"name": "x"}), 400, "label"),
        ("/docs/doc/versions", json!([1]), 400, "label"),
        ("/docs/doc/versions", json!(["x"]), 400, "label"),
        (
            "/docs/doc/versions/7/restore",
            json!({}),
            404,
            "no version 7",
        ),
        (
            "/docs/doc/versions/x/restore",
            json!({}),
            400,
            "not a version id",
        ),
    ];
    for (path, body, want, says) in cases {
        let (status, answer) = post_json(&server, path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{path} {body}: {error}");
    }
    let (status, _, body) = get(&api(&server, "/docs/doc/versions/-1")).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = get(&api(&server, "/docs/nothing/versions")).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(&api(&server, "/docs/doc/versions/1?format=xml")).await;
    assert_eq!(status, 400);
    // Nothing above changed the document or made a version.
    assert!(versions(&server, "doc").await.is_empty());
    let (_, _, state) = get(&api(&server, "/docs/doc")).await;
    assert_eq!(text_of_update(&state, "t"), "x");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_callers_may_list_and_read_versions_but_not_make_or_restore_them() {
    const SECRET: &[u8] = b"history secret";
    let config = Config {
        authorizer: Some(Arc::new(JwtAuthorizer::hs256(SECRET).unwrap())),
        ..Config::default()
    };
    let server = crate::api::memory_server(config).await;
    let token = |permission| {
        TokenSigner::hs256(SECRET)
            .unwrap()
            .sign(&Claims {
                exp: unix_now() + 3600,
                sub: None,
                docs: [("doc".to_owned(), permission)].into_iter().collect(),
            })
            .unwrap()
    };
    let (write, read) = (token(Permission::Write), token(Permission::Read));
    let post = |path: &str, bearer: &str| {
        http()
            .post(api(&server, path))
            .bearer_auth(bearer)
            .body(json!({"label": "v"}).to_string())
            .send()
    };
    let update = http()
        .post(api(&server, "/docs/doc/update"))
        .bearer_auth(&write)
        .body(text_insert_update(1, "t", "kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 200);
    let made = post("/docs/doc/versions", &write).await.unwrap();
    assert_eq!(made.status(), 201);
    let refused = post("/docs/doc/versions", &read).await.unwrap();
    assert_eq!(refused.status(), 403);
    let refused = post("/docs/doc/versions/1/restore", &read).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(error_of(&refused.text().await.unwrap()).contains("read-only"));
    let delete = http()
        .delete(api(&server, "/docs/doc/versions/1"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);
    let listed = http()
        .get(api(&server, "/docs/doc/versions"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let one = http()
        .get(api(&server, "/docs/doc/versions/1"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(text_of_update(&one.bytes().await.unwrap(), "t"), "kept");
    // No token at all: 401.
    let anonymous = http()
        .get(api(&server, "/docs/doc/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    server.shutdown().await;
}

/// The state of `doc` after applying every stored change up to and including `upto`, read
/// from the change feed from the start of the history.
async fn replayed(server: &EmbeddedServer, doc: &DocName, upto: Position) -> Doc {
    let replay = Doc::new();
    let mut changes = server.concord.changes(doc, Some(Position::START), None);
    loop {
        let event = tokio::time::timeout(DEADLINE, changes.next())
            .await
            .expect("the feed answers")
            .expect("the feed goes on")
            .expect("the feed reads the store");
        let (update, position) = match event {
            FeedEvent::Change(change) => (change.update.to_vec(), change.position),
            FeedEvent::Sync { update, position } => (update, position),
        };
        replay
            .transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        if position >= upto {
            assert_eq!(
                position, upto,
                "the version's position is a stored update's"
            );
            return replay;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_equals_the_log_replayed_to_its_position() {
    let server = crate::api::memory_server(Config::default()).await;
    let name = DocName::new("log").unwrap();
    let client = TestClient::connect_synced(&server.url("log"))
        .await
        .unwrap();
    let mut wanted = String::new();
    let mut taken = Vec::new();
    for round in 0..4 {
        for word in ["alpha ", "beta ", "gamma "] {
            let at = wanted.len() as u32;
            edit_text(&client, at, word);
            wanted.push_str(word);
        }
        // Through the Rust API this time: it waits for what was applied to be stored.
        let want = wanted.clone();
        eventually("the server has the client's edits", || {
            let server = &server;
            let want = want.clone();
            async move {
                let (_, _, state) = get(&api(server, "/docs/log")).await;
                (text_of_update(&state, "t") == want).then_some(())
            }
        })
        .await;
        let version = server
            .concord
            .save_version(&name, &format!("round {round}"))
            .await
            .unwrap();
        taken.push((version, wanted.clone()));
    }
    let listed = server.concord.versions(&name).await.unwrap();
    assert_eq!(
        listed,
        taken.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>()
    );
    for (version, text) in &taken {
        let state = server.concord.version(&name, version.id).await.unwrap();
        assert_eq!(text_of_update(&state, "t"), *text);
        let replay = replayed(&server, &name, version.position).await;
        let replayed_state = replay
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let ours = Doc::new();
        ours.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        // Same content and same history (state vectors), not only the same text.
        assert_eq!(
            ours.transact().state_vector(),
            replay.transact().state_vector()
        );
        assert_eq!(text_of_update(&replayed_state, "t"), *text);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_versions_come_at_compactions_and_after_editing_and_are_thinned() {
    let clock = ManualClock::new(1_000 * 86_400_000);
    let store = Arc::new(MemoryStore::new());
    let config = Config {
        clock: clock.clone(),
        compact_after_updates: 5,
        history: HistoryConfig {
            interval: Duration::from_secs(600),
            ..HistoryConfig::default()
        },
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, store.clone()).await;
    let name = DocName::new("busy").unwrap();
    let automatic = || async {
        store
            .versions(&name)
            .unwrap()
            .into_iter()
            .filter(|v| v.label.is_none())
            .collect::<Vec<_>>()
    };
    // Six writes: the log passes five entries, the document is compacted, a version is kept.
    for i in 0..6 {
        let (status, _) = post_update(&server, "busy", text_insert_update(10 + i, "t", "w")).await;
        assert_eq!(status, 200);
    }
    let first = eventually("a version at the compaction", || async {
        let versions = automatic().await;
        (!versions.is_empty()).then_some(versions)
    })
    .await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].created_at_ms, clock.millis());
    assert!(server.concord.compactions() >= 1);

    // Edited again, and ten minutes pass: another automatic version.
    clock.advance(Duration::from_secs(60));
    let (status, _) = post_update(&server, "busy", text_insert_update(20, "t", "x")).await;
    assert_eq!(status, 200);
    clock.advance(Duration::from_secs(600));
    let second = eventually("a version after ten minutes of editing", || async {
        let versions = automatic().await;
        (versions.len() == 2).then_some(versions)
    })
    .await;
    let state = server.concord.version(&name, second[1].id).await.unwrap();
    assert_eq!(text_of_update(&state, "t").len(), 7);

    // Two days later both are in one day: the next version thins them to that day's newest.
    // A named version from the start stays whatever its age.
    let named = server.concord.save_version(&name, "kept").await.unwrap();
    clock.advance(Duration::from_secs(2 * 86_400));
    let (status, _) = post_update(&server, "busy", text_insert_update(21, "t", "y")).await;
    assert_eq!(status, 200);
    clock.advance(Duration::from_secs(600));
    let thinned = eventually("the day's versions thinned to one", || async {
        let versions = automatic().await;
        (versions.len() == 2 && versions[0].id == second[1].id).then_some(versions)
    })
    .await;
    assert!(thinned[1].created_at_ms > second[1].created_at_ms);

    // A month on, the automatic versions older than 30 days are gone.
    clock.advance(Duration::from_secs(31 * 86_400));
    let (status, _) = post_update(&server, "busy", text_insert_update(22, "t", "z")).await;
    assert_eq!(status, 200);
    clock.advance(Duration::from_secs(600));
    eventually("only the newest automatic version is left", || async {
        let versions = automatic().await;
        (versions.len() == 1 && versions[0].created_at_ms == clock.millis()).then_some(())
    })
    .await;
    let all = store.versions(&name).unwrap();
    assert!(
        all.iter().any(|v| v.id == named.id),
        "named versions are never thinned"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_through_the_rust_api_brings_back_maps_and_text_for_live_clients() {
    let server = crate::api::memory_server(Config::default()).await;
    let name = DocName::new("api").unwrap();
    let client = TestClient::connect_synced(&server.url("api"))
        .await
        .unwrap();
    client.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 0, "one");
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "k", 1);
    });
    let want = |c: &TestClient| c.text("t") == "one";
    eventually("stored", || async {
        let (_, _, state) = get(&api(&server, "/docs/api")).await;
        (text_of_update(&state, "t") == "one").then_some(())
    })
    .await;
    let version = server.concord.save_version(&name, "one").await.unwrap();
    client.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        t.remove_range(txn, 0, 3);
        t.insert(txn, 0, "two");
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "k", 2);
        m.insert(txn, "extra", true);
    });
    eventually("the edit is stored", || async {
        let (_, _, state) = get(&api(&server, "/docs/api")).await;
        (text_of_update(&state, "t") == "two").then_some(())
    })
    .await;
    let restored = server.concord.restore(&name, version.id).await.unwrap();
    assert!(restored.changed);
    client
        .wait_until(DEADLINE, "the client gets the restore", |c| {
            let m = c.map_json("m");
            want(c) && m["k"].as_f64() == Some(1.0) && m.get("extra").is_none()
        })
        .await;
    // The store holds the restored document too (it was stored before the answer).
    let stored = store_text(&server, "api").await;
    assert_eq!(stored, "one");
    let unknown = server.concord.restore(&name, 99).await.unwrap_err();
    assert!(matches!(
        unknown,
        concord_server::HistoryError::NoVersion { id: 99, .. }
    ));
    server.shutdown().await;
}

async fn store_text(server: &EmbeddedServer, doc: &str) -> String {
    let (_, _, state) = get(&api(server, &format!("/docs/{doc}"))).await;
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("t");
    text.get_string(&doc.transact())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_acknowledged_before_a_sigkill_is_there_after_the_restart() {
    use crate::process::ServerProcess;
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(0, data.path());
    let url = |addr: std::net::SocketAddr, path: &str| format!("http://{addr}/api{path}");
    let post = |addr, path: &str, body: Vec<u8>| {
        http()
            .post(url(addr, path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let write = |addr, client, text: &str| {
        post(
            addr,
            "/docs/kept/update",
            text_insert_update(client, "t", text),
        )
    };
    assert_eq!(
        write(server.addr, 1, "version").await.unwrap().status(),
        200
    );
    let made = post(
        server.addr,
        "/docs/kept/versions",
        json!({"label": "v"}).to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = serde_json::from_str(&made.text().await.unwrap()).unwrap();
    let id = made["id"].as_u64().unwrap();
    assert_eq!(write(server.addr, 2, "later ").await.unwrap().status(), 200);
    let restored = post(
        server.addr,
        &format!("/docs/kept/versions/{id}/restore"),
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(restored.status(), 200);
    // Acknowledged: now the process dies without a chance to flush anything.
    let addr = server.addr;
    server.kill();
    let server = ServerProcess::start(addr.port(), data.path());
    let (status, _, state) = get(&url(server.addr, "/docs/kept")).await;
    assert_eq!(status, 200);
    assert_eq!(text_of_update(&state, "t"), "version");
    let (_, _, listed) = get(&url(server.addr, "/docs/kept/versions")).await;
    let listed: Value = serde_json::from_slice(&listed).unwrap();
    let labels: Vec<&str> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["label"].as_str())
        .collect();
    assert_eq!(labels, ["v", &format!("before restoring version {id}")]);
    server.kill();
}
