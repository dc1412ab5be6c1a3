//! The `shoal` command line: the clap definitions of every command, and the client side of the
//! commands that talk to a running agent (`swarm …`, `node …`, `info`).
//!
//! Those commands are requests on the agent's control socket ([`crate::client`], routes in
//! [`crate::api`]). Output follows the docker CLI: results on stdout, and every failure as one
//! line `Error: <message>` on stderr with exit status 1. User input is checked before anything
//! is sent, so a typo never reaches the cluster.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::json;
use shoal_cluster::{parse_label, validate_label, Availability, Role};

use crate::api::{NodeUpdateRequest, NodeView, Response};
use crate::client::{self, encode_segment};
use crate::format;

pub mod context;
pub mod secret;
pub mod service;
pub mod stack;

/// The name of the agent's control socket in its data directory.
pub const SOCKET_NAME: &str = "shoal.sock";

/// shoal: a Swarm-style cluster of nodes (Raft managers, SWIM membership, QUIC transport).
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true)]
pub struct Cli {
    /// The agent to talk to: unix:///path/to/shoal.sock, or tcp://HOST:PORT (an agent's
    /// --api-addr, with --tls-dir; several managers comma-separated, the first that answers is
    /// used) [default: the current context, else <DATA_DIR>/shoal.sock]
    #[arg(
        short = 'H',
        long = "host",
        env = "SHOAL_HOST",
        global = true,
        value_name = "URL"
    )]
    pub host: Option<String>,

    /// The context to use (`shoal context ls`) instead of the current one
    #[arg(long, env = "SHOAL_CONTEXT", global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// For a tcp:// --host: the directory with ca.pem, cert.pem and key.pem
    #[arg(long, env = "SHOAL_TLS_DIR", global = true, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// The agent's state directory (Raft log, certificates, control socket); given, the CLI
    /// talks to that agent rather than the current context [default: /var/lib/shoal]
    #[arg(long, env = "SHOAL_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where an agent keeps its state unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";

impl Cli {
    /// The data directory: `--data-dir` (or `SHOAL_DATA_DIR`), else [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (serves the control socket in the data directory)
    Agent(AgentArgs),
    /// Manage the swarm: init, join, join-token, leave
    Swarm {
        /// The swarm command.
        #[command(subcommand)]
        cmd: SwarmCmd,
    },
    /// Manage the nodes of the swarm: ls, inspect, promote, demote, rm, update
    Node {
        /// The node command.
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Manage services: create, ls, ps, inspect, rm, scale, update
    Service {
        /// The service command.
        #[command(subcommand)]
        cmd: service::ServiceCmd,
    },
    /// Manage stacks (applications from Compose files): deploy, ls, services, ps, rm, config
    Stack {
        /// The stack command.
        #[command(subcommand)]
        cmd: stack::StackCmd,
    },
    /// Manage secrets (kept encrypted by the managers; their data is never shown back)
    Secret {
        /// The secret command.
        #[command(subcommand)]
        cmd: secret::SecretCmd,
    },
    /// Manage configs (like secrets, but inspect shows their data)
    Config {
        /// The config command.
        #[command(subcommand)]
        cmd: secret::SecretCmd,
    },
    /// Manage contexts: the agents this CLI talks to (create, ls, use, show, rm)
    Context {
        /// The context command.
        #[command(subcommand)]
        cmd: context::ContextCmd,
    },
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Show what the agent knows about itself and its swarm
    Info {
        /// Output format: text (docker info's Swarm section) or json
        #[arg(long)]
        format: Option<String>,
    },
    /// Start a throw-away local cluster of agents and walk through the main commands
    Demo(DemoArgs),
}

/// The options of `shoal agent` (the data directory is the global `--data-dir`).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// UDP address for QUIC, e.g. 127.0.0.1:4242
    #[arg(long)]
    pub listen: SocketAddr,

    /// The address other nodes use to reach this one [default: the listen address]
    #[arg(long)]
    pub advertise: Option<SocketAddr>,

    /// The node's hostname [default: the machine's hostname]
    #[arg(long)]
    pub hostname: Option<String>,

    /// A label for this node, key=value or key (repeatable)
    #[arg(long = "label", value_name = "KEY[=VALUE]")]
    pub labels: Vec<String>,

    /// Membership timing profile (`local` is 5× faster, for tests and the demo)
    #[arg(long, default_value = "lan", value_parser = ["lan", "local"])]
    pub gossip: String,

    /// Also serve GET /metrics (Prometheus text format) on this TCP address, e.g. 0.0.0.0:9464
    /// [default: only on the control socket]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Also serve the control API on this TCP address with mutual TLS, for operators'
    /// certificates (`shoal swarm ca client-cert`), e.g. 0.0.0.0:2376 [default: only the socket]
    #[arg(long, value_name = "ADDR")]
    pub api_addr: Option<SocketAddr>,

    /// Serve the live cluster view (a web page) on this TCP address, e.g. 127.0.0.1:8080:
    /// plain HTTP on loopback, else only to operator certificates (as --api-addr)
    /// [default: none]
    #[arg(long, value_name = "ADDR")]
    pub web_addr: Option<SocketAddr>,

    /// The IP the routing mesh's ingress ports listen on [default: the advertised address's]
    #[arg(long, value_name = "IP")]
    pub ingress_addr: Option<std::net::IpAddr>,

    /// Answer DNS queries for services (`web`, `tasks.web`) on this UDP address, e.g.
    /// 127.0.0.1:5353 [default: no name server]
    #[arg(long, value_name = "ADDR")]
    pub dns_addr: Option<SocketAddr>,

    /// The Docker Engine for the container runtime: unix:///path, tcp://host:port, or `none`
    /// (only the process runtime) [default: DOCKER_HOST, else /var/run/docker.sock if present]
    #[arg(long, value_name = "ADDR")]
    pub docker_host: Option<String>,
}

/// The options of `shoal demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's temporary directory (data dirs and logs) for inspection
    #[arg(long)]
    pub keep: bool,
}

/// `shoal swarm …`.
#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Initialize a swarm with this node as its first manager
    Init {
        /// The address other nodes use to reach this one [default: the listen address]
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Restart this surviving manager as a one-manager swarm that keeps its state
        #[arg(long)]
        force_new_cluster: bool,
        /// Lock restarted managers until an operator gives the unlock key (shown once here)
        #[arg(long)]
        autolock: bool,
    },
    /// Join a swarm as a worker or manager (the token decides)
    Join {
        /// The join token (`shoal swarm join-token worker|manager` on a manager)
        #[arg(long)]
        token: String,
        /// A manager's address, ip:port
        remote_addr: String,
    },
    /// Show (or rotate) the token for joining as a worker or manager
    JoinToken {
        /// Only print the token
        #[arg(short)]
        quiet: bool,
        /// Replace the token (future joins need the new one)
        #[arg(long)]
        rotate: bool,
        /// worker or manager
        role: String,
    },
    /// Leave the swarm
    Leave {
        /// Leave even if this breaks quorum or removes the last manager
        #[arg(short, long)]
        force: bool,
    },
    /// Update the swarm's settings
    Update {
        /// Tasks kept per slot (the running one and its history)
        #[arg(long, value_name = "N")]
        task_history_limit: Option<u32>,
        /// Lock restarted managers until an operator gives the unlock key
        #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true")]
        autolock: Option<bool>,
    },
    /// Show (or rotate) the key that unlocks a restarted manager under autolock
    UnlockKey {
        /// Only print the key
        #[arg(short)]
        quiet: bool,
        /// Replace the key (managers reseal their data with the new one)
        #[arg(long)]
        rotate: bool,
    },
    /// Unlock this restarted manager (the key is read from standard input)
    Unlock,
    /// Manage the swarm's certificate authority: operators' client certificates
    Ca {
        /// The CA command.
        #[command(subcommand)]
        cmd: CaCmd,
    },
}

/// `shoal swarm ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Issue, list or remove operators' client certificates (for `shoal agent --api-addr`)
    #[command(name = "client-cert", args_conflicts_with_subcommands = true)]
    ClientCert {
        /// ls or rm; none: issue a certificate
        #[command(subcommand)]
        cmd: Option<ClientCertCmd>,
        /// Issue: the options.
        #[command(flatten)]
        issue: IssueArgs,
    },
}

