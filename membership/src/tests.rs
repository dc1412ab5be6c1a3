//! Unit tests of the state transitions, the Lifeguard timers and the dissemination limits,
//! driving one member with hand-made packets.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::broadcast::{retransmit_limit, Broadcasts};
use crate::message::{decode, encode, Message, Packet, Update, VERSION};
use crate::{
    Addr, Config, DecodeError, Effect, JoinError, MemberEvent, Memberlist, MetaError, NodeId,
    NodeInfo, State,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(id: u64) -> Addr {
    Addr::new(format!("n{id}"))
}

fn node_with(cfg: Config, id: u64) -> Memberlist {
    let info = NodeInfo {
        id: NodeId(id),
        addr: addr(id),
        meta: Vec::new(),
    };
    Memberlist::new(cfg, info, 42).unwrap()
}

fn node(id: u64) -> Memberlist {
    node_with(Config::local(), id)
}

fn alive(id: u64, incarnation: u64) -> Update {
    Update::Alive {
        id: NodeId(id),
        incarnation,
        addr: addr(id),
        meta: Vec::new(),
    }
}

fn suspect(id: u64, incarnation: u64, from: u64) -> Update {
    Update::Suspect {
        id: NodeId(id),
        incarnation,
        from: NodeId(from),
    }
}

fn dead(id: u64, incarnation: u64, from: u64) -> Update {
    Update::Dead {
        id: NodeId(id),
        incarnation,
        from: NodeId(from),
    }
}

fn left(id: u64, incarnation: u64) -> Update {
    Update::Left {
        id: NodeId(id),
        incarnation,
    }
}

/// Delivers a packet from member `from`.
fn deliver(ml: &mut Memberlist, now: Duration, from: u64, msg: Message, updates: Vec<Update>) {
    let bytes = encode(&Packet {
        from: NodeId(from),
        msg,
        updates,
    })
    .unwrap();
    ml.receive(now, &addr(from), &bytes).unwrap();
}

/// Delivers updates on a gossip packet from a bystander.
fn gossip(ml: &mut Memberlist, now: Duration, updates: Vec<Update>) {
    deliver(ml, now, 999, Message::Gossip, updates);
}

fn events(effects: &[Effect]) -> Vec<MemberEvent> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(ev) => Some(ev.clone()),
            Effect::Send { .. } => None,
        })
        .collect()
}

fn packets(effects: &[Effect]) -> Vec<(Addr, Packet)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to, bytes } => Some((to.clone(), decode(bytes, 512).unwrap())),
            Effect::Event(_) => None,
        })
        .collect()
}

fn state(ml: &Memberlist, id: u64) -> State {
    ml.member(NodeId(id)).unwrap().state
}

fn incarnation(ml: &Memberlist, id: u64) -> u64 {
    ml.member(NodeId(id)).unwrap().incarnation
}

/// A member that knows `others` (alive, incarnation 0), with its queue and effects drained.
fn with_members(cfg: Config, id: u64, others: &[u64]) -> Memberlist {
    let mut ml = node_with(cfg, id);
    gossip(
        &mut ml,
        ms(0),
        others.iter().map(|o| alive(*o, 0)).collect(),
    );
    ml.broadcasts = Broadcasts::default();
    ml.take_effects();
    ml
}

/// The `local` profile with memberlist's suspicion multiplier of 4 (the `lan` profile uses 2):
/// the suspicion tests' figures are worked out with it (n = 5: min = 800 ms, max = 4800 ms).
fn suspicion_cfg() -> Config {
    Config {
        suspicion_mult: 4.0,
        ..Config::local()
    }
}

/// Ticks every millisecond from `*now` until a ping goes out; returns (target, seq, packet).
/// The next probe's first ping (a repeated ping of the probe in progress is skipped).
fn next_ping(ml: &mut Memberlist, now: &mut Duration) -> (NodeId, u32, Packet) {
    let current = ml.probe.as_ref().map(|p| p.seq);
    for _ in 0..10_000 {
        *now += ms(1);
        ml.tick(*now);
        for (_, p) in packets(&ml.take_effects()) {
            if let Message::Ping { seq, target, .. } = p.msg {
                if Some(seq) == current {
                    continue;
                }
                return (target, seq, p);
            }
        }
    }
    panic!("no ping within 10 s");
}

// ------------------------------------------------------------------ state transitions

#[test]
fn new_member_joins() {
    let mut ml = node(1);
    gossip(&mut ml, ms(5), vec![alive(2, 3)]);
    let evs = events(&ml.take_effects());
    assert!(
        matches!(&evs[..], [MemberEvent::Joined(m)] if m.id == NodeId(2) && m.incarnation == 3)
    );
    assert_eq!(state(&ml, 2), State::Alive);
    assert_eq!(ml.num_alive(), 2);
    assert_eq!(ml.members().count(), 2);
    assert_eq!(ml.member(NodeId(2)).unwrap().state_changed_at, ms(5));
}

#[test]
fn suspect_then_alive_by_refutation() {
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4]);
    gossip(&mut ml, ms(10), vec![suspect(2, 0, 3)]);
    assert_eq!(state(&ml, 2), State::Suspect);
    assert!(ml.suspicions.contains_key(&NodeId(2)));
    assert!(
        matches!(&events(&ml.take_effects())[..], [MemberEvent::Suspected(m)] if m.id == NodeId(2))
    );
    assert_eq!(ml.stats().suspicions, 1);
    // An alive at the same incarnation does not clear a suspicion.
    gossip(&mut ml, ms(20), vec![alive(2, 0)]);
    assert_eq!(state(&ml, 2), State::Suspect);
    // The member refutes with a higher incarnation.
    gossip(&mut ml, ms(30), vec![alive(2, 1)]);
    assert_eq!(state(&ml, 2), State::Alive);
    assert_eq!(incarnation(&ml, 2), 1);
    assert!(!ml.suspicions.contains_key(&NodeId(2)));
    assert!(
        matches!(&events(&ml.take_effects())[..], [MemberEvent::Alive(m)] if m.id == NodeId(2))
    );
    // The refutation is queued for dissemination.
    assert!(ml.broadcasts.transmits(NodeId(2)).is_some());
}

#[test]
fn suspect_then_dead_by_timeout() {
    // n = 5: k = suspicion_confirmations = 2, min = 4 · 1 · 200 ms, max = 6 · min.
    let mut ml = with_members(suspicion_cfg(), 1, &[2, 3, 4, 5]);
    gossip(&mut ml, ms(1000), vec![suspect(2, 0, 3)]);
    ml.take_effects();
    ml.tick_suspicions(ms(1000 + 4799));
    assert_eq!(state(&ml, 2), State::Suspect);
    ml.tick_suspicions(ms(1000 + 4800));
    assert_eq!(state(&ml, 2), State::Dead);
    let evs = events(&ml.take_effects());
    assert!(matches!(&evs[..], [MemberEvent::Failed(m)] if m.id == NodeId(2)));
    assert_eq!(ml.stats().failures, 1);
    assert_eq!(ml.num_alive(), 4);
    // The death is disseminated.
    assert!(ml.broadcasts.transmits(NodeId(2)).is_some());
}

