//! `shoal context`: named agents to talk to, like `docker context`. A context is a host (a
//! remote agent's `tcp://HOST:PORT`, or a Unix socket) and, for TCP, the operator's TLS files.
//!
//! Stored under `$SHOAL_CONFIG` (default `~/.shoal`): `config.json` names the current context,
//! `contexts/NAME/meta.json` describes one, and `contexts/NAME/{ca,cert,key}.pem` are its TLS
//! files (the directory mode 0700, the key 0600). The context `default` is the local agent
//! (`--data-dir`'s socket) and is always there.

use std::borrow::Cow;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::{Cli, Ui, SOCKET_NAME};
use crate::client::{parse_tcp_urls, Endpoint, Remote};
use crate::format;

/// The context that is the local agent.
pub const DEFAULT_CONTEXT: &str = "default";

/// Longest context name.
const MAX_NAME: usize = 64;

/// Largest TLS file read.
const MAX_PEM_BYTES: u64 = 64 << 10;

/// `shoal context …`.
#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// Create a context: a remote agent and the client certificate that reaches it
    Create {
        /// The agent: tcp://HOST:PORT (its --api-addr; several managers comma-separated, tried
        /// in order when one cannot be reached) or unix:///PATH
        #[arg(long, value_name = "URL")]
        host: String,
        /// The directory holding ca.pem, cert.pem and key.pem (`swarm ca client-cert --out`);
        /// they are copied into the context
        #[arg(long, value_name = "DIR")]
        tls_dir: Option<PathBuf>,
        /// A description
        #[arg(long, default_value = "")]
        description: String,
        /// The context's name
        name: String,
    },
    /// List the contexts (the current one is marked with *)
    #[command(visible_alias = "list")]
    Ls {
        /// Only print the names
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, json, or a template such as '{{.Name}} {{.Host}}'
        #[arg(long)]
        format: Option<String>,
    },
    /// Make a context the current one (`default`: the local agent)
    Use {
        /// The context's name
        name: String,
    },
    /// Print the current context's name
    Show,
    /// Remove contexts
    #[command(visible_alias = "remove")]
    Rm {
        /// Remove the current context too (the current one becomes `default`)
        #[arg(short, long)]
        force: bool,
        /// The contexts' names
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What `meta.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The context's name.
    pub name: String,
    /// `tcp://HOST:PORT` or `unix:///PATH`.
    pub host: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// What `config.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Config {
    /// The current context (`None` or `default`: the local agent).
    #[serde(default)]
    current_context: Option<String>,
}

/// Where contexts are kept: `$SHOAL_CONFIG`, else `$HOME/.shoal`.
pub fn config_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("SHOAL_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".shoal")),
        None => Err("neither SHOAL_CONFIG nor HOME is set: cannot find the contexts".into()),
    }
}

/// Checks a context name: letters, digits, `_`, `.`, `+`, `-`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid context name {name:?}: 1 to {MAX_NAME} letters, digits, '_', '.', '+' or '-', starting with a letter or a digit"
        ))
    }
}

