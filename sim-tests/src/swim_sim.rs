//! Simulation of SWIM membership at scale: N pure `Memberlist` cores on a simulated network with
//! fixed latency plus jitter and random loss, on simulated time. Measures failure detection,
//! false positives, load, dissemination of a metadata update and merging after a partition.

use crate::rng::Rng;
use shoal_membership::{Addr, Config, Effect, MemberEvent, Memberlist, NodeId, NodeInfo, State};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

/// Options of one run (the command line of `swim-sim`).
#[derive(Clone, Debug)]
pub struct SwimOptions {
    /// Members.
    pub nodes: usize,
    /// Simulated seconds.
    pub seconds: u64,
    /// Packet loss probability.
    pub loss: f64,
    /// Seed.
    pub seed: u64,
    /// Members crashed (at a third of the run, after the membership converged).
    pub crash: usize,
    /// Members that stall (process their packets late, pausing several seconds at a time).
    pub stall: usize,
    /// Partition into halves from `start` to `end` seconds.
    pub partition: Option<(u64, u64)>,
    /// Lifeguard on (default) or off.
    pub lifeguard: bool,
    /// One-way latency in microseconds.
    pub latency_us: u64,
    /// Jitter added to the latency, up to this many microseconds.
    pub jitter_us: u64,
    /// Overrides `Config::suspicion_mult` of the `lan` profile (to explore the trade-off).
    pub suspicion_mult: Option<f64>,
    /// Overrides `Config::probe_timeout` of the `lan` profile, in milliseconds.
    pub probe_timeout_ms: Option<u64>,
    /// `Config::aligned_rounds` (on by default; off: each member shuffles its own order).
    pub aligned_rounds: bool,
}

impl SwimOptions {
    /// Defaults: `lan` profile, 2 ms ± 1 ms latency.
    pub fn new(nodes: usize, seconds: u64, loss: f64, seed: u64) -> Self {
        SwimOptions {
            nodes,
            seconds,
            loss,
            seed,
            crash: 0,
            stall: 0,
            partition: None,
            lifeguard: true,
            latency_us: 1_500,
            jitter_us: 1_000,
            suspicion_mult: None,
            probe_timeout_ms: None,
            aligned_rounds: true,
        }
    }
}

/// The figures of one run (`null` in JSON where the run had no such event).
#[derive(Clone, Debug, Default)]
pub struct SwimReport {
    /// Members.
    pub nodes: usize,
    /// Loss probability.
    pub loss: f64,
    /// Simulated seconds.
    pub seconds: u64,
    /// Seed.
    pub seed: u64,
    /// Live members declared failed, counted once per (observer, victim) event.
    pub false_positives: u64,
    /// The same, counting only victims that are not stalled.
    pub false_positives_healthy: u64,
    /// Messages (excluding push-pull) per live member per protocol period.
    pub msgs_per_member_per_period: f64,
    /// The same split by kind: ping, ping-req, ack, nack, gossip (in that order).
    pub msgs_by_kind: [f64; 5],
    /// Bytes sent per live member per second (everything).
    pub bytes_per_member_per_s: f64,
    /// Mean time from a crash until anyone sends the crashed member a ping (the wait for the
    /// first probe, which dominates detection and has an exponential tail).
    pub first_probe_s_mean: Option<f64>,
    /// Mean time from a crash to the first suspicion by anyone.
    pub first_detection_s_mean: Option<f64>,
    /// For each crash (in member order): time until every live member marked it failed.
    pub all_detection_s: Vec<f64>,
    /// For each crash: seconds until its first ping, first suspicion, first and last
    /// declaration of failure (`None` where it did not happen).
    pub crash_timeline: Vec<[Option<f64>; 4]>,
    /// Mean time from a crash until every live member marked it failed.
    pub all_detection_s_mean: Option<f64>,
    /// Worst such time.
    pub all_detection_s_max: Option<f64>,
    /// Crashed members not marked failed by every live member by the end of the run.
    pub undetected: usize,
    /// Mean time for a metadata update to reach a member.
    pub dissemination_mean_s: Option<f64>,
    /// 99th percentile of that time over the members.
    pub dissemination_p99_s: Option<f64>,
    /// Members the update had not reached by the end.
    pub dissemination_missing: usize,
    /// Time from the partition healing to one merged membership.
    pub merge_s: Option<f64>,
    /// Time for the initial joins to converge into one membership.
    pub converged_s: Option<f64>,
    /// Suspicions started and refuted, summed over the members, while measuring.
    pub suspicions: u64,
    /// Suspicions (or death notices) refuted by the members concerned, while measuring.
    pub refutations: u64,
}

