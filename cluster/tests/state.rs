//! The cluster state machine, its validation and the role reconciler.

use std::collections::BTreeSet;

use proptest::prelude::*;
use shoal_cluster::*;
use shoal_raft::Membership;

mod common;
use common::{cluster, cluster_info, new_node};

fn view(voters: &[NodeId], reachable: &[NodeId]) -> ManagerView {
    ManagerView {
        voters: voters.iter().copied().collect(),
        reachable: reachable.iter().copied().collect(),
    }
}

#[test]
fn init_and_join_record_nodes() {
    let s = cluster(1, 2);
    assert_eq!(s.nodes().len(), 3);
    let n1 = s.node(1).unwrap();
    assert_eq!((n1.role, n1.desired_role), (Role::Manager, Role::Manager));
    assert_eq!(n1.status.state, NodeState::Ready);
    let n3 = s.node(3).unwrap();
    assert_eq!(
        (n3.role, n3.availability),
        (Role::Worker, Availability::Active)
    );
    assert_eq!(s.cluster().unwrap().token(Role::Manager), "SHOAL-1-m");
    assert_eq!(s.applied(), 3);
}

#[test]
fn init_twice_and_duplicate_joins_are_refused() {
    let mut s = cluster(1, 1);
    let before = s.clone();
    let again = Command::Init {
        cluster: cluster_info(),
        node: new_node(9, "x", Role::Manager),
        at_ms: 1,
    };
    assert_eq!(s.apply(10, &again), Err(ClusterError::AlreadyInitialized));
    let dup = Command::AddNode {
        node: new_node(2, "again", Role::Worker),
        at_ms: 1,
    };
    assert!(matches!(
        s.apply(11, &dup),
        Err(ClusterError::NodeExists(_))
    ));
    assert_eq!(s.nodes(), before.nodes(), "refused commands change nothing");
    assert_eq!(s.applied(), 11, "but their index counts as applied");
    let mut empty = ClusterState::new();
    assert_eq!(
        empty.apply(
            1,
            &Command::AddNode {
                node: new_node(2, "w", Role::Worker),
                at_ms: 1
            }
        ),
        Err(ClusterError::NotInitialized)
    );
}

#[test]
fn joins_with_bad_fields_are_refused() {
    let mut s = cluster(1, 0);
    let mut n = new_node(5, "ok", Role::Worker);
    n.addr = "nowhere".into();
    assert!(s.apply(5, &Command::AddNode { node: n, at_ms: 1 }).is_err());
    let mut n = new_node(5, "bad host", Role::Worker);
    n.addr = "127.0.0.1:1".into();
    assert!(s.apply(6, &Command::AddNode { node: n, at_ms: 1 }).is_err());
    let mut n = new_node(5, "ok", Role::Worker);
    n.labels.insert("-bad".into(), "x".into());
    let e = s
        .apply(7, &Command::AddNode { node: n, at_ms: 1 })
        .unwrap_err();
    assert!(e.to_string().starts_with("invalid label"), "{e}");
    assert!(s
        .apply(
            8,
            &Command::AddNode {
                node: new_node(0, "zero", Role::Worker),
                at_ms: 1
            }
        )
        .is_err());
    assert_eq!(s.nodes().len(), 1);
}