/// `shoal swarm ca client-cert --name … --out …`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The operator's name (the certificate's CN)
    #[arg(long)]
    pub name: Option<String>,
    /// The directory to write ca.pem, cert.pem and key.pem to (created, mode 0700)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// admin (everything) or read-only (list and inspect)
    #[arg(long, default_value = "admin", value_parser = ["admin", "read-only"])]
    pub role: String,
    /// How long the certificate is valid: 30d, 12h, 90m, 3600s (at most 365d)
    #[arg(long, default_value = "30d")]
    pub expiry: String,
}

/// `shoal swarm ca client-cert ls|rm`.
#[derive(Debug, Subcommand)]
pub enum ClientCertCmd {
    /// List the client certificates in force
    #[command(visible_alias = "list")]
    Ls,
    /// Remove an operator's client certificates: refused from the next request on
    #[command(visible_alias = "remove")]
    Rm {
        /// The operators' names
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `30d`, `12h`, `90m`, `3600s` (or bare seconds) as seconds.
pub fn parse_expiry(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid expiry {text:?}: expected a number and d, h, m or s"))?;
    let unit = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("invalid expiry {text:?}: the unit is d, h, m or s")),
    };
    let secs = n
        .checked_mul(unit)
        .ok_or_else(|| format!("invalid expiry {text:?}: too long"))?;
    let (min, max) = (
        crate::remote::MIN_CLIENT_CERT_SECS,
        crate::remote::MAX_CLIENT_CERT_SECS,
    );
    if !(min..=max).contains(&secs) {
        return Err(format!(
            "invalid expiry {text:?}: between {min}s and {}d",
            max / 86_400
        ));
    }
    Ok(secs)
}

/// What `swarm init --autolock`, `swarm update --autolock=true` and `swarm unlock-key` say.
pub fn unlock_key_text(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock` command and \
         provide the following key:\n\n    {key}\n\nRemember to store this key in a password \
         manager: without it a restarted manager cannot read its data."
    )
}

/// `shoal node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the tasks running on one or more nodes (default: this node)
    Ps {
        /// Do not truncate ids and errors
        #[arg(long)]
        no_trunc: bool,
        /// Only print task ids
        #[arg(short, long)]
        quiet: bool,
        /// Filter: desired-state=running|shutdown|accepted, name=…, id=… (repeatable)
        #[arg(short, long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Node ids, id prefixes or hostnames (`self`: the node answering)
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// List the nodes of the swarm
    #[command(visible_alias = "list")]
    Ls {
        /// Only print ids
        #[arg(short)]
        quiet: bool,
        /// Output format: table, json (one object per line), or a template such as
        /// '{{.ID}} {{.Hostname}}' (fields ID, Hostname, Status, Availability, ManagerStatus,
        /// EngineVersion, Self; `table …` adds a header)
        #[arg(long)]
        format: Option<String>,
        /// Filter: role=manager|worker, name=…, id=…, label=KEY[=VALUE] (repeatable)
        #[arg(short, long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Answer from this manager's state without a linearizable read
        #[arg(long)]
        stale: bool,
    },
    /// Show the details of one or more nodes (JSON, or --pretty)
    Inspect {
        /// Human-readable output
        #[arg(long)]
        pretty: bool,
        /// Answer from this manager's state without a linearizable read
        #[arg(long)]
        stale: bool,
        /// Node ids, id prefixes or hostnames (`self`: the node answering)
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Promote one or more workers to managers
    Promote {
        /// Node ids, id prefixes or hostnames
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Demote one or more managers to workers
    Demote {
        /// Node ids, id prefixes or hostnames
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm {
        /// Remove a node even if it is not down
        #[arg(short, long)]
        force: bool,
        /// Node ids, id prefixes or hostnames
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Update a node's availability, labels or role
    Update {
        /// active, pause or drain
        #[arg(long)]
        availability: Option<String>,
        /// Add or change a label, key=value or key (repeatable)
        #[arg(long = "label-add", value_name = "KEY[=VALUE]")]
        label_add: Vec<String>,
        /// Remove a label by key (repeatable)
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        /// worker or manager
        #[arg(long)]
        role: Option<String>,
        /// Node id, id prefix or hostname
        node: String,
    },
}

/// The agent to talk to: `-H` (a socket, or tcp:// with `--tls-dir`), else `--context`, else
/// `--data-dir`'s socket if given, else the current context, else `/var/lib/shoal/shoal.sock`.
pub fn endpoint(cli: &Cli) -> Result<client::Endpoint, String> {
    match (&cli.host, &cli.context) {
        (Some(_), Some(_)) => Err(
            "conflicting options: either --host (SHOAL_HOST) or --context (SHOAL_CONTEXT), not both"
                .into(),
        ),
        (Some(host), None) => context::host_endpoint(host, cli.tls_dir.as_deref()),
        (None, Some(name)) => context::Store::open()?.endpoint(name, &cli.data_dir()),
        // An agent named by its data directory is that agent, whatever the current context.
        (None, None) if cli.data_dir.is_some() => {
            Ok(client::Endpoint::Unix(cli.data_dir().join(SOCKET_NAME)))
        }
        (None, None) => {
            let Ok(store) = context::Store::open() else {
                // No home directory: only the local agent.
                return Ok(client::Endpoint::Unix(cli.data_dir().join(SOCKET_NAME)));
            };
            let current = store.current()?;
            store.endpoint(&current, &cli.data_dir())
        }
    }
}

/// Runs a `swarm`, `node` or `info` command against the agent, printing on stdout and stderr;
/// returns the exit status (0, 1 on any error, 2 if called for `agent` or `demo`).
pub fn run(cli: &Cli) -> i32 {
    let stdout = io::stdout();
    let stderr = io::stderr();
    run_with(cli, &mut stdout.lock(), &mut stderr.lock())
}

/// [`run`] with the output streams given.
pub fn run_with(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let mut ui = Ui {
        out,
        err,
        failed: false,
        out_broken: false,
    };
    let name = match &cli.command {
        Command::Agent(_) => Some("agent"),
        Command::Demo(_) => Some("demo"),
        _ => None,
    };
    if let Some(name) = name {
        ui.error(&format!(
            "internal error: `shoal {name}` does not talk to an agent"
        ));
        return 2;
    }
    // Commands that need no agent.
    match &cli.command {
        Command::Context { cmd } => {
            if let Err(e) = context::context(cli, cmd, &mut ui) {
                ui.error(&e);
            }
            return i32::from(ui.failed);
        }
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "shoal", &mut script);
            ui.print(&String::from_utf8_lossy(&script));
            return i32::from(ui.failed);
        }
        _ => {}
    }
    let result = endpoint(cli).and_then(|endpoint| {
        let agent = Agent { endpoint };
        match &cli.command {
            Command::Swarm { cmd } => swarm(&agent, cmd, &mut ui),
            Command::Node { cmd } => node(&agent, cmd, &mut ui),
            Command::Service { cmd } => service::service(&agent, cmd, &mut ui),
            Command::Stack { cmd } => stack::stack(&agent, cmd, &mut ui),
            Command::Secret { cmd } => {
                secret::secret(&agent, shoal_cluster::SecretKind::Secret, cmd, &mut ui)
            }
            Command::Config { cmd } => {
                secret::secret(&agent, shoal_cluster::SecretKind::Config, cmd, &mut ui)
            }
            Command::Info { format } => info(&agent, format.as_deref(), &mut ui),
            Command::Agent(_)
            | Command::Demo(_)
            | Command::Context { .. }
            | Command::Completion { .. } => Ok(()),
        }
    });
    if let Err(e) = result {
        ui.error(&e);
    }
    i32::from(ui.failed)
}

/// Where output goes, and whether anything failed.
struct Ui<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    failed: bool,
    out_broken: bool,
}

impl Ui<'_> {
    /// Prints `text` on stdout, ending it with a newline if it lacks one (nothing if empty).
    fn print(&mut self, text: &str) {
        if text.is_empty() || self.out_broken {
            return;
        }
        let mut result = self.out.write_all(text.as_bytes());
        if result.is_ok() && !text.ends_with('\n') {
            result = self.out.write_all(b"\n");
        }
        if let Err(e) = result.and_then(|()| self.out.flush()) {
            self.out_broken = true;
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.failed = true;
            } else {
                self.error(&format!("cannot write the output: {e}"));
            }
        }
    }

    /// Prints a warning line on stderr (the run does not fail).
    fn warn(&mut self, message: &str) {
        let _ = writeln!(self.err, "{}", one_line(message));
        let _ = self.err.flush();
    }

    /// Prints `Error: <message>` (on one line) on stderr and marks the run failed.
    fn error(&mut self, message: &str) {
        self.failed = true;
        let _ = writeln!(self.err, "Error: {}", one_line(message));
        let _ = self.err.flush();
    }
}

