//! Deterministic simulation of whole clusters over a simulated network: every member is a real
//! `Memberlist`, time is simulated in milliseconds, datagrams get a random latency of 1–5 ms and
//! are lost at random, partitions drop traffic between groups. Everything is seeded, so a failing
//! seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use shoal_membership::{Addr, Config, Effect, MemberEvent, Memberlist, NodeId, NodeInfo, State};

/// Members tick every this many simulated milliseconds.
const TICK_MS: u64 = 10;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The harness's own random source (splitmix64), independent of the members'.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Datagram = Reverse<(u64, u64, usize, usize, Vec<u8>)>;

struct Sim {
    cfg: Config,
    seed: u64,
    now: u64,
    nodes: Vec<Option<Memberlist>>,
    index: HashMap<Addr, usize>,
    /// (deliver at, sequence, to, from, bytes), earliest first.
    queue: BinaryHeap<Datagram>,
    seq: u64,
    rng: Rng,
    /// Loss probability in parts per million.
    loss_ppm: u64,
    /// Partition group of each node; traffic between groups is dropped.
    group: Vec<u8>,
    /// Extra delay on every datagram delivered to each node (a slow, overloaded member).
    inbound_delay: Vec<u64>,
    /// Every event each node reported, with its time.
    events: Vec<Vec<(u64, MemberEvent)>>,
    sent: u64,
    largest_packet: usize,
    decode_errors: u64,
}

fn id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

fn addr(i: usize) -> Addr {
    Addr::new(format!("10.0.{}.{}:7946", i / 250, i % 250 + 1))
}