impl SwimReport {
    /// One JSON object.
    pub fn to_json(&self, opts: &SwimOptions) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.nodes,
            "loss": self.loss,
            "seconds": self.seconds,
            "seed": self.seed,
            "lifeguard": opts.lifeguard,
            "crash": opts.crash,
            "stall": opts.stall,
            "false_positives": self.false_positives,
            "false_positives_healthy": self.false_positives_healthy,
            "msgs_per_member_per_period": round3(self.msgs_per_member_per_period),
            "msgs_by_kind": {
                "ping": round3(self.msgs_by_kind[0]),
                "ping_req": round3(self.msgs_by_kind[1]),
                "ack": round3(self.msgs_by_kind[2]),
                "nack": round3(self.msgs_by_kind[3]),
                "gossip": round3(self.msgs_by_kind[4]),
            },
            "bytes_per_member_per_s": round3(self.bytes_per_member_per_s),
            "first_probe_s_mean": self.first_probe_s_mean.map(round3),
            "first_detection_s_mean": self.first_detection_s_mean.map(round3),
            "all_detection_s": self.all_detection_s.iter().copied().map(round3).collect::<Vec<_>>(),
            "crash_timeline": self.crash_timeline.iter().map(|t| t.map(|x| x.map(round3))).collect::<Vec<_>>(),
            "all_detection_s_mean": self.all_detection_s_mean.map(round3),
            "all_detection_s_max": self.all_detection_s_max.map(round3),
            "undetected": self.undetected,
            "dissemination_mean_s": self.dissemination_mean_s.map(round3),
            "dissemination_p99_s": self.dissemination_p99_s.map(round3),
            "dissemination_missing": self.dissemination_missing,
            "merge_s": self.merge_s.map(round3),
            "converged_s": self.converged_s.map(round3),
            "schedule": if opts.aligned_rounds { "aligned" } else { "shuffled" },
            "suspicions": self.suspicions,
            "refutations": self.refutations,
        })
    }
}

