//! Authorization at the WebSocket edge: the JWT matrix (no token, bad signature, expired,
//! wrong document, prefix patterns, read versus write, header versus query, expiry during a
//! session), the origin allow-list, and authorizers of the embedding application's own,
//! including one that panics.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use concord_core::{Access, DocName, MemoryStore, READ_ONLY_REASON};
use concord_server::Config;
use concord_server::auth::{
    AuthError, AuthRequest, Authorizer, Claims, Grant, JwtAuthorizer, Permission, TokenSigner,
    unix_now,
};
use concord_tests::{
    DEADLINE, EmbeddedServer, HttpResponse, RawClient, TestClient, decode_messages,
    http_get_with_headers, text_insert_update, update_message,
};
use futures_util::future::BoxFuture;
use yrs::sync::Message;
use yrs::{Text, WriteTxn};

const SECRET: &[u8] = b"a secret only the tests know";

fn jwt_server_config() -> Config {
    Config {
        authorizer: Some(Arc::new(JwtAuthorizer::hs256(SECRET).unwrap())),
        ..Config::default()
    }
}

async fn jwt_server() -> EmbeddedServer {
    EmbeddedServer::start_with_store(jwt_server_config(), Arc::new(MemoryStore::new())).await
}

/// A token signed with `secret`, valid for `ttl` seconds from now (negative: already expired).
fn token_with(secret: &[u8], docs: &[(&str, Permission)], ttl: i64) -> String {
    let exp = unix_now().saturating_add_signed(ttl);
    TokenSigner::hs256(secret)
        .unwrap()
        .sign(&Claims {
            exp,
            sub: Some("alice".into()),
            docs: docs.iter().map(|(d, p)| ((*d).to_owned(), *p)).collect(),
        })
        .unwrap()
}

fn token(docs: &[(&str, Permission)]) -> String {
    token_with(SECRET, docs, 3600)
}

