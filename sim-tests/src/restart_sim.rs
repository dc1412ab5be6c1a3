//! Restarts and partitions of three real managers (Raft + WAL + SWIM + QUIC with mutual TLS,
//! the hosts of [`crate::agent_hosts`]) on turmoil's simulated network and clock: how soon a
//! restarted or reconnected manager follows the leader again, and how soon a leader is elected
//! when the leader is lost right after a restart. Every bound is on simulated time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent_hosts::{self, form, name, node_list, sim_now, until_every, Shared};
use crate::rng::Rng;
use shoal_agent::api::{NodeUpdateRequest, Request, Response};

const MANAGERS: usize = 3;

/// What a scenario does to the three managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Crash a follower, restart it a few seconds later: it must report the leader and term
    /// the other managers report within [`FOLLOW_WITHIN`] of its restart.
    FollowerRestart,
    /// Crash the leader; once the others elected a new one, restart the old leader: it must
    /// follow the new leader within [`FOLLOW_WITHIN`] of its restart.
    LeaderRestart,
    /// Restart a follower, then crash the leader 0–2 s later: the two left must elect a leader
    /// within [`ELECT_WITHIN`] of the crash (the peers' stale connections to the restarted
    /// follower once kept them leaderless for more than 30 s).
    RestartThenLeaderCrash,
    /// Cut the leader off from both other managers for this long (plus up to 1 s drawn from
    /// the seed, so that repairs fall at different phases of the transport's retries), then
    /// repair: within [`FOLLOW_WITHIN`] of the repair the old leader must follow the new one,
    /// and within [`READY_WITHIN`] the new leader's node list must show it Ready.
    LeaderPartition(Duration),
    /// With SWIM's `lan` profile (seconds before gossip declares a member dead), cut a follower
    /// off from both other managers and ask it for a write a second later: once the election
    /// wait is over it must answer [`CUT_OFF_REFUSAL`], counting the managers it hears from,
    /// not those gossip still believes in.
    CutOffRefusal,
}

/// What a manager cut off from the two others answers a write.
pub const CUT_OFF_REFUSAL: &str = "no leader: 1 of 3 managers reachable, 2 needed";

/// How soon a restarted or reconnected manager must follow the leader (simulated).
pub const FOLLOW_WITHIN: Duration = Duration::from_secs(2);
/// How soon the survivors must elect a leader once the leader crashed (simulated).
pub const ELECT_WITHIN: Duration = Duration::from_secs(5);
/// How soon the new leader must show a reconnected old leader Ready (simulated).
pub const READY_WITHIN: Duration = Duration::from_secs(2);

/// What a scenario measured, in simulated time.
#[derive(Clone, Debug, Default)]
pub struct RestartReport {
    /// From the restart, crash or repair to the condition checked.
    pub took: Duration,
    /// What happened, for the test's output.
    pub detail: String,
}

/// A fault the client asks the driver (which owns the simulation) to apply.
enum Fault {
    Crash(String),
    Bounce(String),
    Partition(String, String),
    Repair(String, String),
}

/// Faults asked for, and the simulated times at which the driver applied them.
#[derive(Default)]
struct Faults {
    asked: Vec<Fault>,
    applied: Vec<Duration>,
}

type Control = Arc<Mutex<Faults>>;

