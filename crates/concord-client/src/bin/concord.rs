//! The `concord` command-line tool: read (`cat`), follow (`watch`) and write (`put`) a Concord
//! document from a shell, through the same [`Provider`] applications embed; and list a running
//! server's documents and keep, read, restore and delete their versions (`docs ...`), through
//! its HTTP API.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use concord_client::{AckSupport, PeerEvent, Provider, ProviderConfig, Status, TokenSource};
use concord_core::json::{RootKind, parse_types, state_json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use yrs::{GetString, ReadTxn, StateVector, Text, Transact};

/// Read, follow and write Concord (or any y-websocket) documents; list a Concord server's
/// documents and manage their versions.
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
    /// A running Concord server's documents and their version history, through its HTTP API.
    ///
    /// The server keeps versions of a document on its own (at compactions and while it is
    /// edited, thinned as they age) and named ones on request (kept until deleted).
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum DocsCommand {
    /// List the stored documents: name, bytes of snapshot, log entries and bytes, versions
    /// and bytes of history.
    List {
        #[command(flatten)]
        api: Api,
    },
    /// List a document's versions, oldest first: id, when it was kept (UTC), size in bytes,
    /// the position its state reaches, and its label ("(automatic)" for a version the server
    /// kept on its own).
    Versions {
        #[command(flatten)]
        api: Api,
        /// The document name.
        doc: String,
    },
    /// Print a version of a document: its root types as JSON (like cat), or the whole
    /// document as it was, as one Yjs v1 update (raw bytes, Y.applyUpdate reads them).
    Version {
        #[command(flatten)]
        api: Api,
        /// The document name.
        doc: String,
        /// The version id (see docs versions).
        id: u64,
        /// json: the root types as JSON; update: the Yjs v1 update.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        #[command(flatten)]
        types: TypesArg,
        /// Indent the JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Keep the document as it is now as a named version (kept until deleted); prints it.
    SaveVersion {
        #[command(flatten)]
        api: Api,
        /// The document name.
        doc: String,
        /// The version's label: 1 to 256 bytes, not only spaces.
        label: String,
    },
    /// Make the document equal a version again.
    ///
    /// The server first keeps the current state as a named version ("before restoring
    /// version ID"), whose id is printed: restore it to undo. The restore is one edit,
    /// relayed to every connected client and stored before the command returns.
    Restore {
        #[command(flatten)]
        api: Api,
        /// The document name.
        doc: String,
        /// The version id (see docs versions).
        id: u64,
    },
    /// Delete a version (named or automatic). The document itself is not touched.
    DeleteVersion {
        #[command(flatten)]
        api: Api,
        /// The document name.
        doc: String,
        /// The version id (see docs versions).
        id: u64,
    },
}

/// How `docs version` prints a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The root types as JSON.
    Json,
    /// One Yjs v1 update of the whole document, raw bytes.
    Update,
}

/// A running server's HTTP API, with which credentials, and how long to wait for it.
#[derive(Debug, clap::Args)]
struct Api {
    /// The server, e.g. http://127.0.0.1:1234 or ws://127.0.0.1:1234 (the same address as for
    /// the other commands; with its path prefix, if it has one).
    url: String,
    /// A token for the server (sent as `Authorization: Bearer`). docs list needs one granting
    /// the document "*"; save-version, restore and delete-version need write access.
    #[arg(long, env = "CONCORD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the server's HTTP API is under the URL (the server's --api-prefix).
    #[arg(long, value_name = "PATH", default_value = "/api")]
    api_prefix: String,
    /// Give up when the server has not answered within this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
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
        Command::Docs { command } => docs(command).await,
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

/// A running server's HTTP API.
struct ApiClient {
    http: reqwest::Client,
    /// The API's root, e.g. `http://127.0.0.1:1234/api`.
    base: reqwest::Url,
    token: Option<String>,
}

/// A version, as the API describes it.
#[derive(Debug, serde::Deserialize)]
struct VersionInfo {
    id: u64,
    created_at_ms: u64,
    label: Option<String>,
    bytes: u64,
    position: String,
}

#[derive(Debug, serde::Deserialize)]
struct VersionList {
    versions: Vec<VersionInfo>,
}

#[derive(Debug, serde::Deserialize)]
struct Restored {
    restored: u64,
    changed: bool,
    saved_before: VersionInfo,
}

/// A document, as `GET /docs` lists it.
#[derive(Debug, serde::Deserialize)]
struct DocInfo {
    name: String,
    snapshot_bytes: u64,
    log_entries: u64,
    log_bytes: u64,
    /// Absent from servers without version history.
    #[serde(default)]
    versions: u64,
    #[serde(default)]
    history_bytes: u64,
}

#[derive(Debug, serde::Deserialize)]
struct DocPage {
    docs: Vec<DocInfo>,
    next: Option<String>,
}

impl ApiClient {
    fn new(api: &Api) -> Result<ApiClient> {
        let mut base =
            reqwest::Url::parse(&api.url).with_context(|| format!("{:?} is not a URL", api.url))?;
        let scheme = match base.scheme() {
            "http" | "ws" => "http",
            "https" | "wss" => bail!(
                "{}: this build of concord speaks plain HTTP only, not HTTPS",
                api.url
            ),
            other => bail!("{}: not an http:// or ws:// URL ({other})", api.url),
        };
        base.set_scheme(scheme)
            .map_err(|()| anyhow!("{}: cannot be an HTTP URL", api.url))?;
        base.set_query(None);
        base.set_fragment(None);
        base.path_segments_mut()
            .map_err(|()| anyhow!("{}: cannot be an HTTP URL", api.url))?
            .pop_if_empty()
            .extend(api.api_prefix.split('/').filter(|s| !s.is_empty()));
        let http = reqwest::Client::builder()
            .timeout(api.timeout)
            .build()
            .context("cannot make an HTTP client")?;
        Ok(ApiClient {
            http,
            base,
            token: api.token.clone(),
        })
    }

    /// The URL of `segments` under the API (each one percent-encoded as one segment).
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url> {
        if let Some(dots) = segments.iter().find(|s| matches!(**s, "." | "..")) {
            bail!("a document named {dots:?} cannot be named in a URL path");
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{}: cannot be an HTTP URL", self.base))?
            .extend(segments);
        Ok(url)
    }

    /// Sends a request and returns the answer's body when its status is a success; else the
    /// error says `what` failed, with the status and the server's reason.
    async fn call(
        &self,
        what: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        json_body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>> {
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = json_body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{what}: no answer from {url}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{what}: the answer from {url} broke off"))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        // The API's errors are {"error": "..."}; anything else (a proxy's page) is shown as is.
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&body);
                let text = text.trim();
                match text.char_indices().nth(200) {
                    Some((cut, _)) => format!("{}...", &text[..cut]),
                    None => text.to_owned(),
                }
            });
        if reason.is_empty() {
            bail!("{what}: the server answered {status}")
        }
        bail!("{what}: the server answered {status}: {reason}")
    }

    /// [`ApiClient::call`], its answer read as JSON.
    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        json_body: Option<serde_json::Value>,
    ) -> Result<T> {
        let body = self.call(what, method, url, json_body).await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{what}: the server's answer is not what it should be"))
    }
}

