//! The load tool against an in-process Concord server, with scenarios small enough for CI. Only
//! what does not depend on timing is asserted: every edit delivered, every client converged,
//! every connection held, the late joiner's text right.

use std::time::Duration;

use concord_benches::load::{self, Mode, Report, Scenario, Source};
use concord_server::Config;
use tokio_util::sync::CancellationToken;

/// Starts Concord (documents in memory, limits out of the way) and returns its URL.
async fn server(shutdown: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let config = Config {
        connection_attempts_per_ip: 100_000,
        connection_attempt_burst: 100_000,
        rate_messages_per_second: 1_000_000,
        rate_message_burst: 1_000_000,
        ..Config::default()
    };
    tokio::spawn(concord_server::run(listener, config, shutdown.clone()));
    format!("ws://{addr}")
}

fn scenario(name: &str, url: &str, mode: Mode) -> Scenario {
    let mut s = Scenario::new(name, url, mode);
    // This process is the server: its memory is read, not asserted on.
    s.server_pid = Some(std::process::id());
    s.deadline = Duration::from_secs(15);
    s.connect_timeout = Duration::from_secs(10);
    s.drain = Duration::from_secs(10);
    s
}

fn assert_ok(report: &Report) {
    assert!(
        report.ok,
        "{} failed: {:?}\n{}",
        report.scenario.name,
        report.error,
        serde_json::to_string(report).expect("a report serialises")
    );
    assert_eq!(report.closed_by_server, 0);
    assert_eq!(report.protocol_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reach_every_client_and_converge() {
    let shutdown = CancellationToken::new();
    let url = server(&shutdown).await;
    for (source, rate) in [(Source::Trace, 0.0), (Source::Random, 200.0)] {
        let mut s = scenario("edits", &url, Mode::Edit);
        s.docs = 2;
        s.clients = 3;
        s.edits = 40;
        s.rate = rate;
        s.source = source;
        let report = load::run(s).await.expect("a valid scenario");
        assert_ok(&report);
        let edit = report.edit.as_ref().expect("an edit report");
        assert_eq!(edit.edits_made, 2 * 3 * 40);
        assert_eq!(edit.deliveries_expected, 2 * 3 * 40 * 2);
        assert_eq!(edit.delivered, edit.deliveries_expected);
        assert_eq!(edit.missing, 0);
        assert!(edit.converged, "{source:?}: clients diverged");
        assert_eq!(edit.fanout.n, 2 * 3 * 40);
        // The report is the JSON line the binary prints.
        let line = serde_json::to_string(&report).expect("serialise");
        assert!(!line.contains('\n'));
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_and_a_late_joiner_gets_the_document() {
    let shutdown = CancellationToken::new();
    let url = server(&shutdown).await;

    let mut s = scenario("idle", &url, Mode::Idle);
    s.docs = 3;
    s.connections = 30;
    s.hold = Duration::from_millis(200);
    let report = load::run(s).await.expect("a valid scenario");
    assert_ok(&report);
    let idle = report.idle.as_ref().expect("an idle report");
    assert_eq!(idle.held, 30);
    assert!(report.server_after.is_some_and(|m| m.rss_kb > 0));

    let mut s = scenario("late-join", &url, Mode::LateJoin);
    s.joiners = 2;
    s.preload_txns = Some(3000);
    let report = load::run(s).await.expect("a valid scenario");
    assert_ok(&report);
    let late = report.late_join.as_ref().expect("a late-join report");
    assert!(late.text_matches);
    assert_eq!(late.synced_ms.len(), 2);
    assert_eq!(late.txns, 3000);
    shutdown.cancel();
}

#[tokio::test]
async fn a_run_past_its_deadline_fails_clearly() {
    let shutdown = CancellationToken::new();
    let url = server(&shutdown).await;
    let mut s = scenario("deadline", &url, Mode::Edit);
    s.clients = 2;
    s.edits = 1000;
    // One edit per second: far longer than the deadline.
    s.rate = 1.0;
    s.deadline = Duration::from_millis(500);
    let report = load::run(s).await.expect("a valid scenario");
    assert!(!report.ok);
    let error = report.error.expect("an error");
    assert!(error.contains("deadline exceeded"), "{error}");
    shutdown.cancel();
}

#[tokio::test]
async fn only_loopback_servers_are_loaded() {
    let s = Scenario::new("remote", "ws://192.0.2.1:1234", Mode::Edit);
    let error = load::run(s).await.expect_err("a remote server is refused");
    assert!(format!("{error:#}").contains("loopback"), "{error:#}");
}