#[test]
fn node_update_changes_labels_availability_and_role_with_compare_and_set() {
    let mut s = cluster(1, 1);
    let v = s.node(2).unwrap().version;
    let update = NodeUpdate {
        expected_version: Some(v),
        availability: Some(Availability::Drain),
        labels_add: [("zone".into(), "eu".into()), ("ssd".into(), "".into())].into(),
        ..Default::default()
    };
    s.apply(
        50,
        &Command::UpdateNode {
            id: 2,
            update: update.clone(),
            at_ms: 99,
        },
    )
    .unwrap();
    let n = s.node(2).unwrap();
    assert_eq!(n.availability, Availability::Drain);
    assert_eq!(n.labels.get("zone").map(String::as_str), Some("eu"));
    assert_eq!(n.version, 50);
    assert_eq!(n.updated_at_ms, 99);
    // The same update against the old version is out of sequence.
    let e = s
        .apply(
            51,
            &Command::UpdateNode {
                id: 2,
                update,
                at_ms: 100,
            },
        )
        .unwrap_err();
    assert!(
        matches!(e, ClusterError::VersionMismatch { actual: 50, .. }),
        "{e}"
    );
    s.apply(
        52,
        &Command::UpdateNode {
            id: 2,
            update: NodeUpdate {
                labels_rm: vec!["zone".into(), "absent".into()],
                desired_role: Some(Role::Manager),
                ..Default::default()
            },
            at_ms: 101,
        },
    )
    .unwrap();
    let n = s.node(2).unwrap();
    assert!(!n.labels.contains_key("zone"));
    assert!(n.labels.contains_key("ssd"));
    assert_eq!((n.desired_role, n.role), (Role::Manager, Role::Worker));
}

#[test]
fn nodes_resolve_by_id_hostname_or_unique_prefix() {
    let mut s = cluster(1, 0);
    s.apply(
        2,
        &Command::AddNode {
            node: new_node(0xab00, "web", Role::Worker),
            at_ms: 1,
        },
    )
    .unwrap();
    s.apply(
        3,
        &Command::AddNode {
            node: new_node(0xab01, "db", Role::Worker),
            at_ms: 1,
        },
    )
    .unwrap();
    assert_eq!(s.resolve("web").unwrap().id, 0xab00);
    assert_eq!(s.resolve(&node_id_string(0xab01)).unwrap().id, 0xab01);
    assert_eq!(s.resolve("000000000000ab01").unwrap().id, 0xab01);
    assert_eq!(s.resolve("0000000000000001").unwrap().id, 1);
    let e = s.resolve("000000000000ab").unwrap_err();
    assert_eq!(
        e.to_string(),
        "node 000000000000ab is ambiguous (2 nodes match)"
    );
    assert_eq!(
        s.resolve("nope").unwrap_err().to_string(),
        "node nope not found"
    );
    assert!(s.resolve("").is_err());
}

#[test]
fn demote_is_refused_for_the_last_manager_and_on_quorum_loss() {
    let s = cluster(3, 1);
    assert_eq!(
        check_demote(&s, 1, &view(&[1], &[1])),
        Err(ClusterError::LastManager)
    );
    // 3 managers, node 3 down: demoting 2 leaves {1, 3} with 1 reachable, 2 needed.
    let e = check_demote(&s, 2, &view(&[1, 2, 3], &[1, 2])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "demoting node 0000000000000002 would result in a loss of quorum: 1 of the 2 remaining managers reachable, 2 needed"
    );
    // Demoting the unreachable one keeps {1, 2}, both reachable.
    assert!(check_demote(&s, 3, &view(&[1, 2, 3], &[1, 2])).is_ok());
    assert!(check_demote(&s, 2, &view(&[1, 2, 3], &[1, 2, 3])).is_ok());
    // A worker: nothing to check.
    assert!(check_demote(&s, 4, &view(&[1, 2, 3], &[1])).is_ok());
}

#[test]
fn concurrent_demotions_cannot_remove_the_last_manager_or_quorum() {
    let mut s = cluster(3, 0);
    // Node 3 is being demoted (still a voter): demoting node 2 would leave only node 1.
    promote(&mut s, 10, 3, Role::Worker);
    assert!(check_demote(&s, 2, &view(&[1, 2, 3], &[1, 2, 3])).is_ok());
    let e = check_demote(&s, 2, &view(&[1, 2, 3], &[2, 3])).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 of the 1 remaining managers reachable")
            || e.to_string()
                .contains("0 of the 1 remaining managers reachable"),
        "{e}"
    );
    promote(&mut s, 11, 2, Role::Worker);
    assert_eq!(
        check_demote(&s, 1, &view(&[1, 2, 3], &[1, 2, 3])),
        Err(ClusterError::LastManager),
        "nodes 2 and 3 are on their way out"
    );
    // Even if a demotion slipped past the check, applying it is refused.
    let r = s.apply(
        12,
        &Command::UpdateNode {
            id: 1,
            update: NodeUpdate {
                desired_role: Some(Role::Worker),
                ..Default::default()
            },
            at_ms: 1,
        },
    );
    assert_eq!(r, Err(ClusterError::LastManager));
    assert_eq!(s.node(1).unwrap().desired_role, Role::Manager);
}