/// A time in milliseconds since the Unix epoch, as UTC ISO-8601 to the second.
fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A label as one line of a table: as it is, or quoted with escapes when it holds control
/// characters.
fn label_cell(label: Option<&str>) -> String {
    match label {
        None => "(automatic)".to_owned(),
        Some(label) if label.chars().any(char::is_control) => format!("{label:?}"),
        Some(label) => label.to_owned(),
    }
}

/// Writes `text` to stdout.
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// `concord docs ...`.
async fn docs(command: DocsCommand) -> Result<()> {
    use reqwest::Method;
    match command {
        DocsCommand::List { api } => {
            let client = ApiClient::new(&api)?;
            let mut out = format!(
                "{:<40} {:>12} {:>10} {:>12} {:>9} {:>14}\n",
                "name", "snapshot", "log", "log bytes", "versions", "history bytes"
            );
            let mut after: Option<String> = None;
            loop {
                let mut url = client.url(&["docs"])?;
                url.query_pairs_mut().append_pair("limit", "1000");
                if let Some(after) = &after {
                    url.query_pairs_mut().append_pair("after", after);
                }
                let page: DocPage = client
                    .call_json("cannot list the documents", Method::GET, url, None)
                    .await?;
                for info in &page.docs {
                    out.push_str(&format!(
                        "{:<40} {:>12} {:>10} {:>12} {:>9} {:>14}\n",
                        info.name,
                        info.snapshot_bytes,
                        info.log_entries,
                        info.log_bytes,
                        info.versions,
                        info.history_bytes
                    ));
                }
                match page.next {
                    Some(next) if !page.docs.is_empty() => after = Some(next),
                    _ => break,
                }
            }
            print(&out)
        }
        DocsCommand::Versions { api, doc } => {
            let client = ApiClient::new(&api)?;
            let url = client.url(&["docs", &doc, "versions"])?;
            let list: VersionList = client
                .call_json(
                    &format!("cannot list the versions of {doc:?}"),
                    Method::GET,
                    url,
                    None,
                )
                .await?;
            let mut out = format!(
                "{:>8}  {:<20}  {:>10}  {:<12}  label\n",
                "id", "created (UTC)", "bytes", "position"
            );
            for v in &list.versions {
                out.push_str(&format!(
                    "{:>8}  {:<20}  {:>10}  {:<12}  {}\n",
                    v.id,
                    utc(v.created_at_ms),
                    v.bytes,
                    v.position,
                    label_cell(v.label.as_deref())
                ));
            }
            print(&out)
        }
        DocsCommand::Version {
            api,
            doc,
            id,
            format,
            types,
            pretty,
        } => {
            let client = ApiClient::new(&api)?;
            let url = client.url(&["docs", &doc, "versions", &id.to_string()])?;
            // Read as an update and turned into JSON here, as cat does with a live document.
            let update = client
                .call(
                    &format!("cannot read version {id} of {doc:?}"),
                    Method::GET,
                    url,
                    None,
                )
                .await?;
            match format {
                Format::Update => {
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&update)
                        .and_then(|()| stdout.flush())
                        .context("cannot write to stdout")
                }
                Format::Json => {
                    let json = state_json(&update, &types.types.0)
                        .with_context(|| format!("cannot read version {id} of {doc:?}"))?;
                    let text = if pretty {
                        serde_json::to_string_pretty(&json)?
                    } else {
                        json.to_string()
                    };
                    print(&format!("{text}\n"))
                }
            }
        }
        DocsCommand::SaveVersion { api, doc, label } => {
            let client = ApiClient::new(&api)?;
            let url = client.url(&["docs", &doc, "versions"])?;
            let saved: VersionInfo = client
                .call_json(
                    &format!("cannot save a version of {doc:?}"),
                    Method::POST,
                    url,
                    Some(serde_json::json!({ "label": label })),
                )
                .await?;
            print(&format!(
                "saved version {} of {doc:?}: {}, {} bytes, position {}\n",
                saved.id,
                label_cell(saved.label.as_deref()),
                saved.bytes,
                saved.position
            ))
        }
        DocsCommand::Restore { api, doc, id } => {
            let client = ApiClient::new(&api)?;
            let url = client.url(&["docs", &doc, "versions", &id.to_string(), "restore"])?;
            let restored: Restored = client
                .call_json(
                    &format!("cannot restore version {id} of {doc:?}"),
                    Method::POST,
                    url,
                    None,
                )
                .await?;
            let before = restored.saved_before.id;
            print(&if restored.changed {
                format!(
                    "restored {doc:?} to version {}; the state before is version {before}: \
                     restore it to undo\n",
                    restored.restored
                )
            } else {
                format!(
                    "{doc:?} already equals version {}: unchanged (its state is also kept as \
                     version {before})\n",
                    restored.restored
                )
            })
        }
        DocsCommand::DeleteVersion { api, doc, id } => {
            let client = ApiClient::new(&api)?;
            let url = client.url(&["docs", &doc, "versions", &id.to_string()])?;
            client
                .call(
                    &format!("cannot delete version {id} of {doc:?}"),
                    Method::DELETE,
                    url,
                    None,
                )
                .await?;
            eprintln!("deleted version {id} of {doc:?}");
            Ok(())
        }
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

    fn api(url: &str, prefix: &str) -> Api {
        Api {
            url: url.to_owned(),
            token: None,
            api_prefix: prefix.to_owned(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn api_urls_take_the_server_url_and_prefix_and_encode_names() {
        let client = ApiClient::new(&api("ws://h:1", "/api")).unwrap();
        let url = client
            .url(&["docs", "team/notes ü", "versions", "3"])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://h:1/api/docs/team%2Fnotes%20%C3%BC/versions/3"
        );
        let client = ApiClient::new(&api("http://h:1/collab/?x=1", "/v1/api/")).unwrap();
        assert_eq!(
            client.url(&["docs"]).unwrap().as_str(),
            "http://h:1/collab/v1/api/docs"
        );
        let client = ApiClient::new(&api("http://h:1", "")).unwrap();
        assert_eq!(client.url(&["docs"]).unwrap().as_str(), "http://h:1/docs");
        assert!(client.url(&["docs", ".."]).is_err());
        let https = ApiClient::new(&api("wss://h", "/api")).err().unwrap();
        assert!(https.to_string().contains("plain HTTP"), "{https}");
        assert!(ApiClient::new(&api("ftp://h", "/api")).is_err());
        assert!(ApiClient::new(&api("h:1", "/api")).is_err());
    }

    #[test]
    fn versions_show_utc_times_and_labels_on_one_line() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_790_000_000_999), "2026-09-21T14:13:20Z");
        assert_eq!(label_cell(None), "(automatic)");
        assert_eq!(label_cell(Some("draft 2")), "draft 2");
        assert_eq!(label_cell(Some("a\nb")), "\"a\\nb\"");
    }

    #[test]
    fn docs_commands_parse() {
        let cli = Cli::try_parse_from([
            "concord",
            "docs",
            "version",
            "http://h:1",
            "d",
            "7",
            "--format",
            "update",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Docs {
            command:
                DocsCommand::Version {
                    api,
                    doc,
                    id,
                    format,
                    ..
                },
        } = cli.command
        else {
            panic!("not docs version")
        };
        assert_eq!(
            (api.token.as_deref(), doc.as_str(), id),
            (Some("t"), "d", 7)
        );
        assert_eq!((format, api.api_prefix.as_str()), (Format::Update, "/api"));
        assert!(
            Cli::try_parse_from(["concord", "docs", "restore", "http://h:1", "d", "x"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["concord", "docs", "save-version", "http://h:1", "d"]).is_err()
        );
    }
}
