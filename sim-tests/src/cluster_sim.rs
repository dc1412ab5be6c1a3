//! Full-stack simulation: five real agents — Raft replica with its WAL, SWIM, the QUIC
//! transport with mutual TLS, the control logic — on turmoil's simulated network and clock.
//! While a client promotes, demotes and labels nodes through random agents, the simulation
//! partitions nodes and crashes and restarts hosts. Then everything heals, and it checks:
//!
//! - at most one leader per term (every agent's view, sampled every 10 ms);
//! - a restarted manager, and a manager whose cut from the leader is repaired, hears from the
//!   leader (its replica reports that leader and term) within [`CONTACT_WINDOW`] — checked only
//!   when the two stayed up and connected and the leader stayed in office with a majority
//!   throughout the window, skipped (and counted) otherwise;
//! - once reconciled, the Raft voters are exactly the nodes whose observed role is manager, and
//!   every node's observed role is its desired role;
//! - every label update that was acknowledged is in the state;
//! - a leader is back within two minutes of the healing.
//!
//! Every host is a simulated machine ([`SimExecutor`]) that its agent runs tasks on; it keeps
//! its tasks across a crash of the agent (the restarted agent re-adopts them) unless the crash
//! is a machine crash (a third of them), which ends them. While a leader exists the client also
//! creates, scales, updates and removes services (long-running ones, replicated or global, some
//! reserving memory; some that fail and may be restarted twice; some that complete and are
//! never restarted). After the healing, within [`CONVERGE_WINDOW`] (then again
//! [`STABLE_WINDOW`] later, with no task created in between), the services converge — see
//! [`crate::cluster_services`]: every acknowledged change applied; each replicated service with
//! exactly its replicas running on Ready nodes, one per slot; each global service once on every
//! Ready, Active node; no node's reservations above its memory; the failing services settled
//! within their restart attempts; and the machines run exactly the tasks the state wants
//! running there, each slot once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_agent::api::{NodeUpdateRequest, NodeView, Request, Response};
use shoal_agent::sim_executor::SimExecutor;
use shoal_cluster::ClusterState;

use crate::agent_hosts::{self, call, form, host_with_machine, name, nodes, until, Shared};
use crate::cluster_services::Workload;
use crate::rng::Rng;

/// Hosts in the simulation.
pub const NODES: usize = 5;

/// How long the services may take to converge after the cluster reconciled (simulated).
pub const CONVERGE_WINDOW: Duration = Duration::from_secs(60);

/// How long a converged cluster is watched for changes afterwards (simulated).
pub const STABLE_WINDOW: Duration = Duration::from_secs(10);

/// How long a restarted or reconnected manager may take to hear from a stable leader
/// (simulated time): a few election timeouts (0.5–1 s each).
pub const CONTACT_WINDOW: Duration = Duration::from_secs(3);

/// How long a restarted manager's check waits for a leader to take office, if none led at the
/// restart.
const LEADER_WAIT: Duration = Duration::from_secs(10);

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
    /// Contact checks made after a manager's restart (it heard from the leader in time).
    pub contact_after_restart: usize,
    /// Contact checks made after a manager's cut from the leader was repaired.
    pub contact_after_heal: usize,
    /// Contact checks skipped, by reason (the window was not healthy throughout, …).
    pub contact_skipped: BTreeMap<String, usize>,
    /// The longest time a checked manager took to hear from the leader, in simulated seconds.
    pub contact_slowest_s: f64,
    /// Crashes that were machine crashes (their tasks ended).
    pub machine_crashes: usize,
    /// Service creations acknowledged.
    pub services_created: usize,
    /// Service updates (spec changes, scaling) acknowledged.
    pub services_updated: usize,
    /// Service removals acknowledged.
    pub services_removed: usize,
    /// Service requests not acknowledged.
    pub services_unacked: usize,
    /// Tasks started on the machines.
    pub tasks_started: u64,
    /// Tasks running at the end.
    pub tasks_running: usize,
    /// Simulated seconds from the reconciled cluster to converged services.
    pub converge_s: f64,
}

