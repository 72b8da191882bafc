//! A Rust `concord-client` provider the Node interop tests drive (see `tests/interop`).
//!
//! It starts a [`Provider`] on document `DOC` of the server at `URL`, prints
//! `{"ready":true,"client":ID}`, then reads one JSON command per line on stdin and answers each
//! with one JSON line on stdout:
//!
//! ```text
//! {"cmd":"insert","text":"..","at":N}     into the Y.Text "text" (at: UTF-8 bytes, yrs'
//!                                          default offsets; omitted or too large: the end)
//!                                          -> {"ok":true,"unsaved":bool}, unsaved read right
//!                                             after the edit
//! {"cmd":"map","key":"k","value":JSON}    set a key of the Y.Map "map" -> {"ok":true,"unsaved":bool}
//! {"cmd":"presence","name":"..","color":".."}   the user of the local presence -> {"ok":true}
//! {"cmd":"typing"}                        typing, until the typing timeout -> {"ok":true}
//! {"cmd":"state"}                         -> {"text","map","status","reason"?,"peers":{ID:
//!                                            state},"unsaved","presence"}
//! {"cmd":"close"}                         close the provider -> {"closed":true}, then exit 0
//! ```
//!
//! A command it cannot read or carry out is answered with `{"error":".."}`. When stdin closes
//! the provider is closed too. Usage:
//!
//! ```text
//! client-peer URL DOC [--client-id N] [--typing-timeout-ms N]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use concord_client::{Provider, ProviderConfig, Status, User};
use concord_core::json::any_to_json;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use yrs::types::ToJson;
use yrs::{Any, GetString, Map, Text, Transact};

/// The roots the commands edit, named like the interop harness's `ROOTS`.
const TEXT: &str = "text";
const MAP: &str = "map";

struct Args {
    url: String,
    doc: String,
    client_id: Option<u64>,
    typing_timeout: Option<Duration>,
}

fn parse_args() -> Result<Args> {
    let mut positional = Vec::new();
    let mut client_id = None;
    let mut typing_timeout = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("missing value for {arg}"))
        };
        match arg.as_str() {
            "--client-id" => {
                client_id = Some(value()?.parse().context("--client-id must be a number")?)
            }
            "--typing-timeout-ms" => {
                let ms = value()?
                    .parse()
                    .context("--typing-timeout-ms must be a number")?;
                typing_timeout = Some(Duration::from_millis(ms));
            }
            "-h" | "--help" => {
                println!("usage: client-peer URL DOC [--client-id N] [--typing-timeout-ms N]");
                std::process::exit(0);
            }
            flag if flag.starts_with("--") => bail!("unknown flag {flag:?} (try --help)"),
            _ => positional.push(arg),
        }
    }
    let [url, doc] = <[String; 2]>::try_from(positional)
        .map_err(|got| anyhow!("expected URL and DOC, got {got:?} (try --help)"))?;
    Ok(Args {
        url,
        doc,
        client_id,
        typing_timeout,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    match peer().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("client-peer: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn peer() -> Result<()> {
    let args = parse_args()?;
    let mut config = ProviderConfig::new(&args.url, &args.doc);
    config.client_id = args.client_id;
    if let Some(timeout) = args.typing_timeout {
        config.typing_timeout = timeout;
    }
    let provider = Provider::start(config)
        .await
        .context("cannot start the provider")?;
    let mut out = tokio::io::stdout();
    say(
        &mut out,
        &json!({"ready": true, "client": provider.client_id()}),
    )
    .await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let command: Value = match serde_json::from_str(&line) {
            Ok(command) => command,
            Err(e) => {
                say(&mut out, &json!({"error": format!("not JSON: {e}")})).await?;
                continue;
            }
        };
        if command["cmd"] == "close" {
            provider.close().await;
            return say(&mut out, &json!({"closed": true})).await;
        }
        let answer =
            answer(&provider, &command).unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        say(&mut out, &answer).await?;
    }
    // Stdin closed: the test is done with this peer.
    provider.close().await;
    Ok(())
}

async fn say(out: &mut tokio::io::Stdout, value: &Value) -> Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    out.write_all(line.as_bytes())
        .await
        .and(out.flush().await)
        .context("cannot write to stdout")
}

/// Carries out a command other than `close`.
fn answer(provider: &Provider, command: &Value) -> Result<Value> {
    let doc = provider.doc();
    match command["cmd"].as_str().context("no \"cmd\"")? {
        "insert" => {
            let inserted = command["text"].as_str().context("insert needs \"text\"")?;
            let text = doc.get_or_insert_text(TEXT);
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            let at = command["at"]
                .as_u64()
                .map_or(len, |at| u32::try_from(at).unwrap_or(u32::MAX).min(len));
            text.insert(&mut txn, at, inserted);
            drop(txn);
            Ok(json!({"ok": true, "unsaved": provider.has_unsaved_changes()}))
        }
        "map" => {
            let key = command["key"].as_str().context("map needs \"key\"")?;
            let value = Any::from_json(&command["value"].to_string())
                .map_err(|e| anyhow!("the value is not one yrs takes: {e}"))?;
            let map = doc.get_or_insert_map(MAP);
            map.insert(&mut doc.transact_mut(), key, value);
            Ok(json!({"ok": true, "unsaved": provider.has_unsaved_changes()}))
        }
        "presence" => {
            let name = command["name"]
                .as_str()
                .context("presence needs \"name\"")?;
            let color = command["color"].as_str().map(str::to_owned);
            provider.update_presence(|p| {
                p.user = Some(User {
                    name: name.to_owned(),
                    color,
                })
            });
            Ok(json!({"ok": true}))
        }
        "typing" => {
            provider.typing();
            Ok(json!({"ok": true}))
        }
        "state" => Ok(state(provider)),
        other => bail!("unknown command {other:?}"),
    }
}

fn state(provider: &Provider) -> Value {
    let doc = provider.doc();
    let (text, map) = {
        let text = doc.get_or_insert_text(TEXT);
        let map = doc.get_or_insert_map(MAP);
        let txn = doc.transact();
        (text.get_string(&txn), any_to_json(&map.to_json(&txn)))
    };
    let peers: serde_json::Map<String, Value> = provider
        .peers()
        .into_iter()
        .map(|(id, state)| (id.to_string(), state))
        .collect();
    let status = provider.status().borrow().clone();
    let mut state = json!({
        "text": text,
        "map": map,
        "status": match &status {
            Status::Connecting => "connecting",
            Status::Connected => "connected",
            Status::Synced => "synced",
            Status::Disconnected { .. } => "disconnected",
        },
        "peers": peers,
        "unsaved": provider.has_unsaved_changes(),
        "presence": provider.presence(),
    });
    if let Status::Disconnected { reason } = status {
        state["reason"] = json!(reason);
    }
    state
}