#[test]
fn dead_comes_back_only_with_higher_incarnation() {
    let mut ml = with_members(Config::local(), 1, &[2, 3]);
    gossip(&mut ml, ms(1), vec![dead(2, 4, 3)]);
    assert_eq!(state(&ml, 2), State::Dead);
    gossip(
        &mut ml,
        ms(2),
        vec![alive(2, 4), suspect(2, 4, 3), suspect(2, 9, 3)],
    );
    assert_eq!(state(&ml, 2), State::Dead);
    ml.take_effects();
    gossip(&mut ml, ms(3), vec![alive(2, 5)]);
    assert_eq!(state(&ml, 2), State::Alive);
    assert_eq!(incarnation(&ml, 2), 5);
    assert!(
        matches!(&events(&ml.take_effects())[..], [MemberEvent::Joined(m)] if m.id == NodeId(2))
    );
}

#[test]
fn left_is_final_for_its_incarnation() {
    let mut ml = with_members(Config::local(), 1, &[2, 3]);
    gossip(&mut ml, ms(1), vec![left(2, 3)]);
    assert_eq!(state(&ml, 2), State::Left);
    assert!(matches!(&events(&ml.take_effects())[..], [MemberEvent::Left(m)] if m.id == NodeId(2)));
    gossip(
        &mut ml,
        ms(2),
        vec![
            alive(2, 3),
            suspect(2, 3, 3),
            dead(2, 3, 3),
            suspect(2, 4, 3),
            dead(2, 4, 3),
        ],
    );
    assert_eq!(state(&ml, 2), State::Left);
    assert_eq!(incarnation(&ml, 2), 3);
    assert!(events(&ml.take_effects()).is_empty());
    // A restarted member rejoins with a higher incarnation.
    gossip(&mut ml, ms(3), vec![alive(2, 4)]);
    assert_eq!(state(&ml, 2), State::Alive);
    assert!(matches!(
        &events(&ml.take_effects())[..],
        [MemberEvent::Joined(_)]
    ));
    // Dead then left at the same incarnation: the graceful news wins.
    gossip(&mut ml, ms(4), vec![dead(3, 0, 2), left(3, 0)]);
    assert_eq!(state(&ml, 3), State::Left);
}

#[test]
fn precedence_of_conflicting_updates() {
    let mut ml = with_members(Config::local(), 1, &[2]);
    gossip(&mut ml, ms(1), vec![alive(2, 5)]);
    // Older news is ignored whatever its kind.
    gossip(
        &mut ml,
        ms(2),
        vec![suspect(2, 4, 3), dead(2, 4, 3), left(2, 4)],
    );
    assert_eq!(state(&ml, 2), State::Alive);
    // Equal incarnation: suspect beats alive, dead beats suspect.
    gossip(&mut ml, ms(3), vec![suspect(2, 5, 3)]);
    assert_eq!(state(&ml, 2), State::Suspect);
    gossip(&mut ml, ms(4), vec![alive(2, 5)]);
    assert_eq!(state(&ml, 2), State::Suspect);
    gossip(&mut ml, ms(5), vec![dead(2, 5, 3)]);
    assert_eq!(state(&ml, 2), State::Dead);
    gossip(&mut ml, ms(6), vec![suspect(2, 5, 4), alive(2, 5)]);
    assert_eq!(state(&ml, 2), State::Dead);
    // Higher incarnation: alive beats dead; then suspect at a higher one beats alive.
    gossip(&mut ml, ms(7), vec![alive(2, 6)]);
    assert_eq!(state(&ml, 2), State::Alive);
    gossip(&mut ml, ms(8), vec![suspect(2, 7, 3)]);
    assert_eq!(state(&ml, 2), State::Suspect);
    assert_eq!(incarnation(&ml, 2), 7);
    // Order within one packet matters only through these rules.
    let mut a = with_members(Config::local(), 1, &[2]);
    let mut b = with_members(Config::local(), 1, &[2]);
    gossip(&mut a, ms(1), vec![alive(2, 1), suspect(2, 1, 3)]);
    gossip(&mut b, ms(1), vec![suspect(2, 1, 3), alive(2, 1)]);
    assert_eq!(state(&a, 2), State::Suspect);
    assert_eq!(state(&b, 2), State::Suspect);
    // News about unknown members other than alive is ignored.
    gossip(
        &mut a,
        ms(2),
        vec![suspect(7, 0, 3), dead(8, 0, 3), left(9, 0)],
    );
    assert!(a.member(NodeId(7)).is_none() && a.member(NodeId(8)).is_none());
    assert!(a.member(NodeId(9)).is_none());
}

#[test]
fn address_and_meta_change_only_with_higher_incarnation() {
    let mut ml = with_members(Config::local(), 1, &[2]);
    gossip(&mut ml, ms(1), vec![alive(2, 3)]);
    ml.take_effects();
    let moved = |inc: u64, meta: &[u8]| Update::Alive {
        id: NodeId(2),
        incarnation: inc,
        addr: Addr::from("elsewhere:1"),
        meta: meta.to_vec(),
    };
    gossip(&mut ml, ms(2), vec![moved(3, b"x")]);
    assert_eq!(ml.member(NodeId(2)).unwrap().addr, addr(2));
    assert!(ml.member(NodeId(2)).unwrap().meta.is_empty());
    assert!(events(&ml.take_effects()).is_empty());
    gossip(&mut ml, ms(3), vec![moved(4, b"x")]);
    let m = ml.member(NodeId(2)).unwrap();
    assert_eq!(m.addr, Addr::from("elsewhere:1"));
    assert_eq!(m.meta, b"x");
    assert!(matches!(&events(&ml.take_effects())[..], [MemberEvent::Updated(m)] if m.meta == b"x"));
    // A higher incarnation with nothing new is accepted silently.
    gossip(&mut ml, ms(4), vec![moved(5, b"x")]);
    assert!(events(&ml.take_effects()).is_empty());
    assert_eq!(incarnation(&ml, 2), 5);
}

#[test]
fn refutes_suspicion_death_and_foreign_news_about_itself() {
    let mut ml = with_members(Config::local(), 1, &[2, 3]);
    gossip(&mut ml, ms(1), vec![suspect(1, 0, 2)]);
    assert_eq!(ml.incarnation(), 1);
    assert_eq!(ml.stats().refutations, 1);
    assert_eq!(
        ml.local_health(),
        1,
        "refuting raises the local health multiplier"
    );
    assert!(matches!(
        ml.broadcasts.take(1400, 10, 4).as_slice(),
        [Update::Alive { id, incarnation: 1, .. }] if *id == NodeId(1)
    ));
    // Stale news is not refuted.
    gossip(&mut ml, ms(2), vec![suspect(1, 0, 2), dead(1, 0, 2)]);
    assert_eq!(ml.incarnation(), 1);
    // Death at a higher incarnation (a previous life): refuted above it.
    gossip(&mut ml, ms(3), vec![dead(1, 5, 2)]);
    assert_eq!(ml.incarnation(), 6);
    gossip(&mut ml, ms(4), vec![left(1, 6)]);
    assert_eq!(ml.incarnation(), 7);
    // Our own alive news changes nothing; an alive with other data or a higher incarnation does.
    gossip(&mut ml, ms(5), vec![alive(1, 7)]);
    assert_eq!(ml.incarnation(), 7);
    gossip(
        &mut ml,
        ms(6),
        vec![Update::Alive {
            id: NodeId(1),
            incarnation: 7,
            addr: addr(1),
            meta: b"impostor".to_vec(),
        }],
    );
    assert_eq!(ml.incarnation(), 8);
    gossip(&mut ml, ms(7), vec![alive(1, 20)]);
    assert_eq!(ml.incarnation(), 21);
    assert_eq!(ml.local().state, State::Alive);
    assert_eq!(ml.stats().refutations, 5);
}

