//! Several Concord nodes sharing documents through one real `redis-server`, and through a real
//! 3-master Redis Cluster (started by each test on free loopback ports, append-only files with
//! `appendfsync always`): clients on any node converge, a late joiner on another node gets
//! everything, presence crosses nodes and a killed node's presence goes, acknowledged updates
//! survive a killed node, SSE resumes across nodes, compaction races joiners, deletions cross
//! nodes, a version kept on one node restores from another, documents spread over every shard
//! of a cluster, a lost Redis holds edits unacknowledged until it is back, and webhooks from
//! every node are sent once by the node holding the lease, and by another when it is killed. The cases that run on both are in modules `single` and
//! `cluster`.

use std::time::{Duration, Instant};

use concord_core::Position;
use concord_core::{DocName, encode_saved};
use concord_redis::testing::{RedisCluster, RedisServer};
use concord_redis::{RedisOptions, connect};
use concord_server::Config;
use concord_tests::{
    DEADLINE, EmbeddedServer, RawClient, SseClient, TestClient, b64_decode, poll_until,
    poll_until_ok_async, update_message,
};
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::{Array, GetString, Map, Text, WriteTxn};
use yrs::{Doc, Transact, Update};

use crate::api::{post_update, read_until_text};
use crate::persistence::{Appender, ack_in, next_ack};
use crate::process::ServerProcess;

/// The Redis of a test: one `redis-server`, or a 3-master Redis Cluster.
enum Deployment {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    fn single() -> Deployment {
        Deployment::Single(RedisServer::start())
    }

    fn cluster() -> Deployment {
        Deployment::Cluster(RedisCluster::start(3))
    }

    fn options(&self) -> RedisOptions {
        match self {
            Deployment::Single(server) => server.options("concord"),
            Deployment::Cluster(cluster) => cluster.options("concord"),
        }
    }

    /// The flags that put a server process on this Redis.
    fn args(&self) -> Vec<String> {
        let options = self.options();
        let mut args = vec!["--redis-url".to_owned(), options.urls.join(",")];
        if options.cluster {
            args.push("--redis-cluster".to_owned());
        }
        args
    }

    /// `redis-cli` on (a node of) this Redis, following cluster redirections.
    fn cli(&self, port: Option<u16>, args: &[&str]) -> String {
        let port = port.unwrap_or(match self {
            Deployment::Single(server) => server.port(),
            Deployment::Cluster(cluster) => cluster.nodes[0].port(),
        });
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Runs each case on one `redis-server` and on a 3-master Redis Cluster.
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Deployment::single()).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Deployment::cluster()).await;
                }
            )*
        }
    };
}

on_both!(
    clients_on_three_nodes_converge_and_a_late_joiner_on_a_fourth_gets_everything,
    a_killed_node_loses_nothing_acknowledged_and_its_presence_goes_from_the_others,
    an_sse_client_resumes_on_another_node_with_no_gap_and_no_repeat,
    compaction_under_load_with_joiners_racing_it_leaves_no_gap_and_a_short_stream,
    a_document_deleted_on_one_node_is_closed_and_gone_on_the_others,
    the_change_feed_of_a_document_no_client_holds_here_sees_other_nodes_edits,
    a_version_kept_on_one_node_is_restored_from_another_and_every_node_converges,
    webhooks_from_every_node_are_sent_once_by_the_lease_holder_and_survive_it_being_killed,
    a_lease_holder_stopped_gracefully_gives_the_lease_up_and_its_last_edits_are_announced,
    a_document_whose_webhook_mark_is_an_earlier_ones_is_announced_from_its_start,
);

/// A node in this process: an embedded server on the test's Redis.
struct Node {
    server: EmbeddedServer,
    link: CancellationToken,
}

impl Node {
    async fn start(redis: &Deployment) -> Node {
        Node::start_with(redis, Config::default()).await
    }

    async fn start_with(redis: &Deployment, config: Config) -> Node {
        Node::start_on(redis.options(), config).await
    }

    async fn start_on(options: RedisOptions, config: Config) -> Node {
        let link = CancellationToken::new();
        let redis = connect(options, link.clone()).await.expect("redis answers");
        let config = Config {
            replication: Some(redis.link.clone()),
            metrics: vec![redis.metrics()],
            room_idle_timeout: Duration::from_millis(200),
            ..config
        };
        let server = EmbeddedServer::start_with_store(config, redis.store.clone()).await;
        Node { server, link }
    }