impl Sim {
    /// `n` members, none started yet.
    fn new(n: usize, cfg: Config, seed: u64, loss: f64) -> Sim {
        Sim {
            cfg,
            seed,
            now: 0,
            nodes: (0..n).map(|_| None).collect(),
            index: (0..n).map(|i| (addr(i), i)).collect(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: Rng(seed ^ 0x5151_5151),
            loss_ppm: (loss * 1_000_000.0) as u64,
            group: vec![0; n],
            inbound_delay: vec![0; n],
            events: vec![Vec::new(); n],
            sent: 0,
            largest_packet: 0,
            decode_errors: 0,
        }
    }

    /// Starts (or restarts, with a fresh state) member `i` and, unless it is the first, joins it
    /// through member 0 and member 1.
    fn start(&mut self, i: usize) {
        let info = NodeInfo {
            id: id(i),
            addr: addr(i),
            meta: format!("node-{i}").into_bytes(),
        };
        let seed = self
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(i as u64 + self.now);
        let mut ml = Memberlist::new(self.cfg.clone(), info, seed).unwrap();
        let seeds: Vec<Addr> = [0, 1]
            .iter()
            .filter(|s| **s != i)
            .map(|s| addr(*s))
            .collect();
        if i != 0 {
            ml.join(ms(self.now), &seeds).unwrap();
        }
        self.nodes[i] = Some(ml);
        self.drain(i);
    }

    /// Starts every member, 20 ms apart, and runs until all see each other alive.
    fn start_all_and_converge(&mut self, limit_ms: u64) -> u64 {
        let t0 = self.now;
        for i in 0..self.nodes.len() {
            self.start(i);
            self.run_for(20);
        }
        let t = self
            .run_until(limit_ms, |s| s.converged())
            .unwrap_or_else(|| panic!("no convergence within {limit_ms} ms: {}", self.describe()));
        t - t0
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].as_ref().is_some_and(|m| !m.has_left()))
            .collect()
    }

    fn node(&self, i: usize) -> &Memberlist {
        self.nodes[i].as_ref().unwrap()
    }

    /// The state of `j` as `i` sees it.
    fn view(&self, i: usize, j: usize) -> Option<State> {
        self.node(i).member(id(j)).map(|m| m.state)
    }

    /// Every live member sees every live member alive, and nothing else as live.
    fn converged(&self) -> bool {
        let live = self.live();
        live.iter().all(|&i| {
            self.node(i).num_alive() == live.len()
                && live.iter().all(|&j| self.view(i, j) == Some(State::Alive))
        })
    }

    fn describe(&self) -> String {
        let live = self.live();
        let mut out = format!("t={} ms, live={}", self.now, live.len());
        for &i in &live {
            let ml = self.node(i);
            out += &format!(
                "\n  node {i}: alive={} lhm={} members={}",
                ml.num_alive(),
                ml.local_health(),
                ml.members().count()
            );
        }
        out
    }

    /// Queues node `i`'s outgoing datagrams and records its events.
    fn drain(&mut self, i: usize) {
        let Some(ml) = self.nodes[i].as_mut() else {
            return;
        };
        for e in ml.take_effects() {
            match e {
                Effect::Send { to, bytes } => {
                    assert!(
                        bytes.len() <= self.cfg.gossip_packet_size,
                        "packet of {} bytes",
                        bytes.len()
                    );
                    self.sent += 1;
                    self.largest_packet = self.largest_packet.max(bytes.len());
                    let Some(&to) = self.index.get(&to) else {
                        continue;
                    };
                    if self.rng.below(1_000_000) < self.loss_ppm {
                        continue;
                    }
                    let at = self.now + 1 + self.rng.below(5) + self.inbound_delay[to];
                    self.seq += 1;
                    self.queue.push(Reverse((at, self.seq, to, i, bytes)));
                }
                Effect::Event(ev) => self.events[i].push((self.now, ev)),
            }
        }
    }

    fn deliver(&mut self, to: usize, from: usize, bytes: &[u8]) {
        if self.group[to] != self.group[from] {
            return;
        }
        let now = self.now;
        let Some(ml) = self.nodes[to].as_mut() else {
            return;
        };
        if ml.receive(ms(now), &addr(from), bytes).is_err() {
            self.decode_errors += 1;
        }
        self.drain(to);
    }

    /// Runs the simulation for `span` milliseconds.
    fn run_for(&mut self, span: u64) {
        let until = self.now + span;
        while self.now < until {
            let next_tick = (self.now / TICK_MS + 1) * TICK_MS;
            while self
                .queue
                .peek()
                .is_some_and(|Reverse((at, ..))| *at < next_tick)
            {
                let Some(Reverse((at, _, to, from, bytes))) = self.queue.pop() else {
                    break;
                };
                self.now = self.now.max(at);
                self.deliver(to, from, &bytes);
            }
            self.now = next_tick;
            for i in 0..self.nodes.len() {
                if let Some(ml) = self.nodes[i].as_mut() {
                    ml.tick(ms(next_tick));
                    self.drain(i);
                }
            }
        }
    }

    /// Runs until `cond` holds (checked every 100 ms) or `limit` ms have passed; returns the time
    /// it held at.
    fn run_until(&mut self, limit: u64, cond: impl Fn(&Sim) -> bool) -> Option<u64> {
        let end = self.now + limit;
        while self.now < end {
            self.run_for(100);
            if cond(self) {
                return Some(self.now);
            }
        }
        None
    }

    /// Events of a kind about member `about` seen by member `by`.
    fn count_events(&self, by: usize, about: usize, kind: fn(&MemberEvent) -> bool) -> usize {
        self.events[by]
            .iter()
            .filter(|(_, e)| kind(e) && e.member().id == id(about))
            .count()
    }

    fn total_events(&self, kind: fn(&MemberEvent) -> bool) -> usize {
        self.events
            .iter()
            .map(|evs| evs.iter().filter(|(_, e)| kind(e)).count())
            .sum()
    }
}

fn is_failed(e: &MemberEvent) -> bool {
    matches!(e, MemberEvent::Failed(_))
}

fn is_suspected(e: &MemberEvent) -> bool {
    matches!(e, MemberEvent::Suspected(_))
}

// ------------------------------------------------------------------ scenarios (seeded)