/// A message on one line: control characters (newlines included) become spaces.
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .split(char::is_control)
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    if parts.is_empty() {
        "unknown error".into()
    } else {
        parts.join(" ")
    }
}

/// Text from the agent made safe for a terminal (lines and tabs kept).
fn clean_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// The agent the CLI talks to.
struct Agent {
    endpoint: client::Endpoint,
}

impl Agent {
    /// One request; an error answer becomes `Err(its message)`.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, String> {
        match client::call(&self.endpoint, method, path, body) {
            Ok(Response::Error { message }) if message.trim().is_empty() => {
                Err("the agent refused the request without giving a reason".into())
            }
            Ok(Response::Error { message }) => Err(message),
            Ok(response) => Ok(response),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One request expecting a confirmation; returns its message.
    fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, String> {
        match self.call(method, path, body)? {
            Response::Ok { message } => Ok(clean_text(&message)),
            other => Err(unexpected("a confirmation", &other)),
        }
    }

    /// The id of the node answering (for `self`).
    fn self_id(&self) -> Result<String, String> {
        match self.call("GET", "/v1/info", None)? {
            Response::Info(info) if info.node_id.is_empty() => {
                Err("this node is not part of a swarm".into())
            }
            Response::Info(info) => Ok(info.node_id),
            other => Err(unexpected("the agent's info", &other)),
        }
    }
}

/// The error for an answer of the wrong kind.
fn unexpected(wanted: &str, got: &Response) -> String {
    let kind = match got {
        Response::Ok { .. } => "a confirmation",
        Response::Nodes { .. } => "a node list",
        Response::Node { .. } => "a node",
        Response::Token { .. } => "a join token",
        Response::Info(_) => "the agent's info",
        Response::Assignments(_) => "task assignments",
        Response::Services { .. } => "a service list",
        Response::Service { .. } => "a service",
        Response::Tasks { .. } => "a task list",
        Response::Logs { .. } => "task output",
        Response::Error { .. } => "an error",
        Response::Secrets { .. } => "a secret or config list",
        Response::UnlockKey { .. } => "an unlock key",
        Response::ClientCert { .. } => "a client certificate",
        Response::ClientCerts { .. } => "a client certificate list",
    };
    format!("unexpected answer from the agent: expected {wanted}, got {kind}")
}

/// `path?name=true` when `on`.
fn with_flag(path: String, name: &str, on: bool) -> String {
    if on {
        format!("{path}?{name}=true")
    } else {
        path
    }
}

/// `/v1/nodes/{node}` plus `suffix`, the node encoded.
fn node_path(node: &str, suffix: &str) -> String {
    format!("/v1/nodes/{}{suffix}", encode_segment(node))
}

/// A NODE argument must name something.
fn check_node(node: &str) -> Result<(), String> {
    if node.trim().is_empty() {
        Err(format!(
            "invalid node {node:?}: expected an id, id prefix or hostname"
        ))
    } else {
        Ok(())
    }
}

/// Runs `f` for each NODE argument, printing its output or its error; like docker, one failure
/// does not stop the others (the exit status says that something failed).
fn each_node(ui: &mut Ui<'_>, nodes: &[String], f: impl Fn(&str) -> Result<String, String>) {
    for node in nodes {
        match check_node(node).and_then(|()| f(node)) {
            Ok(text) => ui.print(&text),
            Err(e) => ui.error(&e),
        }
    }
}

fn swarm(agent: &Agent, cmd: &SwarmCmd, ui: &mut Ui<'_>) -> Result<(), String> {
    match cmd {
        SwarmCmd::Init {
            advertise_addr,
            force_new_cluster,
            autolock,
        } => {
            let body = json!({
                "advertise_addr": advertise_addr,
                "force_new_cluster": force_new_cluster,
                "autolock": autolock,
            });
            let message = agent.ok("POST", "/v1/swarm/init", Some(&body))?;
            ui.print(&message);
        }
        SwarmCmd::Join { token, remote_addr } => {
            if token.trim().is_empty() {
                return Err("--token must not be empty".into());
            }
            if remote_addr.trim().is_empty() {
                return Err("the manager address must not be empty".into());
            }
            let body = json!({ "token": token, "remote_addr": remote_addr });
            let message = agent.ok("POST", "/v1/swarm/join", Some(&body))?;
            ui.print(&message);
        }
        SwarmCmd::JoinToken {
            quiet,
            rotate,
            role,
        } => {
            let role: Role = role
                .parse()
                .map_err(|e: shoal_cluster::ClusterError| e.to_string())?;
            let path = with_flag(format!("/v1/swarm/join-token/{role}"), "rotate", *rotate);
            let (token, addr) = match agent.call("GET", &path, None)? {
                Response::Token {
                    token,
                    manager_addr,
                    ..
                } => (one_line(&token), one_line(&manager_addr)),
                other => return Err(unexpected("a join token", &other)),
            };
            if *quiet {
                ui.print(&token);
            } else {
                if *rotate {
                    ui.print(&format!("Successfully rotated {role} join token.\n\n"));
                }
                ui.print(&format!(
                    "To add a {role} to this swarm, run the following command:\n\n    \
                     shoal swarm join --token {token} {addr}\n"
                ));
            }
        }
        SwarmCmd::Update {
            task_history_limit,
            autolock,
        } => {
            if task_history_limit.is_none() && autolock.is_none() {
                return Err("nothing to update: give --task-history-limit or --autolock".into());
            }
            let body = json!({ "task_history_limit": task_history_limit, "autolock": autolock });
            match agent.call("POST", "/v1/swarm/update", Some(&body))? {
                Response::Ok { message } => {
                    let m = clean_text(&message);
                    ui.print(if m.is_empty() { "Swarm updated." } else { &m });
                }
                Response::UnlockKey { key, .. } => {
                    ui.print(&format!(
                        "Swarm updated.\n{}",
                        unlock_key_text(&one_line(&key))
                    ));
                }
                other => return Err(unexpected("a confirmation", &other)),
            }
        }
        SwarmCmd::UnlockKey { quiet, rotate } => {
            let path = with_flag("/v1/swarm/unlock-key".into(), "rotate", *rotate);
            let key = match agent.call("GET", &path, None)? {
                Response::UnlockKey { key, .. } => one_line(&key),
                other => return Err(unexpected("an unlock key", &other)),
            };
            if *quiet {
                ui.print(&key);
            } else {
                if *rotate {
                    ui.print("Successfully rotated manager unlock key.\n");
                }
                ui.print(&unlock_key_text(&key));
            }
        }
        SwarmCmd::Unlock => {
            let stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin) {
                eprint!("Enter unlock key: ");
            }
            let mut key = String::new();
            std::io::BufRead::read_line(&mut stdin.lock(), &mut key)
                .map_err(|e| format!("cannot read the unlock key: {e}"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err("no unlock key given (on standard input)".into());
            }
            agent.ok("POST", "/v1/swarm/unlock", Some(&json!({ "key": key })))?;
        }
        SwarmCmd::Leave { force } => {
            let path = with_flag("/v1/swarm/leave".into(), "force", *force);
            let message = agent.ok("POST", &path, None)?;
            ui.print(&message);
        }
        SwarmCmd::Ca {
            cmd: CaCmd::ClientCert { cmd, issue },
        } => client_cert(agent, cmd.as_ref(), issue, ui)?,
    }
    Ok(())
}

/// `swarm ca client-cert [ls|rm]`.
fn client_cert(
    agent: &Agent,
    cmd: Option<&ClientCertCmd>,
    issue: &IssueArgs,
    ui: &mut Ui<'_>,
) -> Result<(), String> {
    match cmd {
        Some(ClientCertCmd::Ls) => {
            let certs = match agent.call("GET", "/v1/swarm/ca/client-certs", None)? {
                Response::ClientCerts { certs } => certs,
                other => return Err(unexpected("a client certificate list", &other)),
            };
            ui.print(&format::client_cert_table(&certs));
        }
        Some(ClientCertCmd::Rm { names }) => {
            let mut failed = Vec::new();
            for name in names {
                let path = format!("/v1/swarm/ca/client-certs/{}", encode_segment(name));
                match agent.ok("DELETE", &path, None) {
                    Ok(_) => ui.print(name),
                    Err(e) => failed.push(e),
                }
            }
            if !failed.is_empty() {
                return Err(failed.join("; "));
            }
        }
        None => {
            let name = issue
                .name
                .as_deref()
                .ok_or("--name is required (the operator's name)")?;
            let out = issue
                .out
                .as_deref()
                .ok_or("--out is required (the directory for the certificate and key)")?;
            shoal_cluster::validate_operator_name(name).map_err(|e| e.to_string())?;
            let expiry_secs = parse_expiry(&issue.expiry)?;
            let key_path = out.join("key.pem");
            if key_path.exists() {
                return Err(format!(
                    "{} exists: give another --out directory",
                    key_path.display()
                ));
            }
            // The key is made here and never sent: the manager signs a request for it.
            let key = shoal_transport::pki::NodeKey::generate().map_err(|e| e.to_string())?;
            let csr = key.operator_csr_der(name).map_err(|e| e.to_string())?;
            let body = json!({
                "name": name,
                "read_only": issue.role == "read-only",
                "csr": crate::keys::hex(&csr),
                "expiry_secs": expiry_secs,
            });
            let (cert_pem, ca_pem, operator) =
                match agent.call("POST", "/v1/swarm/ca/client-certs", Some(&body))? {
                    Response::ClientCert {
                        cert_pem,
                        ca_pem,
                        operator,
                    } => (cert_pem, ca_pem, operator),
                    other => return Err(unexpected("a client certificate", &other)),
                };
            context::create_private_dir(out)?;
            context::write_file(&key_path, key.to_pem().as_bytes(), 0o600)?;
            context::write_file(&out.join("cert.pem"), cert_pem.as_bytes(), 0o644)?;
            context::write_file(&out.join("ca.pem"), ca_pem.as_bytes(), 0o644)?;
            ui.print(&format!(
                "Client certificate for {} ({}, serial {}, valid until {}) written to {}: ca.pem, cert.pem, key.pem.\n\
                 To use it: shoal context create NAME --host tcp://MANAGER:PORT --tls-dir {}",
                operator.name,
                if operator.read_only { "read-only" } else { "admin" },
                operator.serial,
                format::rfc3339_utc(operator.not_after_ms),
                out.display(),
                out.display(),
            ));
        }
    }
    Ok(())
}

fn node(agent: &Agent, cmd: &NodeCmd, ui: &mut Ui<'_>) -> Result<(), String> {
    match cmd {
        NodeCmd::Ps {
            no_trunc,
            quiet,
            filters,
            nodes,
        } => service::node_ps(agent, nodes, *no_trunc, *quiet, filters, ui)?,
        NodeCmd::Ls {
            quiet,
            format,
            filters,
            stale,
        } => {
            let json = format.as_deref() == Some("json");
            service::check_format(format.as_deref())?;
            let template = service::custom(format.as_deref()).filter(|_| !json);
            // Check the filters before asking anything.
            format::filter_nodes(Vec::new(), filters)?;
            let path = with_flag("/v1/nodes".into(), "stale", *stale);
            let (self_id, nodes) = match agent.call("GET", &path, None)? {
                Response::Nodes { self_id, nodes } => (self_id, nodes),
                other => return Err(unexpected("a node list", &other)),
            };
            let nodes = format::filter_nodes(nodes, filters)?;
            let text = if json {
                format::nodes_json(&self_id, &nodes)
            } else if *quiet {
                format::node_ids(&nodes)
            } else if let Some(t) = template {
                format::nodes_template(t, &self_id, &nodes)?
            } else {
                format::node_table(&self_id, &nodes)
            };
            ui.print(&text);
        }
        NodeCmd::Inspect {
            pretty,
            stale,
            nodes,
        } => {
            let mut found: Vec<NodeView> = Vec::new();
            let mut answered_by = String::new();
            let mut me: Option<String> = None;
            for name in nodes {
                let result = check_node(name).and_then(|()| {
                    let target = if name == "self" {
                        match &me {
                            Some(id) => id.clone(),
                            None => {
                                let id = agent.self_id()?;
                                me = Some(id.clone());
                                id
                            }
                        }
                    } else {
                        name.clone()
                    };
                    let path = with_flag(node_path(&target, ""), "stale", *stale);
                    match agent.call("GET", &path, None)? {
                        Response::Node { self_id, node } => Ok((self_id, *node)),
                        other => Err(unexpected("a node", &other)),
                    }
                });
                match result {
                    Ok((self_id, node)) => {
                        answered_by = self_id;
                        found.push(node);
                    }
                    Err(e) => ui.error(&e),
                }
            }
            if *pretty {
                let views: Vec<String> = found
                    .iter()
                    .map(|n| format::inspect_pretty(&answered_by, n))
                    .collect();
                ui.print(&views.join("\n"));
            } else {
                ui.print(&format::inspect_json(&found));
            }
        }
        NodeCmd::Promote { nodes } => each_node(ui, nodes, |n| {
            agent.ok("POST", &node_path(n, "/promote"), None)
        }),
        NodeCmd::Demote { nodes } => each_node(ui, nodes, |n| {
            agent.ok("POST", &node_path(n, "/demote"), None)
        }),
        NodeCmd::Rm { force, nodes } => each_node(ui, nodes, |n| {
            let path = with_flag(node_path(n, ""), "force", *force);
            let message = agent.ok("DELETE", &path, None)?;
            Ok(if message.is_empty() {
                n.to_string()
            } else {
                message
            })
        }),
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            role,
            node,
        } => {
            let update = update_request(availability, label_add, label_rm, role)?;
            check_node(node)?;
            let body = serde_json::to_value(&update)
                .map_err(|e| format!("cannot encode the update: {e}"))?;
            agent.ok("POST", &node_path(node, "/update"), Some(&body))?;
            ui.print(node);
        }
    }
    Ok(())
}