    fn url(&self, doc: &str) -> String {
        self.server.url(doc)
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    async fn shutdown(self) {
        self.server.shutdown().await;
        self.link.cancel();
    }
}

/// The state of `client` as JSON: text `t`, array `a`, map `m`.
fn state(client: &TestClient) -> serde_json::Value {
    serde_json::json!({
        "t": client.text("t"),
        "a": client.array_json("a"),
        "m": client.map_json("m"),
    })
}

async fn clients_on_three_nodes_converge_and_a_late_joiner_on_a_fourth_gets_everything(
    redis: Deployment,
) {
    let nodes = [
        Node::start(&redis).await,
        Node::start(&redis).await,
        Node::start(&redis).await,
    ];
    let doc = "team/board";
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(TestClient::connect_synced(&node.url(doc)).await.unwrap());
    }
    for round in 0..5 {
        for (i, client) in clients.iter().enumerate() {
            client.edit(|txn| {
                let text = txn.get_or_insert_text("t");
                let end = text.len(txn);
                text.insert(txn, end, &format!("{i}.{round} "));
                let array = txn.get_or_insert_array("a");
                let len = array.len(txn);
                array.insert(txn, len, format!("{i}.{round}"));
                let map = txn.get_or_insert_map("m");
                map.insert(txn, format!("n{i}"), round);
            });
        }
    }
    poll_until(
        DEADLINE,
        "every client on every node has all 45 edits",
        || {
            clients.iter().all(|c| c.array_len("a") == 15)
                && clients.iter().all(|c| state(c) == state(&clients[0]))
        },
    )
    .await;
    let converged = state(&clients[0]);
    assert_eq!(
        converged["m"],
        serde_json::json!({"n0": 4, "n1": 4, "n2": 4})
    );