/// The contexts of one configuration directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store at `dir` (nothing is created until a context is).
    pub fn at(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The store at [`config_dir`].
    pub fn open() -> Result<Store, String> {
        Ok(Store::at(config_dir()?))
    }

    fn context_dir(&self, name: &str) -> PathBuf {
        self.dir.join("contexts").join(name)
    }

    fn config(&self) -> Result<Config, String> {
        let path = self.dir.join("config.json");
        match read_small(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a shoal configuration: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn set_config(&self, config: &Config) -> Result<(), String> {
        let text = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;
        create_private_dir(&self.dir)?;
        write_file(&self.dir.join("config.json"), text.as_bytes(), 0o600)
    }

    /// The current context's name (`default` when none is set).
    pub fn current(&self) -> Result<String, String> {
        Ok(self
            .config()?
            .current_context
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| DEFAULT_CONTEXT.to_string()))
    }

    /// A context's description.
    pub fn meta(&self, name: &str) -> Result<Meta, String> {
        validate_name(name)?;
        let path = self.context_dir(name).join("meta.json");
        let text = read_small(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("context {name:?} does not exist")
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a shoal context: {e}", path.display()))
    }

    /// Every context but `default`, by name.
    pub fn list(&self) -> Result<Vec<Meta>, String> {
        let dir = self.dir.join("contexts");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_ok() && name != DEFAULT_CONTEXT {
                out.push(self.meta(&name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The endpoint of context `name` (`default`: the socket in `data_dir`).
    pub fn endpoint(&self, name: &str, data_dir: &Path) -> Result<Endpoint, String> {
        if name == DEFAULT_CONTEXT {
            return Ok(Endpoint::Unix(data_dir.join(SOCKET_NAME)));
        }
        let meta = self.meta(name)?;
        host_endpoint(&meta.host, Some(&self.context_dir(name)))
            .map_err(|e| format!("context {name:?}: {e}"))
    }

    /// Creates context `name`, copying the TLS files of `tls_dir` after checking that they
    /// belong together.
    pub fn create(&self, meta: &Meta, tls_dir: Option<&Path>) -> Result<(), String> {
        validate_name(&meta.name)?;
        if meta.name == DEFAULT_CONTEXT {
            return Err("the context \"default\" is the local agent and cannot be created".into());
        }
        if self.context_dir(&meta.name).join("meta.json").exists() {
            return Err(format!("context {:?} already exists", meta.name));
        }
        let tls = if meta.host.starts_with("tcp://") {
            // The hosts first: a typo is the likelier mistake.
            let addrs = parse_tcp_urls(&meta.host)?;
            let dir = tls_dir.ok_or("a tcp:// host needs --tls-dir (ca.pem, cert.pem, key.pem)")?;
            let files = TlsFiles::read(dir)?;
            // Fails here, not at the first command, if they do not belong together.
            Remote::new(addrs, &files.ca, &files.cert, &files.key)?;
            Some(files)
        } else {
            if tls_dir.is_some() {
                return Err("--tls-dir is only for tcp:// hosts".into());
            }
            host_endpoint(&meta.host, None)?;
            None
        };
        let dir = self.context_dir(&meta.name);
        create_private_dir(&self.dir)?;
        create_private_dir(&self.dir.join("contexts"))?;
        create_private_dir(&dir)?;
        if let Some(files) = tls {
            write_file(&dir.join("ca.pem"), files.ca.as_bytes(), 0o644)?;
            write_file(&dir.join("cert.pem"), files.cert.as_bytes(), 0o644)?;
            write_file(&dir.join("key.pem"), files.key.as_bytes(), 0o600)?;
        }
        let text = serde_json::to_string_pretty(meta).map_err(|e| e.to_string())?;
        // Written last: a context exists once its description does.
        write_file(&dir.join("meta.json"), text.as_bytes(), 0o600)
    }

    /// Makes `name` the current context.
    pub fn select(&self, name: &str) -> Result<(), String> {
        if name != DEFAULT_CONTEXT {
            self.meta(name)?;
        }
        let mut config = self.config()?;
        config.current_context = (name != DEFAULT_CONTEXT).then(|| name.to_string());
        self.set_config(&config)
    }

    /// Removes context `name` (the current one only with `force`, and `default` never).
    pub fn remove(&self, name: &str, force: bool) -> Result<(), String> {
        if name == DEFAULT_CONTEXT {
            return Err("the context \"default\" cannot be removed".into());
        }
        self.meta(name)?;
        let current = self.current()?;
        if current == name {
            if !force {
                return Err(format!(
                    "context {name:?} is in use: use another one first, or remove it with --force"
                ));
            }
            self.select(DEFAULT_CONTEXT)?;
        }
        fs::remove_dir_all(self.context_dir(name))
            .map_err(|e| format!("cannot remove context {name:?}: {e}"))
    }
}

/// The three TLS files of an operator.
struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

impl TlsFiles {
    fn read(dir: &Path) -> Result<TlsFiles, String> {
        let read = |name: &str| {
            let path = dir.join(name);
            read_small(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        Ok(TlsFiles {
            ca: read("ca.pem")?,
            cert: read("cert.pem")?,
            key: read("key.pem")?,
        })
    }
}

/// The endpoint of `-H`/a context's host: `unix:///PATH` (or an absolute path), or
/// `tcp://HOST:PORT` with the TLS files of `tls_dir`.
pub fn host_endpoint(host: &str, tls_dir: Option<&Path>) -> Result<Endpoint, String> {
    if host.starts_with("tcp://") {
        let addrs = parse_tcp_urls(host)?;
        let dir = tls_dir.ok_or_else(|| {
            format!("{host}: a tcp:// host needs --tls-dir (or a context made with shoal context create)")
        })?;
        let files = TlsFiles::read(dir)?;
        let remote = Remote::new(addrs, &files.ca, &files.cert, &files.key)?;
        return Ok(Endpoint::Tls(std::sync::Arc::new(remote)));
    }
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if path.starts_with('/') && path.len() > 1 {
        Ok(Endpoint::Unix(PathBuf::from(path)))
    } else {
        Err(format!(
            "unsupported host {host:?}: expected unix:///path or tcp://host:port"
        ))
    }
}

fn read_small(path: &Path) -> std::io::Result<String> {
    let meta = fs::metadata(path)?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KiB", MAX_PEM_BYTES >> 10),
        ));
    }
    fs::read_to_string(path)
}

/// Creates `dir` and any missing parents at mode 0700 (like `docker` making `~/.docker`).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

/// Writes `bytes` to `path` with `mode` through a temporary file renamed into place.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// A row of `context ls`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    name: String,
    current: bool,
    description: String,
    host: String,
    certificate: String,
}

/// What a context's certificate says, for `context ls`.
fn certificate_summary(dir: &Path) -> String {
    let Ok(text) = read_small(&dir.join("cert.pem")) else {
        return String::new();
    };
    match shoal_transport::pki::OperatorCertificate::from_pem(&text) {
        Ok(c) => {
            let ms = c
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis();
            let expired = if c.not_after < SystemTime::now() {
                ", EXPIRED"
            } else {
                ""
            };
            format!(
                "{} ({}, until {}{expired})",
                c.name,
                c.access,
                format::rfc3339_utc(u64::try_from(ms).unwrap_or(u64::MAX))
            )
        }
        Err(e) => format!("unreadable: {e}"),
    }
}

/// Runs `shoal context …`.
pub(super) fn context(cli: &Cli, cmd: &ContextCmd, ui: &mut Ui<'_>) -> Result<(), String> {
    let store = Store::open()?;
    match cmd {
        ContextCmd::Create {
            host,
            tls_dir,
            description,
            name,
        } => {
            let meta = Meta {
                name: name.clone(),
                host: host.clone(),
                description: description.clone(),
            };
            store.create(&meta, tls_dir.as_deref())?;
            ui.print(name);
            Ok(())
        }
        ContextCmd::Ls { quiet, format } => {
            let current = store.current()?;
            let mut rows = vec![Row {
                name: DEFAULT_CONTEXT.into(),
                current: current == DEFAULT_CONTEXT,
                description: "The local agent (--data-dir's socket)".into(),
                host: format!("unix://{}", cli.data_dir().join(SOCKET_NAME).display()),
                certificate: String::new(),
            }];
            for m in store.list()? {
                rows.push(Row {
                    current: current == m.name,
                    certificate: certificate_summary(&store.context_dir(&m.name)),
                    name: m.name,
                    description: m.description,
                    host: m.host,
                });
            }
            let text = match format.as_deref() {
                _ if *quiet => rows.iter().map(|r| format!("{}\n", r.name)).collect(),
                None | Some("table") => {
                    let mut table: Vec<[Cow<'_, str>; 4]> = vec![[
                        "NAME".into(),
                        "DESCRIPTION".into(),
                        "ENDPOINT".into(),
                        "CERTIFICATE".into(),
                    ]];
                    for r in &rows {
                        let name = if r.current {
                            Cow::Owned(format!("{} *", r.name))
                        } else {
                            Cow::Borrowed(r.name.as_str())
                        };
                        table.push([
                            name,
                            format::clean(&r.description),
                            format::clean(&r.host),
                            Cow::Borrowed(r.certificate.as_str()),
                        ]);
                    }
                    format::render_table(&table)
                }
                Some(template) => crate::format::template::render_rows(template, &rows)?,
            };
            ui.print(&text);
            Ok(())
        }
        ContextCmd::Use { name } => {
            store.select(name)?;
            ui.print(name);
            if std::env::var_os("SHOAL_HOST").is_some() {
                ui.warn("SHOAL_HOST is set: it overrides the current context");
            }
            Ok(())
        }
        ContextCmd::Show => {
            ui.print(&store.current()?);
            Ok(())
        }
        ContextCmd::Rm { force, names } => {
            let mut failed = Vec::new();
            for name in names {
                match store.remove(name, *force) {
                    Ok(()) => ui.print(name),
                    Err(e) => failed.push(e),
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(failed.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hosts_are_checked() {
        for ok in ["prod", "a", "eu-west.1", "x+y_z"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            host_endpoint("unix:///run/s.sock", None),
            Ok(Endpoint::Unix(p)) if p == Path::new("/run/s.sock")
        ));
        assert!(host_endpoint("/run/s.sock", None).is_ok());
        assert!(host_endpoint("relative.sock", None).is_err());
        let e = host_endpoint("tcp://10.0.0.1:2376", None).unwrap_err();
        assert!(e.contains("--tls-dir"), "{e}");
        assert!(host_endpoint("http://x:1", None).is_err());
    }

    #[test]
    fn contexts_are_created_listed_selected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Missing parents are made too, as a fresh HOME has no ~/.shoal.
        let store = Store::at(dir.path().join("home/cfg"));
        assert_eq!(store.current().unwrap(), DEFAULT_CONTEXT);
        assert!(store.list().unwrap().is_empty());
        let local = Meta {
            name: "other".into(),
            host: "unix:///run/other.sock".into(),
            description: "another agent".into(),
        };
        store.create(&local, None).unwrap();
        assert!(store.create(&local, None).unwrap_err().contains("exists"));
        assert_eq!(store.list().unwrap(), vec![local.clone()]);
        // A tcp:// host needs the TLS files, and they must be readable and belong together.
        let remote = Meta {
            name: "prod".into(),
            host: "tcp://10.0.0.1:2376".into(),
            description: String::new(),
        };
        assert!(store.create(&remote, None).is_err());
        assert!(store.create(&remote, Some(dir.path())).is_err());
        assert_eq!(store.list().unwrap().len(), 1);

        store.select("other").unwrap();
        assert_eq!(store.current().unwrap(), "other");
        assert!(matches!(
            store.endpoint("other", Path::new("/d")),
            Ok(Endpoint::Unix(p)) if p == Path::new("/run/other.sock")
        ));
        assert!(matches!(
            store.endpoint(DEFAULT_CONTEXT, Path::new("/d")),
            Ok(Endpoint::Unix(p)) if p == Path::new("/d/shoal.sock")
        ));
        assert!(store.select("nope").is_err());
        let e = store.remove("other", false).unwrap_err();
        assert!(e.contains("in use"), "{e}");
        store.remove("other", true).unwrap();
        assert_eq!(store.current().unwrap(), DEFAULT_CONTEXT);
        assert!(store.list().unwrap().is_empty());
        assert!(store.remove(DEFAULT_CONTEXT, true).is_err());

        // The configuration directory is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("home/cfg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
