//! The `concord` command-line tool: read (`cat`), follow (`watch`) and write (`put`) a Concord
//! document from a shell, through the same [`Provider`] applications embed.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use concord_client::{AckSupport, PeerEvent, Provider, ProviderConfig, Status, TokenSource};
use concord_core::json::{RootKind, parse_types, state_json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

/// Read, follow and write Concord (or any y-websocket) documents.
///
/// Results go to stdout, logs to stderr (RUST_LOG, default: warn). The exit status is 0 on
/// success, 1 with a one-line message on stderr on a failure, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "concord", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the document's root types as JSON, once synced.
    Cat {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        types: TypesArg,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Follow the document: one JSON line per change on stdout, until SIGINT or SIGTERM.
    ///
    /// Doc lines, {"type":"doc","json":{...}}, come once synced, then after remote changes (a
    /// burst of updates gives one line). Presence lines, {"type":"presence","event":EVENT,
    /// "client":ID,"state":STATE}, have EVENT joined, updated or left (or, when events were
    /// lost, resync with "peers":{ID:STATE,..} in place of client and state). Status lines,
    /// {"type":"status","status":STATUS}, have STATUS connecting, connected, synced or
    /// disconnected (with a "reason").
    ///
    /// --timeout bounds the first sync only: later disconnections are reported and retried,
    /// except a refusal of the token (401, 403), which ends the command with status 1. Stdin is
    /// not read, so the command can run in the background; it also ends, with status 0, when
    /// stdout is closed.
    Watch {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        types: TypesArg,
    },
    /// Replace the text of a Y.Text root with stdin (UTF-8), and wait until the server has
    /// stored it durably.
    Put {
        #[command(flatten)]
        target: Target,
        /// The Y.Text root to replace.
        #[arg(long, value_name = "FIELD")]
        text: String,
    },
}

/// Which document, where, with which credentials, and how long to try.
#[derive(Debug, clap::Args)]
struct Target {
    /// The server, e.g. ws://127.0.0.1:1234 (with its path prefix, if it has one).
    url: String,
    /// The document name.
    doc: String,
    /// A token for the server (sent as the `token` query parameter).
    #[arg(long, env = "CONCORD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Give up when the document is not synced (and, for put, saved) within this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The `--types` hint of the commands that print JSON.
#[derive(Debug, clap::Args)]
struct TypesArg {
    /// The kinds of root types, e.g. text:content,map:meta. A root a client only received
    /// does not tell its kind: unnamed roots are read as the kind their content shows (text,
    /// xml, array, or map; an empty root is {}), named ones as named.
    #[arg(
        long,
        value_name = "KIND:NAME,..",
        default_value = "",
        hide_default_value = true,
        value_parser = parse_types_arg
    )]
    types: Types,
}

#[derive(Debug, Clone)]
struct Types(Vec<(String, RootKind)>);

fn parse_types_arg(value: &str) -> Result<Types, String> {
    parse_types(value).map(Types).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("concord: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with its causes, rather than anyhow's multi-line debug form.
            eprintln!("concord: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Cat {
            target,
            types,
            pretty,
        } => cat(&target, &types.types.0, pretty).await,
        Command::Watch { target, types } => watch(&target, &types.types.0).await,
        Command::Put { target, text } => {
            let mut content = String::new();
            std::io::stdin()
                .read_to_string(&mut content)
                .context("cannot read the new text from stdin (it must be UTF-8)")?;
            put(&target, &text, &content).await
        }
    }
}

/// Starts an in-memory provider for `target`: the tool keeps nothing between runs.
async fn start(target: &Target) -> Result<Provider> {
    let token: Option<TokenSource> = target.token.clone().map(|token| {
        let source: TokenSource = Arc::new(move || {
            let token = token.clone();
            Box::pin(async move { Some(token) })
        });
        source
    });
    Provider::start(ProviderConfig {
        token,
        ..ProviderConfig::new(&target.url, &target.doc)
    })
    .await
    .with_context(|| format!("cannot open {:?} on {}", target.doc, target.url))
}

/// True when the server refused the connection in a way another attempt with the same token
/// cannot change (401: no or bad token, 403: not allowed). Other failures (refused TCP
/// connections, 429, 503) may pass, so they are retried until the deadline.
fn refusal_is_final(reason: &str) -> bool {
    // The provider reports an HTTP refusal as "the server refused the connection: STATUS ..".
    reason
        .strip_prefix("the server refused the connection: ")
        .is_some_and(|rest| rest.starts_with("401") || rest.starts_with("403"))
}

