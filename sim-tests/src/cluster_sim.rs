//! Full-stack simulation: five real agents — Raft replica with its WAL, SWIM, the QUIC
//! transport with mutual TLS, the control logic — on turmoil's simulated network and clock.
//! While a client promotes, demotes and labels nodes through random agents, the simulation
//! partitions nodes and crashes and restarts hosts. Then everything heals, and it checks:
//!
//! - at most one leader per term (every agent's view, sampled every 10 ms);
//! - once reconciled, the Raft voters are exactly the nodes whose observed role is manager, and
//!   every node's observed role is its desired role;
//! - every label update that was acknowledged is in the state;
//! - a leader is back within two minutes of the healing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_agent::agent::{Agent, AgentOpts};
use shoal_agent::api::{NodeUpdateRequest, NodeView, Request, Response};
use shoal_agent::store::DataDir;
use shoal_cluster::Role;
use tokio::sync::{mpsc, oneshot};

use crate::rng::Rng;

const PORT: u16 = 4242;
const NODES: usize = 5;

type Call = (Request, oneshot::Sender<Response>);

/// Options of one run.
#[derive(Clone, Debug)]
pub struct ClusterSimOptions {
    /// Seed of the faults, the workload and turmoil.
    pub seed: u64,
    /// Simulated seconds of faults and workload.
    pub chaos_secs: u64,
}

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct ClusterSimReport {
    /// Seed.
    pub seed: u64,
    /// Why the run failed, if it did.
    pub failure: Option<String>,
    /// Label updates acknowledged (all checked at the end).
    pub acked_updates: usize,
    /// Requests refused or failed (quorum loss, no leader, …): allowed, counted.
    pub refused: usize,
    /// The refusals' messages, counted (ids masked).
    pub refusals: BTreeMap<String, usize>,
    /// Promotions and demotions acknowledged.
    pub role_changes: usize,
    /// Hosts crashed (and restarted).
    pub crashes: usize,
    /// Partitions made (and healed).
    pub partitions: usize,
    /// Distinct terms in which a leader was seen.
    pub terms_with_leader: usize,
    /// Simulated seconds from the healing to a reconciled cluster.
    pub recovery_s: f64,
}