#[test]
fn leave_announces_left_and_goes_inert() {
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4]);
    ml.leave(ms(100));
    assert!(ml.has_left());
    let sent = packets(&ml.take_effects());
    assert_eq!(
        sent.len(),
        3,
        "every live member is told (fewer than the retransmit limit)"
    );
    for (_, p) in &sent {
        assert_eq!(p.updates[0], left(1, 0));
    }
    assert_eq!(ml.local().state, State::Left);
    assert_eq!(ml.num_alive(), 3);
    // Inert: no probes, no refutation, no changes.
    ml.tick(ms(10_000));
    gossip(&mut ml, ms(10_001), vec![suspect(1, 0, 2), dead(1, 0, 2)]);
    assert_eq!(ml.incarnation(), 0);
    assert!(ml.take_effects().is_empty());
    assert_eq!(ml.set_local_meta(ms(1), vec![]), Err(MetaError::Left));
    assert_eq!(ml.join(ms(1), &[addr(2)]), Err(JoinError::Left));
    assert_eq!(ml.next_timer(), None);
}

#[test]
fn set_local_meta_raises_incarnation_and_disseminates() {
    let mut ml = with_members(Config::local(), 1, &[2]);
    ml.set_local_meta(ms(1), b"role=manager".to_vec()).unwrap();
    assert_eq!(ml.incarnation(), 1);
    assert_eq!(ml.local().meta, b"role=manager");
    // The next packet carries the news.
    deliver(
        &mut ml,
        ms(2),
        2,
        Message::Ping {
            seq: 9,
            target: NodeId(1),
            round: 0,
        },
        vec![],
    );
    let sent = packets(&ml.take_effects());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.msg, Message::Ack { seq: 9 });
    assert!(
        matches!(&sent[0].1.updates[..], [Update::Alive { meta, incarnation: 1, .. }] if meta == b"role=manager")
    );
    let too_big = vec![0; Config::local().max_meta_size + 1];
    assert!(matches!(
        ml.set_local_meta(ms(3), too_big),
        Err(MetaError::TooLarge { .. })
    ));
    assert_eq!(ml.incarnation(), 1);
}

#[test]
fn reaps_long_gone_members() {
    let mut cfg = Config::local();
    cfg.dead_reap_timeout = Duration::from_secs(10);
    let mut ml = with_members(cfg, 1, &[2, 3, 4]);
    gossip(&mut ml, ms(1000), vec![dead(2, 0, 3), left(3, 0)]);
    ml.reap(ms(10_999));
    assert_eq!(ml.members().count(), 4);
    ml.reap(ms(11_000));
    assert_eq!(ml.members().count(), 2);
    assert!(ml.member(NodeId(2)).is_none() && ml.member(NodeId(3)).is_none());
    assert_eq!(ml.probe_order, vec![NodeId(4)]);
}

#[test]
fn member_table_is_bounded() {
    let mut cfg = Config::local();
    cfg.max_members = 3;
    let mut ml = node_with(cfg, 1);
    gossip(&mut ml, ms(1), (2..10).map(|i| alive(i, 0)).collect());
    assert_eq!(ml.members().count(), 3);
    assert_eq!(ml.stats().rejected_members, 6);
}

// ------------------------------------------------------------------ probing

#[test]
fn probes_in_randomized_round_robin() {
    for aligned in [true, false] {
        probes_in_randomized_round_robin_with(aligned);
    }
}

fn probes_in_randomized_round_robin_with(aligned_rounds: bool) {
    let cfg = Config {
        aligned_rounds,
        ..Config::local()
    };
    let mut ml = with_members(cfg, 1, &[2, 3, 4, 5, 6]);
    let mut now = ms(0);
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let mut round = Vec::new();
        for _ in 0..5 {
            let (target, seq, _) = next_ping(&mut ml, &mut now);
            round.push(target.0);
            deliver(&mut ml, now, target.0, Message::Ack { seq }, vec![]);
        }
        let mut sorted = round.clone();
        sorted.sort();
        assert_eq!(sorted, vec![2, 3, 4, 5, 6], "each member once per round");
        rounds.push(round);
    }
    assert!(
        rounds[0] != rounds[1] || rounds[1] != rounds[2],
        "order reshuffled"
    );
    assert_eq!(ml.stats().probes, 15);
    assert_eq!(ml.stats().acks, 15);
    assert_eq!(ml.local_health(), 0);
    // A member that joins mid-round is probed in that round or the next.
    gossip(&mut ml, now, vec![alive(7, 0)]);
    let mut seen = false;
    for _ in 0..11 {
        let (target, seq, _) = next_ping(&mut ml, &mut now);
        seen |= target == NodeId(7);
        deliver(&mut ml, now, target.0, Message::Ack { seq }, vec![]);
    }
    assert!(seen);
}

#[test]
fn missed_ack_scales_period_and_timeout() {
    let cfg = Config::local();
    let (period, timeout) = (cfg.protocol_period, cfg.probe_timeout);
    let mut ml = with_members(cfg, 1, &[2]);
    let mut now = ms(0);
    let (target, _, _) = next_ping(&mut ml, &mut now);
    assert_eq!(target, NodeId(2));
    let t0 = now;
    let p = ml.probe.clone().unwrap();
    assert_eq!((p.timeout_at, p.deadline), (t0 + timeout, t0 + period));
    // No ack, no one to ask: the probe fails at the end of the period.
    let (target, seq, ping) = next_ping(&mut ml, &mut now);
    assert_eq!(now, t0 + period);
    assert_eq!(ml.local_health(), 1);
    assert_eq!(ml.stats().failed_probes, 1);
    assert_eq!(state(&ml, 2), State::Suspect);
    // Scaled by (LHM + 1) = 2.
    let p = ml.probe.clone().unwrap();
    assert_eq!(p.timeout_at, now + timeout * 2);
    assert_eq!(p.deadline, now + period * 2);
    assert_eq!(ml.next_probe_at, now + period * 2);
    // Buddy system: the ping to a suspect carries the suspicion.
    assert_eq!(target, NodeId(2));
    assert!(matches!(ping.updates.first(), Some(Update::Suspect { id, .. }) if *id == NodeId(2)));
    // A successful probe lowers the multiplier again.
    deliver(
        &mut ml,
        now + ms(3),
        2,
        Message::Ack { seq },
        vec![alive(2, 1)],
    );
    assert_eq!(ml.local_health(), 0);
    assert_eq!(state(&ml, 2), State::Alive);
    assert!(ml.probe.is_none());
}

#[test]
fn local_health_is_bounded() {
    let mut cfg = Config::local();
    cfg.awareness_max = 2;
    // Keep the lone peer suspect (not dead) for all three probes.
    cfg.suspicion_mult = 10.0;
    let mut ml = with_members(cfg, 1, &[2]);
    let mut now = ms(0);
    for _ in 0..3 {
        next_ping(&mut ml, &mut now);
    }
    assert_eq!(ml.local_health(), 2);
    // The third probe fails too; the multiplier stays at its maximum.
    ml.tick(now + Duration::from_secs(2));
    assert_eq!(ml.stats().failed_probes, 3);
    assert_eq!(ml.local_health(), 2);
}

