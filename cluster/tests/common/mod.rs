//! Building blocks shared by the cluster state tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use shoal_cluster::*;

pub fn cluster_info() -> ClusterInfo {
    ClusterInfo {
        id: "0123456789abcdef0123456789abcdef".into(),
        created_at_ms: 1,
        ca_pem: "-----BEGIN CERTIFICATE-----".into(),
        worker_token: "SHOAL-1-w".into(),
        manager_token: "SHOAL-1-m".into(),
        unlock_key: String::new(),
    }
}

pub fn new_node(id: NodeId, host: &str, role: Role) -> NewNode {
    NewNode {
        id,
        description: NodeDescription {
            hostname: host.into(),
            platform: Platform {
                os: "linux".into(),
                arch: "amd64".into(),
            },
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            engine_version: "0.1.0".into(),
            agent_version: "0.1.0".into(),
            runtime_problems: Vec::new(),
            runtimes: vec![Runtime::Process],
            limits_enforced: false,
        },
        addr: format!("127.0.0.1:{}", 4000 + id),
        labels: BTreeMap::new(),
        desired_role: role,
    }
}

/// A cluster of `managers` managers (observed) and `workers` workers; ids 1.., hostnames n1...
pub fn cluster(managers: u64, workers: u64) -> ClusterState {
    let mut s = ClusterState::new();
    let mut index = 0;
    let mut next = |s: &mut ClusterState, cmd: Command| {
        index += 1;
        s.apply(index, &cmd).unwrap();
    };
    next(
        &mut s,
        Command::Init {
            cluster: cluster_info(),
            node: new_node(1, "n1", Role::Manager),
            at_ms: 10,
        },
    );
    for id in 2..=managers + workers {
        let role = if id <= managers {
            Role::Manager
        } else {
            Role::Worker
        };
        next(
            &mut s,
            Command::AddNode {
                node: new_node(id, &format!("n{id}"), role),
                at_ms: 10 + id,
            },
        );
        if role == Role::Manager {
            next(
                &mut s,
                Command::SetObservedRole {
                    id,
                    role,
                    at_ms: 20,
                },
            );
        }
    }
    s
}
