//! The node agent: one process per machine. Before `swarm init` or `swarm join` it only serves
//! its control socket; once part of a cluster it runs the transport (QUIC, mutual TLS), SWIM
//! membership, and — on managers — the Raft replica with its WAL, and answers the CLI, forwarding
//! to the leader what must go there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use anyhow::{anyhow, Context, Result};
use shoal_cluster::{
    node_id_string, parse_label, ClusterInfo, Command, NewNode, NodeDescription, Platform,
    Resources, Role,
};
use shoal_membership::State;
use shoal_transport::join::{self, JoinAuthority, JoinError};
use shoal_transport::net::{self, Inbound, IncomingRequest, Transport, TransportConfig};
use shoal_transport::pki::{
    self, ClusterCa, ClusterId, Denylist, JoinToken, JoinTokens, NodeCertificate, NodeIdentity,
    NodeKey, DEFAULT_VALIDITY,
};
use tokio::sync::{oneshot, RwLock};

use crate::api::{Request, Response};
use crate::gossip::{self, Gossip, GossipCmd, Meta};
use crate::raft_driver::{self, now_ms, RaftCmd, RaftHandle, Start};
use crate::store::{DataDir, NodeFile, StoredIdentity};
use crate::wire::{self, AgentRequest};

/// How the agent was started (`shoal agent …`).
#[derive(Clone, Debug)]
pub struct AgentOpts {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Address advertised to the others (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Hostname shown in `node ls`.
    pub hostname: String,
    /// `--label k=v`, validated.
    pub labels: Vec<(String, String)>,
    /// Membership timing: the `local` profile (fast) instead of `lan`.
    pub local_gossip: bool,
    /// Run on turmoil's simulated network (inside a turmoil host) instead of real UDP.
    pub simulated: bool,
    /// fsync the WAL (off only in simulations, where the process never really crashes).
    pub fsync: bool,
    /// Seed for node ids and the Raft and SWIM randomness (simulations, so that a seed
    /// replays); `None` draws from the operating system.
    pub seed: Option<u64>,
    /// Disk failures to inject into the Raft WAL (tests only; the default injects nothing).
    pub wal_faults: shoal_raft::wal::WalFaults,
    /// The runtimes this node runs tasks with (none: it runs no tasks).
    pub executors: crate::worker::Executors,
    /// The IP the routing mesh listens on (`None`: no mesh, as in simulations).
    pub ingress: Option<std::net::IpAddr>,
}

impl AgentOpts {
    /// A QUIC endpoint on this agent's network: real UDP, or turmoil's.
    /// `secret`: what the endpoint derives its stateless-reset and connection-id keys from (the
    /// node's persistent endpoint secret), so that after a restart it resets the connections
    /// peers still hold to its previous run; `None` for a throwaway endpoint (a join).
    async fn endpoint(
        &self,
        addr: SocketAddr,
        server: Option<quinn::ServerConfig>,
        secret: Option<&[u8]>,
    ) -> std::io::Result<quinn::Endpoint> {
        let config = || match secret {
            Some(s) => net::endpoint_config_from_secret(s),
            None => quinn::EndpointConfig::default(),
        };
        if self.simulated {
            let socket = shoal_transport::sim::bind(addr).await?;
            let mut cfg = config();
            if let Some(seed) = self.seed {
                // quinn's own randomness (packet numbers skipped, connection ids) too.
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&seed.to_le_bytes());
                bytes[8..16].copy_from_slice(&u64::from(addr.port()).to_le_bytes());
                cfg.rng_seed(Some(bytes));
            }
            shoal_transport::sim::endpoint_with_config(socket, cfg, server)
        } else {
            net::udp_endpoint_with_config(addr, config(), server)
        }
    }
}

/// The agent.
pub struct Agent {
    /// The data directory.
    pub data: DataDir,
    /// Its options.
    pub opts: AgentOpts,
    /// The running member, once part of a cluster.
    pub member: RwLock<Option<Arc<Member>>>,
    /// Serialises init, join and leave.
    lifecycle: tokio::sync::Mutex<()>,
    /// When this agent last left a swarm (its endpoint may still be draining).
    left_at: Mutex<Option<Instant>>,
    entropy: Arc<Entropy>,
    /// A manager locked by autolock, waiting for `swarm unlock`: who it is (nothing runs).
    locked: Mutex<Option<NodeFile>>,
    /// The unlock key given by `swarm unlock`, for the member it starts.
    unlock: Mutex<Option<[u8; 32]>>,
}

/// A node that is part of a cluster.
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Its cluster.
    pub cluster_id: ClusterId,
    /// The address it advertises.
    pub advertise: SocketAddr,
    /// Its hostname.
    pub hostname: String,
    /// The QUIC transport.
    pub transport: Transport,
    /// SWIM.
    pub gossip: Gossip,
    raft: Mutex<Option<RaftHandle>>,
    fsync: bool,
    wal_faults: shoal_raft::wal::WalFaults,
    entropy: Arc<Entropy>,
    /// The certificate and key the transport presents (renewed when the role changes).
    identity: Mutex<NodeIdentity>,
    ca_der: Vec<u8>,
    /// When to renew the certificate (drawn once per certificate).
    renew_at: Mutex<SystemTime>,
    raft_stopped_at: Mutex<Option<Instant>>,
    /// Members known from the join (and the seeds saved since), tried when membership does not
    /// know a live manager yet.
    seed_managers: Vec<u64>,
    data: DataDir,
    /// Set when this member is done (the node left its swarm): its tasks end.
    stop: tokio::sync::watch::Sender<bool>,
    /// Nodes known to be managers, from the replicated state or a manager's directory (never
    /// from gossip).
    known_managers: Mutex<std::collections::BTreeSet<u64>>,
    /// Raft messages dropped before any replica saw them (sender not a manager).
    rejected_not_member: std::sync::atomic::AtomicU64,
    /// What this manager last sent each node of its tasks.
    sessions: Arc<crate::dispatch::Sessions>,
    /// The leader's batches of task reports.
    report_batches: Arc<crate::dispatch::Reports>,
    /// Runs this node's tasks.
    runner: Mutex<Option<Arc<crate::worker::Runner>>>,
    /// The runtimes this node has.
    executors: crate::worker::Executors,
    /// Since when this node's replica has been out of touch with any leader.
    leaderless_since: Mutex<Option<Instant>>,
    /// Nodes that recently answered "not a manager": asked last until the entry expires.
    not_managers: Mutex<BTreeMap<u64, Instant>>,
    /// The Raft data keys (with the unlock key they are opened with, under autolock).
    keys: Mutex<crate::keys::RaftKeys>,
    /// A data key was replaced: the old ones are forgotten once the log no longer uses them.
    old_data_keys: std::sync::atomic::AtomicBool,
    /// The unlock key (or none) the key files were last brought in line with: nothing to read
    /// or write until the swarm's changes.
    keys_applied: Mutex<Option<Option<[u8; 32]>>>,
}