fn converge_after_join(seed: u64) {
    let mut sim = Sim::new(64, Config::local(), seed, 0.01);
    let took = sim.start_all_and_converge(30_000);
    eprintln!(
        "seed {seed}: 64 members converged in {took} ms, {} packets",
        sim.sent
    );
    assert!(took < 20_000, "converged in {took} ms");
    let members: Vec<NodeId> = sim.node(40).members().map(|m| m.id).collect();
    assert_eq!(members, (0..64).map(id).collect::<Vec<_>>());
    // Metadata given at start travelled with the members.
    assert_eq!(sim.node(3).member(id(40)).unwrap().meta, b"node-40");
    // Every member heard of every other.
    for i in [0, 17, 63] {
        for j in 0..64 {
            if i != j {
                let joined = sim.count_events(i, j, |e| matches!(e, MemberEvent::Joined(_)));
                assert!(joined >= 1);
            }
        }
        assert!(!sim.node(i).is_joining());
    }
    assert_eq!(sim.decode_errors, 0);
    assert!(sim.largest_packet <= 1400);
}

fn crash_detection(cfg: Config, seed: u64) {
    let mut sim = Sim::new(32, cfg, seed, 0.01);
    sim.start_all_and_converge(30_000);
    let crash_at = sim.now;
    sim.crash(9);
    let detected = sim
        .run_until(20_000, |s| {
            s.live().iter().all(|&i| s.view(i, 9) == Some(State::Dead))
        })
        .unwrap_or_else(|| panic!("crash not detected everywhere: {}", sim.describe()));
    // n = 32, local profile: the suspicion timeout is at most 6 × 4 × log10(32) × 200 ms ≈ 7.2 s,
    // after a probe period or a few for some member to probe the crashed one.
    let took = detected - crash_at;
    eprintln!(
        "seed {seed}: crash detected everywhere in {took} ms (lifeguard: {})",
        sim.cfg.lifeguard
    );
    assert!(took <= 12_000, "detected in {took} ms");
    for i in sim.live() {
        assert_eq!(sim.count_events(i, 9, is_failed), 1, "node {i}");
        assert_eq!(sim.node(i).num_alive(), 31);
    }
}

fn no_false_positive(seed: u64, minutes: u64) {
    let mut sim = Sim::new(32, Config::local(), seed, 0.0);
    sim.start_all_and_converge(30_000);
    sim.run_for(minutes * 60_000);
    assert_eq!(sim.total_events(is_suspected), 0);
    assert_eq!(sim.total_events(is_failed), 0);
    assert!(sim.converged());
    for i in sim.live() {
        let st = sim.node(i).stats();
        assert_eq!(st.suspicions, 0);
        assert_eq!(st.failed_probes, 0);
        assert!(
            st.probes > minutes * 200,
            "node {i} probed {} times",
            st.probes
        );
        assert_eq!(sim.node(i).local_health(), 0);
    }
}

fn light_loss(seed: u64) {
    // Lifeguard's point: with 5 % loss members get suspected now and then, but refute in time.
    let mut sim = Sim::new(32, Config::local(), seed, 0.05);
    sim.start_all_and_converge(30_000);
    let before = sim.total_events(is_failed);
    sim.run_for(3 * 60_000);
    eprintln!(
        "seed {seed}: 5 % loss, 3 min: {} suspicion events, {} refutations, {} failures",
        sim.total_events(is_suspected),
        (0..32)
            .map(|i| sim.node(i).stats().refutations)
            .sum::<u64>(),
        sim.total_events(is_failed) - before
    );
    assert_eq!(sim.total_events(is_failed), before);
    // Someone may be suspect at this very moment, but nobody was declared failed.
    for i in sim.live() {
        assert_eq!(sim.node(i).num_alive(), 32, "{}", sim.describe());
    }
}