/// Runs a probe to its indirect phase; returns (seq, helpers asked).
fn probe_to_indirect(
    ml: &mut Memberlist,
    now: &mut Duration,
) -> (u32, NodeId, Vec<(Addr, Message)>) {
    let (target, seq, _) = next_ping(ml, now);
    let timeout_at = ml.probe.as_ref().unwrap().timeout_at;
    *now = timeout_at;
    ml.tick(*now);
    let reqs: Vec<(Addr, Message)> = packets(&ml.take_effects())
        .into_iter()
        .filter(|(_, p)| matches!(p.msg, Message::PingReq { .. }))
        .map(|(to, p)| (to, p.msg))
        .collect();
    (seq, target, reqs)
}

#[test]
fn indirect_probes_and_nacks() {
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (seq, target, reqs) = probe_to_indirect(&mut ml, &mut now);
    assert_eq!(reqs.len(), 3, "indirect_checks helpers");
    for (to, msg) in &reqs {
        assert_ne!(*to, addr(target.0));
        assert!(
            matches!(msg, Message::PingReq { seq: s, target: t, nack: true, addr: a } if *s == seq && *t == target && *a == addr(target.0))
        );
    }
    assert_eq!(ml.stats().indirect_probes, 3);
    // Every helper nacks: the target is the problem, not us.
    for (to, _) in &reqs {
        let helper: u64 = to.as_str()[1..].parse().unwrap();
        deliver(&mut ml, now + ms(1), helper, Message::Nack { seq }, vec![]);
    }
    // A nack for another probe is ignored.
    deliver(
        &mut ml,
        now + ms(1),
        2,
        Message::Nack { seq: seq + 100 },
        vec![],
    );
    assert_eq!(ml.stats().nacks, 3);
    // The last nack ends the probe at once, before the end of the period.
    assert!(ml.probe.is_none(), "all nacks in: the probe failed early");
    assert_eq!(ml.stats().failed_probes, 1);
    assert_eq!(ml.local_health(), 0, "all nacks received: no penalty");
    assert_eq!(state(&ml, target.0), State::Suspect);

    // Only one nack of three: two missing nacks count against us.
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (seq, target, reqs) = probe_to_indirect(&mut ml, &mut now);
    let helper: u64 = reqs[0].0.as_str()[1..].parse().unwrap();
    deliver(&mut ml, now + ms(1), helper, Message::Nack { seq }, vec![]);
    let deadline = ml.probe.as_ref().unwrap().deadline;
    ml.tick(deadline);
    assert_eq!(ml.local_health(), 2);
    // The missing nacks may be lost packets, or forwarded acks that were lost: inconclusive.
    // No suspicion yet; the same member is probed again next period.
    assert_eq!(state(&ml, target.0), State::Alive);
    assert_eq!(ml.stats().inconclusive_probes, 1);
    // (The period ended with the probe: the next one started in the same tick.)
    let p = ml.probe.clone().expect("the next probe started");
    assert_eq!(p.target, target, "an inconclusive probe is repeated");
    assert!(p.recheck);
    assert!(packets(&ml.take_effects())
        .iter()
        .any(|(to, q)| *to == addr(target.0)
            && matches!(q.msg, Message::Ping { seq, .. } if seq == p.seq)));
    // It fails again (nobody answers at all): now it is suspected.
    ml.tick(p.deadline);
    assert_eq!(state(&ml, target.0), State::Suspect);
    assert_eq!(ml.stats().failed_probes, 2);
    assert_eq!(ml.stats().inconclusive_probes, 1);

    // The repeated probe answered: never suspected, and the schedule goes on.
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (_, target, _) = probe_to_indirect(&mut ml, &mut now);
    let deadline = ml.probe.as_ref().unwrap().deadline;
    ml.tick(deadline);
    let p = ml.probe.clone().unwrap();
    assert_eq!(p.target, target);
    deliver(
        &mut ml,
        deadline + ms(1),
        target.0,
        Message::Ack { seq: p.seq },
        vec![],
    );
    assert_eq!(state(&ml, target.0), State::Alive);
    assert_eq!(ml.stats().suspicions, 0);
    assert_eq!(ml.recheck, None);
}

#[test]
fn forwarded_ack_saves_the_target() {
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (seq, target, reqs) = probe_to_indirect(&mut ml, &mut now);
    let helper: u64 = reqs[0].0.as_str()[1..].parse().unwrap();
    deliver(&mut ml, now + ms(5), helper, Message::Ack { seq }, vec![]);
    assert!(ml.probe.is_none());
    ml.tick(now + ms(500));
    assert_eq!(state(&ml, target.0), State::Alive);
    assert_eq!(ml.stats().acks, 1);
    assert_eq!(ml.stats().failed_probes, 0);
}

#[test]
fn serves_indirect_probes() {
    let mut ml = with_members(Config::local(), 1, &[2, 3]);
    let req = |seq, nack| Message::PingReq {
        seq,
        target: NodeId(3),
        addr: addr(3),
        nack,
    };
    deliver(&mut ml, ms(0), 2, req(77, true), vec![]);
    let sent = packets(&ml.take_effects());
    let own = match (&sent[..],) {
        (
            [(
                to,
                Packet {
                    msg: Message::Ping { seq, target, .. },
                    ..
                },
            )],
        ) if *to == addr(3) && *target == NodeId(3) => *seq,
        other => panic!("expected a ping to n3, got {other:?}"),
    };
    assert_eq!(ml.stats().indirect_probes_served, 1);
    // The target's ack is forwarded with the requester's sequence.
    deliver(&mut ml, ms(4), 3, Message::Ack { seq: own }, vec![]);
    let sent = packets(&ml.take_effects());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, addr(2));
    assert_eq!(sent[0].1.msg, Message::Ack { seq: 77 });
    // No answer: a nack a little before the probe timeout, if asked for.
    deliver(&mut ml, ms(100), 2, req(78, true), vec![]);
    deliver(&mut ml, ms(100), 2, req(79, false), vec![]);
    let first: Vec<Message> = packets(&ml.take_effects())
        .into_iter()
        .map(|(_, p)| p.msg)
        .collect();
    // Half way to the 80 ms wait, each ping is repeated once (same sequence).
    // (Its own probes may go out meanwhile; only repetitions of these pings count.)
    let same = |a: &Message, b: &Message| match (a, b) {
        (
            Message::Ping {
                seq: s, target: t, ..
            },
            Message::Ping { seq, target, .. },
        ) => s == seq && t == target,
        _ => false,
    };
    let repeats = |ml: &mut Memberlist| -> Vec<Addr> {
        packets(&ml.take_effects())
            .into_iter()
            .filter(|(_, p)| first.iter().any(|f| same(f, &p.msg)))
            .map(|(to, _)| to)
            .collect()
    };
    ml.tick(ms(139));
    assert!(repeats(&mut ml).is_empty());
    ml.tick(ms(140));
    assert_eq!(repeats(&mut ml), vec![addr(3), addr(3)]);
    ml.tick(ms(179));
    assert!(packets(&ml.take_effects())
        .iter()
        .all(|(_, p)| !matches!(p.msg, Message::Nack { .. })));
    ml.tick(ms(180));
    let nacks: Vec<(Addr, Message)> = packets(&ml.take_effects())
        .into_iter()
        .filter(|(_, p)| matches!(p.msg, Message::Nack { .. }))
        .map(|(to, p)| (to, p.msg))
        .collect();
    assert_eq!(nacks, vec![(addr(2), Message::Nack { seq: 78 })]);
    assert!(ml.indirect.is_empty());
}