/// What this agent reports about its machine and its runtimes.
pub fn describe(hostname: &str, executors: &crate::worker::Executors) -> NodeDescription {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        o => o,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    NodeDescription {
        hostname: hostname.to_string(),
        platform: Platform {
            os: os.into(),
            arch: arch.into(),
        },
        resources: Resources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: memory_bytes(),
        },
        engine_version: executors.engine_version(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        runtimes: executors.runtimes(),
        runtime_problems: executors.problems(),
        limits_enforced: executors.limits_enforced(),
    }
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// What a removed node is told when it comes back.
pub const REMOVED: &str = "this node was removed from the swarm";

/// How long a request may wait for Raft (a commit, a leader).
const RAFT_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    /// Opens the data directory and, if this node is part of a cluster, starts it.
    pub async fn start(data: DataDir, opts: AgentOpts) -> Result<Arc<Agent>> {
        let agent = Arc::new(Agent {
            data,
            member: RwLock::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            left_at: Mutex::new(None),
            entropy: Arc::new(Entropy::new(opts.seed)),
            opts,
            locked: Mutex::new(None),
            unlock: Mutex::new(None),
        });
        let keys = crate::keys::RaftKeys::new(agent.data.root());
        if let Some(node) = agent.data.load_node()? {
            if keys.is_locked()? {
                tracing::warn!("autolock: {}", crate::keys::LOCKED);
                *agent.locked.lock().expect("locked") = Some(node);
                return Ok(agent);
            }
            if keys.exists() {
                let kek = keys.kek_keyring()?;
                if agent.data.key_sealed()? {
                    // Autolock was on and is off now, or a crash came between two steps.
                    agent.data.set_key_seal(Some(kek.clone()));
                }
                if agent.data.raft_retired() && !agent.data.has_raft() {
                    // A retirement whose log is gone: its keys go too (a crash in between).
                    agent.data.set_key_form(&kek, false)?;
                    keys.destroy()?;
                }
            }
        }
        if let Some(stored) = agent.data.load()? {
            // A demoted node keeps its retired log but runs no replica until a leader calls.
            let start =
                (agent.data.has_raft() && !agent.data.raft_retired()).then_some(Start::Existing);
            let m = agent.start_member(stored, start).await?;
            *agent.member.write().await = Some(m.clone());
            // Tell the managers about ourselves again (a new address or hostname).
            tokio::spawn(register_loop(m, agent.opts.clone()));
        }
        Ok(agent)
    }

    /// This node's id and its Raft replica's status, if it runs one (for simulations and
    /// tests).
    pub async fn raft_status(&self) -> Option<(u64, raft_driver::RaftStatus)> {
        let m = self.member.read().await.clone()?;
        let h = m.raft()?;
        let s = h.status.borrow().clone();
        Some((m.id, s))
    }

    /// The cluster state this node's replica has applied, if it runs one.
    pub async fn cluster_state(&self) -> Option<shoal_cluster::ClusterState> {
        let m = self.member.read().await.clone()?;
        let h = m.raft()?;
        let st = h.state.read().expect("state").clone();
        Some(st)
    }

    /// The endpoint on the listen address. Right after `swarm leave` the previous endpoint may
    /// still hold the port while its connections drain: an address in use is retried for a few
    /// seconds before it is an error.
    async fn listen_endpoint(&self, server: quinn::ServerConfig) -> Result<quinn::Endpoint> {
        let left_at = *self.left_at.lock().expect("left_at");
        let deadline = left_at.map(|t| t + Duration::from_secs(10));
        let secret = self.data.endpoint_secret()?;
        loop {
            match self
                .opts
                .endpoint(self.opts.listen, Some(server.clone()), Some(&secret))
                .await
            {
                Ok(e) => return Ok(e),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot listen on {}", self.opts.listen))
                }
            }
        }
    }

    fn advertise(&self) -> SocketAddr {
        self.opts.advertise.unwrap_or(self.opts.listen)
    }

    async fn start_member(
        self: &Arc<Self>,
        stored: StoredIdentity,
        raft: Option<Start>,
    ) -> Result<Arc<Member>> {
        let cert = NodeCertificate::from_pem(&stored.cert_pem).context("cert.pem")?;
        let key = NodeKey::from_pem(&stored.key_pem).context("key.pem")?;
        let ca_der = pem_cert_der(&stored.ca_cert_pem)?;
        let cluster_id = ClusterId::from_str(&stored.node.cluster_id)
            .map_err(|e| anyhow!("node.json: bad cluster id: {e}"))?;
        let identity =
            NodeIdentity::new(cert, key).context("the certificate is not for our key")?;
        let denylist = Denylist::new();
        for id in self.data.load_removed() {
            denylist.deny(id);
        }
        let (server, client) = net::quic_configs(&identity, &ca_der, denylist.clone())?;
        let endpoint = self.listen_endpoint(server).await?;
        let (transport, inbound) = Transport::start(
            endpoint,
            client,
            stored.node.node_id,
            cluster_id,
            denylist,
            TransportConfig::default(),
        );
        let advertise = self.advertise();
        let running_raft = raft.is_some();
        let gossip = gossip::start(
            self.entropy.next(),
            stored.node.node_id,
            advertise,
            Meta {
                manager: running_raft,
            },
            self.opts.local_gossip,
            transport.clone(),
        )?;
        let member = Arc::new(Member {
            id: stored.node.node_id,
            cluster_id,
            advertise,
            hostname: stored.node.hostname.clone(),
            transport: transport.clone(),
            gossip: gossip.clone(),
            raft: Mutex::new(None),
            fsync: self.opts.fsync,
            wal_faults: self.opts.wal_faults.clone(),
            entropy: self.entropy.clone(),
            renew_at: Mutex::new(join::RenewalPlan::for_cert(
                &identity.cert,
                &mut rand::thread_rng(),
            )),
            identity: Mutex::new(identity.clone()),
            ca_der: ca_der.clone(),
            raft_stopped_at: Mutex::new(None),
            seed_managers: stored
                .node
                .seeds
                .iter()
                .filter_map(|s| gossip::parse_swim_addr(s))
                .map(|(id, a)| {
                    transport.hint_peer_addr(id, a);
                    id
                })
                .filter(|id| *id != stored.node.node_id)
                .collect(),
            data: self.data.clone(),
            stop: tokio::sync::watch::channel(false).0,
            rejected_not_member: Default::default(),
            known_managers: Default::default(),
            sessions: Default::default(),
            report_batches: Default::default(),
            runner: Mutex::new(None),
            executors: self.opts.executors.clone(),
            leaderless_since: Mutex::new(None),
            not_managers: Mutex::new(BTreeMap::new()),
            keys: Mutex::new(
                crate::keys::RaftKeys::new(self.data.root())
                    .with_unlock(*self.unlock.lock().expect("unlock")),
            ),
            old_data_keys: Default::default(),
            keys_applied: Mutex::new(None),
        });
        if let Some(how) = raft {
            member.start_raft(how)?;
        }
        let mut seeds = stored.node.seeds.clone();
        if let Some(h) = member.raft() {
            for n in h.state.read().expect("state").nodes().values() {
                if n.id != member.id {
                    if let Ok(a) = n.addr.parse() {
                        seeds.push(gossip::swim_addr(n.id, a));
                    }
                }
            }
        }
        seeds.retain(|s| gossip::parse_swim_addr(s).is_some_and(|(id, _)| id != member.id));
        seeds.sort();
        seeds.dedup();
        if !seeds.is_empty() {
            let _ = gossip.tx.send(GossipCmd::Join(seeds)).await;
        }
        tokio::spawn(check_suspects(Arc::downgrade(&member)));
        tokio::spawn(watch_runtimes(Arc::downgrade(&member), self.opts.clone()));
        let mesh = self.opts.ingress.map(crate::mesh::Mesh::new);
        let runner = crate::worker::Runner::start(&member, self.opts.executors.clone(), mesh);
        *member.runner.lock().expect("runner") = Some(runner);
        let span = tracing::info_span!("agent", node = %node_id_string(member.id));
        tokio::spawn(tracing::Instrument::instrument(
            dispatch(member.clone(), inbound),
            span.clone(),
        ));
        tokio::spawn(tracing::Instrument::instrument(
            housekeeping(Arc::downgrade(&member), stored.node),
            span,
        ));
        Ok(member)
    }

    /// Answers one request from the CLI (an operator at the control socket); `rid` identifies a
    /// write across retries.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request,
        rid: Option<shoal_cluster::RequestId>,
    ) -> Response {
        let locked = self.locked.lock().expect("locked").clone();
        if let Some(node) = locked {
            return match req {
                Request::Unlock { key } => self.unlock(&key).await,
                Request::Info => {
                    let mut info = crate::api::InfoView::inactive(self.opts.listen.to_string());
                    info.swarm = "locked".into();
                    info.node_id = node_id_string(node.node_id);
                    info.cluster_id = node.cluster_id;
                    info.role = "manager".into();
                    Response::Info(info)
                }
                // Without the key the data is lost anyway: leaving wipes it (as Swarm allows).
                Request::Leave { force: true } => {
                    let _g = self.lifecycle.lock().await;
                    if let Err(e) = self.data.wipe_identity() {
                        return Response::error(format!("{e:#}"));
                    }
                    *self.locked.lock().expect("locked") = None;
                    tracing::info!("a locked manager left its swarm: its data is wiped");
                    Response::ok("Node left the swarm.")
                }
                Request::Leave { force: false } => Response::error(format!(
                    "{}, or leave the swarm with shoal swarm leave --force (this node's swarm \
                     data is then lost)",
                    crate::keys::LOCKED
                )),
                _ => Response::error(crate::keys::LOCKED),
            };
        }
        match req {
            Request::Unlock { .. } => Response::error("this node is not locked"),
            Request::Init {
                advertise_addr,
                force_new_cluster,
                autolock,
            } => {
                let r = self.init(advertise_addr, force_new_cluster).await;
                if !autolock || matches!(r, Response::Error { .. }) {
                    return r;
                }
                // Autolock from the start: the key is shown with the welcome.
                let Some(m) = self.member.read().await.clone() else {
                    return r;
                };
                let update = Request::SwarmUpdate {
                    task_history_limit: None,
                    autolock: Some(true),
                };
                match (r, m.control(update, None).await) {
                    (Response::Ok { message }, Response::UnlockKey { key, .. }) => {
                        Response::ok(format!(
                            "{message}\n\n{}",
                            crate::cli::unlock_key_text(&key)
                        ))
                    }
                    (_, Response::Error { message }) => Response::error(format!(
                        "the swarm was initialized, but autolock could not be turned on: \
                         {message}"
                    )),
                    (r, _) => r,
                }
            }
            Request::Join { token, remote_addr } => self.join(token, remote_addr).await,
            Request::Leave { force } => self.leave(force).await,
            Request::Info => match self.member.read().await.clone() {
                Some(m) => Response::Info(m.info(self.opts.listen)),
                None => Response::Info(crate::api::InfoView::inactive(
                    self.opts.listen.to_string(),
                )),
            },
            other => match self.member.read().await.clone() {
                Some(m) => m.control(other, rid).await,
                None => Response::error(
                    "this node is not part of a swarm: run `shoal swarm init` or `shoal swarm join` first",
                ),
            },
        }
    }

    /// `swarm unlock`: checks the key against the data keys (a wrong one changes nothing),
    /// then starts the member as a restart would.
    async fn unlock(self: &Arc<Self>, key: &str) -> Response {
        let _g = self.lifecycle.lock().await;
        let bytes = match shoal_cluster::parse_unlock_key(key) {
            Ok(b) => b,
            Err(e) => return Response::error(e),
        };
        let keys = crate::keys::RaftKeys::new(self.data.root()).with_unlock(Some(bytes));
        if let Err(e) = keys.check() {
            return Response::error(format!("{e:#}"));
        }
        if self.locked.lock().expect("locked").is_none() {
            return Response::error("this node is not locked");
        }
        // The node key is sealed with the key-encryption key the unlock key opens.
        let stored = match keys.kek_keyring().and_then(|kek| {
            self.data.set_key_seal(Some(kek));
            self.data.load()
        }) {
            Ok(Some(s)) => s,
            Ok(None) => return Response::error("this node's identity is gone"),
            Err(e) => return Response::error(format!("cannot read this node's identity: {e:#}")),
        };
        let Some(node) = self.locked.lock().expect("locked").take() else {
            return Response::error("this node is not locked");
        };
        *self.unlock.lock().expect("unlock") = Some(bytes);
        let start = (self.data.has_raft() && !self.data.raft_retired()).then_some(Start::Existing);
        match self.start_member(stored.clone(), start).await {
            Ok(m) => {
                *self.member.write().await = Some(m.clone());
                tokio::spawn(register_loop(m, self.opts.clone()));
                tracing::info!("unlocked");
                Response::ok("")
            }
            Err(e) => {
                *self.locked.lock().expect("locked") = Some(node);
                Response::error(format!("unlocked, but the node did not start: {e:#}"))
            }
        }
    }

    /// This node's routing mesh, while it is in a swarm.
    pub async fn mesh(&self) -> Option<Arc<crate::mesh::Mesh>> {
        let member = self.member.read().await.clone()?;
        let runner = member.runner()?;
        runner.mesh().cloned()
    }

    /// The metrics of this agent in the Prometheus text format (`GET /metrics`).
    pub async fn metrics(&self) -> String {
        let mut snap = crate::metrics::Snapshot {
            hostname: self.opts.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        if let Some(m) = self.member.read().await.clone() {
            m.fill_metrics(&mut snap);
        }
        crate::metrics::render(&snap)
    }

    async fn init(self: &Arc<Self>, advertise: Option<String>, force_new: bool) -> Response {
        let _g = self.lifecycle.lock().await;
        match self.init_inner(advertise, force_new).await {
            Ok(r) => r,
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    async fn init_inner(
        self: &Arc<Self>,
        advertise: Option<String>,
        force_new: bool,
    ) -> Result<Response> {
        if force_new {
            return self.force_new_cluster().await;
        }
        if self.member.read().await.is_some() {
            return Ok(Response::error(
                "this node is already part of a swarm: use `shoal swarm leave` first, or `--force-new-cluster` to restart a lost cluster from this manager",
            ));
        }
        if let Some(a) = &advertise {
            let parsed: SocketAddr = a
                .parse()
                .map_err(|_| anyhow!("invalid --advertise-addr {a:?}: expected ip:port"))?;
            if parsed != self.advertise() {
                return Ok(Response::error(format!(
                    "--advertise-addr {parsed} differs from the agent's advertised address {}: restart the agent with --advertise {parsed}",
                    self.advertise()
                )));
            }
        }
        let cluster_id = ClusterId::random();
        let ca = ClusterCa::generate(cluster_id)?;
        let tokens = JoinTokens::generate(ca.digest());
        let id = self.entropy.node_id();
        let key = NodeKey::generate()?;
        let cert = ca.issue(
            &key.csr_der(id)?,
            id,
            pki::Role::Manager,
            DEFAULT_VALIDITY,
            SystemTime::now(),
        )?;
        let stored = StoredIdentity {
            node: NodeFile {
                node_id: id,
                cluster_id: cluster_id.to_string(),
                advertise: self.advertise().to_string(),
                hostname: self.opts.hostname.clone(),
                seeds: Vec::new(),
            },
            key_pem: key.to_pem(),
            cert_pem: cert.to_pem(),
            ca_cert_pem: pem_of_cert(ca.cert_der()),
        };
        self.data.wipe_raft()?;
        self.data.save(&stored)?;
        let m = self.start_member(stored, Some(Start::Bootstrap)).await?;
        *self.member.write().await = Some(m.clone());
        m.wait_leader(Duration::from_secs(30)).await?;
        let info = ClusterInfo {
            id: cluster_id.to_string(),
            created_at_ms: now_ms(),
            ca_pem: ca.to_pem(),
            worker_token: tokens.worker.to_string(),
            manager_token: tokens.manager.to_string(),
            unlock_key: String::new(),
        };
        let node = NewNode {
            id,
            description: describe(&self.opts.hostname, &self.opts.executors),
            addr: self.advertise().to_string(),
            labels: self.opts.labels.iter().cloned().collect(),
            desired_role: Role::Manager,
        };
        m.propose(Command::Init {
            cluster: info,
            node,
            at_ms: now_ms(),
        })
        .await
        .map_err(|e| anyhow!(e))?;
        Ok(Response::ok(format!(
            "Swarm initialized: current node ({}) is now a manager.\n\nTo add a worker to this swarm, run the following command:\n\n    shoal swarm join --token {} {}\n\nTo add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.",
            node_id_string(id),
            tokens.worker,
            self.advertise()
        )))
    }

    async fn force_new_cluster(self: &Arc<Self>) -> Result<Response> {
        let Some(m) = self.member.read().await.clone() else {
            return Ok(Response::error(
                "--force-new-cluster needs a node that was a manager of a swarm",
            ));
        };
        let Some(h) = m.take_raft() else {
            return Ok(Response::error(
                "--force-new-cluster needs a manager: this node holds no Raft data",
            ));
        };
        // Stop the old replica: dropping every handle ends its task.
        drop(h);
        tokio::time::sleep(Duration::from_millis(300)).await;
        m.start_raft(Start::ForceNewCluster)?;
        m.wait_leader(Duration::from_secs(30)).await?;
        m.propose(Command::ForceNewCluster {
            survivor: m.id,
            at_ms: now_ms(),
        })
        .await
        .map_err(|e| anyhow!(e))?;
        Ok(Response::ok(format!(
            "Swarm initialized: current node ({}) is now a manager.\n\nThe other managers are now workers: promote nodes again to restore fault tolerance.",
            node_id_string(m.id)
        )))
    }

    async fn join(self: &Arc<Self>, token: String, remote: String) -> Response {
        let _g = self.lifecycle.lock().await;
        match self.join_inner(token, remote).await {
            Ok(r) => r,
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    async fn join_inner(self: &Arc<Self>, token: String, remote: String) -> Result<Response> {
        if self.member.read().await.is_some() {
            return Ok(Response::error(
                "this node is already part of a swarm: use `shoal swarm leave` first",
            ));
        }
        let token = JoinToken::from_str(token.trim()).map_err(|e| anyhow!("{e}"))?;
        let remote: SocketAddr = remote
            .parse()
            .map_err(|_| anyhow!("invalid manager address {remote:?}: expected ip:port"))?;
        let bind = SocketAddr::new(self.opts.listen.ip(), 0);
        let endpoint = self.opts.endpoint(bind, None, None).await?;
        let hostname = &self.opts.hostname;
        let attempt = |want| {
            join::join_through(
                &endpoint,
                remote,
                &token,
                hostname,
                want,
                Duration::from_secs(15),
            )
        };
        let joined = match attempt(pki::Role::Worker).await {
            Err(JoinError::Refused(reason)) if reason.contains("this token joins managers") => {
                attempt(pki::Role::Manager).await
            }
            other => other,
        }
        .map_err(|e| anyhow!("{e}"))?;
        endpoint.close(0u32.into(), b"joined");
        let role = joined.identity.cert.role;
        let stored = StoredIdentity {
            node: NodeFile {
                node_id: joined.identity.cert.node_id,
                cluster_id: joined.identity.cert.cluster_id.to_string(),
                advertise: self.advertise().to_string(),
                hostname: self.opts.hostname.clone(),
                seeds: vec![gossip::swim_addr(joined.manager_id, remote)],
            },
            key_pem: joined.identity.key.to_pem(),
            cert_pem: joined.identity.cert.to_pem(),
            ca_cert_pem: pem_of_cert(&joined.ca_der),
        };
        self.data.wipe_raft()?;
        self.data.save(&stored)?;
        let m = self.start_member(stored, None).await?;
        *self.member.write().await = Some(m.clone());
        m.transport.pin_peer_addr(joined.manager_id, remote);
        let role = if role == pki::Role::Manager {
            "manager"
        } else {
            "worker"
        };
        // The node is recorded already (its admission was committed before its certificate
        // was signed); registering only adds its description, address and labels. If that
        // cannot be done now, it goes on in the background rather than leaving the node half
        // joined.
        if let Err(e) = m
            .register(joined.manager_id, &self.opts, Duration::from_secs(30))
            .await
        {
            tokio::spawn(register_loop(m.clone(), self.opts.clone()));
            return Ok(Response::ok(format!(
                "This node joined a swarm as a {role}. Its description is not recorded yet ({e:#}); the agent keeps trying: check `shoal node ls` on a manager."
            )));
        }
        Ok(Response::ok(format!(
            "This node joined a swarm as a {role}."
        )))
    }

    async fn leave(self: &Arc<Self>, force: bool) -> Response {
        let _g = self.lifecycle.lock().await;
        let Some(m) = self.member.read().await.clone() else {
            return Response::error("this node is not part of a swarm");
        };
        if m.raft().is_some() && !force {
            // Demote ourselves through the leader (it checks quorum), then wait until the
            // replica is out of the group.
            match m
                .control(
                    Request::NodeDemote {
                        node: node_id_string(m.id),
                    },
                    None,
                )
                .await
            {
                Response::Error { message } => {
                    let message = if message.starts_with("attempting to demote the last manager") {
                        shoal_cluster::ClusterError::LeaveLastManager.to_string()
                    } else if let Some(rest) =
                        message.split_once(" would result in a loss of quorum")
                    {
                        format!("leaving the swarm would result in a loss of quorum{} (use --force to leave anyway)", rest.1)
                    } else {
                        message
                    };
                    return Response::Error { message };
                }
                _ => {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while m.raft().is_some() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if m.raft().is_some() {
                        return Response::error(
                            "timed out waiting for this manager's demotion; retry, or use --force",
                        );
                    }
                }
            }
        }
        // Tell the managers first, so that the node shows Down at once (best effort: gossip
        // carries the news too).
        let bytes = wire::encode_request(&AgentRequest::Leaving { node: m.id });
        for t in m.manager_candidates().into_iter().take(3) {
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(3), m.transport.request(t, &bytes)).await
            {
                if matches!(wire::decode_response(&resp), Response::Ok { .. }) {
                    break;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let _ = m.gossip.tx.send(GossipCmd::Leave(tx)).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        drop(m.take_raft());
        if let Err(e) = self.data.wipe_identity() {
            return Response::error(format!("{e:#}"));
        }
        *self.member.write().await = None;
        // The endpoint and its connections belong to the old identity: close them and let the
        // member's tasks end, so that the agent can init or join a swarm again (the next
        // endpoint binds the same port once this one has drained).
        m.stop.send_replace(true);
        m.transport.shutdown(Duration::from_secs(2)).await;
        *self.left_at.lock().expect("left_at") = Some(Instant::now());
        Response::ok("Node left the swarm.")
    }
}

/// Random numbers for ids and protocol seeds: seeded in simulations, from the OS otherwise.
pub(crate) struct Entropy(Mutex<Option<u64>>);

impl Entropy {
    fn new(seed: Option<u64>) -> Self {
        Entropy(Mutex::new(seed))
    }

    /// The next random number (splitmix64 when seeded).
    pub(crate) fn next(&self) -> u64 {
        let mut s = self.0.lock().expect("entropy");
        match s.as_mut() {
            None => rand::random(),
            Some(x) => {
                *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
        }
    }

    /// A non-zero node id.
    fn node_id(&self) -> u64 {
        loop {
            let id = self.next();
            if id != 0 {
                return id;
            }
        }
    }
}

fn pem_of_cert(der: &[u8]) -> String {
    pki::certificate_pem(der)
}

fn pem_cert_der(text: &str) -> Result<Vec<u8>> {
    pki::certificate_der_from_pem(text).map_err(|e| anyhow!("ca.pem: {e}"))
}

impl Member {
    /// Becomes true when this member is done (the node left its swarm).
    pub(crate) fn stop_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// The dispatcher's sessions on this manager.
    pub(crate) fn sessions(&self) -> Arc<crate::dispatch::Sessions> {
        self.sessions.clone()
    }

    /// The leader's report batches.
    pub(crate) fn report_batches(&self) -> Arc<crate::dispatch::Reports> {
        self.report_batches.clone()
    }

    /// This node's task runner.
    pub fn runner(&self) -> Option<Arc<crate::worker::Runner>> {
        self.runner.lock().expect("runner").clone()
    }

    /// The Raft replica, if this node runs one.
    pub fn raft(&self) -> Option<RaftHandle> {
        self.raft.lock().expect("raft").clone()
    }

    fn take_raft(&self) -> Option<RaftHandle> {
        self.raft.lock().expect("raft").take()
    }

    fn start_raft(self: &Arc<Self>, how: Start) -> Result<()> {
        // The Raft data is encrypted at rest with the node's data keys.
        let keys = self.keys.lock().expect("keys").load_or_create()?;
        // New (or reopened) key files: brought in line with the swarm again.
        *self.keys_applied.lock().expect("keys applied") = None;
        let h = raft_driver::start(
            self.id,
            self.data.raft_dir(),
            shoal_raft::wal::WalOptions {
                fsync: self.fsync,
                faults: self.wal_faults.clone(),
                keys: Some(keys),
                ..Default::default()
            },
            self.entropy.next(),
            how,
            self.transport.clone(),
            self.gossip.view.clone(),
        )?;
        *self.raft.lock().expect("raft") = Some(h);
        let _ = self
            .gossip
            .tx
            .try_send(GossipCmd::SetMeta(Meta { manager: true }));
        Ok(())
    }

    /// Waits until some node leads (this one, after init).
    async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let h = self.raft().ok_or_else(|| anyhow!("not a manager"))?;
        let mut rx = h.status.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().leader {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(anyhow!("the Raft replica stopped")),
                Err(_) => return Err(anyhow!("no leader elected within {timeout:?}")),
            }
        }
    }

    /// Proposes a command on this node's replica (it must lead) and waits until applied.
    pub async fn propose(&self, cmd: Command) -> Result<(), String> {
        let h = self.raft().ok_or("this node is not a manager")?;
        let (tx, rx) = oneshot::channel();
        h.tx.send(RaftCmd::Propose(Box::new(cmd), tx))
            .await
            .map_err(|_| "the Raft replica stopped".to_string())?;
        match tokio::time::timeout(RAFT_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the Raft replica stopped".into()),
            Err(_) => Err(format!(
                "the change was not committed within {}s: the managers may have lost quorum",
                RAFT_WAIT.as_secs()
            )),
        }
    }

    /// Proposes `cmd`, tagged with the client's request id if it has one (applied once).
    pub async fn propose_as(
        &self,
        rid: Option<shoal_cluster::RequestId>,
        cmd: Command,
    ) -> Result<(), String> {
        match rid {
            Some(id) => {
                self.propose(Command::Tracked {
                    id,
                    cmd: Box::new(cmd),
                })
                .await
            }
            None => self.propose(cmd).await,
        }
    }

    /// The certificate this node presents and the cluster CA certificate (DER), for the TLS of
    /// the control API on TCP.
    pub(crate) fn tls_identity(&self) -> (NodeIdentity, Vec<u8>) {
        (
            self.identity.lock().expect("identity").clone(),
            self.ca_der.clone(),
        )
    }

    /// A linearizable read barrier on this node's replica (it must lead).
    pub(crate) async fn read_barrier(&self) -> Result<(), String> {
        let h = self.raft().ok_or("this node is not a manager")?;
        let (tx, rx) = oneshot::channel();
        h.tx.send(RaftCmd::Read(tx))
            .await
            .map_err(|_| "the Raft replica stopped".to_string())?;
        match tokio::time::timeout(RAFT_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the Raft replica stopped".into()),
            Err(_) => Err("the read was not confirmed in time".into()),
        }
    }

    /// Sends `Register` to `manager` until a leader accepts it, following the leader hints of
    /// refusals (the manager that admitted us may not lead).
    async fn register(&self, manager: u64, opts: &AgentOpts, within: Duration) -> Result<()> {
        let req = AgentRequest::Register {
            description: describe(&self.hostname, &self.executors),
            addr: self.advertise.to_string(),
            labels: opts.labels.clone(),
        };
        let bytes = wire::encode_request(&req);
        let deadline = Instant::now() + within;
        let mut target = manager;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.transport.request(target, &bytes).await {
                Ok(resp) => match wire::decode_response(&resp) {
                    Response::Ok { .. } => return Ok(()),
                    Response::Error { message } => {
                        if let Some((id, a)) = message
                            .strip_prefix("not the leader; leader is ")
                            .and_then(gossip::parse_swim_addr)
                        {
                            self.transport.hint_peer_addr(id, a);
                            target = id;
                            continue;
                        }
                        last = message;
                    }
                    _ => last = "unexpected answer".into(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(anyhow!("could not register with the managers: {last}"))
    }

    /// Members by SWIM state (`alive`, `suspect`, `dead`, `left`), this node included.
    fn members_by_state(&self) -> BTreeMap<String, usize> {
        let mut members: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.gossip.view.lock().expect("view").values() {
            let k = match m.state {
                State::Alive => "alive",
                State::Suspect => "suspect",
                State::Dead => "dead",
                State::Left => "left",
            };
            *members.entry(k.into()).or_default() += 1;
        }
        members
    }

    fn info(&self, listen: SocketAddr) -> crate::api::InfoView {
        let members = self.members_by_state();
        let ids = |set: &std::collections::BTreeSet<u64>| -> Vec<String> {
            set.iter().map(|v| node_id_string(*v)).collect()
        };
        let (leader, term, commit, applied, voters, outgoing, role) = match self.raft() {
            Some(h) => {
                let s = h.status.borrow().clone();
                (
                    s.leader.map(node_id_string).unwrap_or_default(),
                    s.term,
                    s.commit,
                    s.applied,
                    ids(&s.membership.voters),
                    ids(&s.membership.outgoing),
                    "manager",
                )
            }
            None => (String::new(), 0, 0, 0, Vec::new(), Vec::new(), "worker"),
        };
        crate::api::InfoView {
            swarm: "active".into(),
            node_id: node_id_string(self.id),
            cluster_id: self.cluster_id.to_string(),
            role: role.into(),
            leader,
            term,
            commit_index: commit,
            applied_index: applied,
            voters,
            outgoing_voters: outgoing,
            members,
            listen_addr: listen.to_string(),
        }
    }

    /// Fills in what this member contributes to a metrics scrape.
    fn fill_metrics(&self, snap: &mut crate::metrics::Snapshot) {
        use std::sync::atomic::Ordering::Relaxed;
        snap.active = true;
        snap.node_id = node_id_string(self.id);
        snap.cluster_id = self.cluster_id.to_string();
        snap.role = "worker".into();
        if let Some(h) = self.raft() {
            snap.role = "manager".into();
            snap.raft = Some(h.status.borrow().clone());
            let state = h.state.read().expect("state");
            for n in state.nodes().values() {
                *snap
                    .nodes
                    .entry((n.role.to_string(), n.status.state.to_string()))
                    .or_default() += 1;
            }
            snap.services = Some(state.services().len());
            for t in state.tasks().values() {
                *snap.tasks.entry(t.status.state.to_string()).or_default() += 1;
            }
        }
        if let Some(r) = self.runner() {
            snap.node_tasks = Some(r.counts());
            if let Some(mesh) = r.mesh() {
                snap.ingress = Some((mesh.ports(), mesh.stats()));
            }
        }
        snap.members = self.members_by_state();
        snap.swim = Some(*self.gossip.counters.lock().expect("counters"));
        let (raft_not_member, raft_malformed, raft_bad_snapshot) =
            snap.raft.as_ref().map_or((0, 0, 0), |r| {
                (
                    r.rejected_not_member,
                    r.rejected_malformed,
                    r.rejected_snapshots,
                )
            });
        let w = self.transport.stats();
        snap.transport = BTreeMap::from([
            ("sent", w.sent.load(Relaxed)),
            ("received", w.received.load(Relaxed)),
            ("queue_full", w.queue_full.load(Relaxed)),
            ("datagrams_dropped", w.datagrams_dropped.load(Relaxed)),
            ("inbound_dropped", w.inbound_dropped.load(Relaxed)),
            ("connects", w.connects.load(Relaxed)),
            ("connect_failures", w.connect_failures.load(Relaxed)),
            ("stalls", w.stalls.load(Relaxed)),
        ]);
        snap.transport_rejected = BTreeMap::from([
            ("oversized", w.oversized.load(Relaxed)),
            ("truncated", w.truncated.load(Relaxed)),
            ("unknown_version", w.unknown_version.load(Relaxed)),
            ("unknown_kind", w.unknown_kind.load(Relaxed)),
            ("malformed", w.malformed.load(Relaxed)),
            ("unauthenticated", w.unauthenticated.load(Relaxed)),
            ("unauth_conn_limit", w.unauth_conn_limit.load(Relaxed)),
            ("unauth_deadline", w.unauth_deadline.load(Relaxed)),
            (
                "not_a_member",
                self.rejected_not_member.load(Relaxed) + raft_not_member,
            ),
            ("malformed_raft", raft_malformed),
            ("bad_snapshot", raft_bad_snapshot),
        ]);
    }

    /// Gossip says these voters are alive (this node included).
    pub(crate) fn alive_voters(&self, voters: &std::collections::BTreeSet<u64>) -> usize {
        let view = self.gossip.view.lock().expect("view");
        voters
            .iter()
            .filter(|v| {
                **v == self.id
                    || view
                        .get(v)
                        .is_some_and(|m| matches!(m.state, State::Alive | State::Suspect))
            })
            .count()
    }
}

/// Routes what the transport receives: Raft traffic to the replica (starting one for a node
/// that is being promoted), gossip to SWIM, requests to the handlers.
async fn dispatch(m: Arc<Member>, mut inbound: Inbound) {
    let mut stop = m.stop.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = inbound.raft.recv() => match r {
                Some((from, bytes)) => {
                    m.sign_of_life(from);
                    m.to_raft(from, bytes).await
                }
                None => return,
            },
            r = inbound.snapshot.recv() => match r {
                Some((from, bytes)) => {
                    m.sign_of_life(from);
                    m.to_raft(from, bytes).await
                }
                None => return,
            },
            r = inbound.gossip.recv() => match r {
                Some((from, bytes)) => { let _ = m.gossip.tx.try_send(GossipCmd::Packet(from, bytes)); }
                None => return,
            },
            r = inbound.requests.recv() => match r {
                Some(req) => { tokio::spawn(tracing::Instrument::in_current_span(peer_request(m.clone(), req))); }
                None => return,
            },
        }
    }
}

impl Member {
    /// Raft traffic from a member gossip holds dead (a healed partition): SWIM exchanges state
    /// with it now instead of at its next reconnect round, so the node shows Ready at once.
    fn sign_of_life(&self, from: u64) {
        if gossip::holds_dead(&self.gossip.view, from) {
            let _ = self.gossip.tx.try_send(GossipCmd::SignOfLife(from));
        }
    }

    async fn to_raft(self: &Arc<Self>, from: u64, bytes: Vec<u8>) {
        let manager = self.transport.peer_role(from) == Some(pki::Role::Manager);
        let h = match self.raft() {
            Some(h) => h,
            None => {
                // Only a manager's certificate may start a replica here.
                if !manager {
                    self.rejected_not_member
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                // A leader replicating to us: we are being promoted. Not right after our
                // replica stopped (late messages from before the removal).
                let recently_stopped = self
                    .raft_stopped_at
                    .lock()
                    .expect("stopped")
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
                if recently_stopped {
                    return;
                }
                if !matches!(wire::decode_raft(&bytes), Ok(msg) if matches!(msg.body,
                    shoal_raft::MessageBody::Append { .. }
                    | shoal_raft::MessageBody::Heartbeat { .. }
                    | shoal_raft::MessageBody::Snapshot { .. }))
                {
                    return;
                }
                tracing::info!(leader = %node_id_string(from), "starting a Raft replica (promotion)");
                // A retired log kept only its term and vote: a new one starts with them.
                let (how, rejoin) = match self.data.unretire_raft() {
                    Ok(Some(r)) => (
                        Start::Rejoin {
                            term: r.term,
                            vote: r.vote,
                        },
                        true,
                    ),
                    Ok(None) => (Start::Existing, false),
                    Err(e) => {
                        tracing::warn!("cannot reactivate the Raft data: {e:#}");
                        return;
                    }
                };
                if let Err(e) = self.start_raft(how) {
                    tracing::warn!("cannot start a Raft replica: {e:#}");
                    return;
                }
                if rejoin {
                    if let Err(e) = self.data.clear_retired() {
                        tracing::warn!("cannot clear the retirement marker: {e:#}");
                    }
                }
                match self.raft() {
                    Some(h) => h,
                    None => return,
                }
            }
        };
        let _ = h.tx.send(RaftCmd::Step(from, manager, bytes)).await;
    }
}

async fn peer_request(m: Arc<Member>, req: IncomingRequest) {
    let resp = match &req.from {
        None => m.handle_join(&req.body, req.remote).await,
        Some(cert) if req.body.first() == Some(&wire::CONTROL_TAG) => {
            let cert = cert.clone();
            wire::encode_response(&match wire::decode_request(&req.body) {
                Ok(r) => m.peer_control(&cert, r).await,
                Err(e) => Response::error(e),
            })
        }
        Some(cert) => {
            let cert = cert.clone();
            m.handle_renewal(&cert, &req.body).await
        }
    };
    req.respond(resp);
}

impl Member {
    /// The join authority of a manager: the cluster CA and the current tokens, from the state.
    fn authority(&self) -> Result<JoinAuthority, String> {
        let h = self.raft().ok_or("this node is not a manager")?;
        let st = h.state.read().expect("state");
        let c = st.cluster().ok_or("the swarm is not initialized yet")?;
        let ca = ClusterCa::from_pem(&c.ca_pem).map_err(|e| e.to_string())?;
        let worker = JoinToken::from_str(&c.worker_token).map_err(|e| e.to_string())?;
        let manager = JoinToken::from_str(&c.manager_token).map_err(|e| e.to_string())?;
        // Removed nodes are refused by the transport's TLS layer before they can ask.
        JoinAuthority::new(ca, JoinTokens { worker, manager }).map_err(|e| e.to_string())
    }

    /// Admits a joining node: the token is checked here first (cheap refusals, no Raft, no
    /// signature), then the node is recorded through the leader, whose committed state checks the
    /// token again (a rotation committed first refuses it), and only then is its certificate
    /// signed. A manager cut off in a minority cannot commit, so it admits nobody. No lock on the
    /// cluster state is held while signing.
    async fn handle_join(&self, body: &[u8], remote: SocketAddr) -> Vec<u8> {
        let mut authority = match self.authority() {
            Ok(a) => a,
            Err(e) => return join::JoinResponse::refused(e).encode(),
        };
        let req = match join::PkiRequest::decode(body) {
            Ok(join::PkiRequest::Join(r)) if r.validate().is_ok() => r,
            // Malformed requests and renewals without a certificate: the authority refuses them
            // with its own words, and counts them.
            _ => return refusal(&mut authority, body),
        };
        let role = match authority.tokens.role_for_secret(&req.secret) {
            Some(r) if r == req.want => r,
            _ => return refusal(&mut authority, body),
        };
        let id = {
            let Some(h) = self.raft() else {
                return join::JoinResponse::refused("this node is not a manager").encode();
            };
            let st = h.state.read().expect("state");
            loop {
                let id = self.entropy.node_id();
                if st.node(id).is_none() && !st.is_removed(id) {
                    break id;
                }
            }
        };
        let admit = AgentRequest::Admit {
            id,
            hostname: req.hostname.clone(),
            addr: remote.to_string(),
            role: if role == pki::Role::Manager {
                Role::Manager
            } else {
                Role::Worker
            },
            secret: req.secret.iter().map(|b| format!("{b:02x}")).collect(),
        };
        if let Err(e) = self.admit_through_leader(admit).await {
            return join::JoinResponse::refused(format!(
                "the swarm could not record this node: {e}; run `shoal swarm join` again"
            ))
            .encode();
        }
        authority
            .handle_request(body, SystemTime::now(), || id)
            .response
    }

    /// Has the leader commit an admission (this node, if it leads), following leader changes
    /// for a few seconds.
    async fn admit_through_leader(&self, admit: AgentRequest) -> Result<(), String> {
        let bytes = wire::encode_request(&admit);
        let deadline = Instant::now() + Duration::from_secs(12);
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            let Some(h) = self.raft() else {
                return Err("this node is no longer a manager".into());
            };
            let leader = h.status.borrow().leader;
            match leader {
                Some(l) if l == self.id => return self.record_admission(admit).await,
                Some(l) => {
                    match tokio::time::timeout(
                        Duration::from_secs(11),
                        self.transport.request(l, &bytes),
                    )
                    .await
                    {
                        Ok(Ok(resp)) => match wire::decode_response(&resp) {
                            Response::Ok { .. } => return Ok(()),
                            Response::Error { message } if message == "not the leader" => {
                                last = message
                            }
                            Response::Error { message } => return Err(message),
                            _ => return Err("unexpected answer from the leader".into()),
                        },
                        Ok(Err(e)) => last = format!("cannot reach the leader: {e}"),
                        Err(_) => last = "the leader did not answer".into(),
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last)
    }

    /// On the leader: proposes the admission and waits until it is applied.
    async fn record_admission(&self, admit: AgentRequest) -> Result<(), String> {
        let AgentRequest::Admit {
            id,
            hostname,
            addr,
            role,
            secret,
        } = admit
        else {
            return Err("not an admission".into());
        };
        let mut description = describe(&hostname, &crate::worker::Executors::default());
        description.platform = Platform::default();
        description.resources = Resources::default();
        description.engine_version = String::new();
        self.propose(Command::AdmitNode {
            node: NewNode {
                id,
                description,
                addr,
                labels: Default::default(),
                desired_role: role,
            },
            secret,
            at_ms: now_ms(),
        })
        .await
    }

    /// Renews a member's certificate with the role the cluster state gives it: manager once
    /// its promotion completed (so that it can admit joining nodes), worker otherwise.
    async fn handle_renewal(&self, cert: &NodeCertificate, body: &[u8]) -> Vec<u8> {
        let role = self.raft().and_then(|h| {
            h.state
                .read()
                .expect("state")
                .node(cert.node_id)
                .map(|n| n.role)
        });
        let role = match role {
            Some(Role::Manager) => pki::Role::Manager,
            Some(Role::Worker) => pki::Role::Worker,
            None => return join::JoinResponse::refused("unknown node").encode(),
        };
        match self.authority() {
            Ok(mut a) => {
                a.handle_renewal_as(cert, body, SystemTime::now(), role)
                    .response
            }
            Err(e) => join::JoinResponse::refused(e).encode(),
        }
    }

    /// Keeps the certificate right: a node whose promotion completed gets a manager
    /// certificate (a joiner accepts only a manager's), a demoted node a worker one, and every
    /// certificate is renewed at a random moment between 50 % and 80 % of its validity. The
    /// role is decided by a manager from the cluster state, never by the node.
    /// Keeps this manager's key files in line with the swarm: the key-encryption key sealed
    /// with the replicated unlock key (or stored plain without one), a new data key whenever
    /// that key changes (what is written from then on, the next snapshot included, is sealed
    /// with it), and the data keys the log no longer uses forgotten.
    async fn keep_keys(&self) {
        let Some(h) = self.raft() else { return };
        if h.status.borrow().stopped {
            return;
        }
        let want = h
            .state
            .read()
            .expect("state")
            .cluster()
            .map(|c| c.unlock_key.clone())
            .unwrap_or_default();
        let want = if want.is_empty() {
            None
        } else {
            match shoal_cluster::parse_unlock_key(&want) {
                Ok(k) => Some(k),
                Err(_) => return,
            }
        };
        let applied = *self.keys_applied.lock().expect("keys applied") == Some(want);
        let ring = if applied {
            None
        } else {
            let mut keys = self.keys.lock().expect("keys");
            // Under autolock the node key is sealed with the key-encryption key too, so a copy
            // of the data directory holds no usable identity either.
            let mut done = true;
            match keys.kek_keyring() {
                Ok(kek) => {
                    let sealed = want.is_some();
                    if self.data.key_sealed().ok() != Some(sealed) {
                        if let Err(e) = self.data.set_key_form(&kek, sealed) {
                            done = false;
                            tracing::warn!(
                                "cannot {} the node key: {e:#}",
                                if sealed { "seal" } else { "unseal" }
                            );
                        }
                    } else {
                        self.data.set_key_seal(sealed.then_some(kek));
                    }
                }
                Err(e) => {
                    done = false;
                    tracing::warn!("cannot open the key-encryption key: {e:#}");
                }
            }
            if keys.unlock_key() == want {
                if done {
                    *self.keys_applied.lock().expect("keys applied") = Some(want);
                }
                None
            } else {
                if let Err(e) = keys.set_unlock_key(want) {
                    tracing::warn!("cannot seal the key-encryption key: {e:#}");
                    return;
                }
                if done {
                    *self.keys_applied.lock().expect("keys applied") = Some(want);
                }
                tracing::info!(
                    "autolock {}: the key-encryption key is {}",
                    if want.is_some() { "on" } else { "off" },
                    if want.is_some() {
                        "sealed with the swarm's unlock key"
                    } else {
                        "stored plain"
                    }
                );
                match keys.rotate() {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("cannot make a new data key: {e:#}");
                        None
                    }
                }
            }
        };
        use std::sync::atomic::Ordering;
        if let Some(ring) = ring {
            self.old_data_keys.store(true, Ordering::Relaxed);
            let _ = h.tx.send(RaftCmd::SetKeys(ring)).await;
        }
        if self.old_data_keys.load(Ordering::Relaxed) {
            let (tx, rx) = oneshot::channel();
            if h.tx.send(RaftCmd::KeysInUse(tx)).await.is_ok() {
                if let Ok(Ok(in_use)) = rx.await {
                    let keys = self.keys.lock().expect("keys");
                    match keys.forget_unused(&in_use) {
                        Ok(()) if in_use.len() <= 1 => {
                            self.old_data_keys.store(false, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                        Err(e) => tracing::warn!("cannot forget old data keys: {e:#}"),
                    }
                }
            }
        }
    }

    async fn maintain_certificate(&self) {
        let current = self.identity.lock().expect("identity").clone();
        let raft = self.raft();
        let (leader, observed, voter) = match &raft {
            Some(h) => {
                let status = h.status.borrow().clone();
                let st = h.state.read().expect("state");
                (
                    status.leader,
                    st.node(self.id).map(|n| n.role),
                    status.membership.is_voter(self.id),
                )
            }
            None => (None, None, false),
        };
        let demoted = raft.is_none() && self.raft_stopped_at.lock().expect("stopped").is_some();
        let planned = *self.renew_at.lock().expect("renew_at");
        let role =
            if voter && observed == Some(Role::Manager) && current.cert.role == pki::Role::Worker {
                pki::Role::Manager
            } else if demoted && current.cert.role == pki::Role::Manager {
                pki::Role::Worker
            } else if join::renewal_due(&current.cert, SystemTime::now(), planned) {
                current.cert.role
            } else {
                return;
            };
        let renewed = if leader == Some(self.id) {
            // The leader signs its own: it holds the CA.
            self.self_issue(&current, role)
        } else {
            let mut result = Err(anyhow!("no manager to renew with"));
            let mut targets: Vec<u64> = leader.into_iter().collect();
            for t in self.manager_candidates() {
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            for t in targets {
                result = join::renew_as(&self.transport, t, &current, &self.ca_der, role)
                    .await
                    .map_err(|e| anyhow!("{e}"));
                if result.is_ok() {
                    break;
                }
            }
            result
        };
        match renewed {
            Ok(new) => {
                if let Err(e) = self
                    .data
                    .save_key_and_cert(&new.key.to_pem(), &new.cert.to_pem())
                {
                    tracing::warn!("cannot save the renewed certificate: {e:#}");
                    return;
                }
                if let Err(e) = self.transport.set_identity(&new, &self.ca_der) {
                    tracing::warn!("cannot present the renewed certificate: {e}");
                    return;
                }
                *self.renew_at.lock().expect("renew_at") =
                    join::RenewalPlan::for_cert(&new.cert, &mut rand::thread_rng());
                tracing::info!(role = %new.cert.role, "certificate renewed");
                *self.identity.lock().expect("identity") = new;
            }
            Err(e) => tracing::debug!("certificate renewal not done yet: {e:#}"),
        }
    }

    /// Out of the configuration this node knows, and meant to be a worker: ask the leader
    /// whether the removal is done, and retire the replica if so.
    /// A replica out of touch with any leader for [`STALE_REPLICA_AFTER`] asks the managers whether
    /// it is still a member: a manager demoted or removed while it was down restarts its replica
    /// from a log that still counts it in, and no leader will ever contact it again. If the
    /// leader says it is no member, the replica stops and the node goes on as a worker.
    async fn check_stale_replica(&self) {
        let Some(h) = self.raft() else {
            *self.leaderless_since.lock().expect("leaderless") = None;
            return;
        };
        let (in_touch, stopped) = {
            let s = h.status.borrow();
            (s.in_touch(), s.stopped)
        };
        let since = {
            let mut l = self.leaderless_since.lock().expect("leaderless");
            if in_touch || stopped {
                *l = None;
                return;
            }
            *l.get_or_insert_with(Instant::now)
        };
        if since.elapsed() < STALE_REPLICA_AFTER {
            return;
        }
        let bytes = wire::encode_request(&AgentRequest::IsMember { node: self.id });
        for t in self.manager_candidates() {
            let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(2), self.transport.request(t, &bytes))
                    .await
            else {
                continue;
            };
            if let Response::Ok { message } = wire::decode_response(&resp) {
                if message == "false" {
                    tracing::warn!(
                        leader = %node_id_string(t),
                        "this manager's replica is out of the Raft group (it was demoted or removed while it was away): stopping it; this node goes on as a worker"
                    );
                    let _ = h.tx.send(RaftCmd::RemovedByLeader).await;
                }
                *self.leaderless_since.lock().expect("leaderless") = None;
                return;
            }
        }
    }

    /// A demoted manager's second retirement step: once the leader confirms its removal
    /// committed, the retired log and its data keys are deleted (only the term and vote stay).
    async fn forget_retired_log(&self) {
        if self.raft().is_some() || !self.data.retired_log_kept() {
            return;
        }
        let req = wire::encode_request(&AgentRequest::RemovalCommitted { node: self.id });
        let answer = self
            .ask_managers(&req, Duration::from_secs(3), |r| match r {
                Response::Ok { message } => Some(message),
                _ => None,
            })
            .await;
        if answer.as_deref() != Ok("true") || self.raft().is_some() {
            return;
        }
        let keys = self.keys.lock().expect("keys").clone();
        // The node key goes back to plain first: nothing will open it otherwise.
        let unsealed = if keys.exists() {
            keys.kek_keyring()
                .and_then(|kek| self.data.set_key_form(&kek, false))
        } else {
            Ok(())
        };
        let forgot = unsealed
            .and_then(|()| self.data.forget_retired_log())
            .and_then(|()| keys.destroy());
        *self.keys_applied.lock().expect("keys applied") = None;
        match forgot {
            Ok(()) => tracing::info!(
                "removal from the Raft group committed: the retired log and its keys are deleted (term and vote kept)"
            ),
            Err(e) => tracing::warn!("cannot delete the retired log: {e:#}"),
        }
    }

    async fn confirm_removal(&self) {
        let Some(h) = self.raft() else { return };
        let (leaving, leader) = {
            let s = h.status.borrow();
            (s.leaving && !s.stopped, s.leader)
        };
        let worker = h
            .state
            .read()
            .expect("state")
            .node(self.id)
            .is_none_or(|n| n.desired_role == Role::Worker);
        if !leaving || !worker {
            return;
        }
        let bytes = wire::encode_request(&AgentRequest::IsMember { node: self.id });
        let mut targets: Vec<u64> = leader.into_iter().filter(|l| *l != self.id).collect();
        for t in self.manager_candidates() {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        for t in targets {
            let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(3), self.transport.request(t, &bytes))
                    .await
            else {
                continue;
            };
            if let Response::Ok { message } = wire::decode_response(&resp) {
                if message == "false" {
                    let _ = h.tx.send(RaftCmd::Retire).await;
                }
                return;
            }
        }
    }

    fn self_issue(&self, current: &NodeIdentity, role: pki::Role) -> Result<NodeIdentity> {
        let h = self.raft().ok_or_else(|| anyhow!("not a manager"))?;
        let ca_pem = h
            .state
            .read()
            .expect("state")
            .cluster()
            .map(|c| c.ca_pem.clone())
            .ok_or_else(|| anyhow!("no cluster"))?;
        let ca = ClusterCa::from_pem(&ca_pem)?;
        let key = NodeKey::generate()?;
        let cert = ca.issue(
            &key.csr_der(current.cert.node_id)?,
            current.cert.node_id,
            role,
            DEFAULT_VALIDITY,
            SystemTime::now(),
        )?;
        Ok(NodeIdentity::new(cert, key)?)
    }

    /// Answers a request from another node, authorized by the role in the certificate it
    /// connected with: a worker may only register itself, say it leaves, and ask about itself;
    /// control requests need a manager's certificate and are then authorized by their origin.
    async fn peer_control(self: &Arc<Self>, from: &NodeCertificate, req: AgentRequest) -> Response {
        // A manager's certificate, or a voter of the latest configuration (a node just promoted
        // renews to a manager certificate within seconds; it is a manager already).
        let manager = from.role == pki::Role::Manager
            || self
                .raft()
                .is_some_and(|h| h.status.borrow().membership.is_voter(from.node_id));
        match req {
            AgentRequest::Control { .. } | AgentRequest::ToLeader { .. } if !manager => {
                Response::error(crate::control::NOT_A_MANAGER)
            }
            AgentRequest::Control { req: r, .. } | AgentRequest::ToLeader { req: r, .. }
                if matches!(
                    r,
                    Request::Info
                        | Request::Init { .. }
                        | Request::Join { .. }
                        | Request::Leave { .. }
                ) =>
            {
                // Lifecycle requests are local to a node; never accepted from a peer.
                Response::error("not accepted from a peer")
            }
            AgentRequest::Control { req, origin, .. }
            | AgentRequest::ToLeader { req, origin, .. }
                if !origin.may(&req) =>
            {
                Response::error(crate::control::NOT_A_MANAGER)
            }
            AgentRequest::Control { req, rid, origin } => {
                self.control_hop(req, rid, origin, false).await
            }
            AgentRequest::ToLeader { req, rid, origin } => {
                self.control_hop(req, rid, origin, true).await
            }
            AgentRequest::Register {
                description,
                addr,
                labels,
            } => {
                self.register_node(from.node_id, description, addr, labels)
                    .await
            }
            AgentRequest::Directory => match self.raft() {
                Some(h) => {
                    let st = h.state.read().expect("state");
                    let d = wire::Directory {
                        nodes: st
                            .nodes()
                            .values()
                            .filter(|n| !n.is_joining())
                            .map(|n| (n.id, n.addr.clone(), n.role == Role::Manager))
                            .collect(),
                        removed: st.removed().iter().copied().collect(),
                    };
                    Response::ok(serde_json::to_string(&d).unwrap_or_default())
                }
                None => Response::error("this node is not a manager"),
            },
            AgentRequest::Ping => Response::ok("pong"),
            AgentRequest::Assignments {
                session,
                seq,
                wait_ms,
            } => match self.raft() {
                Some(h) => {
                    self.sessions
                        .assignments(
                            &h,
                            from.node_id,
                            session,
                            seq,
                            Duration::from_millis(wait_ms),
                        )
                        .await
                }
                None => Response::error("this node is not a manager"),
            },
            AgentRequest::TaskStatus { reports } => {
                match self.record_reports(from.node_id, reports).await {
                    Ok(()) => Response::ok(""),
                    Err(e) => Response::error(e),
                }
            }
            AgentRequest::TaskLogs { .. } if !manager => {
                Response::error(crate::control::NOT_A_MANAGER)
            }
            AgentRequest::TaskLogs { tasks, tail } => match self.runner() {
                Some(r) if tasks.len() <= 100_000 => {
                    let lines = r.logs(&tasks, tail).await;
                    Response::ok(serde_json::to_string(&lines).unwrap_or_default())
                }
                Some(_) => Response::error("too many tasks in one logs request"),
                None => Response::error("this node runs no tasks"),
            },
            AgentRequest::ForwardTaskStatus { .. } if !manager => {
                Response::error(crate::control::NOT_A_MANAGER)
            }
            AgentRequest::ForwardTaskStatus { node, reports } => {
                let leads = self
                    .raft()
                    .is_some_and(|h| h.status.borrow().leader == Some(self.id));
                if !leads {
                    return Response::error("not the leader");
                }
                match self.record_reports(node, reports).await {
                    Ok(()) => Response::ok(""),
                    Err(e) => Response::error(e),
                }
            }
            AgentRequest::Admit { .. } if !manager => {
                Response::error(crate::control::NOT_A_MANAGER)
            }
            AgentRequest::Admit { .. } => {
                let leads = self
                    .raft()
                    .is_some_and(|h| h.status.borrow().leader == Some(self.id));
                if !leads {
                    return Response::error("not the leader");
                }
                match self.record_admission(req).await {
                    Ok(()) => Response::ok(""),
                    Err(e) => Response::error(e),
                }
            }
            AgentRequest::IsMember { node } if node != from.node_id && !manager => {
                Response::error("a worker may only ask about itself")
            }
            AgentRequest::RemovalCommitted { node } if node != from.node_id && !manager => {
                Response::error("a worker may only ask about itself")
            }
            AgentRequest::RemovalCommitted { node } => {
                let Some(h) = self.raft() else {
                    return Response::error("this node is not a manager");
                };
                if h.status.borrow().leader != Some(self.id) {
                    return Response::error("not the leader");
                }
                // Up to date with everything committed: the worker role recorded after the
                // node left the configuration means the removal itself committed (it comes
                // first in the log).
                if let Err(e) = self.read_barrier().await {
                    return Response::error(e);
                }
                let in_config = h.status.borrow().membership.contains(node);
                let worker = h
                    .state
                    .read()
                    .expect("state")
                    .node(node)
                    .is_none_or(|n| n.role == Role::Worker && n.desired_role == Role::Worker);
                Response::ok((!in_config && worker).to_string())
            }
            AgentRequest::IsMember { node } => match self.raft() {
                Some(h) => {
                    let status = h.status.borrow().clone();
                    if status.leader != Some(self.id) {
                        return Response::error("not the leader");
                    }
                    Response::ok(status.membership.contains(node).to_string())
                }
                None => Response::error("this node is not a manager"),
            },
            AgentRequest::Leaving { node } => {
                let Some(h) = self.raft() else {
                    return Response::error("this node is not a manager");
                };
                let status = h.status.borrow().clone();
                if from.node_id != node && !(manager && status.membership.is_voter(from.node_id)) {
                    return Response::error("only the node itself may say it leaves");
                }
                match status.leader {
                    Some(l) if l == self.id => {
                        let cmd = Command::SetStatus {
                            id: node,
                            status: shoal_cluster::NodeStatus {
                                state: shoal_cluster::NodeState::Down,
                                message: "node left the swarm".into(),
                            },
                            at_ms: now_ms(),
                        };
                        match self.propose(cmd).await {
                            Ok(()) => Response::ok(""),
                            Err(e) => Response::error(e),
                        }
                    }
                    Some(l) if from.node_id == node => {
                        let bytes = wire::encode_request(&AgentRequest::Leaving { node });
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            self.transport.request(l, &bytes),
                        )
                        .await
                        {
                            Ok(Ok(resp)) => wire::decode_response(&resp),
                            _ => Response::error("cannot reach the leader"),
                        }
                    }
                    _ => Response::error("no leader"),
                }
            }
        }
    }

    /// Records what a node admitted earlier (or restarted) reports: its labels on the first
    /// registration, UpdateDescription when its description or address changed. Forwarded to the leader if needed.
    async fn register_node(
        self: &Arc<Self>,
        id: u64,
        description: NodeDescription,
        addr: String,
        labels: Vec<(String, String)>,
    ) -> Response {
        let Some(h) = self.raft() else {
            return Response::error("this node is not a manager");
        };
        let leader = h.status.borrow().leader;
        if leader != Some(self.id) {
            // The leader takes the node's id and role from the certificate of the connection,
            // so the node itself must reach it: tell it where the leader is.
            return match leader {
                Some(l) => Response::error(format!(
                    "not the leader; leader is {}",
                    self.leader_swim_addr(l)
                )),
                None => Response::error("no leader yet"),
            };
        }
        let Some(existing) = h.state.read().expect("state").node(id).cloned() else {
            // Every certificate names a node recorded at admission: one the state does not
            // know was removed (or never admitted).
            return Response::error(REMOVED);
        };
        if existing.is_joining() && !labels.is_empty() {
            // First registration after the admission: its --label values.
            let update = shoal_cluster::NodeUpdate {
                labels_add: labels.iter().cloned().collect(),
                ..Default::default()
            };
            if let Err(e) = self
                .propose(Command::UpdateNode {
                    id,
                    update,
                    at_ms: now_ms(),
                })
                .await
            {
                return Response::error(e);
            }
        }
        if existing.description == description && existing.addr == addr {
            return Response::ok("");
        }
        let cmd = Command::UpdateDescription {
            id,
            description,
            addr,
            at_ms: now_ms(),
        };
        match self.propose(cmd).await {
            Ok(()) => Response::ok(""),
            Err(e) => Response::error(e),
        }
    }

    fn leader_swim_addr(&self, leader: u64) -> String {
        let addr = self.raft().and_then(|h| {
            h.state
                .read()
                .expect("state")
                .node(leader)
                .and_then(|n| n.addr.parse().ok())
        });
        match addr {
            Some(a) => gossip::swim_addr(leader, a),
            None => node_id_string(leader),
        }
    }
}

/// The authority's answer to a join request already known to be refused (malformed, wrong
/// token or role): its own words, counted. A request it would grant is never answered here
/// (nothing was recorded for it).
fn refusal(authority: &mut JoinAuthority, body: &[u8]) -> Vec<u8> {
    let out = authority.handle_request(body, SystemTime::now(), || 0);
    if out.joined.is_some() {
        return join::JoinResponse::refused("the join was not recorded; retry").encode();
    }
    out.response
}

/// How often the runtimes are checked (the container engine pinged).
const RUNTIME_CHECK: Duration = Duration::from_secs(2);

/// Checks the runtimes every [`RUNTIME_CHECK`]: when one goes away or comes back (the Docker
/// Engine stopped or started), the node registers its new description, so that the
/// orchestrator moves the runtime's tasks elsewhere or places them here again; a runtime that
/// comes back has what is left of tasks the node no longer runs removed.
async fn watch_runtimes(member: Weak<Member>, opts: AgentOpts) {
    loop {
        tokio::time::sleep(RUNTIME_CHECK).await;
        let Some(m) = member.upgrade() else { return };
        if *m.stop.borrow() {
            return;
        }
        if !opts.executors.check().await {
            continue;
        }
        let problems = opts.executors.problems();
        if problems.is_empty() {
            tracing::warn!("runtimes available again: {:?}", opts.executors.runtimes());
            let runner = m.runner.lock().expect("runner").clone();
            if let Some(r) = runner {
                r.sweep().await;
            }
        } else {
            tracing::warn!("runtimes unavailable: {}", problems.join("; "));
        }
        tokio::spawn(register_loop(m, opts.clone()));
    }
}

/// Re-registers after a restart (description or address may have changed), following the
/// leader hint in refusals.
async fn register_loop(m: Arc<Member>, opts: AgentOpts) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused_rounds = 0;
    for _ in 0..120 {
        if *m.stop.borrow() {
            return;
        }
        let mut tried = 0;
        let mut refused = 0;
        for t in m.manager_candidates() {
            tried += 1;
            match m.register(t, &opts, Duration::from_secs(3)).await {
                Ok(()) => return,
                Err(e) if removed_error(&format!("{e:#}")) => refused += 1,
                Err(e) => tracing::debug!("registration: {e:#}"),
            }
        }
        // Every manager refuses our certificate (it is valid and of this cluster, so the only
        // reason is the denylist), or says so: this node was removed. Do not come back.
        refused_rounds = if tried > 0 && refused == tried {
            refused_rounds + 1
        } else {
            0
        };
        if refused_rounds >= 3 {
            tracing::error!(
                "{REMOVED}: its certificate is denied by every manager; run `shoal swarm leave` and join again with a token"
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a failed exchange with a manager says this node is removed: the manager said so, or
/// refused our (valid, same-cluster) certificate in the handshake.
fn removed_error(message: &str) -> bool {
    message.contains(REMOVED)
        || message.contains("BadCertificate")
        || message.contains("bad certificate")
        || message.contains("is denied")
}

impl Member {
    /// Managers to talk to: the leader first if known, then the managers the replicated state
    /// (or a manager's directory) names, live ones first, then the seeds. Gossip says only who
    /// is alive, never who is a manager.
    pub(crate) fn manager_candidates(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut managers: Vec<u64> = self
            .known_managers
            .lock()
            .expect("managers")
            .iter()
            .copied()
            .collect();
        if let Some(h) = self.raft() {
            let status = h.status.borrow().clone();
            if let Some(l) = status.leader {
                out.push(l);
            }
            managers.extend(status.membership.voters.iter().copied());
            managers.extend(h.state.read().expect("state").managers().map(|n| n.id));
        }
        let view = self.gossip.view.lock().expect("view");
        let alive = |id: &u64| {
            view.get(id)
                .is_some_and(|m| matches!(m.state, State::Alive | State::Suspect))
        };
        managers.sort_by_key(|id| !alive(id));
        for id in managers {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        for id in &self.seed_managers {
            if !out.contains(id) {
                out.push(*id);
            }
        }
        // Last resort (a node that knows no manager yet, e.g. the founding node just demoted):
        // any live member; a worker answers such requests with a refusal, so nothing is taken
        // from gossip but whom to ask.
        for (id, m) in view.iter() {
            if matches!(m.state, State::Alive) && !out.contains(id) {
                out.push(*id);
            }
        }
        out.retain(|id| *id != self.id);
        // Nodes that just said they are no manager go last (a demoted manager stays in a
        // worker's list until its next directory refresh).
        let refused: std::collections::BTreeSet<u64> = {
            let mut n = self.not_managers.lock().expect("not managers");
            n.retain(|_, at| at.elapsed() < NOT_MANAGER_FOR);
            n.keys().copied().collect()
        };
        let (mut first, last): (Vec<u64>, Vec<u64>) =
            out.into_iter().partition(|id| !refused.contains(id));
        first.extend(last);
        first
    }

    /// Notes that `id` answered that it is no manager (or is out of touch): asked last for a
    /// while, and forgotten as a known manager.
    pub(crate) fn not_a_manager(&self, id: u64, message: &str) {
        if message.contains("not a manager")
            || message.contains("not a swarm manager")
            || message.contains("out of touch")
            || message.contains("knows no leader")
        {
            self.not_managers
                .lock()
                .expect("not managers")
                .insert(id, Instant::now());
            self.known_managers.lock().expect("managers").remove(&id);
        }
    }

    /// A worker learns from a manager where the nodes are, which are managers and which ids
    /// are removed: it pins those addresses (gossip cannot move them), denies the removed ids
    /// and keeps them on disk for its next start.
    async fn refresh_directory(&self) {
        if self.raft().is_some() {
            return;
        }
        let bytes = wire::encode_request(&AgentRequest::Directory);
        for t in self.manager_candidates().into_iter().take(6) {
            let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(3), self.transport.request(t, &bytes))
                    .await
            else {
                continue;
            };
            let message = match wire::decode_response(&resp) {
                Response::Ok { message } => message,
                Response::Error { message } => {
                    self.not_a_manager(t, &message);
                    continue;
                }
                _ => continue,
            };
            let Ok(d) = serde_json::from_str::<wire::Directory>(&message) else {
                continue;
            };
            let mut managers = std::collections::BTreeSet::new();
            for (id, addr, manager) in &d.nodes {
                if let Ok(a) = addr.parse() {
                    if *id != self.id {
                        self.transport.pin_peer_addr(*id, a);
                    }
                }
                if *manager {
                    managers.insert(*id);
                }
            }
            *self.known_managers.lock().expect("managers") = managers;
            let mut removed = self.data.load_removed();
            let before = removed.len();
            for id in &d.removed {
                self.transport.deny(*id);
                if !removed.contains(id) {
                    removed.push(*id);
                }
            }
            if removed.len() != before {
                removed.sort_unstable();
                if let Err(e) = self.data.save_removed(&removed) {
                    tracing::warn!("cannot save the removed node ids: {e:#}");
                }
            }
            return;
        }
    }
}

/// How long a node that said it is no manager is asked last.
const NOT_MANAGER_FOR: Duration = Duration::from_secs(10);

/// How long a replica may know no leader before it asks whether it is still a member.
const STALE_REPLICA_AFTER: Duration = Duration::from_secs(10);

/// How long the leader waits for a suspected node to answer before recording it Down.
const SUSPECT_CHECK: Duration = Duration::from_millis(500);

/// On the leader: a node that membership suspects is asked directly (a request over its QUIC
/// connection); if it does not answer within [`SUSPECT_CHECK`], twice, it is recorded Down at
/// once and its tasks are replaced, instead of waiting out the suspicion timeout (seconds on
/// the `lan` profile). Membership's indirect probes and the leader's own both failed, so a live
/// node is rarely caught; if it was, it refutes, membership says Alive and it is Ready again.
async fn check_suspects(m: std::sync::Weak<Member>) {
    let checking: Arc<Mutex<std::collections::BTreeSet<u64>>> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(m) = m.upgrade() else { return };
        if *m.stop.borrow() {
            return;
        }
        let Some(h) = m.raft() else { continue };
        if h.status.borrow().leader != Some(m.id) {
            continue;
        }
        let suspects: Vec<u64> = {
            let view = m.gossip.view.lock().expect("view");
            let st = h.state.read().expect("state");
            view.iter()
                .filter(|(id, info)| {
                    **id != m.id
                        && info.state == State::Suspect
                        && st
                            .node(**id)
                            .is_some_and(|n| n.status.state == shoal_cluster::NodeState::Ready)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in suspects {
            if !checking.lock().expect("checking").insert(id) {
                continue;
            }
            let (m, checking) = (m.clone(), checking.clone());
            tokio::spawn(async move {
                let ping = wire::encode_request(&AgentRequest::Ping);
                let mut answered = false;
                for _ in 0..2 {
                    let r =
                        tokio::time::timeout(SUSPECT_CHECK, m.transport.request(id, &ping)).await;
                    if matches!(r, Ok(Ok(_))) {
                        answered = true;
                        break;
                    }
                }
                let still_suspect = m
                    .gossip
                    .view
                    .lock()
                    .expect("view")
                    .get(&id)
                    .is_some_and(|i| i.state == State::Suspect);
                if !answered && still_suspect {
                    tracing::info!(node = %node_id_string(id), "suspected by membership and silent to the leader: recording it down");
                    let cmd = Command::SetStatus {
                        id,
                        status: shoal_cluster::NodeStatus {
                            state: shoal_cluster::NodeState::Down,
                            message: "heartbeat failure".into(),
                        },
                        at_ms: now_ms(),
                    };
                    if let Err(e) = m.propose(cmd).await {
                        tracing::debug!("recording a silent node down: {e}");
                    }
                }
                checking.lock().expect("checking").remove(&id);
            });
        }
    }
}

/// Background chores: notices a stopped replica (demotion) and retires its data; keeps the
/// certificate right; refreshes the seeds kept for the next start.
async fn housekeeping(m: std::sync::Weak<Member>, mut node: NodeFile) {
    let mut last_seeds = node.seeds.clone();
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some(m) = m.upgrade() else { return };
        ticks += 1;
        if ticks.is_multiple_of(8) {
            m.maintain_certificate().await;
        }
        if ticks.is_multiple_of(4) {
            m.confirm_removal().await;
        }
        if ticks.is_multiple_of(4) {
            m.check_stale_replica().await;
        }
        if ticks.is_multiple_of(8) {
            m.refresh_directory().await;
        }
        if ticks.is_multiple_of(4) {
            m.keep_keys().await;
            m.forget_retired_log().await;
        }
        let stopped = m.raft().is_some_and(|h| h.status.borrow().stopped);
        if stopped {
            let (term, vote) = m
                .raft()
                .map(|h| {
                    let s = h.status.borrow();
                    (s.term, s.vote)
                })
                .unwrap_or_default();
            if let Some(h) = m.raft() {
                // Remember who the managers are: a worker asks them from now on.
                let managers = h
                    .state
                    .read()
                    .expect("state")
                    .managers()
                    .map(|n| n.id)
                    .filter(|id| *id != m.id)
                    .collect();
                *m.known_managers.lock().expect("managers") = managers;
            }
            drop(m.take_raft());
            *m.raft_stopped_at.lock().expect("stopped") = Some(Instant::now());
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Keep the term and vote, and nothing else: the node id is also its Raft id, and a
            // node promoted again must never vote twice in a term. It comes back with an empty
            // log as a learner and votes only once caught up, so the log itself (the CA key,
            // the tokens, the secrets) and its data keys go.
            if let Err(e) = m.data.retire_raft(term, vote) {
                tracing::warn!("cannot mark the Raft data retired after demotion: {e:#}");
            }
            let _ = m
                .gossip
                .tx
                .send(GossipCmd::SetMeta(Meta { manager: false }))
                .await;
            tracing::info!("demoted: this node is a worker now");
        }
        if ticks.is_multiple_of(8) {
            // Every live member can bring a restarted node back into the membership: keep them
            // all (managers first), so that a node that runs no replica after a restart still
            // knows whom to contact.
            let mut seeds: Vec<String> = m
                .gossip
                .view
                .lock()
                .expect("view")
                .iter()
                .filter(|(id, i)| **id != m.id && matches!(i.state, State::Alive))
                .filter_map(|(id, i)| i.addr.map(|a| gossip::swim_addr(*id, a)))
                .collect();
            seeds.sort();
            if !seeds.is_empty() && seeds != last_seeds {
                node.seeds = seeds.clone();
                if m.data.save_node(&node).is_ok() {
                    last_seeds = seeds;
                }
            }
        }
    }
}

/// Parses `--label` values.
pub fn parse_labels(specs: &[String]) -> Result<Vec<(String, String)>, String> {
    specs
        .iter()
        .map(|s| parse_label(s).map_err(|e| e.to_string()))
        .collect()
}