/// Checks the options of `node update`.
fn update_request(
    availability: &Option<String>,
    label_add: &[String],
    label_rm: &[String],
    role: &Option<String>,
) -> Result<NodeUpdateRequest, String> {
    let availability = match availability {
        Some(a) => Some(a.parse::<Availability>().map_err(|e| e.to_string())?),
        None => None,
    };
    let role = match role {
        Some(r) => Some(r.parse::<Role>().map_err(|e| e.to_string())?),
        None => None,
    };
    for spec in label_add {
        parse_label(spec).map_err(|e| e.to_string())?;
    }
    for key in label_rm {
        validate_label(key, "").map_err(|e| e.to_string())?;
    }
    Ok(NodeUpdateRequest {
        availability,
        label_add: label_add.to_vec(),
        label_rm: label_rm.to_vec(),
        role,
        version: None,
    })
}

fn info(agent: &Agent, format: Option<&str>, ui: &mut Ui<'_>) -> Result<(), String> {
    let json = match format {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(format!(
                "unsupported format {other:?}: expected text or json"
            ))
        }
    };
    match agent.call("GET", "/v1/info", None)? {
        Response::Info(view) if json => {
            let text = serde_json::to_string_pretty(&view)
                .map_err(|e| format!("cannot show the info: {e}"))?;
            ui.print(&text);
            Ok(())
        }
        Response::Info(view) => {
            ui.print(format::info_text(&view).trim_end());
            Ok(())
        }
        other => Err(unexpected("the agent's info", &other)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;
    use serde_json::Value;

    use super::*;
    use crate::api::InfoView;
    use crate::client::testing::serve;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn rollout_and_health_options_are_checked_before_anything_is_sent() {
        let (code, _, err, seen) = run_against(
            &["service", "update", "--rollback", "--args", "x", "web"],
            vec![],
        );
        assert_ne!(code, 0);
        assert!(err.contains("--rollback cannot be combined"), "{err}");
        assert!(seen.is_empty(), "{seen:?}");
        let cases: [(&[&str], &str); 8] = [
            (
                &["--update-failure-action", "explode"],
                "--update-failure-action",
            ),
            (
                &["--rollback-failure-action", "rollback"],
                "--rollback-failure-action",
            ),
            (
                &["--update-max-failure-ratio", "1.5"],
                "--update-max-failure-ratio",
            ),
            (&["--update-order", "sideways"], "--update-order"),
            (
                &["--health-cmd", "true", "--health-tcp", "80"],
                "give one of",
            ),
            (
                &["--no-healthcheck", "--health-interval", "1s"],
                "--no-healthcheck",
            ),
            (&["--health-http", "ftp://x/"], "--health-http"),
            (
                &["--health-cmd", "true", "--health-retries", "0"],
                "--health-retries",
            ),
        ];
        for (opts, want) in cases {
            let mut full = vec!["service", "create", "--name", "x"];
            full.extend_from_slice(opts);
            full.push("img");
            let (code, _, err, seen) = run_against(&full, vec![]);
            assert_ne!(code, 0, "{full:?}");
            assert!(err.contains(want), "{full:?}: {err}");
            assert!(seen.is_empty(), "{full:?}: {seen:?}");
        }
    }

    /// Runs a command line against a fake agent answering `answers`; returns the exit status,
    /// stdout, stderr and the requests as `METHOD path body`.
    fn run_against(
        args: &[&str],
        answers: Vec<(u16, Value)>,
    ) -> (i32, String, String, Vec<String>) {
        let agent = serve(answers);
        let host = format!("unix://{}", agent.socket.display());
        let mut full = vec!["shoal", "-H", &host];
        full.extend_from_slice(args);
        let cli = parse(&full);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&cli, &mut out, &mut err);
        let seen = agent
            .seen()
            .into_iter()
            .map(|s| {
                format!(
                    "{} {} {}",
                    s.method,
                    s.path,
                    String::from_utf8_lossy(&s.body)
                )
                .trim_end()
                .to_string()
            })
            .collect();
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            seen,
        )
    }

    fn ok(message: &str) -> (u16, Value) {
        (200, json!({"result": "ok", "message": message}))
    }

    fn refused(status: u16, message: &str) -> (u16, Value) {
        (status, json!({"result": "error", "message": message}))
    }

    fn view(id: &str, hostname: &str, role: &str, manager_status: &str) -> NodeView {
        NodeView {
            id: id.into(),
            hostname: hostname.into(),
            status: "Ready".into(),
            status_message: String::new(),
            availability: "Active".into(),
            manager_status: manager_status.into(),
            engine_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            runtime_problems: Vec::new(),
            role: role.into(),
            desired_role: role.into(),
            addr: "127.0.0.1:4242".into(),
            labels: BTreeMap::new(),
            os: "linux".into(),
            arch: "amd64".into(),
            nano_cpus: 2_000_000_000,
            memory_bytes: 1 << 30,
            created_at_ms: 0,
            updated_at_ms: 0,
            version: 1,
            runtimes: vec!["process".into()],
            limits_enforced: false,
        }
    }

    #[test]
    fn clap_definitions_are_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_forms() {
        let cli = |host: Option<&str>| Cli {
            host: host.map(str::to_string),
            context: None,
            tls_dir: None,
            data_dir: Some(PathBuf::from("/srv/shoal")),
            command: Command::Info { format: None },
        };
        let unix = |c: &Cli| match endpoint(c) {
            Ok(client::Endpoint::Unix(p)) => Ok(p),
            Ok(other) => Err(format!("not a socket: {other}")),
            Err(e) => Err(e),
        };
        assert_eq!(
            unix(&cli(Some("unix:///run/a.sock"))).unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            unix(&cli(Some("/run/b.sock"))).unwrap(),
            PathBuf::from("/run/b.sock")
        );
        for bad in ["unix://relative.sock", "unix://", "x.sock", ""] {
            assert_eq!(
                unix(&cli(Some(bad))).unwrap_err(),
                format!("unsupported host {bad:?}: expected unix:///path or tcp://host:port"),
            );
        }
        assert!(unix(&cli(Some("tcp://127.0.0.1:2375")))
            .unwrap_err()
            .contains("--tls-dir"));
        let mut both = cli(Some("/run/a.sock"));
        both.context = Some("prod".into());
        assert!(endpoint(&both).unwrap_err().contains("conflicting options"));
        let parsed = parse(&["shoal", "node", "ls", "-H", "unix:///tmp/x.sock"]);
        assert_eq!(parsed.host.as_deref(), Some("unix:///tmp/x.sock"));
        let parsed = parse(&["shoal", "--data-dir", "/d", "info"]);
        assert_eq!(parsed.data_dir(), PathBuf::from("/d"));
    }

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expiry("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_expiry("12h").unwrap(), 12 * 3_600);
        assert_eq!(parse_expiry("90m").unwrap(), 5_400);
        assert_eq!(parse_expiry("3600").unwrap(), 3_600);
        for bad in [
            "",
            "d",
            "10x",
            "59s",
            "366d",
            "99999999999999999999d",
            "-1d",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argument_parsing() {
        let cli = parse(&[
            "shoal",
            "node",
            "update",
            "--label-add",
            "a=b",
            "--availability",
            "drain",
            "n1",
        ]);
        match cli.command {
            Command::Node {
                cmd:
                    NodeCmd::Update {
                        availability,
                        label_add,
                        label_rm,
                        role,
                        node,
                    },
            } => {
                assert_eq!(availability.as_deref(), Some("drain"));
                assert_eq!(label_add, ["a=b"]);
                assert!(label_rm.is_empty() && role.is_none());
                assert_eq!(node, "n1");
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "shoal",
            "node",
            "list",
            "-q",
            "-f",
            "role=manager",
            "--filter",
            "name=x",
        ]);
        assert!(matches!(
            cli.command,
            Command::Node { cmd: NodeCmd::Ls { quiet: true, ref filters, stale: false, .. } }
                if filters == &["role=manager", "name=x"]
        ));
        let cli = parse(&["shoal", "node", "remove", "-f", "a", "b"]);
        assert!(matches!(
            cli.command,
            Command::Node { cmd: NodeCmd::Rm { force: true, ref nodes } } if nodes == &["a", "b"]
        ));
        let cli = parse(&["shoal", "swarm", "join-token", "-q", "--rotate", "manager"]);
        assert!(matches!(
            cli.command,
            Command::Swarm { cmd: SwarmCmd::JoinToken { quiet: true, rotate: true, ref role } }
                if role == "manager"
        ));
        let cli = parse(&["shoal", "swarm", "join", "--token", "T", "10.0.0.1:4242"]);
        assert!(matches!(
            cli.command,
            Command::Swarm { cmd: SwarmCmd::Join { ref token, ref remote_addr } }
                if token == "T" && remote_addr == "10.0.0.1:4242"
        ));
        let cli = parse(&[
            "shoal",
            "swarm",
            "init",
            "--advertise-addr",
            "10.0.0.1",
            "--force-new-cluster",
        ]);
        assert!(matches!(
            cli.command,
            Command::Swarm { cmd: SwarmCmd::Init { ref advertise_addr, force_new_cluster: true, autolock: false } }
                if advertise_addr.as_deref() == Some("10.0.0.1")
        ));
        // Autolock as Docker spells it.
        for (args, want) in [
            (&["--autolock"][..], Some(true)),
            (&["--autolock=false"][..], Some(false)),
            (&["--autolock", "true"][..], Some(true)),
            (&[][..], None),
        ] {
            let mut all = vec!["shoal", "swarm", "update", "--task-history-limit", "3"];
            all.extend(args);
            let cli = parse(&all);
            assert!(
                matches!(
                    cli.command,
                    Command::Swarm { cmd: SwarmCmd::Update { autolock, .. } } if autolock == want
                ),
                "{args:?}"
            );
        }
        let cli = parse(&["shoal", "swarm", "unlock-key", "-q", "--rotate"]);
        assert!(matches!(
            cli.command,
            Command::Swarm {
                cmd: SwarmCmd::UnlockKey {
                    quiet: true,
                    rotate: true
                }
            }
        ));
        let cli = parse(&[
            "shoal",
            "--data-dir",
            "/d",
            "agent",
            "--listen",
            "127.0.0.1:4242",
            "--label",
            "a=b",
            "--label",
            "ssd",
            "--gossip",
            "local",
        ]);
        match cli.command {
            Command::Agent(a) => {
                assert_eq!(a.listen, "127.0.0.1:4242".parse::<SocketAddr>().unwrap());
                assert_eq!(a.labels, ["a=b", "ssd"]);
                assert_eq!(a.gossip, "local");
                assert!(a.advertise.is_none() && a.hostname.is_none());
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["shoal", "agent", "--listen", "[::1]:1"]);
        assert!(matches!(cli.command, Command::Agent(ref a) if a.gossip == "lan"));
        assert!(matches!(
            parse(&["shoal", "demo", "--keep"]).command,
            Command::Demo(DemoArgs { keep: true })
        ));

        for bad in [
            &[
                "shoal",
                "agent",
                "--listen",
                "127.0.0.1:4242",
                "--gossip",
                "fast",
            ][..],
            &["shoal", "agent", "--listen", "localhost"],
            &["shoal", "node", "promote"],
            &["shoal", "node", "inspect"],
            &["shoal", "node", "update", "--availability", "drain"],
            &["shoal", "swarm", "join", "10.0.0.1:4242"],
            &["shoal", "swarm", "join-token"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    /// Input errors are found before connecting (the socket does not exist).
    #[test]
    fn bad_service_input_is_refused_before_calling() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["service", "create", "--limit-memory", "lots", "sleep"],
                "--limit-memory: invalid memory size \"lots\": expected e.g. 64M, 1.5G",
            ),
            (
                &["service", "create", "--limit-cpu=-1", "sleep"],
                "--limit-cpu: invalid CPU count \"-1\": expected a number such as 0.5 or 2",
            ),
            (
                &["service", "create", "--restart-delay", "soon", "sleep"],
                "--restart-delay: invalid duration \"soon\": expected e.g. 500ms, 5s, 1m30s",
            ),
            (
                &[
                    "service",
                    "create",
                    "--restart-condition",
                    "always",
                    "sleep",
                ],
                "invalid restart condition \"always\": expected none, on-failure or any",
            ),
            (
                &["service", "create", "-e", "NOVALUE", "sleep"],
                "invalid environment entry \"NOVALUE\": expected KEY=VALUE",
            ),
            (
                &[
                    "service",
                    "create",
                    "--mode",
                    "global",
                    "--replicas",
                    "2",
                    "sleep",
                ],
                "--replicas can only be used with replicated mode",
            ),
            (
                &[
                    "service",
                    "create",
                    "--constraint",
                    "node.color=red",
                    "sleep",
                ],
                "invalid constraint `node.color=red`: expected `key==value` or `key!=value`",
            ),
            (
                &[
                    "service",
                    "create",
                    "--reserve-memory",
                    "1G",
                    "--limit-memory",
                    "512M",
                    "x",
                ],
                "a reservation cannot exceed its limit (--reserve-* > --limit-*)",
            ),
            (
                &["service", "create", "-p", "published=8080", "nginx"],
                "--publish \"published=8080\": a target port is required",
            ),
            (
                &["service", "create", "-p", "8080:http", "nginx"],
                "--publish \"8080:http\": invalid target port \"http\"",
            ),
            (
                &["service", "create", "--mount", "type=tmpfs,target=/t", "nginx"],
                "--mount \"type=tmpfs,target=/t\": type \"tmpfs\" is not supported (bind or volume)",
            ),
            (
                &["service", "create", "--mount", "type=bind,target=/t", "nginx"],
                "--mount \"type=bind,target=/t\": a bind mount needs a source",
            ),
            (
                &[
                    "service",
                    "create",
                    "--runtime",
                    "process",
                    "--read-only",
                    "sleep",
                ],
                "--read-only needs the container runtime (--runtime container)",
            ),
            (
                &["service", "scale", "web"],
                "invalid scale specifier \"web\": expected SERVICE=REPLICAS",
            ),
            (
                &["service", "scale", "web=many"],
                "invalid replicas value for service \"web\": \"many\" is not a number",
            ),
            (
                &["service", "logs", "--tail", "x", "web"],
                "invalid --tail \"x\": expected a number or \"all\"",
            ),
            (
                &["swarm", "update"],
                "nothing to update: give --task-history-limit or --autolock",
            ),
        ];
        for (args, message) in cases {
            let mut full = vec!["shoal", "-H", "unix:///nonexistent/shoal.sock"];
            full.extend_from_slice(args);
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run_with(&parse(&full), &mut out, &mut err);
            assert_eq!(code, 1, "{args:?}");
            assert!(out.is_empty());
            assert_eq!(
                String::from_utf8(err).unwrap(),
                format!("Error: {message}\n"),
                "{args:?}"
            );
        }
    }

    #[test]
    fn service_create_sends_the_whole_spec() {
        let (code, out, err, seen) = run_against(
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--replicas",
                "3",
                "-e",
                "A=1",
                "--limit-memory",
                "64M",
                "--limit-pids",
                "100",
                "--reserve-cpu",
                "0.5",
                "--restart-condition",
                "on-failure",
                "--restart-delay",
                "1s",
                "--constraint",
                "node.role==worker",
                "--stop-grace-period",
                "2s",
                "sh",
                "-c",
                "echo hi",
            ],
            vec![(
                200,
                serde_json::json!({"result": "ok", "message": "00000000000000aa"}),
            )],
        );
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "00000000000000aa\n", "")
        );
        assert_eq!(seen.len(), 1);
        let (head, body) = seen[0].split_once(' ').unwrap().1.split_once(' ').unwrap();
        assert_eq!(head, "/v1/services/create");
        let v: Value = serde_json::from_str(body).unwrap();
        let spec = &v["spec"];
        assert_eq!(spec["name"], "web");
        assert_eq!(spec["mode"]["Replicated"]["replicas"], 3);
        let t = &spec["task"];
        assert_eq!(t["image"], "sh");
        assert_eq!(t["args"], serde_json::json!(["-c", "echo hi"]));
        assert_eq!(t["env"], serde_json::json!(["A=1"]));
        assert_eq!(t["resources"]["limits"]["memory_bytes"], 64 << 20);
        assert_eq!(t["resources"]["reservations"]["nano_cpus"], 500_000_000);
        assert_eq!(t["resources"]["pids_limit"], 100);
        assert_eq!(t["restart"]["condition"], "on-failure");
        assert_eq!(t["restart"]["delay_ms"], 1000);
        assert_eq!(t["placement"]["constraints"][0], "node.role==worker");
        assert_eq!(t["stop_grace_ms"], 2000);
    }

    #[test]
    fn service_create_sends_container_options() {
        let (code, _, err, seen) = run_against(
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--runtime",
                "container",
                "-p",
                "published=8080,target=80,mode=host",
                "-p",
                "published=5353,target=53,protocol=udp,mode=host",
                "--mount",
                "type=bind,source=/srv/www,target=/www,readonly",
                "--mount",
                "src=cache,dst=/cache",
                "--user",
                "1000:1000",
                "--read-only",
                "--entrypoint",
                "/bin/busybox httpd",
                "shoal-test/busybox:1",
                "-f",
            ],
            vec![(
                200,
                serde_json::json!({"result": "ok", "message": "00000000000000aa"}),
            )],
        );
        assert_eq!((code, err.as_str()), (0, ""));
        let body = seen[0].splitn(3, ' ').nth(2).unwrap();
        let t = &serde_json::from_str::<Value>(body).unwrap()["spec"]["task"];
        assert_eq!(t["runtime"], "container");
        assert_eq!(t["image"], "shoal-test/busybox:1");
        assert_eq!(t["args"], serde_json::json!(["-f"]));
        assert_eq!(
            t["entrypoint"],
            serde_json::json!(["/bin/busybox", "httpd"])
        );
        assert_eq!(t["user"], "1000:1000");
        assert_eq!(t["read_only"], true);
        assert_eq!(
            t["ports"],
            serde_json::json!([
                {"published": 8080, "target": 80, "udp": false, "mode": "host"},
                {"published": 5353, "target": 53, "udp": true, "mode": "host"},
            ])
        );
        assert_eq!(
            t["mounts"],
            serde_json::json!([
                {"kind": "bind", "source": "/srv/www", "target": "/www", "read_only": true},
                {"kind": "volume", "source": "cache", "target": "/cache", "read_only": false},
            ])
        );
    }

    #[test]
    fn service_ls_and_ps_print_docker_columns() {
        let spec = shoal_cluster::ServiceSpec::new("web", "sleep", 2);
        let view = serde_json::json!({
            "id": "0123456789abcdef", "version": 7, "created_at_ms": 1, "updated_at_ms": 2,
            "spec": spec, "previous": null, "running": 1, "desired": 2,
        });
        let (code, out, _, _) = run_against(
            &["service", "ls"],
            vec![(
                200,
                serde_json::json!({"result": "services", "services": [view]}),
            )],
        );
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "ID             NAME   MODE         REPLICAS   IMAGE   PORTS\n\
             0123456789ab   web    replicated   1/2        sleep\n"
        );
        let task = |id: &str, current: bool, desired: &str, state: &str, err: &str| {
            serde_json::json!({
                "id": id, "name": "web.1", "service_id": "0123456789abcdef",
                "service_name": "web", "slot": 1, "node_id": "00000000000000n1", "node": "node-1",
                "image": "sleep", "desired_state": desired, "state": state,
                "state_since_ms": 0, "message": "", "err": err, "exit_code": null, "pid": 0,
                "container_id": "", "created_at_ms": 0, "spec_version": 7, "current": current,
                "up_to_date": true,
            })
        };
        let tasks = vec![
            task("aaaaaaaaaaaaaaaa", true, "Running", "Running", ""),
            task(
                "bbbbbbbbbbbbbbbb",
                false,
                "Shutdown",
                "Failed",
                "task: non-zero exit (1)",
            ),
        ];
        let (code, out, _, seen) = run_against(
            &["service", "ps", "web"],
            vec![(200, serde_json::json!({"result": "tasks", "tasks": tasks}))],
        );
        assert_eq!(code, 0);
        assert_eq!(
            seen,
            vec![r#"POST /v1/tasks {"node":null,"services":["web"]}"#]
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID             NAME        IMAGE   NODE     DESIRED STATE"));
        assert!(lines[1]
            .starts_with("aaaaaaaaaaaa   web.1       sleep   node-1   Running         Running "));
        assert!(lines[2]
            .starts_with("bbbbbbbbbbbb    \\_ web.1   sleep   node-1   Shutdown        Failed "));
        assert!(
            lines[2].ends_with("\"task: non-zero exit (1)\""),
            "{}",
            lines[2]
        );

        // --format: docker's field names, templates and `table`.
        let (code, out, _, _) = run_against(
            &[
                "service",
                "ps",
                "web",
                "--format",
                "{{.ID}} {{.Name}} {{.DesiredState}}",
            ],
            vec![(200, serde_json::json!({"result": "tasks", "tasks": tasks}))],
        );
        assert_eq!(
            (code, out.as_str()),
            (
                0,
                "aaaaaaaaaaaa web.1 Running\nbbbbbbbbbbbb web.1 Shutdown\n"
            )
        );
        let (code, out, _, _) = run_against(
            &[
                "service",
                "ls",
                "--format",
                "table {{.Name}}\t{{.Replicas}}",
            ],
            vec![(
                200,
                serde_json::json!({"result": "services", "services": [view]}),
            )],
        );
        assert_eq!((code, out.as_str()), (0, "NAME   REPLICAS\nweb    1/2\n"));
        // A bad template is refused before anything is asked.
        let (code, _, err, seen) =
            run_against(&["service", "ls", "--format", "{{.Nope"], Vec::new());
        assert_eq!(code, 1);
        assert!(err.contains("unclosed action"), "{err}");
        assert!(seen.is_empty());
    }

    #[test]
    fn completion_scripts() {
        for shell in ["bash", "zsh", "fish"] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run_with(&parse(&["shoal", "completion", shell]), &mut out, &mut err);
            let script = String::from_utf8(out).unwrap();
            assert_eq!(code, 0, "{shell}");
            for word in ["swarm", "service", "context", "format"] {
                assert!(script.contains(word), "{shell}: {word}");
            }
        }
    }

    #[test]
    fn bad_input_is_refused_before_calling() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["swarm", "join-token", "boss"],
                "invalid role \"boss\": expected worker or manager",
            ),
            (
                &["node", "update", "--availability", "off", "n1"],
                "invalid availability \"off\": expected active, pause or drain",
            ),
            (
                &["node", "update", "--role", "boss", "n1"],
                "invalid role \"boss\": expected worker or manager",
            ),
            (
                &["node", "update", "--label-add=-a=1", "n1"],
                "invalid label \"-a\": key must start with a letter or digit",
            ),
            (
                &["node", "update", "--label-rm", "", "n1"],
                "invalid label empty key",
            ),
            (
                &["node", "ls", "--format", "{{.ID"],
                "template: unclosed action in \"{{.ID\"",
            ),
            (&["node", "ls", "-f", "xyz=1"], "invalid filter 'xyz'"),
            (
                &["node", "ls", "-f", "role"],
                "bad format of filter (expected name=value)",
            ),
            (
                &["node", "update", ""],
                "invalid node \"\": expected an id, id prefix or hostname",
            ),
            (
                &["swarm", "join", "--token", "", "1.2.3.4:5"],
                "--token must not be empty",
            ),
        ];
        for (args, message) in cases {
            let mut full = vec!["shoal", "-H", "unix:///nonexistent/shoal.sock"];
            full.extend_from_slice(args);
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run_with(&parse(&full), &mut out, &mut err);
            assert_eq!(code, 1, "{args:?}");
            assert!(out.is_empty());
            assert_eq!(
                String::from_utf8(err).unwrap(),
                format!("Error: {message}\n"),
                "{args:?}"
            );
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(
            &parse(&["shoal", "-H", "tcp://x", "info"]),
            &mut out,
            &mut err,
        );
        assert_eq!(code, 1);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "Error: invalid host \"tcp://x\": the port is missing\n"
        );
    }

    #[test]
    fn no_agent_is_one_line() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cli = parse(&["shoal", "-H", "/nonexistent/shoal.sock", "node", "ls"]);
        assert_eq!(run_with(&cli, &mut out, &mut err), 1);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "Error: cannot connect to the shoal agent at /nonexistent/shoal.sock: \
             No such file or directory (is `shoal agent` running?)\n"
        );
    }

    #[test]
    fn agent_and_demo_are_not_client_commands() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cli = parse(&["shoal", "demo"]);
        assert_eq!(run_with(&cli, &mut out, &mut err), 2);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "Error: internal error: `shoal demo` does not talk to an agent\n"
        );
    }

    #[test]
    fn several_nodes_are_processed_one_by_one() {
        let (code, out, err, seen) = run_against(
            &["node", "promote", "n1", "my node", "n3"],
            vec![
                ok("Node n1 promoted to a manager in the swarm."),
                refused(404, "node my node not found"),
                ok("Node n3 is already a manager."),
            ],
        );
        assert_eq!(code, 1);
        assert_eq!(
            out,
            "Node n1 promoted to a manager in the swarm.\nNode n3 is already a manager.\n"
        );
        assert_eq!(err, "Error: node my node not found\n");
        assert_eq!(
            seen,
            [
                "POST /v1/nodes/n1/promote",
                "POST /v1/nodes/my%20node/promote",
                "POST /v1/nodes/n3/promote"
            ]
        );

        let (code, out, err, seen) = run_against(
            &["node", "demote", "n1"],
            vec![ok("Manager n1 demoted in the swarm.")],
        );
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "Manager n1 demoted in the swarm.\n", "")
        );
        assert_eq!(seen, ["POST /v1/nodes/n1/demote"]);

        let (code, out, _, seen) = run_against(
            &["node", "rm", "--force", "n1", "n2"],
            vec![ok("n1"), ok("")],
        );
        assert_eq!((code, out.as_str()), (0, "n1\nn2\n"));
        assert_eq!(
            seen,
            [
                "DELETE /v1/nodes/n1?force=true",
                "DELETE /v1/nodes/n2?force=true"
            ]
        );
    }

    #[test]
    fn node_ls_outputs() {
        let nodes = vec![
            view("000000000000000a", "node10", "worker", ""),
            view("0000000000000002", "node2", "manager", "Leader"),
        ];
        let answer = (
            200,
            serde_json::to_value(Response::Nodes {
                self_id: "0000000000000002".into(),
                nodes,
            })
            .unwrap(),
        );
        let (code, out, err, seen) = run_against(&["node", "ls"], vec![answer.clone()]);
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(
            out,
            "\
ID                   HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS   ENGINE VERSION
0000000000000002 *   node2      Ready    Active         Leader           0.1.0
000000000000000a     node10     Ready    Active                          0.1.0
"
        );
        assert_eq!(seen, ["GET /v1/nodes"]);
        let (_, out, _, seen) = run_against(&["node", "ls", "-q", "--stale"], vec![answer.clone()]);
        assert_eq!(out, "0000000000000002\n000000000000000a\n");
        assert_eq!(seen, ["GET /v1/nodes?stale=true"]);
        let (_, out, _, _) = run_against(
            &["node", "ls", "-f", "role=worker", "--format", "json"],
            vec![answer],
        );
        assert_eq!(
            out,
            "{\"ID\":\"000000000000000a\",\"Hostname\":\"node10\",\"Status\":\"Ready\",\"Availability\":\"Active\",\"ManagerStatus\":\"\",\"EngineVersion\":\"0.1.0\",\"Self\":false}\n"
        );
    }

    #[test]
    fn node_inspect() {
        let node = view("0000000000000002", "node2", "manager", "Leader");
        let found = (
            200,
            serde_json::to_value(Response::Node {
                self_id: "0000000000000002".into(),
                node: Box::new(node.clone()),
            })
            .unwrap(),
        );
        let (code, out, err, seen) = run_against(
            &["node", "inspect", "--stale", "node2", "ghost"],
            vec![found.clone(), refused(404, "node ghost not found")],
        );
        assert_eq!(code, 1);
        assert_eq!(err, "Error: node ghost not found\n");
        assert_eq!(out, format::inspect_json(std::slice::from_ref(&node)));
        assert_eq!(
            seen,
            [
                "GET /v1/nodes/node2?stale=true",
                "GET /v1/nodes/ghost?stale=true"
            ]
        );

        let info = InfoView {
            swarm: "active".into(),
            node_id: "0000000000000002".into(),
            cluster_id: "c".into(),
            role: "manager".into(),
            leader: "0000000000000002".into(),
            term: 1,
            commit_index: 1,
            applied_index: 1,
            voters: vec![],
            outgoing_voters: vec![],
            members: BTreeMap::new(),
            listen_addr: "127.0.0.1:4242".into(),
        };
        let (code, out, _, seen) = run_against(
            &["node", "inspect", "--pretty", "self", "node2"],
            vec![
                (200, serde_json::to_value(Response::Info(info)).unwrap()),
                found.clone(),
                found,
            ],
        );
        assert_eq!(code, 0);
        let one = format::inspect_pretty("0000000000000002", &node);
        assert_eq!(out, format!("{one}\n{one}"));
        assert_eq!(
            seen,
            [
                "GET /v1/info",
                "GET /v1/nodes/0000000000000002",
                "GET /v1/nodes/node2"
            ]
        );
    }

    #[test]
    fn node_update_sends_the_checked_options() {
        let (code, out, err, seen) = run_against(
            &[
                "node",
                "update",
                "--availability",
                "drain",
                "--label-add",
                "zone=eu-1",
                "--label-add",
                "ssd",
                "--label-rm",
                "old",
                "--role",
                "manager",
                "n/1",
            ],
            vec![ok("")],
        );
        assert_eq!((code, out.as_str(), err.as_str()), (0, "n/1\n", ""));
        assert_eq!(seen.len(), 1);
        let (head, body) = seen[0].split_once(' ').unwrap();
        assert_eq!(head, "POST");
        let (path, body) = body.split_once(' ').unwrap();
        assert_eq!(path, "/v1/nodes/n%2F1/update");
        let sent: NodeUpdateRequest = serde_json::from_str(body).unwrap();
        assert_eq!(
            sent,
            NodeUpdateRequest {
                availability: Some(Availability::Drain),
                label_add: vec!["zone=eu-1".into(), "ssd".into()],
                label_rm: vec!["old".into()],
                role: Some(Role::Manager),
                version: None,
            }
        );
    }

    #[test]
    fn swarm_commands() {
        let token = |role: Role| {
            let answer = Response::Token {
                role,
                token: "SHOAL-1-abc-def".into(),
                manager_addr: "10.0.0.1:4242".into(),
            };
            (200, serde_json::to_value(answer).unwrap())
        };
        let (code, out, _, seen) = run_against(
            &["swarm", "join-token", "worker"],
            vec![token(Role::Worker)],
        );
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "To add a worker to this swarm, run the following command:\n\n    \
             shoal swarm join --token SHOAL-1-abc-def 10.0.0.1:4242\n"
        );
        assert_eq!(seen, ["GET /v1/swarm/join-token/worker"]);
        let (_, out, _, seen) = run_against(
            &["swarm", "join-token", "--rotate", "manager"],
            vec![token(Role::Manager)],
        );
        assert_eq!(
            out,
            "Successfully rotated manager join token.\n\n\
             To add a manager to this swarm, run the following command:\n\n    \
             shoal swarm join --token SHOAL-1-abc-def 10.0.0.1:4242\n"
        );
        assert_eq!(seen, ["GET /v1/swarm/join-token/manager?rotate=true"]);
        let (_, out, _, _) = run_against(
            &["swarm", "join-token", "-q", "--rotate", "manager"],
            vec![token(Role::Manager)],
        );
        assert_eq!(out, "SHOAL-1-abc-def\n");

        let (code, out, _, seen) = run_against(
            &["swarm", "init", "--advertise-addr", "10.0.0.1:4242"],
            vec![ok(
                "Swarm initialized: current node (0000000000000001) is now a manager.\n",
            )],
        );
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "Swarm initialized: current node (0000000000000001) is now a manager.\n"
        );
        let (head, body) = seen[0].split_at("POST /v1/swarm/init ".len());
        assert_eq!(head, "POST /v1/swarm/init ");
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap(),
            json!({"advertise_addr": "10.0.0.1:4242", "force_new_cluster": false, "autolock": false})
        );

        let (code, out, _, seen) = run_against(
            &[
                "swarm",
                "join",
                "--token",
                "SHOAL-1-abc-def",
                "10.0.0.1:4242",
            ],
            vec![ok("This node joined a swarm as a worker.")],
        );
        assert_eq!(
            (code, out.as_str()),
            (0, "This node joined a swarm as a worker.\n")
        );
        assert!(seen[0].starts_with("POST /v1/swarm/join {"));

        let (code, out, err, seen) = run_against(
            &["swarm", "leave"],
            vec![refused(
                409,
                "this node is the last manager of the swarm: leaving would\ndestroy it",
            )],
        );
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "Error: this node is the last manager of the swarm: leaving would destroy it\n"
        );
        assert_eq!(seen, ["POST /v1/swarm/leave"]);
        let (code, _, _, seen) =
            run_against(&["swarm", "leave", "-f"], vec![ok("Node left the swarm.")]);
        assert_eq!(code, 0);
        assert_eq!(seen, ["POST /v1/swarm/leave?force=true"]);
    }

    #[test]
    fn info_and_unexpected_answers() {
        let info = InfoView::inactive("127.0.0.1:4242".into());
        let answer = (
            200,
            serde_json::to_value(Response::Info(info.clone())).unwrap(),
        );
        let (code, out, _, seen) = run_against(&["info", "--format", "json"], vec![answer.clone()]);
        assert_eq!(code, 0);
        assert_eq!(serde_json::from_str::<InfoView>(&out).unwrap(), info);
        assert!(out.starts_with("{\n  \"swarm\": \"inactive\","));
        assert_eq!(seen, ["GET /v1/info"]);
        let (code, out, _, _) = run_against(&["info"], vec![answer.clone()]);
        assert_eq!(code, 0);
        assert_eq!(out, "Swarm: inactive\n Node Address: 127.0.0.1:4242\n");
        let (code, _, err, seen) = run_against(&["info", "--format", "yaml"], vec![]);
        assert_eq!(
            (code, err.as_str()),
            (
                1,
                "Error: unsupported format \"yaml\": expected text or json\n"
            )
        );
        assert!(seen.is_empty());

        let (code, out, err, _) = run_against(&["node", "ls"], vec![answer.clone()]);
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(
            err,
            "Error: unexpected answer from the agent: expected a node list, got the agent's info\n"
        );
        let (code, _, err, _) = run_against(&["node", "inspect", "self"], vec![answer]);
        assert_eq!(
            (code, err.as_str()),
            (1, "Error: this node is not part of a swarm\n")
        );
    }
}