#[test]
fn answers_pings_for_itself_only() {
    let mut ml = node(1);
    deliver(
        &mut ml,
        ms(1),
        2,
        Message::Ping {
            seq: 5,
            target: NodeId(9),
            round: 0,
        },
        vec![],
    );
    assert!(packets(&ml.take_effects()).is_empty());
    deliver(
        &mut ml,
        ms(1),
        2,
        Message::Ping {
            seq: 5,
            target: NodeId(1),
            round: 0,
        },
        vec![],
    );
    let sent = packets(&ml.take_effects());
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.clone(), sent[0].1.msg.clone()),
        (addr(2), Message::Ack { seq: 5 })
    );
}

// ------------------------------------------------------------------ suspicion (Lifeguard)

#[test]
fn suspicion_timeout_shrinks_with_independent_confirmations() {
    // n = 5: k = 2, min = 800 ms, max = 4800 ms.
    let mut ml = with_members(suspicion_cfg(), 1, &[2, 3, 4, 5]);
    let start = ms(1000);
    gossip(&mut ml, start, vec![suspect(2, 0, 3)]);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), start + ms(4800));
    // The accuser repeating itself is no confirmation.
    gossip(&mut ml, start + ms(10), vec![suspect(2, 0, 3)]);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), start + ms(4800));
    // One independent confirmation: 4800 − 4000 · ln 2 / ln 3.
    ml.broadcasts = Broadcasts::default();
    gossip(&mut ml, start + ms(20), vec![suspect(2, 0, 4)]);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), start + ms(2276));
    assert!(
        ml.broadcasts.transmits(NodeId(2)).is_some(),
        "confirmation passed on"
    );
    // Two: down to the minimum.
    gossip(&mut ml, start + ms(30), vec![suspect(2, 0, 5)]);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), start + ms(800));
    ml.tick_suspicions(start + ms(799));
    assert_eq!(state(&ml, 2), State::Suspect);
    ml.tick_suspicions(start + ms(800));
    assert_eq!(state(&ml, 2), State::Dead);
}

#[test]
fn small_clusters_expect_no_confirmations() {
    // n = 3: fewer than k + 2 members, so the timeout is the minimum from the start.
    let mut ml = with_members(suspicion_cfg(), 1, &[2, 3]);
    gossip(&mut ml, ms(0), vec![suspect(2, 0, 3)]);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), ms(800));
}

#[test]
fn lifeguard_off_is_plain_swim() {
    let mut cfg = suspicion_cfg();
    cfg.lifeguard = false;
    let mut ml = with_members(cfg.clone(), 1, &[2, 3, 4, 5]);
    // Fixed suspicion timeout: the minimum, whatever the confirmations.
    gossip(&mut ml, ms(0), vec![suspect(2, 0, 3)]);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), ms(800));
    // Refuting does not touch the (absent) health multiplier.
    gossip(&mut ml, ms(1), vec![suspect(1, 0, 3)]);
    assert_eq!(ml.incarnation(), 1);
    assert_eq!(ml.local_health(), 0);
    // No nacks asked for, no penalty on failed probes, no buddy suspicion on pings.
    cfg.suspicion_mult = 20.0;
    let mut ml = with_members(cfg, 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (_, target, reqs) = probe_to_indirect(&mut ml, &mut now);
    assert!(reqs
        .iter()
        .all(|(_, m)| matches!(m, Message::PingReq { nack: false, .. })));
    let deadline = ml.probe.as_ref().unwrap().deadline;
    ml.tick(deadline);
    assert_eq!(ml.local_health(), 0);
    assert_eq!(state(&ml, target.0), State::Suspect);
    ml.take_effects();
    loop {
        let (t, seq, ping) = next_ping(&mut ml, &mut now);
        if t == target {
            assert_eq!(state(&ml, target.0), State::Suspect);
            assert!(!ping
                .updates
                .iter()
                .any(|u| matches!(u, Update::Suspect { id, .. } if *id == target)));
            break;
        }
        deliver(&mut ml, now, t.0, Message::Ack { seq }, vec![]);
    }
}

// ------------------------------------------------------------------ dissemination

#[test]
fn each_update_is_piggybacked_retransmit_limit_times() {
    // n = 5 live members: limit = 4 · ceil(log10 6) = 4.
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4, 5]);
    assert_eq!(ml.retransmit_limit(), 4);
    assert_eq!(retransmit_limit(4, 64), 8);
    gossip(&mut ml, ms(1), vec![suspect(3, 0, 4)]);
    let mut carried = 0;
    for i in 0..10 {
        deliver(
            &mut ml,
            ms(2 + i),
            2,
            Message::Ping {
                seq: i as u32,
                target: NodeId(1),
                round: 0,
            },
            vec![],
        );
        for (_, p) in packets(&ml.take_effects()) {
            carried += p.updates.iter().filter(|u| u.id() == NodeId(3)).count();
        }
    }
    assert_eq!(carried, 4);
}

fn big_alive(id: u64, meta_len: usize) -> Update {
    Update::Alive {
        id: NodeId(id),
        incarnation: 0,
        addr: addr(id),
        meta: vec![id as u8; meta_len],
    }
}

#[test]
fn packets_stay_within_the_size_limit() {
    let cfg = Config::local();
    let limit = cfg.gossip_packet_size;
    let mut ml = node_with(cfg, 1);
    for id in 2..150 {
        gossip(&mut ml, ms(1), vec![big_alive(id, 400)]);
    }
    ml.take_effects();
    let mut now = ms(1);
    let mut sent = 0;
    let mut with_updates = 0;
    for _ in 0..2000 {
        now += ms(1);
        ml.tick(now);
        for e in ml.take_effects() {
            if let Effect::Send { bytes, .. } = e {
                assert!(bytes.len() <= limit, "{} bytes", bytes.len());
                sent += 1;
                let p = decode(&bytes, 512).unwrap();
                if !p.updates.is_empty() {
                    with_updates += 1;
                    // Full: the next queued update would not have fitted.
                    assert!(bytes.len() + 400 > limit || ml.broadcasts.is_empty());
                }
            }
        }
    }
    assert!(sent > 20 && with_updates > 10, "{sent} {with_updates}");

    // A push-pull of the whole table is split into packets within the limit, and merges whole.
    let mut ml = node_with(Config::local(), 1);
    for id in 2..150 {
        gossip(&mut ml, ms(1), vec![big_alive(id, 400)]);
    }
    ml.take_effects();
    ml.send_push_pull(&addr(500), true);
    let chunks: Vec<Vec<u8>> = ml
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Send { bytes, .. } => Some(bytes),
            Effect::Event(_) => None,
        })
        .collect();
    assert!(chunks.len() > 40);
    let mut other = node(500);
    for bytes in &chunks {
        assert!(bytes.len() <= limit);
        other.receive(ms(2), &addr(1), bytes).unwrap();
    }
    assert_eq!(other.members().count(), 150);
    assert_eq!(other.member(NodeId(77)).unwrap().meta, vec![77u8; 400]);
    // Only the first chunk asked for a reply.
    let replies = packets(&other.take_effects())
        .into_iter()
        .filter(|(to, p)| *to == addr(1) && matches!(p.msg, Message::PushPull { .. }))
        .count();
    assert!(replies >= 1);
}

// ------------------------------------------------------------------ join and input hygiene

