//! `shoal secret …` and `shoal config …`, as `docker secret` / `docker config`: named blobs of
//! at most 500 KiB kept (encrypted at rest) by the managers. A secret's data is never shown
//! back; a config's is, by `inspect`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use clap::Subcommand;
use serde_json::json;
use shoal_cluster::{SecretKind, SecretSpec, MAX_SECRET_BYTES};

use super::service::{ago, now_ms};
use super::{unexpected, Agent, Ui};
use crate::api::{Response, SecretView};
use crate::client::encode_segment;
use crate::format::{clean, render_table, rfc3339_utc};

/// `shoal secret …` / `shoal config …`.
#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create one from a file or standard input
    Create {
        /// Labels (KEY=VALUE, repeatable)
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Its name.
        #[arg(value_name = "NAME")]
        name: String,
        /// The file holding the data, or - for standard input.
        #[arg(value_name = "FILE|-")]
        file: String,
    },
    /// List them
    #[command(visible_alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show their details (a secret's data never)
    Inspect {
        /// Print in a human friendly format
        #[arg(long)]
        pretty: bool,
        /// Names or ids.
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Remove them
    #[command(visible_alias = "remove")]
    Rm {
        /// Names or ids.
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
}

pub(super) fn base(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Secret => "/v1/secrets",
        SecretKind::Config => "/v1/configs",
    }
}

/// Reads at most 500 KiB from `file` (`-`: standard input), saying which limit was passed.
fn read_data(file: &str, kind: SecretKind) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let limit = MAX_SECRET_BYTES as u64 + 1;
    let r = if file == "-" {
        std::io::stdin().take(limit).read_to_end(&mut data)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut data))
    };
    r.map_err(|e| format!("{file}: {e}"))?;
    if data.len() > MAX_SECRET_BYTES {
        return Err(format!("{file}: a {} holds at most 500 KiB", kind.name()));
    }
    Ok(data)
}

pub(super) fn views(agent: &Agent, path: &str) -> Result<Vec<SecretView>, String> {
    match agent.call("GET", path, None)? {
        Response::Secrets { secrets } => Ok(secrets),
        other => Err(unexpected("a list", &other)),
    }
}

/// What `inspect --pretty` prints for one.
fn pretty(v: &SecretView) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, val: &str| {
        out.push_str(&format!("{k:<12}{}\n", clean(val)));
    };
    field(&mut out, "ID:", &v.id);
    field(&mut out, "Name:", &v.name);
    if !v.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, val) in &v.labels {
            out.push_str(&format!(" - {}={}\n", clean(k), clean(val)));
        }
    }
    field(&mut out, "Created at:", &rfc3339_utc(v.created_at_ms));
    field(&mut out, "Size:", &format!("{} bytes", v.size));
    if let Some(d) = &v.data {
        out.push_str(if v.binary { "Data (hex):\n" } else { "Data:\n" });
        // Line by line, so that its newlines stay newlines and nothing else reaches the
        // terminal raw.
        for line in d.lines() {
            out.push_str(&clean(line));
            out.push('\n');
        }
    }
    out
}

/// Runs a `secret` or `config` command.
pub(super) fn secret(
    agent: &Agent,
    kind: SecretKind,
    cmd: &SecretCmd,
    ui: &mut Ui<'_>,
) -> Result<(), String> {
    match cmd {
        SecretCmd::Create { labels, name, file } => {
            let mut map = BTreeMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                map.insert(k.to_string(), v.to_string());
            }
            let spec = SecretSpec {
                name: name.clone(),
                labels: map,
                data: read_data(file, kind)?,
            };
            spec.validate(kind).map_err(|e| e.to_string())?;
            let path = format!("{}/create", base(kind));
            let id = agent.ok("POST", &path, Some(&json!({ "spec": spec })))?;
            ui.print(&id);
            Ok(())
        }
        SecretCmd::Ls { quiet } => {
            let list = views(agent, base(kind))?;
            if *quiet {
                ui.print(
                    &list
                        .iter()
                        .map(|s| format!("{}\n", s.id))
                        .collect::<String>(),
                );
                return Ok(());
            }
            let now = now_ms();
            let mut rows: Vec<[Cow<'_, str>; 3]> =
                vec![["ID", "NAME", "CREATED"].map(Cow::Borrowed)];
            for s in &list {
                rows.push([
                    Cow::Owned(s.id.clone()),
                    Cow::Owned(clean(&s.name).into_owned()),
                    Cow::Owned(ago(s.created_at_ms, now)),
                ]);
            }
            ui.print(&render_table(&rows));
            Ok(())
        }
        SecretCmd::Inspect { pretty: p, names } => {
            let mut found = Vec::new();
            for n in names {
                let path = format!("{}/{}", base(kind), encode_segment(n));
                match views(agent, &path) {
                    Ok(v) => found.extend(v),
                    Err(e) => ui.error(&e),
                }
            }
            if *p {
                let text: Vec<String> = found.iter().map(pretty).collect();
                ui.print(&text.join("\n"));
            } else if !found.is_empty() || names.is_empty() {
                let text = serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?;
                ui.print(&text);
            }
            Ok(())
        }
        SecretCmd::Rm { names } => {
            for n in names {
                let path = format!("{}/{}", base(kind), encode_segment(n));
                match agent.ok("DELETE", &path, None) {
                    Ok(_) => ui.print(n),
                    Err(e) => ui.error(&e),
                }
            }
            Ok(())
        }
    }
}
