//! Real agents on turmoil hosts, shared by the full-stack simulations (`cluster_sim`,
//! `restart_sim`): starting an agent on a host (again after each restart), calling it,
//! watching its Raft replica every 10 ms of simulated time, and forming a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_agent::agent::{Agent, AgentOpts};
use shoal_agent::api::{NodeView, Request, Response};
use shoal_agent::sim_executor::SimExecutor;
use shoal_agent::store::DataDir;
use shoal_agent::worker::Executors;
use shoal_cluster::{ClusterState, Role};
use tokio::sync::{mpsc, oneshot};

/// The UDP port every agent listens on.
pub const PORT: u16 = 4242;

/// A request to an agent and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// A request for the cluster state an agent's replica has applied, and where it goes.
pub type StateCall = oneshot::Sender<Option<ClusterState>>;

/// What a host's watcher last read from its agent's Raft replica.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The agent's node id.
    pub id: u64,
    /// The leader the replica knows (set only by a message from that leader).
    pub leader: Option<u64>,
    /// The replica's term.
    pub term: u64,
    /// Whether the replica leads.
    pub is_leader: bool,
    /// The voters of the latest configuration the replica knows.
    pub voters: BTreeSet<u64>,
    /// Simulated time of the reading (since the simulation started).
    pub at: Duration,
}

/// State shared by the hosts, the simulation's client and its driver.
#[derive(Default)]
pub struct Agents {
    /// Host name → its agent's request channel (replaced on restart).
    pub agents: BTreeMap<String, mpsc::UnboundedSender<Call>>,
    /// Host name → where its agent takes requests for its applied cluster state.
    pub states: BTreeMap<String, mpsc::UnboundedSender<StateCall>>,
    /// Term → the nodes seen leading it.
    pub leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// Host name → the latest reading of its replica (absent while it runs none; removed by
    /// the driver when the host crashes).
    pub seen: BTreeMap<String, Seen>,
    /// Host name → its node id, once its replica has been seen.
    pub ids: BTreeMap<String, u64>,
}

/// The agents' shared state.
pub type Shared = Arc<Mutex<Agents>>;

/// The name of host `i` (0-based): `n1`, `n2`, …
pub fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// Simulated time since the start of the simulation, as seen from inside it.
pub fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Adds host `i` (named [`name`]`(i)`) running a real agent on the data directory `dir`, which
/// survives its crashes. Its randomness derives from `seed` and `i`, so a seed replays.
pub fn host(sim: &mut turmoil::Sim<'_>, i: usize, seed: u64, dir: PathBuf, shared: Shared) {
    host_with_gossip(sim, i, seed, dir, shared, true, None);
}

/// [`host`] whose agent runs tasks on `machine`, the host's simulated machine: one
/// [`SimExecutor`] kept across the agent's restarts, so that a restarted agent re-adopts the
/// tasks it left running.
pub fn host_with_machine(
    sim: &mut turmoil::Sim<'_>,
    i: usize,
    seed: u64,
    dir: PathBuf,
    shared: Shared,
    machine: SimExecutor,
) {
    host_with_gossip(sim, i, seed, dir, shared, true, Some(machine));
}

/// [`host`] with SWIM's `local` profile (fast, what the simulations use) or, with
/// `local_gossip` false, the `lan` profile operators run (seconds to declare a member dead);
/// with a `machine`, its agent runs tasks on it (else it has no runtime).
pub fn host_with_gossip(
    sim: &mut turmoil::Sim<'_>,
    i: usize,
    seed: u64,
    dir: PathBuf,
    shared: Shared,
    local_gossip: bool,
    machine: Option<SimExecutor>,
) {
    let hn = name(i);
    sim.host(hn.clone(), move || {
        let (hn, dir, shared) = (hn.clone(), dir.clone(), shared.clone());
        let executors = match &machine {
            Some(m) => Executors(vec![Arc::new(m.clone())]),
            None => Executors::default(),
        };
        async move {
            let data = DataDir::open(&dir)?;
            let opts = AgentOpts {
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
                advertise: Some(SocketAddr::new(turmoil::lookup(hn.as_str()), PORT)),
                hostname: hn.clone(),
                labels: Vec::new(),
                local_gossip,
                simulated: true,
                fsync: false,
                seed: Some(seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 + 1)),
                wal_faults: Default::default(),
                executors,
                ingress: None,
            };
            let agent = Agent::start(data, opts).await?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
            let (stx, mut srx) = mpsc::unbounded_channel::<StateCall>();
            {
                let mut s = shared.lock().expect("shared");
                s.agents.insert(hn.clone(), tx);
                s.states.insert(hn.clone(), stx);
            }
            tokio::spawn(watch(agent.clone(), hn.clone(), shared.clone()));
            let a = agent.clone();
            tokio::spawn(async move {
                while let Some(reply) = srx.recv().await {
                    let _ = reply.send(a.cluster_state().await);
                }
            });
            while let Some((req, reply)) = rx.recv().await {
                let a = agent.clone();
                tokio::spawn(async move {
                    let _ = reply.send(a.handle(req, None).await);
                });
            }
            Ok(())
        }
    });
}