async fn upgrade(server: &EmbeddedServer, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_get_with_headers(server.addr, path, true, headers)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_matrix_is_answered_before_the_upgrade() {
    use Permission::*;
    let server = jwt_server().await;
    let write = token(&[("doc", Write)]);

    let missing = upgrade(&server, "/doc", &[]).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert!(missing.body.contains("token is required"), "{missing:?}");
    assert!(
        missing
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{missing:?}"
    );

    let forged = token_with(b"some other secret", &[("doc", Write)], 3600);
    let bad = upgrade(&server, &format!("/doc?token={forged}"), &[]).await;
    assert_eq!(
        (bad.status, bad.body.as_str()),
        (401, "token signature is invalid")
    );

    let expired = token_with(SECRET, &[("doc", Write)], -10);
    let old = upgrade(&server, &format!("/doc?token={expired}"), &[]).await;
    assert_eq!((old.status, old.body.as_str()), (401, "token expired"));

    let garbage = upgrade(&server, "/doc?token=not.a.jwt", &[]).await;
    assert_eq!(garbage.status, 401, "{garbage:?}");

    let other = upgrade(&server, &format!("/other?token={write}"), &[]).await;
    assert_eq!(other.status, 403, "{other:?}");
    assert!(other.body.contains("does not grant access"), "{other:?}");

    let team = token(&[("team-a/*", Write)]);
    let inside = upgrade(&server, &format!("/team-a/notes?token={team}"), &[]).await;
    assert_eq!(inside.status, 101, "{inside:?}");
    let deeper = upgrade(&server, &format!("/team-a/x/y?token={team}"), &[]).await;
    assert_eq!(deeper.status, 101, "{deeper:?}");
    let outside = upgrade(&server, &format!("/team-b/notes?token={team}"), &[]).await;
    assert_eq!(outside.status, 403, "{outside:?}");

    let bearer = format!("Bearer {write}");
    let header = upgrade(&server, "/doc", &[("Authorization", &bearer)]).await;
    assert_eq!(header.status, 101, "{header:?}");
    let query = upgrade(&server, &format!("/doc?token={write}"), &[]).await;
    assert_eq!(query.status, 101, "{query:?}");
    // The header wins over the query parameter.
    let both = upgrade(
        &server,
        &format!("/doc?token={forged}"),
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(both.status, 101, "{both:?}");

    assert_eq!(server.concord.stats().auth_failures, 6);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_reads_and_shows_presence_but_never_writes() {
    let server = jwt_server().await;
    let writer_url = format!(
        "{}?token={}",
        server.url("doc"),
        token(&[("doc", Permission::Write)])
    );
    let reader_url = format!(
        "{}?token={}",
        server.url("doc"),
        token(&[("d*", Permission::Read)])
    );
    let writer = TestClient::connect_synced(&writer_url).await.unwrap();
    let reader = TestClient::connect_synced(&reader_url).await.unwrap();

    writer.edit(|txn| {
        txn.get_or_insert_text("t")
            .insert(txn, 0, "from the writer");
    });
    reader
        .wait_until(DEADLINE, "the reader sees the writer's edit", |r| {
            r.text("t") == "from the writer"
        })
        .await;

    // The reader edits its copy, then announces itself. The server handles a connection's
    // messages in order, so once the writer sees the presence, the edit was handled too.
    reader.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "READER ");
    });
    reader.set_awareness(r#"{"user":{"name":"reader"}}"#);
    let reader_id = reader.client_id();
    writer
        .wait_until(DEADLINE, "the writer sees the reader's presence", |w| {
            w.awareness_states().contains_key(&reader_id)
        })
        .await;
    assert_eq!(writer.text("t"), "from the writer");
    assert!(reader.is_connected(), "read-only clients stay connected");

    // The reader keeps receiving, and the server's document never got the reader's edit.
    writer.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, ", and more");
    });
    reader
        .wait_until(DEADLINE, "the reader sees later edits", |r| {
            r.text("t").ends_with(", and more")
        })
        .await;
    let fresh = TestClient::connect_synced(&writer_url).await.unwrap();
    assert_eq!(fresh.text("t"), "from the writer, and more");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_write_is_answered_with_permission_denied_once() {
    let server = jwt_server().await;
    let url = format!(
        "{}?token={}",
        server.url("doc"),
        token(&[("doc", Permission::Read)])
    );
    let mut raw = RawClient::connect(&url).await.unwrap();
    for i in 0..3 {
        raw.send_binary(update_message(text_insert_update(7, "t", &format!("{i}"))))
            .await
            .unwrap();
    }
    // A query after the writes: its answer marks that every write was handled.
    raw.send_binary(vec![3]).await.unwrap();
    let mut denied = 0;
    loop {
        let frame = raw.next_binary(DEADLINE).await.expect("still connected");
        let messages = decode_messages(&frame).unwrap();
        for message in &messages {
            if let Message::Auth(Some(reason)) = message {
                assert_eq!(reason, READ_ONLY_REASON);
                denied += 1;
            }
        }
        if messages.iter().any(|m| matches!(m, Message::Awareness(_))) {
            break;
        }
    }
    assert_eq!(denied, 1, "told once");
    let fresh = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(fresh.text("t"), "");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_during_the_session_closes_it_with_4401() {
    let server = jwt_server().await;
    // Two seconds: `exp` has a resolution of one second, and the token must still be valid
    // when the upgrade is checked.
    let short = token_with(SECRET, &[("doc", Permission::Write)], 2);
    let mut raw = RawClient::connect(&format!("{}?token={short}", server.url("doc")))
        .await
        .unwrap();
    let (code, reason) = raw.expect_close().await;
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
    assert_eq!(server.concord.stats().tokens_expired, 1);
    // And a fresh token gets in again.
    let url = format!(
        "{}?token={}",
        server.url("doc"),
        token(&[("doc", Permission::Write)])
    );
    TestClient::connect_synced(&url).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_get_403() {
    let config = Config {
        allowed_origins: vec!["https://app.example".into()],
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await;
    let evil = upgrade(&server, "/doc", &[("Origin", "https://evil.example")]).await;
    assert_eq!(evil.status, 403, "{evil:?}");
    assert!(evil.body.contains("https://evil.example"), "{evil:?}");
    let good = upgrade(&server, "/doc", &[("Origin", "https://app.example")]).await;
    assert_eq!(good.status, 101, "{good:?}");
    // Clients that are not browsers send no Origin.
    let none = upgrade(&server, "/doc", &[]).await;
    assert_eq!(none.status, 101, "{none:?}");
    assert_eq!(server.concord.stats().origin_refused, 1);
    server.shutdown().await;
}

/// An application's own sessions: a cookie decides, and one document's check panics.
struct CookieSessions;

impl Authorizer for CookieSessions {
    fn authorize<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Grant, AuthError>> {
        Box::pin(async move {
            if request.doc.as_str() == "boom" {
                panic!("a bug in the application's authorizer");
            }
            let cookie = request
                .headers
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let access = match cookie {
                "session=editor" => Access::ReadWrite,
                "session=guest" => Access::ReadOnly,
                _ => return Err(AuthError::Unauthenticated("log in first".into())),
            };
            assert!(
                request.peer.is_some(),
                "the embedder serves with peer addresses"
            );
            Ok(Grant {
                access,
                subject: Some(cookie.to_owned()),
                expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_authorizer_decides_and_its_panic_is_contained() {
    let config = Config {
        authorizer: Some(Arc::new(CookieSessions)),
        ..Config::default()
    };
    let server = EmbeddedServer::start_with_store(config, Arc::new(MemoryStore::new())).await;
    assert_eq!(upgrade(&server, "/doc", &[]).await.status, 401);
    let boom = upgrade(&server, "/boom", &[("Cookie", "session=editor")]).await;
    assert_eq!(boom.status, 500, "{boom:?}");
    assert_eq!(server.concord.stats().panics, 1);

    // The server goes on: an editor and a guest on the same document. Each sends an edit and
    // then an awareness query; the answer to the query means the edit was handled.
    for (cookie, client, text) in [
        ("session=editor", 1, "edited"),
        ("session=guest", 2, "guessed"),
    ] {
        let mut raw = RawClient::connect_with_headers(&server.url("doc"), &[("Cookie", cookie)])
            .await
            .unwrap();
        raw.send_binary(update_message(text_insert_update(client, "t", text)))
            .await
            .unwrap();
        raw.send_binary(vec![3]).await.unwrap();
        while let Some(frame) = raw.next_binary(DEADLINE).await {
            let messages = decode_messages(&frame).unwrap();
            if messages.iter().any(|m| matches!(m, Message::Awareness(_))) {
                break;
            }
        }
    }
    let check =
        TestClient::connect_synced_with_headers(&server.url("doc"), &[("Cookie", "session=guest")])
            .await
            .unwrap();
    assert_eq!(check.text("t"), "edited");
    let name = DocName::new("doc").unwrap();
    assert_eq!(server.concord.connection_count(&name), 1);
    server.shutdown().await;
}