/// Waits until the provider is synced, at most until `deadline`; the error carries the last
/// reason a connection failed.
async fn sync(provider: &Provider, target: &Target, deadline: Instant) -> Result<()> {
    // Subscribed before the current status is read, so no change falls in between.
    let mut changes = provider.status_changes();
    let mut last = provider.status().borrow().clone();
    loop {
        match &last {
            Status::Synced => return Ok(()),
            Status::Disconnected { reason } if refusal_is_final(reason) => {
                bail!("cannot open {:?} on {}: {reason}", target.doc, target.url)
            }
            _ => {}
        }
        tokio::select! {
            change = changes.recv() => match change {
                Ok(status) => last = status,
                // Behind: the latest status is what matters.
                Err(RecvError::Lagged(_)) => last = provider.status().borrow().clone(),
                Err(RecvError::Closed) => bail!("the provider stopped"),
            },
            _ = tokio::time::sleep_until(deadline) => {
                let why = match &last {
                    Status::Disconnected { reason } => format!("last attempt: {reason}"),
                    other => format!("status: {}", status_name(other)),
                };
                bail!(
                    "cannot sync {:?} with {} within {}: {why}",
                    target.doc,
                    target.url,
                    humantime::format_duration(target.timeout)
                );
            }
        }
    }
}

/// The JSON of the document's roots, read from a copy (reading declares root kinds, which must
/// not stick to the live document: a root read as a map while empty would stay one).
fn json_of(provider: &Provider, types: &[(String, RootKind)]) -> Result<serde_json::Value> {
    let state = provider
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    state_json(&state, types).context("cannot read the document's state")
}