/// Reads the agent's Raft status every 10 ms (simulated) into the shared state.
async fn watch(agent: Arc<Agent>, hn: String, shared: Shared) {
    loop {
        let status = agent.raft_status().await;
        {
            let mut s = shared.lock().expect("shared");
            match status {
                Some((id, st)) => {
                    if st.leader == Some(id) {
                        s.leaders.entry(st.term).or_default().insert(id);
                    }
                    s.ids.insert(hn.clone(), id);
                    let seen = Seen {
                        id,
                        leader: st.leader,
                        term: st.term,
                        is_leader: st.is_leader,
                        voters: st.membership.voters.clone(),
                        at: sim_now(),
                    };
                    s.seen.insert(hn.clone(), seen);
                }
                None => {
                    s.seen.remove(&hn);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a request to the agent on host `h`; `None` if it is down or does not answer in time.
pub async fn call(shared: &Shared, h: &str, req: Request, within: Duration) -> Option<Response> {
    let tx = shared.lock().expect("shared").agents.get(h).cloned()?;
    let (rtx, rrx) = oneshot::channel();
    tx.send((req, rtx)).ok()?;
    tokio::time::timeout(within, rrx).await.ok()?.ok()
}

/// The cluster state the agent on host `h` has applied; `None` if it is down, runs no replica
/// or does not answer within 5 s.
pub async fn cluster_state(shared: &Shared, h: &str) -> Option<ClusterState> {
    let tx = shared.lock().expect("shared").states.get(h).cloned()?;
    let (rtx, rrx) = oneshot::channel();
    tx.send(rtx).ok()?;
    tokio::time::timeout(Duration::from_secs(5), rrx)
        .await
        .ok()?
        .ok()?
}

/// Polls `f` every `every` (simulated) until it gives a value or `limit` passes.
pub async fn until_every<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `f` every 200 ms (simulated) until it gives a value or `limit` passes.
pub async fn until<T, F, Fut>(limit: Duration, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    until_every(limit, Duration::from_millis(200), f).await
}

/// Host `h`'s node list: linearizable (through the leader) unless `stale`.
pub async fn node_list(
    shared: &Shared,
    h: &str,
    stale: bool,
    within: Duration,
) -> Option<Vec<NodeView>> {
    match call(shared, h, Request::NodeList { stale }, within).await? {
        Response::Nodes { nodes, .. } => Some(nodes),
        _ => None,
    }
}

/// Host `h`'s linearizable node list (15 s allowed).
pub async fn nodes(shared: &Shared, h: &str) -> Option<Vec<NodeView>> {
    node_list(shared, h, false, Duration::from_secs(15)).await
}

/// Reconciled: `total` nodes, observed role = desired role everywhere, and the voters (nodes
/// with a manager status) are exactly the managers.
pub fn reconciled(list: &[NodeView], total: usize) -> bool {
    list.len() == total
        && list.iter().all(|n| {
            n.role == n.desired_role && (n.role == "manager") != n.manager_status.is_empty()
        })
}

/// Forms a cluster of the first `managers + workers` hosts once their agents run: `n1` inits,
/// the next `managers - 1` join with the manager token, the rest with the worker token; then
/// waits (up to 120 s) until every node is Ready and the cluster is reconciled.
pub async fn form(shared: &Shared, managers: usize, workers: usize) -> Result<(), String> {
    let total = managers + workers;
    let long = Duration::from_secs(60);
    until(long, || async {
        (shared.lock().expect("shared").agents.len() >= total).then_some(())
    })
    .await
    .ok_or("the agents did not start")?;
    let init = Request::Init {
        advertise_addr: None,
        force_new_cluster: false,
        autolock: false,
    };
    match call(shared, "n1", init, long).await {
        Some(Response::Ok { .. }) => {}
        other => return Err(format!("init failed: {other:?}")),
    }
    let token = |role| async move {
        let req = Request::JoinToken {
            role,
            rotate: false,
        };
        match call(shared, "n1", req, long).await {
            Some(Response::Token { token, .. }) => Ok(token),
            other => Err(format!("join-token failed: {other:?}")),
        }
    };
    let (mt, wt) = (token(Role::Manager).await?, token(Role::Worker).await?);
    let manager_addr = SocketAddr::new(turmoil::lookup("n1"), PORT).to_string();
    for i in 1..total {
        let t = if i < managers { mt.clone() } else { wt.clone() };
        let req = Request::Join {
            token: t,
            remote_addr: manager_addr.clone(),
        };
        match call(shared, &name(i), req, long).await {
            Some(Response::Ok { .. }) => {}
            other => return Err(format!("{} could not join: {other:?}", name(i))),
        }
    }
    until(Duration::from_secs(120), || async {
        let list = nodes(shared, "n1").await?;
        (reconciled(&list, total)
            && list.iter().filter(|n| n.role == "manager").count() == managers
            && list.iter().all(|n| n.status == "Ready"))
        .then_some(())
    })
    .await
    .ok_or_else(|| "the cluster did not form".to_string())
}