    // Presence crosses nodes.
    clients[0].set_awareness(r#"{"user":"ada"}"#);
    let ada = clients[0].client_id();
    poll_until(DEADLINE, "the client on the third node sees ada", || {
        clients[2].awareness_states().get(&ada).map(String::as_str) == Some(r#"{"user":"ada"}"#)
    })
    .await;

    // A fourth node, started now, serves the whole document to a new client.
    let late = Node::start(&redis).await;
    let joiner = TestClient::connect_synced(&late.url(doc)).await.unwrap();
    assert_eq!(state(&joiner), converged);
    // The new node asked the others who is there: ada's presence arrives without her renewing.
    poll_until(DEADLINE, "the late joiner sees ada", || {
        joiner.awareness_states().contains_key(&ada)
    })
    .await;
    // And what the joiner writes reaches the first node.
    joiner.edit(|txn| {
        let text = txn.get_or_insert_text("t");
        text.insert(txn, 0, "late ");
    });
    poll_until(
        DEADLINE,
        "the first node's client sees the late joiner's edit",
        || clients[0].text("t").starts_with("late "),
    )
    .await;

    // An HTTP write on one node reaches WebSocket clients of another.
    let update = {
        let writer = yrs::Doc::with_client_id(4242);
        let text = writer.get_or_insert_text("t");
        let mut txn = yrs::Transact::transact_mut(&writer);
        text.insert(&mut txn, 0, "posted ");
        txn.encode_update_v1()
    };
    let posted = reqwest::Client::new()
        .post(nodes[1].http("/api/docs/team%2Fboard/update"))
        .header("content-type", "application/octet-stream")
        .body(update)
        .send()
        .await
        .unwrap();
    assert!(posted.status().is_success(), "POST: {}", posted.status());
    poll_until(
        DEADLINE,
        "the POST on node 2 reaches the clients of nodes 1 and 3",
        || clients[0].text("t").contains("posted ") && clients[2].text("t").contains("posted "),
    )
    .await;

    // The Redis metrics are in /metrics.
    let metrics = reqwest::get(nodes[2].http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("concord_redis_reachable 1"), "{metrics}");
    let delivered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("concord_redis_entries_delivered_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no delivery counter in {metrics}"));
    assert!(delivered > 0, "node 3 delivered other nodes' entries");
    assert!(metrics.contains("concord_redis_append_seconds_bucket"));

    drop(clients);
    drop(joiner);
    late.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

async fn a_killed_node_loses_nothing_acknowledged_and_its_presence_goes_from_the_others(
    redis: Deployment,
) {
    // Awareness would only time out after a minute: what removes the dead node's presence is
    // its expired heartbeat.
    let mut args = redis.args();
    args.extend(["--awareness-timeout".to_owned(), "60s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = ServerProcess::start_with(0, &args, None);
    let b = ServerProcess::start_with(0, &args, None);
    let doc = "kill/doc";
    let ws = |node: &ServerProcess| format!("ws://{}/{doc}", node.addr);

    let watcher = TestClient::connect_synced(&ws(&a)).await.unwrap();
    let present = TestClient::connect_synced(&ws(&b)).await.unwrap();
    present.set_awareness(r#"{"user":"bob"}"#);
    let bob = present.client_id();
    poll_until(DEADLINE, "the client on node A sees bob on node B", || {
        watcher.awareness_states().contains_key(&bob)
    })
    .await;

    // A writer on B: 30 updates, acknowledged.
    let mut writer = Appender::new(77);
    let mut raw = RawClient::connect(&ws(&b)).await.unwrap();
    for i in 0..30 {
        raw.send_binary(update_message(writer.append(&format!("{i};"))))
            .await
            .unwrap();
    }
    raw.send_binary(encode_saved(5).to_vec()).await.unwrap();
    assert_eq!(next_ack(&mut raw, &[5]).await, 5);
    let acknowledged = writer.text.clone();

    let killed = Instant::now();
    b.kill();
    poll_until(DEADLINE, "bob's presence is gone from node A", || {
        !watcher.awareness_states().contains_key(&bob)
    })
    .await;
    eprintln!(
        "a killed node's presence was removed from the other node after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        watcher.text("t"),
        acknowledged,
        "node A relayed every acknowledged update"
    );

    // A client that reconnects to A, and a restarted B, have everything acknowledged.
    let again = TestClient::connect_synced(&ws(&a)).await.unwrap();
    assert_eq!(again.text("t"), acknowledged);
    let b = ServerProcess::start_with(0, &args, None);
    let on_b = TestClient::connect_synced(&ws(&b)).await.unwrap();
    assert_eq!(on_b.text("t"), acknowledged);
    drop((watcher, present, again, on_b, a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_holds_edits_unacknowledged_and_the_node_resumes_when_it_is_back() {
    let mut redis = RedisServer::start();
    let a = Node::start_on(redis.options("concord"), Config::default()).await;
    let c = Node::start_on(redis.options("concord"), Config::default()).await;
    let doc = "outage/doc";
    let name = DocName::new(doc).unwrap();
    let mut raw = RawClient::connect(&a.url(doc)).await.unwrap();
    let neighbour = TestClient::connect_synced(&a.url(doc)).await.unwrap();
    let far = TestClient::connect_synced(&c.url(doc)).await.unwrap();
    let mut writer = Appender::new(9);
    raw.send_binary(update_message(writer.append("before;")))
        .await
        .unwrap();
    raw.send_binary(encode_saved(1).to_vec()).await.unwrap();
    assert_eq!(next_ack(&mut raw, &[1]).await, 1);

    redis.kill();
    let http = reqwest::Client::new();
    let readyz = a.http("/readyz");
    let ready_is = |want: u16| {
        let request = http.get(&readyz);
        async move {
            match request.send().await {
                Ok(r) if r.status().as_u16() == want => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    poll_until_ok_async(DEADLINE, "/readyz says 503 without Redis", || ready_is(503)).await;

    // Written while Redis is down: relayed to the node's other clients, not acknowledged.
    raw.send_binary(update_message(writer.append("during;")))
        .await
        .unwrap();
    raw.send_binary(encode_saved(2).to_vec()).await.unwrap();
    poll_until(
        DEADLINE,
        "the neighbour on the same node sees the edit",
        || neighbour.text("t") == writer.text,
    )
    .await;
    // Nothing acknowledged it so far: read what the server has sent (until it sends nothing
    // more for a moment; an acknowledgement arriving later is caught by the `next_ack` below,
    // which accepts only id 2 after Redis is back).
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(300), raw.next_binary(DEADLINE)).await
    {
        assert_eq!(
            ack_in(&frame),
            None,
            "an update was acknowledged without Redis"
        );
    }

    redis.restart();
    assert_eq!(
        next_ack(&mut raw, &[2]).await,
        2,
        "acknowledged once Redis is back"
    );
    poll_until(
        DEADLINE,
        "the other node's client gets the held edit",
        || far.text("t") == writer.text,
    )
    .await;
    poll_until_ok_async(DEADLINE, "/readyz says 200 with Redis back", || {
        ready_is(200)
    })
    .await;
    let stored = a.server.concord.is_loaded(&name);
    assert!(stored, "the room stayed loaded through the outage");
    drop((neighbour, far, raw));
    a.shutdown().await;
    c.shutdown().await;
}

/// Appends `[i]` to text `t` of `client`.
fn append(client: &TestClient, i: usize) {
    client.edit(|txn| {
        let t = txn.get_or_insert_text("t");
        let end = t.len(txn);
        t.insert(txn, end, &format!("[{i}]"));
    });
}

fn pieces(n: usize) -> String {
    (0..n).map(|i| format!("[{i}]")).collect()
}

async fn an_sse_client_resumes_on_another_node_with_no_gap_and_no_repeat(redis: Deployment) {
    let (a, b, c) = (
        Node::start(&redis).await,
        Node::start(&redis).await,
        Node::start(&redis).await,
    );
    let writer = TestClient::connect_synced(&b.url("resume")).await.unwrap();
    let doc = Doc::new();
    let events = |node: &Node| node.http("/api/docs/resume/events");
    let mut sse = SseClient::connect(&events(&a), None).await.unwrap();
    for i in 0..3 {
        append(&writer, i);
    }
    let mut seen = read_until_text(&mut sse, &doc, &pieces(3)).await;
    let last = seen.last().cloned().expect("update events came");
    drop(sse);

    for i in 3..6 {
        append(&writer, i);
    }
    // Node C never had this document loaded: its positions are the store's, as on A.
    let mut sse = SseClient::connect(&events(&c), Some(&last)).await.unwrap();
    let first = sse.next_event().await.unwrap();
    assert_eq!(
        first.event, "update",
        "resumes with the missed updates: {first:?}"
    );
    doc.transact_mut()
        .apply_update(Update::decode_v1(&b64_decode(&first.data)).unwrap())
        .unwrap();
    seen.push(first.id.unwrap());
    seen.extend(read_until_text(&mut sse, &doc, &pieces(6)).await);
    // Live updates written on B after the resume reach C's stream too.
    append(&writer, 6);
    seen.extend(read_until_text(&mut sse, &doc, &pieces(7)).await);
    let positions: Vec<Position> = seen.iter().map(|id| id.parse().unwrap()).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions grow with no repeat: {positions:?}"
    );
    drop((sse, writer));
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// The length of a document's stream, read with `redis-cli`.
fn stream_length(redis: &Deployment, doc: &str) -> u64 {
    redis
        .cli(None, &["XLEN", &format!("concord:{{{doc}}}:log")])
        .parse()
        .expect("XLEN answers a number")
}

async fn compaction_under_load_with_joiners_racing_it_leaves_no_gap_and_a_short_stream(
    redis: Deployment,
) {
    let config = || Config {
        compact_after_updates: 16,
        ..Config::default()
    };
    let a = Node::start_with(&redis, config()).await;
    let c = Node::start_with(&redis, config()).await;
    let writer = TestClient::connect_synced(&a.url("race")).await.unwrap();
    let watcher = TestClient::connect_synced(&c.url("race")).await.unwrap();
    let mut joiners = Vec::new();
    let total = 400;
    for i in 0..total {
        append(&writer, i);
        if i % 40 == 39 {
            // A joiner on the other node, loading while compactions run.
            let joiner = TestClient::connect_synced(&c.url("race")).await.unwrap();
            joiners.push((i, joiner));
            tokio::task::yield_now().await;
        }
    }
    let want = pieces(total);
    poll_until(
        DEADLINE,
        "the watcher and every joiner have all updates",
        || watcher.text("t") == want && joiners.iter().all(|(_, j)| j.text("t") == want),
    )
    .await;
    let compactions = a.server.concord.compactions() + c.server.concord.compactions();
    assert!(compactions > 0, "no compaction ran");
    let length = stream_length(&redis, "race");
    assert!(
        length <= 64,
        "the stream keeps {length} entries after {compactions} compactions"
    );
    // A fresh node rebuilds the same document from the snapshot and the stream's tail.
    let late = Node::start(&redis).await;
    let fresh = TestClient::connect_synced(&late.url("race")).await.unwrap();
    assert_eq!(fresh.text("t"), want);
    drop((writer, watcher, joiners, fresh));
    for node in [a, c, late] {
        node.shutdown().await;
    }
}

async fn a_document_deleted_on_one_node_is_closed_and_gone_on_the_others(redis: Deployment) {
    let (a, c) = (Node::start(&redis).await, Node::start(&redis).await);
    let on_a = TestClient::connect_synced(&a.url("doomed")).await.unwrap();
    let on_c = TestClient::connect_synced(&c.url("doomed")).await.unwrap();
    append(&on_a, 0);
    poll_until(DEADLINE, "the edit reached node C", || {
        on_c.text("t") == "[0]"
    })
    .await;

    let deleted = reqwest::Client::new()
        .delete(a.http("/api/docs/doomed"))
        .send()
        .await
        .unwrap();
    assert!(
        deleted.status().is_success(),
        "DELETE: {}",
        deleted.status()
    );
    on_c.wait_closed().await;
    let (code, reason) = on_c.close_frame().expect("a close frame");
    assert_eq!((code, reason.as_str()), (4404, "document deleted"));
    // A new client on node C starts from what the store holds: nothing.
    let fresh = TestClient::connect_synced(&c.url("doomed")).await.unwrap();
    assert_eq!(fresh.text("t"), "");
    drop((on_a, on_c, fresh));
    a.shutdown().await;
    c.shutdown().await;
}

async fn the_change_feed_of_a_document_no_client_holds_here_sees_other_nodes_edits(
    redis: Deployment,
) {
    use concord_server::feed::FeedEvent;
    use futures_util::StreamExt;
    let (a, c) = (Node::start(&redis).await, Node::start(&redis).await);
    let name = DocName::new("watched").unwrap();
    let on_a = TestClient::connect_synced(&a.url("watched")).await.unwrap();
    append(&on_a, 0);
    // Node C has no client of the document: the feed alone must keep it followed.
    let mut changes = c.server.concord.changes(&name, None, None);
    let doc = Doc::new();
    let mut next = async || {
        tokio::time::timeout(DEADLINE, changes.next())
            .await
            .expect("the feed yields before the deadline")
            .expect("the feed goes on")
            .expect("the feed has no error")
    };
    let FeedEvent::Sync { update, .. } = next().await else {
        panic!("a fresh feed starts with a sync");
    };
    doc.transact_mut()
        .apply_update(Update::decode_v1(&update).unwrap())
        .unwrap();
    for i in 1..=3 {
        append(&on_a, i);
    }
    while doc.get_or_insert_text("t").get_string(&doc.transact()) != pieces(4) {
        let FeedEvent::Change(change) = next().await else {
            panic!("after the sync come changes");
        };
        doc.transact_mut()
            .apply_update(Update::decode_v1(&change.update).unwrap())
            .unwrap();
    }
    assert!(
        c.server.concord.is_loaded(&name),
        "the feed holds the document"
    );
    drop((changes, on_a));
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_documents_spread_over_every_shard_and_each_converges_across_nodes() {
    let redis = Deployment::cluster();
    let Deployment::Cluster(cluster) = &redis else {
        unreachable!("a cluster was asked for")
    };
    let nodes = [Node::start(&redis).await, Node::start(&redis).await];
    let docs: Vec<String> = (0..12).map(|i| format!("spread/{i}")).collect();
    let mut clients = Vec::new();
    for doc in &docs {
        for node in &nodes {
            clients.push((
                doc,
                TestClient::connect_synced(&node.url(doc)).await.unwrap(),
            ));
        }
    }
    for (i, (doc, client)) in clients.iter().enumerate() {
        client.edit(|txn| {
            let text = txn.get_or_insert_text("t");
            text.insert(txn, 0, &format!("[{doc} {i}]"));
        });
    }
    poll_until(
        DEADLINE,
        "both clients of every document have both edits",
        || {
            clients.chunks(2).all(|pair| {
                let (a, b) = (&pair[0].1, &pair[1].1);
                a.text("t") == b.text("t") && a.text("t").matches('[').count() == 2
            })
        },
    )
    .await;
    // Every shard holds some of the documents' keys.
    for node in &cluster.nodes {
        let keys: u64 = redis
            .cli(Some(node.port()), &["DBSIZE"])
            .parse()
            .expect("DBSIZE answers a number");
        assert!(
            keys > 0,
            "the shard on port {} holds no document",
            node.port()
        );
    }
    drop(clients);
    for node in nodes {
        node.shutdown().await;
    }
}

/// With `pubsub_url`, the channels between nodes are on a second Redis: an edit takes the fast
/// path and presence crosses nodes through it, and the store's Redis carries no channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_pubsub_redis_the_channels_between_nodes_leave_the_stores_redis() {
    let store = Deployment::single();
    let pubsub = RedisServer::start();
    let options = RedisOptions {
        pubsub_url: Some(pubsub.url()),
        ..store.options()
    };
    let a = Node::start_on(options.clone(), Config::default()).await;
    let b = Node::start_on(options, Config::default()).await;
    let on_a = TestClient::connect_synced(&a.url("split")).await.unwrap();
    let on_b = TestClient::connect_synced(&b.url("split")).await.unwrap();

    on_a.edit(|txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "across");
    });
    on_b.wait_until(DEADLINE, "the edit crosses nodes", |c| {
        c.text("t") == "across"
    })
    .await;
    on_a.set_awareness(r#"{"user":"ada"}"#);
    let ada = on_a.client_id();
    poll_until(DEADLINE, "presence crosses nodes", || {
        on_b.awareness_states().get(&ada).map(String::as_str) == Some(r#"{"user":"ada"}"#)
    })
    .await;

    let channels = |port: u16| store.cli(Some(port), &["PUBSUB", "CHANNELS"]);
    assert!(
        channels(pubsub.port()).contains("split"),
        "{}",
        channels(pubsub.port())
    );
    let Deployment::Single(server) = &store else {
        unreachable!()
    };
    assert!(
        !channels(server.port()).contains("split"),
        "{}",
        channels(server.port())
    );
    poll_until_ok_async(DEADLINE, "node b relayed a fast-path update", || async {
        let metrics = reqwest::get(b.http("/metrics"))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let fast = metrics
            .lines()
            .find_map(|l| l.strip_prefix("concord_redis_fast_updates_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if fast > 0 {
            Ok(())
        } else {
            Err(format!("fast updates: {fast}"))
        }
    })
    .await;
    // The entry is in the store's Redis all the same.
    assert!(stream_length(&store, "split") >= 1);
    a.shutdown().await;
    b.shutdown().await;
}

async fn a_version_kept_on_one_node_is_restored_from_another_and_every_node_converges(
    redis: Deployment,
) {
    let (a, c) = (Node::start(&redis).await, Node::start(&redis).await);
    let on_a = TestClient::connect_synced(&a.url("history")).await.unwrap();
    let on_c = TestClient::connect_synced(&c.url("history")).await.unwrap();
    append(&on_a, 0);
    poll_until(DEADLINE, "the edit reached node C", || {
        on_c.text("t") == "[0]"
    })
    .await;
    let http = reqwest::Client::new();
    // A client's edit on node A is stored once node A's persistence worker wrote it: a version
    // asked of node C sees it once the store has it, so ask until it does.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
    poll_until_ok_async(DEADLINE, "a version holding the first edit", || {
        let http = http.clone();
        let url = c.http("/api/docs/history/versions");
        let kept = kept.clone();
        async move {
            let made = http
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"label":"first"}"#)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let made = made.text().await.map_err(|e| e.to_string())?;
            let made: serde_json::Value =
                serde_json::from_str(&made).map_err(|e| format!("{e}: {made}"))?;
            let id = made["id"].as_u64().ok_or_else(|| made.to_string())?;
            let got = http
                .get(format!("{url}/{id}"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            let doc = Doc::new();
            doc.transact_mut()
                .apply_update(Update::decode_v1(&got).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let text = doc.get_or_insert_text("t");
            let text = text.get_string(&doc.transact());
            if text != "[0]" {
                return Err(format!("version {id} holds {text:?}"));
            }
            *kept.lock().unwrap() = Some(id);
            Ok(())
        }
    })
    .await;
    let id = kept.lock().unwrap().expect("kept");
    append(&on_c, 1);
    poll_until(DEADLINE, "both edits on both nodes", || {
        on_a.text("t") == "[0][1]" && on_c.text("t") == "[0][1]"
    })
    .await;
    // Restored through node A: the clients of both nodes converge.
    let restored = http
        .post(a.http(&format!("/api/docs/history/versions/{id}/restore")))
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status(), 200);
    poll_until(DEADLINE, "the restore reached both nodes' clients", || {
        on_a.text("t") == "[0]" && on_c.text("t") == "[0]"
    })
    .await;
    drop((on_a, on_c));
    a.shutdown().await;
    c.shutdown().await;
}

/// Whether the server process at `node` holds the webhook lease, from its metrics.
async fn leads_webhooks(node: &ServerProcess) -> bool {
    let metrics = crate::api::http()
        .get(format!("http://{}/metrics", node.addr))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics are text");
    metrics
        .lines()
        .any(|line| line.trim() == "concord_webhooks_leader 1")
}

/// Waits until `receiver` accepted a `kind` event for each of `docs`, and returns every event
/// it accepted; past [`DEADLINE`], panics with `context()` (the servers' logs).
async fn accepted_for(
    receiver: &concord_tests::WebhookReceiver,
    kind: &str,
    docs: &[&str],
    context: impl Fn() -> String,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let events: Vec<serde_json::Value> = receiver.accepted().iter().map(|r| r.json()).collect();
        let has = |doc: &&str| {
            events
                .iter()
                .any(|e| e["type"] == kind && e["document"] == *doc)
        };
        if docs.iter().all(has) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} events for all of {docs:?}; {}",
            context()
        );
        tokio::time::sleep(concord_tests::POLL_INTERVAL).await;
    }
}

async fn webhooks_from_every_node_are_sent_once_by_the_lease_holder_and_survive_it_being_killed(
    redis: Deployment,
) {
    use concord_tests::{WebhookReceiver, text_insert_update};
    let receiver = WebhookReceiver::start(true).await;
    let secret = "whsec_redis_tests";
    let mut args = redis.args();
    args.extend(["--webhook-url", &receiver.url, "--webhook-secret", secret].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = ServerProcess::start_with(0, &args, None);
    let b = ServerProcess::start_with(0, &args, None);
    let write = |node: &ServerProcess, doc: &str, client: u64| {
        crate::api::http()
            .post(format!("http://{}/api/docs/{doc}/update", node.addr))
            .header("content-type", "application/octet-stream")
            .body(text_insert_update(client, "t", doc))
            .send()
    };
    let delete = |node: &ServerProcess, doc: &str| {
        crate::api::http()
            .delete(format!("http://{}/api/docs/{doc}", node.addr))
            .send()
    };
    let logs = |a: &ServerProcess, b: &ServerProcess| {
        format!("node A logged:\n{}\nnode B logged:\n{}", a.log(), b.log())
    };
    let events =
        |of: &[concord_tests::Received], kind: &str, doc: &str| -> Vec<serde_json::Value> {
            of.iter()
                .map(|r| r.json())
                .filter(|e| e["type"] == kind && e["document"] == doc)
                .collect()
        };

    // Edits stored by either node are announced (by whichever holds the lease), each once,
    // from the document's first log entry.
    assert_eq!(write(&a, "from-a", 1).await.unwrap().status(), 200);
    assert_eq!(write(&b, "from-b", 2).await.unwrap().status(), 200);
    accepted_for(&receiver, "document.updated", &["from-a", "from-b"], || {
        logs(&a, &b)
    })
    .await;
    for (doc, client) in [("from-a", 1), ("from-b", 2)] {
        let event = &events(&receiver.accepted(), "document.updated", doc)[0];
        assert_eq!(event["from"], "1.0", "{event}");
        let through: Position = event["through"].as_str().unwrap().parse().unwrap();
        assert_eq!(through.seq, 1, "{event}");
        let sv = yrs::StateVector::decode_v1(&b64_decode(event["state_vector"].as_str().unwrap()))
            .unwrap();
        assert!(
            sv.get(&yrs::ClientID::new(client)) > 0,
            "the state vector covers the edit: {event}"
        );
    }

    // Later edits of `from-a` on both nodes make one more event, from the entry after the first
    // one's, with the state vector of everything stored (made from the first one's and the
    // entries since).
    assert_eq!(write(&b, "from-a", 5).await.unwrap().status(), 200);
    assert_eq!(write(&a, "from-a", 6).await.unwrap().status(), 200);
    let deadline = Instant::now() + DEADLINE;
    let second = loop {
        if let Some(second) = events(&receiver.accepted(), "document.updated", "from-a").get(1) {
            break second.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no second event; {}",
            logs(&a, &b)
        );
        tokio::time::sleep(concord_tests::POLL_INTERVAL).await;
    };
    assert_eq!(second["from"], "2.0", "{second}");
    let through: Position = second["through"].as_str().unwrap().parse().unwrap();
    assert_eq!(through.seq, 3, "{second}");
    let stored_sv = crate::api::http()
        .get(format!("http://{}/api/docs/from-a/state-vector", a.addr))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        yrs::StateVector::decode_v1(&b64_decode(second["state_vector"].as_str().unwrap())).unwrap(),
        yrs::StateVector::decode_v1(&stored_sv).unwrap(),
        "the second event's state vector is the stored document's"
    );

    // Deletes on both nodes (one of them does not hold the lease) are announced.
    assert_eq!(delete(&b, "from-a").await.unwrap().status(), 204);
    assert_eq!(delete(&a, "from-b").await.unwrap().status(), 204);
    accepted_for(&receiver, "document.deleted", &["from-a", "from-b"], || {
        logs(&a, &b)
    })
    .await;

    // The receiver goes down with an event pending, and the lease holder is killed: the other
    // node takes the lease over and delivers it with the same id, and announces what comes
    // next.
    receiver.set_accepting(false);
    assert_eq!(write(&b, "pending", 3).await.unwrap().status(), 200);
    let deadline = Instant::now() + DEADLINE;
    let refused = loop {
        if let Some(refused) = receiver
            .received()
            .into_iter()
            .find(|r| !r.accepted && r.json()["document"] == "pending")
        {
            break refused;
        }
        assert!(
            Instant::now() < deadline,
            "pending never tried; {}",
            logs(&a, &b)
        );
        tokio::time::sleep(concord_tests::POLL_INTERVAL).await;
    };
    let (a_leads, b_leads) = (leads_webhooks(&a).await, leads_webhooks(&b).await);
    assert!(
        a_leads != b_leads,
        "exactly one node holds the lease: A {a_leads}, B {b_leads}"
    );
    let (killed, survivor) = if a_leads { (a, b) } else { (b, a) };
    killed.kill();
    receiver.set_accepting(true);
    assert_eq!(write(&survivor, "after", 4).await.unwrap().status(), 200);
    accepted_for(&receiver, "document.updated", &["pending", "after"], || {
        format!("the surviving node logged:\n{}", survivor.log())
    })
    .await;
    assert!(leads_webhooks(&survivor).await);
    let accepted = receiver.accepted();
    let pending = accepted
        .iter()
        .find(|r| r.json()["document"] == "pending")
        .unwrap();
    assert_eq!(
        pending.event_id, refused.event_id,
        "the same event, the same id"
    );
    assert_eq!(pending.body, refused.body);
    // Nothing was announced twice.
    let mut ids: Vec<&str> = accepted.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "no event was delivered twice");
    for (doc, count) in [("from-a", 2), ("from-b", 1), ("pending", 1), ("after", 1)] {
        assert_eq!(
            events(&accepted, "document.updated", doc).len(),
            count,
            "document.updated events for {doc}"
        );
    }
    survivor.kill();
}

/// A node's configuration with webhooks to `receiver`, debounced 200 ms.
fn with_webhooks_to(receiver: &concord_tests::WebhookReceiver) -> Config {
    let mut webhooks = concord_server::WebhookConfig::new([receiver.url.as_str()], "s").unwrap();
    webhooks.quiet = Duration::from_millis(200);
    Config {
        webhooks: Some(webhooks),
        ..Config::default()
    }
}

async fn a_lease_holder_stopped_gracefully_gives_the_lease_up_and_its_last_edits_are_announced(
    redis: Deployment,
) {
    use concord_tests::{WebhookReceiver, text_insert_update};
    let receiver = WebhookReceiver::start(true).await;
    let a = Node::start_with(&redis, with_webhooks_to(&receiver)).await;
    poll_until(DEADLINE, "node A takes the webhook lease", || {
        a.server.concord.stats().webhook_leading
    })
    .await;
    let b = Node::start_with(&redis, with_webhooks_to(&receiver)).await;
    let lease = "concord:{webhooks}:lease";
    let holder = redis.cli(None, &["GET", lease]);
    assert!(!holder.is_empty(), "node A holds the lease");
    let update = text_insert_update(9, "t", "bye");
    assert_eq!(post_update(&a.server, "last-words", update).await.0, 200);
    a.shutdown().await;
    // Given up, not left to expire (5 s): gone, or already node B's.
    assert_ne!(
        redis.cli(None, &["GET", lease]),
        holder,
        "node A gave the lease up as it stopped"
    );
    accepted_for(&receiver, "document.updated", &["last-words"], || {
        "node B did not announce node A's last edit".to_owned()
    })
    .await;
    assert!(b.server.concord.stats().webhook_leading);
    b.shutdown().await;
}

async fn a_document_whose_webhook_mark_is_an_earlier_ones_is_announced_from_its_start(
    redis: Deployment,
) {
    use concord_tests::{WebhookReceiver, text_insert_update};
    // A mark for `x` past the end of its log: one of an earlier `x`, deleted while the lease
    // holder was writing that mark.
    redis.cli(None, &["SET", "concord:{webhooks}:started", "1"]);
    redis.cli(
        None,
        &["HSET", "concord:{webhooks}:marks", "x", "5.4294967295"],
    );
    let receiver = WebhookReceiver::start(true).await;
    let node = Node::start_with(&redis, with_webhooks_to(&receiver)).await;
    let update = text_insert_update(1, "t", "new x");
    assert_eq!(post_update(&node.server, "x", update).await.0, 200);
    let events = accepted_for(&receiver, "document.updated", &["x"], || {
        "x was not announced".to_owned()
    })
    .await;
    let event = events.iter().find(|e| e["document"] == "x").unwrap();
    assert_eq!(event["from"], "1.0", "{event}");
    let through: Position = event["through"].as_str().unwrap().parse().unwrap();
    assert_eq!(through.seq, 1, "{event}");
    node.shutdown().await;
}