fn partition_and_heal(seed: u64) {
    let n = 32;
    let mut sim = Sim::new(n, Config::local(), seed, 0.01);
    sim.start_all_and_converge(30_000);
    for i in n / 2..n {
        sim.group[i] = 1;
    }
    let cut_at = sim.now;
    let split = sim
        .run_until(60_000, |s| {
            (0..n).all(|i| {
                (0..n).all(|j| {
                    let st = s.view(i, j);
                    if s.group[i] == s.group[j] {
                        st == Some(State::Alive)
                    } else {
                        st == Some(State::Dead)
                    }
                })
            })
        })
        .unwrap_or_else(|| panic!("the halves did not split: {}", sim.describe()));
    // Stay apart well past `gossip_to_the_dead`: only reconnect attempts can merge the halves.
    sim.run_for(30_000);
    assert!((0..n).all(|i| sim.node(i).num_alive() == n / 2));
    sim.group = vec![0; n];
    let healed_at = sim.now;
    let merged = sim
        .run_until(60_000, |s| s.converged())
        .unwrap_or_else(|| panic!("no merge after heal: {}", sim.describe()));
    eprintln!(
        "seed {seed}: partition split after {} ms, merged {} ms after heal",
        split - cut_at,
        merged - healed_at
    );
    assert!(split - cut_at <= 30_000);
    assert!(
        merged - healed_at <= 30_000,
        "merged in {} ms",
        merged - healed_at
    );
    for i in 0..n {
        assert_eq!(sim.node(i).num_alive(), n);
    }
}

fn metadata_update(seed: u64) {
    let mut sim = Sim::new(48, Config::local(), seed, 0.01);
    sim.start_all_and_converge(30_000);
    let now = sim.now;
    sim.nodes[7]
        .as_mut()
        .unwrap()
        .set_local_meta(ms(now), b"role=manager,v=2".to_vec())
        .unwrap();
    sim.drain(7);
    let t = sim
        .run_until(20_000, |s| {
            s.live()
                .iter()
                .all(|&i| s.node(i).member(id(7)).unwrap().meta == b"role=manager,v=2")
        })
        .unwrap_or_else(|| panic!("metadata did not spread: {}", sim.describe()));
    eprintln!("seed {seed}: metadata reached everyone in {} ms", t - now);
    // Gossip reaches nearly everyone within a second; a member the epidemic missed (rare, by
    // design) gets it from the push-pull it starts every 5 s.
    assert!(t - now <= 12_000, "spread in {} ms", t - now);
    for i in sim.live() {
        if i != 7 {
            let updated = sim.count_events(i, 7, |e| matches!(e, MemberEvent::Updated(_)));
            assert_eq!(updated, 1, "node {i}");
        }
    }
}

fn graceful_leave(seed: u64) {
    let mut sim = Sim::new(16, Config::local(), seed, 0.01);
    sim.start_all_and_converge(30_000);
    let now = sim.now;
    sim.nodes[3].as_mut().unwrap().leave(ms(now));
    sim.drain(3);
    sim.run_until(5_000, |s| {
        s.live().iter().all(|&i| s.view(i, 3) == Some(State::Left))
    })
    .unwrap_or_else(|| panic!("leave not seen everywhere: {}", sim.describe()));
    // The departed member stops for good; nobody declares it failed afterwards.
    sim.crash(3);
    sim.run_for(30_000);
    for i in sim.live() {
        assert_eq!(sim.view(i, 3), Some(State::Left));
        assert_eq!(sim.count_events(i, 3, is_failed), 0);
        assert_eq!(sim.node(i).num_alive(), 15);
    }
}

fn restart_rejoins(seed: u64) {
    let mut sim = Sim::new(24, Config::local(), seed, 0.01);
    sim.start_all_and_converge(30_000);
    sim.crash(5);
    sim.run_until(20_000, |s| {
        s.live().iter().all(|&i| s.view(i, 5) == Some(State::Dead))
    })
    .unwrap_or_else(|| panic!("crash not detected: {}", sim.describe()));
    let old = sim.node(0).member(id(5)).unwrap().incarnation;
    // Restart with a fresh state (incarnation 0); it must supersede its own death.
    sim.start(5);
    let agreed = |s: &Sim| {
        let own = s.node(5).incarnation();
        s.converged()
            && s.live()
                .iter()
                .all(|&i| s.node(i).member(id(5)).unwrap().incarnation == own)
    };
    sim.run_until(15_000, agreed)
        .unwrap_or_else(|| panic!("no rejoin: {}", sim.describe()));
    assert!(sim.node(5).incarnation() > old);
    for i in sim.live() {
        assert_eq!(
            sim.node(i).member(id(5)).unwrap().incarnation,
            sim.node(5).incarnation()
        );
    }
    assert!(sim.node(5).stats().refutations >= 1);
}