/// Asks the driver for `f` and waits until it is applied; returns when it was (simulated).
async fn fault(ctl: &Control, f: Fault) -> Duration {
    let n = {
        let mut c = ctl.lock().expect("control");
        c.asked.push(f);
        c.asked.len() - 1
    };
    loop {
        if let Some(&at) = ctl.lock().expect("control").applied.get(n) {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The leader `hosts` agree on: exactly one of them leads, and every other one reports it as
/// its leader in the same term. Returns its host, node id and term.
fn agreed(shared: &Shared, hosts: &[String]) -> Option<(String, u64, u64)> {
    let s = shared.lock().expect("shared");
    let seen: Vec<_> = hosts
        .iter()
        .map(|h| s.seen.get(h).map(|x| (h, x)))
        .collect::<Option<_>>()?;
    let leaders: Vec<_> = seen.iter().filter(|(_, x)| x.is_leader).collect();
    let [(lh, l)] = leaders[..] else { return None };
    seen.iter()
        .all(|(_, x)| x.leader == Some(l.id) && x.term == l.term)
        .then(|| ((*lh).clone(), l.id, l.term))
}

/// Whether `h`'s replica, read after `since`, reports `leader` (node id) in `term`.
fn follows(shared: &Shared, h: &str, since: Duration, leader: u64, term: u64) -> bool {
    let s = shared.lock().expect("shared");
    s.seen
        .get(h)
        .is_some_and(|x| x.at > since && x.leader == Some(leader) && x.term == term)
}

/// What `hosts` report, for failure messages.
fn readings(shared: &Shared, hosts: &[String]) -> String {
    let s = shared.lock().expect("shared");
    hosts
        .iter()
        .map(|h| match s.seen.get(h) {
            Some(x) => format!(
                "{h}: leader {} term {}{} at {:.3} s",
                x.leader.map_or("none".into(), |l| format!("{l:016x}")),
                x.term,
                if x.is_leader { " (leads)" } else { "" },
                x.at.as_secs_f64()
            ),
            None => format!("{h}: no replica"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn all() -> Vec<String> {
    (0..MANAGERS).map(name).collect()
}

fn without(h: &str) -> Vec<String> {
    all().into_iter().filter(|x| x != h).collect()
}

/// Polls (every 10 ms, simulated) until `hosts` agree on a leader for which `ok` holds.
async fn wait_leader(
    shared: &Shared,
    hosts: &[String],
    limit: Duration,
    ok: impl Fn(&(String, u64, u64)) -> bool,
) -> Option<(String, u64, u64)> {
    until_every(limit, Duration::from_millis(10), || {
        let l = agreed(shared, hosts).filter(|l| ok(l));
        async move { l }
    })
    .await
}

/// Waits until `h`, read after `since`, follows the leader the other managers agree on;
/// returns how long after `since` (simulated).
async fn wait_follow(shared: &Shared, h: &str, since: Duration) -> Result<Duration, String> {
    let others = without(h);
    let done = until_every(FOLLOW_WITHIN, Duration::from_millis(10), || {
        let ok =
            agreed(shared, &others).filter(|(_, id, term)| follows(shared, h, since, *id, *term));
        async move { ok.map(|_| sim_now() - since) }
    })
    .await;
    done.ok_or_else(|| {
        format!(
            "{h} did not follow the leader the others report within {} s of {:.3} s: {}",
            FOLLOW_WITHIN.as_secs(),
            since.as_secs_f64(),
            readings(shared, &all())
        )
    })
}

/// The client: forms the cluster, then plays `scenario`.
async fn client(
    shared: Shared,
    ctl: Control,
    scenario: Scenario,
    seed: u64,
) -> Result<RestartReport, String> {
    form(&shared, MANAGERS, 0).await?;
    let mut rng = Rng::new(seed ^ 0x005E_ED0F_12E5);
    let (l, _, term) = wait_leader(&shared, &all(), Duration::from_secs(30), |_| true)
        .await
        .ok_or_else(|| format!("no leader after forming: {}", readings(&shared, &all())))?;
    let followers = without(&l);
    let f = followers[rng.below(2) as usize].clone();
    match scenario {
        Scenario::FollowerRestart => {
            fault(&ctl, Fault::Crash(f.clone())).await;
            tokio::time::sleep(Duration::from_millis(2000 + rng.below(3000))).await;
            let at = fault(&ctl, Fault::Bounce(f.clone())).await;
            let took = wait_follow(&shared, &f, at).await?;
            Ok(RestartReport {
                took,
                detail: format!("follower {f} restarted at {:.3} s", at.as_secs_f64()),
            })
        }
        Scenario::LeaderRestart => {
            let crashed = fault(&ctl, Fault::Crash(l.clone())).await;
            let (n, _, _) =
                wait_leader(&shared, &followers, Duration::from_secs(10), |x| x.2 > term)
                    .await
                    .ok_or_else(|| {
                        format!(
                            "no new leader within 10 s of the leader's crash: {}",
                            readings(&shared, &followers)
                        )
                    })?;
            let elected = sim_now() - crashed;
            tokio::time::sleep(Duration::from_millis(rng.below(2000))).await;
            let at = fault(&ctl, Fault::Bounce(l.clone())).await;
            let took = wait_follow(&shared, &l, at).await?;
            Ok(RestartReport {
                took,
                detail: format!(
                    "leader {l} crashed, {n} elected after {:.3} s, {l} restarted at {:.3} s",
                    elected.as_secs_f64(),
                    at.as_secs_f64()
                ),
            })
        }
        Scenario::RestartThenLeaderCrash => {
            fault(&ctl, Fault::Crash(f.clone())).await;
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
            let restarted = fault(&ctl, Fault::Bounce(f.clone())).await;
            tokio::time::sleep(Duration::from_millis(rng.below(2001))).await;
            let crashed = fault(&ctl, Fault::Crash(l.clone())).await;
            let (n, _, _) = wait_leader(&shared, &followers, ELECT_WITHIN, |x| x.2 > term)
                .await
                .ok_or_else(|| {
                    format!(
                        "no leader within {} s of the leader's crash ({f} restarted {:.3} s \
                         before it): {}",
                        ELECT_WITHIN.as_secs(),
                        (crashed - restarted).as_secs_f64(),
                        readings(&shared, &followers)
                    )
                })?;
            Ok(RestartReport {
                took: sim_now() - crashed,
                detail: format!(
                    "{f} restarted, leader {l} crashed {:.3} s later, {n} elected",
                    (crashed - restarted).as_secs_f64()
                ),
            })
        }
        Scenario::CutOffRefusal => {
            let other = without(&l).into_iter().find(|x| *x != f).expect("a third");
            fault(&ctl, Fault::Partition(f.clone(), l.clone())).await;
            let cut_at = fault(&ctl, Fault::Partition(f.clone(), other)).await;
            // Past the longest election timeout: the cut-off follower no longer has a leader.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let asked = sim_now();
            let update = Request::NodeUpdate {
                node: "self".into(),
                update: NodeUpdateRequest {
                    label_add: vec!["cut=1".into()],
                    ..Default::default()
                },
            };
            let answer = agent_hosts::call(&shared, &f, update, Duration::from_secs(30)).await;
            let took = sim_now() - asked;
            match answer {
                Some(Response::Error { message }) if message == CUT_OFF_REFUSAL => {
                    Ok(RestartReport {
                        took,
                        detail: format!(
                            "{f} cut off at {:.3} s refused a write asked 1 s later, after {:.3} s: {message}",
                            cut_at.as_secs_f64(),
                            took.as_secs_f64()
                        ),
                    })
                }
                other => Err(format!(
                    "{f} cut off from both managers answered a write with {other:?}, not \"{CUT_OFF_REFUSAL}\""
                )),
            }
        }
        Scenario::LeaderPartition(length) => {
            let length = length + Duration::from_millis(rng.below(1000));
            for x in &followers {
                fault(&ctl, Fault::Partition(l.clone(), x.clone())).await;
            }
            let cut_at = sim_now();
            let (n, _, _) = wait_leader(&shared, &followers, length, |x| x.2 > term)
                .await
                .ok_or_else(|| {
                    format!(
                        "the majority elected no leader while the leader was cut off: {}",
                        readings(&shared, &all())
                    )
                })?;
            tokio::time::sleep((cut_at + length).saturating_sub(sim_now())).await;
            let mut at = Duration::ZERO;
            for x in &followers {
                at = fault(&ctl, Fault::Repair(l.clone(), x.clone())).await;
            }
            // Both conditions are polled together (every 10 ms), each timed on its own.
            let (mut followed, mut ready) = (None, None);
            let deadline = at + FOLLOW_WITHIN.max(READY_WITHIN);
            while sim_now() < deadline && (followed.is_none() || ready.is_none()) {
                if followed.is_none() {
                    let others = without(&l);
                    let ok = agreed(&shared, &others)
                        .is_some_and(|(_, id, term)| follows(&shared, &l, at, id, term));
                    if ok {
                        followed = Some(sim_now() - at);
                    }
                }
                if ready.is_none() {
                    let list = node_list(&shared, &n, true, Duration::from_millis(100)).await;
                    if list
                        .is_some_and(|v| v.iter().any(|v| v.hostname == l && v.status == "Ready"))
                    {
                        ready = Some(sim_now() - at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let failed = |what: &str, within: Duration| {
                format!(
                    "{what} within {} s of the repair at {:.3} s (cut off for {:.3} s): {}",
                    within.as_secs(),
                    at.as_secs_f64(),
                    length.as_secs_f64(),
                    readings(&shared, &all())
                )
            };
            let followed = followed.filter(|t| *t <= FOLLOW_WITHIN).ok_or_else(|| {
                failed(
                    &format!("{l} did not follow the new leader {n}"),
                    FOLLOW_WITHIN,
                )
            })?;
            let ready = ready.filter(|t| *t <= READY_WITHIN).ok_or_else(|| {
                failed(
                    &format!("the new leader {n} did not show {l} Ready"),
                    READY_WITHIN,
                )
            })?;
            Ok(RestartReport {
                took: followed.max(ready),
                detail: format!(
                    "leader {l} cut off for {:.3} s, {n} elected; after the repair {l} followed \
                     in {:.3} s, shown Ready in {:.3} s",
                    length.as_secs_f64(),
                    followed.as_secs_f64(),
                    ready.as_secs_f64()
                ),
            })
        }
    }
}

/// Plays `scenario` on a fresh cluster of three managers; `seed` drives turmoil, the agents and
/// the scenario's random delays and choices.
pub fn run(scenario: Scenario, seed: u64) -> Result<RestartReport, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(300))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .udp_capacity(65536)
        .rng_seed(seed)
        .build();
    let shared = Shared::default();
    for i in 0..MANAGERS {
        let local_gossip = scenario != Scenario::CutOffRefusal;
        agent_hosts::host_with_gossip(
            &mut sim,
            i,
            seed,
            tmp.path().join(name(i)),
            shared.clone(),
            local_gossip,
            None,
        );
    }
    let ctl = Control::default();
    let result = Arc::new(Mutex::new(None));
    {
        let (shared, ctl, result) = (shared.clone(), ctl.clone(), result.clone());
        sim.client("ctl", async move {
            let r = client(shared, ctl, scenario, seed).await;
            *result.lock().expect("result") = Some(r);
            Ok(())
        });
    }
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("simulation error: {e}")),
        }
        let mut c = ctl.lock().expect("control");
        while c.applied.len() < c.asked.len() {
            match &c.asked[c.applied.len()] {
                Fault::Crash(h) => {
                    sim.crash(h.as_str());
                    shared.lock().expect("shared").seen.remove(h);
                }
                Fault::Bounce(h) => sim.bounce(h.as_str()),
                Fault::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
                Fault::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
            }
            let now = sim.elapsed();
            c.applied.push(now);
        }
    }
    if let Some(t) = two_leaders(&shared) {
        return Err(t);
    }
    let r = result.lock().expect("result").take();
    r.unwrap_or_else(|| Err("the client did not finish".into()))
}

/// A term in which two nodes were seen leading, if any.
fn two_leaders(shared: &Shared) -> Option<String> {
    let s: &agent_hosts::Agents = &shared.lock().expect("shared");
    s.leaders
        .iter()
        .find(|(_, ids)| ids.len() > 1)
        .map(|(t, ids)| format!("two leaders in term {t}: {ids:?}"))
}