/// `concord cat`.
async fn cat(target: &Target, types: &[(String, RootKind)], pretty: bool) -> Result<()> {
    let deadline = Instant::now() + target.timeout;
    let provider = start(target).await?;
    let result = async {
        sync(&provider, target, deadline).await?;
        let json = json_of(&provider, types)?;
        let text = if pretty {
            serde_json::to_string_pretty(&json)?
        } else {
            json.to_string()
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")
    }
    .await;
    provider.close().await;
    result
}

/// `concord put`.
async fn put(target: &Target, field: &str, content: &str) -> Result<()> {
    let deadline = Instant::now() + target.timeout;
    let provider = start(target).await?;
    let result = async {
        // The delete must cover everything the server has, so it waits for the server's state.
        sync(&provider, target, deadline).await?;
        let doc = provider.doc();
        let text = doc.get_or_insert_text(field);
        let changed = {
            let mut txn = doc.transact_mut();
            if text.get_string(&txn) == content {
                false
            } else {
                let len = text.len(&txn);
                text.remove_range(&mut txn, 0, len);
                text.insert(&mut txn, 0, content);
                true
            }
        };
        if !changed {
            eprintln!("{:?} already holds this text: unchanged", target.doc);
            return Ok(());
        }
        let saved = tokio::time::timeout_at(deadline, provider.wait_saved()).await;
        if let Ok(Err(refused)) = saved {
            bail!("the edit of {:?} was not saved: {refused}", target.doc);
        }
        if saved.is_err() {
            let status = provider.status().borrow().clone();
            bail!(
                "the edit of {:?} was not confirmed as saved within {} ({})",
                target.doc,
                humantime::format_duration(target.timeout),
                match &status {
                    Status::Disconnected { reason } => format!("disconnected: {reason}"),
                    other => format!("status: {}", status_name(other)),
                }
            );
        }
        if provider.save_state().borrow().acks == AckSupport::No {
            eprintln!(
                "sent {} bytes to {:?}/{field}; the server does not acknowledge saves, so \
                 whether it stored them is unknown",
                content.len(),
                target.doc
            );
        } else {
            eprintln!("saved {} bytes to {:?}/{field}", content.len(), target.doc);
        }
        Ok(())
    }
    .await;
    provider.close().await;
    result
}

/// `concord watch`.
async fn watch(target: &Target, types: &[(String, RootKind)]) -> Result<()> {
    let deadline = Instant::now() + target.timeout;
    let provider = start(target).await?;
    let result = async {
        // Subscribed before the first sync, so nothing after it is missed.
        let mut statuses = provider.status_changes();
        let mut peers = provider.peer_events();
        let changed = Arc::new(tokio::sync::Notify::new());
        {
            let changed = changed.clone();
            provider
                .doc()
                .observe_update_v1("concord-watch", move |_, _| changed.notify_one())
                .map_err(|e| anyhow!("cannot observe the document: {e}"))?;
        }
        let mut out = Output::default();
        // Status lines from the start, so a slow first sync shows why.
        let current = provider.status().borrow().clone();
        out.status(&current, target)?;
        let mut first_sync = Box::pin(sync(&provider, target, deadline));
        let mut synced = false;
        let mut signals = Signals::new().context("cannot listen for signals")?;
        loop {
            tokio::select! {
                _ = signals.next() => return Ok(()),
                result = &mut first_sync, if !synced => {
                    result?;
                    synced = true;
                    // The status lines up to "synced" come before the first doc line.
                    loop {
                        match statuses.try_recv() {
                            Ok(status) => out.status(&status, target)?,
                            Err(TryRecvError::Lagged(_)) => {}
                            Err(_) => break,
                        }
                    }
                    out.doc(json_of(&provider, types)?)?;
                }
                _ = changed.notified(), if synced => {
                    // A burst of updates (a sync, a paste) gives one line.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    out.doc(json_of(&provider, types)?)?;
                }
                status = statuses.recv() => match status {
                    Ok(status) => out.status(&status, target)?,
                    Err(RecvError::Lagged(_)) => {
                        let current = provider.status().borrow().clone();
                        out.status(&current, target)?;
                    }
                    Err(RecvError::Closed) => bail!("the provider stopped"),
                },
                event = peers.recv() => match event {
                    Ok(event) => out.line(&peer_line(&event))?,
                    // Events were lost: say who is there now instead.
                    Err(RecvError::Lagged(_)) => {
                        let peers: serde_json::Map<_, _> = provider
                            .peers()
                            .into_iter()
                            .map(|(id, state)| (id.to_string(), state))
                            .collect();
                        out.line(&Line::Presence {
                            event: "resync",
                            client: None,
                            state: None,
                            peers: Some(&peers),
                        })?;
                    }
                    Err(RecvError::Closed) => bail!("the provider stopped"),
                },
            }
        }
    }
    .await;
    provider.close().await;
    match result {
        // The reader went away (`concord watch | head -1`): done, not a failure.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Stdout of `watch`: one flushed JSON line at a time, without repeating itself.
#[derive(Default)]
struct Output {
    last_doc: Option<serde_json::Value>,
    last_status: Option<Status>,
}

impl Output {
    fn line(&mut self, line: &Line<'_>) -> Result<()> {
        let text = serde_json::to_string(line)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")
    }

    /// A doc line, unless the JSON is what the last one said (an update may change nothing
    /// the JSON shows).
    fn doc(&mut self, json: serde_json::Value) -> Result<()> {
        if self.last_doc.as_ref() == Some(&json) {
            return Ok(());
        }
        self.line(&Line::Doc { json: &json })?;
        self.last_doc = Some(json);
        Ok(())
    }

    /// A status line, unless it is the status the last one said (the initial status may also
    /// come as a change); a refusal no retry can change ends the command.
    fn status(&mut self, status: &Status, target: &Target) -> Result<()> {
        if self.last_status.as_ref() != Some(status) {
            self.line(&status_line(status))?;
            self.last_status = Some(status.clone());
        }
        match status {
            Status::Disconnected { reason } if refusal_is_final(reason) => {
                bail!("{:?} on {}: {reason}", target.doc, target.url)
            }
            _ => Ok(()),
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn status_name(status: &Status) -> &'static str {
    match status {
        Status::Connecting => "connecting",
        Status::Connected => "connected",
        Status::Synced => "synced",
        Status::Disconnected { .. } => "disconnected",
    }
}

/// A line of `watch`, its `type` first (serde_json's maps would sort the keys).
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line<'a> {
    Doc {
        json: &'a serde_json::Value,
    },
    Presence {
        event: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<u64>,
        /// `null` for a peer that left.
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<&'a serde_json::Value>,
        /// After events were lost: every peer's state, by client id.
        #[serde(skip_serializing_if = "Option::is_none")]
        peers: Option<&'a serde_json::Map<String, serde_json::Value>>,
    },
    Status {
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
}

fn status_line(status: &Status) -> Line<'_> {
    Line::Status {
        status: status_name(status),
        reason: match status {
            Status::Disconnected { reason } => Some(reason),
            _ => None,
        },
    }
}

fn peer_line(event: &PeerEvent) -> Line<'_> {
    const LEFT: &serde_json::Value = &serde_json::Value::Null;
    let (event, client, state) = match event {
        PeerEvent::Joined(id, state) => ("joined", id, state),
        PeerEvent::Updated(id, state) => ("updated", id, state),
        PeerEvent::Left(id) => ("left", id, LEFT),
    };
    Line::Presence {
        event,
        client: Some(*client),
        state: Some(state),
        peers: None,
    }
}

/// SIGINT and SIGTERM (Ctrl-C only, off Unix).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_refusals_a_retry_cannot_change_are_final() {
        assert!(refusal_is_final(
            "the server refused the connection: 401 Unauthorized missing token"
        ));
        assert!(refusal_is_final(
            "the server refused the connection: 403 Forbidden"
        ));
        assert!(!refusal_is_final(
            "the server refused the connection: 503 Service Unavailable"
        ));
        assert!(!refusal_is_final(
            "cannot connect: IO error: Connection refused (os error 111)"
        ));
    }

    #[test]
    fn types_and_token_parse() {
        let cli = Cli::try_parse_from([
            "concord",
            "cat",
            "ws://h:1",
            "d",
            "--types",
            "text:content,map:meta",
            "--token",
            "t",
            "--timeout",
            "2s",
        ])
        .unwrap();
        let Command::Cat { target, types, .. } = cli.command else {
            panic!("not cat")
        };
        assert_eq!(target.token.as_deref(), Some("t"));
        assert_eq!(target.timeout, Duration::from_secs(2));
        assert_eq!(types.types.0.len(), 2);
        assert!(Cli::try_parse_from(["concord", "cat", "ws://h:1", "d", "--types", "x"]).is_err());
    }
}