#[test]
fn join_retries_until_a_seed_answers() {
    let mut ml = node(1);
    assert_eq!(ml.join(ms(0), &[addr(1)]), Err(JoinError::NoSeeds));
    ml.join(ms(0), &[addr(1), addr(2), addr(3), addr(2)])
        .unwrap();
    assert!(ml.is_joining());
    let to: Vec<Addr> = packets(&ml.take_effects())
        .into_iter()
        .filter(|(_, p)| matches!(p.msg, Message::PushPull { reply: true, .. }))
        .map(|(to, _)| to)
        .collect();
    assert_eq!(to, vec![addr(2), addr(3)]);
    ml.tick(ms(499));
    assert!(packets(&ml.take_effects())
        .iter()
        .all(|(_, p)| !matches!(p.msg, Message::PushPull { .. })));
    ml.tick(ms(500));
    let retries = packets(&ml.take_effects())
        .into_iter()
        .filter(|(_, p)| matches!(p.msg, Message::PushPull { .. }))
        .count();
    assert_eq!(retries, 2);
    // Seed 3 answers with its state.
    let records = vec![crate::message::Record {
        id: NodeId(3),
        incarnation: 0,
        state: State::Alive,
        addr: addr(3),
        meta: vec![],
    }];
    deliver(
        &mut ml,
        ms(600),
        3,
        Message::PushPull {
            reply: false,
            members: records,
        },
        vec![],
    );
    assert!(!ml.is_joining());
    assert_eq!(state(&ml, 3), State::Alive);
    ml.tick(ms(2000));
    assert!(packets(&ml.take_effects())
        .iter()
        .all(|(to, p)| !(matches!(p.msg, Message::PushPull { .. }) && *to == addr(2))));
}

#[test]
fn a_join_is_followed_by_three_state_exchanges() {
    // (No reconnect push-pulls: nobody answers this node's probes, so its members die.)
    let cfg = Config {
        reconnect_interval: Duration::ZERO,
        ..Config::local()
    };
    let (period, interval) = (cfg.protocol_period, cfg.push_pull_interval);
    let mut ml = node_with(cfg, 1);
    ml.join(ms(0), &[addr(2)]).unwrap();
    ml.take_effects();
    let record = |id: u64| crate::message::Record {
        id: NodeId(id),
        incarnation: 0,
        state: State::Alive,
        addr: addr(id),
        meta: vec![],
    };
    let joined = ms(100);
    deliver(
        &mut ml,
        joined,
        2,
        Message::PushPull {
            reply: false,
            members: vec![record(2), record(3), record(4)],
        },
        vec![],
    );
    // Tick every 10 ms for a while and note when push-pulls asking for a reply go out.
    let mut at = Vec::new();
    let mut now = joined;
    while now < joined + period * 7 + interval - ms(20) {
        now += ms(10);
        ml.tick(now);
        let asks = packets(&ml.take_effects())
            .iter()
            .filter(|(_, p)| matches!(p.msg, Message::PushPull { reply: true, .. }))
            .count();
        if asks > 0 {
            at.push(now - joined);
        }
    }
    assert_eq!(at.len(), 3, "then none until the periodic one: {at:?}");
    for (k, periods) in [1u32, 3, 7].into_iter().enumerate() {
        let want = period * periods;
        assert!(
            at[k] >= want && at[k] <= want + ms(10),
            "exchange {k} at {:?}, wanted {want:?}: {at:?}",
            at[k]
        );
    }
}

#[test]
fn push_pull_suspects_remote_dead_and_refutes_own_death() {
    let mut ml = with_members(Config::local(), 1, &[2, 3]);
    let rec = |id: u64, inc: u64, state: State| crate::message::Record {
        id: NodeId(id),
        incarnation: inc,
        state,
        addr: addr(id),
        meta: vec![],
    };
    let members = vec![
        rec(1, 0, State::Dead),
        rec(2, 0, State::Dead),
        rec(4, 0, State::Dead),
    ];
    deliver(
        &mut ml,
        ms(1),
        3,
        Message::PushPull {
            reply: true,
            members,
        },
        vec![],
    );
    assert_eq!(ml.incarnation(), 1, "refuted its own death");
    assert_eq!(
        state(&ml, 2),
        State::Suspect,
        "remote dead becomes local suspect"
    );
    assert!(ml.member(NodeId(4)).is_none());
    let reply = packets(&ml.take_effects())
        .into_iter()
        .find(|(to, p)| *to == addr(3) && matches!(p.msg, Message::PushPull { reply: false, .. }));
    assert!(reply.is_some());
}

#[test]
fn hostile_input_is_counted_and_dropped() {
    let mut ml = with_members(Config::local(), 1, &[2]);
    let mut seed = 12345u64;
    let mut errors = 0;
    for len in 0..300 {
        let mut bytes = vec![VERSION];
        for _ in 0..len {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bytes.push((seed >> 56) as u8);
        }
        if ml.receive(ms(1), &addr(2), &bytes).is_err() {
            errors += 1;
        }
    }
    assert_eq!(ml.stats().decode_errors, errors);
    assert!(errors > 250);
    assert_eq!(ml.receive(ms(1), &addr(2), &[]), Err(DecodeError::Empty));
    // A packet claiming to come from this node is refused.
    let bytes = encode(&Packet {
        from: NodeId(1),
        msg: Message::Gossip,
        updates: vec![alive(5, 0)],
    })
    .unwrap();
    assert!(ml.receive(ms(1), &addr(2), &bytes).is_err());
    assert!(ml.member(NodeId(5)).is_none());
    // 300 random packets, the empty one, the forged one, and the set-up gossip.
    assert_eq!(ml.stats().messages_received, 303);
}

#[test]
fn rejects_bad_local_identity() {
    let info = |addr: &str, meta: usize| NodeInfo {
        id: NodeId(1),
        addr: Addr::from(addr),
        meta: vec![0; meta],
    };
    assert!(Memberlist::new(Config::local(), info("", 0), 1).is_err());
    assert!(Memberlist::new(Config::local(), info(&"x".repeat(300), 0), 1).is_err());
    assert!(Memberlist::new(Config::local(), info("a", 513), 1).is_err());
    assert!(Memberlist::new(Config::local(), info("a", 512), 1).is_ok());
}

#[test]
fn next_timer_covers_the_probe_schedule() {
    let mut ml = with_members(Config::local(), 1, &[2]);
    let t = ml.next_timer().unwrap();
    assert!(t < ms(200));
    ml.tick(t);
    // A probe is running: its repeated ping, then its timeout, are the next things.
    let p = ml.probe.clone().expect("probe started at the timer");
    ml.take_effects();
    // Each repetition of the ping is the next timer, then the timeout.
    for _ in 0..Config::local().probe_retries {
        let retry = ml
            .probe
            .as_ref()
            .unwrap()
            .retry_at
            .expect("probe_retries is on");
        assert_eq!(ml.next_timer().unwrap(), retry);
        ml.tick(retry);
        let again = packets(&ml.take_effects());
        assert!(
            matches!(&again[..], [(_, q)] if matches!(q.msg, Message::Ping { seq, target, .. } if seq == p.seq && target == p.target)),
            "the ping is repeated with the same sequence"
        );
    }
    assert!(ml.probe.as_ref().unwrap().retry_at.is_none());
    assert_eq!(ml.next_timer().unwrap(), p.timeout_at);
}