#[test]
fn rm_is_refused_for_managers_and_live_nodes_without_force() {
    let mut s = cluster(2, 1);
    let v = view(&[1, 2], &[1, 2]);
    assert_eq!(
        check_remove(&s, 2, true, &v).unwrap_err().to_string(),
        "node 0000000000000002 is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
    );
    assert_eq!(
        check_remove(&s, 3, false, &v).unwrap_err().to_string(),
        "node 0000000000000003 is not down and can't be removed (use --force to remove it anyway)"
    );
    assert!(check_remove(&s, 3, true, &v).is_ok());
    s.apply(
        40,
        &Command::SetStatus {
            id: 3,
            status: NodeStatus {
                state: NodeState::Down,
                message: "heartbeat failure".into(),
            },
            at_ms: 5,
        },
    )
    .unwrap();
    assert!(check_remove(&s, 3, false, &v).is_ok());
    s.apply(41, &Command::RemoveNode { id: 3, at_ms: 6 })
        .unwrap();
    assert!(s.node(3).is_none());
    // Applying a removal of a manager is refused deterministically too.
    assert!(matches!(
        s.apply(42, &Command::RemoveNode { id: 2, at_ms: 7 }),
        Err(ClusterError::RemoveManager(_))
    ));
}

#[test]
fn leave_is_refused_without_force_when_it_would_lose_quorum() {
    assert_eq!(
        check_leave(1, false, &view(&[1], &[1])),
        Err(ClusterError::LeaveLastManager)
    );
    let e = check_leave(1, false, &view(&[1, 2, 3], &[1, 2])).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("leaving the swarm would result in a loss of quorum"),
        "{e}"
    );
    assert!(check_leave(1, false, &view(&[1, 2, 3], &[1, 2, 3])).is_ok());
    assert!(check_leave(1, true, &view(&[1], &[1])).is_ok());
    assert!(
        check_leave(4, false, &view(&[1], &[1])).is_ok(),
        "workers just leave"
    );
}

#[test]
fn no_leader_names_the_cause() {
    assert_eq!(
        no_leader(1, 3).to_string(),
        "no leader: 1 of 3 managers reachable, 2 needed"
    );
}

#[test]
fn rotating_a_token_and_force_new_cluster() {
    let mut s = cluster(3, 1);
    s.apply(
        30,
        &Command::RotateJoinToken {
            role: Role::Worker,
            token: "SHOAL-1-new".into(),
            at_ms: 1,
        },
    )
    .unwrap();
    assert_eq!(s.cluster().unwrap().worker_token, "SHOAL-1-new");
    assert_eq!(s.cluster().unwrap().manager_token, "SHOAL-1-m");
    s.apply(
        31,
        &Command::ForceNewCluster {
            survivor: 2,
            at_ms: 2,
        },
    )
    .unwrap();
    let managers: Vec<NodeId> = s.managers().map(|n| n.id).collect();
    assert_eq!(managers, vec![2]);
    assert_eq!(s.node(1).unwrap().desired_role, Role::Worker);
    assert_eq!(s.nodes().len(), 4, "every node kept");
}

