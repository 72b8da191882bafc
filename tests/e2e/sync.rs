//! Document sync: convergence of concurrent edits, late joiners, isolation between documents and
//! how document names map to URLs.

use concord_server::Config;
use concord_tests::{
    DEADLINE, RawClient, Root, TestClient, TestServer, awareness_message, decode_messages,
    poll_until_ok, text_insert_update, update_message,
};
use serde_json::json;
use yrs::sync::Message;
use yrs::updates::encoder::Encode;
use yrs::{Array, Map, MapPrelim, Out, Text, WriteTxn};

const ROOTS: &[Root<'static>] = &[Root::Text("t"), Root::Array("list"), Root::Map("m")];

/// Waits until every client has the same document (compared through a fresh decode of each
/// client's full state) and returns it.
async fn converged(clients: &[&TestClient]) -> serde_json::Value {
    poll_until_ok(DEADLINE, "every client has the same document", || {
        let first = clients[0].snapshot(ROOTS);
        for (i, client) in clients.iter().enumerate().skip(1) {
            let other = client.snapshot(ROOTS);
            if other != first {
                return Err(format!("client 0 has {first}, client {i} has {other}"));
            }
        }
        Ok(())
    })
    .await;
    for client in clients {
        let status = client.status();
        assert!(
            status.errors.is_empty(),
            "client errors: {:?}",
            status.errors
        );
        assert!(
            client.is_connected(),
            "a client was disconnected: {status:?}"
        );
    }
    clients[0].snapshot(ROOTS)
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_on_concurrent_text_array_and_map_edits() {
    let server = TestServer::start(Config::default()).await;
    let url = server.url("converge");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();

    // Round 1: both edit every kind of type without waiting for each other.
    a.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "hello ");
    });
    b.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "world");
    });
    a.edit(|txn| {
        let list = txn.get_or_insert_array("list");
        list.push_back(txn, "a1");
        list.push_back(txn, "a2");
        let nested = list.push_back(txn, MapPrelim::from_iter([("owner", "a")]));
        nested.insert(txn, "n", 1);
    });
    b.edit(|txn| {
        let list = txn.get_or_insert_array("list");
        list.push_front(txn, "b1");
        list.push_back(txn, MapPrelim::from_iter([("owner", "b")]));
    });
    a.edit(|txn| {
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "a", 1);
        m.insert(txn, "shared", "from-a");
    });
    b.edit(|txn| {
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "b", 2);
        m.insert(txn, "shared", "from-b");
    });

    let doc = converged(&[&a, &b]).await;
    let text = doc["t"].as_str().unwrap();
    assert_eq!(text.len(), "hello world".len(), "text: {text:?}");
    assert!(
        text.contains("hello ") && text.contains("world"),
        "text: {text:?}"
    );
    let list = doc["list"].as_array().unwrap();
    assert_eq!(list.len(), 5, "list: {list:?}");
    assert_eq!(strings(&doc["list"]), ["a1", "a2", "b1"]);
    assert!(list.contains(&json!({"owner": "a", "n": 1})), "{list:?}");
    assert!(list.contains(&json!({"owner": "b"})), "{list:?}");
    let shared = &doc["m"]["shared"];
    assert!(
        shared == "from-a" || shared == "from-b",
        "map: {}",
        doc["m"]
    );
    assert_eq!(doc["m"]["a"], 1);
    assert_eq!(doc["m"]["b"], 2);

    // Round 2: concurrent deletes, inserts and writes inside a nested map in the array.
    fn nested_map(txn: &mut yrs::TransactionMut<'_>, owner: &str) -> yrs::MapRef {
        let list = txn.get_or_insert_array("list");
        let found = list.iter(txn).find_map(|item| match item {
            Out::YMap(map) => {
                let is_owner = map
                    .get(txn, "owner")
                    .is_some_and(|o| o.to_string(txn) == owner);
                is_owner.then_some(map)
            }
            _ => None,
        });
        found.expect("the nested map exists")
    }
    a.edit(|txn| {
        let nested = nested_map(txn, "b");
        nested.insert(txn, "x", "a-was-here");
        nested.insert(txn, "from_a", true);
        let list = txn.get_or_insert_array("list");
        list.remove(txn, 0);
        txn.get_or_insert_text("t").insert(txn, 0, "<");
    });
    b.edit(|txn| {
        let nested = nested_map(txn, "b");
        nested.insert(txn, "x", "b-was-here");
        nested.insert(txn, "from_b", true);
        let list = txn.get_or_insert_array("list");
        list.insert(txn, 1, "b-mid");
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, ">");
        txn.get_or_insert_map("m").remove(txn, "a");
    });

    let doc = converged(&[&a, &b]).await;
    let text = doc["t"].as_str().unwrap();
    assert!(
        text.starts_with('<') && text.ends_with('>'),
        "text: {text:?}"
    );
    let list = doc["list"].as_array().unwrap();
    assert_eq!(list.len(), 5, "one removed, one inserted: {list:?}");
    assert!(list.contains(&json!("b-mid")), "{list:?}");
    let b_map = list
        .iter()
        .find(|v| v["owner"] == "b")
        .expect("b's nested map");
    assert_eq!(b_map["from_a"], true, "{b_map}");
    assert_eq!(b_map["from_b"], true, "{b_map}");
    assert!(
        b_map["x"] == "a-was-here" || b_map["x"] == "b-was-here",
        "{b_map}"
    );
    assert!(doc["m"].get("a").is_none(), "map: {}", doc["m"]);
    assert_eq!(doc["m"]["b"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_receives_the_full_state_in_the_handshake() {
    let server = TestServer::start(Config::default()).await;
    let url = server.url("late-joiner");
    let writer = TestClient::connect_synced(&url).await.unwrap();
    let observer = TestClient::connect_synced(&url).await.unwrap();
    for i in 0..100 {
        writer.edit(|txn| {
            let t = txn.get_or_insert_text("t");
            let end = t.len(txn);
            t.insert(txn, end, &format!("{i};"));
            txn.get_or_insert_array("list").push_back(txn, i);
            txn.get_or_insert_map("m")
                .insert(txn, format!("k{}", i % 10), i);
            if i % 25 == 0 {
                txn.get_or_insert_array("list")
                    .push_back(txn, MapPrelim::from_iter([("at", i)]));
            }
        });
    }
    // Once the observer has everything, so has the server.
    let expected = converged(&[&writer, &observer]).await;
    assert_eq!(expected["list"].as_array().unwrap().len(), 104);
    // Updates go to the other connections only: the writer never gets its own back.
    assert_eq!(writer.status().update_messages, 0, "{:?}", writer.status());
    assert_eq!(observer.status().update_messages, 100);

    let late = TestClient::connect(&url).await.unwrap();
    late.wait_synced().await;
    // Nobody edits any more: what the late joiner has on sync came from the handshake.
    assert_eq!(late.snapshot(ROOTS), expected);
    assert_eq!(late.status().update_messages, 0);
    assert!(!late.has_missing_updates());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_isolated() {
    let server = TestServer::start(Config::default()).await;
    let names = ["iso-a", "iso-b", "iso-a/sub", "ISO-A"];
    let mut pairs = Vec::new();
    for name in names {
        let url = server.url(name);
        let editor = TestClient::connect_synced(&url).await.unwrap();
        let watcher = TestClient::connect_synced(&url).await.unwrap();
        pairs.push((name, editor, watcher));
    }
    for (name, editor, _) in &pairs {
        editor.edit(|txn| {
            txn.get_or_insert_text("t")
                .insert(txn, 0, &format!("only {name}"));
            txn.get_or_insert_map("m")
                .insert(txn, "doc", name.to_string());
        });
        editor.set_awareness(&json!({ "doc": name }).to_string());
    }
    for (name, editor, watcher) in &pairs {
        let expected = format!("only {name}");
        watcher
            .wait_until(DEADLINE, format!("{name}'s watcher sees its edit"), |w| {
                w.text("t") == expected && w.awareness_states().contains_key(&editor.client_id())
            })
            .await;
    }
    // Every edit has been relayed in its own document; nothing leaked into another one.
    for (name, editor, watcher) in &pairs {
        assert_eq!(watcher.text("t"), format!("only {name}"));
        assert_eq!(watcher.map_json("m"), json!({ "doc": name }));
        let foreign: Vec<u64> = pairs
            .iter()
            .filter(|(other, _, _)| other != name)
            .map(|(_, e, _)| e.client_id())
            .collect();
        let states = watcher.awareness_states();
        assert!(
            foreign.iter().all(|id| !states.contains_key(id)),
            "{name} sees foreign awareness: {states:?}"
        );
        assert_eq!(editor.text("t"), format!("only {name}"));
    }
    for name in names {
        let fresh = TestClient::connect_synced(&server.url(name)).await.unwrap();
        assert_eq!(fresh.text("t"), format!("only {name}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_slashes_and_percent_encoding_address_one_document() {
    let server = TestServer::start(Config::default()).await;
    // Each group lists URL paths that must all reach the same document.
    let groups: [&[&str]; 3] = [
        &["team/a/notes", "team%2Fa%2Fnotes", "team/a%2fnotes"],
        &["my%20doc", "my%20do%63", "%6Dy%20doc"],
        &["caf%C3%A9", "caf%c3%a9"],
    ];
    for (g, paths) in groups.iter().enumerate() {
        let clients = {
            let mut clients = Vec::new();
            for path in *paths {
                clients.push(TestClient::connect_synced(&server.url(path)).await.unwrap());
            }
            clients
        };
        for (i, client) in clients.iter().enumerate() {
            client.edit(|txn| {
                txn.get_or_insert_array("list")
                    .push_back(txn, format!("g{g}c{i}"));
            });
        }
        let want: Vec<String> = (0..clients.len()).map(|i| format!("g{g}c{i}")).collect();
        for (i, client) in clients.iter().enumerate() {
            client
                .wait_until(
                    DEADLINE,
                    format!("the client at {} sees every edit", paths[i]),
                    |c| strings(&c.array_json("list")) == want,
                )
                .await;
        }
    }
    // A prefix of a slashed name is a different document.
    let parent = TestClient::connect_synced(&server.url("team/a"))
        .await
        .unwrap();
    assert_eq!(parent.array_json("list"), json!([]));
    let notes = TestClient::connect_synced(&server.url("team/a/notes"))
        .await
        .unwrap();
    assert_eq!(strings(&notes.array_json("list")), ["g0c0", "g0c1", "g0c2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_messages_in_one_frame_are_all_handled() {
    let server = TestServer::start(Config::default()).await;
    let url = server.url("batched");
    let observer = TestClient::connect_synced(&url).await.unwrap();
    let mut raw = RawClient::connect(&url).await.unwrap();
    raw.next_binary(DEADLINE)
        .await
        .expect("the server's SyncStep1");

    // An update, an awareness state and a query, in one frame.
    let mut frame = update_message(text_insert_update(4242, "t", "batched"));
    frame.extend(awareness_message(4242, 1, r#"{"batched":true}"#));
    frame.extend(Message::AwarenessQuery.encode_v1());
    raw.send_binary(frame).await.unwrap();

    observer
        .wait_until(
            DEADLINE,
            "the observer gets the update and the state",
            |o| o.text("t") == "batched" && o.awareness_states().contains_key(&4242),
        )
        .await;
    // The sender gets its awareness relayed, then the answer to its query; never its own
    // update back. One message per frame.
    for _ in 0..2 {
        let frame = raw.next_binary(DEADLINE).await.unwrap();
        let messages = decode_messages(&frame).unwrap();
        match &messages[..] {
            [Message::Awareness(update)] => {
                assert!(
                    update.clients.keys().any(|id| id.get() == 4242),
                    "{update:?}"
                );
            }
            other => panic!("expected one awareness message, got {other:?}"),
        }
    }
    assert!(observer.is_connected());
    assert_eq!(observer.status().update_messages, 1);
}