#[test]
fn push_pull_hearsay_does_not_confirm_a_suspicion() {
    // n = 5: k = 2, min = 800 ms, max = 4800 ms.
    let mut ml = with_members(suspicion_cfg(), 1, &[2, 3, 4, 5]);
    gossip(&mut ml, ms(0), vec![suspect(2, 0, 3)]);
    let rec = crate::message::Record {
        id: NodeId(2),
        incarnation: 0,
        state: State::Suspect,
        addr: addr(2),
        meta: vec![],
    };
    deliver(
        &mut ml,
        ms(10),
        4,
        Message::PushPull {
            reply: false,
            members: vec![rec.clone()],
        },
        vec![],
    );
    assert_eq!(ml.suspicions[&NodeId(2)].confirmations(), 0);
    assert_eq!(ml.suspicions[&NodeId(2)].deadline(), ms(4800));
    // It can start one, though, with the sender as accuser.
    let rec = crate::message::Record {
        id: NodeId(3),
        ..rec
    };
    deliver(
        &mut ml,
        ms(20),
        4,
        Message::PushPull {
            reply: false,
            members: vec![rec],
        },
        vec![],
    );
    assert_eq!(state(&ml, 3), State::Suspect);
}

#[test]
fn a_repeated_ping_spares_the_indirect_probe() {
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (target, seq, _) = next_ping(&mut ml, &mut now);
    ml.take_effects();
    // The first ping (or its ack) was lost: a third of the way to the timeout the ping is
    // repeated (two repetitions, evenly spaced).
    let p = ml.probe.clone().unwrap();
    let retry = p.retry_at.unwrap();
    assert_eq!(retry, now + Config::local().probe_timeout / 3);
    ml.tick(retry);
    let sent = packets(&ml.take_effects());
    assert!(
        matches!(&sent[..], [(to, q)] if *to == addr(target.0) && matches!(q.msg, Message::Ping { seq: s, target: t, .. } if s == seq && t == target))
    );
    // Its ack ends the probe: no ping-req at the timeout.
    deliver(
        &mut ml,
        retry + ms(2),
        target.0,
        Message::Ack { seq },
        vec![],
    );
    assert!(ml.probe.is_none());
    ml.tick(p.timeout_at);
    assert!(packets(&ml.take_effects())
        .iter()
        .all(|(_, q)| !matches!(q.msg, Message::PingReq { .. })));
    assert_eq!(ml.stats().indirect_probes, 0);

    // Off: no repeated ping, the indirect probe follows the first miss.
    let cfg = Config {
        probe_retries: 0,
        ..Config::local()
    };
    let mut ml = with_members(cfg, 1, &[2, 3, 4, 5]);
    let mut now = ms(0);
    let (_, _, reqs) = probe_to_indirect(&mut ml, &mut now);
    assert!(ml.probe.as_ref().unwrap().retry_at.is_none());
    assert_eq!(reqs.len(), 3);
}

#[test]
fn gossip_rounds_only_for_fresh_updates() {
    let cfg = Config::local();
    let (interval, fresh) = (cfg.gossip_interval, cfg.gossip_max_transmits);
    let mut ml = with_members(cfg, 1, &[2, 3, 4, 5, 6, 7, 8, 9]);
    // Let the join announcements run out first.
    let mut now = ms(0);
    while !ml.broadcasts.is_empty() {
        now += ms(10);
        ml.tick(now);
        ml.take_effects();
    }
    gossip(&mut ml, now, vec![left(2, 1)]);
    let mut rounds = 0;
    let mut sent = 0;
    while !ml.broadcasts.is_empty() && now < ms(10_000) {
        now += interval;
        ml.tick(now);
        let gossips = packets(&ml.take_effects())
            .into_iter()
            .filter(|(_, p)| p.msg == Message::Gossip)
            .count();
        if gossips > 0 {
            rounds += 1;
            sent += gossips;
        }
        // Once sent `gossip_max_transmits` times, the update rides on probe traffic only.
        if ml
            .broadcasts
            .transmits(NodeId(2))
            .is_some_and(|t| t >= fresh)
        {
            let before = sent;
            ml.tick(now + interval);
            let more = packets(&ml.take_effects())
                .into_iter()
                .filter(|(_, p)| p.msg == Message::Gossip)
                .count();
            assert_eq!(more, 0, "no gossip round for an update sent {fresh} times");
            assert!(before > 0);
            break;
        }
    }
    assert!(rounds >= 1, "a fresh update is gossiped at once");
}

#[test]
fn a_member_heard_to_be_suspected_is_probed_next() {
    // With suspect_probes ≥ n − 2 every member that hears of a suspicion probes the suspect in
    // its next period, whatever its place in the round; the ping carries the suspicion (buddy
    // system), so a live suspect can refute at once.
    let mut cfg = Config::local();
    cfg.suspect_probes = 10;
    cfg.aligned_rounds = false;
    let others: Vec<u64> = (2..=9).collect();
    let mut ml = with_members(cfg, 1, &others);
    let mut now = ms(0);
    let (first, seq, _) = next_ping(&mut ml, &mut now);
    deliver(&mut ml, now, first.0, Message::Ack { seq }, vec![]);
    // Pick a member whose turn in this round is still far off, and accuse it.
    let victim = *ml.probe_order.last().unwrap();
    now += ms(1);
    gossip(&mut ml, now, vec![suspect(victim.0, 0, 5)]);
    ml.take_effects();
    let (target, _, p) = next_ping(&mut ml, &mut now);
    assert_eq!(target, victim, "the suspect is probed next");
    assert!(
        p.updates
            .iter()
            .any(|u| matches!(u, Update::Suspect { id, .. } if *id == victim)),
        "the ping tells the suspect it is suspected: {:?}",
        p.updates
    );
    // The rest of the round still reaches every member not probed yet, once each.
    let mut rest = BTreeSet::new();
    for _ in 0..others.len() - 2 {
        let (t, seq, _) = next_ping(&mut ml, &mut now);
        deliver(&mut ml, now, t.0, Message::Ack { seq }, vec![]);
        rest.insert(t);
    }
    let expected: BTreeSet<NodeId> = others
        .iter()
        .map(|&o| NodeId(o))
        .filter(|&o| o != first && o != victim)
        .collect();
    assert_eq!(rest, expected, "no member skipped");
}

#[test]
fn suspect_probes_off_keeps_the_round_order() {
    let mut cfg = Config::local();
    cfg.suspect_probes = 0;
    let others: Vec<u64> = (2..=9).collect();
    let mut ml = with_members(cfg, 1, &others);
    let mut now = ms(0);
    next_ping(&mut ml, &mut now);
    let order = ml.probe_order.clone();
    let index = ml.probe_index;
    let victim = *order.last().unwrap();
    gossip(&mut ml, now + ms(1), vec![suspect(victim.0, 0, 5)]);
    assert_eq!(ml.probe_order, order);
    assert_eq!(ml.probe_index, index);
    assert_eq!(ml.probe_next, None);
}

#[test]
fn aligned_shifts_run_through_every_offset_once_per_epoch() {
    for m in [1usize, 2, 3, 4, 6, 7, 12, 63, 255, 999] {
        let mut orders = BTreeSet::new();
        for epoch in 0..4u32 {
            let shifts: Vec<usize> = (0..m as u32)
                .map(|j| crate::probe::round_shift(epoch * m as u32 + j, m))
                .collect();
            let mut sorted = shifts.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                (1..=m).collect::<Vec<_>>(),
                "m = {m}, epoch {epoch}"
            );
            orders.insert(shifts);
        }
        if m >= 6 {
            assert!(
                orders.len() > 1,
                "m = {m}: the order changes between epochs"
            );
        }
    }
}