#[derive(Default)]
struct Shared {
    /// Host name → its agent's request channel (replaced on restart).
    agents: BTreeMap<String, mpsc::UnboundedSender<Call>>,
    /// Term → the nodes seen leading it.
    leaders: BTreeMap<u64, BTreeSet<u64>>,
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn host(sim: &mut turmoil::Sim<'_>, i: usize, seed: u64, dir: PathBuf, shared: Arc<Mutex<Shared>>) {
    let hn = name(i);
    sim.host(hn.clone(), move || {
        let (hn, dir, shared) = (hn.clone(), dir.clone(), shared.clone());
        async move {
            let data = DataDir::open(&dir)?;
            let opts = AgentOpts {
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
                advertise: Some(SocketAddr::new(turmoil::lookup(hn.as_str()), PORT)),
                hostname: hn.clone(),
                labels: Vec::new(),
                local_gossip: true,
                simulated: true,
                fsync: false,
                seed: Some(seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 + 1)),
                wal_faults: Default::default(),
            };
            let agent = Agent::start(data, opts).await?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
            shared.lock().expect("shared").agents.insert(hn.clone(), tx);
            let watcher = agent.clone();
            let seen = shared.clone();
            tokio::spawn(async move {
                loop {
                    if let Some((id, s)) = watcher.raft_status().await {
                        if s.leader == Some(id) {
                            seen.lock()
                                .expect("shared")
                                .leaders
                                .entry(s.term)
                                .or_default()
                                .insert(id);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
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

/// Sends a request to the agent on host `h`; `None` if it is down or does not answer in time.
async fn call(
    shared: &Arc<Mutex<Shared>>,
    h: &str,
    req: Request,
    within: Duration,
) -> Option<Response> {
    let tx = shared.lock().expect("shared").agents.get(h).cloned()?;
    let (rtx, rrx) = oneshot::channel();
    tx.send((req, rtx)).ok()?;
    tokio::time::timeout(within, rrx).await.ok()?.ok()
}

/// Polls `f` every 200 ms (simulated) until it gives a value or `limit` passes.
async fn until<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn nodes(shared: &Arc<Mutex<Shared>>, h: &str) -> Option<Vec<NodeView>> {
    match call(
        shared,
        h,
        Request::NodeList { stale: false },
        Duration::from_secs(15),
    )
    .await?
    {
        Response::Nodes { nodes, .. } => Some(nodes),
        _ => None,
    }
}

/// Some live agent's linearizable node list.
async fn any_nodes(shared: &Arc<Mutex<Shared>>) -> Option<Vec<NodeView>> {
    for i in 0..NODES {
        if let Some(n) = nodes(shared, &name(i)).await {
            return Some(n);
        }
    }
    None
}

/// Reconciled: observed role = desired role everywhere, and the voters (nodes with a manager
/// status) are exactly the managers.
fn reconciled(list: &[NodeView]) -> bool {
    list.len() == NODES
        && list.iter().all(|n| {
            n.role == n.desired_role && (n.role == "manager") != n.manager_status.is_empty()
        })
}

/// The client: forms the cluster, runs the workload while `chaos` is set, then checks.
async fn client(
    shared: Arc<Mutex<Shared>>,
    chaos: Arc<AtomicBool>,
    healed: Arc<AtomicBool>,
    seed: u64,
    chaos_secs: u64,
    report: Arc<Mutex<ClusterSimReport>>,
) -> Result<(), String> {
    let long = Duration::from_secs(60);
    until(long, || async {
        (shared.lock().expect("shared").agents.len() == NODES).then_some(())
    })
    .await
    .ok_or("the agents did not start")?;
    // Form: n1 inits; n2, n3 join as managers, n4, n5 as workers.
    match call(
        &shared,
        "n1",
        Request::Init {
            advertise_addr: None,
            force_new_cluster: false,
        },
        long,
    )
    .await
    {
        Some(Response::Ok { .. }) => {}
        other => return Err(format!("init failed: {other:?}")),
    }
    let token = |role| {
        let shared = shared.clone();
        async move {
            match call(
                &shared,
                "n1",
                Request::JoinToken {
                    role,
                    rotate: false,
                },
                long,
            )
            .await
            {
                Some(Response::Token { token, .. }) => Ok(token),
                other => Err(format!("join-token failed: {other:?}")),
            }
        }
    };
    let (mt, wt) = (token(Role::Manager).await?, token(Role::Worker).await?);
    let manager_addr = SocketAddr::new(turmoil::lookup("n1"), PORT).to_string();
    for i in 1..NODES {
        let t = if i < 3 { mt.clone() } else { wt.clone() };
        let req = Request::Join {
            token: t,
            remote_addr: manager_addr.clone(),
        };
        match call(&shared, &name(i), req, long).await {
            Some(Response::Ok { .. }) => {}
            other => return Err(format!("{} could not join: {other:?}", name(i))),
        }
    }
    until(Duration::from_secs(120), || async {
        let list = nodes(&shared, "n1").await?;
        (reconciled(&list)
            && list.iter().filter(|n| n.role == "manager").count() == 3
            && list.iter().all(|n| n.status == "Ready"))
        .then_some(())
    })
    .await
    .ok_or("the cluster did not form")?;

    // Workload under faults.
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    let mut acked: Vec<(String, String)> = Vec::new();
    chaos.store(true, Ordering::SeqCst);
    let end = tokio::time::Instant::now() + Duration::from_secs(chaos_secs);
    let mut seq = 0u64;
    while tokio::time::Instant::now() < end {
        let via = name(rng.below(NODES as u64) as usize);
        let target = name(rng.below(NODES as u64) as usize);
        let roll = rng.below(10);
        let req = match roll {
            0..=5 => {
                seq += 1;
                Request::NodeUpdate {
                    node: target.clone(),
                    update: NodeUpdateRequest {
                        label_add: vec![format!("k{seq}=v")],
                        ..Default::default()
                    },
                }
            }
            6 | 7 => Request::NodePromote {
                node: target.clone(),
            },
            _ => Request::NodeDemote {
                node: target.clone(),
            },
        };
        let answer = call(&shared, &via, req, Duration::from_secs(20)).await;
        {
            let mut r = report.lock().expect("report");
            match answer {
                Some(Response::Ok { .. }) if roll <= 5 => acked.push((target, format!("k{seq}"))),
                Some(Response::Ok { .. }) => r.role_changes += 1,
                other => {
                    r.refused += 1;
                    let why = match other {
                        Some(Response::Error { message }) => mask_ids(&message),
                        None => "no answer (host down or timeout)".into(),
                        Some(x) => format!("unexpected {x:?}"),
                    };
                    *r.refusals.entry(why).or_default() += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(250))).await;
    }
    chaos.store(false, Ordering::SeqCst);
    report.lock().expect("report").acked_updates = acked.len();

    // Heal (the main loop repairs and restarts), then check.
    until(long, || async {
        healed.load(Ordering::SeqCst).then_some(())
    })
    .await
    .ok_or("never healed")?;
    let healed_at = tokio::time::Instant::now();
    let list = until(Duration::from_secs(120), || async {
        let list = any_nodes(&shared).await?;
        reconciled(&list).then_some(list)
    })
    .await;
    let Some(list) = list else {
        return Err(format!(
            "no reconciled cluster within 120 s of healing (no leader, or voters ≠ managers); views: {}",
            views(&shared).await
        ));
    };
    report.lock().expect("report").recovery_s = healed_at.elapsed().as_secs_f64();
    let managers = list.iter().filter(|n| n.role == "manager").count();
    if managers == 0 {
        return Err("no manager left".into());
    }
    // Every acknowledged update is there (linearizable reads through any agent).
    let mut by_node: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for n in &list {
        by_node.insert(n.hostname.clone(), n.labels.clone());
    }
    for (node, key) in &acked {
        if !by_node.get(node).is_some_and(|l| l.contains_key(key)) {
            return Err(format!("acknowledged update lost: label {key} on {node}"));
        }
    }
    Ok(())
}

/// What each agent sees (stale reads: no leader needed), for failure reports.
async fn views(shared: &Arc<Mutex<Shared>>) -> String {
    let mut out = Vec::new();
    for i in 0..NODES {
        let list = call(
            shared,
            &name(i),
            Request::NodeList { stale: true },
            Duration::from_secs(5),
        )
        .await;
        let seen = match list {
            Some(Response::Nodes { nodes, .. }) => nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}:{}/{}:{}:{}",
                        n.hostname, n.role, n.desired_role, n.manager_status, n.status
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
            Some(Response::Error { message }) => message,
            other => format!("{other:?}"),
        };
        let info = match call(shared, &name(i), Request::Info, Duration::from_secs(5)).await {
            Some(Response::Info(v)) => format!(
                "leader {} term {} commit {} voters {:?}",
                v.leader, v.term, v.commit_index, v.voters
            ),
            other => format!("{other:?}"),
        };
        out.push(format!("{}: [{seen}] {info}", name(i)));
    }
    out.join(" | ")
}

/// Replaces hex ids (16 digits) and numbers in a message, so that refusals group.
fn mask_ids(m: &str) -> String {
    m.split(' ')
        .map(|w| {
            if w.len() >= 16 && w.chars().take(16).all(|c| c.is_ascii_hexdigit()) {
                "<id>"
            } else if !w.is_empty() && w.chars().all(|c| c.is_ascii_digit()) {
                "<n>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one seed.
pub fn run(opts: &ClusterSimOptions) -> ClusterSimReport {
    let report = Arc::new(Mutex::new(ClusterSimReport {
        seed: opts.seed,
        ..Default::default()
    }));
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            return ClusterSimReport {
                seed: opts.seed,
                failure: Some(format!("no temp dir: {e}")),
                ..Default::default()
            }
        }
    };
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(opts.chaos_secs + 600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .udp_capacity(65536)
        .rng_seed(opts.seed)
        .build();
    let shared = Arc::new(Mutex::new(Shared::default()));
    for i in 0..NODES {
        host(
            &mut sim,
            i,
            opts.seed,
            tmp.path().join(name(i)),
            shared.clone(),
        );
    }
    let chaos = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
    let result = Arc::new(Mutex::new(None::<Result<(), String>>));
    {
        let (shared, chaos, healed, report, result) = (
            shared.clone(),
            chaos.clone(),
            healed.clone(),
            report.clone(),
            result.clone(),
        );
        let (seed, secs) = (opts.seed, opts.chaos_secs);
        sim.client("ctl", async move {
            let r = client(shared, chaos, healed, seed, secs, report).await;
            *result.lock().expect("result") = Some(r);
            Ok(())
        });
    }
    let mut rng = Rng::new(opts.seed);
    let mut next_fault = Duration::ZERO;
    let mut crashed: BTreeSet<usize> = BTreeSet::new();
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let mut was_chaos = false;
    let outcome = loop {
        match sim.step() {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(format!("simulation error: {e}")),
        }
        let now = sim.elapsed();
        let in_chaos = chaos.load(Ordering::SeqCst);
        if in_chaos && now >= next_fault {
            next_fault = now + Duration::from_millis(1000 + rng.below(3000));
            let mut r = report.lock().expect("report");
            match rng.below(4) {
                // Restart what is down, or heal a cut.
                0 => {
                    if let Some(&h) = crashed.iter().next() {
                        sim.bounce(name(h));
                        crashed.remove(&h);
                    } else if let Some((a, b)) = cut.pop() {
                        sim.repair(name(a), name(b));
                    }
                }
                // Crash one host (at most two down at once).
                1 => {
                    let h = rng.below(NODES as u64) as usize;
                    if crashed.len() < 2 && !crashed.contains(&h) {
                        sim.crash(name(h));
                        crashed.insert(h);
                        r.crashes += 1;
                    }
                }
                // Cut one node off from two others.
                _ => {
                    let a = rng.below(NODES as u64) as usize;
                    for _ in 0..2 {
                        let b = rng.below(NODES as u64) as usize;
                        if a != b && !cut.contains(&(a, b)) {
                            sim.partition(name(a), name(b));
                            cut.push((a, b));
                        }
                    }
                    r.partitions += 1;
                }
            }
        }
        if was_chaos && !in_chaos {
            for (a, b) in cut.drain(..) {
                sim.repair(name(a), name(b));
            }
            for h in std::mem::take(&mut crashed) {
                sim.bounce(name(h));
            }
            healed.store(true, Ordering::SeqCst);
        }
        was_chaos = in_chaos;
    };
    let mut report = report.lock().expect("report").clone();
    let leaders = shared.lock().expect("shared").leaders.clone();
    report.terms_with_leader = leaders.len();
    let failure = match (outcome, result.lock().expect("result").take()) {
        (Err(e), _) => Some(e),
        (Ok(()), Some(Err(e))) => Some(e),
        (Ok(()), None) => Some("the client did not finish".into()),
        (Ok(()), Some(Ok(()))) => None,
    };
    let two_leaders = leaders
        .iter()
        .find(|(_, ids)| ids.len() > 1)
        .map(|(t, ids)| format!("two leaders in term {t}: {ids:?}"));
    report.failure = two_leaders.or(failure);
    report
}