/// One JSON object summarising several runs (seeds) of the same scenario: false positives
/// summed, load and first detection averaged, and the distribution of the per-crash detection
/// times of all runs together.
pub fn summary(reports: &[SwimReport]) -> serde_json::Value {
    let runs = reports.len().max(1) as f64;
    let mut alls: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.all_detection_s.iter().copied())
        .collect();
    alls.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        (!alls.is_empty()).then(|| round3(alls[((alls.len() - 1) as f64 * p).round() as usize]))
    };
    let mean_of = |f: &dyn Fn(&SwimReport) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| round3(v.iter().sum::<f64>() / v.len() as f64))
    };
    serde_json::json!({
        "summary_of_seeds": reports.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "false_positives": reports.iter().map(|r| r.false_positives).sum::<u64>(),
        "false_positives_healthy": reports.iter().map(|r| r.false_positives_healthy).sum::<u64>(),
        "msgs_per_member_per_period": round3(reports.iter().map(|r| r.msgs_per_member_per_period).sum::<f64>() / runs),
        "msgs_per_member_per_period_max": round3(reports.iter().map(|r| r.msgs_per_member_per_period).fold(0.0, f64::max)),
        "false_positives_max": reports.iter().map(|r| r.false_positives).max(),
        "first_probe_s_mean": mean_of(&|r| r.first_probe_s_mean),
        "first_detection_s_mean": mean_of(&|r| r.first_detection_s_mean),
        "crashes": alls.len(),
        "undetected": reports.iter().map(|r| r.undetected).sum::<usize>(),
        "all_detection_s_mean": (!alls.is_empty()).then(|| round3(alls.iter().sum::<f64>() / alls.len() as f64)),
        "all_detection_s_p50": pct(0.5),
        "all_detection_s_p95": pct(0.95),
        "all_detection_s_max": alls.last().copied().map(round3),
        "crashes_detected_within_8s": alls.iter().filter(|&&t| t <= 8.0).count(),
        "merge_s_max": reports.iter().filter_map(|r| r.merge_s).reduce(f64::max).map(round3),
        "dissemination_p99_s_max": reports.iter().filter_map(|r| r.dissemination_p99_s).reduce(f64::max).map(round3),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Run node `i`'s timers.
    Timer(usize),
    /// Deliver packet `id` to node `to`.
    Deliver { to: usize, id: u64 },
    /// A stalled node catches up with the packets that arrived during its stall.
    Wake(usize),
}

struct Node {
    ml: Memberlist,
    crashed: bool,
    /// While stalled, packets wait here and timers do not run.
    stalled_until: u64,
    inbox: Vec<(usize, Vec<u8>)>,
    timer_at: Option<u64>,
    stalls: bool,
    next_stall: u64,
}

/// The message tag of a packet: after the version byte and the sender id varint.
fn message_tag(bytes: &[u8]) -> Option<u8> {
    let mut i = 1;
    while i < bytes.len() && bytes[i] & 0x80 != 0 {
        i += 1;
    }
    bytes.get(i + 1).copied()
}

/// Tag of a ping (direct or on behalf of a ping-req).
const TAG_PING: u8 = 0;
/// Tag of a push-pull packet.
const TAG_PUSH_PULL: u8 = 4;

/// Is this packet part of a push-pull exchange?
fn is_push_pull(bytes: &[u8]) -> bool {
    message_tag(bytes) == Some(TAG_PUSH_PULL)
}

struct World {
    opts: SwimOptions,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    addr_index: HashMap<Addr, usize>,
    addrs: Vec<Addr>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    packets: BTreeMap<u64, (usize, Vec<u8>)>,
    seq: u64,
    period_us: u64,
    // measurements
    measuring: bool,
    msgs: u64,
    msgs_by_tag: [u64; 6],
    bytes: u64,
    crash_time: BTreeMap<usize, u64>,
    first_suspect: BTreeMap<usize, u64>,
    first_ping: BTreeMap<usize, u64>,
    /// victim -> observer -> when it declared the victim failed (first time).
    failed_by: BTreeMap<usize, BTreeMap<usize, u64>>,
    false_positives: u64,
    false_positives_healthy: u64,
    meta_update: Option<(usize, Vec<u8>, u64)>,
    meta_seen: BTreeMap<usize, u64>,
}

impl World {
    fn new(opts: SwimOptions) -> World {
        let mut rng = Rng::new(opts.seed);
        let mut cfg = Config::lan();
        cfg.lifeguard = opts.lifeguard;
        cfg.aligned_rounds = opts.aligned_rounds;
        if let Some(m) = opts.suspicion_mult {
            cfg.suspicion_mult = m;
        }
        if let Some(ms) = opts.probe_timeout_ms {
            cfg.probe_timeout = Duration::from_millis(ms);
        }
        cfg.validate()
            .expect("swim-sim options give a valid configuration");
        let period_us = cfg.protocol_period.as_micros() as u64;
        let addrs: Vec<Addr> = (0..opts.nodes)
            .map(|i| Addr::new(format!("n{i}")))
            .collect();
        let mut stallers = BTreeSet::new();
        while stallers.len() < opts.stall.min(opts.nodes.saturating_sub(1)) {
            stallers.insert(1 + rng.below(opts.nodes as u64 - 1) as usize);
        }
        let nodes = (0..opts.nodes)
            .map(|i| {
                let info = NodeInfo {
                    id: NodeId(i as u64 + 1),
                    addr: addrs[i].clone(),
                    meta: format!("node-{i}").into_bytes(),
                };
                let ml =
                    Memberlist::new(cfg.clone(), info, opts.seed.wrapping_mul(7919) ^ i as u64)
                        .expect("valid config");
                Node {
                    ml,
                    crashed: false,
                    stalled_until: 0,
                    inbox: Vec::new(),
                    timer_at: None,
                    stalls: stallers.contains(&i),
                    next_stall: 5_000_000 + rng.below(10_000_000),
                }
            })
            .collect();
        let addr_index = addrs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, a)| (a, i))
            .collect();
        World {
            opts,
            rng,
            now: 0,
            nodes,
            addr_index,
            addrs,
            events: BinaryHeap::new(),
            packets: BTreeMap::new(),
            seq: 0,
            period_us,
            measuring: false,
            msgs: 0,
            msgs_by_tag: [0; 6],
            bytes: 0,
            crash_time: BTreeMap::new(),
            first_suspect: BTreeMap::new(),
            first_ping: BTreeMap::new(),
            failed_by: BTreeMap::new(),
            false_positives: 0,
            false_positives_healthy: 0,
            meta_update: None,
            meta_seen: BTreeMap::new(),
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, ev)));
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        match self.opts.partition {
            Some((s, e)) if self.now >= s * 1_000_000 && self.now < e * 1_000_000 => {
                let half = self.opts.nodes / 2;
                (a < half) != (b < half)
            }
            _ => false,
        }
    }

    /// Drains node `i`'s effects and reschedules its timer.
    fn drain(&mut self, i: usize) {
        let effects = self.nodes[i].ml.take_effects();
        for e in effects {
            match e {
                Effect::Send { to, bytes } => {
                    if self.measuring {
                        self.bytes += bytes.len() as u64;
                        if !is_push_pull(&bytes) {
                            self.msgs += 1;
                            if let Some(t) = message_tag(&bytes).filter(|&t| t < 6) {
                                self.msgs_by_tag[t as usize] += 1;
                            }
                        }
                    }
                    let Some(&j) = self.addr_index.get(&to) else {
                        continue;
                    };
                    if self.nodes[j].crashed && message_tag(&bytes) == Some(TAG_PING) {
                        let now = self.now;
                        self.first_ping.entry(j).or_insert(now);
                    }
                    if self.rng.chance(self.opts.loss) || self.partitioned(i, j) {
                        continue;
                    }
                    let at =
                        self.now + self.opts.latency_us + self.rng.below(self.opts.jitter_us + 1);
                    self.seq += 1;
                    let id = self.seq;
                    self.packets.insert(id, (i, bytes));
                    self.push(at, Ev::Deliver { to: j, id });
                }
                Effect::Event(ev) => self.observe(i, ev),
            }
        }
        self.schedule(i);
    }

    fn schedule(&mut self, i: usize) {
        let Some(next) = self.nodes[i].ml.next_timer() else {
            return;
        };
        let at = (next.as_micros() as u64).max(self.now + 1);
        if self.nodes[i]
            .timer_at
            .is_none_or(|t| at < t || t <= self.now)
        {
            self.nodes[i].timer_at = Some(at);
            self.push(at, Ev::Timer(i));
        }
    }

    fn observe(&mut self, observer: usize, ev: MemberEvent) {
        let victim = (ev.member().id.0 - 1) as usize;
        match &ev {
            MemberEvent::Suspected(_) => {
                if self.crash_time.contains_key(&victim) {
                    self.first_suspect.entry(victim).or_insert(self.now);
                }
            }
            MemberEvent::Failed(_) => {
                if self.crash_time.contains_key(&victim) {
                    let now = self.now;
                    self.failed_by
                        .entry(victim)
                        .or_default()
                        .entry(observer)
                        .or_insert(now);
                } else if !self.nodes[victim].crashed {
                    self.false_positives += 1;
                    if !self.nodes[victim].stalls {
                        self.false_positives_healthy += 1;
                    }
                }
            }
            MemberEvent::Updated(m) | MemberEvent::Joined(m) | MemberEvent::Alive(m) => {
                if let Some((who, meta, _)) = &self.meta_update {
                    if *who == victim && m.meta == *meta {
                        self.meta_seen.entry(observer).or_insert(self.now);
                    }
                }
            }
            MemberEvent::Left(_) => {}
        }
    }

    fn now_d(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    fn run_until(&mut self, until: u64) {
        while let Some(Reverse((at, _, _))) = self.events.peek() {
            if *at > until {
                break;
            }
            let Reverse((at, _, ev)) = self.events.pop().expect("peeked");
            self.now = at;
            match ev {
                Ev::Timer(i) => {
                    if self.nodes[i].crashed || self.nodes[i].timer_at != Some(at) {
                        continue;
                    }
                    self.nodes[i].timer_at = None;
                    self.stall_check(i);
                    let now = self.now_d();
                    self.nodes[i].ml.tick(now);
                    self.drain(i);
                }
                Ev::Wake(i) => {
                    if !self.nodes[i].crashed {
                        self.stall_check(i);
                        self.drain(i);
                    }
                }
                Ev::Deliver { to, id } => {
                    let (from, bytes) = self.packets.remove(&id).expect("stored");
                    if self.nodes[to].crashed {
                        continue;
                    }
                    if self.nodes[to].stalled_until > self.now {
                        self.nodes[to].inbox.push((from, bytes));
                        continue;
                    }
                    let now = self.now_d();
                    let from_addr = self.addrs[from].clone();
                    let _ = self.nodes[to].ml.receive(now, &from_addr, &bytes);
                    self.drain(to);
                }
            }
        }
        self.now = until;
    }

    /// Starts or ends a stall of node `i`. A stalled node is CPU-starved: its timers still fire
    /// (it keeps probing), but the packets it receives are processed only when the stall ends,
    /// seconds late — so acks to its own probes look missing.
    fn stall_check(&mut self, i: usize) {
        if !self.nodes[i].stalls {
            return;
        }
        if self.nodes[i].stalled_until > self.now {
            return;
        }
        if !self.nodes[i].inbox.is_empty() {
            let now = self.now_d();
            for (from, bytes) in std::mem::take(&mut self.nodes[i].inbox) {
                let from_addr = self.addrs[from].clone();
                let _ = self.nodes[i].ml.receive(now, &from_addr, &bytes);
            }
        }
        if self.now >= self.nodes[i].next_stall {
            // Pause for 2–6 s, then catch up with everything that arrived meanwhile.
            let pause = 2_000_000 + self.rng.below(4_000_000);
            let n = &mut self.nodes[i];
            n.stalled_until = self.now + pause;
            n.next_stall = n.stalled_until + 5_000_000 + self.rng.below(10_000_000);
            let at = n.stalled_until;
            self.push(at, Ev::Wake(i));
        }
    }

    /// True when every live member sees every other live member alive.
    fn converged(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].crashed)
            .collect();
        live.iter().all(|&i| {
            let ml = &self.nodes[i].ml;
            live.iter().all(|&j| {
                i == j
                    || ml
                        .member(NodeId(j as u64 + 1))
                        .is_some_and(|m| m.state == State::Alive)
            })
        })
    }
}