#[test]
fn aligned_rounds_probe_every_member_exactly_once_per_round() {
    // Eight members that know each other and are in the same round: in each round their
    // targets are all different, so every member is probed by exactly one other.
    let ids: Vec<u64> = (1..=8).collect();
    let mut nodes: Vec<Memberlist> = ids
        .iter()
        .map(|&i| {
            let others: Vec<u64> = ids.iter().copied().filter(|&o| o != i).collect();
            with_members(Config::local(), i, &others)
        })
        .collect();
    let mut now = vec![ms(0); nodes.len()];
    let mut seen_by = vec![BTreeSet::new(); nodes.len()];
    for round in 0..14 {
        let mut targets = BTreeSet::new();
        for (k, ml) in nodes.iter_mut().enumerate() {
            let (target, seq, p) = next_ping(ml, &mut now[k]);
            assert!(matches!(p.msg, Message::Ping { round: r, .. } if r == round));
            assert_ne!(target, ml.id());
            targets.insert(target);
            seen_by[k].insert(target);
            deliver(ml, now[k], target.0, Message::Ack { seq }, vec![]);
        }
        assert_eq!(targets.len(), ids.len(), "round {round}: {targets:?}");
    }
    // Two epochs of seven rounds: each member probed every other one (round-robin).
    for (k, seen) in seen_by.iter().enumerate() {
        assert_eq!(seen.len(), ids.len() - 1, "member {}", k + 1);
    }
}

#[test]
fn rounds_follow_the_members_ahead() {
    let mut ml = with_members(Config::local(), 1, &[2, 3, 4]);
    let ping = |round| Message::Ping {
        seq: 1,
        target: NodeId(1),
        round,
    };
    // A ping from a member in round 40: the next probe is in round 40 (not 41, which would skip
    // a round when this member's turn in the period comes after the sender's).
    deliver(&mut ml, ms(1), 2, ping(40), vec![]);
    assert_eq!(ml.round, 40);
    // Members behind do not pull it back.
    deliver(&mut ml, ms(2), 3, ping(7), vec![]);
    assert_eq!(ml.round, 40);
    let mut now = ms(2);
    let (_, _, p) = next_ping(&mut ml, &mut now);
    assert!(matches!(p.msg, Message::Ping { round: 40, .. }));
    assert_eq!(ml.round, 41);
    // Serial-number arithmetic: past the wrap is ahead, and a wild value cannot stall it.
    ml.round = u32::MAX - 1;
    deliver(&mut ml, now, 2, ping(3), vec![]);
    assert_eq!(ml.round, 3);
    deliver(&mut ml, now, 2, ping(3u32.wrapping_add(1 << 31)), vec![]);
    assert_eq!(ml.round, 3);
}

#[test]
fn aligned_rounds_probe_a_suspect_just_heard_of_next() {
    let mut cfg = Config::local();
    cfg.suspect_probes = 10;
    let others: Vec<u64> = (2..=9).collect();
    let mut ml = with_members(cfg, 1, &others);
    let mut now = ms(0);
    let (first, seq, _) = next_ping(&mut ml, &mut now);
    deliver(&mut ml, now, first.0, Message::Ack { seq }, vec![]);
    let victim = NodeId(if first == NodeId(2) { 3 } else { 2 });
    gossip(&mut ml, now + ms(1), vec![suspect(victim.0, 0, 5)]);
    ml.take_effects();
    let (target, _, p) = next_ping(&mut ml, &mut now);
    assert_eq!(target, victim, "the suspect is probed next");
    assert!(p
        .updates
        .iter()
        .any(|u| matches!(u, Update::Suspect { id, .. } if *id == victim)));
    // Then the schedule goes on: the round after is the aligned one.
    let (t, _, p) = next_ping(&mut ml, &mut now);
    let ring: Vec<NodeId> = (1..=9).map(NodeId).collect();
    let shift = crate::probe::round_shift(2, ring.len() - 1);
    assert!(matches!(p.msg, Message::Ping { round: 2, .. }));
    assert_eq!(t, ring[shift % ring.len()]);
}

/// Delivers every packet `a` and `b` send each other (others dropped) until neither sends.
fn exchange(a: &mut Memberlist, b: &mut Memberlist, now: Duration) {
    fn deliver_to(effects: Vec<Effect>, from: &Addr, dst: &mut Memberlist, now: Duration) -> bool {
        let to = dst.member(dst.id).unwrap().addr.clone();
        let mut sent = false;
        for e in effects {
            if let Effect::Send { to: t, bytes } = e {
                if t == to {
                    sent = true;
                    let _ = dst.receive(now, from, &bytes);
                }
            }
        }
        sent
    }
    let (addr_a, addr_b) = (addr(a.id.0), addr(b.id.0));
    for _ in 0..10 {
        let (ea, eb) = (a.take_effects(), b.take_effects());
        let sent_ab = deliver_to(ea, &addr_a, b, now);
        let sent_ba = deliver_to(eb, &addr_b, a, now);
        if !sent_ab && !sent_ba {
            return;
        }
    }
}

#[test]
fn a_sign_of_life_from_a_dead_member_merges_both_sides_at_once() {
    // Two members cut off from each other long enough that each declared the other dead.
    let mut a = with_members(Config::lan(), 1, &[2]);
    let mut b = with_members(Config::lan(), 2, &[1]);
    gossip(&mut a, ms(1), vec![dead(2, 0, 1)]);
    gossip(&mut b, ms(1), vec![dead(1, 0, 2)]);
    a.take_effects();
    b.take_effects();
    assert_eq!((state(&a, 2), state(&b, 1)), (State::Dead, State::Dead));
    // The partition heals; nothing happens until the next reconnect round (30 s on a LAN)…
    let now = ms(100);
    a.tick(now);
    b.tick(now);
    exchange(&mut a, &mut b, now);
    assert_eq!((state(&a, 2), state(&b, 1)), (State::Dead, State::Dead));
    // …unless one side sees traffic from the other (Raft, say): then both merge at once. `b`
    // refutes its death in its reply; `a`, told of its own death there, refutes too.
    assert!(a.sign_of_life(now, NodeId(2)));
    exchange(&mut a, &mut b, now);
    assert_eq!((state(&a, 2), state(&b, 1)), (State::Alive, State::Alive));
    assert!(incarnation(&a, 2) > 0 && incarnation(&b, 1) > 0);
    assert!(!b.sign_of_life(now, NodeId(1)), "nothing more to do");
}

#[test]
fn signs_of_life_are_rate_limited_and_ignored_for_live_members() {
    let mut a = with_members(Config::lan(), 1, &[2, 3]);
    gossip(&mut a, ms(1), vec![dead(2, 0, 1)]);
    a.take_effects();
    let asks = |a: &mut Memberlist| {
        packets(&a.take_effects())
            .into_iter()
            .filter(|(to, p)| {
                *to == addr(2) && matches!(p.msg, Message::PushPull { reply: true, .. })
            })
            .count()
    };
    assert!(a.sign_of_life(ms(10), NodeId(2)));
    assert_eq!(asks(&mut a), 1);
    // A Raft heartbeat every 100 ms does not become a push-pull every 100 ms.
    assert!(!a.sign_of_life(ms(110), NodeId(2)));
    assert_eq!(asks(&mut a), 0);
    assert!(a.sign_of_life(ms(10) + Config::lan().protocol_period, NodeId(2)));
    assert_eq!(asks(&mut a), 1);
    // Live, unknown and own ids cost nothing.
    assert!(!a.sign_of_life(ms(5000), NodeId(3)));
    assert!(!a.sign_of_life(ms(5000), NodeId(7)));
    assert!(!a.sign_of_life(ms(5000), NodeId(1)));
    assert_eq!(a.take_effects().len(), 0);
}
