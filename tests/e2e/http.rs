//! HTTP surface: bad document names are refused before the upgrade, `run` serves documents
//! under its path prefix only, and static files (the web demo) share paths with documents.

use concord_server::Config;
use concord_tests::{DEADLINE, TestClient, TestServer, http_get};
use yrs::{Text, WriteTxn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_document_names_get_400_with_a_reason() {
    let server = TestServer::start(Config::default()).await;
    let too_long = format!("/{}", "x".repeat(513));
    let cases: [(&str, &str); 4] = [
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
    // An upgrade of the root names no document: it is the Hocuspocus endpoint.
    let root = http_get(server.addr, "/", true).await.unwrap();
    assert_eq!(root.status, 101, "{}", root.head);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_served_beside_documents_and_upgrades_still_open_documents() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(
        site.join("index.html"),
        "<!doctype html><title>demo</title>",
    )
    .unwrap();
    std::fs::write(site.join("assets/app-1a2b.js"), "console.log('demo')").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    let config = Config {
        path_prefix: "/collab".to_owned(),
        static_dir: Some(site.clone()),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let http = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let get = |path: &str| {
        let url = format!("http://{}{path}", server.addr);
        let http = http.clone();
        async move { http.get(url).send().await.unwrap() }
    };

    // Under a prefix the index is at /collab/ (its relative links resolve under the prefix);
    // /collab redirects there, keeping the query.
    let bare = http
        .get(format!("http://{}/collab?room=r", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.url().path(), "/collab/", "followed the redirect");
    assert_eq!(bare.url().query(), Some("room=r"));
    let index = get("/collab/").await;
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["cache-control"], "no-cache");
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(index.text().await.unwrap().contains("<title>demo</title>"));
    let asset = get("/collab/assets/app-1a2b.js").await;
    assert_eq!(asset.status(), 200);
    assert!(
        asset.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(
        asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
    // A conditional request is answered 304.
    let etag_or_date = asset.headers()["last-modified"].clone();
    let again = http
        .get(format!("http://{}/collab/assets/app-1a2b.js", server.addr))
        .header("if-modified-since", etag_or_date)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // Paths without a file answer as without static files: they are documents.
    let no_file = get("/collab/some-doc").await;
    assert_eq!(no_file.status(), 400, "a plain GET of a document");
    // Nothing outside the directory is reachable.
    for path in [
        "/collab/../secret.txt",
        "/collab/%2e%2e/secret.txt",
        "/collab/..%2fsecret.txt",
    ] {
        let response = get(path).await;
        assert_ne!(response.status(), 200, "{path}");
        assert!(
            !response.text().await.unwrap().contains("outside"),
            "{path}"
        );
    }
    // The API keeps its own answers.
    assert_eq!(get("/collab/api/docs").await.status(), 200);
    assert_eq!(get("/collab/api/nope").await.status(), 404);

    // A WebSocket upgrade on a path that holds a file opens the document of that name.
    let url = format!("ws://{}/collab/assets/app-1a2b.js", server.addr);
    let a = TestClient::connect_synced(&url).await.unwrap();
    let b = TestClient::connect_synced(&url).await.unwrap();
    a.edit(|txn| {
        txn.get_or_insert_text("t")
            .insert(txn, 0, "a document, not a file");
    });
    b.wait_until(DEADLINE, "the edit arrives", |b| {
        b.text("t") == "a document, not a file"
    })
    .await;
    // And the root without an upgrade is index.html; with one it is the Hocuspocus endpoint.
    let root = http_get(server.addr, "/collab/", true).await.unwrap();
    assert_eq!(root.status, 101, "{}", root.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_static_files_the_root_explains_itself() {
    let server = TestServer::start(Config::default()).await;
    let root = http_get(server.addr, "/", false).await.unwrap();
    assert_eq!(root.status, 400);
    assert!(root.body.contains("document name is empty"), "{root:?}");
}