/// The applied state of the replica leading in the highest term seen.
async fn leader_state(shared: &Shared) -> Option<ClusterState> {
    let leader = {
        let s = shared.lock().expect("shared");
        s.seen
            .iter()
            .filter(|(_, x)| x.is_leader)
            .max_by_key(|(_, x)| x.term)
            .map(|(h, _)| h.clone())
    }?;
    agent_hosts::cluster_state(shared, &leader).await
}

fn leader_exists(shared: &Shared) -> bool {
    shared
        .lock()
        .expect("shared")
        .seen
        .values()
        .any(|x| x.is_leader)
}

/// Some live agent's linearizable node list.
async fn any_nodes(shared: &Shared) -> Option<Vec<NodeView>> {
    for i in 0..NODES {
        if let Some(n) = nodes(shared, &name(i)).await {
            return Some(n);
        }
    }
    None
}

fn reconciled(list: &[NodeView]) -> bool {
    agent_hosts::reconciled(list, NODES)
}

/// The client: forms the cluster, runs the workload while `chaos` is set, then checks.
#[allow(clippy::too_many_arguments)]
async fn client(
    shared: Shared,
    machines: Vec<SimExecutor>,
    chaos: Arc<AtomicBool>,
    healed: Arc<AtomicBool>,
    contacts_pending: Arc<AtomicUsize>,
    seed: u64,
    chaos_secs: u64,
    report: Arc<Mutex<ClusterSimReport>>,
) -> Result<(), String> {
    let long = Duration::from_secs(60);
    // Form: n1 inits; n2, n3 join as managers, n4, n5 as workers.
    form(&shared, 3, NODES - 3).await?;
    let memory = until(long, || async {
        let st = agent_hosts::cluster_state(&shared, "n1").await?;
        st.nodes()
            .values()
            .map(|n| n.description.resources.memory_bytes)
            .min()
    })
    .await
    .unwrap_or(0);
    let mut services = Workload::new(memory);

    // Workload under faults.
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    let mut acked: Vec<(String, String)> = Vec::new();
    chaos.store(true, Ordering::SeqCst);
    let end = tokio::time::Instant::now() + Duration::from_secs(chaos_secs);
    let mut seq = 0u64;
    while tokio::time::Instant::now() < end {
        let via = name(rng.below(NODES as u64) as usize);
        if rng.below(2) == 0
            && leader_exists(&shared)
            && services.step(&shared, &via, &mut rng).await
        {
            tokio::time::sleep(Duration::from_millis(50 + rng.below(250))).await;
            continue;
        }
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
    {
        let mut r = report.lock().expect("report");
        r.acked_updates = acked.len();
        r.services_created = services.figures.created;
        r.services_updated = services.figures.updated;
        r.services_removed = services.figures.removed;
        r.services_unacked = services.figures.unacked;
    }

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
    // Let the contact checks of the healing (restarts, repairs) finish their windows.
    until(CONTACT_WINDOW + Duration::from_secs(1), || async {
        (contacts_pending.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    converge(&shared, &machines, &services, &report).await
}

/// Hosts that run a Raft replica although the leader's configuration has no such voter (a
/// diagnosis for failure reports).
fn stale_replicas(shared: &Shared) -> String {
    let s = shared.lock().expect("shared");
    let Some(l) = s
        .seen
        .values()
        .filter(|x| x.is_leader)
        .max_by_key(|x| x.term)
    else {
        return String::new();
    };
    let stale: Vec<String> = s
        .seen
        .iter()
        .filter(|(_, x)| !l.voters.contains(&x.id))
        .map(|(h, x)| {
            format!(
                "{h} (term {}, leader {})",
                x.term,
                x.leader.map_or("none".into(), |l| format!("{l:016x}"))
            )
        })
        .collect();
    if stale.is_empty() {
        String::new()
    } else {
        format!(
            " [replicas running outside the leader's configuration: {}]",
            stale.join(", ")
        )
    }
}

/// The services converge to what was acknowledged within [`CONVERGE_WINDOW`], and stay so.
async fn converge(
    shared: &Shared,
    machines: &[SimExecutor],
    services: &Workload,
    report: &Mutex<ClusterSimReport>,
) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    let last = Mutex::new(String::from("no leader state"));
    let ok = agent_hosts::until_every(CONVERGE_WINDOW, Duration::from_millis(500), || async {
        let Some(st) = leader_state(shared).await else {
            *last.lock().expect("last") = "no leader state".into();
            return None;
        };
        match services.check(&st, machines) {
            Ok(running) => Some((st, running)),
            Err(why) => {
                *last.lock().expect("last") = why;
                None
            }
        }
    })
    .await;
    let Some((st, running)) = ok else {
        return Err(format!(
            "services did not converge within {} s: {}{}",
            CONVERGE_WINDOW.as_secs(),
            last.lock().expect("last"),
            stale_replicas(shared)
        ));
    };
    {
        let mut r = report.lock().expect("report");
        r.converge_s = start.elapsed().as_secs_f64();
        r.tasks_running = running.len();
    }
    // Converged stays converged: nothing new, nothing replaced.
    let newest = st.tasks().keys().max().copied().unwrap_or(0);
    tokio::time::sleep(STABLE_WINDOW).await;
    let st = leader_state(shared)
        .await
        .ok_or("no leader after converging")?;
    let again = services
        .check(&st, machines)
        .map_err(|e| format!("converged, then {} s later: {e}", STABLE_WINDOW.as_secs()))?;
    if again != running {
        let show = |a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>| {
            a.keys()
                .filter(|id| !b.contains_key(id))
                .map(|id| {
                    let t = st.tasks().get(id);
                    let svc = t
                        .and_then(|t| st.service(t.service))
                        .map_or("?", |s| s.spec.name.as_str());
                    match t {
                        Some(t) => {
                            let node = t.node.and_then(|n| st.node(n)).map_or_else(
                                || "no node".to_string(),
                                |n| {
                                    format!(
                                        "{} {} {:?}",
                                        n.description.hostname, n.status.state, n.availability
                                    )
                                },
                            );
                            let version = st.service(t.service).map_or_else(
                                || "service gone".to_string(),
                                |s| {
                                    format!(
                                        "task spec v{} of service v{}",
                                        t.spec_version, s.version
                                    )
                                },
                            );
                            format!(
                                "{id:016x} ({svc} slot {}, {} / {}: {} {}; on {node}; {version})",
                                t.slot, t.desired, t.status.state, t.status.message, t.status.err
                            )
                        }
                        None => format!("{id:016x} (gone)"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "converged, then {} s later the running tasks changed: ended {}; new {}",
            STABLE_WINDOW.as_secs(),
            show(&running, &again),
            show(&again, &running)
        ));
    }
    if let Some(t) = st.tasks().values().find(|t| t.id > newest) {
        let svc = st.service(t.service).map_or("?", |s| s.spec.name.as_str());
        return Err(format!(
            "converged, then task {:016x} of {svc} (slot {}) was created",
            t.id, t.slot
        ));
    }
    Ok(())
}

/// What each agent sees (stale reads: no leader needed), for failure reports.
async fn views(shared: &Shared) -> String {
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

/// Why a manager must hear from the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// Its host restarted.
    Restart,
    /// Its cut from the leader was repaired: how long that cut lasted, and how long the two
    /// were cut apart in all over the last 30 s (earlier cuts leave QUIC backing off too).
    Heal(Duration, Duration),
}

/// A manager that must hear from the leader within [`CONTACT_WINDOW`].
struct Contact {
    node: usize,
    cause: Cause,
    /// When the node restarted or its cut was repaired.
    at: Duration,
    /// The leader it must hear from, once one is in office.
    leader: Option<InOffice>,
}

/// A leader in office: its host, node id and term, and when the window began (the restart or
/// repair, or the first reading of the leader after it).
#[derive(Clone, Copy)]
struct InOffice {
    host: usize,
    id: u64,
    term: u64,
    since: Duration,
}

/// The faults the driver has in place: crashed hosts and cut pairs (a superset of the real
/// cuts: a repair of (a, b) also repairs a listed (b, a)).
struct Faults<'a> {
    crashed: &'a BTreeSet<usize>,
    cut: &'a [(usize, usize)],
}

impl Faults<'_> {
    fn up(&self, h: usize) -> bool {
        !self.crashed.contains(&h)
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a == b || !(self.cut.contains(&(a, b)) || self.cut.contains(&(b, a)))
    }
}

/// Checks that restarted and reconnected managers hear from a stable leader in time; an
/// instance whose window is not healthy throughout is skipped, never flagged.
#[derive(Default)]
struct ContactChecker {
    pending: Vec<Contact>,
    after_restart: usize,
    after_heal: usize,
    skipped: BTreeMap<String, usize>,
    slowest: Duration,
    violation: Option<String>,
}

impl ContactChecker {
    fn skip(&mut self, why: &str) {
        *self.skipped.entry(why.to_string()).or_default() += 1;
    }

    /// `node` just restarted, or its cut from the leader was just repaired.
    fn begin(&mut self, node: usize, cause: Cause, now: Duration) {
        self.pending.push(Contact {
            node,
            cause,
            at: now,
            leader: None,
        });
    }

    /// The leader `c` must hear from: the only live replica that leads, once there is one (a
    /// repair is checked only if one led at the repair; a restart waits up to
    /// [`LEADER_WAIT`] for one). `Err` skips the instance.
    fn leader_for(
        c: &Contact,
        now: Duration,
        agents: &agent_hosts::Agents,
        faults: &Faults<'_>,
    ) -> Result<Option<InOffice>, &'static str> {
        if !faults.up(c.node) {
            return Err("the node crashed");
        }
        let leaders: Vec<(usize, &agent_hosts::Seen)> = (0..NODES)
            .filter(|&h| faults.up(h))
            .filter_map(|h| agents.seen.get(&name(h)).map(|s| (h, s)))
            .filter(|(_, s)| s.is_leader)
            .collect();
        let [(host, ls)] = leaders[..] else {
            return match c.cause {
                Cause::Heal(..) => Err("no single leader at the repair"),
                Cause::Restart if now >= c.at + LEADER_WAIT => Err("no leader within 10 s"),
                Cause::Restart => Ok(None),
            };
        };
        if host == c.node {
            return Err("the node itself leads");
        }
        if !agents
            .ids
            .get(&name(c.node))
            .is_some_and(|id| ls.voters.contains(id))
        {
            return Err("not a voter (a worker, or demoted)");
        }
        if matches!(c.cause, Cause::Heal(..)) {
            let x = agents.seen.get(&name(c.node));
            if x.is_some_and(|x| x.leader == Some(ls.id) && x.term == ls.term) {
                // The cut was too short to be noticed: nothing to recover.
                return Err("still followed the leader at the repair");
            }
        }
        Ok(Some(InOffice {
            host,
            id: ls.id,
            term: ls.term,
            since: now,
        }))
    }

    /// Why `c`'s window is not healthy now, if it is not.
    fn unhealthy(
        c: &Contact,
        l: &InOffice,
        agents: &agent_hosts::Agents,
        faults: &Faults<'_>,
    ) -> Option<&'static str> {
        if !faults.up(c.node) {
            return Some("the node crashed");
        }
        if !faults.up(l.host) {
            return Some("the leader crashed");
        }
        if !faults.connected(c.node, l.host) {
            return Some("cut from the leader");
        }
        let Some(ls) = agents.seen.get(&name(l.host)) else {
            return Some("leadership changed");
        };
        if !ls.is_leader || ls.term != l.term {
            return Some("leadership changed");
        }
        let other_leader = (0..NODES).any(|h| {
            h != l.host && faults.up(h) && agents.seen.get(&name(h)).is_some_and(|s| s.is_leader)
        });
        if other_leader {
            return Some("leadership changed");
        }
        let id = agents.ids.get(&name(c.node))?;
        if !ls.voters.contains(id) {
            return Some("no longer a voter");
        }
        let with_leader = ls
            .voters
            .iter()
            .filter(|&&v| {
                (0..NODES).any(|h| {
                    agents.ids.get(&name(h)) == Some(&v)
                        && faults.up(h)
                        && faults.connected(h, l.host)
                })
            })
            .count();
        if with_leader * 2 <= ls.voters.len() {
            return Some("the leader lost its majority");
        }
        None
    }

    /// Settles the pending instances that heard from the leader, whose window stopped being
    /// healthy, or whose window ended without contact (a violation).
    fn step(&mut self, now: Duration, agents: &agent_hosts::Agents, faults: &Faults<'_>) {
        for mut c in std::mem::take(&mut self.pending) {
            if c.leader.is_none() {
                match Self::leader_for(&c, now, agents, faults) {
                    Ok(Some(l)) => c.leader = Some(l),
                    Ok(None) => {
                        self.pending.push(c);
                        continue;
                    }
                    Err(why) => {
                        self.skip(why);
                        continue;
                    }
                }
            }
            let Some(l) = c.leader else { continue };
            let seen = agents.seen.get(&name(c.node));
            if let Some(x) = seen {
                if x.at > c.at && x.leader == Some(l.id) && x.term == l.term {
                    match c.cause {
                        Cause::Restart => self.after_restart += 1,
                        Cause::Heal(..) => self.after_heal += 1,
                    }
                    self.slowest = self.slowest.max(x.at.saturating_sub(l.since));
                    continue;
                }
            }
            if let Some(why) = Self::unhealthy(&c, &l, agents, faults) {
                self.skip(why);
                continue;
            }
            if now >= l.since + CONTACT_WINDOW {
                if self.violation.is_none() {
                    let at = c.at.as_secs_f64();
                    let what = match c.cause {
                        Cause::Restart => format!("restarted at {at:.3} s"),
                        Cause::Heal(cut, recent) => format!(
                            "reconnected to the leader at {at:.3} s after a cut of {:.3} s; \
                             cut apart {:.3} s in all over the last 30 s",
                            cut.as_secs_f64(),
                            recent.as_secs_f64()
                        ),
                    };
                    let last = match seen {
                        Some(x) => format!(
                            "leader {} term {} at {:.3} s",
                            x.leader.map_or("none".into(), |l| format!("{l:016x}")),
                            x.term,
                            x.at.as_secs_f64()
                        ),
                        None => "no replica".into(),
                    };
                    self.violation = Some(format!(
                        "{} ({what}) did not hear from the leader {} ({:016x}, term {}, in \
                         office since {:.3} s at the latest) within {} s although both were up \
                         and connected and the leader kept office and a majority throughout; \
                         its last reading: {last}",
                        name(c.node),
                        name(l.host),
                        l.id,
                        l.term,
                        l.since.as_secs_f64(),
                        CONTACT_WINDOW.as_secs()
                    ));
                }
                continue;
            }
            self.pending.push(c);
        }
    }
}

/// How long `x` and `y` were cut apart (in either listing order) during the `span` before `now`,
/// overlapping cuts counted once.
fn cut_within(
    log: &[(usize, usize, Duration, Duration)],
    x: usize,
    y: usize,
    now: Duration,
    span: Duration,
) -> Duration {
    let from = now.saturating_sub(span);
    let mut spans: Vec<(Duration, Duration)> = log
        .iter()
        .filter(|(a, b, _, _)| (*a, *b) == (x, y) || (*a, *b) == (y, x))
        .map(|&(_, _, s, e)| (s.max(from), e))
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort();
    let (mut total, mut reach) = (Duration::ZERO, from);
    for (s, e) in spans {
        let s = s.max(reach);
        if e > s {
            total += e - s;
            reach = e;
        }
    }
    total
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
    let shared = Shared::default();
    let machines: Vec<SimExecutor> = (0..NODES).map(|_| SimExecutor::new()).collect();
    for (i, m) in machines.iter().enumerate() {
        host_with_machine(
            &mut sim,
            i,
            opts.seed,
            tmp.path().join(name(i)),
            shared.clone(),
            m.clone(),
        );
    }
    let chaos = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
    let contacts_pending = Arc::new(AtomicUsize::new(0));
    let result = Arc::new(Mutex::new(None::<Result<(), String>>));
    {
        let (shared, machines, chaos, healed, pending, report, result) = (
            shared.clone(),
            machines.clone(),
            chaos.clone(),
            healed.clone(),
            contacts_pending.clone(),
            report.clone(),
            result.clone(),
        );
        let (seed, secs) = (opts.seed, opts.chaos_secs);
        sim.client("ctl", async move {
            let r = client(shared, machines, chaos, healed, pending, seed, secs, report).await;
            *result.lock().expect("result") = Some(r);
            Ok(())
        });
    }
    let mut rng = Rng::new(opts.seed);
    let mut next_fault = Duration::ZERO;
    let mut crashed: BTreeSet<usize> = BTreeSet::new();
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let mut was_chaos = false;
    let mut contacts = ContactChecker::default();
    // When each listed cut was made, and the cuts repaired so far (pair, start, end).
    let mut cut_at: BTreeMap<(usize, usize), Duration> = BTreeMap::new();
    let mut cut_log: Vec<(usize, usize, Duration, Duration)> = Vec::new();
    let outcome = loop {
        match sim.step() {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(format!("simulation error: {e}")),
        }
        let now = sim.elapsed();
        let in_chaos = chaos.load(Ordering::SeqCst);
        // Restarted hosts and repaired pairs of this step, for the contact check.
        let mut restarted: Vec<usize> = Vec::new();
        let mut repaired: Vec<(usize, usize, Duration)> = Vec::new();
        if in_chaos && now >= next_fault {
            next_fault = now + Duration::from_millis(1000 + rng.below(3000));
            let mut r = report.lock().expect("report");
            match rng.below(4) {
                // Restart what is down, or heal a cut.
                0 => {
                    if let Some(&h) = crashed.iter().next() {
                        sim.bounce(name(h));
                        crashed.remove(&h);
                        restarted.push(h);
                    } else if let Some((a, b)) = cut.pop() {
                        sim.repair(name(a), name(b));
                        repaired.push((a, b, cut_at.remove(&(a, b)).unwrap_or(now)));
                    }
                }
                // Crash one host (at most two down at once).
                1 => {
                    let h = rng.below(NODES as u64) as usize;
                    if crashed.len() < 2 && !crashed.contains(&h) {
                        sim.crash(name(h));
                        if rng.below(3) == 0 {
                            machines[h].kill_all();
                            r.machine_crashes += 1;
                        }
                        shared.lock().expect("shared").seen.remove(&name(h));
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
                            cut_at.insert((a, b), now);
                        }
                    }
                    r.partitions += 1;
                }
            }
        }
        if was_chaos && !in_chaos {
            for (a, b) in cut.drain(..) {
                sim.repair(name(a), name(b));
                repaired.push((a, b, cut_at.remove(&(a, b)).unwrap_or(now)));
            }
            for h in std::mem::take(&mut crashed) {
                sim.bounce(name(h));
                restarted.push(h);
            }
            healed.store(true, Ordering::SeqCst);
        }
        was_chaos = in_chaos;
        {
            let agents = shared.lock().expect("shared");
            let faults = Faults {
                crashed: &crashed,
                cut: &cut,
            };
            for h in restarted {
                contacts.begin(h, Cause::Restart, now);
            }
            for &(a, b, since) in &repaired {
                cut_log.push((a, b, since, now));
            }
            for (a, b, since) in repaired {
                // The healed link matters to the end that is not the leader.
                for (x, y) in [(a, b), (b, a)] {
                    let y_leads = agents.seen.get(&name(y)).is_some_and(|s| s.is_leader);
                    if y_leads && faults.up(y) {
                        let recent = cut_within(&cut_log, x, y, now, Duration::from_secs(30));
                        contacts.begin(x, Cause::Heal(now - since, recent), now);
                    }
                }
            }
            contacts.step(now, &agents, &faults);
            contacts_pending.store(contacts.pending.len(), Ordering::SeqCst);
        }
    };
    for _ in std::mem::take(&mut contacts.pending) {
        contacts.skip("the simulation ended");
    }
    let mut report = report.lock().expect("report").clone();
    let leaders = shared.lock().expect("shared").leaders.clone();
    report.terms_with_leader = leaders.len();
    report.tasks_started = machines.iter().map(|m| m.starts()).sum();
    report.contact_after_restart = contacts.after_restart;
    report.contact_after_heal = contacts.after_heal;
    report.contact_skipped = contacts.skipped;
    report.contact_slowest_s = contacts.slowest.as_secs_f64();
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
    report.failure = two_leaders.or(contacts.violation).or(failure);
    report
}
