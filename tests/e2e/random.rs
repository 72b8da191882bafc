//! A seeded randomized scenario: many clients edit text, arrays, maps and nested maps at random,
//! disconnect (cleanly or not), edit offline and reconnect, and in the end every client (and a
//! fresh one) holds the same document with every edit in it.
//!
//! Reproduce a failure with `CONCORD_SEED=<seed> cargo test -p concord-tests --test e2e random`.

use concord_server::Config;
use concord_tests::{DEADLINE, Root, SplitMix64, TestClient, TestServer, poll_until_ok};
use yrs::{Array, Map, MapPrelim, Out, Text, WriteTxn};

const CLIENTS: u64 = 8;
const STEPS: usize = 300;
const ROOTS: &[Root<'static>] = &[
    Root::Text("text"),
    Root::Array("items"),
    Root::Map("map"),
    Root::Array("log"),
];

/// Makes one random edit tagged `marker`; every edit also appends `marker` to the append-only
/// root array `log`, so the final document must list every edit exactly once.
fn random_edit(client: &TestClient, rng: &mut SplitMix64, marker: &str) {
    let kind = rng.below(8);
    let (r1, r2) = (rng.next_u64(), rng.next_u64());
    client.edit(|txn| {
        let text = txn.get_or_insert_text("text");
        let items = txn.get_or_insert_array("items");
        let map = txn.get_or_insert_map("map");
        let log = txn.get_or_insert_array("log");
        match kind {
            0 | 1 => {
                let len = text.len(txn);
                let at = (r1 % u64::from(len + 1)) as u32;
                text.insert(txn, at, &format!("[{marker}]"));
            }
            2 => {
                let len = text.len(txn);
                if len > 0 {
                    let at = (r1 % u64::from(len)) as u32;
                    let n = (1 + r2 % 8).min(u64::from(len - at)) as u32;
                    text.remove_range(txn, at, n);
                }
            }
            3 => {
                let len = items.len(txn);
                let at = (r1 % u64::from(len + 1)) as u32;
                items.insert(txn, at, marker.to_owned());
            }
            4 => {
                let len = items.len(txn);
                if len > 0 {
                    items.remove(txn, (r1 % u64::from(len)) as u32);
                }
            }
            5 => {
                map.insert(txn, format!("k{}", r1 % 6), marker.to_owned());
                if r2 % 3 == 0 {
                    map.remove(txn, &format!("k{}", r2 % 6));
                }
            }
            _ => {
                // Nested maps inside the array: create one, or write into an existing one.
                let nested: Vec<yrs::MapRef> = items
                    .iter(txn)
                    .filter_map(|item| match item {
                        Out::YMap(map) => Some(map),
                        _ => None,
                    })
                    .collect();
                if nested.is_empty() || r1 % 3 == 0 {
                    let len = items.len(txn);
                    let at = (r2 % u64::from(len + 1)) as u32;
                    items.insert(txn, at, MapPrelim::from_iter([("by", marker.to_owned())]));
                } else {
                    let target = &nested[(r2 % nested.len() as u64) as usize];
                    target.insert(txn, format!("f{}", r1 % 4), marker.to_owned());
                }
            }
        }
        log.push_back(txn, marker.to_owned());
    });
}

async fn scenario(seed: u64) {
    println!("randomized scenario: seed = {seed:#x}");
    let server = TestServer::start(Config::default()).await;
    let url = server.url(&format!("random-{seed:x}"));
    let mut rng = SplitMix64::new(seed);

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        // Deterministic, distinct client ids. A seed fixes the sequence of operations; how they
        // interleave with the network still varies from run to run.
        let id = (seed % 1_000_000) * 100 + i + 1;
        clients.push(TestClient::connect_with_client_id(&url, id).await.unwrap());
    }
    for client in &clients {
        client.wait_synced().await;
    }
    let mut online = vec![true; clients.len()];
    let mut edits = vec![0u32; clients.len()];
    let mut markers = Vec::new();

    for step in 0..STEPS {
        let i = rng.below(CLIENTS) as usize;
        if online[i] && rng.chance(6) {
            if rng.chance(50) {
                clients[i].disconnect().await;
            } else {
                clients[i].drop_connection().await;
            }
            online[i] = false;
        } else if !online[i] && rng.chance(40) {
            clients[i]
                .reconnect()
                .await
                .unwrap_or_else(|e| panic!("seed {seed:#x} step {step}: reconnect failed: {e:#}"));
            online[i] = true;
        } else {
            // Online or offline: offline edits reach the server through the resync.
            let marker = format!("c{i}e{}", edits[i]);
            edits[i] += 1;
            random_edit(&clients[i], &mut rng, &marker);
            markers.push(marker);
        }
        if rng.chance(30) {
            tokio::task::yield_now().await;
        }
    }

    // Every client that is supposed to be online must still be: the server never dropped one.
    for (i, client) in clients.iter().enumerate() {
        if online[i] {
            assert!(
                client.is_connected(),
                "seed {seed:#x}: client {i} was disconnected by the server: {:?}",
                client.status()
            );
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        if !online[i] {
            client.reconnect().await.unwrap();
        }
    }
    for client in &clients {
        client.wait_synced().await;
    }

    poll_until_ok(
        DEADLINE,
        format!("seed {seed:#x}: all {CLIENTS} clients converge"),
        || {
            let first = clients[0].snapshot(ROOTS);
            let logged = first["log"].as_array().map_or(0, Vec::len);
            if logged != markers.len() {
                return Err(format!("client 0 has {logged} of {} edits", markers.len()));
            }
            for (i, client) in clients.iter().enumerate().skip(1) {
                if client.state_vector() != clients[0].state_vector() {
                    return Err(format!("client {i}'s state vector differs from client 0's"));
                }
                let other = client.snapshot(ROOTS);
                if other != first {
                    return Err(format!("client {i} differs: {other} vs {first}"));
                }
            }
            Ok(())
        },
    )
    .await;

    let doc = clients[0].snapshot(ROOTS);
    let mut logged: Vec<&str> = doc["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().expect("log entries are strings"))
        .collect();
    logged.sort_unstable();
    let mut expected: Vec<&str> = markers.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(
        logged, expected,
        "seed {seed:#x}: the log must hold every edit once"
    );
    for (i, client) in clients.iter().enumerate() {
        let status = client.status();
        assert!(
            status.errors.is_empty(),
            "seed {seed:#x}: client {i} saw protocol errors: {:?}",
            status.errors
        );
        assert!(
            !client.has_missing_updates(),
            "seed {seed:#x}: client {i} has a gap"
        );
    }

    // The server's own copy agrees: a fresh client gets exactly the same document.
    let fresh = TestClient::connect_synced(&url).await.unwrap();
    assert_eq!(
        fresh.snapshot(ROOTS),
        doc,
        "seed {seed:#x}: the server's copy differs"
    );
    println!(
        "seed {seed:#x}: {} edits by {CLIENTS} clients converged",
        markers.len()
    );
}

fn seed_or(default: u64) -> u64 {
    match std::env::var("CONCORD_SEED") {
        Ok(seed) => {
            let seed = seed.trim();
            let parsed = match seed.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => seed.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CONCORD_SEED={seed:?} is not a number"))
        }
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_edits_disconnects_and_reconnects_converge_seed_a() {
    scenario(seed_or(0x5EED_0001)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_edits_disconnects_and_reconnects_converge_seed_b() {
    scenario(seed_or(0xC0FF_EE00)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_edits_disconnects_and_reconnects_converge_seed_c() {
    scenario(seed_or(0xDEAD_BEEF)).await;
}