/// One member is slow (everything it receives is 250 ms late, beyond the 100 ms probe timeout).
/// Returns the suspicion events about healthy members and the failures of healthy members, over
/// three minutes.
fn slow_member(lifeguard: bool, seed: u64) -> (usize, usize) {
    let mut cfg = Config::local();
    cfg.lifeguard = lifeguard;
    let mut sim = Sim::new(32, cfg, seed, 0.0);
    sim.start_all_and_converge(30_000);
    let before: Vec<usize> = sim.events.iter().map(|e| e.len()).collect();
    sim.inbound_delay[0] = 250;
    sim.run_for(3 * 60_000);
    let mut suspected = 0;
    let mut failed = 0;
    for (evs, from) in sim.events.iter().zip(&before) {
        for (_, e) in &evs[*from..] {
            if e.member().id == id(0) {
                continue;
            }
            match e {
                MemberEvent::Suspected(_) => suspected += 1,
                MemberEvent::Failed(_) => failed += 1,
                _ => {}
            }
        }
    }
    eprintln!(
        "seed {seed}: slow member, lifeguard {lifeguard}: {suspected} suspicions and {failed} \
         failures of healthy members, slow member's health {}",
        sim.node(0).local_health()
    );
    (suspected, failed)
}

// ------------------------------------------------------------------ tests

#[test]
fn all_members_converge_after_join() {
    converge_after_join(1);
}

#[test]
fn crashed_member_is_detected_everywhere() {
    crash_detection(Config::local(), 2);
}

#[test]
fn crashed_member_is_detected_without_lifeguard_too() {
    let mut cfg = Config::local();
    cfg.lifeguard = false;
    crash_detection(cfg, 2);
}

#[test]
fn no_false_positive_without_loss() {
    no_false_positive(3, 5);
}

#[test]
fn no_false_failure_with_light_loss() {
    light_loss(4);
}

#[test]
fn partition_into_halves_then_heal_merges_back() {
    partition_and_heal(5);
}

#[test]
fn metadata_update_reaches_everyone() {
    metadata_update(6);
}

#[test]
fn graceful_leave_is_seen_as_left() {
    graceful_leave(7);
}

#[test]
fn restarted_member_rejoins_with_higher_incarnation() {
    restart_rejoins(8);
}

#[test]
fn lifeguard_keeps_a_slow_member_from_accusing_healthy_ones() {
    let (with, with_failed) = slow_member(true, 9);
    let (without, _) = slow_member(false, 9);
    assert!(with * 4 <= without, "{with} vs {without} suspicions");
    assert_eq!(with_failed, 0);
}

#[test]
fn same_seed_same_run() {
    let run = |seed: u64| {
        let mut sim = Sim::new(16, Config::local(), seed, 0.05);
        sim.start_all_and_converge(30_000);
        sim.crash(4);
        sim.run_for(10_000);
        let stats: Vec<_> = sim.live().iter().map(|&i| sim.node(i).stats()).collect();
        (format!("{:?}", sim.events), stats, sim.sent)
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11).2, run(12).2);
}

/// Every scenario over several seeds. `SHOAL_SEEDS` sets how many (default 3 in the test
/// suite; the soak is `SHOAL_SEEDS=200 cargo test -p shoal-membership --release`).
#[test]
fn scenarios_over_many_seeds() {
    let seeds: u64 = std::env::var("SHOAL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for seed in 100..100 + seeds {
        converge_after_join(seed);
        crash_detection(Config::local(), seed);
        let mut plain = Config::local();
        plain.lifeguard = false;
        crash_detection(plain, seed);
        no_false_positive(seed, 1);
        light_loss(seed);
        partition_and_heal(seed);
        metadata_update(seed);
        graceful_leave(seed);
        restart_rejoins(seed);
        let (with, with_failed) = slow_member(true, seed);
        let (without, _) = slow_member(false, seed);
        assert!(
            with * 4 <= without,
            "seed {seed}: {with} vs {without} suspicions"
        );
        assert_eq!(with_failed, 0, "seed {seed}");
    }
}