#[test]
fn snapshots_restore_the_same_state_and_refuse_garbage() {
    let s = cluster(3, 2);
    let bytes = s.snapshot();
    assert_eq!(ClusterState::restore(&bytes).unwrap(), s);
    assert!(ClusterState::restore(&[]).is_err());
    assert!(ClusterState::restore(&[7]).is_err());
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            ClusterState::restore(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(ClusterState::restore(&extra).is_err());
}

// ------------------------------------------------------------------ the reconciler

fn raft(leader: NodeId, voters: &[NodeId], learners: &[NodeId], reachable: &[NodeId]) -> RaftView {
    let membership = Membership {
        voters: voters.iter().copied().collect(),
        outgoing: BTreeSet::new(),
        learners: learners.iter().copied().collect(),
    };
    RaftView {
        leader,
        matched: membership
            .members()
            .into_iter()
            .map(|id| (id, 100))
            .collect(),
        membership,
        conf_change_pending: false,
        last_index: 100,
        reachable: reachable.iter().copied().collect(),
        max_lag: 10,
    }
}

fn promote(s: &mut ClusterState, index: u64, id: NodeId, role: Role) {
    s.apply(
        index,
        &Command::UpdateNode {
            id,
            update: NodeUpdate {
                desired_role: Some(role),
                ..Default::default()
            },
            at_ms: index,
        },
    )
    .unwrap();
}

#[test]
fn promotion_goes_learner_then_voter_then_observed_role() {
    let mut s = cluster(1, 2);
    promote(&mut s, 10, 2, Role::Manager);
    let r = reconcile(&s, &raft(1, &[1], &[], &[1, 2, 3]));
    assert_eq!(r.actions, vec![Action::AddLearner(2)]);
    // Learner far behind: waits, says why.
    let mut v = raft(1, &[1], &[2], &[1, 2, 3]);
    v.matched.insert(2, 50);
    let r = reconcile(&s, &v);
    assert!(r.actions.is_empty());
    assert_eq!(
        r.waiting,
        vec![(
            2,
            "promotion waits: 50 entries behind the leader".to_string()
        )]
    );
    // Nothing acknowledged yet (a re-added node that has not started its replica): waits,
    // even though 100 entries is within the lag allowed.
    let mut v = raft(1, &[1], &[2], &[1, 2, 3]);
    v.matched.insert(2, 0);
    let r = reconcile(&s, &v);
    assert!(r.actions.is_empty(), "{r:?}");
    assert_eq!(
        r.waiting,
        vec![(
            2,
            "promotion waits: the learner has not answered yet".to_string()
        )]
    );
    // Caught up: becomes a voter.
    let r = reconcile(&s, &raft(1, &[1], &[2], &[1, 2, 3]));
    assert_eq!(r.actions, vec![Action::PromoteVoter(2)]);
    // Voter: the observed role follows.
    let r = reconcile(&s, &raft(1, &[1, 2], &[], &[1, 2, 3]));
    assert_eq!(r.actions, vec![Action::SetObservedRole(2, Role::Manager)]);
    s.apply(
        11,
        &Command::SetObservedRole {
            id: 2,
            role: Role::Manager,
            at_ms: 1,
        },
    )
    .unwrap();
    // Done: nothing more to do, however often it runs.
    let r = reconcile(&s, &raft(1, &[1, 2], &[], &[1, 2, 3]));
    assert_eq!(r, Reconciliation::default());
}

#[test]
fn demotion_removes_the_voter_then_records_the_worker_role() {
    let mut s = cluster(3, 0);
    promote(&mut s, 10, 3, Role::Worker);
    let r = reconcile(&s, &raft(1, &[1, 2, 3], &[], &[1, 2, 3]));
    assert_eq!(r.actions, vec![Action::RemoveFromRaft(3)]);
    let r = reconcile(&s, &raft(1, &[1, 2], &[], &[1, 2, 3]));
    assert_eq!(r.actions, vec![Action::SetObservedRole(3, Role::Worker)]);
}

#[test]
fn demoting_the_leader_hands_leadership_over_first() {
    let mut s = cluster(3, 0);
    promote(&mut s, 10, 1, Role::Worker);
    let mut v = raft(1, &[1, 2, 3], &[], &[1, 2, 3]);
    v.matched.insert(3, 99);
    let r = reconcile(&s, &v);
    assert_eq!(
        r.actions,
        vec![Action::TransferLeadership(2)],
        "the most up-to-date voter"
    );
    // Once node 2 leads, it removes node 1.
    let r = reconcile(&s, &raft(2, &[1, 2, 3], &[], &[1, 2, 3]));
    assert_eq!(r.actions, vec![Action::RemoveFromRaft(1)]);
}

#[test]
fn the_leader_hands_over_only_to_a_node_meant_to_stay_a_manager() {
    // Voters 2 and 3 are both being demoted and 4 promoted: leader 3 must not hand over to 2
    // (which would hand back); 4 is added and promoted first, then leadership goes to it.
    let mut s = cluster(3, 2);
    promote(&mut s, 10, 4, Role::Manager);
    promote(&mut s, 11, 1, Role::Worker);
    promote(&mut s, 12, 2, Role::Worker);
    promote(&mut s, 13, 3, Role::Worker);
    let r = reconcile(&s, &raft(3, &[2, 3], &[], &[2, 3, 4]));
    assert!(r.actions.contains(&Action::AddLearner(4)), "{r:?}");
    assert!(
        !r.actions
            .iter()
            .any(|a| matches!(a, Action::TransferLeadership(_))),
        "{r:?}"
    );
    assert!(r
        .waiting
        .iter()
        .any(|(id, why)| *id == 3 && why.contains("no reachable manager to hand leadership to")));
    let r = reconcile(&s, &raft(3, &[2, 3, 4], &[], &[2, 3, 4]));
    assert!(r.actions.contains(&Action::TransferLeadership(4)), "{r:?}");
}

#[test]
fn demotion_waits_while_it_would_lose_quorum() {
    let mut s = cluster(3, 0);
    promote(&mut s, 10, 2, Role::Worker);
    let r = reconcile(&s, &raft(1, &[1, 2, 3], &[], &[1, 2]));
    assert!(r.actions.is_empty(), "{r:?}");
    assert_eq!(
        r.waiting,
        vec![(
            2,
            "demotion waits: 1 of the 2 remaining managers reachable, 2 needed".to_string()
        )]
    );
}

#[test]
fn one_configuration_change_at_a_time_additions_first() {
    let mut s = cluster(3, 2);
    promote(&mut s, 10, 4, Role::Manager);
    promote(&mut s, 11, 3, Role::Worker);
    let r = reconcile(&s, &raft(1, &[1, 2, 3], &[], &[1, 2, 3, 4]));
    assert_eq!(r.actions, vec![Action::AddLearner(4)]);
    let r = reconcile(&s, &raft(1, &[1, 2, 3], &[4], &[1, 2, 3, 4]));
    assert_eq!(r.actions, vec![Action::PromoteVoter(4)]);
    let r = reconcile(&s, &raft(1, &[1, 2, 3, 4], &[], &[1, 2, 3, 4]));
    assert!(r.actions.contains(&Action::RemoveFromRaft(3)), "{r:?}");
    let mut v = raft(1, &[1, 2, 3], &[], &[1, 2, 3, 4]);
    v.conf_change_pending = true;
    let r = reconcile(&s, &v);
    assert!(r.actions.is_empty());
    assert_eq!(r.waiting.len(), 1);
    let mut v = raft(1, &[1, 2, 3], &[], &[1, 2, 3, 4]);
    v.membership.outgoing = [1, 2].into();
    assert!(
        reconcile(&s, &v).actions.is_empty(),
        "never during a joint consensus"
    );
}

#[test]
fn raft_members_the_state_does_not_know_are_removed() {
    let s = cluster(2, 0);
    let r = reconcile(&s, &raft(1, &[1, 2], &[9], &[1, 2]));
    assert_eq!(r.actions, vec![Action::RemoveFromRaft(9)]);
}

// ------------------------------------------------------------------ properties

fn arb_command() -> impl Strategy<Value = Command> {
    let id = 1u64..6;
    prop_oneof![
        (id.clone(), 0u8..3).prop_map(|(id, r)| Command::AddNode {
            node: new_node(
                id,
                &format!("h{}", id % 3),
                if r == 0 { Role::Manager } else { Role::Worker }
            ),
            at_ms: 5,
        }),
        (
            id.clone(),
            0u8..3,
            any::<bool>(),
            proptest::option::of(0u64..30)
        )
            .prop_map(|(id, a, role, v)| {
                Command::UpdateNode {
                    id,
                    update: NodeUpdate {
                        expected_version: v,
                        availability: Some(
                            [
                                Availability::Active,
                                Availability::Pause,
                                Availability::Drain,
                            ][a as usize],
                        ),
                        labels_add: [(format!("k{a}"), "v".to_string())].into(),
                        labels_rm: vec![format!("k{}", (a + 1) % 3)],
                        desired_role: Some(if role { Role::Manager } else { Role::Worker }),
                    },
                    at_ms: 7,
                }
            }),
        (id.clone(), any::<bool>()).prop_map(|(id, m)| Command::SetObservedRole {
            id,
            role: if m { Role::Manager } else { Role::Worker },
            at_ms: 8,
        }),
        id.clone()
            .prop_map(|id| Command::RemoveNode { id, at_ms: 9 }),
        id.prop_map(|survivor| Command::ForceNewCluster {
            survivor,
            at_ms: 10
        }),
    ]
}

proptest! {
    #[test]
    fn replicas_applying_the_same_log_agree_and_snapshots_restore(cmds in proptest::collection::vec(arb_command(), 0..40)) {
        let mut a = cluster(1, 0);
        let mut b = ClusterState::restore(&a.snapshot()).unwrap();
        for (i, cmd) in cmds.iter().enumerate() {
            let bytes = cmd.encode();
            let decoded = Command::decode(&bytes).unwrap();
            let ra = a.apply(100 + i as u64, cmd);
            let rb = b.apply(100 + i as u64, &decoded);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(&a, &b);
        }
        prop_assert_eq!(ClusterState::restore(&a.snapshot()).unwrap(), a);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Command::decode(&bytes);
        let _ = ClusterState::restore(&bytes);
        let mut with_version = vec![1u8];
        with_version.extend_from_slice(&bytes);
        let _ = Command::decode(&with_version);
        let _ = ClusterState::restore(&with_version);
    }
}

fn token_cluster() -> (ClusterState, String, String) {
    let worker_secret = "00112233445566778899aabbccddeeff".to_string();
    let manager_secret = "ffeeddccbbaa99887766554433221100".to_string();
    let mut info = cluster_info();
    info.worker_token = format!("SHOAL-1-{}-{worker_secret}", "d".repeat(64));
    info.manager_token = format!("SHOAL-1-{}-{manager_secret}", "d".repeat(64));
    let mut s = ClusterState::new();
    s.apply(
        1,
        &Command::Init {
            cluster: info,
            node: new_node(1, "n1", Role::Manager),
            at_ms: 1,
        },
    )
    .unwrap();
    (s, worker_secret, manager_secret)
}

#[test]
fn admission_checks_the_committed_token_and_records_a_joining_node() {
    let (mut s, worker, manager) = token_cluster();
    let admit = |id, role, secret: &str| Command::AdmitNode {
        node: new_node(id, &format!("n{id}"), role),
        secret: secret.into(),
        at_ms: 5,
    };
    // The worker secret does not admit a manager, nor a garbage secret anyone.
    assert_eq!(
        s.apply(2, &admit(2, Role::Manager, &worker)),
        Err(ClusterError::InvalidJoinToken)
    );
    assert_eq!(
        s.apply(3, &admit(2, Role::Worker, "not-hex")),
        Err(ClusterError::InvalidJoinToken)
    );
    assert!(s.node(2).is_none());
    s.apply(4, &admit(2, Role::Worker, &worker)).unwrap();
    s.apply(5, &admit(3, Role::Manager, &manager)).unwrap();
    let n = s.node(2).unwrap();
    assert!(n.is_joining());
    assert_eq!(n.status.state, NodeState::Unknown);
    assert_eq!(s.node(3).unwrap().desired_role, Role::Manager);
    // A joining manager is not added to Raft before it connects.
    let plan = reconcile(&s, &raft(1, &[1], &[], &[1]));
    assert!(!plan.actions.contains(&Action::AddLearner(3)));
    // A rotation committed before an admission refuses it on every replica.
    s.apply(
        6,
        &Command::RotateJoinToken {
            role: Role::Worker,
            token: format!("SHOAL-1-{}-{}", "d".repeat(64), "1".repeat(32)),
            at_ms: 6,
        },
    )
    .unwrap();
    assert_eq!(
        s.apply(7, &admit(4, Role::Worker, &worker)),
        Err(ClusterError::InvalidJoinToken)
    );
}

#[test]
fn removed_ids_stay_removed_across_snapshots() {
    let (mut s, worker, _) = token_cluster();
    s.apply(
        2,
        &Command::AdmitNode {
            node: new_node(2, "n2", Role::Worker),
            secret: worker.clone(),
            at_ms: 2,
        },
    )
    .unwrap();
    s.apply(3, &Command::RemoveNode { id: 2, at_ms: 3 })
        .unwrap();
    assert!(s.is_removed(2));
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert!(restored.is_removed(2));
    for cmd in [
        Command::AdmitNode {
            node: new_node(2, "n2", Role::Worker),
            secret: worker,
            at_ms: 4,
        },
        Command::AddNode {
            node: new_node(2, "n2", Role::Worker),
            at_ms: 4,
        },
    ] {
        let mut r = restored.clone();
        assert_eq!(
            r.apply(4, &cmd),
            Err(ClusterError::NodeRemoved(node_id_string(2)))
        );
        assert!(r.node(2).is_none());
    }
}

#[test]
fn a_retried_request_is_applied_once_and_gets_the_first_result() {
    let mut s = cluster(1, 1);
    let id = RequestId { client: 7, seq: 1 };
    let label = |v: &str| Command::Tracked {
        id,
        cmd: Box::new(Command::UpdateNode {
            id: 2,
            update: NodeUpdate {
                labels_add: [("v".to_string(), v.to_string())].into(),
                ..Default::default()
            },
            at_ms: 50,
        }),
    };
    s.apply(100, &label("first")).unwrap();
    let version = s.node(2).unwrap().version;
    // The retry (even with other content) changes nothing and answers like the first.
    s.apply(101, &label("second")).unwrap();
    assert_eq!(s.node(2).unwrap().labels["v"], "first");
    assert_eq!(s.node(2).unwrap().version, version);
    // A refused request is refused again with the same message, even if it would pass now.
    let rm = RequestId { client: 7, seq: 2 };
    let remove = Command::Tracked {
        id: rm,
        cmd: Box::new(Command::RemoveNode { id: 99, at_ms: 1 }),
    };
    let first = s.apply(102, &remove).unwrap_err().to_string();
    assert_eq!(s.apply(103, &remove).unwrap_err().to_string(), first);
    // Remembered in snapshots; bounded.
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert!(restored.request_result(&id).is_some());
    let mut big = restored;
    for i in 0..(MAX_REMEMBERED_REQUESTS as u64 + 5) {
        let _ = big.apply(
            200 + i,
            &Command::Tracked {
                id: RequestId { client: 8, seq: i },
                cmd: Box::new(Command::RemoveNode { id: 99, at_ms: 1 }),
            },
        );
    }
    assert!(big.request_result(&id).is_none());
    assert!(big
        .request_result(&RequestId {
            client: 8,
            seq: MAX_REMEMBERED_REQUESTS as u64 + 4
        })
        .is_some());
    assert!(ClusterState::restore(&big.snapshot()).is_ok());
}
