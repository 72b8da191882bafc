//! The binary's webhook flags, run as an operator would: refused settings exit with a clear
//! message before anything is served, and a working one delivers signed events to a real
//! receiver on loopback.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{PROCESS_DEADLINE, ServerProcess};
use concord_server::concord_core::webhook::verify;

use yrs::{Doc, ReadTxn, Text, Transact};

const BIN: &str = env!("CARGO_BIN_EXE_concord-server");

/// Runs the server binary with `args`, expecting it to refuse them: returns its stderr.
async fn refused(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(BIN)
        .args(["--host", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROCESS_DEADLINE, output)
        .await
        .unwrap_or_else(|_| panic!("{args:?} was not refused: the server kept running"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} should be refused");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "{args:?} was served: {stderr}"
    );
    stderr
}

#[tokio::test]
async fn bad_webhook_settings_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "whsec\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let secret = secret.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--webhook-url",
                "ftp://hooks.example/x",
                "--webhook-secret-file",
                secret,
            ],
            "must be http:// or https://",
        ),
        (
            &[
                "--webhook-url",
                "file:///etc/passwd",
                "--webhook-secret-file",
                secret,
            ],
            "must be http:// or https://",
        ),
        (
            &[
                "--webhook-url",
                "not a url",
                "--webhook-secret-file",
                secret,
            ],
            "is not a URL",
        ),
        (
            &["--webhook-url", "http://127.0.0.1:9/x"],
            "--webhook-secret-file",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1:9/x",
                "--webhook-secret-file",
                empty.to_str().unwrap(),
            ],
            "the webhook secret is empty",
        ),
    ];
    for (args, message) in cases {
        let stderr = refused(args).await;
        assert!(
            stderr.contains(message),
            "{args:?}: stderr {stderr:?} does not say {message:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_delivers_signed_events_to_every_receiver() {
    // Two receivers on loopback, each recording (signature, event id, body).
    type Log = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let log: Log = Arc::default();
        let recorder = log.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let log = recorder.clone();
                    async move {
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        log.lock().unwrap().push((
                            header("concord-signature"),
                            header("concord-event-id"),
                            body.to_vec(),
                        ));
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receivers.push((url, log));
    }
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "  whsec_binary\n").unwrap();
    let extra: Vec<String> = vec![
        "--webhook-url".into(),
        receivers[0].0.clone(),
        "--webhook-url".into(),
        receivers[1].0.clone(),
        "--webhook-secret-file".into(),
        secret_file.to_str().unwrap().into(),
    ];
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &dir.path().join("log"), &extra).await;
    let doc = Doc::with_client_id(7);
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "hello");
    let update = doc
        .transact()
        .encode_state_as_update_v1(&Default::default());
    let client = reqwest::Client::new();
    let written = client
        .post(format!("http://{}/api/docs/notes/update", server.addr()))
        .header("content-type", "application/octet-stream")
        .body(update)
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let deadline = tokio::time::Instant::now() + PROCESS_DEADLINE;
    while receivers
        .iter()
        .any(|(_, log)| log.lock().unwrap().is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event reached both receivers; log:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut ids = Vec::new();
    for (_, log) in &receivers {
        let (signature, id, body) = log.lock().unwrap()[0].clone();
        // The secret file's surrounding whitespace is not part of the secret.
        assert_eq!(
            verify(b"whsec_binary", &signature, &body, now_s, 300),
            Ok(())
        );
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event["type"], "document.updated");
        assert_eq!(event["document"], "notes");
        assert_eq!(event["id"], id.as_str());
        ids.push(id);
    }
    assert_eq!(ids[0], ids[1], "every receiver gets the same event");
    server.stop().await;
}
