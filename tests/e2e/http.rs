//! HTTP surface: bad document names are refused before the upgrade, and `run` serves documents
//! under its path prefix only.

use concord_server::Config;
use concord_tests::{DEADLINE, TestClient, TestServer, http_get};
use yrs::{Text, WriteTxn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_document_names_get_400_with_a_reason() {
    let server = TestServer::start(Config::default()).await;
    let too_long = format!("/{}", "x".repeat(513));
    let cases: [(&str, &str); 5] = [
        ("/", "empty"),
        (&too_long, "513"),
        ("/a%0Ab", "control"),
        ("/nul%00", "control"),
        ("/%FF", "UTF-8"),
    ];
    for (path, hint) in cases {
        let shown = &path[..path.len().min(40)];
        let response = http_get(server.addr, path, true).await.unwrap();
        assert_eq!(response.status, 400, "{shown}: {response:?}");
        assert!(
            response.body.contains(hint),
            "{shown}: the body should explain the refusal ({hint}): {:?}",
            response.body
        );
    }
    // The WebSocket client sees the same refusal as a failed handshake.
    let refused = TestClient::connect(&server.url("a%0Ab")).await;
    let error = format!("{:#}", refused.err().expect("the handshake must fail"));
    assert!(error.contains("400"), "{error}");

    // 512 bytes is the limit, inclusive: that name works, and the server is fine.
    let longest = "y".repeat(512);
    let response = http_get(server.addr, &format!("/{longest}"), true)
        .await
        .unwrap();
    assert_eq!(response.status, 101, "{}", response.head);
    let a = TestClient::connect_synced(&server.url(&longest))
        .await
        .unwrap();
    let b = TestClient::connect_synced(&server.url(&longest))
        .await
        .unwrap();
    a.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "long name");
    });
    b.wait_until(DEADLINE, "the edit arrives", |b| b.text("t") == "long name")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_documents_under_its_path_prefix_only() {
    let config = Config {
        path_prefix: "/collab".to_owned(),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let url = server.url("doc");
    assert!(url.ends_with("/collab/doc"), "{url}");
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&server.raw_url("/collab/doc"))
        .await
        .unwrap();
    a.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "under a prefix");
    });
    b.wait_until(DEADLINE, "the edit arrives under the prefix", |b| {
        b.text("t") == "under a prefix"
    })
    .await;
    // Slashes after the prefix are part of the name.
    let nested = TestClient::connect_synced(&server.url("team/a/notes"))
        .await
        .unwrap();
    assert_eq!(nested.text("t"), "");

    // Outside the prefix there is no document route.
    for path in ["/doc", "/collabdoc", "/other/doc"] {
        let response = http_get(server.addr, path, true).await.unwrap();
        assert_eq!(response.status, 404, "{path}: {response:?}");
    }
    let refused = TestClient::connect(&server.raw_url("/doc")).await;
    let error = format!("{:#}", refused.err().expect("the handshake must fail"));
    assert!(error.contains("404"), "{error}");
    assert!(a.is_connected() && b.is_connected());
}