/// Runs one simulation and reports its figures.
pub fn run(opts: SwimOptions) -> SwimReport {
    let n = opts.nodes;
    let end = opts.seconds * 1_000_000;
    let mut w = World::new(opts.clone());
    // Everyone joins through member 0 within the first second.
    let seed_addr = w.addrs[0].clone();
    for i in 0..n {
        let at = if i == 0 { 0 } else { w.rng.below(1_000_000) };
        w.push(at, Ev::Timer(i));
        w.nodes[i].timer_at = Some(at);
    }
    for i in 1..n {
        let _ = w.nodes[i]
            .ml
            .join(Duration::ZERO, std::slice::from_ref(&seed_addr));
        w.drain(i);
    }
    let mut report = SwimReport {
        nodes: n,
        loss: opts.loss,
        seconds: opts.seconds,
        seed: opts.seed,
        ..Default::default()
    };
    // Converge (checked every half second), then measure.
    let check_every = 500_000;
    let limit = end / 3;
    while w.now < limit {
        let t = w.now + check_every;
        w.run_until(t);
        if w.converged() {
            report.converged_s = Some(w.now as f64 / 1e6);
            break;
        }
    }
    let measure_start = w.now;
    w.measuring = true;
    let counts = |w: &World| {
        w.nodes.iter().fold((0, 0), |(s, r), node| {
            let st = node.ml.stats();
            (s + st.suspicions, r + st.refutations)
        })
    };
    let (suspicions0, refutations0) = counts(&w);
    let alive_nodes = |w: &World| (0..n).filter(|&i| !w.nodes[i].crashed).count();
    // Crashes at a third of the run (or now, if convergence took longer).
    let crash_at = (end / 3).max(w.now);
    let dissem_at = (end / 2).max(crash_at + 1);
    w.run_until(crash_at);
    let mut victims = BTreeSet::new();
    while victims.len() < opts.crash.min(n.saturating_sub(2)) {
        let v = 1 + w.rng.below(n as u64 - 1) as usize;
        if !w.nodes[v].stalls {
            victims.insert(v);
        }
    }
    for &v in &victims {
        w.nodes[v].crashed = true;
        w.crash_time.insert(v, w.now);
    }
    w.run_until(dissem_at);
    // A metadata update from a live, healthy member.
    let mut who = w.rng.below(n as u64) as usize;
    while w.nodes[who].crashed || w.nodes[who].stalls {
        who = (who + 1) % n;
    }
    let meta = format!("node-{who}-v2").into_bytes();
    w.meta_update = Some((who, meta.clone(), w.now));
    let now = w.now_d();
    let _ = w.nodes[who].ml.set_local_meta(now, meta);
    w.drain(who);
    // Partition healing, if any: check for the merge every 100 ms after it.
    if let Some((_, heal)) = opts.partition {
        let heal = heal * 1_000_000;
        if heal < end {
            w.run_until(heal.max(w.now));
            let start = w.now;
            while w.now < end {
                let t = (w.now + 100_000).min(end);
                w.run_until(t);
                if w.converged() {
                    report.merge_s = Some((w.now - start) as f64 / 1e6);
                    break;
                }
            }
        }
    }
    w.run_until(end);
    // Figures.
    let live = alive_nodes(&w) as f64;
    let secs = (end - measure_start) as f64 / 1e6;
    let periods = (end - measure_start) as f64 / w.period_us as f64;
    let (suspicions1, refutations1) = counts(&w);
    report.suspicions = suspicions1 - suspicions0;
    report.refutations = refutations1 - refutations0;
    report.false_positives = w.false_positives;
    report.false_positives_healthy = w.false_positives_healthy;
    report.msgs_per_member_per_period = w.msgs as f64 / live / periods.max(1e-9);
    let per = |tag: usize| w.msgs_by_tag[tag] as f64 / live / periods.max(1e-9);
    report.msgs_by_kind = [per(0), per(1), per(2), per(3), per(5)];
    report.bytes_per_member_per_s = w.bytes as f64 / live / secs.max(1e-9);
    let live_set: Vec<usize> = (0..n).filter(|&i| !w.nodes[i].crashed).collect();
    let (mut firsts, mut alls, mut pings) = (Vec::new(), Vec::new(), Vec::new());
    for (&v, &t0) in &w.crash_time {
        if let Some(&t) = w.first_ping.get(&v) {
            pings.push((t - t0) as f64 / 1e6);
        }
        let since = |t: Option<u64>| t.map(|t| t.saturating_sub(t0) as f64 / 1e6);
        let failed = w.failed_by.get(&v);
        report.crash_timeline.push([
            since(w.first_ping.get(&v).copied()),
            since(w.first_suspect.get(&v).copied()),
            since(failed.and_then(|b| b.values().min().copied())),
            since(failed.and_then(|b| b.values().max().copied())),
        ]);
        if let Some(&t) = w.first_suspect.get(&v) {
            firsts.push((t - t0) as f64 / 1e6);
        }
        let by = w.failed_by.get(&v);
        let times: Option<Vec<u64>> = live_set
            .iter()
            .map(|o| by.and_then(|b| b.get(o)).copied())
            .collect();
        match times {
            Some(t) => {
                let last = t.into_iter().max().unwrap_or(t0);
                alls.push(last.saturating_sub(t0) as f64 / 1e6);
            }
            None => report.undetected += 1,
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    report.first_detection_s_mean = mean(&firsts);
    report.all_detection_s_mean = mean(&alls);
    report.all_detection_s_max = alls.iter().copied().reduce(f64::max);
    report.first_probe_s_mean = mean(&pings);
    report.all_detection_s = alls;
    if let Some((who, _, t0)) = &w.meta_update {
        let mut times: Vec<f64> = live_set
            .iter()
            .filter(|&&o| o != *who)
            .filter_map(|o| w.meta_seen.get(o).map(|&t| (t - t0) as f64 / 1e6))
            .collect();
        report.dissemination_missing = live_set.len() - 1 - times.len();
        times.sort_by(|a, b| a.total_cmp(b));
        report.dissemination_mean_s = mean(&times);
        if !times.is_empty() && report.dissemination_missing == 0 {
            let i = ((times.len() - 1) as f64 * 0.99).round() as usize;
            report.dissemination_p99_s = Some(times[i]);
        }
    }
    report
}
